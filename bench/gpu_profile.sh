#!/usr/bin/env bash
# On the GPU machine, after bench/gpu_all.sh: where a training step's GPU time goes. nsys
# traces ours at bf16 (vit_b at 1024 px, batch 2; LiteMedSAM at 256 px, batch 16) and
# PyTorch's vit_b step beside it; the top kernels by total time, the CUDA API calls and the
# memory operations go to $OUT/profile-*.txt. About 2-3 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
source bench/gpu_env.sh
[ -x /tmp/gpu/msa ] || { mkdir -p /tmp/gpu && tar xJf .gpu/gpu.tar.xz -C /tmp/gpu; }
nsys=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys \
    /opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys 2>/dev/null | head -1)
[ -n "$nsys" ] || { echo "no nsys on this machine"; exit 1; }

# profiled NAME CMD...: an nsys trace of CMD, summarised into $OUT/profile-NAME.txt.
profiled() {
    local name=$1
    shift
    "$nsys" profile -t cuda,nvtx -o "/tmp/prof-$name" --force-overwrite true "$@" > "/tmp/prof-$name.log" 2>&1
    tail -3 "/tmp/prof-$name.log"
    # Nsight Compute's nsys leaves a raw .qdstrm; its importer needs the carried libdw.
    if [ ! -f "/tmp/prof-$name.nsys-rep" ] && [ -f "/tmp/prof-$name.qdstrm" ]; then
        local imp
        imp=$(ls "$(dirname "$nsys")"/../*/QdstrmImporter "$(dirname "$nsys")"/QdstrmImporter 2>/dev/null | head -1)
        LD_LIBRARY_PATH="$PWD/.gpu/libdw:${LD_LIBRARY_PATH:-}" "$imp" -i "/tmp/prof-$name.qdstrm" \
            > "/tmp/prof-$name.import.log" 2>&1 || tail -3 "/tmp/prof-$name.import.log"
    fi
    ls /tmp/prof-"$name"*
    "$nsys" stats --report cuda_gpu_kern_sum,cuda_gpu_mem_time_sum,cuda_api_sum \
        --format csv "/tmp/prof-$name.nsys-rep" > "/tmp/prof-$name.csv" 2>&1
    "$py" - "/tmp/prof-$name.csv" > "$OUT/profile-$name.txt" <<'PY'
import csv, sys
# nsys writes one CSV table per report, each after a blank line; keep the top 25 rows.
blocks = open(sys.argv[1]).read().split("\n\n")
for block in blocks:
    rows = [r for r in csv.reader(block.strip().splitlines()) if r]
    if not rows:
        continue
    print(" | ".join(rows[0]))
    for r in rows[1:26]:
        print(" | ".join(c[:90] for c in r))
    print()
PY
    head -40 "$OUT/profile-$name.txt"
}

step=(/tmp/gpu/msa bench train-step --precision bf16 --runs 2 --json)
profiled msa-vit_b-b2 "${step[@]}" --preset vit_b --size 1024 --batch 2
profiled msa-lite_medsam-b16 "${step[@]}" --preset lite_medsam --size 256 --batch 16
[ "${TORCH:-1}" = 1 ] && profiled pytorch-vit_b-b2 "$py" bench/pytorch_train_step.py --device cuda --precision bf16 \
    --attention sdpa --size 1024 --batch 2 --runs 2
# The device memory after every TinyViT block of a LiteMedSAM step (runtime::memory::trace).
MSA_LOG=msa::memory=debug /tmp/gpu/msa bench train-step --preset lite_medsam --size 256 \
    --batch 4 --runs 1 --precision bf16 2>&1 | grep -E "memory|train_step" \
    | sed 's/\x1b\[[0-9;]*m//g' > "$OUT/memory-trace-lite_medsam-b4.txt"
tail -30 "$OUT/memory-trace-lite_medsam-b4.txt"
