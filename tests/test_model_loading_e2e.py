"""Model names and loading options, and what a model that cannot load does to the server (real bentos)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from bench.support.images import data_uri, make_image
from bench.support.servers import REPO, BentoServer, bento_env, free_port, stop_process_tree
from tests.conftest import BENTOML, serve_bento

pytestmark = pytest.mark.e2e
TOL = 1e-5
EXIT_WAIT_S = 240


@pytest.fixture(scope="module")
def named_embedder(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[BentoServer]:  # type: ignore[no-untyped-def]
    yield from serve_bento(
        tmp_path_factory.mktemp("named-embedder"),
        "service.embedder:Embedder",
        MMSEARCH_EMBEDDER_MODEL=str(tiny_models.clip),  # a local path: served as its directory's name
        MMSEARCH_EMBEDDER_MODEL_KWARGS='{"dtype": "bfloat16"}',
        MMSEARCH_EMBEDDER_REVISION="refs/pr/23",  # recorded and passed on; a local directory has no revisions
    )


@pytest.fixture(scope="module")
def pixel_capped_reranker(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[BentoServer]:  # type: ignore[no-untyped-def]
    yield from serve_bento(
        tmp_path_factory.mktemp("pixel-reranker"),
        "service.reranker:Reranker",
        MMSEARCH_RERANKER_MODEL=str(tiny_models.vlm_reranker),
        MMSEARCH_RERANKER_NAME="acme/reranker-v1",
        MMSEARCH_RERANKER_MAX_PIXELS="256",
    )


def test_local_model_served_by_directory_name_with_model_kwargs(named_embedder: BentoServer, tiny_models) -> None:  # type: ignore[no-untyped-def]
    info = httpx.post(f"{named_embedder.url}/info", json={}).json()
    assert info["model"] == "clip"
    assert info["loading"] == {
        "name": "clip",
        "revision": "refs/pr/23",
        "model_kwargs": {"dtype": "bfloat16"},
        "processor_kwargs": {},
    }
    r = httpx.post(f"{named_embedder.url}/v1/embeddings", json={"input": ["a red bicycle"]}, timeout=30).json()
    assert r["model"] == "clip"
    enc = httpx.post(f"{named_embedder.url}/encode", json={"inputs": ["a red bicycle"]}, timeout=30).json()
    assert enc["model"] == "clip"
    assert str(tiny_models.clip) not in str(info) + str(r) + str(enc)  # never a filesystem path
    assert "FutureWarning" not in named_embedder.tail(500)  # start-up and first requests are warning-free

    # the dtype really reached transformers: same vectors as a bfloat16 model loaded the documented way
    def local(model: SentenceTransformer) -> np.ndarray:  # normalised in float32, as the server does
        v = model.encode_document([{"text": "a red bicycle"}], convert_to_numpy=True).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    want = local(SentenceTransformer(str(tiny_models.clip), device="cpu", model_kwargs={"dtype": torch.bfloat16}))
    other = local(SentenceTransformer(str(tiny_models.clip), device="cpu"))
    got = np.asarray(enc["embeddings"], dtype=np.float32)
    assert np.abs(got - want).max() <= TOL < np.abs(want - other).max()


def test_max_pixels_reaches_the_processor(pixel_capped_reranker: BentoServer, tiny_models) -> None:  # type: ignore[no-untyped-def]
    info = httpx.post(f"{pixel_capped_reranker.url}/info", json={}).json()
    assert info["model"] == "acme/reranker-v1" and info["loading"]["processor_kwargs"] == {"max_pixels": 256}
    image = make_image(5, (96, 80))
    body = {"query": "a chart", "documents": [{"image": data_uri(image)}]}
    r = httpx.post(f"{pixel_capped_reranker.url}/rerank", json=body, timeout=30).json()
    assert r["model"] == "acme/reranker-v1"
    capped = CrossEncoder(str(tiny_models.vlm_reranker), device="cpu", processor_kwargs={"max_pixels": 256})
    default = CrossEncoder(str(tiny_models.vlm_reranker), device="cpu")
    pair = [({"text": "a chart"}, image)]
    want, other = float(capped.predict(pair)[0]), float(default.predict(pair)[0])
    assert abs(r["results"][0]["relevance_score"] - want) <= TOL < abs(want - other)
    assert "FutureWarning" not in pixel_capped_reranker.tail(500)  # max_pixels does not warn on every request


def run_until_exit(tmp: Path, target: str, **env: str) -> tuple[int, str]:
    """Start ``bentoml serve target`` and wait for it to exit by itself; (exit status, log)."""
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / "server.log"
    port = free_port()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*BENTOML, target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=bento_env(tmp, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + EXIT_WAIT_S
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        if proc.poll() is None:
            pytest.fail(f"the server did not exit within {EXIT_WAIT_S}s:\n{log_path.read_text()[-3000:]}")
    finally:
        stop_process_tree(proc)  # its workers too, whatever happened
    return int(proc.returncode), log_path.read_text(errors="replace")


@pytest.mark.parametrize(
    ("target", "variable", "value"),
    [
        ("service.embedder:Embedder", "MMSEARCH_EMBEDDER_MODEL", "/nonexistent/models/clip"),
        ("service.search:Search", "MMSEARCH_RERANKER_MODEL", "acme/not-in-the-cache"),  # no hub reachable
    ],
)
def test_model_that_cannot_load_stops_the_server(
    tmp_path: Path,
    tiny_models,  # type: ignore[no-untyped-def]
    target: str,
    variable: str,
    value: str,
) -> None:
    env = {"MMSEARCH_EMBEDDER_MODEL": str(tiny_models.clip), variable: value}  # only `variable` is wrong
    status, log = run_until_exit(tmp_path, target, MMSEARCH_PROFILE="default", **env)
    assert status != 0
    lines = [line for line in log.splitlines() if f"{variable}={value}: cannot load" in line]
    # one line names the variable, the value and the cause; the main process repeats it when it exits
    assert lines and any("stopped" in line for line in lines), log[-3000:]
    assert len({line.split(f"{variable}=", 1)[1] for line in lines}) == 1
    assert len(lines) <= 3, lines  # no restart loop
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("refusal", ["budget", "repository"])
def test_start_up_refuses_models_over_budget_and_repository_files(
    tmp_path: Path,
    tiny_models,  # type: ignore[no-untyped-def]
    refusal: str,
) -> None:
    """``MMSEARCH_MODEL_MEMORY_BUDGET_MB`` (a model of ~2.2 MB against 1 MB) and an invalid ``MMSEARCH_MODELS`` file
    (two defaults) stop the Embedder with one line, before any weights load."""
    from tests.test_model_memory import padded

    if refusal == "budget":
        big = padded(tmp_path / "models", Path(tiny_models.clip), 2_000_000)
        env = {"MMSEARCH_EMBEDDER_MODEL": str(big), "MMSEARCH_MODEL_MEMORY_BUDGET_MB": "1"}
        says = "MMSEARCH_MODEL_MEMORY_BUDGET_MB=1 is exceeded: 2.24 MB of weights for the Embedder's models (clip:"
    else:
        entry = f"{{source: {tiny_models.clip}, default: true}}"
        (tmp_path / "models.yaml").write_text(f"embedders:\n  clip: {entry}\n  again: {entry}\n")
        env = {"MMSEARCH_MODELS": str(tmp_path / "models.yaml")}
        says = "invalid model repository: embedders: exactly one model may be the default, got clip, again"
    status, log = run_until_exit(tmp_path / "server", "service.embedder:Embedder", **env)
    assert status != 0
    lines = [line for line in log.splitlines() if says in line]
    assert lines and any("stopped" in line for line in lines), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
