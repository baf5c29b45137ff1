"""The generic ``http`` adapter through Switchman's HTTP API to the in-house emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from router.sandbox.http import DEFAULT_API_KEY, HttpEmulator
from router.sandbox.media import png_size
from router.sandbox.mp4 import mp4_info
from tests.integration.harness import Running, make_config, serve

pytestmark = [pytest.mark.integration]

STATUS_MAP = {
    "pending": "queued",
    "working": "running",
    "done": "succeeded",
    "error": "failed",
    "cancelled": "canceled",
}
ASYNC_OPTIONS: dict[str, Any] = {
    "submit": {
        "method": "POST",
        "path": "/generate",
        "body": {
            "prompt": "{prompt}",
            "kind": "{kind}",
            "width": "{width}",
            "height": "{height}",
            "seconds": "{duration_s}",
            "seed": "{seed}",
        },
    },
    "id_field": "id",
    "poll": {"method": "GET", "path": "/jobs/{id}"},
    "status_field": "status",
    "status_map": STATUS_MAP,
    "outputs_field": "result.urls",
    "progress_field": "progress",
    "error_field": "error.message",
    "cancel": {"method": "POST", "path": "/jobs/{id}/cancel"},
    "auth_header": "Authorization",
    "auth_scheme": "Bearer",
    "content_policy_match": "safety filter",
}
SYNC_OPTIONS: dict[str, Any] = {
    "submit": {
        "path": "/generate/sync",
        "body": {"prompt": "{prompt}", "kind": "image", "width": "{width}", "height": "{height}"},
    },
    "id_field": "id",
    "status_field": "status",
    "status_map": STATUS_MAP,
    "outputs_field": "result.urls",
    "error_field": "error.message",
    "content_policy_match": "safety filter",
}


def house(name: str, options: dict[str, Any], kind: str = "video", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "adapter": "http",
        "kinds": [kind],
        "models": {},
        "api_key": DEFAULT_API_KEY,
        "cost": {"per_image_usd": 0.01, "per_video_s_usd": 0.1},
        "poll": {"interval_s": 0.05, "max_interval_s": 0.1},
        "options": options,
        **extra,
    }


def emulator(running: Running, name: str) -> HttpEmulator:
    emu = running.emulator(name)
    assert isinstance(emu, HttpEmulator)
    return emu


async def fetch(running: Running, url: str) -> bytes:
    response = await running.client.get(url)
    assert response.status_code == 200, response.text
    return response.content


async def test_synchronous_image(tmp_path: Path) -> None:
    """The sync route answers at once: a 512×384 PNG, priced per image, body as configured."""
    config = make_config(tmp_path, [house("inhouse", SYNC_OPTIONS, "image")])
    async with serve(config) as running:
        r = await running.generate(
            {"kind": "image", "prompt": "a red fox", "width": 512, "height": 384}
        )
        job = r.json()
        png = await fetch(running, job["outputs"][0]["url"]) if job.get("outputs") else b""
        emu = emulator(running, "inhouse")
        sent = emu.stats.last("/generate/sync")
    assert job["status"] == "succeeded", job
    assert png_size(png) == (512, 384)
    assert job["cost_usd"] == pytest.approx(0.01)
    assert sent is not None
    assert sent.headers["Authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert sent.headers["X-Client-Request-Id"] == job["attempts"][0]["id"]
    assert sent.json() == {"prompt": "a red fox", "kind": "image", "width": 512, "height": 384}
    assert "/jobs/" not in "".join(emu.stats.by_path)  # nothing polled


async def test_asynchronous_video(tmp_path: Path) -> None:
    """The async route is polled through pending/working to done: a real 4 s MP4, priced."""
    config = make_config(tmp_path, [house("inhouse", ASYNC_OPTIONS)])
    body = {"kind": "video", "prompt": "waves", "width": 640, "height": 360, "duration_s": 4}
    async with serve(config) as running:
        r = await running.generate(body)
        job = r.json()
        mp4 = await fetch(running, job["outputs"][0]["url"]) if job.get("outputs") else b""
        emu = emulator(running, "inhouse")
        sent = emu.stats.last("/generate")
        polls = sum(n for path, n in emu.stats.by_path.items() if path.startswith("/jobs/"))
    assert job["status"] == "succeeded", job
    assert mp4_info(mp4) == (640, 360, 4.0)
    assert job["cost_usd"] == pytest.approx(0.4)
    assert sent is not None
    assert sent.json() == {
        "prompt": "waves",
        "kind": "video",
        "width": 640,
        "height": 360,
        "seconds": 4.0,
    }
    assert polls >= 1
    assert emu.accepted == {job["attempts"][0]["id"]: 1}


async def test_content_policy_fails_the_job_without_failover(tmp_path: Path) -> None:
    """A job the safety filter blocks is content_policy: no second provider is tried."""
    config = make_config(
        tmp_path,
        [house("first", ASYNC_OPTIONS, priority=1), house("second", ASYNC_OPTIONS, priority=2)],
        routing={"strategy": "priority"},
    )
    async with serve(config) as running:
        r = await running.generate({"kind": "video", "prompt": "a forbidden scene"})
        job = r.json()
        second = emulator(running, "second").stats.total
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "content_policy"
    assert [a["error"]["kind"] for a in job["attempts"]] == ["content_policy"]
    assert second == 0


async def test_failed_job_fails_over_once_per_attempt(tmp_path: Path) -> None:
    """A job that ends in error upstream fails over; each provider got exactly one submission."""
    config = make_config(
        tmp_path,
        [house("first", ASYNC_OPTIONS, priority=1), house("second", ASYNC_OPTIONS, priority=2)],
        routing={"strategy": "priority"},
    )
    async with serve(config) as running:
        emulator(running, "first").job_faults.error_ratio = 1.0
        r = await running.generate({"kind": "video", "prompt": "waves", "duration_s": 2})
        job = r.json()
        first, second = emulator(running, "first"), emulator(running, "second")
    assert job["status"] == "succeeded", job
    assert [a["provider"] for a in job["attempts"]] == ["first", "second"]
    assert job["attempts"][0]["error"]["kind"] == "upstream_unavailable"
    assert first.accepted == {job["attempts"][0]["id"]: 1}
    assert second.accepted == {job["attempts"][1]["id"]: 1}


async def test_stalled_job_is_canceled_and_fails_over(tmp_path: Path) -> None:
    """A job stuck at one progress value past stall_s is canceled upstream and failed over."""
    stalling = house(
        "first",
        ASYNC_OPTIONS,
        priority=1,
        poll={"interval_s": 0.05, "max_interval_s": 0.1, "stall_s": 0.5},
    )
    config = make_config(
        tmp_path,
        [stalling, house("second", ASYNC_OPTIONS, priority=2)],
        routing={"strategy": "priority"},
    )
    async with serve(config) as running:
        emulator(running, "first").job_faults.stall_ratio = 1.0
        r = await running.generate({"kind": "video", "prompt": "waves", "duration_s": 2})
        job = r.json()
        first = emulator(running, "first")
    upstream_id = job["attempts"][0]["upstream_id"]
    assert job["status"] == "succeeded", job
    assert job["attempts"][0]["error"]["kind"] == "timeout"
    assert job["attempts"][1]["provider"] == "second"
    assert first.stats.by_path.get(f"/jobs/{upstream_id}/cancel") == 1
    assert first.jobs[upstream_id].cancelled


async def test_upstream_429_fails_over_with_retry_after(tmp_path: Path) -> None:
    """A rate-limited submit (429 + Retry-After) moves the job on; the caller sees success."""
    config = make_config(
        tmp_path,
        [
            house("first", SYNC_OPTIONS, "image", priority=1, faults={"rate_limit_per_s": 0.001}),
            house("second", SYNC_OPTIONS, "image", priority=2),
        ],
        routing={"strategy": "priority"},
    )
    async with serve(config) as running:
        first = emulator(running, "first")
        first.faults.update(rate_limit_per_s=0.001)  # a fresh bucket allows one
        await running.generate({"kind": "image", "prompt": "one"})
        r = await running.generate({"kind": "image", "prompt": "two"})
        job = r.json()
        limited = first.stats.by_status.get(429, 0)
    assert job["status"] == "succeeded", job
    assert limited >= 1
    kinds = [a["error"]["kind"] for a in job["attempts"] if a.get("error")]
    assert kinds in ([], ["rate_limited"])  # the guard may already skip the throttled provider
    assert job["provider"] == "second"


async def test_emulator_validates_and_exposes_job_faults() -> None:
    """The in-house emulator: bearer auth, 422 on unknown fields, /_sandbox/job_faults."""
    emu = HttpEmulator()
    async with emu, httpx.AsyncClient(base_url=emu.base_url) as client:
        auth = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
        no_auth = await client.post("/generate", json={"prompt": "x"})
        unknown = await client.post("/generate", json={"prompt": "x", "colour": 1}, headers=auth)
        faults = await client.post("/_sandbox/job_faults", json={"error_ratio": 0.5})
        missing = await client.get("/jobs/nope", headers=auth)
    assert no_auth.status_code == 401
    assert unknown.status_code == 422
    assert "colour" in unknown.json()["error"]["message"]
    assert faults.status_code == 200
    assert emu.job_faults.error_ratio == 0.5
    assert missing.status_code == 404
