"""Reading screenshots end to end: real RapidOCR, real bentos on loopback, searched by the text in the images.

* ``make serve`` exactly as the README's quickstart runs it (the ``lite`` profile: bge-small-en-v1.5 from its wheel
  and RapidOCR, no reranker), with no way to reach a model hub: keyword, hybrid and vector hits on rendered
  screenshots, evidence boxes on the rendered words, filters on both sides of hybrid, image queries read by OCR.
* The tiny profile with OCR on and a text cross-encoder: the reranker scores image documents by their OCR text.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bench.support.images import Box, data_uri, overlap, text_image
from bench.support.servers import REPO, BentoServer, free_port
from service.config import LITE_EMBEDDER
from tests.conftest import serve_wired_search

pytestmark = pytest.mark.e2e

# Each page: lines drawn at (x, y); rendered with Pillow's bundled font, so every word's box is known.
PAGES: dict[str, list[tuple[str, tuple[int, int]]]] = {
    "invoice": [("Invoice total 418.20 EUR", (24, 30)), ("Shipping address Lisbon", (24, 110))],
    "backup": [("Nightly backup failed", (24, 30)), ("Storage volume full on db-02", (24, 110))],
    "roadmap": [("Product roadmap 2027", (24, 30)), ("Launch mobile app in spring", (24, 110))],
}
TEAMS = {"invoice": "finance", "backup": "ops", "roadmap": "product", "memo": "finance", "runbook": "ops"}
TEXTS = {
    "memo": "The Lisbon office paid the March invoice late",
    "runbook": "How to restore a failed backup from last week's snapshots",
}
SIZE = (640, 180)


def render(name: str) -> tuple[Image.Image, dict[str, Box]]:
    return text_image(PAGES[name], size=SIZE, font_size=26)


def line_box(name: str, line: int) -> Box:
    """The union of the rendered boxes of one line's words."""
    _, words = render(name)
    boxes = [words[w] for w in PAGES[name][line][0].split()]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def iou(a: Box, b: Box) -> float:
    inter = overlap(a, b) * (b[2] - b[0]) * (b[3] - b[1])
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"id": name, "image": data_uri(render(name)[0]), "metadata": {"team": TEAMS[name]}} for name in PAGES
    ]
    docs += [{"id": name, "text": text, "metadata": {"team": TEAMS[name]}} for name, text in TEXTS.items()]
    return docs


def post(server: BentoServer, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, timeout=180)


def search(server: BentoServer, query: Any, **kw: Any) -> dict[str, Any]:
    resp = post(server, "/search", {"collection": "screens", "query": query, "top_k": 5, **kw})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def make_serve_env(tmp: Path) -> dict[str, str]:
    """The caller's environment without any mmsearch, hub or make setting: the Makefile alone picks the profile.

    Only where data goes is set (a temporary index and media directory). The hub is made unreachable
    (``HF_ENDPOINT`` on a closed loopback port, an empty ``HF_HOME``): loading must not need it."""
    drop = ("MMSEARCH_", "HF_", "TRANSFORMERS_", "MAKE", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        {
            "MMSEARCH_INDEX_URI": str(tmp / "index"),
            "MMSEARCH_MEDIA_DIR": str(tmp / "media"),
            "HF_HOME": str(tmp / "hf-empty"),
            "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "BENTOML_HOME": str(tmp / "bentoml"),
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "schema"), str(REPO / "clients" / "python")]),
        }
    )
    return env


