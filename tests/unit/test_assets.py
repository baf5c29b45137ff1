"""Output checks and the asset store, on real SQLite and PostgreSQL stores."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from breakers.clock import FakeClock
from router.assets import AssetRejected, AssetStore, probe_media, sniff_content_type
from router.config import AssetsConfig
from router.models import Output
from router.sandbox.media import png_bytes
from router.sandbox.mp4 import mp4_bytes
from router.store import SqlJobStore
from tests.loopback import serve_app
from tests.unit import test_store

backend = test_store.backend
store = test_store.store

PNG = png_bytes(320, 200)
MP4 = mp4_bytes(640, 360, 4.0)
JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    b"\xff\xc0\x00\x11\x08\x00\x30\x00\x40\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
)
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\0" * 20


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (MP4, "video/mp4"),
        (b"<html>nope</html>", None),
        (b"", None),
    ],
)
def test_content_type_comes_from_the_bytes(data: bytes, expected: str | None) -> None:
    """PNG, JPEG, WebP and MP4 signatures; anything else is not kept."""
    assert sniff_content_type(data) == expected


def test_dimensions_and_duration_are_read_where_cheap() -> None:
    """PNG IHDR, JPEG SOF and MP4 mvhd; garbage yields nothing rather than an error."""
    png = probe_media("image/png", PNG)
    assert (png.width, png.height) == (320, 200)
    jpeg = probe_media("image/jpeg", JPEG)
    assert (jpeg.width, jpeg.height) == (64, 48)
    mp4 = probe_media("video/mp4", MP4)
    assert (mp4.width, mp4.height, mp4.duration_s) == (640, 360, 4.0)
    broken = probe_media("video/mp4", b"\0\0\0\x10ftypisom")
    assert broken.duration_s is None


def files(routes: dict[str, bytes]) -> httpx.AsyncClient:
    """A client whose provider CDN answers from ``routes`` (404 otherwise)."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = routes.get(request.url.path)
        return httpx.Response(200, content=body) if body is not None else httpx.Response(404)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def assets(store: SqlJobStore, tmp_path: Path, client: httpx.AsyncClient, **cfg: int) -> AssetStore:
    config = AssetsConfig(path=str(tmp_path / "assets"), **cfg)  # type: ignore[arg-type]
    return AssetStore(config, store, client, FakeClock(), public_url="https://sw.example")


async def test_an_output_is_kept_once_and_served_to_its_tenant_only(
    store: SqlJobStore, tmp_path: Path
) -> None:
    """Downloaded, checked, stored by hash; the same output again is a no-op; 404 elsewhere."""
    async with files({"/a.png": PNG}) as client:
        keeper = assets(store, tmp_path, client)
        [first] = await keeper.ingest("acme", "gen_1", "image", [Output(url="https://cdn/a.png")])
        [again] = await keeper.ingest("acme", "gen_1", "image", [Output(url="https://cdn/a.png")])

    sha = hashlib.sha256(PNG).hexdigest()
    assert first == again
    assert first.url == f"https://sw.example/v1/assets/ast_{sha[:40]}"
    assert (first.content_type, first.width, first.height, first.bytes, first.sha256) == (
        "image/png",
        320,
        200,
        len(PNG),
        sha,
    )
    asset_id = first.url.rsplit("/", 1)[1]
    found = await keeper.get("acme", asset_id)
    assert found is not None
    assert found[1].read_bytes() == PNG
    assert await keeper.get("globex", asset_id) is None
    assert len(list((tmp_path / "assets").rglob("*"))) == 2  # one directory, one file


async def test_data_urls_are_decoded_and_kept(store: SqlJobStore, tmp_path: Path) -> None:
    """Base64 data: URLs (some adapters return those) are kept like downloads."""
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    async with files({}) as client:
        [kept] = await assets(store, tmp_path, client).ingest("acme", "j", "image", [Output(url)])
    assert kept.sha256 == hashlib.sha256(PNG).hexdigest()


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [
        (b"<html>AccessDenied</html>", "image", "not a PNG"),
        (MP4, "image", "image job produced video/mp4"),
        (PNG, "video", "video job produced image/png"),
        (PNG + b"\0" * 5000, "image", "larger than"),
    ],
)
async def test_bad_outputs_are_rejected(
    store: SqlJobStore, tmp_path: Path, body: bytes, kind: str, message: str
) -> None:
    """Wrong type, wrong kind or over the size cap: a retryable malformed_response."""
    async with files({"/o": body}) as client:
        keeper = assets(store, tmp_path, client, max_bytes=4000)
        with pytest.raises(AssetRejected) as info:
            await keeper.ingest("acme", "j", kind, [Output(url="https://cdn/o")])
    assert info.value.kind == "malformed_response"
    assert message in info.value.message


async def test_an_expired_provider_url_is_upstream_unavailable(
    store: SqlJobStore, tmp_path: Path
) -> None:
    """A 404 from the provider's CDN fails the attempt as upstream_unavailable."""
    async with files({}) as client:
        with pytest.raises(AssetRejected) as info:
            await assets(store, tmp_path, client).ingest(
                "acme", "j", "image", [Output(url="https://cdn/gone.png")]
            )
    assert info.value.kind == "upstream_unavailable"


async def test_other_urls_pass_through(store: SqlJobStore, tmp_path: Path) -> None:
    """``sim://`` outputs (the in-process adapter) are left as they are."""
    async with files({}) as client:
        out = [Output(url="sim://p/1.png")]
        assert await assets(store, tmp_path, client).ingest("acme", "j", "image", out) == out


@pytest.fixture
async def provider_files() -> AsyncIterator[str]:
    """A provider's file server on loopback: ``/a.png`` is an image."""

    async def image(_request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/a.png", image)
    async with serve_app(app) as url:
        yield url


async def test_guarded_downloads_reach_only_the_providers_host_or_public_addresses(
    store: SqlJobStore, tmp_path: Path, provider_files: str
) -> None:
    """A provider's own (even private) host is fetched; any other inside address is refused."""
    config = AssetsConfig(path=str(tmp_path / "assets"))
    async with files({}) as shared:
        keeper = AssetStore(config, store, shared, FakeClock(), guard_downloads=True)
        try:
            [kept] = await keeper.ingest(
                "acme",
                "j",
                "image",
                [Output(url=f"{provider_files}/a.png")],
                provider_host="127.0.0.1",
            )
            assert kept.sha256 == hashlib.sha256(PNG).hexdigest()
            for url, host in [
                ("http://169.254.169.254/latest/meta-data/", "127.0.0.1"),
                (f"{provider_files}/a.png", "api.provider.example"),
                ("https://localhost/a.png", "api.provider.example"),
            ]:
                with pytest.raises(AssetRejected) as info:
                    await keeper.ingest("acme", "j", "image", [Output(url=url)], provider_host=host)
                assert info.value.kind == "malformed_response"
                assert "output URL refused" in info.value.message
        finally:
            await keeper.aclose()
