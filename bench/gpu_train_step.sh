#!/usr/bin/env bash
# On the GPU machine: one MSA training step (vit_b, encoder adapters, SAM frozen) at 256 and
# 1024 px, batch 1 and 2, ours (.gpu/msa.xz, a --features cuda build) beside PyTorch.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
source bench/gpu_env.sh
xz -dc .gpu/msa.xz > /tmp/msa && chmod +x /tmp/msa
nvidia-smi --query-gpu=name --format=csv,noheader
: > "$OUT/gpu_train.jsonl"
for size in 256 1024; do
    for b in 1 2; do
        /tmp/msa bench train-step --preset vit_b --size $size --batch $b --runs 5 --json | sed 's/^{/{"impl":"msa",/' | tee -a "$OUT/gpu_train.jsonl"
        "$py" bench/pytorch_train_step.py --size $size --batch $b --runs 5 --device cuda | tee -a "$OUT/gpu_train.jsonl"
    done
done
