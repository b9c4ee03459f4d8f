//! `gpt-ablate inspect`: what a checkpoint is — config, parameter count, stored dtypes, key
//! layout, files with sizes and SHA-256 — read from headers alone, before a long run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device};
use serde::Serialize;
use serde_json::Value;

use crate::data::TextTokenizer;
use crate::hub::human_bytes;
use crate::model::ModelConfig;
use crate::provenance::sha256_file;
use crate::weights::{CheckpointFiles, ModelSource, TensorStore, TokenizerFiles, WeightFormat};

/// One file of the checkpoint.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Name inside the checkpoint directory.
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// For a Hub file stored in Git LFS, whether the SHA-256 equals the Hub's (the blob name).
    pub matches_hub: Option<bool>,
}

/// What `inspect` reports.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub source: ModelSource,
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub format: WeightFormat,
    pub layout: String,
    /// Distinct weights (mask buffers excluded; a tied `lm_head` counted once).
    pub parameters: u64,
    /// Stored dtype → number of tensors.
    pub dtypes: BTreeMap<String, usize>,
    pub lm_head: String,
    pub tokenizer: &'static str,
    pub vocab_size: usize,
    pub weight_files: usize,
    pub files: Vec<FileInfo>,
}

/// Reads the config, the tokenizer and every weight header, and hashes every file.
pub fn inspect(files: &CheckpointFiles) -> anyhow::Result<Inspection> {
    let config = ModelConfig::from_file(&files.config)?;
    let tokenizer = TextTokenizer::load(&files.tokenizer)?;
    let store = TensorStore::open(&files.weights, DType::F32, &Device::Cpu)?;
    let tied = config.info.tied_head;
    let head_key = ["lm_head.weight", "embed_out.weight"]
        .into_iter()
        .find(|k| store.contains(k));
    let lm_head = match (tied, head_key) {
        (true, _) => "tied to the token embedding".to_string(),
        (false, Some(k)) => format!("separate {k}"),
        (false, None) => "missing (tie_word_embeddings is false)".to_string(),
    };
    let mut parameters = 0u64;
    let mut dtypes = BTreeMap::new();
    for (key, dtype, shape, buffer) in store.tensors() {
        if buffer
            || config
                .arch
                .is_buffer(key.strip_prefix("transformer.").unwrap_or(key))
        {
            continue;
        }
        *dtypes
            .entry(format!("{dtype:?}").to_uppercase())
            .or_insert(0) += 1;
        let tied_copy = tied && (key == "lm_head.weight" || key == "embed_out.weight");
        if !tied_copy {
            parameters += shape.iter().map(|&d| d as u64).product::<u64>();
        }
    }
    let mut infos = Vec::new();
    for path in files.all_files() {
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let sha256 =
            sha256_file(path).map_err(|e| anyhow::anyhow!("hashing {}: {e}", path.display()))?;
        let matches_hub = match &files.source {
            ModelSource::Hub { .. } => std::fs::read_link(path).ok().and_then(|target| {
                let blob = target.file_name()?.to_string_lossy().to_string();
                let lfs = blob.len() == 64 && blob.bytes().all(|b| b.is_ascii_hexdigit());
                lfs.then(|| blob.eq_ignore_ascii_case(&sha256))
            }),
            ModelSource::Local(_) => None,
        };
        infos.push(FileInfo {
            name: path
                .strip_prefix(&files.dir)
                .unwrap_or(path)
                .display()
                .to_string(),
            path: path.clone(),
            bytes: meta.len(),
            sha256,
            matches_hub,
        });
    }
    Ok(Inspection {
        source: files.source.clone(),
        dir: files.dir.clone(),
        format: files.format,
        layout: config.key_layout(&store),
        parameters,
        dtypes,
        lm_head,
        tokenizer: match files.tokenizer {
            TokenizerFiles::Json(_) => "tokenizer.json",
            TokenizerFiles::VocabMerges { .. } => "vocab.json + merges.txt (byte-level BPE)",
        },
        vocab_size: tokenizer.vocab_size(),
        weight_files: files.weights.len(),
        config,
        files: infos,
    })
}

