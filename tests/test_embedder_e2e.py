"""End-to-end tests of the Embedder bento (real `bentoml serve`, tiny profile) over loopback HTTP."""

from __future__ import annotations

import base64
import math
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from bench.support.images import data_uri, decode, make_image, png_bytes
from bench.support.metrics import metric_sum
from bench.support.servers import BentoServer, StaticServer
from tests.support.batched import singles_behind_bulk
from tests.support.hostile import FETCH_DEADLINE_S, hostile_images, hostile_server

pytestmark = pytest.mark.e2e
TOL = 1e-5


@pytest.fixture(scope="module")
def clip(tiny_models) -> SentenceTransformer:  # type: ignore[no-untyped-def]
    return SentenceTransformer(str(tiny_models.clip), device="cpu")


def post(server: BentoServer, route: str, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, timeout=timeout)


def local(model: SentenceTransformer, inputs: list, input_type: str) -> np.ndarray:
    fn = model.encode_query if input_type == "query" else model.encode_document
    return np.asarray(fn(inputs, normalize_embeddings=True, convert_to_numpy=True))


@pytest.mark.parametrize("input_type", ["query", "document"])
def test_text_parity(embedder_server: BentoServer, clip: SentenceTransformer, input_type: str) -> None:
    texts = ["a red square", "quarterly revenue dashboard", "http://127.0.0.1/x.png", "/etc/passwd"]
    r = post(embedder_server, "/encode", {"inputs": texts, "input_type": input_type})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimensions"] == 16 and body["model"].startswith("mmsearch/tiny-random")
    want = local(clip, [{"text": t} for t in texts], input_type)
    assert np.abs(np.asarray(body["embeddings"]) - want).max() <= TOL


def test_image_parity_url_data_uri_and_upload(
    embedder_server: BentoServer, clip: SentenceTransformer, image_server: StaticServer, image_dir: Path
) -> None:
    names = ["img0.png", "img1.png", "img2.png"]
    raw = [(image_dir / n).read_bytes() for n in names]
    want = local(clip, [decode(b) for b in raw], "document")

    by_url = post(embedder_server, "/encode", {"inputs": [{"image": f"{image_server.url}/{n}"} for n in names]})
    assert by_url.status_code == 200, by_url.text
    uris = ["data:image/png;base64," + base64.b64encode(b).decode() for b in raw]
    by_uri = post(embedder_server, "/encode", {"inputs": [{"image": u} for u in uris]})
    assert by_uri.status_code == 200, by_uri.text
    files = [("image", (n, b, "image/png")) for n, b in zip(names, raw, strict=True)]
    by_upload = httpx.post(f"{embedder_server.url}/upload/encode", files=files, timeout=30)
    assert by_upload.status_code == 200, by_upload.text

    for resp in (by_url, by_uri, by_upload):
        assert np.abs(np.asarray(resp.json()["embeddings"]) - want).max() <= TOL


def test_an_uploaded_video_where_the_model_takes_none_is_a_422_naming_its_modalities(
    embedder_server: BentoServer,
) -> None:
    """The CLIP takes text and images: a ``video`` (or ``audio``) upload is refused before anything is decoded."""
    for medium in ("video", "audio"):
        files = [(medium, ("clip.bin", b"\x00" * 64, f"{medium}/mp4"))]
        r = httpx.post(f"{embedder_server.url}/upload/encode", files=files, timeout=30)
        assert r.status_code == 422, r.text
        body = r.json()
        assert (body["code"], body["field"]) == ("unsupported_modality", f"{medium}[0]"), body
        assert f"{medium} inputs are not supported" in body["error"] and "(supported: text, image" in body["error"]


def test_mixed_request_keeps_order(embedder_server: BentoServer, clip: SentenceTransformer) -> None:
    img = make_image(3)
    inputs = ["first text", {"image": data_uri(img)}, {"text": "third"}, {"image": data_uri(make_image(4))}]
    r = post(embedder_server, "/encode", {"inputs": inputs, "input_type": "query"})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["embeddings"])
    assert np.abs(got[0] - local(clip, [{"text": "first text"}], "query")[0]).max() <= TOL
    assert np.abs(got[1] - local(clip, [decode(png_bytes(img))], "query")[0]).max() <= TOL
    assert np.abs(got[2] - local(clip, [{"text": "third"}], "query")[0]).max() <= TOL


