"""Give freed memory back to the OS, so a worker's RSS returns to its baseline after a burst of large requests.

glibc serves big allocations with ``mmap`` (returned to the OS on ``free``) only above a threshold that it *raises*
each time such a block is freed, up to 32 MiB; below it, freed blocks stay in the heaps of the arena that allocated
them and are reused. That reuse is what a model thread needs: a forward pass allocates and frees megabytes of
activations per batch, and with the threshold fixed at 1 MiB every one of them was a fresh mapping, page-faulted
in again each batch (the Embedder spent 10 % of its CPU in the kernel, 11k minor faults per text, and served 0.90x
the texts per second: ``bench.allocator``, bench/RESULTS.md 11.0a). So the threshold stays glibc's own, and what
decoded images leave in the heaps (Pillow allocates pixels in blocks of up to 16 MiB) is handed back by ``trim()``
(``malloc_trim``: every free page of every arena) once a large request is done with them
(``service.pixels.TRIM_AFTER_PIXELS``). A no-op where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(libc, "malloc_trim"):
                _libc = libc
    return _libc


def trim() -> None:
    """Return the free memory of every heap to the OS (blocking; a few ms)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
