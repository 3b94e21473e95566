//! One suite for every engine: each test body runs against memory, SQLite and PostgreSQL
//! alike. PostgreSQL is the server at `TOLLGATE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test gets a database of its own, dropped
//! afterwards. Without the server the PostgreSQL runs are skipped loudly, unless
//! `TOLLGATE_REQUIRE_SERVICES=1` (CI), which makes its absence a failure.

use super::*;
use crate::config::{DatabaseUrl, Secret};

/// What an engine needs kept alive for a test, and cleaned up after it.
#[allow(dead_code)]
enum Guard {
    Dir(tempfile::TempDir),
    Database(PgDatabase),
}

/// A scratch database, dropped (with its connections) when the test ends.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime; the cleanup needs a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

fn postgres_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh database on the test server, or `None` (said loudly) when there is no server.
async fn scratch_postgres() -> Option<(String, PgDatabase)> {
    use sqlx::Connection;
    let admin_url = postgres_url();
    let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("TOLLGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "PostgreSQL at {admin_url} is required (TOLLGATE_REQUIRE_SERVICES=1) but unreachable: {e}"
            );
            eprintln!("!!! SKIPPING the PostgreSQL engine: {admin_url} is unreachable: {e}");
            return None;
        }
    };
    let name = format!("tollgate_t_{:016x}", fastrand::u64(..));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    Some((url, PgDatabase { admin_url, name }))
}

async fn engines() -> Vec<(&'static str, Stores, Option<Guard>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Stores::open(&DatabaseUrl::Sqlite(dir.path().join("nested/t.db")))
        .await
        .unwrap();
    let memory = Stores::open(&DatabaseUrl::Memory).await.unwrap();
    let mut all = vec![
        ("memory", memory, None),
        ("sqlite", sqlite, Some(Guard::Dir(dir))),
    ];
    if let Some((url, db)) = scratch_postgres().await {
        let pg = Stores::open(&DatabaseUrl::Postgres(Secret::new(url)))
            .await
            .unwrap();
        all.push(("postgres", pg, Some(Guard::Database(db))));
    }
    all
}

fn key(id: &str, created_at: i64) -> KeyRecord {
    let mut metadata = serde_json::Map::new();
    metadata.insert("env".into(), serde_json::json!("test"));
    KeyRecord {
        id: id.to_owned(),
        name: format!("name-{id}"),
        user: Some("alice".into()),
        team: None,
        models: vec!["gpt-*".into()],
        expires_at: None,
        enabled: true,
        revoked_at: None,
        metadata,
        limits: Default::default(),
        secret_prefix: "tg-abc".into(),
        created_at,
        updated_at: created_at,
    }
}

fn secret(b: u8) -> KeySecret {
    KeySecret {
        hash: [b; 32],
        expires_at: None,
    }
}

#[tokio::test]
async fn insert_get_list_paginate() {
    for (engine, s, _dir) in engines().await {
        for i in 0..5u8 {
            s.keys
                .insert_key(&key(&format!("k{i}"), 100 + i64::from(i % 2)), &secret(i))
                .await
                .unwrap();
        }
        let dup = s.keys.insert_key(&key("k0", 1), &secret(99)).await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{engine}");
        assert_eq!(
            s.keys.get_key("k1").await.unwrap(),
            Some(key("k1", 101)),
            "{engine}"
        );
        assert_eq!(s.keys.get_key("nope").await.unwrap(), None);
        let first = s
            .keys
            .list_keys(&Page {
                after: None,
                limit: 2,
            })
            .await
            .unwrap();
        let ids: Vec<_> = first.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["k0", "k2"], "{engine}");
        let rest = s
            .keys
            .list_keys(&Page {
                after: Some("k2".into()),
                limit: 10,
            })
            .await
            .unwrap();
        let ids: Vec<_> = rest.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["k4", "k1", "k3"], "{engine}");
    }
}

