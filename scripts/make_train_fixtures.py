#!/usr/bin/env python3
"""Generate ``tests/fixtures/train/``: PyTorch / transformers references for gpt-ablate's
calibrated activations, ``--calibrate`` and ``gpt-ablate train``.

Run from anywhere (paths are resolved from this file's location)::

    python scripts/make_train_fixtures.py            # everything below
    python scripts/make_train_fixtures.py calibrated # one part: calibrated | training | checkpoint

Inputs (nothing outside the repo is read):

* ``tests/fixtures/tiny-gpt2/`` and ``tests/fixtures/families/llama-gqa/`` (checkpoints written
  by make_fixtures.py and make_family_fixtures.py) and ``tests/fixtures/sample.txt``;
* ``tests/fixtures/train/checkpoint/`` for the ``checkpoint`` part: a checkpoint written by
  ``gpt-ablate train`` (see ``CHECKPOINT_COMMAND``), committed once;
* ``scripts/make_fixtures.py`` is imported for ``ACTIVATIONS``, ``parse_layers`` and
  ``sliding_ppl`` (importing it writes nothing).

Writes (fixed seeds; well under a minute on 2 CPU cores):

``tests/fixtures/train/calibrated.json``
    ``formulas``: sigmoid_centered = sigmoid(x) - 1/2, sigmoid_scaled = 4 sigmoid(x) - 2 and
    affine(gelu_new, 1.5, 0.25) = 1.5 gelu_new(x) + 0.25 evaluated by torch in float64 on a
    grid of x; ``perplexity``: transformers' sliding-window perplexity (make_fixtures.py's
    contract) of tiny-gpt2 with those activations in every layer (the MLP activation module
    replaced by the formula); ``calibration``: the ``--calibrate`` fit done with forward
    hooks, layer by layer in increasing order, each layer fitted on the pre-activations of
    the model whose earlier layers are already calibrated, over non-overlapping windows
    ``[k*c, (k+1)*c)`` of the first ``tokens`` tokens (a last partial window counts if it
    has >= 2 tokens): a = std(g(h)) / std(f(h)), b = mean(g(h)) - a * mean(f(h)), population
    statistics in float64 over every position and unit of f(h), g(h) computed in float32
    (g = the checkpoint's own activation, f = the swapped-in one); a is rounded to float32
    before b is computed, and both are stored as float32. Then the perplexity of the
    calibrated model (context 64, stride 32).
``tests/fixtures/train/parity.json`` and ``parity-*.safetensors``
    Training parity, per case of ``PARITY`` (tiny-gpt2; the gated, tied, GQA llama-gqa): the
    token batches (drawn once from sample.txt with a seeded torch.Generator), then ``steps``
    optimizer steps from the checkpoint's weights: per micro-batch
    ``cross_entropy(logits, targets) / accumulate`` backpropagated (gradients summed), then
    ``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.AdamW`` with two groups (weight decay
    on every parameter of 2 or more dimensions except the token/position embeddings; none on
    biases, norm weights and embeddings; a tied head is the embedding), learning rate from
    ``transformers.get_cosine_schedule_with_warmup``. The model is in eval mode (no dropout;
    every fixture's dropout is 0 anyway), eager attention, float32. ``log`` has per step the
    loss (the sum of the scaled micro-batch losses), the learning rate used, the global
    gradient norm before clipping, and per layer the norm of the gradient with respect to the
    block's input (retain_grad in a forward pre-hook; over all micro-batches) and of each MLP
    weight (before clipping). ``final_weights`` names the safetensors file with the weights
    after the last step, state-dict names (a tied head not repeated).
``tests/fixtures/train/checkpoints.json``
    transformers' perplexity of the checkpoints ``gpt-ablate train`` wrote into
    ``tests/fixtures/train/finetuned-gpt2/`` and ``scratch-llama/`` (``CHECKPOINT_COMMANDS``),
    each loaded with ``AutoModelForCausalLM.from_pretrained`` as it is.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "train"

mf = None  # scripts/make_fixtures.py, imported in main()


# --------------------------------------------------------------------------- activations


def sigmoid_centered(x):
    return torch.sigmoid(x) - 0.5


def sigmoid_scaled(x):
    return 4.0 * torch.sigmoid(x) - 2.0


class Fn(nn.Module):
    """An activation module from a function of a tensor."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def base_fn(name: str):
    if name == "sigmoid_centered":
        return sigmoid_centered
    if name == "sigmoid_scaled":
        return sigmoid_scaled
    return mf.ACTIVATIONS[name]()


