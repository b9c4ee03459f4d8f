#!/usr/bin/env python3
"""Train gpt-ablate's embedded default model, ``models/shakespeare-gpt2/``.

Run from anywhere (paths are resolved from this file's location)::

    python scripts/train_default_model.py               # picks the step count from a timing run
    python scripts/train_default_model.py --steps 1000  # fixed step count (what the model card records)

What it does (fixed seeds; CPU, 2 threads):

1. Splits ``data/tinyshakespeare.txt`` (1,115,394 chars, ASCII): the cut is at
   ``int(0.9 * len(text))`` moved back to just after the nearest preceding newline, so no line
   is split.  ``text[:cut]`` is the training text, ``text[cut:]`` is written to
   ``data/shakespeare-val.txt`` (UTF-8, LF) and never used for training.
2. Trains a byte-level BPE tokenizer on the training text only (same style as
   ``make_fixtures.py``: no normalizer, ByteLevel pre-tokenizer add_prefix_space=False
   use_regex=True, ByteLevel post-processor trim_offsets=False, ByteLevel decoder, initial
   alphabet = all 256 byte symbols, special token ``<|endoftext|>`` = id 0), vocab 2048.
   Training is deterministic: when ``tokenizer.json`` already exists, the freshly trained
   tokenizer must serialize to exactly the same bytes (the script stops otherwise and never
   overwrites it), so retraining the model never changes the tokenizer.
3. Trains a GPT2LMHeadModel (n_positions 256, n_embd 160, n_layer 6, n_head 5, gelu_new, no
   dropout, tied embeddings) with AdamW (betas 0.9/0.95, weight decay 0.1 on the 2-D weight matrices
   and embeddings only, none on biases and LayerNorm), lr linear warmup 0 -> 3e-3 over 50 steps
   then cosine decay to 3e-4 at the last step, grad-norm clip 1.0, batches of 32 random crops of
   256 tokens of the training tokens, torch.manual_seed(1337).  Every 100 steps: train and
   validation loss (eval mode, 4 fixed batches each); the best-by-validation weights are kept.
   Without ``--steps`` the step count is fixed after timing the first 30 steps: the measured
   rate is assumed to slow down by 1.25x (the 2 cores are shared) and the evaluations are
   accounted for, so that the whole cosine schedule fits in ``--budget`` seconds of training
   (rounded down to a multiple of 100, clamped to [300, 5000]); the schedule is never re-planned,
   so ``--steps N`` reproduces the run.  The budget (default 1500 s) is also enforced on the
   measured elapsed time (with ``--steps`` only when ``--budget`` is given): if training has used
   ``--budget`` seconds before the last step (the machine got much slower), it stops there,
   evaluates, and keeps the best-by-validation weights; the log then records the stop step and
   the command gets ``--stop-at STEP`` so the run stays reproducible.
4. Saves with ``save_pretrained`` (float32 ``model.safetensors`` with ``transformer.``-prefixed
   keys, lm_head tied so not stored, ``config.json``) + ``tokenizer.json``; removes
   ``generation_config.json``.
5. Reloads the directory with ``from_pretrained`` (float32, eager attention, eval mode), checks
   it reproduces the in-memory model's logits, and computes the exact sliding-window perplexity
   of the full ``data/shakespeare-val.txt`` at context 256, stride 128 (the contract of
   ``make_fixtures.sliding_ppl``), bits per byte, a greedy and a sampled continuation of
   ``"ROMEO:\\n"`` (150 tokens each); also the perplexity at context 256, stride 256.
6. Writes ``models/shakespeare-gpt2/README.md`` (model card) and ``training_log.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import read_text, sliding_ppl, write_text  # noqa: E402  (same contract)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
OUT = REPO / "models" / "shakespeare-gpt2"
SHAKESPEARE = DATA / "tinyshakespeare.txt"
VAL = DATA / "shakespeare-val.txt"

EOT = "<|endoftext|>"
VOCAB_SIZE = 2048
N_POSITIONS = 256
N_EMBD, N_LAYER, N_HEAD = 160, 6, 5
BATCH, SEQ = 32, 256
LR_MAX, LR_MIN, WARMUP = 3e-3, 3e-4, 50
WEIGHT_DECAY, BETAS, CLIP = 0.1, (0.9, 0.95), 1.0
SEED = 1337
EVAL_EVERY, EVAL_BATCHES = 100, 4
PPL_CONTEXT, PPL_STRIDE = 256, 128
PROMPT = "ROMEO:\n"
GEN_TOKENS = 150
PPL_STRIDE_2 = 256  # also reported: non-overlapping windows
TIMING_STEPS, SLOWDOWN = 30, 1.25
TEMPERATURE, TOP_K, SAMPLE_SEED = 0.8, 40, 0
MAX_BYTES = 12_000_000


def split_text(text: str) -> dict:
    nominal = int(len(text) * 0.9)
    cut = text.rindex("\n", 0, nominal) + 1  # just after the nearest newline at or before it
    return {
        "chars": len(text),
        "bytes": len(text.encode("utf-8")),
        "nominal_split_char": nominal,
        "cut_char": cut,
        "cut_byte": len(text[:cut].encode("utf-8")),
    }


def train_tokenizer(train_text: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chunks = [c + "\n\n" for c in train_text.split("\n\n")]
    tok.train_from_iterator(chunks, trainer=trainer)
    return tok


def make_config(vocab: int, eot_id: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab,
        n_positions=N_POSITIONS,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"],
    )


def lr_at(step: int, total: int) -> float:
    """step counts from 0; warmup reaches LR_MAX at step WARMUP-1, cosine to LR_MIN at total-1."""
    if step < WARMUP:
        return LR_MAX * (step + 1) / WARMUP
    frac = (step - WARMUP) / max(1, total - 1 - WARMUP)
    return LR_MIN + 0.5 * (LR_MAX - LR_MIN) * (1.0 + math.cos(math.pi * min(1.0, frac)))


def crops(data: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    ix = torch.randint(0, len(data) - SEQ, (n,), generator=gen)
    return torch.stack([data[i : i + SEQ] for i in ix.tolist()])


@torch.inference_mode()
def eval_loss(model, batches) -> float:
    was = model.training
    model.eval()
    losses = [model(input_ids=x, labels=x).loss.item() for x in batches]
    model.train(was)
    return sum(losses) / len(losses)


@torch.inference_mode()
def greedy(model, ids, n):
    ids = list(ids)
    for _ in range(n):
        ctx = ids[-N_POSITIONS:]
        logits = model(input_ids=torch.tensor([ctx])).logits[0, -1].float()
        ids.append(int(torch.argmax(logits)))
    return ids


@torch.inference_mode()
def sample(model, ids, n, temperature, top_k, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = list(ids)
    for _ in range(n):
        ctx = ids[-N_POSITIONS:]
        logits = model(input_ids=torch.tensor([ctx])).logits[0, -1].float() / temperature
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        ids.append(int(torch.multinomial(probs, 1, generator=gen)))
    return ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: fit --budget)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of training (default 1500 without --steps, no limit with --steps): picks the "
                         "step count when --steps is not given, and training stops once this much time is spent")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="stop after this step (the schedule still runs to --steps); reproduces a budget stop")
    args = ap.parse_args()

    if args.budget is None:
        args.budget = math.inf if args.steps else 1500.0
    torch.set_num_threads(2)
    t_start = time.time()

    # 1. split ------------------------------------------------------------------
    text = read_text(SHAKESPEARE)
    sp = split_text(text)
    train_text, val_text = text[: sp["cut_char"]], text[sp["cut_char"] :]
    write_text(VAL, val_text)
    assert read_text(VAL) == val_text
    sp["val_chars"] = len(val_text)
    sp["val_bytes"] = len(val_text.encode("utf-8"))
    print(f"split: nominal char {sp['nominal_split_char']}, cut at char/byte {sp['cut_char']}; "
          f"train {sp['cut_char']} chars, val {sp['val_chars']} chars / {sp['val_bytes']} bytes")

    # 2. tokenizer ---------------------------------------------------------------
    OUT.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(train_text)
    tok_path = OUT / "tokenizer.json"
    tok_json = tok.to_str(pretty=True)  # what Tokenizer.save writes
    if tok_path.exists():
        if tok_path.read_bytes() != tok_json.encode("utf-8"):
            raise SystemExit(f"{tok_path} differs from the tokenizer retrained now; refusing to overwrite it")
        print(f"tokenizer: retrained, byte-identical to the existing {tok_path.name}")
    else:
        tok.save(str(tok_path))
    tok = Tokenizer.from_file(str(tok_path))
    vocab = tok.get_vocab_size()
    eot_id = tok.token_to_id(EOT)
    assert vocab == VOCAB_SIZE and eot_id == 0, (vocab, eot_id)
    assert tok.decode(tok.encode(val_text, add_special_tokens=False).ids, skip_special_tokens=False) == val_text
    train_ids = torch.tensor(tok.encode(train_text, add_special_tokens=False).ids, dtype=torch.long)
    val_ids_list = tok.encode(val_text, add_special_tokens=False).ids
    val_ids = torch.tensor(val_ids_list, dtype=torch.long)
    print(f"tokenizer: vocab {vocab}, {EOT} = {eot_id}; train {len(train_ids)} tokens, val {len(val_ids)} tokens")

    # 3. model + training --------------------------------------------------------------
    torch.manual_seed(SEED)
    config = make_config(vocab, eot_id)
    model = GPT2LMHeadModel(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())  # tied wte counted once
    print(f"model: {n_params:,} parameters ({n_params * 4 / 1e6:.2f} MB as f32)")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR_MAX, betas=BETAS,
    )
    gen = torch.Generator().manual_seed(SEED)
    egen = torch.Generator().manual_seed(SEED + 1)
    train_eval = [crops(train_ids, BATCH, egen) for _ in range(EVAL_BATCHES)]
    val_eval = [crops(val_ids, BATCH, egen) for _ in range(EVAL_BATCHES)]

    total = args.steps if args.steps else 5000  # provisional when auto (only warmup uses it before step 30)
    stop_at = min(total, args.stop_at) if args.stop_at else total
    log, recent = [], []
    best = {"val": float("inf"), "step": 0, "state": None}
    t0 = time.time()
    sps = projected = None
    budget_stop = None
    step = 0
    while step < stop_at:
        lr = lr_at(step, total)
        for g in opt.param_groups:
            g["lr"] = lr
        x = crops(train_ids, BATCH, gen)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item()
        opt.step()
        recent.append(loss.item())
        step += 1
        if step == TIMING_STEPS:
            sps = (time.time() - t0) / TIMING_STEPS
            # an evaluation is 2 * EVAL_BATCHES forward passes, about 1/3 of a training step each
            per_step = sps * SLOWDOWN * (1 + 2 * EVAL_BATCHES / 3 / EVAL_EVERY)
            if args.steps is None:
                total = max(300, min(5000, int(args.budget / per_step) // 100 * 100))
                stop_at = min(total, args.stop_at) if args.stop_at else total
            projected = per_step * total
            print(f"timing: {sps:.3f} s/step over the first {TIMING_STEPS} steps -> {total} steps, "
                  f"projected {projected / 60:.1f} min of training (assuming {SLOWDOWN}x slowdown)", flush=True)
        elapsed = time.time() - t0
        if step < stop_at and elapsed >= args.budget:
            budget_stop = step
            stop_at = step
            print(f"budget of {args.budget:.0f} s spent after step {step} of {total}: stopping here", flush=True)
        if step % EVAL_EVERY == 0 or step == stop_at:
            tl, vl = eval_loss(model, train_eval), eval_loss(model, val_eval)
            avg = sum(recent) / len(recent)
            recent = []
            el = time.time() - t0
            log.append({"step": step, "lr": lr, "train_loss_avg": avg, "train_loss_eval": tl, "val_loss": vl,
                        "grad_norm": gnorm, "seconds": round(el, 1)})
            mark = ""
            if vl < best["val"]:
                best = {"val": vl, "step": step, "state": copy.deepcopy(model.state_dict())}
                mark = " *"
            print(f"step {step:5d}  lr {lr:.2e}  train(avg last) {avg:.4f}  train(eval) {tl:.4f}  "
                  f"val {vl:.4f}  |g| {gnorm:.2f}  {el:6.0f}s{mark}", flush=True)
    train_seconds = time.time() - t0
    steps_run = step
    if sps is None:  # stopped before the timing step
        sps = train_seconds / steps_run
        projected = sps * total
    final = log[-1]
    if best["step"] != final["step"]:
        print(f"restoring best-by-val weights from step {best['step']} (val {best['val']:.4f})")
        model.load_state_dict(best["state"])
    kept = next(e for e in log if e["step"] == best["step"])
    model.eval()

    # 4. save --------------------------------------------------------------------------
    model.save_pretrained(str(OUT))
    gc = OUT / "generation_config.json"
    if gc.exists():
        gc.unlink()
    st = load_file(str(OUT / "model.safetensors"))
    assert all(k.startswith("transformer.") for k in st), sorted(st)[:5]
    assert all(v.dtype == torch.float32 for v in st.values())
    size = (OUT / "model.safetensors").stat().st_size
    assert size <= MAX_BYTES, size
    print(f"saved {OUT}: model.safetensors {size:,} bytes, {len(st)} tensors")

    # 5. evaluate the reloaded checkpoint ------------------------------------------------
    m = GPT2LMHeadModel.from_pretrained(str(OUT), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    model.set_attn_implementation("eager")
    probe = torch.tensor([val_ids_list[:64]])
    with torch.inference_mode():
        assert torch.equal(m(input_ids=probe).logits, model(input_ids=probe).logits), "reload differs"
    t1 = time.time()
    ppl = sliding_ppl(m, val_ids_list, PPL_CONTEXT, PPL_STRIDE)
    ppl["bits_per_byte"] = ppl["nll_sum"] / math.log(2) / sp["val_bytes"]
    ppl["tokens"] = len(val_ids_list)
    ppl["bytes"] = sp["val_bytes"]
    ppl["context"], ppl["stride"] = PPL_CONTEXT, PPL_STRIDE
    ppl["seconds"] = round(time.time() - t1, 1)
    print(f"val perplexity (c={PPL_CONTEXT}, s={PPL_STRIDE}): {ppl['perplexity']:.6f}  "
          f"mean nll {ppl['mean_nll']:.6f}  scored {ppl['tokens_scored']}/{len(val_ids_list)}  "
          f"bits/byte {ppl['bits_per_byte']:.6f}")
    t1 = time.time()
    ppl2 = sliding_ppl(m, val_ids_list, PPL_CONTEXT, PPL_STRIDE_2)
    ppl2["bits_per_byte"] = ppl2["nll_sum"] / math.log(2) / sp["val_bytes"]
    ppl2["tokens"] = len(val_ids_list)
    ppl2["bytes"] = sp["val_bytes"]
    ppl2["context"], ppl2["stride"] = PPL_CONTEXT, PPL_STRIDE_2
    ppl2["seconds"] = round(time.time() - t1, 1)
    print(f"val perplexity (c={PPL_CONTEXT}, s={PPL_STRIDE_2}): {ppl2['perplexity']:.6f}  "
          f"mean nll {ppl2['mean_nll']:.6f}  scored {ppl2['tokens_scored']}/{len(val_ids_list)}  "
          f"bits/byte {ppl2['bits_per_byte']:.6f}")

    prompt_ids = tok.encode(PROMPT, add_special_tokens=False).ids
    g_ids = greedy(m, prompt_ids, GEN_TOKENS)
    s_ids = sample(m, prompt_ids, GEN_TOKENS, TEMPERATURE, TOP_K, SAMPLE_SEED)
    g_text = tok.decode(g_ids, skip_special_tokens=False)
    s_text = tok.decode(s_ids, skip_special_tokens=False)
    print("\n--- greedy ---\n" + g_text + "\n--- sample (T=0.8, top-k 40, seed 0) ---\n" + s_text + "\n---")

    # 6. log + card ----------------------------------------------------------------------
    info = {
        "generator": "scripts/train_default_model.py",
        "command": f"python scripts/train_default_model.py --steps {total}"
                   + (f" --stop-at {steps_run}" if steps_run < total else ""),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "seed": SEED,
        "split": sp,
        "tokenizer": {"vocab_size": vocab, "endoftext_id": eot_id, "train_tokens": len(train_ids),
                      "val_tokens": len(val_ids_list)},
        "model": {"parameters": n_params, "safetensors_bytes": size, "n_positions": N_POSITIONS,
                  "n_embd": N_EMBD, "n_layer": N_LAYER, "n_head": N_HEAD, "activation": "gelu_new"},
        "training": {"steps": total, "steps_run": steps_run, "budget_seconds": args.budget if math.isfinite(args.budget) else None,
                     "budget_stop": budget_stop, "step_count": "fixed by --steps" if args.steps else
                     f"fitted to the budget from the rate of the first {TIMING_STEPS} steps x {SLOWDOWN}",
                     "dropout": 0.0, "batch": BATCH, "seq": SEQ, "lr_max": LR_MAX, "lr_min": LR_MIN,
                     "warmup": WARMUP, "weight_decay": WEIGHT_DECAY, "betas": list(BETAS), "grad_clip": CLIP,
                     "seconds_per_step_first30": round(sps, 4), "projected_seconds": round(projected, 1),
                     "train_seconds": round(train_seconds, 1), "kept_step": best["step"],
                     "final_train_loss_avg": kept["train_loss_avg"], "final_train_loss_eval": kept["train_loss_eval"],
                     "final_val_loss": kept["val_loss"], "log": log},
        "val_perplexity": ppl,
        "val_perplexity_stride256": ppl2,
        "generation": {"prompt": PROMPT, "prompt_ids": prompt_ids, "new_tokens": GEN_TOKENS,
                       "greedy_ids": g_ids, "greedy_text": g_text,
                       "sample": {"temperature": TEMPERATURE, "top_k": TOP_K, "seed": SAMPLE_SEED,
                                  "rng": "torch.Generator().manual_seed(seed); torch.multinomial per step"},
                       "sample_ids": s_ids, "sample_text": s_text},
        "total_seconds": round(time.time() - t_start, 1),
    }
    (OUT / "training_log.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_card(info)
    print(f"\ndone in {info['total_seconds']:.0f} s; files in {OUT}: {sorted(os.listdir(OUT))}")
    return 0


def fence(s: str) -> str:
    return "```text\n" + s + ("" if s.endswith("\n") else "\n") + "```"


def write_card(info: dict) -> None:
    sp, tr, pp, md, gen = info["split"], info["training"], info["val_perplexity"], info["model"], info["generation"]
    pp2 = info["val_perplexity_stride256"]
    avg_sps = tr["train_seconds"] / tr["steps_run"]
    busy = "; the 2 cores were shared with other jobs during this run" if avg_sps > 1.25 * tr["seconds_per_step_first30"] else ""
    log = tr["log"]
    still_falling = tr["kept_step"] == tr["steps_run"] and len(log) > 1 and log[-1]["val_loss"] < log[-2]["val_loss"]
    if tr["steps_run"] < tr["steps"]:
        why = (f"the {tr['budget_seconds']:.0f} s training budget was spent at step {tr['budget_stop']}"
               if tr["budget_stop"] is not None else "`--stop-at`")
        steps_line = (f"{tr['steps_run']} steps run of a {tr['steps']}-step schedule ({why}, so the cosine decay "
                      f"did not finish)")
    else:
        steps_line = f"{tr['steps']} steps"
    if "fitted" in tr["step_count"]:
        steps_how = (f"\nThe step count was chosen by the script for a {tr['budget_seconds']:.0f} s training budget: "
                     f"{tr['seconds_per_step_first30']:.2f} s/step measured over the first 30 steps, assumed "
                     f"1.25x slower for the rest (shared cores), plus the evaluations, rounded down to a "
                     f"multiple of 100; the schedule was then fixed, so the command above reproduces it.\n")
    else:
        steps_how = ""
    under = (
        f"\n\nThe model is small and trained only briefly (a CPU budget of minutes); the validation loss was "
        f"still falling at the last step ({log[-2]['val_loss']:.4f} -> {log[-1]['val_loss']:.4f} over the last "
        f"{log[-1]['step'] - log[-2]['step']} steps), so more steps would give a better model. It is meant as a "
        f"realistic, fast test subject for activation ablations, not as a good text generator."
        if still_falling else ""
    )
    rows = "\n".join(
        f"| {e['step']} | {e['lr']:.2e} | {e['train_loss_avg']:.4f} | {e['train_loss_eval']:.4f} | {e['val_loss']:.4f} |"
        for e in tr["log"]
    )
    card = f"""# shakespeare-gpt2

