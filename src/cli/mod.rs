//! The command line: one `*Args` struct per subcommand and the `run` function each calls.
//! Parsing and printing live here; the numbers come from the library modules.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::data::{read_data, NAMED_DATASETS};
use crate::eval::generate::{
    generate, unescape_stop, Generation, SamplingParams, StopReason, StopRules,
};
use crate::eval::perplexity::{perplexity, PplOptions};
use crate::grid::runner::{self, RunSettings};
use crate::grid::{results, table, Grid, Shard, SortOrder};
use crate::model::activation::Activation;
use crate::model::load::{load_files, LoadOptions};
use crate::model::plan::{format_indices, LayerSpec};
use crate::provenance;
use crate::runtime::{self, DeviceSpec, Precision};
use crate::weights::CheckpointFiles;

/// Swap the feed-forward activation of GPT-2-family checkpoints at load time and measure
/// what it costs.
#[derive(Debug, Parser)]
#[command(name = "gpt-ablate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Next-token perplexity (softmax outputs) of a checkpoint on a text file.
    #[command(after_long_help = PERPLEXITY_EXAMPLE)]
    Perplexity(PerplexityArgs),
    /// Run an ablation grid from a TOML config: every variant against the baseline, with
    /// perplexity, KL divergence and top-1 agreement; resumable and shardable.
    #[command(after_long_help = RUN_EXAMPLE)]
    Run(RunArgs),
    /// Per-layer diagnostics for the note's claims: saturation and |f′| (1), mean activation
    /// (2), gradient norms by depth (1), softmax vs sigmoid at the head (4).
    #[command(after_long_help = DIAGNOSE_EXAMPLE)]
    Diagnose(DiagnoseArgs),
    /// Generate text with a (swapped) model: KV cache, greedy or sampled, streamed.
    #[command(after_long_help = GENERATE_EXAMPLE)]
    Generate(GenerateArgs),
    /// List the named datasets `--data` accepts besides file paths.
    Datasets,
    /// Describe a checkpoint (local directory or Hub id) without loading it: config,
    /// parameters, dtypes, key layout, files with sizes and SHA-256.
    #[command(after_long_help = INSPECT_EXAMPLE)]
    Inspect(InspectArgs),
    /// Combine the output directories of `run --shard` into one result set.
    #[command(after_long_help = MERGE_EXAMPLE)]
    Merge(MergeArgs),
}

const INSPECT_EXAMPLE: &str = "\
Examples:
  gpt-ablate inspect --model models/shakespeare-gpt2
  gpt-ablate inspect --model openai-community/gpt2 --revision main --json
Hub ids use the Hugging Face cache and environment: HF_HOME, HF_HUB_CACHE, HF_TOKEN,
HF_ENDPOINT, HF_HUB_OFFLINE=1 (cache only).";

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub source: ModelRefArgs,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
}

const RUN_EXAMPLE: &str = "\
Examples:
  gpt-ablate run configs/default.toml
  gpt-ablate run configs/gpt2.toml --out runs/gpt2 --device cuda
  gpt-ablate run configs/gpt2.toml --out runs/gpt2-shard0 --shard 0/4

Re-running with the same --out resumes: finished cells are skipped.
Settings: command-line flag > environment (GPT_ABLATE_DEVICE, GPT_ABLATE_DTYPE,
GPT_ABLATE_THREADS) > config file > default.";

const GENERATE_EXAMPLE: &str = "\
Examples:
  gpt-ablate generate --model models/shakespeare-gpt2 --prompt 'ROMEO:' --seed 1
  gpt-ablate generate --model models/shakespeare-gpt2 --prompt 'ROMEO:' \\
      --activation sigmoid --compare --temperature 0
  echo 'KING HENRY:' | gpt-ablate generate --model DIR --prompt-file - --stop '\\n\\n' --json

Generation stops at --max-new-tokens, at <|endoftext|> (unless --ignore-eos), at a --stop
string (not printed), or when the model's context (n_positions) is full.";

