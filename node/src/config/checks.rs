//! Which option values a node can run with. Checked once in `Bus::join`, so
//! a typo fails at start with the allowed range in the message instead of
//! spinning a core (`keep_alive = 1ns`), timing out every handshake
//! (`idle_timeout = 0s`) or failing every emit (`max_event_size = 0`).

use std::fmt;
use std::time::Duration;

use super::Config;

/// An option outside the values a node can run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("option `{option}` = {value}: {why}; allowed: {allowed}")]
pub struct ConfigError {
    /// The option as the config file and `Config` spell it.
    pub option: &'static str,
    pub value: String,
    pub why: &'static str,
    pub allowed: String,
}

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const KIB: usize = 1 << 10;
const GIB: usize = 1 << 30;

/// A duration that must lie in `lo..=hi`.
fn duration(option: &'static str, v: Duration, lo: Duration, hi: Duration, why: &'static str) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&v) {
        return Ok(());
    }
    Err(ConfigError { option, value: format!("{v:?}"), why, allowed: format!("{lo:?} to {hi:?}") })
}

/// A byte count that must lie in `lo..=hi`.
fn bytes(option: &'static str, v: usize, lo: usize, hi: usize, why: &'static str) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&v) {
        return Ok(());
    }
    Err(ConfigError { option, value: v.to_string(), why, allowed: format!("{} to {}", Size(lo), Size(hi)) })
}

/// A byte count printed the way the README writes limits.
struct Size(usize);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= GIB && n % GIB == 0 => write!(f, "{} GiB", n / GIB),
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{} MiB", n >> 20),
            n if n >= KIB && n % KIB == 0 => write!(f, "{} KiB", n / KIB),
            n => write!(f, "{n} bytes"),
        }
    }
}

impl Config {
    /// Checks every option against the values a node can run with;
    /// [`Bus::join`](crate::Bus::join) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        duration("idle_timeout", self.idle_timeout, S, HOUR, "a neighbour silent this long is dropped")?;
        // Below ~100 ms both peers would spend a core on keep-alives; at or
        // above the idle timeout a quiet neighbour would be dropped between two.
        let ka_max = self.idle_timeout.saturating_sub(MS).max(100 * MS);
        duration("keep_alive", self.keep_alive, 100 * MS, ka_max, "keep-alives must come well before the idle timeout")?;
        duration("handshake_timeout", self.handshake_timeout, 100 * MS, 5 * 60 * S, "a TLS handshake and hello must fit in it")?;
        duration("redial_base", self.redial_base, 10 * MS, HOUR, "the first re-dial delay of a lost neighbour")?;
        duration("redial_max", self.redial_max, self.redial_base, 24 * HOUR, "the re-dial delay cap, at least redial_base")?;
        bytes("max_event_size", self.max_event_size, 256, GIB, "the largest event (name + payload) sent or received")?;
        bytes("queue_limit", self.queue_limit, 16 * KIB, 16 * GIB.min(usize::MAX >> 2), "bytes one neighbour's send queue may hold")?;
        if self.max_subscriptions_per_peer == 0 {
            return Err(ConfigError {
                option: "max_subscriptions_per_peer",
                value: "0".into(),
                why: "no neighbour could listen to anything this node emits",
                allowed: "1 or more".into(),
            });
        }
        if let super::FullPolicy::Disconnect(t) = self.full_policy {
            duration("stuck_timeout", t, 10 * MS, HOUR, "how long a full queue may block before its neighbour is dropped")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use partybus_pki::TempHood;

    use super::*;

    fn config() -> Config {
        let h = TempHood::new("checks", 1).unwrap();
        Config::new(h.hood().clone(), h.identity("me").unwrap())
    }

    #[test]
    fn defaults_pass() {
        config().validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_option_and_the_range() {
        type BreakIt = fn(&mut Config);
        let cases: Vec<(&str, BreakIt)> = vec![
            ("keep_alive", |c| c.keep_alive = Duration::ZERO),
            ("keep_alive", |c| c.keep_alive = Duration::from_nanos(1)),
            ("keep_alive", |c| c.keep_alive = c.idle_timeout),
            ("idle_timeout", |c| c.idle_timeout = Duration::ZERO),
            ("handshake_timeout", |c| c.handshake_timeout = Duration::ZERO),
            ("max_event_size", |c| c.max_event_size = 0),
            ("queue_limit", |c| c.queue_limit = 0),
            ("max_subscriptions_per_peer", |c| c.max_subscriptions_per_peer = 0),
            ("redial_max", |c| c.redial_max = c.redial_base / 2),
            ("stuck_timeout", |c| c.full_policy = crate::FullPolicy::Disconnect(Duration::ZERO)),
        ];
        for (option, break_it) in cases {
            let mut c = config();
            break_it(&mut c);
            let e = c.validate().unwrap_err();
            assert_eq!(e.option, option);
            let text = e.to_string();
            assert!(text.contains("allowed: "), "{text}");
        }
        let mut c = config();
        c.queue_limit = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "option `queue_limit` = 0: bytes one neighbour's send queue may hold; allowed: 16 KiB to 16 GiB"
        );
    }
}
