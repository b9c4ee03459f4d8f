//! Protocols against the tools they reproduce: lm-evaluation-harness (run for real by
//! `scripts/make_protocol_fixtures.py` on two tokenizers), llama.cpp's chunking and
//! `PPL = X +/- U` (a from-the-source reference on hand-made cases and with transformers on
//! two models), `disjoint` windows; per-token output; Parquet documents and their errors.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use common::{fixture, run_json};
use serde_json::Value;

fn protocols(name: &str) -> PathBuf {
    fixture("protocols").join(name)
}

/// `tests/fixtures/protocols/reference.json`.
fn reference() -> Value {
    let text = std::fs::read_to_string(protocols("reference.json")).expect("reference.json");
    let r: Value = serde_json::from_str(&text).expect("reference.json parses");
    assert_eq!(r["version"], 1);
    r
}

fn model_dir(name: &str) -> PathBuf {
    match name {
        "tiny-gpt2" => fixture("tiny-gpt2"),
        other => fixture("families").join(other),
    }
}

fn ppl(model: &Path, data: &Path, extra: &[&str]) -> Command {
    let mut c = Command::cargo_bin("gpt-ablate").unwrap();
    c.arg("perplexity")
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(extra)
        .arg("--json");
    c
}

fn assert_rel(got: &Value, want: &Value, tol: f64, what: &str) {
    let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
    assert!(
        ((g - w) / w).abs() <= tol,
        "{what}: got {g}, want {w} (rel {:.2e})",
        ((g - w) / w).abs()
    );
}

/// Runs `perplexity --protocol lm-eval` and checks the three metrics against one lm-eval run.
fn check_lm_eval(run: &Value, data: &Path, extra: &[&str]) -> Value {
    let model = model_dir(run["model"].as_str().unwrap());
    let mut args = vec!["--protocol", "lm-eval"];
    let max_length = run["max_length_arg"].as_u64().map(|m| m.to_string());
    if let Some(m) = &max_length {
        args.extend(["--max-length", m.as_str()]);
    }
    args.extend(extra);
    let (got, _) = run_json(&mut ppl(&model, data, &args));
    let what = format!(
        "{} max_length {:?} {}",
        run["model"],
        max_length,
        data.display()
    );
    for key in ["word_perplexity", "byte_perplexity", "bits_per_byte"] {
        assert_rel(&got[key], &run[key], 1e-5, &format!("{what}: {key}"));
    }
    assert_eq!(got["documents"], 8, "{what}");
    let protocol = &got["protocol"];
    assert_eq!(protocol["name"], "lm-eval");
    assert_eq!(protocol["max_length"], run["max_length"], "{what}");
    assert_eq!(protocol["prefix_token"], run["prefix_token_id"], "{what}");
    got
}

#[test]
fn lm_eval_metrics_match_the_harness_on_two_tokenizers() {
    let r = reference();
    let runs = r["lm_eval_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for run in runs {
        check_lm_eval(run, &protocols("docs.jsonl"), &[]);
    }
    // The same documents from Parquet: snappy, and zstd in row groups of 3.
    check_lm_eval(
        &runs[2],
        &protocols("docs.parquet"),
        &["--text-field", "page"],
    );
    check_lm_eval(
        &runs[1],
        &protocols("docs-zstd.parquet"),
        &["--text-field", "page"],
    );
}

#[test]
fn the_wikitext_task_is_reproduced_with_its_detokenizer() {
    use gpt_ablate::eval::detokenize::wikitext_detokenize;
    let r = reference();
    let pages = protocols("wikitext-pages.jsonl");
    let text = std::fs::read_to_string(&pages).unwrap();
    let want = r["wikitext_detokenized"].as_array().unwrap();
    for (line, want) in text.lines().zip(want) {
        let page: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            wikitext_detokenize(page["page"].as_str().unwrap()),
            want.as_str().unwrap()
        );
    }
    for run in r["lm_eval_wikitext"].as_array().unwrap() {
        let model = model_dir(run["model"].as_str().unwrap());
        let args = [
            "--protocol",
            "lm-eval",
            "--detokenize",
            "wikitext",
            "--text-field",
            "page",
        ];
        let (got, _) = run_json(&mut ppl(&model, &pages, &args));
        for key in ["word_perplexity", "byte_perplexity", "bits_per_byte"] {
            assert_rel(
                &got[key],
                &run[key],
                1e-5,
                &format!("wikitext {}: {key}", run["model"]),
            );
        }
        assert_eq!(got["protocol"]["detokenize"], "wikitext");
    }
}

