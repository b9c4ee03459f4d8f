#!/usr/bin/env bash
# Build gpt-ablate with `--features cuda` on a machine that has no GPU and no CUDA toolkit.
#
# The CUDA 13.0 toolkit pieces candle 0.11.1 needs come from NVIDIA's PyPI wheels, installed
# into a git-ignored virtualenv (.venv-cuda/, pins in scripts/requirements-cuda.txt).  They all
# land in one tree, .venv-cuda/lib/pythonX.Y/site-packages/nvidia/cu13/ with bin/ (nvcc, ptxas),
# nvvm/ (cicc), include/ (cuda.h, cccl headers) and lib/ (libcudart.so.13, libcublas.so.13, ...).
# The script then:
#   * makes that tree look like a normal toolkit for the linker: unversioned symlinks
#     lib/libcudart.so -> libcudart.so.13 etc. (the wheels ship only the versioned names);
#   * writes lib/stubs/libcuda.so, a link-time stand-in for the driver library.  candle-core
#     0.11.1 turns on cudarc's `dynamic-linking` feature, so the binary is linked with -lcuda
#     (plus -lnvrtc -lcurand -lcublas -lcublasLt, and candle-kernels adds -lcudart); no wheel
#     ships libcuda, so the stub is generated here: every cu* entry point declared by cudarc's
#     driver bindings (and by cuda.h), each returning CUDA_ERROR_STUB_LIBRARY (34), with
#     SONAME libcuda.so.1 so the binary asks for the driver's real libcuda.so.1 at run time;
#   * exports PATH (nvcc), CUDA_ROOT/CUDA_PATH/CUDA_HOME, CPATH, LIBRARY_PATH, LD_LIBRARY_PATH
#     and CUDA_COMPUTE_CAP=90 (H100/H200; no nvidia-smi here to detect it; candle-kernels'
#     cudaforge then targets sm_90a);
#   * runs `cargo build --release --features cuda --target-dir target-cuda` (a separate,
#     git-ignored target dir: the CPU build in target/ is left alone), logging to
#     /tmp/cuda-build.log (override with CUDA_BUILD_LOG), and prints the binary's path and
#     how long the build took.
#
# The resulting binary needs, at run time, libcuda.so.1 from an NVIDIA driver and the CUDA 13
# libraries (libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10,
# libnvrtc.so.13) on LD_LIBRARY_PATH; without libcuda.so.1 it does not even start (the
# dynamic loader refuses it).  On the GPU machine PyTorch's nvidia/cu13/lib provides the
# CUDA libraries: see scripts/device_check.sh.
#
# Usage (from anywhere; it works in the repo root):
#     scripts/build_cuda.sh
# Environment knobs: PYTHON (default python3), CUDA_VENV (default <repo>/.venv-cuda),
# CUDA_COMPUTE_CAP (default 90), CUDA_BUILD_LOG (default /tmp/cuda-build.log), CARGO_BUILD_JOBS.
# `source scripts/build_cuda.sh --env-only` sets up the environment in the current shell and
# builds nothing (handy for running target-cuda/release/gpt-ablate afterwards).
set -euo pipefail

ENV_ONLY=0
if [[ "${1:-}" == "--env-only" ]]; then ENV_ONLY=1; fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${CUDA_VENV:-$REPO/.venv-cuda}"
REQS="$REPO/scripts/requirements-cuda.txt"
LOG="${CUDA_BUILD_LOG:-/tmp/cuda-build.log}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

say() { printf '[build_cuda] %s\n' "$*" >&2; }

# --- 1. virtualenv with the CUDA wheels -------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# A stamp keyed on the requirements file skips pip on reruns.
STAMP="$VENV/.requirements-cuda.sha256"
REQ_SUM="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$REQ_SUM" ]]; then
    say "pip-installing CUDA wheels from $REQS (about 1 GB to download the first time)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
    echo "$REQ_SUM" > "$STAMP"
fi

# --- 2. locate the toolkit tree inside site-packages -----------------------------------------
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CUDA_ROOT=""
for cand in "$SITE/nvidia/cu13" "$SITE/nvidia/cuda_nvcc"; do
    if [[ -x "$cand/bin/nvcc" ]]; then CUDA_ROOT="$cand"; break; fi
done
if [[ -z "$CUDA_ROOT" ]]; then
    say "no bin/nvcc under $SITE/nvidia; installed:"
    find "$SITE/nvidia" -maxdepth 3 -name nvcc >&2 || true
    exit 1
fi
for need in nvvm/bin/cicc include/cuda.h include/cuda_runtime.h include/cccl/cuda/std/cstdint \
            include/crt/host_config.h lib/libcudart.so.13 lib/libcublas.so.13 \
            lib/libcublasLt.so.13 lib/libcurand.so.10 lib/libnvrtc.so.13; do
    [[ -e "$CUDA_ROOT/$need" ]] || { say "missing $CUDA_ROOT/$need: is the venv complete?"; exit 1; }
done

# --- 3. linker names: unversioned symlinks and the libcuda stub -------------------------------
LIB="$CUDA_ROOT/lib"
for so in "$LIB"/lib*.so.[0-9]*; do
    base="${so##*/}"                      # libcublas.so.13, libnvrtc-builtins.so.13.0, ...
    plain="${base%%.so.*}.so"             # libcublas.so
    [[ -e "$LIB/$plain" ]] || ln -s "$base" "$LIB/$plain"
