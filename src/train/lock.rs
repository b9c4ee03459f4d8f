//! One run per output directory: an exclusive advisory lock (`flock`) on `DIR/.lock`, held
//! while the run lives and released by the kernel when the process ends, even by `kill -9`.

use std::fs::{File, OpenOptions};
use std::path::Path;

/// Held for as long as it lives.
pub struct DirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{dir} is in use by another run (it holds {dir}/.lock); wait for it or use another directory")]
    Busy { dir: String },
    #[error("cannot lock {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

/// Creates `dir` if needed and locks it, or fails at once if another process holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    let shown = dir.display().to_string();
    let io = |source| LockError::Io {
        dir: shown.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => LockError::Busy { dir: shown },
                _ => io(e),
            });
        }
    }
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let first = lock_dir(&out).unwrap();
        let err = lock_dir(&out).err().unwrap().to_string();
        assert!(err.contains("in use by another run"), "{err}");
        drop(first);
        assert!(lock_dir(&out).is_ok());
    }
}
