//! What a request asks for, whatever its binding and protocol version: the operation (by its
//! v1.0 name), the version, whether the answer streams, and the task or context it names.

use http::Method;
use serde_json::Value;

/// The protocol generations on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V03,
    V10,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V03 => "0.3",
            Version::V10 => "1.0",
        }
    }

    /// From the `A2A-Version` header: absent or empty means 0.3; unknown versions are `None`.
    pub fn from_header(v: Option<&str>) -> Option<Version> {
        match v.map(str::trim) {
            None | Some("") => Some(Version::V03),
            Some(v) if v == "0.3" || v.starts_with("0.3.") => Some(Version::V03),
            Some(v) if v == "1.0" || v.starts_with("1.0.") => Some(Version::V10),
            _ => None,
        }
    }
}

/// One operation of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// The v1.0 name, which policy and quotas use for every version and binding.
    pub name: &'static str,
    pub streams: bool,
    /// Whether a new task can come out of it (quotas on task creation key on these).
    pub creates: bool,
}

const fn op(name: &'static str, streams: bool, creates: bool) -> Op {
    Op {
        name,
        streams,
        creates,
    }
}

const SEND: Op = op("SendMessage", false, true);
const STREAM: Op = op("SendStreamingMessage", true, true);
const GET: Op = op("GetTask", false, false);
const LIST: Op = op("ListTasks", false, false);
const CANCEL: Op = op("CancelTask", false, false);
const SUBSCRIBE: Op = op("SubscribeToTask", true, false);
const PUSH_SET: Op = op("CreateTaskPushNotificationConfig", false, false);
const PUSH_GET: Op = op("GetTaskPushNotificationConfig", false, false);
const PUSH_LIST: Op = op("ListTaskPushNotificationConfigs", false, false);
const PUSH_DELETE: Op = op("DeleteTaskPushNotificationConfig", false, false);
const EXTENDED_CARD: Op = op("GetExtendedAgentCard", false, false);

/// JSON-RPC method names of both generations: (0.3 name, operation).
const V03_METHODS: [(&str, Op); 12] = [
    ("message/send", SEND),
    ("message/stream", STREAM),
    ("tasks/get", GET),
    ("tasks/list", LIST),
    ("tasks/cancel", CANCEL),
    ("tasks/resubscribe", SUBSCRIBE),
    ("tasks/pushNotificationConfig/set", PUSH_SET),
    ("tasks/pushNotificationConfig/get", PUSH_GET),
    ("tasks/pushNotificationConfig/list", PUSH_LIST),
    ("tasks/pushNotificationConfig/delete", PUSH_DELETE),
    ("agent/getAuthenticatedExtendedCard", EXTENDED_CARD),
    ("agent/authenticatedExtendedCard", EXTENDED_CARD),
];

const V10_METHODS: [Op; 11] = [
    SEND,
    STREAM,
    GET,
    LIST,
    CANCEL,
    SUBSCRIBE,
    PUSH_SET,
    PUSH_GET,
    PUSH_LIST,
    PUSH_DELETE,
    EXTENDED_CARD,
];

/// A JSON-RPC method: the operation and the generation its name belongs to.
pub fn jsonrpc(method: &str) -> Option<(Op, Version)> {
    if let Some((_, op)) = V03_METHODS.iter().find(|(m, _)| *m == method) {
        return Some((*op, Version::V03));
    }
    V10_METHODS
        .iter()
        .find(|o| o.name == method)
        .map(|o| (*o, Version::V10))
}