#[tokio::test]
async fn update_revoke_and_change_seq() {
    for (engine, s, _dir) in engines().await {
        let seq0 = s.keys.change_seq().await.unwrap();
        s.keys.insert_key(&key("k", 1), &secret(1)).await.unwrap();
        let seq1 = s.keys.change_seq().await.unwrap();
        assert!(seq1 > seq0, "{engine}");
        let updated = s
            .keys
            .update_key(
                "k",
                &KeyUpdate {
                    name: Some("renamed".into()),
                    user: Some(None),
                    enabled: Some(false),
                    limits: Some(Limits {
                        budget_usd: Some(2.5),
                        budget_period: Some(crate::config::Period::Daily),
                        rpm: Some(60),
                        tpm: None,
                    }),
                    ..Default::default()
                },
                5,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.name, "renamed");
        assert_eq!(updated.limits.rpm, Some(60), "{engine}");
        assert_eq!(updated.user, None);
        assert!(!updated.enabled);
        assert_eq!(
            updated.models,
            vec!["gpt-*".to_owned()],
            "untouched field kept"
        );
        assert_eq!(
            s.keys.get_key("k").await.unwrap(),
            Some(updated),
            "{engine}"
        );
        let cleared = s
            .keys
            .update_key(
                "k",
                &KeyUpdate {
                    limits: Some(Limits::default()),
                    ..Default::default()
                },
                6,
            )
            .await
            .unwrap()
            .unwrap();
        assert!(cleared.limits.is_empty(), "{engine}");
        assert_eq!(
            s.keys.get_key("k").await.unwrap().map(|k| k.limits),
            Some(Limits::default()),
            "{engine}: no limits read back as none"
        );
        assert!(s.keys.change_seq().await.unwrap() > seq1);

        let revoked = s.keys.revoke_key("k", 9).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(9));
        assert!(matches!(
            s.keys.revoke_key("k", 10).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(s.keys.load_active(10).await.unwrap().is_empty(), "{engine}");
        assert_eq!(s.keys.revoke_key("missing", 1).await.unwrap(), None);
    }
}

#[tokio::test]
async fn rotation_keeps_old_secret_until_grace_ends() {
    for (engine, s, _dir) in engines().await {
        s.keys.insert_key(&key("k", 1), &secret(1)).await.unwrap();
        s.keys
            .rotate_key("k", &secret(2), "tg-new", 100, 10)
            .await
            .unwrap()
            .unwrap();
        let active = s.keys.load_active(50).await.unwrap();
        assert_eq!(active.len(), 1);
        let mut secrets = active[0].1.clone();
        secrets.sort_by_key(|s| s.hash);
        assert_eq!(
            secrets,
            vec![
                KeySecret {
                    hash: [1; 32],
                    expires_at: Some(100)
                },
                KeySecret {
                    hash: [2; 32],
                    expires_at: None
                }
            ],
            "{engine}"
        );
        assert_eq!(active[0].0.secret_prefix, "tg-new");
        let later = s.keys.load_active(100).await.unwrap();
        assert_eq!(
            later[0].1,
            vec![KeySecret {
                hash: [2; 32],
                expires_at: None
            }],
            "{engine}"
        );
        s.keys.revoke_key("k", 11).await.unwrap();
        assert!(matches!(
            s.keys.rotate_key("k", &secret(3), "x", 1, 12).await,
            Err(StoreError::Conflict(_))
        ));
    }
}

#[tokio::test]
async fn meta_set_if_absent() {
    for (engine, s, _dir) in engines().await {
        assert_eq!(s.meta.get_meta("m").await.unwrap(), None);
        assert_eq!(s.meta.set_meta_if_absent("m", "a").await.unwrap(), "a");
        assert_eq!(
            s.meta.set_meta_if_absent("m", "b").await.unwrap(),
            "a",
            "{engine}"
        );
        s.meta.set_meta("m", "c").await.unwrap();
        assert_eq!(s.meta.get_meta("m").await.unwrap().as_deref(), Some("c"));
        s.meta.ping().await.unwrap();
    }
}

#[tokio::test]
async fn sqlite_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("p.db"));
    {
        let s = Stores::open(&url).await.unwrap();
        s.keys.insert_key(&key("k", 1), &secret(1)).await.unwrap();
    }
    let s = Stores::open(&url).await.unwrap();
    assert!(s.keys.get_key("k").await.unwrap().is_some());
}

fn event(i: usize) -> (crate::audit::AuditEvent, i64) {
    let mut ev = crate::audit::AuditEvent::new("key.create", "success");
    ev.target = Some(format!("key_{i}"));
    ev.principal = Some("master".into());
    ev.detail = serde_json::json!({"i": i, "note": "quote \" and unicode é"});
    (ev, 1_700_000_000_000 + i as i64)
}

#[tokio::test]
async fn audit_chain_appends_and_verifies() {
    for (engine, s, _dir) in engines().await {
        assert_eq!(crate::audit::verify(s.audit.as_ref()).await.unwrap(), Ok(0));
        let batch: Vec<_> = (0..3).map(event).collect();
        s.audit.append_audit(&batch).await.unwrap();
        s.audit.append_audit(&[event(3)]).await.unwrap();
        let records = s.audit.read_audit(0, 100).await.unwrap();
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4],
            "{engine}"
        );
        assert_eq!(records[0].prev_hash, crate::audit::GENESIS);
        assert_eq!(records[3].prev_hash, records[2].hash);
        assert_eq!(records[1].target.as_deref(), Some("key_1"));
        assert_eq!(s.audit.read_audit(2, 1).await.unwrap()[0].seq, 3);
        assert_eq!(
            crate::audit::verify(s.audit.as_ref()).await.unwrap(),
            Ok(4),
            "{engine}"
        );
        assert_eq!(s.audit.audit_head().await.unwrap().map(|h| h.0), Some(4));
    }
}

