//! A checkpoint on disk: finding its files (a local directory, or a Hub repo fetched into the
//! cache by [`crate::hub`]), reading its tensors strictly — safetensors (single file or
//! sharded) or PyTorch `pytorch_model.bin` — and handing the model each tensor by its GPT-2
//! key with the shape checked.
//!
//! Safetensors are read with plain file reads straight into their final buffers — no mmap — so
//! peak memory stays close to the size of the weights. Keys are normalised to the bare
//! layout of `openai-community/gpt2` (`h.0.attn.c_attn.weight`); the `transformer.`-prefixed
//! layout written by `save_pretrained` is accepted too and errors quote keys as stored.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::hub::{self, Hub, RepoKind, RepoRef};

/// Why a checkpoint cannot be loaded. Every variant names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model {0}: no such directory, and not a Hub repo id (name or org/name)")]
    NoDir(String),
    #[error(
        "model {0} is a file; pass the checkpoint directory (config.json, weights, tokenizer)"
    )]
    NotADir(PathBuf),
    #[error("{place}: no {what} found")]
    MissingFile { place: String, what: &'static str },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{path}: not a readable PyTorch checkpoint (zip format, torch >= 1.6): {msg}")]
    Pickle { path: PathBuf, msg: String },
    #[error(
        "{path}: file is truncated: tensor '{key}' ends at byte {need} but the file has {have}"
    )]
    Truncated {
        path: PathBuf,
        key: String,
        need: u64,
        have: u64,
    },
    #[error("{path}: {msg}")]
    ShardIndex { path: PathBuf, msg: String },
    #[error("checkpoint is missing tensor '{key}' (expected shape {expected:?})")]
    MissingKey { key: String, expected: Vec<usize> },
    #[error("tensor '{key}' has shape {found:?}, expected {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor '{key}' has dtype {dtype}; only F32, F16, BF16 and F64 weights are supported")]
    Dtype { key: String, dtype: String },
    #[error("tensor '{key}' appears twice in the checkpoint")]
    Duplicate { key: String },
    #[error("checkpoint has {count} unexpected tensor(s), e.g. '{first}' (does config.json match the weights?)")]
    Unexpected { count: usize, first: String },
    #[error("{msg}")]
    Config { msg: String },
    #[error("loading tensor '{key}': {source}")]
    Candle {
        key: String,
        source: candle_core::Error,
    },
}

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
            Some(b) if Path::new(spec).is_relative() => b.join(spec),
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
    format: WeightFormat,
    index: Option<PathBuf>,
    weights: Vec<PathBuf>,
}

impl Selected {
    fn into_files(self, dir: PathBuf, source: ModelSource) -> CheckpointFiles {
        CheckpointFiles {
            dir,
            source,
            config: self.config,
            tokenizer: self.tokenizer,
            format: self.format,
            index: self.index,
            weights: self.weights,
        }
    }
}

/// The file choice, over any way of asking for a file by name (`Ok(None)`: not there).
fn select<E: From<LoadError>>(
    place: &str,
    mut get: impl FnMut(&str) -> Result<Option<PathBuf>, E>,
) -> Result<Selected, E> {
    let missing = |what| {
        E::from(LoadError::MissingFile {
            place: place.to_string(),
            what,
        })
    };
    let config = get("config.json")?.ok_or_else(|| missing("config.json"))?;
    let tokenizer = match get("tokenizer.json")? {
        Some(p) => TokenizerFiles::Json(p),
        None => match (get("vocab.json")?, get("merges.txt")?) {
            (Some(vocab), Some(merges)) => TokenizerFiles::VocabMerges { vocab, merges },
            _ => {
                return Err(missing(
                    "tokenizer (tokenizer.json, or vocab.json + merges.txt)",
                ))
            }
        },
    };
    for (single, index_name, format) in WEIGHT_CHOICES {
        if let Some(p) = get(single)? {
            return Ok(Selected {
                config,
                tokenizer,
                format,
                index: None,
                weights: vec![p],
            });
        }
        if let Some(index) = get(index_name)? {
            let mut weights = Vec::new();
            for shard in shard_names(&index)? {
                let p = get(&shard)?.ok_or_else(|| {
                    E::from(LoadError::ShardIndex {
                        path: index.clone(),
                        msg: format!("shard '{shard}' is missing"),
                    })
                })?;
                weights.push(p);
            }
            return Ok(Selected {
                config,
                tokenizer,
                format,
                index: Some(index),
                weights,
            });
        }
    }
    Err(missing(
        "weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)",
    ))
}

