//! Trust on a cluster, one test per class of failure: no silent wrong results (locked output
//! directories, merges of different inputs, contradictory configs, non-finite outputs,
//! disk full), bounded resources (threads, endless data), progress in logs, and the friction
//! a user of transformers notices.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use candle_core::{Device, Tensor};
use common::{copy_checkpoint, edit_config, edit_weights, fixture};
use gpt_ablate::grid::results::{read_jsonl, Row};

fn bin() -> Command {
    Command::cargo_bin("gpt-ablate").unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed:\n{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The command fails with `needle` in a one-line, panic-free error.
fn fails_with(out: Output, needle: &str) -> String {
    let err = stderr(&out);
    assert!(!out.status.success(), "expected failure for '{needle}'");
    assert!(err.contains(needle), "stderr lacks '{needle}':\n{err}");
    assert!(!err.contains("panicked"), "panic:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "error is not one line:\n{err}");
    err
}

/// A grid config in `dir` on the tiny model: `extra` lines, then `variants`.
fn config(dir: &Path, name: &str, data: &Path, extra: &str, variants: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "models = [{:?}]\ndatasets = [{:?}]\ncontext = 64\n{extra}\n{variants}",
        fixture("tiny-gpt2"),
        data
    );
    std::fs::write(&path, text).unwrap();
    path
}

const VARIANTS: &str = "[[variants]]\nname = \"relu\"\nactivation = \"relu\"\n\
                        [[variants]]\nname = \"sigmoid\"\nactivation = \"sigmoid\"\n\
                        [[variants]]\nname = \"tanh\"\nactivation = \"tanh\"\n";

fn run(config: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("run").arg(config).arg("--out").arg(out).args(extra);
    c
}

fn rows(dir: &Path) -> Vec<Row> {
    read_jsonl(&dir.join("results.jsonl")).unwrap()
}

#[test]
fn a_second_run_on_a_locked_directory_fails_naming_it_and_the_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        "slow.toml",
        &fixture("sample.txt"),
        "stride = 4",
        VARIANTS,
    );
    let out = tmp.path().join("out");
    let bin_path = assert_cmd::cargo::cargo_bin("gpt-ablate");
    let mut first = std::process::Command::new(&bin_path)
        .arg("run")
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join(".gpt-ablate.lock");
    let start = Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |t| t.trim().is_empty()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "first run never locked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = run(&cfg, &out, &[]).output().unwrap();
    let finished_early = first.try_wait().unwrap().is_some();
    if !finished_early {
        let err = fails_with(second, &format!("pid {}", first.id()));
        assert!(err.contains(&out.display().to_string()), "{err}");
    }
    assert!(first.wait().unwrap().success());
    // Every row once; a third run finds the directory free and everything done.
    let mut indices: Vec<usize> = rows(&out).iter().map(|r| r.index).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..4).collect::<Vec<_>>());
    let third = run(&cfg, &out, &[]).output().unwrap();
    assert!(stderr(&third).contains("0 cell(s) computed, 4 already done"));
    assert!(
        !finished_early,
        "the first run ended before the second started: too fast to test"
    );
}

