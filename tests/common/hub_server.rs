//! A small stand-in for the Hugging Face Hub on 127.0.0.1, started by the tests themselves.
//!
//! It serves `/{repo}/resolve/{revision}/{file}` and `/datasets/{repo}/resolve/...` from
//! in-memory repos, with the headers huggingface_hub and the hf-hub crate read: `X-Repo-Commit`,
//! `ETag` (a git-style id for small files), `X-Linked-Etag` + `X-Linked-Size` (the SHA-256 for
//! LFS files: *.safetensors, *.bin), `Content-Range` on range requests, and the Hub's
//! `X-Error-Code` values on errors (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo).
//! Renamed repos answer with a relative 307 redirect, as the Hub does.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// One repository: its commits (file name → bytes), refs (branch/tag → commit) and access.
#[derive(Debug, Clone, Default)]
pub struct FakeRepo {
    /// `org/name` (models) or `datasets/org/name`.
    pub path: String,
    pub commits: HashMap<String, BTreeMap<String, Vec<u8>>>,
    pub refs: HashMap<String, String>,
    /// Gated: only this bearer token gets in.
    pub token: Option<String>,
    /// Send weak ETags (`W/"…"`) for non-LFS files, as some proxies and mirrors do.
    pub weak_etags: bool,
}

impl FakeRepo {
    pub fn model(id: &str) -> Self {
        Self {
            path: id.to_string(),
            ..Default::default()
        }
    }

    pub fn dataset(id: &str) -> Self {
        Self {
            path: format!("datasets/{id}"),
            ..Default::default()
        }
    }

    /// Adds a commit holding every file of `dir`, pointed to by `refs`.
    pub fn commit_dir(self, commit: &str, dir: &Path, refs: &[&str]) -> Self {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).expect("fixture dir") {
            let entry = entry.expect("entry");
            if entry.path().is_file() {
                let name = entry.file_name().to_string_lossy().to_string();
                files.insert(name, std::fs::read(entry.path()).expect("read fixture"));
            }
        }
        self.commit_files(commit, files, refs)
    }

    pub fn commit_files(
        mut self,
        commit: &str,
        files: BTreeMap<String, Vec<u8>>,
        refs: &[&str],
    ) -> Self {
        assert_eq!(commit.len(), 40, "commits are 40 hex digits");
        self.commits.insert(commit.to_string(), files);
        for r in refs {
            self.refs.insert(r.to_string(), commit.to_string());
        }
        self
    }

    pub fn with_weak_etags(mut self) -> Self {
        self.weak_etags = true;
        self
    }

    pub fn gated(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }
}

/// Whether a file is stored in Git LFS on the Hub (its ETag is then its SHA-256).
pub fn is_lfs(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".bin")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The blob name the Hub gives a file: SHA-256 for LFS files, a 40-hex git-style id otherwise.
pub fn etag_of(name: &str, bytes: &[u8]) -> String {
    let sha = sha256_hex(bytes);
    if is_lfs(name) {
        sha
    } else {
        sha[..40].to_string()
    }
}

#[derive(Default)]
struct State {
    repos: Vec<FakeRepo>,
    /// Renamed repo → new name (both without the `datasets/` prefix handling).
    aliases: HashMap<String, String>,
    /// Every request line, in order.
    requests: Vec<String>,
    /// Full downloads per file name (requests for more than the first byte).
    downloads: HashMap<String, usize>,
    /// Pause before sending a file body (to make concurrent downloads overlap).
    body_delay: Duration,
}

pub struct HubServer {
    addr: String,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    pub fn start(repos: Vec<FakeRepo>) -> Self {
        Self::start_with_aliases(repos, &[])
    }

