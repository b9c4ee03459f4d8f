#!/usr/bin/env python3
"""Benchmark `gpt-ablate perplexity` against Hugging Face transformers on CPU.

This is a benchmark, not a test: it prints figures, it does not assert on them (apart from
failing loudly when something cannot run).

What it does:

1. Work dir (default /tmp/gpt-ablate-bench, reused if present; outside the repo):
   ``model/`` is a GPT-2-small-shaped checkpoint: ``GPT2Config()`` defaults (12 layers, 768
   wide, 12 heads, 1024 positions, 50257 vocab, gelu_new, tied embeddings) with random init
   (torch.manual_seed(0)), written by ``save_pretrained`` (model.safetensors, ~498 MB), plus the
   repo's real GPT-2 tokenizer ``data/gpt2-tokenizer/tokenizer.json``.  Random weights are fine
   for a speed/memory comparison; both tools must still agree on the perplexity.
2. Text: the first N tokens (``--tokens``, default 16384; ``--quick`` = 4096) of
   ``data/wikitext-2-raw-test.txt``: the whole file is tokenized, ``ids[:N]`` decoded back to
   text and written to ``<workdir>/bench-<N>.txt``, then re-tokenized to check it is exactly N
   tokens (if not, characters are trimmed from the end until it is; what happened is printed).
3. Rust: ``gpt-ablate perplexity --model DIR --data TEXT --context 1024 --stride 512 --json``
   with ``RAYON_NUM_THREADS=2``, started with subprocess.Popen and reaped with os.wait4 to get
   its peak RSS (ru_maxrss).  Its JSON on stdout gives tokens_scored, perplexity, seconds,
   tokens_per_second; the wall time is measured here too.
4. PyTorch (after the Rust run, in a child process of this script so that its peak RSS is its
   own and comparable): transformers, torch.set_num_threads(2), float32, model.eval(),
   torch.inference_mode(), the same sliding windows with exact per-token scoring (float32
   log_softmax of all logits, NLLs summed in float64) as the gpt-ablate contract; only the
   scoring loop is timed (not the load).  The child also reports getrusage(RUSAGE_SELF)
   ru_maxrss, which includes the Python + torch runtime (~0.3-0.5 GB) besides the model.
5. Prints a table (tool, tokens scored, seconds, scored tokens/s, perplexity, peak RSS MiB),
   ``ratio (gpt-ablate / transformers tokens/s)`` and ``peak RSS / weight file`` (weight file =
   size of model.safetensors); ``--json-out FILE`` saves every figure.

Examples::

    cargo build --release
    python scripts/bench_vs_pytorch.py                 # 16384 tokens
    python scripts/bench_vs_pytorch.py --quick         # 4096 tokens, smoke run
    python scripts/bench_vs_pytorch.py --quick --skip-rust   # only the PyTorch half
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "data" / "gpt2-tokenizer" / "tokenizer.json"
WIKITEXT = REPO / "data" / "wikitext-2-raw-test.txt"
DEFAULT_BIN = REPO / "target" / "release" / "gpt-ablate"
THREADS = 2


def log(msg: str) -> None:
    print(msg, flush=True)


def die(msg: str) -> "None":
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


# --------------------------------------------------------------------------- setup


def build_model(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    if weights.exists() and (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists():
        log(f"reusing checkpoint {model_dir}")
        return
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    log(f"building GPT-2-small-shaped random checkpoint in {model_dir} (seed 0) ...")
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    torch.manual_seed(0)
    config = GPT2Config()
    model = GPT2LMHeadModel(config)
    model.eval()
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    shutil.copy(TOKENIZER, tmp / "tokenizer.json")
    shutil.rmtree(model_dir)
    tmp.rename(model_dir)  # only a complete checkpoint ends up under the final name


def make_text(workdir: Path, n_tokens: int) -> tuple[Path, dict]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    with open(WIKITEXT, encoding="utf-8", newline="") as f:
        full = f.read()
    all_ids = tok.encode(full, add_special_tokens=False).ids
    log(f"wikitext-2 raw test: {len(full.encode('utf-8'))} bytes, {len(all_ids)} GPT-2 tokens")
    if n_tokens > len(all_ids):
        die(f"--tokens {n_tokens} exceeds the {len(all_ids)} tokens of the corpus")

    def count(s: str) -> int:
        return len(tok.encode(s, add_special_tokens=False).ids)

    # decode a prefix; if re-tokenizing gives fewer than N tokens, decode a few more ids first
    extra = 0
    text = tok.decode(all_ids[:n_tokens], skip_special_tokens=False)
    while count(text) < n_tokens and n_tokens + extra < len(all_ids):
        extra += 1
        text = tok.decode(all_ids[: n_tokens + extra], skip_special_tokens=False)
    c = count(text)
    trimmed = 0
    while c > n_tokens:
        text = text[:-1]
        trimmed += 1
        c = count(text)
    ids = tok.encode(text, add_special_tokens=False).ids
    info = {
        "n_tokens": len(ids),
        "bytes": len(text.encode("utf-8")),
        "extra_ids_decoded": extra,
        "chars_trimmed": trimmed,
        "ids_equal_corpus_prefix": ids == all_ids[: len(ids)],
        "corpus_tokens": len(all_ids),
    }
    if extra or trimmed:
        log(f"text adjusted: decoded {extra} extra ids, trimmed {trimmed} trailing chars -> {len(ids)} tokens")
    else:
        log(f"decode(ids[:{n_tokens}]) re-tokenizes to exactly {len(ids)} tokens")
    if len(ids) != n_tokens:
        die(f"could not make a text of exactly {n_tokens} tokens (got {len(ids)})")
    path = workdir / f"bench-{n_tokens}.txt"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    log(f"wrote {path} ({info['bytes']} bytes, {n_tokens} tokens, same ids as corpus prefix: {info['ids_equal_corpus_prefix']})")
    return path, info


# --------------------------------------------------------------------------- child processes


def run_measured(cmd: list, env: dict) -> dict:
    """Run cmd, capture stdout/stderr, reap with os.wait4; return rc, wall, peak RSS, output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # already reaped; keep Popen quiet
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    return {
        "rc": p.returncode,
        "wall_s": wall,
        "peak_rss_kib": ru.ru_maxrss,  # Linux: KiB
        "stdout": stdout,
        "stderr": stderr,
    }


