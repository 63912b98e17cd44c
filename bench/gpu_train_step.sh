#!/usr/bin/env bash
# On the GPU machine: one MSA training step (vit_b, encoder adapters, SAM frozen) at 256 and
# 1024 px, batch 1 and 2, ours (.gpu/msa.xz, a --features cuda build) beside PyTorch.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
py=$(command -v python3)
[ -x /opt/torch/.venv/bin/python3 ] && py=/opt/torch/.venv/bin/python3
libs=$("$py" - <<'PY'
import glob, os, site
print(":".join(sorted({os.path.dirname(p) for r in site.getsitepackages() for p in glob.glob(r + "/nvidia/**/lib*.so*", recursive=True)})))
PY
)
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
"$py" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
xz -dc .gpu/msa.xz > /tmp/msa && chmod +x /tmp/msa
nvidia-smi --query-gpu=name --format=csv,noheader
: > "$OUT/gpu_train.jsonl"
for size in 256 1024; do
    for b in 1 2; do
        /tmp/msa bench train-step --preset vit_b --size $size --batch $b --runs 5 --json | sed 's/^{/{"impl":"msa",/' | tee -a "$OUT/gpu_train.jsonl"
        "$py" bench/pytorch_train_step.py --size $size --batch $b --runs 5 --device cuda | tee -a "$OUT/gpu_train.jsonl"
    done
done
