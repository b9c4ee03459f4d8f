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

#[test]
fn checkpoints_written_by_train_score_the_same_in_transformers() {
    let text = std::fs::read_to_string(fixture("train/checkpoints.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sample = gpt_ablate::data::read_text(&fixture("sample.txt")).unwrap();
    for e in r["perplexity"].as_array().unwrap() {
        let name = e["model"].as_str().unwrap();
        let loaded = load(&fixture("train").join(name), &LoadOptions::default()).unwrap();
        assert_eq!(
            loaded.model.plan().describe(),
            e["activation"].as_str().unwrap()
        );
        let tokens = loaded.tokenizer.encode(&sample).unwrap();
        let opts = gpt_ablate::eval::perplexity::PplOptions {
            context: e["context"].as_u64().unwrap() as usize,
            stride: e["stride"].as_u64().unwrap() as usize,
            batch_size: 4,
        };
        let got =
            gpt_ablate::eval::perplexity::perplexity(&loaded.model, &tokens, &opts, &mut |_, _| {})
                .unwrap();
        let want = e["perplexity"].as_f64().unwrap();
        assert!(
            rel(got.perplexity, want) < 1e-5,
            "{name}: {} vs transformers {want}",
            got.perplexity
        );
    }
}

fn bin() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("gpt-ablate").unwrap()
}

/// A from-scratch run small enough for tests: a 2-layer GPT-2 with the fixture tokenizer.
fn scratch_args(dir: &std::path::Path, out: &std::path::Path, steps: &str) -> Vec<String> {
    let toml = dir.join("scratch.toml");
    std::fs::write(
        &toml,
        format!(
            "model_type = \"gpt2\"\ntokenizer = \"{}\"\nactivation = \"gelu_new\"\n\
             [config]\nn_layer = 2\nn_embd = 32\nn_head = 4\nn_positions = 32\n",
            fixture("tiny-gpt2/tokenizer.json").display()
        ),
    )
    .unwrap();
    [
        "train",
        "--from-scratch",
        toml.to_str().unwrap(),
        "--data",
        fixture("sample.txt").to_str().unwrap(),
        "--activation",
        "relu",
        "--steps",
        steps,
        "--batch-size",
        "8",
        "--seq-len",
        "32",
        "--lr",
        "3e-3",
        "--accumulate",
        "2",
        "--eval-every",
        "25",
        "--save-every",
        "5",
        "--eval-tokens",
        "128",
        "--seed",
        "3",
        "--threads",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn file_bytes(p: std::path::PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The log without wall times: what must be identical between runs.
fn log_numbers(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("tokens_per_second");
            v
        })
        .collect()
}

#[test]
fn a_run_killed_with_sigkill_resumes_and_ends_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    let (v, _) = common::run_json(bin().args(scratch_args(tmp.path(), &whole, "60")));
    assert_eq!(v["steps"], 60);
    assert!(
        v["eval_perplexity_after"].as_f64().unwrap()
            < v["eval_perplexity_before"].as_f64().unwrap()
    );
    // The same command, killed with SIGKILL once a few checkpoints exist.
    let exe = assert_cmd::cargo::cargo_bin("gpt-ablate");
    let mut child = std::process::Command::new(&exe)
        .args(scratch_args(tmp.path(), &killed, "60"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !killed.join("checkpoint-15").exists() {
        assert!(
            started.elapsed().as_secs() < 120,
            "no checkpoint-15 after 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        !killed.join("final").exists(),
        "the run finished before it was killed"
    );
    let (v, _) = common::run_json(bin().args(scratch_args(tmp.path(), &killed, "60")));
    let resumed = v["resumed_from"].as_u64().unwrap();
    assert!((15..60).contains(&resumed), "resumed from {resumed}");
    for f in ["model.safetensors", "optimizer.safetensors", "config.json"] {
        assert!(
            file_bytes(whole.join("final").join(f)) == file_bytes(killed.join("final").join(f)),
            "final/{f} differs between the uninterrupted and the resumed run"
        );
    }
    assert_eq!(log_numbers(&whole), log_numbers(&killed));
    // Running it again only reports.
    let (again, _) = common::run_json(bin().args(scratch_args(tmp.path(), &killed, "60")));
    assert_eq!(again["resumed_from"], 60);
    assert_eq!(again["final_loss"], v["final_loss"]);
}

#[test]
fn train_rejects_bad_settings_with_the_flag_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let model = fixture("tiny-gpt2");
    let data = fixture("sample.txt");
    let base = |extra: &[&str]| {
        let mut c = bin();
        c.args(["train", "--init"])
            .arg(&model)
            .arg("--data")
            .arg(&data);
        c.args(["--steps", "2", "--batch-size", "2", "--out"])
            .arg(&out);
        c.args(extra);
        if !extra.contains(&"--seq-len") {
            c.args(["--seq-len", "16"]);
        }
        c
    };
    for (extra, want) in [
        (
            vec!["--seq-len", "65"],
            "--seq-len 65 exceeds the model's 64 positions",
        ),
        (
            vec!["--dtype", "bf16"],
            "--dtype bf16: training runs in f32",
        ),
        (vec!["--lr=0"], "--lr must be a positive number, got 0"),
        (vec!["--warmup", "5"], "--warmup (5) exceeds the steps (2)"),
        (vec!["--calibrate"], "--calibrate needs --activation"),
        (vec!["--layers", "1"], "--layers needs --activation"),
        (
            vec!["--activation", "relu", "--layers", "9"],
            "layer 9 is out of range",
        ),
    ] {
        let o = base(&extra).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(want),
            "{extra:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A finished run, then the same --out with another learning rate.
    base(&["--activation", "tanh"]).assert().success();
    let o = base(&["--activation", "tanh", "--lr", "0.5"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("holds a run with other inputs or settings (changed: settings.lr)"),
        "{err}"
    );
    assert!(
        out.join("final/model.safetensors").is_file(),
        "the finished run is kept"
    );
}

/// A from-scratch comparison grid on the tiny fixture tokenizer.
fn scratch_grid(dir: &std::path::Path) -> std::path::PathBuf {
    let arch = dir.join("arch.toml");
    std::fs::write(
        &arch,
        format!(
            "model_type = \"gpt2\"\ntokenizer = \"{}\"\nactivation = \"gelu_new\"\n\
             [config]\nn_layer = 2\nn_embd = 32\nn_head = 4\nn_positions = 32\n",
            fixture("tiny-gpt2/tokenizer.json").display()
        ),
    )
    .unwrap();
    let grid = dir.join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "from_scratch = \"arch.toml\"\ndatasets = [\"{}\"]\ncontext = 32\n\
             [train]\ndata = \"{}\"\nsteps = 12\nbatch_size = 4\nseq_len = 32\nlr = 3e-3\n\
             eval_every = 4\neval_tokens = 256\ntarget_loss = 5.5\n\
             [[variants]]\nname = \"relu\"\nactivation = \"relu\"\n\
             [[variants]]\nname = \"sigmoid centred\"\nactivation = \"sigmoid_centered\"\n",
            fixture("sample-2.txt").display(),
            fixture("sample.txt").display()
        ),
    )
    .unwrap();
    grid
}

#[test]
fn a_from_scratch_grid_trains_each_activation_and_resumes_shards_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = scratch_grid(tmp.path());
    let run = |out: &std::path::Path, extra: &[&str]| {
        let mut c = bin();
        c.arg("run")
            .arg(&grid)
            .arg("--out")
            .arg(out)
            .args(["--json", "--threads", "2"])
            .args(extra);
        common::run_json(&mut c).0
    };
    let whole = tmp.path().join("whole");
    let rows = run(&whole, &[]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gelu_new", "relu", "sigmoid centred"]);
    assert_eq!(rows[0]["kl_mean"], 0.0);
    assert_eq!(rows[0]["ratio_perplexity"], 1.0);
    for r in rows {
        let t = &r["training"];
        assert_eq!(t["kind"], "scratch");
        assert_eq!(t["steps"], 12);
        assert_eq!(t["curve"].as_array().unwrap().len(), 4, "{t}");
        assert_eq!(t["grad_norms"].as_array().unwrap().len(), 2);
        assert!(whole
            .join(t["dir"].as_str().unwrap())
            .join("final/model.safetensors")
            .is_file());
    }
    assert!(rows[1]["kl_mean"].as_f64().unwrap() > 0.0);
    for f in [
        "results.csv",
        "train_loss.svg",
        "train_grad_by_layer.png",
        "perplexity.svg",
    ] {
        assert!(whole.join(f).is_file(), "{f}");
    }
    // Resume: nothing left to do.
    assert_eq!(run(&whole, &[]).as_array().unwrap().len(), 3);
    // Shards, merged, give the same rows.
    let (a, b, merged) = (
        tmp.path().join("s0"),
        tmp.path().join("s1"),
        tmp.path().join("m"),
    );
    run(&a, &["--shard", "0/2"]);
    run(&b, &["--shard", "1/2"]);
    bin()
        .arg("merge")
        .arg(&a)
        .arg(&b)
        .arg("--out")
        .arg(&merged)
        .assert()
        .success();
    let key_ppl = |p: &std::path::Path| -> Vec<(String, String)> {
        std::fs::read_to_string(p.join("results.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["key"].to_string(), v["perplexity"].to_string())
            })
            .collect()
    };
    assert_eq!(key_ppl(&merged), key_ppl(&whole));
}

#[test]
fn a_grid_variant_with_finetune_steps_reports_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid.toml");
    let head = format!(
        "models = [\"{}\"]\ndatasets = [\"{}\"]\n",
        fixture("tiny-gpt2").display(),
        fixture("sample-2.txt").display()
    );
    std::fs::write(
        &grid,
        format!(
            "{head}[train]\ndata = \"{}\"\nbatch_size = 4\nseq_len = 32\neval_every = 5\n\
             [[variants]]\nname = \"sigmoid\"\nactivation = \"sigmoid\"\n\
             [[variants]]\nname = \"sigmoid, recovered\"\nactivation = \"sigmoid\"\nfinetune_steps = 10\nlr = 3e-3\n",
            fixture("sample.txt").display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let mut cmd = bin();
    cmd.arg("run")
        .arg(&grid)
        .arg("--out")
        .arg(&out)
        .args(["--json", "--threads", "2"]);
    let (rows, _) = common::run_json(&mut cmd);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows[1]["training"].is_null());
    let (swapped, t) = (&rows[2], &rows[2]["training"]);
    // Right after the swap the fine-tuned variant scores as the plain swap does.
    assert_eq!(swapped["perplexity"], rows[1]["perplexity"]);
    assert_eq!(t["kind"], "finetune");
    let curve: Vec<(u64, f64)> = serde_json::from_value(t["curve"].clone()).unwrap();
    assert_eq!(curve.iter().map(|c| c.0).collect::<Vec<_>>(), [0, 5, 10]);
    let (before, after) = (
        swapped["perplexity"].as_f64().unwrap(),
        t["perplexity_after"].as_f64().unwrap(),
    );
    assert!(rel(curve[0].1, before) < 1e-6, "{curve:?} vs {before}");
    assert!(rel(curve[2].1, after) < 1e-6, "{curve:?} vs {after}");
    assert!(after < before, "recovery: {before} → {after}");
    assert!(t["ratio_after"].as_f64().unwrap() < swapped["ratio_perplexity"].as_f64().unwrap());
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .ends_with("perplexity_after,ratio_after,kl_after"));
    // Without a text to train on, the config is refused, naming the line.
    std::fs::write(
        &grid,
        format!("{head}[[variants]]\nname = \"s\"\nactivation = \"sigmoid\"\nfinetune_steps = 3\n"),
    )
    .unwrap();
    let o = bin()
        .arg("run")
        .arg(&grid)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 6: variant 's': finetune_steps needs a text to train on"),
        "{err}"
    );
}

#[test]
fn every_family_fine_tunes_after_a_swap_and_its_checkpoint_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in checkpoints()
        .into_iter()
        .filter(|d| d.starts_with(fixture("families")))
    {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let out = tmp.path().join(&name);
        let mut cmd = bin();
        cmd.args(["train", "--init"])
            .arg(&dir)
            .arg("--data")
            .arg(fixture("sample.txt"));
        cmd.args([
            "--activation",
            "sigmoid_scaled",
            "--layers",
            "0",
            "--steps",
            "3",
            "--batch-size",
            "2",
        ]);
        cmd.args([
            "--seq-len",
            "16",
            "--eval-tokens",
            "64",
            "--lr",
            "1e-3",
            "--json",
            "--out",
        ])
        .arg(&out);
        let (v, _) = common::run_json(&mut cmd);
        assert!(v["final_loss"].as_f64().unwrap().is_finite(), "{name}: {v}");
        let reloaded = load(&out.join("final"), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(
            reloaded.model.plan().describe(),
            "sigmoid_scaled@0",
            "{name}"
        );
    }
}
