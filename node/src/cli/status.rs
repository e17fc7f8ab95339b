//! `partybus status [--control PATH | --config FILE] [--json] [--reload]`:
//! asks a running `partybus node` over its control socket.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::control::protocol::{self, Request, Response};

#[derive(Args)]
pub struct StatusArgs {
    /// The node's control socket (default: the one of a node started with the same --config).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// The node's config file: its `control` key, or the default socket derived from its path.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Make the node re-read its config file (as SIGHUP does); exits 1 if the node refused it.
    #[arg(long)]
    pub reload: bool,
}

/// How long `status` waits for the node.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket named by `--control`, the config file's `control`
/// key (relative to the file), or the default for the config file.
pub fn socket_path(control: Option<&PathBuf>, config: Option<&PathBuf>) -> Result<Option<PathBuf>> {
    if let Some(p) = control {
        return Ok(Some(p.clone()));
    }
    let Some(cfg) = config else { return Ok(None) };
    // Only the `control` key, read leniently: `status --reload` must reach
    // the node even when the rest of the file is broken (the node says what).
    let text = std::fs::read_to_string(cfg).with_context(|| format!("cannot read config file {}", cfg.display()))?;
    let control = text.parse::<toml::Table>().ok().and_then(|t| t.get("control").and_then(|v| v.as_str()).map(PathBuf::from));
    Ok(Some(match control {
        Some(p) if p.is_relative() => cfg.parent().map(|d| d.join(&p)).unwrap_or(p),
        Some(p) => p,
        None => super::control::default_path(cfg),
    }))
}

async fn ask(path: &std::path::Path, req: Request) -> Result<Response> {
    let mut s = tokio::net::UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach a node at the control socket {} (is `partybus node` running, with this --config or --control? \
             as root for the systemd unit?)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    s.write_all(&line).await.context("cannot send the request")?;
    let mut reply = String::new();
    BufReader::new(s.take(protocol::MAX_RESPONSE)).read_line(&mut reply).await.context("cannot read the node's answer")?;
    serde_json::from_str(&reply).with_context(|| format!("the node's answer is not a response: {:?}", reply.trim()))
}

pub async fn run(args: StatusArgs) -> Result<ExitCode> {
    let Some(path) = socket_path(args.control.as_ref(), args.config.as_ref())? else {
        bail!("which node? give --control PATH (the node's --control), or --config FILE (the config file the node was started with)");
    };
    let req = if args.reload { Request::Reload } else { Request::Status };
    let resp = tokio::time::timeout(TIMEOUT, ask(&path, req))
        .await
        .with_context(|| format!("no answer from {} in {TIMEOUT:?}", path.display()))??;
    let mut out = std::io::stdout().lock();
    if !resp.ok {
        let e = resp.error.unwrap_or_else(|| "unknown error".to_owned());
        if args.json {
            writeln!(out, "{}", serde_json::json!({"ok": false, "error": e}))?;
        }
        bail!("the node refused: {e}");
    }
    if let Some(r) = resp.reload {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        } else {
            writeln!(out, "reloaded")?;
            for a in &r.applied {
                writeln!(out, "  applied: {a}")?;
            }
            for a in &r.restart_needed {
                writeln!(out, "  needs a restart: {a}")?;
            }
        }
    } else if let Some(st) = resp.status {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&st)?)?;
        } else {
            write!(out, "{}", human(&st))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else {
        format!("{m}m {s}s")
    }
}

/// The table `partybus status` prints.
pub fn human(st: &protocol::Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let list = |v: &[String]| if v.is_empty() { "-".to_owned() } else { v.join(" ") };
    let _ = writeln!(o, "node      {} ({})", st.name, st.id);
    let _ = writeln!(o, "hood      {}", st.hood);
    let _ = writeln!(o, "port      {} (bound {})   uptime {}", st.port, st.addresses.bound, uptime(st.uptime_secs));
    let _ = writeln!(o, "local     {}", list(&st.addresses.local));
    let _ = writeln!(o, "observed  {}", list(&st.addresses.observed));
    let _ = writeln!(o, "mapped    {}", list(&st.addresses.mapped));
    for (what, c) in [("cert", &st.certificate), ("hood cert", &st.hood_certificate)] {
        if let Some(c) = c {
            let _ = writeln!(o, "{what:<9} serial {}, valid until {} ({} days)", c.serial, c.not_after, c.expires_in_days);
        }
    }
    for w in &st.warnings {
        let _ = writeln!(o, "WARNING   {w}");
    }
    let _ = writeln!(o, "neighbours {}", st.neighbours.len());
    if !st.neighbours.is_empty() {
        let _ = writeln!(
            o,
            "  {:<12} {:<8} {:<22} {:<3} {:<8} {:>8} {:>10} {:>10} {:>9} {:>9} {:>6} {:>7}",
            "NAME", "ID", "ADDRESS", "DIR", "PATH", "RTT", "BYTES IN", "BYTES OUT", "EVTS IN", "EVTS OUT", "QUEUE", "DROPPED"
        );
        for n in &st.neighbours {
            let path = match &n.via {
                Some(via) => format!("via {via}"),
                None => n.path.clone(),
            };
            let fill = if n.queue_limit == 0 { 0.0 } else { n.queue_bytes as f64 * 100.0 / n.queue_limit as f64 };
            let _ = writeln!(
                o,
                "  {:<12} {:<8} {:<22} {:<3} {:<8} {:>6.1}ms {:>10} {:>10} {:>9} {:>9} {:>5.0}% {:>7}",
                n.name,
                &n.id[..n.id.len().min(8)],
                n.addr,
                n.direction,
                path,
                n.rtt_ms,
                bytes(n.bytes_in),
                bytes(n.bytes_out),
                n.events_in,
                n.events_out,
                fill,
                n.dropped
            );
        }
    }
    o
}
