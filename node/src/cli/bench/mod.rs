//! `partybus bench throughput|latency|fanout|mesh|memory`: measures the bus
//! on loopback (each end in its own process, a throw-away hood), or one end
//! of a two-machine measurement with `--role`. See BENCHMARKS.md.
//!
//! What only developers need moved to `partybus-perf` (node/perf/): the plain
//! quinn baseline (`bench quinn`, `--role quinn-server|quinn-client`) and the
//! in-process mesh (`bench mesh --in-process`). Those command lines still
//! parse here and fail with an error naming the new command.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

mod args;
mod local;
mod roles;
mod util;

pub use args::BenchArgs;
use args::{Role, Scenario};

const THROUGHPUT_COLS: &[(&str, &str)] = &[
    ("scenario", "scenario"),
    ("payload B", "payload_bytes"),
    ("receivers", "receivers"),
    ("events", "events"),
    ("seconds", "seconds"),
    ("events/s", "events_per_s"),
    ("MB/s", "mb_per_s"),
    ("lost", "lost"),
    ("emit RSS KiB", "emitter_rss_kib"),
    ("recv RSS KiB", "receiver_rss_kib"),
];
const LATENCY_COLS: &[(&str, &str)] = &[
    ("scenario", "scenario"),
    ("payload B", "payload_bytes"),
    ("round trips", "events"),
    ("p50 µs", "p50_us"),
    ("p90 µs", "p90_us"),
    ("p99 µs", "p99_us"),
    ("max µs", "max_us"),
    ("lost", "lost"),
    ("ping RSS KiB", "pinger_rss_kib"),
    ("pong RSS KiB", "ponger_rss_kib"),
];
const MEMORY_COLS: &[(&str, &str)] = &[
    ("scenario", "scenario"),
    ("neighbours", "neighbours"),
    ("idle KiB", "idle_rss_kib"),
    ("with N KiB", "rss_kib"),
    ("peak KiB", "hwm_kib"),
    ("per nb KiB", "per_neighbour_kib"),
    ("1st nb KiB", "first_neighbour_kib"),
    ("next nb KiB", "per_further_neighbour_kib"),
];

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if let Some(cmd) = args.moved() {
        bail!(
            "this benchmark moved to the developer benchmarks (node/perf/ in the source tree): run `{cmd} ...`, \
             e.g. `cargo run --release -p partybus-perf -- {}`; see BENCHMARKS.md",
            cmd.trim_start_matches("partybus-perf ")
        );
    }
    if let Some(role) = args.role {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
        rt.block_on(async {
            match role {
                Role::Emitter => roles::emitter(&args).await,
                Role::Receiver => roles::receiver(&args).await,
                Role::Pinger => roles::pinger(&args).await,
                Role::Ponger => roles::ponger(&args).await,
                Role::Node => roles::node(&args).await,
                Role::QuinnServer | Role::QuinnClient => unreachable!("moved, refused above"),
            }
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let cols = match args.scenario {
        Scenario::Throughput | Scenario::Fanout => THROUGHPUT_COLS,
        Scenario::Latency => LATENCY_COLS,
        Scenario::Mesh => util::MESH_COLS,
        Scenario::Memory => MEMORY_COLS,
        Scenario::Quinn => unreachable!("moved, refused above"),
    };
    let mut p = util::Printer::new(args.json, cols);
    match args.scenario {
        Scenario::Throughput | Scenario::Fanout => local::throughput(&args, &mut p)?,
        Scenario::Latency => local::latency(&args, &mut p)?,
        Scenario::Mesh => local::mesh(&args, &mut p)?,
        Scenario::Memory => local::memory(&args, &mut p)?,
        Scenario::Quinn => unreachable!("moved, refused above"),
    }
    Ok(ExitCode::SUCCESS)
}
