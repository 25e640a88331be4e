//! Hand-written SVG charts: 2.1's power and energy over time, 4.1's latency percentiles.
//! Text uses a CJK font stack ([`FONT_STACK`]); axis ticks are round values (1, 2, 5 × 10ⁿ)
//! and no label is drawn over a bar.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use crate::report::CaseResult;

const W: f64 = 720.0;
const H: f64 = 360.0;
const L: f64 = 70.0;
const R: f64 = 70.0;
const T: f64 = 40.0;
const B: f64 = 50.0;

fn num(row: &BTreeMap<String, Value>, k: &str) -> f64 {
    row.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0)
}

/// The charts' font stack: the CJK faces of Linux, macOS and Windows, then any sans-serif.
pub const FONT_STACK: &str = "'Noto Sans CJK SC', 'PingFang SC', 'Microsoft YaHei', sans-serif";

/// Round axis ticks from 0 covering `max`: a step of 1, 2 or 5 × 10ⁿ giving at most 6
/// intervals; returns (step, top).
pub fn nice_ticks(max: f64) -> (f64, f64) {
    let max = if max > 0.0 && max.is_finite() {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|st| max / st <= 6.0 + 1e-9)
        .unwrap_or(10.0 * mag);
    let top = (max / step - 1e-9).ceil().max(1.0) * step;
    (step, top)
}

/// A tick label with exactly the decimals its step needs (0.5 → 1 decimal, 20 → none).
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

fn header(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"{FONT_STACK}\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        W / 2.0,
        super::junit::escape(title)
    )
}

fn axes(s: &mut String, x_label: &str, left: &str, right: Option<&str>) {
    let (x0, y0, x1, y1) = (L, H - B, W - R, T);
    let _ = writeln!(
        s,
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"black\"/>\n\
         <line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\" fill=\"#c0392b\">{left}</text>",
        (x0 + x1) / 2.0,
        H - 12.0,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0
    );
    if let Some(right) = right {
        let _ = writeln!(
            s,
            "<line x1=\"{x1}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y1}\" stroke=\"black\"/>\n\
             <text x=\"{}\" y=\"{}\" transform=\"rotate(90 {} {})\" text-anchor=\"middle\" fill=\"#2471a3\">{right}</text>",
            W - 16.0,
            (y0 + y1) / 2.0,
            W - 16.0,
            (y0 + y1) / 2.0
        );
    }
}

