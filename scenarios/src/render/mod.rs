//! Pure functions from a [`RunReport`] to the files of a report directory: the filled-in
//! record, `report.json`, `junit.xml` and the charts (SVG, each with a PNG rendering beside it).

pub mod junit;
pub mod png;
pub mod record;
pub mod svg;

use std::path::Path;

use anyhow::Context;

use crate::report::RunReport;
use crate::score;

/// `2026-11-24 20:16:21 UTC` from Unix seconds.
pub fn fmt_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// `20:16:21` from Unix seconds.
pub fn fmt_clock(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// `report.json`: the run plus the computed score.
pub fn json(report: &RunReport) -> serde_json::Value {
    let mut v = serde_json::to_value(report).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "score".into(),
            serde_json::to_value(score::compute(report)).unwrap_or_default(),
        );
    }
    v
}

/// Chart files: (name, SVG text).
pub fn charts(report: &RunReport) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(c) = report.case("2.1") {
        if let Some(rows) = c.tables.get("progress") {
            out.push(("charge_2_1.svg".to_string(), svg::power_energy(rows)));
        }
    }
    if let Some(c) = report.case("4.1") {
        if c.value("p50_ms").is_some() {
            out.push(("latency_4_1.svg".to_string(), svg::latency(c)));
        }
    }
    out
}

/// The PNG rendering's file name for a chart's SVG file name.
pub fn png_name(svg: &str) -> String {
    format!("{}.png", svg.strip_suffix(".svg").unwrap_or(svg))
}

/// Writes every file of the report into `dir`. Each chart is written as SVG and as a PNG
/// beside it; a chart whose PNG fails to render keeps its SVG (and the record links that
/// only), so the run's results are never lost to a rendering error.
pub fn write_all(report: &RunReport, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = Vec::new();
    for (name, text) in &charts(report) {
        std::fs::write(dir.join(name), text)?;
        names.push(name.clone());
        match png::render(text) {
            Ok(bytes) => {
                let png = png_name(name);
                std::fs::write(dir.join(&png), bytes)?;
                names.push(png);
            }
            Err(e) => tracing::warn!("{name}: no PNG rendering: {e:#}"),
        }
    }
    std::fs::write(dir.join("test_results.md"), record::render(report, &names))?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json(report))?,
    )?;
    std::fs::write(dir.join("junit.xml"), junit::render(report))?;
    Ok(())
}

#[cfg(test)]
mod tests;
