//! Text generation with a KV cache: the prompt in one forward pass, then one token per step;
//! greedy or sampled (temperature, top-k, top-p, repetition penalty) from a seeded RNG;
//! streamed through an incremental decoder so multi-byte UTF-8 is never split, holding back
//! text that may be the start of a stop string.
//!
//! When the model's context (`n_positions`) is full, generation stops and says so: GPT-2's
//! learned absolute positions cannot be slid without re-encoding.

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::data::TextTokenizer;
use crate::kernels;
use crate::model::CausalLm;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1 = off.
    pub top_p: f64,
    /// Divide positive logits (multiply negative ones) of recently seen tokens; 1 = off.
    pub repeat_penalty: f32,
    /// How many recent tokens (prompt included) the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("temperature must be ≥ 0 (0 = greedy), got {0}")]
    Temperature(f64),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f64),
    #[error("repeat_penalty must be > 0 (1 = off), got {0}")]
    RepeatPenalty(f32),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {tokens} tokens; the model's context is {n_positions}")]
    PromptTooLong { tokens: usize, n_positions: usize },
    #[error("stop {0:?}: a stop string cannot be empty")]
    EmptyStop(String),
    #[error("stop {text:?}: unknown escape '\\{escape}' (valid: \\n \\t \\r \\\\ \\\" \\' \\0 \\u{{HEX}})")]
    Escape { text: String, escape: char },
    #[error("token id {id} is outside the model's vocabulary ({vocab})")]
    TokenOutOfVocab { id: u32, vocab: usize },
    #[error("non-finite logits at step {step} (step 0 is the prompt pass): the model's outputs overflowed or its weights are not finite")]
    NonFinite { step: usize },
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("writing output: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl crate::eval::FieldError for GenError {
    fn field(&self) -> Option<&'static str> {
        match self {
            Self::Temperature(_) => Some("temperature"),
            Self::TopP(_) => Some("top_p"),
            Self::RepeatPenalty(_) => Some("repeat_penalty"),
            Self::EmptyStop(_) | Self::Escape { .. } => Some("stop"),
            _ => None,
        }
    }
}

// Not `#[from]`: that would make the I/O error the source as well, and the message would
// repeat it.
impl From<std::io::Error> for GenError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), GenError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(GenError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(GenError::TopP(self.top_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(GenError::RepeatPenalty(self.repeat_penalty));
        }
        Ok(())
    }
}

/// Unescapes a stop string: `\n \t \r \\ \" \' \0 \u{HEX}`; anything else is an error.
pub fn unescape_stop(s: &str) -> Result<String, GenError> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let bad = |escape| GenError::Escape {
            text: s.to_string(),
            escape,
        };
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('\'') => out.push('\''),
            Some('0') => out.push('\0'),
            Some('u') => {
                let rest: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let hex = rest.strip_prefix('{').ok_or(bad('u'))?;
                let ch = u32::from_str_radix(hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or(bad('u'))?;
                out.push(ch);
            }
            Some(other) => return Err(bad(other)),
            None => return Err(bad(' ')),
        }
    }
    if out.is_empty() {
        return Err(GenError::EmptyStop(s.to_string()));
    }
    Ok(out)
}

/// xoshiro256** seeded through SplitMix64: small, fast, and stable across versions, so a seed
/// reproduces the same text forever.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Picks next tokens from logits.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            params,
            rng: Rng::new(params.seed),
        }
    }

    /// The next token given the last position's logits and the sequence so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = self.params;
        if p.repeat_penalty != 1.0 {
            let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
            let mut seen: Vec<u32> = recent.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / p.temperature as f32))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&(_, l)| ((l - max) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&q| {
                    acc += q;
                    acc >= p.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|q| *q /= total);
        }
        let u = self.rng.uniform();
        let mut acc = 0.0;
        for (i, q) in probs.iter().enumerate() {
            acc += q;
            if u < acc {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

/// First index of the largest value (NaNs ignored; callers reject non-finite logits first).
pub fn argmax(xs: &[f32]) -> u32 {
    kernels::reductions::argmax(xs).0 as u32
}

/// When to stop.
#[derive(Debug, Clone, Default)]
pub struct StopRules {
    pub max_new_tokens: usize,
    /// Unescaped stop strings; the completion ends before the first one.
    pub stop: Vec<String>,
    /// End-of-text token, if the model has one.
    pub eos: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    MaxNewTokens,
    EndOfText,
    StopString,
    ContextFull,
}

/// A finished generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// Generated ids (including an end-of-text token that stopped it).
    pub token_ids: Vec<u32>,
    /// The decoded completion, cut before a stop string.
    pub completion: String,
    pub stop_reason: StopReason,
    pub prompt_seconds: f64,
    pub generation_seconds: f64,
}

impl Generation {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_seconds.max(1e-9)
    }
    /// New tokens per second after the prompt pass.
    pub fn generation_tokens_per_second(&self) -> f64 {
        self.token_ids.len().saturating_sub(1) as f64 / self.generation_seconds.max(1e-9)
    }
}

