//! Raw serde shapes of the config file. Private to the config module: validation turns them
//! into the public types.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;

use super::units;
use super::FieldError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub workers: Option<usize>,
    pub master_key: Option<StringLike>,
    pub storage: Option<RawStorage>,
    pub admin: Option<RawAdmin>,
    pub limits: Option<RawLimits>,
    pub logging: Option<RawLogging>,
    pub keys: Option<RawKeys>,
    pub shutdown: Option<RawShutdown>,
    pub reload: Option<RawReload>,
    pub providers: Option<Vec<RawProvider>>,
    pub models: Option<Vec<RawModel>>,
    pub policies: Option<Vec<RawPolicy>>,
    pub auth: Option<RawAuth>,
    pub telemetry: Option<RawTelemetry>,
    pub prices: Option<Vec<RawPrice>>,
    pub budgets: Option<Vec<RawBudget>>,
    pub rate_limits: Option<Vec<RawRateLimit>>,
    pub cache: Option<RawCache>,
    pub mcp: Option<RawMcp>,
    pub a2a: Option<RawA2a>,
    pub cors: Option<RawCors>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allowed_origins: Option<Vec<String>>,
    pub allowed_headers: Option<Vec<String>>,
    pub exposed_headers: Option<Vec<String>>,
    pub allow_credentials: Option<bool>,
    #[serde(default, with = "units::duration")]
    pub max_age: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    pub prefix: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
    #[serde(default, with = "units::duration")]
    pub session_idle_timeout: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub request_timeout: Option<Duration>,
    pub public_url: Option<String>,
    pub servers: Option<Vec<RawMcpServer>>,
    pub virtual_servers: Option<Vec<RawVirtualServer>>,
    pub quotas: Option<Vec<RawQuota>>,
    pub on_drift: Option<String>,
    pub approvals: Option<RawApprovals>,
    pub audit: Option<RawMcpAudit>,
    pub stdio_allowlist: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    #[serde(default, with = "units::duration")]
    pub wait: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub ttl: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpAudit {
    pub arguments: Option<bool>,
    pub redact: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuthClient {
    pub token_url: String,
    pub client_id: StringLike,
    pub client_secret: StringLike,
    pub scope: Option<String>,
    pub audience: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: Option<Vec<String>>,
    pub per: Option<String>,
    pub scope: Option<RawScope>,
    pub per_minute: Option<u64>,
    pub per_hour: Option<u64>,
    pub per_day: Option<u64>,
    pub concurrent: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    pub name: String,
    pub transport: Option<String>,
    pub url: Option<String>,
    pub headers: Option<BTreeMap<String, StringLike>>,
    pub command: Option<String>,
    pub args: Option<Vec<StringLike>>,
    pub env: Option<BTreeMap<String, StringLike>>,
    pub cwd: Option<String>,
    #[serde(default, with = "units::duration")]
    pub timeout: Option<Duration>,
    pub oauth: Option<RawOAuthClient>,
    pub on_drift: Option<String>,
    pub pins: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVirtualServer {
    pub name: String,
    pub servers: Vec<String>,
    pub auth: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    #[serde(default, with = "units::size")]
    pub max_size: Option<u64>,
    pub max_semantic_entries: Option<u64>,
    pub embedding_model: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    pub enabled: Option<bool>,
    #[serde(default, with = "units::duration")]
    pub ttl: Option<Duration>,
    pub scope: Option<String>,
    pub when: Option<String>,
    pub semantic: Option<RawSemanticCache>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSemanticCache {
    pub enabled: Option<bool>,
    pub threshold: Option<f64>,
    pub embedder: Option<String>,
    pub tools: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp: Option<RawOtlp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    pub endpoint: String,
    pub headers: Option<BTreeMap<String, StringLike>>,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    #[serde(default, with = "units::duration")]
    pub export_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub jwt: Option<RawJwt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<String>,
    pub algorithms: Option<Vec<String>>,
    #[serde(default, with = "units::duration")]
    pub clock_skew: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub jwks_min_refresh: Option<Duration>,
    pub claims: Option<RawClaims>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaims {
    pub user: Option<String>,
    pub team: Option<String>,
    pub roles: Option<String>,
    pub agent: Option<String>,
    pub tenant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub name: String,
    pub applies_to: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawPolicyRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyRule {
    pub name: String,
    pub when: String,
    pub action: super::PolicyAction,
    pub reason: Option<String>,
    pub paths: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub database_url: Option<String>,
    #[serde(default, with = "units::duration")]
    pub refresh_interval: Option<Duration>,
    pub redis_url: Option<StringLike>,
    pub redis_prefix: Option<String>,
    pub on_redis_failure: Option<String>,
    pub spill_dir: Option<String>,
    #[serde(default, with = "units::duration")]
    pub reservation_lease: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub public_metrics: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default, with = "units::size")]
    pub max_body_size: Option<u64>,
    #[serde(default, with = "units::duration")]
    pub header_read_timeout: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub body_read_timeout: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "units::size")]
    pub max_header_size: Option<u64>,
    pub max_headers: Option<usize>,
    pub max_json_depth: Option<usize>,
    #[serde(default, with = "units::duration")]
    pub idle_timeout: Option<Duration>,
    pub max_streams_per_key: Option<usize>,
    #[serde(default, with = "units::size")]
    pub max_upstream_response_size: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawLogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub format: Option<RawLogFormat>,
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    #[serde(default, with = "units::duration")]
    pub rotation_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    #[serde(default, with = "units::duration")]
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    pub watch: Option<bool>,
    #[serde(default, with = "units::duration")]
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum RawProviderKind {
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "anthropic")]
    Anthropic,
    #[serde(rename = "azure")]
    Azure,
    #[serde(rename = "gemini")]
    Gemini,
    #[serde(rename = "bedrock")]
    Bedrock,
    #[serde(rename = "mock")]
    Mock,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    pub kind: RawProviderKind,
    pub base_url: Option<String>,
    pub api_key: Option<StringLike>,
    pub api_version: Option<StringLike>,
    pub bearer_token: Option<StringLike>,
    pub region: Option<StringLike>,
    pub access_key_id: Option<StringLike>,
    pub secret_access_key: Option<StringLike>,
    pub session_token: Option<StringLike>,
    pub headers: Option<BTreeMap<String, StringLike>>,
    pub timeouts: Option<RawTimeouts>,
    pub health_check: Option<RawHealthCheck>,
    pub mock: Option<RawMock>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default, with = "units::duration")]
    pub connect: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub first_byte: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub request: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub idle: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMock {
    #[serde(default, with = "units::duration")]
    pub latency: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub ttft: Option<Duration>,
    pub chunks: Option<u32>,
    pub error_rate: Option<f64>,
    pub error_status: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    pub aliases: Option<Vec<String>>,
    pub strategy: Option<RawStrategy>,
    pub sticky_header: Option<String>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    pub fallbacks: Option<Vec<String>>,
    pub context_window_fallbacks: Option<Vec<String>>,
    pub content_policy_fallbacks: Option<Vec<String>>,
    pub strict_translation: Option<bool>,
    pub cache: Option<RawRouteCache>,
    pub retry: Option<RawRetry>,
    pub cooldown: Option<RawCooldown>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawStrategy {
    Weighted,
    Priority,
    LeastBusy,
    Latency,
    Cost,
    Sticky,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub provider: String,
    /// Defaults to the model group's name.
    pub model: Option<String>,
    pub weight: Option<u32>,
    pub priority: Option<u32>,
    pub max_concurrency: Option<u32>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    #[serde(default, with = "units::duration")]
    pub ttft_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    #[serde(default, with = "units::duration")]
    pub backoff: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub max_backoff: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub max_retry_after: Option<Duration>,
    pub budget: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCooldown {
    pub failures: Option<u32>,
    #[serde(default, with = "units::duration")]
    pub window: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub duration: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default, with = "units::duration")]
    pub interval: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub timeout: Option<Duration>,
    pub path: Option<String>,
}

