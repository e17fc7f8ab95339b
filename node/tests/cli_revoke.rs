//! Issue 15: `partybus cert revoke` / `cert show` of a revocation list, and
//! `partybus node --revoked FILE`, as processes on loopback.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_partybus");
const GUARD: Duration = Duration::from_secs(20);

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(dir).env("RUST_LOG", "warn").stdin(Stdio::null()).output().expect("run partybus")
}

fn ok(args: &[&str], dir: &Path) -> String {
    let o = run(args, dir);
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    text(&o.stdout)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn hood_with(dir: &Path, hood: &str, peers: &[&str]) {
    ok(&["hood", "create", hood, "--dir", dir.to_str().unwrap(), "--days", "30"], dir);
    for p in peers {
        ok(&["peer", "create", hood, p, "--dir", dir.to_str().unwrap(), "--days", "30"], dir);
    }
}

fn fingerprint(dir: &Path, file: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&ok(&["cert", "show", "--json", file], dir)).unwrap();
    v["fingerprint"].as_str().unwrap().to_owned()
}

#[test]
fn revoke_and_show_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    hood_with(dir, "h", &["alice", "bob"]);
    let out = ok(&["cert", "revoke", "h", "--cert", "h.alice.crt"], dir);
    assert!(out.contains("h.revoked") && out.contains("revoked alice") && out.contains("sequence 1"), "{out}");
    let bob = fingerprint(dir, "h.bob.crt");
    let out = ok(&["cert", "revoke", "h", "--fingerprint", &bob.to_uppercase()], dir);
    assert!(out.contains("revoked bob") && out.contains("sequence 2"), "{out}");
    let out = ok(&["cert", "revoke", "h", "--fingerprint", &bob], dir);
    assert!(out.contains("already revoked bob"), "{out}");

    let show = ok(&["cert", "show", "h.revoked"], dir);
    assert!(show.contains("sequence:    2") && show.contains("signature:   valid (hood \"h\""), "{show}");
    let alice = fingerprint(dir, "h.alice.crt");
    assert!(show.contains(&format!("{alice}  alice")) && show.contains(&format!("{bob}  bob")), "{show}");
    let v: serde_json::Value = serde_json::from_str(&ok(&["cert", "show", "--json", "h.revoked"], dir)).unwrap();
    assert_eq!(v["sequence"], 2);
    assert_eq!(v["hood_fingerprint"].as_str().unwrap(), fingerprint(dir, "h.crt"));
    assert_eq!(v["revoked"].as_array().unwrap().len(), 2);
    assert!(v["signature"].as_str().unwrap().starts_with("valid"), "{v}");

    // Exactly one of --cert and --fingerprint.
    assert!(!run(&["cert", "revoke", "h"], dir).status.success());
    assert!(!run(&["cert", "revoke", "h", "--cert", "h.bob.crt", "--fingerprint", &bob], dir).status.success());
}

/// Flips one byte of the signed part of a PEM revocation list.
fn tamper(pem: &str) -> String {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    der[50] ^= 0x01; // in the issued-at time
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN PARTYBUS REVOCATION LIST-----\n{}\n-----END PARTYBUS REVOCATION LIST-----\n", lines.join("\n"))
}

#[test]
fn a_forged_or_foreign_list_is_refused_at_start_naming_the_file_and_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    hood_with(dir, "h", &["a", "m"]);
    ok(&["cert", "revoke", "h", "--cert", "h.m.crt"], dir);
    std::fs::write(dir.join("forged.revoked"), tamper(&std::fs::read_to_string(dir.join("h.revoked")).unwrap())).unwrap();
    // Another hood of the same name: its own key signs its list.
    let other = dir.join("other");
    std::fs::create_dir(&other).unwrap();
    hood_with(&other, "h", &["x"]);
    ok(&["cert", "revoke", "h", "--cert", "h.x.crt", "--dir", other.to_str().unwrap()], &other);

    let node = |list: &str| {
        run(
            &["node", "--port", "0", "--bind", "127.0.0.1", "--ca", "h.crt", "--cert", "h.a.crt", "--key", "h.a.key", "--revoked", list],
            dir,
        )
    };
    let o = node("forged.revoked");
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("forged.revoked") && e.contains("not signed by the key of hood \"h\"") && e.contains("partybus cert revoke h"),
        "{e}"
    );
    let o = node("other/h.revoked");
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("other/h.revoked") && e.contains("not for hood \"h\""), "{e}");
    // `cert show` checks the signature too when the hood certificate is known.
    let o = run(&["cert", "show", "forged.revoked", "--ca", "h.crt"], dir);
    assert!(!o.status.success() && text(&o.stderr).contains("forged or was altered"), "{}", text(&o.stderr));
}