const DIAGNOSE_EXAMPLE: &str = "\
Examples:
  gpt-ablate diagnose --model models/shakespeare-gpt2 --data data/shakespeare-val.txt \\
      --activation sigmoid --max-tokens 4096 --out runs/diagnose-sigmoid
  gpt-ablate diagnose --model DIR --data FILE --json

With --activation, the original model is diagnosed too and the report compares them.
Windows are non-overlapping; statistics cover every position, window and MLP unit.";

const MERGE_EXAMPLE: &str = "\
Example:
  gpt-ablate merge runs/gpt2-shard0 runs/gpt2-shard1 --out runs/gpt2";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Grid config (TOML); relative paths inside it are relative to the file.
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// Output directory (default: runs/<UTC timestamp>). Reuse it to resume.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run only cells whose index ≡ K (mod N), e.g. 0/4.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Compute device: cpu, cuda, cuda:N or metal (overrides the config).
    #[arg(long, value_name = "DEVICE", env = "GPT_ABLATE_DEVICE")]
    pub device: Option<DeviceSpec>,
    /// Compute precision (overrides the config).
    #[arg(long, value_enum, env = "GPT_ABLATE_DTYPE")]
    pub dtype: Option<Precision>,
    /// CPU threads (overrides the config).
    #[arg(long, value_name = "N", env = "GPT_ABLATE_THREADS")]
    pub threads: Option<usize>,
    /// Print the result rows as one JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Check the config and list its cells (and shard assignment), computing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--data` of the commands that score text.
const DATA_HELP: &str = "UTF-8 text or .jsonl file, a named dataset (wikitext-2, shakespeare-val) \
    or hf:ORG/NAME/path (a file of a Hub dataset repo); tokenized as one string without special \
    tokens.";

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_name = "FILE|NAME|hf:…", help = DATA_HELP)]
    pub data: PathBuf,
    /// Tokens per (non-overlapping) window (default: the model's n_positions).
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// Use only the first N tokens of the text.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Also write diagnose.json and charts (SVG, PNG) to this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, value_name = "TEXT", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(
        long,
        value_name = "T",
        default_value_t = 0.8,
        allow_negative_numbers = true
    )]
    pub temperature: f64,
    /// Sample among the K most likely tokens (0 = all).
    #[arg(long, value_name = "K", default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of tokens with probability ≥ P, in (0, 1].
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.95,
        allow_negative_numbers = true
    )]
    pub top_p: f64,
    /// Penalise tokens seen in the last --repeat-last-n positions (1 = off).
    #[arg(
        long,
        value_name = "X",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub repeat_penalty: f32,
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: from the clock, printed at the end).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Stop before this string (escapes \\n \\t \\r \\\\ \\" \\u{HEX}); repeatable.
    #[arg(long, value_name = "STRING")]
    pub stop: Vec<String>,
    /// Do not stop at the end-of-text token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Generate with the original and the swapped model from the same seed, side by side.
    #[arg(long, requires = "activation")]
    pub compare: bool,
    /// Print one JSON object (prompt, completion, token ids, timings) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Output directories of the shards.
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where to write the merged results.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print the merged rows as one JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
}

const PERPLEXITY_EXAMPLE: &str = "\
Examples:
  gpt-ablate perplexity --model tests/fixtures/tiny-gpt2 --data tests/fixtures/sample.txt
  gpt-ablate perplexity --model DIR --data data/wikitext-2-raw-test.txt \\
      --activation sigmoid --layers 0-5 --context 1024 --stride 512 --json";

/// Which checkpoint: `--model` and `--revision`.
#[derive(Debug, Args)]
pub struct ModelRefArgs {
    /// Checkpoint directory in Hugging Face format (config.json; model.safetensors, a sharded
    /// index or pytorch_model.bin; tokenizer.json or vocab.json + merges.txt), or a Hub id such
    /// as gpt2 or openai-community/gpt2-medium (fetched into the Hugging Face cache; ID@REV
    /// pins a revision).
    #[arg(long, value_name = "DIR|ID")]
    pub model: String,
    /// Hub revision (branch, tag or commit) of a Hub --model.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
}