#[test]
fn per_token_records_match_the_reference_and_the_totals() {
    let r = reference();
    let run = &r["lm_eval_runs"][2]; // llama-gqa, its own max_length: BOS is scored
    assert_eq!(run["model"], "llama-gqa");
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("nll.jsonl");
    let save = ["--save-nll", jsonl.to_str().unwrap()];
    let got = check_lm_eval(run, &protocols("docs.jsonl"), &save);
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, got["tokens_scored"].as_u64().unwrap());
    assert_eq!(got["save_nll"]["records"], lines.len());
    let sum: f64 = lines.iter().map(|l| l["nll"].as_f64().unwrap()).sum();
    assert_rel(&Value::from(sum), &got["nll_sum"], 1e-9, "Σ nll");
    for want in r["lm_eval_tokens"].as_array().unwrap() {
        let g = lines
            .iter()
            .find(|l| l["document"] == want["document"] && l["position"] == want["position"])
            .unwrap_or_else(|| panic!("no record for {want}"));
        assert_eq!(
            (&g["token"], &g["text"]),
            (&want["token"], &want["text"]),
            "{want}"
        );
        let (a, b) = (g["nll"].as_f64().unwrap(), want["nll"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-4, "{want}: nll {a}");
    }
    // Parquet holds the same records.
    let pq = tmp.path().join("nll.parquet");
    let save = ["--save-nll", pq.to_str().unwrap()];
    check_lm_eval(run, &protocols("docs.jsonl"), &save);
    let rows = read_parquet_records(&pq);
    assert_eq!(rows.len(), lines.len());
    for (row, line) in rows.iter().zip(&lines) {
        assert_eq!(row.0, line["document"].as_i64().unwrap());
        assert_eq!(row.1, line["position"].as_i64().unwrap());
        assert_eq!(row.2, line["token"].as_i64().unwrap());
        assert_eq!(row.3, line["text"].as_str().unwrap());
        assert!((row.4 - line["nll"].as_f64().unwrap()).abs() < 1e-12);
    }
}

/// (document, position, token, text, nll) of every row of a `--save-nll` Parquet file.
fn read_parquet_records(path: &Path) -> Vec<(i64, i64, i64, String, f64)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    assert_eq!(names, ["document", "position", "token", "text", "nll"]);
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            (
                row.get_long(0).unwrap(),
                row.get_long(1).unwrap(),
                row.get_long(2).unwrap(),
                row.get_string(3).unwrap().clone(),
                row.get_double(4).unwrap(),
            )
        })
        .collect()
}