impl Inspection {
    pub fn to_json(&self) -> Value {
        let files = self
            .files
            .iter()
            .map(|f| FileJson {
                name: &f.name,
                path: f.path.display().to_string(),
                bytes: f.bytes,
                sha256: &f.sha256,
                matches_hub_sha256: f.matches_hub,
            })
            .collect();
        let out = InspectJson {
            source: self.source.to_json(),
            directory: self.dir.display().to_string(),
            config: self.config_json(),
            parameters: self.parameters,
            weights: WeightsJson {
                format: format_name(self.format),
                dtypes: &self.dtypes,
                key_layout: &self.layout,
                lm_head: &self.lm_head,
            },
            tokenizer: TokenizerJson {
                files: self.tokenizer,
                vocab_size: self.vocab_size,
            },
            files,
            total_bytes: self.files.iter().map(|f| f.bytes).sum(),
        };
        serde_json::to_value(out).unwrap_or(Value::Null)
    }

    /// `model_type`, the family's architecture options, vocabulary and head tying.
    fn config_json(&self) -> serde_json::Map<String, Value> {
        let info = &self.config.info;
        let mut m = serde_json::Map::new();
        m.insert("model_type".into(), info.model_type.clone().into());
        for (k, v) in self.config.arch.describe() {
            m.insert(k, v);
        }
        m.insert("vocab_size".into(), info.vocab_size.into());
        m.insert("tie_word_embeddings".into(), info.tied_head.into());
        m
    }

    /// The human-readable report.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let source = match &self.source {
            ModelSource::Local(p) => format!("{} (local directory)", p.display()),
            ModelSource::Hub { repo, commit } => {
                format!(
                    "{} (Hub, revision {}, commit {commit})",
                    repo.id, repo.revision
                )
            }
        };
        let dtypes: Vec<String> = self
            .dtypes
            .iter()
            .map(|(d, n)| format!("{d} ×{n}"))
            .collect();
        let lines = [
            ("model", source),
            ("directory", self.dir.display().to_string()),
            ("config", self.config_line()),
            (
                "parameters",
                format!(
                    "{} ({:.1} M)",
                    group_thousands(self.parameters),
                    self.parameters as f64 / 1e6
                ),
            ),
            (
                "weights",
                format!(
                    "{}, {} file(s); {}; key layout {}; lm_head {}",
                    format_name(self.format),
                    self.weight_files,
                    dtypes.join(", "),
                    self.layout,
                    self.lm_head
                ),
            ),
            (
                "tokenizer",
                format!("{}, {} tokens", self.tokenizer, self.vocab_size),
            ),
        ];
        for (k, v) in lines {
            out.push_str(&format!("{k:<12} {v}\n"));
        }
        out.push_str("files\n");
        let width = self.files.iter().map(|f| f.name.len()).max().unwrap_or(0);
        for f in &self.files {
            let check = match f.matches_hub {
                Some(true) => "  (matches the Hub's SHA-256)",
                Some(false) => "  (DIFFERS from the Hub's SHA-256: corrupt download?)",
                None => "",
            };
            out.push_str(&format!(
                "  {:<width$}  {:>10}  sha256 {}{check}\n",
                f.name,
                human_bytes(f.bytes),
                f.sha256
            ));
        }
        out
    }
}

impl Inspection {
    /// `gpt2: n_embd 768, n_layer 12, …`
    fn config_line(&self) -> String {
        let pairs: Vec<String> = self
            .config
            .arch
            .describe()
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k} {s}"),
                v => format!("{k} {v}"),
            })
            .collect();
        format!(
            "{}: {}, vocab {}",
            self.config.info.model_type,
            pairs.join(", "),
            self.config.info.vocab_size
        )
    }
}

#[derive(Serialize)]
struct InspectJson<'a> {
    source: Value,
    directory: String,
    config: serde_json::Map<String, Value>,
    parameters: u64,
    weights: WeightsJson<'a>,
    tokenizer: TokenizerJson,
    files: Vec<FileJson<'a>>,
    total_bytes: u64,
}

#[derive(Serialize)]
struct WeightsJson<'a> {
    format: &'static str,
    dtypes: &'a BTreeMap<String, usize>,
    key_layout: &'a str,
    lm_head: &'a str,
}

#[derive(Serialize)]
struct TokenizerJson {
    files: &'static str,
    vocab_size: usize,
}

#[derive(Serialize)]
struct FileJson<'a> {
    name: &'a str,
    path: String,
    bytes: u64,
    sha256: &'a str,
    matches_hub_sha256: Option<bool>,
}

fn format_name(f: WeightFormat) -> &'static str {
    match f {
        WeightFormat::Safetensors => "safetensors",
        WeightFormat::PyTorch => "pytorch (pickle)",
    }
}

/// `124439808` → `124,439,808`.
fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::group_thousands(124_439_808), "124,439,808");
        assert_eq!(super::group_thousands(999), "999");
        assert_eq!(super::group_thousands(1000), "1,000");
    }
}
