//! Calibrated activations (`sigmoid_centered`, `sigmoid_scaled`, `affine(NAME, a, b)`) and
//! `--calibrate`, against `tests/fixtures/train/calibrated.json` written by
//! `scripts/make_train_fixtures.py` with PyTorch and transformers.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, run_json};
use gpt_ablate::data::read_text;
use gpt_ablate::eval::diagnose::diagnose_windows;
use gpt_ablate::eval::perplexity::{perplexity, PplOptions};
use gpt_ablate::model::activation::Activation;
use gpt_ablate::model::load::{load, LoadOptions};
use gpt_ablate::model::plan::LayerSpec;
use gpt_ablate::train::calibrate::{calibrate, layer_moments};

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("train/calibrated.json")).expect("calibrated.json");
    serde_json::from_str(&text).expect("calibrated.json parses")
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1.0)
}

#[test]
fn formulas_match_pytorch() {
    let r = reference();
    let f = &r["formulas"];
    let xs = floats(&f["x"]);
    let input: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
    let t = Tensor::from_vec(input.clone(), input.len(), &Device::Cpu).unwrap();
    for name in [
        "sigmoid_centered",
        "sigmoid_scaled",
        "affine(gelu_new,1.5,0.25)",
    ] {
        let act: Activation = name.parse().unwrap();
        let want = floats(&f[name]);
        let fast: Vec<f32> = act.forward(&t).unwrap().to_vec1().unwrap();
        let composed: Vec<f32> = act.forward_composed(&t).unwrap().to_vec1().unwrap();
        for (i, &x) in xs.iter().enumerate() {
            assert!(rel(act.eval_f64(x), want[i]) < 1e-12, "{name}({x}): f64");
            assert!(rel(fast[i] as f64, want[i]) < 2e-6, "{name}({x}): kernel");
            assert!(
                rel(composed[i] as f64, want[i]) < 2e-6,
                "{name}({x}): composed"
            );
        }
    }
}

#[test]
fn perplexity_with_calibrated_activations_matches_transformers() {
    let r = reference();
    let entries = r["perplexity"].as_array().unwrap();
    for e in entries {
        let act: Activation = e["activation"].as_str().unwrap().parse().unwrap();
        let opts = LoadOptions {
            activation: Some(act),
            ..LoadOptions::default()
        };
        let loaded = load(&fixture(e["model"].as_str().unwrap()), &opts).unwrap();
        let tokens = loaded
            .tokenizer
            .encode(&read_text(&fixture("sample.txt")).unwrap())
            .unwrap();
        let ppl_opts = PplOptions {
            context: e["context"].as_u64().unwrap() as usize,
            stride: e["stride"].as_u64().unwrap() as usize,
            batch_size: 4,
        };
        let got = perplexity(&loaded.model, &tokens, &ppl_opts, &mut |_, _| {}).unwrap();
        let want = e["perplexity"].as_f64().unwrap();
        assert!(
            (got.perplexity - want).abs() / want < 1e-5,
            "{act}: {} vs transformers {want}",
            got.perplexity
        );
    }
}

