#!/usr/bin/env python3
"""Generate the test fixtures in ``tests/fixtures/`` for gpt-ablate.

Run from anywhere (paths are resolved from this file's location)::

    python scripts/make_fixtures.py

Inputs (all inside the repo; nothing outside it is read):

* ``data/tinyshakespeare.txt``   Tiny Shakespeare (1,115,394 bytes, ASCII).  The first 90 %
  of its characters (``text[:int(0.9 * len(text))]``, the nanoGPT split) is the training text;
  the last 10 % is held out and only used for ``sample.txt``.
* ``data/wikitext-2-raw-test.txt``   WikiText-2 raw test split, source of ``sample-2.txt``.

Everything it writes (reruns overwrite; fixed seeds; about a minute on 2 CPU cores):

``tests/fixtures/sample.txt``
    ~5 KB of held-out Tiny Shakespeare (starting at the first speaker block after the 90 %
    split point, whole lines) followed by one line of non-English text: Hindi (Devanagari,
    multi-byte UTF-8 and combining marks), accented Latin, an en dash and an emoji (4-byte UTF-8).
    UTF-8, LF line endings, ends with a newline.
``tests/fixtures/sample-2.txt``
    ~2 KB from the start of WikiText-2 raw test (whole lines, unmodified; contains the
    corpus's leading newlines, runs of blank lines, `` @-@ `` and an en dash).
``tests/fixtures/README.md``
    Provenance and licences of the above, the model shapes, and how to regenerate.
``tests/fixtures/<model>/tokenizer.json`` (identical in the four model dirs)
    A byte-level BPE trained with the ``tokenizers`` library on the training text, GPT-2 style:
    no normalizer, ByteLevel pre-tokenizer (add_prefix_space=False, use_regex=True), ByteLevel
    post-processor (trim_offsets=False, adds no tokens; as in the real GPT-2 tokenizer.json),
    ByteLevel decoder, initial alphabet = all 256 ByteLevel symbols (every byte encodes),
    vocab_size 384 including the single special token ``<|endoftext|>`` (which gets id 0).
``tests/fixtures/tiny-gpt2/``
    config.json + tokenizer.json + model.safetensors.  A GPT2LMHeadModel (vocab 384,
    n_positions 64, n_embd 32, n_layer 4, n_head 4, gelu_new, tied embeddings) trained 300
    AdamW steps.  Weights use the *bare* key layout of openai-community/gpt2 (``wte.weight``,
    ``h.0.attn.c_attn.weight``, ..., ``ln_f.bias``; no ``transformer.`` prefix, no lm_head),
    plus the legacy mask buffers ``h.{i}.attn.bias`` (f32 lower-triangular ones, shape
    [1,1,64,64]) and ``h.{i}.attn.masked_bias`` (f32 scalar -1e4) that old checkpoints carry
    and a loader must ignore.  float32, metadata {"format": "pt"}.
``tests/fixtures/tiny-gpt2-f16/``
    The same weights and layout, every tensor (mask buffers too) stored as float16.
``tests/fixtures/tiny-gpt2-sharded/``
    The same float32 weights with ``transformer.``-prefixed keys (no mask buffers, no lm_head),
    split over ``model-00001-of-00002.safetensors`` and ``model-00002-of-00002.safetensors``
    with a standard ``model.safetensors.index.json``.
``tests/fixtures/tiny-gpt2-hf/``
    A second model exercising other config paths: n_inner=80, tie_word_embeddings=False (own
    ``lm_head.weight``), scale_attn_by_inverse_layer_idx=True, layer_norm_epsilon=1e-6; trained
    150 steps from another seed and written by ``save_pretrained`` (``transformer.``-prefixed
    keys + ``lm_head.weight``).
``tests/fixtures/reference.json``
    Reference numbers from Hugging Face transformers (float32, eager attention, eval mode),
    computed by loading every dir back (the f16 one upcast to f32).  Keys:
    ``version`` (1), ``generator``, ``torch``, ``transformers``, ``tokenizer`` (vocab size and
    ``<|endoftext|>`` id), ``activations`` (the 16 names), ``tokenization`` (ids of
    sample.txt and sample-2.txt encoded as one string each, no special tokens), ``logits``
    (full logits for the first 16 ids of sample.txt, for several model/activation/layer
    combinations; floats written as the shortest decimal that round-trips to the float32
    value), ``perplexity`` (sliding-window results, contract below), ``grid`` (activation
    grid against the baseline, below) and ``generation`` (greedy generation, below).  Each
    ``logits``, ``perplexity``, ``grid`` and ``generation`` entry is on its own line.

Activation swap: ``model.transformer.h[i].mlp.act`` is replaced, for the selected layers
("all" or a comma list of indices and inclusive ranges such as "1,3" or "0-1"), by the exact
PyTorch module listed in ``ACTIVATIONS`` below.  ``activation: null`` = the checkpoint's own.

Perplexity contract: N tokens, context c, stride s.  Window k covers tokens
[k*s, min(k*s + c, N)); windows stop after the first one whose end reaches N.  prev_end starts
at 0.  A window scores every target t with max(prev_end, begin + 1) <= t < end, using the
float32 log_softmax of the logits at window position t - 1 - begin (the window's tokens are fed
alone, positions starting at 0); then prev_end = end.  Per-token NLLs are summed in float64 in
increasing t: nll_sum, tokens_scored, mean_nll = nll_sum / tokens_scored,
perplexity = exp(mean_nll).

Grid (``reference.json`` key ``grid``): tiny-gpt2 on sample.txt at context 64, stride 32, one
entry per variant of ``GRID``.  ``activations`` is a spec string (or null = the checkpoint's own
activation everywhere): comma-separated items, each either ``NAME`` (every layer) or
``LAYERS:NAME`` with LAYERS an index or an inclusive range ``a-b``; later items override earlier
ones.  ``per_layer`` lists the activation actually used in each layer.  Besides the perplexity
fields (same contract), each entry has, over exactly the scored targets and computed in the same
windows with the baseline (unswapped) model: ``kl_mean`` = mean over scored tokens of
KL(P_baseline || P_variant) = sum_v p_b(v) * (log p_b(v) - log p_v(v)), where both
log-softmaxes are taken in float32 from the logits at the predicting position, then upcast to
float64, p_b = exp(log p_b) and the vocabulary sum and the mean over tokens are in float64; and
``top1_agreement`` = fraction of scored tokens at which argmax of the baseline logits equals
argmax of the variant logits (torch.argmax, first index on ties).  The baseline entry has
kl_mean 0 and top1_agreement 1 exactly.

Generation (``reference.json`` key ``generation``): tiny-gpt2 (loaded as for the other
references: float32, eager attention, eval mode), one entry per activation null (the
checkpoint's ``gelu_new``), "relu" and "sigmoid" (all layers, swapped as above).  The prompt is
8 consecutive ids of the sample.txt tokenization starting at ``prompt_offset`` (the first offset
in 0, 8, 16, ... for which the decoded prompt re-encodes to the same 8 ids and every entry gets
at least 40 new tokens; it is 0, i.e. ``"GREMIO:\\n"``).  ``new_ids`` = what
``model.generate(input_ids, attention_mask=ones, do_sample=False, max_new_tokens=48,
eos_token_id=0, pad_token_id=0)`` returns after the prompt (KV cache on): greedy argmax, stopping
after 48 new tokens or right after emitting ``<|endoftext|>`` (id 0, then included as the last new
id), whichever comes first; no min_new_tokens, no repetition penalty.

Note: results are bit-reproducible on the same machine/thread count; other CPUs may differ in
the last bits of the trained weights, which is why the fixtures are committed, not regenerated
in CI.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.activations import NewGELUActivation, QuickGELUActivation

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
FIX = REPO / "tests" / "fixtures"

SHAKESPEARE = DATA / "tinyshakespeare.txt"
WIKITEXT = DATA / "wikitext-2-raw-test.txt"

EOT = "<|endoftext|>"
VOCAB_SIZE = 384
N_POSITIONS = 64
SAMPLE_BYTES = 5000
SAMPLE2_CHARS = 2000
LOGITS_LEN = 16
GEN_PROMPT_LEN, GEN_NEW_TOKENS, GEN_MIN_NEW = 8, 48, 40
GEN_ACTIVATIONS = [None, "relu", "sigmoid"]
NON_ENGLISH_LINE = (
    "सिग्मॉइड को बड़े भाषा मॉडलों में क्यों टाला जाता है? "
    "Café, naïve façade, Ångström, señor, déjà vu – ça marche 🚀"
)


class ReLUSquared(nn.Module):
    """relu(x)**2 (same as transformers.activations.ReLUSquaredActivation)."""

    def forward(self, x):
        return torch.square(torch.relu(x))


# name -> factory of the exact PyTorch module used for the reference.
ACTIVATIONS = {
    "gelu_new": NewGELUActivation,  # 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))
    "gelu": lambda: nn.GELU(),  # exact erf GELU
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": QuickGELUActivation,  # x*sigmoid(1.702x)
    "relu": lambda: nn.ReLU(),
    "relu2": ReLUSquared,
    "relu6": lambda: nn.ReLU6(),
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": lambda: nn.ELU(1.0),
    "silu": lambda: nn.SiLU(),
    "sigmoid": lambda: nn.Sigmoid(),
    "hard_sigmoid": lambda: nn.Hardsigmoid(),  # relu6(x+3)/6
    "tanh": lambda: nn.Tanh(),
    "softplus": lambda: nn.Softplus(beta=1.0, threshold=20.0),
    "mish": lambda: nn.Mish(),
    "identity": lambda: nn.Identity(),
}


# Activation grid for reference.json "grid": (name, spec); spec None = checkpoint's own.
GRID = [
    ("baseline", None),
    ("relu", "relu"),
    ("sigmoid", "sigmoid"),
    ("mixed", "0-1:relu,2-3:sigmoid"),
    *[(f"sigmoid-sweep@L{i}", f"{i}:sigmoid") for i in range(4)],
]


# --------------------------------------------------------------------------- texts


def read_text(p: Path) -> str:
    with open(p, encoding="utf-8", newline="") as f:
        return f.read()


def write_text(p: Path, s: str) -> None:
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        f.write(s)


def make_samples(shakespeare: str, wikitext: str):
    n = len(shakespeare)
    split = int(n * 0.9)
    # first speaker block that starts after the split point
    start = shakespeare.index("\n\n", split) + 2
    # whole lines until at least SAMPLE_BYTES bytes, ending at a blank line (end of a speech)
    end = shakespeare.index("\n\n", start + SAMPLE_BYTES) + 1
    excerpt = shakespeare[start:end]
    sample = excerpt + "\n" + NON_ENGLISH_LINE + "\n"
    # wikitext: from the start, whole lines, about SAMPLE2_CHARS characters
    wend = wikitext.index("\n", SAMPLE2_CHARS) + 1
    sample2 = wikitext[:wend]
    prov = {
        "sample_start_char": start,
        "sample_end_char": end,
        "split_char": split,
        "shakespeare_chars": n,
        "sample2_end_char": wend,
        "sample2_end_byte": len(sample2.encode("utf-8")),
    }
    return sample, sample2, prov


# --------------------------------------------------------------------------- tokenizer


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
    # one item per speech block keeps newlines inside the training data
    chunks = [c + "\n\n" for c in train_text.split("\n\n")]
    tok.train_from_iterator(chunks, trainer=trainer)
    return tok


# --------------------------------------------------------------------------- model


def base_config(vocab: int, eot_id: int, **kw) -> GPT2Config:
    cfg = dict(
        vocab_size=vocab,
        n_positions=N_POSITIONS,
        n_embd=32,
        n_layer=4,
        n_head=4,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        tie_word_embeddings=True,
    )
    cfg.update(kw)
    return GPT2Config(**cfg)


def train_model(config: GPT2Config, data: torch.Tensor, steps: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    seq, batch = N_POSITIONS, 16
    loss = None
    for step in range(steps):
        ix = torch.randint(0, len(data) - seq, (batch,), generator=gen)
        x = torch.stack([data[i : i + seq] for i in ix.tolist()])
        out = model(input_ids=x, labels=x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        loss = out.loss.item()
        if step == 0 or (step + 1) % 50 == 0:
            print(f"  step {step + 1:4d}  loss {loss:.4f}", flush=True)
    model.eval()
    return model, loss


def mask_buffers(n_layer: int) -> dict:
    out = {}
    tri = torch.tril(torch.ones(N_POSITIONS, N_POSITIONS, dtype=torch.float32))
    for i in range(n_layer):
        out[f"h.{i}.attn.bias"] = tri.view(1, 1, N_POSITIONS, N_POSITIONS).clone()
        out[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4, dtype=torch.float32)
    return out


def fresh_dir(p: Path) -> Path:
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


def save_st(tensors: dict, path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def write_config(config: GPT2Config, d: Path, dtype: str, extra: dict | None = None) -> None:
    """config.to_json_file (the diff against defaults, as save_pretrained writes it), then make
    tie_word_embeddings and dtype explicit and add any legacy extras (e.g. n_ctx)."""
    config = GPT2Config.from_dict(config.to_dict())
    config.architectures = ["GPT2LMHeadModel"]
    config.to_json_file(str(d / "config.json"))
    cfg = json.loads((d / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    cfg["dtype"] = dtype
    cfg.update(extra or {})
    (d / "config.json").write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")


def write_checkpoints(model: GPT2LMHeadModel, tok_path: Path) -> None:
    config = model.config
    bare = {k: v.detach().clone().float() for k, v in model.transformer.state_dict().items()}
    for k in bare:
        assert not k.startswith("transformer."), k
    buffers = mask_buffers(config.n_layer)

    d = fresh_dir(FIX / "tiny-gpt2")
    save_st({**bare, **buffers}, d / "model.safetensors")
    # n_ctx: legacy key present in openai-community/gpt2's config.json
    write_config(config, d, "float32", {"n_ctx": config.n_positions})
    shutil.copy(tok_path, d / "tokenizer.json")

    d = fresh_dir(FIX / "tiny-gpt2-f16")
    save_st({k: v.half() for k, v in {**bare, **buffers}.items()}, d / "model.safetensors")
    write_config(config, d, "float16")
    shutil.copy(tok_path, d / "tokenizer.json")

    d = fresh_dir(FIX / "tiny-gpt2-sharded")
    pref = {f"transformer.{k}": v for k, v in bare.items()}
    keys = sorted(pref)
    half = len(keys) // 2
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    parts = [keys[:half], keys[half:]]
    weight_map = {}
    for fname, part in zip(files, parts):
        save_st({k: pref[k] for k in part}, d / fname)
        for k in part:
            weight_map[k] = fname
    total = sum(v.numel() * v.element_size() for v in pref.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    write_config(config, d, "float32")
    shutil.copy(tok_path, d / "tokenizer.json")


def write_hf_checkpoint(model: GPT2LMHeadModel, tok_path: Path) -> list:
    d = fresh_dir(FIX / "tiny-gpt2-hf")
    model.config.architectures = ["GPT2LMHeadModel"]
    model.save_pretrained(str(d))
    shutil.copy(tok_path, d / "tokenizer.json")
    st = load_file(str(d / "model.safetensors"))
    if "lm_head.weight" not in st:
        print("  save_pretrained dropped lm_head.weight; rewriting model.safetensors by hand")
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        save_st(sd, d / "model.safetensors")
        st = load_file(str(d / "model.safetensors"))
    assert "lm_head.weight" in st
    assert not torch.equal(st["lm_head.weight"], st["transformer.wte.weight"])
    return sorted(st)


# --------------------------------------------------------------------------- reference


def load_bare(d: Path) -> tuple[GPT2LMHeadModel, list]:
    """Construct the model from config.json and load the bare-layout weights ourselves."""
    config = GPT2Config.from_pretrained(str(d))
    config.dtype = "float32"
    model = GPT2LMHeadModel._from_config(config, attn_implementation="eager", dtype=torch.float32)
    st = load_file(str(d / "model.safetensors"))
    ignored = sorted(k for k in st if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"))
    sd = {f"transformer.{k}": v.float() for k, v in st.items() if k not in ignored}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, sd["transformer.wte.weight"])
    model.eval()
    return model, ignored


def load_hf(d: Path) -> GPT2LMHeadModel:
    model = GPT2LMHeadModel.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def parse_layers(spec: str, n_layer: int) -> list:
    if spec == "all":
        return list(range(n_layer))
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    assert all(0 <= i < n_layer for i in out), spec
    return sorted(set(out))


class Swapped:
    """Context manager: swap mlp.act in the given layers, restore afterwards."""

    def __init__(self, model, activation, layers):
        self.model, self.activation, self.layers = model, activation, layers

    def __enter__(self):
        self.saved = [blk.mlp.act for blk in self.model.transformer.h]
        if self.activation is not None:
            for i in parse_layers(self.layers, len(self.saved)):
                self.model.transformer.h[i].mlp.act = ACTIVATIONS[self.activation]()
        return self.model

    def __exit__(self, *exc):
        for blk, act in zip(self.model.transformer.h, self.saved):
            blk.mlp.act = act


def parse_act_spec(spec: str | None, n_layer: int) -> dict:
    """{layer: activation} overrides of a grid spec ("relu", "0-1:relu,2-3:sigmoid", "2:sigmoid");
    later items override earlier ones; None -> no overrides."""
    out = {}
    if spec is None:
        return out
    for item in spec.split(","):
        if ":" in item:
            layers, act = item.split(":")
            if "-" in layers:
                a, b = layers.split("-")
                idx = range(int(a), int(b) + 1)
            else:
                idx = [int(layers)]
        else:
            act, idx = item, range(n_layer)
        assert act in ACTIVATIONS, spec
        for i in idx:
            assert 0 <= i < n_layer, spec
            out[i] = act
    return out


class SwappedPerLayer:
    """Context manager: swap mlp.act per a grid spec (layers not named keep their module);
    .per_layer = the activation name used in each layer."""

    def __init__(self, model, spec):
        self.model, self.spec = model, spec

    def __enter__(self):
        h = self.model.transformer.h
        self.saved = [blk.mlp.act for blk in h]
        over = parse_act_spec(self.spec, len(h))
        own = self.model.config.activation_function
        self.per_layer = [over.get(i, own) for i in range(len(h))]
        for i, name in over.items():
            h[i].mlp.act = ACTIVATIONS[name]()
        return self

    def __exit__(self, *exc):
        for blk, act in zip(self.model.transformer.h, self.saved):
            blk.mlp.act = act


@torch.inference_mode()
def grid_entry(model, ids, context, stride, spec) -> dict:
    """sliding_ppl of the variant plus KL(baseline || variant) and top-1 agreement per scored
    target, both from the same windows (baseline = the model with no swap)."""
    n = len(ids)
    prev_end, k = 0, 0
    nll_sum, kl_sum, agree, scored = 0.0, 0.0, 0, 0
    with SwappedPerLayer(model, spec) as sw:
        per_layer = sw.per_layer
    while True:
        begin = k * stride
        end = min(begin + context, n)
        window = torch.tensor([ids[begin:end]], dtype=torch.long)
        base = model(input_ids=window).logits[0].float()
        with SwappedPerLayer(model, spec):
            var = model(input_ids=window).logits[0].float()
        first = max(prev_end, begin + 1)
        if first < end:
            tgt = torch.tensor(ids[first:end], dtype=torch.long)
            pos = torch.arange(first - 1 - begin, end - 1 - begin)
            lb = torch.log_softmax(base, dim=-1)[pos]
            lv = torch.log_softmax(var, dim=-1)[pos]
            nll = (-lv[torch.arange(len(pos)), tgt]).tolist()  # float32 values
            for v in nll:
                nll_sum += v
            lb64, lv64 = lb.double(), lv.double()
            kl = (lb64.exp() * (lb64 - lv64)).sum(dim=-1).tolist()
            for v in kl:
                kl_sum += v
            agree += int((base[pos].argmax(dim=-1) == var[pos].argmax(dim=-1)).sum())
            scored += len(nll)
        prev_end = end
        if end >= n:
            break
        k += 1
    mean = nll_sum / scored
    return {
        "per_layer": per_layer,
        "tokens_scored": scored,
        "nll_sum": nll_sum,
        "mean_nll": mean,
        "perplexity": math.exp(mean),
        "kl_mean": kl_sum / scored,
        "top1_agreement": agree / scored,
    }


def f32_list(t: torch.Tensor):
    """Nested lists of floats printed as the shortest decimal that round-trips to float32."""
    a = t.detach().to(torch.float32).numpy()
    if a.ndim == 1:
        # str(np.float32) is the shortest decimal that round-trips to the same float32
        return [float(str(x)) for x in a]
    return [f32_list(torch.from_numpy(r)) for r in a]


@torch.inference_mode()
def logits_of(model, ids) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0].float()


@torch.inference_mode()
def sliding_ppl(model, ids, context, stride) -> dict:
    n = len(ids)
    prev_end = 0
    nll_sum = 0.0
    scored = 0
    k = 0
    while True:
        begin = k * stride
        end = min(begin + context, n)
        window = torch.tensor([ids[begin:end]], dtype=torch.long)
        logits = model(input_ids=window).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        first = max(prev_end, begin + 1)
        if first < end:
            tgt = torch.tensor(ids[first:end], dtype=torch.long)
            pos = torch.arange(first - 1 - begin, end - 1 - begin)
            nll = (-logp[pos, tgt]).tolist()  # float32 values
            for v in nll:
                nll_sum += v
            scored += len(nll)
        prev_end = end
        if end >= n:
            break
        k += 1
    mean = nll_sum / scored
    return {"tokens_scored": scored, "nll_sum": nll_sum, "mean_nll": mean, "perplexity": math.exp(mean)}


@torch.inference_mode()
def greedy_generate(model, prompt_ids, eos_id) -> list:
    """transformers greedy generation; the new ids only (eos included if it stopped there)."""
    x = torch.tensor([prompt_ids], dtype=torch.long)
    out = model.generate(
        x,
        attention_mask=torch.ones_like(x),
        do_sample=False,
        max_new_tokens=GEN_NEW_TOKENS,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    assert out[0, : len(prompt_ids)].tolist() == list(prompt_ids)
    return out[0, len(prompt_ids) :].tolist()


def generation_entries(model, tok, ids, eos_id) -> list:
    """Greedy references for GEN_ACTIVATIONS from the first usable prompt offset (see docstring)."""
    for offset in range(0, len(ids) - GEN_PROMPT_LEN, GEN_PROMPT_LEN):
        prompt = ids[offset : offset + GEN_PROMPT_LEN]
        text = tok.decode(prompt, skip_special_tokens=False)
        if tok.encode(text, add_special_tokens=False).ids != prompt:
            continue
        entries = []
        for act in GEN_ACTIVATIONS:
            with Swapped(model, act, "all") as m:
                new = greedy_generate(m, prompt, eos_id)
            assert len(new) == GEN_NEW_TOKENS or new[-1] == eos_id, (act, new)
            entries.append(
                {"model": "tiny-gpt2", "activation": act, "prompt_offset": offset, "prompt_ids": prompt,
                 "new_ids": new}
            )
        if all(len(e["new_ids"]) >= GEN_MIN_NEW for e in entries):
            return entries
    raise AssertionError("no prompt offset gives every generation entry enough new tokens")


def dump_reference(ref: dict, path: Path) -> None:
    lines = ["{"]
    keys = list(ref)
    for j, key in enumerate(keys):
        comma = "," if j < len(keys) - 1 else ""
        val = ref[key]
        if key in ("logits", "perplexity", "grid", "generation"):
            lines.append(f"  {json.dumps(key)}: [")
            for i, e in enumerate(val):
                c = "," if i < len(val) - 1 else ""
                lines.append("    " + json.dumps(e, ensure_ascii=False, separators=(", ", ": ")) + c)
            lines.append("  ]" + comma)
        else:
            lines.append(f"  {json.dumps(key)}: " + json.dumps(val, ensure_ascii=False, separators=(", ", ": ")) + comma)
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- main


def main() -> int:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    FIX.mkdir(parents=True, exist_ok=True)

    for p in (SHAKESPEARE, WIKITEXT):
        if not p.exists():
            print(f"error: {p} is missing (it is part of the repo: data/)", file=sys.stderr)
            return 1
    shakespeare = read_text(SHAKESPEARE)
    wikitext = read_text(WIKITEXT)
    train_text = shakespeare[: int(len(shakespeare) * 0.9)]

    # 1. texts -----------------------------------------------------------
    sample, sample2, prov = make_samples(shakespeare, wikitext)
    write_text(FIX / "sample.txt", sample)
    write_text(FIX / "sample-2.txt", sample2)
    print(f"sample.txt: {len(sample.encode())} bytes; sample-2.txt: {len(sample2.encode())} bytes")

    # 2. tokenizer -------------------------------------------------------
    tok = train_tokenizer(train_text)
    vocab = tok.get_vocab_size()
    eot_id = tok.token_to_id(EOT)
    assert vocab == VOCAB_SIZE, vocab
    tmpdir = Path(tempfile.mkdtemp(prefix="gpt-ablate-fixtures-"))
    tok_path = tmpdir / "tokenizer.json"  # copied into each model dir below
    tok.save(str(tok_path))
    tok = Tokenizer.from_file(str(tok_path))
    for s in (sample, sample2, NON_ENGLISH_LINE):
        assert tok.decode(tok.encode(s, add_special_tokens=False).ids, skip_special_tokens=False) == s
    print(f"tokenizer: vocab {vocab}, {EOT} = {eot_id}")

    # 3. models ----------------------------------------------------------
    train_ids = torch.tensor(tok.encode(train_text, add_special_tokens=False).ids, dtype=torch.long)
    print(f"training tokens: {len(train_ids)}")
    print("training tiny-gpt2 (300 steps)")
    cfg = base_config(vocab, eot_id)
    model, loss_a = train_model(cfg, train_ids, steps=300, seed=0)
    write_checkpoints(model, tok_path)

    print("training tiny-gpt2-hf (150 steps)")
    cfg_hf = base_config(
        vocab,
        eot_id,
        n_inner=80,
        tie_word_embeddings=False,
        scale_attn_by_inverse_layer_idx=True,
        layer_norm_epsilon=1e-6,
    )
    model_hf, loss_b = train_model(cfg_hf, train_ids, steps=150, seed=1)
    hf_keys = write_hf_checkpoint(model_hf, tok_path)
    shutil.rmtree(tmpdir)

    # 4. reference -------------------------------------------------------
    ids = tok.encode(sample, add_special_tokens=False).ids
    ids2 = tok.encode(sample2, add_special_tokens=False).ids
    first16 = ids[:LOGITS_LEN]

    m_bare, ignored = load_bare(FIX / "tiny-gpt2")
    m_f16, _ = load_bare(FIX / "tiny-gpt2-f16")
    m_sh = load_hf(FIX / "tiny-gpt2-sharded")
    m_hf = load_hf(FIX / "tiny-gpt2-hf")
    models_ = {"tiny-gpt2": m_bare, "tiny-gpt2-f16": m_f16, "tiny-gpt2-sharded": m_sh, "tiny-gpt2-hf": m_hf}

    # cross-checks of the loaders (the trained models used the default sdpa attention)
    model.set_attn_implementation("eager")
    model_hf.set_attn_implementation("eager")
    ref_logits = logits_of(model, first16)
    assert torch.equal(logits_of(m_bare, first16), ref_logits), "bare reload differs from trained model"
    assert torch.equal(logits_of(m_sh, first16), ref_logits), "sharded reload differs"
    assert torch.equal(logits_of(m_hf, first16), logits_of(model_hf, first16)), "hf reload differs"
    try:
        m_bare_hf = load_hf(FIX / "tiny-gpt2")
        bare_via_hf = torch.equal(logits_of(m_bare_hf, first16), ref_logits)
    except Exception as e:  # informational only
        bare_via_hf = f"failed: {e!r}"
    print(f"from_pretrained on the bare dir gives identical logits: {bare_via_hf}")
    f16_dev = (logits_of(m_f16, first16) - ref_logits).abs().max().item()
    print(f"f16 checkpoint max |logit diff| vs f32: {f16_dev:.3g}")

    logits_cases = [
        ("tiny-gpt2", None, "all"),
        ("tiny-gpt2", "sigmoid", "all"),
        ("tiny-gpt2", "relu", "1,3"),
        ("tiny-gpt2-hf", None, "all"),
        ("tiny-gpt2-f16", None, "all"),
        ("tiny-gpt2-sharded", None, "all"),
    ]
    logits_entries = []
    for name, act, layers in logits_cases:
        with Swapped(models_[name], act, layers) as m:
            lg = logits_of(m, first16)
        logits_entries.append(
            {"model": name, "activation": act, "layers": layers, "input_ids": first16, "logits": f32_list(lg)}
        )

    ppl_cases = []
    for act in [None, *ACTIVATIONS]:
        ppl_cases.append(("tiny-gpt2", "sample.txt", act, "all", 64, 32))
    for act in [None, "gelu", "relu", "silu", "sigmoid", "tanh"]:
        ppl_cases.append(("tiny-gpt2", "sample.txt", act, "all", 48, 48))
    ppl_cases.append(("tiny-gpt2", "sample.txt", "relu", "1,3", 64, 32))
    ppl_cases.append(("tiny-gpt2", "sample.txt", "sigmoid", "0", 64, 32))
    for c, s in [(64, 32), (64, 64)]:
        for act in [None, "relu"]:
            ppl_cases.append(("tiny-gpt2-hf", "sample.txt", act, "all", c, s))
    ppl_cases.append(("tiny-gpt2-f16", "sample.txt", None, "all", 64, 32))
    ppl_cases.append(("tiny-gpt2-sharded", "sample.txt", None, "all", 64, 32))
    ppl_cases.append(("tiny-gpt2", "sample-2.txt", None, "all", 64, 32))

    texts = {"sample.txt": ids, "sample-2.txt": ids2}
    ppl_entries = []
    for name, data, act, layers, c, s in ppl_cases:
        with Swapped(models_[name], act, layers) as m:
            r = sliding_ppl(m, texts[data], c, s)
        ppl_entries.append(
            {"model": name, "data": data, "activation": act, "layers": layers, "context": c, "stride": s, **r}
        )

    by = {(e["model"], e["data"], e["activation"], e["layers"], e["context"], e["stride"]): e for e in ppl_entries}
    a = by[("tiny-gpt2", "sample.txt", None, "all", 64, 32)]
    b = by[("tiny-gpt2", "sample.txt", "gelu_new", "all", 64, 32)]
    assert a["nll_sum"] == b["nll_sum"], (a, b)
    assert logits_entries[0]["logits"] == logits_entries[5]["logits"]  # sharded == bare

    grid_entries = []
    for gname, spec in GRID:
        r = grid_entry(m_bare, ids, 64, 32, spec)
        grid_entries.append(
            {"name": gname, "model": "tiny-gpt2", "data": "sample.txt", "context": 64, "stride": 32,
             "activations": spec, **r}
        )
    g = {e["name"]: e for e in grid_entries}
    assert g["baseline"]["kl_mean"] == 0.0 and g["baseline"]["top1_agreement"] == 1.0
    for gname, key in [
        ("baseline", (None, "all")),
        ("relu", ("relu", "all")),
        ("sigmoid", ("sigmoid", "all")),
        ("sigmoid-sweep@L0", ("sigmoid", "0")),
    ]:
        e = by[("tiny-gpt2", "sample.txt", key[0], key[1], 64, 32)]
        assert (g[gname]["nll_sum"], g[gname]["tokens_scored"]) == (e["nll_sum"], e["tokens_scored"]), gname

    gen_entries = generation_entries(m_bare, tok, ids, eot_id)

    ref = {
        "version": 1,
        "generator": "scripts/make_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizer": {"vocab_size": vocab, "endoftext_id": eot_id},
        "activations": list(ACTIVATIONS),
        "tokenization": {
            "model": "tiny-gpt2",
            "data": "sample.txt",
            "n_tokens": len(ids),
            "ids": ids,
            "bytes": len(sample.encode("utf-8")),
        },
        "tokenization_2": {
            "model": "tiny-gpt2",
            "data": "sample-2.txt",
            "n_tokens": len(ids2),
            "ids": ids2,
            "bytes": len(sample2.encode("utf-8")),
        },
        "logits": logits_entries,
        "perplexity": ppl_entries,
        "grid": grid_entries,
        "generation": gen_entries,
    }
    dump_reference(ref, FIX / "reference.json")
    json.loads((FIX / "reference.json").read_text(encoding="utf-8"))  # parses back

    write_readme(prov, vocab, eot_id, len(ids), len(ids2), loss_a, loss_b, hf_keys, ignored)

    # summary ------------------------------------------------------------
    print()
    print(f"final train loss: tiny-gpt2 {loss_a:.4f}   tiny-gpt2-hf {loss_b:.4f}")
    print(f"sample.txt: {len(ids)} tokens, {len(sample.encode())} bytes; sample-2.txt: {len(ids2)} tokens")
    print()
    hdr = f"{'model':<18} {'data':<13} {'activation':<18} {'layers':<6} {'ctx':>4} {'str':>4} {'scored':>6} {'mean_nll':>9} {'ppl':>10}"
    print(hdr)
    print("-" * len(hdr))
    for e in ppl_entries:
        print(
            f"{e['model']:<18} {e['data']:<13} {str(e['activation']):<18} {e['layers']:<6} "
            f"{e['context']:>4} {e['stride']:>4} {e['tokens_scored']:>6} {e['mean_nll']:>9.5f} {e['perplexity']:>10.4f}"
        )
    print()
    hdr = f"{'grid (tiny-gpt2, sample.txt, c=64 s=32)':<40} {'per_layer':<40} {'ppl':>10} {'kl_mean':>10} {'top1':>7}"
    print(hdr)
    print("-" * len(hdr))
    for e in grid_entries:
        print(
            f"{e['name'] + '  ' + str(e['activations']):<40} {','.join(e['per_layer']):<40} "
            f"{e['perplexity']:>10.4f} {e['kl_mean']:>10.6f} {e['top1_agreement']:>7.4f}"
        )
    print()
    for e in gen_entries:
        print(
            f"generation {str(e['activation']):<8} prompt @{e['prompt_offset']} "
            f"{tok.decode(e['prompt_ids'], skip_special_tokens=False)!r} -> {len(e['new_ids'])} new: "
            f"{tok.decode(e['new_ids'], skip_special_tokens=False)!r}"
        )
    total = sum(f.stat().st_size for f in FIX.rglob("*") if f.is_file())
    print(f"\nfixtures total: {total} bytes")
    assert total < 2_000_000, "fixtures exceed 2 MB"
    return 0


def write_readme(prov, vocab, eot_id, n1, n2, loss_a, loss_b, hf_keys, ignored) -> None:
    p = prov
    text = f"""# Test fixtures

