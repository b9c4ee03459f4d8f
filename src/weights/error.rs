//! [`LoadError`]: why a checkpoint cannot be loaded, naming the file or key at fault.

use std::path::PathBuf;

/// Why a checkpoint cannot be loaded. Every variant names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model {0}: no such directory, and not a Hub repo id (name or org/name)")]
    NoDir(String),
    #[error(
        "model {0} is a file; pass the checkpoint directory (config.json, weights, tokenizer)"
    )]
    NotADir(PathBuf),
    #[error("{place}: no {what} found")]
    MissingFile { place: String, what: &'static str },
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{path}: not a readable PyTorch checkpoint (zip format, torch >= 1.6): {msg}")]
    Pickle { path: PathBuf, msg: String },
    #[error(
        "{path}: file is truncated: tensor '{key}' ends at byte {need} but the file has {have}"
    )]
    Truncated {
        path: PathBuf,
        key: String,
        need: u64,
        have: u64,
    },
    #[error("{path}: {msg}")]
    ShardIndex { path: PathBuf, msg: String },
    #[error("checkpoint is missing tensor '{key}' (expected shape {expected:?})")]
    MissingKey { key: String, expected: Vec<usize> },
    #[error("tensor '{key}' has shape {found:?}, expected {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor '{key}' has dtype {dtype}; only F32, F16, BF16 and F64 weights are supported")]
    Dtype { key: String, dtype: String },
    #[error("tensor '{key}' appears twice in the checkpoint")]
    Duplicate { key: String },
    #[error("checkpoint has {count} unexpected tensor(s), e.g. '{first}' (does config.json match the weights?)")]
    Unexpected { count: usize, first: String },
    #[error("{msg}")]
    Config { msg: String },
    #[error("loading tensor '{key}': {cause}")]
    Candle {
        key: String,
        cause: candle_core::Error,
    },
}
