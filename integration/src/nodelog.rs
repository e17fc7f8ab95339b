//! Reading what a lab `partybus` process printed: its JSON lines on stdout
//! (`ready`, `neighbour`, `path`) and its log on stderr (mapped and
//! announced addresses). Shared by the NAT and port-mapping labs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::lab::LabProcess;

/// `&["a", "b"]` as owned arguments.
pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn json_lines(p: &LabProcess) -> Vec<serde_json::Value> {
    p.lines().iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect()
}

/// Wait for the `ready` line; the node's id.
pub fn ready_id(p: &mut LabProcess) -> String {
    let v = p.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(20)).unwrap();
    v["ready"]["id"].as_str().unwrap().to_owned()
}

/// Wait until `p` prints a `found` line for `id`; returns that line.
pub fn wait_found(p: &mut LabProcess, id: &str, timeout: Duration) -> serde_json::Value {
    p.wait_for_json(|v| v["neighbour"] == "found" && v["id"] == id, timeout)
        .unwrap_or_else(|e| panic!("{}: neighbour {id} not found: {e:#}", p.label()))
}

/// Has `p` printed a `found` line for `id` (looking at all its output)?
pub fn has_found(p: &LabProcess, id: &str) -> Option<serde_json::Value> {
    json_lines(p).into_iter().rfind(|v| v["neighbour"] == "found" && v["id"] == id)
}

/// The `found` line for `id` printed after the last `lost` line for it.
pub fn has_found_after_lost(p: &LabProcess, id: &str) -> Option<serde_json::Value> {
    let lines: Vec<serde_json::Value> = json_lines(p).into_iter().filter(|v| v["id"] == id && v.get("neighbour").is_some()).collect();
    let last_lost = lines.iter().rposition(|v| v["neighbour"] == "lost")?;
    lines[last_lost + 1..].iter().find(|v| v["neighbour"] == "found").cloned()
}

/// The last path line `p` printed for neighbour `id`.
pub fn last_path(p: &LabProcess, id: &str) -> Option<serde_json::Value> {
    json_lines(p).into_iter().rfind(|v| v.get("path").is_some() && v["id"] == id)
}

/// Is the last path line of `p` for `id` direct at `at`?
pub fn direct_at(p: &LabProcess, id: &str, at: SocketAddr) -> bool {
    last_path(p, id).is_some_and(|v| v["path"] == "direct" && v["addr"] == at.to_string())
}

/// Wait (bounded) until [`direct_at`]; false if it never was.
pub fn wait_direct_at(p: &LabProcess, id: &str, at: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !direct_at(p, id, at) {
        std::thread::sleep(Duration::from_millis(100));
    }
    direct_at(p, id, at)
}

/// Is `id` a neighbour of `p` now (last found/lost line for it is `found`)?
pub fn is_neighbour(p: &LabProcess, id: &str) -> bool {
    json_lines(p).into_iter().rfind(|v| v["id"] == id && v.get("neighbour").is_some()).is_some_and(|v| v["neighbour"] == "found")
}

/// The external address a node reports from a port mapping made by
/// `source` (`upnp`, `natpmp`, `pcp`): log line `reachable at external
/// address addr=IP:PORT source=SOURCE`.
pub fn wait_external(p: &mut LabProcess, source: &str, timeout: Duration) -> SocketAddr {
    let src = format!("source={source}");
    let line = p
        .wait_for_stderr(|l| l.contains("reachable at external address") && l.contains(&src), timeout)
        .unwrap_or_else(|e| panic!("no {source} external address: {e:#}"));
    addr_field(&line, "addr").unwrap_or_else(|| panic!("no addr in {line:?}"))
}

/// Wait until `p`'s DHT service stored a node record listing `addr`.
pub fn wait_announced(p: &mut LabProcess, addr: SocketAddr, timeout: Duration) {
    let a = addr.to_string();
    p.wait_for_stderr(|l| l.contains("dht: announcing") && l.contains(&a), timeout)
        .unwrap_or_else(|e| panic!("{addr} not announced in the DHT: {e:#}"));
    p.wait_for_stderr(|l| l.contains("dht: node record stored"), timeout)
        .unwrap_or_else(|e| panic!("node record with {addr} not stored: {e:#}"));
}

/// `key=VALUE` from a tracing log line.
pub fn addr_field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}=")).and_then(|v| v.parse().ok()))
}

/// Lines of `p`'s log so far that contain `needle`.
pub fn count_log(p: &LabProcess, needle: &str) -> usize {
    p.stderr_text().lines().filter(|l| l.contains(needle)).count()
}

/// Wait (bounded) until `p`'s log holds `n` lines containing `needle`.
pub fn wait_log_count(p: &LabProcess, needle: &str, n: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && count_log(p, needle) < n {
        std::thread::sleep(Duration::from_millis(100));
    }
    count_log(p, needle) >= n
}
