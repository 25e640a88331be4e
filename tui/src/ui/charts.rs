//! Charts: an order's power and energy over seconds since its start, the fleet's online and
//! offline piles over the last 30 minutes, and sparklines of windowed rates.

use pile_api::{OrderView, ProgressSample};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, Paragraph, Sparkline};
use ratatui::Frame;

use super::{ago, fit, DIM};
use crate::app::history::{Series, FLEET_SPAN_MS};

/// Chart points, (x, y).
pub type Points = Vec<(f64, f64)>;

/// Power (W) and energy (Wh) points of an order, x in seconds since the order started.
///
/// The x value is the sample's `at` minus the order's `started_at`, never `duration_sec`:
/// BKV piles report a minute counter there (0, 60, 60, 120 …), which would stack samples on
/// the same x and draw a flat line with spikes. Without `started_at` (an order that never
/// confirmed) the first sample is the origin.
pub fn progress_points(samples: &[ProgressSample], started_at: Option<i64>) -> (Points, Points) {
    let Some(origin) = started_at.or(samples.first().map(|s| s.at)) else {
        return (Vec::new(), Vec::new());
    };
    let power = samples
        .iter()
        .map(|s| ((s.at - origin).max(0) as f64, s.power_w))
        .collect();
    let energy = samples
        .iter()
        .map(|s| ((s.at - origin).max(0) as f64, s.energy_wh as f64))
        .collect();
    (power, energy)
}

/// Axis labels: `0s`, the middle and the end, as durations.
fn time_labels(max_s: f64) -> Vec<String> {
    vec![
        "0s".into(),
        ago((max_s * 500.0) as i64),
        ago((max_s * 1000.0) as i64),
    ]
}

/// An order's power and energy, side by side (stacked when narrow). `now_s` stretches the x
/// axis to the present while the order runs, so a pile that stopped reporting shows a gap.
pub fn order_charts(
    f: &mut Frame,
    area: Rect,
    order: Option<&OrderView>,
    samples: &[ProgressSample],
    now_s: i64,
) {
    let started = order.and_then(|o| o.started_at);
    let (power, energy) = progress_points(samples, started);
    let [a, b] = if area.width >= 60 {
        Layout::horizontal([Constraint::Ratio(1, 2); 2]).areas(area)
    } else {
        Layout::vertical([Constraint::Ratio(1, 2); 2]).areas(area)
    };
    let end = match (order, started) {
        (Some(o), Some(s)) if o.status.is_active() => Some((now_s - s) as f64),
        (Some(o), Some(s)) => o.ended_at.map(|e| (e - s) as f64),
        _ => None,
    };
    let last_power = power.last().map(|p| super::watts(p.1));
    let last_energy = energy.last().map(|p| format!("{:.0} Wh", p.1));
    xy_chart(
        f,
        a,
        &format!(" Power · {} samples ", samples.len()),
        &power,
        end,
        "W",
        last_power,
        Color::Cyan,
    );
    xy_chart(
        f,
        b,
        " Energy ",
        &energy,
        end,
        "Wh",
        last_energy,
        Color::Green,
    );
}

