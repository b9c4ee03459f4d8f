//! Value axes for the charts: a log axis from a power of ten with ticks that read 10, 100,
//! 1k, 10k, …, or — when the values sit in a narrow band — a linear axis from a round floor
//! just below them, so that close values are drawn apart.

/// Values spanning less than this factor get a linear axis.
const NARROW_BAND: f64 = 3.0;

/// A value axis: where values fall, as a fraction of the axis length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Scale {
    Log { lo: f64, hi: f64 },
    Linear { lo: f64, hi: f64 },
}

impl Scale {
    /// The axis for positive `values`: log from the power of ten at or below the smallest,
    /// or linear from a round floor when they span less than ×3. The top is the largest
    /// value; [`Scale::fit_labels`] extends it.
    pub fn for_values(values: &[f64]) -> Self {
        let (min, max) = values
            .iter()
            .filter(|v| v.is_finite() && **v > 0.0)
            .fold((f64::INFINITY, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
        if !min.is_finite() {
            return Scale::Linear { lo: 0.0, hi: 1.0 };
        }
        if max / min < NARROW_BAND {
            let lo = linear_floor(min, max);
            Scale::Linear {
                lo,
                hi: max.max(lo + f64::EPSILON),
            }
        } else {
            let lo = 10f64.powf(min.log10().floor());
            Scale::Log { lo, hi: max }
        }
    }

    /// Where `v` falls, 0 at the start of the axis and 1 at its end (clamped).
    pub fn frac(&self, v: f64) -> f64 {
        let f = match *self {
            Scale::Log { lo, hi } => (v.max(lo * 1e-9).ln() - lo.ln()) / (hi.ln() - lo.ln()),
            Scale::Linear { lo, hi } => (v - lo) / (hi - lo),
        };
        f.clamp(0.0, 1.0)
    }

    /// Extends the top so that each item — a value ending at `v` followed by `gap_px`
    /// pixels of label — fits in an axis `len_px` long.
    pub fn fit_labels(self, items: &[(f64, f64)], len_px: f64) -> Self {
        let need = |lo_t: f64, v_t: f64, label: f64| {
            let room = (len_px - label).max(len_px * 0.2);
            lo_t + (v_t - lo_t) * len_px / room
        };
        match self {
            Scale::Log { lo, hi } => {
                let top = items
                    .iter()
                    .map(|&(v, label)| need(lo.ln(), v.max(lo).ln(), label))
                    .fold(hi.ln(), f64::max);
                Scale::Log { lo, hi: top.exp() }
            }
            Scale::Linear { lo, hi } => {
                let top = items
                    .iter()
                    .map(|&(v, label)| need(lo, v.max(lo), label))
                    .fold(hi, f64::max);
                Scale::Linear { lo, hi: top }
            }
        }
    }

    /// Tick values within the axis: powers of ten on a log axis, round steps on a linear one.
    pub fn ticks(&self) -> Vec<f64> {
        match *self {
            Scale::Log { lo, hi } => {
                let mut t = Vec::new();
                let mut v = lo;
                while v <= hi * (1.0 + 1e-9) {
                    t.push(v);
                    v *= 10.0;
                }
                t
            }
            Scale::Linear { lo, hi } => {
                let step = nice_step((hi - lo) / 6.0);
                let first = (lo / step).ceil() * step;
                (0..)
                    .map(|i| first + i as f64 * step)
                    .take_while(|v| *v <= hi + step * 1e-9)
                    .collect()
            }
        }
    }

    /// Minor gridlines of a log axis: 2×, 3×, … 9× each power of ten.
    pub fn minor_ticks(&self) -> Vec<f64> {
        match *self {
            Scale::Log { lo, hi } => {
                let mut t = Vec::new();
                let mut decade = lo;
                while decade <= hi {
                    t.extend((2..10).map(|k| decade * k as f64).filter(|v| *v <= hi));
                    decade *= 10.0;
                }
                t
            }
            Scale::Linear { .. } => Vec::new(),
        }
    }

    /// A tick's label: `100`, `1k`, `10k`, `1M` on a log axis; the step's decimals on a
    /// linear one.
    pub fn tick_label(&self, v: f64) -> String {
        match *self {
            Scale::Log { .. } => si(v),
            Scale::Linear { lo, hi } => {
                let step = nice_step((hi - lo) / 6.0);
                let decimals = (-step.log10().floor()).max(0.0) as usize;
                format!("{v:.decimals$}")
            }
        }
    }
}

/// `100`, `1k`, `10k`, `1M`, `0.1`: a power of ten in few characters.
pub(super) fn si(v: f64) -> String {
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, unit) in units {
        if v >= scale {
            return format!("{}{unit}", trim(v / scale));
        }
    }
    trim(v)
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw * 0.999)
        .unwrap_or(10.0 * p)
}

/// A round value below `min`, leaving a quarter of the band below the smallest value (and
/// never below 0): the start of a linear axis for values in a narrow band.
fn linear_floor(min: f64, max: f64) -> f64 {
    let band = (max - min).max(min * 0.01);
    let step = nice_step(band / 4.0);
    (((min - band / 4.0) / step).floor() * step).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_ranges_get_a_log_axis_from_a_power_of_ten() {
        let s = Scale::for_values(&[73.4, 104.4, 301.9, 40473.6]);
        assert_eq!(
            s,
            Scale::Log {
                lo: 10.0,
                hi: 40473.6
            }
        );
        let labels: Vec<String> = s.ticks().iter().map(|&t| s.tick_label(t)).collect();
        assert_eq!(labels, ["10", "100", "1k", "10k"]);
        assert_eq!(si(1_000_000.0), "1M");
        assert_eq!(si(0.1), "0.1");
        assert!((s.frac(1000.0) - 2.0 / (40473.6f64.log10() - 1.0)).abs() < 1e-9);
    }

    #[test]
    fn narrow_bands_get_a_linear_axis_that_shows_them_apart() {
        let s = Scale::for_values(&[30.1, 30.5, 31.2, 29.8]);
        let Scale::Linear { lo, .. } = s else {
            panic!("{s:?}")
        };
        assert!(lo > 25.0 && lo < 29.8, "{lo}");
        // The smallest and largest are at least half the axis apart.
        assert!(s.frac(31.2) - s.frac(29.8) > 0.5);
        assert!(s.ticks().len() >= 3);
    }

    #[test]
    fn the_top_leaves_room_for_labels() {
        let s = Scale::Log {
            lo: 10.0,
            hi: 1000.0,
        }
        .fit_labels(&[(1000.0, 100.0)], 500.0);
        assert!((s.frac(1000.0) * 500.0 + 100.0 - 500.0).abs() < 1e-6);
    }
}
