"""Subprocesses for the benchmarks: each in its own process group, always stopped.

Every server a benchmark needs (emulators, ``switchman serve``, nginx, the
LiteLLM proxy) runs as a child in a session of its own, so one ``killpg``
reaches whatever it forks (nginx's worker, uvicorn's reloader). A
:class:`Processes` owns a temp directory with one log file per child and stops
every child, newest first, when its ``with`` block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final

import httpx

__all__ = ["ROOT", "Processes", "free_port", "get_ok", "pin", "stop"]

ROOT: Final = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_ok(url: str) -> Callable[[httpx.Client], bool]:
    """A readiness check for :meth:`Processes.wait_ready`: ``GET url`` answers 200."""

    def ok(client: httpx.Client) -> bool:
        return client.get(url).status_code == 200

    return ok


def pin(cpus: str | None) -> list[str]:
    """The ``taskset`` prefix that runs a command on ``cpus`` (nothing when ``None``)."""
    return ["taskset", "-c", cpus] if cpus is not None else []


def stop(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not gone in ``grace_s``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


class Processes:
    """Children started by one benchmark, with their logs; see the module docstring."""

    def __init__(self, prefix: str = "switchman-bench-") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every child, newest first, and remove the temp dir."""
        for proc in reversed(self._procs):
            stop(proc)
        self._procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        cpus: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` (pinned to ``cpus``) with stdout and stderr in ``<tmp>/<name>.log``."""
        log = (self.tmp / f"{name}.log").open("wb")
        self._logs.append(log)
        base = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [*pin(cpus), *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so killpg reaches its children
            cwd=cwd,
            env={**base, **(env or {})},
        )
        self._procs.append(proc)
        return proc

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one child now and forget it."""
        stop(proc)
        if proc in self._procs:
            self._procs.remove(proc)

    def log_tail(self, name: str, lines: int = 12) -> str:
        """The last ``lines`` lines of a child's log."""
        path = self.tmp / f"{name}.log"
        if not path.exists():
            return ""
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        return "\n".join(text.splitlines()[-lines:])

    @staticmethod
    def wait_ready(
        ok: Callable[[httpx.Client], bool],
        *,
        proc: subprocess.Popen[bytes] | None = None,
        timeout_s: float = 30.0,
        step_s: float = 0.2,
    ) -> None:
        """Poll ``ok`` until it holds; raise ``RuntimeError`` on timeout or if ``proc`` exits."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"exited with status {proc.returncode} before ready")
                with contextlib.suppress(httpx.HTTPError):
                    if ok(client):
                        return
                time.sleep(step_s)
        raise RuntimeError(f"not ready after {timeout_s:.0f} s")
