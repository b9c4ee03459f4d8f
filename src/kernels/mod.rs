//! Fast CPU kernels for what candle does slowly or not at all on CPU. Each has a candle-ops
//! or plain-loop reference, and the tests compare the two on every instruction-set level the
//! machine running them supports.
//!
//! - [`isa`]: which level (portable, AVX2, AVX-512, AVX-512 + bf16) runs, chosen at run time.
//! - [`convert`]: f32 / bf16 / f16 slices and their conversions.
//! - [`gemm`]: `x·Wᵀ` with a fused epilogue (bias, activation, residual or gate), for many
//!   rows (packed, blocked; either operand may be stored transposed) and few (streaming, for
//!   decoding); `gemm::small`, one attention head's products.
//! - [`math`]: branch-free scalar `exp`, `tanh`, `erf`, GELUs (imports nothing from the crate).
//! - [`elementwise`]: parallel, runtime-dispatched (AVX2+FMA or baseline) maps.
//! - [`attention`]: fused causal attention with grouped-query heads; [`decode`]: its
//!   few-query form, reading the key/value cache in place.
//! - [`norm`]: LayerNorm and RMSNorm in f32 whatever the dtype.
//! - [`rope`]: rotary position embeddings on (part of) each head.
//! - [`reductions`]: log-sum-exp, KL divergence and top-1 agreement per row.

pub mod attention;
pub mod convert;
pub mod decode;
pub mod elementwise;
pub mod gemm;
pub mod isa;
pub mod math;
pub mod norm;
pub mod reductions;
pub mod rope;

pub use attention::{causal_attention, causal_attention_composed};
pub use isa::Isa;
pub use reductions::{kl_and_agreement, logsumexp_last_dim, KlRows};
