"""Document embeddings cached by content: (embedding model, input type, sha256 of the image bytes, text) -> vector.

Re-upserting bytes already seen, under any id, URL or file name, does not call the model. Persisted in one SQLite
file beside the media (``MMSEARCH_EMBEDDING_CACHE``), so it survives restarts; each Search replica may keep its own
(a miss only costs a model call). Bounded: past ``max_entries`` the oldest entries are dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.config import Settings

PRUNE_EVERY = 512
"""Writes between two checks of the size bound."""


def cache_key(model: str, input_type: str, image_sha256: str | None, text: str | None) -> str:
    """One key per distinct model input; the fields are length-prefixed so that no two inputs share a key."""
    h = hashlib.sha256()
    for part in (model, input_type, image_sha256 or "", "\0" if text is None else text):
        raw = part.encode("utf-8", "surrogatepass")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()


class EmbeddingCache:
    """A thread-safe SQLite table of float32 vectors by key (``:memory:`` for a process-local cache)."""

    def __init__(self, path: Path | str, max_entries: int = 1_000_000) -> None:
        self.path = str(path)
        self.max_entries = max_entries
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self._lock = threading.Lock()
        self._writes = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors of ``keys`` (absent ones are left out)."""
        out: dict[str, np.ndarray] = {}
        with self._lock, contextlib.suppress(sqlite3.Error):  # a cache that cannot be read is a miss
            for start in range(0, len(keys), 500):
                part = list(keys[start : start + 500])
                marks = ",".join("?" * len(part))
                for key, blob in self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", part):
                    out[key] = np.frombuffer(blob, dtype=np.float32).copy()
        return out

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        rows = [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items]
        if not rows:
            return
        with self._lock:
            try:
                with self._db:  # one transaction
                    self._db.executemany("INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)", rows)
                self._writes += len(rows)
                if self._writes >= PRUNE_EVERY:
                    self._writes = 0
                    self._prune()
            except sqlite3.Error:  # disk full, read-only: the documents are stored anyway, only not cached
                return

    def _prune(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()
        if count > self.max_entries:
            self._db.execute(
                "DELETE FROM vectors WHERE rowid IN (SELECT rowid FROM vectors ORDER BY rowid LIMIT ?)",
                (count - self.max_entries,),
            )

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_embedding_cache(settings: Settings) -> EmbeddingCache | None:
    """``MMSEARCH_EMBEDDING_CACHE``: ``off`` (None), a path, or ``auto``: beside a local media directory, in memory
    when media live in object storage."""
    from service.mediastore import local_media_dir

    choice = settings.embedding_cache.strip()
    if choice.lower() == "off":
        return None
    if choice.lower() == "auto":
        media = local_media_dir(settings)
        path = ":memory:" if media is None else os.fspath(Path(media).parent / "embedding-cache.sqlite")
    else:
        path = os.path.expanduser(choice)
    return EmbeddingCache(path, settings.embedding_cache_max_entries)
