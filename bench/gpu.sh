#!/usr/bin/env bash
# Serving efficiency on ONE NVIDIA GPU with a Qwen3-VL-Embedding-2B-shaped embedder (Qwen3-VL-2B sizes: text 28 x
# 2048, vision 24 x 1024 patch 16; random weights, bf16, CUDA). Runs unchanged on a machine with one GPU:
#
#   bash bench/gpu.sh              # builds the model once (~4.3 GB under ~/.cache/mmsearch/bench), then
#                                  # bench.serving: raw encode at batch 1/8/32 vs the Embedder bento at 1/8/32/64
#                                  # clients, text and images -> bench/results/serving-qwen3vl-2b.json
#   bash bench/gpu.sh --dry-run    # anywhere, CPU only: the 2B config on the meta device (parameter count), then
#                                  # the same harness end to end with the same code at toy size (qwen3vl-tiny)
#
# Extra arguments go to bench.serving (e.g. --modalities text --duration 30). The reranker is left out here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export BENTOML_DO_NOT_TRACK=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  "$PY" -m bench.models qwen3vl-2b --meta
  exec "$PY" -m bench.serving --tiny --model qwen3vl-tiny --reranker none --device cpu --dtype bfloat16 \
    --name serving-qwen3vl-dryrun "$@"
fi

if ! nvidia-smi -L >/dev/null 2>&1 || ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "bench/gpu.sh: no CUDA GPU visible to torch (install a CUDA build of torch, see bentofile.yaml);" \
       "use --dry-run to check the harness on CPU" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -m bench.models qwen3vl-2b  # build once (random init on the GPU, saved in bf16)
# torch threads only feed the GPU here; 4 x 1 worker stays well inside the cores of a GPU host.
exec "$PY" -m bench.serving --model qwen3vl-2b --reranker none --device cuda --dtype bfloat16 --threads 4 \
  --batches 1,8,32 --concurrency 1,8,32,64 --duration 20 --raw-duration 10 "$@"
