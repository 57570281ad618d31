"""Several Search replicas: two Search processes (A, B) sharing one Embedder and one Reranker process (by URL) and
one index: the real Milvus server, or LanceDB on S3 (moto), and one media store on S3 (moto,
``MMSEARCH_MEDIA_URI=s3://bucket/prefix``, the Reranker's too). What one replica acknowledges, the other serves;
collections dropped or re-created through one are seen correctly by the other (no stale per-process state); a
replica SIGKILLed during a bulk ingest loses no acknowledged document while the other keeps serving searches."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.support.images import data_uri, make_image, png_bytes
from bench.support.servers import BentoServer, bento_env
from service.index.factory import open_index
from tests.conftest import BENTOML
from tests.support.s3 import MotoServer
from tests.support.waiting import wait_until
from tests.test_index_contract import backend_uri

pytestmark = pytest.mark.e2e
_names = itertools.count()


@dataclass
class Replicas:
    uri: str
    media_uri: str
    a: BentoServer
    b: BentoServer
    home: Path


def post(server: BentoServer, path: str, body: dict[str, object], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=timeout)


def ok(server: BentoServer, path: str, body: dict[str, object]) -> dict[str, object]:
    r = post(server, path, body)
    assert r.status_code == 200, f"{path} on {server.url}: {r.status_code} {r.text}"
    data: dict[str, object] = r.json()
    return data


def fresh_name() -> str:
    return f"rep{next(_names)}"


@pytest.fixture(scope="module", params=["milvus_server", "lance_s3"])
def replicas(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_urls: dict[str, str],
    reranker_server: BentoServer,
) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp(f"replicas-{request.param}")
    uri = backend_uri(request.param, request, tmp)
    # the session's Embedder, Reranker and Reader by URL, and one media store on S3 (moto) for both replicas and
    # the Reranker (it reads the candidates' images from it)
    shared = {**model_urls, "MMSEARCH_INDEX_URI": uri}
    assert shared["MMSEARCH_MEDIA_URI"] == reranker_server.env["MMSEARCH_MEDIA_URI"]
    servers = []
    for name in ("a", "b"):
        home = tmp / name
        home.mkdir()
        servers.append(BentoServer([*BENTOML, "service.search:Search"], bento_env(home, **shared), home / "log"))
    errors: list[BaseException] = []

    def start(server: BentoServer) -> None:
        try:
            server.start(ready_timeout=180)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]  # both replicas start at once
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        yield Replicas(uri, shared["MMSEARCH_MEDIA_URI"], *servers, home=tmp)
    finally:
        for s in servers:
            s.stop()


def test_writes_through_a_are_served_by_b(replicas: Replicas, s3_server: MotoServer) -> None:
    a, b = replicas.a, replicas.b
    coll = fresh_name()
    for round_ in range(5):  # every acknowledged write is visible to the very next request to the other replica
        docs = [{"id": f"r{round_}-{i}", "text": f"text {i}", "metadata": {"r": round_}} for i in range(4)]
        ok(a, "/upsert", {"collection": coll, "documents": docs})
        got = ok(b, "/get", {"collection": coll, "ids": [d["id"] for d in docs]})["documents"]
        assert [d["id"] for d in got] == [d["id"] for d in docs]  # type: ignore[index, union-attr]
        hits = ok(b, "/search", {"collection": coll, "query": "text", "rerank": False, "filter": {"r": round_}})
        assert {h["id"] for h in hits["hits"]} == {d["id"] for d in docs}  # type: ignore[index, union-attr]
        ok(a, "/delete", {"collection": coll, "ids": [docs[0]["id"]]})
        assert ok(b, "/get", {"collection": coll, "ids": [docs[0]["id"]]})["documents"] == []
        hits = ok(b, "/search", {"collection": coll, "query": "text", "rerank": False, "filter": {"r": round_}})
        assert docs[0]["id"] not in {h["id"] for h in hits["hits"]}  # type: ignore[index, union-attr]
    # An inline image stored by A lands in the S3 bucket, is served by B's /media and reranked by B, the Reranker
    # reading it from the bucket itself (not the inline fallback: no replica logs that the Reranker lacks the store).
    img = make_image(3)
    ok(a, "/upsert", {"collection": coll, "documents": [{"id": "img", "image": data_uri(img)}]})
    (doc,) = ok(b, "/get", {"collection": coll, "ids": ["img"]})["documents"]  # type: ignore[misc]
    ref = doc["image"]
    assert ref.startswith("media://")
    name = ref.removeprefix("media://")
    bucket, prefix = replicas.media_uri.removeprefix("s3://").split("/", 1)
    stored = s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()
    assert stored == png_bytes(img)
    r = httpx.get(f"{b.url}/media/{name}", timeout=30)
    assert r.status_code == 200 and r.content == png_bytes(img)
    hits = ok(b, "/search", {"collection": coll, "query": "red", "rerank": True, "top_k": 20, "candidates": 30})
    assert hits["reranked"] is True and hits["warnings"] == []
    (pic,) = [h for h in hits["hits"] if h["id"] == "img"]  # type: ignore[union-attr]
    assert pic["rerank_score"] is not None
    for server in (a, b):
        assert "cannot read the media store" not in server.log_path.read_text(errors="replace")
    assert not any((replicas.home / n / "media").exists() for n in ("a", "b"))  # MMSEARCH_MEDIA_DIR is unused


def test_collection_dropped_and_recreated_through_a_is_seen_by_b(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    coll = fresh_name()
    ok(a, "/upsert", {"collection": coll, "documents": [{"id": "old", "text": "old generation"}]})
    assert [h["id"] for h in ok(b, "/search", {"collection": coll, "query": "x", "rerank": False})["hits"]] == ["old"]
    assert ok(a, "/drop", {"collection": coll}) == {"collection": coll, "dropped": True}
    r = post(b, "/search", {"collection": coll, "query": "x", "rerank": False})
    assert r.status_code == 404 and r.json()["code"] == "collection_not_found", r.text
    assert coll not in {c["name"] for c in ok(b, "/collections", {})["collections"]}  # type: ignore[union-attr]
    r = post(b, "/drop", {"collection": coll})
    assert r.status_code == 404 and r.json()["code"] == "collection_not_found", r.text

    # Re-created through A: B serves the new generation only.
    ok(a, "/upsert", {"collection": coll, "documents": [{"id": "new", "text": "new generation"}]})
    hits = ok(b, "/search", {"collection": coll, "query": "x", "rerank": False})["hits"]
    assert [h["id"] for h in hits] == ["new"]  # type: ignore[union-attr]

    # Re-created by another writer with another model and dimension: B answers 409, not stale results or a 500.
    ok(a, "/drop", {"collection": coll})
    with open_index(replicas.uri) as other:
        other.ensure_collection(coll, 3, "another-model")
    for path, body in (
        ("/search", {"collection": coll, "query": "x", "rerank": False}),
        ("/upsert", {"collection": coll, "documents": [{"id": "z", "text": "z"}]}),
    ):
        r = post(b, path, body)
        assert r.status_code == 409 and r.json()["code"] == "collection_mismatch", (path, r.text)
        assert "another-model" in r.json()["error"] or path == "/search"
    ok(b, "/drop", {"collection": coll})
    ok(b, "/upsert", {"collection": coll, "documents": [{"id": "third", "text": "third generation"}]})
    hits = ok(a, "/search", {"collection": coll, "query": "x", "rerank": False})["hits"]
    assert [h["id"] for h in hits] == ["third"]  # type: ignore[union-attr]


def test_sigkill_of_a_during_bulk_ingest_loses_nothing_acknowledged(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    coll = fresh_name()
    ok(a, "/upsert", {"collection": coll, "documents": [{"id": "seed", "text": "seed"}]})
    acked: list[str] = []
    refused: list[str] = []
    searches: list[int] = []
    stop = threading.Event()

    def ingest(worker: int) -> None:
        with httpx.Client(base_url=a.url, timeout=60) as c:
            for batch in itertools.count():
                docs = [{"id": f"w{worker}-b{batch}-{i}", "text": f"bulk {worker} {batch} {i}"} for i in range(8)]
                try:
                    r = c.post("/upsert", json={"collection": coll, "documents": docs})
                except httpx.HTTPError as e:
                    refused.append(repr(e))
                    return  # A is gone
                if r.status_code != 200:
                    refused.append(r.text)
                    return
                acked.extend(r.json()["ids"])

    def search_b() -> None:
        with httpx.Client(base_url=b.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/search", json={"collection": coll, "query": "bulk", "rerank": False, "top_k": 5})
                searches.append(r.status_code)

    writers = [threading.Thread(target=ingest, args=(w,)) for w in range(3)]
    reader = threading.Thread(target=search_b)
    reader.start()
    for w in writers:
        w.start()
    wait_until(lambda: len(acked) >= 200 or refused, 120, "200 documents are acknowledged")
    assert len(acked) >= 200, f"ingest refused: {refused[:3]}"
    a.kill()  # SIGKILL the whole process tree of replica A in the middle of the ingest
    for w in writers:
        w.join(timeout=60)
    served_before = len(searches)
    wait_until(lambda: len(searches) >= served_before + 5, 60, "B answers 5 more searches after A died")
    stop.set()
    reader.join(timeout=60)

    assert searches and set(searches) == {200}, f"B answered {sorted(set(searches))} during the ingest"
    got = ok(b, "/get", {"collection": coll, "ids": acked})["documents"]
    missing = set(acked) - {d["id"] for d in got}  # type: ignore[union-attr]
    assert not missing, f"{len(missing)} acknowledged documents lost, e.g. {sorted(missing)[:5]}"
    count = {c["name"]: c["count"] for c in ok(b, "/collections", {})["collections"]}[coll]  # type: ignore[union-attr]
    assert count >= len(acked) + 1
    print(f"\n{replicas.uri.split(':')[0]}: {len(acked)} acknowledged before SIGKILL, {len(searches)} searches on B")
