//! A run's inputs, read, hashed and checked before anything is computed: each model's files,
//! tokenizer and protocol settings, each dataset's documents with their tokens and scoring
//! plan per model, and the content key of every cell (what resuming and sharding match rows
//! by).

use anyhow::Context;
use serde::Serialize;

use crate::data::{read_documents, special_tokens, Documents, TextTokenizer};
use crate::eval::bootstrap::BootstrapSettings;
use crate::eval::nll_output::NllFormat;
use crate::eval::perplexity::batch_count;
use crate::eval::plan::ScoringPlan;
use crate::eval::prepare::prepare;
use crate::eval::protocol::{Protocol, ProtocolName, ProtocolRequest};
use crate::grid::cells::Cell;
use crate::grid::config::Grid;
use crate::provenance::{sha256_bytes, sha256_file};
use crate::runtime::Precision;
use crate::weights::{CheckpointFiles, ModelSpec};

/// Everything a run reads, per model and per dataset.
pub(crate) struct Inputs {
    pub models: Vec<ModelInputs>,
    pub datasets: Vec<DatasetInputs>,
    /// The protocol per model, every setting fixed.
    pub protocols: Vec<Protocol>,
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
    pub documents: Documents,
    /// SHA-256 of the documents one by one (lm-eval scores them apart).
    pub documents_sha256: String,
    /// Tokens of the joined text per model (tokenizers may differ): diagnostics read them.
    pub tokens: Vec<Vec<u32>>,
    /// What each model scores under its protocol.
    pub plans: Vec<ScoringPlan>,
    /// UTF-8 bytes the scored text covers, per model: bits/byte divides by it.
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
        let protocols = (0..models.len())
            .map(|mi| resolve_protocol(grid, &models, mi))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let datasets = (0..grid.datasets.len())
            .map(|di| load_dataset(grid, di, &models, &protocols))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            models,
            datasets,
            protocols,
        })
    }

    /// The tokens of a cell's dataset under its model's tokenizer (the joined text).
    pub fn tokens(&self, cell: &Cell) -> &[u32] {
        &self.datasets[cell.dataset].tokens[cell.model]
    }

    /// What a cell scores.
    pub fn plan(&self, cell: &Cell) -> &ScoringPlan {
        &self.datasets[cell.dataset].plans[cell.model]
    }

    /// Forward passes (over a batch of windows) one model makes over a cell's dataset.
    pub fn batches(&self, grid: &Grid, cell: &Cell) -> usize {
        batch_count(self.plan(cell), grid.batch_size)
    }

    /// A content hash of everything a cell's numbers depend on: a row whose key is not
    /// among a run's cells belongs to other inputs.
    pub fn cell_key(&self, grid: &Grid, dtype: Precision, cell: &Cell) -> String {
        let protocol = self.protocols[cell.model];
        let d = &self.datasets[cell.dataset];
        // Keys of hf cells with default settings are what they were before protocols.
        let other = protocol.name() != ProtocolName::Hf;
        let canonical = CellKey {
            baseline: cell.is_baseline,
            calibrate: cell.calibrate,
            bootstrap: (grid.bootstrap != BootstrapSettings::default()).then_some(grid.bootstrap),
            context: protocol.context(),
            dataset: &d.sha256,
            diagnose: cell.diagnose,
            documents: other.then_some(d.documents_sha256.as_str()),
            dtype: dtype.to_string(),
            finetune: cell
                .finetune
                .as_ref()
                .map(|f| crate::grid::training::finetune_key(f, &grid.train)),
            max_tokens: grid.max_tokens,
            model: &self.models[cell.model].fingerprint,
            per_layer: cell.plan.per_layer.iter().map(|a| a.name()).collect(),
            protocol: other.then_some(protocol),
            save_nll: grid.save_nll,
            stride: protocol.stride(),
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
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    calibrate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    bootstrap: Option<BootstrapSettings>,
    context: usize,
    dataset: &'a str,
    diagnose: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    documents: Option<&'a str>,
    dtype: String,
    /// Fine-tuned cells: their training settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    finetune: Option<String>,
    max_tokens: Option<usize>,
    model: &'a str,
    per_layer: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<Protocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    save_nll: Option<NllFormat>,
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

/// A model's protocol: the config's settings, defaults from its config and tokenizer.
fn resolve_protocol(grid: &Grid, models: &[ModelInputs], mi: usize) -> anyhow::Result<Protocol> {
    let info = &grid.model_configs[mi].info;
    let m = &models[mi];
    let special = special_tokens(
        &m.tokenizer,
        m.files.tokenizer_config.as_deref(),
        (info.bos_id, info.eos_id),
    )?;
    let request = ProtocolRequest {
        name: grid.protocol,
        context: grid.context,
        stride: grid.stride,
        max_length: grid.max_length,
        detokenize: grid.detokenize,
    };
    request
        .resolve(info.n_positions, &special)
        .with_context(|| {
            format!(
                "{}: protocol {}",
                grid.path.display(),
                grid.models[mi].display()
            )
        })
}

/// A dataset's documents, hashed, tokenized by each model (cut to `max_tokens`) and laid
/// out in its protocol's windows.
fn load_dataset(
    grid: &Grid,
    di: usize,
    models: &[ModelInputs],
    protocols: &[Protocol],
) -> anyhow::Result<DatasetInputs> {
    let path = &grid.datasets[di];
    let documents = read_documents(path, grid.text_field.as_deref())?;
    let text = documents.joined();
    let (mut tokens, mut plans, mut covered_bytes) = (Vec::new(), Vec::new(), Vec::new());
    for (m, protocol) in models.iter().zip(protocols) {
        let mut t = m
            .tokenizer
            .encode(&text)
            .with_context(|| format!("tokenizing {}", path.display()))?;
        let mut covered = text.len();
        if let Some(max) = grid.max_tokens.filter(|&max| max < t.len()) {
            t.truncate(max);
            covered = m.tokenizer.decode(&t)?.len();
        }
        let (plan, bytes) = match *protocol {
            Protocol::Hf { context, stride } => {
                (ScoringPlan::hf(t.clone(), context, stride), covered)
            }
            Protocol::Disjoint { context } => (ScoringPlan::disjoint(t.clone(), context), covered),
            _ => {
                let p = prepare(protocol, &documents, &m.tokenizer, grid.max_tokens)
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .with_context(|| {
                        format!("{} with {}", path.display(), m.files.dir.display())
                    })?;
                (p.plan, p.bytes)
            }
        };
        if plan.tokens_scored() == 0 {
            anyhow::bail!(
                "{}: the text has {} token(s) and {} scores none of them",
                path.display(),
                t.len(),
                protocol.describe()
            );
        }
        tokens.push(t);
        plans.push(plan);
        covered_bytes.push(bytes);
    }
    let separated = documents.docs.join("\u{0}");
    Ok(DatasetInputs {
        bytes: text.len(),
        sha256: sha256_bytes(text.as_bytes()),
        documents_sha256: sha256_bytes(separated.as_bytes()),
        documents,
        tokens,
        plans,
        covered_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key must stay byte-for-byte what the `json!` object it replaced produced.
    #[test]
    fn cell_key_json_matches_the_former_json_object() {
        let key = CellKey {
            baseline: false,
            calibrate: false,
            bootstrap: None,
            context: 64,
            dataset: "d5a",
            diagnose: true,
            documents: None,
            dtype: "f32".into(),
            finetune: None,
            max_tokens: None,
            model: "m0c",
            per_layer: vec!["gelu_new".into(), "relu".into()],
            protocol: None,
            save_nll: None,
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
