#!/usr/bin/env bash
# Run on a GPU machine with the CUDA build carried in .gpu/ (msa and test binaries made by
# `cargo build/test --release --features cuda`): golden parity on the GPU, then the encoder
# and decoder benchmarks beside PyTorch on the same GPU. Output: stdout and $OUT/gpu.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
B=.gpu
if [ -f .gpu/gpu.tar.xz ]; then
    B=/tmp/gpu && mkdir -p $B && tar xJf .gpu/gpu.tar.xz -C $B
fi
export MSA_REPO=$PWD MSA_TEST_DEVICE=cuda
for t in $B/test-*; do
    echo "== $t (MSA_TEST_DEVICE=cuda)"
    "$t" --test-threads 1 2>&1 | grep -E "^test |test result|panicked|max \|" | head -40
done
: > "$OUT/gpu.jsonl"
for r in 1 2; do
    $B/msa bench encoder --preset vit_b --size 1024 --runs 10 --json | sed 's/^{/{"impl":"msa",/' | tee -a "$OUT/gpu.jsonl"
    "$py" bench/pytorch_sam.py encoder --device cuda --runs 10 | tee -a "$OUT/gpu.jsonl"
    $B/msa bench decoder --preset vit_b --size 1024 --runs 50 --json | sed 's/^{/{"impl":"msa",/' | tee -a "$OUT/gpu.jsonl"
    "$py" bench/pytorch_sam.py decoder --device cuda --runs 50 | tee -a "$OUT/gpu.jsonl"
done
