"""gzip bodies made of separately deflated segments, and the cache of compressed chunks.

Each chunk of a family is deflated on its own (raw deflate, byte-aligned at its end), so
that segments can be laid end to end into one gzip member in any combination: a chunk whose
values did not change since the last scrape is sent from the cache without being rendered
or compressed again. The member's CRC-32 is joined from the segments' own by GF(2)
arithmetic (ISA-L's crc32_combine, else the C speedups'), never recomputed over the text.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Hashable, Iterable
from types import ModuleType
from typing import Callable, NamedTuple

from .. import speedups

# Megabytes of compressed text kept for reuse across scrapes, per namespace (0 turns the
# cache off; see docs/performance.md): the CLI sets CACHE_BUDGET from
# $INGRESS_IPVS_EXPORTER_CACHE_MB at start-up.
CACHE_MB = 8
CACHE_ENV = "INGRESS_IPVS_EXPORTER_CACHE_MB"
CACHE_BUDGET = CACHE_MB << 20  # in bytes


def _backend() -> ModuleType:
    """The deflate implementation: ISA-L's (the isal package, a dependency where it has wheels:
    x86_64 and aarch64), 2.4x as fast as zlib's at level 1 for smaller output on our text
    (docs/performance.md); else the standard library's zlib. Both have zlib's API."""
    try:
        from isal import isal_zlib

        return isal_zlib
    except ImportError:
        return zlib


BACKEND = _backend()
GZIP_LEVEL = 1  # a large scrape is CPU-bound on compression: the fastest level (either backend)


class Segment(NamedTuple):
    """Text deflated on its own (raw deflate, no history before it, ending byte-aligned), so
    that segments can be laid end to end into one gzip stream, in any combination."""

    data: list[bytes]
    crc: int  # CRC-32 of the text alone
    length: int  # bytes of text

    @property
    def compressed_size(self) -> int:
        return sum(map(len, self.data))


def _crc_join() -> Callable[[int, int, int], int]:
    """zlib's crc32_combine: the deflate backend's where it has one (isal_zlib in recent isal),
    else the C speedups' (the standard library's zlib has none)."""
    combine: Callable[[int, int, int], int] | None = getattr(BACKEND, "crc32_combine", None)
    return combine if combine is not None else speedups.crc32_combine


crc_join = _crc_join()
"""The CRC-32 of A+B from crc(A), crc(B) and len(B)."""


def deflate(chunks: Iterable[bytes]) -> Segment:
    """The chunks' text as one Segment."""
    lib = BACKEND
    z = lib.compressobj(GZIP_LEVEL, lib.DEFLATED, -15)
    data, crc, length = [], 0, 0
    for chunk in chunks:
        crc, length = lib.crc32(chunk, crc), length + len(chunk)
        out = z.compress(chunk)
        if out:
            data.append(out)
    data.append(z.flush(lib.Z_SYNC_FLUSH))
    return Segment(data, crc, length)


def join(segments: Iterable[Segment]) -> Segment:
    """Segments laid end to end, as one Segment (their data shared, not copied)."""
    data: list[bytes] = []
    crc = length = 0
    for seg in segments:
        crc, length = crc_join(crc, seg.crc, seg.length), length + seg.length
        data += seg.data
    return Segment(data, crc, length)


class GzipStream:
    """One gzip member (RFC 1952) made of Segments: header, the segments' deflate data, an
    empty final block, then the CRC-32 of all the text, joined from the segments' own
    (crc_join), and its length."""

    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, unknown OS
    END = b"\x03\x00"  # an empty final fixed-Huffman block

    def __init__(self) -> None:
        self.crc = 0
        self.length = 0

    def add(self, seg: Segment) -> list[bytes]:
        self.crc = crc_join(self.crc, seg.crc, seg.length)
        self.length += seg.length
        # one write per segment: a family joined from many chunks would be many small sends
        return seg.data if len(seg.data) < 2 else [b"".join(seg.data)]

    def trailer(self) -> bytes:
        return self.END + struct.pack("<II", self.crc, self.length & 0xFFFFFFFF)


class SegmentCache:
    """The last segment of each family (key), kept chunk by chunk with the packed values it was
    made from, so that a family whose values changed in a few places is made again from its
    unchanged chunks and the few it renders and compresses anew; kept within a budget of
    compressed bytes (CACHE_BUDGET when not given; 0 turns it off).

    Concurrent scrapes share it: the lock guards the bookkeeping (lookup, replacement, size),
    never the rendering and compressing, so `size` is always the bytes held."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = CACHE_BUDGET if budget is None else budget
        self._last: dict[Hashable, tuple[bytes, list[Segment], Segment]] = {}
        self._lock = threading.Lock()
        self.size = 0

    def __len__(self) -> int:
        return len(self._last)

    def segment(self, key: Hashable, values: bytes, step: int, make: Callable[[int], Segment]) -> Segment:
        """key's segment for these packed values: a one-byte tag (values of another tag never
        compare equal), then `step` bytes per chunk (0: the family is one chunk); make(i)
        renders and deflates chunk i. Chunks whose bytes are those of the last scrape come
        from the cache; the entry is replaced whole (concurrent scrapes at worst both build,
        and the one that stores last wins)."""
        with self._lock:
            last = self._last.get(key)
        if last is not None and last[0] == values:
            return last[2]
        n = max(1, -(-(len(values) - 1) // step)) if step else 1
        chunks: list[Segment]
        if last is None or not step or len(last[0]) != len(values) or last[0][:1] != values[:1]:
            chunks = [make(i) for i in range(n)]
        else:
            old, kept = last[0], last[1]
            chunks = [
                kept[i] if old[a : a + step] == values[a : a + step] else make(i)
                for i, a in enumerate(range(1, len(values), step))
            ]
        seg = join(chunks)
        with self._lock:
            held = self._last.pop(key, None)
            if held is not None:
                self.size -= held[2].compressed_size
            if self.size + seg.compressed_size <= self.budget:
                self._last[key] = (values, chunks, seg)
                self.size += seg.compressed_size
        return seg
