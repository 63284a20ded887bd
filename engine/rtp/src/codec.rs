//! Codec identification and keyframe detection on RTP payloads (VP8, VP9, H.264, AV1).
//!
//! Every function here reads only inside the slice it is given and never panics.

use crate::vp8::Vp8Descriptor;

/// Media codecs the forwarder knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Opus audio (RFC 7587).
    Opus,
    /// VP8 video (RFC 7741).
    Vp8,
    /// VP9 video (RFC 9628).
    Vp9,
    /// H.264 video (RFC 6184).
    H264,
    /// AV1 video (AOM RTP payload format).
    Av1,
    /// Anything else (RTX, RED, G.711, ...): forwarded opaque.
    Other,
}

impl Codec {
    /// Codec from an SDP `a=rtpmap` encoding name, case-insensitive ("VP8", "H264", "AV1",
    /// "opus", ...). Unknown names give [`Codec::Other`].
    pub fn from_name(name: &str) -> Codec {
        let n = name.trim();
        if n.eq_ignore_ascii_case("opus") {
            Codec::Opus
        } else if n.eq_ignore_ascii_case("vp8") {
            Codec::Vp8
        } else if n.eq_ignore_ascii_case("vp9") {
            Codec::Vp9
        } else if n.eq_ignore_ascii_case("h264") {
            Codec::H264
        } else if n.eq_ignore_ascii_case("av1") || n.eq_ignore_ascii_case("av1x") {
            Codec::Av1
        } else {
            Codec::Other
        }
    }

    /// RTP clock rate used by WebRTC for this codec (48 kHz Opus, 90 kHz video); `None` for
    /// [`Codec::Other`] (take it from the SDP).
    pub fn clock_rate(self) -> Option<u32> {
        match self {
            Codec::Opus => Some(48_000),
            Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1 => Some(90_000),
            Codec::Other => None,
        }
    }

    /// True for video codecs whose streams need keyframes to start decoding.
    pub fn is_video(self) -> bool {
        matches!(self, Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1)
    }
}

/// Maximum number of NAL units examined in one H.264 STAP-A packet (default 64). Bounds per-packet
/// work on hostile aggregates of many tiny NAL units; units past it are not inspected. No memory.
pub const MAX_STAP_NALUS: usize = 64;

/// Maximum number of OBU elements examined in one AV1 aggregation (default 64). Bounds per-packet
/// work on hostile aggregates; elements past it are not inspected. No memory.
pub const MAX_AV1_ELEMENTS: usize = 64;

/// Does this RTP payload start (or contain the start of) a keyframe? VP8 (RFC 7741: S=1, PID=0, and P bit of the VP8
/// frame header = 0), VP9 (RFC 9628 descriptor: B=1, P=0, and SID=0 when L bit present), H.264 (RFC 6184: IDR NAL 5 or SPS 7 in a single
/// NAL, STAP-A, or FU-A with S bit), AV1 (RTP spec: aggregation header N bit = 1, or a sequence-header OBU). Never panics.
///
/// Opus: every packet is independently decodable, so always `true`. [`Codec::Other`]: `false`
/// (unknown; callers decide, e.g. audio passes `keyframe = true` itself).
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Opus => true,
        Codec::Vp8 => vp8_keyframe(payload),
        Codec::Vp9 => vp9_keyframe(payload),
        Codec::H264 => h264_keyframe(payload),
        Codec::Av1 => av1_keyframe(payload),
        Codec::Other => false,
    }
}

fn vp8_keyframe(payload: &[u8]) -> bool {
    let Ok(d) = Vp8Descriptor::parse(payload) else {
        return false;
    };
    if !d.start_of_partition || d.partition_id != 0 {
        return false;
    }
    // VP8 frame tag (RFC 6386 §9.1): bit 0 of the first byte is P (0 = key frame).
    matches!(d.data(payload).first(), Some(b) if b & 0x01 == 0)
}

