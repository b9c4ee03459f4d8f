#!/usr/bin/env python3
"""Generate ``tests/fixtures/protocols/``: documents and the numbers the other tools give on
them, for gpt-ablate's ``--protocol lm-eval``, ``llama-cpp`` and ``disjoint``.

Run from anywhere (paths are resolved from this file's location)::

    python scripts/make_protocol_fixtures.py

Needs the Python side of ``scripts/requirements.txt`` (torch, transformers, lm_eval,
accelerate, datasets, pyarrow).  No network: lm-eval reads a local JSONL file through a local
task YAML written to a temporary directory, and every model is a fixture directory.  About a
minute on 2 CPU cores.

Inputs (inside the repo): ``tests/fixtures/sample.txt``, ``tests/fixtures/sample-2.txt`` and
the fixture models ``tests/fixtures/tiny-gpt2`` (GPT-2 byte-level BPE, adds no BOS, no
tokenizer_config.json: transformers' GPT2Tokenizer defaults bos = eos = ``<|endoftext|>``) and
``tests/fixtures/families/llama-gqa`` (a Llama tokenizer whose post-processor adds ``<s>``).

Writes (reruns overwrite):

``docs.jsonl``
    ``DOCS``: one ``{"title", "text", "n"}`` object per line (UTF-8, ``ensure_ascii=False``).
    The documents cover: several rolling windows, an empty document, leading / trailing and
    Unicode whitespace (NBSP, U+001C which Python's ``\\s`` matches and Rust's
    ``char::is_whitespace`` does not, U+2003), multi-byte UTF-8, and documents starting with
    ``<|endoftext|>`` and with ``<s>`` (lm-eval then encodes them without special tokens).
``docs.parquet``
    The same documents as columns ``page`` (string) and ``n`` (int64), snappy, one row group
    (the layout of ``EleutherAI/wikitext_document_level``).
``docs-zstd.parquet``
    The same, zstd, row groups of 3 rows, dictionary-encoded strings.
``wikitext-pages.jsonl``
    ``{"page": ...}`` per line: the first three articles of ``data/wikitext-2-raw-test.txt``
    (from a `` = Title = `` line to the next, lines joined with ``\n``, cut after 1500
    characters at a line end) and one made-up page that exercises every rule of
    ``wikitext_detokenizer``.
``reference.json``
    ``lm_eval``: for each model and ``max_length`` (the model's own, then 24) lm-eval's
    ``word_perplexity``, ``byte_perplexity``, ``bits_per_byte`` (the real harness:
    ``lm_eval.simple_evaluate`` with an ``HFLM`` on CPU, float32, batch size 1, a task with
    ``output_type: loglikelihood_rolling`` and the wikitext task's metrics over ``docs.jsonl``'s
    ``text``), the per-document log-likelihoods lm-eval logged, the ``prefix_token_id`` and
    ``max_length`` it used.  Each is cross-checked here against an independent recomputation
    with transformers of what the harness documents (see ``rolling_ll``).
    ``lm_eval_tokens``: the per-token records of llama-gqa's documents 1 and 5 under lm-eval
    (document, position, token id, text, NLL), for ``--save-nll``.
    ``llama_cpp``: ``cases`` (hand-made per-token NLL lists with llama.cpp's final estimate
    ``PPL = X +/- U``), ``chunking`` (token counts, n_ctx → the scored positions) and
    ``models`` (llama.cpp's scheme applied with transformers: tiny-gpt2 at n_ctx 32, no BOS;
    llama-gqa at n_ctx 64 with BOS, both on sample.txt).
    ``lm_eval_wikitext``: the same for the harness's own ``wikitext`` task functions
    (``preprocess_wikitext.py`` copied from the installed lm_eval: ``doc_to_target`` =
    ``wikitext_detokenizer``, ``process_results`` counting words and bytes on the page as
    stored) over ``wikitext-pages.jsonl``, for both models at their own max_length;
    ``wikitext_detokenized``: ``wikitext_detokenizer`` of each page.
    ``disjoint``: llama-gqa on sample.txt, context 48.
    ``python_whitespace``: the code points Python's ``re`` ``\\s`` matches, as ranges;
    ``word_counts``: strings and ``len(re.split(r"\\s+", s))``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

import lm_eval
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import transformers
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures"
OUT = FIX / "protocols"
MODELS = {"tiny-gpt2": FIX / "tiny-gpt2", "llama-gqa": FIX / "families" / "llama-gqa"}
SHORT_MAX_LENGTH = 24


def read(p: Path) -> str:
    with open(p, encoding="utf-8", newline="") as f:
        return f.read()


def documents() -> list[str]:
    sample, wiki = read(FIX / "sample.txt"), read(FIX / "sample-2.txt")
    hindi = sample.rstrip("\n").split("\n")[-1]
    return [
        sample[:1200],
        "ROMEO:\nGood morrow, cousin.",
        "",
        "  lead\u00a0nbsp\x1cfs tab\tem\u2003space  trailing \n",
        hindi,
        "<|endoftext|>After the end of text.",
        "<s> After a begin token.",
        wiki[:900],
    ]


RULES_PAGE = (
    " = = Rules = = \n 1 @,@ 000 @-@ year ( old , new ) [ a ] { b } \" quoted \" ' single ' "
    "the boys ' game /' 5/ 3 @.@ 5 : x ; y . z ! w ? v , u \n = = = Sub = = = \n = = = = Deep = = = = \n"
    " 20 \u00b0 C and N people 's view \n end \n"
)


def wikitext_pages() -> list[str]:
    lines = read(REPO / "data" / "wikitext-2-raw-test.txt").split("\n")
    starts = [i for i, l in enumerate(lines) if re.fullmatch(r" = [^=].* = ", l)]
    pages = []
    for a, b in zip(starts[:3], starts[1:4]):
        page = ""
        for line in lines[a:b]:
            if len(page) > 1500:
                break
            page += line + "\n"
        pages.append(page)
    return pages + [RULES_PAGE]


def write_docs(docs: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "docs.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"title": f"doc {i}", "text": d, "n": i}, ensure_ascii=False) + "\n")
    table = pa.table({"page": docs, "n": list(range(len(docs)))})
    pq.write_table(table, OUT / "docs.parquet", compression="snappy")
    pq.write_table(table, OUT / "docs-zstd.parquet", compression="zstd", row_group_size=3,
                   use_dictionary=True)


TASK_YAML = """task: gpt_ablate_protocol
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
process_results: !function metrics.process_results
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""