/// Generates a continuation of `prompt` token ids, calling `emit` with each piece of text as
/// soon as it is final.
pub fn generate(
    model: &dyn CausalLm,
    tokenizer: &TextTokenizer,
    prompt: &[u32],
    params: SamplingParams,
    rules: &StopRules,
    emit: &mut dyn FnMut(&str) -> std::io::Result<()>,
) -> Result<Generation, GenError> {
    params.validate()?;
    check_prompt(model, prompt)?;
    let n_positions = model.info().n_positions;
    let device = model.device().clone();
    let mut sampler = Sampler::new(params);
    let mut cache = model.new_cache(prompt.len().saturating_add(rules.max_new_tokens));
    let mut history = prompt.to_vec();
    let mut decoder = tokenizer.inner().decode_stream(false);
    let (mut text, mut emitted) = (String::new(), 0usize);
    let mut ids = Vec::new();

    let greedy = params.temperature == 0.0 && params.repeat_penalty == 1.0;
    let mut logits = Vec::with_capacity(model.info().vocab_size);
    history.reserve(rules.max_new_tokens);
    ids.reserve(rules.max_new_tokens);

    let start = Instant::now();
    let input = Tensor::from_slice(prompt, (1, prompt.len()), &device)?;
    let mut picked = next_logits(model, &input, &mut cache, greedy, &mut logits)?;
    let prompt_seconds = start.elapsed().as_secs_f64();
    let gen_start = Instant::now();
    let stop_reason = loop {
        if ids.len() >= rules.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        let id = choose(picked, &mut logits, &mut sampler, &history, ids.len())?;
        ids.push(id);
        history.push(id);
        if Some(id) == rules.eos {
            break StopReason::EndOfText;
        }
        if let Some(piece) = decoder
            .step(id)
            .map_err(|e| GenError::Decode(e.to_string()))?
        {
            text.push_str(&piece);
        }
        if stream(&mut text, &mut emitted, &rules.stop, emit)? {
            break StopReason::StopString;
        }
        if ids.len() >= rules.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        if cache.len() >= n_positions {
            break StopReason::ContextFull;
        }
        let input = Tensor::from_slice(&[id], (1, 1), &device)?;
        picked = next_logits(model, &input, &mut cache, greedy, &mut logits)?;
    };
    if emitted < text.len() {
        emit(&text[emitted..])?;
    }
    Ok(Generation {
        prompt_tokens: prompt.len(),
        token_ids: ids,
        completion: text,
        stop_reason,
        prompt_seconds,
        generation_seconds: gen_start.elapsed().as_secs_f64(),
    })
}

/// The next token: the greedy pick already made, or the sampler's choice from the logits —
/// refusing NaN or infinite logits at generation step `step`.
fn choose(
    picked: Next,
    logits: &mut [f32],
    sampler: &mut Sampler,
    history: &[u32],
    step: usize,
) -> Result<u32, GenError> {
    match picked {
        Next::Token(id) => Ok(id),
        Next::NonFinite => Err(GenError::NonFinite { step }),
        Next::Sample if logits.iter().any(|l| !l.is_finite()) => Err(GenError::NonFinite { step }),
        Next::Sample => Ok(sampler.sample(logits, history)),
    }
}

/// Emits what of `text` past `emitted` is final: up to the first stop string (then `true`:
/// the completion ends there, and `text` is cut), or up to where a stop string could still
/// begin.
fn stream(
    text: &mut String,
    emitted: &mut usize,
    stops: &[String],
    emit: &mut dyn FnMut(&str) -> std::io::Result<()>,
) -> Result<bool, GenError> {
    if let Some(at) = find_stop(text, *emitted, stops) {
        emit(&text[*emitted..at])?;
        text.truncate(at);
        *emitted = at;
        return Ok(true);
    }
    let safe = text.len() - held_back(text, stops);
    if safe > *emitted {
        emit(&text[*emitted..safe])?;
        *emitted = safe;
    }
    Ok(false)
}

/// Checks prompt token ids against a model: not empty, within its context and vocabulary.
/// [`generate`] checks this first; callers can check before printing anything.
pub fn check_prompt(model: &dyn CausalLm, prompt: &[u32]) -> Result<(), GenError> {
    let n_positions = model.info().n_positions;
    let vocab = model.info().vocab_size;
    if prompt.is_empty() {
        return Err(GenError::EmptyPrompt);
    }
    if prompt.len() > n_positions {
        return Err(GenError::PromptTooLong {
            tokens: prompt.len(),
            n_positions,
        });
    }
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(GenError::TokenOutOfVocab { id, vocab });
    }
    Ok(())
}

