//! Limits enforced on untrusted SDP text *before* it reaches a parser (RELIABILITY D3), and the
//! byte-level checks that make the rest of negotiation safe to echo offered values into an answer.

use super::SdpError;

/// Largest SDP offer (or sdpfrag) body accepted, in bytes. Default 64 KiB; a Chromium offer with
/// simulcast and every codec is ~6 KiB. Bounds the parse work and the parsed tree (the tree holds
/// each byte at most a few times, so worst case well under 1 MiB per request).
pub const MAX_SDP_BYTES: usize = 64 * 1024;

/// Most lines in one SDP body. Default 2000 (Chromium's full offer: ~150). Bounds the number of
/// attributes the parser allocates (Janus OSS-Fuzz "huge SDP" exhaustion); with the byte limit the
/// worst case is 2000 small `String`s, ~100 KiB.
pub const MAX_SDP_LINES: usize = 2000;

/// Most `m=` sections in one offer. Default 34: an ILS subscriber's receive slots (at most 25
/// video + 8 audio, ils-session's `MAX_VIDEO_SLOTS`/`MAX_AUDIO_SLOTS`) plus one data channel; a
/// publisher sends 1 audio + 1 video. Bounds the per-section work (codec choice, answer size)
/// and the media list handed to the room (≈ 1 KiB per section).
pub const MAX_MEDIA_SECTIONS: usize = 34;

/// Longest single SDP line in bytes (without the line ending). Default 4096 (the longest real line,
/// Chromium's video `m=` line, is ~100 bytes). Bounds a hostile 64 KiB attribute value.
pub const MAX_LINE_BYTES: usize = 4096;

/// Longest `a=mid` value accepted, in bytes. Default 16 = `ils_shm::MAX_SHORT_STR`, the engine's
/// TrackSpec `mid` field (browsers use "0", "1", ...).
pub const MAX_MID_LEN: usize = ils_shm::MAX_SHORT_STR;

/// Longest `a=rid` id accepted, in bytes. Default 16 = `ils_shm::MAX_SHORT_STR`, the engine's
/// encoding `rid` field (browsers use "q", "h", "f" or "0", "1", "2").
pub const MAX_RID_LEN: usize = ils_shm::MAX_SHORT_STR;

/// Most simulcast layers accepted from a publisher; further `a=simulcast` streams are left out of
/// the answer (RFC 8853 lets the answerer drop streams). Default 3 = `ils_shm::MAX_ENCODINGS`.
pub const MAX_SIMULCAST_LAYERS: usize = ils_shm::MAX_ENCODINGS;

/// Most distinct SSRCs signalled (`a=ssrc`) on one m-line. Default 16 (legacy simulcast with RTX
/// needs 6). More gives 400: bounds the per-track SSRC list (engine: 32 SSRCs per transport).
pub const MAX_SSRCS_PER_MEDIA: usize = 16;

/// Most distinct `a=rtcp-fb` values per payload type (including `*` ones). Default 32 (Chromium
/// sends 5). More gives 400: bounds the quadratic de-duplication work a hostile offer could cause
/// with thousands of wildcard lines.
pub const MAX_RTCP_FB_PER_CODEC: usize = 32;

/// Most `a=rid` lines per m-line. Default 16 (a simulcast publisher sends 3). More gives 400.
pub const MAX_RIDS_PER_MEDIA: usize = 16;

/// Remote ICE ufrag length range accepted, in characters. RFC 8839 allows 4..=256; the upper
/// bound 32 = `ils_shm::MAX_UFRAG_LEN` (browsers send 4 to 16).
pub const ICE_UFRAG_LEN: std::ops::RangeInclusive<usize> = 4..=ils_shm::MAX_UFRAG_LEN;

/// Remote ICE password length range accepted, in characters. RFC 8839 allows 22..=256; the upper
/// bound 64 = `ils_shm::MAX_PWD_LEN` (browsers send 22 to 32).
pub const ICE_PWD_LEN: std::ops::RangeInclusive<usize> = 22..=ils_shm::MAX_PWD_LEN;

/// Most candidates taken from one trickle sdpfrag (RFC 8840). Default 64; bounds the returned list
/// (an ICE-lite server only logs them).
pub const MAX_FRAG_CANDIDATES: usize = 64;

/// Longest error reason returned to a client, in bytes (the reason can echo offered text).
pub const MAX_REASON_LEN: usize = 200;

