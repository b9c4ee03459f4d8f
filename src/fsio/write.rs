//! Writing results so that a failure — disk full, quota, permissions — names the file and
//! loses nothing: [`write_atomic`] replaces a file through a temporary file that is removed
//! on error, and [`append_line`] cuts a partial line off again when a write fails.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A write that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {cause}")]
pub struct WriteError {
    pub path: PathBuf,
    pub cause: std::io::Error,
}

fn fail(path: &Path) -> impl Fn(std::io::Error) -> WriteError + '_ {
    move |cause| WriteError {
        path: path.to_path_buf(),
        cause,
    }
}

/// The temporary file `path` is written through: `.NAME.tmp` beside it.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `contents` to `path` through a temporary file and a rename, so readers never see
/// a half-written file; on any error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    let tmp = temporary(path);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(path)(e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(path)(e));
    }
    sync_parent(path);
    Ok(())
}

/// Makes a rename durable (best effort: not every file system can sync a directory).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Appends `line` (which must end in `\n`) to `path` and flushes it to disk. When the write
/// fails part-way the file is cut back to its previous length, so it never ends in a partial
/// line.
pub fn append_line(path: &Path, line: &str) -> Result<(), WriteError> {
    debug_assert!(line.ends_with('\n'));
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(fail(path))?;
    let before = f.metadata().map_err(fail(path))?.len();
    let written = f.write_all(line.as_bytes()).and_then(|()| f.sync_data());
    if let Err(e) = written {
        let _ = f.set_len(before);
        let _ = f.sync_data();
        return Err(fail(path)(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write_atomic(&dir.path().join("no/such/dir/x"), b"x").unwrap_err();
        assert!(err.to_string().contains("no/such/dir/x"), "{err}");
    }

    #[test]
    fn appends_add_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        append_line(&p, "a\n").unwrap();
        append_line(&p, "b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
    }
}