@pytest.fixture(scope="module")
def lite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    """``make serve`` (its install step skipped with ``-o install``: the venv running the tests is installed)."""
    tmp = tmp_path_factory.mktemp("make-serve")
    port = free_port()
    venv = Path(sys.executable).parent.parent
    args = ["make", "--no-print-directory", "-o", "install", "serve", f"PORT={port}", f"VENV={venv}"]
    server = BentoServer(args, make_serve_env(tmp), tmp / "server.log", port=port, listen=False)
    server.start(ready_timeout=300)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ingested(lite_server: BentoServer) -> dict[str, Any]:
    resp = post(lite_server, "/upsert", {"collection": "screens", "documents": documents()})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_make_serve_runs_the_lite_profile_offline(lite_server: BentoServer) -> None:
    info = post(lite_server, "/info", {}).json()
    embedder, reranker, reader = info["embedder"], info["reranker"], info["reader"]
    assert embedder["model"] == LITE_EMBEDDER == "BAAI/bge-small-en-v1.5" and embedder["dimension"] == 384
    assert embedder["tiny_random_weights"] is False and embedder["modalities"] == ["text"]
    assert reader["model"].startswith("rapidocr-3.10.0/") and info["ocr"] is True
    assert reranker["model"] is None  # no reranker unless one is configured
    assert info["modality_paths"]["image"].startswith("OCR text -> text embedding")
    assert info["keyword_search"] is True
    log = lite_server.log_path.read_text(errors="replace")
    assert "MMSEARCH_PROFILE=lite HF_HUB_OFFLINE=1 " in log  # make echoes the command it ran


def test_upsert_reads_the_screenshots_and_get_returns_their_text(lite_server: BentoServer, ingested: dict) -> None:
    assert (ingested["ocr_images"], ingested["ocr_lines"]) == (3, 6)
    got = post(lite_server, "/get", {"collection": "screens", "ids": ["invoice", "memo"]}).json()["documents"]
    assert got[0]["ocr_text"] == "Invoice total 418.20 EUR\nShipping address Lisbon"
    assert got[1]["ocr_text"] is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("nightly backup failed", "backup"),  # quotes the screenshot
        ("the database server ran out of disk space", "backup"),  # paraphrases it: no word in common
        ("when does the phone application ship", "roadmap"),
        ("how much do we owe on the bill", "invoice"),
    ],
)
def test_text_search_finds_the_screenshots(lite_server: BentoServer, ingested: dict, query: str, expected: str) -> None:
    res = search(lite_server, query)
    assert res["mode"] == "hybrid"  # the default once the collection has keyword data
    assert res["hits"][0]["id"] == expected, [(h["id"], h["score"]) for h in res["hits"]]
    assert res["reranked"] is False and [w["code"] for w in res["warnings"]] == ["not_reranked"]


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_evidence_boxes_lie_on_the_matched_words(lite_server: BentoServer, ingested: dict, mode: str) -> None:
    res = search(lite_server, "invoice total", mode=mode)
    assert res["mode"] == mode
    top = res["hits"][0]
    assert top["id"] == "invoice" and top["keyword_score"] is not None
    evidence = top["evidence"][0]
    assert (evidence["source"], evidence["text"]) == ("ocr", "Invoice total 418.20 EUR")
    box = tuple(evidence["box"])
    _, words = render("invoice")
    for word in ("Invoice", "total"):
        assert overlap(box, words[word]) > 0.9, (word, box, words[word])  # the word lies inside the box
    for word in ("Shipping", "Lisbon"):
        assert overlap(box, words[word]) == 0.0  # the other line is outside it
    assert iou(box, line_box("invoice", 0)) > 0.6, (box, line_box("invoice", 0))  # and the box is tight
    # a text document's evidence is its own line, without a box
    memo = next(h for h in res["hits"] if h["id"] == "memo")
    assert memo["evidence"] == [{"source": "text", "text": TEXTS["memo"], "box": None}]


def test_evidence_of_the_second_line(lite_server: BentoServer, ingested: dict) -> None:
    top = search(lite_server, "storage volume", mode="keyword")["hits"][0]
    assert top["id"] == "backup"
    box = tuple(top["evidence"][0]["box"])
    _, words = render("backup")
    assert overlap(box, words["Storage"]) > 0.9 and overlap(box, words["volume"]) > 0.9
    assert overlap(box, words["Nightly"]) == 0.0
    assert iou(box, line_box("backup", 1)) > 0.6


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_filters_apply_on_both_sides(lite_server: BentoServer, ingested: dict, mode: str) -> None:
    # "invoice" and "backup" words are on documents of both teams: each side must drop the other team's
    for team in ("finance", "ops"):
        res = search(lite_server, "invoice backup failed", mode=mode, filter={"team": team}, candidates=10)
        ids = [h["id"] for h in res["hits"]]
        assert ids and all(TEAMS[d] == team for d in ids), (team, ids)
        if mode != "vector":  # the keyword side found both of the team's matching documents
            expected = {"finance": {"invoice", "memo"}, "ops": {"backup", "runbook"}}[team]
            assert expected <= set(ids), (team, ids)
    # the keyword side alone: nothing of the product team matches, so keyword search finds nothing
    assert search(lite_server, "invoice backup", mode="keyword", filter={"team": "product"})["hits"] == []


