"""A small, structurally valid MP4 (ISO BMFF) for video emulators, and a reader.

The file has the boxes a player or validator reads first (``ftyp``, ``moov`` with
``mvhd``/``tkhd``/``mdhd`` carrying duration and size, a sample table, ``mdat``),
so downstream checks of type, dimensions and duration are honest. Its samples are
not decodable video: nothing in Switchman decodes frames.
"""

from __future__ import annotations

import struct
from functools import lru_cache

__all__ = ["mp4_bytes", "mp4_info"]

_TIMESCALE = 1000
_IDENTITY = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


@lru_cache(maxsize=64)
def mp4_bytes(width: int, height: int, duration_s: float, fps: int = 24) -> bytes:
    """An MP4 of ``width`` × ``height`` lasting ``duration_s`` seconds (cached)."""
    if not (16 <= width <= 8192 and 16 <= height <= 8192 and 0 < duration_s <= 600):
        raise ValueError(f"MP4 out of range: {width}x{height}, {duration_s}s")
    duration = round(duration_s * _TIMESCALE)
    frames = max(1, round(duration_s * fps))
    sample = b"\x00\x00\x00\x01"  # one tiny placeholder sample per frame
    mvhd = _full(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, _TIMESCALE, duration),
        struct.pack(">IH", 0x10000, 0x100),
        b"\x00" * 10,
        _IDENTITY,
        b"\x00" * 24,
        struct.pack(">I", 2),
    )
    tkhd = _full(
        b"tkhd",
        0,
        3,
        struct.pack(">IIIII", 0, 0, 1, 0, duration),
        b"\x00" * 8,
        struct.pack(">HHHH", 0, 0, 0, 0),
        _IDENTITY,
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = _full(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, _TIMESCALE, duration, 0x55C4, 0))
    hdlr = _full(b"hdlr", 0, 0, struct.pack(">I", 0), b"vide", b"\x00" * 12, b"VideoHandler\x00")
    vmhd = _full(b"vmhd", 0, 1, b"\x00" * 8)
    dinf = _box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1)))
    visual = (
        b"\x00" * 6
        + struct.pack(">H", 1)
        + b"\x00" * 16
        + struct.pack(">HHIIIH", width, height, 0x480000, 0x480000, 0, 1)
        + b"\x00" * 32
        + struct.pack(">Hh", 0x18, -1)
    )
    stsd = _full(b"stsd", 0, 0, struct.pack(">I", 1), _box(b"mp4v", visual))
    delta = max(1, duration // frames)
    stts = _full(b"stts", 0, 0, struct.pack(">III", 1, frames, delta))
    stsc = _full(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, frames, 1))
    stsz = _full(b"stsz", 0, 0, struct.pack(">II", len(sample), frames))
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2mp41")

    def build(chunk_offset: int) -> bytes:
        stco = _full(b"stco", 0, 0, struct.pack(">II", 1, chunk_offset))
        stbl = _box(b"stbl", stsd, stts, stsc, stsz, stco)
        minf = _box(b"minf", vmhd, dinf, stbl)
        trak = _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf))
        return _box(b"moov", mvhd, trak)

    moov = build(0)
    moov = build(len(ftyp) + len(moov) + 8)  # mdat's payload follows moov
    return ftyp + moov + _box(b"mdat", sample * frames)


def _children(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    boxes: dict[bytes, tuple[int, int]] = {}
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        if size < 8 or pos + size > end:
            raise ValueError("truncated MP4 box")
        boxes.setdefault(kind, (pos + 8, pos + size))
        pos += size
    return boxes


def mp4_info(data: bytes) -> tuple[int, int, float]:
    """``(width, height, duration_s)`` of an MP4; :class:`ValueError` when it is not one."""
    top = _children(data, 0, len(data))
    if b"ftyp" not in top or b"moov" not in top:
        raise ValueError("not an MP4: no ftyp/moov")
    moov = _children(data, *top[b"moov"])
    mv_start, _ = moov[b"mvhd"]
    version = data[mv_start]
    if version == 0:
        timescale, duration = struct.unpack_from(">II", data, mv_start + 12)
    else:
        timescale, duration = struct.unpack_from(">IQ", data, mv_start + 20)
    trak = _children(data, *moov[b"trak"])
    tk_start, tk_end = trak[b"tkhd"]
    width, height = struct.unpack_from(">II", data, tk_end - 8)
    del tk_start
    if timescale == 0:
        raise ValueError("MP4 with a zero timescale")
    return width >> 16, height >> 16, duration / timescale
