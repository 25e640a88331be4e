//! PNG renderings of the SVG charts, drawn by resvg with a bundled font so the record reads in
//! viewers that show neither SVG nor CJK text.
//!
//! The font is `assets/chart-font.otf`: Noto Sans CJK SC Regular cut down to printable ASCII
//! plus the Chinese characters [`super::svg`] can emit (`assets/make-font.sh` rebuilds it; the
//! OFL is beside it). It is the only font resvg sees: no system font is loaded, so a PNG comes
//! out the same on every machine, with or without CJK fonts installed.

use std::sync::{Arc, OnceLock};

use anyhow::Context;
use resvg::{tiny_skia, usvg};

/// The bundled font subset (OpenType/CFF, about 25 KB).
pub const FONT: &[u8] = include_bytes!("../../assets/chart-font.otf");

/// The bundled font's family name: first in [`super::svg::FONT_STACK`], and also the one resvg
/// falls back to for `sans-serif` or any family it does not have.
pub const FONT_FAMILY: &str = "Noto Sans CJK SC";

/// Pixels per SVG unit: a 720×360 chart becomes 1440×720, its 12 px labels 24 px high.
pub const SCALE: f32 = 2.0;

/// A font database holding the bundled font only.
fn fontdb() -> Arc<usvg::fontdb::Database> {
    static DB: OnceLock<Arc<usvg::fontdb::Database>> = OnceLock::new();
    DB.get_or_init(|| {
        let mut db = usvg::fontdb::Database::new();
        db.load_font_data(FONT.to_vec());
        db.set_sans_serif_family(FONT_FAMILY);
        Arc::new(db)
    })
    .clone()
}

/// usvg options that resolve every font family to the bundled font.
pub fn options() -> usvg::Options<'static> {
    usvg::Options {
        font_family: FONT_FAMILY.to_string(),
        fontdb: fontdb(),
        ..usvg::Options::default()
    }
}

/// The PNG bytes of an SVG chart, rendered at [`SCALE`] with the bundled font.
pub fn render(svg: &str) -> anyhow::Result<Vec<u8>> {
    render_with(svg, &options())
}

/// The PNG bytes of `svg` rendered with `opt` (tests pass a font-less database).
pub fn render_with(svg: &str, opt: &usvg::Options) -> anyhow::Result<Vec<u8>> {
    pixmap(svg, opt)?.encode_png().context("encoding the PNG")
}

