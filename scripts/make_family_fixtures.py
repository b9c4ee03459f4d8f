#!/usr/bin/env python3
"""Generate ``tests/fixtures/families/``: tiny trained checkpoints of four more model families
(GPT-NeoX/Pythia, OPT, Llama, Qwen2) plus Hugging Face reference numbers for gpt-ablate.

Run from anywhere (paths are resolved from this file's location)::

    python scripts/make_family_fixtures.py

Inputs (all inside the repo; nothing else is read):

* ``data/tinyshakespeare.txt``: the first 90 % of its characters
  (``text[:int(0.9 * len(text))]``, the split of make_fixtures.py) is the training text of
  every tokenizer and model.
* ``tests/fixtures/sample.txt`` and ``tests/fixtures/sample-2.txt`` (written by
  make_fixtures.py; read as UTF-8 without newline translation).
* ``scripts/make_fixtures.py`` is imported (for ``ACTIVATIONS``, ``parse_layers``,
  ``sliding_ppl``, ``logits_of``, ``f32_list``); importing it writes nothing (checked: the
  fixtures tree is identical before and after the import).

Everything it writes (reruns overwrite; fixed seeds; about two minutes on one CPU core:
``torch.set_num_threads(1)``, also when more are available):

``tests/fixtures/families/<model>/``  (one dir per entry of ``MODELS``)
    ``config.json`` + ``generation_config.json`` + ``model.safetensors`` (float32, one file)
    written by ``model.save_pretrained`` (transformers 5: tied weights are NOT stored, i.e. no
    ``lm_head.weight`` in tied models), and ``tokenizer.json`` + ``tokenizer_config.json``
    written by ``PreTrainedTokenizerFast(tokenizer_object=...).save_pretrained`` (transformers
    5 writes no ``special_tokens_map.json``; its tokenizer_config.json names the special tokens,
    ``model_max_length`` = the model's max positions and ``tokenizer_class``
    ``"TokenizersBackend"``).  Two dirs (``pythia-parallel``, ``llama-gqa``) then get their
    config.json rewritten into the *legacy* key format that real Hub checkpoints use (see
    "Config formats" below); the script checks that transformers loads both formats to the
    same model.
``tests/fixtures/families/reference.json``
    Reference numbers (below).
``tests/fixtures/README.md``
    The section ``## families/`` is replaced (or appended if missing); the rest is untouched.

Models (all: dropout 0, trained from ``torch.manual_seed(seed)`` for 250 AdamW steps (lr 3e-3,
default betas / weight decay), each step a batch of random windows of the tokenized training text
drawn by a ``torch.Generator`` seeded with ``seed``: batch 16, sequence length = the model's max
positions, 64 or 128 (so every position is trained); ``attn_implementation="eager"``; references
use ``model.eval()``.  opt-post's ``project_in`` / ``project_out`` are re-initialised
N(0, 1/fan_in) before training: with transformers' N(0, 0.02) init it stays at the unigram loss):

==================  =================  ==================================================================
dir                 class              options covered
==================  =================  ==================================================================
pythia-parallel     GPTNeoXForCausal   hidden 32, 3 layers, 2 heads (head 16), inter 128, max_pos 128,
                    LM                 rotary_pct 0.25 (rotary_ndims 4), rotary_emb_base 10000,
                                       use_parallel_residual true, untied ``embed_out``, gelu,
                                       ln eps 1e-5; LEGACY config keys
neox-sequential     GPTNeoXForCausal   hidden 32, 2 layers, 4 heads (head 8), inter 96, max_pos 64,
                    LM                 rotary_pct 1.0, rotary_emb_base 500, use_parallel_residual
                                       false, gelu_new, ln eps 1e-6, untied
opt-pre             OPTForCausalLM     hidden 32, 2 layers, 4 heads, ffn 128, max_pos 64,
                                       do_layer_norm_before true (final_layer_norm present),
                                       word_embed_proj_dim 32 == hidden (no project_in/out), relu,
                                       enable_bias, tied lm_head
opt-post            OPTForCausalLM     hidden 48, word_embed_proj_dim 32 (project_in 32->48 and
                                       project_out 48->32, no bias), 2 layers, 4 heads (head 12),
                                       ffn 96, max_pos 128, do_layer_norm_before false (post-LN, no
                                       decoder final_layer_norm), relu, tied lm_head (32 wide)
llama-gqa           LlamaForCausalLM   hidden 48, 2 layers, 4 heads / 2 kv heads (head 12), inter 128,
                                       max_pos 128, tie_word_embeddings true, silu, rms eps 1e-5,
                                       no biases, rope_theta 10000, llama3 rope scaling (factor 8,
                                       low 1, high 4, original_max_position_embeddings 32);
                                       LEGACY config keys
qwen2-bias          Qwen2ForCausalLM   hidden 48, 2 layers, 4 heads / 2 kv heads, head_dim 16 (!=
                                       48/4), inter 96, max_pos 64, q/k/v biases (no o_proj bias),
                                       untied lm_head, rope_theta 1e6, rms eps 1e-6,
                                       use_sliding_window false, config vocab 448 > tokenizer 419
llama-headdim       LlamaForCausalLM   hidden 32, 3 layers, 2 heads / 2 kv heads, head_dim 24 (!=
                                       32/2), inter 80, max_pos 128, untied lm_head, linear rope
                                       scaling factor 2, attention_bias true (q/k/v AND o_proj
                                       biases), mlp_bias false, rms eps 1e-6
==================  =================  ==================================================================

Llama3 rope: with head_dim 12 and theta 10000 the wavelengths 2*pi/inv_freq are 6.28, 29.2,
135, 628, 2916, 13535; with original length 32 the band limits are 32/4 = 8 and 32/1 = 32, so
inv_freq[0] is unchanged, inv_freq[1] is smoothed and the rest are divided by 8 (asserted:
the model's ``rotary_emb.inv_freq`` differs from the unscaled one exactly there).

Config formats (config.json):

* transformers-5 format (neox-sequential, opt-*, qwen2-bias, llama-headdim): what
  ``save_pretrained`` writes, ``"dtype": "float32"``, and for the RoPE models one
  ``"rope_parameters"`` object: GPT-NeoX ``{"partial_rotary_factor", "rope_theta",
  "rope_type": "default"}`` (no ``rotary_pct`` / ``rotary_emb_base``); Llama ``{"rope_theta",
  "rope_type": "linear", "factor"}``; Qwen2 ``{"rope_theta", "rope_type": "default"}`` plus
  ``"layer_types"``, ``"sliding_window": null``, ``"max_window_layers"``.  ``head_dim`` is
  written by Llama always and by Qwen2 when given (Qwen2Config has no head_dim field; the
  modeling code reads ``getattr(config, "head_dim", hidden/heads)``).
* legacy format (pythia-parallel, llama-gqa), as on the Hub: ``rope_parameters`` removed,
  ``"dtype"`` renamed ``"torch_dtype"``; GPT-NeoX gets ``"rotary_pct"`` and
  ``"rotary_emb_base"``; Llama gets ``"rope_theta"`` and ``"rope_scaling": {"rope_type":
  "llama3", "factor", "low_freq_factor", "high_freq_factor",
  "original_max_position_embeddings"}``.

Tokenizers (trained with the ``tokenizers`` library on the training text, one item per speech
block, as in make_fixtures.py; every one round-trips sample.txt and sample-2.txt exactly,
decode(encode(text)) == text, checked):

* ``neox`` (pythia-parallel, neox-sequential): NFC normalizer (as the real GPT-NeoX-20B
  tokenizer.json; sample texts are NFC already), ByteLevel pre-tokenizer (add_prefix_space
  false, use_regex true), ByteLevel post-processor (adds nothing), ByteLevel decoder; vocab 448
  with ``<|endoftext|>`` = 0 and ``<|padding|>`` = 1.  bos = eos = unk = ``<|endoftext|>``;
  no BOS is added.
* ``opt`` (opt-pre, opt-post): byte-level BPE as above without normalizer, vocab 400 with
  ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 (facebook/opt ids); post-processor
  TemplateProcessing single ``"</s>:0 $A:0"``, pair ``"</s>:0 $A:0 $B:1"`` (what transformers'
  GPT-2 converter builds for OPT's add_bos_token): encoding WITH special tokens prepends
  ``</s>`` (id 2).  bos = eos = ``</s>``, pad ``<pad>``, unk ``<unk>``.
* ``qwen2`` (qwen2-bias): Qwen2-style byte-level BPE: NFC normalizer, pre-tokenizer
  Sequence[Split(Qwen2 regex, isolated), ByteLevel(add_prefix_space false, use_regex false)],
  ByteLevel post-processor and decoder; 416 trained tokens then the added special tokens
  ``<|endoftext|>`` 416, ``<|im_start|>`` 417, ``<|im_end|>`` 418 (tokenizer size 419; the
  model's vocab_size is 448, padded like real Qwen2).  eos = pad = ``<|endoftext|>``, no bos
  token in the tokenizer; config bos_token_id = eos_token_id = 416 (as real Qwen2 base configs).
* ``llama`` (llama-gqa, llama-headdim): SentencePiece-style BPE, vocab 512 = ``<unk>`` 0,
  ``<s>`` 1, ``</s>`` 2, ``<0x00>``..``<0xFF>`` 3..258, then the 253 trained pieces (alphabet +
  merges); model BPE(byte_fallback true, fuse_unk true, unk ``<unk>``); no normalizer;
  pre-tokenizer Metaspace(replacement "▁", prepend_scheme "first", split false) (as
  transformers' LlamaConverter; trained with split true, and split true/false give identical ids
  on the samples, checked); decoder Sequence[Replace("▁"→" "), ByteFallback, Fuse,
  Strip(" ", 1 left, 0 right)]; post-processor TemplateProcessing single ``"<s>:0 $A:0"``, pair
  ``"<s>:0 $A:0 <s>:1 $B:1"``.  Only ``<unk>``, ``<s>``, ``</s>`` are added (special) tokens; the
  byte tokens are plain vocab entries.  The Hindi/emoji line of sample.txt encodes via byte
  fallback (ids 3..258, never ``<unk>``; checked).

Activation swap: in the selected layers ("all" or a comma list of indices / inclusive ranges as
in make_fixtures.py) the MLP activation module is replaced by ``make_fixtures.ACTIVATIONS[name]()``:
GPT-NeoX ``gpt_neox.layers[i].mlp.act``; OPT ``model.decoder.layers[i].activation_fn``; Llama and
Qwen2 ``model.layers[i].mlp.act_fn`` (gated MLP ``down(act(gate(x)) * up(x))``: only the gate's
activation changes).  ``activation: null`` = the checkpoint's own everywhere (gelu / gelu_new /
relu / silu; transformers' ACT2FN modules).

reference.json (``version`` 1, ``generator``, ``torch``, ``transformers``, ``tokenizers``,
``activations`` = the names of make_fixtures.ACTIVATIONS, then the lists below, one entry per
line; all numbers from the dirs loaded back with ``AutoModelForCausalLM.from_pretrained(dir,
dtype=float32, attn_implementation="eager")``, ``eval()``, which are checked to give logits
identical (torch.equal) to the in-memory trained models):

``models``: {``model`` (dir name), ``architecture``, ``model_type``, ``config_format``
    ("transformers-5" | "legacy"), ``tokenizer`` (neox/opt/qwen2/llama), ``own_activation``,
    ``n_layer``, ``max_positions``, ``vocab_size`` (config), ``tokenizer_vocab_size``,
    ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` (config values, null if unset),
    ``train_steps``, ``seed``, ``final_train_loss``}
``param_count``: {``model``, ``param_count`` = sum(p.numel() for p in model.parameters())
    (tied weights counted once), ``saved_numel`` = sum of numel over model.safetensors,
    ``tensors`` = {key: shape} of model.safetensors exactly as saved (sorted keys)}
``tokenization``: per model, {``model``, ``data``: "sample.txt" | "sample-2.txt", ``n_tokens``,
    ``bytes``, ``ids``} = the whole file encoded as ONE string with add_special_tokens=False;
    and {``model``, ``data``: "sample.txt:first_line", ``text`` (first line of sample.txt without
    its newline), ``ids`` (no special tokens), ``ids_with_special_tokens``
    (add_special_tokens=True: OPT prepends 2, Llama prepends 1, neox/qwen2 add nothing)}
``logits``: {``model``, ``activation``, ``layers``, ``input_ids`` (the first 16 ids of the
    sample.txt tokenization, fed as one sequence at positions 0..15, no attention mask),
    ``logits`` (16 x config vocab_size, float32 written as the shortest decimal that round-trips
    to the same float32)}; cases per model: (null, "all"), ("sigmoid", "all"), ("relu", "1").
``perplexity``: {``model``, ``data``, ``activation``, ``layers``, ``context``, ``stride``,
    ``tokens_scored``, ``nll_sum``, ``mean_nll``, ``perplexity``}: make_fixtures.sliding_ppl
    (window k covers [k*s, min(k*s+c, N)); stop after the first window reaching N; score targets
    max(prev_end, begin+1) <= t < end from float32 log_softmax, each window fed alone at
    positions 0..; NLL summed in float64; mean_nll = nll_sum / tokens_scored, perplexity =
    exp(mean_nll)) with context c = max positions and stride c/2; cases per model on sample.txt:
    null, gelu, relu, silu, sigmoid, tanh (all layers), sigmoid on layer "0"; and null on
    sample-2.txt.  (Swapping in the checkpoint's own function gives exactly the null numbers;
    checked where the name exists in ACTIVATIONS.)
``generation``: {``model``, ``activation``, ``layers`` ("all"), ``prompt_offset``,
    ``prompt_ids``, ``new_ids``, ``eos_token_id``, ``max_new_tokens`` (24)}: the prompt is 8
    consecutive ids of the sample.txt tokenization (no special tokens added) at the first
    offset in 0, 8, 16, ... whose decoded text re-encodes to the same 8 ids; ``new_ids`` =
    ``model.generate(ids, attention_mask=ones, do_sample=False, max_new_tokens=24,
    eos_token_id=eos, pad_token_id=pad if set else eos)`` after the prompt (KV cache on): greedy,
    stopping after 24 new ids or right after emitting eos (then included); activations null and
    sigmoid (all layers).
``diagnose``: the definitions of make_diagnose_fixtures.py, per model and for activation null and
    "sigmoid" (all layers): {``model``, ``data`` "sample.txt", ``context`` 64, ``max_tokens`` 256,
    ``windows`` 4, ``activation``, ``layer_spec``, ``per_layer``, ``layers``: [{``layer``,
    ``pre_mean``, ``pre_std``, ``post_mean``, ``post_std``, ``deriv_mean``, ``saturated_frac``,
    ``grad_norm``, ``grad_norm_fc``} per layer], ``head``: {``tokens``, ``softmax_ppl``,
    ``sigmoid_mass_mean``, ``sigmoid_ppl_raw``, ``sigmoid_ppl_normalized``}}.  The first 256
    ids of sample.txt are cut into non-overlapping windows of 64 (a final partial window is kept
    iff it has >= 2 tokens), each fed alone, batch 1.  ``pre`` h = the input of the activation =
    the output of the MLP's first linear: GPT-NeoX ``mlp.dense_h_to_4h``, OPT ``fc1``,
    Llama/Qwen2 ``mlp.gate_proj`` (the gate, NOT multiplied by up_proj); pooled over all
    positions of all windows and all inner units (256 x intermediate elements).  With x = h in
    float64 (requires grad), y = f(x) (the module in force, evaluated in float64) and
    d = autograd.grad(y.sum(), x): pre_mean/pre_std = mean and population std of h, post_mean /
    post_std = of y (for gated MLPs y = act(gate(x)), before the product with up(x)),
    deriv_mean = mean |d|, saturated_frac = fraction with |d| < 0.01; two-pass float64.  Per
    window, loss = F.cross_entropy(logits[:-1], ids[1:]) (float32, mean), one
    autograd.grad: ``grad_norm`` = mean over windows of ||dloss/dx_l||_F with x_l the hidden
    states entering decoder layer l (for OPT-post after project_in + positions);
    ``grad_norm_fc`` = mean over windows of ||dloss/dW||_F for that first linear's weight
    (``dense_h_to_4h.weight``, ``fc1.weight``, ``gate_proj.weight``; shape inter x hidden);
    norms of float32 grads taken in float64.  Head: as make_diagnose_fixtures.py
    (softmax_ppl == sliding_ppl(ids[:256], 64, 64) exactly, checked; sigmoid statistics over the
    config's full vocab_size in float64).

Floats: logits as shortest float32 decimals; everything else as Python float repr (float64).

Note: results are bit-reproducible on the same machine / thread count only; the fixtures are
committed, not regenerated in CI.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import tokenizers
import transformers
from safetensors.torch import load_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
FIX = REPO / "tests" / "fixtures"
FAM = FIX / "families"
SHAKESPEARE = REPO / "data" / "tinyshakespeare.txt"
SAMPLE = FIX / "sample.txt"
SAMPLE2 = FIX / "sample-2.txt"

LR, BATCH = 3e-3, 16
LOGITS_LEN = 16
GEN_PROMPT_LEN, GEN_NEW_TOKENS = 8, 24
DIAG_CONTEXT, DIAG_MAX_TOKENS, SAT_THRESHOLD = 64, 256, 0.01
PPL_ACTIVATIONS = [None, "gelu", "relu", "silu", "sigmoid", "tanh"]
LOGITS_CASES = [(None, "all"), ("sigmoid", "all"), ("relu", "1")]
DIAG_CASES = [(None, "all"), ("sigmoid", "all")]

QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}

# name, tokenizer, class, config, train steps, seed, config.json format
MODELS = [
    dict(
        name="pythia-parallel", tok="neox", cls=GPTNeoXForCausalLM, steps=250, seed=10, legacy=True,
        config=lambda t: GPTNeoXConfig(
            vocab_size=t["vocab"], hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=128, hidden_act="gelu", rotary_pct=0.25, rotary_emb_base=10000,
            max_position_embeddings=128, use_parallel_residual=True, tie_word_embeddings=False,
            layer_norm_eps=1e-5, attention_dropout=0.0, hidden_dropout=0.0,
            bos_token_id=t["bos"], eos_token_id=t["eos"]),
    ),
    dict(
        name="neox-sequential", tok="neox", cls=GPTNeoXForCausalLM, steps=250, seed=11, legacy=False,
        config=lambda t: GPTNeoXConfig(
            vocab_size=t["vocab"], hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=96, hidden_act="gelu_new", rotary_pct=1.0, rotary_emb_base=500,
            max_position_embeddings=64, use_parallel_residual=False, tie_word_embeddings=False,
            layer_norm_eps=1e-6, attention_dropout=0.0, hidden_dropout=0.0,
            bos_token_id=t["bos"], eos_token_id=t["eos"]),
    ),
    dict(
        name="opt-pre", tok="opt", cls=OPTForCausalLM, steps=250, seed=12, legacy=False,
        config=lambda t: OPTConfig(
            vocab_size=t["vocab"], hidden_size=32, word_embed_proj_dim=32, num_hidden_layers=2,
            num_attention_heads=4, ffn_dim=128, max_position_embeddings=64, do_layer_norm_before=True,
            activation_function="relu", enable_bias=True, dropout=0.0, attention_dropout=0.0,
            layerdrop=0.0, tie_word_embeddings=True,
            pad_token_id=t["pad"], bos_token_id=t["bos"], eos_token_id=t["eos"]),
    ),
    dict(
        name="opt-post", tok="opt", cls=OPTForCausalLM, steps=250, seed=13, legacy=False,
        config=lambda t: OPTConfig(
            vocab_size=t["vocab"], hidden_size=48, word_embed_proj_dim=32, num_hidden_layers=2,
            num_attention_heads=4, ffn_dim=96, max_position_embeddings=128, do_layer_norm_before=False,
            activation_function="relu", enable_bias=True, dropout=0.0, attention_dropout=0.0,
            layerdrop=0.0, tie_word_embeddings=True,
            pad_token_id=t["pad"], bos_token_id=t["bos"], eos_token_id=t["eos"]),
    ),
    dict(
        name="llama-gqa", tok="llama", cls=LlamaForCausalLM, steps=250, seed=14, legacy=True,
        config=lambda t: LlamaConfig(
            vocab_size=t["vocab"], hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, hidden_act="silu", max_position_embeddings=128,
            rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=10000.0, rope_scaling=dict(LLAMA3_ROPE),
            attention_bias=False, mlp_bias=False, attention_dropout=0.0,
            bos_token_id=t["bos"], eos_token_id=t["eos"]),
    ),
    dict(
        name="qwen2-bias", tok="qwen2", cls=Qwen2ForCausalLM, steps=250, seed=15, legacy=False,
        config=lambda t: Qwen2Config(
            vocab_size=448, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, intermediate_size=96, hidden_act="silu",
            max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=1000000.0,
            use_sliding_window=False, attention_dropout=0.0,
            bos_token_id=t["eos"], eos_token_id=t["eos"]),
    ),
    dict(
        name="llama-headdim", tok="llama", cls=LlamaForCausalLM, steps=250, seed=16, legacy=False,
        config=lambda t: LlamaConfig(
            vocab_size=t["vocab"], hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=2, head_dim=24, intermediate_size=80, hidden_act="silu",
            max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0,
            rope_scaling={"rope_type": "linear", "factor": 2.0}, attention_bias=True, mlp_bias=False,
            attention_dropout=0.0, bos_token_id=t["bos"], eos_token_id=t["eos"]),
    ),
]

mf = None  # scripts/make_fixtures.py, imported in main()


# --------------------------------------------------------------------------- helpers


def read_text(p: Path) -> str:
    with open(p, encoding="utf-8", newline="") as f:
        return f.read()


def tree_state(root: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def fresh_dir(p: Path) -> Path:
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


# --------------------------------------------------------------------------- tokenizers


def chunks_of(train_text: str) -> list:
    return [c + "\n\n" for c in train_text.split("\n\n")]


def bytelevel_tokenizer(train_text, vocab_size, specials, nfc=False, qwen_split=False) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    if qwen_split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(chunks_of(train_text), trainer=trainer)
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    return tok


def llama_tokenizer(train_text, vocab_size) -> Tokenizer:
    specials = ["<unk>", "<s>", "</s>"]
    base = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=specials, show_progress=False)
    base.train_from_iterator(chunks_of(train_text), trainer=trainer)
    j = json.loads(base.to_str())
    trained, merges = j["model"]["vocab"], j["model"]["merges"]
    vocab = {s: i for i, s in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        if t in specials:
            continue
        assert t not in vocab, t
        vocab[t] = len(vocab)
    assert len(vocab) == vocab_size, len(vocab)
    bpe = models.BPE(vocab=vocab, merges=[tuple(m) for m in merges], unk_token="<unk>",
                     byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)])
    return tok


def build_tokenizers(train_text: str) -> dict:
    """name -> {"tok": Tokenizer, "vocab", "bos", "eos", "pad", "special": kwargs for the HF wrapper}"""
    out = {}

    neox = bytelevel_tokenizer(train_text, 448, ["<|endoftext|>", "<|padding|>"], nfc=True)
    assert (neox.token_to_id("<|endoftext|>"), neox.token_to_id("<|padding|>")) == (0, 1)
    out["neox"] = dict(tok=neox, bos=0, eos=0, pad=None,
                       special=dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"))

    opt = bytelevel_tokenizer(train_text, 400, ["<s>", "<pad>", "</s>", "<unk>"])
    assert [opt.token_to_id(s) for s in ["<s>", "<pad>", "</s>", "<unk>"]] == [0, 1, 2, 3]
    opt.post_processor = processors.TemplateProcessing(
        single="</s>:0 $A:0", pair="</s>:0 $A:0 $B:1", special_tokens=[("</s>", 2)])
    out["opt"] = dict(tok=opt, bos=2, eos=2, pad=1,
                      special=dict(bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"))

    qwen = bytelevel_tokenizer(train_text, 416, [], nfc=True, qwen_split=True)
    qwen.add_special_tokens([AddedToken(s, special=True, normalized=False)
                             for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
    assert [qwen.token_to_id(s) for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]] == [416, 417, 418]
    out["qwen2"] = dict(tok=qwen, bos=None, eos=416, pad=416,
                        special=dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"))

    llama = llama_tokenizer(train_text, 512)
    out["llama"] = dict(tok=llama, bos=1, eos=2, pad=None,
                        special=dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"))

    for name, t in out.items():
        t["vocab"] = t["tok"].get_vocab_size()
        t["json"] = t["tok"].to_str()
    return out


def check_tokenizer(name, tok: Tokenizer, texts: list) -> None:
    for s in texts:
        enc = tok.encode(s, add_special_tokens=False).ids
        assert tok.decode(enc, skip_special_tokens=False) == s, (name, s[:40])
    if name == "llama":
        line = texts[0].rstrip("\n").split("\n")[-1]  # the Hindi / emoji line
        ids = tok.encode(line, add_special_tokens=False).ids
        assert 0 not in ids, "llama tokenizer produced <unk>"
        assert any(3 <= i <= 258 for i in ids), "no byte-fallback tokens for the non-English line"
        # split=True (as trained) and split=False (as saved) agree
        alt = Tokenizer.from_str(tok.to_str())
        alt.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        for s in texts:
            assert alt.encode(s, add_special_tokens=False).ids == tok.encode(s, add_special_tokens=False).ids


def save_tokenizer(t: dict, d: Path, max_pos: int) -> None:
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(t["json"]), model_max_length=max_pos,
                                 **t["special"])
    hf.save_pretrained(str(d))
    assert (d / "tokenizer.json").is_file() and (d / "tokenizer_config.json").is_file()


# --------------------------------------------------------------------------- model plumbing


def blocks(model) -> list:
    mt = model.config.model_type
    if mt == "gpt_neox":
        return list(model.gpt_neox.layers)
    if mt == "opt":
        return list(model.model.decoder.layers)
    assert mt in ("llama", "qwen2"), mt
    return list(model.model.layers)


def act_slot(model, block):
    mt = model.config.model_type
    if mt == "gpt_neox":
        return block.mlp, "act"
    if mt == "opt":
        return block, "activation_fn"
    return block.mlp, "act_fn"


def first_linear(model, block):
    mt = model.config.model_type
    if mt == "gpt_neox":
        return block.mlp.dense_h_to_4h
    if mt == "opt":
        return block.fc1
    return block.mlp.gate_proj


def own_activation(config) -> str:
    return config.activation_function if config.model_type == "opt" else config.hidden_act


class Swapped:
    """Context manager: replace the MLP activation module in the given layers, restore afterwards."""

    def __init__(self, model, activation, layers):
        self.model, self.activation, self.layers = model, activation, layers

    def __enter__(self):
        self.slots = [act_slot(self.model, b) for b in blocks(self.model)]
        self.saved = [getattr(o, a) for o, a in self.slots]
        if self.activation is not None:
            for i in mf.parse_layers(self.layers, len(self.slots)):
                o, a = self.slots[i]
                setattr(o, a, mf.ACTIVATIONS[self.activation]())
        return self.model

    def __exit__(self, *exc):
        for (o, a), m in zip(self.slots, self.saved):
            setattr(o, a, m)


def per_layer_names(model, activation, layer_spec) -> list:
    n = len(blocks(model))
    names = [own_activation(model.config)] * n
    if activation is not None:
        for i in mf.parse_layers(layer_spec, n):
            names[i] = activation
    return names


def train_model(spec: dict, config, data: torch.Tensor):
    torch.manual_seed(spec["seed"])
    model = spec["cls"]._from_config(config, attn_implementation="eager", dtype=torch.float32)
    if config.model_type == "opt" and model.model.decoder.project_in is not None:
        # with the default N(0, 0.02) init of project_in / project_out the model stays stuck at the
        # unigram loss for hundreds of steps; N(0, 1/fan_in) trains like the others
        with torch.no_grad():
            for lin in (model.model.decoder.project_in, model.model.decoder.project_out):
                lin.weight.normal_(0.0, lin.in_features ** -0.5)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(spec["seed"])
    seq = config.max_position_embeddings
    loss = None
    for step in range(spec["steps"]):
        ix = torch.randint(0, len(data) - seq, (BATCH,), generator=gen)
        x = torch.stack([data[i: i + seq] for i in ix.tolist()])
        out = model(input_ids=x, labels=x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        loss = out.loss.item()
        if step == 0 or (step + 1) % 50 == 0:
            print(f"  step {step + 1:4d}  loss {loss:.4f}", flush=True)
    model.eval()
    return model, loss


def legacy_config(d: Path, model_type: str) -> None:
    """Rewrite config.json into the key format of real Hub checkpoints (see docstring)."""
    p = d / "config.json"
    cfg = json.loads(p.read_text())
    rope = cfg.pop("rope_parameters")
    cfg["torch_dtype"] = cfg.pop("dtype")
    if model_type == "gpt_neox":
        assert rope["rope_type"] == "default", rope
        cfg["rotary_pct"] = rope["partial_rotary_factor"]
        cfg["rotary_emb_base"] = rope["rope_theta"]
    else:
        assert model_type == "llama"
        cfg["rope_theta"] = rope.pop("rope_theta")
        cfg["rope_scaling"] = dict(sorted(rope.items()))
    p.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")


def load_dir(d: Path):
    m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def unscaled_inv_freq(config) -> torch.Tensor:
    rp = config.rope_parameters
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * rp.get("partial_rotary_factor", 1.0))
    return 1.0 / (rp["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def rotary_of(model):
    return model.gpt_neox.rotary_emb if model.config.model_type == "gpt_neox" else model.model.rotary_emb


def check_rope(name: str, model) -> str:
    mt = model.config.model_type
    if mt == "opt":
        return "learned positions (offset 2)"
    inv = rotary_of(model).inv_freq
    base = unscaled_inv_freq(model.config)
    rp = model.config.rope_parameters
    if rp["rope_type"] == "default":
        assert torch.allclose(inv, base, rtol=1e-6, atol=0), name
        return f"default: inv_freq ({len(inv)}) = theta^(-2i/d), theta {rp['rope_theta']}"
    if rp["rope_type"] == "linear":
        assert torch.allclose(inv, base / rp["factor"], rtol=1e-6, atol=0), name
        return f"linear: inv_freq = base / {rp['factor']}"
    assert rp["rope_type"] == "llama3", rp
    wavelen = 2 * math.pi / base
    hi = rp["original_max_position_embeddings"] / rp["high_freq_factor"]
    lo = rp["original_max_position_embeddings"] / rp["low_freq_factor"]
    same = (inv == base)
    div = torch.isclose(inv, base / rp["factor"], rtol=1e-6, atol=0)
    assert torch.equal(same, wavelen < hi), (inv, base)
    assert torch.equal(div, wavelen > lo), (inv, base)
    mid = ~same & ~div
    assert same.any() and div.any() and mid.any(), "llama3 scaling should hit all three bands"
    return (f"llama3: {int(same.sum())} unchanged, {int(mid.sum())} smoothed, {int(div.sum())} divided by "
            f"{rp['factor']} (wavelengths {[round(w, 2) for w in wavelen.tolist()]})")


# --------------------------------------------------------------------------- references


@torch.inference_mode()
def greedy_generate(model, prompt, eos, pad) -> list:
    x = torch.tensor([prompt], dtype=torch.long)
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=GEN_NEW_TOKENS,
                         eos_token_id=eos, pad_token_id=pad)
    assert out[0, : len(prompt)].tolist() == list(prompt)
    return out[0, len(prompt):].tolist()


def generation_entries(name, model, tok: Tokenizer, ids) -> list:
    eos = model.config.eos_token_id
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else eos
    for offset in range(0, len(ids) - GEN_PROMPT_LEN, GEN_PROMPT_LEN):
        prompt = ids[offset: offset + GEN_PROMPT_LEN]
        if tok.encode(tok.decode(prompt, skip_special_tokens=False), add_special_tokens=False).ids == prompt:
            break
    else:
        raise AssertionError(f"{name}: no prompt offset re-encodes")
    out = []
    for act in (None, "sigmoid"):
        with Swapped(model, act, "all") as m:
            new = greedy_generate(m, prompt, eos, pad)
        assert len(new) == GEN_NEW_TOKENS or new[-1] == eos, (name, act, new)
        out.append({"model": name, "activation": act, "layers": "all", "prompt_offset": offset,
                    "prompt_ids": prompt, "new_ids": new, "eos_token_id": eos, "max_new_tokens": GEN_NEW_TOKENS})
    return out


def windows_of(ids: list, c: int) -> list:
    return [ids[b: b + c] for b in range(0, len(ids), c) if len(ids[b: b + c]) >= 2]


def pop_stats(x: torch.Tensor) -> tuple:
    assert x.dtype == torch.float64
    m = x.mean()
    return m.item(), ((x - m) ** 2).mean().sqrt().item()


def diagnose_case(name, model, windows, activation, layer_spec) -> dict:
    blks = blocks(model)
    n = len(blks)
    per_layer = per_layer_names(model, activation, layer_spec)
    with Swapped(model, activation, layer_spec) as m:
        acts = [getattr(*act_slot(m, b)) for b in blks]
        assert len({id(a) for a in acts}) == n, "activation modules shared between layers"
        fcs = [first_linear(m, b) for b in blks]
        pre = [[] for _ in range(n)]
        act_in = [[] for _ in range(n)]
        post32 = [[] for _ in range(n)]
        xin = [None] * n
        hooks = []
        for l in range(n):
            hooks.append(fcs[l].register_forward_hook(
                lambda mod, a, out, l=l: pre[l].append(out.detach().reshape(-1, out.shape[-1]).clone())))

            def act_hook(mod, a, out, l=l):
                act_in[l].append(a[0].detach().reshape(-1, a[0].shape[-1]).clone())
                post32[l].append(out.detach().reshape(-1, out.shape[-1]).clone())

            hooks.append(acts[l].register_forward_hook(act_hook))

            def pre_hook(mod, args, kwargs, l=l):
                xin[l] = args[0] if args else kwargs["hidden_states"]

            hooks.append(blks[l].register_forward_pre_hook(pre_hook, with_kwargs=True))

        gn = [[] for _ in range(n)]
        gn_fc = [[] for _ in range(n)]
        nll_sum, n_tgt = 0.0, 0
        mass, ls_raw, ls_norm = [], [], []
        try:
            for w in windows:
                ids = torch.tensor([w], dtype=torch.long)
                logits = m(input_ids=ids, use_cache=False).logits[0]
                assert logits.dtype == torch.float32
                tgt = ids[0, 1:]
                loss = F.cross_entropy(logits[:-1], tgt)
                grads = torch.autograd.grad(loss, [*xin, *[fc.weight for fc in fcs]])
                for l in range(n):
                    assert grads[l].shape[:2] == (1, len(w)), grads[l].shape
                    gn[l].append(grads[l].double().norm().item())
                    gn_fc[l].append(grads[n + l].double().norm().item())
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
                xin = [None] * n
        finally:
            for h in hooks:
                h.remove()

        layers = []
        for l in range(n):
            h32 = torch.cat(pre[l])
            assert h32.shape == (sum(len(w) for w in windows), fcs[l].out_features), h32.shape
            assert torch.equal(h32, torch.cat(act_in[l])), (name, l)  # the activation's input IS the fc output
            x = h32.double().requires_grad_()
            y = acts[l](x)
            (d,) = torch.autograd.grad(y.sum(), x)
            y, d = y.detach(), d.abs()
            y32 = torch.cat(post32[l]).double()
            assert torch.allclose(y, y32, rtol=1e-5, atol=1e-6), (name, l, (y - y32).abs().max())
            pm, ps = pop_stats(h32.double())
            qm, qs = pop_stats(y)
            sat = (d < SAT_THRESHOLD).double().mean().item()
            if per_layer[l] == "relu":
                assert sat == (h32 <= 0).double().mean().item(), l
            layers.append({
                "layer": l, "pre_mean": pm, "pre_std": ps, "post_mean": qm, "post_std": qs,
                "deriv_mean": d.mean().item(), "saturated_frac": sat,
                "grad_norm": math.fsum(gn[l]) / len(gn[l]), "grad_norm_fc": math.fsum(gn_fc[l]) / len(gn_fc[l]),
            })
        head = {
            "tokens": n_tgt,
            "softmax_ppl": math.exp(nll_sum / n_tgt),
            "sigmoid_mass_mean": torch.cat(mass).mean().item(),
            "sigmoid_ppl_raw": math.exp(torch.cat(ls_raw).mean().item()),
            "sigmoid_ppl_normalized": math.exp(torch.cat(ls_norm).mean().item()),
        }
    for e in layers:
        for k, v in e.items():
            assert math.isfinite(v), (name, activation, k, v)
    return {"model": name, "data": "sample.txt", "context": DIAG_CONTEXT, "max_tokens": DIAG_MAX_TOKENS,
            "windows": len(windows), "activation": activation, "layer_spec": layer_spec, "per_layer": per_layer,
            "layers": layers, "head": head}


def dump_reference(ref: dict, path: Path) -> None:
    lines = ["{"]
    keys = list(ref)
    for j, key in enumerate(keys):
        comma = "," if j < len(keys) - 1 else ""
        val = ref[key]
        if isinstance(val, list) and val and isinstance(val[0], dict):
            lines.append(f"  {json.dumps(key)}: [")
            for i, e in enumerate(val):
                c = "," if i < len(val) - 1 else ""
                lines.append("    " + json.dumps(e, ensure_ascii=False, separators=(", ", ": ")) + c)
            lines.append("  ]" + comma)
        else:
            lines.append(f"  {json.dumps(key)}: " + json.dumps(val, ensure_ascii=False, separators=(", ", ": ")) + comma)
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- README


def readme_section(model_rows, sizes) -> str:
    rows = "\n".join(model_rows)
    return f"""## families/

