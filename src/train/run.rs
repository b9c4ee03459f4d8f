//! `gpt-ablate train`: a run in an output directory — lock it, check that it is the same run
//! (or start one), resume from the newest complete checkpoint, train step by step with a
//! flushed log line per step, evaluate and checkpoint on schedule, and finish with `final/`,
//! charts and the manifest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::eval::perplexity::{perplexity, PplOptions};
use crate::model::decoder::Decoder;
use crate::model::plan::{ActivationMap, ActivationPlan};
use crate::model::CausalLm;
use crate::provenance;
use crate::train::calibrate::{calibrate, Calibration, DEFAULT_CALIBRATION_TOKENS};
use crate::train::charts::training_charts;
use crate::train::checkpoint::{self, Snapshot, TrainerState, FINAL};
use crate::train::data::Batches;
use crate::train::hf_dir::load_decoder;
use crate::train::init::Init;
use crate::train::log::{append_log, truncate_log, LogRecord};
use crate::train::manifest::{check_identity, Identity, TrainManifest};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::origin::{Origin, Start, Texts};
use crate::train::params::Trainable;
use crate::train::progress::Progress;
use crate::train::schedule::Schedule;
use crate::train::settings::{TrainOptions, TrainSettings};
use crate::train::step::Trainer;
use crate::weights::{CheckpointFiles, TensorStore};

/// A training run as asked for.
pub struct TrainSpec {
    pub start: Start,
    /// Activations to put in before training (`None`: the model's own).
    pub swap: Option<ActivationMap>,
    /// Calibrate the swap (as `--calibrate`) on the first 4,096 training tokens first.
    pub calibrate: bool,
    pub data: PathBuf,
    pub eval_data: Option<PathBuf>,
    pub options: TrainOptions,
    pub device: Device,
    pub device_name: String,
    pub threads: usize,
    pub out: PathBuf,
    /// Redraw a progress line (stderr is a terminal).
    pub terminal: bool,
    pub command: Vec<String>,
}

/// What the run has done, from its log (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub out: String,
    pub final_dir: String,
    pub steps: usize,
    pub final_loss: Option<f64>,
    pub eval_perplexity_before: Option<f64>,
    pub eval_perplexity_after: Option<f64>,
    /// Training tokens per second over every step of the run (resumed parts included).
    pub tokens_per_second: f64,
    pub tokens_seen: u64,
    pub parameters: usize,
    pub activation: String,
    pub calibration: Option<Calibration>,
    /// Steps done before this invocation, when it resumed.
    pub resumed_from: Option<usize>,
    pub log: String,
    pub charts: Vec<String>,
}

/// A run in progress.
struct Run<'a> {
    spec: &'a TrainSpec,
    origin: Origin,
    settings: TrainSettings,
    texts: Texts,
    trainer: Trainer,
    manifest: TrainManifest,
    log: Vec<LogRecord>,
}

/// Runs (or resumes, or only reports) the training `spec` describes.
pub fn train(spec: &TrainSpec) -> anyhow::Result<TrainSummary> {
    let _lock = crate::fsio::lock::DirLock::create_and_acquire(&spec.out)?;
    let origin = Origin::resolve(&spec.start)?;
    let scratch = matches!(spec.start, Start::Scratch(_));
    let settings = spec.options.resolve(&origin.config.info, scratch)?;
    let plan = origin.plan(spec.swap.as_ref())?;
    let vocab = origin.config.info.vocab_size;
    let texts = Texts::load(
        &spec.data,
        spec.eval_data.as_deref(),
        &origin.tokenizer,
        vocab,
    )?;
    let identity = Identity {
        start: origin.kind.to_string(),
        start_sha256: origin.sha256.clone(),
        per_layer: plan.per_layer.iter().map(|a| a.name()).collect(),
        calibrate: spec.calibrate,
        train: texts.train_info.clone(),
        eval: texts.eval_info.clone(),
        settings: settings.clone(),
    };
    check_identity(&spec.out, &identity)?;
    checkpoint::remove_partial(&spec.out)?;
    let resume = checkpoint::latest(&spec.out)?;
    let (trainer, calibration) = match &resume {
        Some((dir, state)) => (
            resumed_trainer(&origin, &settings, dir, state, &spec.device)?,
            None,
        ),
        None => new_trainer(spec, &origin, &settings, plan, &texts)?,
    };
    let manifest = manifest(spec, &origin, &trainer, identity, calibration, &resume)?;
    let log = truncate_log(&spec.out.join("log.jsonl"), trainer.step)?;
    let mut run = Run {
        spec,
        origin,
        settings,
        texts,
        trainer,
        manifest,
        log,
    };
    let resumed_from = resume.map(|(_, s)| s.step);
    run.train_steps()?;
    run.finish(resumed_from)
}

