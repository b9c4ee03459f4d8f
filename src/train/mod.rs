//! Changing weights, not just measuring them: calibrated swaps and training.
//!
//! - [`calibrate`]: `--calibrate`, per-layer `a·f(h) + b` fitted to the original
//!   activation's output mean and std.
//! - [`run`]: `gpt-ablate train` — from scratch ([`scratch`], [`init`]) or from a checkpoint
//!   after a swap ([`origin`]); [`settings`], [`data`] (the batch order), [`step`] (loss,
//!   gradients, [`optim`]: AdamW and clipping; [`schedule`]), [`params`] (the trainable
//!   copy of a model), evaluation, [`log`], [`checkpoint`]s as Hugging Face directories
//!   ([`hf_dir`]) with resume, [`manifest`], [`charts`], [`progress`]; `--out` is locked
//!   with [`crate::fsio::lock::DirLock`].
//! - [`rng`]: the seeded generator behind initial weights and data order.

pub mod calibrate;
pub mod charts;
pub mod checkpoint;
pub mod data;
pub mod hf_dir;
pub mod init;
pub mod log;
pub mod manifest;
pub mod optim;
pub mod origin;
pub mod params;
pub mod progress;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod scratch;
pub mod settings;
pub mod step;
