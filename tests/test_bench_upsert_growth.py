"""Smoke test of ``bench.upsert_growth`` (#13.7): the tiny run completes, writes its JSON, and the index it grew
past the threshold was built (in the background) and finds every probe. The p99/median goal itself is measured by
the full run (bench/RESULTS.md), never asserted here."""

from __future__ import annotations

import json
from pathlib import Path


def test_upsert_growth_tiny(tmp_path: Path) -> None:
    from bench import upsert_growth

    upsert_growth.main(["--tiny", "--out", str(tmp_path)])
    body = json.loads((tmp_path / "upsert_growth-tiny.json").read_text())
    assert body["count"] == 3_000 and body["upserts"] == 10
    assert body["ann_index_built"] is True and body["self_match_top1"] == "10/10"
    assert body["maintenance"] == "background thread"
    assert body["latency_ms"]["p50_ms"] > 0 and body["p99_over_median"] > 0
    assert set(body["goal"]) == {"p99_over_median_max", "p99_over_median", "met"}
