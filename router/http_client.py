"""The outbound HTTP client every adapter shares, built for the hot path.

One ``httpx.AsyncClient`` on the ``httpx-aiohttp`` transport (STYLE: httpx's
default transport halves throughput) serves every provider and every tenant, so
it must keep no cookies: a ``Set-Cookie`` from one provider's response would
otherwise ride along on later requests, under other tenants' keys. httpx offers
no switch for that, but it accepts a ``CookieJar``: a jar that stores nothing
spares the per-response cost of copying every header into an
``email.message.Message`` for the standard library's cookie parser (measured:
about a tenth of the client's CPU per request), and :class:`CycleFreeClient`
also skips the ``urllib`` request httpx builds for the jar on every response
(~4 % of the worker's CPU under load).

Every response httpx reads is also a reference cycle: ``response.stream`` is a
``BoundAsyncStream`` that points back at the response, and through it the
request, headers and aiohttp's response object (~43 objects a request). Only the
cyclic garbage collector frees them, in pauses that grew with load to 15–30 ms
at 200 req/s: the worker's p99. :class:`CycleFreeClient` swaps the bound stream
for the bytes already read, so reference counting frees a response the moment
its last user drops it.
"""

from __future__ import annotations

from http.cookiejar import Cookie, CookieJar
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

__all__ = ["CycleFreeClient", "NoCookieJar", "new_client"]


class NoCookieJar(CookieJar):
    """A cookie jar that never stores a cookie (so never sends one)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: Cookie) -> None:
        return None


class _NoCookies(httpx.Cookies):
    """The client's cookie store: never reads a response's cookies, so never sends any."""

    def __init__(self) -> None:
        super().__init__(NoCookieJar())

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class CycleFreeClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that keeps no cookies and whose read responses hold no cycle.

    A plain read (no streaming, no auth, no event hooks: every adapter call) goes
    straight to the transport. The client's layers in between (the auth flow's
    async generator, the redirect loop, the bound stream, a log record per
    request) do nothing for such a call, redirects are never followed here, and
    they cost about a third of the client's time per call (measured, see
    ``docs/BENCHMARKS.md``). Anything else takes httpx's own path.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = _NoCookies()

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        if not stream and auth is httpx.USE_CLIENT_DEFAULT and self._plain():
            return await self._send_read(request)
        response = await super().send(
            request, stream=stream, auth=auth, follow_redirects=follow_redirects
        )
        if not stream:
            # Read and closed already: the bytes are all the stream still has to give.
            response.stream = httpx.ByteStream(response.content)
        return response

    def _plain(self) -> bool:
        hooks = self._event_hooks
        return self._auth is None and not hooks["request"] and not hooks["response"]

    async def _send_read(self, request: httpx.Request) -> httpx.Response:
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        self._set_timeout(request)
        transport = self._transport_for_url(request.url)
        try:
            response = await transport.handle_async_request(request)
            response.request = request
            await _read_body(response)
        except httpx.RequestError as exc:
            exc.request = request  # what httpx's own path attaches to every request error
            raise
        response.stream = httpx.ByteStream(response.content)
        return response


async def _read_body(response: httpx.Response) -> None:
    """Read the whole body and close the stream, as ``Response.aread`` does.

    A body without a Content-Encoding is read in one call to aiohttp: ``aread`` walks
    httpx's chunking and decoder layers and the transport's chunk iterator, for nothing
    when there is nothing to decode (one ``read()`` is ~25 µs less CPU per request,
    measured on the emulator's 300-byte answer, one core). It leaves what ``aread``
    would: the bytes, and the stream marked consumed and closed.
    """
    stream = response.stream
    try:
        if isinstance(stream, AiohttpResponseStream) and not response.headers.get(
            "content-encoding"
        ):
            with map_aiohttp_exceptions():
                body = await stream._aiohttp_response.read()
            await stream.aclose()
            response._content = body
            response.is_stream_consumed = True
            response.is_closed = True
        else:
            await response.aread()  # decodes the Content-Encoding, then closes the stream
    except BaseException:
        await response.aclose()
        raise


def new_client(*, max_connections: int = 1000, max_keepalive: int = 200) -> httpx.AsyncClient:
    """The shared upstream client: pooled, no redirects, no proxies from the env, no cookies."""
    return CycleFreeClient(
        transport=AiohttpTransport(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_keepalive
            ),
            trust_env=False,
        ),
        trust_env=False,
        follow_redirects=False,
    )
