//! `partybus node`: joins, serves the control socket, reloads on SIGHUP,
//! prints neighbour lines until Ctrl-C/SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use partybus::{Bus, NeighbourEvent};

use super::commands::{neighbour_line, out_line, path_line, ready_line, shutdown_signal};
use super::NodeOpts;

/// `partybus node`: joins, serves the control socket, reloads on SIGHUP,
/// prints neighbour lines until Ctrl-C/SIGTERM.
pub async fn node(opts: NodeOpts, control: Option<std::path::PathBuf>, logs: Option<super::logs::LogHandle>) -> Result<ExitCode> {
    use super::control::server::{self, ControlSocket};
    use super::notify;
    let stop = shutdown_signal();
    let mut hup = reload_signal()?;
    let resolved = opts.resolve()?;
    if let Some(l) = &logs {
        l.apply(resolved.log.as_deref(), "info")?;
    }
    // The socket before joining: a second node on the same socket stops here.
    let control = control.or(resolved.control.clone()).or_else(|| opts.config.as_deref().map(super::control::default_path));
    let socket = control.as_deref().map(ControlSocket::bind).transpose()?;
    let (static_tx, static_rx) = tokio::sync::watch::channel(resolved.connect.clone());
    let cfg = NodeOpts::config_from(resolved.clone(), Some(static_rx))?;
    let bus = Bus::join(cfg).await.context("cannot join the hood")?;
    let mut reloader = super::reload::Reloader::new(opts, resolved, static_tx, logs);
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<server::ReloadRequest>(4);
    let control_task = socket.map(|s| {
        tracing::info!(path = %s.path().display(), "control socket (partybus status --control PATH)");
        tokio::spawn(s.serve(bus.clone(), Some(reload_tx)))
    });
    let mut events = bus.neighbour_events();
    let warn_expiry = |bus: &Bus| {
        for w in server::expiry_warnings(bus) {
            tracing::warn!("{w}");
        }
    };
    // Before the ready line: whoever waits for it finds the warning logged.
    warn_expiry(&bus);
    out_line(&ready_line(&bus));
    notify::ready();
    tokio::pin!(stop);
    let day = Duration::from_secs(24 * 3600);
    let mut daily = tokio::time::interval_at(tokio::time::Instant::now() + day, day);
    // Counted from the events themselves, so each line's count is the
    // neighbour count right after that event.
    let mut count = 0usize;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hup.recv() => {
                let _ = reload(&mut reloader, &bus);
            }
            Some(reply) = reload_rx.recv() => {
                let _ = reply.send(reload(&mut reloader, &bus));
            }
            _ = daily.tick() => warn_expiry(&bus),
            ev = events.recv() => match ev {
                Ok(NeighbourEvent::Found(n)) => {
                    count += 1;
                    out_line(&neighbour_line("found", &n, count, None));
                    if let Some(l) = path_line(&n) {
                        out_line(&l);
                    }
                }
                Ok(NeighbourEvent::Path(n)) => {
                    if let Some(l) = path_line(&n) {
                        out_line(&l);
                    }
                }
                Ok(NeighbourEvent::Lost { info, reason }) => {
                    count = count.saturating_sub(1);
                    out_line(&neighbour_line("lost", &info, count, Some(&reason)));
                }
                // A kind of event this version does not print.
                Ok(_) => count = bus.neighbours().len(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    // Lines were lost; the count need not be.
                    count = bus.neighbours().len();
                    tracing::warn!(missed = n, neighbours = count, "neighbour events missed (printing fell behind)");
                }
                Err(_) => break,
            },
        }
    }
    notify::stopping();
    if let Some(t) = control_task {
        // Dropping the server removes the socket file.
        t.abort();
        let _ = t.await;
    }
    bus.leave().await;
    Ok(ExitCode::SUCCESS)
}

/// A reload (SIGHUP or `status --reload`), told to systemd and logged.
fn reload(reloader: &mut super::reload::Reloader, bus: &Bus) -> Result<super::control::protocol::ReloadOutcome, String> {
    super::notify::reloading();
    let result = reloader.reload(bus);
    match &result {
        Ok(o) => {
            tracing::info!(applied = ?o.applied, "config reloaded");
            for r in &o.restart_needed {
                tracing::warn!("config reload: {r} takes effect only at a restart");
            }
        }
        Err(e) => tracing::error!("config reload refused, the config in force stays: {e:#}"),
    }
    super::notify::ready();
    if let Err(e) = &result {
        super::notify::status(&format!("in the hood; the last reload was refused: {e:#}"));
    }
    result.map_err(|e| format!("{e:#}"))
}

/// SIGHUP, installed now (before "ready": see [`shutdown_signal`]).
#[cfg(unix)]
fn reload_signal() -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("cannot install the SIGHUP handler")
}
