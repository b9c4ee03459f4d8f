//! PyTorch checkpoints (`pytorch_model.bin`): `torch.save` zip archives, listed through
//! candle's lazy pickle reader without reading any tensor data.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use candle_core::pickle::PthTensors;
use candle_core::DType;

use super::error::LoadError;
use super::store::{is_known_buffer_stored, Entry};

/// Zip archives (`torch.save` since torch 1.6) start with a local-file-header signature.
pub(super) fn is_zip(path: &Path) -> Result<bool, LoadError> {
    let mut magic = [0u8; 4];
    let mut f = File::open(path).map_err(|cause| LoadError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    Ok(f.read_exact(&mut magic).is_ok() && &magic == b"PK\x03\x04")
}

/// Whether the file is named as a PyTorch checkpoint (`.bin`, `.pt`, `.pth`).
pub(super) fn has_torch_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "bin" || e == "pt" || e == "pth")
}

/// The error for a PyTorch-named file that is not a zip archive.
pub(super) fn not_a_zip(path: &Path) -> LoadError {
    LoadError::Pickle {
        path: path.to_path_buf(),
        msg: "not a zip archive (a legacy torch < 1.6 file, or truncated); re-save it with a current torch or convert it to safetensors".into(),
    }
}

/// Lists the tensors of a PyTorch zip archive (`pytorch_model.bin`) without reading them.
pub(super) fn read_pth_header(path: &Path) -> Result<(PthTensors, Vec<Entry>), LoadError> {
    let reader = PthTensors::new(path, None).map_err(|e| LoadError::Pickle {
        path: path.to_path_buf(),
        msg: e.to_string().lines().next().unwrap_or_default().to_string(),
    })?;
    let mut out = Vec::new();
    for (key, info) in reader.tensor_infos() {
        let dtype = match info.dtype {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => info.dtype,
            other if is_known_buffer_stored(key) => other,
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
