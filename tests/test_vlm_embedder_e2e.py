"""The Embedder serving a Qwen-VL-class embedder (tiny, seeded): text, image and text+image parity, prompts."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from bench.support.images import data_uri, decode, make_image, png_bytes
from bench.support.servers import BentoServer, StaticServer
from tests.conftest import serve_bento

pytestmark = pytest.mark.e2e
TOL = 1e-5


@pytest.fixture(scope="module")
def vlm_server(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[BentoServer]:  # type: ignore[no-untyped-def]
    yield from serve_bento(
        tmp_path_factory.mktemp("vlm-embedder"),
        "service.embedder:Embedder",
        MMSEARCH_EMBEDDER_MODEL=str(tiny_models.vlm_embedder),
    )


@pytest.mark.parametrize("input_type", ["query", "document"])
def test_text_image_and_pair_parity(
    vlm_server: BentoServer,
    tiny_models,
    image_server: StaticServer,
    input_type: str,  # type: ignore[no-untyped-def]
) -> None:
    model = SentenceTransformer(str(tiny_models.vlm_embedder), device="cpu")
    img = make_image(21)
    url_img = decode(httpx.get(f"{image_server.url}/img9.png").content)
    wire = [
        "a quarterly revenue dashboard",
        {"image": data_uri(img)},
        {"text": "slide title: roadmap", "image": f"{image_server.url}/img9.png"},
        {"text": "only text in an item"},
    ]
    local_inputs = [
        {"text": "a quarterly revenue dashboard"},
        decode(png_bytes(img)),
        {"text": "slide title: roadmap", "image": url_img},
        {"text": "only text in an item"},
    ]
    r = httpx.post(f"{vlm_server.url}/encode", json={"inputs": wire, "input_type": input_type}, timeout=60)
    assert r.status_code == 200, r.text
    fn = model.encode_query if input_type == "query" else model.encode_document
    want = np.stack([fn([x], normalize_embeddings=True)[0] for x in local_inputs])
    assert np.abs(np.asarray(r.json()["embeddings"]) - want).max() <= TOL


def test_query_and_document_prompts_differ(vlm_server: BentoServer) -> None:
    def enc(t: str) -> np.ndarray:
        r = httpx.post(f"{vlm_server.url}/encode", json={"inputs": ["red cat"], "input_type": t}, timeout=60)
        return np.asarray(r.json()["embeddings"][0])

    assert np.abs(enc("query") - enc("document")).max() > 1e-4
    info = httpx.post(f"{vlm_server.url}/info", json={}, timeout=10).json()
    assert info["modalities"] == ["text", "image", "text+image"]
