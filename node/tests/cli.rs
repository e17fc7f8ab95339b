//! The `partybus` command: PKI files, `cert show`, `node`, `listen` +
//! `emit`, config files. Runs the real binary on loopback.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_partybus");
const GUARD: Duration = Duration::from_secs(20);

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(dir).env("RUST_LOG", "warn").stdin(Stdio::null()).output().expect("run partybus")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The keys of a JSON object line in the order they appear, nested ones as
/// `outer.inner` (a `payload` is the event's own and not looked into).
/// serde_json's `Value` may sort keys, so this reads the text itself.
fn key_paths(line: &str) -> Vec<String> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct Keys<'a> {
        out: &'a mut Vec<String>,
        prefix: String,
    }
    impl<'de> DeserializeSeed<'de> for Keys<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            while let Some(k) = m.next_key::<String>()? {
                let path = if self.prefix.is_empty() { k.clone() } else { format!("{}.{k}", self.prefix) };
                self.out.push(path.clone());
                if k == "payload" {
                    m.next_value::<IgnoredAny>()?;
                } else {
                    m.next_value_seed(Keys { out: &mut *self.out, prefix: path })?;
                }
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            while s.next_element::<IgnoredAny>()?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let mut out = Vec::new();
    let mut d = serde_json::Deserializer::from_str(line);
    Keys { out: &mut out, prefix: String::new() }.deserialize(&mut d).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    d.end().unwrap_or_else(|e| panic!("{e}: {line:?}"));
    out
}

/// What kind of output line this is: "ready", "found", "lost", "path" or "event".
fn line_kind(v: &serde_json::Value) -> String {
    if v.get("ready").is_some() {
        "ready".into()
    } else if v.get("path").is_some() {
        "path".into()
    } else if let Some(k) = v["neighbour"].as_str() {
        k.into()
    } else if v.get("event").is_some() {
        "event".into()
    } else {
        panic!("unknown line {v}")
    }
}

/// The example output lines in README.md's `json` blocks, by kind.
fn documented_lines() -> std::collections::HashMap<String, String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let mut in_json = false;
    let mut found = std::collections::HashMap::new();
    for l in readme.lines().map(str::trim) {
        if l.starts_with("```") {
            in_json = l == "```json";
        } else if in_json && l.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("README line {l:?} is not JSON: {e}"));
            assert!(found.insert(line_kind(&v), l.to_owned()).is_none(), "two README examples of one kind: {l}");
        }
    }
    found
}

/// Asserts that `line`, printed by the binary, has the keys (and their order)
/// of README.md's example line of its kind.
fn assert_documented(line: &str) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let kind = line_kind(&v);
    let doc = documented_lines();
    let example = doc.get(&kind).unwrap_or_else(|| panic!("README.md shows no {kind:?} line; the binary printed {line}"));
    assert_eq!(key_paths(line), key_paths(example), "the binary printed\n  {line}\nREADME.md documents\n  {example}");
}

