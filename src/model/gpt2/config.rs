//! The checkpoint's `config.json`: Hugging Face `GPT2Config` fields (with their aliases), and
//! the checks that reject what this tool cannot run faithfully.

use serde::Deserialize;

use crate::model::activation::Activation;

/// GPT-2 hyper-parameters, as `transformers.GPT2Config` writes them.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    #[serde(alias = "max_position_embeddings")]
    pub n_positions: usize,
    #[serde(alias = "hidden_size")]
    pub n_embd: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    /// MLP inner size; `None` (or JSON null) means 4·n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Kept as a string so an unknown name gets our error, naming the file and key.
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// A number, a list of numbers, or null.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
}

fn default_activation() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl Gpt2Config {
    /// Checks internal consistency and rejects architecture options this tool does not run.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(t) = &self.model_type {
            if t != "gpt2" {
                return Err(format!(
                    "model_type is '{t}'; only GPT-2-architecture checkpoints (model_type \"gpt2\") are supported"
                ));
            }
        }
        if let Some(archs) = &self.architectures {
            if let Some(bad) = archs.iter().find(|a| !a.starts_with("GPT2")) {
                return Err(format!(
                    "architectures lists '{bad}'; only GPT2LMHeadModel-style checkpoints are supported"
                ));
            }
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ] {
            if v == 0 {
                return Err(format!("{key} must be positive"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd ({}) is not divisible by n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if self.n_inner == Some(0) {
            return Err("n_inner must be positive (or null for 4·n_embd)".into());
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return Err(format!(
                "layer_norm_epsilon must be a positive number, got {}",
                self.layer_norm_epsilon
            ));
        }
        if self.add_cross_attention {
            return Err(
                "add_cross_attention = true (encoder-decoder GPT-2) is not supported".into(),
            );
        }
        self.activation()
            .map_err(|e| format!("activation_function: {e}"))?;
        Ok(())
    }

    /// The checkpoint's own MLP activation.
    pub fn activation(&self) -> Result<Activation, crate::model::activation::UnknownActivation> {
        self.activation_function.parse()
    }

    /// The end-of-text token id the config names (the first, if it lists several).
    pub fn eos_id(&self) -> Option<u32> {
        crate::model::config::token_id(&self.eos_token_id)
    }

    pub fn inner_size(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Gpt2Config, String> {
        let cfg: Gpt2Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    const BASE: &str = r#""vocab_size": 10, "n_positions": 8, "n_embd": 12, "n_layer": 2"#;

    #[test]
    fn accepts_hf_spellings_and_defaults() {
        let cfg = parse(&format!(r#"{{{BASE}, "n_head": 3, "n_inner": null}}"#)).unwrap();
        assert_eq!(cfg.inner_size(), 48);
        assert_eq!(cfg.head_dim(), 4);
        assert_eq!(cfg.activation().unwrap(), Activation::GeluNew);
        assert!(cfg.tie_word_embeddings && cfg.scale_attn_weights);
        let cfg = parse(
            r#"{"vocab_size": 10, "max_position_embeddings": 8, "hidden_size": 12,
                "num_hidden_layers": 2, "num_attention_heads": 4, "activation_function": "relu"}"#,
        )
        .unwrap();
        assert_eq!(
            (cfg.n_positions, cfg.n_embd, cfg.n_layer, cfg.n_head),
            (8, 12, 2, 4)
        );
        assert_eq!(cfg.activation().unwrap(), Activation::Relu);
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let cases = [
            (r#""n_head": 5"#, "not divisible by n_head"),
            (
                r#""n_head": 3, "model_type": "llama""#,
                "model_type is 'llama'",
            ),
            (
                r#""n_head": 3, "architectures": ["LlamaForCausalLM"]"#,
                "LlamaForCausalLM",
            ),
            (
                r#""n_head": 3, "add_cross_attention": true"#,
                "add_cross_attention",
            ),
            (
                r#""n_head": 3, "activation_function": "gelu_10""#,
                "activation_function",
            ),
            (
                r#""n_head": 3, "layer_norm_epsilon": -1"#,
                "layer_norm_epsilon",
            ),
            (r#""n_head": 0"#, "n_head must be positive"),
        ];
        for (extra, want) in cases {
            let err = parse(&format!("{{{BASE}, {extra}}}")).unwrap_err();
            assert!(err.contains(want), "{extra}: {err}");
        }
    }
}
