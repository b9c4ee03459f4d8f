//! `gpt-ablate perplexity`: next-token perplexity of one (swapped) checkpoint on one text,
//! under a protocol, with its uncertainty and optionally every token's NLL.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::args::{ModelArgs, DATA_HELP};
use super::calibrate::CalibrateArgs;
use super::output::print_json;
use super::protocol::ProtocolArgs;
use crate::data::read_documents;
use crate::eval::lm_eval::{lm_eval_metrics, LmEvalMetrics};
use crate::eval::nll_output::{chunk_records, NllWriter};
use crate::eval::perplexity::{score_plan, PplError, PplReport, ScoredChunk};
use crate::eval::prepare::{prepare, Prepared};
use crate::eval::protocol::{Protocol, ProtocolName};
use crate::eval::uncertainty::{nll_spread, NllSpread};
use crate::model::load::Loaded;
use crate::model::plan::format_indices;
use crate::progress::{Progress, Unit};
use crate::runtime;
use crate::train::calibrate::Calibration;

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_name = "FILE|NAME|hf:…", help = DATA_HELP)]
    pub data: PathBuf,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Tokens per window (hf, llama-cpp, disjoint; default: the model's n_positions).
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// hf: tokens the window advances each step (default: context / 2). Must be 1..=context.
    #[arg(long, value_name = "N")]
    pub stride: Option<usize>,
    /// Windows per forward pass (results do not depend on it).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub batch_size: usize,
    /// Also write one record per scored token (document, position, token, text, nll) to FILE:
    /// JSONL, or Parquet when FILE ends in .parquet.
    #[arg(long, value_name = "FILE")]
    pub save_nll: Option<PathBuf>,
    /// Score only the first N tokens of the text (bits/byte then counts the bytes they
    /// cover).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    #[command(flatten)]
    pub calibrate: CalibrateArgs,
    /// Print one JSON object on stdout instead of the human-readable report.
    #[arg(long)]
    pub json: bool,
}

/// A finished evaluation: the report and what is printed beside it.
struct Scored {
    loaded: Loaded,
    report: PplReport,
    protocol: Protocol,
    /// `none`, `all` or the swapped indices (`0,2-3`).
    layers: String,
    /// Tokens of the text (before llama-cpp drops a partial chunk).
    tokens: usize,
    bytes: usize,
    bits_per_byte: f64,
    spread: NllSpread,
    lm_eval: Option<LmEvalMetrics>,
    nll_records: Option<u64>,
    load_seconds: f64,
    tokenize_seconds: f64,
    calibration: Option<Calibration>,
}

pub(super) fn run(args: PerplexityArgs) -> anyhow::Result<()> {
    runtime::set_threads(args.model.threads)?;
    runtime::on_pool(move || run_on_pool(args))
}

/// [`run`] once the threads are set, on a thread of the pool.
fn run_on_pool(args: PerplexityArgs) -> anyhow::Result<()> {
    if args.max_tokens == Some(0) {
        anyhow::bail!("--max-tokens must be at least 1");
    }
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    // Opens the device (and fails on a bad one) before the data is read.
    args.model.load_options()?;
    // Before a possibly long model download.
    let docs = read_documents(&args.data, args.protocol.text_field.as_deref())?;
    let t0 = Instant::now();
    let mut loaded = args.model.load()?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let protocol = (args.protocol).resolve(&loaded, args.context, args.stride, ProtocolName::Hf)?;
    let t1 = Instant::now();
    let prepared = prepare(&protocol, &docs, &loaded.tokenizer, args.max_tokens)
        .map_err(|e| anyhow::anyhow!(super::protocol::render(&e)))
        .with_context(|| format!("preparing {}", args.data.display()))?;
    let tokenize_seconds = t1.elapsed().as_secs_f64();
    let context = args.context.unwrap_or(loaded.model.info().n_positions);
    let calibration = args.calibrate.apply(&mut loaded, &docs.joined(), context)?;
    let (report, nll_records) = score(&loaded, &prepared, &args)?;
    let spread = nll_spread(report.tokens_scored, report.nll_sum, report.nll_sq_sum);
    let lm_eval = matches!(protocol, Protocol::LmEval { .. })
        .then(|| lm_eval_metrics(&docs.docs, &report.document_nll));
    let scored = Scored {
        layers: layers_label(&loaded),
        bits_per_byte: report.nll_sum / std::f64::consts::LN_2 / prepared.bytes as f64,
        loaded,
        report,
        protocol,
        tokens: prepared.tokens,
        bytes: prepared.bytes,
        spread,
        lm_eval,
        nll_records,
        load_seconds,
        tokenize_seconds,
        calibration,
    };
    if args.json {
        print_json(&PerplexityJson::new(&args, &scored))
    } else {
        print_report(&args, &scored);
        Ok(())
    }
}

