//! Loss detection on a publisher's incoming stream and NACK scheduling (RFC 4585 generic NACK).
//!
//! [`NackGenerator`] keeps a bounded, preallocated list of missing sequence numbers; each is
//! NACKed at most [`NACK_MAX_RETRIES`] times, no more often than once per RTT, and forgotten
//! after [`NACK_MAX_AGE`]. Nothing allocates after construction.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Extends 16-bit seq numbers to u64 (handles wrap and reordering).
///
/// The first seq seen maps to `65536 + seq` so that packets reordered from before it still get
/// a smaller extended value without underflow. A seq more than 32767 ahead of the highest is
/// taken as a jump forward; anything else behind the highest is taken as reordering.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqExtender {
    highest: Option<u64>,
}

impl SeqExtender {
    /// New extender with no history.
    pub fn new() -> Self {
        SeqExtender { highest: None }
    }

    /// Extend `seq` relative to the highest extended seq seen so far (updating it).
    pub fn extend(&mut self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            let e = (1u64 << 16) + u64::from(seq);
            self.highest = Some(e);
            return e;
        };
        let diff = seq.wrapping_sub(h as u16) as i16;
        // h >= 65536 - 32768 always holds (starts at >= 65536, never decreases), so this never underflows.
        let e = h.saturating_add_signed(i64::from(diff));
        if diff > 0 {
            self.highest = Some(e);
        }
        e
    }

    /// Highest extended seq seen, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

/// Maximum number of missing seqs tracked per stream. Default 512 (≈0.5 s of 1000 pkt/s video).
/// Bounds the work and memory a lossy or hostile publisher can cause: 512 × 40 B ≈ 20 KiB per
/// stream, allocated once. When full, the oldest loss is dropped (and a keyframe is advised).
pub const NACK_MAX_PENDING: usize = 512;
/// Maximum number of times one seq is NACKed. Default 10. Bounds upstream NACK traffic for a
/// packet that never arrives.
pub const NACK_MAX_RETRIES: u8 = 10;
/// A loss older than this is dropped (a retransmission would arrive too late to be useful).
/// Default 1 s. Bounds how long state is held for a loss.
pub const NACK_MAX_AGE: Duration = Duration::from_secs(1);
/// Minimum spacing between two NACKs of the same seq, whatever `rtt_hint` says. Default 10 ms.
/// Bounds NACK rate when the RTT estimate is zero or absurdly small.
pub const NACK_MIN_RETRY_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy)]
struct Pending {
    ext: u64,
    first_seen: Instant,
    last_sent: Option<Instant>,
    retries: u8,
}

/// Detects losses in a publisher's incoming stream and says which seqs to NACK (bounded, retried, aged out).
#[derive(Debug, Clone)]
pub struct NackGenerator {
    ext: SeqExtender,
    /// Sorted by `ext`, oldest first. Capacity reserved up front; len never exceeds NACK_MAX_PENDING.
    pending: VecDeque<Pending>,
    last_rtt: Duration,
    needs_keyframe: bool,
    dropped: u64,
}

impl Default for NackGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl NackGenerator {
    /// New generator; preallocates room for [`NACK_MAX_PENDING`] losses.
    pub fn new() -> Self {
        NackGenerator {
            ext: SeqExtender::new(),
            pending: VecDeque::with_capacity(NACK_MAX_PENDING),
            last_rtt: NACK_MIN_RETRY_INTERVAL,
            needs_keyframe: false,
            dropped: 0,
        }
    }

    fn push_loss(&mut self, now: Instant, ext: u64) {
        if self.pending.len() >= NACK_MAX_PENDING {
            self.pending.pop_front();
            self.lose_one();
        }
        self.pending.push_back(Pending {
            ext,
            first_seen: now,
            last_sent: None,
            retries: 0,
        });
    }

    fn lose_one(&mut self) {
        self.dropped += 1;
        self.needs_keyframe = true;
    }

