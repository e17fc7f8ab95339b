//! The reachability matrix (issue 14): can an event get from a host behind
//! one home router to a host behind the other, for each kind of NAT and each
//! way of meeting, and over which path does it end up?
//!
//! A [`Case`] is built on the [`crate::nat`] lab (no UPnP): NAT type of r1 and
//! of r2 ([`Nat`]: cone = `masquerade`, symmetric = `masquerade
//! fully-random`), the seed on vps1 ([`Seed`]: a public hood member
//! `partybus node` that h1 and h2 `--connect` to, or only a `partybus dht`
//! bootstrap node they reach with `--dht`), and an impairment of both WAN
//! links ([`Impair`]: random loss with nftables, or delay with the link
//! emulator).
//!
//! [`run_case`] runs both directions ("legs") in turn: a `partybus listen` on
//! one host, then `partybus emit NAME - --wait-listeners 1 --timeout 20s` on
//! the other, fed one payload line; the emitter's count must be 1 and the
//! listener must print the event. When the listener reports paths (JSON lines
//! `{"path":"direct"|"relayed","id":HEX,"via":ADDR|null}`), the leg waits (at
//! most [`PATH_SETTLE`]) for the path to the emitter to become direct, then
//! sends a second event, which must arrive too: the final path delivers. The
//! path reported is the listener's last word about the emitter, `?` when it
//! said nothing (a `listen` that does not print paths yet).

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::lab::{Lab, LabProcess, Ns};
use crate::nat::{NatLab, NatOptions, RouterOptions, VPS1_IP};
use crate::pb::LabHood;

/// `partybus node` (the hub) port on vps1.
pub const HUB_PORT: u16 = 4816;
/// `partybus dht` port on vps1.
pub const DHT_PORT: u16 = 4000;
/// The listener's port on its host.
pub const LISTEN_PORT: u16 = 4816;
/// The emitter's port on its host.
pub const EMIT_PORT: u16 = 4817;
/// `emit --timeout`: how long the emitter waits for a listener (the issue's 20 s).
pub const EMIT_TIMEOUT: Duration = Duration::from_secs(20);
/// The same on lossy links: a lost registration or handshake packet can cost
/// a dial's whole handshake timeout (10 s) before the next try.
pub const EMIT_TIMEOUT_LOSSY: Duration = Duration::from_secs(30);
/// How long a leg waits for a reported path to become direct.
pub const PATH_SETTLE: Duration = Duration::from_secs(10);
/// Log filter of the processes (their stderr is kept with a failing lab).
pub const LOG: &str = "info,partybus=debug,partybus_discovery=debug";

/// A home router's NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Port-restricted cone (`masquerade`): one mapping per source port.
    Cone,
    /// Symmetric (`masquerade fully-random`): a new mapping per destination.
    Symmetric,
}

impl Nat {
    pub fn short(self) -> &'static str {
        match self {
            Nat::Cone => "cone",
            Nat::Symmetric => "sym",
        }
    }
}

/// How h1 and h2 find the hood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seed {
    /// A public hood member (`partybus node`) on vps1; hosts use `--connect`.
    Hub,
    /// Only a DHT bootstrap node (`partybus dht`) on vps1, no public member;
    /// hosts use `--dht`.
    Dht,
}

impl Seed {
    pub fn short(self) -> &'static str {
        match self {
            Seed::Hub => "hub",
            Seed::Dht => "dht",
        }
    }

    /// The hosts' discovery arguments.
    pub fn join_args(self) -> Vec<String> {
        match self {
            Seed::Hub => vec!["--connect".into(), format!("{VPS1_IP}:{HUB_PORT}")],
            Seed::Dht => vec!["--dht".into(), format!("{VPS1_IP}:{DHT_PORT}")],
        }
    }
}

/// What both WAN links suffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impair {
    None,
    /// Random loss, packets per million, each direction on each WAN link.
    Loss(u32),
    /// One-way delay in ms, each direction on each WAN link (the link emulator).
    Delay(u32),
}

/// One cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub seed: Seed,
    pub r1: Nat,
    pub r2: Nat,
    pub impair: Impair,
}

impl Case {
    pub const fn new(seed: Seed, r1: Nat, r2: Nat, impair: Impair) -> Case {
        Case { seed, r1, r2, impair }
    }

