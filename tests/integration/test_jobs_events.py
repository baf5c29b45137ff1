"""The SSE stream of a job over real HTTP (issue 4, acceptance 4)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from router.sandbox.async_jobs import AsyncJobEmulator
from tests.integration.harness import make_config, serve
from tests.integration.sse import SseEvent, read_events

VIDEO = {"kind": "video", "prompt": "waves at dusk", "duration_s": 5, "aspect_ratio": "16:9"}


def video_provider() -> list[dict[str, object]]:
    return [
        {
            "name": "rep",
            "adapter": "replicate",
            "api_key": "r8_sandbox",
            "kinds": ["video"],
            "models": {"video": "kwaivgi/kling-v2.1"},
            "poll": {"interval_s": 0.05, "max_interval_s": 0.1},
        }
    ]


async def test_a_client_sees_every_transition_in_order_and_can_resume(tmp_path: Path) -> None:
    """status → attempt → progress… → output → final, ids 1..n; Last-Event-ID resumes."""
    config = make_config(tmp_path, video_provider())
    async with serve(config) as running:
        rep = running.emulator("rep")
        assert isinstance(rep, AsyncJobEmulator)
        rep.job_faults.run_s = 1.0
        created = await running.client.post("/v1/generations", json=VIDEO)
        assert created.status_code == 202
        url = f"/v1/generations/{created.json()['id']}/events"

        head: list[SseEvent] = []
        async with contextlib.aclosing(read_events(running.client, url)) as stream:
            async for event in stream:
                head.append(event)
                if len(head) == 3:
                    break  # the client drops mid-job
        rest = [e async for e in read_events(running.client, url, last_event_id=3)]
        full = [e async for e in read_events(running.client, url)]
        tail = [e async for e in read_events(running.client, url, last_event_id=full[-1].id)]

    assert head + rest == full, "a reconnecting client misses nothing and repeats nothing"
    assert [e.id for e in full] == list(range(1, len(full) + 1))
    types = [e.event for e in full]
    assert types[0] == "status"
    assert full[0].data == {"status": "running"}
    assert types[-2:] == ["status", "final"]
    assert full[-2].data == {"status": "succeeded"}
    assert full[-1].data["status"] == "succeeded"
    assert full[-1].data["outputs"][0]["content_type"] == "video/mp4"
    progress = [e.data["progress"] for e in full if e.event == "progress"]
    assert len(progress) >= 2
    assert progress == sorted(progress)
    assert progress[-1] == 100
    assert types.index("output") < types.index("final")
    attempts = [e.data for e in full if e.event == "attempt"]
    assert attempts[0]["status"] == "running"
    assert attempts[-1]["status"] == "succeeded"
    assert tail == [], "a client that saw the final event gets an empty, ended stream"


async def test_another_tenants_job_has_no_stream(tmp_path: Path) -> None:
    """The stream is tenant-scoped: an unknown (or foreign) id is 404."""
    config = make_config(tmp_path, video_provider())
    async with serve(config) as running:
        response = await running.client.get("/v1/generations/gen_nope/events")
    assert response.status_code == 404
