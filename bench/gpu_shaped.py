"""A GPU-shaped model for benchmarks and tests: a batch costs a fixed time plus a little per input, spent
waiting *without* the GIL, as a forward pass on a GPU does (the CPU thread launches kernels, then waits for
the device). On a CPU-only machine it lets the batching policy be measured as a GPU would see it: a batch of 2
costs nearly what a batch of 32 does.

It is served by the real Embedder / Reranker services through the ``MMSEARCH_MODEL_FACTORY`` seam
(``service.models``)::

    MMSEARCH_MODEL_FACTORY=bench.gpu_shaped:factory \\
    MMSEARCH_GPU_SHAPED="fixed_ms=50,item_ms=0.5" bentoml serve service.embedder:Embedder

(``bench/`` is not part of the bento: ``bentofile.yaml`` ships ``service/`` only.)

Cost knobs (``MMSEARCH_GPU_SHAPED``, comma-separated ``key=value``):

* ``fixed_ms`` (50), ``item_ms`` (0.5): time of one forward pass of ``n`` inputs = ``fixed_ms + n * item_ms``;
* ``prepare_item_ms`` (0): CPU work per input in ``prepare`` (holds the GIL, like a Python tokenizer would);
* ``gil_ms`` (0): CPU work holding the GIL at the start of each forward pass (kernel launches);
* ``dimension`` (64).

Outputs are deterministic functions of the inputs (unit vectors, scores in (0, 1)) and mean nothing.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from service.cpus import ThreadPlan

ENV = "MMSEARCH_GPU_SHAPED"


@dataclass(frozen=True)
class Cost:
    fixed_ms: float = 50.0
    item_ms: float = 0.5
    prepare_item_ms: float = 0.0
    gil_ms: float = 0.0
    dimension: int = 64

    @classmethod
    def parse(cls, spec: str) -> Cost:
        """``"fixed_ms=20,item_ms=0.25"`` -> ``Cost``; unknown keys or bad numbers raise ``ValueError``."""
        known = {f.name: f.type for f in fields(cls)}
        kw: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, _, value = part.partition("=")
            if key not in known:
                raise ValueError(f"{ENV}: unknown key {key!r} (known: {', '.join(known)})")
            kw[key] = int(value) if key == "dimension" else float(value)
            if kw[key] < 0:
                raise ValueError(f"{ENV}: {key} must be >= 0")
        return cls(**kw)

    def batch_s(self, n: int) -> float:
        """Seconds one forward pass of ``n`` inputs takes."""
        return (self.fixed_ms + n * self.item_ms) / 1000

    def ideal_items_per_s(self, batch: int) -> float:
        """Throughput if every batch held ``batch`` inputs and the model never waited."""
        return batch / self.batch_s(batch)


def _spin(seconds: float) -> None:
    """Busy CPU work holding the GIL for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _key(x: Any) -> bytes:
    """A cheap, deterministic fingerprint of one model input (text, PIL image, dict of both, or a pair)."""
    if isinstance(x, tuple | list):
        return b"|".join(_key(p) for p in x)
    if isinstance(x, dict):
        return b"&".join(_key(x[k]) for k in sorted(x))
    if isinstance(x, str):
        return x.encode()
    size = getattr(x, "size", None)
    if size is not None and hasattr(x, "getpixel"):  # a PIL image: its size and a few pixels
        w, h = size
        px = [x.getpixel((i * (w - 1) // 3, i * (h - 1) // 3)) for i in range(4)]
        return repr((size, px)).encode()
    return repr(x).encode()


@dataclass
class _Adapter:
    cost: Cost
    name: str = "gpu-shaped"
    modalities: list[str] = field(default_factory=lambda: ["text", "image", "text+image"])
    accelerated: bool = True
    threads: ThreadPlan | None = None
    batches: list[tuple[Hashable, int]] = field(default_factory=list)
    """(lane, size) of every forward pass, in order (tests read it in-process)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def prepare(self, lane: Hashable, inputs: list[Any]) -> list[Any]:
        """CPU: fingerprint the inputs and compute their outputs (a tokenizer's stand-in)."""
        if self.cost.prepare_item_ms:
            _spin(len(inputs) * self.cost.prepare_item_ms / 1000)
        return [self._output(hashlib.blake2b(_key(x), digest_size=8).digest()) for x in inputs]

    def run(self, lane: Hashable, features: list[Any]) -> Sequence[Any]:
        """The forward pass: ``fixed_ms + n * item_ms``, waiting without the GIL (after ``gil_ms`` with it)."""
        if self.cost.gil_ms:
            _spin(self.cost.gil_ms / 1000)
        time.sleep(max(self.cost.batch_s(len(features)) - self.cost.gil_ms / 1000, 0))
        with self._lock:
            self.batches.append((lane, len(features)))
        return features

    def _output(self, fingerprint: bytes) -> Any:
        raise NotImplementedError


class GpuShapedEmbedder(_Adapter):
    """Embeddings: a unit vector per input, seeded by the input's fingerprint."""

    @property
    def dimension(self) -> int:
        return self.cost.dimension

    def _output(self, fingerprint: bytes) -> np.ndarray:
        # ~10 us: seeding a numpy Generator per input took ~0.3 ms, which the lone-client goal (fixed cost + 2 ms) would
        # have charged to the batcher; ``prepare_item_ms`` is the knob for a tokenizer's cost
        raw = hashlib.shake_256(fingerprint).digest(4 * self.cost.dimension)
        v = np.frombuffer(raw, dtype="<u4").astype(np.float32) - np.float32(2**31)
        return v / np.linalg.norm(v)


class GpuShapedReranker(_Adapter):
    """Scores in (0, 1) per (query, document) pair, from the pair's fingerprint."""

    def _output(self, fingerprint: bytes) -> float:
        return (int.from_bytes(fingerprint, "little") % 10_000 + 0.5) / 10_001


def factory(kind: str, settings: Any) -> Any:
    """``MMSEARCH_MODEL_FACTORY=bench.gpu_shaped:factory``: the embedder or reranker (``$MMSEARCH_GPU_SHAPED``)."""
    cost = Cost.parse(os.environ.get(ENV, ""))
    if kind == "embedder":
        return GpuShapedEmbedder(cost)
    if kind == "reranker":
        return GpuShapedReranker(cost)
    raise ValueError(f"bench.gpu_shaped: no {kind} model")
