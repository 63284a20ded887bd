//! Minimal, bounds-checked RTP/RTCP header reading: only what SRTP needs
//! (SSRC, sequence number, where the encrypted portion starts).

use crate::SrtpError;

/// Fixed RTP header length (RFC 3550 §5.1).
pub(crate) const RTP_FIXED_HEADER_LEN: usize = 12;
/// RTCP header plus sender SSRC: the part SRTCP leaves in clear (RFC 3711 §3.4).
pub(crate) const RTCP_CLEAR_LEN: usize = 8;

/// What SRTP needs from an RTP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RtpHeader {
    pub(crate) seq: u16,
    pub(crate) ssrc: u32,
    /// Offset of the payload: fixed header + CSRCs + header extension.
    pub(crate) len: usize,
}

/// Parses the RTP header of `pkt`. The header (including CSRCs and the extension block)
/// must fit in `pkt`.
pub(crate) fn parse_rtp(pkt: &[u8]) -> Result<RtpHeader, SrtpError> {
    let fixed: &[u8; RTP_FIXED_HEADER_LEN] = pkt
        .get(..RTP_FIXED_HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(SrtpError::TooShort)?;
    if fixed[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let cc = usize::from(fixed[0] & 0x0f);
    let has_ext = fixed[0] & 0x10 != 0;
    let seq = u16::from_be_bytes([fixed[2], fixed[3]]);
    let ssrc = u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    // At most 12 + 15*4 + 4 + 65535*4: no overflow in usize.
    let mut len = RTP_FIXED_HEADER_LEN + 4 * cc;
    if has_ext {
        let ext = pkt.get(len..len + 4).ok_or(SrtpError::TooShort)?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        len += 4 + 4 * words;
    }
    if len > pkt.len() {
        return Err(SrtpError::TooShort);
    }
    Ok(RtpHeader { seq, ssrc, len })
}

/// Checks the clear RTCP header of `pkt` and returns the sender SSRC.
pub(crate) fn parse_rtcp(pkt: &[u8]) -> Result<u32, SrtpError> {
    let h: &[u8; RTCP_CLEAR_LEN] = pkt
        .get(..RTCP_CLEAR_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(SrtpError::TooShort)?;
    if h[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    Ok(u32::from_be_bytes([h[4], h[5], h[6], h[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        // V=2, X=1, CC=2; seq 0x1234; ssrc 0xdeadbeef; 2 CSRCs; ext 0xBEDE with 1 word; payload 3.
        let mut p = vec![0x92, 0x60, 0x12, 0x34, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        p.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]);
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
        p.extend_from_slice(&[9, 9, 9]);
        p
    }

    #[test]
    fn parses_csrc_and_extension() {
        let p = sample();
        let h = parse_rtp(&p).unwrap();
        assert_eq!(
            h,
            RtpHeader {
                seq: 0x1234,
                ssrc: 0xdeadbeef,
                len: 28
            }
        );
        // Header exactly filling the packet is fine (empty payload).
        assert_eq!(parse_rtp(&p[..28]).unwrap().len, 28);
    }

    #[test]
    fn every_truncation_of_header_is_too_short() {
        let p = sample();
        for n in 0..28 {
            assert_eq!(parse_rtp(&p[..n]), Err(SrtpError::TooShort), "len {n}");
        }
    }

    #[test]
    fn bad_version_and_huge_extension() {
        let mut p = sample();
        p[0] = 0x52; // V=1
        assert_eq!(parse_rtp(&p), Err(SrtpError::Malformed));
        let mut p = sample();
        p[22] = 0xff;
        p[23] = 0xff; // extension length 65535 words
        assert_eq!(parse_rtp(&p), Err(SrtpError::TooShort));
        let mut p = vec![0x8f; 12];
        p[0] = 0x8f; // CC = 15, nothing follows
        assert_eq!(parse_rtp(&p), Err(SrtpError::TooShort));
    }

    #[test]
    fn rtcp_header() {
        let p = [0x81, 0xc8, 0, 6, 1, 2, 3, 4];
        assert_eq!(parse_rtcp(&p), Ok(0x01020304));
        for n in 0..8 {
            assert_eq!(parse_rtcp(&p[..n]), Err(SrtpError::TooShort));
        }
        assert_eq!(
            parse_rtcp(&[0x41, 0xc8, 0, 6, 1, 2, 3, 4]),
            Err(SrtpError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(h) = parse_rtp(&b) {
                prop_assert!(h.len <= b.len());
            }
            let _ = parse_rtcp(&b);
        }
    }
}
