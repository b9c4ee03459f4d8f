//! Chart text. plotters' bitmap text places each glyph by its own bounding box and whole
//! pixels (a raised decimal point, uneven letter spacing), so PNG text is rasterised here
//! with `ab_glyph` on one baseline with kerning; SVG text stays `<text>` for the viewer to
//! render. Charts collect their text as [`Label`]s and the drawing macro renders them per
//! backend; [`width`] measures text the way it will be drawn.

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::err;

/// The font of every chart (DejaVu Sans, shipped in `assets/fonts`).
pub(super) const FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// A piece of text anchored at a point.
#[derive(Clone)]
pub(crate) struct Label {
    pub text: String,
    pub at: (i32, i32),
    /// Em size in pixels (CSS `font-size`).
    pub size: f32,
    pub color: RGBColor,
    pub h: HPos,
    pub v: VPos,
}

impl Label {
    pub fn new(text: impl Into<String>, at: (i32, i32), size: f32) -> Self {
        Self {
            text: text.into(),
            at,
            size,
            color: BLACK,
            h: HPos::Left,
            v: VPos::Top,
        }
    }

    pub fn anchor(mut self, h: HPos, v: VPos) -> Self {
        self.h = h;
        self.v = v;
        self
    }

    pub fn color(mut self, color: RGBColor) -> Self {
        self.color = color;
        self
    }
}

fn font() -> FontRef<'static> {
    FontRef::try_from_slice(FONT_BYTES).expect("the shipped DejaVu Sans parses")
}

/// The ab_glyph scale whose em is `size` pixels, as in SVG.
fn scale(font: &FontRef, size: f32) -> PxScale {
    let upem = font.units_per_em().unwrap_or(2048.0);
    PxScale::from(size * font.height_unscaled() / upem)
}

/// Width in pixels of `text` at em size `size`.
pub(crate) fn width(text: &str, size: f32) -> f32 {
    let font = font();
    let scaled = font.as_scaled(scale(&font, size));
    let mut w = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            w += scaled.kern(p, id);
        }
        w += scaled.h_advance(id);
        prev = Some(id);
    }
    w
}

/// Draws labels as SVG `<text>` through plotters.
pub(super) fn draw_svg<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    labels: &[Label],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    for l in labels {
        let style = ("sans-serif", l.size as f64)
            .into_font()
            .color(&l.color)
            .pos(Pos::new(l.h, l.v));
        root.draw(&Text::new(l.text.clone(), l.at, style))
            .map_err(err)?;
    }
    Ok(())
}

/// Rasterises labels into an RGB buffer of `size` pixels.
pub(super) fn draw_rgb(rgb: &mut [u8], size: (u32, u32), labels: &[Label]) {
    let font = font();
    for l in labels {
        let sc = scale(&font, l.size);
        let scaled = font.as_scaled(sc);
        let w = width(&l.text, l.size);
        let x = l.at.0 as f32
            - match l.h {
                HPos::Left => 0.0,
                HPos::Center => w / 2.0,
                HPos::Right => w,
            };
        let (ascent, descent) = (scaled.ascent(), scaled.descent());
        let baseline = l.at.1 as f32
            + match l.v {
                VPos::Top => ascent,
                VPos::Center => (ascent + descent) / 2.0,
                VPos::Bottom => descent,
            };
        glyphs(rgb, size, &font, sc, (x, baseline), l);
    }
}

/// Draws `l`'s glyphs from `origin` (left end of the baseline).
fn glyphs(
    rgb: &mut [u8],
    (w, h): (u32, u32),
    font: &FontRef,
    sc: PxScale,
    origin: (f32, f32),
    l: &Label,
) {
    let scaled = font.as_scaled(sc);
    let mut caret = origin.0;
    let mut prev = None;
    for c in l.text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        prev = Some(id);
        let glyph = id.with_scale_and_position(sc, point(caret, origin.1));
        caret += scaled.h_advance(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let b = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let (px, py) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
            if px < 0 || py < 0 || px >= w as i64 || py >= h as i64 {
                return;
            }
            let i = (py as usize * w as usize + px as usize) * 3;
            let cov = coverage.clamp(0.0, 1.0);
            let target = [l.color.0, l.color.1, l.color.2];
            for (k, t) in target.iter().enumerate() {
                let old = rgb[i + k] as f32;
                rgb[i + k] = (old + (*t as f32 - old) * cov).round() as u8;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lowest inked row of each character: digits and the decimal point of `12.5` sit
    /// on one baseline (plotters' own text raises the point).
    #[test]
    fn a_decimal_point_sits_on_the_baseline() {
        let (w, h) = (120u32, 40u32);
        let mut rgb = vec![255u8; (w * h * 3) as usize];
        let label = Label::new("1.1", (10, 8), 24.0);
        draw_rgb(&mut rgb, (w, h), &[label]);
        let inked = |x0: u32, x1: u32| {
            (0..h)
                .filter(|&y| (x0..x1).any(|x| rgb[((y * w + x) * 3) as usize] < 128))
                .max()
        };
        let one = width("1", 24.0) as u32;
        let dot = width(".", 24.0) as u32;
        let digit_bottom = inked(10, 10 + one).unwrap();
        let dot_bottom = inked(10 + one, 10 + one + dot).unwrap();
        assert!(
            digit_bottom.abs_diff(dot_bottom) <= 1,
            "{digit_bottom} vs {dot_bottom}"
        );
        assert!(width("1.1", 24.0) > width("11", 24.0));
    }
}
