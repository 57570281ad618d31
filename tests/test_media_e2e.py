"""Search owns its media (issues #13 and #16.12), against a real bento (Search and its Reranker, tiny profile) on
loopback.

- 20 images ingested by URL from a loopback image server are each fetched once; with that server stopped, a
  reranked search answers 200 with every hit reranked (the Reranker reads the stored copies).
- A stored file removed behind the service's back: 200, that hit unreranked after the others, a warning names it.
- ``/media`` answers with ``X-Content-Type-Options: nosniff``; a symbolic link in the media store is not followed.
- Hits carry a ``thumbnail`` path (longest side <= 256 px) that the caller can GET.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bench.support.images import data_uri, make_image, write_images
from bench.support.metrics import metric_sum
from bench.support.servers import BentoServer
from tests.conftest import own_reranker, serve_bento
from tests.support.counting import CountingServer

N = 20


class Rig:
    def __init__(self, server: BentoServer, media: Path, root: Path, images: CountingServer, embedder_url: str) -> None:
        self.server = server
        self.embedder_url = embedder_url
        self.media = media
        self.root = root
        self.images = images
        self.seen_at_ingest: int | None = None

    def ingest(self) -> int:
        """Upsert the 20 URL images once (module-wide); the image server's request count right after."""
        if self.seen_at_ingest is None:
            docs = [{"id": f"u{i}", "image": f"{self.images.url}/img{i}.png", "metadata": {"n": i}} for i in range(N)]
            assert self.post("/upsert", {"collection": "urls", "documents": docs})["upserted"] == N
            self.seen_at_ingest = len(self.images.requests)
        return self.seen_at_ingest

    def data_uri(self, name: str) -> str:
        return "data:image/png;base64," + base64.b64encode((self.root / name).read_bytes()).decode()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{self.server.url}{path}", json=body, timeout=120)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
        out: dict[str, Any] = r.json()
        return out

    def search(self, **kw: Any) -> dict[str, Any]:
        body = {"collection": "urls", "query": "a picture", "top_k": N, "candidates": N, "rerank": True, **kw}
        return self.post("/search", body)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, model_urls: dict[str, str]) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("media-e2e")
    root = tmp / "images"
    write_images(root, N)
    Image.new("RGB", (900, 300), (200, 30, 30)).save(root / "wide.png")
    images = CountingServer(root)
    try:
        # Search and the Reranker that reads its media directory in one bento; the Embedder and Reader by URL
        for server in serve_bento(tmp / "search", "service.search:Search", **own_reranker(model_urls)):
            yield Rig(server, tmp / "search" / "media", root, images, model_urls["MMSEARCH_EMBEDDER_URL"])
    finally:
        images.stop()


def test_url_images_are_fetched_once_and_searches_survive_their_source(rig: Rig) -> None:
    seen_at_ingest = rig.ingest()
    assert sorted(rig.images.requests) == sorted(f"/img{i}.png" for i in range(N))  # each fetched once

    live = rig.search()
    assert live["reranked"] is True and live["warnings"] == []
    assert len(rig.images.requests) == seen_at_ingest  # the source is up, and still not asked

    rig.images.stop()
    res = rig.search()
    assert res["reranked"] is True and res["warnings"] == [] and len(res["hits"]) == N
    assert all(h["rerank_score"] is not None for h in res["hits"])
    for h in res["hits"]:
        assert h["image"].startswith("media://") and h["source"] == f"{rig.images.url}/img{h['metadata']['n']}.png"
    assert len(rig.images.requests) == seen_at_ingest


