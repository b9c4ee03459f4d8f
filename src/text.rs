//! Text in, token ids out: reading a dataset file (strict UTF-8) and the checkpoint's
//! `tokenizer.json`.

use std::path::{Path, PathBuf};

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
}

/// Reads a whole text file, which must be non-empty UTF-8.
pub fn read_text(path: &Path) -> Result<String, TextError> {
    if !path.exists() {
        return Err(TextError::Missing(path.to_path_buf()));
    }
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
        text: include_str!("../data/wikitext-2-raw-test.txt"),
    },
    NamedDataset {
        name: "shakespeare-val",
        description: "the held-out last 10 % of Tiny Shakespeare (the default model's validation text)",
        licence: "public domain",
        tokens: "43,568 tokens of models/shakespeare-gpt2",
        text: include_str!("../data/shakespeare-val.txt"),
    },
];

/// Reads `--data`: an existing file, else a named dataset. Returns the text.
pub fn read_data(arg: &Path) -> Result<String, TextError> {
    if arg.exists() {
        return read_text(arg);
    }
    match NAMED_DATASETS.iter().find(|d| arg.as_os_str() == d.name) {
        Some(d) => Ok(d.text.to_string()),
        None => Err(TextError::MissingData(arg.to_path_buf())),
    }
}

/// A Hugging Face `tokenizer.json`, used without truncation, padding or added special tokens.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
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
