"""The OpenAPI document at ``/schema``, made to describe what the API really sends.

Handlers answer with pre-encoded bytes (see :mod:`router.app`), so litestar can only
document their JSON bodies as ``string``, the generation body not at all, and errors in
its own default shape rather than the RFC 9457 problem+json every error really is.
This render plugin corrects the generated document once, on first render:

- the generation request, job and job-list bodies get their msgspec schemas
  (the same types that decode requests and encode responses, so they cannot drift);
- every other JSON body is documented as an object;
- every operation documents its errors (``4XX``/``5XX``) as ``application/problem+json``
  with ``type``, ``title``, ``status``, ``detail`` and an optional ``errors`` list.

Contract fuzzing (``tests/integration/test_fuzz_schemathesis.py``) holds every response
to this document.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import msgspec
from litestar import Request
from litestar.openapi.plugins import JsonRenderPlugin

from router.models import GenerationRequest, Job, JobList

__all__ = ["PROBLEM_SCHEMA", "SwitchmanSchemaPlugin", "fix_document"]

_REF: Final = "#/components/schemas/{name}"

PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

#: (method, path) → the msgspec type of its JSON body per success status.
_TYPED_RESPONSES: Final[dict[tuple[str, str], dict[str, type]]] = {
    ("post", "/v1/generations"): {"200": Job, "202": Job},
    ("get", "/v1/generations"): {"200": JobList},
    ("get", "/v1/generations/{job_id}"): {"200": Job},
    ("post", "/v1/generations/{job_id}/cancel"): {"200": Job, "202": Job},
}
_TYPED_REQUESTS: Final[dict[tuple[str, str], type]] = {
    ("post", "/v1/generations"): GenerationRequest,
}


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": _REF.format(name="Problem")}}},
    }


def fix_document(doc: dict[str, Any]) -> dict[str, Any]:
    """A corrected copy of litestar's generated OpenAPI document (see the module doc)."""
    doc = copy.deepcopy(doc)
    (refs, components) = msgspec.json.schema_components(
        [Job, JobList, GenerationRequest], ref_template=_REF
    )
    by_type: dict[Any, dict[str, Any]] = dict(
        zip((Job, JobList, GenerationRequest), refs, strict=True)
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    schemas["Problem"] = PROBLEM_SCHEMA
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses: dict[str, Any] = op["responses"]
            for status in [s for s in responses if s[:1] in ("4", "5")]:
                del responses[status]  # litestar's default error shape is never sent
            typed = _TYPED_RESPONSES.get((method, path), {})
            for status, typ in typed.items():
                responses[status] = {
                    "description": responses.get(status, {}).get("description", "OK"),
                    "content": {"application/json": {"schema": by_type[typ]}},
                }
            for status, response in responses.items():
                content = response.get("content") or {}
                body = content.get("application/json")
                if status not in typed and body and body.get("schema") == {"type": "string"}:
                    body["schema"] = {"type": "object"}
            responses["4XX"] = _problem_response("The request was refused (problem+json)")
            responses["5XX"] = _problem_response("Switchman or every provider failed")
            if (request_type := _TYPED_REQUESTS.get((method, path))) is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": by_type[request_type]}},
                }
    return doc


class SwitchmanSchemaPlugin(JsonRenderPlugin):
    """``/schema/openapi.json`` with :func:`fix_document` applied (computed once)."""

    def __init__(self) -> None:
        super().__init__()
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The corrected document as JSON."""
        if self._rendered is None:
            self._rendered = msgspec.json.encode(fix_document(openapi_schema))
        return self._rendered
