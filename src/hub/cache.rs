//! The cache layout Python's huggingface_hub uses, shared with it: per repo
//! (`models--org--name`, `datasets--org--name`) `refs/<revision>` holds a commit,
//! `snapshots/<commit>/<file>` links to `blobs/<etag>`, and `.no_exist/<commit>/<file>`
//! remembers files a commit does not have.

use std::path::{Path, PathBuf};

use super::error::HubError;
use super::repo::is_commit;

/// A file of a repo, in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `snapshots/<commit>/<file>` inside the cache.
    pub path: PathBuf,
    /// The commit it belongs to.
    pub commit: String,
}

/// The commit a revision points to in the cache: `refs/<revision>`, or the revision itself
/// when it is a commit with a snapshot.
pub fn cached_commit(repo_dir: &Path, revision: &str) -> Option<String> {
    if let Ok(c) = std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        let c = c.trim().to_ascii_lowercase();
        if is_commit(&c) {
            return Some(c);
        }
    }
    let rev = revision.to_ascii_lowercase();
    (is_commit(&rev) && repo_dir.join("snapshots").join(&rev).is_dir()).then_some(rev)
}

/// `file` at `commit`, when its snapshot holds it.
pub(super) fn cached_file(repo_dir: &Path, commit: &str, file: &str) -> Option<Fetched> {
    let path = repo_dir.join("snapshots").join(commit).join(file);
    path.is_file().then(|| Fetched {
        path,
        commit: commit.to_string(),
    })
}

/// Whether the cache remembers that `commit` has no `file` (`.no_exist/<commit>/<file>`).
pub(super) fn is_known_missing(repo_dir: &Path, commit: &str, file: &str) -> bool {
    repo_dir.join(".no_exist").join(commit).join(file).exists()
}

/// Remembers, as huggingface_hub does, that `commit` has no `file`, so the next run asks no
/// more. Best effort: a marker that cannot be written is skipped.
pub(super) fn mark_missing(repo_dir: &Path, commit: &str, file: &str) {
    if file.split('/').any(|c| c.is_empty() || c == "..") {
        return;
    }
    let marker = repo_dir
        .join(".no_exist")
        .join(commit.to_ascii_lowercase())
        .join(file);
    if let Some(parent) = marker.parent() {
        let _ = std::fs::create_dir_all(parent);
        let _ = std::fs::write(&marker, b"");
    }
}

/// Where the blob with `etag` lives.
pub(super) fn blob_path(repo_dir: &Path, etag: &str) -> PathBuf {
    repo_dir.join("blobs").join(etag)
}

/// Whether `blob` is a file of the announced size (any size when none was announced).
pub(super) fn blob_complete(blob: &Path, size: Option<u64>) -> bool {
    match (std::fs::metadata(blob), size) {
        (Ok(m), Some(n)) => m.is_file() && m.len() == n,
        (Ok(m), None) => m.is_file(),
        _ => false,
    }
}

/// hf-hub names the blob by the ETag as sent; a weak ETag (`W/"…"`, which huggingface_hub
/// normalises) would land elsewhere: move what `pointer` resolves to onto `blob`.
pub(super) fn adopt_blob(pointer: &Path, blob: &Path) {
    if let Ok(real) = std::fs::canonicalize(pointer) {
        if !blob.is_file() && real.is_file() && std::fs::rename(&real, blob).is_ok() {
            let _ = std::fs::remove_file(real.with_extension("lock"));
            if let Some(dir) = real.parent() {
                let _ = std::fs::remove_dir(dir); // only if empty
            }
        }
    }
}

/// hf-hub leaves its lock file and a ref named after the commit; huggingface_hub keeps
/// neither.
pub(super) fn tidy_after_download(repo_dir: &Path, blob: &Path, commit: &str) {
    let _ = std::fs::remove_file(blob.with_extension("lock"));
    let _ = std::fs::remove_file(repo_dir.join("refs").join(commit));
}

/// `snapshots/<commit>/<file>` → `../../blobs/<etag>` (relative symlink, as huggingface_hub
/// makes it; a copy where symlinks are not available).
pub(super) fn link_snapshot(
    repo_dir: &Path,
    commit: &str,
    file: &str,
    blob: &Path,
) -> Result<PathBuf, HubError> {
    let pointer = repo_dir.join("snapshots").join(commit).join(file);
    let io = |cause| HubError::Cache {
        path: pointer.clone(),
        cause,
    };
    if pointer.is_file() {
        return Ok(pointer);
    }
    let parent = pointer.parent().expect("pointer has a parent");
    std::fs::create_dir_all(parent).map_err(io)?;
    let _ = std::fs::remove_file(&pointer); // a dangling link
    let depth = file.split('/').count() + 1; // snapshots/<commit>/<dirs…>/file
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().expect("blob has a name"));
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&target, &pointer);
    #[cfg(not(unix))]
    let linked = std::fs::copy(blob, &pointer).map(|_| ());
    match linked {
        Ok(()) => Ok(pointer),
        Err(_) if pointer.is_file() => Ok(pointer), // another process linked it first
        Err(e) => Err(io(e)),
    }
}

/// Points `refs/<revision>` at `commit` (written atomically; untouched when it already does).
pub(super) fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<(), HubError> {
    let path = repo_dir.join("refs").join(revision);
    if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
        return Ok(());
    }
    let io = |cause| HubError::Cache {
        path: path.clone(),
        cause,
    };
    std::fs::create_dir_all(path.parent().expect("ref has a parent")).map_err(io)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, commit).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}
