//! The gateway's API error: the one place that knows an error's HTTP status, whose fault it is,
//! whether a retry may help, and how it is rendered for the protocol the client spoke.
//!
//! Module errors (`ProviderError`, `StoreError`, ...) convert into [`ApiError`]; handlers never
//! build status codes by hand.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

/// What went wrong, as a closed set of classes. Status, error `type` and retryability follow
/// from the kind alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request body or parameters are malformed.
    InvalidRequest,
    /// No credential, or an unknown, disabled, revoked or expired one.
    Unauthenticated,
    /// The principal is known but may not do this.
    PermissionDenied,
    /// The named model, key or route does not exist.
    NotFound,
    /// The route exists but not for this HTTP method.
    MethodNotAllowed,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The client took too long to send its request.
    RequestTimeout,
    /// The request conflicts with the current state (e.g. revoking a revoked key).
    Conflict,
    /// The upstream rate-limited us.
    RateLimited,
    /// The client went over one of the gateway's own rate limits.
    LimitExceeded,
    /// A budget the request counts against is spent.
    BudgetExceeded,
    /// The upstream failed or answered something unusable.
    Upstream,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The gateway is draining or not ready.
    Unavailable,
    /// A bug or a store failure on our side.
    Internal,
}

/// Whose fault an error is; drives logging level and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Gateway,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::RateLimited | ErrorKind::LimitExceeded | ErrorKind::BudgetExceeded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error `type` string.
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::RequestTimeout
            | ErrorKind::Conflict
            | ErrorKind::PayloadTooLarge => "invalid_request_error",
            ErrorKind::Unauthenticated => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::RateLimited | ErrorKind::LimitExceeded => "rate_limit_error",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::Upstream | ErrorKind::UpstreamTimeout => "upstream_error",
            ErrorKind::Unavailable => "service_unavailable",
            ErrorKind::Internal => "server_error",
        }
    }

    /// The error `type` Anthropic's API uses for this kind.
    pub fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::MethodNotAllowed
            | ErrorKind::RequestTimeout
            | ErrorKind::Conflict => "invalid_request_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::Unauthenticated => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::RateLimited | ErrorKind::LimitExceeded | ErrorKind::BudgetExceeded => {
                "rate_limit_error"
            }
            ErrorKind::Unavailable => "overloaded_error",
            ErrorKind::Upstream | ErrorKind::UpstreamTimeout | ErrorKind::Internal => "api_error",
        }
    }

    pub fn fault(self) -> Fault {
        match self {
            ErrorKind::Upstream | ErrorKind::UpstreamTimeout | ErrorKind::RateLimited => {
                Fault::Upstream
            }
            ErrorKind::Internal | ErrorKind::Unavailable => Fault::Gateway,
            _ => Fault::Client,
        }
    }

    /// Whether the same request may succeed if tried again later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::LimitExceeded
                | ErrorKind::Upstream
                | ErrorKind::UpstreamTimeout
                | ErrorKind::Unavailable
        )
    }
}

/// An error on its way to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Machine-readable code (`invalid_api_key`, `model_not_found`, ...).
    pub code: Option<&'static str>,
    /// The request parameter at fault, if any.
    pub param: Option<String>,
    /// Overrides the kind's status, e.g. to keep an upstream 400 as 400.
    pub status: Option<StatusCode>,
    /// What an upstream contributed, boxed: most errors have none, and `ApiError` stays small.
    pub upstream: Option<Box<UpstreamParts>>,
    /// Replaces the kind's `type` in the body.
    pub type_override: Option<&'static str>,
}

