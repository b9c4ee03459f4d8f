//! The runner's progress line on stderr: cell, percentage of the run's forward passes,
//! elapsed time and ETA.

use std::time::Instant;

/// Progress over a run's pending cells, counted in forward passes over a batch of windows.
pub(crate) struct Progress {
    /// Draw the line (stderr is a terminal).
    enabled: bool,
    /// Pending cells.
    cells: usize,
    /// Forward passes the run is expected to take.
    total_work: usize,
    /// Forward passes of the cells finished so far.
    pub work_done: usize,
    start: Instant,
}

impl Progress {
    pub fn new(enabled: bool, cells: usize, total_work: usize) -> Self {
        Self {
            enabled,
            cells,
            total_work,
            work_done: 0,
            start: Instant::now(),
        }
    }

    /// Redraws the line: the `i`-th pending cell (from 0), named `name`, `cell_work` passes in.
    pub fn draw(&self, i: usize, name: &str, cell_work: usize) {
        if !self.enabled {
            return;
        }
        let w = self.work_done + cell_work;
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = if w > 0 {
            elapsed / w as f64 * self.total_work.saturating_sub(w) as f64
        } else {
            0.0
        };
        eprint!(
            "\r\x1b[2K[{}/{}] {:<28} {:>3.0}%  elapsed {}  ETA {}",
            i + 1,
            self.cells,
            truncate(name, 28),
            100.0 * w as f64 / self.total_work.max(1) as f64,
            clock(elapsed),
            clock(eta)
        );
    }

    /// Erases the line, if one was drawn.
    pub fn clear(&self) {
        if self.enabled && self.cells > 0 {
            eprint!("\r\x1b[2K");
        }
    }
}

fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}
