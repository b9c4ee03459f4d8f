//! `hf:ORG/NAME[@REV]/path/in/repo`: a text or JSONL file of a Hub dataset repo, fetched into
//! the Hugging Face cache by [`crate::hub`].

use super::text::{read_text, TextError};
use crate::hub::{self, Hub, RepoKind, RepoRef};

/// Fetches the file an `hf:` spec names and reads it as [`read_text`] does.
pub(super) fn read_hub_data(spec: &str) -> Result<String, TextError> {
    let (repo, file) = parse_hub_data(spec)?;
    let hub = Hub::from_env();
    let fetched = hub.fetch(&repo, &file).map_err(|e| TextError::Hub {
        spec: spec.to_string(),
        msg: e.to_string(),
    })?;
    read_text(&fetched.path)
}

/// `hf:ORG/NAME[@REV]/path/in/repo` → the dataset repo and the file.
pub fn parse_hub_data(spec: &str) -> Result<(RepoRef, String), TextError> {
    let bad = |msg: &str| TextError::Hub {
        spec: spec.to_string(),
        msg: msg.to_string(),
    };
    let rest = spec
        .strip_prefix("hf:")
        .ok_or_else(|| bad("a Hub dataset path starts with hf:"))?;
    let mut parts = rest.splitn(3, '/');
    let (org, name, file) = match (parts.next(), parts.next(), parts.next()) {
        (Some(o), Some(n), Some(f)) if !f.is_empty() => (o, n, f),
        _ => return Err(bad("expected hf:ORG/NAME/path/in/repo (e.g. hf:Salesforce/wikitext/wikitext-2-raw-v1/test.txt)")),
    };
    let (name, revision) = match name.split_once('@') {
        Some((n, r)) if !r.is_empty() => (n, Some(r)),
        _ => (name, None),
    };
    let id = format!("{org}/{name}");
    if !hub::is_repo_id(&id) {
        return Err(bad("ORG/NAME is not a valid Hub repo id"));
    }
    if revision.is_some_and(|r| !hub::is_revision(r)) {
        return Err(bad("the @revision is not a valid branch, tag or commit"));
    }
    if file
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad(
            "the path in the repo must not contain empty, . or .. components",
        ));
    }
    Ok((
        RepoRef::new(RepoKind::Dataset, &id, revision),
        file.to_string(),
    ))
}
