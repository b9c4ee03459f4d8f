//! From-scratch comparison grids: one architecture (a `--from-scratch` TOML), one init seed,
//! one data order, one model trained per activation — the baseline (the architecture's own
//! activation) and each variant — then every model scored on every held-out dataset against
//! the baseline model. A config is such a grid when it has `from_scratch` instead of `models`:
//!
//! ```toml
//! from_scratch = "scratch-default.toml"
//! datasets = ["shakespeare-val"]       # held-out; the first is evaluated during training
//! context = 256                        # scoring and evaluation windows (stride: context)
//! [train]                              # as gpt-ablate train; data and steps required
//! data = "shakespeare-train"
//! steps = 200
//! target_loss = 5.0                    # report the steps each model took to reach it
//! [[variants]]
//! name = "relu"
//! activation = "relu"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::grid::config::SortOrder;
use crate::grid::training::TrainTable;
use crate::model::plan::{ActivationMap, ActivationPlan};
use crate::runtime::{DeviceSpec, Precision};
use crate::train::scratch::Scratch;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScratchGrid {
    from_scratch: String,
    datasets: Vec<String>,
    #[serde(default)]
    context: Option<usize>,
    #[serde(default)]
    stride: Option<usize>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default)]
    sort: Option<String>,
    train: TrainTable,
    #[serde(default)]
    baseline: Option<RawBaseline>,
    variants: Vec<RawVariant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaseline {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: String,
    activation: String,
}

/// One model to train: the baseline (no swap) or a variant.
#[derive(Debug, Clone)]
pub struct ScratchModel {
    pub name: String,
    pub swap: Option<ActivationMap>,
    pub plan: ActivationPlan,
}

/// A validated from-scratch comparison grid.
pub struct ScratchGrid {
    pub path: PathBuf,
    pub text: String,
    /// The architecture config and what it resolves to.
    pub from_scratch: PathBuf,
    pub scratch: Scratch,
    pub train_data: PathBuf,
    pub steps: usize,
    pub train: TrainTable,
    pub datasets: Vec<PathBuf>,
    pub context: usize,
    pub stride: usize,
    pub batch_size: usize,
    pub device: Option<DeviceSpec>,
    pub threads: Option<usize>,
    pub sort: SortOrder,
    /// The baseline first, then the variants.
    pub models: Vec<ScratchModel>,
}

/// Whether a config's text is a from-scratch grid (it names `from_scratch`).
pub fn is_scratch_grid(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("from_scratch"))
}

impl ScratchGrid {
    pub fn parse(path: &Path, text: &str) -> anyhow::Result<Self> {
        let file = path.display().to_string();
        let err = |msg: String| anyhow::anyhow!("{file}: {}", msg.replace('\n', " "));
        let raw: RawScratchGrid = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let from_scratch = base.join(&raw.from_scratch);
        let scratch =
            Scratch::from_file(&from_scratch).map_err(|e| err(format!("from_scratch: {e}")))?;
        let info = &scratch.config.info;
        let data =
            |d: &str, key: &str| resolve_data(base, d).map_err(|m| err(format!("{key}: {m}")));
        let train_data = data(raw.train.data.as_deref().unwrap_or_default(), "train.data")?;
        let steps = raw.train.steps.filter(|&s| s > 0).ok_or_else(|| {
            err("train.steps: give the steps each model trains (at least 1)".into())
        })?;
        if raw.datasets.is_empty() {
            return Err(err(
                "datasets: the list is empty (held-out texts to score)".into()
            ));
        }
        let datasets = raw
            .datasets
            .iter()
            .map(|d| data(d, "datasets"))
            .collect::<Result<Vec<_>, _>>()?;
        let (context, stride) = windows(&raw, info.n_positions).map_err(err)?;
        let models = models(&raw, &scratch).map_err(err)?;
        let device = raw
            .device
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| err(format!("device: {e}")))?;
        let sort = match raw.sort.as_deref() {
            None | Some("config") => SortOrder::Config,
            Some("perplexity") => SortOrder::Perplexity,
            Some(o) => return Err(err(format!("sort: '{o}' is not one of config, perplexity"))),
        };
        Ok(Self {
            path: path.to_path_buf(),
            text: text.to_string(),
            from_scratch,
            scratch,
            train_data,
            steps,
            train: raw.train,
            datasets,
            context,
            stride,
            batch_size: raw.batch_size.unwrap_or(8).max(1),
            device,
            threads: raw.threads,
            sort,
            models,
        })
    }

    /// The only precision these grids train and score in.
    pub fn dtype(&self) -> Precision {
        Precision::F32
    }
}

