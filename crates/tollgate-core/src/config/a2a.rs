//! The agent layer's configuration: the registry of upstream A2A agents served at
//! `/a2a/{agent}`, the identity tokens minted for them, execution quotas and the push relay.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use super::mcp::{quotas, QuotaConfig, QuotaPer};
use super::raw::{RawA2a, RawAgent, StringLike};
use super::{valid_name, FieldError, Secret};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct A2aConfig {
    /// The externally visible base URL (`https://gw.example.com`) written into rewritten
    /// cards; derived from the request's `Host` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// How long a minted identity token is valid.
    #[serde(with = "super::units::duration")]
    pub token_ttl: Duration,
    /// How long an upstream card is served from memory before it is fetched again.
    #[serde(with = "super::units::duration")]
    pub card_ttl: Duration,
    /// The longest one upstream call may take (a blocking `SendMessage` holds until the task
    /// completes or needs input), unless the agent sets its own `timeout`.
    #[serde(with = "super::units::duration")]
    pub request_timeout: Duration,
    /// How long a task's or context's owning replica is remembered after its last use.
    #[serde(with = "super::units::duration")]
    pub affinity_ttl: Duration,
    pub push: PushConfig,
    pub agents: Vec<AgentConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaConfig>,
}

/// The push-notification relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushConfig {
    /// Webhook targets allowed although they resolve to loopback, private, link-local or
    /// otherwise internal addresses: CIDR blocks (`10.1.0.0/16`) or exact host names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// One delivery attempt's limit.
    #[serde(with = "super::units::duration")]
    pub timeout: Duration,
    /// Delivery attempts before a notification is given up (and audited as failed).
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentConfig {
    pub name: String,
    /// Base URLs of the agent's replicas; new conversations are spread across them, follow-ups
    /// go to the replica that owns the task or context.
    pub urls: Vec<String>,
    /// Where the agent card is fetched; the well-known path under the first URL by default.
    pub card_url: String,
    /// A card served instead of fetching one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card: Option<serde_json::Value>,
    /// Headers sent on every upstream call (the gateway's own credentials for the agent).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// The header carrying the gateway-minted identity token (as `Bearer <jwt>` in
    /// `authorization`, bare elsewhere).
    pub identity_header: String,
    /// The token's audience; the agent's name by default.
    pub audience: String,
    /// The operations callers may invoke (v1.0 names: `SendMessage`, `GetTask`, ...); every
    /// known operation when empty. Unknown methods are always refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Public keys (a JWKS) trusted to sign this agent's card. When set, a card without a
    /// valid signature by one of them is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_keys: Option<serde_json::Value>,
    #[serde(
        serialize_with = "super::units::opt_duration::serialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

/// Every operation of the protocol, by its v1.0 name.
pub const A2A_OPERATIONS: [&str; 11] = [
    "SendMessage",
    "SendStreamingMessage",
    "GetTask",
    "ListTasks",
    "CancelTask",
    "SubscribeToTask",
    "CreateTaskPushNotificationConfig",
    "GetTaskPushNotificationConfig",
    "ListTaskPushNotificationConfigs",
    "DeleteTaskPushNotificationConfig",
    "GetExtendedAgentCard",
];

impl Default for A2aConfig {
    fn default() -> Self {
        A2aConfig {
            public_url: None,
            token_ttl: Duration::from_secs(300),
            card_ttl: Duration::from_secs(300),
            request_timeout: Duration::from_secs(600),
            affinity_ttl: Duration::from_secs(24 * 3600),
            push: PushConfig {
                allow: Vec::new(),
                timeout: Duration::from_secs(10),
                attempts: 5,
            },
            agents: Vec::new(),
            quotas: Vec::new(),
        }
    }
}

impl A2aConfig {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    pub fn agent(&self, name: &str) -> Option<&AgentConfig> {
        self.agents.iter().find(|a| a.name == name)
    }
}

fn http_url(u: &str) -> bool {
    (u.starts_with("http://") || u.starts_with("https://"))
        && u.parse::<http::Uri>().is_ok_and(|u| u.host().is_some())
}

pub(super) fn validate(raw: Option<RawA2a>, errors: &mut Vec<FieldError>) -> A2aConfig {
    let Some(raw) = raw else {
        return A2aConfig::default();
    };
    let d = A2aConfig::default();
    if let Some(u) = &raw.public_url {
        if !http_url(u) {
            errors.push(FieldError::new(
                "a2a.public_url",
                "must be an http:// or https:// URL",
            ));
        }
    }
    let push = raw.push.unwrap_or_default();
    let push = PushConfig {
        allow: push.allow.unwrap_or_default(),
        timeout: push.timeout.unwrap_or(d.push.timeout),
        attempts: push.attempts.unwrap_or(d.push.attempts),
    };
    for (i, a) in push.allow.iter().enumerate() {
        if a.is_empty() || (a.contains('/') && crate::net::Cidr::parse(a).is_none()) {
            errors.push(FieldError::new(
                format!("a2a.push.allow[{i}]"),
                format!("must be a CIDR block or a host name, got {a:?}"),
            ));
        }
    }
    if !(1..=20).contains(&push.attempts) {
        errors.push(FieldError::new("a2a.push.attempts", "must be 1-20"));
    }
    let token_ttl = raw.token_ttl.unwrap_or(d.token_ttl);
    if token_ttl < Duration::from_secs(10) || token_ttl > Duration::from_secs(3600) {
        errors.push(FieldError::new("a2a.token_ttl", "must be 10s-1h"));
    }
    let mut agents = Vec::new();
    let mut names = HashSet::new();
    for (i, a) in raw.agents.unwrap_or_default().into_iter().enumerate() {
        let at = |f: &str| format!("a2a.agents[{i}].{f}");
        if !names.insert(a.name.clone()) {
            errors.push(FieldError::new(
                at("name"),
                format!("{:?} is used twice", a.name),
            ));
        }
        agents.push(agent(a, &at, errors));
    }
    A2aConfig {
        public_url: raw.public_url.map(|u| u.trim_end_matches('/').to_owned()),
        token_ttl,
        card_ttl: raw.card_ttl.unwrap_or(d.card_ttl),
        request_timeout: raw.request_timeout.unwrap_or(d.request_timeout),
        affinity_ttl: raw.affinity_ttl.unwrap_or(d.affinity_ttl),
        push,
        agents,
        quotas: quotas(
            raw.quotas,
            "a2a.quotas",
            &[("method", QuotaPer::Method), ("agent", QuotaPer::Agent)],
            errors,
        ),
    }
}

/// Validates one agent entry; `at` names a field's path in error messages.
fn agent(a: RawAgent, at: &dyn Fn(&str) -> String, errors: &mut Vec<FieldError>) -> AgentConfig {
    if !valid_name(&a.name) || a.name.starts_with('_') {
        errors.push(FieldError::new(
            at("name"),
            "must be 1-64 characters of letters, digits, '-', '_' or '.', not starting with '_'",
        ));
    }
    let mut urls: Vec<String> = a.urls.unwrap_or_default();
    if let Some(u) = a.url {
        urls.insert(0, u);
    }
    if urls.is_empty() {
        errors.push(FieldError::new(at("url"), "set url or urls"));
    }
    for u in &urls {
        if !http_url(u) {
            errors.push(FieldError::new(
                at("url"),
                format!("must be an http:// or https:// URL, got {u:?}"),
            ));
        }
    }
    let urls: Vec<String> = urls
        .into_iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    let card_url = match a.card_url {
        Some(u) if http_url(&u) => u,
        Some(u) => {
            errors.push(FieldError::new(
                at("card_url"),
                format!("must be an http:// or https:// URL, got {u:?}"),
            ));
            u
        }
        None => format!(
            "{}/.well-known/agent-card.json",
            urls.first().map_or("", String::as_str)
        ),
    };
    let mut headers = BTreeMap::new();
    for (k, StringLike(v)) in a.headers.unwrap_or_default() {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(&v).is_err()
        {
            errors.push(FieldError::new(
                at(&format!("headers.{k}")),
                "invalid header name or value",
            ));
        }
        headers.insert(k.to_ascii_lowercase(), Secret(v));
    }
    let identity_header = a
        .identity_header
        .unwrap_or_else(|| "authorization".to_owned())
        .to_ascii_lowercase();
    if http::HeaderName::from_bytes(identity_header.as_bytes()).is_err() {
        errors.push(FieldError::new(
            at("identity_header"),
            "must be a header name",
        ));
    }
    if headers.contains_key(&identity_header) {
        errors.push(FieldError::new(
            at("headers"),
            format!(
                "{identity_header:?} carries the gateway's identity token; \
                 set identity_header to another header to send your own"
            ),
        ));
    }
    let methods = a.methods.unwrap_or_default();
    for m in &methods {
        if !A2A_OPERATIONS.contains(&m.as_str()) {
            errors.push(FieldError::new(
                at("methods"),
                format!("unknown operation {m:?}; use the v1.0 names (SendMessage, GetTask, ...)"),
            ));
        }
    }
    if let Some(card) = &a.card {
        if !card.is_object() {
            errors.push(FieldError::new(at("card"), "must be an agent card object"));
        }
    }
    if let Some(keys) = &a.trusted_keys {
        if keys.get("keys").and_then(|k| k.as_array()).is_none() {
            errors.push(FieldError::new(
                at("trusted_keys"),
                "must be a JWKS: {\"keys\": [...]}",
            ));
        }
    }
    AgentConfig {
        audience: a.audience.unwrap_or_else(|| a.name.clone()),
        name: a.name,
        urls,
        card_url,
        card: a.card,
        headers,
        identity_header,
        methods,
        trusted_keys: a.trusted_keys,
        timeout: a.timeout,
    }
}

/// An agent spec as the admin API receives it (an `a2a.agents[]` entry as JSON).
pub fn agent_from_json(spec: &serde_json::Value) -> Result<AgentConfig, Vec<FieldError>> {
    let raw: RawAgent = serde_json::from_value(spec.clone())
        .map_err(|e| vec![FieldError::new("agent", format!("invalid agent: {e}"))])?;
    let mut errors = Vec::new();
    let a = agent(raw, &|f: &str| f.to_owned(), &mut errors);
    if errors.is_empty() {
        Ok(a)
    } else {
        Err(errors)
    }
}
