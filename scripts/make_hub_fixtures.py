#!/usr/bin/env python3
"""Write ``tests/fixtures/tiny-gpt2-bin/``: the fallback formats a Hub repo may hold.

Run from anywhere (needs torch + transformers; nothing outside the repo is read)::

    python scripts/make_hub_fixtures.py

From ``tests/fixtures/tiny-gpt2-hf/`` (made by make_fixtures.py) it writes, reruns overwrite:

``config.json``        copied unchanged.
``pytorch_model.bin``  the same weights, ``torch.save(model.state_dict())`` (what
                       ``save_pretrained(safe_serialization=False)`` wrote): a zip archive with ``transformer.``-prefixed keys and
                       ``lm_head.weight`` (the model is untied).
``vocab.json``, ``merges.txt``  the BPE vocabulary and merges of ``tokenizer.json``, in the
                       format of the original GPT-2 repo (``#version: 0.2`` header) — and no
                       tokenizer.json, so a loader must build the byte-level BPE itself.

It then checks that a byte-level BPE built by the tokenizers library from vocab.json +
merges.txt reproduces reference.json's tokenization of sample.txt, and that transformers loading
pytorch_model.bin reproduces the logits of the original directory exactly (so the Rust tests can compare against reference.json).
"""

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2LMHeadModel

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
SRC = FIX / "tiny-gpt2-hf"
DST = FIX / "tiny-gpt2-bin"


def main() -> None:
    DST.mkdir(exist_ok=True)
    for p in DST.iterdir():
        p.unlink()
    shutil.copy(SRC / "config.json", DST / "config.json")
    model = GPT2LMHeadModel.from_pretrained(SRC, attn_implementation="eager").eval()
    # transformers 5 writes only safetensors; torch.save of the state dict is what older
    # save_pretrained(safe_serialization=False) wrote (zip archive, one pickle + storages).
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, DST / "pytorch_model.bin")
    assert (DST / "pytorch_model.bin").is_file(), sorted(p.name for p in DST.iterdir())

    tok = json.loads((SRC / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    (DST / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (DST / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")

    # Checks against the original directory and reference.json.
    ref = json.loads((FIX / "reference.json").read_text())
    text = (FIX / "sample.txt").read_text()
    # What transformers' slow-to-fast GPT-2 conversion builds: BPE + ByteLevel, no prefix space.
    bpe = models.BPE.from_file(str(DST / "vocab.json"), str(DST / "merges.txt"))
    built = Tokenizer(bpe)
    built.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    built.add_special_tokens(["<|endoftext|>"])
    ids = built.encode(text, add_special_tokens=False).ids
    assert ref["tokenization"]["data"] == "sample.txt"
    want = ref["tokenization"]["ids"]
    assert ids == want, "vocab+merges tokenization differs from tokenizer.json's"
    loaded = GPT2LMHeadModel.from_pretrained(DST, attn_implementation="eager").eval()
    x = torch.tensor([want[:48]])
    with torch.inference_mode():
        a = model(x).logits
        b = loaded(x).logits
    assert torch.equal(a, b), "pytorch_model.bin logits differ"
    sd = torch.load(DST / "pytorch_model.bin", map_location="cpu", weights_only=True)
    print(f"wrote {DST}: {len(sd)} tensors, keys e.g. {sorted(sd)[:2]}; checks passed")


if __name__ == "__main__":
    main()
