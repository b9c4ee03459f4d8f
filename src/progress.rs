//! Progress of long work (grids, perplexity, diagnose, downloads, training), the same in every
//! command: on a terminal an `indicatif` bar; when stderr is not a terminal (Slurm, `nohup`,
//! CI logs) a plain line at most every `GPT_ABLATE_PROGRESS_SECONDS` seconds (default 10)
//! with work done, rate, elapsed time and ETA, and a last line when the work ends; nothing at
//! all with `--quiet`. Work shorter than one interval prints no line.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The environment variable that sets the seconds between progress lines in logs.
pub const INTERVAL_ENV: &str = "GPT_ABLATE_PROGRESS_SECONDS";

static QUIET: AtomicBool = AtomicBool::new(false);

/// Turns every progress display off (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `--quiet` is in force.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// What the counted units are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Items with a plural name: `windows`, `forward passes`, `steps`.
    Items(&'static str),
    /// Bytes, shown as KiB, MiB, GiB.
    Bytes,
}

impl Unit {
    fn amount(self, n: u64) -> String {
        match self {
            Unit::Items(_) => n.to_string(),
            Unit::Bytes => HumanBytes(n).to_string(),
        }
    }
}

/// Seconds between log lines: `GPT_ABLATE_PROGRESS_SECONDS` (a warning naming it when it is
/// not a number), else 10.
pub fn log_interval() -> Duration {
    let default = Duration::from_secs(10);
    match std::env::var(INTERVAL_ENV) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s >= 0.0 && s.is_finite() => Duration::from_secs_f64(s),
            _ => {
                eprintln!("warning: {INTERVAL_ENV}='{v}' is not a number of seconds; using 10");
                default
            }
        },
        Err(_) => default,
    }
}

/// State of the plain lines written to a log.
struct LogLines {
    interval: Duration,
    last: Instant,
    printed: bool,
    done: u64,
    message: String,
}

enum Display {
    Off,
    Bar(ProgressBar),
    Log(Mutex<LogLines>),
}

/// Progress over `total` units of work.
pub struct Progress {
    label: String,
    total: u64,
    unit: Unit,
    start: Instant,
    display: Display,
}

impl Progress {
    /// A bar on a terminal, lines in a log, or nothing under `--quiet`.
    pub fn new(label: &str, total: u64, unit: Unit) -> Self {
        let display = if quiet() {
            Display::Off
        } else if std::io::stderr().is_terminal() {
            Display::Bar(bar(label, total, unit))
        } else {
            Display::Log(Mutex::new(LogLines {
                interval: log_interval(),
                last: Instant::now(),
                printed: false,
                done: 0,
                message: String::new(),
            }))
        };
        Self {
            label: label.to_string(),
            total,
            unit,
            start: Instant::now(),
            display,
        }
    }

    /// A display that shows nothing (for callers that report differently).
    pub fn hidden() -> Self {
        Self {
            label: String::new(),
            total: 0,
            unit: Unit::Items(""),
            start: Instant::now(),
            display: Display::Off,
        }
    }

    /// Sets the work done so far.
    pub fn set(&self, done: u64) {
        match &self.display {
            Display::Off => {}
            Display::Bar(b) => b.set_position(done),
            Display::Log(lines) => {
                let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
                l.done = done;
                if l.last.elapsed() >= l.interval && done < self.total {
                    eprintln!("{}", self.line(&l));
                    l.last = Instant::now();
                    l.printed = true;
                }
            }
        }
    }

    /// Adds `n` units of work done.
    pub fn inc(&self, n: u64) {
        let done = match &self.display {
            Display::Off => return,
            Display::Bar(b) => b.position(),
            Display::Log(lines) => lines.lock().unwrap_or_else(|e| e.into_inner()).done,
        };
        self.set(done + n);
    }

    /// What is being worked on now (a cell's name, a file), shown after the numbers.
    pub fn set_message(&self, message: &str) {
        match &self.display {
            Display::Off => {}
            Display::Bar(b) => b.set_message(message.to_string()),
            Display::Log(lines) => {
                lines.lock().unwrap_or_else(|e| e.into_inner()).message = message.to_string()
            }
        }
    }