/// The console's audit search agrees with the query's own matcher on every engine: exact and
/// prefix fields (case-sensitive, wildcard characters literal), time, and newest-first pages.
#[tokio::test]
async fn audit_search_filters_and_pages_newest_first() {
    use crate::audit::{AuditQuery, FieldMatch};
    for (engine, s, _dir) in engines().await {
        let events: Vec<_> = (0..40i64)
            .map(|i| {
                let mut ev = AuditEvent::new(
                    [
                        "mcp.tools/call",
                        "a2a.call",
                        "MCP.upper",
                        "key.create",
                        "a_b%c",
                    ][(i % 5) as usize],
                    if i % 3 == 0 { "failure" } else { "success" },
                );
                ev.principal = Some(format!("key:k{}", i % 4));
                ev.target = Some(format!("agent{}/SendMessage", i % 2));
                ev.decision = (i % 2 == 0).then(|| "allow".to_owned());
                ev.conversation_id = (i % 6 == 0).then(|| "conv-1".to_owned());
                (ev, 1_000 * i)
            })
            .collect();
        s.audit.append_audit(&events).await.unwrap();
        let all = s.audit.read_audit(0, 1000).await.unwrap();
        let queries = [
            AuditQuery::default(),
            AuditQuery {
                action: Some(FieldMatch::parse("mcp.*")),
                ..Default::default()
            },
            AuditQuery {
                action: Some(FieldMatch::parse("a_b%*")),
                ..Default::default()
            },
            AuditQuery {
                action: Some(FieldMatch::parse("a_*")),
                principal: Some(FieldMatch::parse("key:k1")),
                ..Default::default()
            },
            AuditQuery {
                target: Some(FieldMatch::parse("agent1/*")),
                outcome: Some("failure".into()),
                decision: None,
                ..Default::default()
            },
            AuditQuery {
                decision: Some("allow".into()),
                conversation: Some("conv-1".into()),
                since_ms: Some(5_000),
                until_ms: Some(30_000),
                ..Default::default()
            },
            AuditQuery {
                before: Some(30),
                limit: 7,
                ..Default::default()
            },
        ];
        for q in queries {
            let q = AuditQuery {
                limit: if q.limit == 0 { 1000 } else { q.limit },
                ..q
            };
            let got: Vec<i64> = s
                .audit
                .search_audit(&q)
                .await
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect();
            let want: Vec<i64> = all
                .iter()
                .rev()
                .filter(|r| q.matches(r))
                .take(q.limit as usize)
                .map(|r| r.seq)
                .collect();
            assert_eq!(got, want, "{engine}: {q:?}");
            assert!(
                !got.is_empty() || q.action.is_some(),
                "{engine}: {q:?} found nothing"
            );
        }
        // `mcp.*` is case-sensitive and `_`/`%` are literal.
        let mcp = AuditQuery {
            action: Some(FieldMatch::parse("mcp.*")),
            limit: 1000,
            ..Default::default()
        };
        assert_eq!(
            s.audit.search_audit(&mcp).await.unwrap().len(),
            8,
            "{engine}"
        );
        let odd = AuditQuery {
            action: Some(FieldMatch::parse("a_b%*")),
            limit: 1000,
            ..Default::default()
        };
        assert_eq!(
            s.audit.search_audit(&odd).await.unwrap().len(),
            8,
            "{engine}"
        );
    }
}

/// A conversation's records come back by its id: audit events and ledger rows.
#[tokio::test]
async fn records_are_found_by_conversation() {
    for (engine, s, _dir) in engines().await {
        let with = |i: usize, conv: Option<&str>| {
            let (mut ev, t) = event(i);
            ev.conversation_id = conv.map(str::to_owned);
            (ev, t)
        };
        s.audit
            .append_audit(&[
                with(0, Some("c1")),
                with(1, Some("c2")),
                with(2, None),
                with(3, Some("c1")),
            ])
            .await
            .unwrap();
        let c1 = s.audit.conversation_audit("c1", 100).await.unwrap();
        assert_eq!(
            c1.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 4],
            "{engine}"
        );
        assert!(s
            .audit
            .conversation_audit("c9", 100)
            .await
            .unwrap()
            .is_empty());
        let rec = |t: i64, conv: Option<&str>| crate::ledger::LedgerRecord {
            time_ms: t,
            conversation_id: conv.map(str::to_owned),
            model: "m".into(),
            ..Default::default()
        };
        s.ledger
            .append_ledger(&[rec(1, Some("c1")), rec(2, Some("c2")), rec(3, Some("c1"))])
            .await
            .unwrap();
        let rows = s
            .ledger
            .read_ledger(&crate::ledger::LedgerQuery {
                conversation: Some("c1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            rows.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
            [1, 3],
            "{engine}"
        );
    }
}

#[tokio::test]
async fn agents_are_created_replaced_and_deleted() {
    for (engine, s, _dir) in engines().await {
        let rec = |t: i64, url: &str| AgentRecord {
            name: "planner".into(),
            spec: serde_json::json!({"name": "planner", "url": url}),
            created_ms: t,
            updated_ms: t,
        };
        assert!(
            s.agents.put_agent(&rec(1, "http://a")).await.unwrap(),
            "{engine}"
        );
        assert!(
            !s.agents.put_agent(&rec(5, "http://b")).await.unwrap(),
            "{engine}"
        );
        let all = s.agents.list_agents().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].spec["url"], "http://b", "{engine}");
        assert_eq!((all[0].created_ms, all[0].updated_ms), (1, 5), "{engine}");
        assert!(s.agents.delete_agent("planner").await.unwrap());
        assert!(!s.agents.delete_agent("planner").await.unwrap());
        assert!(s.agents.list_agents().await.unwrap().is_empty());
    }
}

/// A batch larger than one INSERT holds stays one unbroken chain.
#[tokio::test]
async fn audit_batches_larger_than_one_insert_chain_whole() {
    for (engine, s, _dir) in engines().await {
        let batch: Vec<_> = (0..1_203).map(|i| event(i % 7)).collect();
        s.audit.append_audit(&batch).await.unwrap();
        s.audit.append_audit(&[event(1)]).await.unwrap();
        assert_eq!(
            crate::audit::verify(s.audit.as_ref()).await.unwrap(),
            Ok(1_204),
            "{engine}"
        );
        assert_eq!(
            s.audit.audit_head().await.unwrap().map(|h| h.0),
            Some(1_204)
        );
    }
}

