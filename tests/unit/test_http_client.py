"""The shared upstream client keeps no cookies between requests."""

from __future__ import annotations

import httpx

from router.http_client import NoCookieJar, new_client


async def test_a_set_cookie_is_never_sent_back() -> None:
    seen: list[str | None] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "session=tenant-a; Path=/"})

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(upstream), cookies=NoCookieJar()
    ) as client:
        await client.get("http://provider.test/v1/a")
        await client.get("http://provider.test/v1/b")
        assert len(client.cookies) == 0
    assert seen == [None, None]


async def test_the_service_client_starts_with_a_cookieless_jar() -> None:
    client = new_client()
    try:
        assert isinstance(client.cookies.jar, NoCookieJar)
        assert not client.follow_redirects
    finally:
        await client.aclose()
