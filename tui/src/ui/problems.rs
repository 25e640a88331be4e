//! The problems view: worst first, each row with the key that fixes it.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use super::fit::{self, Col};
use super::{loading, BOLD, DIM, SELECTED};
use crate::app::App;

const COLS: [Col; 4] = [
    Col::new(11, 11, 0),  // kind
    Col::new(14, 18, 0),  // subject
    Col::new(10, 13, 0),  // fix
    Col::flex(20, 60, 0), // detail
];
const TITLES: [&str; 4] = ["Problem", "Device/order", "Fix", "What"];

pub fn draw(app: &App, f: &mut Frame, area: Rect) {
    if app.data.is_none() {
        return loading(f, area, " Problems ");
    }
    let list = app.problems();
    let checked = match &app.problem_data {
        Some(_) => String::new(),
        None => " · consistency and dead letters not checked yet".into(),
    };
    let title = format!(" Problems · {}{checked} ", list.len());
    let block = Block::bordered().title(fit::ellipsize(
        &title,
        area.width.saturating_sub(2) as usize,
    ));
    if list.is_empty() {
        f.render_widget(
            Paragraph::new(
                "No problems: every pile online, no faulted port, no stuck order, no dead letter.",
            )
            .style(DIM)
            .block(block),
            area,
        );
        return;
    }
    let chosen = fit::choose(&COLS, area.width.saturating_sub(2));
    let header = Row::new(
        chosen
            .iter()
            .map(|(c, w)| Cell::from(fit::ellipsize(TITLES[*c], *w as usize)))
            .collect::<Vec<_>>(),
    )
    .style(BOLD);
    let page = area.height.saturating_sub(3).max(1) as usize;
    let sel = app.problem_sel.min(list.len() - 1);
    let first = (sel / page) * page;
    let shown = &list[first..(first + page).min(list.len())];
    let rows = shown.iter().map(|p| {
        let severe = matches!(p.kind, "webhook" | "stuck" | "fault" | "dead letter");
        let kind_style = if severe {
            Style::new().fg(Color::Red)
        } else {
            Style::new().fg(Color::Yellow)
        };
        let cells = [
            (p.kind.to_string(), kind_style),
            (p.subject.clone(), Style::new()),
            (p.fix.title().to_string(), Style::new().fg(Color::Cyan)),
            (p.detail.clone(), Style::new()),
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
    let mut state = TableState::default().with_selected(Some(sel - first));
    f.render_stateful_widget(
        Table::new(rows, fit::constraints(&chosen))
            .header(header)
            .block(block)
            .row_highlight_style(SELECTED),
        area,
        &mut state,
    );
}
