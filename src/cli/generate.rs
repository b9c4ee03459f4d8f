//! `gpt-ablate generate`: text from a (swapped) model, streamed, or side by side with the
//! original (`--compare`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::args::ModelArgs;
use super::output::print_json;
use crate::eval::generate::{
    check_prompt, generate, unescape_stop, Generation, SamplingParams, StopReason, StopRules,
};
use crate::model::load::Loaded;
use crate::model::CausalLm;
use crate::runtime;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text (empty: start from the model's BOS token, else its EOS token, as
    /// transformers does).
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
    /// How many recent tokens (the prompt included) --repeat-penalty looks at.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed for sampling (default: from the clock, printed at the end; greedy
    /// decoding, --temperature 0, uses none).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Stop before this string (escapes: \n \t \r \\ \" \' \0 \u{HEX}); repeatable.
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

/// What to generate from, and how: the same for both models of `--compare`.
struct Job<'a> {
    loaded: &'a Loaded,
    prompt: &'a str,
    ids: Vec<u32>,
    params: SamplingParams,
    rules: StopRules,
}

impl Job<'_> {
    fn generate(
        &self,
        model: &dyn CausalLm,
        emit: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> anyhow::Result<Generation> {
        let tokenizer = &self.loaded.tokenizer;
        Ok(generate(
            model,
            tokenizer,
            &self.ids,
            self.params,
            &self.rules,
            emit,
        )?)
    }
}

pub(super) fn run(args: GenerateArgs) -> anyhow::Result<()> {
    runtime::set_threads(args.model.threads)?;
    runtime::on_pool(move || run_on_pool(args))
}

/// [`run`] once the threads are set, on a thread of the pool.
fn run_on_pool(args: GenerateArgs) -> anyhow::Result<()> {
    let prompt = read_prompt(&args)?;
    let stop = stop_strings(&args.stop)?;
    let params = sampling_params(&args)?;
    let loaded = args.model.load()?;
    let job = Job {
        loaded: &loaded,
        prompt: &prompt,
        ids: prompt_ids(&loaded, &prompt)?,
        params,
        rules: stop_rules(&args, stop, &loaded),
    };
    // Everything that can be refused before a word is printed.
    check_prompt(&loaded.model, &job.ids)?;
    if args.compare {
        return compare(&args, &job);
    }
    if args.json {
        let g = job.generate(&loaded.model, &mut |_| Ok(()))?;
        print_json(&GenerateJson::new(&args, &job, &g))
    } else {
        let g = stream(&job)?;
        print_stats("", &g, &job);
        Ok(())
    }
}

/// `--prompt`, or the contents of `--prompt-file` (`-`: standard input), at most 64 MiB.
fn read_prompt(args: &GenerateArgs) -> anyhow::Result<String> {
    Ok(match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            let limit = crate::fsio::SMALL_FILE_LIMIT;
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), limit + 1),
                &mut s,
            )
            .context("reading the prompt from stdin")?;
            if s.len() as u64 > limit {
                anyhow::bail!("the prompt on stdin is larger than {limit} bytes");
            }
            s
        }
        (None, Some(f)) => {
            let bytes = crate::fsio::read_limited(f, crate::fsio::SMALL_FILE_LIMIT)
                .context("--prompt-file")?;
            String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("--prompt-file {}: not UTF-8 text", f.display()))?
        }
        (None, None) => {
            anyhow::bail!("give a prompt with --prompt TEXT or --prompt-file FILE (- for stdin)")
        }
    })
}

/// The `--stop` strings with their escapes resolved.
fn stop_strings(stop: &[String]) -> anyhow::Result<Vec<String>> {
    Ok(stop
        .iter()
        .map(|s| unescape_stop(s))
        .collect::<Result<Vec<_>, _>>()?)
}

/// The sampling flags, checked, with `--seed` or else one from the clock.
fn sampling_params(args: &GenerateArgs) -> anyhow::Result<SamplingParams> {
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
    Ok(params)
}

/// The prompt's token ids; an empty prompt starts from the model's BOS token, else its EOS
/// token (as transformers' `generate` does without input ids).
fn prompt_ids(loaded: &Loaded, prompt: &str) -> anyhow::Result<Vec<u32>> {
    let ids = loaded.tokenizer.encode(prompt)?;
    if !ids.is_empty() {
        return Ok(ids);
    }
    let info = loaded.model.info();
    let start = info
        .bos_id
        .or(info.eos_id)
        .or_else(|| loaded.tokenizer.token_to_id("<|endoftext|>"));
    match start {
        Some(id) => Ok(vec![id]),
        None => anyhow::bail!(
            "the prompt is empty and the model names no BOS or EOS token to start from"
        ),
    }
}

