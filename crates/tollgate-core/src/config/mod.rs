//! Configuration: one YAML file, interpolated from the environment, parsed into raw serde types
//! (unknown fields rejected with their path), then validated once into the types the rest of the
//! code uses. Nothing outside this module sees a raw type.
//!
//! The validated [`Config`] serialises back to YAML as the normalised form that `tollgate check`
//! prints, with secrets redacted.

mod a2a;
mod governance;
mod interp;
mod mcp;
mod models;
mod raw;
pub mod units;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use a2a::{agent_from_json, A2aConfig, AgentConfig, PushConfig, A2A_OPERATIONS};
pub use governance::{AlertConfig, BudgetConfig, Period, PriceOverride, RateLimitConfig, Scope};
pub use interp::Lookup;
pub use mcp::{
    short_prefix, ApprovalsConfig, DriftAction, McpAuditConfig, McpAuth, McpConfig,
    McpServerConfig, McpTransport, OAuthClientConfig, PrefixMode, QuotaConfig, QuotaPer,
    VirtualServerConfig, DEFAULT_REDACT, MAX_NAME as MAX_MCP_NAME,
};
pub use models::{
    pattern_capture, resolve as resolve_model, CacheScope, CacheWhen, CooldownConfig, Embedder,
    ModelConfig, RetryConfig, RouteCache, SemanticCache, Strategy, TargetConfig,
};

/// One configuration problem, located by its field path (`providers[1].base_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub source: String,
    pub errors: Vec<FieldError>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: {} error(s)", self.source, self.errors.len())?;
        for e in &self.errors {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A secret from config. Never printed: `Debug` and `Serialize` show a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    /// Serving threads, each with its own event loop and upstream connection pools; one
    /// acceptor hands them connections. 0 means one per CPU (see [`Config::worker_count`]).
    pub workers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Secret>,
    pub storage: StorageConfig,
    pub admin: AdminConfig,
    pub limits: LimitsConfig,
    pub logging: LoggingConfig,
    pub keys: KeysConfig,
    pub shutdown: ShutdownConfig,
    pub reload: ReloadConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyConfig>,
    #[serde(skip_serializing_if = "AuthConfig::is_empty")]
    pub auth: AuthConfig,
    #[serde(skip_serializing_if = "TelemetryConfig::is_empty")]
    pub telemetry: TelemetryConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<PriceOverride>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitConfig>,
    pub cache: CacheConfig,
    /// The tool layer (`/mcp`); off while no server is configured.
    #[serde(skip_serializing_if = "McpConfig::is_empty")]
    pub mcp: McpConfig,
    /// The agent layer (`/a2a`); off while no agent is configured.
    #[serde(skip_serializing_if = "A2aConfig::is_empty")]
    pub a2a: A2aConfig,
    /// Cross-origin access for browser apps to `/v1`, `/mcp` and `/a2a`; off while no origin
    /// is listed. Never for `/admin` or `/ui`.
    #[serde(skip_serializing_if = "CorsConfig::is_off")]
    pub cors: CorsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), lowercased, or `*` for any.
    pub allowed_origins: Vec<String>,
    /// Request headers a cross-origin request may send (lowercased).
    pub allowed_headers: Vec<String>,
    /// Response headers a cross-origin script may read (lowercased).
    pub exposed_headers: Vec<String>,
    /// Whether cookies and HTTP auth may ride along (`Access-Control-Allow-Credentials`).
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(with = "units::duration")]
    pub max_age: Duration,
}

impl CorsConfig {
    pub fn is_off(&self) -> bool {
        self.allowed_origins.is_empty()
    }

