//! `manifest.json` of a training run: what it started from (checkpoint source and commit,
//! or the from-scratch config), the data with SHA-256, the resolved settings, the activation
//! plan and calibration, where it ran, and what it has done so far.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::grid::results::write_atomic;
use crate::train::calibrate::Calibration;
use crate::train::settings::TrainSettings;

/// A text the run read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextInfo {
    /// The `--data` / `--eval-data` argument, or how the held-out part was taken.
    pub source: String,
    pub bytes: usize,
    pub tokens: usize,
    pub sha256: String,
}

/// What a run is: rerunning with the same `--out` resumes only if this is unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// `init` or `scratch`, and the SHA-256 of the starting weights (or of the from-scratch
    /// config.json and tokenizer).
    pub start: String,
    pub start_sha256: String,
    /// The activation of each layer asked for (before any calibration).
    pub per_layer: Vec<String>,
    pub calibrate: bool,
    pub train: TextInfo,
    pub eval: TextInfo,
    pub settings: TrainSettings,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainManifest {
    pub tool: &'static str,
    pub version: &'static str,
    pub git_commit: Option<&'static str>,
    pub command: Vec<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Where the weights came from: a checkpoint's source (path, or Hub id and commit), or
    /// the from-scratch config's path.
    pub source: serde_json::Value,
    pub model_type: String,
    pub parameters: usize,
    /// The trained model's activations (`describe` form) and per layer.
    pub activation: String,
    pub per_layer: Vec<String>,
    pub calibration: Option<Calibration>,
    pub identity: Identity,
    pub device: String,
    pub threads: usize,
    /// Steps done, and the steps this run resumed from (one entry per restart).
    pub steps_done: usize,
    pub resumed_from: Vec<usize>,
    pub checkpoints: Vec<String>,
}

impl TrainManifest {
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        write_atomic(&out.join("manifest.json"), text.as_bytes())
    }
}

/// Reads `run.json` (the identity of the run in `out`), or writes it for a new run; fails if
/// it differs from `identity`, naming what changed.
pub fn check_identity(out: &Path, identity: &Identity) -> anyhow::Result<()> {
    let path = out.join("run.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        let text = serde_json::to_string_pretty(identity)? + "\n";
        return write_atomic(&path, text.as_bytes());
    };
    let old: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let new = serde_json::to_value(identity)?;
    let changed = differences(&old, &new, "");
    if !changed.is_empty() {
        anyhow::bail!(
            "{} holds a run with other inputs or settings (changed: {}); use a new --out to start another run",
            out.display(),
            changed.join(", ")
        );
    }
    Ok(())
}

/// The dotted paths at which two JSON values differ.
fn differences(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Vec<String> {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            let null = serde_json::Value::Null;
            keys.into_iter()
                .flat_map(|k| {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    differences(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), &path)
                })
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![at.to_string()],
    }
}