    /// Ends the display: the bar is cleared; in a log a last line is written when earlier
    /// lines were.
    pub fn finish(&self) {
        match &self.display {
            Display::Off => {}
            Display::Bar(b) => b.finish_and_clear(),
            Display::Log(lines) => {
                let l = lines.lock().unwrap_or_else(|e| e.into_inner());
                if l.printed {
                    eprintln!(
                        "{}: {} {} done in {}",
                        self.label,
                        self.unit.amount(l.done),
                        self.unit_name(),
                        clock(self.start.elapsed().as_secs_f64())
                    );
                }
            }
        }
    }

    fn unit_name(&self) -> &'static str {
        match self.unit {
            Unit::Items(name) => name,
            Unit::Bytes => "",
        }
    }

    /// `perplexity: 40/170 windows (24%), 3.1/s, elapsed 0:13, ETA 0:42 — cell relu`.
    fn line(&self, l: &LogLines) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        let rate = l.done as f64 / elapsed.max(1e-9);
        let left = self.total.saturating_sub(l.done) as f64;
        let eta = if rate > 0.0 { left / rate } else { f64::NAN };
        let pct = 100.0 * l.done as f64 / self.total.max(1) as f64;
        let rate = match self.unit {
            Unit::Items(_) => format!("{rate:.1}/s"),
            Unit::Bytes => format!("{}/s", HumanBytes(rate as u64)),
        };
        let mut line = format!(
            "{}: {}/{} {} ({pct:.0}%), {rate}, elapsed {}, ETA {}",
            self.label,
            self.unit.amount(l.done),
            self.unit.amount(self.total),
            self.unit_name(),
            clock(elapsed),
            clock(eta)
        );
        if !l.message.is_empty() {
            line.push_str(" — ");
            line.push_str(&l.message);
        }
        line.replace("  ", " ")
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Display::Bar(b) = &self.display {
            b.finish_and_clear();
        }
    }
}

/// The terminal bar: the same look in every command.
fn bar(label: &str, total: u64, unit: Unit) -> ProgressBar {
    let counts = match unit {
        Unit::Items(name) => format!("{{pos}}/{{len}} {name}"),
        Unit::Bytes => "{bytes}/{total_bytes}".to_string(),
    };
    let rate = match unit {
        Unit::Items(_) => "{rate}",
        Unit::Bytes => "{bytes_per_sec}",
    };
    let template = format!(
        "{{prefix}} [{{bar:30}}] {counts} ({{percent}}%), {rate}, elapsed {{elapsed_precise}}, ETA {{eta_precise}} {{msg}}"
    );
    let style = ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
    let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    b.set_style(style);
    b.set_prefix(format!("{label}:"));
    b
}

/// `m:ss`, or `h:mm:ss` from an hour on; `?` when unknown.
fn clock(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".to_string();
    }
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// Download progress for the hf-hub crate: a [`Progress`] in bytes per file (none with
/// `HF_HUB_DISABLE_PROGRESS_BARS` set, as huggingface_hub does).
pub struct DownloadProgress {
    progress: Option<Progress>,
}

impl DownloadProgress {
    pub fn new() -> Self {
        Self { progress: None }
    }
}

impl Default for DownloadProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl hf_hub::api::Progress for DownloadProgress {
    fn init(&mut self, size: usize, filename: &str) {
        if std::env::var_os("HF_HUB_DISABLE_PROGRESS_BARS").is_some() {
            return;
        }
        self.progress = Some(Progress::new(
            &format!("download {filename}"),
            size as u64,
            Unit::Bytes,
        ));
    }

    fn update(&mut self, size: usize) {
        if let Some(p) = &self.progress {
            p.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(p) = self.progress.take() {
            p.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_say_done_total_rate_and_eta() {
        let p = Progress {
            label: "perplexity".into(),
            total: 170,
            unit: Unit::Items("windows"),
            start: Instant::now() - Duration::from_secs(13),
            display: Display::Off,
        };
        let l = LogLines {
            interval: Duration::ZERO,
            last: Instant::now(),
            printed: false,
            done: 40,
            message: "cell relu".into(),
        };
        let line = p.line(&l);
        assert!(
            line.starts_with("perplexity: 40/170 windows (24%), 3.1/s, elapsed 0:13, ETA 0:4"),
            "{line}"
        );
        assert!(line.ends_with(" — cell relu"), "{line}");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(f64::NAN), "?");
    }
}
