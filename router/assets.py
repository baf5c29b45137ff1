"""Outputs kept by Switchman: downloaded, checked, stored, served at stable URLs.

Providers' output URLs expire (Replicate's after an hour, fal's and Runway's soon
after), so a job's outputs are fetched when its attempt succeeds, checked, and kept:

- the content type is read from the bytes (PNG, JPEG, WebP, MP4 signatures), never
  from the provider's header, and must match the job's kind;
- the size is capped (``storage.assets.max_bytes``), counted while downloading;
- image dimensions (PNG) and video duration (MP4 ``mvhd``) are read where cheap;
- the bytes are stored under their SHA-256 and recorded per tenant, so processing the
  same output again is a no-op and ``GET /v1/assets/{id}`` is tenant-scoped.

A rejected output raises :class:`AssetRejected`, which the engine turns into a failed
(retryable) attempt, so the job fails over like any other bad upstream answer.
Outputs whose URL is not ``http(s)`` or ``data:`` (the ``sim`` adapter's ``sim://``)
pass through untouched.

Only the local backend is implemented; ``backend: s3`` is refused at start.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import structlog

from breakers.clock import Clock
from router.config import AssetsConfig
from router.errors import ConfigError, ErrorKind
from router.models import Output
from router.sandbox.media import png_size
from router.sandbox.mp4 import mp4_info
from router.ssrf import UrlPolicy, guarded_client, read_capped, url_problem
from router.store import AssetRecord, JobStore

__all__ = [
    "AssetRejected",
    "AssetStore",
    "LocalBlobs",
    "MediaInfo",
    "asset_id",
    "host_of",
    "probe_media",
    "sniff_content_type",
]

_log = structlog.get_logger("switchman.assets")


class AssetRejected(Exception):
    """Raised when an output cannot be kept: wrong type, too large, or not downloadable."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message


def sniff_content_type(data: bytes) -> str | None:
    """The media type the bytes' signature says, or ``None`` when it is none we keep."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        return "video/mp4"
    return None


class MediaInfo:
    """What was cheap to read from a file: dimensions and duration (any may be ``None``)."""

    __slots__ = ("duration_s", "height", "width")

    def __init__(
        self, width: int | None = None, height: int | None = None, duration_s: float | None = None
    ) -> None:
        self.width = width
        self.height = height
        self.duration_s = duration_s


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Dimensions from the first SOF marker of a JPEG."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def probe_media(content_type: str, data: bytes) -> MediaInfo:
    """Dimensions and duration where the format makes them cheap to read; never raises."""
    try:
        if content_type == "image/png":
            width, height = png_size(data)
            return MediaInfo(width, height)
        if content_type == "image/jpeg":
            size = _jpeg_size(data)
            return MediaInfo(*size) if size else MediaInfo()
        if content_type == "video/mp4":
            width, height, duration = mp4_info(data)
            return MediaInfo(width or None, height or None, duration or None)
    except (ValueError, struct.error, IndexError, KeyError):
        pass
    return MediaInfo()


def asset_id(sha256: str) -> str:
    """The asset id of some content: ``ast_`` and the first 40 hex digits of its hash."""
    return "ast_" + sha256[:40]


class LocalBlobs:
    """Content-addressed files under one directory: ``<root>/<sha[:2]>/<sha>``."""

    __slots__ = ("root",)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        """Where the content with this hash lives (whether or not it exists yet)."""
        return self.root / sha256[:2] / sha256

    def put(self, sha256: str, data: bytes) -> bool:
        """Store ``data``; ``False`` when it was already there. Atomic (write, then rename)."""
        target = self.path(sha256)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{sha256}.{os.getpid()}.{os.urandom(4).hex()}")
        tmp.write_bytes(data)
        tmp.replace(target)
        return True


def _decode_data_url(url: str, max_bytes: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise AssetRejected("malformed_response", "malformed data: URL")
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise AssetRejected("malformed_response", f"output larger than {max_bytes} bytes")
    if not header.endswith(";base64"):
        return payload.encode()
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise AssetRejected("malformed_response", "data: URL is not valid base64") from None


def host_of(base_url: str) -> str | None:
    """The host name of a provider's ``base_url`` (``None`` when it has none)."""
    return urlsplit(base_url).hostname


