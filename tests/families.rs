//! Every supported family against Hugging Face transformers: GPT-NeoX (parallel and
//! sequential residual, partial and full rotary), OPT (pre- and post-LN, with projections),
//! Llama (GQA, tied head, llama3 and linear rope scaling, head_dim, biases) and Qwen2 (q/k/v
//! biases, untied head). References: `tests/fixtures/families/reference.json`, written by
//! `scripts/make_family_fixtures.py`.

mod common;

use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use common::{fixture, max_abs_diff, run_json, tensor_max_diff};
use gpt_ablate::data::read_text;
use gpt_ablate::eval::diagnose::diagnose;
use gpt_ablate::eval::generate::{generate, SamplingParams, StopRules};
use gpt_ablate::eval::perplexity::{perplexity, PplOptions};
use gpt_ablate::model::activation::Activation;
use gpt_ablate::model::load::{load, LoadOptions, Loaded};
use gpt_ablate::model::plan::LayerSpec;
use gpt_ablate::model::CausalLm;

fn reference() -> serde_json::Value {
    let path = fixture("families/reference.json");
    let text = std::fs::read_to_string(path).expect("families/reference.json");
    let r: serde_json::Value = serde_json::from_str(&text).expect("parses");
    assert_eq!(r["version"], 1);
    r
}

fn entries<'a>(r: &'a serde_json::Value, key: &str) -> &'a Vec<serde_json::Value> {
    r[key].as_array().unwrap_or_else(|| panic!("{key} list"))
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn load_case(entry: &serde_json::Value, layers_key: &str) -> Loaded {
    let activation = entry["activation"]
        .as_str()
        .map(|a| a.parse::<Activation>().expect("activation"));
    let layers: LayerSpec = entry[layers_key]
        .as_str()
        .unwrap_or("all")
        .parse()
        .expect("layers");
    let layers = if activation.is_none() {
        LayerSpec::All
    } else {
        layers
    };
    let dir = fixture(&format!("families/{}", entry["model"].as_str().unwrap()));
    let opts = LoadOptions {
        activation,
        layers,
        ..LoadOptions::default()
    };
    load(&dir, &opts).unwrap_or_else(|e| panic!("loading {}: {e:#}", dir.display()))
}

fn name(e: &serde_json::Value) -> String {
    format!("{} {} @{}", e["model"], e["activation"], e["layers"])
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-300)
}

#[test]
fn every_family_is_covered() {
    let r = reference();
    let types: Vec<&str> = entries(&r, "models")
        .iter()
        .map(|m| m["model_type"].as_str().unwrap())
        .collect();
    for t in ["gpt_neox", "opt", "llama", "qwen2"] {
        assert!(types.contains(&t), "no {t} fixture");
    }
}

#[test]
fn tokenization_matches_the_python_tokenizers() {
    let r = reference();
    for e in entries(&r, "tokenization") {
        let data = e["data"].as_str().unwrap();
        let loaded = load_case(&serde_json::json!({"model": e["model"]}), "layers");
        let text = match data.strip_suffix(":first_line") {
            Some(_) => e["text"].as_str().unwrap().to_string(),
            None => read_text(&fixture(data)).unwrap(),
        };
        let got = loaded.tokenizer.encode(&text).unwrap();
        let want = ids(&e["ids"]);
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!("{} {data}: first differing token at {i}", e["model"]);
        }
        assert_eq!(got.len(), want.len(), "{} {data}", e["model"]);
        assert_eq!(loaded.tokenizer.decode(&got).unwrap(), text, "round trip");
    }
}