Written by `scripts/make_family_fixtures.py` (its docstring defines every field; 1-2
minutes, one thread; reads only `data/tinyshakespeare.txt`, `sample.txt`, `sample-2.txt`;
rewrites only `families/` and this section).  Seven tiny models of four more architectures,
trained on the first 90 % of Tiny Shakespeare (250 AdamW steps, lr 3e-3, batch 16, sequence
length = max positions), written by transformers `save_pretrained` (float32 `model.safetensors`,
`config.json`, `generation_config.json`) with `tokenizer.json` + `tokenizer_config.json` from
`PreTrainedTokenizerFast.save_pretrained` (transformers 5 writes no `special_tokens_map.json`).
Total size {sizes}.

| dir | class | options covered | final train loss |
|---|---|---|---|
{rows}

Config formats: `pythia-parallel` and `llama-gqa` have their `config.json` rewritten to the
legacy keys real Hub checkpoints use (`rotary_pct` / `rotary_emb_base`; `rope_theta` +
`rope_scaling` with `rope_type: llama3`; `torch_dtype`); the others keep what transformers 5.24
writes (`rope_parameters: {{rope_type, rope_theta, partial_rotary_factor | factor}}`, `dtype`).
transformers loads both to identical logits (checked).

Tokenizers (each trained with the `tokenizers` library on the same text; all round-trip
sample.txt and sample-2.txt):

