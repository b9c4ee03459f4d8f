//! Reading the Hub's answer to a metadata request: the commit, blob (ETag) and size of a
//! file from the `X-Repo-Commit`, `X-Linked-Etag`/`ETag` and `X-Linked-Size`/`Content-Range`
//! headers, and where a relative redirect (a renamed repo) leads.

use super::error::HubError;
use super::repo::is_commit;

/// What one metadata request found out.
#[derive(Debug)]
pub(super) struct Metadata {
    pub(super) commit: String,
    pub(super) etag: String,
    pub(super) size: Option<u64>,
}

/// Where a redirect to a path on the same host (a renamed repo) leads; `None` for any other
/// response.
pub(super) fn relative_redirect(resp: &ureq::Response, url: &str) -> Option<String> {
    if !(300..400).contains(&resp.status()) {
        return None;
    }
    let loc = resp.header("Location").filter(|l| l.starts_with('/'))?;
    Some(format!("{}{loc}", origin_of(url)))
}

/// The commit, blob (ETag, weak or strong, quotes removed) and size a metadata response names.
pub(super) fn parse_metadata(resp: &ureq::Response, url: &str) -> Result<Metadata, HubError> {
    let header = |name: &'static str| resp.header(name).map(|v| v.trim().to_string());
    let etag = header("X-Linked-Etag")
        .or_else(|| header("ETag"))
        .map(|e| e.trim_start_matches("W/").replace('"', ""))
        .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
        .ok_or(HubError::BadResponse {
            url: url.to_string(),
            header: "ETag",
        })?;
    let commit = header("X-Repo-Commit")
        .filter(|c| is_commit(c))
        .map(|c| c.to_ascii_lowercase())
        .ok_or(HubError::BadResponse {
            url: url.to_string(),
            header: "X-Repo-Commit",
        })?;
    let size = header("X-Linked-Size")
        .and_then(|s| s.parse().ok())
        .or_else(|| {
            header("Content-Range").and_then(|r| r.rsplit('/').next().and_then(|n| n.parse().ok()))
        })
        .or_else(|| {
            (resp.status() == 200)
                .then(|| header("Content-Length").and_then(|n| n.parse().ok()))
                .flatten()
        });
    Ok(Metadata { commit, etag, size })
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(origin_of("http://127.0.0.1:80/a/b"), "http://127.0.0.1:80");
    }
}
