#!/usr/bin/env bash
# Infinity (michaelfeil/infinity), the peer server of bench/peer.py, in its OWN virtualenv: never in the project's.
#
#   bash bench/infinity_env.sh        # creates it once (a few minutes), then prints its python
#
# Pinned: infinity-emb 0.0.78 (newest on the index) on the project's torch 2.14.1 (installed first and held by a
# constraints file, so no resolver picks another torch). Image requests need aiohttp, which no extra pulls in.
# Where: $MMSEARCH_BENCH_CACHE/infinity-0.0.78 (default ~/.cache/mmsearch/bench/infinity-0.0.78).
set -euo pipefail
VERSION=0.0.78
ROOT="${MMSEARCH_BENCH_CACHE:-$HOME/.cache/mmsearch/bench}"
VENV="$ROOT/infinity-$VERSION"
PY="${PYTHON:-python3.11}"
if [[ ! -f "$VENV/.complete" ]]; then
  rm -rf "$VENV"
  mkdir -p "$ROOT"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 >&2
  printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$VENV/constraints.txt"
  "$VENV/bin/pip" install -q -c "$VENV/constraints.txt" "infinity-emb[server,torch,vision]==$VERSION" "aiohttp==3.14.5" >&2
  "$VENV/bin/pip" freeze > "$VENV/freeze.txt"
  touch "$VENV/.complete"
fi
echo "$VENV/bin/python"
