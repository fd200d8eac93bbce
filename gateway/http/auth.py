"""Who is calling: virtual keys (only their SHA-256 hashes are configured) and the admin key.

Pure ASGI middleware: it answers 401/403/429 in OpenAI's error shape itself and otherwise
puts a `Principal` in `scope["state"]["principal"]`. Calls to a model then pass the key's rate
limits and budget (gateway/http/admission.py): admitted responses carry x-ratelimit-* headers and
the call's token reservation rides in `IN_FLIGHT` until the gateway's sink settles it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config.settings import KeySettings
from gateway.errors import AuthenticationFailed, GatewayError, PermissionDenied, error_response
from gateway.http.admission import IN_FLIGHT, Admitter, with_headers
from gateway.keyring import KeyRing
from gateway.keyring import hash_key as hash_key  # where callers have always found it
from gateway.limits import Limiter
from gateway.serve.runtime import Runtime

log = logging.getLogger("flywheel.auth")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# The console (gateway/console/) signs its people in itself: an admin-key session cookie, not a bearer key.
CONSOLE_PREFIX = "/console"


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
                 limiter: Limiter, keys: KeyRing) -> None:
        self.app = app
        self._runtime = runtime
        self._keys = keys  # config.toml's keys with the store's run-time changes (disabled, rotated)
        self._admin_key = admin_key
        self._admitter = Admitter(lambda: runtime().settings, limiter)

    def _authenticate(self, scope: Scope) -> tuple[Principal, KeySettings | None]:
        path: str = scope["path"]
        rt = self._runtime()
        token = _bearer(scope)
        admin_key = self._admin_key()
        is_admin = bool(admin_key and token and hmac.compare_digest(token, admin_key))
        if path.startswith("/admin") or path == "/metrics":  # metrics name keys and routes: the admin's
            if is_admin or (admin_key is None and not self._keys.configured()):
                return ADMIN, None  # no keys at all: the demo set-up, open like the API itself
            if admin_key is None:
                raise AuthenticationFailed("The admin API is disabled: set the admin key "
                                           f"(env {rt.settings.auth.admin_key_env}).")
            raise AuthenticationFailed("Incorrect admin key provided.")
        if is_admin:
            return ADMIN, None
        if not self._keys.configured():
            return ANONYMOUS, None
        if not token:
            raise AuthenticationFailed("You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.")
        name = self._keys.lookup(hash_key(token))
        if name is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        ks = rt.settings.auth.keys[name]
        if self._keys.disabled(name):
            raise AuthenticationFailed(f"The API key '{name}' is disabled.", code="key_disabled")
        routes = None if "*" in ks.routes else frozenset(ks.routes)
        return Principal(name, routes=routes, no_log=ks.no_log), ks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(CONSOLE_PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            principal, ks = self._authenticate(scope)
            limited = not principal.admin and self._admitter.applies(scope, principal.key_name, ks)
            if limited:
                admission, receive = await self._admitter.admit(scope, receive, principal.key_name, ks)
        except GatewayError as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        if not limited:
            await self.app(scope, receive, send)
            return
        token = IN_FLIGHT.set(admission.reservation)
        try:
            await self.app(scope, receive, with_headers(send, admission.headers) if admission.headers else send)
        finally:
            IN_FLIGHT.reset(token)


def forbid(principal: Principal, route: str) -> None:
    """Raise 403 when the key may not use `route`."""
    if not principal.may_use(route):
        raise PermissionDenied(f"This API key is not allowed to use the route `{route}`.", param="model")
