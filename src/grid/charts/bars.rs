//! The perplexity chart of one model × dataset: a horizontal bar per variant (the baseline
//! first, in grey), its value and ratio to the baseline beside it, error bars where a row
//! has an interval. Laid out in pixels from measured text, so no label is ever cut off.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::axis::Scale;
use super::text::{width, Label};
use super::{err, pair_title, svg_and_png};
use crate::grid::results::Row;

const ROW_H: i32 = 30;
const BAR_H: i32 = 20;
const TOP: i32 = 84;
const BOTTOM: i32 = 70;
const MARGIN: i32 = 20;
const BASELINE_GREY: RGBColor = RGBColor(110, 110, 110);
const VARIANT_RED: RGBColor = RGBColor(196, 64, 52);

/// Sizes that depend on the text: the label column and the axis.
struct Layout {
    width: u32,
    height: u32,
    /// Left and right ends of the value axis, in pixels.
    x0: i32,
    x1: i32,
    scale: Scale,
}

/// Width in whole pixels of `text` at `size`.
fn text_width(text: &str, size: f32) -> i32 {
    width(text, size).ceil() as i32
}

/// `40,474`, `301.9`, `73.38`, `1.234`: four significant digits or more, never exponents.
pub(super) fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v >= 1000.0 {
        let digits = format!("{v:.0}");
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return out;
    }
    let decimals = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    format!("{v:.decimals$}")
}

/// `301.9  ×4.11`, or the value alone for the baseline.
fn value_label(r: &Row) -> String {
    if r.is_baseline {
        return fmt_value(r.perplexity);
    }
    let ratio = r.ratio_perplexity;
    let ratio = if ratio >= 100.0 {
        format!("{ratio:.0}")
    } else {
        format!("{ratio:.2}")
    };
    format!("{}  ×{ratio}", fmt_value(r.perplexity))
}

/// Where a bar and its interval end.
fn bar_end(r: &Row) -> f64 {
    r.perplexity_ci95
        .map_or(r.perplexity, |[_, hi]| hi.max(r.perplexity))
}

impl Layout {
    fn new(rows: &[&Row]) -> Self {
        let names = rows.iter().map(|r| text_width(&r.variant, 14.0)).max();
        let x0 = MARGIN + names.unwrap_or(0) + 14;
        let width = (x0 + 560).max(900);
        let x1 = width - MARGIN;
        let mut values: Vec<f64> = rows.iter().map(|r| r.perplexity).collect();
        values.extend(rows.iter().filter_map(|r| r.perplexity_ci95).flatten());
        let items: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (bar_end(r), (text_width(&value_label(r), 13.0) + 10) as f64))
            .collect();
        let scale = Scale::for_values(&values).fit_labels(&items, (x1 - x0) as f64);
        Self {
            width: width as u32,
            height: (TOP + ROW_H * rows.len() as i32 + BOTTOM) as u32,
            x0,
            x1,
            scale,
        }
    }

    fn x(&self, v: f64) -> i32 {
        self.x0 + (self.scale.frac(v) * (self.x1 - self.x0) as f64).round() as i32
    }
}

/// Draws `rows` (the non-sweep rows of one pair) into `DIR/NAME.svg` and `.png`.
pub(super) fn draw(rows: &[&Row], dir: &Path, name: &str) -> anyhow::Result<[PathBuf; 2]> {
    let layout = Layout::new(rows);
    Ok(svg_and_png!(
        dir,
        name,
        (layout.width, layout.height),
        |area, labels| paint(&area, rows, &layout, &mut labels)
    ))
}

fn paint<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rows: &[&Row],
    l: &Layout,
    labels: &mut Vec<Label>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    titles(rows, l, labels);
    grid_and_axis(root, rows.len(), l, labels)?;
    for (i, r) in rows.iter().enumerate() {
        row(root, r, TOP + ROW_H * i as i32 + ROW_H / 2, l, labels)?;
    }
    Ok(())
}

