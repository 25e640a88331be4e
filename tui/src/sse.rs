//! A sans-IO parser of server-sent events (the gateway's `/api/v1/events/stream`).
//!
//! Bytes go in as they arrive, in chunks of any size; whole events come out. A line is only
//! looked at once its `\n` arrived, so a chunk that splits a line (or a UTF-8 character) is
//! harmless. Comments (`: keep-alive`) and unknown fields are skipped, as the SSE spec says.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; `None` means the default type, `message`.
    pub event: Option<String>,
    pub id: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(ev) = self.line(&line) {
                out.push(ev);
            }
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            // A blank line dispatches; an event without data is dropped, per the spec.
            let event = self.event.take();
            let id = self.id.take();
            if self.data.is_empty() {
                return None;
            }
            let data = std::mem::take(&mut self.data).join("\n");
            return Some(SseEvent { event, id, data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "id" => self.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_event_split_across_chunks_and_skips_comments() {
        let mut p = SseParser::new();
        assert!(p.push(b": keep-alive\n\nevent: order.cre").is_empty());
        assert!(p.push(b"ated\r\nid: e1\r\ndata: {\"a\":").is_empty());
        let evs = p.push(b"1}\r\n\r\n");
        assert_eq!(
            evs,
            vec![SseEvent {
                event: Some("order.created".into()),
                id: Some("e1".into()),
                data: "{\"a\":1}".into()
            }]
        );
    }

    #[test]
    fn joins_multi_line_data_and_handles_several_events_in_one_chunk() {
        let mut p = SseParser::new();
        let evs = p.push(b"data: a\ndata:b\n\ndata: c\n\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].data, "a\nb");
        assert_eq!(evs[0].event, None);
        assert_eq!(evs[1].data, "c");
    }

    #[test]
    fn a_multibyte_character_split_between_chunks_survives() {
        let mut p = SseParser::new();
        let bytes = "data: 充电\n\n".as_bytes();
        assert!(p.push(&bytes[..8]).is_empty());
        let evs = p.push(&bytes[8..]);
        assert_eq!(evs[0].data, "充电");
    }
}
