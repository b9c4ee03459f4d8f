//! gpt-ablate: load GPT-style checkpoints, swap the feed-forward activation at load time,
//! and measure what that does.
//!
//! The folders name the architecture:
//! - [`model`]: the [`model::CausalLm`] interface, the registry keyed on `config.json`'s
//!   `model_type`, the activation plan, shared blocks, and one folder per family.
//! - [`kernels`]: fast CPU kernels (scalar maths, elementwise maps, attention, reductions).
//! - [`weights`]: checkpoint files and the strict tensor store; [`hub`]: the Hugging Face Hub.
//! - [`data`]: text files, named datasets, tokenizers.
//! - [`eval`]: windows, scoring, perplexity, diagnose, generation.
//! - [`grid`]: ablation configs, the runner, results, charts.
//! - [`train`]: calibrated swaps, training from scratch and recovery fine-tuning.
//! - [`cli`]: the command line; [`runtime`]: device, dtype, threads; [`provenance`]: hashes.
//! - [`fsio`]: output-directory locks, atomic writes, bounded reads; [`progress`]: progress
//!   bars on a terminal and progress lines in logs.

pub mod cli;
pub mod data;
pub mod eval;
pub mod fsio;
pub mod grid;
pub mod hub;
pub mod kernels;
pub mod model;
pub mod progress;
pub mod provenance;
pub mod runtime;
pub mod train;
pub mod weights;