/// A REST request, from its verb and the path under the interface's base: the operation and
/// the task id the path names. The 0.3 binding's `/v1` prefix and a 1.0 `/{tenant}` prefix
/// are whatever precedes the recognised tail.
pub fn rest(method: &Method, path: &str) -> Option<(Op, Option<String>)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let n = segs.len();
    let last = *segs.last()?;
    let at = |i: usize| n.checked_sub(i).and_then(|j| segs.get(j)).copied();
    let id = |s: &str| Some(s.to_owned());
    match (method, last) {
        (&Method::POST, "message:send") => return Some((SEND, None)),
        (&Method::POST, "message:stream") => return Some((STREAM, None)),
        (&Method::GET, "extendedAgentCard") => return Some((EXTENDED_CARD, None)),
        (&Method::GET, "card") if at(2) == Some("v1") => return Some((EXTENDED_CARD, None)),
        (&Method::GET, "tasks") => return Some((LIST, None)),
        _ => {}
    }
    if at(2) == Some("tasks") {
        if let Some(task) = last.strip_suffix(":cancel") {
            return (method == Method::POST).then(|| (CANCEL, id(task)));
        }
        if let Some(task) = last.strip_suffix(":subscribe") {
            return (method == Method::POST || method == Method::GET)
                .then(|| (SUBSCRIBE, id(task)));
        }
        return (method == Method::GET).then(|| (GET, id(last)));
    }
    if last == "pushNotificationConfigs" && at(3) == Some("tasks") {
        let task = at(2).and_then(id);
        return match *method {
            Method::POST => Some((PUSH_SET, task)),
            Method::GET => Some((PUSH_LIST, task)),
            _ => None,
        };
    }
    if at(2) == Some("pushNotificationConfigs") && at(4) == Some("tasks") {
        let task = at(3).and_then(id);
        return match *method {
            Method::GET => Some((PUSH_GET, task)),
            Method::DELETE => Some((PUSH_DELETE, task)),
            _ => None,
        };
    }
    None
}

/// The task and context a request names (JSON-RPC `params`, or a REST body).
pub fn request_ids(op: Op, params: &Value) -> (Option<String>, Option<String>) {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    if op.creates {
        // 0.3 REST wraps the message as `request`; everything else calls it `message`.
        let m = params.get("message").or_else(|| params.get("request"));
        let m = m.unwrap_or(&Value::Null);
        return (
            s(m.get("taskId").or_else(|| m.get("task_id"))),
            s(m.get("contextId").or_else(|| m.get("context_id"))),
        );
    }
    let task = s(params.get("taskId"))
        .or_else(|| s(params.get("id")))
        .or_else(|| {
            // 0.3/1.0 resource names: `tasks/{id}[/pushNotificationConfigs/...]`.
            s(params.get("name")).and_then(|n| {
                n.strip_prefix("tasks/")
                    .map(|r| r.split('/').next().unwrap_or(r).to_owned())
            })
        });
    (task, s(params.get("contextId")))
}

/// What a response or stream event says about the task: its id, context and state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub task: Option<String>,
    pub context: Option<String>,
    pub state: Option<String>,
}

/// Reads a result (a JSON-RPC `result`, a REST body, a stream event) in either generation's
/// shape: a Task (`kind: task`, or 1.0 `{task: {...}}`), a Message, or a status or artifact
/// update.
pub fn seen(result: &Value) -> Seen {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let mut out = Seen::default();
    let inner = ["task", "message", "statusUpdate", "artifactUpdate"]
        .iter()
        .find_map(|k| result.get(*k).filter(|v| v.is_object()).map(|v| (*k, v)));
    let (kind, obj) = match inner {
        Some(found) => found,
        None => (
            result.get("kind").and_then(Value::as_str).unwrap_or(""),
            result,
        ),
    };
    let is_task = kind == "task"
        || (kind.is_empty() && obj.get("status").is_some() && obj.get("taskId").is_none());
    out.task = if is_task {
        s(obj.get("id"))
    } else {
        s(obj.get("taskId"))
    };
    out.context = s(obj.get("contextId"));
    out.state = s(obj.get("status").and_then(|st| st.get("state")));
    out
}

