#!/usr/bin/env python3
"""Benchmark `gpt-ablate perplexity` and `gpt-ablate generate` against Hugging Face transformers on CPU.

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
6. Generation (on by default; ``--skip-generation`` leaves it out, ``--only-generation`` runs
   only this part): greedy decoding of 128 new tokens (``--gen-tokens``) after a 32-token prompt
   (``--gen-prompt-tokens``) on the same checkpoint, 2 threads, float32.  The prompt is the first
   32 WikiText tokens, decoded and written to ``<workdir>/gen-prompt-32.txt`` (checked to
   re-tokenize to exactly those 32 ids).

   * gpt-ablate: ``gpt-ablate generate --model DIR --prompt-file FILE --temperature 0
     --max-new-tokens 128 --ignore-eos --threads 2 --json`` (RAYON_NUM_THREADS=2 as well).  Its
     JSON gives prompt_seconds (prompt forward pass, i.e. time to the first new token),
     generation_seconds (the rest), its own tokens/s figures and token_ids.  End-to-end new
     tokens/s = generated_tokens / (prompt_seconds + generation_seconds).
   * transformers, in a child process: torch.set_num_threads(2), float32, model.eval(),
     torch.inference_mode(), one warm-up ``generate`` of 8 new tokens, then
     ``model.generate(ids, attention_mask=ones, do_sample=False, max_new_tokens=128,
     min_new_tokens=128, use_cache=True, pad_token_id=eos)`` timed end to end (perf_counter
     around the call); new tokens/s = 128 / seconds.
   * Prints a table, ``generation ratio (gpt-ablate / transformers new tokens/s)`` and the
     number of leading new tokens on which the two greedy sequences agree (random weights make
     near-ties possible, so a late divergence is numerics, an early one a bug).  Note
     min_new_tokens masks the end-of-text logit in transformers while ``--ignore-eos`` only
     keeps gpt-ablate going, so the sequences would also part if the argmax were ever
     end-of-text (reported).

Examples::

    cargo build --release
    python scripts/bench_vs_pytorch.py                 # 16384 tokens
    python scripts/bench_vs_pytorch.py --quick         # 4096 tokens, smoke run
    python scripts/bench_vs_pytorch.py --quick --skip-rust   # only the PyTorch half
    python scripts/bench_vs_pytorch.py --only-generation     # just the generation benchmark
    python scripts/bench_vs_pytorch.py --skip-generation     # just the perplexity benchmark
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


# --------------------------------------------------------------------------- generation


def make_prompt(workdir: Path, n_tokens: int) -> tuple[Path, list]:
    """The first n_tokens WikiText tokens, decoded; checked to re-tokenize to the same ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    with open(WIKITEXT, encoding="utf-8", newline="") as f:
        full = f.read()
    # a generous prefix of the text tokenizes the same as the whole file up to n_tokens ids
    want = tok.encode(full[: 64 * n_tokens + 1024], add_special_tokens=False).ids[:n_tokens]
    text = tok.decode(want, skip_special_tokens=False)
    got = tok.encode(text, add_special_tokens=False).ids
    if got != want:
        die(f"the decoded {n_tokens}-token prompt re-tokenizes to {len(got)} different ids: {got} vs {want}")
    path = workdir / f"gen-prompt-{n_tokens}.txt"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    log(f"wrote {path} ({len(text.encode('utf-8'))} bytes; re-tokenizes to exactly the first {n_tokens} "
        f"WikiText ids): {text!r}")
    return path, want


