//! CEL policies in the model layer: allow, deny with the rule's name, default deny, redaction,
//! and denials in the audit chain.

use serde_json::json;
use tollgate_testkit::MockUpstream;

use crate::harness::*;

#[tokio::test]
async fn policies_decide_model_calls() {
    let up = MockUpstream::start().await;
    let yaml = format!(
        r#"providers:
  - name: up
    kind: openai
    base_url: {}
models:
  - name: m
    targets: [{{provider: up}}]
policies:
  - name: interns
    applies_to: "principal.team == 'interns'"
    rules:
      - name: no-streaming
        when: "request.stream"
        action: deny
        reason: interns may not stream
      - name: small-only
        when: "request.max_tokens <= 100 && request.model == 'm'"
        action: allow
  - name: privacy
    rules:
      - name: strip-user
        when: "true"
        action: redact
        paths: [user]
"#,
        up.base_url()
    );
    let t = start(&yaml).await;
    t.team("interns", &[]).await;
    t.team("staff", &[]).await;
    let (_, intern) = t.key(json!({"name": "i", "team": "interns"})).await;
    let (_, staff) = t.key(json!({"name": "s", "team": "staff"})).await;
    let body = |max: Option<i64>, stream: bool| {
        let mut b = chat_body("m", "x");
        b["user"] = json!("alice@example.com");
        b["stream"] = json!(stream);
        if let Some(m) = max {
            b["max_tokens"] = json!(m);
        }
        b
    };

    let res = t
        .client
        .post_json("/v1/chat/completions", &intern, &body(Some(50), false))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let sent = up.wait_for_requests(1).await;
    assert!(
        sent[0].json().get("user").is_none(),
        "redacted before forwarding"
    );
    assert_eq!(sent[0].json()["max_tokens"], 50);

    let auth = format!("Bearer {intern}");
    let res = t
        .client
        .send(
            http::Method::POST,
            "/v1/chat/completions",
            &[
                ("authorization", &auth),
                ("x-tollgate-conversation-id", "conv-7"),
            ],
            body(Some(50), true).to_string(),
        )
        .await;
    assert_eq!(res.status, 403);
    let res_trace = res.header("x-tollgate-trace-id").map(str::to_owned);
    let err = res.json();
    assert_eq!(err["error"]["code"], "policy_denied");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("interns/no-streaming") && msg.contains("interns may not stream"),
        "{msg}"
    );

    let res = t
        .client
        .post_json("/v1/chat/completions", &intern, &body(None, false))
        .await;
    assert_eq!(res.status, 403);
    assert!(res.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("interns/default"));

    let res = t
        .client
        .post_json("/v1/chat/completions", &staff, &body(None, false))
        .await;
    assert_eq!(res.status, 200, "the interns set does not apply to staff");

    t.gw.core.audit.flush().await;
    let records = t.gw.core.stores.audit.read_audit(0, 100).await.unwrap();
    let denials: Vec<_> = records
        .iter()
        .filter(|r| r.action == "policy.deny")
        .collect();
    assert_eq!(denials.len(), 2);
    assert_eq!(denials[0].rule.as_deref(), Some("interns/no-streaming"));
    assert_eq!(denials[0].target.as_deref(), Some("m"));
    assert_eq!(denials[0].conversation_id.as_deref(), Some("conv-7"));
    assert_eq!(denials[0].trace_id.as_deref(), res_trace.as_deref());
    assert_eq!(denials[1].rule.as_deref(), Some("interns/default"));
    assert_eq!(
        tollgate_core::audit::verify(t.gw.core.stores.audit.as_ref())
            .await
            .unwrap()
            .map(|n| n > 0),
        Ok(true)
    );
}
