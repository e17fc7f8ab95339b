//! `partybus listen|emit|dht`, and what `partybus node` (`node_cmd`) shares with them.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use partybus::{Bus, NeighbourEvent, NeighbourInfo};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use super::NodeOpts;

/// Installs the Ctrl-C and SIGTERM handlers now and returns a future that
/// resolves on either. Call it before printing "ready": a handler that is
/// only installed when first polled leaves a window in which SIGTERM kills
/// the process with the default action (exit 143) instead of a clean leave.
pub(super) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt()).ok();
        let term = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(int) => {}
                _ = wait(term) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn out(v: serde_json::Value) {
    out_line(&v.to_string());
}

pub(super) fn out_line(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// One line of `partybus node`: keys in this order (the order README.md
/// documents; alphabetical, as the first versions printed them).
#[derive(serde::Serialize)]
struct NeighbourLine<'a> {
    addr: String,
    count: usize,
    direction: String,
    id: String,
    name: &'a str,
    neighbour: &'a str,
    /// Lost lines only: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

pub(super) fn neighbour_line(kind: &str, n: &NeighbourInfo, count: usize, reason: Option<&str>) -> String {
    let line = NeighbourLine {
        addr: n.addr.to_string(),
        count,
        direction: n.direction.to_string(),
        id: n.id.to_hex(),
        name: &n.name,
        neighbour: kind,
        reason,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// `{"path":"direct"|"relayed","id":...,"name":...,"addr":...,"via":...}`: a
/// neighbour's network path (printed when it is found and when it changes).
pub(super) fn path_line(n: &NeighbourInfo) -> Option<String> {
    #[derive(serde::Serialize)]
    struct PathLine<'a> {
        path: &'a str,
        id: String,
        name: &'a str,
        /// Where its packets go: its address, or the relay's.
        addr: String,
        /// The relay, for a relayed path.
        via: Option<String>,
    }
    let (path, via) = match n.path? {
        partybus::NeighbourPath::Direct { .. } => ("direct", None),
        partybus::NeighbourPath::Relayed { via } => ("relayed", Some(via.to_string())),
        _ => return None,
    };
    let line = PathLine { path, id: n.id.to_hex(), name: &n.name, addr: n.addr.to_string(), via };
    serde_json::to_string(&line).ok()
}

/// The first line of `partybus node`.
pub(super) fn ready_line(bus: &Bus) -> String {
    #[derive(serde::Serialize)]
    struct Ready<'a> {
        fingerprint: &'a str,
        id: String,
        name: &'a str,
        port: u16,
    }
    #[derive(serde::Serialize)]
    struct Line<'a> {
        ready: Ready<'a>,
    }
    let line = Line { ready: Ready { fingerprint: bus.fingerprint(), id: bus.id().to_hex(), name: &bus.me().name, port: bus.port() } };
    serde_json::to_string(&line).unwrap_or_default()
}

async fn join(opts: &NodeOpts) -> Result<Bus> {
    let cfg = opts.to_config()?;
    Bus::join(cfg).await.context("cannot join the hood")
}

