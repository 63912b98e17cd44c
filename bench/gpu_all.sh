#!/usr/bin/env bash
# The one device call for issue 12, under 10 minutes on an H100/H200: golden parity on the
# GPU (f32, and bf16/f16 with tests/precision.rs), the encoder and decoder beside PyTorch,
# then the training steps (bench/gpu_train_step.sh). Needs .gpu/ and .whl/ from
# `PACK=1 tools/cuda_build.sh` (carry both). Results land in $OUT (gpu.jsonl,
# gpu_train.jsonl).
set -uo pipefail
cd "$(dirname "$0")/.."
timeout 240 bench/gpu_check.sh
timeout 330 bench/gpu_train_step.sh
