"""The alternatives a user would put in Switchman's place: nginx and the LiteLLM proxy.

:class:`PeerStack` is the overhead :class:`~tests.bench.overhead.Stack` with
three more sides in front of the same OpenAI emulator:

* ``passthrough``: Switchman's own stack doing nothing but forwarding
  (:mod:`tests.bench.passthrough`): the floor under Switchman's added latency;

* ``nginx``: a plain reverse proxy with upstream keep-alive, the floor for any
  proxy on this machine (Debian's ``nginx``, run as a foreground child with a
  temp prefix: ``daemon off``, one worker, no access log);
* ``litellm``: the LiteLLM proxy (``litellm[proxy]`` in its own throwaway
  virtualenv under ``.bench/``, telemetry off, no database, the local model cost
  map, so nothing leaves loopback) with two deployments of the emulator, called
  on its OpenAI-compatible ``/v1/images/generations`` with its master key.

All are pinned to the CPU Switchman gets. A peer that cannot be installed or
started is left out with the exact error in :attr:`Stack.errors`, and the
benchmark goes on without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from tests.bench.loadgen import Target
from tests.bench.overhead import EMULATOR_BODY, Stack
from tests.bench.procs import ROOT, Processes, free_port

__all__ = [
    "LITELLM_KEY",
    "LITELLM_VENV",
    "PeerStack",
    "ensure_litellm",
    "litellm_env",
    "litellm_version",
    "nginx_config",
    "start_litellm",
    "start_nginx",
]

LITELLM_VENV: Final = ROOT / ".bench" / "litellm-venv"
LITELLM_KEY: Final = "sk-bench-master"
#: LiteLLM startup imports a lot; on a busy 2-core machine it can take 30 s.
LITELLM_READY_S: Final = 90.0


def nginx_config(prefix: Path, listen_port: int, upstreams: Sequence[str]) -> str:
    """An nginx.conf for a foreground reverse proxy to ``upstreams`` (``host:port``)."""
    user = "user root root;\n" if os.geteuid() == 0 else ""  # temp dirs are root's own
    servers = "".join(f"        server {u};\n" for u in upstreams)
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
error_log stderr warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream backend {{
{servers}        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


def start_nginx(
    procs: Processes, upstreams: Sequence[str], *, cpus: str | None = None, name: str = "nginx"
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start nginx in front of ``upstreams``; return its base URL and process.

    Raises ``FileNotFoundError`` when nginx is not installed (``make system-deps``).
    """
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        raise FileNotFoundError("nginx is not installed (run `make system-deps`)")
    prefix = procs.tmp / name
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, port, upstreams), encoding="utf-8")
    proc = procs.spawn(name, [binary, "-p", str(prefix), "-c", str(conf)], cpus=cpus)
    return f"http://127.0.0.1:{port}", proc


def ensure_litellm(venv: Path = LITELLM_VENV, timeout_s: float = 600.0) -> Path:
    """The ``litellm`` executable, installing ``litellm[proxy]`` into ``venv`` if needed.

    Raises ``RuntimeError`` with pip's own message when the install fails.
    """
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            message = (done.stderr or done.stdout).decode(errors="replace").strip()
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{message[-1500:]}")
    return exe


def litellm_version(venv: Path = LITELLM_VENV) -> str | None:
    """The LiteLLM version installed in ``venv`` (from its dist-info), ``None`` if none is.

    The bench installs the newest ``litellm[proxy]``, as a user would, so the report
    must say which one it measured.
    """
    for info in sorted(venv.glob("lib/python*/site-packages/litellm-*.dist-info")):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        if name == "litellm" and version:
            return version
    return None


def litellm_env() -> dict[str, str]:
    """Environment for the LiteLLM proxy: no telemetry, no network fetches, quiet logs."""
    return {
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "PYTHONPATH": "",
    }


def start_litellm(
    procs: Processes,
    exe: Path,
    config: Mapping[str, Any],
    *,
    cpus: str | None = None,
    name: str = "litellm",
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start the LiteLLM proxy on ``config`` (a ``config.yaml`` as data); return URL and process."""
    port = free_port()
    path = procs.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(config)), encoding="utf-8")
    cmd = [str(exe), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", "1"]
    proc = procs.spawn(name, cmd, cpus=cpus, env=litellm_env(), cwd=procs.tmp)
    return f"http://127.0.0.1:{port}", proc


def litellm_overhead_config(emulator_url: str) -> dict[str, Any]:
    """Two deployments of the one emulator behind the model name ``dall-e-3``."""
    deployment = {
        "model_name": "dall-e-3",
        "litellm_params": {
            "model": "openai/dall-e-3",
            "api_base": f"{emulator_url}/v1",
            "api_key": "sk-sandbox",
        },
    }
    return {
        "model_list": [deployment, deployment],
        "general_settings": {"master_key": LITELLM_KEY},
        "litellm_settings": {"telemetry": False},
    }


class PeerStack(Stack):
    """:class:`Stack` plus ``nginx`` and ``litellm`` sides; see the module docstring."""

    def __init__(self, *, pin: bool = True, litellm: bool = True) -> None:
        super().__init__(pin=pin)
        self.want_litellm = litellm
        #: Seconds LiteLLM took to install (0 if already there) and to start.
        self.litellm_install_s = 0.0
        #: The LiteLLM version measured (``None``: not installed).
        self.litellm_version: str | None = None

    def _start(self) -> None:
        super()._start()
        self._start_passthrough()
        self._start_nginx()
        if self.want_litellm:
            self._start_litellm()

    def _start_passthrough(self) -> None:
        port = free_port()
        direct = self.targets["direct"]
        cmd = [sys.executable, "-m", "tests.bench.passthrough", "--port", str(port)]
        proc = self.procs.spawn(
            "passthrough", [*cmd, "--upstream", direct.url], cpus=self.server_cpus
        )
        target = Target(
            url=direct.url.replace(self.emulator_url, f"http://127.0.0.1:{port}"),
            headers=direct.headers,
            body=direct.body,
        )
        self.start_side("passthrough", target, proc)

    def _start_nginx(self) -> None:
        try:
            url, proc = start_nginx(
                self.procs, [self.emulator_url.removeprefix("http://")], cpus=self.server_cpus
            )
        except (FileNotFoundError, OSError) as exc:
            self.errors["nginx"] = str(exc)
            return
        direct = self.targets["direct"]
        target = Target(
            url=direct.url.replace(self.emulator_url, url), headers=direct.headers, body=direct.body
        )
        self.start_side("nginx", target, proc)

    def _start_litellm(self) -> None:
        started = time.monotonic()
        try:
            exe = ensure_litellm()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            self.errors["litellm"] = f"could not install litellm[proxy]: {exc}"
            return
        self.litellm_install_s = time.monotonic() - started
        self.litellm_version = litellm_version()
        url, proc = start_litellm(
            self.procs, exe, litellm_overhead_config(self.emulator_url), cpus=self.server_cpus
        )
        target = Target(
            url=f"{url}/v1/images/generations",
            headers={"authorization": f"Bearer {LITELLM_KEY}"},
            body=json.dumps(EMULATOR_BODY).encode(),
        )
        self.start_side("litellm", target, proc, timeout_s=LITELLM_READY_S)