def parse_json_stdout(stdout: str) -> dict:
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        pass
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object found on stdout")


def run_rust(binary: Path, model_dir: Path, text: Path, context: int, stride: int) -> dict:
    if not binary.exists():
        die(
            f"gpt-ablate binary not found at {binary}\n"
            f"  build it first:  cargo build --release   (or pass --bin PATH, or --skip-rust)"
        )
    if not os.access(binary, os.X_OK):
        die(f"{binary} is not executable")
    cmd = [
        str(binary), "perplexity",
        "--model", str(model_dir),
        "--data", str(text),
        "--context", str(context),
        "--stride", str(stride),
        "--json",
    ]
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS))
    log("running: RAYON_NUM_THREADS=2 " + " ".join(cmd))
    r = run_measured(cmd, env)
    if r["rc"] != 0:
        sys.stderr.write(r["stderr"][-4000:])
        die(f"gpt-ablate exited with status {r['rc']}")
    try:
        j = parse_json_stdout(r["stdout"])
    except ValueError as e:
        sys.stderr.write(r["stdout"][-4000:])
        die(f"could not parse gpt-ablate output: {e}")
    for k in ("tokens_scored", "perplexity", "seconds"):
        if k not in j:
            die(f"gpt-ablate JSON lacks {k!r}: {j}")
    tps = j.get("tokens_per_second") or j["tokens_scored"] / j["seconds"]
    return {
        "tool": "gpt-ablate",
        "tokens_scored": int(j["tokens_scored"]),
        "seconds": float(j["seconds"]),
        "tokens_per_second": float(tps),
        "perplexity": float(j["perplexity"]),
        "wall_s": r["wall_s"],
        "peak_rss_kib": r["peak_rss_kib"],
        "raw": j,
    }