gpt-ablate's default model: a small GPT-2 trained from scratch on Tiny Shakespeare, so the tool
can run (`perplexity`, activation swaps, charts) without downloading anything. It is a
standard Hugging Face `GPT2LMHeadModel` checkpoint — transformers loads it with
`GPT2LMHeadModel.from_pretrained("models/shakespeare-gpt2")`.

Generated by `scripts/train_default_model.py`; do not edit by hand.

## Files

| file | what |
|---|---|
| `config.json` | GPT-2 config written by `save_pretrained` |
| `model.safetensors` | float32 weights, `transformer.`-prefixed keys (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`, ...); no `lm_head.weight` (tied to `wte`); {md['safetensors_bytes']:,} bytes |
| `tokenizer.json` | byte-level BPE tokenizer (below) |
| `training_log.json` | every number on this page, the loss curve, the generated token ids |

## Architecture

| | |
|---|---|
| type | GPT-2 (`GPT2LMHeadModel`), pre-LayerNorm decoder, learned absolute positions |
| parameters | {md['parameters']:,} (tied input/output embedding counted once) |
| vocab_size | {info['tokenizer']['vocab_size']} |
| n_positions (max context) | {md['n_positions']} |
| n_embd | {md['n_embd']} |
| n_layer | {md['n_layer']} |
| n_head | {md['n_head']} (head dim {md['n_embd'] // md['n_head']}) |
| n_inner | {4 * md['n_embd']} (default 4 × n_embd) |
| activation_function | `gelu_new` (GPT-2's tanh-approximated GELU) |
| layer_norm_epsilon | 1e-5 |
| dropout (resid / embd / attn) | 0 / 0 / 0 (none, also in training) |
| tie_word_embeddings | true |
| bos / eos | `<|endoftext|>` = {info['tokenizer']['endoftext_id']} |

## Tokenizer

Byte-level BPE (GPT-2 style) trained with the Hugging Face `tokenizers` library on the
training part only: no normalizer; ByteLevel pre-tokenizer (add_prefix_space=false,
use_regex=true); ByteLevel post-processor (trim_offsets=false, adds no tokens); ByteLevel
decoder; initial alphabet = all 256 byte symbols, so every UTF-8 input encodes. Vocab
{info['tokenizer']['vocab_size']}, with the single special token `<|endoftext|>` = id
{info['tokenizer']['endoftext_id']}. Training text: {info['tokenizer']['train_tokens']:,} tokens;
validation text: {info['tokenizer']['val_tokens']:,} tokens ({sp['val_bytes'] / info['tokenizer']['val_tokens']:.3f} bytes/token).

## Data

`data/tinyshakespeare.txt` (Tiny Shakespeare, {sp['chars']:,} characters, ASCII so characters =
bytes). The nominal 90 % point is char `int(0.9 × {sp['chars']}) = {sp['nominal_split_char']}`;
the cut is moved back to just after the nearest preceding newline, **char/byte offset
{sp['cut_char']}**, so no line is split.

- training: chars [0, {sp['cut_char']}) — the tokenizer and the model saw only this;
- validation: chars [{sp['cut_char']}, {sp['chars']}) = `data/shakespeare-val.txt`
  ({sp['val_bytes']:,} bytes).

(`tests/fixtures/sample.txt` is taken from inside the validation part.)

## Training recipe

```sh
{info['command']}
```
{steps_how}
- seed: `torch.manual_seed({info['seed']})` (initialisation; no dropout); batch crops from a
  `torch.Generator` seeded {info['seed']}
- {steps_line}, batch {tr['batch']} × {tr['seq']} tokens (random crops of the training tokens),
  {tr['steps_run'] * tr['batch'] * tr['seq']:,} tokens seen
- AdamW, betas ({tr['betas'][0]}, {tr['betas'][1]}), weight decay {tr['weight_decay']} on weight
  matrices and embeddings (none on biases / LayerNorm), gradient-norm clip {tr['grad_clip']}
- learning rate: linear warmup to {tr['lr_max']:g} over {tr['warmup']} steps, then cosine decay to
  {tr['lr_min']:g} at the last step
- training attention: PyTorch SDPA; evaluation: eager, float32, `model.eval()`
- wall time: {tr['train_seconds']:.0f} s of training ({tr['seconds_per_step_first30']:.2f} s/step over the
  first 30 steps, {avg_sps:.2f} s/step on average{busy}), {info['total_seconds']:.0f} s for the whole
  script, on {info['threads']} CPU threads
- torch {info['torch']}, transformers {info['transformers']}
- kept weights: step {tr['kept_step']} (best validation loss of the 100-step evaluations)

Losses (mean token cross-entropy, nats). "train (avg)" is the mean training-mode loss of the
steps since the previous row; "train (eval)" and "val" are eval-mode losses on 4 fixed batches
of 32 × 256 tokens from the training / validation tokens.

| step | lr | train (avg) | train (eval) | val |
|---:|---:|---:|---:|---:|
{rows}

Final: train loss {tr['final_train_loss_eval']:.4f} (eval mode; {tr['final_train_loss_avg']:.4f}
training-mode average of the last 100 steps), validation loss {tr['final_val_loss']:.4f}.{under}

## Validation perplexity

The whole of `data/shakespeare-val.txt` ({pp['tokens']:,} tokens, {pp['bytes']:,} bytes), exact
sliding windows at context {pp['context']}, stride {pp['stride']} (windows `[k·s, min(k·s+c, N))`,
each scoring the targets not scored before, per-token NLL from the float32 log-softmax summed in
float64 — the same contract as `gpt-ablate perplexity` and `scripts/make_fixtures.py`), computed
with transformers on the reloaded checkpoint (float32, eager attention):

| | |
|---|---|
| tokens scored | {pp['tokens_scored']:,} |
| NLL sum | {pp['nll_sum']:.6f} |
| mean NLL | {pp['mean_nll']:.6f} |
| **perplexity** | **{pp['perplexity']:.6f}** |
| bits per byte | {pp['bits_per_byte']:.6f} |

```sh
gpt-ablate perplexity --model models/shakespeare-gpt2 --data data/shakespeare-val.txt --context 256 --stride 128
```

With non-overlapping windows (context {pp2['context']}, stride {pp2['stride']}; each token sees about
{pp2['context'] // 2} tokens of context on average instead of at least {pp['context'] - pp['stride']}):
perplexity **{pp2['perplexity']:.6f}** (mean NLL {pp2['mean_nll']:.6f} over
{pp2['tokens_scored']:,} tokens, {pp2['bits_per_byte']:.6f} bits per byte).

## Samples

{gen['new_tokens']} new tokens after the prompt `"ROMEO:\\n"` (token ids {gen['prompt_ids']}),
full-context forward passes in float32.

Greedy (argmax):

{fence(gen['greedy_text'])}

Sampled, temperature {gen['sample']['temperature']}, top-k {gen['sample']['top_k']}, seed
{gen['sample']['seed']} (`torch.Generator().manual_seed({gen['sample']['seed']})`, one `torch.multinomial`
per token — other samplers will give other text):

{fence(gen['sample_text'])}

## Licence

The training data is Shakespeare (public domain), as collected in Tiny Shakespeare by Andrej
Karpathy for char-rnn. The model weights and tokenizer are released under the MIT licence, like
the rest of gpt-ablate.

## Regenerate

```sh
python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements.txt
.venv/bin/python {info['command'].removeprefix('python ')}
```

Also rewrites `data/shakespeare-val.txt` (identical). Expect bit-identical weights only on the
same CPU type with the same thread count and library versions; elsewhere the numbers differ
slightly.
"""
    (OUT / "README.md").write_text(card, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
