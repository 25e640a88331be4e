//! The orders table and one order: live figures, settlement, and its power and energy charts.

use pile_api::{OrderStatus, OrderView};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState, Tabs};
use ratatui::Frame;

use super::charts;
use super::fit::{self, Col};
use super::{ago, head, loading, status_style, watts, BOLD, DIM, SELECTED};
use crate::app::follow::{self, Stage};
use crate::app::form::fen_to_yuan;
use crate::app::table::{elapsed_sec, OrderCol};
use crate::app::App;

/// In [`OrderCol::ALL`] order.
const COLS: [Col; 10] = [
    Col::new(9, 10, 0),   // status
    Col::flex(12, 26, 0), // order
    Col::new(12, 20, 1),  // device #port
    Col::new(8, 9, 3),    // created
    Col::new(7, 8, 1),    // elapsed
    Col::new(6, 7, 2),    // kWh
    Col::new(6, 7, 2),    // W
    Col::new(6, 7, 3),    // yuan
    Col::new(10, 12, 4),  // mode
    Col::flex(10, 24, 5), // end reason
];

pub fn mode_text(o: &OrderView) -> String {
    match o.charge_mode {
        1 => format!("time {}", ago(o.target_duration * 1000)),
        2 => "energy".into(),
        3 => "amount".into(),
        4 => "until full".into(),
        m => format!("mode {m}"),
    }
}

fn cell(app: &App, o: &OrderView, col: OrderCol) -> (String, Style) {
    let now_s = app.now_s();
    match col {
        OrderCol::Status => (o.status.as_str().into(), status_style(o.status)),
        OrderCol::Order => (o.order_no.clone(), Style::new()),
        OrderCol::Device => (format!("{} #{}", o.device_id, o.port_no), Style::new()),
        OrderCol::Created => (ago((now_s - o.created_at) * 1000), Style::new()),
        OrderCol::Elapsed => (ago(elapsed_sec(o, now_s) * 1000), Style::new()),
        OrderCol::Energy => (format!("{:.3}", o.total_kwh), Style::new()),
        OrderCol::Power => (
            if o.status.is_active() {
                format!("{:.0}", o.current_power)
            } else {
                "—".into()
            },
            Style::new(),
        ),
        OrderCol::Amount => (
            if o.status.is_active() {
                "—".into()
            } else {
                fen_to_yuan(o.final_amount)
            },
            Style::new(),
        ),
        OrderCol::Mode => (mode_text(o), Style::new()),
        OrderCol::Reason => (
            follow::reason(o)
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .to_string(),
            DIM,
        ),
    }
}

pub fn list(app: &App, f: &mut Frame, area: Rect) {
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
    let names: Vec<String> = names
        .into_iter()
        .enumerate()
        .map(|(i, n)| if i == sel { format!("[{n}]") } else { n })
        .collect();
    f.render_widget(
        Tabs::new(names)
            .select(sel)
            .highlight_style(Style::new().bold().reversed()),
        bar,
    );
    let list = app.visible_orders();
    let chosen = fit::choose(&COLS, table_area.width.saturating_sub(2));
    let sort = app.order_sort;
    let header = Row::new(
        chosen
            .iter()
            .map(|(c, w)| {
                let col = OrderCol::ALL[*c];
                let arrow = sort.filter(|s| s.col == col).map(|s| s.arrow());
                Cell::from(head(col.title(), arrow, *w))
            })
            .collect::<Vec<_>>(),
    )
    .style(BOLD);
    let page = table_area.height.saturating_sub(3).max(1) as usize;
    let sel = app.order_sel.min(list.len().saturating_sub(1));
    let first = (sel / page) * page;
    let shown = &list[first.min(list.len())..(first + page).min(list.len())];
    let rows = shown.iter().map(|o| {
        Row::new(
            chosen
                .iter()
                .map(|(c, w)| {
                    let (t, s) = cell(app, o, OrderCol::ALL[*c]);
                    Cell::from(fit::ellipsize(&t, *w as usize)).style(s)
                })
                .collect::<Vec<_>>(),
        )
    });
    let filter = if app.order_filter.is_empty() {
        String::new()
    } else {
        format!(" \"{}\" ·", app.order_filter)
    };
    let sorted = match sort {
        None => " · newest first".to_string(),
        Some(s) if !chosen.iter().any(|(c, _)| OrderCol::ALL[*c] == s.col) => {
            format!(" · sort {}{}", s.col.title(), s.arrow())
        }
        Some(_) => String::new(),
    };
    let title = format!(
        " Orders ·{filter} {} shown of {}{sorted} ",
        list.len(),
        data.orders_total
    );
    let mut state = TableState::default().with_selected((!shown.is_empty()).then_some(sel - first));
    f.render_stateful_widget(
        Table::new(rows, fit::constraints(&chosen))
            .header(header)
            .block(Block::bordered().title(fit::ellipsize(
                &title,
                table_area.width.saturating_sub(2) as usize,
            )))
            .row_highlight_style(SELECTED),
        table_area,
        &mut state,
    );
}

