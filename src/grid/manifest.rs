//! `manifest.json`: what a run read (tool version, config copy, each model's source and
//! files with SHA-256, datasets), the settings it ran with, how many cells are done and when.
//!
//! Every struct here lists its fields in alphabetical order: the manifest used to be built
//! as a `serde_json::Value`, whose objects serialize their keys sorted, and the file must stay
//! key-for-key (and byte-for-byte) the same. A test checks the order.

use std::path::Path;

use serde::Serialize;

use crate::eval::bootstrap::BootstrapSettings;
use crate::eval::nll_output::NllFormat;
use crate::eval::protocol::Protocol;
use crate::grid::config::Grid;
use crate::grid::inputs::{FileInfo, Inputs};
use crate::grid::results::write_atomic;
use crate::grid::runner::RunSettings;
use crate::provenance::{self, sha256_bytes};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Manifest {
    /// The per-layer fits of calibrated cells, by cell name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub calibrations: std::collections::BTreeMap<String, crate::train::calibrate::Calibration>,
    pub cells: CellCounts,
    pub config: ConfigInfo,
    pub datasets: Vec<DatasetInfo>,
    /// Set when the run has finished (else `null`).
    pub finished_at: Option<String>,
    pub git_commit: Option<&'static str>,
    pub models: Vec<ModelInfo>,
    /// The most memory the run has had resident so far (bytes), updated at every write.
    pub peak_rss_bytes: Option<u64>,
    pub settings: Settings,
    pub shard: Option<String>,
    pub started_at: String,
    pub tool: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CellCounts {
    /// Rows in the output directory.
    pub done: usize,
    pub in_shard: usize,
    pub skipped_as_already_done: usize,
    /// Cells of the whole grid, every shard.
    pub total: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConfigInfo {
    pub path: String,
    pub sha256: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModelInfo {
    /// The checkpoint's own activation function.
    pub activation: String,
    pub files: Vec<FileInfo>,
    pub n_layer: usize,
    pub path: String,
    /// Local directory, or Hub repo with its commit.
    pub source: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DatasetInfo {
    pub bytes: usize,
    /// Documents read (lines of a JSONL file, rows of a Parquet file; 1 for a text).
    pub documents: usize,
    pub path: String,
    pub sha256: String,
    /// Tokens per model.
    pub tokens: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub batch_size: usize,
    /// Replicates and seed of the bootstrap intervals.
    pub bootstrap: BootstrapSettings,
    /// Per model.
    pub context: Vec<usize>,
    pub device: String,
    pub dtype: String,
    pub max_tokens: Option<usize>,
    /// Per model: the protocol with every setting (as a JSON value: keys sorted).
    pub protocol: Vec<serde_json::Value>,
    /// Per-token files under `nll/`, when on.
    pub save_nll: Option<NllFormat>,
    /// Per model.
    pub stride: Vec<usize>,
    /// The JSONL field / Parquet column documents were read from (when named).
    pub text_field: Option<String>,
    pub threads: usize,
}

impl Manifest {
    /// The manifest of a run that has just started: `done` rows already there.
    pub fn new(
        grid: &Grid,
        inputs: &Inputs,
        settings: &RunSettings,
        cells: CellCounts,
        started_at: String,
    ) -> Self {
        Self {
            calibrations: Default::default(),
            cells,
            config: ConfigInfo {
                path: grid.path.display().to_string(),
                sha256: sha256_bytes(grid.text.as_bytes()),
                text: grid.text.clone(),
            },
            datasets: datasets(grid, inputs),
            finished_at: None,
            git_commit: provenance::git_commit(),
            models: models(grid, inputs),
            peak_rss_bytes: crate::runtime::peak_rss_bytes(),
            settings: Settings {
                batch_size: grid.batch_size,
                bootstrap: grid.bootstrap,
                context: inputs.protocols.iter().map(|p| p.context()).collect(),
                device: settings.device.to_string(),
                dtype: settings.dtype.to_string(),
                max_tokens: grid.max_tokens,
                protocol: inputs.protocols.iter().map(protocol_json).collect(),
                save_nll: grid.save_nll,
                stride: inputs.protocols.iter().map(|p| p.stride()).collect(),
                text_field: grid.text_field.clone(),
                threads: settings.threads,
            },
            shard: settings.shard.map(|s| s.to_string()),
            started_at,
            tool: "gpt-ablate",
            version: provenance::VERSION,
        }
    }

    /// Writes `DIR/manifest.json` (pretty-printed, atomically), with the peak memory so far.
    pub fn write(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.peak_rss_bytes = crate::runtime::peak_rss_bytes();
        write_atomic(
            &dir.join("manifest.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// A protocol as a JSON object with sorted keys.
fn protocol_json(p: &Protocol) -> serde_json::Value {
    serde_json::to_value(p).expect("a protocol serializes")
}

fn models(grid: &Grid, inputs: &Inputs) -> Vec<ModelInfo> {
    let all = grid.models.iter().zip(&inputs.models);
    all.zip(&grid.model_configs)
        .map(|((p, m), cfg)| ModelInfo {
            activation: cfg.info.activation.name().to_string(),
            files: m.file_info.clone(),
            n_layer: cfg.info.n_layer,
            path: p.display().to_string(),
            source: m.files.source.to_json(),
        })
        .collect()
}

fn datasets(grid: &Grid, inputs: &Inputs) -> Vec<DatasetInfo> {
    grid.datasets
        .iter()
        .zip(&inputs.datasets)
        .map(|(p, d)| DatasetInfo {
            bytes: d.bytes,
            documents: d.documents.docs.len(),
            path: p.display().to_string(),
            sha256: d.sha256.clone(),
            tokens: d.tokens.iter().map(|t| t.len()).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializing the struct directly gives what serializing it as a `serde_json::Value`
    /// (sorted keys) gives: the field order is alphabetical at every level.
    #[test]
    fn fields_are_in_the_key_order_of_the_former_json_value() {
        let file = FileInfo {
            bytes: 3,
            file: "f".into(),
            sha256: "s".into(),
        };
        let m = Manifest {
            calibrations: Default::default(),
            cells: CellCounts {
                done: 1,
                in_shard: 2,
                skipped_as_already_done: 0,
                total: 4,
            },
            config: ConfigInfo {
                path: "p".into(),
                sha256: "s".into(),
                text: "t".into(),
            },
            datasets: vec![DatasetInfo {
                bytes: 5,
                documents: 1,
                path: "d".into(),
                sha256: "s".into(),
                tokens: vec![6],
            }],
            finished_at: Some("now".into()),
            git_commit: None,
            models: vec![ModelInfo {
                activation: "gelu_new".into(),
                files: vec![file],
                n_layer: 4,
                path: "m".into(),
                source: serde_json::json!({"kind": "local", "path": "m"}),
            }],
            peak_rss_bytes: Some(1 << 20),
            settings: Settings {
                batch_size: 1,
                bootstrap: BootstrapSettings::default(),
                context: vec![64],
                device: "cpu".into(),
                dtype: "f32".into(),
                max_tokens: None,
                protocol: vec![protocol_json(&Protocol::Hf {
                    context: 64,
                    stride: 32,
                })],
                save_nll: None,
                stride: vec![32],
                text_field: None,
                threads: 2,
            },
            shard: Some("0/2".into()),
            started_at: "then".into(),
            tool: "gpt-ablate",
            version: "0",
        };
        let direct = serde_json::to_string_pretty(&m).unwrap();
        let value = serde_json::to_string_pretty(&serde_json::to_value(&m).unwrap()).unwrap();
        assert_eq!(direct, value);
    }
}
