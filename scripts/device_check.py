#!/usr/bin/env python3
"""GPU agreement and speed check for a CUDA build of gpt-ablate; run by scripts/device_check.sh.

Meant for the lent GPU machine (an H200), run from the repo root with the CUDA binary carried
(``target-cuda/release/gpt-ablate``, built by scripts/build_cuda.sh).  scripts/device_check.sh
sets LD_LIBRARY_PATH and calls this; it can also be run directly when the environment is right.

Steps (figures go to ``$OUT/device_report.json``; the exit status is 1 if an agreement check
fails, 2 if something could not run):

1. Checkpoint: GPT-2-small shape, ``GPT2Config()`` defaults, random init with seed 0,
   ``save_pretrained`` + ``data/gpt2-tokenizer/tokenizer.json`` (bench_vs_pytorch.build_model),
   made with this machine's own PyTorch/transformers.  Text: the first N WikiText-2 test tokens
   (N = DEVICE_CHECK_TOKENS, default 16384; bench_vs_pytorch.make_text).
2. ``gpt-ablate perplexity --context 1024 --stride 512 --json`` on the CPU (``--threads nproc``)
   and on the GPU in f32 and in bf16.  A short warm-up run per GPU dtype comes first (module
   load / PTX JIT / cuBLAS set-up, cached by the driver), and each GPU dtype is also run on the
   first half of the text, so a marginal (steady-state) rate is reported beside the plain one.
   Checks: tokens scored equal; GPU f32 perplexity within 1e-4 (relative) of the CPU's (FAIL
   otherwise); bf16's difference is reported (FAIL only if it is not finite).
3. PyTorch (transformers GPT2LMHeadModel, eager sdpa attention, inference_mode) on the same GPU,
   f32 and bf16, the same windows with the exact per-token scoring of bench_vs_pytorch.py
   (float32 log_softmax of the logits, NLLs summed in float64); one warm-up window, then the
   scoring loop is timed with torch.cuda.synchronize.  Prints scored tokens/s of both tools and
   gpt-ablate / PyTorch.  (TF32 stays off: torch's default, and candle's.)
4. Greedy generation, ``gpt-ablate generate --temperature 0 --max-new-tokens 64 --ignore-eos
   --json`` after the first 32 WikiText tokens, on the GPU (f32) and the CPU: token ids must be
   equal (FAIL otherwise).

Testing on a machine without a GPU: ``DEVICE_CHECK_DEVICE=cpu`` replaces the GPU device by
``cpu`` everywhere (so the "GPU" runs are CPU runs, and PyTorch is timed on the CPU in f32 only:
its CPU bf16 runs at a few tokens/s); use it with a small DEVICE_CHECK_TOKENS (e.g. 2048).  Other knobs: GPT_ABLATE (binary, default
target-cuda/release/gpt-ablate), DEVICE_CHECK_WORKDIR (default /tmp/gpt-ablate-devcheck; the
checkpoint there is reused), DEVICE_CHECK_GEN_TOKENS (default 64), DEVICE_CHECK_TIMEOUT (seconds
per gpt-ablate run, default 300), OUT (default ./device-check-out).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bench_vs_pytorch as bench  # noqa: E402  (stdlib-only at import time; helpers reused)

DEVICE = os.environ.get("DEVICE_CHECK_DEVICE", "cuda")
TOKENS = int(os.environ.get("DEVICE_CHECK_TOKENS", "16384"))
GEN_TOKENS = int(os.environ.get("DEVICE_CHECK_GEN_TOKENS", "64"))
GEN_PROMPT_TOKENS = 32
CONTEXT, STRIDE = 1024, 512
RUN_TIMEOUT = float(os.environ.get("DEVICE_CHECK_TIMEOUT", "300"))
F32_TOL = 1e-4
BIN = Path(os.environ.get("GPT_ABLATE", str(REPO / "target-cuda" / "release" / "gpt-ablate")))
WORKDIR = Path(os.environ.get("DEVICE_CHECK_WORKDIR", "/tmp/gpt-ablate-devcheck"))
OUT = Path(os.environ.get("OUT") or (REPO / "device-check-out"))
NPROC = os.cpu_count() or 1

log = bench.log
report: dict = {
    "device": DEVICE,
    "tokens": TOKENS,
    "context": CONTEXT,
    "stride": STRIDE,
    "binary": str(BIN),
    "nproc": NPROC,
    "host": platform.node(),
    "checks": {},
    "failures": [],
    "errors": [],
}
T_START = time.perf_counter()


def save_report() -> None:
    report["total_seconds"] = time.perf_counter() - T_START
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "device_report.json").write_text(json.dumps(report, indent=2) + "\n")


def fatal(msg: str) -> None:
    """Something could not run at all: record it, write the report, exit 2."""
    print(f"ERROR: {msg}", file=sys.stderr, flush=True)
    report["errors"].append(msg)
    save_report()
    sys.exit(2)


def check(name: str, ok: bool, detail: str, fatal_check: bool = True) -> None:
    status = "ok" if ok else ("FAIL" if fatal_check else "note")
    report["checks"][name] = {"ok": bool(ok), "fatal": fatal_check, "detail": detail}
    if not ok and fatal_check:
        report["failures"].append(name)
    log(f"[check {status}] {name}: {detail}")


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else float("inf")


# --------------------------------------------------------------------------- gpt-ablate runs


def gpt_ablate(args: list, label: str) -> dict:
    cmd = [str(BIN), *args]
    env = dict(os.environ, RAYON_NUM_THREADS=str(NPROC))
    log(f"[{label}] {' '.join(cmd)}")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        fatal(f"{label}: gpt-ablate ran past {RUN_TIMEOUT:.0f} s")
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        report.setdefault("stderr_tails", {})[label] = p.stderr[-3000:]
        fatal(f"{label}: gpt-ablate exited with status {p.returncode}; stderr tail:\n{p.stderr[-3000:]}")
    try:
        j = bench.parse_json_stdout(p.stdout)
    except ValueError:
        fatal(f"{label}: no JSON on stdout; stdout tail:\n{p.stdout[-2000:]}")
    j["_wall_s"] = wall
    return j


def perplexity(device: str, dtype: str, text: Path, label: str) -> dict:
    args = ["perplexity", "--model", str(MODEL), "--data", str(text), "--context", str(CONTEXT),
            "--stride", str(STRIDE), "--device", device, "--dtype", dtype, "--json"]
    if device == "cpu":
        args += ["--threads", str(NPROC)]
    j = gpt_ablate(args, label)
    for k in ("tokens_scored", "perplexity", "seconds", "nll_sum"):
        if k not in j:
            fatal(f"{label}: JSON lacks {k!r}: {sorted(j)}")
    r = {
        "device": j.get("device", device),
        "dtype": j.get("dtype", dtype),
        "tokens_scored": int(j["tokens_scored"]),
        "windows": j.get("windows"),
        "perplexity": float(j["perplexity"]),
        "nll_sum": float(j["nll_sum"]),
        "seconds": float(j["seconds"]),
        "load_seconds": j.get("load_seconds"),
        "tokens_per_second": float(j["tokens_scored"]) / float(j["seconds"]),
        "wall_s": j["_wall_s"],
    }
    log(f"[{label}] {r['tokens_scored']} tokens in {r['seconds']:.3f} s = {r['tokens_per_second']:.0f} tok/s, "
        f"ppl {r['perplexity']:.6f} (load {r['load_seconds']}, wall {r['wall_s']:.2f} s)")
    return r


def generate(device: str, prompt: Path, label: str) -> dict:
    args = ["generate", "--model", str(MODEL), "--prompt-file", str(prompt), "--temperature", "0",
            "--max-new-tokens", str(GEN_TOKENS), "--ignore-eos", "--device", device, "--json"]
    if device == "cpu":
        args += ["--threads", str(NPROC)]
    j = gpt_ablate(args, label)
    for k in ("token_ids", "generated_tokens", "prompt_seconds", "generation_seconds"):
        if k not in j:
            fatal(f"{label}: JSON lacks {k!r}: {sorted(j)}")
    secs = float(j["prompt_seconds"]) + float(j["generation_seconds"])
    r = {
        "device": device,
        "prompt_tokens": j.get("prompt_tokens"),
        "generated_tokens": int(j["generated_tokens"]),
        "prompt_seconds": float(j["prompt_seconds"]),
        "generation_seconds": float(j["generation_seconds"]),
        "new_tokens_per_second": int(j["generated_tokens"]) / secs if secs > 0 else None,
        "generation_tokens_per_second": j.get("generation_tokens_per_second"),
        "stop_reason": j.get("stop_reason"),
        "token_ids": [int(t) for t in j["token_ids"]],
        "wall_s": j["_wall_s"],
    }
    log(f"[{label}] {r['generated_tokens']} new tokens, prompt {r['prompt_seconds']:.3f} s + "
        f"generation {r['generation_seconds']:.3f} s ({r['new_tokens_per_second']:.1f} new tok/s end to end)")
    return r


# --------------------------------------------------------------------------- PyTorch timing


def torch_score(text: Path, device: str, dtype_name: str, max_tokens: int | None = None) -> dict:
    """bench_vs_pytorch.torch_worker's exact scoring, on `device` in `dtype`, timed without load."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if device == "cpu":
        torch.set_num_threads(NPROC)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    with open(text, encoding="utf-8", newline="") as f:
        ids = tok.encode(f.read(), add_special_tokens=False).ids
    if max_tokens:
        ids = ids[:max_tokens]
    n = len(ids)
    t0 = time.perf_counter()
    model = GPT2LMHeadModel.from_pretrained(str(MODEL), dtype=dtype, attn_implementation="sdpa")
    model.to(device).eval()
    load_s = time.perf_counter() - t0
    all_ids = torch.tensor(ids, dtype=torch.long, device=device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        model(input_ids=all_ids[: min(CONTEXT, n)].unsqueeze(0))  # warm-up window (not timed)
        sync()
        nll_sum, scored, prev_end, k, windows = 0.0, 0, 0, 0, 0
        t0 = time.perf_counter()
        while True:
            begin = k * STRIDE
            end = min(begin + CONTEXT, n)
            logits = model(input_ids=all_ids[begin:end].unsqueeze(0)).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            first = max(prev_end, begin + 1)
            if first < end:
                pos = torch.arange(first - 1 - begin, end - 1 - begin, device=device)
                nll = -logp[pos, all_ids[first:end]]
                nll_sum += float(nll.double().sum().item())  # .item() synchronises each window
                scored += end - first
            windows += 1
            prev_end = end
            if end >= n:
                break
            k += 1
        sync()
        secs = time.perf_counter() - t0
    r = {
        "tool": "pytorch",
        "device": device,
        "dtype": dtype_name,
        "tokens": n,
        "windows": windows,
        "tokens_scored": scored,
        "nll_sum": nll_sum,
        "perplexity": math.exp(nll_sum / scored),
        "seconds": secs,
        "tokens_per_second": scored / secs,
        "load_seconds": load_s,
        "torch": torch.__version__,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
    }
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    log(f"[pytorch {device} {dtype_name}] {scored} tokens in {secs:.3f} s = {r['tokens_per_second']:.0f} tok/s, "
        f"ppl {r['perplexity']:.6f} (load {load_s:.2f} s)")
    return r


# --------------------------------------------------------------------------- main


def environment() -> None:
    env = {k: os.environ.get(k) for k in ("LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES")}
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                            "--format=csv,noheader"], capture_output=True, text=True)
        env["nvidia_smi"] = (q.stdout or q.stderr).strip()
    ldd = subprocess.run(["ldd", str(BIN)], capture_output=True, text=True)
    env["ldd_cuda"] = [ln.strip() for ln in ldd.stdout.splitlines()
                       if any(s in ln for s in ("cuda", "cublas", "curand", "nvrtc", "not found"))]
    report["environment"] = env
    missing = [ln for ln in env["ldd_cuda"] if "not found" in ln]
    if missing:
        fatal(f"{BIN} cannot start, shared libraries not found: {missing}")


