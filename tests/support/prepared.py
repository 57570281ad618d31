"""Empty collections made ahead of the tests that need one, for the real Milvus server.

Creating a collection on Milvus 2.3.5 standalone takes ~2.5 s, nearly all of it waiting for the load: the query
coordinator's collection observer checks load progress once a second, and no setting of 2.3.5 shortens that tick
(measured: ``queryCoord.checkInterval``/``distPullInterval``/``checkChannelInterval``/``checkSegmentInterval`` at 100 ms
change nothing). Loads that run side by side finish on the same tick, so a few clients creating collections ahead
turn ~2.5 s of waiting per test into a fraction of it. The collections are made by the service's own
``ensure_collection`` on other ``VectorIndex`` objects (as another process would); the test's own index then opens
them through ``ensure_collection`` too, the existing-collection path.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from service.index import VectorIndex
from service.index.factory import open_index


class PreparedCollections:
    """``ahead`` empty collections (``dimension``-d, ``model``) kept in the making on ``uri``; :meth:`take` hands
    out the oldest and starts another. A collection whose making failed (the server was killed meanwhile, say)
    raises from :meth:`take`: the caller makes one itself."""

    def __init__(self, uri: str, names: Iterator[str], dimension: int, model: str, ahead: int = 8) -> None:
        self._uri, self._names, self._dimension, self._model = uri, names, dimension, model
        self._local = threading.local()
        self._opened: list[VectorIndex] = []
        self._opened_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(ahead, thread_name_prefix="prepared-collection")
        self._queue: deque[Future[str]] = deque(self._submit() for _ in range(ahead))

    def _index(self) -> VectorIndex:
        index: VectorIndex | None = getattr(self._local, "index", None)
        if index is None:
            index = self._local.index = open_index(self._uri)
            with self._opened_lock:
                self._opened.append(index)
        return index

    def _make(self, name: str) -> str:
        try:
            self._index().ensure_collection(name, self._dimension, self._model)
        except Exception:
            self._local.index = None  # its connection may be to a server that is gone: the next make opens anew
            raise
        return name

    def _submit(self) -> Future[str]:
        return self._executor.submit(self._make, next(self._names))

    def take(self, timeout: float = 120.0) -> str:
        future = self._queue.popleft()
        self._queue.append(self._submit())
        return future.result(timeout=timeout)

    def close(self) -> None:
        """Stop making collections and drop the ones never handed out."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        unused = [f.result() for f in self._queue if f.done() and not f.cancelled() and f.exception() is None]
        with open_index(self._uri) as index:
            for name in unused:
                with contextlib.suppress(Exception):
                    index.drop_collection(name)
        for index in self._opened:
            with contextlib.suppress(Exception):
                index.close()


def counter_names(prefix: str, counter: itertools.count[int]) -> Iterator[str]:
    """Names ``<prefix><n>`` from a shared counter (the test module's own)."""
    return (f"{prefix}{n}" for n in counter)
