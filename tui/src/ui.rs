//! Drawing. Every function here reads the [`App`] and draws; none changes it.

use pile_api::{DeviceView, Direction, OrderStatus, PortStatus};
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Cell, Chart, Clear, Dataset, Gauge, GraphType, List, ListItem, ListState,
    Paragraph, Row, Sparkline, Table, TableState, Tabs, Wrap,
};
use ratatui::Frame;

use crate::app::{App, Conn, Modal, Screen, StreamState, Tab, FAULT_KINDS, FAULT_SECS};

const DIM: Style = Style::new().fg(Color::DarkGray);
const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);

/// Draws the whole dashboard.
pub fn render(app: &App, f: &mut Frame) {
    let area = f.area();
    let banner = if app.is_disconnected() { 3 } else { 0 };
    let [top, banner_area, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(banner),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    header(app, f, top);
    if banner > 0 {
        disconnected_banner(app, f, banner_area);
    }
    match app.screen() {
        Screen::Tab(Tab::Overview) => overview(app, f, body),
        Screen::Tab(Tab::Devices) => devices(app, f, body),
        Screen::Tab(Tab::Orders) => orders(app, f, body),
        Screen::Tab(Tab::Events) => events(app, f, body),
        Screen::Device(id) => device(app, id, f, body),
        Screen::Order(no) => order(app, no, f, body),
    }
    footer(app, f, bottom);
    match &app.modal {
        Some(Modal::Help) => help(app, f, area),
        Some(Modal::Confirm(cmd)) => confirm(&cmd.describe(), f, area),
        Some(Modal::FaultPicker { device, selected }) => fault_picker(device, *selected, f, area),
        None => {}
    }
}

fn header(app: &App, f: &mut Frame, area: Rect) {
    let [left, right] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(34)]).areas(area);
    let titles = Tab::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{} {}", i + 1, t.title()));
    let selected = Tab::ALL.iter().position(|t| *t == app.tab()).unwrap_or(0);
    let tabs = Tabs::new(titles)
        .select(selected)
        .highlight_style(Style::new().bold().fg(Color::Cyan))
        .divider("│");
    f.render_widget(tabs, left);
    let (text, style) = match &app.conn {
        Conn::Connecting => ("connecting…".to_string(), Style::new().fg(Color::Yellow)),
        Conn::Connected { last_ok_ms } if app.now_ms - last_ok_ms > app.stale_after_ms => (
            format!("● no answer for {}", ago(app.now_ms - last_ok_ms)),
            Style::new().fg(Color::Yellow).bold(),
        ),
        Conn::Connected { last_ok_ms } => (
            format!("● connected, {} ago", ago(app.now_ms - last_ok_ms)),
            Style::new().fg(Color::Green),
        ),
        Conn::Disconnected { .. } => (
            "● DISCONNECTED".to_string(),
            Style::new().fg(Color::Red).bold(),
        ),
    };
    f.render_widget(
        Paragraph::new(Span::styled(text, style)).alignment(Alignment::Right),
        right,
    );
}

fn disconnected_banner(app: &App, f: &mut Frame, area: Rect) {
    let Conn::Disconnected {
        error,
        since_ms,
        last_ok_ms,
        retry_at_ms,
    } = &app.conn
    else {
        return;
    };
    let last = match last_ok_ms {
        Some(ms) => format!("last success {} ago", ago(app.now_ms - ms)),
        None => "never connected".to_string(),
    };
    let retry = if *retry_at_ms > app.now_ms {
        format!("retrying in {}", ago(retry_at_ms - app.now_ms))
    } else {
        "retrying now".to_string()
    };
    let lines = vec![
        Line::from(vec![
            Span::styled(
                " DISCONNECTED ",
                Style::new().bg(Color::Red).fg(Color::White).bold(),
            ),
            Span::raw(format!(
                " {last} · {retry} · down for {} · data below is stale",
                ago(app.now_ms - since_ms)
            )),
        ]),
        Line::from(Span::styled(
            format!(" {}: {error}", app.server),
            Style::new().fg(Color::Red),
        )),
    ];
    f.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::BOTTOM)
                .border_style(Style::new().fg(Color::Red)),
        ),
        area,
    );
}

