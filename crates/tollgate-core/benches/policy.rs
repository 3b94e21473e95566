//! Policy decision cost: `cargo bench -p tollgate-core --bench policy`.
//!
//! 100 rules in one set, of the shapes operators write (team and model checks, token limits);
//! the request matches only the last rule, so every rule is evaluated.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tollgate_core::config::{PolicyAction, PolicyConfig, PolicyRuleConfig};
use tollgate_core::identity::Principal;
use tollgate_core::policy::{model_request_value, principal_value, Decision, Policy};

fn main() {
    divan::main();
}

fn hundred_rules() -> Policy {
    let mut rules: Vec<PolicyRuleConfig> = (0..99)
        .map(|i| PolicyRuleConfig {
            name: format!("r{i}"),
            when: format!(
                "principal.team == 'team-{i}' && request.model.startsWith('model-{i}') && request.max_tokens <= {}",
                1000 + i
            ),
            action: PolicyAction::Deny,
            reason: Some("no".into()),
            paths: vec![],
        })
        .collect();
    rules.push(PolicyRuleConfig {
        name: "last".into(),
        when: "request.max_tokens <= 4096 && !request.stream".into(),
        action: PolicyAction::Allow,
        reason: None,
        paths: vec![],
    });
    Policy::compile(&[PolicyConfig {
        name: "bench".into(),
        applies_to: Some("!principal.is_master".into()),
        rules,
    }])
    .unwrap()
}

#[divan::bench]
fn decide_100_rules(bencher: divan::Bencher) {
    let policy = hundred_rules();
    let mut p = Principal::master();
    p.is_master = false;
    p.team = Some("platform".into());
    let principal = principal_value(&p);
    let request = model_request_value("chat", "gpt-4o-mini", "openai", false, Some(512), 100);
    bencher.bench(|| {
        let d = policy.evaluate(divan::black_box(&principal), divan::black_box(&request));
        assert_eq!(d, Decision::Allow { redact: vec![] });
    });
}

#[divan::bench]
fn build_request_variables(bencher: divan::Bencher) {
    let p = Principal::master();
    bencher.bench(|| {
        (
            principal_value(divan::black_box(&p)),
            model_request_value("chat", "gpt-4o-mini", "openai", false, Some(512), 100),
        )
    });
}
