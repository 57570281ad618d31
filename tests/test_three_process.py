"""The Kubernetes shape on loopback: Embedder, Reranker, Reader and Search as separate processes started from the
BUILT bento with BentoML's per-service entry point (what deploy/kubernetes runs), Search wired to the others by URL.

- per-service start: ``python -m bentoml_cli._internal.start start-http-server --service-name <Name> [--depends
  Name=URL ...] --host H --port P <bento dir>``; Search also gets MMSEARCH_EMBEDDER_URL / MMSEARCH_RERANKER_URL.
  When both are given the URL in ``bentoml.depends(url=...)`` wins and the calls are JSON; with ``--depends`` alone
  they are ``application/vnd.bentoml+pickle`` (both work with 1.4.40).
- Reranker crash (SIGKILL of its process tree): ``rerank: true`` fails fast with 503 ``reranker_unavailable``,
  ``"auto"`` falls back to retrieval, ``false`` is unaffected, /readyz still answers; a Reranker restarted on the
  same port is picked up again without restarting Search.
- SIGTERM (what the kubelet sends to PID 1, i.e. the arbiter only): in-flight requests complete with 200 and every
  process exits within SHUTDOWN_BOUND_S (deploy/kubernetes terminationGracePeriodSeconds must exceed it plus the
  5 s preStop sleep).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from bench.support.metrics import metric_sum
from bench.support.servers import BentoServer, bento_env

pytestmark = pytest.mark.e2e

START = [sys.executable, "-m", "bentoml_cli._internal.start", "start-http-server"]
FAIL_FAST_S = 2.0  # a dead Reranker must not cost a /search more than this
RECOVERY_TIMEOUT_S = 30.0  # after the restarted Reranker is ready
SHUTDOWN_BOUND_S = 30.0  # measured ~1-3 s per standalone service; the composed `bentoml serve` can take 40-60 s
READYZ_BOUND_S = 5.0
DOCS = [
    {"id": f"d{i}", "text": f"doc {i} about {w}", "metadata": {"n": i}}
    for i, w in enumerate(["cats", "dogs", "fish", "birds", "trees", "boats"])
]
TIMINGS: dict[str, float] = {}


@dataclass
class Stack:
    """The four processes. Some tests kill one: ``ensure`` restarts what a test needs on the same port first, so
    each test sets up what it needs whatever ran before it (the Search a restarted Search replaces held the only
    copy of the index: ``seed`` writes the documents again, idempotently)."""

    bento: Path
    tmp: Path
    embedder: BentoServer
    reranker: BentoServer
    search: BentoServer
    specs: dict[str, tuple[tuple[str, ...], dict[str, str]]]  # how each was started: extra args and env
    extra: list[BentoServer] = field(default_factory=list)

    def ensure(self, *names: str) -> None:
        """Restart (same port, same arguments) each of ``names`` (``embedder``, ``reranker``, ``search``) whose
        process tree is gone."""
        for name in names:
            old: BentoServer = getattr(self, name)
            if old.proc is not None and old.proc.poll() is None:
                continue
            args, env = self.specs[name]
            new = service_server(self.bento, name.capitalize(), self.tmp, *args, port=old.port, **env)
            self.extra.append(new)
            timed_start(new, f"{name}_restart_s")
            setattr(self, name, new)


def seed(stack: Stack) -> None:
    r = httpx.post(f"{stack.search.url}/upsert", json={"collection": "c", "documents": DOCS}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["upserted"] == len(DOCS)


def service_server(bento: Path, name: str, tmp: Path, *args: str, port: int | None = None, **env: str) -> BentoServer:
    home = tmp / f"{name.lower()}-{len(list(tmp.glob(name.lower() + '-*')))}"
    home.mkdir(parents=True)
    e = bento_env(home, PYTHONUNBUFFERED="1", **env)  # access logs are read by the tests
    # import the bento's own src/, not the checkout's service code; the wire schema package (shipped in the bento as
    # a wheel built from this checkout) comes from the checkout, as it would from that wheel
    e["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "schema")
    return BentoServer([*START, "--service-name", name, *args, str(bento)], e, home / "server.log", port=port)


def timed_start(server: BentoServer, key: str) -> None:
    t0 = time.monotonic()
    server.start(ready_timeout=180)
    TIMINGS[key] = round(time.monotonic() - t0, 2)


def search(stack: Stack, rerank: bool | str, **kw: object) -> tuple[httpx.Response, float]:
    body = {"collection": "c", "query": "cats", "top_k": 3, "candidates": 6, "rerank": rerank, **kw}
    t0 = time.monotonic()
    r = httpx.post(f"{stack.search.url}/search", json=body, timeout=60)
    return r, time.monotonic() - t0


def tree(server: BentoServer) -> list[psutil.Process]:
    assert server.proc is not None
    parent = psutil.Process(server.proc.pid)
    return [parent, *parent.children(recursive=True)]


def sigterm_and_wait(server: BentoServer, bound: float) -> float:
    """SIGTERM the arbiter only (as the kubelet does to PID 1); seconds until the whole tree is gone."""
    procs = tree(server)
    t0 = time.monotonic()
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=bound)
    elapsed = time.monotonic() - t0
    assert not alive, f"still running {bound}s after SIGTERM: {alive}\n{server.tail()}"
    return elapsed


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: object, built_bento: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("three-process")
    bento = built_bento
    # batch size 1 keeps 16 x 64 inputs in flight for ~2 s (the graceful-shutdown test needs requests in flight)
    embedder_env = {"MMSEARCH_MAX_BATCH_SIZE": "1"}
    embedder = service_server(bento, "Embedder", tmp, **embedder_env)
    reranker = service_server(bento, "Reranker", tmp)
    reader = service_server(bento, "Reader", tmp)
    servers = [embedder, reranker, reader]
    extra: list[BentoServer] = []  # restarted services, added by the tests
    try:
        named = ((embedder, "embedder_start_s"), (reranker, "reranker_start_s"), (reader, "reader_start_s"))
        threads = [threading.Thread(target=timed_start, args=pair) for pair in named]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for srv, key in named:
            assert key in TIMINGS, f"{key[:-8]} did not start:\n{srv.tail()}"
        deps = [f"Embedder={embedder.url}", f"Reranker={reranker.url}", f"Reader={reader.url}"]
        search_args = tuple(arg for dep in deps for arg in ("--depends", dep))
        search_env = {
            "MMSEARCH_EMBEDDER_URL": embedder.url,
            "MMSEARCH_RERANKER_URL": reranker.url,
            "MMSEARCH_READER_URL": reader.url,
        }
        search_server = service_server(bento, "Search", tmp, *search_args, **search_env)
        servers.append(search_server)
        timed_start(search_server, "search_start_s")
        specs = {"embedder": ((), embedder_env), "reranker": ((), {}), "search": (search_args, search_env)}
        yield Stack(bento, tmp, embedder, reranker, search_server, specs, extra)
    finally:
        for srv in [*servers, *extra]:
            srv.stop()
        print(f"\nthree-process timings: {TIMINGS}")


def access_types(server: BentoServer, path: str) -> set[str]:
    """Content types of requests to ``path`` in a server's access log (waits a little for the log line)."""
    deadline = time.monotonic() + 5
    while True:
        out = set()
        for line in server.log_path.read_text(errors="replace").splitlines():
            if f"path={path}," in line:
                out.add(line.split(f"path={path},type=", 1)[1].split(",", 1)[0])
        if out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def in_progress(server: BentoServer, endpoint: str) -> int:
    """Requests the server has accepted and not yet answered (BentoML's request_in_progress gauge)."""
    return int(metric_sum(server.url, "bentoml_service_request_in_progress", endpoint=endpoint))


