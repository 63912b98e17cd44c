#!/usr/bin/env bash
# One MSA training step on CPU, ours beside PyTorch in the same run (see BENCHMARKS.md).
#
#   bench/train_step_cpu.sh ["SIZE BATCH RUNS" ...]   (default: "256 1 3" "256 2 3" "1024 1 1")
#
# Ours at 1024 px runs under a 20 GiB address-space limit so that it fails cleanly rather
# than pushing a 24 GiB machine into the OOM killer.
set -uo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-bench/.venv}
out=bench/results-train-step-cpu-$(date +%Y%m%d-%H%M%S).jsonl
: > "$out"
specs=("$@")
[ ${#specs[@]} -eq 0 ] && specs=("256 1 3" "256 2 3" "1024 1 1")
for spec in "${specs[@]}"; do
    set -- $spec
    ( [ "$1" = 1024 ] && ulimit -v 20971520; ./target/release/msa bench train-step --preset vit_b --size $1 --batch $2 --runs $3 --json ) \
        | sed 's/^{/{"impl":"msa",/' >> "$out" || echo "{\"impl\":\"msa\",\"part\":\"train_step\",\"size\":$1,\"batch\":$2,\"failed\":true}" >> "$out"
    "$venv/bin/python" bench/pytorch_train_step.py --size $1 --batch $2 --runs $3 >> "$out"
done
cat "$out"
