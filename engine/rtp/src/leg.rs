//! Per-subscriber forwarding state for one track ("leg"): simulcast layer selection and
//! SSRC/sequence-number/timestamp rewriting so the receiver sees one continuous stream across
//! layer switches and publisher sequence discontinuities.
//!
//! Sans-IO: the caller passes `now`; nothing here reads a clock. Fixed-size state, no allocation.

use std::time::Instant;

/// Largest forward sequence-number step still treated as the same stream (loss of up to this many
/// packets keeps the gap visible to the receiver, so it can NACK). Default 3000 (RFC 3550 A.1
/// `MAX_DROPOUT`). A larger step is a discontinuity: the leg is re-anchored after one confirming
/// packet. Bounds nothing in memory; bounds how far a hostile/buggy seq jump can push output seqs.
pub const MAX_DROPOUT: u16 = 3000;

/// Largest backward sequence-number step treated as reordering (RFC 3550 A.1 `MAX_MISORDER`,
/// default 100). A packet further back is dropped as too old unless it starts a confirmed
/// discontinuity. No memory.
pub const MAX_MISORDER: u16 = 100;

/// Cap on how far the output timestamp advances across a switch or re-anchor, in RTP ticks
/// (default 2^30: about 3.3 hours at 90 kHz, 6.2 hours at 48 kHz). Keeps the jump well inside
/// the half-range used for timestamp ordering (2^31). No memory.
pub const MAX_TS_ADVANCE: u32 = 1 << 30;

/// On a sequence re-anchor of the same layer, the previous timestamp offset is kept when the
/// resulting output timestamp is within this many milliseconds of the wall-clock expectation
/// (default 5000 ms); otherwise the timestamp is re-anchored like a layer switch. No memory.
pub const REANCHOR_TS_TOLERANCE_MS: u64 = 5000;

/// Decision for one packet on one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegDecision {
    /// Forward with these output values. `switched` is true for the first packet of a new layer
    /// (including the very first forwarded packet): the VP8 rewriter re-bases its ids on it.
    Forward {
        /// Output sequence number.
        seq: u16,
        /// Output RTP timestamp.
        ts: u32,
        /// First packet after a layer switch.
        switched: bool,
    },
    /// Do not forward.
    Drop(LegDrop),
}

/// Why a packet is not forwarded on a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegDrop {
    /// Packet of a layer that is neither forwarded nor the switch target.
    OtherLayer,
    /// Packet of the target layer while waiting for its keyframe (also: before the first keyframe).
    WaitingForKeyframe,
    /// Older than the current segment (would collide with already-used output seqs), reordered
    /// further than [`MAX_MISORDER`], or the first packet of an unconfirmed seq discontinuity.
    TooOld,
}

impl LegDrop {
    /// Stable snake_case label for drop counters/metrics.
    pub fn reason(self) -> &'static str {
        match self {
            LegDrop::OtherLayer => "other_layer",
            LegDrop::WaitingForKeyframe => "waiting_for_keyframe",
            LegDrop::TooOld => "too_old",
        }
    }
}

/// Where an outgoing sequence number came from (see [`LegRewriter::map_out`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedOut {
    /// Simulcast layer of the original packet.
    pub layer: u8,
    /// Its source sequence number.
    pub src_seq: u16,
    /// `out_ts = src_ts + ts_offset` for its segment.
    pub ts_offset: u32,
    /// It belongs to the previous segment (before the last switch).
    pub previous: bool,
}

/// A run of output sequence numbers that map to one layer with one offset.
#[derive(Debug, Clone, Copy)]
struct Segment {
    layer: u8,
    /// Output seq of the segment's first packet.
    out_start: u16,
    /// out = src + seq_offset (mod 2^16).
    seq_offset: u16,
    /// Highest source seq seen in this segment.
    highest_src: u16,
    /// Unwrapped distance of `highest_src` from the first source seq (0 at start).
    highest_rel: u64,
    /// out_ts = src_ts + ts_offset (mod 2^32) for packets of this segment.
    ts_offset: u32,
}

