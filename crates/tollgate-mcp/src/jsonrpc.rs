//! JSON-RPC 2.0 messages as MCP uses them: classifying what arrived, building responses and
//! errors, and the error type every tool-layer failure becomes. Messages stay
//! `serde_json::Value`s so fields the gateway does not know pass through untouched.

use serde_json::{json, Map, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Implementation-defined server errors (JSON-RPC reserves -32000 to -32099).
pub const SESSION_NOT_FOUND: i64 = -32001;
/// MCP's "resource not found" before 2026-07-28 (clients still accept it).
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// An upstream failed, timed out or answered something unusable.
pub const UPSTREAM_ERROR: i64 = -32010;
pub const UNAUTHORIZED: i64 = -32011;
pub const FORBIDDEN: i64 = -32012;
/// An execution quota is spent; `data.retryAfterSeconds` says when to try again.
pub const QUOTA_EXCEEDED: i64 = -32013;

/// What a message is, by the fields it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// Classifies a message, or says why it is not valid JSON-RPC 2.0.
pub fn classify(msg: &Value) -> Result<Kind, &'static str> {
    let Some(obj) = msg.as_object() else {
        return Err("a JSON-RPC message must be an object");
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("\"jsonrpc\" must be \"2.0\"");
    }
    if obj
        .get("params")
        .is_some_and(|p| !p.is_object() && !p.is_array())
    {
        return Err("\"params\" must be an object or an array");
    }
    let id_ok = |id: &Value| id.is_string() || id.is_i64() || id.is_u64();
    match (obj.get("method"), obj.get("id")) {
        (Some(Value::String(_)), None) => Ok(Kind::Notification),
        (Some(Value::String(_)), Some(id)) if id_ok(id) => Ok(Kind::Request),
        (Some(Value::String(_)), Some(_)) => Err("\"id\" must be a string or an integer"),
        (Some(_), _) => Err("\"method\" must be a string"),
        (None, Some(id)) if id_ok(id) => {
            if obj.contains_key("result") != obj.contains_key("error") {
                Ok(Kind::Response)
            } else {
                Err("a response carries exactly one of \"result\" and \"error\"")
            }
        }
        (None, _) => Err("a message needs a \"method\" or a \"result\"/\"error\" with an \"id\""),
    }
}

pub fn method(msg: &Value) -> &str {
    msg.get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn params(msg: &Value) -> &Value {
    static NULL: Value = Value::Null;
    msg.get("params").unwrap_or(&NULL)
}

pub fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub fn request(id: Value, method: &str, params: Value) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), json!("2.0"));
    m.insert("id".into(), id);
    m.insert("method".into(), json!(method));
    if !params.is_null() {
        m.insert("params".into(), params);
    }
    Value::Object(m)
}

pub fn notification(method: &str, params: Value) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), json!("2.0"));
    m.insert("method".into(), json!(method));
    if !params.is_null() {
        m.insert("params".into(), params);
    }
    Value::Object(m)
}

/// A tool-layer failure: the JSON-RPC error and the HTTP status it travels with.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
    /// The HTTP status when the error is the whole answer to a POST (200 when it answers a
    /// request inside a session, 4xx when the transport itself refuses).
    pub status: http::StatusCode,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
            status: http::StatusCode::OK,
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    pub fn with_status(mut self, status: http::StatusCode) -> RpcError {
        self.status = status;
        self
    }

    pub fn with_data(mut self, data: Value) -> RpcError {
        self.data = Some(data);
        self
    }

    /// The error response to the request `id` (`null` when it could not be read).
    pub fn to_message(&self, id: Value) -> Value {
        let mut err = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            err["data"] = d.clone();
        }
        json!({"jsonrpc": "2.0", "id": id, "error": err})
    }
}

impl From<tollgate_core::error::ApiError> for RpcError {
    /// The core's errors keep their HTTP status and map onto JSON-RPC codes by kind.
    fn from(e: tollgate_core::error::ApiError) -> RpcError {
        use tollgate_core::error::ErrorKind as K;
        let code = match e.kind {
            K::InvalidRequest | K::PayloadTooLarge | K::RequestTimeout => {
                if e.code == Some("invalid_json") {
                    PARSE_ERROR
                } else {
                    INVALID_REQUEST
                }
            }
            K::Unauthenticated => UNAUTHORIZED,
            K::PermissionDenied => FORBIDDEN,
            K::NotFound | K::MethodNotAllowed => INVALID_REQUEST,
            K::Internal => INTERNAL_ERROR,
            _ => UPSTREAM_ERROR,
        };
        let status = e.status();
        RpcError::new(code, e.message).with_status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        let ok = |v: Value| classify(&v);
        assert_eq!(
            ok(json!({"jsonrpc":"2.0","id":1,"method":"ping"})),
            Ok(Kind::Request)
        );
        assert_eq!(
            ok(json!({"jsonrpc":"2.0","method":"notifications/initialized"})),
            Ok(Kind::Notification)
        );
        assert_eq!(
            ok(json!({"jsonrpc":"2.0","id":"a","result":{}})),
            Ok(Kind::Response)
        );
        assert!(ok(json!({"jsonrpc":"1.0","id":1,"method":"ping"})).is_err());
        assert!(ok(json!({"jsonrpc":"2.0","id":null,"method":"ping"})).is_err());
        assert!(ok(json!({"jsonrpc":"2.0","id":1.5,"method":"ping"})).is_err());
        assert!(ok(json!({"jsonrpc":"2.0","id":1,"result":{},"error":{}})).is_err());
        assert!(ok(json!([1])).is_err());
    }

    #[test]
    fn errors_render_as_responses() {
        let e = RpcError::invalid_params("no such tool").with_data(json!({"tool": "x"}));
        assert_eq!(
            e.to_message(json!(7)),
            json!({"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"no such tool","data":{"tool":"x"}}})
        );
    }
}
