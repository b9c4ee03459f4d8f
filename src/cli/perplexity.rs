//! `gpt-ablate perplexity`: next-token perplexity of one (swapped) checkpoint on one text.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::args::{ModelArgs, DATA_HELP};
use super::output::print_json;
use crate::data::read_data;
use crate::eval::perplexity::{perplexity, PplOptions, PplReport};
use crate::model::load::Loaded;
use crate::model::plan::format_indices;
use crate::progress::{Progress, Unit};
use crate::runtime;

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_name = "FILE|NAME|hf:…", help = DATA_HELP)]
    pub data: PathBuf,
    /// Tokens per window (default: the model's n_positions).
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// Tokens the window advances each step (default: context / 2). Must be 1..=context.
    #[arg(long, value_name = "N")]
    pub stride: Option<usize>,
    /// Windows per forward pass (results do not depend on it).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub batch_size: usize,
    /// Score only the first N tokens of the text (bits/byte then counts the bytes they
    /// cover).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Print one JSON object on stdout instead of the human-readable report.
    #[arg(long)]
    pub json: bool,
}

/// A finished evaluation: the report and what is printed beside it.
struct Scored {
    loaded: Loaded,
    report: PplReport,
    context: usize,
    stride: usize,
    /// `none`, `all` or the swapped indices (`0,2-3`).
    layers: String,
    bytes: usize,
    bits_per_byte: f64,
    load_seconds: f64,
    tokenize_seconds: f64,
}

pub(super) fn run(args: PerplexityArgs) -> anyhow::Result<()> {
    runtime::set_threads(args.model.threads)?;
    if args.max_tokens == Some(0) {
        anyhow::bail!("--max-tokens must be at least 1");
    }
    // Opens the device (and fails on a bad one) before the data is read.
    args.model.load_options()?;
    let text = read_data(&args.data)?; // before a possibly long model download
    let t0 = Instant::now();
    let loaded = args.model.load()?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (tokens, bytes) = tokenize(&loaded, &text, &args)?;
    let tokenize_seconds = t1.elapsed().as_secs_f64();

    let context = args.context.unwrap_or(loaded.model.info().n_positions);
    let ppl_opts = PplOptions {
        context,
        stride: args.stride.unwrap_or((context / 2).max(1)),
        batch_size: args.batch_size,
    };
    let report = score(&loaded, &tokens, &ppl_opts, &args)?;
    let layers = layers_label(&loaded);
    let scored = Scored {
        bits_per_byte: report.nll_sum / std::f64::consts::LN_2 / bytes as f64,
        loaded,
        report,
        context,
        stride: ppl_opts.stride,
        layers,
        bytes,
        load_seconds,
        tokenize_seconds,
    };
    if args.json {
        print_json(&PerplexityJson::new(&args, &scored))
    } else {
        print_report(&args, &scored);
        Ok(())
    }
}

/// The text's tokens, cut to `--max-tokens`, and the UTF-8 bytes they cover.
fn tokenize(
    loaded: &Loaded,
    text: &str,
    args: &PerplexityArgs,
) -> anyhow::Result<(Vec<u32>, usize)> {
    let mut tokens = loaded
        .tokenizer
        .encode(text)
        .with_context(|| format!("tokenizing {}", args.data.display()))?;
    match args.max_tokens {
        Some(max) if max < tokens.len() => {
            tokens.truncate(max);
            let bytes = loaded.tokenizer.decode(&tokens)?.len();
            Ok((tokens, bytes))
        }
        _ => Ok((tokens, text.len())),
    }
}

/// Scores the tokens, showing progress in batches of windows.
fn score(
    loaded: &Loaded,
    tokens: &[u32],
    opts: &PplOptions,
    args: &PerplexityArgs,
) -> anyhow::Result<PplReport> {
    let mut shown: Option<Progress> = None;
    let mut progress = |done: usize, total: usize| {
        let p = shown.get_or_insert_with(|| {
            Progress::new("perplexity", total as u64, Unit::Items("batches"))
        });
        p.set(done as u64);
    };
    let report = perplexity(&loaded.model, tokens, opts, &mut progress)
        .with_context(|| format!("scoring {}", args.data.display()));
    if let Some(p) = shown {
        p.finish();
    }
    report
}

/// The swapped layers as `--layers` writes them: `none`, `all`, or indices (`0,2-3`) —
/// the same layers as `layers_swapped` (a swap to the checkpoint's own activation swaps
/// none).
fn layers_label(loaded: &Loaded) -> String {
    let swapped = loaded.model.plan().swapped_layers();
    if swapped.is_empty() {
        "none".to_string()
    } else if swapped.len() == loaded.model.info().n_layer {
        "all".to_string()
    } else {
        format_indices(swapped)
    }
}

/// The `--json` object (printed with its keys sorted, see
/// [`json_value`](super::output::json_value)).
#[derive(Serialize)]
struct PerplexityJson<'a> {
    model: &'a str,
    model_source: serde_json::Value,
    data: String,
    activation: String,
    original_activation: &'static str,
    layers: &'a str,
    layers_swapped: Vec<usize>,
    context: usize,
    stride: usize,
    batch_size: usize,
    /// `--max-tokens`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<usize>,
    tokens: usize,
    tokens_scored: usize,
    windows: usize,
    bytes: usize,
    nll_sum: f64,
    mean_nll: f64,
    perplexity: f64,
    bits_per_byte: f64,
    seconds: f64,
    tokens_per_second: f64,
    load_seconds: f64,
    tokenize_seconds: f64,
    device: String,
    dtype: String,
    threads: usize,
}

