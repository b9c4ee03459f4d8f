//! Ablation grids: the TOML config, the runner (resume, shard, merge), results and charts.

pub mod charts;
pub mod config;
pub mod results;
pub mod runner;
