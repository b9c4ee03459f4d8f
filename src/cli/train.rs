//! `gpt-ablate train`: train from scratch or fine-tune after a swap.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{ArgGroup, Args};

use super::args::DATA_HELP;
use super::output::print_json;
use crate::model::activation::Activation;
use crate::model::plan::{ActivationMap, LayerSpec};
use crate::runtime::{self, DeviceSpec, Precision};
use crate::train::origin::Start;
use crate::train::run::{train, TrainSpec, TrainSummary};
use crate::train::settings::{SettingsError, TrainOptions};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("start").required(true).args(["init", "from_scratch"])))]
pub struct TrainArgs {
    /// Checkpoint to fine-tune (directory or Hub id); with --activation, recovery
    /// fine-tuning after a load-time swap.
    #[arg(long, value_name = "DIR|ID")]
    pub init: Option<String>,
    /// Hub revision of --init.
    #[arg(long, value_name = "REV", requires = "init")]
    pub revision: Option<String>,
    /// Train new weights: architecture, sizes, tokenizer and activation from a TOML file.
    #[arg(long, value_name = "CONFIG.toml")]
    pub from_scratch: Option<PathBuf>,
    /// Training text.
    #[arg(long, value_name = "FILE|NAME|hf:…", help = DATA_HELP)]
    pub data: PathBuf,
    /// Held-out text for the evaluations (default: the last 10 % of --data's tokens, which are
    /// then not trained on).
    #[arg(long, value_name = "FILE|NAME|hf:…")]
    pub eval_data: Option<PathBuf>,
    /// Activation to put in the MLPs before training (default: the model's own).
    #[arg(long, value_name = "NAME")]
    pub activation: Option<Activation>,
    /// Layers to swap: `all`, or indices and ranges such as `0,3,5-7`.
    #[arg(long, value_name = "SPEC", default_value = "all")]
    pub layers: LayerSpec,
    /// Calibrate the swap first (a·f(h) + b per layer, fitted on the first 4,096 training
    /// tokens, as perplexity --calibrate), then train.
    #[arg(long)]
    pub calibrate: bool,
    /// Optimizer steps.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub steps: usize,
    /// Sequences per micro-batch.
    #[arg(long, value_name = "B", default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per sequence (default: the model's n_positions, at most 1024).
    #[arg(long, value_name = "T")]
    pub seq_len: Option<usize>,
    /// Peak learning rate (default: 1e-3 from scratch, 1e-4 with --init).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Linear warm-up steps before the cosine decay (default: steps/10, at most 100).
    #[arg(long, value_name = "N")]
    pub warmup: Option<usize>,
    /// AdamW weight decay (not on biases, norms and embeddings).
    #[arg(long, value_name = "W", default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, value_name = "C", default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub accumulate: usize,
    /// AdamW β1 (first-moment decay).
    #[arg(long, value_name = "B1", default_value_t = 0.9)]
    pub beta1: f64,
    /// AdamW β2 (second-moment decay).
    #[arg(long, value_name = "B2", default_value_t = 0.95)]
    pub beta2: f64,
    /// AdamW ε (added to the second-moment root).
    #[arg(long, value_name = "EPS", default_value_t = 1e-8)]
    pub eps: f64,
    /// Held-out perplexity every N steps (default: steps/10); always before and after.
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Evaluation windows, as perplexity --context (default: the model's n_positions).
    #[arg(long, value_name = "N")]
    pub eval_context: Option<usize>,
    /// Evaluation stride, as perplexity --stride (default: eval context / 2).
    #[arg(long, value_name = "N")]
    pub eval_stride: Option<usize>,
    /// Evaluate on the first N held-out tokens only (default: all).
    #[arg(long, value_name = "N")]
    pub eval_tokens: Option<usize>,
    /// A checkpoint every N steps (default: --eval-every; 0: only final/).
    #[arg(long, value_name = "N")]
    pub save_every: Option<usize>,
    /// Seed of the data order (and of the initial weights from scratch).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Training precision (f32 only: weights and optimizer moments are kept in f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// CPU threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Output directory: log.jsonl, checkpoint-<step>/, final/, charts, manifest.json. Running
    /// the same command again resumes.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print one JSON object at the end.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(args: TrainArgs) -> anyhow::Result<()> {
    runtime::set_threads(args.threads)?;
    runtime::on_pool(move || run_on_pool(args))
}

/// [`run`] once the threads are set, on a thread of the pool.
fn run_on_pool(args: TrainArgs) -> anyhow::Result<()> {
    if args.dtype != Precision::F32 {
        anyhow::bail!("--dtype {}: training runs in f32 (weights and AdamW moments are kept in f32); score a trained checkpoint in {} with perplexity --dtype", args.dtype, args.dtype);
    }
    if args.calibrate && args.activation.is_none() {
        anyhow::bail!("--calibrate needs --activation (a swap to calibrate)");
    }
    if args.activation.is_none() && args.layers != LayerSpec::All {
        anyhow::bail!("--layers needs --activation (which activation to put in those layers)");
    }
    let spec = spec(&args)?;
    let summary = train(&spec).map_err(flag_names)?;
    if args.json {
        print_json(&summary)
    } else {
        print_summary(&summary);
        Ok(())
    }
}

fn spec(args: &TrainArgs) -> anyhow::Result<TrainSpec> {
    let start = match (&args.init, &args.from_scratch) {
        (Some(model), _) => Start::Init {
            model: model.clone(),
            revision: args.revision.clone(),
        },
        (None, Some(path)) => Start::Scratch(path.clone()),
        (None, None) => anyhow::bail!("give --init DIR|ID or --from-scratch CONFIG.toml"),
    };
    Ok(TrainSpec {
        start,
        swap: args
            .activation
            .map(|a| ActivationMap(vec![(args.layers.clone(), a)])),
        calibrate: args.calibrate,
        data: args.data.clone(),
        eval_data: args.eval_data.clone(),
        options: TrainOptions {
            steps: args.steps,
            batch_size: args.batch_size,
            seq_len: args.seq_len,
            accumulate: args.accumulate,
            lr: args.lr,
            warmup: args.warmup,
            weight_decay: args.weight_decay,
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.eps,
            grad_clip: args.grad_clip,
            seed: args.seed,
            eval_every: args.eval_every,
            eval_context: args.eval_context,
            eval_stride: args.eval_stride,
            eval_tokens: args.eval_tokens,
            save_every: args.save_every,
        },
        device: args.device.open()?,
        device_name: args.device.to_string(),
        threads: runtime::threads(),
        out: args.out.clone(),
        terminal: std::io::stderr().is_terminal(),
        command: std::env::args().collect(),
    })
}

/// A settings error names the flag (`seq_len` → `--seq-len`).
fn flag_names(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<SettingsError>() {
        Some(s) => anyhow::anyhow!("--{} {}", s.field.replace('_', "-"), s.msg),
        None => e,
    }
}

fn print_summary(s: &TrainSummary) {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    if let Some(step) = s.resumed_from {
        println!("resumed      from step {step}");
    }
    println!(
        "activation   {} ({} parameters)",
        s.activation, s.parameters
    );
    println!(
        "steps        {} ({} tokens, {:.0} tokens/s)",
        s.steps, s.tokens_seen, s.tokens_per_second
    );
    println!("final loss   {}", opt(s.final_loss));
    println!(
        "held-out     perplexity {} before, {} after",
        opt(s.eval_perplexity_before),
        opt(s.eval_perplexity_after)
    );
    println!("model        {}", s.final_dir);
    println!("log          {}", s.log);
}
