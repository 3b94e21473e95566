//! OpenTelemetry trace export over OTLP/HTTP (protobuf), following the GenAI semantic
//! conventions for the spans the layers emit (`chat {model}` for model calls).
//!
//! Spans leave the request path through a bounded channel (a full channel drops and counts)
//! and are posted in batches by one background task. Off unless `telemetry.otlp` is set.
//! The protobuf messages are the subset of `opentelemetry/proto` that tollgate writes; they
//! are public so tests can decode what was exported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::sync::mpsc;

use crate::config::OtlpConfig;
use crate::context::TraceContext;

/// `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// 3 = CLIENT.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    /// 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4")]
    pub value: Option<any_value::Value>,
}

pub mod any_value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        #[prost(int64, tag = "3")]
        IntValue(i64),
        #[prost(double, tag = "4")]
        DoubleValue(f64),
    }
}

impl KeyValue {
    pub fn string(key: &str, v: impl Into<String>) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        }
    }
    pub fn int(key: &str, v: i64) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(v)),
            }),
        }
    }
    pub fn double(key: &str, v: f64) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::DoubleValue(v)),
            }),
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| {
            s.get(i * 2..i * 2 + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

/// Builds a span for this request's own span id, parented on the client's span.
pub fn span_for(
    trace: &TraceContext,
    name: String,
    start_ns: u64,
    end_ns: u64,
    attributes: Vec<KeyValue>,
    error: Option<String>,
) -> Span {
    Span {
        trace_id: unhex(&trace.trace_id),
        span_id: unhex(&trace.span_id),
        trace_state: trace
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        parent_span_id: trace
            .parent_span_id
            .as_deref()
            .map(unhex)
            .unwrap_or_default(),
        name,
        kind: 3,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: end_ns,
        attributes,
        status: Some(match error {
            Some(message) => Status { message, code: 2 },
            None => Status {
                message: String::new(),
                code: 0,
            },
        }),
        flags: u32::from(trace.flags),
    }
}

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

const CHANNEL: usize = 8192;
const BATCH: usize = 512;

/// Where layers send finished spans. Cheap to clone; a disabled tracer drops everything.
#[derive(Clone, Default)]
pub struct Tracer {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: mpsc::Sender<Span>,
    sample_ratio: f64,
    dropped: AtomicU64,
}

impl Tracer {
    /// Starts the exporter task when configured.
    pub fn start(cfg: Option<&OtlpConfig>) -> Tracer {
        let Some(cfg) = cfg else {
            return Tracer::default();
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(export(cfg.clone(), rx));
        Tracer {
            inner: Some(Arc::new(Inner {
                tx,
                sample_ratio: cfg.sample_ratio,
                dropped: AtomicU64::new(0),
            })),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether a trace is recorded: the client's sampled flag, then the configured ratio,
    /// decided on the trace id so every span of a trace gets the same answer.
    pub fn sampled(&self, trace: &TraceContext) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        if trace.flags & 1 == 0 {
            return false;
        }
        let head = trace
            .trace_id
            .get(..16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        (head as f64) < inner.sample_ratio * (u64::MAX as f64)
    }

    /// Queues a span without waiting; a full queue drops it and counts the drop.
    pub fn record(&self, span: Span) {
        if let Some(inner) = &self.inner {
            if inner.tx.try_send(span).is_err() {
                inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn export(cfg: OtlpConfig, mut rx: mpsc::Receiver<Span>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build(),
    );
    let url = if cfg.endpoint.ends_with("/v1/traces") {
        cfg.endpoint.clone()
    } else {
        format!("{}/v1/traces", cfg.endpoint.trim_end_matches('/'))
    };
    let resource = Resource {
        attributes: vec![KeyValue::string("service.name", cfg.service_name.clone())],
    };
    let scope = InstrumentationScope {
        name: "tollgate".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + cfg.export_interval;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: std::mem::take(&mut batch),
                }],
            }],
        }
        .encode_to_vec();
        let mut req = http::Request::post(url.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        for (k, v) in &cfg.headers {
            req = req.header(k.as_str(), v.expose());
        }
        match req.body(Full::new(Bytes::from(body))) {
            Ok(req) => {
                match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Ok(Ok(res)) if res.status().is_success() => {}
                    Ok(Ok(res)) => tracing::warn!(status = %res.status(), "OTLP export rejected"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "OTLP export failed"),
                    Err(_) => tracing::warn!("OTLP export timed out"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot build the OTLP request"),
        }
    }
}