impl Segment {
    fn new(layer: u8, src: u16, out_start: u16, ts_offset: u32) -> Self {
        Segment {
            layer,
            out_start,
            seq_offset: out_start.wrapping_sub(src),
            highest_src: src,
            highest_rel: 0,
            ts_offset,
        }
    }

    /// Highest output seq used in this segment.
    fn max_out(&self) -> u16 {
        self.out_start.wrapping_add(self.highest_rel as u16)
    }

    fn map(&self, out_seq: u16) -> Option<(u8, u16)> {
        let d = u64::from(out_seq.wrapping_sub(self.out_start));
        (d <= self.highest_rel).then(|| (self.layer, out_seq.wrapping_sub(self.seq_offset)))
    }
}

/// Per-subscriber state for one forwarded track: which simulcast layer is forwarded, and SSRC/seq/ts rewriting so that
/// the receiver sees one continuous stream across layer switches (switch only at a keyframe of the target layer).
#[derive(Debug, Clone)]
pub struct LegRewriter {
    out_ssrc: u32,
    clock_rate: u32,
    target: u8,
    cur: Option<Segment>,
    prev: Option<Segment>,
    ts_offset: u32,
    /// Highest output timestamp so far and when it was first forwarded.
    max_ts: Option<(u32, Instant)>,
    /// Source seq that would confirm a discontinuity on the current layer.
    probation: Option<u16>,
}

impl LegRewriter {
    /// A leg sending as `out_ssrc`, with the track's RTP `clock_rate` (Hz), initially targeting
    /// `initial_layer`. Nothing is forwarded until a keyframe of the target layer arrives.
    pub fn new(out_ssrc: u32, clock_rate: u32, initial_layer: u8) -> Self {
        LegRewriter {
            out_ssrc,
            clock_rate,
            target: initial_layer,
            cur: None,
            prev: None,
            ts_offset: 0,
            max_ts: None,
            probation: None,
        }
    }

    /// SSRC the receiver sees.
    pub fn out_ssrc(&self) -> u32 {
        self.out_ssrc
    }

    /// Ask for a different layer; the switch happens at its next keyframe. Until then the current
    /// layer keeps flowing.
    pub fn set_target_layer(&mut self, layer: u8) {
        self.target = layer;
    }

    /// The requested layer.
    pub fn target_layer(&self) -> u8 {
        self.target
    }

    /// The layer being forwarded now (None before the first keyframe).
    pub fn current_layer(&self) -> Option<u8> {
        self.cur.map(|s| s.layer)
    }

    /// Waiting for a keyframe on the target layer (engine then asks the publisher, coalesced).
    pub fn needs_keyframe(&self) -> bool {
        self.current_layer() != Some(self.target)
    }

    /// For each packet of the track (any layer). `now` is used to advance the timestamp across a switch
    /// (out_ts jumps by the wall-clock gap * clock_rate, at least 1). Before the first keyframe nothing is forwarded.
    /// Packets of the current layer keep their relative seq/ts (reordering inside the layer preserved).
    pub fn on_packet(
        &mut self,
        now: Instant,
        layer: u8,
        seq: u16,
        ts: u32,
        keyframe: bool,
    ) -> LegDecision {
        let cur_layer = self.current_layer();
        if layer == self.target && cur_layer != Some(layer) {
            if !keyframe {
                return LegDecision::Drop(LegDrop::WaitingForKeyframe);
            }
            self.start_segment(now, layer, seq, ts, true);
            return self.emit(now, seq, ts, true);
        }
        if cur_layer != Some(layer) {
            return LegDecision::Drop(LegDrop::OtherLayer);
        }
        let Some(seg) = self.cur.as_mut() else {
            // Unreachable (cur_layer == Some(layer) implies cur is Some); no panic.
            return LegDecision::Drop(LegDrop::OtherLayer);
        };
        let d = seq.wrapping_sub(seg.highest_src);
        if d == 0 {
            // duplicate of the highest packet: same mapping
        } else if d < 0x8000 {
            if d <= MAX_DROPOUT {
                seg.highest_rel += u64::from(d);
                seg.highest_src = seq;
                self.probation = None;
            } else {
                return self.probation(now, layer, seq, ts);
            }
        } else {
            let back = 0u16.wrapping_sub(d);
            if back > MAX_MISORDER {
                return self.probation(now, layer, seq, ts);
            }
            if u64::from(back) > seg.highest_rel {
                return LegDecision::Drop(LegDrop::TooOld);
            }
        }
        self.emit(now, seq, ts, false)
    }

