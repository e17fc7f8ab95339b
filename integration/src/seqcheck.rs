//! The numbered-stream checker (`seqcheck` bin): an emitter of numbered
//! events at a bounded rate and a receiver that checks that none is missing,
//! duplicated or out of order. For path-change tests (`tests/path_change.rs`):
//! the stream runs while the lab changes the path under it.
//!
//! Payload: a MessagePack `bin` (as `partybus bench` sends) whose first 8
//! bytes are the event's number (big endian, from 0), padded to the payload
//! size. After the last event the emitter sends `<EVENT>.end` with the number
//! of events emitted (MessagePack integer). Order holds per event name only:
//! the marker is a small event and may overtake big data events still on
//! their way (partybus sends small events first), so the receiver waits for
//! the numbers the marker announces.
//!
//! This module holds what both ends share (the payload, the [`SeqCheck`]
//! book-keeping and its [`Report`]); the bin drives a `partybus` node.

use serde::{Deserialize, Serialize};

/// Numbers at or above this are not tracked (a bound on the checker's memory).
pub const MAX_EVENTS: u64 = 10_000_000;
/// Smallest payload that holds a number: bin8 header (2) + 8 bytes.
pub const MIN_PAYLOAD: usize = 10;
/// Missing ranges listed in a report at most.
const MAX_GAPS: usize = 8;

/// The payload of event `seq`, `size` bytes in all (at least [`MIN_PAYLOAD`]).
pub fn payload(seq: u64, size: usize) -> Vec<u8> {
    let size = size.max(MIN_PAYLOAD);
    let mut v = Vec::with_capacity(size);
    match size {
        n if n - 2 < 256 => {
            v.push(0xc4);
            v.push((n - 2) as u8);
        }
        n if n - 3 < 65536 => {
            v.push(0xc5);
            v.extend_from_slice(&((n - 3) as u16).to_be_bytes());
        }
        n => {
            v.push(0xc6);
            v.extend_from_slice(&((n - 5) as u32).to_be_bytes());
        }
    }
    v.extend_from_slice(&seq.to_be_bytes());
    v.resize(size, 0x55);
    v
}

/// The number in a payload made by [`payload`].
pub fn seq_of(raw: &[u8]) -> Option<u64> {
    let head = match raw.first()? {
        0xc4 => 2,
        0xc5 => 3,
        0xc6 => 5,
        _ => return None,
    };
    let b: [u8; 8] = raw.get(head..head + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// What the receiver found. `ok()` when everything arrived once, in order,
/// and nothing after the end marker and the last announced number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The emitter's count from the end marker (None: no marker arrived).
    pub emitted: Option<u64>,
    /// Events received (duplicates included).
    pub received: u64,
    /// Distinct numbers received.
    pub distinct: u64,
    /// Numbers below the emitted count never received (below the highest
    /// number seen, without an end marker).
    pub missing: u64,
    /// Events whose number had arrived before.
    pub duplicates: u64,
    /// Events that arrived after a higher number (first time seen).
    pub reordered: u64,
    /// Events that arrived after the end marker, once every number it
    /// announced had arrived (stragglers).
    pub after_end: u64,
    /// Payloads without a number, or numbers >= [`MAX_EVENTS`] or the emitted count.
    pub bogus: u64,
    /// The first missing ranges `[from, to]` (inclusive).
    pub gaps: Vec<(u64, u64)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.emitted.is_some()
            && self.missing == 0
            && self.duplicates == 0
            && self.reordered == 0
            && self.after_end == 0
            && self.bogus == 0
            && self.distinct == self.emitted.unwrap_or(0)
    }

    /// `10000 emitted, 9962 received: 38 missing (gaps [120..157]), ...`.
    pub fn summary(&self) -> String {
        let emitted = self.emitted.map(|e| e.to_string()).unwrap_or_else(|| "? (no end marker)".into());
        let mut s = format!("{emitted} emitted, {} received ({} distinct)", self.received, self.distinct);
        for (n, what) in [
            (self.missing, "missing"),
            (self.duplicates, "duplicates"),
            (self.reordered, "out of order"),
            (self.after_end, "after the end marker"),
            (self.bogus, "bogus"),
        ] {
            if n > 0 {
                s.push_str(&format!(", {n} {what}"));
            }
        }
        if !self.gaps.is_empty() {
            let g: Vec<String> = self.gaps.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}..={b}") }).collect();
            s.push_str(&format!(" (missing: {})", g.join(", ")));
        }
        s
    }
}

/// The receiver's book-keeping.
#[derive(Default)]
pub struct SeqCheck {
    seen: Vec<u64>,
    /// Highest number seen, plus one.
    high: u64,
    received: u64,
    distinct: u64,
    duplicates: u64,
    reordered: u64,
    after_end: u64,
    bogus: u64,
    end: Option<u64>,
}

impl SeqCheck {
    pub fn new() -> SeqCheck {
        SeqCheck::default()
    }