#[test]
fn logits_match_transformers() {
    let r = reference();
    let cases = entries(&r, "logits");
    assert!(cases.len() >= 12);
    for e in cases {
        let loaded = load_case(e, "layers");
        let input = ids(&e["input_ids"]);
        let t = Tensor::from_vec(input.clone(), (1, input.len()), &Device::Cpu).unwrap();
        let got: Vec<f32> = loaded
            .model
            .forward(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f64> = e["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        let (worst, at) = max_abs_diff(&got, &want);
        assert!(worst <= 1e-4, "{}: max abs diff {worst:e} at {at}", name(e));
    }
}

#[test]
fn perplexity_matches_transformers_for_original_and_swapped_activations() {
    let r = reference();
    let cases = entries(&r, "perplexity");
    for e in cases {
        let loaded = load_case(e, "layers");
        let text = read_text(&fixture(e["data"].as_str().unwrap())).unwrap();
        let tokens = loaded.tokenizer.encode(&text).unwrap();
        let opts = PplOptions {
            context: e["context"].as_u64().unwrap() as usize,
            stride: e["stride"].as_u64().unwrap() as usize,
            batch_size: 4,
        };
        let got = perplexity(&loaded.model, &tokens, &opts, &mut |_, _| {}).unwrap();
        assert_eq!(
            got.tokens_scored as u64,
            e["tokens_scored"].as_u64().unwrap(),
            "{}",
            name(e)
        );
        let want = e["perplexity"].as_f64().unwrap();
        let err = rel(got.perplexity, want);
        assert!(
            err <= 1e-5,
            "{}: {} vs {want} (rel {err:e})",
            name(e),
            got.perplexity
        );
    }
    // At least four swapped activations per family.
    for m in entries(&r, "models") {
        let swaps = cases
            .iter()
            .filter(|e| e["model"] == m["model"] && !e["activation"].is_null())
            .count();
        assert!(swaps >= 4, "{}: {swaps} swapped cases", m["model"]);
    }
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    let r = reference();
    for e in entries(&r, "generation") {
        let loaded = load_case(e, "layers");
        let prompt = ids(&e["prompt_ids"]);
        let want = ids(&e["new_ids"]);
        let params = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        let rules = StopRules {
            max_new_tokens: e["max_new_tokens"].as_u64().unwrap() as usize,
            stop: vec![],
            eos: e["eos_token_id"].as_u64().map(|v| v as u32),
        };
        let g = generate(
            &loaded.model,
            &loaded.tokenizer,
            &prompt,
            params,
            &rules,
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(g.token_ids, want, "{}", name(e));
    }
}

#[test]
fn diagnostics_match_pytorch_hooks() {
    let r = reference();
    for e in entries(&r, "diagnose") {
        let loaded = load_case(e, "layer_spec");
        let text = read_text(&fixture(e["data"].as_str().unwrap())).unwrap();
        let mut tokens = loaded.tokenizer.encode(&text).unwrap();
        tokens.truncate(e["max_tokens"].as_u64().unwrap() as usize);
        let context = e["context"].as_u64().unwrap() as usize;
        let d = diagnose(&loaded.model, &tokens, context).unwrap();
        assert_eq!(d.windows as u64, e["windows"].as_u64().unwrap());
        for (got, want) in d.layers.iter().zip(entries(e, "layers")) {
            let stats = [
                ("pre_mean", got.pre_mean, 1e-4),
                ("pre_std", got.pre_std, 1e-4),
                ("post_mean", got.post_mean, 1e-4),
                ("post_std", got.post_std, 1e-4),
                ("deriv_mean", got.deriv_mean, 1e-4),
                ("saturated_frac", got.saturated_frac, 1e-4),
                ("grad_norm", got.grad_norm, 1e-3),
                ("grad_norm_fc", got.grad_norm_c_fc, 1e-3),
            ];
            for (key, value, tol) in stats {
                let w = want[key].as_f64().unwrap();
                let err = (value - w).abs() / w.abs().max(1e-6);
                assert!(
                    err <= tol,
                    "{} layer {}: {key} {value} vs PyTorch {w}",
                    name(e),
                    got.layer
                );
            }
        }
        let h = &e["head"];
        for (key, value) in [
            ("softmax_ppl", d.head.softmax_ppl),
            ("sigmoid_mass_mean", d.head.sigmoid_mass_mean),
            ("sigmoid_ppl_raw", d.head.sigmoid_ppl_raw),
            ("sigmoid_ppl_normalized", d.head.sigmoid_ppl_normalized),
        ] {
            let w = h[key].as_f64().unwrap();
            assert!(
                rel(value, w) <= 1e-4,
                "{} head {key}: {value} vs {w}",
                name(e)
            );
        }
    }
}

#[test]
fn inspect_counts_parameters_as_transformers_does() {
    let r = reference();
    for e in entries(&r, "param_count") {
        let dir = fixture(&format!("families/{}", e["model"].as_str().unwrap()));
        let (v, _) = run_json(Command::cargo_bin("gpt-ablate").unwrap().args([
            "inspect",
            "--model",
            dir.to_str().unwrap(),
            "--json",
        ]));
        assert_eq!(v["parameters"], e["param_count"], "{}", e["model"]);
        let m = entries(&r, "models")
            .iter()
            .find(|m| m["model"] == e["model"])
            .unwrap();
        assert_eq!(v["config"]["model_type"], m["model_type"]);
    }
}

#[test]
fn half_precision_runs_every_family_close_to_f32() {
    let r = reference();
    let text = read_text(&fixture("sample.txt")).unwrap();
    for m in entries(&r, "models") {
        let want = entries(&r, "perplexity")
            .iter()
            .find(|e| {
                e["model"] == m["model"] && e["activation"].is_null() && e["data"] == "sample.txt"
            })
            .unwrap();
        let dir = fixture(&format!("families/{}", m["model"].as_str().unwrap()));
        for dtype in [candle_core::DType::BF16, candle_core::DType::F16] {
            let opts = LoadOptions {
                dtype,
                ..LoadOptions::default()
            };
            let loaded = load(&dir, &opts).unwrap();
            let tokens = loaded.tokenizer.encode(&text).unwrap();
            let ppl_opts = PplOptions {
                context: want["context"].as_u64().unwrap() as usize,
                stride: want["stride"].as_u64().unwrap() as usize,
                batch_size: 2,
            };
            let got = perplexity(&loaded.model, &tokens, &ppl_opts, &mut |_, _| {}).unwrap();
            let w = want["perplexity"].as_f64().unwrap();
            let err = rel(got.perplexity, w);
            assert!(
                err < 0.02,
                "{} {dtype:?}: {} vs f32 reference {w}",
                m["model"],
                got.perplexity
            );
        }
    }
}

#[test]
fn grids_swap_and_sweep_every_family() {
    let tmp = tempfile::tempdir().unwrap();
    let models: Vec<String> = ["pythia-parallel", "opt-post", "qwen2-bias"]
        .iter()
        .map(|m| {
            format!(
                "{:?}",
                fixture(&format!("families/{m}")).display().to_string()
            )
        })
        .collect();
    let cfg = tmp.path().join("grid.toml");
    std::fs::write(
        &cfg,
        format!(
            "models = [{}]\ndatasets = [{:?}]\ncontext = 64\nstride = 32\n\
             [[variants]]\nname = \"sigmoid\"\nactivation = \"sigmoid\"\n\
             [[variants]]\nname = \"relu, one layer\"\nactivation = \"relu\"\nsweep_layers = true\n",
            models.join(", "),
            fixture("sample.txt").display().to_string()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let status = Command::cargo_bin("gpt-ablate")
        .unwrap()
        .args(["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Per model: baseline, sigmoid, one relu cell per layer (3, 2, 2 layers).
    assert_eq!(rows.len(), (2 + 3) + (2 + 2) + (2 + 2));
    for name in ["pythia-parallel", "opt-post", "qwen2-bias"] {
        let of_model: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|row| row["model"].as_str().unwrap().ends_with(name))
            .collect();
        let sigmoid = of_model
            .iter()
            .find(|row| row["variant"] == "sigmoid")
            .unwrap();
        // Context 64 / stride 32 is not a reference setting for every model, so compare the
        // variant with the baseline computed in the same run, and the baseline with the
        // library's own scoring of the same windows.
        assert!(
            sigmoid["perplexity"].as_f64().unwrap()
                > sigmoid["baseline_perplexity"].as_f64().unwrap()
        );
        let loaded = load(
            &fixture(&format!("families/{name}")),
            &LoadOptions::default(),
        )
        .unwrap();
        let tokens = loaded
            .tokenizer
            .encode(&read_text(&fixture("sample.txt")).unwrap())
            .unwrap();
        let opts = PplOptions {
            context: 64,
            stride: 32,
            batch_size: 1,
        };
        let base = perplexity(&loaded.model, &tokens, &opts, &mut |_, _| {}).unwrap();
        let got = sigmoid["baseline_perplexity"].as_f64().unwrap();
        assert!(
            rel(got, base.perplexity) < 1e-9,
            "{name}: {got} vs {}",
            base.perplexity
        );
        let swept = of_model
            .iter()
            .filter(|row| row["sweep_layer"].is_u64())
            .count();
        assert_eq!(swept as u64, loaded.model.info().n_layer as u64, "{name}");
    }
}

/// One fixture per way of wiring a block (residual layout, norms, rotary, grouped heads).
const WIRINGS: [&str; 6] = [
    "pythia-parallel",
    "neox-sequential",
    "opt-pre",
    "opt-post",
    "llama-gqa",
    "qwen2-bias",
];

/// The grid's layer-sweep shortcut: a variant that swaps blocks from `l` on, started at
/// block `l` from the residual the unmodified model kept there, gives the same hidden states
/// to the bit as its full pass — in every family's wiring.
#[test]
fn a_pass_resumed_from_a_kept_residual_equals_the_full_pass() {
    use gpt_ablate::model::plan::ActivationPlan;
    use gpt_ablate::model::Partial;
    for name in WIRINGS {
        let loaded = load(
            &fixture(&format!("families/{name}")),
            &LoadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let base = &loaded.model;
        let n = base.info().n_layer;
        let vocab = base.info().vocab_size as u32;
        let tokens: Vec<u32> = (0..2 * 24).map(|i| (i * 53 + 7) % vocab).collect();
        let input = Tensor::from_vec(tokens, (2, 24), &Device::Cpu).unwrap();
        let taps: Vec<usize> = (1..n).collect();
        let mut kept = Vec::new();
        let partial = Partial {
            keep: &taps,
            ..Partial::default()
        };
        let full_base = base.hidden_states(&input).unwrap();
        let tapped = base
            .hidden_states_partial(&input, partial, &mut kept)
            .unwrap();
        assert_eq!(tensor_max_diff(&full_base, &tapped), 0.0, "{name}: tapping");
        assert_eq!(kept.len(), taps.len(), "{name}");
        for (&l, x) in taps.iter().zip(&kept) {
            let layers: LayerSpec = format!("{l}-{}", n - 1).parse().unwrap();
            let plan = ActivationPlan::original(base.plan().original, n)
                .swap(Activation::Sigmoid, &layers)
                .unwrap();
            let variant = base.with_plan(plan);
            let full = variant.hidden_states(&input).unwrap();
            let start = Partial {
                start: Some((l, x)),
                ..Partial::default()
            };
            let resumed = variant
                .hidden_states_partial(&input, start, &mut Vec::new())
                .unwrap();
            assert_eq!(
                tensor_max_diff(&full, &resumed),
                0.0,
                "{name}: from block {l}"
            );
            assert!(
                tensor_max_diff(&full, &full_base) > 0.0,
                "{name}: swap had an effect"
            );
        }
    }
}

/// Scoring reads the final hidden states of a window's last positions only, so the last
/// block computes just those (and every position's keys and values): the rows equal the full
/// pass's to the bit, for every family's wiring, whether the pass starts from the tokens or
/// from a kept residual, and however many rows are asked for.
#[test]
fn the_last_positions_alone_equal_the_full_pass_to_the_bit() {
    use gpt_ablate::model::Partial;
    let names = std::iter::once("../tiny-gpt2").chain(WIRINGS);
    for (name, dtype) in names.flat_map(|name| [(name, DType::F32), (name, DType::BF16)]) {
        let options = LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        let loaded = load(&fixture(&format!("families/{name}")), &options)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let model = &loaded.model;
        let n = model.info().n_layer;
        let vocab = model.info().vocab_size as u32;
        let tokens: Vec<u32> = (0..2 * 24).map(|i| (i * 31 + 5) % vocab).collect();
        let input = Tensor::from_vec(tokens, (2, 24), &Device::Cpu).unwrap();
        let mut kept = Vec::new();
        let taps = [n - 1];
        let keep = Partial {
            keep: &taps,
            ..Partial::default()
        };
        model
            .hidden_states_partial(&input, keep, &mut kept)
            .unwrap();
        // The residual entering the last block, and the one leaving it (no block left to run).
        let stream = model.residual_stream(&input).unwrap();
        let after = stream[n].flatten_to(1).unwrap();
        for start in [None, Some((n - 1, &kept[0])), Some((n, &after))] {
            let from = Partial {
                start,
                ..Partial::default()
            };
            let full = model
                .hidden_states_partial(&input, from, &mut Vec::new())
                .unwrap();
            for tail in [1, 4, 5, 6, 13, 23, 24] {
                let want = full.narrow(1, 24 - tail, tail).unwrap();
                let partial = Partial {
                    start,
                    tail: Some(tail),
                    ..Partial::default()
                };
                let got = model
                    .hidden_states_partial(&input, partial, &mut Vec::new())
                    .unwrap();
                assert_eq!(got.dims(), want.dims(), "{name}: tail {tail}");
                assert_eq!(
                    tensor_max_diff(&got, &want),
                    0.0,
                    "{name} {dtype:?}: tail {tail} from {:?}",
                    start.map(|s| s.0)
                );
            }
        }
    }
}
