//! The agent layer against scripted in-process agents (the testkit's mock upstream answering
//! A2A JSON): the admin-managed registry, task affinity shared by two gateways through Redis,
//! push delivery retried with backoff, and one conversation joining an agent hop with the
//! model call the agent made with its delegated token. The official SDK peers are exercised
//! end to end in e2e/test_a2a_gateway.py.

use http::Method;
use serde_json::{json, Value};
use tollgate_testkit::{MockUpstream, Reply};

use crate::harness::*;

fn task(id: &str, context: &str, state: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "result": {"task": {
        "id": id, "contextId": context, "status": {"state": state}
    }}})
}

fn send(text: &str, task_id: Option<&str>, context: Option<&str>) -> Value {
    let mut m = json!({"messageId": format!("m-{}", fastrand::u64(..)), "role": "ROLE_USER",
        "parts": [{"text": text}]});
    if let Some(t) = task_id {
        m["taskId"] = t.into();
    }
    if let Some(c) = context {
        m["contextId"] = c.into();
    }
    json!({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": m}})
}

async fn rpc(t: &TestGateway, agent: &str, key: &str, body: &Value) -> TestResponse {
    let auth = format!("Bearer {key}");
    t.client
        .send(
            Method::POST,
            &format!("/a2a/{agent}/rpc"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("a2a-version", "1.0"),
            ],
            body.to_string(),
        )
        .await
}

type TestResponse = tollgate_testkit::TestResponse;

#[tokio::test]
async fn agents_registered_through_the_admin_api_are_served() {
    let up = MockUpstream::start().await;
    let t = start("a2a:\n  agents:\n    - name: fixed\n      url: http://127.0.0.1:9\n").await;
    let spec = json!({"url": up.base_url(), "methods": ["SendMessage", "GetTask"],
        "headers": {"x-agent-key": "agent-s3cret-key"}});
    let res = t
        .client
        .send(
            Method::PUT,
            "/admin/v1/a2a/agents/dyn",
            &[
                ("authorization", &format!("Bearer {MASTER}")),
                ("content-type", "application/json"),
            ],
            spec.to_string(),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.json()["agent"]["headers"]["x-agent-key"], "<redacted>");
    // Served at once, with the gateway's token and the configured credential.
    up.push(Reply::json(200, task("t1", "c1", "TASK_STATE_COMPLETED")));
    let res = rpc(&t, "dyn", MASTER, &send("hi", None, None)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["result"]["task"]["id"], "t1");
    let seen = up.requests();
    assert_eq!(seen[0].headers["x-agent-key"], "agent-s3cret-key");
    assert!(seen[0].headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with("Bearer ey"));
    // An agent quoting the credential the gateway sent it does not hand it to the caller.
    up.push(Reply::json(
        401,
        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "bad key agent-s3cret-key"}}),
    ));
    let res = rpc(&t, "dyn", MASTER, &send("hi", None, None)).await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert_eq!(res.json()["error"]["message"], "bad key [redacted]");
    // The allow-list applies.
    let cancel = json!({"jsonrpc": "2.0", "id": 2, "method": "CancelTask", "params": {"id": "t1"}});
    let res = rpc(&t, "dyn", MASTER, &cancel).await;
    assert_eq!(res.status, 403, "{}", res.text());
    assert_eq!(res.json()["error"]["code"], -32050);
    // Listed beside the config's agent; config agents cannot be changed here.
    let list = t.client.get("/admin/v1/a2a/agents", MASTER).await.json();
    let names: Vec<&str> = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fixed", "dyn"]);
    let res = t
        .client
        .send(
            Method::PUT,
            "/admin/v1/a2a/agents/fixed",
            &[("authorization", &format!("Bearer {MASTER}"))],
            spec.to_string(),
        )
        .await;
    assert_eq!(res.status, 409, "{}", res.text());
    let bad = json!({"url": "ftp://x", "methods": ["Nope"]});
    let res = t
        .client
        .send(
            Method::PUT,
            "/admin/v1/a2a/agents/broken",
            &[("authorization", &format!("Bearer {MASTER}"))],
            bad.to_string(),
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(res.text().contains("methods"), "{}", res.text());
    // Non-master callers cannot manage agents.
    let (_, key) = t.key(json!({"name": "k"})).await;
    let res = t.client.get("/admin/v1/a2a/agents", &key).await;
    assert_eq!(res.status, 403);
    // Deleted: gone from the registry and from serving.
    let res = t
        .client
        .send(
            Method::DELETE,
            "/admin/v1/a2a/agents/dyn",
            &[("authorization", &format!("Bearer {MASTER}"))],
            "",
        )
        .await;
    assert_eq!(res.status, 204, "{}", res.text());
    let res = rpc(&t, "dyn", MASTER, &send("hi", None, None)).await;
    assert_eq!(res.status, 404, "{}", res.text());
}