    /// Record a packet of the stream (original seq; for RTX, the seq from the RTX payload).
    /// Clears a pending loss when it arrives; a forward gap registers the missing seqs.
    pub fn on_packet(&mut self, now: Instant, seq: u16) {
        let prev = self.ext.highest();
        let e = self.ext.extend(seq);
        let Some(h) = prev else { return };
        if e > h {
            let gap = e - h - 1;
            if gap as usize > NACK_MAX_PENDING {
                // Too far to recover by NACK (stream jump or massive loss): resync.
                let n = self.pending.len() as u64;
                self.pending.clear();
                self.dropped += n + gap;
                self.needs_keyframe = true;
            } else {
                for m in h + 1..e {
                    self.push_loss(now, m);
                }
            }
        } else if let Ok(i) = self.pending.binary_search_by_key(&e, |p| p.ext) {
            self.pending.remove(i);
        }
    }

    /// Seqs to NACK now (those not NACKed within `rtt_hint`); writes into `out` and returns count. No allocation.
    /// Also drops losses past [`NACK_MAX_AGE`] or [`NACK_MAX_RETRIES`].
    pub fn poll_nacks(&mut self, now: Instant, rtt_hint: Duration, out: &mut [u16]) -> usize {
        let interval = rtt_hint.max(NACK_MIN_RETRY_INTERVAL);
        self.last_rtt = interval;
        let before = self.pending.len();
        self.pending.retain(|p| {
            p.retries < NACK_MAX_RETRIES
                && now.saturating_duration_since(p.first_seen) < NACK_MAX_AGE
        });
        let gone = before - self.pending.len();
        if gone > 0 {
            self.dropped += gone as u64;
            self.needs_keyframe = true;
        }
        let mut n = 0;
        for p in self.pending.iter_mut() {
            if n >= out.len() {
                break;
            }
            let due = match p.last_sent {
                None => true,
                Some(t) => now.saturating_duration_since(t) >= interval,
            };
            if due {
                if let Some(slot) = out.get_mut(n) {
                    *slot = p.ext as u16;
                    n += 1;
                }
                p.last_sent = Some(now);
                p.retries = p.retries.saturating_add(1);
            }
        }
        n
    }