Generated by `scripts/make_fixtures.py` (see its docstring for every detail); do not edit by
hand.  Regenerate with `python scripts/make_fixtures.py` (Python deps: `scripts/requirements.txt`;
about a minute on 2 CPU cores).  Versions used: torch {torch.__version__}, transformers
{transformers.__version__}.

## Texts

| file | content | provenance / licence |
|---|---|---|
| `sample.txt` | Characters [{p['sample_start_char']}, {p['sample_end_char']}) of Tiny Shakespeare (`data/tinyshakespeare.txt`, {p['shakespeare_chars']:,} chars), i.e. inside the held-out last 10 % (the split is at char {p['split_char']}, `int(0.9 * len)`; the models never saw it), then a blank line and one line of Hindi / accented Latin / en dash / emoji written for this project. UTF-8, LF. {n1} tokens with the fixture tokenizer. | Tiny Shakespeare (Karpathy's char-rnn corpus; Shakespeare's text is public domain). The last line is original to this project. |
| `sample-2.txt` | The first {p['sample2_end_char']} characters ({p['sample2_end_byte']} bytes, whole lines) of `data/wikitext-2-raw-test.txt`, unmodified (begins with the corpus's own newlines). {n2} tokens. | WikiText-2 raw, test split; Merity et al. 2016, *Pointer Sentinel Mixture Models*; CC BY-SA 3.0. |

## Tokenizer (`*/tokenizer.json`, identical in every model dir)

Byte-level BPE trained with the Python `tokenizers` library on the first 90 % of Tiny
Shakespeare, GPT-2 style: no normalizer; ByteLevel pre-tokenizer (add_prefix_space=false,
use_regex=true); ByteLevel post-processor (adds no tokens); ByteLevel decoder; initial alphabet =
all 256 byte symbols. Vocab size {vocab}; `<|endoftext|>` = {eot_id}.

## Models

All: GPT-2 architecture, vocab {vocab}, n_positions 64, n_embd 32, n_layer 4, n_head 4,
`gelu_new`, dropout 0; trained with AdamW lr 3e-3, batch 16, seq 64 on the tokenized first 90 %
of Tiny Shakespeare.

| dir | weights | layout |
|---|---|---|
| `tiny-gpt2/` | 300 steps, final train loss {loss_a:.4f}; tied embeddings | `model.safetensors`, f32, bare keys (`wte.weight`, `h.0.attn.c_attn.weight`, ...) like openai-community/gpt2, no lm_head, plus legacy mask buffers `h.{{i}}.attn.bias` (1x1x64x64 lower-triangular ones) and `h.{{i}}.attn.masked_bias` (scalar -1e4) that a loader must ignore |
| `tiny-gpt2-f16/` | same as tiny-gpt2 | same layout, every tensor float16 (config.json `dtype: float16`) |
| `tiny-gpt2-sharded/` | same as tiny-gpt2 | f32, `transformer.`-prefixed keys, two shards + `model.safetensors.index.json` |
| `tiny-gpt2-hf/` | 150 steps from seed 1, final train loss {loss_b:.4f}; n_inner 80, untied `lm_head.weight`, `scale_attn_by_inverse_layer_idx`, layer_norm_epsilon 1e-6 | written by transformers `save_pretrained`: keys {', '.join(f'`{k}`' for k in hf_keys[:3])}, ... (`transformer.` prefix + `lm_head.weight`) |

## reference.json

Numbers from Hugging Face transformers (float32, eager attention, `model.eval()`), each model
loaded back from its dir (the f16 weights upcast to f32). Activation swaps replace
`transformer.h[i].mlp.act` with exact PyTorch modules; `"activation": null` means the
checkpoint's own (`gelu_new`). See the script docstring for the sliding-window perplexity
contract and the layer-spec syntax. `generation` holds greedy continuations from
`model.generate` (48 new tokens at most, stopping after `<|endoftext|>`) of tiny-gpt2 with its
own activation, relu and sigmoid, from an 8-token prompt of sample.txt.

## diagnose_reference.json

Reference numbers for `gpt-ablate diagnose`, written by `scripts/make_diagnose_fixtures.py` (its
docstring defines every field): tiny-gpt2 on the first 1000 tokens of sample.txt, context 64
(16 non-overlapping windows), for activation null / sigmoid / relu (all layers) and tanh on layers
1,3 — per layer the pre-/post-activation mean and population std of the `mlp.c_fc` output,
mean |f'(h)| and the fraction with |f'(h)| < 0.01 (float64 autograd), the mean over windows of
the Frobenius norms of dloss/d(block input) and dloss/d(c_fc.weight), plus head softmax /
sigmoid perplexities and the mean sigmoid mass. Regenerate with
`python scripts/make_diagnose_fixtures.py` (seconds; reads only committed fixtures).
"""
    (FIX / "README.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
