//! The overview: figures, the fleet chart, windowed rates, the webhook endpoint and, when the
//! gateway runs as several instances, each instance.

use pile_api::{BreakerState, InstanceView, OrderStatus, Stats, WebhookEndpointStatus};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Gauge, Paragraph, Row, Table};
use ratatui::Frame;

use super::charts;
use super::fit::{self, Col};
use super::{ago, loading, status_style, BOLD, DIM};
use crate::app::history::{last, RATE_WINDOW_MS};
use crate::app::App;

pub fn draw(app: &App, f: &mut Frame, area: Rect) {
    let Some(data) = &app.data else {
        return loading(f, area, " Overview ");
    };
    let stats = data.stats.clone().unwrap_or_default();
    let instances = app.instances.as_ref().filter(|v| !v.is_empty());
    let inst_h = instances.map_or(0, |v| (v.len() as u16).min(6) + 3);
    let [figures, inst_area, charts_area] = Layout::vertical([
        Constraint::Length(8),
        Constraint::Length(inst_h),
        Constraint::Min(0),
    ])
    .areas(area);
    draw_figures(app, &stats, f, figures);
    if let Some(v) = instances {
        draw_instances(app, v, stats.instance_id.as_deref(), f, inst_area);
    }
    // Fleet chart and webhook on one row, the two rates below.
    let [row1, row2] = Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)])
        .areas(charts_area);
    let [fleet, hook] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(row1);
    let h = &app.history;
    charts::fleet_chart(f, fleet, &h.online, &h.offline, app.now_ms);
    draw_backlog(app, &stats, f, hook);
    let [hb, p99] = Layout::horizontal([Constraint::Ratio(1, 2); 2]).areas(row2);
    let window = window_text(app);
    charts::spark(
        f,
        hb,
        &format!(
            " Heartbeats/s {} · {window} ",
            last(&h.heartbeats_per_sec)
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "—".into())
        ),
        None,
        &h.heartbeats_per_sec,
        Color::Blue,
    );
    charts::spark(
        f,
        p99,
        &format!(
            " API p99 {} · {window} ",
            last(&h.api_p99_ms)
                .map(|v| format!("{v:.1} ms"))
                .unwrap_or_else(|| "—".into())
        ),
        None,
        &h.api_p99_ms,
        Color::Yellow,
    );
}

/// "60 s window", or how much of it there is yet.
fn window_text(app: &App) -> String {
    let span = app.history.rate_span_ms();
    if span >= RATE_WINDOW_MS - 1000 {
        format!("{} s window", RATE_WINDOW_MS / 1000)
    } else {
        format!("over {}", ago(span))
    }
}

