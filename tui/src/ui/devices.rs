//! The devices table: columns by priority, sortable, paged through the whole fleet.

use pile_api::{DeviceView, PortStatus};
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Cell, Row, Table, TableState};
use ratatui::Frame;

use super::fit::{self, Col};
use super::{ago, head, loading, watts, BOLD, SELECTED};
use crate::app::table::{active_order, total_power, DevCol};
use crate::app::App;

/// Column sizes and priorities, in [`DevCol::ALL`] order.
const COLS: [Col; 10] = [
    Col::new(14, 16, 0),  // ID
    Col::new(6, 6, 1),    // Family
    Col::new(7, 7, 0),    // State
    Col::flex(20, 24, 1), // Ports
    Col::new(9, 9, 2),    // Seen
    Col::new(8, 9, 3),    // Power
    Col::flex(12, 26, 4), // Active order
    Col::new(15, 21, 5),  // Address
    Col::new(6, 6, 6),    // Signal
    Col::new(8, 12, 7),   // Firmware
];

/// `1 charging, 1 idle`: ports by state, the busiest first.
pub fn ports_summary(d: &DeviceView) -> String {
    let order = [
        PortStatus::Charging,
        PortStatus::Fault,
        PortStatus::Plugged,
        PortStatus::Idle,
        PortStatus::Offline,
    ];
    let parts: Vec<String> = order
        .iter()
        .map(|s| (s, d.ports.iter().filter(|p| p.status == *s).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    if parts.is_empty() {
        "no ports".into()
    } else {
        parts.join(", ")
    }
}

fn cell(app: &App, d: &DeviceView, col: DevCol) -> (String, Style) {
    match col {
        DevCol::Id => (d.device_id.clone(), Style::new()),
        DevCol::Family => (d.protocol.clone(), Style::new()),
        DevCol::State => {
            if d.online {
                ("online".into(), Style::new().fg(Color::Green))
            } else {
                ("offline".into(), Style::new().fg(Color::Red))
            }
        }
        DevCol::Ports => {
            let fault = d.ports.iter().any(|p| p.status == PortStatus::Fault);
            (
                ports_summary(d),
                if fault {
                    Style::new().fg(Color::Red)
                } else {
                    Style::new()
                },
            )
        }
        DevCol::LastSeen => (
            d.last_seen_at
                .map(|t| ago(app.now_ms - t * 1000))
                .unwrap_or_else(|| "never".into()),
            Style::new(),
        ),
        DevCol::Power => {
            let w = total_power(d);
            (if w > 0.0 { watts(w) } else { "—".into() }, Style::new())
        }
        DevCol::Order => (active_order(d).unwrap_or("—").to_string(), Style::new()),
        DevCol::Address => (
            d.remote_addr.clone().unwrap_or_else(|| "—".into()),
            Style::new(),
        ),
        DevCol::Signal => (
            d.signal
                .map(|s| s.to_string())
                .unwrap_or_else(|| "—".into()),
            Style::new(),
        ),
        DevCol::Firmware => (
            d.firmware.clone().unwrap_or_else(|| "—".into()),
            Style::new(),
        ),
    }
}

pub fn draw(app: &App, f: &mut Frame, area: Rect) {
    if !app.live.devices_loaded {
        return loading(f, area, " Devices ");
    }
    let list = app.visible_devices();
    let chosen = fit::choose(&COLS, area.width.saturating_sub(2));
    // Rows that fit between the borders and the header: the page shown around the selection.
    let page = area.height.saturating_sub(3).max(1) as usize;
    let sel = app.device_sel.min(list.len().saturating_sub(1));
    let first = (sel / page) * page;
    let shown = &list[first.min(list.len())..(first + page).min(list.len())];
    let sort = app.device_sort;
    let header = Row::new(
        chosen
            .iter()
            .map(|(c, w)| {
                let col = DevCol::ALL[*c];
                Cell::from(head(
                    col.title(),
                    (col == sort.col).then(|| sort.arrow()),
                    *w,
                ))
            })
            .collect::<Vec<_>>(),
    )
    .style(BOLD);
    let rows = shown.iter().map(|d| {
        Row::new(
            chosen
                .iter()
                .map(|(c, w)| {
                    let (text, style) = cell(app, d, DevCol::ALL[*c]);
                    Cell::from(fit::ellipsize(&text, *w as usize)).style(style)
                })
                .collect::<Vec<_>>(),
        )
    });
    let filter = if app.device_filter.is_empty() {
        String::new()
    } else {
        format!(" \"{}\" ·", app.device_filter)
    };
    let range = if list.is_empty() {
        "0".to_string()
    } else {
        format!("{}–{}", first + 1, first + shown.len())
    };
    let sort_hidden = !chosen.iter().any(|(c, _)| DevCol::ALL[*c] == sort.col);
    let title = format!(
        " Devices ·{filter} {range} of {} (fleet {}){} ",
        list.len(),
        app.live.devices_total,
        if sort_hidden {
            format!(" · sort {}{}", sort.col.title(), sort.arrow())
        } else {
            String::new()
        }
    );
    let table = Table::new(rows, fit::constraints(&chosen))
        .header(header)
        .block(Block::bordered().title(fit::ellipsize(
            &title,
            area.width.saturating_sub(2) as usize,
        )))
        .row_highlight_style(SELECTED);
    let mut state = TableState::default().with_selected((!shown.is_empty()).then_some(sel - first));
    f.render_stateful_widget(table, area, &mut state);
}
