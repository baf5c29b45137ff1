"""Issue 5, acceptance 5: the status page in a real headless Chromium.

With ``/ui`` open, a provider's breaker is forced open through the admin API and
the page must show it open within 2 s, without a reload. The DOM is read over
the Chrome DevTools Protocol (``Runtime.evaluate``) on a loopback debugging
port; the test saves the screenshot ``docs/ui.png`` that the README shows.

Chromium is a system package (``make system-deps``). Without it the test skips,
except under ``CI=true`` where it fails: CI must not pass by skipping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import ADMIN_KEY, Running, make_config, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ui.png"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    reason = "chromium is not installed (make system-deps installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + "; CI must run this test", pytrace=False)
    pytest.skip(reason)


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self._events.put_nowait(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its ``result``."""
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        async with asyncio.timeout(20):
            reply = await future
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def event(self, method: str) -> dict[str, Any]:
        """The next event named ``method``."""
        async with asyncio.timeout(20):
            while True:
                event = await self._events.get()
                if event["method"] == method:
                    return event

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a page expression."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float) -> float:
        """Poll ``expression`` until truthy; seconds it took (fails after ``timeout_s``)."""
        started = time.monotonic()
        async with asyncio.timeout(timeout_s):
            while not await self.evaluate(expression):
                await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[DevTools]:
    """A headless Chromium on a loopback debugging port, and a DevTools client for its page."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    proc = await asyncio.create_subprocess_exec(
        _chromium(),
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its own process group, killed as a whole below
    )
    devtools: DevTools | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while not port_file.exists() or not port_file.read_text().strip():
                if proc.returncode is not None:
                    raise RuntimeError(f"chromium exited with {proc.returncode}")
                await asyncio.sleep(0.05)  # the browser is starting; no event to wait on
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json()
            page = next(t for t in targets if t["type"] == "page")
            ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
            devtools = DevTools(ws)
            yield devtools
    finally:
        if devtools is not None:
            await devtools.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            await proc.wait()


async def _traffic(running: Running, n: int) -> None:
    for _ in range(n):
        r = await running.generate()
        assert r.status_code == 200


async def _admin(running: Running, path: str, body: dict[str, Any]) -> None:
    r = await running.client.post(path, json=body, headers=ADMIN)
    assert r.status_code == 200, r.text


async def test_a_breaker_forced_open_shows_on_the_page_within_2s(tmp_path: Path) -> None:
    """The page, left open, shows a forced-open breaker within 2 s without reloading."""
    config = make_config(
        tmp_path,
        [
            {
                "name": "openai-budget",
                "cost": {"per_image_usd": 0.02},
                "faults": {"error_ratio": 0.5, "latency_s": 0.03},
            },
            {
                "name": "openai-primary",
                "cost": {"per_image_usd": 0.04},
                "faults": {"latency_s": 0.02},
            },
            {
                "name": "openai-eu",
                "cost": {"per_image_usd": 0.05},
                "faults": {"latency_s": 0.08},
                "priority": 50,
            },
        ],
        routing={"strategy": "cheapest"},
    )
    async with serve(config, rng=random.Random(7)) as running:
        await _traffic(running, 12)  # latencies, scores and a few failovers to show
        await _admin(running, "/v1/providers/openai-eu/drain", {"reason": "INC-4711: EU latency"})
        async with chromium(tmp_path) as page:
            await page.call("Page.enable")
            await page.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=820,
                deviceScaleFactor=1,
                mobile=False,
            )
            await page.call("Page.navigate", url=f"{running.url}/ui")
            await page.event("Page.loadEventFired")
            await page.wait_for("document.body.dataset.conn === 'live'", 10)
            # A marker a reload would wipe out.
            await page.evaluate("window.__sameDocument = 42")
            selector = "document.querySelector('[data-provider=\"openai-primary\"]')"
            assert await page.evaluate(f"{selector}.dataset.breaker") == "closed"

            await _admin(
                running,
                "/v1/providers/openai-primary/breaker",
                {"state": "open", "reason": "chromium test"},
            )
            took = await page.wait_for(f"{selector}.dataset.breaker === 'open'", 2.0)
            assert took < 2.0
            print(f"breaker open visible after {took:.3f}s")
            assert await page.evaluate("window.__sameDocument") == 42
            assert await page.evaluate(f"{selector}.querySelector('.badge').textContent") == "OPEN"
            assert "held open by operator" in await page.evaluate(f"{selector}.textContent")
            eu = "document.querySelector('[data-provider=\"openai-eu\"]')"
            assert await page.evaluate(f"{eu}.dataset.drained") == "true"
            assert "INC-4711: EU latency" in await page.evaluate(f"{eu}.textContent")
            assert await page.evaluate("document.querySelectorAll('#failovers tbody tr').length")

            shot = await page.call("Page.captureScreenshot", format="png")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))

            # An operator's text is shown as text, never run as markup.
            hostile = '<img src=x onerror="document.body.dataset.pwned=1">'
            await _admin(running, "/v1/providers/openai-eu/drain", {"reason": hostile})
            await page.wait_for(f"{eu}.querySelector('.reason').textContent === {hostile!r}", 5)
            assert await page.evaluate(f"{eu}.querySelector('img') === null")
            assert await page.evaluate("document.body.dataset.pwned === undefined")

            await _admin(running, "/v1/providers/openai-primary/breaker", {"state": "closed"})
            await page.wait_for(f"{selector}.dataset.breaker === 'closed'", 2.0)
    assert SCREENSHOT.stat().st_size > 10_000
