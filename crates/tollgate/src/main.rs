//! The `tollgate` command line: serve, check a config, manage keys without the HTTP API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use tollgate::{ConfigSource, Gateway};

use tollgate_core::admin::KeyView;
use tollgate_core::audit::{AuditEvent, AuditLog};
use tollgate_core::config::{Config, ConfigError};
use tollgate_core::keys::{KeyService, MasterKey, NewKey};
use tollgate_core::store::{Page, Stores};

// mimalloc: fewer and cheaper allocator calls on the hot path than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "One-binary AI control plane: model, tool and agent gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// The config file; without one, the embedded default (SQLite, the `mock` provider).
    #[arg(long, short, env = "TOLLGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate a config file and print its normalised form, or every error with its path.
    Check(ConfigArg),
    /// Manage virtual keys directly in the store.
    Keys {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage teams directly in the store.
    Teams {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Manage users directly in the store.
    Users {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Report spend from the ledger, grouped by key, user, team, model, provider,
    /// conversation, agent or day.
    Spend {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        report: SpendArgs,
    },
    /// Check or export the tamper-evident audit chain.
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Create a record.
    Create {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Users only: the team they belong to.
        #[arg(long)]
        team: Option<String>,
        /// Teams only: the tenant the team's keys belong to.
        #[arg(long)]
        tenant: Option<String>,
        /// Users only.
        #[arg(long)]
        email: Option<String>,
        /// A role to assign, repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// List records as JSON.
    List,
    /// Replace a record's roles (none given: remove all).
    SetRoles {
        id: String,
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Delete a record (refused while keys, or users, belong to it).
    Delete { id: String },
}

#[derive(Args)]
struct SpendArgs {
    /// key, user, team, model, provider, conversation, agent or day (default: one total).
    #[arg(long = "by")]
    group_by: Option<String>,
    /// Start: RFC 3339, a date (2026-11-01) or a duration back from now (7d).
    #[arg(long)]
    since: Option<String>,
    /// End (exclusive), in the same forms.
    #[arg(long)]
    until: Option<String>,
    /// Only records where this dimension equals --filter.
    #[arg(long)]
    filter_by: Option<String>,
    #[arg(long)]
    filter: Option<String>,
    /// Rows, most expensive first (top spenders).
    #[arg(long)]
    limit: Option<u32>,
    /// table (default), json or csv.
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the chain; report the first record that was modified, inserted or deleted.
    Verify,
    /// Write records as JSON lines.
    Export {
        /// RFC 3339 time (`2026-11-01T00:00:00Z`) or a duration back from now (`24h`).
        #[arg(long)]
        since: Option<String>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret (shown once).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        team: Option<String>,
        /// Allowed model patterns, comma separated (`gpt-4o*,mock-*`); default all.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Lifetime such as `30d` or `12h`.
        #[arg(long)]
        expires_in: Option<String>,
        /// Metadata as key=value, repeatable.
        #[arg(long = "metadata", value_parser = parse_kv)]
        metadata: Vec<(String, String)>,
        /// The key's own spend limit in USD per `--budget-period`.
        #[arg(long)]
        budget_usd: Option<f64>,
        /// `daily`, `weekly`, `monthly` (the default) or `total`.
        #[arg(long, value_parser = parse_period)]
        budget_period: Option<tollgate_core::config::Period>,
        /// The key's own limit on requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// The key's own limit on tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key for good.
    Revoke { id: String },
    /// Issue a new secret; the old one works for the grace period.
    Rotate {
        id: String,
        /// Grace period such as `1h` (default: keys.rotation_grace from config).
        #[arg(long)]
        grace: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Replace a generated master key with a fresh one, printed once. Running gateways follow
    /// at their next key refresh. Not for a master key set in the config or environment.
    RotateMaster,
}

fn parse_period(s: &str) -> Result<tollgate_core::config::Period, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?} is not one of daily, weekly, monthly, total"))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn load(arg: &ConfigArg) -> Result<(Config, ConfigSource), ConfigError> {
    match &arg.config {
        Some(path) => Ok((Config::load(path)?, ConfigSource::File(path.clone()))),
        None => Ok((Config::embedded_default()?, ConfigSource::Embedded)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tollgate_llm::semantic::embed::single_threaded_kernels();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(arg) => serve(&arg).await,
            Command::Check(arg) => check(&arg),
            Command::Keys { config, command } => keys(&config, command).await,
            Command::Audit { config, command } => audit(&config, command).await,
            Command::Spend { config, report } => spend(&config, report).await,
            Command::Teams { config, command } => directory(&config, "team", command).await,
            Command::Users { config, command } => directory(&config, "user", command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    match load(arg) {
        Ok((config, _)) => {
            print!("{}", config.to_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprint!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn serve(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let (config, source) = match load(arg) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let log = tollgate_core::telemetry::init(&config.logging);
    let mut gw = Gateway::start(config, source, Some(log)).await?;
    if let Some(MasterKey::Generated(key)) = gw.master.take() {
        println!(
            "No master key configured: generated one. It is shown only now and stored as a hash."
        );
        println!("  master key: {key}");
        println!("Set master_key in the config or TOLLGATE_MASTER_KEY to choose your own.");
    }
    println!("tollgate listening on http://{}", gw.addr);
    if let Some(a) = gw.admin_addr {
        println!("tollgate admin listening on http://{a}");
    }
    wait_for_signals(&gw).await?;
    gw.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Reloads on SIGHUP; returns on SIGTERM or Ctrl-C.
async fn wait_for_signals(gw: &Gateway) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let reloader = gw.reloader();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading config");
                reloader.reload().await;
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupt: draining");
                return Ok(());
            }
        }
    }
}

/// Loads the config and opens its store, for the commands that work on the store directly.
/// A config error is printed and gives `None`.
async fn open_stores(arg: &ConfigArg) -> anyhow::Result<Option<(Config, Stores)>> {
    match load(arg) {
        Ok((config, _)) => {
            let stores = Stores::open(&config.storage.database_url).await?;
            Ok(Some((config, stores)))
        }
        Err(e) => {
            eprint!("{e}");
            Ok(None)
        }
    }
}

async fn keys(arg: &ConfigArg, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let Some((config, stores)) = open_stores(arg).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let svc = Arc::new(KeyService::new(stores.keys.clone(), stores.directory.clone()).await?);
    let (audit_log, _writer) = AuditLog::start(stores.audit.clone(), None);
    let record = |action: &str, target: &str, ok: bool| {
        let mut ev = AuditEvent::new(action, if ok { "success" } else { "failure" });
        ev.principal = Some("cli".to_owned());
        ev.target = Some(target.to_owned());
        ev
    };
    let now = tollgate_core::time::now();
    let fail = |e: tollgate_core::error::ApiError| anyhow::anyhow!(e.message);
    match command {
        KeysCommand::Create {
            name,
            user,
            team,
            models,
            expires_in,
            metadata,
            budget_usd,
            budget_period,
            rpm,
            tpm,
            json,
        } => {
            let expires_at = match expires_in {
                Some(d) => {
                    let d = tollgate_core::config::units::parse_duration(&d)
                        .map_err(|e| anyhow::anyhow!(e))?;
                    Some(now + i64::try_from(d.as_secs())?)
                }
                None => None,
            };
            let created = svc
                .create(NewKey {
                    name,
                    user,
                    team,
                    models,
                    expires_at,
                    enabled: true,
                    metadata: metadata
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect(),
                    limits: tollgate_core::store::Limits {
                        budget_usd,
                        budget_period,
                        rpm,
                        tpm,
                    },
                })
                .await;
            let target = created
                .as_ref()
                .map_or("-".to_owned(), |(r, _)| r.id.clone());
            audit_log
                .record(record("key.create", &target, created.is_ok()))
                .await;
            let (created, secret) = created.map_err(fail)?;
            print_secret(&KeyView::from_record(&created, now), &secret, json)?;
        }
        KeysCommand::List { json } => {
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let page = svc
                    .list(&Page {
                        after: after.clone(),
                        limit: 1000,
                    })
                    .await
                    .map_err(fail)?;
                let done = page.len() < 1000;
                after = page.last().map(|k| k.id.clone());
                all.extend(page);
                if done {
                    break;
                }
            }
            let views: Vec<KeyView> = all.iter().map(|k| KeyView::from_record(k, now)).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                println!(
                    "{:<26} {:<20} {:<9} {:<12} {:<12} MODELS",
                    "ID", "NAME", "STATUS", "USER", "TEAM"
                );
                for k in &views {
                    println!(
                        "{:<26} {:<20} {:<9} {:<12} {:<12} {}",
                        k.id,
                        k.name,
                        serde_json::to_value(k.status)?.as_str().unwrap_or("?"),
                        k.user.as_deref().unwrap_or("-"),
                        k.team.as_deref().unwrap_or("-"),
                        if k.models.is_empty() {
                            "*".to_owned()
                        } else {
                            k.models.join(",")
                        }
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let revoked = svc.revoke(&id).await;
            audit_log
                .record(record("key.revoke", &id, revoked.is_ok()))
                .await;
            let key = revoked.map_err(fail)?;
            println!("revoked {}", key.id);
        }
        KeysCommand::Rotate { id, grace, json } => {
            let grace = match grace {
                Some(g) => tollgate_core::config::units::parse_duration(&g)
                    .map_err(|e| anyhow::anyhow!(e))?,
                None => config.keys.rotation_grace,
            };
            let rotated = svc.rotate(&id, grace).await;
            audit_log
                .record(record("key.rotate", &id, rotated.is_ok()))
                .await;
            let (key, secret) = rotated.map_err(fail)?;
            print_secret(&KeyView::from_record(&key, now), &secret, json)?;
        }
        KeysCommand::RotateMaster => {
            // Settle first so a configured key is recognised (and refused) as such.
            svc.settle_master(config.master_key.as_ref().map(|k| k.expose()), &stores.meta)
                .await
                .map_err(fail)?;
            let rotated = svc.rotate_master(stores.meta.as_ref()).await;
            audit_log
                .record(record("master_key.rotate", "master", rotated.is_ok()))
                .await;
            let fresh = rotated.map_err(fail)?;
            println!("{fresh}");
            eprintln!("The new master key is shown only this once; the old one no longer works.");
        }
    }
    audit_log.flush().await;
    Ok(ExitCode::SUCCESS)
}

async fn directory(
    arg: &ConfigArg,
    kind: &str,
    command: DirectoryCommand,
) -> anyhow::Result<ExitCode> {
    use tollgate_core::store::{TeamRecord, UserRecord};
    let Some((_, stores)) = open_stores(arg).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let dir = stores.directory.clone();
    let (audit_log, _writer) = AuditLog::start(stores.audit.clone(), None);
    let now = tollgate_core::time::now();
    let teams = dir.list_teams().await?;
    let users = dir.list_users().await?;
    let (action, target, result): (&str, String, anyhow::Result<()>) = match command {
        DirectoryCommand::List => {
            let out = if kind == "team" {
                serde_json::to_string_pretty(&teams)?
            } else {
                serde_json::to_string_pretty(&users)?
            };
            println!("{out}");
            return Ok(ExitCode::SUCCESS);
        }
        DirectoryCommand::Create {
            id,
            name,
            team,
            tenant,
            email,
            roles,
        } => {
            let name = name.unwrap_or_else(|| id.clone());
            let r = if kind == "team" {
                dir.insert_team(&TeamRecord {
                    id: id.clone(),
                    name,
                    tenant,
                    metadata: Default::default(),
                    roles,
                    limits: Default::default(),
                    created_at: now,
                    updated_at: now,
                })
                .await
            } else {
                if let Some(t) = &team {
                    if !teams.iter().any(|x| &x.id == t) {
                        anyhow::bail!("no team {t:?}: create it first");
                    }
                }
                dir.insert_user(&UserRecord {
                    id: id.clone(),
                    name,
                    email,
                    team,
                    metadata: Default::default(),
                    roles,
                    limits: Default::default(),
                    created_at: now,
                    updated_at: now,
                })
                .await
            };
            ("create", id, r.map_err(anyhow::Error::from))
        }
        DirectoryCommand::SetRoles { id, roles } => {
            let r = if kind == "team" {
                match teams.into_iter().find(|t| t.id == id) {
                    Some(t) => dir
                        .replace_team(&TeamRecord {
                            roles,
                            updated_at: now,
                            ..t
                        })
                        .await
                        .map(|_| ())
                        .map_err(anyhow::Error::from),
                    None => Err(anyhow::anyhow!("no team {id:?}")),
                }
            } else {
                match users.into_iter().find(|u| u.id == id) {
                    Some(u) => dir
                        .replace_user(&UserRecord {
                            roles,
                            updated_at: now,
                            ..u
                        })
                        .await
                        .map(|_| ())
                        .map_err(anyhow::Error::from),
                    None => Err(anyhow::anyhow!("no user {id:?}")),
                }
            };
            ("update", id, r)
        }
        DirectoryCommand::Delete { id } => {
            let r = if kind == "team" {
                dir.delete_team(&id).await
            } else {
                dir.delete_user(&id).await
            };
            let r = match r {
                Ok(true) => Ok(()),
                Ok(false) => Err(anyhow::anyhow!("no {kind} {id:?}")),
                Err(e) => Err(e.into()),
            };
            ("delete", id, r)
        }
    };
    let mut ev = AuditEvent::new(
        &format!("{kind}.{action}"),
        if result.is_ok() { "success" } else { "failure" },
    );
    ev.principal = Some("cli".to_owned());
    ev.target = Some(target.clone());
    audit_log.record(ev).await;
    audit_log.flush().await;
    result?;
    println!("{kind} {target}: {action}d");
    Ok(ExitCode::SUCCESS)
}

async fn spend(arg: &ConfigArg, a: SpendArgs) -> anyhow::Result<ExitCode> {
    use tollgate_core::spend::{build_report, to_csv, SpendParams};
    let Some((_, stores)) = open_stores(arg).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let params = SpendParams {
        group_by: a.group_by,
        since: a.since,
        until: a.until,
        filter_by: a.filter_by,
        filter: a.filter,
        limit: a.limit,
        format: None,
    };
    let q = params.query().map_err(|e| anyhow::anyhow!(e.message))?;
    let report = build_report(&q, stores.ledger.spend(&q).await?);
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&report)?),
        "csv" => print!("{}", to_csv(&report)),
        "table" => {
            let name = report.group_by.as_deref().unwrap_or("total");
            println!(
                "{name:<32} {:>10} {:>14} {:>14} {:>14}",
                "requests", "prompt", "completion", "cost_usd"
            );
            for r in &report.rows {
                println!(
                    "{:<32} {:>10} {:>14} {:>14} {:>14.6}",
                    r.group.as_deref().unwrap_or("-"),
                    r.requests,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.cost_usd
                );
            }
            println!(
                "{:<32} {:>10} {:>14} {:>14} {:>14.6}",
                "total", report.total_requests, "", "", report.total_cost_usd
            );
        }
        other => anyhow::bail!("--format must be table, json or csv, not {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit(arg: &ConfigArg, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let Some((_, stores)) = open_stores(arg).await? else {
        return Ok(ExitCode::FAILURE);
    };
    match command {
        AuditCommand::Verify => match tollgate_core::audit::verify(stores.audit.as_ref()).await? {
            Ok(n) => {
                println!("audit chain intact: {n} records");
                Ok(ExitCode::SUCCESS)
            }
            Err(tamper) => {
                println!("audit chain broken: {tamper}");
                Ok(ExitCode::FAILURE)
            }
        },
        AuditCommand::Export { since, out } => {
            let since_ms = match since.as_deref() {
                None => i64::MIN,
                Some(s) => match tollgate_core::time::parse_rfc3339(s) {
                    Some(secs) => secs.saturating_mul(1000),
                    None => {
                        let d = tollgate_core::config::units::parse_duration(s).map_err(|e| {
                            anyhow::anyhow!("--since: expected RFC 3339 or a duration: {e}")
                        })?;
                        tollgate_core::time::now_ms() - i64::try_from(d.as_millis())?
                    }
                },
            };
            let mut sink: Box<dyn std::io::Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut after = 0;
            loop {
                let page = stores.audit.read_audit(after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for r in page.iter().filter(|r| r.time_ms >= since_ms) {
                    serde_json::to_writer(&mut sink, r)?;
                    sink.write_all(b"\n")?;
                }
            }
            sink.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_secret(key: &KeyView, secret: &str, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"key": key, "secret": secret}))?
        );
    } else {
        println!("id:     {}", key.id);
        println!("name:   {}", key.name);
        println!("secret: {secret}");
        println!("The secret is shown only now; tollgate stores only its hash.");
    }
    Ok(())
}
