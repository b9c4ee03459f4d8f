//! `gpt-ablate diagnose`: per-layer statistics of a (swapped) model, beside the original.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::args::{ModelArgs, DATA_HELP};
use super::output::{json_value, print_json};
use super::protocol::ProtocolArgs;
use crate::data::read_documents;
use crate::eval::diagnose::{diagnose_plan, report, Diagnosis, HeadStats, LayerStats};
use crate::eval::prepare::prepare;
use crate::eval::protocol::{Protocol, ProtocolName};
use crate::grid::charts::draw_diagnosis;
use crate::grid::results::write_atomic;
use crate::model::CausalLm;
use crate::progress::{Progress, Unit};
use crate::runtime;

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_name = "FILE|NAME|hf:…", help = DATA_HELP)]
    pub data: PathBuf,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Tokens per window (default: the model's n_positions).
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// Use only the first N tokens of the text.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Also write diagnose.json and charts (SVG, PNG) to this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub(super) fn run(args: DiagnoseArgs) -> anyhow::Result<()> {
    runtime::set_threads_with(args.model.threads, true)?;
    runtime::on_pool(move || run_on_pool(args))
}

/// [`run`] once the threads are set, on a thread of the pool.
fn run_on_pool(args: DiagnoseArgs) -> anyhow::Result<()> {
    if args.max_tokens == Some(0) {
        anyhow::bail!("--max-tokens must be at least 1");
    }
    // Before a possibly long model download.
    let docs = read_documents(&args.data, args.protocol.text_field.as_deref())?;
    let loaded = args.model.load()?;
    let n_positions = loaded.model.info().n_positions;
    if let Some(c) = args.context.filter(|&c| c < 2 || c > n_positions) {
        anyhow::bail!(
            "--context must be between 2 and the model's n_positions ({n_positions}), got {c}"
        );
    }
    let protocol = (args.protocol).resolve(&loaded, args.context, None, ProtocolName::Disjoint)?;
    let prepared = prepare(&protocol, &docs, &loaded.tokenizer, args.max_tokens)
        .map_err(|e| anyhow::anyhow!(super::protocol::render(&e)))
        .with_context(|| format!("preparing {}", args.data.display()))?;
    let original = if loaded.model.is_swapped() {
        let model = loaded.model.original();
        let d = with_progress("diagnose (original)", &model, &prepared.plan);
        Some(d.context("diagnosing the original model")?)
    } else {
        None
    };
    let main = with_progress("diagnose", &loaded.model, &prepared.plan)?;
    let out = DiagnoseJson {
        model: &args.model.source.model,
        model_source: loaded.files.source.to_json(),
        data: args.data.display().to_string(),
        protocol,
        context: protocol.context(),
        tokens: prepared.tokens,
        diagnosis: (&main).into(),
        original: original.as_ref().map(Into::into),
    };
    if let Some(dir) = &args.out {
        write_files(dir, &out, &main, original.as_ref())?;
    }
    if args.json {
        return print_json(&out);
    }
    print!("{}", report(&main, original.as_ref()));
    if let Some(dir) = &args.out {
        eprintln!("wrote {}/diagnose.json and charts", dir.display());
    }
    Ok(())
}

/// Diagnoses `model`, showing progress in windows.
fn with_progress(
    label: &str,
    model: &dyn CausalLm,
    plan: &crate::eval::plan::ScoringPlan,
) -> anyhow::Result<Diagnosis> {
    let mut shown: Option<Progress> = None;
    let d = diagnose_plan(model, plan, &mut |done, total| {
        shown
            .get_or_insert_with(|| Progress::new(label, total as u64, Unit::Items("windows")))
            .set(done as u64)
    });
    if let Some(p) = shown {
        p.finish();
    }
    d
}