# The wikitext task's process_results (lm_eval/tasks/wikitext/preprocess_wikitext.py), on the
# field scored here.
METRICS_PY = '''import re
def process_results(doc, results):
    (loglikelihood,) = results
    _words = len(re.split(r"\\s+", doc["text"]))
    _bytes = len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, _words),
        "byte_perplexity": (loglikelihood, _bytes),
        "bits_per_byte": (loglikelihood, _bytes),
    }
'''


WIKITEXT_YAML = """task: gpt_ablate_wikitext
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: !function preprocess_wikitext.wikitext_detokenizer
process_results: !function preprocess_wikitext.process_results
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 2.0
"""


def run_lm_eval(task_dir: Path, model_dir: Path, max_length: int | None,
                task: str = "gpt_ablate_protocol") -> dict:
    lm = HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=1,
              max_length=max_length)
    res = lm_eval.simple_evaluate(model=lm, tasks=[task],
                                  task_manager=TaskManager(include_path=str(task_dir)),
                                  log_samples=True)
    r = res["results"][task]
    samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
    return {
        "word_perplexity": r["word_perplexity,none"],
        "byte_perplexity": r["byte_perplexity,none"],
        "bits_per_byte": r["bits_per_byte,none"],
        "doc_loglikelihoods": [float(s["resps"][0][0]) for s in samples],
        "prefix_token_id": lm.prefix_token_id,
        "max_length": lm.max_length,
        "tokenizer": lm.tokenizer,
        "model": lm.model,
    }


def log_probs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def encode_like_lm_eval(tok, prefix: int, doc: str) -> list[int]:
    """HFLM.tok_encode in lm_eval 0.4.13: the tokenizer's default special tokens, unless the
    text starts with the prefix token's text."""
    if doc.startswith(tok.decode(prefix)):
        return tok.encode(doc, add_special_tokens=False)
    return tok.encode(doc)


