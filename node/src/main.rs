//! The `partybus` command: hood and peer certificates, a node daemon, shell
//! tools to listen and emit, a DHT bootstrap node, and benchmarks.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
