#!/usr/bin/env bash
# Keeps the small result files of bench/quality.sh's tree in the repository, so that
# QUALITY.md's tables and paired comparisons can be redone after the tree is gone:
# every run's config.toml, split.json, metrics.csv and log.jsonl, and every evaluation's
# summary.json, per_case.csv and clicks.json (no weights, no pictures).
#
#   tools/quality_keep.sh quality docs/quality/results
set -euo pipefail
tree=$1
dest=$(realpath -m "$2")
cd "$tree"
find runs eval \( -path '*/overlays' -o -path '*/montage' \) -prune -o -type f \
    \( -name config.toml -o -name split.json -o -name metrics.csv -o -name log.jsonl \
    -o -name summary.json -o -name per_case.csv -o -name clicks.json \) -print |
    while read -r f; do
        mkdir -p "$dest/$(dirname "$f")"
        cp "$f" "$dest/$f"
    done
