//! Errors in the protocol's own shape: a JSON-RPC error object (0.3: free-form `data`; 1.0:
//! `data` is a list holding a `google.rpc.ErrorInfo`) or, on the HTTP+JSON binding, the
//! `google.rpc.Status` body with the matching HTTP status.

use axum::response::Response;
use http::StatusCode;
use serde_json::{json, Value};

use crate::ops::Version;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL: i64 = -32603;
pub const TASK_NOT_FOUND: i64 = -32001;
pub const INVALID_AGENT_RESPONSE: i64 = -32006;
pub const VERSION_NOT_SUPPORTED: i64 = -32009;
/// The gateway refused the call (authentication, policy, quota): a server-defined code
/// outside the range A2A uses, with the HTTP status saying which.
pub const GATEWAY_REFUSED: i64 = -32050;

/// How the caller speaks, so the error answers in kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    JsonRpc(Version),
    Rest,
}

#[derive(Debug, Clone)]
pub struct A2aError {
    pub status: StatusCode,
    pub code: i64,
    /// UPPER_SNAKE_CASE, for `ErrorInfo.reason`.
    pub reason: &'static str,
    pub message: String,
    pub data: Option<Value>,
}

impl A2aError {
    pub fn new(
        status: StatusCode,
        code: i64,
        reason: &'static str,
        message: impl Into<String>,
    ) -> A2aError {
        A2aError {
            status,
            code,
            reason,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> A2aError {
        self.data = Some(data);
        self
    }

    pub fn unauthenticated(message: impl Into<String>) -> A2aError {
        A2aError::new(
            StatusCode::UNAUTHORIZED,
            GATEWAY_REFUSED,
            "UNAUTHENTICATED",
            message,
        )
    }

    pub fn denied(message: impl Into<String>) -> A2aError {
        A2aError::new(
            StatusCode::FORBIDDEN,
            GATEWAY_REFUSED,
            "PERMISSION_DENIED",
            message,
        )
    }

    pub fn task_not_found() -> A2aError {
        A2aError::new(
            StatusCode::NOT_FOUND,
            TASK_NOT_FOUND,
            "TASK_NOT_FOUND",
            "task not found",
        )
    }

    pub fn upstream(message: impl Into<String>) -> A2aError {
        A2aError::new(
            StatusCode::BAD_GATEWAY,
            INTERNAL,
            "UPSTREAM_UNAVAILABLE",
            message,
        )
    }

    fn grpc_status(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            409 => "FAILED_PRECONDITION",
            413 => "INVALID_ARGUMENT",
            429 => "RESOURCE_EXHAUSTED",
            504 => "DEADLINE_EXCEEDED",
            502 | 503 => "UNAVAILABLE",
            _ => "INTERNAL",
        }
    }

    fn error_info(&self) -> Value {
        let mut info = json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": self.reason,
            "domain": "a2a-protocol.org",
        });
        if let Some(d) = &self.data {
            info["metadata"] = Value::Object(
                d.as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| {
                                let s = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                                (k.clone(), Value::String(s))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            );
        }
        info
    }

    /// The error as a JSON-RPC error object.
    pub fn rpc_object(&self, version: Version) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        match version {
            Version::V03 => {
                if let Some(d) = &self.data {
                    e["data"] = d.clone();
                }
            }
            Version::V10 => e["data"] = json!([self.error_info()]),
        }
        e
    }

    /// The whole HTTP answer. JSON-RPC errors about the call itself are HTTP 200 (as the
    /// binding wants), the gateway's refusals keep their 401/403/404/429 status.
    pub fn response(&self, shape: Shape, id: &Value) -> Response {
        match shape {
            Shape::JsonRpc(v) => {
                let body = json!({"jsonrpc": "2.0", "id": id, "error": self.rpc_object(v)});
                let status = if self.code == GATEWAY_REFUSED
                    || matches!(self.status.as_u16(), 413 | 502 | 504)
                {
                    self.status
                } else {
                    StatusCode::OK
                };
                tollgate_core::http::json_response(status, body.to_string())
            }
            Shape::Rest => {
                let body = json!({"error": {
                    "code": self.status.as_u16(),
                    "status": self.grpc_status(),
                    "message": self.message,
                    "details": [self.error_info()],
                }});
                tollgate_core::http::json_response(self.status, body.to_string())
            }
        }
    }
}

impl From<tollgate_core::error::ApiError> for A2aError {
    fn from(e: tollgate_core::error::ApiError) -> A2aError {
        use tollgate_core::error::ErrorKind as K;
        let (status, code, reason) = match e.kind {
            K::Unauthenticated => (StatusCode::UNAUTHORIZED, GATEWAY_REFUSED, "UNAUTHENTICATED"),
            K::PermissionDenied => (StatusCode::FORBIDDEN, GATEWAY_REFUSED, "PERMISSION_DENIED"),
            K::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID_REQUEST,
                "PAYLOAD_TOO_LARGE",
            ),
            K::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                INVALID_REQUEST,
                "REQUEST_TIMEOUT",
            ),
            K::LimitExceeded | K::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                GATEWAY_REFUSED,
                "RESOURCE_EXHAUSTED",
            ),
            K::InvalidRequest => (StatusCode::BAD_REQUEST, INVALID_REQUEST, "INVALID_REQUEST"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL, "INTERNAL"),
        };
        A2aError::new(status, code, reason, e.message)
    }
}
