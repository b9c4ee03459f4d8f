//! The ablation runner: executes a grid's cells, each variant scored in the same pass as the
//! unmodified model (so KL divergence and top-1 agreement need no logits files), appends a
//! row per finished cell, and can resume, shard and merge.
//!
//! Output directory: `results.jsonl` (one flushed line per cell), `results.csv`,
//! `manifest.json` (inputs' SHA-256, settings, times) and charts (SVG + PNG).

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::Tensor;
use serde_json::json;

use crate::data::{read_data, TextTokenizer};
use crate::eval::perplexity::{score_windows, token_nlls, windows, PplError, PplOptions};
use crate::grid::config::{Cell, Grid};
use crate::grid::results::{self, Row};
use crate::kernels;
use crate::model::CausalLm;
use crate::provenance::{self, sha256_bytes, sha256_file};
use crate::runtime::{DeviceSpec, Precision};
use crate::weights::{CheckpointFiles, TensorStore};

/// Run only the cells whose index ≡ K (mod N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("shard '{s}': expected K/N with 0 ≤ K < N, e.g. 0/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || k >= n {
            return Err(bad());
        }
        Ok(Self { k, n })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// Settings resolved from flags, environment and the config file.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub out: PathBuf,
    pub shard: Option<Shard>,
    pub device: DeviceSpec,
    pub dtype: Precision,
    pub threads: usize,
    /// Draw a progress line on stderr.
    pub progress: bool,
}

/// What a run did.
pub struct RunSummary {
    /// Every row in the output directory, in cell order.
    pub rows: Vec<Row>,
    pub ran: usize,
    pub skipped: usize,
    pub files: Vec<PathBuf>,
}

/// Per-model inputs prepared before any computation.
struct ModelInputs {
    files: CheckpointFiles,
    tokenizer: TextTokenizer,
    /// SHA-256 over config, tokenizer and weight files.
    fingerprint: String,
    file_info: Vec<serde_json::Value>,
}

struct DatasetInputs {
    bytes: usize,
    sha256: String,
    /// Tokens per model (tokenizers may differ).
    tokens: Vec<Vec<u32>>,
    /// UTF-8 bytes the (possibly truncated) tokens cover, per model: bits/byte divides by it.
    covered_bytes: Vec<usize>,
}