def run_rust_generate(binary: Path, model_dir: Path, prompt: Path, new_tokens: int) -> dict:
    cmd = [
        str(binary), "generate",
        "--model", str(model_dir),
        "--prompt-file", str(prompt),
        "--temperature", "0",
        "--max-new-tokens", str(new_tokens),
        "--ignore-eos",
        "--threads", str(THREADS),
        "--json",
    ]
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS))
    log("running: RAYON_NUM_THREADS=2 " + " ".join(cmd))
    r = run_measured(cmd, env)
    if r["rc"] != 0:
        sys.stderr.write(r["stderr"][-4000:])
        die(f"gpt-ablate generate exited with status {r['rc']}")
    try:
        j = parse_json_stdout(r["stdout"])
    except ValueError as e:
        sys.stderr.write(r["stdout"][-4000:])
        die(f"could not parse gpt-ablate generate output: {e}")
    for k in ("prompt_tokens", "generated_tokens", "prompt_seconds", "generation_seconds", "token_ids"):
        if k not in j:
            die(f"gpt-ablate generate JSON lacks {k!r}: {sorted(j)}")
    secs = float(j["prompt_seconds"]) + float(j["generation_seconds"])
    n = int(j["generated_tokens"])
    return {
        "tool": "gpt-ablate",
        "prompt_tokens": int(j["prompt_tokens"]),
        "new_tokens": n,
        "seconds": secs,
        "new_tokens_per_second": n / secs,
        "prompt_seconds": float(j["prompt_seconds"]),
        "generation_seconds": float(j["generation_seconds"]),
        "prompt_tokens_per_second": j.get("prompt_tokens_per_second"),
        "generation_tokens_per_second": j.get("generation_tokens_per_second"),
        "stop_reason": j.get("stop_reason"),
        "token_ids": [int(t) for t in j["token_ids"]],
        "wall_s": r["wall_s"],
        "peak_rss_kib": r["peak_rss_kib"],
    }


def run_torch_generate(model_dir: Path, prompt: Path, new_tokens: int, attn: str) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--_torch-gen-worker",
        "--_model", str(model_dir), "--_text", str(prompt),
        "--gen-tokens", str(new_tokens), "--attn-implementation", attn,
    ]
    log(f"running transformers generate (child process, {THREADS} threads, {attn} attention) ...")
    r = run_measured(cmd, dict(os.environ))
    if r["rc"] != 0:
        sys.stderr.write(r["stderr"][-4000:])
        die(f"transformers generate worker exited with status {r['rc']}")
    j = parse_json_stdout(r["stdout"])
    return {
        "tool": "transformers",
        "prompt_tokens": j["prompt_tokens"],
        "new_tokens": j["new_tokens"],
        "seconds": j["seconds"],
        "new_tokens_per_second": j["new_tokens"] / j["seconds"],
        "warmup_seconds": j["warmup_seconds"],
        "load_seconds": j["load_seconds"],
        "token_ids": j["token_ids"],
        "wall_s": r["wall_s"],
        "peak_rss_kib": r["peak_rss_kib"],
        "self_maxrss_kib": j["self_maxrss_kib"],
        "attn_implementation": attn,
    }


