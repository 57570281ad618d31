"""Smoke tests of the benchmark harnesses (bench/, loadtest/) at their tiny sizes, so that they cannot rot.

Each harness runs in this process (one import of torch for all) against real bentos on loopback, writes its JSON
into a temporary directory (never bench/results) and the JSON is checked for its keys and positive throughputs.
The figures themselves mean nothing at this size.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.support.milvus_server import MilvusServer
from bench.support.servers import REPO, BentoServer, tiny_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _shared_tiny_models(monkeypatch: pytest.MonkeyPatch, tiny_models: object) -> None:
    """Benchmarks use the test suite's tiny models (built once by the session fixture)."""
    monkeypatch.setenv("MMSEARCH_TINY_DIR", str(tiny_dir()))


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch, model_urls: dict[str, str]) -> None:
    """A harness whose figures do not depend on its model services' settings wires its Search to the session's
    model services (``bench.common.search_env``): Search's worker only, instead of a composed bento's four."""
    from bench.common import WIRE_VAR

    monkeypatch.setenv(WIRE_VAR, json.dumps(model_urls))


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


def test_serving_and_batching(out: Path, embedder_server: BentoServer, reranker_server: BentoServer) -> None:
    """Against the session's Embedder and Reranker (the tiny models at their defaults: no bentos of its own)."""
    from bench import batching, serving

    urls = ["--embedder-url", embedder_server.url, "--reranker-url", reranker_server.url]
    serving.main(["--tiny", "--out", str(out), *urls])
    body = load(out / "serving-tiny.json")
    assert body["embedder"]["url_given"] and body["reranker"]["url_given"]
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


@pytest.mark.usefixtures("wired")
def test_search_latency(out: Path) -> None:
    from bench import search_latency

    search_latency.main(["--tiny", "--out", str(out)])
    body = load(out / "search_latency-lancedb-tiny.json")
    assert body["settings"]["wired"] is True
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


@pytest.mark.usefixtures("wired")
def test_rerank_media(out: Path) -> None:
    from bench import rerank_media

    rerank_media.main(["--tiny", "--out", str(out)])
    body = load(out / "rerank_media-tiny.json")
    assert body["settings"]["wired"] is True
    assert body["searches"] == 8 and body["overhead"]["n"] == 8 and body["warmup"] == 2
    assert positive(body["rerank_stage"]["p50_ms"]) and positive(body["direct_rerank"]["p50_ms"])
    assert "met" in body["goal"]


@pytest.mark.usefixtures("wired")
def test_reingest(out: Path) -> None:
    from bench import reingest

    reingest.main(["--tiny", "--out", str(out)])
    body = load(out / "reingest-tiny.json")
    assert body["settings"]["wired"] is True
    assert body["first_pass"]["model_inputs"] == 100 and body["first_pass"]["cache_hits"] == 0
    assert body["second_pass"]["model_inputs"] == 0 and body["second_pass"]["cache_hits"] == 100
    assert positive(body["speedup"]) and "met" in body["goal"]


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


def test_milvus_consistency(out: Path, milvus_server: MilvusServer) -> None:
    from bench import milvus_consistency

    args = ["--tiny", "--uri", milvus_server.uri, "--docs", "200", "--queries", "5", "--rounds", "3", "--out", str(out)]
    milvus_consistency.main(args)
    body = load(out / "milvus_consistency-tiny.json")
    assert set(body["queries"]) == {*milvus_consistency.LEVELS, "mmsearch index.search"}
    assert all(positive(q["p50_ms"]) and q["n"] == 5 for q in body["queries"].values())
    assert set(body["writes_ack"]) == {"mmsearch upsert", "mmsearch delete", "bare upsert", "bare delete"}
    # what mmsearch relies on: another process's Bounded read right after the acknowledgement sees every write
    assert body["read_your_writes"]["mmsearch"] == {"rounds": 3, "new_visible": 3, "deleted_gone": 3}


