//! QUIC endpoint configuration: mutual TLS against the hood CA (the
//! verifiers live in `partybus-pki`), ALPN `partybus/1`, and transport
//! settings.

use std::sync::Arc;

use partybus_pki::RevokedSet;

use crate::config::Config;
use crate::identity::SwapIdentity;
use crate::wire::ALPN;

/// Errors building the QUIC configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Pki(#[from] partybus_pki::PkiError),
    #[error("TLS configuration is not usable for QUIC: {0}")]
    Quic(String),
    #[error(transparent)]
    Identity(#[from] crate::identity::RotateError),
}

/// Transport settings. `peer_on_host`: for a connection to a peer on this
/// host (loopback), whose path MTU is known: use [`loopback_mtu`] from the
/// first packet instead of probing up from 1200 after every handshake. Other
/// paths keep discovery, up to quinn's default bound of 1452 bytes (a VPN or
/// PPPoE link may carry less).
pub fn transport(cfg: &Config, peer_on_host: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(cfg.keep_alive));
    // An idle timeout above QUIC's limit is clamped to the limit.
    let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout).unwrap_or(quinn::VarInt::MAX.into());
    t.max_idle_timeout(Some(idle));
    // We use one unidirectional stream per direction and nothing else: a
    // peer cannot make us hold more.
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(4u32.into());
    t.datagram_receive_buffer_size(None);
    // The chosen controller, which does not take a hole punch's lost first
    // flight for congestion.
    t.congestion_controller_factory(Arc::new(crate::congestion::PunchTolerant::new(cfg.congestion)));
    // Flow control sized for the bandwidth-delay product of a long path.
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(CONNECTION_WINDOW.into());
    t.send_window(u64::from(SEND_WINDOW));
    if peer_on_host {
        t.initial_mtu(loopback_mtu());
    }
    Arc::new(t)
}

/// Bytes one stream may have in flight to us, counted from the first byte
/// not yet read in order. A sender can never have more than its receiver's
/// window outstanding, so this caps a connection's rate at window / RTT:
/// quinn's default of 1.25 MB held an 80 ms path to ~15 MB/s (13.1 MB/s
/// measured, issue 16) and a 200 ms one to ~6 MB/s. 10 MB is the
/// bandwidth-delay product of 50 MB/s over 200 ms; on a lossy path a lost
/// packet holds the window's start back for another round trip while later
/// data keeps arriving, so it takes about twice that to keep the rate. It is
/// also what a peer can make us buffer on a stream we do not read fast enough.
const STREAM_WINDOW: u32 = 16 << 20;
/// All streams of a connection together (quinn's default is unlimited):
/// the data stream's window plus room for the others' control frames, so
/// that what a neighbour can make us buffer stays bounded per neighbour
/// whatever streams it opens.
const CONNECTION_WINDOW: u32 = STREAM_WINDOW + (2 << 20);
/// Bytes quinn holds for us unacknowledged or unsent on a connection
/// (quinn's default: 10 MB). Sending faster than window / RTT is impossible,
/// so it is the same product.
const SEND_WINDOW: u32 = STREAM_WINDOW;

/// The UDP payload size for peers on this host.
///
/// Loopback carries 64 KiB datagrams, and every QUIC packet costs the same
/// fixed work (header protection, an AEAD call, frame and ACK bookkeeping)
/// whatever its size, so bigger packets move more bytes per CPU cycle: on the
/// 2-core bench machines, 6500-byte packets instead of 1452 took 1 KiB events
/// from ~390 to ~600-740 MB/s and 64 KiB events from ~500 to ~700-1100 MB/s
/// (see BENCHMARKS.md). The size is bounded by segmentation offload: quinn
/// 0.11 hands the kernel up to `GSO_SEGMENTS` (10) packets in one GSO send, and
/// one send must fit in one IP datagram (65,535 bytes with the IPv6 and UDP
/// headers). 8 KiB packets (10 of them: 80 KiB per send) measured worse than
/// 1452, and 16 KiB ones never finished a handshake; we did not trace what
/// the kernel answered, but both break that bound. It is also bounded by the
/// loopback interface's own MTU, in case an operator lowered it.
pub fn loopback_mtu() -> u16 {
    static MTU: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *MTU.get_or_init(|| {
        let lo = std::fs::read_to_string("/sys/class/net/lo/mtu").ok().and_then(|s| s.trim().parse::<u32>().ok());
        mtu_for(lo)
    })
}

/// Packets per GSO send in quinn 0.11 (`MAX_TRANSMIT_SEGMENTS`).
const GSO_SEGMENTS: u32 = 10;
/// IPv6 (40) and UDP (8) headers: the larger case.
const IP_UDP_HEADERS: u32 = 48;
/// The largest payload of one IP datagram, headers included.
const MAX_DATAGRAM: u32 = 65_535;
/// quinn's own MTU discovery bound, and our floor for loopback.
const DISCOVERY_MTU: u16 = 1452;

/// [`loopback_mtu`] for a loopback interface MTU of `lo` (None: unknown, as
/// on systems without `/sys`).
fn mtu_for(lo: Option<u32>) -> u16 {
    let gso_bound = (MAX_DATAGRAM - IP_UDP_HEADERS) / GSO_SEGMENTS;
    match lo {
        Some(lo) => {
            let fits = lo.saturating_sub(IP_UDP_HEADERS).min(gso_bound);
            // Never below QUIC's minimum of 1200.
            u16::try_from(fits).unwrap_or(DISCOVERY_MTU).max(1200)
        }
        None => DISCOVERY_MTU,
    }
}

