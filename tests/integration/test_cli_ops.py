"""The operator CLI (``switchman providers|drain|undrain|breaker|test|jobs|job|reload``).

Each command runs as a real process (the installed ``switchman`` script) against a
real Switchman on loopback, exactly as a runbook would run it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml

from router.config import Config
from tests.integration.harness import ADMIN_KEY, KEY, Running, make_config, serve

pytestmark = [pytest.mark.integration]

_SCRIPT = Path(sys.executable).with_name("switchman")
SWITCHMAN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "router.cli"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def switchman(running: Running | str, *args: str, key: str | None = ADMIN_KEY) -> Result:
    """Run ``switchman ARGS`` with ``SWITCHMAN_URL``/``SWITCHMAN_API_KEY`` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHMAN_")}
    env["SWITCHMAN_URL"] = running if isinstance(running, str) else running.url
    if key is not None:
        env["SWITCHMAN_API_KEY"] = key
    proc = await asyncio.create_subprocess_exec(
        *SWITCHMAN,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def _config(tmp_path: Path) -> Config:
    return make_config(
        tmp_path,
        [
            {"name": "alpha", "cost": {"per_image_usd": 0.01}},
            {"name": "bravo", "cost": {"per_image_usd": 0.05}},
        ],
        routing={"strategy": "cheapest"},
    )


def _rows(out: str) -> dict[str, list[str]]:
    """A table's rows by their first cell."""
    return {cells[0]: cells for line in out.splitlines()[1:] if (cells := line.split())}


async def test_providers_prints_a_stable_table_and_json(tmp_path: Path) -> None:
    """``providers`` prints the documented columns, one row per provider; ``--json`` the API's."""
    async with serve(_config(tmp_path)) as running:
        await running.generate()
        r = await switchman(running, "providers")
        assert r.code == 0, r.err
        header = r.out.splitlines()[0].split()
        assert header == [
            "NAME",
            "BREAKER",
            "DRAINED",
            "HEALTHY",
            "SCORE",
            "AVAILABLE",
            "INFLIGHT",
            "LATENCY",
            "SUCCESS",
            "COST",
        ]
        rows = _rows(r.out)
        assert set(rows) == {"alpha", "bravo"}
        assert all(len(row) == len(header) for row in rows.values())
        alpha = dict(zip(header, rows["alpha"], strict=True))
        assert alpha["BREAKER"] == "closed"
        assert alpha["DRAINED"] == "no"
        assert alpha["HEALTHY"] == "yes"
        assert alpha["LATENCY"].startswith("image:")
        assert alpha["COST"] == "0.01/image"
        assert alpha["INFLIGHT"] == "0/-"  # no concurrency cap configured

        j = await switchman(running, "providers", "--json")
        assert j.code == 0
        assert [p["name"] for p in j.json()["providers"]] == ["alpha", "bravo"]


async def test_drain_and_undrain_route_around_a_provider(tmp_path: Path) -> None:
    """``drain NAME --reason`` stops routing to it and shows why; ``undrain`` restores it."""
    async with serve(_config(tmp_path)) as running:
        r = await switchman(running, "drain", "alpha", "--reason", "INC-42 elevated 5xx")
        assert r.code == 0, r.err
        assert r.out.startswith("drained alpha")
        assert "alpha: drained: INC-42 elevated 5xx" in r.out
        assert (await running.generate()).headers["x-switchman-provider"] == "bravo"
        table = await switchman(running, "providers")
        assert _rows(table.out)["alpha"][2] == "yes"
        assert "alpha: drained: INC-42 elevated 5xx" in table.out

        r = await switchman(running, "undrain", "alpha", "--json")
        assert r.code == 0
        assert r.json()["drained"] is False
        assert (await running.generate()).headers["x-switchman-provider"] == "alpha"

        missing = await switchman(running, "drain", "alpha")
        assert missing.code == 2  # argparse: --reason is required
        assert "--reason" in missing.err


async def test_breaker_open_and_close(tmp_path: Path) -> None:
    """``breaker NAME open`` holds it open until ``breaker NAME close``."""
    async with serve(_config(tmp_path)) as running:
        r = await switchman(running, "breaker", "alpha", "open", "--reason", "vendor maintenance")
        assert r.code == 0, r.err
        assert _rows(r.out.split("\n", 1)[1])["alpha"][1] == "open(forced)"
        assert (await running.generate()).headers["x-switchman-provider"] == "bravo"
        r = await switchman(running, "breaker", "alpha", "close")
        assert r.code == 0
        assert _rows(r.out.split("\n", 1)[1])["alpha"][1] == "closed"
        assert (await running.generate()).headers["x-switchman-provider"] == "alpha"


async def test_test_reports_a_live_check_and_fails_on_bad_credentials(tmp_path: Path) -> None:
    """``test NAME`` exits 0 when the provider answers with the key, 1 when it refuses it."""
    config = make_config(tmp_path, [{"name": "alpha"}, {"name": "bravo", "api_key": "sk-bad"}])
    async with serve(config) as running:
        ok = await switchman(running, "test", "alpha")
        assert ok.code == 0, ok.err
        assert ok.out.startswith("alpha: ok latency=")
        bad = await switchman(running, "test", "bravo")
        assert bad.code == 1
        assert bad.out.startswith("bravo: FAILED")
        assert "sk-bad" not in bad.out
        j = await switchman(running, "test", "alpha", "--json")
        assert j.json()["ok"] is True


async def test_jobs_and_job_show_any_tenants_jobs(tmp_path: Path) -> None:
    """``jobs`` lists every tenant's jobs newest first; ``job ID`` shows one with its attempts."""
    async with serve(_config(tmp_path)) as running:
        ids = [(await running.generate()).json()["id"] for _ in range(3)]
        r = await switchman(running, "jobs", "--limit", "2")
        assert r.code == 0, r.err
        assert r.out.splitlines()[0].split() == [
            "ID",
            "TENANT",
            "KIND",
            "STATUS",
            "PROVIDER",
            "ATTEMPTS",
            "AGE",
            "COST",
            "CREATED",
        ]
        rows = _rows(r.out)
        assert list(rows) == ids[:0:-1]
        assert rows[ids[2]][1:5] == ["team-a", "image", "succeeded", "alpha"]
        failed = await switchman(running, "jobs", "--status", "failed", "--json")
        assert failed.json()["data"] == []

        one = await switchman(running, "job", ids[0])
        assert one.code == 0
        assert f"id:           {ids[0]}" in one.out
        assert "tenant:       team-a" in one.out
        assert "status:       succeeded" in one.out
        assert "attempts:" in one.out
        assert _rows(one.out.split("attempts:\n", 1)[1])["1"][1:3] == ["alpha", "succeeded"]
        j = await switchman(running, "job", ids[0], "--json")
        assert j.json()["id"] == ids[0]
        missing = await switchman(running, "job", "gen_nope")
        assert missing.code == 1
        assert "no generation 'gen_nope'" in missing.err


async def test_reload_reports_what_changed(tmp_path: Path) -> None:
    """``reload`` re-reads the file; a broken file exits 1 naming the bad field."""
    config = _config(tmp_path)
    path = tmp_path / "switchman.yaml"
    raw: dict[str, Any] = msgspec.to_builtins(config)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    async with serve(config, config_path=path) as running:
        raw["providers"][1]["priority"] = 5
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        r = await switchman(running, "reload")
        assert r.code == 0, r.err
        assert r.out.splitlines() == ["reloaded: 2 providers (alpha, bravo)", "changed: bravo"]
        raw["providers"][1]["priority"] = "high"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        bad = await switchman(running, "reload")
        assert bad.code == 1
        assert "HTTP 422" in bad.err
        assert "providers[1].priority" in bad.err


async def test_errors_exit_non_zero_with_the_problem_detail(tmp_path: Path) -> None:
    """A missing key, a key without admin scope, an unknown provider or no service fail clearly."""
    async with serve(_config(tmp_path)) as running:
        no_key = await switchman(running, "providers", key=None)
        assert no_key.code == 2
        assert "SWITCHMAN_API_KEY" in no_key.err
        forbidden = await switchman(running, "drain", "alpha", "--reason", "x", key=KEY)
        assert forbidden.code == 1
        assert "HTTP 403" in forbidden.err
        assert "admin" in forbidden.err
        unknown = await switchman(running, "undrain", "nope")
        assert unknown.code == 1
        assert "no provider 'nope'" in unknown.err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = await switchman(f"http://127.0.0.1:{port}", "providers")
    assert down.code == 2
    assert "cannot reach Switchman" in down.err


async def test_serve_reloads_its_own_file_and_shuts_down_with_a_feed_open(
    tmp_path: Path,
) -> None:
    """``switchman serve`` knows its config file (reload works) and SIGTERM ends open
    status-page streams instead of waiting out the 30 s grace period."""
    raw: dict[str, Any] = msgspec.to_builtins(_config(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw["server"].update(port=port, shutdown_grace_s=30)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHMAN_")}
    env["SWITCHMAN_LOG_LEVEL"] = "WARNING"
    proc = await asyncio.create_subprocess_exec(
        *SWITCHMAN,
        "serve",
        "--config",
        str(path),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async with asyncio.timeout(30):
                while True:  # the process is starting: poll its liveness endpoint
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            r = await switchman(url, "reload", "--json")
            assert r.code == 0, r.err
            assert r.json()["providers"] == ["alpha", "bravo"]
            async with client.stream("GET", "/ui/events") as feed:
                lines = feed.aiter_lines()
                async with asyncio.timeout(10):
                    while not (await anext(lines)).startswith("data: "):
                        pass
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(20):
                    async for _ in lines:
                        pass
                    await proc.wait()
                took = time.monotonic() - started
        # uvicorn re-raises the signal it caught once it has shut down cleanly.
        assert proc.returncode in (0, -signal.SIGTERM)
        print(f"SIGTERM to exit with a feed open: {took:.2f}s")
        assert took < 10  # the grace period is 30 s: the stream did not hold shutdown up
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
