"""The Search pipeline's per-collection caches (calibration, modality statistics) never keep what a read found
before a write that finished while the read was in flight: ``/uncalibrate`` (or a re-fit, a drop, an upsert) is
then seen by the very next search of this replica, not one statistics TTL later. Real LanceDB; the read is held
open at the index port so the interleaving is deterministic."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from service import calibration
from service.config import Settings
from service.index.factory import open_index
from service.media import MediaLoader
from service.mediastore import MediaStore
from service.pipeline import SearchPipeline
from service.priority import PriorityGate
from tests.support.fakes import FakeEmbedder, FakeReranker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def fitted() -> calibration.Calibration:
    scores = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
    relevant = [False, False, False, False, True, True, True, True]
    return calibration.fit({"text->text": (scores, relevant)}, method="platt", set_name="s", queries=4, created="t")


class HeldReads:
    """Wraps an index method so that its next call waits, in its worker thread, until released."""

    def __init__(self, index: Any, name: str) -> None:
        self.inner = getattr(index, name)
        self.started, self.release = threading.Event(), threading.Event()
        self.armed = False
        setattr(index, name, self)

    def __call__(self, *args: Any) -> Any:
        if self.armed:
            self.armed = False
            found = self.inner(*args)  # what the collection held when the read ran
            self.started.set()
            assert self.release.wait(30)
            return found
        return self.inner(*args)


def pipeline(tmp_path: Path) -> tuple[SearchPipeline, Any]:
    settings = Settings(media_dir=tmp_path / "media", balance_stats_ttl_s=3600)
    index = open_index(str(tmp_path / "lance"), ann_threshold=10_000)
    index.ensure_collection("c", 8, "m")
    pipe = SearchPipeline(
        settings,
        embedder=FakeEmbedder(8),
        reranker=FakeReranker(),
        index=index,
        media=MediaStore(settings.media_dir),
        loader=MediaLoader(settings),
        gate=PriorityGate(0.05),
    )
    return pipe, index


def test_a_calibration_read_in_flight_during_uncalibrate_is_not_cached(tmp_path: Path) -> None:
    pipe, index = pipeline(tmp_path)
    index.write_property("c", calibration.PROPERTY, calibration.dump(fitted()))
    held = HeldReads(index, "read_property")

    async def scenario() -> tuple[calibration.Calibration | None, calibration.Calibration | None]:
        held.armed = True
        search_read = asyncio.create_task(pipe.collection_calibration("c"))  # a search reads the calibration
        assert await asyncio.to_thread(held.started.wait, 30)
        assert await pipe.store_calibration("c", None) is True  # /uncalibrate finishes meanwhile
        held.release.set()
        old = await search_read
        return old, await pipe.collection_calibration("c")

    old, after = asyncio.run(scenario())
    index.close()
    assert old is not None  # the read in flight saw the calibration: it ran before the removal
    assert after is None  # and the next search sees the removal at once (the TTL is an hour here)


def test_modality_statistics_read_before_a_write_are_not_cached(tmp_path: Path) -> None:
    pipe, index = pipeline(tmp_path)
    held = HeldReads(index, "modality_sample")

    async def scenario() -> int:
        held.armed = True
        stats_read = asyncio.create_task(pipe.modality_stats("c"))
        assert await asyncio.to_thread(held.started.wait, 30)
        pipe.forget_statistics("c")  # what an upsert, delete or drop does once it has written
        held.release.set()
        await stats_read
        return len(pipe._modality_stats)

    assert asyncio.run(scenario()) == 0
    index.close()
