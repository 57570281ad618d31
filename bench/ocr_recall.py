"""OCR word recall on the screenshot set: the share of the words drawn on each page that the Reader read.

    mmsearch eval --make-screens /tmp/screens
    .venv/bin/python -m bench.ocr_recall /tmp/screens --url http://127.0.0.1:3000             # reads every page
    .venv/bin/python -m bench.ocr_recall /tmp/screens --collection screens_lite                # what ingest stored

``truth.jsonl`` (written by ``--make-screens``) holds every line drawn on each page. Without ``--collection`` every
page image is sent to the server's ``/ocr`` (the Reader, full resolution); with it, the ``ocr_text`` that ingest
stored is read back with ``/get`` (the pages of a kept ``mmsearch eval --keep`` run, no OCR repeated).

A word is a whitespace-separated token, lower-cased, with leading/trailing punctuation stripped (``"$1,860"`` ->
``1,860``; ``"26.4%"`` -> ``26.4``): a word read with a wrong letter, or run into its neighbour, is missed.
Recall counts words with multiplicity and is reported per page condition (``clean``, ``small``, ``hard``,
``scanned``) over all of that condition's words.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

_STRIP = "\"'`.,:;!?()[]{}<>$%#*+-=/\\|"


def words(lines: Iterable[str]) -> Counter[str]:
    """The words of ``lines`` as OCR recall counts them."""
    out: Counter[str] = Counter()
    for line in lines:
        for token in line.split():
            w = token.strip(_STRIP).lower()
            if w:
                out[w] += 1
    return out


def word_recall(truth_lines: Sequence[str], read_text: str | None) -> tuple[int, int]:
    """``(found, total)``: how many of the words drawn were read (each occurrence counted once)."""
    truth = words(truth_lines)
    read = words((read_text or "").splitlines())
    return sum(min(n, read[w]) for w, n in truth.items()), sum(truth.values())


def _read_pages(url: str, root: Path, pages: list[dict[str, Any]], batch: int, timeout: float) -> dict[str, str]:
    out: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for i in range(0, len(pages), batch):
            part = pages[i : i + batch]
            inputs = []
            for p in part:
                data = (root / p["image"]).read_bytes()
                kind = "jpeg" if p["image"].endswith(".jpg") else "png"
                inputs.append({"image": f"data:image/{kind};base64,{base64.b64encode(data).decode()}"})
            resp = client.post("/ocr", json={"inputs": inputs})
            resp.raise_for_status()
            for p, result in zip(part, resp.json()["results"], strict=True):
                out[p["_id"]] = result["text"]
            print(f"read {min(i + batch, len(pages))}/{len(pages)} pages", file=sys.stderr)
    return out


def _stored(url: str, collection: str, ids: list[str], timeout: float) -> dict[str, str]:
    resp = httpx.post(f"{url}/get", json={"collection": collection, "ids": ids}, timeout=timeout)
    resp.raise_for_status()
    return {d["id"]: d.get("ocr_text") or "" for d in resp.json()["documents"]}


def recall_table(pages: list[dict[str, Any]], read: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per condition (and ``all``): pages, words, words found, recall; plus the worst page's recall."""
    table: dict[str, dict[str, float]] = {}
    for p in pages:
        found, total = word_recall(p["lines"], read.get(p["_id"]))
        for key in (p["condition"], "all"):
            row = table.setdefault(key, {"pages": 0, "words": 0, "found": 0, "worst_page": 1.0})
            row["pages"] += 1
            row["words"] += total
            row["found"] += found
            row["worst_page"] = min(row["worst_page"], found / total if total else 1.0)
    for row in table.values():
        row["recall"] = row["found"] / row["words"] if row["words"] else 1.0
    return table


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path, help="a directory written by `mmsearch eval --make-screens`")
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--collection", help="read the OCR text ingest stored in this collection instead of /ocr")
    ap.add_argument("--batch", type=int, default=4, help="pages per /ocr request (4)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args(argv)
    pages = [json.loads(line) for line in (args.dataset / "truth.jsonl").read_text().splitlines() if line.strip()]
    if args.collection:
        read = _stored(args.url, args.collection, [p["_id"] for p in pages], args.timeout)
    else:
        read = _read_pages(args.url, args.dataset, pages, args.batch, args.timeout)
    table = recall_table(pages, read)
    print(f"{'condition':10s} {'pages':>5s} {'words':>6s} {'found':>6s} {'recall':>7s} {'worst page':>10s}")
    for key in sorted(table, key=lambda k: (k == "all", k)):
        r = table[key]
        counts = f"{r['pages']:5.0f} {r['words']:6.0f} {r['found']:6.0f}"
        print(f"{key:10s} {counts} {r['recall']:7.3f} {r['worst_page']:10.3f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
