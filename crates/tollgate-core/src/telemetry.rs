//! Logging setup. `tracing` everywhere; JSON or human-readable output chosen by config. The
//! filter can be changed on reload without restarting.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::{LogFormat, LoggingConfig};

/// Changes the log filter of a running process.
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

impl LogHandle {
    pub fn set_level(&self, level: &str) {
        match EnvFilter::try_new(level) {
            Ok(filter) => {
                if let Err(e) = self.0.reload(filter) {
                    tracing::warn!(error = %e, "cannot change log level");
                }
            }
            Err(e) => tracing::warn!(error = %e, level, "invalid log level ignored"),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the config's level.
pub fn init(cfg: &LoggingConfig) -> LogHandle {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_err() {
        // Already installed (tests start several gateways in one process).
    }
    LogHandle(handle)
}
