//! Options shared by the examples: where the certificates are and how to
//! find the other peers.

use std::path::PathBuf;

use clap::Args;
use partybus::{Config, PortSpec};

#[derive(Args, Debug)]
pub struct PeerArgs {
    /// Hood CA certificate.
    #[arg(long, default_value = "hood.crt")]
    pub ca: PathBuf,
    /// This peer's certificate.
    #[arg(long)]
    pub cert: PathBuf,
    /// This peer's key.
    #[arg(long)]
    pub key: PathBuf,
    /// UDP port(s), e.g. 4816-4819 (default) or 0 for any.
    #[arg(long, default_value = "4816-4819")]
    pub port: String,
    /// Other peer(s) to connect to, HOST:PORT (repeatable).
    #[arg(long)]
    pub connect: Vec<String>,
    /// Find peers on the LAN with mDNS.
    #[arg(long)]
    pub mdns: bool,
}

#[allow(dead_code)] // not every example uses every helper
impl PeerArgs {
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut cfg = Config::from_files(&self.ca, &self.cert, &self.key)?.connect(self.connect.clone());
        cfg.port = self.port.parse::<PortSpec>().map_err(anyhow::Error::msg)?;
        if self.mdns {
            cfg = cfg.discover(partybus::discovery::MdnsDiscovery::new());
        }
        Ok(cfg)
    }
}

#[allow(dead_code)]
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
