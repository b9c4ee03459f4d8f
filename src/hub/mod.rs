//! The Hugging Face Hub: repo ids, the environment (`HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`,
//! `HF_ENDPOINT`, `HF_HUB_OFFLINE`) and fetching single files into the cache that Python's
//! huggingface_hub uses too (`models--org--name/{blobs,snapshots,refs,.no_exist}`).
//!
//! One small metadata request per file (`Range: bytes=0-0`, redirects not followed) says which
//! commit and blob a file is, so a blob already in the cache — fetched by us or by Python — is
//! linked, never downloaded twice, and the Hub's error codes become one-line messages. Missing
//! blobs are downloaded by the hf-hub crate (progress bar, lock, resumable part file). With
//! `HF_HUB_OFFLINE=1`, or when the Hub cannot be reached, files come from the cache alone;
//! a file pinned by commit that is already cached needs no request at all.

use std::cell::Cell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the Hub is and what the environment asks for.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// Base URL, no trailing slash (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// The hub cache (`HF_HUB_CACHE`, default `$HF_HOME/hub`).
    pub cache: PathBuf,
    /// `HF_TOKEN`, else the token file huggingface-cli login writes (`$HF_HOME/token`).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: use the cache only.
    pub offline: bool,
}

impl HubEnv {
    /// Reads the same variables, with the same defaults, as Python's huggingface_hub.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`HubEnv::from_env`] over any variable lookup (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
                var("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default()
                    .join(".cache")
            });
            cache.join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let file = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| home.join("token"));
                std::fs::read_to_string(file).ok()
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".into())
            .trim()
            .trim_end_matches('/')
            .to_string();
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "on" | "yes" | "true"
            )
        });
        Self {
            endpoint,
            cache,
            token,
            offline,
        }
    }
}

/// Model or dataset repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

/// A repository at a revision (branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub kind: RepoKind,
    pub id: String,
    pub revision: String,
}

impl RepoRef {
    pub fn new(kind: RepoKind, id: &str, revision: Option<&str>) -> Self {
        Self {
            kind,
            id: id.to_string(),
            revision: revision.unwrap_or("main").to_string(),
        }
    }

    /// The cache folder name, e.g. `models--openai-community--gpt2`.
    pub fn folder_name(&self) -> String {
        let kind = match self.kind {
            RepoKind::Model => hf_hub::RepoType::Model,
            RepoKind::Dataset => hf_hub::RepoType::Dataset,
        };
        hf_hub::Repo::new(self.id.clone(), kind).folder_name()
    }

    fn hf_repo(&self) -> hf_hub::Repo {
        let kind = match self.kind {
            RepoKind::Model => hf_hub::RepoType::Model,
            RepoKind::Dataset => hf_hub::RepoType::Dataset,
        };
        hf_hub::Repo::with_revision(self.id.clone(), kind, self.revision.clone())
    }

    /// The resolve URL of `file` under `endpoint`.
    pub fn url(&self, endpoint: &str, file: &str) -> String {
        let prefix = match self.kind {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
        };
        let file: Vec<String> = file.split('/').map(percent_encode).collect();
        format!(
            "{endpoint}/{prefix}{}/resolve/{}/{}",
            self.id,
            percent_encode(&self.revision),
            file.join("/")
        )
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == RepoKind::Dataset {
            write!(f, "dataset ")?;
        }
        write!(f, "{}", self.id)?;
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `id` is a valid Hub repo id: `name` or `org/name`, ASCII letters, digits, `-`, `_`
/// and `.`, no `--` or `..`, at most 96 characters (huggingface_hub's rules).
pub fn is_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
    };
    id.len() <= 96
        && (1..=2).contains(&parts.len())
        && parts.iter().all(|p| part_ok(p))
        && !id.contains("--")
        && !id.contains("..")
        && !id.ends_with(".git")
}

/// Whether a revision is usable as a branch, tag or commit name: non-empty, no `..`
/// component, no leading `/`, no backslash or control characters (it becomes a path under
/// `refs/` in the cache).
pub fn is_revision(rev: &str) -> bool {
    !rev.is_empty()
        && rev.len() <= 256
        && !rev.starts_with('/')
        && !rev.ends_with('/')
        && !rev
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        && !rev.chars().any(|c| c == '\\' || c.is_control())
}

