//! The QUIC endpoint's two ways in: the accept loop and one dial attempt.
//! Each hands the connection to its task ([`super::conn::run`]) and reports
//! to the actor.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use tracing::{debug, warn};

use super::admission::{Admission, Admit};
use super::conn;
use super::inbox::Msg;
use super::proto::{Attempt, Dialled};
use crate::metrics::Handshake;
use crate::peers::{canonical, DialFailure};
use crate::ratelog::{RateLog, LOG_EVERY};
use crate::shared::Inner;

/// Incoming handshakes that failed, logged once per kind per interval with a
/// count: anyone can start handshakes, and each would be a warning.
type Complaints = Arc<Mutex<RateLog<&'static str>>>;

fn complain(log: &Complaints, kind: &'static str, remote: SocketAddr, reason: &dyn std::fmt::Display) {
    let due = log.lock().unwrap_or_else(|p| p.into_inner()).note(kind, 1, std::time::Instant::now());
    if let Some(count) = due {
        warn!(%remote, %reason, count, "{kind} (of this kind: {count} since the last such line, logged at most every {LOG_EVERY:?})");
    }
}

/// Ends an admitted handshake's share of the budget when dropped.
struct Admitted {
    admission: Arc<Mutex<Admission>>,
    ip: std::net::IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.lock().unwrap_or_else(|p| p.into_inner()).done(self.ip);
    }
}

/// Accepts incoming connections until the endpoint closes.
pub(crate) async fn accept_loop(inner: Arc<Inner>, endpoint: quinn::Endpoint) {
    let admission = Arc::new(Mutex::new(Admission::default()));
    let complaints: Complaints = Arc::new(Mutex::new(RateLog::new(LOG_EVERY)));
    while let Some(incoming) = endpoint.accept().await {
        if inner.is_leaving() {
            incoming.refuse();
            continue;
        }
        let remote = canonical(incoming.remote_address());
        let verdict = admission.lock().unwrap_or_else(|p| p.into_inner()).admit(
            remote.ip(),
            incoming.remote_address_validated(),
            incoming.may_retry(),
        );
        match verdict {
            Admit::Accept => {}
            Admit::Retry => {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                continue;
            }
            Admit::Refuse => {
                complain(&complaints, "incoming handshake refused: too many in progress", remote, &"busy");
                incoming.refuse();
                continue;
            }
        }
        let admitted = Admitted { admission: admission.clone(), ip: remote.ip() };
        let complaints = complaints.clone();
        let id = inner.next_conn();
        let connecting = if remote.ip().is_loopback() { incoming.accept_with(inner.server_on_host.clone()) } else { incoming.accept() };
        // Reported before the handshake goes on, so a second dialer of this
        // peer knows at once to wait for it.
        inner.report(Msg::IncomingStarted { conn: id, addr: remote }).await;
        let me = inner.clone();
        inner.spawn_conn(async move {
            let connecting = async move { connecting?.await };
            let counters = &me.plane.counters;
            let handshake = tokio::time::timeout(me.settings.handshake_timeout, connecting).await;
            drop(admitted);
            let conn = match handshake {
                Ok(Ok(c)) => {
                    counters.handshake(true, Handshake::Ok);
                    c
                }
                Ok(Err(e)) => {
                    counters.handshake(true, Handshake::of_error(&e));
                    // The dialer's application closed the handshake: a second
                    // dialer giving its dial up because ours reached it first,
                    // or a node leaving. Nothing to warn about.
                    if matches!(&e, quinn::ConnectionError::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR) {
                        debug!(%remote, "the dialer gave its handshake up");
                    } else {
                        complain(&complaints, "refused incoming connection", remote, &e);
                    }
                    me.report(Msg::IncomingDone { conn: id, result: Err(DialFailure::Refused) }).await;
                    return;
                }
                Err(_) => {
                    counters.handshake(true, Handshake::TimedOut);
                    complain(&complaints, "incoming handshake timed out", remote, &"no answer");
                    me.report(Msg::IncomingDone { conn: id, result: Err(DialFailure::TimedOut) }).await;
                    return;
                }
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            me.report(Msg::IncomingDone { conn: id, result: Ok((conn.clone(), tx)) }).await;
            conn::run(me, id, conn, 0, rx).await;
        });
    }
}

/// One dial attempt: the QUIC handshake to `addr` within the handshake
/// timeout, then (connected) the connection's task. `abandon` gives the
/// handshake up (the peer's own dial reached us).
pub(crate) async fn dial(inner: Arc<Inner>, attempt: Attempt, addr: SocketAddr, abandon: oneshot::Receiver<()>) {
    let abandoned = async {
        // A dropped sender is no order to abandon.
        if abandon.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = connect(&inner, addr) => r,
        () = abandoned => return,
    };
    match result {
        Ok(conn) => {
            let dialled = Dialled { conn: inner.next_conn(), dial: inner.next_dial(), remote: conn.remote_address() };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            inner.report(Msg::Dialled { attempt, result: Ok((dialled, conn.clone(), tx)) }).await;
            conn::run(inner, dialled.conn, conn, dialled.dial, rx).await;
        }
        Err(failure) => inner.report(Msg::Dialled { attempt, result: Err(failure) }).await,
    }
}

async fn connect(inner: &Inner, addr: SocketAddr) -> Result<quinn::Connection, DialFailure> {
    let endpoint = inner.endpoint().ok_or(DialFailure::Refused)?;
    let connecting = if addr.ip().is_loopback() {
        endpoint.connect_with(inner.client_on_host.clone(), addr, "partybus")
    } else {
        endpoint.connect(addr, "partybus")
    };
    let connecting = connecting.map_err(|e| {
        debug!(%addr, error = %e, "cannot dial");
        DialFailure::Refused
    })?;
    let counters = &inner.plane.counters;
    match tokio::time::timeout(inner.settings.handshake_timeout, connecting).await {
        Ok(Ok(c)) => {
            counters.handshake(false, Handshake::Ok);
            Ok(c)
        }
        Ok(Err(e)) => {
            counters.handshake(false, Handshake::of_error(&e));
            // TLS refusals are worth a warning: they name the reason.
            if matches!(e, quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::ConnectionClosed(_)) {
                warn!(%addr, reason = %e, "connection refused");
            } else {
                debug!(%addr, error = %e, "dial failed");
            }
            Err(if matches!(e, quinn::ConnectionError::TimedOut) { DialFailure::TimedOut } else { DialFailure::Refused })
        }
        Err(_) => {
            counters.handshake(false, Handshake::TimedOut);
            debug!(%addr, "handshake timed out");
            Err(DialFailure::TimedOut)
        }
    }
}
