//! Generation: cached decoding equals full forward passes, greedy output equals transformers'
//! `generate(do_sample=False)`, seeds reproduce, and bad input is rejected cleanly.

mod common;

use assert_cmd::Command;
use candle_core::Tensor;
use common::{fixture, reference};
use gpt_ablate::eval::generate::{
    generate, uncached_last_logits, SamplingParams, StopReason, StopRules,
};
use gpt_ablate::model::activation::Activation;
use gpt_ablate::model::load::{load, LoadOptions, Loaded};

fn tiny(activation: Option<Activation>) -> Loaded {
    load(
        &fixture("tiny-gpt2"),
        &LoadOptions {
            activation,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn cached_logits_equal_uncached_logits_at_every_step() {
    for act in [None, Some(Activation::Sigmoid)] {
        let m = tiny(act);
        let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 384).collect();
        // Room for 8 positions: the cache grows as the 40 are fed.
        let mut cache = m.model.new_cache(8);
        // Prompt of 7 tokens in one pass, then one token at a time.
        let mut worst = (0f32, 0usize);
        let mut fed = 0;
        for step in [7usize].into_iter().chain(std::iter::repeat_n(1, 33)) {
            let chunk = &ids[fed..fed + step];
            let input = Tensor::from_slice(chunk, (1, step), m.model.device()).unwrap();
            let h = m.model.hidden_states_cached(&input, &mut cache).unwrap();
            let last = h.narrow(1, step - 1, 1).unwrap().squeeze(1).unwrap();
            let cached: Vec<f32> = m
                .model
                .logits_from_hidden(&last)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap();
            fed += step;
            let full = uncached_last_logits(&m.model, &ids[..fed]).unwrap();
            let d = cached
                .iter()
                .zip(&full)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            if d > worst.0 {
                worst = (d, fed);
            }
        }
        assert_eq!(cache.len(), 40);
        assert!(
            worst.0 <= 1e-4,
            "{act:?}: cached vs uncached max abs diff {:e} at length {}",
            worst.0,
            worst.1
        );
    }
}

#[test]
fn greedy_generation_equals_transformers() {
    let r = reference();
    let entries = r["generation"]
        .as_array()
        .expect("reference.json has a generation section");
    assert!(entries.len() >= 2);
    for e in entries {
        let act = e["activation"]
            .as_str()
            .map(|a| a.parse::<Activation>().unwrap());
        let m = tiny(act);
        let prompt: Vec<u32> = e["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<u32> = e["new_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert!(want.len() >= 40);
        let params = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        let rules = StopRules {
            max_new_tokens: want.len(),
            stop: vec![],
            eos: m.config.info.eos_id,
        };
        let g = generate(&m.model, &m.tokenizer, &prompt, params, &rules, &mut |_| {
            Ok(())
        })
        .unwrap();
        if let Some(i) = g.token_ids.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{act:?}: first differing new token at {i}: {} vs transformers {}",
                g.token_ids[i], want[i]
            );
        }
        assert_eq!(g.token_ids.len(), want.len(), "{act:?}");
        assert_eq!(g.completion, m.tokenizer.decode(&want).unwrap());
    }
}

fn gen(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("gpt-ablate")
        .unwrap()
        .arg("generate")
        .arg("--model")
        .arg(fixture("tiny-gpt2"))
        .args(args)
        .output()
        .unwrap()
}

fn json_of(out: std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn seeds_reproduce_and_differ() {
    let run = |seed: &str| {
        json_of(gen(&[
            "--prompt",
            "ROMEO:",
            "--seed",
            seed,
            "--max-new-tokens",
            "30",
            "--temperature",
            "1.0",
            "--ignore-eos",
            "--json",
        ]))
    };
    let (a, b, c) = (run("1"), run("1"), run("2"));
    assert_eq!(a["token_ids"], b["token_ids"]);
    assert_eq!(a["completion"], b["completion"]);
    assert_ne!(a["token_ids"], c["token_ids"]);
    assert_eq!(a["generated_tokens"], 30);
    for k in [
        "prompt",
        "completion",
        "token_ids",
        "prompt_tokens_per_second",
        "generation_tokens_per_second",
        "seed",
    ] {
        assert!(a.get(k).is_some(), "missing {k}");
    }
}

#[test]
fn streamed_text_equals_the_json_completion_and_stop_strings_cut_it() {
    let text = gen(&[
        "--prompt",
        "ROMEO:",
        "--seed",
        "3",
        "--max-new-tokens",
        "40",
        "--ignore-eos",
    ]);
    let js = json_of(gen(&[
        "--prompt",
        "ROMEO:",
        "--seed",
        "3",
        "--max-new-tokens",
        "40",
        "--ignore-eos",
        "--json",
    ]));
    let stdout = String::from_utf8(text.stdout).unwrap();
    assert_eq!(
        stdout,
        format!("ROMEO:{}\n", js["completion"].as_str().unwrap())
    );
    // Stop at the first space of the completion: the text before it, stop reason stop_string.
    let completion = js["completion"].as_str().unwrap();
    if let Some(at) = completion.find(' ').filter(|&i| i > 0) {
        let stopped = json_of(gen(&[
            "--prompt",
            "ROMEO:",
            "--seed",
            "3",
            "--max-new-tokens",
            "40",
            "--ignore-eos",
            "--stop",
            " ",
            "--json",
        ]));
        assert_eq!(stopped["completion"].as_str().unwrap(), &completion[..at]);
        assert_eq!(stopped["stop_reason"], "stop_string");
    }
}

#[test]
fn compare_shows_both_models() {
    let out = gen(&[
        "--prompt",
        "ROMEO:",
        "--activation",
        "sigmoid",
        "--compare",
        "--temperature",
        "0",
        "--max-new-tokens",
        "10",
        "--json",
    ]);
    let v = json_of(out);
    assert_eq!(v["original"]["activation"], "gelu_new (original)");
    assert_eq!(v["swapped"]["activation"], "sigmoid");
    assert_ne!(
        v["original"]["result"]["token_ids"],
        v["swapped"]["result"]["token_ids"]
    );
}

#[test]
fn context_overflow_stops_with_a_message() {
    let m = tiny(None);
    let prompt: Vec<u32> = (0..60).map(|i| (i * 5 + 1) % 384).collect();
    let params = SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let rules = StopRules {
        max_new_tokens: 100,
        stop: vec![],
        eos: None,
    };
    let g = generate(&m.model, &m.tokenizer, &prompt, params, &rules, &mut |_| {
        Ok(())
    })
    .unwrap();
    assert_eq!(g.stop_reason, StopReason::ContextFull);
    assert_eq!(
        g.token_ids.len(),
        5,
        "64 positions: 60 prompt + 4 fed + 1 last sampled"
    );
    let long = "word ".repeat(28); // about 57 tokens of the 64-position context
    let out = gen(&[
        "--prompt",
        &long,
        "--max-new-tokens",
        "100",
        "--ignore-eos",
        "--temperature",
        "0",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("context of 64 positions is full"));
}

#[test]
fn bad_generation_input_is_rejected() {
    let cases: [(&[&str], &str); 6] = [
        (&["--prompt", &"word ".repeat(200)], "the prompt has"),
        (&["--prompt", "a", "--stop", "\\q"], "unknown escape '\\q'"),
        (
            &["--prompt", "a", "--top-p", "0"],
            "--top-p must be in (0, 1]",
        ),
        (
            &["--prompt", "a", "--top-p", "1.5"],
            "--top-p must be in (0, 1]",
        ),
        (
            &["--prompt", "a", "--temperature", "-0.5"],
            "--temperature must be ≥ 0",
        ),
        (&[], "give a prompt with --prompt"),
    ];
    for (args, want) in cases {
        let out = gen(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: want '{want}' in {stderr}");
        assert!(!stderr.contains("panicked"));
        // Refused before anything is printed: no prompt echoed on stdout.
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
    }
}
