//! The per-layer charts of `diagnose`: saturation (mean |f′(h)|), centring (mean f(h)) and
//! gradient norms by layer, the original activation beside the swapped one.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use plotters::style::text_anchor::{HPos, VPos};

use super::axis::Scale;
use super::text::{width, Label};
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
        written.extend(svg_and_png!(dir, name, (WIDTH, HEIGHT), |area, labels| {
            line_chart(&area, title, &series, &mut labels)
        }));
    }
    Ok(written)
}

/// Pixel layout of a line chart: the plot rectangle and the value axis.
struct Layout {
    x0: i32,
    x1: i32,
    y0: i32,
    y1: i32,
    scale: Scale,
    n: usize,
}

impl Layout {
    fn new(series: &[(String, Vec<f64>)]) -> Self {
        let n = series
            .iter()
            .map(|(_, v)| v.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let all = series.iter().flat_map(|(_, v)| v.iter().copied());
        let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.1).max(1e-3);
        let scale = Scale::Linear {
            lo: lo - pad,
            hi: hi + pad,
        };
        let label_w = scale
            .ticks()
            .iter()
            .map(|&t| width(&scale.tick_label(t), 13.0).ceil() as i32)
            .max()
            .unwrap_or(0);
        Self {
            x0: 20 + label_w + 10,
            x1: WIDTH as i32 - 20,
            y0: 56,
            y1: HEIGHT as i32 - 64,
            scale,
            n,
        }
    }

    fn x(&self, layer: usize) -> i32 {
        let w = (self.x1 - self.x0) as f64;
        self.x0 + ((layer as f64 + 0.5) / self.n as f64 * w).round() as i32
    }

    fn y(&self, v: f64) -> i32 {
        self.y1 - (self.scale.frac(v) * (self.y1 - self.y0) as f64).round() as i32
    }
}

const WIDTH: u32 = 800;
const HEIGHT: u32 = 440;
const COLORS: [RGBColor; 2] = [RGBColor(110, 110, 110), RGBColor(196, 64, 52)];

fn line_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[(String, Vec<f64>)],
    labels: &mut Vec<Label>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let l = Layout::new(series);
    labels.push(Label::new(title, (WIDTH as i32 / 2, 14), 17.0).anchor(HPos::Center, VPos::Top));
    axes(root, &l, labels)?;
    for (i, (name, values)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(i32, i32)> = values
            .iter()
            .enumerate()
            .map(|(layer, &v)| (l.x(layer), l.y(v)))
            .collect();
        root.draw(&PathElement::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?;
        for p in points {
            root.draw(&Circle::new(p, 4, color.filled())).map_err(err)?;
        }
        let y = l.y0 + 10 + 20 * i as i32;
        let key = vec![(l.x1 - 180, y), (l.x1 - 156, y)];
        root.draw(&PathElement::new(key, color.stroke_width(2)))
            .map_err(err)?;
        labels
            .push(Label::new(name.clone(), (l.x1 - 150, y), 13.0).anchor(HPos::Left, VPos::Center));
    }
    Ok(())
}

/// Gridlines, the value ticks on the left, layer numbers below.
fn axes<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    l: &Layout,
    labels: &mut Vec<Label>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    for t in l.scale.ticks() {
        let y = l.y(t);
        let grid = PathElement::new(
            vec![(l.x0, y), (l.x1, y)],
            RGBColor(225, 225, 225).stroke_width(1),
        );
        root.draw(&grid).map_err(err)?;
        labels.push(
            Label::new(l.scale.tick_label(t), (l.x0 - 8, y), 13.0)
                .anchor(HPos::Right, VPos::Center),
        );
    }
    let frame = vec![(l.x0, l.y0), (l.x0, l.y1), (l.x1, l.y1)];
    root.draw(&PathElement::new(frame, BLACK.stroke_width(1)))
        .map_err(err)?;
    for layer in 0..l.n {
        labels.push(
            Label::new(layer.to_string(), (l.x(layer), l.y1 + 6), 13.0)
                .anchor(HPos::Center, VPos::Top),
        );
    }
    let mid = (l.x0 + l.x1) / 2;
    labels.push(Label::new("layer", (mid, l.y1 + 30), 14.0).anchor(HPos::Center, VPos::Top));
    Ok(())
}
