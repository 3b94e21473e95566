//! Strict HTTP/1 line ends on the way into hyper.
//!
//! hyper's parser takes a bare LF as the end of a line in a request head, as RFC 9112 section
//! 2.2 lets a recipient do. A proxy in front of tollgate that does not would read other header
//! fields than tollgate: `X-Note: hi<LF>Authorization: ...` is one field to it and two here,
//! the split request smuggling is made of. So tollgate refuses them: [`LineEnds`] follows the
//! framing of an HTTP/1 connection as its bytes arrive (heads, `Content-Length` and chunked
//! bodies, pipelined requests) and turns a bare LF in a head into a NUL, which hyper refuses
//! with 400 like any other malformed head. Body bytes pass untouched. Where the framing stops
//! being one this scanner can follow (HTTP/2, a head hyper will refuse anyway, a head longer
//! than hyper accepts), it stops looking: hyper then closes the connection or never reads
//! HTTP/1 from it again.

/// Where the scanner is in the connection's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In a request head; its bytes so far are in `LineEnds::head`.
    Head,
    /// In a body of known length: this many bytes to go.
    Body(u64),
    /// In a chunk-size line: the size so far, and whether a hex digit was seen and the line's
    /// extensions began.
    ChunkSize { size: u64, digits: bool, ext: bool },
    /// In a chunk's data: this many bytes to go.
    ChunkData(u64),
    /// After a chunk's data: the CR (false) or LF (true) that ends it is next.
    ChunkEnd { cr_seen: bool },
    /// In the trailer section after the last chunk: whether the current line is empty so far.
    Trailers { empty_line: bool },
    /// Not following this connection any more.
    Off,
}

/// The line-end check for one connection.
#[derive(Debug)]
pub struct LineEnds {
    phase: Phase,
    /// The head being read (kept to find its framing fields once it is complete).
    head: Vec<u8>,
    /// Heads longer than this are hyper's to refuse (431).
    max_head: usize,
    /// Whether the last byte seen in a line-oriented phase was a CR.
    cr: bool,
}

impl LineEnds {
    pub fn new(max_head: usize) -> LineEnds {
        LineEnds {
            phase: Phase::Head,
            head: Vec::new(),
            max_head,
            cr: false,
        }
    }

    /// Scans bytes just read from the client, in order, rewriting a bare LF in a request head
    /// (or a chunk line or trailer) to NUL.
    pub fn scan(&mut self, bytes: &mut [u8]) {
        let mut i = 0;
        while i < bytes.len() {
            match self.phase {
                Phase::Off => return,
                Phase::Head => i += self.head_bytes(&mut bytes[i..]),
                Phase::Body(left) => {
                    let n = skip(left, bytes.len() - i);
                    i += n;
                    self.phase = match left - n as u64 {
                        0 => self.next_head(),
                        rest => Phase::Body(rest),
                    };
                }
                Phase::ChunkData(left) => {
                    let n = skip(left, bytes.len() - i);
                    i += n;
                    self.phase = match left - n as u64 {
                        0 => Phase::ChunkEnd { cr_seen: false },
                        rest => Phase::ChunkData(rest),
                    };
                }
                Phase::ChunkSize { .. } | Phase::ChunkEnd { .. } | Phase::Trailers { .. } => {
                    self.chunk_line_byte(&mut bytes[i]);
                    i += 1;
                }
            }
        }
    }

    /// Takes head bytes from the front of `bytes` up to and including the next LF (or all of
    /// them); returns how many it took.
    fn head_bytes(&mut self, bytes: &mut [u8]) -> usize {
        let Some(lf) = bytes.iter().position(|&b| b == b'\n') else {
            self.head.extend_from_slice(bytes);
            if self.head.len() > self.max_head {
                self.stop();
            }
            return bytes.len();
        };
        let before = if lf > 0 {
            Some(bytes[lf - 1])
        } else {
            self.head.last().copied()
        };
        if before != Some(b'\r') {
            // hyper now sees an invalid byte where the line would have ended, and answers 400.
            bytes[lf] = 0;
            self.stop();
            return lf + 1;
        }
        self.head.extend_from_slice(&bytes[..=lf]);
        if self.head == b"\r\n" {
            // An empty line before the request line, which RFC 9112 says to ignore.
            self.head.clear();
        } else if self.head.ends_with(b"\r\n\r\n") {
            self.phase = framing(&self.head);
            self.head.clear();
            if self.phase == Phase::Body(0) {
                self.phase = self.next_head();
            }
        } else if self.head.len() > self.max_head {
            self.stop();
        }
        lf + 1
    }

