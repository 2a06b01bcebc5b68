"""Keeping the process small between scrapes (glibc only; a no-op elsewhere).

A large scrape allocates tens of MB of short-lived text in the handler's thread. By default
glibc gives each thread its own malloc arena and raises its mmap threshold after the first
large free, so freed blocks stay in the process and RSS settles well above what is live
(docs/performance.md has the figures).
tune() caps the arenas and fixes the mmap threshold; release() hands free pages back to the
kernel after each scrape.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept fixed


def _glibc() -> ctypes.CDLL | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (ValueError, OSError, AttributeError):
        return None


_libc = _glibc()


def tune() -> bool:
    """Call once, before the server's threads start. True when glibc took the settings."""
    if _libc is None:
        return False
    return bool(_libc.mallopt(M_ARENA_MAX, ARENAS)) and bool(_libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release() -> None:
    """Return the free pages of every arena to the kernel (a few ms after a large scrape)."""
    if _libc is not None:
        _libc.malloc_trim(0)