def test_image_path(out: Path) -> None:
    from bench import image_path

    image_path.main(["--tiny", "--out", str(out)])
    body = load(out / "image_path-tiny.json")
    modes = {p["mode"] for p in body["points"]}
    assert modes == {"url", "inline", "decode"}
    assert all(positive(p["images_per_s"]) and positive(p["p50_ms"]) for p in body["points"])


def test_priority(out: Path) -> None:
    from bench import priority

    args = ["--configs", "query-first,fifo", "--queries", "20", "--clients", "1", "--images", "16"]
    priority.main(["--tiny", "--out", str(out), *args])
    body = load(out / "priority-tiny.json")
    assert set(body["configs"]) == {"query-first", "fifo"}
    for c in body["configs"].values():
        assert positive(c["idle_p95_ms"]) and positive(c["busy_p95_ms"]) and positive(c["ratio"])
        assert positive(c["docs_per_s_while_querying"]) and positive(c["docs_per_s_ingest_alone"])
        assert c["ingest_errors"] == 0 and len(c["rounds"]) == 1
    assert set(body["goal"]) == {"ratio_max", "met"}


@pytest.mark.usefixtures("wired")
def test_loadtest_run(out: Path) -> None:
    from loadtest import run

    run.main(["--tiny", "--out", str(out)])
    body = load(out / "loadtest-MixedUser-tiny.json")
    assert body["settings"]["wired"] is True
    agg = next(r for r in body["stats"] if r["name"] == "Aggregated")
    assert agg["requests"] > 0 and agg["failures"] == 0, body["failures"]
    assert positive(agg["rps"]) and positive(agg["p50_ms"])
    assert {"p99_ms", "failures", "met"} <= set(body["goal"])


@pytest.fixture(scope="module")
def gpu_dry_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: object
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One ``bench/gpu.sh --dry-run`` for the module: its first harness is ``bench.gpu_batching --tiny`` (the
    GPU-shaped model over HTTP), checked by ``test_gpu_batching``; the script itself by ``test_gpu_script_dry_run``."""
    out = tmp_path_factory.mktemp("gpu-dry-run")
    env = {**os.environ, "MMSEARCH_BENCH_OUT": str(out), "MMSEARCH_TINY_DIR": str(tiny_dir())}
    r = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=900
    )
    return r, out


@pytest.mark.timeout(900)  # two harnesses with their bentos: ~1 min here when quiet, longer on a busy machine
def test_gpu_batching(gpu_dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    r, out = gpu_dry_run
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    body = load(out / "gpu_batching-dryrun.json")
    assert set(body["coalesce"]) == {"auto", "0"}
    assert body["coalesce"]["auto"]["chosen_ms"] > 0 and body["coalesce"]["0"]["chosen_ms"] == 0  # GPU-shaped: on
    for setting in body["coalesce"].values():
        for n, p in setting["clients"].items():
            assert positive(p["items_per_s"]) and positive(p["ideal_items_per_s"]) and positive(p["ratio"]), (n, p)
            assert p["rounds"][0]["errors"] == 0 and p["mean_batch"] >= 1
    assert {"p50_1_ms", "p50_1_bound_ms", "met_1"} <= set(body["goal"]["auto"])


def test_gpu_script_without_a_gpu_says_so(tmp_path: Path) -> None:
    """No GPU here: the script refuses with exit status 2 and points to --dry-run (bench/gpu.sh)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the no-GPU path does not apply")
    env = {**os.environ, "MMSEARCH_BENCH_OUT": str(tmp_path)}
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--dry-run" in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


