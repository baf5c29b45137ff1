"""Asynchronous provider emulators in a process of their own, for the crash test.

The crash test SIGKILLs Switchman; the upstreams must outlive it, so they run here:
two Replicate emulators (two regions of one provider) and a fal emulator, each with
completion webhooks retried long enough to span a restart. A control endpoint
reports what each emulator saw, so the test can count submissions per Switchman
attempt and check that orphans were canceled.

Run: ``python -m tests.integration.crash_emulators --run-s 2``; the first stdout line
is JSON ``{"control": url, "emulators": {name: {"url", "jwks"?}}}``; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

import msgspec
from aiohttp import web

from router.sandbox.async_jobs import AsyncJobEmulator
from router.sandbox.fal import FalEmulator
from router.sandbox.replicate import ReplicateEmulator

NAMES = ("rep-us", "rep-eu", "fal")


def state(emulators: dict[str, AsyncJobEmulator]) -> dict[str, Any]:
    """What each emulator saw: submissions per attempt and per job, and its jobs."""
    return {
        name: {
            "submissions": dict(emu.submissions),
            "job_submissions": dict(emu.job_submissions),
            "jobs": {
                job_id: {
                    "canceled": job.canceled_at is not None,
                    "webhook": job.webhook,
                    "outcome": job.outcome.value,
                }
                for job_id, job in emu.jobs.items()
            },
        }
        for name, emu in emulators.items()
    }


async def main(run_s: float, seed: int) -> None:
    emulators: dict[str, AsyncJobEmulator] = {
        "rep-us": ReplicateEmulator(seed=seed),
        "rep-eu": ReplicateEmulator(seed=seed + 1),
        "fal": FalEmulator(seed=seed + 2),
    }
    described: dict[str, Any] = {}
    for name, emu in emulators.items():
        emu.job_faults.run_s = run_s
        emu.job_faults.queue_s = 0.2
        # Retry webhooks for ~50 s (doubling from 0.1 s), longer than any restart.
        emu.webhook_retries = 9
        emu.webhook_backoff_s = 0.1
        await emu.start("127.0.0.1", 0)
        described[name] = {"url": emu.base_url}
        if isinstance(emu, FalEmulator):
            described[name]["jwks"] = emu.jwks

    async def control(_request: web.Request) -> web.Response:
        return web.json_response(body=msgspec.json.encode(state(emulators)))

    app = web.Application()
    app.router.add_get("/state", control)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    control_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    sys.stdout.write(
        msgspec.json.encode({"control": control_url, "emulators": described}).decode() + "\n"
    )
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    for emu in emulators.values():
        await emu.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.run_s, args.seed))