    /// When [`Self::poll_nacks`] next has something to do (send or expire), if anything is pending.
    /// Uses the RTT given to the last `poll_nacks`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .iter()
            .map(|p| {
                let expire = p.first_seen + NACK_MAX_AGE;
                if p.retries >= NACK_MAX_RETRIES {
                    return p.last_sent.unwrap_or(p.first_seen);
                }
                match p.last_sent {
                    None => p.first_seen,
                    Some(t) => (t + self.last_rtt).min(expire),
                }
            })
            .min()
    }

    /// Number of losses currently tracked.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Losses given up on (overflow, age, retries, resync) since creation.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// True (once) if losses were given up on since the last call: the caller should request a keyframe.
    pub fn take_needs_keyframe(&mut self) -> bool {
        std::mem::take(&mut self.needs_keyframe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RTT: Duration = Duration::from_millis(50);

    #[test]
    fn extender_wrap_and_reorder() {
        let mut x = SeqExtender::new();
        assert_eq!(x.extend(65534), 65536 + 65534);
        assert_eq!(x.extend(65535), 65536 + 65535);
        assert_eq!(x.extend(0), 2 * 65536);
        assert_eq!(x.extend(65533), 65536 + 65533); // reordered across the wrap
        assert_eq!(x.extend(1), 2 * 65536 + 1);
        assert_eq!(x.highest(), Some(2 * 65536 + 1));
        let mut y = SeqExtender::new();
        assert_eq!(y.extend(0), 65536);
        assert_eq!(y.extend(65535), 65535); // before the first: no underflow
                                            // many forward steps across several cycles
        let mut z = SeqExtender::new();
        let mut last = z.extend(0);
        for i in 1..300_000u64 {
            let e = z.extend((i * 1000) as u16);
            assert_eq!(e, last + 1000);
            last = e;
        }
    }

    fn poll(g: &mut NackGenerator, now: Instant) -> Vec<u16> {
        let mut out = [0u16; NACK_MAX_PENDING];
        let n = g.poll_nacks(now, RTT, &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn gap_nack_and_arrival_clears() {
        let t = Instant::now();
        let mut g = NackGenerator::new();
        g.on_packet(t, 10);
        g.on_packet(t, 11);
        g.on_packet(t, 15);
        assert_eq!(g.poll_timeout(), Some(t));
        assert_eq!(poll(&mut g, t), vec![12, 13, 14]);
        // not again within rtt
        assert_eq!(
            poll(&mut g, t + Duration::from_millis(10)),
            Vec::<u16>::new()
        );
        assert_eq!(g.poll_timeout(), Some(t + RTT));
        g.on_packet(t, 13);
        assert_eq!(poll(&mut g, t + RTT), vec![12, 14]);
        g.on_packet(t, 12);
        g.on_packet(t, 14);
        assert_eq!(g.pending(), 0);
        assert_eq!(g.poll_timeout(), None);
        assert!(!g.take_needs_keyframe());
    }

    #[test]
    fn retries_limited() {
        let t = Instant::now();
        let mut g = NackGenerator::new();
        g.on_packet(t, 1);
        g.on_packet(t, 3);
        let mut sent = 0;
        for k in 0..100u64 {
            sent += poll(&mut g, t + RTT * k as u32 / 10).len();
        }
        // 100 polls spaced 5 ms over 0.5 s; rtt 50 ms -> at most 10 sends
        assert!(sent <= usize::from(NACK_MAX_RETRIES));
        let mut sent = 0;
        let mut g = NackGenerator::new();
        g.on_packet(t, 1);
        g.on_packet(t, 3);
        for k in 0..30u32 {
            sent += poll(&mut g, t + Duration::from_millis(20) * k).len();
        }
        assert_eq!(sent, usize::from(NACK_MAX_RETRIES));
        assert_eq!(g.pending(), 0);
        assert!(g.take_needs_keyframe());
        assert!(!g.take_needs_keyframe());
    }

    #[test]
    fn age_out() {
        let t = Instant::now();
        let mut g = NackGenerator::new();
        g.on_packet(t, 100);
        g.on_packet(t, 102);
        assert_eq!(poll(&mut g, t), vec![101]);
        let to = g.poll_timeout().unwrap();
        assert!(to <= t + NACK_MAX_AGE);
        assert_eq!(poll(&mut g, t + NACK_MAX_AGE), Vec::<u16>::new());
        assert_eq!(g.pending(), 0);
        assert_eq!(g.dropped(), 1);
        assert!(g.take_needs_keyframe());
    }

    #[test]
    fn wrap_at_65535() {
        let t = Instant::now();
        let mut g = NackGenerator::new();
        g.on_packet(t, 65533);
        g.on_packet(t, 2);
        assert_eq!(poll(&mut g, t), vec![65534, 65535, 0, 1]);
        g.on_packet(t, 65535);
        g.on_packet(t, 0);
        assert_eq!(poll(&mut g, t + RTT), vec![65534, 1]);
    }

    #[test]
    fn bounded_under_jump() {
        let t = Instant::now();
        let mut g = NackGenerator::new();
        g.on_packet(t, 0);
        g.on_packet(t, 30000);
        assert!(g.pending() <= NACK_MAX_PENDING);
        assert_eq!(g.pending(), 0);
        assert!(g.take_needs_keyframe());
        // a gap of exactly the limit is tracked in full; more gaps evict the oldest
        g.on_packet(t, 30000 + NACK_MAX_PENDING as u16 + 1);
        assert_eq!(g.pending(), NACK_MAX_PENDING);
        g.on_packet(t, 30000 + NACK_MAX_PENDING as u16 + 3);
        assert_eq!(g.pending(), NACK_MAX_PENDING);
        let mut out = [0u16; 4];
        assert_eq!(g.poll_nacks(t, RTT, &mut out), 4); // bounded by out
        assert_eq!(out, [30002, 30003, 30004, 30005]); // 30001 evicted by 30514
    }

    proptest! {
        #[test]
        fn arbitrary_seqs_bounded(seqs in proptest::collection::vec(any::<u16>(), 0..2000), step in 0u64..50) {
            let t = Instant::now();
            let mut g = NackGenerator::new();
            let cap = g.pending.capacity();
            let mut out = [0u16; 64];
            for (i, s) in seqs.iter().enumerate() {
                let now = t + Duration::from_millis(i as u64 * step);
                g.on_packet(now, *s);
                if i % 7 == 0 {
                    let n = g.poll_nacks(now, RTT, &mut out);
                    prop_assert!(n <= out.len());
                }
                prop_assert!(g.pending() <= NACK_MAX_PENDING);
            }
            prop_assert_eq!(g.pending.capacity(), cap); // never reallocated
        }
    }
}
