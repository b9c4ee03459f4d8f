//! [`Hub`]: fetching single files of a repo into the shared cache.
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

use super::cache::{self, cached_commit, cached_file, Fetched};
use super::env::HubEnv;
use super::error::HubError;
use super::metadata::{parse_metadata, relative_redirect, Metadata};
use super::repo::{is_commit, RepoKind, RepoRef};
use crate::progress::DownloadProgress;

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
            // Progress is shown through `download_with_progress` (crate::progress).
            .with_progress(false)
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
            None if self.cache_only() => Err(self.not_cached(repo, format!("'{file}'"))),
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
        if self.cache_only() {
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
            if cache::is_known_missing(&dir, &commit, file) {
                return Ok(None);
            }
        }
        let meta = match self.metadata(repo, file) {
            Ok(m) => m,
            Err(HubError::EntryNotFound { .. }) => return Ok(None),
            Err(HubError::Network { endpoint, cause }) => {
                return self.fall_back(repo, file, endpoint, cause)
            }
            Err(e) => return Err(e),
        };
        let blob = cache::blob_path(&dir, &meta.etag);
        self.ensure_blob(repo, file, &meta, &blob)?;
        let path = cache::link_snapshot(&dir, &meta.commit, file, &blob)?;
        if repo.revision != meta.commit {
            cache::write_ref(&dir, &repo.revision, &meta.commit)?;
        }
        Ok(Some(Fetched {
            path,
            commit: meta.commit,
        }))
    }

    /// Offline, or fallen back to the cache after the Hub could not be reached.
    fn cache_only(&self) -> bool {
        self.env.offline || self.fell_back.get()
    }

    /// Like huggingface_hub: when the Hub cannot be reached, use the cache (from then on, for
    /// every file of this `Hub`); without a cached snapshot, the network error stands.
    fn fall_back(
        &self,
        repo: &RepoRef,
        file: &str,
        endpoint: String,
        cause: String,
    ) -> Result<Option<Fetched>, HubError> {
        let dir = self.repo_dir(repo);
        let Some(commit) = cached_commit(&dir, &repo.revision) else {
            return Err(HubError::Network { endpoint, cause });
        };
        eprintln!(
            "warning: cannot reach {endpoint} ({cause}); using the cached snapshot {commit} of {repo}"
        );
        self.fell_back.set(true);
        Ok(cached_file(&dir, &commit, file))
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

    /// Downloads the blob unless the cache already holds it whole, then checks its size.
    fn ensure_blob(
        &self,
        repo: &RepoRef,
        file: &str,
        meta: &Metadata,
        blob: &Path,
    ) -> Result<(), HubError> {
        if cache::blob_complete(blob, meta.size) {
            return Ok(());
        }
        self.download(repo, file, meta, blob)?;
        if cache::blob_complete(blob, meta.size) {
            return Ok(());
        }
        Err(download_error(
            repo,
            file,
            format!(
                "the downloaded blob {} does not have the announced size {:?}",
                blob.display(),
                meta.size
            ),
        ))
    }

    /// `Range: bytes=0-0` request for one file, following only relative redirects (renamed
    /// repos); the commit and blob come from the `X-Repo-Commit` and `X-Linked-Etag`/`ETag`
    /// headers, the size from `X-Linked-Size` or `Content-Range`.
    fn metadata(&self, repo: &RepoRef, file: &str) -> Result<Metadata, HubError> {
        let mut url = repo.url(&self.env.endpoint, file);
        for _ in 0..5 {
            let resp = self.request_first_byte(repo, file, &url)?;
            if let Some(next) = relative_redirect(&resp, &url) {
                let _ = resp.into_string();
                url = next;
                continue;
            }
            let meta = parse_metadata(&resp, &url)?;
            // Drain the (one-byte) body so the connection can be reused.
            let _ = resp
                .into_reader()
                .take(1 << 16)
                .read_to_end(&mut Vec::new());
            return Ok(meta);
        }
        Err(HubError::Http {
            url,
            status: 310,
            text: "too many redirects".into(),
        })
    }

    /// One `Range: bytes=0-0` GET of `url`; redirects come back as responses, other HTTP
    /// errors as [`HubError`]s.
    fn request_first_byte(
        &self,
        repo: &RepoRef,
        file: &str,
        url: &str,
    ) -> Result<ureq::Response, HubError> {
        let mut req = self.agent.get(url).set("Range", "bytes=0-0");
        if let Some(t) = &self.env.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, resp)) if (300..400).contains(&status) => Ok(resp),
            Err(ureq::Error::Status(status, resp)) => {
                Err(self.status_error(repo, file, url, status, &resp))
            }
            Err(ureq::Error::Transport(t)) => Err(self.network_error(&t)),
        }
    }

    fn network_error(&self, cause: &ureq::Transport) -> HubError {
        HubError::Network {
            endpoint: self.env.endpoint.clone(),
            cause: cause.to_string(),
        }
    }

    /// The Hub's answer to a failed request (`X-Error-Code`, else the HTTP status) as a
    /// [`HubError`].
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
                if let Some(commit) = resp.header("X-Repo-Commit").filter(|c| is_commit(c)) {
                    cache::mark_missing(&self.repo_dir(repo), commit, file);
                }
                HubError::EntryNotFound {
                    repo: repo.to_string(),
                    file: file.to_string(),
                }
            }
            "GatedRepo" => self.denied(name, status, DenyHints::GATED),
            _ if status == 401 || status == 403 => self.denied(name, status, DenyHints::NO_ACCESS),
            _ if status == 404 => HubError::EntryNotFound {
                repo: repo.to_string(),
                file: file.to_string(),
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

    /// [`HubError::Denied`], with the hint for whether a token was sent.
    fn denied(&self, repo: String, status: u16, hints: DenyHints) -> HubError {
        HubError::Denied {
            repo,
            status,
            hint: if self.env.token.is_some() {
                hints.with_token
            } else {
                hints.without_token
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
        announce_download(repo, file, meta.size);
        // Pin the download to the commit the metadata named, so all files of one call agree.
        let pinned = RepoRef {
            revision: meta.commit.clone(),
            ..repo.clone()
        };
        let api_repo = self.api.repo(pinned.hf_repo());
        let mut waited = 0u32;
        loop {
            if waited > 0 && blob.is_file() {
                break; // the other process finished it
            }
            match api_repo.download_with_progress(file, DownloadProgress::new()) {
                Ok(pointer) => {
                    cache::adopt_blob(&pointer, blob);
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
                    return Err(self.request_error(repo, file, *e))
                }
                Err(e) => return Err(download_error(repo, file, e.to_string())),
            }
        }
        cache::tidy_after_download(&self.repo_dir(repo), blob, &meta.commit);
        Ok(())
    }

    /// A failed hf-hub request as a [`HubError`], as for our own requests.
    fn request_error(&self, repo: &RepoRef, file: &str, e: ureq::Error) -> HubError {
        match e {
            ureq::Error::Transport(t) => self.network_error(&t),
            ureq::Error::Status(status, resp) => {
                let url = repo.url(&self.env.endpoint, file);
                self.status_error(repo, file, &url, status, &resp)
            }
        }
    }
}

/// The hints of a [`HubError::Denied`], with and without a token sent.
struct DenyHints {
    with_token: &'static str,
    without_token: &'static str,
}

impl DenyHints {
    const GATED: DenyHints = DenyHints {
        with_token: "your HF_TOKEN has no access: accept the repository's conditions on its Hub page with that account",
        without_token: "accept its conditions on its Hub page and set HF_TOKEN to a token of that account",
    };
    const NO_ACCESS: DenyHints = DenyHints {
        with_token: "HF_TOKEN was rejected or has no access to it",
        without_token: "set HF_TOKEN to a token with access to it",
    };
}

fn download_error(repo: &RepoRef, file: &str, msg: String) -> HubError {
    HubError::Download {
        repo: repo.to_string(),
        file: file.to_string(),
        msg,
    }
}

/// A line per download, also in logs (not under `--quiet`).
fn announce_download(repo: &RepoRef, file: &str, size: Option<u64>) {
    if crate::progress::quiet() {
        return;
    }
    let size = size
        .map(|n| format!(" ({})", human_bytes(n)))
        .unwrap_or_default();
    let kind = match repo.kind {
        RepoKind::Model => "",
        RepoKind::Dataset => "dataset ",
    };
    eprintln!("downloading {file} of {kind}{}{size}", repo.id);
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
    fn sizes() {
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    /// A missing file is named as the repo names it, not by the URL it was asked at.
    #[test]
    fn entry_not_found_names_the_file_not_the_url() {
        let hub = Hub::from_env();
        let repo = RepoRef::new(RepoKind::Model, "org/tiny", None);
        let url = "https://hub.example/org/tiny/resolve/main/sub/missing.txt";
        for raw in [
            "HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\n\r\n",
        ] {
            let resp: ureq::Response = raw.parse().unwrap();
            let e = hub.status_error(&repo, "sub/missing.txt", url, 404, &resp);
            assert_eq!(
                e.to_string(),
                "'sub/missing.txt' not found in Hub repository org/tiny"
            );
        }
    }
}
