//! The audit chain end to end: admin and reload events recorded, `tollgate audit verify` and
//! `export` on the real binary, and tampering with the database caught.

use std::process::Command;

use serde_json::{json, Value};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("TOLLGATE_MASTER_KEY")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn security_events_are_chained_verified_and_tamper_evident() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let yaml = format!(
        "listen: 127.0.0.1:0\nmaster_key: {MASTER}\nstorage:\n  database_url: sqlite://{}\nreload:\n  watch: false\n{MOCK}",
        db.display()
    );
    let t = start_yaml(&yaml).await;
    let (id, _) = t.key(json!({"name": "audited"})).await;
    let rid = [
        ("authorization", format!("Bearer {MASTER}")),
        ("x-request-id", "audit-req-1".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = rid.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = t
        .client
        .send(
            http::Method::POST,
            &format!("/admin/v1/keys/{id}/revoke"),
            &headers,
            "",
        )
        .await;
    assert_eq!(res.status, 200);
    let res = t
        .client
        .post_json(&format!("/admin/v1/keys/{id}/rotate"), MASTER, &json!({}))
        .await;
    assert_eq!(res.status, 409, "a failed change is audited too");
    assert!(t.gw.reloader().reload().await);
    std::fs::write(t.config_path(), "nonsense: [").unwrap();
    assert!(!t.gw.reloader().reload().await);
    let config = t.config_path();
    std::fs::write(&config, &yaml).unwrap();
    let TestGateway {
        gw,
        client: _c,
        dir: _d,
    } = t;
    gw.shutdown().await;

    let config = config.to_str().unwrap();
    let (ok, out) = cli(&["audit", "verify", "--config", config]);
    assert!(ok, "{out}");
    assert!(out.contains("audit chain intact: 5 records"), "{out}");

    // A key made by the CLI lands on the same chain.
    let (ok, out) = cli(&["keys", "create", "--name", "from-cli", "--config", config]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["audit", "export", "--since", "1h", "--config", config]);
    assert!(ok, "{out}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<(&str, &str)> = records
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
            ("key.create", "success"),
            ("key.revoke", "success"),
            ("key.rotate", "failure"),
            ("config.reload", "success"),
            ("config.reload", "failure"),
            ("key.create", "success"),
        ]
    );
    assert_eq!(records[1]["request_id"], "audit-req-1");
    assert_eq!(records[1]["target"], id.as_str());
    assert_eq!(records[5]["principal"], "cli");
    assert_eq!(records[5]["prev_hash"], records[4]["hash"]);
    let (ok, out) = cli(&[
        "audit",
        "export",
        "--since",
        "2999-01-01T00:00:00Z",
        "--config",
        config,
    ]);
    assert!(ok && out.is_empty(), "{out}");

    // Tamper behind tollgate's back: verify names the record and fails.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET outcome = 'success' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (ok, out) = cli(&["audit", "verify", "--config", config]);
    assert!(!ok);
    assert!(out.contains("record 3 was modified"), "{out}");
}
