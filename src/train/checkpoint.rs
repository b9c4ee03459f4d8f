//! Checkpoints: `checkpoint-<step>/` every `save_every` steps and `final/` at the end, each a
//! Hugging Face directory (config.json, model.safetensors, tokenizer.json) plus the
//! optimizer's moments (`optimizer.safetensors`) and `trainer_state.json` (steps done;
//! the data order is a function of the seed and the step, so nothing else is needed).
//! A checkpoint is written into `.tmp-<name>/`, synced, and renamed into place: a run killed
//! at any moment leaves only complete checkpoints.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::TextTokenizer;
use crate::model::ModelConfig;
use crate::train::hf_dir::write_hf_dir;
use crate::train::step::Trainer;

pub const FINAL: &str = "final";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "trainer_state.json";

/// `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// The run's total steps.
    pub steps: usize,
    pub tokens_seen: u64,
}

pub fn checkpoint_name(step: usize) -> String {
    format!("checkpoint-{step}")
}

/// What a checkpoint is made of.
pub struct Snapshot<'a> {
    pub config: &'a ModelConfig,
    pub config_json: &'a serde_json::Value,
    pub trainer: &'a Trainer,
    pub tokenizer: &'a TextTokenizer,
    pub state: TrainerState,
}

/// Writes `out/name/` atomically; returns its path.
pub fn write_checkpoint(out: &Path, name: &str, s: &Snapshot) -> anyhow::Result<PathBuf> {
    let dir = out.join(name);
    let tmp = out.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    write_hf_dir(
        &tmp,
        s.config,
        s.config_json,
        &s.trainer.tr.model,
        s.tokenizer,
    )?;
    let mut moments = Vec::new();
    for (i, p) in s.trainer.tr.params.iter().enumerate() {
        let cpu = |t: &Tensor| t.to_dtype(DType::F32)?.to_device(&Device::Cpu);
        moments.push((format!("exp_avg/{}", p.name), cpu(&s.trainer.opt.m[i])?));
        moments.push((format!("exp_avg_sq/{}", p.name), cpu(&s.trainer.opt.v[i])?));
    }
    safetensors::serialize_to_file(moments, None, &tmp.join(OPTIMIZER))
        .with_context(|| format!("writing {}", tmp.join(OPTIMIZER).display()))?;
    std::fs::write(
        tmp.join(STATE),
        serde_json::to_string_pretty(&s.state)? + "\n",
    )?;
    for f in std::fs::read_dir(&tmp)? {
        File::open(f?.path())?.sync_all()?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("renaming {} into place", tmp.display()))?;
    File::open(out)?.sync_all()?;
    Ok(dir)
}

/// Removes the partial checkpoints a killed run left.
pub fn remove_partial(out: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    for e in entries {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(".tmp-") && p.is_dir() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// The newest complete checkpoint in `out`: `final/`, else the `checkpoint-<step>/` with
/// the most steps.
pub fn latest(out: &Path) -> anyhow::Result<Option<(PathBuf, TrainerState)>> {
    let state_of = |dir: &Path| -> anyhow::Result<TrainerState> {
        let p = dir.join(STATE);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a trainer state", p.display()))
    };
    if out.join(FINAL).join(STATE).is_file() {
        let dir = out.join(FINAL);
        return Ok(Some((dir.clone(), state_of(&dir)?)));
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for e in std::fs::read_dir(out).into_iter().flatten() {
        let p = e?.path();
        let step = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|s| s.parse::<usize>().ok());
        if let Some(step) = step.filter(|_| p.join(STATE).is_file()) {
            if best.as_ref().is_none_or(|(b, _)| step > *b) {
                best = Some((step, p));
            }
        }
    }
    best.map(|(_, p)| Ok((p.clone(), state_of(&p)?)))
        .transpose()
}

/// Restores the optimizer's moments and step count from a checkpoint directory.
pub fn load_optimizer(
    dir: &Path,
    trainer: &mut Trainer,
    state: &TrainerState,
) -> anyhow::Result<()> {
    let path = dir.join(OPTIMIZER);
    let device = trainer
        .tr
        .params
        .first()
        .map(|p| p.var.device().clone())
        .unwrap_or(Device::Cpu);
    let mut st: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &device)
        .with_context(|| format!("reading {}", path.display()))?;
    for (i, p) in trainer.tr.params.iter().enumerate() {
        let mut take = |k: String| {
            st.remove(&k)
                .ok_or_else(|| anyhow::anyhow!("{}: no tensor {k}", path.display()))
        };
        trainer.opt.m[i] = take(format!("exp_avg/{}", p.name))?;
        trainer.opt.v[i] = take(format!("exp_avg_sq/{}", p.name))?;
    }
    trainer.opt.steps = state.step;
    trainer.step = state.step;
    Ok(())
}