pub fn detail(app: &App, no: &str, f: &mut Frame, area: Rect) {
    let Some(o) = app.live.orders.get(no) else {
        return loading(f, area, &format!(" Order {no} "));
    };
    let samples = app
        .live
        .samples
        .get(no)
        .map(|v| v.as_slice())
        .unwrap_or(&[]);
    let now_s = app.now_s();
    let [info, chart] = Layout::vertical([Constraint::Length(9), Constraint::Min(5)]).areas(area);
    let [left, right] = Layout::horizontal([Constraint::Ratio(1, 2); 2]).areas(info);
    let lw = left.width.saturating_sub(2) as usize;
    let rw = right.width.saturating_sub(2) as usize;
    let kv = |k: &str, v: String, w: usize| fit::kv(k, Span::raw(v), w, DIM);
    let newest = samples.last();
    let elapsed = match o.status {
        OrderStatus::Pending => format!("waiting {}", ago((now_s - o.created_at) * 1000)),
        _ => ago(elapsed_sec(o, now_s) * 1000),
    };
    let energy = match newest {
        Some(s) => format!(
            "{:.3} kWh · {} ago",
            s.energy_wh as f64 / 1000.0,
            ago((now_s - s.at) * 1000)
        ),
        None => format!("{:.3} kWh", o.total_kwh),
    };
    let power = match (newest, o.status.is_active()) {
        (Some(s), true) => format!("{} · peak {}", watts(s.power_w), watts(o.peak_power)),
        (None, true) => "no sample yet".into(),
        (_, false) => format!("peak {}", watts(o.peak_power)),
    };
    let mut lines = vec![
        fit::kv(
            "Status",
            Span::styled(o.status.as_str(), status_style(o.status).bold()),
            lw,
            DIM,
        ),
        kv("Device", format!("{} port {}", o.device_id, o.port_no), lw),
        kv("Mode", mode_text(o), lw),
        kv("Elapsed", elapsed, lw),
        kv("Energy", energy, lw),
        kv("Power", power, lw),
    ];
    if let Some(fl) = app.follow_of(no) {
        let text = fl.text(Some(o), app.now_ms);
        let style = match fl.stage {
            Stage::Done { ok: false, .. } => Style::new().fg(ratatui::style::Color::Red),
            _ => Style::new().fg(ratatui::style::Color::Yellow),
        };
        lines.push(Line::from(Span::styled(fit::ellipsize(&text, lw), style)));
    }
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(format!(" Order {no} "))),
        left,
    );
    let settled = !o.status.is_active();
    let fee = |v: i64| {
        if settled {
            format!("{} yuan", fen_to_yuan(v))
        } else {
            "—".into()
        }
    };
    let reason = follow::reason(o);
    let reason = reason.trim().trim_start_matches('(').trim_end_matches(')');
    let right_lines = vec![
        kv("Limit", format!("{} yuan", fen_to_yuan(o.amount)), rw),
        kv("Energy fee", fee(o.energy_fee), rw),
        kv("Service fee", fee(o.service_fee_amount), rw),
        kv(
            "Final amount",
            if settled {
                fee(o.final_amount)
            } else {
                "not settled".into()
            },
            rw,
        ),
        kv(
            "End reason",
            if reason.is_empty() {
                "—".into()
            } else {
                reason.to_string()
            },
            rw,
        ),
        kv(
            "Replayed",
            if o.offline_replayed {
                "yes (settled offline)".into()
            } else {
                "no".into()
            },
            rw,
        ),
    ];
    f.render_widget(
        Paragraph::new(right_lines).block(Block::bordered().title(" Settlement ")),
        right,
    );
    charts::order_charts(f, chart, Some(o), samples, now_s);
}
