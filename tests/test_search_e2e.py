"""End-to-end tests of the composed Search bento (Search + Embedder + Reranker, real processes on loopback)."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid

import httpx
import numpy as np
import pytest

from bench.support.images import data_uri, make_image
from bench.support.metrics import metric_sum
from bench.support.servers import BentoServer, StaticServer
from tests.support.stages import model_ms

pytestmark = pytest.mark.e2e


def post(server: BentoServer, route: str, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, timeout=timeout)


def ok(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    return resp.json()


def fresh() -> str:
    return "c_" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def corpus(search_server: BentoServer, image_server: StaticServer) -> tuple[str, list[dict]]:
    """20 image documents by URL, 5 inline images, 10 text documents, with metadata."""
    coll = fresh()
    docs: list[dict] = []
    for i in range(20):
        docs.append(
            {
                "id": f"img{i}",
                "image": f"{image_server.url}/img{i}.png",
                "metadata": {"kind": "image", "n": i, "tag": "even" if i % 2 == 0 else "odd"},
            }
        )
    for i in range(5):
        docs.append(
            {"id": f"inline{i}", "image": data_uri(make_image(100 + i)), "metadata": {"kind": "inline", "n": 100 + i}}
        )
    for i in range(10):
        docs.append(
            {
                "id": f"txt{i}",
                "text": f"document number {i} about topic {'abcdefghij'[i]}",
                "metadata": {"kind": "text", "n": 200 + i},
            }
        )
    body = ok(post(search_server, "/upsert", {"collection": coll, "documents": docs}))
    assert body["upserted"] == len(docs)
    return coll, docs


def test_self_retrieval(search_server: BentoServer, corpus: tuple[str, list[dict]]) -> None:
    coll, docs = corpus
    for d in docs:
        query = {"text": d["text"]} if "text" in d else {"image": d["image"]}
        # vector mode: identical input gives an identical embedding (hybrid, the default for text, fuses scores)
        body = {"collection": coll, "query": query, "top_k": 3, "rerank": False, "mode": "vector"}
        res = ok(post(search_server, "/search", body))
        assert res["hits"][0]["id"] == d["id"], (d["id"], res["hits"][:2])
        assert res["hits"][0]["retrieval_score"] == pytest.approx(1.0, abs=1e-4)
        assert res["reranked"] is False and res["hits"][0]["rerank_score"] is None


def test_inline_image_stored_and_served(search_server: BentoServer, corpus: tuple[str, list[dict]]) -> None:
    coll, _ = corpus
    got = ok(post(search_server, "/get", {"collection": coll, "ids": ["inline0", "img0"]}))["documents"]
    assert [d["id"] for d in got] == ["inline0", "img0"]
    ref = got[0]["image"]
    assert re.fullmatch(r"media://[0-9a-f]{64}\.png", ref)
    served = httpx.get(f"{search_server.url}/media/{ref.removeprefix('media://')}", timeout=10)
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
    assert httpx.get(f"{search_server.url}/media/..%2F..%2Fetc%2Fpasswd", timeout=10).status_code == 404
    # a URL image is kept too: fetched once at ingest, the original URL kept as its source
    assert re.fullmatch(r"media://[0-9a-f]{64}\.png", got[1]["image"]) and got[1]["source"].startswith("http://127")


def _reranker_pairs(server: BentoServer) -> float:
    return metric_sum(server.url, "mmsearch_inputs_total", service="reranker")


def _timed_search(server: BentoServer, body: dict) -> tuple[dict, float, dict[str, float]]:
    """The response, the wall time the client measured around it (ms) and the model time each model service spent
    on it (ms)."""
    before = {s: model_ms(server.url, s) for s in ("embedder", "reranker")}
    t0 = time.perf_counter()
    resp = ok(post(server, "/search", body))
    wall_ms = (time.perf_counter() - t0) * 1000
    return resp, wall_ms, {s: model_ms(server.url, s) - before[s] for s in before}


def test_rerank_on_and_off(search_server: BentoServer, corpus: tuple[str, list[dict]]) -> None:
    coll, _ = corpus
    before = _reranker_pairs(search_server)
    on, wall_ms, spent = _timed_search(
        search_server, {"collection": coll, "query": "topic c", "top_k": 5, "candidates": 12, "rerank": True}
    )
    after = _reranker_pairs(search_server)
    assert after - before == 12  # the reranker saw exactly the shortlist, no more
    assert on["reranked"] is True and len(on["hits"]) == 5
    scores = [h["score"] for h in on["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert all(h["rerank_score"] == h["score"] for h in on["hits"])
    # Each stage's time encloses the model work done in it, measured independently by the model service's own
    # clock: the embed stage covers the Embedder's model call, the rerank stage the Reranker's; the whole search is
    # inside the client's wall time. A stage timed around the wrong code (or not at all) breaks one of these.
    t = on["timings_ms"]
    assert spent["embedder"] > 0 and spent["reranker"] > 0, spent  # both models did work here
    assert t["embed"] >= spent["embedder"], (t, spent)
    assert t["rerank"] >= spent["reranker"], (t, spent)
    assert t["retrieve"] > 0
    assert t["total"] <= wall_ms, (t, wall_ms)
    off, wall_ms, spent = _timed_search(
        search_server, {"collection": coll, "query": "topic c", "top_k": 5, "candidates": 12, "rerank": False}
    )
    assert off["reranked"] is False and spent["reranker"] == 0  # the Reranker's model was not called
    t = off["timings_ms"]
    assert t["embed"] >= spent["embedder"] > 0 and t["total"] <= wall_ms, (t, spent, wall_ms)
    assert t["rerank"] < 1.0  # a skipped stage: no call, only the bookkeeping between two clock reads
    retrieval = [h["retrieval_score"] for h in off["hits"]]
    assert retrieval == sorted(retrieval, reverse=True)
    # the reranked top 5 come from the same 12-candidate shortlist
    shortlist = ok(
        post(
            search_server,
            "/search",
            {"collection": coll, "query": "topic c", "top_k": 12, "candidates": 12, "rerank": False},
        )
    )
    assert {h["id"] for h in on["hits"]} <= {h["id"] for h in shortlist["hits"]}


def test_image_and_pair_queries(
    search_server: BentoServer, corpus: tuple[str, list[dict]], image_server: StaticServer
) -> None:
    coll, _ = corpus
    by_image = ok(
        post(
            search_server,
            "/search",
            {"collection": coll, "query": {"image": f"{image_server.url}/img3.png"}, "top_k": 3},
        )
    )
    assert by_image["reranked"] is True and len(by_image["hits"]) == 3
    # CLIP cannot embed text+image together: a clear 422 naming the field, not a 500
    pair = post(
        search_server, "/search", {"collection": coll, "query": {"text": "x", "image": f"{image_server.url}/img3.png"}}
    )
    assert pair.status_code == 422 and pair.json()["field"] == "query"


def test_filters_applied_inside_the_index(search_server: BentoServer, corpus: tuple[str, list[dict]]) -> None:
    coll, _ = corpus

    def ids(flt: dict, k: int = 10) -> set[str]:
        res = ok(
            post(
                search_server,
                "/search",
                {"collection": coll, "query": "document", "top_k": k, "candidates": k, "rerank": False, "filter": flt},
            )
        )
        return {h["id"] for h in res["hits"]}

    # only 5 inline docs exist; with k=1 a post-filter over the global top-1 would usually find none
    assert len(ids({"kind": "inline"}, k=1)) == 1
    assert ids({"kind": "inline"}) == {f"inline{i}" for i in range(5)}
    assert ids({"kind": {"$in": ["inline", "text"]}}, k=20) == {f"inline{i}" for i in range(5)} | {
        f"txt{i}" for i in range(10)
    }
    assert ids({"n": {"$gte": 3, "$lt": 6}}) == {"img3", "img4", "img5"}
    assert ids({"kind": "image", "tag": "odd", "n": {"$lte": 5}}) == {"img1", "img3", "img5"}
    bad = post(search_server, "/search", {"collection": coll, "query": "x", "filter": {"n": {"$regex": "x"}}})
    assert bad.status_code == 400 and bad.json()["field"] == "filter"
    bad_key = post(search_server, "/search", {"collection": coll, "query": "x", "filter": {"a b": 1}})
    assert bad_key.status_code == 400


def test_upsert_replace_get_delete(search_server: BentoServer) -> None:
    coll = fresh()
    ok(
        post(
            search_server,
            "/upsert",
            {
                "collection": coll,
                "documents": [{"id": "a", "text": "first version", "metadata": {"v": 1}}, {"id": "b", "text": "other"}],
            },
        )
    )
    ok(
        post(
            search_server,
            "/upsert",
            {"collection": coll, "documents": [{"id": "a", "text": "second version", "metadata": {"v": 2}}]},
        )
    )
    got = ok(
        post(search_server, "/get", {"collection": coll, "ids": ["a", "missing", "b"], "include_embedding": True})
    )["documents"]
    assert [d["id"] for d in got] == ["a", "b"]
    assert got[0]["text"] == "second version" and got[0]["metadata"] == {"v": 2}
    assert len(got[0]["embedding"]) == 16 and np.linalg.norm(got[0]["embedding"]) == pytest.approx(1, abs=1e-5)
    colls = {c["name"]: c for c in ok(post(search_server, "/collections", {}))["collections"]}
    assert colls[coll]["count"] == 2 and colls[coll]["dimension"] == 16
    assert colls[coll]["model"] == "mmsearch/tiny-random-clip"
    assert ok(post(search_server, "/delete", {"collection": coll, "ids": ["a", "zzz"]}))["deleted"] == 1
    assert ok(post(search_server, "/get", {"collection": coll, "ids": ["a"]}))["documents"] == []
    res = ok(post(search_server, "/search", {"collection": coll, "query": "second version", "rerank": False}))
    assert [h["id"] for h in res["hits"]] == ["b"]


def test_supplied_embeddings_and_errors(search_server: BentoServer) -> None:
    coll = fresh()
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3, 16))
    docs = [{"id": f"v{i}", "embedding": v.tolist()} for i, v in enumerate(vecs)]
    ok(post(search_server, "/upsert", {"collection": coll, "documents": docs}))
    wrong = post(search_server, "/upsert", {"collection": coll, "documents": [{"id": "x", "embedding": [0.1] * 8}]})
    assert wrong.status_code == 422 and wrong.json()["field"] == "documents[0].embedding"
    assert "16" in wrong.json()["error"]
    missing = post(search_server, "/search", {"collection": "does_not_exist", "query": "x"})
    assert missing.status_code == 404 and missing.json()["field"] == "collection"
    k_gt = post(search_server, "/search", {"collection": coll, "query": "x", "top_k": 20, "candidates": 10})
    # the shortlist is raised to top_k (client and CLI send it as is): every document of the collection comes back
    assert k_gt.status_code == 200 and len(k_gt.json()["hits"]) == 3, k_gt.text
    bad_name = post(search_server, "/upsert", {"collection": "no spaces!", "documents": [{"id": "x", "text": "y"}]})
    assert bad_name.status_code == 400 and "collection" in bad_name.text
    dup = post(
        search_server,
        "/upsert",
        {"collection": coll, "documents": [{"id": "d", "text": "1"}, {"id": "d", "text": "2"}]},
    )
    assert dup.status_code == 400
    bad_img = post(
        search_server,
        "/upsert",
        {
            "collection": coll,
            "documents": [{"id": "ok", "text": "fine"}, {"id": "evil", "image": "http://169.254.169.254/latest"}],
        },
    )
    assert bad_img.status_code == 400 and bad_img.json()["field"] == "documents[1].image"
    assert ok(post(search_server, "/get", {"collection": coll, "ids": ["ok", "evil"]}))["documents"] == []
    # embedding-only documents can't be reranked: they keep their retrieval order after reranked hits
    res = ok(post(search_server, "/search", {"collection": coll, "query": "anything", "top_k": 3, "candidates": 3}))
    assert len(res["hits"]) == 3 and all(h["rerank_score"] is None for h in res["hits"])


def test_proxied_encode_and_rerank(search_server: BentoServer) -> None:
    enc = ok(post(search_server, "/encode", {"inputs": ["hello"], "input_type": "query"}))
    assert enc["dimensions"] == 16
    bad = post(search_server, "/encode", {"inputs": [{"image": "file:///etc/passwd"}]})
    assert bad.status_code == 400 and bad.json()["field"] == "inputs[0].image"
    rr = ok(post(search_server, "/rerank", {"query": "q", "documents": ["a", "b"], "top_n": 1}))
    assert len(rr["results"]) == 1


def test_burst_of_200_concurrent_searches(search_server: BentoServer, corpus: tuple[str, list[dict]]) -> None:
    coll, _ = corpus

    async def go() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=search_server.url, timeout=120, limits=limits) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        "/search", json={"collection": coll, "query": f"topic {i % 10}", "top_k": 3, "candidates": 8}
                    )
                    for i in range(200)
                )
            )

    responses = asyncio.run(go())
    codes = [r.status_code for r in responses]
    errors = [r.json().get("code") for r in responses if r.status_code != 200]
    assert codes.count(200) == 200, ({c: codes.count(c) for c in set(codes)}, errors)
    assert all(r.json()["reranked"] for r in responses)


def test_supplied_embedding_with_inline_image_is_still_validated(search_server: BentoServer) -> None:
    coll = fresh()
    vec = [1.0] + [0.0] * 15
    svg = "data:image/svg+xml;base64," + base64.b64encode(b"<svg onload='alert(1)'/>").decode()
    bad = post(
        search_server, "/upsert", {"collection": coll, "documents": [{"id": "s", "embedding": vec, "image": svg}]}
    )
    assert bad.status_code == 422 and bad.json()["field"] == "documents[0].image", bad.text
    jpeg_as_png = "data:image/png;base64," + base64.b64encode(_jpeg_bytes()).decode()
    ok(
        post(
            search_server,
            "/upsert",
            {"collection": coll, "documents": [{"id": "j", "embedding": vec, "image": jpeg_as_png}]},
        )
    )
    stored = ok(post(search_server, "/get", {"collection": coll, "ids": ["j"]}))["documents"][0]["image"]
    assert stored.endswith(".jpeg")  # named by what the bytes are, not by the declared type


def _jpeg_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    make_image(3).save(buf, format="JPEG")
    return buf.getvalue()