def test_search_wired_by_url_to_separate_processes(stack: Stack) -> None:
    stack.ensure("embedder", "reranker", "search")
    assert len(tree(stack.search)) == 2, "Search must not start its dependencies (arbiter + 1 worker only)"
    seed(stack)
    r, _ = search(stack, True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reranked"] is True
    assert len(body["hits"]) == 3
    assert all(h["rerank_score"] is not None and h["score"] == h["rerank_score"] for h in body["hits"])
    # the calls went over HTTP to the other processes; MMSEARCH_*_URL (depends(url=...)) beats --depends: JSON
    assert access_types(stack.embedder, "/encode") == {"application/json"}
    assert access_types(stack.reranker, "/rerank") == {"application/json"}
    assert httpx.get(f"{stack.search.url}/readyz", timeout=10).status_code == 200


def test_reranker_crash_fails_fast_then_recovers(stack: Stack) -> None:
    stack.ensure("embedder", "reranker", "search")
    seed(stack)
    assert search(stack, True)[0].status_code == 200  # keep-alive connection to the Reranker in Search's pool
    port = stack.reranker.port
    stack.reranker.kill()  # SIGKILL the whole tree: a crash, not a shutdown

    latencies = []
    for _ in range(3):
        r, dt = search(stack, True)
        latencies.append(dt)
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["code"] == "reranker_unavailable", r.text
        assert int(r.headers["retry-after"]) >= 1
    TIMINGS["fail_fast_max_s"] = round(max(latencies), 3)
    assert max(latencies) < FAIL_FAST_S, latencies

    r, dt = search(stack, "auto")
    assert r.status_code == 200, r.text
    assert dt < FAIL_FAST_S
    body = r.json()
    assert body["reranked"] is False and len(body["hits"]) == 3
    assert body["hits"][0]["id"] == "d0"
    assert all(h["rerank_score"] is None and h["score"] == h["retrieval_score"] for h in body["hits"])

    r, _ = search(stack, False)
    assert r.status_code == 200 and r.json()["reranked"] is False
    r = httpx.post(f"{stack.search.url}/encode", json={"inputs": ["still embeds"]}, timeout=30)
    assert r.status_code == 200, r.text

    # Search stays in service (rerank "auto"/false still work): /readyz must answer, not hang on the dead Reranker
    t0 = time.monotonic()
    try:
        ready = httpx.get(f"{stack.search.url}/readyz", timeout=READYZ_BOUND_S * 2)
    except httpx.TimeoutException:
        pytest.fail(f"Search /readyz hung >{READYZ_BOUND_S * 2}s with the Reranker down")
    TIMINGS["readyz_reranker_down_s"] = round(time.monotonic() - t0, 3)
    assert time.monotonic() - t0 < READYZ_BOUND_S
    assert ready.status_code == 200, ready.text

    stack.ensure("reranker")  # the same port (``port``): Search is not told
    assert stack.reranker.port == port
    t0 = time.monotonic()
    while True:
        r, _ = search(stack, True)
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        assert time.monotonic() - t0 < RECOVERY_TIMEOUT_S, f"no recovery: {r.text}"
        time.sleep(0.5)
    TIMINGS["recovery_after_restart_s"] = round(time.monotonic() - t0, 3)
    assert r.json()["reranked"] is True


def test_sigterm_drains_in_flight_requests(stack: Stack) -> None:
    stack.ensure("embedder")
    emb = stack.embedder
    done: list[float] = []
    lock = threading.Lock()

    def encode(i: int) -> tuple[int, float]:
        inputs = [f"req {i} text {j}" for j in range(64)]
        r = httpx.post(f"{emb.url}/encode", json={"inputs": inputs}, timeout=120)
        t = time.monotonic()
        with lock:
            done.append(t)
        assert r.status_code != 200 or len(r.json()["embeddings"]) == 64
        return r.status_code, t

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(encode, i) for i in range(16)]
        # SIGTERM once the server holds all 16 (accepted, not answered). A request still in the listen backlog at
        # SIGTERM is reset (ECONNRESET): that is what the 5 s preStop sleep in deploy/kubernetes is for.
        deadline = time.monotonic() + 60
        while (busy := in_progress(emb, "/encode")) + len(done) < 16:
            assert time.monotonic() < deadline, f"requests never reached the server: {busy} in progress"
            time.sleep(0.02)
        t_term = time.monotonic()
        with ThreadPoolExecutor(1) as waiter:
            exit_s = waiter.submit(sigterm_and_wait, emb, SHUTDOWN_BOUND_S)
            results = [f.result(timeout=SHUTDOWN_BOUND_S + 60) for f in futures]
            TIMINGS["embedder_sigterm_exit_s"] = round(exit_s.result(), 2)
    assert [code for code, _ in results] == [200] * 16
    in_flight = sum(t > t_term for _, t in results)
    TIMINGS["in_flight_at_sigterm"] = in_flight
    assert in_flight >= 4, f"only {in_flight} requests were still in flight at SIGTERM (busy={busy})"
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"{emb.url}/livez", timeout=2)
        pytest.fail("the Embedder still answers after its exit")


def test_search_and_reranker_exit_on_sigterm(stack: Stack) -> None:
    stack.ensure("reranker", "search")
    TIMINGS["search_sigterm_exit_s"] = round(sigterm_and_wait(stack.search, SHUTDOWN_BOUND_S), 2)
    TIMINGS["reranker_sigterm_exit_s"] = round(sigterm_and_wait(stack.reranker, SHUTDOWN_BOUND_S), 2)
