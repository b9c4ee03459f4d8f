//! Ablation grids: a TOML config ([`config`]) expands into cells ([`cells`]), one per
//! model × dataset × variant; the [`runner`] scores them into an output directory (rows as
//! [`results`], `manifest.json`, [`charts`]), resuming and sharding; [`mod@merge`] combines
//! shards and [`table`] prints rows on stdout.
//!
//! Private: `inputs` reads and hashes what a run needs before computing anything, `score`
//! scores one cell, `manifest` is the manifest's shape, `progress` the progress line.
//!
//! Grids that train: [`training`] (the `[train]` table, a cell's training run and its
//! account in the row); [`scratch`] and [`scratch_run`], from-scratch comparisons.

pub mod cells;
pub mod charts;
pub mod config;
mod finetune;
mod inputs;
mod manifest;
pub mod merge;
mod progress;
pub mod results;
pub mod runner;
mod score;
pub mod scratch;
pub mod scratch_run;
pub mod table;
pub mod training;

pub use cells::{Cell, Shard};
pub use config::{Grid, GridError, SortOrder, Variant};
pub use merge::merge;
pub use runner::{run, RunSettings, RunSummary};
