//! VP8 RTP payload descriptor (RFC 7741 §4.2) parsing, and per-leg rewriting of PictureID and
//! TL0PICIDX so that a receiver sees one continuous VP8 stream across simulcast layer switches.

use crate::header::RtpError;

/// Parsed VP8 payload descriptor (RFC 7741 §4.2).
///
/// ```text
///       0 1 2 3 4 5 6 7
///      +-+-+-+-+-+-+-+-+
///      |X|R|N|S|R| PID | (REQUIRED)
///      +-+-+-+-+-+-+-+-+
/// X:   |I|L|T|K| RSV   | (OPTIONAL)
///      +-+-+-+-+-+-+-+-+
/// I:   |M| PictureID   | (OPTIONAL, 7 or 15 bits)
///      +-+-+-+-+-+-+-+-+
/// L:   |   TL0PICIDX   | (OPTIONAL)
///      +-+-+-+-+-+-+-+-+
/// T/K: |TID|Y| KEYIDX  | (OPTIONAL)
///      +-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// S bit: first packet of a VP8 partition.
    pub start_of_partition: bool,
    /// Partition index (0..=7).
    pub partition_id: u8,
    /// PictureID, if the I bit is set (7- or 15-bit value).
    pub picture_id: Option<u16>,
    /// True when the PictureID uses the 15-bit (M=1) form.
    pub picture_id_15bit: bool,
    /// TL0PICIDX, if the L bit is set.
    pub tl0picidx: Option<u8>,
    /// Temporal layer index, if the T bit is set.
    pub tid: Option<u8>,
    /// Length of the descriptor in bytes; the VP8 payload starts here.
    pub header_len: usize,
}

/// Byte offsets of the rewritable fields inside a descriptor.
struct Vp8Fields {
    desc: Vp8Descriptor,
    /// Offset of the first PictureID byte.
    picture_id_at: usize,
    /// Offset of the TL0PICIDX byte.
    tl0_at: usize,
}

fn parse_fields(payload: &[u8]) -> Result<Vp8Fields, RtpError> {
    let byte = |i: usize| payload.get(i).copied().ok_or(RtpError::BadPayload);
    let b0 = byte(0)?;
    let mut pos = 1usize;
    let (mut has_i, mut has_l, mut has_t, mut has_k) = (false, false, false, false);
    if b0 & 0x80 != 0 {
        let x = byte(pos)?;
        pos += 1;
        has_i = x & 0x80 != 0;
        has_l = x & 0x40 != 0;
        has_t = x & 0x20 != 0;
        has_k = x & 0x10 != 0;
    }
    let picture_id_at = pos;
    let mut picture_id = None;
    let mut picture_id_15bit = false;
    if has_i {
        let p0 = byte(pos)?;
        pos += 1;
        if p0 & 0x80 != 0 {
            let p1 = byte(pos)?;
            pos += 1;
            picture_id = Some(u16::from(p0 & 0x7F) << 8 | u16::from(p1));
            picture_id_15bit = true;
        } else {
            picture_id = Some(u16::from(p0));
        }
    }
    let tl0_at = pos;
    let mut tl0picidx = None;
    if has_l {
        tl0picidx = Some(byte(pos)?);
        pos += 1;
    }
    let mut tid = None;
    if has_t || has_k {
        let tk = byte(pos)?;
        pos += 1;
        if has_t {
            tid = Some(tk >> 6);
        }
    }
    Ok(Vp8Fields {
        desc: Vp8Descriptor {
            start_of_partition: b0 & 0x10 != 0,
            partition_id: b0 & 0x07,
            picture_id,
            picture_id_15bit,
            tl0picidx,
            tid,
            header_len: pos,
        },
        picture_id_at,
        tl0_at,
    })
}

impl Vp8Descriptor {
    /// Parse the descriptor at the start of a VP8 RTP payload. Truncated descriptors give
    /// `BadPayload`; a descriptor with no VP8 data after it parses (`header_len == len`).
    pub fn parse(payload: &[u8]) -> Result<Self, RtpError> {
        parse_fields(payload).map(|f| f.desc)
    }

    /// The VP8 data after the descriptor (empty if none).
    pub fn data<'a>(&self, payload: &'a [u8]) -> &'a [u8] {
        payload.get(self.header_len..).unwrap_or(&[])
    }
}

/// Modulus mask of the 15-bit PictureID space.
const PID_MASK: u16 = 0x7FFF;

/// True if `a` is newer than `b` in a space of `mask + 1` values (half-range rule).
fn newer_u16(a: u16, b: u16, mask: u16) -> bool {
    let d = a.wrapping_sub(b) & mask;
    d != 0 && d <= mask / 2
}

