//! Logging to stderr, with a filter a reload can change (`log` in the
//! config file; `RUST_LOG` wins over it, as a flag wins over the file).

use anyhow::{Context, Result};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter of a running process.
#[derive(Clone)]
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it stays in force over the file.
    from_env: bool,
}

/// Logs to stderr with `RUST_LOG`, or else `default`.
pub fn init(default: &str) -> Option<LogHandle> {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = env.as_deref().and_then(|v| EnvFilter::try_new(v).ok()).unwrap_or_else(|| EnvFilter::new(default));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry().with(layer).with(fmt).try_init().ok()?;
    Some(LogHandle { handle, from_env: env.is_some() })
}

/// Checks a filter from the config file (before anything is applied).
pub fn parse(filter: &str) -> Result<EnvFilter> {
    EnvFilter::try_new(filter)
        .with_context(|| format!("config `log = {filter:?}` is not a log filter (e.g. \"info\" or \"warn,partybus=debug\")"))
}

impl LogHandle {
    /// Applies the config file's filter (`None`: `default`), unless `RUST_LOG` is set.
    /// Returns whether it changed the filter.
    pub fn apply(&self, filter: Option<&str>, default: &str) -> Result<bool> {
        if self.from_env {
            return Ok(false);
        }
        let text = filter.unwrap_or(default);
        let new = parse(text)?;
        let old = self.handle.with_current(|f| f.to_string()).unwrap_or_default();
        if old == new.to_string() {
            return Ok(false);
        }
        self.handle.reload(new).context("cannot change the log filter")?;
        Ok(true)
    }
}