def rolling_ll(model, tok, prefix: int, max_length: int, doc: str, records=None, doc_id=0):
    """lm-eval's loglikelihood_rolling, recomputed: the document's tokens after the prefix
    token, rolling windows of max_length with one token of context; returns the summed
    log-likelihood (float64 sum of float32 log-probs)."""
    ids = encode_like_lm_eval(tok, prefix, doc)
    seq = [prefix] + ids
    total, predicted, n, L = 0.0, 0, len(ids), max_length
    spans = []
    if n:
        first = min(L, n)
        spans.append((0, first, 1, first + 1))
        predicted = first
    while predicted < n:
        wpl = min(n - predicted, L)
        we = predicted + wpl
        spans.append((we - L, we, predicted + 1, we + 1))
        predicted = we
    for begin, end, s_from, s_end in spans:
        lp = log_probs(model, seq[begin:end])
        for t in range(s_from, s_end):
            v = float(lp[t - 1 - begin, seq[t]])
            total += v
            if records is not None:
                prev = seq[t - 1]
                both, alone = tok.decode([prev, seq[t]]), tok.decode([prev])
                text = both[len(alone):] if both.startswith(alone) else tok.decode([seq[t]])
                records.append({"document": doc_id, "position": t - 1, "token": seq[t],
                                "text": text, "nll": -v})
    return total


def lm_eval_section(docs: list[str]) -> tuple[list, list]:
    out, token_records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = Path(tmp)
        (task_dir / "task.yaml").write_text(TASK_YAML.format(data=OUT / "docs.jsonl"))
        (task_dir / "metrics.py").write_text(METRICS_PY)
        for name, path in MODELS.items():
            for max_length in (None, SHORT_MAX_LENGTH):
                r = run_lm_eval(task_dir, path, max_length)
                tok, model = r.pop("tokenizer"), r.pop("model").eval()
                mine = [rolling_ll(model, tok, r["prefix_token_id"], r["max_length"], d)
                        for d in docs]
                for a, b in zip(mine, r["doc_loglikelihoods"]):
                    assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4), (name, a, b)
                if name == "llama-gqa" and max_length is None:
                    for i in (1, 5):
                        rolling_ll(model, tok, r["prefix_token_id"], r["max_length"], docs[i],
                                   token_records, i)
                out.append({"model": name, "max_length_arg": max_length, **r})
                print(f"lm-eval {name} max_length={r['max_length']}: "
                      f"word {r['word_perplexity']:.6g} byte {r['byte_perplexity']:.6g} "
                      f"bpb {r['bits_per_byte']:.6g}", file=sys.stderr)
    return out, token_records


