"""Veo through Switchman's HTTP API to the Veo emulator, in both flavours (Gemini and Vertex)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from router.sandbox.mp4 import mp4_info
from router.sandbox.veo import DEFAULT_API_KEY, VeoEmulator
from tests.integration.harness import Running, make_config, serve

pytestmark = [pytest.mark.integration]

MODEL = "veo-3.1-fast-generate-preview"
GEMINI_CREATE = f"/v1beta/models/{MODEL}:predictLongRunning"
VERTEX_MODEL = f"/v1/projects/proj-1/locations/us-central1/publishers/google/models/{MODEL}"


def veo(name: str, api: str = "gemini", **extra: Any) -> dict[str, Any]:
    """A Veo provider on its own emulator, polled fast."""
    options: dict[str, Any] = {"api": api}
    if api == "vertex":
        options |= {"project": "proj-1", "location": "us-central1"}
    return {
        "name": name,
        "adapter": "veo",
        "kinds": ["video"],
        "models": {"video": MODEL},
        "api_key": DEFAULT_API_KEY,
        "cost": {"per_video_s_usd": 0.15},
        "poll": {"interval_s": 0.05, "max_interval_s": 0.1},
        "breaker": {"fail_max": 5, "reset_timeout_s": 30},
        "options": options,
        **extra,
    }


def emulator(running: Running, name: str) -> VeoEmulator:
    emu = running.emulator(name)
    assert isinstance(emu, VeoEmulator)
    return emu


async def fetch(running: Running, url: str) -> httpx.Response:
    """An output, from Switchman's asset store (or wherever its URL points)."""
    response = await running.client.get(url)
    assert response.status_code == 200, response.text
    return response


VIDEO = {"kind": "video", "prompt": "a lighthouse at dusk", "duration_s": 6, "aspect_ratio": "9:16"}


