//! Perplexity protocols: which windows are scored, so that a number can be put next to the
//! tool that computed it the same way.
//!
//! - `hf`: the Hugging Face perplexity guide's sliding windows (`context`, `stride`).
//! - `lm-eval`: lm-evaluation-harness's `loglikelihood_rolling` as its HF backend runs it,
//!   per document (`max_length`, the model's prefix token).
//! - `llama-cpp`: `llama-perplexity`'s default mode (`context`, BOS when the vocabulary adds
//!   one).
//! - `disjoint`: non-overlapping windows of `context` tokens.
//!
//! Errors name the settings neutrally (`context`, `stride`, `max_length`, the keys of a grid
//! config); [`ProtocolError::render`] lets the command line name its flags instead.

use serde::{Deserialize, Serialize};

use super::detokenize::Detokenizer;
pub use crate::data::SpecialTokens;

/// The protocols by name, as `--protocol` and grid configs give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProtocolName {
    #[default]
    Hf,
    LmEval,
    LlamaCpp,
    Disjoint,
}

impl ProtocolName {
    pub const ALL: [ProtocolName; 4] = [Self::Hf, Self::LmEval, Self::LlamaCpp, Self::Disjoint];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hf => "hf",
            Self::LmEval => "lm-eval",
            Self::LlamaCpp => "llama-cpp",
            Self::Disjoint => "disjoint",
        }
    }
}

impl std::fmt::Display for ProtocolName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProtocolName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not one of hf, lm-eval, llama-cpp, disjoint"))
    }
}

/// A protocol with every parameter fixed: what JSON outputs, rows and manifests report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Protocol {
    Hf {
        context: usize,
        stride: usize,
    },
    LmEval {
        max_length: usize,
        /// Put before each document so its first token is scored.
        prefix_token: u32,
        /// Applied to each document before it is tokenized (words and bytes are still
        /// counted on the document as stored), as the harness's `wikitext` task does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detokenize: Option<Detokenizer>,
    },
    LlamaCpp {
        context: usize,
        /// Whether each chunk's first token is replaced by `bos_token`.
        add_bos: bool,
        bos_token: Option<u32>,
    },
    Disjoint {
        context: usize,
    },
}

impl Protocol {
    pub fn name(&self) -> ProtocolName {
        match self {
            Self::Hf { .. } => ProtocolName::Hf,
            Self::LmEval { .. } => ProtocolName::LmEval,
            Self::LlamaCpp { .. } => ProtocolName::LlamaCpp,
            Self::Disjoint { .. } => ProtocolName::Disjoint,
        }
    }

    /// Tokens per window: `context`, or lm-eval's `max_length`.
    pub fn context(&self) -> usize {
        match *self {
            Self::Hf { context, .. } | Self::LlamaCpp { context, .. } => context,
            Self::Disjoint { context } => context,
            Self::LmEval { max_length, .. } => max_length,
        }
    }

    /// How far consecutive windows start apart (the context, except under `hf`).
    pub fn stride(&self) -> usize {
        match *self {
            Self::Hf { stride, .. } => stride,
            _ => self.context(),
        }
    }

    /// One line for reports, e.g. `lm-eval (max_length 1024, prefix token 50256)`.
    pub fn describe(&self) -> String {
        match *self {
            Self::Hf { context, stride } => format!("hf (context {context}, stride {stride})"),
            Self::LmEval {
                max_length,
                prefix_token,
                detokenize,
            } => format!(
                "lm-eval (max_length {max_length}, prefix token {prefix_token}{})",
                detokenize.map_or(String::new(), |d| format!(", {d:?} detokenizer")
                    .to_lowercase())
            ),
            Self::LlamaCpp {
                context,
                bos_token: Some(b),
                ..
            } => format!("llama-cpp (context {context}, chunks start with BOS {b})"),
            Self::LlamaCpp { context, .. } => format!("llama-cpp (context {context}, no BOS)"),
            Self::Disjoint { context } => format!("disjoint (context {context})"),
        }
    }
}

/// A protocol as asked for: unset settings take the protocol's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProtocolRequest {
    pub name: ProtocolName,
    pub context: Option<usize>,
    pub stride: Option<usize>,
    pub max_length: Option<usize>,
    pub detokenize: Option<Detokenizer>,
}

