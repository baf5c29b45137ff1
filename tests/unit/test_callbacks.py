"""Caller callbacks: signatures (checked by the standardwebhooks package), hosts, retries."""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from standardwebhooks import Webhook

from breakers.clock import FakeClock
from router.callbacks import CallbackSender, check_callback_url, message_id, sign
from router.config import SecurityConfig
from router.errors import ValidationFailed

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SECURITY = SecurityConfig(
    callback_secret=SECRET,
    callback_hosts=["*.svc.internal", "hooks.example.com"],
    callback_max_attempts=4,
    callback_backoff_s=1.0,
)


def test_signatures_verify_with_an_independent_implementation() -> None:
    """Our v1 HMAC over id.timestamp.body is what standardwebhooks expects."""
    # standardwebhooks checks the timestamp against the real clock: sign at "now".
    clock = FakeClock(wall=time.time())
    body = b'{"id":"gen_1","status":"succeeded"}'
    headers = CallbackSender(SECURITY, httpx.AsyncClient(), clock).headers("msg_gen_1", body)
    assert Webhook(SECRET).verify(body, headers) == {"id": "gen_1", "status": "succeeded"}
    assert headers["webhook-id"] == message_id("gen_1")
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    ts = int(headers["webhook-timestamp"])
    assert headers["webhook-signature"] == sign(key, "msg_gen_1", ts, body)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.svc.internal/hooks",
        "http://HOOKS.example.com:8443/x?y=1",
    ],
)
def test_allowed_hosts_pass(url: str) -> None:
    """Hosts matching a glob (case-insensitively) are accepted."""
    check_callback_url(url, SECURITY)


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/hooks",
        "https://svc.internal.evil.com/",
        "ftp://api.svc.internal/",
        "https://user:pw@api.svc.internal/",
        "not a url",
    ],
)
def test_other_hosts_are_refused_naming_callback_url(url: str) -> None:
    """A 422 naming callback_url, before any job exists."""
    with pytest.raises(ValidationFailed) as info:
        check_callback_url(url, SECURITY)
    assert info.value.errors[0].field == "callback_url"


def test_without_a_secret_callbacks_are_refused() -> None:
    """No secret, no unsigned callbacks."""
    with pytest.raises(ValidationFailed):
        check_callback_url("https://a.svc.internal/", SecurityConfig(callback_hosts=["*"]))


async def test_delivery_retries_with_backoff_and_a_stable_id() -> None:
    """503, connection error, then 200: three tries, same webhook-id, doubling jittered waits."""
    answers: list[httpx.Response | Exception] = [
        httpx.Response(503),
        httpx.ConnectError("refused"),
        httpx.Response(200),
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sender = CallbackSender(SECURITY, client, FakeClock(), sleep=sleep)
        assert await sender.deliver("https://a.svc.internal/h", "msg_gen_1", b"{}")

    assert len(seen) == 3
    assert {r.headers["webhook-id"] for r in seen} == {"msg_gen_1"}
    assert len(slept) == 2
    assert 0.5 <= slept[0] <= 1.5
    assert 1.0 <= slept[1] <= 3.0


async def test_redirects_count_as_failures_and_attempts_run_out() -> None:
    """A 302 is never followed; after max attempts delivery gives up."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "https://elsewhere.example/"})

    async def sleep(_seconds: float) -> None:
        return None

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sender = CallbackSender(SECURITY, client, FakeClock(), sleep=sleep)
        assert not await sender.deliver("https://a.svc.internal/h", "msg_x", b"{}")

    assert seen == ["https://a.svc.internal/h"] * 4