    /// `hub_cone_sym`, `dht_sym_sym_loss2`, `hub_cone_cone_delay20`: the
    /// name of its test too.
    pub fn name(&self) -> String {
        let imp = match self.impair {
            Impair::None => String::new(),
            Impair::Loss(ppm) => format!("_loss{}", fmt_percent(ppm)),
            Impair::Delay(ms) => format!("_delay{ms}"),
        };
        format!("{}_{}_{}{imp}", self.seed.short(), self.r1.short(), self.r2.short())
    }

    fn router(&self, nat: Nat) -> RouterOptions {
        let (loss_ppm, delay_ms) = match self.impair {
            Impair::None => (0, 0),
            Impair::Loss(ppm) => (ppm, 0),
            Impair::Delay(ms) => (0, ms),
        };
        RouterOptions { symmetric: nat == Nat::Symmetric, loss_ppm, delay_ms, upnp: false, serve: None }
    }

    /// The NAT lab of this case (no UPnP, so no STUN server).
    pub fn nat_options(&self) -> NatOptions {
        NatOptions { r1: self.router(self.r1), r2: self.router(self.r2), stun_server: None }
    }
}

/// `20000` ppm -> `2`, `5000` -> `0.5`.
fn fmt_percent(ppm: u32) -> String {
    if ppm.is_multiple_of(10_000) {
        (ppm / 10_000).to_string()
    } else {
        format!("{}", ppm as f64 / 10_000.0).replace('.', "p")
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One direction of a case.
#[derive(Clone, Debug)]
pub struct Leg {
    /// "h2->h1".
    pub label: String,
    /// Time from starting the emitter to the listener printing the event,
    /// or why no event arrived.
    pub result: Result<Duration, String>,
    /// `direct`, `relayed via ADDR`, or `?` (the listener reported no path).
    pub path: String,
}

/// What a case measured.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub case: String,
    pub legs: Vec<Leg>,
    /// Wall time of the whole case, lab set-up included.
    pub secs: f64,
}

impl CaseResult {
    pub fn delivered(&self) -> bool {
        self.legs.iter().all(|l| l.result.is_ok())
    }

    /// One line per failed leg: `hub_sym_sym h2->h1: count 0 after 20 s`.
    pub fn failures(&self) -> Vec<String> {
        self.legs.iter().filter_map(|l| l.result.as_ref().err().map(|e| format!("{} {}: {e}", self.case, l.label))).collect()
    }

    /// `reach: <case> first event in X.XX s, path P` per leg.
    pub fn lines(&self) -> Vec<String> {
        self.legs
            .iter()
            .map(|l| match &l.result {
                Ok(d) => format!("reach: {} {} first event in {:.2} s, path {}", self.case, l.label, d.as_secs_f64(), l.path),
                Err(e) => format!("reach: {} {} NO EVENT: {e}, path {}", self.case, l.label, l.path),
            })
            .collect()
    }
}

/// A table of results (one row per case, one column per leg).
pub fn table(rows: &[CaseResult]) -> String {
    let cell = |l: &Leg| match &l.result {
        Ok(d) => format!("{:.2} s {}", d.as_secs_f64(), l.path),
        Err(e) => format!("FAIL ({})", e.split(';').next().unwrap_or(e)),
    };
    let labels: Vec<String> = rows.first().map(|r| r.legs.iter().map(|l| l.label.clone()).collect()).unwrap_or_default();
    let w0 = rows.iter().map(|r| r.case.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<w0$}  ", "case");
    for l in &labels {
        out.push_str(&format!("{l:<34}"));
    }
    out.push_str("case time\n");
    for r in rows {
        out.push_str(&format!("{:<w0$}  ", r.case));
        for l in &r.legs {
            out.push_str(&format!("{:<34}", cell(l)));
        }
        out.push_str(&format!("{:.1} s\n", r.secs));
    }
    let ok = rows.iter().filter(|r| r.delivered()).count();
    out.push_str(&format!("{ok} of {} cases delivered both ways\n", rows.len()));
    out
}

/// Builds the case's lab in `lab`, starts the seed on vps1, runs both legs
/// (h2 -> h1, then h1 -> h2) and stops everything. An error is a lab or
/// process that could not be set up; a leg that delivers nothing is a
/// result ([`Leg::result`]).
pub fn run_case(lab: &Lab, bin: &Path, case: &Case) -> Result<CaseResult> {
    let t0 = Instant::now();
    let nat = NatLab::build(lab, case.nat_options()).context("NAT lab")?;
    let hood = LabHood::new(lab, bin, "reach", LOG)?;
    let mut seed = start_seed(lab, &hood, &nat, case.seed)?;
    let mut join = case.seed.join_args();
    join.push("--allow-non-global".into());
    let mut legs = Vec::new();
    for (from, to, label) in [(&nat.r2.host, &nat.r1.host, "h2->h1"), (&nat.r1.host, &nat.r2.host, "h1->h2")] {
        let bound = if matches!(case.impair, Impair::Loss(_)) { EMIT_TIMEOUT_LOSSY } else { EMIT_TIMEOUT };
        legs.push(run_leg(lab, &hood, from, to, label, &join, &case.name(), bound)?);
    }
    seed.signal("TERM")?;
    let _ = seed.wait_exit(Duration::from_secs(10));
    Ok(CaseResult { case: case.name(), legs, secs: t0.elapsed().as_secs_f64() })
}

/// The hub node or the DHT node on vps1, ready.
fn start_seed(lab: &Lab, hood: &LabHood, nat: &NatLab<'_>, seed: Seed) -> Result<LabProcess> {
    let mut p = match seed {
        Seed::Hub => {
            let args = vec!["--port".into(), HUB_PORT.to_string(), "--allow-non-global".into()];
            hood.spawn(lab, &nat.vps1, "node", "vps1", &args)?
        }
        Seed::Dht => {
            let args = ["dht", "--port", &DHT_PORT.to_string(), "--bind", VPS1_IP, "--allow-non-global"];
            lab.spawn_env(&nat.vps1, &hood.bin, args, [("RUST_LOG", hood.log.as_str())])?
        }
    };
    p.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(20))?;
    Ok(p)
}