/// `--out`: diagnose.json (the `--json` object, pretty-printed) and the charts.
fn write_files(
    dir: &Path,
    out: &DiagnoseJson,
    main: &Diagnosis,
    original: Option<&Diagnosis>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(&json_value(out)?)?;
    write_atomic(&dir.join("diagnose.json"), json.as_bytes())?;
    draw_diagnosis(main, original, dir)?;
    Ok(())
}

/// The `--json` object and diagnose.json: the diagnosis of the loaded model, where it came
/// from, and with `--activation` the original's diagnosis (keys printed sorted, see
/// [`json_value`]).
#[derive(Serialize)]
struct DiagnoseJson<'a> {
    model: &'a str,
    model_source: serde_json::Value,
    data: String,
    /// Whose windows: `disjoint` unless `--protocol` says otherwise.
    protocol: Protocol,
    context: usize,
    tokens: usize,
    #[serde(flatten)]
    diagnosis: DiagnosisJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    original: Option<DiagnosisJson<'a>>,
}

/// One model's diagnosis.
#[derive(Serialize)]
struct DiagnosisJson<'a> {
    layers: &'a [LayerStats],
    head: &'a HeadStats,
    activation: &'a str,
    layers_swapped: &'a [usize],
    windows: usize,
}

impl<'a> From<&'a Diagnosis> for DiagnosisJson<'a> {
    fn from(d: &'a Diagnosis) -> Self {
        Self {
            layers: &d.layers,
            head: &d.head,
            activation: &d.activation,
            layers_swapped: &d.layers_swapped,
            windows: d.windows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::json_value;
    use crate::model::activation::Activation;
    use serde_json::json;

    fn diagnosis(activation: Activation, swapped: Vec<usize>) -> Diagnosis {
        let layer = |layer| LayerStats {
            layer,
            activation,
            pre_mean: -0.04,
            pre_std: 0.68,
            post_mean: 0.13,
            post_std: 0.4,
            deriv_mean: 0.49,
            saturated_frac: 0.018,
            grad_norm: 1.59,
            grad_norm_c_fc: 0.91,
        };
        Diagnosis {
            activation: activation.name(),
            layers_swapped: swapped,
            windows: 4,
            layers: vec![layer(0), layer(1)],
            head: HeadStats {
                tokens: 196,
                softmax_ppl: 33.3,
                sigmoid_mass_mean: 104.8,
                sigmoid_ppl_raw: 1.05,
                sigmoid_ppl_normalized: 110.1,
            },
        }
    }

    #[test]
    fn diagnose_json_prints_what_the_json_literal_printed() {
        let main = diagnosis(Activation::Sigmoid, vec![0, 1]);
        let source = json!({"kind": "local", "path": "m"});
        for original in [None, Some(diagnosis(Activation::GeluNew, vec![]))] {
            // The `json!` object the structs replaced, as it was built.
            let to_json = |d: &Diagnosis| json!({"layers": d.layers, "head": d.head, "activation": d.activation, "layers_swapped": d.layers_swapped, "windows": d.windows});
            let mut old = to_json(&main);
            old["model"] = json!("m");
            old["model_source"] = source.clone();
            old["data"] = json!("d.txt");
            old["protocol"] = json!({"name": "disjoint", "context": 64usize});
            old["context"] = json!(64usize);
            old["tokens"] = json!(200usize);
            if let Some(o) = &original {
                old["original"] = to_json(o);
            }
            let new = DiagnoseJson {
                model: "m",
                model_source: source.clone(),
                data: "d.txt".into(),
                protocol: Protocol::Disjoint { context: 64 },
                context: 64,
                tokens: 200,
                diagnosis: (&main).into(),
                original: original.as_ref().map(Into::into),
            };
            let new = json_value(&new).unwrap();
            assert_eq!(new.to_string(), old.to_string());
            let pretty = serde_json::to_string_pretty(&new).unwrap();
            assert_eq!(pretty, serde_json::to_string_pretty(&old).unwrap());
        }
    }
}
