//! The live event stream, newest first, with the selected event's data.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

use super::{ago, fit, DIM, SELECTED};
use crate::app::{App, StreamState};

pub fn draw(app: &App, f: &mut Frame, area: Rect) {
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
            Style::new()
                .fg(Color::Yellow)
                .add_modifier(ratatui::style::Modifier::BOLD),
        ));
    }
    if !app.event_filter.is_empty() {
        title.push(Span::raw(format!(" · filter \"{}\"", app.event_filter)));
    }
    title.push(Span::raw(" "));
    let w = top.width.saturating_sub(2) as usize;
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
            let head = format!("{t:>6} ago  ");
            let kind = format!("{:<20}", e.event_type);
            let rest = format!(
                " {}{}",
                e.device_phy_id,
                e.order_no
                    .as_deref()
                    .map(|o| format!("  {o}"))
                    .unwrap_or_default()
            );
            let room = w.saturating_sub(head.len() + fit::width(&kind));
            ListItem::new(Line::from(vec![
                Span::styled(head, DIM),
                Span::styled(fit::ellipsize(&kind, w.saturating_sub(12)), style),
                Span::raw(fit::ellipsize(&rest, room)),
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
