//! Helpers of the tests that run `partybus` processes for operators'
//! features (`ops.rs`, `reload.rs`): hoods made with the CLI, daemons whose
//! stdout lines arrive on a channel, `partybus status --json`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_partybus");
/// Failure guard for waits (never a performance bound).
pub const GUARD: Duration = Duration::from_secs(20);

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("RUST_LOG", "warn").stdin(Stdio::null()).output().expect("run partybus")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "partybus {args:?}: {}{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

/// Hood "h" (10 years) in a temp dir.
pub fn hood() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    ok(&["hood", "create", "h", "--dir", d.path().to_str().unwrap(), "--days", "3650"]);
    d
}

pub fn peer(dir: &Path, name: &str, days: u32) {
    ok(&["peer", "create", "h", name, "--dir", dir.to_str().unwrap(), "--days", &days.to_string()]);
}

pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Flags for peer `name` of the hood in `dir`, on loopback, any port.
pub fn pki(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--ca".into(),
        s(&dir.join("h.crt")),
        "--cert".into(),
        s(&dir.join(format!("h.{name}.crt"))),
        "--key".into(),
        s(&dir.join(format!("h.{name}.key"))),
        "--bind".into(),
        "127.0.0.1".into(),
        "--port".into(),
        "0".into(),
    ]
}

/// A config file for peer `name` (paths relative to the file), with `extra` lines.
pub fn config(dir: &Path, file: &str, name: &str, extra: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(
        &p,
        format!("ca = \"h.crt\"\ncert = \"h.{name}.crt\"\nkey = \"h.{name}.key\"\nport = \"0\"\nbind = \"127.0.0.1\"\n{extra}"),
    )
    .unwrap();
    p
}

/// A long-running child whose stdout lines arrive on a channel; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub lines: Receiver<String>,
}

impl Daemon {
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> Daemon {
        Self::spawn_with_stdin(args, env, false)
    }
    pub fn spawn_with_stdin(args: &[String], env: &[(&str, &str)], stdin: bool) -> Daemon {
        Self::spawn_full(args, env, stdin, None)
    }
    /// `stderr`: a file for the child's logs.
    pub fn spawn_full(args: &[String], env: &[(&str, &str)], stdin: bool, stderr: Option<&Path>) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .env_remove("NOTIFY_SOCKET")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(match stderr {
                Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
                None => Stdio::null(),
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn partybus");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines }
    }
    /// The port of the `ready` line of `partybus node`.
    pub fn port(&self) -> u16 {
        let l = self.lines.recv_timeout(GUARD).expect("the ready line");
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        v["ready"]["port"].as_u64().unwrap_or_else(|| panic!("no port in {l}")) as u16
    }
    pub fn signal(&self, sig: &str) {
        // It may have exited already (a second TERM).
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
    }
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    pub fn term(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let t = Instant::now();
        while t.elapsed() < GUARD {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no exit after SIGTERM");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `partybus status --json` with these socket arguments.
pub fn status(socket_args: &[&str]) -> Value {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(socket_args);
    serde_json::from_str(&ok(&args)).unwrap()
}

/// Polls `partybus status` until `cond` holds (or fails after [`GUARD`], showing the last status).
pub fn status_until(socket_args: &[&str], what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let st = status(socket_args);
        if cond(&st) {
            return st;
        }
        assert!(t.elapsed() < GUARD, "{what}: last status {st:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn neighbour<'a>(st: &'a Value, name: &str) -> Option<&'a Value> {
    st["neighbours"].as_array().unwrap().iter().find(|n| n["name"] == name)
}

pub fn names(st: &Value) -> Vec<String> {
    st["neighbours"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_owned()).collect()
}
