//! OTLP trace export: a `chat {model}` span with GenAI attributes under the client's
//! `traceparent`, decoded from the protobuf the gateway posts to a collector.

use std::collections::HashMap;

use http::Method;
use prost::Message;
use tollgate_core::otlp::{any_value::Value as V, ExportTraceServiceRequest, Span};
use tollgate_testkit::{MockUpstream, Reply};

use crate::harness::*;

fn attrs(span: &Span) -> HashMap<String, V> {
    span.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

#[tokio::test]
async fn model_calls_export_genai_spans_under_the_client_trace() {
    let collector = MockUpstream::start().await;
    for _ in 0..4 {
        collector.push(Reply::raw(200, "{}"));
    }
    let yaml = format!(
        "{MOCK}telemetry:\n  otlp:\n    endpoint: http://{}\n    export_interval: 50ms\n    headers: {{x-collector-token: sekret}}\n",
        collector.addr
    );
    let t = start(&yaml).await;
    t.team("ml", &[]).await;
    let (key_id, key) = t.key(serde_json::json!({"name": "k", "team": "ml"})).await;
    let auth = format!("Bearer {key}");
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[
                ("authorization", &auth),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("x-tollgate-conversation-id", "conv-42"),
            ],
            chat_body("mock-echo", "hello brave new world").to_string(),
        )
        .await;
    assert_eq!(res.status, 200);
    // A client that does not sample its trace gets no span.
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[
                ("authorization", &auth),
                (
                    "traceparent",
                    "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                ),
            ],
            chat_body("mock-echo", "x").to_string(),
        )
        .await;
    assert_eq!(res.status, 200);
    // A stream's span ends with the stream.
    let res = t.open_stream(&key, "mock-echo", "a b").await;
    http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap();

    let mut spans = Vec::new();
    let mut seen = 0;
    while spans.len() < 2 {
        let requests = collector.wait_for_requests(seen + 1).await;
        for r in &requests[seen..] {
            assert_eq!(r.path, "/v1/traces");
            assert_eq!(r.headers["content-type"], "application/x-protobuf");
            assert_eq!(r.headers["x-collector-token"], "sekret");
            let export = ExportTraceServiceRequest::decode(r.body.clone()).unwrap();
            for rs in export.resource_spans {
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
        }
        seen = requests.len();
    }
    assert_eq!(
        spans.len(),
        2,
        "the unsampled trace exported nothing: {spans:?}"
    );
    let span = spans
        .iter()
        .find(|s| s.trace_id == hex("0af7651916cd43dd8448eb211c80319c"))
        .unwrap();
    assert_eq!(span.name, "chat mock-echo");
    assert_eq!(
        span.parent_span_id,
        hex("b7ad6b7169203331"),
        "child of the client's span"
    );
    assert_eq!(span.kind, 3);
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    let a = attrs(span);
    assert_eq!(a["gen_ai.operation.name"], V::StringValue("chat".into()));
    assert_eq!(
        a["gen_ai.provider.name"],
        V::StringValue("tollgate.mock".into())
    );
    assert_eq!(
        a["gen_ai.request.model"],
        V::StringValue("mock-echo".into())
    );
    assert_eq!(a["gen_ai.response.model"], V::StringValue("echo".into()));
    assert_eq!(a["gen_ai.usage.input_tokens"], V::IntValue(13));
    assert_eq!(a["gen_ai.usage.output_tokens"], V::IntValue(7));
    assert_eq!(a["tollgate.key_id"], V::StringValue(key_id));
    assert_eq!(a["tollgate.team"], V::StringValue("ml".into()));
    assert_eq!(a["tollgate.attempts"], V::IntValue(1));
    assert_eq!(
        a["gen_ai.conversation.id"],
        V::StringValue("conv-42".into())
    );

    let stream_span = spans
        .iter()
        .find(|s| s.trace_id != hex("0af7651916cd43dd8448eb211c80319c"))
        .unwrap();
    assert!(
        stream_span.parent_span_id.is_empty(),
        "a new trace has no parent"
    );
    let sa = attrs(stream_span);
    assert_eq!(stream_span.name, "chat mock-echo");
    assert_eq!(sa["http.response.status_code"], V::IntValue(200));
    assert!(
        !sa.contains_key("error.type"),
        "a stream that ended normally: {sa:?}"
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).unwrap())
        .collect()
}
