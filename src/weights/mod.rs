//! A checkpoint on disk: finding its files (a local directory, or a Hub repo fetched into the
//! cache by [`crate::hub`]), reading its tensors strictly — safetensors (single file or
//! sharded) or PyTorch `pytorch_model.bin` — and handing the model each tensor by its GPT-2
//! key with the shape checked.
//!
//! Safetensors are read with plain file reads straight into their final buffers — no mmap — so
//! peak memory stays close to the size of the weights. Keys are normalised to the bare
//! layout of `openai-community/gpt2` (`h.0.attn.c_attn.weight`); the `transformer.`-prefixed
//! layout written by `save_pretrained` is accepted too and errors quote keys as stored.
//!
//! - `files`: [`ModelSpec`], [`CheckpointFiles`] and the choice of config, tokenizer and weights.
//! - `safetensors`, `pth`: the two weight file readers.
//! - `store`: [`TensorStore`], the key layout and the strict hand-out of tensors.
//! - `error`: [`LoadError`].

mod error;
mod files;
mod pth;
mod safetensors;
mod store;

pub use error::LoadError;
pub use files::{CheckpointFiles, ModelSource, ModelSpec, TokenizerFiles, WeightFormat};
pub use store::TensorStore;
