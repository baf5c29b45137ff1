"""What every route module shares: the service, the caller, JSON responses."""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import Request, Response

from router.auth import Principal
from router.service import Service

__all__ = ["json_response", "principal_of", "service_of"]

_encode = msgspec.json.Encoder().encode
_JSON = "application/json"


def service_of(request: Request[Any, Any, Any]) -> Service:
    """The running :class:`Service` behind the app."""
    service: Service = request.app.state.service
    return service


def principal_of(request: Request[Any, Any, Any], scope: str) -> Principal:
    """Authenticate the caller and require ``scope`` (401/403 problems otherwise)."""
    service = service_of(request)
    assert service.auth is not None
    principal = service.auth.authenticate(request.headers.get("authorization"))
    principal.require(scope)
    structlog.contextvars.bind_contextvars(tenant=principal.tenant)
    return principal


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """``body`` encoded by msgspec as ``application/json``."""
    return Response(content=_encode(body), status_code=status, media_type=_JSON, headers=headers)