#[test]
fn the_readme_documents_every_kind_of_line() {
    let mut kinds: Vec<String> = documented_lines().into_keys().collect();
    kinds.sort();
    assert_eq!(kinds, ["event", "found", "lost", "path", "ready"]);
    // The key reader sees order and nesting (the comparison above relies on it).
    assert_eq!(key_paths(r#"{"b":1,"a":{"y":[1,{"q":2}],"x":null},"payload":{"z":1}}"#), ["b", "a", "a.y", "a.x", "payload"]);
}

/// A hood "h" with peers in a temp dir.
fn hood_with(peers: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let o = run(&["hood", "create", "h", "--dir", d.path().to_str().unwrap(), "--days", "30"], d.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    for p in peers {
        let o = run(&["peer", "create", "h", p, "--dir", d.path().to_str().unwrap(), "--days", "30"], d.path());
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    d
}

fn pki_args(dir: &Path, peer: &str) -> Vec<String> {
    pki_args_bind(dir, peer, "127.0.0.1")
}

fn pki_args_bind(dir: &Path, peer: &str, bind: &str) -> Vec<String> {
    let p = |f: String| dir.join(f).to_string_lossy().into_owned();
    vec![
        "--ca".into(),
        p("h.crt".into()),
        "--cert".into(),
        p(format!("h.{peer}.crt")),
        "--key".into(),
        p(format!("h.{peer}.key")),
        "--bind".into(),
        bind.into(),
    ]
}

/// A long-running child whose stdout lines arrive on a channel; killed on drop.
struct Daemon {
    child: Child,
    lines: Receiver<String>,
}

impl Daemon {
    fn spawn(args: &[String]) -> Daemon {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
        Daemon { child, lines }
    }
    fn line(&self) -> String {
        self.lines.recv_timeout(GUARD).expect("a line from the child")
    }
    /// The next line as JSON.
    /// The next line that is not a path line (those come with every
    /// `found` line; `node_prints_the_ready_line...` checks them).
    fn json(&self) -> serde_json::Value {
        loop {
            let l = self.line();
            let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            if v.get("path").is_none() {
                return v;
            }
        }
    }
    /// The `ready` line of `partybus node`: (port, id).
    fn ready(&self) -> (u16, String) {
        let v = self.json();
        let port = v["ready"]["port"].as_u64().unwrap_or_else(|| panic!("no port in {v}"));
        (u16::try_from(port).unwrap(), v["ready"]["id"].as_str().unwrap().to_owned())
    }
    /// SIGTERM, then the exit status (the child leaves cleanly).
    fn term(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..200 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the child did not exit after SIGTERM");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn hood_and_peer_create_write_files_with_modes_and_never_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let o = run(&["hood", "create", "lab", "--dir", dir], d.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let printed: Vec<PathBuf> = text(&o.stdout).lines().map(PathBuf::from).collect();
    assert_eq!(printed, [d.path().join("lab.crt"), d.path().join("lab.key")]);
    let o = run(&["peer", "create", "lab", "alice", "--dir", dir, "--key-type", "ed25519"], d.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let printed: Vec<PathBuf> = text(&o.stdout).lines().map(PathBuf::from).collect();
    assert_eq!(printed, [d.path().join("lab.alice.crt"), d.path().join("lab.alice.key")]);
    for f in ["lab.crt", "lab.key", "lab.alice.crt", "lab.alice.key"] {
        let s = std::fs::read_to_string(d.path().join(f)).unwrap();
        assert!(s.starts_with("-----BEGIN "), "{f} is PEM");
    }
    #[cfg(unix)]
    {
        assert_eq!(mode(&d.path().join("lab.key")), 0o600);
        assert_eq!(mode(&d.path().join("lab.alice.key")), 0o600);
    }

    // Overwrite refused, naming the file; nothing changed.
    let before = std::fs::read(d.path().join("lab.key")).unwrap();
    let o = run(&["hood", "create", "lab", "--dir", dir], d.path());
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("lab.crt") || err.contains("lab.key"), "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(d.path().join("lab.key")).unwrap(), before);
    let o = run(&["peer", "create", "lab", "alice", "--dir", dir], d.path());
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("lab.alice.crt") || err.contains("lab.alice.key"), "{err}");

    // A peer of a hood that does not exist: an error naming the missing file.
    let o = run(&["peer", "create", "nohood", "bob", "--dir", dir], d.path());
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("nohood"), "{}", text(&o.stderr));
}

#[test]
fn cert_show_json_has_the_documented_fields() {
    let d = hood_with(&["alice"]);
    let show = |f: &str| {
        let o = run(&["cert", "show", "--json", d.path().join(f).to_str().unwrap()], d.path());
        assert!(o.status.success(), "{}", text(&o.stderr));
        let s = text(&o.stdout);
        assert_eq!(s.lines().count(), 1, "one JSON object: {s}");
        serde_json::from_str::<serde_json::Value>(&s).unwrap()
    };
    let hood = show("h.crt");
    let peer = show("h.alice.crt");
    for v in [&hood, &peer] {
        for k in ["subject", "issuer", "serial", "not_before", "not_after", "key_type", "is_ca", "fingerprint", "cn", "o"] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["fingerprint"].as_str().unwrap().len(), 64);
        assert_eq!(v["key_type"], "ECDSA P-256");
    }
    assert_eq!(hood["is_ca"], true);
    assert_eq!(hood["cn"], "h");
    assert_eq!(peer["is_ca"], false);
    assert_eq!(peer["cn"], "alice");
    assert_eq!(peer["o"], "h");
    assert_eq!(peer["issuer"], hood["subject"]);
    assert_ne!(peer["fingerprint"], hood["fingerprint"]);
    // Text form too.
    let o = run(&["cert", "show", d.path().join("h.alice.crt").to_str().unwrap()], d.path());
    assert!(o.status.success());
    assert!(text(&o.stdout).contains("alice"));
    // A missing file is an error naming it.
    let o = run(&["cert", "show", "nope.crt"], d.path());
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("nope.crt"), "{}", text(&o.stderr));
}

#[test]
fn node_prints_the_ready_line_and_neighbour_lines_and_leaves_on_sigterm() {
    let d = hood_with(&["a", "b"]);
    let hood_fp = {
        let o = run(&["cert", "show", "--json", d.path().join("h.crt").to_str().unwrap()], d.path());
        serde_json::from_str::<serde_json::Value>(&text(&o.stdout)).unwrap()["fingerprint"].clone()
    };
    let mut args = vec!["node".to_owned(), "--port".into(), "0".into()];
    args.extend(pki_args(d.path(), "a"));
    let a = Daemon::spawn(&args);
    let line = a.line();
    assert_documented(&line);
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let r = &ready["ready"];
    assert_eq!(r["name"], "a");
    assert_eq!(r["fingerprint"], hood_fp);
    assert_eq!(r["id"].as_str().unwrap().len(), 32);
    let port = r["port"].as_u64().unwrap();
    assert!(port > 0);

    let mut args = vec!["node".to_owned(), "--port".into(), "0".into(), "--connect".into(), format!("127.0.0.1:{port}")];
    args.extend(pki_args(d.path(), "b"));
    let b = Daemon::spawn(&args);
    let b_ready: serde_json::Value = serde_json::from_str(&b.line()).unwrap();
    let line = a.line();
    assert_documented(&line);
    let found: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(found["neighbour"], "found");
    assert_eq!(found["name"], "b");
    assert_eq!(found["id"], b_ready["ready"]["id"]);
    assert_eq!(found["direction"], "in");
    assert_eq!(found["count"], 1);
    // Then its path: on loopback, direct, at b's address.
    let line = a.line();
    assert_documented(&line);
    let path: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(path["path"], "direct", "{path}");
    assert_eq!(path["id"], found["id"]);
    assert_eq!(path["addr"], found["addr"]);
    assert!(path["via"].is_null(), "{path}");
    let found_b: serde_json::Value = serde_json::from_str(&b.line()).unwrap();
    assert_eq!(found_b["direction"], "out");
    assert_eq!(found_b["addr"], format!("127.0.0.1:{port}"));

    // b leaves cleanly on SIGTERM: a sees it lost with reason "left".
    assert!(b.term().success());
    let line = a.json().to_string();
    assert_documented(&line);
    let lost: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(lost["neighbour"], "lost");
    assert_eq!(lost["reason"], "left");
    assert_eq!(lost["count"], 0);
    assert!(a.term().success());
}

#[test]
fn listen_and_emit_round_trip_with_the_documented_line_formats() {
    let d = hood_with(&["ear", "mouth"]);
    let port = free_udp_port();
    let mut args = vec!["listen".to_owned(), "--port".into(), port.to_string()];
    args.extend(pki_args(d.path(), "ear"));
    // chat.lobby overlaps chat.+: such events must still be printed once.
    args.extend(["chat.+".to_owned(), "$SYS.#".to_owned(), "chat.lobby".to_owned()]);
    let ear = Daemon::spawn(&args);

    let emit = |extra: &[&str], stdin: Option<&str>| -> Output {
        let mut a: Vec<String> = vec!["emit".into(), "--port".into(), "0".into(), "--connect".into(), format!("127.0.0.1:{port}")];
        a.extend(pki_args(d.path(), "mouth"));
        a.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(BIN)
            .args(&a)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut sin = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            sin.write_all(s.as_bytes()).unwrap();
        }
        drop(sin);
        child.wait_with_output().unwrap()
    };

    let o = emit(
        &["--wait-listeners", "2", "--timeout", "20s", "chat.lobby", r#"{"text":"hi","n":[1,2.5,null],"b":{"$base64":"AAH/"}}"#],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(out.lines().last(), Some("2"), "the count (two matching listeners) alone on the last line: {out:?}");

    let line = ear.line();
    assert_documented(&line);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["event"], "chat.lobby");
    assert_eq!(v["source"]["name"], "mouth");
    assert_eq!(v["source"]["id"].as_str().unwrap().len(), 32);
    assert_eq!(v["payload"], serde_json::json!({"text": "hi", "n": [1, 2.5, null], "b": {"$base64": "AAH/"}}));
    // The exact shape: event, then source {id, name}, then payload.
    let id = v["source"]["id"].as_str().unwrap();
    let payload = serde_json::to_string(&v["payload"]).unwrap();
    assert_eq!(line, format!(r#"{{"event":"chat.lobby","source":{{"id":"{id}","name":"mouth"}},"payload":{payload}}}"#));

    // One payload per stdin line with '-'; blank lines skipped.
    let o = emit(&["--wait-listeners", "1", "--timeout", "20s", "$SYS.tick", "-"], Some("1\n\n\"two\"\n{\"three\":3}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().collect::<Vec<_>>(), ["1", "1", "1"]);
    // (A second chat.lobby line would show up here first.)
    let got: Vec<serde_json::Value> =
        (0..3).map(|_| serde_json::from_str::<serde_json::Value>(&ear.line()).unwrap()["payload"].clone()).collect();
    assert_eq!(got, [serde_json::json!(1), serde_json::json!("two"), serde_json::json!({"three": 3})]);

    // Not JSON on stdin: an error naming the line.
    let o = emit(&["--wait-listeners", "1", "--timeout", "20s", "$SYS.tick", "-"], Some("1\nnope\n"));
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("line 2"), "{}", text(&o.stderr));

    // Nobody listens to this one: it emits anyway after the timeout, prints 0, exits 3.
    let o = emit(&["--wait-listeners", "1", "--timeout", "1s", "other.event", "null"], None);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().last(), Some("0"));

    // Bad event name: refused before joining, naming the character.
    let o = emit(&["bad name"], None);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("' '"), "{}", text(&o.stderr));
    drop(ear);
}

#[test]
fn a_config_file_with_an_unknown_field_is_an_error_naming_file_and_field() {
    let d = hood_with(&["c"]);
    let cfg = d.path().join("node.toml");
    std::fs::write(&cfg, "ca = \"h.crt\"\ncert = \"h.c.crt\"\nkey = \"h.c.key\"\nprot = \"4816\"\n").unwrap();
    let o = run(&["node", "--config", cfg.to_str().unwrap()], d.path());
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("node.toml"), "{err}");
    assert!(err.contains("prot"), "{err}");

    // Nested sections too.
    std::fs::write(&cfg, "ca = \"h.crt\"\ncert = \"h.c.crt\"\nkey = \"h.c.key\"\n[limits]\nqueue_limt = 5\n").unwrap();
    let o = run(&["node", "--config", cfg.to_str().unwrap()], d.path());
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("node.toml") && err.contains("queue_limt"), "{err}");

    // A good file (relative paths resolved against its folder) starts a node.
    std::fs::write(&cfg, "ca = \"h.crt\"\ncert = \"h.c.crt\"\nkey = \"h.c.key\"\nport = \"0\"\nbind = \"127.0.0.1\"\n").unwrap();
    let n = Daemon::spawn(&["node".into(), "--config".into(), cfg.to_string_lossy().into_owned()]);
    let ready: serde_json::Value = serde_json::from_str(&n.line()).unwrap();
    assert_eq!(ready["ready"]["name"], "c");
    assert!(n.term().success());
}

/// `partybus node` for `peer` with `extra` arguments.
fn node_args(d: &Path, peer: &str, bind: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["node".to_owned(), "--port".into(), "0".into()];
    args.extend(pki_args_bind(d, peer, bind));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn connect_takes_an_ipv6_address_in_brackets_and_a_dns_name() {
    let d = hood_with(&["a", "b", "c", "e"]);
    // IPv6 loopback.
    let a = Daemon::spawn(&node_args(d.path(), "a", "::1", &[]));
    let (pa, _) = a.ready();
    let b = Daemon::spawn(&node_args(d.path(), "b", "::1", &["--connect", &format!("[::1]:{pa}")]));
    let (pb, _) = b.ready();
    let found = b.json();
    assert_eq!((found["neighbour"].as_str(), found["name"].as_str()), (Some("found"), Some("a")), "{found}");
    assert_eq!(found["addr"], format!("[::1]:{pa}"), "{found}");
    assert_eq!(found["direction"], "out");
    let found = a.json();
    assert_eq!(found["addr"], format!("[::1]:{pb}"), "{found}");
    assert_eq!(found["direction"], "in");

    // A DNS name: `localhost`, which resolves on this host without a network.
    let c = Daemon::spawn(&node_args(d.path(), "c", "127.0.0.1", &[]));
    let (pc, _) = c.ready();
    let e = Daemon::spawn(&node_args(d.path(), "e", "127.0.0.1", &["--connect", &format!("localhost:{pc}")]));
    e.ready();
    let found = e.json();
    assert_eq!((found["name"].as_str(), found["direction"].as_str()), (Some("c"), Some("out")), "{found}");
    assert_eq!(found["addr"], format!("127.0.0.1:{pc}"), "{found}");
    for n in [a, b, c, e] {
        assert!(n.term().success());
    }

    // An IPv6 address without brackets: refused at once, saying how to write it.
    let o = run(
        &node_args(d.path(), "b", "::1", &["--connect", &format!("::1:{pa}")]).iter().map(String::as_str).collect::<Vec<_>>(),
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains(&format!("[::1]:{pa}")), "{}", text(&o.stderr));
}

#[test]
fn a_connect_flag_replaces_the_config_files_connect_list() {
    let d = hood_with(&["a", "b", "c"]);
    let a = Daemon::spawn(&node_args(d.path(), "a", "127.0.0.1", &[]));
    let (pa, _) = a.ready();
    let b = Daemon::spawn(&node_args(d.path(), "b", "127.0.0.1", &[]));
    let (pb, _) = b.ready();
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, format!("[discovery]\nconnect = [\"127.0.0.1:{pa}\"]\nconnect_interval = \"200ms\"\n")).unwrap();
    let cfg = cfg.to_string_lossy().into_owned();

    // The file alone: c dials a.
    let c = Daemon::spawn(&node_args(d.path(), "c", "127.0.0.1", &["--config", &cfg]));
    c.ready();
    assert_eq!(c.json()["name"], "a");
    assert!(c.term().success());
    assert_eq!(a.json()["neighbour"], "found");
    assert_eq!(a.json()["neighbour"], "lost");

    // The flag: c dials b only. The file's list, were it kept, would be
    // dialled at start and every 200 ms; a and b do not know each other.
    let c = Daemon::spawn(&node_args(d.path(), "c", "127.0.0.1", &["--config", &cfg, "--connect", &format!("127.0.0.1:{pb}")]));
    c.ready();
    assert_eq!(c.json()["name"], "b");
    // Nothing but path lines for 1.5 s.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(l) = c.lines.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
        assert!(l.contains("\"path\""), "c found another neighbour: {l}");
    }
    assert!(a.lines.try_recv().is_err(), "a was dialled");
    for n in [a, b, c] {
        assert!(n.term().success());
    }
}

