//! The policy evaluator: any rule text compiles or is refused with field errors, and a compiled
//! policy evaluates any request to a decision without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::config::{PolicyAction, PolicyConfig, PolicyRuleConfig};
use tollgate_core::policy::{self, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First line: the rule's condition; the rest: the request as JSON.
    let (when, request) = text.split_once('\n').unwrap_or((text, "{}"));
    let sets = vec![PolicyConfig {
        name: "fuzz".into(),
        applies_to: None,
        rules: vec![PolicyRuleConfig {
            name: "r".into(),
            when: when.to_owned(),
            action: PolicyAction::Deny,
            reason: None,
            paths: Vec::new(),
        }],
    }];
    let Ok(compiled) = Policy::compile(&sets) else {
        return;
    };
    if tollgate_core::http::json_depth_exceeds(request.as_bytes(), 64).is_some() {
        return;
    }
    let args: serde_json::Value = serde_json::from_str(request).unwrap_or_default();
    let principal =
        policy::json_value(&serde_json::json!({"id": "k1", "team": "t", "roles": ["dev"]}));
    let request = policy::tool_request_value("tools/call", "files", "", "read", &args, &args);
    let _ = compiled.evaluate(&principal, &request);
});
