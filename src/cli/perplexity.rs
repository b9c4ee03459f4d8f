//! `gpt-ablate perplexity`: next-token perplexity of one (swapped) checkpoint on one text.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::args::{ModelArgs, DATA_HELP};
use super::output::print_json;
use crate::data::read_data;
use crate::eval::perplexity::{perplexity, PplOptions, PplReport};
use crate::model::load::{LoadOptions, Loaded};
use crate::model::plan::format_indices;
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
    // Opens the device (and fails on a bad one) before the data is read.
    let opts = args.model.load_options()?;
    let text = read_data(&args.data)?; // before a possibly long model download
    let t0 = Instant::now();
    let loaded = args.model.load()?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let tokens = loaded
        .tokenizer
        .encode(&text)
        .with_context(|| format!("tokenizing {}", args.data.display()))?;
    let tokenize_seconds = t1.elapsed().as_secs_f64();

    let context = args.context.unwrap_or(loaded.model.info().n_positions);
    let ppl_opts = PplOptions {
        context,
        stride: args.stride.unwrap_or((context / 2).max(1)),
        batch_size: args.batch_size,
    };
    let report = score(&loaded, &tokens, &ppl_opts, &args)?;
    let layers = layers_label(&loaded, &opts)?;
    let bytes = text.len();
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

/// Scores the tokens, with a progress line on an interactive stderr (not with `--json`).
fn score(
    loaded: &Loaded,
    tokens: &[u32],
    opts: &PplOptions,
    args: &PerplexityArgs,
) -> anyhow::Result<PplReport> {
    let interactive = std::io::stderr().is_terminal() && !args.json;
    let mut progress = |done: usize, total: usize| {
        if interactive {
            eprint!("\r  scoring: batch {done}/{total}");
            if done == total {
                eprint!("\r\x1b[2K");
            }
        }
    };
    perplexity(&loaded.model, tokens, opts, &mut progress)
        .with_context(|| format!("scoring {}", args.data.display()))
}

/// `none` without `--activation`, `all` when every layer was swapped, else the indices
/// `--layers` names.
fn layers_label(loaded: &Loaded, opts: &LoadOptions) -> anyhow::Result<String> {
    let n_layer = loaded.model.info().n_layer;
    Ok(if opts.activation.is_none() {
        "none".to_string()
    } else if loaded.model.plan().swapped_layers().len() == n_layer {
        "all".to_string()
    } else {
        format_indices(opts.layers.resolve(n_layer)?)
    })
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
