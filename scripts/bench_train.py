#!/usr/bin/env python3
"""Benchmark training speed: `gpt-ablate train` against PyTorch + transformers, same model,
batch, sequence length, threads and precision (f32), in one run of this script.

A benchmark, not a test: it prints figures and asserts nothing about them.

1. gpt-ablate (``target/release/gpt-ablate``, build it first): ``train --init MODEL --data
   shakespeare-train --eval-data shakespeare-val --eval-tokens 512 --steps S --batch-size B
   --seq-len T --eval-every 0 --save-every 0 --threads N`` with ``RAYON_NUM_THREADS=N``, into
   a fresh directory under the work dir. Its ``log.jsonl`` has the wall time of every
   optimizer step (forward, backward, clipping, AdamW update; not the evaluations or the
   checkpoint).
2. PyTorch, in a child process: ``torch.set_num_threads(N)``, the same checkpoint loaded with
   ``AutoModelForCausalLM.from_pretrained`` (float32, transformers' default attention),
   ``model.train()`` (the default model has no dropout), ``torch.optim.AdamW`` with the same
   groups and hyper-parameters (weight decay 0.1 on matrices, none on biases, norms,
   embeddings), ``get_cosine_schedule_with_warmup``, ``clip_grad_norm_(1.0)``; each step is
   zero_grad, forward on B random crops of T + 1 tokens of the same training text, mean
   cross-entropy, backward, clip, step, timed with ``time.perf_counter``.
3. Both, ``--rounds R`` times (default 3), alternating (gpt-ablate, PyTorch, gpt-ablate, …),
   so that a slow spell of a shared machine falls on both tools: the first ``--skip`` steps
   of each run (default 2) are warm-up and not counted; tokens/s = B·T / (the median of every
   counted step's seconds, over all rounds). Also printed: the mean-based rate
   (B·T·steps / summed seconds) and each round's ratio. Prints both tools, the ratio
   (gpt-ablate / PyTorch) and the machine's load average; ``--json-out FILE`` saves every
   figure.

Examples::

    cargo build --release
    python scripts/bench_train.py                       # default model, 8 x 256, 12 steps
    python scripts/bench_train.py --batch-size 4 --seq-len 128 --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def rust_run(args) -> dict:
    out = Path(args.workdir) / "gpt-ablate-run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(REPO / "target" / "release" / "gpt-ablate"), "train", "--init", str(args.model),
           "--data", "shakespeare-train", "--eval-data", "shakespeare-val", "--eval-tokens", "512",
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--eval-every", "0", "--save-every", "0", "--threads", str(args.threads), "--out", str(out), "--json"]
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"gpt-ablate failed:\n{res.stderr}")
    steps = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    secs = [s["seconds"] for s in steps if "seconds" in s]
    return {"step_seconds": secs, "wall_seconds": wall, "summary": json.loads(res.stdout)}


def torch_child(args) -> None:
    """Runs in a child process: prints one JSON line with the step times."""
    import torch
    import torch.nn.functional as F
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    text = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:1003836]
    tok = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    ids = torch.tensor(tok.encode(text, add_special_tokens=False).ids, dtype=torch.long)
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32)
    model.train()
    named = list(model.named_parameters())
    emb = ("wte.weight", "wpe.weight", "embed_tokens.weight", "embed_in.weight", "embed_positions.weight")
    nd = [p for n, p in named if p.dim() < 2 or n.endswith(emb)]
    dec = [p for n, p in named if not (p.dim() < 2 or n.endswith(emb))]
    opt = torch.optim.AdamW([{"params": dec, "weight_decay": 0.1}, {"params": nd, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    sched = transformers.get_cosine_schedule_with_warmup(opt, args.steps // 10, args.steps)
    g = torch.Generator().manual_seed(0)
    n = args.seq_len + 1
    secs = []
    for _ in range(args.steps):
        starts = torch.randint(0, len(ids) - n, (args.batch_size,), generator=g)
        batch = torch.stack([ids[s:s + n] for s in starts.tolist()])
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        secs.append(time.perf_counter() - t0)
    print(json.dumps({"step_seconds": secs, "torch": torch.__version__, "transformers": transformers.__version__,
                      "attention": model.config._attn_implementation}))


def counted(runs: list, skip: int) -> list:
    """Every counted step's seconds, over all rounds."""
    return [s for run in runs for s in run[skip:]]


def mean_rate(secs: list, tokens_per_step: int) -> float:
    return tokens_per_step * len(secs) / sum(secs)


def median_rate(secs: list, tokens_per_step: int) -> float:
    return tokens_per_step / statistics.median(secs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "shakespeare-gpt2"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each tool (default 3)")
    ap.add_argument("--workdir", default="/tmp/gpt-ablate-bench-train")
    ap.add_argument("--json-out")
    ap.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        torch_child(args)
        return 0
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    child = [sys.executable, __file__, "--torch-child", "--model", args.model, "--steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--threads", str(args.threads)]
    rusts, pts = [], []
    for _ in range(args.rounds):
        rusts.append(rust_run(args))
        res = subprocess.run(child, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"PyTorch failed:\n{res.stderr}")
        pts.append(json.loads(res.stdout.strip().splitlines()[-1]))
    tps = args.batch_size * args.seq_len
    rs = counted([x["step_seconds"] for x in rusts], args.skip)
    ps = counted([x["step_seconds"] for x in pts], args.skip)
    r, p = median_rate(rs, tps), median_rate(ps, tps)
    rounds = [mean_rate(a["step_seconds"][args.skip:], tps) / mean_rate(b["step_seconds"][args.skip:], tps)
              for a, b in zip(rusts, pts)]
    pt = pts[0]
    print(f"model {args.model}, batch {args.batch_size} x {args.seq_len}, {args.threads} threads, f32, "
          f"{args.rounds} rounds of {args.steps} steps ({args.skip} warm-up not counted per run); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'tool':<26}{'tokens/s':>10}{'s/step':>9}{'mean-based tok/s':>18}")
    print(f"{'gpt-ablate train':<26}{r:>10.0f}{tps / r:>9.3f}{mean_rate(rs, tps):>18.0f}")
    print(f"{'PyTorch + transformers':<26}{p:>10.0f}{tps / p:>9.3f}{mean_rate(ps, tps):>18.0f}"
          f"   (torch {pt['torch']}, {pt['attention']} attention)")
    print(f"ratio (gpt-ablate / PyTorch), medians: {r / p:.2f}; mean-based: "
          f"{mean_rate(rs, tps) / mean_rate(ps, tps):.2f}; per round: {', '.join(f'{x:.2f}' for x in rounds)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "gpt_ablate": rusts, "pytorch": pts,
                                                   "gpt_ablate_tokens_per_second": r,
                                                   "pytorch_tokens_per_second": p, "ratio": r / p,
                                                   "ratio_mean_based": mean_rate(rs, tps) / mean_rate(ps, tps),
                                                   "ratio_per_round": rounds,
                                                   "loadavg": os.getloadavg()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
