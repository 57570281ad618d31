"""Hardening against real bentos: API keys, 413 body limit, overload (429 + Retry-After), OOM split-retry,
rerank degradation. Each server here runs with small limits so the behaviour shows in a few requests."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from bench.support.images import data_uri, make_image
from bench.support.servers import BentoServer
from tests.conftest import serve_bento
from tests.support.batched import send_at_once

pytestmark = pytest.mark.e2e
KEYS = ("key-one-0123456789", "key-two-9876543210")
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
GUARDED = {  # the guarded Embedders' small limits, so that each behaviour shows in a few requests
    "MMSEARCH_API_KEYS": ",".join(KEYS),
    "MMSEARCH_MAX_QUEUE_SIZE": "16",
    "MMSEARCH_MAX_BATCH_SIZE": "16",
    "MMSEARCH_MAX_REQUEST_BYTES": "200000",
}


@pytest.fixture(scope="module")
def guarded_embedder(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[BentoServer]:  # type: ignore[no-untyped-def]
    yield from serve_bento(
        tmp_path_factory.mktemp("guarded-embedder"),
        "service.embedder:Embedder",
        **GUARDED,
        MMSEARCH_OOM_SIMULATE_BATCH_OVER="4",
        MMSEARCH_OOM_SIMULATE_TEXT_CHARS="5000",
    )


@pytest.fixture(scope="module")
def slow_embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    """An Embedder whose every batch takes 1.5 s (the GPU-shaped model, ``bench.gpu_shaped``): requests arrive far
    faster than batches finish however loaded the machine, so a queue of 16 inputs must overflow. (With the tiny
    model on a starved machine the server's own request parsing and image decoding can be slower than its batches,
    and the queue never fills: that failed once in CI.)"""
    yield from serve_bento(
        tmp_path_factory.mktemp("slow-embedder"),
        "service.embedder:Embedder",
        **GUARDED,
        MMSEARCH_MODEL_FACTORY="bench.gpu_shaped:factory",
        MMSEARCH_GPU_SHAPED="fixed_ms=1500,item_ms=0",
    )


@pytest.fixture(scope="module")
def guarded_search(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[BentoServer]:  # type: ignore[no-untyped-def]
    yield from serve_bento(
        tmp_path_factory.mktemp("guarded-search"),
        "service.search:Search",
        MMSEARCH_API_KEYS=KEYS[0],
        MMSEARCH_RERANK_TIMEOUT_S="0.001",
    )


def test_api_keys(guarded_embedder: BentoServer) -> None:
    url = guarded_embedder.url
    body = {"inputs": ["hello"]}
    none = httpx.post(f"{url}/encode", json=body)
    assert none.status_code == 401 and none.json()["code"] == "unauthorized"
    assert "Bearer" in none.json()["error"] and none.headers["www-authenticate"].startswith("Bearer")
    assert httpx.post(f"{url}/encode", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(f"{url}/encode", json=body, headers={"x-api-key": KEYS[0][:-1]}).status_code == 401
    assert httpx.post(f"{url}/encode", json=body, headers=AUTH).status_code == 200
    assert httpx.post(f"{url}/encode", json=body, headers={"x-api-key": KEYS[1]}).status_code == 200  # rotation
    files = [("image", ("a.png", b"x", "image/png"))]
    assert httpx.post(f"{url}/upload/encode", files=files).status_code == 401  # the upload route is guarded too
    assert httpx.get(f"{url}/docs.json").status_code == 401
    for probe in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{url}{probe}").status_code == 200, probe
    assert KEYS[0] not in guarded_embedder.tail(2000)  # keys never logged


def test_body_limit_413(guarded_embedder: BentoServer) -> None:
    big = {"inputs": ["x" * 1000] * 300}  # ~300 KB > 200 KB limit
    r = httpx.post(f"{guarded_embedder.url}/encode", json=big, headers=AUTH)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large" and "200000" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        yield b'{"inputs": ["'
        for _ in range(300):
            yield b"y" * 1000
        yield b'"]}'

    chunked = httpx.post(
        f"{guarded_embedder.url}/encode", content=chunks(), headers={**AUTH, "content-type": "application/json"}
    )
    assert chunked.status_code == 413
    small_chunked = httpx.post(
        f"{guarded_embedder.url}/encode",
        content=iter([b'{"inputs": ["ok"]}']),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert small_chunked.status_code == 200, small_chunked.text


def test_oom_split_retry_matches_unsplit(guarded_embedder: BentoServer, tiny_models) -> None:  # type: ignore[no-untyped-def]
    texts = [f"slide {i} with some words" for i in range(16)]
    r = httpx.post(f"{guarded_embedder.url}/encode", json={"inputs": texts}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    model = SentenceTransformer(str(tiny_models.clip), device="cpu")
    want = model.encode_document([{"text": t} for t in texts], normalize_embeddings=True)  # one un-split batch
    assert np.abs(np.asarray(r.json()["embeddings"]) - want).max() <= 1e-5
    info = httpx.post(f"{guarded_embedder.url}/info", json={}, headers=AUTH).json()
    assert info["max_batch_size"] == 16 and info["effective_max_batch_size"] <= 4  # lowered after OOM


def test_oom_single_item_fails_alone(guarded_embedder: BentoServer) -> None:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=guarded_embedder.url, headers=AUTH, timeout=60) as c:
            normal = [c.post("/encode", json={"inputs": [f"normal {i}"]}) for i in range(6)]
            huge = c.post("/encode", json={"inputs": ["z" * 6000]})
            return await asyncio.gather(huge, *normal)

    huge, *normal = asyncio.run(go())
    assert huge.status_code == 413 and huge.json()["code"] == "input_too_large", huge.text
    assert all(r.status_code == 200 for r in normal)
    assert httpx.get(f"{guarded_embedder.url}/readyz").status_code == 200


def test_overload_429_with_retry_after(slow_embedder: BentoServer) -> None:
    img = data_uri(make_image(5, size=(96, 96)))  # 4 per request stay under the body limit

    async def go() -> list[httpx.Response]:  # all 64 sent at once, 1.5 s a batch: the queue of 16 must overflow
        bodies = [{"inputs": [{"image": img}] * 4} for _ in range(64)]
        return list(await asyncio.gather(*await send_at_once(slow_embedder.url, "/encode", bodies, AUTH)))

    responses = asyncio.run(go())
    codes = Counter(r.status_code for r in responses)
    print("64 concurrent x 4 images, queue 16:", dict(codes))
    assert set(codes) <= {200, 429}, codes
    assert codes[429] > 0 and codes[200] > 0
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["code"] == "overloaded"
    assert httpx.get(f"{slow_embedder.url}/readyz").status_code == 200
    again = httpx.post(f"{slow_embedder.url}/encode", json={"inputs": ["after the storm"]}, headers=AUTH, timeout=60)
    assert again.status_code == 200


def test_search_auth_internal_calls_and_rerank_degradation(guarded_search: BentoServer) -> None:
    url = guarded_search.url
    docs = {"collection": "g", "documents": [{"id": f"d{i}", "text": f"doc {i}"} for i in range(5)]}
    assert httpx.post(f"{url}/upsert", json=docs).status_code == 401
    up = httpx.post(f"{url}/upsert", json=docs, headers=AUTH, timeout=60)
    assert up.status_code == 200, up.text  # Search -> Embedder call inside the deployment needs no key
    q = {"collection": "g", "query": "doc 1", "top_k": 3}
    auto = httpx.post(f"{url}/search", json={**q, "rerank": "auto"}, headers=AUTH, timeout=60)
    assert auto.status_code == 200 and auto.json()["reranked"] is False  # reranker over its 1 ms deadline
    assert all(h["rerank_score"] is None for h in auto.json()["hits"]) and len(auto.json()["hits"]) == 3
    strict = httpx.post(f"{url}/search", json={**q, "rerank": True}, headers=AUTH, timeout=60)
    assert strict.status_code == 503 and strict.json()["code"] == "reranker_timeout"
    assert int(strict.headers["Retry-After"]) >= 1
    off = httpx.post(f"{url}/search", json={**q, "rerank": False}, headers=AUTH, timeout=60)
    assert off.status_code == 200 and off.json()["hits"][0]["id"] == "d1"
    deadline = httpx.post(f"{url}/search", json={**q, "timeout": 0.0001}, headers=AUTH, timeout=60)
    assert deadline.status_code == 504 and deadline.json()["code"] == "deadline_exceeded"


def test_client_and_cli_pass_the_key(guarded_search: BentoServer) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mmsearch_client import AuthenticationError, Client

    with Client(guarded_search.url, api_key=None, max_retries=0) as anonymous, pytest.raises(AuthenticationError):
        anonymous.collections()
    with Client(guarded_search.url, api_key=KEYS[0]) as client:
        client.upsert([{"id": "via-client", "text": "sent with a key"}], collection="keyed")
        assert [d.id for d in client.get(["via-client"], collection="keyed").documents] == ["via-client"]
    cli = str(Path(sys.executable).with_name("mmsearch"))
    env = {**os.environ, "MMSEARCH_URL": guarded_search.url}
    env.pop("MMSEARCH_API_KEY", None)
    denied = subprocess.run([cli, "collections"], env=env, capture_output=True, text=True, timeout=60)
    assert denied.returncode == 1 and "401" in denied.stderr
    allowed = subprocess.run(
        [cli, "collections"], env={**env, "MMSEARCH_API_KEY": KEYS[0]}, capture_output=True, text=True, timeout=60
    )
    assert allowed.returncode == 0, allowed.stderr
