//! Hub models and datasets against a stand-in Hub on 127.0.0.1 (tests/common/hub_server.rs):
//! the cache layout huggingface_hub uses, offline use, revision pinning, the fallback formats
//! and the error messages. Nothing here reaches the network.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use common::hub_server::{etag_of, sha256_hex, FakeRepo, HubServer};
use common::{fixture, run_json};

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";

/// A throwaway HF_HOME with its hub cache.
struct Env {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    cache: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("hf-home");
        let cache = home.join("hub");
        Env {
            home,
            cache,
            _tmp: tmp,
        }
    }

    /// The binary with the HF environment pointing at `endpoint` and this cache only.
    fn cmd(&self, endpoint: &str) -> Command {
        Command::from_std(self.std_cmd(endpoint))
    }

    fn std_cmd(&self, endpoint: &str) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("gpt-ablate"));
        for k in [
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_HUB_OFFLINE",
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_TOKEN_PATH",
            "XDG_CACHE_HOME",
        ] {
            c.env_remove(k);
        }
        c.env("HF_HOME", &self.home)
            .env("HOME", self._tmp.path())
            .env("HF_ENDPOINT", endpoint);
        c
    }

    fn repo_dir(&self, folder: &str) -> PathBuf {
        self.cache.join(folder)
    }
}

fn ppl_args(model: &str, data: &Path) -> Vec<String> {
    [
        "perplexity",
        "--model",
        model,
        "--data",
        &data.display().to_string(),
        "--context",
        "64",
        "--stride",
        "32",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Expects failure with `needle` in a single-line stderr.
fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for '{needle}'");
    assert!(
        stderr.contains(needle),
        "stderr lacks '{needle}':\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    // Download notes may come first; the error itself is the last line, and the only one.
    let last = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        last.starts_with("Error: ") && last.contains(needle),
        "{stderr}"
    );
    assert_eq!(stderr.matches("Error:").count(), 1, "{stderr}");
    assert!(
        stderr
            .lines()
            .all(|l| l.is_empty() || l.starts_with("Error: ") || l.starts_with("downloading ")),
        "unexpected stderr:\n{stderr}"
    );
}

/// transformers' perplexity of a fixture model on sample.txt (context 64, stride 32).
fn reference_ppl(model: &str) -> f64 {
    common::reference_ppl(model, 64, 32)
}

fn assert_close(got: &serde_json::Value, want: f64) {
    let got = got["perplexity"].as_f64().unwrap();
    assert!(
        ((got - want) / want).abs() < 1e-6,
        "perplexity {got} vs reference {want}"
    );
}

fn symlink_target(p: &Path) -> PathBuf {
    std::fs::read_link(p).unwrap_or_else(|e| panic!("{} is not a symlink: {e}", p.display()))
}

#[test]
fn first_download_fills_a_huggingface_hub_cache_then_offline_runs_from_it() {
    let server = HubServer::start(vec![FakeRepo::model("test-org/tiny-gpt2").commit_dir(
        C1,
        &fixture("tiny-gpt2"),
        &["main"],
    )]);
    let env = Env::new();
    let data = fixture("sample.txt");
    let want = reference_ppl("tiny-gpt2");

    let (got, _) = run_json(
        env.cmd(&server.url())
            .args(ppl_args("test-org/tiny-gpt2", &data)),
    );
    assert_close(&got, want);
    assert_eq!(server.downloads("model.safetensors"), 1);

    // The layout huggingface_hub writes: refs/main, snapshot symlinks into blobs named by ETag.
    let repo = env.repo_dir("models--test-org--tiny-gpt2");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main"))
            .unwrap()
            .trim(),
        C1
    );
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        let bytes = std::fs::read(fixture("tiny-gpt2").join(name)).unwrap();
        let link = repo.join("snapshots").join(C1).join(name);
        assert_eq!(
            symlink_target(&link),
            Path::new("../../blobs").join(etag_of(name, &bytes)),
            "{name}"
        );
        assert_eq!(std::fs::read(&link).unwrap(), bytes, "{name} content");
    }
    assert_eq!(
        etag_of(
            "model.safetensors",
            &std::fs::read(fixture("tiny-gpt2/model.safetensors")).unwrap()
        ),
        sha256_hex(&std::fs::read(fixture("tiny-gpt2/model.safetensors")).unwrap())
    );
    let leftovers: Vec<String> = std::fs::read_dir(repo.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left in blobs/: {leftovers:?}"
    );
    assert!(
        !repo.join("refs").join(C1).exists(),
        "no ref named after a commit"
    );

    // For checking by hand that Python's huggingface_hub reads this cache (see the README).
    if let Some(keep) = std::env::var_os("GPT_ABLATE_KEEP_HUB_CACHE") {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&env.cache)
            .arg(&keep)
            .status()
            .unwrap();
        assert!(status.success());
    }

    // Second run online: metadata requests only, nothing downloaded again.
    let before = server.total_downloads();
    let (again, _) = run_json(
        env.cmd(&server.url())
            .args(ppl_args("test-org/tiny-gpt2", &data)),
    );
    assert_eq!(again["perplexity"], got["perplexity"]);
    assert_eq!(server.total_downloads(), before, "files downloaded twice");

    // Server gone: HF_HUB_OFFLINE=1 runs from the cache; without it, a warning and the cache.
    let url = server.url();
    server.stop();
    let (offline, stderr) = run_json(
        env.cmd(&url)
            .env("HF_HUB_OFFLINE", "1")
            .args(ppl_args("test-org/tiny-gpt2", &data)),
    );
    assert_eq!(offline["perplexity"], got["perplexity"]);
    assert!(stderr.trim().is_empty(), "offline run printed: {stderr}");
    let (fallback, stderr) = run_json(env.cmd(&url).args(ppl_args("test-org/tiny-gpt2", &data)));
    assert_eq!(fallback["perplexity"], got["perplexity"]);
    assert!(
        stderr.contains("cannot reach") && stderr.contains(C1),
        "{stderr}"
    );

    // Offline, a repo that was never fetched is a clear error.
    fails_with(
        env.cmd(&url)
            .env("HF_HUB_OFFLINE", "1")
            .args(ppl_args("test-org/other", &data)),
        "HF_HUB_OFFLINE is set and revision 'main' of test-org/other is not in the cache",
    );
    // Network down and nothing cached: say what to do.
    fails_with(
        env.cmd(&url).args(ppl_args("test-org/other", &data)),
        "set HF_HUB_OFFLINE=1 to use the cache only, or pass a local directory",
    );
}

