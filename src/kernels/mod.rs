//! Fast CPU kernels for what candle does slowly or not at all on CPU. Each has a candle-ops
//! fallback for other devices, and the tests compare the two.
//!
//! - [`math`]: branch-free scalar `exp`, `tanh`, `erf`, GELUs (imports nothing from the crate).
//! - [`elementwise`]: parallel, runtime-dispatched (AVX2+FMA or baseline) maps.
//! - [`attention`]: fused causal attention with grouped-query heads.
//! - [`rope`]: rotary position embeddings on (part of) each head.
//! - [`reductions`]: log-sum-exp, KL divergence and top-1 agreement per row.

pub mod attention;
pub mod elementwise;
pub mod math;
pub mod reductions;
pub mod rope;

pub use attention::{causal_attention, causal_attention_composed};
pub use reductions::{kl_and_agreement, logsumexp_last_dim};
