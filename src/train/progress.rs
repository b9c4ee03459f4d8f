//! Progress of a training run on stderr: on a terminal one line redrawn after every step
//! (step, loss, speed, time left); elsewhere a line per evaluation, so logs show progress
//! without a line per step.

use std::io::Write;
use std::time::Instant;

pub struct Progress {
    terminal: bool,
    total: usize,
    started: Instant,
    /// Steps done when this process started (resumed runs).
    first: usize,
}

impl Progress {
    pub fn new(terminal: bool, first: usize, total: usize) -> Self {
        Self {
            terminal,
            total,
            started: Instant::now(),
            first,
        }
    }

    /// Seconds left at the mean speed of this process's steps.
    fn eta(&self, step: usize) -> f64 {
        let done = step.saturating_sub(self.first).max(1) as f64;
        self.started.elapsed().as_secs_f64() / done * self.total.saturating_sub(step) as f64
    }

    /// After step `step`.
    pub fn step(&self, step: usize, loss: f64, tokens_per_second: f64) {
        if !self.terminal {
            return;
        }
        let width = 24;
        let filled = step * width / self.total.max(1);
        eprint!(
            "\r\x1b[2K  train [{}{}] {step}/{} loss {loss:.4} · {tokens_per_second:.0} tok/s · {} left",
            "=".repeat(filled),
            " ".repeat(width - filled),
            self.total,
            clock(self.eta(step)),
        );
        let _ = std::io::stderr().flush();
    }

    /// After an evaluation (step 0: before training).
    pub fn eval(&self, step: usize, perplexity: f64) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
        let left = match step {
            0 => String::new(),
            s => format!(", {} left", clock(self.eta(s))),
        };
        eprintln!(
            "  step {step}/{}: held-out perplexity {perplexity:.4}{left}",
            self.total
        );
    }

    pub fn clear(&self) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }
}

/// `1h02m`, `3m05s`, `42s`.
fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}
