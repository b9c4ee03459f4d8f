//! The Hugging Face Hub: repo ids, the environment (`HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`,
//! `HF_ENDPOINT`, `HF_HUB_OFFLINE`) and fetching single files into the cache that Python's
//! huggingface_hub uses too (`models--org--name/{blobs,snapshots,refs,.no_exist}`).
//!
//! - `env`: [`HubEnv`], what the environment asks for.
//! - `repo`: [`RepoRef`] and [`RepoKind`]; id, revision and commit validation.
//! - `client`: [`Hub`]: fetching a file — metadata request, download, cache-only fallback.
//! - `metadata`: reading a metadata response (commit, ETag, size, relative redirects).
//! - `cache`: the cache layout (refs, snapshots, blobs, `.no_exist`) and [`Fetched`].
//! - `error`: [`HubError`].

mod cache;
mod client;
mod env;
mod error;
mod metadata;
mod repo;

pub use cache::{cached_commit, Fetched};
pub use client::{human_bytes, Hub};
pub use env::HubEnv;
pub use error::HubError;
pub use repo::{is_commit, is_repo_id, is_revision, RepoKind, RepoRef};
