//! [`TensorStore`]: the tensors of a checkpoint's weight files, indexed by bare GPT-2 key,
//! handed out once each with the shape checked, in the compute dtype on the target device;
//! [`TensorStore::finish`] fails on anything the model did not ask for.
//!
//! Keys are normalised to the bare layout of `openai-community/gpt2`
//! (`h.0.attn.c_attn.weight`); the `transformer.`-prefixed layout written by
//! `save_pretrained` is accepted too and errors quote keys as stored. The key layout lives
//! in two places here: `KEY_PREFIX` (used by `bare_key`, `is_known_buffer_stored` and
//! `TensorStore::shown`) and `is_known_buffer`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::{DType, Device, Tensor};

use super::error::LoadError;
use super::{pth, safetensors};

/// The prefix `save_pretrained` writes before the keys of the GPT-2 body
/// (`transformer.h.0.attn.c_attn.weight`); the store indexes keys without it.
const KEY_PREFIX: &str = "transformer.";

/// The bare key of a stored key, and whether it carried `KEY_PREFIX`.
fn bare_key(stored: &str) -> (String, bool) {
    match stored.strip_prefix(KEY_PREFIX) {
        Some(rest) => (rest.to_string(), true),
        None => (stored.to_string(), false),
    }
}

/// Keys every GPT-2 checkpoint may carry that are not weights: causal-mask buffers.
fn is_known_buffer(key: &str) -> bool {
    key.starts_with("h.") && (key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias"))
}

/// `is_known_buffer` for a key as stored, for the readers: a known buffer may have any
/// dtype, since it is never read.
pub(super) fn is_known_buffer_stored(stored: &str) -> bool {
    is_known_buffer(stored.trim_start_matches(KEY_PREFIX))
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Index into the store's files (set by the store; readers leave 0).
    pub(super) file: usize,
    pub(super) stored_key: String,
    pub(super) dtype: DType,
    pub(super) shape: Vec<usize>,
    /// Absolute byte range in the file (safetensors; unused for PyTorch files).
    pub(super) start: u64,
    pub(super) end: u64,
}

/// Makes the tensor a key names, with the shape asked for (on the CPU, in any float dtype).
pub type TensorMaker = Box<dyn FnMut(&str, &[usize]) -> candle_core::Result<Tensor> + Send>;

/// The tensors of a checkpoint, read on demand into the compute dtype on the target device.
pub struct TensorStore {
    /// Set for a store whose tensors are made, not read (a model trained from scratch).
    maker: Option<TensorMaker>,
    files: Vec<PathBuf>,
    /// For PyTorch files, candle's lazy reader of the archive.
    pth: Vec<Option<PthTensors>>,
    entries: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    prefixed: bool,
    dtype: DType,
    device: Device,
}

/// One file's tensors: safetensors, or the pickle of a PyTorch zip archive (with its lazy
/// reader), told apart by their first bytes.
fn read_file_header(path: &Path) -> Result<(Option<PthTensors>, Vec<Entry>), LoadError> {
    if pth::is_zip(path)? {
        let (reader, headers) = pth::read_pth_header(path)?;
        return Ok((Some(reader), headers));
    }
    if pth::has_torch_extension(path) {
        return Err(pth::not_a_zip(path));
    }
    Ok((None, safetensors::read_header(path)?))
}

impl TensorStore {
    /// Reads every file's header (safetensors, or the pickle of a PyTorch zip archive; told
    /// apart by their first bytes) and checks that each tensor's bytes lie inside its file.
    pub fn open(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self, LoadError> {
        let mut entries = BTreeMap::new();
        let mut prefixed = false;
        let mut pth = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let (reader, headers) = read_file_header(path)?;
            pth.push(reader);
            for mut e in headers {
                e.file = i;
                let (key, had_prefix) = bare_key(&e.stored_key);
                prefixed |= had_prefix;
                if entries.insert(key.clone(), e).is_some() {
                    return Err(LoadError::Duplicate { key });
                }
            }
        }
        Ok(Self {
            maker: None,
            files: files.to_vec(),
            pth,
            entries,
            taken: BTreeSet::new(),
            prefixed,
            dtype,
            device: device.clone(),
        })
    }

    /// A store with every key, each made by `maker` when it is taken (new weights for a model
    /// trained from scratch), converted to `dtype` on `device`.
    pub fn generated(maker: TensorMaker, dtype: DType, device: &Device) -> Self {
        Self {
            maker: Some(maker),
            files: Vec::new(),
            pth: Vec::new(),
            entries: BTreeMap::new(),
            taken: BTreeSet::new(),
            prefixed: false,
            dtype,
            device: device.clone(),
        }
    }

    /// The key layout, for messages: `transformer.`-prefixed (`save_pretrained`) or bare.
    pub fn layout_name(&self) -> &'static str {
        if self.prefixed {
            "transformer.-prefixed (save_pretrained)"
        } else {
            "bare (openai-community/gpt2)"
        }
    }

    /// Whether any key starts with `prefix` (as stored, after the `transformer.` stripping).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.entries.keys().any(|k| k.starts_with(prefix))
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
        self.maker.is_some() || self.entries.contains_key(key)
    }

    /// How a key is spelled in this checkpoint, for messages (`lm_head.` is never prefixed).
    fn shown(&self, key: &str) -> String {
        if self.prefixed && !key.starts_with("lm_head.") {
            format!("{KEY_PREFIX}{key}")
        } else {
            key.to_string()
        }
    }

    /// The tensor `key` (bare spelling), which must have exactly `shape`.
    pub fn take(&mut self, key: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        if let Some(make) = self.maker.as_mut() {
            let candle = |cause| LoadError::Candle {
                key: key.to_string(),
                cause,
            };
            let t = make(key, shape)
                .and_then(|t| t.to_dtype(self.dtype))
                .and_then(|t| t.to_device(&self.device))
                .map_err(candle)?;
            return Ok(t);
        }
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
        let candle = |cause| LoadError::Candle {
            key: entry.stored_key.clone(),
            cause,
        };
        let cpu = self.read_cpu(&entry, shape)?;
        let t = if cpu.dtype() == self.dtype {
            cpu
        } else {
            cpu.to_dtype(self.dtype).map_err(candle)?
        };
        t.to_device(&self.device).map_err(candle)
    }

    /// One tensor as stored, on the CPU, from whichever kind of file holds it.
    fn read_cpu(&self, entry: &Entry, shape: &[usize]) -> Result<Tensor, LoadError> {
        match &self.pth[entry.file] {
            Some(reader) => reader
                .get(&entry.stored_key)
                .map_err(|cause| LoadError::Candle {
                    key: entry.stored_key.clone(),
                    cause,
                })?
                .ok_or_else(|| LoadError::MissingKey {
                    key: entry.stored_key.clone(),
                    expected: shape.to_vec(),
                }),
            None => safetensors::read_tensor(&self.files[entry.file], entry),
        }
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
        let candle = |cause| LoadError::Candle {
            key: self.shown(key),
            cause,
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