#[test]
fn a_cache_filled_by_python_is_reused_without_downloading() {
    // Lay out the cache exactly as huggingface_hub.hf_hub_download leaves it.
    let env = Env::new();
    let repo = env.repo_dir("models--gpt2");
    let snap = repo.join("snapshots").join(C1);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), C1).unwrap();
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        let bytes = std::fs::read(fixture("tiny-gpt2").join(name)).unwrap();
        let etag = etag_of(name, &bytes);
        std::fs::write(repo.join("blobs").join(&etag), &bytes).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&etag), snap.join(name)).unwrap();
    }
    let server = HubServer::start(vec![FakeRepo::model("gpt2").commit_dir(
        C1,
        &fixture("tiny-gpt2"),
        &["main"],
    )]);
    let (got, _) = run_json(
        env.cmd(&server.url())
            .args(ppl_args("gpt2", &fixture("sample.txt"))),
    );
    assert_close(&got, reference_ppl("tiny-gpt2"));
    assert_eq!(
        server.total_downloads(),
        0,
        "requests: {:?}",
        server.requests()
    );
}

#[test]
fn revisions_pin_branches_tags_and_commits() {
    // main moved on to the untied model; tag v1 and commit C1 keep the first one.
    let server = HubServer::start(vec![FakeRepo::model("org/moving")
        .commit_dir(C1, &fixture("tiny-gpt2"), &["v1"])
        .commit_dir(C2, &fixture("tiny-gpt2-hf"), &["main"])]);
    let env = Env::new();
    let data = fixture("sample.txt");
    let (first, second) = (reference_ppl("tiny-gpt2"), reference_ppl("tiny-gpt2-hf"));
    let run = |model: &str, extra: &[&str]| {
        let mut c = env.cmd(&server.url());
        c.args(ppl_args(model, &data)).args(extra);
        run_json(&mut c).0
    };
    assert_close(&run("org/moving", &[]), second);
    assert_close(&run("org/moving", &["--revision", "v1"]), first);
    assert_close(&run(&format!("org/moving@{C1}"), &[]), first);
    let repo = env.repo_dir("models--org--moving");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main"))
            .unwrap()
            .trim(),
        C2
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/v1"))
            .unwrap()
            .trim(),
        C1
    );
    // A cached commit needs no request at all, online or offline.
    let before = server.requests().len();
    assert_close(&run("org/moving", &["--revision", C1]), first);
    assert_eq!(
        server.requests().len(),
        before,
        "a pinned, cached commit was re-requested"
    );
    let url = server.url();
    server.stop();
    let mut c = env.cmd(&url);
    c.env("HF_HUB_OFFLINE", "1")
        .args(ppl_args("org/moving", &data))
        .args(["--revision", C1]);
    assert_close(&run_json(&mut c).0, first);

    fails_with(
        env.cmd(&url)
            .args(ppl_args("org/moving@v1", &data))
            .args(["--revision", "v2"]),
        "revision given twice",
    );
}

