//! Server-sent events in both directions: an incremental parser for upstream streams and the
//! encoder for the streams the gateway sends its clients.

use bytes::{Bytes, BytesMut};

/// One event as the SSE spec defines it (comments and unknown fields dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Feeds on arbitrary chunks; yields each complete event once its blank line arrives.
#[derive(Default)]
pub struct Parser {
    buf: BytesMut,
    current: Event,
    has_data: bool,
    /// The most bytes an unfinished line may take; a larger one is a broken or hostile peer.
    limit: usize,
    /// The last event id the stream set (also by events without data, like a priming event).
    pub last_id: Option<String>,
    /// The reconnection delay the server asked for, in milliseconds.
    pub retry: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge;

impl Parser {
    pub fn new(limit: usize) -> Parser {
        Parser {
            limit,
            ..Parser::default()
        }
    }

    /// Appends a chunk and returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, TooLarge> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A CR at the very end may be the first half of CRLF: wait for the next byte.
            if self.buf[end] == b'\r' && end + 1 == self.buf.len() {
                break;
            }
            let skip = if self.buf[end] == b'\r' && self.buf.get(end + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let line = self.buf.split_to(end + skip);
            let line = &line[..end];
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.current));
                } else {
                    self.current = Event::default();
                }
                self.has_data = false;
                continue;
            }
            self.field(line);
        }
        if self.buf.len() > self.limit {
            return Err(TooLarge);
        }
        Ok(out)
    }

    fn field(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        if text.starts_with(':') {
            return;
        }
        let (name, value) = match text.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match name {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.current.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => {
                self.current.id = Some(value.to_owned());
                self.last_id = Some(value.to_owned());
            }
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }
}

/// Encodes one event for a client: `id`, then the JSON on one `data` line (JSON text from
/// `serde_json` never holds a raw newline).
pub fn encode(id: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    out.push_str("event: message\n");
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    for line in data.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    if data.is_empty() {
        out.push_str("data: \n");
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_across_chunk_boundaries_and_line_endings() {
        let mut p = Parser::new(1 << 20);
        let mut events = p.feed(b": comment\nevent: message\nid: 1.").unwrap();
        assert!(events.is_empty());
        events.extend(p.feed(b"1\r\ndata: {\"a\":\r").unwrap());
        events.extend(
            p.feed(b"\ndata: 1}\r\n\r\nevent: endpoint\ndata: /m?s=1\n\n")
                .unwrap(),
        );
        assert_eq!(
            events,
            vec![
                Event {
                    id: Some("1.1".into()),
                    event: Some("message".into()),
                    data: "{\"a\":\n1}".into()
                },
                Event {
                    id: None,
                    event: Some("endpoint".into()),
                    data: "/m?s=1".into()
                }
            ]
        );
        // An event with no data (a priming event) dispatches nothing.
        assert!(p.feed(b"id: 5\n\n").unwrap().is_empty());
    }

    #[test]
    fn refuses_endless_lines() {
        let mut p = Parser::new(16);
        assert_eq!(p.feed(&[b'x'; 64]), Err(TooLarge));
    }

    #[test]
    fn encodes_events() {
        assert_eq!(
            encode(Some("1.2"), "{\"a\":1}"),
            Bytes::from_static(b"event: message\nid: 1.2\ndata: {\"a\":1}\n\n")
        );
        assert_eq!(
            encode(Some("1.0"), ""),
            Bytes::from_static(b"event: message\nid: 1.0\ndata: \n\n")
        );
    }
}