#[tokio::test]
async fn follow_ups_reach_the_owning_replica_through_either_gateway() {
    let url = REDIS_URL;
    if !redis_up("the shared affinity test").await {
        return;
    }
    let prefix = format!("tollgate-it:{:016x}:", fastrand::u64(..));
    let (r0, r1) = (MockUpstream::start().await, MockUpstream::start().await);
    let config = base_yaml().replace(
        "  database_url: memory://\n",
        &format!("  database_url: memory://\n  redis_url: {url}\n  redis_prefix: \"{prefix}\"\n"),
    ) + &format!(
        "a2a:\n  agents:\n    - name: multi\n      urls: [{}, {}]\n",
        r0.base_url(),
        r1.base_url()
    );
    let a = start_yaml(&config).await;
    let b = start_yaml(&config).await;
    // Two new conversations through gateway A land on different replicas.
    r0.push(Reply::json(
        200,
        task("t-a", "c-a", "TASK_STATE_INPUT_REQUIRED"),
    ));
    r1.push(Reply::json(
        200,
        task("t-b", "c-b", "TASK_STATE_INPUT_REQUIRED"),
    ));
    for text in ["one", "two"] {
        let res = rpc(&a, "multi", MASTER, &send(text, None, None)).await;
        assert_eq!(res.status, 200, "{}", res.text());
    }
    let owner_of = |t: &str| if t == "t-a" { &r0 } else { &r1 };
    let (ta, tb) = (owner_of("t-a").count(), owner_of("t-b").count());
    assert_eq!((ta, tb), (1, 1), "one new conversation per replica");
    // Follow-ups through gateway B go where each task lives, whatever B's own rotation.
    for (tid, ctx) in [
        ("t-a", "c-a"),
        ("t-b", "c-b"),
        ("t-a", "c-a"),
        ("t-b", "c-b"),
    ] {
        let owner = owner_of(tid);
        let before = owner.count();
        owner.push(Reply::json(200, task(tid, ctx, "TASK_STATE_COMPLETED")));
        // The route is written off the request path: retry until it is there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let res = rpc(&b, "multi", MASTER, &send("more", Some(tid), Some(ctx))).await;
            if owner.count() > before {
                assert_eq!(res.status, 200, "{}", res.text());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{tid} never reached its replica"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // Another caller naming the task is told it does not exist.
    let (_, key) = b.key(json!({"name": "other"})).await;
    let get = json!({"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": "t-a"}});
    let res = rpc(&b, "multi", &key, &get).await;
    assert_eq!(res.json()["error"]["code"], -32001, "{}", res.text());
    clean_redis(&prefix).await;
}

#[tokio::test]
async fn push_notifications_are_relayed_and_retried() {
    let agent = MockUpstream::start().await;
    let hook = MockUpstream::start().await;
    let t = start(&format!(
        "a2a:\n  push:\n    allow: [\"127.0.0.0/8\"]\n    attempts: 3\n  agents:\n    - name: pusher\n      url: {}\n",
        agent.base_url()
    ))
    .await;
    let register = json!({"jsonrpc": "2.0", "id": 1, "method": "CreateTaskPushNotificationConfig",
        "params": {"taskId": "t9", "url": format!("{}/hook", hook.base_url()), "token": "client-token",
            "authentication": {"scheme": "Bearer", "credentials": "client-secret"}}});
    agent.push(Reply::json(
        200,
        json!({"jsonrpc": "2.0", "id": 1, "result": {"taskId": "t9", "id": "p1"}}),
    ));
    let res = rpc(&t, "pusher", MASTER, &register).await;
    assert_eq!(res.status, 200, "{}", res.text());
    // The agent saw the gateway's callback and token, not the client's.
    let sent = agent.requests()[0].json();
    let params = &sent["params"];
    let callback = params["url"].as_str().unwrap();
    assert!(callback.contains("/a2a/_push/"), "{callback}");
    assert_ne!(params["token"], "client-token");
    assert!(params.get("authentication").is_none());
    let relay_token = params["token"].as_str().unwrap().to_owned();
    let path = callback.split_once("/a2a/").unwrap().1;
    let event = json!({"statusUpdate": {"taskId": "t9", "contextId": "c9",
        "status": {"state": "TASK_STATE_COMPLETED"}}});
    // A forged token is refused; the real one is accepted and delivered after one failure.
    let res = t
        .client
        .send(
            Method::POST,
            &format!("/a2a/{path}"),
            &[
                ("x-a2a-notification-token", "forged"),
                ("content-type", "application/json"),
            ],
            event.to_string(),
        )
        .await;
    assert_eq!(res.status, 404);
    hook.push(Reply::json(503, json!({"error": "busy"})));
    hook.push(Reply::json(200, json!({})));
    let res = t
        .client
        .send(
            Method::POST,
            &format!("/a2a/{path}"),
            &[
                ("a2a-notification-token", &relay_token),
                ("content-type", "application/json"),
            ],
            event.to_string(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let got = hook.wait_for_requests(2).await;
    for r in &got {
        assert!(r.path.ends_with("/hook"), "{}", r.path);
        assert_eq!(r.headers["authorization"], "Bearer client-secret");
        assert_eq!(r.headers["a2a-notification-token"], "client-token");
        assert_eq!(r.json()["statusUpdate"]["taskId"], "t9");
    }
    // The delivery is audited under the task's conversation.
    eventually("the delivery is audited", || async {
        let v = t
            .client
            .get("/admin/v1/conversations/c9", MASTER)
            .await
            .json();
        v["agent_calls"].as_array().is_some_and(|calls| {
            calls.iter().any(|c| {
                c["action"] == "a2a.push"
                    && c["outcome"] == "success"
                    && c["detail"]["attempts"] == 2
            })
        })
    })
    .await;
}

#[tokio::test]
async fn one_conversation_joins_the_agent_hop_and_its_model_call() {
    let agent = MockUpstream::start().await;
    let t = start(&format!(
        "{MOCK}a2a:\n  agents:\n    - name: planner\n      url: {}\n",
        agent.base_url()
    ))
    .await;
    let (key_id, key) = t.key(json!({"name": "caller"})).await;
    agent.push(Reply::json(
        200,
        task("t1", "conv-1", "TASK_STATE_COMPLETED"),
    ));
    let res = rpc(&t, "planner", &key, &send("plan", None, None)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    // The agent made the conversation's id; the follow-up carries it to the agent, with a
    // token for the agent, on the caller's behalf.
    assert!(!agent.requests()[0]
        .headers
        .contains_key("x-tollgate-conversation-id"));
    agent.push(Reply::json(
        200,
        task("t1", "conv-1", "TASK_STATE_COMPLETED"),
    ));
    let res = rpc(
        &t,
        "planner",
        &key,
        &send("and then", Some("t1"), Some("conv-1")),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let seen = &agent.requests()[1];
    assert_eq!(seen.headers["x-tollgate-conversation-id"], "conv-1");
    let token = seen.headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let jwks = t.client.get("/a2a/.well-known/jwks.json", "").await.json();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["planner"]);
    v.set_issuer(&["tollgate"]);
    let claims = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &v,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], key_id);
    // The agent calls a model with that token and the conversation id.
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
                ("x-tollgate-conversation-id", "conv-1"),
            ],
            chat_body("mock-echo", "what next").to_string(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = t
        .client
        .get("/admin/v1/conversations/conv-1", MASTER)
        .await
        .json();
    assert_eq!(v["totals"]["agent_calls"], 2, "{v}");
    assert_eq!(v["totals"]["model_calls"], 1, "{v}");
    assert!(v["totals"]["prompt_tokens"].as_u64().unwrap() > 0, "{v}");
    let hop = &v["agent_calls"][0];
    assert_eq!(hop["detail"]["agent"], "planner");
    assert_eq!(hop["detail"]["task_id"], "t1");
    assert_eq!(hop["principal"], key_id.as_str());
    let call = &v["model_calls"][0];
    assert_eq!(call["agent"], "planner", "{call}");
    assert_eq!(call["principal"], format!("jwt:{key_id}"));
    // Only the master key reads conversations.
    assert_eq!(
        t.client
            .get("/admin/v1/conversations/conv-1", &key)
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn agent_hops_export_invoke_agent_spans_and_carry_the_trace() {
    use prost::Message;
    use tollgate_core::otlp::{any_value::Value as V, ExportTraceServiceRequest};

    let collector = MockUpstream::start().await;
    for _ in 0..4 {
        collector.push(Reply::raw(200, "{}"));
    }
    let agent = MockUpstream::start().await;
    let t = start(&format!(
        "telemetry:\n  otlp:\n    endpoint: http://{}\n    export_interval: 50ms\na2a:\n  agents:\n    - name: tracer\n      url: {}\n",
        collector.addr,
        agent.base_url()
    ))
    .await;
    // A streamed answer: the span ends with the stream and carries the final state.
    let events = [
        json!({"jsonrpc": "2.0", "id": 1, "result": {"task": {"id": "t7", "contextId": "c7", "status": {"state": "TASK_STATE_WORKING"}}}}),
        json!({"jsonrpc": "2.0", "id": 1, "result": {"statusUpdate": {"taskId": "t7", "contextId": "c7", "status": {"state": "TASK_STATE_COMPLETED"}}}}),
    ];
    agent.push(Reply::sse(&events, std::time::Duration::from_millis(5)));
    let mut body = send("stream it", None, None);
    body["method"] = "SendStreamingMessage".into();
    let res = t
        .client
        .send(
            Method::POST,
            "/a2a/tracer/rpc",
            &[
                ("authorization", &format!("Bearer {MASTER}")),
                ("content-type", "application/json"),
                ("a2a-version", "1.0"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
            body.to_string(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(
        res.text().contains("TASK_STATE_COMPLETED"),
        "{}",
        res.text()
    );

    let requests = collector.wait_for_requests(1).await;
    let export = ExportTraceServiceRequest::decode(requests[0].body.clone()).unwrap();
    let span = export
        .resource_spans
        .into_iter()
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .find(|s| s.name == "invoke_agent tracer")
        .expect("an invoke_agent span");
    let a: std::collections::HashMap<String, V> = span
        .attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect();
    let s = |v: &str| V::StringValue(v.into());
    assert_eq!(a["gen_ai.operation.name"], s("invoke_agent"));
    assert_eq!(a["gen_ai.agent.name"], s("tracer"));
    assert_eq!(a["gen_ai.conversation.id"], s("c7"));
    assert_eq!(a["a2a.method"], s("SendStreamingMessage"));
    assert_eq!(a["a2a.task.id"], s("t7"));
    assert_eq!(a["a2a.task.state"], s("TASK_STATE_COMPLETED"));
    // The agent was called in the same trace, as a child of the gateway's span.
    let trace = tollgate_core::hex::encode(&span.trace_id);
    assert_eq!(trace, "0af7651916cd43dd8448eb211c80319c");
    let sent = agent.requests()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        sent,
        format!(
            "00-{trace}-{}-01",
            tollgate_core::hex::encode(&span.span_id)
        )
    );
}

#[tokio::test]
async fn card_changes_are_detected_and_audited() {
    let agent = MockUpstream::start().await;
    let t = start(&format!(
        "a2a:\n  card_ttl: 1ms\n  agents:\n    - name: shifty\n      url: {}\n",
        agent.base_url()
    ))
    .await;
    let card = |desc: &str| {
        json!({"name": "shifty", "description": desc, "version": "1",
            "supportedInterfaces": [{"url": format!("{}/rpc", agent.base_url()), "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}]})
    };
    let path = "/a2a/shifty/.well-known/agent-card.json";
    agent.push(Reply::json(200, card("first")));
    let res = t.client.get(path, MASTER).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.json()["supportedInterfaces"][0]["url"]
        .as_str()
        .unwrap()
        .ends_with("/a2a/shifty/rpc"));
    // The same card again is no change; another one is.
    agent.push(Reply::json(200, card("first")));
    agent.push(Reply::json(200, card("second")));
    let mut fetched = 1;
    while fetched < 3 {
        let before = agent.count();
        let res = t.client.get(path, MASTER).await;
        assert_eq!(res.status, 200, "{}", res.text());
        if agent.count() > before {
            fetched += 1;
        }
    }
    t.gw.core.audit.flush().await;
    let records = t.gw.core.stores.audit.read_audit(0, 1000).await.unwrap();
    let changes: Vec<_> = records
        .iter()
        .filter(|r| r.action == "a2a.card.changed")
        .collect();
    assert_eq!(changes.len(), 1, "{records:?}");
    let detail: Value = serde_json::from_str(&changes[0].detail).unwrap();
    assert_eq!(changes[0].target.as_deref(), Some("shifty"));
    assert_ne!(detail["sha256"], detail["previous_sha256"]);
}
