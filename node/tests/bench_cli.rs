//! `partybus bench`: the operators' benchmarks in the product binary, run
//! small on loopback; each scenario's result line checked for what arrived.
//! (The developers' benchmarks are `partybus-perf`'s: node/perf/tests.)

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_partybus");

#[test]
fn moved_developer_benchmarks_name_their_new_home() {
    // `bench quinn` and `bench mesh --in-process` live in partybus-perf now
    // (node/perf/tests/perf.rs checks them); the old command lines say so.
    for args in [&["bench", "quinn"][..], &["bench", "mesh", "--in-process"][..]] {
        let out = Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("partybus-perf"), "{args:?}: {err}");
    }
}

/// Runs `partybus bench ... --json` and parses its result lines.
fn bench_json(args: &[&str]) -> Vec<serde_json::Value> {
    let d = tempfile::tempdir().unwrap();
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--timeout", "20s", "--json"]);
    let o = Command::new(BIN).args(&all).current_dir(d.path()).env("RUST_LOG", "warn").stdin(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect()
}

fn num(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn bench_scenarios_count_what_arrived() {
    // Throughput: every emitted event arrives once, at each payload size.
    let rows = bench_json(&["throughput", "--payload", "16,1024", "--count", "3000"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (v, size) in rows.iter().zip([16.0, 1024.0]) {
        assert_eq!(v["scenario"], "throughput");
        assert_eq!(num(v, "payload_bytes"), size, "{v}");
        assert_eq!((num(v, "emitted"), num(v, "events"), num(v, "lost")), (3000.0, 3000.0, 0.0), "{v}");
        assert!(num(v, "emitter_rss_kib") > 1000.0 && num(v, "receiver_rss_kib") > 1000.0, "{v}");
        // The emitter's QUIC packets of this payload size alone: at least
        // enough to carry the payloads, in packets of at most 6548 bytes
        // (the largest partybus uses, on loopback: see `tls::loopback_mtu`).
        let payload_bytes = num(v, "emitted") * size;
        assert!(num(v, "packets_sent") >= (payload_bytes / 6548.0).ceil(), "too few packets for {payload_bytes} bytes: {v}");
        let _ = num(v, "packets_lost"); // reported (a figure, not a pass mark)
    }
    // Fan-out: each of 2 receivers gets every event.
    let rows = bench_json(&["fanout", "--receivers", "2", "--payload", "16", "--count", "1000"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let v = &rows[0];
    assert_eq!((num(v, "receivers"), num(v, "events"), num(v, "lost")), (2.0, 2000.0, 0.0), "{v}");
    // Latency: the measured round trips, ordered percentiles.
    let rows = bench_json(&["latency", "--round-trips", "100", "--warmup", "10"]);
    let v = &rows[0];
    assert_eq!((num(v, "events"), num(v, "lost")), (100.0, 0.0), "{v}");
    let p: Vec<f64> = ["min_us", "p50_us", "p90_us", "p99_us", "max_us"].iter().map(|k| num(v, k)).collect();
    assert!(p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]), "{v}");
    // Small events behind bulk ones (issue 16): every ping answered while
    // 64 KiB events fill the queue ahead of it, and the bulk stream counted.
    let rows = bench_json(&["latency", "--round-trips", "20", "--warmup", "2", "--bulk", "65536"]);
    let v = &rows[0];
    assert_eq!((num(v, "events"), num(v, "lost")), (20.0, 0.0), "{v}");
    assert_eq!(num(v, "bulk_payload_bytes"), 65536.0, "{v}");
    assert!(num(v, "bulk_events_queued") > 0.0 && num(v, "bulk_mb_per_s") > 0.0, "{v}");
    // Memory: idle and with neighbours.
    let rows = bench_json(&["memory", "--neighbours", "2"]);
    let v = &rows[0];
    assert_eq!(num(v, "neighbours"), 2.0, "{v}");
    let (idle, rss) = (num(v, "idle_rss_kib"), num(v, "rss_kib"));
    assert!(idle > 1000.0, "{v}");
    // The node with two neighbours holds more than idle (the first one alone
    // maps ~700 KiB of code, see BENCHMARKS.md): the two samples are of the
    // same process, before and after.
    assert!(rss > idle, "{v}");
    // Peaks (VmHWM) and current sizes (VmRSS) not swapped: a peak is never below the size at the time.
    assert!(num(v, "idle_hwm_kib") >= idle && num(v, "hwm_kib") >= rss, "{v}");
    // The derived figures agree with the samples.
    assert_eq!(num(v, "per_neighbour_kib"), ((rss - idle) / 2.0).round(), "{v}");
    let _ = (num(v, "first_neighbour_kib"), num(v, "per_further_neighbour_kib"));
}

#[test]
fn bench_mesh_forms_in_processes() {
    // The bench fails unless every node sees the 3 others within its time bound.
    let rows = bench_json(&["mesh", "--nodes", "4"]);
    assert_eq!(rows[0]["scenario"], "mesh");
    assert_eq!(num(&rows[0], "nodes"), 4.0, "{}", rows[0]);
}
