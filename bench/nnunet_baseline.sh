#!/usr/bin/env bash
# QUALITY.md's baseline: nnU-Net v2 (PyPI `nnunetv2`, 2d configuration, fold 0 = our
# train/val split) on the same splits as bench/quality.sh, trained on this CPU with a
# reduced epoch budget, its test predictions scored by msa's own metrics.
#
#   bench/nnunet_baseline.sh DATASET TRAINER    # DATASET: ph2 ddti hip2d hip3d
#                                               # TRAINER: e.g. nnUNetTrainer_20epochs, or
#                                               # nnUNetTrainer_cpuBudget (bench/nnunet/)
#
# Resumable: run it again after an interruption (nnU-Net's --c; the cpuBudget trainer saves
# every epoch, the stock ones every 50).
#
# hip3d, the volumes, gets the train/validation/test split msa's 3D training makes (`--holdout
# 6`, written by an `msa train --epochs 0`), and nnU-Net's 2d configuration on their slices.
#
# Environment: VENV (python with torch and nnunetv2; default bench/.venv), QUALITY_DIR
# (default quality; bench/quality.sh makes quality/data/{ph2,ddti}), MSA (the binary, for
# hip3d's split; default target/release/msa).
set -euo pipefail
cd "$(dirname "$0")/.."
ds=$1
trainer=$2
venv=${VENV:-bench/.venv}
top=$(realpath "${QUALITY_DIR:-quality}")
[ -x "$venv/bin/nnUNetv2_train" ] || "$venv/bin/pip" install -q nnunetv2
trainers=$("$venv/bin/python" -c 'import nnunetv2, os; print(os.path.join(os.path.dirname(nnunetv2.__file__), "training", "nnUNetTrainer", "variants"))')
cp bench/nnunet/nnUNetTrainer_cpuBudget.py "$trainers/"
export nnUNet_raw=$top/nnunet/raw nnUNet_preprocessed=$top/nnunet/pre nnUNet_results=$top/nnunet/results
case $ds in
    ph2) id=501 name=Dataset501_PH2 src=$top/data/ph2 channel=RGB ;;
    ddti) id=502 name=Dataset502_DDTI src=$top/data/ddti channel=US ;;
    hip2d) id=503 name=Dataset503_Hip2D src=assets/hippocampus2d channel=MRI ;;
    hip3d) id=504 name=Dataset504_Hip3D src=assets/hippocampus3d channel=MRI ;;
    *) echo "unknown dataset $ds" >&2; exit 2 ;;
esac
split=()
if [ "$ds" = hip3d ]; then
    split=("$top/nnunet/hip3d-split/split.json")
    [ -f "${split[0]}" ] || "${MSA:-target/release/msa}" train --checkpoint lite_medsam \
        --dataset decathlon --data "$src" --holdout 6 --3d --epochs 0 \
        --out "$top/nnunet/hip3d-split" > /dev/null
fi
if [ ! -f "$nnUNet_preprocessed/$name/splits_final.json" ]; then
    "$venv/bin/python" tools/nnunet_export.py "$src" "$nnUNet_raw/$name" "$channel" "${split[@]}"
    "$venv/bin/nnUNetv2_plan_and_preprocess" -d "$id" -c 2d -np 1 --verify_dataset_integrity
    cp "$nnUNet_raw/$name/splits_final.json" "$nnUNet_preprocessed/$name/"
fi
out=$top/nnunet/$ds-$trainer
mkdir -p "$out"
fold=$nnUNet_results/$name/${trainer}__nnUNetPlans__2d/fold_0
if [ ! -f "$fold/checkpoint_final.pth" ]; then
    resume=()
    [ -f "$fold/checkpoint_latest.pth" ] && resume=(--c)
    /usr/bin/time -v "$venv/bin/nnUNetv2_train" "$id" 2d 0 -tr "$trainer" -device cpu \
        "${resume[@]}" >> "$out/train.log" 2>&1
fi
"$venv/bin/nnUNetv2_predict" -d "$id" -c 2d -f 0 -tr "$trainer" -device cpu \
    -i "$nnUNet_raw/$name/imagesTs" -o "$out/pred" > "$out/predict.log" 2>&1
if [ "$ds" = hip3d ]; then
    cargo build --release -q --example score_volumes
    target/release/examples/score_volumes "$src" 6 "$out/pred" "$top/eval/$ds/nnunet-$trainer"
else
    cargo build --release -q --example score_masks
    target/release/examples/score_masks "$src" "$out/pred" "$top/eval/$ds/nnunet-$trainer"
fi
