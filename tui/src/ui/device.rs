//! One device: its ports with live figures, the selected port's power and energy chart, and
//! a scrollable list of recent frames with a hex toggle.

use pile_api::{Direction, FrameRecord, OrderStatus, OrderView, PortView, ProgressSample};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Cell, List, ListItem, ListState, Paragraph, Row, Table, TableState, Wrap,
};
use ratatui::Frame;

use super::charts;
use super::fit::{self, Col};
use super::{ago, loading, port_style, status_style, watts, BOLD, DIM, SELECTED};
use crate::app::table::elapsed_sec;
use crate::app::{App, Pane};

/// Ports table columns: marker+port, state, elapsed/limit, power, sample age, energy, order.
const PORT_COLS: [Col; 7] = [
    Col::new(6, 7, 0),   // port
    Col::new(8, 8, 0),   // state
    Col::new(9, 15, 0),  // elapsed / target
    Col::new(8, 9, 0),   // power
    Col::new(6, 9, 1),   // sample age
    Col::new(9, 10, 1),  // energy
    Col::flex(8, 28, 2), // order
];
const PORT_TITLES: [&str; 7] = [
    "Port", "State", "Elapsed", "Power", "Sample", "Energy", "Order",
];

/// What a port shows: elapsed from `started_at` and the clock, power and energy from the
/// newest sample with its age.
pub struct PortFigures {
    pub elapsed: String,
    pub power: String,
    pub sample_age: String,
    pub energy: String,
}

pub fn port_figures(
    p: &PortView,
    order: Option<&OrderView>,
    samples: &[ProgressSample],
    now_s: i64,
) -> PortFigures {
    let newest = samples.last();
    let elapsed = match order {
        None => "—".into(),
        Some(o) if o.status == OrderStatus::Pending => {
            format!("waiting {}", ago((now_s - o.created_at) * 1000))
        }
        Some(o) => {
            let e = ago(elapsed_sec(o, now_s) * 1000);
            if o.charge_mode == pile_api::charge_mode::BY_TIME && o.target_duration > 0 {
                format!("{e}/{}", ago(o.target_duration * 1000))
            } else {
                e
            }
        }
    };
    let (power, energy) = match (newest, order) {
        (Some(s), _) => (
            watts(s.power_w),
            format!("{:.3} kWh", s.energy_wh as f64 / 1000.0),
        ),
        (None, Some(o)) if o.total_kwh > 0.0 || o.current_power > 0.0 => {
            (watts(o.current_power), format!("{:.3} kWh", o.total_kwh))
        }
        (None, Some(_)) => ("—".into(), "—".into()),
        (None, None) if p.power_w > 0.0 => (watts(p.power_w), "—".into()),
        (None, None) => ("—".into(), "—".into()),
    };
    let sample_age = match (newest, order) {
        (Some(s), _) => format!("{} ago", ago((now_s - s.at) * 1000)),
        (None, Some(o)) if o.status.is_active() => "no sample".into(),
        _ => "—".into(),
    };
    PortFigures {
        elapsed,
        power,
        sample_age,
        energy,
    }
}