/// A `{"path":..,"id":..,"via":..}` line about `id`: `direct` or `relayed via ADDR`.
pub fn path_line(v: &serde_json::Value, id: &str) -> Option<String> {
    let path = v.get("path")?.as_str()?;
    if v.get("id")?.as_str()? != id {
        return None;
    }
    Some(match v.get("via").and_then(|x| x.as_str()) {
        Some(via) => format!("{path} via {via}"),
        None => path.to_owned(),
    })
}

/// The last path `p` reported for `id`, if any.
pub fn last_path(p: &LabProcess, id: &str) -> Option<String> {
    p.lines().iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter_map(|v| path_line(&v, id)).next_back()
}

/// The `source.id` of the first event named `event` with `"n": n` in its payload.
fn event_source(p: &LabProcess, event: &str, n: u64) -> Option<String> {
    p.lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| (v["event"] == event && v["payload"]["n"] == n).then(|| v["source"]["id"].as_str().unwrap_or_default().to_owned()))
}

/// The counts the emitter printed so far (one per payload line).
fn counts(p: &LabProcess) -> Vec<u64> {
    p.lines().iter().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Sends payload `n` and waits until the listener prints it and the emitter
/// prints its count (bounded by `bound`). `Ok(time to the event)`; the error
/// says what was seen.
fn deliver(
    listener: &LabProcess,
    emitter: &mut LabProcess,
    event: &str,
    case: &str,
    label: &str,
    n: u64,
    bound: Duration,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let before = counts(emitter).len();
    emitter
        .write_line(&format!(r#"{{"case":"{case}","leg":"{label}","n":{n}}}"#))
        .map_err(|e| format!("cannot write to the emitter: {e:#}"))?;
    let mut arrived: Option<Duration> = None;
    loop {
        if arrived.is_none() && event_source(listener, event, n).is_some() {
            arrived = Some(t0.elapsed());
        }
        let c = counts(emitter);
        if let Some(&count) = c.get(before) {
            if count != 1 {
                // The first event waited for a listener for the emitter's --timeout.
                let waited = if n == 1 { bound.saturating_sub(Duration::from_secs(15)).as_secs_f64() } else { t0.elapsed().as_secs_f64() };
                return Err(format!("count {count} after {waited:.0} s"));
            }
            if let Some(d) = arrived {
                return Ok(d);
            }
        }
        let exited = emitter.try_exit().ok().flatten();
        if t0.elapsed() >= bound || exited.is_some() {
            let why = match (c.get(before), arrived, exited) {
                (None, _, Some(st)) => format!("the emitter exited ({st}) without a count"),
                (None, _, None) => format!("no count from the emitter within {:.0} s", bound.as_secs_f64()),
                (Some(_), None, _) => format!("count 1, but the listener printed no event within {:.0} s", bound.as_secs_f64()),
                (Some(_), Some(_), _) => unreachable!("returned above"),
            };
            return Err(why);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One direction: a listener on `to`, an emitter on `from`.
#[allow(clippy::too_many_arguments)]
fn run_leg(lab: &Lab, hood: &LabHood, from: &Ns, to: &Ns, label: &str, join: &[String], case: &str, emit_timeout: Duration) -> Result<Leg> {
    let event = "lab.reach";
    let mut largs = join.to_vec();
    largs.extend(["--port".into(), LISTEN_PORT.to_string(), "--paths".into(), event.into()]);
    let tag = label.replace("->", "");
    let mut listener = hood.spawn(lab, to, "listen", &format!("l{tag}"), &largs)?;
    let mut eargs = join.to_vec();
    let timeout = format!("{}s", emit_timeout.as_secs());
    eargs.extend(["--port".into(), EMIT_PORT.to_string(), event.into(), "-".into(), "--wait-listeners".into(), "1".into()]);
    eargs.extend(["--timeout".into(), timeout]);
    let mut emitter = hood.spawn(lab, from, "emit", &format!("e{tag}"), &eargs)?;

    // The emitter reads its first line once it has a listener (or gave up).
    let mut result = deliver(&listener, &mut emitter, event, case, label, 1, emit_timeout + Duration::from_secs(15));
    let id = event_source(&listener, event, 1);
    if let (Ok(_), Some(id)) = (&result, &id) {
        // A listener that reports paths: let a relayed path become direct.
        if last_path(&listener, id).is_some() {
            let deadline = Instant::now() + PATH_SETTLE;
            while Instant::now() < deadline && last_path(&listener, id).as_deref() != Some("direct") {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // The path it ended on delivers too.
        if let Err(e) = deliver(&listener, &mut emitter, event, case, label, 2, Duration::from_secs(10)) {
            result = Err(format!("the first event arrived, the second did not: {e}"));
        }
    }
    let path = id.as_deref().and_then(|id| last_path(&listener, id)).unwrap_or_else(|| "?".into());
    emitter.close_stdin();
    if emitter.wait_exit(Duration::from_secs(10)).is_err() {
        emitter.kill();
    }
    listener.signal("TERM")?;
    if listener.wait_exit(Duration::from_secs(10)).is_err() {
        listener.kill();
    }
    Ok(Leg { label: label.into(), result, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names() {
        assert_eq!(Case::new(Seed::Hub, Nat::Cone, Nat::Symmetric, Impair::None).name(), "hub_cone_sym");
        assert_eq!(Case::new(Seed::Dht, Nat::Symmetric, Nat::Symmetric, Impair::Loss(20_000)).name(), "dht_sym_sym_loss2");
        assert_eq!(Case::new(Seed::Hub, Nat::Cone, Nat::Cone, Impair::Loss(5_000)).name(), "hub_cone_cone_loss0p5");
        assert_eq!(Case::new(Seed::Hub, Nat::Cone, Nat::Cone, Impair::Delay(20)).name(), "hub_cone_cone_delay20");
        let o = Case::new(Seed::Hub, Nat::Cone, Nat::Symmetric, Impair::Delay(20)).nat_options();
        assert!(!o.r1.symmetric && o.r2.symmetric && o.r1.delay_ms == 20 && o.r2.loss_ppm == 0 && !o.r1.upnp);
    }

    #[test]
    fn paths() {
        let v = serde_json::json!({"path": "relayed", "id": "ab", "via": "203.0.113.10:4816"});
        assert_eq!(path_line(&v, "ab").as_deref(), Some("relayed via 203.0.113.10:4816"));
        assert_eq!(path_line(&v, "cd"), None);
        let v = serde_json::json!({"path": "direct", "id": "ab", "via": null});
        assert_eq!(path_line(&v, "ab").as_deref(), Some("direct"));
        assert_eq!(path_line(&serde_json::json!({"event": "x"}), "ab"), None);
    }

    #[test]
    fn table_rows() {
        let r = CaseResult {
            case: "hub_cone_cone".into(),
            legs: vec![
                Leg { label: "h2->h1".into(), result: Ok(Duration::from_millis(1234)), path: "?".into() },
                Leg { label: "h1->h2".into(), result: Err("count 0 after 20 s".into()), path: "?".into() },
            ],
            secs: 30.0,
        };
        let t = table(std::slice::from_ref(&r));
        assert!(t.contains("1.23 s ?") && t.contains("FAIL (count 0 after 20 s)") && t.contains("0 of 1 cases"), "{t}");
        assert_eq!(r.failures(), vec!["hub_cone_cone h1->h2: count 0 after 20 s"]);
        assert_eq!(r.lines()[0], "reach: hub_cone_cone h2->h1 first event in 1.23 s, path ?");
    }
}
