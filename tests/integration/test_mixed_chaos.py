"""Issue 3, acceptance 4: one emulator of each provider kind, faults on two of them.

200 jobs (half image, half video) must all succeed, and no Switchman attempt may
reach any provider twice: each emulator counts submissions per attempt id.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.sandbox.fal import DEFAULT_API_KEY as FAL_KEY
from router.sandbox.replicate import DEFAULT_API_KEY as REPLICATE_KEY
from router.sandbox.runway import DEFAULT_API_KEY as RUNWAY_KEY
from router.sandbox.stability import DEFAULT_API_KEY as STABILITY_KEY
from router.sandbox.veo import DEFAULT_API_KEY as VEO_KEY
from tests.integration.harness import Running, make_config, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_POLL = {"interval_s": 0.05, "max_interval_s": 0.2, "stall_s": 20}
COMMON: dict[str, Any] = {
    "rate_limit": {"requests": 1000, "per_s": 1},
    "breaker": {"fail_max": 5, "reset_timeout_s": 2},
    "poll": FAST_POLL,
}
PROVIDERS: list[dict[str, Any]] = [
    {
        "name": "openai",
        "adapter": "openai",
        "kinds": ["image"],
        "cost": {"per_image_usd": 0.04},
        "faults": {},
    },
    {
        "name": "stability",
        "adapter": "stability",
        "api_key": STABILITY_KEY,
        "kinds": ["image"],
        "models": {"image": "core"},
        "cost": {"per_image_usd": 0.03},
        "faults": {},
    },
    {
        # Faulted: 20 % of submissions fail with a 5xx.
        "name": "replicate",
        "adapter": "replicate",
        "api_key": REPLICATE_KEY,
        "kinds": ["image", "video"],
        "models": {"image": "black-forest-labs/flux-schnell", "video": "minimax/video-01"},
        "cost": {"per_image_usd": 0.003, "per_video_s_usd": 0.02},
        "faults": {"error_ratio": 0.2},
    },
    {
        # Faulted: throttles at 4 req/s with 429 + Retry-After.
        "name": "fal",
        "adapter": "fal",
        "api_key": FAL_KEY,
        "kinds": ["image", "video"],
        "models": {
            "image": "fal-ai/flux/schnell",
            "video": "fal-ai/kling-video/v2.1/standard/text-to-video",
        },
        "cost": {"per_image_usd": 0.01, "per_video_s_usd": 0.03},
        "options": {"jwks_url": "/.well-known/jwks.json"},
        "faults": {"rate_limit_per_s": 4, "retry_after_s": 1},
    },
    {
        "name": "veo",
        "adapter": "veo",
        "api_key": VEO_KEY,
        "kinds": ["video"],
        "models": {"video": "veo-3.1-fast-generate-preview"},
        "cost": {"per_video_s_usd": 0.15},
        "options": {"api": "gemini"},
        "faults": {},
    },
    {
        "name": "runway",
        "adapter": "runway",
        "api_key": RUNWAY_KEY,
        "kinds": ["video"],
        "models": {"video": "gen4.5"},
        "cost": {"per_video_s_usd": 0.05},
        "faults": {},
    },
]


def _submissions_by_attempt(running: Running, name: str) -> Counter[str]:
    """Upstream submissions the named emulator received, per Switchman attempt id."""
    emulator: Any = running.emulator(name)
    for attr in ("submissions", "accepted"):
        counts = getattr(emulator, attr, None)
        if isinstance(counts, Counter):
            return counts
    # The synchronous OpenAI emulator records requests; count their attempt header.
    recent = emulator.stats.recent
    return Counter(
        {k.lower(): v for k, v in r.headers.items()}.get("x-client-request-id", "unknown")
        for r in recent
        if r.path == "/v1/images/generations"
    )


async def test_mixed_providers_under_chaos_all_succeed_without_duplicates(tmp_path: Path) -> None:
    """200 jobs over six provider kinds, two faulted: all succeed, no attempt submitted twice."""
    providers = [{**COMMON, **p} for p in PROVIDERS]
    config = make_config(tmp_path, providers)
    async with serve(config) as running:
        # Keep every OpenAI request for the duplicate count (the default keeps 50).
        running.emulator("openai").stats.recent = deque(maxlen=10_000)
        running.emulator("replicate").job_faults.fail_ratio = 0.1  # type: ignore[attr-defined]
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> httpx.Response:
            body: dict[str, Any] = {"kind": "image", "prompt": f"lighthouse {i}"}
            if i % 2:
                body = {
                    "kind": "video",
                    "prompt": f"waves {i}",
                    "duration_s": 8,
                    "aspect_ratio": "16:9",
                }
            async with sem:
                return await running.generate(body, Prefer="wait=60")

        responses = await asyncio.gather(*(one(i) for i in range(200)))
        jobs = [r.json() for r in responses]
        counts = {p["name"]: _submissions_by_attempt(running, p["name"]) for p in PROVIDERS}

    statuses = Counter(j.get("status") for j in jobs)
    assert statuses == {"succeeded": 200}, statuses
    assert Counter(j["kind"] for j in jobs) == {"image": 100, "video": 100}
    duplicates = {
        name: {a: n for a, n in c.items() if n > 1 and a != "unknown"} for name, c in counts.items()
    }
    assert all(not d for d in duplicates.values()), duplicates
    # Every attempt Switchman recorded reached its provider at most once, and the
    # faults really happened: some jobs needed more than one attempt.
    attempts = [a for j in jobs for a in j["attempts"]]
    assert any(len(j["attempts"]) > 1 for j in jobs)
    failed_at = Counter(a["provider"] for a in attempts if a["status"] == "failed")
    assert set(failed_at) <= {"replicate", "fal"}, failed_at  # only the faulted ones fail
    assert failed_at["replicate"] > 0, failed_at