#[test]
fn emit_without_wait_listeners_reaches_a_listener_it_only_hears_of_through_gossip() {
    let d = hood_with(&["hub", "ear", "mouth"]);
    // hub: no listeners; ear listens and knows hub only; mouth knows hub only.
    let hub = Daemon::spawn(&node_args(d.path(), "hub", "127.0.0.1", &[]));
    let (ph, _) = hub.ready();
    let mut args = vec!["listen".to_owned(), "--port".into(), "0".into(), "--connect".into(), format!("127.0.0.1:{ph}")];
    args.extend(pki_args(d.path(), "ear"));
    args.push("chat.+".into());
    let ear = Daemon::spawn(&args);
    assert_eq!(hub.json()["name"], "ear");
    for round in 0..3 {
        let mut a: Vec<String> = vec!["emit".into(), "--port".into(), "0".into(), "--connect".into(), format!("127.0.0.1:{ph}")];
        a.extend(pki_args(d.path(), "mouth"));
        a.extend(["chat.lobby".to_owned(), format!("{round}")]);
        let started = std::time::Instant::now();
        let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), d.path());
        assert!(o.status.success(), "{}", text(&o.stderr));
        // The listener is reached: mouth waited for gossip, the connection to ear and ear's subscription.
        assert_eq!(text(&o.stdout).lines().last(), Some("1"), "round {round}: {}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_str(&ear.line()).unwrap();
        assert_eq!((v["event"].as_str(), v["payload"].as_i64()), (Some("chat.lobby"), Some(round)), "{v}");
        // Bounded: the first neighbour, then at most 3 s of settling (and the leave).
        eprintln!("round {round}: emit took {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
    drop(ear);
    assert!(hub.term().success());
}

/// The `--flags` in `text`, in order of first appearance.
fn flags_in(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        if word.starts_with("--") && word.len() > 2 && !out.iter().any(|w| w == word) {
            out.push(word.to_owned());
        }
    }
    out
}

#[test]
fn the_readme_lists_exactly_the_node_options_of_node_help() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let start = readme.find("All node commands share the same options:").expect("README's list of node options");
    let list = &readme[start..start + readme[start..].find("`.").expect("the list ends with `.")];
    let mut documented = flags_in(list);
    let o = run(&["node", "--help"], Path::new("."));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let help = text(&o.stdout);
    // Option lines of clap's help: "  -h, --help ..." or "      --ca <FILE> ...".
    let mut offered: Vec<String> = help
        .lines()
        .filter_map(|l| l.trim_start().trim_start_matches("-h, ").split_whitespace().next())
        .filter(|w| w.starts_with("--") && *w != "--help")
        .map(str::to_owned)
        .collect();
    documented.sort();
    offered.sort();
    assert_eq!(documented, offered, "README.md's option list and `partybus node --help` differ");
}
