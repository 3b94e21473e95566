//! Operations: health, readiness, metrics, config reload, graceful drain.

use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;

use crate::harness::*;

#[tokio::test]
async fn health_ready_and_metrics() {
    let t = start(MOCK).await;
    let key = t.any_key().await;
    assert_eq!(
        t.client.send(Method::GET, "/healthz", &[], "").await.status,
        200
    );
    let ready = t.client.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["store"], "ok");

    t.client
        .post_json("/v1/chat/completions", &key, &chat_body("mock-echo", "a b"))
        .await;
    t.client
        .post_json("/v1/chat/completions", &key, &chat_body("nope", "a"))
        .await;
    assert_eq!(
        t.client.send(Method::GET, "/metrics", &[], "").await.status,
        401,
        "metrics need the master key by default"
    );
    let m = t.client.get("/metrics", MASTER).await.text();
    for want in [
        r#"tollgate_requests_total{route="/v1/chat/completions",model="mock-echo",provider="demo",status="200"} 1"#,
        r#"tollgate_requests_total{route="/v1/chat/completions",model="",provider="",status="404"} 1"#,
        "tollgate_request_duration_seconds_bucket{",
        "tollgate_overhead_seconds_count{route=\"/v1/chat/completions\"} 1",
        "tollgate_upstream_duration_seconds_count{provider=\"demo\",model=\"mock-echo\"} 1",
        "tollgate_in_flight_requests{",
        r#"tollgate_tokens_total{model="mock-echo",provider="demo",kind="completion"} 2"#,
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
}

#[tokio::test]
async fn public_metrics_option() {
    let t = start(&format!("{MOCK}admin:\n  public_metrics: true\n")).await;
    assert_eq!(
        t.client.send(Method::GET, "/metrics", &[], "").await.status,
        200
    );
}

#[tokio::test]
async fn file_change_reloads_and_bad_file_keeps_old_config() {
    let yaml = format!("{}{MOCK}reload:\n  interval: 50ms\n", base_yaml());
    let t = start_yaml(&yaml).await;
    let key = t.any_key().await;
    let status = |model: &'static str| {
        let client = t.client.clone();
        let key = key.clone();
        async move {
            client
                .post_json("/v1/chat/completions", &key, &chat_body(model, "x"))
                .await
                .status
        }
    };
    assert_eq!(status("added-later").await, 404);

    let added = format!("{}{MOCK}  - name: added-later\n    targets: [{{provider: demo}}]\nreload:\n  interval: 50ms\n", base_yaml());
    std::fs::write(t.config_path(), &added).unwrap();
    eventually("new model served after file change", || async {
        status("added-later").await == 200
    })
    .await;

    std::fs::write(t.config_path(), "models: [this is: not valid").unwrap();
    eventually("rejected reload counted", || async {
        t.client
            .get("/metrics", MASTER)
            .await
            .text()
            .contains(r#"tollgate_config_reloads_total{result="error"}"#)
    })
    .await;
    assert_eq!(status("added-later").await, 200, "old config keeps serving");

    // A reload through the same path as SIGHUP.
    std::fs::write(
        t.config_path(),
        yaml.replace("reload:\n  interval: 50ms\n", "reload:\n  watch: false\n"),
    )
    .unwrap();
    assert!(t.gw.reloader().reload().await);
    assert_eq!(status("added-later").await, 404);
}

#[tokio::test]
async fn shutdown_drains_in_flight_streams() {
    let t = start("providers:\n  - name: slow\n    kind: mock\n    mock: {latency: 600ms, chunks: 6}\nmodels:\n  - name: slow\n    targets: [{provider: slow}]\nshutdown:\n  drain_timeout: 20s\n").await;
    let key = t.any_key().await;
    let res = t
        .open_stream(&key, "slow", "one two three four five six")
        .await;
    assert_eq!(res.status(), 200);
    let mut incoming = res.into_body();
    let first = incoming.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    let TestGateway {
        gw,
        client,
        dir: _dir,
    } = t;
    let addr = gw.addr;
    let stopping = tokio::spawn(gw.shutdown());
    let rest = tokio::time::timeout(Duration::from_secs(20), incoming.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"),
        "stream finished during drain"
    );
    stopping.await.unwrap();
    drop(client);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after drain"
    );
}