/// Endpoint settings: advertise that we accept [`loopback_mtu`]-sized
/// datagrams (quinn's default is 1472), or peers on this host would clamp
/// their packets to the default. Peers elsewhere still send what their MTU
/// discovery finds, which stops at 1452.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut e = quinn::EndpointConfig::default();
    // QUIC packets keep their fixed bit (0x40): the socket tells relay and
    // path-probe datagrams (first byte below 0x40) from QUIC by it.
    e.grease_quic_bit(false);
    let max = loopback_mtu().max(1472);
    // 1200..=65527 is the range quinn accepts, and `max` is inside it.
    if e.max_udp_payload_size(max).is_err() {
        tracing::warn!(max, "quinn refused the maximum UDP payload size; keeping its default");
    }
    e
}

/// The QUIC server configuration (no revocation list).
pub fn server_config(cfg: &Config) -> Result<quinn::ServerConfig, TlsSetupError> {
    server_config_with(cfg, None, &RevokedSet::new(&cfg.hood))
}

/// [`server_config`], presenting the certificate `identity` holds at each
/// handshake (rotation) instead of `cfg.identity` for good, and refusing
/// clients in `revoked`.
pub(crate) fn server_config_with(
    cfg: &Config,
    identity: Option<Arc<SwapIdentity>>,
    revoked: &RevokedSet,
) -> Result<quinn::ServerConfig, TlsSetupError> {
    let mut tls = partybus_pki::server_config_with(&cfg.identity, &cfg.hood, revoked)?;
    if let Some(id) = identity {
        tls.cert_resolver = id;
    }
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    // No session resumption. Every peer is dialled with the one server name
    // "partybus", so a client offers whichever peer's ticket it got last and
    // resumption almost never matches; meanwhile the default in-memory store
    // kept two session values (with the client's certificate) per accepted
    // connection, up to 256, and a resumed session would skip the hood check
    // of the peer's certificate (expiry included). Full handshakes only.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(transport(cfg, false));
    // Addresses are validated by the TLS handshake itself; a retry round
    // trip would only slow mesh formation down (the accept loop asks for
    // one only under load: `mesh::admission`).
    sc.migration(true);
    // Handshakes not yet taken by the accept loop (which bounds its own).
    sc.max_incoming(1024);
    Ok(sc)
}

/// The QUIC client configuration (no revocation list).
pub fn client_config(cfg: &Config) -> Result<quinn::ClientConfig, TlsSetupError> {
    client_config_with(cfg, None, &RevokedSet::new(&cfg.hood))
}

/// [`client_config`] with a swappable identity (see [`server_config_with`]),
/// refusing servers in `revoked`.
pub(crate) fn client_config_with(
    cfg: &Config,
    identity: Option<Arc<SwapIdentity>>,
    revoked: &RevokedSet,
) -> Result<quinn::ClientConfig, TlsSetupError> {
    let mut tls = partybus_pki::client_config_with(&cfg.identity, &cfg.hood, revoked)?;
    if let Some(id) = identity {
        tls.client_auth_cert_resolver = id;
    }
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No session resumption: see `server_config`.
    tls.resumption = rustls::client::Resumption::disabled();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    cc.transport_config(transport(cfg, false));
    Ok(cc)
}

/// [`server_config`] and [`client_config`] for peers on this host (see [`transport`]).
pub fn on_host(
    cfg: &Config,
    mut server: quinn::ServerConfig,
    mut client: quinn::ClientConfig,
) -> (quinn::ServerConfig, quinn::ClientConfig) {
    server.transport_config(transport(cfg, true));
    client.transport_config(transport(cfg, true));
    (server, client)
}

/// The certificate (DER) a connection's peer presented.
pub fn peer_cert(conn: &quinn::Connection) -> Option<rustls_pki_types::CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned())
}

/// Whether the certificate a connection's peer presented is revoked now.
pub fn peer_revoked(conn: &quinn::Connection, revoked: &RevokedSet) -> bool {
    peer_cert(conn).is_some_and(|c| revoked.is_revoked(&c))
}

/// The SHA-256 (hex) of the certificate a connection's peer presented.
pub(crate) fn peer_cert_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let chain = conn.peer_identity()?.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, chain.first()?.as_ref());
    Some(hex::encode(digest.as_ref()))
}

/// The CN of the certificate a connection's peer presented.
pub fn peer_cert_name(conn: &quinn::Connection) -> String {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().and_then(|c| partybus_pki::peer_name(c)))
        .unwrap_or_else(|| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_mtu_fits_one_gso_send() {
        // The default loopback MTU (64 KiB): as large as one GSO send allows.
        let mtu = mtu_for(Some(65_536));
        assert_eq!(mtu, 6548);
        assert!(u32::from(mtu) * GSO_SEGMENTS + IP_UDP_HEADERS <= MAX_DATAGRAM);
        // A lowered loopback MTU bounds it, never below QUIC's 1200.
        assert_eq!(mtu_for(Some(1500)), 1452);
        assert_eq!(mtu_for(Some(576)), 1200);
        // Unknown: quinn's discovery bound.
        assert_eq!(mtu_for(None), 1452);
    }
}