def run_torch(model_dir: Path, text: Path, context: int, stride: int, attn: str) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--_torch-worker",
        "--_model", str(model_dir), "--_text", str(text),
        "--context", str(context), "--stride", str(stride), "--attn-implementation", attn,
    ]
    log(f"running transformers (child process, {THREADS} threads, {attn} attention) ...")
    r = run_measured(cmd, dict(os.environ))
    if r["rc"] != 0:
        sys.stderr.write(r["stderr"][-4000:])
        die(f"transformers worker exited with status {r['rc']}")
    j = parse_json_stdout(r["stdout"])
    return {
        "tool": "transformers",
        "tokens_scored": j["tokens_scored"],
        "seconds": j["seconds"],
        "tokens_per_second": j["tokens_scored"] / j["seconds"],
        "perplexity": j["perplexity"],
        "nll_sum": j["nll_sum"],
        "load_seconds": j["load_seconds"],
        "wall_s": r["wall_s"],
        "peak_rss_kib": r["peak_rss_kib"],
        "self_maxrss_kib": j["self_maxrss_kib"],
        "attn_implementation": attn,
    }


def torch_worker(model_dir: str, text_path: str, context: int, stride: int, attn: str) -> int:
    """The PyTorch half, run as a child process; prints one JSON object on stdout."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(THREADS)
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    with open(text_path, encoding="utf-8", newline="") as f:
        ids = tok.encode(f.read(), add_special_tokens=False).ids
    n = len(ids)

    t0 = time.perf_counter()
    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    load_s = time.perf_counter() - t0

    all_ids = torch.tensor(ids, dtype=torch.long)
    nll_sum = 0.0
    scored = 0
    prev_end = 0
    k = 0
    windows = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        while True:
            begin = k * stride
            end = min(begin + context, n)
            input_ids = all_ids[begin:end].unsqueeze(0)
            logits = model(input_ids=input_ids).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            first = max(prev_end, begin + 1)
            if first < end:
                pos = torch.arange(first - 1 - begin, end - 1 - begin)
                nll = -logp[pos, all_ids[first:end]]
                nll_sum += float(nll.double().sum().item())
                scored += end - first
            windows += 1
            prev_end = end
            if end >= n:
                break
            k += 1
    secs = time.perf_counter() - t0
    mean = nll_sum / scored
    out = {
        "tokens": n,
        "windows": windows,
        "tokens_scored": scored,
        "nll_sum": nll_sum,
        "mean_nll": mean,
        "perplexity": math.exp(mean),
        "seconds": secs,
        "load_seconds": load_s,
        "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN, help=f"gpt-ablate binary (default {DEFAULT_BIN})")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gpt-ablate-bench"))
    ap.add_argument("--tokens", type=int, default=16384, help="number of WikiText tokens (default 16384)")
    ap.add_argument("--quick", action="store_true", help="use 4096 tokens (smoke run)")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"],
                    help="transformers attention kernel (default sdpa, transformers' own default)")
    ap.add_argument("--skip-rust", action="store_true", help="only run the transformers half")
    ap.add_argument("--json-out", type=Path, help="save all figures to this JSON file")
    ap.add_argument("--_torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_model", help=argparse.SUPPRESS)
    ap.add_argument("--_text", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a._torch_worker:
        return torch_worker(a._model, a._text, a.context, a.stride, a.attn_implementation)

    n_tokens = 4096 if a.quick else a.tokens
    if not 0 < a.stride <= a.context:
        die("need 0 < stride <= context")
    for p in (TOKENIZER, WIKITEXT):
        if not p.exists():
            die(f"{p} is missing (it is part of the repository)")
    binary = a.bin if a.bin.is_absolute() else (Path.cwd() / a.bin)
    if not a.skip_rust and not binary.exists():  # fail before the slow setup
        die(
            f"gpt-ablate binary not found at {binary}\n"
            f"  build it first:  cargo build --release   (or pass --bin PATH, or --skip-rust)"
        )

    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        log(f"WARNING: 1-minute load average is {load1:.2f}; other work on this machine will skew the timings")
    a.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = a.workdir / "model"
    build_model(model_dir)
    weight_bytes = (model_dir / "model.safetensors").stat().st_size
    text, text_info = make_text(a.workdir, n_tokens)

    results = []
    if not a.skip_rust:
        results.append(run_rust(binary, model_dir, text, a.context, a.stride))
        r = results[-1]
        log(f"  gpt-ablate: {r['tokens_scored']} tokens in {r['seconds']:.2f} s (wall {r['wall_s']:.2f} s), "
            f"ppl {r['perplexity']:.4f}")
    results.append(run_torch(model_dir, text, a.context, a.stride, a.attn_implementation))
    r = results[-1]
    log(f"  transformers: {r['tokens_scored']} tokens in {r['seconds']:.2f} s (+{r['load_seconds']:.2f} s load, "
        f"wall {r['wall_s']:.2f} s), ppl {r['perplexity']:.4f}")

    mib = 1024.0
    print()
    print(f"model: GPT-2-small shape, random init; weights {weight_bytes / 2**20:.1f} MiB; "
          f"{n_tokens} tokens; context {a.context}, stride {a.stride}; {THREADS} threads")
    hdr = f"{'tool':<13} {'scored':>7} {'seconds':>8} {'tok/s':>9} {'perplexity':>14} {'peak RSS MiB':>13} {'wall s':>7}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(f"{r['tool']:<13} {r['tokens_scored']:>7} {r['seconds']:>8.2f} {r['tokens_per_second']:>9.1f} "
              f"{r['perplexity']:>14.6f} {r['peak_rss_kib'] / mib:>13.1f} {r['wall_s']:>7.2f}")
    summary = {}
    t = results[-1]
    print(f"(transformers child getrusage(RUSAGE_SELF).ru_maxrss = {t['self_maxrss_kib'] / mib:.1f} MiB, "
          f"includes the Python/torch runtime; its seconds exclude the {t['load_seconds']:.2f} s load)")
    if not a.skip_rust:
        g = results[0]
        ratio = g["tokens_per_second"] / t["tokens_per_second"]
        rss_ratio = g["peak_rss_kib"] * 1024 / weight_bytes
        rel = abs(g["perplexity"] - t["perplexity"]) / t["perplexity"]
        summary = {"speed_ratio": ratio, "rss_over_weights": rss_ratio, "ppl_rel_diff": rel}
        if g["tokens_scored"] != t["tokens_scored"]:
            print(f"WARNING: tokens scored differ ({g['tokens_scored']} vs {t['tokens_scored']})")
        print(f"ratio (gpt-ablate / transformers tokens/s) = {ratio:.2f}")
        print(f"peak RSS / weight file = {rss_ratio:.2f}   (gpt-ablate; transformers: "
              f"{t['peak_rss_kib'] * 1024 / weight_bytes:.2f})")
        print(f"perplexity relative difference = {rel:.2e}")
    else:
        print(f"peak RSS / weight file (transformers) = {t['peak_rss_kib'] * 1024 / weight_bytes:.2f}")

    if a.json_out:
        out = {
            "tokens": n_tokens,
            "context": a.context,
            "stride": a.stride,
            "threads": THREADS,
            "weight_file_bytes": weight_bytes,
            "model_dir": str(model_dir),
            "text": str(text),
            "text_info": text_info,
            "loadavg_at_start": load1,
            "results": results,
            **summary,
        }
        a.json_out.write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