/// Scores the plan, with a progress line on an interactive stderr (not with `--json`) and
/// the per-token file when asked; returns the report and the records written.
fn score(
    loaded: &Loaded,
    prepared: &Prepared,
    args: &PerplexityArgs,
) -> anyhow::Result<(PplReport, Option<u64>)> {
    let mut shown: Option<Progress> = None;
    let mut progress = |done: usize, total: usize| {
        let p = shown.get_or_insert_with(|| {
            Progress::new("perplexity", total as u64, Unit::Items("batches"))
        });
        p.set(done as u64);
    };
    let mut writer = match &args.save_nll {
        Some(p) => Some(NllWriter::create(p, false)?),
        None => None,
    };
    let mut per_token = |chunk: &ScoredChunk<'_>, nlls: &[f64]| -> Result<(), PplError> {
        let Some(w) = writer.as_mut() else {
            return Ok(());
        };
        let out = |e: &dyn std::fmt::Display| PplError::Output(e.to_string());
        for r in chunk_records(chunk, nlls, None, &loaded.tokenizer).map_err(|e| out(&e))? {
            w.write(&r).map_err(|e| out(&e))?;
        }
        Ok(())
    };
    let report = score_plan(
        &loaded.model,
        &prepared.plan,
        args.batch_size,
        &mut progress,
        &mut per_token,
    )
    .with_context(|| format!("scoring {}", args.data.display()))?;
    if let Some(p) = shown {
        p.finish();
    }
    let records = writer.map(NllWriter::finish).transpose()?;
    Ok((report, records))
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
    original_activation: String,
    layers: &'a str,
    layers_swapped: Vec<usize>,
    /// Which windows were scored, with every setting.
    protocol: Protocol,
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
    nll_stderr: Option<f64>,
    perplexity: f64,
    perplexity_ci95: Option<[f64; 2]>,
    /// llama-cpp only: llama-perplexity's `U` in `PPL = X +/- U`.
    #[serde(skip_serializing_if = "Option::is_none")]
    perplexity_plus_minus: Option<f64>,
    bits_per_byte: f64,
    /// lm-eval only: the harness's wikitext metrics (its `bits_per_byte` is the one above).
    #[serde(skip_serializing_if = "Option::is_none")]
    word_perplexity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    byte_perplexity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    documents: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    words: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    save_nll: Option<SavedNll>,
    seconds: f64,
    tokens_per_second: f64,
    load_seconds: f64,
    tokenize_seconds: f64,
    device: String,
    dtype: String,
    threads: usize,
    /// The per-layer fits of `--calibrate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    calibration: Option<&'a Calibration>,
}

/// Where `--save-nll` wrote its records.
#[derive(Serialize)]
struct SavedNll {
    path: String,
    records: u64,
}

