"""Unit tests of ``service.pipeline``: the ingest and search flows without a server.

The embedder, reranker and index are fakes at the pipeline's ports (``tests/support/fakes.py``); everything else
(media store, media loader, priority gate, wire schema) is real. ``tests/test_search_e2e.py`` runs the same
pipeline inside the real bentos.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmsearch_client.schemas import DropRequest, Item, SearchRequest, UpsertRequest

from bench.support.images import data_uri, make_image
from service.config import Settings
from service.errors import ApiError
from service.media import MediaLoader
from service.mediastore import MediaStore
from service.pipeline import SearchPipeline
from service.priority import PriorityGate
from tests.support.fakes import Clock, FakeEmbedder, FakeReader, FakeReranker, MemoryIndex, page, unit_vector

DIM = 8


class Rig:
    """A pipeline over fakes, plus the fakes for the assertions."""

    def __init__(self, tmp: Path, reader: FakeReader | None = None, **settings: Any) -> None:
        """``reader``: OCR on (a text-only embedder then reads a query image's text); off by default."""
        self.clock = Clock()
        self.embedder = FakeEmbedder(DIM, clock=self.clock, seconds=0.010)
        if reader is not None:
            self.embedder.modalities = ["text"]
        self.reranker = FakeReranker(clock=self.clock, seconds=0.030)
        self.index = MemoryIndex(self.clock, search_seconds=0.002)
        self.settings = Settings(media_dir=tmp / "media", **settings)
        self.observed: list[tuple[str, float]] = []
        self.pipeline = SearchPipeline(
            self.settings,
            embedder=self.embedder,
            reranker=self.reranker,
            reader=reader,
            index=self.index,
            media=MediaStore(self.settings.media_dir),
            loader=MediaLoader(self.settings),
            gate=PriorityGate(0.05),
            observe_stage=lambda stage, s: self.observed.append((stage, s)),
            clock=self.clock,
        )

    def upsert(self, docs: list[dict[str, Any]], collection: str = "c") -> Any:
        return asyncio.run(self.pipeline.upsert(UpsertRequest(collection=collection, documents=docs)))

    def search(self, **kw: Any) -> Any:
        body = {"collection": "c", "query": "q", "top_k": 10, "candidates": 10, **kw}
        return asyncio.run(self.pipeline.search(SearchRequest.model_validate(body)))


def near(key: str, noise: float) -> list[float]:
    """A vector close to the fake embedding of the text query ``key`` (cosine falls as ``noise`` grows)."""
    v = unit_vector(f"{key}|None", DIM) + noise * unit_vector(f"noise{noise}", DIM)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path)
    # retrieval order for query "q": a, b, e (embedding-only), c, d
    r.upsert(
        [
            {"id": "a", "text": "alpha", "embedding": near("q", 0.1)},
            {"id": "b", "text": "beta", "embedding": near("q", 0.3)},
            {"id": "e", "embedding": near("q", 0.5)},
            {"id": "c", "text": "gamma", "embedding": near("q", 0.8)},
            {"id": "d", "text": "delta", "embedding": near("q", 1.5)},
        ]
    )
    return r


RERANK_SCORES = {"alpha": 0.2, "beta": 0.1, "gamma": 0.9, "delta": 0.5}


def by_text(q: Item, d: Item) -> float:
    return RERANK_SCORES[d.text or ""]


def test_retrieval_order_without_rerank(rig: Rig) -> None:
    res = rig.search(rerank=False)
    assert [h.id for h in res.hits] == ["a", "b", "e", "c", "d"]
    assert res.reranked is False and rig.reranker.calls == []
    assert all(h.rerank_score is None and h.score == h.retrieval_score for h in res.hits)


def test_reranked_hits_first_then_unscorable_in_retrieval_order(rig: Rig) -> None:
    rig.reranker.score = by_text
    res = rig.search(rerank=True)
    assert [h.id for h in res.hits] == ["c", "d", "a", "b", "e"]
    assert res.reranked is True
    # the reranker saw only documents with content, in retrieval order
    assert [d.text for d in rig.reranker.calls[0][1]] == ["alpha", "beta", "gamma", "delta"]
    assert [h.rerank_score for h in res.hits] == [0.9, 0.5, 0.2, 0.1, None]
    assert res.hits[-1].score == res.hits[-1].retrieval_score


