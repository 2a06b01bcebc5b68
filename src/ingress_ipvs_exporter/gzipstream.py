"""gzip bodies made of separately deflated segments, and the cache of compressed families.

Each family is deflated on its own (raw deflate, byte-aligned at its end), so that segments
can be laid end to end into one gzip member in any combination: a family whose values did
not change since the last scrape is sent from the cache without being rendered or
compressed again. The member's CRC-32 is joined from the segments' own by GF(2)
arithmetic, never recomputed over the text.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Hashable, Iterable
from typing import NamedTuple

CACHE_ENV = "INGRESS_IPVS_EXPORTER_CACHE_MB"


def _cache_budget(default_mb: int = 8) -> int:
    """Bytes of compressed families kept for reuse across scrapes: $INGRESS_IPVS_EXPORTER_CACHE_MB
    (0 turns the cache off; see docs/performance.md), else 8 MB."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw.isascii() and raw.isdigit():
        return int(raw) * 1024 * 1024
    if raw:
        logging.getLogger(__name__).warning(
            "%s=%r is not a whole number of MB; using %d", CACHE_ENV, raw, default_mb
        )
    return default_mb * 1024 * 1024


CACHE_BUDGET = _cache_budget()
GZIP_LEVEL = 1  # a large scrape is CPU-bound on compression: the fastest level


class Segment(NamedTuple):
    """Text deflated on its own (raw deflate, no history before it, ending byte-aligned), so
    that segments can be laid end to end into one gzip stream, in any combination."""

    data: list[bytes]
    crc: int  # CRC-32 of the text alone
    length: int  # bytes of text

    @property
    def compressed_size(self) -> int:
        return sum(map(len, self.data))


# CRC-32 arithmetic, for joining two texts' CRCs without the texts. A CRC-32 register holds a
# polynomial over GF(2) in reflected order: bit 31 is the coefficient of x^0, bit 0 that of
# x^31; multiplying by x is a right shift, reduced by the generator (0xEDB88320 in this order)
# when x^31's coefficient falls off. For texts A and B: crc(A+B) = crc(A) * x^(8 len(B)) + crc(B)
# mod the generator (the register's initial and final inversions cancel out in this form).
_CRC_POLY = 0xEDB88320
_X0 = 1 << 31  # the polynomial 1


def _crc_mul(a: int, b: int) -> int:
    """a * b modulo the CRC-32 generator, both in reflected order."""
    product, bit = 0, _X0
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return product


_X_POW2 = [_X0 >> 1]  # x^(2^k) mod the generator: x, x^2, x^4, ...
for _ in range(63):
    _X_POW2.append(_crc_mul(_X_POW2[-1], _X_POW2[-1]))


def crc_join(crc_a: int, crc_b: int, length_b: int) -> int:
    """The CRC-32 of A+B from crc(A), crc(B) and len(B) (what zlib's crc32_combine computes)."""
    shift, n, k = _X0, 8 * length_b, 0  # x^(8 len(B)), by its binary digits
    while n:
        if n & 1:
            shift = _crc_mul(_X_POW2[k], shift)
        n >>= 1
        k += 1
    return _crc_mul(shift, crc_a) ^ crc_b


def deflate(chunks: Iterable[bytes]) -> Segment:
    z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
    data, crc, length = [], 0, 0
    for chunk in chunks:
        crc, length = zlib.crc32(chunk, crc), length + len(chunk)
        out = z.compress(chunk)
        if out:
            data.append(out)
    data.append(z.flush(zlib.Z_SYNC_FLUSH))
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
        return seg.data

    def trailer(self) -> bytes:
        return self.END + struct.pack("<II", self.crc, self.length & 0xFFFFFFFF)


class SegmentCache:
    """The last segment of each family (key), with the packed values it was made from; kept
    within a budget of compressed bytes (CACHE_BUDGET when not given; 0 turns it off)."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = CACHE_BUDGET if budget is None else budget
        self._last: dict[Hashable, tuple[bytes, Segment]] = {}
        self.size = 0

    def __len__(self) -> int:
        return len(self._last)

    def get(self, key: Hashable, values: bytes) -> Segment | None:
        """The cached segment of `key` if it was made from these values."""
        last = self._last.get(key)
        return last[1] if last is not None and last[0] == values else None

    def put(self, key: Hashable, values: bytes, seg: Segment) -> None:
        """Remember seg for key (replaced whole, so concurrent scrapes at worst both build it)."""
        last = self._last.pop(key, None)
        if last is not None:
            self.size -= last[1].compressed_size
        if self.size + seg.compressed_size <= self.budget:
            self._last[key] = (values, seg)
            self.size += seg.compressed_size