fn vp9_keyframe(payload: &[u8]) -> bool {
    // |I|P|L|F|B|E|V|Z|
    let Some(&b0) = payload.first() else {
        return false;
    };
    let i = b0 & 0x80 != 0;
    let p = b0 & 0x40 != 0;
    let l = b0 & 0x20 != 0;
    let b = b0 & 0x08 != 0;
    if p || !b {
        return false;
    }
    if !l {
        return true;
    }
    let mut pos = 1usize;
    if i {
        let Some(&m) = payload.get(pos) else {
            return false;
        };
        pos += if m & 0x80 != 0 { 2 } else { 1 };
    }
    // Layer indices: |TID|U| SID |D|
    match payload.get(pos) {
        Some(&layer) => (layer >> 1) & 0x07 == 0,
        None => false,
    }
}

const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;

fn h264_is_key_nal(nal_header: u8) -> bool {
    matches!(nal_header & 0x1F, H264_IDR | H264_SPS)
}

fn h264_keyframe(payload: &[u8]) -> bool {
    let Some(&hdr) = payload.first() else {
        return false;
    };
    match hdr & 0x1F {
        H264_STAP_A => {
            let mut pos = 1usize;
            for _ in 0..MAX_STAP_NALUS {
                let Some(size) = payload.get(pos..pos + 2) else {
                    return false;
                };
                let size = usize::from(u16::from_be_bytes([size[0], size[1]]));
                pos += 2;
                if size == 0 {
                    return false;
                }
                match payload.get(pos) {
                    Some(&nal) if h264_is_key_nal(nal) => return true,
                    Some(_) => {}
                    None => return false,
                }
                pos += size;
            }
            false
        }
        H264_FU_A => match payload.get(1) {
            Some(&fu) => fu & 0x80 != 0 && h264_is_key_nal(fu),
            None => false,
        },
        _ => h264_is_key_nal(hdr),
    }
}

/// OBU type of a sequence header (AV1 spec §6.2.2).
const AV1_OBU_SEQUENCE_HEADER: u8 = 1;

