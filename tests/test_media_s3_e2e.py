"""``MMSEARCH_MEDIA_URI=s3://bucket/prefix`` (issue #15.2) through a real bento (Search and its Reranker) against
the moto S3 emulator on loopback: ingest stores the image and its thumbnail as objects, a reranked search reads them
(the Reranker resolves ``media://`` from the bucket), ``/media`` serves them, and nothing is written to a local
directory.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench.support.images import data_uri, make_image, png_bytes
from bench.support.servers import BentoServer
from tests.conftest import own_reranker, serve_bento
from tests.support.s3 import MotoServer


@pytest.fixture(scope="module")
def s3_search(
    tmp_path_factory: pytest.TempPathFactory, model_urls: dict[str, str], s3_server: MotoServer
) -> Iterator[tuple[BentoServer, str, Path]]:
    tmp = tmp_path_factory.mktemp("media-s3")
    bucket = s3_server.new_bucket("media")
    # the AWS_* variables of the emulator are in this process's environment (s3_server) and reach the bento
    # Search and its Reranker in one bento, both on the bucket; the Embedder and Reader by URL
    env = {**own_reranker(model_urls), "MMSEARCH_MEDIA_URI": f"s3://{bucket}/stored"}
    for server in serve_bento(tmp, "service.search:Search", **env):
        yield server, bucket, tmp


def test_media_on_s3_ingest_rerank_and_serve(s3_search: tuple[BentoServer, str, Path], s3_server: MotoServer) -> None:
    server, bucket, tmp = s3_search
    img = make_image(5, (512, 256))
    digest = hashlib.sha256(png_bytes(img)).hexdigest()
    docs = [{"id": "pic", "image": data_uri(img)}, {"id": "t", "text": "a text document"}]
    r = httpx.post(f"{server.url}/upsert", json={"collection": "s3", "documents": docs}, timeout=120)
    assert r.status_code == 200, r.text

    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"stored/{digest}.png", f"stored/{digest}.thumb.jpeg"]
    assert not (tmp / "media").exists()  # MMSEARCH_MEDIA_DIR is not used

    body = {"collection": "s3", "query": "anything", "top_k": 2, "rerank": True}
    res = httpx.post(f"{server.url}/search", json=body, timeout=120).json()
    assert res["reranked"] is True and res["warnings"] == []
    assert all(h["rerank_score"] is not None for h in res["hits"])
    pic = next(h for h in res["hits"] if h["id"] == "pic")
    assert pic["image"] == f"media://{digest}.png" and pic["thumbnail"] == f"/media/{digest}.thumb.jpeg"

    served = httpx.get(f"{server.url}/media/{digest}.png", timeout=30)
    assert served.status_code == 200 and served.content == png_bytes(img)
    assert served.headers["x-content-type-options"] == "nosniff"
    thumb = httpx.get(f"{server.url}{pic['thumbnail']}", timeout=30)
    with Image.open(io.BytesIO(thumb.content)) as t:
        assert thumb.status_code == 200 and t.size == (256, 128)

    # an object removed behind the service's back: that hit is unreranked with a warning, the search answers 200
    s3_server.client().delete_object(Bucket=bucket, Key=f"stored/{digest}.png")
    res = httpx.post(f"{server.url}/search", json=body, timeout=120).json()
    assert res["reranked"] is True and [(w["id"], w["code"]) for w in res["warnings"]] == [("pic", "media_unavailable")]
    assert httpx.get(f"{server.url}/media/{digest}.png", timeout=30).status_code == 404
