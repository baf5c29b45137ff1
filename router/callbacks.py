"""Caller callbacks: ``POST callback_url`` with the job when it ends (DESIGN §3).

Signed per Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id`` (the
same on every retry, so the receiver can de-duplicate: ``msg_<job id>``),
``webhook-timestamp`` (unix seconds of this delivery) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256>`` over ``id.timestamp.body`` with the base64-decoded bytes of
the ``whsec_…`` secret in ``security.callback_secret``).

Deliveries go only to hosts matching a ``security.callback_hosts`` glob (checked when
the job is created, so a bad URL is a 422 on ``callback_url``, not a silent drop
later), follow no redirects (a redirect could leave the allow list), and are retried
with jittered exponential backoff until a 2xx or ``security.callback_max_attempts``.
The job's ``callback_state`` (``pending`` → ``delivered``/``failed``) is stored, so a
restarted replica re-sends callbacks that were still pending.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import hashlib
import hmac
import random
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

import httpx
import structlog

from breakers.clock import Clock
from router.config import SecurityConfig
from router.errors import ConfigError, FieldError, ValidationFailed

__all__ = [
    "CallbackSender",
    "check_callback_url",
    "decode_secret",
    "message_id",
    "sign",
]

_log = structlog.get_logger("switchman.callbacks")
_MAX_BACKOFF_S: Final = 300.0


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; :class:`ConfigError` when malformed."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(["security.callback_secret: expected whsec_<base64>"]) from None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256 of the content."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def message_id(job_id: str) -> str:
    """The ``webhook-id`` of a job's callback: stable across retries and restarts."""
    return f"msg_{job_id}"


def check_callback_url(url: str, security: SecurityConfig) -> None:
    """Refuse (422 on ``callback_url``) a URL Switchman would not call."""

    def refuse(message: str) -> ValidationFailed:
        return ValidationFailed([FieldError("callback_url", message)])

    if security.callback_secret is None:
        raise refuse("callbacks are not configured on this service (no callback secret)")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise refuse("expected an http(s) URL")
    if parts.username or parts.password:
        raise refuse("credentials in the URL are not allowed")
    if not any(fnmatch.fnmatchcase(host, p.lower()) for p in security.callback_hosts):
        raise refuse(f"host {host!r} is not in the callback allow list")


class CallbackSender:
    """Signs and delivers callbacks with retries; one instance per service."""

    def __init__(
        self,
        security: SecurityConfig,
        client: httpx.AsyncClient,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        timeout_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if security.callback_secret is None:
            raise ConfigError(["security.callback_secret: required to send callbacks"])
        self.key = decode_secret(security.callback_secret)
        self.client = client
        self.clock = clock
        self.rng = rng or random.Random()
        self.max_attempts = security.callback_max_attempts
        self.backoff_s = security.callback_backoff_s
        self.timeout_s = timeout_s
        self.sleep = sleep

    def headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        """The Standard Webhooks headers of one delivery, timestamped now."""
        timestamp = int(self.clock.time())
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.key, msg_id, timestamp, body),
        }

    def backoff(self, attempt: int) -> float:
        """Seconds before delivery ``attempt + 1``: doubling from ``backoff_s``, ±50 % jitter."""
        base: float = min(self.backoff_s * 2.0 ** (attempt - 1), _MAX_BACKOFF_S)
        return base * (0.5 + self.rng.random())

    async def deliver(self, url: str, msg_id: str, body: bytes) -> bool:
        """POST until a 2xx (``True``) or the attempts run out (``False``)."""
        for attempt in range(1, self.max_attempts + 1):
            status: int | None = None
            try:
                response = await self.client.post(
                    url,
                    content=body,
                    headers=self.headers(msg_id, body),
                    timeout=self.timeout_s,
                    follow_redirects=False,
                )
                status = response.status_code
            except httpx.HTTPError as exc:
                _log.info("callback.failed", attempt=attempt, error=type(exc).__name__)
            else:
                if 200 <= status < 300:
                    _log.info("callback.delivered", attempt=attempt, status=status)
                    return True
                _log.info("callback.failed", attempt=attempt, status=status)
                if status == 410:  # Gone: the receiver says never again
                    break
            if attempt < self.max_attempts:
                await self.sleep(self.backoff(attempt))
        _log.warning("callback.abandoned", attempts=self.max_attempts)
        return False
