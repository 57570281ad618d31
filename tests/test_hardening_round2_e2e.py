"""Hardening round two (issue #16), one test per class, against real bentos on loopback.

An Embedder and a Reranker (small limits: see ENV) serve two Search processes by URL, one on LanceDB and one on
Milvus Lite, so that every validation case is checked on both backends. Memory classes measure the RSS of the
worker processes before, at peak and after; availability classes run a well-behaved client during the attack and
assert it is served (never refused or reset) and print its p95. The issue's timing bound (p95 under 1 s on the tiny
profile) is measured by ``python -m bench.attacks`` (bench/RESULTS.md), not asserted here: timings on shared CI
machines are noise.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from PIL import Image

from bench.support.attacks import RssSampler, measure, settled_rss, start_slow_clients
from bench.support.metrics import samples
from bench.support.servers import BentoServer
from service.index import IndexRecord
from service.index.factory import open_index
from tests.conftest import serve_bento
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
KEY = "round-two-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MiB = 2**20
ENV = {
    "MMSEARCH_MAX_TEXT_CHARS": "4000",
    "MMSEARCH_MAX_MODEL_TOKENS": "256",
    "MMSEARCH_MAX_DOCUMENTS_PER_REQUEST": "40",
    "MMSEARCH_MAX_CANDIDATES": "100",
    "MMSEARCH_MAX_IMAGE_PIXELS": "16000000",
    "MMSEARCH_MAX_REQUEST_PIXELS": "16000000",
    "MMSEARCH_MAX_INFLIGHT_PIXELS": "20000000",
    "MMSEARCH_PIXEL_WAIT_S": "2",
}


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory, tiny_models: Any) -> Iterator[BentoServer]:
    yield from serve_bento(tmp_path_factory.mktemp("r2-embedder"), "service.embedder:Embedder", **ENV)


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory, tiny_models: Any) -> Iterator[BentoServer]:
    yield from serve_bento(tmp_path_factory.mktemp("r2-reranker"), "service.reranker:Reranker", **ENV)


def _search(tmp: Path, embedder: BentoServer, reranker: BentoServer, index: str) -> Iterator[BentoServer]:
    yield from serve_bento(
        tmp,
        "service.search:Search",
        **ENV,
        MMSEARCH_API_KEYS=KEY,
        MMSEARCH_EMBEDDER_URL=embedder.url,
        MMSEARCH_RERANKER_URL=reranker.url,
        MMSEARCH_INDEX_URI=index,
        MMSEARCH_HEADER_TIMEOUT_S="2",
        MMSEARCH_BODY_TIMEOUT_S="2",
        MMSEARCH_MAX_CONNECTIONS="256",
    )


@pytest.fixture(scope="module")
def lance(
    tmp_path_factory: pytest.TempPathFactory, embedder: BentoServer, reranker: BentoServer
) -> Iterator[BentoServer]:
    tmp = tmp_path_factory.mktemp("r2-lance")
    yield from _search(tmp, embedder, reranker, str(tmp / "index"))


@pytest.fixture(scope="module")
def milvus(
    tmp_path_factory: pytest.TempPathFactory, embedder: BentoServer, reranker: BentoServer
) -> Iterator[BentoServer]:
    tmp = tmp_path_factory.mktemp("r2-milvus")
    yield from _search(tmp, embedder, reranker, f"milvus:{tmp / 'index.db'}")


@pytest.fixture(scope="module")
def seeded(lance: BentoServer) -> str:
    docs = [{"id": f"d{i}", "text": f"slide {i} about revenue and churn", "metadata": {"n": i}} for i in range(30)]
    r = httpx.post(f"{lance.url}/upsert", json={"collection": "seed", "documents": docs}, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return "seed"


def _search_call(url: str, collection: str) -> Any:
    body = {"collection": collection, "query": "revenue", "top_k": 3, "candidates": 10, "rerank": False}
    return lambda c: c.post(f"{url}/search", json=body, headers=AUTH)


def _bomb(side: int, seed: int) -> str:
    buf = io.BytesIO()
    img = Image.new("1", (side, side))
    img.putpixel((seed % side, 0), 1)
    img.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# --- 1. decoded-pixel budget ------------------------------------------------------------------------------------


def test_decoded_pixels_are_bounded_per_request_and_per_worker(embedder: BentoServer) -> None:
    """A few KB of PNG per image, 16 megapixels each: over the per-request budget -> 413 naming the image; many at
    once -> the worker holds at most its in-flight budget (the rest wait, then 503), and RSS returns to baseline."""
    url = embedder.url
    worker = embedder.entry_worker()
    httpx.post(f"{url}/encode", json={"inputs": [{"image": _bomb(64, 0)}]}, timeout=60)  # warm up
    two = httpx.post(f"{url}/encode", json={"inputs": [{"image": _bomb(4000, 1)}, {"image": _bomb(4000, 2)}]})
    assert two.status_code == 413 and two.json()["field"] == "inputs[1].image", two.text
    assert "MMSEARCH_MAX_REQUEST_PIXELS" in two.json()["error"] and len(two.request.content) < 50_000

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            return await asyncio.gather(
                *(c.post("/encode", json={"inputs": [{"image": _bomb(4000, 10 + i)}]}) for i in range(6))
            )

    before = worker.memory_info().rss
    with RssSampler([worker.pid]) as rss:
        responses = asyncio.run(burst())
    after = settled_rss(worker, before + 60 * MiB)
    codes = sorted(r.status_code for r in responses)
    print(
        f"\npixel burst: {codes}; worker RSS before {before / MiB:.0f} MiB, peak {rss.peak / MiB:.0f}, after "
        f"{after / MiB:.0f}"
    )
    assert set(codes) <= {200, 503} and codes[0] == 200
    for r in responses:
        if r.status_code == 503:
            assert r.json()["code"] == "pixel_budget_busy" and int(r.headers["Retry-After"]) >= 1
    # 20 MP in flight at ~14 bytes/pixel (decoded RGB + preprocessing), with room for the allocator: << 6 x 16 MP
    assert rss.peak - before < 450 * MiB
    assert after - before < 60 * MiB  # back to baseline


# --- 2. slow clients -----------------------------------------------------------------------------------------


CONNECTIONS = 600


def _closes(url: str) -> dict[str, float]:
    """Search's refusals (connections it closed) by reason."""
    return {labels["reason"]: v for labels, v in samples(url, "mmsearch_refusals_total", service="search") if v}


