//! Approvals: a tool call that policy sends to `require_approval` is held while someone
//! decides. A client that declared elicitation is asked directly (`elicitation/create`);
//! otherwise the call joins the approval queue in the admin API and waits there up to
//! `mcp.approvals.wait`. If it times out, the approval stays open until `mcp.approvals.ttl`,
//! and the same call made again after it was approved goes through.
//!
//! An approval is bound to the exact call: principal, server, tool, the SHA-256 of the
//! canonical arguments and the policy version. It is used once; a changed argument, a
//! different caller or a changed policy needs a new one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tollgate_core::audit::AuditEvent;
use tollgate_core::store::{ApprovalBinding, ApprovalRecord};

use crate::front::Out;
use crate::jsonrpc;
use crate::session::Session;
use crate::McpLayer;

/// How often a held call re-reads its approval (another replica may have decided it).
const POLL: Duration = Duration::from_secs(1);

/// What became of a held call.
pub enum Outcome {
    Approved {
        id: String,
    },
    /// Refused, expired or still pending: the text and `_meta` the tool result carries.
    Refused {
        id: Option<String>,
        text: String,
        status: &'static str,
    },
}

/// The call a decision is asked for.
pub struct Call<'a> {
    pub rule: &'a str,
    pub server: &'a str,
    pub tool: &'a str,
    pub args_sha256: &'a str,
    /// The arguments as an approver sees them (configured fields redacted).
    pub shown: &'a Value,
}

pub fn new_id() -> String {
    let mut b = [0u8; 12];
    if getrandom::fill(&mut b).is_err() {
        // Ids need only be unique; the clock and a counter do when randomness fails.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return format!("apr_{:x}{n:x}", tollgate_core::time::now_ms());
    }
    format!("apr_{}", tollgate_core::hex::encode(&b))
}

/// Holds a call until it is approved, refused or the wait runs out.
pub async fn obtain(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    out: &mpsc::Sender<Out>,
    call: Call<'_>,
) -> Outcome {
    let (wait, ttl, policy_version) = {
        let state = layer.state.load();
        (
            state.config.approvals.wait,
            state.config.approvals.ttl,
            state.policy.version().to_owned(),
        )
    };
    let binding = ApprovalBinding {
        principal: session.owner.clone(),
        server: call.server.to_owned(),
        tool: call.tool.to_owned(),
        args_sha256: call.args_sha256.to_owned(),
        policy_version,
    };
    let store = &layer.core.stores.mcp;
    let now = tollgate_core::time::now_ms();
    // An approval given earlier for exactly this call (the caller retried after a wait).
    match store.consume_approval(&binding, None, now).await {
        Ok(Some(a)) => return Outcome::Approved { id: a.id },
        Ok(None) => {}
        Err(e) => {
            return Outcome::Refused {
                id: None,
                text: format!(
                    "this call needs an approval, and approvals cannot be checked now: {e}"
                ),
                status: "unavailable",
            }
        }
    }
    let mut record = ApprovalRecord {
        id: new_id(),
        binding: binding.clone(),
        rule: call.rule.to_owned(),
        session: session.id.clone(),
        arguments: call.shown.clone(),
        status: "pending".to_owned(),
        created_ms: now,
        expires_ms: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)),
        decided_ms: None,
        decided_by: None,
        note: None,
        used_ms: None,
    };
    if client_elicits(session) {
        match elicit(session, out, &call, wait).await {
            Some(approved) => {
                let now = tollgate_core::time::now_ms();
                record.status = if approved { "used" } else { "denied" }.to_owned();
                record.decided_ms = Some(now);
                record.decided_by = Some(format!("client:{}", session.owner));
                record.used_ms = approved.then_some(now);
                if let Err(e) = store.insert_approval(&record).await {
                    tracing::error!(error = %e, "cannot record an approval given by elicitation");
                }
                audit(layer, &record, if approved { "approve" } else { "deny" });
                return if approved {
                    Outcome::Approved { id: record.id }
                } else {
                    Outcome::Refused {
                        id: Some(record.id),
                        text: format!("the user declined to approve {}", call.tool),
                        status: "denied",
                    }
                };
            }
            // The client could not answer: fall back to the queue.
            None => {
                tracing::info!(session = %session.id, "elicitation failed; the approval goes to the admin queue")
            }
        }
    }
    if let Err(e) = store.insert_approval(&record).await {
        return Outcome::Refused {
            id: None,
            text: format!("this call needs an approval, and none can be requested now: {e}"),
            status: "unavailable",
        };
    }
    audit(layer, &record, "request");
    let id = record.id.clone();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = layer.approvals_changed.notified();
        tokio::pin!(changed);
        match store.get_approval(&id).await {
            Ok(Some(a)) if a.status == "approved" => {
                let now = tollgate_core::time::now_ms();
                return match store.consume_approval(&binding, Some(&id), now).await {
                    Ok(Some(_)) => Outcome::Approved { id },
                    _ => Outcome::Refused {
                        id: Some(id),
                        text: "the approval expired or was used already".to_owned(),
                        status: "expired",
                    },
                };
            }
            Ok(Some(a)) if a.status == "denied" => {
                let by = a.decided_by.unwrap_or_default();
                let note = a.note.map(|n| format!(": {n}")).unwrap_or_default();
                return Outcome::Refused {
                    id: Some(id),
                    text: format!("the call was denied by {by}{note}"),
                    status: "denied",
                };
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, approval = %id, "cannot read an approval; retrying")
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Outcome::Refused {
                text: format!(
                    "this call needs an approval; approval {id} is pending. Once an administrator approves it, make the same call again (same arguments)"
                ),
                id: Some(id),
                status: "pending",
            };
        }
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

