//! The live view of `pile-load http` when stdout is a terminal (like oha's): progress, req/s
//! and latency sparklines, a latency histogram, status codes and error kinds as they arrive.
//! [`LiveView`] is pure state fed with [`Progress`] snapshots and drawn by [`LiveView::render`]
//! (tested on ratatui's `TestBackend`); [`Tui`] owns the terminal.

use std::io::{self, Stdout};
use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Bar, BarChart, BarGroup, Block, Borders, Gauge, Paragraph, Sparkline};
use ratatui::{Frame, Terminal};

use crate::http::{live_bucket_floor_us, Progress, LIVE_BUCKETS};

/// Samples kept for the sparklines (one per snapshot, ~10 per second).
const HISTORY: usize = 600;

/// What the view shows, updated from consecutive snapshots.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub title: String,
    last: Option<Progress>,
    /// Requests completed per second, per snapshot interval.
    pub rate_history: Vec<u64>,
    /// Mean latency (µs) of the requests answered in each interval.
    pub latency_history: Vec<u64>,
}

fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

/// The bucket floor under which `q` of the answered requests fall (an estimate for the view;
/// the report's percentiles come from the full histograms).
pub fn bucket_quantile(buckets: &[u64; LIVE_BUCKETS], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some(live_bucket_floor_us(i + 1).min(live_bucket_floor_us(LIVE_BUCKETS - 1)));
        }
    }
    None
}

impl LiveView {
    pub fn new(title: impl Into<String>) -> Self {
        LiveView {
            title: title.into(),
            last: None,
            rate_history: Vec::new(),
            latency_history: Vec::new(),
        }
    }

    pub fn update(&mut self, p: &Progress) {
        if let Some(last) = &self.last {
            let dt = p.elapsed.saturating_sub(last.elapsed).as_secs_f64();
            let done = p.completed.saturating_sub(last.completed);
            if dt > 0.0 {
                self.rate_history.push((done as f64 / dt).round() as u64);
            }
            let answered = p.answered.saturating_sub(last.answered);
            let sum = p.latency_sum_us.saturating_sub(last.latency_sum_us);
            self.latency_history
                .push(sum.checked_div(answered).unwrap_or(0));
            for h in [&mut self.rate_history, &mut self.latency_history] {
                if h.len() > HISTORY {
                    h.drain(..h.len() - HISTORY);
                }
            }
        }
        self.last = Some(p.clone());
    }

    /// The request rate over about the last second.
    pub fn current_rate(&self) -> u64 {
        let tail = &self.rate_history[self.rate_history.len().saturating_sub(10)..];
        if tail.is_empty() {
            0
        } else {
            tail.iter().sum::<u64>() / tail.len() as u64
        }
    }

    pub fn render(&self, f: &mut Frame) {
        let Some(p) = &self.last else { return };
        let area = f.area();
        let rows = Layout::default()
            .direction(Direction::Vertical)
            .constraints([
                Constraint::Length(3),
                Constraint::Length(9),
                Constraint::Length(5),
                Constraint::Length(5),
                Constraint::Min(6),
            ])
            .split(area);

        let (ratio, label) = match (p.requests, p.duration) {
            (Some(n), _) if n > 0 => (
                p.completed as f64 / n as f64,
                format!("{}/{} requests", p.completed, n),
            ),
            (_, Some(d)) if !d.is_zero() => (
                p.elapsed.as_secs_f64() / d.as_secs_f64(),
                format!("{:.1}/{:.1} s", p.elapsed.as_secs_f64(), d.as_secs_f64()),
            ),
            _ => (0.0, format!("{} requests", p.completed)),
        };
        f.render_widget(
            Gauge::default()
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!(" {} — q to stop ", self.title)),
                )
                .gauge_style(Style::default().fg(Color::Cyan))
                .ratio(ratio.clamp(0.0, 1.0))
                .label(label),
            rows[0],
        );

        let cols = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
            .split(rows[1]);
        let q = |x| bucket_quantile(&p.latency_buckets, x).map_or("-".to_string(), fmt_us);
        let mean = p
            .latency_sum_us
            .checked_div(p.answered)
            .map_or("-".to_string(), fmt_us);
        let stats = vec![
            Line::from(format!("req/s (last 1 s): {}", self.current_rate())),
            Line::from(format!(
                "done: {}   answered: {}   2xx: {}",
                p.completed, p.answered, p.success
            )),
            Line::from(format!("elapsed: {:.1} s", p.elapsed.as_secs_f64())),
            Line::from(format!("latency mean: {mean}   p50 < {}", q(0.5))),
            Line::from(format!("p90 < {}   p99 < {}", q(0.9), q(0.99))),
            Line::from(format!(
                "errors: connect {}  timeout {}  reset {}  other {}",
                p.errors.connect, p.errors.timeout, p.errors.reset, p.errors.other
            )),
        ];
        f.render_widget(
            Paragraph::new(stats).block(Block::default().borders(Borders::ALL).title(" Stats ")),
            cols[0],
        );
        let mut codes: Vec<Line> = p
            .status_codes
            .iter()
            .map(|(code, n)| {
                let color = if (200..300).contains(code) {
                    Color::Green
                } else {
                    Color::Red
                };
                Line::styled(format!("{code}: {n}"), Style::default().fg(color))
            })
            .collect();
        if codes.is_empty() {
            codes.push(Line::from("(no responses yet)"));
        }
        f.render_widget(
            Paragraph::new(codes).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" Status codes "),
            ),
            cols[1],
        );

        let spark = |data: &[u64], title: String, area: Rect, f: &mut Frame| {
            let width = area.width.saturating_sub(2) as usize;
            let tail = &data[data.len().saturating_sub(width)..];
            f.render_widget(
                Sparkline::default()
                    .block(Block::default().borders(Borders::ALL).title(title))
                    .data(tail)
                    .style(Style::default().fg(Color::Yellow)),
                area,
            );
        };
        spark(
            &self.rate_history,
            format!(" req/s: {} ", self.current_rate()),
            rows[2],
            f,
        );
        let last_latency = self.latency_history.last().copied().unwrap_or(0);
        spark(
            &self.latency_history,
            format!(" mean latency per interval: {} ", fmt_us(last_latency)),
            rows[3],
            f,
        );

        // The histogram over the occupied range of buckets.
        let first = p.latency_buckets.iter().position(|&n| n > 0);
        let last = p.latency_buckets.iter().rposition(|&n| n > 0);
        let bars: Vec<Bar> = match (first, last) {
            (Some(a), Some(b)) => (a..=b)
                .map(|i| {
                    Bar::default()
                        .value(p.latency_buckets[i])
                        .label(Line::from(fmt_us(live_bucket_floor_us(i))))
                })
                .collect(),
            _ => Vec::new(),
        };
        f.render_widget(
            BarChart::default()
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" Latency histogram (answered requests, bucket floor) "),
                )
                .bar_width(7)
                .bar_gap(1)
                .data(BarGroup::default().bars(&bars)),
            rows[4],
        );
    }
}

