//! Numerical parity with Hugging Face transformers: logits and perplexities computed by
//! `scripts/make_fixtures.py` on the same checkpoints, for the original and swapped
//! activations, both key layouts, f16 storage and sharded weights.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, max_abs_diff, reference, tensor_max_diff};
use gpt_ablate::data::read_text;
use gpt_ablate::eval::perplexity::{perplexity, PplOptions};
use gpt_ablate::model::activation::Activation;
use gpt_ablate::model::load::{load, LoadOptions, Loaded};
use gpt_ablate::model::plan::LayerSpec;

fn options(entry: &serde_json::Value) -> LoadOptions {
    let activation = entry["activation"]
        .as_str()
        .map(|a| a.parse::<Activation>().unwrap());
    let layers: LayerSpec = entry["layers"].as_str().unwrap_or("all").parse().unwrap();
    LoadOptions {
        activation,
        layers,
        ..LoadOptions::default()
    }
}

fn load_entry(entry: &serde_json::Value) -> Loaded {
    let dir = fixture(entry["model"].as_str().unwrap());
    load(&dir, &options(entry)).unwrap_or_else(|e| panic!("loading {}: {e:#}", dir.display()))
}

fn describe(entry: &serde_json::Value) -> String {
    format!(
        "{} activation={} layers={}",
        entry["model"], entry["activation"], entry["layers"]
    )
}

#[test]
fn tokenization_matches_the_python_tokenizer() {
    let r = reference();
    for key in ["tokenization", "tokenization_2"] {
        let t = &r[key];
        let loaded = load(
            &fixture(t["model"].as_str().unwrap()),
            &LoadOptions::default(),
        )
        .unwrap();
        let text = read_text(&fixture(t["data"].as_str().unwrap())).unwrap();
        let ids = loaded.tokenizer.encode(&text).unwrap();
        let want: Vec<u32> = t["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids.len(), want.len(), "{key}: token count");
        if let Some(i) = ids.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{key}: first differing token at index {i}: {} vs {}",
                ids[i], want[i]
            );
        }
        assert_eq!(text.len() as u64, t["bytes"].as_u64().unwrap());
    }
}

#[test]
fn logits_match_transformers_at_every_position() {
    let r = reference();
    let entries = r["logits"].as_array().unwrap();
    assert!(entries.len() >= 6);
    for entry in entries {
        let loaded = load_entry(entry);
        let ids: Vec<u32> = entry["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
        let logits = loaded.model.forward(&input).unwrap();
        let got: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f64> = entry["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        let (worst, at) = max_abs_diff(&got, &want);
        let vocab = loaded.config.info.vocab_size;
        assert!(
            worst <= 1e-4,
            "{}: logits max abs diff {worst:e} at position {}, token {} (got {}, want {})",
            describe(entry),
            at / vocab,
            at % vocab,
            got[at],
            want[at]
        );
    }
}

#[test]
fn perplexity_matches_transformers() {
    let r = reference();
    let entries = r["perplexity"].as_array().unwrap();
    assert!(entries.len() >= 20);
    let mut checked_activations = std::collections::BTreeSet::new();
    for entry in entries {
        let loaded = load_entry(entry);
        let text = read_text(&fixture(entry["data"].as_str().unwrap())).unwrap();
        let tokens = loaded.tokenizer.encode(&text).unwrap();
        let opts = PplOptions {
            context: entry["context"].as_u64().unwrap() as usize,
            stride: entry["stride"].as_u64().unwrap() as usize,
            batch_size: 1,
        };
        let got = perplexity(&loaded.model, &tokens, &opts, &mut |_, _| {}).unwrap();
        assert_eq!(
            got.tokens_scored as u64,
            entry["tokens_scored"].as_u64().unwrap(),
            "{}: tokens scored",
            describe(entry)
        );
        let want = entry["perplexity"].as_f64().unwrap();
        let rel = (got.perplexity - want).abs() / want;
        assert!(
            rel <= 1e-5,
            "{} c={} s={}: perplexity {} vs transformers {want} (relative diff {rel:e})",
            describe(entry),
            opts.context,
            opts.stride,
            got.perplexity
        );
        if let Some(a) = entry["activation"].as_str() {
            checked_activations.insert(a.to_string());
        }
    }
    for a in gpt_ablate::model::activation::ALL_ACTIVATIONS {
        assert!(
            checked_activations.contains(&a.name()),
            "no perplexity reference for {a}"
        );
    }
}

#[test]
fn batch_size_does_not_change_results() {
    let loaded = load(&fixture("tiny-gpt2"), &LoadOptions::default()).unwrap();
    let text = read_text(&fixture("sample.txt")).unwrap();
    let tokens = loaded.tokenizer.encode(&text).unwrap();
    let run = |batch_size| {
        let opts = PplOptions {
            context: 64,
            stride: 16,
            batch_size,
        };
        perplexity(&loaded.model, &tokens, &opts, &mut |_, _| {}).unwrap()
    };
    let one = run(1);
    for b in [2, 5, 64] {
        let other = run(b);
        assert_eq!(one.tokens_scored, other.tokens_scored);
        let rel = (one.nll_sum - other.nll_sum).abs() / one.nll_sum;
        assert!(
            rel <= 1e-7,
            "batch {b}: nll sum {} vs {} (rel {rel:e})",
            other.nll_sum,
            one.nll_sum
        );
    }
}

fn logits_of(loaded: &Loaded, ids: &[u32]) -> Tensor {
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
    loaded.model.forward(&input).unwrap()
}

#[test]
fn a_swap_changes_logits_and_only_downstream_of_the_chosen_layers() {
    let dir = fixture("tiny-gpt2");
    let ids: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 300).collect();
    let base = load(&dir, &LoadOptions::default()).unwrap();
    let opts = LoadOptions {
        activation: Some(Activation::Sigmoid),
        layers: "2".parse().unwrap(),
        ..LoadOptions::default()
    };
    let swapped = load(&dir, &opts).unwrap();
    assert_eq!(swapped.model.plan().swapped_layers(), vec![2]);
    assert!(tensor_max_diff(&logits_of(&base, &ids), &logits_of(&swapped, &ids)) > 1e-2);

    let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let a = base.model.residual_stream(&input).unwrap();
    let b = swapped.model.residual_stream(&input).unwrap();
    // a[i] is the input of block i: blocks 0 and 1 and the attention of block 2 are untouched.
    for i in 0..=2 {
        assert_eq!(
            tensor_max_diff(&a[i], &b[i]),
            0.0,
            "residual entering block {i} changed"
        );
    }
    for i in 3..a.len() {
        assert!(
            tensor_max_diff(&a[i], &b[i]) > 1e-3,
            "residual after block {} did not change",
            i - 1
        );
    }
    // Swapping in the activation the checkpoint already has changes nothing.
    let same = LoadOptions {
        activation: Some(Activation::GeluNew),
        ..LoadOptions::default()
    };
    let same = load(&dir, &same).unwrap();
    assert_eq!(
        tensor_max_diff(&logits_of(&base, &ids), &logits_of(&same, &ids)),
        0.0
    );
}

#[test]
fn real_gpt2_tokenizer_counts_wikitext_2_test_as_published() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tok = gpt_ablate::data::TextTokenizer::from_file(
        &root.join("data/gpt2-tokenizer/tokenizer.json"),
    )
    .unwrap();
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    let text = read_text(&root.join("data/wikitext-2-raw-test.txt")).unwrap();
    assert_eq!(tok.encode(&text).unwrap().len(), 287_644);
}
