use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::parse(yaml, "test.yaml", &no_env)
}

fn error_paths(err: &ConfigError) -> Vec<&str> {
    err.errors.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn embedded_default_serves_mock_echo() {
    let c = parse(EMBEDDED_DEFAULT).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:4000");
    assert_eq!(
        c.storage.database_url,
        DatabaseUrl::Sqlite(PathBuf::from("tollgate-data/tollgate.db"))
    );
    assert_eq!(c.models[0].name, "mock-echo");
    assert!(matches!(c.providers[0].kind, ProviderKind::Mock(_)));
    assert!(c.master_key.is_none());
    // Priced, so the console shows a newcomer's calls with a cost.
    assert_eq!(c.prices.len(), 1);
}

#[test]
fn empty_file_is_valid() {
    let c = parse("").unwrap();
    assert!(c.models.is_empty());
}

#[test]
fn every_unknown_field_is_reported_with_its_path() {
    let err = parse(
        "listne: 1\nstorage:\n  databse_url: x\nproviders:\n  - name: a\n    kind: mock\n    bogus: 1\n",
    )
    .unwrap_err();
    let paths = error_paths(&err);
    assert!(paths.contains(&"listne"), "{err}");
    assert!(paths.contains(&"storage.databse_url"), "{err}");
    assert!(paths.contains(&"providers[0].bogus"), "{err}");
    assert!(
        err.errors
            .iter()
            .all(|e| e.message.starts_with("unknown field")),
        "{err}"
    );
}

#[test]
fn semantic_errors_are_all_collected() {
    let err = parse(
        "listen: nowhere\nproviders:\n  - name: p\n    kind: openai\n  - name: p\n    kind: mock\n    mock: {error_rate: 2}\nmodels:\n  - name: m\n    targets:\n      - provider: ghost\n  - name: empty\n",
    )
    .unwrap_err();
    let paths = error_paths(&err);
    for want in [
        "listen",
        "providers[0].base_url",
        "providers[1].name",
        "providers[1].mock.error_rate",
        "models[0].targets[0].provider",
        "models[1].targets",
    ] {
        assert!(paths.contains(&want), "missing {want} in {err}");
    }
}

#[test]
fn type_errors_name_the_field() {
    let err = parse("limits:\n  max_body_size: lots\n").unwrap_err();
    assert_eq!(error_paths(&err), vec!["limits.max_body_size"]);
}

#[test]
fn interpolation_feeds_typed_fields_and_master_key_env() {
    let env = |k: &str| match k {
        "KEY" => Some("sk-upstream".to_owned()),
        "TOLLGATE_MASTER_KEY" => Some("master-key-0123456789".to_owned()),
        _ => None,
    };
    let c = Config::parse(
        "providers:\n  - name: o\n    kind: openai\n    base_url: ${BASE:-http://127.0.0.1:9/v1/}\n    api_key: ${KEY}\n",
        "t",
        &env,
    )
    .unwrap();
    let ProviderKind::OpenAi(o) = &c.providers[0].kind else {
        panic!("wrong kind");
    };
    assert_eq!(o.base_url, "http://127.0.0.1:9/v1");
    assert_eq!(o.api_key.as_ref().map(Secret::expose), Some("sk-upstream"));
    assert_eq!(
        c.master_key.as_ref().map(Secret::expose),
        Some("master-key-0123456789")
    );
    // Secrets never reach the normalised output.
    let yaml = c.to_yaml();
    assert!(
        !yaml.contains("sk-upstream") && !yaml.contains("master-key-0123"),
        "{yaml}"
    );
}

#[test]
fn target_model_defaults_to_group_name() {
    let c = parse("providers:\n  - {name: m, kind: mock}\nmodels:\n  - name: x\n    targets: [{provider: m}]\n").unwrap();
    assert_eq!(c.models[0].targets[0].model, "x");
}

#[test]
fn normalised_form_reparses_to_the_same_config() {
    let c = parse(EMBEDDED_DEFAULT).unwrap();
    let again = parse(&c.to_yaml()).unwrap();
    assert_eq!(c.to_yaml(), again.to_yaml());
}

/// Pins the normalised form of the shipped example. Set `UPDATE_SNAPSHOTS=1` to rewrite it,
/// then review the diff.
#[test]
fn example_config_snapshot() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = std::fs::read_to_string(root.join("examples/tollgate.yaml")).unwrap();
    let env = |k: &str| match k {
        "TOLLGATE_MASTER_KEY" => Some("example-master-key-0123456789".to_owned()),
        "OPENAI_API_KEY" => Some("sk-example".to_owned()),
        "AZURE_OPENAI_API_KEY" => Some("azure-example".to_owned()),
        _ => None,
    };
    let c = Config::parse(&example, "examples/tollgate.yaml", &env).unwrap();
    let snap_path = root.join("examples/tollgate.normalised.yaml");
    let got = c.to_yaml();
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snap_path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&snap_path).unwrap_or_default();
    assert_eq!(
        got, want,
        "normalised example changed; rerun with UPDATE_SNAPSHOTS=1 and review"
    );
}

