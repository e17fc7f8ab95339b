//! The raver from the partybus README: prints every beat of the music.
//! See `dj.rs` for how to run both.

#[path = "common.rs"]
mod common;

use clap::Parser;
use partybus::Bus;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    peer: common::PeerArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    common::init_logs();
    let args = Args::parse();
    let bus = Bus::join(args.peer.config()?).await?;
    let _dance = bus.on("music", |ev| {
        let sound: String = ev.decode().unwrap_or_else(|_| "?".into());
        println!("{} from {}", sound, ev.source().name);
    })?;
    eprintln!("raver {} on port {}, waiting for music (Ctrl-C to stop)", bus.me().name, bus.port());
    tokio::signal::ctrl_c().await?;
    bus.leave().await;
    Ok(())
}