/// Per-leg continuity of picture-id and TL0PICIDX across layer switches: rewrites them in place in the OUTPUT payload
/// (same field widths as the input, so the length never changes).
///
/// Output ids are `input + offset` (mod 2^15 for PictureID, 2^8 for TL0PICIDX). On a switch the
/// offsets are re-chosen so the first frame of the new layer gets `highest output id + 1`.
/// 7-bit PictureIDs are unwrapped into the 15-bit space internally, so a leg can mix widths.
#[derive(Debug, Clone, Default)]
pub struct Vp8Rewriter {
    pid_offset: u16,
    /// Last input PictureID, unwrapped to 15 bits.
    last_in_pid: Option<u16>,
    /// Highest output PictureID (15-bit space).
    max_out_pid: Option<u16>,
    tl0_offset: u8,
    max_out_tl0: Option<u8>,
    /// Offsets in force before the last switch (for retransmissions from the previous segment).
    prev_offsets: (u16, u8),
}

impl Vp8Rewriter {
    /// A rewriter with no history (first packet keeps its ids).
    pub fn new() -> Self {
        Self::default()
    }

    /// `switched` = this is the first packet after a layer switch. Rewrites payload (the descriptor bytes) in place.
    pub fn rewrite(&mut self, payload: &mut [u8], switched: bool) -> Result<(), RtpError> {
        let f = parse_fields(payload)?;
        if switched {
            self.prev_offsets = (self.pid_offset, self.tl0_offset);
        }
        if let Some(pid) = f.desc.picture_id {
            let in15 = match (f.desc.picture_id_15bit, self.last_in_pid) {
                (false, Some(last)) if !switched => {
                    // Unwrap the 7-bit id next to the previous input id (signed 7-bit delta).
                    let d = pid.wrapping_sub(last) & 0x7F;
                    let delta = if d >= 64 { d.wrapping_sub(128) } else { d };
                    last.wrapping_add(delta) & PID_MASK
                }
                _ => pid,
            };
            if switched {
                self.pid_offset = match self.max_out_pid {
                    Some(m) => m.wrapping_add(1).wrapping_sub(in15) & PID_MASK,
                    None => 0,
                };
            }
            self.last_in_pid = Some(in15);
            let out = in15.wrapping_add(self.pid_offset) & PID_MASK;
            if self.max_out_pid.is_none_or(|m| newer_u16(out, m, PID_MASK)) {
                self.max_out_pid = Some(out);
            }
            let at = f.picture_id_at;
            // INVARIANT: parse_fields validated that these offsets lie inside `payload`.
            if f.desc.picture_id_15bit {
                payload[at] = 0x80 | (out >> 8) as u8;
                payload[at + 1] = out as u8;
            } else {
                payload[at] = (out & 0x7F) as u8;
            }
        }
        if let Some(tl0) = f.desc.tl0picidx {
            if switched {
                self.tl0_offset = match self.max_out_tl0 {
                    Some(m) => m.wrapping_add(1).wrapping_sub(tl0),
                    None => 0,
                };
            }
            let out = tl0.wrapping_add(self.tl0_offset);
            if self
                .max_out_tl0
                .is_none_or(|m| newer_u16(u16::from(out), u16::from(m), 0xFF))
            {
                self.max_out_tl0 = Some(out);
            }
            payload[f.tl0_at] = out;
        }
        Ok(())
    }

