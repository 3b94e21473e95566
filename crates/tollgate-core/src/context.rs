//! The per-request context every layer shares: request id, W3C trace context and conversation
//! id. The HTTP shell builds it once per request and puts it in the request's extensions;
//! layers read it to label upstream calls, audit records and (later) spans and ledger rows, so
//! one trace and one conversation id join model calls, tool calls and agent hops.

use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const CONVERSATION_ID: &str = "x-tollgate-conversation-id";

/// A W3C trace context: the client's trace (or a new one) and this request's own span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// This request's span: 16 lowercase hex digits.
    pub span_id: String,
    /// The client's span, when it sent a `traceparent`.
    pub parent_span_id: Option<String>,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// The client's `tracestate`, passed on unchanged.
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// Continues the client's trace if it sent a valid `traceparent`, else starts one.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        match parent {
            Some((trace_id, parent_span, flags)) => TraceContext {
                trace_id,
                span_id: hex_id(8),
                parent_span_id: Some(parent_span),
                flags,
                tracestate: headers.get(TRACESTATE).cloned(),
            },
            None => TraceContext {
                trace_id: hex_id(16),
                span_id: hex_id(8),
                parent_span_id: None,
                flags: 1,
                tracestate: None,
            },
        }
    }

    /// The `traceparent` to send upstream: same trace, this request's span as the parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid per the spec.
fn parse_traceparent(v: &str) -> Option<(String, String, u8)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    // Version ff is forbidden; later versions may append fields, which we ignore.
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_owned(), span_id.to_owned(), flags))
}

fn hex_id(bytes: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes * 2);
    loop {
        out.clear();
        for _ in 0..bytes {
            let b = fastrand::u8(..);
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        // An all-zero id is invalid; vanishingly rare, but cheap to rule out.
        if out.bytes().any(|b| b != b'0') {
            return out;
        }
    }
}

/// Everything a layer needs to know about the request it is serving, besides the principal.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    pub trace: TraceContext,
    /// From `x-tollgate-conversation-id` (the A2A layer will set it from `contextId`).
    pub conversation_id: Option<String>,
}

impl RequestContext {
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}

/// A client-supplied conversation id, if usable: 1-128 visible ASCII characters.
pub fn conversation_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(CONVERSATION_ID)?;
    let ok = !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(u8::is_ascii_graphic);
    ok.then(|| v.to_str().ok().map(str::to_owned)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert_eq!(t.tracestate, Some(HeaderValue::from_static("vendor=x")));
        assert!(t
            .traceparent()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(t.traceparent().ends_with("-01"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            let t = TraceContext::from_headers(&h);
            assert!(t.parent_span_id.is_none(), "{bad}");
            assert_eq!(t.trace_id.len(), 32);
        }
    }

    #[test]
    fn conversation_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(conversation_id(&h), None);
        h.insert(CONVERSATION_ID, HeaderValue::from_static("conv-1"));
        assert_eq!(conversation_id(&h).as_deref(), Some("conv-1"));
        h.insert(CONVERSATION_ID, HeaderValue::from_static("has space"));
        assert_eq!(conversation_id(&h), None);
    }
}