def test_slow_clients_are_cut_off_and_searches_stay_served(lance: BentoServer, seeded: str) -> None:
    """600 connections, over twice the cap of 256, drip requests (half headers, half bodies with a valid key) and
    come back when closed.

    Mechanism asserted here: every slow connection is cut (deadlines, cap), the well-behaved client is let in past
    the cap and answered, never with the 429 of a full concurrency limit. The issue's p95 < 1 s is printed here and
    measured by ``python -m bench.attacks`` (bench/RESULTS.md)."""
    attack = start_slow_clients(lance.port, connections=CONNECTIONS, seconds=10, key=KEY)
    try:
        # the attack is established: the connection cap is full and churning (newcomers evicting or closed)
        wait_until(lambda: _closes(lance.url).keys() & {"evicted", "over_capacity"}, 30, "the cap is full")
        lat = measure(_search_call(lance.url, seeded), seconds=6)
    finally:
        out, _ = attack.communicate(timeout=60)
    stats = json.loads(out)
    closes = _closes(lance.url)
    print(
        f"\nslow clients: {stats}; server closes {closes}; /search p95 {lat.p95 * 1000:.0f} ms over {len(lat.seconds)}"
        f"; statuses {sorted(set(lat.statuses))}; errors {lat.errors[:3]}; load {os.getloadavg()}"
    )
    assert 429 not in lat.statuses and 0 not in lat.statuses, lat.errors  # never refused, never reset
    assert lat.statuses.count(200) >= 0.8 * len(lat.statuses), lat.errors
    assert stats["closed_by_server"] > CONNECTIONS  # every slow connection was cut, most of them several times
    # Cut by a read deadline, or (over the cap) evicted by a newcomer with a complete request head or closed as a
    # newcomer without one. Which of these cuts a given header-dripping connection depends on timing: when the
    # cap churns fast it is evicted before its 2 s header deadline, so only the sum is asserted.
    assert closes.get("header_timeout", 0) + closes.get("body_timeout", 0) > 0, closes
    assert closes.get("evicted", 0) > 0 and closes.get("over_capacity", 0) > 0, closes