fn draw_figures(app: &App, stats: &Stats, f: &mut Frame, area: Rect) {
    let wide = area.width >= 150;
    let n = if wide { 4 } else { 3 };
    let boxes = Layout::horizontal(vec![Constraint::Ratio(1, n); n as usize]).split(area);
    let h = &app.history;
    let total = app.live.devices_total.max(stats.tables.devices);
    let online = stats.online_devices;
    let rate = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "—".into());

    let piles = [
        ("Piles online", online.to_string()),
        ("Piles offline", (total - online).max(0).to_string()),
        ("Piles total", total.to_string()),
        ("Active sessions", stats.active_sessions.to_string()),
        ("Heartbeats/s", rate(last(&h.heartbeats_per_sec))),
        ("Connects/s", rate(last(&h.accepts_per_sec))),
    ];
    kv_box(f, boxes[0], " Piles ", &piles);

    // Gateway: the DB pool as a gauge on the last line.
    let gw = [
        (
            "API p99",
            last(&h.api_p99_ms)
                .map(|v| format!("{v:.1} ms"))
                .unwrap_or_else(|| "—".into()),
        ),
        (
            "Slow queries",
            format!("{} (max {} ms)", stats.slow_queries, stats.slowest_query_ms),
        ),
        ("Errors logged", stats.log_counts.error.to_string()),
        ("Uptime", ago(stats.uptime_sec as i64 * 1000)),
        (
            "Instance",
            stats.instance_id.clone().unwrap_or_else(|| "single".into()),
        ),
    ];
    let block = Block::bordered().title(" Gateway ");
    let inner = block.inner(boxes[1]);
    f.render_widget(block, boxes[1]);
    let [text, gauge] =
        Layout::vertical([Constraint::Length(5), Constraint::Length(1)]).areas(inner);
    f.render_widget(Paragraph::new(kv_lines(&gw, text.width)), text);
    let pool = &stats.db_pool;
    let ratio = if pool.max > 0 {
        f64::from(pool.in_use) / f64::from(pool.max)
    } else {
        0.0
    };
    f.render_widget(
        Gauge::default()
            .ratio(ratio.clamp(0.0, 1.0))
            .label(format!("DB pool {}/{}", pool.in_use, pool.max))
            .gauge_style(Style::new().fg(Color::Blue).bg(Color::Black)),
        gauge,
    );

    let mut order_lines: Vec<Line> = OrderStatus::ALL
        .iter()
        .map(|s| {
            let n = stats.orders_by_status.get(s.as_str()).copied().unwrap_or(0);
            fit::kv(
                s.as_str(),
                Span::raw(n.to_string()),
                boxes[2].width.saturating_sub(2) as usize,
                status_style(*s),
            )
        })
        .collect();
    let stuck = app
        .problem_data
        .as_ref()
        .and_then(|p| p.consistency.as_ref())
        .map(|c| c.stale_orders.len());
    if let Some(n) = stuck {
        order_lines.push(fit::kv(
            "stuck past limit",
            Span::styled(
                n.to_string(),
                if n > 0 {
                    Style::new().fg(Color::Red)
                } else {
                    Style::new()
                },
            ),
            boxes[2].width.saturating_sub(2) as usize,
            DIM,
        ));
    }
    f.render_widget(
        Paragraph::new(order_lines).block(Block::bordered().title(" Orders by status ")),
        boxes[2],
    );
    if wide {
        let w = stats.webhook.as_ref();
        let hook = [
            (
                "Endpoint",
                w.map(|w| breaker(w).0).unwrap_or_else(|| "none set".into()),
            ),
            (
                "Backlog",
                w.map_or(stats.event_backlog, |w| w.backlog).to_string(),
            ),
            (
                "Oldest waiting",
                w.and_then(|w| w.oldest_pending_age_sec)
                    .map(|s| ago(s * 1000))
                    .unwrap_or_else(|| "—".into()),
            ),
            (
                "Dead letters",
                w.map(|w| w.dead_letters.to_string())
                    .unwrap_or_else(|| "—".into()),
            ),
            (
                "Push success",
                format!("{:.1} %", stats.push_success_rate * 100.0),
            ),
            (
                "Push latency",
                format!("{:.1} ms", stats.mean_push_latency_ms),
            ),
        ];
        kv_box(f, boxes[3], " Webhook ", &hook);
    }
}

fn kv_lines(pairs: &[(&str, String)], w: u16) -> Vec<Line<'static>> {
    pairs
        .iter()
        .map(|(k, v)| fit::kv(k, Span::raw(v.clone()), w as usize, DIM))
        .collect()
}

fn kv_box(f: &mut Frame, area: Rect, title: &str, pairs: &[(&str, String)]) {
    let block = Block::bordered().title(title.to_string());
    let inner = block.inner(area);
    f.render_widget(
        Paragraph::new(kv_lines(pairs, inner.width)).block(block),
        area,
    );
}

/// The endpoint's state in words and its colour.
fn breaker(w: &WebhookEndpointStatus) -> (String, Style) {
    match w.state {
        BreakerState::Closed => ("closed (delivering)".into(), Style::new().fg(Color::Green)),
        BreakerState::HalfOpen => ("half-open (probing)".into(), Style::new().fg(Color::Yellow)),
        BreakerState::Open => (
            format!("OPEN after {} failures", w.consecutive_failures),
            Style::new().fg(Color::Red).bold(),
        ),
    }
}

