"""The Reranker scoring text against video (issue #21): one real bento process on 127.0.0.1, tiny seeded models.

One Reranker hosts two models from an ``MMSEARCH_MODELS`` file: the tiny Qwen2-VL yes/no reranker whose chat template
renders video (the default) and the tiny text-only BERT cross-encoder. Clips are made here with PyAV and sent as data
URIs, a URL (a static server on loopback) and a ``media://`` reference (a media directory the Reranker reads). Served
scores are compared with in-process sentence-transformers ``CrossEncoder.predict`` on the arrays ``service.avmedia``
decodes from the same bytes (the form ``ModelInput.to_pair_st`` gives), each pair scored alone.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from bench.support import avclips
from bench.support.servers import BentoServer, StaticServer, tiny_dir
from service.avmedia import VideoSpec
from service.config import Settings
from service.inputs import ModelInput
from service.mediastore import MediaStore
from service.tiny import TinyAVModels, ensure_tiny_av_models
from tests.conftest import serve_bento
from tests.support import avhostile

pytestmark = pytest.mark.e2e
TOL = 1e-5
MP4 = avclips.video(3.0, colour_s=0.5)
WEBM = avclips.video(1.5, fmt="webm", codec="libvpx-vp9", size=(48, 32))
OTHER = avclips.video(2.0, colour_s=0.25, size=(32, 32))
VIDEO_MODALITIES = ["text", "image", "video", "text+image", "text+video"]


def uri(data: bytes, subtype: str = "mp4") -> str:
    return f"data:video/{subtype};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def av_models() -> TinyAVModels:
    return ensure_tiny_av_models(tiny_dir())


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rerank-media")


@pytest.fixture(scope="module")
def clip_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticServer]:
    root = tmp_path_factory.mktemp("rerank-clips")
    (root / "clip.webm").write_bytes(WEBM)
    with StaticServer(root).running() as srv:
        yield srv


@pytest.fixture(scope="module")
def reranker(
    tmp_path_factory: pytest.TempPathFactory, av_models: TinyAVModels, tiny_models: Any, media_dir: Path
) -> Iterator[BentoServer]:
    """The suite's one Reranker for video: the video reranker (default) beside the text-only cross-encoder."""
    models = tmp_path_factory.mktemp("rerank-repo") / "models.yaml"
    models.write_text(
        "embedders:\n"
        f"  clip: {{source: {tiny_models.clip}}}\n"
        "rerankers:\n"
        f"  video-rerank: {{source: {av_models.video_reranker}, default: true}}\n"
        f"  text-rerank: {{source: {tiny_models.text_reranker}}}\n"
    )
    yield from serve_bento(
        tmp_path_factory.mktemp("video-reranker"),
        "service.reranker:Reranker",
        MMSEARCH_MODELS=str(models),
        MMSEARCH_MEDIA_DIR=str(media_dir),
    )


@pytest.fixture(scope="module")
def local(av_models: TinyAVModels) -> CrossEncoder:
    return CrossEncoder(str(av_models.video_reranker), device="cpu")


def rerank(server: BentoServer, body: dict[str, Any], route: str = "/rerank") -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, timeout=120)


def _scores(body: dict[str, Any], n: int) -> np.ndarray:
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert sorted(got) == list(range(n))
    return np.asarray([got[i] for i in range(n)])


def _alone(model: CrossEncoder, pairs: list[tuple[Any, Any]]) -> np.ndarray:
    return np.asarray([float(model.predict([p])[0]) for p in pairs])