/// Why a protocol cannot run as asked. Settings are named as in grid configs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{key} does not apply to the {protocol} protocol{}", hint(key, *protocol))]
    NotFor {
        key: &'static str,
        protocol: ProtocolName,
    },
    #[error("{key} must be at least {min}, got {got}")]
    TooSmall {
        key: &'static str,
        min: usize,
        got: usize,
    },
    #[error("{key} {got} exceeds the model's n_positions ({n_positions})")]
    TooLarge {
        key: &'static str,
        got: usize,
        n_positions: usize,
    },
    #[error("stride must be between 1 and the context ({context}), got {stride}")]
    Stride { stride: usize, context: usize },
    #[error("the lm-eval protocol needs a prefix token, and the model names no BOS or EOS token (tokenizer_config.json, config.json)")]
    NoPrefix,
    #[error("the llama-cpp protocol cannot run: the tokenizer appends an end-of-sequence token, which llama-perplexity refuses")]
    AddsEos,
    #[error("the llama-cpp protocol needs at least 2 × context = {} tokens (llama-perplexity's rule); the text has {tokens}", 2 * context)]
    TooFewForChunks { tokens: usize, context: usize },
}

/// Why a setting does not apply, with other settings named by `name`.
fn hint_with(key: &str, protocol: ProtocolName, name: &dyn Fn(&str) -> String) -> String {
    match (key, protocol) {
        ("context", ProtocolName::LmEval) => format!(" (its window is {})", name("max_length")),
        ("stride", _) => format!(" (only hf has a {})", name("stride")),
        ("max_length", _) => format!(
            " (only lm-eval has a {}; the window is {})",
            name("max_length"),
            name("context")
        ),
        ("detokenize", _) => " (only lm-eval detokenizes)".to_string(),
        _ => String::new(),
    }
}

fn hint(key: &str, protocol: ProtocolName) -> String {
    hint_with(key, protocol, &|k| k.to_string())
}

impl ProtocolError {
    /// The message with each setting named by `name` (e.g. `context` → `--context`).
    pub fn render(&self, name: &dyn Fn(&str) -> String) -> String {
        match *self {
            Self::NotFor { key, protocol } => format!(
                "{} does not apply to the {protocol} protocol{}",
                name(key),
                hint_with(key, protocol, name)
            ),
            Self::TooSmall { key, min, got } => {
                format!("{} must be at least {min}, got {got}", name(key))
            }
            Self::TooLarge {
                key,
                got,
                n_positions,
            } => format!(
                "{} {got} exceeds the model's n_positions ({n_positions})",
                name(key)
            ),
            Self::Stride { stride, context } => format!(
                "{} must be between 1 and the context ({context}), got {stride}",
                name("stride")
            ),
            _ => self.to_string(),
        }
    }
}

