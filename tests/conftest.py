"""Session fixtures: tiny models built offline, a static image server and real bento processes on loopback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch

from bench.support.images import write_images
from bench.support.milvus_server import MilvusServer
from bench.support.servers import BentoServer, StaticServer, bento_env, tiny_dir
from tests.support.s3 import MotoServer

torch.set_num_threads(1)
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# In-process settings are the tiny profile's, whatever the shell or `make` exported (`make serve`'s default is lite;
# a test that means another profile says so, e.g. tests/test_lite_serve_e2e.py).
os.environ["MMSEARCH_PROFILE"] = "tiny"

BENTOML = [str(Path(sys.executable).with_name("bentoml")), "serve"]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist turns xdist_group marks into work units
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Work units for ``make test``'s parallel workers (pytest-xdist ``--dist loadgroup``).

    One unit per test module, so a module's servers start in one worker only; every test that uses the real Milvus
    server in one unit of its own, since only one Milvus standalone runs per machine (see ``milvus_server``); every
    test that uses the video Embedder (``video_embedder_server``: test_av_embedder_e2e.py and the video serving bench
    smoke) in one unit, so that it starts once. Without xdist the marks change nothing."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        uses_milvus_server = "milvus_server" in item.nodeid or "milvus_server" in fixtures
        group = "milvus-server" if uses_milvus_server else item.nodeid.split("::", 1)[0]
        if "video_embedder_server" in fixtures:  # one unit, so that the one video Embedder starts once
            group = "video-embedder"
        item.add_marker(pytest.mark.xdist_group(group))


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


def serve_wired_search(tmp: Path, model_urls: Mapping[str, str], **env: str) -> Iterator[BentoServer]:
    """``service.search:Search`` wired to the session's model services by URL (see ``model_urls``); ``env`` adds
    settings or overrides those (e.g. ``MMSEARCH_OCR="on"``, or one ``MMSEARCH_*_URL`` of the test's own)."""
    yield from serve_bento(tmp, "service.search:Search", **{**model_urls, **env})


def own_reranker(model_urls: Mapping[str, str]) -> dict[str, str]:
    """``model_urls`` less the Reranker and the media store: the bento composes a Reranker of its own, which reads
    the media the bento's Search stores (its directory, or its ``MMSEARCH_MEDIA_URI``)."""
    return {k: v for k, v in model_urls.items() if k not in ("MMSEARCH_RERANKER_URL", "MMSEARCH_MEDIA_URI")}


@pytest.fixture(scope="session")
def embedder_server(tmp_path_factory: pytest.TempPathFactory, tiny_models: object) -> Iterator[BentoServer]:
    yield from serve_bento(tmp_path_factory.mktemp("embedder"), "service.embedder:Embedder")


@pytest.fixture(scope="session")
def reranker_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: object, s3_server: MotoServer
) -> Iterator[BentoServer]:
    """The shared Reranker reads ``media://`` references from an S3 bucket (``env["MMSEARCH_MEDIA_URI"]``), as in
    production: Search replicas given the same URI share one media store with it (tests/test_replicas_e2e.py)."""
    uri = f"s3://{s3_server.new_bucket('media')}/shared"
    yield from serve_bento(tmp_path_factory.mktemp("reranker"), "service.reranker:Reranker", MMSEARCH_MEDIA_URI=uri)


@pytest.fixture(scope="session")
def text_reranker_server(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[BentoServer]:  # type: ignore[no-untyped-def]
    """A Reranker serving the tiny text-only cross-encoder (test_reranker_e2e.py, test_ocr_search_e2e.py)."""
    yield from serve_bento(
        tmp_path_factory.mktemp("text-reranker"),
        "service.reranker:Reranker",
        MMSEARCH_RERANKER_MODEL=str(tiny_models.text_reranker),
    )


@pytest.fixture(scope="session")
def video_embedder_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    """An Embedder serving the tiny Qwen2-VL video embedder (test_av_embedder_e2e.py, the ``bench.av_serving``
    smoke in test_bench_smoke.py: one start for both; see ``pytest_collection_modifyitems``)."""
    from service.tiny import ensure_tiny_av_models

    model = ensure_tiny_av_models(tiny_dir()).video_embedder
    yield from serve_bento(
        tmp_path_factory.mktemp("video-embedder"), "service.embedder:Embedder", MMSEARCH_EMBEDDER_MODEL=str(model)
    )


@pytest.fixture(scope="session")
def reader_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    yield from serve_bento(tmp_path_factory.mktemp("reader"), "service.reader:Reader")


@pytest.fixture(scope="session")
def model_urls(
    embedder_server: BentoServer, reranker_server: BentoServer, reader_server: BentoServer
) -> dict[str, str]:
    """Environment that wires a Search bento to this session's model services by URL (the Kubernetes shape,
    tests/test_three_process.py): ``bentoml serve service.search:Search`` then starts Search's own worker only,
    ~5 CPU-seconds instead of ~22 for a composed one (Embedder and Reranker each import sentence-transformers).

    Media go to the shared Reranker's bucket (content-addressed names: replicas share it the same way). OCR stays
    off, as in a composed tiny bento (a Reader URL alone would turn ``MMSEARCH_OCR=auto`` on); a test that reads
    images with the Reader says ``MMSEARCH_OCR="on"``. A test that needs its own model settings, or that checks
    what a composed deployment does, starts a composed bento instead."""
    return {
        "MMSEARCH_EMBEDDER_URL": embedder_server.url,
        "MMSEARCH_RERANKER_URL": reranker_server.url,
        "MMSEARCH_READER_URL": reader_server.url,
        "MMSEARCH_MEDIA_URI": reranker_server.env["MMSEARCH_MEDIA_URI"],
        "MMSEARCH_OCR": "off",
    }


@pytest.fixture(scope="session")
def search_server(tmp_path_factory: pytest.TempPathFactory, tiny_models: object) -> Iterator[BentoServer]:
    """The composed tiny bento most e2e modules share. Its rerank timeout is 60 s, not the product's 10 s:
    ``test_burst_of_200_concurrent_searches`` asserts that every search of a burst is reranked, and on a slow shared
    CI box 1,600 queued pairs took longer than 10 s (27 of 200 answered 503 ``reranker_timeout``). The timeout
    itself is tested with its own servers (``test_dependency_failure_e2e``, ``test_hardening_e2e``)."""
    yield from serve_bento(tmp_path_factory.mktemp("search"), "service.search:Search", MMSEARCH_RERANK_TIMEOUT_S="60")


@pytest.fixture(scope="session")
def built_bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make bento` once per run, in a throwaway BENTOML_HOME (tests/test_bento_build.py checks what it holds,
    tests/test_three_process.py starts its services); the bento directory."""
    from tests.test_bento_build import build_bento

    return build_bento(tmp_path_factory.mktemp("bentoml-home"))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """A real headless Chromium (npm @sparticuz/chromium, driven by playwright): bench/support/browser.py.

    Module-scoped on purpose: playwright's sync API keeps an asyncio loop running in this thread while it is open,
    so a session-wide browser would make every later ``asyncio.run()`` in the suite fail."""
    from bench.support.browser import chromium

    with chromium() as b:
        yield b


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """One real Milvus standalone server for the whole run (one per machine; ~15 s to start)."""
    server = MilvusServer(tmp_path_factory.mktemp("milvus-server")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """An S3 emulator (moto) for the whole run; its AWS_* variables are set in this process while it runs, so
    ``s3://`` URIs opened here (and by processes started from here) reach it."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    saved = {k: os.environ.get(k) for k in server.aws_env()}
    os.environ.update(server.aws_env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
