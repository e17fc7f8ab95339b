//! QUIC endpoint configuration: mutual TLS against the hood CA (the
//! verifiers live in `partybus-pki`), ALPN `partybus/1`, and transport
//! settings.

use std::sync::Arc;

use crate::config::Config;
use crate::wire::ALPN;

/// Errors building the QUIC configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Pki(#[from] partybus_pki::PkiError),
    #[error("TLS configuration is not usable for QUIC: {0}")]
    Quic(String),
}

/// Transport settings. `peer_on_host`: for a connection to a peer on this
/// host (loopback), whose path MTU is known (64 KiB): start at 1452 bytes,
/// the most MTU discovery would settle on, instead of probing up to it from
/// 1200 after every handshake. The probes (4-5 padded packets each way, and
/// their acknowledgements) double the datagrams of a connection's first
/// moments; a mesh of nodes on one host forming at once spent a third of its
/// CPU on them. Other paths keep discovery (a VPN or PPPoE link may carry
/// less than 1452).
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
    if peer_on_host {
        t.initial_mtu(LOOPBACK_MTU);
    }
    Arc::new(t)
}

/// The UDP payload size used from the start with peers on this host: MTU
/// discovery's default upper bound (quinn), so nothing is left to probe.
const LOOPBACK_MTU: u16 = 1452;

pub fn server_config(cfg: &Config) -> Result<quinn::ServerConfig, TlsSetupError> {
    let mut tls = partybus_pki::server_config(&cfg.identity, &cfg.hood)?;
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
    // trip would only slow mesh formation down.
    sc.migration(true);
    Ok(sc)
}

pub fn client_config(cfg: &Config) -> Result<quinn::ClientConfig, TlsSetupError> {
    let mut tls = partybus_pki::client_config(&cfg.identity, &cfg.hood)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No session resumption: see `server_config`.
    tls.resumption = rustls::client::Resumption::disabled();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    cc.transport_config(transport(cfg, false));
    Ok(cc)
}

/// [`server_config`] and [`client_config`] for peers on this host (see [`transport`]).
pub fn on_host(cfg: &Config, mut server: quinn::ServerConfig, mut client: quinn::ClientConfig) -> (quinn::ServerConfig, quinn::ClientConfig) {
    server.transport_config(transport(cfg, true));
    client.transport_config(transport(cfg, true));
    (server, client)
}

/// The CN of the certificate a connection's peer presented.
pub fn peer_cert_name(conn: &quinn::Connection) -> String {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().and_then(|c| partybus_pki::peer_name(c)))
        .unwrap_or_else(|| "?".to_owned())
}
