#!/usr/bin/env bash
# GPU check of a CUDA build of gpt-ablate (issue 7), for the lent GPU machine (H200, driver 580 /
# CUDA 13.0).  NOT for machines without a GPU, except as a dry run (below).
#
# Run from the repo root with the binary carried, e.g. through the device tool:
#     run(command="bash scripts/device_check.sh", carry=["target-cuda/device/gpt-ablate.xz"],
#         timeout_s=540)
# (the binary itself, ~65 MiB, is over the tool's 64 MiB limit; scripts/build_cuda.sh writes the
# stripped, xz-compressed copy, ~7.5 MiB, that this script unpacks to /tmp/gpt-ablate-cuda/).
# It takes a few minutes (budget: under 8).  What it does (details in scripts/device_check.py):
#   a. LD_LIBRARY_PATH = the CUDA 13 libraries of the machine's PyTorch (site-packages/nvidia/cu13/lib:
#      libcudart, libcublas(Lt), libcurand, libnvrtc) + the directory of the driver's libcuda.so.1,
#      and checks with ldd that the binary finds everything;
#   b. a GPT-2-small-shaped random checkpoint (GPT2Config() defaults, seed 0, save_pretrained, the
#      repo's GPT-2 tokenizer) and a text of the first 16,384 WikiText-2 test tokens, both with the
#      helpers of scripts/bench_vs_pytorch.py;
#   c. gpt-ablate perplexity (context 1024, stride 512, --json) on the CPU (threads = nproc) and with
#      --device cuda in f32 and bf16: f32 must agree with the CPU to 1e-4 relative; bf16 reported;
#   d. PyTorch on the same GPU, same windows, exact per-token scoring, f32 and bf16: scored tokens/s
#      of both tools and their ratio;
#   e. greedy generation (64 tokens, --ignore-eos) on CUDA and CPU: the token ids must be equal;
#   f. everything into $OUT/device_report.json (and the console log into $OUT/device_check.log);
#      exit status 1 if an agreement check fails, 2 if something could not run.
#
# Environment knobs:
#   GPT_ABLATE            binary (default target-cuda/release/gpt-ablate, else the unpacked
#                         target-cuda/device/gpt-ablate.xz)
#   DEVICE_CHECK_DEVICE   default cuda; `cpu` = dry run on a machine without a GPU: every cuda run
#                         becomes a cpu run and PyTorch is timed on the CPU
#   DEVICE_CHECK_TOKENS   WikiText tokens to score (default 16384; use ~2048 for a CPU dry run)
#   DEVICE_CHECK_WORKDIR  scratch dir (default /tmp/gpt-ablate-devcheck; a checkpoint there is reused)
#   OUT                   where the report goes (the device tool sets it; default ./device-check-out)
#   PYTHON                python with torch + transformers + tokenizers (default python3)
# CPU dry run here:
#   DEVICE_CHECK_DEVICE=cpu DEVICE_CHECK_TOKENS=2048 GPT_ABLATE=target/release/gpt-ablate \
#       OUT=/tmp/devout bash scripts/device_check.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
export DEVICE_CHECK_DEVICE="${DEVICE_CHECK_DEVICE:-cuda}"
XZ_BIN="$REPO/target-cuda/device/gpt-ablate.xz"
if [[ -z "${GPT_ABLATE:-}" ]]; then
    GPT_ABLATE="$REPO/target-cuda/release/gpt-ablate"
    if [[ ! -x "$GPT_ABLATE" && -f "$XZ_BIN" ]]; then
        # The carried, stripped + xz-compressed binary (see scripts/build_cuda.sh).
        GPT_ABLATE=/tmp/gpt-ablate-cuda/gpt-ablate
        mkdir -p "${GPT_ABLATE%/*}"
        "${PYTHON:-python3}" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as f, open(sys.argv[2], "wb") as g: shutil.copyfileobj(f, g)' "$XZ_BIN" "$GPT_ABLATE"
        chmod +x "$GPT_ABLATE"
        printf '[device_check] unpacked %s -> %s\n' "$XZ_BIN" "$GPT_ABLATE"
    fi
fi
export GPT_ABLATE
export OUT="${OUT:-$REPO/device-check-out}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

say() { printf '[device_check] %s\n' "$*"; }

if [[ ! -x "$GPT_ABLATE" ]]; then
    say "no executable gpt-ablate at $GPT_ABLATE (build: scripts/build_cuda.sh; carry target-cuda/device/gpt-ablate.xz)"
    exit 2
fi

# --- a. CUDA 13 runtime libraries and the driver's libcuda.so.1 -------------------------------
if [[ "$DEVICE_CHECK_DEVICE" != cpu ]]; then
    # PyTorch's CUDA libraries (site-packages/nvidia/cu13/lib), else the toolkit's; each library
    # the binary links is looked up separately, in that order.
    TORCH_CU_LIB="$("$PYTHON" - <<'PY'
import os
paths = []
try:
    import nvidia
    paths += list(nvidia.__path__)
except Exception:
    pass
try:
    import torch
    paths.append(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia"))
except Exception:
    pass
for p in paths:
    d = os.path.join(p, "cu13", "lib")
    if os.path.isdir(d):
        print(d)
        break
PY
)" || true
    CU_LIB=""
    for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
        found=""
        for d in $TORCH_CU_LIB /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
            [[ -e "$d/$lib" ]] && { found="$d"; break; }
        done
        [[ -n "$found" ]] || { say "$lib not found (looked in: ${TORCH_CU_LIB:-no torch nvidia/cu13/lib} /usr/local/cuda/lib64)"; exit 2; }
        [[ ":$CU_LIB:" == *":$found:"* ]] || CU_LIB="${CU_LIB:+$CU_LIB:}$found"
    done
    # The driver's libcuda.so.1 (never a toolkit stub).
    DRV_LIB=""
    cand="$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 .*x86-64/{print $NF; exit}')"
    [[ -n "$cand" ]] && DRV_LIB="$(dirname "$(readlink -f "$cand")")"
    if [[ -z "$DRV_LIB" ]]; then
        for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /lib/x86_64-linux-gnu; do
            [[ -e "$d/libcuda.so.1" ]] && { DRV_LIB="$d"; break; }
        done
    fi
    [[ -n "$DRV_LIB" ]] || { say "the driver's libcuda.so.1 was not found"; exit 2; }
    export LD_LIBRARY_PATH="$CU_LIB:$DRV_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "CUDA libraries: $CU_LIB"
    say "driver library: $DRV_LIB/libcuda.so.1"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader || true
fi
say "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
if ldd "$GPT_ABLATE" | grep -q 'not found'; then
    say "the binary does not find all its libraries:"
    ldd "$GPT_ABLATE" | grep 'not found'
    exit 2
fi
"$GPT_ABLATE" --version >/dev/null 2>&1 || "$GPT_ABLATE" --help >/dev/null

# --- b-f. the checks (tee the console into $OUT) ----------------------------------------------
set +e
"$PYTHON" "$REPO/scripts/device_check.py" 2>&1 | tee "$OUT/device_check.log"
rc=${PIPESTATUS[0]}
set -e
say "exit status $rc (0 = all checks passed, 1 = an agreement check failed, 2 = could not run)"
exit "$rc"
