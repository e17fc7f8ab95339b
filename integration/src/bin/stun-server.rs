//! Lab STUN server (RFC 5389 binding + RFC 5780 CHANGE-REQUEST) for
//! miniupnpd's `ext_perform_stun`.
//!
//! `stun-server PRIMARY_IP ALTERNATE_IP [PORT [ALT_PORT]] [--max-seconds N]`
//! (defaults 3478, 3479, 3600 s). Run it inside the lab's "internet" namespace.

#[path = "../stun.rs"]
#[allow(dead_code)]
mod stun;

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut max_seconds = 3600u64;
    if let Some(i) = args.iter().position(|a| a == "--max-seconds") {
        max_seconds = args.get(i + 1).ok_or_else(|| anyhow::anyhow!("--max-seconds N"))?.parse()?;
        args.drain(i..i + 2);
    }
    if args.len() < 2 || args.len() > 4 {
        anyhow::bail!("usage: stun-server PRIMARY_IP ALTERNATE_IP [PORT [ALT_PORT]] [--max-seconds N]");
    }
    let cfg = stun::StunConfig {
        primary: args[0].parse()?,
        alternate: args[1].parse()?,
        port: args.get(2).map(|p| p.parse()).transpose()?.unwrap_or(3478),
        alt_port: args.get(3).map(|p| p.parse()).transpose()?.unwrap_or(3479),
    };
    let server = stun::StunServer::bind(cfg).await?;
    println!(
        "stun-server listening on {}:{{{},{}}} and {}:{{{},{}}}",
        cfg.primary, cfg.port, cfg.alt_port, cfg.alternate, cfg.port, cfg.alt_port
    );
    server.serve(Duration::from_secs(max_seconds), u64::MAX).await;
    Ok(())
}