/// The shard file names an index's `weight_map` lists, sorted, each once.
fn shard_names(index: &Path) -> Result<Vec<String>, LoadError> {
    let bad = |msg: String| LoadError::ShardIndex {
        path: index.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
        path: index.to_path_buf(),
        source,
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

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    stored_key: String,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file (safetensors; unused for PyTorch files).
    start: u64,
    end: u64,
}

/// Zip archives (`torch.save` since torch 1.6) start with a local-file-header signature.
fn is_zip(path: &Path) -> Result<bool, LoadError> {
    let mut magic = [0u8; 4];
    let mut f = File::open(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(f.read_exact(&mut magic).is_ok() && &magic == b"PK\x03\x04")
}

/// Keys every GPT-2 checkpoint may carry that are not weights: causal-mask buffers.
fn is_known_buffer(key: &str) -> bool {
    key.starts_with("h.") && (key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias"))
}

/// The tensors of a checkpoint, read on demand into the compute dtype on the target device.
pub struct TensorStore {
    files: Vec<PathBuf>,
    /// For PyTorch files, candle's lazy reader of the archive.
    pth: Vec<Option<candle_core::pickle::PthTensors>>,
    entries: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    prefixed: bool,
    dtype: DType,
    device: Device,
}

impl TensorStore {
    /// Reads every file's header (safetensors, or the pickle of a PyTorch zip archive; told
    /// apart by their first bytes) and checks that each tensor's bytes lie inside its file.
    pub fn open(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self, LoadError> {
        let mut entries = BTreeMap::new();
        let mut prefixed = false;
        let mut pth = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let headers = if is_zip(path)? {
                let (reader, headers) = read_pth_header(path)?;
                pth.push(Some(reader));
                headers
            } else if path
                .extension()
                .is_some_and(|e| e == "bin" || e == "pt" || e == "pth")
            {
                return Err(LoadError::Pickle {
                    path: path.clone(),
                    msg: "not a zip archive (a legacy torch < 1.6 file, or truncated); re-save it with a current torch or convert it to safetensors".into(),
                });
            } else {
                pth.push(None);
                read_header(path)?
            };
            for mut e in headers {
                e.file = i;
                let key = match e.stored_key.strip_prefix("transformer.") {
                    Some(rest) => {
                        prefixed = true;
                        rest.to_string()
                    }
                    None => e.stored_key.clone(),
                };
                if entries.insert(key.clone(), e).is_some() {
                    return Err(LoadError::Duplicate { key });
                }
            }
        }
        Ok(Self {
            files: files.to_vec(),
            pth,
            entries,
            taken: BTreeSet::new(),
            prefixed,
            dtype,
            device: device.clone(),
        })
    }

    /// `"transformer."` when the checkpoint uses the `save_pretrained` layout, else `""`.
    pub fn layout_name(&self) -> &'static str {
        if self.prefixed {
            "transformer.-prefixed (save_pretrained)"
        } else {
            "bare (openai-community/gpt2)"
        }
    }

    /// Every stored tensor: (key as stored, dtype, shape), the mask buffers flagged.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, DType, &[usize], bool)> {
        self.entries.iter().map(|(k, e)| {
            (
                e.stored_key.as_str(),
                e.dtype,
                e.shape.as_slice(),
                is_known_buffer(k),
            )
        })
    }

    /// The dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Where the tensors are put.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// How a key is spelled in this checkpoint, for messages.
    fn shown(&self, key: &str) -> String {
        if self.prefixed && !key.starts_with("lm_head.") {
            format!("transformer.{key}")
        } else {
            key.to_string()
        }
    }

    /// The tensor `key` (bare spelling), which must have exactly `shape`.
    pub fn take(&mut self, key: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        let entry = self.entries.get(key).ok_or_else(|| LoadError::MissingKey {
            key: self.shown(key),
            expected: shape.to_vec(),
        })?;
        if entry.shape != shape {
            return Err(LoadError::Shape {
                key: entry.stored_key.clone(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let entry = entry.clone();
        self.taken.insert(key.to_string());
        let candle = |source| LoadError::Candle {
            key: entry.stored_key.clone(),
            source,
        };
        let cpu = match &self.pth[entry.file] {
            Some(reader) => reader
                .get(&entry.stored_key)
                .map_err(candle)?
                .ok_or_else(|| LoadError::MissingKey {
                    key: entry.stored_key.clone(),
                    expected: shape.to_vec(),
                })?,
            None => read_tensor(&self.files[entry.file], &entry)?,
        };
        let t = if cpu.dtype() == self.dtype {
            cpu
        } else {
            cpu.to_dtype(self.dtype).map_err(candle)?
        };
        t.to_device(&self.device).map_err(candle)
    }

    /// A GPT-2 `Conv1D` weight stored `(in, out)`, returned transposed to `(out, in)` — the
    /// one place the transpose happens.
    pub fn take_conv1d(
        &mut self,
        key: &str,
        n_in: usize,
        n_out: usize,
    ) -> Result<Tensor, LoadError> {
        let t = self.take(key, &[n_in, n_out])?;
        let candle = |source| LoadError::Candle {
            key: self.shown(key),
            source,
        };
        t.t().and_then(|t| t.contiguous()).map_err(candle)
    }

    /// Fails if the checkpoint holds tensors the model did not ask for (other than the known
    /// mask buffers and the keys `also_ignore` accepts).
    pub fn finish(self, also_ignore: &dyn Fn(&str) -> bool) -> Result<(), LoadError> {
        let left: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|(k, _)| !self.taken.contains(*k) && !is_known_buffer(k) && !also_ignore(k))
            .map(|(_, e)| e)
            .collect();
        match left.first() {
            None => Ok(()),
            Some(e) => Err(LoadError::Unexpected {
                count: left.len(),
                first: e.stored_key.clone(),
            }),
        }
    }
}

/// Lists the tensors of a PyTorch zip archive (`pytorch_model.bin`) without reading them.
fn read_pth_header(
    path: &Path,
) -> Result<(candle_core::pickle::PthTensors, Vec<Entry>), LoadError> {
    let reader =
        candle_core::pickle::PthTensors::new(path, None).map_err(|e| LoadError::Pickle {
            path: path.to_path_buf(),
            msg: e.to_string().lines().next().unwrap_or_default().to_string(),
        })?;
    let mut out = Vec::new();
    for (key, info) in reader.tensor_infos() {
        let dtype = match info.dtype {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => info.dtype,
            other if is_known_buffer(key.trim_start_matches("transformer.")) => other,
            other => {
                return Err(LoadError::Dtype {
                    key: key.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        out.push(Entry {
            file: 0,
            stored_key: key.clone(),
            dtype,
            shape: info.layout.dims().to_vec(),
            start: 0,
            end: 0,
        });
    }
    if out.is_empty() {
        return Err(LoadError::Pickle {
            path: path.to_path_buf(),
            msg: "it holds no tensors (is it a state dict?)".into(),
        });
    }
    out.sort_by(|a, b| a.stored_key.cmp(&b.stored_key));
    Ok((reader, out))
}

/// Parses a safetensors header: 8-byte little-endian length, then a JSON table of tensors.
fn read_header(path: &Path) -> Result<Vec<Entry>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |msg: String| LoadError::Corrupt {
        path: path.to_path_buf(),
        msg,
    };
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes)
        .map_err(|_| corrupt(format!("only {file_len} bytes, too short for a header")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(corrupt(format!(
            "header length {header_len} does not fit in a {file_len}-byte file"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(io)?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("header is not JSON: {e}")))?;
    let base = 8 + header_len;
    let mut out = Vec::new();
    for (key, info) in json {
        if key == "__metadata__" {
            continue;
        }
        let bad = |what: &str| corrupt(format!("tensor '{key}': {what}"));
        let dtype_name = info
            .get("dtype")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("no dtype"))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad("bad shape"))?;
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect())
            .ok_or_else(|| bad("bad data_offsets"))?;
        let [begin, end] = offsets[..] else {
            return Err(bad("data_offsets needs two numbers"));
        };
        let dtype = match dtype_name {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            other => {
                // Mask buffers are sometimes stored as bool/u8; they are never read.
                if is_known_buffer(key.trim_start_matches("transformer.")) {
                    DType::U8
                } else {
                    return Err(LoadError::Dtype {
                        key,
                        dtype: other.to_string(),
                    });
                }
            }
        };
        let elems = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let want_bytes = elems.and_then(|n| n.checked_mul(dtype.size_in_bytes() as u64));
        if dtype != DType::U8 && (end < begin || Some(end - begin) != want_bytes) {
            return Err(bad(&format!(
                "byte range {begin}..{end} does not match shape {shape:?} of {dtype_name}"
            )));
        }
        if base + end > file_len {
            return Err(LoadError::Truncated {
                path: path.to_path_buf(),
                key,
                need: base + end,
                have: file_len,
            });
        }
        out.push(Entry {
            file: 0,
            stored_key: key,
            dtype,
            shape,
            start: base + begin,
            end: base + end,
        });
    }
    Ok(out)
}

/// Reads one tensor's bytes into a CPU tensor of its stored dtype. f32 data is read straight
/// into the tensor's own buffer (no intermediate copy).
fn read_tensor(path: &Path, e: &Entry) -> Result<Tensor, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let candle = |source| LoadError::Candle {
        key: e.stored_key.clone(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    f.seek(SeekFrom::Start(e.start)).map_err(io)?;
    let n: usize = e.shape.iter().product();
    let shape = e.shape.as_slice();
    if e.dtype == DType::F32 && cfg!(target_endian = "little") {
        let mut v = vec![0f32; n];
        f.read_exact(bytemuck::cast_slice_mut(&mut v)).map_err(io)?;
        return Tensor::from_vec(v, shape, &Device::Cpu).map_err(candle);
    }
    let mut bytes = vec![0u8; (e.end - e.start) as usize];
    f.read_exact(&mut bytes).map_err(io)?;
    Tensor::from_raw_buffer(&bytes, e.dtype, shape, &Device::Cpu).map_err(candle)
}
