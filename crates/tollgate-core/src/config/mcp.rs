//! The tool layer's configuration: MCP upstream servers, how their names are merged, and the
//! virtual servers served at `/mcp/{name}`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::raw::{RawMcp, StringLike};
use super::{valid_name, FieldError, Secret};

/// The longest tool or prompt name the gateway exposes; some clients reject longer ones.
pub const MAX_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McpConfig {
    /// How upstream tool and prompt names are prefixed with their server's name.
    pub prefix: PrefixMode,
    /// Browser origins allowed besides loopback ones and the request's own host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// A session unused this long ends (its upstream sessions and processes with it).
    #[serde(with = "super::units::duration")]
    pub session_idle_timeout: Duration,
    /// The longest one upstream call may take, unless the server sets its own `timeout`.
    #[serde(with = "super::units::duration")]
    pub request_timeout: Duration,
    /// The externally visible base URL (`https://gw.example.com`), used in the OAuth protected
    /// resource metadata; derived from the request's `Host` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    pub servers: Vec<McpServerConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub virtual_servers: Vec<VirtualServerConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaConfig>,
    /// What happens when an upstream's tool definition differs from the pinned one.
    pub on_drift: DriftAction,
    pub approvals: ApprovalsConfig,
    /// When set, the only commands stdio servers may run (exact strings as written in
    /// `command`); any other fails validation, so no reload can spawn something else.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stdio_allowlist: Vec<String>,
    pub audit: McpAuditConfig,
}

/// The action on a tool whose definition drifted from its pin, until an admin approves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftAction {
    /// Serve the new definition; audit the drift.
    Warn,
    /// Leave the tool out of lists and refuse calls to it as if it did not exist.
    Hide,
    /// List the tool but refuse calls with a tool error that says why.
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalsConfig {
    /// How long a call that needs an approval is held open waiting for one.
    #[serde(with = "super::units::duration")]
    pub wait: Duration,
    /// How long an approval request stays open, and an approval usable, after it is made.
    #[serde(with = "super::units::duration")]
    pub ttl: Duration,
}

/// What the audit record of a call holds besides the arguments' digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpAuditConfig {
    /// Whether records (and approval requests) carry the arguments themselves.
    pub arguments: bool,
    /// Argument fields replaced by `"[redacted]"` there: a key name matches at any depth,
    /// a dotted path (`args.card.number`) one place. Always includes [`DEFAULT_REDACT`].
    pub redact: Vec<String>,
}

/// Argument names that never appear in audit records unredacted.
pub const DEFAULT_REDACT: [&str; 9] = [
    "password",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "access_token",
    "refresh_token",
    "client_secret",
];

/// OAuth 2.1 client credentials the gateway uses to get its own token for an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OAuthClientConfig {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Sent as `resource` (RFC 8707) and `audience`, for servers that bind tokens to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// An execution quota: how many calls of matching tools a principal (or a team, ...) may make
/// per minute, hour or day, and how many may run at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaConfig {
    pub name: String,
    /// `server/tool` patterns (`*` matches any run of characters); every tool when empty.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<String>,
    /// Whether each matching tool has its own counter, or the tools of one server share one.
    pub per: QuotaPer,
    /// Whose calls count together.
    pub scope: super::Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPer {
    /// Each matching tool has its own counter.
    Tool,
    /// The tools of one server share a counter.
    Server,
    /// Each matching A2A method of an agent has its own counter.
    Method,
    /// The methods of one agent share a counter.
    Agent,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            prefix: PrefixMode::Conditional,
            allowed_origins: Vec::new(),
            session_idle_timeout: Duration::from_secs(30 * 60),
            request_timeout: Duration::from_secs(120),
            public_url: None,
            servers: Vec::new(),
            virtual_servers: Vec::new(),
            quotas: Vec::new(),
            on_drift: DriftAction::Warn,
            stdio_allowlist: Vec::new(),
            approvals: ApprovalsConfig {
                wait: Duration::from_secs(120),
                ttl: Duration::from_secs(3600),
            },
            audit: McpAuditConfig {
                arguments: false,
                redact: DEFAULT_REDACT.iter().map(|s| (*s).to_owned()).collect(),
            },
        }
    }
}