/// Checks size, line count, line length, m-line count and characters of an SDP body before any
/// parsing. Rejects control characters other than CR (only as part of CRLF), LF and TAB, so that no
/// offered value can smuggle a line break into our answer.
pub fn precheck(sdp: &str) -> Result<(), SdpError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(SdpError::bad(format!(
            "SDP is {} bytes; limit {MAX_SDP_BYTES}",
            sdp.len()
        )));
    }
    let mut lines = 0usize;
    let mut m_lines = 0usize;
    for (i, line) in sdp.lines().enumerate() {
        lines += 1;
        if lines > MAX_SDP_LINES {
            return Err(SdpError::bad(format!(
                "SDP has {} lines; limit {MAX_SDP_LINES}",
                sdp.lines().count()
            )));
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(SdpError::bad(format!(
                "SDP line {} is {} bytes; limit {MAX_LINE_BYTES}",
                i + 1,
                line.len()
            )));
        }
        if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(SdpError::bad(format!(
                "SDP line {} contains control character U+{:04X}",
                i + 1,
                u32::from(c)
            )));
        }
        if line.starts_with("m=") {
            m_lines += 1;
            if m_lines > MAX_MEDIA_SECTIONS {
                let total = sdp.lines().filter(|l| l.starts_with("m=")).count();
                return Err(SdpError::bad(format!(
                    "SDP has {total} m-lines; limit {MAX_MEDIA_SECTIONS}"
                )));
            }
        }
    }
    Ok(())
}

/// RFC 4566 `token` characters (used for mids).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'{'
                        | b'|'
                        | b'}'
                        | b'~'
                )
        })
}

/// RFC 8851 `rid-id` = 1*(alpha-numeric / "-" / "_").
pub fn is_rid(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 8839 `ice-char` = ALPHA / DIGIT / "+" / "/".
pub fn is_ice_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Validates a remote ICE ufrag/pwd pair (characters and lengths).
pub fn check_ice_creds(ufrag: &str, pwd: &str) -> Result<(), SdpError> {
    if !is_ice_chars(ufrag) || !ICE_UFRAG_LEN.contains(&ufrag.len()) {
        return Err(SdpError::bad(format!(
            "malformed a=ice-ufrag ({} chars; need {}..={} ice-chars)",
            ufrag.len(),
            ICE_UFRAG_LEN.start(),
            ICE_UFRAG_LEN.end()
        )));
    }
    if !is_ice_chars(pwd) || !ICE_PWD_LEN.contains(&pwd.len()) {
        return Err(SdpError::bad(format!(
            "malformed a=ice-pwd ({} chars; need {}..={} ice-chars)",
            pwd.len(),
            ICE_PWD_LEN.start(),
            ICE_PWD_LEN.end()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_small() {
        assert!(precheck("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n").is_ok());
        assert!(precheck("").is_ok());
    }

    #[test]
    fn too_many_bytes() {
        let s = "a=x\r\n".repeat(MAX_SDP_BYTES / 5 + 1);
        let e = precheck(&s).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.reason.contains("bytes; limit 65536"), "{}", e.reason);
    }

    #[test]
    fn too_many_lines_reports_count() {
        let s = "a=x\r\n".repeat(2500);
        let e = precheck(&s).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.reason, "SDP has 2500 lines; limit 2000");
        // exactly the limit passes
        assert!(precheck(&"a=x\r\n".repeat(MAX_SDP_LINES)).is_ok());
        assert!(precheck(&"a=x\n".repeat(MAX_SDP_LINES)).is_ok());
    }

    #[test]
    fn long_line() {
        let s = format!("v=0\r\na={}\r\n", "x".repeat(MAX_LINE_BYTES));
        let e = precheck(&s).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.reason.starts_with("SDP line 2 is 4098 bytes"),
            "{}",
            e.reason
        );
        let ok = format!("v=0\r\na{}\r\n", "x".repeat(MAX_LINE_BYTES - 1));
        assert!(precheck(&ok).is_ok());
    }

    #[test]
    fn too_many_m_lines() {
        let s = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".repeat(MAX_MEDIA_SECTIONS + 1);
        let e = precheck(&s).unwrap_err();
        assert_eq!(e.reason, "SDP has 35 m-lines; limit 34");
        let s = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".repeat(MAX_MEDIA_SECTIONS);
        assert!(precheck(&s).is_ok());
    }

    #[test]
    fn control_chars() {
        for bad in ["a=mid:0\rfoo\r\n", "a=x\0\r\n", "a=\x1b[0m\n"] {
            let e = precheck(bad).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.reason.contains("control character"), "{}", e.reason);
        }
        assert!(precheck("a=fmtp:96 x=1;\ty=2\r\n").is_ok());
    }

    #[test]
    fn charsets() {
        assert!(is_token("0") && is_token("audio-1") && !is_token("a b") && !is_token(""));
        assert!(is_rid("q") && is_rid("lo_1-x") && !is_rid("~q") && !is_rid(""));
        assert!(check_ice_creds("jKkx", "i/pUd4H+WCGn/Qqe3A0rqESZ").is_ok());
        assert!(check_ice_creds("abc", "i/pUd4H+WCGn/Qqe3A0rqESZ").is_err());
        assert!(check_ice_creds("ab:c", "i/pUd4H+WCGn/Qqe3A0rqESZ").is_err());
        assert!(check_ice_creds("abcd", "short").is_err());
        assert!(check_ice_creds(&"a".repeat(33), "i/pUd4H+WCGn/Qqe3A0rqESZ").is_err());
    }
}
