//! Starting a gateway for a test and talking to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use serde_json::{json, Value};
use tollgate::{ConfigSource, Gateway};
use tollgate_core::config::Config;
use tollgate_testkit::TestClient;

pub const MASTER: &str = "test-master-key-0123456789";

pub struct TestGateway {
    pub gw: Gateway,
    pub client: TestClient,
    pub dir: tempfile::TempDir,
}

/// The base config every test extends: ephemeral port, in-memory store, known master key.
pub fn base_yaml() -> String {
    format!("listen: 127.0.0.1:0\nmaster_key: {MASTER}\nstorage:\n  database_url: memory://\nlogging:\n  level: warn\n")
}

/// Starts a gateway from `base_yaml()` plus `extra`.
pub async fn start(extra: &str) -> TestGateway {
    start_yaml(&format!("{}{extra}", base_yaml())).await
}

/// Starts a gateway from a whole YAML document, written to a file so reload works.
pub async fn start_yaml(yaml: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::parse(yaml, "test", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(config, ConfigSource::File(path), None)
        .await
        .unwrap();
    let client = TestClient::new(gw.addr);
    TestGateway { gw, client, dir }
}

pub const MOCK: &str = "providers:\n  - name: demo\n    kind: mock\nmodels:\n  - name: mock-echo\n    targets: [{provider: demo, model: echo}]\n  - name: mock-other\n    targets: [{provider: demo}]\n";

impl TestGateway {
    /// Creates a key through the admin API; returns (id, secret).
    pub async fn key(&self, body: Value) -> (String, String) {
        let res = self.client.post_json("/admin/v1/keys", MASTER, &body).await;
        assert_eq!(res.status, 201, "{}", res.text());
        let v = res.json();
        (
            v["key"]["id"].as_str().unwrap().to_owned(),
            v["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Creates a team (and optional roles) through the admin API.
    pub async fn team(&self, id: &str, roles: &[&str]) {
        let res = self
            .client
            .post_json(
                "/admin/v1/teams",
                MASTER,
                &json!({"id": id, "roles": roles}),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
    }

    /// Creates a user through the admin API.
    pub async fn user(&self, id: &str, team: Option<&str>, roles: &[&str]) {
        let res = self
            .client
            .post_json(
                "/admin/v1/users",
                MASTER,
                &json!({"id": id, "team": team, "roles": roles}),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
    }

    pub async fn any_key(&self) -> String {
        self.key(json!({"name": "test"})).await.1
    }

    /// Starts a streaming chat completion; returns the response with its body unread.
    pub async fn open_stream(
        &self,
        key: &str,
        model: &str,
        text: &str,
    ) -> http::Response<hyper::body::Incoming> {
        let mut body = chat_body(model, text);
        body["stream"] = json!(true);
        let auth = format!("Bearer {key}");
        self.client
            .open(
                http::Method::POST,
                "/v1/chat/completions",
                &[("authorization", &auth)],
                body.to_string(),
            )
            .await
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("tollgate.yaml")
    }
}

pub fn chat_body(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Polls `check` until it returns true, failing after a generous bound. For conditions that
/// become true asynchronously (reloads, cache refreshes); never a fixed sleep.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

/// The ledger's rows once there are at least `n` (records are written off the request path).
pub async fn ledger_rows(t: &TestGateway, n: usize) -> Vec<Value> {
    let rows = std::sync::Mutex::new(Vec::new());
    eventually("ledger rows", || async {
        let got = t.client.get("/admin/v1/ledger", MASTER).await.json()["data"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let enough = got.len() >= n;
        *rows.lock().unwrap() = got;
        enough
    })
    .await;
    rows.into_inner().unwrap()
}

/// A TCP proxy to a real server (Redis, PostgreSQL) whose connections can be cut and
/// refused, then allowed again: the server failing for one gateway, not for other tests.
pub struct Cuttable {
    pub port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Cuttable {
    pub async fn start(target: &'static str) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Cuttable { port, up, conns }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The local Redis every Redis test uses.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Whether Redis answers; when it does not, says so loudly (the test then skips), or fails
/// under `TOLLGATE_REQUIRE_SERVICES=1`.
pub async fn redis_up(what: &str) -> bool {
    match tollgate_core::redis_store::connect(REDIS_URL).await {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("TOLLGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "Redis at {REDIS_URL} is required (TOLLGATE_REQUIRE_SERVICES=1) but unreachable: {e}"
            );
            eprintln!("!!! SKIPPING {what}: Redis at {REDIS_URL} is unreachable: {e}");
            false
        }
    }
}

/// Deletes every Redis key under a test's prefix.
pub async fn clean_redis(prefix: &str) {
    let mut con = tollgate_core::redis_store::connect(REDIS_URL)
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut con)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut con)
            .await
            .unwrap();
    }
}