def test_top_k_cuts_after_reranking(rig: Rig) -> None:
    rig.reranker.score = by_text
    res = rig.search(rerank=True, top_k=2, candidates=4)
    assert [h.id for h in res.hits] == ["c", "a"]  # candidates a, b, e, c: d was never retrieved
    assert len(rig.reranker.calls[0][1]) == 3


@pytest.mark.parametrize("rerank", [True, "auto"])
def test_reranker_down(rig: Rig, rerank: bool | str) -> None:
    rig.reranker.fail = ApiError(503, "reranker_unavailable", "reranker service unavailable")
    if rerank is True:
        with pytest.raises(ApiError) as e:
            rig.search(rerank=True)
        assert e.value.status == 503 and e.value.code == "reranker_unavailable"
        return
    res = rig.search(rerank="auto")
    assert res.reranked is False
    assert [h.id for h in res.hits] == ["a", "b", "e", "c", "d"]
    assert all(h.rerank_score is None for h in res.hits)


def test_reranker_client_error_is_not_swallowed_by_auto(rig: Rig) -> None:
    rig.reranker.fail = ApiError(422, "unsupported_modality", "documents[0]: no")
    with pytest.raises(ApiError) as e:
        rig.search(rerank="auto")
    assert e.value.status == 422


@pytest.mark.parametrize("rerank", [True, "auto"])
def test_reranker_too_slow(tmp_path: Path, rerank: bool | str) -> None:
    rig = Rig(tmp_path, rerank_timeout_s=0.05)
    rig.upsert([{"id": "a", "text": "alpha", "embedding": near("q", 0.1)}])
    rig.reranker.delay_s = 1.0
    if rerank is True:
        with pytest.raises(ApiError) as e:
            rig.search(rerank=True)
        assert e.value.code == "reranker_timeout"
    else:
        res = rig.search(rerank="auto")
        assert res.reranked is False and [h.id for h in res.hits] == ["a"]


def test_stage_timings(rig: Rig) -> None:
    rig.reranker.score = by_text
    res = rig.search(rerank=True)
    t = res.timings_ms
    # exact: the fakes advance the clock by 10 ms (embed), 2 ms (index search) and 30 ms (rerank)
    assert (t.embed, t.retrieve, t.rerank, t.total) == pytest.approx((10, 2, 30, 42))
    assert t.read == 0  # no image to read in the query
    assert [s for s, _ in rig.observed] == ["read", "embed", "retrieve", "rerank", "total"]
    off = rig.search(rerank=False)
    assert (off.timings_ms.rerank, off.timings_ms.total) == pytest.approx((0, 12))


def test_reading_a_query_image_is_timed_as_read(tmp_path: Path) -> None:
    """The Reader's OCR of a query image (5 ms on the fake clock) is the ``read`` stage, inside ``total``, and
    none of ``embed``'s 10 ms."""
    image = data_uri(make_image(1))
    clock_reader = FakeReader({image: page(("quarterly revenue", (0, 0, 10, 10)))}, seconds=0.005)
    rig = Rig(tmp_path, reader=clock_reader)
    clock_reader.clock = rig.clock
    rig.upsert([{"id": "a", "text": "t", "embedding": near("q", 0.1)}])
    t = rig.search(query={"image": image}, rerank=False).timings_ms
    assert clock_reader.calls == [("query", [image])]
    assert (t.read, t.embed, t.retrieve, t.total) == pytest.approx((5, 10, 2, 17))


