//! Naming a Hub repository: model or dataset, id and revision, their validation (the rules
//! of huggingface_hub), the cache folder name and the resolve URL of a file.

/// Model or dataset repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn hf_type(self) -> hf_hub::RepoType {
        match self {
            RepoKind::Model => hf_hub::RepoType::Model,
            RepoKind::Dataset => hf_hub::RepoType::Dataset,
        }
    }
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
        hf_hub::Repo::new(self.id.clone(), self.kind.hf_type()).folder_name()
    }

    /// The same repo at the same revision, for the hf-hub crate.
    pub(super) fn hf_repo(&self) -> hf_hub::Repo {
        hf_hub::Repo::with_revision(self.id.clone(), self.kind.hf_type(), self.revision.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