/// Parts of an upstream's answer that travel with the error.
#[derive(Debug, Clone, Default)]
pub struct UpstreamParts {
    /// An error body already in the client's protocol, relayed verbatim.
    pub body: Option<Bytes>,
    /// Headers to send with the error (`retry-after`, rate-limit state).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            code: None,
            param: None,
            status: None,
            upstream: None,
            type_override: None,
        }
    }

    /// Relays an upstream's own error body (already in the client's protocol) with its status.
    pub fn relay(
        kind: ErrorKind,
        status: StatusCode,
        message: impl Into<String>,
        body: Bytes,
    ) -> Self {
        ApiError {
            status: Some(status),
            upstream: Some(Box::new(UpstreamParts {
                body: Some(body),
                headers: Vec::new(),
            })),
            ..ApiError::new(kind, message)
        }
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Adds upstream headers (`retry-after`, ...) to send with the error.
    pub fn with_upstream_headers(mut self, headers: Vec<(http::HeaderName, HeaderValue)>) -> Self {
        if !headers.is_empty() {
            self.upstream.get_or_insert_with(Default::default).headers = headers;
        }
        self
    }

    /// Adds headers to send with the error.
    pub fn with_headers(mut self, headers: Vec<(http::HeaderName, HeaderValue)>) -> Self {
        self.upstream
            .get_or_insert_with(Default::default)
            .headers
            .extend(headers);
        self
    }

    /// Replaces the kind's error `type` (OpenAI's rate limits say `requests` or `tokens`).
    pub fn error_type(mut self, t: &'static str) -> Self {
        self.type_override = Some(t);
        self
    }

    /// The upstream body relayed verbatim, if any.
    pub fn relay_body(&self) -> Option<&Bytes> {
        self.upstream.as_ref().and_then(|u| u.body.as_ref())
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::InvalidRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::Internal, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::NotFound, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.kind.status())
    }

    /// A malformed JSON body, with the position serde reported.
    pub fn from_json(err: &serde_json::Error) -> Self {
        let what = match err.classify() {
            serde_json::error::Category::Data => "invalid request body",
            _ => "malformed JSON in request body",
        };
        // serde_json's message already ends with "at line L column C".
        ApiError::invalid(format!("{what}: {err}")).code(match err.classify() {
            serde_json::error::Category::Data => "invalid_body",
            _ => "invalid_json",
        })
    }

    /// The OpenAI error body: `{"error":{"message","type","code","param"}}`.
    pub fn openai_body(&self) -> Bytes {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            code: Option<&'a str>,
            param: Option<&'a str>,
        }
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.type_override.unwrap_or(self.kind.openai_type()),
                code: self.code,
                param: self.param.as_deref(),
            },
        };
        // Serialising plain strings cannot fail; fall back to a fixed body rather than panic.
        serde_json::to_vec(&body).map(Bytes::from).unwrap_or_else(|_| {
            Bytes::from_static(br#"{"error":{"message":"internal error","type":"server_error","code":null,"param":null}}"#)
        })
    }
}

impl ApiError {
    /// The body in Anthropic's shape: `{"type":"error","error":{"type","message"}}`, with the
    /// gateway's machine-readable `code` beside them when there is one.
    pub fn anthropic_body(&self) -> Bytes {
        let mut inner = serde_json::json!({
            "type": self.kind.anthropic_type(),
            "message": self.message,
        });
        if let Some(code) = self.code {
            inner["code"] = serde_json::json!(code);
        }
        Bytes::from(serde_json::json!({"type": "error", "error": inner}).to_string())
    }

    /// The response for a client of Anthropic's API. A relayed upstream body is already in
    /// the client's shape.
    pub fn into_anthropic_response(self) -> Response {
        let body = match self.relay_body() {
            Some(b) => b.clone(),
            None => self.anthropic_body(),
        };
        self.render(body)
    }

    fn render(self, body: Bytes) -> Response {
        let status = self.status();
        let mut res = (status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.kind == ErrorKind::Unauthenticated {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate\""),
            );
        }
        if let Some(upstream) = self.upstream {
            for (name, value) in upstream.headers {
                res.headers_mut().insert(name, value);
            }
        }
        res.extensions_mut().insert(ErrorMark(self.kind));
        res
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.relay_body() {
            Some(b) => b.clone(),
            None => self.openai_body(),
        };
        self.render(body)
    }
}

/// Left on error responses so the HTTP shell can label metrics and logs by error class.
#[derive(Debug, Clone, Copy)]
pub struct ErrorMark(pub ErrorKind);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape_has_all_four_fields() {
        let err = ApiError::new(ErrorKind::PermissionDenied, "no")
            .code("model_not_allowed")
            .param("model");
        let v: serde_json::Value = serde_json::from_slice(&err.openai_body()).unwrap_or_default();
        assert_eq!(v["error"]["message"], "no");
        assert_eq!(v["error"]["type"], "permission_error");
        assert_eq!(v["error"]["code"], "model_not_allowed");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn json_error_carries_position() {
        let Err(e) = serde_json::from_str::<serde_json::Value>("{\"a\": }") else {
            unreachable!("invalid JSON parsed");
        };
        let err = ApiError::from_json(&e);
        assert!(err.message.contains("line 1 column 7"), "{}", err.message);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}