    fn is_seen(&self, n: u64) -> bool {
        self.seen.get((n / 64) as usize).is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    /// An event with payload `raw` arrived.
    pub fn on_payload(&mut self, raw: &[u8]) {
        match seq_of(raw) {
            Some(n) => self.on_seq(n),
            None => {
                self.received += 1;
                self.bogus += 1;
            }
        }
    }

    /// Event number `n` arrived.
    pub fn on_seq(&mut self, n: u64) {
        self.received += 1;
        if self.complete() {
            self.after_end += 1;
        }
        if n >= MAX_EVENTS || self.end.is_some_and(|e| n >= e) {
            self.bogus += 1;
            return;
        }
        if self.is_seen(n) {
            self.duplicates += 1;
            return;
        }
        let w = (n / 64) as usize;
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        self.seen[w] |= 1 << (n % 64);
        self.distinct += 1;
        if n + 1 < self.high {
            self.reordered += 1;
        }
        self.high = self.high.max(n + 1);
    }

    /// The end marker arrived: the emitter sent `emitted` events.
    pub fn on_end(&mut self, emitted: u64) {
        if self.end.is_none() {
            self.end = Some(emitted);
        }
    }

    pub fn ended(&self) -> bool {
        self.end.is_some()
    }

    /// The end marker arrived, and every number below its count.
    pub fn complete(&self) -> bool {
        self.end.is_some_and(|e| self.distinct >= e)
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn report(&self) -> Report {
        let upto = self.end.unwrap_or(self.high).min(MAX_EVENTS);
        let mut missing = 0;
        let mut gaps: Vec<(u64, u64)> = Vec::new();
        let mut n = 0;
        while n < upto {
            // Whole words at a time where nothing is missing.
            let w = (n / 64) as usize;
            if n % 64 == 0 && n + 64 <= upto && self.seen.get(w) == Some(&u64::MAX) {
                n += 64;
                continue;
            }
            if !self.is_seen(n) {
                missing += 1;
                let extends = gaps.last().is_some_and(|&(_, to)| to + 1 == n);
                if extends {
                    gaps.last_mut().expect("checked").1 = n;
                } else if gaps.len() < MAX_GAPS {
                    gaps.push((n, n));
                }
            }
            n += 1;
        }
        Report {
            emitted: self.end,
            received: self.received,
            distinct: self.distinct,
            missing,
            duplicates: self.duplicates,
            reordered: self.reordered,
            after_end: self.after_end,
            bogus: self.bogus,
            gaps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        for size in [0, 10, 11, 257, 258, 1024, 65538, 70_000] {
            let p = payload(123_456_789, size);
            assert_eq!(p.len(), size.max(MIN_PAYLOAD), "{size}");
            assert_eq!(seq_of(&p), Some(123_456_789), "{size}");
            // A valid MessagePack bin of the rest.
            let len = match p[0] {
                0xc4 => p[1] as usize + 2,
                0xc5 => u16::from_be_bytes([p[1], p[2]]) as usize + 3,
                _ => u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize + 5,
            };
            assert_eq!(len, p.len());
        }
        assert_eq!(seq_of(&[0xc0]), None);
        assert_eq!(seq_of(&[0xc4, 3, 1, 2, 3]), None);
    }

    #[test]
    fn clean_stream() {
        let mut c = SeqCheck::new();
        for n in 0..1000 {
            c.on_payload(&payload(n, 100));
        }
        c.on_end(1000);
        let r = c.report();
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.received, r.distinct, r.missing), (1000, 1000, 0));
        assert_eq!(r.summary(), "1000 emitted, 1000 received (1000 distinct)");
    }

    #[test]
    fn losses_duplicates_reordering() {
        let mut c = SeqCheck::new();
        for n in (0..200).filter(|n| !(38..=161).contains(n)) {
            c.on_seq(n);
        }
        c.on_seq(5); // duplicate
        c.on_seq(40); // late
        c.on_end(210);
        c.on_seq(205); // after the end marker (the marker overtook it)
        let r = c.report();
        assert!(!r.ok());
        assert_eq!(r.missing, (38..=161).count() as u64 - 1 + (200..210).count() as u64 - 1);
        assert_eq!((r.duplicates, r.reordered, r.after_end), (1, 1, 0), "{r:?}");
        assert_eq!(r.gaps, vec![(38, 39), (41, 161), (200, 204), (206, 209)]);
        assert!(r.summary().contains("missing: 38..=39, 41..=161, 200..=204, 206..=209"), "{}", r.summary());
    }

    #[test]
    fn the_end_marker_may_overtake_but_stragglers_count() {
        let mut c = SeqCheck::new();
        for n in 0..90 {
            c.on_seq(n);
        }
        c.on_end(100);
        assert!(!c.complete());
        for n in 90..100 {
            c.on_seq(n);
        }
        assert!(c.complete());
        assert!(c.report().ok(), "{:?}", c.report());
        c.on_seq(50); // a straggler
        let r = c.report();
        assert_eq!((r.duplicates, r.after_end), (1, 1), "{r:?}");
        assert!(!r.ok());
    }

    #[test]
    fn no_end_marker_and_bounds() {
        let mut c = SeqCheck::new();
        c.on_seq(3);
        c.on_seq(MAX_EVENTS);
        c.on_payload(b"\xc0");
        let r = c.report();
        assert!(!r.ok());
        assert_eq!((r.emitted, r.missing, r.bogus), (None, 3, 2));
        assert!(r.summary().starts_with("? (no end marker)"), "{}", r.summary());
    }
}
