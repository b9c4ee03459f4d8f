//! [`HubError`]: why a file could not be had from the Hub, as one-line messages.

use std::path::PathBuf;

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
    #[error("hub cache {path}: {cause}")]
    Cache {
        path: PathBuf,
        cause: std::io::Error,
    },
}
