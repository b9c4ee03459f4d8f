//! Safetensors files: the header (8-byte little-endian length, then a JSON table of
//! tensors), checked strictly against the file, and single tensors read with plain file
//! reads straight into their buffers — no mmap.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::error::LoadError;
use super::store::{is_known_buffer_stored, Entry};

fn corrupt(path: &Path, msg: String) -> LoadError {
    LoadError::Corrupt {
        path: path.to_path_buf(),
        msg,
    }
}

/// Parses a safetensors header: every tensor but `__metadata__`, its bytes checked to lie
/// inside the file.
pub(super) fn read_header(path: &Path) -> Result<Vec<Entry>, LoadError> {
    let (json, base, file_len) = read_header_json(path)?;
    let mut out = Vec::new();
    for (key, info) in json {
        if key == "__metadata__" {
            continue;
        }
        out.push(parse_entry(path, key, &info, base, file_len)?);
    }
    Ok(out)
}

/// The header's JSON table, where the data starts (`8 + header length`) and the file length.
fn read_header_json(
    path: &Path,
) -> Result<(serde_json::Map<String, serde_json::Value>, u64, u64), LoadError> {
    let io = |cause| LoadError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(|_| {
        corrupt(
            path,
            format!("only {file_len} bytes, too short for a header"),
        )
    })?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(corrupt(
            path,
            format!("header length {header_len} does not fit in a {file_len}-byte file"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(io)?;
    let json = serde_json::from_slice(&header)
        .map_err(|e| corrupt(path, format!("header is not JSON: {e}")))?;
    Ok((json, 8 + header_len, file_len))
}

/// One tensor's header entry; `base` is where the data starts in a `file_len`-byte file.
fn parse_entry(
    path: &Path,
    key: String,
    info: &serde_json::Value,
    base: u64,
    file_len: u64,
) -> Result<Entry, LoadError> {
    let bad = |what: &str| corrupt(path, format!("tensor '{key}': {what}"));
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
    if end < begin {
        return Err(bad(&format!(
            "byte range {begin}..{end} ends before it begins"
        )));
    }
    let dtype = stored_dtype(&key, dtype_name)?;
    let want_bytes = byte_size(&shape, dtype);
    if dtype != DType::U8 && Some(end - begin) != want_bytes {
        return Err(bad(&format!(
            "byte range {begin}..{end} does not match shape {shape:?} of {dtype_name}"
        )));
    }
    let need = base
        .checked_add(end)
        .ok_or_else(|| bad(&format!("byte range {begin}..{end} is beyond any file")))?;
    if need > file_len {
        return Err(LoadError::Truncated {
            path: path.to_path_buf(),
            key,
            need,
            have: file_len,
        });
    }
    Ok(Entry {
        file: 0,
        stored_key: key,
        dtype,
        shape,
        start: base + begin,
        end: base + end,
    })
}

/// The dtype a header names: a float type, or — for mask buffers, sometimes stored as
/// bool/u8 and never read — `U8` whatever it says.
fn stored_dtype(key: &str, name: &str) -> Result<DType, LoadError> {
    match name {
        "F32" => Ok(DType::F32),
        "F16" => Ok(DType::F16),
        "BF16" => Ok(DType::BF16),
        "F64" => Ok(DType::F64),
        _ if is_known_buffer_stored(key) => Ok(DType::U8),
        other => Err(LoadError::Dtype {
            key: key.to_string(),
            dtype: other.to_string(),
        }),
    }
}

/// Bytes of a `shape` tensor of `dtype`; `None` on overflow.
fn byte_size(shape: &[usize], dtype: DType) -> Option<u64> {
    let elems = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    elems.and_then(|n| n.checked_mul(dtype.size_in_bytes() as u64))
}

/// Reads one tensor's bytes into a CPU tensor of its stored dtype. f32, bf16 and f16 data is
/// read straight into the tensor's own buffer (no intermediate copy, so loading never holds
/// a tensor twice).
pub(super) fn read_tensor(path: &Path, e: &Entry) -> Result<Tensor, LoadError> {
    let io = |cause| LoadError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let candle = |cause| LoadError::Candle {
        key: e.stored_key.clone(),
        cause,
    };
    let mut f = File::open(path).map_err(io)?;
    f.seek(SeekFrom::Start(e.start)).map_err(io)?;
    let n: usize = e.shape.iter().product();
    let shape = e.shape.as_slice();
    if cfg!(target_endian = "little") {
        let direct = match e.dtype {
            DType::F32 => Some(read_into::<f32>(&mut f, n, shape)),
            DType::BF16 => Some(read_into::<half::bf16>(&mut f, n, shape)),
            DType::F16 => Some(read_into::<half::f16>(&mut f, n, shape)),
            _ => None,
        };
        if let Some(read) = direct {
            return read.map_err(|r| match r {
                Direct::Io(cause) => io(cause),
                Direct::Candle(cause) => candle(cause),
            });
        }
    }
    let mut bytes = vec![0u8; (e.end - e.start) as usize];
    f.read_exact(&mut bytes).map_err(io)?;
    Tensor::from_raw_buffer(&bytes, e.dtype, shape, &Device::Cpu).map_err(candle)
}

enum Direct {
    Io(std::io::Error),
    Candle(candle_core::Error),
}

/// `n` values of `T` read from `f`'s position into a new tensor of `shape`.
fn read_into<T: candle_core::WithDType + bytemuck::Pod>(
    f: &mut File,
    n: usize,
    shape: &[usize],
) -> Result<Tensor, Direct> {
    let mut v: Vec<T> = vec![bytemuck::Zeroable::zeroed(); n];
    f.read_exact(bytemuck::cast_slice_mut(&mut v))
        .map_err(Direct::Io)?;
    Tensor::from_vec(v, shape, &Device::Cpu).map_err(Direct::Candle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_that_overflow_or_run_backwards_are_corrupt_not_a_panic() {
        let p = Path::new("m.safetensors");
        let entry = |dtype: &str, begin: u64, end: u64, base: u64| {
            let info =
                serde_json::json!({"dtype": dtype, "shape": [2], "data_offsets": [begin, end]});
            parse_entry(p, "h.0.attn.bias".into(), &info, base, 1 << 20)
                .err()
                .map(|e| e.to_string())
        };
        let e = entry("U8", 8, 2, 8).expect("reversed range refused");
        assert!(e.contains("ends before it begins"), "{e}");
        let e = entry("U8", u64::MAX - 1, u64::MAX, 16).expect("overflow refused");
        assert!(e.contains("beyond any file"), "{e}");
        let e = entry("F32", 0, 8, 1 << 20).expect("past the end refused");
        assert!(!e.contains("beyond any file"), "{e}");
        assert!(entry("F32", 0, 8, 64).is_none());
    }
}