#[test]
fn numeric_secrets_work_and_are_never_printed() {
    let env = |k: &str| match k {
        "KEY" => Some("12345678901234567890".to_owned()),
        _ => None,
    };
    let c = Config::parse(
        "master_key: ${KEY}\nproviders:\n  - name: o\n    kind: openai\n    base_url: http://x/v1\n    api_key: ${KEY}\n    headers:\n      x-secret: ${KEY}\n",
        "t",
        &env,
    )
    .unwrap();
    assert_eq!(
        c.master_key.as_ref().map(Secret::expose),
        Some("12345678901234567890")
    );
    let yaml = c.to_yaml();
    assert!(!yaml.contains("1234567890"), "{yaml}");
    assert!(!format!("{c:?}").contains("1234567890"));
}

#[test]
fn model_group_routing_is_validated() {
    let err = parse(
        "providers:\n  - name: p\n    kind: mock\n    health_check: {interval: 1s}\nmodels:\n  - name: a\n    aliases: [b, 'c*']\n    strategy: priority\n    sticky_header: x-s\n    targets: [{provider: p, weight: 0, model: 'x*'}]\n    fallbacks: [a, ghost]\n    retry: {attempts: 0, backoff: 2s, max_backoff: 1s}\n    cooldown: {failures: 0}\n  - name: b\n    targets: [{provider: p}]\n  - name: 'two*stars*'\n    targets: [{provider: p}]\n",
    )
    .unwrap_err();
    let paths = error_paths(&err);
    for want in [
        "providers[0].health_check",
        "models[0].aliases[1]",
        "models[0].sticky_header",
        "models[0].targets[0].weight",
        "models[0].targets[0].model",
        "models[0].fallbacks[0]",
        "models[0].fallbacks[1]",
        "models[0].retry.attempts",
        "models[0].retry.max_backoff",
        "models[0].cooldown.failures",
        "models[1].name",
        "models[2].name",
    ] {
        assert!(paths.contains(&want), "missing {want}: {err}");
    }
}

#[test]
fn fallbacks_may_name_aliases_and_pattern_matches() {
    let c = parse(
        "providers:\n  - name: p\n    kind: mock\nmodels:\n  - name: main\n    targets: [{provider: p}]\n    fallbacks: [small, 'up/anything']\n  - name: tiny\n    aliases: [small]\n    targets: [{provider: p}]\n  - name: 'up/*'\n    targets: [{provider: p, model: '*'}]\n",
    )
    .unwrap();
    assert_eq!(resolve_model(&c.models, "small"), Some(1));
    assert_eq!(resolve_model(&c.models, "up/x"), Some(2));
    assert_eq!(c.models[0].strategy, Strategy::Weighted);
    assert_eq!(c.models[0].retry, RetryConfig::default());
}

