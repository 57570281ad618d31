"""``POST /calibrate``: fit a collection's score calibration (``service.calibration``) from labelled queries and
store it with the collection (a collection property, so it survives restarts and every replica sees it).

Each query is embedded as ``/search`` embeds it (OCR of an image query included); per document modality of the
collection the ``candidates`` best documents are drawn, and every drawn document and every relevant one is a
sample of its (query modality -> document modality) pair: its cosine standardised on the modality's statistics,
relevant or not. A pair with too few relevant or non-relevant samples is skipped and named in the answer.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from mmsearch_schema.wire import (
    CalibrateRequest,
    CalibrateResponse,
    Item,
    SearchRequest,
    UncalibrateRequest,
    UncalibrateResponse,
)

from service import balance, calibration
from service.errors import ApiError, unprocessable
from service.index.base import IndexRecord
from service.retrieval import query_modality

if TYPE_CHECKING:
    from service.pipeline import SearchPipeline

EMBED_CONCURRENCY = 8


async def calibrate(pipeline: SearchPipeline, req: CalibrateRequest) -> CalibrateResponse:
    """Fit the collection's score calibration from labelled queries and store it with the collection:
    ``/search`` then applies it to ``min_score`` and to the fused order of a balanced search."""
    name = req.collection
    await pipeline.collection_dimension(name)  # 404 before any work
    docs = await _relevant_documents(pipeline, req)
    pipeline.forget_statistics(name)
    stats = await pipeline.modality_stats(name)
    groups = tuple(m for m, s in stats.items() if s.count > 0)
    if not groups:
        raise unprocessable(
            f"collection: the {pipeline.index.backend} index cannot tell this collection's modalities apart, so it "
            "cannot be calibrated",
            "collection",
            code="calibration_unsupported",
        )
    vectors = await _embed(pipeline, req)
    samples: dict[str, tuple[list[float], list[bool]]] = {}
    for q, qvec in zip(req.queries, vectors, strict=True):
        drawn = await pipeline.in_thread(
            pipeline.index.search_by_modality, name, qvec.tolist(), req.candidates, groups, None
        )
        scored = {m: {h.id: h.score for h in drawn.get(m, [])} for m in groups}
        for doc_id in q.relevant:
            d = docs[doc_id]
            if d.modality in scored and d.embedding is not None:
                v = np.asarray(d.embedding, dtype=np.float32)
                scored[d.modality][doc_id] = float(np.dot(v / (np.linalg.norm(v) or 1.0), qvec))
        standardisers = balance.zscore_scorers(qvec, {m: stats[m] for m in groups})
        calibration.add_samples(
            samples,
            query_modality(q.text, q.image),
            {m: list(s.items()) for m, s in scored.items()},
            set(q.relevant),
            standardisers,
        )
    created = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        calib = await asyncio.to_thread(
            calibration.fit, samples, method=req.method, set_name=req.name, queries=len(req.queries), created=created
        )
    except calibration.CalibrationError as e:
        raise unprocessable(
            f"queries: {e} (at least {calibration.MIN_POSITIVES} relevant and {calibration.MIN_NEGATIVES} "
            "non-relevant samples per modality pair)",
            "queries",
            code="calibration_failed",
        ) from None
    await pipeline.store_calibration(name, calib)
    return CalibrateResponse(collection=name, calibration=calib.describe())


async def uncalibrate(pipeline: SearchPipeline, req: UncalibrateRequest) -> UncalibrateResponse:
    """Remove the collection's score calibration: ``/search`` scores it as an uncalibrated collection again (404 for
    a missing collection; ``removed`` False if it had none)."""
    await pipeline.collection_dimension(req.collection)  # 404 for a collection that does not exist
    removed = await pipeline.store_calibration(req.collection, None)
    return UncalibrateResponse(collection=req.collection, removed=removed)


async def _relevant_documents(pipeline: SearchPipeline, req: CalibrateRequest) -> dict[str, IndexRecord]:
    """The relevant documents (with embeddings); 422 naming the first id the collection does not hold."""
    wanted = sorted({i for q in req.queries for i in q.relevant})
    found = {d.id: d for d in await pipeline.in_thread(pipeline.index.get, req.collection, wanted)}
    for qi, q in enumerate(req.queries):
        for j, doc_id in enumerate(q.relevant):
            if doc_id not in found:
                raise ApiError(
                    422,
                    "unknown_document",
                    f"queries[{qi}].relevant[{j}]: collection {req.collection!r} holds no document {doc_id!r}",
                    field=f"queries[{qi}].relevant[{j}]",
                )
    return found


async def _embed(pipeline: SearchPipeline, req: CalibrateRequest) -> list[np.ndarray]:
    """Each query's vector, embedded as ``/search`` would (a few at a time); errors name ``queries[i]``."""
    gate = asyncio.Semaphore(EMBED_CONCURRENCY)

    async def one(i: int, text: str | None, image: str | None) -> np.ndarray:
        search = SearchRequest.model_construct(collection=req.collection, query=Item(text=text, image=image))
        async with gate:
            try:
                return await pipeline.embed_query(search)
            except ApiError as e:
                message = e.message.removeprefix("query: ").removeprefix("query.image: ")
                raise ApiError(e.status, e.code, f"queries[{i}]: {message}", field=f"queries[{i}]") from None

    return list(await asyncio.gather(*(one(i, q.text, q.image) for i, q in enumerate(req.queries))))