    /// Whether `origin` (as the browser sent it) may call.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// The response cache shared by every model group that enables it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheConfig {
    /// The most memory cached answers may use; the least valuable are evicted (TinyLFU).
    #[serde(with = "units::size")]
    pub max_size: u64,
    /// The most answers the semantic cache keeps (the oldest go first).
    pub max_semantic_entries: u64,
    /// The directory holding the built-in embedding model (all-MiniLM-L6-v2:
    /// `model.safetensors`, `tokenizer.json`, optionally `config.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct TelemetryConfig {
    /// OpenTelemetry trace export; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

impl TelemetryConfig {
    pub fn is_empty(&self) -> bool {
        self.otlp.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtlpConfig {
    /// OTLP/HTTP base URL (`http://collector:4318`); `/v1/traces` is appended.
    pub endpoint: String,
    /// Sent with every export (e.g. an auth header); values never printed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// Fraction of traces recorded (0.0-1.0), decided on the trace id; a client's unsampled
    /// `traceparent` is never recorded.
    pub sample_ratio: f64,
    pub service_name: String,
    /// Longest wait before a partial batch is sent.
    #[serde(with = "units::duration")]
    pub export_interval: Duration,
}

impl AuthConfig {
    pub fn is_empty(&self) -> bool {
        self.jwt.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct AuthConfig {
    /// JWT bearer tokens, accepted alongside virtual keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JwtConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    #[serde(flatten)]
    pub jwks: JwksSource,
    /// Accepted signature algorithms: `RS256`, `ES256`, `EdDSA`.
    pub algorithms: Vec<String>,
    #[serde(with = "units::duration")]
    pub clock_skew: Duration,
    /// Least time between two JWKS fetches triggered by an unknown `kid`.
    #[serde(with = "units::duration")]
    pub jwks_min_refresh: Duration,
    pub claims: ClaimMapping,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JwksSource {
    JwksUrl(String),
    JwksFile(PathBuf),
}

/// Which claim fills which principal field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimMapping {
    pub user: String,
    pub team: String,
    pub roles: String,
    pub agent: String,
    pub tenant: String,
}

/// A policy rule set (see `policy.rs` for the semantics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyConfig {
    pub name: String,
    /// CEL: the set applies only when this holds. Absent: always.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applies_to: Option<String>,
    pub rules: Vec<PolicyRuleConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRuleConfig {
    pub name: String,
    /// CEL over `principal.*` and `request.*`; must give a bool.
    pub when: String,
    pub action: PolicyAction,
    /// For `deny`: the message clients see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `redact`: top-level request fields removed before forwarding.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    Allow,
    Deny,
    RequireApproval,
    Redact,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageConfig {
    pub database_url: DatabaseUrl,
    /// How often the key cache polls the store for changes made by other processes.
    #[serde(with = "units::duration")]
    pub refresh_interval: Duration,
    /// Redis for counters shared by every replica (budgets, rate limits). Without it they
    /// live in the process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key tollgate writes.
    pub redis_prefix: String,
    /// What rate limits and budgets do while Redis fails.
    pub on_redis_failure: RedisFailure,
    /// Where ledger and audit records go while the database refuses them (one per process).
    pub spill_dir: PathBuf,
    /// How long a budget reservation holds in Redis unless its replica renews it.
    #[serde(with = "units::duration")]
    pub reservation_lease: Duration,
}

/// Rate limits and budgets while their shared counters are unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailure {
    /// Refuse requests a limit applies to (503 `limits_unavailable`).
    FailClosed,
    /// Serve them without the limit.
    FailOpen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://path/to/file.db` (created with its directory if missing).
    Sqlite(PathBuf),
    /// `memory://`: nothing survives a restart. For tests and demos.
    Memory,
    /// `postgres://user:password@host:5432/db?sslmode=require`: one database for many replicas.
    Postgres(Secret),
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DatabaseUrl::Sqlite(p) => s.serialize_str(&format!("sqlite://{}", p.display())),
            DatabaseUrl::Memory => s.serialize_str("memory://"),
            // The password stays out of `tollgate check`.
            DatabaseUrl::Postgres(u) => s.serialize_str(&redact_password(u.expose())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminConfig {
    /// A separate listener for `/admin`; when set, the main listener does not serve `/admin`.
    pub listen: Option<SocketAddr>,
    /// Serve `/metrics` without the master key (for scrapers on a trusted network).
    pub public_metrics: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitsConfig {
    #[serde(with = "units::size")]
    pub max_body_size: u64,
    /// How long a client may take to send a request's headers (slow-header protection).
    #[serde(with = "units::duration")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body.
    #[serde(with = "units::duration")]
    pub body_read_timeout: Duration,
    /// The longest the gateway works on a request before its answer begins (its status and
    /// headers; a stream then runs under the idle timeouts). Bounds retries, fallbacks, held
    /// approvals and slow upstreams together; 504 when it passes.
    #[serde(with = "units::duration")]
    pub request_timeout: Duration,
    /// Largest request head (request line and headers); larger ones get 431.
    #[serde(with = "units::size")]
    pub max_header_size: u64,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Deepest nesting of arrays and objects in a JSON request body.
    pub max_json_depth: usize,
    /// How long a connection may stay open with no bytes moving either way and no request in
    /// flight.
    #[serde(with = "units::duration")]
    pub idle_timeout: Duration,
    /// Streams (SSE responses) one principal may hold open at once on a replica; 0 is no limit.
    pub max_streams_per_key: usize,
    /// Largest whole (non-streamed) upstream answer, and largest single MCP stream message.
    #[serde(with = "units::size")]
    pub max_upstream_response_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `tollgate=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeysConfig {
    /// How long a rotated key's old secret keeps working.
    #[serde(with = "units::duration")]
    pub rotation_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShutdownConfig {
    /// How long SIGTERM waits for in-flight requests and streams before closing them.
    #[serde(with = "units::duration")]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadConfig {
    /// Reload when the config file's content changes (SIGHUP always reloads).
    pub watch: bool,
    /// How often the file is checked.
    #[serde(with = "units::duration")]
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub timeouts: Timeouts,
    pub health_check: Option<HealthCheckConfig>,
}

/// Active health checking: a periodic `GET {base_url}{path}`; a failing provider's targets are
/// taken out of rotation until a check passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheckConfig {
    #[serde(with = "units::duration")]
    pub interval: Duration,
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    pub path: String,
}

/// Serialises in the file's own shape: `kind`, the kind's fields, `mock:` for the mock.
impl Serialize for ProviderConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            name: &'a str,
            kind: &'static str,
            #[serde(flatten, skip_serializing_if = "Option::is_none")]
            http: Option<&'a HttpSettings>,
            #[serde(skip_serializing_if = "Option::is_none")]
            mock: Option<&'a MockSettings>,
            timeouts: &'a Timeouts,
            #[serde(skip_serializing_if = "Option::is_none")]
            health_check: Option<&'a HealthCheckConfig>,
        }
        let (http, mock) = match &self.kind {
            ProviderKind::OpenAi(o)
            | ProviderKind::Anthropic(o)
            | ProviderKind::Azure(o)
            | ProviderKind::Gemini(o)
            | ProviderKind::Bedrock(o) => (Some(o), None),
            ProviderKind::Mock(m) => (None, Some(m)),
        };
        View {
            name: &self.name,
            kind: self.kind.name(),
            http,
            mock,
            timeouts: &self.timeouts,
            health_check: self.health_check.as_ref(),
        }
        .serialize(s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderKind {
    OpenAi(HttpSettings),
    /// Anthropic's Messages API; `api_version` is the `anthropic-version` header.
    Anthropic(HttpSettings),
    /// Azure OpenAI: deployments in the path, `api-version` in the query, `api-key` or an
    /// Entra ID bearer token.
    Azure(HttpSettings),
    /// Google's Gemini API; `api_key` is sent as `x-goog-api-key`.
    Gemini(HttpSettings),
    /// Amazon Bedrock's Converse API, SigV4-signed.
    Bedrock(HttpSettings),
    Mock(MockSettings),
}

impl ProviderKind {
    pub fn name(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi(_) => "openai",
            ProviderKind::Anthropic(_) => "anthropic",
            ProviderKind::Azure(_) => "azure",
            ProviderKind::Gemini(_) => "gemini",
            ProviderKind::Bedrock(_) => "bedrock",
            ProviderKind::Mock(_) => "mock",
        }
    }
}

/// The Azure OpenAI `api-version` sent when the config names none.
pub const AZURE_API_VERSION: &str = "2024-10-21";

/// The anthropic-version sent when the config names none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// An HTTP upstream: where it is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpSettings {
    /// Base URL without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// `openai`: Azure OpenAI; when set, requests go to
    /// `{base_url}/openai/deployments/{model}/...?api-version=...` with an `api-key` header.
    /// `anthropic`: the `anthropic-version` header (default `2023-06-01`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Extra headers sent upstream on every request. Values are treated as secrets (they often
    /// carry credentials) and never printed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// `bedrock`: the region and the credentials requests are signed with (SigV4).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AwsSettings {
    pub region: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MockSettings {
    /// Non-streaming: the whole response delay. Streaming: spread evenly between chunks after
    /// the first.
    #[serde(with = "units::duration")]
    pub latency: Duration,
    /// Streaming: delay before the first chunk.
    #[serde(with = "units::duration")]
    pub ttft: Duration,
    /// Streaming: how many content chunks the echo is split into (0 = one per word).
    pub chunks: u32,
    /// Fraction of requests (0.0 to 1.0) answered with `error_status`.
    pub error_rate: f64,
    pub error_status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    #[serde(with = "units::duration")]
    pub connect: Duration,
    /// Until the upstream's response headers arrive.
    #[serde(with = "units::duration")]
    pub first_byte: Duration,
    /// The whole non-streaming request.
    #[serde(with = "units::duration")]
    pub request: Duration,
    /// The longest gap between two chunks of a stream.
    #[serde(with = "units::duration")]
    pub idle: Duration,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://tollgate-data/tollgate.db";

/// The configuration `tollgate serve` uses when no file is given: embedded SQLite and the
/// built-in mock provider serving `mock-echo`, priced (as a small hosted model would be) so a
/// newcomer sees spend tracking work.
pub const EMBEDDED_DEFAULT: &str = "\
listen: ${TOLLGATE_LISTEN:-127.0.0.1:4000}
storage:
  database_url: ${TOLLGATE_DATABASE_URL:-sqlite://tollgate-data/tollgate.db}
providers:
  - name: mock
    kind: mock
models:
  - name: mock-echo
    targets:
      - provider: mock
        model: echo
prices:
  - model: echo
    provider: mock
    input_per_mtok: 0.5
    output_per_mtok: 1.5
";

impl Config {
    /// Loads and validates a file, interpolating from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: path.display().to_string(),
            errors: vec![FieldError::new("", format!("cannot read file: {e}"))],
        })?;
        Config::parse(&text, &path.display().to_string(), &|k| {
            std::env::var(k).ok()
        })
    }

    /// The embedded default, interpolated from the process environment.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(EMBEDDED_DEFAULT, "<embedded default>", &|k| {
            std::env::var(k).ok()
        })
    }

    /// Parses and validates YAML text. `source` names it in errors.
    pub fn parse(text: &str, source: &str, env: Lookup) -> Result<Config, ConfigError> {
        // Errors are printed, logged and audited: they must never carry a value from the file,
        // which may be a secret written in the wrong place.
        let fail = |errors: Vec<FieldError>| ConfigError {
            source: source.to_owned(),
            errors: errors
                .into_iter()
                .map(|mut e| {
                    e.message = scrub_values(&e.message);
                    e
                })
                .collect(),
        };
        let mut tree: serde_norway::Value = if text.trim().is_empty() {
            serde_norway::Value::Mapping(Default::default())
        } else {
            serde_norway::from_str(text)
                .map_err(|e| fail(vec![FieldError::new("", e.to_string())]))?
        };
        if tree.is_null() {
            tree = serde_norway::Value::Mapping(Default::default());
        }
        let mut errors = Vec::new();
        interp::interpolate(&mut tree, &mut Vec::new(), env, &mut errors);
        let raw = raw::deserialize(tree, &mut errors);
        let config = raw.map(|raw| validate(raw, env, &mut errors));
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(fail(errors)),
        }
    }

    /// The normalised form as YAML, secrets redacted.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// The number of serving threads: `workers`, or one per CPU when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }
}

/// Removes the values serde quotes in its type errors (`invalid type: string "Bearer sk-...",
/// expected a map` becomes `invalid type: a string, expected a map`).
fn scrub_values(message: &str) -> String {
    const QUOTED: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(QUOTED) {
        out.push_str(&rest[..at]);
        out.push_str("a string");
        let tail = &rest[at + QUOTED.len()..];
        // The value ends at the first quote not escaped by a backslash.
        let mut escaped = false;
        let end = tail
            .char_indices()
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map_or(tail.len(), |(i, _)| i + 1);
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn validate(raw: raw::RawConfig, env: Lookup, errors: &mut Vec<FieldError>) -> Config {
    let listen = parse_addr(
        raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        "listen",
        errors,
    )
    .unwrap_or_else(fallback_addr);

    let workers = raw.workers.unwrap_or(0);
    if workers > 1024 {
        errors.push(FieldError::new("workers", "must be at most 1024"));
    }

    let master_key = raw
        .master_key
        .map(|k| k.0)
        .filter(|k| !k.is_empty())
        .or_else(|| env("TOLLGATE_MASTER_KEY").filter(|k| !k.is_empty()));
    if let Some(k) = &master_key {
        if k.len() < 16 {
            errors.push(FieldError::new(
                "master_key",
                "must be at least 16 characters",
            ));
        }
    }

    let raw_storage = raw.storage.unwrap_or_default();
    let database_url = parse_database_url(
        raw_storage
            .database_url
            .as_deref()
            .unwrap_or(DEFAULT_DATABASE_URL),
        errors,
    );
    let redis_url = raw_storage.redis_url.map(|u| u.0).filter(|u| !u.is_empty());
    if let Some(u) = &redis_url {
        if u.starts_with("rediss://") {
            errors.push(FieldError::new(
                "storage.redis_url",
                "rediss:// (TLS) is not supported in this build; use redis:// on a private network or a local TLS tunnel",
            ));
        } else if !(u.starts_with("redis://") || u.starts_with("unix://")) {
            errors.push(FieldError::new(
                "storage.redis_url",
                "must be a redis:// or unix:// URL",
            ));
        }
    }
    let storage = StorageConfig {
        database_url,
        refresh_interval: raw_storage
            .refresh_interval
            .unwrap_or(Duration::from_secs(1)),
        redis_url: redis_url.map(Secret),
        redis_prefix: raw_storage
            .redis_prefix
            .unwrap_or_else(|| "tollgate:".to_owned()),
        spill_dir: raw_storage
            .spill_dir
            .filter(|d| !d.is_empty())
            .map_or_else(crate::spill::default_dir, PathBuf::from),
        reservation_lease: raw_storage
            .reservation_lease
            .unwrap_or(crate::budget::DEFAULT_LEASE),
        on_redis_failure: match raw_storage.on_redis_failure.as_deref() {
            None | Some("fail_closed") => RedisFailure::FailClosed,
            Some("fail_open") => RedisFailure::FailOpen,
            Some(other) => {
                errors.push(FieldError::new(
                    "storage.on_redis_failure",
                    format!("must be fail_closed or fail_open, got {other:?}"),
                ));
                RedisFailure::FailClosed
            }
        },
    };
    if storage.reservation_lease < Duration::from_secs(1) {
        errors.push(FieldError::new(
            "storage.reservation_lease",
            "must be at least 1s",
        ));
    }
    if storage.refresh_interval < Duration::from_millis(50) {
        errors.push(FieldError::new(
            "storage.refresh_interval",
            "must be at least 50ms",
        ));
    }

    let raw_admin = raw.admin.unwrap_or_default();
    let admin = AdminConfig {
        listen: raw_admin
            .listen
            .as_deref()
            .and_then(|a| parse_addr(a, "admin.listen", errors)),
        public_metrics: raw_admin.public_metrics.unwrap_or(false),
    };

    let raw_limits = raw.limits.unwrap_or_default();
    let limits = LimitsConfig {
        max_body_size: raw_limits.max_body_size.unwrap_or(4 * 1024 * 1024),
        header_read_timeout: raw_limits
            .header_read_timeout
            .unwrap_or(Duration::from_secs(30)),
        body_read_timeout: raw_limits
            .body_read_timeout
            .unwrap_or(Duration::from_secs(60)),
        request_timeout: raw_limits
            .request_timeout
            .unwrap_or(Duration::from_secs(15 * 60)),
        max_header_size: raw_limits.max_header_size.unwrap_or(64 * 1024),
        max_headers: raw_limits.max_headers.unwrap_or(100),
        max_json_depth: raw_limits.max_json_depth.unwrap_or(64),
        idle_timeout: raw_limits.idle_timeout.unwrap_or(Duration::from_secs(120)),
        max_streams_per_key: raw_limits.max_streams_per_key.unwrap_or(64),
        max_upstream_response_size: raw_limits
            .max_upstream_response_size
            .unwrap_or(16 * 1024 * 1024),
    };
    for (field, d) in [
        ("header_read_timeout", limits.header_read_timeout),
        ("body_read_timeout", limits.body_read_timeout),
        ("request_timeout", limits.request_timeout),
        ("idle_timeout", limits.idle_timeout),
    ] {
        if d.is_zero() {
            errors.push(FieldError::new(
                format!("limits.{field}"),
                "must be greater than 0",
            ));
        }
    }
    if limits.max_body_size == 0 {
        errors.push(FieldError::new(
            "limits.max_body_size",
            "must be greater than 0",
        ));
    }
    // hyper reads the request head into one buffer, which it will not make smaller than 8 KiB.
    if !(8 * 1024..=16 * 1024 * 1024).contains(&limits.max_header_size) {
        errors.push(FieldError::new(
            "limits.max_header_size",
            "must be between 8KiB and 16MiB",
        ));
    }
    if !(1..=1000).contains(&limits.max_headers) {
        errors.push(FieldError::new(
            "limits.max_headers",
            "must be between 1 and 1000",
        ));
    }
    if !(2..=128).contains(&limits.max_json_depth) {
        errors.push(FieldError::new(
            "limits.max_json_depth",
            "must be between 2 and 128",
        ));
    }
    if limits.max_upstream_response_size < 64 * 1024 {
        errors.push(FieldError::new(
            "limits.max_upstream_response_size",
            "must be at least 64KiB",
        ));
    }

    let raw_logging = raw.logging.unwrap_or_default();
    let logging = LoggingConfig {
        format: match raw_logging.format.unwrap_or(raw::RawLogFormat::Pretty) {
            raw::RawLogFormat::Pretty => LogFormat::Pretty,
            raw::RawLogFormat::Json => LogFormat::Json,
        },
        level: raw_logging.level.unwrap_or_else(|| "info".to_owned()),
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&logging.level) {
        errors.push(FieldError::new("logging.level", e.to_string()));
    }

    let keys = KeysConfig {
        rotation_grace: raw
            .keys
            .unwrap_or_default()
            .rotation_grace
            .unwrap_or(Duration::from_secs(24 * 3600)),
    };
    let shutdown = ShutdownConfig {
        drain_timeout: raw
            .shutdown
            .unwrap_or_default()
            .drain_timeout
            .unwrap_or(Duration::from_secs(30)),
    };

    let raw_reload = raw.reload.unwrap_or_default();
    let reload = ReloadConfig {
        watch: raw_reload.watch.unwrap_or(true),
        interval: raw_reload.interval.unwrap_or(Duration::from_millis(500)),
    };
    if reload.interval < Duration::from_millis(50) {
        errors.push(FieldError::new("reload.interval", "must be at least 50ms"));
    }

    let mut providers = Vec::new();
    let mut provider_names = HashSet::new();
    for (i, p) in raw.providers.unwrap_or_default().into_iter().enumerate() {
        let at = |field: &str| format!("providers[{i}].{field}");
        if !valid_name(&p.name) {
            errors.push(FieldError::new(
                at("name"),
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if !provider_names.insert(p.name.clone()) {
            errors.push(FieldError::new(
                at("name"),
                format!("duplicate provider {:?}", p.name),
            ));
        }
        let kind = match p.kind {
            kind @ (raw::RawProviderKind::OpenAi
            | raw::RawProviderKind::Anthropic
            | raw::RawProviderKind::Gemini
            | raw::RawProviderKind::Bedrock
            | raw::RawProviderKind::Azure) => {
                if p.mock.is_some() {
                    errors.push(FieldError::new(at("mock"), "only valid for kind: mock"));
                }
                let anthropic = matches!(kind, raw::RawProviderKind::Anthropic);
                let azure = matches!(kind, raw::RawProviderKind::Azure);
                let gemini = matches!(kind, raw::RawProviderKind::Gemini);
                let bedrock = matches!(kind, raw::RawProviderKind::Bedrock);
                let region = p
                    .region
                    .as_ref()
                    .map(|r| r.0.clone())
                    .or_else(|| env("AWS_REGION"))
                    .or_else(|| env("AWS_DEFAULT_REGION"))
                    .filter(|r| !r.is_empty());
                let aws = if bedrock {
                    let from = |v: &Option<raw::StringLike>, var: &str| {
                        v.as_ref()
                            .map(|k| k.0.clone())
                            .or_else(|| env(var))
                            .filter(|k| !k.is_empty())
                    };
                    let key = from(&p.access_key_id, "AWS_ACCESS_KEY_ID");
                    let secret = from(&p.secret_access_key, "AWS_SECRET_ACCESS_KEY");
                    let token = from(&p.session_token, "AWS_SESSION_TOKEN");
                    if region.is_none() {
                        errors.push(FieldError::new(
                            at("region"),
                            "required for kind: bedrock (or set AWS_REGION)",
                        ));
                    }
                    match (key, secret) {
                        (Some(k), Some(s)) => Some(AwsSettings {
                            region: region.clone().unwrap_or_default(),
                            access_key_id: Secret(k),
                            secret_access_key: Secret(s),
                            session_token: token.map(Secret),
                        }),
                        _ => {
                            errors.push(FieldError::new(
                                at("access_key_id"),
                                "kind: bedrock needs access_key_id and secret_access_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                            ));
                            None
                        }
                    }
                } else {
                    for (field, set) in [
                        ("region", p.region.is_some()),
                        ("access_key_id", p.access_key_id.is_some()),
                        ("secret_access_key", p.secret_access_key.is_some()),
                        ("session_token", p.session_token.is_some()),
                    ] {
                        if set {
                            errors.push(FieldError::new(at(field), "only valid for kind: bedrock"));
                        }
                    }
                    None
                };
                if bedrock && (p.api_key.is_some() || p.api_version.is_some()) {
                    errors.push(FieldError::new(
                        at(if p.api_key.is_some() {
                            "api_key"
                        } else {
                            "api_version"
                        }),
                        "not valid for kind: bedrock (requests are signed with AWS credentials)",
                    ));
                }
                if gemini && p.api_version.is_some() {
                    errors.push(FieldError::new(
                        at("api_version"),
                        "not valid for kind: gemini (the version is in base_url)",
                    ));
                }
                if p.bearer_token.is_some() && !azure {
                    errors.push(FieldError::new(
                        at("bearer_token"),
                        "only valid for kind: azure",
                    ));
                }
                let base_url = match p.base_url.as_deref() {
                    None if anthropic => "https://api.anthropic.com/v1".to_owned(),
                    None if gemini => "https://generativelanguage.googleapis.com/v1beta".to_owned(),
                    None if bedrock => format!(
                        "https://bedrock-runtime.{}.amazonaws.com",
                        region.as_deref().unwrap_or("us-east-1")
                    ),
                    None => {
                        errors.push(FieldError::new(
                            at("base_url"),
                            format!(
                                "required for kind: {}",
                                if azure { "azure" } else { "openai" }
                            ),
                        ));
                        String::new()
                    }
                    Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                        errors.push(FieldError::new(
                            at("base_url"),
                            format!("must be an http:// or https:// URL, got {u:?}"),
                        ));
                        String::new()
                    }
                    Some(u) => {
                        if u.parse::<http::Uri>().is_err() {
                            errors.push(FieldError::new(
                                at("base_url"),
                                format!("invalid URL {u:?}"),
                            ));
                        }
                        u.trim_end_matches('/').to_owned()
                    }
                };
                let mut headers = BTreeMap::new();
                for (k, raw::StringLike(v)) in p.headers.unwrap_or_default() {
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
                let settings = HttpSettings {
                    base_url,
                    api_key: p.api_key.map(|k| k.0).filter(|k| !k.is_empty()).map(Secret),
                    api_version: p.api_version.map(|v| v.0),
                    headers,
                    aws,
                };
                if azure {
                    let bearer = p.bearer_token.map(|t| t.0).filter(|t| !t.is_empty());
                    let mut settings = HttpSettings {
                        api_version: Some(
                            settings
                                .api_version
                                .clone()
                                .unwrap_or_else(|| AZURE_API_VERSION.to_owned()),
                        ),
                        ..settings
                    };
                    match bearer {
                        Some(_) if settings.api_key.is_some() => errors.push(FieldError::new(
                            at("bearer_token"),
                            "set api_key or bearer_token, not both",
                        )),
                        Some(token) => {
                            if http::HeaderValue::from_str(&token).is_err() {
                                errors.push(FieldError::new(
                                    at("bearer_token"),
                                    "contains invalid characters",
                                ));
                            }
                            settings
                                .headers
                                .insert("authorization".into(), Secret(format!("Bearer {token}")));
                        }
                        None => {}
                    }
                    ProviderKind::Azure(settings)
                } else if gemini {
                    ProviderKind::Gemini(settings)
                } else if bedrock {
                    ProviderKind::Bedrock(settings)
                } else if anthropic {
                    ProviderKind::Anthropic(HttpSettings {
                        api_version: Some(
                            settings
                                .api_version
                                .clone()
                                .unwrap_or_else(|| ANTHROPIC_VERSION.to_owned()),
                        ),
                        ..settings
                    })
                } else {
                    ProviderKind::OpenAi(settings)
                }
            }
            raw::RawProviderKind::Mock => {
                for (field, set) in [
                    ("base_url", p.base_url.is_some()),
                    ("api_key", p.api_key.is_some()),
                    ("bearer_token", p.bearer_token.is_some()),
                    ("region", p.region.is_some()),
                    ("access_key_id", p.access_key_id.is_some()),
                    ("secret_access_key", p.secret_access_key.is_some()),
                    ("session_token", p.session_token.is_some()),
                    ("api_version", p.api_version.is_some()),
                    ("headers", p.headers.is_some()),
                ] {
                    if set {
                        errors.push(FieldError::new(at(field), "not valid for kind: mock"));
                    }
                }
                if p.health_check.is_some() {
                    errors.push(FieldError::new(
                        at("health_check"),
                        "not valid for kind: mock (it is always up)",
                    ));
                }
                let m = p.mock.unwrap_or_default();
                let settings = MockSettings {
                    latency: m.latency.unwrap_or_default(),
                    ttft: m.ttft.unwrap_or_default(),
                    chunks: m.chunks.unwrap_or(0),
                    error_rate: m.error_rate.unwrap_or(0.0),
                    error_status: m.error_status.unwrap_or(500),
                };
                if !(0.0..=1.0).contains(&settings.error_rate) {
                    errors.push(FieldError::new(
                        at("mock.error_rate"),
                        "must be between 0.0 and 1.0",
                    ));
                }
                if settings.chunks > 10_000 {
                    errors.push(FieldError::new(at("mock.chunks"), "must be at most 10000"));
                }
                if !(400..=599).contains(&settings.error_status) {
                    errors.push(FieldError::new(
                        at("mock.error_status"),
                        "must be an HTTP error status (400-599)",
                    ));
                }
                ProviderKind::Mock(settings)
            }
        };
        let t = p.timeouts.unwrap_or_default();
        let timeouts = Timeouts {
            connect: t.connect.unwrap_or(Duration::from_secs(5)),
            first_byte: t.first_byte.unwrap_or(Duration::from_secs(60)),
            request: t.request.unwrap_or(Duration::from_secs(600)),
            idle: t.idle.unwrap_or(Duration::from_secs(60)),
        };
        for (field, d) in [
            ("connect", timeouts.connect),
            ("first_byte", timeouts.first_byte),
            ("request", timeouts.request),
            ("idle", timeouts.idle),
        ] {
            if d.is_zero() {
                errors.push(FieldError::new(
                    at(&format!("timeouts.{field}")),
                    "must be greater than 0",
                ));
            }
        }
        let health_check = p.health_check.map(|h| {
            let check = HealthCheckConfig {
                interval: h.interval.unwrap_or(Duration::from_secs(30)),
                timeout: h.timeout.unwrap_or(Duration::from_secs(5)),
                path: h.path.unwrap_or_else(|| "/models".to_owned()),
            };
            if check.interval < Duration::from_millis(100) {
                errors.push(FieldError::new(
                    at("health_check.interval"),
                    "must be at least 100ms",
                ));
            }
            if check.timeout.is_zero() {
                errors.push(FieldError::new(
                    at("health_check.timeout"),
                    "must be greater than 0",
                ));
            }
            if !check.path.starts_with('/') {
                errors.push(FieldError::new(
                    at("health_check.path"),
                    "must start with '/'",
                ));
            }
            check
        });
        providers.push(ProviderConfig {
            name: p.name,
            kind,
            timeouts,
            health_check,
        });
    }

    let models = models::validate_models(raw.models.unwrap_or_default(), &provider_names, errors);

    let mut auth = AuthConfig::default();
    if let Some(j) = raw.auth.and_then(|a| a.jwt) {
        let jwks = match (j.jwks_url, j.jwks_file) {
            (Some(u), None) if u.starts_with("http://") || u.starts_with("https://") => {
                JwksSource::JwksUrl(u)
            }
            (Some(u), None) => {
                errors.push(FieldError::new(
                    "auth.jwt.jwks_url",
                    format!("must be an http(s) URL, got {u:?}"),
                ));
                JwksSource::JwksUrl(u)
            }
            (None, Some(f)) => JwksSource::JwksFile(PathBuf::from(f)),
            _ => {
                errors.push(FieldError::new(
                    "auth.jwt",
                    "set exactly one of jwks_url and jwks_file",
                ));
                JwksSource::JwksFile(PathBuf::new())
            }
        };
        let algorithms = j
            .algorithms
            .unwrap_or_else(|| vec!["RS256".into(), "ES256".into(), "EdDSA".into()]);
        for (k, a) in algorithms.iter().enumerate() {
            if !matches!(a.as_str(), "RS256" | "ES256" | "EdDSA") {
                errors.push(FieldError::new(
                    format!("auth.jwt.algorithms[{k}]"),
                    format!("unsupported algorithm {a:?}: use RS256, ES256 or EdDSA"),
                ));
            }
        }
        if j.issuer.is_empty() {
            errors.push(FieldError::new("auth.jwt.issuer", "must not be empty"));
        }
        if j.audiences.is_empty() {
            errors.push(FieldError::new(
                "auth.jwt.audiences",
                "needs at least one audience",
            ));
        }
        let c = j.claims.unwrap_or_default();
        auth.jwt = Some(JwtConfig {
            issuer: j.issuer,
            audiences: j.audiences,
            jwks,
            algorithms,
            clock_skew: j.clock_skew.unwrap_or(Duration::from_secs(60)),
            jwks_min_refresh: j.jwks_min_refresh.unwrap_or(Duration::from_secs(30)),
            claims: ClaimMapping {
                user: c.user.unwrap_or_else(|| "sub".into()),
                team: c.team.unwrap_or_else(|| "team".into()),
                roles: c.roles.unwrap_or_else(|| "roles".into()),
                agent: c.agent.unwrap_or_else(|| "agent".into()),
                tenant: c.tenant.unwrap_or_else(|| "tenant".into()),
            },
        });
    }

    let mut telemetry = TelemetryConfig::default();
    if let Some(o) = raw.telemetry.and_then(|t| t.otlp) {
        if !(o.endpoint.starts_with("http://") || o.endpoint.starts_with("https://")) {
            errors.push(FieldError::new(
                "telemetry.otlp.endpoint",
                "must be an http(s) URL",
            ));
        }
        let sample_ratio = o.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            errors.push(FieldError::new(
                "telemetry.otlp.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        let mut headers = BTreeMap::new();
        for (k, raw::StringLike(v)) in o.headers.unwrap_or_default() {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(&v).is_err()
            {
                errors.push(FieldError::new(
                    format!("telemetry.otlp.headers.{k}"),
                    "invalid header name or value",
                ));
            }
            headers.insert(k.to_ascii_lowercase(), Secret(v));
        }
        telemetry.otlp = Some(OtlpConfig {
            endpoint: o.endpoint,
            headers,
            sample_ratio,
            service_name: o.service_name.unwrap_or_else(|| "tollgate".to_owned()),
            export_interval: o.export_interval.unwrap_or(Duration::from_secs(1)),
        });
    }

    let mut policies = Vec::new();
    let mut policy_names = HashSet::new();
    for (i, p) in raw.policies.unwrap_or_default().into_iter().enumerate() {
        if !valid_name(&p.name) {
            errors.push(FieldError::new(
                format!("policies[{i}].name"),
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if !policy_names.insert(p.name.clone()) {
            errors.push(FieldError::new(
                format!("policies[{i}].name"),
                format!("duplicate policy {:?}", p.name),
            ));
        }
        let mut rule_names = HashSet::new();
        let mut rules = Vec::new();
        for (j, r) in p.rules.into_iter().enumerate() {
            let at = |f: &str| format!("policies[{i}].rules[{j}].{f}");
            if !valid_name(&r.name) || !rule_names.insert(r.name.clone()) {
                errors.push(FieldError::new(
                    at("name"),
                    "must be a unique name of letters, digits, '-', '_' or '.'",
                ));
            }
            if r.action == PolicyAction::Redact && r.paths.as_ref().is_none_or(Vec::is_empty) {
                errors.push(FieldError::new(
                    at("paths"),
                    "redact needs at least one path",
                ));
            }
            if r.action != PolicyAction::Redact && r.paths.is_some() {
                errors.push(FieldError::new(
                    at("paths"),
                    "only valid with action: redact",
                ));
            }
            rules.push(PolicyRuleConfig {
                name: r.name,
                when: r.when,
                action: r.action,
                reason: r.reason,
                paths: r.paths.unwrap_or_default(),
            });
        }
        policies.push(PolicyConfig {
            name: p.name,
            applies_to: p.applies_to,
            rules,
        });
    }
    if let Err(policy_errors) = crate::policy::Policy::compile(&policies) {
        errors.extend(policy_errors);
    }
    let prices = governance::validate_prices(raw.prices.unwrap_or_default(), errors);
    let budgets = governance::validate_budgets(raw.budgets.unwrap_or_default(), errors);
    let rate_limits = governance::validate_rate_limits(raw.rate_limits.unwrap_or_default(), errors);

    let raw_cache = raw.cache.unwrap_or_default();
    let cache = CacheConfig {
        max_size: raw_cache.max_size.unwrap_or(256 * 1024 * 1024),
        max_semantic_entries: raw_cache.max_semantic_entries.unwrap_or(1_000_000),
        embedding_model: raw_cache
            .embedding_model
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
    };
    if cache.max_size > 64 * 1024 * 1024 * 1024 {
        errors.push(FieldError::new("cache.max_size", "must be at most 64GiB"));
    }
    if !(1..=100_000_000).contains(&cache.max_semantic_entries) {
        errors.push(FieldError::new(
            "cache.max_semantic_entries",
            "must be 1-100000000",
        ));
    }
    models::validate_semantic(&models, &cache, errors);
    let mcp = mcp::validate(raw.mcp, errors);
    let a2a = a2a::validate(raw.a2a, errors);
    let cors = validate_cors(raw.cors.unwrap_or_default(), errors);
    Config {
        listen,
        workers,
        master_key: master_key.map(Secret),
        storage,
        admin,
        limits,
        logging,
        keys,
        shutdown,
        reload,
        providers,
        models,
        policies,
        auth,
        telemetry,
        prices,
        budgets,
        rate_limits,
        cache,
        mcp,
        a2a,
        cors,
    }
}

/// Request headers the model, tool and agent APIs' clients send.
const CORS_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "a2a-version",
    "a2a-extensions",
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-tollgate-cache",
    "x-tollgate-conversation-id",
    "x-tollgate-fallbacks",
];

/// Response headers worth reading from a script.
const CORS_EXPOSED: &[&str] = &[
    "x-request-id",
    "x-tollgate-trace-id",
    "x-tollgate-cache",
    "x-tollgate-cost-usd",
    "x-tollgate-model",
    "x-tollgate-provider",
    "mcp-session-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
];

fn validate_cors(raw: raw::RawCors, errors: &mut Vec<FieldError>) -> CorsConfig {
    let mut allowed_origins = Vec::new();
    for (i, o) in raw
        .allowed_origins
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
        let valid = o == "*"
            || ((o.starts_with("http://") || o.starts_with("https://"))
                && !o["https://".len().min(o.len())..].contains('/')
                && o.split("://").nth(1).is_some_and(|h| !h.is_empty()));
        if !valid {
            errors.push(FieldError::new(
                format!("cors.allowed_origins[{i}]"),
                "must be `*` or an origin like https://app.example.com (scheme and host, no path)",
            ));
        }
        allowed_origins.push(o);
    }
    let headers =
        |list: Option<Vec<String>>, field: &str, default: &[&str], errors: &mut Vec<FieldError>| {
            let list = list.unwrap_or_else(|| default.iter().map(|h| (*h).to_owned()).collect());
            let mut out = Vec::new();
            for (i, h) in list.into_iter().enumerate() {
                let h = h.trim().to_ascii_lowercase();
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    errors.push(FieldError::new(
                        format!("cors.{field}[{i}]"),
                        "is not a valid header name",
                    ));
                }
                out.push(h);
            }
            out
        };
    let allowed_headers = headers(raw.allowed_headers, "allowed_headers", CORS_HEADERS, errors);
    let exposed_headers = headers(raw.exposed_headers, "exposed_headers", CORS_EXPOSED, errors);
    let allow_credentials = raw.allow_credentials.unwrap_or(false);
    if allow_credentials && allowed_origins.iter().any(|o| o == "*") {
        errors.push(FieldError::new(
            "cors.allow_credentials",
            "cannot be true while allowed_origins has `*` (browsers refuse it; list the origins)",
        ));
    }
    CorsConfig {
        allowed_origins,
        allowed_headers,
        exposed_headers,
        allow_credentials,
        max_age: raw.max_age.unwrap_or(Duration::from_secs(600)),
    }
}

/// Names end up in URL paths (`/mcp/{name}`, `/a2a/{name}`): `.` and `..` are not names.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.chars().all(|c| c == '.')
}

fn fallback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4000))
}

fn parse_addr(s: &str, path: &str, errors: &mut Vec<FieldError>) -> Option<SocketAddr> {
    let normalised = match s.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => s.to_owned(),
    };
    match normalised.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(FieldError::new(
                path,
                format!("invalid socket address {s:?}: expected IP:PORT, e.g. 127.0.0.1:4000"),
            ));
            None
        }
    }
}

fn parse_database_url(s: &str, errors: &mut Vec<FieldError>) -> DatabaseUrl {
    if s == "memory://" || s == "memory" {
        return DatabaseUrl::Memory;
    }
    if let Some(path) = s
        .strip_prefix("sqlite://")
        .or_else(|| s.strip_prefix("sqlite:"))
    {
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            errors.push(FieldError::new(
                "storage.database_url",
                "sqlite URL needs a file path, e.g. sqlite://tollgate-data/tollgate.db",
            ));
        }
        return DatabaseUrl::Sqlite(PathBuf::from(path));
    }
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        if s.parse::<http::Uri>().is_err() && !s.contains('@') {
            errors.push(FieldError::new(
                "storage.database_url",
                "not a valid postgres:// URL",
            ));
        }
        return DatabaseUrl::Postgres(Secret(s.to_owned()));
    }
    errors.push(FieldError::new(
        "storage.database_url",
        "unsupported URL: expected sqlite://PATH, postgres://USER@HOST/DB or memory://",
    ));
    DatabaseUrl::Memory
}

/// A database URL with its password replaced, for display.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
