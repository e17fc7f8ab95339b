//! A chat: every line you type is emitted as `chat.<room>`; messages of all
//! rooms (`chat.+`) are printed.
//!
//! ```text
//! cargo run --example chat -- --cert hood.alice.crt --key hood.alice.key --room lobby --port 4816
//! cargo run --example chat -- --cert hood.bob.crt --key hood.bob.key --room lobby --port 4817 --connect 127.0.0.1:4816
//! ```
//! Type `/join ROOM` to change rooms.

#[path = "common.rs"]
mod common;

use clap::Parser;
use partybus::{Bus, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    peer: common::PeerArgs,
    /// Room to talk in.
    #[arg(long, default_value = "lobby")]
    room: String,
}

#[derive(Serialize, Deserialize)]
struct Message {
    text: String,
    at: Timestamp,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    common::init_logs();
    let args = Args::parse();
    let bus = Bus::join(args.peer.config()?).await?;
    let me = bus.id();
    let _all_rooms = bus.on("chat.+", move |ev| {
        if ev.source().id == me {
            return;
        }
        let room = ev.name().trim_start_matches("chat.");
        match ev.decode::<Message>() {
            Ok(m) => println!("[{room}] {}: {}", ev.source().name, m.text),
            Err(e) => eprintln!("[{room}] unreadable message from {}: {e}", ev.source().name),
        }
    })?;
    let mut room = args.room;
    eprintln!("chatting in {room} as {} (/join ROOM, Ctrl-D to quit)", bus.me().name);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(r) = line.strip_prefix("/join ") {
            match partybus::name::validate_name(&format!("chat.{}", r.trim())) {
                Ok(()) => room = r.trim().to_owned(),
                Err(e) => eprintln!("{e}"),
            }
            continue;
        }
        let n = bus.emit(&format!("chat.{room}"), &Message { text: line, at: Timestamp::now() }).await?;
        if n <= 1 {
            eprintln!("(nobody else is listening)");
        }
    }
    bus.leave().await;
    Ok(())
}
