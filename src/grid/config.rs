//! Ablation grid configs (TOML): what to run, checked before anything is computed, and
//! expanded into cells — one per model × dataset × variant (a layer sweep expands to one
//! variant per layer).
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

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

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
    baseline: Option<RawBaseline>,
    #[serde(default)]
    variants: Option<Spanned<Vec<RawVariant>>>,
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
    #[serde(default)]
    sweep_layers: bool,
    #[serde(default)]
    diagnose: bool,
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
    pub baseline_name: String,
    pub baseline_diagnose: bool,
    pub variants: Vec<Variant>,
}

/// One unit of work: a model, a dataset and the activation of every layer.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Position in the full expansion (shards take index mod N).
    pub index: usize,
    pub model: usize,
    pub dataset: usize,
    /// Variant name (`relu`, `sigmoid sweep@L3`, or the baseline's name).
    pub name: String,
    pub is_baseline: bool,
    /// For sweep cells: the sweep's name and the layer.
    pub sweep: Option<(String, usize)>,
    pub plan: ActivationPlan,
    /// Add per-layer diagnostics to this cell's row.
    pub diagnose: bool,
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
        let text = std::fs::read_to_string(path).map_err(|e| GridError {
            file: file.clone(),
            line: None,
            msg: format!("cannot read config: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text; relative paths resolve against `path`'s directory.
    pub fn parse(path: &Path, text: &str) -> Result<Self, GridError> {
        let file = path.display().to_string();
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let err = |span: Option<std::ops::Range<usize>>, msg: String| GridError {
            file: file.clone(),
            line: span.map(|s| line_of(s.start)),
            msg,
        };
        let raw: RawGrid =
            toml::from_str(text).map_err(|e| err(e.span(), e.message().to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        if raw.models.get_ref().is_empty() {
            return Err(err(
                Some(raw.models.span()),
                "models: the list is empty".into(),
            ));
        }
        let mut models = Vec::new();
        let mut model_configs = Vec::new();
        for m in raw.models.get_ref() {
            let spec = ModelSpec::parse(m.get_ref(), None, Some(base))
                .map_err(|e| err(Some(m.span()), format!("models: {e:#}")))?;
            let cfg = spec
                .config_path()
                .and_then(|p| Ok(ModelConfig::from_file(&p)?))
                .map_err(|e| err(Some(m.span()), format!("models: {e:#}")))?;
            models.push(spec);
            model_configs.push(cfg);
        }
        if raw.datasets.get_ref().is_empty() {
            return Err(err(
                Some(raw.datasets.span()),
                "datasets: the list is empty".into(),
            ));
        }
        let mut datasets = Vec::new();
        for d in raw.datasets.get_ref() {
            let p = resolve(d.get_ref());
            if p.is_file() {
                datasets.push(p);
            } else if crate::data::is_data_name(d.get_ref()) {
                datasets.push(PathBuf::from(d.get_ref()));
            } else {
                return Err(err(
                    Some(d.span()),
                    format!("datasets: file {} does not exist, and {} is not a named dataset or an hf:ORG/NAME/path", p.display(), d.get_ref()),
                ));
            }
        }
        let positive =
            |v: &Option<Spanned<usize>>, key: &str| -> Result<Option<usize>, GridError> {
                match v {
                    Some(s) if *s.get_ref() == 0 => {
                        Err(err(Some(s.span()), format!("{key} must be at least 1")))
                    }
                    Some(s) => Ok(Some(*s.get_ref())),
                    None => Ok(None),
                }
            };
        let context = positive(&raw.context, "context")?;
        let stride = positive(&raw.stride, "stride")?;
        let batch_size = positive(&raw.batch_size, "batch_size")?.unwrap_or(1);
        let max_tokens = positive(&raw.max_tokens, "max_tokens")?;
        let threads = positive(&raw.threads, "threads")?;
        if let (Some(c), Some(s)) = (&raw.context, &raw.stride) {
            if s.get_ref() > c.get_ref() {
                return Err(err(
                    Some(s.span()),
                    format!("stride {} exceeds context {}", s.get_ref(), c.get_ref()),
                ));
            }
        }
        if let Some(c) = &raw.context {
            for (m, cfg) in models.iter().zip(&model_configs) {
                if *c.get_ref() > cfg.info.n_positions {
                    return Err(err(
                        Some(c.span()),
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
        let device = raw
            .device
            .as_ref()
            .map(|d| {
                d.get_ref()
                    .parse::<DeviceSpec>()
                    .map_err(|e| err(Some(d.span()), format!("device: {e}")))
            })
            .transpose()?;
        let dtype = raw
            .dtype
            .as_ref()
            .map(|d| {
                <Precision as clap::ValueEnum>::from_str(d.get_ref(), true).map_err(|_| {
                    err(
                        Some(d.span()),
                        format!("dtype: '{}' is not one of f32, f16, bf16", d.get_ref()),
                    )
                })
            })
            .transpose()?;
        let sort = match raw.sort.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("config", _)) => SortOrder::Config,
            Some(("perplexity", _)) => SortOrder::Perplexity,
            Some((other, span)) => {
                return Err(err(
                    Some(span),
                    format!("sort: '{other}' is not one of config, perplexity"),
                ))
            }
        };

        let baseline_name = raw
            .baseline
            .as_ref()
            .and_then(|b| b.name.as_ref())
            .map(|n| n.get_ref().trim().to_string())
            .unwrap_or_else(|| "baseline".into());
        let baseline_diagnose = raw.baseline.as_ref().is_some_and(|b| b.diagnose);
        let Some(raw_variants) = raw.variants else {
            return Err(err(
                None,
                "no [[variants]]: add at least one variant to compare with the baseline".into(),
            ));
        };
        if raw_variants.get_ref().is_empty() {
            return Err(err(
                Some(raw_variants.span()),
                "variants: the list is empty".into(),
            ));
        }
        let mut variants: Vec<Variant> = Vec::new();
        let mut names = vec![baseline_name.clone()];
        for v in raw_variants.into_inner() {
            let name = v.name.get_ref().trim().to_string();
            if name.is_empty() {
                return Err(err(Some(v.name.span()), "variants: name is empty".into()));
            }
            if names.contains(&name) {
                return Err(err(
                    Some(v.name.span()),
                    format!("variants: duplicate name '{name}'"),
                ));
            }
            names.push(name.clone());
            let map: ActivationMap = v.activation.get_ref().parse().map_err(|e| {
                err(
                    Some(v.activation.span()),
                    format!("variant '{name}': activation: {e}"),
                )
            })?;
            if v.sweep_layers && (map.0.len() != 1 || map.0[0].0 != LayerSpec::All) {
                return Err(err(
                    Some(v.activation.span()),
                    format!("variant '{name}': sweep_layers needs a single activation name, not a per-layer map"),
                ));
            }
            for (m, cfg) in models.iter().zip(&model_configs) {
                let plan = ActivationPlan::original(Activation::Identity, cfg.info.n_layer);
                map.apply(plan).map_err(|e| {
                    err(
                        Some(v.activation.span()),
                        format!("variant '{name}': {e} ({})", m.display()),
                    )
                })?;
            }
            variants.push(Variant {
                name,
                map,
                sweep_layers: v.sweep_layers,
                diagnose: v.diagnose,
                activation: v.activation.into_inner(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            text: text.to_string(),
            models,
            model_configs,
            datasets,
            context,
            stride,
            batch_size,
            max_tokens,
            device,
            dtype,
            threads,
            sort,
            baseline_name,
            baseline_diagnose,
            variants,
        })
    }

    /// Every cell, in order: per model, per dataset, the baseline then each variant (sweeps
    /// expanded layer by layer).
    pub fn cells(&self) -> Vec<Cell> {
        let mut out = Vec::new();
        for (mi, cfg) in self.model_configs.iter().enumerate() {
            // Validated in `parse`, so the config's own activation is known.
            let original = cfg.info.activation;
            let base_plan = ActivationPlan::original(original, cfg.info.n_layer);
            for di in 0..self.datasets.len() {
                let mut push = |name: String, is_baseline, sweep, plan, diagnose| {
                    let index = out.len();
                    out.push(Cell {
                        index,
                        model: mi,
                        dataset: di,
                        name,
                        is_baseline,
                        sweep,
                        plan,
                        diagnose,
                    });
                };
                push(
                    self.baseline_name.clone(),
                    true,
                    None,
                    base_plan.clone(),
                    self.baseline_diagnose,
                );
                for v in &self.variants {
                    if v.sweep_layers {
                        let act = v.map.0[0].1;
                        for layer in 0..cfg.info.n_layer {
                            let spec = LayerSpec::Some([layer].into());
                            let plan = base_plan
                                .clone()
                                .swap(act, &spec)
                                .unwrap_or_else(|_| base_plan.clone());
                            let sweep = Some((v.name.clone(), layer));
                            push(
                                format!("{}@L{layer}", v.name),
                                false,
                                sweep,
                                plan,
                                v.diagnose,
                            );
                        }
                    } else {
                        let plan = v
                            .map
                            .apply(base_plan.clone())
                            .unwrap_or_else(|_| base_plan.clone());
                        push(v.name.clone(), false, None, plan, v.diagnose);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grid.toml")
    }

    fn parse(text: &str) -> Result<Grid, String> {
        Grid::parse(&fixture_dir(), text).map_err(|e| e.to_string())
    }

    const HEAD: &str = "models = [\"tiny-gpt2\"]\ndatasets = [\"sample.txt\"]\n";

    #[test]
    fn expands_variants_and_sweeps_into_cells() {
        let g = parse(&format!(
            "{HEAD}context = 64\n[[variants]]\nname = \"relu\"\nactivation = \"relu\"\n\
             [[variants]]\nname = \"mixed\"\nactivation = \"0-1:relu,2-3:sigmoid\"\n\
             [[variants]]\nname = \"sig\"\nactivation = \"sigmoid\"\nsweep_layers = true\n"
        ))
        .unwrap();
        let cells = g.cells();
        let names: Vec<&str> = cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["baseline", "relu", "mixed", "sig@L0", "sig@L1", "sig@L2", "sig@L3"]
        );
        assert!(cells[0].is_baseline && cells[0].plan.swapped_layers().is_empty());
        assert_eq!(cells[2].plan.describe(), "relu@0-1,sigmoid@2-3");
        assert_eq!(cells[5].plan.swapped_layers(), vec![2]);
        assert_eq!(cells[5].sweep, Some(("sig".to_string(), 2)));
        assert_eq!(
            cells.iter().map(|c| c.index).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
    }

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
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "want '{want}' in: {e}");
            assert!(e.starts_with(&fixture_dir().display().to_string()), "{e}");
            assert!(!e.contains('\n'), "multi-line: {e}");
        }
    }
}
