//! Making text fit: ellipses instead of cut values, and table columns chosen by priority so a
//! narrow terminal keeps what matters and a wide one adds the rest.

use ratatui::layout::Constraint;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use unicode_width::UnicodeWidthChar;

pub fn width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// `s` cut to `w` columns with a trailing `…` when it does not fit.
pub fn ellipsize(s: &str, w: usize) -> String {
    if width(s) <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let cw = c.width().unwrap_or(0);
        if used + cw + 1 > w {
            break;
        }
        out.push(c);
        used += cw;
    }
    out.push('…');
    out
}

/// `label ……… value`: the value right-aligned and whole (cut only when it alone is too wide),
/// the label shortened with an ellipsis when both do not fit.
pub fn kv<'a>(label: &str, value: impl Into<Span<'a>>, w: usize, label_style: Style) -> Line<'a> {
    let value: Span = value.into();
    let vw = width(&value.content);
    if vw >= w {
        let text = ellipsize(&value.content, w);
        return Line::from(Span::styled(text, value.style));
    }
    let room = w - vw;
    // At least one space between label and value.
    let label = ellipsize(label, room.saturating_sub(1));
    let pad = room - width(&label);
    Line::from(vec![
        Span::styled(label, label_style),
        Span::raw(" ".repeat(pad)),
        value,
    ])
}

/// A line of styled spans cut to `w` columns, with `…` where it was cut.
pub fn line(spans: Vec<Span<'static>>, w: usize) -> Line<'static> {
    let total: usize = spans.iter().map(|s| width(&s.content)).sum();
    if total <= w {
        return Line::from(spans);
    }
    let mut out = Vec::new();
    let mut left = w;
    for s in spans {
        let sw = width(&s.content);
        if sw < left {
            left -= sw;
            out.push(s);
            continue;
        }
        // The span that reaches the edge: cut it, with the ellipsis.
        out.push(Span::styled(
            ellipsize(&format!("{}…", s.content), left),
            s.style,
        ));
        break;
    }
    Line::from(out)
}

/// One column of a table: its preferred and smallest width, and how much it matters
/// (0 = always shown; higher numbers are dropped first when the terminal is narrow).
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub min: u16,
    pub want: u16,
    pub prio: u8,
    /// Takes the width left over.
    pub flex: bool,
}

impl Col {
    pub const fn new(min: u16, want: u16, prio: u8) -> Self {
        Col {
            min,
            want,
            prio,
            flex: false,
        }
    }

    pub const fn flex(min: u16, want: u16, prio: u8) -> Self {
        Col {
            min,
            want,
            prio,
            flex: true,
        }
    }
}

/// Chooses the columns that fit in `avail` (one space between columns) and their widths, in
/// the columns' own order: by priority until one's minimum width does not fit, then widened towards the
/// preferred widths (by priority), then the rest to the flexible columns.
pub fn choose(cols: &[Col], avail: u16) -> Vec<(usize, u16)> {
    let mut order: Vec<usize> = (0..cols.len()).collect();
    order.sort_by_key(|&i| (cols[i].prio, i));
    let mut chosen: Vec<usize> = Vec::new();
    let mut used: u16 = 0;
    for i in order {
        let gap = if chosen.is_empty() { 0 } else { 1 };
        let need = used + gap + cols[i].min;
        if need <= avail {
            chosen.push(i);
            used = need;
        } else if chosen.is_empty() {
            // Not even the first fits: show it cut rather than nothing.
            chosen.push(i);
            used = avail;
        } else {
            // Strictly by priority: a narrow column of less weight never jumps ahead.
            break;
        }
    }
    chosen.sort_unstable();
    let mut widths: Vec<u16> = chosen.iter().map(|&i| cols[i].min.min(avail)).collect();
    let mut spare = avail.saturating_sub(used);
    // Widened in priority order too: what matters most gets its preferred width first.
    let mut by_prio: Vec<usize> = (0..chosen.len()).collect();
    by_prio.sort_by_key(|&k| (cols[chosen[k]].prio, k));
    for k in by_prio {
        let c = &cols[chosen[k]];
        let more = c.want.saturating_sub(c.min).min(spare);
        widths[k] += more;
        spare -= more;
    }
    let flex: Vec<usize> = (0..chosen.len())
        .filter(|&k| cols[chosen[k]].flex)
        .collect();
    if !flex.is_empty() {
        let each = spare / flex.len() as u16;
        let mut rest = spare - each * flex.len() as u16;
        for k in flex {
            widths[k] += each + u16::from(rest > 0);
            rest = rest.saturating_sub(1);
        }
    }
    chosen.into_iter().zip(widths).collect()
}

pub fn constraints(chosen: &[(usize, u16)]) -> Vec<Constraint> {
    chosen.iter().map(|(_, w)| Constraint::Length(*w)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipsize_cuts_with_an_ellipsis_and_keeps_what_fits() {
        assert_eq!(ellipsize("DB pool 1/16", 20), "DB pool 1/16");
        assert_eq!(ellipsize("82210225000520", 8), "8221022…");
        assert_eq!(ellipsize("充电桩", 4), "充…");
        assert_eq!(ellipsize("abc", 0), "");
    }

    #[test]
    fn kv_keeps_the_value_whole_and_shortens_the_label() {
        let line = kv("Push success rate", "99.5 %", 16, Style::new());
        let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
        assert_eq!(text, "Push suc… 99.5 %");
        assert_eq!(width(&text), 16);
        let line = kv("DB pool", "1/16", 20, Style::new());
        let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
        assert_eq!(text, format!("DB pool{}1/16", " ".repeat(9)));
    }

    #[test]
    fn narrow_tables_drop_low_priority_columns_first() {
        let cols = [
            Col::new(14, 18, 0),
            Col::new(6, 6, 1),
            Col::flex(10, 20, 1),
            Col::new(20, 21, 5),
        ];
        let narrow = choose(&cols, 40);
        assert_eq!(
            narrow.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(narrow.iter().map(|c| c.1).sum::<u16>() + 2, 40);
        let wide = choose(&cols, 100);
        assert_eq!(wide.len(), 4);
        assert_eq!(wide.iter().map(|c| c.1).sum::<u16>() + 3, 100);
    }
}
