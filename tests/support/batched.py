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

import h11
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
    one task at a time, which on a starved machine spreads them over seconds). Tasks of the responses (HTTP/1.1
    framing by h11, the parser the service's transport uses)."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    streams = [await asyncio.open_connection(host, port) for _ in bodies]
    conns = [h11.Connection(our_role=h11.CLIENT) for _ in bodies]
    for (_, writer), conn, body in zip(streams, conns, bodies, strict=True):
        data = json.dumps(body).encode()
        fields = [("Host", host), ("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        request = h11.Request(method="POST", target=route, headers=[*fields, *(headers or {}).items()])
        writer.write(conn.send(request) + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
    return [asyncio.create_task(_response(r, w, conn)) for (r, w), conn in zip(streams, conns, strict=True)]


async def _response(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: h11.Connection) -> httpx.Response:
    """Read the one response of ``conn`` into an httpx.Response."""
    status, headers, body = 0, [], b""
    try:
        while (event := conn.next_event()) is not h11.PAUSED and not isinstance(event, h11.EndOfMessage):
            if event is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(reader.read(65536), timeout=300))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, [(k.decode(), v.decode()) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
    finally:
        writer.close()
    return httpx.Response(status, headers=headers, content=body)
