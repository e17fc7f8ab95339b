//! Relay options shared by `partybus dht` and the node commands: the
//! limits of the relay served, and the rate format (`2MB/s`).

use anyhow::{bail, Result};
use clap::Args;
use partybus::RelayConfig;

/// The relay's limits; unset ones keep [`RelayConfig::default`]'s.
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayLimitArgs {
    /// Relay: registered clients at most (default 1024).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub relay_max_clients: Option<usize>,
    /// Relay: bytes per second one client may send through it, e.g. 10MB/s (default), 500KiB/s, 16Mbit/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub relay_client_rate: Option<u64>,
    /// Relay: bytes per second forwarded for all clients together, e.g. 50MB/s (default), 400Mbit/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub relay_total_rate: Option<u64>,
}

impl RelayLimitArgs {
    /// `base` with the limits given.
    pub fn apply(&self, mut base: RelayConfig) -> RelayConfig {
        if let Some(n) = self.relay_max_clients {
            base.max_clients = n;
        }
        if let Some(r) = self.relay_client_rate {
            base.client_rate = r;
        }
        if let Some(r) = self.relay_total_rate {
            base.total_rate = r;
        }
        base
    }
}

const RATE_FORM: &str = "expected a rate like 2MB/s, 500KiB/s or 16Mbit/s (a number and a unit: B, kB, MB, GB, KiB, MiB, GiB for bytes, \
     bit, kbit, Mbit, Gbit for bits; \"/s\" is optional)";

/// Parses a rate in bytes per second: a number (decimals allowed) and a unit
/// from [`RATE_FORM`], with an optional `/s`. Byte units need a capital `B`
/// and bit units are spelt `bit`, so `16Mb` (megabits or megabytes?) is an
/// error rather than a guess.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim_start());
    let factor: f64 = match unit {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "bit" => 1.0 / 8.0,
        "kbit" | "Kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        "" => return Err(format!("{s:?} has no unit; {RATE_FORM}")),
        other => return Err(format!("{s:?}: unknown unit {other:?}; {RATE_FORM}")),
    };
    let n: f64 = num.parse().map_err(|_| format!("{s:?} does not start with a number; {RATE_FORM}"))?;
    let rate = (n * factor).round();
    if !(1.0..=1e15).contains(&rate) {
        return Err(format!("{s:?} is not a rate between 1 B/s and 1000 TB/s; {RATE_FORM}"));
    }
    Ok(rate as u64)
}

/// A count of at least 1.
fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a number of clients (1 or more), e.g. 1024")),
    }
}

/// A hood fingerprint for `--relay-hood`: 64 hex digits, any case (stored in lower case).
pub fn parse_fingerprint(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(format!(
            "{s:?} is not a hood fingerprint (64 hex digits, the SHA-256 of the hood certificate: \
             `partybus cert show HOOD.crt` prints it as \"fingerprint\")"
        ))
    }
}

/// Checks a rate from the config file (`key = "2MB/s"`).
pub fn rate_from_file(key: &str, v: &str) -> Result<u64> {
    match parse_rate(v) {
        Ok(r) => Ok(r),
        Err(e) => bail!("config `{key}`: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        for (s, r) in [
            ("2MB/s", 2_000_000),
            ("2MB", 2_000_000),
            ("2 MB/s", 2_000_000),
            ("1.5MB/s", 1_500_000),
            ("500KiB/s", 512_000),
            ("500kB/s", 500_000),
            ("16Mbit/s", 2_000_000),
            ("1Gbit", 125_000_000),
            ("1GiB/s", 1 << 30),
            ("100B/s", 100),
        ] {
            assert_eq!(parse_rate(s), Ok(r), "{s}");
        }
        for bad in ["", "2", "MB/s", "2Mb/s", "2mb", "2 MBps", "-1MB/s", "0B/s", "0.1B/s", "1e3B", "2MB/h", "1..2MB"] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.contains("2MB/s") && e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn fingerprints_and_counts() {
        let f = "AB".repeat(32);
        assert_eq!(parse_fingerprint(&f), Ok("ab".repeat(32)));
        assert!(parse_fingerprint("abc").unwrap_err().contains("64 hex digits"));
        assert!(parse_fingerprint(&"g".repeat(64)).is_err());
        assert_eq!(parse_count("10"), Ok(10));
        assert!(parse_count("0").is_err() && parse_count("x").is_err());
    }
}
