//! Retransmission cache: a preallocated ring of recent plain (decrypted) RTP packets keyed by
//! sequence number, for answering NACKs. No allocation after [`RtxCache::new`].

use std::time::Instant;

/// Default number of packets cached per stream: 512 (≈0.5 s of 1000 pkt/s video).
/// Memory per track: 512 × [`RTX_SLOT_BYTES`] ≈ 750 KiB plus 24 B of metadata per slot.
pub const RTX_CACHE_PACKETS: usize = 512;
/// Largest capacity [`RtxCache::new`] accepts (larger requests are clamped): the 16-bit seq
/// space makes more slots useless. Worst case 32768 × 1500 B ≈ 47 MiB.
pub const RTX_MAX_CAPACITY: usize = 32768;
/// Maximum times one cached packet is handed out for retransmission. Default 4. Bounds RTX
/// output caused by repeated/hostile NACKs for the same seq (RELIABILITY B6).
pub const RTX_MAX_RESENDS: u8 = 4;
/// Bytes per slot: packets longer than this are not cached (counted in [`RtxCache::oversize`]).
pub const RTX_SLOT_BYTES: usize = 1500;

#[derive(Debug, Clone, Copy)]
struct Meta {
    seq: u16,
    len: u16,
    resends: u8,
    valid: bool,
    last_resend: Option<Instant>,
}

const EMPTY: Meta = Meta {
    seq: 0,
    len: 0,
    resends: 0,
    valid: false,
    last_resend: None,
};

/// Preallocated per-stream cache of recent plain RTP packets keyed by seq, for answering NACKs.
#[derive(Debug, Clone)]
pub struct RtxCache {
    meta: Vec<Meta>,
    data: Vec<u8>,
    oversize: u64,
    hits: u64,
    misses: u64,
}

impl RtxCache {
    /// Cache holding the last `capacity` packets (clamped to 1..=[`RTX_MAX_CAPACITY`]);
    /// allocates `capacity × RTX_SLOT_BYTES` once.
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.clamp(1, RTX_MAX_CAPACITY);
        RtxCache {
            meta: vec![EMPTY; cap],
            data: vec![0; cap * RTX_SLOT_BYTES],
            oversize: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    fn slot(&self, seq: u16) -> usize {
        usize::from(seq) % self.meta.len()
    }

    /// Cache `pkt` under `seq`, evicting whatever shared its slot — unless that is a newer
    /// packet (a late reordered packet never evicts a newer one). Packets longer than
    /// [`RTX_SLOT_BYTES`] are not cached (counted).
    pub fn insert(&mut self, seq: u16, pkt: &[u8]) {
        if pkt.len() > RTX_SLOT_BYTES {
            self.oversize += 1;
            return;
        }
        let i = self.slot(seq);
        let Some(m) = self.meta.get_mut(i) else {
            return;
        };
        if m.valid && m.seq != seq && (m.seq.wrapping_sub(seq) as i16) > 0 {
            return;
        }
        let off = i * RTX_SLOT_BYTES;
        let Some(dst) = self.data.get_mut(off..off + pkt.len()) else {
            return;
        };
        dst.copy_from_slice(pkt);
        *m = Meta {
            seq,
            len: pkt.len() as u16,
            resends: 0,
            valid: true,
            last_resend: None,
        };
    }

    /// The cached packet for `seq` if still present and not resent more than RTX_MAX_RESENDS times (counts a resend).
    pub fn get_for_resend(&mut self, now: Instant, seq: u16) -> Option<&[u8]> {
        self.get_for_resend_up_to(now, seq, RTX_MAX_RESENDS)
    }

    /// Like [`Self::get_for_resend`] with the caller's limit: a cache shared by the `n`
    /// subscribers of one stream allows `RTX_MAX_RESENDS × n` resends of a packet (capped at
    /// 255), so subscribers that lost the same packet do not use up each other's budget.
    pub fn get_for_resend_up_to(
        &mut self,
        now: Instant,
        seq: u16,
        max_resends: u8,
    ) -> Option<&[u8]> {
        let i = self.slot(seq);
        let m = self.meta.get_mut(i)?;
        if !m.valid || m.seq != seq || m.resends >= max_resends {
            self.misses += 1;
            return None;
        }
        m.resends += 1;
        m.last_resend = Some(now);
        self.hits += 1;
        let off = i * RTX_SLOT_BYTES;
        self.data.get(off..off + usize::from(m.len))
    }

    /// When `seq` was last handed out for resend, if cached and ever resent (for pacing by the caller).
    pub fn last_resend(&self, seq: u16) -> Option<Instant> {
        let m = self.meta.get(self.slot(seq))?;
        if m.valid && m.seq == seq {
            m.last_resend
        } else {
            None
        }
    }

    /// Packets not cached because they exceeded [`RTX_SLOT_BYTES`].
    pub fn oversize(&self) -> u64 {
        self.oversize
    }

    /// Resend lookups answered / refused (missing, evicted or over the resend limit).
    pub fn hits_misses(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkt(seq: u16, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u16 ^ seq) as u8).collect()
    }

