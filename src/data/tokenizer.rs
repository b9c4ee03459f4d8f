//! [`TextTokenizer`]: the checkpoint's tokenizer — a Hugging Face `tokenizer.json`, or GPT-2's
//! byte-level BPE built from `vocab.json` + `merges.txt` — used without truncation, padding or
//! added special tokens.

use std::path::{Path, PathBuf};

use super::text::TextError;
use crate::weights::TokenizerFiles;

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
