//! Which files make a checkpoint: `--model` as a local directory or a Hub repo
//! ([`ModelSpec`]), and the choice of config, tokenizer and weights ([`CheckpointFiles`]) —
//! the same choice over a directory and over a Hub repo fetched into the cache.

use std::path::{Path, PathBuf};

use super::error::LoadError;
use crate::hub::{self, Hub, RepoKind, RepoRef};

/// Where a checkpoint came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local directory, as given.
    Local(PathBuf),
    /// A Hub repo, with the commit its files were fetched at.
    Hub { repo: RepoRef, commit: String },
}

impl ModelSource {
    /// For result files: where the weights came from, with the Hub commit when there is one.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ModelSource::Local(p) => {
                serde_json::json!({"kind": "local", "path": p.display().to_string()})
            }
            ModelSource::Hub { repo, commit } => serde_json::json!({
                "kind": "hub", "id": repo.id, "revision": repo.revision, "commit": commit,
            }),
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Local(p) => write!(f, "{}", p.display()),
            ModelSource::Hub { repo, commit } => write!(f, "{} (hub, commit {commit})", repo.id),
        }
    }
}

/// The tokenizer files: a `tokenizer.json`, or GPT-2's byte-level BPE `vocab.json` +
/// `merges.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerFiles {
    Json(PathBuf),
    VocabMerges { vocab: PathBuf, merges: PathBuf },
}

impl TokenizerFiles {
    pub fn paths(&self) -> Vec<&PathBuf> {
        match self {
            TokenizerFiles::Json(p) => vec![p],
            TokenizerFiles::VocabMerges { vocab, merges } => vec![vocab, merges],
        }
    }
}

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Safetensors,
    /// `torch.save` zip archives (`pytorch_model.bin`).
    PyTorch,
}

/// The files of a checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    /// The directory holding them (for a Hub model: its snapshot in the cache).
    pub dir: PathBuf,
    pub source: ModelSource,
    pub config: PathBuf,
    pub tokenizer: TokenizerFiles,
    /// `tokenizer_config.json` when the checkpoint has one: its special tokens (read for the
    /// lm-eval protocol's prefix token). Not part of [`Self::all_files`].
    pub tokenizer_config: Option<PathBuf>,
    pub format: WeightFormat,
    /// The shard index, when the weights are sharded.
    pub index: Option<PathBuf>,
    /// One weights file, or the shards the index names, in name order.
    pub weights: Vec<PathBuf>,
}

/// Weight files in order of preference: (file, index of shards, format).
const WEIGHT_CHOICES: [(&str, &str, WeightFormat); 2] = [
    (
        "model.safetensors",
        "model.safetensors.index.json",
        WeightFormat::Safetensors,
    ),
    (
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        WeightFormat::PyTorch,
    ),
];

impl CheckpointFiles {
    /// Resolves `--model` (see [`ModelSpec::parse`]) and finds or fetches its files.
    pub fn resolve(spec: &str, revision: Option<&str>) -> anyhow::Result<Self> {
        ModelSpec::parse(spec, revision, None)?.resolve()
    }

    /// Finds `config.json`, the tokenizer (`tokenizer.json`, else `vocab.json` +
    /// `merges.txt`) and the weights (`model.safetensors`, a sharded safetensors index,
    /// `pytorch_model.bin`, a sharded PyTorch index — in that order) in `dir`.
    pub fn locate(dir: &Path) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::NoDir(dir.display().to_string()));
        }
        let place = dir.display().to_string();
        let found = select(&place, |name| {
            let p = dir.join(name);
            Ok::<_, LoadError>(p.is_file().then_some(p))
        })?;
        Ok(found.into_files(dir.to_path_buf(), ModelSource::Local(dir.to_path_buf())))
    }

    /// The same choice over the files of a Hub repo, each fetched into the cache (or found
    /// there) at one commit.
    pub fn from_hub(hub: &Hub, repo: &RepoRef) -> anyhow::Result<Self> {
        // The first file pins the commit; the rest are fetched at that commit.
        let config = hub.fetch(repo, "config.json")?;
        let pinned = RepoRef {
            revision: config.commit.clone(),
            ..repo.clone()
        };
        let place = format!("Hub repository {repo}");
        let found = select(&place, |name| {
            if name == "config.json" {
                return Ok(Some(config.path.clone()));
            }
            Ok::<_, anyhow::Error>(hub.fetch_optional(&pinned, name)?.map(|f| f.path))
        })?;
        let dir = config
            .path
            .parent()
            .expect("a snapshot file has a parent")
            .to_path_buf();
        Ok(found.into_files(
            dir,
            ModelSource::Hub {
                repo: repo.clone(),
                commit: config.commit,
            },
        ))
    }

    /// Every file, for hashing and sizes: config, tokenizer, index, weights.
    pub fn all_files(&self) -> Vec<&PathBuf> {
        let mut v = vec![&self.config];
        v.extend(self.tokenizer.paths());
        v.extend(self.index.iter());
        v.extend(self.weights.iter());
        v
    }
}

