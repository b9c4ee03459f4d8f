//! The ablation runner end to end: numbers against transformers, resume after a crash
//! (including a real `kill -9`), shard + merge, and config errors before any computation.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use common::{fixture, reference};
use gpt_ablate::grid::results::{read_jsonl, Row};

fn run(config: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("gpt-ablate")
        .unwrap()
        .arg("run")
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn rows(dir: &Path) -> Vec<Row> {
    let mut r = read_jsonl(&dir.join("results.jsonl")).unwrap();
    r.sort_by_key(|r| r.index);
    r
}

/// The numbers that must not depend on how the run was split or interrupted.
fn numbers(rows: &[Row]) -> Vec<(usize, String, f64, f64, f64, usize)> {
    rows.iter()
        .map(|r| {
            (
                r.index,
                r.variant.clone(),
                r.nll_sum,
                r.kl_mean,
                r.top1_agreement,
                r.tokens_scored,
            )
        })
        .collect()
}

#[test]
fn grid_matches_transformers_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let stdout = ok(run(&fixture("grid.toml"), tmp.path(), &[]));
    let got = rows(tmp.path());
    let r = reference();
    let want = r["grid"]
        .as_array()
        .expect("reference.json has a grid section");
    assert_eq!(got.len(), want.len(), "cells");
    for w in want {
        let name = w["name"].as_str().unwrap();
        let g = got
            .iter()
            .find(|g| g.variant == name || (g.is_baseline && name == "baseline"));
        let g = g.unwrap_or_else(|| panic!("no row for {name}"));
        let want_per_layer: Vec<&str> = w["per_layer"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(g.per_layer, want_per_layer, "{name}: per-layer activations");
        assert_eq!(
            g.tokens_scored as u64,
            w["tokens_scored"].as_u64().unwrap(),
            "{name}"
        );
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
        let ppl = w["perplexity"].as_f64().unwrap();
        assert!(
            rel(g.perplexity, ppl) < 1e-5,
            "{name}: ppl {} vs {ppl}",
            g.perplexity
        );
        let kl = w["kl_mean"].as_f64().unwrap();
        assert!(
            (g.kl_mean - kl).abs() < 1e-6 + 1e-4 * kl,
            "{name}: KL {} vs {kl}",
            g.kl_mean
        );
        let top1 = w["top1_agreement"].as_f64().unwrap();
        assert!(
            (g.top1_agreement - top1).abs() < 1e-9,
            "{name}: top-1 {} vs {top1}",
            g.top1_agreement
        );
        let base = want.iter().find(|e| e["name"] == "baseline").unwrap()["perplexity"]
            .as_f64()
            .unwrap();
        assert!(rel(g.baseline_perplexity, base) < 1e-5);
        assert!(rel(g.ratio_perplexity, ppl / base) < 1e-5);
    }
    // The table lists every cell; the output directory has every artefact.
    for w in want {
        assert!(
            stdout.contains(w["name"].as_str().unwrap()) || w["name"] == "baseline",
            "{stdout}"
        );
    }
    for f in [
        "results.jsonl",
        "results.csv",
        "manifest.json",
        "perplexity.svg",
        "perplexity.png",
        "sweep.svg",
        "sweep.png",
    ] {
        let p = tmp.path().join(f);
        assert!(
            p.metadata().map(|m| m.len() > 100).unwrap_or(false),
            "{f} missing or empty"
        );
    }
    let png = std::fs::read(tmp.path().join("perplexity.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["cells"]["done"], 8);
    assert!(manifest["finished_at"].is_string());
    assert_eq!(
        manifest["datasets"][0]["sha256"].as_str().unwrap().len(),
        64
    );
    assert!(manifest["config"]["text"]
        .as_str()
        .unwrap()
        .contains("sweep_layers"));
    let csv = std::fs::read_to_string(tmp.path().join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9);
}

#[test]
fn resume_completes_every_cell_exactly_once_after_a_partial_write() {
    let (full, part) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    ok(run(&fixture("grid.toml"), full.path(), &[]));
    // Simulate a crash: three complete rows and half of the fourth, no csv/manifest.
    let text = std::fs::read_to_string(full.path().join("results.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let crashed = format!(
        "{}\n{}",
        lines[..3].join("\n"),
        &lines[3][..lines[3].len() / 2]
    );
    std::fs::write(part.path().join("results.jsonl"), crashed).unwrap();
    let out = run(&fixture("grid.toml"), part.path(), &[]);
    ok(out.clone());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("5 cell(s) computed, 3 already done"),
        "{stderr}"
    );
    assert_eq!(numbers(&rows(part.path())), numbers(&rows(full.path())));
    // A third run computes nothing.
    let again = run(&fixture("grid.toml"), part.path(), &[]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 cell(s) computed, 8 already done"));
    assert_eq!(rows(part.path()).len(), 8);
}

#[test]
fn resume_after_kill_9_completes_every_cell_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    // A slower grid (stride 1) so the kill lands mid-run.
    let config = tmp.path().join("slow.toml");
    let base = fixture("grid.toml");
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace("\"tiny-gpt2\"", &format!("{:?}", fixture("tiny-gpt2")))
        .replace("\"sample.txt\"", &format!("{:?}", fixture("sample.txt")))
        .replace("stride = 32", "stride = 2");
    std::fs::write(&config, text).unwrap();
    let out = tmp.path().join("out");
    let bin = assert_cmd::cargo::cargo_bin("gpt-ablate");
    let mut child = std::process::Command::new(&bin)
        .args([
            "run",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let jsonl = out.join("results.jsonl");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        let n = std::fs::read_to_string(&jsonl)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 2 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().ok(); // SIGKILL
    child.wait().unwrap();
    let before = read_jsonl(&jsonl).map(|r| r.len()).unwrap_or(0);
    ok(Command::cargo_bin("gpt-ablate")
        .unwrap()
        .args([
            "run",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap());
    let after = rows(&out);
    assert_eq!(after.len(), 8, "killed after {before} rows");
    let indices: Vec<usize> = after.iter().map(|r| r.index).collect();
    assert_eq!(
        indices,
        (0..8).collect::<Vec<_>>(),
        "every cell exactly once"
    );
    assert!(std::fs::read_to_string(&jsonl).unwrap().ends_with('\n'));
}

#[test]
fn shards_merged_equal_an_unsharded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    ok(run(&fixture("grid.toml"), &whole, &[]));
    let mut dirs = Vec::new();
    for k in 0..3 {
        let d = tmp.path().join(format!("shard{k}"));
        ok(run(
            &fixture("grid.toml"),
            &d,
            &["--shard", &format!("{k}/3")],
        ));
        let r = rows(&d);
        assert!(
            r.iter().all(|r| r.index % 3 == k),
            "shard {k} ran foreign cells"
        );
        dirs.push(d);
    }
    let merged = tmp.path().join("merged");
    let out = Command::cargo_bin("gpt-ablate")
        .unwrap()
        .arg("merge")
        .args(&dirs)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    let table = ok(out);
    assert!(table.contains("sigmoid-sweep@L3"), "{table}");
    assert_eq!(numbers(&rows(&merged)), numbers(&rows(&whole)));
    assert!(merged.join("sweep.svg").exists() && merged.join("results.csv").exists());
    // A row that is not one of its shard's cells, or a second result for one cell, is
    // refused, naming the file and the cell, before anything is written.
    let forged = tmp.path().join("forged");
    std::fs::create_dir(&forged).unwrap();
    std::fs::copy(dirs[0].join("manifest.json"), forged.join("manifest.json")).unwrap();
    let jsonl = std::fs::read_to_string(dirs[0].join("results.jsonl")).unwrap();
    let retag = |index: usize, key: Option<&str>| -> String {
        let mut row: serde_json::Value =
            serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
        row["index"] = index.into();
        if let Some(k) = key {
            row["key"] = k.into();
        }
        format!("{row}\n")
    };
    for (row, want) in [
        (retag(1, None), "cell 1 ("),
        (retag(300, None), "is outside the grid"),
        (
            retag(3, Some("0123456789abcdef")),
            "has key 0123456789abcdef",
        ),
    ] {
        std::fs::write(forged.join("results.jsonl"), &row).unwrap();
        let out_dir = tmp.path().join("refused");
        let out = Command::cargo_bin("gpt-ablate")
            .unwrap()
            .arg("merge")
            .args([&dirs[0], &forged])
            .arg("--out")
            .arg(&out_dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{err}");
        assert!(err.contains("forged"), "the file is named: {err}");
        assert!(!out_dir.exists(), "nothing written");
    }
    // A shard directory cannot be resumed as another shard.
    let wrong = run(&fixture("grid.toml"), &dirs[0], &["--shard", "1/3"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("holds results for other inputs"));
}

#[test]
fn bad_configs_fail_before_any_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[variants]]\nname = \"a\"\nactivation = \"sigmod\"\n",
            "line 5: variant 'a': activation: unknown activation 'sigmod'",
        ),
        (
            "[[variants]]\nname = \"a\"\nactivation = \"4:relu\"\n",
            "layer 4 is out of range",
        ),
        (
            "[[variants]]\nname = \"baseline\"\nactivation = \"relu\"\n",
            "duplicate name 'baseline'",
        ),
        ("variants = []\n", "variants: the list is empty"),
    ];
    for (i, (variants, want)) in cases.iter().enumerate() {
        let config = tmp.path().join(format!("c{i}.toml"));
        let head = format!(
            "models = [{:?}]\ndatasets = [{:?}]\n",
            fixture("tiny-gpt2"),
            fixture("sample.txt")
        );
        std::fs::write(&config, format!("{head}{variants}")).unwrap();
        let out_dir = tmp.path().join(format!("out{i}"));
        let out = run(&config, &out_dir, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(want),
            "want '{want}':\n{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            !out_dir.exists(),
            "output directory created before validation"
        );
    }
    let config = tmp.path().join("missing.toml");
    std::fs::write(&config, format!("models = [{:?}]\ndatasets = [\"nope.txt\"]\n[[variants]]\nname = \"a\"\nactivation = \"relu\"\n", fixture("tiny-gpt2"))).unwrap();
    let out = run(&config, &tmp.path().join("o"), &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2: datasets: file"));
}

#[test]
fn diagnose_cells_add_pytorch_checked_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("diag.toml");
    std::fs::write(
        &config,
        format!(
            "models = [{:?}]\ndatasets = [{:?}]\ncontext = 64\nstride = 64\nmax_tokens = 1000\n\
             [[variants]]\nname = \"sigmoid\"\nactivation = \"sigmoid\"\ndiagnose = true\n\
             [[variants]]\nname = \"relu\"\nactivation = \"relu\"\n",
            fixture("tiny-gpt2"),
            fixture("sample.txt")
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let table = ok(run(&config, &out, &[]));
    assert!(table.contains("mean |f′|"), "{table}");
    let rows = rows(&out);
    assert!(rows[0].diagnostics.is_none() && rows[2].diagnostics.is_none());
    let d = rows[1].diagnostics.as_ref().unwrap();
    let text = std::fs::read_to_string(fixture("diagnose_reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let case = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["activation"] == "sigmoid")
        .unwrap();
    for (got, want) in d.layers.iter().zip(case["layers"].as_array().unwrap()) {
        let w = want["grad_norm"].as_f64().unwrap();
        assert!(
            (got.grad_norm - w).abs() < 1e-3 * w,
            "layer {}: {} vs {w}",
            got.layer,
            got.grad_norm
        );
        let w = want["post_mean"].as_f64().unwrap();
        assert!((got.post_mean - w).abs() < 1e-4 * w.abs().max(1e-3));
    }
    // Perplexity over the 1000-token prefix uses the bytes that prefix covers.
    assert!(rows[0].bytes < std::fs::metadata(fixture("sample.txt")).unwrap().len() as usize);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("diag_grad_norm_first"));
}
