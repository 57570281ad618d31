"""Unit tests of the hardening modules (issue #16): pixel budgets, the list pre-scan, stored-field rules, supplied
embeddings, filter cost limits, storage-fault detection and log hygiene. No server; the transport is tested against
a real uvicorn on loopback in tests/test_transport.py."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from mmsearch_client import fields
from mmsearch_client.schemas import DeleteRequest, UpsertRequest
from pydantic import ValidationError

from service.index import InvalidFilter
from service.index.filters import MAX_FILTER_BYTES, MAX_FILTER_KEYS, MAX_FILTER_TERMS, parse_filter
from service.inputs import unit_vector
from service.logs import ClientErrorFilter, RateLimitFilter
from service.middleware import oversized_list
from service.pixels import PixelBudget, PixelBudgetBusy, TooManyPixels
from service.storage import StorageHealth, is_storage_fault

# --- pixel budgets ------------------------------------------------------------------------------------------


def test_request_pixel_limit_names_the_image_that_crosses_it() -> None:
    async def go() -> None:
        budget = PixelBudget(capacity=100, per_request=50, wait_s=1)
        async with budget.lease() as lease:
            with pytest.raises(TooManyPixels) as info:
                await lease.reserve([20, 20, 20])
        assert info.value.index == 2 and "MMSEARCH_MAX_REQUEST_PIXELS" in str(info.value)
        assert budget.used == 0

    asyncio.run(go())


def test_worker_budget_waits_in_order_then_refuses_and_always_releases() -> None:
    async def go() -> None:
        budget = PixelBudget(capacity=100, per_request=100, wait_s=0.2)
        order: list[str] = []
        async with budget.lease() as first:
            await first.reserve([80])

            async def wait(name: str, n: int) -> None:
                async with budget.lease() as lease:
                    await lease.reserve([n])
                    order.append(name)

            big = asyncio.create_task(wait("big", 60))
            await asyncio.sleep(0.01)
            small = asyncio.create_task(wait("small", 10))  # fits now, but FIFO: waits behind "big"
            await asyncio.sleep(0.01)
            assert order == [] and budget.used == 80
        await asyncio.gather(big, small)
        assert order == ["big", "small"] and budget.used == 0
        async with budget.lease() as hog:
            await hog.reserve([100])
            with pytest.raises(PixelBudgetBusy, match="MMSEARCH_MAX_INFLIGHT_PIXELS"):
                async with budget.lease() as late:
                    await late.reserve([1])
        assert budget.used == 0 and not budget._waiters

    asyncio.run(go())


def test_cancelled_waiter_frees_its_place() -> None:
    async def go() -> None:
        budget = PixelBudget(capacity=10, per_request=10, wait_s=5)
        async with budget.lease() as hog:
            await hog.reserve([10])
            task = asyncio.create_task(budget._acquire(5))
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not budget._waiters
        assert budget.used == 0

    asyncio.run(go())


# --- early rejection of huge lists ---------------------------------------------------------------------------

LIMITS = {"documents": (256, "MMSEARCH_MAX_DOCUMENTS_PER_REQUEST")}


def _body(n: int, **extra: object) -> bytes:
    docs = [
        {"id": f"d{i}", "text": 'tricky "quoted\\\\" [x], {y}', "metadata": {"documents": [1, 2]}} for i in range(n)
    ]
    return json.dumps({**extra, "documents": docs}).encode()


@pytest.mark.parametrize(("n", "over"), [(0, False), (1, False), (256, False), (257, True), (300_000, True)])
def test_oversized_list_counts_top_level_elements_exactly(n: int, over: bool) -> None:
    got = oversized_list(_body(n, collection="c"), LIMITS, 10_000)
    assert (got == ("documents", 256, "MMSEARCH_MAX_DOCUMENTS_PER_REQUEST")) is over


def test_oversized_list_sees_unknown_keys_and_skips_long_strings() -> None:
    body = json.dumps({"zzz": list(range(20_000)), "documents": []}).encode()
    assert oversized_list(body, LIMITS, 10_000) == ("zzz", 10_000, "a list field")
    image = "data:image/png;base64," + "A" * 5_000_000
    assert oversized_list(json.dumps({"documents": [{"id": "a", "image": image}] * 3}).encode(), LIMITS, 10) is None


# --- stored fields: one rule set ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "loc", "needle"),
    [
        ({"id": "a\n", "text": "x"}, "id", "control characters"),
        ({"id": "a\x00b", "text": "x"}, "id", "control characters"),
        ({"id": "a", "text": "€" * 21_846}, "text", "65535 UTF-8 bytes"),
        ({"id": "a", "text": "x", "metadata": {"k\n": 1}}, "metadata", "metadata key"),
        ({"id": "a", "text": "x", "metadata": {"k": 2**64}}, "metadata", "64 bits"),
        ({"id": "a", "text": "x", "metadata": {f"k{i}": 1 for i in range(65)}}, "metadata", "64 keys"),
        ({"id": "a", "text": "x", "metadata": {"k": list(range(1025))}}, "metadata", "1024 elements"),
    ],
)
def test_wire_schema_refuses_what_the_index_would(doc: dict[str, object], loc: str, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        UpsertRequest.model_validate({"documents": [doc]})
    err = info.value.errors()[0]
    assert err["loc"][:3] == ("documents", 0, loc) and needle in err["msg"]


def test_nan_and_infinity_in_metadata_are_refused_from_json() -> None:
    for token in ("NaN", "Infinity", "-Infinity"):
        raw = '{"documents": [{"id": "a", "text": "x", "metadata": {"v": TOKEN}}]}'.replace("TOKEN", token)
        with pytest.raises(ValidationError, match="finite"):
            UpsertRequest.model_validate_json(raw)


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "x" * 65, "1abc", "a-b"])
def test_collection_names_match_whole(name: str) -> None:
    with pytest.raises(ValidationError, match="collection"):
        DeleteRequest.model_validate({"collection": name, "ids": ["a"]})
    with pytest.raises(ValueError):
        fields.check_collection_name(name)


# --- supplied embeddings ---------------------------------------------------------------------------------------


def test_unit_vector_refuses_what_float32_cannot_normalise() -> None:
    for bad, needle in (
        ([1e38] * 16, "squared L2 norm"),
        ([1e-45] * 16, "subnormal"),
        ([1e-20] * 16, "squared L2 norm"),
        ([float("nan"), 1.0], "finite"),
        ([1e39, 1.0], "float32"),
        ([0.0] * 4, "squared L2 norm"),
    ):
        with pytest.raises(ValueError, match=needle):
            unit_vector(bad)
    v = unit_vector([1e18] * 16)
    assert v.dtype == np.float32 and np.allclose(v, 0.25) and np.isclose(np.linalg.norm(v), 1.0)


# --- filter cost ---------------------------------------------------------------------------------------------


def test_filter_limits_at_each_boundary() -> None:
    parse_filter({f"k{i}": i for i in range(MAX_FILTER_KEYS)})
    with pytest.raises(InvalidFilter, match=f"more than {MAX_FILTER_KEYS} keys"):
        parse_filter({f"k{i}": i for i in range(MAX_FILTER_KEYS + 1)})
    parse_filter({"k": {"$in": list(range(MAX_FILTER_TERMS - 1))}})  # + the key's own bytes: under both limits
    with pytest.raises(InvalidFilter, match=f"more than {MAX_FILTER_TERMS} conditions"):
        parse_filter({"a": {"$in": list(range(MAX_FILTER_TERMS))}, "b": 1})
    with pytest.raises(InvalidFilter, match=f"{MAX_FILTER_BYTES} bytes"):
        parse_filter({"k": {"$in": ["x" * 1000] * 20}})
    with pytest.raises(InvalidFilter, match="64 bits"):
        parse_filter({"k": 2**64})


# --- storage faults ---------------------------------------------------------------------------------------------


def test_storage_faults_are_recognised_through_wrappers(tmp_path: Path) -> None:
    assert is_storage_fault(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError as inner:
            raise RuntimeError("lance commit failed") from inner
    except RuntimeError as wrapped:
        assert is_storage_fault(wrapped)
    assert is_storage_fault(RuntimeError("LanceError(IO): Generic LocalFileSystem error: File too large (os error 27)"))
    assert not is_storage_fault(ValueError("invalid filter"))
    health = StorageHealth([tmp_path / "index"])
    health.fault(OSError(errno.ENOSPC, "full"))
    assert not health.ok and health.probe() and health.ok  # writable again: up at the next probe


# --- logs --------------------------------------------------------------------------------------------------------


def test_client_errors_become_one_info_line_without_input() -> None:
    try:
        UpsertRequest.model_validate({"documents": [{"id": "secret-input\n", "text": "x"}]})
    except ValidationError as e:
        exc = e
    record = logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/upsert", "POST"), None)
    record.exc_info = (type(exc), exc, exc.__traceback__)
    assert ClientErrorFilter().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "Exception on /upsert [POST]: 400 (ValidationError)"
    assert "secret" not in logging.Formatter().format(record)


def test_repeated_lines_are_rate_limited_and_counted() -> None:
    limit = RateLimitFilter(burst=3, period=60)

    def rec(level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", level, __file__, 1, "Invalid HTTP request received.", (), None)

    passed = [limit.filter(rec()) for _ in range(100)]
    assert passed.count(True) == 3
    assert all(limit.filter(rec(logging.INFO)) for _ in range(10))  # access logs are not limited
    window = limit._windows[("uvicorn.error", "Invalid HTTP request received.")]
    window[0] -= 61  # the next window: one line says how many were dropped
    nxt = rec()
    assert limit.filter(nxt) and "[97 similar lines suppressed]" in nxt.getMessage()


# --- model-side limits ------------------------------------------------------------------------------------------


def test_cpu_out_of_memory_is_handled_like_cuda_out_of_memory() -> None:
    from service.faults import SimulatedOOM
    from service.models import is_oom

    assert is_oom(MemoryError()) and is_oom(SimulatedOOM("x"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_models_without_a_token_limit_get_one() -> None:
    from service.models import limit_tokens

    class CrossEncoderLike:
        max_length = 10**30

    class EmbedderLike:
        max_seq_length = 77

    unlimited, clip = CrossEncoderLike(), EmbedderLike()
    assert limit_tokens(unlimited, 512) == 512 and unlimited.max_length == 512
    assert limit_tokens(clip, 512) == 77 and clip.max_seq_length == 77  # the model's own smaller limit stays


class _IdleAdapter:
    """A model adapter that is never run: what the batcher is built around is all the test looks at."""

    name = "idle"
    modalities: list[str] = []
    accelerated = False
    threads = None

    def prepare(self, lane: object, inputs: list[object]) -> object:
        raise RuntimeError("not run")

    def run(self, lane: object, features: object) -> list[object]:
        raise RuntimeError("not run")


def test_fault_injection_is_off_unless_configured() -> None:
    """Production batches run no fault code: with both ``MMSEARCH_OOM_SIMULATE_*`` at 0 there is no check, and the
    batcher runs the adapter's own ``prepare``/``run``."""
    from service.config import Settings
    from service.faults import SimulatedOOM, oom_check
    from service.runtime import ModelRuntime

    assert oom_check(Settings()) is None
    adapter = _IdleAdapter()
    runtime: ModelRuntime[str, float] = ModelRuntime("fault-test", Settings(), adapter)
    assert (runtime.batcher._run, runtime.batcher._prepare) == (adapter.run, adapter.prepare)
    check = oom_check(Settings(oom_simulate_batch_over=2, oom_simulate_text_chars=5))
    assert check is not None
    check(["a", "b"])
    with pytest.raises(SimulatedOOM, match="batch size 3"):
        check(["a", "b", "c"])
    with pytest.raises(SimulatedOOM, match=">= 5 text characters"):
        check([("q", {"text": "hello"})])
