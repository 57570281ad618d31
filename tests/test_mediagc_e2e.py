"""Media garbage collection through a real Search bento (tiny profile, LanceDB, wired to the session's model
services by URL) on loopback (#13.8).

A deleted document's image and thumbnail leave the media directory once unreferenced for the grace period (1 s
here); an image another document still references stays; re-upserting the collected bytes stores them again and
they are served; a drop collects the collection's images.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.support.images import make_image, png_bytes
from bench.support.servers import BentoServer
from tests.conftest import serve_wired_search

GRACE_S = 1.0


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, model_urls: dict[str, str]) -> Iterator[tuple[BentoServer, Path]]:
    """Search wired to the session's model services, its media in its own directory (not the shared bucket): the
    collector's work is on that directory. Nothing here reranks."""
    tmp = tmp_path_factory.mktemp("mediagc-e2e")
    urls = {k: v for k, v in model_urls.items() if k != "MMSEARCH_MEDIA_URI"}
    gc = {"MMSEARCH_MEDIA_GC_GRACE_S": str(GRACE_S), "MMSEARCH_MEDIA_GC_INTERVAL_S": "0"}
    for server in serve_wired_search(tmp, urls, **gc):
        yield server, tmp / "media"


def _post(server: BentoServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
    out: dict[str, Any] = r.json()
    return out


def _doc(doc_id: str, data: bytes) -> dict[str, Any]:
    return {"id": doc_id, "image": "data:image/png;base64," + base64.b64encode(data).decode()}


def _names(data: bytes) -> tuple[str, str]:
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest}.png", f"{digest}.thumb.jpeg"


def _until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_deleted_and_dropped_media_are_collected_and_reupserts_stored_again(
    search: tuple[BentoServer, Path],
) -> None:
    server, media = search
    a, b = png_bytes(make_image(11)), png_bytes(make_image(12))
    (a_name, a_thumb), (b_name, b_thumb) = _names(a), _names(b)
    _post(server, "/upsert", {"collection": "gc", "documents": [_doc("a", a), _doc("b", b), _doc("b2", b)]})
    assert {a_name, a_thumb, b_name, b_thumb} <= {p.name for p in media.iterdir()}
    time.sleep(GRACE_S + 0.5)  # both images are now older than the grace period

    assert _post(server, "/delete", {"collection": "gc", "ids": ["a", "b"]})["deleted"] == 2
    _until(lambda: not (media / a_name).exists() and not (media / a_thumb).exists(), "a's media not collected")
    assert (media / b_name).exists() and (media / b_thumb).exists()  # b2 still references b's image

    _post(server, "/upsert", {"collection": "gc", "documents": [_doc("a", a)]})  # the same bytes again
    got = _post(server, "/get", {"collection": "gc", "ids": ["a"]})["documents"][0]
    assert got["image"] == f"media://{a_name}"
    r = httpx.get(f"{server.url}/media/{a_name}", timeout=30)
    assert r.status_code == 200 and r.content == a

    time.sleep(GRACE_S + 0.5)
    assert _post(server, "/drop", {"collection": "gc"})["dropped"] is True
    _until(lambda: not any(media.glob("*.png")) and not any(media.glob("*.thumb.jpeg")), "dropped media kept")
    assert not any(p.name.startswith((".gc-", ".tmp-")) for p in media.iterdir())
