//! The admin API: key lifecycle over HTTP, master-key enforcement, OpenAPI, own listener.

use http::Method;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn key_lifecycle() {
    let t = start(MOCK).await;
    t.team("ml", &[]).await;
    t.user("alice", Some("ml"), &[]).await;
    let chat = |secret: String| {
        let client = t.client.clone();
        async move {
            client
                .post_json(
                    "/v1/chat/completions",
                    &secret,
                    &chat_body("mock-echo", "x"),
                )
                .await
                .status
        }
    };

    let res = t.client.post_json("/admin/v1/keys", MASTER, &json!({"name": "svc", "user": "alice", "team": "ml", "models": ["mock-*"], "metadata": {"env": "prod"}, "expires_in": "30d"})).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let created = res.json();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tg-"));
    assert!(secret.starts_with(created["key"]["secret_prefix"].as_str().unwrap()));
    assert_eq!(created["key"]["status"], "active");
    assert_eq!(created["key"]["metadata"]["env"], "prod");
    assert!(created["key"]["expires_at"].is_string());
    assert_eq!(chat(secret.clone()).await, 200);

    // The secret is never shown again.
    let got = t.client.get(&format!("/admin/v1/keys/{id}"), MASTER).await;
    assert_eq!(got.status, 200);
    assert!(!got.text().contains(&secret));
    assert_eq!(got.json()["user"], "alice");

    // Update: disable, then re-enable and clear the user.
    let patch = |body: serde_json::Value| {
        let client = t.client.clone();
        let path = format!("/admin/v1/keys/{id}");
        async move {
            client
                .send(
                    Method::PATCH,
                    &path,
                    &[("authorization", &format!("Bearer {MASTER}"))],
                    body.to_string(),
                )
                .await
        }
    };
    let res = patch(json!({"enabled": false})).await;
    assert_eq!(res.json()["status"], "disabled");
    assert_eq!(chat(secret.clone()).await, 401);
    let res = patch(json!({"enabled": true, "user": null, "models": []})).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["user"], serde_json::Value::Null);
    assert_eq!(res.json()["team"], "ml", "absent fields are kept");
    assert_eq!(chat(secret.clone()).await, 200);
    assert_eq!(
        patch(json!({"colour": "blue"})).await.status,
        400,
        "unknown fields rejected"
    );

    // Rotate with a grace period: both secrets work; with none, only the new one.
    let res = t
        .client
        .post_json(
            &format!("/admin/v1/keys/{id}/rotate"),
            MASTER,
            &json!({"grace": "1h"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let second = res.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(second, secret);
    assert_eq!(
        chat(secret.clone()).await,
        200,
        "old secret works during grace"
    );
    assert_eq!(chat(second.clone()).await, 200);
    let res = t
        .client
        .post_json(
            &format!("/admin/v1/keys/{id}/rotate"),
            MASTER,
            &json!({"grace": "0s"}),
        )
        .await;
    let third = res.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(chat(secret.clone()).await, 401);
    assert_eq!(chat(second.clone()).await, 401);
    assert_eq!(chat(third.clone()).await, 200);

    // Revoke: immediate, and final.
    let res = t
        .client
        .post_json(&format!("/admin/v1/keys/{id}/revoke"), MASTER, &json!({}))
        .await;
    assert_eq!(res.json()["status"], "revoked");
    assert_eq!(chat(third).await, 401);
    assert_eq!(
        t.client
            .post_json(&format!("/admin/v1/keys/{id}/revoke"), MASTER, &json!({}))
            .await
            .status,
        409
    );
    assert_eq!(
        t.client
            .post_json(&format!("/admin/v1/keys/{id}/rotate"), MASTER, &json!({}))
            .await
            .status,
        409
    );
    assert_eq!(
        t.client
            .get("/admin/v1/keys/key_missing", MASTER)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn list_paginates() {
    let t = start(MOCK).await;
    for i in 0..5 {
        t.key(json!({"name": format!("k{i}")})).await;
    }
    let first = t.client.get("/admin/v1/keys?limit=3", MASTER).await.json();
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    let after = first["next_after"].as_str().unwrap();
    let second = t
        .client
        .get(&format!("/admin/v1/keys?limit=3&after={after}"), MASTER)
        .await
        .json();
    assert_eq!(second["data"].as_array().unwrap().len(), 2);
    assert!(second["next_after"].is_null());
    assert_eq!(
        t.client
            .get("/admin/v1/keys?limit=lots", MASTER)
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn admin_needs_the_master_key() {
    let t = start(MOCK).await;
    let key = t.any_key().await;
    assert_eq!(t.client.get("/admin/v1/keys", &key).await.status, 403);
    assert_eq!(t.client.get("/admin/v1/keys", "wrong").await.status, 401);
    let res = t
        .client
        .post_json("/admin/v1/keys", MASTER, &json!({"name": ""}))
        .await;
    assert_eq!(res.status, 400);
    let res = t
        .client
        .send(
            Method::POST,
            "/admin/v1/keys",
            &[("authorization", &format!("Bearer {MASTER}"))],
            "{\"name\": ",
        )
        .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"]["code"], "invalid_json");
}

#[tokio::test]
async fn openapi_document_is_generated() {
    let t = start(MOCK).await;
    let res = t.client.get("/admin/v1/openapi.json", MASTER).await;
    assert_eq!(res.status, 200);
    let doc = res.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/admin/v1/keys/{id}/rotate"]["post"].is_object());
    assert_eq!(
        doc["paths"]["/admin/v1/keys"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/CreateKeyRequest"
    );
}

#[tokio::test]
async fn admin_on_its_own_listener() {
    let t = start(&format!("{MOCK}admin:\n  listen: 127.0.0.1:0\n")).await;
    let admin = tollgate_testkit::TestClient::new(t.gw.admin_addr.unwrap());
    assert_eq!(
        t.client.get("/admin/v1/keys", MASTER).await.status,
        404,
        "not on the main listener"
    );
    assert_eq!(admin.get("/admin/v1/keys", MASTER).await.status, 200);
}