#[test]
fn unknown_repos_revisions_and_gated_repos_give_clear_errors() {
    let server = HubServer::start(vec![
        FakeRepo::model("org/tiny").commit_dir(C1, &fixture("tiny-gpt2"), &["main"]),
        FakeRepo::model("org/gated")
            .commit_dir(C1, &fixture("tiny-gpt2"), &["main"])
            .gated("hf_good"),
    ]);
    let env = Env::new();
    let data = fixture("sample.txt");
    fails_with(
        env.cmd(&server.url()).args(ppl_args("org/nope", &data)),
        "Hub repository 'org/nope' not found at http://127.0.0.1",
    );
    fails_with(
        env.cmd(&server.url())
            .args(ppl_args("org/tiny", &data))
            .args(["--revision", "v9"]),
        "revision 'v9' not found in Hub repository 'org/tiny' (HTTP 404)",
    );
    fails_with(
        env.cmd(&server.url()).args(ppl_args("org/gated", &data)),
        "Hub repository 'org/gated' is gated or private (HTTP 401): accept its conditions on its Hub page and set HF_TOKEN",
    );
    fails_with(
        env.cmd(&server.url())
            .env("HF_TOKEN", "hf_wrong")
            .args(ppl_args("org/gated", &data)),
        "(HTTP 403): your HF_TOKEN has no access",
    );
    let (got, _) = run_json(
        env.cmd(&server.url())
            .env("HF_TOKEN", "hf_good")
            .args(ppl_args("org/gated", &data)),
    );
    assert_close(&got, reference_ppl("tiny-gpt2"));
    // The token file huggingface-cli login writes is used too.
    let env2 = Env::new();
    std::fs::create_dir_all(&env2.home).unwrap();
    std::fs::write(env2.home.join("token"), "hf_good\n").unwrap();
    run_json(env2.cmd(&server.url()).args(ppl_args("org/gated", &data)));
    // A repo without weights names what it looked for.
    let mut files = BTreeMap::new();
    for f in ["config.json", "tokenizer.json"] {
        files.insert(
            f.to_string(),
            std::fs::read(fixture("tiny-gpt2").join(f)).unwrap(),
        );
    }
    let server2 = HubServer::start(vec![FakeRepo::model("org/empty").commit_files(
        C1,
        files,
        &["main"],
    )]);
    fails_with(
        env.cmd(&server2.url()).args(ppl_args("org/empty", &data)),
        "Hub repository org/empty: no weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json) found",
    );
    // Neither a directory nor a repo id.
    fails_with(
        env.cmd(&server.url())
            .args(ppl_args("./no/such/dir", &data)),
        "model ./no/such/dir: no such directory, and not a Hub repo id",
    );
}

