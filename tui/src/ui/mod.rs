//! Drawing. Every function here reads the [`App`] and draws; none changes it.

pub mod charts;
mod device;
mod devices;
mod events;
pub mod fit;
mod orders;
mod overview;
mod popups;
mod problems;

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;

use crate::app::follow::Stage;
use crate::app::{App, Conn, Modal, Screen, Tab, NOTICE_MS};
use pile_api::{OrderStatus, PortStatus};

pub(crate) const DIM: Style = Style::new().fg(Color::DarkGray);
pub(crate) const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);
pub(crate) const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);

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
        Screen::Tab(Tab::Overview) => overview::draw(app, f, body),
        Screen::Tab(Tab::Problems) => problems::draw(app, f, body),
        Screen::Tab(Tab::Devices) => devices::draw(app, f, body),
        Screen::Tab(Tab::Orders) => orders::list(app, f, body),
        Screen::Tab(Tab::Events) => events::draw(app, f, body),
        Screen::Device(id) => device::draw(app, id, f, body),
        Screen::Order(no) => orders::detail(app, no, f, body),
    }
    footer(app, f, bottom);
    match &app.modal {
        Some(Modal::Help) => popups::help(app, f, area),
        Some(Modal::Confirm(cmd)) => popups::confirm(&cmd.describe(), f, area),
        Some(Modal::FaultPicker { device, selected }) => {
            popups::fault_picker(device, *selected, f, area)
        }
        Some(Modal::Start(form)) => popups::start_form(form, f, area),
        None => {}
    }
}

/// The tab bar. The selected tab is in brackets (and bold, reversed): readable without colour.
pub fn tab_titles(app: &App, short: bool) -> Vec<String> {
    let problems = app.problems().len();
    Tab::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let name = if short { t.short() } else { t.title() };
            let count = if *t == Tab::Problems && problems > 0 {
                format!(" {problems}")
            } else {
                String::new()
            };
            if *t == app.tab() {
                format!("[{} {name}{count}]", i + 1)
            } else {
                format!(" {} {name}{count} ", i + 1)
            }
        })
        .collect()
}

fn header(app: &App, f: &mut Frame, area: Rect) {
    let (long, short, style) = match &app.conn {
        Conn::Connecting => (
            "connecting…".to_string(),
            "connecting…".to_string(),
            Style::new().fg(Color::Yellow),
        ),
        Conn::Connected { last_ok_ms } if app.now_ms - last_ok_ms > app.stale_after_ms => (
            format!("● no answer for {}", ago(app.now_ms - last_ok_ms)),
            format!("● no answer {}", ago(app.now_ms - last_ok_ms)),
            Style::new().fg(Color::Yellow).bold(),
        ),
        Conn::Connected { last_ok_ms } => (
            format!("● connected, {} ago", ago(app.now_ms - last_ok_ms)),
            format!("● ok {}", ago(app.now_ms - last_ok_ms)),
            Style::new().fg(Color::Green),
        ),
        Conn::Disconnected {
            status: Some(401 | 403),
            ..
        } => (
            "● KEY REFUSED".to_string(),
            "● KEY REFUSED".to_string(),
            Style::new().fg(Color::Red).bold(),
        ),
        Conn::Disconnected { .. } => (
            "● DISCONNECTED".to_string(),
            "● DISCONN".to_string(),
            Style::new().fg(Color::Red).bold(),
        ),
    };
    let w = area.width as usize;
    let tabs_w = |t: &[String]| t.iter().map(|s| fit::width(s)).sum::<usize>() + t.len() - 1;
    let long_tabs = tab_titles(app, false);
    let short_tabs = tab_titles(app, true);
    let (tabs, conn) = if tabs_w(&long_tabs) + fit::width(&long) < w {
        (long_tabs, long)
    } else if tabs_w(&long_tabs) + fit::width(&short) < w {
        (long_tabs, short)
    } else {
        (short_tabs, short)
    };
    let conn_w = (fit::width(&conn) as u16).min(area.width);
    let [left, right] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(conn_w)]).areas(area);
    let selected = app.tab().index_of();
    let has_problems = !app.problems().is_empty();
    let mut spans = Vec::new();
    for (i, t) in tabs.into_iter().enumerate() {
        if i > 0 {
            spans.push(Span::styled("│", DIM));
        }
        let style = if i == selected {
            Style::new().bold().reversed()
        } else if Tab::ALL[i] == Tab::Problems && has_problems {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        spans.push(Span::styled(t, style));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), left);
    f.render_widget(
        Paragraph::new(Span::styled(conn, style)).alignment(Alignment::Right),
        right,
    );
}

