"""Long audio and video documents as segments (issue #21, third slice), without a server.

The windowing rules (``service.segments``), windowed decoding (``avmedia``: a window is decoded from the keyframe
before it and equals that span of the whole clip), and the ingest and search flows on a real LanceDB index and
media store with a fake Embedder whose vector is a function of the item it gets (clip and window): rows per window,
one document in counts, ``/get`` and ``/delete``, re-upsert removing the former segments, hits grouped at the best
segment with its ``t0``/``t1`` and keyframe preview, per-document refusals.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mmsearch_client.schemas import (
    DeleteRequest,
    GetRequest,
    IdsRequest,
    InputType,
    Item,
    SearchRequest,
    UpsertDocument,
    UpsertRequest,
)
from pydantic import ValidationError

from bench.support import avclips
from service import mediagc, segments
from service.avmedia import AudioSpec, AVMediaError, VideoSpec, probe_clip
from service.config import Settings
from service.errors import ApiError
from service.index import base as index_base
from service.index.factory import open_index
from service.media import MediaLoader
from service.mediastore import MediaStore, name_of, thumbnail_name, valid_name
from service.pipeline import SearchPipeline
from service.ports import Embeddings
from service.priority import PriorityGate
from tests.support.fakes import FakeReranker, id_page, unit_vector

DIM = 16
SEGMENT_S, OVERLAP_S = 10.0, 2.0


# --- windows, ids, references --------------------------------------------------------------------------------


def test_windows_cover_the_clip_with_overlap_and_end_at_its_end() -> None:
    w = segments.windows(60.0, 10.0, 2.0)
    assert [(x.t0, x.t1) for x in w] == [(0, 10), (8, 18), (16, 26), (24, 34), (32, 42), (40, 50), (48, 58), (56, 60)]
    assert [(x.t0, x.t1) for x in segments.windows(7.5, 10.0, 2.0)] == [(0.0, 7.5)]  # within one: one window
    assert [(x.t0, x.t1) for x in segments.windows(10.0, 10.0, 2.0)] == [(0.0, 10.0)]
    assert [(x.t0, x.t1) for x in segments.windows(18.0, 10.0, 2.0)] == [(0.0, 10.0), (8.0, 18.0)]  # no sliver
    assert [(x.t0, x.t1) for x in segments.windows(18.5, 10.0, 0.0)] == [(0.0, 10.0), (10.0, 18.5)]
    for bad in [(0.0, 10.0, 2.0), (float("nan"), 10.0, 2.0), (5.0, 10.0, 10.0), (5.0, 0.0, 0.0)]:
        with pytest.raises(ValueError):
            segments.windows(*bad)


def test_row_ids_and_stored_references_round_trip() -> None:
    assert segments.row_ids("clip", 3) == ["clip", "clip\x1f1", "clip\x1f2"]
    assert [segments.document_id(r) for r in segments.row_ids("clip", 3)] == ["clip"] * 3
    assert not segments.is_continuation("clip") and segments.is_continuation("clip\x1f2")
    ref = "media://" + "a" * 64 + ".mp4"
    stored = segments.stored_ref(ref, segments.Window(8.0, 18.0), 8, 60.0)
    assert stored == ref + "?t=8,18&n=8&d=60"
    assert segments.parse_ref(stored) == segments.Segment(ref, 8.0, 18.0, 8, 60.0)
    assert segments.parse_ref(ref) is None and segments.parse_ref(ref + "?t=1,2") is None
    # the media store names a segment's clip and its keyframe preview; audio has none
    assert name_of(stored) == "a" * 64 + ".mp4"
    assert thumbnail_name(stored) == "a" * 64 + ".t8000.thumb.jpeg" and valid_name("a" * 64 + ".t8000.thumb.jpeg")
    assert thumbnail_name("media://" + "a" * 64 + ".wav?t=0,1&n=1&d=1") is None


def test_id_pages_list_documents_whatever_the_rows_between_them() -> None:
    """``VectorIndex.ids`` without servers: ``base.document_page`` over a backend's sorted row query (here a list)
    and ``fakes.id_page`` over rows in memory give every document once, in order, after any bound; a clip of 50
    segments between two documents costs more queries, never a missing or repeated document."""
    rows = sorted(["a", "é", "z", *segments.row_ids("film", 50), *segments.row_ids("b", 3), *segments.row_ids("y", 2)])
    docs = [r for r in rows if not segments.is_continuation(r)]
    assert docs == ["a", "b", "film", "y", "z", "é"]
    asked: list[tuple[str | None, int]] = []

    def rows_after(bound: str | None, n: int) -> list[str]:
        asked.append((bound, n))
        return [r for r in rows if bound is None or r > bound][:n]

    for most in (1, 3, 8, 1000):
        for after in (None, "", "a", "b", "b\x1f2", "film", "film\x1f7", "x", "é", "日"):
            want = [d for d in docs if after is None or d > after]
            for limit in (None, 1, 2, 5):
                got = index_base.document_page(rows_after, after, limit, most)
                assert got == want[:limit] == id_page(reversed(rows), after, limit), (most, after, limit)
    asked.clear()
    assert index_base.document_page(rows_after, "b", 1, 1000) == ["film"]
    assert asked == [("b", 2), ("b\x1f2", 2)]  # twice what it lacks, from the last row seen
    asked.clear()
    assert index_base.document_page(rows_after, "film", 2, 1000) == ["y", "z"]
    assert len(asked) == 13 and {n for _, n in asked} == {4}  # 4 rows at a time through the film's 49 others
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="limit"):
            index_base.document_page(rows_after, None, bad, 10)  # type: ignore[arg-type]


def test_segment_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="less than MMSEARCH_SEGMENT_SECONDS"):
        Settings(segment_seconds=5, segment_overlap_s=5)
    with pytest.raises(ValidationError):
        Settings(segment_seconds=0.5)
    assert Settings().segment_seconds == 10.0 and Settings().segment_overlap_s == 2.0


def test_info_says_how_audio_and_video_are_searched() -> None:
    from service.reading import modality_paths

    paths = modality_paths(["text", "image", "video", "text+video"], ocr=False)
    assert "segment" in paths["video"] and "t0/t1" in paths["text+video"] and "audio" not in paths


def test_item_time_range_rules() -> None:
    uri = "data:video/mp4;base64,AAAA"
    assert Item(video=uri, t0=1, t1=2).window == (1.0, 2.0)
    for bad in [{"video": uri, "t0": 2, "t1": 1}, {"video": uri, "t0": 1}, {"text": "x", "t0": 0, "t1": 1}]:
        with pytest.raises(ValidationError):
            Item.model_validate(bad)
    with pytest.raises(ValidationError, match="one medium"):
        UpsertDocument.model_validate({"id": "d", "image": "data:image/png;base64,AA", "video": uri})
    with pytest.raises(ValidationError, match="embedded by the server"):
        UpsertDocument.model_validate({"id": "d", "video": uri, "embedding": [1.0]})


# --- windowed decoding -----------------------------------------------------------------------------------------


def test_a_video_window_is_that_span_of_the_clip() -> None:
    """60 s, a colour per 5 s, a keyframe every 2 s: the window 20-30 s starts at 20 s, sampled at 2 fps."""
    data = avclips.video(60.0, size=(64, 48), rate=4, colour_s=5.0, options={"g": "8"})
    s = Settings()
    part = VideoSpec(window=(20.0, 30.0)).decode(data, s)
    np.testing.assert_allclose(part.timestamps, 20.0 + np.arange(20) * 0.5, atol=1e-3)
    for t, got in zip(part.timestamps, avclips.mean_colours(part.frames), strict=True):
        assert np.abs(np.subtract(got, avclips.colour_at(t, 5.0))).max() <= 12, (t, got)
    assert VideoSpec(window=(20.0, 30.0)).plan(data, s) < VideoSpec().plan(data, s)  # reserved for the window only
    assert probe_clip(data, s, "video").duration == pytest.approx(60.0) and probe_clip(data, s, "video").ext == "mp4"
    with pytest.raises(AVMediaError) as info:
        VideoSpec(window=(70.0, 80.0), field="inputs[0].video").decode(data, s)
    assert info.value.status == 422 and info.value.reason == "bad_window" and info.value.field == "inputs[0].video"


def test_an_audio_window_equals_the_same_span_of_the_whole_clip() -> None:
    data = avclips.audio(30.0, freq=440.0)
    s = Settings()
    whole = AudioSpec(rate=16_000).decode(data, s)
    part = AudioSpec(rate=16_000, window=(10.0, 12.5)).decode(data, s)
    assert part.samples.shape == (40_000,)
    np.testing.assert_array_equal(part.samples, whole.samples[160_000:200_000])


# --- ingest and search on a real index ---------------------------------------------------------------------------


class WindowEmbedder:
    """A fake Embedder whose vector is a function of the clip and window it is sent (the real one decodes them)."""

    def __init__(self, modalities: Sequence[str]) -> None:
        self.modalities = list(modalities)
        self.calls: list[list[Item]] = []

    async def info(self) -> dict[str, Any]:
        return {"model": "fake-av", "dimension": DIM, "modalities": self.modalities}

    async def encode(
        self, items: Sequence[Item], input_type: InputType, timeout: float | None, model: str | None = None
    ) -> Embeddings:
        self.calls.append(list(items))
        keys = [f"{i.text}|{i.image}|{i.audio}|{i.video}|{i.t0}|{i.t1}" for i in items]
        return Embeddings(np.stack([unit_vector(k, DIM) for k in keys]), "fake-av")


class Rig:
    def __init__(
        self, tmp: Path, modalities: Sequence[str] = ("text", "image", "video", "audio", "text+audio")
    ) -> None:
        self.settings = Settings(media_dir=tmp / "media", segment_seconds=SEGMENT_S, segment_overlap_s=OVERLAP_S)
        self.media = MediaStore(self.settings.media_dir)
        self.embedder = WindowEmbedder(modalities)
        self.index = open_index(str(tmp / "index"))
        self.pipeline = SearchPipeline(
            self.settings,
            embedder=self.embedder,
            reranker=FakeReranker(),
            index=self.index,
            media=self.media,
            loader=MediaLoader(self.settings),
            gate=PriorityGate(0.05),
        )

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    def upsert(self, docs: list[dict[str, Any]]) -> Any:
        return self.run(self.pipeline.upsert(UpsertRequest(collection="c", documents=docs)))

    def search(self, query: Any, **kw: Any) -> Any:
        body = {"collection": "c", "query": query, "top_k": 10, "candidates": 20, "rerank": False, **kw}
        return self.run(self.pipeline.search(SearchRequest.model_validate(body)))


def _uri(kind: str, data: bytes, sub: str) -> str:
    return f"data:{kind}/{sub};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def clip() -> bytes:
    return avclips.video(60.0, size=(64, 48), rate=4, colour_s=5.0, options={"g": "8"})


def test_a_long_video_is_indexed_as_segments_and_found_at_one(tmp_path: Path, clip: bytes) -> None:
    rig = Rig(tmp_path)
    rig.upsert(
        [{"id": "film", "video": _uri("video", clip, "mp4"), "metadata": {"lang": "en"}}, {"id": "t", "text": "x"}]
    )
    stored = "media://" + hashlib.sha256(clip).hexdigest() + ".mp4"
    # the Embedder got each window of the stored clip, never the bytes again
    sent = [i for call in rig.embedder.calls for i in call if i.video is not None]
    assert [(i.video, i.t0, i.t1) for i in sent] == [(stored, w.t0, w.t1) for w in segments.windows(60, 10, 2)]
    assert max(len(c) for c in rig.embedder.calls) <= rig.settings.max_av_inputs_per_request
    assert rig.index.get_collection("c").count == 2  # 9 rows, two documents
    doc = rig.run(rig.pipeline.get(GetRequest(collection="c", ids=["film"]))).documents[0]
    assert (doc.video, doc.image, doc.segments, doc.duration, doc.modality) == (stored, None, 8, 60.0, "video")
    # a query equal to one window's input finds that window, named by its document, once
    hits = rig.search({"video": stored, "t0": 16, "t1": 26}).hits
    assert (hits[0].id, hits[0].t0, hits[0].t1, hits[0].video, hits[0].modality) == ("film", 16, 26, stored, "video")
    assert [h.id for h in hits].count("film") == 1
    assert hits[0].thumbnail == f"/media/{hashlib.sha256(clip).hexdigest()}.t16000.thumb.jpeg"
    assert rig.media.read(hits[0].thumbnail.removeprefix("/media/")) is not None
    stored_names = set(rig.media.blobs.names())
    assert len(stored_names) == 1 + 8  # the clip and one preview per window
    assert mediagc.collect(rig.index, rig.media, 0.0) == 0  # every row keeps its clip and its preview
    assert set(rig.media.blobs.names()) == stored_names
    every = rig.search({"video": stored, "t0": 16, "t1": 26}, segments="all", filter={"$modality": "video"}).hits
    assert len(every) == 8 and {h.id for h in every} == {"film"} and every[0].t0 == 16
    assert rig.search("x", filter={"$modality": "image"}, mode="vector").hits == []
    assert rig.search("x", filter={"lang": "en"}, mode="vector").hits[0].id == "film"  # metadata on every row
    # replaced by a shorter clip: its former segments go; deleted: all of them go
    short = avclips.video(12.0, size=(64, 48), rate=4, colour_s=5.0)
    rig.upsert([{"id": "film", "video": _uri("video", short, "mp4")}])
    assert rig.index.get_collection("c").count == 2
    assert len(rig.search("x", segments="all", filter={"$modality": "video"}, mode="vector").hits) == 2
    assert rig.run(rig.pipeline.delete(DeleteRequest(collection="c", ids=["film", "t"]))).deleted == 2
    assert rig.index.get_collection("c").count == 0
    assert rig.search("x", segments="all", mode="vector").hits == []
    assert mediagc.collect(rig.index, rig.media, 0.0) == 1 + 8 + 1 + 2  # both clips and their previews
    assert list(rig.media.blobs.names()) == []


class CrowdingEmbedder(WindowEmbedder):
    """Every window of a clip lies next to the text "q" (the others are far): one document's segments would fill
    a shortlist."""

    async def encode(
        self, items: Sequence[Item], input_type: InputType, timeout: float | None, model: str | None = None
    ) -> Embeddings:
        self.calls.append(list(items))
        out = []
        for i in items:
            if i.video is not None or i.text == "q":
                v = unit_vector("clip", DIM) + 0.01 * unit_vector(f"{i.t0}", DIM)
                out.append(v / np.linalg.norm(v))
            else:
                out.append(unit_vector(str(i.text), DIM))
        return Embeddings(np.stack(out), "fake-av")


def test_segments_of_one_document_do_not_crowd_the_shortlist(tmp_path: Path, clip: bytes) -> None:
    """candidates=4: the 4 nearest rows are all segments of the film; grouped, the shortlist would hold one
    document, so the search draws more rows and answers 4 documents, the film first."""
    rig = Rig(tmp_path)
    rig.embedder = CrowdingEmbedder(rig.embedder.modalities)
    rig.pipeline.embedder = rig.embedder
    texts = [{"id": f"t{k}", "text": f"note {k}"} for k in range(3)]
    rig.upsert([{"id": "film", "video": _uri("video", clip, "mp4")}, *texts])
    hits = rig.search("q", top_k=4, candidates=4, mode="vector", balance="off").hits
    assert hits[0].id == "film" and sorted(h.id for h in hits) == ["film", "t0", "t1", "t2"]
    every = rig.search("q", top_k=4, candidates=4, mode="vector", balance="off", segments="all").hits
    assert [h.id for h in every] == ["film"] * 4  # asked for every segment: the rows as they rank


def test_a_short_clip_is_one_row_and_audio_has_no_preview(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    wav = avclips.audio(4.0)
    rig.upsert([{"id": "voice", "audio": _uri("audio", wav, "wav"), "text": "a note"}])
    doc = rig.run(rig.pipeline.get(GetRequest(collection="c", ids=["voice"]))).documents[0]
    assert (doc.segments, doc.duration, doc.modality, doc.thumbnail) == (1, 4.0, "text+audio", None)
    assert doc.audio is not None and doc.audio.endswith(".wav")
    hit = rig.search({"audio": doc.audio, "text": "a note", "t0": 0, "t1": 4}).hits[0]
    assert (hit.id, hit.t0, hit.t1, hit.audio) == ("voice", 0, 4, doc.audio)


def test_refusals_name_the_document(tmp_path: Path, clip: bytes) -> None:
    rig = Rig(tmp_path, modalities=("text", "image"))
    with pytest.raises(ApiError) as info:
        rig.upsert([{"id": "a", "text": "ok"}, {"id": "film", "video": _uri("video", clip, "mp4")}])
    e = info.value
    assert (e.status, e.code, e.field) == (422, "unsupported_modality", "documents[1].video")
    assert "supported: text, image" in e.message
    rig = Rig(tmp_path)
    with pytest.raises(ApiError) as info:
        rig.upsert([{"id": "a", "text": "ok"}, {"id": "bad", "video": _uri("video", b"\x00" * 64, "mp4")}])
    assert info.value.status == 422 and info.value.field == "documents[1].video"
    with pytest.raises(ApiError) as info:
        rig.upsert([{"id": "x" * 510, "video": _uri("video", clip, "mp4")}])
    assert info.value.status == 422 and info.value.field == "documents[0].id"
    assert list(rig.media.blobs.names()) == []  # nothing stored for a refused request


VIDEO_RERANKER = ["text", "image", "video", "text+image", "text+video"]


def test_video_hits_are_reranked_at_their_segment_by_a_reranker_that_takes_video(tmp_path: Path, clip: bytes) -> None:
    """Each video candidate goes to the Reranker as the stored clip at its window (which the Reranker decodes);
    a reranker without video scores the others only, and a video query it cannot take is not reranked."""
    rig = Rig(tmp_path)
    rig.upsert([{"id": "film", "video": _uri("video", clip, "mp4")}, {"id": "t", "text": "a note"}])
    stored = "media://" + hashlib.sha256(clip).hexdigest() + ".mp4"

    def score(q: Item, d: Item) -> float:  # the window starting at 40 s is the best, the text third
        return -abs((d.t0 or 0.0) - 41.0) if d.video is not None else -8.5

    video = FakeReranker(score=score, modalities=VIDEO_RERANKER)
    rig.pipeline.reranker = video
    res = rig.search("x", rerank=True, segments="all", mode="vector")
    assert res.reranked is True
    assert [(h.id, h.t0) for h in res.hits[:4]] == [("film", 40), ("film", 48), ("t", None), ("film", 32)]
    assert res.hits[0].rerank_score == -1.0 and len(res.hits) == 9
    sent = video.calls[-1][1]
    assert sorted((d.video, d.t0, d.t1) for d in sent if d.video) == [
        (stored, w.t0, w.t1) for w in segments.windows(60, 10, 2)
    ]
    best = rig.search("x", rerank=True, mode="vector")  # grouped: the film's best-retrieved window is reranked
    assert [h.id for h in best.hits].count("film") == 1 and best.reranked is True
    q = {"video": stored, "t0": 40, "t1": 50}
    res = rig.search(q, rerank=True)
    assert res.reranked is True and video.calls[-1][0] == Item(**q)

    images = FakeReranker(score=lambda q, d: 1.0)  # text, image and text+image only
    rig.pipeline.reranker, rig.pipeline._reranker_info = images, None
    res = rig.search("x", rerank=True, segments="all", mode="vector")
    assert [d.text for d in images.calls[-1][1]] == ["a note"]  # the video candidates are not sent
    assert res.hits[0].id == "t" and {h.id for h in res.hits[1:]} == {"film"}
    assert all(h.rerank_score is None for h in res.hits[1:])  # unscored: retrieval order, after the scored
    calls = len(images.calls)
    res = rig.search(q, rerank=True)
    assert res.reranked is False and len(images.calls) == calls
    assert [(w.code, w.message) for w in res.warnings] == [
        ("not_reranked", "the reranker does not take video queries: hits are in retrieval order")
    ]


def _routes(rig: Rig) -> httpx.MockTransport:
    """The public routes a reindex uses, answered by ``rig``'s pipeline (as ``service.search`` does, without a
    server): an ``ApiError`` becomes its status and body."""
    pipe = rig.pipeline

    async def answer(path: str, body: dict[str, Any]) -> Any:
        if path == "/aliases":
            table = await pipe.in_thread(pipe.aliases.table)
            return {"aliases": [{"alias": a, "collection": c} for a, c in sorted(table.items())]}
        if path == "/ids":
            return await pipe.ids(IdsRequest.model_validate(body))
        if path == "/get":
            return await pipe.get(GetRequest.model_validate(body))
        assert path == "/upsert", path
        return await pipe.upsert(UpsertRequest.model_validate(body))

    def handler(request: httpx.Request) -> httpx.Response:
        try:
            out = rig.run(answer(request.url.path, json.loads(request.content or b"{}")))
        except ApiError as e:
            return httpx.Response(e.status, json={"error": e.message, "code": e.code, "field": e.field})
        return httpx.Response(200, json=out if isinstance(out, dict) else out.model_dump(mode="json"))

    return httpx.MockTransport(handler)


def test_ids_list_a_segmented_document_once_and_a_reindex_cuts_its_clip_again(tmp_path: Path, clip: bytes) -> None:
    """``/ids`` pages the documents: the film's continuation rows (``film\\x1f1`` ...) are not listed, so pages of
    2 hold 2 documents and ``next`` is None after the last. ``mmsearch reindex`` (the client's, against this
    pipeline) reads the film's whole clip from ``/get`` (its first row names the clip, not the first window) and the
    target cuts it into the same 8 windows: ``/get``, counts and every segment's hit are the source's."""
    from mmsearch_client import Client
    from mmsearch_client.reindex import reindex

    rig = Rig(tmp_path)
    voice = avclips.audio(4.0)
    rig.upsert(
        [
            {"id": "film", "video": _uri("video", clip, "mp4"), "metadata": {"lang": "en"}},
            {"id": "voice", "audio": _uri("audio", voice, "wav"), "text": "a note"},
            {"id": "t", "text": "x"},
            {"id": "g", "text": "y", "metadata": {"n": 1}},
        ]
    )

    def pages(collection: str, limit: int) -> list[tuple[list[str], str | None]]:
        out: list[tuple[list[str], str | None]] = []
        after = None
        while not out or after is not None:
            page = rig.run(rig.pipeline.ids(IdsRequest(collection=collection, after=after, limit=limit)))
            out.append((page.ids, page.next))
            after = page.next
        return out

    assert pages("c", 2) == [(["film", "g"], "g"), (["t", "voice"], None)]
    assert pages("c", 3) == [(["film", "g", "t"], "t"), (["voice"], None)]
    assert rig.run(rig.pipeline.ids(IdsRequest(collection="c", after="film\x1f3", limit=10))).ids == ["g", "t", "voice"]

    http = httpx.Client(transport=_routes(rig))
    with Client("http://mmsearch.test", http_client=http, max_retries=0) as client:
        res = reindex(client, "c", "fake-av", into="c2", batch_size=2)
    assert (res.copied, res.skipped, res.target) == (4, [], "c2")
    ids = ["film", "voice", "t", "g"]
    got = {c: rig.run(rig.pipeline.get(GetRequest(collection=c, ids=ids))).documents for c in ("c", "c2")}
    assert [d.model_dump() for d in got["c2"]] == [d.model_dump() for d in got["c"]]
    assert (got["c2"][0].segments, got["c2"][0].duration, got["c2"][0].video) == (8, 60.0, got["c"][0].video)
    assert rig.index.get_collection("c2").count == rig.index.get_collection("c").count == 4

    def rows(collection: str) -> list[tuple[str, float | None, float | None, str | None, str | None, float]]:
        hits = rig.search(
            {"video": got["c"][0].video, "t0": 16, "t1": 26},
            collection=collection,
            segments="all",
            top_k=20,
            candidates=40,
        )
        return [(h.id, h.t0, h.t1, h.video, h.audio, round(h.score, 5)) for h in hits.hits]

    film = [r for r in rows("c2") if r[0] == "film"]
    assert sorted((r[1], r[2]) for r in film) == [(w.t0, w.t1) for w in segments.windows(60, 10, 2)]
    assert rows("c2") == rows("c") and len(rows("c")) == 8 + 3
