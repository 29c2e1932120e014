#!/usr/bin/env bash
# GPU engine benchmark in one command, on a machine with an NVIDIA GPU:
#   bash bench/gpu.sh [extra `electric bench gpu` flags]
# Installs the serving package with onnxruntime-gpu into .venv-gpu (kept apart from the CPU
# .venv: onnxruntime and onnxruntime-gpu install the same module). The random fp16 models are
# exported by the CPU .venv (which has torch) when bench/gpu-models is missing, so torch's CUDA
# build is never needed. Figures go to bench/results/gpu.json and stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f bench/gpu-models/base.fp16.onnx ]; then
    make .venv/.dev-installed >/dev/null
    .venv/bin/python -c "from pathlib import Path; from bench.gpu import prepare; prepare(Path('bench/gpu-models'))"
fi
if [ ! -x .venv-gpu/bin/electric ]; then
    python3 -m venv .venv-gpu
    .venv-gpu/bin/pip install --quiet --require-hashes -r requirements/gpu.txt && .venv-gpu/bin/pip install --quiet --no-deps -e .
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
.venv-gpu/bin/electric bench gpu --models bench/gpu-models --json bench/results/gpu.json "$@"
