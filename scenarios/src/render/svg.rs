//! Hand-written SVG charts: 2.1's power and energy over time, 4.1's latency percentiles.

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

fn header(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
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

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Power (W, left axis) and energy (Wh, right axis) against charge time, from 2.1's progress
/// samples.
pub fn power_energy(rows: &[BTreeMap<String, Value>]) -> String {
    let mut s = header("2.1 按时长充电: 功率与电量");
    let t_max = nice_max(
        rows.iter()
            .map(|r| num(r, "duration_sec"))
            .fold(0.0, f64::max),
    );
    let p_max = nice_max(rows.iter().map(|r| num(r, "power_w")).fold(0.0, f64::max));
    let e_max = nice_max(rows.iter().map(|r| num(r, "energy_wh")).fold(0.0, f64::max));
    axes(&mut s, "时长 (秒)", "功率 (W)", Some("电量 (Wh)"));
    let x = |t: f64| L + (t / t_max) * (W - L - R);
    let y = |v: f64, max: f64| (H - B) - (v / max) * (H - B - T);
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#c0392b\">{:.0}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#2471a3\">{:.1}</text>",
            x(f * t_max),
            H - B + 16.0,
            f * t_max,
            L - 6.0,
            y(f * p_max, p_max) + 4.0,
            f * p_max,
            W - R + 6.0,
            y(f * e_max, e_max) + 4.0,
            f * e_max
        );
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
    let max = nice_max(points.iter().map(|p| p.1).fold(mean, f64::max));
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
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.1}</text>",
            L - 6.0,
            y(f * max) + 4.0,
            f * max
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{L}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>\n\
         <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#c0392b\">平均 {mean:.2} ms</text>",
        y(mean),
        W - R,
        y(mean),
        W - R,
        y(mean) - 4.0
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
    }
}