/// Whether a revision names a commit (40 hex digits).
pub fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why a file could not be had from the Hub. Each message names the repo and what to do.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("Hub repository '{repo}' not found at {endpoint} (HTTP {status}); check the id, or set HF_TOKEN if it is private")]
    RepoNotFound {
        repo: String,
        endpoint: String,
        status: u16,
    },
    #[error("revision '{revision}' not found in Hub repository '{repo}' (HTTP {status})")]
    RevisionNotFound {
        repo: String,
        revision: String,
        status: u16,
    },
    #[error("'{file}' not found in Hub repository {repo}")]
    EntryNotFound { repo: String, file: String },
    #[error("Hub repository '{repo}' is gated or private (HTTP {status}): {hint}")]
    Denied {
        repo: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{url}: HTTP {status} {text}")]
    Http {
        url: String,
        status: u16,
        text: String,
    },
    #[error("cannot reach {endpoint} ({cause}); set HF_HUB_OFFLINE=1 to use the cache only, or pass a local directory")]
    Network { endpoint: String, cause: String },
    #[error("{url}: the response lacks the {header} header (is HF_ENDPOINT a Hugging Face Hub?)")]
    BadResponse { url: String, header: &'static str },
    #[error("{why} and {what} of {repo} is not in the cache {cache}{hint}")]
    NotCached {
        why: &'static str,
        repo: String,
        what: String,
        cache: PathBuf,
        hint: &'static str,
    },
    #[error("downloading {file} of {repo}: {msg}")]
    Download {
        repo: String,
        file: String,
        msg: String,
    },
    #[error("hub cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A file of a repo, in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `snapshots/<commit>/<file>` inside the cache.
    pub path: PathBuf,
    /// The commit it belongs to.
    pub commit: String,
}

/// What one metadata request found out.
#[derive(Debug)]
struct Metadata {
    commit: String,
    etag: String,
    size: Option<u64>,
}

/// Fetches files from the Hub into the shared cache.
pub struct Hub {
    env: HubEnv,
    agent: ureq::Agent,
    api: hf_hub::api::sync::Api,
    fell_back: Cell<bool>,
}

impl Hub {
    pub fn new(env: HubEnv) -> Self {
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .try_proxy_from_env(true)
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(60))
            .user_agent(concat!("gpt-ablate/", env!("CARGO_PKG_VERSION")))
            .build();
        let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(env.cache.clone()))
            .with_endpoint(env.endpoint.clone())
            .with_token(env.token.clone())
            .with_progress(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("HF_HUB_DISABLE_PROGRESS_BARS").is_none(),
            )
            .with_retries(3)
            .with_user_agent("gpt-ablate", env!("CARGO_PKG_VERSION"))
            .build()
            .expect("hf-hub's ureq client builds without native TLS");
        Self {
            env,
            agent,
            api,
            fell_back: Cell::new(false),
        }
    }

    pub fn from_env() -> Self {
        Self::new(HubEnv::from_env())
    }

    /// The cache folder of `repo`.
    pub fn repo_dir(&self, repo: &RepoRef) -> PathBuf {
        self.env.cache.join(repo.folder_name())
    }

    /// `file` of `repo`, which must exist.
    pub fn fetch(&self, repo: &RepoRef, file: &str) -> Result<Fetched, HubError> {
        match self.fetch_optional(repo, file)? {
            Some(f) => Ok(f),
            None if self.env.offline || self.fell_back.get() => {
                Err(self.not_cached(repo, format!("'{file}'")))
            }
            None => Err(HubError::EntryNotFound {
                repo: repo.to_string(),
                file: file.to_string(),
            }),
        }
    }

    /// `file` of `repo`, or `None` when the repo has no such file (or, offline, when the cache
    /// does not hold it). Errors for anything else: unknown repo, no access, network.
    pub fn fetch_optional(&self, repo: &RepoRef, file: &str) -> Result<Option<Fetched>, HubError> {
        let dir = self.repo_dir(repo);
        if self.env.offline || self.fell_back.get() {
            let Some(commit) = cached_commit(&dir, &repo.revision) else {
                return Err(self.not_cached(repo, format!("revision '{}'", repo.revision)));
            };
            return Ok(cached_file(&dir, &commit, file));
        }
        // A commit is immutable: what the cache holds for it needs no request.
        if is_commit(&repo.revision) {
            let commit = repo.revision.to_ascii_lowercase();
            if let Some(f) = cached_file(&dir, &commit, file) {
                return Ok(Some(f));
            }
            if dir.join(".no_exist").join(&commit).join(file).exists() {
                return Ok(None);
            }
        }
        let meta = match self.metadata(repo, file) {
            Ok(m) => m,
            Err(HubError::EntryNotFound { .. }) => return Ok(None),
            Err(HubError::Network { endpoint, cause }) => {
                // Like huggingface_hub: when the Hub cannot be reached, use the cache.
                if let Some(commit) = cached_commit(&dir, &repo.revision) {
                    eprintln!(
                        "warning: cannot reach {endpoint} ({cause}); using the cached snapshot {commit} of {repo}"
                    );
                    self.fell_back.set(true);
                    return Ok(cached_file(&dir, &commit, file));
                }
                return Err(HubError::Network { endpoint, cause });
            }
            Err(e) => return Err(e),
        };
        let blob = dir.join("blobs").join(&meta.etag);
        let size_ok = |p: &Path| match (std::fs::metadata(p), meta.size) {
            (Ok(m), Some(n)) => m.is_file() && m.len() == n,
            (Ok(m), None) => m.is_file(),
            _ => false,
        };
        if !size_ok(&blob) {
            self.download(repo, file, &meta, &blob)?;
            if !size_ok(&blob) {
                return Err(HubError::Download {
                    repo: repo.to_string(),
                    file: file.to_string(),
                    msg: format!(
                        "the downloaded blob {} does not have the announced size {:?}",
                        blob.display(),
                        meta.size
                    ),
                });
            }
        }
        let path = link_snapshot(&dir, &meta.commit, file, &blob)?;
        if repo.revision != meta.commit {
            write_ref(&dir, &repo.revision, &meta.commit)?;
        }
        Ok(Some(Fetched {
            path,
            commit: meta.commit,
        }))
    }

    fn not_cached(&self, repo: &RepoRef, what: String) -> HubError {
        let (why, hint) = if self.env.offline {
            (
                "HF_HUB_OFFLINE is set",
                "; unset HF_HUB_OFFLINE to download it",
            )
        } else {
            ("the Hub cannot be reached", "")
        };
        HubError::NotCached {
            why,
            repo: repo.to_string(),
            what,
            cache: self.repo_dir(repo),
            hint,
        }
    }

    /// `Range: bytes=0-0` request for one file, following only relative redirects (renamed
    /// repos); the commit and blob come from the `X-Repo-Commit` and `X-Linked-Etag`/`ETag`
    /// headers, the size from `X-Linked-Size` or `Content-Range`.
    fn metadata(&self, repo: &RepoRef, file: &str) -> Result<Metadata, HubError> {
        let mut url = repo.url(&self.env.endpoint, file);
        for _ in 0..5 {
            let mut req = self.agent.get(&url).set("Range", "bytes=0-0");
            if let Some(t) = &self.env.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(status, resp)) if (300..400).contains(&status) => resp,
                Err(ureq::Error::Status(status, resp)) => {
                    return Err(self.status_error(repo, file, &url, status, &resp))
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(HubError::Network {
                        endpoint: self.env.endpoint.clone(),
                        cause: t.to_string(),
                    })
                }
            };
            let status = resp.status();
            if (300..400).contains(&status) {
                if let Some(loc) = resp.header("Location").map(str::to_string) {
                    if loc.starts_with('/') {
                        let origin = origin_of(&url);
                        let _ = resp.into_string();
                        url = format!("{origin}{loc}");
                        continue;
                    }
                }
            }
            let header = |name: &'static str| resp.header(name).map(|v| v.trim().to_string());
            let etag = header("X-Linked-Etag")
                .or_else(|| header("ETag"))
                .map(|e| e.trim_start_matches("W/").replace('"', ""))
                .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
                .ok_or(HubError::BadResponse {
                    url: url.clone(),
                    header: "ETag",
                })?;
            let commit = header("X-Repo-Commit")
                .filter(|c| is_commit(c))
                .map(|c| c.to_ascii_lowercase())
                .ok_or(HubError::BadResponse {
                    url: url.clone(),
                    header: "X-Repo-Commit",
                })?;
            let size = header("X-Linked-Size")
                .and_then(|s| s.parse().ok())
                .or_else(|| {
                    header("Content-Range")
                        .and_then(|r| r.rsplit('/').next().and_then(|n| n.parse().ok()))
                })
                .or_else(|| {
                    (status == 200)
                        .then(|| header("Content-Length").and_then(|n| n.parse().ok()))
                        .flatten()
                });
            // Drain the (one-byte) body so the connection can be reused.
            let _ = resp
                .into_reader()
                .take(1 << 16)
                .read_to_end(&mut Vec::new());
            return Ok(Metadata { commit, etag, size });
        }
        Err(HubError::Http {
            url,
            status: 310,
            text: "too many redirects".into(),
        })
    }

    fn status_error(
        &self,
        repo: &RepoRef,
        file: &str,
        url: &str,
        status: u16,
        resp: &ureq::Response,
    ) -> HubError {
        let code = resp.header("X-Error-Code").unwrap_or_default().to_string();
        let message = resp
            .header("X-Error-Message")
            .unwrap_or_default()
            .to_string();
        let name = repo.id.clone();
        match code.as_str() {
            "RepoNotFound" => HubError::RepoNotFound {
                repo: name,
                endpoint: self.env.endpoint.clone(),
                status,
            },
            "RevisionNotFound" => HubError::RevisionNotFound {
                repo: name,
                revision: repo.revision.clone(),
                status,
            },
            "EntryNotFound" => {
                // Remember it as huggingface_hub does, so the next run asks no more.
                if let Some(commit) = resp.header("X-Repo-Commit").filter(|c| is_commit(c)) {
                    if !file.split('/').any(|c| c.is_empty() || c == "..") {
                        let marker = self
                            .repo_dir(repo)
                            .join(".no_exist")
                            .join(commit.to_ascii_lowercase())
                            .join(file);
                        if let Some(parent) = marker.parent() {
                            let _ = std::fs::create_dir_all(parent);
                            let _ = std::fs::write(&marker, b"");
                        }
                    }
                }
                HubError::EntryNotFound {
                    repo: repo.to_string(),
                    file: url.to_string(),
                }
            }
            "GatedRepo" => HubError::Denied {
                repo: name,
                status,
                hint: if self.env.token.is_some() {
                    "your HF_TOKEN has no access: accept the repository's conditions on its Hub page with that account"
                } else {
                    "accept its conditions on its Hub page and set HF_TOKEN to a token of that account"
                },
            },
            _ if status == 401 || status == 403 => HubError::Denied {
                repo: name,
                status,
                hint: if self.env.token.is_some() {
                    "HF_TOKEN was rejected or has no access to it"
                } else {
                    "set HF_TOKEN to a token with access to it"
                },
            },
            _ if status == 404 => HubError::EntryNotFound {
                repo: repo.to_string(),
                file: url.to_string(),
            },
            _ => HubError::Http {
                url: url.to_string(),
                status,
                text: if message.is_empty() {
                    resp.status_text().to_string()
                } else {
                    message
                },
            },
        }
    }

    /// Downloads the blob with hf-hub (progress bar on a terminal, resumable `.part` file,
    /// lock against concurrent downloads of the same blob).
    fn download(
        &self,
        repo: &RepoRef,
        file: &str,
        meta: &Metadata,
        blob: &Path,
    ) -> Result<(), HubError> {
        // A line per download, also in logs (the progress bar shows only on a terminal).
        let size = meta
            .size
            .map(|n| format!(" ({})", human_bytes(n)))
            .unwrap_or_default();
        let kind = match repo.kind {
            RepoKind::Model => "",
            RepoKind::Dataset => "dataset ",
        };
        eprintln!("downloading {file} of {kind}{}{size}", repo.id);
        // Pin the download to the commit the metadata named, so all files of one call agree.
        let pinned = RepoRef {
            revision: meta.commit.clone(),
            ..repo.clone()
        };
        let api_repo = self.api.repo(pinned.hf_repo());
        let fail = |msg: String| HubError::Download {
            repo: repo.to_string(),
            file: file.to_string(),
            msg,
        };
        let mut waited = 0u32;
        loop {
            if waited > 0 && blob.is_file() {
                break; // the other process finished it
            }
            match api_repo.download(file) {
                Ok(pointer) => {
                    // hf-hub names the blob by the ETag as sent; a weak ETag (`W/"…"`, which
                    // huggingface_hub normalises) would land elsewhere: move it to its name.
                    if let Ok(real) = std::fs::canonicalize(&pointer) {
                        if !blob.is_file() && real.is_file() && std::fs::rename(&real, blob).is_ok()
                        {
                            let _ = std::fs::remove_file(real.with_extension("lock"));
                            if let Some(dir) = real.parent() {
                                let _ = std::fs::remove_dir(dir); // only if empty
                            }
                        }
                    }
                    break;
                }
                // Another process holds the blob's lock: wait for its download to land.
                Err(hf_hub::api::sync::ApiError::LockAcquisition(_)) if waited < 3600 => {
                    if waited == 0 {
                        eprintln!("waiting for another process downloading {file} of {repo}");
                    }
                    std::thread::sleep(Duration::from_secs(2));
                    waited += 2;
                }
                Err(hf_hub::api::sync::ApiError::RequestError(e)) => {
                    return Err(match *e {
                        ureq::Error::Transport(t) => HubError::Network {
                            endpoint: self.env.endpoint.clone(),
                            cause: t.to_string(),
                        },
                        ureq::Error::Status(status, resp) => {
                            let url = repo.url(&self.env.endpoint, file);
                            self.status_error(repo, file, &url, status, &resp)
                        }
                    })
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        // hf-hub leaves its lock file and a ref named after the commit; huggingface_hub
        // keeps neither.
        let _ = std::fs::remove_file(blob.with_extension("lock"));
        let _ = std::fs::remove_file(self.repo_dir(repo).join("refs").join(&meta.commit));
        Ok(())
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
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

fn cached_file(repo_dir: &Path, commit: &str, file: &str) -> Option<Fetched> {
    let path = repo_dir.join("snapshots").join(commit).join(file);
    path.is_file().then(|| Fetched {
        path,
        commit: commit.to_string(),
    })
}

/// `snapshots/<commit>/<file>` → `../../blobs/<etag>` (relative symlink, as huggingface_hub
/// makes it; a copy where symlinks are not available).
fn link_snapshot(
    repo_dir: &Path,
    commit: &str,
    file: &str,
    blob: &Path,
) -> Result<PathBuf, HubError> {
    let pointer = repo_dir.join("snapshots").join(commit).join(file);
    let io = |source| HubError::Cache {
        path: pointer.clone(),
        source,
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

fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<(), HubError> {
    let path = repo_dir.join("refs").join(revision);
    if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
        return Ok(());
    }
    let io = |source| HubError::Cache {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(path.parent().expect("ref has a parent")).map_err(io)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, commit).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// `1.2 GiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_follows_huggingface_hub() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let env = HubEnv::from_vars(vars(&[("HOME", "/home/u")]));
        assert_eq!(env.cache, Path::new("/home/u/.cache/huggingface/hub"));
        assert_eq!(env.endpoint, "https://huggingface.co");
        assert!(!env.offline);
        let env = HubEnv::from_vars(vars(&[
            ("HF_HOME", "/h"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "True"),
            ("HF_TOKEN", " hf_x \n"),
        ]));
        assert_eq!(env.cache, Path::new("/h/hub"));
        assert_eq!(env.endpoint, "http://127.0.0.1:9");
        assert!(env.offline);
        assert_eq!(env.token.as_deref(), Some("hf_x"));
        let env = HubEnv::from_vars(vars(&[
            ("HF_HOME", "/h"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_HUB_OFFLINE", "0"),
        ]));
        assert_eq!(env.cache, Path::new("/c"));
        assert!(!env.offline);
    }

    #[test]
    fn repo_ids_and_urls() {
        for ok in [
            "gpt2",
            "openai-community/gpt2-medium",
            "a/b.c_d",
            "distilgpt2",
        ] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in [
            "", "a/b/c", "../x", "a--b/c", "a/.x", "x.git", "a b", "/abs", "a/", "./m",
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
        let r = RepoRef::new(RepoKind::Dataset, "org/set", Some("refs/pr/1"));
        assert_eq!(r.folder_name(), "datasets--org--set");
        assert_eq!(
            r.url("http://h", "dir/a b.jsonl"),
            "http://h/datasets/org/set/resolve/refs%2Fpr%2F1/dir/a%20b.jsonl"
        );
        assert_eq!(
            RepoRef::new(RepoKind::Model, "gpt2", None).folder_name(),
            "models--gpt2"
        );
        assert_eq!(origin_of("http://127.0.0.1:80/a/b"), "http://127.0.0.1:80");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