/// The trainer of a new run: the starting weights with the plan (calibrated if asked).
fn new_trainer(
    spec: &TrainSpec,
    origin: &Origin,
    settings: &TrainSettings,
    plan: ActivationPlan,
    texts: &Texts,
) -> anyhow::Result<(Trainer, Option<Calibration>)> {
    let mut decoder = match &origin.files {
        Some(files) => load_decoder(files, &origin.config, plan, &spec.device)?,
        None => {
            let init = Init {
                seed: settings.seed,
                std: origin.init_std,
                gpt2_layers: (origin.config.info.model_type == "gpt2")
                    .then_some(origin.config.info.n_layer),
            };
            let mut store =
                TensorStore::generated(init.maker(), candle_core::DType::F32, &spec.device);
            origin.config.arch.build(plan, &mut store)?
        }
    };
    let mut calibration = None;
    if spec.calibrate {
        if decoder.plan.swapped_layers().is_empty() {
            anyhow::bail!("calibrate needs an activation swap to calibrate");
        }
        let n = texts.train.len().min(DEFAULT_CALIBRATION_TOKENS);
        let context = settings.seq_len.min(origin.config.info.n_positions);
        let (plan, fits) = calibrate(&decoder, &texts.train[..n], context)
            .context("calibrating on the training text")?;
        set_plan(&mut decoder, plan);
        calibration = Some(fits);
    }
    Ok((trainer_for(&decoder, settings)?, calibration))
}

/// `d` with the activation of each layer set from `plan`.
fn set_plan(d: &mut Decoder, plan: ActivationPlan) {
    for (block, &act) in d.blocks.iter_mut().zip(&plan.per_layer) {
        block.ffn.set_activation(act);
    }
    d.plan = plan;
}

fn trainer_for(decoder: &Decoder, s: &TrainSettings) -> anyhow::Result<Trainer> {
    let tr = Trainable::new(decoder)?;
    let config = AdamWConfig {
        beta1: s.beta1,
        beta2: s.beta2,
        eps: s.eps,
        weight_decay: s.weight_decay,
    };
    let opt = AdamW::new(config, &tr.params)?;
    Ok(Trainer {
        tr,
        opt,
        schedule: Schedule {
            lr: s.lr,
            warmup: s.warmup,
            steps: s.steps,
        },
        grad_clip: s.grad_clip,
        step: 0,
    })
}

/// The trainer of a run resumed from a checkpoint directory.
fn resumed_trainer(
    origin: &Origin,
    settings: &TrainSettings,
    dir: &Path,
    state: &TrainerState,
    device: &Device,
) -> anyhow::Result<Trainer> {
    let files = CheckpointFiles::locate(dir)?;
    let config = crate::model::ModelConfig::from_file(&files.config)?;
    // The same architecture; the activation is the checkpoint's (it holds the run's plan).
    let same = crate::model::ModelInfo {
        activation: origin.config.info.activation,
        ..config.info.clone()
    };
    if same != origin.config.info {
        anyhow::bail!(
            "{}: the checkpoint's config does not match the run's model",
            dir.display()
        );
    }
    let decoder = load_decoder(&files, &config, config.plan(), device)?;
    let mut trainer = trainer_for(&decoder, settings)?;
    checkpoint::load_optimizer(dir, &mut trainer, state)?;
    Ok(trainer)
}

