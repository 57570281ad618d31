"""GPU-shaped batching through the real bentos: the GPU-shaped model (``bench.gpu_shaped``, a fixed cost per batch
waiting without the GIL) plugged in through ``MMSEARCH_MODEL_FACTORY``; batch composition read from ``/metrics``.

Mechanisms only (what the batches held), never how fast: throughput against the ideal is ``bench.gpu_batching``.
Also ``MMSEARCH_TORCH_THREADS=auto`` in a standalone and in a composed bento.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from bench.support.metrics import metric_sum, samples
from bench.support.servers import BentoServer
from service.cpus import available_cpus
from tests.conftest import serve_bento

pytestmark = pytest.mark.e2e

GPU_SHAPED = {"MMSEARCH_MODEL_FACTORY": "bench.gpu_shaped:factory", "MMSEARCH_GPU_SHAPED": "fixed_ms=30,item_ms=0.5"}


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    yield from serve_bento(
        tmp_path_factory.mktemp("gpu-embedder"),
        "service.embedder:Embedder",
        MMSEARCH_MAX_BATCH_SIZE="8",
        MMSEARCH_BATCH_COALESCE_MS="1000",  # generous: composition must not depend on this machine's load
        MMSEARCH_TORCH_THREADS="auto",
        **GPU_SHAPED,
    )


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    yield from serve_bento(
        tmp_path_factory.mktemp("gpu-reranker"), "service.reranker:Reranker", MMSEARCH_MAX_BATCH_SIZE="8", **GPU_SHAPED
    )


def _batches(url: str, service: str) -> tuple[float, float]:
    """(batches, inputs) the model ran so far."""
    count = metric_sum(url, "mmsearch_model_batch_size_count", service=service)
    return count, metric_sum(url, "mmsearch_model_batch_size_sum", service=service)


async def _closed_loop(url: str, route: str, bodies: list[dict[str, object]], clients: int, rounds: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def client(i: int) -> None:
            for r in range(rounds):
                resp = await c.post(route, json=bodies[(i * rounds + r) % len(bodies)])
                assert resp.status_code == 200, resp.text[:200]

        await asyncio.gather(*(client(i) for i in range(clients)))


def test_info_reports_the_gpu_shaped_model_and_its_batching(embedder: BentoServer) -> None:
    info = httpx.post(f"{embedder.url}/info", json={}, timeout=10).json()
    assert info["model"] == "gpu-shaped" and info["accelerated"] is True
    assert info["batch_coalesce_ms"] == 1000 and info["max_batch_size"] == 8
    threads = info["torch_threads"]
    assert threads == {"threads": available_cpus(), "cpus": available_cpus(), "shared_by": 1, "source": "auto"}


def test_closed_loop_clients_get_full_batches(embedder: BentoServer) -> None:
    """8 one-input clients, 6 requests each, coalescing on: the batcher waits for every client answered lately
    instead of starting a batch with whichever came back first, so the clients do not settle into groups that
    alternate (12 batches of 4 before that was fixed; 15-17 with coalescing off). 6 full batches, or 7 when the
    clients' first requests straddle the first batch."""
    before = _batches(embedder.url, "embedder")
    bodies: list[dict[str, object]] = [{"inputs": [f"query {i}"], "input_type": "query"} for i in range(48)]
    asyncio.run(_closed_loop(embedder.url, "/encode", bodies, clients=8, rounds=6))
    after = _batches(embedder.url, "embedder")
    batches, inputs = after[0] - before[0], after[1] - before[1]
    assert inputs == 48
    assert batches <= 7, f"{batches} batches for 48 inputs from 8 clients (15-17 without coalescing)"


def test_reranker_packs_whole_requests(reranker: BentoServer) -> None:
    """Requests of 5 documents with at most 8 pairs a batch: two never fit together and none is split, so every
    batch holds exactly one request (FIFO by item would give 8 + 2 + ...)."""
    before = _batches(reranker.url, "reranker")
    bodies: list[dict[str, object]] = [
        {"query": f"query {i}", "documents": [f"document {i}-{j}" for j in range(5)]} for i in range(24)
    ]
    asyncio.run(_closed_loop(reranker.url, "/rerank", bodies, clients=6, rounds=4))
    after = _batches(reranker.url, "reranker")
    batches, pairs = after[0] - before[0], after[1] - before[1]
    assert pairs == 24 * 5 and batches == 24


def test_composed_model_services_share_the_cpus(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``bentoml serve service.search:Search`` starts the Embedder, the Reranker and the Reader together: with
    ``auto`` each gets a third of the CPUs (at least one thread), where the standalone Embedder above got all."""
    for server in serve_bento(
        tmp_path_factory.mktemp("composed-auto"), "service.search:Search", MMSEARCH_TORCH_THREADS="auto", **GPU_SHAPED
    ):
        threads = {labels["service"]: v for labels, v in samples(server.url, "mmsearch_model_threads")}
        share = max(1, available_cpus() // 3)
        assert threads == {"embedder": share, "reranker": share, "reader": share}, threads
