"""Search owns its media (issue #13), at the pipeline: every image is stored once at ingest (a URL fetched once),
searches never fetch a document image from its source, a candidate whose media cannot be read is a warning.

Real media store, loader and loopback image server; the embedder, reranker and index are the fakes of
``tests/support/fakes.py`` (the reranker reads ``media://`` images from the same store, as the real one does).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmsearch_client.schemas import DeleteRequest, DropRequest, GetRequest, Item, SearchRequest, UpsertRequest
from PIL import Image

from bench.support.images import data_uri, make_image, stored_ref, write_images
from service.config import Settings
from service.embedcache import PRUNE_EVERY, EmbeddingCache, cache_key
from service.errors import ApiError
from service.index.base import IndexRecord
from service.media import MediaLoader
from service.mediastore import THUMB_SIDE, MediaStore, name_of
from service.pipeline import SearchPipeline
from service.priority import PriorityGate
from tests.support.counting import CountingServer
from tests.support.fakes import FakeEmbedder, FakeReranker, MemoryIndex

DIM = 8


@pytest.fixture
def images(tmp_path: Path) -> Iterator[CountingServer]:
    root = tmp_path / "images"
    root.mkdir()
    write_images(root, 4)
    Image.new("RGB", (1200, 600), (10, 200, 30)).save(root / "big.png")
    server = CountingServer(root)
    yield server
    server.stop()


class Rig:
    def __init__(self, tmp: Path, index: Any = None, **settings: Any) -> None:
        self.settings = Settings(
            media_dir=tmp / "media", fetch_allow=("127.0.0.1/32",), fetch_allow_only=True, **settings
        )
        self.media = MediaStore(self.settings.media_dir)
        self.embedder = FakeEmbedder(DIM)
        self.reranker = FakeReranker(media=self.media, score=lambda q, d: float(len(d.image or d.text or "")))
        self.index = index if index is not None else MemoryIndex()
        self.pipeline = SearchPipeline(
            self.settings,
            embedder=self.embedder,
            reranker=self.reranker,
            index=self.index,
            media=self.media,
            loader=MediaLoader(self.settings),
            gate=PriorityGate(0.05),
        )

    def upsert(self, docs: list[dict[str, Any]]) -> Any:
        return asyncio.run(self.pipeline.upsert(UpsertRequest(collection="c", documents=docs)))

    def search(self, **kw: Any) -> Any:
        body = {"collection": "c", "query": "q", "top_k": 10, "candidates": 10, **kw}
        return asyncio.run(self.pipeline.search(SearchRequest.model_validate(body)))


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_url_image_is_fetched_once_stored_and_never_fetched_by_search(
    rig: Rig, images: CountingServer, tmp_path: Path
) -> None:
    url = f"{images.url}/img0.png"
    rig.upsert([{"id": "u", "image": url}])
    assert images.requests == ["/img0.png"]
    expected = "media://" + hashlib.sha256((tmp_path / "images" / "img0.png").read_bytes()).hexdigest() + ".png"
    doc = asyncio.run(rig.pipeline.get(GetRequest(collection="c", ids=["u"]))).documents[0]
    assert doc.image == expected and doc.source == url
    raw = (tmp_path / "images" / "img0.png").read_bytes()
    inline = "data:image/png;base64," + base64.b64encode(raw).decode()
    assert rig.embedder.calls[0][1] == [Item(image=inline)]  # the fetched bytes, inline: no second fetch
    res = rig.search(rerank=True)
    assert res.reranked is True and res.hits[0].image == expected and res.hits[0].source == url
    assert rig.reranker.calls[0][1] == [Item(image=expected)]
    assert images.requests == ["/img0.png"]  # no request after ingest


def test_same_bytes_by_url_and_data_uri_share_one_copy(rig: Rig, images: CountingServer, tmp_path: Path) -> None:
    raw = (tmp_path / "images" / "img1.png").read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    rig.upsert([{"id": "u", "image": f"{images.url}/img1.png"}, {"id": "d", "image": uri}])
    docs = asyncio.run(rig.pipeline.get(GetRequest(collection="c", ids=["u", "d"]))).documents
    assert docs[0].image == docs[1].image and docs[1].source is None
    originals = [n for n in rig.media.blobs.names() if not n.endswith(".thumb.jpeg")]
    assert originals == [name_of(str(docs[0].image))]


def test_thumbnail_is_bounded_and_stored_beside_the_original(rig: Rig, images: CountingServer) -> None:
    rig.upsert([{"id": "big", "image": f"{images.url}/big.png"}])
    hit = rig.search(rerank=False).hits[0]
    assert hit.thumbnail is not None and hit.thumbnail.startswith("/media/") and hit.thumbnail.endswith(".thumb.jpeg")
    data = rig.media.read(hit.thumbnail.removeprefix("/media/"))
    assert data is not None
    with Image.open(io.BytesIO(data)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == THUMB_SIDE and thumb.size == (256, 128)


def test_refused_url_names_the_document_field(rig: Rig, images: CountingServer) -> None:
    with pytest.raises(ApiError) as e:
        rig.upsert([{"id": "ok", "text": "fine"}, {"id": "gone", "image": f"{images.url}/missing.png"}])
    assert (e.value.status, e.value.field) == (422, "documents[1].image")
    assert e.value.message.startswith("documents[1].image") and rig.embedder.calls == []


def test_missing_media_is_a_warning_not_a_failed_search(rig: Rig) -> None:
    uris = [data_uri(make_image(s)) for s in range(4)]
    rig.upsert([{"id": f"i{k}", "image": u, "text": "x" * k} for k, u in enumerate(uris)])
    before = rig.search(rerank=False)
    order = [h.id for h in before.hits]
    lost = order[1]
    name = name_of(str(before.hits[1].image))
    assert name is not None
    (rig.settings.media_dir / name).unlink()  # behind the service's back
    res = rig.search(rerank=True)
    assert res.reranked is True
    assert [h.id for h in res.hits][-1] == lost and res.hits[-1].rerank_score is None
    assert all(h.rerank_score is not None for h in res.hits[:-1])
    assert [(w.id, w.code) for w in res.warnings] == [(lost, "media_unavailable")]
    assert res.warnings[0].message.startswith("not reranked")
    # one refused call, then the others (the rest were checked in the store at once)
    assert len(rig.reranker.calls) == 2 and len(rig.reranker.calls[1][1]) == 3


def test_every_missing_medium_costs_one_extra_call_at_most(rig: Rig) -> None:
    uris = [data_uri(make_image(s)) for s in range(6)]
    rig.upsert([{"id": f"i{k}", "image": u} for k, u in enumerate(uris)])
    for name in [n for n in rig.media.blobs.names() if not n.endswith(".thumb.jpeg")][:3]:
        (rig.settings.media_dir / name).unlink()
    res = rig.search(rerank=True)
    assert res.reranked is True and len(rig.reranker.calls) == 2
    assert sorted(w.code for w in res.warnings) == ["media_unavailable"] * 3
    assert [h.rerank_score is None for h in res.hits] == [False] * 3 + [True] * 3


def test_nothing_scorable_is_not_reranked(rig: Rig) -> None:
    uri = data_uri(make_image(7))
    rig.upsert([{"id": "only", "image": uri}])
    (rig.settings.media_dir / str(name_of(stored_ref(uri)))).unlink()
    res = rig.search(rerank=True)
    assert res.reranked is False and [w.id for w in res.warnings] == ["only"] and res.hits[0].rerank_score is None
    rig.index.upsert("c", [IndexRecord(id="emb", text=None, image=None, metadata={}, embedding=[1.0] * DIM)])
    res = rig.search(rerank=True)  # an embedding-only document and a missing image: nothing to score
    assert res.reranked is False and len(res.hits) == 2


def test_image_stored_as_url_before_is_never_fetched_at_search(rig: Rig, images: CountingServer) -> None:
    rig.upsert([{"id": "t", "text": "words"}])
    legacy = IndexRecord(id="old", text=None, image=f"{images.url}/img2.png", metadata={}, embedding=[0.5] * DIM)
    rig.index.upsert("c", [legacy])
    res = rig.search(rerank=True)
    assert res.reranked is True and images.requests == []
    assert [(w.id, w.code) for w in res.warnings] == [("old", "media_not_stored")]
    assert next(h for h in res.hits if h.id == "old").rerank_score is None


def test_stored_reference_can_be_upserted_again(rig: Rig) -> None:
    uri = data_uri(make_image(9))
    rig.upsert([{"id": "a", "image": uri}])
    rig.upsert([{"id": "b", "image": stored_ref(uri)}])
    docs = asyncio.run(rig.pipeline.get(GetRequest(collection="c", ids=["a", "b"]))).documents
    assert docs[0].image == docs[1].image == stored_ref(uri)
    with pytest.raises(ApiError) as e:
        rig.upsert([{"id": "c", "image": "media://" + "0" * 64 + ".png"}])
    assert (e.value.code, e.value.field) == ("media_unavailable", "documents[0].image")


# --- embedding cache by content (#13.5) ---------------------------------------------------------------------


def cached_rig(tmp: Path, cache: EmbeddingCache) -> tuple[Rig, list[int]]:
    rig = Rig(tmp)
    hits: list[int] = []
    rig.pipeline.cache = cache
    rig.pipeline.on_cache_hits = hits.append
    return rig, hits


def test_same_bytes_under_new_ids_or_urls_do_not_call_the_model(tmp_path: Path, images: CountingServer) -> None:
    rig, hits = cached_rig(tmp_path, EmbeddingCache(":memory:"))
    raw = (tmp_path / "images" / "img1.png").read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    rig.upsert([{"id": "a", "image": uri}, {"id": "t", "text": "words"}])
    assert len(rig.embedder.calls) == 1 and hits == []
    rig.upsert(
        [{"id": "b", "image": uri}, {"id": "c", "image": f"{images.url}/img1.png"}, {"id": "u", "text": "words"}]
    )
    assert len(rig.embedder.calls) == 1 and hits == [3]  # nothing new: the model was not called
    vectors = {d.id: d.embedding for d in rig.index.get("c", ["a", "b", "c", "t", "u"])}
    assert vectors["a"] == vectors["b"] == vectors["c"] and vectors["t"] == vectors["u"]
    rig.upsert([{"id": "d", "image": uri, "text": "with a caption"}])  # other text: another input
    assert len(rig.embedder.calls) == 2 and rig.embedder.calls[1][1][0].text == "with a caption"


def test_duplicates_in_one_request_are_embedded_once(tmp_path: Path) -> None:
    rig, _ = cached_rig(tmp_path, EmbeddingCache(":memory:"))
    uri = data_uri(make_image(11))
    rig.upsert([{"id": f"x{i}", "image": uri} for i in range(5)] + [{"id": "y", "text": "t"}])
    assert [len(items) for _, items in rig.embedder.calls] == [2]


def test_cache_persists_in_its_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    rig, _ = cached_rig(tmp_path / "one", EmbeddingCache(path))
    rig.upsert([{"id": "a", "text": "persisted"}])
    again, hits = cached_rig(tmp_path / "two", EmbeddingCache(path))  # a restarted process
    again.upsert([{"id": "a", "text": "persisted"}])
    assert again.embedder.calls == [] and hits == [1]


def test_cache_is_bounded(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "c.sqlite", max_entries=100)
    for start in range(0, 1200, 300):
        cache.put_many([(cache_key("m", "document", None, str(i)), np.ones(4)) for i in range(start, start + 300)])
    assert len(cache) <= 100 + PRUNE_EVERY
    assert cache_key("m", "document", None, "1199") in cache.get_many([cache_key("m", "document", None, "1199")])


def test_cache_keys_separate_model_type_image_and_text() -> None:
    base = cache_key("m", "document", "ab", "t")
    others = [
        cache_key("m2", "document", "ab", "t"),
        cache_key("m", "query", "ab", "t"),
        cache_key("m", "document", "ac", "t"),
        cache_key("m", "document", "ab", None),
        cache_key("m", "document", "ab", ""),
        cache_key("m", "documentab", "", "t"),
    ]
    assert len({base, *others}) == 7


# --- media garbage collection (#13.8) -----------------------------------------------------------------------


def gc_rig(tmp: Path, index: Any = None, grace_s: float = 0) -> Rig:
    return Rig(tmp, index, media_gc_grace_s=grace_s, media_gc_interval_s=0)


def stored_names(rig: Rig) -> set[str]:
    return set(rig.media.blobs.names())


def originals(rig: Rig) -> set[str]:
    return {n for n in stored_names(rig) if not n.endswith(".thumb.jpeg")}


def settle(rig: Rig, call: Any) -> Any:
    async def run() -> Any:
        out = await call
        await rig.pipeline.media_gc_idle()
        return out

    return asyncio.run(run())


@pytest.mark.parametrize("backend", ["memory", "lance", "milvus-lite"])
def test_deleting_or_replacing_drops_media_once_unreferenced(tmp_path: Path, backend: str) -> None:
    from service.index.factory import open_index

    index = {
        "memory": lambda: None,
        "lance": lambda: open_index(str(tmp_path / "lance")),
        "milvus-lite": lambda: open_index(f"milvus:{tmp_path / 'm.db'}"),
    }[backend]()
    rig = gc_rig(tmp_path, index)
    one, two, three = (data_uri(make_image(s)) for s in (21, 22, 23))
    up = lambda docs, coll="c": settle(rig, rig.pipeline.upsert(UpsertRequest(collection=coll, documents=docs)))  # noqa: E731
    up([{"id": "a", "image": one}, {"id": "b", "image": two}])
    up([{"id": "x", "image": one}], coll="other")  # the same image in another collection
    n1, n2, n3 = (str(name_of(stored_ref(u))) for u in (one, two, three))
    assert originals(rig) == {n1, n2} and len(stored_names(rig)) == 4

    settle(rig, rig.pipeline.delete(DeleteRequest(collection="c", ids=["a"])))
    assert originals(rig) == {n1, n2}  # still referenced by "other"/x
    up([{"id": "b", "image": three}])  # replaced: two is no longer referenced
    assert originals(rig) == {n1, n3} and len(stored_names(rig)) == 4  # its thumbnail went with it
    settle(rig, rig.pipeline.drop(DropRequest(collection="other")))
    assert originals(rig) == {n3}
    assert [n for n in os.listdir(rig.settings.media_dir) if n.startswith(".tmp-")] == []


def test_young_unreferenced_media_survive_the_grace_period(tmp_path: Path) -> None:
    rig = gc_rig(tmp_path, grace_s=3600)
    rig.upsert([{"id": "a", "image": data_uri(make_image(31))}])
    settle(rig, rig.pipeline.delete(DeleteRequest(collection="c", ids=["a"])))
    assert len(originals(rig)) == 1  # an upsert in flight elsewhere may be about to reference it


def test_a_reranker_without_the_store_gets_images_inline(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.reranker.media = MediaStore(tmp_path / "elsewhere")  # the Reranker mounts another (empty) store
    uris = [data_uri(make_image(s)) for s in range(40, 43)]
    rig.upsert([{"id": f"i{k}", "image": u} for k, u in enumerate(uris)])
    res = rig.search(rerank=True)
    assert res.reranked is True and res.warnings == [] and all(h.rerank_score is not None for h in res.hits)
    assert len(rig.reranker.calls) == 2  # refused once (media://), then inline
    assert {d.image for d in rig.reranker.calls[1][1]} == set(uris)
    rig.search(rerank=True)
    assert len(rig.reranker.calls) == 3 and all(str(d.image).startswith("data:") for d in rig.reranker.calls[2][1])
    (rig.settings.media_dir / str(name_of(stored_ref(uris[0])))).unlink()  # missing for Search too: a warning
    res = rig.search(rerank=True)
    assert [(w.id, w.code) for w in res.warnings] == [("i0", "media_unavailable")] and res.reranked is True
