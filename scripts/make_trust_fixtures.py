"""Reference for generating from an empty prompt: what transformers' ``generate`` does when it
is given no input ids (it starts from the model's ``bos_token_id``; gpt-ablate falls back to
the EOS token when a model names no BOS, as the README says).

Writes ``tests/fixtures/empty_prompt_reference.json``: for ``tests/fixtures/tiny-gpt2``, greedy
generation of 24 new tokens from no input; and, for the same weights with ``bos_token_id``
removed from the config and ``eos_token_id`` set to 1 (the test edits a copy so), from that
EOS token given explicitly (transformers refuses no input without a BOS token).

    .venv/bin/python scripts/make_trust_fixtures.py
"""

import json
import sys
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "fixtures" / "tiny-gpt2"
OUT = ROOT / "tests" / "fixtures" / "empty_prompt_reference.json"
NEW_TOKENS = 24


@torch.inference_mode()
def from_nothing(model) -> list:
    """Greedy generation with no input ids: transformers starts from bos_token_id."""
    out = model.generate(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    return out[0].tolist()


@torch.inference_mode()
def from_ids(model, ids: list) -> list:
    x = torch.tensor([ids], dtype=torch.long)
    out = model.generate(
        x, attention_mask=torch.ones_like(x), do_sample=False,
        max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
    )
    return out[0].tolist()


def main() -> int:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL).eval()
    cfg = model.config
    bos, eos = cfg.bos_token_id, cfg.eos_token_id
    model.generation_config.pad_token_id = eos
    with_bos = from_nothing(model)
    assert with_bos[0] == bos, with_bos
    # Without a BOS token the tool starts from EOS: transformers given that token explicitly.
    alt_eos = 1
    with_eos = from_ids(model, [alt_eos])
    ref = {
        "version": 1,
        "generator": "scripts/make_trust_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "tiny-gpt2",
        "new_tokens": NEW_TOKENS,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "from_bos": {"start": [bos], "new_ids": with_bos[1:]},
        "from_eos": {
            "config_edit": {"bos_token_id": None, "eos_token_id": alt_eos},
            "start": [alt_eos],
            "new_ids": with_eos[1:],
        },
    }
    OUT.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