class AssetStore:
    """Downloads, checks and keeps outputs; serves them back by id."""

    def __init__(
        self,
        config: AssetsConfig,
        store: JobStore,
        client: httpx.AsyncClient,
        clock: Clock,
        *,
        public_url: str | None = None,
        download_timeout_s: float = 60.0,
        guard_downloads: bool = False,
    ) -> None:
        if config.backend != "local":
            raise ConfigError(["storage.assets.backend: only 'local' is implemented in this build"])
        self.config = config
        self.store = store
        self.client = client
        self.clock = clock
        self.blobs = LocalBlobs(config.path)
        self.base_url = (public_url or "").rstrip("/")
        self.download_timeout_s = download_timeout_s
        #: Check every download's address at connect time (see :meth:`_client_for`).
        self.guard_downloads = guard_downloads
        self._guarded: dict[str | None, httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        """Close the guarded download clients (the shared client is not ours)."""
        for client in self._guarded.values():
            await client.aclose()
        self._guarded.clear()

    def _client_for(self, provider_host: str | None) -> tuple[httpx.AsyncClient, UrlPolicy | None]:
        """The client to download a provider's outputs with, and the policy it enforces.

        An output URL comes from the provider, so it may point at the provider's own
        host (an in-house provider on a private network, the sandbox on loopback) or at
        a public address, never elsewhere inside: a provider that answers with
        ``http://169.254.169.254/…`` must not make Switchman fetch and keep it.
        """
        if not self.guard_downloads:
            return self.client, None
        policy = UrlPolicy("output url", (provider_host,) if provider_host else ())
        client = self._guarded.get(provider_host)
        if client is None:
            client = guarded_client(policy, timeout_s=self.download_timeout_s)
            self._guarded[provider_host] = client
        return client, policy

    def url_of(self, asset: str) -> str:
        """The stable URL of an asset (absolute when ``server.public_url`` is set)."""
        return f"{self.base_url}/v1/assets/{asset}"

    async def ingest(
        self,
        tenant: str,
        job_id: str,
        kind: str,
        outputs: list[Output],
        *,
        headers_for: Callable[[str], Mapping[str, str]] | None = None,
        provider_host: str | None = None,
    ) -> list[Output]:
        """Keep every downloadable output and return them with Switchman URLs.

        ``headers_for(url)`` gives the headers a download needs (a provider whose
        file URLs require its key, such as Gemini's); the adapter decides per URL so
        a credential never goes to another host.

        Raises :class:`AssetRejected` for the first output that cannot be kept.
        """
        kept: list[Output] = []
        client, policy = self._client_for(provider_host)
        for output in outputs:
            url = output.url
            if url.startswith(("http://", "https://")):
                if policy is not None and (why := url_problem(url, policy)) is not None:
                    raise AssetRejected("malformed_response", f"output URL refused: {why}")
                headers = headers_for(url) if headers_for else None
                data = await self._download(client, url, headers)
            elif url.startswith("data:"):
                data = _decode_data_url(url, self.config.max_bytes)
            else:
                kept.append(output)
                continue
            kept.append(await self._keep(tenant, job_id, kind, data))
        return kept

    async def _keep(self, tenant: str, job_id: str, kind: str, data: bytes) -> Output:
        if len(data) > self.config.max_bytes:
            raise AssetRejected(
                "malformed_response", f"output larger than {self.config.max_bytes} bytes"
            )
        content_type = sniff_content_type(data)
        if content_type is None:
            raise AssetRejected("malformed_response", "output is not a PNG, JPEG, WebP or MP4 file")
        expected = "video/" if kind == "video" else "image/"
        if not content_type.startswith(expected):
            raise AssetRejected(
                "malformed_response", f"a {kind} job produced {content_type} output"
            )
        sha = hashlib.sha256(data).hexdigest()
        info = probe_media(content_type, data)
        await asyncio.to_thread(self.blobs.put, sha, data)
        record = AssetRecord(
            tenant=tenant,
            id=asset_id(sha),
            sha256=sha,
            content_type=content_type,
            bytes=len(data),
            created_at=self.clock.time(),
            job_id=job_id,
            width=info.width,
            height=info.height,
            duration_s=info.duration_s,
        )
        if await self.store.save_asset(record):
            _log.info("asset.stored", asset=record.id, bytes=record.bytes, type=content_type)
        return Output(
            url=self.url_of(record.id),
            content_type=content_type,
            width=info.width,
            height=info.height,
            duration_s=info.duration_s,
            bytes=len(data),
            sha256=sha,
        )

    async def _download(
        self, client: httpx.AsyncClient, url: str, headers: Mapping[str, str] | None = None
    ) -> bytes:
        limit = self.config.max_bytes
        try:
            async with (
                client.stream(
                    "GET", url, headers=headers, timeout=self.download_timeout_s
                ) as response,
            ):
                if response.status_code != 200:
                    raise AssetRejected(
                        "upstream_unavailable",
                        f"output download answered {response.status_code}",
                    )
                try:
                    return await read_capped(response, limit)
                except ValueError:  # over the size cap (the status was checked above)
                    raise AssetRejected(
                        "malformed_response", f"output larger than {limit} bytes"
                    ) from None
        except httpx.HTTPError as exc:
            raise AssetRejected(
                "upstream_unavailable", f"output download failed: {type(exc).__name__}"
            ) from None

    async def get(self, tenant: str, asset: str) -> tuple[AssetRecord, Path] | None:
        """The tenant's asset and its file, or ``None`` (another tenant's id included)."""
        record = await self.store.get_asset(tenant, asset)
        if record is None:
            return None
        path = self.blobs.path(record.sha256)
        if not path.exists():
            return None
        return record, path
