//! Charts of a grid's results, as SVG and PNG: perplexity per variant (log scale) and the
//! layer-sweep heat map (perplexity relative to the baseline, one row per swept activation,
//! one column per layer). PNG text is drawn with the embedded DejaVu Sans.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::grid::results::Row;

static FONT: Once = Once::new();

/// Draws one chart twice, as `DIR/NAME.svg` and `DIR/NAME.png`, with `|area| body` run once
/// per backend (plotters' drawing code is generic over the backend, closures are not).
macro_rules! svg_and_png {
    ($dir:expr, $name:expr, $size:expr, |$area:ident| $body:expr) => {{
        let svg = $dir.join(format!("{}.svg", $name));
        {
            let $area = SVGBackend::new(&svg, $size).into_drawing_area();
            $body?;
        }
        let png = $dir.join(format!("{}.png", $name));
        {
            let $area = BitMapBackend::new(&png, $size).into_drawing_area();
            $body?;
        }
        [svg, png]
    }};
}

pub(crate) fn register_font() {
    FONT.call_once(|| {
        // The font is a valid TTF shipped in the repository; a failure would only lose PNG text.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../../assets/fonts/DejaVuSans.ttf"),
        );
    });
}

/// Draws every chart for the rows of one model × dataset into `dir`, with file names ending
/// in `suffix` (empty for a single pair). Returns the files written.
pub fn draw_all(rows: &[Row], dir: &Path, suffix: &str) -> anyhow::Result<Vec<PathBuf>> {
    register_font();
    let mut written = Vec::new();
    let bars: Vec<&Row> = rows.iter().filter(|r| r.sweep.is_none()).collect();
    if !bars.is_empty() {
        let title = format!("Perplexity by FFN activation — {}", subtitle(rows));
        let h = 110 + 34 * bars.len() as u32;
        let name = format!("perplexity{suffix}");
        written.extend(svg_and_png!(dir, name, (900, h), |area| perplexity_bars(
            area, &bars, &title
        )));
    }
    let sweep: Vec<&Row> = rows.iter().filter(|r| r.sweep.is_some()).collect();
    if !sweep.is_empty() {
        let title = format!(
            "Swapping one layer at a time: perplexity ÷ baseline — {}",
            subtitle(rows)
        );
        let groups = sweep_groups(&sweep).len() as u32;
        let h = 110 + 60 * groups;
        let name = format!("sweep{suffix}");
        written.extend(svg_and_png!(dir, name, (900, h), |area| sweep_heatmap(
            area, &sweep, &title
        )));
    }
    Ok(written)
}

fn subtitle(rows: &[Row]) -> String {
    rows.first()
        .map(|r| {
            format!(
                "{} on {}",
                crate::grid::results::short_name(&r.model),
                crate::grid::results::short_name(&r.dataset)
            )
        })
        .unwrap_or_default()
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing chart: {e}")
}

