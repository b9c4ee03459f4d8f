//! The perplexity chart of one model × dataset: a horizontal bar per variant (the baseline
//! first, in grey), its value and ratio to the baseline beside it, error bars where a row
//! has an interval. Laid out in pixels from measured text, so no label is ever cut off.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::Scale;
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

/// Width in pixels of `text` at `size`.
fn text_width(text: &str, size: u32) -> i32 {
    ("sans-serif", size)
        .into_font()
        .box_size(text)
        .map_or(text.chars().count() as i32 * size as i32 * 6 / 10, |(w, _)| {
            w as i32
        })
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
        let names = rows.iter().map(|r| text_width(&r.variant, 14)).max();
        let x0 = MARGIN + names.unwrap_or(0) + 14;
        let width = (x0 + 560).max(900);
        let x1 = width - MARGIN;
        let mut values: Vec<f64> = rows.iter().map(|r| r.perplexity).collect();
        values.extend(rows.iter().filter_map(|r| r.perplexity_ci95).flatten());
        let items: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (bar_end(r), (text_width(&value_label(r), 13) + 10) as f64))
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
    Ok(svg_and_png!(dir, name, (layout.width, layout.height), |area| {
        paint(area, rows, &layout)
    }))
}

fn font(size: u32, color: &RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    ("sans-serif", size)
        .into_font()
        .color(color)
        .pos(Pos::new(h, v))
}

fn paint<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    rows: &[&Row],
    l: &Layout,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    titles(&root, rows, l)?;
    grid_and_axis(&root, rows.len(), l)?;
    for (i, r) in rows.iter().enumerate() {
        row(&root, r, TOP + ROW_H * i as i32 + ROW_H / 2, l)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn titles<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rows: &[&Row],
    l: &Layout,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let mid = l.width as i32 / 2;
    let title = "Perplexity by feed-forward activation (lower is better)";
    let first = rows[0];
    let sub = format!(
        "{}: context {}, stride {}, {} tokens scored; grey: the unmodified model",
        pair_title(first),
        first.context,
        first.stride,
        first.tokens_scored
    );
    let t = font(20, &BLACK, HPos::Center, VPos::Top);
    root.draw(&Text::new(title, (mid, 14), t)).map_err(err)?;
    let s = font(14, &RGBColor(70, 70, 70), HPos::Center, VPos::Top);
    root.draw(&Text::new(sub, (mid, 44), s)).map_err(err)?;
    Ok(())
}

fn grid_and_axis<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    n: usize,
    l: &Layout,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (top, bottom) = (TOP - 6, TOP + ROW_H * n as i32 + 4);
    let line = |x: i32, color: RGBColor| {
        PathElement::new(vec![(x, top), (x, bottom)], color.stroke_width(1))
    };
    for v in l.scale.minor_ticks() {
        root.draw(&line(l.x(v), RGBColor(240, 240, 240))).map_err(err)?;
    }
    let label = font(13, &BLACK, HPos::Center, VPos::Top);
    for v in l.scale.ticks() {
        root.draw(&line(l.x(v), RGBColor(210, 210, 210))).map_err(err)?;
        let text = Text::new(l.scale.tick_label(v), (l.x(v), bottom + 6), label.clone());
        root.draw(&text).map_err(err)?;
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
    let d = font(14, &BLACK, HPos::Center, VPos::Top);
    root.draw(&Text::new(desc, (mid, bottom + 30), d)).map_err(err)?;
    Ok(())
}

/// One variant: its name, bar, interval and value label, centred on `y`.
fn row<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &Row,
    y: i32,
    l: &Layout,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let name = font(14, &BLACK, HPos::Right, VPos::Center);
    root.draw(&Text::new(r.variant.clone(), (l.x0 - 10, y), name))
        .map_err(err)?;
    let color = if r.is_baseline {
        BASELINE_GREY
    } else {
        VARIANT_RED
    };
    let end = l.x(r.perplexity).max(l.x0 + 1);
    let bar = Rectangle::new([(l.x0, y - BAR_H / 2), (end, y + BAR_H / 2)], color.filled());
    root.draw(&bar).map_err(err)?;
    if let Some([lo, hi]) = r.perplexity_ci95 {
        let (a, b) = (l.x(lo), l.x(hi));
        let whisker = |pts: Vec<(i32, i32)>| PathElement::new(pts, BLACK.stroke_width(1));
        root.draw(&whisker(vec![(a, y), (b, y)])).map_err(err)?;
        root.draw(&whisker(vec![(a, y - 5), (a, y + 5)])).map_err(err)?;
        root.draw(&whisker(vec![(b, y - 5), (b, y + 5)])).map_err(err)?;
    }
    let value = font(13, &BLACK, HPos::Left, VPos::Center);
    let at = l.x(bar_end(r)) + 6;
    root.draw(&Text::new(value_label(r), (at, y), value))
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_without_exponents_and_with_thousands_separators() {
        assert_eq!(fmt_value(40473.598), "40,474");
        assert_eq!(fmt_value(1234.5), "1,235");
        assert_eq!(fmt_value(301.861), "301.9");
        assert_eq!(fmt_value(73.378), "73.38");
        assert_eq!(fmt_value(1.05), "1.050");
    }
}
