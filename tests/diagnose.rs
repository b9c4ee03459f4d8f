//! `diagnose` against PyTorch (forward hooks for the pre-activations, autograd for the
//! gradient norms): every statistic within 1e-4 relative, gradients within 1e-3.

mod common;

use assert_cmd::Command;
use common::{fixture, run_json};
use gpt_ablate::data::read_text;
use gpt_ablate::eval::diagnose::diagnose;
use gpt_ablate::model::activation::Activation;
use gpt_ablate::model::load::{load, LoadOptions};

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("diagnose_reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["version"], 1);
    r
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(1e-3)
}

#[test]
fn diagnostics_match_pytorch() {
    let r = reference();
    let context = r["context"].as_u64().unwrap() as usize;
    let max_tokens = r["max_tokens"].as_u64().unwrap() as usize;
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let activation = case["activation"]
            .as_str()
            .map(|a| a.parse::<Activation>().unwrap());
        let layers = case["layer_spec"]
            .as_str()
            .unwrap_or("all")
            .parse()
            .unwrap();
        let m = load(
            &fixture("tiny-gpt2"),
            &LoadOptions {
                activation,
                layers,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let mut tokens = m
            .tokenizer
            .encode(&read_text(&fixture("sample.txt")).unwrap())
            .unwrap();
        tokens.truncate(max_tokens);
        let d = diagnose(&m.model, &tokens, context).unwrap();
        let name = format!("{activation:?}@{}", case["layer_spec"]);
        assert_eq!(d.windows as u64, r["windows"].as_u64().unwrap(), "{name}");
        for (got, want) in d.layers.iter().zip(case["layers"].as_array().unwrap()) {
            let l = got.layer;
            assert_eq!(
                got.activation.name(),
                case["per_layer"][l].as_str().unwrap(),
                "{name} layer {l}"
            );
            let stats = [
                ("pre_mean", got.pre_mean, 1e-4),
                ("pre_std", got.pre_std, 1e-4),
                ("post_mean", got.post_mean, 1e-4),
                ("post_std", got.post_std, 1e-4),
                ("deriv_mean", got.deriv_mean, 1e-4),
                ("saturated_frac", got.saturated_frac, 1e-4),
                ("grad_norm", got.grad_norm, 1e-3),
                ("grad_norm_c_fc", got.grad_norm_c_fc, 1e-3),
            ];
            for (key, value, rel) in stats {
                let w = want[key].as_f64().unwrap();
                assert!(
                    close(value, w, rel),
                    "{name} layer {l} {key}: {value} vs PyTorch {w}"
                );
            }
        }
        let h = &case["head"];
        assert_eq!(d.head.tokens as u64, h["tokens"].as_u64().unwrap());
        for (key, value) in [
            ("softmax_ppl", d.head.softmax_ppl),
            ("sigmoid_mass_mean", d.head.sigmoid_mass_mean),
            ("sigmoid_ppl_raw", d.head.sigmoid_ppl_raw),
            ("sigmoid_ppl_normalized", d.head.sigmoid_ppl_normalized),
        ] {
            let w = h[key].as_f64().unwrap();
            assert!(
                close(value, w, 1e-4),
                "{name} head {key}: {value} vs PyTorch {w}"
            );
        }
    }
}

#[test]
fn cli_reports_json_charts_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (v, _) = run_json(
        Command::cargo_bin("gpt-ablate")
            .unwrap()
            .args([
                "diagnose",
                "--context",
                "64",
                "--max-tokens",
                "300",
                "--activation",
                "sigmoid",
                "--json",
                "--out",
            ])
            .arg(tmp.path())
            .arg("--model")
            .arg(fixture("tiny-gpt2"))
            .arg("--data")
            .arg(fixture("sample.txt")),
    );
    for key in ["layers", "head", "activation", "layers_swapped", "original"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["layers"].as_array().unwrap().len(), 4);
    for key in [
        "pre_mean",
        "pre_std",
        "post_mean",
        "post_std",
        "deriv_mean",
        "saturated_frac",
        "grad_norm",
        "grad_norm_c_fc",
    ] {
        assert!(v["layers"][0][key].is_number(), "layers[0].{key}");
    }
    // Sigmoid is never centred: its mean output is far from 0 in every layer.
    assert!(v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["post_mean"].as_f64().unwrap() > 0.3));
    for f in [
        "diagnose.json",
        "deriv_mean.svg",
        "deriv_mean.png",
        "post_mean.svg",
        "grad_norm.png",
    ] {
        assert!(tmp.path().join(f).exists(), "{f}");
    }
    let text = Command::cargo_bin("gpt-ablate")
        .unwrap()
        .args([
            "diagnose",
            "--context",
            "64",
            "--max-tokens",
            "200",
            "--activation",
            "relu",
            "--model",
        ])
        .arg(fixture("tiny-gpt2"))
        .arg("--data")
        .arg(fixture("sample.txt"))
        .output()
        .unwrap();
    let report = String::from_utf8(text.stdout).unwrap();
    // Each claim is named in words, the perplexity change is there, and the sigmoid score
    // is not presented as a perplexity.
    for claim in [
        "Vanishing gradients, saturation",
        "Vanishing gradients, through depth",
        "Non-zero-centred output",
        "Empirical underperformance: perplexity (softmax, lower is better) gelu_new",
        "Sigmoid instead of softmax at the output (gelu_new model)",
        "not a perplexity",
    ] {
        assert!(report.contains(claim), "{claim}: {report}");
    }
    assert!(!report.contains("claim"), "{report}");
    for (args, want) in [
        (
            vec!["--context", "65"],
            "--context must be between 2 and the model's n_positions (64)",
        ),
        (vec!["--max-tokens", "1"], "diagnostics need at least 2"),
        (vec!["--max-tokens", "0"], "--max-tokens must be at least 1"),
    ] {
        let out = Command::cargo_bin("gpt-ablate")
            .unwrap()
            .arg("diagnose")
            .args(&args)
            .arg("--model")
            .arg(fixture("tiny-gpt2"))
            .arg("--data")
            .arg(fixture("sample.txt"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(want),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1);
    }
}
