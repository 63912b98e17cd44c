#!/usr/bin/env bash
# Coverage-guided fuzzing of one loader with AFL++ through afl.rs (stable toolchain):
#
#   bench/fuzz.sh TARGET SECONDS        # TARGET: pth safetensors image nifti dicom prompts run_config layouts
#
# Needs `cargo install cargo-afl` once. Seeds: fuzz/corpus/TARGET (made by
# `cargo run --release --example fuzz_seeds`). Crashing inputs are copied to
# fuzz/crashes/TARGET, which tests/fuzz_corpus.rs replays in CI. One JSON line per run goes
# to bench/results-fuzz.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?TARGET}
seconds=${2:?SECONDS}
(cd fuzz && cargo afl build --release -q)
out=fuzz/out/$target
rm -rf "$out"
mkdir -p fuzz/out
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 MSA_FUZZ_TARGET=$target
cargo afl fuzz -i "fuzz/corpus/$target" -o "$out" -V "$seconds" -t 5000 -- fuzz/target/release/msa-fuzz \
    > "fuzz/out/$target.log" 2>&1 || true
stats=$out/default/fuzzer_stats
if [ ! -f "$stats" ]; then
    echo "no fuzzer_stats; see fuzz/out/$target.log" >&2
    tail -20 "fuzz/out/$target.log" >&2
    exit 1
fi
get() { awk -F: -v k="$1" '$1 ~ "^"k" *$" {gsub(/ /, "", $2); print $2}' "$stats"; }
crashes=$(get saved_crashes)
mkdir -p "fuzz/crashes/$target"
for f in "$out"/default/crashes/id:*; do
    [ -e "$f" ] && cp "$f" "fuzz/crashes/$target/$(sha256sum "$f" | cut -c1-16)"
done
line=$(printf '{"target":"%s","seconds":%s,"execs":%s,"execs_per_sec":%s,"crashes":%s,"hangs":%s,"corpus":%s,"commit":"%s"}' \
    "$target" "$(get run_time)" "$(get execs_done)" "$(get execs_per_sec)" "$crashes" \
    "$(get saved_hangs)" "$(get corpus_count)" "$(git rev-parse --short HEAD)")
echo "$line" | tee -a bench/results-fuzz.jsonl