def test_text_against_video_scores_equal_in_process_cross_encoder(
    reranker: BentoServer, local: CrossEncoder, clip_server: StaticServer, media_dir: Path
) -> None:
    """A data URI, a URL, a ``media://`` reference, text+video and a text document in one request, on the three
    routes: each score is the in-process CrossEncoder's score of the decoded arrays alone."""
    ref = MediaStore(media_dir).put_clip(OTHER, "mp4")
    docs: list[Any] = [
        {"video": uri(MP4)},
        {"video": f"{clip_server.url}/clip.webm"},
        {"video": ref},
        {"text": "a caption", "video": uri(MP4)},
        "a text document",
        {"video": ref, "t0": 0.5, "t1": 1.5},  # a segment of the stored clip, as Search sends its candidates
    ]
    settings = Settings()
    mp4, webm, other = (VideoSpec().decode(x, settings) for x in (MP4, WEBM, OTHER))
    window = VideoSpec(window=(0.5, 1.5)).decode(OTHER, settings)
    assert (mp4.frames.shape[0], webm.frames.shape[0], other.frames.shape[0], window.frames.shape[0]) == (6, 3, 4, 2)
    local_docs = [
        ModelInput(video=mp4).to_pair_st(),
        ModelInput(video=webm).to_pair_st(),
        ModelInput(video=other).to_pair_st(),
        ModelInput(text="a caption", video=mp4).to_pair_st(),
        {"text": "a text document"},
        ModelInput(video=window).to_pair_st(),
    ]
    assert isinstance(local_docs[0], dict) and local_docs[0]["video"] is mp4.frames  # arrays, never a reference
    query = "a clip of changing colours"
    want = _alone(local, [({"text": query}, d) for d in local_docs])
    r = rerank(reranker, {"query": query, "documents": docs, "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "video-rerank"
    assert np.abs(_scores(body, len(docs)) - want).max() <= TOL
    assert [res["document"]["video"] for res in body["results"] if res["index"] == 2] == [ref]
    assert len(set(np.round(want, 6))) == len(docs), "the documents score apart: a mixed-up order would show"
    for route, extra in (("/v1/rerank", {"model": "video-rerank"}), ("/v2/rerank", {})):
        r = rerank(reranker, {"query": query, "documents": docs, **extra}, route)
        assert r.status_code == 200, (route, r.text)
        assert np.abs(_scores(r.json(), len(docs)) - want).max() <= TOL, route
    # a video query against text documents
    r = rerank(reranker, {"query": {"video": uri(MP4)}, "documents": ["red", "a clip"]})
    assert r.status_code == 200, r.text
    want = _alone(local, [(ModelInput(video=mp4).to_pair_st(), {"text": t}) for t in ("red", "a clip")])
    assert np.abs(_scores(r.json(), 2) - want).max() <= TOL


def test_info_lists_each_rerankers_modalities(reranker: BentoServer) -> None:
    info = httpx.post(f"{reranker.url}/info", json={}, timeout=10).json()
    assert info["modalities"] == VIDEO_MODALITIES
    by_name = {m["name"]: m for m in info["models"]}
    assert by_name["video-rerank"]["modalities"] == VIDEO_MODALITIES
    assert "video" in by_name["video-rerank"]["model_modalities"]  # as sentence-transformers reports them
    assert by_name["text-rerank"]["modalities"] == ["text"]


def test_a_text_only_reranker_refuses_video_naming_its_modalities(reranker: BentoServer) -> None:
    body = {"model": "text-rerank", "query": "q", "documents": ["a text", {"video": uri(MP4)}]}
    r = rerank(reranker, body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert (err["code"], err["field"]) == ("unsupported_modality", "documents[1]"), err
    said = "documents[1]: video inputs are not supported by model 'text-rerank' (supported: text)"
    assert said in err["error"]
    for route in ("/v1/rerank", "/v2/rerank"):  # Cohere's error shape: {"id", "message"}
        r = rerank(reranker, body, route)
        assert r.status_code == 422 and said in r.json()["message"], (route, r.text)
    # audio: not a modality of the video reranker either
    wav = "data:audio/wav;base64," + base64.b64encode(avclips.audio(0.5)).decode()
    r = rerank(reranker, {"query": "q", "documents": [{"audio": wav}]})
    assert r.status_code == 422 and r.json()["field"] == "documents[0]", r.text
    assert f"(supported: {', '.join(VIDEO_MODALITIES)})" in r.json()["error"]


HOSTILE = {
    "zero_length": (b"", "undecodable"),
    "random_bytes": (np.random.default_rng(1).bytes(64 * 1024), "undecodable"),
    "png_as_video": (avhostile.image("PNG"), "container_not_allowed"),
    "ffconcat_local_file": (b"ffconcat version 1.0\nfile '/etc/passwd'\n", "container_not_allowed"),
    "mp4_truncated": (avhostile.half(avclips.video(4.0)), "undecodable"),
    "webm_truncated": (avhostile.half(avclips.video(4.0, fmt="webm", codec="libvpx-vp9")), "truncated"),
    "mkv_declares_5_hours": (avhostile.mkv_duration(avclips.video(2.0, fmt="matroska"), 5 * 3600.0), "too_long"),
    "corrupt_h264": (avhostile.flip(avhostile.noisy_h264()), "corrupt"),
    "audio_only_as_video": (avclips.audio(1.0, fmt="mp4", codec="aac"), "no_video_stream"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_video_documents_are_a_4xx_naming_the_document(reranker: BentoServer, name: str) -> None:
    data, code = HOSTILE[name]
    body = {"query": "q", "documents": [{"video": uri(MP4)}, {"video": uri(data, "x-any")}]}
    r = rerank(reranker, body)
    err = r.json()
    assert (r.status_code, err["code"], err["field"]) == (avhostile.STATUS[code], code, "documents[1].video"), r.text
    assert rerank(reranker, {"query": "q", "documents": [{"video": uri(MP4)}]}).status_code == 200  # still serving


def test_video_count_limit(reranker: BentoServer) -> None:
    r = rerank(reranker, {"query": {"video": uri(OTHER)}, "documents": [{"video": uri(OTHER)}] * 8})
    assert r.status_code == 413 and r.json()["field"] == "documents", r.text
    assert "audio and video inputs" in r.json()["error"]
