#!/usr/bin/env bash
# Builds the CUDA binary of optimem (cargo feature `cuda`) on a machine with no GPU and no CUDA from Debian,
# by the recipe of ../shared/CUDA.md: CUDA 13.0 toolkit pieces from PyPI wheels, a link-time stub of the
# driver library (libcuda.so.1 comes with the driver on the GPU machine), sm_90 kernels for the H200.
#
#   tools/cuda/build.sh            # -> .cuda/optimem (and .cuda/optimem.xz, small enough to carry)
#
# Everything it downloads or makes lives in the git-ignored `.cuda/` (wheels are kept between runs). The build
# shares `target/` with the CPU build: only candle and optimem itself are compiled twice; the CPU binary at
# target/release/optimem is put back afterwards by cargo's next plain `cargo build --release`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
C="$root/.cuda"
PY=${PYTHON:-python3}
mkdir -p "$C/wheels"

# 1. CUDA 13.0 pieces (the H200 driver is CUDA 13.0; cudarc 0.19.10 rejects nvcc newer than 13.4).
PINS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
      nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14)
"$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$C/wheels" "${PINS[@]}"

# 2. Unpack the nvidia/ part of every wheel into one tree.
rm -rf "$C/root"
mkdir -p "$C/root"
for w in "$C"/wheels/*.whl; do
  "$PY" - "$w" "$C/root" <<'PY'
import sys, zipfile, os, stat
w, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(w) as z:
    for info in z.infolist():
        if not info.filename.startswith("nvidia/") or info.is_dir():
            continue
        path = z.extract(info, dst)
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, mode)
PY
done
CUDA_HOME="$C/root/nvidia/cu13"
[ -d "$CUDA_HOME/bin" ] || { echo "no $CUDA_HOME/bin after unpacking the wheels" >&2; exit 1; }
chmod +x "$CUDA_HOME"/bin/* "$CUDA_HOME"/nvvm/bin/* 2>/dev/null || true
ln -sfn lib "$CUDA_HOME/lib64"

# 3. Unversioned names for the linker.
cd "$CUDA_HOME/lib"
for base in libcudart libcublas libcublasLt libcurand libnvrtc; do
  f=$(ls "$base".so.* 2>/dev/null | sort | head -1 || true)
  [ -n "$f" ] || { echo "missing $base.so.* in $CUDA_HOME/lib" >&2; exit 1; }
  ln -sfn "$f" "$base.so"
done

# 4. Link-time stub of the driver API: every cu* symbol cudarc declares, each returning CUDA_ERROR_UNKNOWN.
#    soname libcuda.so.1, so the binary binds to the real driver library on the GPU machine.
cd "$root"
cargo fetch -q
CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -1)
grep -o 'fn cu[A-Za-z0-9_]*(' "$CUDARC/src/driver/sys/mod.rs" | sed 's/^fn //; s/($//' | sort -u |
  awk '{ printf "int %s(void) { return 999; }\n", $1 }' > "$C/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_HOME/lib/libcuda.so" "$C/libcuda_stub.c"

# 5. The build.
export CUDA_HOME CUDA_PATH="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$CUDA_HOME/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
cargo build --release --features cuda --bin optimem
cp target/release/optimem "$C/optimem"
strip -o "$C/optimem.stripped" "$C/optimem"
xz -T0 -6 -c "$C/optimem.stripped" > "$C/optimem.xz"
ls -l "$C/optimem" "$C/optimem.xz"
