#!/usr/bin/env bash
# Kill tests at full size: `msa train` on the tiny model is SIGKILLed at seeded random
# moments in every phase, resumed, and killed again; the completed run must equal an
# uninterrupted one bit for bit (tests/kill_resume.rs). CI runs the same test with 5 kills.
#
#   bench/kill_test.sh [KILLS] [SEED] [2d|3d]    # defaults: 25 kills, seed 1, 2d
#
# 2d trains on generated images, 3d trains depth adapters on assets/hippocampus3d.
#
# One JSON line per run goes to bench/results-kill.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-25}
seed=${2:-1}
commit=$(git rev-parse --short HEAD)  # at the start: the build under test
three_d=$([ "${3:-2d}" = 3d ] && echo 1 || echo 0)
log=$(MSA_KILLS=$kills MSA_KILL_SEED=$seed MSA_KILL_3D=$three_d cargo test --release -q --test kill_resume -- --nocapture 2>&1) || {
    echo "$log" >&2
    exit 1
}
line=$(echo "$log" | grep '^{"completed_runs"' | tail -1)
[ -n "$line" ] || { echo "$log" >&2; exit 1; }
echo "${line%\}},\"commit\":\"$commit\"}" | tee -a bench/results-kill.jsonl