impl Tab {
    fn index_of(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

fn disconnected_banner(app: &App, f: &mut Frame, area: Rect) {
    let Conn::Disconnected {
        error,
        status,
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
    let title = match status {
        Some(401 | 403) => " API KEY REFUSED ",
        _ => " DISCONNECTED ",
    };
    let w = area.width as usize;
    let rest = format!(
        " {last} · {retry} · down for {} · data below is stale",
        ago(app.now_ms - since_ms)
    );
    let lines = vec![
        Line::from(vec![
            Span::styled(title, Style::new().bg(Color::Red).fg(Color::White).bold()),
            Span::raw(fit::ellipsize(&rest, w.saturating_sub(title.len()))),
        ]),
        Line::from(Span::styled(
            fit::ellipsize(&format!(" {}: {error}", app.server), w),
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

/// What the status line says now: the newest of a notice and a followed start or stop.
pub fn status_text(app: &App) -> Option<(String, bool)> {
    let notice = app
        .status
        .as_ref()
        .filter(|s| app.now_ms - s.at_ms < NOTICE_MS);
    let follow = app.follows.last();
    match (notice, follow) {
        (Some(n), Some(f)) if n.at_ms >= f.changed_ms() => Some((n.text.clone(), n.error)),
        (_, Some(f)) => {
            let order = f.order_no.as_deref().and_then(|no| app.live.orders.get(no));
            let error = matches!(f.stage, Stage::Done { ok: false, .. });
            let more = app.follows.iter().filter(|g| !g.is_done()).count();
            let mut text = f.text(order, app.now_ms);
            if more > 1 {
                text.push_str(&format!(" (+{} more)", more - 1));
            }
            Some((text, error))
        }
        (Some(n), None) => Some((n.text.clone(), n.error)),
        (None, None) => None,
    }
}

fn footer(app: &App, f: &mut Frame, area: Rect) {
    let w = area.width as usize;
    if app.editing_filter {
        let (filter, what) = match app.screen() {
            Screen::Tab(Tab::Devices) => (&app.device_filter, "ID, family, state"),
            Screen::Tab(Tab::Orders) => (&app.order_filter, "order, device"),
            _ => (&app.event_filter, "type, device, order"),
        };
        f.render_widget(
            Paragraph::new(fit::ellipsize(
                &format!("/{filter}█  ({what}; Enter keep, Esc clear)"),
                w,
            ))
            .fg(Color::Yellow),
            area,
        );
        return;
    }
    if let Some((text, error)) = status_text(app) {
        let style = if error {
            Style::new().fg(Color::Red)
        } else {
            Style::new().fg(Color::Green)
        };
        f.render_widget(
            Paragraph::new(Span::styled(fit::ellipsize(&text, w), style)),
            area,
        );
        return;
    }
    let sim = if app.sim_enabled {
        "  p/u plug  n/r net  f fault"
    } else {
        ""
    };
    let hint = match app.screen() {
        Screen::Tab(Tab::Overview) => "Tab/1-5 views  ? help  q quit".to_string(),
        Screen::Tab(Tab::Problems) => {
            "↑↓ select  Enter open  x stop  r replay  s retry  t test  ? help".to_string()
        }
        Screen::Tab(Tab::Devices) => format!(
            "↑↓ PgUp/PgDn  Enter open  / filter  s sort  S reverse  ? help{}",
            if app.sim_enabled { "  n/r/f sim" } else { "" }
        ),
        Screen::Tab(Tab::Orders) => {
            "↑↓ select  Enter open  ←→ status  / filter  s sort  S reverse  ? help".to_string()
        }
        Screen::Tab(Tab::Events) => {
            "p pause  ↑↓ scroll  / filter  c clear  ? help  q quit".to_string()
        }
        Screen::Device(_) => {
            format!("↑↓ move  ←→ ports/frames  s start  x stop  h hex  Enter order  Esc back{sim}")
        }
        Screen::Order(_) => "x stop  Esc back  ? help  q quit".to_string(),
    };
    f.render_widget(Paragraph::new(fit::ellipsize(&hint, w)).style(DIM), area);
}

/// `2d03h`, `1h02m`, `3m05s`, `12s`.
pub fn ago(ms: i64) -> String {
    let s = (ms.max(0) + 500) / 1000;
    if s >= 86_400 {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
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

pub(crate) fn status_style(s: OrderStatus) -> Style {
    match s {
        OrderStatus::Pending => Style::new().fg(Color::Yellow),
        OrderStatus::Charging => Style::new().fg(Color::Cyan),
        OrderStatus::Completed => Style::new().fg(Color::Green),
        OrderStatus::Failed => Style::new().fg(Color::Red),
        OrderStatus::Cancelled => DIM,
    }
}

pub(crate) fn port_style(s: PortStatus) -> Style {
    match s {
        PortStatus::Offline => DIM,
        PortStatus::Idle => Style::new(),
        PortStatus::Plugged => Style::new().fg(Color::Yellow),
        PortStatus::Charging => Style::new().fg(Color::Cyan),
        PortStatus::Fault => Style::new().fg(Color::Red),
    }
}

/// A table header cell with the sort arrow when it is the sorted column.
pub(crate) fn head(title: &str, sorted: Option<&'static str>, w: u16) -> String {
    match sorted {
        Some(arrow) => fit::ellipsize(&format!("{title}{arrow}"), w as usize),
        None => fit::ellipsize(title, w as usize),
    }
}

/// `1.2 kW` / `180.5 W`.
pub fn watts(w: f64) -> String {
    if w.abs() >= 10_000.0 {
        format!("{:.1} kW", w / 1000.0)
    } else {
        format!("{w:.1} W")
    }
}