impl ModelRefArgs {
    /// Finds (local) or fetches (Hub) the checkpoint's files.
    pub fn files(&self) -> anyhow::Result<CheckpointFiles> {
        CheckpointFiles::resolve(&self.model, self.revision.as_deref())
    }
}

/// Options shared by every command that loads a model.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub source: ModelRefArgs,
    /// Activation to put in the MLPs at load time (gelu_new, gelu, relu, silu, sigmoid, tanh,
    /// identity, ...); default: the checkpoint's own.
    #[arg(long, value_name = "NAME")]
    pub activation: Option<Activation>,
    /// Layers to swap: `all`, or indices and inclusive ranges such as `0,3,5-7`.
    #[arg(long, value_name = "SPEC", default_value = "all")]
    pub layers: LayerSpec,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Compute precision (weights are converted at load).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// CPU threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// Finds or fetches the checkpoint and loads it with the swap.
    fn load(&self) -> anyhow::Result<crate::model::load::Loaded> {
        load_files(self.source.files()?, &self.load_options()?)
    }

    fn load_options(&self) -> anyhow::Result<LoadOptions> {
        if self.activation.is_none() && self.layers != LayerSpec::All {
            anyhow::bail!("--layers needs --activation (which activation to put in those layers)");
        }
        Ok(LoadOptions {
            activation: self.activation,
            layers: self.layers.clone(),
            dtype: self.dtype.dtype(),
            device: self.device.open()?,
        })
    }
}

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_name = "FILE|NAME|hf:…", help = DATA_HELP)]
    pub data: PathBuf,
    /// Tokens per window (default: the model's n_positions).
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// Tokens the window advances each step (default: context / 2). Must be 1..=context.
    #[arg(long, value_name = "N")]
    pub stride: Option<usize>,
    /// Windows per forward pass (results do not depend on it).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub batch_size: usize,
    /// Print one JSON object on stdout instead of the human-readable report.
    #[arg(long)]
    pub json: bool,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Perplexity(args) => run_perplexity(args),
        Command::Run(args) => run_grid(args),
        Command::Generate(args) => run_generate(args),
        Command::Diagnose(args) => run_diagnose(args),
        Command::Datasets => {
            for d in &NAMED_DATASETS {
                println!(
                    "{:<16} {:>9} bytes  {:<40} {}\n{:<16} {}",
                    d.name,
                    d.text.len(),
                    d.tokens,
                    d.licence,
                    "",
                    d.description
                );
            }
            println!(
                "\nAlso: any UTF-8 text file; a .jsonl file (one {{\"text\": ...}} per line); or\n\
                 hf:ORG/NAME[@REV]/path/in/repo, a text or JSONL file of a Hub dataset repo."
            );
            Ok(())
        }
        Command::Merge(args) => run_merge(args),
        Command::Inspect(args) => {
            let report = crate::model::inspect::inspect(&args.source.files()?)?;
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.report());
            }
            Ok(())
        }
    }
}

