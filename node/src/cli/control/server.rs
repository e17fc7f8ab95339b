//! The control socket's server: a thin task beside the node. Each client
//! gets one request and one response, within [`CLIENT_TIMEOUT`], a request
//! of at most [`protocol::MAX_REQUEST`] bytes, and at most [`MAX_CLIENTS`]
//! at a time: a local client can neither stall nor flood the node. Status
//! is answered here from the `Bus`; a reload goes to the node's main loop,
//! which owns the reload state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use partybus::Bus;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::protocol::{self, Request, Response};

/// A client has this long to send its request and take the response.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at a time; more wait in the kernel's backlog.
const MAX_CLIENTS: usize = 8;
/// Warn when a certificate expires within this many days.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// A reload asked for over the socket, and where its answer goes.
pub type ReloadRequest = oneshot::Sender<Result<protocol::ReloadOutcome, String>>;

/// A bound control socket, removed when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// Binds `path` (mode 0600). Refuses when a live node answers there;
    /// removes a stale socket file a dead node left behind.
    pub fn bind(path: &Path) -> Result<ControlSocket> {
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("cannot create the folder of the control socket {}", dir.display()))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another node is running with the control socket {} (`partybus status --control {}` shows it); \
                     stop it, or give this node its own socket with --control PATH",
                    path.display(),
                    path.display()
                ),
                Err(_) => {
                    // Nobody listens: a node that died without cleaning up.
                    tracing::info!(path = %path.display(), "removing a stale control socket");
                    std::fs::remove_file(path).with_context(|| format!("cannot remove the stale control socket {}", path.display()))?;
                }
            },
            Ok(_) => bail!("{} exists and is not a socket; remove it or choose another --control PATH", path.display()),
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).with_context(|| format!("cannot create the control socket {}", path.display()))?;
        let sock = ControlSocket { listener, path: path.to_path_buf() };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict the control socket {} to mode 0600", path.display()))?;
        Ok(sock)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until the task is dropped or aborted. `reloads: None`: this
    /// process does not reload (`partybus listen`).
    pub async fn serve(self, bus: Bus, reloads: Option<mpsc::Sender<ReloadRequest>>) {
        let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (bus, reloads) = (bus.clone(), reloads.clone());
            tokio::spawn(async move {
                if tokio::time::timeout(CLIENT_TIMEOUT, serve_one(stream, &bus, &reloads)).await.is_err() {
                    tracing::debug!("control socket: a client took too long; dropped");
                }
                drop(permit);
            });
        }
    }
}

/// Input read after the response at most, so that closing does not reset
/// the connection before the client has read the answer.
const MAX_DRAIN: u64 = 1 << 20;

async fn serve_one(stream: UnixStream, bus: &Bus, reloads: &Option<mpsc::Sender<ReloadRequest>>) {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd.take(protocol::MAX_REQUEST));
    let response = answer(&mut rd, bus, reloads).await;
    reply(wr, response).await;
    // Closing a Unix socket with unread input resets it, and the client
    // would lose the answer (an oversized request): read what is left,
    // bounded in bytes here and in time by the caller's timeout.
    let mut rest = rd.into_inner().into_inner().take(MAX_DRAIN);
    let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
}

async fn answer(
    rd: &mut BufReader<tokio::io::Take<tokio::net::unix::OwnedReadHalf>>,
    bus: &Bus,
    reloads: &Option<mpsc::Sender<ReloadRequest>>,
) -> Response {
    let mut line = String::new();
    match rd.read_line(&mut line).await {
        Ok(_) if !line.ends_with('\n') => Response::error(format!("a request is one JSON line of at most {} bytes", protocol::MAX_REQUEST)),
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(Request::Status) => Response { ok: true, error: None, status: Some(status(bus)), reload: None },
            Ok(Request::Reload) => {
                let (tx, rx) = oneshot::channel();
                let Some(reloads) = reloads else {
                    return Response::error("this process does not reload (only `partybus node` does)");
                };
                if reloads.send(tx).await.is_err() {
                    Response::error("the node is stopping")
                } else {
                    match rx.await {
                        Ok(Ok(outcome)) => Response { ok: true, error: None, status: None, reload: Some(outcome) },
                        Ok(Err(e)) => Response::error(e),
                        Err(_) => Response::error("the node is stopping"),
                    }
                }
            }
            Err(e) => {
                Response::error(format!("bad request {:?}: {e}; expected {{\"cmd\":\"status\"}} or {{\"cmd\":\"reload\"}}", line.trim()))
            }
        },
        Err(e) => Response::error(format!("cannot read the request: {e}")),
    }
}