/// The terminal in raw mode on the alternate screen; restored on drop.
pub struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Tui {
    pub fn enter() -> io::Result<Tui> {
        enable_raw_mode()?;
        let mut stdout = io::stdout();
        if let Err(e) = execute!(stdout, EnterAlternateScreen) {
            let _ = disable_raw_mode();
            return Err(e);
        }
        let terminal = Terminal::new(CrosstermBackend::new(stdout))?;
        Ok(Tui { terminal })
    }

    pub fn draw(&mut self, view: &LiveView) {
        let _ = self.terminal.draw(|f| view.render(f));
    }

    /// Whether the user asked to stop (q, Esc or Ctrl-C); never blocks.
    pub fn quit_requested(&mut self) -> bool {
        while event::poll(Duration::ZERO).unwrap_or(false) {
            if let Ok(Event::Key(k)) = event::read() {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers == KeyModifiers::CONTROL;
                if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                    return true;
                }
            }
        }
        false
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(self.terminal.backend_mut(), LeaveAlternateScreen);
        let _ = self.terminal.show_cursor();
    }
}

/// The one-line fallback when the live view is off: `done/total  req/s  errors  p50`.
pub fn progress_line(view: &LiveView, p: &Progress) -> String {
    let total = p.requests.map_or(String::new(), |n| format!("/{n}"));
    let p50 = bucket_quantile(&p.latency_buckets, 0.5).map_or("-".to_string(), fmt_us);
    let failed = p.completed - p.success;
    format!(
        "{:>6.1} s  {}{total} requests  {} req/s  {failed} failed ({} transport)  p50 < {p50}",
        p.elapsed.as_secs_f64(),
        p.completed,
        view.current_rate(),
        p.errors.total()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ErrorCounts;
    use ratatui::backend::TestBackend;
    use std::collections::BTreeMap;

    fn snapshot(ms: u64, completed: u64, answered: u64) -> Progress {
        let mut buckets = [0; LIVE_BUCKETS];
        buckets[20] = answered;
        Progress {
            completed,
            requests: Some(1000),
            elapsed: Duration::from_millis(ms),
            duration: None,
            answered,
            success: answered.saturating_sub(1),
            errors: ErrorCounts {
                connect: completed - answered,
                ..ErrorCounts::default()
            },
            status_codes: BTreeMap::from([(200, answered.saturating_sub(1)), (503, 1)]),
            latency_sum_us: answered * 1500,
            latency_buckets: buckets,
        }
    }

    #[test]
    fn rates_come_from_consecutive_snapshots() {
        let mut v = LiveView::new("GET http://x/");
        v.update(&snapshot(0, 0, 0));
        v.update(&snapshot(100, 50, 48));
        v.update(&snapshot(200, 150, 147));
        assert_eq!(v.rate_history, vec![500, 1000]);
        assert_eq!(v.latency_history, vec![1500, 1500]);
        assert_eq!(v.current_rate(), 750);
    }

    #[test]
    fn the_view_shows_rate_codes_errors_and_histogram() {
        let mut v = LiveView::new("GET http://x/");
        v.update(&snapshot(0, 0, 0));
        v.update(&snapshot(100, 100, 97));
        let mut t = Terminal::new(TestBackend::new(100, 40)).unwrap();
        t.draw(|f| v.render(f)).unwrap();
        let screen: String = t
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        for want in [
            "100/1000 requests",
            "req/s",
            "200: 96",
            "503: 1",
            "connect 3",
            "Latency histogram",
        ] {
            assert!(screen.contains(want), "missing {want:?}");
        }
        let line = progress_line(&v, &snapshot(100, 100, 97));
        assert!(line.contains("100/1000 requests"), "{line}");
        assert!(line.contains("4 failed (3 transport)"), "{line}");
    }
}
