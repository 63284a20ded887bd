//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01):
//! record arrival times of a publisher's packets by transport-wide sequence number and build
//! RTPFB fmt 15 feedback packets (run-length and status-vector chunks, 250 µs deltas), plus a
//! bounded, validating decoder for feedback we receive.
//!
//! Everything is preallocated in [`TwccRecorder::new`]; building feedback does not allocate.

use crate::nack::SeqExtender;
use crate::rtcp::{RtcpError, FMT_TWCC, PT_RTPFB};
use std::time::Instant;

/// Number of transport-wide seqs remembered while waiting for feedback. Default 1024
/// (≈1 s at 1000 pkt/s; feedback normally goes out every 50–100 ms). A forward jump larger than
/// this reports only the last 1024 seqs. Memory: 1024 × 16 B + 1024 × 3 B scratch ≈ 19 KiB per
/// recorder.
pub const TWCC_HISTORY: usize = 1024;
/// Delta resolution: 250 µs.
pub const TWCC_DELTA_TICK_NS: u64 = 250_000;
/// Reference time resolution: 64 ms.
pub const TWCC_REF_TICK_NS: u64 = 64_000_000;
/// Fixed part of a feedback packet: RTCP header (4) + sender/media SSRC (8) + base seq, status
/// count, reference time, feedback count (8).
pub const TWCC_FIXED_LEN: usize = 20;
/// Longest run a run-length chunk can encode (13 bits).
pub const TWCC_MAX_RUN: usize = 8191;

const SYM_LOST: u8 = 0;
const SYM_SMALL: u8 = 1;
const SYM_LARGE: u8 = 2;

#[derive(Debug, Clone, Copy)]
struct Slot {
    ext: u64,
    arrival_ns: u64,
}

const EMPTY: Slot = Slot {
    ext: u64::MAX,
    arrival_ns: 0,
};

/// Records arrival times of a publisher's packets by transport-wide seq and builds transport-cc feedback
/// (draft-holmer-rmcat-transport-wide-cc-extensions-01: RTPFB fmt 15; run-length and status-vector chunks; 250 µs deltas).
#[derive(Debug, Clone)]
pub struct TwccRecorder {
    epoch: Instant,
    ext: SeqExtender,
    slots: Vec<Slot>,
    /// First extended seq not yet covered by a feedback.
    next: Option<u64>,
    highest: Option<u64>,
    fb_count: u8,
    late: u64,
    symbols: Vec<u8>,
    deltas: Vec<i16>,
}

/// Worst-case encoded size of a feedback with `n` statuses (all 2-bit vectors, all large deltas).
fn worst_case_len(n: usize) -> usize {
    let raw = TWCC_FIXED_LEN + n.div_ceil(7) * 2 + n * 2;
    raw.div_ceil(4) * 4
}

impl TwccRecorder {
    /// New recorder; arrival times are measured from `epoch` (the reference time wraps after
    /// 2^24 × 64 ms ≈ 12.4 days, which receivers handle as a wrap).
    pub fn new(epoch: Instant) -> Self {
        TwccRecorder {
            epoch,
            ext: SeqExtender::new(),
            slots: vec![EMPTY; TWCC_HISTORY],
            next: None,
            highest: None,
            fb_count: 0,
            late: 0,
            symbols: Vec::with_capacity(TWCC_HISTORY),
            deltas: Vec::with_capacity(TWCC_HISTORY),
        }
    }

    fn slot_of(ext: u64) -> usize {
        (ext % TWCC_HISTORY as u64) as usize
    }

    fn received(&self, ext: u64) -> Option<u64> {
        let s = self.slots.get(Self::slot_of(ext))?;
        (s.ext == ext).then_some(s.arrival_ns)
    }

    /// Record the arrival of the packet with transport-wide seq `tw_seq` at `now`.
    /// Packets whose seq was already reported (as lost) are counted in [`Self::late`] and ignored.
    pub fn on_packet(&mut self, now: Instant, tw_seq: u16) {
        let e = self.ext.extend(tw_seq);
        let next = *self.next.get_or_insert(e);
        if e < next {
            self.late += 1;
            return;
        }
        let h = match self.highest {
            Some(h) if h >= e => h,
            _ => e,
        };
        self.highest = Some(h);
        if h - next >= TWCC_HISTORY as u64 {
            self.next = Some(h + 1 - TWCC_HISTORY as u64);
        }
        if e + (TWCC_HISTORY as u64) <= h {
            // Older than the history window (can only happen right after a jump).
            self.late += 1;
            return;
        }
        let arrival_ns = now
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64;
        if let Some(s) = self.slots.get_mut(Self::slot_of(e)) {
            if s.ext != e {
                *s = Slot { ext: e, arrival_ns };
            }
        }
    }