    /// A packet far from the current position: drop it, unless it is the packet right after the
    /// previous such one (RFC 3550 A.1 probation), in which case re-anchor the leg on it.
    fn probation(&mut self, now: Instant, layer: u8, seq: u16, ts: u32) -> LegDecision {
        if self.probation == Some(seq) {
            self.start_segment(now, layer, seq, ts, false);
            self.emit(now, seq, ts, false)
        } else {
            self.probation = Some(seq.wrapping_add(1));
            LegDecision::Drop(LegDrop::TooOld)
        }
    }

    /// Wall-clock gap since the highest output timestamp, in RTP ticks, clamped to
    /// `1..=MAX_TS_ADVANCE`, and that timestamp.
    fn advance(&self, now: Instant) -> Option<(u32, u32)> {
        let (max_ts, at) = self.max_ts?;
        let nanos = now.saturating_duration_since(at).as_nanos();
        let ticks = nanos.saturating_mul(u128::from(self.clock_rate)) / 1_000_000_000;
        let ticks = ticks.clamp(1, u128::from(MAX_TS_ADVANCE)) as u32;
        Some((max_ts, ticks))
    }

    fn start_segment(&mut self, now: Instant, layer: u8, seq: u16, ts: u32, switch: bool) {
        let out_start = match self.cur {
            Some(s) => s.max_out().wrapping_add(1),
            None => seq,
        };
        if let Some((max_ts, ticks)) = self.advance(now) {
            let expected = max_ts.wrapping_add(ticks);
            let keep = !switch && {
                let cand = ts.wrapping_add(self.ts_offset);
                let drift = (cand.wrapping_sub(expected) as i32).unsigned_abs();
                let tol = u64::from(self.clock_rate) * REANCHOR_TS_TOLERANCE_MS / 1000;
                u64::from(drift) <= tol && (cand.wrapping_sub(max_ts) as i32) > 0
            };
            if !keep {
                self.ts_offset = expected.wrapping_sub(ts);
            }
        }
        self.prev = self.cur;
        self.cur = Some(Segment::new(layer, seq, out_start, self.ts_offset));
        self.probation = None;
    }