fn run_grid(args: RunArgs) -> anyhow::Result<()> {
    let grid = Grid::from_file(&args.config)?;
    if args.dry_run {
        for cell in grid.cells() {
            let mine = args.shard.is_none_or(|s| cell.index % s.n == s.k);
            println!(
                "{:>4}  {}  {:<28} {:<24} {} × {}",
                cell.index,
                if mine { "run " } else { "skip" },
                cell.name,
                cell.plan.describe(),
                results::short_name(&grid.models[cell.model].display().to_string()),
                results::short_name(&grid.datasets[cell.dataset].display().to_string()),
            );
        }
        return Ok(());
    }
    // Flag (or environment, via clap) > config file > default.
    let threads = args.threads.or(grid.threads);
    runtime::set_threads(threads)?;
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("runs").join(provenance::utc_compact(std::time::SystemTime::now()))
    });
    let settings = RunSettings {
        out: out.clone(),
        shard: args.shard,
        device: args.device.or(grid.device).unwrap_or_default(),
        dtype: args.dtype.or(grid.dtype).unwrap_or_default(),
        threads: runtime::threads(),
        progress: runner::stderr_is_terminal(),
    };
    let summary = runner::run(&grid, &settings)?;
    print_rows(&summary.rows, grid.sort, args.json)?;
    eprintln!(
        "{} cell(s) computed, {} already done; results in {} (results.jsonl, results.csv, manifest.json{})",
        summary.ran,
        summary.skipped,
        out.display(),
        summary
            .files
            .iter()
            .filter_map(|f| f.file_name().map(|n| format!(", {}", n.to_string_lossy())))
            .collect::<String>()
    );
    Ok(())
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    runtime::set_threads(args.model.threads)?;
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading the prompt from stdin")?;
            s
        }
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading --prompt-file {}", f.display()))?,
        (None, None) => {
            anyhow::bail!("give a prompt with --prompt TEXT or --prompt-file FILE (- for stdin)")
        }
    };
    let stop = args
        .stop
        .iter()
        .map(|s| unescape_stop(s))
        .collect::<Result<Vec<_>, _>>()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        seed,
    };
    params.validate()?;
    let loaded = args.model.load()?;
    let ids = loaded.tokenizer.encode(&prompt)?;
    let eos = loaded
        .config
        .info
        .eos_id
        .or_else(|| loaded.tokenizer.token_to_id("<|endoftext|>"));
    let rules = StopRules {
        max_new_tokens: args.max_new_tokens,
        stop,
        eos: if args.ignore_eos { None } else { eos },
    };
    let describe = |m: &dyn crate::model::CausalLm| {
        let plan = m.plan();
        if plan.swapped_layers().is_empty() {
            format!("{} (original)", plan.original)
        } else {
            plan.describe()
        }
    };
    let summary = |g: &Generation| {
        json!({
            "completion": g.completion,
            "token_ids": g.token_ids,
            "stop_reason": g.stop_reason,
            "prompt_tokens": g.prompt_tokens,
            "generated_tokens": g.token_ids.len(),
            "prompt_seconds": g.prompt_seconds,
            "generation_seconds": g.generation_seconds,
            "prompt_tokens_per_second": g.prompt_tokens_per_second(),
            "generation_tokens_per_second": g.generation_tokens_per_second(),
        })
    };
    let stats = |label: &str, g: &Generation| {
        eprintln!(
            "{label}{} prompt tokens ({:.1} tokens/s), {} generated ({:.1} tokens/s), stop: {:?}, seed {seed}",
            g.prompt_tokens,
            g.prompt_tokens_per_second(),
            g.token_ids.len(),
            g.generation_tokens_per_second(),
            g.stop_reason
        );
        if g.stop_reason == StopReason::ContextFull {
            eprintln!(
                "stopped: the model's context of {} positions is full",
                loaded.config.info.n_positions
            );
        }
    };
    if args.compare {
        let base = loaded
            .model
            .with_plan(crate::model::plan::ActivationPlan::original(
                loaded.model.plan().original,
                loaded.config.info.n_layer,
            ));
        let mut quiet = |_: &str| Ok(());
        let a = generate(&base, &loaded.tokenizer, &ids, params, &rules, &mut quiet)?;
        let b = generate(
            &loaded.model,
            &loaded.tokenizer,
            &ids,
            params,
            &rules,
            &mut quiet,
        )?;
        if args.json {
            let out = json!({"prompt": prompt, "seed": seed, "sampling": params,
                "original": {"activation": describe(&base), "result": summary(&a)},
                "swapped": {"activation": describe(&loaded.model), "result": summary(&b)}});
            println!("{out}");
        } else {
            for (m, g) in [(&base, &a), (&loaded.model, &b)] {
                println!("── {} ──\n{prompt}{}\n", describe(m), g.completion);
            }
            stats("original: ", &a);
            stats("swapped:  ", &b);
        }
        return Ok(());
    }
    let g = if args.json {
        generate(
            &loaded.model,
            &loaded.tokenizer,
            &ids,
            params,
            &rules,
            &mut |_| Ok(()),
        )?
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        write!(out, "{prompt}")?;
        out.flush()?;
        let mut emit = |piece: &str| {
            out.write_all(piece.as_bytes())?;
            out.flush()
        };
        let g = generate(
            &loaded.model,
            &loaded.tokenizer,
            &ids,
            params,
            &rules,
            &mut emit,
        )?;
        writeln!(out)?;
        g
    };
    if args.json {
        let mut out = summary(&g);
        out["prompt"] = json!(prompt);
        out["model"] = json!(args.model.source.model.clone());
        out["model_source"] = loaded.files.source.to_json();
        out["activation"] = json!(describe(&loaded.model));
        out["seed"] = json!(seed);
        out["sampling"] = json!(params);
        println!("{out}");
    } else {
        stats("", &g);
    }
    Ok(())
}