/// Runs `grid` into `settings.out`, skipping cells already there.
pub fn run(grid: &Grid, settings: &RunSettings) -> anyhow::Result<RunSummary> {
    let started_at = provenance::now_rfc3339();
    let device = settings.device.open()?;
    let dtype = settings.dtype.dtype();

    // 1. Everything that can fail on bad input, before computing anything.
    let mut models = Vec::new();
    for spec in &grid.models {
        let files = spec.resolve()?;
        let tokenizer = TextTokenizer::load(&files.tokenizer)?;
        let mut file_info = Vec::new();
        let mut all = Vec::new();
        for p in files.all_files() {
            let sha = sha256_file(p).with_context(|| format!("hashing {}", p.display()))?;
            let bytes = std::fs::metadata(p)?.len();
            file_info.push(json!({"file": p.display().to_string(), "bytes": bytes, "sha256": sha}));
            all.push(sha);
        }
        models.push(ModelInputs {
            files,
            tokenizer,
            fingerprint: sha256_bytes(all.join(",").as_bytes()),
            file_info,
        });
    }
    let mut datasets = Vec::new();
    for path in &grid.datasets {
        let text = read_data(path)?;
        let (mut tokens, mut covered_bytes) = (Vec::new(), Vec::new());
        for m in &models {
            let mut t = m
                .tokenizer
                .encode(&text)
                .with_context(|| format!("tokenizing {}", path.display()))?;
            let mut covered = text.len();
            if let Some(max) = grid.max_tokens.filter(|&max| max < t.len()) {
                t.truncate(max);
                covered = m.tokenizer.decode(&t)?.len();
            }
            tokens.push(t);
            covered_bytes.push(covered);
        }
        datasets.push(DatasetInputs {
            bytes: text.len(),
            sha256: sha256_bytes(text.as_bytes()),
            tokens,
            covered_bytes,
        });
    }
    let options: Vec<PplOptions> = grid
        .model_configs
        .iter()
        .map(|cfg| {
            let context = grid.context.unwrap_or(cfg.info.n_positions);
            PplOptions {
                context,
                stride: grid.stride.unwrap_or((context / 2).max(1)),
                batch_size: grid.batch_size,
            }
        })
        .collect();
    for (mi, cfg) in grid.model_configs.iter().enumerate() {
        for (di, d) in datasets.iter().enumerate() {
            options[mi]
                .validate(cfg.info.n_positions, d.tokens[mi].len())
                .with_context(|| {
                    format!(
                        "{} on {}",
                        grid.models[mi].display(),
                        grid.datasets[di].display()
                    )
                })?;
        }
    }

    // 2. The cells of this shard, keyed by content.
    let key_of = |cell: &Cell| {
        let names: Vec<&str> = cell.plan.per_layer.iter().map(|a| a.name()).collect();
        let o = &options[cell.model];
        let canonical = json!({
            "model": models[cell.model].fingerprint,
            "dataset": datasets[cell.dataset].sha256,
            "context": o.context,
            "stride": o.stride,
            "max_tokens": grid.max_tokens,
            "dtype": settings.dtype.to_string(),
            "per_layer": names,
            "baseline": cell.is_baseline,
            "diagnose": cell.diagnose,
        });
        sha256_bytes(canonical.to_string().as_bytes())[..16].to_string()
    };
    let all_cells = grid.cells();
    let cells: Vec<(Cell, String)> = all_cells
        .into_iter()
        .filter(|c| settings.shard.is_none_or(|s| c.index % s.n == s.k))
        .map(|c| {
            let k = key_of(&c);
            (c, k)
        })
        .collect();

    // 3. The output directory: resume what is there, refuse what belongs to other inputs.
    std::fs::create_dir_all(&settings.out)
        .with_context(|| format!("creating output directory {}", settings.out.display()))?;
    let jsonl = settings.out.join("results.jsonl");
    let mut rows = results::read_jsonl_repairing(&jsonl)?;
    let wanted: BTreeSet<&str> = cells.iter().map(|(_, k)| k.as_str()).collect();
    if let Some(stale) = rows.iter().find(|r| !wanted.contains(r.key.as_str())) {
        bail!(
            "{} holds results for other inputs (cell '{}' with key {}): the config, weights, data or shard changed; use a new --out",
            jsonl.display(),
            stale.variant,
            stale.key
        );
    }
    let done: BTreeSet<String> = rows.iter().map(|r| r.key.clone()).collect();
    let pending: Vec<&(Cell, String)> = cells.iter().filter(|(_, k)| !done.contains(k)).collect();
    let skipped = cells.len() - pending.len();

    let manifest = |rows: &[Row], finished: Option<String>| -> anyhow::Result<()> {
        let m = json!({
            "tool": "gpt-ablate",
            "version": provenance::VERSION,
            "git_commit": provenance::git_commit(),
            "config": {
                "path": grid.path.display().to_string(),
                "sha256": sha256_bytes(grid.text.as_bytes()),
                "text": grid.text,
            },
            "models": grid.models.iter().zip(&models).zip(&grid.model_configs).map(|((p, m), cfg)| json!({
                "path": p.display().to_string(),
                "source": m.files.source.to_json(),
                "n_layer": cfg.info.n_layer,
                "activation": cfg.info.activation.name(),
                "files": m.file_info,
            })).collect::<Vec<_>>(),
            "datasets": grid.datasets.iter().zip(&datasets).map(|(p, d)| json!({
                "path": p.display().to_string(),
                "bytes": d.bytes,
                "sha256": d.sha256,
                "tokens": d.tokens.iter().map(|t| t.len()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "settings": {
                "context": options.iter().map(|o| o.context).collect::<Vec<_>>(),
                "stride": options.iter().map(|o| o.stride).collect::<Vec<_>>(),
                "batch_size": grid.batch_size,
                "max_tokens": grid.max_tokens,
                "device": settings.device.to_string(),
                "dtype": settings.dtype.to_string(),
                "threads": settings.threads,
            },
            "shard": settings.shard.map(|s| s.to_string()),
            "cells": {
                "total": grid.cells().len(),
                "in_shard": cells.len(),
                "done": rows.len(),
                "skipped_as_already_done": skipped,
            },
            "started_at": started_at,
            "finished_at": finished,
        });
        results::write_atomic(
            &settings.out.join("manifest.json"),
            serde_json::to_string_pretty(&m)?.as_bytes(),
        )
    };
    manifest(&rows, None)?;

    // 4. Compute. One unmodified model per checkpoint; variants share its weights.
    // Progress is counted in forward passes over a batch of windows.
    let batches_of = |c: &Cell| -> usize {
        let o = &options[c.model];
        let n = windows(
            datasets[c.dataset].tokens[c.model].len(),
            o.context,
            o.stride,
        )
        .len();
        n.div_ceil(o.batch_size)
    };
    let work_of =
        |c: &Cell, cached: bool| batches_of(c) * if c.is_baseline || cached { 1 } else { 2 };
    let total_work: usize = pending.iter().map(|(c, _)| work_of(c, true)).sum();
    let mut work_done = 0usize;
    let run_start = Instant::now();
    let mut loaded: Option<(usize, Box<dyn CausalLm>)> = None;
    let mut cache: Option<BaselineCache> = None;
    for (i, (cell, key)) in pending.iter().enumerate() {
        if loaded.as_ref().is_none_or(|(mi, _)| *mi != cell.model) {
            drop(loaded.take()); // free the previous model first
            let m = &models[cell.model];
            let cfg = &grid.model_configs[cell.model];
            let base_plan =
                crate::model::plan::ActivationPlan::original(cfg.info.activation, cfg.info.n_layer);
            let store = TensorStore::open(&m.files.weights, dtype, &device)?;
            let model = crate::model::load::build(cfg, base_plan, store).with_context(|| {
                format!("loading weights from {}", grid.models[cell.model].display())
            })?;
            loaded = Some((cell.model, model));
        }
        let Some((_, base)) = loaded.as_ref() else {
            unreachable!("loaded above")
        };
        let pair = (cell.model, cell.dataset);
        if cache.as_ref().is_some_and(|c| c.pair != pair) {
            cache = None;
        }
        let tokens = &datasets[cell.dataset].tokens[cell.model];
        let opts = options[cell.model];
        // Cache the baseline's hidden states when they fit and more than one variant of this
        // pair is left (or the baseline pass runs anyway).
        let variants_left = pending[i..]
            .iter()
            .filter(|(c, _)| (c.model, c.dataset) == pair && !c.is_baseline)
            .count();
        let cache_bytes =
            tokens.len() * grid.model_configs[cell.model].info.hidden_size * dtype.size_in_bytes();
        let want_cache = cache.is_none()
            && cache_bytes <= CACHE_BUDGET_BYTES
            && (if cell.is_baseline {
                variants_left >= 1
            } else {
                variants_left >= 2
            });
        if want_cache && !cell.is_baseline {
            // The baseline cell is done already: one hidden-state pass (no LM head) refills it.
            let mut chunks = Vec::new();
            score_windows(&[base], tokens, &opts, &mut |_, _| {}, &mut |chunk| {
                let copy = chunk.hidden[0].copy();
                chunks.push(copy.map_err(|source| PplError::Candle {
                    window: chunk.window,
                    source,
                })?);
                Ok(())
            })
            .with_context(|| format!("baseline pass for cell '{}'", cell.name))?;
            cache = Some(BaselineCache { pair, chunks });
        }
        let cell_work = work_of(cell, cache.is_some());
        let per_batch = cell_work / batches_of(cell).max(1);
        let mut progress = |done: usize, _total: usize| {
            if settings.progress {
                let w = work_done + done * per_batch;
                let elapsed = run_start.elapsed().as_secs_f64();
                let eta = if w > 0 {
                    elapsed / w as f64 * total_work.saturating_sub(w) as f64
                } else {
                    0.0
                };
                eprint!(
                    "\r\x1b[2K[{}/{}] {:<28} {:>3.0}%  elapsed {}  ETA {}",
                    i + 1,
                    pending.len(),
                    truncate(&cell.name, 28),
                    100.0 * w as f64 / total_work.max(1) as f64,
                    clock(elapsed),
                    clock(eta)
                );
            }
        };
        let started = Instant::now();
        let fill = want_cache && cell.is_baseline;
        let cached = cache.as_ref().map(|c| c.chunks.as_slice());
        let bytes = datasets[cell.dataset].covered_bytes[cell.model];
        let (row, filled) = score_cell(
            grid,
            cell,
            key,
            base,
            cached,
            fill,
            tokens,
            &opts,
            bytes,
            &mut progress,
        )
        .with_context(|| format!("cell '{}'", cell.name))?;
        if fill {
            cache = Some(BaselineCache {
                pair,
                chunks: filled,
            });
        }
        let diagnostics = if cell.diagnose {
            let model = base.with_plan(cell.plan.clone());
            let d = crate::eval::diagnose::diagnose(&model, tokens, opts.context)
                .with_context(|| format!("diagnostics of cell '{}'", cell.name))?;
            Some(summarise(d))
        } else {
            None
        };
        let row = Row {
            seconds: started.elapsed().as_secs_f64(),
            diagnostics,
            ..row
        };
        work_done += cell_work;
        results::append_jsonl(&jsonl, &row)?;
        rows.push(row);
        rows.sort_by_key(|r| r.index);
        results::write_atomic(
            &settings.out.join("results.csv"),
            results::to_csv(&rows).as_bytes(),
        )?;
        manifest(&rows, None)?;
    }
    if settings.progress && !pending.is_empty() {
        eprint!("\r\x1b[2K");
    }
    results::write_atomic(
        &settings.out.join("results.csv"),
        results::to_csv(&rows).as_bytes(),
    )?;
    manifest(&rows, Some(provenance::now_rfc3339()))?;
    let files = write_charts(&rows, &settings.out)?;
    Ok(RunSummary {
        rows,
        ran: pending.len(),
        skipped,
        files,
    })
}

/// Largest baseline hidden-state cache kept for one model × dataset (see [`score_cell`]).
const CACHE_BUDGET_BYTES: usize = 1 << 30;

/// The unmodified model's final hidden states at the scored positions of one model × dataset,
/// chunk by chunk in [`score_windows`] order. With it a variant cell runs one forward pass
/// instead of two: the baseline's logits come from the cached rows through the LM head.
struct BaselineCache {
    pair: (usize, usize),
    chunks: Vec<Tensor>,
}

/// Scores one cell: the baseline alone, or the variant against the baseline — from `cache`
/// when given, else with the baseline run in lockstep. When `fill` is set, returns the
/// baseline's hidden states too.
#[allow(clippy::too_many_arguments)]
fn score_cell(
    grid: &Grid,
    cell: &Cell,
    key: &str,
    base: &dyn CausalLm,
    cache: Option<&[Tensor]>,
    fill: bool,
    tokens: &[u32],
    opts: &PplOptions,
    bytes: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<(Row, Vec<Tensor>)> {
    let variant = (!cell.is_baseline).then(|| base.with_plan(cell.plan.clone()));
    let models: Vec<&dyn CausalLm> = match (&variant, cache) {
        (None, _) => vec![base],
        (Some(v), Some(_)) => vec![v],
        (Some(v), None) => vec![base, v],
    };
    let (mut nll_base, mut nll_var, mut kl, mut agree, mut n) = (0f64, 0f64, 0f64, 0usize, 0usize);
    let mut filled = Vec::new();
    let mut index = 0usize;
    score_windows(&models, tokens, opts, progress, &mut |chunk| {
        let fail = |source| PplError::Candle {
            window: chunk.window,
            source,
        };
        let base_logits = match cache {
            Some(c) => {
                let h = c
                    .get(index)
                    .ok_or_else(|| fail(candle_core::Error::Msg("cache too short".into())))?;
                base.logits_from_hidden(h)
                    .and_then(|l| l.to_dtype(candle_core::DType::F32))
            }
            None => chunk.logits(0),
        }
        .map_err(fail)?;
        index += 1;
        if fill {
            filled.push(chunk.hidden[0].copy().map_err(fail)?);
        }
        let base_nll = token_nlls(&base_logits, chunk.targets).map_err(fail)?;
        let var_nll = if variant.is_some() {
            let var_logits = chunk.logits(models.len() - 1).map_err(fail)?;
            let (k, a) = kernels::kl_and_agreement(&base_logits, &var_logits).map_err(fail)?;
            kl += k.iter().sum::<f64>();
            agree += a.iter().filter(|&&x| x).count();
            token_nlls(&var_logits, chunk.targets).map_err(fail)?
        } else {
            agree += base_nll.len();
            base_nll.clone()
        };
        if var_nll.iter().chain(&base_nll).any(|v| !v.is_finite()) || !kl.is_finite() {
            return Err(PplError::NonFinite {
                window: chunk.window,
                begin: chunk.span.begin,
                end: chunk.span.end,
            });
        }
        nll_base += base_nll.iter().sum::<f64>();
        nll_var += var_nll.iter().sum::<f64>();
        n += var_nll.len();
        Ok(())
    })?;
    let nf = n as f64;
    let (ppl, base_ppl) = ((nll_var / nf).exp(), (nll_base / nf).exp());
    let row = Row {
        key: key.to_string(),
        index: cell.index,
        model: grid.models[cell.model].display().to_string(),
        dataset: grid.datasets[cell.dataset].display().to_string(),
        variant: cell.name.clone(),
        is_baseline: cell.is_baseline,
        sweep: cell.sweep.as_ref().map(|(g, _)| g.clone()),
        sweep_layer: cell.sweep.as_ref().map(|(_, l)| *l),
        activation: cell.plan.describe(),
        layers_swapped: cell.plan.swapped_layers(),
        per_layer: cell.plan.per_layer.iter().map(|a| a.to_string()).collect(),
        context: opts.context,
        stride: opts.stride,
        tokens_scored: n,
        bytes,
        nll_sum: nll_var,
        mean_nll: nll_var / nf,
        perplexity: ppl,
        bits_per_byte: nll_var / std::f64::consts::LN_2 / bytes as f64,
        baseline_perplexity: base_ppl,
        delta_perplexity: ppl - base_ppl,
        ratio_perplexity: ppl / base_ppl,
        kl_mean: kl / nf,
        top1_agreement: agree as f64 / nf,
        seconds: 0.0,
        finished_at: provenance::now_rfc3339(),
        diagnostics: None,
    };
    Ok((row, filled))
}

fn summarise(d: crate::eval::diagnose::Diagnosis) -> results::RowDiagnostics {
    let n = d.layers.len().max(1) as f64;
    let mean =
        |f: fn(&crate::eval::diagnose::LayerStats) -> f64| d.layers.iter().map(f).sum::<f64>() / n;
    results::RowDiagnostics {
        deriv_mean: mean(|l| l.deriv_mean),
        saturated_frac: mean(|l| l.saturated_frac),
        post_mean: mean(|l| l.post_mean),
        grad_norm_first: d.layers.first().map_or(0.0, |l| l.grad_norm),
        grad_norm_last: d.layers.last().map_or(0.0, |l| l.grad_norm),
        sigmoid_mass_mean: d.head.sigmoid_mass_mean,
        sigmoid_ppl_normalized: d.head.sigmoid_ppl_normalized,
        layers: d.layers,
    }
}

/// Charts per model × dataset pair (suffixed when there is more than one).
pub fn write_charts(rows: &[Row], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for r in rows {
        let p = (r.model.clone(), r.dataset.clone());
        if !pairs.contains(&p) {
            pairs.push(p);
        }
    }
    let mut files = Vec::new();
    for (i, (m, d)) in pairs.iter().enumerate() {
        let group: Vec<Row> = rows
            .iter()
            .filter(|r| &r.model == m && &r.dataset == d)
            .cloned()
            .collect();
        let suffix = if pairs.len() > 1 {
            format!("-{}", i + 1)
        } else {
            String::new()
        };
        files.extend(crate::grid::charts::draw_all(&group, dir, &suffix)?);
    }
    Ok(files)
}

/// Combines shard directories into `out`: rows deduplicated by key, in cell order.
pub fn merge(dirs: &[PathBuf], out: &Path) -> anyhow::Result<Vec<Row>> {
    if dirs.is_empty() {
        bail!("merge needs at least one shard directory");
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut config_sha: Option<String> = None;
    let mut manifests = Vec::new();
    for d in dirs {
        let mpath = d.join("manifest.json");
        let text = std::fs::read_to_string(&mpath)
            .with_context(|| format!("reading {}", mpath.display()))?;
        let m: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", mpath.display()))?;
        let sha = m["config"]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match &config_sha {
            None => config_sha = Some(sha),
            Some(s) if *s != sha => bail!(
                "{} comes from a different config than {}",
                d.display(),
                dirs[0].display()
            ),
            _ => {}
        }
        for r in results::read_jsonl(&d.join("results.jsonl"))? {
            if !rows.iter().any(|x| x.key == r.key) {
                rows.push(r);
            }
        }
        manifests.push(m);
    }
    rows.sort_by_key(|r| r.index);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut lines = String::new();
    for r in &rows {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    results::write_atomic(&out.join("results.jsonl"), lines.as_bytes())?;
    results::write_atomic(&out.join("results.csv"), results::to_csv(&rows).as_bytes())?;
    let total = manifests[0]["cells"]["total"].as_u64().unwrap_or(0);
    let mut merged = manifests[0].clone();
    merged["shard"] = json!(null);
    merged["merged_from"] = json!(dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>());
    merged["cells"] = json!({"total": total, "done": rows.len()});
    merged["finished_at"] = json!(provenance::now_rfc3339());
    results::write_atomic(
        &out.join("manifest.json"),
        serde_json::to_string_pretty(&merged)?.as_bytes(),
    )?;
    if (rows.len() as u64) < total {
        eprintln!(
            "warning: {} of {total} cells present; some shards are missing or unfinished",
            rows.len()
        );
    }
    write_charts(&rows, out)?;
    Ok(rows)
}

fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// Whether stderr is a terminal (progress is drawn only then).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shards() {
        assert_eq!("1/4".parse::<Shard>().unwrap(), Shard { k: 1, n: 4 });
        for bad in ["4/4", "1", "a/b", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