impl ProtocolRequest {
    /// Fixes every setting for a model of `n_positions` positions, checking each.
    pub fn resolve(
        &self,
        n_positions: usize,
        special: &SpecialTokens,
    ) -> Result<Protocol, ProtocolError> {
        self.check_applicable()?;
        let context = self.context.unwrap_or(n_positions);
        let window = |key: &'static str, got: usize, min: usize| {
            if got < min {
                Err(ProtocolError::TooSmall { key, min, got })
            } else if got > n_positions {
                Err(ProtocolError::TooLarge {
                    key,
                    got,
                    n_positions,
                })
            } else {
                Ok(got)
            }
        };
        match self.name {
            ProtocolName::Hf => {
                let context = window("context", context, 2)?;
                let stride = self.stride.unwrap_or((context / 2).max(1));
                if stride == 0 || stride > context {
                    return Err(ProtocolError::Stride { stride, context });
                }
                Ok(Protocol::Hf { context, stride })
            }
            ProtocolName::Disjoint => Ok(Protocol::Disjoint {
                context: window("context", context, 2)?,
            }),
            ProtocolName::LlamaCpp => {
                if special.adds_eos {
                    return Err(ProtocolError::AddsEos);
                }
                Ok(Protocol::LlamaCpp {
                    context: window("context", context, 3)?,
                    add_bos: special.added_bos.is_some(),
                    bos_token: special.added_bos,
                })
            }
            ProtocolName::LmEval => Ok(Protocol::LmEval {
                max_length: window("max_length", self.max_length.unwrap_or(n_positions), 1)?,
                prefix_token: special.prefix.ok_or(ProtocolError::NoPrefix)?,
                detokenize: self.detokenize,
            }),
        }
    }

    /// Settings the protocol does not have are refused rather than ignored.
    fn check_applicable(&self) -> Result<(), ProtocolError> {
        let protocol = self.name;
        let not_for = |key| Err(ProtocolError::NotFor { key, protocol });
        if self.stride.is_some() && protocol != ProtocolName::Hf {
            return not_for("stride");
        }
        if self.max_length.is_some() && protocol != ProtocolName::LmEval {
            return not_for("max_length");
        }
        if self.detokenize.is_some() && protocol != ProtocolName::LmEval {
            return not_for("detokenize");
        }
        if self.context.is_some() && protocol == ProtocolName::LmEval {
            return not_for("context");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL: SpecialTokens = SpecialTokens {
        prefix: Some(7),
        added_bos: Some(1),
        adds_eos: false,
    };

    fn req(name: ProtocolName) -> ProtocolRequest {
        ProtocolRequest {
            name,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_each_protocol() {
        let r = |p: ProtocolRequest| p.resolve(64, &SPECIAL).unwrap();
        assert_eq!(
            r(req(ProtocolName::Hf)),
            Protocol::Hf {
                context: 64,
                stride: 32
            }
        );
        assert_eq!(
            r(req(ProtocolName::Disjoint)),
            Protocol::Disjoint { context: 64 }
        );
        assert_eq!(
            r(req(ProtocolName::LmEval)),
            Protocol::LmEval {
                max_length: 64,
                prefix_token: 7,
                detokenize: None
            }
        );
        let llama = ProtocolRequest {
            context: Some(16),
            ..req(ProtocolName::LlamaCpp)
        };
        assert_eq!(
            r(llama),
            Protocol::LlamaCpp {
                context: 16,
                add_bos: true,
                bos_token: Some(1)
            }
        );
        let json = serde_json::to_string(&r(req(ProtocolName::LmEval))).unwrap();
        assert_eq!(
            json,
            r#"{"name":"lm-eval","max_length":64,"prefix_token":7}"#
        );
        assert_eq!(
            "llama-cpp".parse::<ProtocolName>(),
            Ok(ProtocolName::LlamaCpp)
        );
        assert!("lm_eval"
            .parse::<ProtocolName>()
            .unwrap_err()
            .contains("lm-eval"));
    }

    #[test]
    fn settings_a_protocol_lacks_or_cannot_take_are_refused() {
        let err = |p: ProtocolRequest| p.resolve(64, &SPECIAL).unwrap_err();
        let e = err(ProtocolRequest {
            stride: Some(4),
            ..req(ProtocolName::Disjoint)
        });
        assert_eq!(
            e.to_string(),
            "stride does not apply to the disjoint protocol (only hf has a stride)"
        );
        let e = err(ProtocolRequest {
            max_length: Some(4),
            ..req(ProtocolName::Hf)
        });
        let flags = e.render(&|k| format!("--{}", k.replace('_', "-")));
        assert!(
            flags.starts_with("--max-length does not apply to the hf protocol"),
            "{flags}"
        );
        assert!(
            flags.contains("only lm-eval has a --max-length; the window is --context"),
            "{flags}"
        );
        let e = err(ProtocolRequest {
            context: Some(8),
            ..req(ProtocolName::LmEval)
        });
        assert!(e.to_string().contains("its window is max_length"));
        let e = err(ProtocolRequest {
            context: Some(65),
            ..req(ProtocolName::Hf)
        });
        assert_eq!(
            e.to_string(),
            "context 65 exceeds the model's n_positions (64)"
        );
        let e = err(ProtocolRequest {
            max_length: Some(0),
            ..req(ProtocolName::LmEval)
        });
        assert_eq!(e.to_string(), "max_length must be at least 1, got 0");
        let e = err(ProtocolRequest {
            context: Some(8),
            stride: Some(9),
            ..req(ProtocolName::Hf)
        });
        assert!(e.to_string().contains("got 9"));
        let none = SpecialTokens::default();
        assert_eq!(
            req(ProtocolName::LmEval).resolve(64, &none),
            Err(ProtocolError::NoPrefix)
        );
        let eos = SpecialTokens {
            adds_eos: true,
            ..none
        };
        assert_eq!(
            req(ProtocolName::LlamaCpp).resolve(64, &eos),
            Err(ProtocolError::AddsEos)
        );
    }
}
