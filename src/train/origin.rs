//! What a run starts from and trains on: the model (a checkpoint to fine-tune, or a
//! from-scratch config), its activation plan, and the training and held-out tokens.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::data::{read_data, TextTokenizer};
use crate::model::plan::{ActivationMap, ActivationPlan};
use crate::model::ModelConfig;
use crate::provenance::{sha256_bytes, sha256_file};
use crate::train::manifest::TextInfo;
use crate::train::scratch::Scratch;
use crate::weights::CheckpointFiles;

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum Start {
    /// A checkpoint (directory or Hub id) to fine-tune.
    Init {
        model: String,
        revision: Option<String>,
    },
    /// A from-scratch config (TOML).
    Scratch(PathBuf),
}

/// The starting model, before its weights are read.
pub struct Origin {
    pub config: ModelConfig,
    /// The `config.json` object checkpoints are written with (activation set per plan).
    pub config_json: serde_json::Value,
    pub tokenizer: TextTokenizer,
    /// The checkpoint's files (`None` from scratch).
    pub files: Option<CheckpointFiles>,
    pub init_std: f64,
    /// For the manifest: the checkpoint's source, or the config path.
    pub source: serde_json::Value,
    pub kind: &'static str,
    pub sha256: String,
}

impl Origin {
    pub fn resolve(start: &Start) -> anyhow::Result<Self> {
        let origin = match start {
            Start::Init { model, revision } => Self::checkpoint(model, revision.as_deref())?,
            Start::Scratch(path) => Self::scratch(path)?,
        };
        if let Some(why) = origin.config.arch.untrainable() {
            anyhow::bail!("{}: {why}", origin.source);
        }
        Ok(origin)
    }

    fn checkpoint(model: &str, revision: Option<&str>) -> anyhow::Result<Self> {
        let files = CheckpointFiles::resolve(model, revision)?;
        let config = ModelConfig::from_file(&files.config)?;
        let text = std::fs::read_to_string(&files.config)
            .with_context(|| format!("reading {}", files.config.display()))?;
        let config_json = serde_json::from_str(&text)?;
        let tokenizer = TextTokenizer::load(&files.tokenizer)?;
        let mut hashes = String::new();
        for w in &files.weights {
            hashes.push_str(&sha256_file(w).with_context(|| format!("reading {}", w.display()))?);
        }
        Ok(Self {
            config,
            config_json,
            tokenizer,
            init_std: 0.02,
            source: files.source.to_json(),
            kind: "init",
            sha256: sha256_bytes(hashes.as_bytes()),
            files: Some(files),
        })
    }

    fn scratch(path: &Path) -> anyhow::Result<Self> {
        let s = Scratch::from_file(path)?;
        let tok = sha256_file(&s.tokenizer_path)?;
        let sha256 = sha256_bytes(format!("{}{tok}", s.config_json).as_bytes());
        Ok(Self {
            config: s.config,
            config_json: s.config_json,
            tokenizer: s.tokenizer,
            files: None,
            init_std: s.init_std,
            source: serde_json::json!({"kind": "scratch", "config": path.display().to_string()}),
            kind: "scratch",
            sha256,
        })
    }

    /// The checkpoint's own plan with `swap` applied.
    pub fn plan(&self, swap: Option<&ActivationMap>) -> anyhow::Result<ActivationPlan> {
        let plan = self.config.plan();
        match swap {
            Some(map) => Ok(map.apply(plan)?),
            None => Ok(plan),
        }
    }
}

/// The training tokens and the held-out tokens.
pub struct Texts {
    pub train: Vec<u32>,
    pub eval: Vec<u32>,
    pub train_info: TextInfo,
    pub eval_info: TextInfo,
}

impl Texts {
    /// Reads and tokenizes the data; without held-out data, the last 10 % of the training
    /// tokens are held out (and not trained on).
    pub fn load(
        data: &Path,
        eval_data: Option<&Path>,
        tokenizer: &TextTokenizer,
        vocab: usize,
    ) -> anyhow::Result<Self> {
        let (train_text, mut train) = tokenized(data, tokenizer)?;
        let mut train_info = info(data.display().to_string(), &train_text, train.len());
        let (eval, eval_info) = match eval_data {
            Some(p) => {
                let (text, ids) = tokenized(p, tokenizer)?;
                let i = info(p.display().to_string(), &text, ids.len());
                (ids, i)
            }
            None => {
                let eval = train.split_off(train.len() - train.len() / 10);
                train_info.tokens = train.len();
                let source = format!(
                    "the last 10 % of the tokens of {} (held out)",
                    data.display()
                );
                // Bytes and hash of the held-out tokens' text.
                let held = tokenizer.decode(&eval)?;
                let i = TextInfo {
                    tokens: eval.len(),
                    ..info(source, &held, 0)
                };
                (eval, i)
            }
        };
        for (ids, what) in [
            (&train, data.display().to_string()),
            (&eval, eval_info.source.clone()),
        ] {
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
                anyhow::bail!("{what}: token id {id} is outside the model's vocabulary ({vocab}): does the tokenizer belong to this model?");
            }
        }
        Ok(Self {
            train,
            eval,
            train_info,
            eval_info,
        })
    }
}

fn tokenized(p: &Path, tokenizer: &TextTokenizer) -> anyhow::Result<(String, Vec<u32>)> {
    let text = read_data(p)?;
    let ids = tokenizer
        .encode(&text)
        .with_context(|| format!("tokenizing {}", p.display()))?;
    Ok((text, ids))
}

fn info(source: String, text: &str, tokens: usize) -> TextInfo {
    TextInfo {
        source,
        bytes: text.len(),
        tokens,
        sha256: sha256_bytes(text.as_bytes()),
    }
}
