//! Gateways on one PostgreSQL database (`TOLLGATE_TEST_POSTGRES_URL`, default the local test
//! server): what one replica writes, the others serve. Each test creates a database of its own
//! and drops it afterwards; without the server the tests skip loudly, unless
//! `TOLLGATE_REQUIRE_SERVICES=1`.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;

use crate::harness::*;

struct ScratchDb {
    admin: String,
    name: String,
    url: String,
}

impl ScratchDb {
    async fn create() -> Option<ScratchDb> {
        let admin = std::env::var("TOLLGATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let mut c = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("TOLLGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
                    "PostgreSQL at {admin} is required (TOLLGATE_REQUIRE_SERVICES=1): {e}"
                );
                eprintln!("!!! SKIPPING: PostgreSQL at {admin} is unreachable: {e}");
                return None;
            }
        };
        let name = format!("tollgate_it_{:016x}", fastrand::u64(..));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Some(ScratchDb { admin, name, url })
    }

    async fn drop_now(self) {
        let mut c = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut c)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn replicas_on_one_database_share_keys_spend_and_audit() {
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let config = base_yaml().replace(
        "  database_url: memory://\n",
        &format!("  database_url: {}\n  refresh_interval: 200ms\n", db.url),
    ) + MOCK;
    let a = start_yaml(&config).await;
    let b = start_yaml(&config).await;

    // A key made through A works on B once B's snapshot refreshes.
    let (key_id, key) = a.key(json!({"name": "shared"})).await;
    eventually("B knows the key", || async {
        b.client
            .post_json("/v1/chat/completions", &key, &chat_body("mock-echo", "hi"))
            .await
            .status
            == 200
    })
    .await;
    let res = a
        .client
        .post_json(
            "/v1/chat/completions",
            &key,
            &chat_body("mock-echo", "hello"),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());

    // Revoked through B: refused by A within a second.
    let res = b
        .client
        .post_json(
            &format!("/admin/v1/keys/{key_id}/revoke"),
            MASTER,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let revoked = Instant::now();
    loop {
        let s = a
            .client
            .post_json(
                "/v1/chat/completions",
                &key,
                &chat_body("mock-echo", "again"),
            )
            .await
            .status;
        if s == 401 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "A still accepts a key revoked through B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Both replicas' ledger rows and audit records are in the one database, in one chain.
    a.gw.core.ledger.flush().await;
    b.gw.core.ledger.flush().await;
    a.gw.core.audit.flush().await;
    b.gw.core.audit.flush().await;
    let spend = a.client.get("/admin/v1/spend", MASTER).await.json();
    let requests: u64 = spend["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["requests"].as_u64()).sum())
        .unwrap_or(0);
    assert!(requests >= 2, "{spend}");
    let verified = tollgate_core::audit::verify(a.gw.core.stores.audit.as_ref())
        .await
        .unwrap();
    assert!(matches!(verified, Ok(n) if n >= 2), "{verified:?}");

    a.gw.shutdown().await;
    b.gw.shutdown().await;
    db.drop_now().await;
}

#[tokio::test]
async fn records_spill_while_postgres_is_down_and_replay_in_order() {
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let proxy = Cuttable::start("127.0.0.1:5432").await;
    let (base, _) = db.url.rsplit_once('/').unwrap();
    let host = base.rsplit_once('@').map_or(base, |(_, h)| h);
    let through = db
        .url
        .replacen(host, &format!("127.0.0.1:{}", proxy.port), 1);
    let spill = tempfile::tempdir().unwrap();
    let config = base_yaml().replace(
        "  database_url: memory://\n",
        &format!(
            "  database_url: {through}\n  spill_dir: {}\n",
            spill.path().display()
        ),
    ) + MOCK;
    let t = start_yaml(&config).await;
    let (_, key) = t.key(json!({"name": "k"})).await;
    let chat = |text: &'static str| {
        let (client, key) = (t.client.clone(), key.clone());
        async move {
            client
                .post_json("/v1/chat/completions", &key, &chat_body("mock-echo", text))
                .await
                .status
        }
    };
    assert_eq!(chat("before").await, 200);
    t.gw.core.ledger.flush().await;

    // The database goes away: requests are still served, their records spill to disk.
    proxy.cut();
    for text in ["one", "two", "three"] {
        assert_eq!(chat(text).await, 200);
    }
    t.gw.core.ledger.flush().await;
    t.gw.core.audit.flush().await;
    let ready = t.client.send(http::Method::GET, "/readyz", &[], "").await;
    assert_eq!(ready.status, 200, "still in service");
    assert_eq!(ready.json()["status"], "degraded");
    let ledger_spill = spill.path().join("ledger.jsonl");
    let spilled = std::fs::read_to_string(&ledger_spill).unwrap();
    assert_eq!(spilled.lines().count(), 3, "{spilled}");

    // Back: the spill is replayed, in order, and removed; nothing is lost.
    proxy.restore();
    eventually("the spill is replayed", || async { !ledger_spill.exists() }).await;
    assert_eq!(chat("after").await, 200);
    t.gw.core.ledger.flush().await;
    t.gw.core.audit.flush().await;
    let rows =
        t.gw.core
            .stores
            .ledger
            .read_ledger(&tollgate_core::ledger::LedgerQuery::default())
            .await
            .unwrap();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.windows(2).all(|w| w[0].time_ms <= w[1].time_ms),
        "replayed in order"
    );
    let verified = tollgate_core::audit::verify(t.gw.core.stores.audit.as_ref())
        .await
        .unwrap();
    assert!(matches!(verified, Ok(n) if n >= 1), "{verified:?}");
    t.gw.shutdown().await;
    db.drop_now().await;
}
