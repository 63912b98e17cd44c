#!/usr/bin/env bash
# Ours beside PyTorch, in one run, on this machine. Not part of the tests.
#
#   bench/compare.sh [ROUNDS]      (default 3)
#
# Installs torch 2.11 and segment-anything from PyPI into bench/.venv on first use
# (or uses $VENV when set). Each round runs ours and PyTorch's encoder and decoder benchmark
# one after the other, so both see the same machine state; results go to
# bench/results-<date>.jsonl and a summary table is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
venv=${VENV:-bench/.venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "torch==2.11.*" "torchvision==0.26.*" segment-anything numpy
fi
cargo build --release -q
out=bench/results-$(date +%Y%m%d-%H%M%S).jsonl
: > "$out"
for r in $(seq "$rounds"); do
    echo "round $r/$rounds" >&2
    ./target/release/msa bench encoder --preset vit_b --size 1024 --runs 3 --json | sed 's/^{/{"impl":"msa",/' >> "$out"
    "$venv/bin/python" bench/pytorch_sam.py encoder --preset vit_b --size 1024 --runs 3 >> "$out"
    ./target/release/msa bench decoder --preset vit_b --size 1024 --runs 30 --json | sed 's/^{/{"impl":"msa",/' >> "$out"
    "$venv/bin/python" bench/pytorch_sam.py decoder --preset vit_b --size 1024 --runs 30 >> "$out"
done
python3 bench/summarize.py "$out"
