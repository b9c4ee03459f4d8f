//! gpt-ablate: load GPT-2-family checkpoints, swap the feed-forward activation at load time,
//! and measure what that does.
//!
//! Where each number comes from:
//! - [`config`]: `config.json` (Hugging Face `GPT2Config`) and what is rejected.
//! - [`checkpoint`]: finding and strictly reading safetensors weights, both key layouts.
//! - [`activation`]: the activation enum and its exact formulas; [`kernels`]: fast CPU kernels.
//! - [`layers`]: `--layers` specs and the per-layer activation plan.
//! - [`model`]: the GPT-2 forward pass; [`load`]: directory → ready model.
//! - [`text`]: dataset files and tokenizers; [`generate`]: sampling and KV-cached decoding.
//! - [`perplexity`]: sliding-window scoring; [`diagnose`]: per-layer saturation, centring,
//!   gradient norms and the sigmoid-head comparison.
//! - [`grid`]: ablation configs; [`ablation`]: the grid runner (resume, shard, merge);
//!   [`results`]: rows, JSONL/CSV, tables; [`charts`]: SVG/PNG; [`provenance`]: hashes, times.
//! - [`runtime`]: device, dtype, threads; [`cli`]: the command line.

pub mod ablation;
pub mod activation;
pub mod charts;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod diagnose;
pub mod generate;
pub mod grid;
pub mod hub;
pub mod inspect;
pub mod kernels;
pub mod layers;
pub mod load;
pub mod model;
pub mod perplexity;
pub mod provenance;
pub mod results;
pub mod runtime;
pub mod text;
