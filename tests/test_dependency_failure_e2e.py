"""A dependency that stops answering: Search's circuit breaker answers at once instead of after the rerank timeout,
probes it again (half-open) and closes when it is back; /info shows every dependency and its circuit."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from bench.support.servers import BentoServer
from tests.conftest import serve_bento, serve_wired_search

pytestmark = pytest.mark.e2e
RERANK_TIMEOUT_S = 2.0
OPEN_S = 3.0
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, model_urls: dict[str, str]
) -> Iterator[tuple[BentoServer, BentoServer]]:
    """A Reranker of this module's own (the tests freeze it) and a Search calling it by URL; Search reaches the
    session's Embedder and Reader by URL too."""
    reranker_gen = serve_bento(tmp_path_factory.mktemp("cb-reranker"), "service.reranker:Reranker")
    reranker = next(reranker_gen)
    try:
        search_gen = serve_wired_search(
            tmp_path_factory.mktemp("cb-search"),
            model_urls,
            MMSEARCH_RERANKER_URL=reranker.url,
            MMSEARCH_RERANK_TIMEOUT_S=str(RERANK_TIMEOUT_S),
            MMSEARCH_BREAKER_FAILURES="2",
            MMSEARCH_BREAKER_OPEN_S=str(OPEN_S),
        )
        search = next(search_gen)
        try:
            yield search, reranker
        finally:
            with contextlib.suppress(StopIteration):
                next(search_gen)
    finally:
        freeze(reranker, signal.SIGCONT)
        with contextlib.suppress(StopIteration):
            next(reranker_gen)
    print("\ncircuit breaker timings (s):", TIMINGS)


def freeze(server: BentoServer, sig: signal.Signals) -> None:
    """SIGSTOP/SIGCONT every process of a server: it keeps its sockets but answers nothing (a hung dependency)."""
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


def search(server: BentoServer, rerank: bool | str) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = httpx.post(
        f"{server.url}/search", json={"collection": "cb", "query": "alpha", "top_k": 2, "rerank": rerank}, timeout=60
    )
    return r, time.monotonic() - t0


def circuit(server: BentoServer) -> dict[str, object]:
    """Search's /info on the reranker; every other dependency (the Embedder and the Reader) is listed too, up and
    with a closed circuit whatever the reranker does."""
    info = httpx.post(f"{server.url}/info", json={}, timeout=30).json()
    for stage, service in (("embedder", "Embedder"), ("reader", "Reader")):
        dep = info[stage]
        assert dep["available"] is True and dep["service"] == service and dep["circuit"]["state"] == "closed", dep
    assert info["reranker"]["circuit"]["state"] in ("closed", "open", "half_open")
    return dict(info["reranker"])


def test_hung_reranker_trips_the_breaker_then_recovers(stack: tuple[BentoServer, BentoServer]) -> None:
    srv, reranker = stack
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(["alpha", "beta", "gamma"])]
    assert httpx.post(f"{srv.url}/upsert", json={"collection": "cb", "documents": docs}, timeout=60).status_code == 200
    r, _ = search(srv, True)
    assert r.status_code == 200 and r.json()["reranked"] is True
    healthy = circuit(srv)
    assert healthy["available"] is True and healthy["model"] == "mmsearch/tiny-random-qwen2vl-reranker"
    assert healthy["loading"]["name"] == healthy["model"]  # type: ignore[index]
    assert healthy["circuit"]["state"] == "closed"  # type: ignore[index]

    freeze(reranker, signal.SIGSTOP)
    for _ in range(2):  # each waits for the rerank timeout: these are the failures that trip the breaker
        r, dt = search(srv, True)
        assert r.status_code == 503 and r.json()["code"] == "reranker_timeout", r.text
        TIMINGS["timeout_s"] = round(dt, 3)
    down = circuit(srv)
    assert down["available"] is False and down["circuit"]["state"] == "open", down  # type: ignore[index]

    r, dt = search(srv, True)  # answered by the open circuit: no call, no waiting for the timeout
    TIMINGS["open_circuit_503_s"] = round(dt, 3)
    assert r.status_code == 503 and r.json()["code"] == "reranker_unavailable", r.text
    assert "circuit open" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
    assert dt < RERANK_TIMEOUT_S, dt
    r, dt = search(srv, "auto")
    TIMINGS["open_circuit_auto_s"] = round(dt, 3)
    assert r.status_code == 200 and r.json()["reranked"] is False and dt < RERANK_TIMEOUT_S
    # no call reached the hung reranker while the circuit was open: a call would have timed out and counted as
    # one more failure (a 503 reranker_timeout after RERANK_TIMEOUT_S), and a failed probe re-trips the circuit
    still = circuit(srv)["circuit"]
    assert still["trips"] == 1, still  # type: ignore[index]
    assert still["consecutive_failures"] == down["circuit"]["consecutive_failures"], (still, down)  # type: ignore[index]

    freeze(reranker, signal.SIGCONT)
    time.sleep(OPEN_S + 0.2)  # the circuit half-opens: the next request probes the reranker
    r, _ = search(srv, True)
    assert r.status_code == 200 and r.json()["reranked"] is True, r.text
    assert circuit(srv)["circuit"]["state"] == "closed"  # type: ignore[index]
