#!/usr/bin/env bash
# Batching and serving on ONE NVIDIA GPU with a Qwen3-VL-Embedding-2B-shaped embedder (Qwen3-VL-2B sizes: text 28 x
# 2048, vision 24 x 1024 patch 16; random weights, bf16, CUDA). Runs unchanged on a machine with one GPU:
#
#   bash bench/gpu.sh              # builds the model once (~4.3 GB under ~/.cache/mmsearch/bench), then
#                                  # 1. bench.gpu_batching: the Embedder at 1/32/64/128 one-query clients against the
#                                  #    ideal (every batch full, batch times measured in-process on the GPU), with
#                                  #    MMSEARCH_BATCH_COALESCE_MS=auto (printed: the coalescing the service chose)
#                                  #    and 0 -> bench/results/gpu_batching-qwen3vl-2b.json
#                                  # 2. bench.serving: raw encode at batch 1/8/32 vs the Embedder bento at 1/8/32/64
#                                  #    clients, text and images -> bench/results/serving-qwen3vl-2b.json
#   bash bench/gpu.sh --dry-run    # anywhere, CPU only: the 2B config on the meta device (parameter count), then
#                                  # both harnesses end to end at toy size (GPU-shaped model; qwen3vl-tiny on CPU)
#
# Without a GPU (and without --dry-run) it says so and exits 2. Extra arguments go to bench.serving.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${MMSEARCH_BENCH_OUT:-bench/results}"
export BENTOML_DO_NOT_TRACK=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  "$PY" -m bench.models qwen3vl-2b --meta
  "$PY" -m bench.gpu_batching --tiny --out "$OUT" --name gpu_batching-dryrun
  exec "$PY" -m bench.serving --tiny --model qwen3vl-tiny --reranker none --device cpu --dtype bfloat16 \
    --out "$OUT" --name serving-qwen3vl-dryrun "$@"
fi

if ! nvidia-smi -L >/dev/null 2>&1 || ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "bench/gpu.sh: no CUDA GPU visible to torch (install a CUDA build of torch, see bentofile.yaml);" \
       "use --dry-run to check the harness on CPU" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -m bench.models qwen3vl-2b  # build once (random init on the GPU, saved in bf16)
"$PY" -m bench.gpu_batching --model qwen3vl-2b --device cuda --dtype bfloat16 --coalesce auto,0 --out "$OUT"
exec "$PY" -m bench.serving --model qwen3vl-2b --reranker none --device cuda --dtype bfloat16 \
  --batches 1,8,32 --concurrency 1,8,32,64 --duration 20 --raw-duration 10 --out "$OUT" "$@"