def lm_eval_wikitext_section() -> list:
    """The harness's wikitext task functions over wikitext-pages.jsonl."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = Path(tmp)
        (task_dir / "wikitext.yaml").write_text(
            WIKITEXT_YAML.format(data=OUT / "wikitext-pages.jsonl"))
        shutil.copy(Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "preprocess_wikitext.py",
                    task_dir / "preprocess_wikitext.py")
        for name, path in MODELS.items():
            r = run_lm_eval(task_dir, path, None, task="gpt_ablate_wikitext")
            r.pop("tokenizer"), r.pop("model")
            out.append({"model": name, "max_length_arg": None, **r})
            print(f"lm-eval wikitext {name}: word {r['word_perplexity']:.6g}", file=sys.stderr)
    return out


def llama_cpp_estimate(values: list[float]) -> dict:
    """The end of llama.cpp's perplexity(): nll and nll2 summed in double, then
    ppl = exp(nll / count) and U = sqrt((nll2 / count - (nll / count)^2) / (count - 1)) * ppl."""
    nll = sum(values)
    nll2 = sum(v * v for v in values)
    count = len(values)
    nll2 /= count
    nll /= count
    ppl = math.exp(nll)
    nll2 -= nll * nll
    plus_minus = math.sqrt(nll2 / (count - 1)) * ppl if nll2 > 0 else None
    return {"count": count, "ppl": ppl, "plus_minus": plus_minus}


def llama_cpp_scored(n_tokens: int, n_ctx: int):
    """Chunks of n_ctx tokens from the start (the partial last one dropped; fewer than 2·n_ctx
    tokens is an error); in each, targets at chunk positions first+1 .. n_ctx-1, first = n_ctx/2."""
    if n_tokens < 2 * n_ctx:
        return None
    first = n_ctx // 2
    return [i * n_ctx + j for i in range(n_tokens // n_ctx) for j in range(first + 1, n_ctx)]


def llama_cpp_model(name: str, path: Path, text: str, n_ctx: int) -> dict:
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager").eval()
    tokens = tok.encode(text)  # common_tokenize(ctx, text, add_special = true)
    plain = tok.encode(text, add_special_tokens=False)
    add_bos = len(tokens) == len(plain) + 1 and tokens[1:] == plain
    bos = tokens[0] if add_bos else None
    values = []
    first = n_ctx // 2
    for i in range(len(tokens) // n_ctx):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if add_bos:
            chunk[0] = bos
        lp = log_probs(model, chunk)
        for j in range(first, n_ctx - 1):
            values.append(-float(lp[j, tokens[i * n_ctx + j + 1]]))
    est = llama_cpp_estimate(values)
    return {"model": name, "data": "sample.txt", "n_ctx": n_ctx, "add_bos": add_bos,
            "bos": bos, "tokens": len(tokens), "nll_sum": sum(values), **est}


def llama_cpp_section() -> dict:
    cases = [[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.75], [2.0, 2.0], [3.25, 0.125, 7.5, 1.0, 4.0]]
    chunking = [(10, 4), (7, 4), (8, 5), (11, 5), (12, 3), (9, 2)]
    text = read(FIX / "sample.txt")
    return {
        "cases": [{"values": v, **llama_cpp_estimate(v)} for v in cases],
        "chunking": [{"tokens": n, "n_ctx": c, "scored": llama_cpp_scored(n, c)}
                     for n, c in chunking],
        "models": [llama_cpp_model("tiny-gpt2", MODELS["tiny-gpt2"], text, 32),
                   llama_cpp_model("llama-gqa", MODELS["llama-gqa"], text, 64)],
    }


def disjoint_section() -> dict:
    path, context = MODELS["llama-gqa"], 48
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok.encode(read(FIX / "sample.txt"), add_special_tokens=False)
    nll, n = 0.0, 0
    for b in range(0, len(ids), context):
        w = ids[b:b + context]
        if len(w) < 2:
            continue
        lp = log_probs(model, w)
        for t in range(1, len(w)):
            nll -= float(lp[t - 1, w[t]])
            n += 1
    return {"model": "llama-gqa", "data": "sample.txt", "context": context,
            "tokens_scored": n, "nll_sum": nll, "perplexity": math.exp(nll / n)}


def whitespace_ranges() -> list:
    ranges, start = [], None
    for c in range(sys.maxunicode + 2):
        hit = c <= sys.maxunicode and re.match(r"\s", chr(c)) is not None
        if hit and start is None:
            start = c
        if not hit and start is not None:
            ranges.append([start, c - 1])
            start = None
    return ranges


def main() -> int:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    docs = documents()
    write_docs(docs)
    pages = wikitext_pages()
    with open(OUT / "wikitext-pages.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for p in pages:
            f.write(json.dumps({"page": p}, ensure_ascii=False) + "\n")
    lm, records = lm_eval_section(docs)
    words = docs + [" a  b ", "\x1c", "x\u200by", "\u0085x\u00a0"]
    ref = {
        "version": 1,
        "generator": "scripts/make_protocol_fixtures.py",
        "lm_eval": lm_eval.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "documents": len(docs),
        "lm_eval_runs": lm,
        "lm_eval_tokens": records,
        "lm_eval_wikitext": lm_eval_wikitext_section(),
        "wikitext_detokenized": [wikitext_detokenizer({"page": p}) for p in pages],
        "llama_cpp": llama_cpp_section(),
        "disjoint": disjoint_section(),
        "python_whitespace": whitespace_ranges(),
        "word_counts": [{"text": s, "words": len(re.split(r"\s+", s))} for s in words],
    }
    with open(OUT / "reference.json", "w", encoding="utf-8") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
