//! Running a node in production: `partybus status` over the control
//! socket, and the socket's own behaviour (stale files, clients that hang or
//! send too much). Real processes on loopback.

mod procs;

use std::io::Write;
use std::time::{Duration, Instant};

use procs::*;
use serde_json::Value;

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
