"""Fakes of the pipeline's ports, for unit tests of ``service.pipeline`` only (the e2e tests run the real services).

* ``FakeEmbedder``: a deterministic unit vector per (text, image) string, with a call log;
* ``FakeReranker``: scores from a caller-supplied function, or a failure / a delay, with a call log;
* ``FakeReader``: OCR pages by image reference, with a call log;
* ``MemoryIndex``: a ``VectorIndex`` in a dict (exact cosine, equality / ``$in`` filters);
* ``Clock``: a clock the fakes advance, so stage timings are exact numbers.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mmsearch_client.schemas import InputType, Item, RerankResult

from service.errors import ApiError
from service.index import base, filters
from service.index.base import IndexedCollection, IndexHit, IndexRecord
from service.mediastore import MediaStore
from service.ocr import OcrLine, OcrPage
from service.ports import Embeddings


@dataclass
class Clock:
    """Seconds, advanced explicitly by the fakes (``tick``)."""

    now: float = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def unit_vector(key: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def item_key(item: Item) -> str:
    return f"{item.text}|{item.image}"


@dataclass
class FakeEmbedder:
    dim: int = 8
    model: str = "fake-model"
    clock: Clock | None = None
    seconds: float = 0.0
    """Clock time one call takes."""
    fail: ApiError | None = None
    calls: list[tuple[InputType, list[Item]]] = field(default_factory=list)
    modalities: list[str] | None = None
    """What ``info`` says the model takes (``["text"]``: a text-only embedder like the lite profile's)."""
    others: dict[str, int] = field(default_factory=dict)
    """More served models, name -> dimension (text-only); with any, ``info`` lists ``models`` and an unknown
    ``model`` is 404 ``model_not_found``. Without, any name is the one model (the real one-model rule)."""
    models_asked: list[str | None] = field(default_factory=list)

    async def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"model": self.model, "dimension": self.dim}
        if self.modalities is not None:
            info["modalities"] = self.modalities
        if self.others:
            info["models"] = [
                {"name": self.model, "dimension": self.dim, "modalities": self.modalities, "default": True},
                *(
                    {"name": n, "dimension": d, "modalities": ["text"], "loading": {"revision": f"rev-{n}"}}
                    for n, d in self.others.items()
                ),
            ]
        return info

    def _chosen(self, model: str | None) -> tuple[str, int]:
        if model is None or not self.others or model == self.model:
            return self.model, self.dim
        if model not in self.others:
            raise ApiError(404, "model_not_found", f"model: no embedder named {model!r}", field="model")
        return model, self.others[model]

    async def encode(
        self, items: Sequence[Item], input_type: InputType, timeout: float | None, model: str | None = None
    ) -> Embeddings:
        self.calls.append((input_type, list(items)))
        self.models_asked.append(model)
        if self.clock is not None:
            self.clock.tick(self.seconds)
        if self.fail is not None:
            raise self.fail
        name, dim = self._chosen(model)
        prefix = "" if name == self.model else f"{name}|"  # the default model's vectors as they always were
        return Embeddings(np.stack([unit_vector(prefix + item_key(i), dim) for i in items]), name)


@dataclass
class FakeReranker:
    score: Callable[[Item, Item], float] = lambda q, d: 0.0
    clock: Clock | None = None
    seconds: float = 0.0
    fail: ApiError | None = None
    delay_s: float = 0.0
    """Real seconds to sleep (to trip a timeout)."""
    calls: list[tuple[Item, list[Item]]] = field(default_factory=list)
    model: str | None = "fake-reranker"
    """``None``: no reranker configured (the lite profile)."""
    modalities: list[str] = field(default_factory=lambda: ["text", "image", "text+image"])
    media: MediaStore | None = None
    """Where ``media://`` images are read, as the real Reranker does: a missing one is refused (422 naming
    ``documents[i].image``)."""

    async def info(self) -> dict[str, Any]:
        return {"model": self.model, "modalities": self.modalities}

    async def rerank(
        self, query: Item, documents: Sequence[Item], timeout: float | None, wait: float | None = None
    ) -> list[RerankResult]:
        async with asyncio.timeout(wait):  # the port's own wait, as RemoteReranker's
            return await self._rerank(query, documents)

    async def _rerank(self, query: Item, documents: Sequence[Item]) -> list[RerankResult]:
        self.calls.append((query, list(documents)))
        if self.clock is not None:
            self.clock.tick(self.seconds)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        for i, d in enumerate(documents):
            if self.media is not None and str(d.image).startswith("media://") and self.media.read(str(d.image)) is None:
                path = f"documents[{i}].image"
                raise ApiError(422, "media_unavailable", f"stored image {d.image} is missing", field=path)
        scores = [self.score(query, d) for d in documents]
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        return [RerankResult(index=i, relevance_score=scores[i]) for i in order]