    /// Packets that arrived after their seq had already been reported.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// True if packets were recorded since the last feedback.
    pub fn has_unreported(&self) -> bool {
        matches!((self.next, self.highest), (Some(n), Some(h)) if n <= h)
    }

    /// Build one feedback packet covering packets recorded since the last one; None if nothing new. Bounded size (<= out.len()).
    ///
    /// If `out` is too small for everything (or an inter-arrival gap exceeds the ±8.19 s a delta
    /// can carry), the feedback covers a prefix and the rest goes into the next call: call until
    /// `None`. Needs at least 24 bytes of `out`. Trailing losses are held back until a later
    /// packet arrives (they may just be reordered). No allocation.
    pub fn build_feedback(
        &mut self,
        out: &mut [u8],
        sender_ssrc: u32,
        media_ssrc: u32,
    ) -> Option<usize> {
        let (mut base, highest) = match (self.next, self.highest) {
            (Some(n), Some(h)) if n <= h => (n, h),
            _ => return None,
        };
        let mut max_n = ((out.len().saturating_sub(TWCC_FIXED_LEN)) * 7 / 16).min(TWCC_HISTORY);
        while max_n > 0 && worst_case_len(max_n) > out.len() {
            max_n -= 1;
        }
        if max_n == 0 {
            return None;
        }
        // First received packet at or after base (exists: `highest` is always in its slot).
        let first_rx = (base..=highest).find(|&s| self.received(s).is_some())?;
        if first_rx - base >= max_n as u64 {
            // A loss run longer than this feedback can carry before any received packet: skip it.
            base = first_rx;
        }
        let first_arrival = self.received(first_rx)?;
        let ref_64ms = first_arrival / TWCC_REF_TICK_NS;
        let mut prev_ticks = (ref_64ms * (TWCC_REF_TICK_NS / TWCC_DELTA_TICK_NS)) as i64;

        self.symbols.clear();
        self.deltas.clear();
        let mut last_rx_count = 0usize;
        let mut s = base;
        while s <= highest && self.symbols.len() < max_n {
            match self.received(s) {
                None => self.symbols.push(SYM_LOST),
                Some(arr) => {
                    let ticks = (arr / TWCC_DELTA_TICK_NS) as i64;
                    let d = ticks - prev_ticks;
                    let sym = if (0..=255).contains(&d) {
                        SYM_SMALL
                    } else if (i64::from(i16::MIN)..=i64::from(i16::MAX)).contains(&d) {
                        SYM_LARGE
                    } else {
                        break; // not representable: next feedback (new reference time)
                    };
                    self.symbols.push(sym);
                    self.deltas.push(d as i16);
                    prev_ticks = ticks;
                    last_rx_count = self.symbols.len();
                }
            }
            s += 1;
        }
        // Drop trailing losses (they may still arrive); at least one packet is received.
        self.symbols.truncate(last_rx_count);
        let count = self.symbols.len();
        if count == 0 {
            return None;
        }

        // ---- encode ----
        let mut pos = TWCC_FIXED_LEN;
        let mut i = 0;
        while i < count {
            let sym = *self.symbols.get(i)?;
            let run = self
                .symbols
                .get(i..)?
                .iter()
                .take(TWCC_MAX_RUN)
                .take_while(|&&x| x == sym)
                .count();
            let chunk: u16 = if run >= 14 || i + run == count {
                i += run;
                (u16::from(sym) << 13) | run as u16
            } else {
                let end = (i + 14).min(count);
                let window = self.symbols.get(i..end)?;
                if window.iter().all(|&x| x <= SYM_SMALL) {
                    let mut c: u16 = 0x8000;
                    for (k, &x) in window.iter().enumerate() {
                        c |= u16::from(x) << (13 - k);
                    }
                    i = end;
                    c
                } else {
                    let end = (i + 7).min(count);
                    let mut c: u16 = 0xC000;
                    for (k, &x) in self.symbols.get(i..end)?.iter().enumerate() {
                        c |= u16::from(x) << (12 - 2 * k);
                    }
                    i = end;
                    c
                }
            };
            out.get_mut(pos..pos + 2)?
                .copy_from_slice(&chunk.to_be_bytes());
            pos += 2;
        }
        for &d in &self.deltas {
            if (0..=255).contains(&d) {
                *out.get_mut(pos)? = d as u8;
                pos += 1;
            } else {
                out.get_mut(pos..pos + 2)?.copy_from_slice(&d.to_be_bytes());
                pos += 2;
            }
        }
        let pad = (4 - pos % 4) % 4;
        if pad > 0 {
            let p = out.get_mut(pos..pos + pad)?;
            p.fill(0);
            if let Some(last) = p.last_mut() {
                *last = pad as u8;
            }
            pos += pad;
        }
        // ---- fixed part ----
        let words = (pos / 4 - 1) as u16;
        let hdr = out.get_mut(..TWCC_FIXED_LEN)?;
        hdr[0] = 0x80 | if pad > 0 { 0x20 } else { 0 } | FMT_TWCC;
        hdr[1] = PT_RTPFB;
        hdr[2..4].copy_from_slice(&words.to_be_bytes());
        hdr[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
        hdr[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
        hdr[12..14].copy_from_slice(&(base as u16).to_be_bytes());
        hdr[14..16].copy_from_slice(&(count as u16).to_be_bytes());
        let ref24 = (ref_64ms as u32) & 0x00FF_FFFF;
        hdr[16..20].copy_from_slice(&((ref24 << 8) | u32::from(self.fb_count)).to_be_bytes());

        self.fb_count = self.fb_count.wrapping_add(1);
        self.next = Some(base + count as u64);
        Some(pos)
    }
}

/// One packet status from a decoded transport-cc feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwccStatus {
    /// Transport-wide sequence number.
    pub seq: u16,
    /// Arrival delta from the previous received packet (or the reference time) in 250 µs
    /// ticks; `None` if not received.
    pub delta_ticks: Option<i16>,
}

/// Most statuses [`decode_feedback`] will report from one packet (the 16-bit count field's
/// range); the caller's `out` bounds the work actually done.
pub const TWCC_MAX_STATUS: usize = 65535;

/// Decode a transport-cc feedback FCI: `body` is the packet after the 4-byte RTCP header (as
/// given by [`crate::rtcp::RtcpPacket::TransportCc`]'s packet; padding removed). Writes up to
/// `out.len()` statuses and returns `(base_seq, reference_time_64ms, fb_count, n_written)`.
/// Status symbol `0b11` (reserved), a status count beyond the chunks, or deltas past the end
/// give an error — never a panic; work is bounded by `body.len()` and `out.len()`.
pub fn decode_feedback(
    body: &[u8],
    out: &mut [TwccStatus],
) -> Result<(u16, u32, u8, usize), RtcpError> {
    let fixed = body.get(..16).ok_or(RtcpError::TooShort)?;
    let base = u16::from_be_bytes([fixed[8], fixed[9]]);
    let count = usize::from(u16::from_be_bytes([fixed[10], fixed[11]]));
    let ref_time = u32::from_be_bytes([0, fixed[12], fixed[13], fixed[14]]);
    let fb_count = fixed[15];
    let rest = body.get(16..).ok_or(RtcpError::TooShort)?;
    // Pass 1: find where the chunks end (symbols are decoded again in pass 2, no buffer).
    let mut n = 0usize;
    let mut chunks = 0usize;
    while n < count {
        let c = rest
            .get(chunks * 2..chunks * 2 + 2)
            .ok_or(RtcpError::Malformed)?;
        let c = u16::from_be_bytes([c[0], c[1]]);
        chunks += 1;
        n += if c & 0x8000 == 0 {
            usize::from(c & 0x1FFF)
        } else if c & 0x4000 == 0 {
            14
        } else {
            7
        };
    }
    let mut deltas = rest.get(chunks * 2..).ok_or(RtcpError::Malformed)?;
    let mut idx = 0usize;
    let mut written = 0usize;
    let mut emit = |sym: u16, deltas: &mut &[u8], idx: &mut usize| -> Result<(), RtcpError> {
        if *idx >= count {
            return Ok(());
        }
        let seq = base.wrapping_add(*idx as u16);
        *idx += 1;
        let delta_ticks = match sym {
            0 => None,
            1 => {
                let (&d, r) = deltas.split_first().ok_or(RtcpError::Malformed)?;
                *deltas = r;
                Some(i16::from(d))
            }
            2 => {
                let (d, r) = deltas.split_at_checked(2).ok_or(RtcpError::Malformed)?;
                *deltas = r;
                Some(i16::from_be_bytes([d[0], d[1]]))
            }
            _ => return Err(RtcpError::Malformed),
        };
        if let Some(o) = out.get_mut(written) {
            *o = TwccStatus { seq, delta_ticks };
            written += 1;
        }
        Ok(())
    };
    for k in 0..chunks {
        let c = rest.get(k * 2..k * 2 + 2).ok_or(RtcpError::Malformed)?;
        let c = u16::from_be_bytes([c[0], c[1]]);
        if c & 0x8000 == 0 {
            let sym = (c >> 13) & 0x3;
            let run = usize::from(c & 0x1FFF);
            if sym == 3 && run > 0 {
                return Err(RtcpError::Malformed);
            }
            for _ in 0..run.min(count.saturating_sub(idx)) {
                emit(sym, &mut deltas, &mut idx)?;
            }
        } else if c & 0x4000 == 0 {
            for b in (0..14).rev() {
                emit((c >> b) & 1, &mut deltas, &mut idx)?;
            }
        } else {
            for b in (0..7).rev() {
                emit((c >> (2 * b)) & 3, &mut deltas, &mut idx)?;
            }
        }
    }
    Ok((base, ref_time, fb_count, written))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtcp::{iter, RtcpPacket};
    use proptest::prelude::*;
    use std::time::Duration;

    fn decode(pkt: &[u8]) -> (u16, u32, u8, Vec<TwccStatus>) {
        assert!(matches!(
            iter(pkt).next(),
            Some(Ok(RtcpPacket::TransportCc { .. }))
        ));
        let pad = if pkt[0] & 0x20 != 0 {
            usize::from(pkt[pkt.len() - 1])
        } else {
            0
        };
        let mut out = vec![
            TwccStatus {
                seq: 0,
                delta_ticks: None
            };
            70000
        ];
        let (b, r, f, n) = decode_feedback(&pkt[4..pkt.len() - pad], &mut out).unwrap();
        out.truncate(n);
        (b, r, f, out)
    }

    #[test]
    fn simple_feedback_with_losses() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(t0);
        assert_eq!(r.build_feedback(&mut [0u8; 1200], 1, 2), None);
        for (s, ms) in [(100u16, 1000u64), (101, 1005), (103, 1010), (104, 1400)] {
            r.on_packet(t0 + Duration::from_millis(ms), s);
        }
        let mut buf = [0u8; 1200];
        let n = r.build_feedback(&mut buf, 1, 2).unwrap();
        assert_eq!(n % 4, 0);
        let (base, ref_t, fb, st) = decode(&buf[..n]);
        assert_eq!((base, ref_t, fb), (100, 1000 / 64, 0));
        let got: Vec<_> = st.iter().map(|s| (s.seq, s.delta_ticks)).collect();
        // reference = 15 * 64 = 960 ms; deltas in 250 µs ticks
        assert_eq!(
            got,
            vec![
                (100, Some(160)),
                (101, Some(20)),
                (102, None),
                (103, Some(20)),
                (104, Some(1560))
            ]
        );
        assert_eq!(r.build_feedback(&mut buf, 1, 2), None);
        r.on_packet(t0 + Duration::from_millis(1401), 105);
        let n = r.build_feedback(&mut buf, 1, 2).unwrap();
        let (base, _, fb, st) = decode(&buf[..n]);
        assert_eq!((base, fb, st.len()), (105, 1, 1));
        // late arrival of 102 (already reported lost) is ignored
        r.on_packet(t0 + Duration::from_millis(1402), 102);
        assert_eq!(r.late(), 1);
        assert_eq!(r.build_feedback(&mut buf, 1, 2), None);
    }

