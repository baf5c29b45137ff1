"""The status page over HTTP: the page, its live SSE feed, and what it must not show.

The browser-driven check (a breaker forced open shows within 2 s) is in
``test_ui_chromium.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router import ui
from tests.integration.harness import ADMIN_KEY, Running, make_config, serve

pytestmark = [pytest.mark.integration]

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _config(tmp_path: Path, **server: Any) -> Any:
    return make_config(
        tmp_path,
        [
            {"name": "alpha", "cost": {"per_image_usd": 0.01}, "faults": {"error_ratio": 1.0}},
            {"name": "bravo", "cost": {"per_image_usd": 0.05}},
        ],
        routing={"strategy": "cheapest"},
        server=server,
    )


async def _snapshots(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The ``snapshot`` events of an SSE response, decoded."""
    event = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "snapshot":
            yield json.loads(line.removeprefix("data: "))
            event = None


def _anonymous(running: Running) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=running.url, timeout=30)


async def test_the_page_is_self_contained_and_needs_no_key(tmp_path: Path) -> None:
    """``/ui`` answers without a key with one HTML page whose inline code the CSP pins."""
    async with serve(_config(tmp_path)) as running, _anonymous(running) as anon:
        r = await anon.get("/ui")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        html = r.text
        # No external assets: nothing is fetched from anywhere but this page's own feed.
        assert not re.search(r'(src|href)="(https?:)?//', html)
        assert "<link" not in html
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        script = re.findall(r"<script>(.*?)</script>", html, re.S)
        style = re.findall(r"<style>(.*?)</style>", html, re.S)
        assert len(script) == 1
        assert len(style) == 1
        for source in (script[0], style[0]):
            digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp
        initial = re.search(r'<script id="initial" type="application/json">(.*?)</script>', html)
        assert initial is not None
        snapshot = json.loads(initial.group(1))
        assert [p["name"] for p in snapshot["providers"]] == ["alpha", "bravo"]


async def test_the_page_shows_no_secrets_or_upstream_addresses(tmp_path: Path) -> None:
    """Neither the page nor its feed carries API keys, upstream URLs or webhook secrets."""
    async with serve(_config(tmp_path)) as running, _anonymous(running) as anon:
        await running.generate()
        page = (await anon.get("/ui")).text
        async with anon.stream("GET", "/ui/events") as r:
            first = await anext(_snapshots(r))
        feed = json.dumps(first)
        for text in (page, feed):
            assert "sk-sandbox" not in text
            assert running.emulator("alpha").base_url not in text
            assert "api_key" not in text
            assert "base_url" not in text


async def test_an_operator_reason_cannot_close_the_inline_data(tmp_path: Path) -> None:
    """A drain reason with ``</script>`` stays inside the JSON data block."""
    async with serve(_config(tmp_path)) as running, _anonymous(running) as anon:
        reason = "</script><script>alert(1)</script>"
        r = await running.client.post(
            "/v1/providers/bravo/drain", json={"reason": reason}, headers=ADMIN
        )
        assert r.status_code == 200
        html = (await anon.get("/ui")).text
        assert html.count("</script>") == 2  # the data block's and the script's own
        initial = re.search(r'<script id="initial" type="application/json">(.*?)</script>', html)
        assert initial is not None
        assert json.loads(initial.group(1))["providers"][1]["drain_reason"] == reason


async def test_the_feed_pushes_a_breaker_change_without_a_reload(tmp_path: Path) -> None:
    """The first snapshot comes at once; a forced-open breaker appears in a later one."""
    async with (
        serve(_config(tmp_path)) as running,
        _anonymous(running) as anon,
        anon.stream("GET", "/ui/events") as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        feed = _snapshots(r)
        async with asyncio.timeout(10):
            first = await anext(feed)
            assert {p["name"]: p["breaker"] for p in first["providers"]} == {
                "alpha": "closed",
                "bravo": "closed",
            }
            assert first["routable"] == 2
            await running.client.post(
                "/v1/providers/bravo/breaker", json={"state": "open"}, headers=ADMIN
            )
            seen = 0
            async for snap in feed:
                seen += 1
                bravo = snap["providers"][1]
                if bravo["breaker"] == "open":
                    break
            assert bravo["breaker_forced_open"] is True
            assert snap["routable"] == 1
            assert seen <= 3  # the change wakes the feed; it does not wait for a tick


async def test_the_feed_lists_recent_failovers_newest_first(tmp_path: Path) -> None:
    """Failovers carry when, which job, from, to and why."""
    async with serve(_config(tmp_path)) as running, _anonymous(running) as anon:
        ids = []
        for _ in range(2):
            r = await running.generate()
            assert r.headers["x-switchman-provider"] == "bravo"
            ids.append(r.json()["id"])
        async with anon.stream("GET", "/ui/events") as r:
            snap = await anext(_snapshots(r))
        failovers = snap["failovers"]
        assert [f["job_id"] for f in failovers] == ids[::-1]
        assert {(f["from"], f["to"], f["reason"]) for f in failovers} == {
            ("alpha", "bravo", "upstream_unavailable")
        }
        assert failovers[0]["at"] >= failovers[1]["at"]


async def test_feeds_end_when_the_service_shuts_down(tmp_path: Path) -> None:
    """``begin_shutdown`` ends open streams, so a graceful shutdown is not held up."""
    async with serve(_config(tmp_path)) as running, _anonymous(running) as anon:
        async with anon.stream("GET", "/ui/events") as r:
            feed = _snapshots(r)
            await anext(feed)
            running.service.begin_shutdown()
            async with asyncio.timeout(5):
                rest = [s async for s in feed]
        assert len(rest) <= 1


async def test_a_disconnected_client_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    """The server notices a client went away; the harness's shutdown then waits for nothing."""
    async with asyncio.timeout(20):
        async with serve(_config(tmp_path)) as running:
            for _ in range(3):
                async with _anonymous(running) as anon, anon.stream("GET", "/ui/events") as r:
                    await anext(_snapshots(r))
            # Leaving ``serve`` waits for every open connection (no grace timeout).


async def test_the_page_can_be_turned_off(tmp_path: Path) -> None:
    """``server.ui_enabled: false`` makes ``/ui`` and its feed 404."""
    async with serve(_config(tmp_path, ui_enabled=False)) as running, _anonymous(running) as anon:
        for path in ("/ui", "/ui/events"):
            r = await anon.get(path)
            assert r.status_code == 404
            assert r.headers["content-type"] == "application/problem+json"


async def test_open_feeds_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond ``MAX_STREAMS`` open feeds a new one is a 503 problem with ``Retry-After``."""
    monkeypatch.setattr(ui, "MAX_STREAMS", 1)
    async with (
        serve(_config(tmp_path)) as running,
        _anonymous(running) as anon,
        anon.stream("GET", "/ui/events") as first,
    ):
        await anext(_snapshots(first))
        second = await anon.get("/ui/events")
        assert second.status_code == 503
        assert second.headers["content-type"] == "application/problem+json"
        assert second.headers["retry-after"] == "5"
        assert (await anon.get("/ui")).status_code == 200  # the page itself is not capped
