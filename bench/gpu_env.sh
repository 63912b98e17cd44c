#!/usr/bin/env bash
# Sourced by the GPU scripts: the machine's Python (PyTorch's venv when present), the
# CUDA libraries from its nvidia-* wheels on LD_LIBRARY_PATH, and segment-anything from
# the carried .whl/ folder. Sets $py.
py=$(command -v python3)
[ -x /opt/torch/.venv/bin/python3 ] && py=/opt/torch/.venv/bin/python3
libs=$("$py" - <<'PY'
import glob, os, site
print(":".join(sorted({os.path.dirname(p) for r in site.getsitepackages() for p in glob.glob(r + "/nvidia/**/lib*.so*", recursive=True)})))
PY
)
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
