"""Dashboard sign-in and CSRF protection for its forms.

Browsers cannot send a bearer token from a form, so the dashboard asks for
the API token once (``/login``) and keeps a session cookie instead: a random
session id signed with a key derived from the token (the token itself never
leaves the sign-in request). The cookie is HttpOnly and SameSite=Strict, and
every form also carries a CSRF token derived from the session id, checked on
every POST. Changing the token signs every session out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request

from ferryman.web.settings import WebSettings

COOKIE = "ferryman_session"
MAX_AGE = 12 * 3600


def _key(settings: WebSettings) -> bytes:
    return hashlib.sha256(b"ferryman dashboard session\0" + settings.token.encode()).digest()


def _sign(settings: WebSettings, purpose: str, value: str) -> str:
    message = f"{purpose}\0{value}".encode()
    return hmac.new(_key(settings), message, hashlib.sha256).hexdigest()


def new_session(settings: WebSettings) -> str:
    """A cookie value for a freshly signed-in browser."""
    session_id = secrets.token_urlsafe(18)
    return f"{session_id}.{_sign(settings, 'session', session_id)}"


def session_id(request: Request, settings: WebSettings) -> str | None:
    """The signed-in session of this request, or None."""
    cookie = request.cookies.get(COOKIE, "")
    ident, _, signature = cookie.partition(".")
    if not ident or not hmac.compare_digest(signature, _sign(settings, "session", ident)):
        return None
    return ident


def csrf_token(request: Request, settings: WebSettings) -> str:
    """The token forms must echo back; empty when not signed in."""
    ident = session_id(request, settings)
    return "" if ident is None else _sign(settings, "csrf", ident)


def csrf_matches(request: Request, settings: WebSettings, presented: str) -> bool:
    expected = csrf_token(request, settings)
    return bool(expected) and hmac.compare_digest(expected, presented)