@pytest.mark.parametrize("api", ["gemini", "vertex"])
async def test_veo_video_succeeds_with_a_real_mp4(tmp_path: Path, api: str) -> None:
    """A 6 s 9:16 video is created, polled to done, downloaded as a 720×1280 MP4 and priced."""
    config = make_config(tmp_path, [veo("veo", api)])
    async with serve(config) as running:
        r = await running.generate(VIDEO)
        job = r.json()
        assert r.status_code == 200, job
        assert job["status"] == "succeeded", job
        video = await fetch(running, job["outputs"][0]["url"])
        emu = emulator(running, "veo")
        path = GEMINI_CREATE if api == "gemini" else f"{VERTEX_MODEL}:predictLongRunning"
        create = emu.stats.last(path)
        polls = sum(
            n
            for p, n in emu.stats.by_path.items()
            if "/operations/" in p or p.endswith(":fetchPredictOperation")
        )
    assert mp4_info(video.content) == (720, 1280, 6.0)
    assert job["cost_usd"] == pytest.approx(0.15 * 6)
    assert job["attempts"][0]["upstream_id"].split("/operations/")[0].endswith(MODEL)
    assert create is not None
    if api == "gemini":
        assert create.headers["x-goog-api-key"] == DEFAULT_API_KEY
        assert "Authorization" not in create.headers
    else:
        assert create.headers["Authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert create.headers["X-Client-Request-Id"] == job["attempts"][0]["id"]
    params = create.json()["parameters"]
    assert params["aspectRatio"] == "9:16"
    assert params["durationSeconds"] == 6
    assert params["resolution"] == "720p"
    assert create.json()["instances"] == [{"prompt": "a lighthouse at dusk"}]
    assert polls >= 1
    assert set(emu.accepted.values()) == {1}


async def test_rai_filtered_video_fails_without_failover(tmp_path: Path) -> None:
    """A filtered prompt ends content_policy: the job fails and the second provider is untouched."""
    config = make_config(
        tmp_path,
        [veo("first", priority=1), veo("second", "vertex", priority=2)],
        routing={"strategy": "priority"},
    )
    async with serve(config) as running:
        r = await running.generate(
            {"kind": "video", "prompt": "something forbidden", "duration_s": 4}
        )
        job = r.json()
        second = emulator(running, "second").stats.total
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "content_policy"
    assert len(job["attempts"]) == 1
    assert job["attempts"][0]["error"]["kind"] == "content_policy"
    assert second == 0


async def test_failed_operation_fails_over_without_duplicate_submission(tmp_path: Path) -> None:
    """An operation ending in UNAVAILABLE (code 14) fails over to the other flavour, once."""
    config = make_config(
        tmp_path,
        [veo("first", priority=1), veo("second", "vertex", priority=2)],
        routing={"strategy": "priority"},
    )
    async with serve(config) as running:
        emulator(running, "first").job_faults.error_ratio = 1.0
        r = await running.generate(VIDEO)
        job = r.json()
        first, second = emulator(running, "first"), emulator(running, "second")
        video = await fetch(running, job["outputs"][0]["url"]) if job.get("outputs") else None
    assert job["status"] == "succeeded", job
    assert [a["provider"] for a in job["attempts"]] == ["first", "second"]
    assert job["attempts"][0]["error"]["kind"] == "upstream_unavailable"
    assert video is not None
    assert mp4_info(video.content)[:2] == (720, 1280)
    # Each attempt submitted exactly once, to its own provider.
    assert first.accepted == {job["attempts"][0]["id"]: 1}
    assert second.accepted == {job["attempts"][1]["id"]: 1}


async def test_rate_limited_create_fails_over(tmp_path: Path) -> None:
    """A 429 RESOURCE_EXHAUSTED on create moves the job to the next provider."""
    config = make_config(
        tmp_path,
        [
            veo("first", priority=1, faults={"error_ratio": 1.0, "error_status": 429}),
            veo("second", "vertex", priority=2),
        ],
        routing={"strategy": "priority"},
    )
    async with serve(config) as running:
        r = await running.generate(VIDEO)
        job = r.json()
        faults = emulator(running, "first").stats.faults
    assert job["status"] == "succeeded", job
    assert job["attempts"][0]["error"]["kind"] == "rate_limited"
    assert job["attempts"][1]["provider"] == "second"
    assert faults.get("error") == 1


async def test_emulator_refuses_bad_requests_and_keys() -> None:
    """The emulator itself: wrong key, Gemini-refused seed, bad duration, unknown model."""
    async with VeoEmulator() as emu, httpx.AsyncClient(base_url=emu.base_url) as client:
        good = {"x-goog-api-key": DEFAULT_API_KEY}
        body: dict[str, Any] = {"instances": [{"prompt": "x"}], "parameters": {}}
        wrong = await client.post(GEMINI_CREATE, json=body, headers={"x-goog-api-key": "nope"})
        missing = await client.post(GEMINI_CREATE, json=body)
        seed = await client.post(
            GEMINI_CREATE, json=body | {"parameters": {"seed": 1}}, headers=good
        )
        duration = await client.post(
            GEMINI_CREATE, json=body | {"parameters": {"durationSeconds": 7}}, headers=good
        )
        model = await client.post(
            "/v1beta/models/veo-9:predictLongRunning", json=body, headers=good
        )
        vertex = await client.post(
            f"{VERTEX_MODEL}:predictLongRunning",
            json=body,
            headers={"Authorization": "Bearer wrong"},
        )
    assert (wrong.status_code, wrong.json()["error"]["details"][0]["reason"]) == (
        400,
        "API_KEY_INVALID",
    )
    assert (missing.status_code, missing.json()["error"]["status"]) == (403, "PERMISSION_DENIED")
    assert (seed.status_code, seed.json()["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert duration.status_code == 400
    assert (model.status_code, model.json()["error"]["status"]) == (404, "NOT_FOUND")
    assert (vertex.status_code, vertex.json()["error"]["status"]) == (401, "UNAUTHENTICATED")


async def test_emulator_job_faults_endpoint_and_stall() -> None:
    """POST /_sandbox/job_faults sets post-acceptance faults; a stalled operation never ends."""
    emu = VeoEmulator()
    async with emu, httpx.AsyncClient(base_url=emu.base_url) as client:
        set_ = await client.post("/_sandbox/job_faults", json={"stall_ratio": 1.0, "duration_s": 0})
        key = {"x-goog-api-key": DEFAULT_API_KEY}
        created = await client.post(
            GEMINI_CREATE, json={"instances": [{"prompt": "x"}]}, headers=key
        )
        op = await client.get(f"/v1beta/{created.json()['name']}", headers=key)
        bad = await client.post("/_sandbox/job_faults", json={"stall_ratio": 2})
    assert set_.status_code == 200
    assert emu.job_faults.stall_ratio == 1.0
    assert op.status_code == 200
    assert op.json().get("done") is not True
    assert bad.status_code == 400
