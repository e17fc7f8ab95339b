use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn renew_and_retry_schedule() {
    assert_eq!(renew_delay(secs(3600)), secs(1800));
    assert_eq!(renew_delay(secs(1)), secs(1));
    assert_eq!(renew_delay(Duration::ZERO), PERMANENT_RECHECK);
    assert_eq!(retry_delay(1), FIRST_RETRY);
    assert_eq!(retry_delay(2), FIRST_RETRY * 2);
    assert_eq!(retry_delay(3), FIRST_RETRY * 4);
    assert_eq!(retry_delay(100), MAX_RETRY);
}

#[test]
fn reports_renews_at_half_life_and_replaces() {
    let t0 = Instant::now();
    let mut m = MappingMachine::new(t0);
    assert_eq!(m.next(), (t0, Action::Map));
    let a = sa("203.0.113.21:4816");
    let lease = secs(600);
    assert_eq!(m.on_attempt(t0, Attempt::Mapped { ext: a, lease, epoch: None }), vec![Effect::External(a)]);
    assert_eq!(m.next(), (t0 + lease / 2, Action::Map), "no epoch: no epoch checks");
    // Renewal to the same address: nothing to say.
    let t1 = t0 + lease / 2;
    assert_eq!(m.on_attempt(t1, Attempt::Mapped { ext: a, lease, epoch: None }), vec![]);
    // Another port or IP (the asked-for port was taken, a new WAN IP).
    let b = sa("198.51.100.22:5000");
    assert_eq!(m.on_attempt(t1, Attempt::Mapped { ext: b, lease, epoch: None }), vec![Effect::ExternalLost(a), Effect::External(b)]);
    assert_eq!(m.advertised(), Some(b));
}

#[test]
fn failures_back_off_and_rediscover() {
    let t0 = Instant::now();
    let mut m = MappingMachine::new(t0);
    let a = sa("203.0.113.21:4816");
    m.on_attempt(t0, Attempt::Mapped { ext: a, lease: Duration::ZERO, epoch: None });
    assert_eq!(m.next(), (t0 + PERMANENT_RECHECK, Action::Map));
    assert_eq!(m.on_attempt(t0, Attempt::Failed), vec![Effect::ExternalLost(a)]);
    assert_eq!(m.next(), (t0 + FIRST_RETRY, Action::Map));
    assert!(m.on_attempt(t0, Attempt::Failed).is_empty());
    assert_eq!(m.next(), (t0 + FIRST_RETRY * 2, Action::Map));
    assert_eq!(m.on_attempt(t0, Attempt::Failed), vec![Effect::Rediscover]);
    assert_eq!(m.failures(), 3);
    assert_eq!(m.on_attempt(t0, Attempt::Mapped { ext: a, lease: secs(60), epoch: None }), vec![Effect::External(a)]);
    assert_eq!(m.next(), (t0 + secs(30), Action::Map));
    assert_eq!(m.failures(), 0);
}

#[test]
fn unusable_warns_once_and_withdraws() {
    let t0 = Instant::now();
    let mut m = MappingMachine::new(t0);
    let a = sa("203.0.113.21:4816");
    m.on_attempt(t0, Attempt::Mapped { ext: a, lease: secs(60), epoch: None });
    let ip: IpAddr = "100.64.1.2".parse().unwrap();
    assert_eq!(m.on_attempt(t0, Attempt::Unusable { ext_ip: ip }), vec![Effect::ExternalLost(a), Effect::WarnUnusable(ip)]);
    assert_eq!(m.next(), (t0 + PERMANENT_RECHECK, Action::Map));
    assert!(m.on_attempt(t0, Attempt::Unusable { ext_ip: ip }).is_empty(), "warned once");
    assert_eq!(m.advertised(), None);
}

#[test]
fn epoch_rules() {
    let t = Instant::now();
    // Advancing with our clock: no restart (rounding and drift allowed).
    assert!(!restarted(1000, t, 1060, t + secs(60)));
    assert!(!restarted(1000, t, 1058, t + secs(60)));
    assert!(!restarted(1000, t, 1003, t + secs(1)));
    // Backwards: a restart.
    assert!(restarted(1000, t, 5, t + secs(60)));
    assert!(restarted(1000, t, 999, t));
    // Far behind our clock (restarted and up again for 10 s), or far ahead.
    assert!(restarted(1000, t, 1010, t + secs(60)));
    assert!(restarted(1000, t, 2000, t + secs(60)));
}

#[test]
fn long_lease_checks_the_epoch_and_remaps_after_a_restart() {
    let t0 = Instant::now();
    let mut m = MappingMachine::new(t0);
    let a = sa("203.0.113.21:4816");
    let lease = secs(3600);
    assert_eq!(m.on_attempt(t0, Attempt::Mapped { ext: a, lease, epoch: Some(500) }), vec![Effect::External(a)]);
    assert_eq!(m.next(), (t0 + EPOCH_CHECK, Action::CheckEpoch));
    let t1 = t0 + EPOCH_CHECK;
    assert!(m.on_epoch(t1, Some(560)).is_empty());
    assert_eq!(m.next(), (t1 + EPOCH_CHECK, Action::CheckEpoch));
    // The router restarted 3 s ago.
    let t2 = t1 + EPOCH_CHECK;
    assert_eq!(m.on_epoch(t2, Some(3)), vec![Effect::RouterRestarted { before: 560, now: 3 }]);
    assert_eq!(m.next(), (t2, Action::Map), "mapped again at once");
    // The new mapping (same address): nothing to withdraw or report.
    assert!(m.on_attempt(t2, Attempt::Mapped { ext: a, lease, epoch: Some(3) }).is_empty());
    // No answer to a check: map now (a failure there withdraws the address).
    let t3 = t2 + EPOCH_CHECK;
    assert!(m.on_epoch(t3, None).is_empty());
    assert_eq!(m.next(), (t3, Action::Map));
    assert_eq!(m.on_attempt(t3, Attempt::Failed), vec![Effect::ExternalLost(a)]);
}

#[test]
fn short_lease_renewal_notices_a_restart_itself() {
    let t0 = Instant::now();
    let mut m = MappingMachine::new(t0);
    let a = sa("203.0.113.21:4816");
    let b = sa("203.0.113.21:31000");
    let lease = secs(6);
    m.on_attempt(t0, Attempt::Mapped { ext: a, lease, epoch: Some(100) });
    assert_eq!(m.next(), (t0 + secs(3), Action::Map), "renewal comes before any epoch check");
    // Renewal after a restart: another port this time.
    let fx = m.on_attempt(t0 + secs(3), Attempt::Mapped { ext: b, lease, epoch: Some(1) });
    assert_eq!(fx, vec![Effect::RouterRestarted { before: 100, now: 1 }, Effect::ExternalLost(a), Effect::External(b)]);
}