/// A model as named on the command line or in a grid config, before anything is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    Local(PathBuf),
    Hub(RepoRef),
}

impl ModelSpec {
    /// An existing local directory (relative to `base` when given), else a Hub repo id
    /// (`gpt2`, `org/name`, optionally `@revision`; `revision` is `--revision`).
    pub fn parse(spec: &str, revision: Option<&str>, base: Option<&Path>) -> anyhow::Result<Self> {
        let path = match base {
            Some(b) if Path::new(spec).is_relative() => crate::fsio::clean(&b.join(spec)),
            _ => PathBuf::from(spec),
        };
        if path.is_dir() {
            if let Some(rev) = revision {
                anyhow::bail!(
                    "--revision {rev}: {spec} is a local directory; revisions apply to Hub ids"
                );
            }
            return Ok(ModelSpec::Local(path));
        }
        if path.is_file() {
            return Err(LoadError::NotADir(path).into());
        }
        let (id, rev) = match spec.rsplit_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, Some(rev)),
            _ => (spec, None),
        };
        let revision = match (rev, revision) {
            (Some(a), Some(b)) if a != b => {
                anyhow::bail!("model {spec}: revision given twice (@{a} and --revision {b})")
            }
            (a, b) => a.or(b),
        };
        if !hub::is_repo_id(id) {
            return Err(LoadError::NoDir(path.display().to_string()).into());
        }
        if let Some(rev) = revision.filter(|r| !hub::is_revision(r)) {
            anyhow::bail!(
                "model {spec}: '{rev}' is not a valid revision (a branch, tag or commit)"
            );
        }
        Ok(ModelSpec::Hub(RepoRef::new(RepoKind::Model, id, revision)))
    }

    /// Finds (local) or fetches (Hub) the checkpoint's files.
    pub fn resolve(&self) -> anyhow::Result<CheckpointFiles> {
        match self {
            ModelSpec::Local(dir) => Ok(CheckpointFiles::locate(dir)?),
            ModelSpec::Hub(repo) => {
                CheckpointFiles::from_hub(&Hub::from_env(), repo).map_err(|e| self.hub_context(e))
            }
        }
    }

    /// Only `config.json` (for validating a grid before fetching weights).
    pub fn config_path(&self) -> anyhow::Result<PathBuf> {
        match self {
            ModelSpec::Local(dir) => Ok(dir.join("config.json")),
            ModelSpec::Hub(repo) => Hub::from_env()
                .fetch(repo, "config.json")
                .map(|f| f.path)
                .map_err(|e| self.hub_context(e.into())),
        }
    }

    fn hub_context(&self, e: anyhow::Error) -> anyhow::Error {
        // `models/gpt2` may be a mistyped local path rather than a Hub id.
        let typed = self.to_string();
        let mistyped_path = typed
            .split_once('/')
            .is_some_and(|(first, _)| Path::new(first).is_dir());
        if mistyped_path {
            e.context(format!("model {self}: no such local directory; on the Hub"))
        } else {
            e.context(format!("model {self}"))
        }
    }

    /// `display()` as for paths, so call sites read the same for both kinds.
    pub fn display(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSpec::Local(p) => write!(f, "{}", p.display()),
            ModelSpec::Hub(repo) => write!(f, "{repo}"),
        }
    }
}

