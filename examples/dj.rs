//! The dj from the partybus README: emits `music` = "utz" at 140 BPM.
//!
//! ```text
//! partybus hood create hood && partybus peer create hood dj && partybus peer create hood raver
//! cargo run --example dj -- --cert hood.dj.crt --key hood.dj.key --port 4816
//! cargo run --example raver -- --cert hood.raver.crt --key hood.raver.key --port 4817 --connect 127.0.0.1:4816
//! ```
//! On a LAN, use `--mdns` on both instead of `--connect`.

#[path = "common.rs"]
mod common;

use std::time::Duration;

use clap::Parser;
use partybus::Bus;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    peer: common::PeerArgs,
    /// Beats per minute.
    #[arg(long, default_value_t = 140.0)]
    bpm: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    common::init_logs();
    let args = Args::parse();
    let bus = Bus::join(args.peer.config()?).await?;
    eprintln!("dj {} on port {}; playing at {} BPM (Ctrl-C to stop)", bus.me().name, bus.port(), args.bpm);
    let mut beat = tokio::time::interval(Duration::from_secs_f64(60.0 / args.bpm));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = beat.tick() => {
                let ravers = bus.emit("music", "utz").await?;
                if ravers == 0 {
                    tracing::debug!("nobody dances");
                }
            }
        }
    }
    bus.leave().await;
    Ok(())
}
