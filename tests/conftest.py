"""Session fixtures: tiny models built offline, a static image server and real bento processes on loopback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.support.images import write_images
from tests.support.servers import BentoServer, StaticServer, bento_env, tiny_dir

torch.set_num_threads(1)
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENTOML = [str(Path(sys.executable).with_name("bentoml")), "serve"]


@pytest.fixture(scope="session")
def tiny_models():  # type: ignore[no-untyped-def]
    from service.tiny import ensure_tiny_models

    return ensure_tiny_models(tiny_dir())


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_images(root, 40)
    return root


@pytest.fixture(scope="session")
def image_server(image_dir: Path) -> Iterator[StaticServer]:
    with StaticServer(image_dir).running() as srv:
        yield srv


def serve_bento(tmp: Path, target: str, **env: str) -> Iterator[BentoServer]:
    """Run ``bentoml serve <target>`` (tiny profile, extra ``MMSEARCH_*`` env) in ``tmp`` for a fixture's life."""
    tmp.mkdir(parents=True, exist_ok=True)
    server = BentoServer([*BENTOML, target], bento_env(tmp, **env), tmp / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def embedder_server(tmp_path_factory: pytest.TempPathFactory, tiny_models: object) -> Iterator[BentoServer]:
    yield from serve_bento(tmp_path_factory.mktemp("embedder"), "service.embedder:Embedder")


@pytest.fixture(scope="session")
def reranker_server(tmp_path_factory: pytest.TempPathFactory, tiny_models: object) -> Iterator[BentoServer]:
    yield from serve_bento(tmp_path_factory.mktemp("reranker"), "service.reranker:Reranker")


@pytest.fixture(scope="session")
def search_server(tmp_path_factory: pytest.TempPathFactory, tiny_models: object) -> Iterator[BentoServer]:
    yield from serve_bento(tmp_path_factory.mktemp("search"), "service.search:Search")
