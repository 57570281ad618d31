"""Unit tests of the pipeline's OCR stage, keyword/hybrid retrieval, evidence and text reranking of images.

Fakes at the model ports (``tests/support/fakes.py``: embedder, reranker, reader); the index is a real LanceDB
directory, since keyword search is the index's own (BM25).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from mmsearch_client.schemas import GetRequest, Item, SearchRequest, UpsertRequest

from bench.support.images import data_uri, make_image
from service.config import Settings
from service.errors import ApiError
from service.index.factory import open_index
from service.media import MediaLoader
from service.mediastore import MediaStore
from service.pipeline import SearchPipeline
from service.priority import PriorityGate
from tests.support.fakes import FakeEmbedder, FakeReader, FakeReranker, MemoryIndex, page

DIM = 8
INVOICE = data_uri(make_image(1))
BANNER = data_uri(make_image(2))
PHOTO = data_uri(make_image(3))
INVOICE_PAGE = page(("Invoice total 418.20 EUR", (18, 31, 271, 56)), ("Shipping address Lisbon", (58, 101, 315, 130)))
BANNER_PAGE = page(("Nightly backup failed", (30, 60, 280, 90)))


class Rig:
    def __init__(
        self, tmp: Path, *, text_only: bool = True, reader: bool = True, index: Any = None, **settings: Any
    ) -> None:
        self.embedder = FakeEmbedder(DIM, modalities=["text"] if text_only else ["text", "image"])
        self.reranker = FakeReranker()
        self.reader = FakeReader({INVOICE: INVOICE_PAGE, BANNER: BANNER_PAGE})
        self.index = index if index is not None else open_index(str(tmp / "index"))
        settings = Settings(media_dir=tmp / "media", **settings)
        self.pipeline = SearchPipeline(
            settings,
            embedder=self.embedder,
            reranker=self.reranker,
            reader=self.reader if reader else None,
            index=self.index,
            media=MediaStore(settings.media_dir),
            loader=MediaLoader(settings),
            gate=PriorityGate(0.05),
        )

    def upsert(self, docs: list[dict[str, Any]]) -> Any:
        return asyncio.run(self.pipeline.upsert(UpsertRequest(collection="c", documents=docs)))

    def search(self, query: Any, **kw: Any) -> Any:
        body = {"collection": "c", "query": query, "top_k": 5, "candidates": 10, "rerank": False, **kw}
        return asyncio.run(self.pipeline.search(SearchRequest.model_validate(body)))


DOCS = [
    {"id": "invoice", "image": INVOICE, "metadata": {"team": "finance"}},
    {"id": "banner", "image": BANNER, "text": "ops screenshot", "metadata": {"team": "ops"}},
    {"id": "memo", "text": "The invoice for Porto was paid", "metadata": {"team": "finance"}},
]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path)
    r.upsert(DOCS)
    return r


def test_ingest_reads_images_and_embeds_their_text(rig: Rig) -> None:
    assert rig.reader.calls == [("document", [INVOICE, BANNER])]
    _, items = rig.embedder.calls[0]
    # a text-only embedder gets an image's text (after the document's own), never the image
    assert items == [
        Item(text="Invoice total 418.20 EUR\nShipping address Lisbon"),
        Item(text="ops screenshot\nNightly backup failed"),
        Item(text="The invoice for Porto was paid"),
    ]
    got = asyncio.run(rig.pipeline.get(GetRequest(collection="c", ids=["invoice", "memo"]))).documents
    assert got[0].ocr_text == INVOICE_PAGE.text and got[1].ocr_text is None


def test_upsert_reports_what_was_read_and_caches_by_content(rig: Rig) -> None:
    res = rig.upsert([{"id": "invoice2", "image": INVOICE}, {"id": "banner", "image": BANNER}])
    assert (res.ocr_images, res.ocr_lines) == (2, 3)
    assert len(rig.reader.calls) == 1  # both images were read at the first upsert: no second call


def test_image_without_text_is_refused_by_field_for_a_text_only_embedder(rig: Rig) -> None:
    with pytest.raises(ApiError) as e:
        rig.upsert([{"id": "ok", "text": "fine"}, {"id": "photo", "image": PHOTO}])
    assert (e.value.status, e.value.code, e.value.field) == (422, "no_text_in_image", "documents[1].image")
    assert "reads text only" in e.value.message


def test_reader_refusals_name_the_document(rig: Rig) -> None:
    rig.reader.fail = ApiError(400, "bad_base64", "inputs[0].image: invalid base64", field="inputs[0].image")
    with pytest.raises(ApiError) as e:
        rig.upsert([{"id": "x", "text": "t"}, {"id": "y", "image": PHOTO}])
    assert e.value.field == "documents[1].image" and e.value.message.startswith("documents[1].image")


def test_default_mode_is_hybrid_with_evidence_boxes(rig: Rig) -> None:
    res = rig.search("invoice total")
    assert res.mode == "hybrid"
    top = res.hits[0]
    assert top.id == "invoice" and top.keyword_score is not None
    assert [(e.source, e.text, e.box) for e in top.evidence] == [("ocr", "Invoice total 418.20 EUR", [18, 31, 271, 56])]
    memo = next(h for h in res.hits if h.id == "memo")
    assert [(e.source, e.text, e.box) for e in memo.evidence] == [("text", "The invoice for Porto was paid", None)]


def test_keyword_mode_skips_the_embedder_and_filters_apply(rig: Rig) -> None:
    before = len(rig.embedder.calls)
    res = rig.search("backup", mode="keyword")
    assert res.mode == "keyword" and [h.id for h in res.hits] == ["banner"]
    assert len(rig.embedder.calls) == before
    assert [h.id for h in rig.search("invoice", mode="keyword", filter={"team": "ops"}).hits] == []
    assert {h.id for h in rig.search("invoice", mode="hybrid", filter={"team": "finance"}).hits} == {"invoice", "memo"}
    vector = rig.search("invoice", mode="vector")
    assert vector.mode == "vector" and all(h.keyword_score is None for h in vector.hits)


def test_image_query_is_read_at_query_priority_and_searched_by_its_text(rig: Rig) -> None:
    screenshot = data_uri(make_image(4))  # another picture of the invoice
    rig.reader.pages[screenshot] = INVOICE_PAGE
    res = rig.search({"image": screenshot})
    assert rig.reader.calls[-1] == ("query", [screenshot])
    assert rig.embedder.calls[-1] == ("query", [Item(text=INVOICE_PAGE.text)])
    assert res.mode == "hybrid" and res.hits[0].id == "invoice" and res.hits[0].evidence
    rig.search({"image": INVOICE})  # read at ingest: not read again
    assert len(rig.reader.calls) == 2
    with pytest.raises(ApiError) as e:
        rig.search({"image": PHOTO})
    assert (e.value.code, e.value.field) == ("no_text_in_image", "query.image")


def test_text_reranker_scores_image_documents_by_their_text(rig: Rig) -> None:
    rig.reranker.modalities = ["text"]
    rig.reranker.score = lambda q, d: 1.0 if "Nightly" in (d.text or "") else 0.0
    res = rig.search("what failed last night", rerank=True)
    assert res.reranked and res.hits[0].id == "banner" and res.hits[0].rerank_score == 1.0
    query, docs = rig.reranker.calls[0]
    assert query == Item(text="what failed last night")
    assert Item(text="ops screenshot\nNightly backup failed") in docs and all(d.image is None for d in docs)
    assert all(h.rerank_score is not None for h in res.hits)  # every hit was scored, images included


def test_no_reranker_configured(rig: Rig) -> None:
    rig.reranker.model = None
    for rerank in (None, "auto"):
        kw = {} if rerank is None else {"rerank": rerank}
        body = {"collection": "c", "query": "invoice", "top_k": 5, "candidates": 10, **kw}
        res = asyncio.run(rig.pipeline.search(SearchRequest.model_validate(body)))
        assert res.reranked is False and rig.reranker.calls == []
        assert [(w.id, w.code) for w in res.warnings] == [(None, "not_reranked")]
    with pytest.raises(ApiError) as e:
        rig.search("invoice", rerank=True)
    assert (e.value.status, e.value.code) == (501, "no_reranker")


def test_auto_rerank_fallback_is_named_in_warnings(rig: Rig) -> None:
    rig.reranker.fail = ApiError(503, "reranker_unavailable", "reranker service unavailable")
    res = rig.search("invoice", rerank="auto")
    assert res.reranked is False and [w.code for w in res.warnings] == ["reranker_unavailable"]


def test_backend_without_keyword_search(tmp_path: Path) -> None:
    r = Rig(tmp_path, index=MemoryIndex())
    r.upsert([{"id": "memo", "text": "an invoice"}])
    assert r.search("invoice").mode == "vector"  # the default falls back; asking for it is refused
    for mode in ("keyword", "hybrid"):
        with pytest.raises(ApiError) as e:
            r.search("invoice", mode=mode)
        assert (e.value.status, e.value.code, e.value.field) == (422, "unsupported_mode", "mode")
        assert "index" in e.value.message


def test_ocr_off_keeps_images_for_a_multimodal_embedder(tmp_path: Path) -> None:
    r = Rig(tmp_path, text_only=False, reader=False)
    res = r.upsert([{"id": "invoice", "image": INVOICE}])
    assert res.ocr_images == 0 and r.reader.calls == []
    assert r.embedder.calls[0][1] == [Item(image=INVOICE)]
    assert r.search({"image": INVOICE}).mode == "vector"


@pytest.mark.parametrize(
    ("text_only", "settings", "balanced"),
    [(True, {}, False), (True, {"balance_text_only": True}, True), (False, {}, True)],
)
def test_a_text_only_embedder_does_not_balance_its_one_text_space(
    tmp_path: Path, text_only: bool, settings: dict[str, Any], balanced: bool
) -> None:
    """Images embedded by their OCR text lie in the text documents' space: no modality gap, one raw draw (unless
    ``balance_text_only``); a multimodal embedder's mixed collection is balanced."""
    r = Rig(tmp_path, text_only=text_only, **settings)
    r.upsert(DOCS)
    for mode in ("vector", "hybrid"):
        assert r.search("invoice Porto", mode=mode).balanced is balanced


def test_describe_says_which_path_each_modality_takes(rig: Rig) -> None:
    info = rig.pipeline.describe(["text"])
    assert info["ocr"] is True and info["keyword_search"] is True and info["index_backend"] == "lancedb"
    assert info["modality_paths"]["image"].startswith("OCR text -> text embedding")
    clip = rig.pipeline.describe(["text", "image"])["modality_paths"]
    assert clip["image"].startswith("image embedding") and "OCR text is keyword-searchable" in clip["image"]


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({"profile": "tiny"}, False),  # auto: the tiny profile reads nothing unless a Reader is configured
        ({"profile": "tiny", "reader_url": "http://127.0.0.1:9"}, True),
        ({"profile": "tiny", "ocr": "on"}, True),
        ({"profile": "lite"}, True),
        ({"profile": "default"}, True),
        ({"profile": "lite", "ocr": "off"}, False),
    ],
)
def test_ocr_setting(env: dict[str, str], enabled: bool) -> None:
    assert Settings(**env).ocr_enabled() is enabled  # type: ignore[arg-type]