/// Normalises a task state to the 1.0 spelling (`TASK_STATE_COMPLETED`).
pub fn state_name(state: &str) -> String {
    if state.starts_with("TASK_STATE_") {
        return state.to_owned();
    }
    format!(
        "TASK_STATE_{}",
        state.replace('-', "_").to_ascii_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jsonrpc_names_of_both_generations() {
        assert_eq!(jsonrpc("message/send"), Some((SEND, Version::V03)));
        assert_eq!(
            jsonrpc("SendStreamingMessage"),
            Some((STREAM, Version::V10))
        );
        assert_eq!(
            jsonrpc("tasks/resubscribe"),
            Some((SUBSCRIBE, Version::V03))
        );
        assert_eq!(jsonrpc("tasks/delete"), None);
        assert_eq!(jsonrpc("sendmessage"), None);
    }

    #[test]
    fn rest_paths() {
        let t = |m: Method, p: &str| rest(&m, p).map(|(o, id)| (o.name, id));
        assert_eq!(
            t(Method::POST, "/a2a/rest/message:send"),
            Some(("SendMessage", None))
        );
        assert_eq!(
            t(Method::POST, "/v1/message:stream"),
            Some(("SendStreamingMessage", None))
        );
        assert_eq!(
            t(Method::GET, "/rest/tasks/t1"),
            Some(("GetTask", Some("t1".into())))
        );
        assert_eq!(
            t(Method::POST, "/tasks/t1:cancel"),
            Some(("CancelTask", Some("t1".into())))
        );
        assert_eq!(
            t(Method::GET, "/acme/tasks/t1:subscribe"),
            Some(("SubscribeToTask", Some("t1".into())))
        );
        assert_eq!(t(Method::GET, "/tasks"), Some(("ListTasks", None)));
        assert_eq!(
            t(Method::POST, "/v1/tasks/t1/pushNotificationConfigs"),
            Some(("CreateTaskPushNotificationConfig", Some("t1".into())))
        );
        assert_eq!(
            t(Method::DELETE, "/tasks/t1/pushNotificationConfigs/c1"),
            Some(("DeleteTaskPushNotificationConfig", Some("t1".into())))
        );
        assert_eq!(
            t(Method::GET, "/v1/card"),
            Some(("GetExtendedAgentCard", None))
        );
        assert_eq!(t(Method::DELETE, "/tasks/t1"), None);
        assert_eq!(t(Method::GET, "/admin"), None);
    }

    #[test]
    fn ids_in_requests_and_results() {
        let p = json!({"message": {"taskId": "t", "contextId": "c", "parts": []}});
        assert_eq!(request_ids(SEND, &p), (Some("t".into()), Some("c".into())));
        assert_eq!(request_ids(GET, &json!({"id": "t"})).0, Some("t".into()));
        assert_eq!(
            request_ids(PUSH_SET, &json!({"taskId": "t", "url": "x"})).0,
            Some("t".into())
        );
        // 0.3 task, 1.0 task, 0.3 status update, 1.0 artifact update, 1.0 message.
        let v03 =
            json!({"kind": "task", "id": "t", "contextId": "c", "status": {"state": "completed"}});
        assert_eq!(
            seen(&v03),
            Seen {
                task: Some("t".into()),
                context: Some("c".into()),
                state: Some("completed".into())
            }
        );
        let v10 = json!({"task": {"id": "t", "contextId": "c", "status": {"state": "TASK_STATE_WORKING"}}});
        assert_eq!(seen(&v10).task.as_deref(), Some("t"));
        let up = json!({"kind": "status-update", "taskId": "t", "contextId": "c", "status": {"state": "input-required"}});
        assert_eq!(seen(&up).state.as_deref(), Some("input-required"));
        let art = json!({"artifactUpdate": {"taskId": "t", "contextId": "c", "artifact": {}}});
        assert_eq!(seen(&art).task.as_deref(), Some("t"));
        let msg = json!({"message": {"messageId": "m", "contextId": "c", "parts": []}});
        assert_eq!(
            seen(&msg),
            Seen {
                task: None,
                context: Some("c".into()),
                state: None
            }
        );
        assert_eq!(state_name("input-required"), "TASK_STATE_INPUT_REQUIRED");
    }

    #[test]
    fn version_header() {
        assert_eq!(Version::from_header(None), Some(Version::V03));
        assert_eq!(Version::from_header(Some("1.0")), Some(Version::V10));
        assert_eq!(Version::from_header(Some("0.3")), Some(Version::V03));
        assert_eq!(Version::from_header(Some("2.0")), None);
    }
}
