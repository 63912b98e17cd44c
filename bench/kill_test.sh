#!/usr/bin/env bash
# Kill tests at full size: `msa train` is SIGKILLed at seeded random moments in every phase,
# resumed, and killed again; the completed run must equal an uninterrupted one bit for bit
# (tests/kill_resume.rs). CI runs the same test with 5 kills in 2d.
#
#   bench/kill_test.sh [KILLS] [SEED] [2d|3d|lite]    # defaults: 25 kills, seed 1, 2d
#
# 2d trains the tiny model on generated images, 3d trains its depth adapters on
# assets/hippocampus3d, lite trains LiteMedSAM's encoder and decoder adapters
# (--checkpoint lite_medsam, which must be in the model cache) on 6 slices of
# assets/hippocampus2d, batch 2, 2 epochs: about a minute per uninterrupted run here.
#
# One JSON line per run goes to bench/results-kill.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-25}
seed=${2:-1}
mode=${3:-2d}
commit=$(git rev-parse --short HEAD)  # at the start: the build under test
three_d=0 lite=0
case $mode in
2d) ;;
3d) three_d=1 ;;
lite) lite=1 ;;
*) echo "mode must be 2d, 3d or lite, not $mode" >&2; exit 2 ;;
esac
log=$(MSA_KILLS=$kills MSA_KILL_SEED=$seed MSA_KILL_3D=$three_d MSA_KILL_LITE=$lite cargo test --release -q --test kill_resume -- --nocapture 2>&1) || {
    echo "$log" >&2
    exit 1
}
line=$(echo "$log" | grep '^{"completed_runs"' | tail -1)
[ -n "$line" ] || { echo "$log" >&2; exit 1; }
echo "${line%\}},\"commit\":\"$commit\"}" | tee -a bench/results-kill.jsonl
