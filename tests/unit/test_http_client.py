"""The shared upstream client keeps no cookies and leaves no cyclic garbage."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import httpx
import pytest

from router.http_client import CycleFreeClient, NoCookieJar, new_client


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"data": [{"url": "https://cdn.test/a.png"}]})


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Only reference counting frees objects while the test runs."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def test_a_set_cookie_is_never_sent_back() -> None:
    seen: list[str | None] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "session=tenant-a; Path=/"})

    async with CycleFreeClient(transport=httpx.MockTransport(upstream)) as client:
        await client.get("http://provider.test/v1/a")
        await client.get("http://provider.test/v1/b")
        assert len(client.cookies) == 0
    assert seen == [None, None]


async def test_the_service_client_starts_with_a_cookieless_jar() -> None:
    client = new_client()
    try:
        assert isinstance(client, CycleFreeClient)
        assert isinstance(client.cookies.jar, NoCookieJar)
        assert not client.follow_redirects
    finally:
        await client.aclose()


@pytest.mark.usefixtures("no_cyclic_gc")
async def test_a_read_response_is_freed_without_the_cycle_collector() -> None:
    async with CycleFreeClient(transport=httpx.MockTransport(_ok)) as client:
        response = await client.post("http://provider.test/v1/images", json={"p": 1})
        assert response.json()["data"][0]["url"] == "https://cdn.test/a.png"
        freed = weakref.ref(response)
        del response
        assert freed() is None


@pytest.mark.usefixtures("no_cyclic_gc")
async def test_plain_httpx_would_leave_the_response_to_the_cycle_collector() -> None:
    """Why :class:`CycleFreeClient` exists: httpx's bound stream points back at its response."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(_ok)) as client:
        response = await client.post("http://provider.test/v1/images", json={"p": 1})
        freed = weakref.ref(response)
        del response
        assert freed() is not None
        gc.collect()
        assert freed() is None


@pytest.mark.usefixtures("no_cyclic_gc")
async def test_a_streamed_response_still_streams() -> None:
    async with (
        CycleFreeClient(transport=httpx.MockTransport(_ok)) as client,
        client.stream("GET", "http://provider.test/v1/big") as response,
    ):
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert b"cdn.test" in body