| tokenizer | used by | design | specials |
|---|---|---|---|
| neox | pythia-parallel, neox-sequential | NFC + GPT-2 style byte-level BPE (ByteLevel pre-tokenizer, add_prefix_space false), vocab 448 | `<\\|endoftext\\|>` 0 (bos = eos = unk), `<\\|padding\\|>` 1; no BOS added |
| opt | opt-pre, opt-post | byte-level BPE, vocab 400; TemplateProcessing `</s> $A` | `<s>` 0, `<pad>` 1, `</s>` 2 (bos = eos), `<unk>` 3; BOS `</s>` added with special tokens |
| qwen2 | qwen2-bias | NFC + Qwen2 Split regex + ByteLevel(use_regex false), 416 tokens + 3 added | `<\\|endoftext\\|>` 416 (eos = pad; config bos = eos = 416), `<\\|im_start\\|>` 417, `<\\|im_end\\|>` 418; config vocab 448 > 419 |
| llama | llama-gqa, llama-headdim | SentencePiece-style BPE with byte_fallback (`<0x00>`..`<0xFF>` = 3..258), Metaspace("▁", prepend_scheme first, split false), decoder Replace/ByteFallback/Fuse/Strip, vocab 512 | `<unk>` 0, `<s>` 1 (prepended with special tokens), `</s>` 2 |