#[tokio::test]
async fn in_flight_request_finishes_on_the_old_config() {
    let yaml = format!(
        "{}providers:\n  - name: slow\n    kind: mock\n    mock: {{latency: 400ms, chunks: 4}}\nmodels:\n  - name: going\n    targets: [{{provider: slow}}]\nreload:\n  watch: false\n",
        base_yaml()
    );
    let t = start_yaml(&yaml).await;
    let key = t.any_key().await;
    let res = t.open_stream(&key, "going", "a b c d").await;
    assert_eq!(res.status(), 200);
    let mut incoming = res.into_body();
    let first = incoming.frame().await.unwrap().unwrap();
    assert!(first.is_data());

    // The model disappears from the config while its stream is still running.
    std::fs::write(t.config_path(), format!("{}{MOCK}", base_yaml())).unwrap();
    assert!(t.gw.reloader().reload().await);
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &chat_body("going", "x"))
        .await;
    assert_eq!(res.status, 404, "new requests see the new config");

    let rest = incoming.collect().await.unwrap().to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("\"finish_reason\":\"stop\"") && rest.ends_with("data: [DONE]\n\n"),
        "old stream completed: {rest}"
    );
}

#[tokio::test]
async fn drain_deadline_closes_what_is_left() {
    let t = start("providers:\n  - name: endless\n    kind: mock\n    mock: {latency: 1h, chunks: 2}\nmodels:\n  - name: endless\n    targets: [{provider: endless}]\nshutdown:\n  drain_timeout: 100ms\n").await;
    let key = t.any_key().await;
    let res = t.open_stream(&key, "endless", "a b").await;
    let mut incoming = res.into_body();
    incoming.frame().await.unwrap().unwrap();
    let TestGateway {
        gw,
        client: _c,
        dir: _d,
    } = t;
    // Would hang for an hour without the deadline; the test runner's timeout catches that.
    gw.shutdown().await;
    let rest = incoming.collect().await;
    let finished = rest
        .map(|c| c.to_bytes().ends_with(b"data: [DONE]\n\n"))
        .unwrap_or(false);
    assert!(!finished, "the stream was cut, not completed");
}

#[tokio::test]
async fn master_key_changes_on_reload_but_is_never_dropped() {
    let t = start(MOCK).await;
    let rotated = "rotated-master-key-0123456789";
    let yaml = format!("{}{MOCK}", base_yaml()).replace(MASTER, rotated);
    std::fs::write(t.config_path(), &yaml).unwrap();
    assert!(t.gw.reloader().reload().await);
    assert_eq!(t.client.get("/admin/v1/keys", rotated).await.status, 200);
    assert_eq!(t.client.get("/admin/v1/keys", MASTER).await.status, 401);

    // Removing master_key keeps the current one rather than minting an unseen new one.
    std::fs::write(
        t.config_path(),
        yaml.replace(&format!("master_key: {rotated}\n"), ""),
    )
    .unwrap();
    assert!(t.gw.reloader().reload().await);
    assert_eq!(t.client.get("/admin/v1/keys", rotated).await.status, 200);
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = start(&format!(
        "{MOCK}limits:\n  header_read_timeout: 200ms\n  body_read_timeout: 200ms\n"
    ))
    .await;
    let key = t.any_key().await;

    // A body that never finishes: 408 in the OpenAI shape.
    let mut s = tokio::net::TcpStream::connect(t.gw.addr).await.unwrap();
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: 100\r\n\r\n{{\"model\"");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");

    // Headers that never finish: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(t.gw.addr).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "connection with unfinished headers was not closed"
    );
}
