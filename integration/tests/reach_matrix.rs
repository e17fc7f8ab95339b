//! The reachability matrix (issue 14), in the NAT lab without UPnP: for NAT
//! types {cone, symmetric} on r1 x {cone, symmetric} on r2 (the topology is
//! symmetric, so cone-sym stands for sym-cone too; events go both ways), with
//! (a) only a public hood member `partybus node` on vps1 as the seed
//! (`hub_*`: h1 and h2 use `--connect`), and (b) only a `partybus dht`
//! bootstrap node on vps1 (`dht_*`: `--dht`), an event must get from h2 to h1
//! and from h1 to h2: `partybus emit NAME - --wait-listeners 1 --timeout 20s`
//! must count 1 and the `partybus listen` on the other host must print it.
//! See `partybus_integration::reach` for how a case runs.
//!
//! The target is full delivery in every case (relays and hole punching), so
//! every case asserts it. Each test is one case, named after it: run one with
//! `cargo test -p partybus-integration --test reach_matrix -- hub_cone_cone
//! --nocapture`. Cases run one at a time (a lock), each in a lab of its own
//! that is torn down before the next. Each prints one line per direction
//! (`reach: <case> <leg> first event in X.XX s, path <direct|relayed via
//! ADDR|?>`) and the table of the cases run so far in this process: the last
//! one printed is the whole run's.
//!
//! Every case also runs with 2 % random loss on both WAN links (`*_loss2`)
//! and with 20 ms added each way on each uplink (`*_delay20`, the link
//! emulator, python3): 18 cases, about 6 minutes. The emitter waits 20 s
//! for its listener (the figure), 30 s on the lossy links, where one
//! lost registration or handshake packet can cost a dial's 10 s timeout.
//!
//! Network labs: reported as ignored where the build finds the lab cannot run
//! (not root, no `ip`/`nft`) or with `PARTYBUS_LAB=skip`; otherwise, and
//! always under `PARTYBUS_LAB=required`, they run and fail if the lab cannot
//! run (see `partybus_integration::lab`).

use std::sync::Mutex;
use std::time::Instant;

use partybus_integration::lab::Lab;
use partybus_integration::nat;
use partybus_integration::pb;
use partybus_integration::reach::{self, Case, CaseResult, Impair, Nat, Seed};

/// One case at a time: their timings mean something, and 2 cores are enough for one.
static SERIAL: Mutex<()> = Mutex::new(());
/// The cases run so far in this process, for the table.
static ROWS: Mutex<Vec<CaseResult>> = Mutex::new(Vec::new());

const LOSS: Impair = Impair::Loss(20_000);
const DELAY: Impair = Impair::Delay(20);

fn matrix(case: Case, test_name: &str) {
    assert_eq!(case.name(), test_name, "a test is named after its case");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    nat::require_prereqs_for(&case.nat_options());
    let bin = pb::require_bin(&[(&["emit"], "--wait-listeners"), (&["dht"], "--allow-non-global")]);
    let t0 = Instant::now();
    // Declared after the lock: torn down before the next case takes it, and
    // kept (its directory printed) when the case fails.
    let lab = Lab::require("reach");
    let result = reach::run_case(&lab, &bin, &case).unwrap_or_else(|e| panic!("{case}: the lab could not be set up: {e:#}"));
    for line in result.lines() {
        eprintln!("{line}");
    }
    let table = {
        let mut rows = ROWS.lock().unwrap_or_else(|p| p.into_inner());
        rows.push(result.clone());
        reach::table(&rows)
    };
    eprintln!("reach: {case} took {:.1} s; the matrix so far:\n{table}", t0.elapsed().as_secs_f64());
    assert!(result.delivered(), "{}", result.failures().join("\n"));
}

/// Cases that always run.
macro_rules! cases {
    ($($name:ident: $seed:ident $r1:ident $r2:ident $imp:expr;)*) => {$(
        #[test]
        #[cfg_attr(
            partybus_no_lab,
            ignore = "network lab (needs root, ip, nft) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
        )]
        fn $name() {
            matrix(Case::new(Seed::$seed, Nat::$r1, Nat::$r2, $imp), stringify!($name));
        }
    )*};
}

cases! {
    hub_cone_cone: Hub Cone Cone Impair::None;
    hub_cone_sym: Hub Cone Symmetric Impair::None;
    hub_sym_sym: Hub Symmetric Symmetric Impair::None;
    dht_cone_cone: Dht Cone Cone Impair::None;
    dht_cone_sym: Dht Cone Symmetric Impair::None;
    dht_sym_sym: Dht Symmetric Symmetric Impair::None;
    hub_cone_cone_loss2: Hub Cone Cone LOSS;
    hub_cone_cone_delay20: Hub Cone Cone DELAY;
    hub_cone_sym_loss2: Hub Cone Symmetric LOSS;
    hub_sym_sym_loss2: Hub Symmetric Symmetric LOSS;
    dht_cone_cone_loss2: Dht Cone Cone LOSS;
    dht_cone_sym_loss2: Dht Cone Symmetric LOSS;
    dht_sym_sym_loss2: Dht Symmetric Symmetric LOSS;
    hub_cone_sym_delay20: Hub Cone Symmetric DELAY;
    hub_sym_sym_delay20: Hub Symmetric Symmetric DELAY;
    dht_cone_cone_delay20: Dht Cone Cone DELAY;
    dht_cone_sym_delay20: Dht Cone Symmetric DELAY;
    dht_sym_sym_delay20: Dht Symmetric Symmetric DELAY;
}