pub async fn listen(opts: NodeOpts, selectors: Vec<String>, paths: bool, control: Option<std::path::PathBuf>) -> Result<ExitCode> {
    // Check selectors before joining: a typo should not cost a handshake.
    for s in &selectors {
        partybus::Selector::new(s).with_context(|| format!("bad selector {s:?}"))?;
    }
    let stop = shutdown_signal();
    let socket = control.as_deref().map(super::control::server::ControlSocket::bind).transpose()?;
    let bus = join(&opts).await?;
    let control_task = socket.map(|s| tokio::spawn(s.serve(bus.clone(), None)));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<partybus::Event>(4096);
    let mut subs = Vec::new();
    let parsed: Vec<partybus::Selector> = selectors.iter().map(|s| partybus::Selector::new(s)).collect::<Result<_, _>>()?;
    for (i, s) in selectors.iter().enumerate() {
        let mut sub = bus.subscribe(s)?;
        let tx = tx.clone();
        // An event matching several selectors is printed once: by the
        // first selector (in command-line order) that matches it.
        let earlier = parsed[..i].to_vec();
        subs.push(tokio::spawn(async move {
            while let Some(ev) = sub.recv().await {
                if earlier.iter().any(|e| e.matches(ev.name())) {
                    continue;
                }
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    tokio::pin!(stop);
    let mut neighbours = bus.neighbour_events();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            n = neighbours.recv(), if paths => {
                match n {
                    Ok(NeighbourEvent::Found(n) | NeighbourEvent::Path(n)) => {
                        if let Some(l) = path_line(&n) {
                            out_line(&l);
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                // Keys in the documented order (event, source, payload); the
                // payload is transcoded straight to text (bounded memory,
                // whatever its shape: `payload::write_json`).
                let src = ev.source();
                let mut line = Vec::with_capacity(64 + ev.name().len() + 2 * ev.raw().len());
                line.extend_from_slice(b"{\"event\":");
                let _ = serde_json::to_writer(&mut line, ev.name());
                let _ = write!(line, ",\"source\":{{\"id\":\"{}\",\"name\":", src.id.to_hex());
                let _ = serde_json::to_writer(&mut line, &src.name);
                line.extend_from_slice(b"},\"payload\":");
                let at = line.len();
                if partybus::payload::write_json(ev.raw(), &mut line).is_err() {
                    use base64::Engine as _;
                    line.truncate(at);
                    let _ = write!(line, "{{\"$raw\":\"{}\"}}", base64::engine::general_purpose::STANDARD.encode(ev.raw()));
                }
                line.push(b'}');
                out_line(&String::from_utf8_lossy(&line));
            }
        }
    }
    if let Some(t) = control_task {
        t.abort();
        let _ = t.await;
    }
    bus.leave().await;
    for s in subs {
        s.abort();
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct EmitArgs {
    #[command(flatten)]
    pub node: NodeOpts,
    /// Event name.
    pub event: String,
    /// JSON payload (default null), or '-' to read one JSON payload per stdin line.
    pub json: Option<String>,
    /// Wait until at least N non-spy listeners of EVENT are present.
    #[arg(long, value_name = "N")]
    pub wait_listeners: Option<usize>,
    /// How long to wait for listeners (or, without --wait-listeners, for a first neighbour).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
}

/// How long the neighbour set, the handshakes under way and the listener
/// count of the event must stay unchanged before `emit` (without
/// `--wait-listeners`) counts them as settled; at least four round trips
/// of the slowest neighbour.
const SETTLE_QUIET: Duration = Duration::from_millis(200);
/// The longest `emit` waits for that after its first neighbour.
const SETTLE_MAX: Duration = Duration::from_secs(3);
/// How often the handshake counters are sampled while settling.
const SETTLE_TICK: Duration = Duration::from_millis(10);

/// Waits until nothing that changes whom an event reaches has changed for a
/// while, or until `deadline`: no neighbour found or lost, no handshake
/// started or finished (a neighbour we were told about through gossip, or
/// one dialling us after it heard of us), no change in the count of
/// listeners of `event`, for [`SETTLE_QUIET`] or four round trips to the
/// slowest neighbour, whichever is longer. A neighbour sends its
/// subscriptions first thing on a new connection, so once the neighbour set
/// is quiet for that long, their subscriptions have arrived.
///
/// The bus offers no direct signal for "this neighbour's subscriptions have
/// arrived" or "no peer heard of through gossip is still to be dialled", so
/// this is a condition on what it does offer, bounded by `deadline`.
async fn settle(bus: &Bus, event: &str, deadline: tokio::time::Instant) -> Result<()> {
    let mut listeners = bus.observe_listener_count(event)?;
    let mut neighbours = bus.neighbour_count();
    let handshakes = || {
        let s = bus.conn_stats();
        (s.dials, s.dials_ok, s.dials_timed_out, s.dials_abandoned, s.accepts, s.accepts_ok, s.accepts_timed_out, s.activated, s.duplicates)
    };
    let mut seen = handshakes();
    let mut last_change = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        let slowest = bus.neighbours().iter().filter_map(|n| bus.path(n.id)).map(|p| p.rtt).max().unwrap_or_default();
        if now >= deadline || now.duration_since(last_change) >= SETTLE_QUIET.max(slowest * 4) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.min(now + SETTLE_TICK)) => {}
            r = listeners.changed() => match r {
                Ok(()) => last_change = tokio::time::Instant::now(),
                Err(_) => return Ok(()), // the node is stopping
            },
            r = neighbours.changed() => match r {
                Ok(()) => last_change = tokio::time::Instant::now(),
                Err(_) => return Ok(()),
            },
        }
        let h = handshakes();
        if h != seen {
            seen = h;
            last_change = tokio::time::Instant::now();
        }
    }
}

pub async fn emit(args: EmitArgs) -> Result<ExitCode> {
    partybus::name::validate_name(&args.event).with_context(|| format!("bad event name {:?}", args.event))?;
    let single = match args.json.as_deref() {
        Some("-") => None,
        Some(text) => Some(serde_json::from_str::<serde_json::Value>(text).with_context(|| format!("payload {text:?} is not JSON"))?),
        None => Some(serde_json::Value::Null),
    };
    let bus = join(&args.node).await?;
    let mut timed_out = false;
    match args.wait_listeners {
        Some(n) => {
            let mut rx = bus.observe_listener_count(&args.event)?;
            if tokio::time::timeout(args.timeout, rx.wait_for(|c| *c >= n)).await.is_err() {
                timed_out = true;
                eprintln!(
                    "partybus: {} listener(s) of {:?} after {:?}, wanted {n}; emitting anyway",
                    *rx.borrow(),
                    args.event,
                    args.timeout
                );
            }
        }
        None => {
            // Give discovery a chance: wait for a first neighbour, then until
            // the mesh around us and the listener count have settled.
            let deadline = tokio::time::Instant::now() + args.timeout;
            if tokio::time::timeout(args.timeout, bus.wait_neighbours(1)).await.is_ok() {
                settle(&bus, &args.event, deadline.min(tokio::time::Instant::now() + SETTLE_MAX)).await?;
            } else {
                // Only this process's own listeners (none) can be reached: a
                // script must not take that for success.
                timed_out = true;
                eprintln!(
                    "partybus: no neighbour found within {:?}; emitting anyway (reaches no one). \
                     Check --connect / --dht / --mdns and that a node of the hood is running, or raise --timeout",
                    args.timeout
                );
            }
        }
    }
    let result = async {
        match single {
            Some(v) => {
                let payload = partybus::payload::from_json(&v)?;
                let n = bus.emit_raw(&args.event, payload.into()).await?;
                out(json!(n));
            }
            None => {
                let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
                let mut line_no = 0;
                while let Some(line) = lines.next_line().await.context("cannot read stdin")? {
                    line_no += 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("stdin line {line_no} is not JSON"))?;
                    let payload = partybus::payload::from_json(&v)?;
                    let n = bus.emit_raw(&args.event, payload.into()).await?;
                    out(json!(n));
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    bus.leave().await;
    result?;
    Ok(if timed_out { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

#[derive(Args)]
pub struct DhtArgs {
    /// TCP port of the DHT; the relay serves on the same UDP port number.
    #[arg(long, default_value_t = 4816)]
    pub port: u16,
    /// Address to listen on (default all IPv4 interfaces).
    #[arg(long, value_name = "IP")]
    pub bind: Option<std::net::IpAddr>,
    /// Other DHT nodes to join (repeatable).
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Vec<String>,
    /// Keep non-global addresses (labs, private WANs).
    #[arg(long)]
    pub allow_non_global: bool,
    /// Do not serve a relay (default: an open relay on UDP, at the DHT's port number).
    #[arg(long, conflicts_with = "relay_hoods")]
    pub no_relay: bool,
    /// Relay only for members of this hood (repeatable): its fingerprint, 64 hex digits
    /// (`partybus cert show HOOD.crt`). Default: any client.
    #[arg(long = "relay-hood", value_name = "FINGERPRINT", value_parser = super::relay_opts::parse_fingerprint)]
    pub relay_hoods: Vec<String>,
    #[command(flatten)]
    pub relay_limits: super::relay_opts::RelayLimitArgs,
}

impl DhtArgs {
    /// The relay to serve, `None` with `--no-relay`.
    fn relay_config(&self) -> Option<partybus::RelayConfig> {
        if self.no_relay {
            return None;
        }
        let policy =
            if self.relay_hoods.is_empty() { partybus::RelayPolicy::Open } else { partybus::RelayPolicy::Hoods(self.relay_hoods.clone()) };
        Some(self.relay_limits.apply(partybus::RelayConfig { policy, ..Default::default() }))
    }
}

pub async fn dht(args: DhtArgs) -> Result<ExitCode> {
    use partybus::discovery::{dht, StopSignal};
    let relay_cfg = args.relay_config();
    let (handle, stop) = StopSignal::new();
    let node = dht::DhtNode::bind(dht::DhtNodeOptions {
        port: args.port,
        bootstrap: args.bootstrap,
        allow_non_global: args.allow_non_global,
        listen_ip: args.bind,
    })
    .await
    .context("cannot start the DHT node")?;
    // The relay: UDP, the DHT's address and port number (a member given
    // `--dht HOST:PORT` may use HOST:PORT as its relay too).
    let cancel = tokio_util::sync::CancellationToken::new();
    let relay = match relay_cfg {
        None => None,
        Some(cfg) => {
            let ip = args.bind.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
            let port = node.local_addr().map_or(args.port, |a| a.port());
            let socket = tokio::net::UdpSocket::bind((ip, port)).await.with_context(|| {
                format!("cannot serve the relay on UDP {ip}:{port} (the DHT's port number); free it, or run with --no-relay")
            })?;
            Some(partybus::RelayService::spawn(socket, cfg, cancel.clone()).context("cannot start the relay")?)
        }
    };
    let signal = shutdown_signal();
    out(json!({"ready": {
        "peer_id": node.peer_id().to_string(),
        "addrs": node.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "relay": relay.as_ref().map(|r| r.local_addr().to_string()),
    }}));
    let run = tokio::spawn(node.run(stop));
    signal.await;
    handle.stop();
    cancel.cancel();
    if let Some(r) = relay {
        r.stopped().await;
    }
    match run.await {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => bail!("DHT node failed: {e}"),
        Err(e) => bail!("DHT node task failed: {e}"),
    }
}