fn manifest(
    spec: &TrainSpec,
    origin: &Origin,
    trainer: &Trainer,
    identity: Identity,
    calibration: Option<Calibration>,
    resume: &Option<(PathBuf, TrainerState)>,
) -> anyhow::Result<TrainManifest> {
    let plan = &trainer.tr.model.plan;
    let old: Option<serde_json::Value> = std::fs::read_to_string(spec.out.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let field = |k: &str| old.as_ref().and_then(|o| o.get(k)).cloned();
    let mut resumed_from: Vec<usize> = field("resumed_from")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    resumed_from.extend(resume.as_ref().map(|(_, s)| s.step));
    Ok(TrainManifest {
        tool: "gpt-ablate",
        version: provenance::VERSION,
        git_commit: provenance::git_commit(),
        command: spec.command.clone(),
        started_at: field("started_at")
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(provenance::now_rfc3339),
        finished_at: None,
        source: origin.source.clone(),
        model_type: origin.config.info.model_type.clone(),
        parameters: trainer.tr.parameter_count(),
        activation: plan.describe(),
        per_layer: plan.per_layer.iter().map(|a| a.name()).collect(),
        calibration: calibration
            .or_else(|| field("calibration").and_then(|v| serde_json::from_value(v).ok())),
        identity,
        device: spec.device_name.clone(),
        threads: spec.threads,
        steps_done: trainer.step,
        resumed_from,
        checkpoints: field("checkpoints")
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
    })
}

impl Run<'_> {
    fn log_path(&self) -> PathBuf {
        self.spec.out.join("log.jsonl")
    }

    /// Held-out perplexity and mean NLL of the model as it is now.
    fn evaluate(&self) -> anyhow::Result<(f64, f64)> {
        let s = &self.settings;
        let n = s
            .eval_tokens
            .unwrap_or(usize::MAX)
            .min(self.texts.eval.len());
        let opts = PplOptions {
            context: s.eval_context,
            stride: s.eval_stride,
            batch_size: 8,
        };
        let model: &dyn CausalLm = &self.trainer.tr.model;
        let r = perplexity(model, &self.texts.eval[..n], &opts, &mut |_, _| {})
            .context("evaluating on the held-out text")?;
        Ok((r.perplexity, r.mean_nll))
    }

    /// Every step left, with its log line, evaluations and checkpoints.
    fn train_steps(&mut self) -> anyhow::Result<()> {
        let s = self.settings.clone();
        let progress = Progress::new(self.spec.terminal, self.trainer.step, s.steps);
        if self.trainer.step == 0 && self.log.is_empty() {
            self.evaluate_before(&progress)?;
        }
        let mut batches = Batches::new(
            self.texts.train.clone(),
            s.seq_len,
            s.batch_size,
            s.accumulate,
            s.seed,
        )?;
        let mut tokens_seen = self.tokens_seen();
        while self.trainer.step < s.steps {
            let step = self.trainer.step;
            let micro = (0..s.accumulate)
                .map(|k| {
                    let ids = batches.micro_batch(step, k);
                    Tensor::from_vec(ids, (s.batch_size, s.seq_len + 1), &self.spec.device)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let t0 = Instant::now();
            let r = self.trainer.step(&micro)?;
            let seconds = t0.elapsed().as_secs_f64();
            tokens_seen += batches.tokens_per_step() as u64;
            let done = step + 1;
            let mut rec = LogRecord {
                step: done,
                loss: Some(r.loss),
                lr: Some(r.lr),
                grad_norm: Some(r.grad_norm),
                tokens_seen: Some(tokens_seen),
                seconds: Some(seconds),
                tokens_per_second: Some(batches.tokens_per_step() as f64 / seconds.max(1e-9)),
                layers: r.layers,
                ..LogRecord::default()
            };
            progress.step(done, r.loss, rec.tokens_per_second.unwrap_or(0.0));
            if done == s.steps || (s.eval_every > 0 && done.is_multiple_of(s.eval_every)) {
                let (ppl, nll) = self.evaluate()?;
                progress.eval(done, ppl);
                (rec.eval_perplexity, rec.eval_mean_nll) = (Some(ppl), Some(nll));
            }
            self.record(rec)?;
            if done == s.steps {
                self.save(FINAL, tokens_seen)?;
            } else if s.save_every > 0 && done.is_multiple_of(s.save_every) {
                self.save(&checkpoint::checkpoint_name(done), tokens_seen)?;
            }
        }
        progress.clear();
        Ok(())
    }

    /// The step-0 line: the held-out perplexity before training.
    fn evaluate_before(&mut self, progress: &Progress) -> anyhow::Result<()> {
        let (ppl, nll) = self.evaluate()?;
        progress.eval(0, ppl);
        self.record(LogRecord {
            step: 0,
            eval_perplexity: Some(ppl),
            eval_mean_nll: Some(nll),
            tokens_seen: Some(0),
            ..LogRecord::default()
        })
    }

    fn tokens_seen(&self) -> u64 {
        self.log
            .iter()
            .rev()
            .find_map(|r| r.tokens_seen)
            .unwrap_or(0)
    }

    fn record(&mut self, rec: LogRecord) -> anyhow::Result<()> {
        append_log(&self.log_path(), &rec)?;
        self.log.push(rec);
        Ok(())
    }

    /// Writes a checkpoint, then the manifest and charts that go with it.
    fn save(&mut self, name: &str, tokens_seen: u64) -> anyhow::Result<()> {
        let snapshot = Snapshot {
            config: &self.origin.config,
            config_json: &self.origin.config_json,
            trainer: &self.trainer,
            tokenizer: &self.origin.tokenizer,
            state: TrainerState {
                step: self.trainer.step,
                steps: self.settings.steps,
                tokens_seen,
            },
        };
        checkpoint::write_checkpoint(&self.spec.out, name, &snapshot)?;
        self.manifest.steps_done = self.trainer.step;
        if !self.manifest.checkpoints.iter().any(|c| c == name) {
            self.manifest.checkpoints.push(name.to_string());
        }
        self.charts()?;
        self.manifest.write(&self.spec.out)
    }

    fn charts(&self) -> anyhow::Result<Vec<String>> {
        let what = format!(
            "{} {}",
            self.origin.config.info.model_type,
            self.trainer.tr.model.plan.describe()
        );
        let mut files = Vec::new();
        for chart in training_charts(&self.log, &what) {
            files.extend(chart.write(&self.spec.out)?);
        }
        Ok(files.iter().map(|p| p.display().to_string()).collect())
    }

    fn finish(mut self, resumed_from: Option<usize>) -> anyhow::Result<TrainSummary> {
        let charts = self.charts()?;
        self.manifest.finished_at = Some(provenance::now_rfc3339());
        self.manifest.steps_done = self.trainer.step;
        self.manifest.write(&self.spec.out)?;
        let steps: Vec<&LogRecord> = self.log.iter().filter(|r| r.loss.is_some()).collect();
        // Tokens per step is constant: tokens/s of the run = Σ tokens / Σ seconds.
        let seconds: f64 = steps.iter().filter_map(|r| r.seconds).sum();
        let tokens = (self.settings.batch_size
            * self.settings.seq_len
            * self.settings.accumulate
            * steps.len()) as f64;
        let evals: Vec<f64> = self.log.iter().filter_map(|r| r.eval_perplexity).collect();
        Ok(TrainSummary {
            out: self.spec.out.display().to_string(),
            final_dir: self.spec.out.join(FINAL).display().to_string(),
            steps: self.trainer.step,
            final_loss: steps.last().and_then(|r| r.loss),
            eval_perplexity_before: self
                .log
                .iter()
                .find(|r| r.step == 0)
                .and_then(|r| r.eval_perplexity),
            eval_perplexity_after: evals.last().copied(),
            tokens_per_second: tokens / seconds.max(1e-9),
            tokens_seen: self.tokens_seen(),
            parameters: self.trainer.tr.parameter_count(),
            activation: self.trainer.tr.model.plan.describe(),
            calibration: self.manifest.calibration.clone(),
            resumed_from,
            log: self.log_path().display().to_string(),
            charts,
        })
    }
}