    #[test]
    fn trailing_losses_held_back_and_small_out_splits() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(t0);
        for s in 0..300u16 {
            r.on_packet(t0 + Duration::from_micros(u64::from(s) * 700), s);
        }
        let mut total = 0;
        let mut buf = [0u8; 64];
        let mut next_base = 0u16;
        while let Some(n) = r.build_feedback(&mut buf, 1, 2) {
            assert!(n <= 64);
            let (base, _, _, st) = decode(&buf[..n]);
            assert_eq!(base, next_base);
            next_base = base + st.len() as u16;
            total += st.len();
        }
        assert_eq!(total, 300);
        assert_eq!(r.build_feedback(&mut [0u8; 23], 1, 2), None);
    }

    #[test]
    fn huge_jump_bounded() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(t0);
        r.on_packet(t0, 0);
        r.on_packet(t0 + Duration::from_millis(1), 30000);
        let mut buf = [0u8; 1500];
        let mut statuses = 0;
        let mut feedbacks = 0;
        while let Some(n) = r.build_feedback(&mut buf, 1, 2) {
            statuses += decode(&buf[..n]).3.len();
            feedbacks += 1;
        }
        assert!(statuses <= TWCC_HISTORY, "{statuses}");
        assert!(feedbacks <= 3);
    }

    #[test]
    fn decoder_rejects_hostile() {
        let mut out = [TwccStatus {
            seq: 0,
            delta_ticks: None,
        }; 32];
        // 2-bit vector with all symbols 0b11
        let mut body = vec![0, 0, 0, 1, 0, 0, 0, 2, 0, 5, 0, 7, 0, 0, 0, 0];
        body.extend_from_slice(&[0xFF, 0xFF, 0, 0]);
        assert_eq!(decode_feedback(&body, &mut out), Err(RtcpError::Malformed));
        // run-length of symbol 0b11
        let mut body2 = body.clone();
        body2[16..18].copy_from_slice(&[0x60, 0x07]);
        assert_eq!(decode_feedback(&body2, &mut out), Err(RtcpError::Malformed));
        // status count 65535 with a single chunk
        let mut body3 = body.clone();
        body3[10..12].copy_from_slice(&[0xFF, 0xFF]);
        body3[16..18].copy_from_slice(&[0x00, 0x07]);
        assert_eq!(decode_feedback(&body3, &mut out), Err(RtcpError::Malformed));
        // deltas missing
        let mut body4 = body.clone();
        body4[16..18].copy_from_slice(&[0x20, 0x07]); // 7 × small delta, 2 bytes present
        assert_eq!(decode_feedback(&body4, &mut out), Err(RtcpError::Malformed));
        for k in 0..16 {
            assert_eq!(
                decode_feedback(&body[..k], &mut out),
                Err(RtcpError::TooShort)
            );
        }
    }

    proptest! {
        #[test]
        fn decoder_arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = [TwccStatus { seq: 0, delta_ticks: None }; 64];
            let _ = decode_feedback(&body, &mut out);
        }

        #[test]
        fn recorder_roundtrip(gaps in proptest::collection::vec((1u16..4, 0u64..100_000), 1..400), outlen in 24usize..1500) {
            let t0 = Instant::now();
            let mut r = TwccRecorder::new(t0);
            let mut seq = 7u16;
            let mut t_us = 5_000u64;
            let mut sent = Vec::new();
            for (g, dt) in gaps {
                seq = seq.wrapping_add(g);
                t_us += dt;
                r.on_packet(t0 + Duration::from_micros(t_us), seq);
                sent.push((seq, t_us));
            }
            let mut buf = vec![0u8; outlen];
            let mut rx = Vec::new();
            while let Some(n) = r.build_feedback(&mut buf, 1, 2) {
                prop_assert!(n <= outlen);
                let (_, ref_t, _, st) = decode(&buf[..n]);
                let mut ticks = i64::from(ref_t) * 256;
                for s in st {
                    if let Some(d) = s.delta_ticks {
                        ticks += i64::from(d);
                        rx.push((s.seq, ticks));
                    }
                }
            }
            prop_assert_eq!(rx.len(), sent.len());
            for ((s1, t_us), (s2, ticks)) in sent.iter().zip(rx.iter()) {
                prop_assert_eq!(s1, s2);
                prop_assert_eq!(*ticks, (*t_us / 250) as i64);
            }
        }
    }
}
