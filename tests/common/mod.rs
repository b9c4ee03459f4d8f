//! Helpers shared by the integration tests: fixture paths, the reference file, and tools to
//! make broken copies of a checkpoint.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// `tests/fixtures/reference.json`, written by `scripts/make_fixtures.py` with transformers.
pub fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("reference.json")).expect("reference.json");
    let r: serde_json::Value = serde_json::from_str(&text).expect("reference.json parses");
    assert_eq!(r["version"], 1, "reference.json version");
    r
}

/// transformers' perplexity of a fixture model (original activation) on sample.txt.
pub fn reference_ppl(model: &str, context: u64, stride: u64) -> f64 {
    reference()["perplexity"]
        .as_array()
        .expect("perplexity list")
        .iter()
        .find(|e| {
            e["model"] == model
                && e["activation"].is_null()
                && e["context"] == context
                && e["stride"] == stride
                && e["data"] == "sample.txt"
        })
        .unwrap_or_else(|| panic!("no reference for {model} c{context} s{stride}"))["perplexity"]
        .as_f64()
        .expect("a number")
}

/// Runs `cmd`, which must succeed, and parses its stdout as JSON; also returns stderr.
pub fn run_json(cmd: &mut assert_cmd::Command) -> (serde_json::Value, String) {
    let out = cmd.output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed:\n{stderr}");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (v, stderr)
}

/// Copies a fixture checkpoint directory into a fresh temporary directory.
pub fn copy_checkpoint(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dst = tmp.path().join(name);
    std::fs::create_dir_all(&dst).expect("mkdir");
    for entry in std::fs::read_dir(fixture(name)).expect("fixture dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy");
    }
    (tmp, dst)
}

/// Rewrites `dir/model.safetensors` after `edit` changes its tensors.
pub fn edit_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).expect("load");
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).expect("save");
}

/// Rewrites `dir/config.json` after `edit` changes it.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    edit(&mut cfg);
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).expect("ser")).expect("write");
}

/// Largest absolute difference and where it is.
pub fn max_abs_diff(got: &[f32], want: &[f64]) -> (f64, usize) {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(want)
        .enumerate()
        .map(|(i, (&g, &w))| ((g as f64 - w).abs(), i))
        .fold(
            (0.0, 0),
            |m, v| if v.0 > m.0 || v.0.is_nan() { v } else { m },
        )
}
/// The largest |a − b| over two tensors of the same shape, compared in f32.
pub fn tensor_max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let f32 = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
    (f32(a) - f32(b))
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub mod hub_server;
