#!/usr/bin/env python3
"""Benchmark `gpt-ablate perplexity` and `gpt-ablate generate` against Hugging Face transformers on CPU.

This is a benchmark, not a test: it prints figures, it does not assert on them (apart from
failing loudly when something cannot run).

One run covers every (architecture, dtype) pair asked for (``--arch gpt2,neox,opt,llama`` or
``all``; ``--dtype f32,bf16,f16`` or ``all``) and ends with one table: perplexity and
generation speed of both tools, their ratios, time to first token and per-token latency, peak
RSS against the weight file, agreement of the results, and the CPU features each tool ran with.

What it does:

1. Work dir (default /tmp/gpt-ablate-bench, reused if present; outside the repo): one
   checkpoint per architecture and dtype, ``models/<arch>-<dtype>/``, with random weights
   (torch.manual_seed(0), the family's own config defaults apart from the shape below) written
   by ``save_pretrained`` in that dtype, plus the repo's real GPT-2 tokenizer
   ``data/gpt2-tokenizer/tokenizer.json``. Every architecture gets that tokenizer and
   ``vocab_size = 50257`` (the tokenizer's), so the LM heads are alike and every token id is
   in range. Shapes:

   * ``gpt2``: ``GPT2Config()`` — GPT-2 small (12 × 768, 12 heads, 1024 positions, gelu_new,
     tied head), ~498 MB in f32.
   * ``neox``: Pythia-160m (12 × 768, 12 heads, MLP 3072, rotary on 25 % of each head,
     parallel residual, untied head, 2048 positions).
   * ``opt``: OPT-125m (12 × 768, 12 heads, MLP 3072, ReLU, pre-LN, tied head, learned
     positions with OPT's offset).
   * ``llama``: SmolLM-135M (30 × 576, 9 query / 3 key-value heads, gated SiLU MLP 1536,
     RMSNorm, RoPE θ = 10000, tied head).

   Random weights are fine for a speed/memory comparison; both tools must still agree on the
   perplexity (and, up to numerical near-ties, on the greedy tokens).
2. Text: the first N tokens (``--tokens``, default 16384; ``--quick`` = 4096) of
   ``data/wikitext-2-raw-test.txt``: the whole file is tokenized, ``ids[:N]`` decoded back to
   text and written to ``<workdir>/bench-<N>.txt``, then re-tokenized to check it is exactly N
   tokens (if not, characters are trimmed from the end until it is; what happened is printed).
3. Perplexity, gpt-ablate: ``gpt-ablate perplexity --model DIR --data TEXT --context 1024
   --stride 512 --dtype D --threads 2 --json`` with ``RAYON_NUM_THREADS=2``, started with
   subprocess.Popen and reaped with os.wait4 to get its peak RSS (ru_maxrss). Its JSON on
   stdout gives tokens_scored, perplexity and the scoring seconds.
4. Perplexity, transformers (in a child process of this script so that its peak RSS is its own
   and comparable): ``AutoModelForCausalLM.from_pretrained(DIR, dtype=D)``,
   torch.set_num_threads(2), model.eval(), torch.inference_mode(), the same sliding windows
   with exact per-token scoring (float32 log_softmax of all logits, NLLs summed in float64) as
   the gpt-ablate contract; only the scoring loop is timed (not the load). Its peak RSS
   includes the Python + torch runtime (~0.3-0.5 GB) besides the model.
5. Generation (``--skip-generation`` leaves it out, ``--only-generation`` runs only this):
   greedy decoding of 128 new tokens (``--gen-tokens``; ``--quick`` = 64) after a 32-token
   prompt (``--gen-prompt-tokens``, the first WikiText tokens), 2 threads, dtype D.

   * gpt-ablate: ``gpt-ablate generate --model DIR --prompt-file FILE --temperature 0
     --max-new-tokens 128 --ignore-eos --dtype D --threads 2 --json``. prompt_seconds is the
     time to the first new token; per-token latency = generation_seconds / (new − 1).
   * transformers: one warm-up ``generate`` of 8 new tokens, then one of 1 new token (its time
     is the time to first token), then ``model.generate(ids, attention_mask=ones,
     do_sample=False, max_new_tokens=128, min_new_tokens=128, use_cache=True)`` timed end to
     end; per-token latency = (that − time to first token) / (new − 1).
   * Each tool generates ``--gen-repeats`` times (default 3; a run takes seconds, so one run
     is noisy on a shared machine) and the run with the median speed is reported.
   * New tokens/s = new tokens / end-to-end seconds for both; the number of leading new tokens
     on which the two greedy sequences agree is reported (random weights make near-ties
     possible, so a late divergence is numerics, an early one a bug).
6. The CPU: the /proc/cpuinfo flags that matter (avx2, fma, f16c, avx512f, avx512_bf16,
   avx512_fp16, amx), torch's ``get_cpu_capability()``, and the kernel path gpt-ablate chose
   (``GPT_ABLATE_LOG_KERNELS=1`` makes it name the path on stderr). ``GPT_ABLATE_KERNELS=avx2``
   (or ``portable``) in the environment caps gpt-ablate's kernels, to measure the paths a
   machine without AVX-512 would take.

7. f16: torch's CPU f16 matmul is unusably slow on most CPUs (0.9 GFLOPS here against 415 in
   bf16), so a transformers f16 run would take hours. ``--torch-f16 auto`` (the default) probes
   one product in each dtype and leaves transformers out of the f16 rows when f16 is over 20×
   slower than bf16, saying so; f16 rows always also give gpt-ablate's speed against its own
   f32 ("vs own f32": the issue's target is f16 no slower than f32), scoring against an f32 run
   made right after the f16 one (the f32 row's run is minutes away, and on a shared host the
   speed drifts by more than the difference measured). ``--torch-f16 run`` forces it.

``--json-out FILE`` saves every figure.

Examples::

    cargo build --release
    python scripts/bench_vs_pytorch.py                          # gpt2, f32, 16384 tokens
    python scripts/bench_vs_pytorch.py --arch all --dtype all   # the whole table (long)
    python scripts/bench_vs_pytorch.py --quick --arch llama --dtype bf16
    python scripts/bench_vs_pytorch.py --only-generation --dtype f32,bf16
"""

