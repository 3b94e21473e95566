//! One policy language for every layer: rule sets of CEL expressions over `principal.*` and a
//! per-layer `request.*`, compiled once at config load and evaluated in process.
//!
//! Semantics: a rule set applies when its `applies_to` expression holds (or always, without
//! one). Within an applicable set the first rule whose `when` holds decides; if none does, the
//! set denies (default deny). Across sets, any deny wins, then any approval requirement; redact
//! paths from all sets are merged. With no applicable set the request is allowed. A rule that
//! fails to evaluate (type error, missing field) denies: policy fails closed.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::Key;
use cel::{Context, Env, Program, Value};

use crate::config::{FieldError, PolicyAction, PolicyConfig};
use crate::identity::Principal;

/// The outcome of evaluating every rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `redact` lists request fields to remove before forwarding.
    Allow {
        redact: Vec<String>,
    },
    Deny {
        rule: String,
        reason: String,
    },
    RequireApproval {
        rule: String,
    },
}

struct Rule {
    /// `set/rule`, as reported in denials and audit records.
    name: String,
    when: Program,
    action: PolicyAction,
    reason: Option<String>,
    paths: Vec<String>,
}

struct RuleSet {
    name: String,
    applies_to: Option<Program>,
    rules: Vec<Rule>,
}

/// A compiled policy. Cheap to share; evaluation allocates only the request's variables.
pub struct Policy {
    sets: Vec<RuleSet>,
    env: Arc<Env>,
    /// SHA-256 (hex) of the rule sets as configured: what approvals are bound to.
    version: String,
}

fn version_of(sets: &[PolicyConfig]) -> String {
    let v = serde_json::to_value(sets).unwrap_or(serde_json::Value::Null);
    crate::canonical::sha256_hex(&v)
}

fn compile(source: &str, path: String, errors: &mut Vec<FieldError>) -> Option<Program> {
    match Program::compile(source) {
        Ok(p) => Some(p),
        Err(e) => {
            errors.push(FieldError::new(
                path,
                format!("invalid CEL expression: {e}"),
            ));
            None
        }
    }
}

impl Policy {
    /// A policy that allows everything (no rule sets).
    pub fn empty() -> Policy {
        Policy {
            sets: Vec::new(),
            env: Arc::new(Env::stdlib()),
            version: version_of(&[]),
        }
    }

    /// Compiles rule sets; every expression that does not compile is reported with its path.
    pub fn compile(sets: &[PolicyConfig]) -> Result<Policy, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut compiled = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let applies_to = set
                .applies_to
                .as_deref()
                .and_then(|src| compile(src, format!("policies[{i}].applies_to"), &mut errors));
            let mut rules = Vec::new();
            for (j, rule) in set.rules.iter().enumerate() {
                if let Some(when) = compile(
                    &rule.when,
                    format!("policies[{i}].rules[{j}].when"),
                    &mut errors,
                ) {
                    rules.push(Rule {
                        name: format!("{}/{}", set.name, rule.name),
                        when,
                        action: rule.action,
                        reason: rule.reason.clone(),
                        paths: rule.paths.clone(),
                    });
                }
            }
            compiled.push(RuleSet {
                name: set.name.clone(),
                applies_to,
                rules,
            });
        }
        if errors.is_empty() {
            Ok(Policy {
                sets: compiled,
                env: Arc::new(Env::stdlib()),
                version: version_of(sets),
            })
        } else {
            Err(errors)
        }
    }

    /// Compiles the config's rule sets, the errors joined into one message (the config was
    /// validated already; this only fails if it was not).
    pub fn from_config(config: &crate::config::Config) -> Result<Policy, String> {
        Policy::compile(&config.policies).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Changes whenever a rule set does (and only then): approvals given under one version
    /// of the policy do not carry over to another.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn context(&self, principal: &Value, request: &Value) -> Context<'_, '_> {
        let mut ctx = Context::with_env(self.env.clone());
        ctx.add_variable_from_value("principal", principal.clone());
        ctx.add_variable_from_value("request", request.clone());
        ctx
    }

    /// Decides a request. `request` holds the layer's attributes.
    pub fn evaluate(&self, principal: &Value, request: &Value) -> Decision {
        if self.sets.is_empty() {
            return Decision::Allow { redact: Vec::new() };
        }
        let ctx = self.context(principal, request);

        let mut redact = Vec::new();
        let mut approval: Option<String> = None;
        for set in &self.sets {
            if let Some(scope) = &set.applies_to {
                match holds(scope, &ctx) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        return Decision::Deny {
                            rule: format!("{}/applies_to", set.name),
                            reason: format!("policy failed to evaluate: {e}"),
                        }
                    }
                }
            }
            let mut decided = false;
            for rule in &set.rules {
                match holds(&rule.when, &ctx) {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(e) => {
                        return Decision::Deny {
                            rule: rule.name.clone(),
                            reason: format!("policy failed to evaluate: {e}"),
                        }
                    }
                }
                decided = true;
                match rule.action {
                    PolicyAction::Allow => {}
                    PolicyAction::Deny => {
                        return Decision::Deny {
                            rule: rule.name.clone(),
                            reason: rule
                                .reason
                                .clone()
                                .unwrap_or_else(|| "denied by policy".to_owned()),
                        }
                    }
                    PolicyAction::RequireApproval => {
                        approval.get_or_insert_with(|| rule.name.clone());
                    }
                    PolicyAction::Redact => redact.extend(rule.paths.iter().cloned()),
                }
                break;
            }
            if !decided {
                return Decision::Deny {
                    rule: format!("{}/default", set.name),
                    reason: format!("no rule of policy {:?} allows this request", set.name),
                };
            }
        }
        match approval {
            Some(rule) => Decision::RequireApproval { rule },
            None => Decision::Allow { redact },
        }
    }
}

