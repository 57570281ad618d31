"""Collections bound to their embedding model (issue #23): ``service.bindings``' rules, and the pipeline over a real
LanceDB index with a fake two-model Embedder (``FakeEmbedder.others``). The same flows run against the real
two-model Embedder in tests/test_multi_model_e2e.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmsearch_client.schemas import SearchRequest, UpsertRequest

from service import bindings
from service.config import Settings
from service.embedcache import EmbeddingCache
from service.errors import ApiError
from service.index.factory import open_index
from service.media import MediaLoader
from service.mediastore import MediaStore
from service.pipeline import SearchPipeline
from service.priority import PriorityGate
from tests.support.fakes import FakeEmbedder, FakeReranker, unit_vector

TWO: dict[str, Any] = {
    "model": "clip",
    "dimension": 8,
    "models": [
        {"name": "clip", "default": True, "dimension": 8, "modalities": ["text", "image"]},
        {"name": "wiki", "dimension": 12, "modalities": ["text"], "loading": {"revision": "r2"}},
    ],
}
ONE: dict[str, Any] = {"model": "only", "dimension": 4, "modalities": ["text"]}


def test_served_entry_default_named_and_the_one_model_rule() -> None:
    assert bindings.served_entry(TWO, None)["name"] == "clip"
    assert bindings.served_entry(TWO, "wiki")["name"] == "wiki"
    assert bindings.served_entry(TWO, "nope") is None
    assert bindings.served_entry(ONE, "any-name")["name"] == "only"  # as the one-model Embedder answers


def test_choose_binds_new_collections_and_keeps_existing_ones() -> None:
    new = bindings.choose(TWO, "c", None, "wiki")
    assert (new.name, new.dimension, new.text_only, new.revision, new.new) == ("wiki", 12, True, "r2", True)
    assert bindings.choose(TWO, "c", None, None).name == "clip"
    held = bindings.choose(TWO, "c", (12, "wiki"), None)
    assert (held.name, held.dimension, held.new) == ("wiki", 12, False)
    assert bindings.choose(TWO, "c", (12, "wiki"), "wiki").name == "wiki"
    with pytest.raises(ApiError) as e:
        bindings.choose(TWO, "c", (12, "wiki"), "clip")
    assert (e.value.status, e.value.code, e.value.field) == (409, "collection_mismatch", "model")
    assert "'wiki'" in e.value.message and "'clip'" in e.value.message
    with pytest.raises(ApiError) as e:
        bindings.choose(TWO, "c", None, "nope")
    assert (e.value.status, e.value.code) == (404, "model_not_found")
    assert "clip, wiki" in e.value.message
    # a collection whose model is no longer served keeps its binding (the Embedder answers 404 when asked)
    gone = bindings.choose(TWO, "c", (5, "old"), None)
    assert (gone.name, gone.dimension) == ("old", 5)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.embedder = FakeEmbedder(8, model="clip", others={"wiki": 12})
        self.index = open_index(str(tmp / "index"))
        self.cache = EmbeddingCache(":memory:")
        settings = Settings(media_dir=tmp / "media")
        self.pipeline = SearchPipeline(
            settings,
            embedder=self.embedder,
            reranker=FakeReranker(),
            index=self.index,
            media=MediaStore(settings.media_dir),
            loader=MediaLoader(settings),
            gate=PriorityGate(0.05),
            cache=self.cache,
        )

    def upsert(self, collection: str, texts: list[str], model: str | None = None) -> Any:
        docs = [{"id": f"{collection}{i}", "text": t} for i, t in enumerate(texts)]
        req = UpsertRequest(collection=collection, documents=docs, model=model)
        return asyncio.run(self.pipeline.upsert(req))

    def search(self, collection: str, query: str) -> Any:
        req = SearchRequest(collection=collection, query=query, rerank=False, mode="vector")
        return asyncio.run(self.pipeline.search(req))


def test_two_collections_on_two_models_side_by_side(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.upsert("screens", ["red square", "blue circle"])
    rig.upsert("wiki", ["red square", "blue circle"], model="wiki")
    assert rig.embedder.models_asked == ["clip", "wiki"]  # the same texts: the cache is keyed by model
    cols = {c.name: c for c in asyncio.run(rig.pipeline.collections()).collections}
    assert (cols["screens"].model, cols["screens"].dimension, cols["screens"].revision) == ("clip", 8, None)
    assert (cols["wiki"].model, cols["wiki"].dimension, cols["wiki"].revision) == ("wiki", 12, "rev-wiki")
    stored = rig.index.vectors("wiki", ["wiki0"])["wiki0"]
    assert np.allclose(stored, unit_vector("wiki|red square|None", 12), atol=1e-6)  # the wiki model's vector
    rig.embedder.models_asked.clear()
    for name, model in (("screens", "clip"), ("wiki", "wiki")):
        found = rig.search(name, "red square")
        assert (found.collection, found.model) == (name, model)
        assert found.hits[0].id == f"{name}0" and found.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert rig.embedder.models_asked == ["clip", "wiki"]
    # later upserts embed with the collection's model without naming it; naming the other is refused
    rig.upsert("wiki", ["green"])  # replaces wiki0
    assert rig.embedder.models_asked[-1] == "wiki" and rig.index.get_collection("wiki").dimension == 12
    with pytest.raises(ApiError) as e:
        rig.upsert("wiki", ["yellow"], model="clip")
    assert (e.value.status, e.value.code) == (409, "collection_mismatch")
    assert "'wiki'" in e.value.message and "'clip'" in e.value.message
    assert [d.text for d in rig.index.get("wiki", ["wiki0"])] == ["green"]  # nothing written by the refusal


def test_the_embedding_cache_is_keyed_by_the_served_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vectors cached for one revision of a model are not reused when the Embedder serves another revision under
    the same name (the cache outlives a redeployment: it is a file)."""
    rig = Rig(tmp_path)
    rig.upsert("w", ["red square"], model="wiki")
    rig.upsert("w", ["red square"])  # the same input and revision: from the cache
    assert rig.embedder.models_asked == ["wiki"]
    served = FakeEmbedder.info

    async def redeployed(self: FakeEmbedder) -> dict[str, Any]:
        info = await served(self)
        for m in info["models"]:
            if m["name"] == "wiki":
                m["loading"] = {"revision": "rev-2"}
        return info

    monkeypatch.setattr(FakeEmbedder, "info", redeployed)
    rig.pipeline._embedder_info = None  # as a restarted Search reads the Embedder's /info again
    rig.upsert("w", ["red square"])
    assert rig.embedder.models_asked == ["wiki", "wiki"]  # embedded again by the new revision
    rig.upsert("w", ["red square"])
    assert rig.embedder.models_asked == ["wiki", "wiki"]  # and that revision's vector is cached in turn


def test_searches_of_a_collection_on_another_served_model_keep_the_embedder_info(tmp_path: Path) -> None:
    """The Embedder's answer names the collection's model, not its default: that is no sign the Embedder changed,
    so Search keeps its cached ``/info`` (it used to ask again before every such search)."""
    rig = Rig(tmp_path)
    rig.upsert("wiki", ["red square", "blue circle"], model="wiki")
    asked: list[int] = []
    info = rig.embedder.info

    async def counted() -> dict[str, Any]:
        asked.append(1)
        return await info()

    rig.embedder.info = counted  # type: ignore[method-assign]
    for _ in range(3):
        assert rig.search("wiki", "red square").hits
    assert asked == []