from __future__ import annotations

import argparse
import gc
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
VOCAB = 50257
ARCHES = ["gpt2", "neox", "opt", "llama"]
DTYPES = ["f32", "bf16", "f16"]
SHAPES = {
    "gpt2": "GPT-2 small",
    "neox": "Pythia-160m",
    "opt": "OPT-125m",
    "llama": "SmolLM-135M",
}
CPU_FLAGS = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_bf16"]


def log(msg: str) -> None:
    print(msg, flush=True)


def die(msg: str) -> "None":
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


# --------------------------------------------------------------------------- setup


def make_config(arch: str):
    """The family's config class with its own defaults, shaped like the model it stands for."""
    import transformers as tf

    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB)
    if arch == "neox":
        return tf.GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=2048, rotary_pct=0.25,
            rotary_emb_base=10000, use_parallel_residual=True, tie_word_embeddings=False,
            bos_token_id=0, eos_token_id=0,
        )
    if arch == "opt":
        return tf.OPTConfig(
            vocab_size=VOCAB, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            ffn_dim=3072, max_position_embeddings=2048, word_embed_proj_dim=768,
            do_layer_norm_before=True, bos_token_id=2, eos_token_id=2, pad_token_id=1,
        )
    if arch == "llama":
        return tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2,
        )
    die(f"unknown arch {arch!r}")


def model_dir_for(workdir: Path, arch: str, dtype: str) -> Path:
    return workdir / "models" / f"{arch}-{dtype}"


def build_models(workdir: Path, arch: str, dtypes: list) -> None:
    """One seeded random model per arch, saved once per dtype (cast from f32)."""
    missing = [d for d in dtypes if not (model_dir_for(workdir, arch, d) / "model.safetensors").exists()]
    for d in dtypes:
        if d not in missing:
            log(f"reusing checkpoint {model_dir_for(workdir, arch, d)}")
    if not missing:
        return
    import torch
    from transformers import AutoModelForCausalLM

    log(f"building {SHAPES[arch]}-shaped random {arch} checkpoint(s) {missing} (seed 0) ...")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_config(arch), dtype=torch.float32)
    model.eval()
    for d in missing:
        target = model_dir_for(workdir, arch, d)
        tmp = target.with_name(target.name + ".tmp")
        for p in (tmp, target):
            if p.exists():
                shutil.rmtree(p)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        model.to(torch_dtype(d)).save_pretrained(str(tmp))
        model.to(torch.float32)
        shutil.copy(TOKENIZER, tmp / "tokenizer.json")
        tmp.rename(target)  # only a complete checkpoint ends up under the final name
    del model
    gc.collect()


