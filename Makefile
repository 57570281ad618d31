# mmsearch developer commands. `make serve` and `make test` are the README quickstart; .ci/run calls `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Offline by default: tiny random-weight models built locally (smoke tests only). Set MMSEARCH_PROFILE=default and
# MMSEARCH_EMBEDDER_MODEL / MMSEARCH_RERANKER_MODEL (hub ids or local paths) to serve real models.
export MMSEARCH_PROFILE ?= tiny
export BENTOML_DO_NOT_TRACK ?= true
PORT ?= 3000

.PHONY: install install-test serve test lint typecheck bento clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is installed first and pinned, so no resolver ever picks an unpinned (multi-GB) build.
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e './clients/python[cli]' -e .

install-test: install
	$(BIN)/pip install -q -e '.[test]'

serve: install
	$(BIN)/bentoml serve service.search:Search --host 127.0.0.1 --port $(PORT)

lint: install-test
	$(BIN)/ruff check service clients tests bench loadtest
	$(BIN)/ruff format --check service clients tests bench loadtest

typecheck: install-test
	$(BIN)/mypy service
	$(BIN)/mypy --strict clients/python/mmsearch_client

test: install-test lint typecheck
	$(BIN)/python -m pytest -q

# Build the bento (no Docker needed). The client package travels as a wheel; the service imports its schemas.
bento: install-test
	rm -rf dist && $(BIN)/pip wheel -q --no-deps ./clients/python -w dist
	$(BIN)/bentoml build --output tag

clean:
	rm -rf $(VENV) dist .pytest_cache .mypy_cache .ruff_cache