/// Power (W, left axis) and energy (Wh, right axis) against charge time, from 2.1's progress
/// samples.
pub fn power_energy(rows: &[BTreeMap<String, Value>]) -> String {
    let mut s = header("2.1 按时长充电: 功率与电量");
    let fold = |k: &str| rows.iter().map(|r| num(r, k)).fold(0.0, f64::max);
    let (t_step, t_max) = nice_ticks(fold("duration_sec"));
    let (p_step, p_max) = nice_ticks(fold("power_w"));
    let (e_step, e_max) = nice_ticks(fold("energy_wh"));
    axes(&mut s, "时长 (秒)", "功率 (W)", Some("电量 (Wh)"));
    let x = |t: f64| L + (t / t_max) * (W - L - R);
    let y = |v: f64, max: f64| (H - B) - (v / max) * (H - B - T);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(t),
            H - B + 16.0,
            tick_label(t, t_step)
        );
        t += t_step;
    }
    let mut v = 0.0;
    while v <= p_max + 1e-9 {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#c0392b\">{}</text>",
            L - 6.0,
            y(v, p_max) + 4.0,
            tick_label(v, p_step)
        );
        v += p_step;
    }
    let mut v = 0.0;
    while v <= e_max + 1e-9 {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#2471a3\">{}</text>",
            W - R + 6.0,
            y(v, e_max) + 4.0,
            tick_label(v, e_step)
        );
        v += e_step;
    }
    if rows.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">无进度样本 (no samples)</text>",
            W / 2.0,
            H / 2.0
        );
    } else {
        let line = |key: &str, max: f64| {
            rows.iter()
                .map(|r| {
                    format!(
                        "{:.1},{:.1}",
                        x(num(r, "duration_sec")),
                        y(num(r, key), max)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2\" points=\"{}\"/>\n\
             <polyline fill=\"none\" stroke=\"#2471a3\" stroke-width=\"2\" points=\"{}\"/>",
            line("power_w", p_max),
            line("energy_wh", e_max)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 4.1's latency by percentile (min, P50, P95, P99, P99.9, max) with the mean marked.
pub fn latency(c: &CaseResult) -> String {
    let get = |k: &str| c.value(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let points = [
        ("min", get("min_ms")),
        ("P50", get("p50_ms")),
        ("P95", get("p95_ms")),
        ("P99", get("p99_ms")),
        ("P99.9", get("p999_ms")),
        ("max", get("max_ms")),
    ];
    let mean = get("mean_ms");
    let mut s = header("4.1 API并发测试: 响应时间分布 (1000 请求, 并发 10)");
    // Room above the tallest bar for its value label.
    let tallest = points.iter().map(|p| p.1).fold(mean, f64::max);
    let (step, max) = nice_ticks(tallest * 1.08);
    axes(&mut s, "百分位", "响应时间 (ms)", None);
    let bw = (W - L - R) / points.len() as f64;
    let y = |v: f64| (H - B) - (v / max) * (H - B - T);
    for (i, (name, v)) in points.iter().enumerate() {
        let x = L + i as f64 * bw + bw * 0.2;
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#5dade2\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{name}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.2}</text>",
            y(*v),
            bw * 0.6,
            (H - B) - y(*v),
            x + bw * 0.3,
            H - B + 16.0,
            x + bw * 0.3,
            y(*v) - 4.0
        );
    }
    let mut v = 0.0;
    while v <= max + 1e-9 {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            L - 6.0,
            y(v) + 4.0,
            tick_label(v, step)
        );
        v += step;
    }
    // The mean: a dashed line across, its label in a legend above the plot (never on a bar):
    // a dashed sample with the label right after it.
    let _ = writeln!(
        s,
        "<line x1=\"{L}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>\n\
         <line x1=\"{}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>\n\
         <text x=\"{}\" y=\"{:.1}\" fill=\"#c0392b\">平均 {mean:.2} ms</text>",
        y(mean),
        W - R,
        y(mean),
        W - R - 150.0,
        T - 8.0,
        W - R - 124.0,
        T - 8.0,
        W - R - 118.0,
        T - 4.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn charts_are_svg_with_their_data() {
        let rows: Vec<BTreeMap<String, Value>> = (0..5)
            .map(|i| {
                let mut m = BTreeMap::new();
                m.insert("duration_sec".into(), json!(i * 10));
                m.insert("power_w".into(), json!(180.0));
                m.insert("energy_wh".into(), json!(i * 5));
                m
            })
            .collect();
        let svg = power_energy(&rows);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(power_energy(&[]).contains("无进度样本"));
        let mut c = CaseResult::new("4.1", "x");
        c.set("p50_ms", 1.5);
        c.set("mean_ms", 2.0);
        let svg = latency(&c);
        assert_eq!(svg.matches("<rect x=").count(), 6);
        assert!(svg.contains("平均 2.00 ms"));
        assert!(svg.contains("Noto Sans CJK SC"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(3.8), (1.0, 4.0));
        assert_eq!(nice_ticks(59.0), (10.0, 60.0));
        assert_eq!(nice_ticks(846.0), (200.0, 1000.0));
        let (st, top) = nice_ticks(0.013);
        assert!((st - 0.005).abs() < 1e-12 && (top - 0.015).abs() < 1e-12);
        assert_eq!(tick_label(2.5, 0.5), "2.5");
        assert_eq!(tick_label(20.0, 10.0), "20");
        // No 1.2 / 2.5 / 3.8 style ticks: every tick is a multiple of 1, 2 or 5 × 10ⁿ.
        for max in [0.7, 3.8, 12.0, 59.0, 300.0, 846.0, 1234.0] {
            let (step, top) = nice_ticks(max);
            let mant = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|m| (mant - m).abs() < 1e-9),
                "{max}: {step}"
            );
            assert!(
                top >= max && top / step <= 6.0 + 1e-9,
                "{max}: {top}/{step}"
            );
        }
    }
}