#[allow(clippy::too_many_arguments)]
fn xy_chart(
    f: &mut Frame,
    area: Rect,
    title: &str,
    points: &[(f64, f64)],
    end_x: Option<f64>,
    unit: &str,
    last: Option<String>,
    color: Color,
) {
    let title = match last {
        Some(l) => format!("{}· now {l} ", title),
        None => title.to_string(),
    };
    let block = Block::bordered().title(fit::ellipsize(
        &title,
        area.width.saturating_sub(2) as usize,
    ));
    if points.is_empty() {
        f.render_widget(
            Paragraph::new("no progress samples yet")
                .style(DIM)
                .block(block),
            area,
        );
        return;
    }
    let max_x = points.iter().map(|p| p.0).chain(end_x).fold(60.0, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let dataset = Dataset::default()
        .marker(symbols::Marker::Braille)
        .graph_type(GraphType::Line)
        .style(Style::new().fg(color))
        .data(points);
    f.render_widget(
        Chart::new(vec![dataset])
            .block(block)
            .x_axis(
                Axis::default()
                    .bounds([0.0, max_x])
                    .labels(time_labels(max_x))
                    .style(DIM),
            )
            .y_axis(
                Axis::default()
                    .title(unit.to_string())
                    .bounds([0.0, max_y])
                    .labels(["0".to_string(), format!("{max_y:.0}")])
                    .style(DIM),
            ),
        area,
    );
}

/// Points of a series as (seconds before `now_ms`, value), negative x, within the span.
pub fn recent(series: &Series, now_ms: i64) -> Vec<(f64, f64)> {
    series
        .iter()
        .filter(|(t, _)| now_ms - t <= FLEET_SPAN_MS)
        .map(|(t, v)| ((t - now_ms) as f64 / 1000.0, *v))
        .collect()
}

/// Piles online and offline over the last 30 minutes (since the dashboard started, if later).
pub fn fleet_chart(f: &mut Frame, area: Rect, online: &Series, offline: &Series, now_ms: i64) {
    let on = recent(online, now_ms);
    let off = recent(offline, now_ms);
    let span = on.first().map(|p| -p.0).unwrap_or(0.0);
    let title = format!(
        " Fleet · online {} · offline {} · last {} ",
        on.last().map(|p| p.1 as i64).unwrap_or(0),
        off.last().map(|p| p.1 as i64).unwrap_or(0),
        if span >= (FLEET_SPAN_MS / 1000 - 5) as f64 {
            "30m".to_string()
        } else {
            format!("{} (since start)", ago((span * 1000.0) as i64))
        }
    );
    let block = Block::bordered().title(fit::ellipsize(
        &title,
        area.width.saturating_sub(2) as usize,
    ));
    if on.is_empty() {
        f.render_widget(Paragraph::new("no data yet").style(DIM).block(block), area);
        return;
    }
    let max_y = on
        .iter()
        .chain(off.iter())
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let datasets = vec![
        Dataset::default()
            .name("online")
            .marker(symbols::Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Green))
            .data(&on),
        Dataset::default()
            .name("offline")
            .marker(symbols::Marker::Dot)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Red))
            .data(&off),
    ];
    // The x axis spans the data (5 to 30 minutes), so a dashboard just started does not
    // squeeze its first minute into the last pixels of a 30-minute axis.
    let span_s = (span.max(300.0).min((FLEET_SPAN_MS / 1000) as f64) / 60.0).ceil() * 60.0;
    let label = |s: f64| {
        let s = s as i64;
        if s % 60 == 0 {
            format!("-{}m", s / 60)
        } else {
            format!("-{}", ago(s * 1000))
        }
    };
    f.render_widget(
        Chart::new(datasets)
            .block(block)
            .x_axis(
                Axis::default()
                    .bounds([-span_s, 0.0])
                    .labels([label(span_s), label(span_s / 2.0), "now".to_string()])
                    .style(DIM),
            )
            .y_axis(
                Axis::default()
                    .bounds([0.0, max_y])
                    .labels(["0".to_string(), format!("{max_y:.0}")])
                    .style(DIM),
            )
            // The counts are in the title; a legend box would hide the newest points.
            .legend_position(None),
        area,
    );
}

/// A bordered sparkline of the newest values that fit, scaled so fractions still show.
pub fn spark(
    f: &mut Frame,
    area: Rect,
    title: &str,
    extra: Option<Line>,
    series: &Series,
    color: Color,
) {
    let block =
        Block::bordered().title(fit::ellipsize(title, area.width.saturating_sub(2) as usize));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let inner = match extra {
        Some(line) if inner.height >= 2 => {
            let [top, rest] =
                Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);
            f.render_widget(Paragraph::new(line), top);
            rest
        }
        _ => inner,
    };
    let width = inner.width as usize;
    let v: Vec<u64> = series
        .iter()
        .skip(series.len().saturating_sub(width))
        .map(|(_, x)| (x.max(0.0) * 1000.0).round() as u64)
        .collect();
    f.render_widget(
        Sparkline::default().data(&v).style(Style::new().fg(color)),
        inner,
    );
}
