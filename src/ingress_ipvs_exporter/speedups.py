"""The binding over the C speedups (csrc/speedups.c): transposing row blocks into columns,
joining CRC-32s, writing sample lines. Pure functions, shared by the IPVS binding (its
snapshots' columns) and the renderer (sample text, gzip trailers); nothing here knows IPVS.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from typing import Any

from ._speedups_cffi import ffi, lib


def transposed(block: Any, rows: int, width: int, size: int) -> bytearray:
    """A private copy of a block of rows x width items of `size` bytes (4 or 8), laid out row
    by row (a cffi array, or bytes), column by column: a column is then one contiguous slice,
    which a scrape copies, compares and formats at memcpy speed (a strided one costs ~13 ns an
    item in memoryview.tobytes)."""
    out = bytearray(rows * width * size)
    if out:
        src = ffi.cast("void *", block) if isinstance(block, ffi.CData) else ffi.from_buffer(block)
        lib.speedups_transpose(ffi.from_buffer(out), src, rows, width, size)
    return out


def crc32_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """The CRC-32 of A+B from crc(A), crc(B) and len(B), as zlib's crc32_combine computes it."""
    return int(lib.speedups_crc32_combine(crc_a, crc_b, length_b))


def format_samples(
    name: bytes, labels: bytes, offsets: array[int], start: int, values: Sequence[int], zero_exponent: bool
) -> bytes | None:
    """The sample lines of series start.. (one per value): name, the series' label text
    (labels[offsets[i]:offsets[i + 1]]) and its value as prometheus_client writes it
    (zero_exponent: "1e+012" for 10^12, as older versions of it write). values: a column
    slice, or a list of ints. None when a value is one the C leaves to the caller (2^53 or
    more in magnitude)."""
    raw: Any
    if isinstance(values, memoryview):
        kind, raw = values.format, values if values.c_contiguous else values.tobytes()
    else:
        try:
            kind, raw = "q", array("q", values).tobytes()
        except OverflowError:
            return None
    n = len(values)
    cap = n * (len(name) + lib.SPEEDUPS_VALUE_MAX + 1) + offsets[start + n] - offsets[start]
    out = ffi.new("char[]", cap)
    at = ffi.from_buffer("uint32_t[]", offsets) + start
    text, vals = ffi.from_buffer(labels), ffi.from_buffer(raw)
    size = lib.speedups_format_samples(
        out, cap, name, len(name), text, at, vals, kind.encode(), n, zero_exponent
    )
    if size == -lib.SPEEDUPS_ERANGE:
        return None
    if size < 0:
        # cap is always enough and kind comes from a memoryview of integers: a bug, not input
        raise RuntimeError(f"format_samples: {os.strerror(-size)} (kind {kind!r}, cap {cap})")
    return bytes(ffi.buffer(out, size))