def affine_fn(name: str, a: float, b: float):
    f = base_fn(name)
    return lambda x: a * f(x) + b


def f32(v: float) -> float:
    """The float32 nearest to v, as a Python float."""
    return float(torch.tensor(v, dtype=torch.float32).item())


# --------------------------------------------------------------------------- models


def load_dir(d: Path):
    m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def blocks(model) -> list:
    mt = model.config.model_type
    if mt == "gpt2":
        return list(model.transformer.h)
    assert mt in ("llama", "qwen2"), mt
    return list(model.model.layers)


def act_slot(model, block):
    return (block.mlp, "act") if model.config.model_type == "gpt2" else (block.mlp, "act_fn")


def own_activation(config) -> str:
    return config.activation_function if config.model_type == "gpt2" else config.hidden_act


def set_acts(model, fns: dict) -> list:
    """Puts Fn(fns[l]) in layer l; returns the modules replaced, for restore_acts."""
    saved = []
    for l, b in enumerate(blocks(model)):
        o, a = act_slot(model, b)
        saved.append(getattr(o, a))
        if l in fns:
            setattr(o, a, Fn(fns[l]))
    return saved


def restore_acts(model, saved: list) -> None:
    for b, m in zip(blocks(model), saved):
        o, a = act_slot(model, b)
        setattr(o, a, m)


def encode(d: Path, text: str) -> list:
    return Tokenizer.from_file(str(d / "tokenizer.json")).encode(text, add_special_tokens=False).ids


# --------------------------------------------------------------------------- calibrated


def windows_of(n: int, c: int) -> list:
    return [(b, min(b + c, n)) for b in range(0, n, c) if min(b + c, n) - b >= 2]


def moments(ys: list) -> tuple:
    x = torch.cat([y.reshape(-1).double() for y in ys])
    m = x.mean()
    return m.item(), ((x - m) ** 2).mean().sqrt().item()


@torch.inference_mode()
def layer_outputs(model, ids, windows, layer, fns) -> list:
    """Each fn applied (float32) to layer `layer`'s activation input over the windows."""
    o, a = act_slot(model, blocks(model)[layer])
    seen = []
    hook = getattr(o, a).register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    try:
        for b, e in windows:
            model(input_ids=torch.tensor([ids[b:e]], dtype=torch.long))
    finally:
        hook.remove()
    return [[fn(h) for h in seen] for fn in fns]


def calibrate_case(d: Path, activation: str, all_ids: list, n: int, context: int, layers: list) -> dict:
    """The fit on the first n tokens; the calibrated model's perplexity on all of them."""
    ids = all_ids[:n]
    model = load_dir(d)
    g = base_fn(own_activation(model.config))
    f = base_fn(activation)
    windows = windows_of(len(ids), context)
    fns = {l: f for l in layers}
    fits = []
    for l in layers:
        saved = set_acts(model, fns)
        fy, gy = layer_outputs(model, ids, windows, l, [f, g])
        restore_acts(model, saved)
        (fm, fs), (gm, gs) = moments(fy), moments(gy)
        a = f32(gs / fs)
        b = f32(gm - a * fm)
        fns[l] = affine_fn(activation, a, b)
        fits.append({"layer": l, "a": a, "b": b, "target_mean": gm, "target_std": gs,
                     "swapped_mean": fm, "swapped_std": fs})
    saved = set_acts(model, fns)
    ppl = mf.sliding_ppl(model, all_ids, 64, 32)
    restore_acts(model, saved)
    return {"model": str(d.relative_to(FIX)), "activation": activation, "tokens": len(ids),
            "context": context, "windows": len(windows), "layers": fits, "perplexity": ppl}


