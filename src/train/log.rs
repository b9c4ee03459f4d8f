//! `log.jsonl`: one line per optimizer step (loss, learning rate, gradient norms, speed, and
//! the held-out perplexity at evaluation steps), plus a line for step 0 with the perplexity
//! before training. Lines are flushed as they are written; on resume the lines after the
//! checkpoint are dropped (they are computed again, identically).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::grid::results::write_atomic;
use crate::train::step::LayerGrads;

/// One line of `log.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub step: usize,
    /// Mean training loss of the step (nats per token), before the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Tokens trained on so far (targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_seen: Option<u64>,
    /// Wall time of the step (forward, backward, update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerGrads>,
    /// Held-out perplexity after this step (step 0: before training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_perplexity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_mean_nll: Option<f64>,
}

/// The records of `path` (none if it does not exist); a partial last line (a run killed
/// while writing it) is ignored.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<LogRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    text[..complete]
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Keeps the records up to `step` (rewritten atomically) and returns them.
pub fn truncate_log(path: &Path, step: usize) -> anyhow::Result<Vec<LogRecord>> {
    let kept: Vec<LogRecord> = read_log(path)?
        .into_iter()
        .filter(|r| r.step <= step)
        .collect();
    let mut text = String::new();
    for r in &kept {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())?;
    Ok(kept)
}

/// Appends a record as one flushed line.
pub fn append_log(path: &Path, r: &LogRecord) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(r)?;
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    f.write_all(line.as_bytes())?;
    f.flush()?;
    Ok(())
}