def test_dimensions_normalize_and_base64(embedder_server: BentoServer, clip: SentenceTransformer) -> None:
    full = np.asarray(clip.encode_document([{"text": "slide"}], normalize_embeddings=False))[0]
    r = post(embedder_server, "/encode", {"inputs": ["slide"], "dimensions": 8, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    assert r.json()["dimensions"] == 8
    vec = np.frombuffer(base64.b64decode(r.json()["embeddings"][0]), dtype="<f4")
    want = full[:8] / np.linalg.norm(full[:8])
    assert vec.shape == (8,) and np.abs(vec - want).max() <= TOL
    raw = post(embedder_server, "/encode", {"inputs": ["slide"], "normalize": False}).json()["embeddings"][0]
    assert np.abs(np.asarray(raw) - full).max() <= TOL
    too_big = post(embedder_server, "/encode", {"inputs": ["slide"], "dimensions": 17})
    assert too_big.status_code == 400 and too_big.json()["field"] == "dimensions"
    assert "16" in too_big.json()["error"]


def test_openai_embeddings(embedder_server: BentoServer, clip: SentenceTransformer) -> None:
    r = post(embedder_server, "/v1/embeddings", {"input": "hello world", "model": "whatever"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding" and body["data"][0]["index"] == 0
    assert body["usage"]["prompt_tokens"] == 2
    want = local(clip, [{"text": "hello world"}], "document")[0]
    assert np.abs(np.asarray(body["data"][0]["embedding"]) - want).max() <= TOL
    many = post(embedder_server, "/v1/embeddings", {"input": ["a", "b", "c"], "input_type": "query"}).json()
    assert [d["index"] for d in many["data"]] == [0, 1, 2]


def test_unsupported_modality_names_supported(embedder_server: BentoServer) -> None:
    r = post(embedder_server, "/encode", {"inputs": ["x", {"text": "chart", "image": data_uri(make_image(1))}]})
    assert r.status_code == 422
    assert r.json()["field"] == "inputs[1]"
    assert "supported: text, image" in r.json()["error"]


def test_request_limits(embedder_server: BentoServer) -> None:
    too_many = post(embedder_server, "/encode", {"inputs": ["x"] * 257})
    assert too_many.status_code == 413 and "256" in too_many.json()["error"]
    empty = post(embedder_server, "/encode", {"inputs": []})
    assert empty.status_code == 400 and "inputs" in empty.text
    bad_type = post(embedder_server, "/encode", {"inputs": ["x"], "input_type": "passage"})
    assert bad_type.status_code == 400 and "input_type" in bad_type.text
    extra = post(embedder_server, "/encode", {"inputs": [{"text": "x", "audio": "y"}]})
    assert extra.status_code == 400


MAX_BATCH = 32  # the session Embedder's MMSEARCH_MAX_BATCH_SIZE (the default)


def test_concurrent_requests_are_batched(embedder_server: BentoServer, clip: SentenceTransformer) -> None:
    """64 single-input requests waiting together are served in ceil(64 / 32) = 2 model calls of 32, exactly.

    They wait behind a bulk of 15 x 256 query inputs in the same lane (``tests.support.batched``): the bulk's 120
    calls are all full, so the lane runs 122 calls of 32 in all; without batching it would be 120 + 64. Query
    inputs, because a document batch may be sized down while queries are around (``service.priority``)."""
    texts = [f"concurrent request number {i}" for i in range(64)]
    bulk = [
        {"inputs": [f"bulk {r} page {i}: revenue by region" for i in range(256)], "input_type": "query"}
        for r in range(15)  # 3,904 inputs with the singles: within the queue's 4,096
    ]
    run = singles_behind_bulk(
        embedder_server.url,
        "/encode",
        bulk,
        [{"inputs": [t], "input_type": "query"} for t in texts],
        "embedder",
        "query/text",
        MAX_BATCH,
    )
    responses = run.singles
    assert all(r.status_code == 200 for r in [*run.bulk, *responses])
    calls, inputs = run.calls, run.inputs
    assert inputs == 15 * 256 + 64
    assert calls == 15 * 256 / MAX_BATCH + math.ceil(64 / MAX_BATCH), f"{calls:.0f} model calls for {inputs:.0f} inputs"
    want = local(clip, [{"text": t} for t in texts], "query")
    got = np.asarray([r.json()["embeddings"][0] for r in responses])
    assert np.abs(got - want).max() <= TOL  # every caller got its own vector back


def test_hostile_inputs_are_refused(embedder_server: BentoServer) -> None:
    run_hostile_battery(
        embedder_server.url, "/encode", lambda img: {"inputs": ["ok", {"image": img}]}, "inputs[1].image"
    )
    for reason in ("blocked_address", "bad_scheme", "too_large", "too_many_pixels", "timeout", "not_an_image"):
        assert metric_sum(embedder_server.url, "mmsearch_refusals_total", reason=reason) >= 1, reason


def run_hostile_battery(url: str, route: str, body_for, field: str) -> None:  # type: ignore[no-untyped-def]
    """Every hostile image reference gets a 4xx whose ``field`` is exactly ``field`` (the image's place in the
    request), in bounded time; the service stays healthy."""
    with hostile_server() as hs:
        cases = hostile_images(hs.url)
        assert len(cases) >= 20
        with httpx.Client(base_url=url, timeout=30) as c:
            for name, ref in cases.items():
                t0 = time.monotonic()
                r = c.post(route, json=body_for(ref))
                took = time.monotonic() - t0
                assert 400 <= r.status_code < 500, f"{name}: {r.status_code} {r.text}"
                assert took < FETCH_DEADLINE_S + 2, f"{name}: took {took:.1f}s"
                body = r.json()
                assert body.get("field") == field, f"{name}: {body}"
            assert c.get("/readyz").status_code == 200
            ok = c.post(route, json=body_for(f"{hs.url}/ok.png"))
            assert ok.status_code == 200, ok.text


def test_long_text_is_truncated_not_an_error(embedder_server: BentoServer, clip: SentenceTransformer) -> None:
    text = "a very long slide description " * 40  # ~1200 characters, far past CLIP's 77 tokens
    r = post(embedder_server, "/encode", {"inputs": [text]})
    assert r.status_code == 200, r.text
    assert np.abs(np.asarray(r.json()["embeddings"][0]) - local(clip, [{"text": text}], "document")[0]).max() <= TOL
