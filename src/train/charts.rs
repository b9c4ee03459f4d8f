//! Training charts, SVG and PNG: the loss (training, and held-out mean NLL) and the held-out
//! perplexity against the step, and per-layer gradient norms against the step (into each
//! block, and of each layer's first MLP weight). The same line chart draws grids' curves.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::train::log::LogRecord;

/// One named line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart to draw: file name, title, axis labels, lines, log-scale y.
pub struct LineChart {
    pub file: String,
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub series: Vec<Series>,
    pub log_y: bool,
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing chart: {e}")
}

impl LineChart {
    pub fn new(
        file: &str,
        title: &str,
        x_desc: &str,
        y_desc: &str,
        series: Vec<Series>,
        log_y: bool,
    ) -> Self {
        Self {
            file: file.into(),
            title: title.into(),
            x_desc: x_desc.into(),
            y_desc: y_desc.into(),
            series,
            log_y,
        }
    }

    /// Draws `DIR/FILE.svg` and `DIR/FILE.png` (nothing if there are no points).
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        if self.series.iter().all(|s| s.points.is_empty()) {
            return Ok(Vec::new());
        }
        crate::grid::charts::register_font();
        let svg = dir.join(format!("{}.svg", self.file));
        self.draw(SVGBackend::new(&svg, (900, 520)).into_drawing_area())?;
        let png = dir.join(format!("{}.png", self.file));
        self.draw(BitMapBackend::new(&png, (900, 520)).into_drawing_area())?;
        Ok(vec![svg, png])
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(err)?;
        let pts = || self.series.iter().flat_map(|s| s.points.iter());
        let valid = |y: f64| y.is_finite() && (!self.log_y || y > 0.0);
        let x_hi = pts().map(|p| p.0).fold(1.0, f64::max);
        let ys: Vec<f64> = pts().map(|p| p.1).filter(|&y| valid(y)).collect();
        let (lo, hi) = ys
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
                (a.min(y), b.max(y))
            });
        let (lo, hi) = if lo < hi {
            (lo, hi)
        } else {
            (lo * 0.9 - 1e-9, hi * 1.1 + 1e-9)
        };
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(&self.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(70);
        let style = |i: usize| Palette99::pick(i).stroke_width(2);
        macro_rules! body {
            ($chart:expr $(, $y_label:expr)?) => {{
                let mut chart = $chart;
                let mut mesh = chart.configure_mesh();
                mesh.x_desc(&self.x_desc)
                    .y_desc(&self.y_desc)
                    .label_style(("sans-serif", 13));
                $(
                    let label = $y_label;
                    mesh.y_label_formatter(&label);
                )?
                mesh.draw().map_err(err)?;
                for (i, s) in self.series.iter().enumerate() {
                    let line = s.points.iter().copied().filter(|p| valid(p.1));
                    chart
                        .draw_series(LineSeries::new(line, style(i)))
                        .map_err(err)?
                        .label(s.name.clone())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], style(i))
                        });
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 12))
                    .draw()
                    .map_err(err)?;
            }};
        }
        if self.log_y {
            // Our own ticks: plotters' log axis labels some values twice ("1000.0" at 1000
            // and just above it).
            let (lo, hi) = (lo * 0.95, hi * 1.05);
            let (bold, light) = log_ticks(lo, hi);
            let y = (lo..hi)
                .log_scale()
                .with_key_points(bold)
                .with_light_points(light);
            body!(
                builder.build_cartesian_2d(0f64..x_hi, y).map_err(err)?,
                |v: &f64| tick_text(*v)
            );
        } else {
            let pad = (hi - lo) * 0.05;
            body!(builder
                .build_cartesian_2d(0f64..x_hi, lo - pad..hi + pad)
                .map_err(err)?);
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

/// Ticks of a log axis over `lo..hi`: 1, 2 and 5 times each power of ten (labelled), and
/// the other multiples (gridlines only).
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return (bold, light);
    }
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for k in 1..10 {
            let v = decade * k as f64;
            if v >= lo && v <= hi {
                match k {
                    1 | 2 | 5 => bold.push(v),
                    _ => light.push(v),
                }
            }
        }
        decade *= 10.0;
    }
    (bold, light)
}

/// A log axis tick: `2000`, `500`, `0.5` (no trailing zeros).
fn tick_text(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// (step, value) for the records that have the value.
pub fn points(log: &[LogRecord], value: impl Fn(&LogRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    log.iter()
        .filter_map(|r| value(r).map(|v| (r.step as f64, v)))
        .collect()
}

/// The charts of one run's log, titled with `what` (model and activation).
pub fn training_charts(log: &[LogRecord], what: &str) -> Vec<LineChart> {
    let n_layer = log.iter().map(|r| r.layers.len()).max().unwrap_or(0);
    let per_layer = |value: fn(&crate::train::step::LayerGrads) -> Option<f64>| {
        (0..n_layer)
            .map(|l| Series {
                name: format!("layer {l}"),
                points: points(log, |r| r.layers.get(l).and_then(value)),
            })
            .collect()
    };
    vec![
        LineChart {
            file: "loss".into(),
            title: format!("Loss — {what}"),
            x_desc: "step".into(),
            y_desc: "mean NLL (nats/token)".into(),
            series: vec![
                Series {
                    name: "training".into(),
                    points: points(log, |r| r.loss),
                },
                Series {
                    name: "held-out".into(),
                    points: points(log, |r| r.eval_mean_nll),
                },
            ],
            log_y: false,
        },
        LineChart {
            file: "perplexity".into(),
            title: format!("Held-out perplexity — {what}"),
            x_desc: "step".into(),
            y_desc: "perplexity (log scale)".into(),
            series: vec![Series {
                name: "held-out".into(),
                points: points(log, |r| r.eval_perplexity),
            }],
            log_y: true,
        },
        LineChart {
            file: "grad_norms".into(),
            title: format!("‖∂loss/∂x‖ into each block — {what}"),
            x_desc: "step".into(),
            y_desc: "gradient norm (log scale)".into(),
            series: per_layer(|g| Some(g.block_input)),
            log_y: true,
        },
        LineChart {
            file: "grad_norms_mlp".into(),
            title: format!("‖∂loss/∂W‖ of each layer's first MLP weight — {what}"),
            x_desc: "step".into(),
            y_desc: "gradient norm (log scale)".into(),
            series: per_layer(|g| g.mlp.get("fc").or(g.mlp.get("gate")).copied()),
            log_y: true,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_label_each_value_once() {
        let (bold, light) = log_ticks(80.0, 2100.0);
        assert_eq!(bold, [100.0, 200.0, 500.0, 1000.0, 2000.0]);
        assert_eq!(light[..3], [80.0, 90.0, 300.0]);
        assert!(light.iter().all(|v| !bold.contains(v)));
        let labels: Vec<String> = bold.iter().map(|&v| tick_text(v)).collect();
        assert_eq!(labels, ["100", "200", "500", "1000", "2000"]);
        assert_eq!(tick_text(0.5), "0.5");
        assert_eq!(log_ticks(0.0, 10.0), (vec![], vec![]));
    }
}
