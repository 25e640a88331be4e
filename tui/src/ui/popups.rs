//! Pop-ups: help, confirmations, the fault picker and the start form.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

use super::{fit, DIM, SELECTED};
use crate::app::form::{Field, Mode, StartForm};
use crate::app::{App, FAULT_KINDS, FAULT_SECS};

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

pub fn help(app: &App, f: &mut Frame, area: Rect) {
    let mut lines = vec![
        "Tab / Shift-Tab   next / previous view; 1–5 jump",
        "↑ ↓ PgUp PgDn     move the selection (tables page through all rows)",
        "Enter             open the selected device, order or problem",
        "Esc               back",
        "/                 filter (Devices: ID, family, state; Enter keeps)",
        "s / S             Devices, Orders: sort by the next column / reverse",
        "Problems          x stop · r replay · s retry · t test the webhook",
        "Device            s start form · x stop · ←→ ports/frames · h hex",
        "Order             x stop",
        "← →               Orders: status",
        "p / c             Events: pause / resume, clear",
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
    let r = centered(area, 76, h);
    let w = r.width.saturating_sub(2) as usize;
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(
            lines
                .into_iter()
                .map(|l| Line::from(fit::ellipsize(l, w)))
                .collect::<Vec<_>>(),
        )
        .block(
            Block::bordered()
                .title(" Help · Esc closes ")
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        r,
    );
}

pub fn confirm(text: &str, f: &mut Frame, area: Rect) {
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

pub fn fault_picker(device: &str, selected: usize, f: &mut Frame, area: Rect) {
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

fn label(field: Field, mode: Mode) -> &'static str {
    match field {
        Field::Port => "Port",
        Field::Mode => "Mode",
        Field::Target => match mode {
            Mode::Energy => "Energy (Wh)",
            _ => "Duration",
        },
        Field::Amount => "Amount (yuan)",
        Field::Price => "Price /kWh",
        Field::ServiceFee => "Service /kWh",
        Field::OrderNo => "Order no.",
    }
}

fn hint(field: Field, mode: Mode) -> &'static str {
    match field {
        Field::Port => "",
        Field::Mode => "←→ change",
        Field::Target => match mode {
            Mode::Energy => "500 or 1.5kWh",
            _ => "10m, 90s, 1h30m",
        },
        Field::Amount => match mode {
            Mode::Amount => "charged until used up",
            _ => "at most",
        },
        Field::Price | Field::ServiceFee => "yuan, empty: none",
        Field::OrderNo => "optional, your own ID",
    }
}

/// The start form. The focused field is marked `▶` and its value underlined by a cursor, so
/// the form reads without colour; the error line names the field the gateway refused.
pub fn start_form(form: &StartForm, f: &mut Frame, area: Rect) {
    let fields = form.fields();
    let h = fields.len() as u16 + 5;
    let r = centered(area, 66, h);
    f.render_widget(Clear, r);
    let w = r.width.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = Vec::new();
    for field in &fields {
        let focused = *field == form.focus;
        let bad = form.error.as_ref().is_some_and(|e| e.field == Some(*field));
        let value = match field {
            Field::Mode => Mode::ALL
                .iter()
                .map(|m| {
                    if *m == form.mode {
                        format!("[{}]", m.title())
                    } else {
                        m.title().to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            Field::Port => form.port.clone(),
            Field::Target => form.target.clone(),
            Field::Amount => form.amount.clone(),
            Field::Price => form.price.clone(),
            Field::ServiceFee => form.service_fee.clone(),
            Field::OrderNo => form.order_no.clone(),
        };
        let cursor = if focused && *field != Field::Mode && !form.submitting {
            "█"
        } else {
            ""
        };
        let mark = match (focused, bad) {
            (_, true) => "!",
            (true, false) => "▶",
            _ => " ",
        };
        let label_style = if bad {
            Style::new().fg(Color::Red).bold()
        } else if focused {
            Style::new().bold()
        } else {
            DIM
        };
        let head = format!("{mark} {:<14}", label(*field, form.mode));
        let hint_text = hint(*field, form.mode);
        let body = format!("{value}{cursor}");
        let room = w.saturating_sub(fit::width(&head));
        let mut spans = vec![
            Span::styled(head, label_style),
            Span::raw(fit::ellipsize(&body, room)),
        ];
        let used = fit::width(&body) + 2;
        if !hint_text.is_empty() && used + fit::width(hint_text) <= room {
            spans.push(Span::styled(format!("  {hint_text}"), DIM));
        }
        lines.push(Line::from(spans));
    }
    lines.push(Line::from(""));
    match (&form.error, form.submitting) {
        (_, true) => lines.push(Line::from(Span::styled(
            "submitting… (Esc closes; the outcome shows in the status line)",
            Style::new().fg(Color::Yellow),
        ))),
        (Some(e), false) => {
            let line = fit::ellipsize(&e.message, w);
            lines.push(Line::from(Span::styled(line, Style::new().fg(Color::Red))));
        }
        (None, false) => lines.push(Line::from(Span::styled(
            "the gateway checks the values; its answer shows here",
            DIM,
        ))),
    }
    lines.push(Line::from(Span::styled(
        fit::ellipsize("↑↓ field · type to edit · Enter start · Esc cancel", w),
        Style::new().bold(),
    )));
    f.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(format!(" Start charging {} ", form.device))
                .border_style(Style::new().fg(Color::Yellow)),
        ),
        r,
    );
}
