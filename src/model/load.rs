//! One call from a checkpoint (its files found locally or fetched from the Hub) to a ready
//! model: config, tokenizer, weights, and the activation plan applied at load time.

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device};

use crate::data::TextTokenizer;
use crate::model::activation::Activation;
use crate::model::gpt2::config::Gpt2Config;
use crate::model::gpt2::Gpt2;
use crate::model::plan::{ActivationPlan, LayerSpec};
use crate::weights::{CheckpointFiles, TensorStore};

/// What to swap and where to compute.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `None` keeps the checkpoint's own activation everywhere.
    pub activation: Option<Activation>,
    pub layers: LayerSpec,
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            activation: None,
            layers: LayerSpec::All,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// A loaded checkpoint.
pub struct Loaded {
    pub model: Gpt2,
    pub tokenizer: TextTokenizer,
    pub files: CheckpointFiles,
    pub config: Gpt2Config,
    /// Which key layout the weights use.
    pub layout: &'static str,
}

/// Reads the config and plans the activations (cheap; no weights read).
pub fn plan(
    files: &CheckpointFiles,
    opts: &LoadOptions,
) -> anyhow::Result<(Gpt2Config, ActivationPlan)> {
    let config = Gpt2Config::from_file(&files.config)?;
    let original = config.activation()?;
    let mut plan = ActivationPlan::original(original, config.n_layer);
    if let Some(act) = opts.activation {
        plan = plan.swap(act, &opts.layers).context("--layers")?;
    } else if opts.layers != LayerSpec::All {
        anyhow::bail!("--layers needs --activation (which activation to put in those layers)");
    }
    Ok((config, plan))
}

/// Loads the model in the local directory `dir` with the options' activation swap.
pub fn load(dir: &Path, opts: &LoadOptions) -> anyhow::Result<Loaded> {
    load_files(CheckpointFiles::locate(dir)?, opts)
}

/// Loads a checkpoint whose files are known (see [`CheckpointFiles::resolve`]).
pub fn load_files(files: CheckpointFiles, opts: &LoadOptions) -> anyhow::Result<Loaded> {
    let (config, plan) = plan(&files, opts)?;
    let tokenizer = TextTokenizer::load(&files.tokenizer)?;
    let store = TensorStore::open(&files.weights, opts.dtype, &opts.device)?;
    let layout = store.layout_name();
    let model = Gpt2::load(&config, plan, store)
        .with_context(|| format!("loading weights from {}", files.source))?;
    Ok(Loaded {
        model,
        tokenizer,
        files,
        config,
        layout,
    })
}