/// `svg` rasterised at [`SCALE`] with `opt`.
pub fn pixmap(svg: &str, opt: &usvg::Options) -> anyhow::Result<tiny_skia::Pixmap> {
    let tree = usvg::Tree::from_str(svg, opt).context("parsing the chart SVG")?;
    let size = tree.size();
    let (w, h) = (
        (size.width() * SCALE).ceil() as u32,
        (size.height() * SCALE).ceil() as u32,
    );
    let mut pixmap = tiny_skia::Pixmap::new(w, h).with_context(|| format!("a {w}×{h} pixmap"))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(SCALE, SCALE),
        &mut pixmap.as_mut(),
    );
    Ok(pixmap)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::{json, Value};

    use super::*;
    use crate::render::svg;
    use crate::report::CaseResult;

    /// Pixels that are not (near) white.
    fn ink(p: &tiny_skia::Pixmap, x0: u32, y0: u32, x1: u32, y1: u32) -> usize {
        let mut n = 0;
        for y in y0..y1.min(p.height()) {
            for x in x0..x1.min(p.width()) {
                let c = p.pixel(x, y).unwrap();
                if c.red() < 200 || c.green() < 200 || c.blue() < 200 {
                    n += 1;
                }
            }
        }
        n
    }

    /// Pixels within 40 of `rgb` on every channel.
    fn colored(p: &tiny_skia::Pixmap, rgb: [u8; 3]) -> usize {
        p.pixels()
            .iter()
            .filter(|c| {
                let c = c.demultiply();
                [c.red(), c.green(), c.blue()]
                    .iter()
                    .zip(rgb)
                    .all(|(a, b)| a.abs_diff(b) <= 40)
            })
            .count()
    }

    fn progress_rows() -> Vec<BTreeMap<String, Value>> {
        (0..=6)
            .map(|i| {
                let mut m = BTreeMap::new();
                m.insert("duration_sec".into(), json!(i * 10));
                m.insert("power_w".into(), json!(if i == 0 { 0.0 } else { 180.0 }));
                m.insert("energy_wh".into(), json!(i * 5));
                m
            })
            .collect()
    }

    #[test]
    fn charts_render_to_png() {
        let mut c = CaseResult::new("4.1", "x");
        for (k, v) in [
            ("min_ms", 0.8),
            ("p50_ms", 1.5),
            ("p95_ms", 3.2),
            ("p99_ms", 4.0),
            ("p999_ms", 6.5),
            ("max_ms", 7.1),
            ("mean_ms", 2.0),
        ] {
            c.set(k, v);
        }
        for (text, colors) in [
            (
                svg::power_energy(&progress_rows()),
                vec![[0xc0, 0x39, 0x2b], [0x24, 0x71, 0xa3]],
            ),
            (svg::latency(&c), vec![[0x5d, 0xad, 0xe2]]),
        ] {
            let png = render(&text).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            assert_eq!(&png[12..16], b"IHDR");
            let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
            let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
            assert_eq!((w, h), (1440, 720));
            let p = tiny_skia::Pixmap::decode_png(&png).unwrap();
            // A white background with something drawn on it: axes, labels, data.
            let all = ink(&p, 0, 0, w, h);
            assert!(
                all > 5_000 && all < (w * h / 2) as usize,
                "{all} ink pixels"
            );
            // The title (centred, y 8..28 in SVG units) is drawn.
            assert!(ink(&p, 400, 10, 1040, 60) > 500, "no title");
            for rgb in colors {
                assert!(colored(&p, rgb) > 300, "no {rgb:?} data drawn");
            }
        }
    }

    /// A label alone: with the bundled font it has ink, with no font at all it has none, so
    /// the ink comes from the bundled font (and never from a system font: none is loaded).
    #[test]
    fn cjk_labels_are_drawn_with_the_bundled_font() {
        let label = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"200\" height=\"40\" \
             font-family=\"{}\" font-size=\"12\"><rect width=\"100%\" height=\"100%\" \
             fill=\"white\"/><text x=\"10\" y=\"25\">功率与电量 响应时间</text></svg>",
            svg::FONT_STACK
        );
        let with = pixmap(&label, &options()).unwrap();
        let bare = usvg::Options {
            fontdb: Arc::new(usvg::fontdb::Database::new()),
            ..usvg::Options::default()
        };
        let without = pixmap(&label, &bare).unwrap();
        assert_eq!(ink(&without, 0, 0, 400, 80), 0);
        // The label spans about 10 characters × 12 px from x = 10, y 13..28 (×2 in pixels).
        let inside = ink(&with, 20, 24, 260, 60);
        assert!(inside > 400, "{inside} ink pixels in the label area");
        assert_eq!(ink(&with, 0, 0, 400, 80), inside, "ink outside the label");
        assert_ne!(with.data(), without.data());
    }

    /// Different CJK characters draw differently, each with ink: real glyphs, not one box.
    #[test]
    fn cjk_glyphs_are_not_boxes() {
        let draw = |ch: char| {
            pixmap(
                &format!(
                    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"20\" height=\"20\" \
                     font-size=\"16\"><text x=\"2\" y=\"16\">{ch}</text></svg>"
                ),
                &options(),
            )
            .unwrap()
            .data()
            .to_vec()
        };
        let inked = |px: &Vec<u8>| px.chunks(4).filter(|c| c[3] > 0).count();
        let glyphs: BTreeSet<Vec<u8>> = "功率电量响应时间".chars().map(draw).collect();
        assert_eq!(glyphs.len(), 8);
        assert!(glyphs.iter().all(|g| inked(g) > 40));
        // A character outside the subset is not drawn at all (there is no other font to fall
        // back to): a label missing from the subset would vanish, hence the coverage test.
        assert_eq!(inked(&draw('龍')), 0);
    }

    /// Every character a chart can emit (printable ASCII and the non-ASCII characters of
    /// svg.rs outside comments, the same list `assets/make-font.sh` subsets to) has a real
    /// glyph in the bundled font. Fails when a new label needs the font rebuilt.
    #[test]
    fn bundled_font_covers_every_label() {
        let mut chars: BTreeSet<char> = (0x21u8..0x7f).map(char::from).collect();
        for line in include_str!("svg.rs").lines() {
            if !line.trim_start().starts_with("//") {
                chars.extend(line.chars().filter(|c| !c.is_ascii()));
            }
        }
        let shipped: BTreeSet<char> = include_str!("../../assets/chart-chars.txt")
            .trim_end_matches('\n')
            .chars()
            .collect();
        let missing: Vec<&char> = chars.difference(&shipped).collect();
        assert!(missing.is_empty(), "run assets/make-font.sh: {missing:?}");

        let text: String = chars.iter().collect();
        let escaped = text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let doc = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4000\" height=\"40\" \
             font-family=\"{}\"><text x=\"0\" y=\"20\">{escaped}</text></svg>",
            svg::FONT_STACK
        );
        let tree = usvg::Tree::from_str(&doc, &options()).unwrap();
        let mut seen = String::new();
        let mut notdef = String::new();
        fn walk(g: &usvg::Group, f: &mut dyn FnMut(&usvg::Text)) {
            for n in g.children() {
                match n {
                    usvg::Node::Group(g) => walk(g, f),
                    usvg::Node::Text(t) => f(t),
                    _ => {}
                }
            }
        }
        walk(tree.root(), &mut |t| {
            for g in t.layouted().iter().flat_map(|s| &s.positioned_glyphs) {
                seen.push_str(&g.text);
                if g.id.0 == 0 {
                    notdef.push_str(&g.text);
                }
            }
        });
        assert!(notdef.is_empty(), "no glyph for {notdef:?}");
        let seen: BTreeSet<char> = seen.chars().collect();
        assert_eq!(seen, chars);
    }
}
