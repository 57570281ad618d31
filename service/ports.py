"""What the search pipeline needs from the model services, as small interfaces (ports), and their remote adapters.

``service.pipeline`` depends only on these protocols; ``service.search`` plugs in ``RemoteEmbedder`` /
``RemoteReranker`` (BentoML dependencies, local or over HTTP) and the unit tests plug in fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import numpy as np
from mmsearch_schema.wire import EncodeResponse, InputType, Item, OcrResponse, RerankResponse, RerankResult

from service.breaker import CircuitBreaker, CircuitOpen
from service.errors import ApiError, api_error_from_remote
from service.ocr import OcrPage, page_from_wire

log = logging.getLogger("mmsearch.search")
T = TypeVar("T")


@dataclass(frozen=True)
class Embeddings:
    """Unit vectors, one row per input, and the model that produced them."""

    vectors: np.ndarray
    model: str


class EmbedderPort(Protocol):
    async def info(self) -> dict[str, Any]:
        """At least ``model`` (name) and ``dimension``."""
        ...

    async def encode(
        self, items: Sequence[Item], input_type: InputType, timeout: float | None, model: str | None = None
    ) -> Embeddings:
        """Normalised embeddings of ``items`` in order by ``model`` (None: the default); refusals raise ``ApiError``
        with ``inputs[k]`` paths (an unknown model: 404 ``model_not_found``)."""
        ...


class RerankerPort(Protocol):
    async def info(self) -> dict[str, Any]:
        """At least ``model`` (``None``: no reranker configured) and ``modalities``."""
        ...

    async def rerank(
        self, query: Item, documents: Sequence[Item], timeout: float | None, wait: float | None = None
    ) -> list[RerankResult]:
        """Relevance of every document to ``query`` (``index`` into ``documents``). ``timeout`` is the deadline the
        Reranker applies itself; past ``wait`` seconds without an answer, ``TimeoutError``."""
        ...


CONNECTION_RETRIES = 2
"""Extra attempts of a dependency call whose connection dropped before an answer (a pooled keep-alive connection the
server closed as it was reused: aiohttp's "Can not write request body", "Server disconnected"). Every call made here
(``info``, ``encode``, ``rerank``, ``ocr``) computes and stores nothing, so sending it again is safe."""


async def call_dependency(
    call: Callable[[], Awaitable[T]],
    *,
    stage: str,
    breaker: CircuitBreaker | None = None,
    timeout: float | None = None,
) -> T:
    """Await a dependency call (``call`` makes it), under its circuit breaker when given: its 4xx errors pass
    through; its absence or a 5xx becomes a 503 ``<stage>_unavailable`` (at once while the circuit is open); no
    answer within ``timeout`` seconds raises ``TimeoutError`` (and counts as a failure). A dropped connection is
    retried at once, ``CONNECTION_RETRIES`` times (see there), within the same ``timeout``."""
    try:
        async with breaker.guard(is_outage) if breaker else contextlib.nullcontext():
            return await asyncio.wait_for(_with_reconnects(call, stage), timeout)
    except CircuitOpen as e:
        raise ApiError(
            503,
            f"{stage}_unavailable",
            f"{stage} service unavailable (circuit open after repeated failures: {e.last_error}); "
            f"retrying in {e.retry_after:.1f}s",
            retry_after=e.retry_after,
        ) from None
    except (ApiError, TimeoutError):
        raise
    except Exception as e:
        err = api_error_from_remote(e)
        if err is not None:
            raise err from None
        log.warning("%s call failed: %r", stage, e)  # the detail (internal addresses) stays in the log
        raise ApiError(503, f"{stage}_unavailable", f"{stage} service unavailable", retry_after=1) from e


async def _with_reconnects(call: Callable[[], Awaitable[T]], stage: str) -> T:
    for attempt in range(CONNECTION_RETRIES + 1):
        try:
            return await call()
        except aiohttp.ClientConnectionError as e:
            if isinstance(e, TimeoutError) or attempt == CONNECTION_RETRIES:
                raise
            log.info("%s connection dropped before an answer (%r): sending the call again", stage, e)
    raise AssertionError("unreachable")  # the last attempt returns or raises


def is_outage(e: BaseException) -> bool:
    """Whether a dependency call's exception says the dependency is down (not that the request was bad)."""
    if isinstance(e, ApiError):
        return False
    if isinstance(e, TimeoutError):
        return True
    if isinstance(e, Exception):
        # None: refused, reset, or a crash (500 without an mmsearch answer). A dependency that answers in its own
        # shape is up, even when it sheds load (429 overloaded, 503 queue_timeout): that is not an outage.
        return api_error_from_remote(e) is None
    return False


class _Remote:
    """A model service behind ``bentoml.depends`` (same process tree or a URL), under its circuit breaker;
    ``stage`` names it in errors."""

    stage = "service"

    def __init__(self, dependency: Any, breaker: CircuitBreaker | None = None) -> None:
        self._dep = dependency
        self._breaker = breaker

    async def info(self) -> dict[str, Any]:
        info: dict[str, Any] = await call_dependency(self._dep.to_async.info, stage=self.stage, breaker=self._breaker)
        return info


class RemoteEmbedder(_Remote):
    """The Embedder service."""

    stage = "embedder"

    async def encode(
        self, items: Sequence[Item], input_type: InputType, timeout: float | None, model: str | None = None
    ) -> Embeddings:
        chosen = {"model": model} if model is not None else {}
        resp: EncodeResponse = await call_dependency(
            lambda: self._dep.to_async.encode(
                inputs=list(items), input_type=input_type, normalize=True, timeout=timeout, **chosen
            ),
            stage="embedder",
            breaker=self._breaker,
        )
        return Embeddings(np.asarray(resp.embeddings, dtype=np.float32), resp.model)


class RemoteReranker(_Remote):
    """The Reranker service."""

    stage = "reranker"

    async def rerank(
        self, query: Item, documents: Sequence[Item], timeout: float | None, wait: float | None = None
    ) -> list[RerankResult]:
        resp: RerankResponse = await call_dependency(
            lambda: self._dep.to_async.rerank(query=query, documents=list(documents), timeout=timeout),
            stage="reranker",
            breaker=self._breaker,
            timeout=wait,
        )
        return list(resp.results)


class ReaderPort(Protocol):
    async def info(self) -> dict[str, Any]:
        """At least ``model`` (the OCR engine)."""
        ...

    async def read(self, items: Sequence[Item], input_type: InputType, timeout: float | None) -> list[OcrPage]:
        """The text of each item's image, lines with boxes; refusals raise ``ApiError`` with ``inputs[k]`` paths."""
        ...


class RemoteReader(_Remote):
    """The Reader service (OCR)."""

    stage = "reader"

    async def read(self, items: Sequence[Item], input_type: InputType, timeout: float | None) -> list[OcrPage]:
        resp: OcrResponse = await call_dependency(
            lambda: self._dep.to_async.ocr(inputs=list(items), input_type=input_type, timeout=timeout),
            stage="reader",
            breaker=self._breaker,
        )
        return [page_from_wire(r) for r in resp.results]