def test_missing_media_file_is_a_warning_for_that_hit(rig: Rig) -> None:
    rig.ingest()
    (doc,) = rig.post("/get", {"collection": "urls", "ids": ["u7"]})["documents"]
    stored = rig.media / doc["image"].removeprefix("media://")
    stored.unlink()  # behind the service's back
    try:
        res = rig.search()
        assert res["reranked"] is True and len(res["hits"]) == N
        assert [(w["id"], w["code"]) for w in res["warnings"]] == [("u7", "media_unavailable")]
        assert res["hits"][-1]["id"] == "u7" and res["hits"][-1]["rerank_score"] is None
        assert all(h["rerank_score"] is not None for h in res["hits"][:-1])
        also = rig.search(rerank="auto", top_k=3)
        assert also["reranked"] is True and [w["id"] for w in also["warnings"]] == ["u7"]
    finally:
        rig.post("/upsert", {"collection": "urls", "documents": [{"id": "u7", "text": "restored as text"}]})


def test_media_route_sends_nosniff_and_never_follows_symlinks(rig: Rig, tmp_path: Path) -> None:
    rig.post("/upsert", {"collection": "m", "documents": [{"id": "w", "image": rig.data_uri("wide.png")}]})
    (doc,) = rig.post("/get", {"collection": "m", "ids": ["w"]})["documents"]
    name = doc["image"].removeprefix("media://")
    ok = httpx.get(f"{rig.server.url}/media/{name}", timeout=30)
    assert ok.status_code == 200 and ok.headers["x-content-type-options"] == "nosniff"
    assert ok.headers["content-type"] == "image/png"
    missing = httpx.get(f"{rig.server.url}/media/{'0' * 64}.png", timeout=30)
    assert missing.status_code == 404 and missing.headers["x-content-type-options"] == "nosniff"

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not for the public")
    link = rig.media / f"{'ab' * 32}.png"
    os.symlink(secret, link)
    try:
        assert httpx.get(f"{rig.server.url}/media/{link.name}", timeout=30).status_code == 404
        # a stored image replaced by a link reads as missing too
        real = rig.media / name
        real.unlink()
        os.symlink(secret, real)
        assert httpx.get(f"{rig.server.url}/media/{name}", timeout=30).status_code == 404
    finally:
        link.unlink()


def test_hits_carry_a_bounded_thumbnail_served_from_media(rig: Rig) -> None:
    rig.post("/upsert", {"collection": "t", "documents": [{"id": "w", "image": rig.data_uri("wide.png")}]})
    (hit,) = rig.post("/search", {"collection": "t", "query": "x", "rerank": False})["hits"]
    assert hit["thumbnail"].startswith("/media/") and hit["thumbnail"].endswith(".thumb.jpeg")
    r = httpx.get(f"{rig.server.url}{hit['thumbnail']}", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-content-type-options"] == "nosniff"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (256, 85)  # 900 x 300 scaled so that its longest side is 256


def test_same_bytes_under_new_ids_do_not_reach_the_model(rig: Rig) -> None:
    def model_inputs() -> float:  # counted by the Embedder (its own process: Search calls it by URL)
        return metric_sum(rig.embedder_url, "mmsearch_inputs_total", service="embedder", input_type="document")

    images = [data_uri(make_image(1000 + i)) for i in range(3)]  # bytes this service has not seen yet
    before = model_inputs()
    first = [{"id": f"c{i}", "image": image} for i, image in enumerate(images)]
    rig.post("/upsert", {"collection": "cache", "documents": first})
    inputs = model_inputs()
    hits = metric_sum(rig.server.url, "mmsearch_embedding_cache_hits_total")
    assert inputs - before == 3  # the first upsert did reach the model (the counter is read correctly)
    again = [{"id": f"again{i}", "image": image} for i, image in enumerate(images)]
    rig.post("/upsert", {"collection": "cache", "documents": again})
    assert model_inputs() == inputs
    assert metric_sum(rig.server.url, "mmsearch_embedding_cache_hits_total") == hits + 3
    got = rig.post("/get", {"collection": "cache", "ids": ["c0", "again0"], "include_embedding": True})["documents"]
    assert got[0]["embedding"] == got[1]["embedding"] and got[0]["image"] == got[1]["image"]
