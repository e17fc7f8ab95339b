//! `partybus-perf`: benchmarks only developers need, kept out of the product
//! binary (operators have `partybus bench`): the plain quinn baseline
//! (`quinn`) and the in-process mesh with its allocator tuning (`mesh`).
//! The micro-benchmarks are `cargo bench -p partybus-perf --bench micro`.
//! See BENCHMARKS.md.
//!
//! Modules: `args` (the command line), `quinn` (the baseline: its endpoints,
//! roles and orchestration), `mesh` (Bus instances in this process), `alloc`
//! (allocator tuning), and `util`, the `partybus bench` helpers (child
//! processes, RSS, tables), compiled from the product's source file so the
//! two share one copy.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::{MeshArgs, QuinnArgs};

mod alloc;
mod args;
mod mesh;
mod quinn;
#[path = "../../src/cli/bench/util.rs"]
#[allow(dead_code)] // the partybus bench helpers this binary does not need
mod util;

#[derive(Parser)]
#[command(
    name = "partybus-perf",
    version,
    about = "Developer benchmarks of partybus: the plain quinn baseline and the in-process mesh (see BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Plain quinn endpoints with the hood's mutual TLS, no partybus: ping-pong,
    /// 64 KiB bulk writes, 16-byte records batched into 64 KiB writes, and a
    /// mesh of endpoints in this process. Formerly `partybus bench quinn`.
    Quinn(Box<QuinnArgs>),
    /// --nodes Bus instances in this process that know only node 0: time, CPU
    /// and RSS until the mesh is full. Formerly `partybus bench mesh --in-process`.
    Mesh(MeshArgs),
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let result = match Cli::parse().cmd {
        Cmd::Quinn(args) => quinn::run(&args),
        Cmd::Mesh(args) => mesh::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("partybus-perf: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
