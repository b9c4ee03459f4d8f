//! Text in, token ids out: reading a dataset (a file in strict UTF-8, a named dataset shipped
//! with the tool, or a text/JSONL file of a Hub dataset repo) and the checkpoint's tokenizer
//! (`tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`).

use std::path::{Path, PathBuf};

use crate::hub::{RepoKind, RepoRef};
use crate::weights::TokenizerFiles;

/// Why a text or tokenizer cannot be used. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("data file {0} does not exist")]
    Missing(PathBuf),
    #[error("data file {0} does not exist and is not a named dataset (`gpt-ablate datasets` lists them: wikitext-2, shakespeare-val)")]
    MissingData(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data file {0} is empty")]
    Empty(PathBuf),
    #[error("{path}: invalid UTF-8 at byte offset {offset}")]
    Utf8 { path: PathBuf, offset: usize },
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{path} line {line}: {msg}")]
    Jsonl {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {what} files are not supported; use a UTF-8 text file or JSONL (one {{\"text\": ...}} per line)")]
    Format { path: PathBuf, what: String },
    #[error("data {spec}: {msg}")]
    Hub { spec: String, msg: String },
}

/// Reads a whole text file, which must be non-empty UTF-8. A `.jsonl` file is read as JSON
/// lines: each line's `text` field, documents joined with a blank line (`"\n\n"`).
pub fn read_text(path: &Path) -> Result<String, TextError> {
    if !path.exists() {
        return Err(TextError::Missing(path.to_path_buf()));
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ["parquet", "arrow", "gz", "zst", "bz2", "xz", "zip"].contains(&ext.as_str()) {
        return Err(TextError::Format {
            path: path.to_path_buf(),
            what: format!(".{ext}"),
        });
    }
    let text = read_utf8(path)?;
    if ext == "jsonl" {
        return jsonl_text(path, &text);
    }
    Ok(text)
}

/// The `text` fields of a JSONL file, joined with `"\n\n"`; blank lines are skipped.
fn jsonl_text(path: &Path, content: &str) -> Result<String, TextError> {
    let mut docs = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |msg: String| TextError::Jsonl {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        match value.get("text") {
            Some(serde_json::Value::String(t)) => docs.push(t.as_str().to_owned()),
            Some(_) => return Err(bad("\"text\" is not a string".into())),
            None => return Err(bad("no \"text\" field".into())),
        }
    }
    let text = docs.join("\n\n");
    if text.is_empty() {
        return Err(TextError::Empty(path.to_path_buf()));
    }
    Ok(text)
}

fn read_utf8(path: &Path) -> Result<String, TextError> {
    let bytes = std::fs::read(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(TextError::Empty(path.to_path_buf()));
    }
    String::from_utf8(bytes).map_err(|e| TextError::Utf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// A text shipped inside the binary, usable as `--data NAME`.
pub struct NamedDataset {
    pub name: &'static str,
    pub description: &'static str,
    pub licence: &'static str,
    /// Token counts with the tokenizers it is usually scored with.
    pub tokens: &'static str,
    pub text: &'static str,
}

/// The named datasets (the files under `data/`, embedded at build time).
pub const NAMED_DATASETS: [NamedDataset; 2] = [
    NamedDataset {
        name: "wikitext-2",
        description: "WikiText-2 raw test split, rows joined with \"\\n\\n\" as in the Hugging Face perplexity guide",
        licence: "CC BY-SA 3.0 (Merity et al., 2016)",
        tokens: "287,644 GPT-2 tokens",
        text: include_str!("../../data/wikitext-2-raw-test.txt"),
    },
    NamedDataset {
        name: "shakespeare-val",
        description: "the held-out last 10 % of Tiny Shakespeare (the default model's validation text)",
        licence: "public domain",
        tokens: "43,568 tokens of models/shakespeare-gpt2",
        text: include_str!("../../data/shakespeare-val.txt"),
    },
];

/// Reads `--data`: an existing file, a named dataset, or `hf:ORG/NAME[@REV]/path/in/repo` (a
/// text or JSONL file of a Hub dataset repo, fetched into the Hugging Face cache).
pub fn read_data(arg: &Path) -> Result<String, TextError> {
    if arg.exists() {
        return read_text(arg);
    }
    if let Some(spec) = arg.to_str().filter(|s| s.starts_with("hf:")) {
        let (repo, file) = parse_hub_data(spec)?;
        let hub = crate::hub::Hub::from_env();
        let fetched = hub.fetch(&repo, &file).map_err(|e| TextError::Hub {
            spec: spec.to_string(),
            msg: e.to_string(),
        })?;
        return read_text(&fetched.path);
    }
    match NAMED_DATASETS.iter().find(|d| arg.as_os_str() == d.name) {
        Some(d) => Ok(d.text.to_string()),
        None => Err(TextError::MissingData(arg.to_path_buf())),
    }
}

/// Whether `arg` names data without being a file: a named dataset or a well-formed `hf:` path.
pub fn is_data_name(arg: &str) -> bool {
    NAMED_DATASETS.iter().any(|d| d.name == arg) || parse_hub_data(arg).is_ok()
}

/// `hf:ORG/NAME[@REV]/path/in/repo` → the dataset repo and the file.
pub fn parse_hub_data(spec: &str) -> Result<(RepoRef, String), TextError> {
    let bad = |msg: &str| TextError::Hub {
        spec: spec.to_string(),
        msg: msg.to_string(),
    };
    let rest = spec
        .strip_prefix("hf:")
        .ok_or_else(|| bad("a Hub dataset path starts with hf:"))?;
    let mut parts = rest.splitn(3, '/');
    let (org, name, file) = match (parts.next(), parts.next(), parts.next()) {
        (Some(o), Some(n), Some(f)) if !f.is_empty() => (o, n, f),
        _ => return Err(bad("expected hf:ORG/NAME/path/in/repo (e.g. hf:Salesforce/wikitext/wikitext-2-raw-v1/test.txt)")),
    };
    let (name, revision) = match name.split_once('@') {
        Some((n, r)) if !r.is_empty() => (n, Some(r)),
        _ => (name, None),
    };
    let id = format!("{org}/{name}");
    if !crate::hub::is_repo_id(&id) {
        return Err(bad("ORG/NAME is not a valid Hub repo id"));
    }
    if revision.is_some_and(|r| !crate::hub::is_revision(r)) {
        return Err(bad("the @revision is not a valid branch, tag or commit"));
    }
    if file
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad(
            "the path in the repo must not contain empty, . or .. components",
        ));
    }
    Ok((
        RepoRef::new(RepoKind::Dataset, &id, revision),
        file.to_string(),
    ))
}

/// A Hugging Face `tokenizer.json`, used without truncation, padding or added special tokens.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    /// The tokenizer a checkpoint's files describe.
    pub fn load(files: &TokenizerFiles) -> Result<Self, TextError> {
        match files {
            TokenizerFiles::Json(p) => Self::from_file(p),
            TokenizerFiles::VocabMerges { vocab, merges } => Self::from_vocab_merges(vocab, merges),
        }
    }

    /// GPT-2's byte-level BPE from `vocab.json` + `merges.txt`, built as transformers'
    /// slow-to-fast conversion builds it: byte-level pre-tokenizer without a prefix space,
    /// byte-level decoder, and `<|endoftext|>` as a special token when the vocabulary has it.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self, TextError> {
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let err = |msg: String| TextError::Tokenizer {
            path: vocab.to_path_buf(),
            msg,
        };
        for p in [vocab, merges] {
            if !p.is_file() {
                return Err(TextError::Missing(p.to_path_buf()));
            }
        }
        let bpe = tokenizers::models::bpe::BPE::from_file(
            &vocab.to_string_lossy(),
            &merges.to_string_lossy(),
        )
        .build()
        .map_err(|e| err(format!("with {}: {e}", merges.display())))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.with_post_processor(Some(ByteLevel::new(true, false, true)));
        if inner.token_to_id("<|endoftext|>").is_some() {
            inner
                .add_special_tokens(vec![tokenizers::AddedToken::from("<|endoftext|>", true)])
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(Self {
            inner,
            path: vocab.to_path_buf(),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, TextError> {
        let err = |msg: String| TextError::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Token ids of `text` as one string, with no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TextError::Tokenizer {
                path: self.path.clone(),
                msg: format!("encoding failed: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TextError::Tokenizer {
                path: self.path.clone(),
                msg: format!("decoding failed: {e}"),
            })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_datasets_resolve_and_unknown_names_are_explained() {
        let wiki = read_data(Path::new("wikitext-2")).unwrap();
        assert_eq!(wiki.len(), 1_296_370);
        assert_eq!(
            read_data(Path::new("shakespeare-val")).unwrap().len(),
            111_558
        );
        let err = read_data(Path::new("no-such-set")).unwrap_err().to_string();
        assert!(
            err.contains("not a named dataset") && err.contains("wikitext-2"),
            "{err}"
        );
    }

    #[test]
    fn invalid_utf8_names_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.txt");
        std::fs::write(&p, b"hello \xff world").unwrap();
        let err = read_text(&p).unwrap_err().to_string();
        assert!(err.contains("byte offset 6"), "{err}");
        std::fs::write(&p, b"").unwrap();
        assert!(read_text(&p).unwrap_err().to_string().contains("is empty"));
        assert!(read_text(&dir.path().join("nope"))
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
    }
}
