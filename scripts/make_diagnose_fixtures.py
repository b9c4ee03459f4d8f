#!/usr/bin/env python3
"""Generate ``tests/fixtures/diagnose_reference.json``: PyTorch reference numbers for
``gpt-ablate diagnose`` (per-layer MLP activation statistics, gradient norms, head statistics).

Run from anywhere (paths are resolved from this file's location; a few seconds on one core)::

    python scripts/make_diagnose_fixtures.py

It reads only committed fixtures (``tests/fixtures/tiny-gpt2`` and ``tests/fixtures/sample.txt``)
and reuses the loader and the activation table of ``scripts/make_fixtures.py`` (imported; importing
it regenerates nothing).  It writes only ``tests/fixtures/diagnose_reference.json``.

Model and data
--------------
* ``tests/fixtures/tiny-gpt2`` (bare key layout, 4 layers, n_embd 32, inner 128, n_positions 64)
  loaded by ``make_fixtures.load_bare``: GPT2LMHeadModel, float32, eager attention, ``eval()``
  (no dropout).
* ``tests/fixtures/sample.txt`` read as UTF-8 (no newline translation), encoded as ONE string with
  the model dir's ``tokenizer.json``, no special tokens (3392 ids), then truncated to the first
  ``max_tokens`` = 1000 ids.
* Activation swap: ``model.transformer.h[i].mlp.act`` replaced by the exact PyTorch module of
  ``make_fixtures.ACTIVATIONS[name]`` in the selected layers ("all" or "1,3"); other layers keep
  the checkpoint's own module (``gelu_new`` = transformers ``NewGELUActivation``).
  ``activation: null`` = the checkpoint's own everywhere.  ``per_layer`` = the name in force in
  each layer.

Windows
-------
Context c = 64.  Window k covers tokens [k*c, min((k+1)*c, N)) for k = 0, 1, ... with N = 1000;
a final partial window is included iff it has >= 2 tokens (here: 15 full windows + one of 40
tokens = 16 windows).  Each window is fed alone (positions 0..t-1), batch 1; t = window length.

Per-layer activation statistics (layer l, f = the activation in force in layer l)
---------------------------------------------------------------------------------
h = the output of ``h[l].mlp.c_fc`` (pre-activation, float32, captured by a forward hook), at
every position of every window and every inner unit: N_el = 1000 * 128 elements, pooled over all
windows.  With x = h upcast to float64 (requires_grad), y = f(x) evaluated by the torch module in
float64, and d = torch.autograd.grad(y.sum(), x) (autograd's convention at kinks, e.g.
relu'(0) = 0, relu6'(0) = relu6'(6) = 0, hardsigmoid'(+-3) = 0):

* ``pre_mean``   = mean(h)
* ``pre_std``    = population std of h = sqrt(mean((h - pre_mean)^2))   (divide by N_el)
* ``post_mean``  = mean(y)              (y = f(h) in float64)
* ``post_std``   = population std of y
* ``deriv_mean`` = mean(|d|)
* ``saturated_frac`` = (number of elements with |d| < 0.01) / N_el
All sums in float64 (two-pass: the mean first, then the mean squared deviation).

Gradient norms (layer l)
------------------------
For each window: logits (float32, t x V); loss = mean next-token NLL over the t-1 targets =
``F.cross_entropy(logits[:-1], tokens[1:])`` (float32, mean reduction).  One backward per
window.  x_l = the residual-stream input of block l (the hidden_states entering
``transformer.h[l]``, t x n_embd; x_0 = wte + wpe), captured by a forward pre-hook.

* ``grad_norm``      = mean over windows of ||dloss/dx_l||_F
* ``grad_norm_c_fc`` = mean over windows of ||dloss/d(h[l].mlp.c_fc.weight)||_F  (32 x 128)
The float32 gradients are upcast to float64 for the norm and the mean over windows.

Head (same windows and forward passes)
--------------------------------------
Targets: every position but the first of each window; the logits row z at position i (float32)
predicts token i+1.  ``tokens`` = number of targets (here 15*63 + 39 = 984).

* ``softmax_ppl`` = exp(mean NLL), NLL = -log_softmax(z)[target] computed in float32, the
  per-target values summed in float64 (window order, then position order).  For the null case
  this equals ``make_fixtures.sliding_ppl`` with context 64, stride 64 on the same 1000 ids
  (asserted exactly).
* with z64 = z upcast to float64, S = sum_v sigmoid(z64_v), ls = logsigmoid(z64[target])
  (torch.nn.functional.logsigmoid, numerically stable), all in float64:
  ``sigmoid_mass_mean``      = mean over targets of S
  ``sigmoid_ppl_raw``        = exp(mean over targets of -ls)
  ``sigmoid_ppl_normalized`` = exp(mean over targets of -(ls - log S))

Output
------
{"version": 1, "generator", "torch", "transformers", "model": "tiny-gpt2", "data": "sample.txt",
 "context": 64, "max_tokens": 1000, "windows": 16,
 "cases": [{"activation": null | name, "layer_spec": "all" | "1,3", "per_layer": [4 names],
            "layers": [{"layer", "pre_mean", "pre_std", "post_mean", "post_std", "deriv_mean",
                        "saturated_frac", "grad_norm", "grad_norm_c_fc"} x 4],
            "head": {"tokens", "softmax_ppl", "sigmoid_mass_mean", "sigmoid_ppl_raw",
                     "sigmoid_ppl_normalized"}}, ...]}
Cases: null/"all", "sigmoid"/"all", "relu"/"all", "tanh"/"1,3".  Floats are float64 values
written as the shortest decimal that round-trips (Python repr); one case per line.

Self-checks: null-case softmax_ppl == sliding_ppl (exact) and ~= exp of the token-weighted HF
``labels`` loss; for relu, saturated_frac == fraction of h <= 0 in every layer; the float64 y
matches the model's own float32 activation output (hooked) to float32 precision; an extra
"identity" run (not written) gives deriv_mean == 1, saturated_frac == 0, post == pre stats.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (main() is guarded; importing writes nothing)

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures"
MODEL_DIR = FIX / "tiny-gpt2"
DATA = FIX / "sample.txt"
OUT = FIX / "diagnose_reference.json"

CONTEXT = 64
MAX_TOKENS = 1000
SAT_THRESHOLD = 0.01
CASES = [(None, "all"), ("sigmoid", "all"), ("relu", "all"), ("tanh", "1,3")]


def windows_of(ids: list, c: int) -> list:
    out = []
    for begin in range(0, len(ids), c):
        w = ids[begin : begin + c]
        if len(w) >= 2:
            out.append(w)
    return out


def pop_stats(x: torch.Tensor) -> tuple[float, float]:
    """mean and population std of a float64 tensor (two-pass)."""
    assert x.dtype == torch.float64
    m = x.mean()
    return m.item(), ((x - m) ** 2).mean().sqrt().item()


def run_case(model, windows: list, activation, layer_spec: str) -> dict:
    blocks = model.transformer.h
    n_layer = len(blocks)
    own = model.config.activation_function
    per_layer = [own] * n_layer
    if activation is not None:
        for i in mf.parse_layers(layer_spec, n_layer):
            per_layer[i] = activation

    with mf.Swapped(model, activation, layer_spec) as m:
        acts = [blk.mlp.act for blk in blocks]
        pre = [[] for _ in range(n_layer)]  # float32 h per window
        post32 = [[] for _ in range(n_layer)]  # model's own f(h), float32
        xin = [None] * n_layer
        hooks = []
        for l, blk in enumerate(blocks):
            hooks.append(blk.mlp.c_fc.register_forward_hook(
                lambda mod, a, out, l=l: pre[l].append(out.detach()[0].clone())))
            hooks.append(blk.mlp.act.register_forward_hook(
                lambda mod, a, out, l=l: post32[l].append(out.detach()[0].clone())))

            def pre_hook(mod, args, kwargs, l=l):
                xin[l] = args[0] if args else kwargs["hidden_states"]

            hooks.append(blk.register_forward_pre_hook(pre_hook, with_kwargs=True))

        gn = [[] for _ in range(n_layer)]
        gn_fc = [[] for _ in range(n_layer)]
        nll_sum, n_tgt = 0.0, 0
        mass, ls_raw, ls_norm = [], [], []
        try:
            for w in windows:
                ids = torch.tensor([w], dtype=torch.long)
                logits = m(input_ids=ids, use_cache=False).logits[0]
                assert logits.dtype == torch.float32
                tgt = ids[0, 1:]
                loss = F.cross_entropy(logits[:-1], tgt)
                weights = [blk.mlp.c_fc.weight for blk in blocks]
                grads = torch.autograd.grad(loss, [*xin, *weights])
                for l in range(n_layer):
                    assert grads[l].shape == (1, len(w), model.config.n_embd)  # batch 1
                    gn[l].append(grads[l].double().norm().item())
                    gn_fc[l].append(grads[n_layer + l].double().norm().item())
                # head
                z = logits.detach()[:-1]
                nll = (-torch.log_softmax(z, dim=-1)[torch.arange(len(tgt)), tgt]).tolist()
                for v in nll:
                    nll_sum += v
                n_tgt += len(nll)
                z64 = z.double()
                s = torch.sigmoid(z64).sum(dim=-1)
                ls = F.logsigmoid(z64)[torch.arange(len(tgt)), tgt]
                mass.append(s)
                ls_raw.append(-ls)
                ls_norm.append(-(ls - s.log()))
                xin = [None] * n_layer
        finally:
            for h in hooks:
                h.remove()

        layers = []
        for l in range(n_layer):
            h32 = torch.cat(pre[l])  # (1000, 128) float32
            assert h32.shape == (sum(len(w) for w in windows), blocks[l].mlp.c_fc.nf)
            x = h32.double().requires_grad_()
            y = acts[l](x)
            (d,) = torch.autograd.grad(y.sum(), x)
            y, d = y.detach(), d.abs()
            assert y.dtype == torch.float64 and d.dtype == torch.float64
            # the float64 re-evaluation agrees with what the model computed in float32
            y32 = torch.cat(post32[l]).double()
            assert torch.allclose(y, y32, rtol=1e-5, atol=1e-6), (l, (y - y32).abs().max())
            pm, ps = pop_stats(h32.double())
            qm, qs = pop_stats(y)
            sat = (d < SAT_THRESHOLD).double().mean().item()
            if per_layer[l] == "relu":
                assert sat == (h32 <= 0).double().mean().item(), l
            if per_layer[l] == "identity":
                assert d.mean().item() == 1.0 and sat == 0.0 and (qm, qs) == (pm, ps), l
            layers.append({
                "layer": l,
                "pre_mean": pm,
                "pre_std": ps,
                "post_mean": qm,
                "post_std": qs,
                "deriv_mean": d.mean().item(),
                "saturated_frac": sat,
                "grad_norm": math.fsum(gn[l]) / len(gn[l]),
                "grad_norm_c_fc": math.fsum(gn_fc[l]) / len(gn_fc[l]),
            })

        mean_nll = nll_sum / n_tgt
        head = {
            "tokens": n_tgt,
            "softmax_ppl": math.exp(mean_nll),
            "sigmoid_mass_mean": torch.cat(mass).mean().item(),
            "sigmoid_ppl_raw": math.exp(torch.cat(ls_raw).mean().item()),
            "sigmoid_ppl_normalized": math.exp(torch.cat(ls_norm).mean().item()),
        }
    return {"activation": activation, "layer_spec": layer_spec, "per_layer": per_layer,
            "layers": layers, "head": head}


def main() -> int:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, _ = mf.load_bare(MODEL_DIR)
    assert not model.training
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_positions) == (4, 32, 64), cfg
    assert type(model.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"

    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    all_ids = tok.encode(mf.read_text(DATA), add_special_tokens=False).ids
    assert len(all_ids) == 3392, len(all_ids)
    ref = json.loads((FIX / "reference.json").read_text(encoding="utf-8"))
    assert ref["tokenization"]["ids"] == all_ids  # same tokenization as the main fixtures
    ids = all_ids[:MAX_TOKENS]
    windows = windows_of(ids, CONTEXT)

    cases = [run_case(model, windows, act, spec) for act, spec in CASES]

    # --- self-checks ------------------------------------------------------
    base = cases[0]
    simple = mf.sliding_ppl(model, ids, CONTEXT, CONTEXT)
    assert simple["tokens_scored"] == base["head"]["tokens"], simple
    assert simple["perplexity"] == base["head"]["softmax_ppl"], (simple, base["head"])
    with torch.inference_mode():  # HF's own loss, token-weighted over windows
        tot = sum(model(input_ids=torch.tensor([w]), labels=torch.tensor([w])).loss.item() * (len(w) - 1)
                  for w in windows)
    assert abs(math.exp(tot / simple["tokens_scored"]) / simple["perplexity"] - 1) < 1e-5
    ident = run_case(model, windows, "identity", "all")  # asserts inside; not written
    for a, b in zip(ident["layers"], base["layers"]):
        assert a["layer"] == b["layer"]
    # layers that keep gelu_new in the partial-swap case see the same h as baseline in layer 0
    assert cases[3]["layers"][0]["pre_mean"] == base["layers"][0]["pre_mean"]
    for c in cases:
        for e in c["layers"]:
            for k, v in e.items():
                assert math.isfinite(v), (c["activation"], k, v)

    out = {
        "version": 1,
        "generator": "scripts/make_diagnose_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "tiny-gpt2",
        "data": "sample.txt",
        "context": CONTEXT,
        "max_tokens": MAX_TOKENS,
        "windows": len(windows),
    }
    lines = ["{"]
    for k, v in out.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "cases": [')
    for i, c in enumerate(cases):
        lines.append("    " + json.dumps(c, separators=(", ", ": ")) + ("," if i < len(cases) - 1 else ""))
    lines.append("  ]")
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert json.loads(OUT.read_text(encoding="utf-8"))["cases"] == cases
    size = OUT.stat().st_size
    assert size < 100_000, size

    # --- summary ----------------------------------------------------------
    print(f"tiny-gpt2 on sample.txt: {len(ids)} of {len(all_ids)} tokens, context {CONTEXT}, "
          f"{len(windows)} windows (last {len(windows[-1])} tokens)")
    for c in cases + [ident]:
        name = f"{c['activation']} ({c['layer_spec']})" + ("  [check only, not written]" if c is ident else "")
        print(f"\n{name}: per_layer {','.join(c['per_layer'])}")
        hdr = f"  {'L':>2} {'pre_mean':>10} {'pre_std':>9} {'post_mean':>10} {'post_std':>9} {'deriv':>8} {'sat':>8} {'grad':>10} {'grad_c_fc':>10}"
        print(hdr)
        for e in c["layers"]:
            print(f"  {e['layer']:>2} {e['pre_mean']:>10.5f} {e['pre_std']:>9.5f} {e['post_mean']:>10.5f} "
                  f"{e['post_std']:>9.5f} {e['deriv_mean']:>8.5f} {e['saturated_frac']:>8.5f} "
                  f"{e['grad_norm']:>10.6f} {e['grad_norm_c_fc']:>10.6f}")
        hd = c["head"]
        print(f"  head: tokens {hd['tokens']}  softmax_ppl {hd['softmax_ppl']:.4f}  "
              f"sigmoid_mass_mean {hd['sigmoid_mass_mean']:.4f}  sigmoid_ppl_raw {hd['sigmoid_ppl_raw']:.4f}  "
              f"sigmoid_ppl_normalized {hd['sigmoid_ppl_normalized']:.4f}")
    print(f"\nwrote {OUT.relative_to(REPO)} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
