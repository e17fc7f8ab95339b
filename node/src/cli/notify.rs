//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): one datagram
//! per state change to the Unix socket named by `$NOTIFY_SOCKET`.
//!
//! Written by hand rather than with the `sd-notify` crate: it is one
//! `sendto` on a Unix datagram socket (the standard library has it, including
//! Linux's abstract addresses), and a dependency would add more lines than
//! it saves. Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::time::{SystemTime, UNIX_EPOCH};

/// The node is listening (after it joined and its control socket is up).
pub fn ready() {
    send("READY=1\nSTATUS=in the hood");
}

/// A reload begins. systemd wants the monotonic clock with it (since v253),
/// so that `systemctl reload` can wait for the READY=1 that ends it.
pub fn reloading() {
    let usec = monotonic_usec();
    send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// The node is leaving the hood.
pub fn stopping() {
    send("STOPPING=1");
}

/// A status line `systemctl status` shows.
pub fn status(text: &str) {
    send(&format!("STATUS={text}"));
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        // Never happens on Linux; a wall-clock value is better than none.
        return SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

fn send(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send_to(&path, msg.as_bytes()) {
        tracing::warn!(socket = ?path, error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

#[cfg(unix)]
fn send_to(path: &std::ffi::OsStr, msg: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        // An abstract socket (Linux): '@' stands for the leading NUL.
        Some(name) => {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = name;
                return Err(std::io::Error::other("abstract sockets exist on Linux only"));
            }
        }
        None => SocketAddr::from_pathname(std::path::Path::new(path))?,
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(msg, &addr)?;
    if sent != msg.len() {
        return Err(std::io::Error::other("short write"));
    }
    Ok(())
}

#[cfg(not(unix))]
fn send_to(_path: &std::ffi::OsStr, _msg: &[u8]) -> std::io::Result<()> {
    Ok(())
}
