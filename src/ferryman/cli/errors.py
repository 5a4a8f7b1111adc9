"""The shell around the ``ferryman`` command: every error is one line on stderr and an exit code.

:func:`run` calls the Typer app with Typer's own error display switched off
(``standalone_mode=False``) and turns whatever escapes a command into one
``error: ...`` line and the exit code :mod:`ferryman.cli.output` documents:

* a usage error found while parsing (a bad option value, an unknown option or
  command, a missing argument): exit 2, the option and the value named, where
  Typer would draw a usage panel;
* a :class:`~ferryman.FerrymanError`: its message, with the exit code of its
  kind (:func:`exit_code`);
* anything else, which is a bug in ferryman or in the loaded app: its type,
  message and where it was raised, exit 70; ``--log-level DEBUG`` adds the
  traceback.

``--help`` and a bare ``ferryman`` still print Typer's help.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any, NoReturn

import typer
from rich.markup import escape

from ferryman.cli.output import (
    EXIT_INTERNAL,
    EXIT_NOT_FOUND,
    EXIT_S3_REFUSED,
    EXIT_S3_UNAVAILABLE,
    EXIT_SCHEMA,
    EXIT_STORE,
    EXIT_TRANSFER_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    err,
)
from ferryman.errors import (
    FerrymanError,
    S3Error,
    S3Unavailable,
    SchemaMismatch,
    StoreError,
    StoreUnavailable,
    TransferFailed,
    UnknownSensor,
)

log = logging.getLogger("ferryman.cli")

# Pydantic's error types (Typer validates option values with it) in the words of a
# command line; ``{input}`` is the value given, the others come from the error's context.
_VALUE_ERRORS = {
    "int_parsing": "{input!r} is not a valid integer",
    "int_from_float": "{input!r} is not a valid integer",
    "float_parsing": "{input!r} is not a valid number",
    "bool_parsing": "{input!r} is not a valid boolean",
    "greater_than_equal": "must be at least {ge}, not {input!r}",
    "greater_than": "must be more than {gt}, not {input!r}",
    "less_than_equal": "must be at most {le}, not {input!r}",
    "less_than": "must be less than {lt}, not {input!r}",
    "finite_number": "must be a finite number, not {input!r}",
}


def exit_code(exc: FerrymanError) -> int:
    """The documented exit code for an error of ``exc``'s kind."""
    if isinstance(exc, StoreUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(exc, SchemaMismatch):
        return EXIT_SCHEMA
    if isinstance(exc, StoreError):
        return EXIT_STORE
    if isinstance(exc, TransferFailed):
        return EXIT_TRANSFER_FAILED
    if isinstance(exc, S3Unavailable):
        return EXIT_S3_UNAVAILABLE
    if isinstance(exc, S3Error):
        return EXIT_NOT_FOUND if exc.code == "NoSuchBucket" else EXIT_S3_REFUSED
    if isinstance(exc, UnknownSensor):
        return EXIT_NOT_FOUND
    return EXIT_USAGE


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of blanks folded into single spaces."""
    return " ".join(text.split())


def report(message: str, code: int) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    err.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def raised_at(exc: BaseException) -> str:
    """``file:line`` of the innermost frame ``exc`` went through, or ``""``."""
    # Frames of the import machinery (``<frozen importlib._bootstrap>``) say nothing.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def describe(exc: BaseException) -> str:
    """``Type: message (at file:line)``, for an exception nobody anticipated."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # A SyntaxError names its own file and line; its traceback ends in the importer.
    where = "" if isinstance(exc, SyntaxError) else raised_at(exc)
    return f"{text} (at {where})" if where else text


def usage_message(exc: typer.TyperException) -> str:
    """A usage error (Typer's vendored Click exceptions) as one line naming option and value."""
    text = exc.format_message()
    if isinstance(exc, typer.BadParameter) and exc.message:
        hint = _parameter(exc)
        detail = _value_error(exc) or exc.message
        text = f"{hint}: {detail}" if hint else detail
    text = text.strip().rstrip(".")
    text = text[:1].lower() + text[1:] if text[:2].istitle() else text
    context = getattr(exc, "ctx", None)
    if context is not None:
        text = f"{text} (see '{context.command_path} --help')"
    return text


def _parameter(exc: typer.BadParameter) -> str:
    if isinstance(exc.param_hint, str):
        return exc.param_hint
    if exc.param_hint:
        return " / ".join(exc.param_hint)
    param: Any = exc.param
    if param is None:
        return ""
    if getattr(param, "param_type_name", "") == "argument":
        return str(param.name).upper()
    return " / ".join(param.opts) or str(param.name)


def _value_error(exc: typer.BadParameter) -> str | None:
    """The first validation error behind ``exc`` in plain words, when Pydantic raised it."""
    errors = getattr(exc.__cause__, "errors", None)
    if not callable(errors):
        return None
    found = errors()
    if not found:
        return None
    first = found[0]
    context = first.get("ctx") or {}
    if first.get("type") == "value_error" and "error" in context:
        return str(context["error"]).rstrip(".")
    template = _VALUE_ERRORS.get(first.get("type", ""))
    if template is None:
        message = str(first.get("msg", "")).removeprefix("Input should be ")
        return f"{first.get('input')!r}: should be {message}"
    return template.format(input=first.get("input"), **context)


def run(cli: typer.Typer) -> NoReturn:
    """Run ``cli`` on ``sys.argv`` and exit; any error is one line on stderr."""
    try:
        result = cli(standalone_mode=False)
    except typer.TyperException as exc:
        code = int(getattr(exc, "exit_code", EXIT_USAGE))
        # A bare group (``ferryman``, ``ferryman db``) printed its help when this
        # was raised; there is nothing to add. Typer tells it by name too.
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(code)
        report(usage_message(exc), code)
    except typer.Abort:
        report("aborted", EXIT_NOT_FOUND)
    except FerrymanError as exc:
        report(str(exc), exit_code(exc))
    except Exception as exc:
        log.debug("unexpected error", exc_info=exc)
        report(
            f"unexpected {describe(exc)}; run with --log-level DEBUG for the traceback",
            EXIT_INTERNAL,
        )
    # Without standalone mode Typer returns a command's exit code (typer.Exit, --help).
    sys.exit(result if isinstance(result, int) else 0)


__all__ = ["describe", "exit_code", "one_line", "report", "run", "usage_message"]
