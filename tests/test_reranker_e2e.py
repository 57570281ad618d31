"""End-to-end tests of the Reranker bento (real `bentoml serve`, tiny profile) over loopback HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from bench.support.images import data_uri, decode, make_image, png_bytes
from bench.support.servers import BentoServer, StaticServer
from tests.support.batched import singles_behind_bulk
from tests.test_embedder_e2e import run_hostile_battery

pytestmark = pytest.mark.e2e
TOL = 1e-5


@pytest.fixture(scope="module")
def vlm_ce(tiny_models) -> CrossEncoder:  # type: ignore[no-untyped-def]
    return CrossEncoder(str(tiny_models.vlm_reranker), device="cpu")


def rerank(server: BentoServer, body: dict, route: str = "/rerank") -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, timeout=60)


def test_parity_across_modality_pairs(
    reranker_server: BentoServer, vlm_ce: CrossEncoder, image_server: StaticServer, image_dir: Path
) -> None:
    img_bytes = (image_dir / "img5.png").read_bytes()
    img = decode(img_bytes)
    url = f"{image_server.url}/img5.png"
    other = make_image(11)
    cases = [
        # (wire query, wire documents, in-process query, in-process documents)
        (
            "a bar chart",
            ["sales by month", "a cat photo"],
            {"text": "a bar chart"},
            [{"text": "sales by month"}, {"text": "a cat photo"}],
        ),
        (
            "a bar chart",
            [{"image": url}, {"image": data_uri(other)}],
            {"text": "a bar chart"},
            [img, decode(png_bytes(other))],
        ),
        ({"image": url}, ["dashboard", "slide"], img, [{"text": "dashboard"}, {"text": "slide"}]),
        ("revenue", [{"text": "Q3 slide", "image": url}], {"text": "revenue"}, [{"text": "Q3 slide", "image": img}]),
    ]
    for q, docs, lq, ldocs in cases:
        r = rerank(reranker_server, {"query": q, "documents": docs})
        assert r.status_code == 200, r.text
        got = {res["index"]: res["relevance_score"] for res in r.json()["results"]}
        want = vlm_ce.predict([(lq, d) for d in ldocs], convert_to_numpy=True)
        assert np.abs(np.asarray([got[i] for i in range(len(docs))]) - want).max() <= TOL, (q, docs)
        scores = [res["relevance_score"] for res in r.json()["results"]]
        assert scores == sorted(scores, reverse=True)


def test_top_n_return_documents_and_empty(reranker_server: BentoServer) -> None:
    docs = ["one", {"text": "two"}, "three", "four"]
    r = rerank(reranker_server, {"query": "q", "documents": docs, "top_n": 2, "return_documents": True})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 2
    for item in res:
        assert item["document"]["text"] == ["one", "two", "three", "four"][item["index"]]
    no_docs = rerank(reranker_server, {"query": "q", "documents": []})
    assert no_docs.status_code == 200 and no_docs.json()["results"] == []
    plain = rerank(reranker_server, {"query": "q", "documents": ["a"]}).json()["results"][0]
    assert plain.get("document") is None
    too_many = rerank(reranker_server, {"query": "q", "documents": ["d"] * 257})
    assert too_many.status_code == 413 and "256" in too_many.json()["error"]
    assert too_many.json()["field"] == "documents"
    bad_top_n = rerank(reranker_server, {"query": "q", "documents": ["a"], "top_n": 0})
    assert bad_top_n.status_code == 400 and "top_n" in bad_top_n.text


def test_cohere_compatible_route(reranker_server: BentoServer, vlm_ce: CrossEncoder) -> None:
    docs = ["alpha", {"text": "beta"}]
    r = rerank(reranker_server, {"model": "x", "query": "greek", "documents": docs, "top_n": 1}, "/v1/rerank")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] and len(body["results"]) == 1
    want = vlm_ce.predict([({"text": "greek"}, {"text": "alpha"}), ({"text": "greek"}, {"text": "beta"})])
    assert abs(body["results"][0]["relevance_score"] - float(np.max(want))) <= TOL


def test_text_cross_encoder(text_reranker_server: BentoServer, tiny_models) -> None:  # type: ignore[no-untyped-def]
    ce = CrossEncoder(str(tiny_models.text_reranker), device="cpu")
    r = rerank(text_reranker_server, {"query": "hello", "documents": ["hello world", "goodbye"]})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    want = ce.predict([("hello", "hello world"), ("hello", "goodbye")])
    assert np.abs(np.asarray([got[0], got[1]]) - want).max() <= TOL
    img = rerank(text_reranker_server, {"query": "hello", "documents": ["x", {"image": data_uri(make_image(2))}]})
    assert img.status_code == 422
    assert img.json()["field"] == "documents[1]" and "supported: text" in img.json()["error"]
    img_q = rerank(text_reranker_server, {"query": {"image": data_uri(make_image(2))}, "documents": ["x"]})
    assert img_q.status_code == 422 and img_q.json()["field"] == "query"


MAX_BATCH = 32  # the session Reranker's MMSEARCH_MAX_BATCH_SIZE (the default)


def test_concurrent_requests_share_batches(reranker_server: BentoServer, vlm_ce: CrossEncoder) -> None:
    """24 requests of 3 pairs waiting together share model calls: 3 calls (30 + 30 + 12 pairs; a batch holds
    whole requests where they fit, so 10 of 3 pairs go in a batch of 32), not 24.

    They wait behind a bulk of 4 x 256 pairs in the same lane (``tests.support.batched``), whose 32 calls are all
    full: the lane runs exactly 32 + 3 calls."""
    queries = [f"query {i}" for i in range(24)]
    docs = ["doc a", "doc b", "doc c"]
    bulk = [{"query": f"bulk {r}", "documents": [f"bulk doc {i}" for i in range(256)]} for r in range(4)]
    run = singles_behind_bulk(
        reranker_server.url,
        "/rerank",
        bulk,
        [{"query": q, "documents": docs} for q in queries],
        "reranker",
        "text/text",
        MAX_BATCH,
    )
    responses = run.singles
    assert all(r.status_code == 200 for r in [*run.bulk, *responses])
    calls, pairs = run.calls, run.inputs
    assert pairs == 4 * 256 + 24 * 3
    assert calls == 4 * 256 / MAX_BATCH + 3, f"{calls:.0f} model calls for {pairs:.0f} pairs"
    for q, r in zip(queries, responses, strict=True):
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        want = vlm_ce.predict([({"text": q}, {"text": d}) for d in docs])
        assert np.abs(np.asarray([got[i] for i in range(3)]) - want).max() <= TOL


def test_hostile_inputs_are_refused(reranker_server: BentoServer) -> None:
    run_hostile_battery(
        reranker_server.url,
        "/rerank",
        lambda img: {"query": "q", "documents": ["ok", {"image": img}]},
        "documents[1].image",
    )
    run_hostile_battery(
        reranker_server.url, "/rerank", lambda img: {"query": {"image": img}, "documents": ["ok"]}, "query.image"
    )


def test_audio_and_video_are_refused_naming_the_modalities(reranker_server: BentoServer) -> None:
    """Reranking audio/video is not wired yet (issue #21): a 422 naming what the reranker takes, before any fetch."""
    info = httpx.post(f"{reranker_server.url}/info", json={}, timeout=10).json()
    for body, field in [
        ({"query": "q", "documents": ["ok", {"video": "http://127.0.0.1:9/clip.mp4"}]}, "documents[1]"),
        ({"query": {"text": "q", "audio": "data:audio/wav;base64,UklGRg=="}, "documents": ["ok"]}, "query"),
    ]:
        r = rerank(reranker_server, body)
        assert r.status_code == 422, r.text
        assert (r.json()["code"], r.json()["field"]) == ("unsupported_modality", field)
        assert f"(supported: {', '.join(info['modalities'])})" in r.json()["error"]