#[test]
fn shards_of_a_changed_data_file_are_not_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.txt");
    std::fs::copy(fixture("sample.txt"), &data).unwrap();
    let extra = "stride = 32\nmax_tokens = 600";
    let cfg = config(tmp.path(), "g.toml", &data, extra, VARIANTS);
    let (s0, s1) = (tmp.path().join("s0"), tmp.path().join("s1"));
    ok(run(&cfg, &s0, &["--shard", "0/2"]).output().unwrap());
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.insert_str(0, "A changed first line.\n");
    std::fs::write(&data, text).unwrap();
    ok(run(&cfg, &s1, &["--shard", "1/2"]).output().unwrap());
    let merged = tmp.path().join("merged");
    let out = bin()
        .arg("merge")
        .arg(&s0)
        .arg(&s1)
        .arg("--out")
        .arg(&merged)
        .output();
    let err = fails_with(out.unwrap(), "ran on different inputs: datasets[0].sha256");
    assert!(err.contains("data.txt"), "{err}");
    assert!(!merged.join("results.jsonl").exists(), "nothing is written");
    // A manifest that is JSON but not an object is refused, not a panic; so is one without
    // the config's hash; and the output may not be a shard.
    let odd = tmp.path().join("odd");
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join("manifest.json"), "[1, 2]").unwrap();
    let out = bin()
        .arg("merge")
        .arg(&odd)
        .arg("--out")
        .arg(&merged)
        .output();
    fails_with(out.unwrap(), "not a run manifest (not a JSON object)");
    std::fs::write(odd.join("manifest.json"), r#"{"config": {}}"#).unwrap();
    let out = bin()
        .arg("merge")
        .arg(&odd)
        .arg("--out")
        .arg(&merged)
        .output();
    fails_with(out.unwrap(), "no config.sha256");
    let out = bin().arg("merge").arg(&s0).arg("--out").arg(&s0).output();
    fails_with(out.unwrap(), "is one of the shard directories");
}