impl Policy {
    /// Whether some request like this one could be allowed, for hiding what a caller may never
    /// use (tools in a list). A rule that cannot be evaluated without the call's details (its
    /// arguments) counts as possibly matching: an allowing one keeps the item visible, a
    /// denying one does not hide it. Only a set that certainly applies and certainly denies
    /// hides the item.
    pub fn might_allow(&self, principal: &Value, request: &Value) -> bool {
        if self.sets.is_empty() {
            return true;
        }
        let ctx = self.context(principal, request);
        for set in &self.sets {
            let certain = match &set.applies_to {
                None => true,
                Some(scope) => match holds(scope, &ctx) {
                    Ok(true) => true,
                    Ok(false) => continue,
                    Err(_) => false,
                },
            };
            let mut allows = false;
            for rule in &set.rules {
                match holds(&rule.when, &ctx) {
                    Ok(false) => continue,
                    Ok(true) => {
                        allows = rule.action != PolicyAction::Deny;
                        break;
                    }
                    Err(_) if rule.action != PolicyAction::Deny => {
                        allows = true;
                        break;
                    }
                    Err(_) => continue,
                }
            }
            if certain && !allows {
                return false;
            }
        }
        true
    }
}

fn holds(program: &Program, ctx: &Context) -> Result<bool, String> {
    match program.execute(ctx) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("expression gave {other:?}, not a bool")),
        Err(e) => Err(e.to_string()),
    }
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_owned()))
}

/// Builds a CEL map from string keys.
pub fn map(entries: Vec<(&str, Value)>) -> Value {
    let map: HashMap<Key, Value> = entries
        .into_iter()
        .map(|(k, v)| (Key::String(Arc::new(k.to_owned())), v))
        .collect();
    Value::Map(map.into())
}

/// `principal.*`: absent strings are empty, so `principal.team == 'x'` never errors.
pub fn principal_value(p: &Principal) -> Value {
    map(vec![
        ("key_id", string(p.key_id.as_deref().unwrap_or(""))),
        ("name", string(&p.name)),
        ("user", string(p.user.as_deref().unwrap_or(""))),
        ("team", string(p.team.as_deref().unwrap_or(""))),
        ("subject", string(p.subject.as_deref().unwrap_or(""))),
        ("is_master", Value::Bool(p.is_master)),
        (
            "roles",
            Value::List(Arc::new(p.roles.iter().map(|r| string(r)).collect())),
        ),
        ("tenant", string(p.tenant.as_deref().unwrap_or(""))),
        ("agent", string(p.agent.as_deref().unwrap_or(""))),
        (
            "delegation",
            Value::List(Arc::new(p.delegation.iter().map(|d| string(d)).collect())),
        ),
    ])
}