pub fn draw(app: &App, id: &str, f: &mut Frame, area: Rect) {
    let Some(dev) = app.open_device() else {
        return loading(f, area, &format!(" Device {id} "));
    };
    let extra = app.device_extra.as_ref().filter(|x| x.device_id == id);
    let sim = extra.and_then(|x| x.sim.as_deref());
    let ports_h = (dev.ports.len() as u16).min(8) + 3;
    let [info, ports, lower] = Layout::vertical([
        Constraint::Length(if sim.is_some() { 4 } else { 3 }),
        Constraint::Length(ports_h),
        Constraint::Min(4),
    ])
    .areas(area);
    let inner_w = info.width.saturating_sub(2) as usize;
    let online = if dev.online {
        Span::styled("online", Style::new().fg(Color::Green))
    } else {
        Span::styled("offline", Style::new().fg(Color::Red))
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
    let rest = format!(
        " · {} · seen {} · up {} · addr {} · fw {} · signal {}",
        dev.protocol,
        dev.last_seen_at
            .map(|t| format!("{} ago", ago(app.now_ms - t * 1000)))
            .unwrap_or_else(|| "never".into()),
        dev.connected_at
            .filter(|_| dev.online)
            .map(|t| ago(app.now_ms - t * 1000))
            .unwrap_or_else(|| "—".into()),
        opt(&dev.remote_addr),
        opt(&dev.firmware),
        dev.signal
            .map(|s| s.to_string())
            .unwrap_or_else(|| "—".into()),
    );
    let mut lines = vec![Line::from(vec![
        online.clone(),
        Span::raw(fit::ellipsize(&rest, inner_w.saturating_sub(7))),
    ])];
    if let Some(s) = sim {
        lines.push(Line::from(Span::styled(
            fit::ellipsize(&format!("simulator: {s}"), inner_w),
            Style::new().fg(Color::Magenta),
        )));
    }
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(format!(" Device {id} "))),
        info,
    );

    // Ports.
    let now_s = app.now_s();
    let chosen = fit::choose(&PORT_COLS, ports.width.saturating_sub(2));
    let header = Row::new(
        chosen
            .iter()
            .map(|(c, w)| Cell::from(fit::ellipsize(PORT_TITLES[*c], *w as usize)))
            .collect::<Vec<_>>(),
    )
    .style(BOLD);
    let empty: Vec<ProgressSample> = Vec::new();
    let rows = dev.ports.iter().enumerate().map(|(i, p)| {
        let order = p.order_no.as_deref().and_then(|no| app.live.orders.get(no));
        let samples = p
            .order_no
            .as_deref()
            .and_then(|no| app.live.samples.get(no))
            .unwrap_or(&empty);
        let fig = port_figures(p, order, samples, now_s);
        let mark = if i == app.port_sel { "▶" } else { " " };
        let hole = match (p.socket_no, p.hole) {
            (Some(s), Some(h)) => format!(" {s}{}", if h == 0 { "A" } else { "B" }),
            _ => String::new(),
        };
        let order_text = match (&p.order_no, order) {
            (Some(no), Some(o)) => format!("{no} ({})", o.status),
            (Some(no), None) => no.clone(),
            (None, _) => "—".into(),
        };
        let order_style = order.map(|o| status_style(o.status)).unwrap_or_default();
        let cells: [(String, Style); 7] = [
            (format!("{mark}{}{hole}", p.port_no), Style::new()),
            (p.status.as_str().to_string(), port_style(p.status)),
            (fig.elapsed, Style::new()),
            (fig.power, Style::new()),
            (fig.sample_age, DIM),
            (fig.energy, Style::new()),
            (order_text, order_style),
        ];
        Row::new(
            chosen
                .iter()
                .map(|(c, w)| {
                    let (t, s) = &cells[*c];
                    Cell::from(fit::ellipsize(t, *w as usize)).style(*s)
                })
                .collect::<Vec<_>>(),
        )
    });
    let focused = app.pane == Pane::Ports;
    let block = pane_block(" Ports ", focused);
    let mut state = TableState::default()
        .with_selected((!dev.ports.is_empty() && focused).then_some(app.port_sel));
    f.render_stateful_widget(
        Table::new(rows, fit::constraints(&chosen))
            .header(header)
            .block(block)
            .row_highlight_style(SELECTED),
        ports,
        &mut state,
    );

    // The selected port's chart beside (or above) the frames.
    let [chart_area, frames_area] = if lower.width >= 140 {
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(lower)
    } else {
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(lower)
    };
    let port = dev.ports.get(app.port_sel);
    let order_no = port.and_then(|p| p.order_no.as_deref());
    let order = order_no.and_then(|no| app.live.orders.get(no));
    let samples = order_no
        .and_then(|no| app.live.samples.get(no))
        .map(|v| v.as_slice())
        .unwrap_or(&[]);
    match (port, order_no) {
        (Some(_), Some(_)) => charts::order_charts(f, chart_area, order, samples, now_s),
        (Some(p), None) => f.render_widget(
            Paragraph::new(format!(
                "port {}: no order running · s starts one",
                p.port_no
            ))
            .style(DIM)
            .block(Block::bordered().title(" Power / energy ")),
            chart_area,
        ),
        _ => {}
    }
    frames(app, &app.frames(), f, frames_area);
}

fn pane_block(title: &str, focused: bool) -> Block<'static> {
    // The focused pane says so in its title, not only by colour.
    if focused {
        Block::bordered()
            .title(format!("▶{title}"))
            .border_style(Style::new().fg(Color::Cyan))
    } else {
        Block::bordered().title(title.to_string())
    }
}

fn frames(app: &App, list: &[&FrameRecord], f: &mut Frame, area: Rect) {
    let focused = app.pane == Pane::Frames;
    let title = format!(
        " Frames ({}){} · h hex {} ",
        list.len(),
        if focused { "" } else { " · → to scroll" },
        if app.show_hex { "on" } else { "off" }
    );
    let block = pane_block(&title, focused);
    if list.is_empty() {
        f.render_widget(
            Paragraph::new("no frames recorded").style(DIM).block(block),
            area,
        );
        return;
    }
    let inner = block.inner(area);
    // With hex on and the pane focused, the selected frame's whole hex below the list.
    let detail_h = if app.show_hex && focused && inner.height >= 6 {
        3
    } else {
        0
    };
    let [list_area, detail_area] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(detail_h)]).areas(inner);
    f.render_widget(block, area);
    let w = list_area.width as usize;
    let items: Vec<ListItem> = list
        .iter()
        .map(|fr| {
            let (arrow, style) = match fr.direction {
                Direction::Up => ("↑", Style::new().fg(Color::Green)),
                Direction::Down => ("↓", Style::new().fg(Color::Yellow)),
            };
            let t = ago(app.now_ms - fr.at_ms);
            let head = format!("{arrow} {t:>6} ");
            let mut lines = vec![Line::from(vec![
                Span::styled(head.clone(), style),
                Span::raw(fit::ellipsize(
                    &fr.summary,
                    w.saturating_sub(head.chars().count()),
                )),
            ])];
            if app.show_hex {
                lines.push(Line::from(Span::styled(
                    fit::ellipsize(&format!("         {}", fr.hex), w),
                    DIM,
                )));
            }
            ListItem::new(lines)
        })
        .collect();
    let sel = app.frame_sel.min(list.len() - 1);
    let mut state = ListState::default().with_selected(focused.then_some(sel));
    f.render_stateful_widget(
        List::new(items).highlight_style(SELECTED),
        list_area,
        &mut state,
    );
    if detail_h > 0 {
        let fr = list[sel];
        f.render_widget(
            Paragraph::new(fr.hex.clone())
                .wrap(Wrap { trim: false })
                .block(
                    Block::new()
                        .borders(ratatui::widgets::Borders::TOP)
                        .title(" hex "),
                ),
            detail_area,
        );
    }
}
