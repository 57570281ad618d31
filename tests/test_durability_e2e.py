"""Acknowledged upserts survive SIGKILL of the whole Search deployment (its arbiter and worker, which hold the index;
the model services it calls by URL are deployments of their own), on the single-process index backends
(LanceDB directory, Milvus Lite); a collection created with another model/dimension is refused with 409 after
restart. The shared backends (Milvus server, LanceDB on S3) get the same check in tests/test_replicas_e2e.py (a
replica SIGKILLed mid-ingest) and, for the server itself, tests/test_index_contract.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bench.support.servers import BentoServer, bento_env
from service.index.factory import open_index
from tests.conftest import BENTOML
from tests.test_index_contract import backend_uri

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", ["lance", "milvus"])
def test_upserts_survive_sigkill(backend: str, tmp_path, model_urls, request) -> None:  # type: ignore[no-untyped-def]
    uri = backend_uri(backend, request, tmp_path)
    env = bento_env(tmp_path, **model_urls, MMSEARCH_INDEX_URI=uri)
    server = BentoServer([*BENTOML, "service.search:Search"], env, tmp_path / "server.log").start()
    acked: list[str] = []
    try:

        async def ingest() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:

                async def batch(b: int) -> None:
                    docs = [{"id": f"b{b}-{i}", "text": f"batch {b} doc {i}", "metadata": {"b": b}} for i in range(10)]
                    r = await c.post("/upsert", json={"collection": "durable", "documents": docs})
                    assert r.status_code == 200, r.text
                    acked.extend(r.json()["ids"])

                await asyncio.gather(*(batch(b) for b in range(8)))

        asyncio.run(ingest())
        assert len(acked) == 80
    finally:
        server.kill()  # SIGKILL the arbiter and every worker: no graceful flush

    other = open_index(uri)  # while the service is down, someone creates a collection for another model
    other.ensure_collection("foreign", 8, "some-other-model")
    other.close()

    server.start()
    try:
        got = httpx.post(f"{server.url}/get", json={"collection": "durable", "ids": acked}, timeout=60)
        assert got.status_code == 200, got.text
        assert sorted(d["id"] for d in got.json()["documents"]) == sorted(acked)
        colls = {
            c["name"]: c for c in httpx.post(f"{server.url}/collections", json={}, timeout=30).json()["collections"]
        }
        assert colls["durable"]["count"] == 80
        hit = httpx.post(
            f"{server.url}/search",
            json={"collection": "durable", "query": "batch 3 doc 7", "rerank": False, "filter": {"b": 3}},
            timeout=60,
        )
        assert hit.status_code == 200 and all(h["metadata"]["b"] == 3 for h in hit.json()["hits"])
        clash = httpx.post(
            f"{server.url}/upsert", json={"collection": "foreign", "documents": [{"id": "x", "text": "y"}]}, timeout=60
        )
        assert clash.status_code == 409 and clash.json()["code"] == "collection_mismatch", clash.text
        assert "some-other-model" in clash.json()["error"]
    finally:
        server.stop()
