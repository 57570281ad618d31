"""SIGKILL of Search during a bulk image upsert (issue #13 acceptance): every acknowledged document is there after
a restart with its stored image and thumbnail, and the media directory holds no temporary files (a crash between a
write and its rename leaves one: the restart sweeps it)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx

from bench.support.images import data_uri, make_image
from bench.support.servers import BentoServer, bento_env
from tests.conftest import BENTOML


def test_sigkill_during_bulk_image_upsert_keeps_acknowledged_media(tmp_path: Path, model_urls: dict[str, str]) -> None:
    # Search alone (the model services it calls by URL are other deployments), with its own media directory
    urls = {k: v for k, v in model_urls.items() if k != "MMSEARCH_MEDIA_URI"}
    env = bento_env(tmp_path, **urls, MMSEARCH_MEDIA_SWEEP_AGE_S="0")
    server = BentoServer([*BENTOML, "service.search:Search"], env, tmp_path / "server.log").start()
    media = tmp_path / "media"
    acked: list[str] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for b in range(1000):
                if stop.is_set():
                    return
                docs = [
                    {"id": f"w{w}-b{b}-{i}", "image": data_uri(make_image(10_000 * w + 10 * b + i))} for i in range(4)
                ]
                try:
                    r = c.post("/upsert", json={"collection": "bulk", "documents": docs})
                except httpx.HTTPError:
                    return  # the server died mid-request: not acknowledged
                if r.status_code != 200:
                    return
                acked.extend(r.json()["ids"])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 24 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) >= 24, server.tail()
    finally:
        server.kill()  # SIGKILL the arbiter and every worker while writes are in flight
        stop.set()
        for t in threads:
            t.join(timeout=60)
    crash_leftover = media / ".tmp-crashed-write"  # what a kill between a write and its rename leaves
    crash_leftover.write_bytes(b"half an image")

    server.start()
    try:
        got = httpx.post(f"{server.url}/get", json={"collection": "bulk", "ids": acked}, timeout=60).json()["documents"]
        assert sorted(d["id"] for d in got) == sorted(acked)
        for d in got:
            name = d["image"].removeprefix("media://")
            assert httpx.get(f"{server.url}/media/{name}", timeout=30).status_code == 200, d
            assert httpx.get(f"{server.url}{d['thumbnail']}", timeout=30).status_code == 200, d
        assert [n for n in os.listdir(media) if n.startswith(".tmp-")] == []
    finally:
        server.stop()