#[test]
fn prices_budgets_and_rate_limits_are_validated() {
    let err = parse(
        "prices:\n  - model: m\n  - model: n\n    input_per_mtok: -1\nbudgets:\n  - name: b\n    scope: global\n    match: [x]\n    period: daily\n    limit_usd: 0\n  - name: b\n    scope: key\n    period: total\n    limit_usd: 1\n    alerts: {thresholds: [0, 1.5], webhook: 'ftp://x'}\nrate_limits:\n  - name: 'bad name'\n    scope: team\n    match: []\n  - name: r\n    scope: key\n    rpm: 0\n",
    )
    .unwrap_err();
    let paths = error_paths(&err);
    for want in [
        "prices[0].input_per_mtok",
        "prices[1].input_per_mtok",
        "budgets[0].match",
        "budgets[0].limit_usd",
        "budgets[1].name",
        "budgets[1].alerts.thresholds[0]",
        "budgets[1].alerts.thresholds[1]",
        "budgets[1].alerts.webhook",
        "rate_limits[0].name",
        "rate_limits[0].rpm",
        "rate_limits[0].match",
        "rate_limits[1].rpm",
    ] {
        assert!(paths.contains(&want), "missing {want}: {err}");
    }
    let ok = parse("budgets:\n  - name: b\n    scope: team\n    period: weekly\n    limit_usd: 5\n    alerts: {thresholds: [0.9, 0.5, 0.5], webhook: 'https://h'}\n").unwrap();
    assert_eq!(ok.budgets[0].matches, ["*"]);
    assert_eq!(
        ok.budgets[0].alerts.as_ref().unwrap().thresholds,
        [0.5, 0.9]
    );
}

#[test]
fn anthropic_providers_default_their_url_and_version() {
    let c = Config::parse(
        "providers:\n  - name: a\n    kind: anthropic\n    api_key: sk-ant\nmodels:\n  - name: claude\n    strict_translation: true\n    targets: [{provider: a, model: claude-x}]\n",
        "t",
        &|_| None,
    )
    .unwrap();
    let ProviderKind::Anthropic(a) = &c.providers[0].kind else {
        panic!("wrong kind");
    };
    assert_eq!(a.base_url, "https://api.anthropic.com/v1");
    assert_eq!(a.api_version.as_deref(), Some(ANTHROPIC_VERSION));
    assert!(c.models[0].strict_translation);
    let err = Config::parse(
        "providers:\n  - name: a\n    kind: anthropic\n    base_url: ftp://x\n    mock: {chunks: 2}\n",
        "t",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("providers[0].base_url"), "{err}");
    assert!(err.contains("providers[0].mock"), "{err}");
}

#[test]
fn azure_providers_take_a_key_or_a_bearer_token() {
    let c = parse("providers:\n  - name: az\n    kind: azure\n    base_url: https://r.openai.azure.com\n    bearer_token: tok\n").unwrap();
    let ProviderKind::Azure(a) = &c.providers[0].kind else {
        panic!("wrong kind");
    };
    assert_eq!(a.api_version.as_deref(), Some(AZURE_API_VERSION));
    assert_eq!(
        a.headers.get("authorization").map(Secret::expose),
        Some("Bearer tok")
    );
    let err = parse("providers:\n  - name: az\n    kind: azure\n    api_key: k\n    bearer_token: t\n  - name: o\n    kind: openai\n    base_url: http://x\n    bearer_token: t\n").unwrap_err();
    assert_eq!(
        error_paths(&err),
        [
            "providers[0].base_url",
            "providers[0].bearer_token",
            "providers[1].bearer_token"
        ]
    );
}