def torch_dtype(name: str):
    import torch

    return {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[name]


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
    }
    if len(ids) != n_tokens:
        die(f"could not make a text of exactly {n_tokens} tokens (got {len(ids)})")
    path = workdir / f"bench-{n_tokens}.txt"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    log(f"wrote {path} ({info['bytes']} bytes, {n_tokens} tokens, same ids as corpus prefix: "
        f"{info['ids_equal_corpus_prefix']}; {extra} extra ids decoded, {trimmed} chars trimmed)")
    return path, info


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
        die(f"the decoded {n_tokens}-token prompt re-tokenizes to {len(got)} different ids")
    path = workdir / f"gen-prompt-{n_tokens}.txt"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path, want


def cpu_flags() -> list:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [fl for fl in CPU_FLAGS if fl in have]
    except OSError:
        pass
    return []


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
    return {"rc": p.returncode, "wall_s": wall, "peak_rss_kib": ru.ru_maxrss, "stdout": stdout, "stderr": stderr}


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


def kernel_path(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.startswith("gpt-ablate kernels:"):
            return line.split(":", 1)[1].strip()
    return "?"


def run_rust_cmd(what: str, cmd: list) -> tuple[dict, dict]:
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS), GPT_ABLATE_LOG_KERNELS="1")
    log("  running: " + " ".join(cmd))
    r = run_measured(cmd, env)
    if r["rc"] != 0:
        sys.stderr.write(r["stderr"][-4000:])
        die(f"gpt-ablate {what} exited with status {r['rc']}")
    try:
        return r, parse_json_stdout(r["stdout"])
    except ValueError as e:
        sys.stderr.write(r["stdout"][-4000:])
        die(f"could not parse gpt-ablate {what} output: {e}")


def run_rust_ppl(binary: Path, model_dir: Path, text: Path, a, dtype: str) -> dict:
    cmd = [str(binary), "perplexity", "--model", str(model_dir), "--data", str(text),
           "--context", str(a.context), "--stride", str(a.stride), "--dtype", dtype,
           "--threads", str(THREADS), "--json"]
    r, j = run_rust_cmd("perplexity", cmd)
    return {
        "tokens_scored": int(j["tokens_scored"]),
        "seconds": float(j["seconds"]),
        "tokens_per_second": int(j["tokens_scored"]) / float(j["seconds"]),
        "perplexity": float(j["perplexity"]),
        "load_seconds": j.get("load_seconds"),
        "wall_s": r["wall_s"],
        "peak_rss_kib": r["peak_rss_kib"],
        "kernels": kernel_path(r["stderr"]),
    }


def run_rust_gen(binary: Path, model_dir: Path, prompt: Path, new_tokens: int, dtype: str) -> dict:
    cmd = [str(binary), "generate", "--model", str(model_dir), "--prompt-file", str(prompt),
           "--temperature", "0", "--max-new-tokens", str(new_tokens), "--ignore-eos",
           "--dtype", dtype, "--threads", str(THREADS), "--json"]
    r, j = run_rust_cmd("generate", cmd)
    n = int(j["generated_tokens"])
    ttft, rest = float(j["prompt_seconds"]), float(j["generation_seconds"])
    return {
        "new_tokens": n,
        "seconds": ttft + rest,
        "new_tokens_per_second": n / (ttft + rest),
        "ttft_s": ttft,
        "per_token_ms": 1e3 * rest / max(n - 1, 1),
        "token_ids": [int(t) for t in j["token_ids"]],
        "stop_reason": j.get("stop_reason"),
        "wall_s": r["wall_s"],
        "peak_rss_kib": r["peak_rss_kib"],
        "kernels": kernel_path(r["stderr"]),
    }


def run_torch_child(flag: str, model_dir: Path, data: Path, a, dtype: str, extra: list) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), flag, "--_model", str(model_dir),
           "--_text", str(data), "--dtype", dtype, "--attn-implementation", a.attn_implementation,
           *extra]
    log(f"  running transformers ({flag.strip('-_')}, child process, {THREADS} threads, {dtype}) ...")
    r = run_measured(cmd, dict(os.environ))
    if r["rc"] != 0:
        sys.stderr.write(r["stderr"][-4000:])
        die(f"transformers worker exited with status {r['rc']}")
    j = parse_json_stdout(r["stdout"])
    j.update({"wall_s": r["wall_s"], "peak_rss_kib": r["peak_rss_kib"]})
    return j


