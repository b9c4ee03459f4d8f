//! `--calibrate` and its options, for the commands that load a swapped model and have text
//! to calibrate on.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::data::read_data;
use crate::model::load::Loaded;
use crate::train::calibrate::{calibrate, Calibration, DEFAULT_CALIBRATION_TOKENS};

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// After the swap, fit a and b per swapped layer so that a·f(h) + b has the original
    /// activation's output mean and std on a calibration text (the fits are reported).
    #[arg(long)]
    pub calibrate: bool,
    /// Calibration text (file, named dataset or hf: path); default: --data.
    #[arg(long, value_name = "FILE|NAME|hf:…", requires = "calibrate")]
    pub calibrate_data: Option<PathBuf>,
    /// Calibrate on the first N tokens of the calibration text.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CALIBRATION_TOKENS, requires = "calibrate")]
    pub calibrate_tokens: usize,
}

impl CalibrateArgs {
    /// With `--calibrate`, fits the swapped layers of `loaded` (windows of `context` tokens)
    /// and puts the calibrated activations in; `data` is the text of `--data`, used when no
    /// `--calibrate-data` is given.
    pub fn apply(
        &self,
        loaded: &mut Loaded,
        data: &str,
        context: usize,
    ) -> anyhow::Result<Option<Calibration>> {
        if !self.calibrate {
            return Ok(None);
        }
        if !loaded.model.is_swapped() {
            anyhow::bail!("--calibrate needs --activation: there is no swap to calibrate");
        }
        if self.calibrate_tokens < 2 {
            anyhow::bail!("--calibrate-tokens must be at least 2");
        }
        let (text, shown) = match &self.calibrate_data {
            Some(p) => (read_data(p)?, p.display().to_string()),
            None => (data.to_string(), "--data".to_string()),
        };
        let mut tokens = loaded
            .tokenizer
            .encode(&text)
            .with_context(|| format!("tokenizing the calibration text {shown}"))?;
        tokens.truncate(self.calibrate_tokens);
        let (plan, fits) = calibrate(&loaded.model, &tokens, context)
            .with_context(|| format!("calibrating on {shown}"))?;
        loaded.model = loaded.model.with_plan(plan);
        Ok(Some(fits))
    }
}
