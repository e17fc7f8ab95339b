//! Running a node in production: `partybus status` over the control socket,
//! reload (SIGHUP, `status --reload`), certificate rotation, systemd's
//! readiness notifications. Real processes on loopback.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_partybus");
/// Failure guard for waits (never a performance bound).
const GUARD: Duration = Duration::from_secs(20);

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("RUST_LOG", "warn").stdin(Stdio::null()).output().expect("run partybus")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "partybus {args:?}: {}{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

/// Hood "h" (10 years) in a temp dir.
fn hood() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    ok(&["hood", "create", "h", "--dir", d.path().to_str().unwrap(), "--days", "3650"]);
    d
}

fn peer(dir: &Path, name: &str, days: u32) {
    ok(&["peer", "create", "h", name, "--dir", dir.to_str().unwrap(), "--days", &days.to_string()]);
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Flags for peer `name` of the hood in `dir`, on loopback, any port.
fn pki(dir: &Path, name: &str) -> Vec<String> {
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
fn config(dir: &Path, file: &str, name: &str, extra: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(
        &p,
        format!("ca = \"h.crt\"\ncert = \"h.{name}.crt\"\nkey = \"h.{name}.key\"\nport = \"0\"\nbind = \"127.0.0.1\"\n{extra}"),
    )
    .unwrap();
    p
}

/// A long-running child whose stdout lines arrive on a channel; killed on drop.
struct Daemon {
    child: Child,
    lines: Receiver<String>,
}

impl Daemon {
    fn spawn(args: &[String], env: &[(&str, &str)]) -> Daemon {
        Self::spawn_with_stdin(args, env, false)
    }
    fn spawn_with_stdin(args: &[String], env: &[(&str, &str)], stdin: bool) -> Daemon {
        Self::spawn_full(args, env, stdin, None)
    }
    /// `stderr`: a file for the child's logs.
    fn spawn_full(args: &[String], env: &[(&str, &str)], stdin: bool, stderr: Option<&Path>) -> Daemon {
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
    fn port(&self) -> u16 {
        let l = self.lines.recv_timeout(GUARD).expect("the ready line");
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        v["ready"]["port"].as_u64().unwrap_or_else(|| panic!("no port in {l}")) as u16
    }
    fn signal(&self, sig: &str) {
        // It may have exited already (a second TERM).
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
    }
    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    fn term(mut self) -> std::process::ExitStatus {
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
fn status(socket_args: &[&str]) -> Value {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(socket_args);
    serde_json::from_str(&ok(&args)).unwrap()
}

/// Polls `partybus status` until `cond` holds (or fails after [`GUARD`], showing the last status).
fn status_until(socket_args: &[&str], what: &str, cond: impl Fn(&Value) -> bool) -> Value {
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

fn neighbour<'a>(st: &'a Value, name: &str) -> Option<&'a Value> {
    st["neighbours"].as_array().unwrap().iter().find(|n| n["name"] == name)
}

fn names(st: &Value) -> Vec<String> {
    st["neighbours"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn status_of_a_three_node_hood_shows_its_neighbours_and_event_counters() {
    let d = hood();
    let dir = d.path();
    // a's certificate expires in 10 days: status warns.
    peer(dir, "a", 10);
    peer(dir, "b", 365);
    peer(dir, "c", 365);
    let (sa, sb) = (s(&dir.join("a.sock")), s(&dir.join("b.sock")));
    let mut args = vec!["node".to_owned(), "--control".into(), sa.clone()];
    args.extend(pki(dir, "a"));
    let log = dir.join("a.log");
    let a = Daemon::spawn_full(&args, &[], false, Some(&log));
    let pa = a.port();
    let logged = std::fs::read_to_string(&log).unwrap();
    // 10 days from its creation: 9 or 10 whole days left, by the second the node looked.
    let days = |t: &str| t.contains("expires in 9 days") || t.contains("expires in 10 days");
    assert!(logged.contains("WARN") && logged.contains("this node's certificate") && days(&logged), "{logged}");
    let target = format!("127.0.0.1:{pa}");
    // b listens to "ev" (with a control socket), c emits from stdin.
    let mut args = vec!["listen".to_owned(), "--control".into(), sb.clone(), "ev".into(), "--connect".into(), target.clone()];
    args.extend(pki(dir, "b"));
    let b = Daemon::spawn(&args, &[]);
    let mut args = vec!["emit".to_owned(), "--connect".into(), target, "--wait-listeners".into(), "1".into(), "ev".into(), "-".into()];
    args.extend(pki(dir, "c"));
    let mut c = Daemon::spawn_with_stdin(&args, &[], true);
    const EVENTS: u64 = 7;
    {
        let mut stdin = c.child.stdin.take().unwrap();
        for i in 0..EVENTS {
            writeln!(stdin, "{{\"i\":{i}}}").unwrap();
        }
        // stdin stays open (held below): c stays in the hood.
        for _ in 0..EVENTS {
            let n = c.lines.recv_timeout(GUARD).expect("emit's listener count");
            assert_eq!(n, "1", "each event reached b");
        }
        for _ in 0..EVENTS {
            b.lines.recv_timeout(GUARD).expect("b prints each event");
        }
        c.child.stdin = Some(stdin);
    }

    let st = status_until(&["--control", &sb], "b sees a and c, and 7 events from c", |st| {
        names(st) == ["a", "c"] && neighbour(st, "c").unwrap()["events_in"] == EVENTS
    });
    let (from_a, from_c) = (neighbour(&st, "a").unwrap(), neighbour(&st, "c").unwrap());
    assert_eq!(st["name"], "b");
    assert_eq!(from_a["events_in"], 0);
    assert_eq!((from_a["events_out"].as_u64(), from_c["events_out"].as_u64()), (Some(0), Some(0)), "b emits nothing");
    assert!(from_c["bytes_in"].as_u64().unwrap() > 0 && from_c["bytes_out"].as_u64().unwrap() > 0, "{from_c}");
    assert_eq!(from_c["path"], "direct");
    assert!(from_c["rtt_ms"].as_f64().unwrap() > 0.0, "{from_c}");
    assert_eq!(from_c["queue_limit"], 4 << 20);
    assert_eq!(from_c["dropped"], 0);
    assert_eq!(from_a["direction"], "out", "b dialled a");
    assert!(st["warnings"].as_array().unwrap().is_empty(), "{st}");

    let st = status(&["--control", &sa]);
    assert_eq!(names(&st), ["b", "c"]);
    assert_eq!(st["port"], pa);
    assert!(st["addresses"]["local"].as_array().unwrap().iter().any(|x| *x == format!("127.0.0.1:{pa}")), "{st}");
    for n in st["neighbours"].as_array().unwrap() {
        assert_eq!((n["events_in"].as_u64(), n["events_out"].as_u64()), (Some(0), Some(0)), "a neither listens nor emits: {n}");
        assert_eq!(n["direction"], "in");
    }
    assert_eq!(st["hood"], st["hood_certificate"]["fingerprint"]);
    let warnings = st["warnings"].as_array().unwrap();
    assert!(
        warnings.len() == 1
            && warnings[0].as_str().unwrap().contains("this node's certificate")
            && (9..=10).contains(&st["certificate"]["expires_in_days"].as_i64().unwrap()),
        "a's certificate expires in 10 days: {st:#}"
    );

    // The table: a header and one row per neighbour.
    let table = ok(&["status", "--control", &sb]);
    assert!(table.contains("neighbours 2"), "{table}");
    let row_c = table.lines().find(|l| l.trim_start().starts_with("c ")).unwrap_or_else(|| panic!("no row for c:\n{table}"));
    assert!(row_c.contains("direct") && row_c.split_whitespace().any(|w| w == "7"), "{row_c}");
    assert!(table.contains("EVTS IN"), "{table}");
    let table = ok(&["status", "--control", &sa]);
    assert!(table.contains("WARNING") && days(&table), "{table}");

    // listen does not reload.
    let o = run(&["status", "--control", &sb, "--reload"]);
    assert!(!o.status.success() && text(&o.stderr).contains("only `partybus node`"), "{}", text(&o.stderr));
    drop(c);
    assert!(b.term().success());
    assert!(a.term().success());
    assert!(!dir.join("a.sock").exists() && !dir.join("b.sock").exists(), "sockets removed on exit");
}

#[test]
fn sighup_adds_a_static_peer_and_an_invalid_config_leaves_the_node_as_it_was() {
    let d = hood();
    let dir = d.path();
    peer(dir, "a", 365);
    peer(dir, "b", 365);
    let mut args = vec!["node".to_owned()];
    args.extend(pki(dir, "b"));
    args.extend(["--control".into(), s(&dir.join("b.sock"))]);
    let b = Daemon::spawn(&args, &[]);
    let pb = b.port();
    // a: a config file and no --control: status finds the socket from the file's path.
    // Its log filter comes from the file (no RUST_LOG).
    let cfg = config(dir, "a.toml", "a", "log = \"warn\"\n");
    let cfg_s = s(&cfg);
    let log = dir.join("a.log");
    let mut a = Daemon::spawn_full(&["node".into(), "--config".into(), cfg_s.clone()], &[("RUST_LOG", "")], false, Some(&log));
    a.port();
    let by_config = ["--config", cfg_s.as_str()];
    assert!(names(&status(&by_config)).is_empty());

    // A second node on the same socket is refused, naming it.
    let o = run(&["node", "--config", &cfg_s]);
    assert!(!o.status.success() && text(&o.stderr).contains("another node is running with the control socket"), "{}", text(&o.stderr));

    // SIGHUP with b added to the static peer list: a dials it.
    config(dir, "a.toml", "a", &format!("log = \"warn\"\n[discovery]\nconnect = [\"127.0.0.1:{pb}\"]\n"));
    a.signal("HUP");
    let st = status_until(&by_config, "a connects to b after SIGHUP", |st| names(st) == ["b"]);
    let b_id = neighbour(&st, "b").unwrap()["id"].clone();

    // An invalid config: refused with the reason, the node goes on as before.
    config(dir, "a.toml", "a", &format!("[discovery]\nconnect = [\"127.0.0.1:{pb}\"]\n[limits]\nfull_policy = \"sometimes\"\n"));
    let o = run(&["status", "--config", &cfg_s, "--reload"]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("full_policy") && err.contains("sometimes"), "{err}");
    std::fs::write(&cfg, "prot = 1\n").unwrap();
    let o = run(&["status", "--config", &cfg_s, "--reload"]);
    assert!(!o.status.success() && text(&o.stderr).contains("prot"), "{}", text(&o.stderr));
    a.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(a.alive(), "an invalid config does not stop the node");
    let st = status(&by_config);
    assert_eq!(neighbour(&st, "b").map(|n| n["id"].clone()), Some(b_id), "still connected to the same b: {st}");

    // A good config again: a reload reports what it applied. The log
    // filter goes to debug (a new static target makes debug lines at once),
    // and a change to mDNS needs a restart.
    assert!(!std::fs::read_to_string(&log).unwrap().contains("DEBUG"), "no debug lines before");
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let good =
        format!("log = \"debug\"\n[discovery]\nconnect = [\"127.0.0.1:{pb}\", \"{free}\"]\nmdns = true\n[limits]\nqueue_limit = 100000\n");
    config(dir, "a.toml", "a", &good);
    let out = ok(&["status", "--config", &cfg_s, "--reload", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let applied: Vec<&str> = v["applied"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(applied.iter().any(|x| x.starts_with("limits: queue_limit 100000")), "{v}");
    assert!(applied.contains(&"log: debug") && applied.iter().any(|x| x.starts_with("connect: added")), "{v}");
    assert_eq!(v["restart_needed"], serde_json::json!(["mdns: false -> true"]));
    let t = Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains("DEBUG") {
        assert!(t.elapsed() < GUARD, "no debug line after the reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(a.term().success());
    drop(b);
    // The socket went with the node: a new node on the same config starts.
    let c = Daemon::spawn(&["node".into(), "--config".into(), cfg_s.clone()], &[]);
    c.port();
    assert!(c.term().success());
}

#[test]
fn a_stale_control_socket_is_replaced() {
    let d = hood();
    let dir = d.path();
    peer(dir, "a", 365);
    let sock = dir.join("a.sock");
    // A socket nobody listens on (a node that was killed).
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut args = vec!["node".to_owned(), "--control".into(), s(&sock)];
    args.extend(pki(dir, "a"));
    let a = Daemon::spawn(&args, &[]);
    a.port();
    assert_eq!(status(&["--control", &s(&sock)])["name"], "a");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(a.term().success());
}

#[test]
fn a_certificate_rotated_by_reload_keeps_the_node_connected_and_new_handshakes_present_it() {
    let d = hood();
    let dir = d.path();
    peer(dir, "a", 365);
    peer(dir, "b", 365);
    peer(dir, "c", 365);
    let fingerprint = |file: &str| -> String {
        let v: Value = serde_json::from_str(&ok(&["cert", "show", &s(&dir.join(file)), "--json"])).unwrap();
        v["fingerprint"].as_str().unwrap().to_owned()
    };
    let old = fingerprint("h.a.crt");
    let cfg = config(dir, "a.toml", "a", "");
    let cfg_s = s(&cfg);
    let a = Daemon::spawn(&["node".into(), "--config".into(), cfg_s.clone(), "--control".into(), s(&dir.join("a.sock"))], &[]);
    let pa = a.port();
    let by_a = ["--control".to_owned(), s(&dir.join("a.sock"))];
    let by_a: Vec<&str> = by_a.iter().map(String::as_str).collect();
    let mut args = vec!["node".to_owned(), "--connect".into(), format!("127.0.0.1:{pa}"), "--control".into(), s(&dir.join("b.sock"))];
    args.extend(pki(dir, "b"));
    let b = Daemon::spawn(&args, &[]);
    b.port();
    let by_b = ["--control".to_owned(), s(&dir.join("b.sock"))];
    let by_b: Vec<&str> = by_b.iter().map(String::as_str).collect();
    let st = status_until(&by_b, "b connects to a", |st| names(st) == ["a"]);
    assert_eq!(neighbour(&st, "a").unwrap()["cert"], old.as_str());
    let a_id = neighbour(&st, "a").unwrap()["id"].clone();

    // A new certificate for a (same hood, same name), in another folder.
    let new_dir = dir.join("new");
    std::fs::create_dir(&new_dir).unwrap();
    for f in ["h.crt", "h.key"] {
        std::fs::copy(dir.join(f), new_dir.join(f)).unwrap();
    }
    peer(&new_dir, "a", 365);
    let new = fingerprint("new/h.a.crt");
    assert_ne!(old, new);

    // A certificate for another name is refused, and so is one of another hood.
    let wrong = "cert = \"h.c.crt\"\nkey = \"h.c.key\"\n";
    std::fs::write(&cfg, format!("ca = \"h.crt\"\n{wrong}port = \"0\"\nbind = \"127.0.0.1\"\n")).unwrap();
    let o = run(&["status", "--config", &cfg_s, "--control", by_a[1], "--reload"]);
    assert!(!o.status.success() && text(&o.stderr).contains("keeps the name"), "{}", text(&o.stderr));
    let other = tempfile::tempdir().unwrap();
    ok(&["hood", "create", "h", "--dir", other.path().to_str().unwrap()]);
    peer(other.path(), "a", 365);
    let o_s = |f: &str| s(&other.path().join(f));
    std::fs::write(
        &cfg,
        format!("ca = {:?}\ncert = {:?}\nkey = {:?}\nport = \"0\"\nbind = \"127.0.0.1\"\n", o_s("h.crt"), o_s("h.a.crt"), o_s("h.a.key")),
    )
    .unwrap();
    let o = run(&["status", "--control", by_a[1], "--reload"]);
    assert!(!o.status.success() && text(&o.stderr).contains("cannot change hoods"), "{}", text(&o.stderr));
    // A key that does not match the certificate.
    std::fs::write(&cfg, "ca = \"h.crt\"\ncert = \"new/h.a.crt\"\nkey = \"h.a.key\"\nport = \"0\"\nbind = \"127.0.0.1\"\n").unwrap();
    let o = run(&["status", "--control", by_a[1], "--reload"]);
    assert!(!o.status.success() && text(&o.stderr).contains("key"), "{}", text(&o.stderr));
    assert_eq!(status(&by_a)["certificate"]["fingerprint"], old.as_str(), "refused reloads change nothing");

    // The rotation.
    std::fs::write(&cfg, "ca = \"h.crt\"\ncert = \"new/h.a.crt\"\nkey = \"new/h.a.key\"\nport = \"0\"\nbind = \"127.0.0.1\"\n").unwrap();
    let out = ok(&["status", "--control", by_a[1], "--reload"]);
    assert!(out.contains("applied: certificate"), "{out}");
    assert_eq!(status(&by_a)["certificate"]["fingerprint"], new.as_str());

    // c, connecting now, sees the new certificate; b keeps its connection (and the old one).
    let mut args = vec!["node".to_owned(), "--connect".into(), format!("127.0.0.1:{pa}"), "--control".into(), s(&dir.join("c.sock"))];
    args.extend(pki(dir, "c"));
    let c = Daemon::spawn(&args, &[]);
    c.port();
    let by_c = ["--control".to_owned(), s(&dir.join("c.sock"))];
    let by_c: Vec<&str> = by_c.iter().map(String::as_str).collect();
    let st = status_until(&by_c, "c connects to a", |st| neighbour(st, "a").is_some());
    assert_eq!(neighbour(&st, "a").unwrap()["cert"], new.as_str(), "a new handshake presents the new certificate");
    let st = status_until(&by_b, "b meets c", |st| names(st) == ["a", "c"]);
    let a_at_b = neighbour(&st, "a").unwrap();
    assert_eq!((&a_at_b["id"], &a_at_b["cert"]), (&a_id, &Value::from(old.as_str())), "b's connection to a stayed up");
    for d in [c, b, a] {
        assert!(d.term().success());
    }
}

#[test]
fn the_node_tells_systemd_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let d = hood();
    let dir = d.path();
    peer(dir, "a", 365);
    let notify = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(GUARD)).unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification within the guard time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let cfg = config(dir, "a.toml", "a", "");
    let control = s(&dir.join("a.sock"));
    let a =
        Daemon::spawn(&["node".into(), "--config".into(), s(&cfg), "--control".into(), control.clone()], &[("NOTIFY_SOCKET", &s(&notify))]);
    let ready = recv();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means listening: the ready line is out and the control socket answers.
    let port = a.port();
    assert_eq!(status(&["--control", &control])["port"], port);
    a.signal("HUP");
    let reloading = recv();
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    assert!(recv().lines().any(|l| l == "READY=1"), "READY=1 after the reload");
    a.signal("TERM");
    assert_eq!(recv(), "STOPPING=1");
    assert!(a.term().success());
}

#[test]
fn control_clients_that_hang_or_send_too_much_do_not_stall_the_node() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let d = hood();
    let dir = d.path();
    peer(dir, "a", 365);
    let sock = dir.join("a.sock");
    let mut args = vec!["node".to_owned(), "--control".into(), s(&sock)];
    args.extend(pki(dir, "a"));
    let a = Daemon::spawn(&args, &[]);
    a.port();
    let answer = |send: &[u8]| -> Value {
        let mut c = UnixStream::connect(&sock).unwrap();
        c.set_read_timeout(Some(GUARD)).unwrap();
        let _ = c.write_all(send);
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let too_long = answer(&[b'x'; 10_000]);
    assert!(too_long["ok"] == false && too_long["error"].as_str().unwrap().contains("at most 4096 bytes"), "{too_long}");
    let bogus = answer(b"{\"cmd\":\"shutdown\"}\n");
    assert!(bogus["ok"] == false && bogus["error"].as_str().unwrap().contains("bad request"), "{bogus}");

    // One client that says nothing: others are served at once.
    let idle = UnixStream::connect(&sock).unwrap();
    let t = Instant::now();
    assert_eq!(status(&["--control", &s(&sock)])["name"], "a");
    assert!(t.elapsed() < Duration::from_secs(2), "status waited {:?} behind an idle client", t.elapsed());
    // More idle clients than the node serves at a time: they are dropped
    // after 5 s, and status gets through then.
    let many: Vec<_> = (0..10).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    let t = Instant::now();
    assert_eq!(status(&["--control", &s(&sock)])["name"], "a");
    assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
    drop((idle, many));
    assert!(a.term().success());
}