def load_torch_model(model_dir: str, dtype: str, attn: str):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(dtype), attn_implementation=attn)
    model.eval()
    return model, time.perf_counter() - t0


def read_ids(model_dir: str, text_path: str) -> list:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    with open(text_path, encoding="utf-8", newline="") as f:
        return tok.encode(f.read(), add_special_tokens=False).ids


def torch_ppl_worker(a) -> int:
    """Sliding-window perplexity with transformers; prints one JSON object on stdout."""
    import torch

    ids = read_ids(a._model, a._text)
    model, load_s = load_torch_model(a._model, a.dtype, a.attn_implementation)
    n, context, stride = len(ids), a.context, a.stride
    all_ids = torch.tensor(ids, dtype=torch.long)
    nll_sum, scored, prev_end, k = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        while True:
            begin = k * stride
            end = min(begin + context, n)
            logits = model(input_ids=all_ids[begin:end].unsqueeze(0)).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            first = max(prev_end, begin + 1)
            if first < end:
                pos = torch.arange(first - 1 - begin, end - 1 - begin)
                nll_sum += float((-logp[pos, all_ids[first:end]]).double().sum().item())
                scored += end - first
            prev_end = end
            if end >= n:
                break
            k += 1
    secs = time.perf_counter() - t0
    print(json.dumps({
        "tokens_scored": scored,
        "seconds": secs,
        "tokens_per_second": scored / secs,
        "perplexity": math.exp(nll_sum / scored),
        "load_seconds": load_s,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }), flush=True)
    return 0


def torch_gen_worker(a) -> int:
    """Greedy generation with transformers; prints one JSON object on stdout."""
    import torch

    ids = read_ids(a._model, a._text)
    model, load_s = load_torch_model(a._model, a.dtype, a.attn_implementation)
    eos = model.config.eos_token_id
    pad = eos if isinstance(eos, int) else 0
    x = torch.tensor([ids], dtype=torch.long)
    mask = torch.ones_like(x)

    def gen(n: int):
        t0 = time.perf_counter()
        out = model.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                             use_cache=True, pad_token_id=pad)
        return out, time.perf_counter() - t0

    with torch.inference_mode():
        gen(8)  # warm-up
        _, ttft = gen(1)
        out, secs = gen(a.gen_tokens)
    new = out[0, len(ids):].tolist()
    assert out[0, : len(ids)].tolist() == ids
    print(json.dumps({
        "new_tokens": len(new),
        "seconds": secs,
        "new_tokens_per_second": len(new) / secs,
        "ttft_s": ttft,
        "per_token_ms": 1e3 * max(secs - ttft, 0.0) / max(len(new) - 1, 1),
        "load_seconds": load_s,
        "token_ids": new,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }), flush=True)
    return 0


# --------------------------------------------------------------------------- one configuration