fn footer(app: &App, f: &mut Frame, area: Rect) {
    if app.editing_filter {
        let filter = match app.screen() {
            Screen::Tab(Tab::Devices) => &app.device_filter,
            Screen::Tab(Tab::Orders) => &app.order_filter,
            _ => &app.event_filter,
        };
        f.render_widget(
            Paragraph::new(format!("/{filter}█  (Enter keep, Esc clear)")).fg(Color::Yellow),
            area,
        );
        return;
    }
    if let Some(s) = &app.status {
        if app.now_ms - s.at_ms < 10_000 {
            let style = if s.error {
                Style::new().fg(Color::Red)
            } else {
                Style::new().fg(Color::Green)
            };
            f.render_widget(Paragraph::new(Span::styled(s.text.clone(), style)), area);
            return;
        }
    }
    let sim = if app.sim_enabled {
        "  p/u plug/unplug  n/r net cut/restore  f fault"
    } else {
        ""
    };
    let hint = match app.screen() {
        Screen::Tab(Tab::Overview) => "Tab/1-4 views  ? help  q quit".to_string(),
        Screen::Tab(Tab::Devices) => {
            format!(
                "↑↓ select  Enter open  / filter  s sort ({})  ? help  q quit{}",
                app.device_sort.title(),
                if app.sim_enabled { "  n/r/f sim" } else { "" }
            )
        }
        Screen::Tab(Tab::Orders) => {
            "↑↓ select  Enter open  ←→ status  / filter  ? help  q quit".to_string()
        }
        Screen::Tab(Tab::Events) => {
            "p pause  ↑↓ scroll  / filter  c clear  ? help  q quit".to_string()
        }
        Screen::Device(_) => format!("↑↓ port  s start  x stop  Enter order  Esc back{sim}"),
        Screen::Order(_) => "Esc back  ? help  q quit".to_string(),
    };
    f.render_widget(Paragraph::new(hint).style(DIM), area);
}

/// `1h02m`, `3m05s`, `12s`.
pub fn ago(ms: i64) -> String {
    let s = (ms.max(0) + 500) / 1000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn loading(f: &mut Frame, area: Rect, title: &str) {
    f.render_widget(
        Paragraph::new("Loading…")
            .alignment(Alignment::Center)
            .block(Block::bordered().title(title.to_string())),
        area,
    );
}

// ---------------------------------------------------------------------------------------
// Overview

fn overview(app: &App, f: &mut Frame, area: Rect) {
    let Some(data) = &app.data else {
        return loading(f, area, " Overview ");
    };
    let stats = data.stats.clone().unwrap_or_default();
    let total = data.devices_total.max(stats.tables.devices);
    let online = stats.online_devices;
    let m = data.metrics.as_ref();
    let accepted = m.and_then(|m| m.get("tcp_connections_accepted_total"));
    let h = &app.history;
    let num = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "—".into());

    let [figures, sparks] =
        Layout::vertical([Constraint::Length(9), Constraint::Min(0)]).areas(area);
    let [piles, flow, orders] = Layout::horizontal([
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
    ])
    .areas(figures);

    let kv =
        |k: &str, v: String| Line::from(vec![Span::styled(format!("{k:<21}"), DIM), Span::raw(v)]);
    f.render_widget(
        Paragraph::new(vec![
            kv("Piles online", online.to_string()),
            kv("Piles offline", (total - online).max(0).to_string()),
            kv("Piles total", total.to_string()),
            kv("Active sessions", stats.active_sessions.to_string()),
            kv("Connections accepted", num(accepted)),
            kv(
                "Heartbeats/s",
                h.heartbeats_per_sec_now
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "—".into()),
            ),
        ])
        .block(Block::bordered().title(" Piles ")),
        piles,
    );
    f.render_widget(
        Paragraph::new(vec![
            kv("Webhook backlog", stats.event_backlog.to_string()),
            kv(
                "Push success",
                format!("{:.1} %", stats.push_success_rate * 100.0),
            ),
            kv(
                "Push latency",
                format!("{:.1} ms", stats.mean_push_latency_ms),
            ),
            kv(
                "API p99",
                h.api_p99_ms_now
                    .map(|v| format!("{v:.1} ms"))
                    .unwrap_or_else(|| "—".into()),
            ),
            kv(
                "DB pool",
                format!("{}/{}", stats.db_pool.in_use, stats.db_pool.max),
            ),
            kv("Uptime", ago(stats.uptime_sec as i64 * 1000)),
        ])
        .block(Block::bordered().title(" Gateway ")),
        flow,
    );
    let order_lines: Vec<Line> = OrderStatus::ALL
        .iter()
        .map(|s| {
            let n = stats.orders_by_status.get(s.as_str()).copied().unwrap_or(0);
            Line::from(vec![
                Span::styled(format!("{:<21}", s.as_str()), status_style(*s)),
                Span::raw(n.to_string()),
            ])
        })
        .collect();
    f.render_widget(
        Paragraph::new(order_lines).block(Block::bordered().title(" Orders by status ")),
        orders,
    );

    let series: [(&str, &std::collections::VecDeque<u64>, Color); 6] = [
        ("online piles", &h.online, Color::Green),
        ("active sessions", &h.sessions, Color::Cyan),
        ("heartbeats/s", &h.heartbeats_per_sec, Color::Blue),
        ("connections accepted/s", &h.accepts_per_sec, Color::Magenta),
        ("API p99 ms", &h.api_p99_ms, Color::Yellow),
        ("webhook backlog", &h.backlog, Color::Red),
    ];
    let rows = Layout::vertical([Constraint::Ratio(1, 3); 3]).split(sparks);
    for (i, (title, data, color)) in series.iter().enumerate() {
        let row = rows[i / 2];
        let [l, r] = Layout::horizontal([Constraint::Ratio(1, 2); 2]).areas(row);
        let cell = if i % 2 == 0 { l } else { r };
        let last = data
            .back()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "—".into());
        // The newest samples, as many as fit.
        let width = cell.width.saturating_sub(2) as usize;
        let v: Vec<u64> = data
            .iter()
            .skip(data.len().saturating_sub(width))
            .copied()
            .collect();
        f.render_widget(
            Sparkline::default()
                .data(&v)
                .style(Style::new().fg(*color))
                .block(Block::bordered().title(format!(" {title}: {last} "))),
            cell,
        );
    }
}