    fn emit(&mut self, now: Instant, seq: u16, ts: u32, switched: bool) -> LegDecision {
        let Some(seg) = self.cur else {
            // Callers only emit after a segment exists.
            return LegDecision::Drop(LegDrop::WaitingForKeyframe);
        };
        let out_seq = seq.wrapping_add(seg.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        match self.max_ts {
            Some((m, _)) if (out_ts.wrapping_sub(m) as i32) <= 0 => {}
            _ => self.max_ts = Some((out_ts, now)),
        }
        LegDecision::Forward {
            seq: out_seq,
            ts: out_ts,
            switched,
        }
    }

    /// Map an outgoing seq (from a subscriber NACK) back to (layer, source seq) for the retransmission cache; keeps the
    /// mapping for the current and the previous layer segment.
    pub fn map_out_to_src(&self, out_seq: u16) -> Option<(u8, u16)> {
        self.cur
            .and_then(|s| s.map(out_seq))
            .or_else(|| self.prev.and_then(|s| s.map(out_seq)))
    }

    /// Current timestamp offset (`out_ts = src_ts + ts_offset` for the forwarded layer), e.g.
    /// to translate a publisher's sender report for this leg.
    pub fn ts_offset(&self) -> u32 {
        self.ts_offset
    }

    /// Like [`Self::map_out_to_src`], plus what a retransmission needs to be rewritten exactly
    /// like the original: the segment's timestamp offset (`out_ts = src_ts + ts_offset`) and
    /// whether the packet belongs to the previous segment (for the VP8 id offsets).
    pub fn map_out(&self, out_seq: u16) -> Option<MappedOut> {
        let with = |previous: bool| {
            move |s: Segment| {
                s.map(out_seq).map(|(layer, src_seq)| MappedOut {
                    layer,
                    src_seq,
                    ts_offset: s.ts_offset,
                    previous,
                })
            }
        };
        self.cur
            .and_then(with(false))
            .or_else(|| self.prev.and_then(with(true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn fwd(d: LegDecision) -> (u16, u32, bool) {
        match d {
            LegDecision::Forward { seq, ts, switched } => (seq, ts, switched),
            LegDecision::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    /// One simulcast layer of a synthetic VP8-like publisher.
    struct Layer {
        seq: u16,
        ts: u32,
        pkts_per_frame: u16,
        key_every: u32,
        key_phase: u32,
    }

    struct Out {
        layer: u8,
        src_seq: u16,
        seq: u16,
        ts: u32,
        switched: bool,
    }

    /// Run `frames` frames of 3 interleaved layers at 30 fps; `targets` = (frame, layer) changes.
    fn simulate(
        leg: &mut LegRewriter,
        layers: &mut [Layer],
        frames: u32,
        targets: &[(u32, u8)],
    ) -> (Vec<Out>, Vec<LegDrop>) {
        let t0 = Instant::now();
        let mut out = vec![];
        let mut drops = vec![];
        for f in 0..frames {
            if let Some((_, l)) = targets.iter().find(|(tf, _)| *tf == f) {
                leg.set_target_layer(*l);
            }
            let now = t0 + Duration::from_millis(33 * u64::from(f));
            for (li, l) in layers.iter_mut().enumerate() {
                let key = (f + l.key_phase) % l.key_every == 0;
                for k in 0..l.pkts_per_frame {
                    match leg.on_packet(now, li as u8, l.seq, l.ts, key && k == 0) {
                        LegDecision::Forward { seq, ts, switched } => out.push(Out {
                            layer: li as u8,
                            src_seq: l.seq,
                            seq,
                            ts,
                            switched,
                        }),
                        LegDecision::Drop(r) => drops.push(r),
                    }
                    l.seq = l.seq.wrapping_add(1);
                }
                l.ts = l.ts.wrapping_add(3000);
            }
        }
        (out, drops)
    }

    fn layers(seq_bases: [u16; 3], ts_bases: [u32; 3]) -> Vec<Layer> {
        (0..3)
            .map(|i| Layer {
                seq: seq_bases[i],
                ts: ts_bases[i],
                pkts_per_frame: 1 << i,
                key_every: 30,
                key_phase: 7 * i as u32 + 3,
            })
            .collect()
    }

    fn assert_continuous(out: &[Out]) {
        for w in out.windows(2) {
            assert_eq!(
                w[1].seq,
                w[0].seq.wrapping_add(1),
                "seq gap/dup at {}",
                w[0].seq
            );
            assert!(
                w[1].ts.wrapping_sub(w[0].ts) as i32 >= 0,
                "ts went back at {}",
                w[0].seq
            );
        }
    }

    #[test]
    fn three_layers_switch_0_2_1() {
        let mut leg = LegRewriter::new(0x5555, 90_000, 0);
        assert!(leg.needs_keyframe());
        let mut ls = layers([100, 40_000, 65_500], [1_000, 0xFFFF_D8F0, 7]);
        let (out, drops) = simulate(&mut leg, &mut ls, 150, &[(40, 2), (90, 1)]);
        assert_eq!(leg.current_layer(), Some(1));
        assert!(!leg.needs_keyframe());
        assert_continuous(&out);
        // NACK mapping: the last two segments (layers 2 and 1) map back exactly; the first
        // segment (layer 0) is forgotten.
        for o in &out {
            let want = (o.layer != 0).then_some((o.layer, o.src_seq));
            assert_eq!(leg.map_out_to_src(o.seq), want);
        }
        // layer order: 0, then 2, then 1; exactly 3 switches, each at a keyframe frame start.
        let switches: Vec<_> = out.iter().filter(|o| o.switched).map(|o| o.layer).collect();
        assert_eq!(switches, vec![0, 2, 1]);
        let mut last = 0u8;
        let mut seen = vec![];
        for o in &out {
            if o.layer != last || seen.is_empty() {
                seen.push(o.layer);
                last = o.layer;
            }
        }
        assert_eq!(seen, vec![0, 2, 1]);
        // Before the first keyframe of layer 0 (frame 27), nothing; other layers dropped.
        assert!(drops.contains(&LegDrop::WaitingForKeyframe));
        assert!(drops.contains(&LegDrop::OtherLayer));
        assert!(!drops.contains(&LegDrop::TooOld));
        // Relative ts inside a layer preserved: consecutive frames of one layer differ by 3000.
        for w in out.windows(2) {
            if w[0].layer == w[1].layer && !w[1].switched {
                let d = w[1].ts.wrapping_sub(w[0].ts);
                assert!(d == 0 || d == 3000, "d={d}");
            }
        }
        // Across a switch the ts jumps by about the wall-clock gap (one frame = 33 ms = 2970).
        for w in out.windows(2) {
            if w[1].switched {
                let d = w[1].ts.wrapping_sub(w[0].ts);
                assert!((1..=3000).contains(&d), "switch ts step {d}");
            }
        }
    }

    #[test]
    fn wraps_near_65535_and_2_32() {
        let mut leg = LegRewriter::new(1, 90_000, 0);
        let mut ls = layers(
            [65_530, 65_000, 65_535],
            [u32::MAX - 10_000, u32::MAX - 5, u32::MAX],
        );
        for l in ls.iter_mut() {
            l.key_phase = 0;
        }
        let (out, _) = simulate(&mut leg, &mut ls, 100, &[(20, 1), (50, 2), (75, 0)]);
        assert_continuous(&out);
        assert_eq!(out[0].seq, 65_530);
        assert_eq!(out[0].ts, u32::MAX - 10_000);
        assert!(out.len() > 100);
        let switches: Vec<_> = out.iter().filter(|o| o.switched).map(|o| o.layer).collect();
        assert_eq!(switches, vec![0, 1, 2, 0]);
    }

    #[test]
    fn audio_single_layer() {
        let t0 = Instant::now();
        let mut leg = LegRewriter::new(9, 48_000, 0);
        let mut seq = 65_000u16;
        let mut ts = u32::MAX - 9_600;
        let mut prev = None;
        for i in 0..2000u32 {
            let now = t0 + Duration::from_millis(20 * u64::from(i));
            let (s, t, sw) = fwd(leg.on_packet(now, 0, seq, ts, true));
            assert_eq!(sw, i == 0);
            assert_eq!((s, t), (seq, ts));
            if let Some(p) = prev {
                assert_eq!(s, u16::wrapping_add(p, 1));
            }
            prev = Some(s);
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(960);
        }
    }

    #[test]
    fn reordering_inside_layer_preserved() {
        let t0 = Instant::now();
        let mut leg = LegRewriter::new(9, 90_000, 0);
        assert_eq!(fwd(leg.on_packet(t0, 0, 1000, 50, true)).0, 1000);
        assert_eq!(fwd(leg.on_packet(t0, 0, 1003, 50, false)).0, 1003);
        assert_eq!(fwd(leg.on_packet(t0, 0, 1001, 50, false)).0, 1001);
        assert_eq!(fwd(leg.on_packet(t0, 0, 1002, 50, false)).0, 1002);
        // duplicate of highest
        assert_eq!(fwd(leg.on_packet(t0, 0, 1003, 50, false)).0, 1003);
        // older than the segment start
        assert_eq!(
            leg.on_packet(t0, 0, 999, 40, false),
            LegDecision::Drop(LegDrop::TooOld)
        );
        // gap (loss) preserved
        assert_eq!(fwd(leg.on_packet(t0, 0, 1010, 60, false)).0, 1010);
    }

    #[test]
    fn packets_older_than_switch_are_too_old() {
        let t0 = Instant::now();
        let mut leg = LegRewriter::new(9, 90_000, 0);
        fwd(leg.on_packet(t0, 0, 10, 0, true));
        fwd(leg.on_packet(t0, 0, 11, 0, false));
        leg.set_target_layer(1);
        assert!(leg.needs_keyframe());
        assert_eq!(
            leg.on_packet(t0, 1, 500, 0, false),
            LegDecision::Drop(LegDrop::WaitingForKeyframe)
        );
        // current layer keeps flowing while waiting
        assert_eq!(fwd(leg.on_packet(t0, 0, 12, 3000, false)).0, 12);
        let (s, _, sw) = fwd(leg.on_packet(t0, 1, 502, 0, true));
        assert!(sw);
        assert_eq!(s, 13);
        assert_eq!(
            leg.on_packet(t0, 1, 501, 0, false),
            LegDecision::Drop(LegDrop::TooOld)
        );
        assert_eq!(
            leg.on_packet(t0, 0, 13, 0, false),
            LegDecision::Drop(LegDrop::OtherLayer)
        );
        assert_eq!(fwd(leg.on_packet(t0, 1, 503, 0, false)).0, 14);
    }

    #[test]
    fn map_out_to_src_before_and_after_switch() {
        let t0 = Instant::now();
        let mut leg = LegRewriter::new(9, 90_000, 0);
        assert_eq!(leg.map_out_to_src(5), None);
        for s in 65_530u16..=65_535 {
            leg.on_packet(t0, 0, s, 0, s == 65_530);
        }
        for s in 0u16..4 {
            leg.on_packet(t0, 0, s, 0, false);
        }
        // out == src on the first segment
        assert_eq!(leg.map_out_to_src(65_531), Some((0, 65_531)));
        assert_eq!(leg.map_out_to_src(2), Some((0, 2)));
        assert_eq!(leg.map_out_to_src(4), None); // not sent yet
        assert_eq!(leg.map_out_to_src(65_529), None); // before the start
        leg.set_target_layer(2);
        // switch: layer 2 seq 7000 -> out 4
        assert_eq!(fwd(leg.on_packet(t0, 2, 7000, 0, true)).0, 4);
        fwd(leg.on_packet(t0, 2, 7001, 0, false));
        assert_eq!(leg.map_out_to_src(4), Some((2, 7000)));
        assert_eq!(leg.map_out_to_src(5), Some((2, 7001)));
        assert_eq!(leg.map_out_to_src(6), None);
        assert_eq!(leg.map_out_to_src(3), Some((0, 3)));
        assert_eq!(leg.map_out_to_src(65_530), Some((0, 65_530)));
        // second switch: first segment is forgotten
        leg.set_target_layer(1);
        assert_eq!(fwd(leg.on_packet(t0, 1, 300, 0, true)).0, 6);
        assert_eq!(leg.map_out_to_src(6), Some((1, 300)));
        assert_eq!(leg.map_out_to_src(5), Some((2, 7001)));
        assert_eq!(leg.map_out_to_src(3), None);
    }

    #[test]
    fn seq_jump_reanchors_after_confirmation() {
        // RELIABILITY B4: publisher seq jumps of +-30000 keep the output continuous.
        let t0 = Instant::now();
        let mut leg = LegRewriter::new(9, 90_000, 0);
        let mut seq = 100u16;
        let mut ts = 5000u32;
        let mut outs = vec![];
        for i in 0..300u32 {
            if i == 100 {
                seq = seq.wrapping_add(30_000);
            }
            if i == 200 {
                seq = seq.wrapping_sub(30_000);
            }
            let now = t0 + Duration::from_millis(10 * u64::from(i));
            match leg.on_packet(now, 0, seq, ts, i == 0) {
                LegDecision::Forward { seq, ts, .. } => outs.push((seq, ts)),
                LegDecision::Drop(r) => {
                    assert_eq!(r, LegDrop::TooOld);
                    assert!(i == 100 || i == 200, "unexpected drop at {i}");
                }
            }
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(900);
        }
        assert_eq!(outs.len(), 298);
        for w in outs.windows(2) {
            assert_eq!(w[1].0, w[0].0.wrapping_add(1));
            assert!(w[1].1.wrapping_sub(w[0].1) as i32 > 0);
        }
        // ts continuity kept (no ts jump in the source): +900 per packet, +1800 across the drop
        let d = outs[100].1.wrapping_sub(outs[99].1);
        assert_eq!(d, 1800);
    }

    #[test]
    fn lone_stray_packet_does_not_reanchor() {
        let t0 = Instant::now();
        let mut leg = LegRewriter::new(9, 90_000, 0);
        fwd(leg.on_packet(t0, 0, 1000, 0, true));
        fwd(leg.on_packet(t0, 0, 1001, 0, false));
        assert_eq!(
            leg.on_packet(t0, 0, 40_000, 0, false),
            LegDecision::Drop(LegDrop::TooOld)
        );
        assert_eq!(fwd(leg.on_packet(t0, 0, 1002, 0, false)).0, 1002);
        assert_eq!(
            leg.on_packet(t0, 0, 500, 0, false),
            LegDecision::Drop(LegDrop::TooOld)
        );
        assert_eq!(fwd(leg.on_packet(t0, 0, 1003, 0, false)).0, 1003);
    }

    #[test]
    fn switch_ts_advance_uses_wall_clock() {
        let t0 = Instant::now();
        let mut leg = LegRewriter::new(9, 90_000, 0);
        fwd(leg.on_packet(t0, 0, 1, 1000, true));
        leg.set_target_layer(1);
        // 2 s later: +180000 ticks
        let (_, ts, _) = fwd(leg.on_packet(t0 + Duration::from_secs(2), 1, 77, 123, true));
        assert_eq!(ts, 1000 + 180_000);
        leg.set_target_layer(0);
        // same instant: at least +1
        let (_, ts2, _) = fwd(leg.on_packet(t0 + Duration::from_secs(2), 0, 2, 999, true));
        assert_eq!(ts2, ts + 1);
        // a clock going backwards is treated as no gap
        leg.set_target_layer(1);
        let (_, ts3, _) = fwd(leg.on_packet(t0, 1, 78, 124, true));
        assert_eq!(ts3, ts2 + 1);
        // very long gap is capped
        leg.set_target_layer(0);
        let (_, ts4, _) = fwd(leg.on_packet(t0 + Duration::from_secs(100_000), 0, 3, 0, true));
        assert_eq!(ts4, ts3.wrapping_add(MAX_TS_ADVANCE));
    }

    #[test]
    fn drop_reasons() {
        assert_eq!(LegDrop::OtherLayer.reason(), "other_layer");
        assert_eq!(LegDrop::WaitingForKeyframe.reason(), "waiting_for_keyframe");
        assert_eq!(LegDrop::TooOld.reason(), "too_old");
        let leg = LegRewriter::new(42, 90_000, 3);
        assert_eq!(leg.out_ssrc(), 42);
        assert_eq!(leg.target_layer(), 3);
        assert_eq!(leg.current_layer(), None);
    }

    proptest! {
        /// Arbitrary packet/target sequences never panic, never reuse an output seq that maps to
        /// a different source, and forwarded packets are always of the current layer.
        #[test]
        fn arbitrary_inputs(ops in proptest::collection::vec((0u8..4, any::<u16>(), any::<u32>(), any::<bool>(), 0u64..100, proptest::option::of(0u8..4)), 0..200)) {
            let t0 = Instant::now();
            let mut leg = LegRewriter::new(1, 90_000, 0);
            let mut t = t0;
            for (layer, seq, ts, key, dt, target) in ops {
                if let Some(tl) = target { leg.set_target_layer(tl); }
                t += Duration::from_millis(dt);
                if let LegDecision::Forward { seq: out, .. } = leg.on_packet(t, layer, seq, ts, key) {
                    prop_assert_eq!(leg.current_layer(), Some(layer));
                    prop_assert_eq!(leg.map_out_to_src(out), Some((layer, seq)));
                }
            }
        }
    }
}
