"""Segment search, end to end (issue #21 acceptance): real bento processes on 127.0.0.1.

One Search wired by URL to one Embedder serving the tiny seeded Qwen2-VL video embedder (the session's Reranker and
Reader stay wired but unused: that Reranker takes no video, and these searches ask for none). Both share the
session's media store, where Search keeps the clip and the Embedder reads each window. A 60 s video is generated
here with PyAV, its colour changing every 7.5 s (eight colours, none repeated); a query clip made of one window's
colours (a new file: re-encoded, sampled from its own start) must return that window's ``t0``/``t1`` at rank 1,
and deleting the document removes every segment.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Any

import av
import httpx
import numpy as np
import pytest

from bench.support.avclips import COLOURS
from bench.support.servers import BentoServer, tiny_dir
from service.tiny import TinyAVModels, ensure_tiny_av_models
from tests.conftest import serve_bento, serve_wired_search

pytestmark = pytest.mark.e2e
BLOCK_S = 7.5
"""Seconds each colour is shown in the film: a window's colours and their shares tell it from every other."""
COLL = "films"


def colour_at(t: float) -> tuple[int, int, int]:
    return COLOURS[int(t / BLOCK_S + 1e-6) % len(COLOURS)]


def make_clip(colour: Callable[[float], tuple[int, int, int]], seconds: float, rate: int = 2) -> bytes:
    """An H.264 MP4 of solid frames, 64x48 at ``rate`` fps, whose colour at ``t`` s is ``colour(t)``."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(round(seconds * rate)):
            img = np.empty((48, 64, 3), np.uint8)
            img[:] = colour(i / rate)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def uri(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


FILM = make_clip(colour_at, 60.0)
WINDOWS = [(0, 10), (8, 18), (16, 26), (24, 34), (32, 42), (40, 50), (48, 58), (56, 60)]


@pytest.fixture(scope="module")
def av_models() -> TinyAVModels:
    return ensure_tiny_av_models(tiny_dir())


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, model_urls: dict[str, str], av_models: TinyAVModels
) -> Iterator[BentoServer]:
    """The video Embedder, then Search calling it; both reach the session's media store."""
    embedder_gen = serve_bento(
        tmp_path_factory.mktemp("video-embedder"),
        "service.embedder:Embedder",
        MMSEARCH_EMBEDDER_MODEL=str(av_models.video_embedder),
        MMSEARCH_MEDIA_URI=model_urls["MMSEARCH_MEDIA_URI"],
    )
    embedder = next(embedder_gen)
    try:
        yield from serve_wired_search(
            tmp_path_factory.mktemp("av-search"), model_urls, MMSEARCH_EMBEDDER_URL=embedder.url
        )
    finally:
        next(embedder_gen, None)


def post(server: BentoServer, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, timeout=180)


def search(server: BentoServer, query: Any, **kw: Any) -> dict[str, Any]:
    r = post(server, "/search", {"collection": COLL, "query": query, "top_k": 10, "rerank": False, **kw})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_query_made_of_one_segment_finds_that_segment_and_delete_removes_all(stack: BentoServer) -> None:
    r = post(stack, "/upsert", {"collection": COLL, "documents": [{"id": "film", "video": uri(FILM)}]})
    assert r.status_code == 200, r.text
    digest = hashlib.sha256(FILM).hexdigest()
    doc = post(stack, "/get", {"collection": COLL, "ids": ["film"]}).json()["documents"][0]
    assert (doc["video"], doc["segments"], doc["duration"], doc["modality"]) == (
        f"media://{digest}.mp4",
        8,
        60,
        "video",
    )
    counts = {c["name"]: c["count"] for c in post(stack, "/collections", {}).json()["collections"]}
    assert counts[COLL] == 1

    for t0, t1 in [(24, 34), (48, 58), (0, 10)]:
        query = make_clip(lambda t, t0=t0: colour_at(t + t0), t1 - t0)
        hits = search(stack, {"video": uri(query)})["hits"]
        assert [h["id"] for h in hits] == ["film"]  # grouped: the document once, at its best segment
        assert (hits[0]["t0"], hits[0]["t1"]) == (t0, t1), hits[0]
        every = search(stack, {"video": uri(query)}, segments="all")["hits"]
        assert len(every) == 8 and (every[0]["t0"], every[0]["t1"]) == (t0, t1)
        assert sorted((h["t0"], h["t1"]) for h in every) == WINDOWS

    # the segment's keyframe preview and the clip itself are served from Search's own copy
    thumb = httpx.get(f"{stack.url}{hits[0]['thumbnail']}", timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert hits[0]["thumbnail"] == f"/media/{digest}.t0.thumb.jpeg"
    stored = httpx.get(f"{stack.url}/media/{digest}.mp4", timeout=30)
    assert stored.status_code == 200 and stored.content == FILM and stored.headers["content-type"] == "video/mp4"

    r = post(stack, "/delete", {"collection": COLL, "ids": ["film"]})
    assert r.json()["deleted"] == 1
    assert search(stack, {"video": uri(make_clip(colour_at, 10.0))}, segments="all")["hits"] == []
    assert post(stack, "/get", {"collection": COLL, "ids": ["film"]}).json()["documents"] == []


def test_audio_documents_are_refused_naming_the_embedders_modalities(stack: BentoServer) -> None:
    wav = "data:audio/wav;base64," + base64.b64encode(b"RIFF" + b"\x00" * 40).decode()
    r = post(stack, "/upsert", {"collection": COLL, "documents": [{"id": "a", "text": "x"}, {"id": "v", "audio": wav}]})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "unsupported_modality" and body["field"] == "documents[1].audio"
    assert "video" in body["error"] and "audio" in body["error"]
