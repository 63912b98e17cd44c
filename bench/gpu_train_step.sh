#!/usr/bin/env bash
# On the GPU machine: one MSA training step (vit_b, encoder adapters, SAM frozen) at 256 and
# 1024 px, batch 1 and 2, ours (.gpu/msa.xz, a --features cuda build) beside PyTorch.
# Besides each process's own report, nvidia-smi is polled every 50 ms during each run: the
# device memory in use at its peak, minus what was in use before (CUDA context included,
# for both), goes to a `gpu_memory` line.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
source bench/gpu_env.sh
xz -dc .gpu/msa.xz > /tmp/msa && chmod +x /tmp/msa
nvidia-smi --query-gpu=name --format=csv,noheader
: > "$OUT/gpu_train.jsonl"

# measured NAME SIZE BATCH CMD...: runs CMD, appends its output and a gpu_memory line.
measured() {
    local name=$1 size=$2 batch=$3
    shift 3
    local idle log=/tmp/smi.$$
    idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$log" &
    local smi=$!
    "$@" | tee -a "$OUT/gpu_train.jsonl"
    kill $smi 2>/dev/null; wait $smi 2>/dev/null
    local peak
    peak=$(sort -n "$log" | tail -1)
    echo "{\"part\":\"gpu_memory\",\"impl\":\"$name\",\"size\":$size,\"batch\":$batch,\"used_peak_mib\":${peak:-null},\"used_before_mib\":${idle:-null}}" \
        | tee -a "$OUT/gpu_train.jsonl"
}

for size in 256 1024; do
    for b in 1 2; do
        measured msa $size $b sh -c "/tmp/msa bench train-step --preset vit_b --size $size --batch $b --runs 5 --json | sed 's/^{/{\"impl\":\"msa\",/'"
        measured pytorch $size $b "$py" bench/pytorch_train_step.py --size $size --batch $b --runs 5 --device cuda
    done
done
