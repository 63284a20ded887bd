//! Token buckets fed with the session time (sans-IO).

/// A token bucket counting in thousandths of a token, refilled from the time passed in.
/// Time going backwards refills nothing (and never panics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bucket {
    milli: u64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket of `burst` tokens at time `now_ms`.
    pub(crate) fn full(now_ms: u64, burst: u32) -> Bucket {
        Bucket {
            milli: u64::from(burst) * 1000,
            last_ms: now_ms,
        }
    }

    /// Refill at `per_sec` tokens per second up to `burst`, then take one token if there is one.
    pub(crate) fn take(&mut self, now_ms: u64, per_sec: u32, burst: u32) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        // ms * tokens/s = thousandths of a token.
        let refill = elapsed.saturating_mul(u64::from(per_sec));
        self.milli = self
            .milli
            .saturating_add(refill)
            .min(u64::from(burst) * 1000);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut b = Bucket::full(0, 5);
        assert_eq!((0..10).filter(|_| b.take(0, 1, 5)).count(), 5);
        assert!(!b.take(999, 1, 5));
        assert!(b.take(1000, 1, 5));
        // A long pause refills to the burst, not beyond.
        assert_eq!((0..10).filter(|_| b.take(1_000_000, 1, 5)).count(), 5);
        // Time going backwards: no refill, no panic.
        assert!(!b.take(0, 1, 5));
        assert!(!b.take(u64::MAX, u32::MAX, 0));
    }
}
