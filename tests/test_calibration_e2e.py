"""Calibration on a real Search bento (issue #22 point 3): ``POST /calibrate`` fits a per-modality-pair map from
labelled queries and stores it with the collection; ``/search`` then applies it to ``min_score`` (and to the fused
order of a balanced search), and ``/collections`` says what the collection was calibrated on.

The collection has a constructed gap: documents bring their own embeddings, relevant ones spread around their
topic's query vector, and every image vector shifted by one constant offset (``mmsearch_client.eval.gap``). Raw
cosine is then a different scale for text and image documents, so one raw ``min_score`` keeps most relevant texts
and almost no relevant images; after calibration one ``min_score`` keeps the same share of both (within 10 points).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from mmsearch_client import AsyncClient, CalibrationQuery, Client, NotFoundError
from mmsearch_client.cli import main as cli_main
from mmsearch_client.eval.gap import construct_gap, unit

from bench.support.servers import BentoServer, bento_env

pytestmark = pytest.mark.e2e
TOPICS = [
    f"calibration topic {t}: {w}"
    for t, w in enumerate(
        ["harbour cranes", "violin lessons", "tax forms", "alpine lakes", "bread ovens", "chess openings"]
    )
]
PER_TOPIC = 8
"""Relevant documents per topic and modality."""
NOISE_DOCS = 40
"""Random (non-relevant) documents per modality."""
OFFSET = 2.0
TOLERANCE = 0.10


def post(server: BentoServer, route: str, body: dict, status: int = 200) -> dict:
    resp = httpx.post(f"{server.url}{route}", json=body, timeout=120)
    assert resp.status_code == status, resp.text
    return resp.json()


def near(rng: random.Random, v: list[float], spread: float) -> list[float]:
    return unit([x + rng.gauss(0, spread) for x in v])


@pytest.fixture(scope="module")
def gapped(search_server: BentoServer) -> dict[str, object]:
    return build_gapped(search_server)


def build_gapped(search_server: BentoServer) -> dict[str, object]:
    """Per topic, ``PER_TOPIC`` text and image documents near the topic query (relevant, at graded distances) and
    random documents of both modalities; every image vector shifted by ``OFFSET`` away from the queries."""
    rng = random.Random(11)
    queries = post(search_server, "/encode", {"inputs": TOPICS, "input_type": "query"})["embeddings"]
    dim = len(queries[0])
    vectors: list[list[float]] = []
    meta: list[tuple[str, str, int | None]] = []  # (id, modality, topic)
    for modality in ("text", "image"):
        for t, q in enumerate(queries):
            for i in range(PER_TOPIC):
                vectors.append(near(rng, q, 0.02 + 0.012 * i))  # graded: some close, some barely related
                meta.append((f"{modality}_t{t}_{i}", modality, t))
        for i in range(NOISE_DOCS):
            vectors.append(unit([rng.gauss(0, 1) for _ in range(dim)]))
            meta.append((f"{modality}_noise{i}", modality, None))
    mean_q = unit([sum(col) for col in zip(*queries, strict=True)])
    r = unit([rng.gauss(0, 1) for _ in range(dim)])
    direction = [a - 0.5 * b for a, b in zip(r, mean_q, strict=True)]  # the image cone lies away from the queries
    shifted = [m == "image" for _, m, _ in meta]
    vectors = construct_gap(vectors, shifted, offset=OFFSET, seed=5, direction=direction)
    docs = [
        {"id": i, "text": f"document {i}", "embedding": v}
        if m == "text"
        else {"id": i, "embedding": v, "modality": "image"}  # an embedding-only image document
        for (i, m, _), v in zip(meta, vectors, strict=True)
    ]
    coll = "calib_" + uuid.uuid4().hex[:10]
    post(search_server, "/upsert", {"collection": coll, "documents": docs})
    relevant = {t: [i for i, _, topic in meta if topic == t] for t in range(len(TOPICS))}
    return {"collection": coll, "relevant": relevant, "total": len(docs)}


def vector_search(server: BentoServer, gapped: dict[str, object], query: object, **options: object) -> dict:
    """A vector search of the gapped collection, no rerank, every document a possible hit."""
    body = {"collection": gapped["collection"], "query": query, "mode": "vector", "rerank": False}
    return post(server, "/search", {**body, "top_k": gapped["total"], **options})


def kept_shares(server: BentoServer, gapped: dict[str, object], min_score: float) -> dict[str, float]:
    """Share of the relevant text and image documents every topic query keeps at ``min_score``."""
    kept = {"text": 0, "image": 0}
    total = {"text": 0, "image": 0}
    relevant: dict[int, list[str]] = gapped["relevant"]  # type: ignore[assignment]
    for t, query in enumerate(TOPICS):
        body = vector_search(server, gapped, query, candidates=gapped["total"], min_score=min_score)
        ids = {h["id"] for h in body["hits"]}
        for doc_id in relevant[t]:
            modality = doc_id.split("_")[0]
            total[modality] += 1
            kept[modality] += doc_id in ids
    return {m: kept[m] / total[m] for m in kept}


def raw_cosines(server: BentoServer, gapped: dict[str, object], modality: str) -> list[float]:
    relevant: dict[int, list[str]] = gapped["relevant"]  # type: ignore[assignment]
    out = []
    for t, query in enumerate(TOPICS):
        body = vector_search(server, gapped, query, balance="off", filter={"$modality": modality})
        out += [h["score"] for h in body["hits"] if h["id"] in relevant[t]]
    return sorted(out)


def calibration_queries(gapped: dict[str, object]) -> list[dict[str, object]]:
    relevant: dict[int, list[str]] = gapped["relevant"]  # type: ignore[assignment]
    return [{"text": q, "relevant": relevant[t]} for t, q in enumerate(TOPICS)]


def test_uncalibrated_one_min_score_keeps_different_shares_of_text_and_image(
    search_server: BentoServer, gapped: dict[str, object]
) -> None:
    """The test below can fail: on raw cosine, the threshold that keeps half the relevant texts keeps a very
    different share of the relevant images."""
    texts = raw_cosines(search_server, gapped, "text")
    images = raw_cosines(search_server, gapped, "image")
    assert max(images) < min(texts)  # the constructed gap: every relevant image scores below every relevant text
    median_text = texts[len(texts) // 2]
    shares = kept_shares(search_server, gapped, median_text)
    assert shares["text"] == pytest.approx(0.5, abs=0.05)
    assert abs(shares["text"] - shares["image"]) > TOLERANCE


def test_after_calibration_one_min_score_keeps_the_same_share_of_text_and_image(
    search_server: BentoServer, gapped: dict[str, object]
) -> None:
    coll = gapped["collection"]
    body = post(
        search_server,
        "/calibrate",
        {"collection": coll, "queries": calibration_queries(gapped), "name": "topics", "method": "platt"},
    )
    info = body["calibration"]
    assert info["set"] == "topics" and info["queries"] == len(TOPICS) and info["method"] == "platt"
    assert set(info["pairs"]) == {"text->text", "text->image"}
    assert info["pairs"]["text->image"]["positives"] == len(TOPICS) * PER_TOPIC
    listed = post(search_server, "/collections", {})["collections"]
    shown = next(c for c in listed if c["name"] == coll)["calibration"]
    assert shown["set"] == "topics" and shown["created"] == info["created"]
    for min_score in (0.3, 0.5, 0.7):
        shares = kept_shares(search_server, gapped, min_score)
        assert abs(shares["text"] - shares["image"]) <= TOLERANCE, (min_score, shares)
    middle = kept_shares(search_server, gapped, 0.5)
    assert 0.1 < middle["text"] < 1.0  # a threshold that actually splits the relevant documents


def test_calibrated_search_carries_calibrated_scores_and_orders_by_them(
    search_server: BentoServer, gapped: dict[str, object]
) -> None:
    coll = gapped["collection"]
    post(search_server, "/calibrate", {"collection": coll, "queries": calibration_queries(gapped)})
    body = post(
        search_server,
        "/search",
        {"collection": coll, "query": TOPICS[0], "mode": "vector", "rerank": False, "top_k": 20},
    )
    assert body["balanced"] is True
    hits = body["hits"]
    assert all(h["calibrated_score"] is not None and 0 <= h["calibrated_score"] <= 1 for h in hits)
    assert [h["fused_score"] for h in hits] == pytest.approx([h["calibrated_score"] for h in hits])
    assert {h["modality"] for h in hits[:10]} == {"text", "image"}
    raw = post(
        search_server,
        "/search",
        {"collection": coll, "query": TOPICS[0], "mode": "vector", "rerank": False, "balance": "off"},
    )
    assert all(h["calibrated_score"] is not None and h["fused_score"] is None for h in raw["hits"])


def test_calibration_refuses_bad_input_naming_the_field_and_the_limit(
    search_server: BentoServer, gapped: dict[str, object]
) -> None:
    coll = gapped["collection"]
    url = f"{search_server.url}/calibrate"
    many = [{"text": "q", "relevant": ["text_t0_0"]}] * 1001
    resp = httpx.post(url, json={"collection": coll, "queries": many}, timeout=60)
    assert resp.status_code in (400, 422) and "queries" in resp.text and "1000" in resp.text
    resp = httpx.post(url, json={"collection": coll, "queries": [{"text": "q", "relevant": ["nope"]}]}, timeout=60)
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == "queries[0].relevant[0]" and "nope" in resp.json()["error"]
    few = [{"text": TOPICS[0], "relevant": ["text_t0_0"]}]
    resp = httpx.post(url, json={"collection": coll, "queries": few}, timeout=60)
    assert resp.status_code == 422 and resp.json()["code"] == "calibration_failed"
    assert resp.json()["field"] == "queries" and "at least 3" in resp.json()["error"]
    resp = httpx.post(url, json={"collection": "absent_" + uuid.uuid4().hex[:6], "queries": few}, timeout=60)
    assert resp.status_code == 404
    resp = httpx.post(url, json={"collection": coll, "queries": [{"relevant": ["text_t0_0"]}]}, timeout=60)
    assert resp.status_code in (400, 422) and "text or image" in resp.text
    resp = httpx.post(
        f"{search_server.url}/search", json={"collection": coll, "query": "q", "min_score": 2}, timeout=60
    )
    assert resp.status_code in (400, 422) and "min_score" in resp.text


def test_client_and_cli_calibrate_and_list_the_calibration(
    search_server: BentoServer, gapped: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``Client.calibrate``, ``AsyncClient.calibrate`` and ``mmsearch calibrate`` on an eval-format labelled set."""
    coll = str(gapped["collection"])
    queries = calibration_queries(gapped)
    with Client(search_server.url) as client:
        res = client.calibrate(queries, collection=coll, method="isotonic", name="sync")
        assert res.calibration.method == "isotonic" and res.calibration.set == "sync"
        hits = client.search(TOPICS[1], collection=coll, mode="vector", rerank=False, min_score=0.5).hits
        assert hits and all(h.calibrated_score is not None and h.calibrated_score >= 0.5 for h in hits)

    async def run_async() -> str:
        async with AsyncClient(search_server.url) as client:
            typed = [CalibrationQuery.model_validate(q) for q in queries]
            return (await client.calibrate(typed, collection=coll, name="async")).calibration.set

    assert asyncio.run(run_async()) == "async"
    relevant: dict[int, list[str]] = gapped["relevant"]  # type: ignore[assignment]
    ds = tmp_path / "topics"
    ds.mkdir()
    ids = [i for t in relevant for i in relevant[t]]
    (ds / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": i}) + "\n" for i in ids))
    (ds / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{t}", "text": q}) + "\n" for t, q in enumerate(TOPICS))
    )
    (ds / "qrels.tsv").write_text("".join(f"q{t}\t{i}\t1\n" for t in relevant for i in relevant[t]))
    assert cli_main(["calibrate", str(ds), "--collection", coll, "--url", search_server.url]) == 0
    out = capsys.readouterr().out
    assert "calibrated (platt) on 'topics'" in out and "text->image" in out
    assert cli_main(["collections", "--url", search_server.url]) == 0
    assert "platt on 'topics'" in capsys.readouterr().out


def test_uncalibrate_removes_the_calibration_through_http_clients_and_cli(
    search_server: BentoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``POST /uncalibrate``, ``Client.uncalibrate``, ``AsyncClient.uncalibrate`` and ``mmsearch uncalibrate``:
    the collection is searched uncalibrated again (no ``calibrated_score``, ``min_score`` on the raw cosine)."""
    own = build_gapped(search_server)  # its own collection: the module's is calibrated by the other tests
    coll = str(own["collection"])
    url = search_server.url
    post(search_server, "/calibrate", {"collection": coll, "queries": calibration_queries(own)})
    assert post(search_server, "/uncalibrate", {"collection": coll}) == {"collection": coll, "removed": True}
    listed = post(search_server, "/collections", {})["collections"]
    assert next(c for c in listed if c["name"] == coll)["calibration"] is None
    body = vector_search(search_server, own, TOPICS[0], min_score=0.5)
    assert body["hits"] and all(h["calibrated_score"] is None and h["score"] >= 0.5 for h in body["hits"])
    assert post(search_server, "/uncalibrate", {"collection": coll}) == {"collection": coll, "removed": False}

    with Client(url) as client:
        client.calibrate(calibration_queries(own), collection=coll)
        assert client.uncalibrate(collection=coll).removed is True
        with pytest.raises(NotFoundError):
            client.uncalibrate(collection="absent_" + uuid.uuid4().hex[:6])
        client.calibrate(calibration_queries(own), collection=coll)

    async def run_async() -> tuple[bool, bool]:
        async with AsyncClient(url) as client:
            first = (await client.uncalibrate(collection=coll)).removed
            return first, (await client.uncalibrate(collection=coll)).removed

    assert asyncio.run(run_async()) == (True, False)
    post(search_server, "/calibrate", {"collection": coll, "queries": calibration_queries(own)})
    assert cli_main(["uncalibrate", "--collection", coll, "--url", url]) == 0
    assert f"'{coll}': calibration removed" in capsys.readouterr().out
    assert cli_main(["uncalibrate", "-c", coll, "--url", url]) == 0
    assert f"'{coll}' was not calibrated" in capsys.readouterr().out


def test_uncalibrate_refuses_bad_input_naming_the_field(search_server: BentoServer) -> None:
    url = f"{search_server.url}/uncalibrate"
    resp = httpx.post(url, json={"collection": "absent_" + uuid.uuid4().hex[:6]}, timeout=60)
    assert resp.status_code == 404 and resp.json()["code"] == "collection_not_found", resp.text
    resp = httpx.post(url, json={"collection": "no spaces allowed"}, timeout=60)
    assert resp.status_code in (400, 422) and resp.json()["field"] == "collection", resp.text
    resp = httpx.post(url, json={"collection": "x", "remove": True}, timeout=60)
    assert resp.status_code in (400, 422) and resp.json()["field"] == "remove", resp.text


def test_the_calibration_survives_a_restart_of_the_service(tmp_path: Path, model_urls: dict[str, str]) -> None:
    """Stored with the collection: a Search process started afresh on the same index finds and applies it.
    (Search alone, wired to the session's model services: the restart under test is Search's.)"""
    cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "service.search:Search"]
    first = BentoServer(cmd, bento_env(tmp_path, **model_urls), tmp_path / "first.log").start()
    try:
        built = build_gapped(first)
        queries = calibration_queries(built)
        post(first, "/calibrate", {"collection": built["collection"], "queries": queries, "name": "r"})
        before = kept_shares(first, built, 0.5)
    finally:
        first.stop()
    second = BentoServer(cmd, bento_env(tmp_path, **model_urls), tmp_path / "second.log").start()
    try:
        listed = post(second, "/collections", {})["collections"]
        assert next(c for c in listed if c["name"] == built["collection"])["calibration"]["set"] == "r"
        after = kept_shares(second, built, 0.5)
    finally:
        second.stop()
    assert after == before and abs(after["text"] - after["image"]) <= TOLERANCE