/// A string that may have been written (or interpolated) as a number: `${API_KEY}` holding
/// only digits is re-read as a number, and a type error would print the secret.
#[derive(Debug, Clone)]
pub struct StringLike(pub String);

impl<'de> Deserialize<'de> for StringLike {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            S(String),
            I(i64),
            U(u64),
            F(f64),
            B(bool),
            /// `${VAR:-}` with VAR unset: an empty value.
            Nothing,
        }
        match Any::deserialize(d) {
            Ok(Any::S(s)) => Ok(StringLike(s)),
            Ok(Any::I(n)) => Ok(StringLike(n.to_string())),
            Ok(Any::U(n)) => Ok(StringLike(n.to_string())),
            Ok(Any::F(n)) => Ok(StringLike(n.to_string())),
            Ok(Any::B(b)) => Ok(StringLike(b.to_string())),
            Ok(Any::Nothing) => Ok(StringLike(String::new())),
            // Never echo the value: it may be a secret.
            Err(_) => Err(serde::de::Error::custom("expected a string")),
        }
    }
}

/// Deserialises the tree, reporting every unknown field: each one is recorded with its path,
/// removed, and deserialisation retried. Any other error is recorded and ends the attempt.
pub fn deserialize(mut tree: Value, errors: &mut Vec<FieldError>) -> Option<RawConfig> {
    const MAX_UNKNOWN: usize = 100;
    for _ in 0..MAX_UNKNOWN {
        let err = match serde_path_to_error::deserialize::<_, RawConfig>(tree.clone()) {
            Ok(raw) => return Some(raw),
            Err(err) => err,
        };
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = err.inner().to_string();
        let removable = message.starts_with("unknown field");
        errors.push(FieldError::new(path, message));
        if !removable || !remove_at(&mut tree, err.path()) {
            return None;
        }
    }
    None
}