#[test]
fn llama_cpp_matches_its_formula_and_chunking() {
    use gpt_ablate::eval::plan::ScoringPlan;
    use gpt_ablate::eval::uncertainty::nll_spread;
    let r = reference();
    for case in r["llama_cpp"]["cases"].as_array().unwrap() {
        let v: Vec<f64> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let s = nll_spread(v.len(), v.iter().sum(), v.iter().map(|x| x * x).sum());
        let ppl = (v.iter().sum::<f64>() / v.len() as f64).exp();
        assert_rel(&Value::from(ppl), &case["ppl"], 1e-12, "ppl");
        match case["plus_minus"].as_f64() {
            Some(u) => assert_rel(
                &Value::from(s.llama_cpp_plus_minus.unwrap()),
                &Value::from(u),
                1e-12,
                "U",
            ),
            None => assert_eq!(s.llama_cpp_plus_minus, None, "{case}"),
        }
    }
    for case in r["llama_cpp"]["chunking"].as_array().unwrap() {
        let n = case["tokens"].as_u64().unwrap() as usize;
        let c = case["n_ctx"].as_u64().unwrap() as usize;
        let tokens: Vec<u32> = (0..n as u32).collect();
        match ScoringPlan::llama_cpp(&tokens, c, None) {
            Ok(plan) => {
                let scored: Vec<i64> = plan
                    .windows
                    .iter()
                    .flat_map(|w| {
                        let seq = &plan.sequences[w.seq];
                        (w.score_from..w.score_end).map(move |t| seq.position(t))
                    })
                    .collect();
                let want: Vec<i64> = case["scored"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect();
                assert_eq!(scored, want, "{case}");
            }
            Err(e) => assert!(case["scored"].is_null(), "{case}: {e}"),
        }
    }
}

#[test]
fn llama_cpp_protocol_matches_the_reference_on_two_models() {
    let r = reference();
    for m in r["llama_cpp"]["models"].as_array().unwrap() {
        let ctx = m["n_ctx"].to_string();
        let args = ["--protocol", "llama-cpp", "--context", ctx.as_str()];
        let (got, _) = run_json(&mut ppl(
            &model_dir(m["model"].as_str().unwrap()),
            &fixture("sample.txt"),
            &args,
        ));
        assert_eq!(got["tokens_scored"], m["count"], "{m}");
        assert_eq!(got["tokens"], m["tokens"], "{m}");
        assert_eq!(got["protocol"]["add_bos"], m["add_bos"], "{m}");
        assert_eq!(got["protocol"]["bos_token"], m["bos"], "{m}");
        assert_rel(&got["perplexity"], &m["ppl"], 1e-5, "llama-cpp ppl");
        assert_rel(
            &got["perplexity_plus_minus"],
            &m["plus_minus"],
            1e-5,
            "llama-cpp U",
        );
    }
}

#[test]
fn disjoint_windows_match_transformers_and_report_uncertainty() {
    let r = reference();
    let d = &r["disjoint"];
    let ctx = d["context"].to_string();
    let args = ["--protocol", "disjoint", "--context", ctx.as_str()];
    let (got, _) = run_json(&mut ppl(
        &model_dir("llama-gqa"),
        &fixture("sample.txt"),
        &args,
    ));
    assert_eq!(got["tokens_scored"], d["tokens_scored"]);
    assert_rel(&got["perplexity"], &d["perplexity"], 1e-5, "disjoint ppl");
    assert_eq!(
        got["protocol"],
        serde_json::json!({"name": "disjoint", "context": 48})
    );
    // The interval brackets the estimate; llama.cpp's ± is reported under llama-cpp only.
    let (p, ci) = (got["perplexity"].as_f64().unwrap(), &got["perplexity_ci95"]);
    assert!(
        ci[0].as_f64().unwrap() < p && p < ci[1].as_f64().unwrap(),
        "{got}"
    );
    assert!(
        got["nll_stderr"].as_f64().unwrap() > 0.0 && got.get("perplexity_plus_minus").is_none()
    );
}

#[test]
fn words_are_counted_as_lm_eval_counts_them() {
    use gpt_ablate::eval::lm_eval::{count_words, python_isspace};
    let r = reference();
    for case in r["word_counts"].as_array().unwrap() {
        assert_eq!(
            count_words(case["text"].as_str().unwrap()) as u64,
            case["words"].as_u64().unwrap(),
            "{case}"
        );
    }
    let mut python = vec![false; 0x110000];
    for range in r["python_whitespace"].as_array().unwrap() {
        for c in range[0].as_u64().unwrap()..=range[1].as_u64().unwrap() {
            python[c as usize] = true;
        }
    }
    for (c, &want) in python.iter().enumerate() {
        if let Some(ch) = char::from_u32(c as u32) {
            assert_eq!(python_isspace(ch), want, "U+{c:04X}");
        }
    }
}

fn fails_with(cmd: &mut Command, want: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded; wanted: {want}");
    assert!(stderr.contains(want), "want '{want}' in: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_parquet_and_misplaced_settings_get_one_line_errors() {
    let m = fixture("tiny-gpt2");
    let pq = protocols("docs.parquet");
    fails_with(
        &mut ppl(&m, &pq, &[]),
        "docs.parquet: no column 'text' (columns: page, n); choose one with --text-field",
    );
    fails_with(
        &mut ppl(&m, &pq, &["--text-field", "n"]),
        "docs.parquet: column 'n' holds INT64 values, not strings",
    );
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.parquet");
    let bytes = std::fs::read(&pq).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &mut ppl(&m, &cut, &["--text-field", "page"]),
        "cut.parquet: not a readable Parquet file",
    );
    fails_with(
        &mut ppl(&m, &fixture("sample.txt"), &["--text-field", "page"]),
        "sample.txt is a plain text file, read as one document",
    );
    let jsonl = protocols("docs.jsonl");
    fails_with(
        &mut ppl(&m, &jsonl, &["--text-field", "body"]),
        "docs.jsonl line 1: no \"body\" field",
    );
    fails_with(
        &mut ppl(&m, &jsonl, &["--max-length", "16"]),
        "--max-length does not apply to the hf protocol",
    );
    fails_with(
        &mut ppl(&m, &jsonl, &["--detokenize", "wikitext"]),
        "--detokenize does not apply to the hf protocol",
    );
    fails_with(
        &mut ppl(&m, &jsonl, &["--protocol", "lm-eval", "--stride", "4"]),
        "--stride does not apply to the lm-eval protocol",
    );
    fails_with(
        &mut ppl(&m, &jsonl, &["--protocol", "lm-eval", "--context", "16"]),
        "--context does not apply to the lm-eval protocol (its window is --max-length)",
    );
    fails_with(
        &mut ppl(&m, &jsonl, &["--protocol", "lm-eval", "--max-length", "65"]),
        "--max-length 65 exceeds the model's n_positions (64)",
    );
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "To be, or not to be, that is the question.").unwrap();
    fails_with(
        &mut ppl(&m, &short, &["--protocol", "llama-cpp", "--context", "64"]),
        "needs at least 2 × context = 128 tokens",
    );
    let unwritable = tmp.path().join("no-such-dir").join("n.jsonl");
    fails_with(
        &mut ppl(&m, &jsonl, &["--save-nll", unwritable.to_str().unwrap()]),
        "cannot write",
    );
}

