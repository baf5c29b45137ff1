"""Every command in every runbook runs, verbatim, against a live Switchman.

Issue 5, acceptance 4. Starts a real ``switchman serve`` (sandbox providers on
loopback, a config file so ``reload`` and ``check-config`` have something to read),
then runs each ``sh`` line of each runbook with ``bash -o pipefail`` and the
environment the runbooks' README tells the on-call engineer to set
(``SWITCHMAN_URL``, ``SWITCHMAN_API_KEY``, ``SWITCHMAN_CONFIG``, ``PROVIDER``,
``JOB_ID``). Each must exit 0 against a healthy service: a command that may
legitimately fail during an incident (``switchman test`` of a failing provider)
says so in the runbook's text, not by failing here.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router.auth import hash_key
from tests.ops_kit import free_port, runbook_commands, runbooks, wait_http_ok

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_KEY = "sk_sw_test_runbook_admin"
BIN = Path(sys.executable).parent
#: The ``switchman`` subcommands a runbook may use (DESIGN §8 operator commands).
SUBCOMMANDS = {
    "providers",
    "drain",
    "undrain",
    "breaker",
    "jobs",
    "job",
    "reload",
    "test",
    "check-config",
}
#: Programs a runbook may call besides ``switchman``.
TOOLS = {"switchman", "curl", "grep"}


def _config(tmp_path: Path, port: int) -> dict[str, Any]:
    providers = []
    emulators = []
    for name, price in (("alpha", 0.01), ("beta", 0.02)):
        emulators.append({"name": name, "adapter": "openai", "faults": {}})
        providers.append(
            {
                "name": name,
                "adapter": "openai",
                "base_url": f"sandbox:{name}",
                "api_key": "sk-sandbox",
                "kinds": ["image"],
                "models": {"image": "dall-e-3"},
                "cost": {"per_image_usd": price},
                "rate_limit": {"requests": 1000, "per_s": 1},
            }
        )
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "routing": {"strategy": "cheapest"},
        "storage": {"database_url": f"sqlite+aiosqlite:///{tmp_path}/sw.db"},
        "tenants": [
            {
                "id": "ops",
                "api_keys": [hash_key(ADMIN_KEY)],
                "scopes": ["generate", "read", "admin"],
            }
        ],
        "sandbox": {"emulators": emulators},
        "providers": providers,
    }


def test_runbook_commands_are_well_formed() -> None:
    """Every runbook command calls a known program, and ``switchman`` a known subcommand."""
    for name, path in runbooks().items():
        for command in runbook_commands(path):
            for part in command.split("|"):
                words = shlex.split(part)
                assert words[0] in TOOLS, f"{name}: {command}"
                if words[0] == "switchman":
                    assert words[1] in SUBCOMMANDS, f"{name}: {command}"


async def _run(command: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-o",
        "pipefail",
        "-c",
        command,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, "timed out"
    return proc.returncode or 0, out.decode(errors="replace")


async def test_every_runbook_command_exits_zero_against_a_live_service(tmp_path: Path) -> None:
    """Each distinct ``sh`` command of every runbook exits 0 against ``switchman serve``."""
    port = free_port()
    config_path = tmp_path / "switchman.yaml"
    config_path.write_text(yaml.safe_dump(_config(tmp_path, port), sort_keys=False))
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "SWITCHMAN_URL": f"http://127.0.0.1:{port}",
        "SWITCHMAN_API_KEY": ADMIN_KEY,
        "SWITCHMAN_CONFIG": str(config_path),
        "SWITCHMAN_LOG_LEVEL": "WARNING",
        "PROVIDER": "alpha",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            str(BIN / "switchman"),
            "serve",
            "--config",
            str(config_path),
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=log,
        )
    failures: list[str] = []
    ran = 0
    try:
        await wait_http_ok(f"{env['SWITCHMAN_URL']}/readyz", 30, server)
        async with httpx.AsyncClient(
            base_url=env["SWITCHMAN_URL"], headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as client:
            r = await client.post(
                "/v1/generations",
                json={"kind": "image", "prompt": "a lighthouse at dusk"},
                headers={"Prefer": "wait=20"},
                timeout=30,
            )
            assert r.status_code in (200, 202), r.text
            env["JOB_ID"] = r.json()["id"]
        seen: set[str] = set()
        for name, path in runbooks().items():
            for command in runbook_commands(path):
                if command in seen:
                    continue
                seen.add(command)
                code, out = await _run(command, env)
                ran += 1
                if code != 0:
                    failures.append(f"{name}: `{command}` exited {code}:\n{out[-800:]}")
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 15)
            except TimeoutError:
                server.kill()
                await server.wait()
    if failures:
        print(log_path.read_text(errors="replace")[-3000:])
    assert not failures, "\n\n".join(failures)
    assert ran >= 20, f"only {ran} distinct commands"