fn draw_backlog(app: &App, stats: &Stats, f: &mut Frame, area: Rect) {
    let w = stats.webhook.as_ref();
    let backlog = w.map_or(stats.event_backlog, |w| w.backlog);
    let line = match w {
        Some(w) => {
            let (state, style) = breaker(w);
            let mut spans = vec![Span::styled(state, style)];
            if let Some(t) = w.next_probe_at.filter(|_| w.state == BreakerState::Open) {
                spans.push(Span::raw(format!(
                    " · probe in {}",
                    ago((t - app.now_s()) * 1000)
                )));
            }
            if let Some(s) = w.oldest_pending_age_sec {
                spans.push(Span::raw(format!(" · oldest {}", ago(s * 1000))));
            }
            spans.push(Span::raw(format!(" · {} dead", w.dead_letters)));
            spans.push(Span::styled(
                format!(" · push {:.1} %", stats.push_success_rate * 100.0),
                DIM,
            ));
            fit::line(spans, area.width.saturating_sub(2) as usize)
        }
        None => fit::line(
            vec![Span::styled(
                format!(
                    "no endpoint state · push {:.1} % · {:.1} ms",
                    stats.push_success_rate * 100.0,
                    stats.mean_push_latency_ms
                ),
                DIM,
            )],
            area.width.saturating_sub(2) as usize,
        ),
    };
    charts::spark(
        f,
        area,
        &format!(" Webhook backlog {backlog} "),
        Some(line),
        &app.history.backlog,
        Color::Red,
    );
}

fn draw_instances(app: &App, v: &[InstanceView], me: Option<&str>, f: &mut Frame, area: Rect) {
    let cols = [
        Col::new(10, 24, 0),  // instance
        Col::new(6, 6, 0),    // health
        Col::new(5, 7, 0),    // piles
        Col::new(6, 7, 1),    // cpu
        Col::new(7, 8, 1),    // rss
        Col::new(6, 8, 2),    // beat
        Col::new(6, 10, 3),   // role
        Col::flex(15, 21, 4), // http
        Col::new(15, 21, 5),  // devices
    ];
    let titles = [
        "Instance", "Health", "Piles", "CPU", "RSS", "Beat", "Role", "HTTP", "Devices",
    ];
    let avail = area.width.saturating_sub(2);
    let chosen = fit::choose(&cols, avail);
    let rows = v.iter().map(|i| {
        let beat = ago((app.now_s() - i.last_beat_at) * 1000);
        let role = if i.dispatcher { "webhooks" } else { "" };
        let name = if Some(i.instance_id.as_str()) == me {
            format!("{} (this)", i.instance_id)
        } else {
            i.instance_id.clone()
        };
        let cells = [
            name,
            if i.alive { "alive" } else { "DOWN" }.to_string(),
            i.sessions.to_string(),
            i.cpu_percent
                .map(|c| format!("{c:.0} %"))
                .unwrap_or_else(|| "—".into()),
            i.rss_bytes
                .map(|b| format!("{:.0} MB", b as f64 / 1_048_576.0))
                .unwrap_or_else(|| "—".into()),
            format!("{beat} ago"),
            role.to_string(),
            i.http_addr.clone(),
            i.device_addr.clone(),
        ];
        let style = if i.alive {
            Style::new()
        } else {
            Style::new().fg(Color::Red)
        };
        Row::new(
            chosen
                .iter()
                .map(|(c, w)| Cell::from(fit::ellipsize(&cells[*c], *w as usize)))
                .collect::<Vec<_>>(),
        )
        .style(style)
    });
    let header = Row::new(
        chosen
            .iter()
            .map(|(c, w)| Cell::from(fit::ellipsize(titles[*c], *w as usize)))
            .collect::<Vec<_>>(),
    )
    .style(BOLD);
    let alive = v.iter().filter(|i| i.alive).count();
    f.render_widget(
        Table::new(rows, fit::constraints(&chosen))
            .header(header)
            .block(Block::bordered().title(format!(" Instances · {alive} of {} alive ", v.len()))),
        area,
    );
}