def bench_one(a, binary: Path, arch: str, dtype: str, text: Path, prompt: Path) -> dict:
    model_dir = model_dir_for(a.workdir, arch, dtype)
    weight_bytes = (model_dir / "model.safetensors").stat().st_size
    log(f"\n== {arch} ({SHAPES[arch]} shape), {dtype}: weights {weight_bytes / 2**20:.1f} MiB")
    res = {"arch": arch, "dtype": dtype, "weight_file_bytes": weight_bytes}
    skip_torch = a.torch_skip.get(dtype)
    if skip_torch:
        res["transformers_skipped"] = skip_torch
    if not a.only_generation:
        g = run_rust_ppl(binary, model_dir, text, a, dtype)
        f32_dir = model_dir_for(a.workdir, arch, "f32")
        if dtype == "f16" and f32_dir.exists():
            own = run_rust_ppl(binary, f32_dir, text, a, "f32")["tokens_per_second"]
            g["own_f32_back_to_back"] = own
            log(f"  own f32 right after: {own:.1f} tok/s (f16 / f32 = {g['tokens_per_second'] / own:.2f})")
        if skip_torch:
            res["ppl"] = {"gpt_ablate": g, "transformers": None, "ratio": None, "ppl_rel_diff": None}
            log(f"  perplexity: gpt-ablate {g['tokens_per_second']:.1f} tok/s (ppl {g['perplexity']:.6g}); "
                f"transformers skipped ({skip_torch})")
        else:
            t = run_torch_child("--_torch-worker", model_dir, text, a, dtype,
                                ["--context", str(a.context), "--stride", str(a.stride)])
    if not a.only_generation and not skip_torch:
        if g["tokens_scored"] != t["tokens_scored"]:
            log(f"  WARNING: tokens scored differ ({g['tokens_scored']} vs {t['tokens_scored']})")
        res["ppl"] = {
            "gpt_ablate": g, "transformers": t,
            "ratio": g["tokens_per_second"] / t["tokens_per_second"],
            "ppl_rel_diff": abs(g["perplexity"] - t["perplexity"]) / t["perplexity"],
        }
        log(f"  perplexity: gpt-ablate {g['tokens_per_second']:.1f} tok/s (ppl {g['perplexity']:.6g}), "
            f"transformers {t['tokens_per_second']:.1f} tok/s (ppl {t['perplexity']:.6g}): "
            f"ratio {res['ppl']['ratio']:.2f}")
    if not a.skip_generation:
        g = median_run([run_rust_gen(binary, model_dir, prompt, a.gen_tokens, dtype)
                        for _ in range(a.gen_repeats)])
        if skip_torch:
            res["gen"] = {"gpt_ablate": g, "transformers": None, "ratio": None,
                          "matching_leading_tokens": None, "compared_tokens": None}
            log(f"  generation: gpt-ablate {g['new_tokens_per_second']:.1f} new tok/s; transformers skipped")
            return res
        t = median_run([run_torch_child("--_torch-gen-worker", model_dir, prompt, a, dtype,
                                        ["--gen-tokens", str(a.gen_tokens)])
                        for _ in range(a.gen_repeats)])
        match = 0
        for x, y in zip(g["token_ids"], t["token_ids"]):
            if x != y:
                break
            match += 1
        res["gen"] = {
            "gpt_ablate": g, "transformers": t,
            "ratio": g["new_tokens_per_second"] / t["new_tokens_per_second"],
            "matching_leading_tokens": match,
            "compared_tokens": min(len(g["token_ids"]), len(t["token_ids"])),
        }
        log(f"  generation: gpt-ablate {g['new_tokens_per_second']:.1f} new tok/s, transformers "
            f"{t['new_tokens_per_second']:.1f}: ratio {res['gen']['ratio']:.2f}; "
            f"greedy ids agree on {match}/{res['gen']['compared_tokens']}")
    return res


