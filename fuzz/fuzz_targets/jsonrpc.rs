//! JSON-RPC envelopes, as the tool and agent layers read them: classification and the accessors
//! never panic, and what is classified as a request has a method.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_mcp::jsonrpc::{self, Kind};

fuzz_target!(|data: &[u8]| {
    if tollgate_core::http::json_depth_exceeds(data, 64).is_some() {
        return;
    }
    let Ok(msg) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let messages = match &msg {
        serde_json::Value::Array(batch) => batch.clone(),
        one => vec![one.clone()],
    };
    for m in &messages {
        match jsonrpc::classify(m) {
            Ok(Kind::Request) | Ok(Kind::Notification) => {
                assert!(m["method"].is_string());
                let _ = jsonrpc::params(m);
                let _ = jsonrpc::method(m);
            }
            Ok(Kind::Response) => assert!(m.get("id").is_some()),
            Err(_) => {}
        }
    }
    let _ = tollgate_llm::envelope::Envelope::parse(data);
});