impl McpConfig {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn server(&self, name: &str) -> Option<&McpServerConfig> {
        self.servers.iter().find(|s| s.name == name)
    }

    pub fn virtual_server(&self, name: &str) -> Option<&VirtualServerConfig> {
        self.virtual_servers.iter().find(|s| s.name == name)
    }
}

/// Whether a federated name carries its server's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    /// Every name is `{server}_{name}`.
    Always,
    /// Only names that more than one server uses are prefixed.
    Conditional,
    /// Names are passed through; on a collision the first server in config order wins.
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McpServerConfig {
    pub name: String,
    #[serde(flatten)]
    pub transport: McpTransport,
    #[serde(with = "super::units::duration")]
    pub timeout: Duration,
    /// The gateway's own OAuth client for this upstream (HTTP transports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthClientConfig>,
    /// Overrides `mcp.on_drift` for this server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_drift: Option<DriftAction>,
    /// Tool name -> SHA-256 of its canonical definition: pinned from config, not first sight.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "transport", rename_all = "snake_case")]
pub enum McpTransport {
    /// Streamable HTTP (MCP 2025-03-26 and later).
    StreamableHttp {
        url: String,
        /// Sent on every upstream request: the upstream's own credential, never the client's.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, Secret>,
    },
    /// The HTTP+SSE transport of MCP 2024-11-05: a GET stream and a POST endpoint.
    Sse {
        url: String,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, Secret>,
    },
    /// A local process speaking newline-delimited JSON-RPC on stdin/stdout.
    Stdio {
        command: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        /// The child's whole environment besides `PATH` and `HOME`, which are inherited.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, Secret>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cwd: Option<PathBuf>,
    },
}

impl McpTransport {
    pub fn kind(&self) -> &'static str {
        match self {
            McpTransport::StreamableHttp { .. } => "streamable_http",
            McpTransport::Sse { .. } => "sse",
            McpTransport::Stdio { .. } => "stdio",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualServerConfig {
    pub name: String,
    pub servers: Vec<String>,
    pub auth: McpAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum McpAuth {
    /// A virtual key or JWT, like every other route.
    Required,
    /// The anonymous principal; policy, quotas and audit still apply.
    None,
}

/// The short prefix a server's names get when `{server}_{name}` would pass [`MAX_NAME`]:
/// eight hex digits of the name's SHA-256, the same on every replica and restart.
pub fn short_prefix(server: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(server.as_bytes());
    crate::hex::encode(&digest[..4])
}

pub(super) fn validate(raw: Option<RawMcp>, errors: &mut Vec<FieldError>) -> McpConfig {
    let Some(raw) = raw else {
        return McpConfig::default();
    };
    let defaults = McpConfig::default();
    let prefix = match raw.prefix.as_deref() {
        None | Some("conditional") => PrefixMode::Conditional,
        Some("always") => PrefixMode::Always,
        Some("never") => PrefixMode::Never,
        Some(other) => {
            errors.push(FieldError::new(
                "mcp.prefix",
                format!("must be always, conditional or never, got {other:?}"),
            ));
            PrefixMode::Conditional
        }
    };
    let request_timeout = raw.request_timeout.unwrap_or(defaults.request_timeout);
    let stdio_allowlist = raw.stdio_allowlist.unwrap_or_default();
    for (i, c) in stdio_allowlist.iter().enumerate() {
        if c.trim().is_empty() {
            errors.push(FieldError::new(
                format!("mcp.stdio_allowlist[{i}]"),
                "must not be empty",
            ));
        }
    }
    let mut servers = Vec::new();
    let mut names = HashSet::new();
    let mut prefixes = HashSet::new();
    for (i, s) in raw.servers.unwrap_or_default().into_iter().enumerate() {
        let at = |f: &str| format!("mcp.servers[{i}].{f}");
        if !valid_name(&s.name) {
            errors.push(FieldError::new(
                at("name"),
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if !names.insert(s.name.clone()) {
            errors.push(FieldError::new(
                at("name"),
                format!("duplicate server {:?}", s.name),
            ));
        } else if !prefixes.insert(short_prefix(&s.name)) {
            // Two servers whose short prefixes collide could not be told apart in long names.
            errors.push(FieldError::new(
                at("name"),
                "its short name prefix collides with another server's; rename one",
            ));
        }
        let headers = |errors: &mut Vec<FieldError>, h: Option<BTreeMap<String, StringLike>>| {
            let mut out = BTreeMap::new();
            for (k, StringLike(v)) in h.unwrap_or_default() {
                if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || http::HeaderValue::from_str(&v).is_err()
                {
                    errors.push(FieldError::new(
                        at(&format!("headers.{k}")),
                        "invalid header name or value",
                    ));
                }
                out.insert(k.to_ascii_lowercase(), Secret(v));
            }
            out
        };
        let url = |errors: &mut Vec<FieldError>, u: Option<String>| match u {
            Some(u)
                if (u.starts_with("http://") || u.starts_with("https://"))
                    && u.parse::<http::Uri>().is_ok() =>
            {
                u
            }
            Some(u) => {
                errors.push(FieldError::new(
                    at("url"),
                    format!("must be an http:// or https:// URL, got {u:?}"),
                ));
                String::new()
            }
            None => {
                errors.push(FieldError::new(
                    at("url"),
                    "required for the streamable_http and sse transports",
                ));
                String::new()
            }
        };
        let kind = match (s.transport.as_deref(), &s.url, &s.command) {
            (Some(k), _, _) => k.to_owned(),
            (None, Some(_), None) => "streamable_http".to_owned(),
            (None, None, Some(_)) => "stdio".to_owned(),
            (None, Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    at("url"),
                    "set either url (an HTTP server) or command (a stdio process), not both",
                ));
                continue;
            }
            (None, None, None) => {
                errors.push(FieldError::new(
                    at("url"),
                    "set url (an HTTP server) or command (a stdio process)",
                ));
                continue;
            }
        };
        let transport = match kind.as_str() {
            "streamable_http" | "sse" => {
                if s.command.is_some() || s.args.is_some() || s.env.is_some() || s.cwd.is_some() {
                    errors.push(FieldError::new(
                        at("command"),
                        "command, args, env and cwd belong to stdio servers",
                    ));
                }
                let url = url(errors, s.url);
                let headers = headers(errors, s.headers);
                if kind == "sse" {
                    McpTransport::Sse { url, headers }
                } else {
                    McpTransport::StreamableHttp { url, headers }
                }
            }
            "stdio" => {
                if s.url.is_some() || s.headers.is_some() {
                    errors.push(FieldError::new(
                        at("url"),
                        "url and headers belong to HTTP servers",
                    ));
                }
                let command = s.command.unwrap_or_default();
                if command.trim().is_empty() {
                    errors.push(FieldError::new(at("command"), "required for stdio servers"));
                } else if !stdio_allowlist.is_empty() && !stdio_allowlist.contains(&command) {
                    errors.push(FieldError::new(
                        at("command"),
                        format!("{command:?} is not in mcp.stdio_allowlist"),
                    ));
                }
                let mut env = BTreeMap::new();
                for (k, StringLike(v)) in s.env.unwrap_or_default() {
                    if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                        errors.push(FieldError::new(
                            at(&format!("env.{k}")),
                            "invalid environment variable",
                        ));
                    }
                    env.insert(k, Secret(v));
                }
                McpTransport::Stdio {
                    command,
                    args: s
                        .args
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| a.0)
                        .collect(),
                    env,
                    cwd: s.cwd.map(PathBuf::from),
                }
            }
            other => {
                errors.push(FieldError::new(
                    at("transport"),
                    format!("must be streamable_http, sse or stdio, got {other:?}"),
                ));
                continue;
            }
        };
        let oauth = s.oauth.map(|o| {
            if matches!(transport, McpTransport::Stdio { .. }) {
                errors.push(FieldError::new(
                    at("oauth"),
                    "belongs to HTTP servers (a stdio server gets credentials through env)",
                ));
            }
            if !(o.token_url.starts_with("http://") || o.token_url.starts_with("https://"))
                || o.token_url.parse::<http::Uri>().is_err()
            {
                errors.push(FieldError::new(
                    at("oauth.token_url"),
                    format!("must be an http:// or https:// URL, got {:?}", o.token_url),
                ));
            }
            if o.client_id.0.is_empty() {
                errors.push(FieldError::new(at("oauth.client_id"), "required"));
            }
            if matches!(transport, McpTransport::StreamableHttp { ref headers, .. } | McpTransport::Sse { ref headers, .. } if headers.contains_key("authorization"))
            {
                errors.push(FieldError::new(
                    at("oauth"),
                    "set oauth or an Authorization header, not both",
                ));
            }
            OAuthClientConfig {
                token_url: o.token_url,
                client_id: o.client_id.0,
                client_secret: Secret(o.client_secret.0),
                scope: o.scope,
                audience: o.audience,
            }
        });
        let on_drift = s
            .on_drift
            .as_deref()
            .map(|d| drift_action(d, &at("on_drift"), errors));
        let mut pins = BTreeMap::new();
        for (tool, sha) in s.pins.unwrap_or_default() {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(FieldError::new(
                    at(&format!("pins.{tool}")),
                    "must be the 64 hex digits of a tool definition's SHA-256",
                ));
            }
            pins.insert(tool, sha.to_ascii_lowercase());
        }
        servers.push(McpServerConfig {
            name: s.name,
            transport,
            timeout: s.timeout.unwrap_or(request_timeout),
            oauth,
            on_drift,
            pins,
        });
    }
    let mut virtual_servers = Vec::new();
    let mut vnames = HashSet::new();
    for (i, v) in raw
        .virtual_servers
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let at = |f: &str| format!("mcp.virtual_servers[{i}].{f}");
        if !valid_name(&v.name) {
            errors.push(FieldError::new(
                at("name"),
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if !vnames.insert(v.name.clone()) {
            errors.push(FieldError::new(
                at("name"),
                format!("duplicate virtual server {:?}", v.name),
            ));
        }
        if v.servers.is_empty() {
            errors.push(FieldError::new(
                at("servers"),
                "must name at least one server",
            ));
        }
        for (j, s) in v.servers.iter().enumerate() {
            if !names.contains(s) {
                errors.push(FieldError::new(
                    format!("mcp.virtual_servers[{i}].servers[{j}]"),
                    format!("no MCP server named {s:?}"),
                ));
            }
        }
        let auth = match v.auth.as_deref() {
            None | Some("required") => McpAuth::Required,
            Some("none") => McpAuth::None,
            Some(other) => {
                errors.push(FieldError::new(
                    at("auth"),
                    format!("must be required or none, got {other:?}"),
                ));
                McpAuth::Required
            }
        };
        virtual_servers.push(VirtualServerConfig {
            name: v.name,
            servers: v.servers,
            auth,
        });
    }
    let mut allowed_origins = Vec::new();
    for (i, o) in raw
        .allowed_origins
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if o != "*" && o.parse::<http::Uri>().map_or(true, |u| u.host().is_none()) {
            errors.push(FieldError::new(
                format!("mcp.allowed_origins[{i}]"),
                format!("must be an origin like https://app.example.com, got {o:?}"),
            ));
        }
        allowed_origins.push(o.trim_end_matches('/').to_ascii_lowercase());
    }
    let public_url = raw.public_url.map(|u| u.trim_end_matches('/').to_owned());
    if let Some(u) = &public_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            errors.push(FieldError::new(
                "mcp.public_url",
                "must be an http:// or https:// URL",
            ));
        }
    }
    let quotas = quotas(
        raw.quotas,
        "mcp.quotas",
        &[("tool", QuotaPer::Tool), ("server", QuotaPer::Server)],
        errors,
    );
    let on_drift = raw.on_drift.map_or(defaults.on_drift, |d| {
        drift_action(&d, "mcp.on_drift", errors)
    });
    let approvals = raw.approvals.unwrap_or_default();
    let approvals = ApprovalsConfig {
        wait: approvals.wait.unwrap_or(defaults.approvals.wait),
        ttl: approvals.ttl.unwrap_or(defaults.approvals.ttl),
    };
    if approvals.ttl < approvals.wait {
        errors.push(FieldError::new(
            "mcp.approvals.ttl",
            "must be at least mcp.approvals.wait (an approval must outlive the call it holds)",
        ));
    }
    let audit = raw.audit.unwrap_or_default();
    let audit = McpAuditConfig {
        arguments: audit.arguments.unwrap_or(false),
        // The defaults always apply: a list adds to them, it cannot unredact a password.
        redact: {
            let mut r = defaults.audit.redact;
            for extra in audit.redact.unwrap_or_default() {
                if !r.contains(&extra) {
                    r.push(extra);
                }
            }
            r
        },
    };
    McpConfig {
        on_drift,
        stdio_allowlist,
        approvals,
        audit,
        quotas,
        prefix,
        allowed_origins,
        session_idle_timeout: raw
            .session_idle_timeout
            .unwrap_or(defaults.session_idle_timeout),
        request_timeout,
        public_url,
        servers,
        virtual_servers,
    }
}

fn drift_action(v: &str, at: &str, errors: &mut Vec<FieldError>) -> DriftAction {
    match v {
        "warn" => DriftAction::Warn,
        "hide" => DriftAction::Hide,
        "block" => DriftAction::Block,
        other => {
            errors.push(FieldError::new(
                at,
                format!("must be warn, hide or block, got {other:?}"),
            ));
            DriftAction::Warn
        }
    }
}

/// Validates execution quotas (`mcp.quotas`, `a2a.quotas`): `per` names come from `pers`, the
/// first being the default.
pub(super) fn quotas(
    raw: Option<Vec<super::raw::RawQuota>>,
    path: &str,
    pers: &[(&str, QuotaPer)],
    errors: &mut Vec<FieldError>,
) -> Vec<QuotaConfig> {
    let mut quotas = Vec::new();
    let mut qnames = HashSet::new();
    for (i, q) in raw.unwrap_or_default().into_iter().enumerate() {
        let at = |f: &str| format!("{path}[{i}].{f}");
        if !qnames.insert(q.name.clone()) || q.name.is_empty() {
            errors.push(FieldError::new(
                at("name"),
                format!("must be unique and not empty, got {:?}", q.name),
            ));
        }
        let default = pers.first().map_or(QuotaPer::Tool, |(_, p)| *p);
        let per = match q.per.as_deref() {
            None => default,
            Some(name) => match pers.iter().find(|(n, _)| *n == name) {
                Some((_, p)) => *p,
                None => {
                    let names: Vec<&str> = pers.iter().map(|(n, _)| *n).collect();
                    errors.push(FieldError::new(
                        at("per"),
                        format!("must be {}, got {name:?}", names.join(" or ")),
                    ));
                    default
                }
            },
        };
        let scope = q.scope.map(super::Scope::from).unwrap_or(super::Scope::Key);
        if matches!(scope, super::Scope::Model | super::Scope::Conversation) {
            errors.push(FieldError::new(
                at("scope"),
                "must be key, user, team, agent or global",
            ));
        }
        for (f, v) in [
            ("per_minute", q.per_minute),
            ("per_hour", q.per_hour),
            ("per_day", q.per_day),
            ("concurrent", q.concurrent),
        ] {
            if v == Some(0) {
                errors.push(FieldError::new(at(f), "must be at least 1"));
            }
        }
        if q.per_minute.is_none()
            && q.per_hour.is_none()
            && q.per_day.is_none()
            && q.concurrent.is_none()
        {
            errors.push(FieldError::new(
                at("per_minute"),
                "set at least one of per_minute, per_hour, per_day, concurrent",
            ));
        }
        quotas.push(QuotaConfig {
            name: q.name,
            matches: q.matches.unwrap_or_default(),
            per,
            scope,
            per_minute: q.per_minute,
            per_hour: q.per_hour,
            per_day: q.per_day,
            concurrent: q.concurrent,
        });
    }
    quotas
}