/// Tampers with the SQLite file behind the store's back, one kind of tampering at a time.
#[tokio::test]
async fn audit_verify_catches_every_kind_of_tampering() {
    use crate::audit::{verify, AuditRecord, Tamper};
    type Tampering = (&'static str, Tamper);
    let cases: Vec<Tampering> = vec![
        (
            "UPDATE audit_log SET outcome = 'failure' WHERE seq = 3",
            Tamper::Modified { seq: 3 },
        ),
        (
            "DELETE FROM audit_log WHERE seq = 3",
            Tamper::Deleted { before_seq: 4 },
        ),
        (
            "DELETE FROM audit_log WHERE seq = 5",
            Tamper::Truncated {
                last_seq: 4,
                head_seq: 5,
            },
        ),
        (
            "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 3; UPDATE audit_log SET seq = seq - 99 WHERE seq >= 103",
            Tamper::Deleted { before_seq: 4 },
        ),
    ];
    for (sql, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db")).await.unwrap();
        store
            .append_audit(&(0..5).map(event).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(verify(&store).await.unwrap(), Ok(5));
        sqlx::raw_sql(sql).execute(store.pool()).await.unwrap();
        assert_eq!(verify(&store).await.unwrap(), Err(want), "{sql}");
    }

    // A forged record inserted in the middle, well-formed and hashed, but chained to nothing.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("a.db")).await.unwrap();
    store
        .append_audit(&(0..5).map(event).collect::<Vec<_>>())
        .await
        .unwrap();
    sqlx::raw_sql("UPDATE audit_log SET seq = seq + 10 WHERE seq >= 3")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::raw_sql("UPDATE audit_log SET seq = seq - 9 WHERE seq >= 13")
        .execute(store.pool())
        .await
        .unwrap();
    let forged_event = crate::audit::AuditEvent::new("key.revoke", "success");
    let forged = AuditRecord::chain(3, 1, "not-the-previous-hash", &forged_event);
    sqlx::query("INSERT INTO audit_log (seq, time_ms, action, outcome, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(forged.seq).bind(forged.time_ms).bind(&forged.action).bind(&forged.outcome).bind(&forged.detail).bind(&forged.prev_hash).bind(&forged.hash)
        .execute(store.pool()).await.unwrap();
    assert_eq!(
        verify(&store).await.unwrap(),
        Err(Tamper::Inserted { seq: 3 })
    );
}

#[tokio::test]
async fn audit_appends_from_two_processes_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = std::sync::Arc::new(SqliteStore::open(&path).await.unwrap());
    let b = std::sync::Arc::new(SqliteStore::open(&path).await.unwrap());
    let mut tasks = Vec::new();
    for (n, s) in [a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                s.append_audit(&[event(n * 100 + i)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(crate::audit::verify(a.as_ref()).await.unwrap(), Ok(40));
}

/// Replicas on one PostgreSQL database, appending at once, keep one chain without gaps; and
/// two stores migrating the same fresh database at once do not trip over each other.
#[tokio::test]
async fn postgres_replicas_keep_one_audit_chain() {
    let Some((url, _db)) = scratch_postgres().await else {
        return;
    };
    let (a, b) = tokio::join!(
        super::postgres::PostgresStore::open(&url),
        super::postgres::PostgresStore::open(&url)
    );
    let (a, b) = (
        std::sync::Arc::new(a.unwrap()),
        std::sync::Arc::new(b.unwrap()),
    );
    let mut tasks = Vec::new();
    for (n, s) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let batch: Vec<_> = (0..3).map(|j| event(n * 1000 + i * 10 + j)).collect();
                s.append_audit(&batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(crate::audit::verify(b.as_ref()).await.unwrap(), Ok(180));
}

fn team(id: &str, roles: &[&str]) -> TeamRecord {
    TeamRecord {
        id: id.into(),
        name: format!("Team {id}"),
        tenant: Some("acme".into()),
        metadata: Default::default(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        limits: Limits {
            budget_usd: Some(100.0),
            ..Default::default()
        },
        created_at: 1,
        updated_at: 1,
    }
}

#[tokio::test]
async fn directory_teams_users_roles() {
    for (engine, s, _dir) in engines().await {
        let seq = s.keys.change_seq().await.unwrap();
        s.directory
            .insert_team(&team("ml", &["reader", "admin"]))
            .await
            .unwrap();
        assert!(
            s.keys.change_seq().await.unwrap() > seq,
            "{engine}: roles change principals"
        );
        assert!(matches!(
            s.directory.insert_team(&team("ml", &[])).await,
            Err(StoreError::Conflict(_))
        ));
        let user = UserRecord {
            id: "alice".into(),
            name: "Alice".into(),
            email: Some("a@example.com".into()),
            team: Some("ml".into()),
            metadata: Default::default(),
            roles: vec!["writer".into()],
            limits: Limits {
                rpm: Some(5),
                ..Default::default()
            },
            created_at: 1,
            updated_at: 1,
        };
        s.directory.insert_user(&user).await.unwrap();
        let ghost = UserRecord {
            id: "bob".into(),
            team: Some("ghost".into()),
            ..user.clone()
        };
        assert!(
            matches!(
                s.directory.insert_user(&ghost).await,
                Err(StoreError::Conflict(_))
            ),
            "{engine}"
        );
        let teams = s.directory.list_teams().await.unwrap();
        assert_eq!(teams[0].roles, ["admin", "reader"], "{engine}");
        assert_eq!(
            teams,
            vec![team("ml", &["admin", "reader"])],
            "{engine}: every field kept (tenant and limits too)"
        );
        assert_eq!(
            s.directory.list_users().await.unwrap(),
            vec![user.clone()],
            "{engine}"
        );

        let changed = TeamRecord {
            tenant: Some("globex".into()),
            limits: Limits::default(),
            ..team("ml", &["reader"])
        };
        assert!(s.directory.replace_team(&changed).await.unwrap());
        assert_eq!(
            s.directory.list_teams().await.unwrap(),
            vec![changed],
            "{engine}"
        );
        assert!(!s.directory.replace_team(&team("nope", &[])).await.unwrap());

        assert!(
            matches!(
                s.directory.delete_team("ml").await,
                Err(StoreError::Conflict(_))
            ),
            "{engine}: user still in team"
        );
        let mut k = key("k", 1);
        k.user = Some("alice".into());
        s.keys.insert_key(&k, &secret(7)).await.unwrap();
        assert!(
            matches!(
                s.directory.delete_user("alice").await,
                Err(StoreError::Conflict(_))
            ),
            "{engine}: live key"
        );
        s.keys.revoke_key("k", 2).await.unwrap();
        assert!(s.directory.delete_user("alice").await.unwrap());
        assert!(s.directory.delete_team("ml").await.unwrap());
        assert!(s.directory.list_teams().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn ledger_appends_and_reads_by_time_and_page() {
    for (name, s, _dir) in engines().await {
        let rec = |t: i64, model: &str| crate::ledger::LedgerRecord {
            time_ms: t,
            request_id: format!("req-{t}"),
            model: model.into(),
            provider: Some("p".into()),
            key_id: Some("k1".into()),
            cost_usd: 0.25,
            attempts: 2,
            fallback: Some("error".into()),
            ..Default::default()
        };
        s.ledger
            .append_ledger(&[rec(100, "a"), rec(200, "b"), rec(300, "c")])
            .await
            .unwrap();
        let all = s
            .ledger
            .read_ledger(&crate::ledger::LedgerQuery::default())
            .await
            .unwrap();
        assert_eq!(all.len(), 3, "{name}");
        assert_eq!(all[1].model, "b");
        assert_eq!(all[1].attempts, 2);
        assert_eq!(all[1].fallback.as_deref(), Some("error"));
        assert!(all[0].id < all[1].id && all[1].id < all[2].id, "{name}");
        let window = s
            .ledger
            .read_ledger(&crate::ledger::LedgerQuery {
                since_ms: 150,
                until_ms: 300,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(window.len(), 1, "{name}");
        assert_eq!(window[0].model, "b");
        let page = s
            .ledger
            .read_ledger(&crate::ledger::LedgerQuery {
                after: all[0].id,
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, all[1].id, "{name}");
    }
}

#[tokio::test]
async fn a_large_batch_is_stored_whole_and_in_order() {
    // 203 rows: several multi-row INSERTs of different sizes in one transaction.
    for (name, s, _dir) in engines().await {
        let records: Vec<_> = (0..203i64)
            .map(|i| crate::ledger::LedgerRecord {
                time_ms: 1_000 + i,
                request_id: format!("req-{i}"),
                model: format!("m{}", i % 3),
                provider: Some("p".into()),
                key_id: Some(format!("k{}", i % 5)),
                conversation_id: (i % 2 == 0).then(|| format!("c{}", i % 7)),
                prompt_tokens: i as u64,
                completion_tokens: 2 * i as u64,
                cost_usd: 0.5 * i as f64,
                status: if i % 10 == 0 { 500 } else { 200 },
                latency_ms: i as u64,
                ..Default::default()
            })
            .collect();
        s.ledger.append_ledger(&records).await.unwrap();
        let back = s
            .ledger
            .read_ledger(&crate::ledger::LedgerQuery {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(back.len(), records.len(), "{name}");
        for (want, got) in records.iter().zip(&back) {
            let mut got = got.clone();
            got.id = 0;
            assert_eq!(&got, want, "{name}");
        }
        assert!(back.windows(2).all(|w| w[0].id < w[1].id), "{name}");
        // The indexed columns were written from the same rows.
        let talk = s
            .ledger
            .read_ledger(&crate::ledger::LedgerQuery {
                conversation: Some("c3".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(talk.len(), 14, "{name}");
        assert!(talk
            .iter()
            .all(|r| r.conversation_id.as_deref() == Some("c3")));
    }
}

#[tokio::test]
async fn spend_reports_group_filter_and_agree_with_the_records() {
    use crate::ledger::{aggregate, Dimension, LedgerRecord, SpendQuery};
    const DAY: i64 = 86_400_000;
    for (name, s, _dir) in engines().await {
        let mut records = Vec::new();
        for i in 0..40i64 {
            records.push(LedgerRecord {
                time_ms: 1_700_000_000_000 + (i % 3) * DAY,
                model: ["m-a", "m-b"][(i % 2) as usize].into(),
                provider: Some("p".into()),
                key_id: Some(format!("k{}", i % 4)),
                team: (i % 5 != 0).then(|| "ml".to_owned()),
                conversation_id: Some(format!("c{}", i % 2)),
                agent: (i % 2 == 0).then(|| "planner".to_owned()),
                prompt_tokens: 10 + i as u64,
                completion_tokens: 2 * i as u64,
                cost_usd: 0.001 * (i + 1) as f64,
                ..Default::default()
            });
        }
        s.ledger.append_ledger(&records).await.unwrap();
        let queries = [
            SpendQuery::default(),
            SpendQuery {
                group_by: Some(Dimension::Key),
                ..Default::default()
            },
            SpendQuery {
                group_by: Some(Dimension::Team),
                ..Default::default()
            },
            SpendQuery {
                group_by: Some(Dimension::Day),
                since_ms: 1_700_000_000_000 + DAY,
                ..Default::default()
            },
            SpendQuery {
                group_by: Some(Dimension::Model),
                filter: Some((Dimension::Conversation, "c1".into())),
                ..Default::default()
            },
            SpendQuery {
                group_by: Some(Dimension::Agent),
                filter: Some((Dimension::Key, "k2".into())),
                ..Default::default()
            },
            SpendQuery {
                group_by: Some(Dimension::Key),
                limit: 2,
                ..Default::default()
            },
            // Raw rows at both ends, the rollup's whole hours between.
            SpendQuery {
                group_by: Some(Dimension::Model),
                since_ms: 1_700_000_000_000 - 1_000,
                until_ms: 1_700_000_000_000 + DAY + 1,
                ..Default::default()
            },
            SpendQuery {
                group_by: Some(Dimension::Day),
                filter: Some((Dimension::Team, "ml".into())),
                since_ms: 1_700_000_000_000 + 1,
                until_ms: 1_700_000_000_000 + 2 * DAY + 1,
                ..Default::default()
            },
        ];
        for q in &queries {
            let got = s.ledger.spend(q).await.unwrap();
            let want = aggregate(records.iter(), q);
            assert_eq!(got.len(), want.len(), "{name}: {q:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.group, w.group, "{name}: {q:?}");
                assert_eq!(g.requests, w.requests, "{name}: {q:?}");
                assert_eq!(g.prompt_tokens, w.prompt_tokens, "{name}: {q:?}");
                assert_eq!(g.completion_tokens, w.completion_tokens, "{name}: {q:?}");
                assert!((g.cost_usd - w.cost_usd).abs() < 1e-9, "{name}: {q:?}");
            }
        }
        let total = s.ledger.spend(&SpendQuery::default()).await.unwrap();
        let sum: f64 = records.iter().map(|r| r.cost_usd).sum();
        assert!((total[0].cost_usd - sum).abs() < 1e-9);
        assert_eq!(total[0].requests, 40);
        let days = s
            .ledger
            .spend(&SpendQuery {
                group_by: Some(Dimension::Day),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut names: Vec<_> = days.iter().filter_map(|r| r.group.clone()).collect();
        names.sort();
        assert_eq!(names, ["2023-11-14", "2023-11-15", "2023-11-16"], "{name}");
        let empty = s
            .ledger
            .spend(&SpendQuery {
                since_ms: 0,
                until_ms: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(empty.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn the_conversation_list_agrees_with_the_records_across_batches() {
    use crate::ledger::{conversation_totals, list_conversations, ConversationQuery, LedgerRecord};
    const HOUR: i64 = 3_600_000;
    const T0: i64 = 1_700_000_000_000;
    for (name, s, _dir) in engines().await {
        let mut records = Vec::new();
        for i in 0..60i64 {
            records.push(LedgerRecord {
                // Conversation c{i % 6} calls every 6 hours, each a little later than the last.
                time_ms: T0 + i * HOUR + i,
                model: "m".into(),
                conversation_id: (i % 7 != 0).then(|| format!("c{}", i % 6)),
                prompt_tokens: 10 + i as u64,
                completion_tokens: i as u64,
                cost_usd: 0.001 * ((i % 6) + 1) as f64,
                outcome: if i % 10 == 3 { "error" } else { "ok" }.into(),
                ..Default::default()
            });
        }
        // In three batches, out of time order: the rollup keeps the first and last call.
        for part in [&records[40..], &records[..20], &records[20..40]] {
            s.ledger.append_ledger(part).await.unwrap();
        }
        let all = conversation_totals(&records);
        assert_eq!(all.len(), 6);
        let queries = [
            ConversationQuery {
                since_ms: 0,
                until_ms: i64::MAX,
                limit: 100,
            },
            // Only conversations with a call in the first 5 hours, then in the last 10.
            ConversationQuery {
                since_ms: 0,
                until_ms: T0 + 5 * HOUR,
                limit: 100,
            },
            ConversationQuery {
                since_ms: T0 + 50 * HOUR,
                until_ms: i64::MAX,
                limit: 3,
            },
            ConversationQuery {
                since_ms: T0 + 100 * HOUR,
                until_ms: i64::MAX,
                limit: 10,
            },
        ];
        for q in &queries {
            let got = s.ledger.conversations(q).await.unwrap();
            let want = list_conversations(all.clone(), q);
            assert_eq!(got.len(), want.len(), "{name}: {q:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.conversation_id, w.conversation_id, "{name}: {q:?}");
                assert_eq!(
                    (g.first_ms, g.last_ms, g.requests, g.failed),
                    (w.first_ms, w.last_ms, w.requests, w.failed),
                    "{name}: {q:?}"
                );
                assert_eq!(
                    (g.prompt_tokens, g.completion_tokens),
                    (w.prompt_tokens, w.completion_tokens),
                    "{name}: {q:?}"
                );
                assert!((g.cost_usd - w.cost_usd).abs() < 1e-9, "{name}: {q:?}");
            }
        }
        let top = s.ledger.conversations(&queries[0]).await.unwrap();
        assert_eq!(top[0].conversation_id, "c5", "{name}: the dearest first");
        assert!(top.iter().any(|c| c.failed > 0), "{name}");
        assert!(s
            .ledger
            .conversations(&queries[3])
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test]
async fn ledger_stats_bucket_time_and_agree_with_the_records() {
    use crate::ledger::{stats_of, LedgerRecord, StatsQuery};
    const T0: i64 = 1_700_000_000_000;
    for (name, s, _dir) in engines().await {
        let records: Vec<LedgerRecord> = (0..60i64)
            .map(|i| LedgerRecord {
                time_ms: T0 + i * 1_000,
                model: "m".into(),
                prompt_tokens: 10,
                completion_tokens: i as u64,
                cost_usd: 0.001 * (i + 1) as f64,
                latency_ms: [0, 3, 40, 700, 90_000][(i % 5) as usize],
                status: if i % 7 == 0 { 502 } else { 200 },
                outcome: match i % 7 {
                    0 => "error",
                    3 => "cancelled",
                    _ => "ok",
                }
                .into(),
                ..Default::default()
            })
            .collect();
        s.ledger.append_ledger(&records).await.unwrap();
        for q in [
            StatsQuery {
                since_ms: T0,
                until_ms: T0 + 60_000,
                bucket_ms: 10_000,
            },
            StatsQuery {
                since_ms: T0 + 5_500,
                until_ms: T0 + 30_000,
                bucket_ms: 7_000,
            },
            StatsQuery {
                since_ms: 0,
                until_ms: T0,
                bucket_ms: 1_000,
            },
            // Whole hours: read from the hourly rollup.
            StatsQuery {
                since_ms: 1_699_999_200_000,
                until_ms: 1_699_999_200_000 + 2 * crate::ledger::HOUR_MS,
                bucket_ms: crate::ledger::HOUR_MS,
            },
        ] {
            let got = s.ledger.ledger_stats(&q).await.unwrap();
            let want = stats_of(records.iter(), &q);
            assert_eq!(got.len(), want.len(), "{name}: {q:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.index, w.index, "{name}: {q:?}");
                assert_eq!(g.requests, w.requests, "{name}: {q:?}");
                assert_eq!(g.errors, w.errors, "{name}: {q:?}");
                assert_eq!(g.completion_tokens, w.completion_tokens, "{name}: {q:?}");
                assert_eq!(g.latency, w.latency, "{name}: {q:?}");
                assert!((g.cost_usd - w.cost_usd).abs() < 1e-9, "{name}: {q:?}");
            }
        }
        let all = s
            .ledger
            .ledger_stats(&StatsQuery {
                since_ms: T0,
                until_ms: T0 + 60_000,
                bucket_ms: 60_000,
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 1, "{name}");
        // i % 7 == 0: 9 of 60 failed; cancellations are not errors.
        assert_eq!((all[0].requests, all[0].errors), (60, 9), "{name}");
        // A fifth each at 0, 3, 40, 700 ms and past a minute.
        assert_eq!(
            all[0].latency_quantile(0.5),
            Some(20.0 + 0.5 * 30.0),
            "{name}"
        );
        assert_eq!(all[0].latency_quantile(1.0), Some(60_000.0), "{name}");
    }
}

#[tokio::test]
async fn semantic_entries_round_trip_expire_and_delete() {
    for (engine, s, _dir) in engines().await {
        let row = |id: &str, created_ms: i64, expires_ms: i64| SemanticRow {
            id: id.to_owned(),
            partition: "ab".repeat(32),
            route: "gpt".into(),
            vector: vec![0.5, -0.25, 1.0e-3, f32::MIN_POSITIVE],
            entry: format!("{{\"id\":\"{id}\"}}"),
            created_ms,
            expires_ms,
        };
        s.semantic.put_semantic(&row("b", 20, 1_000)).await.unwrap();
        s.semantic.put_semantic(&row("a", 10, 1_000)).await.unwrap();
        s.semantic.put_semantic(&row("old", 5, 100)).await.unwrap();
        let live = s.semantic.load_semantic(500).await.unwrap();
        assert_eq!(
            live,
            vec![row("a", 10, 1_000), row("b", 20, 1_000)],
            "{engine}"
        );
        assert_eq!(
            s.semantic.load_semantic(50).await.unwrap().len(),
            3,
            "{engine}"
        );
        assert_eq!(s.semantic.purge_semantic(500).await.unwrap(), 1, "{engine}");
        s.semantic.delete_semantic(&["a".into()]).await.unwrap();
        let left = s.semantic.load_semantic(0).await.unwrap();
        assert_eq!(left, vec![row("b", 20, 1_000)], "{engine}");
    }
}

#[tokio::test]
async fn tool_pins_pin_once_drift_and_approve() {
    for (engine, s, _dir) in engines().await {
        let pin = |tool: &str, sha: &str| ToolPin {
            server: "files".into(),
            tool: tool.into(),
            sha256: sha.into(),
            definition: format!("{{\"name\":\"{tool}\"}}"),
            pinned_ms: 10,
            pending_sha256: None,
            pending_definition: None,
            pending_ms: None,
        };
        assert_eq!(
            s.mcp.pin_tool_if_absent(&pin("read", "a1")).await.unwrap(),
            pin("read", "a1")
        );
        // First sight wins: a second pin of the same tool returns the first.
        assert_eq!(
            s.mcp.pin_tool_if_absent(&pin("read", "b2")).await.unwrap(),
            pin("read", "a1")
        );
        s.mcp.pin_tool_if_absent(&pin("write", "c3")).await.unwrap();
        let mut other = pin("read", "d4");
        other.server = "mail".into();
        s.mcp.pin_tool_if_absent(&other).await.unwrap();
        assert_eq!(
            s.mcp.tool_pins(Some("files")).await.unwrap().len(),
            2,
            "{engine}"
        );
        assert_eq!(s.mcp.tool_pins(None).await.unwrap().len(), 3, "{engine}");

        // Drift is recorded as pending; approving another digest changes nothing.
        s.mcp
            .set_pending_tool("files", "read", "e5", "{\"v\":2}", 20)
            .await
            .unwrap();
        s.mcp
            .set_pending_tool("files", "nope", "e5", "{}", 20)
            .await
            .unwrap();
        let read = &s.mcp.tool_pins(Some("files")).await.unwrap()[0];
        assert_eq!(read.pending_sha256.as_deref(), Some("e5"), "{engine}");
        assert_eq!(read.pending_ms, Some(20), "{engine}");
        assert!(s
            .mcp
            .approve_tool("files", "read", "zz", 30)
            .await
            .unwrap()
            .is_none());
        let approved = s
            .mcp
            .approve_tool("files", "read", "e5", 30)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(approved.sha256, "e5", "{engine}");
        assert_eq!(approved.definition, "{\"v\":2}", "{engine}");
        assert_eq!(approved.pinned_ms, 30, "{engine}");
        assert_eq!(approved.pending_sha256, None, "{engine}");
        assert!(s
            .mcp
            .approve_tool("files", "read", "e5", 40)
            .await
            .unwrap()
            .is_none());
    }
}

#[tokio::test]
async fn approvals_are_decided_once_bound_and_used_once() {
    for (engine, s, _dir) in engines().await {
        let binding = ApprovalBinding {
            principal: "key:k1".into(),
            server: "bank".into(),
            tool: "pay".into(),
            args_sha256: "aa".into(),
            policy_version: "p1".into(),
        };
        let approval = |id: &str, created_ms: i64| ApprovalRecord {
            id: id.into(),
            binding: binding.clone(),
            rule: "pay/big".into(),
            session: "s1".into(),
            arguments: serde_json::json!({"amount": 500}),
            status: "pending".into(),
            created_ms,
            expires_ms: 1_000,
            decided_ms: None,
            decided_by: None,
            note: None,
            used_ms: None,
        };
        s.mcp.insert_approval(&approval("ap1", 10)).await.unwrap();
        s.mcp.insert_approval(&approval("ap2", 20)).await.unwrap();
        assert!(matches!(
            s.mcp.insert_approval(&approval("ap1", 30)).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            s.mcp.get_approval("ap1").await.unwrap(),
            Some(approval("ap1", 10))
        );
        let listed = s.mcp.list_approvals(Some("pending"), 10).await.unwrap();
        assert_eq!(
            listed.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["ap2", "ap1"]
        );

        // Nothing is usable until approved.
        assert!(s
            .mcp
            .consume_approval(&binding, None, 50)
            .await
            .unwrap()
            .is_none());
        let decided = s
            .mcp
            .decide_approval("ap1", true, "admin", Some("ok"), 50)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(decided.status, "approved", "{engine}");
        assert_eq!(decided.decided_by.as_deref(), Some("admin"), "{engine}");
        // Decided once: a second decision is refused.
        assert!(s
            .mcp
            .decide_approval("ap1", false, "x", None, 60)
            .await
            .unwrap()
            .is_none());
        // Denied ones are never usable; expired ones cannot be decided.
        s.mcp
            .decide_approval("ap2", false, "admin", None, 60)
            .await
            .unwrap()
            .unwrap();
        s.mcp.insert_approval(&approval("ap3", 30)).await.unwrap();
        assert!(s
            .mcp
            .decide_approval("ap3", true, "x", None, 1_000)
            .await
            .unwrap()
            .is_none());

        // Bound to the exact call: another digest or policy version does not match.
        let mut other = binding.clone();
        other.args_sha256 = "bb".into();
        assert!(s
            .mcp
            .consume_approval(&other, None, 70)
            .await
            .unwrap()
            .is_none());
        other = binding.clone();
        other.policy_version = "p2".into();
        assert!(s
            .mcp
            .consume_approval(&other, None, 70)
            .await
            .unwrap()
            .is_none());
        assert!(s
            .mcp
            .consume_approval(&binding, Some("ap2"), 70)
            .await
            .unwrap()
            .is_none());
        // Single use.
        let used = s
            .mcp
            .consume_approval(&binding, None, 70)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (used.id.as_str(), used.status.as_str(), used.used_ms),
            ("ap1", "used", Some(70))
        );
        assert!(s
            .mcp
            .consume_approval(&binding, None, 80)
            .await
            .unwrap()
            .is_none());

        // Expiry applies to approved ones too.
        s.mcp.insert_approval(&approval("ap4", 40)).await.unwrap();
        s.mcp
            .decide_approval("ap4", true, "admin", None, 90)
            .await
            .unwrap()
            .unwrap();
        assert!(s
            .mcp
            .consume_approval(&binding, Some("ap4"), 1_000)
            .await
            .unwrap()
            .is_none());
        assert!(s
            .mcp
            .consume_approval(&binding, Some("ap4"), 999)
            .await
            .unwrap()
            .is_some());
        assert_eq!(
            s.mcp.list_approvals(None, 2).await.unwrap().len(),
            2,
            "{engine}"
        );
    }
}

/// A store written before the conversation rollup existed gets it built from its rows when
/// the new version opens it.
#[tokio::test]
async fn the_conversation_rollup_is_built_from_older_rows_on_upgrade() {
    use crate::ledger::{ConversationQuery, LedgerRecord};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let records: Vec<LedgerRecord> = (0..9i64)
        .map(|i| LedgerRecord {
            time_ms: 1_000 + i,
            model: "m".into(),
            conversation_id: Some(format!("c{}", i % 3)),
            cost_usd: 0.5,
            ..Default::default()
        })
        .collect();
    store.append_ledger(&records).await.unwrap();
    // As the previous version left it: no rollup table, the migration not applied.
    sqlx::raw_sql(
        "DROP TABLE ledger_conversations; DELETE FROM tollgate_migrations WHERE version = 13",
    )
    .execute(store.pool())
    .await
    .unwrap();
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    let list = store
        .conversations(&ConversationQuery {
            since_ms: 0,
            until_ms: i64::MAX,
            limit: 10,
        })
        .await
        .unwrap();
    let ids: Vec<(&str, i64, i64, i64)> = list
        .iter()
        .map(|c| {
            (
                c.conversation_id.as_str(),
                c.requests,
                c.first_ms,
                c.last_ms,
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("c0", 3, 1_000, 1_006),
            ("c1", 3, 1_001, 1_007),
            ("c2", 3, 1_002, 1_008)
        ]
    );
}