def make_calibrated() -> None:
    xs = torch.linspace(-30, 30, 1201, dtype=torch.float64)
    xs = torch.cat([xs, torch.tensor([0.0, 1e-6, -1e-6, 87.0, -87.0], dtype=torch.float64)])
    affine = affine_fn("gelu_new", 1.5, 0.25)
    formulas = {
        "x": xs.tolist(),
        "sigmoid_centered": sigmoid_centered(xs).tolist(),
        "sigmoid_scaled": sigmoid_scaled(xs).tolist(),
        "affine(gelu_new,1.5,0.25)": affine(xs).tolist(),
    }
    tiny = FIX / "tiny-gpt2"
    sample = (FIX / "sample.txt").read_text(encoding="utf-8")
    ids = encode(tiny, sample)
    ppl = []
    model = load_dir(tiny)
    n = len(blocks(model))
    for name, fn in [("sigmoid_centered", sigmoid_centered), ("sigmoid_scaled", sigmoid_scaled),
                     ("affine(gelu_new,1.5,0.25)", affine), ("affine(sigmoid,4,-2)", affine_fn("sigmoid", 4.0, -2.0))]:
        saved = set_acts(model, {l: fn for l in range(n)})
        ppl.append({"model": "tiny-gpt2", "activation": name, "context": 64, "stride": 32,
                    **mf.sliding_ppl(model, ids, 64, 32)})
        restore_acts(model, saved)
    llama = FIX / "families" / "llama-gqa"
    llama_ids = encode(llama, sample)
    calibration = [
        calibrate_case(tiny, "sigmoid", ids, 4096, 64, list(range(n))),
        calibrate_case(tiny, "tanh", ids, 1000, 48, [1, 3]),
        calibrate_case(llama, "sigmoid", llama_ids, 4096, 128, [0, 1]),
    ]
    ref = {"version": 1, "generator": "scripts/make_train_fixtures.py", "torch": torch.__version__,
           "transformers": transformers.__version__, "formulas": formulas, "perplexity": ppl,
           "calibration": calibration}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "calibrated.json").write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT / 'calibrated.json'}")


# --------------------------------------------------------------------------- training parity

# Each case trains a fixture checkpoint for STEPS steps of `accumulate` micro-batches of
# `batch_size` sequences of seq_len + 1 tokens (inputs the first seq_len, targets the last).
PARITY = [
    {"model": "tiny-gpt2", "steps": 6, "batch_size": 2, "seq_len": 16, "accumulate": 2, "lr": 3e-3,
     "warmup": 2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0, "seed": 11},
    {"model": "families/llama-gqa", "steps": 6, "batch_size": 2, "seq_len": 24, "accumulate": 3, "lr": 2e-3,
     "warmup": 1, "beta1": 0.9, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.05, "grad_clip": 0.5, "seed": 12},
]


def mlp_weights(model, block) -> dict:
    """Each MLP weight of a block under gpt-ablate's role names."""
    if model.config.model_type == "gpt2":
        return {"fc": block.mlp.c_fc.weight, "proj": block.mlp.c_proj.weight}
    m = block.mlp
    return {"gate": m.gate_proj.weight, "up": m.up_proj.weight, "down": m.down_proj.weight}


def no_decay(name: str, p: torch.Tensor) -> bool:
    """Biases, norm weights and token/position embeddings (a tied head is the embedding)."""
    embeddings = ("wte.weight", "wpe.weight", "embed_tokens.weight")
    return p.dim() < 2 or name.endswith(embeddings)


def parity_batches(ids: list, case: dict) -> list:
    g = torch.Generator().manual_seed(case["seed"])
    n = case["seq_len"] + 1
    out = []
    for _ in range(case["steps"]):
        step = []
        for _ in range(case["accumulate"]):
            starts = torch.randint(0, len(ids) - n, (case["batch_size"],), generator=g).tolist()
            step.append([ids[s:s + n] for s in starts])
        out.append(step)
    return out