def test_hit_conversion_is_timed_as_retrieval_not_rerank(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Turning index hits into API hits (1 ms each here) counts in ``retrieve``; ``rerank`` is the Reranker's
    30 ms and nothing else."""
    import service.pipeline as pipeline

    convert = pipeline._search_hit

    def slow_convert(c: Any) -> Any:
        rig.clock.tick(0.001)
        return convert(c)

    monkeypatch.setattr(pipeline, "_search_hit", slow_convert)
    rig.reranker.score = by_text
    t = rig.search(rerank=True).timings_ms
    assert (t.embed, t.retrieve, t.rerank, t.total) == pytest.approx((10, 2 + 5, 30, 47))


def test_shortlist_is_raised_to_top_k(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_candidates=8)
    rig.upsert([{"id": f"d{i}", "text": f"t{i}", "embedding": near("q", 0.1 * i)} for i in range(6)])
    res = rig.search(top_k=5, candidates=2, rerank=False)  # as the CLI and every client send it
    assert len(res.hits) == 5
    with pytest.raises(ApiError) as e:
        rig.search(top_k=9, candidates=2)
    assert e.value.status == 422 and e.value.field == "top_k" and "8" in e.value.message


def test_search_argument_checks(rig: Rig) -> None:
    with pytest.raises(ApiError) as e:
        rig.search(candidates=rig.settings.max_candidates + 1, top_k=1)
    assert e.value.status == 422 and e.value.field == "candidates"
    with pytest.raises(ApiError) as e:
        rig.search(collection="missing")
    assert e.value.status == 404 and e.value.field == "collection"
    assert rig.embedder.calls == []  # refused before any model call


def test_query_from_another_dimension_is_a_conflict(rig: Rig) -> None:
    rig.embedder.dim = DIM * 2
    with pytest.raises(ApiError) as e:
        rig.search()
    assert e.value.status == 409 and e.value.code == "collection_mismatch"


def test_upsert_embeds_only_what_has_no_embedding(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    vec = [1.0] + [0.0] * 7
    res = rig.upsert([{"id": "x", "text": "one"}, {"id": "y", "embedding": vec}, {"id": "z", "text": "2"}])
    assert res.ids == ["x", "y", "z"] and res.upserted == 3
    assert [(t, [i.text for i in items]) for t, items in rig.embedder.calls] == [("document", ["one", "2"])]
    stored = {d.id: d for d in rig.index.get("c", ["x", "y", "z"])}
    assert stored["y"].embedding == vec
    assert np.allclose(stored["x"].embedding, unit_vector("one|None", DIM))


def test_upsert_refusals_name_the_field(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_documents_per_request=3)  # the limit upsert checks (one source per limit)
    cases: list[tuple[list[dict[str, Any]], int, str | None]] = [
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], 400, "documents"),
        ([{"id": str(i), "text": "x"} for i in range(4)], 413, "documents"),
        ([{"id": "a", "text": "x"}, {"id": "b", "embedding": [1.0] * 3}], 422, "documents[1].embedding"),
        ([{"id": "a", "embedding": [0.0] * DIM}], 422, "documents[0].embedding"),
    ]
    for docs, status, path in cases:
        with pytest.raises(ApiError) as e:
            rig.upsert(docs)
        assert (e.value.status, e.value.field) == (status, path), docs
    assert rig.index.collections == {}  # nothing written


def test_embedder_errors_point_at_the_callers_document(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.embedder.fail = ApiError(400, "bad_scheme", "inputs[1].image: refused", field="inputs[1].image")
    with pytest.raises(ApiError) as e:
        rig.upsert([{"id": "a", "embedding": [1.0] * DIM}, {"id": "b", "text": "x"}, {"id": "c", "image": "x"}])
    # the embedder saw documents 1 and 2 as inputs 0 and 1
    assert e.value.field == "documents[2].image" and e.value.message.startswith("documents[2].image")


# --- several replicas: no stale per-process state ------------------------------------------------------------


def replica_of(rig: Rig, tmp: Path) -> SearchPipeline:
    """A second pipeline (another Search replica) over the same index and embedder."""
    return SearchPipeline(
        rig.settings,
        embedder=rig.embedder,
        reranker=rig.reranker,
        index=rig.index,
        media=MediaStore(rig.settings.media_dir),
        loader=MediaLoader(rig.settings),
        gate=PriorityGate(0.05),
    )


def test_drop_then_recreate_elsewhere_is_seen_by_a_replica(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    other = replica_of(rig, tmp_path)
    rig.upsert([{"id": "a", "text": "q"}])
    req = SearchRequest(collection="c", query="q", rerank=False)
    assert [h.id for h in asyncio.run(other.search(req)).hits] == ["a"]  # dimension cached in `other`
    assert asyncio.run(rig.pipeline.drop(DropRequest(collection="c"))).dropped
    with pytest.raises(ApiError) as err:
        asyncio.run(other.search(req))
    assert (err.value.status, err.value.code) == (404, "collection_not_found")
    with pytest.raises(ApiError) as err:
        asyncio.run(rig.pipeline.drop(DropRequest(collection="c")))
    assert (err.value.status, err.value.code, err.value.field) == (404, "collection_not_found", "collection")
    # Re-created by someone else with another dimension: the replica answers 409, not a stale 200 or a 500.
    rig.index.ensure_collection("c", DIM * 2, "other-model")
    with pytest.raises(ApiError) as err:
        asyncio.run(other.search(req))
    assert (err.value.status, err.value.code) == (409, "collection_mismatch")
    rig.index.drop_collection("c")
    rig.upsert([{"id": "b", "text": "q"}])
    assert [h.id for h in asyncio.run(other.search(req)).hits] == ["b"]


def test_search_refuses_a_collection_of_another_model_with_the_same_dimension(tmp_path: Path) -> None:
    """Same dimension, another vector space (e.g. a lite index built with MiniLM, searched with bge-small): 409
    naming both models, not meaningless hits."""
    rig = Rig(tmp_path)
    rig.upsert([{"id": "a", "text": "q"}])
    first = rig.embedder.model
    rig.embedder.model = "other-model"  # dimension unchanged
    with pytest.raises(ApiError) as err:
        rig.search()
    assert (err.value.status, err.value.code, err.value.field) == (409, "collection_mismatch", "collection")
    assert repr(first) in err.value.message and "'other-model'" in err.value.message
    rig.embedder.model = first
    assert [h.id for h in rig.search().hits] == ["a"]


def test_embedder_replaced_by_another_model_is_noticed(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.upsert([{"id": "a", "text": "x"}], collection="old")
    rig.embedder.model, rig.embedder.dim = "new-model", DIM * 2
    rig.upsert([{"id": "b", "text": "x"}], collection="new")  # written with the model that embedded it
    info = rig.index.get_collection("new")
    assert (info.model, info.dimension) == ("new-model", DIM * 2)
    assert asyncio.run(rig.pipeline.embedder_info())["model"] == "new-model"


def test_a_redeployed_embedder_with_another_model_of_the_same_dimension_gets_409s(tmp_path: Path) -> None:
    """Search caches the Embedder's /info for its life; a model swapped behind it (same dimension) must not mix
    vectors of two models in one collection, on either path."""
    rig = Rig(tmp_path)
    rig.upsert([{"id": "a", "text": "q"}])
    assert [h.id for h in rig.search(rerank=False).hits] == ["a"]  # collection model cached
    rig.embedder.model = "new-model"  # same dimension
    with pytest.raises(ApiError) as err:
        rig.search(rerank=False)
    assert (err.value.status, err.value.code, err.value.field) == (409, "collection_mismatch", "collection")
    assert "'fake-model'" in err.value.message and "'new-model'" in err.value.message
    with pytest.raises(ApiError) as err:
        rig.upsert([{"id": "b", "text": "other"}])
    assert (err.value.status, err.value.code) == (409, "collection_mismatch")
    assert [d.id for d in rig.index.get("c", ["a", "b"])] == ["a"]  # nothing of the new model written
    assert asyncio.run(rig.pipeline.embedder_info())["model"] == "new-model"
    rig.upsert([{"id": "b", "text": "q"}], collection="fresh")  # a new collection takes the new model
    req = SearchRequest(collection="fresh", query="q", rerank=False)
    assert [h.id for h in asyncio.run(rig.pipeline.search(req)).hits] == ["b"]