#[test]
fn contradictory_or_duplicated_configuration_is_an_error_naming_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = fixture("sample.txt");
    let cases = [
        (
            "",
            "[[variants]]\nname = \"x\"\nactivation = \"0-2:relu,1-3:sigmoid\"\n",
            "layers 1-2 given two activations (relu and sigmoid)",
        ),
        (
            "",
            "[[variants]]\nname = \"x\"\nactivation = \"0:relu\"\nlayers = \"1\"\n",
            "layers needs a single activation name",
        ),
        ("stride = 65\n", VARIANTS, "stride 65 exceeds the context"),
    ];
    for (i, (extra, variants, want)) in cases.iter().enumerate() {
        let text = format!(
            "models = [{:?}]\ndatasets = [{:?}]\n{extra}{variants}",
            fixture("tiny-gpt2"),
            sample
        );
        let cfg = tmp.path().join(format!("c{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        fails_with(
            bin()
                .arg("run")
                .arg(&cfg)
                .arg("--dry-run")
                .output()
                .unwrap(),
            want,
        );
    }
    let twice = format!(
        "models = [{:?}, {:?}]\ndatasets = [{:?}]\n{VARIANTS}",
        fixture("tiny-gpt2"),
        fixture("tiny-gpt2").join("."),
        sample
    );
    let cfg = tmp.path().join("twice.toml");
    std::fs::write(&cfg, twice).unwrap();
    fails_with(
        bin()
            .arg("run")
            .arg(&cfg)
            .arg("--dry-run")
            .output()
            .unwrap(),
        "line 1: models: ",
    );
    let data = format!(
        "models = [{:?}]\ndatasets = [{sample:?}, {sample:?}]\n{VARIANTS}",
        fixture("tiny-gpt2")
    );
    std::fs::write(&cfg, data).unwrap();
    fails_with(
        bin()
            .arg("run")
            .arg(&cfg)
            .arg("--dry-run")
            .output()
            .unwrap(),
        "is listed twice",
    );
    // The same map on the command line (a clap error: two lines with its hint).
    let out = bin()
        .args([
            "perplexity",
            "--activation",
            "0-2:relu,1-3:sigmoid",
            "--model",
        ])
        .arg(fixture("tiny-gpt2"))
        .arg("--data")
        .arg(&sample)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("layers 1-2 given two activations"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn non_finite_outputs_fail_every_command_naming_the_position() {
    let (tmp, dir) = copy_checkpoint("tiny-gpt2");
    edit_weights(&dir, |t| {
        let nan = Tensor::full(f32::NAN, 32, &Device::Cpu).unwrap();
        t.insert("ln_f.weight".into(), nan);
    });
    let out = bin()
        .args(["generate", "--prompt", "ROMEO:", "--model"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "the prompt is not echoed before the error"
    );
    fails_with(out, "non-finite logits at step 0");
    let sample = fixture("sample.txt");
    let cmd = |name: &str| {
        let mut c = bin();
        c.args([name, "--max-tokens", "200", "--model"])
            .arg(&dir)
            .arg("--data")
            .arg(&sample);
        c
    };
    fails_with(
        cmd("perplexity").output().unwrap(),
        "non-finite loss in window 0",
    );
    fails_with(
        cmd("diagnose").output().unwrap(),
        "non-finite loss in window 0",
    );
    let text = format!(
        "models = [{:?}]\ndatasets = [{sample:?}]\nmax_tokens = 200\n{VARIANTS}",
        dir
    );
    let cfg = tmp.path().join("nan.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = run(&cfg, &tmp.path().join("out"), &[]).output().unwrap();
    fails_with(out, "non-finite loss in window 0");
}

/// Runs `cmd` with files limited to `bytes` (RLIMIT_FSIZE, SIGXFSZ ignored): writes past it
/// fail with EFBIG, as on a full disk.
fn with_file_limit(cmd: &mut std::process::Command, bytes: u64) -> Output {
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn a_full_disk_names_the_file_loses_no_row_and_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        "g.toml",
        &fixture("sample.txt"),
        "stride = 32\nmax_tokens = 600",
        VARIANTS,
    );
    let out = tmp.path().join("out");
    let bin_path = assert_cmd::cargo::cargo_bin("gpt-ablate");
    let cmd = || {
        let mut c = std::process::Command::new(&bin_path);
        c.arg("run").arg(&cfg).arg("--out").arg(&out);
        c
    };
    let no_temporaries = || {
        let names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    };
    // Room for the manifest and two rows: the third row's append fails.
    let first = with_file_limit(&mut cmd(), 2600);
    let err = fails_with(first, "results.jsonl: File too large");
    assert!(err.contains(&out.display().to_string()), "{err}");
    no_temporaries();
    let jsonl = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert!(
        jsonl.is_empty() || jsonl.ends_with('\n'),
        "a partial line was left"
    );
    let kept = rows(&out).len();
    // Room for every row but not for a chart: the chart write fails, atomically.
    let second = with_file_limit(&mut cmd(), 12_000);
    fails_with(second, ".png: File too large");
    no_temporaries();
    assert!(!out.join("perplexity.png").exists());
    // With room, the run completes: every row exactly once.
    let third = cmd().output().unwrap();
    assert!(
        stderr(&third).contains("0 cell(s) computed, 4 already done"),
        "{}",
        stderr(&third)
    );
    let mut indices: Vec<usize> = rows(&out).iter().map(|r| r.index).collect();
    indices.sort_unstable();
    assert_eq!(
        indices,
        (0..4).collect::<Vec<_>>(),
        "{kept} kept after the first failure"
    );
    assert!(out.join("perplexity.png").exists());
}

#[test]
fn thread_counts_beyond_sense_are_capped_and_environment_errors_name_the_variable() {
    let start = Instant::now();
    let out = bin()
        .args([
            "perplexity",
            "--threads",
            "100000",
            "--max-tokens",
            "200",
            "--model",
        ])
        .arg(fixture("tiny-gpt2"))
        .arg("--data")
        .arg(fixture("sample.txt"))
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("--threads 100000 is more than 4 per available core; using"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "g.toml", &fixture("sample.txt"), "", VARIANTS);
    let with_env = |var: &str, value: &str| {
        run(&cfg, &tmp.path().join("out"), &[])
            .env(var, value)
            .output()
            .unwrap()
    };
    fails_with(
        with_env("GPT_ABLATE_THREADS", "many"),
        "GPT_ABLATE_THREADS='many': not a number",
    );
    fails_with(
        with_env("GPT_ABLATE_DEVICE", "tpu"),
        "GPT_ABLATE_DEVICE='tpu': unknown device",
    );
    fails_with(
        with_env("GPT_ABLATE_DTYPE", "f8"),
        "GPT_ABLATE_DTYPE='f8': not one of",
    );
    fails_with(
        with_env("GPT_ABLATE_THREADS", "0"),
        "GPT_ABLATE_THREADS must be at least 1",
    );
}

#[test]
fn endless_or_oversized_data_is_refused_within_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path in a fresh temporary directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let cases = [
        (
            PathBuf::from("/dev/zero"),
            "is a character device, not a regular file",
        ),
        (fifo, "is a FIFO (named pipe), not a regular file"),
    ];
    for (data, want) in &cases {
        let start = Instant::now();
        let out = bin()
            .args(["perplexity", "--model"])
            .arg(fixture("tiny-gpt2"))
            .arg("--data")
            .arg(data)
            .output()
            .unwrap();
        fails_with(out, want);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{data:?}: {:?}",
            start.elapsed()
        );
    }
    let out = bin()
        .args(["generate", "--prompt-file", "/dev/zero", "--model"])
        .arg(fixture("tiny-gpt2"))
        .output()
        .unwrap();
    fails_with(out, "character device");
    let out = bin()
        .args(["perplexity", "--model"])
        .arg(fixture("tiny-gpt2"))
        .arg("--data")
        .arg(fixture("sample.txt"))
        .env("GPT_ABLATE_MAX_DATA_BYTES", "100")
        .output()
        .unwrap();
    fails_with(out, "is larger than 100 bytes");
}

#[test]
fn progress_goes_to_logs_every_few_seconds_and_quiet_turns_it_off() {
    let cmd = |quiet: bool| {
        let mut c = bin();
        c.args(["perplexity", "--stride", "8", "--model"])
            .arg(fixture("tiny-gpt2"))
            .arg("--data")
            .arg(fixture("sample.txt"))
            .env("GPT_ABLATE_PROGRESS_SECONDS", "0");
        if quiet {
            c.arg("--quiet");
        }
        c.output().unwrap()
    };
    let out = cmd(false);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("perplexity: "))
        .expect(&err);
    assert!(
        line.contains(" batches (") && line.contains("/s, elapsed ") && line.contains("ETA"),
        "{line}"
    );
    assert!(err.contains("batches done in"), "{err}");
    let quiet = cmd(true);
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty(), "{}", stderr(&quiet));
}

