"""Give freed memory back to the OS, so a worker's RSS returns to its baseline after a burst of large requests.

glibc serves big allocations with ``mmap`` (returned to the OS on ``free``) only above a threshold that it *raises*
each time such a block is freed, up to 32 MiB; after one large image, the next ones (Pillow allocates pixels in
16 MiB blocks) come from the heaps of the decode threads' arenas and stay mapped once freed: an Embedder that
decoded a few tens of megapixels at once kept 600 MB it no longer used. Fixing the threshold (``mallopt``)
makes every allocation above it an ``mmap`` of its own, and ``trim()`` (``malloc_trim``) returns what remains
free at the top of the heaps. No-ops where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
"""Allocations of at least this many bytes get their own mapping (glibc's dynamic threshold is switched off)."""

_libc: ctypes.CDLL | None = None
_configured = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
                _libc = libc
    return _libc


def configure_allocator() -> bool:
    """Fix glibc's mmap threshold (idempotent); True if it was applied."""
    global _configured
    libc = _glibc()
    if libc is None:
        return False
    if not _configured:
        _configured = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _configured


def trim() -> None:
    """Return the free memory at the top of every heap to the OS (blocking; a few ms)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