/// Runs `gpt-ablate run CONFIG --out OUT --json` and returns its rows and table (stderr).
fn run_grid(config: &str, dir: &Path, out: &str) -> (Vec<gpt_ablate::grid::results::Row>, String) {
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, config).unwrap();
    let output = Command::cargo_bin("gpt-ablate")
        .unwrap()
        .arg("run")
        .arg(&path)
        .arg("--out")
        .arg(dir.join(out))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{stderr}");
    let mut rows =
        gpt_ablate::grid::results::read_jsonl(&dir.join(out).join("results.jsonl")).unwrap();
    rows.sort_by_key(|r| r.index);
    (rows, String::from_utf8(output.stdout).unwrap())
}

#[test]
fn grid_intervals_contain_zero_for_an_identical_variant_and_exclude_it_for_sigmoid() {
    let tmp = tempfile::tempdir().unwrap();
    let config = |seed: u64| {
        format!(
            "models = [{:?}]\ndatasets = [{:?}]\ncontext = 64\nstride = 32\n\
             bootstrap_samples = 400\nbootstrap_seed = {seed}\n\
             [[variants]]\nname = \"same\"\nactivation = \"gelu_new\"\n\
             [[variants]]\nname = \"sigmoid\"\nactivation = \"sigmoid\"\n",
            fixture("tiny-gpt2"),
            fixture("sample.txt")
        )
    };
    let (rows, table) = run_grid(&config(7), tmp.path(), "a");
    let ci = |r: &gpt_ablate::grid::results::Row| r.delta_nll_ci95.unwrap();
    assert_eq!(rows[1].variant, "same");
    assert!(
        ci(&rows[1])[0] <= 0.0 && 0.0 <= ci(&rows[1])[1],
        "{:?}",
        rows[1]
    );
    assert_eq!(rows[1].delta_is_significant(), Some(false));
    assert!(ci(&rows[2])[0] > 0.5, "sigmoid: {:?}", ci(&rows[2]));
    let p = rows[2].perplexity_ci95.unwrap();
    assert!(p[0] < rows[2].perplexity && rows[2].perplexity < p[1]);
    let sigmoid_line = table.lines().find(|l| l.contains("| sigmoid")).unwrap();
    assert!(sigmoid_line.contains("] *"), "{table}");
    assert!(table.contains("* the 95% interval of Δ NLL"), "{table}");
    // The same seed gives the same intervals; another seed other ones.
    let (again, _) = run_grid(&config(7), tmp.path(), "b");
    assert_eq!(again[2].delta_nll_ci95, rows[2].delta_nll_ci95);
    assert_eq!(again[2].perplexity_ci95, rows[2].perplexity_ci95);
    let (other, _) = run_grid(&config(8), tmp.path(), "c");
    assert_ne!(other[2].delta_nll_ci95, rows[2].delta_nll_ci95);
    let csv = std::fs::read_to_string(tmp.path().join("a/results.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with("delta_nll_significant,perplexity_ci95_low,perplexity_ci95_high,word_perplexity,byte_perplexity,documents"));
    assert!(csv.lines().nth(3).unwrap().contains(",hf,"), "{csv}");
}

#[test]
fn lm_eval_grids_match_the_harness_and_save_paired_token_nlls() {
    let r = reference();
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "models = [{:?}, {:?}]\ndatasets = [{:?}]\nprotocol = \"lm-eval\"\nsave_nll = \"parquet\"\n\
         [[variants]]\nname = \"relu\"\nactivation = \"relu\"\n",
        fixture("tiny-gpt2"),
        model_dir("llama-gqa"),
        protocols("docs.jsonl")
    );
    let (rows, _) = run_grid(&config, tmp.path(), "out");
    assert_eq!(rows.len(), 4);
    for (row, run) in [
        (&rows[0], &r["lm_eval_runs"][0]),
        (&rows[2], &r["lm_eval_runs"][2]),
    ] {
        let m = row.lm_eval.as_ref().unwrap();
        for (got, key) in [
            (m.word_perplexity, "word_perplexity"),
            (m.byte_perplexity, "byte_perplexity"),
            (m.bits_per_byte, "bits_per_byte"),
        ] {
            assert_rel(&Value::from(got), &run[key], 1e-5, key);
        }
        assert_rel(
            &Value::from(row.bits_per_byte),
            &run["bits_per_byte"],
            1e-5,
            "row bits/byte",
        );
    }
    let out = tmp.path().join("out");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let protocols = &manifest["settings"]["protocol"];
    assert_eq!(
        protocols[0],
        serde_json::json!({"name": "lm-eval", "max_length": 64, "prefix_token": 0})
    );
    assert_eq!(protocols[1]["prefix_token"], 1);
    assert_eq!(manifest["settings"]["save_nll"], "parquet");
    // The variant's file pairs each token's NLL with the baseline's.
    let relu = &rows[3];
    assert_eq!(relu.nll_file.as_deref(), Some("nll/cell-0003.parquet"));
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let file = std::fs::File::open(out.join("nll/cell-0003.parquet")).unwrap();
    let reader = SerializedFileReader::new(file).unwrap();
    let (mut n, mut var, mut base) = (0usize, 0f64, 0f64);
    for row in reader.get_row_iter(None).unwrap() {
        let row = row.unwrap();
        n += 1;
        var += row.get_double(4).unwrap();
        base += row.get_double(5).unwrap();
    }
    assert_eq!(n, relu.tokens_scored);
    assert_rel(
        &Value::from(var),
        &Value::from(relu.nll_sum),
        1e-9,
        "Σ variant nll",
    );
    assert_rel(
        &Value::from(base),
        &Value::from(rows[2].nll_sum),
        1e-9,
        "Σ baseline nll",
    );
    assert_rel(
        &Value::from((var - base) / n as f64),
        &Value::from(relu.delta_nll.unwrap()),
        1e-9,
        "Δ",
    );
}
