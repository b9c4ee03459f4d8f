//! Result rows of an ablation grid and their on-disk forms: `results.jsonl` (append-only,
//! one flushed line per finished cell, repaired after a crash) and `results.csv` (replaced
//! atomically). The table printed on stdout is in [`crate::grid::table`].

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::eval::lm_eval::LmEvalMetrics;
use crate::eval::protocol::Protocol;
use crate::model::plan::ActivationPlan;
use crate::provenance;

/// One finished cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// Content hash of everything the numbers depend on (see `grid::inputs`).
    pub key: String,
    pub index: usize,
    pub model: String,
    pub dataset: String,
    pub variant: String,
    pub is_baseline: bool,
    pub sweep: Option<String>,
    pub sweep_layer: Option<usize>,
    /// `relu`, `relu@0-1,sigmoid@2-3`, or the original activation's name.
    pub activation: String,
    pub layers_swapped: Vec<usize>,
    pub per_layer: Vec<String>,
    pub context: usize,
    pub stride: usize,
    pub tokens_scored: usize,
    pub bytes: usize,
    pub nll_sum: f64,
    pub mean_nll: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
    /// The unmodified model's perplexity, computed in the same pass.
    pub baseline_perplexity: f64,
    pub delta_perplexity: f64,
    pub ratio_perplexity: f64,
    /// Mean over scored tokens of KL(P_baseline ‖ P_variant), in nats.
    pub kl_mean: f64,
    /// Fraction of scored tokens where the variant's argmax equals the baseline's.
    pub top1_agreement: f64,
    pub seconds: f64,
    pub finished_at: String,
    /// Per-layer diagnostics (`diagnose = true` in the config), over non-overlapping
    /// windows of the same context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<RowDiagnostics>,
    /// The protocol the cell was scored under, with its settings (absent in rows written
    /// before protocols existed: those are `hf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Mean NLL difference against the baseline, variant − baseline (nats/token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_nll: Option<f64>,
    /// 95 % interval of `delta_nll`: paired block bootstrap over windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_nll_ci95: Option<[f64; 2]>,
    /// 95 % interval of `perplexity`: block bootstrap over windows; charts draw it as an
    /// error bar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity_ci95: Option<[f64; 2]>,
    /// lm-eval protocol: the harness's wikitext metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm_eval: Option<LmEvalMetrics>,
    /// `save_nll`: the cell's per-token file, relative to the output directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll_file: Option<String>,
    /// `calibrate = true`: the per-layer fits (the row's activation is the one asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::train::calibrate::Calibration>,
    /// Cells that train (fine-tuned variants, from-scratch grids): what the training did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<crate::grid::training::RowTraining>,
}

/// Which cell a scored row is for.
pub struct RowIdentity<'a> {
    pub key: String,
    pub index: usize,
    pub model: String,
    pub dataset: String,
    pub variant: String,
    pub is_baseline: bool,
    /// The sweep group and layer of a sweep cell.
    pub sweep: Option<(String, usize)>,
    pub plan: &'a ActivationPlan,
    pub protocol: Protocol,
}

/// The sums a scored row is derived from, over its scored tokens.
pub struct ScoreSums {
    pub tokens: usize,
    /// UTF-8 bytes the tokens cover.
    pub bytes: usize,
    /// Σ NLL of the variant and of the baseline.
    pub nll: f64,
    pub nll_base: f64,
    /// Σ KL(P_baseline ‖ P_variant) and the count of agreeing argmaxes.
    pub kl: f64,
    pub agree: usize,
}

impl Row {
    /// The row of a scored cell: its identity and the figures its sums give. Intervals,
    /// lm-eval metrics, diagnostics, calibration, training, timing and the per-token file
    /// are left empty for the caller to fill in.
    pub fn scored(id: RowIdentity, s: &ScoreSums) -> Row {
        let n = s.tokens as f64;
        let (ppl, base) = ((s.nll / n).exp(), (s.nll_base / n).exp());
        let (sweep, sweep_layer) = id.sweep.map_or((None, None), |(g, l)| (Some(g), Some(l)));
        Row {
            key: id.key,
            index: id.index,
            model: id.model,
            dataset: id.dataset,
            variant: id.variant,
            is_baseline: id.is_baseline,
            sweep,
            sweep_layer,
            activation: id.plan.describe(),
            layers_swapped: id.plan.swapped_layers(),
            per_layer: id.plan.per_layer.iter().map(|a| a.to_string()).collect(),
            context: id.protocol.context(),
            stride: id.protocol.stride(),
            tokens_scored: s.tokens,
            bytes: s.bytes,
            nll_sum: s.nll,
            mean_nll: s.nll / n,
            perplexity: ppl,
            bits_per_byte: s.nll / std::f64::consts::LN_2 / s.bytes as f64,
            baseline_perplexity: base,
            delta_perplexity: ppl - base,
            ratio_perplexity: ppl / base,
            kl_mean: s.kl / n,
            top1_agreement: s.agree as f64 / n,
            seconds: 0.0,
            finished_at: provenance::now_rfc3339(),
            diagnostics: None,
            protocol: Some(id.protocol),
            delta_nll: Some((s.nll - s.nll_base) / n),
            delta_nll_ci95: None,
            perplexity_ci95: None,
            lm_eval: None,
            nll_file: None,
            calibration: None,
            training: None,
        }
    }

