"""Who is looking at the console: signed, expiring session cookies, CSRF tokens, the read-only mode.

Signing in with the admin key sets an HttpOnly, SameSite=Strict cookie holding the key id, an
expiry and a CSRF token, signed with HMAC-SHA256 under a secret derived from the admin key (so
a changed admin key ends every session, and replicas sharing the key share sessions). The key
itself is never in the cookie, the page or the logs: actions are recorded under its key id.
Every state-changing form carries the session's CSRF token. With no admin key configured the
console is read-only, and only for loopback clients. A script may send the admin key as a
bearer token instead of a cookie (no CSRF token needed: it is not ambient authority).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson
from starlette.requests import Request

COOKIE = "flywheel_console"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True, slots=True)
class Viewer:
    """The person behind a console request."""

    who: str  # key id ("admin-1a2b3c4d"), never a key
    csrf: str  # the token every state-changing form must carry ("" when read-only)
    expires: float
    read_only: bool = False
    bearer: bool = False  # authenticated by the admin key as a bearer token (a script)


class SignInRequired(Exception):
    """No valid session: the page redirects to /console/login, the JSON endpoint answers 401."""


class Refused(Exception):
    """A request the console refuses (403): no admin key off loopback, a write while read-only, bad CSRF."""


def key_id(admin_key: str) -> str:
    """The id actions are recorded under: a short fingerprint of the admin key, not the key."""
    return "admin-" + hashlib.sha256(admin_key.encode()).hexdigest()[:8]


def _secret(admin_key: str) -> bytes:
    return hashlib.sha256(b"flywheel-console-session\0" + admin_key.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(admin_key: str, ttl_s: float, now: float | None = None) -> tuple[str, Viewer]:
    """A new session: the cookie value and the viewer it stands for."""
    viewer = Viewer(key_id(admin_key), secrets.token_urlsafe(24), (now or time.time()) + ttl_s)
    payload = _b64(orjson.dumps({"kid": viewer.who, "csrf": viewer.csrf, "exp": viewer.expires}))
    sig = _b64(hmac.new(_secret(admin_key), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{sig}", viewer


def verify(admin_key: str, cookie: str, now: float | None = None) -> Viewer | None:
    """The viewer of a cookie value, or None when forged, expired or issued under another key."""
    payload, _, sig = cookie.partition(".")
    if not payload or not sig:
        return None
    want = _b64(hmac.new(_secret(admin_key), payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want, sig):
        return None
    try:
        data = orjson.loads(_unb64(payload))
        viewer = Viewer(str(data["kid"]), str(data["csrf"]), float(data["exp"]))
    except (ValueError, KeyError, TypeError):
        return None
    if viewer.expires <= (now or time.time()) or viewer.who != key_id(admin_key):
        return None
    return viewer


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_loopback(request: Request) -> bool:
    """The client connected from this machine."""
    return request.client is not None and request.client.host in LOOPBACK


def viewer_of(request: Request, admin_key: str | None) -> Viewer:
    """The viewer of `request`; SignInRequired or Refused otherwise (see the module docstring)."""
    if admin_key is None:
        if not is_loopback(request):
            raise Refused("The console is off: no admin key is configured (it is read-only on loopback only).")
        return Viewer("loopback (read-only)", "", float("inf"), read_only=True)
    token = _bearer(request)
    if token is not None:
        if hmac.compare_digest(token, admin_key):
            return Viewer(key_id(admin_key), "", float("inf"), bearer=True)
        raise SignInRequired("Incorrect admin key provided.")
    cookie = request.cookies.get(COOKIE)
    viewer = verify(admin_key, cookie) if cookie else None
    if viewer is None:
        raise SignInRequired("Sign in with the admin key.")
    return viewer


def check_write(request: Request, viewer: Viewer, token: str | None) -> None:
    """Refuse a state change: read-only viewer, a CSRF token that does not match, or a foreign Origin."""
    if viewer.read_only:
        raise Refused("The console is read-only: no admin key is configured.")
    if viewer.bearer:
        return
    origin = request.headers.get("origin")
    if origin and origin not in (f"{request.url.scheme}://{request.url.netloc}",):
        raise Refused("Cross-origin request refused.")
    if not token or not hmac.compare_digest(token, viewer.csrf):
        raise Refused("The form's CSRF token is missing or does not match this session; reload the page.")


def cookie_header(value: str, ttl_s: float, secure: bool) -> str:
    """The Set-Cookie value of a session (an empty value with ttl 0 signs out)."""
    flags = f"; Path=/console; HttpOnly; SameSite=Strict; Max-Age={int(ttl_s)}"
    return f"{COOKIE}={value}{flags}{'; Secure' if secure else ''}"