def parity_case(case: dict) -> dict:
    d = FIX / case["model"]
    model = load_dir(d)
    batches = parity_batches(encode(d, (FIX / "sample.txt").read_text(encoding="utf-8")), case)
    named = list(model.named_parameters())  # a tied head appears once
    groups = [
        {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": case["weight_decay"]},
        {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=case["lr"], betas=(case["beta1"], case["beta2"]), eps=case["eps"])
    sched = transformers.get_cosine_schedule_with_warmup(opt, case["warmup"], case["steps"])
    blks = blocks(model)
    xin = [None] * len(blks)

    def pre_hook(mod, args, kwargs, l):
        x = args[0] if args else kwargs["hidden_states"]
        x.retain_grad()
        xin[l] = x

    hooks = [b.register_forward_pre_hook(lambda m, a, k, l=l: pre_hook(m, a, k, l), with_kwargs=True)
             for l, b in enumerate(blks)]
    log = []
    k = case["accumulate"]
    for step, micro in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        lr = opt.param_groups[0]["lr"]
        loss_sum, block_sq = 0.0, [0.0] * len(blks)
        for mb in micro:
            t = torch.tensor(mb, dtype=torch.long)
            logits = model(input_ids=t[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t[:, 1:].reshape(-1)) / k
            loss.backward()
            loss_sum += loss.item()
            for l, x in enumerate(xin):
                block_sq[l] += x.grad.double().pow(2).sum().item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), case["grad_clip"]).item()
        # the norms before clipping: clip_grad_norm_ scaled the grads by min(1, c / (norm + 1e-6))
        scale = min(1.0, case["grad_clip"] / (grad_norm + 1e-6))
        layers = [{"layer": l, "block_input": math.sqrt(block_sq[l]),
                   "mlp": {r: w.grad.double().norm().item() / scale for r, w in mlp_weights(model, b).items()}}
                  for l, b in enumerate(blks)]
        opt.step()
        sched.step()
        log.append({"step": step + 1, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "layers": layers})
    for h in hooks:
        h.remove()
    final = f"parity-{case['model'].replace('/', '-')}.safetensors"
    tied = model.config.tie_word_embeddings
    state = {n: p.detach().contiguous() for n, p in model.state_dict().items()
             if not (tied and n == "lm_head.weight")}
    save_file(state, str(OUT / final), metadata={"format": "pt"})
    return {**case, "batches": batches, "log": log, "final_weights": final}


def make_training() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cases = [parity_case(c) for c in PARITY]
    ref = {"version": 1, "generator": "scripts/make_train_fixtures.py", "torch": torch.__version__,
           "transformers": transformers.__version__, "cases": cases}
    (OUT / "parity.json").write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT / 'parity.json'}")


# --------------------------------------------------------------------------- checkpoints

# The checkpoints under tests/fixtures/train/ were written once by `gpt-ablate train` (the
# final/ directory's config.json, model.safetensors and tokenizer.json), from the repository
# root, with these commands:
CHECKPOINT_COMMANDS = {
    "finetuned-gpt2": "gpt-ablate train --init tests/fixtures/tiny-gpt2 --activation sigmoid "
                      "--data tests/fixtures/sample.txt --steps 30 --batch-size 4 --seq-len 32 --lr 2e-3 "
                      "--eval-every 10 --save-every 0 --seed 1 --out OUT",
    "scratch-llama": "gpt-ablate train --from-scratch tests/fixtures/train/scratch-llama.toml "
                     "--data tests/fixtures/sample.txt --steps 30 --batch-size 4 --seq-len 32 --lr 3e-3 "
                     "--eval-every 10 --save-every 0 --seed 2 --out OUT",
}


def make_checkpoints() -> None:
    """transformers loads each checkpoint as it is (AutoModelForCausalLM.from_pretrained)
    and scores sample.txt (make_fixtures.py's sliding-window contract)."""
    sample = (FIX / "sample.txt").read_text(encoding="utf-8")
    entries = []
    for name, command in CHECKPOINT_COMMANDS.items():
        d = OUT / name
        model = load_dir(d)
        ids = encode(d, sample)
        for c, s in [(64, 32), (32, 32)]:
            entries.append({"model": name, "command": command, "activation": own_activation(model.config),
                            "context": c, "stride": s, **mf.sliding_ppl(model, ids, c, s)})
    ref = {"version": 1, "generator": "scripts/make_train_fixtures.py", "torch": torch.__version__,
           "transformers": transformers.__version__, "perplexity": entries}
    (OUT / "checkpoints.json").write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT / 'checkpoints.json'}")


# --------------------------------------------------------------------------- main

PARTS = {"calibrated": make_calibrated, "training": make_training, "checkpoint": make_checkpoints}


def main() -> int:
    global mf
    torch.manual_seed(0)
    torch.set_num_threads(2)
    sys.path.insert(0, str(SCRIPTS))
    mf = importlib.import_module("make_fixtures")
    wanted = sys.argv[1:] or list(PARTS)
    for p in wanted:
        if p not in PARTS:
            print(f"unknown part '{p}'; parts: {', '.join(PARTS)}", file=sys.stderr)
            return 2
        PARTS[p]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
