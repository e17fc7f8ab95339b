//! Command-line interface. Subcommands share one set of node options
//! ([`opts::NodeOpts`]); data goes to stdout, logs to stderr.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod commands;
mod config_file;
mod control;
mod logs;
mod node_cmd;
mod notify;
mod opts;
mod pki_cmd;
mod relay_opts;
mod reload;
mod revoke_cmd;
mod status;

pub use opts::NodeOpts;

#[derive(Parser)]
#[command(name = "partybus", version, about = "A distributed event bus over a QUIC full mesh with mutual TLS")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a hood (a CA): NAME.crt and NAME.key.
    Hood {
        #[command(subcommand)]
        cmd: pki_cmd::HoodCmd,
    },
    /// Create a peer certificate signed by a hood: HOOD.NAME.crt and HOOD.NAME.key.
    Peer {
        #[command(subcommand)]
        cmd: pki_cmd::PeerCmd,
    },
    /// Inspect certificates and revocation lists; revoke peer certificates.
    Cert {
        #[command(subcommand)]
        cmd: pki_cmd::CertCmd,
    },
    /// Run a node until Ctrl-C/SIGTERM; prints neighbour changes as JSON lines. SIGHUP reloads the config file.
    Node {
        #[command(flatten)]
        node: NodeOpts,
        /// Control socket for `partybus status` (default with --config: derived from the config file's path; see README).
        #[arg(long, value_name = "PATH")]
        control: Option<std::path::PathBuf>,
    },
    /// Ask a running node (over its control socket) what it is doing, or make it reload its config.
    Status(status::StatusArgs),
    /// Print every event matching the selectors as one JSON line.
    Listen {
        #[command(flatten)]
        node: NodeOpts,
        /// Selectors (wildcards: + any run without '.', # any run without '$').
        #[arg(required = true)]
        selectors: Vec<String>,
        /// Also print each neighbour's network path (the `partybus node` path
        /// lines, `{"path":"direct"|"relayed",...}`), when it is found and when it changes.
        #[arg(long)]
        paths: bool,
        /// Control socket for `partybus status` (none by default).
        #[arg(long, value_name = "PATH")]
        control: Option<std::path::PathBuf>,
    },
    /// Emit one event (or one per stdin line with '-') and print the listener count.
    Emit(commands::EmitArgs),
    /// Run a plain DHT node (no hood, no certificates): a bootstrap server.
    Dht(commands::DhtArgs),
    /// Measure throughput, latency, fan-out, mesh formation or memory, or plain quinn (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("partybus: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // One thread: measured faster for QUIC on small machines (fewer
    // cross-core wake-ups), see BENCHMARKS.md.
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Hood { cmd } => pki_cmd::hood(cmd),
        Cmd::Peer { cmd } => pki_cmd::peer(cmd),
        Cmd::Cert { cmd } => pki_cmd::cert(cmd),
        Cmd::Node { node, control } => {
            let logs = logs::init("info");
            runtime()?.block_on(node_cmd::node(node, control, logs))
        }
        Cmd::Status(args) => runtime()?.block_on(status::run(args)),
        Cmd::Listen { node, selectors, paths, control } => {
            init_logs("warn");
            runtime()?.block_on(commands::listen(node, selectors, paths, control))
        }
        Cmd::Emit(args) => {
            init_logs("warn");
            runtime()?.block_on(commands::emit(args))
        }
        Cmd::Dht(args) => {
            init_logs("info");
            runtime()?.block_on(commands::dht(args))
        }
        Cmd::Bench(args) => {
            init_logs("warn");
            bench::run(args)
        }
    }
}
