"""``fm.sensors.folder``: new and changed files in a directory.

Each file version becomes one run: the run_key is
``relative/path@mtime_ns:size``, so a file rewritten in place (new size or
modification time) is a new version and gets a new run, while the same
version is never requested twice.

A name that is not valid UTF-8 (bytes from another encoding) is requested
too. Python spells its undecodable bytes as lone surrogates, which no store
can hold in a key, so its run_key spells them ``\\xNN`` instead, doubles
its backslashes and ends in ``:escaped`` (``report-\\xff.csv@mtime_ns:size:escaped``):
no other file's key can look the same, and :func:`relpath_of` gives the
name's bytes back. Its payload's ``path`` and ``relpath`` are the names as
Python spells them (``os.fsdecode``), stored exactly, so ``open(path)`` opens
the file.

How nothing is missed, with a cursor of bounded size (see
:mod:`ferryman.sensors.builtin.watermark`):

* A file's *change time* is its inode change time (``st_ctime``), which the
  kernel sets on every write, on ``rename()`` and on ``utime()``: a file moved
  in with ``mv`` keeps its old mtime but gets a fresh ctime, so it is newer
  than the watermark. The mtime is also taken into account when it is the
  later of the two, unless it lies in the future (``touch -d tomorrow`` must
  not push the watermark ahead of every file still to come).
* Files changed less than ``stable_for`` seconds ago are still being written:
  they are left for a later evaluation and the cursor stays below them.
* The watermark is the change time of the newest file decided; files that
  turn up later with a change time up to ``safety_window`` seconds older
  (equal timestamps, coarse filesystem clocks, a file server's clock behind
  this host's) are still found, because the cursor's edge remembers which
  files above the floor were already decided.
* In recursive mode, a directory whose ctime is newer than its mtime was
  renamed (moved in) or had its permissions changed since its content last
  changed; the files under it are treated as changed then too, because
  ``rename()`` of a directory does not touch the ctime of the files inside.
  A directory moved in *and* written to within one evaluation interval loses
  that signal: move files, not directories, into a watched tree.

Paths are confined to the folder: symlinks are followed only when their
target resolves inside the folder (others are skipped with a warning naming
the link), and symlinked directories are not descended into. A file that
cannot be read, or that vanishes between listing and stat, is logged with its
path and counted in ``SensorResult.skipped``; the other files go on. An
unreadable file is reported for ``safety_window`` seconds and then left until
its permissions change (``chmod`` sets a new ctime, which makes it new again).

Cost: one ``os.scandir`` pass and one ``stat`` per matching file, no file is
opened; files older than the floor are dismissed after the stat.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ferryman.errors import ConfigurationError
from ferryman.model import RunRequest, SensorResult
from ferryman.sensors.builtin.routing import UNROUTED, Router, Routes, warn_unrouted
from ferryman.sensors.builtin.watermark import Watermark, identity_digest
from ferryman.sensors.context import SensorContext

CURSOR_KIND = "folder"
ESCAPED = ":escaped"  # ends the run_key of a name that is not valid UTF-8
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")
# An mtime this far past the clock is taken as set by hand, not by a write.
FUTURE_MTIME_TOLERANCE_NS = 1_000_000_000


class _Globs:
    """Glob patterns: each on the relative path if it has a slash, else on the name."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        on_path = [p for p in self.patterns if "/" in p]
        on_name = [p for p in self.patterns if "/" not in p]
        self._path = (
            re.compile("|".join(fnmatch.translate(p) for p in on_path)) if on_path else None
        )
        self._name = (
            re.compile("|".join(fnmatch.translate(p) for p in on_name)) if on_name else None
        )
        self.hidden_ok = any(p.startswith(".") or "/." in p for p in self.patterns)

    def __call__(self, relpath: str, name: str) -> bool:
        return bool(
            (self._name is not None and self._name.match(name))
            or (self._path is not None and self._path.match(relpath))
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FolderReport:
    """What one evaluation of a folder sensor saw (``sensor.last_report``)."""

    files_matched: int
    new: int
    waiting: int
    unrouted: int
    errors: int
    cursor_bytes: int


@dataclass(frozen=True, slots=True)
class _Candidate:
    changed: int  # microseconds
    relpath: str
    run_key: str
    digest: bytes
    path: str
    size: int
    mtime_ns: int


@dataclass(slots=True)
class _Scan:
    candidates: list[_Candidate]
    waiting_min: int | None = None
    waiting: int = 0
    matched: int = 0
    errors: int = 0
    refused: list[tuple[int, bytes | None]] = field(default_factory=list)


def _changed_us(st: os.stat_result, now_ns: int) -> int:
    ctime, mtime = st.st_ctime_ns, st.st_mtime_ns
    changed = max(ctime, mtime) if mtime <= now_ns + FUTURE_MTIME_TOLERANCE_NS else ctime
    return -(-changed // 1000)  # ceiling: never earlier than the real change


class FolderSensor:
    """A poll sensor over one directory; see :func:`folder`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        pattern: str | Sequence[str],
        *,
        exclude: Sequence[str] = (),
        done_suffix: str | None = None,
        recursive: bool,
        stable_for: float,
        routes: Routes | None,
        max_per_evaluation: int,
        safety_window: float,
        max_edge: int,
        clock: Callable[[], float],
        name: str | None,
    ) -> None:
        if stable_for < 0 or safety_window < 0:
            raise ConfigurationError("stable_for and safety_window must not be negative")
        if max_per_evaluation < 1 or max_edge < 1:
            raise ConfigurationError("max_per_evaluation and max_edge must be at least 1")
        if done_suffix is not None and not done_suffix.strip(". "):
            raise ConfigurationError(f"done_suffix must name a suffix, got {done_suffix!r}")
        self.path = os.fspath(path)
        self.pattern = pattern
        self.done_suffix = done_suffix
        self.recursive = recursive
        self.stable_for = stable_for
        self.router = Router.build(routes)
        self.max_per_evaluation = max_per_evaluation
        self.safety_window = safety_window
        self.max_edge = max_edge
        self.clock = clock
        self.last_report: FolderReport | None = None
        # A pattern with a slash is matched against the relative path, otherwise the name.
        self._include = _Globs([pattern] if isinstance(pattern, str) else pattern)
        self._exclude = _Globs(exclude)
        self._hidden_ok = self._include.hidden_ok
        slug = re.sub(r"\W+", "_", os.path.basename(os.path.normpath(self.path))).strip("_")
        self.__name__ = self.__qualname__ = name or f"folder_{slug or 'root'}"
        self.__doc__ = f"New and changed files matching {pattern!r} in {self.path}."

    def __repr__(self) -> str:
        return f"<folder sensor {self.__name__} {self.path!r} {self.pattern!r}>"

    def check_cursor(self, cursor: str) -> None:
        """Raise :class:`~ferryman.ConfigurationError` unless this sensor can read ``cursor``.

        Called before an operator's cursor is committed (``set-cursor``, the API,
        the dashboard), so a cursor that would fail every evaluation is refused.
        """
        Watermark.decode(cursor, CURSOR_KIND)

    def __call__(self, ctx: SensorContext, cursor: str | None) -> SensorResult:
        now_ns = int(self.clock() * 1e9)
        state = Watermark.decode(cursor, CURSOR_KIND)
        root = os.path.realpath(self.path)
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"folder sensor {self.__name__}: {self.path} is not a directory"
            )
        cutoff = (now_ns - int(self.stable_for * 1e9)) // 1000
        scan = self._scan(ctx, root, state, now_ns, cutoff)
        scan.candidates.sort(key=lambda c: (c.changed, c.relpath))
        chosen = scan.candidates[: self.max_per_evaluation]
        rest = scan.candidates[self.max_per_evaluation :]

        decided: list[tuple[int, bytes | None]] = list(scan.refused)
        requests, unrouted, unreadable = self._requests(ctx, chosen, decided)
        errors = scan.errors + unreadable
        warn_unrouted(ctx.logger, "files", unrouted)

        undecided = [c.changed for c in rest]
        if scan.waiting_min is not None:
            undecided.append(scan.waiting_min)
        state.advance(
            decided,
            window=int(self.safety_window * 1e6),
            max_edge=self.max_edge,
            ceiling=cutoff,
            undecided_min=min(undecided) if undecided else None,
            log=ctx.logger,
        )
        new_cursor = state.encode(CURSOR_KIND)
        self.last_report = FolderReport(
            files_matched=scan.matched,
            new=len(requests),
            waiting=scan.waiting + len(rest),
            unrouted=len(unrouted),
            errors=errors,
            cursor_bytes=len(new_cursor or ""),
        )
        if scan.waiting:
            ctx.logger.debug("%d files are still being written; waiting", scan.waiting)
        return SensorResult(
            run_requests=requests, cursor=new_cursor, skipped=len(unrouted) + errors
        )

    def _requests(
        self,
        ctx: SensorContext,
        chosen: list[_Candidate],
        decided: list[tuple[int, bytes | None]],
    ) -> tuple[list[RunRequest], list[str], int]:
        """The run requests of the chosen files, each file added to ``decided``;
        also the files routed to no job, and how many could not be read."""
        requests: list[RunRequest] = []
        unrouted: list[str] = []
        unreadable = 0
        for candidate in chosen:
            if not os.access(candidate.path, os.R_OK):
                ctx.logger.error(
                    "file %s is not readable by this process; skipped until its permissions change",
                    candidate.relpath,
                )
                unreadable += 1
                decided.append((candidate.changed, None))
                continue
            decided.append((candidate.changed, candidate.digest))
            job = self.router.job_for(candidate.relpath)
            if job is UNROUTED:
                unrouted.append(candidate.relpath)
                continue
            payload = {
                "path": candidate.path,
                "relpath": candidate.relpath,
                "size": candidate.size,
                "mtime_ns": candidate.mtime_ns,
            }
            requests.append(
                RunRequest(candidate.run_key, payload, job if isinstance(job, str) else None)
            )
        return requests, unrouted, unreadable

    # -- listing -------------------------------------------------------------

    def _scan(
        self, ctx: SensorContext, root: str, state: Watermark, now_ns: int, cutoff: int
    ) -> _Scan:
        """Every matching file newer than the cursor: a candidate once it is ready
        (stable, or its done marker exists), else counted as waiting."""
        # The loop runs once per file in the folder (a million on a big one): it
        # reads locals and inlines what a helper call per file would cost.
        scan = _Scan(candidates=[])
        floor = state.floor
        edge = state.edge
        done_suffix = self.done_suffix
        is_regular = stat.S_ISREG
        future_mtime = now_ns + FUTURE_MTIME_TOLERANCE_NS
        for entry, relpath, inherited in self._entries(ctx, root, scan):
            try:
                if entry.is_symlink():
                    found = self._symlink(ctx, entry, root, relpath, state, now_ns, scan)
                    if found is None:
                        continue
                    st, path, changed = found
                else:
                    st = entry.stat(follow_symlinks=False)
                    if not is_regular(st.st_mode):
                        continue
                    path = entry.path
                    # _changed_us, inlined.
                    changed_ns = st.st_ctime_ns
                    if changed_ns < st.st_mtime_ns <= future_mtime:
                        changed_ns = st.st_mtime_ns
                    changed = -(-changed_ns // 1000)
            except OSError as exc:
                _unexaminable(ctx, scan, relpath, exc)
                continue
            scan.matched += 1
            if inherited > changed:
                changed = inherited
            if floor is not None and changed <= floor:
                continue
            run_key = f"{relpath}@{st.st_mtime_ns}:{st.st_size}"
            if not run_key.isascii():
                run_key = _storable_run_key(relpath, st)
            digest = identity_digest(run_key)
            if digest in edge:
                continue
            if changed > cutoff if done_suffix is None else not os.path.exists(path + done_suffix):
                scan.waiting += 1
                if scan.waiting_min is None or changed < scan.waiting_min:
                    scan.waiting_min = changed
                continue
            scan.candidates.append(
                _Candidate(changed, relpath, run_key, digest, path, st.st_size, st.st_mtime_ns)
            )
        return scan

    def _entries(
        self, ctx: SensorContext, root: str, scan: _Scan
    ) -> Iterator[tuple[os.DirEntry[str], str, int]]:
        """The entries under ``root`` that may be files to request, each with its
        relative path and the change time inherited from a moved-in directory.

        Hidden names are passed over unless a pattern asks for them, and so
        are names the patterns leave out and done markers; subdirectories are
        walked when ``recursive`` (not symlinked ones). A directory that cannot
        be listed is an error counted in ``scan``, except the root, which raises.
        """
        include, exclude = self._include, self._exclude
        done_suffix = self.done_suffix
        hidden_ok = self._hidden_ok
        # (directory path, relative prefix, change time inherited from a moved-in parent)
        stack: list[tuple[str, str, int]] = [(root, "", 0)]
        while stack:
            directory, prefix, inherited = stack.pop()
            try:
                entries = os.scandir(directory)
            except OSError as exc:
                if directory == root:
                    raise
                ctx.logger.error("directory %s cannot be listed: %s", prefix.rstrip("/"), exc)
                scan.errors += 1
                continue
            with entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(".") and not hidden_ok:
                        continue
                    relpath = prefix + name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if self.recursive:
                                stack.append(self._subdirectory(entry, relpath, inherited))
                            continue
                    except OSError as exc:
                        _unexaminable(ctx, scan, relpath, exc)
                        continue
                    if not include(relpath, name) or exclude(relpath, name):
                        continue
                    if done_suffix is not None and name.endswith(done_suffix):
                        continue  # a marker, not a file to request
                    yield entry, relpath, inherited

    def _subdirectory(
        self, entry: os.DirEntry[str], relpath: str, inherited: int
    ) -> tuple[str, str, int]:
        st = entry.stat(follow_symlinks=False)
        if st.st_ctime_ns > st.st_mtime_ns:
            # Renamed or re-permissioned since its content last changed: its files
            # may be new here even though their own ctime is old.
            inherited = max(inherited, -(-st.st_ctime_ns // 1000))
        return entry.path, relpath + "/", inherited

    def _symlink(
        self,
        ctx: SensorContext,
        entry: os.DirEntry[str],
        root: str,
        relpath: str,
        state: Watermark,
        now_ns: int,
        scan: _Scan,
    ) -> tuple[os.stat_result, str, int] | None:
        link = entry.stat(follow_symlinks=False)
        target = os.path.realpath(entry.path)
        problem = None
        if os.path.commonpath([root, target]) != root:
            problem = f"symlink {relpath} points outside the folder (to {target}); skipped"
        else:
            try:
                st = os.stat(target)
            except FileNotFoundError:
                problem = f"symlink {relpath} points to {target}, which does not exist; skipped"
        if problem is not None:
            # Refused once per version of the link, like a file: reported when first seen.
            changed = _changed_us(link, now_ns)
            digest = identity_digest(f"{relpath}@{link.st_ctime_ns}:symlink")
            if state.is_new(changed, digest):
                ctx.logger.warning("%s", problem)
                scan.errors += 1
                scan.refused.append((changed, digest))
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return st, target, max(_changed_us(st, now_ns), _changed_us(link, now_ns))


def _unexaminable(ctx: SensorContext, scan: _Scan, relpath: str, exc: OSError) -> None:
    if isinstance(exc, FileNotFoundError):
        ctx.logger.warning("file %s vanished while the folder was listed", relpath)
    else:
        ctx.logger.error("file %s cannot be examined: %s", relpath, exc)
    scan.errors += 1


def _storable_run_key(relpath: str, st: os.stat_result) -> str:
    """The run_key of a name that may not be valid UTF-8: escaped if it is not."""
    try:
        relpath.encode()
    except UnicodeEncodeError:  # lone surrogates: bytes os.fsdecode could not decode
        raw = os.fsencode(relpath).replace(b"\\", b"\\\\")
        escaped = raw.decode("utf-8", "backslashreplace")
        return f"{escaped}@{st.st_mtime_ns}:{st.st_size}{ESCAPED}"
    return f"{relpath}@{st.st_mtime_ns}:{st.st_size}"


def relpath_of(run_key: str) -> bytes:
    """The path relative to the folder, as bytes, of the file a folder run_key names."""
    name, _, version = run_key.rpartition("@")
    if not version.endswith(ESCAPED):
        return os.fsencode(name)
    # \xNN back to the lone surrogate os.fsdecode makes of byte NN, then to bytes.
    return _ESCAPE.sub(
        lambda found: "\\" if found.group(1) == "\\" else chr(0xDC00 + int(found.group(1)[1:], 16)),
        name,
    ).encode("utf-8", "surrogateescape")


def folder(
    path: str | os.PathLike[str],
    pattern: str | Sequence[str] = "*",
    *,
    exclude: Sequence[str] = (),
    done_suffix: str | None = None,
    recursive: bool = False,
    stable_for: float = 2.0,
    routes: Routes | None = None,
    max_per_evaluation: int = 1000,
    safety_window: float = 30.0,
    max_edge: int = 2_000,
    clock: Callable[[], float] = time.time,
    name: str | None = None,
) -> FolderSensor:
    """A poll sensor that requests one run per new or changed file in ``path``.

    Guarantee: every regular file matching ``pattern`` (a glob on the file
    name, or on the relative path when it contains ``/``; names starting with
    a dot only match a pattern that does; with ``recursive``, in
    subdirectories too, except hidden and symlinked ones) that is still there
    when an evaluation runs after it has not changed for ``stable_for``
    seconds is requested once per version (size and mtime), moved in with an
    old mtime, sharing a timestamp or rewritten in place, as long as it
    appears at most ``safety_window`` seconds older than the newest file
    decided before it: always on a local filesystem (the kernel stamps the
    ctime); on a network one, while the server's clock is that close to this
    host's. The run_key is ``relpath@mtime_ns:size``; the payload is
    ``{"path": absolute path, "relpath": relative path, "size", "mtime_ns"}``.

    ``pattern`` may be several globs (a file matching any is taken);
    ``exclude`` globs (the same rules) leave a file out. With ``done_suffix``
    (e.g. ``".done"``) a file is ready once ``<file><done_suffix>`` exists,
    however recently it changed, instead of once it is stable; until then it
    waits, and the markers themselves are never requested. A writer that
    rewrites a file should remove its marker first.

    ``routes`` maps regexes searched in the relative path to job names (first
    match wins); unmatched files are counted as skipped. At most
    ``max_per_evaluation`` files are decided per evaluation, oldest first; the
    rest wait for the next. The cursor remembers at most ``max_edge`` files.
    ``clock`` returns the current time in seconds (injected by tests).
    ``name`` becomes the function's ``__name__`` (default ``folder_<basename>``).

    Use as ``app.poll_sensor(job="load", interval=30)(fm.sensors.folder("/data/in", "*.csv"))``.
    """
    return FolderSensor(
        path,
        pattern,
        exclude=exclude,
        done_suffix=done_suffix,
        recursive=recursive,
        stable_for=stable_for,
        routes=routes,
        max_per_evaluation=max_per_evaluation,
        safety_window=safety_window,
        max_edge=max_edge,
        clock=clock,
        name=name,
    )