done

STUB_DIR="$LIB/stubs"
STUB="$STUB_DIR/libcuda.so"
if [[ ! -f "$STUB" ]]; then
    say "generating the link-time stub $STUB"
    mkdir -p "$STUB_DIR"
    # Entry points: cudarc's driver bindings (the exact set the Rust code can reference) plus
    # every CUresult-returning function in cuda.h.  cudarc's sources must be fetched first.
    (cd "$REPO" && cargo fetch --quiet)
    CUDARC_VER="$(awk '/^name = "cudarc"$/{getline; gsub(/version = |"/,""); print; exit}' "$REPO/Cargo.lock")"
    CARGO_DIR="${CARGO_HOME:-$HOME/.cargo}"
    CUDARC_SYS="$(ls -d "$CARGO_DIR"/registry/src/*/cudarc-"$CUDARC_VER"/src/driver/sys/mod.rs 2>/dev/null | head -1 || true)"
    SYMS="$STUB_DIR/libcuda.symbols"
    {
        if [[ -n "$CUDARC_SYS" ]]; then
            grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$CUDARC_SYS" | sed 's/^pub unsafe fn //'
        else
            say "warning: cudarc $CUDARC_VER sources not found; stub made from cuda.h alone"
        fi
        grep -oE 'CUresult CUDAAPI cu[A-Za-z0-9_]+' "$CUDA_ROOT/include/cuda.h" | awk '{print $3}'
    } | sort -u > "$SYMS"
    awk '{printf "int %s(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }\n", $1}' "$SYMS" > "$STUB_DIR/libcuda_stub.c"
    cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$STUB" "$STUB_DIR/libcuda_stub.c"
    say "stub exports $(wc -l < "$SYMS") cu* symbols"
fi

# --- 4. environment ---------------------------------------------------------------------------
export CUDA_ROOT CUDA_PATH="$CUDA_ROOT" CUDA_HOME="$CUDA_ROOT" CUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT"
export NVCC="$CUDA_ROOT/bin/nvcc"
export PATH="$CUDA_ROOT/bin:$PATH"
export CPATH="$CUDA_ROOT/include${CPATH:+:$CPATH}"
export LIBRARY_PATH="$LIB:$STUB_DIR${LIBRARY_PATH:+:$LIBRARY_PATH}"
# Real CUDA libraries only: the stub libcuda must never shadow a driver at run time.
export LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "CUDA_ROOT=$CUDA_ROOT"
say "$(nvcc --version | tail -2 | head -1)"
say "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"

if [[ "$ENV_ONLY" == 1 ]]; then
    # Sourced for its environment: stop here (and don't leave `set -e` in the caller's shell).
    set +euo pipefail
    return 0 2>/dev/null || exit 0
fi

# --- 5. build -----------------------------------------------------------------------------------
cd "$REPO"
say "cargo build --release --features cuda --target-dir target-cuda  (log: $LOG)"
start=$(date +%s)
if ! cargo build --release --features cuda --target-dir target-cuda >"$LOG" 2>&1; then
    end=$(date +%s)
    say "BUILD FAILED after $((end - start)) s; last 60 lines of $LOG:"
    tail -n 60 "$LOG" >&2
    exit 1
fi
end=$(date +%s)
BIN="$REPO/target-cuda/release/gpt-ablate"
say "built in $((end - start)) s: $BIN ($(du -h "$BIN" | cut -f1))"
say "it needs at run time (ldd with this LD_LIBRARY_PATH; libcuda.so.1 comes from the driver):"
ldd "$BIN" | grep -E 'cuda|cublas|curand|nvrtc|cudart|not found' >&2 || true

# --- 6. a small copy for the device tool ---------------------------------------------------------
# The binary is ~65 MiB (33 MiB of it candle's sm_90a kernels), over what the device tool carries
# (64 MiB with the working tree), so ship it stripped and xz-compressed (~7 MiB):
#     carry=["target-cuda/device/gpt-ablate.xz"]; scripts/device_check.sh unpacks it.
DEV_DIR="$REPO/target-cuda/device"
mkdir -p "$DEV_DIR"
strip -o "$DEV_DIR/gpt-ablate" "$BIN"
xz -T0 -6 -f "$DEV_DIR/gpt-ablate"          # -> gpt-ablate.xz, removes the uncompressed copy
say "for the device tool: $DEV_DIR/gpt-ablate.xz ($(du -h "$DEV_DIR/gpt-ablate.xz" | cut -f1))"

# To try the binary here (no driver): the dynamic loader wants libcuda.so.1 before main() runs;
# pointing it at the stub lets --help and CPU runs work, and --device cuda then fails with
# CUDA_ERROR_STUB_LIBRARY.  Never do this on a machine with a driver.
mkdir -p "$STUB_DIR/runtime"
ln -sf ../libcuda.so "$STUB_DIR/runtime/libcuda.so.1"
say "to run it on this driverless machine: LD_LIBRARY_PATH=$LIB:$STUB_DIR/runtime $BIN --help"
echo "$BIN"