async fn reply(mut wr: tokio::net::unix::OwnedWriteHalf, response: Response) {
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let _ = wr.write_all(&out).await;
    let _ = wr.shutdown().await;
}

/// Whole days from now until `not_after_unix` (negative: past).
fn days_left(not_after_unix: i64) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    (not_after_unix - now).div_euclid(86_400)
}

fn cert(info: Option<partybus::pki::CertInfo>) -> Option<protocol::Cert> {
    info.map(|c| protocol::Cert {
        subject: c.subject,
        serial: c.serial,
        fingerprint: c.fingerprint,
        not_after: c.not_after,
        expires_in_days: days_left(c.not_after_unix),
    })
}

/// Warnings about certificates expiring within [`EXPIRY_WARNING_DAYS`]
/// (the node logs them at start and daily; `status` shows them).
pub fn expiry_warnings(bus: &Bus) -> Vec<String> {
    let mut out = Vec::new();
    for (what, c, fix) in [
        ("this node's certificate", cert(bus.certificate()), "create a new one with `partybus peer create` and reload (SIGHUP)"),
        ("the hood's CA certificate", cert(bus.hood_certificate()), "the hood needs a new CA before then (a new hood)"),
    ] {
        let Some(c) = c else { continue };
        if c.expires_in_days < EXPIRY_WARNING_DAYS {
            let when = if c.expires_in_days < 0 { "expired".to_owned() } else { format!("expires in {} days", c.expires_in_days) };
            out.push(format!("{what} ({}, serial {}) {when}, on {}: {fix}", c.subject, c.serial, c.not_after));
        }
    }
    out
}

/// The node's status now.
pub fn status(bus: &Bus) -> protocol::Status {
    let neighbours = bus
        .neighbour_stats()
        .into_iter()
        .map(|n| {
            let (path, via) = match n.info.path {
                Some(partybus::NeighbourPath::Direct { .. }) => ("direct", None),
                Some(partybus::NeighbourPath::Relayed { via }) => ("relayed", Some(via.to_string())),
                _ => ("unknown", None),
            };
            protocol::Neighbour {
                name: n.info.name.clone(),
                id: n.info.id.to_hex(),
                addr: n.info.addr.to_string(),
                direction: n.info.direction.to_string(),
                path: path.to_owned(),
                via,
                rtt_ms: (n.rtt.as_secs_f64() * 1e4).round() / 10.0,
                bytes_in: n.bytes_in,
                bytes_out: n.bytes_out,
                events_in: n.events_in,
                events_out: n.events_out,
                queue_bytes: n.queue_bytes,
                queue_limit: n.queue_limit,
                dropped: n.info.dropped,
                cert: n.cert_fingerprint.clone(),
            }
        })
        .collect::<Vec<_>>();
    let strings = |v: Vec<std::net::SocketAddr>| v.into_iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let mut neighbours = neighbours;
    neighbours.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    protocol::Status {
        id: bus.id().to_hex(),
        name: bus.me().name.clone(),
        hood: bus.fingerprint().to_owned(),
        port: bus.port(),
        uptime_secs: bus.uptime().as_secs(),
        addresses: protocol::Addresses {
            bound: bus.local_addr().to_string(),
            local: strings(bus.advertised_addrs()),
            observed: strings(bus.observed_addrs()),
            mapped: strings(bus.mapped_addrs()),
        },
        certificate: cert(bus.certificate()),
        hood_certificate: cert(bus.hood_certificate()),
        warnings: expiry_warnings(bus),
        neighbours,
    }
}
