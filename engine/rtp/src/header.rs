//! Zero-copy RTP header view (RFC 3550 §5.1) with strict bounds validation, and the RTP/RTCP
//! demultiplexing rule of RFC 5761 §4 / RFC 7983.
//!
//! [`RtpHeader::parse`] never copies and never panics: every length it reports lies inside the
//! datagram it was given (RELIABILITY A1, B5).

/// Fixed part of an RTP header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC.
pub const RTP_FIXED_HEADER_LEN: usize = 12;

/// Length of the extension block header (16-bit profile + 16-bit length in 32-bit words).
pub const RTP_EXT_HEADER_LEN: usize = 4;

/// Why an RTP packet (or a payload inside it) was rejected. One variant per reason so the engine
/// can count drops by [`RtpError::reason`].
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("RTP packet shorter than the fixed header")]
    TooShort,
    /// Version field is not 2.
    #[error("RTP version is not 2")]
    BadVersion,
    /// The CSRC list announced by CC does not fit in the packet.
    #[error("CSRC count exceeds packet length")]
    BadCsrcCount,
    /// X=1 but the extension header or the announced extension block runs past the end.
    #[error("header extension length exceeds packet length")]
    BadExtensionLength,
    /// P=1 with a pad count of 0, a pad count larger than the payload, or no payload byte at all.
    #[error("invalid RTP padding")]
    BadPadding,
    /// The output buffer cannot hold the rewritten packet.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A codec payload (e.g. a VP8 payload descriptor) is malformed or truncated, or the header
    /// view does not describe the packet it is used with.
    #[error("malformed payload")]
    BadPayload,
}

impl RtpError {
    /// Stable snake_case label for drop counters/metrics.
    pub fn reason(self) -> &'static str {
        match self {
            RtpError::TooShort => "too_short",
            RtpError::BadVersion => "bad_version",
            RtpError::BadCsrcCount => "bad_csrc_count",
            RtpError::BadExtensionLength => "bad_extension_length",
            RtpError::BadPadding => "bad_padding",
            RtpError::BufferTooSmall => "buffer_too_small",
            RtpError::BadPayload => "bad_payload",
        }
    }
}

/// RFC 7983 / RFC 5761: first byte 128..=191 and second byte (pt with marker) in 192..=223 -> RTCP,
/// else RTP.
///
/// Only classifies; a `true`/`false` answer says nothing about validity. Packets shorter than 2
/// bytes are reported as not RTCP (the RTP parser then rejects them).
pub fn is_rtcp(pkt: &[u8]) -> bool {
    match pkt {
        [b0, b1, ..] => (128..=191).contains(b0) && (192..=223).contains(b1),
        _ => false,
    }
}

/// Location of the header-extension data inside a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtBlock {
    /// The 16-bit "defined by profile" field: 0xBEDE (one-byte form), 0x100X (two-byte form) or
    /// anything else (RFC 3550 generic extension, opaque to us).
    pub profile: u16,
    /// Offset of the extension data (just after the 4-byte profile/length header).
    pub offset: usize,
    /// Length of the extension data in bytes (a multiple of 4).
    pub len: usize,
}

/// A validated view of an RTP header. All offsets/lengths are guaranteed to lie within the packet
/// passed to [`RtpHeader::parse`]: `header_len + payload_len + padding_len == pkt.len()`.
#[derive(Debug, Clone, Copy)]
pub struct RtpHeader {
    /// Marker bit.
    pub marker: bool,
    /// Payload type (7 bits).
    pub pt: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub ts: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Number of CSRCs (0..=15); they sit at bytes `12..12 + 4 * csrc_count`.
    pub csrc_count: u8,
    /// offset of the extension block data (after the 4-byte 0xBEDE/0x100X header) and its length in bytes; None if X=0
    pub ext: Option<ExtBlock>,
    /// Bytes before the payload: fixed header, CSRCs and the whole extension block.
    pub header_len: usize,
    /// Payload length, excluding padding.
    pub payload_len: usize,
    /// Number of padding bytes at the end (including the count byte); 0 if P=0.
    pub padding_len: usize,
}

