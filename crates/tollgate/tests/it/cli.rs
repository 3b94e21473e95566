//! The real `tollgate` binary: version, check, keys, the embedded default and signals.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_testkit::TestClient;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn run(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_MASTER_KEY")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `tollgate serve`, killed on drop.
struct Served {
    child: Child,
    addr: std::net::SocketAddr,
    stdout_lines: Vec<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[expect(
    clippy::zombie_processes,
    reason = "Served's Drop kills and waits for the child"
)]
fn serve(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .current_dir(cwd)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_MASTER_KEY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let status = child.wait();
            panic!("tollgate exited ({status:?}) before listening; output: {lines:?}");
        }
        let line = line.trim_end().to_owned();
        if let Some(url) = line.strip_prefix("tollgate listening on http://") {
            let addr = url.parse().unwrap();
            lines.push(line);
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
            return Served {
                child,
                addr,
                stdout_lines: lines,
            };
        }
        lines.push(line);
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

#[test]
fn version() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, _) = run(&["--version"], dir.path());
    assert!(ok);
    assert_eq!(
        out.trim(),
        format!("tollgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_prints_normalised_config_or_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "providers:\n  - {name: d, kind: mock}\nmodels:\n  - name: m\n    targets: [{provider: d}]\n").unwrap();
    let (ok, out, err) = run(&["check", "--config", good.to_str().unwrap()], dir.path());
    assert!(ok, "{err}");
    assert!(
        out.contains("listen: 127.0.0.1:4000")
            && out.contains("error_rate: 0.0")
            && out.contains("model: m"),
        "{out}"
    );

    // The shipped example checks on a fresh machine, with none of its variables set.
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tollgate.yaml");
    let (ok, _, err) = run(
        &["check", "--config", example.to_str().unwrap()],
        dir.path(),
    );
    assert!(ok, "{err}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "lisen: x\nproviders:\n  - {name: d, kind: mock, colour: red}\nmodels:\n  - name: m\n    targets: [{provider: ghost}]\n").unwrap();
    let (ok, _, err) = run(&["check", "--config", bad.to_str().unwrap()], dir.path());
    assert!(!ok);
    for want in [
        "lisen",
        "providers[0].colour",
        "models[0].targets[0].provider",
    ] {
        assert!(err.contains(want), "missing {want} in {err}");
    }
}

#[tokio::test]
async fn embedded_default_serves_mock_echo_and_keys_cli_shares_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&[], dir.path(), &[("TOLLGATE_LISTEN", "127.0.0.1:0")]);
    assert!(
        dir.path().join("tollgate-data/tollgate.db").exists(),
        "SQLite created in ./tollgate-data"
    );
    let master = served
        .stdout_lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("master key: "))
        .expect("generated master key printed")
        .to_owned();
    let client = TestClient::new(served.addr);
    let res = client
        .post_json(
            "/v1/chat/completions",
            &master,
            &chat_body("mock-echo", "hi"),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["choices"][0]["message"]["content"], "hi");

    // Teams and users from the CLI, and a key of theirs.
    let (ok, _, err) = run(&["teams", "create", "ml", "--role", "reader"], dir.path());
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        &[
            "users", "create", "alice", "--team", "ml", "--role", "writer",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    let (ok, _, _) = run(&["users", "create", "bob", "--team", "ghost"], dir.path());
    assert!(!ok, "unknown team refused");
    let (ok, out, _) = run(
        &[
            "teams",
            "set-roles",
            "ml",
            "--role",
            "reader",
            "--role",
            "admin",
        ],
        dir.path(),
    );
    assert!(ok, "{out}");
    let (ok, out, _) = run(&["teams", "list"], dir.path());
    assert!(ok && out.contains("\"admin\""), "{out}");

    // A key made by the CLI in another process is picked up by the running server.
    let (ok, out, err) = run(
        &[
            "keys", "create", "--name", "cli", "--models", "mock-*", "--user", "alice", "--json",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let status = || async {
        client
            .post_json(
                "/v1/chat/completions",
                &secret,
                &chat_body("mock-echo", "x"),
            )
            .await
            .status
    };
    eventually("CLI-created key accepted", || async {
        status().await == 200
    })
    .await;

    let (ok, out, _) = run(&["keys", "list"], dir.path());
    assert!(ok && out.contains(&id) && out.contains("active"), "{out}");
    // A key with limits of its own from the CLI; a bad one is refused with the field.
    let (ok, out, err) = run(
        &[
            "keys",
            "create",
            "--name",
            "capped",
            "--budget-usd",
            "2.5",
            "--budget-period",
            "weekly",
            "--rpm",
            "30",
            "--json",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    let capped: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        capped["key"]["limits"],
        serde_json::json!({"budget_usd": 2.5, "budget_period": "weekly", "rpm": 30})
    );
    let (ok, _, err) = run(
        &["keys", "create", "--name", "bad", "--tpm", "0"],
        dir.path(),
    );
    assert!(!ok && err.contains("limits.tpm"), "{err}");
    let (ok, out, _) = run(
        &["keys", "rotate", &id, "--grace", "0s", "--json"],
        dir.path(),
    );
    assert!(ok);
    let rotated: Value = serde_json::from_str(&out).unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    eventually("old secret refused after rotation", || async {
        status().await == 401
    })
    .await;
    assert_eq!(
        client
            .post_json(
                "/v1/chat/completions",
                &new_secret,
                &chat_body("mock-echo", "x")
            )
            .await
            .status,
        200
    );
    let (ok, _, _) = run(&["keys", "revoke", &id], dir.path());
    assert!(ok);
    eventually("revoked key refused", || async {
        client
            .post_json(
                "/v1/chat/completions",
                &new_secret,
                &chat_body("mock-echo", "x"),
            )
            .await
            .status
            == 401
    })
    .await;

    // The master key is stored only as a hash; a restart does not print a new one.
    drop(served);
    let db = std::fs::read(dir.path().join("tollgate-data/tollgate.db")).unwrap();
    assert!(
        !db.windows(master.len()).any(|w| w == master.as_bytes()),
        "master key stored in clear"
    );
    assert!(
        !db.windows(new_secret.len())
            .any(|w| w == new_secret.as_bytes()),
        "key secret stored in clear"
    );
    let again = serve(&[], dir.path(), &[("TOLLGATE_LISTEN", "127.0.0.1:0")]);
    assert!(again
        .stdout_lines
        .iter()
        .all(|l| !l.contains("master key:")));
    let res = TestClient::new(again.addr)
        .post_json(
            "/v1/chat/completions",
            &master,
            &chat_body("mock-echo", "x"),
        )
        .await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.yaml");
    let base = format!("listen: 127.0.0.1:0\nmaster_key: {MASTER}\nstorage: {{database_url: memory://}}\nreload: {{watch: false}}\nproviders:\n  - name: slow\n    kind: mock\n    mock: {{latency: 800ms, chunks: 4}}\nmodels:\n  - name: a\n    targets: [{{provider: slow}}]\n");
    std::fs::write(&cfg, &base).unwrap();
    let served = serve(&["--config", cfg.to_str().unwrap()], dir.path(), &[]);
    let client = TestClient::new(served.addr);
    let status = |m: &'static str| {
        let client = client.clone();
        async move {
            client.post_json("/v1/chat/completions", MASTER, &json!({"model": m, "messages": [{"role": "user", "content": "x"}], "stream": true})).await.status
        }
    };
    assert_eq!(status("b").await, 404);
    std::fs::write(
        &cfg,
        format!("{base}  - name: b\n    targets: [{{provider: slow}}]\n"),
    )
    .unwrap();
    signal(&served.child, "HUP");
    eventually("SIGHUP reload adds model b", || async {
        status("b").await == 200
    })
    .await;

    // SIGTERM while a stream is in flight: the stream completes, then the process exits 0.
    let auth = format!("Bearer {MASTER}");
    let res = client.open(http::Method::POST, "/v1/chat/completions", &[("authorization", &auth)], json!({"model": "a", "messages": [{"role": "user", "content": "a b c d"}], "stream": true}).to_string()).await;
    let mut body = res.into_body();
    use http_body_util::BodyExt;
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    let mut served = served;
    signal(&served.child, "TERM");
    let rest = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
    let status = tokio::task::spawn_blocking(move || served.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}
