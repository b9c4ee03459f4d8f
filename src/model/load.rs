//! One call from a checkpoint (its files found locally or fetched from the Hub) to a ready
//! model: config, tokenizer, weights, and the activation plan applied at load time.

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device};

use crate::data::TextTokenizer;
use crate::model::activation::Activation;
use crate::model::plan::{ActivationMap, ActivationPlan, LayerSpec};
use crate::model::{CausalLm, ModelConfig};
use crate::weights::{CheckpointFiles, LoadError, TensorStore};

/// What to swap and where to compute.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `None` keeps the checkpoint's own activation everywhere.
    pub activation: Option<Activation>,
    pub layers: LayerSpec,
    /// A per-layer map (`0-1:relu,2-3:sigmoid`), applied after `activation`.
    pub per_layer: Option<ActivationMap>,
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            activation: None,
            layers: LayerSpec::All,
            per_layer: None,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// A loaded checkpoint.
pub struct Loaded {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: TextTokenizer,
    pub files: CheckpointFiles,
    pub config: ModelConfig,
    /// Which key layout the weights use.
    pub layout: String,
}

/// Layers were chosen but no activation to put in them.
#[derive(Debug, thiserror::Error)]
#[error("layers are given without an activation to put in them")]
pub struct LayersWithoutActivation;

/// Reads the config and plans the activations (cheap; no weights read).
pub fn plan(
    files: &CheckpointFiles,
    opts: &LoadOptions,
) -> anyhow::Result<(ModelConfig, ActivationPlan)> {
    let config = ModelConfig::from_file(&files.config)?;
    let mut plan = config.plan();
    if let Some(act) = opts.activation {
        plan = plan.swap(act, &opts.layers)?;
    } else if opts.layers != LayerSpec::All {
        return Err(LayersWithoutActivation.into());
    }
    if let Some(map) = &opts.per_layer {
        plan = map.apply(plan)?;
    }
    Ok((config, plan))
}

/// Builds the model from a checkpoint's tensors; every key must be present with the shape
/// the config implies, and nothing unexpected may be left over.
pub fn build(
    config: &ModelConfig,
    plan: ActivationPlan,
    mut store: TensorStore,
) -> Result<Box<dyn CausalLm>, LoadError> {
    debug_assert_eq!(plan.per_layer.len(), config.info.n_layer);
    let model = config.arch.build(plan, &mut store)?;
    // A tied checkpoint may still store its head; transformers ignores it, and so do we.
    let arch = config.arch.clone();
    store.finish(&|k| arch.is_buffer(k) || k == "lm_head.weight")?;
    Ok(Box::new(model))
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
    let layout = config.key_layout(&store);
    let model = build(&config, plan, store)
        .with_context(|| format!("loading weights from {}", files.source))?;
    return_freed_memory();
    Ok(Loaded {
        model,
        tokenizer,
        files,
        config,
        layout,
    })
}

/// Hands the heap pages freed while loading (the tokenizer's parsed JSON, mostly: tens of
/// MB in small pieces the allocator would otherwise keep) back to the system, so that they
/// do not count in the run's resident memory.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
