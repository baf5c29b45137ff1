"""Provider responses are untrusted: every adapter turns any garbage into an UpstreamError.

Hypothesis feeds random bytes, JSON of the wrong shape, huge bodies, wrong content types,
odd statuses and junk rate-limit headers to ``submit``, ``poll`` and ``cancel`` of every
HTTP adapter (through ``httpx.MockTransport``). Whatever comes back, the adapter either
returns a well-formed result or raises :class:`UpstreamError` with a DESIGN §3 kind; no
other exception escapes. (``sim`` talks to no provider and is not fuzzed.)
"""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
from collections.abc import Callable
from typing import Any, get_args

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from breakers.clock import FakeClock
from router.adapters.base import AttemptContext, PollResult, SubmitResult
from router.adapters.registry import build_adapter
from router.config import ProviderConfig
from router.errors import ErrorKind, UpstreamError
from router.models import GenerationRequest
from router.sandbox.media import png_bytes
from tests.unit import (
    test_fal_adapter,
    test_http_adapter,
    test_openai_adapter,
    test_replicate_adapter,
    test_runway_adapter,
    test_stability_adapter,
    test_veo_adapter,
)

KINDS = frozenset(get_args(ErrorKind))
STATUSES = frozenset({"queued", "running", "succeeded", "failed", "canceled"})
PNG_URL = "data:image/png;base64," + base64.b64encode(png_bytes(64, 64)).decode()

PROVIDERS: dict[str, Callable[[], ProviderConfig]] = {
    "openai": test_openai_adapter.provider,
    "fal": test_fal_adapter.provider,
    "replicate": test_replicate_adapter.provider,
    "runway": test_runway_adapter.provider,
    "stability": test_stability_adapter.provider,
    "veo-gemini": lambda: test_veo_adapter.provider("gemini"),
    "veo-vertex": lambda: test_veo_adapter.provider("vertex"),
    "http-async": lambda: test_http_adapter.provider(test_http_adapter.ASYNC_OPTIONS),
    "http-sync": lambda: test_http_adapter.provider(test_http_adapter.SYNC_OPTIONS),
}
REQUESTS = [
    GenerationRequest(kind="image", prompt="a lighthouse at dusk"),
    GenerationRequest(kind="video", prompt="waves", duration_s=5, input_image_url=PNG_URL),
    GenerationRequest(kind="video", prompt="waves", duration_s=5),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
#: Plausible keys, so wrong shapes reach past the first lookup.
KEYS = [
    "id",
    "status",
    "state",
    "output",
    "outputs",
    "data",
    "images",
    "error",
    "name",
    "done",
    "response",
    "url",
    "request_id",
    "task",
    "progress",
    "artifacts",
    "video",
]
shaped = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(msgspec.json.encode),
    shaped.map(msgspec.json.encode),
    st.just(b'{"id": "' + b"x" * 3_000_000 + b'"}'),
    st.just(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100),
    st.just(b""),
)
responses = st.fixed_dictionaries(
    {
        "status": st.sampled_from(
            [
                200,
                201,
                202,
                204,
                301,
                400,
                401,
                403,
                404,
                409,
                413,
                422,
                429,
                500,
                502,
                503,
                504,
                299,
                418,
            ]
        ),
        "body": bodies,
        "content_type": st.sampled_from(
            [
                "application/json",
                "text/html",
                "image/png",
                "video/mp4",
                "application/octet-stream",
                "",
                "application/json; charset=utf-16",
            ]
        ),
        "retry_after": st.sampled_from([None, "5", "-1", "soon", "1e309", "Wed, 21 Oct 2015"]),
    }
)


def transport(script: list[dict[str, Any]]) -> httpx.MockTransport:
    """Answer every request with the next scripted response (cycling)."""
    cycle = itertools.cycle(script)

    def handler(request: httpx.Request) -> httpx.Response:
        r = next(cycle)
        headers = {"content-type": r["content_type"]} if r["content_type"] else {}
        if r["retry_after"] is not None:
            headers["retry-after"] = r["retry_after"]
            headers["x-ratelimit-remaining"] = r["retry_after"]
        return httpx.Response(r["status"], content=r["body"], headers=headers)

    return httpx.MockTransport(handler)


def check_result(result: object) -> None:
    """A returned result is well-formed."""
    if isinstance(result, (SubmitResult, PollResult)):
        assert result.status in STATUSES
        assert result.progress is None or isinstance(result.progress, int)
        for output in result.outputs:
            assert isinstance(output.url, str)
        if isinstance(result, PollResult) and result.error_kind is not None:
            assert result.error_kind in KINDS


async def exercise(name: str, script: list[dict[str, Any]]) -> None:
    adapter = build_adapter(PROVIDERS[name](), clock=FakeClock())
    async with httpx.AsyncClient(transport=transport(script)) as client:
        ctx = AttemptContext(
            client=client, job_id="job_1", attempt_id="att_1", deadline=0.0, api_key="k-123456"
        )
        calls: list[Callable[[], Any]] = []
        for request in REQUESTS:
            if adapter.supports(request) is None:
                calls.append(functools.partial(adapter.submit, request, ctx))
        calls.append(lambda: adapter.poll("up_1", ctx))
        calls.append(lambda: adapter.cancel("up_1", ctx))
        for call in calls:
            raised: UpstreamError | None = None
            try:
                result = await call()
            except UpstreamError as exc:
                raised = exc
            if raised is None:
                check_result(result)
            else:
                assert raised.kind in KINDS, raised
                assert isinstance(raised.message, str)


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(script=st.lists(responses, min_size=1, max_size=4))
def test_malformed_provider_responses_only_ever_raise_upstream_error(
    name: str, script: list[dict[str, Any]]
) -> None:
    """Any upstream answer ends in a valid result or a classified UpstreamError."""
    asyncio.run(exercise(name, script))
