//! One connection's task, from the end of its QUIC handshake to its close:
//! the hellos, then (as the mesh decides) its writer and reader, then its
//! teardown. It reports to the actor and takes the actor's commands; it
//! calls no other task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::errors::HelloError;
use super::inbox::Msg;
use super::link::{ConnCmd, ConnCtl, LEAVE_FLUSH};
use super::proto::{ConnId, PeerHello, ReaderEnd, Teardown};
use super::stream::{run_readers, run_writer};
use crate::id::NodeId;
use crate::metrics::Counters;
use crate::path::keys::is_relay_key;
use crate::peers::canonical;
use crate::relay::wire::Token;
use crate::shared::Inner;
use crate::wire::{self, close, Frame, FrameDecoder, Hello};

/// Runs connection `id` after its QUIC handshake; `dial` is our number for
/// it (0 when accepted). `cmds` ends when the actor drops it (leave).
pub(crate) async fn run(inner: Arc<Inner>, id: ConnId, conn: quinn::Connection, dial: u64, mut cmds: mpsc::UnboundedReceiver<ConnCmd>) {
    let remote = canonical(conn.remote_address());
    let hello = match tokio::time::timeout(inner.settings.handshake_timeout, exchange_hellos(&inner, &conn, remote, dial)).await {
        Ok(Ok(h)) => h,
        res => {
            let e = res.unwrap_or(Err(HelloError::TimedOut)).err().expect("not Ok");
            if e.is_mismatch() {
                Counters::add(&inner.plane.counters.hello_version, 1);
                warn!(%remote, error = %e, "protocol mismatch");
                conn.close(close::VERSION.into(), e.to_string().as_bytes());
            } else if e.is_misbehaviour() {
                warn!(%remote, error = %e, "hello refused");
                conn.close(close::PROTOCOL.into(), b"unproven node id");
            } else {
                Counters::add(&inner.plane.counters.hello_other, 1);
                debug!(%remote, error = %e, "hello failed");
                conn.close(close::PROTOCOL.into(), b"hello failed");
            }
            inner.report(Msg::HelloFailed { conn: id }).await;
            return;
        }
    };
    // A revocation list applied while this handshake went on (the verifier
    // saw the older list): the actor's sweep may have missed it.
    if crate::tls::peer_revoked(&conn, &inner.revoked) {
        warn!(%remote, name = %crate::tls::peer_cert_name(&conn), "certificate revoked: closing the connection");
        conn.close(close::REVOKED.into(), b"certificate revoked");
        inner.report(Msg::HelloFailed { conn: id }).await;
        return;
    }
    let Hellos { send, express_send, recv, express_recv, hello } = hello;
    // The connection's paths: probe token, the peer's relays and addresses.
    let token = probe_token(&conn);
    inner.paths.run(|p| p.add_conn(remote, token, &hello.relays, &hello.addrs, std::time::Instant::now()));
    let _paths = PathGuard { inner: inner.clone(), key: remote, token };
    let (ctl, writer_alive) = ConnCtl::new();
    let ctl = Arc::new(ctl);
    let addrs = inner.paths.book.join(hello.addrs, &hello.relays);
    let peer_hello = PeerHello { id: hello.id, addrs, observed: hello.observed, dial: hello.dial };
    let name = crate::tls::peer_cert_name(&conn);
    inner.report(Msg::Hello { conn: id, hello: peer_hello, name, ctl: ctl.clone() }).await;

    let start = match cmds.recv().await {
        Some(ConnCmd::Start(s)) => s,
        Some(ConnCmd::Close { code, reason }) => return conn.close(code.into(), reason),
        _ => return conn.close(close::GOODBYE.into(), b"leaving"),
    };
    let mut writer = {
        let (ctl, conn, queue, inner2) = (ctl.clone(), conn.clone(), start.queue, inner.clone());
        let counters = inner.plane.counters.clone();
        inner.spawn_conn(async move {
            // Dropped with the task, even one aborted before it first ran.
            let _alive = writer_alive;
            run_writer(inner2, send, express_send, queue, ctl, conn, counters).await
        })
    };
    // Both lanes' readers drop the events the peer may not emit.
    let perms = crate::perms::PeerPerms::of_conn(&conn);
    let end = run_readers(&inner, id, &start.info, recv, express_recv, &start.drain, perms).await;
    if let ReaderEnd::Protocol(e) = &end {
        warn!(peer = %hello.id.short(), name = %start.info.name, addr = %remote, error = %e, "peer broke the protocol; disconnecting");
        conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
    }
    inner.report(Msg::ReaderEnded { conn: id, end }).await;

    match cmds.recv().await {
        Some(ConnCmd::Teardown(Teardown::Retired)) => {
            // Both sides are done with this stream; the writer ends once its
            // retire is acknowledged (bounded), then close quietly.
            let _ = tokio::time::timeout(Duration::from_secs(3), &mut writer).await;
            conn.close(close::DUPLICATE.into(), b"duplicate");
        }
        Some(ConnCmd::Teardown(Teardown::Lost { flush, protocol })) => {
            if flush {
                // We leave while the peer was switching away from this
                // connection. It still reads here until we end our stream, and
                // leave() has finished our queue: let the writer send what
                // emit counted (leave bounds its own wait).
                let _ = tokio::time::timeout(LEAVE_FLUSH, &mut writer).await;
            }
            writer.abort();
            if !protocol {
                conn.close(close::GOODBYE.into(), b"bye");
            }
        }
        _ => writer.abort(),
    }
}