/// What [`select`] found.
struct Selected {
    config: PathBuf,
    tokenizer: TokenizerFiles,
    tokenizer_config: Option<PathBuf>,
    weights: Weights,
}

/// The chosen weights: their format, the shard index if any, and the files.
struct Weights {
    format: WeightFormat,
    index: Option<PathBuf>,
    files: Vec<PathBuf>,
}

impl Selected {
    fn into_files(self, dir: PathBuf, source: ModelSource) -> CheckpointFiles {
        CheckpointFiles {
            dir,
            source,
            config: self.config,
            tokenizer: self.tokenizer,
            tokenizer_config: self.tokenizer_config,
            format: self.weights.format,
            index: self.weights.index,
            weights: self.weights.files,
        }
    }
}

fn missing(place: &str, what: &'static str) -> LoadError {
    LoadError::MissingFile {
        place: place.to_string(),
        what,
    }
}

/// The file choice, over any way of asking for a file by name (`Ok(None)`: not there).
/// Files are asked for in order: config, tokenizer, tokenizer_config.json (optional),
/// weights.
fn select<E: From<LoadError>>(
    place: &str,
    mut get: impl FnMut(&str) -> Result<Option<PathBuf>, E>,
) -> Result<Selected, E> {
    let config = get("config.json")?.ok_or_else(|| missing(place, "config.json"))?;
    let tokenizer = select_tokenizer(place, &mut get)?;
    let tokenizer_config = get("tokenizer_config.json")?;
    let weights = select_weights(place, &mut get)?;
    Ok(Selected {
        config,
        tokenizer,
        tokenizer_config,
        weights,
    })
}

/// `tokenizer.json`, else `vocab.json` + `merges.txt`.
fn select_tokenizer<E: From<LoadError>>(
    place: &str,
    get: &mut impl FnMut(&str) -> Result<Option<PathBuf>, E>,
) -> Result<TokenizerFiles, E> {
    if let Some(p) = get("tokenizer.json")? {
        return Ok(TokenizerFiles::Json(p));
    }
    match (get("vocab.json")?, get("merges.txt")?) {
        (Some(vocab), Some(merges)) => Ok(TokenizerFiles::VocabMerges { vocab, merges }),
        _ => Err(missing(
            place,
            "tokenizer (tokenizer.json, or vocab.json + merges.txt)",
        )
        .into()),
    }
}

/// The first of [`WEIGHT_CHOICES`] present, as one file or as an index and its shards.
fn select_weights<E: From<LoadError>>(
    place: &str,
    get: &mut impl FnMut(&str) -> Result<Option<PathBuf>, E>,
) -> Result<Weights, E> {
    for (single, index_name, format) in WEIGHT_CHOICES {
        if let Some(p) = get(single)? {
            return Ok(Weights {
                format,
                index: None,
                files: vec![p],
            });
        }
        if let Some(index) = get(index_name)? {
            let files = shard_paths(&index, get)?;
            return Ok(Weights {
                format,
                index: Some(index),
                files,
            });
        }
    }
    Err(missing(
        place,
        "weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)",
    )
    .into())
}

/// Every shard `index` names, each of which must be there.
fn shard_paths<E: From<LoadError>>(
    index: &Path,
    get: &mut impl FnMut(&str) -> Result<Option<PathBuf>, E>,
) -> Result<Vec<PathBuf>, E> {
    let mut paths = Vec::new();
    for shard in shard_names(index)? {
        let p = get(&shard)?.ok_or_else(|| LoadError::ShardIndex {
            path: index.to_path_buf(),
            msg: format!("shard '{shard}' is missing"),
        })?;
        paths.push(p);
    }
    Ok(paths)
}

/// The shard file names an index's `weight_map` lists, sorted, each once.
fn shard_names(index: &Path) -> Result<Vec<String>, LoadError> {
    let bad = |msg: String| LoadError::ShardIndex {
        path: index.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(index).map_err(|cause| LoadError::Io {
        path: index.to_path_buf(),
        cause,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for (key, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map entry for '{key}' is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(bad(format!(
                "shard name '{file}' must be a plain file name"
            )));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    if files.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    files.sort();
    Ok(files)
}
