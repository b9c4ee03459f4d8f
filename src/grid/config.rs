//! Ablation grid configs (TOML): what to run, checked before anything is computed. The
//! expansion into cells is in [`crate::grid::cells`].
//!
//! ```toml
//! models = ["../models/shakespeare-gpt2"]   # paths relative to this file, or Hub ids
//!                                           # ("gpt2", "openai-community/gpt2@<commit>")
//! datasets = ["../data/shakespeare-val.txt"]
//! context = 256                             # default: each model's n_positions
//! stride = 128                              # default: context / 2
//! [[variants]]
//! name = "relu"
//! activation = "relu"                       # or "0-1:relu,2-3:sigmoid"
//! [[variants]]
//! name = "sigmoid sweep"
//! activation = "sigmoid"
//! sweep_layers = true                       # this activation in one layer at a time
//! diagnose = true                           # add per-layer diagnostics to its rows
//! ```
//!
//! Protocol keys: `protocol = "hf" | "lm-eval" | "llama-cpp" | "disjoint"`, `max_length`
//! and `detokenize = "wikitext"` (lm-eval), `text_field` (JSONL / Parquet datasets), `save_nll = true | "jsonl" |
//! "parquet"` (per-token files), `bootstrap_samples` and `bootstrap_seed` (intervals).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::eval::bootstrap::BootstrapSettings;
use crate::eval::detokenize::Detokenizer;
use crate::eval::nll_output::NllFormat;
use crate::eval::protocol::{ProtocolError, ProtocolName};
use crate::grid::training::{Finetune, TrainTable};
use crate::model::activation::Activation;
use crate::model::plan::{ActivationMap, ActivationPlan, LayerSpec};
use crate::model::ModelConfig;
use crate::runtime::{DeviceSpec, Precision};
use crate::weights::ModelSpec;

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrid {
    models: Spanned<Vec<Spanned<String>>>,
    datasets: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    context: Option<Spanned<usize>>,
    #[serde(default)]
    stride: Option<Spanned<usize>>,
    #[serde(default)]
    batch_size: Option<Spanned<usize>>,
    #[serde(default)]
    max_tokens: Option<Spanned<usize>>,
    #[serde(default)]
    device: Option<Spanned<String>>,
    #[serde(default)]
    dtype: Option<Spanned<String>>,
    #[serde(default)]
    threads: Option<Spanned<usize>>,
    #[serde(default)]
    sort: Option<Spanned<String>>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    max_length: Option<Spanned<usize>>,
    #[serde(default)]
    text_field: Option<Spanned<String>>,
    #[serde(default)]
    detokenize: Option<Spanned<String>>,
    #[serde(default)]
    save_nll: Option<Spanned<RawSaveNll>>,
    #[serde(default)]
    bootstrap_samples: Option<Spanned<usize>>,
    #[serde(default)]
    bootstrap_seed: Option<Spanned<u64>>,
    #[serde(default)]
    baseline: Option<RawBaseline>,
    #[serde(default)]
    variants: Option<Spanned<Vec<RawVariant>>>,
    /// How variants with `finetune_steps` are fine-tuned.
    #[serde(default)]
    train: Option<TrainTable>,
}

/// `save_nll = true` (JSONL) or a format name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSaveNll {
    On(bool),
    Format(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaseline {
    name: Option<Spanned<String>>,
    #[serde(default)]
    diagnose: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: Spanned<String>,
    activation: Spanned<String>,
    /// Layers to put the activation in (as `--layers`); default all.
    #[serde(default)]
    layers: Option<Spanned<String>>,
    #[serde(default)]
    sweep_layers: bool,
    #[serde(default)]
    diagnose: bool,
    /// Fine-tune after the swap (recovery) for this many steps; `lr` and `train_data`
    /// override `[train]`.
    #[serde(default)]
    finetune_steps: Option<Spanned<usize>>,
    #[serde(default)]
    lr: Option<f64>,
    #[serde(default)]
    train_data: Option<String>,
    /// Calibrate the swap (as `perplexity --calibrate`) on the dataset's first 4,096 tokens.
    #[serde(default)]
    calibrate: bool,
}

/// How the results table is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    /// Baseline first, then variants in the order the config lists them.
    Config,
    /// Ascending perplexity within each model × dataset.
    Perplexity,
}

