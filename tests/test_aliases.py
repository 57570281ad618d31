"""Collection aliases (``service.aliases``): the table on every backend (the real Milvus server too), its rules,
what a second process on the same index sees, and the pipeline's routes resolving an alias where a collection name
goes, over LanceDB. The e2e through a real Search is in tests/test_multi_model_e2e.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mmsearch_client.schemas import DeleteRequest, DropRequest, GetRequest, IdsRequest, UpsertRequest

from service.aliases import ALIASES_COLLECTION, AliasStore
from service.errors import ApiError
from service.index import base
from service.index.factory import open_index
from tests.test_bindings import Rig
from tests.test_index_contract import BACKENDS, backend_uri


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_replace_delete_and_what_another_replica_sees(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """On every backend (the real Milvus server too): the reserved collection holding the table is created by the
    first alias, and a second handle on the same index is another replica."""
    uri = backend_uri(backend, request, tmp_path)
    index = open_index(uri)
    for name in ("v1", "v2"):
        index.ensure_collection(name, 4, "m")
    clock = Clock()
    mine, other = AliasStore(index, clock=clock), AliasStore(open_index(uri), clock=clock)
    assert other.resolve("live") == "live"  # no alias: the name itself (cached for ttl_s)
    assert mine.set("live", "v1") is None
    assert mine.resolve("live") == "v1" and mine.table() == {"live": "v1"}
    assert other.resolve("live") == "live"  # its cached copy, younger than ttl_s
    clock.now += 1.0
    assert other.resolve("live") == "v1"
    assert mine.set("live", "v2") == "v1"  # replaced in one write, the old target returned
    clock.now += 1.0
    assert other.resolve("live") == "v2"
    assert AliasStore(open_index(uri)).table() == {"live": "v2"}  # durable: a restart sees it
    assert mine.delete("live") is True and mine.delete("live") is False
    assert mine.resolve("live") == "live"


def test_refusals(tmp_path: Path) -> None:
    index = open_index(str(tmp_path / "index"))
    index.ensure_collection("v1", 4, "m")
    store = AliasStore(index)
    with pytest.raises(ApiError) as e:
        store.set("v1", "v1")  # an alias cannot shadow a collection
    assert (e.value.status, e.value.code, e.value.field) == (409, "alias_conflict", "alias")
    with pytest.raises(base.CollectionNotFound):
        store.set("live", "missing")
    store.set("live", "v1")
    with pytest.raises(ApiError) as e:
        store.set("again", "live")  # no chains
    assert (e.value.status, e.value.code) == (422, "alias_target_is_alias")
    for bad in (lambda: store.set(ALIASES_COLLECTION, "v1"), lambda: store.resolve(ALIASES_COLLECTION)):
        with pytest.raises(ApiError) as e:
            bad()
        assert (e.value.status, e.value.code) == (400, "invalid_collection")
    with pytest.raises(ApiError) as e:
        store.check_droppable("v1")
    assert (e.value.status, e.value.code) == (409, "collection_aliased") and "'live'" in e.value.message
    with pytest.raises(base.InvalidCollectionName):
        store.set("bad name", "v1")


def test_routes_take_an_alias_where_a_collection_goes(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.upsert("v1", ["red square"])
    rig.upsert("v2", ["red square"], model="wiki")
    pipe = rig.pipeline
    pipe.aliases.set("live", "v1")
    found = rig.search("live", "red square")
    assert (found.collection, found.model, found.hits[0].id) == ("v1", "clip", "v10")
    up = asyncio.run(pipe.upsert(UpsertRequest(collection="live", documents=[{"id": "n", "text": "new"}])))
    assert up.collection == "v1" and rig.index.get_collection("v1").count == 2
    assert [d.id for d in asyncio.run(pipe.get(GetRequest(collection="live", ids=["n"]))).documents] == ["n"]
    assert asyncio.run(pipe.delete(DeleteRequest(collection="live", ids=["n"]))).deleted == 1
    pipe.aliases.set("live", "v2")  # the switch: the next search answers from the other model's collection
    found = rig.search("live", "red square")
    assert (found.collection, found.model, found.hits[0].id) == ("v2", "wiki", "v20")
    names = [c.name for c in asyncio.run(pipe.collections()).collections]
    assert names == ["v1", "v2"]  # the aliases' own collection is hidden
    with pytest.raises(ApiError) as e:
        asyncio.run(pipe.drop(DropRequest(collection="v2")))
    assert (e.value.status, e.value.code) == (409, "collection_aliased")
    assert asyncio.run(pipe.drop(DropRequest(collection="v1"))).dropped


def test_ids_pages_in_id_order_through_an_alias(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.upsert("v1", ["a", "b", "c", "d", "e"])  # ids v10 .. v14
    rig.pipeline.aliases.set("live", "v1")
    pages, after = [], None
    while True:
        page = asyncio.run(rig.pipeline.ids(IdsRequest(collection="live", after=after, limit=2)))
        assert page.collection == "v1"
        pages.append(page.ids)
        after = page.next
        if after is None:
            break
    assert pages == [["v10", "v11"], ["v12", "v13"], ["v14"]]
    assert asyncio.run(rig.pipeline.ids(IdsRequest(collection="v1", after="v14"))).ids == []
