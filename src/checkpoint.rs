//! A checkpoint directory on disk: finding its files, reading safetensors (single file or
//! sharded) strictly, and handing the model each tensor by its GPT-2 key with the shape
//! checked.
//!
//! Tensors are read with plain file reads straight into their final buffers — no mmap — so
//! peak memory stays close to the size of the weights. Keys are normalised to the bare
//! layout of `openai-community/gpt2` (`h.0.attn.c_attn.weight`); the `transformer.`-prefixed
//! layout written by `save_pretrained` is accepted too and errors quote keys as stored.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// Why a checkpoint cannot be loaded. Every variant names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model directory {0} does not exist (Hub ids are not supported yet: pass a local checkpoint directory)")]
    NoDir(PathBuf),
    #[error("{dir}: no {what} found")]
    MissingFile { dir: PathBuf, what: &'static str },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Corrupt { path: PathBuf, msg: String },
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
    #[error("loading tensor '{key}': {source}")]
    Candle {
        key: String,
        source: candle_core::Error,
    },
}

/// The files of a checkpoint directory.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    /// One `model.safetensors`, or the shards an index names, in index order.
    pub weights: Vec<PathBuf>,
}

impl CheckpointFiles {
    /// Finds `config.json`, `tokenizer.json` and the weights (`model.safetensors`, else
    /// `model.safetensors.index.json` and its shards) in `dir`.
    pub fn locate(dir: &Path) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::NoDir(dir.to_path_buf()));
        }
        let need = |name: &str, what: &'static str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(LoadError::MissingFile {
                    dir: dir.to_path_buf(),
                    what,
                })
            }
        };
        let config = need("config.json", "config.json")?;
        let tokenizer = need("tokenizer.json", "tokenizer.json")?;
        let single = dir.join("model.safetensors");
        let weights = if single.is_file() {
            vec![single]
        } else {
            let index = need(
                "model.safetensors.index.json",
                "weights (model.safetensors or model.safetensors.index.json)",
            )?;
            shards_from_index(dir, &index)?
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            weights,
        })
    }
}

fn shards_from_index(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, LoadError> {
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
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(&f);
            if p.is_file() {
                Ok(p)
            } else {
                Err(bad(format!("shard '{f}' is missing")))
            }
        })
        .collect()
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    stored_key: String,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// Keys every GPT-2 checkpoint may carry that are not weights: causal-mask buffers.
fn is_known_buffer(key: &str) -> bool {
    key.starts_with("h.") && (key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias"))
}

/// The tensors of a checkpoint, read on demand into the compute dtype on the target device.
pub struct TensorStore {
    files: Vec<PathBuf>,
    entries: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    prefixed: bool,
    dtype: DType,
    device: Device,
}

impl TensorStore {
    /// Reads every file's header and checks that each tensor's bytes lie inside its file.
    pub fn open(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self, LoadError> {
        let mut entries = BTreeMap::new();
        let mut prefixed = false;
        for (i, path) in files.iter().enumerate() {
            for mut e in read_header(path)? {
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
        let cpu = read_tensor(&self.files[entry.file], &entry)?;
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
    /// mask buffers and anything listed in `also_ignore`).
    pub fn finish(self, also_ignore: &[&str]) -> Result<(), LoadError> {
        let left: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|(k, _)| {
                !self.taken.contains(*k)
                    && !is_known_buffer(k)
                    && !also_ignore.contains(&k.as_str())
            })
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
