//! The runner's progress: the shared [`crate::progress::Progress`] counted in forward passes
//! over a batch of windows (what the run's time is spent on), with the current cell named.

use crate::progress::{self, Unit};

/// Progress over a run's pending cells, counted in forward passes over a batch of windows.
pub(crate) struct Progress {
    inner: progress::Progress,
    /// Pending cells.
    cells: usize,
    /// Forward passes of the cells finished so far.
    pub work_done: usize,
}

impl Progress {
    /// `enabled`: show progress (a bar on a terminal, lines in a log) unless `--quiet`.
    pub fn new(enabled: bool, cells: usize, total_work: usize) -> Self {
        let inner = if enabled && cells > 0 {
            progress::Progress::new("run", total_work as u64, Unit::Items("forward passes"))
        } else {
            progress::Progress::hidden()
        };
        Self {
            inner,
            cells,
            work_done: 0,
        }
    }

    /// Updates the display: the `i`-th pending cell (from 0), named `name`, `cell_work`
    /// passes in.
    pub fn draw(&self, i: usize, name: &str, cell_work: usize) {
        self.inner
            .set_message(&format!("cell {}/{}: {name}", i + 1, self.cells));
        self.inner.set((self.work_done + cell_work) as u64);
    }

    /// Ends the display.
    pub fn clear(&self) {
        self.inner.finish();
    }
}