/// What the last position's logits decide.
enum Next {
    /// Greedy decoding: the argmax, taken on the LM head's output in place.
    Token(u32),
    /// Greedy decoding met a NaN or infinite logit.
    NonFinite,
    /// The logits were written out for the sampler.
    Sample,
}

/// Runs `input` (1, t) through the model, extending `cache`. When `greedy` and the logits
/// can be read in place, returns their argmax; otherwise writes them to `logits`.
fn next_logits(
    model: &dyn CausalLm,
    input: &Tensor,
    cache: &mut crate::model::Cache,
    greedy: bool,
    logits: &mut Vec<f32>,
) -> candle_core::Result<Next> {
    let hidden = model.hidden_states_cached(input, cache)?; // (1, t, C)
    let last = hidden.narrow(1, hidden.dim(1)? - 1, 1)?.squeeze(1)?; // (1, C)
    let out = model.logits_from_hidden(&last)?.squeeze(0)?; // (vocab,)
    if greedy {
        match kernels::reductions::argmax_vec(&out)? {
            Some(Some(id)) => return Ok(Next::Token(id as u32)),
            Some(None) => return Ok(Next::NonFinite),
            None => {}
        }
    }
    *logits = out.to_dtype(DType::F32)?.to_vec1()?;
    Ok(Next::Sample)
}

/// Byte offset of the earliest stop string that ends after `emitted - longest stop`.
fn find_stop(text: &str, emitted: usize, stops: &[String]) -> Option<usize> {
    let longest = stops.iter().map(|s| s.len()).max()?;
    let mut from = emitted.saturating_sub(longest);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    stops
        .iter()
        .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
        .min()
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string: text
/// that must wait for the next token before it can be shown.
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len()).filter(move |&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
        })
        .max()
        .unwrap_or(0)
}

/// Logits of the last position from a full, uncached forward pass (the reference the cached
/// path is tested against).
pub fn uncached_last_logits(model: &dyn CausalLm, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
    let input = Tensor::from_slice(ids, (1, ids.len()), model.device())?;
    let logits = model.forward(&input)?; // (1, t, vocab)
    logits
        .narrow(1, ids.len() - 1, 1)?
        .squeeze(1)?
        .squeeze(0)?
        .to_dtype(DType::F32)?
        .to_vec1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_unescape_and_reject_unknown_escapes() {
        assert_eq!(unescape_stop("\\n\\nEND").unwrap(), "\n\nEND");
        assert_eq!(unescape_stop("a\\u{e9}\\\\").unwrap(), "aé\\");
        assert!(unescape_stop("\\q")
            .unwrap_err()
            .to_string()
            .contains("unknown escape '\\q'"));
        assert!(unescape_stop("").is_err());
        assert!(unescape_stop("\\u{zz}").is_err());
    }

    #[test]
    fn held_back_text_waits_for_a_possible_stop() {
        let stops = vec!["\n\nEND".to_string()];
        assert_eq!(held_back("hello\n", &stops), 1);
        assert_eq!(held_back("hello\n\nE", &stops), 3);
        assert_eq!(held_back("hello", &stops), 0);
        assert_eq!(find_stop("ab\n\nEND cd", 0, &stops), Some(2));
        assert_eq!(find_stop("abc", 0, &[]), None);
    }

    #[test]
    fn sampler_is_greedy_at_zero_temperature_and_respects_top_k_and_seed() {
        let logits = vec![0.1f32, 2.0, 1.9, -1.0, 2.0];
        let mut greedy = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(
            greedy.sample(&mut logits.clone(), &[]),
            1,
            "first of the tied maxima"
        );
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draws = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params });
            (0..200)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draws(7);
        assert!(
            a.iter().all(|&t| t == 1 || t == 4),
            "top-k 2 keeps the two best"
        );
        assert_eq!(a, draws(7), "same seed, same draws");
        assert_ne!(a, draws(8), "different seed, different draws");
        // top-p small keeps only the best token.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.01,
            seed: 1,
            ..Default::default()
        });
        assert!((0..50).all(|_| s.sample(&mut logits.clone(), &[]) == 1));
        // A strong repetition penalty moves greedy off a seen token.
        let mut rp = Sampler::new(SamplingParams {
            temperature: 0.0,
            repeat_penalty: 10.0,
            ..Default::default()
        });
        assert_eq!(rp.sample(&mut logits.clone(), &[1, 4]), 2);
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut r = Rng::new(42);
        let mean = (0..100_000).map(|_| r.uniform()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
