//! The admin console: its files under `/ui`, sign-in with the master key or an admin
//! principal, the session cookie and its CSRF header, and the data it reads (request
//! statistics, audit search and verification, MCP servers, conversations).

use http::Method;
use serde_json::{json, Value};
use tollgate_testkit::TestResponse;

use crate::harness::{chat_body, eventually, start, TestGateway, MASTER, MOCK};

async fn login(t: &TestGateway, key: &str) -> TestResponse {
    t.client
        .send(
            Method::POST,
            "/ui/api/login",
            &[("content-type", "application/json"), ("host", "127.0.0.1")],
            json!({ "key": key }).to_string(),
        )
        .await
}

/// The cookie pair (`name=value`) a response sets.
fn cookie_of(res: &TestResponse) -> String {
    let set = res.header("set-cookie").expect("a session cookie");
    set.split(';').next().unwrap().to_owned()
}

/// A console request: the session cookie and, unless `None`, the CSRF header.
async fn console(
    t: &TestGateway,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Value,
) -> TestResponse {
    let mut headers = vec![("cookie", cookie), ("content-type", "application/json")];
    if let Some(c) = csrf {
        headers.push(("x-tollgate-csrf", c));
    }
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    t.client.send(method, path, &headers, body).await
}

/// The admin API refuses the session `cookie` stands for as ended.
async fn assert_session_ended(t: &TestGateway, cookie: &str, csrf: &str) {
    let res = console(
        t,
        Method::GET,
        "/admin/v1/keys",
        cookie,
        Some(csrf),
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert_eq!(res.json()["error"]["code"], "session_expired");
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_pages_fall_back_to_the_app() {
    let t = start(MOCK).await;
    for path in ["/ui", "/ui/", "/ui/keys", "/ui/keys/abc", "/ui/index.html"] {
        let res = t.client.send(Method::GET, path, &[], "").await;
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(
            res.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        let csp = res.header("content-security-policy").unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
        assert!(res.text().contains("<html"), "{path}");
    }
    // Unknown files are a JSON 404; the validator saves a download.
    let res = t.client.send(Method::GET, "/ui/missing.js", &[], "").await;
    assert_eq!(res.status, 404);
    assert!(res.json()["error"]["message"].is_string());
    let first = t.client.send(Method::GET, "/ui", &[], "").await;
    let etag = first.header("etag").unwrap().to_owned();
    let again = t
        .client
        .send(Method::GET, "/ui", &[("if-none-match", &etag)], "")
        .await;
    assert_eq!(again.status, 304);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn sign_in_sets_a_cookie_that_needs_its_csrf_header() {
    let t = start(MOCK).await;
    // Wrong and missing keys, and a key that is not an administrator's.
    let res = login(&t, "tg-not-a-key").await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert!(res.header("set-cookie").is_none());
    assert_eq!(login(&t, "").await.status, 400);
    let (_, plain) = t.key(json!({"name": "plain"})).await;
    let res = login(&t, &plain).await;
    assert_eq!(res.status, 403, "{}", res.text());

    let res = login(&t, MASTER).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let set = res.header("set-cookie").unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    // Plain HTTP on a loopback name: a browser would drop a Secure cookie there.
    assert!(!set.contains("Secure"), "{set}");
    let body = res.json();
    assert_eq!(body["principal"], "master");
    let csrf = body["csrf"].as_str().unwrap().to_owned();
    let cookie = cookie_of(&res);

    // The session answers with the same CSRF token.
    let s = console(
        &t,
        Method::GET,
        "/ui/api/session",
        &cookie,
        None,
        Value::Null,
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.json()["csrf"], csrf.as_str());

    // The cookie alone is refused, with a wrong token too; with the token it works.
    let create = json!({"name": "from-console"});
    for bad in [None, Some("0000")] {
        let res = console(
            &t,
            Method::POST,
            "/admin/v1/keys",
            &cookie,
            bad,
            create.clone(),
        )
        .await;
        assert_eq!(res.status, 403, "{}", res.text());
        assert_eq!(res.json()["error"]["code"], "csrf_failed");
    }
    let res = console(
        &t,
        Method::POST,
        "/admin/v1/keys",
        &cookie,
        Some(&csrf),
        create,
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = console(
        &t,
        Method::GET,
        "/admin/v1/keys",
        &cookie,
        Some(&csrf),
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200);

    // A forged or altered cookie is no session.
    let forged = cookie.replacen("v2.", "v2.9", 1);
    let res = console(
        &t,
        Method::GET,
        "/admin/v1/keys",
        &forged,
        Some(&csrf),
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 401, "{}", res.text());
    // The cookie is not a credential anywhere else.
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("cookie", &cookie), ("x-tollgate-csrf", &csrf)],
            chat_body("mock-echo", "hi").to_string(),
        )
        .await;
    assert_eq!(res.status, 401);

    // Sign-ins are audited; signing out clears the cookie.
    let res = console(
        &t,
        Method::POST,
        "/ui/api/logout",
        &cookie,
        None,
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 403);
    let res = console(
        &t,
        Method::POST,
        "/ui/api/logout",
        &cookie,
        Some(&csrf),
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 204);
    assert!(res.header("set-cookie").unwrap().contains("Max-Age=0"));
    // The cookie is recalled on the server too: a copy kept after signing out is no session.
    assert_session_ended(&t, &cookie, &csrf).await;
    let audit = t
        .client
        .get("/admin/v1/audit?action=console.*", MASTER)
        .await
        .json();
    let actions: Vec<(&str, &str)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("console.logout", "success"),
            ("console.login", "success"),
            ("console.login", "failure"),
            ("console.login", "failure"),
        ]
    );
    t.gw.shutdown().await;
}

#[tokio::test]
async fn signing_out_ends_earlier_sessions_and_failed_sign_ins_are_throttled() {
    let t = start(MOCK).await;
    // Two sessions of the master key (two browsers); signing out of one ends both, and a new
    // sign-in afterwards works.
    let (a, b) = (login(&t, MASTER).await, login(&t, MASTER).await);
    let (cookie_a, cookie_b) = (cookie_of(&a), cookie_of(&b));
    let csrf_a = a.json()["csrf"].as_str().unwrap().to_owned();
    let res = console(
        &t,
        Method::POST,
        "/ui/api/logout",
        &cookie_a,
        Some(&csrf_a),
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 204);
    for cookie in [&cookie_a, &cookie_b] {
        let res = console(
            &t,
            Method::GET,
            "/ui/api/session",
            cookie,
            None,
            Value::Null,
        )
        .await;
        assert_eq!(res.status, 401, "{}", res.text());
    }
    let c = login(&t, MASTER).await;
    assert_eq!(c.status, 200);
    let res = console(
        &t,
        Method::GET,
        "/ui/api/session",
        &cookie_of(&c),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());

    // Successful sign-ins do not count; ten failures from one address do, and then even the
    // right key waits.
    for _ in 0..10 {
        assert_eq!(login(&t, "tg-wrong-guess").await.status, 401);
    }
    let res = login(&t, MASTER).await;
    assert_eq!(res.status, 429, "{}", res.text());
    assert_eq!(res.json()["error"]["code"], "too_many_sign_ins");
    let wait: u64 = res.header("retry-after").unwrap().parse().unwrap();
    // The window is five minutes, counted in slots of ten seconds.
    assert!((1..=310).contains(&wait), "{wait}");
    assert!(res.header("set-cookie").is_none());
    // The API keys themselves are not affected.
    assert_eq!(t.client.get("/admin/v1/keys", MASTER).await.status, 200);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn admin_principals_sign_in_and_lose_their_session_with_their_key() {
    let t = start(MOCK).await;
    t.team("ops", &["admin"]).await;
    let (id, secret) = t.key(json!({"name": "operator", "team": "ops"})).await;
    // The admin role opens the admin API directly too.
    assert_eq!(t.client.get("/admin/v1/keys", &secret).await.status, 200);
    let res = login(&t, &secret).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let csrf = res.json()["csrf"].as_str().unwrap().to_owned();
    let cookie = cookie_of(&res);
    let list = console(
        &t,
        Method::GET,
        "/admin/v1/keys",
        &cookie,
        Some(&csrf),
        Value::Null,
    )
    .await;
    assert_eq!(list.status, 200);
    // Revoking the key ends the session at once.
    let res = t
        .client
        .post_json(&format!("/admin/v1/keys/{id}/revoke"), MASTER, &json!({}))
        .await;
    assert_eq!(res.status, 200);
    assert_session_ended(&t, &cookie, &csrf).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn stats_count_requests_errors_latency_and_spend() {
    let yaml = format!(
        "{MOCK}prices:\n  - model: echo\n    provider: demo\n    input_per_mtok: 1000\n    output_per_mtok: 2000\n"
    );
    let t = start(&yaml).await;
    let key = t.any_key().await;
    for i in 0..5 {
        let res = t
            .client
            .post_json(
                "/v1/chat/completions",
                &key,
                &chat_body("mock-echo", &format!("hello {i}")),
            )
            .await;
        assert_eq!(res.status, 200);
    }
    // A record is written once its response has gone out.
    eventually("the five requests are in the ledger", || async {
        let s = t
            .client
            .get("/admin/v1/stats?since=1h", MASTER)
            .await
            .json();
        s["totals"]["requests"] == 5
    })
    .await;
    let stats = t
        .client
        .get("/admin/v1/stats?since=1h&buckets=12", MASTER)
        .await;
    assert_eq!(stats.status, 200, "{}", stats.text());
    let s = stats.json();
    assert_eq!(s["totals"]["requests"], 5);
    assert_eq!(s["totals"]["errors"], 0);
    assert_eq!(s["bucket_seconds"], 300);
    let series = s["series"].as_array().unwrap();
    assert_eq!(series.len(), 12);
    let counted: u64 = series.iter().map(|b| b["requests"].as_u64().unwrap()).sum();
    assert_eq!(counted, 5);
    assert!(s["totals"]["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(s["totals"]["latency_ms"]["p50"].is_number(), "{s}");
    assert_eq!(s["spend_today_usd"], s["totals"]["cost_usd"]);
    assert_eq!(s["spend_month_usd"], s["totals"]["cost_usd"]);
    // Empty buckets have no latency.
    assert!(series.iter().any(|b| b["latency_ms"]["p50"].is_null()));
    for bad in [
        "/admin/v1/stats?buckets=0",
        "/admin/v1/stats?buckets=501",
        "/admin/v1/stats?since=yesterday-ish",
        "/admin/v1/stats?since=1h&until=2h",
        "/admin/v1/stats?nope=1",
    ] {
        let res = t.client.get(bad, MASTER).await;
        assert_eq!(res.status, 400, "{bad}: {}", res.text());
        assert!(res.json()["error"]["message"].is_string());
    }
    assert_eq!(t.client.get("/admin/v1/stats", &key).await.status, 403);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn the_audit_log_is_searched_paged_and_verified() {
    let t = start(MOCK).await;
    for i in 0..7 {
        t.key(json!({"name": format!("k{i}")})).await;
    }
    let page = t
        .client
        .get("/admin/v1/audit?action=key.*&limit=3", MASTER)
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let page = page.json();
    let seqs: Vec<i64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 3);
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    let before = page["next_before"].as_i64().unwrap();
    let rest = t
        .client
        .get(
            &format!("/admin/v1/audit?action=key.*&before={before}&limit=100"),
            MASTER,
        )
        .await
        .json();
    assert_eq!(rest["data"].as_array().unwrap().len(), 4);
    assert!(rest["next_before"].is_null());
    let first = &page["data"][0];
    assert_eq!(first["action"], "key.create");
    assert!(first["hash"].is_string() && first["time"].is_string());
    let none = t
        .client
        .get("/admin/v1/audit?action=key.cre", MASTER)
        .await
        .json();
    assert_eq!(none["data"].as_array().unwrap().len(), 0, "exact unless *");
    assert_eq!(
        t.client.get("/admin/v1/audit?limit=0", MASTER).await.status,
        400
    );
    let v = t.client.get("/admin/v1/audit/verify", MASTER).await;
    assert_eq!(v.status, 200, "{}", v.text());
    let v = v.json();
    assert_eq!(v["status"], "intact");
    assert_eq!(v["records"], v["head_seq"]);
    assert!(v["records"].as_i64().unwrap() >= 7);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn conversations_and_mcp_servers_are_listed() {
    let yaml = format!(
        "{MOCK}prices:\n  - model: echo\n    provider: demo\n    input_per_mtok: 1000\n    output_per_mtok: 2000\nmcp:\n  servers:\n    - name: files\n      url: http://127.0.0.1:9/mcp\n    - name: local\n      command: /bin/true\n"
    );
    let t = start(&yaml).await;
    let key = t.any_key().await;
    for conv in ["c-1", "c-2", "c-2"] {
        let res = t
            .client
            .send(
                Method::POST,
                "/v1/chat/completions",
                &[
                    ("authorization", &format!("Bearer {key}")),
                    ("x-tollgate-conversation-id", conv),
                ],
                chat_body("mock-echo", "hello").to_string(),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.text());
    }
    eventually("both conversations are listed", || async {
        let list = t.client.get("/admin/v1/conversations", MASTER).await.json();
        let calls: Vec<(String, u64)> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["conversation_id"].as_str().unwrap().to_owned(),
                    c["model_calls"].as_u64().unwrap(),
                )
            })
            .collect();
        calls == [("c-2".to_owned(), 2), ("c-1".to_owned(), 1)]
    })
    .await;
    let servers = t.client.get("/admin/v1/mcp/servers", MASTER).await;
    assert_eq!(servers.status, 200, "{}", servers.text());
    let servers = servers.json();
    let list = servers["servers"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "files");
    assert_eq!(list[0]["transport"], "streamable_http");
    assert_eq!(list[0]["address"], "http://127.0.0.1:9/mcp");
    assert_eq!(list[1]["transport"], "stdio");
    assert_eq!(list[1]["tools"], 0);
    t.gw.shutdown().await;
}