fn client_elicits(session: &Session) -> bool {
    session
        .client_init
        .pointer("/capabilities/elicitation")
        .is_some_and(Value::is_object)
        && session.version.as_str() >= "2025-06-18"
}

/// Asks the client to approve; `None` when it could not answer (an error, or no answer in
/// time), else whether it approved.
async fn elicit(
    session: &Session,
    out: &mpsc::Sender<Out>,
    call: &Call<'_>,
    wait: Duration,
) -> Option<bool> {
    let (id, answer) = session.ask();
    let args = serde_json::to_string_pretty(call.shown).unwrap_or_default();
    let message = format!(
        "Approve a tool call?\n\nServer: {}\nTool: {}\nArguments:\n{args}\n\nPolicy rule {} requires an approval.",
        call.server, call.tool, call.rule
    );
    let request = jsonrpc::request(
        Value::String(id),
        "elicitation/create",
        json!({
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": {
                    "approve": {
                        "type": "boolean",
                        "title": "Approve",
                        "description": format!("Run {} with these arguments", call.tool),
                        "default": false,
                    }
                },
                "required": ["approve"],
            },
        }),
    );
    out.send(Out::Message(request)).await.ok()?;
    let reply = tokio::time::timeout(wait, answer).await.ok()?.ok()?;
    let result = reply.get("result")?;
    Some(
        result.get("action").and_then(Value::as_str) == Some("accept")
            && result.pointer("/content/approve").and_then(Value::as_bool) == Some(true),
    )
}

/// Records an approval's request or decision in the audit chain.
pub fn audit(layer: &McpLayer, a: &ApprovalRecord, what: &str) {
    let outcome = match what {
        "request" => "pending",
        "approve" => "approved",
        _ => "denied",
    };
    let mut ev = AuditEvent::new(&format!("mcp.approval.{what}"), outcome);
    ev.principal = Some(
        a.decided_by
            .clone()
            .unwrap_or_else(|| a.binding.principal.clone()),
    );
    ev.target = Some(format!("{}/{}", a.binding.server, a.binding.tool));
    ev.rule = Some(a.rule.clone());
    ev.detail = json!({
        "approval": a.id,
        "caller": a.binding.principal,
        "session": a.session,
        "server": a.binding.server,
        "tool": a.binding.tool,
        "args_sha256": a.binding.args_sha256,
        "policy_version": a.binding.policy_version,
        "expires_ms": a.expires_ms,
        "note": a.note,
    });
    if !layer.core.audit.try_record(ev) {
        tracing::error!("audit queue full: an approval event went unrecorded");
    }
}