/// Removes the map entry the path points at. Returns false if the path leads nowhere.
fn remove_at(tree: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = tree;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Seq { index }, Value::Sequence(items)) => match items.get_mut(*index) {
                Some(n) => n,
                None => return false,
            },
            (Segment::Map { key }, Value::Mapping(map)) => {
                match map.get_mut(Value::String(key.clone())) {
                    Some(n) => n,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, Value::Mapping(map)) => {
            map.remove(Value::String(key.clone())).is_some()
        }
        _ => false,
    }
}

/// An operator's price for upstream models matching `model` (contract prices, self-hosted).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub model: String,
    pub provider: Option<String>,
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
    pub cache_read_per_mtok: Option<f64>,
    pub cache_write_per_mtok: Option<f64>,
    pub reasoning_per_mtok: Option<f64>,
    pub per_request: Option<f64>,
    pub max_output_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawScope {
    Key,
    User,
    Team,
    Model,
    Conversation,
    Agent,
    Global,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawPeriod {
    Daily,
    Weekly,
    Monthly,
    Total,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub name: String,
    pub scope: RawScope,
    #[serde(rename = "match")]
    pub matches: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub period: RawPeriod,
    pub limit_usd: f64,
    pub alerts: Option<RawAlerts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub thresholds: Vec<f64>,
    pub webhook: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub name: String,
    pub scope: RawScope,
    #[serde(rename = "match")]
    pub matches: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawA2a {
    pub public_url: Option<String>,
    #[serde(default, with = "units::duration")]
    pub token_ttl: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub card_ttl: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "units::duration")]
    pub affinity_ttl: Option<Duration>,
    pub push: Option<RawPush>,
    pub agents: Option<Vec<RawAgent>>,
    pub quotas: Option<Vec<RawQuota>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPush {
    pub allow: Option<Vec<String>>,
    #[serde(default, with = "units::duration")]
    pub timeout: Option<Duration>,
    pub attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub name: String,
    pub url: Option<String>,
    pub urls: Option<Vec<String>>,
    pub card_url: Option<String>,
    pub card: Option<serde_json::Value>,
    pub headers: Option<BTreeMap<String, StringLike>>,
    pub identity_header: Option<String>,
    pub audience: Option<String>,
    pub methods: Option<Vec<String>>,
    pub trusted_keys: Option<serde_json::Value>,
    #[serde(default, with = "units::duration")]
    pub timeout: Option<Duration>,
}
