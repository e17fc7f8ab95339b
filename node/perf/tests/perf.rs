//! The `partybus-perf` command on loopback, with small counts: what the
//! tests of `partybus bench quinn` and `bench mesh --in-process` checked
//! before these benchmarks left the product binary.

use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_partybus-perf");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(args: &[&str]) -> Output {
    let d = tempfile::tempdir().unwrap();
    Command::new(BIN).args(args).current_dir(d.path()).env("RUST_LOG", "warn").stdin(Stdio::null()).output().expect("run partybus-perf")
}

/// Runs `partybus-perf ... --timeout 20s --json` and parses its result lines.
fn json_rows(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--timeout", "20s", "--json"]);
    let o = run(&all);
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    let out = text(&o.stdout);
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect()
}

fn num(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn quinn_prints_one_plausible_line_per_measurement() {
    let args = ["quinn", "--measure", "latency,bulk,records", "--round-trips", "200", "--warmup", "20", "--duration", "300ms"];
    let lines = json_rows(&args);
    let scenarios: Vec<&str> = lines.iter().map(|v| v["scenario"].as_str().unwrap_or("?")).collect();
    assert_eq!(scenarios, ["quinn-latency", "quinn-bulk", "quinn-records"], "{lines:?}");
    for v in &lines {
        assert_eq!(v["run"], 1, "{v}");
        assert_eq!(v["lost"], 0, "{v}");
        assert!(num(v, "events") > 0.0, "{v}");
        assert!(num(v, "client_rss_kib") > 1000.0 && num(v, "server_rss_kib") > 1000.0, "{v}");
    }
    let lat = &lines[0];
    assert_eq!(lat["payload_bytes"], 16);
    assert_eq!(lat["events"], 200, "{lat}");
    let p: Vec<f64> = ["p50_us", "p90_us", "p99_us", "max_us"].iter().map(|k| num(lat, k)).collect();
    assert!(p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]), "{lat}");
    for (v, size) in [(&lines[1], 65536.0), (&lines[2], 16.0)] {
        assert_eq!(num(v, "payload_bytes"), size, "{v}");
        assert_eq!(v["events"], v["emitted"], "{v}");
        let secs = num(v, "seconds");
        assert!((0.3..20.0).contains(&secs), "{v}");
        // events/s and MB/s agree with events, seconds and the payload size.
        let eps = num(v, "events") / secs;
        assert!((num(v, "events_per_s") - eps).abs() <= eps * 0.01 + 1.0, "{v}");
        assert!((num(v, "mb_per_s") - eps * size / 1e6).abs() <= eps * size / 1e8 + 0.1, "{v}");
    }
    // Records are batched: far more of them than 64 KiB writes in the same time.
    assert!(num(&lines[2], "events") > 100.0 * num(&lines[1], "events"), "{lines:?}");
}

#[test]
fn mesh_forms_in_one_process_on_both_schedulers_and_quinn_under_it() {
    // A full mesh with one connection per pair, or the run fails.
    for extra in [&[][..], &["--thread-per-core"][..]] {
        let mut args = vec!["mesh", "--nodes", "8", "--threads", "2"];
        args.extend_from_slice(extra);
        let rows = json_rows(&args);
        let v = &rows[0];
        assert_eq!(v["scenario"], "mesh_in_process");
        assert_eq!(v["scheduler"], if extra.is_empty() { "work-stealing" } else { "thread-per-core" }, "{v}");
        assert_eq!(num(v, "pairs"), 28.0, "{v}");
        assert!(num(v, "handshakes_ok") >= 28.0, "{v}");
        assert_eq!(num(v, "handshakes_timed_out"), 0.0, "{v}");
    }
    // The quinn floor under it: every pair connected, both ends counted.
    let rows = json_rows(&["quinn", "--measure", "mesh", "--nodes", "8", "--threads", "2"]);
    let v = &rows[0];
    assert_eq!(v["scenario"], "quinn-mesh", "{v}");
    assert_eq!(num(v, "pairs"), 28.0, "{v}");
    assert_eq!(num(v, "connection_ends"), 56.0, "{v}");
    assert!(num(v, "seconds") > 0.0, "{v}");
    // A handshake sends at least three packets (the client's Initial, the
    // server's flight, the client's Finished).
    assert!(num(v, "packets_sent") >= 3.0 * 28.0, "{v}");
}

#[test]
fn a_role_without_certificates_is_an_error_naming_the_flag() {
    let o = run(&["quinn", "--role", "server"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--ca"), "{}", text(&o.stderr));
}
