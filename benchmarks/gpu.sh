#!/usr/bin/env bash
# The prepared GPU run (see benchmarks/gpu.py): every *_cuda.md table of benchmarks/results in one go.
# Needs CUDA, torch and onnxruntime-gpu; arguments pass through (e.g. --budget 480, --steps export,bench).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu.py "$@"
