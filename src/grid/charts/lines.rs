//! The per-layer charts of `diagnose`: saturation (mean |f′(h)|), centring (mean f(h)) and
//! gradient norms by layer, the original activation beside the swapped one.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{err, register_font, svg_and_png};

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
            "Saturation: mean |f′(h)| by layer (near 0: vanishing gradients)",
            |l| l.deriv_mean,
        ),
        (
            "post_mean",
            "Centring: mean activation f(h) by layer (0 is centred)",
            |l| l.post_mean,
        ),
        (
            "grad_norm",
            "Gradient flow: ‖∂loss/∂x‖ entering each layer",
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