#[test]
fn bedrock_credentials_come_from_config_or_the_environment() {
    let env = |k: &str| match k {
        "AWS_REGION" => Some("eu-west-1".to_owned()),
        "AWS_ACCESS_KEY_ID" => Some("AKIDENV".to_owned()),
        "AWS_SECRET_ACCESS_KEY" => Some("env-secret".to_owned()),
        _ => None,
    };
    let c = Config::parse("providers:\n  - name: b\n    kind: bedrock\n", "t", &env).unwrap();
    let ProviderKind::Bedrock(b) = &c.providers[0].kind else {
        panic!("wrong kind");
    };
    assert_eq!(
        b.base_url,
        "https://bedrock-runtime.eu-west-1.amazonaws.com"
    );
    let aws = b.aws.as_ref().unwrap();
    assert_eq!(aws.region, "eu-west-1");
    assert_eq!(aws.access_key_id.expose(), "AKIDENV");
    assert!(!c.to_yaml().contains("env-secret"), "secrets never printed");

    let err = parse("providers:\n  - name: b\n    kind: bedrock\n    api_key: k\n  - name: o\n    kind: openai\n    base_url: http://x\n    region: us-east-1\n").unwrap_err();
    assert_eq!(
        error_paths(&err),
        [
            "providers[0].region",
            "providers[0].access_key_id",
            "providers[0].api_key",
            "providers[1].region"
        ]
    );
}

#[test]
fn route_caches_are_validated() {
    let c = parse("models:\n  - name: a\n    targets: [{provider: p}]\n    cache: {}\n  - name: b\n    targets: [{provider: p}]\n    cache: {enabled: false}\nproviders:\n  - name: p\n    kind: mock\n").unwrap();
    let a = c.models[0].cache.as_ref().unwrap();
    assert_eq!(
        (a.scope, a.when, a.ttl),
        (
            CacheScope::Team,
            CacheWhen::Always,
            std::time::Duration::from_secs(300)
        )
    );
    assert!(c.models[1].cache.is_none());
    assert_eq!(c.cache.max_size, 256 * 1024 * 1024);
    let err = parse("models:\n  - name: a\n    targets: [{provider: p}]\n    cache: {scope: planet, when: sometimes, ttl: 0s}\nproviders:\n  - name: p\n    kind: mock\n").unwrap_err();
    assert_eq!(
        error_paths(&err),
        [
            "models[0].cache.scope",
            "models[0].cache.when",
            "models[0].cache.ttl"
        ]
    );
}

#[test]
fn semantic_caches_are_cross_checked() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::write(dir.path().join(f), b"x").unwrap();
    }
    let ok = format!("cache:\n  embedding_model: {}\nmodels:\n  - name: a\n    targets: [{{provider: p}}]\n    cache: {{semantic: {{}}}}\n  - name: b\n    targets: [{{provider: p}}]\n    cache: {{semantic: {{embedder: e, threshold: 0.8, tools: true}}}}\n  - name: e\n    targets: [{{provider: p}}]\nproviders:\n  - name: p\n    kind: mock\n", dir.path().display());
    let c = parse(&ok).unwrap();
    let a = c.models[0]
        .cache
        .as_ref()
        .unwrap()
        .semantic
        .clone()
        .unwrap();
    assert_eq!(
        (a.threshold, a.embedder, a.tools),
        (0.9, crate::config::Embedder::Builtin, false)
    );
    let b = c.models[1]
        .cache
        .as_ref()
        .unwrap()
        .semantic
        .clone()
        .unwrap();
    assert_eq!(b.embedder, crate::config::Embedder::Group("e".into()));
    assert_eq!(c.cache.max_semantic_entries, 1_000_000);

    let err = parse("cache:\n  max_semantic_entries: 0\nmodels:\n  - name: a\n    targets: [{provider: p}]\n    cache: {semantic: {threshold: 1.5}}\n  - name: b\n    targets: [{provider: p}]\n    cache: {semantic: {embedder: nowhere}}\n  - name: c\n    targets: [{provider: p}]\n    cache: {semantic: {embedder: c}}\nproviders:\n  - name: p\n    kind: mock\n").unwrap_err();
    assert_eq!(
        error_paths(&err),
        [
            "models[0].cache.semantic.threshold",
            "cache.max_semantic_entries",
            "models[0].cache.semantic.embedder",
            "models[1].cache.semantic.embedder",
            "models[2].cache.semantic.embedder",
        ]
    );
    let empty = tempfile::tempdir().unwrap();
    let err = parse(&ok.replace(
        &dir.path().display().to_string(),
        &empty.path().display().to_string(),
    ))
    .unwrap_err();
    assert_eq!(
        error_paths(&err),
        ["cache.embedding_model", "cache.embedding_model"]
    );
}