@dataclass
class FakeReader:
    """Pages by image reference (a missing one reads as no text), with a call log."""

    pages: dict[str, OcrPage] = field(default_factory=dict)
    fail: ApiError | None = None
    calls: list[tuple[InputType, list[str]]] = field(default_factory=list)
    clock: Clock | None = None
    seconds: float = 0.0
    """Clock time one call takes."""

    async def info(self) -> dict[str, Any]:
        return {"model": "fake-ocr"}

    async def read(self, items: Sequence[Item], input_type: InputType, timeout: float | None) -> list[OcrPage]:
        self.calls.append((input_type, [str(i.image) for i in items]))
        if self.clock is not None:
            self.clock.tick(self.seconds)
        if self.fail is not None:
            raise self.fail
        return [self.pages.get(str(i.image), OcrPage((), 100, 100)) for i in items]


def id_page(row_ids: Iterable[str], after: str | None, limit: int | None) -> list[str]:
    """``VectorIndex.ids``' answer from every row id of a collection held in memory (``MemoryIndex``; the tests'
    oracle for ``base.document_page``)."""
    base.check_id_page(after, limit)
    docs = (i for i in row_ids if not base.is_continuation(i) and (after is None or i > after))
    return sorted(docs) if limit is None else heapq.nsmallest(limit, docs)


def page(*lines: tuple[str, tuple[float, float, float, float]]) -> OcrPage:
    return OcrPage(tuple(OcrLine(t, box, 0.99) for t, box in lines), 640, 480)


@dataclass
class _Collection:
    dimension: int
    model: str
    docs: dict[str, IndexRecord] = field(default_factory=dict)


class MemoryIndex(base.VectorIndex):
    """Exact cosine search over dicts; filters: equality and ``$in`` only."""

    def __init__(self, clock: Clock | None = None, search_seconds: float = 0.0) -> None:
        self.collections: dict[str, _Collection] = {}
        self.clock = clock
        self.search_seconds = search_seconds

    def _get(self, name: str) -> _Collection:
        if name not in self.collections:
            raise base.CollectionNotFound(name)
        return self.collections[name]

    def ensure_collection(self, name: str, dimension: int, model: str) -> IndexedCollection:
        c = self.collections.setdefault(name, _Collection(dimension, model))
        if (c.dimension, c.model) != (dimension, model):
            raise base.CollectionMismatch.embedding(name, (c.dimension, c.model), (dimension, model))
        return self.get_collection(name)

    def get_collection(self, name: str) -> IndexedCollection:
        c = self._get(name)
        return IndexedCollection(name=name, dimension=c.dimension, model=c.model, count=len(c.docs))

    def list_collections(self) -> list[IndexedCollection]:
        return [self.get_collection(n) for n in sorted(self.collections)]

    def upsert(self, name: str, docs: Sequence[IndexRecord]) -> None:
        c = self._get(name)
        for d in base.prepare_docs(docs, c.dimension):
            c.docs[d.id] = d

    def drop_collection(self, name: str) -> bool:
        return self.collections.pop(name, None) is not None

    def delete(self, name: str, ids: Sequence[str]) -> int:
        c = self._get(name)
        return sum(c.docs.pop(i, None) is not None for i in dict.fromkeys(ids))

    def get(self, name: str, ids: Sequence[str]) -> list[IndexRecord]:
        return base.order_by_ids(ids, self._get(name).docs)

    def ids(self, name: str, after: str | None = None, limit: int | None = None) -> list[str]:
        return id_page(self._get(name).docs, after, limit)

    def image_refs(self, name: str) -> set[str]:
        return {d.image for d in self._get(name).docs.values() if d.image}

    def search(self, name: str, vector: Sequence[float], k: int, filter: base.Filter | None = None) -> list[IndexHit]:
        c = self._get(name)
        if self.clock is not None:
            self.clock.tick(self.search_seconds)
        clauses = filters.parse_filter(filter)
        q = np.asarray(vector, dtype=np.float32)
        scored = []
        for d in c.docs.values():
            terms = set(filters.document_terms(d.metadata))
            if all(cl.op in ("eq", "in") and terms & set(cl.terms) for cl in clauses):
                scored.append((float(np.dot(q, np.asarray(d.embedding))), d))
        scored.sort(key=lambda x: x[0], reverse=True)
        return [IndexHit(d.id, s, d.text, d.image, dict(d.metadata)) for s, d in scored[:k]]

    def close(self) -> None:
        pass
