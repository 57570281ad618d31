"""End-to-end tests of the Python client (``Client``, ``AsyncClient``) and the ``mmsearch`` CLI.

Everything runs against the real composed Search bento (tiny profile) on loopback; every error is provoked for
real (no mocks). The shared tests run twice: with ``Client`` and with ``AsyncClient`` driven on a private event
loop (:class:`AsyncBridge`), so both clients go through exactly the same assertions.

Not covered here: ``AuthenticationError`` (401/403) - API keys are being added to the service separately; the
test belongs with that change.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mmsearch_client import (
    APIConnectionError,
    APIStatusError,
    AsyncClient,
    BadRequestError,
    Client,
    ConflictError,
    Document,
    EncodeResult,
    GatewayTimeoutError,
    Image,
    MMSearchError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    pair,
)

from bench.support.images import data_uri, make_image, png_bytes, write_images
from bench.support.servers import BENTOML, BentoServer, StaticServer, bento_env, free_port
from tests.support.stages import model_ms

pytestmark = pytest.mark.e2e

MMSEARCH_CLI = str(Path(sys.executable).with_name("mmsearch"))
MODEL = "mmsearch/tiny-random-clip"
DIM = 16
CORRUPT_PNG = b"\x89PNG\r\n\x1a\n" + b"definitely not the rest of a png" * 4  # passes the client's magic check


def fresh(prefix: str = "c") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class AsyncBridge:
    """An ``AsyncClient`` whose coroutine methods are run to completion on a private event loop.

    Lets one sync test body drive both clients; the client and its connection pool live on that one loop.
    """

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()

        async def make() -> AsyncClient:
            return AsyncClient(base_url, **kwargs)

        self.client = self.loop.run_until_complete(make())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr
        assert inspect.iscoroutinefunction(attr), name

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.loop.run_until_complete(attr(*args, **kwargs))

        return call

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def open_client(kind: str, base_url: str, **kwargs: Any) -> Any:
    return Client(base_url, **kwargs) if kind == "sync" else AsyncBridge(base_url, **kwargs)


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(kind: str, search_server: BentoServer) -> Iterator[Any]:
    c = open_client(kind, search_server.url)
    try:
        yield c
    finally:
        c.close()


def raw_encode(server: BentoServer, inputs: list[Any], input_type: str, **extra: Any) -> list[list[float]]:
    resp = httpx.post(
        f"{server.url}/encode",
        json={"inputs": inputs, "input_type": input_type, "encoding_format": "float", **extra},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    vectors: list[list[float]] = resp.json()["embeddings"]
    return vectors


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert len(a) == len(b) and all(len(x) == len(y) for x, y in zip(a, b, strict=True))
    return max(abs(x - y) for va, vb in zip(a, b, strict=True) for x, y in zip(va, vb, strict=True))


def file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# ------------------------------------------------------------------------------------------- status / info
def test_health_and_info(client: Any) -> None:
    status = client.health()
    assert status and status.live and status.ready and status.detail is None
    info = client.info()
    assert info["service"] == "Search"
    assert info["embedder"]["model"] == MODEL and info["embedder"]["dimension"] == DIM


# ----------------------------------------------------------------------------------------------- encode
def test_encode_every_input_kind_matches_raw_float_encode(
    client: Any, search_server: BentoServer, image_dir: Path, image_server: StaticServer
) -> None:
    """Each input kind the client accepts gives the same vector as the raw ``/encode`` float answer."""
    img1, img2 = image_dir / "img1.png", image_dir / "img2.png"
    url = f"{image_server.url}/img3.png"
    pil7, pil8 = make_image(7), make_image(8)
    cases: list[tuple[str, Any, Any]] = [  # (name, client input, raw wire input)
        ("str", "a red bicycle", "a red bicycle"),
        ("Image.from_path", Image.from_path(img1), {"image": file_uri(img1)}),
        ("Path", img2, {"image": file_uri(img2)}),
        ("Image.from_bytes", Image.from_bytes(png_bytes(pil7)), {"image": data_uri(pil7)}),
        ("Image.from_pil", Image.from_pil(pil8), {"image": data_uri(pil8)}),
        ("PIL.Image", pil8, {"image": data_uri(pil8)}),
        ("Image.url", Image.url(url), {"image": url}),
    ]
    inputs = [c[1] for c in cases]
    wire = [c[2] for c in cases]
    for input_type, method in (("query", client.encode_query), ("document", client.encode_document)):
        raw = raw_encode(search_server, wire, input_type)
        got = method(inputs)
        assert isinstance(got, EncodeResult)
        assert got.model == MODEL and got.dimensions == DIM and len(got) == len(cases)
        assert max_abs_diff(got.embeddings, raw) <= 1e-5, input_type
        via_encode = client.encode(inputs, input_type=input_type)
        assert max_abs_diff(via_encode.embeddings, raw) <= 1e-5
        # one input at a time, not in a list
        for (name, single, _), expected in zip(cases, raw, strict=True):
            one = method(single)
            assert len(one) == 1 and max_abs_diff(one.embeddings, [expected]) <= 1e-5, name
    # Matryoshka truncation and normalize=False go through too
    raw8 = raw_encode(search_server, wire[:3], "query", dimensions=8, normalize=False)
    got8 = client.encode_query(inputs[:3], dimensions=8, normalize=False)
    assert got8.dimensions == 8 and max_abs_diff(got8.embeddings, raw8) <= 1e-5


# ----------------------------------------------------------------------------------------------- rerank
def test_rerank_top_n_and_return_documents(client: Any, search_server: BentoServer, image_dir: Path) -> None:
    docs: list[Any] = ["a red bicycle", "a blue car", "a green tree", image_dir / "img4.png"]
    full = client.rerank("red bike", docs)
    assert full.model and len(full.results) == 4
    assert sorted(r.index for r in full.results) == [0, 1, 2, 3]
    scores = [r.relevance_score for r in full.results]
    assert scores == sorted(scores, reverse=True)
    assert all(r.document is None for r in full.results)
    raw = httpx.post(
        f"{search_server.url}/rerank",
        json={
            "query": "red bike",
            "documents": ["a red bicycle", "a blue car", "a green tree", {"image": file_uri(image_dir / "img4.png")}],
        },
        timeout=60,
    ).json()
    assert {r["index"]: r["relevance_score"] for r in raw["results"]} == pytest.approx(
        {r.index: r.relevance_score for r in full.results}, abs=1e-5
    )

    top = client.rerank("red bike", docs, top_n=2, return_documents=True)
    assert [r.index for r in top.results] == [r.index for r in full.results[:2]]
    for r in top.results:
        assert r.document is not None
        if r.index < 3:
            assert r.document.text == docs[r.index] and r.document.image is None
        else:
            assert r.document.image == file_uri(image_dir / "img4.png")
    with pytest.raises(TypeError):
        client.rerank("q", "a single string is not a list")


# ---------------------------------------------------------------------------------------- index workflow
def test_upsert_get_collections_search_delete(
    client: Any, image_dir: Path, image_server: StaticServer, search_server: BentoServer
) -> None:
    coll = fresh()
    url = f"{image_server.url}/img5.png"
    docs = [
        Document("t1", text="a red bicycle leaning on a wall", metadata={"kind": "text", "n": 1, "shop": "north"}),
        Document("t2", text="a bowl of ramen", metadata={"kind": "text", "n": 2, "shop": "south"}),
        Document("p1", image=image_dir / "img6.png", metadata={"kind": "image", "n": 3, "shop": "north"}),
        Document("u1", image=Image.url(url), metadata={"kind": "image", "n": 4, "tags": ["a", "b"]}),
        Document("b1", image=Image.from_bytes(png_bytes(make_image(9))), metadata={"kind": "image", "n": 5}),
    ]
    up = client.upsert(docs, collection=coll)
    assert up.collection == coll and up.upserted == 5 and up.ids == ["t1", "t2", "p1", "u1", "b1"]
    single = client.upsert(Document("t3", text="a third text", metadata={"kind": "text", "n": 6}), collection=coll)
    assert single.ids == ["t3"]
    as_dict = client.upsert(
        {"id": "m1", "text": "from a mapping", "metadata": {"kind": "text", "n": 7}}, collection=coll
    )
    assert as_dict.ids == ["m1"]

    got = client.get(["t1", "missing", "p1", "u1"], collection=coll)
    assert got.collection == coll and [d.id for d in got.documents] == ["t1", "p1", "u1"]
    t1, p1, u1 = got.documents
    assert t1.text == docs[0].text and t1.metadata == {"kind": "text", "n": 1, "shop": "north"}
    assert t1.image is None and t1.embedding is None
    assert p1.image is not None and p1.image.startswith("media://") and p1.text is None
    assert u1.image is not None and u1.image.startswith("media://") and u1.source == url  # a copy is kept
    assert u1.metadata["tags"] == ["a", "b"]
    with_vec = client.get("t1", collection=coll, include_embedding=True).documents[0]
    assert with_vec.embedding is not None and len(with_vec.embedding) == DIM

    colls = {c.name: c for c in client.collections().collections}
    assert colls[coll].count == 7 and colls[coll].dimension == DIM and colls[coll].model == MODEL

    # retrieval only: a document's own content comes back first
    plain = client.search(docs[0].text, collection=coll, top_k=3, rerank=False, mode="vector")
    assert plain.reranked is False and plain.hits[0].id == "t1"
    assert plain.hits[0].retrieval_score == pytest.approx(1.0, abs=1e-4) and plain.hits[0].rerank_score is None
    by_image = client.search(image_dir / "img6.png", collection=coll, top_k=1, rerank=False)
    assert [h.id for h in by_image.hits] == ["p1"]
    by_url = client.search(Image.url(url), collection=coll, top_k=1, rerank=False)
    assert [h.id for h in by_url.hits] == ["u1"]

    reranker_ms = model_ms(search_server.url, "reranker")
    t0 = time.perf_counter()
    reranked = client.search("red bicycle", collection=coll, top_k=4, candidates=7, rerank=True)
    wall_ms = (time.perf_counter() - t0) * 1000
    reranker_ms = model_ms(search_server.url, "reranker") - reranker_ms
    assert reranked.reranked is True and len(reranked.hits) == 4
    assert all(h.rerank_score is not None and h.score == h.rerank_score for h in reranked.hits)
    assert [h.score for h in reranked.hits] == sorted((h.score for h in reranked.hits), reverse=True)
    t = reranked.timings_ms
    # the timings the client parsed are the server's: the rerank stage encloses the Reranker's model time (its own
    # clock), the whole search is inside the wall time measured here
    assert t.rerank >= reranker_ms > 0 and t.total <= wall_ms, (t, reranker_ms, wall_ms)
    auto = client.search("red bicycle", collection=coll, top_k=2, rerank="auto")
    assert auto.reranked is True and len(auto.hits) == 2

    texts = client.search("anything", collection=coll, top_k=7, rerank=False, filter={"kind": "text"})
    assert {h.id for h in texts.hits} == {"t1", "t2", "t3", "m1"}
    ranged = client.search(
        "anything",
        collection=coll,
        top_k=7,
        rerank=False,
        filter={"n": {"$gte": 2, "$lt": 5}, "kind": {"$in": ["image", "text"]}},
    )
    assert {h.id for h in ranged.hits} == {"t2", "p1", "u1"}
    north = client.search("anything", collection=coll, top_k=5, rerank=True, filter={"shop": "north"})
    assert {h.id for h in north.hits} == {"t1", "p1"} and north.reranked

    deleted = client.delete(["t1", "zzz"], collection=coll)
    assert deleted.collection == coll and deleted.deleted == 1
    assert client.delete("t2", collection=coll).deleted == 1
    assert client.get(["t1", "t2"], collection=coll).documents == []
    assert {c.name: c.count for c in client.collections().collections}[coll] == 5


def _many_documents(n_text: int, n_image: int, bad_at: int) -> list[Document]:
    docs = [Document(f"txt{i}", text=f"generated text document {i}", metadata={"n": i}) for i in range(n_text)]
    for i in range(n_image):
        image: Any = make_image(1000 + i, size=(24, 24))
        docs.append(Document(f"img{i}", image=image if i % 2 else Image.from_pil(image), metadata={"n": i}))
    docs.insert(bad_at, Document("bad", image=Image.from_bytes(CORRUPT_PNG), metadata={"n": -1}))
    return docs


def _check_many(client: Any, summary: Any, coll: str, expected_ids: set[str], bad_at: int) -> None:
    assert summary.collection == coll
    assert summary.upserted == len(expected_ids) and summary.failed == 1 and not summary.ok
    assert set(summary.ids) == expected_ids
    assert len(summary.failures) == 1 and summary.failures[0].ids == ["bad"]
    err = summary.failures[0].error
    assert isinstance(err, BadRequestError) and err.code == "not_an_image"
    assert err.field == f"documents[{bad_at % 32}].image"
    counts = {c.name: c.count for c in client.collections().collections}
    assert counts[coll] == len(expected_ids)
    assert [d.id for d in client.get(["txt0", "bad", "img1"], collection=coll).documents] == ["txt0", "img1"]


def test_upsert_many_over_100_documents_with_one_corrupt_image(client: Any) -> None:
    coll, bad_at = fresh(), 45
    docs = _many_documents(70, 50, bad_at)
    expected = {d.id for d in docs} - {"bad"}
    summary = client.upsert_many(docs, collection=coll, batch_size=32, concurrency=4, progress=False)
    assert summary.batches == 4  # 121 documents in 32s
    _check_many(client, summary, coll, expected, bad_at)
    # a second run replaces instead of duplicating, and a generator (no len) works too
    again = client.upsert_many(iter(docs), collection=coll, batch_size=64, concurrency=2, progress=False)
    assert again.upserted == len(expected) and again.failed == 1
    assert {c.name: c.count for c in client.collections().collections}[coll] == len(expected)


def test_async_client_natively(search_server: BentoServer, image_dir: Path) -> None:
    """AsyncClient on its own loop: concurrent calls and ``upsert_many`` from an async generator."""
    coll, bad_at = fresh(), 70
    docs = _many_documents(60, 45, bad_at)
    expected = {d.id for d in docs} - {"bad"}

    async def agen() -> AsyncIterator[Document]:
        for d in docs:
            await asyncio.sleep(0)
            yield d

    async def go() -> None:
        async with AsyncClient(search_server.url) as c:
            summary = await c.upsert_many(agen(), collection=coll, batch_size=32, concurrency=3, progress=False)
            assert summary.upserted == len(expected) and summary.failed == 1 and summary.failures[0].ids == ["bad"]
            queries = [f"generated text document {i}" for i in range(8)]
            results = await asyncio.gather(
                *(c.search(q, collection=coll, top_k=1, rerank=False) for q in queries),
                c.encode_query([image_dir / "img0.png", "text"]),
                c.health(),
            )
            for i in range(8):
                assert results[i].hits[0].id == f"txt{i}"
            assert results[8].dimensions == DIM and bool(results[9])
            with pytest.raises(NotFoundError):
                await c.search("x", collection=fresh("missing"))
        sync_counts = {x.name: x.count for x in Client(search_server.url).collections().collections}
        assert sync_counts[coll] == len(expected)

    asyncio.run(go())


# --------------------------------------------------------------------------------------------- errors
def test_bad_request_errors_name_the_field(client: Any, image_dir: Path) -> None:
    with pytest.raises(BadRequestError) as e:
        client.encode(["fine", Image.from_bytes(CORRUPT_PNG)])
    assert e.value.status_code == 422 and e.value.code == "not_an_image" and e.value.field == "inputs[1].image"
    with pytest.raises(BadRequestError) as e:
        client.encode([Image.from_bytes(CORRUPT_PNG)])
    assert e.value.field == "inputs[0].image"

    with pytest.raises(BadRequestError) as e:
        client.encode([])
    assert e.value.status_code == 400 and e.value.field == "inputs"

    with pytest.raises(BadRequestError) as e:  # CLIP embeds text or image, not both together
        client.encode([pair("a caption", image_dir / "img0.png")])
    assert e.value.status_code == 422 and e.value.code == "unsupported_modality" and e.value.field == "inputs[0]"

    coll = fresh()
    client.upsert([Document("a", text="alpha", metadata={"n": 1})], collection=coll)
    # top_k > candidates: the server shortlists top_k (as for the CLI and every client), no error
    assert [h.id for h in client.search("x", collection=coll, top_k=20, candidates=10).hits] == ["a"]
    with pytest.raises(BadRequestError) as e:
        client.search("x", collection=coll, filter={"n": {"$regex": "x"}})
    assert e.value.status_code == 400 and e.value.code == "invalid_filter" and e.value.field == "filter"
    with pytest.raises(BadRequestError) as e:
        client.upsert(
            [Document("ok", text="fine"), Document("evil", image=Image.from_bytes(CORRUPT_PNG))], collection=coll
        )
    assert e.value.field == "documents[1].image"
    with pytest.raises(BadRequestError) as e:
        client.upsert([Document("d", text="1"), Document("d", text="2")], collection=coll)
    assert e.value.status_code == 400 and e.value.code == "duplicate_id"
    with pytest.raises(BadRequestError) as e:
        client.upsert([Document("x", embedding=[0.1] * 8)], collection=coll)
    assert e.value.code == "dimension_mismatch" and e.value.field == "documents[0].embedding"
    with pytest.raises(BadRequestError) as e:
        client.upsert([Document("x", text="y")], collection="no spaces!")
    assert e.value.status_code == 400 and e.value.field == "collection"
    assert [d.id for d in client.get(["a", "ok", "evil", "d", "x"], collection=coll).documents] == ["a"]
    # every HTTP error is an APIStatusError and an MMSearchError, with a readable str
    assert isinstance(e.value, APIStatusError) and isinstance(e.value, MMSearchError)
    assert str(e.value).startswith("400 ")


def test_not_found(client: Any) -> None:
    missing = fresh("missing")
    for call in (
        lambda: client.search("x", collection=missing),
        lambda: client.get(["a"], collection=missing),
        lambda: client.delete(["a"], collection=missing),
    ):
        with pytest.raises(NotFoundError) as e:
            call()
        assert e.value.status_code == 404 and e.value.code == "collection_not_found"
        assert e.value.field == "collection" and missing in e.value.message


def test_conflict_collection_made_by_another_model(client: Any, search_server: BentoServer) -> None:
    from service.index.factory import open_index

    coll = fresh("mismatch")
    # another writer created the collection with another model and dimension, in the server's own index
    index = open_index(search_server.env["MMSEARCH_INDEX_URI"])
    try:
        index.ensure_collection(coll, 8, "other-model")
    finally:
        index.close()
    with pytest.raises(ConflictError) as e:
        client.upsert([Document("a", text="x")], collection=coll)
    assert e.value.status_code == 409 and e.value.code == "collection_mismatch" and e.value.field == "collection"
    assert "other-model" in e.value.message
    with pytest.raises(ConflictError) as e:
        client.search("x", collection=coll)
    assert e.value.code == "collection_mismatch"
    info = {c.name: c for c in client.collections().collections}[coll]
    assert (info.dimension, info.model, info.count) == (8, "other-model", 0)


def test_payload_too_large(client: Any) -> None:
    with pytest.raises(PayloadTooLargeError) as e:
        client.encode(["x"] * 257)
    assert e.value.status_code == 413 and e.value.code == "too_many_inputs" and e.value.field == "inputs"
    with pytest.raises(PayloadTooLargeError) as e:
        client.upsert([Document(f"d{i}", text="x") for i in range(257)], collection=fresh())
    assert e.value.field == "documents"
    assert len(client.encode(["x"] * 256)) == 256  # the limit itself is fine


def test_gateway_timeout_from_search_deadline(client: Any) -> None:
    coll = fresh()
    client.upsert([Document("a", text="alpha")], collection=coll)
    with pytest.raises(GatewayTimeoutError) as e:
        client.search("alpha", collection=coll, timeout=1e-3)
    assert e.value.status_code == 504 and e.value.code == "deadline_exceeded"
    assert isinstance(e.value, TimeoutError)
    assert client.search("alpha", collection=coll, timeout=30).hits[0].id == "a"


def test_connection_error_on_a_closed_port(kind: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    c = open_client(kind, url, max_retries=1)
    try:
        status = c.health()  # never raises
        assert not status and not status.live and "cannot reach" in (status.detail or "")
        t0 = time.monotonic()
        with pytest.raises(APIConnectionError) as e:
            c.info()
        assert time.monotonic() - t0 >= 0.3  # one retry with backoff happened
        assert url in str(e.value) and e.value.request is not None
        with pytest.raises(APIConnectionError):
            c.search("x")
    finally:
        c.close()


class BackgroundStart:
    """Start a ``BentoServer`` in a thread, so that its startup overlaps the rest of the module."""

    def __init__(self, server: BentoServer) -> None:
        self.server = server
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._start, name="overloaded-embedder-start", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.server.start()
        except BaseException as e:  # re-raised in the test that needs the server
            self.error = e

    def wait(self) -> BentoServer:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.server


@pytest.fixture(scope="module", autouse=True)
def _overloaded_embedder_start(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_models: object
) -> Iterator[BackgroundStart | None]:
    """An Embedder alone with a queue of 32 inputs, batches of 1 and a 1 ms queue wait: easy to overload.

    Started at the beginning of the module (only if a selected test needs it), in the background.
    """
    wanted = any(
        "overloaded_embedder" in getattr(item, "fixturenames", ()) and item.module is request.module
        for item in request.session.items
    )
    if not wanted:
        yield None
        return
    tmp = tmp_path_factory.mktemp("overloaded")
    env = bento_env(tmp, MMSEARCH_MAX_QUEUE_SIZE="32", MMSEARCH_MAX_BATCH_SIZE="1", MMSEARCH_MAX_QUEUE_WAIT_MS="1")
    bg = BackgroundStart(BentoServer([BENTOML, "serve", "service.embedder:Embedder"], env, tmp / "server.log"))
    try:
        yield bg
    finally:
        bg.thread.join()
        bg.server.kill()  # a throwaway server: no need to wait for a graceful shutdown


@pytest.fixture(scope="module")
def overloaded_embedder(_overloaded_embedder_start: BackgroundStart | None) -> BentoServer:
    assert _overloaded_embedder_start is not None
    return _overloaded_embedder_start.wait()


def test_rate_limit_and_unavailable(kind: str, overloaded_embedder: BentoServer, image_dir: Path) -> None:
    c = open_client(kind, overloaded_embedder.url, max_retries=0)
    try:
        with pytest.raises(RateLimitError) as e:  # 33 inputs never fit a queue of 32
            c.encode([f"text {i}" for i in range(33)])
        assert e.value.status_code == 429 and e.value.retry_after is not None and e.value.retry_after >= 1
        with pytest.raises(ServiceUnavailableError) as e2:  # 32 images run one at a time: the last wait > 1 ms
            c.encode([image_dir / f"img{i}.png" for i in range(32)])
        assert e2.value.status_code == 503 and e2.value.retry_after is not None
    finally:
        c.close()
    # with retries, a 429 is retried after Retry-After and still surfaces as RateLimitError
    retrying = open_client(kind, overloaded_embedder.url, max_retries=1)
    try:
        t0 = time.monotonic()
        with pytest.raises(RateLimitError):
            retrying.encode([f"text {i}" for i in range(33)])
        assert time.monotonic() - t0 >= 0.9
    finally:
        retrying.close()


# ------------------------------------------------------------------------------------------------- CLI
def run_cli(server_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    env["MMSEARCH_URL"] = server_url
    return subprocess.run(  # stdin is not a terminal, as in a script or CI
        [MMSEARCH_CLI, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def cli_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_corpus")
    write_images(root / "photos", 200)
    (root / "notes").mkdir()
    for i in range(10):
        (root / "notes" / f"note{i}.txt").write_text(f"note number {i} about subject {i * 7}\n")
    return root


@pytest.fixture(scope="module")
def cli_collection(search_server: BentoServer, cli_corpus: Path) -> tuple[str, float]:
    coll = fresh("cli")
    t0 = time.monotonic()
    first = run_cli(search_server.url, "index", str(cli_corpus), "-c", coll, "--batch-size", "64", "--concurrency", "4")
    elapsed = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == "indexed 210, skipped 0, failed 0"
    assert "210/210" in first.stderr  # the progress bar (rich, on stderr)
    return coll, elapsed


def test_cli_index_is_fast_and_rerun_safe(
    search_server: BentoServer, cli_corpus: Path, cli_collection: tuple[str, float]
) -> None:
    coll, elapsed = cli_collection
    print(f"mmsearch index: 210 files in {elapsed:.2f}s")
    assert elapsed < 30
    counts = {c.name: c.count for c in Client(search_server.url).collections().collections}
    assert counts[coll] == 210
    again = run_cli(search_server.url, "index", str(cli_corpus), "-c", coll, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "indexed 0, skipped 210, failed 0"
    assert again.stderr == ""
    listed = run_cli(search_server.url, "collections")
    assert listed.returncode == 0
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(coll))
    assert row == [coll, "210", str(DIM), MODEL, "no"]  # last column: calibrated


def test_cli_search_embed_rerank_health(
    search_server: BentoServer, cli_corpus: Path, cli_collection: tuple[str, float]
) -> None:
    coll, _ = cli_collection
    url = search_server.url
    res = run_cli(url, "search", "note number 3 about subject 21", "-c", coll, "-k", "3", "--no-rerank")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"3 hits from '{coll}' (not reranked")
    assert lines[1].split() == ["#", "id", "score", "retrieval", "rerank", "content"]
    assert lines[2].startswith("1 ") and "note number 3 about subject 21" in lines[2] and len(lines) == 5

    reranked = run_cli(url, "search", "a photo", "-c", coll, "--top-k", "5", "--candidates", "20")
    assert reranked.returncode == 0, reranked.stderr
    assert "(reranked" in reranked.stdout.splitlines()[0] and len(reranked.stdout.splitlines()) == 7

    photo = cli_corpus / "photos" / "img17.png"
    by_image = run_cli(url, "search", "--image", str(photo), "-c", coll, "-k", "2", "--no-rerank")
    assert by_image.returncode == 0, by_image.stderr
    assert f"[image] {photo}" in by_image.stdout.splitlines()[2]

    filtered = run_cli(url, "search", "x", "-c", coll, "--filter", '{"filename": "note4.txt"}', "--no-rerank", "--json")
    assert filtered.returncode == 0, filtered.stderr
    assert '"note number 4 about subject 28\\n"' in filtered.stdout

    embed = run_cli(url, "embed", "a red bicycle", "--query")
    assert embed.returncode == 0, embed.stderr
    assert embed.stdout.startswith(f"model: {MODEL}\ndims: {DIM}\n[")
    embed_img = run_cli(url, "embed", "--image", str(photo), "--json", "--dimensions", "8")
    assert embed_img.returncode == 0, embed_img.stderr
    assert '"dimensions":8' in embed_img.stdout

    rerank = run_cli(url, "rerank", "red bike", "a red bicycle", "a blue car", "a tree", "--top-n", "2")
    assert rerank.returncode == 0, rerank.stderr
    out = rerank.stdout.splitlines()
    assert out[0].startswith("reranked by ") and out[1].split() == ["#", "doc", "score", "text"] and len(out) == 4

    health = run_cli(url, "health")
    assert health.returncode == 0 and health.stdout.strip() == f"{url}: live=yes ready=yes"


def test_cli_top_k_above_candidates_like_server_and_client(
    search_server: BentoServer, cli_collection: tuple[str, float]
) -> None:
    """``--top-k 8 --candidates 3``: the shortlist is raised to 8, exactly as the server and the client do."""
    import json

    coll, _ = cli_collection
    url = search_server.url
    for rerank_flag, rerank in (("--no-rerank", False), (None, True)):
        argv = ["search", "a photo", "-c", coll, "--top-k", "8", "--candidates", "3", "--json"]
        res = run_cli(url, *argv, *([rerank_flag] if rerank_flag else []))
        assert res.returncode == 0 and res.stderr == "", res.stderr
        cli = json.loads(res.stdout)
        body = {"collection": coll, "query": "a photo", "top_k": 8, "candidates": 3, "rerank": rerank}
        server = httpx.post(f"{url}/search", json=body, timeout=60)
        assert server.status_code == 200, server.text
        client = Client(url).search("a photo", collection=coll, top_k=8, candidates=3, rerank=rerank)
        ids = [h["id"] for h in cli["hits"]]
        assert len(ids) == 8 and cli["reranked"] is rerank
        assert ids == [h["id"] for h in server.json()["hits"]] == [h.id for h in client.hits]


def test_cli_drop(search_server: BentoServer) -> None:
    import json

    url = search_server.url
    coll = fresh("drop")
    Client(url).upsert([Document("a", text="alpha"), Document("b", text="beta")], collection=coll)

    def names() -> set[str]:
        return {c.name for c in Client(url).collections().collections}

    refused = run_cli(url, "drop", coll)  # no --yes and stdin is not a terminal: nothing is dropped
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"mmsearch: error: refusing to drop {coll!r} without --yes (standard input is not a terminal)"
    ]
    assert coll in names()

    dropped = run_cli(url, "drop", coll, "--yes")
    assert dropped.returncode == 0 and dropped.stdout.strip() == f"dropped {coll}", dropped.stderr
    assert coll not in names()
    search = run_cli(url, "search", "alpha", "-c", coll, "--no-rerank")
    assert search.returncode == 1 and "404 collection_not_found" in search.stderr

    again = run_cli(url, "drop", coll, "-y")  # gone: 404, one line, exit 1
    assert again.returncode == 1 and again.stdout == ""
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmsearch: error: 404 collection_not_found"), lines
    missing_ok = run_cli(url, "drop", coll, "--yes", "--missing-ok")
    assert missing_ok.returncode == 0 and missing_ok.stdout.strip() == f"{coll}: no such collection"
    as_json = run_cli(url, "drop", coll, "--yes", "--missing-ok", "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == {"collection": coll, "dropped": False}


def test_cli_errors_are_one_line(search_server: BentoServer, cli_corpus: Path) -> None:
    missing = run_cli(search_server.url, "search", "x", "-c", fresh("missing"))
    assert missing.returncode == 1 and missing.stdout == ""
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmsearch: error: 404 collection_not_found")

    pair_err = run_cli(search_server.url, "embed", "caption", "--image", str(cli_corpus / "photos" / "img1.png"))
    assert pair_err.returncode == 1 and len(pair_err.stderr.strip().splitlines()) == 1
    assert "unsupported_modality" in pair_err.stderr

    down = run_cli(f"http://127.0.0.1:{free_port()}", "health")
    assert down.returncode == 1 and "live=no ready=no" in down.stdout

    nothing = run_cli(search_server.url, "index", str(cli_corpus / "does-not-exist"))
    assert nothing.returncode == 1 and nothing.stderr.strip().endswith("no such file or directory")

    usage = run_cli(search_server.url, "search", "x", "--top-k", "0")
    assert usage.returncode == 2
    for argv in (("search",), ("search", "x", "--filter", "{not json")):  # wrong command lines: exit 2, one line
        wrong = run_cli(search_server.url, *argv)
        assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr


def test_cli_index_reports_failed_files(search_server: BentoServer, tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("a good text file")
    (tmp_path / "corrupt.png").write_bytes(CORRUPT_PNG)  # PNG magic, undecodable: refused by the server
    (tmp_path / "text.png").write_text("not an image at all")  # refused by the client before sending
    (tmp_path / "empty.md").write_text("  \n")  # nothing to index: skipped
    (tmp_path / "ignored.csv").write_text("a,b")  # unsupported extension: not scanned
    res = run_cli(search_server.url, "index", str(tmp_path), "-c", fresh("cli"), "--no-progress")
    assert res.returncode == 1
    assert res.stdout.strip() == "indexed 1, skipped 2, failed 2"  # skipped: empty.md and ignored.csv
    assert "mmsearch: skipped 1 file(s) of an unsupported type (.csv)" in res.stderr.splitlines()
    failed = sorted(line for line in res.stderr.splitlines() if line.startswith("mmsearch: failed: "))
    assert len(failed) == 2
    assert failed[0].startswith(f"mmsearch: failed: {tmp_path / 'corrupt.png'}: not_an_image: ")
    assert failed[1].startswith(f"mmsearch: failed: {tmp_path / 'text.png'}: not a recognised image format")
    assert all(line.count("corrupt.png") + line.count("text.png") == 1 for line in failed)  # each named once
    assert not any("documents[" in line for line in failed)  # no batch positions
