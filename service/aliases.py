"""Collection aliases (issue #23): a name that stands for a collection wherever ``/search``, ``/get``, ``/upsert``
and ``/delete`` take one, switched atomically from one collection to another (a reindex into a new model's
collection, then one switch).

Stored with the index, so that every Search replica and a restarted one sees them: the whole table is one JSON
collection property (``VectorIndex.write_property``: durable, one atomic write) of the reserved collection
``ALIASES_COLLECTION``, created on the first alias and hidden from ``/collections``. Consistency: a switch is one
write, so a search resolves an alias to the old or the new collection, never to neither; this process sees its own
changes at once, another replica within ``ttl_s`` (its cached copy's age). Changes are serialised within a process;
two replicas changing aliases at the same instant may lose one of the two changes (last writer wins), so make alias
changes through one client at a time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from service.errors import ApiError
from service.index import base

ALIASES_COLLECTION = "mmsearch_aliases"
PROPERTY = "mmsearch.aliases"


def reserved(name: str) -> ApiError:
    return ApiError(
        400, "invalid_collection", f"collection: {name!r} is reserved (it holds the aliases)", field="collection"
    )


class AliasStore:
    """Aliases of one index, read through a cache of age at most ``ttl_s``."""

    def __init__(self, index: base.VectorIndex, ttl_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.index = index
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, str]] | None = None

    def _read(self) -> dict[str, str]:
        try:
            raw = self.index.read_property(ALIASES_COLLECTION, PROPERTY)
        except (base.CollectionNotFound, NotImplementedError):
            raw = None
        table = json.loads(raw) if raw else {}
        self._cached = (self.clock(), table)
        return dict(table)

    def table(self) -> dict[str, str]:
        """Alias -> collection."""
        fresh = self._fresh()
        return dict(fresh) if fresh is not None else self._read()

    def resolve(self, name: str) -> str:
        """The collection ``name`` stands for (itself when it is no alias); the reserved name is refused."""
        fresh = self.cached(name)
        return fresh if fresh is not None else self._read().get(name, name)

    def cached(self, name: str) -> str | None:
        """``resolve`` from the cached table without I/O; None when the cached copy is older than ``ttl_s``."""
        if name == ALIASES_COLLECTION:
            raise reserved(name)
        fresh = self._fresh()
        return fresh.get(name, name) if fresh is not None else None

    def _fresh(self) -> dict[str, str] | None:
        """The cached table while it is younger than ``ttl_s``, else None."""
        cached = self._cached
        return cached[1] if cached is not None and self.clock() - cached[0] < self.ttl_s else None

    def set(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` (created or replaced in one write); the previous target or None."""
        for name in (alias, collection):
            base.check_collection_name(name)
            if name == ALIASES_COLLECTION:
                raise reserved(name)
        with self._lock:
            table = self._read()
            if collection in table:
                raise ApiError(
                    422,
                    "alias_target_is_alias",
                    f"collection: {collection!r} is an alias; point {alias!r} at a collection",
                    field="collection",
                )
            if _exists(self.index, alias):
                raise ApiError(
                    409, "alias_conflict", f"alias: {alias!r} is a collection; an alias cannot shadow it", field="alias"
                )
            self.index.get_collection(collection)  # CollectionNotFound: 404
            previous = table.get(alias)
            table[alias] = collection
            self._write(table)
            return previous

    def check_droppable(self, collection: str) -> None:
        """A collection an alias points at is not dropped (the alias would answer 404): 409 naming the aliases."""
        if collection == ALIASES_COLLECTION:
            raise reserved(collection)
        pointing = sorted(a for a, c in self._read().items() if c == collection)
        if pointing:
            raise ApiError(
                409,
                "collection_aliased",
                f"collection: {collection!r} is the target of alias {', '.join(map(repr, pointing))}; switch or "
                "delete the alias first",
                field="collection",
            )

    def delete(self, alias: str) -> bool:
        with self._lock:
            table = self._read()
            if alias not in table:
                return False
            del table[alias]
            self._write(table)
            return True

    def _write(self, table: dict[str, str]) -> None:
        self.index.ensure_collection(ALIASES_COLLECTION, 2, "mmsearch-aliases")  # Milvus: dim >= 2
        self.index.write_property(ALIASES_COLLECTION, PROPERTY, json.dumps(table, sort_keys=True))
        self._cached = (self.clock(), dict(table))


def _exists(index: base.VectorIndex, name: str) -> bool:
    try:
        index.get_collection(name)
    except base.CollectionNotFound:
        return False
    return True