/// `context` (default n_positions) and `stride` (default the context), checked.
fn windows(raw: &RawScratchGrid, n_positions: usize) -> Result<(usize, usize), String> {
    let context = raw.context.unwrap_or(n_positions);
    if context < 2 || context > n_positions {
        return Err(format!(
            "context {context} must be between 2 and the model's {n_positions} positions"
        ));
    }
    let stride = raw.stride.unwrap_or(context);
    if stride == 0 || stride > context {
        return Err(format!(
            "stride {stride} must be between 1 and the context {context}"
        ));
    }
    Ok((context, stride))
}

/// The baseline (named by `[baseline]`, default the architecture's activation) and the
/// variants, with unique names and plans that fit the model.
fn models(raw: &RawScratchGrid, scratch: &Scratch) -> Result<Vec<ScratchModel>, String> {
    let own = scratch.config.plan();
    let name = raw
        .baseline
        .as_ref()
        .map_or(own.describe(), |b| b.name.trim().to_string());
    let mut out = vec![ScratchModel {
        name,
        swap: None,
        plan: own.clone(),
    }];
    if raw.variants.is_empty() {
        return Err(
            "variants: give at least one [[variants]] to train besides the baseline".into(),
        );
    }
    for v in &raw.variants {
        let name = v.name.trim().to_string();
        if name.is_empty() || out.iter().any(|m| m.name == name) {
            return Err(format!("variants: name '{name}' is empty or used twice"));
        }
        let map: ActivationMap = v
            .activation
            .parse()
            .map_err(|e| format!("variant '{name}': activation: {e}"))?;
        let plan = map
            .apply(own.clone())
            .map_err(|e| format!("variant '{name}': {e}"))?;
        out.push(ScratchModel {
            name,
            swap: Some(map),
            plan,
        });
    }
    Ok(out)
}

/// A data argument: a file relative to the config, a named dataset or an `hf:` path.
fn resolve_data(base: &Path, d: &str) -> Result<PathBuf, String> {
    if d.is_empty() {
        return Err("missing: give a file, a named dataset or an hf: path".into());
    }
    let p = base.join(d);
    if p.is_file() {
        Ok(p)
    } else if crate::data::is_data_name(d) {
        Ok(PathBuf::from(d))
    } else {
        Err(format!(
            "{} does not exist, and {d} is not a named dataset or an hf:ORG/NAME/path",
            p.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/scratch-default.toml");

    fn parse(body: &str) -> anyhow::Result<ScratchGrid> {
        let text = format!("from_scratch = \"{ARCH}\"\ndatasets = [\"shakespeare-val\"]\n{body}");
        ScratchGrid::parse(Path::new("/tmp/g.toml"), &text)
    }

    const VARIANT: &str = "[[variants]]\nname = \"relu\"\nactivation = \"relu\"\n";

    #[test]
    fn parses_models_and_defaults() {
        let g = parse(&format!(
            "[train]\ndata = \"shakespeare-train\"\nsteps = 5\n{VARIANT}"
        ))
        .unwrap();
        assert!(is_scratch_grid(&g.text));
        let names: Vec<&str> = g.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["gelu_new", "relu"]);
        assert_eq!((g.context, g.stride), (256, 256));
        assert_eq!(g.models[1].plan.describe(), "relu");
    }

    #[test]
    fn errors_name_the_key() {
        for (body, want) in [
            ("[train]\nsteps = 5\n", "train.data: missing"),
            ("[train]\ndata = \"shakespeare-train\"\n", "train.steps"),
            ("[train]\ndata = \"nope\"\nsteps = 1\n", "train.data:"),
            (
                "context = 999\n[train]\ndata = \"shakespeare-train\"\nsteps = 1\n",
                "context 999",
            ),
            (
                "[train]\ndata = \"shakespeare-train\"\nsteps = 1\nlr = \"x\"\n",
                "invalid type",
            ),
        ] {
            let text = format!("{body}{VARIANT}");
            let e = parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains(want) && e.starts_with("/tmp/g.toml"),
                "{want}: {e}"
            );
        }
        let e = parse("[train]\ndata = \"shakespeare-train\"\nsteps = 1\n[[variants]]\nname = \"x\"\nactivation = \"nope\"\n");
        assert!(e
            .err()
            .unwrap()
            .to_string()
            .contains("unknown activation 'nope'"));
    }
}
