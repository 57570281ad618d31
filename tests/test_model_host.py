"""The models a service hosts (``service.model_host``, issue #23), in process with the real tiny models (no
server): routing by name and the default, strict names with a repository file and any name in the one-model case,
each model's own limits and metrics label, one priority gate and media loader for all (a query for one model holds
document batches of the other), and the memory budget checked over all the service's models before any loads."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.support.servers import tiny_dir
from service.config import Settings
from service.errors import Family, render
from service.model_host import ModelHost, host_models
from service.model_repository import ModelNotFound
from service.models import ModelLoadError, load_embedder, load_reranker
from service.runtime import DOCUMENT_PRIORITY, QUERY_PRIORITY
from service.tiny import ensure_tiny_text_embedder
from tests.support.env import no_mmsearch_env  # noqa: F401 (autouse: no MMSEARCH_* of the shell)
from tests.test_model_memory import padded


def settings(**kw: object) -> Settings:
    kw = {"device": "cpu", "torch_threads": 1, "profile": "tiny", "tiny_dir": tiny_dir(), **kw}
    return Settings(**kw)  # type: ignore[arg-type]


def repository(tmp_path: Path, clip: Path, wiki: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(
        "embedders:\n"
        f"  clip: {{source: {clip}, default: true, max_batch_size: 7}}\n"
        f"  wiki: {{source: {wiki}, max_queue_size: 5, max_model_tokens: 20}}\n"
        "rerankers:\n"
        f"  ce: {{source: {clip.parent / 'text_reranker'}}}\n"
    )
    return path


@pytest.fixture(scope="module")
def wiki_path() -> Path:
    return ensure_tiny_text_embedder(tiny_dir())


@pytest.fixture
def two(tmp_path: Path, tiny_models: Any, wiki_path: Path) -> ModelHost[Any, Any]:
    s = settings(models=repository(tmp_path, Path(tiny_models.clip), wiki_path))
    return host_models("Embedder", "embedder", s, load_embedder)


def test_routing_by_name_and_the_default(two: ModelHost[Any, Any]) -> None:
    assert list(two.models) == ["clip", "wiki"] and two.strict
    assert two.get(None).name == "clip" and two.get("wiki").name == "wiki" and two.get("clip").name == "clip"
    assert (two.get("clip").dimension, two.get("wiki").dimension) == (16, 24)
    assert (two.get("clip").text_only, two.get("wiki").text_only) == (False, True)
    with pytest.raises(ModelNotFound) as e:
        two.get("text-embedding-3-small")
    assert (e.value.status, e.value.code, e.value.field) == (404, "model_not_found", "model")
    assert e.value.message == "model: no embedder named 'text-embedding-3-small'; served: clip, wiki"
    assert b'"code": "model_not_found"' in render(e.value, Family.OPENAI)
    assert two.openai_list()["data"] == [
        {"id": n, "object": "model", "created": two.created, "owned_by": "mmsearch"} for n in ("clip", "wiki")
    ]
    with pytest.raises(ModelNotFound):
        two.openai_model("nope")


def test_each_model_has_its_own_limits_and_metrics_label(two: ModelHost[Any, Any]) -> None:
    clip, wiki = two.get("clip"), two.get("wiki")
    assert clip.runtime is not wiki.runtime and clip.runtime.batcher is not wiki.runtime.batcher
    service_wide = settings()  # what an entry that sets no limit gets
    assert (clip.runtime.batcher.max_batch_size, wiki.runtime.batcher.max_batch_size) == (
        7,
        service_wide.max_batch_size,
    )
    assert (clip.runtime.batcher._max_queue_size, wiki.runtime.batcher._max_queue_size) == (
        service_wide.max_queue_size,
        5,
    )
    assert (clip.max_tokens, wiki.max_tokens) == (77, 20)
    assert (clip.runtime.model, wiki.runtime.model) == ("clip", "wiki")
    described = two.describe()
    assert [d["name"] for d in described] == ["clip", "wiki"] and described[0]["default"]
    assert described[1]["max_batch_size"] == service_wide.max_batch_size and described[1]["max_queue_size"] == 5


def test_one_gate_and_one_media_loader_for_every_model(two: ModelHost[Any, Any]) -> None:
    clip, wiki = two.get("clip"), two.get("wiki")
    assert clip.runtime.gate is wiki.runtime.gate is two.gate
    assert clip.runtime.loader is wiki.runtime.loader is two.loader


def test_a_query_for_one_model_holds_document_batches_of_the_other(
    tmp_path: Path, tiny_models: Any, wiki_path: Path
) -> None:
    """While a query request is in flight on CLIP, a document batch of the text model waits (here up to the 10 s
    hold), and runs as soon as the query is done; without a query it runs at once."""
    s = settings(models=repository(tmp_path, Path(tiny_models.clip), wiki_path), query_priority_max_hold_ms=10_000)
    host: ModelHost[Any, Any] = host_models("Embedder", "embedder", s, load_embedder)
    clip, wiki = host.get("clip"), host.get("wiki")

    async def scenario() -> None:
        alone = await asyncio.wait_for(wiki.runtime.run(("document", "text"), ["x"], priority=DOCUMENT_PRIORITY), 20)
        assert len(alone) == 1
        async with clip.runtime.scope("query"):
            doc = asyncio.create_task(wiki.runtime.run(("document", "text"), ["y"], priority=DOCUMENT_PRIORITY))
            query = await clip.runtime.run(("query", "text"), [{"text": "q"}], priority=QUERY_PRIORITY)
            assert len(query) == 1
            await asyncio.sleep(0.5)
            assert not doc.done()  # held for the query of the other model
        (row,) = await asyncio.wait_for(doc, 20)
        assert isinstance(row, np.ndarray) and row.shape == (24,)

    asyncio.run(scenario())


def test_the_one_model_case_serves_any_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a repository file, ``model`` names nothing to choose from: the SDKs' required names
    (``text-embedding-3-small``) get the one model, as before several models were served."""
    host: ModelHost[Any, Any] = host_models("Embedder", "embedder", settings(), load_embedder)
    assert not host.strict and list(host.models) == ["mmsearch/tiny-random-clip"]
    assert host.get("text-embedding-3-small") is host.get(None) is host.default
    lite: ModelHost[Any, Any] = host_models("Reranker", "reranker", settings(profile="lite"), load_reranker)
    assert lite.models == {} and lite.default is None
    with pytest.raises(ModelNotFound, match="no reranker is served"):
        lite.get(None)


def test_the_budget_counts_every_model_of_the_service(tmp_path: Path, tiny_models: Any, wiki_path: Path) -> None:
    """Each padded model (~2.2 MB) fits a 3 MB budget alone; the two together do not, and nothing loads."""
    clip = padded(tmp_path / "a", Path(tiny_models.clip), 2_000_000)
    wiki = padded(tmp_path / "b", wiki_path, 2_000_000)
    s = settings(models=repository(tmp_path, clip, wiki), model_memory_budget_mb=3)
    loaded: list[str] = []

    def load(st: Settings, served: Any) -> Any:
        loaded.append(served.name)
        return load_embedder(st, served)

    with pytest.raises(ModelLoadError, match=r"MMSEARCH_MODEL_MEMORY_BUDGET_MB=3 is exceeded: 4\.\d\d MB") as e:
        host_models("Embedder", "embedder", s, load)
    assert "for the Embedder's models (clip: 2." in str(e.value) and "; wiki: 2." in str(e.value)
    assert loaded == []
    alone = settings(models=repository(tmp_path, clip, wiki_path), model_memory_budget_mb=3)
    assert list(host_models("Embedder", "embedder", alone, load_embedder).models) == ["clip", "wiki"]
