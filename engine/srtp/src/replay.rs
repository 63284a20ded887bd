//! Per-SSRC state: RFC 3711 Appendix A index estimation, the replay window
//! (RFC 3711 §3.3.2) and a fixed-capacity SSRC table.

use crate::{SrtpError, MAX_SSRCS_PER_CONTEXT, REPLAY_WINDOW};

/// Largest 48-bit SRTP packet index (ROC = 2^32 - 1, SEQ = 65535).
pub(crate) const MAX_SRTP_INDEX: u64 = (1 << 48) - 1;

/// RFC 3711 Appendix A: the 48-bit index of `seq`, given the highest index seen so far
/// (`ROC || s_l`). `None` when the guessed ROC would be -1 (a packet from before the stream
/// started) or 2^32 (index space exhausted).
pub(crate) fn estimate_index(highest: u64, seq: u16) -> Option<u64> {
    let roc = highest >> 16;
    let s_l = (highest & 0xffff) as u16;
    let v = if s_l < 0x8000 {
        if i32::from(seq) - i32::from(s_l) > 0x8000 {
            roc.checked_sub(1)?
        } else {
            roc
        }
    } else if s_l - 0x8000 > seq {
        roc + 1
    } else {
        roc
    };
    let index = (v << 16) | u64::from(seq);
    (index <= MAX_SRTP_INDEX).then_some(index)
}

// The bitmask below is a u128.
const _: () = assert!(REPLAY_WINDOW == 128);

/// Sliding replay window anchored at the highest authenticated index.
/// Bit `d` of `mask` set = index `highest - d` was received.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReplayWindow {
    pub(crate) highest: u64,
    mask: u128,
}

impl ReplayWindow {
    /// A window whose first authenticated index is `index`.
    pub(crate) fn starting_at(index: u64) -> Self {
        ReplayWindow {
            highest: index,
            mask: 1,
        }
    }

    /// Read-only check (before authentication).
    pub(crate) fn check(&self, index: u64) -> Result<(), SrtpError> {
        if index > self.highest {
            return Ok(());
        }
        let delta = self.highest - index;
        if delta >= REPLAY_WINDOW {
            return Err(SrtpError::TooOld);
        }
        if self.mask & (1u128 << delta) != 0 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    /// Marks `index` received (after authentication). `index` must have passed [`Self::check`].
    pub(crate) fn commit(&mut self, index: u64) {
        if index > self.highest {
            let shift = index - self.highest;
            self.mask = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.mask << shift
            };
            self.mask |= 1;
            self.highest = index;
        } else {
            let delta = self.highest - index;
            if delta < REPLAY_WINDOW {
                self.mask |= 1u128 << delta;
            }
        }
    }
}

/// Fixed-capacity map SSRC -> `T`, preallocated, linear search with a last-hit cache.
#[derive(Debug)]
pub(crate) struct SsrcTable<T: Copy + Default> {
    ssrcs: [u32; MAX_SSRCS_PER_CONTEXT],
    values: [T; MAX_SSRCS_PER_CONTEXT],
    len: usize,
    last: usize,
}

impl<T: Copy + Default> SsrcTable<T> {
    pub(crate) fn new() -> Self {
        SsrcTable {
            ssrcs: [0; MAX_SSRCS_PER_CONTEXT],
            values: [T::default(); MAX_SSRCS_PER_CONTEXT],
            len: 0,
            last: 0,
        }
    }

    /// Slot of `ssrc`, if present.
    pub(crate) fn find(&mut self, ssrc: u32) -> Option<usize> {
        if self.last < self.len && self.ssrcs[self.last] == ssrc {
            return Some(self.last);
        }
        let i = self.ssrcs[..self.len].iter().position(|&s| s == ssrc)?;
        self.last = i;
        Some(i)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len >= MAX_SSRCS_PER_CONTEXT
    }

