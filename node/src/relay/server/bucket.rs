//! The relay's token buckets (per client, in total, for challenges and
//! proof checks).

use std::time::{Duration, Instant};

/// A token bucket, full when made. Rate and size are passed in, so that
/// each client's is small.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bucket {
    tokens: u64,
    /// When tokens were last added (`None`: not yet used).
    last: Option<Instant>,
}

impl Bucket {
    pub(super) fn full(burst: u64) -> Bucket {
        Bucket { tokens: burst, last: None }
    }

    fn refill(&mut self, rate: u64, burst: u64, now: Instant) {
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(last);
        let add = (u128::from(rate) * elapsed.as_nanos() / 1_000_000_000).min(u128::from(burst)) as u64;
        if self.tokens.saturating_add(add) >= burst {
            self.tokens = burst;
            self.last = Some(now);
        } else if add > 0 {
            self.tokens += add;
            // Keep the fraction of a token not yet added.
            self.last = Some(last + Duration::from_nanos((u128::from(add) * 1_000_000_000 / u128::from(rate.max(1))) as u64));
        }
    }

    /// Are there `n` tokens (after adding what the time since brought)?
    pub(super) fn holds(&mut self, n: u64, rate: u64, burst: u64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        self.tokens >= n
    }

    /// Take `n` tokens that [`Bucket::holds`] found.
    pub(super) fn spend(&mut self, n: u64) {
        self.tokens -= n;
    }

    pub(super) fn take(&mut self, n: u64, rate: u64, burst: u64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}