fn run_diagnose(args: DiagnoseArgs) -> anyhow::Result<()> {
    use crate::eval::diagnose::{diagnose, Diagnosis};
    runtime::set_threads_with(args.model.threads, true)?;
    if args.max_tokens == Some(0) {
        anyhow::bail!("--max-tokens must be at least 1");
    }
    let text = read_data(&args.data)?; // before a possibly long model download
    let loaded = args.model.load()?;
    let mut tokens = loaded
        .tokenizer
        .encode(&text)
        .with_context(|| format!("tokenizing {}", args.data.display()))?;
    if let Some(max) = args.max_tokens {
        tokens.truncate(max);
    }
    let context = args.context.unwrap_or(loaded.config.info.n_positions);
    let swapped = !loaded.model.plan().swapped_layers().is_empty();
    let original = if swapped {
        let plan = crate::model::plan::ActivationPlan::original(
            loaded.model.plan().original,
            loaded.config.info.n_layer,
        );
        Some(
            diagnose(&loaded.model.with_plan(plan), &tokens, context)
                .context("diagnosing the original model")?,
        )
    } else {
        None
    };
    let main = diagnose(&loaded.model, &tokens, context)?;
    let to_json = |d: &Diagnosis| json!({"layers": d.layers, "head": d.head, "activation": d.activation, "layers_swapped": d.layers_swapped, "windows": d.windows});
    let mut out = to_json(&main);
    out["model"] = json!(args.model.source.model.clone());
    out["model_source"] = loaded.files.source.to_json();
    out["data"] = json!(args.data.display().to_string());
    out["context"] = json!(context);
    out["tokens"] = json!(tokens.len());
    if let Some(o) = &original {
        out["original"] = to_json(o);
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        results::write_atomic(
            &dir.join("diagnose.json"),
            serde_json::to_string_pretty(&out)?.as_bytes(),
        )?;
        crate::grid::charts::draw_diagnosis(&main, original.as_ref(), dir)?;
    }
    if args.json {
        println!("{out}");
        return Ok(());
    }
    print!(
        "{}",
        crate::eval::diagnose::report(&main, original.as_ref())
    );
    if let Some(dir) = &args.out {
        eprintln!("wrote {}/diagnose.json and charts", dir.display());
    }
    Ok(())
}

fn run_merge(args: MergeArgs) -> anyhow::Result<()> {
    let rows = crate::grid::merge(&args.dirs, &args.out)?;
    // Sort as the original config asked, read back from the first shard's manifest.
    let sort = std::fs::read_to_string(args.dirs[0].join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|m| m["config"]["text"].as_str().map(str::to_string))
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("sort").and_then(|v| v.as_str()).map(str::to_string));
    let order = if sort.as_deref() == Some("perplexity") {
        SortOrder::Perplexity
    } else {
        SortOrder::Config
    };
    print_rows(&rows, order, args.json)?;
    eprintln!(
        "merged {} row(s) from {} director(ies) into {}",
        rows.len(),
        args.dirs.len(),
        args.out.display()
    );
    Ok(())
}