fn status_style(s: OrderStatus) -> Style {
    match s {
        OrderStatus::Pending => Style::new().fg(Color::Yellow),
        OrderStatus::Charging => Style::new().fg(Color::Cyan),
        OrderStatus::Completed => Style::new().fg(Color::Green),
        OrderStatus::Failed => Style::new().fg(Color::Red),
        OrderStatus::Cancelled => DIM,
    }
}

fn port_style(s: PortStatus) -> Style {
    match s {
        PortStatus::Offline => DIM,
        PortStatus::Idle => Style::new(),
        PortStatus::Plugged => Style::new().fg(Color::Yellow),
        PortStatus::Charging => Style::new().fg(Color::Cyan),
        PortStatus::Fault => Style::new().fg(Color::Red),
    }
}

// ---------------------------------------------------------------------------------------
// Devices

/// `I I C P` style: one letter per port (Idle, Plugged, Charging, Fault, Offline).
pub fn ports_summary(d: &DeviceView) -> String {
    let mut counts = [0usize; 5];
    for p in &d.ports {
        counts[match p.status {
            PortStatus::Charging => 0,
            PortStatus::Plugged => 1,
            PortStatus::Idle => 2,
            PortStatus::Fault => 3,
            PortStatus::Offline => 4,
        }] += 1;
    }
    let names = ["charging", "plugged", "idle", "fault", "offline"];
    let parts: Vec<String> = counts
        .iter()
        .zip(names)
        .filter(|(n, _)| **n > 0)
        .map(|(n, name)| format!("{n} {name}"))
        .collect();
    if parts.is_empty() {
        "no ports".into()
    } else {
        parts.join(", ")
    }
}

fn devices(app: &App, f: &mut Frame, area: Rect) {
    let Some(data) = &app.data else {
        return loading(f, area, " Devices ");
    };
    let list = app.visible_devices();
    let rows = list.iter().map(|d| {
        let online = if d.online {
            Cell::from("online").fg(Color::Green)
        } else {
            Cell::from("offline").fg(Color::Red)
        };
        let seen = d
            .last_seen_at
            .map(|t| format!("{} ago", ago(app.now_ms - t * 1000)))
            .unwrap_or_else(|| "never".into());
        Row::new(vec![
            Cell::from(d.device_id.clone()),
            Cell::from(d.protocol.clone()),
            online,
            Cell::from(seen),
            Cell::from(ports_summary(d)),
        ])
    });
    let filter = if app.device_filter.is_empty() {
        String::new()
    } else {
        format!(" filter \"{}\" ·", app.device_filter)
    };
    let title = format!(
        " Devices ·{filter} {} shown of {} · sort: {} ",
        list.len(),
        data.devices_total,
        app.device_sort.title()
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(18),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Min(10),
        ],
    )
    .header(Row::new(["ID", "Family", "Online", "Last seen", "Ports"]).style(Style::new().bold()))
    .block(Block::bordered().title(title))
    .row_highlight_style(SELECTED);
    let mut state =
        TableState::default().with_selected((!list.is_empty()).then_some(app.device_sel));
    f.render_stateful_widget(table, area, &mut state);
}

