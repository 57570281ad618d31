"""End-to-end tests of the Reader bento (real ``bentoml serve``, real RapidOCR) over loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.support.images import data_uri, overlap, png_bytes, text_image
from bench.support.metrics import metric_sum
from bench.support.servers import BentoServer, StaticServer
from tests.conftest import serve_bento

pytestmark = pytest.mark.e2e

INVOICE = [("Invoice total 418.20 EUR", (20, 30)), ("Shipping address Lisbon", (60, 100))]
BANNER = [("Nightly backup failed", (30, 60))]


@pytest.fixture(scope="module")
def reader_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    yield from serve_bento(
        tmp_path_factory.mktemp("reader"), "service.reader:Reader", MMSEARCH_MAX_INPUTS_PER_REQUEST="4"
    )


def ocr(server: BentoServer, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/ocr", json=body, timeout=120)


def test_reads_lines_with_boxes_on_the_words(
    reader_server: BentoServer, image_server: StaticServer, image_dir: Path
) -> None:
    invoice, invoice_words = text_image(INVOICE)
    banner, banner_words = text_image(BANNER, size=(360, 140))
    (image_dir / "banner.png").write_bytes(png_bytes(banner))
    before = metric_sum(reader_server.url, "mmsearch_inputs_total", service="reader")
    resp = ocr(
        reader_server,
        {"inputs": [{"image": data_uri(invoice)}, {"image": f"{image_server.url}/banner.png"}]},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"].startswith("rapidocr-3.10.0/")
    first, second = body["results"]
    assert (first["width"], first["height"], second["width"], second["height"]) == (480, 160, 360, 140)
    assert [ln["text"] for ln in first["lines"]] == [t for t, _ in INVOICE]  # reading order
    assert first["text"] == "\n".join(t for t, _ in INVOICE)
    assert second["text"] == "Nightly backup failed"
    for result, words in ((first, invoice_words), (second, banner_words)):
        for line in result["lines"]:
            assert 0.5 < line["score"] <= 1.0
            for word in line["text"].split():
                # each word recognised lies inside its line's box
                assert overlap(tuple(line["box"]), words[word]) > 0.9, (word, line["box"], words[word])
    after = metric_sum(reader_server.url, "mmsearch_inputs_total", service="reader")
    assert after - before == 2


def test_blank_image_reads_nothing(reader_server: BentoServer) -> None:
    blank, _ = text_image([], size=(200, 100))
    resp = ocr(reader_server, {"inputs": [{"image": data_uri(blank)}], "input_type": "query"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"] == [{"text": "", "lines": [], "width": 200, "height": 100}]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"inputs": ["just text"]}, 422, "unsupported_modality", "inputs[0]"),
        (
            {"inputs": [{"text": "a caption", "image": "data:image/png;base64,AAAA"}]},
            422,
            "unsupported_modality",
            "inputs[0]",
        ),
        ({"inputs": [{"image": "data:image/png;base64,!!!"}]}, 400, "bad_base64", "inputs[0].image"),
        ({"inputs": [{"image": "file:///etc/passwd"}]}, 400, "bad_scheme", "inputs[0].image"),
        ({"inputs": [{"image": "http://169.254.169.254/latest/x.png"}]}, 400, "blocked_address", "inputs[0].image"),
        ({"inputs": [{"image": "data:image/png;base64,AAAA"}] * 5}, 413, "too_many_inputs", "inputs"),
    ],
)
def test_refusals_name_the_field(reader_server: BentoServer, body: dict, status: int, code: str, field: str) -> None:
    resp = ocr(reader_server, body)
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code and resp.json()["field"] == field


def test_info_and_probes(reader_server: BentoServer) -> None:
    info = httpx.post(f"{reader_server.url}/info", json={}, timeout=10).json()
    assert info["service"] == "Reader" and info["modalities"] == ["image"]
    assert info["max_side"] == 4096 and info["max_inputs_per_request"] == 4
    assert info["max_queue_wait_ms"] == 180_000  # its own queue limit (seconds per image)
    for probe in ("/livez", "/readyz"):
        assert httpx.get(f"{reader_server.url}{probe}", timeout=10).status_code == 200
