"""Vertex with a service account, over real HTTP: Switchman mints its own access tokens at
the Veo emulator's token endpoint and replaces them as they expire.

The service and the emulator share a clock that is real time plus jumps the test makes,
so a token's lifetime passes between two jobs without waiting for it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.adapters.google_auth import GRANT_TYPE, ServiceAccount
from router.sandbox.veo import DEFAULT_API_KEY, VeoEmulator
from tests.integration.harness import Running, make_config, serve
from tests.service_accounts import CLIENT_EMAIL, key_file, rsa_key

pytestmark = [pytest.mark.integration]

MODEL = "veo-3.1-fast-generate-preview"
CREATE = (
    f"/v1/projects/proj-1/locations/us-central1/publishers/google/models/{MODEL}:predictLongRunning"
)
PROBE = f"/v1beta1/publishers/google/models/{MODEL}"
VIDEO = {"kind": "video", "prompt": "a lighthouse at dusk", "duration_s": 6}
#: The emulator's token lifetime: Switchman replaces a token 5 minutes (here, half
#: its life) before it expires.
LIFETIME_S = 600


class JumpClock:
    """The system clock plus the jumps a test makes."""

    __slots__ = ("_offset",)

    def __init__(self) -> None:
        self._offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def time(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``, at once."""
        self._offset += seconds


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
async def emulator(clock: JumpClock) -> AsyncIterator[VeoEmulator]:
    """Veo trusting the session's first RSA key for CLIENT_EMAIL."""
    emu = VeoEmulator(
        clock=clock,
        service_accounts={CLIENT_EMAIL: rsa_key(0).public_key()},
        token_lifetime_s=LIFETIME_S,
    )
    emu.job_faults.duration_s = 0.05
    async with emu:
        yield emu


def vertex(tmp_path: Path, emulator: VeoEmulator, key_index: int = 0) -> dict[str, Any]:
    """A Vertex provider with no API key, authenticated by a key file on disk."""
    path = tmp_path / "service-account.json"
    path.write_text(key_file(emulator.token_uri, rsa_key(key_index)))
    return {
        "name": "vertex",
        "adapter": "veo",
        "base_url": emulator.base_url,
        "api_key": None,
        "kinds": ["video"],
        "models": {"video": MODEL},
        "cost": {"per_video_s_usd": 0.15},
        "poll": {"interval_s": 0.05, "max_interval_s": 0.1},
        "breaker": {"fail_max": 5, "reset_timeout_s": 30},
        "options": {"api": "vertex", "project": "proj-1", "service_account_file": str(path)},
    }


def bearer(emulator: VeoEmulator) -> str:
    """The token on the emulator's last create request."""
    create = emulator.stats.last(CREATE)
    assert create is not None
    return create.headers["Authorization"]


async def succeed(running: Running) -> None:
    """Run a video job that must succeed."""
    r = await running.generate(VIDEO)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded", [a["error"] for a in r.json()["attempts"]]


async def test_a_vertex_job_gets_a_fresh_token_after_the_last_one_expired(
    tmp_path: Path, emulator: VeoEmulator, clock: JumpClock
) -> None:
    """Job one mints a token; once the emulator has expired it, job two mints another."""
    config = make_config(tmp_path, [vertex(tmp_path, emulator)])
    async with (
        serve(config, clock=clock) as running,
        httpx.AsyncClient(base_url=emulator.base_url) as direct,
    ):
        await succeed(running)
        first_token = bearer(emulator)
        clock.advance(LIFETIME_S)
        stale = await direct.get(PROBE, headers={"Authorization": first_token})
        await succeed(running)
        second_token = bearer(emulator)
    assert first_token.startswith("Bearer ya29.sandbox-")
    assert stale.status_code == 401  # the first token really was dead
    assert second_token != first_token
    assert (emulator.tokens.issued, emulator.tokens.refused) == (2, 0)


async def test_a_token_is_reused_until_its_refresh_point(
    tmp_path: Path, emulator: VeoEmulator, clock: JumpClock
) -> None:
    """Jobs within the token's useful life (here 300 s) share it; one after it gets a new one."""
    config = make_config(tmp_path, [vertex(tmp_path, emulator)])
    async with serve(config, clock=clock) as running:
        await succeed(running)
        clock.advance(LIFETIME_S / 2 - 10)  # 10 s: more than the jobs take in real time
        await succeed(running)
        reused = emulator.tokens.issued
        clock.advance(10)
        await succeed(running)
    assert reused == 1
    assert emulator.tokens.issued == 2


async def test_a_key_the_emulator_does_not_trust_fails_the_job_with_auth(
    tmp_path: Path, emulator: VeoEmulator
) -> None:
    """An assertion signed by another RSA key is refused (invalid_grant): the attempt fails
    with kind auth before any Vertex call, and, as for any refused platform credential,
    the provider's breaker counts it."""
    config = make_config(tmp_path, [vertex(tmp_path, emulator, key_index=1)])
    async with serve(config) as running:
        job = (await running.generate(VIDEO)).json()
        assert running.service.registry is not None
        rt = running.service.registry.get("vertex")
        assert rt is not None
        failures = rt.guard.breaker.failure_count
    assert job["status"] == "failed", job
    assert [a["error"]["kind"] for a in job["attempts"]] == ["auth"]
    assert "invalid_grant" in job["attempts"][0]["error"]["message"]
    assert (emulator.tokens.issued, emulator.tokens.refused) == (0, 1)
    assert emulator.stats.total == 0  # Vertex itself was never called
    assert failures == 1


async def test_the_emulator_checks_audience_expiry_and_issuer() -> None:
    """The token endpoint refuses a wrong grant type, an unknown account, a wrong audience
    and an expired assertion, each with Google's error; the static key still works."""
    emu = VeoEmulator(service_accounts={CLIENT_EMAIL: rsa_key(0).public_key()})
    async with emu, httpx.AsyncClient(base_url=emu.base_url) as client:
        good = ServiceAccount.from_json(key_file(emu.token_uri))
        other_aud = ServiceAccount.from_json(key_file(f"{emu.base_url}/elsewhere"))
        stranger = ServiceAccount.from_json(
            key_file(emu.token_uri, client_email="who@proj-1.iam.gserviceaccount.com")
        )
        now = time.time()

        async def exchange(assertion: str, grant_type: str = GRANT_TYPE) -> httpx.Response:
            form = {"grant_type": grant_type, "assertion": assertion}
            return await client.post("/token", data=form)

        answers = {
            "grant_type": await exchange(good.assertion(now), "password"),
            "account": await exchange(stranger.assertion(now)),
            "audience": await exchange(other_aud.assertion(now)),
            "expired": await exchange(good.assertion(now - 3601)),
            "garbage": await exchange("not.a.jwt"),
        }
        ok = await exchange(good.assertion(now))
        token = ok.json()["access_token"]
        with_token = await client.get(PROBE, headers={"Authorization": f"Bearer {token}"})
        with_key = await client.get(PROBE, headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})
    assert {k: (r.status_code, r.json()["error"]) for k, r in answers.items()} == {
        "grant_type": (400, "unsupported_grant_type"),
        "account": (400, "invalid_grant"),
        "audience": (400, "invalid_grant"),
        "expired": (400, "invalid_grant"),
        "garbage": (400, "invalid_grant"),
    }
    assert ok.status_code == 200
    assert ok.json()["expires_in"] == 3600
    assert (with_token.status_code, with_key.status_code) == (200, 200)
