#!/usr/bin/env bash
# QUALITY.md's runs: LiteMedSAM trained one way on one dataset, then evaluated with a click,
# a box and corrective clicks. Resumable: a run folder that exists is resumed, a finished
# evaluation is kept; run it again after an interruption.
#
#   bench/quality.sh DATASET ROW        # DATASET: ph2 ddti hip2d hip3d
#                                       # ROW: frozen decoder adapters lora all
#
# Environment: MSA (the binary, default target/release/msa), QUALITY_DIR (where run and
# eval folders go, default quality), REALDATA (PH2/DDTI/hippocampus, default
# ../shared/realdata), EPOCHS, PROMPT, CORRECTIVE (clicks), LR, RATIO (adapter ratio)
# override msa train's defaults; AUGMENT=0 trains without augmentation; CHECKPOINT_BLOCKS=1
# recomputes the encoder's blocks in the backward pass (less memory, the same gradients);
# CHUNKS sets the volumes' --chunks-per-case (default 1; 0 covers every labelled slice);
# BATCH sets --batch-size (default 2); LABELS sets the volumes' --labels for training and
# evaluation (e.g. '{"1": 1, "2": 1}' merges anterior and posterior into one class).
set -euo pipefail
cd "$(dirname "$0")/.."
ds=$1
row=$2
msa=${MSA:-target/release/msa}
top=${QUALITY_DIR:-quality}
real=${REALDATA:-../shared/realdata}
epochs=${EPOCHS:-10}
prompt=${PROMPT:-mixed}
corrective=${CORRECTIVE:-0}
options=()
[ -n "${LR:-}" ] && options=(--lr "$LR")
[ -n "${RATIO:-}" ] && options+=(--adapter-ratio "$RATIO")
[ "${AUGMENT:-1}" = 0 ] && options+=(--no-augment)
[ "${CHECKPOINT_BLOCKS:-0}" = 1 ] && options+=(--checkpoint-blocks)
case $ds in
    ph2 | ddti)
        [ -f "$top/data/$ds/split.json" ] || python3 tools/quality_splits.py "$real/$ds" "$top/data/$ds"
        data=(--data "$top/data/$ds") ;;
    hip2d) data=(--data assets/hippocampus2d) ;;
    hip3d) data=(--dataset decathlon --data assets/hippocampus3d --holdout 6)
        [ -n "${LABELS:-}" ] && data+=(--labels "$LABELS") ;;
    *) echo "unknown dataset $ds" >&2; exit 2 ;;
esac
run="$top/runs/$ds/$row"
evals="$top/eval/$ds/$row"
mkdir -p "$run" "$evals"
checkpoint=lite_medsam
model=()
if [ "$row" != frozen ]; then
    three_d=()
    [ "$ds" = hip3d ] && three_d=(--3d --chunk 4 --chunks-per-case "${CHUNKS:-1}") && corrective=0
    resume=()
    [ -f "$run/state_last.safetensors" ] && resume=(--resume)
    done_epochs=$( [ -f "$run/metrics.csv" ] && tail -n +2 "$run/metrics.csv" | wc -l || echo 0)
    if [ "$done_epochs" -lt "$epochs" ]; then
        "$msa" train --checkpoint lite_medsam "${data[@]}" "${three_d[@]}" --train "$row" \
            --prompt "$prompt" --corrective-clicks "$corrective" "${options[@]}" --epochs "$epochs" --batch-size "${BATCH:-2}" --val-every 1 \
            --out "$run" "${resume[@]}" 2>&1 | tr '\r' '\n' | grep -v '^epoch [0-9]*/' >> "$run/train.out"
    fi
    if [ "$row" = all ]; then # full fine-tuning writes a whole model: the checkpoint
        checkpoint=$run/adapters_best.safetensors
    else
        model=(--adapters "$run/adapters_best.safetensors")
    fi
fi
evaluate() { # name, then eval flags
    local name=$1
    shift
    [ -f "$evals/$name/done" ] && return 0
    /usr/bin/time -v "$msa" eval --checkpoint "$checkpoint" "${model[@]}" "${data[@]}" \
        --out "$evals/$name" "$@" > "$evals/$name.log" 2>&1
    touch "$evals/$name/done"
}
evaluate click --prompt click
evaluate box --prompt box
[ "$ds" = hip3d ] || evaluate clicks --clicks 1,3,5
echo "$ds $row: $evals"
