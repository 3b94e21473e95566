//! Teams, users and roles over the admin API, and how they reach principals and policies.

use http::Method;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn directory_records_feed_principals() {
    let yaml = format!(
        "{MOCK}policies:\n  - name: roles\n    rules:\n      - name: writers\n        when: \"'writer' in principal.roles && principal.team == 'ml' && principal.tenant == 'acme'\"\n        action: allow\n"
    );
    let t = start(&yaml).await;
    let auth = format!("Bearer {MASTER}");
    let send = |method: Method, path: String, body: serde_json::Value| {
        let client = t.client.clone();
        let auth = auth.clone();
        async move {
            client
                .send(method, &path, &[("authorization", &auth)], body.to_string())
                .await
        }
    };

    t.team("ml", &["reader"]).await;
    let res = send(
        Method::PATCH,
        "/admin/v1/teams/ml".into(),
        json!({"tenant": "acme"}),
    )
    .await;
    assert_eq!(res.json()["tenant"], "acme");
    t.user("alice", Some("ml"), &["writer"]).await;
    assert_eq!(
        send(Method::POST, "/admin/v1/teams".into(), json!({"id": "ml"}))
            .await
            .status,
        409
    );
    assert_eq!(
        send(
            Method::POST,
            "/admin/v1/users".into(),
            json!({"id": "bob", "team": "ghost"})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        send(
            Method::POST,
            "/admin/v1/teams".into(),
            json!({"id": "bad id"})
        )
        .await
        .status,
        400
    );

    let res = t
        .client
        .post_json(
            "/admin/v1/keys",
            MASTER,
            &json!({"name": "k", "team": "nope"}),
        )
        .await;
    assert_eq!(res.status, 400, "keys may only name existing teams");
    assert_eq!(res.json()["error"]["param"], "team");

    // A key of alice's: her team and roles reach the policy.
    let (_, secret) = t.key(json!({"name": "alice-key", "user": "alice"})).await;
    let body = chat_body("mock-echo", "x");
    let chat = || t.client.post_json("/v1/chat/completions", &secret, &body);
    assert_eq!(chat().await.status, 200);

    // Taking the role away takes effect at once.
    let res = send(
        Method::PATCH,
        "/admin/v1/users/alice".into(),
        json!({"roles": []}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["roles"], json!([]));
    assert_eq!(chat().await.status, 403);
    let res = send(
        Method::PATCH,
        "/admin/v1/teams/ml".into(),
        json!({"roles": ["writer", "reader"]}),
    )
    .await;
    assert_eq!(res.json()["roles"], json!(["reader", "writer"]));
    assert_eq!(chat().await.status, 200, "team roles count too");

    let users = t.client.get("/admin/v1/users", MASTER).await.json();
    assert_eq!(users[0]["id"], "alice");
    assert_eq!(users[0]["team"], "ml");
    assert_eq!(
        t.client.get("/admin/v1/teams/ml", MASTER).await.json()["name"],
        "ml"
    );
    assert_eq!(
        t.client.get("/admin/v1/teams/none", MASTER).await.status,
        404
    );

    // Deleting is refused while something depends on the record.
    assert_eq!(
        send(Method::DELETE, "/admin/v1/teams/ml".into(), json!(null))
            .await
            .status,
        409
    );
    assert_eq!(
        send(Method::DELETE, "/admin/v1/users/alice".into(), json!(null))
            .await
            .status,
        409
    );
    let doc = t.client.get("/admin/v1/openapi.json", MASTER).await.json();
    assert!(doc["paths"]["/admin/v1/users/{id}"]["patch"].is_object());
}
