//! `gpt-ablate inspect`: what a checkpoint is — config, parameter count, stored dtypes, key
//! layout, files with sizes and SHA-256 — read from headers alone, before a long run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device};
use serde_json::{json, Value};

use crate::data::TextTokenizer;
use crate::hub::human_bytes;
use crate::model::gpt2::config::Gpt2Config;
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
    pub config: Gpt2Config,
    pub format: WeightFormat,
    pub layout: &'static str,
    /// Distinct weights (mask buffers excluded; a tied `lm_head` counted once).
    pub parameters: u64,
    /// Stored dtype → number of tensors.
    pub dtypes: BTreeMap<String, usize>,
    pub lm_head: &'static str,
    pub tokenizer: &'static str,
    pub vocab_size: usize,
    pub weight_files: usize,
    pub files: Vec<FileInfo>,
}

/// Reads the config, the tokenizer and every weight header, and hashes every file.
pub fn inspect(files: &CheckpointFiles) -> anyhow::Result<Inspection> {
    let config = Gpt2Config::from_file(&files.config)?;
    let tokenizer = TextTokenizer::load(&files.tokenizer)?;
    let store = TensorStore::open(&files.weights, DType::F32, &Device::Cpu)?;
    let stores_head = store.contains("lm_head.weight");
    let lm_head = match (config.tie_word_embeddings, stores_head) {
        (true, _) => "tied to wte",
        (false, true) => "separate lm_head.weight",
        (false, false) => "missing (tie_word_embeddings is false)",
    };
    let mut parameters = 0u64;
    let mut dtypes = BTreeMap::new();
    for (key, dtype, shape, buffer) in store.tensors() {
        if buffer {
            continue;
        }
        *dtypes
            .entry(format!("{dtype:?}").to_uppercase())
            .or_insert(0) += 1;
        let tied_copy = config.tie_word_embeddings && key.ends_with("lm_head.weight");
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
        layout: store.layout_name(),
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
        let source = self.source.to_json();
        let c = &self.config;
        json!({
            "source": source,
            "directory": self.dir.display().to_string(),
            "config": {
                "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
                "n_inner": c.n_inner.unwrap_or(4 * c.n_embd), "n_positions": c.n_positions,
                "vocab_size": c.vocab_size, "activation_function": c.activation_function,
                "layer_norm_epsilon": c.layer_norm_epsilon,
                "tie_word_embeddings": c.tie_word_embeddings,
            },
            "parameters": self.parameters,
            "weights": {
                "format": format_name(self.format),
                "dtypes": self.dtypes,
                "key_layout": self.layout,
                "lm_head": self.lm_head,
            },
            "tokenizer": {"files": self.tokenizer, "vocab_size": self.vocab_size},
            "files": self.files.iter().map(|f| json!({
                "name": f.name, "path": f.path.display().to_string(), "bytes": f.bytes,
                "sha256": f.sha256, "matches_hub_sha256": f.matches_hub,
            })).collect::<Vec<_>>(),
            "total_bytes": self.files.iter().map(|f| f.bytes).sum::<u64>(),
        })
    }

    /// The human-readable report.
    pub fn report(&self) -> String {
        let c = &self.config;
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
            (
                "config",
                format!(
                    "{} layers, {} heads, n_embd {}, n_inner {}, n_positions {}, vocab {}",
                    c.n_layer,
                    c.n_head,
                    c.n_embd,
                    c.n_inner.unwrap_or(4 * c.n_embd),
                    c.n_positions,
                    c.vocab_size
                ),
            ),
            (
                "activation",
                format!(
                    "{} (layer_norm_epsilon {})",
                    c.activation_function, c.layer_norm_epsilon
                ),
            ),
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