#[test]
fn generation_from_an_empty_prompt_starts_from_bos_else_eos_as_transformers_does() {
    let text = std::fs::read_to_string(fixture("empty_prompt_reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = r["new_tokens"].as_u64().unwrap().to_string();
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let generate = |dir: &Path| {
        let out = bin()
            .args([
                "generate",
                "--prompt",
                "",
                "--temperature",
                "0",
                "--ignore-eos",
                "--json",
            ])
            .args(["--max-new-tokens", &n, "--model"])
            .arg(dir)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
        assert_eq!(v["prompt_tokens"], 1);
        ids(&v["token_ids"])
    };
    assert_eq!(
        generate(&fixture("tiny-gpt2")),
        ids(&r["from_bos"]["new_ids"])
    );
    let (_tmp, dir) = copy_checkpoint("tiny-gpt2");
    edit_config(&dir, |c| {
        c.as_object_mut().unwrap().remove("bos_token_id");
        c["eos_token_id"] = r["from_eos"]["config_edit"]["eos_token_id"].clone();
    });
    assert_eq!(generate(&dir), ids(&r["from_eos"]["new_ids"]));
    // Text mode: stop reasons in words, no seed for greedy decoding.
    let out = bin()
        .args([
            "generate",
            "--prompt",
            "ROMEO:",
            "--temperature",
            "0",
            "--max-new-tokens",
            "5",
        ])
        .arg("--model")
        .arg(fixture("tiny-gpt2"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("stopped: reached --max-new-tokens (5)"),
        "{err}"
    );
    assert!(!err.contains("seed"), "{err}");
    assert!(ok(out).starts_with("ROMEO:"));
}

#[test]
fn help_lists_every_activation_and_has_no_doubled_escapes() {
    let help = ok(bin().args(["perplexity", "--help"]).output().unwrap());
    for a in gpt_ablate::model::activation::ALL_ACTIVATIONS {
        assert!(help.contains(&a.name()), "--help lacks {a}");
    }
    assert!(!help.contains("..."), "{help}");
    let help = ok(bin().args(["generate", "--help"]).output().unwrap());
    assert!(help.contains(r"\n \t \r \\"), "{help}");
    assert!(!help.contains(r"\\n"), "{help}");
}

#[test]
fn per_layer_maps_max_tokens_and_consistent_layer_reports() {
    let perplexity = |args: &[&str]| {
        let out = bin()
            .arg("perplexity")
            .args(args)
            .args(["--json", "--model"])
            .arg(fixture("tiny-gpt2"))
            .arg("--data")
            .arg(fixture("sample.txt"))
            .output()
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&ok(out)).unwrap()
    };
    let v = perplexity(&[
        "--activation",
        "0-1:relu,2-3:sigmoid",
        "--max-tokens",
        "1000",
    ]);
    assert_eq!(v["activation"], "relu@0-1,sigmoid@2-3");
    assert_eq!(v["layers"], "all");
    assert_eq!(v["tokens"], 1000);
    assert!(v["bytes"].as_u64().unwrap() < std::fs::metadata(fixture("sample.txt")).unwrap().len());
    // The grid's mixed variant on the same prefix: the same numbers.
    let tmp = tempfile::tempdir().unwrap();
    let mixed = "[[variants]]\nname = \"mixed\"\nactivation = \"relu\"\nlayers = \"0-1\"\n";
    let cfg = config(
        tmp.path(),
        "g.toml",
        &fixture("sample.txt"),
        "max_tokens = 1000",
        mixed,
    );
    let out = tmp.path().join("out");
    ok(run(&cfg, &out, &[]).output().unwrap());
    let row = rows(&out)
        .into_iter()
        .find(|r| r.variant == "mixed")
        .unwrap();
    let w = perplexity(&["--activation", "0-1:relu", "--max-tokens", "1000"]);
    assert!((row.nll_sum - w["nll_sum"].as_f64().unwrap()).abs() < 1e-6 * row.nll_sum);
    assert_eq!(row.bytes as u64, w["bytes"].as_u64().unwrap());
    // A swap to the checkpoint's own activation swaps no layer, and says so both ways.
    let same = perplexity(&[
        "--activation",
        "gelu_new",
        "--layers",
        "0-3",
        "--max-tokens",
        "200",
    ]);
    assert_eq!(same["layers"], "none");
    assert_eq!(same["layers_swapped"], serde_json::json!([]));
}

#[test]
fn dry_run_marks_done_cells_and_paths_are_normalised() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("configs");
    std::fs::create_dir(&sub).unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-gpt2").join(f), models.join(f)).unwrap();
    }
    std::fs::copy(fixture("sample.txt"), tmp.path().join("sample.txt")).unwrap();
    let text = format!(
        "models = [\"../models\"]\ndatasets = [\"../sample.txt\"]\ncontext = 64\nmax_tokens = 300\n{VARIANTS}"
    );
    let cfg = sub.join("g.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = tmp.path().join("out");
    let before = ok(run(&cfg, &out, &["--dry-run"]).output().unwrap());
    assert_eq!(
        before.lines().filter(|l| l.contains(" run ")).count(),
        4,
        "{before}"
    );
    ok(run(&cfg, &out, &["--shard", "0/2"]).output().unwrap());
    let after = run(&cfg, &out, &["--dry-run", "--shard", "0/2"])
        .output()
        .unwrap();
    let err = stderr(&after);
    let listed = ok(after);
    assert_eq!(
        listed.lines().filter(|l| l.contains(" done ")).count(),
        2,
        "{listed}"
    );
    assert!(
        err.contains("4 cell(s): 0 to run, 2 done, 2 in other shards"),
        "{err}"
    );
    let row = &rows(&out)[0];
    assert!(
        !row.model.contains("..") && !row.dataset.contains(".."),
        "{row:?}"
    );
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(!manifest.contains("/../"), "{manifest}");
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert!(m["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{m}");
}