impl<'a> PerplexityJson<'a> {
    fn new(args: &'a PerplexityArgs, s: &'a Scored) -> Self {
        let plan = s.loaded.model.plan();
        let r = &s.report;
        Self {
            model: &args.model.source.model,
            model_source: s.loaded.files.source.to_json(),
            data: args.data.display().to_string(),
            activation: plan.describe(),
            original_activation: plan.original.name(),
            layers: &s.layers,
            layers_swapped: plan.swapped_layers(),
            context: s.context,
            stride: s.stride,
            batch_size: args.batch_size,
            max_tokens: args.max_tokens,
            tokens: r.tokens,
            tokens_scored: r.tokens_scored,
            windows: r.windows,
            bytes: s.bytes,
            nll_sum: r.nll_sum,
            mean_nll: r.mean_nll,
            perplexity: r.perplexity,
            bits_per_byte: s.bits_per_byte,
            seconds: r.seconds,
            tokens_per_second: r.tokens_per_second,
            load_seconds: s.load_seconds,
            tokenize_seconds: s.tokenize_seconds,
            device: args.model.device.to_string(),
            dtype: args.model.dtype.to_string(),
            threads: runtime::threads(),
        }
    }
}

/// The human-readable report.
fn print_report(args: &PerplexityArgs, s: &Scored) {
    let plan = s.loaded.model.plan();
    let (r, layers, bytes) = (&s.report, &s.layers, s.bytes);
    let activation = if s.loaded.model.is_swapped() {
        let (described, original) = (plan.describe(), plan.original);
        format!("{described} (original {original}; layers {layers} swapped)")
    } else {
        format!("{} (the checkpoint's own)", plan.original)
    };
    println!(
        "model        {} ({} layers, {} layout, {} on {})",
        s.loaded.files.source,
        s.loaded.model.info().n_layer,
        s.loaded.layout,
        args.model.dtype,
        args.model.device
    );
    println!("activation   {activation}");
    println!(
        "data         {} ({bytes} bytes, {} tokens)",
        args.data.display(),
        r.tokens
    );
    println!(
        "windows      context {}, stride {}: {} windows, {} tokens scored",
        s.context, s.stride, r.windows, r.tokens_scored
    );
    println!("perplexity   {:.4}", r.perplexity);
    println!("mean NLL     {:.6} nats/token", r.mean_nll);
    println!("bits/byte    {:.6}", s.bits_per_byte);
    println!(
        "speed        {:.1} tokens/s ({:.2} s scoring, {:.2} s load, {} threads)",
        r.tokens_per_second,
        r.seconds,
        s.load_seconds,
        runtime::threads()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::json_value;
    use serde_json::json;

    #[test]
    fn perplexity_json_prints_what_the_json_literal_printed() {
        let source = json!({"kind": "hub", "id": "gpt2", "revision": "main", "commit": "abc"});
        // The `json!` object the struct replaced, with its expressions' values.
        let old = json!({
            "model": "gpt2",
            "model_source": source,
            "data": "d.txt",
            "activation": "sigmoid@0,2-3",
            "original_activation": "gelu_new",
            "layers": "0,2-3",
            "layers_swapped": [0usize, 2, 3],
            "context": 64usize,
            "stride": 32usize,
            "batch_size": 1usize,
            "tokens": 3392usize,
            "tokens_scored": 3391usize,
            "windows": 105usize,
            "bytes": 5648usize,
            "nll_sum": 13641.458139801165,
            "mean_nll": 4.022842270657967,
            "perplexity": 55.85964864957767,
            "bits_per_byte": 3.484501417986106,
            "seconds": 0.5,
            "tokens_per_second": 6782.0,
            "load_seconds": 0.01,
            "tokenize_seconds": 0.002,
            "device": "cpu",
            "dtype": "f32",
            "threads": 2usize,
        });
        let new = PerplexityJson {
            model: "gpt2",
            model_source: source,
            data: "d.txt".into(),
            activation: "sigmoid@0,2-3".into(),
            original_activation: "gelu_new",
            layers: "0,2-3",
            layers_swapped: vec![0, 2, 3],
            context: 64,
            stride: 32,
            batch_size: 1,
            max_tokens: None,
            tokens: 3392,
            tokens_scored: 3391,
            windows: 105,
            bytes: 5648,
            nll_sum: 13641.458139801165,
            mean_nll: 4.022842270657967,
            perplexity: 55.85964864957767,
            bits_per_byte: 3.484501417986106,
            seconds: 0.5,
            tokens_per_second: 6782.0,
            load_seconds: 0.01,
            tokenize_seconds: 0.002,
            device: "cpu".into(),
            dtype: "f32".into(),
            threads: 2,
        };
        assert_eq!(json_value(&new).unwrap().to_string(), old.to_string());
    }
}