    pub(crate) fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.values[..self.len].get_mut(slot)
    }

    /// Inserts a new SSRC (caller checked it is absent).
    pub(crate) fn insert(&mut self, ssrc: u32, value: T) -> Result<usize, SrtpError> {
        if self.is_full() {
            return Err(SrtpError::TooManySsrcs);
        }
        let i = self.len;
        self.ssrcs[i] = ssrc;
        self.values[i] = value;
        self.len += 1;
        self.last = i;
        Ok(i)
    }

    /// Removes `ssrc` if present (swap-remove).
    pub(crate) fn remove(&mut self, ssrc: u32) {
        if let Some(i) = self.ssrcs[..self.len].iter().position(|&s| s == ssrc) {
            let last = self.len - 1;
            self.ssrcs.swap(i, last);
            self.values.swap(i, last);
            self.len = last;
            self.last = 0;
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn index_estimation_rfc3711_appendix_a() {
        // Same ROC.
        assert_eq!(estimate_index(100, 101), Some(101));
        assert_eq!(estimate_index(100, 50), Some(50));
        // Wrap forward: s_l high, seq low.
        assert_eq!(estimate_index(65535, 0), Some(1 << 16));
        assert_eq!(estimate_index(65000, 10), Some((1 << 16) | 10));
        // Late packet from the previous ROC: s_l low, seq high.
        assert_eq!(estimate_index((1 << 16) | 5, 65530), Some(65530));
        // Before the stream start (ROC would be -1).
        assert_eq!(estimate_index(5, 65530), None);
        // Index space exhausted.
        assert_eq!(estimate_index(MAX_SRTP_INDEX, 0), None);
        assert_eq!(estimate_index(MAX_SRTP_INDEX, 65535), Some(MAX_SRTP_INDEX));
    }

    #[test]
    fn window_semantics() {
        let mut w = ReplayWindow::starting_at(1000);
        assert_eq!(w.check(1000), Err(SrtpError::Replayed));
        assert_eq!(w.check(1001), Ok(()));
        assert_eq!(w.check(999), Ok(()));
        w.commit(999);
        assert_eq!(w.check(999), Err(SrtpError::Replayed));
        assert_eq!(w.check(1000 - 127), Ok(()));
        assert_eq!(w.check(1000 - 128), Err(SrtpError::TooOld));
        w.commit(1200);
        assert_eq!(w.check(1000), Err(SrtpError::TooOld));
        assert_eq!(w.check(1100), Ok(()));
        w.commit(1100);
        assert_eq!(w.check(1100), Err(SrtpError::Replayed));
        w.commit(100_000);
        assert_eq!(w.check(1200), Err(SrtpError::TooOld));
        assert_eq!(w.check(100_000), Err(SrtpError::Replayed));
        assert_eq!(w.check(99_999), Ok(()));
    }

    #[test]
    fn table_capacity_and_remove() {
        let mut t: SsrcTable<u64> = SsrcTable::new();
        for s in 0..MAX_SSRCS_PER_CONTEXT as u32 {
            assert_eq!(t.find(s + 10), None);
            t.insert(s + 10, u64::from(s)).unwrap();
        }
        assert!(t.is_full());
        assert_eq!(t.insert(1, 0), Err(SrtpError::TooManySsrcs));
        let slot = t.find(20).unwrap();
        assert_eq!(*t.get_mut(slot).unwrap(), 10);
        t.remove(20);
        assert_eq!(t.find(20), None);
        assert_eq!(t.len(), MAX_SSRCS_PER_CONTEXT - 1);
        let last = MAX_SSRCS_PER_CONTEXT as u32 - 1 + 10;
        let slot = t.find(last).unwrap();
        assert_eq!(*t.get_mut(slot).unwrap(), u64::from(last - 10));
        t.insert(1, 7).unwrap();
        assert!(t.get_mut(MAX_SSRCS_PER_CONTEXT).is_none());
    }

    proptest! {
        /// The window accepts each index at most once, whatever the arrival order.
        #[test]
        fn window_accepts_each_index_once(idx in proptest::collection::vec(0u64..400, 1..300)) {
            let mut w = ReplayWindow::starting_at(idx[0]);
            let mut accepted = std::collections::HashSet::new();
            accepted.insert(idx[0]);
            for &i in &idx[1..] {
                if w.check(i).is_ok() {
                    prop_assert!(accepted.insert(i), "index {} accepted twice", i);
                    w.commit(i);
                }
            }
        }

        #[test]
        fn estimate_never_panics(h in 0u64..=MAX_SRTP_INDEX, seq in any::<u16>()) {
            if let Some(i) = estimate_index(h, seq) {
                prop_assert_eq!(i & 0xffff, u64::from(seq));
                prop_assert!(i.abs_diff(h) <= 0x8000 + 1);
            }
        }
    }
}
