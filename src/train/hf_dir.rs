//! Models in and out as Hugging Face checkpoint directories: a checkpoint read into a
//! [`Decoder`] (the concrete model, which training needs), and a decoder written back as
//! `config.json` (with its activation), `model.safetensors` and `tokenizer.json` — a
//! directory `--model` and transformers' `from_pretrained` both load.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device};

use crate::data::TextTokenizer;
use crate::model::config::LAYER_ACTIVATIONS_KEY;
use crate::model::decoder::Decoder;
use crate::model::plan::ActivationPlan;
use crate::model::ModelConfig;
use crate::weights::{CheckpointFiles, TensorStore};

/// Reads a checkpoint's weights into a decoder with the activation plan `plan`.
pub fn load_decoder(
    files: &CheckpointFiles,
    config: &ModelConfig,
    plan: ActivationPlan,
    device: &Device,
) -> anyhow::Result<Decoder> {
    let mut store = TensorStore::open(&files.weights, DType::F32, device)?;
    let decoder = config
        .arch
        .build(plan, &mut store)
        .with_context(|| format!("loading weights from {}", files.source))?;
    let arch = config.arch.clone();
    store
        .finish(&|k| arch.is_buffer(k) || k == "lm_head.weight")
        .with_context(|| format!("loading weights from {}", files.source))?;
    Ok(decoder)
}

/// `config` (a `config.json` object) with `plan` written in: the activation under the
/// family's key when every layer has the same one, else the plan's original there and every
/// layer's in `gpt_ablate_activations` (which gpt-ablate applies at load; transformers
/// ignores it). `identity` is written as transformers' `linear`.
pub fn config_with_plan(
    mut config: serde_json::Value,
    key: &str,
    plan: &ActivationPlan,
) -> serde_json::Value {
    let hf_name = |a: crate::model::activation::Activation| match a.name().as_str() {
        "identity" => "linear".to_string(),
        n => n.to_string(),
    };
    let uniform = plan.per_layer.windows(2).all(|w| w[0] == w[1]);
    if let Some(obj) = config.as_object_mut() {
        let own = match (uniform, plan.per_layer.first()) {
            (true, Some(&a)) => a,
            _ => plan.original,
        };
        obj.insert(key.to_string(), hf_name(own).into());
        obj.remove(LAYER_ACTIVATIONS_KEY);
        if !uniform {
            let names: Vec<String> = plan.per_layer.iter().map(|a| a.name()).collect();
            obj.insert(LAYER_ACTIVATIONS_KEY.to_string(), names.into());
        }
    }
    config
}

/// Writes `dir/config.json`, `dir/model.safetensors` (float32, `{"format": "pt"}`) and
/// `dir/tokenizer.json` for `decoder`; `config` is the `config.json` object to write.
pub fn write_hf_dir(
    dir: &Path,
    config: &ModelConfig,
    config_json: &serde_json::Value,
    decoder: &Decoder,
    tokenizer: &TextTokenizer,
) -> anyhow::Result<()> {
    let json = config_with_plan(
        config_json.clone(),
        config.arch.activation_key(),
        &decoder.plan,
    );
    let text = serde_json::to_string_pretty(&json)? + "\n";
    std::fs::write(dir.join("config.json"), text)
        .with_context(|| format!("writing {}", dir.join("config.json").display()))?;
    let tensors = config.arch.export(decoder)?;
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(tensors, Some(meta), &path)
        .with_context(|| format!("writing {}", path.display()))?;
    let tok = dir.join("tokenizer.json");
    tokenizer
        .inner()
        .save(&tok, true)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tok.display()))?;
    Ok(())
}
