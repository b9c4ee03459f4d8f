//! The `gpt-ablate` binary end to end: output formats, and every bad input giving a one-line
//! error that names the culprit, a non-zero exit and no panic.

mod common;

use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use common::{copy_checkpoint, edit_config, edit_weights, fixture, reference_ppl, run_json};
use predicates::prelude::*;

fn bin() -> Command {
    Command::cargo_bin("gpt-ablate").unwrap()
}

fn ppl(model: &std::path::Path, data: &std::path::Path) -> Command {
    let mut c = bin();
    c.arg("perplexity")
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data);
    c
}

/// Runs and expects failure with `needle` in a one-line, panic-free stderr.
fn fails_with(mut cmd: Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure for '{needle}', got success"
    );
    assert!(
        stderr.contains(needle),
        "stderr lacks '{needle}':\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "panic:\n{stderr}"
    );
    let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
    let clap = stderr.contains("For more information, try");
    assert!(clap || lines == 1, "error is not one line:\n{stderr}");
}

#[test]
fn json_output_has_the_contract_fields_and_matches_reference() {
    let out = ppl(&fixture("tiny-gpt2"), &fixture("sample.txt"))
        .args(["--context", "64", "--stride", "32", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "model",
        "activation",
        "layers",
        "context",
        "stride",
        "tokens_scored",
        "bytes",
        "mean_nll",
        "perplexity",
        "bits_per_byte",
        "seconds",
        "tokens_per_second",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    let r = common::reference();
    let want = r["perplexity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["model"] == "tiny-gpt2"
                && e["activation"].is_null()
                && e["stride"] == 32
                && e["data"] == "sample.txt"
        })
        .unwrap();
    let rel = (v["perplexity"].as_f64().unwrap() - want["perplexity"].as_f64().unwrap()).abs()
        / want["perplexity"].as_f64().unwrap();
    assert!(rel < 1e-5, "{v}");
    assert_eq!(
        v["bytes"].as_u64().unwrap(),
        std::fs::metadata(fixture("sample.txt")).unwrap().len()
    );
    let bpb = v["mean_nll"].as_f64().unwrap() * v["tokens_scored"].as_f64().unwrap()
        / std::f64::consts::LN_2
        / v["bytes"].as_f64().unwrap();
    assert!((bpb - v["bits_per_byte"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(v["layers"], "none");
}

#[test]
fn swap_is_reported_in_json_and_text() {
    let out = ppl(&fixture("tiny-gpt2"), &fixture("sample.txt"))
        .args(["--activation", "swish", "--layers", "1,3", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["activation"], "silu@1,3");
    assert_eq!(v["layers"], "1,3");
    assert_eq!(v["layers_swapped"], serde_json::json!([1, 3]));
    assert_eq!(v["context"], 64);
    assert_eq!(v["stride"], 32);
    ppl(&fixture("tiny-gpt2"), &fixture("sample.txt"))
        .args(["--activation", "relu"])
        .assert()
        .success()
        .stdout(predicate::str::contains("perplexity").and(predicate::str::contains("relu")));
}

#[test]
fn f16_compute_runs_close_to_f32() {
    let get = |dtype: &str| -> f64 {
        let (v, _) = run_json(
            ppl(&fixture("tiny-gpt2"), &fixture("sample.txt")).args(["--dtype", dtype, "--json"]),
        );
        v["perplexity"].as_f64().unwrap()
    };
    let f32_ppl = get("f32");
    for dtype in ["f16", "bf16"] {
        let p = get(dtype);
        assert!(
            (p - f32_ppl).abs() / f32_ppl < 0.02,
            "{dtype}: {p} vs f32 {f32_ppl}"
        );
    }
}

#[test]
fn bad_flags_are_rejected() {
    let (m, d) = (fixture("tiny-gpt2"), fixture("sample.txt"));
    let with = |args: &[&str]| {
        let mut c = ppl(&m, &d);
        c.args(args);
        c
    };
    fails_with(
        with(&["--activation", "gelu_10"]),
        "unknown activation 'gelu_10'; valid names: gelu_new",
    );
    fails_with(
        with(&["--activation", "relu", "--layers", "1-x"]),
        "'x' is not a layer index",
    );
    fails_with(
        with(&["--activation", "relu", "--layers", "0,4"]),
        "layer 4 is out of range: the model has 4 layers",
    );
    fails_with(with(&["--layers", "1"]), "--layers needs --activation");
    fails_with(
        with(&["--context", "65"]),
        "--context 65 exceeds the model's n_positions (64)",
    );
    fails_with(
        with(&["--stride", "0"]),
        "--stride must be between 1 and the context (64), got 0",
    );
    fails_with(
        with(&["--context", "32", "--stride", "33"]),
        "--stride must be between 1 and the context (32), got 33",
    );
    fails_with(
        with(&["--batch-size", "0"]),
        "--batch-size must be at least 1",
    );
    fails_with(with(&["--device", "tpu"]), "unknown device 'tpu'");
    fails_with(with(&["--threads", "0"]), "--threads must be at least 1");
    for bad in ["two", "0", "-1"] {
        let mut c = with(&[]);
        c.env("RAYON_NUM_THREADS", bad);
        fails_with(
            c,
            &format!("RAYON_NUM_THREADS=\"{bad}\" is not a thread count"),
        );
    }
    #[cfg(not(feature = "cuda"))]
    fails_with(with(&["--device", "cuda"]), "built without CUDA support");
}

#[test]
fn bad_data_files_are_rejected() {
    let m = fixture("tiny-gpt2");
    let tmp = tempfile::tempdir().unwrap();
    fails_with(
        ppl(&m, &tmp.path().join("nope.txt")),
        "nope.txt does not exist",
    );
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails_with(ppl(&m, &empty), "empty.txt is empty");
    let bad = tmp.path().join("bad.txt");
    std::fs::write(&bad, b"The quick \xc3\x28 fox").unwrap();
    fails_with(ppl(&m, &bad), "bad.txt: invalid UTF-8 at byte offset 10");
    let one = tmp.path().join("one.txt");
    std::fs::write(&one, "a").unwrap();
    fails_with(ppl(&m, &one), "has 1 token(s); perplexity needs at least 2");
}

#[test]
fn missing_and_unreadable_checkpoint_files_are_rejected() {
    let d = fixture("sample.txt");
    fails_with(
        ppl(std::path::Path::new("/no/such/model"), &d),
        "model /no/such/model: no such directory, and not a Hub repo id",
    );
    for (file, needle) in [
        ("config.json", "no config.json found"),
        (
            "tokenizer.json",
            "no tokenizer (tokenizer.json, or vocab.json + merges.txt) found",
        ),
        (
            "model.safetensors",
            "no weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json) found",
        ),
    ] {
        let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
        std::fs::remove_file(dir.join(file)).unwrap();
        fails_with(ppl(&dir, &d), needle);
    }
    let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    fails_with(ppl(&dir, &d), "config.json: key must be a string");
    let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    fails_with(ppl(&dir, &d), "tokenizer");
}

#[test]
fn truncated_and_corrupt_safetensors_are_rejected() {
    let d = fixture("sample.txt");
    let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    fails_with(ppl(&dir, &d), "file is truncated: tensor");
    std::fs::write(&path, &bytes[..5]).unwrap();
    fails_with(ppl(&dir, &d), "not a valid safetensors file: only 5 bytes");
    let mut garbage = bytes.clone();
    garbage[8..16].copy_from_slice(b"garbage!");
    std::fs::write(&path, &garbage).unwrap();
    fails_with(ppl(&dir, &d), "header is not JSON");
    std::fs::write(&path, [255u8; 64]).unwrap();
    fails_with(ppl(&dir, &d), "does not fit in a 64-byte file");
}

#[test]
fn pytorch_bin_checkpoints_load_and_broken_ones_are_rejected() {
    // tiny-gpt2-bin: tiny-gpt2-hf's weights as pytorch_model.bin, tokenizer as vocab + merges.
    let d = fixture("sample.txt");
    let want = reference_ppl("tiny-gpt2-hf", 64, 32);
    let (v, _) = run_json(ppl(&fixture("tiny-gpt2-bin"), &d).args([
        "--context",
        "64",
        "--stride",
        "32",
        "--json",
    ]));
    let got = v["perplexity"].as_f64().unwrap();
    assert!(((got - want) / want).abs() < 1e-7, "{got} vs {want}");

    let (_tmp, dir) = copy_checkpoint("tiny-gpt2-bin");
    let path = dir.join("pytorch_model.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        ppl(&dir, &d),
        "pytorch_model.bin: not a readable PyTorch checkpoint",
    );
    std::fs::write(&path, b"\x80\x02legacy pickle").unwrap();
    fails_with(
        ppl(&dir, &d),
        "not a zip archive (a legacy torch < 1.6 file, or truncated)",
    );
    std::fs::remove_file(dir.join("merges.txt")).unwrap();
    fails_with(
        ppl(&dir, &d),
        "no tokenizer (tokenizer.json, or vocab.json + merges.txt) found",
    );
}

#[test]
fn missing_keys_and_shape_mismatches_name_the_key() {
    let d = fixture("sample.txt");
    let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
    edit_weights(&dir, |t| {
        t.remove("h.1.mlp.c_fc.weight");
    });
    fails_with(
        ppl(&dir, &d),
        "checkpoint is missing tensor 'h.1.mlp.c_fc.weight' (expected shape [32, 128])",
    );

    let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
    edit_weights(&dir, |t| {
        t.insert(
            "h.0.attn.c_proj.weight".into(),
            Tensor::zeros((32, 31), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    fails_with(
        ppl(&dir, &d),
        "tensor 'h.0.attn.c_proj.weight' has shape [32, 31], expected [32, 32]",
    );

    // The prefixed layout quotes keys as stored.
    let (_tmp, dir) = copy_checkpoint("tiny-gpt2-hf");
    edit_weights(&dir, |t| {
        t.remove("transformer.ln_f.bias");
    });
    fails_with(ppl(&dir, &d), "missing tensor 'transformer.ln_f.bias'");

    // Leftover tensors mean config and weights disagree.
    let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
    edit_config(&dir, |c| c["n_layer"] = 3.into());
    fails_with(ppl(&dir, &d), "unexpected tensor(s), e.g. 'h.3.");

    // Untied checkpoints need lm_head.weight.
    let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
    edit_config(&dir, |c| c["tie_word_embeddings"] = false.into());
    fails_with(ppl(&dir, &d), "missing tensor 'lm_head.weight'");
}

#[test]
fn configs_the_tool_cannot_run_are_rejected() {
    let d = fixture("sample.txt");
    for (key, value, needle) in [
        (
            "n_head",
            serde_json::json!(5),
            "n_embd (32) is not divisible by n_head (5)",
        ),
        (
            "model_type",
            serde_json::json!("bert"),
            "model_type is 'bert'; supported: gpt2, gpt_neox, opt, llama, qwen2",
        ),
        (
            "architectures",
            serde_json::json!(["BertModel"]),
            "architectures lists 'BertModel'",
        ),
        (
            "add_cross_attention",
            serde_json::json!(true),
            "add_cross_attention",
        ),
        (
            "activation_function",
            serde_json::json!("gelu_10"),
            "activation_function: unknown activation 'gelu_10'",
        ),
    ] {
        let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
        edit_config(&dir, |c| c[key] = value);
        fails_with(ppl(&dir, &d), needle);
    }
}

#[test]
fn non_finite_loss_names_the_window() {
    let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
    edit_weights(&dir, |t| {
        let huge = Tensor::full(f32::MAX, 32, &Device::Cpu).unwrap();
        t.insert("ln_f.weight".into(), huge);
    });
    fails_with(
        ppl(&dir, &fixture("sample.txt")),
        "non-finite loss in window 0 (tokens 0..64)",
    );
}

#[test]
fn tokens_outside_the_model_vocabulary_are_rejected() {
    let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("data/gpt2-tokenizer/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    fails_with(
        ppl(&dir, &fixture("sample.txt")),
        "outside the model's vocabulary",
    );
}
