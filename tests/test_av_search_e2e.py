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
import json
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from bench.support.avclips import COLOURS
from bench.support.browser import PageSession
from bench.support.servers import BentoServer, tiny_dir
from service.tiny import TinyAVModels, ensure_tiny_av_models
from tests.conftest import serve_bento, serve_wired_search
from tests.test_eval_e2e import mmsearch

pytestmark = pytest.mark.e2e
BLOCK_S = 7.5
"""Seconds each colour is shown in the film: a window's colours and their shares tell it from every other."""
COLL = "films"


def colour_at(t: float) -> tuple[int, int, int]:
    return COLOURS[int(t / BLOCK_S + 1e-6) % len(COLOURS)]


def make_clip(
    colour: Callable[[float], tuple[int, int, int]],
    seconds: float,
    rate: int = 2,
    container: tuple[str, str] = ("mp4", "libx264"),
) -> bytes:
    """An H.264 MP4 (or ``container``: format and encoder) of solid frames, 64x48 at ``rate`` fps, whose colour at
    ``t`` s is ``colour(t)``."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container[0]) as out:
        stream = out.add_stream(container[1], rate=rate)
        assert isinstance(stream, av.VideoStream)
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


def test_reindex_copies_a_segmented_film_which_the_target_cuts_into_the_same_segments(stack: BentoServer) -> None:
    """``mmsearch reindex`` of a collection holding a 60 s film and a text, one id per page: ``/ids`` lists the
    two documents (not the film's seven continuation rows), ``/get`` names the film's whole stored clip, and the
    target (same model) cuts it into the same 8 windows: ``/get``, counts and the hits of a one-window query over
    every segment are the source's."""
    film = make_clip(lambda t: colour_at(t + BLOCK_S), 60.0)  # not the other tests' film: no shared stored clip
    docs = [{"id": "film", "video": uri(film), "metadata": {"k": 1}}, {"id": "note", "text": "a coloured film"}]
    r = post(stack, "/upsert", {"collection": "reel", "documents": docs})
    assert r.status_code == 200, r.text
    first = post(stack, "/ids", {"collection": "reel", "limit": 1}).json()
    assert (first["ids"], first["next"]) == (["film"], "film")
    last = post(stack, "/ids", {"collection": "reel", "after": "film", "limit": 1}).json()
    assert (last["ids"], last["next"]) == (["note"], None)
    cols = {c["name"]: c for c in post(stack, "/collections", {}).json()["collections"]}
    argv = ["reindex", "reel", "--model", cols["reel"]["model"], "--into", "reel_copy", "--batch-size", "1", "--json"]
    res = mmsearch(*argv, url=stack.url, timeout=300)
    assert res.returncode == 0, res.stderr + res.stdout
    assert (json.loads(res.stdout)["copied"], json.loads(res.stdout)["skipped"]) == (2, [])

    got = {c: post(stack, "/get", {"collection": c, "ids": ["film", "note"]}).json() for c in ("reel", "reel_copy")}
    assert got["reel_copy"]["documents"] == got["reel"]["documents"]
    stored = got["reel"]["documents"][0]
    assert (stored["video"], stored["segments"], stored["duration"]) == (
        f"media://{hashlib.sha256(film).hexdigest()}.mp4",
        8,
        60,
    )
    cols = {c["name"]: c for c in post(stack, "/collections", {}).json()["collections"]}
    assert cols["reel_copy"]["count"] == cols["reel"]["count"] == 2

    query = {"video": uri(make_clip(lambda t: colour_at(t + BLOCK_S + 24), 10.0))}
    hits = {}
    for c in ("reel", "reel_copy"):
        body = {"collection": c, "query": query, "top_k": 20, "rerank": False, "segments": "all", "mode": "vector"}
        r = post(stack, "/search", body)
        assert r.status_code == 200, r.text
        hits[c] = sorted((h["id"], h["t0"], h["t1"], h["video"], h["score"]) for h in r.json()["hits"])
    assert [(h[1], h[2]) for h in hits["reel_copy"] if h[0] == "film"] == WINDOWS
    assert [h[:4] for h in hits["reel_copy"]] == [h[:4] for h in hits["reel"]]
    assert [h[4] for h in hits["reel_copy"]] == pytest.approx([h[4] for h in hits["reel"]], abs=1e-4)
    for c in ("reel_copy", "reel"):
        assert post(stack, "/drop", {"collection": c}).status_code == 200


def test_audio_documents_are_refused_naming_the_embedders_modalities(stack: BentoServer) -> None:
    wav = "data:audio/wav;base64," + base64.b64encode(b"RIFF" + b"\x00" * 40).decode()
    r = post(stack, "/upsert", {"collection": COLL, "documents": [{"id": "a", "text": "x"}, {"id": "v", "audio": wav}]})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "unsupported_modality" and body["field"] == "documents[1].audio"
    assert "video" in body["error"] and "audio" in body["error"]


def test_uploads_through_search_reach_the_embedder_as_their_data_uris(stack: BentoServer) -> None:
    """Search's ``/upload/encode`` hands an uploaded clip to the Embedder inline: the vector of its data URI; the
    Embedder's refusal names the upload's field (``audio[0]``), not the JSON call's ``inputs[0].audio``."""
    clip = make_clip(colour_at, 2.0)
    files = [("video", ("c.mp4", clip, "video/mp4; codecs=avc1"))]
    r = httpx.post(f"{stack.url}/upload/encode", files=files, data={"text": "colours"}, timeout=180)
    assert r.status_code == 200, r.text
    want = post(stack, "/encode", {"inputs": [{"text": "colours", "video": uri(clip)}]})
    assert want.status_code == 200, want.text
    assert np.abs(np.asarray(r.json()["embeddings"]) - np.asarray(want.json()["embeddings"])).max() <= 1e-5
    files = [("audio", ("a.wav", b"RIFF" + b"\x00" * 40, "audio/wav"))]
    r = httpx.post(f"{stack.url}/upload/encode", files=files, timeout=60)
    body = r.json()
    assert (r.status_code, body["code"], body["field"]) == (422, "unsupported_modality", "audio[0]"), r.text
    assert "(supported: text, image, video" in body["error"]


def clock(t: float) -> str:
    return f"{int(t) // 60}:{int(t) % 60:02d}"


def test_the_page_plays_a_video_hit_from_its_segment(stack: BentoServer, browser: Any) -> None:
    """The search page in a real headless Chromium (this module's Search is the suite's one with a video embedder;
    the page's own tests run on the image model). A VP8 WebM (Chromium has no H.264 of its own) is indexed through
    Search and found by text on the page: its card says the best segment's span, and its play button fetches the
    stored clip from Search's /media/ and plays it from the hit's ``t0`` (media fragment), the segment's keyframe
    thumbnail as the poster. Which segment a text query picks is the tiny model's business: the card must show the
    one the response names."""
    expect = pytest.importorskip("playwright.sync_api").expect  # the test extra pins it; not needed above
    film = make_clip(colour_at, 60.0, container=("webm", "libvpx"))
    digest = hashlib.sha256(film).hexdigest()
    doc = {"id": "film-webm", "video": "data:video/webm;base64," + base64.b64encode(film).decode()}
    r = post(stack, "/upsert", {"collection": "page", "documents": [doc]})
    assert r.status_code == 200, r.text

    session = PageSession(browser, stack.url, None)
    try:
        page = session.open()
        page.select_option("#collection", "page")
        page.uncheck("#rerank")
        session.search("a coloured screen")
        hit = session.last_search_response()["hits"][0]
        assert hit["id"] == "film-webm" and hit["video"] == f"media://{digest}.webm", hit
        t0, t1 = hit["t0"], hit["t1"]
        assert t0 > 0, hit  # the seeded tiny model's best window here is a later one: playing from 0:00 would fail
        card = page.locator('.card[data-id="film-webm"]')
        expect(card.locator(".player .span")).to_have_text(f"Segment {clock(t0)}\u2013{clock(t1)}")
        session.check("video-hit")

        card.locator(".player .play").click()
        video = card.locator(".player video")
        expect(video).to_have_attribute("data-src", f"/media/{digest}.webm")
        src, poster = video.evaluate("v => [v.src, v.poster]")
        assert src.startswith(f"blob:{stack.url}/") and src.endswith(f"#t={t0:g},{t1:g}"), src
        assert poster.startswith(f"blob:{stack.url}/"), poster
        page.wait_for_function("v => v.readyState >= 1 && !v.seeking", arg=video.element_handle(), timeout=30_000)
        assert video.evaluate("v => v.error") is None
        start = video.evaluate("v => v.currentTime")
        assert t0 <= start + 0.01 and start < t1, (start, t0, t1)  # at the segment, not at 0:00
        expect(card.locator(".thumb")).to_be_hidden()  # the player shows the keyframe in its place

        media = {r.url.removeprefix(stack.url): r.response() for r in session.requests if "/media/" in r.url}
        clip = media[f"/media/{digest}.webm"]  # the stored clip, from Search
        assert (clip.status, clip.headers["content-type"]) == (200, "video/webm")
        assert int(clip.headers["content-length"]) == len(film)
        assert httpx.get(f"{stack.url}/media/{digest}.webm", timeout=30).content == film
        assert media[hit["thumbnail"]].status == 200
        session.check("video-player")
    finally:
        session.close()


def solid(colour: tuple[int, int, int]) -> Callable[[float], tuple[int, int, int]]:
    return lambda _t: colour


def write_av_evalset(root: Path) -> Path:
    """A dataset judging text->text, text->video, video->video, text->audio and audio->audio: four one-colour 4 s
    videos (each a video query too: the same file), two texts, a WAV tone (and its query)."""
    (root / "media").mkdir(parents=True)
    corpus: list[dict[str, Any]] = [{"_id": "note", "text": "meeting notes"}, {"_id": "memo", "text": "a memo"}]
    queries: list[dict[str, Any]] = [{"_id": "q-note", "text": "notes of the meeting"}]
    qrels = ["q-note\tnote\t1"]
    for k, colour in enumerate(COLOURS[:4]):
        (root / "media" / f"v{k}.mp4").write_bytes(make_clip(solid(colour), 4.0))
        corpus.append({"_id": f"v{k}", "video": f"media/v{k}.mp4"})
        queries += [{"_id": f"qv{k}", "video": f"media/v{k}.mp4"}, {"_id": f"qt{k}", "text": f"colour {k}"}]
        qrels += [f"qv{k}\tv{k}\t1", f"qt{k}\tv{k}\t1"]
    with wave.open(str(root / "media" / "tone.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(16000) * 0.1) * 8000).astype("<i2").tobytes())
    corpus.append({"_id": "tone", "audio": "media/tone.wav"})
    queries += [{"_id": "qa", "audio": "media/tone.wav"}, {"_id": "qa-text", "text": "a tone"}]
    qrels += ["qa\ttone\t1", "qa-text\ttone\t1"]
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "qrels.tsv").write_text("\n".join(qrels) + "\n")
    return root


def test_eval_reports_the_video_pairs_and_skips_the_audio_ones(stack: BentoServer, tmp_path: Path) -> None:
    """``mmsearch eval`` against the video embedder (video, text and their pair; no audio): the pairs with video are
    measured, those with audio are skipped, each named with what the model lacks."""
    dataset = write_av_evalset(tmp_path / "avset")
    out = tmp_path / "run.json"
    res = mmsearch("eval", str(dataset), "--json", str(out), "--no-progress", url=stack.url, timeout=300)
    assert res.returncode == 0, res.stderr + res.stdout
    report = json.loads(out.read_text())
    reason = "the model does not embed audio"
    assert report["modality_pairs"]["evaluated"] == ["text->text", "text->video", "video->video"]
    assert report["modality_pairs"]["skipped"] == {"audio->audio": reason, "text->audio": reason}
    assert "video" in report["modality_pairs"]["supported"] and "audio" not in report["modality_pairs"]["supported"]
    assert report["skipped"]["documents"] == {"audio": 1} and report["skipped"]["queries"] == {"audio": 1}
    assert report["ingest"]["upserted"] == 6 and report["ingest"]["failed"] == 0
    for run in report["runs"].values():
        assert run["errors"] == 0
        assert set(run["by_pair"]) == {"text->text", "text->video", "video->video"}
        assert run["by_pair"]["text->video"]["queries"] == 4
    # the same clip as query and document: the same vector, rank 1 for any model, when not reranked
    assert report["runs"]["rerank_off"]["by_pair"]["video->video"]["metrics"]["recall@1"] == 1.0
    header = res.stdout.split("Retrieval quality")[0]
    assert "modality pairs evaluated: text->text, text->video, video->video" in header
    assert f"modality pair skipped: text->audio ({reason})" in header
    assert f"skipping pairs audio->audio: {reason}; text->audio: {reason}" in res.stderr