/// Each case: the fits match the hook-based PyTorch fit, each calibrated layer's output
/// has the original activation's mean and std on the calibration text, and the calibrated
/// model scores as transformers does with the same fits.
#[test]
fn calibrate_matches_pytorch_and_restores_each_layers_moments() {
    let r = reference();
    for case in r["calibration"].as_array().unwrap() {
        let name = format!("{} {}", case["model"], case["activation"]);
        let layers: Vec<usize> = case["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["layer"].as_u64().unwrap() as usize)
            .collect();
        let opts = LoadOptions {
            activation: Some(case["activation"].as_str().unwrap().parse().unwrap()),
            layers: LayerSpec::Some(layers.iter().copied().collect()),
            ..LoadOptions::default()
        };
        let loaded = load(&fixture(case["model"].as_str().unwrap()), &opts).unwrap();
        let text = read_text(&fixture("sample.txt")).unwrap();
        let all = loaded.tokenizer.encode(&text).unwrap();
        let n = case["tokens"].as_u64().unwrap() as usize;
        let tokens = &all[..n];
        let context = case["context"].as_u64().unwrap() as usize;
        let (plan, fits) = calibrate(&loaded.model, tokens, context).unwrap();
        assert_eq!(
            fits.windows as u64,
            case["windows"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(fits.layers.len(), layers.len(), "{name}");
        for (got, want) in fits.layers.iter().zip(case["layers"].as_array().unwrap()) {
            let l = got.layer;
            for (what, g, w) in [
                ("a", got.a, want["a"].as_f64().unwrap()),
                ("b", got.b, want["b"].as_f64().unwrap()),
                (
                    "target_mean",
                    got.target_mean,
                    want["target_mean"].as_f64().unwrap(),
                ),
                (
                    "target_std",
                    got.target_std,
                    want["target_std"].as_f64().unwrap(),
                ),
            ] {
                assert!(
                    rel(g, w) < 1e-4,
                    "{name} layer {l} {what}: {g} vs PyTorch {w}"
                );
            }
        }
        let calibrated = loaded.model.with_plan(plan.clone());
        let windows = diagnose_windows(tokens.len(), context);
        for fit in &fits.layers {
            let l = fit.layer;
            let [out, original] = layer_moments(
                calibrated.as_ref(),
                tokens,
                &windows,
                l,
                [plan.per_layer[l], plan.original],
            )
            .unwrap();
            assert!(
                (out.mean() - original.mean()).abs() < 1e-3,
                "{name} layer {l}: mean {} vs original {}",
                out.mean(),
                original.mean()
            );
            assert!(
                (out.std() - original.std()).abs() < 1e-3,
                "{name} layer {l}: std {} vs original {}",
                out.std(),
                original.std()
            );
        }
        let ppl_opts = PplOptions {
            context: 64,
            stride: 32,
            batch_size: 4,
        };
        let got = perplexity(&calibrated, &all, &ppl_opts, &mut |_, _| {}).unwrap();
        let want = case["perplexity"]["perplexity"].as_f64().unwrap();
        assert!(
            (got.perplexity - want).abs() / want < 1e-5,
            "{name}: calibrated perplexity {} vs transformers {want}",
            got.perplexity
        );
    }
}

#[test]
fn perplexity_calibrate_reports_the_fits_and_rejects_misuse() {
    let bin = || assert_cmd::Command::cargo_bin("gpt-ablate").unwrap();
    let (v, _) = run_json(bin().args([
        "perplexity",
        "--model",
        fixture("tiny-gpt2").to_str().unwrap(),
        "--data",
        fixture("sample.txt").to_str().unwrap(),
        "--activation",
        "sigmoid",
        "--layers",
        "1,3",
        "--calibrate",
        "--calibrate-tokens",
        "1000",
        "--context",
        "48",
        "--json",
    ]));
    let c = &v["calibration"];
    assert_eq!(c["tokens"], 1000);
    assert_eq!(c["context"], 48);
    let layers: Vec<u64> = c["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_u64().unwrap())
        .collect();
    assert_eq!(layers, [1, 3]);
    assert!(v["activation"]
        .as_str()
        .unwrap()
        .starts_with("affine(sigmoid,"));
    for (args, want) in [
        (vec!["--calibrate"], "--calibrate needs --activation"),
        (
            vec![
                "--activation",
                "relu",
                "--calibrate",
                "--calibrate-tokens",
                "1",
            ],
            "--calibrate-tokens must be at least 2",
        ),
        (
            vec!["--activation", "affine(relu,2)"],
            "expected affine(NAME, a, b)",
        ),
    ] {
        let out = bin()
            .args(["perplexity", "--model"])
            .arg(fixture("tiny-gpt2"))
            .arg("--data")
            .arg(fixture("sample.txt"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{err}");
        // The first line says it all (clap adds a hint line to its own errors).
        assert!(err.lines().next().unwrap().contains(want), "{err}");
    }
}

#[test]
fn a_grid_variant_with_calibrate_scores_as_perplexity_calibrate() {
    let bin = || assert_cmd::Command::cargo_bin("gpt-ablate").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "models = [\"{}\"]\ndatasets = [\"{}\"]\ncontext = 64\nstride = 32\n\
             [[variants]]\nname = \"tanh, calibrated\"\nactivation = \"tanh\"\ncalibrate = true\n",
            fixture("tiny-gpt2").display(),
            fixture("sample.txt").display()
        ),
    )
    .unwrap();
    let (rows, _) = run_json(
        bin()
            .arg("run")
            .arg(&grid)
            .arg("--out")
            .arg(tmp.path().join("out"))
            .arg("--json"),
    );
    let row = &rows.as_array().unwrap()[1];
    assert_eq!(row["activation"], "tanh");
    assert_eq!(row["calibration"]["layers"].as_array().unwrap().len(), 4);
    let (v, _) = run_json(bin().args([
        "perplexity",
        "--model",
        fixture("tiny-gpt2").to_str().unwrap(),
        "--data",
        fixture("sample.txt").to_str().unwrap(),
        "--activation",
        "tanh",
        "--calibrate",
        "--context",
        "64",
        "--stride",
        "32",
        "--json",
    ]));
    assert_eq!(row["calibration"], v["calibration"]);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("out/manifest.json")).unwrap(),
    )
    .unwrap();
    let fits = manifest["calibrations"].as_object().unwrap();
    assert_eq!(fits.len(), 1);
    assert_eq!(fits.values().next().unwrap(), &v["calibration"]);
    let (a, b) = (
        row["perplexity"].as_f64().unwrap(),
        v["perplexity"].as_f64().unwrap(),
    );
    assert!((a - b).abs() / b < 1e-9, "grid {a} vs perplexity {b}");
}
