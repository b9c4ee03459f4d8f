//! Charts of a grid's results, as SVG and PNG, one set per model × dataset: perplexity per
//! variant ([`bars`]) and the layer-sweep heat map ([`sweep`]); and the per-layer charts of
//! `diagnose` ([`lines`]). [`axis`] chooses scales and ticks. PNG text is drawn with the
//! embedded DejaVu Sans.
//!
//! Each chart is drawn into memory and written with [`crate::fsio::write_atomic`], so a
//! failed write names the file and leaves no partial chart behind.

mod axis;
mod bars;
mod lines;
mod sweep;
mod text;

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::anyhow;
use plotters::prelude::*;

pub use lines::draw_diagnosis;

use crate::grid::results::{short_name, Row};

static FONT: Once = Once::new();

/// Draws one chart twice, into `DIR/NAME.svg` and `DIR/NAME.png`, with `|area, labels| body`
/// run once per backend (plotters' drawing code is generic over the backend, closures are
/// not). The body draws shapes on `area` and pushes its text to `labels`, which are drawn
/// as SVG text or rasterised into the PNG (see [`text`]). Both files are drawn in memory
/// first and written atomically. Evaluates to the two paths.
macro_rules! svg_and_png {
    ($dir:expr, $name:expr, $size:expr, |$area:ident, $labels:ident| $body:expr) => {{
        let size: (u32, u32) = $size;
        let mut svg_text = String::new();
        {
            let $area = SVGBackend::with_string(&mut svg_text, size).into_drawing_area();
            let mut $labels: Vec<$crate::grid::charts::text::Label> = Vec::new();
            $body?;
            $crate::grid::charts::text::draw_svg(&$area, &$labels)?;
            $area.present().map_err($crate::grid::charts::err)?;
        }
        let mut rgb = vec![255u8; size.0 as usize * size.1 as usize * 3];
        {
            let mut $labels: Vec<$crate::grid::charts::text::Label> = Vec::new();
            {
                let $area = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                $body?;
                $area.present().map_err($crate::grid::charts::err)?;
            }
            $crate::grid::charts::text::draw_rgb(&mut rgb, size, &$labels);
        }
        let svg = $dir.join(format!("{}.svg", $name));
        $crate::fsio::write_atomic(&svg, svg_text.as_bytes())?;
        let png = $dir.join(format!("{}.png", $name));
        $crate::fsio::write_atomic(&png, &$crate::grid::charts::encode_png(&rgb, size)?)?;
        [svg, png]
    }};
}
pub(crate) use svg_and_png;

pub(crate) fn register_font() {
    FONT.call_once(|| {
        // The font is a valid TTF shipped in the repository; a failure would only lose PNG text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, text::FONT_BYTES);
    });
}

/// An RGB buffer as PNG bytes.
pub(crate) fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Best);
    let mut writer = enc.write_header().map_err(err)?;
    writer.write_image_data(rgb).map_err(err)?;
    writer.finish().map_err(err)?;
    Ok(out)
}

pub(crate) fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing chart: {e}")
}

/// Draws every chart for the rows of one model × dataset into `dir`, with file names ending
/// in `suffix` (empty for a single pair). Returns the files written.
pub fn draw_all(rows: &[Row], dir: &Path, suffix: &str) -> anyhow::Result<Vec<PathBuf>> {
    register_font();
    let mut written = Vec::new();
    let bars: Vec<&Row> = rows.iter().filter(|r| r.sweep.is_none()).collect();
    if !bars.is_empty() {
        let name = format!("perplexity{suffix}");
        written.extend(bars::draw(&bars, dir, &name)?);
    }
    let sweep: Vec<&Row> = rows.iter().filter(|r| r.sweep.is_some()).collect();
    if !sweep.is_empty() {
        let name = format!("sweep{suffix}");
        written.extend(sweep::draw(&sweep, dir, &name)?);
    }
    Ok(written)
}

/// `shakespeare-gpt2 on shakespeare-val`: the pair a chart shows.
pub(crate) fn pair_title(r: &Row) -> String {
    format!("{} on {}", short_name(&r.model), short_name(&r.dataset))
}

/// A dataset's name without its file extension (`data/val.txt` → `val`).
fn stem(dataset: &str) -> String {
    Path::new(dataset)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| short_name(dataset))
}

/// A name made safe for a file name: letters, digits, `.`, `_` and `-`.
fn slug(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches('-').to_string()
}

/// The file-name suffix of each model × dataset: none for a single pair, else
/// `--MODEL--DATASET` (`perplexity--shakespeare-gpt2--shakespeare-val.png`), numbered only
/// when two pairs would get the same name.
fn suffixes(pairs: &[(String, String)]) -> Vec<String> {
    if pairs.len() == 1 {
        return vec![String::new()];
    }
    let named: Vec<String> = pairs
        .iter()
        .map(|(m, d)| format!("--{}--{}", slug(&short_name(m)), slug(&stem(d))))
        .collect();
    named
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if named.iter().filter(|t| *t == s).count() > 1 {
                format!("{s}-{}", i + 1)
            } else {
                s.clone()
            }
        })
        .collect()
}

/// Charts per model × dataset pair, named after the pair when there is more than one.
pub fn write_charts(rows: &[Row], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for r in rows {
        let p = (r.model.clone(), r.dataset.clone());
        if !pairs.contains(&p) {
            pairs.push(p);
        }
    }
    let mut files = Vec::new();
    for ((m, d), suffix) in pairs.iter().zip(suffixes(&pairs)) {
        let group: Vec<Row> = rows
            .iter()
            .filter(|r| &r.model == m && &r.dataset == d)
            .cloned()
            .collect();
        files.extend(draw_all(&group, dir, &suffix)?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_pairs_get_file_names_that_say_which() {
        let pairs = vec![
            (
                "configs/../models/shakespeare-gpt2".to_string(),
                "shakespeare-val".to_string(),
            ),
            ("gpt2".to_string(), "data/wiki text.txt".to_string()),
            ("a/gpt2".to_string(), "data/wiki text.txt".to_string()),
        ];
        assert_eq!(
            suffixes(&pairs),
            [
                "--shakespeare-gpt2--shakespeare-val",
                "--gpt2--wiki-text-2",
                "--gpt2--wiki-text-3"
            ]
        );
        assert_eq!(suffixes(&pairs[..1]), [""]);
    }
}
