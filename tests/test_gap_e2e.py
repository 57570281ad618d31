"""The modality gap on a real Search bento (issue #22 acceptance): a mixed collection whose documents bring their
own embeddings, every image vector shifted by one constant offset (``mmsearch_client.eval.gap``). Raw retrieval's
top-10 for a text query holds no image; balanced retrieval (the default) puts the relevant image there."""

from __future__ import annotations

import random
import uuid

import httpx
import pytest
from mmsearch_client.eval.gap import construct_gap, unit

from bench.support.images import data_uri, make_image
from bench.support.servers import BentoServer

pytestmark = pytest.mark.e2e
QUERY = "a red bicycle leaning on a wall"
TEXTS = 40
IMAGES = 12
OFFSET = 3.0


def post(server: BentoServer, route: str, body: dict) -> dict:
    resp = httpx.post(f"{server.url}{route}", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def near(rng: random.Random, v: list[float], spread: float) -> list[float]:
    return unit([x + rng.gauss(0, spread) for x in v])


@pytest.fixture(scope="module")
def gapped(search_server: BentoServer) -> tuple[str, list[float]]:
    """``text_rel`` and ``image_rel`` lie near the query; the rest are random; every image is shifted."""
    rng = random.Random(7)
    q = post(search_server, "/encode", {"inputs": [QUERY], "input_type": "query"})["embeddings"][0]
    dim = len(q)
    vectors = [near(rng, q, 0.15)] + [unit([rng.gauss(0, 1) for _ in range(dim)]) for _ in range(TEXTS - 1)]
    vectors += [near(rng, q, 0.15)] + [unit([rng.gauss(0, 1) for _ in range(dim)]) for _ in range(IMAGES - 1)]
    shifted = [False] * TEXTS + [True] * IMAGES
    # The image cone lies away from the text query (as CLIP's does): the offset has a component against it.
    r = [rng.gauss(0, 1) for _ in range(dim)]
    r = unit([a - sum(x * y for x, y in zip(r, q, strict=True)) * b for a, b in zip(r, q, strict=True)])
    direction = [a - 0.5 * b for a, b in zip(r, q, strict=True)]
    vectors = construct_gap(vectors, shifted, offset=OFFSET, seed=3, direction=direction)
    docs = [
        {"id": "text_rel" if i == 0 else f"text{i}", "text": f"text document {i}", "embedding": vectors[i]}
        for i in range(TEXTS)
    ]
    docs += [
        {"id": "image_rel" if j == 0 else f"image{j}", "image": data_uri(make_image(300 + j)), "embedding": v}
        for j, v in enumerate(vectors[TEXTS:])
    ]
    coll = "gap_" + uuid.uuid4().hex[:10]
    post(search_server, "/upsert", {"collection": coll, "documents": docs})
    return coll, q


def search(server: BentoServer, coll: str, **kw: object) -> dict:
    return post(server, "/search", {"collection": coll, "query": QUERY, "top_k": 10, "rerank": False, **kw})


def test_raw_top10_for_a_text_query_holds_no_image_document(search_server: BentoServer, gapped: tuple) -> None:
    coll, _ = gapped
    body = search(search_server, coll, balance="off")
    assert body["balanced"] is False
    assert [h["modality"] for h in body["hits"]] == ["text"] * 10
    assert body["hits"][0]["id"] == "text_rel"
    assert all(h["fused_score"] is None for h in body["hits"])


def test_balanced_retrieval_puts_the_relevant_image_in_the_top10(search_server: BentoServer, gapped: tuple) -> None:
    coll, q = gapped
    body = search(search_server, coll, mode="vector")  # balance "auto" is the default
    assert body["balanced"] is True
    ids = [h["id"] for h in body["hits"]]
    assert "image_rel" in ids and "text_rel" in ids
    image = next(h for h in body["hits"] if h["id"] == "image_rel")
    assert image["modality"] == "image"
    raw = sum(a * b for a, b in zip(q, unit(image_vector(search_server, coll)), strict=True))
    assert image["score"] == pytest.approx(raw, abs=1e-4)  # the raw cosine is kept
    assert image["vector_score"] == image["score"] and image["fused_score"] > image["score"]
    fused = [h["fused_score"] for h in body["hits"]]
    assert fused == sorted(fused, reverse=True)  # ordered on the shared scale


def test_hybrid_meets_one_balanced_vector_list(search_server: BentoServer, gapped: tuple) -> None:
    """Hybrid (the default for a text query here): the keyword side meets the balanced list, each document once."""
    coll, q = gapped
    body = search(search_server, coll)
    assert body["mode"] == "hybrid" and body["balanced"] is True
    ids = [h["id"] for h in body["hits"]]
    assert len(ids) == len(set(ids)) and "image_rel" in ids
    image = next(h for h in body["hits"] if h["id"] == "image_rel")
    raw = sum(a * b for a, b in zip(q, unit(image_vector(search_server, coll)), strict=True))
    assert image["vector_score"] == pytest.approx(raw, abs=1e-4)


def image_vector(server: BentoServer, coll: str) -> list[float]:
    got = post(server, "/get", {"collection": coll, "ids": ["image_rel"], "include_embedding": True})
    return got["documents"][0]["embedding"]


def test_balanced_draws_keep_the_filters_and_a_minimum_share(search_server: BentoServer, gapped: tuple) -> None:
    coll, _ = gapped
    body = search(search_server, coll, candidates=20, top_k=20)
    modalities = [h["modality"] for h in body["hits"]]
    assert modalities.count("image") >= 4  # 20% of the shortlist at least
    only = search(search_server, coll, filter={"$modality": "image"})
    assert only["balanced"] is False and {h["modality"] for h in only["hits"]} == {"image"}
    assert only["hits"][0]["id"] == "image_rel"
    bad = httpx.post(
        f"{search_server.url}/search",
        json={"collection": coll, "query": QUERY, "filter": {"$modality": "hologram"}},
        timeout=60,
    )
    assert bad.status_code == 400 and "$modality" in bad.json()["error"]


def test_balanced_retrieval_feeds_the_reranker_the_relevant_image(search_server: BentoServer, gapped: tuple) -> None:
    coll, _ = gapped
    body = post(search_server, "/search", {"collection": coll, "query": QUERY, "top_k": 50, "rerank": "auto"})
    assert body["balanced"] is True
    hit = next(h for h in body["hits"] if h["id"] == "image_rel")
    assert hit["fused_score"] is not None
    if body["reranked"]:
        assert hit["rerank_score"] is not None