/// A named variant.
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub map: ActivationMap,
    pub sweep_layers: bool,
    /// Also run `diagnose` on this variant's cells.
    pub diagnose: bool,
    /// Source text of the activation map, for reports.
    pub activation: String,
    /// Recovery fine-tuning after the swap.
    pub finetune: Option<Finetune>,
    /// Calibrate the swap on the dataset before scoring.
    pub calibrate: bool,
}

/// A validated grid.
#[derive(Debug, Clone)]
pub struct Grid {
    pub path: PathBuf,
    /// The config file's text, copied into the manifest.
    pub text: String,
    /// Local directories or Hub ids.
    pub models: Vec<ModelSpec>,
    /// Each model's config (read while validating).
    pub model_configs: Vec<ModelConfig>,
    pub datasets: Vec<PathBuf>,
    pub context: Option<usize>,
    pub stride: Option<usize>,
    pub batch_size: usize,
    pub max_tokens: Option<usize>,
    pub device: Option<DeviceSpec>,
    pub dtype: Option<Precision>,
    pub threads: Option<usize>,
    pub sort: SortOrder,
    /// How cells are scored; settings resolve per model (see `grid::inputs`).
    pub protocol: ProtocolName,
    /// lm-eval's window (default: each model's maximum length).
    pub max_length: Option<usize>,
    /// The JSONL field / Parquet column of the documents (default `text`).
    pub text_field: Option<String>,
    /// lm-eval: documents detokenized before scoring.
    pub detokenize: Option<Detokenizer>,
    /// Write each cell's per-token NLLs under `nll/`.
    pub save_nll: Option<NllFormat>,
    /// Replicates and seed of the intervals.
    pub bootstrap: BootstrapSettings,
    pub baseline_name: String,
    pub baseline_diagnose: bool,
    pub variants: Vec<Variant>,
    /// `[train]`: how variants with `finetune_steps` are fine-tuned.
    pub train: TrainTable,
}

/// A config error: the message, with the file and line where one applies.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {msg}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct GridError {
    pub file: String,
    pub line: Option<usize>,
    pub msg: String,
}

impl Grid {
    /// Reads, parses and validates a grid config: every model's config.json and every
    /// dataset must exist, activations and layer maps must fit every model.
    pub fn from_file(path: &Path) -> Result<Self, GridError> {
        let file = path.display().to_string();
        let text = crate::fsio::read_limited_to_string(path, crate::fsio::SMALL_FILE_LIMIT)
            .map_err(|e| GridError {
                file: file.clone(),
                line: None,
                msg: e.reason(),
            })?;
        Self::parse(path, &text)
    }

    /// Parses config text; relative paths resolve against `path`'s directory. Sections are
    /// checked in a fixed order (models, datasets, windowing, device, dtype, sort, baseline,
    /// variants) and the first error found is the one reported.
    pub fn parse(path: &Path, text: &str) -> Result<Self, GridError> {
        let mut p = Parser::new(path, text);
        let raw: RawGrid =
            toml::from_str(text).map_err(|e| p.err(e.span(), e.message().to_string()))?;
        p.train = raw.train.clone().unwrap_or_default();
        let (models, model_configs) = p.models(&raw.models)?;
        let datasets = p.datasets(&raw.datasets)?;
        let w = p.windowing(&raw, &models, &model_configs)?;
        let device = p.device(raw.device.as_ref())?;
        let dtype = p.dtype(raw.dtype.as_ref())?;
        let sort = p.sort(raw.sort.as_ref())?;
        let ps = p.protocol_settings(&raw, &model_configs)?;
        let (baseline_name, baseline_diagnose) = baseline(raw.baseline.as_ref());
        let variants = p.variants(raw.variants, &baseline_name, &models, &model_configs)?;
        Ok(Self {
            path: path.to_path_buf(),
            text: text.to_string(),
            models,
            model_configs,
            datasets,
            context: w.context,
            stride: w.stride,
            batch_size: w.batch_size,
            max_tokens: w.max_tokens,
            device,
            dtype,
            threads: w.threads,
            sort,
            protocol: ps.protocol,
            max_length: ps.max_length,
            text_field: ps.text_field,
            detokenize: ps.detokenize,
            save_nll: ps.save_nll,
            bootstrap: ps.bootstrap,
            baseline_name,
            baseline_diagnose,
            variants,
            train: p.train,
        })
    }
}

/// The counts of a config, each at least 1 when given.
struct Windowing {
    context: Option<usize>,
    stride: Option<usize>,
    batch_size: usize,
    max_tokens: Option<usize>,
    threads: Option<usize>,
}

