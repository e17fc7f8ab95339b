//! Options a node cannot run with are refused at start with the allowed
//! values in the message; a key file open to every user is refused like ssh
//! does; `emit` that reaches no neighbour says so in its exit status. Runs
//! the real binary on loopback.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_partybus");

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(dir).env("RUST_LOG", "warn").stdin(Stdio::null()).output().expect("run partybus")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A hood `h` with peer `p` in a temporary folder.
fn hood() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    assert!(run(&["hood", "create", "h", "--dir", dir], d.path()).status.success());
    assert!(run(&["peer", "create", "h", "p", "--dir", dir], d.path()).status.success());
    d
}

/// `emit` as peer `p` on loopback, finding no one, with `extra` options.
fn emit(d: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["emit", "--ca", "h.crt", "--cert", "h.p.crt", "--key", "h.p.key", "--bind", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--timeout", "1s", "ev"]);
    run(&args, d)
}

#[test]
fn options_a_node_cannot_run_with_are_refused_at_start() {
    let d = hood();
    for (flags, says) in [
        (&["--keep-alive", "1ns"][..], "option `keep_alive` = 1ns"),
        (&["--keep-alive", "0s"][..], "option `keep_alive` = 0ns"),
        (&["--idle-timeout", "0s"][..], "option `idle_timeout` = 0ns"),
        (&["--keep-alive", "30s"][..], "keep-alives must come well before the idle timeout"),
        (&["--connect", "127.0.0.1"][..], "has no port"),
        (&["--connect", "127.0.0.1:99999"][..], "not a port number (1-65535)"),
    ] {
        let started = Instant::now();
        let o = emit(d.path(), flags);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
        // Refused before any waiting (emit would otherwise wait --timeout).
        assert!(started.elapsed() < Duration::from_millis(900), "{flags:?} took {:?}", started.elapsed());
    }
    // All-zero limits in a config file.
    std::fs::write(d.path().join("zero.toml"), "[limits]\nqueue_limit = 0\nmax_event_size = 0\n").unwrap();
    let o = emit(d.path(), &["--config", "zero.toml"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("option `max_event_size` = 0") && err.contains("allowed: 256 bytes to 1 GiB"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_key_every_user_can_read_is_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let d = hood();
    let key = d.path().join("h.p.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = emit(d.path(), &[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("h.p.key") && err.contains("mode 0644") && err.contains("chmod 600"), "{err}");

    // Allowed explicitly (flag or config), the node runs; with nobody to
    // reach, `emit` emits anyway, prints 0 and exits 3.
    std::fs::write(d.path().join("open.toml"), "allow_readable_key = true\n").unwrap();
    for allow in [&["--allow-readable-key"][..], &["--config", "open.toml"][..]] {
        let o = emit(d.path(), allow);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{allow:?}: {err}");
        assert_eq!(text(&o.stdout).trim(), "0");
        assert!(err.contains("no neighbour found within 1s"), "{err}");
    }
    // A group-readable key (root-owned, read by a service's group) loads.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(emit(d.path(), &[]).status.code(), Some(3));
}