    /// Whether the 95 % interval of `delta_nll` excludes 0 (`None` without an interval).
    pub fn delta_is_significant(&self) -> Option<bool> {
        self.delta_nll_ci95
            .map(crate::eval::bootstrap::excludes_zero)
    }
}

/// The diagnostics of a cell: per-layer numbers, summarised for tables.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RowDiagnostics {
    /// Means over layers of mean |f′(h)|, fraction |f′| < 0.01 and mean f(h).
    pub deriv_mean: f64,
    pub saturated_frac: f64,
    pub post_mean: f64,
    /// ‖∂loss/∂x‖ entering the first and the last block.
    pub grad_norm_first: f64,
    pub grad_norm_last: f64,
    pub sigmoid_mass_mean: f64,
    pub sigmoid_ppl_normalized: f64,
    pub layers: Vec<crate::eval::diagnose::LayerStats>,
}

/// Reads `results.jsonl`, first cutting off a partial last line (a run killed mid-write), so
/// the file holds only complete rows. A missing file is an empty result set.
pub fn read_jsonl_repairing(path: &Path) -> anyhow::Result<Vec<Row>> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("cannot open {}: {e}", path.display()),
    };
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    if complete < text.len() {
        f.set_len(complete as u64)
            .and_then(|()| f.seek(SeekFrom::Start(complete as u64)))
            .and_then(|_| f.sync_all())
            .map_err(|e| anyhow::anyhow!("cannot repair {}: {e}", path.display()))?;
    }
    parse_rows(&text[..complete], path)
}

/// Reads `results.jsonl` without modifying it (for `merge`); a partial last line is ignored.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    parse_rows(&text[..complete], path)
}

fn parse_rows(text: &str, path: &Path) -> anyhow::Result<Vec<Row>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                anyhow::anyhow!("{} line {}: not a result row: {e}", path.display(), i + 1)
            })
        })
        .collect()
}

/// Appends one row as a line and flushes it to disk; a failed write leaves no partial line.
pub fn append_jsonl(path: &Path, row: &Row) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(row)?;
    line.push('\n');
    Ok(crate::fsio::append_line(path, &line)?)
}

/// Writes `contents` to `path` through a temporary file and a rename, so readers never see a
/// half-written file (see [`crate::fsio::write_atomic`]).
pub fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    Ok(crate::fsio::write_atomic(path, contents)?)
}

const CSV_DIAGNOSTIC_COLUMNS: [&str; 7] = [
    "diag_deriv_mean",
    "diag_saturated_frac",
    "diag_post_mean",
    "diag_grad_norm_first",
    "diag_grad_norm_last",
    "diag_sigmoid_mass_mean",
    "diag_sigmoid_ppl_normalized",
];

/// Columns of the protocol and the uncertainty, after the others (empty when unknown).
const CSV_PROTOCOL_COLUMNS: [&str; 10] = [
    "protocol",
    "delta_nll",
    "delta_nll_ci95_low",
    "delta_nll_ci95_high",
    "delta_nll_significant",
    "perplexity_ci95_low",
    "perplexity_ci95_high",
    "word_perplexity",
    "byte_perplexity",
    "documents",
];