impl<'a> PerplexityJson<'a> {
    fn new(args: &'a PerplexityArgs, s: &'a Scored) -> Self {
        let plan = s.loaded.model.plan();
        let r = &s.report;
        let llama = matches!(s.protocol, Protocol::LlamaCpp { .. });
        Self {
            model: &args.model.source.model,
            model_source: s.loaded.files.source.to_json(),
            data: args.data.display().to_string(),
            activation: plan.describe(),
            original_activation: plan.original.name(),
            layers: &s.layers,
            layers_swapped: plan.swapped_layers(),
            protocol: s.protocol,
            context: s.protocol.context(),
            stride: s.protocol.stride(),
            batch_size: args.batch_size,
            max_tokens: args.max_tokens,
            tokens: s.tokens,
            tokens_scored: r.tokens_scored,
            windows: r.windows,
            bytes: s.bytes,
            nll_sum: r.nll_sum,
            mean_nll: r.mean_nll,
            nll_stderr: s.spread.nll_stderr,
            perplexity: r.perplexity,
            perplexity_ci95: s.spread.perplexity_ci95,
            perplexity_plus_minus: s.spread.llama_cpp_plus_minus.filter(|_| llama),
            bits_per_byte: s.bits_per_byte,
            word_perplexity: s.lm_eval.map(|m| m.word_perplexity),
            byte_perplexity: s.lm_eval.map(|m| m.byte_perplexity),
            documents: s.lm_eval.map(|m| m.documents),
            words: s.lm_eval.map(|m| m.words),
            text_field: args.protocol.text_field.as_deref(),
            save_nll: args
                .save_nll
                .as_ref()
                .zip(s.nll_records)
                .map(|(p, n)| SavedNll {
                    path: p.display().to_string(),
                    records: n,
                }),
            seconds: r.seconds,
            tokens_per_second: r.tokens_per_second,
            load_seconds: s.load_seconds,
            tokenize_seconds: s.tokenize_seconds,
            device: args.model.device.to_string(),
            dtype: args.model.dtype.to_string(),
            threads: runtime::threads(),
            calibration: s.calibration.as_ref(),
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
    if let Some(c) = &s.calibration {
        println!(
            "calibrated   on {} tokens (context {}): {}",
            c.tokens,
            c.context,
            c.layers
                .iter()
                .map(|l| format!("L{} a={:.4} b={:+.4}", l.layer, l.a, l.b))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "data         {} ({bytes} bytes, {} tokens)",
        args.data.display(),
        s.tokens
    );
    println!(
        "protocol     {}: {} windows, {} tokens scored",
        s.protocol.describe(),
        r.windows,
        r.tokens_scored
    );
    print_numbers(s);
    if let Some(n) = s.nll_records {
        let path = args.save_nll.as_ref().map(|p| p.display().to_string());
        println!("per-token    {n} records in {}", path.unwrap_or_default());
    }
    println!(
        "speed        {:.1} tokens/s ({:.2} s scoring, {:.2} s load, {} threads)",
        r.tokens_per_second,
        r.seconds,
        s.load_seconds,
        runtime::threads()
    );
}

/// Perplexity with its uncertainty, and each protocol's own figures.
fn print_numbers(s: &Scored) {
    let r = &s.report;
    match s.spread.perplexity_ci95 {
        Some([lo, hi]) => println!(
            "perplexity   {:.4} (95% CI {lo:.4} – {hi:.4})",
            r.perplexity
        ),
        None => println!("perplexity   {:.4}", r.perplexity),
    }
    match s.spread.nll_stderr {
        Some(se) => println!(
            "mean NLL     {:.6} ± {se:.6} nats/token (standard error)",
            r.mean_nll
        ),
        None => println!("mean NLL     {:.6} nats/token", r.mean_nll),
    }
    if let (Protocol::LlamaCpp { .. }, Some(u)) = (s.protocol, s.spread.llama_cpp_plus_minus) {
        println!(
            "llama.cpp    Final estimate: PPL = {:.4} +/- {u:.5}",
            r.perplexity
        );
    }
    println!("bits/byte    {:.6}", s.bits_per_byte);
    if let Some(m) = &s.lm_eval {
        println!(
            "lm-eval      word_perplexity {:.4}, byte_perplexity {:.6}, bits_per_byte {:.6} ({} documents, {} words, {} bytes)",
            m.word_perplexity, m.byte_perplexity, m.bits_per_byte, m.documents, m.words, m.bytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::json_value;
    use serde_json::json;

    #[test]
    fn perplexity_json_keeps_the_former_keys_and_adds_the_protocol() {
        let source = json!({"kind": "hub", "id": "gpt2", "revision": "main", "commit": "abc"});
        // The `json!` object the struct replaced, with its expressions' values, plus the keys
        // protocols added.
        let old = json!({
            "model": "gpt2",
            "model_source": source,
            "data": "d.jsonl",
            "activation": "sigmoid@0,2-3",
            "original_activation": "gelu_new",
            "layers": "0,2-3",
            "layers_swapped": [0usize, 2, 3],
            "protocol": {"name": "lm-eval", "max_length": 64usize, "prefix_token": 0u32},
            "context": 64usize,
            "stride": 64usize,
            "batch_size": 1usize,
            "tokens": 3392usize,
            "tokens_scored": 3391usize,
            "windows": 105usize,
            "bytes": 5648usize,
            "nll_sum": 13641.458139801165,
            "mean_nll": 4.022842270657967,
            "nll_stderr": 0.03,
            "perplexity": 55.85964864957767,
            "perplexity_ci95": [52.5, 59.2],
            "bits_per_byte": 3.484501417986106,
            "word_perplexity": 9000.5,
            "byte_perplexity": 11.2,
            "documents": 8usize,
            "words": 900usize,
            "text_field": "page",
            "save_nll": {"path": "n.parquet", "records": 3391u64},
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
            data: "d.jsonl".into(),
            activation: "sigmoid@0,2-3".into(),
            original_activation: "gelu_new".into(),
            layers: "0,2-3",
            layers_swapped: vec![0, 2, 3],
            protocol: Protocol::LmEval {
                max_length: 64,
                prefix_token: 0,
                detokenize: None,
            },
            context: 64,
            stride: 64,
            batch_size: 1,
            max_tokens: None,
            tokens: 3392,
            tokens_scored: 3391,
            windows: 105,
            bytes: 5648,
            nll_sum: 13641.458139801165,
            mean_nll: 4.022842270657967,
            nll_stderr: Some(0.03),
            perplexity: 55.85964864957767,
            perplexity_ci95: Some([52.5, 59.2]),
            perplexity_plus_minus: None,
            bits_per_byte: 3.484501417986106,
            word_perplexity: Some(9000.5),
            byte_perplexity: Some(11.2),
            documents: Some(8),
            words: Some(900),
            text_field: Some("page"),
            save_nll: Some(SavedNll {
                path: "n.parquet".into(),
                records: 3391,
            }),
            seconds: 0.5,
            tokens_per_second: 6782.0,
            load_seconds: 0.01,
            tokenize_seconds: 0.002,
            device: "cpu".into(),
            dtype: "f32".into(),
            threads: 2,
            calibration: None,
        };
        assert_eq!(json_value(&new).unwrap().to_string(), old.to_string());
    }
}
