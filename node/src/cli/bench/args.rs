//! The command line of `partybus bench`, and which of its forms moved to
//! `partybus-perf`.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::cli::opts::NodeOpts;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// One emitter, one receiver: events/s and MB/s per payload size.
    Throughput,
    /// Ping-pong round trips: percentiles.
    Latency,
    /// One emitter, --receivers receiver processes: total events/s received.
    Fanout,
    /// --nodes processes that know only node 0: time to a full mesh.
    Mesh,
    /// Idle RSS of a node with 0 and with --neighbours neighbours.
    Memory,
    /// Moved to the developer benchmarks: `partybus-perf quinn` (see BENCHMARKS.md).
    Quinn,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Latency => "latency",
            Scenario::Fanout => "fanout",
            Scenario::Mesh => "mesh",
            Scenario::Memory => "memory",
            Scenario::Quinn => "quinn",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// throughput/fanout: emits, then collects the receivers' counts.
    Emitter,
    /// throughput/fanout: counts events.
    Receiver,
    /// latency: sends pings, measures round trips.
    Pinger,
    /// latency: answers pings.
    Ponger,
    /// mesh/memory: a node printing neighbour counts and its RSS.
    Node,
    /// Moved: `partybus-perf quinn --role server`.
    QuinnServer,
    /// Moved: `partybus-perf quinn --role client`.
    QuinnClient,
}

/// What `bench quinn` measured (moved: `partybus-perf quinn --measure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Measure {
    Latency,
    Bulk,
    Records,
    Mesh,
}

#[derive(Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// One JSON object per result line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run one end only (two-machine measurements; takes the node options
    /// --ca --cert --key --port --connect ...). Without it every end runs
    /// here, in child processes, on loopback, with a throw-away hood.
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    #[command(flatten)]
    pub node: NodeOpts,
    /// Payload size(s) in bytes, as it travels (MessagePack); default 16,1024,65536 (latency: 16).
    #[arg(long, value_delimiter = ',', value_name = "BYTES")]
    pub payload: Vec<usize>,
    /// Events to emit per payload size (default: as many as --duration allows).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// How long to emit per payload size (default 2s; with --count alone, at most 60s).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// fanout: receiver processes.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub receivers: usize,
    /// mesh: nodes (default 30).
    #[arg(long, value_name = "N")]
    pub nodes: Option<usize>,
    /// Moved: the in-process mesh is `partybus-perf mesh`.
    #[arg(long)]
    pub in_process: bool,
    /// Moved with --in-process: `partybus-perf mesh --threads`.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Moved with --in-process: `partybus-perf mesh --thread-per-core`.
    #[arg(long)]
    pub thread_per_core: bool,
    /// latency: measured round trips.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub round_trips: usize,
    /// latency: round trips before measuring.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    pub warmup: usize,
    /// latency (--role pinger): while pinging, also stream events of this many
    /// bytes to the ponger as fast as its queue takes them, to measure small
    /// events behind bulk ones (issue 16).
    #[arg(long, value_name = "BYTES", alias = "under-bulk")]
    pub bulk: Option<usize>,
    /// memory: neighbours of the measured node.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub neighbours: usize,
    /// Moved with `bench quinn`: `partybus-perf quinn --measure`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub measure: Vec<Measure>,
    /// Repeat each measurement (fresh processes each time).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub runs: usize,
    /// Bound on each wait (a peer to appear, the receivers to drain).
    #[arg(long, default_value = "20s", value_name = "DUR", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Exit when stdin closes (set for the child processes of a local run).
    #[arg(long, hide = true)]
    pub exit_on_stdin_eof: bool,
}

impl BenchArgs {
    pub fn payload_sizes(&self) -> Vec<usize> {
        if self.payload.is_empty() {
            vec![16, 1024, 65536]
        } else {
            self.payload.clone()
        }
    }

    /// For a command line that asks for a benchmark moved to `partybus-perf`:
    /// the command that runs it now.
    pub(super) fn moved(&self) -> Option<&'static str> {
        match (self.scenario, self.role) {
            (_, Some(Role::QuinnServer)) => Some("partybus-perf quinn --role server"),
            (_, Some(Role::QuinnClient)) => Some("partybus-perf quinn --role client"),
            (Scenario::Quinn, _) => Some("partybus-perf quinn"),
            (Scenario::Mesh, _) if self.in_process => Some("partybus-perf mesh"),
            _ => None,
        }
    }

    /// (count, duration) bounds of one emitting run.
    pub fn bounds(&self) -> (u64, Duration) {
        match (self.count, self.duration) {
            (Some(c), Some(d)) => (c, d),
            (Some(c), None) => (c, Duration::from_secs(60)),
            (None, Some(d)) => (u64::MAX, d),
            (None, None) => (u64::MAX, Duration::from_secs(2)),
        }
    }

    /// Options a local run passes on to its children.
    pub(super) fn pass_through(&self) -> Vec<OsString> {
        let mut v: Vec<String> = vec!["--timeout".into(), humantime::format_duration(self.timeout).to_string()];
        if let Some(c) = self.count {
            v.extend(["--count".into(), c.to_string()]);
        }
        if let Some(d) = self.duration {
            v.extend(["--duration".into(), humantime::format_duration(d).to_string()]);
        }
        v.extend(["--round-trips".into(), self.round_trips.to_string(), "--warmup".into(), self.warmup.to_string()]);
        if let Some(b) = self.bulk {
            v.extend(["--bulk".into(), b.to_string()]);
        }
        v.into_iter().map(OsString::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn moved(args: &[&str]) -> Option<&'static str> {
        let cmd = Cmd::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).expect("the command line still parses");
        cmd.bench.moved()
    }

    #[test]
    fn moved_benchmarks_still_parse_and_name_their_new_command() {
        assert_eq!(moved(&["quinn"]), Some("partybus-perf quinn"));
        assert_eq!(moved(&["quinn", "--measure", "latency,mesh", "--nodes", "8", "--threads", "2"]), Some("partybus-perf quinn"));
        assert_eq!(moved(&["quinn", "--role", "quinn-server"]), Some("partybus-perf quinn --role server"));
        assert_eq!(moved(&["quinn", "--role", "quinn-client", "--connect", "127.0.0.1:1"]), Some("partybus-perf quinn --role client"));
        assert_eq!(moved(&["mesh", "--in-process", "--thread-per-core"]), Some("partybus-perf mesh"));
        for kept in [&["mesh"][..], &["mesh", "--nodes", "4"], &["throughput"], &["latency", "--role", "pinger"], &["memory"], &["fanout"]]
        {
            assert_eq!(moved(kept), None, "{kept:?}");
        }
    }
}