/// Builds `request.*` for a model call.
pub fn model_request_value(
    endpoint: &str,
    model: &str,
    provider: &str,
    stream: bool,
    max_tokens: Option<i64>,
    estimated_input_tokens: i64,
) -> Value {
    map(vec![
        ("layer", string("model")),
        ("endpoint", string(endpoint)),
        ("model", string(model)),
        ("provider", string(provider)),
        ("stream", Value::Bool(stream)),
        // Absent means "as many as the model allows": larger than any limit a rule states.
        ("max_tokens", Value::Int(max_tokens.unwrap_or(i64::MAX))),
        ("estimated_input_tokens", Value::Int(estimated_input_tokens)),
    ])
}

/// Builds `request.*` for a tool-layer call: `method` is the MCP method (`tools/call`,
/// `tools/list`, ...), `server` the owning upstream, `tool` the upstream's own name for the
/// tool, prompt or resource URI (empty for methods that name none), `args` the call's
/// arguments and `annotations` the tool's annotations as the upstream declared them.
pub fn tool_request_value(
    method: &str,
    server: &str,
    virtual_server: &str,
    tool: &str,
    args: &serde_json::Value,
    annotations: &serde_json::Value,
) -> Value {
    map(vec![
        ("layer", string("tool")),
        ("method", string(method)),
        ("server", string(server)),
        ("virtual_server", string(virtual_server)),
        ("tool", string(tool)),
        ("args", json_value(args)),
        ("annotations", json_value(annotations)),
    ])
}

/// Builds `request.*` for an agent-layer call: `agent` the registered agent, `method` the
/// operation's v1.0 name (`SendMessage`, `GetTask`, ...; `GetAgentCard` for card reads),
/// `wire_method` the method as the caller sent it (`message/send`, or the REST verb and
/// path), `version` the protocol version (`0.3`, `1.0`), `tenant` the caller's tenant.
pub fn agent_request_value(
    agent: &str,
    method: &str,
    wire_method: &str,
    version: &str,
    tenant: &str,
) -> Value {
    map(vec![
        ("layer", string("agent")),
        ("agent", string(agent)),
        ("method", string(method)),
        ("wire_method", string(wire_method)),
        ("version", string(version)),
        ("tenant", string(tenant)),
    ])
}