def main() -> int:
    global MODEL
    if not BIN.exists():
        fatal(f"gpt-ablate binary not found at {BIN} (set GPT_ABLATE)")
    gpu = DEVICE  # "cuda" on the GPU machine, "cpu" for a dry run
    log(f"device check: binary {BIN}, device {gpu!r}, {TOKENS} tokens, {NPROC} CPU threads, out {OUT}")
    environment()

    WORKDIR.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    MODEL = WORKDIR / "model"
    bench.build_model(MODEL)
    text, text_info = bench.make_text(WORKDIR, TOKENS)
    half_text, _ = bench.make_text(WORKDIR, TOKENS // 2)
    warm_n = min(CONTEXT, TOKENS)
    warm_text = half_text if warm_n == TOKENS // 2 else bench.make_text(WORKDIR, warm_n)[0]
    prompt, _ = bench.make_prompt(WORKDIR, GEN_PROMPT_TOKENS)
    report["setup_seconds"] = time.perf_counter() - t0
    report["text_info"] = text_info
    save_report()

    # --- perplexity: gpt-ablate -------------------------------------------------------------
    ppl: dict = {}
    for dt in ("f32", "bf16"):
        ppl[f"gpu_{dt}_warmup"] = perplexity(gpu, dt, warm_text, f"gpt-ablate {gpu} {dt} warm-up")
    ppl["gpu_f32"] = perplexity(gpu, "f32", text, f"gpt-ablate {gpu} f32")
    ppl["gpu_bf16"] = perplexity(gpu, "bf16", text, f"gpt-ablate {gpu} bf16")
    ppl["gpu_f32_half"] = perplexity(gpu, "f32", half_text, f"gpt-ablate {gpu} f32 half text")
    ppl["gpu_bf16_half"] = perplexity(gpu, "bf16", half_text, f"gpt-ablate {gpu} bf16 half text")
    ppl["cpu_f32"] = perplexity("cpu", "f32", text, "gpt-ablate cpu f32")
    report["gpt_ablate_perplexity"] = ppl
    save_report()
    for dt in ("f32", "bf16"):
        full, half = ppl[f"gpu_{dt}"], ppl[f"gpu_{dt}_half"]
        dsec = full["seconds"] - half["seconds"]
        ppl[f"gpu_{dt}"]["marginal_tokens_per_second"] = (
            (full["tokens_scored"] - half["tokens_scored"]) / dsec if dsec > 0 else None)

    cpu, g32, g16 = ppl["cpu_f32"], ppl["gpu_f32"], ppl["gpu_bf16"]
    check("tokens_scored_equal", cpu["tokens_scored"] == g32["tokens_scored"] == g16["tokens_scored"],
          f"cpu {cpu['tokens_scored']}, {gpu} f32 {g32['tokens_scored']}, {gpu} bf16 {g16['tokens_scored']}")
    d32 = rel(g32["perplexity"], cpu["perplexity"])
    check("f32_perplexity_gpu_vs_cpu", d32 <= F32_TOL,
          f"{gpu} {g32['perplexity']:.8f} vs cpu {cpu['perplexity']:.8f}: rel diff {d32:.3e} (tolerance {F32_TOL:g})")
    d16 = rel(g16["perplexity"], cpu["perplexity"])
    check("bf16_perplexity_finite", math.isfinite(g16["perplexity"]),
          f"{gpu} bf16 {g16['perplexity']:.6f} vs cpu f32 {cpu['perplexity']:.6f}: rel diff {d16:.3e} (reported)")
    report["perplexity_rel_diff"] = {"gpu_f32_vs_cpu_f32": d32, "gpu_bf16_vs_cpu_f32": d16}

    # --- generation ---------------------------------------------------------------------------
    gen_gpu = generate(gpu, prompt, f"gpt-ablate generate {gpu} f32")
    gen_cpu = generate("cpu", prompt, "gpt-ablate generate cpu f32")
    report["generation"] = {"gpu": gen_gpu, "cpu": gen_cpu}
    a, b = gen_gpu["token_ids"], gen_cpu["token_ids"]
    agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    report["generation"]["matching_leading_tokens"] = agree
    check("greedy_token_ids_gpu_vs_cpu", a == b and len(a) == GEN_TOKENS,
          f"{len(a)} vs {len(b)} new tokens; identical: {a == b}"
          + ("" if a == b else f"; first difference at new token {agree}"))
    save_report()

    # --- PyTorch on the same device -------------------------------------------------------------
    torch_dev = "cuda" if gpu.startswith("cuda") else "cpu"
    # On a CPU dry run PyTorch's bf16 is left out: it crawls on CPUs without bf16 units (4 tok/s).
    torch_dtypes = ("f32", "bf16") if torch_dev == "cuda" else ("f32",)
    pt = {}
    for dt in torch_dtypes:
        pt[dt] = torch_score(text, torch_dev, dt)
    report["pytorch"] = pt
    if torch_dev != "cuda":
        report["pytorch_skipped"] = "bf16 (CPU dry run)"
    speed = {}
    for dt in torch_dtypes:
        g, t = ppl[f"gpu_{dt}"], pt[dt]
        speed[dt] = {
            "gpt_ablate_tokens_per_second": g["tokens_per_second"],
            "gpt_ablate_marginal_tokens_per_second": g.get("marginal_tokens_per_second"),
            "pytorch_tokens_per_second": t["tokens_per_second"],
            "ratio_gpt_ablate_over_pytorch": g["tokens_per_second"] / t["tokens_per_second"],
            "perplexity_rel_diff_vs_pytorch": rel(g["perplexity"], t["perplexity"]),
        }
        check(f"{dt}_perplexity_vs_pytorch", dt == "bf16" or speed[dt]["perplexity_rel_diff_vs_pytorch"] <= F32_TOL,
              f"gpt-ablate {g['perplexity']:.6f} vs pytorch {t['perplexity']:.6f}: rel diff "
              f"{speed[dt]['perplexity_rel_diff_vs_pytorch']:.3e}", fatal_check=False)
    report["speed"] = speed

    # --- summary --------------------------------------------------------------------------------
    print()
    print(f"perplexity, {TOKENS} WikiText tokens, context {CONTEXT}, stride {STRIDE} (device {gpu!r})")
    hdr = f"{'run':<26} {'scored':>7} {'seconds':>9} {'tok/s':>10} {'marginal':>10} {'perplexity':>16}"
    print(hdr)
    print("-" * len(hdr))
    rows = [("gpt-ablate cpu f32 (ref)", cpu), (f"gpt-ablate {gpu} f32", g32), (f"gpt-ablate {gpu} bf16", g16)]
    rows += [(f"pytorch {torch_dev} {dt}", pt[dt]) for dt in torch_dtypes]
    for name, r in rows:
        m = r.get("marginal_tokens_per_second")
        ms = f"{m:.0f}" if m else "-"
        print(f"{name:<26} {r['tokens_scored']:>7} {r['seconds']:>9.3f} {r['tokens_per_second']:>10.0f} {ms:>10} "
              f"{r['perplexity']:>16.8f}")
    for dt in torch_dtypes:
        s = speed[dt]
        print(f"{dt}: gpt-ablate / pytorch scored tokens/s = {s['ratio_gpt_ablate_over_pytorch']:.2f} "
              f"({s['gpt_ablate_tokens_per_second']:.0f} vs {s['pytorch_tokens_per_second']:.0f})")
    def tps(r: dict) -> str:
        v = r.get("generation_tokens_per_second")
        return f"{v:.1f}" if isinstance(v, (int, float)) else "?"

    print(f"generation ({GEN_TOKENS} greedy tokens, f32): {gpu} decode {tps(gen_gpu)} tok/s, "
          f"cpu decode {tps(gen_cpu)} tok/s; token ids identical: {a == b}")
    report["ok"] = not report["failures"]
    save_report()
    print(f"wrote {OUT / 'device_report.json'}")
    if report["failures"]:
        print(f"FAILED checks: {', '.join(report['failures'])}")
        return 1
    print("all agreement checks passed")
    return 0


MODEL = WORKDIR / "model"

if __name__ == "__main__":
    sys.exit(main())