    /// One byte of a chunk-size line, the CRLF after a chunk's data, or the trailer section.
    fn chunk_line_byte(&mut self, byte: &mut u8) {
        let cr = std::mem::replace(&mut self.cr, *byte == b'\r');
        if *byte == b'\n' && !cr {
            *byte = 0;
            self.stop();
            return;
        }
        self.phase = match (self.phase, *byte) {
            (Phase::ChunkSize { size, digits, .. }, b'\n') => match (digits, size) {
                (false, _) => Phase::Off,
                (true, 0) => Phase::Trailers { empty_line: true },
                (true, n) => Phase::ChunkData(n),
            },
            (Phase::ChunkSize { .. }, b'\r') => self.phase,
            (Phase::ChunkSize { size, digits, ext }, b) if !ext => match (b as char).to_digit(16) {
                Some(d) => match size.checked_mul(16) {
                    Some(s) => Phase::ChunkSize {
                        size: s + u64::from(d),
                        digits: true,
                        ext,
                    },
                    None => Phase::Off,
                },
                None if digits && matches!(b, b';' | b' ' | b'\t') => Phase::ChunkSize {
                    size,
                    digits,
                    ext: true,
                },
                None => Phase::Off,
            },
            (Phase::ChunkSize { .. }, _) => self.phase,
            (Phase::ChunkEnd { cr_seen: false }, b'\r') => Phase::ChunkEnd { cr_seen: true },
            (Phase::ChunkEnd { cr_seen: true }, b'\n') => Phase::ChunkSize {
                size: 0,
                digits: false,
                ext: false,
            },
            (Phase::ChunkEnd { .. }, _) => Phase::Off,
            (Phase::Trailers { empty_line }, b'\n') if empty_line => self.next_head(),
            (Phase::Trailers { .. }, b'\n') => Phase::Trailers { empty_line: true },
            (Phase::Trailers { empty_line }, b'\r') => Phase::Trailers { empty_line },
            (Phase::Trailers { .. }, _) => Phase::Trailers { empty_line: false },
            (other, _) => other,
        };
        if self.phase == Phase::Off {
            self.stop();
        }
    }

    fn next_head(&mut self) -> Phase {
        self.cr = false;
        Phase::Head
    }

    fn stop(&mut self) {
        self.phase = Phase::Off;
        self.head = Vec::new();
    }
}

/// How many of `available` bytes belong to a body part with `left` bytes to go.
fn skip(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |l| l.min(available))
}

/// What follows a complete request head (which ends in CRLF CRLF and has only CRLF line ends):
/// a body of a known length, a chunked body, the next head, or, where hyper will refuse the
/// head or stop speaking HTTP/1, nothing this scanner follows.
fn framing(head: &[u8]) -> Phase {
    if head.starts_with(b"PRI * HTTP/2.0\r\n") {
        return Phase::Off;
    }
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Phase::Off;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let n = std::str::from_utf8(part.trim_ascii())
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok());
                match (n, length) {
                    (None, _) => return Phase::Off,
                    (Some(n), Some(l)) if n != l => return Phase::Off,
                    (Some(n), _) => length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    match (chunked, length) {
        (Some(true), None) => Phase::ChunkSize {
            size: 0,
            digits: false,
            ext: false,
        },
        // Transfer-Encoding with Content-Length, or not ending in chunked: hyper refuses it.
        (Some(_), _) => Phase::Off,
        (None, n) => Phase::Body(n.unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` as it would arrive in reads of `step` bytes; returns what hyper is given.
    fn scanned(input: &[u8], step: usize) -> Vec<u8> {
        let mut check = LineEnds::new(64 * 1024);
        let mut out = input.to_vec();
        for chunk in out.chunks_mut(step) {
            check.scan(chunk);
        }
        out
    }

    fn every_split(input: &[u8]) -> Vec<Vec<u8>> {
        [1, 2, 3, 7, 64, input.len().max(1)]
            .iter()
            .map(|&s| scanned(input, s))
            .collect()
    }

    const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn well_formed_traffic_passes_untouched() {
        let post = b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n{\n\"\n\"}\n";
        let chunked = b"POST /v1/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            3;ext=1\r\n\n\n\n\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let stream = [&b"\r\n"[..], GET, post, chunked, GET, post].concat();
        for out in every_split(&stream) {
            assert_eq!(out, stream);
        }
    }

    #[test]
    fn a_bare_lf_in_a_head_becomes_an_invalid_byte() {
        for head in [
            &b"GET / HTTP/1.1\nHost: a\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Note: hi\nAuthorization: Bearer x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let first_bare = (0..head.len())
                .find(|&i| head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r'))
                .unwrap();
            for out in every_split(head) {
                assert_eq!(out[first_bare], 0, "{:?}", String::from_utf8_lossy(head));
                assert_eq!(out[..first_bare], head[..first_bare]);
            }
        }
    }

    #[test]
    fn pipelined_requests_after_bodies_are_checked() {
        let smuggled = b"GET /healthz HTTP/1.1\r\nHost: a\nX: y\r\n\r\n";
        let length = [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n\n\n\n"[..],
            smuggled,
        ]
        .concat();
        let chunked = [
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n\n\n\r\n0\r\n\r\n"[..],
            smuggled,
        ]
        .concat();
        for stream in [length, chunked] {
            let offset = stream.len() - smuggled.len();
            let bare = offset + smuggled.windows(2).position(|w| w == b"a\n").unwrap() + 1;
            assert_eq!(stream[bare], b'\n');
            for out in every_split(&stream) {
                assert_eq!(out[bare], 0);
                assert_eq!(out[..bare], stream[..bare]);
            }
        }
    }

    #[test]
    fn a_bare_lf_in_chunk_lines_becomes_an_invalid_byte() {
        let stream =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\n{}\r\n0\r\n\r\n";
        let at = stream.iter().position(|&b| b == b'2').unwrap() + 1;
        for out in every_split(stream) {
            assert_eq!(out[at], 0);
        }
    }

    #[test]
    fn framing_it_cannot_follow_turns_the_check_off() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\n\n";
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nzz\n\n";
        let bad_length = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n\n\n\n";
        let overflow = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff0\r\n\n\n";
        for stream in [&h2[..], both, bad_length, overflow] {
            for out in every_split(stream) {
                assert_eq!(out, stream);
            }
        }
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 70 * 1024));
        long.extend(b"\nY: b\r\n\r\n");
        assert_eq!(scanned(&long, 4096), long);
    }
}
