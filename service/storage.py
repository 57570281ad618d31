"""Storage faults (disk full, read-only or failing volume): a 503 for the request and ``/readyz`` false until the
storage can be written again, never a 500 from a replica that still claims to be ready.

The index backends wrap the operating system's error in their own exception types (Lance and Arrow as Python
``OSError``/``RuntimeError`` with the OS message, Milvus as ``MilvusException``), so a fault is recognised by the
``errno`` of any exception in the chain or, failing that, by the OS message in its text.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("mmsearch.storage")

FAULT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM})
FAULT_TEXTS = (
    "no space left on device",
    "read-only file system",
    "file too large",
    "disk quota exceeded",
    "input/output error",
    "permission denied",
    "operation not permitted",
)
PROBE_INTERVAL_S = 2.0
PROBE_BYTES = 64 * 1024
REMOTE_COOLDOWN_S = 10.0


def is_storage_fault(exc: BaseException) -> bool:
    """True if ``exc`` (or an exception it was raised from) is the storage refusing a write."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FAULT_ERRNOS:
            return True
        text = str(current).lower()
        if any(t in text for t in FAULT_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


class StorageHealth:
    """Whether the service can write its storage. A fault marks it down; it is up again once a probe write (a
    small file created, fsynced and removed in every local storage directory) succeeds, or, for remote storage
    only, after ``REMOTE_COOLDOWN_S``."""

    def __init__(self, directories: Iterable[Path]) -> None:
        self.directories = [Path(d) for d in directories]
        self.down_since: float | None = None
        self.reason = ""
        self._last_probe = 0.0

    @property
    def ok(self) -> bool:
        return self.down_since is None

    def fault(self, exc: BaseException) -> None:
        if self.down_since is None:
            log.warning("storage fault, not ready until it can be written again: %s", type(exc).__name__)
            self.down_since = time.monotonic()
        self.reason = type(exc).__name__

    def probe(self) -> bool:
        """Blocking: ``True`` if storage is (again) writable. Probes at most every ``PROBE_INTERVAL_S``."""
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now - self._last_probe < PROBE_INTERVAL_S:
            return False
        self._last_probe = now
        if not self.directories:
            if now - self.down_since >= REMOTE_COOLDOWN_S:
                self.down_since = None
            return self.down_since is None
        try:
            for directory in self.directories:
                _probe_write(directory)
        except OSError:
            return False
        log.warning("storage writable again: ready")
        self.down_since = None
        return True


def _probe_write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=directory, prefix=".mmsearch-probe-")
    try:
        data = memoryview(b"\0" * PROBE_BYTES)
        while data:  # a short write (a file-size limit, a nearly full disk) is followed by the write that fails
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


def local_directories(index_uri: str, media_dir: Path | None) -> list[Path]:
    """The local directories the service writes: the LanceDB directory or the Milvus Lite file's, and media (None:
    media in object storage)."""
    dirs = [media_dir] if media_dir is not None else []
    if "://" not in index_uri:
        path = Path(os.path.abspath(os.path.expanduser(index_uri.removeprefix("milvus:"))))
        dirs.append(path.parent if path.suffix == ".db" else path)
    return dirs
