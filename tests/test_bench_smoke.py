"""Smoke tests of the benchmark harnesses (bench/, loadtest/) at their tiny sizes, so that they cannot rot.

Each harness runs in this process (one import of torch for all) against real bentos on loopback, writes its JSON
into a temporary directory (never bench/results) and the JSON is checked for its keys and positive throughputs.
The figures themselves mean nothing at this size.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import REPO, tiny_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _shared_tiny_models(monkeypatch: pytest.MonkeyPatch, tiny_models: object) -> None:
    """Benchmarks use the test suite's tiny models (built once by the session fixture)."""
    monkeypatch.setenv("MMSEARCH_TINY_DIR", str(tiny_dir()))


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


def load(path: Path) -> dict[str, Any]:
    body = json.loads(path.read_text())
    machine = body["machine"]
    assert machine["cpu_model"] and machine["logical_cpus"] >= 1 and machine["mem_total_gib"] > 0
    assert {"torch", "bentoml", "sentence-transformers"} <= set(machine["versions"])
    assert "settings" in body and body["finished_at"]
    return body


def positive(x: float) -> bool:
    return isinstance(x, int | float) and not math.isnan(x) and x > 0


def test_serving_and_batching(out: Path) -> None:
    from bench import batching, serving

    serving.main(["--tiny", "--out", str(out)])
    body = load(out / "serving-tiny.json")
    for kind, names in (("embedder", ("text", "image")), ("reranker", ("text->text", "text->image"))):
        for name in names:
            res = body[kind]["workloads"][name]
            assert [r["batch"] for r in res["raw"]] == [1, 8]
            assert all(positive(r["items_per_s"]) for r in res["raw"])
            assert positive(res["paired"]["ratio"]) and positive(res["ratio"])
            assert [p["concurrency"] for p in res["service"]] == [1, 32]
            for p in res["service"]:
                assert positive(p["items_per_s"]) and p["errors"] == 0, p
                assert positive(p["p50_ms"]) and positive(p["p99_ms"]) and positive(p["ratio_vs_raw"])
                assert sum(b["batches"] for b in p["model_batches"].values()) >= 1
            assert positive(res["batching_gain_32_vs_1"])
        assert set(body["goal"]) >= {"ratio_min"}

    batching.main(["--from-json", str(out / "serving-tiny.json"), "--out", str(out)])
    gain = load(out / "batching-tiny.json")["batching"]
    assert positive(gain["embedder/text"]["gain_32_vs_1"])
    assert gain["embedder/text"]["c32"]["batches"]


def test_search_latency(out: Path) -> None:
    from bench import search_latency

    search_latency.main(["--tiny", "--out", str(out)])
    body = load(out / "search_latency-lancedb-tiny.json")
    entry = body["collections"]["1000"]
    assert positive(entry["ingest"]["docs_per_s"])
    for key in ("rerank_off", "rerank_on"):
        m = entry[key]
        assert m["queries"] == 20
        assert positive(m["client"]["p50_ms"]) and positive(m["client"]["p99_ms"])
        assert set(m["stages_p50_ms"]) == {"embed", "retrieve", "rerank"}
        assert "overhead_p50_of_difference_ms" in m
    assert entry["rerank_on"]["stages_p50_ms"]["rerank"] > 0
    assert "met" in body["goal"]


def test_index_scale(out: Path) -> None:
    from bench import index_scale

    index_scale.main(["--tiny", "--out", str(out)])
    body = load(out / "index_scale-tiny.json")
    entry = body["sizes"]["2000"]
    assert positive(entry["numpy_brute_force"]["p50_ms"])
    for backend in ("lancedb", "milvus"):
        r = entry["backends"][backend]
        assert positive(r["ingest"]["vectors_per_s"]) and positive(r["exact"]["latency"]["p50_ms"])
        assert r["exact"]["recall_at_10"] >= 0.99  # exact search agrees with numpy
    assert 0 <= entry["backends"]["lancedb"]["ann"]["recall_at_10"] <= 1
    assert set(body["goal"]) >= {"exact_vs_numpy_p50", "ann_recall_at_10"}


def test_image_path(out: Path) -> None:
    from bench import image_path

    image_path.main(["--tiny", "--out", str(out)])
    body = load(out / "image_path-tiny.json")
    modes = {p["mode"] for p in body["points"]}
    assert modes == {"url", "inline", "decode"}
    assert all(positive(p["images_per_s"]) and positive(p["p50_ms"]) for p in body["points"])


def test_priority(out: Path) -> None:
    from bench import priority

    priority.main(["--tiny", "--out", str(out), "--configs", "query-first,fifo", "--queries", "20"])
    body = load(out / "priority-tiny.json")
    assert set(body["configs"]) == {"query-first", "fifo"}
    for c in body["configs"].values():
        assert positive(c["idle_p95_ms"]) and positive(c["busy_p95_ms"]) and positive(c["ratio"])
        assert positive(c["docs_per_s_while_querying"]) and positive(c["docs_per_s_ingest_alone"])
        assert c["ingest_errors"] == 0 and len(c["rounds"]) == 1
    assert set(body["goal"]) == {"ratio_max", "met"}


def test_loadtest_run(out: Path) -> None:
    from loadtest import run

    run.main(["--tiny", "--out", str(out)])
    body = load(out / "loadtest-MixedUser-tiny.json")
    agg = next(r for r in body["stats"] if r["name"] == "Aggregated")
    assert agg["requests"] > 0 and agg["failures"] == 0, body["failures"]
    assert positive(agg["rps"]) and positive(agg["p50_ms"])
    assert {"p99_ms", "failures", "met"} <= set(body["goal"])


def test_gpu_script_parses_and_2b_config_builds(capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu.sh")], check=True)
    from bench import models

    models.main(["qwen3vl-2b", "--meta"])
    line = capsys.readouterr().out
    assert "28x2048" in line and "24x1024" in line
    billions = float(line.split(" B parameters")[0].rsplit(" ", 1)[1])
    assert 2.0 < billions < 2.3  # Qwen3-VL-2B