impl RtpHeader {
    /// Parse and validate an RTP header: V=2, CSRCs fit, extension block fits, padding
    /// `0 < pad <= payload` (RELIABILITY B5). A zero-length payload is legal.
    pub fn parse(pkt: &[u8]) -> Result<RtpHeader, RtpError> {
        let fixed: &[u8; RTP_FIXED_HEADER_LEN] = pkt
            .get(..RTP_FIXED_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(RtpError::TooShort)?;
        let b0 = fixed[0];
        if b0 >> 6 != 2 {
            return Err(RtpError::BadVersion);
        }
        let has_padding = b0 & 0x20 != 0;
        let has_ext = b0 & 0x10 != 0;
        let csrc_count = b0 & 0x0F;
        let marker = fixed[1] & 0x80 != 0;
        let pt = fixed[1] & 0x7F;
        let seq = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ts = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let ssrc = u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);

        // At most 12 + 60: no overflow possible.
        let mut header_len = RTP_FIXED_HEADER_LEN + 4 * usize::from(csrc_count);
        if header_len > pkt.len() {
            return Err(RtpError::BadCsrcCount);
        }

        let ext = if has_ext {
            let eh = pkt
                .get(header_len..header_len + RTP_EXT_HEADER_LEN)
                .ok_or(RtpError::BadExtensionLength)?;
            let profile = u16::from_be_bytes([eh[0], eh[1]]);
            let words = u16::from_be_bytes([eh[2], eh[3]]);
            let offset = header_len + RTP_EXT_HEADER_LEN;
            let len = 4 * usize::from(words);
            let end = offset + len;
            if end > pkt.len() {
                return Err(RtpError::BadExtensionLength);
            }
            header_len = end;
            Some(ExtBlock {
                profile,
                offset,
                len,
            })
        } else {
            None
        };

        // header_len <= pkt.len() checked above.
        let body_len = pkt.len() - header_len;
        let padding_len = if has_padding {
            let last = *pkt[header_len..].last().ok_or(RtpError::BadPadding)?;
            let pad = usize::from(last);
            if pad == 0 || pad > body_len {
                return Err(RtpError::BadPadding);
            }
            pad
        } else {
            0
        };

        Ok(RtpHeader {
            marker,
            pt,
            seq,
            ts,
            ssrc,
            csrc_count,
            ext,
            header_len,
            payload_len: body_len - padding_len,
            padding_len,
        })
    }