    #[test]
    fn hit_miss_and_eviction() {
        let t = Instant::now();
        let mut c = RtxCache::new(8);
        for s in 0..8u16 {
            c.insert(s, &pkt(s, 100 + s as usize));
        }
        assert_eq!(c.get_for_resend(t, 3), Some(&pkt(3, 103)[..]));
        assert_eq!(c.last_resend(3), Some(t));
        assert_eq!(c.get_for_resend(t, 8), None); // never inserted
        c.insert(8, &pkt(8, 50)); // evicts 0
        assert_eq!(c.get_for_resend(t, 0), None);
        assert_eq!(c.get_for_resend(t, 8), Some(&pkt(8, 50)[..]));
        // late packet 0 does not evict newer 8
        c.insert(0, &pkt(0, 10));
        assert_eq!(c.get_for_resend(t, 8), Some(&pkt(8, 50)[..]));
        assert_eq!(c.hits_misses(), (3, 2));
    }

    #[test]
    fn wraps_and_default_capacity() {
        let t = Instant::now();
        let mut c = RtxCache::new(RTX_CACHE_PACKETS);
        for s in (65000u32..66000).map(|s| s as u16) {
            c.insert(s, &pkt(s, 20));
        }
        // last 512 inserted: 65488..=65535, 0..=463
        assert_eq!(c.get_for_resend(t, 65487), None);
        assert_eq!(c.get_for_resend(t, 65488), Some(&pkt(65488, 20)[..]));
        assert_eq!(c.get_for_resend(t, 463), Some(&pkt(463, 20)[..]));
        assert_eq!(RtxCache::new(0).capacity(), 1);
        assert_eq!(RtxCache::new(usize::MAX).capacity(), RTX_MAX_CAPACITY);
    }

    #[test]
    fn resend_limit() {
        let t = Instant::now();
        let mut c = RtxCache::new(16);
        c.insert(5, &[1, 2, 3]);
        for _ in 0..RTX_MAX_RESENDS {
            assert!(c.get_for_resend(t, 5).is_some());
        }
        assert_eq!(c.get_for_resend(t, 5), None);
        // re-inserting (a new packet with that seq) resets the count
        c.insert(5, &[4]);
        assert_eq!(c.get_for_resend(t, 5), Some(&[4u8][..]));
        // a shared cache: three subscribers lost the same packet, each gets its budget
        c.insert(6, &[6]);
        for _ in 0..3 * RTX_MAX_RESENDS {
            assert!(c.get_for_resend_up_to(t, 6, 3 * RTX_MAX_RESENDS).is_some());
        }
        assert_eq!(c.get_for_resend_up_to(t, 6, 3 * RTX_MAX_RESENDS), None);
    }

    #[test]
    fn oversize_not_cached() {
        let t = Instant::now();
        let mut c = RtxCache::new(16);
        c.insert(1, &[0u8; RTX_SLOT_BYTES]);
        c.insert(2, &[0u8; RTX_SLOT_BYTES + 1]);
        assert_eq!(
            c.get_for_resend(t, 1).map(<[u8]>::len),
            Some(RTX_SLOT_BYTES)
        );
        assert_eq!(c.get_for_resend(t, 2), None);
        assert_eq!(c.oversize(), 1);
    }

    proptest! {
        #[test]
        fn arbitrary_ops_never_panic(ops in proptest::collection::vec((any::<u16>(), 0usize..1600, any::<bool>()), 0..300), cap in 0usize..70) {
            let t = Instant::now();
            let mut c = RtxCache::new(cap);
            for (seq, len, get) in ops {
                if get {
                    if let Some(p) = c.get_for_resend(t, seq) {
                        prop_assert!(p.len() <= RTX_SLOT_BYTES);
                    }
                } else {
                    c.insert(seq, &pkt(seq, len));
                }
            }
        }
    }
}
