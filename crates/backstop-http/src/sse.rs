//! Server-sent events framing, without I/O.
//!
//! The decoder turns bytes, in whatever pieces the transport delivers them,
//! into events, following the WHATWG rules that matter for LLM APIs: lines
//! end in `\n`, `\r\n` or `\r`; `data:` lines of one event are joined with
//! `\n`; `event:` names it; lines starting with `:` are comments; a blank
//! line dispatches. An event cut off by the end of the stream is never
//! dispatched; [`SseDecoder::has_partial_event`] tells that it happened.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, when present.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental SSE decoder.
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    /// The previous byte was `\r`: a following `\n` belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// Lines of the current event seen (fields or comments).
    pending: bool,
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes and appends every event they complete to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.after_cr && rest[0] == b'\n' {
                // The `\n` of a `\r\n` whose `\r` ended the line.
                rest = &rest[1..];
                self.after_cr = false;
                continue;
            }
            self.after_cr = false;
            match memchr::memchr2(b'\n', b'\r', rest) {
                Some(end) => {
                    self.after_cr = rest[end] == b'\r';
                    if self.line.is_empty() {
                        // A whole line in this piece: read in place.
                        self.end_line(&rest[..end], out);
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(&rest[..end]);
                        self.end_line(&line, out);
                        line.clear();
                        self.line = line;
                    }
                    rest = &rest[end + 1..];
                }
                None => {
                    self.line.extend_from_slice(rest);
                    return;
                }
            }
        }
    }

    /// Whether the stream so far ends inside an event that was never
    /// dispatched (a cut stream).
    pub fn has_partial_event(&self) -> bool {
        !self.line.is_empty() || self.pending
    }

    fn end_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        self.pending = true;
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                push_text(&mut self.data, value);
                self.has_data = true;
            }
            b"event" => {
                let mut name = String::new();
                push_text(&mut name, value);
                self.event = Some(name);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        self.pending = false;
        if !self.has_data {
            self.event = None;
            return;
        }
        out.push(SseEvent {
            event: self.event.take(),
            data: std::mem::take(&mut self.data),
        });
        self.has_data = false;
    }
}

/// Appends `bytes` as text, invalid UTF-8 replaced by U+FFFD (checked by
/// the fast validator first: nearly every line is valid).
fn push_text(into: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => into.push_str(text),
        Err(_) => into.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Appends one `data:` event (JSON or `[DONE]`) to `out`.
pub fn write_data(out: &mut Vec<u8>, data: &str) {
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Appends one named event to `out`.
pub fn write_event(out: &mut Vec<u8>, event: &str, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    write_data(out, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> (Vec<SseEvent>, bool) {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            d.feed(chunk, &mut out);
        }
        (out, d.has_partial_event())
    }

    #[test]
    fn events_survive_any_split_and_any_line_ending() {
        let input = b": keep-alive\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: x\rdata: y\r\rdata: [DONE]\n\n";
        for piece in 1..input.len() {
            let (events, partial) = decode_in_pieces(input, piece);
            assert!(!partial);
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        event: Some("message_start".into()),
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        event: None,
                        data: "x\ny".into()
                    },
                    SseEvent {
                        event: None,
                        data: "[DONE]".into()
                    },
                ],
                "split every {piece} bytes"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_and_a_line_may_span_pieces() {
        let input = b"data: a\xffb\n\ndata: long line\r\n\r\n";
        for piece in 1..input.len() {
            let (events, partial) = decode_in_pieces(input, piece);
            assert!(!partial);
            let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(
                data,
                ["a\u{fffd}b", "long line"],
                "split every {piece} bytes"
            );
        }
    }

    #[test]
    fn an_event_cut_by_the_end_is_not_dispatched() {
        let (events, partial) = decode_in_pieces(b"data: one\n\ndata: tw", 4);
        assert_eq!(events.len(), 1);
        assert!(partial);
        let (_, partial) = decode_in_pieces(b"data: one\n\ndata: two\n", 4);
        assert!(
            partial,
            "a data line without its blank line is still partial"
        );
    }

    #[test]
    fn writer_round_trips() {
        let mut buf = Vec::new();
        write_event(&mut buf, "ping", "{}");
        write_data(&mut buf, "multi\nline");
        let (events, partial) = decode_in_pieces(&buf, 3);
        assert!(!partial);
        assert_eq!(events[0].event.as_deref(), Some("ping"));
        assert_eq!(events[1].data, "multi\nline");
    }
}