fn perplexity_bars<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    rows: &[&Row],
    title: &str,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let lo = rows
        .iter()
        .map(|r| r.perplexity)
        .fold(f64::INFINITY, f64::min)
        .max(1e-3)
        / 1.5;
    let hi = rows
        .iter()
        .map(|r| r.perplexity)
        .fold(0.0, f64::max)
        .max(lo * 2.0)
        * 1.6;
    let n = rows.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(190)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n - 1).into_segmented())
        .map_err(err)?;
    // Segment i from the top holds row i: the baseline first, as the table lists them.
    let slot = |i: usize| n - 1 - i;
    let names: Vec<String> = rows.iter().rev().map(|r| r.variant.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("perplexity (log scale)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, r) in rows.iter().enumerate() {
        let color = if r.is_baseline {
            RGBColor(90, 90, 90)
        } else {
            RGBColor(200, 60, 50)
        };
        let mut bar = Rectangle::new(
            [
                (lo, SegmentValue::Exact(slot(i))),
                (r.perplexity, SegmentValue::Exact(slot(i) + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        chart.draw_series(std::iter::once(bar)).map_err(err)?;
        let label = format!("{:.2}  (×{:.2})", r.perplexity, r.ratio_perplexity);
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (r.perplexity * 1.03, SegmentValue::CenterOf(slot(i))),
                ("sans-serif", 13)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Sweep names in first-seen order.
fn sweep_groups(rows: &[&Row]) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for r in rows {
        if let Some(g) = &r.sweep {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
    }
    groups
}

/// Drawn in pixel coordinates: one row per sweep, one column per layer.
fn sweep_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    rows: &[&Row],
    title: &str,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let groups = sweep_groups(rows);
    let n_layer = rows
        .iter()
        .filter_map(|r| r.sweep_layer)
        .max()
        .map_or(1, |m| m + 1) as i32;
    let max_log = rows
        .iter()
        .map(|r| r.ratio_perplexity.ln().abs())
        .fold(1e-9, f64::max);
    let (width, _) = root.dim_in_pixel();
    let (left, top, cell_h) = (190i32, 60i32, 60i32);
    let cell_w = ((width as i32 - left - 20) / n_layer).max(20);
    let centered = |size: u32, color: &RGBColor| {
        ("sans-serif", size)
            .into_font()
            .color(color)
            .pos(Pos::new(HPos::Center, VPos::Center))
    };
    root.draw(&Text::new(
        title.to_string(),
        (width as i32 / 2, 24),
        centered(18, &BLACK),
    ))
    .map_err(err)?;
    for (g, name) in groups.iter().enumerate() {
        let y = top + g as i32 * cell_h + cell_h / 2;
        let style = ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new(name.clone(), (left - 10, y), style))
            .map_err(err)?;
    }
    for l in 0..n_layer {
        let (x, y) = (
            left + l * cell_w + cell_w / 2,
            top + groups.len() as i32 * cell_h + 16,
        );
        root.draw(&Text::new(
            format!("layer {l}"),
            (x, y),
            centered(14, &BLACK),
        ))
        .map_err(err)?;
    }
    for r in rows {
        let (Some(g), Some(l)) = (
            r.sweep
                .as_ref()
                .and_then(|g| groups.iter().position(|x| x == g)),
            r.sweep_layer,
        ) else {
            continue;
        };
        // White at ×1, red for worse, blue for better; saturation by |ln ratio| / max.
        let t = (r.ratio_perplexity.ln() / max_log).clamp(-1.0, 1.0);
        let mix = |a: f64, b: f64, t: f64| (a + (b - a) * t).round() as u8;
        let color = if t >= 0.0 {
            RGBColor(
                mix(255.0, 200.0, t),
                mix(255.0, 40.0, t),
                mix(255.0, 40.0, t),
            )
        } else {
            RGBColor(
                mix(255.0, 40.0, -t),
                mix(255.0, 90.0, -t),
                mix(255.0, 200.0, -t),
            )
        };
        let (x0, y0) = (left + l as i32 * cell_w, top + g as i32 * cell_h);
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + cell_w - 2, y0 + cell_h - 2)],
            color.filled(),
        ))
        .map_err(err)?;
        let text_color = if t.abs() > 0.6 { WHITE } else { BLACK };
        let label = format!("×{:.2}", r.ratio_perplexity);
        root.draw(&Text::new(
            label,
            (x0 + cell_w / 2, y0 + cell_h / 2),
            centered(14, &text_color),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Diagnostics charts: mean |f′(h)| and mean f(h) per layer (original vs swapped), and the
/// gradient norm entering each layer.
pub fn draw_diagnosis(
    main: &crate::eval::diagnose::Diagnosis,
    original: Option<&crate::eval::diagnose::Diagnosis>,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    register_font();
    type Metric = fn(&crate::eval::diagnose::LayerStats) -> f64;
    let charts: [(&str, &str, Metric); 3] = [
        (
            "deriv_mean",
            "mean |f′(h)| by layer (claim 1: saturation)",
            |l| l.deriv_mean,
        ),
        (
            "post_mean",
            "mean activation f(h) by layer (claim 2: centring)",
            |l| l.post_mean,
        ),
        (
            "grad_norm",
            "‖∂loss/∂x‖ entering each layer (claim 1: gradient flow)",
            |l| l.grad_norm,
        ),
    ];
    let mut written = Vec::new();
    for (name, title, metric) in charts {
        let mut series: Vec<(String, Vec<f64>)> = Vec::new();
        if let Some(o) = original {
            series.push((o.activation.clone(), o.layers.iter().map(metric).collect()));
        }
        series.push((
            main.activation.clone(),
            main.layers.iter().map(metric).collect(),
        ));
        written.extend(svg_and_png!(dir, name, (800, 420), |area| line_chart(
            area, title, &series
        )));
    }
    Ok(written)
}

fn line_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let n = series.iter().map(|(_, v)| v.len()).max().unwrap_or(1);
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.3f64..(n as f64 - 0.7), (lo - pad)..(hi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| format!("{}", v.round() as i64))
        .x_desc("layer")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let colors = [RGBColor(90, 90, 90), RGBColor(200, 60, 50)];
    for (i, (label, values)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(l, &v)| (l as f64, v))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Charts per model × dataset pair (suffixed when there is more than one).
pub fn write_charts(rows: &[Row], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for r in rows {
        let p = (r.model.clone(), r.dataset.clone());
        if !pairs.contains(&p) {
            pairs.push(p);
        }
    }
    let mut files = Vec::new();
    for (i, (m, d)) in pairs.iter().enumerate() {
        let group: Vec<Row> = rows
            .iter()
            .filter(|r| &r.model == m && &r.dataset == d)
            .cloned()
            .collect();
        let suffix = if pairs.len() > 1 {
            format!("-{}", i + 1)
        } else {
            String::new()
        };
        files.extend(draw_all(&group, dir, &suffix)?);
    }
    Ok(files)
}
