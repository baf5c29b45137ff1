"""RFC 9457 problem+json for every error response.

Litestar's default error body (``{status_code, detail, extra}``) must never reach
a caller: every exception is turned into a problem here, and internal details
(stack traces, paths) never leave the process.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions import (
    NotAuthorizedException as LitestarNotAuthorized,
)
from litestar.exceptions import (
    PermissionDeniedException as LitestarForbidden,
)

from router.errors import ApiError, FieldError

__all__ = ["PROBLEM_BASE", "PROBLEM_JSON", "field_errors_from_msgspec", "problem_response"]

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://switchman.dev/problems/"
_log = structlog.get_logger("switchman.api")
_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:missing required|unknown) field `([^`]+)`")


def _problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers or {},
    )


def problem_response(exc: ApiError) -> Response[bytes]:
    """The problem+json response for an :class:`ApiError`."""
    headers = dict(exc.headers)
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return _problem(
        exc.status, exc.type_slug, exc.title, exc.detail, errors=exc.errors, headers=headers
    )


def field_errors_from_msgspec(exc: msgspec.ValidationError | msgspec.DecodeError) -> FieldError:
    """Name the field behind a msgspec error: ``Expected … - at `$.routing.providers[0]``` ."""
    text = str(exc)
    m = _MSGSPEC_PATH.search(text)
    path = m.group("path").lstrip(".") if m else ""
    message = text[: m.start()] if m else text
    # Missing and unknown fields are reported at the parent object: name the field itself.
    named = _NAMED_FIELD.search(message)
    if named is not None:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return FieldError(path or "body", message[:1].lower() + message[1:])


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar's app-wide exception handler: everything becomes problem+json."""
    if isinstance(exc, ApiError):
        return problem_response(exc)
    if isinstance(exc, ValidationException):
        errors = _litestar_field_errors(exc)
        return _problem(
            400, "validation-error", "Invalid request", "invalid request", errors=errors
        )
    if isinstance(exc, NotFoundException):
        return _problem(404, "not-found", "Not found", "no such resource")
    if isinstance(exc, MethodNotAllowedException):
        return _problem(
            405,
            "method-not-allowed",
            "Method not allowed",
            "method not allowed on this resource",
            headers=dict(exc.headers or {}),
        )
    if isinstance(exc, LitestarNotAuthorized):
        return _problem(401, "unauthorized", "Unauthorized", "authentication required")
    if isinstance(exc, LitestarForbidden):
        return _problem(403, "forbidden", "Forbidden", "not allowed")
    if isinstance(exc, HTTPException):
        status = exc.status_code
        if status == 413:
            return _problem(413, "payload-too-large", "Payload too large", "request body too large")
        title = "Bad request" if status < 500 else "Server error"
        detail = exc.detail if status < 500 else "internal error"
        return _problem(status, "http-error", title, detail, headers=dict(exc.headers or {}))
    _log.error("request.crashed", path=request.scope.get("path_template"), exc_info=exc)
    return _problem(500, "internal-error", "Internal server error", "internal error")


def _litestar_field_errors(exc: ValidationException) -> list[FieldError]:
    errors: list[FieldError] = []
    extra = exc.extra
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict):
                key = str(item.get("key") or item.get("source") or "body")
                errors.append(FieldError(key, str(item.get("message", "invalid"))))
    return errors or [FieldError("body", exc.detail)]