def median_run(runs: list) -> dict:
    """The run with the median new tokens/s (generation takes seconds, so single runs are
    noisy on a shared machine); its peak RSS is the largest of all runs, and every run's
    speed is kept under "all_new_tokens_per_second"."""
    ranked = sorted(runs, key=lambda r: r["new_tokens_per_second"])
    mid = dict(ranked[len(ranked) // 2])
    mid["peak_rss_kib"] = max(r["peak_rss_kib"] for r in runs)
    mid["all_new_tokens_per_second"] = [r["new_tokens_per_second"] for r in runs]
    return mid


def fmt(d, key: str, spec: str, scale: float = 1.0) -> str:
    """d[key] × scale formatted, or "-" when there is no such figure (transformers skipped)."""
    v = (d or {}).get(key)
    return "-" if v is None else format(v * scale, spec)


TORCH_F16_PROBE = """
import json, time, torch
torch.set_num_threads(%d)
rates = {}
for name, dt in (("bf16", torch.bfloat16), ("f16", torch.float16)):
    x, w = torch.randn(256, 768, dtype=dt), torch.randn(768, 768, dtype=dt)
    x @ w
    t0 = time.perf_counter()
    x @ w
    rates[name] = 2 * 256 * 768 * 768 / (time.perf_counter() - t0) / 1e9
print(json.dumps(rates))
"""


def torch_f16_probe() -> tuple:
    """GFLOPS of one 256×768 · 768×768 product in torch, bf16 and f16, on the benchmark's
    threads — in a child process: torch imported here would swell this process, and a child
    forked from it starts with that resident memory in its ru_maxrss."""
    out = subprocess.run([sys.executable, "-c", TORCH_F16_PROBE % THREADS], check=True,
                         capture_output=True, text=True).stdout
    rates = json.loads(out)
    return rates["bf16"], rates["f16"]


def decide_torch_skips(a, dtypes: list) -> dict:
    """Which dtypes transformers is left out for, and why (only f16, where torch's CPU matmul
    can be hundreds of times slower than bf16: a run would take hours)."""
    skips = {}
    if "f16" in dtypes and a.torch_f16 != "run":
        bf, f16 = torch_f16_probe()
        log(f"torch CPU matmul: bf16 {bf:.1f} GFLOPS, f16 {f16:.2f} GFLOPS")
        if a.torch_f16 == "skip" or f16 * 20 < bf:
            skips["f16"] = (f"torch's CPU f16 matmul runs at {f16:.2f} GFLOPS here, {bf / f16:.0f}x slower than "
                            f"bf16; --torch-f16 run measures it anyway")
    return skips


def print_table(a, results: list, n_tokens: int) -> None:
    print()
    print(f"perplexity: {n_tokens} WikiText tokens, context {a.context}, stride {a.stride}; generation: greedy, "
          f"{a.gen_prompt_tokens}-token prompt, {a.gen_tokens} new tokens; {THREADS} threads; random weights")
    rows = []
    for r in results:
        ga_rss, tf_rss, wb = None, None, r["weight_file_bytes"]
        row = {"config": f"{r['arch']} {r['dtype']}"}
        f32 = next((x for x in results if x["arch"] == r["arch"] and x["dtype"] == "f32"), None)
        p = r.get("ppl")
        if p:
            g, t = p["gpt_ablate"], p["transformers"]
            row.update({
                "ppl tok/s": f"{g['tokens_per_second']:.0f} / {fmt(t, 'tokens_per_second', '.0f')}",
                "ppl ×": fmt(p, "ratio", ".2f"),
                "ppl Δrel": fmt(p, "ppl_rel_diff", ".1e"),
            })
            own = g.get("own_f32_back_to_back") or (
                f32 and "ppl" in f32 and f32["ppl"]["gpt_ablate"]["tokens_per_second"])
            if own:
                row["ppl vs own f32"] = f"{g['tokens_per_second'] / own:.2f}"
            ga_rss, tf_rss = g["peak_rss_kib"], t and t["peak_rss_kib"]
        gn = r.get("gen")
        if gn:
            g, t = gn["gpt_ablate"], gn["transformers"] or {}
            row.update({
                "gen tok/s": f"{g['new_tokens_per_second']:.1f} / {fmt(t, 'new_tokens_per_second', '.1f')}",
                "gen ×": fmt(gn, "ratio", ".2f"),
                "TTFT ms": f"{1e3 * g['ttft_s']:.0f} / {fmt(t, 'ttft_s', '.0f', 1e3)}",
                "ms/token": f"{g['per_token_ms']:.1f} / {fmt(t, 'per_token_ms', '.1f')}",
                "greedy =": f"{gn['matching_leading_tokens']}/{gn['compared_tokens']}" if t else "-",
            })
            if f32 and "gen" in f32:
                own = f32["gen"]["gpt_ablate"]["new_tokens_per_second"]
                row["gen vs own f32"] = f"{g['new_tokens_per_second'] / own:.2f}"
            ga_rss = max(ga_rss or 0, g["peak_rss_kib"])
            if t:
                tf_rss = max(tf_rss or 0, t["peak_rss_kib"])
        row.update({
            "weights MiB": f"{wb / 2**20:.0f}",
            "peak RSS MiB": f"{ga_rss / 1024:.0f} / " + (f"{tf_rss / 1024:.0f}" if tf_rss else "-"),
            "RSS/weights": f"{ga_rss * 1024 / wb:.2f} / " + (f"{tf_rss * 1024 / wb:.2f}" if tf_rss else "-"),
        })
        rows.append(row)
    cols = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    width = {c: max(len(c), *(len(r.get(c, "-")) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(width[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (width[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(r.get(c, "-").rjust(width[c]) for c in cols) + " |")
    print("(pairs are gpt-ablate / transformers; × = gpt-ablate / transformers speed; peak RSS is the larger of "
          "the perplexity and generation runs; transformers' includes the Python/torch runtime; "
          "f16 'ppl vs own f32' is against an f32 scoring run made right after the f16 one)")


def parse_list(value: str, allowed: list, what: str) -> list:
    items = allowed if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    for v in items:
        if v not in allowed:
            die(f"--{what} {v!r}: choose from {', '.join(allowed)} or all")
    return items


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN, help=f"gpt-ablate binary (default {DEFAULT_BIN})")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gpt-ablate-bench"))
    ap.add_argument("--arch", default="gpt2", help="gpt2, neox, opt, llama: comma-separated, or all (default gpt2)")
    ap.add_argument("--dtype", default="f32", help="f32, bf16, f16: comma-separated, or all (default f32)")
    ap.add_argument("--tokens", type=int, default=16384, help="number of WikiText tokens (default 16384)")
    ap.add_argument("--quick", action="store_true", help="4096 tokens and 64 new tokens (smoke run)")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"],
                    help="transformers attention kernel (default sdpa, transformers' own default)")
    ap.add_argument("--json-out", type=Path, help="save all figures to this JSON file")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--skip-generation", action="store_true", help="leave out the generation benchmark")
    g.add_argument("--only-generation", action="store_true", help="run only the generation benchmark")
    ap.add_argument("--gen-tokens", type=int, default=None, help="new tokens to generate (default 128; --quick 64)")
    ap.add_argument("--gen-prompt-tokens", type=int, default=32, help="prompt length in tokens (default 32)")
    ap.add_argument("--gen-repeats", type=int, default=3,
                    help="generation runs per tool; the median by speed is reported (default 3)")
    ap.add_argument("--torch-f16", default="auto", choices=["auto", "run", "skip"],
                    help="transformers in f16: auto leaves it out when torch's CPU f16 matmul is >20x slower "
                         "than bf16 (f16 rows then compare gpt-ablate f16 with its own f32)")
    ap.add_argument("--_torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_torch-gen-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_model", help=argparse.SUPPRESS)
    ap.add_argument("--_text", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.gen_tokens is None:
        a.gen_tokens = 64 if a.quick else 128

    if a._torch_worker:
        return torch_ppl_worker(a)
    if a._torch_gen_worker:
        return torch_gen_worker(a)

    arches = parse_list(a.arch, ARCHES, "arch")
    dtypes = parse_list(a.dtype, DTYPES, "dtype")
    n_tokens = 4096 if a.quick else a.tokens
    if not 0 < a.stride <= a.context:
        die("need 0 < stride <= context")
    for p in (TOKENIZER, WIKITEXT):
        if not p.exists():
            die(f"{p} is missing (it is part of the repository)")
    binary = a.bin if a.bin.is_absolute() else (Path.cwd() / a.bin)
    if not binary.exists():  # fail before the slow setup
        die(f"gpt-ablate binary not found at {binary}\n  build it first:  cargo build --release   (or pass --bin PATH)")

    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        log(f"WARNING: 1-minute load average is {load1:.2f}; other work on this machine will skew the timings")
    flags = cpu_flags()
    log(f"CPU features: {' '.join(flags) or '?'}")
    a.workdir.mkdir(parents=True, exist_ok=True)
    for arch in arches:
        build_models(a.workdir, arch, dtypes)
    text, text_info = make_text(a.workdir, n_tokens)
    prompt, prompt_ids = make_prompt(a.workdir, a.gen_prompt_tokens)

    a.torch_skip = decide_torch_skips(a, dtypes)
    for dtype, why in a.torch_skip.items():
        log(f"transformers left out for {dtype}: {why}")
    results = [bench_one(a, binary, arch, dtype, text, prompt) for arch in arches for dtype in dtypes]
    print_table(a, results, n_tokens)
    kernels = sorted({r[k]["gpt_ablate"]["kernels"] for r in results for k in ("ppl", "gen") if k in r})
    torch_caps = sorted({r[k]["transformers"]["cpu_capability"] for r in results for k in ("ppl", "gen")
                         if k in r and r[k]["transformers"]})
    print(f"CPU features: {' '.join(flags) or '?'}; gpt-ablate kernels: {', '.join(kernels)}; "
          f"torch CPU capability: {', '.join(torch_caps)}")
    load2 = os.getloadavg()[0]
    print(f"load average (1 min) at start {load1:.2f}, at end {load2:.2f}")

    if a.json_out:
        out = {"threads": THREADS, "cpu_flags": flags, "tokens": n_tokens, "text_info": text_info,
               "transformers_skipped": a.torch_skip,
               "prompt_ids": prompt_ids, "loadavg": [load1, load2], "results": results}
        a.json_out.write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