`families/reference.json` (transformers {transformers.__version__}, torch {torch.__version__}; every
model loaded back with `from_pretrained`, float32, eager attention, `eval()`; list entries one
per line): `models` (config summary per dir), `param_count` (parameter count with tied weights
counted once + every saved tensor name and shape), `tokenization` (sample.txt and sample-2.txt
ids without special tokens, and the first line of sample.txt with and without special
tokens), `logits` (first 16 ids of sample.txt, activation null / sigmoid everywhere / relu in
layer 1), `perplexity` (sliding window, context = max positions, stride = context/2; null,
gelu, relu, silu, sigmoid, tanh, sigmoid in layer 0; null on sample-2.txt), `generation` (greedy,
24 new tokens at most, null and sigmoid) and `diagnose` (the make_diagnose_fixtures.py
statistics on the first 256 tokens, context 64, null and sigmoid; `grad_norm_fc` is the
gradient norm of the MLP's first weight: `dense_h_to_4h`, `fc1` or `gate_proj`).  The MLP
activation swapped is `mlp.act` (GPT-NeoX), the decoder layer's `activation_fn` (OPT) or
`mlp.act_fn` (Llama/Qwen2, the gate's activation only).

transformers semantics these fixtures pin down: all weights are `nn.Linear` `[out, in]` (not
GPT-2's Conv1D `[in, out]`); tied models store no `lm_head.weight`; GPT-NeoX's fused
`query_key_value` output is laid out per head (`[head0 q|k|v, head1 q|k|v, ...]`, each
head_size wide), RoPE is rotate-half (not interleaved) on the first `rotary_ndims =
int(head_size * rotary_pct)` dims of each head, parallel residual is `x + attn(ln1(x)) +
mlp(ln2(x))`; OPT position ids are `cumsum(attention_mask) - 1` looked up at row `pos + 2` of
`embed_positions` (max_pos + 2 rows), the query is scaled by head_dim^-0.5 after its bias, LayerNorm
eps is fixed at 1e-5, post-LN layers normalize after each residual add and have no decoder final
LayerNorm, `project_out` precedes the tied head; Llama/Qwen2 GQA maps query head h to kv head
`h // (heads / kv_heads)`, q/k/v projections are `heads * head_dim` wide (head_dim from config,
not hidden/heads), RMSNorm is computed in float32 as `w * x / sqrt(mean(x^2) + eps)`.
"""


def update_readme(section: str) -> None:
    p = FIX / "README.md"
    text = p.read_text(encoding="utf-8") if p.exists() else "# Test fixtures\n"
    head = "## families/\n"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        rest = text[nxt + 1:] if nxt >= 0 else ""
        text = text[:start] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    p.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- main


def main() -> int:
    global mf
    t_start = time.perf_counter()
    torch.manual_seed(0)
    # one thread: these models are tiny, and with 2 threads on a 2-core machine any other busy
    # process (a cargo build) makes OpenMP spin-waits 3-20x slower
    torch.set_num_threads(1)
    for p in (SHAKESPEARE, SAMPLE, SAMPLE2):
        if not p.exists():
            print(f"error: {p} is missing (run scripts/make_fixtures.py first for the samples)", file=sys.stderr)
            return 1

    before = tree_state(FIX)
    sys.path.insert(0, str(SCRIPTS))
    mf = importlib.import_module("make_fixtures")
    assert tree_state(FIX) == before, "importing make_fixtures modified the fixtures"

    shakespeare = read_text(SHAKESPEARE)
    train_text = shakespeare[: int(len(shakespeare) * 0.9)]
    sample, sample2 = read_text(SAMPLE), read_text(SAMPLE2)
    first_line = sample.split("\n", 1)[0]
    texts = {"sample.txt": sample, "sample-2.txt": sample2}

    # 1. tokenizers -------------------------------------------------------
    toks = build_tokenizers(train_text)
    for name, t in toks.items():
        check_tokenizer(name, t["tok"], [sample, sample2])
        print(f"tokenizer {name}: vocab {t['vocab']}, sample.txt {len(t['tok'].encode(sample, add_special_tokens=False).ids)} ids")
    train_ids = {name: torch.tensor(t["tok"].encode(train_text, add_special_tokens=False).ids, dtype=torch.long)
                 for name, t in toks.items()}

    # 2. models -----------------------------------------------------------
    fresh_dir(FAM)
    ref_models, ref_params, ref_tok, ref_logits, ref_ppl, ref_gen, ref_diag = [], [], [], [], [], [], []
    readme_rows = []
    for spec in MODELS:
        name, t = spec["name"], toks[spec["tok"]]
        config = spec["config"](t)
        print(f"training {name} ({spec['steps']} steps)", flush=True)
        t0 = time.perf_counter()
        model, loss = train_model(spec, config, train_ids[spec["tok"]])
        t_train = time.perf_counter() - t0
        d = fresh_dir(FAM / name)
        model.save_pretrained(str(d))
        save_tokenizer(t, d, config.max_position_embeddings)
        if spec["legacy"]:
            legacy_config(d, config.model_type)
        for f in d.iterdir():
            f.chmod(0o644)  # save_pretrained writes model.safetensors as 0600
        assert sorted(p.name for p in d.iterdir()) == [
            "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
        ], sorted(p.name for p in d.iterdir())

        # reload and compare with the in-memory model
        m = load_dir(d)
        assert type(m) is spec["cls"], type(m)
        assert m.config.rope_parameters == model.config.rope_parameters if hasattr(model.config, "rope_parameters") else True
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        ids = {k: tok.encode(v, add_special_tokens=False).ids for k, v in texts.items()}
        assert ids["sample.txt"] == t["tok"].encode(sample, add_special_tokens=False).ids
        hf_tok = AutoTokenizer.from_pretrained(str(d))
        assert hf_tok(sample, add_special_tokens=False)["input_ids"] == ids["sample.txt"], name
        assert hf_tok(first_line)["input_ids"] == tok.encode(first_line).ids, name
        first16 = ids["sample.txt"][:LOGITS_LEN]
        for probe in (first16, ids["sample.txt"][100: 100 + config.max_position_embeddings]):
            assert torch.equal(mf.logits_of(m, probe), mf.logits_of(model, probe)), f"{name}: reload differs"
        for a, b in zip(blocks(m), blocks(model)):
            assert type(getattr(*act_slot(m, a))) is type(getattr(*act_slot(model, b)))
        rope_note = check_rope(name, m)
        print(f"  final loss {loss:.4f}; reload identical; {rope_note}")

        # metadata / params
        st = load_file(str(d / "model.safetensors"))
        assert all(v.dtype == torch.float32 for v in st.values())
        cfgj = json.loads((d / "config.json").read_text())
        ref_models.append({
            "model": name, "architecture": type(m).__name__, "model_type": m.config.model_type,
            "config_format": "legacy" if spec["legacy"] else "transformers-5", "tokenizer": spec["tok"],
            "own_activation": own_activation(m.config), "n_layer": len(blocks(m)),
            "max_positions": m.config.max_position_embeddings, "vocab_size": m.config.vocab_size,
            "tokenizer_vocab_size": tok.get_vocab_size(), "bos_token_id": cfgj.get("bos_token_id"),
            "eos_token_id": cfgj.get("eos_token_id"), "pad_token_id": cfgj.get("pad_token_id"),
            "train_steps": spec["steps"], "seed": spec["seed"], "final_train_loss": loss,
        })
        ref_params.append({
            "model": name,
            "param_count": sum(p.numel() for p in m.parameters()),
            "saved_numel": sum(v.numel() for v in st.values()),
            "tensors": {k: list(st[k].shape) for k in sorted(st)},
        })

        # tokenization
        for data, text in texts.items():
            ref_tok.append({"model": name, "data": data, "n_tokens": len(ids[data]),
                            "bytes": len(text.encode("utf-8")), "ids": ids[data]})
        ref_tok.append({"model": name, "data": "sample.txt:first_line", "text": first_line,
                        "ids": tok.encode(first_line, add_special_tokens=False).ids,
                        "ids_with_special_tokens": tok.encode(first_line, add_special_tokens=True).ids})

        # logits
        for act, layers in LOGITS_CASES:
            with Swapped(m, act, layers) as mm:
                lg = mf.logits_of(mm, first16)
            assert lg.shape == (LOGITS_LEN, m.config.vocab_size)
            ref_logits.append({"model": name, "activation": act, "layers": layers, "input_ids": first16,
                               "logits": mf.f32_list(lg)})

        # perplexity
        c = m.config.max_position_embeddings
        cases = [("sample.txt", a, "all") for a in PPL_ACTIVATIONS]
        cases += [("sample.txt", "sigmoid", "0"), ("sample-2.txt", None, "all")]
        by = {}
        for data, act, layers in cases:
            with Swapped(m, act, layers) as mm:
                r = mf.sliding_ppl(mm, ids[data], c, c // 2)
            e = {"model": name, "data": data, "activation": act, "layers": layers, "context": c, "stride": c // 2, **r}
            by[(data, act, layers)] = e
            ref_ppl.append(e)
        own = own_activation(m.config)
        if own in PPL_ACTIVATIONS:
            assert by[("sample.txt", own, "all")]["nll_sum"] == by[("sample.txt", None, "all")]["nll_sum"], name
        base_ppl = by[("sample.txt", None, "all")]["perplexity"]
        assert base_ppl < 100, (name, base_ppl)  # far from uniform (vocab 400-512)

        # generation
        gen = generation_entries(name, m, tok, ids["sample.txt"])
        ref_gen.extend(gen)

        # diagnose
        diag_ids = ids["sample.txt"][:DIAG_MAX_TOKENS]
        windows = windows_of(diag_ids, DIAG_CONTEXT)
        diag = [diagnose_case(name, m, windows, act, spec_) for act, spec_ in DIAG_CASES]
        simple = mf.sliding_ppl(m, diag_ids, DIAG_CONTEXT, DIAG_CONTEXT)
        assert simple["tokens_scored"] == diag[0]["head"]["tokens"], simple
        assert simple["perplexity"] == diag[0]["head"]["softmax_ppl"], (simple, diag[0]["head"])
        ref_diag.extend(diag)

        print(f"  ppl (c={c}, s={c // 2}): " + ", ".join(
            f"{e['activation'] or 'own'}{'' if e['layers'] == 'all' else '@' + e['layers']}"
            f"{'' if e['data'] == 'sample.txt' else '[s2]'} {e['perplexity']:.2f}"
            for e in ref_ppl if e["model"] == name))
        for g in gen:
            print(f"  gen {str(g['activation']):<8} {tok.decode(g['prompt_ids'])!r} -> "
                  f"{tok.decode(g['new_ids'], skip_special_tokens=False)!r}")
        print(f"  time: train {t_train:.1f} s, references {time.perf_counter() - t0 - t_train:.1f} s", flush=True)
        readme_rows.append(f"| `{name}/` | {type(m).__name__} | {ROW_NOTES[name]} | {loss:.3f} |")

    # 3. reference.json ---------------------------------------------------
    ref = {
        "version": 1,
        "generator": "scripts/make_family_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "activations": list(mf.ACTIVATIONS),
        "models": ref_models,
        "param_count": ref_params,
        "tokenization": ref_tok,
        "logits": ref_logits,
        "perplexity": ref_ppl,
        "generation": ref_gen,
        "diagnose": ref_diag,
    }
    out = FAM / "reference.json"
    dump_reference(ref, out)
    back = json.loads(out.read_text(encoding="utf-8"))
    assert back["diagnose"] == ref_diag and back["perplexity"] == ref_ppl

    dirs_total = sum(f.stat().st_size for f in FAM.rglob("*") if f.is_file() and f.parent != FAM)
    ref_size = out.stat().st_size
    print(f"\nmodel dirs: {dirs_total} bytes; reference.json: {ref_size} bytes; "
          f"total time {time.perf_counter() - t_start:.1f} s")
    assert dirs_total < 3_000_000, dirs_total
    update_readme(readme_section(readme_rows, f"{dirs_total / 1e6:.2f} MB of model dirs + "
                                              f"{ref_size / 1e6:.2f} MB reference.json"))
    return 0


ROW_NOTES = {
    "pythia-parallel": "hidden 32, 3 layers, 2 heads (head 16), inter 128, max_pos 128; rotary_pct 0.25 "
                       "(4 rotary dims), rotary_emb_base 10000, use_parallel_residual true, untied `embed_out`, "
                       "gelu, ln eps 1e-5; **legacy config keys**",
    "neox-sequential": "hidden 32, 2 layers, 4 heads (head 8), inter 96, max_pos 64; rotary_pct 1.0, "
                       "rotary_emb_base 500, use_parallel_residual false, gelu_new, ln eps 1e-6, untied",
    "opt-pre": "hidden 32, 2 layers, 4 heads, ffn 128, max_pos 64 (66 position rows, offset 2); "
               "do_layer_norm_before true (+ decoder `final_layer_norm`), word_embed_proj_dim = hidden, relu, "
               "enable_bias, tied lm_head",
    "opt-post": "hidden 48, word_embed_proj_dim 32 (`project_in` 32→48, `project_out` 48→32, no bias), 2 layers, "
                "4 heads (head 12), ffn 96, max_pos 128; do_layer_norm_before false (post-LN, no decoder final "
                "LN), relu, tied lm_head (32 wide)",
    "llama-gqa": "hidden 48, 2 layers, 4 heads / 2 kv heads (head 12), inter 128, max_pos 128; tied embeddings, "
                 "silu, rms eps 1e-5, no biases, rope_theta 1e4, llama3 rope scaling (factor 8, low 1, high 4, "
                 "original 32: 1 frequency unchanged, 1 smoothed, 4 divided by 8); **legacy config keys**",
    "qwen2-bias": "hidden 48, 2 layers, 4 heads / 2 kv heads, head_dim 16 (≠ 48/4), inter 96, max_pos 64; "
                  "q/k/v biases (no o_proj bias), untied lm_head, rope_theta 1e6, rms eps 1e-6, "
                  "use_sliding_window false, config vocab 448 > tokenizer 419",
    "llama-headdim": "hidden 32, 3 layers, 2 heads = 2 kv heads, head_dim 24 (≠ 32/2), inter 80, max_pos 128; "
                     "untied lm_head, linear rope scaling factor 2, attention_bias true (q/k/v and o_proj biases), "
                     "mlp_bias false, rms eps 1e-6",
}


if __name__ == "__main__":
    sys.exit(main())