/// The protocol keys of a config.
struct ProtocolSettings {
    protocol: ProtocolName,
    max_length: Option<usize>,
    text_field: Option<String>,
    detokenize: Option<Detokenizer>,
    save_nll: Option<NllFormat>,
    bootstrap: BootstrapSettings,
}

/// The baseline's name (default `baseline`) and whether it is diagnosed.
fn baseline(raw: Option<&RawBaseline>) -> (String, bool) {
    let name = raw
        .and_then(|b| b.name.as_ref())
        .map(|n| n.get_ref().trim().to_string())
        .unwrap_or_else(|| "baseline".into());
    (name, raw.is_some_and(|b| b.diagnose))
}

/// Checks one config file's sections; errors name the file and the line.
struct Parser<'a> {
    file: String,
    text: &'a str,
    /// The config's directory: relative paths resolve against it.
    base: &'a Path,
    /// The `[train]` table (fine-tuned variants' defaults).
    train: TrainTable,
}

impl<'a> Parser<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            file: path.display().to_string(),
            text,
            train: TrainTable::default(),
            base: path.parent().unwrap_or(Path::new(".")),
        }
    }

    fn err(&self, span: Option<Range<usize>>, msg: String) -> GridError {
        let line_of = |offset: usize| {
            self.text[..offset.min(self.text.len())]
                .matches('\n')
                .count()
                + 1
        };
        GridError {
            file: self.file.clone(),
            line: span.map(|s| line_of(s.start)),
            msg,
        }
    }

    fn err_at<T>(&self, value: &Spanned<T>, msg: String) -> GridError {
        self.err(Some(value.span()), msg)
    }

    /// A path relative to the config's directory, without `dir/..` pairs.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            crate::fsio::clean(&self.base.join(p))
        }
    }

    /// `models`: each a local directory or Hub id, with its config read.
    fn models(
        &self,
        raw: &Spanned<Vec<Spanned<String>>>,
    ) -> Result<(Vec<ModelSpec>, Vec<ModelConfig>), GridError> {
        if raw.get_ref().is_empty() {
            return Err(self.err_at(raw, "models: the list is empty".into()));
        }
        let mut models: Vec<ModelSpec> = Vec::new();
        let mut model_configs = Vec::new();
        for m in raw.get_ref() {
            let spec = ModelSpec::parse(m.get_ref(), None, Some(self.base))
                .map_err(|e| self.err_at(m, format!("models: {e:#}")))?;
            if let Some(first) = models.iter().find(|s| same_model(s, &spec)) {
                return Err(self.err_at(
                    m,
                    format!(
                        "models: '{}' is listed twice (as {first} before); each model once",
                        m.get_ref()
                    ),
                ));
            }
            let cfg = spec
                .config_path()
                .and_then(|p| Ok(ModelConfig::from_file(&p)?))
                .map_err(|e| self.err_at(m, format!("models: {e:#}")))?;
            models.push(spec);
            model_configs.push(cfg);
        }
        Ok((models, model_configs))
    }

    /// `datasets`: each an existing file (relative to the config) or a named dataset.
    fn datasets(&self, raw: &Spanned<Vec<Spanned<String>>>) -> Result<Vec<PathBuf>, GridError> {
        if raw.get_ref().is_empty() {
            return Err(self.err_at(raw, "datasets: the list is empty".into()));
        }
        let mut datasets: Vec<PathBuf> = Vec::new();
        for d in raw.get_ref() {
            let p = self.resolve(d.get_ref());
            let path = if p.is_file() {
                p
            } else if p.exists() {
                return Err(self.err_at(
                    d,
                    format!("datasets: {} is not a regular file (a directory, FIFO or device cannot be read as data)", p.display()),
                ));
            } else if crate::data::is_data_name(d.get_ref()) {
                PathBuf::from(d.get_ref())
            } else {
                return Err(self.err_at(
                    d,
                    format!("datasets: file {} does not exist, and {} is not a named dataset or an hf:ORG/NAME/path", p.display(), d.get_ref()),
                ));
            };
            if let Some(first) = datasets.iter().find(|q| same_file(q, &path)) {
                return Err(self.err_at(
                    d,
                    format!(
                        "datasets: '{}' is listed twice (as {} before); each dataset once",
                        d.get_ref(),
                        first.display()
                    ),
                ));
            }
            datasets.push(path);
        }
        Ok(datasets)
    }

    /// A count that must be at least 1 when given.
    fn positive(&self, v: &Option<Spanned<usize>>, key: &str) -> Result<Option<usize>, GridError> {
        match v {
            Some(s) if *s.get_ref() == 0 => {
                Err(self.err_at(s, format!("{key} must be at least 1")))
            }
            Some(s) => Ok(Some(*s.get_ref())),
            None => Ok(None),
        }
    }

    /// `context`, `stride`, `batch_size`, `max_tokens` and `threads`: positive, the stride
    /// within the context, the context within every model's `n_positions`.
    fn windowing(
        &self,
        raw: &RawGrid,
        models: &[ModelSpec],
        model_configs: &[ModelConfig],
    ) -> Result<Windowing, GridError> {
        let w = Windowing {
            context: self.positive(&raw.context, "context")?,
            stride: self.positive(&raw.stride, "stride")?,
            batch_size: self.positive(&raw.batch_size, "batch_size")?.unwrap_or(1),
            max_tokens: self.positive(&raw.max_tokens, "max_tokens")?,
            threads: self.positive(&raw.threads, "threads")?,
        };
        if let (Some(c), Some(s)) = (&raw.context, &raw.stride) {
            if s.get_ref() > c.get_ref() {
                return Err(self.err_at(
                    s,
                    format!("stride {} exceeds context {}", s.get_ref(), c.get_ref()),
                ));
            }
        }
        if let (None, Some(st)) = (&raw.context, &raw.stride) {
            for (m, cfg) in models.iter().zip(model_configs) {
                if *st.get_ref() > cfg.info.n_positions {
                    return Err(self.err_at(
                        st,
                        format!(
                            "stride {} exceeds the context, n_positions {} of {} (no context is set)",
                            st.get_ref(),
                            cfg.info.n_positions,
                            m.display()
                        ),
                    ));
                }
            }
        }
        if let Some(c) = &raw.context {
            for (m, cfg) in models.iter().zip(model_configs) {
                if *c.get_ref() > cfg.info.n_positions {
                    return Err(self.err_at(
                        c,
                        format!(
                            "context {} exceeds n_positions {} of {}",
                            c.get_ref(),
                            cfg.info.n_positions,
                            m.display()
                        ),
                    ));
                }
            }
        }
        Ok(w)
    }

    fn device(&self, raw: Option<&Spanned<String>>) -> Result<Option<DeviceSpec>, GridError> {
        raw.map(|d| {
            d.get_ref()
                .parse::<DeviceSpec>()
                .map_err(|e| self.err_at(d, format!("device: {e}")))
        })
        .transpose()
    }

    fn dtype(&self, raw: Option<&Spanned<String>>) -> Result<Option<Precision>, GridError> {
        raw.map(|d| {
            <Precision as clap::ValueEnum>::from_str(d.get_ref(), true).map_err(|_| {
                self.err_at(
                    d,
                    format!("dtype: '{}' is not one of f32, f16, bf16", d.get_ref()),
                )
            })
        })
        .transpose()
    }

    fn sort(&self, raw: Option<&Spanned<String>>) -> Result<SortOrder, GridError> {
        match raw.map(|s| (s.get_ref().as_str(), s)) {
            None | Some(("config", _)) => Ok(SortOrder::Config),
            Some(("perplexity", _)) => Ok(SortOrder::Perplexity),
            Some((other, s)) => Err(self.err_at(
                s,
                format!("sort: '{other}' is not one of config, perplexity"),
            )),
        }
    }

    /// `protocol`, `max_length`, `text_field`, `save_nll`, `bootstrap_*`: a known protocol
    /// with only the settings it has, the rest checked.
    fn protocol_settings(
        &self,
        raw: &RawGrid,
        model_configs: &[ModelConfig],
    ) -> Result<ProtocolSettings, GridError> {
        let protocol = match &raw.protocol {
            Some(s) => s
                .get_ref()
                .parse::<ProtocolName>()
                .map_err(|e| self.err_at(s, format!("protocol: {e}")))?,
            None => ProtocolName::Hf,
        };
        self.applicable(raw, protocol)?;
        let max_length = self.positive(&raw.max_length, "max_length")?;
        if let Some(m) = &raw.max_length {
            if let Some(cfg) = model_configs
                .iter()
                .find(|c| *m.get_ref() > c.info.n_positions)
            {
                let (got, n) = (m.get_ref(), cfg.info.n_positions);
                let msg = format!("max_length {got} exceeds a model's maximum length ({n})");
                return Err(self.err_at(m, msg));
            }
        }
        let text_field = match &raw.text_field {
            Some(t) if t.get_ref().is_empty() => {
                return Err(self.err_at(t, "text_field is empty".into()))
            }
            t => t.as_ref().map(|t| t.get_ref().clone()),
        };
        let defaults = BootstrapSettings::default();
        let bootstrap = BootstrapSettings {
            samples: self
                .positive(&raw.bootstrap_samples, "bootstrap_samples")?
                .unwrap_or(defaults.samples),
            seed: raw
                .bootstrap_seed
                .as_ref()
                .map_or(defaults.seed, |s| *s.get_ref()),
        };
        let detokenize = match &raw.detokenize {
            Some(d) if d.get_ref() == "wikitext" => Some(Detokenizer::Wikitext),
            Some(d) => {
                let msg = format!("detokenize: '{}' is not one of wikitext", d.get_ref());
                return Err(self.err_at(d, msg));
            }
            None => None,
        };
        Ok(ProtocolSettings {
            protocol,
            max_length,
            text_field,
            detokenize,
            save_nll: self.save_nll(raw.save_nll.as_ref())?,
            bootstrap,
        })
    }

    /// Settings a protocol does not have are errors at their line: `stride` is hf's,
    /// `max_length` lm-eval's, and lm-eval takes no `context` or `max_tokens`.
    fn applicable(&self, raw: &RawGrid, protocol: ProtocolName) -> Result<(), GridError> {
        let not_for = |key: &'static str, at: std::ops::Range<usize>| {
            let msg = ProtocolError::NotFor { key, protocol }.to_string();
            Err(self.err(Some(at), msg))
        };
        let lm_eval = protocol == ProtocolName::LmEval;
        if let (Some(d), false) = (&raw.detokenize, lm_eval) {
            return not_for("detokenize", d.span());
        }
        match (&raw.stride, &raw.max_length, &raw.context, &raw.max_tokens) {
            (Some(s), ..) if protocol != ProtocolName::Hf => not_for("stride", s.span()),
            (_, Some(m), ..) if !lm_eval => not_for("max_length", m.span()),
            (_, _, Some(c), _) if lm_eval => not_for("context", c.span()),
            (.., Some(t)) if lm_eval => Err(self.err_at(
                t,
                "max_tokens does not apply to the lm-eval protocol, which scores whole documents"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    fn save_nll(&self, raw: Option<&Spanned<RawSaveNll>>) -> Result<Option<NllFormat>, GridError> {
        Ok(match raw.map(|s| (s.get_ref(), s)) {
            None | Some((RawSaveNll::On(false), _)) => None,
            Some((RawSaveNll::On(true), _)) => Some(NllFormat::Jsonl),
            Some((RawSaveNll::Format(f), _)) if f == "jsonl" => Some(NllFormat::Jsonl),
            Some((RawSaveNll::Format(f), _)) if f == "parquet" => Some(NllFormat::Parquet),
            Some((RawSaveNll::Format(f), s)) => {
                let msg =
                    format!("save_nll: '{f}' is not one of true, false, \"jsonl\", \"parquet\"");
                return Err(self.err_at(s, msg));
            }
        })
    }

    /// `[[variants]]`: at least one, names unique (the baseline's included).
    fn variants(
        &self,
        raw: Option<Spanned<Vec<RawVariant>>>,
        baseline_name: &str,
        models: &[ModelSpec],
        model_configs: &[ModelConfig],
    ) -> Result<Vec<Variant>, GridError> {
        let Some(raw) = raw else {
            return Err(self.err(
                None,
                "no [[variants]]: add at least one variant to compare with the baseline".into(),
            ));
        };
        if raw.get_ref().is_empty() {
            return Err(self.err_at(&raw, "variants: the list is empty".into()));
        }
        let mut variants = Vec::new();
        let mut names = vec![baseline_name.to_string()];
        for v in raw.into_inner() {
            let variant = self.variant(v, &names, models, model_configs)?;
            names.push(variant.name.clone());
            variants.push(variant);
        }
        Ok(variants)
    }

    /// A variant's activation map: `activation` (a name or a per-layer map), with `layers`
    /// when given (then `activation` must be a single name). A sweep needs a single name.
    fn variant_map(&self, v: &RawVariant, name: &str) -> Result<ActivationMap, GridError> {
        let map: ActivationMap = v.activation.get_ref().parse().map_err(|e| {
            self.err_at(&v.activation, format!("variant '{name}': activation: {e}"))
        })?;
        let single = map.single();
        if v.sweep_layers && single.is_none() {
            return Err(self.err_at(
                &v.activation,
                format!("variant '{name}': sweep_layers needs a single activation name, not a per-layer map"),
            ));
        }
        let Some(layers) = &v.layers else {
            return Ok(map);
        };
        let Some(act) = single else {
            return Err(self.err_at(
                layers,
                format!("variant '{name}': layers needs a single activation name; the per-layer map names its layers already"),
            ));
        };
        let spec: LayerSpec = layers
            .get_ref()
            .parse()
            .map_err(|e| self.err_at(layers, format!("variant '{name}': layers: {e}")))?;
        Ok(ActivationMap(vec![(spec, act)]))
    }

    /// One variant: a new name, an activation map that fits every model, and for a sweep a
    /// single activation (swept over `layers`, default all).
    fn variant(
        &self,
        v: RawVariant,
        taken: &[String],
        models: &[ModelSpec],
        model_configs: &[ModelConfig],
    ) -> Result<Variant, GridError> {
        let name = v.name.get_ref().trim().to_string();
        if name.is_empty() {
            return Err(self.err_at(&v.name, "variants: name is empty".into()));
        }
        if taken.contains(&name) {
            return Err(self.err_at(&v.name, format!("variants: duplicate name '{name}'")));
        }
        let map = self.variant_map(&v, &name)?;
        let at = v.layers.as_ref().unwrap_or(&v.activation);
        for (m, cfg) in models.iter().zip(model_configs) {
            let plan = ActivationPlan::original(Activation::Identity, cfg.info.n_layer);
            map.apply(plan)
                .map_err(|e| self.err_at(at, format!("variant '{name}': {e} ({})", m.display())))?;
        }
        let finetune = match &v.finetune_steps {
            Some(steps) => Some(
                Finetune::resolve(
                    *steps.get_ref(),
                    v.lr,
                    v.train_data.as_deref(),
                    &self.train,
                    self.base,
                )
                .map_err(|e| self.err_at(steps, format!("variant '{name}': {e}")))?,
            ),
            None => None,
        };
        Ok(Variant {
            name,
            map,
            sweep_layers: v.sweep_layers,
            diagnose: v.diagnose,
            activation: v.activation.into_inner(),
            finetune,
            calibrate: v.calibrate,
        })
    }
}

/// Whether two model specs name the same checkpoint: the same directory (however written)
/// or the same Hub repo and revision.
fn same_model(a: &ModelSpec, b: &ModelSpec) -> bool {
    match (a, b) {
        (ModelSpec::Local(x), ModelSpec::Local(y)) => same_file(x, y),
        _ => a == b,
    }
}

/// Whether two paths name the same file or directory (or the same named dataset).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grid.toml")
    }

    pub(crate) fn parse(text: &str) -> Result<Grid, String> {
        Grid::parse(&fixture_dir(), text).map_err(|e| e.to_string())
    }

    pub(crate) const HEAD: &str = "models = [\"tiny-gpt2\"]\ndatasets = [\"sample.txt\"]\n";

    #[test]
    fn errors_name_the_key_and_line() {
        let v = "[[variants]]\nname = \"a\"\nactivation = \"relu\"\n";
        let cases = [
            (format!("{HEAD}contxt = 5\n{v}"), "line 3: unknown field `contxt`"),
            (format!("{HEAD}[[variants]]\nname = \"a\"\nactivation = \"nope\"\n"), "line 5: variant 'a': activation: unknown activation 'nope'"),
            (format!("{HEAD}[[variants]]\nname = \"a\"\nactivation = \"9:relu\"\n"), "line 5: variant 'a': layer 9 is out of range"),
            (format!("{HEAD}{v}[[variants]]\nname = \"a\"\nactivation = \"tanh\"\n"), "line 7: variants: duplicate name 'a'"),
            (HEAD.to_string(), "no [[variants]]"),
            (format!("{HEAD}variants = []\n"), "line 3: variants: the list is empty"),
            (format!("models = [\"tiny-gpt2\"]\ndatasets = [\"nope.txt\"]\n{v}"), "line 2: datasets: file"),
            (format!("models = [\"./nope\"]\ndatasets = [\"sample.txt\"]\n{v}"), "line 1: models: model /"),
            (format!("models = [\"./nope\"]\ndatasets = [\"sample.txt\"]\n{v}"), "nope: no such directory, and not a Hub repo id"),
            (format!("{HEAD}context = 65\n{v}"), "line 3: context 65 exceeds n_positions 64"),
            (format!("{HEAD}context = 8\nstride = 9\n{v}"), "line 4: stride 9 exceeds context 8"),
            (format!("{HEAD}dtype = \"f8\"\n{v}"), "line 3: dtype: 'f8'"),
            (format!("{HEAD}sort = \"name\"\n{v}"), "line 3: sort: 'name'"),
            (format!("{HEAD}[[variants]]\nname = \"a\"\nactivation = \"0:relu\"\nsweep_layers = true\n"), "sweep_layers needs a single activation"),
            (format!("{HEAD}protocol = \"lm_eval\"\n{v}"), "line 3: protocol: 'lm_eval' is not one of hf, lm-eval, llama-cpp, disjoint"),
            (format!("{HEAD}protocol = \"disjoint\"\nstride = 4\n{v}"), "line 4: stride does not apply to the disjoint protocol"),
            (format!("{HEAD}max_length = 16\n{v}"), "line 3: max_length does not apply to the hf protocol"),
            (format!("{HEAD}protocol = \"lm-eval\"\ncontext = 16\n{v}"), "line 4: context does not apply to the lm-eval protocol (its window is max_length)"),
            (format!("{HEAD}protocol = \"lm-eval\"\nmax_tokens = 16\n{v}"), "line 4: max_tokens does not apply to the lm-eval protocol"),
            (format!("{HEAD}protocol = \"lm-eval\"\nmax_length = 65\n{v}"), "line 4: max_length 65 exceeds a model's maximum length (64)"),
            (format!("{HEAD}save_nll = \"csv\"\n{v}"), "line 3: save_nll: 'csv' is not one of"),
            (format!("{HEAD}bootstrap_samples = 0\n{v}"), "line 3: bootstrap_samples must be at least 1"),
            (format!("{HEAD}[[variants]]\nname = \"a\"\nactivation = \"0-2:relu,1-3:sigmoid\"\n"), "line 5: variant 'a': activation: '0-2:relu,1-3:sigmoid': layers 1-2 given two activations"),
            (format!("{HEAD}[[variants]]\nname = \"a\"\nactivation = \"0:relu\"\nlayers = \"1\"\n"), "line 6: variant 'a': layers needs a single activation name"),
            (format!("{HEAD}[[variants]]\nname = \"a\"\nactivation = \"relu\"\nlayers = \"1-x\"\n"), "line 6: variant 'a': layers: layer spec '1-x'"),
            (format!("models = [\"tiny-gpt2\", \"./tiny-gpt2/\"]\ndatasets = [\"sample.txt\"]\n{v}"), "line 1: models: './tiny-gpt2/' is listed twice"),
            (format!("models = [\"tiny-gpt2\"]\ndatasets = [\"sample.txt\",\n  \"../fixtures/sample.txt\"]\n{v}"), "line 3: datasets: '../fixtures/sample.txt' is listed twice"),
            (format!("{HEAD}stride = 65\n{v}"), "line 3: stride 65 exceeds the context, n_positions 64 of"),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "want '{want}' in: {e}");
            assert!(e.starts_with(&fixture_dir().display().to_string()), "{e}");
            assert!(!e.contains('\n'), "multi-line: {e}");
        }
    }

    #[test]
    fn the_first_error_in_check_order_is_reported() {
        let v = "[[variants]]\nname = \"a\"\nactivation = \"nope\"\n";
        let e = parse(&format!(
            "{HEAD}context = 8\nstride = 9\nthreads = 0\nsort = \"x\"\n{v}"
        ));
        assert!(e
            .unwrap_err()
            .contains("line 5: threads must be at least 1"));
        let e = parse(&format!("{HEAD}context = 8\nstride = 9\nsort = \"x\"\n{v}"));
        assert!(e
            .unwrap_err()
            .contains("line 4: stride 9 exceeds context 8"));
        let e = parse(&format!("{HEAD}sort = \"x\"\n{v}"));
        assert!(e.unwrap_err().contains("line 3: sort: 'x'"));
    }
}