const CSV_COLUMNS: [&str; 22] = [
    "index",
    "model",
    "dataset",
    "variant",
    "is_baseline",
    "sweep",
    "sweep_layer",
    "activation",
    "layers_swapped",
    "context",
    "stride",
    "tokens_scored",
    "bytes",
    "mean_nll",
    "perplexity",
    "bits_per_byte",
    "baseline_perplexity",
    "delta_perplexity",
    "ratio_perplexity",
    "kl_mean",
    "top1_agreement",
    "seconds",
];

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The rows as CSV (RFC 4180 quoting), in index order.
pub fn to_csv(rows: &[Row]) -> String {
    let with_diag = rows.iter().any(|r| r.diagnostics.is_some());
    let mut out = CSV_COLUMNS.join(",");
    if with_diag {
        out.push(',');
        out.push_str(&CSV_DIAGNOSTIC_COLUMNS.join(","));
    }
    out.push(',');
    out.push_str(&CSV_PROTOCOL_COLUMNS.join(","));
    let with_training = rows.iter().any(|r| r.training.is_some());
    if with_training {
        out.push(',');
        out.push_str(&crate::grid::training::CSV_COLUMNS.join(","));
    }
    out.push('\n');
    for r in rows {
        let layers = r
            .layers_swapped
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let fields = [
            r.index.to_string(),
            r.model.clone(),
            r.dataset.clone(),
            r.variant.clone(),
            r.is_baseline.to_string(),
            r.sweep.clone().unwrap_or_default(),
            r.sweep_layer.map(|l| l.to_string()).unwrap_or_default(),
            r.activation.clone(),
            layers,
            r.context.to_string(),
            r.stride.to_string(),
            r.tokens_scored.to_string(),
            r.bytes.to_string(),
            r.mean_nll.to_string(),
            r.perplexity.to_string(),
            r.bits_per_byte.to_string(),
            r.baseline_perplexity.to_string(),
            r.delta_perplexity.to_string(),
            r.ratio_perplexity.to_string(),
            r.kl_mean.to_string(),
            r.top1_agreement.to_string(),
            r.seconds.to_string(),
        ];
        let mut fields = fields.to_vec();
        if with_diag {
            fields.extend(diagnostic_fields(r.diagnostics.as_ref()));
        }
        fields.extend(protocol_fields(r));
        if with_training {
            fields.extend(crate::grid::training::csv_fields(r.training.as_ref()));
        }
        out.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

/// The values under [`CSV_DIAGNOSTIC_COLUMNS`] (empty for a row without diagnostics).
fn diagnostic_fields(d: Option<&RowDiagnostics>) -> Vec<String> {
    match d {
        Some(d) => [
            d.deriv_mean,
            d.saturated_frac,
            d.post_mean,
            d.grad_norm_first,
            d.grad_norm_last,
            d.sigmoid_mass_mean,
            d.sigmoid_ppl_normalized,
        ]
        .iter()
        .map(f64::to_string)
        .collect(),
        None => vec![String::new(); CSV_DIAGNOSTIC_COLUMNS.len()],
    }
}

/// The values under [`CSV_PROTOCOL_COLUMNS`].
fn protocol_fields(r: &Row) -> Vec<String> {
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let (dci, pci) = (r.delta_nll_ci95, r.perplexity_ci95);
    let m = r.lm_eval.as_ref();
    vec![
        r.protocol.map(|p| p.name().to_string()).unwrap_or_default(),
        num(r.delta_nll),
        num(dci.map(|c| c[0])),
        num(dci.map(|c| c[1])),
        r.delta_is_significant()
            .map(|b| b.to_string())
            .unwrap_or_default(),
        num(pci.map(|c| c[0])),
        num(pci.map(|c| c[1])),
        num(m.map(|m| m.word_perplexity)),
        num(m.map(|m| m.byte_perplexity)),
        m.map(|m| m.documents.to_string()).unwrap_or_default(),
    ]
}

/// The last path component, for compact tables.
pub fn short_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

#[cfg(test)]
pub(crate) fn sample_row(index: usize, variant: &str, ppl: f64) -> Row {
    Row {
        key: format!("k{index}"),
        index,
        model: "models/m".into(),
        dataset: "data/d.txt".into(),
        variant: variant.into(),
        is_baseline: index == 0,
        sweep: None,
        sweep_layer: None,
        activation: variant.into(),
        layers_swapped: vec![],
        per_layer: vec![],
        context: 8,
        stride: 4,
        tokens_scored: 10,
        bytes: 40,
        nll_sum: 10.0 * ppl.ln(),
        mean_nll: ppl.ln(),
        perplexity: ppl,
        bits_per_byte: 1.0,
        baseline_perplexity: 10.0,
        delta_perplexity: ppl - 10.0,
        ratio_perplexity: ppl / 10.0,
        kl_mean: 0.1,
        top1_agreement: 0.9,
        seconds: 1.0,
        finished_at: "2026-01-01T00:00:00Z".into(),
        diagnostics: None,
        protocol: None,
        delta_nll: None,
        delta_nll_ci95: None,
        perplexity_ci95: None,
        lm_eval: None,
        nll_file: None,
        calibration: None,
        training: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn partial_last_line_is_cut_off_and_complete_rows_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.jsonl");
        append_jsonl(&p, &sample_row(0, "baseline", 10.0)).unwrap();
        append_jsonl(&p, &sample_row(1, "relu", 12.0)).unwrap();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"key\":\"k2\",\"ind").unwrap();
        drop(f);
        let rows = read_jsonl_repairing(&p).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(std::fs::read_to_string(&p).unwrap().ends_with("}\n"));
        append_jsonl(&p, &sample_row(2, "tanh", 20.0)).unwrap();
        assert_eq!(read_jsonl(&p).unwrap().len(), 3);
        assert!(read_jsonl_repairing(&dir.path().join("none.jsonl"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn csv_has_a_header_and_a_line_per_row_quoted_as_rfc_4180() {
        let rows = vec![
            sample_row(0, "baseline", 10.0),
            sample_row(1, "sigmoid", 40.0),
            sample_row(2, "relu", 11.0),
        ];
        let csv = to_csv(&rows);
        assert_eq!(csv.lines().count(), 4);
        let width = |l: &str| l.split(',').count();
        assert!(csv.lines().all(|l| width(l) == 22 + 10), "{csv}");
        assert!(csv.lines().nth(2).unwrap().contains(",sigmoid,"));
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