/// `--max-new-tokens`, the stop strings, and the end-of-text token unless `--ignore-eos`.
fn stop_rules(args: &GenerateArgs, stop: Vec<String>, loaded: &Loaded) -> StopRules {
    let eos = loaded
        .model
        .info()
        .eos_id
        .or_else(|| loaded.tokenizer.token_to_id("<|endoftext|>"));
    StopRules {
        max_new_tokens: args.max_new_tokens,
        stop,
        eos: if args.ignore_eos { None } else { eos },
    }
}

/// Prints the prompt, then each piece of the completion as soon as it is final. The prompt
/// is printed with the first piece (or at the end), so a generation that fails at its first
/// step prints nothing.
fn stream(job: &Job) -> anyhow::Result<Generation> {
    let mut out = std::io::stdout().lock();
    let mut prompt_shown = false;
    let mut emit = |piece: &str| {
        if !prompt_shown {
            out.write_all(job.prompt.as_bytes())?;
            prompt_shown = true;
        }
        out.write_all(piece.as_bytes())?;
        out.flush()
    };
    let g = job.generate(&job.loaded.model, &mut emit)?;
    emit("")?;
    writeln!(out)?;
    Ok(g)
}

/// `--compare`: the original and the swapped model from the same seed, then both texts (or
/// one JSON object).
fn compare(args: &GenerateArgs, job: &Job) -> anyhow::Result<()> {
    let base = job.loaded.model.original();
    let swapped = &job.loaded.model;
    let mut quiet = |_: &str| Ok(());
    let a = job.generate(&base, &mut quiet)?;
    let b = job.generate(swapped, &mut quiet)?;
    if args.json {
        return print_json(&CompareJson {
            prompt: job.prompt,
            seed: job.params.seed,
            sampling: job.params,
            original: LabelledJson::new(&base, &a),
            swapped: LabelledJson::new(swapped, &b),
        });
    }
    for (m, g) in [(&base, &a), (swapped, &b)] {
        let label = generation_label(m);
        println!("── {label} ──\n{}{}\n", job.prompt, g.completion);
    }
    print_stats("original: ", &a, job);
    print_stats("swapped:  ", &b, job);
    Ok(())
}

/// The speed and stop line on stderr: why it stopped, in words, and the seed when sampled.
fn print_stats(label: &str, g: &Generation, job: &Job) {
    let seed = if job.params.temperature > 0.0 {
        format!(", seed {}", job.params.seed)
    } else {
        String::new()
    };
    eprintln!(
        "{label}{} prompt tokens ({:.1} tokens/s), {} generated ({:.1} tokens/s); stopped: {}{seed}",
        g.prompt_tokens,
        g.prompt_tokens_per_second(),
        g.token_ids.len(),
        g.generation_tokens_per_second(),
        stop_words(&g.stop_reason, job),
    );
}

/// Why generation stopped, in words.
fn stop_words(reason: &StopReason, job: &Job) -> String {
    match reason {
        StopReason::MaxNewTokens => {
            format!("reached --max-new-tokens ({})", job.rules.max_new_tokens)
        }
        StopReason::EndOfText => "the model produced its end-of-text token".to_string(),
        StopReason::StopString => "a --stop string was produced (not printed)".to_string(),
        StopReason::ContextFull => format!(
            "the model's context of {} positions is full",
            job.loaded.model.info().n_positions
        ),
    }
}

// The JSON objects are printed with their keys sorted (see `output::json_value`).

/// One generation's result.
#[derive(Serialize)]
struct GenerationJson<'a> {
    completion: &'a str,
    token_ids: &'a [u32],
    stop_reason: &'a StopReason,
    prompt_tokens: usize,
    generated_tokens: usize,
    prompt_seconds: f64,
    generation_seconds: f64,
    prompt_tokens_per_second: f64,
    generation_tokens_per_second: f64,
}

