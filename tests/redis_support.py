"""Real Redis for tests: the machine's shared server, or a private one a test may kill.

The machine's Redis (``127.0.0.1:6379``) is shared by everyone and is never stopped;
each test works under its own key prefix and deletes it afterwards. A test that needs
an outage starts its own ``redis-server`` on a free port (:class:`PrivateRedis`).
Without a reachable Redis a test skips locally and *fails* under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

__all__ = [
    "REDIS_URL",
    "PrivateRedis",
    "free_port",
    "purge_prefix",
    "require_redis",
    "unique_prefix",
]

REDIS_URL = os.environ.get("SWITCHMAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis(url: str = REDIS_URL) -> None:
    """Skip (locally) or fail (``CI=true``) unless Redis answers at ``url``."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        message = f"Redis is not reachable at {url}: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"switchman-test:{uuid.uuid4().hex}:"


def purge_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every key under ``prefix`` (synchronously; for fixture teardown)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        for key in client.scan_iter(match=prefix + "*", count=500):
            client.delete(key)
    finally:
        client.close()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of this test's own, which it may stop and start again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail("redis-server is not installed")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server on its port and wait until it answers."""
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)  # the server process is starting, not a state change
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        """Kill the server (an outage, not a clean shutdown)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    @contextlib.contextmanager
    def running(self) -> Iterator[PrivateRedis]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
