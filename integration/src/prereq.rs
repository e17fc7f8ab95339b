//! What a network lab needs from the machine: root (euid 0 with
//! `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`), `ip` and `nft`.
//!
//! One check for both places that ask: `build.rs` (compiled into it with
//! `#[path]`, so std only) decides whether the lab tests are built
//! `#[ignore]`d (`cfg(partybus_no_lab)`), and [`crate::lab::Lab::new`] refuses
//! to start a lab on the same grounds. Programs only some labs need
//! (`ping`, `miniupnpd`, `conntrack`) are checked by those labs and fail them.

use std::path::PathBuf;

/// `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` (`ip netns add` needs both).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Find `prog` on PATH, then in `/usr/sbin` and `/sbin` (not on every
/// user's PATH, but where Debian puts `ip` and `nft`).
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from)).map(|d| d.join(prog)).find(|p| p.is_file())
}

/// A field of `/proc/self/status` (the text after `Name:`).
fn status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.split(':').next() == Some(name))?;
    Some(line[name.len() + 1..].trim().to_owned())
}

/// The effective uid (second number of the `Uid:` line).
pub fn effective_uid() -> Option<u32> {
    status_field("Uid")?.split_whitespace().nth(1)?.parse().ok()
}

/// Does the process hold capability `cap` (bit of `CapEff:`)?
fn has_capability(cap: u32) -> Option<bool> {
    let eff = u64::from_str_radix(&status_field("CapEff")?, 16).ok()?;
    Some(eff & (1 << cap) != 0)
}

/// What the lab lacks here, one item each ("root (effective uid 1000)",
/// "`nft` (Debian package nftables)"); empty when a lab can run.
pub fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    match effective_uid() {
        Some(0) => {
            let caps = [(CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")];
            let lacking: Vec<&str> = caps.iter().filter(|(c, _)| has_capability(*c) != Some(true)).map(|(_, n)| *n).collect();
            if !lacking.is_empty() {
                missing.push(format!("root's capabilities {} (a container without them?)", lacking.join(" and ")));
            }
        }
        Some(uid) => missing.push(format!("root (effective uid is {uid})")),
        None => missing.push("root (no /proc/self/status: network labs need Linux)".to_owned()),
    }
    for (prog, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if which(prog).is_none() {
            missing.push(format!("`{prog}` (Debian package {package})"));
        }
    }
    missing
}