impl<'a> From<&'a Generation> for GenerationJson<'a> {
    fn from(g: &'a Generation) -> Self {
        Self {
            completion: &g.completion,
            token_ids: &g.token_ids,
            stop_reason: &g.stop_reason,
            prompt_tokens: g.prompt_tokens,
            generated_tokens: g.token_ids.len(),
            prompt_seconds: g.prompt_seconds,
            generation_seconds: g.generation_seconds,
            prompt_tokens_per_second: g.prompt_tokens_per_second(),
            generation_tokens_per_second: g.generation_tokens_per_second(),
        }
    }
}

/// `--json`: the result, with the request and where the model came from.
#[derive(Serialize)]
struct GenerateJson<'a> {
    #[serde(flatten)]
    result: GenerationJson<'a>,
    prompt: &'a str,
    model: &'a str,
    model_source: serde_json::Value,
    activation: String,
    seed: u64,
    sampling: SamplingParams,
}

impl<'a> GenerateJson<'a> {
    fn new(args: &'a GenerateArgs, job: &'a Job, g: &'a Generation) -> Self {
        Self {
            result: g.into(),
            prompt: job.prompt,
            model: &args.model.source.model,
            model_source: job.loaded.files.source.to_json(),
            activation: generation_label(&job.loaded.model),
            seed: job.params.seed,
            sampling: job.params,
        }
    }
}

/// `--compare --json`: both results.
#[derive(Serialize)]
struct CompareJson<'a> {
    prompt: &'a str,
    seed: u64,
    sampling: SamplingParams,
    original: LabelledJson<'a>,
    swapped: LabelledJson<'a>,
}

/// One model of `--compare`: its activation and its result.
#[derive(Serialize)]
struct LabelledJson<'a> {
    activation: String,
    result: GenerationJson<'a>,
}

impl<'a> LabelledJson<'a> {
    fn new(model: &dyn CausalLm, g: &'a Generation) -> Self {
        Self {
            activation: generation_label(model),
            result: g.into(),
        }
    }
}

/// How `generate` names a model: `gelu_new (original)`, or the swap (`sigmoid@0-2`).
fn generation_label(model: &dyn CausalLm) -> String {
    let plan = model.plan();
    if plan.swapped_layers().is_empty() {
        format!("{} (original)", plan.original)
    } else {
        plan.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::json_value;
    use serde_json::json;

    fn generation() -> Generation {
        Generation {
            prompt_tokens: 3,
            token_ids: vec![5, 7, 11],
            completion: " fo.\n\"x\"".into(),
            stop_reason: StopReason::ContextFull,
            prompt_seconds: 0.25,
            generation_seconds: 1.5,
        }
    }

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 7,
        }
    }

    /// The `json!` summary the structs replaced, as it was.
    fn summary(g: &Generation) -> serde_json::Value {
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
    }

    #[test]
    fn generate_json_prints_what_the_json_literal_printed() {
        let (g, params) = (generation(), params());
        let source = json!({"kind": "local", "path": "m"});
        let mut old = summary(&g);
        old["prompt"] = json!("Hi");
        old["model"] = json!("m");
        old["model_source"] = source.clone();
        old["activation"] = json!("gelu_new (original)");
        old["seed"] = json!(7u64);
        old["sampling"] = json!(params);
        let new = GenerateJson {
            result: (&g).into(),
            prompt: "Hi",
            model: "m",
            model_source: source,
            activation: "gelu_new (original)".into(),
            seed: 7,
            sampling: params,
        };
        let printed = json_value(&new).unwrap().to_string();
        assert_eq!(printed, old.to_string());
        assert!(printed.contains(r#""repeat_penalty":1.100000023841858"#));
    }

    #[test]
    fn compare_json_prints_what_the_json_literal_printed() {
        let (a, params) = (generation(), params());
        let mut b = generation();
        b.completion = "other".into();
        b.stop_reason = StopReason::StopString;
        let old = json!({"prompt": "Hi", "seed": 7u64, "sampling": params,
            "original": {"activation": "gelu_new (original)", "result": summary(&a)},
            "swapped": {"activation": "sigmoid", "result": summary(&b)}});
        let labelled = |activation: &str, g| LabelledJson {
            activation: activation.into(),
            result: GenerationJson::from(g),
        };
        let new = CompareJson {
            prompt: "Hi",
            seed: 7,
            sampling: params,
            original: labelled("gelu_new (original)", &a),
            swapped: labelled("sigmoid", &b),
        };
        assert_eq!(json_value(&new).unwrap().to_string(), old.to_string());
    }
}