    /// `aliases`: (old repo path, new repo path) pairs answered with a relative 307.
    pub fn start_with_aliases(repos: Vec<FakeRepo>, aliases: &[(&str, &str)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State {
            repos,
            aliases: aliases
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            ..Default::default()
        }));
        let (stop2, state2) = (stop.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let st = state2.clone();
                        std::thread::spawn(move || {
                            let _ = handle(stream, &st);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Self {
            addr,
            stop,
            state,
            thread: Some(thread),
        }
    }

    /// The endpoint, for `HF_ENDPOINT`.
    pub fn url(&self) -> String {
        self.addr.clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many times `file` was downloaded in full (or from an offset).
    pub fn downloads(&self, file: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .downloads
            .get(file)
            .copied()
            .unwrap_or(0)
    }

    /// Pause this long before each file body from now on.
    pub fn set_body_delay(&self, d: Duration) {
        self.state.lock().unwrap().body_delay = d;
    }

    pub fn total_downloads(&self) -> usize {
        self.state.lock().unwrap().downloads.values().sum()
    }

    /// Stops listening; later connections are refused.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Reply {
    status: u16,
    reason: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn error(status: u16, reason: &'static str, code: &str, commit: Option<&str>) -> Self {
        let mut headers = vec![
            ("X-Error-Code".to_string(), code.to_string()),
            ("X-Error-Message".to_string(), format!("{code} (test hub)")),
        ];
        if let Some(c) = commit {
            headers.push(("X-Repo-Commit".into(), c.to_string()));
        }
        Reply {
            status,
            reason,
            headers,
            body: format!("{{\"error\": \"{code}\"}}").into_bytes(),
        }
    }
}

fn handle(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let request_line = line.trim().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (reply, delay) = {
        let mut st = state.lock().unwrap();
        st.requests.push(request_line.clone());
        (route(&mut st, &target, &headers), st.body_delay)
    };
    if reply.body.len() > 1 {
        std::thread::sleep(delay);
    }
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reply.reason);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        out.write_all(&reply.body)?;
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Write)
}

fn route(st: &mut State, target: &str, headers: &HashMap<String, String>) -> Reply {
    let path = target
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches('/');
    let Some((repo_path, rest)) = path.split_once("/resolve/") else {
        return Reply::error(404, "Not Found", "NotFound", None);
    };
    if let Some(new) = st.aliases.get(repo_path) {
        return Reply {
            status: 307,
            reason: "Temporary Redirect",
            headers: vec![("Location".into(), format!("/{new}/resolve/{rest}"))],
            body: Vec::new(),
        };
    }
    let Some(repo) = st.repos.iter().find(|r| r.path == repo_path).cloned() else {
        return Reply::error(404, "Not Found", "RepoNotFound", None);
    };
    if let Some(token) = &repo.token {
        match headers.get("authorization") {
            None => return Reply::error(401, "Unauthorized", "GatedRepo", None),
            Some(a) if a != &format!("Bearer {token}") => {
                return Reply::error(403, "Forbidden", "GatedRepo", None)
            }
            Some(_) => {}
        }
    }
    let Some((revision, file)) = rest.split_once('/') else {
        return Reply::error(404, "Not Found", "EntryNotFound", None);
    };
    let revision = percent_decode(revision);
    let file = percent_decode(file);
    let commit = match repo.refs.get(&revision) {
        Some(c) => c.clone(),
        None if repo.commits.contains_key(&revision) => revision.clone(),
        None => return Reply::error(404, "Not Found", "RevisionNotFound", None),
    };
    let files = &repo.commits[&commit];
    let Some(bytes) = files.get(&file) else {
        return Reply::error(404, "Not Found", "EntryNotFound", Some(&commit));
    };
    let size = bytes.len();
    let etag = etag_of(&file, bytes);
    let mut h = vec![
        ("X-Repo-Commit".to_string(), commit.clone()),
        (
            "ETag".to_string(),
            if repo.weak_etags && !is_lfs(&file) {
                format!("W/\"{etag}\"")
            } else {
                format!("\"{etag}\"")
            },
        ),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
    ];
    if is_lfs(&file) {
        h.push(("X-Linked-Etag".into(), format!("\"{etag}\"")));
        h.push(("X-Linked-Size".into(), size.to_string()));
    }
    let range = headers.get("range").and_then(|r| {
        let spec = r.strip_prefix("bytes=")?;
        let (a, b) = spec.split_once('-')?;
        let start: usize = a.parse().ok()?;
        let end: usize = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<usize>().ok()?.min(size.saturating_sub(1))
        };
        Some((start, end))
    });
    match range {
        Some((start, end)) if start < size && start <= end => {
            if end > start {
                *st.downloads.entry(file.clone()).or_insert(0) += 1;
            }
            h.push((
                "Content-Range".into(),
                format!("bytes {start}-{end}/{size}"),
            ));
            Reply {
                status: 206,
                reason: "Partial Content",
                headers: h,
                body: bytes[start..=end].to_vec(),
            }
        }
        _ => {
            *st.downloads.entry(file.clone()).or_insert(0) += 1;
            Reply {
                status: 200,
                reason: "OK",
                headers: h,
                body: bytes.clone(),
            }
        }
    }
}
