"""A small Server-Sent Events reader for tests (httpx streaming, real sockets)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

__all__ = ["SseEvent", "read_events"]


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One event as received."""

    id: int
    event: str
    data: Any


async def read_events(
    client: httpx.AsyncClient, url: str, *, last_event_id: int | None = None
) -> AsyncGenerator[SseEvent, None]:
    """Yield events until the server ends the stream (or the caller stops iterating)."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "data" in fields:
                    yield SseEvent(
                        int(fields["id"]), fields["event"], msgspec.json.decode(fields["data"])
                    )
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
