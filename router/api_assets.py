"""``GET /v1/assets/{id}``: a stored output, tenant-scoped (another tenant's id is 404)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.params import FromPath
from litestar.response import File

from router.api_common import principal_of, service_of
from router.errors import NotFound

__all__ = ["ROUTE_HANDLERS"]


@get("/v1/assets/{asset_id:str}", summary="A stored output")
async def get_asset(request: Request[Any, Any, Any], asset_id: FromPath[str]) -> File:
    """The file, with its checked content type; immutable, so cacheable for long."""
    principal = principal_of(request, "read")
    service = service_of(request)
    assets = service.engine.assets if service.engine is not None else None
    found = await assets.get(principal.tenant, asset_id) if assets is not None else None
    if found is None:
        raise NotFound(f"no asset {asset_id!r}")
    record, path = found
    return File(
        path=path,
        media_type=record.content_type,
        content_disposition_type="inline",
        filename=f"{record.id}.{record.content_type.rsplit('/', 1)[-1]}",
        headers={
            "Cache-Control": "private, max-age=31536000, immutable",
            "ETag": f'"{record.sha256}"',
        },
    )


#: Litestar route handlers this module contributes to the app.
ROUTE_HANDLERS: list[Any] = [get_asset]
