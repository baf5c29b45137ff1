"""Bring-your-own provider credentials (DESIGN §3), tenant-scoped and write-only.

``PUT /v1/credentials/{provider}`` stores a tenant's own key (sealed with AES-256-GCM,
see :mod:`router.crypto`); ``GET /v1/credentials`` lists providers with ``is_valid``
and ``updated_at``, never a secret; ``DELETE`` forgets one; ``POST …/test`` probes the
provider with it and keeps the verdict. Another tenant's credential is simply absent
(404), like every other tenant-scoped resource.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.params import FromPath

from router.api_common import json_response, principal_of, service_of
from router.errors import FieldError, NotFound, ValidationFailed
from router.problems import field_errors_from_msgspec
from router.service import Service
from router.store import format_timestamp
from router.store.credentials import CredentialRow
from router.tenants import Tenancy

__all__ = ["ROUTE_HANDLERS", "CredentialBody"]


class CredentialBody(msgspec.Struct, forbid_unknown_fields=True):
    """``PUT /v1/credentials/{provider}``: the tenant's API key for that provider."""

    api_key: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


_decode_body = msgspec.json.Decoder(CredentialBody).decode


def _tenancy(service: Service) -> Tenancy:
    tenancy = service.engine.tenancy if service.engine is not None else None
    assert isinstance(tenancy, Tenancy)
    return tenancy


def _public(row: CredentialRow) -> dict[str, Any]:
    """What a caller may see of a credential: never the secret or its ciphertext."""
    return {
        "provider": row.provider,
        "is_valid": row.is_valid,
        "updated_at": format_timestamp(row.updated_at),
        "tested_at": format_timestamp(row.tested_at) if row.tested_at is not None else None,
    }


@put("/v1/credentials/{provider:str}", status_code=200, summary="Store the tenant's own key")
async def put_credential(
    request: Request[Any, Any, Any], provider: FromPath[str]
) -> Response[bytes]:
    """Write-only: the key is sealed and never returned; later attempts at ``provider`` use it."""
    principal = principal_of(request, "generate")
    service = service_of(request)
    tenancy = _tenancy(service)
    assert service.registry is not None
    tenancy.require_provider(service.registry, provider)
    try:
        body = _decode_body(await request.body())
    except msgspec.ValidationError as exc:
        raise ValidationFailed([field_errors_from_msgspec(exc)]) from None
    except msgspec.DecodeError:
        raise ValidationFailed([FieldError("body", "malformed JSON")], status=400) from None
    secret = body.api_key.strip()
    if not secret or any(c in secret for c in "\r\n\x00"):
        raise ValidationFailed([FieldError("api_key", "expected a key without line breaks")])
    row = await tenancy.credentials.put(principal.tenant, provider, secret)
    return json_response(_public(row))


@get("/v1/credentials", summary="The tenant's own provider keys (never the secrets)")
async def list_credentials(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Providers with ``is_valid`` (``null`` until used or tested) and ``updated_at``."""
    principal = principal_of(request, "read")
    tenancy = _tenancy(service_of(request))
    rows = await tenancy.store.credentials(principal.tenant)
    return json_response({"data": [_public(r) for r in rows]})


@delete("/v1/credentials/{provider:str}", status_code=204, summary="Forget the tenant's own key")
async def delete_credential(request: Request[Any, Any, Any], provider: FromPath[str]) -> None:
    """Later attempts at ``provider`` use the platform's key again."""
    principal = principal_of(request, "generate")
    tenancy = _tenancy(service_of(request))
    if not await tenancy.credentials.delete(principal.tenant, provider):
        raise NotFound(f"no credential for {provider!r}")


@post(
    "/v1/credentials/{provider:str}/test",
    status_code=200,
    summary="Check the tenant's own key against the provider",
)
async def test_credential(
    request: Request[Any, Any, Any], provider: FromPath[str]
) -> Response[bytes]:
    """A live authenticated call with the tenant's key; the verdict becomes ``is_valid``."""
    principal = principal_of(request, "generate")
    service = service_of(request)
    tenancy = _tenancy(service)
    assert service.registry is not None
    assert service.client is not None
    result = await tenancy.test_credential(
        service.registry, service.client, principal.tenant, provider
    )
    return json_response(result)


#: Litestar route handlers this module contributes to the app.
ROUTE_HANDLERS: list[Any] = [put_credential, list_credentials, delete_credential, test_credential]
