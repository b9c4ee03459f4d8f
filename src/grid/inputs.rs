//! A run's inputs, read, hashed and checked before anything is computed: each model's files
//! and tokenizer, each dataset's tokens per model, the windowing per model, and the content
//! key of every cell (what resuming and sharding match rows by).

use anyhow::Context;
use serde::Serialize;

use crate::data::{read_data, TextTokenizer};
use crate::eval::perplexity::{windows, PplOptions};
use crate::grid::cells::Cell;
use crate::grid::config::Grid;
use crate::provenance::{sha256_bytes, sha256_file};
use crate::runtime::Precision;
use crate::weights::{CheckpointFiles, ModelSpec};

/// Everything a run reads, per model and per dataset.
pub(crate) struct Inputs {
    pub models: Vec<ModelInputs>,
    pub datasets: Vec<DatasetInputs>,
    /// Windowing per model.
    pub options: Vec<PplOptions>,
}

/// Per-model inputs prepared before any computation.
pub(crate) struct ModelInputs {
    pub files: CheckpointFiles,
    pub tokenizer: TextTokenizer,
    /// SHA-256 over config, tokenizer and weight files.
    pub fingerprint: String,
    pub file_info: Vec<FileInfo>,
}

/// One checkpoint file, as the manifest lists it. Fields in alphabetical order, the order
/// the manifest has always had (see [`crate::grid::manifest`]).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FileInfo {
    pub bytes: u64,
    pub file: String,
    pub sha256: String,
}

pub(crate) struct DatasetInputs {
    pub bytes: usize,
    pub sha256: String,
    /// Tokens per model (tokenizers may differ).
    pub tokens: Vec<Vec<u32>>,
    /// UTF-8 bytes the (possibly truncated) tokens cover, per model: bits/byte divides by it.
    pub covered_bytes: Vec<usize>,
}

impl Inputs {
    /// Reads every model's files and every dataset, and checks each model's windowing
    /// against each dataset: everything that can fail on bad input.
    pub fn load(grid: &Grid) -> anyhow::Result<Self> {
        let models = grid
            .models
            .iter()
            .map(load_model_inputs)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let datasets = grid
            .datasets
            .iter()
            .map(|path| load_dataset(path, &models, grid.max_tokens))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let inputs = Self {
            models,
            datasets,
            options: ppl_options(grid),
        };
        inputs.validate(grid)?;
        Ok(inputs)
    }

    /// Every model's windowing fits every dataset.
    fn validate(&self, grid: &Grid) -> anyhow::Result<()> {
        for (mi, cfg) in grid.model_configs.iter().enumerate() {
            for (di, d) in self.datasets.iter().enumerate() {
                self.options[mi]
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
        Ok(())
    }

    /// The tokens of a cell's dataset under its model's tokenizer.
    pub fn tokens(&self, cell: &Cell) -> &[u32] {
        &self.datasets[cell.dataset].tokens[cell.model]
    }

    /// Forward passes (over a batch of windows) one model makes over a cell's dataset.
    pub fn batches(&self, cell: &Cell) -> usize {
        let o = &self.options[cell.model];
        let n = windows(self.tokens(cell).len(), o.context, o.stride).len();
        n.div_ceil(o.batch_size)
    }

    /// A content hash of everything a cell's numbers depend on: a row whose key is not
    /// among a run's cells belongs to other inputs.
    pub fn cell_key(&self, grid: &Grid, dtype: Precision, cell: &Cell) -> String {
        let o = &self.options[cell.model];
        let canonical = CellKey {
            baseline: cell.is_baseline,
            context: o.context,
            dataset: &self.datasets[cell.dataset].sha256,
            diagnose: cell.diagnose,
            dtype: dtype.to_string(),
            max_tokens: grid.max_tokens,
            model: &self.models[cell.model].fingerprint,
            per_layer: cell.plan.per_layer.iter().map(|a| a.name()).collect(),
            stride: o.stride,
        };
        let json = serde_json::to_string(&canonical).expect("a cell key serializes");
        sha256_bytes(json.as_bytes())[..16].to_string()
    }
}

/// What a cell key hashes, as compact JSON. The fields are in alphabetical order (the order
/// `serde_json::Value` objects serialize in) so that keys written by earlier versions, which
/// built this object with `json!`, still match: changing the order or a name invalidates
/// every existing output directory for resuming.
#[derive(Serialize)]
struct CellKey<'a> {
    baseline: bool,
    context: usize,
    dataset: &'a str,
    diagnose: bool,
    dtype: String,
    max_tokens: Option<usize>,
    model: &'a str,
    per_layer: Vec<String>,
    stride: usize,
}

/// A model's files, hashed, and its tokenizer.
fn load_model_inputs(spec: &ModelSpec) -> anyhow::Result<ModelInputs> {
    let files = spec.resolve()?;
    let tokenizer = TextTokenizer::load(&files.tokenizer)?;
    let mut file_info = Vec::new();
    let mut all = Vec::new();
    for p in files.all_files() {
        let sha = sha256_file(p).with_context(|| format!("hashing {}", p.display()))?;
        let bytes = std::fs::metadata(p)?.len();
        file_info.push(FileInfo {
            bytes,
            file: p.display().to_string(),
            sha256: sha.clone(),
        });
        all.push(sha);
    }
    Ok(ModelInputs {
        files,
        tokenizer,
        fingerprint: sha256_bytes(all.join(",").as_bytes()),
        file_info,
    })
}

/// A dataset's text, hashed, and tokenized by each model (cut to `max_tokens`).
fn load_dataset(
    path: &std::path::Path,
    models: &[ModelInputs],
    max_tokens: Option<usize>,
) -> anyhow::Result<DatasetInputs> {
    let text = read_data(path)?;
    let (mut tokens, mut covered_bytes) = (Vec::new(), Vec::new());
    for m in models {
        let mut t = m
            .tokenizer
            .encode(&text)
            .with_context(|| format!("tokenizing {}", path.display()))?;
        let mut covered = text.len();
        if let Some(max) = max_tokens.filter(|&max| max < t.len()) {
            t.truncate(max);
            covered = m.tokenizer.decode(&t)?.len();
        }
        tokens.push(t);
        covered_bytes.push(covered);
    }
    Ok(DatasetInputs {
        bytes: text.len(),
        sha256: sha256_bytes(text.as_bytes()),
        tokens,
        covered_bytes,
    })
}

/// Each model's windowing: the config's context (default `n_positions`) and stride (default
/// half the context).
fn ppl_options(grid: &Grid) -> Vec<PplOptions> {
    grid.model_configs
        .iter()
        .map(|cfg| {
            let context = grid.context.unwrap_or(cfg.info.n_positions);
            PplOptions {
                context,
                stride: grid.stride.unwrap_or((context / 2).max(1)),
                batch_size: grid.batch_size,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key must stay byte-for-byte what the `json!` object it replaced produced.
    #[test]
    fn cell_key_json_matches_the_former_json_object() {
        let key = CellKey {
            baseline: false,
            context: 64,
            dataset: "d5a",
            diagnose: true,
            dtype: "f32".into(),
            max_tokens: None,
            model: "m0c",
            per_layer: vec!["gelu_new".into(), "relu".into()],
            stride: 32,
        };
        let former = serde_json::json!({
            "model": "m0c",
            "dataset": "d5a",
            "context": 64,
            "stride": 32,
            "max_tokens": None::<usize>,
            "dtype": "f32",
            "per_layer": ["gelu_new", "relu"],
            "baseline": false,
            "diagnose": true,
        });
        assert_eq!(serde_json::to_string(&key).unwrap(), former.to_string());
    }
}
