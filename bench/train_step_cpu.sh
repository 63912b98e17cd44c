#!/usr/bin/env bash
# One MSA training step on CPU, ours beside PyTorch in the same run (see BENCHMARKS.md).
#
#   bench/train_step_cpu.sh ["SIZE BATCH RUNS [full|checkpoint]" ...]   (default: "256 1 3" "256 2 3" "1024 1 1")
#
# "full": full fine-tuning (every weight trains) instead of the encoder adapters;
# "checkpoint": the encoder adapters with every block recomputed in the backward pass
# (ours --checkpoint-blocks, PyTorch torch.utils.checkpoint).
# At 1024 px, batch 2, PyTorch's adapter step peaks near 18 GB: mind a 24 GB machine.
set -uo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-bench/.venv}
out=bench/results-train-step-cpu-$(date +%Y%m%d-%H%M%S).jsonl
: > "$out"
specs=("$@")
[ ${#specs[@]} -eq 0 ] && specs=("256 1 3" "256 2 3" "1024 1 1")
for spec in "${specs[@]}"; do
    set -- $spec
    full=()
    [ "${4:-}" = full ] && full=(--full)
    [ "${4:-}" = checkpoint ] && full=(--checkpoint-blocks)
    ./target/release/msa bench train-step --preset vit_b --size $1 --batch $2 --runs $3 "${full[@]}" --json \
        | sed 's/^{/{"impl":"msa",/' >> "$out" || echo "{\"impl\":\"msa\",\"part\":\"train_step\",\"size\":$1,\"batch\":$2,\"failed\":true}" >> "$out"
    "$venv/bin/python" bench/pytorch_train_step.py --size $1 --batch $2 --runs $3 "${full[@]}" >> "$out"
done
cat "$out"