#[test]
fn mcp_servers_are_validated() {
    let ok = "mcp:\n  servers:\n    - name: files\n      url: http://127.0.0.1:1/mcp\n      headers: {Authorization: Bearer x}\n    - name: local\n      command: python3\n      args: [server.py, 7]\n    - name: old\n      transport: sse\n      url: http://127.0.0.1:2/sse\n      timeout: 5s\n  virtual_servers:\n    - name: public\n      servers: [files, local]\n      auth: none\n";
    let c = parse(ok).unwrap();
    assert_eq!(c.mcp.prefix, crate::config::PrefixMode::Conditional);
    let kinds: Vec<_> = c.mcp.servers.iter().map(|s| s.transport.kind()).collect();
    assert_eq!(kinds, ["streamable_http", "stdio", "sse"]);
    assert_eq!(c.mcp.servers[0].timeout, c.mcp.request_timeout);
    assert_eq!(c.mcp.servers[2].timeout, std::time::Duration::from_secs(5));
    let crate::config::McpTransport::Stdio { args, .. } = &c.mcp.servers[1].transport else {
        panic!("stdio expected");
    };
    assert_eq!(args, &["server.py", "7"], "numbers are read as strings");
    assert_eq!(c.mcp.virtual_servers[0].auth, crate::config::McpAuth::None);
    assert!(
        !c.to_yaml().contains("Bearer x"),
        "upstream credentials are redacted"
    );

    // An allowlist confines stdio commands to what it names.
    let listed = ok.replace("mcp:\n", "mcp:\n  stdio_allowlist: [python3]\n");
    assert_eq!(parse(&listed).unwrap().mcp.stdio_allowlist, ["python3"]);
    let err =
        parse(&ok.replace("mcp:\n", "mcp:\n  stdio_allowlist: [/usr/bin/node]\n")).unwrap_err();
    assert_eq!(error_paths(&err), ["mcp.servers[1].command"]);

    let err = parse("mcp:\n  prefix: sometimes\n  servers:\n    - name: a\n      url: http://x/mcp\n      command: y\n    - name: b\n    - name: b\n      url: ftp://x\n    - name: c\n      transport: carrier-pigeon\n      url: http://x\n  virtual_servers:\n    - name: v\n      servers: [nowhere]\n      auth: maybe\n").unwrap_err();
    assert_eq!(
        error_paths(&err),
        [
            "mcp.prefix",
            "mcp.servers[0].url",
            "mcp.servers[1].url",
            "mcp.servers[2].name",
            "mcp.servers[2].url",
            "mcp.servers[3].transport",
            "mcp.virtual_servers[0].servers[0]",
            "mcp.virtual_servers[0].auth",
        ]
    );
}

#[test]
fn mcp_quotas_are_validated() {
    let c = parse("mcp:\n  quotas:\n    - name: q\n      match: [\"files/*\"]\n      per: server\n      scope: team\n      per_hour: 100\n      concurrent: 2\n").unwrap();
    let q = &c.mcp.quotas[0];
    assert_eq!(
        (q.per, q.scope, q.per_hour, q.concurrent, q.per_minute),
        (
            crate::config::QuotaPer::Server,
            crate::config::Scope::Team,
            Some(100),
            Some(2),
            None
        )
    );
    let err = parse("mcp:\n  quotas:\n    - name: q\n    - name: q\n      per: everything\n      scope: model\n      per_day: 0\n").unwrap_err();
    assert_eq!(
        error_paths(&err),
        [
            "mcp.quotas[0].per_minute",
            "mcp.quotas[1].name",
            "mcp.quotas[1].per",
            "mcp.quotas[1].scope",
            "mcp.quotas[1].per_day",
        ]
    );
}