# --- 3. authenticate before reading a body -------------------------------------------------------------------


def _chunked_post_without_key(port: int, mib: int) -> tuple[bytes, int]:
    """Send a chunked POST without a key; return the start of the answer and how many body bytes got out."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    s.sendall(
        b"POST /upsert HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
    sent, answer = 0, b""
    try:
        s.sendall(chunk)
        sent += 0x100000
        answer = s.recv(200)
        for _ in range(mib - 1):
            s.sendall(chunk)
            sent += 0x100000
    except OSError:
        pass
    finally:
        s.close()
    return answer, sent


def test_unauthenticated_bodies_are_refused_before_they_are_read(lance: BentoServer) -> None:
    worker = lance.entry_worker()
    before = worker.memory_info().rss
    with RssSampler([worker.pid]) as rss:
        results = [_chunked_post_without_key(lance.port, 60) for _ in range(8)]
    after = worker.memory_info().rss
    print(
        f"\n8 x 60 MiB without a key: sent {[s // MiB for _, s in results]} MiB; RSS before {before / MiB:.0f}, "
        f"peak {rss.peak / MiB:.0f}, after {after / MiB:.0f} MiB"
    )
    for answer, sent in results:
        assert answer.startswith(b"HTTP/1.1 401")
        assert sent < 16 * MiB  # the server stopped reading: 4 MiB of linger plus socket buffers
    assert rss.peak - before < 30 * MiB and after - before < 30 * MiB


# --- 4. a poisoned stored document --------------------------------------------------------------------------


def test_a_stored_document_cannot_break_search(lance: BentoServer, seeded: str, tmp_path: Path) -> None:
    too_long = "x" * 4001  # over MMSEARCH_MAX_TEXT_CHARS
    doc = {"id": "poison", "text": too_long, "embedding": [1.0] * 16}
    r = httpx.post(f"{lance.url}/upsert", json={"collection": seeded, "documents": [doc]}, headers=AUTH, timeout=60)
    assert r.status_code == 413 and r.json()["field"] == "documents[0].text", r.text  # every path checks the text
    embedded = {"collection": seeded, "documents": [{"id": "poison", "text": too_long}]}
    r = httpx.post(f"{lance.url}/upsert", json=embedded, headers=AUTH, timeout=60)
    assert r.status_code == 413 and r.json()["field"] == "documents[0].text", r.text  # same rule, same answer
    # A document stored before that check existed: written straight into the index, as an older version would,
    # with the query's own embedding so that vector retrieval shortlists it first.
    index_dir = Path(lance.env["MMSEARCH_INDEX_URI"])
    q = httpx.post(f"{lance.url}/encode", json={"inputs": ["revenue"], "input_type": "query"}, headers=AUTH).json()
    with open_index(str(index_dir)) as index:
        index.upsert(seeded, [IndexRecord("poison", too_long, None, {}, q["embeddings"][0])])
    for mode in (True, "auto"):
        body = {"collection": seeded, "query": "revenue", "mode": "vector", "top_k": 10, "candidates": 10}
        r = httpx.post(f"{lance.url}/search", json={**body, "rerank": mode}, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert r.json()["reranked"] is True and hits[-1]["id"] == "poison" and hits[-1]["rerank_score"] is None, hits
        assert all(h["rerank_score"] is not None for h in hits[:-1])


# --- 5. model-side limits -------------------------------------------------------------------------------------


def test_long_inputs_are_truncated_to_the_models_token_limit(reranker: BentoServer) -> None:
    worker = reranker.entry_worker()
    info = httpx.post(f"{reranker.url}/info", json={}).json()
    assert info["max_tokens"] == 256  # the VLM reranker declares no limit of its own: MMSEARCH_MAX_MODEL_TOKENS
    long_query = "revenue " * 499  # 3,992 characters: within MMSEARCH_MAX_TEXT_CHARS
    before = worker.memory_info().rss
    with RssSampler([worker.pid]) as rss:
        r = httpx.post(
            f"{reranker.url}/rerank", json={"query": long_query, "documents": [long_query, "short"]}, timeout=120
        )
    assert r.status_code == 200, r.text
    after = settled_rss(worker, before + 60 * MiB)
    print(f"\nlong rerank: RSS before {before / MiB:.0f}, peak {rss.peak / MiB:.0f}, after {after / MiB:.0f} MiB")
    assert rss.peak - before < 200 * MiB  # tens of GB before the token limit
    assert after - before < 60 * MiB


# --- 6. filter cost -------------------------------------------------------------------------------------------


def test_costly_filters_are_refused_and_do_not_slow_others(lance: BentoServer, seeded: str) -> None:
    url = lance.url
    base = {"collection": seeded, "query": "revenue", "top_k": 3, "rerank": False}
    huge = {f"k{i}": {"$in": [f"value-{v:06d}" for v in range(1024)]} for i in range(32)}  # ~520 KB
    r = httpx.post(f"{url}/search", json={**base, "filter": huge}, headers=AUTH, timeout=60)
    assert r.status_code == 400 and r.json()["field"] == "filter" and "256 conditions" in r.json()["error"], r.text
    at_limit = {f"k{i}": {"$in": [f"v{v}" for v in range(31)]} for i in range(8)}  # 248 terms: allowed
    ok = httpx.post(f"{url}/search", json={**base, "filter": at_limit}, headers=AUTH, timeout=60)
    assert ok.status_code == 200, ok.text

    async def attack(stop: float) -> int:
        sent = 0
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as c:
            while time.monotonic() < stop:
                await asyncio.gather(*(c.post("/search", json={**base, "filter": at_limit}) for _ in range(6)))
                sent += 6
        return sent

    import threading

    stop = time.monotonic() + 10
    sent: list[int] = []
    attacker = threading.Thread(target=lambda: sent.append(asyncio.run(attack(stop))))
    attacker.start()
    lat = measure(_search_call(url, seeded), seconds=8)
    attacker.join()
    print(f"\nfilters at the limit, 6 at a time ({sent[0]} sent): /search p95 {lat.p95 * 1000:.0f} ms")
    assert set(lat.statuses) == {200}, lat.errors  # served throughout; the p95 goal is measured in bench.attacks


# --- 7. huge arrays -----------------------------------------------------------------------------------------


def test_huge_arrays_are_refused_without_stalling_searches(lance: BentoServer, seeded: str) -> None:
    docs = [{"id": f"doc-{i}", "text": f"text {i}"} for i in range(300_000)]
    body = json.dumps({"collection": seeded, "documents": docs}).encode()
    import threading

    result: dict[str, Any] = {}

    def flood() -> None:
        for _ in range(3):
            t0 = time.perf_counter()
            r = httpx.post(
                f"{lance.url}/upsert", content=body, headers={**AUTH, "content-type": "application/json"}, timeout=120
            )
            result.setdefault("codes", []).append(r.status_code)
            result.setdefault("seconds", []).append(time.perf_counter() - t0)
            result["last"] = r.json()

    attacker = threading.Thread(target=flood)
    attacker.start()
    lat = measure(_search_call(lance.url, seeded), seconds=6)
    attacker.join()
    print(
        f"\n300,000-document upserts: {result['codes']} in {[round(s, 2) for s in result['seconds']]} s; "
        f"/search p95 {lat.p95 * 1000:.0f} ms"
    )
    assert result["codes"] == [413] * 3 and result["last"]["field"] == "documents"
    assert "MMSEARCH_MAX_DOCUMENTS_PER_REQUEST" in result["last"]["error"]
    assert set(lat.statuses) == {200}, lat.errors  # served throughout; the p95 goal is measured in bench.attacks


# --- 8. no 500 for input that passes validation; both backends agree ----------------------------------------

BAD_UPSERTS: list[tuple[str, dict[str, Any], str]] = [
    ("too many metadata keys", {"metadata": {f"k{i}": i for i in range(65)}}, "documents.0.metadata"),
    ("too many list values", {"metadata": {"k": list(range(1025))}}, "documents.0.metadata"),
    ("integer beyond 64 bits", {"metadata": {"k": 2**64}}, "documents.0.metadata"),
    ("text over 65,535 UTF-8 bytes", {"text": "€" * 21_846}, "documents.0.text"),
    ("id ending in a newline", {"id": "doc\n"}, "documents.0.id"),
    ("id with a NUL", {"id": "a\x00b"}, "documents.0.id"),
    ("metadata key ending in a newline", {"metadata": {"k\n": 1}}, "documents.0.metadata"),
]
BAD_EMBEDDINGS = [[1e38] * 16, [1e-45] * 16, [1e-30] * 16]


@pytest.mark.parametrize("backend", ["lance", "milvus"])
def test_valid_looking_input_gets_a_4xx_naming_the_field_on_both_backends(backend: str, request: Any) -> None:
    server: BentoServer = request.getfixturevalue(backend)
    url = server.url

    def upsert(raw: str | dict[str, Any], collection: str = "val") -> httpx.Response:
        content = raw if isinstance(raw, str) else json.dumps(raw)
        headers = {**AUTH, "content-type": "application/json"}
        return httpx.post(f"{url}/upsert", content=content, headers=headers, timeout=60)

    for name, change, loc in BAD_UPSERTS:
        r = upsert({"collection": "val", "documents": [{"id": "a", "text": "x", **change}]})
        assert r.status_code == 400, (name, r.status_code, r.text)
        field = r.json()["field"] or ""  # native error shape: the field at fault, e.g. documents[0].metadata
        assert field.replace("[", ".").replace("]", "") == loc, (name, r.text)
    for token in ("NaN", "Infinity"):
        r = upsert(
            '{"collection": "val", "documents": [{"id": "a", "text": "x", "metadata": {"v": TOKEN}}]}'.replace(
                "TOKEN", token
            )
        )
        assert r.status_code == 400 and "finite" in r.text, r.text
    for vector in BAD_EMBEDDINGS:
        r = upsert({"collection": "val", "documents": [{"id": "a", "embedding": vector}]})
        assert r.status_code == 422 and r.json()["field"] == "documents[0].embedding", r.text
    r = upsert({"collection": "val\n", "documents": [{"id": "a", "text": "x"}]})
    assert r.status_code == 400 and "collection" in r.text
    for route in ("/get", "/delete"):
        r = httpx.post(f"{url}{route}", json={"collection": "val", "ids": ["a\n"]}, headers=AUTH)
        assert r.status_code == 400 and (r.json()["field"] or "").startswith("ids[0]"), r.text
    ok = upsert({"collection": "val", "documents": [{"id": "a", "text": "x", "embedding": [1e18] * 16}]})
    assert ok.status_code == 200, ok.text
    collections = httpx.post(f"{url}/collections", json={}, headers=AUTH).json()["collections"]
    assert [c["name"] for c in collections if c["name"].startswith("val")] == ["val"]


# --- 10. consistent limits ------------------------------------------------------------------------------------


def test_each_limit_has_one_source_and_holds_at_its_boundary(lance: BentoServer) -> None:
    url = lance.url
    docs = [{"id": f"b{i}", "text": f"boundary doc {i}"} for i in range(41)]
    for n, code in ((40, 200), (41, 413)):
        r = httpx.post(f"{url}/upsert", json={"collection": "limits", "documents": docs[:n]}, headers=AUTH, timeout=120)
        assert r.status_code == code, r.text
    assert r.json()["field"] == "documents" and "at most 40" in r.json()["error"]
    for i in range(2):  # 100 documents in all: enough for candidates == max_candidates
        more = [{"id": f"m{i}-{j}", "text": f"more {i} {j}"} for j in range(40)]
        assert (
            httpx.post(
                f"{url}/upsert", json={"collection": "limits", "documents": more}, headers=AUTH, timeout=120
            ).status_code
            == 200
        )
    for candidates, code in ((40, 200), (41, 200), (100, 200), (101, 422)):
        body = {"collection": "limits", "query": "boundary", "top_k": 5, "candidates": candidates, "rerank": True}
        r = httpx.post(f"{url}/search", json=body, headers=AUTH, timeout=120)
        assert r.status_code == code, (candidates, r.text)
        if code == 200:  # shortlists beyond the reranker's 40 documents per request are reranked in parts
            assert r.json()["reranked"] is True and all(h["rerank_score"] is not None for h in r.json()["hits"])


# --- 11. storage growth ---------------------------------------------------------------------------------------


def test_deletes_that_match_nothing_write_nothing(lance: BentoServer, seeded: str) -> None:
    """The review's loop: /delete of ids that are not there wrote a table version (and files) every time."""
    index_dir = Path(lance.env["MMSEARCH_INDEX_URI"])

    def files() -> dict[Path, tuple[int, int]]:
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in index_dir.rglob("*") if p.is_file()}

    before = files()
    for i in range(20):
        r = httpx.post(f"{lance.url}/delete", json={"collection": seeded, "ids": [f"nope-{i}"]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["deleted"] == 0, r.text
    assert files() == before
    body = {"collection": seeded, "documents": [{"id": "gone-soon", "text": "x"}]}
    for _ in range(3):  # a 503 is a documented transient answer (Retry-After): retried as a client would
        r = httpx.post(f"{lance.url}/upsert", json=body, headers=AUTH, timeout=60)
        if r.status_code != 503:
            break
        print("upsert answered 503, retrying:", r.text)
        time.sleep(min(5.0, float(r.headers.get("retry-after", "1"))))
    assert r.status_code == 200, r.text
    r = httpx.post(f"{lance.url}/delete", json={"collection": seeded, "ids": ["gone-soon"]}, headers=AUTH)
    assert r.json()["deleted"] == 1 and files() != before


# --- 9. storage faults ----------------------------------------------------------------------------------------


def test_disk_full_and_read_only_index_answer_503_and_take_readyz_down(lance: BentoServer, seeded: str) -> None:
    import resource

    url = lance.url
    worker = lance.entry_worker()
    doc = {"collection": seeded, "documents": [{"id": "big", "text": "y" * 3000, "embedding": [1.0] * 16}]}
    limits = worker.rlimit(psutil.RLIMIT_FSIZE)
    worker.rlimit(psutil.RLIMIT_FSIZE, (2048, limits[1]))  # "disk full": every write past 2 KB fails (EFBIG)
    try:
        r = httpx.post(f"{url}/upsert", json=doc, headers=AUTH, timeout=60)
        assert r.status_code == 503 and r.json()["code"] == "storage_unavailable", r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
    finally:
        worker.rlimit(psutil.RLIMIT_FSIZE, (resource.RLIM_INFINITY, limits[1]))
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:  # the probe write succeeds again
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert httpx.post(f"{url}/upsert", json=doc, headers=AUTH, timeout=60).status_code == 200

    index_dir = Path(lance.env["MMSEARCH_INDEX_URI"])
    paths = [index_dir, *index_dir.rglob("*")]
    make_ro = ["chattr", "+i"] if os.geteuid() == 0 else ["chmod", "a-w"]
    undo = ["chattr", "-i"] if os.geteuid() == 0 else ["chmod", "u+w"]
    subprocess.run([*make_ro, *map(str, paths)], check=True)
    try:
        r = httpx.post(f"{url}/upsert", json=doc, headers=AUTH, timeout=60)
        assert r.status_code == 503 and r.json()["code"] == "storage_unavailable", r.text
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
        search = httpx.post(f"{url}/search", json={"collection": seeded, "query": "x", "rerank": False}, headers=AUTH)
        assert search.status_code == 200  # reads still work
    finally:
        subprocess.run([*undo, *map(str, paths)], check=True)
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)


# --- 13 and 14: logs, framing ---------------------------------------------------------------------------------


def test_framing_and_logs(lance: BentoServer) -> None:
    s = socket.create_connection(("127.0.0.1", lance.port))
    s.settimeout(10)
    s.sendall(
        b"POST /search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert s.recv(200).startswith(b"HTTP/1.1 400")
    s.close()
    marker = "secret-input-7f3a"
    for _ in range(40):  # refused inputs
        httpx.post(f"{lance.url}/search", json={"query": marker, "top_k": -1}, headers=AUTH)
    for _ in range(40):  # clients that drop mid-body
        c = socket.create_connection(("127.0.0.1", lance.port))
        c.sendall(
            b"POST /upsert HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY.encode()
            + b'\r\nContent-Type: application/json\r\nContent-Length: 9999\r\n\r\n{"'
            + marker.encode()
        )
        c.close()
    time.sleep(1)
    log = lance.log_path.read_text(errors="replace")
    assert marker not in log and KEY not in log
    lines = log.splitlines()
    tracebacks = [i for i, line in enumerate(lines) if "Traceback" in line]
    assert not tracebacks, "\n".join(lines[max(0, tracebacks[0] - 5) : tracebacks[0] + 60])
    refused = [line for line in log.splitlines() if "Exception on /search" in line]
    assert 1 <= len(refused) <= 5 and all("[INFO]" in line for line in refused)  # one line each, rate-limited