    /// Rewrite the ids of a *retransmitted* packet without touching the rewriter's state: a
    /// NACKed packet gets the ids it had the first time. `previous` selects the offsets in force
    /// before the last switch (the packet belongs to the previous layer segment).
    pub fn rewrite_retransmission(
        &self,
        payload: &mut [u8],
        previous: bool,
    ) -> Result<(), RtpError> {
        let (pid_offset, tl0_offset) = if previous {
            self.prev_offsets
        } else {
            (self.pid_offset, self.tl0_offset)
        };
        let f = parse_fields(payload)?;
        if let Some(pid) = f.desc.picture_id {
            let out = pid.wrapping_add(pid_offset) & PID_MASK;
            let at = f.picture_id_at;
            // INVARIANT: parse_fields validated that these offsets lie inside `payload`.
            if f.desc.picture_id_15bit {
                payload[at] = 0x80 | (out >> 8) as u8;
                payload[at + 1] = out as u8;
            } else {
                payload[at] = (out & 0x7F) as u8;
            }
        }
        if let Some(tl0) = f.desc.tl0picidx {
            payload[f.tl0_at] = tl0.wrapping_add(tl0_offset);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use rtp::packetizer::Depacketizer;

    /// Build a descriptor (+ 3 bytes of VP8 data).
    fn desc(s: bool, pid: Option<(u16, bool)>, tl0: Option<u8>, tid: Option<u8>) -> Vec<u8> {
        let mut v = vec![if s { 0x10 } else { 0 }];
        let x = pid.is_some() || tl0.is_some() || tid.is_some();
        if x {
            v[0] |= 0x80;
            let mut xb = 0u8;
            if pid.is_some() {
                xb |= 0x80;
            }
            if tl0.is_some() {
                xb |= 0x40;
            }
            if tid.is_some() {
                xb |= 0x20;
            }
            v.push(xb);
        }
        if let Some((p, long)) = pid {
            if long {
                v.push(0x80 | (p >> 8) as u8);
                v.push(p as u8);
            } else {
                v.push(p as u8 & 0x7F);
            }
        }
        if let Some(t) = tl0 {
            v.push(t);
        }
        if let Some(t) = tid {
            v.push(t << 6 | 0x20);
        }
        v.extend_from_slice(&[0x10, 0x02, 0x00]);
        v
    }

    #[test]
    fn parse_fields_all_forms() {
        let p = desc(true, Some((0x1234, true)), Some(77), Some(2));
        let d = Vp8Descriptor::parse(&p).unwrap();
        assert!(d.start_of_partition);
        assert_eq!(d.partition_id, 0);
        assert_eq!(d.picture_id, Some(0x1234));
        assert!(d.picture_id_15bit);
        assert_eq!(d.tl0picidx, Some(77));
        assert_eq!(d.tid, Some(2));
        assert_eq!(d.header_len, 6);
        assert_eq!(d.data(&p), &[0x10, 0x02, 0x00]);

        let p = desc(false, Some((100, false)), None, None);
        let d = Vp8Descriptor::parse(&p).unwrap();
        assert_eq!(d.picture_id, Some(100));
        assert!(!d.picture_id_15bit);
        assert_eq!(d.tl0picidx, None);
        assert_eq!(d.header_len, 3);

        let d = Vp8Descriptor::parse(&[0x13, 0xAA]).unwrap();
        assert_eq!(d.partition_id, 3);
        assert_eq!(d.header_len, 1);
        assert_eq!(d.picture_id, None);

        // K without T: keyidx byte consumed, no tid.
        let d = Vp8Descriptor::parse(&[0x80, 0x10, 0x05, 0xAA]).unwrap();
        assert_eq!(d.tid, None);
        assert_eq!(d.header_len, 3);
    }

    #[test]
    fn every_truncation_is_err() {
        let p = desc(true, Some((0x1234, true)), Some(77), Some(2));
        let hl = Vp8Descriptor::parse(&p).unwrap().header_len;
        for n in 0..hl {
            assert_eq!(
                Vp8Descriptor::parse(&p[..n]),
                Err(RtpError::BadPayload),
                "{n}"
            );
            let mut t = p[..n].to_vec();
            assert_eq!(
                Vp8Rewriter::new().rewrite(&mut t, true),
                Err(RtpError::BadPayload)
            );
        }
        assert!(Vp8Descriptor::parse(&p[..hl]).is_ok());
    }

    /// Simulate a layer with consecutive picture ids: returns output picture ids.
    fn run(
        rw: &mut Vp8Rewriter,
        start: u16,
        long: bool,
        frames: u16,
        pkts_per_frame: u16,
        tl0_start: u8,
    ) -> Vec<(u16, u8)> {
        let mask = if long { 0x7FFF } else { 0x7F };
        let mut out = vec![];
        for f in 0..frames {
            for k in 0..pkts_per_frame {
                let pid = start.wrapping_add(f) & mask;
                let mut p = desc(
                    k == 0,
                    Some((pid, long)),
                    Some(tl0_start.wrapping_add(f as u8)),
                    Some(0),
                );
                let before = p.len();
                rw.rewrite(&mut p, f == 0 && k == 0).unwrap();
                assert_eq!(p.len(), before);
                let d = Vp8Descriptor::parse(&p).unwrap();
                assert_eq!(d.picture_id_15bit, long);
                out.push((d.picture_id.unwrap(), d.tl0picidx.unwrap()));
            }
        }
        out
    }

    fn assert_continuous(ids: &[(u16, u8)], mask: u16) {
        for w in ids.windows(2) {
            let dp = w[1].0.wrapping_sub(w[0].0) & mask;
            assert!(dp <= 1, "picture id jump {:?}", w);
            let dt = w[1].1.wrapping_sub(w[0].1);
            assert!(dt <= 1, "tl0 jump {:?}", w);
        }
    }

    #[test]
    fn continuous_across_switch_15bit() {
        let mut rw = Vp8Rewriter::new();
        let mut ids = run(&mut rw, 0x7FF0, true, 40, 3, 250);
        assert_eq!(ids[0], (0x7FF0, 250)); // first packet keeps its ids
        ids.extend(run(&mut rw, 1234, true, 30, 2, 9));
        ids.extend(run(&mut rw, 0x7FFE, true, 30, 2, 255));
        assert_continuous(&ids, 0x7FFF);
        // +1 per frame: 100 frames total
        assert_eq!(ids.last().unwrap().0, (0x7FF0 + 99) & 0x7FFF);
        assert_eq!(ids.last().unwrap().1, 250u8.wrapping_add(99));
    }

    #[test]
    fn continuous_across_switch_7bit() {
        let mut rw = Vp8Rewriter::new();
        let mut ids = run(&mut rw, 120, false, 200, 2, 0);
        ids.extend(run(&mut rw, 5, false, 150, 1, 100));
        ids.extend(run(&mut rw, 64, false, 10, 3, 200));
        assert_continuous(&ids, 0x7F);
        assert_eq!(ids.last().unwrap().0, (120 + 359) & 0x7F);
    }

    #[test]
    fn mixed_widths_stay_continuous() {
        let mut rw = Vp8Rewriter::new();
        let mut ids = run(&mut rw, 300, true, 10, 1, 0);
        ids.extend(run(&mut rw, 100, false, 100, 1, 0));
        let seven: Vec<_> = ids.iter().map(|(p, t)| (p & 0x7F, *t)).collect();
        assert_continuous(&seven, 0x7F);
        ids.extend(run(&mut rw, 5000, true, 10, 1, 0));
        // back in 15-bit: continues from the unwrapped highest id (300 + 110 frames - 1)
        assert_eq!(ids.last().unwrap().0, 300 + 119);
    }

    #[test]
    fn reordered_packets_keep_relative_ids() {
        let mut rw = Vp8Rewriter::new();
        run(&mut rw, 10, true, 5, 1, 0); // out 10..=14
                                         // switch to a layer at 500: 500 -> 15; then a reordered older frame 499 -> 14
        let mut p = desc(true, Some((500, true)), None, None);
        rw.rewrite(&mut p, true).unwrap();
        assert_eq!(Vp8Descriptor::parse(&p).unwrap().picture_id, Some(15));
        let mut p = desc(true, Some((502, true)), None, None);
        rw.rewrite(&mut p, false).unwrap();
        assert_eq!(Vp8Descriptor::parse(&p).unwrap().picture_id, Some(17));
        let mut p = desc(true, Some((501, true)), None, None);
        rw.rewrite(&mut p, false).unwrap();
        assert_eq!(Vp8Descriptor::parse(&p).unwrap().picture_id, Some(16));
        // next switch continues after the highest (17)
        let mut p = desc(true, Some((3, true)), None, None);
        rw.rewrite(&mut p, true).unwrap();
        assert_eq!(Vp8Descriptor::parse(&p).unwrap().picture_id, Some(18));
    }

    #[test]
    fn descriptor_without_ids_untouched() {
        let mut rw = Vp8Rewriter::new();
        let mut p = vec![0x10, 1, 2, 3];
        rw.rewrite(&mut p, true).unwrap();
        assert_eq!(p, vec![0x10, 1, 2, 3]);
    }

    proptest! {
        #[test]
        fn arbitrary_never_panics(data in proptest::collection::vec(any::<u8>(), 0..12), sw in any::<bool>()) {
            let r = Vp8Descriptor::parse(&data);
            if let Ok(d) = r {
                prop_assert!(d.header_len <= data.len());
            }
            let mut copy = data.clone();
            let mut rw = Vp8Rewriter::new();
            let _ = rw.rewrite(&mut copy, sw);
            let _ = rw.rewrite(&mut copy, !sw);
            prop_assert_eq!(copy.len(), data.len());
        }

        /// Agreement with the webrtc-rs `rtp` crate's independent VP8 depacketizer.
        #[test]
        fn matches_webrtc_rs(data in proptest::collection::vec(any::<u8>(), 4..12)) {
            let mut theirs = rtp::codecs::vp8::Vp8Packet::default();
            let their = theirs.depacketize(&Bytes::from(data.clone()));
            let ours = Vp8Descriptor::parse(&data);
            if let Ok(rest) = their {
                let d = ours.unwrap();
                prop_assert_eq!(d.header_len, data.len() - rest.len());
                prop_assert_eq!(d.start_of_partition, theirs.s == 1);
                prop_assert_eq!(d.partition_id, theirs.pid);
                prop_assert_eq!(d.picture_id, (theirs.i == 1).then_some(theirs.picture_id));
                prop_assert_eq!(d.tl0picidx, (theirs.l == 1).then_some(theirs.tl0_pic_idx));
                prop_assert_eq!(d.tid, (theirs.t == 1).then_some(theirs.tid));
            } else if let Ok(d) = ours {
                // The rtp crate also rejects a descriptor with no data after it.
                prop_assert_eq!(d.header_len, data.len());
            }
        }
    }
}
