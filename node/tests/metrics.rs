//! Issue 15: metrics. A 3-node hood on loopback exchanges a known number of
//! events; a scrape of `GET /metrics` over HTTP shows the neighbours and the
//! event counters exactly, and the whole exposition parses.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample: name and labels (sorted), as text.
type Samples = BTreeMap<(String, String), f64>;

/// A strict reader of the OpenMetrics text format as Prometheus scrapes it:
/// every line is a `# HELP`, `# TYPE` or `# UNIT` comment of a family
/// declared once, or a sample of a declared family (a counter's with
/// `_total`), with well-formed labels and a number; no sample twice; `# EOF`
/// last. Panics naming the line otherwise.
fn parse_exposition(text: &str) -> Samples {
    assert!(text.ends_with("# EOF\n"), "the exposition does not end with # EOF: {:?}", &text[text.len().saturating_sub(40)..]);
    let valid_name = |n: &str| {
        let mut c = n.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = HashSet::new();
    let mut samples = Samples::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let at = || format!("line {}: {line:?}", i + 1);
        if *line == "# EOF" {
            assert_eq!(i, lines.len() - 1, "# EOF before the end ({})", at());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let (kind, rest) = rest.split_once(' ').unwrap_or_else(|| panic!("bad comment, {}", at()));
            let (name, value) = rest.split_once(' ').unwrap_or_else(|| panic!("bad comment, {}", at()));
            assert!(valid_name(name), "bad family name, {}", at());
            match kind {
                "HELP" => assert!(helped.insert(name.to_owned()) && !value.is_empty(), "HELP twice or empty, {}", at()),
                "TYPE" => {
                    assert!(["counter", "gauge", "info", "histogram", "summary", "unknown", "stateset"].contains(&value), "type, {}", at());
                    assert!(types.insert(name.to_owned(), value.to_owned()).is_none(), "TYPE twice, {}", at());
                }
                "UNIT" => assert!(name.ends_with(&format!("_{value}")), "the unit is not the name's suffix, {}", at()),
                _ => panic!("unknown comment, {}", at()),
            }
            continue;
        }
        // A sample: name, optional {labels}, a space, a number.
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value, {}", at()));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value is not a number, {}", at())),
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels, {}", at()))),
            None => (head, ""),
        };
        assert!(valid_name(name), "bad sample name, {}", at());
        let family = types
            .iter()
            .find(|(f, t)| match t.as_str() {
                "counter" => name == format!("{f}_total") || name == format!("{f}_created"),
                "info" => name == format!("{f}_info"),
                _ => name == f.as_str(),
            })
            .unwrap_or_else(|| panic!("sample of an undeclared family, {}", at()));
        if family.1 == "counter" {
            assert!(value >= 0.0, "negative counter, {}", at());
        }
        let mut pairs = Vec::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label, {}", at()));
            assert!(valid_name(key) && !key.starts_with("__"), "bad label name, {}", at());
            // The value runs to the first unescaped quote.
            let mut end = None;
            let mut escaped = false;
            for (j, ch) in after.char_indices() {
                match (escaped, ch) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(j);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.unwrap_or_else(|| panic!("unterminated label value, {}", at()));
            pairs.push(format!("{key}={}", &after[..end]));
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        pairs.sort();
        let key = (name.to_owned(), pairs.join(","));
        assert!(samples.insert(key, value).is_none(), "sample twice, {}", at());
    }
    samples
}

fn sample(s: &Samples, name: &str, labels: &str) -> f64 {
    *s.get(&(name.to_owned(), labels.to_owned())).unwrap_or_else(|| panic!("no sample {name}{{{labels}}}"))
}