/// A JSON value as CEL sees it: objects become maps, integers stay integers (so
/// `args.amount <= 100` compares numbers), `null` is CEL's `null`.
pub fn json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => string(s),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(json_value).collect()))
        }
        serde_json::Value::Object(fields) => {
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_value(v)))
                .collect();
            Value::Map(map.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyRuleConfig;

    fn rule(name: &str, when: &str, action: PolicyAction) -> PolicyRuleConfig {
        PolicyRuleConfig {
            name: name.into(),
            when: when.into(),
            action,
            reason: Some(format!("{name} says no")),
            paths: vec!["user".into()],
        }
    }

    fn principal(team: &str) -> Value {
        let mut p = Principal::master();
        p.is_master = false;
        p.team = Some(team.to_owned());
        principal_value(&p)
    }

    fn request(model: &str, stream: bool, max: Option<i64>) -> Value {
        model_request_value("chat", model, "demo", stream, max, 10)
    }

    #[test]
    fn first_matching_rule_decides_and_default_is_deny() {
        let policy = Policy::compile(&[PolicyConfig {
            name: "interns".into(),
            applies_to: Some("principal.team == 'interns'".into()),
            rules: vec![
                rule("no-stream", "request.stream", PolicyAction::Deny),
                rule(
                    "small",
                    "request.model.startsWith('mock-') && request.max_tokens <= 100",
                    PolicyAction::Allow,
                ),
            ],
        }])
        .unwrap();
        let allow = Decision::Allow { redact: vec![] };
        assert_eq!(
            policy.evaluate(
                &principal("interns"),
                &request("mock-echo", false, Some(50))
            ),
            allow
        );
        assert_eq!(
            policy.evaluate(&principal("staff"), &request("gpt-4o", true, None)),
            allow,
            "set does not apply"
        );
        assert_eq!(
            policy.evaluate(&principal("interns"), &request("mock-echo", true, Some(50))),
            Decision::Deny {
                rule: "interns/no-stream".into(),
                reason: "no-stream says no".into()
            }
        );
        let Decision::Deny { rule, .. } =
            policy.evaluate(&principal("interns"), &request("mock-echo", false, None))
        else {
            panic!("absent max_tokens must not pass a limit");
        };
        assert_eq!(rule, "interns/default");
    }

    #[test]
    fn approval_redact_and_fail_closed() {
        let policy = Policy::compile(&[
            PolicyConfig {
                name: "a".into(),
                applies_to: None,
                rules: vec![rule("scrub", "true", PolicyAction::Redact)],
            },
            PolicyConfig {
                name: "b".into(),
                applies_to: None,
                rules: vec![
                    rule(
                        "ask",
                        "request.model == 'big'",
                        PolicyAction::RequireApproval,
                    ),
                    rule("ok", "true", PolicyAction::Allow),
                ],
            },
        ])
        .unwrap();
        assert_eq!(
            policy.evaluate(&principal("x"), &request("m", false, None)),
            Decision::Allow {
                redact: vec!["user".into()]
            }
        );
        assert_eq!(
            policy.evaluate(&principal("x"), &request("big", false, None)),
            Decision::RequireApproval {
                rule: "b/ask".into()
            }
        );

        let broken = Policy::compile(&[PolicyConfig {
            name: "c".into(),
            applies_to: None,
            rules: vec![rule(
                "typo",
                "request.no_such_field > 3",
                PolicyAction::Allow,
            )],
        }])
        .unwrap();
        assert!(matches!(
            broken.evaluate(&principal("x"), &request("m", false, None)),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn tool_rules_see_arguments() {
        let policy = Policy::compile(&[PolicyConfig {
            name: "files".into(),
            applies_to: Some("request.layer == 'tool' && request.server == 'files'".into()),
            rules: vec![
                rule(
                    "data-only",
                    "request.tool == 'read' && request.args.path.startsWith('/data/')",
                    PolicyAction::Allow,
                ),
                rule(
                    "small-payments",
                    "request.tool == 'pay' && request.args.amount <= 100 && !request.annotations.destructiveHint",
                    PolicyAction::Allow,
                ),
            ],
        }])
        .unwrap();
        let call = |tool: &str, args: serde_json::Value| {
            policy.evaluate(
                &principal("x"),
                &tool_request_value(
                    "tools/call",
                    "files",
                    "",
                    tool,
                    &args,
                    &serde_json::json!({"destructiveHint": false}),
                ),
            )
        };
        let allow = Decision::Allow { redact: vec![] };
        assert_eq!(
            call("read", serde_json::json!({"path": "/data/a.txt"})),
            allow
        );
        assert!(matches!(
            call("read", serde_json::json!({"path": "/etc/passwd"})),
            Decision::Deny { .. }
        ));
        assert_eq!(call("pay", serde_json::json!({"amount": 100})), allow);
        assert!(matches!(
            call("pay", serde_json::json!({"amount": 101.5})),
            Decision::Deny { .. }
        ));
        // A missing argument fails closed.
        assert!(matches!(
            call("read", serde_json::json!({})),
            Decision::Deny { .. }
        ));
        // Listing: a tool whose rule needs arguments stays visible, a tool no rule allows
        // is hidden.
        let listing = |tool: &str| {
            policy.might_allow(
                &principal("x"),
                &tool_request_value(
                    "tools/call",
                    "files",
                    "",
                    tool,
                    &serde_json::Value::Null,
                    &serde_json::Value::Null,
                ),
            )
        };
        assert!(listing("read"));
        assert!(!listing("delete"));
        // The model layer's requests are outside the set's scope.
        assert_eq!(
            policy.evaluate(&principal("x"), &request("m", false, None)),
            allow
        );
    }

    #[test]
    fn compile_errors_have_paths() {
        let Err(errors) = Policy::compile(&[PolicyConfig {
            name: "p".into(),
            applies_to: Some("(((".into()),
            rules: vec![rule("r", "request.model ==", PolicyAction::Allow)],
        }]) else {
            panic!("compiled nonsense");
        };
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["policies[0].applies_to", "policies[0].rules[0].when"]
        );
    }
}