fn device(app: &App, id: &str, f: &mut Frame, area: Rect) {
    let Some(d) = app
        .device_detail
        .as_ref()
        .filter(|d| d.device.device_id == id)
    else {
        return loading(f, area, &format!(" Device {id} "));
    };
    let dev = &d.device;
    let [info, ports, frames] = Layout::vertical([
        Constraint::Length(if d.sim.is_some() { 4 } else { 3 }),
        Constraint::Length(
            (dev.ports.len() as u16)
                .saturating_mul(2)
                .saturating_add(3)
                .min(20),
        ),
        Constraint::Min(3),
    ])
    .areas(area);
    let online = if dev.online {
        Span::styled("online", Style::new().fg(Color::Green))
    } else {
        Span::styled("offline", Style::new().fg(Color::Red))
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
    let mut lines = vec![Line::from(vec![
        online,
        Span::raw(format!(
            " · {} · last seen {} · addr {} · fw {} · signal {}",
            dev.protocol,
            dev.last_seen_at
                .map(|t| format!("{} ago", ago(app.now_ms - t * 1000)))
                .unwrap_or_else(|| "never".into()),
            opt(&dev.remote_addr),
            opt(&dev.firmware),
            dev.signal
                .map(|s| s.to_string())
                .unwrap_or_else(|| "—".into()),
        )),
    ])];
    if let Some(sim) = &d.sim {
        lines.push(Line::from(Span::styled(
            format!("simulator: {sim}"),
            Style::new().fg(Color::Magenta),
        )));
    }
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(format!(" Device {id} "))),
        info,
    );

    // Ports: one line of state, then power and energy gauges.
    let block = Block::bordered().title(" Ports ");
    let inner = block.inner(ports);
    f.render_widget(block, ports);
    let max_power = dev
        .ports
        .iter()
        .map(|p| p.power_w)
        .fold(1000.0_f64, f64::max);
    for (i, p) in dev.ports.iter().enumerate() {
        let y = inner.y + (i as u16) * 2;
        if y + 1 >= inner.y + inner.height {
            break;
        }
        let sel = i == app.port_sel;
        let order = p
            .order_no
            .as_deref()
            .and_then(|no| d.orders.iter().find(|o| o.order_no == no));
        let mark = if sel { "▶" } else { " " };
        let hole = match (p.socket_no, p.hole) {
            (Some(s), Some(h)) => format!(" socket {s}{}", if h == 0 { "A" } else { "B" }),
            _ => String::new(),
        };
        let mut spans = vec![
            Span::raw(format!("{mark} port {}{hole}  ", p.port_no)),
            Span::styled(format!("{:<9}", p.status.as_str()), port_style(p.status)),
        ];
        if let Some(no) = &p.order_no {
            spans.push(Span::raw(format!("  order {no}")));
            if let Some(o) = order {
                spans.push(Span::styled(
                    format!(" ({})", o.status),
                    status_style(o.status),
                ));
            }
        }
        let line_area = Rect::new(inner.x, y, inner.width, 1);
        let style = if sel {
            Style::new().bold()
        } else {
            Style::new()
        };
        f.render_widget(Paragraph::new(Line::from(spans)).style(style), line_area);
        let [pw, en] = Layout::horizontal([Constraint::Ratio(1, 2); 2]).areas(Rect::new(
            inner.x + 2,
            y + 1,
            inner.width.saturating_sub(2),
            1,
        ));
        f.render_widget(
            Gauge::default()
                .ratio((p.power_w / max_power).clamp(0.0, 1.0))
                .label(format!("{:.1} W", p.power_w))
                .gauge_style(Style::new().fg(Color::Cyan).bg(Color::Black)),
            pw,
        );
        let (ratio, label) = match order {
            Some(o) if o.target_duration > 0 => (
                o.duration_sec as f64 / o.target_duration as f64,
                format!(
                    "{:.3} kWh · {}/{}",
                    o.total_kwh,
                    ago(o.duration_sec * 1000),
                    ago(o.target_duration * 1000)
                ),
            ),
            Some(o) => (o.total_kwh.min(1.0), format!("{:.3} kWh", o.total_kwh)),
            None => (0.0, "— kWh".to_string()),
        };
        f.render_widget(
            Gauge::default()
                .ratio(ratio.clamp(0.0, 1.0))
                .label(label)
                .gauge_style(Style::new().fg(Color::Green).bg(Color::Black)),
            en,
        );
    }

    // Recent frames, newest first.
    let mut frames_newest_first: Vec<&pile_api::FrameRecord> = d.frames.iter().collect();
    frames_newest_first.sort_by_key(|f| std::cmp::Reverse(f.at_ms));
    let items: Vec<ListItem> = frames_newest_first
        .into_iter()
        .map(|fr| {
            let (arrow, style) = match fr.direction {
                Direction::Up => ("↑", Style::new().fg(Color::Green)),
                Direction::Down => ("↓", Style::new().fg(Color::Yellow)),
            };
            let t = ago(app.now_ms - fr.at_ms);
            ListItem::new(vec![
                Line::from(vec![
                    Span::styled(format!("{arrow} {t:>6} ago  "), style),
                    Span::raw(fr.summary.clone()),
                ]),
                Line::from(Span::styled(format!("    {}", fr.hex), DIM)),
            ])
        })
        .collect();
    let title = format!(" Recent frames ({}) ", d.frames.len());
    if items.is_empty() {
        f.render_widget(
            Paragraph::new("no frames recorded")
                .style(DIM)
                .block(Block::bordered().title(title)),
            frames,
        );
    } else {
        f.render_widget(
            List::new(items).block(Block::bordered().title(title)),
            frames,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Orders

fn orders(app: &App, f: &mut Frame, area: Rect) {
    let Some(data) = &app.data else {
        return loading(f, area, " Orders ");
    };
    let [bar, table_area] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let mut names = vec!["all".to_string()];
    names.extend(OrderStatus::ALL.iter().map(|s| {
        let n = data
            .stats
            .as_ref()
            .and_then(|st| st.orders_by_status.get(s.as_str()).copied())
            .unwrap_or(0);
        format!("{s} {n}")
    }));
    let sel = match app.order_status {
        None => 0,
        Some(s) => 1 + OrderStatus::ALL.iter().position(|x| *x == s).unwrap_or(0),
    };
    f.render_widget(
        Tabs::new(names)
            .select(sel)
            .highlight_style(Style::new().bold().fg(Color::Cyan)),
        bar,
    );
    let list = app.visible_orders();
    let rows = list.iter().map(|o| {
        Row::new(vec![
            Cell::from(o.status.as_str()).style(status_style(o.status)),
            Cell::from(o.order_no.clone()),
            Cell::from(format!("{} #{}", o.device_id, o.port_no)),
            Cell::from(ago((app.now_ms / 1000 - o.created_at) * 1000) + " ago"),
            Cell::from(ago(o.duration_sec * 1000)),
            Cell::from(format!("{:.3}", o.total_kwh)),
            Cell::from(format!("{:.0}", o.current_power)),
            Cell::from(format!("{:.2}", o.final_amount as f64 / 100.0)),
        ])
    });
    let filter = if app.order_filter.is_empty() {
        String::new()
    } else {
        format!(" filter \"{}\" ·", app.order_filter)
    };
    let table = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Length(26),
            Constraint::Length(20),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new([
            "Status",
            "Order",
            "Device #port",
            "Created",
            "Dur",
            "kWh",
            "W",
            "Yuan",
        ])
        .style(Style::new().bold()),
    )
    .block(Block::bordered().title(format!(
        " Orders ·{filter} {} shown of {} ",
        list.len(),
        data.orders_total
    )))
    .row_highlight_style(SELECTED);
    let mut state =
        TableState::default().with_selected((!list.is_empty()).then_some(app.order_sel));
    f.render_stateful_widget(table, table_area, &mut state);
}

fn order(app: &App, no: &str, f: &mut Frame, area: Rect) {
    let Some(d) = app.order_detail.as_ref().filter(|d| d.order.order_no == no) else {
        return loading(f, area, &format!(" Order {no} "));
    };
    let o = &d.order;
    let [info, chart] = Layout::vertical([Constraint::Length(10), Constraint::Min(5)]).areas(area);
    let [left, right] = Layout::horizontal([Constraint::Ratio(1, 2); 2]).areas(info);
    let kv =
        |k: &str, v: String| Line::from(vec![Span::styled(format!("{k:<16}"), DIM), Span::raw(v)]);
    let mode = match o.charge_mode {
        1 => format!("by time ({})", ago(o.target_duration * 1000)),
        2 => "by energy".into(),
        3 => "by amount".into(),
        4 => "until full".into(),
        m => format!("mode {m}"),
    };
    f.render_widget(
        Paragraph::new(vec![
            Line::from(vec![
                Span::styled(format!("{:<16}", "Status"), DIM),
                Span::styled(o.status.as_str(), status_style(o.status).bold()),
            ]),
            kv("Device", format!("{} port {}", o.device_id, o.port_no)),
            kv("Mode", mode),
            kv("Duration", ago(o.duration_sec * 1000)),
            kv("Energy", format!("{:.3} kWh", o.total_kwh)),
            kv(
                "Power now/peak",
                format!("{:.1} / {:.1} W", o.current_power, o.peak_power),
            ),
            kv(
                "Replayed",
                if o.offline_replayed {
                    "yes (settled offline)".into()
                } else {
                    "no".into()
                },
            ),
        ])
        .block(Block::bordered().title(format!(" Order {no} "))),
        left,
    );
    let yuan = |fen: i64| format!("{:.2} yuan", fen as f64 / 100.0);
    let reason = match (&o.end_reason, &o.end_reason_name, &o.end_reason_text) {
        (None, _, _) => "—".to_string(),
        (Some(r), name, text) => format!(
            "{r} {} {}",
            name.clone().unwrap_or_default(),
            text.clone().unwrap_or_default()
        ),
    };
    let settled = !o.status.is_active();
    f.render_widget(
        Paragraph::new(vec![
            kv("Limit", yuan(o.amount)),
            kv(
                "Energy fee",
                if settled {
                    yuan(o.energy_fee)
                } else {
                    "—".into()
                },
            ),
            kv(
                "Service fee",
                if settled {
                    yuan(o.service_fee_amount)
                } else {
                    "—".into()
                },
            ),
            kv(
                "Final amount",
                if settled {
                    yuan(o.final_amount)
                } else {
                    "not settled".into()
                },
            ),
            kv("End reason", reason),
        ])
        .wrap(Wrap { trim: true })
        .block(Block::bordered().title(" Settlement ")),
        right,
    );
    let points: Vec<(f64, f64)> = d
        .progress
        .iter()
        .map(|s| (s.duration_sec as f64, s.power_w))
        .collect();
    let max_x = points.iter().map(|p| p.0).fold(60.0, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(100.0, f64::max) * 1.1;
    let title = format!(" Power curve · {} samples ", points.len());
    if points.is_empty() {
        f.render_widget(
            Paragraph::new("no progress samples yet")
                .style(DIM)
                .block(Block::bordered().title(title)),
            chart,
        );
        return;
    }
    let dataset = Dataset::default()
        .marker(symbols::Marker::Braille)
        .graph_type(GraphType::Line)
        .style(Style::new().fg(Color::Cyan))
        .data(&points);
    f.render_widget(
        Chart::new(vec![dataset])
            .block(Block::bordered().title(title))
            .x_axis(
                Axis::default()
                    .title("s")
                    .bounds([0.0, max_x])
                    .labels(["0".to_string(), format!("{max_x:.0}")]),
            )
            .y_axis(
                Axis::default()
                    .title("W")
                    .bounds([0.0, max_y])
                    .labels(["0".to_string(), format!("{max_y:.0}")]),
            ),
        chart,
    );
}

// ---------------------------------------------------------------------------------------
// Events

fn events(app: &App, f: &mut Frame, area: Rect) {
    let list = app.visible_events();
    let [top, detail] = Layout::vertical([Constraint::Min(3), Constraint::Length(6)]).areas(area);
    let stream = match app.stream {
        StreamState::Connecting => Span::styled("connecting", Style::new().fg(Color::Yellow)),
        StreamState::Live => Span::styled("live", Style::new().fg(Color::Green)),
        StreamState::Lost => Span::styled("stream lost, reconnecting", Style::new().fg(Color::Red)),
    };
    let mut title = vec![Span::raw(format!(" Events · {} · ", list.len())), stream];
    if app.paused {
        title.push(Span::styled(
            format!(" · PAUSED ({} held)", app.held.len()),
            Style::new().fg(Color::Yellow).bold(),
        ));
    }
    if !app.event_filter.is_empty() {
        title.push(Span::raw(format!(" · filter \"{}\"", app.event_filter)));
    }
    title.push(Span::raw(" "));
    let items: Vec<ListItem> = list
        .iter()
        .map(|e| {
            let t = ago(app.now_ms - e.timestamp * 1000);
            let style = if e.event_type.contains("failed")
                || e.event_type.contains("alarm")
                || e.event_type.contains("offline")
            {
                Style::new().fg(Color::Red)
            } else if e.event_type.starts_with("charging") {
                Style::new().fg(Color::Cyan)
            } else {
                Style::new()
            };
            ListItem::new(Line::from(vec![
                Span::styled(format!("{t:>6} ago  "), DIM),
                Span::styled(format!("{:<22}", e.event_type), style),
                Span::raw(format!(
                    " {}{}",
                    e.device_phy_id,
                    e.order_no
                        .as_deref()
                        .map(|o| format!("  {o}"))
                        .unwrap_or_default()
                )),
            ]))
        })
        .collect();
    let mut state =
        ListState::default().with_selected((!list.is_empty()).then_some(app.event_scroll));
    f.render_stateful_widget(
        List::new(items)
            .block(Block::bordered().title(Line::from(title)))
            .highlight_style(SELECTED),
        top,
        &mut state,
    );
    let body = list
        .get(app.event_scroll)
        .map(|e| e.data.to_string())
        .unwrap_or_else(|| "no events yet".into());
    f.render_widget(
        Paragraph::new(body)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" data ")),
        detail,
    );
}