#[test]
fn sharded_safetensors_and_renamed_repos() {
    let server = HubServer::start_with_aliases(
        vec![FakeRepo::model("org/sharded").commit_dir(
            C1,
            &fixture("tiny-gpt2-sharded"),
            &["main"],
        )],
        &[("old-name", "org/sharded")],
    );
    let env = Env::new();
    let data = fixture("sample.txt");
    let want = reference_ppl("tiny-gpt2-sharded");
    assert_close(
        &run_json(env.cmd(&server.url()).args(ppl_args("org/sharded", &data))).0,
        want,
    );
    let snap = env
        .repo_dir("models--org--sharded")
        .join("snapshots")
        .join(C1);
    for f in [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(snap.join(f).is_file(), "{f} not in the snapshot");
    }
    // model.safetensors was asked for and is absent: remembered like huggingface_hub does.
    assert!(env
        .repo_dir("models--org--sharded")
        .join(".no_exist")
        .join(C1)
        .join("model.safetensors")
        .exists());
    // HF_HUB_CACHE moves the hub cache away from $HF_HOME/hub.
    let elsewhere = tempfile::tempdir().unwrap();
    run_json(
        env.cmd(&server.url())
            .env("HF_HUB_CACHE", elsewhere.path())
            .args(ppl_args("org/sharded", &data)),
    );
    assert!(elsewhere
        .path()
        .join("models--org--sharded/snapshots")
        .join(C1)
        .join("model-00002-of-00002.safetensors")
        .is_file());
    // Weak ETags (W/"…") name the same blobs as strong ones.
    let weak = HubServer::start(vec![FakeRepo::model("org/weak")
        .commit_dir(C1, &fixture("tiny-gpt2"), &["main"])
        .with_weak_etags()]);
    assert_close(
        &run_json(env.cmd(&weak.url()).args(ppl_args("org/weak", &data))).0,
        reference_ppl("tiny-gpt2"),
    );
    let mut blobs: Vec<String> = std::fs::read_dir(env.repo_dir("models--org--weak").join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    blobs.sort();
    let mut want_blobs: Vec<String> = ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .map(|n| etag_of(n, &std::fs::read(fixture("tiny-gpt2").join(n)).unwrap()))
        .collect();
    want_blobs.sort();
    assert_eq!(blobs, want_blobs);
    // A renamed repo redirects (relative 307) to its new name.
    assert_close(
        &run_json(env.cmd(&server.url()).args(ppl_args("old-name", &data))).0,
        want,
    );
}

#[test]
fn concurrent_runs_share_one_cache_safely() {
    // Slurm array shards start together on one cache: every one must get intact files.
    let server = HubServer::start(vec![FakeRepo::model("org/tiny").commit_dir(
        C1,
        &fixture("tiny-gpt2"),
        &["main"],
    )]);
    server.set_body_delay(std::time::Duration::from_millis(300));
    let env = Env::new();
    let data = fixture("sample.txt");
    let children: Vec<_> = (0..3)
        .map(|_| {
            env.std_cmd(&server.url())
                .args(ppl_args("org/tiny", &data))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let want = reference_ppl("tiny-gpt2");
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_close(&v, want);
    }
    let blobs = env.repo_dir("models--org--tiny").join("blobs");
    let names: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn pytorch_bin_and_vocab_merges_fallbacks_work_online_and_offline() {
    let server = HubServer::start(vec![FakeRepo::model("org/legacy").commit_dir(
        C1,
        &fixture("tiny-gpt2-bin"),
        &["main"],
    )]);
    let env = Env::new();
    let data = fixture("sample.txt");
    let want = reference_ppl("tiny-gpt2-hf"); // the same weights, saved by transformers
    assert_close(
        &run_json(env.cmd(&server.url()).args(ppl_args("org/legacy", &data))).0,
        want,
    );
    let no_exist = env
        .repo_dir("models--org--legacy")
        .join(".no_exist")
        .join(C1);
    for f in [
        "tokenizer.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ] {
        assert!(no_exist.join(f).exists(), "{f} not remembered as missing");
    }
    let url = server.url();
    server.stop();
    let mut c = env.cmd(&url);
    c.env("HF_HUB_OFFLINE", "1")
        .args(ppl_args("org/legacy", &data));
    assert_close(&run_json(&mut c).0, want);

    // inspect says what it found.
    let (v, _) = run_json(env.cmd(&url).env("HF_HUB_OFFLINE", "1").args([
        "inspect",
        "--model",
        "org/legacy",
        "--json",
    ]));
    assert_eq!(v["weights"]["format"], "pytorch (pickle)");
    assert_eq!(
        v["tokenizer"]["files"],
        "vocab.json + merges.txt (byte-level BPE)"
    );
    assert_eq!(v["source"]["commit"], C1);
    assert_eq!(v["weights"]["lm_head"], "separate lm_head.weight");
    let bin = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "pytorch_model.bin")
        .unwrap();
    assert_eq!(bin["matches_hub_sha256"], true);
    assert_eq!(
        bin["sha256"],
        sha256_hex(&std::fs::read(fixture("tiny-gpt2-bin/pytorch_model.bin")).unwrap())
    );
}

#[test]
fn hub_datasets_text_and_jsonl() {
    let text = std::fs::read_to_string(fixture("sample.txt")).unwrap();
    // Documents split at blank lines; joined back with "\n\n" they are the text again.
    let docs: Vec<&str> = text.split("\n\n").collect();
    assert!(docs.len() > 3);
    let jsonl: String = docs
        .iter()
        .map(|d| serde_json::json!({"text": d, "id": 1}).to_string() + "\n")
        .collect();
    let mut files = BTreeMap::new();
    files.insert("sample.txt".to_string(), text.clone().into_bytes());
    files.insert("data/test split.jsonl".to_string(), jsonl.into_bytes());
    files.insert(
        "bad.jsonl".to_string(),
        b"{\"text\": \"a\"}\n{\"body\": 1}\n".to_vec(),
    );
    let server = HubServer::start(vec![
        FakeRepo::model("org/tiny").commit_dir(C1, &fixture("tiny-gpt2"), &["main"]),
        FakeRepo::dataset("org/texts").commit_files(C2, files, &["main"]),
    ]);
    let env = Env::new();
    let local = run_json(
        env.cmd(&server.url())
            .args(ppl_args("org/tiny", &fixture("sample.txt"))),
    )
    .0;
    for data in [
        "hf:org/texts/sample.txt",
        "hf:org/texts/data/test split.jsonl",
        &format!("hf:org/texts@{C2}/sample.txt"),
    ] {
        let got = run_json(
            env.cmd(&server.url())
                .args(ppl_args("org/tiny", Path::new(data))),
        )
        .0;
        assert_eq!(got["perplexity"], local["perplexity"], "{data}");
        assert_eq!(got["tokens"], local["tokens"], "{data}");
    }
    assert!(env
        .repo_dir("datasets--org--texts")
        .join("snapshots")
        .join(C2)
        .join("data/test split.jsonl")
        .is_file());
    fails_with(
        env.cmd(&server.url())
            .args(ppl_args("org/tiny", Path::new("hf:org/texts/bad.jsonl"))),
        "bad.jsonl line 2: no \"text\" field",
    );
    fails_with(
        env.cmd(&server.url())
            .args(ppl_args("org/tiny", Path::new("hf:org/texts/missing.txt"))),
        "'missing.txt' not found in Hub repository dataset org/texts",
    );
    fails_with(
        env.cmd(&server.url())
            .args(ppl_args("org/tiny", Path::new("hf:org/texts"))),
        "expected hf:ORG/NAME/path/in/repo",
    );
}

#[test]
fn grid_configs_accept_hub_ids() {
    let server = HubServer::start(vec![FakeRepo::model("org/tiny").commit_dir(
        C1,
        &fixture("tiny-gpt2"),
        &["main"],
    )]);
    let env = Env::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("grid.toml");
    std::fs::write(
        &cfg,
        format!(
            "models = [\"org/tiny@main\"]\ndatasets = [\"{}\"]\ncontext = 64\nstride = 32\nmax_tokens = 256\n[[variants]]\nname = \"relu\"\nactivation = \"relu\"\n",
            fixture("sample.txt").display()
        ),
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let out = env
        .cmd(&server.url())
        .args([
            "run",
            cfg.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read_to_string(out_dir.join("manifest.json")).unwrap();
    assert!(manifest.contains("org/tiny"), "{manifest}");
    let rows = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 2, "{rows}");
    std::fs::write(
        &cfg,
        "models = [\"org/none\"]\ndatasets = [\"wikitext-2\"]\n",
    )
    .unwrap();
    fails_with(
        env.cmd(&server.url())
            .args(["run", cfg.to_str().unwrap(), "--dry-run"]),
        "line 1: models: model org/none: Hub repository 'org/none' not found",
    );
}

#[test]
fn vocab_merges_tokenizer_matches_tokenizer_json_on_real_gpt2() {
    // The real GPT-2 tokenizer: vocab.json + merges.txt taken out of its tokenizer.json.
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/gpt2-tokenizer/tokenizer.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let vocab = tmp.path().join("vocab.json");
    let merges = tmp.path().join("merges.txt");
    std::fs::write(&vocab, json["model"]["vocab"].to_string()).unwrap();
    let lines: Vec<String> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(p) => {
                format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap())
            }
            _ => panic!("merge {m}"),
        })
        .collect();
    std::fs::write(&merges, format!("#version: 0.2\n{}\n", lines.join("\n"))).unwrap();
    use gpt_ablate::data::TextTokenizer;
    let a = TextTokenizer::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("data/gpt2-tokenizer/tokenizer.json"),
    )
    .unwrap();
    let b = TextTokenizer::from_vocab_merges(&vocab, &merges).unwrap();
    let wiki = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/wikitext-2-raw-test.txt"),
    )
    .unwrap();
    let mut texts = vec![
        wiki[..20_000].to_string(),
        std::fs::read_to_string(fixture("sample.txt")).unwrap(),
        "Grüße, naïve café — 東京都 日本語のテキスト; Привет мир; مرحبا 🙂🚀 \t\r\n  x".to_string(),
        "a<|endoftext|>b <|endoftext|>\n".to_string(),
    ];
    texts.push(String::from_utf8_lossy(&[0xe2, 0x80, 0x8b, b' ', 0xef, 0xbb, 0xbf]).to_string());
    for t in &texts {
        let (ia, ib) = (a.encode(t).unwrap(), b.encode(t).unwrap());
        assert_eq!(ia, ib, "on {:?}", &t[..t.len().min(40)]);
        assert_eq!(b.decode(&ib).unwrap(), *t);
    }
    assert_eq!(a.vocab_size(), b.vocab_size());
    assert_eq!(b.token_to_id("<|endoftext|>"), Some(50256));
}

