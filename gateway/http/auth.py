"""Who is calling: virtual keys (only their SHA-256 hashes are configured) and the admin key.

Pure ASGI middleware: it answers 401/403/429 in OpenAI's error shape itself and otherwise
puts a `Principal` in `scope["state"]["principal"]`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import AuthenticationFailed, GatewayError, PermissionDenied, RateLimited, error_response
from gateway.serve.ratelimit import RateLimiter
from gateway.serve.runtime import Runtime

log = logging.getLogger("flywheel.auth")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def hash_key(key: str) -> str:
    """The hex SHA-256 of a virtual key, as config.toml stores it (after `sha256:`)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    key_name: str | None  # None: anonymous (no keys configured) or the admin
    admin: bool = False
    routes: frozenset[str] | None = None  # None: every route
    no_log: bool = False

    def may_use(self, route: str) -> bool:
        return self.routes is None or route in self.routes


ANONYMOUS = Principal(None)
ADMIN = Principal(None, admin=True)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = str(value.decode("latin-1")).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
        if name == b"api-key":  # Azure-style clients
            return str(value.decode("latin-1")).strip()
    return None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, runtime: Callable[[], Runtime], admin_key: Callable[[], str | None],
                 limiter: RateLimiter) -> None:
        self.app = app
        self._runtime = runtime
        self._admin_key = admin_key
        self._limiter = limiter

    def _authenticate(self, scope: Scope) -> Principal:
        path: str = scope["path"]
        rt = self._runtime()
        token = _bearer(scope)
        admin_key = self._admin_key()
        is_admin = bool(admin_key and token and hmac.compare_digest(token, admin_key))
        if path.startswith("/admin"):
            if is_admin or (admin_key is None and not rt.key_hashes):
                return ADMIN  # no keys at all: the demo set-up, open like the API itself
            if admin_key is None:
                raise AuthenticationFailed("The admin API is disabled: set the admin key "
                                           f"(env {rt.settings.auth.admin_key_env}).")
            raise AuthenticationFailed("Incorrect admin key provided.")
        if is_admin:
            return ADMIN
        if not rt.key_hashes:
            return ANONYMOUS
        if not token:
            raise AuthenticationFailed("You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.")
        name = rt.key_hashes.get(hash_key(token))
        if name is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        ks = rt.settings.auth.keys[name]
        wait = self._limiter.check(name, ks.rpm, ks.tpm)
        if wait is not None:
            raise RateLimited(f"Rate limit reached for key '{name}'. Retry after {wait:.0f}s.",
                              headers={"retry-after": str(int(wait + 0.999))})
        routes = None if "*" in ks.routes else frozenset(ks.routes)
        return Principal(name, routes=routes, no_log=ks.no_log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            principal = self._authenticate(scope)
        except GatewayError as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def forbid(principal: Principal, route: str) -> None:
    """Raise 403 when the key may not use `route`."""
    if not principal.may_use(route):
        raise PermissionDenied(f"This API key is not allowed to use the route `{route}`.", param="model")