    /// The payload, excluding padding. Returns an empty slice if `pkt` is not the packet this view
    /// was parsed from and the recorded bounds do not fit it (never panics).
    pub fn payload<'a>(&self, pkt: &'a [u8]) -> &'a [u8] {
        self.header_len
            .checked_add(self.payload_len)
            .and_then(|end| pkt.get(self.header_len..end))
            .unwrap_or(&[])
    }

    /// Total packet length described by this view.
    pub fn packet_len(&self) -> usize {
        self.header_len
            .saturating_add(self.payload_len)
            .saturating_add(self.padding_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use webrtc_util::marshal::{Marshal, Unmarshal};

    fn basic(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80, 96, 0x12, 0x34, 0, 0, 0x10, 0, 0xDE, 0xAD, 0xBE, 0xEF];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_minimal() {
        let p = basic(&[1, 2, 3]);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.pt, 96);
        assert!(!h.marker);
        assert_eq!(h.seq, 0x1234);
        assert_eq!(h.ts, 0x1000);
        assert_eq!(h.ssrc, 0xDEADBEEF);
        assert_eq!(h.header_len, 12);
        assert_eq!(h.payload(&p), &[1, 2, 3]);
        assert!(h.ext.is_none());
    }

    #[test]
    fn rtcp_demux() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(is_rtcp(&[0x81, 201, 0, 1]));
        assert!(is_rtcp(&[0xBF, 223]));
        assert!(!is_rtcp(&[0x80, 96]));
        assert!(!is_rtcp(&[0x80, 96 | 0x80]));
        assert!(!is_rtcp(&[0x80, 224]));
        assert!(!is_rtcp(&[0x80, 191]));
        assert!(!is_rtcp(&[0x40, 200]));
        assert!(!is_rtcp(&[0xC0, 200]));
        assert!(!is_rtcp(&[0x80]));
        assert!(!is_rtcp(&[]));
    }

    #[test]
    fn b5_padding_zero_rejected() {
        let mut p = basic(&[1, 2, 3, 0]);
        p[0] |= 0x20;
        assert_eq!(RtpHeader::parse(&p).unwrap_err(), RtpError::BadPadding);
    }

    #[test]
    fn b5_padding_equal_payload_ok() {
        let mut p = basic(&[0, 0, 0, 4]);
        p[0] |= 0x20;
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.payload_len, 0);
        assert_eq!(h.padding_len, 4);
        assert_eq!(h.payload(&p), &[] as &[u8]);
    }

    #[test]
    fn b5_padding_larger_than_payload_rejected() {
        let mut p = basic(&[0, 0, 0, 5]);
        p[0] |= 0x20;
        assert_eq!(RtpHeader::parse(&p).unwrap_err(), RtpError::BadPadding);
        // P=1 with no body at all.
        let mut p = basic(&[]);
        p[0] |= 0x20;
        assert_eq!(RtpHeader::parse(&p).unwrap_err(), RtpError::BadPadding);
    }

    #[test]
    fn b5_padding_does_not_eat_extension() {
        // Pad count covers more than the payload but less than payload + ext: must fail.
        let mut p = vec![0xB0, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]);
        p.extend_from_slice(&[9, 9, 4]);
        p[0] |= 0x20;
        assert_eq!(RtpHeader::parse(&p).unwrap_err(), RtpError::BadPadding);
        *p.last_mut().unwrap() = 2;
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.payload(&p), &[9]);
    }

    #[test]
    fn b5_zero_length_payload_ok() {
        let p = basic(&[]);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.payload_len, 0);
    }

    #[test]
    fn b5_extension_past_end() {
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        p.extend_from_slice(&[0xBE, 0xDE, 0, 2, 0x10, 0xAA, 0, 0]);
        assert_eq!(
            RtpHeader::parse(&p).unwrap_err(),
            RtpError::BadExtensionLength
        );
        // X=1 with no room for the extension header.
        let mut p = basic(&[0xBE, 0xDE]);
        p[0] |= 0x10;
        assert_eq!(
            RtpHeader::parse(&p).unwrap_err(),
            RtpError::BadExtensionLength
        );
        // Max length field.
        let mut p = basic(&[0xBE, 0xDE, 0xFF, 0xFF]);
        p[0] |= 0x10;
        assert_eq!(
            RtpHeader::parse(&p).unwrap_err(),
            RtpError::BadExtensionLength
        );
    }

    #[test]
    fn b5_cc15_on_12_bytes() {
        let mut p = basic(&[]);
        p[0] |= 0x0F;
        assert_eq!(RtpHeader::parse(&p).unwrap_err(), RtpError::BadCsrcCount);
    }

    #[test]
    fn bad_version_and_short() {
        let mut p = basic(&[1]);
        p[0] = 0x40;
        assert_eq!(RtpHeader::parse(&p).unwrap_err(), RtpError::BadVersion);
        for n in 0..12 {
            assert_eq!(
                RtpHeader::parse(&basic(&[])[..n]).unwrap_err(),
                RtpError::TooShort
            );
        }
    }

    fn check_bounds(pkt: &[u8], h: &RtpHeader) {
        assert_eq!(h.packet_len(), pkt.len());
        assert!(h.header_len <= pkt.len());
        if let Some(e) = h.ext {
            assert!(e.offset + e.len <= h.header_len);
        }
        assert_eq!(h.payload(pkt).len(), h.payload_len);
    }

    #[test]
    fn every_truncation_is_err_or_consistent() {
        let mut p = vec![0xB2, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        p.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // 2 CSRCs
        p.extend_from_slice(&[0xBE, 0xDE, 0, 2, 0x10, 0xAA, 0x21, 1, 2, 3, 0, 0]);
        p.extend_from_slice(&[7, 7, 7, 7, 7, 0, 0, 3]);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.csrc_count, 2);
        for n in 0..p.len() {
            if let Ok(h) = RtpHeader::parse(&p[..n]) {
                check_bounds(&p[..n], &h);
            }
        }
    }

    /// Build a random packet with the webrtc-rs `rtp` crate (independent implementation).
    fn arb_packet() -> impl Strategy<Value = rtp::packet::Packet> {
        (
            any::<bool>(),
            0u8..128,
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u32>(), 0..=15),
            0u8..3,
            proptest::collection::vec(
                (1u8..15, proptest::collection::vec(any::<u8>(), 1..=16)),
                0..6,
            ),
            proptest::collection::vec(any::<u8>(), 0..200),
            any::<bool>(),
        )
            .prop_map(
                |(marker, pt, seq, ts, ssrc, csrc, ext_kind, exts, payload, padding)| {
                    let mut header = rtp::header::Header {
                        version: 2,
                        padding: padding && !payload.is_empty(),
                        marker,
                        payload_type: pt,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc,
                        csrc,
                        ..Default::default()
                    };
                    if ext_kind > 0 {
                        header.extension = true;
                        header.extension_profile = if ext_kind == 1 { 0xBEDE } else { 0x1000 };
                        let mut seen = [false; 16];
                        for (id, data) in exts {
                            if !seen[id as usize] {
                                seen[id as usize] = true;
                                header.extensions.push(rtp::header::Extension {
                                    id,
                                    payload: Bytes::from(data),
                                });
                            }
                        }
                    }
                    rtp::packet::Packet {
                        header,
                        payload: Bytes::from(payload),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn parse_matches_webrtc_rs(pkt in arb_packet()) {
            let raw = pkt.marshal().unwrap();
            let h = RtpHeader::parse(&raw).unwrap();
            check_bounds(&raw, &h);
            let theirs = rtp::packet::Packet::unmarshal(&mut raw.clone()).unwrap();
            prop_assert_eq!(h.marker, theirs.header.marker);
            prop_assert_eq!(h.pt, theirs.header.payload_type);
            prop_assert_eq!(h.seq, theirs.header.sequence_number);
            prop_assert_eq!(h.ts, theirs.header.timestamp);
            prop_assert_eq!(h.ssrc, theirs.header.ssrc);
            prop_assert_eq!(usize::from(h.csrc_count), theirs.header.csrc.len());
            prop_assert_eq!(h.ext.is_some(), theirs.header.extension);
            if let Some(e) = h.ext {
                prop_assert_eq!(e.profile, theirs.header.extension_profile);
            }
            prop_assert_eq!(h.payload(&raw), &theirs.payload[..]);
            prop_assert_eq!(h.payload(&raw), &pkt.payload[..]);
        }

        #[test]
        fn parse_arbitrary_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(h) = RtpHeader::parse(&data) {
                check_bounds(&data, &h);
            }
            let _ = is_rtcp(&data);
        }

        #[test]
        fn parse_rtp_shaped_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..300), b0 in 0x80u8..0xC0) {
            if !data.is_empty() { data[0] = b0; }
            if let Ok(h) = RtpHeader::parse(&data) {
                check_bounds(&data, &h);
            }
        }
    }
}