#[test]
fn family_grid_configs_run_from_the_hub() {
    // configs/pythia.toml and configs/smollm.toml name real Hub ids at context 2048; a
    // stand-in Hub serves fixture checkpoints of the same families under those ids, with
    // max_position_embeddings raised to 2048 (only the config is read by --dry-run).
    let long = |dir: &str| {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(fixture(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let mut bytes = std::fs::read(&path).unwrap();
            if name == "config.json" {
                let mut c: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                c["max_position_embeddings"] = 2048.into();
                bytes = c.to_string().into_bytes();
            }
            files.insert(name, bytes);
        }
        files
    };
    let server = HubServer::start(vec![
        FakeRepo::model("EleutherAI/pythia-160m").commit_files(
            C1,
            long("families/pythia-parallel"),
            &["main"],
        ),
        FakeRepo::model("HuggingFaceTB/SmolLM-135M").commit_files(
            C1,
            long("families/llama-gqa"),
            &["main"],
        ),
        FakeRepo::model("org/llama").commit_dir(C2, &fixture("families/llama-gqa"), &["main"]),
    ]);
    let env = Env::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // (config, baseline + variants + one sweep cell per layer)
    for (config, cells) in [("pythia.toml", 7 + 3), ("smollm.toml", 6 + 2)] {
        let cfg = root.join("configs").join(config);
        let out = env
            .cmd(&server.url())
            .args(["run", cfg.to_str().unwrap(), "--dry-run"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = stdout.lines().filter(|l| l.contains(" run ")).count();
        assert_eq!(listed, cells, "{config}: {stdout}");
    }
    // A scored run on a family from the Hub: the perplexity transformers computed.
    let data = fixture("sample.txt");
    let (v, _) = run_json(env.cmd(&server.url()).args([
        "perplexity",
        "--model",
        "org/llama",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("families/reference.json")).unwrap())
            .unwrap();
    let want = r["perplexity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["model"] == "llama-gqa" && e["activation"].is_null() && e["data"] == "sample.txt"
        })
        .unwrap();
    assert_eq!(v["model_source"]["commit"], C2);
    assert_eq!(v["context"], want["context"]);
    let (got, want) = (
        v["perplexity"].as_f64().unwrap(),
        want["perplexity"].as_f64().unwrap(),
    );
    assert!((got - want).abs() / want < 1e-5, "{got} vs {want}");
}
