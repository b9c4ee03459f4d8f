//! [`read_limited`]: reading a whole file that must be a regular file no larger than a limit.
//! A FIFO that never closes, `/dev/zero` or a 40 GB file is refused at once instead of
//! growing memory without bound.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest data file read by default (1 GiB); `GPT_ABLATE_MAX_DATA_BYTES` changes it.
pub const DEFAULT_DATA_LIMIT: u64 = 1 << 30;

/// The environment variable that overrides [`DEFAULT_DATA_LIMIT`].
pub const DATA_LIMIT_ENV: &str = "GPT_ABLATE_MAX_DATA_BYTES";

/// Largest config, manifest or prompt file (64 MiB).
pub const SMALL_FILE_LIMIT: u64 = 64 << 20;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path} is {kind}, not a regular file; give a file (copy the data into one)")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} is larger than {limit} bytes, the most read at once{hint}")]
    TooLarge {
        path: PathBuf,
        limit: u64,
        hint: &'static str,
    },
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{var}='{value}': not a number of bytes")]
    BadLimit { var: &'static str, value: String },
}

impl ReadError {
    /// The message without the path, for messages that name the file already.
    pub fn reason(&self) -> String {
        match self {
            Self::Missing { .. } => "does not exist".into(),
            Self::NotRegular { kind, .. } => format!("is {kind}, not a regular file"),
            Self::TooLarge { limit, .. } => format!("is larger than {limit} bytes"),
            Self::Io { cause, .. } => format!("cannot be read: {cause}"),
            Self::BadLimit { .. } => self.to_string(),
        }
    }
}

/// The data size limit: `GPT_ABLATE_MAX_DATA_BYTES`, else [`DEFAULT_DATA_LIMIT`].
pub fn data_limit() -> Result<u64, ReadError> {
    match std::env::var(DATA_LIMIT_ENV) {
        Ok(v) => v.trim().parse().map_err(|_| ReadError::BadLimit {
            var: DATA_LIMIT_ENV,
            value: v,
        }),
        Err(_) => Ok(DEFAULT_DATA_LIMIT),
    }
}

/// What a non-regular file is, in words.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Reads `path`, which must be a regular file of at most `limit` bytes. The file is checked
/// before it is opened (opening a FIFO would block) and read through a limit (it may grow).
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = open_regular(path)?;
    let meta = file.metadata().map_err(|cause| io_error(path, cause))?;
    let too_large = || ReadError::TooLarge {
        path: path.to_path_buf(),
        limit,
        hint: if limit == data_limit().unwrap_or(DEFAULT_DATA_LIMIT) {
            " (set GPT_ABLATE_MAX_DATA_BYTES to raise it)"
        } else {
            ""
        },
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|cause| io_error(path, cause))?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Opens `path` for streaming reads (Parquet), after checking that it is a regular file so
/// that a FIFO or device is refused instead of blocking.
pub fn open_regular(path: &Path) -> Result<std::fs::File, ReadError> {
    let io = |cause| io_error(path, cause);
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    std::fs::File::open(path).map_err(io)
}

/// [`read_limited`] for text that must be UTF-8 (configs, manifests).
pub fn read_limited_to_string(path: &Path, limit: u64) -> Result<String, ReadError> {
    let bytes = read_limited(path, limit)?;
    String::from_utf8(bytes).map_err(|e| ReadError::Io {
        path: path.to_path_buf(),
        cause: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })
}

/// An I/O error on `path`: missing, or the cause.
fn io_error(path: &Path, cause: std::io::Error) -> ReadError {
    match cause.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing {
            path: path.to_path_buf(),
        },
        _ => ReadError::Io {
            path: path.to_path_buf(),
            cause,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_oversized_files_are_refused() {
        let err = read_limited(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = read_limited(dir.path(), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        let p = dir.path().join("big.txt");
        std::fs::write(&p, vec![b'a'; 100]).unwrap();
        assert!(read_limited(&p, 99)
            .unwrap_err()
            .to_string()
            .contains("larger than 99 bytes"));
        assert_eq!(read_limited(&p, 100).unwrap().len(), 100);
        assert!(matches!(
            read_limited(&dir.path().join("none"), 1),
            Err(ReadError::Missing { .. })
        ));
    }
}