fn print_rows(
    rows: &[crate::grid::results::Row],
    order: SortOrder,
    json: bool,
) -> anyhow::Result<()> {
    let rows = table::sorted(rows, order);
    if json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        print!("{}", table::table(&rows));
    }
    Ok(())
}

fn run_perplexity(args: PerplexityArgs) -> anyhow::Result<()> {
    runtime::set_threads(args.model.threads)?;
    let opts = args.model.load_options()?;
    let text = read_data(&args.data)?; // before a possibly long model download
    let t0 = Instant::now();
    let loaded = args.model.load()?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let tokens = loaded
        .tokenizer
        .encode(&text)
        .with_context(|| format!("tokenizing {}", args.data.display()))?;
    let tokenize_seconds = t1.elapsed().as_secs_f64();

    let cfg = &loaded.config;
    let context = args.context.unwrap_or(cfg.info.n_positions);
    let stride = args.stride.unwrap_or((context / 2).max(1));
    let ppl_opts = PplOptions {
        context,
        stride,
        batch_size: args.batch_size,
    };
    let interactive = std::io::stderr().is_terminal() && !args.json;
    let mut progress = |done: usize, total: usize| {
        if interactive {
            eprint!("\r  scoring: batch {done}/{total}");
            if done == total {
                eprint!("\r\x1b[2K");
            }
        }
    };
    let report = perplexity(&loaded.model, &tokens, &ppl_opts, &mut progress)
        .with_context(|| format!("scoring {}", args.data.display()))?;

    let plan = loaded.model.plan();
    let swapped = plan.swapped_layers();
    let layers = if opts.activation.is_none() {
        "none".to_string()
    } else if swapped.len() == cfg.info.n_layer {
        "all".to_string()
    } else {
        format_indices(opts.layers.resolve(cfg.info.n_layer)?)
    };
    let bytes = text.len();
    let bits_per_byte = report.nll_sum / std::f64::consts::LN_2 / bytes as f64;
    if args.json {
        let out = json!({
            "model": args.model.source.model.clone(),
            "model_source": loaded.files.source.to_json(),
            "data": args.data.display().to_string(),
            "activation": plan.describe(),
            "original_activation": plan.original.name(),
            "layers": layers,
            "layers_swapped": swapped,
            "context": context,
            "stride": stride,
            "batch_size": args.batch_size,
            "tokens": report.tokens,
            "tokens_scored": report.tokens_scored,
            "windows": report.windows,
            "bytes": bytes,
            "nll_sum": report.nll_sum,
            "mean_nll": report.mean_nll,
            "perplexity": report.perplexity,
            "bits_per_byte": bits_per_byte,
            "seconds": report.seconds,
            "tokens_per_second": report.tokens_per_second,
            "load_seconds": load_seconds,
            "tokenize_seconds": tokenize_seconds,
            "device": args.model.device.to_string(),
            "dtype": args.model.dtype.to_string(),
            "threads": runtime::threads(),
        });
        println!("{out}");
        return Ok(());
    }
    let activation = if swapped.is_empty() {
        format!("{} (the checkpoint's own)", plan.original)
    } else {
        format!(
            "{} (original {}; layers {layers} swapped)",
            plan.describe(),
            plan.original
        )
    };
    println!(
        "model        {} ({} layers, {} layout, {} on {})",
        loaded.files.source, cfg.info.n_layer, loaded.layout, args.model.dtype, args.model.device
    );
    println!("activation   {activation}");
    println!(
        "data         {} ({bytes} bytes, {} tokens)",
        args.data.display(),
        report.tokens
    );
    println!(
        "windows      context {context}, stride {stride}: {} windows, {} tokens scored",
        report.windows, report.tokens_scored
    );
    println!("perplexity   {:.4}", report.perplexity);
    println!("mean NLL     {:.6} nats/token", report.mean_nll);
    println!("bits/byte    {bits_per_byte:.6}");
    println!(
        "speed        {:.1} tokens/s ({:.2} s scoring, {:.2} s load, {} threads)",
        report.tokens_per_second,
        report.seconds,
        load_seconds,
        runtime::threads()
    );
    Ok(())
}
