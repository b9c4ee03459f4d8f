//! The layer-sweep heat map of one model × dataset: one row per swept activation, one
//! column per layer, each cell the perplexity ÷ the baseline's (white ×1, red worse, blue
//! better). Laid out in pixels from measured text.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::text::{width, Label};
use super::{err, pair_title, svg_and_png};
use crate::grid::results::Row;

const TOP: i32 = 84;
const CELL_H: i32 = 56;
const MARGIN: i32 = 20;

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

/// The layers swept, in order.
fn layers(rows: &[&Row]) -> Vec<usize> {
    let mut l: Vec<usize> = rows.iter().filter_map(|r| r.sweep_layer).collect();
    l.sort_unstable();
    l.dedup();
    l
}

struct Layout {
    width: u32,
    height: u32,
    left: i32,
    cell_w: i32,
    groups: Vec<String>,
    layers: Vec<usize>,
}

impl Layout {
    fn new(rows: &[&Row]) -> Self {
        let groups = sweep_groups(rows);
        let layers = layers(rows);
        let name_w = groups
            .iter()
            .map(|g| width(g, 14.0).ceil() as i32)
            .max()
            .unwrap_or(0);
        let left = MARGIN + name_w + 12;
        let cell_w = ((900 - left - MARGIN) / layers.len().max(1) as i32).clamp(64, 120);
        let width = (left + cell_w * layers.len() as i32 + MARGIN).max(900);
        let height = TOP + CELL_H * groups.len() as i32 + 64;
        Self {
            width: width as u32,
            height: height as u32,
            left,
            cell_w,
            groups,
            layers,
        }
    }
}

/// Draws the sweep rows of one pair into `DIR/NAME.svg` and `.png`.
pub(super) fn draw(rows: &[&Row], dir: &Path, name: &str) -> anyhow::Result<[PathBuf; 2]> {
    let l = Layout::new(rows);
    Ok(svg_and_png!(
        dir,
        name,
        (l.width, l.height),
        |area, labels| { paint(&area, rows, &l, &mut labels) }
    ))
}

/// White at ×1, red for worse, blue for better; saturation by |ln ratio| / the largest.
fn cell_color(ratio: f64, max_log: f64) -> RGBColor {
    let t = (ratio.ln() / max_log).clamp(-1.0, 1.0);
    let mix = |a: f64, b: f64, t: f64| (a + (b - a) * t).round() as u8;
    if t >= 0.0 {
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
    }
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
    let mid = l.width as i32 / 2;
    let title = "Swapping one layer at a time: perplexity ÷ baseline (lower is better)";
    let sub = format!(
        "{}; red: worse than the unmodified model, blue: better",
        pair_title(rows[0])
    );
    labels.push(Label::new(title, (mid, 14), 20.0).anchor(HPos::Center, VPos::Top));
    labels.push(
        Label::new(sub, (mid, 46), 14.0)
            .anchor(HPos::Center, VPos::Top)
            .color(RGBColor(70, 70, 70)),
    );
    axis_labels(l, labels);
    let max_log = rows
        .iter()
        .map(|r| r.ratio_perplexity.ln().abs())
        .fold(1e-9, f64::max);
    for r in rows {
        cell(root, r, l, max_log, labels)?;
    }
    Ok(())
}

/// Row names on the left, layer numbers under the columns.
fn axis_labels(l: &Layout, labels: &mut Vec<Label>) {
    for (g, name) in l.groups.iter().enumerate() {
        let y = TOP + g as i32 * CELL_H + CELL_H / 2;
        labels.push(
            Label::new(name.clone(), (l.left - 10, y), 14.0).anchor(HPos::Right, VPos::Center),
        );
    }
    let y = TOP + l.groups.len() as i32 * CELL_H + 18;
    for (c, layer) in l.layers.iter().enumerate() {
        let x = l.left + c as i32 * l.cell_w + l.cell_w / 2;
        labels.push(
            Label::new(format!("layer {layer}"), (x, y), 14.0).anchor(HPos::Center, VPos::Center),
        );
    }
}

/// One cell: its colour and its ratio.
fn cell<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &Row,
    l: &Layout,
    max_log: f64,
    labels: &mut Vec<Label>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let g = r
        .sweep
        .as_ref()
        .and_then(|g| l.groups.iter().position(|x| x == g));
    let c = r
        .sweep_layer
        .and_then(|s| l.layers.iter().position(|x| *x == s));
    let (Some(g), Some(c)) = (g, c) else {
        return Ok(());
    };
    let color = cell_color(r.ratio_perplexity, max_log);
    let (x0, y0) = (l.left + c as i32 * l.cell_w, TOP + g as i32 * CELL_H);
    root.draw(&Rectangle::new(
        [(x0, y0), (x0 + l.cell_w - 2, y0 + CELL_H - 2)],
        color.filled(),
    ))
    .map_err(err)?;
    let dark = (r.ratio_perplexity.ln() / max_log).abs() > 0.6;
    let text_color = if dark { WHITE } else { BLACK };
    let at = (x0 + l.cell_w / 2, y0 + CELL_H / 2);
    labels.push(
        Label::new(format!("×{:.2}", r.ratio_perplexity), at, 14.0)
            .anchor(HPos::Center, VPos::Center)
            .color(text_color),
    );
    Ok(())
}
