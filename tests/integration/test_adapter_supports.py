"""Adapters refuse what they cannot do before any upstream call."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.sandbox.veo import DEFAULT_API_KEY as VEO_KEY
from tests.integration.harness import make_config, serve

pytestmark = pytest.mark.integration

VEO = {
    "name": "veo",
    "adapter": "veo",
    "api_key": VEO_KEY,
    "kinds": ["video"],
    "models": {"video": "veo-3.1-fast-generate-preview"},
    "options": {"api": "gemini"},
    "poll": {"interval_s": 0.05, "max_interval_s": 0.2},
    "faults": {},
}


async def test_a_duration_the_model_lacks_is_never_sent(tmp_path: Path) -> None:
    """Veo takes 4, 6 or 8 s: a 5 s request gets 503 and Veo sees no submission."""
    config = make_config(tmp_path, [VEO])
    async with serve(config) as running:
        refused = await running.generate({"kind": "video", "prompt": "waves", "duration_s": 5})
        sent_after_refusal = running.emulator("veo").stats.total
        accepted = await running.generate({"kind": "video", "prompt": "waves", "duration_s": 6})
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert accepted.status_code == 200
    assert accepted.json()["status"] == "succeeded"
    assert sent_after_refusal == 0
