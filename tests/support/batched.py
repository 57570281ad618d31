"""Concurrent single-input requests queued together, to count the model calls that serve them.

With ``MMSEARCH_BATCH_COALESCE_MS`` at its CPU default (0) a batch starts as soon as the model is free, so how many
calls requests arriving one by one at an idle model share depends on their timing. Behind a bulk of the same lane
it does not: the bulk keeps the model busy, the single requests queue behind it in FIFO order, and batching must
serve them in ``ceil(n / max_batch_size)`` calls. The bulk is sent in requests of a multiple of ``max_batch_size``
inputs, so its own calls are all full and counted exactly, and whatever the lane ran beyond them is the singles'.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx

from bench.support.metrics import metric_sum


def lane_calls(url: str, service: str, lane: str) -> tuple[float, float]:
    """(model calls, inputs) of ``service``'s lane ``lane`` (e.g. ``document/text``) so far."""
    labels = {"service": service, "lane": lane}
    return (
        metric_sum(url, "mmsearch_model_batch_size_count", **labels),
        metric_sum(url, "mmsearch_model_batch_size_sum", **labels),
    )


@dataclass
class Batched:
    """What :func:`singles_behind_bulk` measured: the responses, and the lane's model calls and inputs from the
    moment the bulk was sent until every response was in."""

    bulk: list[httpx.Response]
    singles: list[httpx.Response]
    calls: float
    inputs: float


def singles_behind_bulk(
    url: str,
    route: str,
    bulk: list[dict[str, Any]],
    singles: list[dict[str, Any]],
    service: str,
    lane: str,
    max_batch_size: int,
    attempts: int = 3,
) -> Batched:
    """Send ``bulk`` (every request a multiple of ``max_batch_size`` inputs of ``lane``), wait until ``service``
    received all of it, send ``singles`` (one input of ``lane`` each) concurrently, and check they were all
    received while at least one full bulk batch was still queued ahead of them (else the model may have taken some
    of them alone: the setup failed, not batching). A failed setup (a starved client on a loaded machine sends the
    singles too slowly) is drained and tried again, up to ``attempts`` times; its calls are not counted."""
    items = ("inputs", "documents")
    n_bulk = sum(len(next(b[k] for k in items if k in b)) for b in bulk)
    assert n_bulk % max_batch_size == 0
    bulk_calls = n_bulk // max_batch_size

    def received() -> float:
        return metric_sum(url, "mmsearch_inputs_total", service=service)

    async def attempt(c: httpx.AsyncClient) -> Batched | str:
        start, before = received(), lane_calls(url, service, lane)
        bulk_tasks = [asyncio.create_task(c.post(route, json=b)) for b in bulk]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 120
        while received() - start < n_bulk:
            assert loop.time() < give_up, "the bulk never reached the service"
            await asyncio.sleep(0.005)
        single_tasks = await send_at_once(url, route, singles)
        while received() - start < n_bulk + len(singles):
            assert loop.time() < give_up, "the single requests never reached the service"
            await asyncio.sleep(0.005)
        left = bulk_calls - (lane_calls(url, service, lane)[0] - before[0])
        bulk_out, singles_out = await asyncio.gather(asyncio.gather(*bulk_tasks), asyncio.gather(*single_tasks))
        # a bulk batch in the model, one answered but not counted yet, one prepared ahead: a fourth is queued
        if left < 4:
            return f"only {left:.0f} bulk batches were left"
        print(f"single requests all received with {left:.0f} of {bulk_calls} bulk batches not answered")
        after = lane_calls(url, service, lane)
        return Batched(list(bulk_out), list(singles_out), after[0] - before[0], after[1] - before[1])

    async def go() -> Batched:
        failures: list[str] = []
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=200)) as c:
            for _ in range(attempts):
                result = await attempt(c)
                if isinstance(result, Batched):
                    return result
                failures.append(result)
        raise AssertionError(f"the singles never queued behind the bulk ({'; '.join(failures)}): make the bulk larger")

    return asyncio.run(go())


async def send_at_once(
    url: str, route: str, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> list[asyncio.Task[httpx.Response]]:
    """POST each of ``bodies`` on a connection of its own, opened first, then all written in one pass of the event
    loop: the requests leave within a millisecond however loaded the machine (httpx would connect and encode them
    one task at a time, which on a starved machine spreads them over seconds). Tasks of the responses."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    streams = [await asyncio.open_connection(host, port) for _ in bodies]
    for (_, writer), body in zip(streams, bodies, strict=True):
        data = json.dumps(body).encode()
        head = f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
        writer.write(f"{head}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    return [asyncio.create_task(_response(reader, writer)) for reader, writer in streams]


async def _response(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> httpx.Response:
    """Read one HTTP/1.1 response (``Connection: close``: the body is what follows the head) into an httpx.Response."""
    try:
        head, _, body = (await asyncio.wait_for(reader.read(), timeout=300)).partition(b"\r\n\r\n")
    finally:
        writer.close()
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(h.split(": ", 1)) for h in header_lines]
    if ("transfer-encoding", "chunked") in [(k.lower(), v.lower()) for k, v in headers]:
        body = _dechunk(body)
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out