#[test]
fn mcp_pinning_approvals_audit_and_oauth_are_validated() {
    let c = parse(concat!(
        "mcp:\n  on_drift: block\n  approvals: {wait: 30s, ttl: 2h}\n",
        "  audit: {arguments: true, redact: [card]}\n  servers:\n",
        "    - name: files\n      url: http://127.0.0.1:1/mcp\n      on_drift: hide\n",
        "      pins: {read: \"", "AB", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\"}\n",
        "      oauth: {token_url: \"http://127.0.0.1:1/token\", client_id: gw, client_secret: s3cret, scope: tools}\n",
    ))
    .unwrap();
    let m = &c.mcp;
    assert_eq!(m.on_drift, crate::config::DriftAction::Block);
    assert_eq!(
        (m.approvals.wait, m.approvals.ttl),
        (Duration::from_secs(30), Duration::from_secs(7200))
    );
    assert!(m.audit.arguments);
    assert_eq!(m.audit.redact.last().map(String::as_str), Some("card"));
    assert!(
        m.audit.redact.contains(&"password".to_owned()),
        "the defaults stay"
    );
    let s = &m.servers[0];
    assert_eq!(s.on_drift, Some(crate::config::DriftAction::Hide));
    assert_eq!(
        s.pins["read"],
        "ab0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
    );
    let oauth = s.oauth.as_ref().unwrap();
    assert_eq!(
        (oauth.client_id.as_str(), oauth.client_secret.expose()),
        ("gw", "s3cret")
    );
    // Defaults: warn on drift, digests only in audit, common secret names redacted.
    let d = parse("mcp: {}\n").unwrap();
    assert_eq!(d.mcp.on_drift, crate::config::DriftAction::Warn);
    assert!(!d.mcp.audit.arguments && d.mcp.audit.redact.contains(&"password".to_owned()));

    let err = parse(concat!(
        "mcp:\n  on_drift: explode\n  approvals: {wait: 10m, ttl: 1m}\n  servers:\n",
        "    - name: local\n      command: srv\n      oauth: {token_url: \"ftp://x\", client_id: \"\", client_secret: s}\n",
        "      pins: {read: nothex}\n",
        "    - name: both\n      url: http://127.0.0.1:1/mcp\n      headers: {Authorization: \"Bearer x\"}\n",
        "      oauth: {token_url: \"http://127.0.0.1:1/token\", client_id: gw, client_secret: s}\n      on_drift: sometimes\n",
    ))
    .unwrap_err();
    assert_eq!(
        error_paths(&err),
        [
            "mcp.servers[0].oauth",
            "mcp.servers[0].oauth.token_url",
            "mcp.servers[0].oauth.client_id",
            "mcp.servers[0].pins.read",
            "mcp.servers[1].oauth",
            "mcp.servers[1].on_drift",
            "mcp.on_drift",
            "mcp.approvals.ttl",
        ]
    );
}

#[test]
fn postgres_urls_are_accepted_and_their_passwords_redacted() {
    let c = Config::parse(
        "storage:\n  database_url: postgres://tg:s3cret@db.internal:5432/tollgate?sslmode=require\n",
        "test",
        &|_| None,
    )
    .unwrap();
    assert!(matches!(c.storage.database_url, DatabaseUrl::Postgres(_)));
    let shown = serde_json::to_string(&c.storage.database_url).unwrap();
    assert_eq!(
        shown,
        "\"postgres://tg:<redacted>@db.internal:5432/tollgate?sslmode=require\""
    );
    let err = Config::parse("storage:\n  database_url: mysql://x/y\n", "test", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("postgres://"), "{err}");
}

#[test]
fn errors_never_quote_values_from_the_file() {
    let err = parse(
        "providers:\n  - name: p\n    kind: openai\n    base_url: http://x\n    headers: \"Authorization: Bearer sk-secret-123\"\ntelemetry:\n  otlp:\n    endpoint: http://c\n    headers: \"x-token=otlp-secret-456\"\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("sk-secret-123"), "{text}");
    assert!(!text.contains("otlp-secret-456"), "{text}");
    assert!(
        text.contains("invalid type"),
        "the error still says what is wrong: {text}"
    );
    assert_eq!(
        super::scrub_values(r#"invalid type: string "a \"q\" b", expected a map"#),
        "invalid type: a string, expected a map"
    );
}
