"""The rerank stage's overhead over the Reranker's own work, for image candidates (issue #13.2).

    .venv/bin/python -m bench.rerank_media            # 50 image candidates, 60 searches (~2 min with start-up)
    .venv/bin/python -m bench.rerank_media --tiny     # 8 searches after 2 of warm-up (a smoke run: seconds)

A Reranker bento (tiny profile) and a Search bento that calls it by URL (separate processes, one media directory).
The test suite's smoke run (``MMSEARCH_BENCH_WIRE``, ``bench.common.search_env``) uses the suite's Reranker instead,
with a Search wired to it and its media store: the figure is a difference over one Reranker, whatever its settings.
50 inline images (224 x 224 PNG) are upserted; Search stores them and keeps ``media://`` references. Then, in
pairs, one client sends

- ``/search`` (``candidates = top_k = 50``, ``rerank: true``): Search's ``timings_ms.rerank`` is the stage as Search
  sees it (build the candidates, call the Reranker, map the scores), and
- the same 50 ``media://`` documents to the Reranker's own ``/rerank`` directly: what the Reranker itself takes
  (read the stored images, decode, score) plus one HTTP hop, as Search pays too.

overhead = rerank stage - direct /rerank (per pair); goal p50 <= 10 ms. Before #13 Search read every stored image,
base64-encoded it on its event loop and the Reranker decoded it again, for every candidate of every search.
"""

from __future__ import annotations

import base64
import contextlib
import io
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    HostLoad,
    base_parser,
    bench_env,
    bento,
    latency_summary,
    percentile,
    print_table,
    run_header,
    search_env,
    wiring,
    write_results,
)

GOAL_MS = 10.0
CANDIDATES = 50


def _image(seed: int) -> str:
    from bench.support.images import make_image

    buf = io.BytesIO()
    make_image(seed, (224, 224)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@contextlib.contextmanager
def services(work: Path) -> Iterator[tuple[str, str]]:
    """(Reranker URL, Search URL): a Reranker bento and a Search bento calling it, one media directory; or, under
    ``MMSEARCH_BENCH_WIRE`` (smoke runs), the wired Reranker and a Search wired to it and to its media store."""
    wired = wiring().get("MMSEARCH_RERANKER_URL")
    if wired:
        with bento("service.search:Search", search_env(work / "search"), work / "search") as search:
            yield wired.rstrip("/"), search.url
        return
    shared = {"MMSEARCH_MEDIA_DIR": str(work / "media")}
    with bento("service.reranker:Reranker", bench_env(work / "reranker", **shared), work / "reranker") as rr:
        env = bench_env(work / "search", MMSEARCH_RERANKER_URL=rr.url, **shared)
        with bento("service.search:Search", env, work / "search") as search:
            yield rr.url, search.url


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = base_parser(__doc__ or "").parse_args(argv)
    searches, warmup = (8, 2) if args.tiny else (60, 5)
    started = time.monotonic()
    results: dict[str, Any] = {**run_header(args), "candidates": CANDIDATES, "searches": searches, "warmup": warmup}
    with (
        tempfile.TemporaryDirectory(prefix="mmsearch-rerank-media-") as tmp,
        services(Path(tmp)) as (rr_url, search_url),
        httpx.Client(timeout=120) as c,
    ):
        docs = [{"id": f"i{k}", "image": _image(k)} for k in range(CANDIDATES)]
        r = c.post(f"{search_url}/upsert", json={"collection": "rr", "documents": docs})
        r.raise_for_status()
        got = c.post(f"{search_url}/get", json={"collection": "rr", "ids": [d["id"] for d in docs]}).json()
        refs = [{"image": d["image"]} for d in got["documents"]]
        body = {"collection": "rr", "query": "a photo", "top_k": CANDIDATES, "candidates": CANDIDATES}
        stage: list[float] = []
        direct: list[float] = []
        load = HostLoad().start()
        for k in range(warmup + searches):
            res = c.post(f"{search_url}/search", json={**body, "rerank": True}).json()
            assert res["reranked"] and not res["warnings"], res.get("warnings")
            t0 = time.perf_counter()
            d = c.post(f"{rr_url}/rerank", json={"query": "a photo", "documents": refs})
            elapsed = (time.perf_counter() - t0) * 1000
            d.raise_for_status()
            if k >= warmup:
                stage.append(res["timings_ms"]["rerank"])
                direct.append(elapsed)
        diffs = [s - d for s, d in zip(stage, direct, strict=True)]
        results["host_load"] = load.stop()
    results["rerank_stage"] = latency_summary(stage)
    results["direct_rerank"] = latency_summary(direct)
    results["overhead"] = latency_summary(diffs)
    p50 = round(percentile(diffs, 50), 2)
    results["goal"] = {"overhead_p50_max_ms": GOAL_MS, "overhead_p50_ms": p50, "met": p50 <= GOAL_MS}
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(
        f"Rerank stage vs the Reranker's own work ({CANDIDATES} image candidates, {searches} searches)",
        ["", "p50 ms", "p90 ms", "p99 ms"],
        [
            [name, results[key]["p50_ms"], results[key].get("p90_ms", ""), results[key]["p99_ms"]]
            for name, key in (("rerank stage (Search)", "rerank_stage"), ("direct /rerank", "direct_rerank"),
                              ("overhead (pairwise)", "overhead"))
        ],
    )  # fmt: skip
    print(f"goal: overhead p50 <= {GOAL_MS} ms: {p50} ms -> {results['goal']['met']}")
    write_results(args.out, "rerank_media" + ("-tiny" if args.tiny else ""), results)
    return results


if __name__ == "__main__":
    main()
