"""Locust profiles for mmsearch (loopback only). See loadtest/README.md for one headless command per profile.

Profiles (pick one or more by class name on the command line):

* ``TextQueryUser``: ``/search`` with text queries (rerank on and off).
* ``ImageQueryUser``: ``/search`` with image queries: inline base64 PNG/JPEG of about 50 KB, 500 KB and 2 MB
  (tag ``inline``) and URLs from a local static server (tag ``url``, needs ``MMSEARCH_LT_IMAGE_BASE``).
* ``RerankUser``: ``/rerank`` with 10, 50 and 200 text candidates (tags ``rerank10``/``rerank50``/``rerank200``).
* ``MixedUser``: mostly text searches, some image searches, and ingestion of small document batches that the
  service embeds (``/upsert``).

Environment:

* ``MMSEARCH_LT_COLLECTION`` (default ``loadtest``): the collection searched; it is seeded at test start with
  ``MMSEARCH_LT_SEED_DOCS`` text documents (default 1000) unless it already exists.
* ``MMSEARCH_LT_IMAGE_BASE``: base URL serving ``img0.png`` ... ``img63.png`` (``python -m bench.static_server``);
  ``loadtest/run.py`` starts one.
* ``MMSEARCH_LT_CANDIDATES`` (default 20): shortlist size of searches that rerank.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, tag, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for bench.data

from bench import data

COLLECTION = os.environ.get("MMSEARCH_LT_COLLECTION", "loadtest")
IMAGE_BASE = os.environ.get("MMSEARCH_LT_IMAGE_BASE", "").rstrip("/")
CANDIDATES = int(os.environ.get("MMSEARCH_LT_CANDIDATES", "20"))
SEED_DOCS = int(os.environ.get("MMSEARCH_LT_SEED_DOCS", "1000"))
URL_IMAGES = 64

QUERIES = data.texts(500, seed=11)
DOC_TEXTS = data.texts(400, words=(12, 24), seed=12, max_chars=None)  # reranker documents
INGEST_TEXTS = data.texts(400, words=(6, 12), seed=14)  # embedded by CLIP: <= 70 characters
_INLINE: dict[str, list[str]] = {}


def inline_images() -> dict[str, list[str]]:
    """Data URIs, 3 distinct images per size (built once per process)."""
    if not _INLINE:
        for label, target, fmt in (("50KB", 50_000, "PNG"), ("500KB", 500_000, "PNG"), ("2MB", 2_000_000, "JPEG")):
            _INLINE[label] = [data.data_uri(data.image_of_bytes(target, fmt, seed=s)[0], fmt) for s in range(3)]
    return _INLINE


def _check(resp: Any, key: str) -> None:
    """Mark the request failed unless it answered 200 with ``key`` in the JSON body."""
    if resp.status_code != 200:
        resp.failure(f"HTTP {resp.status_code}: {resp.text[:200] if resp.text else ''}")
        return
    try:
        body = resp.json()
    except ValueError:
        resp.failure("response is not JSON")
        return
    if key not in body:
        resp.failure(f"no {key!r} in response")
    else:
        resp.success()


@events.test_start.add_listener
def _seed(environment: Any, **_: Any) -> None:
    """Create and fill the collection once if it does not exist yet (standalone runs against ``make serve``)."""
    if os.environ.get("MMSEARCH_LT_SKIP_SEED") or not environment.host:
        return
    import httpx

    base = environment.host.rstrip("/")
    try:
        names = [c["name"] for c in httpx.post(f"{base}/collections", json={}, timeout=30).json()["collections"]]
    except (httpx.HTTPError, ValueError, KeyError):
        return
    if COLLECTION in names:
        return
    texts = data.texts(SEED_DOCS, words=(6, 12), seed=13)
    for start in range(0, SEED_DOCS, 200):
        docs = [
            {"id": f"seed{i}", "text": texts[i], "metadata": {"n": i}}
            for i in range(start, min(SEED_DOCS, start + 200))
        ]
        httpx.post(f"{base}/upsert", json={"collection": COLLECTION, "documents": docs}, timeout=300).raise_for_status()


class _Base(FastHttpUser):
    abstract = True
    wait_time = between(0.05, 0.2)

    def search(self, query: Any, name: str, rerank: bool = True) -> None:
        body = {
            "collection": COLLECTION,
            "query": query,
            "top_k": 10,
            "candidates": CANDIDATES if rerank else 10,
            "rerank": rerank,
        }
        with self.client.post("/search", json=body, name=name, catch_response=True) as resp:
            _check(resp, "hits")


class TextQueryUser(_Base):
    """Text queries: ``/search`` with the reranker (3 of 4) and without (1 of 4)."""

    @task(3)
    def search_rerank(self) -> None:
        self.search(random.choice(QUERIES), "/search [text, rerank]")

    @task(1)
    def search_no_rerank(self) -> None:
        self.search(random.choice(QUERIES), "/search [text, no rerank]", rerank=False)


class ImageQueryUser(_Base):
    """Image queries (no rerank, so the image path itself is measured): inline at three sizes, and URLs."""

    def on_start(self) -> None:
        self.images = inline_images()

    def _inline(self, label: str) -> None:
        self.search({"image": random.choice(self.images[label])}, f"/search [image inline {label}]", rerank=False)

    @tag("inline")
    @task(4)
    def inline_50kb(self) -> None:
        self._inline("50KB")

    @tag("inline")
    @task(2)
    def inline_500kb(self) -> None:
        self._inline("500KB")

    @tag("inline")
    @task(1)
    def inline_2mb(self) -> None:
        self._inline("2MB")

    @tag("url")
    @task(4)
    def url(self) -> None:
        if not IMAGE_BASE:
            return  # no static server given: run with --exclude-tags url
        ref = f"{IMAGE_BASE}/img{random.randrange(URL_IMAGES)}.png"
        self.search({"image": ref}, "/search [image url]", rerank=False)


class RerankUser(_Base):
    """``/rerank`` with 10, 50 and 200 text candidates for one text query."""

    def _rerank(self, n: int) -> None:
        start = random.randrange(len(DOC_TEXTS))
        docs = [DOC_TEXTS[(start + i) % len(DOC_TEXTS)] for i in range(n)]
        body = {"query": random.choice(QUERIES), "documents": docs, "top_n": 10}
        with self.client.post("/rerank", json=body, name=f"/rerank [{n}]", catch_response=True) as resp:
            _check(resp, "results")

    @tag("rerank10")
    @task(4)
    def rerank_10(self) -> None:
        self._rerank(10)

    @tag("rerank50")
    @task(2)
    def rerank_50(self) -> None:
        self._rerank(50)

    @tag("rerank200")
    @task(1)
    def rerank_200(self) -> None:
        self._rerank(200)


_ids = itertools.count()


class MixedUser(_Base):
    """Interactive search with ingestion alongside: 6 text searches (4 reranked), 1 image search, 1 upsert of
    4 documents embedded by the service, per 8 requests."""

    @task(4)
    def search_rerank(self) -> None:
        self.search(random.choice(QUERIES), "/search [text, rerank]")

    @task(2)
    def search_no_rerank(self) -> None:
        self.search(random.choice(QUERIES), "/search [text, no rerank]", rerank=False)

    @task(1)
    def search_image(self) -> None:
        if IMAGE_BASE:
            query: dict[str, str] = {"image": f"{IMAGE_BASE}/img{random.randrange(URL_IMAGES)}.png"}
            self.search(query, "/search [image url]", rerank=False)
        else:
            self.search({"image": random.choice(inline_images()["50KB"])}, "/search [image inline 50KB]", rerank=False)

    @task(1)
    def ingest(self) -> None:
        tag_ = uuid.uuid4().hex[:8]
        docs = [
            {
                "id": f"mixed-{tag_}-{next(_ids)}",
                "text": random.choice(INGEST_TEXTS),
                "metadata": {"source": "loadtest"},
            }
            for _ in range(4)
        ]
        body = {"collection": COLLECTION, "documents": docs}
        with self.client.post("/upsert", json=body, name="/upsert [4 docs]", catch_response=True) as resp:
            _check(resp, "upserted")