/// Read an unsigned LEB128 (at most 8 bytes, AV1 spec §4.10.5). Returns (value, bytes read).
fn leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for i in 0..8 {
        let b = *data.get(i)?;
        value |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn av1_keyframe(payload: &[u8]) -> bool {
    // Aggregation header: |Z|Y| W |N|-|-|-|
    let Some(&agg) = payload.first() else {
        return false;
    };
    if agg & 0x08 != 0 {
        return true;
    }
    let z = agg & 0x80 != 0;
    let w = usize::from((agg >> 4) & 0x03);
    let mut pos = 1usize;
    for idx in 0..MAX_AV1_ELEMENTS {
        if pos >= payload.len() {
            return false;
        }
        // With W != 0 the W-th (last) element has no length field and runs to the end.
        let last = w != 0 && idx + 1 == w;
        let len = if last {
            payload.len() - pos
        } else {
            let Some((len, n)) = leb128(&payload[pos..]) else {
                return false;
            };
            pos += n;
            match usize::try_from(len) {
                Ok(l) => l,
                Err(_) => return false,
            }
        };
        let continuation = idx == 0 && z;
        if !continuation && len > 0 {
            if let Some(&obu) = payload.get(pos) {
                if (obu >> 3) & 0x0F == AV1_OBU_SEQUENCE_HEADER {
                    return true;
                }
            }
        }
        if last {
            return false;
        }
        pos = match pos.checked_add(len) {
            Some(p) => p,
            None => return false,
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert_eq!(Codec::from_name("VP8"), Codec::Vp8);
        assert_eq!(Codec::from_name("vp9"), Codec::Vp9);
        assert_eq!(Codec::from_name("H264"), Codec::H264);
        assert_eq!(Codec::from_name("h264"), Codec::H264);
        assert_eq!(Codec::from_name("AV1"), Codec::Av1);
        assert_eq!(Codec::from_name("opus"), Codec::Opus);
        assert_eq!(Codec::from_name("OPUS"), Codec::Opus);
        assert_eq!(Codec::from_name("rtx"), Codec::Other);
        assert_eq!(Codec::from_name(""), Codec::Other);
        assert_eq!(Codec::Opus.clock_rate(), Some(48_000));
        assert_eq!(Codec::Vp8.clock_rate(), Some(90_000));
        assert!(Codec::Av1.is_video() && !Codec::Opus.is_video());
    }

    #[test]
    fn vp8() {
        // Real key frame start: descriptor X=1 I=1 15-bit pid, then frame tag with P=0 and the
        // key frame start code 9d 01 2a.
        let key = [0x90, 0x80, 0x81, 0x23, 0x50, 0x2E, 0x00, 0x9D, 0x01, 0x2A];
        assert!(is_keyframe(Codec::Vp8, &key));
        let mut delta = key;
        delta[4] |= 0x01; // P=1: inter frame
        assert!(!is_keyframe(Codec::Vp8, &delta));
        let mut cont = key;
        cont[0] &= !0x10; // S=0: continuation packet
        assert!(!is_keyframe(Codec::Vp8, &cont));
        let mut part1 = key;
        part1[0] |= 0x01; // PID=1
        assert!(!is_keyframe(Codec::Vp8, &part1));
        // minimal descriptor
        assert!(is_keyframe(Codec::Vp8, &[0x10, 0x00, 0x00, 0x00]));
        assert!(!is_keyframe(Codec::Vp8, &[0x10, 0x01]));
        // descriptor only, no frame byte
        assert!(!is_keyframe(Codec::Vp8, &[0x10]));
        assert!(!is_keyframe(Codec::Vp8, &[0x90, 0x80, 0x81]));
        assert!(!is_keyframe(Codec::Vp8, &[]));
    }

    #[test]
    fn vp9() {
        // B=1, P=0, no L
        assert!(is_keyframe(Codec::Vp9, &[0x08, 0xAA]));
        // I with 15-bit pid, L with SID=0
        assert!(is_keyframe(Codec::Vp9, &[0xA8, 0x81, 0x23, 0x00, 0x05]));
        // SID=1 (spatial layer 1) is not the start of a keyframe for us
        assert!(!is_keyframe(Codec::Vp9, &[0xA8, 0x81, 0x23, 0x02, 0x05]));
        // 7-bit pid, L, SID=0
        assert!(is_keyframe(Codec::Vp9, &[0xA8, 0x05, 0x00]));
        // P=1: inter-picture
        assert!(!is_keyframe(Codec::Vp9, &[0x48, 0xAA]));
        // B=0: not the start of a frame
        assert!(!is_keyframe(Codec::Vp9, &[0x00, 0xAA]));
        // truncated layer byte
        assert!(!is_keyframe(Codec::Vp9, &[0xA8, 0x81, 0x23]));
        assert!(!is_keyframe(Codec::Vp9, &[0xA8, 0x81]));
        assert!(!is_keyframe(Codec::Vp9, &[0xA8]));
        assert!(!is_keyframe(Codec::Vp9, &[]));
    }

    #[test]
    fn h264_single_nal() {
        assert!(is_keyframe(Codec::H264, &[0x65, 0x88])); // IDR
        assert!(is_keyframe(Codec::H264, &[0x67, 0x42])); // SPS
        assert!(!is_keyframe(Codec::H264, &[0x68, 0xCE])); // PPS
        assert!(!is_keyframe(Codec::H264, &[0x41, 0x9A])); // non-IDR slice
        assert!(!is_keyframe(Codec::H264, &[0x06])); // SEI
        assert!(!is_keyframe(Codec::H264, &[]));
    }

    #[test]
    fn h264_stap_a() {
        // STAP-A: SPS(3) + PPS(2) + IDR(2)
        let key = [
            0x78, 0, 3, 0x67, 0x42, 0x00, 0, 2, 0x68, 0xCE, 0, 2, 0x65, 0x88,
        ];
        assert!(is_keyframe(Codec::H264, &key));
        // STAP-A with only PPS + SEI
        let delta = [0x78, 0, 2, 0x68, 0xCE, 0, 1, 0x06];
        assert!(!is_keyframe(Codec::H264, &delta));
        // IDR as second unit
        let second = [0x78, 0, 2, 0x68, 0xCE, 0, 1, 0x65];
        assert!(is_keyframe(Codec::H264, &second));
        // size overrunning / zero size / truncated
        assert!(!is_keyframe(Codec::H264, &[0x78, 0xFF, 0xFF, 0x41]));
        assert!(!is_keyframe(Codec::H264, &[0x78, 0, 0, 0x65]));
        assert!(!is_keyframe(Codec::H264, &[0x78, 0]));
        assert!(!is_keyframe(Codec::H264, &[0x78]));
        // size pointing past the end before the IDR unit
        assert!(!is_keyframe(Codec::H264, &[0x78, 0, 9, 0x41, 0, 1, 0x65]));
    }

    #[test]
    fn h264_fu_a() {
        assert!(is_keyframe(Codec::H264, &[0x7C, 0x85, 0xAA])); // start of IDR
        assert!(!is_keyframe(Codec::H264, &[0x7C, 0x05, 0xAA])); // middle of IDR
        assert!(!is_keyframe(Codec::H264, &[0x7C, 0x45, 0xAA])); // end of IDR
        assert!(!is_keyframe(Codec::H264, &[0x7C, 0x81, 0xAA])); // start of non-IDR
        assert!(!is_keyframe(Codec::H264, &[0x7C]));
    }

    #[test]
    fn av1() {
        // N=1: first packet of a coded video sequence
        assert!(is_keyframe(Codec::Av1, &[0x08, 0x0A]));
        // W=1, one OBU: sequence header (type 1 -> 0x0A with has_size... header byte 0b0_0001_0_0_0)
        assert!(is_keyframe(Codec::Av1, &[0x10, 0x08, 0x00, 0x00]));
        // W=2: first element (length 2) is a temporal delimiter? use frame OBU (type 6), second seq hdr
        assert!(is_keyframe(
            Codec::Av1,
            &[0x20, 0x02, 0x30, 0x00, 0x08, 0x00]
        ));
        // W=0: every element has a length: frame (type 6) then sequence header
        assert!(is_keyframe(
            Codec::Av1,
            &[0x00, 0x02, 0x30, 0x00, 0x02, 0x08, 0x00]
        ));
        // Only a frame OBU: delta
        assert!(!is_keyframe(Codec::Av1, &[0x10, 0x30, 0x00, 0x00]));
        assert!(!is_keyframe(Codec::Av1, &[0x00, 0x02, 0x30, 0x00]));
        // Z=1: the first element continues an OBU, so a byte looking like a sequence header there
        // is not one.
        assert!(!is_keyframe(Codec::Av1, &[0x90, 0x08, 0x00]));
        // Z=1 then a real sequence header in element 2
        assert!(is_keyframe(Codec::Av1, &[0xA0, 0x01, 0x08, 0x08, 0x00]));
        // hostile lengths
        assert!(!is_keyframe(
            Codec::Av1,
            &[0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        ));
        assert!(!is_keyframe(Codec::Av1, &[0x00, 0x7F, 0x30]));
        assert!(!is_keyframe(Codec::Av1, &[0x00]));
        assert!(!is_keyframe(Codec::Av1, &[]));
    }

    #[test]
    fn opus_and_other() {
        assert!(is_keyframe(Codec::Opus, &[0xFC, 0xFF]));
        assert!(is_keyframe(Codec::Opus, &[]));
        assert!(!is_keyframe(Codec::Other, &[0x65]));
    }

    #[test]
    fn truncations_never_panic() {
        let samples: [(Codec, &[u8]); 5] = [
            (
                Codec::Vp8,
                &[0x90, 0xE0, 0x81, 0x23, 0x05, 0x20, 0x50, 0x2E, 0x00, 0x9D],
            ),
            (Codec::Vp9, &[0xA8, 0x81, 0x23, 0x00, 0x05]),
            (
                Codec::H264,
                &[
                    0x78, 0, 3, 0x67, 0x42, 0x00, 0, 2, 0x68, 0xCE, 0, 2, 0x65, 0x88,
                ],
            ),
            (Codec::H264, &[0x7C, 0x85, 0xAA]),
            (Codec::Av1, &[0x00, 0x02, 0x30, 0x00, 0x02, 0x08, 0x00]),
        ];
        for (c, p) in samples {
            assert!(is_keyframe(c, p));
            for n in 0..p.len() {
                let _ = is_keyframe(c, &p[..n]);
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            for c in [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1, Codec::Other] {
                let _ = is_keyframe(c, &data);
            }
        }

        #[test]
        fn av1_w0_hostile_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64), w in 0u8..4) {
            let mut d = data;
            if !d.is_empty() { d[0] = (d[0] & 0x87) | (w << 4); }
            let _ = is_keyframe(Codec::Av1, &d);
        }
    }
}