/// A long-running child: stdout lines on a channel, stderr to a file; killed on drop.
struct Daemon {
    child: Child,
    lines: Receiver<String>,
    stderr: std::path::PathBuf,
}

impl Daemon {
    fn spawn(dir: &Path, name: &str, args: &[String]) -> Daemon {
        let stderr = dir.join(format!("{name}.log"));
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn partybus");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines, stderr }
    }
    fn json(&self) -> serde_json::Value {
        let l = self.lines.recv_timeout(GUARD).expect("a line from the child");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
    }
    fn port(&self) -> u16 {
        let v = self.json();
        u16::try_from(v["ready"]["port"].as_u64().unwrap_or_else(|| panic!("no ready line: {v}"))).unwrap()
    }
    /// Every line printed so far.
    fn drain(&self) -> Vec<serde_json::Value> {
        self.lines.try_iter().map(|l| serde_json::from_str(&l).unwrap()).collect()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_node_started_with_revoked_refuses_the_revoked_peer_both_ways() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    hood_with(dir, "h", &["a", "b", "m"]);
    ok(&["cert", "revoke", "h", "--cert", "h.m.crt"], dir);
    let pki = |p: &str| -> Vec<String> {
        ["--ca", "h.crt", "--cert", &format!("h.{p}.crt"), "--key", &format!("h.{p}.key"), "--bind", "127.0.0.1", "--port", "0"]
            .map(String::from)
            .to_vec()
    };
    let args = |p: &str, extra: &[String]| -> Vec<String> {
        let mut v = vec!["node".to_owned()];
        v.extend(pki(p));
        v.extend_from_slice(extra);
        v
    };
    let spawn = |name: &str, v: Vec<String>| Daemon::spawn(dir, name, &v);
    // m first (it has no list); a dials m, m dials a, b dials a.
    let m = spawn("m", args("m", &[]));
    let m_port = m.port();
    let a = spawn("a", args("a", &["--revoked".into(), "h.revoked".into(), "--connect".into(), format!("127.0.0.1:{m_port}")]));
    let a_port = a.port();
    let m2 = spawn("m2", args("m", &["--connect".into(), format!("127.0.0.1:{a_port}")]));
    m2.port();
    let b = spawn("b", args("b", &["--connect".into(), format!("127.0.0.1:{a_port}")]));
    b.port();
    // b gets in.
    let found = a.json();
    assert_eq!((found["neighbour"].as_str(), found["name"].as_str()), (Some("found"), Some("b")), "{found}");
    // Both directions were tried and refused: a's dial to m and m2's dial to a.
    let deadline = Instant::now() + GUARD;
    loop {
        let log = a.log();
        let refused_in = log.lines().any(|l| l.contains("refused incoming connection") && l.contains("Revoked"));
        let refused_out = log.lines().any(|l| l.contains("connection refused") && l.contains("Revoked"));
        if refused_in && refused_out {
            break;
        }
        assert!(Instant::now() < deadline, "a's log shows no refusal both ways:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    for (who, d) in [("a", &a), ("m", &m), ("m2", &m2)] {
        for l in d.drain() {
            assert!(l["name"] != "m" && !(who != "a" && l["neighbour"] == "found"), "{who} printed {l}");
        }
    }
}
