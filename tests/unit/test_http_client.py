"""The shared upstream client keeps no cookies and leaves no cyclic garbage."""

from __future__ import annotations

import asyncio
import gc
import gzip
import socket
import weakref
from collections.abc import Iterator

import httpx
import pytest
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

from router.http_client import CycleFreeClient, NoCookieJar, new_client
from tests.loopback import serve_app


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


async def _gzip_json(request: web.Request) -> web.Response:
    body = gzip.compress(b'{"data": [{"url": "https://cdn.test/z.png"}]}')
    return web.Response(body=body, headers={"Content-Encoding": "gzip", "X-Seen": request.path})


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(text="late")


async def test_a_plain_read_over_real_http_decodes_and_is_freed_by_reference_counting() -> None:
    app = web.Application()
    app.router.add_post("/v1/images", _gzip_json)
    async with serve_app(app) as base, CycleFreeClient(transport=AiohttpTransport()) as client:
        response = await client.post(f"{base}/v1/images", content=b"{}")
        assert response.status_code == 200
        assert response.json()["data"][0]["url"] == "https://cdn.test/z.png"
        assert response.headers["x-seen"] == "/v1/images"
        assert response.request.url == f"{base}/v1/images"
        assert response.is_closed
        gc.collect()
        gc.disable()
        try:
            freed = weakref.ref(response)
            del response
            assert freed() is None
        finally:
            gc.enable()


async def test_a_plain_read_raises_httpx_errors_that_name_their_request() -> None:
    app = web.Application()
    app.router.add_get("/slow", _slow)
    async with serve_app(app) as base, CycleFreeClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.ReadTimeout) as timed_out:
            await client.get(f"{base}/slow", timeout=httpx.Timeout(5.0, read=0.05))
        assert timed_out.value.request.url == f"{base}/slow"
    with pytest.raises(httpx.TransportError) as refused:  # the transport maps it to a timeout
        async with CycleFreeClient(transport=AiohttpTransport()) as client:
            await client.get(f"http://127.0.0.1:{_closed_port()}/x")
    assert refused.value.request.method == "GET"


async def test_a_plain_read_skips_httpx_s_auth_and_redirect_layers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What makes the shared client cheaper per call (see the module doc)."""

    async def never(*args: object, **kwargs: object) -> httpx.Response:
        raise AssertionError("took httpx's layered path")

    monkeypatch.setattr(httpx.AsyncClient, "_send_handling_auth", never)
    async with CycleFreeClient(transport=httpx.MockTransport(_ok)) as client:
        response = await client.post("http://provider.test/v1/images", json={"p": 1})
    assert response.json()["data"][0]["url"] == "https://cdn.test/a.png"


async def test_hooks_or_auth_take_httpx_s_own_path() -> None:
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.headers.get("authorization", ""))

    client = CycleFreeClient(transport=httpx.MockTransport(_ok), event_hooks={"request": [hook]})
    async with client:
        await client.get("http://provider.test/a")
        await client.get("http://provider.test/b", auth=("user", "pw"))
    assert seen[0] == ""
    assert seen[1].startswith("Basic ")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _stalled_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-length": "100"})
    await response.prepare(request)
    await response.write(b'{"data": [')
    await asyncio.sleep(1)  # past the client's read timeout; the test waits for it at exit
    return response


async def _cut_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-length": "100"})
    await response.prepare(request)
    await response.write(b'{"data": [')
    assert request.transport is not None
    request.transport.close()
    return response


async def test_an_unencoded_body_is_read_in_one_call_and_freed_by_reference_counting(
    monkeypatch: pytest.MonkeyPatch, no_cyclic_gc: None
) -> None:
    async def never(self: httpx.Response) -> bytes:
        raise AssertionError("read through httpx's decoder layers")

    async def plain(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"url": "https://cdn.test/p.png"}]})

    app = web.Application()
    app.router.add_post("/v1/images", plain)
    app.router.add_post("/v1/gzip", _gzip_json)
    async with serve_app(app) as base, CycleFreeClient(transport=AiohttpTransport()) as client:
        zipped = await client.post(f"{base}/v1/gzip", content=b"{}")  # decodes: aread
        monkeypatch.setattr(httpx.Response, "aread", never)
        response = await client.post(f"{base}/v1/images", content=b"{}")
        assert response.json()["data"][0]["url"] == "https://cdn.test/p.png"
        assert response.content == response.read() == b"".join(response.iter_bytes())
        assert response.is_closed
        assert response.is_stream_consumed
        freed = weakref.ref(response)
        del response
        assert freed() is None  # by reference counting: the cyclic collector is off
    assert zipped.json()["data"][0]["url"] == "https://cdn.test/z.png"


async def test_a_body_that_stalls_or_is_cut_raises_httpx_errors_that_name_their_request() -> None:
    app = web.Application()
    app.router.add_get("/stalled", _stalled_body)
    app.router.add_get("/cut", _cut_body)
    async with serve_app(app) as base, CycleFreeClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.ReadTimeout) as timed_out:
            await client.get(f"{base}/stalled", timeout=httpx.Timeout(5.0, read=0.2))
        assert timed_out.value.request.url == f"{base}/stalled"
        with pytest.raises(httpx.TransportError) as cut:
            await client.get(f"{base}/cut")
        assert cut.value.request.url == f"{base}/cut"
