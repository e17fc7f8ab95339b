//! A self-contained demo: a throw-away hood in a temp dir, five peers on
//! loopback that know only the first one, a full mesh forming, and events
//! flowing between all of them. Exits by itself after a few seconds (or on
//! Ctrl-C).
//!
//! ```text
//! cargo run --release --example party
//! ```

#[path = "common.rs"]
mod common;

use std::time::{Duration, Instant};

use partybus::{Bus, Config, NeighbourEvent, PortSpec};
use partybus_pki::TempHood;

const PEERS: usize = 5;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    common::init_logs();
    // A throw-away hood, removed at exit (a real one: `partybus hood create`).
    let hood = TempHood::new("party", 1)?;
    println!("hood 'party' created in {} (fingerprint {}…)", hood.dir().display(), &hood.hood().fingerprint()[..16]);

    let names = ["ada", "bob", "cyd", "dee", "eve"];
    let started = Instant::now();
    let mut buses: Vec<Bus> = Vec::new();
    for name in names.iter().take(PEERS) {
        let mut cfg = Config::new(hood.hood().clone(), hood.identity(name)?);
        cfg.port = PortSpec::any();
        cfg.bind = Some("127.0.0.1".parse()?);
        if let Some(first) = buses.first() {
            cfg = cfg.connect([format!("127.0.0.1:{}", first.port())]);
        }
        let bus = Bus::join(cfg).await?;
        println!("{name} joined on 127.0.0.1:{}", bus.port());
        let mut events = bus.neighbour_events();
        let who = name.to_string();
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                if let NeighbourEvent::Found(n) = ev {
                    println!("  {who} sees {} ({}, {})", n.name, n.addr, n.direction);
                }
            }
        });
        buses.push(bus);
    }
    for b in &buses {
        b.wait_neighbours(PEERS - 1).await;
    }
    println!("full mesh of {PEERS} peers in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);

    // Everybody listens to greetings addressed to anyone (`+` wildcard).
    let mut handles = Vec::new();
    for (i, b) in buses.iter().enumerate() {
        let me = names[i];
        handles.push(b.on("hello.+", move |ev| {
            let text: String = ev.decode().unwrap_or_default();
            println!("  {me} got {:?} on {} from {}", text, ev.name(), ev.source().name);
        })?);
    }
    // Subscriptions travel to every peer; wait until each sees all of them.
    for b in &buses {
        let mut c = b.observe_listener_count("hello.x")?;
        c.wait_for(|n| *n >= PEERS).await?;
    }
    for (i, b) in buses.iter().enumerate() {
        let to = names[(i + 1) % PEERS];
        let n = b.emit(&format!("hello.{to}"), &format!("hi {to}, {} here", names[i])).await?;
        println!("{} emitted hello.{to}: reached {n} listeners", names[i]);
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for (b, name) in buses.iter().zip(names) {
        b.leave().await;
        println!("{name} left");
    }
    drop(handles);
    Ok(())
}
