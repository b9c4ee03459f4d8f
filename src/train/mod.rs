//! Changing weights, not just measuring them: fitting calibrated swaps ([`calibrate`]).
//!
//! - [`calibrate`]: `--calibrate`, per-layer `a·f(h) + b` fitted to the original
//!   activation's output mean and std.

pub mod calibrate;
pub mod data;
pub mod hf_dir;
pub mod optim;
pub mod params;
pub mod rng;
pub mod schedule;
pub mod step;
