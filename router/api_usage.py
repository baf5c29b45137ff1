"""``GET /v1/usage``: the calling tenant's spend, budget, in-flight jobs and limits."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from router.api_common import json_response, principal_of, service_of
from router.tenants import Tenancy

__all__ = ["ROUTE_HANDLERS"]


@get("/v1/usage", summary="The tenant's spend, budget and in-flight jobs")
async def get_usage(request: Request[Any, Any, Any]) -> Response[bytes]:
    """This month (UTC): spent, reserved by running jobs, budget left; and the limits."""
    principal = principal_of(request, "read")
    service = service_of(request)
    tenancy = service.engine.tenancy if service.engine is not None else None
    assert isinstance(tenancy, Tenancy)
    return json_response(await tenancy.usage(principal.tenant))


#: Litestar route handlers this module contributes to the app.
ROUTE_HANDLERS: list[Any] = [get_usage]
