//! The baseline's endpoint configuration: the hood's mutual TLS with its own
//! ALPN, and quinn's default transport settings.

use std::sync::Arc;

use anyhow::{Context, Result};

/// Not partybus's ALPN: a quinn-client cannot talk to a node by mistake.
const ALPN: &[u8] = b"partybus-bench-quinn";

fn transport_default() -> Arc<quinn::TransportConfig> {
    Arc::new(quinn::TransportConfig::default())
}

/// The server end: the hood's mutual TLS, the baseline's ALPN, quinn's defaults.
pub fn server_config(cfg: &partybus::Config) -> Result<quinn::ServerConfig> {
    let mut tls = partybus::pki::server_config(&cfg.identity, &cfg.hood)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("TLS configuration not usable for QUIC")?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(transport_default());
    Ok(sc)
}

/// The client end: the hood's mutual TLS, the baseline's ALPN, quinn's defaults.
pub fn client_config(cfg: &partybus::Config) -> Result<quinn::ClientConfig> {
    let mut tls = partybus::pki::client_config(&cfg.identity, &cfg.hood)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("TLS configuration not usable for QUIC")?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    cc.transport_config(transport_default());
    Ok(cc)
}
