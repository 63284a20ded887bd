//! Shard-local counters: plain `u64`s bumped on the packet path (no atomics), copied into the
//! shared-memory counter block once per loop iteration so control can export them.

use ils_shm::{Counter, ShardCounters};

/// Slots reserved for counters (matches the shared block's capacity).
pub const COUNTER_SLOTS: usize = 256;

/// Shard-local counter values indexed by [`Counter`].
pub struct LocalCounters {
    v: [u64; COUNTER_SLOTS],
    published: [u64; COUNTER_SLOTS],
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalCounters {
    /// All zero.
    pub fn new() -> Self {
        LocalCounters {
            v: [0; COUNTER_SLOTS],
            published: [0; COUNTER_SLOTS],
        }
    }

    /// Add one.
    #[inline]
    pub fn inc(&mut self, c: Counter) {
        self.add(c, 1);
    }

    /// Add `n`.
    #[inline]
    pub fn add(&mut self, c: Counter, n: u64) {
        if let Some(x) = self.v.get_mut(c as usize) {
            *x = x.wrapping_add(n);
        }
    }

    /// Current value.
    pub fn get(&self, c: Counter) -> u64 {
        self.v.get(c as usize).copied().unwrap_or(0)
    }

    /// Push the deltas since the last call into the shared block.
    pub fn publish(&mut self, shared: &ShardCounters) {
        for &c in Counter::ALL {
            let i = c as usize;
            if i >= COUNTER_SLOTS {
                continue;
            }
            let d = self.v[i].wrapping_sub(self.published[i]);
            if d != 0 {
                shared.add(c, d);
                self.published[i] = self.v[i];
            }
        }
    }
}