def test_image_query_is_read_and_finds_the_screenshot(lite_server: BentoServer, ingested: dict) -> None:
    """A degraded copy (rotated, shrunk, JPEG) of a screenshot, as the query: its text is read and searched."""
    img = render("backup")[0].rotate(2, expand=True, fillcolor="white")
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=50)
    query = {"image": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()}
    res = search(lite_server, query)
    assert res["mode"] == "hybrid" and res["hits"][0]["id"] == "backup"
    assert res["hits"][0]["evidence"] and res["hits"][0]["evidence"][0]["source"] == "ocr"


# --- a text reranker on image documents ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def reranking_server(
    tmp_path_factory: pytest.TempPathFactory, model_urls: dict[str, str], text_reranker_server: BentoServer
) -> Iterator[BentoServer]:
    """Tiny CLIP (images keep their image embedding), OCR on (the session's Reader), a tiny text-only
    cross-encoder as reranker (the session's); Search calls them by URL."""
    yield from serve_wired_search(
        tmp_path_factory.mktemp("ocr-rerank"),
        model_urls,
        MMSEARCH_OCR="on",
        MMSEARCH_RERANKER_URL=text_reranker_server.url,
    )


def test_text_reranker_scores_image_documents_by_their_ocr_text(reranking_server: BentoServer) -> None:
    info = post(reranking_server, "/info", {}).json()
    assert info["reranker"]["modalities"] == ["text"] and "image" in info["embedder"]["modalities"]
    docs = [d for d in documents() if d["id"] in ("invoice", "backup", "memo")]
    resp = post(reranking_server, "/upsert", {"collection": "screens", "documents": docs})
    assert resp.status_code == 200, resp.text
    res = search(reranking_server, "invoice total", mode="hybrid", rerank=True, candidates=10)
    assert res["reranked"] is True and res["warnings"] == []
    hits = {h["id"]: h for h in res["hits"]}
    assert set(hits) == {"invoice", "backup", "memo"}
    # what the reranker scores for each document: its text, or the text read from its image
    scored_as = {
        "invoice": "Invoice total 418.20 EUR\nShipping address Lisbon",
        "backup": "Nightly backup failed\nStorage volume full on db-02",
        "memo": TEXTS["memo"],
    }
    direct = post(
        reranking_server,
        "/rerank",
        {"query": "invoice total", "documents": [{"text": t} for t in scored_as.values()]},
    )
    assert direct.status_code == 200, direct.text
    results = sorted(direct.json()["results"], key=lambda r: r["index"])
    expected = {d: r["relevance_score"] for d, r in zip(scored_as, results, strict=True)}
    for doc_id, hit in hits.items():
        assert hit["rerank_score"] == pytest.approx(expected[doc_id], abs=1e-4), doc_id
        assert hit["score"] == hit["rerank_score"]


def test_cli_indexes_screenshots_with_ocr_progress_and_searches_by_mode(
    lite_server: BentoServer, ingested: dict, tmp_path: Path
) -> None:
    from bench.support.images import png_bytes

    for name in ("invoice", "backup"):
        (tmp_path / f"{name}.png").write_bytes(png_bytes(render(name)[0]))
    mmsearch = [str(Path(sys.executable).with_name("mmsearch")), "--url", lite_server.url, "--timeout", "300"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "schema"), str(REPO / "clients" / "python")]),
    }
    out = subprocess.run(
        [*mmsearch, "index", str(tmp_path), "--collection", "cli", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    ).stdout
    assert "indexed 2, skipped 0, failed 0 (text read from 2 images, 4 lines)" in out, out
    out = subprocess.run(
        [*mmsearch, "search", "storage volume", "--collection", "cli", "--mode", "keyword", "--evidence"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout
    assert "keyword" in out and "backup.png" in out and "invoice.png" not in out, out
    assert "ocr at " in out and ": Storage volume full on db-02" in out, out
