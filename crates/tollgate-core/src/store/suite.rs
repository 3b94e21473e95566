//! One suite for every engine: each test body runs against memory and SQLite alike.

use super::*;
use crate::config::DatabaseUrl;

async fn engines() -> Vec<(&'static str, Stores, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Stores::open(&DatabaseUrl::Sqlite(dir.path().join("nested/t.db")))
        .await
        .unwrap();
    let memory = Stores::open(&DatabaseUrl::Memory).await.unwrap();
    vec![("memory", memory, None), ("sqlite", sqlite, Some(dir))]
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
                    ..Default::default()
                },
                5,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.name, "renamed");
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
