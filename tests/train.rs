//! Training: export round trips for every family, step-by-step parity with PyTorch's AdamW
//! (`tests/fixtures/train/parity.json` from `scripts/make_train_fixtures.py`), and the
//! `train` command (checkpoints transformers scores the same, resume after `kill -9`).

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::fixture;
use gpt_ablate::model::load::{load, LoadOptions};
use gpt_ablate::model::{CausalLm, ModelConfig};
use gpt_ablate::train::hf_dir::{load_decoder, write_hf_dir};
use gpt_ablate::train::optim::{AdamW, AdamWConfig};
use gpt_ablate::train::params::Trainable;
use gpt_ablate::train::schedule::Schedule;
use gpt_ablate::train::step::Trainer;
use gpt_ablate::weights::CheckpointFiles;

/// Every fixture checkpoint with a config.json.
fn checkpoints() -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = [
        "tiny-gpt2",
        "tiny-gpt2-f16",
        "tiny-gpt2-hf",
        "tiny-gpt2-sharded",
    ]
    .iter()
    .map(|d| fixture(d))
    .collect();
    let mut families: Vec<_> = std::fs::read_dir(fixture("families"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    families.sort();
    dirs.extend(families);
    dirs
}

fn read_config(dir: &std::path::Path) -> (ModelConfig, serde_json::Value) {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    (
        ModelConfig::from_file(&path).unwrap(),
        serde_json::from_str(&text).unwrap(),
    )
}

#[test]
fn export_is_the_exact_inverse_of_load_for_every_family() {
    let ids = Tensor::new(&[[3u32, 17, 5, 9, 2, 11, 30, 7]], &Device::Cpu).unwrap();
    for dir in checkpoints() {
        let name = dir.display().to_string();
        let files = CheckpointFiles::locate(&dir).unwrap();
        let (config, json) = read_config(&dir);
        let decoder = load_decoder(&files, &config, config.plan(), &Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let loaded = load(&dir, &LoadOptions::default()).unwrap();
        write_hf_dir(tmp.path(), &config, &json, &decoder, &loaded.tokenizer).unwrap();
        let again = load(tmp.path(), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: reloading the export: {e:#}"));
        let a: Vec<f32> = loaded
            .model
            .forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = again
            .model
            .forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b, "{name}: logits differ after export and reload");
        // The export names what save_pretrained writes: prefixed keys, no tied head.
        let st = candle_core::safetensors::load(tmp.path().join("model.safetensors"), &Device::Cpu)
            .unwrap();
        let prefix = match config.info.model_type.as_str() {
            "gpt2" => "transformer.",
            "gpt_neox" => "gpt_neox.",
            _ => "model.",
        };
        for k in st.keys() {
            let top = ["lm_head.weight", "embed_out.weight"].contains(&k.as_str());
            assert!(k.starts_with(prefix) || top, "{name}: key {k}");
            assert!(
                !(top && config.info.tied_head),
                "{name}: tied head {k} written"
            );
        }
    }
}

#[test]
fn a_per_layer_plan_is_written_and_read_back() {
    let dir = fixture("tiny-gpt2");
    let opts = LoadOptions {
        activation: Some("sigmoid_scaled".parse().unwrap()),
        layers: "1,3".parse().unwrap(),
        ..LoadOptions::default()
    };
    let loaded = load(&dir, &opts).unwrap();
    let files = CheckpointFiles::locate(&dir).unwrap();
    let (config, json) = read_config(&dir);
    let decoder = load_decoder(&files, &config, loaded.model.plan().clone(), &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_hf_dir(tmp.path(), &config, &json, &decoder, &loaded.tokenizer).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(written["activation_function"], "gelu_new");
    assert_eq!(
        written["gpt_ablate_activations"],
        serde_json::json!(["gelu_new", "sigmoid_scaled", "gelu_new", "sigmoid_scaled"])
    );
    let again = load(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!(again.model.plan(), loaded.model.plan());
    assert_eq!(again.model.plan().describe(), "sigmoid_scaled@1,3");
}

fn parity() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("train/parity.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

/// The batches of one step as (b, t + 1) tensors.
fn step_batches(step: &serde_json::Value) -> Vec<Tensor> {
    step.as_array()
        .unwrap()
        .iter()
        .map(|mb| {
            let rows: Vec<Vec<u32>> = serde_json::from_value(mb.clone()).unwrap();
            let (b, t) = (rows.len(), rows[0].len());
            Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
        })
        .collect()
}

#[test]
fn adamw_steps_match_pytorch_for_gpt2_and_a_gated_family() {
    let r = parity();
    for case in r["cases"].as_array().unwrap() {
        let name = case["model"].as_str().unwrap();
        let dir = fixture(name);
        let files = CheckpointFiles::locate(&dir).unwrap();
        let (config, _) = read_config(&dir);
        let decoder = load_decoder(&files, &config, config.plan(), &Device::Cpu).unwrap();
        let tr = Trainable::new(&decoder).unwrap();
        let f = |k: &str| case[k].as_f64().unwrap();
        let n = |k: &str| case[k].as_u64().unwrap() as usize;
        let adamw = AdamWConfig {
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        };
        let opt = AdamW::new(adamw, &tr.params).unwrap();
        let schedule = Schedule {
            lr: f("lr"),
            warmup: n("warmup"),
            steps: n("steps"),
        };
        let mut trainer = Trainer {
            tr,
            opt,
            schedule,
            grad_clip: Some(f("grad_clip")),
            step: 0,
        };
        for (step, want) in case["batches"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["log"].as_array().unwrap())
        {
            let s = want["step"].as_u64().unwrap();
            let got = trainer.step(&step_batches(step)).unwrap();
            let loss = want["loss"].as_f64().unwrap();
            assert!(
                rel(got.loss, loss) < 1e-4,
                "{name} step {s}: loss {} vs {loss}",
                got.loss
            );
            assert!(
                rel(got.lr, want["lr"].as_f64().unwrap()) < 1e-12,
                "{name} step {s}: lr"
            );
            let gn = want["grad_norm"].as_f64().unwrap();
            assert!(
                rel(got.grad_norm, gn) < 1e-3,
                "{name} step {s}: grad norm {} vs {gn}",
                got.grad_norm
            );
            for (gl, wl) in got.layers.iter().zip(want["layers"].as_array().unwrap()) {
                let l = gl.layer;
                let bi = wl["block_input"].as_f64().unwrap();
                assert!(
                    rel(gl.block_input, bi) < 1e-3,
                    "{name} step {s} layer {l}: block input {} vs {bi}",
                    gl.block_input
                );
                let want_mlp: HashMap<String, f64> =
                    serde_json::from_value(wl["mlp"].clone()).unwrap();
                assert_eq!(
                    gl.mlp.len(),
                    want_mlp.len(),
                    "{name} step {s} layer {l}: MLP weights"
                );
                for (role, w) in &want_mlp {
                    let g = gl.mlp[role];
                    assert!(
                        rel(g, *w) < 1e-3,
                        "{name} step {s} layer {l} {role}: {g} vs {w}"
                    );
                }
            }
        }
        let want = candle_core::safetensors::load(
            fixture("train").join(case["final_weights"].as_str().unwrap()),
            &Device::Cpu,
        )
        .unwrap();
        let got = config.arch.export(&trainer.tr.model).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: tensors");
        for (k, t) in got {
            let d: Vec<f32> = (t - &want[&k])
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            // GPT-2's key bias (the middle third of c_attn.bias) has an exactly zero gradient
            // (it adds the same q·b to every score of a query, which softmax ignores); both
            // sides compute rounding noise of ~1e-9 there, which Adam's m/(√v + ε) turns into
            // steps of up to lr: those entries are noise, not compared.
            let c = config.info.hidden_size;
            let key_bias = |i: usize| k.ends_with("attn.c_attn.bias") && (c..2 * c).contains(&i);
            let diff = d
                .iter()
                .enumerate()
                .filter(|&(i, _)| !key_bias(i))
                .fold(0f32, |m, (_, &v)| m.max(v));
            assert!(
                diff <= 1e-4,
                "{name}: final {k} differs from PyTorch by {diff}"
            );
        }
    }
}