def torch_gen_worker(model_dir: str, prompt_path: str, new_tokens: int, attn: str) -> int:
    """Greedy generation with transformers, run as a child process; prints one JSON object."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(THREADS)
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    with open(prompt_path, encoding="utf-8", newline="") as f:
        ids = tok.encode(f.read(), add_special_tokens=False).ids

    t0 = time.perf_counter()
    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    load_s = time.perf_counter() - t0
    eos = model.config.eos_token_id
    pad = eos if eos is not None else 0
    x = torch.tensor([ids], dtype=torch.long)
    mask = torch.ones_like(x)

    def gen(n: int):
        return model.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                              use_cache=True, pad_token_id=pad)

    with torch.inference_mode():
        t0 = time.perf_counter()
        gen(8)  # warm-up
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = gen(new_tokens)
        secs = time.perf_counter() - t0
    new = out[0, len(ids):].tolist()
    assert out[0, : len(ids)].tolist() == ids
    print(json.dumps({
        "prompt_tokens": len(ids),
        "new_tokens": len(new),
        "seconds": secs,
        "warmup_seconds": warm_s,
        "load_seconds": load_s,
        "token_ids": new,
        "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }), flush=True)
    return 0


def bench_generation(a, binary: Path, model_dir: Path, eos_id) -> dict:
    prompt, prompt_ids = make_prompt(a.workdir, a.gen_prompt_tokens)
    results = []
    if not a.skip_rust:
        r = run_rust_generate(binary, model_dir, prompt, a.gen_tokens)
        results.append(r)
        log(f"  gpt-ablate: {r['new_tokens']} new tokens in {r['seconds']:.2f} s (prompt {r['prompt_seconds']:.3f} s "
            f"+ generation {r['generation_seconds']:.2f} s; wall {r['wall_s']:.2f} s)")
        if r["prompt_tokens"] != len(prompt_ids):
            die(f"gpt-ablate saw {r['prompt_tokens']} prompt tokens, expected {len(prompt_ids)}")
        if r["new_tokens"] != a.gen_tokens:
            die(f"gpt-ablate generated {r['new_tokens']} tokens (stop: {r['stop_reason']}), expected {a.gen_tokens}")
    t = run_torch_generate(model_dir, prompt, a.gen_tokens, a.attn_implementation)
    results.append(t)
    log(f"  transformers: {t['new_tokens']} new tokens in {t['seconds']:.2f} s (+{t['load_seconds']:.2f} s load, "
        f"{t['warmup_seconds']:.2f} s warm-up; wall {t['wall_s']:.2f} s)")

    print()
    print(f"generation: greedy, {a.gen_prompt_tokens}-token prompt, {a.gen_tokens} new tokens, f32, {THREADS} threads")
    hdr = f"{'tool':<13} {'new':>5} {'seconds':>8} {'new tok/s':>10} {'prompt s':>9} {'decode tok/s':>13} {'peak RSS MiB':>13}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        ps = f"{r['prompt_seconds']:.3f}" if "prompt_seconds" in r else "-"
        dt = f"{r['generation_tokens_per_second']:.1f}" if r.get("generation_tokens_per_second") else "-"
        print(f"{r['tool']:<13} {r['new_tokens']:>5} {r['seconds']:>8.2f} {r['new_tokens_per_second']:>10.2f} "
              f"{ps:>9} {dt:>13} {r['peak_rss_kib'] / 1024:>13.1f}")
    out = {
        "prompt_file": str(prompt),
        "prompt_tokens": len(prompt_ids),
        "prompt_ids": prompt_ids,
        "new_tokens": a.gen_tokens,
        "threads": THREADS,
        "results": results,
    }
    if not a.skip_rust:
        g = results[0]
        ratio = g["new_tokens_per_second"] / t["new_tokens_per_second"]
        match = 0
        for x, y in zip(g["token_ids"], t["token_ids"]):
            if x != y:
                break
            match += 1
        n = min(len(g["token_ids"]), len(t["token_ids"]))
        eos_in_rust = eos_id is not None and eos_id in g["token_ids"]
        print(f"generation ratio (gpt-ablate / transformers new tokens/s) = {ratio:.2f}")
        if match == n:
            print(f"greedy token ids: identical for all {n} new tokens")
        else:
            print(f"greedy token ids: the first {match} of {n} new tokens agree; first difference at new token "
                  f"{match}: gpt-ablate {g['token_ids'][match]} vs transformers {t['token_ids'][match]}")
        if eos_in_rust:
            print(f"note: gpt-ablate emitted end-of-text ({eos_id}), which min_new_tokens masks in transformers")
        out.update({"generation_ratio": ratio, "matching_leading_tokens": match, "compared_tokens": n,
                    "identical": match == n, "eos_in_gpt_ablate_output": eos_in_rust})
    return out


def bench_perplexity(a, binary: Path, model_dir: Path, weight_bytes: int, n_tokens: int) -> dict:
    """Steps 2-5 of the docstring; returns the figures for --json-out."""
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

    return {
        "tokens": n_tokens,
        "context": a.context,
        "stride": a.stride,
        "text": str(text),
        "text_info": text_info,
        "results": results,
        **summary,
    }



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
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--skip-generation", action="store_true", help="leave out the generation benchmark")
    g.add_argument("--only-generation", action="store_true", help="run only the generation benchmark")
    ap.add_argument("--gen-tokens", type=int, default=128, help="new tokens to generate (default 128)")
    ap.add_argument("--gen-prompt-tokens", type=int, default=32, help="prompt length in tokens (default 32)")
    ap.add_argument("--_torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_torch-gen-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_model", help=argparse.SUPPRESS)
    ap.add_argument("--_text", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a._torch_worker:
        return torch_worker(a._model, a._text, a.context, a.stride, a.attn_implementation)
    if a._torch_gen_worker:
        return torch_gen_worker(a._model, a._text, a.gen_tokens, a.attn_implementation)

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
    out = {
        "threads": THREADS,
        "weight_file_bytes": weight_bytes,
        "model_dir": str(model_dir),
        "loadavg_at_start": load1,
    }
    if not a.only_generation:
        out.update(bench_perplexity(a, binary, model_dir, weight_bytes, n_tokens))
    if not a.skip_generation:
        if not a.only_generation:
            print()
        eos_id = json.loads((model_dir / "config.json").read_text()).get("eos_token_id")
        out["generation"] = bench_generation(a, binary, model_dir, eos_id)

    if a.json_out:
        a.json_out.write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