// ---------------------------------------------------------------------------------------
// Pop-ups

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn help(app: &App, f: &mut Frame, area: Rect) {
    let mut lines = vec![
        "Tab / Shift-Tab   next / previous view",
        "1 2 3 4           Overview, Devices, Orders, Events",
        "↑ ↓ PgUp PgDn     move the selection",
        "Enter             open the selected device or order",
        "Esc               back",
        "/                 filter the table (Enter keeps, Esc clears)",
        "s                 Devices: sort · Device: start charging (asks y/n)",
        "x                 Device: stop charging (asks y/n)",
        "← →               Orders: status",
        "p                 Events: pause / resume",
        "c                 Events: clear",
        "?                 this help",
        "q / Ctrl-C        quit",
    ];
    if app.sim_enabled {
        lines.extend([
            "",
            "Simulator (--sim):",
            "p / u             Device: plug / unplug the selected port",
            "n / r             cut / restore the pile's network",
            "f                 inject a fault on the pile",
        ]);
    } else {
        lines.push("(simulator controls need --sim URL)");
    }
    let h = lines.len() as u16 + 2;
    let r = centered(area, 70, h);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines.into_iter().map(Line::from).collect::<Vec<_>>()).block(
            Block::bordered()
                .title(" Help · Esc closes ")
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        r,
    );
}

fn confirm(text: &str, f: &mut Frame, area: Rect) {
    let r = centered(area, 64, 6);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(vec![
            Line::from(text.to_string()),
            Line::from(""),
            Line::from(Span::styled("y: yes    n / Esc: no", Style::new().bold())),
        ])
        .wrap(Wrap { trim: true })
        .block(
            Block::bordered()
                .title(" Confirm ")
                .border_style(Style::new().fg(Color::Yellow)),
        ),
        r,
    );
}

fn fault_picker(device: &str, selected: usize, f: &mut Frame, area: Rect) {
    let r = centered(area, 44, FAULT_KINDS.len() as u16 + 2);
    f.render_widget(Clear, r);
    let items: Vec<ListItem> = FAULT_KINDS.iter().map(|k| ListItem::new(*k)).collect();
    let mut state = ListState::default().with_selected(Some(selected));
    f.render_stateful_widget(
        List::new(items)
            .block(
                Block::bordered()
                    .title(format!(" Fault on {device} for {FAULT_SECS} s "))
                    .border_style(Style::new().fg(Color::Yellow)),
            )
            .highlight_style(SELECTED),
        r,
        &mut state,
    );
}
