//! Server-sent events, parsed incrementally: bytes in (split anywhere), whole events out.

/// The largest event kept; a longer one is dropped whole (and counted).
const MAX_EVENT: usize = 16 << 20;

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: Vec<u8>,
    has_data: bool,
    oversized: bool,
    /// Events dropped for size.
    pub dropped: u64,
}

/// One event: its `event:` name (if any) and its `data:` lines joined by newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(nl);
            rest = tail.get(1..).unwrap_or_default();
            if self.line.is_empty() {
                self.line_done(head, out);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                self.line_done(&line, out);
                line.clear();
                self.line = line;
            }
        }
        if self.line.len() + rest.len() > MAX_EVENT {
            self.oversized = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(rest);
        }
    }

    /// The stream closed: an event not ended by a blank line still counts.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
        }
        self.dispatch(out);
    }

    fn line_done(&mut self, raw: &[u8], out: &mut Vec<SseEvent>) {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = line.get(i + 1..).unwrap_or_default();
                (
                    line.get(..i).unwrap_or_default(),
                    v.strip_prefix(b" ").unwrap_or(v),
                )
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"data" => {
                if self.data.len() + value.len() > MAX_EVENT {
                    self.oversized = true;
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        let data = std::mem::take(&mut self.data);
        let had = std::mem::replace(&mut self.has_data, false);
        if std::mem::replace(&mut self.oversized, false) {
            self.dropped += 1;
            return;
        }
        if had {
            out.push(SseEvent {
                event,
                data: String::from_utf8_lossy(&data).into_owned(),
            });
        }
    }
}

/// A dialect whose stream is SSE, read one event at a time.
pub trait SseHandler: Send {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<super::Event>);
    /// The upstream closed: a stream whose answer finished without its end marker is complete.
    fn close(&mut self, out: &mut Vec<super::Event>);
}

/// A [`super::StreamDecoder`] for an SSE dialect: the parser in front of its handler.
pub struct SseDecoder<H> {
    parser: SseParser,
    scratch: Vec<SseEvent>,
    handler: H,
}

impl<H> SseDecoder<H> {
    pub fn new(handler: H) -> Self {
        SseDecoder {
            parser: SseParser::default(),
            scratch: Vec::new(),
            handler,
        }
    }
}

impl<H: SseHandler> super::StreamDecoder for SseDecoder<H> {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<super::Event>) {
        let mut events = std::mem::take(&mut self.scratch);
        self.parser.feed(bytes, &mut events);
        for ev in events.drain(..) {
            self.handler.event(&ev, out);
        }
        self.scratch = events;
    }

    fn finish(&mut self, out: &mut Vec<super::Event>) {
        let mut events = std::mem::take(&mut self.scratch);
        self.parser.finish(&mut events);
        for ev in events.drain(..) {
            self.handler.event(&ev, out);
        }
        self.handler.close(out);
    }
}

/// Writes one SSE event.
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(e) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere() {
        let input =
            b"event: a\r\ndata: {\"x\":1}\r\n\r\n: comment\n\ndata: one\ndata: two\n\ndata: tail";
        for split in 0..input.len() {
            let mut p = SseParser::default();
            let mut out = Vec::new();
            let (a, b) = input.split_at(split);
            p.feed(a, &mut out);
            p.feed(b, &mut out);
            p.finish(&mut out);
            assert_eq!(
                out,
                vec![
                    SseEvent {
                        event: Some("a".into()),
                        data: "{\"x\":1}".into()
                    },
                    SseEvent {
                        event: None,
                        data: "one\ntwo".into()
                    },
                    SseEvent {
                        event: None,
                        data: "tail".into()
                    },
                ],
                "split at {split}"
            );
        }
    }
}