/// A token only the two ends of `conn` know (from its TLS session), for path probes.
fn probe_token(conn: &quinn::Connection) -> Token {
    let mut t = [0u8; 16];
    if conn.export_keying_material(&mut t, b"partybus path probe", b"").is_err() {
        // Cannot happen after a TLS 1.3 handshake; a random token only stops probes working.
        t = rand::random();
    }
    t
}

/// Forgets the connection's paths when its task ends, however it ends.
struct PathGuard {
    inner: Arc<Inner>,
    key: SocketAddr,
    token: Token,
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        let inner = &self.inner;
        inner.paths.run(|p| p.remove_conn(self.key, self.token, std::time::Instant::now()));
    }
}

/// A connection's streams after the hellos: ours (main, and express if
/// we send small events apart) and the peer's, with the decoders that read
/// the peer's preambles.
struct Hellos {
    send: quinn::SendStream,
    express_send: Option<quinn::SendStream>,
    recv: (quinn::RecvStream, FrameDecoder),
    express_recv: Option<(quinn::RecvStream, FrameDecoder)>,
    hello: Hello,
}

/// Sends our hello and reads the peer's; opens our express stream and
/// accepts the peer's (each side says in its hello whether it has one).
async fn exchange_hellos(inner: &Inner, conn: &quinn::Connection, remote: SocketAddr, dial: u64) -> Result<Hellos, HelloError> {
    // A relayed connection's remote is a relay key: nothing the peer could use.
    let observed = if is_relay_key(remote) { SocketAddr::from(([0, 0, 0, 0], 0)) } else { remote };
    let express = inner.settings.express_max > 0;
    let mut hello_out = Hello {
        id: inner.id,
        nonce: inner.id_nonce,
        port: inner.local_addr.port(),
        addrs: inner.punch_addrs(),
        relays: inner.my_routes(),
        observed,
        dial,
        express,
    };
    hello_out.bound();
    let mut send = conn.open_uni().await?;
    let mut buf = BytesMut::new();
    wire::put_preamble(&mut buf);
    wire::put_frame(&mut buf, &Frame::Hello(hello_out));
    send.write_all(&buf).await?;
    // Opened second, so the peer accepts it second; the preamble makes it
    // known to the peer at once.
    let express_send = if express {
        let mut x = conn.open_uni().await?;
        let mut buf = BytesMut::new();
        wire::put_preamble(&mut buf);
        x.write_all(&buf).await?;
        Some(x)
    } else {
        None
    };
    // One limit for both of the peer's streams, read once: a reload in
    // between must not give them different ones.
    let max_frame = inner.settings.max_event_size() + wire::FRAME_OVERHEAD;
    let mut recv = conn.accept_uni().await?;
    let mut dec = FrameDecoder::new(wire::MAX_HELLO);
    let hello = loop {
        if let Some(body) = dec.next_frame()? {
            match wire::parse(&body)? {
                Frame::Hello(mut h) => {
                    // Ids are bound to the certificate's name: nobody can
                    // pass for another node (and take its traffic).
                    let name = crate::tls::peer_cert_name(conn);
                    if NodeId::bound(&name, &h.nonce) != h.id {
                        return Err(HelloError::Unproven { claimed: h.id, name });
                    }
                    h.bound();
                    dec.set_max_frame(max_frame);
                    break h;
                }
                _ => return Err(HelloError::NotHello),
            }
        }
        match recv.read_chunk(64 * 1024, true).await? {
            None => return Err(HelloError::StreamEnded),
            Some(chunk) => dec.push(chunk.bytes),
        }
    };
    // Its preamble is checked by the reader, like the main stream's.
    let express_recv = if hello.express { Some((conn.accept_uni().await?, FrameDecoder::new(max_frame))) } else { None };
    Ok(Hellos { send, express_send, recv: (recv, dec), express_recv, hello })
}
