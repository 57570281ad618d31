"""``mmsearch eval`` end to end: the synthetic set against the composed Search bento (tiny random models)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmsearch_client import Client, Document
from mmsearch_client.eval.runner import TINY_WARNING
from mmsearch_client.eval.synthetic import GROUP_EXACT, write_synthetic

from bench.support.servers import BentoServer

pytestmark = pytest.mark.e2e


def mmsearch(*args: str, url: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MMSEARCH_URL": url}
    env.pop("MMSEARCH_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "mmsearch_client.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_eval_synthetic_set(search_server: BentoServer, tmp_path: Path) -> None:
    dataset = write_synthetic(tmp_path / "evalset").root
    out = tmp_path / "run.json"
    res = mmsearch("eval", str(dataset), "--json", str(out), "--no-progress", url=search_server.url)
    assert res.returncode == 0, res.stderr + res.stdout
    stdout = res.stdout
    header = stdout.split("Retrieval quality")[0]
    assert TINY_WARNING in header  # said plainly, before any number
    assert "Retrieval quality by query -> relevant-document modality" in stdout
    for row in ("image->image", "text->image", "text->text", "group:image_exact_copy", "group:image_rerender"):
        assert f"\n  {row} " in stdout, row
    assert "Latency per stage" in stdout and "Score distribution" in stdout

    report = json.loads(out.read_text())
    assert report["server"]["tiny_random_weights"] is True and report["warning"] == TINY_WARNING
    off, on = report["runs"]["rerank_off"], report["runs"]["rerank_on"]
    exact = off["by_group"][GROUP_EXACT]
    # identical input -> identical embedding -> cosine 1.0: recall@1 is 1.0 for ANY model when rerank is off
    assert exact["queries"] == 20 and exact["metrics"]["recall@1"] == 1.0
    assert off["errors"] == 0 and off["reranked"] == 0
    # rerank on: reported as measured (the tiny reranker's scores mean nothing), but every answer was reranked
    assert on["errors"] == 0 and on["reranked"] == on["overall"]["queries"] == off["overall"]["queries"] > 0
    for stage in ("embed", "retrieve", "rerank", "total"):
        assert on["latency_ms"][stage]["n"] == on["overall"]["queries"]
        assert on["latency_ms"][stage]["p50"] <= on["latency_ms"][stage]["p95"] <= on["latency_ms"][stage]["p99"]
    # the tiny CLIP embeds text or image, not both: the 5 text+image documents are skipped, and said so
    assert report["skipped"]["documents"] == {"text+image": 5}
    assert "skipped 5 text+image documents" in stdout
    assert report["ingest"]["upserted"] == 25 and report["ingest"]["failed"] == 0

    # the collection the run created was dropped after it (no --keep)
    assert report["collection_dropped"] is True
    with Client(search_server.url) as client:
        assert report["params"]["collection"] not in {c.name for c in client.collections().collections}

    # the saved report (A) compared with a copy whose numbers differ by known amounts (B): no server needed, and
    # every A-B cell is the known difference (a report compared with itself shows zeros whatever the diff does)
    other = copy.deepcopy(report)
    b_exact = other["runs"]["rerank_off"]["by_group"][GROUP_EXACT]
    b_exact["queries"] -= 2
    for m in report["metrics"]:
        b_exact["metrics"][m] -= 0.25
    other["runs"]["rerank_off"]["latency_ms"]["total"]["p50"] += 7.5
    b_path = tmp_path / "other.json"
    b_path.write_text(json.dumps(other))
    res = mmsearch("eval", str(out), "--compare", str(b_path), url="http://127.0.0.1:9")
    assert res.returncode == 0, res.stderr
    assert "Retrieval quality, A vs B" in res.stdout
    rows = [r.split() for r in res.stdout.splitlines()]

    def row(*key: str) -> list[str]:
        found = [r[len(key) :] for r in rows if r[: len(key)] == list(key)]
        assert len(found) == 1, (key, res.stdout)
        return found[0]

    n_metrics = len(report["metrics"])
    assert row("group:image_exact_copy", "off", "A")[:2] == ["20", "1.000"]  # recall@1 first, as asserted above
    assert row("group:image_exact_copy", "off", "B")[:2] == ["18", "0.750"]
    assert row("group:image_exact_copy", "off", "A-B") == ["+2"] + ["+0.250"] * n_metrics
    assert row("group:image_rerender", "off", "A-B") == ["+0"] + ["+0.000"] * n_metrics  # unchanged scope
    p50_a = report["runs"]["rerank_off"]["latency_ms"]["total"]["p50"]
    assert row("total", "off", "A")[0] == f"{p50_a:.1f}"
    assert row("total", "off", "A-B") == ["-7.5", "+0.0", "+0.0"]


def test_eval_into_an_existing_collection_keeps_it(search_server: BentoServer, tmp_path: Path) -> None:
    dataset = write_synthetic(tmp_path / "evalset").root
    with Client(search_server.url) as client:
        client.upsert([Document("mine", text="a document of the user's")], collection="eval_users_own")
        res = mmsearch(
            "eval", str(dataset), "-c", "eval_users_own", "--json", "-", "--no-progress", url=search_server.url
        )
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["collection_dropped"] is False
        left = {c.name: c.count for c in client.collections().collections}
        assert left["eval_users_own"] == 1  # only the evaluation's documents were deleted
        client.drop_collection("eval_users_own")


def test_eval_rejects_an_invalid_dataset(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (tmp_path / "qrels.tsv").write_text("q1\td2\t1\n")
    res = mmsearch("eval", str(tmp_path), url="http://127.0.0.1:9")
    assert res.returncode == 1
    assert "corpus.jsonl:1: has neither 'text' nor 'image'" in res.stderr
    assert "qrels.tsv:1: corpus-id: unknown corpus id 'd2'" in res.stderr
