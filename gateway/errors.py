"""The gateway's error tree, and the one place that renders OpenAI-shaped error JSON.

    GatewayError (500 api_error)
    ├── InvalidRequest        400 invalid_request_error
    ├── AuthenticationFailed  401 invalid_request_error / invalid_api_key
    ├── PermissionDenied      403 permission_error
    ├── NotFound              404 invalid_request_error / model_not_found (or not_found)
    ├── RequestTimeout        408 invalid_request_error / request_timeout (head not received in time)
    ├── PayloadTooLarge       413 invalid_request_error / request_too_large
    ├── HeadersTooLarge       431 invalid_request_error / headers_too_large
    ├── RateLimited           429 rate_limit_error / rate_limit_exceeded (+ Retry-After)
    ├── UpstreamFailed        502 api_error / upstream_error (an upstream 5xx keeps its own status)
    ├── Overloaded            503 api_error / overloaded (+ Retry-After)
    └── UpstreamTimeout       504 api_error / upstream_timeout

Every error a client can see is one of these; anything else is logged and rendered as a
generic 500 without a stack trace.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class GatewayError(Exception):
    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamFailed(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class Overloaded(GatewayError):
    status = 503
    type = "api_error"
    code = "overloaded"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def error_json(exc: GatewayError) -> bytes:
    return orjson.dumps(exc.body())


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    """Render any gateway error as OpenAI does: status, JSON envelope, and its headers."""
    merged = {**exc.headers, **(headers or {})}
    return Response(error_json(exc), status_code=exc.status, headers=merged, media_type="application/json")


def internal_error() -> GatewayError:
    return GatewayError("The server had an error while processing your request.", code="internal_error")