/// `GET path` over plain HTTP/1.1: (status line, headers, body).
async fn http_get(addr: SocketAddr, request: &str) -> (String, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics address");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut out)).await.expect("the answer ends").unwrap();
    let text = String::from_utf8(out).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_the_neighbours_and_the_events_exactly() {
    let _heavy = heavy().await;
    let a = node(0, None, |c| c.metrics = Some("127.0.0.1:0".parse().unwrap())).await;
    let b = node(1, Some(a.port()), |_| {}).await;
    let c = node(2, Some(a.port()), |_| {}).await;
    for n in [&a, &b, &c] {
        wait_neighbours(n, 2).await;
    }
    let metrics = a.metrics_addr().expect("a serves metrics");
    assert!(metrics.port() != 0 && metrics.ip().is_loopback());

    // a listens to "ping" (b emits 25), c to "pong" (a emits 7).
    const PINGS: usize = 25;
    const PONGS: usize = 7;
    let got_pings = Arc::new(AtomicUsize::new(0));
    let got_pongs = Arc::new(AtomicUsize::new(0));
    let g = got_pings.clone();
    let _ha = a
        .on("ping", move |_| {
            g.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let g = got_pongs.clone();
    let _hc = c
        .on("pong", move |_| {
            g.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    wait_listeners(&b, "ping", 1).await;
    wait_listeners(&a, "pong", 1).await;
    for i in 0..PINGS {
        assert_eq!(b.emit("ping", &i).await.unwrap(), 1);
    }
    for i in 0..PONGS {
        assert_eq!(a.emit("pong", &i).await.unwrap(), 1);
    }
    let all = wait_until(|| got_pings.load(Ordering::SeqCst) == PINGS && got_pongs.load(Ordering::SeqCst) == PONGS, GUARD).await;
    assert!(all, "pings {} pongs {}", got_pings.load(Ordering::SeqCst), got_pongs.load(Ordering::SeqCst));
    // On loopback both paths are direct, once the path layer has said so.
    assert!(wait_until(|| a.neighbours().iter().all(|n| n.path.is_some()), GUARD).await, "{:?}", a.neighbours());

    let (status, headers, body) = http_get(metrics, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("Content-Type: application/openmetrics-text; version=1.0.0"), "{headers}");
    assert!(headers.contains(&format!("Content-Length: {}", body.len())), "{headers}");
    let s = parse_exposition(&body);

    assert_eq!(sample(&s, "partybus_neighbours", "path=direct"), 2.0);
    assert_eq!(sample(&s, "partybus_neighbours", "path=relayed"), 0.0);
    assert_eq!(sample(&s, "partybus_neighbours", "path=unknown"), 0.0);
    assert_eq!(sample(&s, "partybus_events_received_total", ""), PINGS as f64);
    assert_eq!(sample(&s, "partybus_emits_total", ""), PONGS as f64);
    assert_eq!(sample(&s, "partybus_events_sent_total", ""), PONGS as f64, "only c listens to pong");
    assert_eq!(sample(&s, "partybus_events_dropped_total", "policy=drop"), 0.0);
    assert_eq!(sample(&s, "partybus_neighbours_found_total", ""), 2.0);
    let ok_handshakes = sample(&s, "partybus_handshakes_total", "direction=in,result=ok")
        + sample(&s, "partybus_handshakes_total", "direction=out,result=ok");
    assert!(ok_handshakes >= 2.0, "{ok_handshakes}");
    assert!(sample(&s, "partybus_stream_received_bytes_total", "") > 0.0);
    assert!(sample(&s, "partybus_stream_sent_bytes_total", "") > 0.0);
    assert_eq!(sample(&s, "partybus_revocation_sequence", ""), 0.0);
    let info = s.keys().find(|(n, _)| n == "partybus_node").expect("partybus_node");
    assert!(info.1.contains("name=n0") && info.1.contains(&format!("id={}", a.id().to_hex())), "{info:?}");
    // The same text without HTTP.
    let direct = parse_exposition(&a.metrics_text());
    assert_eq!(sample(&direct, "partybus_events_received_total", ""), PINGS as f64);
    // b counts what it sent a.
    let sb = parse_exposition(&b.metrics_text());
    assert_eq!(sample(&sb, "partybus_events_sent_total", ""), PINGS as f64);
    assert_eq!(sample(&sb, "partybus_emits_total", ""), PINGS as f64);

    // Anything else than GET /metrics, and oversized requests, get an error status.
    assert_eq!(http_get(metrics, "POST /metrics HTTP/1.1\r\n\r\n").await.0, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(http_get(metrics, "GET / HTTP/1.1\r\n\r\n").await.0, "HTTP/1.1 404 Not Found");
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http_get(metrics, &huge).await.0, "HTTP/1.1 431 Request Header Fields Too Large");

    for n in [c, b, a] {
        n.leave().await;
    }
    // The address is free again once the node has left.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(metrics).await.is_err(), "metrics still served after leave");
}

#[test]
fn the_parser_refuses_malformed_expositions() {
    let good = "# HELP x_total n\n# TYPE x counter\nx_total 1\n# EOF\n";
    let good = good.replace("# HELP x_total n\n# TYPE x counter", "# HELP x n\n# TYPE x counter");
    parse_exposition(&good);
    for bad in [
        "# TYPE x counter\nx 1\n# EOF\n",               // counter without _total
        "# TYPE x gauge\nx{a=\"1\" 1\n# EOF\n",         // unclosed labels
        "# TYPE x gauge\nx one\n# EOF\n",               // not a number
        "# TYPE x gauge\ny 1\n# EOF\n",                 // undeclared family
        "# TYPE x gauge\nx 1\nx 2\n# EOF\n",            // twice
        "# TYPE x gauge\nx 1\n",                        // no EOF
        "# TYPE x gauge\n# TYPE x gauge\nx 1\n# EOF\n", // TYPE twice
    ] {
        assert!(std::panic::catch_unwind(|| parse_exposition(bad)).is_err(), "accepted {bad:?}");
    }
}

/// `partybus node --metrics ADDR`: the process serves a scrape that parses
/// and names the node.
#[test]
fn the_node_command_serves_metrics() {
    let d = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_partybus");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin).args(args).current_dir(d.path()).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(&["hood", "create", "h"]);
    run(&["peer", "create", "h", "a"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(bin)
        .args(["node", "--ca", "h.crt", "--cert", "h.a.crt", "--key", "h.a.key", "--bind", "127.0.0.1", "--port", "0", "--metrics", &addr])
        .current_dir(d.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let body = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break http_get(addr.parse().unwrap(), "GET /metrics HTTP/1.0\r\n\r\n").await;
            }
            assert!(tokio::time::Instant::now() < deadline, "nothing listens on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body.0, "HTTP/1.1 200 OK");
    let s = parse_exposition(&body.2);
    assert_eq!(sample(&s, "partybus_neighbours", "path=direct"), 0.0);
    assert!(s.keys().any(|(n, l)| n == "partybus_node" && l.contains("name=a")), "{s:?}");
}
