//! The command line of `partybus-perf`'s benchmarks.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use partybus::{Config, PortSpec};

/// Options of every benchmark.
#[derive(Args)]
pub struct Common {
    /// One JSON object per result line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Repeat each measurement (fresh endpoints or processes each time).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub runs: usize,
    /// Bound on each wait (a handshake, a reply, a report).
    #[arg(long, default_value = "20s", value_name = "DUR", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// One end of a two-machine `quinn` measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QuinnRole {
    /// A plain quinn endpoint that echoes and counts what it gets.
    Server,
    /// Connects to a server (--connect) and measures (see --measure).
    Client,
}

/// What `quinn` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Measure {
    /// 16-byte ping-pong on one bidirectional stream: percentiles.
    Latency,
    /// 64 KiB writes on one unidirectional stream: MB/s.
    Bulk,
    /// 16-byte length-prefixed records batched into 64 KiB writes: records/s.
    Records,
    /// In this process: --nodes endpoints (default 100), one connection per
    /// pair; time and CPU until all are up (the floor under `mesh`).
    Mesh,
}

impl Measure {
    pub const ALL: [Measure; 4] = [Measure::Latency, Measure::Bulk, Measure::Records, Measure::Mesh];

    pub fn name(self) -> &'static str {
        match self {
            Measure::Latency => "latency",
            Measure::Bulk => "bulk",
            Measure::Records => "records",
            Measure::Mesh => "mesh",
        }
    }
}

/// Where a `quinn --role` end finds its certificates and binds.
#[derive(Args)]
pub struct Endpoint {
    /// Hood CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This peer's certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This peer's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// server: UDP port(s), 4816, 4816,4820 or 4816-4819 (default); 0 for any.
    #[arg(long, value_name = "SPEC")]
    pub port: Option<String>,
    /// Address to bind (server default: `[::]`, then `0.0.0.0`).
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// client: the server, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Vec<String>,
}

impl Endpoint {
    /// The certificates, port and bind address as a partybus [`Config`].
    pub fn to_config(&self) -> Result<Config> {
        let need = |p: &Option<PathBuf>, flag: &str| p.clone().with_context(|| format!("--role needs {flag}"));
        let mut cfg = Config::from_files(&need(&self.ca, "--ca")?, &need(&self.cert, "--cert")?, &need(&self.key, "--key")?)?;
        if let Some(p) = &self.port {
            cfg.port = p.parse::<PortSpec>().map_err(anyhow::Error::msg)?;
        }
        cfg.bind = self.bind;
        Ok(cfg)
    }
}

#[derive(Args)]
pub struct QuinnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Run one end only (two-machine measurements; takes --ca --cert --key
    /// --port --bind --connect). Without it both ends run here, in child
    /// processes, on loopback, with a throw-away hood.
    #[arg(long, value_enum)]
    pub role: Option<QuinnRole>,
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// What to measure (default latency,bulk,records,mesh).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub measure: Vec<Measure>,
    /// bulk/records: writes (bulk) or records to send (default: as many as --duration allows).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// bulk/records: how long to send (default 2s; with --count alone, at most 60s).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// latency: measured round trips.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub round_trips: usize,
    /// latency: round trips before measuring.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    pub warmup: usize,
    /// mesh: endpoints (default 100).
    #[arg(long, value_name = "N")]
    pub nodes: Option<usize>,
    /// mesh: runtime threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Exit when stdin closes (set for the child processes of a local run).
    #[arg(long, hide = true)]
    pub exit_on_stdin_eof: bool,
}

impl QuinnArgs {
    /// The measurements asked for, in order.
    pub fn measures(&self) -> Vec<Measure> {
        if self.measure.is_empty() {
            Measure::ALL.to_vec()
        } else {
            self.measure.clone()
        }
    }

    /// (count, duration) bounds of one sending run.
    pub fn bounds(&self) -> (u64, Duration) {
        match (self.count, self.duration) {
            (Some(c), Some(d)) => (c, d),
            (Some(c), None) => (c, Duration::from_secs(60)),
            (None, Some(d)) => (u64::MAX, d),
            (None, None) => (u64::MAX, Duration::from_secs(2)),
        }
    }
}

#[derive(Args)]
pub struct MeshArgs {
    #[command(flatten)]
    pub common: Common,
    /// Nodes (Bus instances) in this process.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub nodes: usize,
    /// Runtime threads (default: one per core; 1 = one current_thread runtime).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Give each thread its own current_thread runtime and a share of the
    /// nodes, instead of tokio's multi-thread scheduler.
    #[arg(long)]
    pub thread_per_core: bool,
}

/// --threads, or one per core.
pub fn threads(arg: Option<usize>) -> usize {
    arg.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}
