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
skip=()
if [ ! -f "$MSA_HOME/lite_medsam.pth" ]; then
    echo "no LiteMedSAM checkpoint carried: the real-weights precision test is skipped"
    skip=(--skip real_lite_medsam)
fi
for t in $B/test-*; do
    echo "== $t (MSA_TEST_DEVICE=cuda)"
    log="$OUT/$(basename "$t").log"
    "$t" --test-threads 1 --nocapture "${skip[@]}" > "$log" 2>&1
    grep -E "test result|panicked|FAILED" "$log" | head -20
done
: > "$OUT/gpu.jsonl"
ours() { "$@" --json | sed 's/^{/{"impl":"msa",/' | tee -a "$OUT/gpu.jsonl"; }
# ROUNDS=0 runs the parity tests alone.
for r in $(seq 1 "${ROUNDS:-2}"); do
    # The vit_b encoder at batch 1: f32 (ours with candle's attention, then with the flash
    # kernels) and bf16; PyTorch in f32 (official attention and SDPA) and bf16 (SDPA).
    ours $B/msa bench encoder --preset vit_b --size 1024 --runs 10 --precision f32
    MSA_FLASH_ATTENTION=1 ours $B/msa bench encoder --preset vit_b --size 1024 --runs 10 --precision f32
    ours $B/msa bench encoder --preset vit_b --size 1024 --runs 10 --precision bf16
    MSA_TENSOR_CORE_ATTENTION=1 ours $B/msa bench encoder --preset vit_b --size 1024 --runs 10 --precision bf16
    for pa in "f32 official" "f32 sdpa" "bf16 sdpa"; do
        set -- $pa
        "$py" bench/pytorch_sam.py encoder --device cuda --runs 10 --precision $1 --attention $2 | tee -a "$OUT/gpu.jsonl"
    done
    ours $B/msa bench decoder --preset vit_b --size 1024 --runs 50
    "$py" bench/pytorch_sam.py decoder --device cuda --runs 50 | tee -a "$OUT/gpu.jsonl"
done
