"""The outbound HTTP client every adapter shares, built for the hot path.

One ``httpx.AsyncClient`` on the ``httpx-aiohttp`` transport (STYLE: httpx's
default transport halves throughput) serves every provider and every tenant, so
it must keep no cookies: a ``Set-Cookie`` from one provider's response would
otherwise ride along on later requests, under other tenants' keys. httpx offers
no switch for that, but it accepts a ``CookieJar``, and a jar that stores
nothing also spares the per-response cost of copying every header into an
``email.message.Message`` for the standard library's cookie parser (measured:
about a tenth of the client's CPU per request).
"""

from __future__ import annotations

from http.cookiejar import Cookie, CookieJar
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

__all__ = ["NoCookieJar", "new_client"]


class NoCookieJar(CookieJar):
    """A cookie jar that never stores a cookie (so never sends one)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: Cookie) -> None:
        return None


def new_client(*, max_connections: int = 1000, max_keepalive: int = 200) -> httpx.AsyncClient:
    """The shared upstream client: pooled, no redirects, no proxies from the env, no cookies."""
    return httpx.AsyncClient(
        transport=AiohttpTransport(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_keepalive
            ),
            trust_env=False,
        ),
        trust_env=False,
        follow_redirects=False,
        cookies=NoCookieJar(),
    )
