"""Small, valid media files for the emulators, built with the standard library only.

Emulators serve real files so that callers (and tests) can check signatures and
dimensions, but they must stay cheap: a solid-colour image is written as a
1-bit palette PNG, so even a 1792×1024 image compresses to a few hundred bytes,
and each size is built once and cached.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

__all__ = ["PNG_SIGNATURE", "png_bytes", "png_size"]

#: The eight bytes every PNG starts with.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_MAX_SIDE = 16_384


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=256)
def png_bytes(width: int, height: int, rgb: tuple[int, int, int] = (64, 128, 192)) -> bytes:
    """A solid-colour PNG of ``width`` × ``height`` pixels (cached per size and colour)."""
    if not (1 <= width <= _MAX_SIDE and 1 <= height <= _MAX_SIDE):
        raise ValueError(f"PNG size out of range: {width}x{height}")
    # Colour type 3 (palette) at bit depth 1: one bit per pixel, all index 0.
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)
    plte = bytes(rgb)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    idat = zlib.compress(row * height, 9)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"PLTE", plte)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """The ``(width, height)`` in a PNG's IHDR; ``ValueError`` when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