@pytest.mark.timeout(900)  # two harnesses with their bentos: ~1 min here when quiet, longer on a busy machine
def test_gpu_script_dry_run(gpu_dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """``bench/gpu.sh --dry-run``: both GPU harnesses end to end on CPU at toy size."""
    r, out = gpu_dry_run
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "B parameters" in r.stdout  # the 2B config built on the meta device
    assert "the service chose 5.0 ms" in r.stdout  # MMSEARCH_BATCH_COALESCE_MS=auto on an accelerated model
    assert load(out / "gpu_batching-dryrun.json")["coalesce"]["auto"]["chosen_ms"] == 5.0
    assert load(out / "serving-qwen3vl-dryrun.json")["embedder"]["workloads"]


def test_peer_model_dir_is_equal_work(tmp_path: Path) -> None:
    """The copy of a CLIP that Infinity (transformers 4.x) reads: same weights, its processor file, max_length 77."""
    from bench.peer import infinity_model_dir

    src = tmp_path / "clip"
    src.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (src / name).write_text(name)
    (src / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (src / "processor_config.json").write_text(json.dumps({"image_processor": {"size": {"shortest_edge": 224}}}))
    out = infinity_model_dir(src)
    assert json.loads((out / "config.json").read_text()) == {"model_type": "clip", "max_length": 77}
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre == {"size": {"shortest_edge": 224}, "processor_class": "CLIPProcessor"}
    assert (out / "model.safetensors").resolve() == (src / "model.safetensors").resolve()


def test_gpu_script_parses_and_2b_config_builds(capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu.sh")], check=True)
    from bench import models

    models.main(["qwen3vl-2b", "--meta"])
    line = capsys.readouterr().out
    assert "28x2048" in line and "24x1024" in line
    billions = float(line.split(" B parameters")[0].rsplit(" ", 1)[1])
    assert 2.0 < billions < 2.3  # Qwen3-VL-2B


@pytest.mark.usefixtures("wired")
def test_page(out: Path) -> None:
    from bench import page

    page.main(["--tiny", "--out", str(out)])
    body = load(out / "page-tiny.json")
    assert body["settings"]["wired"] is True
    for name in ("first_contentful_paint", "baseline_first_contentful_paint", "ready"):
        assert body["page_load"][name]["n"] == 5 and positive(body["page_load"][name]["p50_ms"]), name
    assert body["search"]["cards"] == 50 and body["search"]["render"]["n"] == 5
    assert positive(body["search"]["images_drawn"]["p50_ms"])


@pytest.mark.usefixtures("wired")
def test_attacks(out: Path) -> None:
    from bench import attacks

    attacks.main(["--tiny", "--seconds", "1", "--phases", "baseline,filter-cost,huge-array", "--out", str(out)])
    body = load(out / "attacks-tiny.json")
    assert body["settings"]["wired"] is True
    assert set(body["phases"]) == {"baseline", "filter-cost", "huge-array"}
    for phase in body["phases"].values():
        assert phase["rerank_off"]["n"] >= 1 and positive(phase["p95_ms"]) and phase["ok_fraction"] == 1.0
    assert set(body["phases"]["huge-array"]["attacker_statuses"]) == {"413"}
    assert "400" in body["phases"]["filter-cost"]["attacker_statuses"]
    assert "met" in body["goal"]


def test_gap_latency(out: Path) -> None:
    from bench import gap_latency

    gap_latency.main(["--tiny", "--backends", "lancedb,milvus", "--out", str(out)])
    body = load(out / "gap_latency-tiny.json")
    for backend in ("lancedb", "milvus"):
        r = body["results"][backend]
        assert positive(r["raw"]["p50_ms"]) and positive(r["balanced"]["p50_ms"]) and positive(r["ratio_p50"])
        assert "met" in body["goal"][backend]


def test_av_decode(out: Path) -> None:
    from bench import av_decode

    av_decode.main(["--tiny", "--out", str(out)])
    body = load(out / "av_decode-tiny.json")
    points = {(p["shape"], p["threads"]): p for p in body["points"]}
    assert set(points) == {
        ("video h264 320x180 30fps", 1),
        ("video h264 320x180 30fps", 0),
        ("audio mp3 44.1k stereo", 1),
    }
    assert all(positive(p["clips_per_s"]) and positive(p["media_s_per_s"]) for p in points.values())
    assert points[("video h264 320x180 30fps", 1)]["frames_out"] == [2, 180, 320, 3]  # 1 s at 2 fps
    assert points[("audio mp3 44.1k stereo", 1)]["samples_out"] == [32_000]  # 2 s at 16 kHz mono


def test_av_serving(out: Path, video_embedder_server: BentoServer) -> None:
    """Video serving efficiency against the session's video Embedder (``--embedder-url``: no bento of its own)."""
    from bench import av_serving

    av_serving.main(["--tiny", "--out", str(out), "--embedder-url", video_embedder_server.url])
    body = load(out / "av_serving-tiny.json")
    assert body["frames_per_clip"] == [2, 48, 64, 3]  # 1 s at 2 fps, 64x48
    assert body["parity_max_abs_diff"] <= 1e-5  # the service encoded the arrays the raw side encoded
    excl, incl = body["decode_excluded"], body["decode_included"]
    assert [r["batch"] for r in excl["raw"]] == [1, 8] and [r["batch"] for r in incl["raw"]] == [8]
    assert all(positive(r["items_per_s"]) for r in excl["raw"] + incl["raw"])
    assert [p["concurrency"] for p in excl["service"]] == [1, 8]
    for p in excl["service"]:
        assert positive(p["items_per_s"]) and p["errors"] == 0 and positive(p["ratio_vs_raw"]), p
        assert sum(b["batches"] for b in p["model_batches"].values()) >= 1
    assert positive(excl["paired"]["ratio"]) and positive(incl["paired"]["ratio"])
    summary = body["summary"]
    assert (summary["clients"], summary["batch"]) == (8, 8)
    for key in ("service_clips_per_s", "raw_decode_excluded_clips_per_s", "raw_decode_included_clips_per_s"):
        assert positive(summary[key]), key
    assert summary["ratio"] == excl["ratio"] and summary["ratio_decode_included"] == incl["paired"]["ratio"]
    assert len(body["loadavg_start"]) == 3 and body["raw_omp_wait_policy"]["value"] == "PASSIVE"


def test_idle_model(out: Path) -> None:
    from bench import idle_model

    idle_model.main(["--tiny", "--out", str(out)])
    body = load(out / "idle_model-tiny.json")
    for setup in ("alone", "with-idle"):
        (r,) = body["setups"][setup]["rounds"]
        assert positive(r["rps"]) and positive(r["p50_ms"]) and r["errors"] == 0, (setup, r)
    assert positive(body["ratio"]) and "met" in body["goal"]


def test_allocator(out: Path) -> None:
    from bench import allocator

    allocator.main(["--tiny", "--out", str(out)])
    body = load(out / "allocator-tiny.json")
    for workload in ("text", "image"):
        w = body["workloads"][workload]
        for setup in ("shipped", "mmap-1MiB"):
            (r,) = w[setup]["rounds"]
            assert positive(r["items_per_s"]) and r["errors"] == 0, (workload, setup, r)
            assert r["user_cpu_s"] > 0 and r["minor_faults_per_input"] >= 0, (workload, setup, r)
        assert positive(w["ratio"]) and len(w["round_ratios"]) == 1
    assert body["setups"]["mmap-1MiB"] == "glibc.malloc.mmap_threshold=1048576"


def test_length_groups(out: Path) -> None:
    from bench import length_groups

    length_groups.main(["--tiny", "--out", str(out)])
    body = load(out / "length_groups-tiny.json")
    one, grouped = (body["ways"][w]["runs"] for w in length_groups.WAYS)
    assert len(one) == len(grouped) == 2  # 2 batches x 1 round, each run both ways
    assert all(r["passes"] == 1 for r in one) and all(r["passes"] >= 2 for r in grouped), (one, grouped)
    assert all(positive(r["cpu_ms_per_pair"]) for r in one + grouped)
    assert body["max_abs_diff"] < 1e-5  # the same scores as CrossEncoder.predict
    tokens = body["tokens_per_pair"]
    assert tokens["min"] < tokens["max"] and tokens["real"] < tokens["padded"]
    assert len(body["cpu_saved_per_batch"]) == 2