fn titles(rows: &[&Row], l: &Layout, labels: &mut Vec<Label>) {
    let mid = l.width as i32 / 2;
    let first = rows[0];
    let sub = format!(
        "{}: context {}, stride {}, {} tokens scored; grey: the unmodified model",
        pair_title(first),
        first.context,
        first.stride,
        first.tokens_scored
    );
    labels.push(
        Label::new(
            "Perplexity by feed-forward activation (lower is better)",
            (mid, 14),
            20.0,
        )
        .anchor(HPos::Center, VPos::Top),
    );
    labels.push(
        Label::new(sub, (mid, 46), 14.0)
            .anchor(HPos::Center, VPos::Top)
            .color(RGBColor(70, 70, 70)),
    );
}

fn grid_and_axis<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    n: usize,
    l: &Layout,
    labels: &mut Vec<Label>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (top, bottom) = (TOP - 6, TOP + ROW_H * n as i32 + 4);
    let line = |x: i32, color: RGBColor| {
        PathElement::new(vec![(x, top), (x, bottom)], color.stroke_width(1))
    };
    for v in l.scale.minor_ticks() {
        root.draw(&line(l.x(v), RGBColor(240, 240, 240)))
            .map_err(err)?;
    }
    for v in l.scale.ticks() {
        root.draw(&line(l.x(v), RGBColor(210, 210, 210)))
            .map_err(err)?;
        labels.push(
            Label::new(l.scale.tick_label(v), (l.x(v), bottom + 6), 13.0)
                .anchor(HPos::Center, VPos::Top),
        );
    }
    let axis = PathElement::new(vec![(l.x0, bottom), (l.x1, bottom)], BLACK.stroke_width(1));
    root.draw(&axis).map_err(err)?;
    let desc = match l.scale {
        Scale::Log { .. } => "perplexity (log scale)".to_string(),
        Scale::Linear { lo, .. } if lo > 0.0 => format!(
            "perplexity (linear scale from {}: the values are close)",
            l.scale.tick_label(lo)
        ),
        Scale::Linear { .. } => "perplexity".to_string(),
    };
    let mid = (l.x0 + l.x1) / 2;
    labels.push(Label::new(desc, (mid, bottom + 32), 14.0).anchor(HPos::Center, VPos::Top));
    Ok(())
}

/// One variant: its name, bar, interval and value label, centred on `y`.
fn row<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &Row,
    y: i32,
    l: &Layout,
    labels: &mut Vec<Label>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    labels.push(
        Label::new(r.variant.clone(), (l.x0 - 10, y), 14.0).anchor(HPos::Right, VPos::Center),
    );
    let color = if r.is_baseline {
        BASELINE_GREY
    } else {
        VARIANT_RED
    };
    let end = l.x(r.perplexity).max(l.x0 + 1);
    let bar = Rectangle::new(
        [(l.x0, y - BAR_H / 2), (end, y + BAR_H / 2)],
        color.filled(),
    );
    root.draw(&bar).map_err(err)?;
    if let Some([lo, hi]) = r.perplexity_ci95 {
        let (a, b) = (l.x(lo), l.x(hi));
        let whisker = |pts: Vec<(i32, i32)>| PathElement::new(pts, BLACK.stroke_width(1));
        root.draw(&whisker(vec![(a, y), (b, y)])).map_err(err)?;
        root.draw(&whisker(vec![(a, y - 5), (a, y + 5)]))
            .map_err(err)?;
        root.draw(&whisker(vec![(b, y - 5), (b, y + 5)]))
            .map_err(err)?;
    }
    let at = l.x(bar_end(r)) + 6;
    labels.push(Label::new(value_label(r), (at, y), 13.0).anchor(HPos::Left, VPos::Center));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_without_exponents_and_with_thousands_separators() {
        assert_eq!(fmt_value(40473.598), "40,474");
        assert_eq!(fmt_value(1234.6), "1,235");
        assert_eq!(fmt_value(301.861), "301.9");
        assert_eq!(fmt_value(73.378), "73.38");
        assert_eq!(fmt_value(1.05), "1.050");
    }
}
