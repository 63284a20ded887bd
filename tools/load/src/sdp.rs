//! SDP for the load endpoints: offers shaped like Chromium's (BUNDLE, mid/rid/transport-cc/
//! abs-send-time extmaps, Opus + VP8 + RTX, rid q/h/f simulcast for publishers, recvonly for
//! viewers) and a bounded parser for the answers.

use std::net::{IpAddr, SocketAddr};

/// Largest answer accepted, in bytes. Default 64 KiB (control's own offer limit); bounds the
/// memory a hostile server can make one endpoint hold.
pub const MAX_ANSWER_LEN: usize = 64 * 1024;
/// Most m-lines read from an answer. Default 34 (control's subscriber limit: 25 video + 8 audio
/// slots + 1); bounds per-answer state.
pub const MAX_MEDIA: usize = 34;
/// Most SSRC / rtpmap / extmap entries kept per m-line. Default 64.
pub const MAX_ENTRIES_PER_MEDIA: usize = 64;

/// Extension id of `urn:ietf:params:rtp-hdrext:ssrc-audio-level` in our offers (Chromium's).
pub const EXT_AUDIO_LEVEL: u8 = 1;
/// Extension id of abs-send-time in our offers.
pub const EXT_ABS_SEND_TIME: u8 = 2;
/// Extension id of transport-wide-cc in our offers.
pub const EXT_TWCC: u8 = 3;
/// Extension id of `sdes:mid` in our offers.
pub const EXT_MID: u8 = 4;
/// Extension id of `sdes:rtp-stream-id` (rid) in our offers.
pub const EXT_RID: u8 = 10;
/// Extension id of `sdes:repaired-rtp-stream-id` in our offers.
pub const EXT_RRID: u8 = 11;

/// Payload type of Opus in our offers.
pub const PT_OPUS: u8 = 111;
/// Payload type of VP8 in our offers.
pub const PT_VP8: u8 = 96;
/// Payload type of VP8's RTX in our offers.
pub const PT_VP8_RTX: u8 = 97;

/// URI of the transport-wide-cc extension.
pub const URI_TWCC: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
/// URI of the abs-send-time extension.
pub const URI_ABS_SEND_TIME: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
/// URI of the mid extension.
pub const URI_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// URI of the rid extension.
pub const URI_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// Simulcast rids, lowest first (Chromium's names).
pub const RIDS: [&str; 3] = ["q", "h", "f"];

/// Local ICE/DTLS parameters for one offer.
#[derive(Debug, Clone)]
pub struct OfferParams {
    /// ICE ufrag (4..=32 ice-chars).
    pub ufrag: String,
    /// ICE password (22..=64 ice-chars).
    pub pwd: String,
    /// "AB:CD:..." SHA-256 fingerprint of our DTLS certificate.
    pub fingerprint: String,
    /// Our socket address (announced as the host candidate).
    pub addr: SocketAddr,
    /// Random 64-bit session id.
    pub session_id: u64,
    /// msid stream id.
    pub stream_id: String,
}

fn session_head(p: &OfferParams, mids: &str) -> String {
    format!(
        "v=0\r\no=- {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {mids}\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS {}\r\n",
        p.session_id, p.stream_id
    )
}

fn transport_lines(p: &OfferParams, first: bool) -> String {
    let ip = p.addr.ip();
    let port = p.addr.port();
    let mut s = format!("c=IN IP4 {ip}\r\na=rtcp:9 IN IP4 0.0.0.0\r\n");
    if first {
        s.push_str(&format!(
            "a=candidate:2222914159 1 udp 2122260223 {ip} {port} typ host generation 0 network-id 1 network-cost 50\r\n"
        ));
    }
    s.push_str(&format!(
        "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=ice-options:trickle\r\na=fingerprint:sha-256 {}\r\na=setup:actpass\r\n",
        p.ufrag, p.pwd, p.fingerprint
    ));
    s
}

fn audio_section(p: &OfferParams, dir: &str, first: bool, ssrc: Option<u32>, mid: &str) -> String {
    let port = if first { p.addr.port() } else { 9 };
    let mut s = format!("m=audio {port} UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n");
    s.push_str(&transport_lines(p, first));
    s.push_str(&format!("a=mid:{mid}\r\n"));
    s.push_str(&format!(
        "a=extmap:{EXT_AUDIO_LEVEL} urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:{EXT_ABS_SEND_TIME} {URI_ABS_SEND_TIME}\r\na=extmap:{EXT_TWCC} {URI_TWCC}\r\na=extmap:{EXT_MID} {URI_MID}\r\n"
    ));
    s.push_str(&format!("a={dir}\r\n"));
    if dir == "sendonly" {
        s.push_str(&format!("a=msid:{} a-{}\r\n", p.stream_id, p.ufrag));
    }
    s.push_str("a=rtcp-mux\r\na=rtcp-rsize\r\n");
    s.push_str("a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n");
    s.push_str("a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n");
    if let Some(ssrc) = ssrc {
        s.push_str(&format!(
            "a=ssrc:{ssrc} cname:{}\r\na=ssrc:{ssrc} msid:{} a-{}\r\n",
            p.ufrag, p.stream_id, p.ufrag
        ));
    }
    s
}

fn video_section(p: &OfferParams, dir: &str, first: bool, simulcast: bool, mid: &str) -> String {
    let port = if first { p.addr.port() } else { 9 };
    let mut s = format!("m=video {port} UDP/TLS/RTP/SAVPF 96 97 108 109 98 99\r\n");
    s.push_str(&transport_lines(p, first));
    s.push_str(&format!("a=mid:{mid}\r\n"));
    s.push_str(&format!(
        "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\na=extmap:{EXT_ABS_SEND_TIME} {URI_ABS_SEND_TIME}\r\na=extmap:13 urn:3gpp:video-orientation\r\na=extmap:{EXT_TWCC} {URI_TWCC}\r\na=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\na=extmap:{EXT_MID} {URI_MID}\r\na=extmap:{EXT_RID} {URI_RID}\r\na=extmap:{EXT_RRID} urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n"
    ));
    s.push_str(&format!("a={dir}\r\n"));
    if dir == "sendonly" {
        s.push_str(&format!("a=msid:{} v-{}\r\n", p.stream_id, p.ufrag));
    }
    s.push_str("a=rtcp-mux\r\na=rtcp-rsize\r\n");
    for (pt, rtx, name, fmtp) in [
        (96u8, 97u8, "VP8", None),
        (
            108,
            109,
            "H264",
            Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
        ),
        (98, 99, "VP9", Some("profile-id=0")),
    ] {
        s.push_str(&format!("a=rtpmap:{pt} {name}/90000\r\n"));
        for fb in ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"] {
            s.push_str(&format!("a=rtcp-fb:{pt} {fb}\r\n"));
        }
        if let Some(f) = fmtp {
            s.push_str(&format!("a=fmtp:{pt} {f}\r\n"));
        }
        s.push_str(&format!(
            "a=rtpmap:{rtx} rtx/90000\r\na=fmtp:{rtx} apt={pt}\r\n"
        ));
    }
    if simulcast {
        for r in RIDS {
            s.push_str(&format!("a=rid:{r} send\r\n"));
        }
        s.push_str("a=simulcast:send q;h;f\r\n");
    }
    s
}

/// A publisher (WHIP) offer: sendonly Opus (SSRC signalled, as Chromium does) and, when
/// `video`, sendonly VP8 with rid q/h/f simulcast (SSRCs learned by the server from mid/rid).
pub fn publisher_offer(p: &OfferParams, audio_ssrc: u32, video: bool) -> String {
    let mut s = session_head(p, if video { "0 1" } else { "0" });
    s.push_str(&audio_section(p, "sendonly", true, Some(audio_ssrc), "0"));
    if video {
        s.push_str(&video_section(p, "sendonly", false, true, "1"));
    }
    s
}

/// A viewer (WHEP) offer: recvonly audio and, when `video`, recvonly video.
pub fn viewer_offer(p: &OfferParams, video: bool) -> String {
    let mut s = session_head(p, if video { "0 1" } else { "0" });
    s.push_str(&audio_section(p, "recvonly", true, None, "0"));
    if video {
        s.push_str(&video_section(p, "recvonly", false, false, "1"));
    }
    s
}

/// A receive-only offer with fixed slots for `/ws` `subscribe` (docs/protocol.md): `video`
/// recvonly VP8 m-lines (mids `0..video`) then `audio` recvonly Opus m-lines, all BUNDLEd, as
/// Chromium offers them for an ILS viewer's slots.
pub fn subscriber_offer(p: &OfferParams, video: usize, audio: usize) -> String {
    let mids: Vec<String> = (0..video + audio).map(|i| i.to_string()).collect();
    let mut s = session_head(p, &mids.join(" "));
    for (i, mid) in mids.iter().enumerate() {
        if i < video {
            s.push_str(&video_section(p, "recvonly", i == 0, false, mid));
        } else {
            s.push_str(&audio_section(p, "recvonly", i == 0, None, mid));
        }
    }
    s
}

/// Why an answer was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Larger than [`MAX_ANSWER_LEN`].
    #[error("answer larger than {MAX_ANSWER_LEN} bytes")]
    TooLarge,
    /// No `a=ice-ufrag`.
    #[error("answer has no a=ice-ufrag")]
    NoUfrag,
    /// No `a=ice-pwd`.
    #[error("answer has no a=ice-pwd")]
    NoPwd,
    /// No `a=fingerprint:sha-256`.
    #[error("answer has no sha-256 fingerprint")]
    NoFingerprint,
    /// No usable UDP host candidate.
    #[error("answer has no UDP candidate")]
    NoCandidate,
    /// More than [`MAX_MEDIA`] m-lines.
    #[error("answer has more than {MAX_MEDIA} m-lines")]
    TooManyMedia,
}

/// One answered m-line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaAnswer {
    /// "audio" or "video".
    pub kind: String,
    /// Port (0 = rejected).
    pub port: u16,
    /// a=mid value.
    pub mid: String,
    /// Payload types in m-line order (the first is the selected codec).
    pub pts: Vec<u8>,
    /// (pt, encoding name) from a=rtpmap.
    pub rtpmap: Vec<(u8, String)>,
    /// (rtx pt, apt) from a=fmtp apt=.
    pub rtx_apt: Vec<(u8, u8)>,
    /// (id, uri) from a=extmap.
    pub extmap: Vec<(u8, String)>,
    /// SSRCs from a=ssrc (deduplicated, in order).
    pub ssrcs: Vec<u32>,
    /// (media, rtx) from a=ssrc-group:FID.
    pub fid: Vec<(u32, u32)>,
}

impl MediaAnswer {
    /// Extension id negotiated for `uri`.
    pub fn ext_id(&self, uri: &str) -> Option<u8> {
        self.extmap.iter().find(|(_, u)| u == uri).map(|(i, _)| *i)
    }

    /// Payload type of the codec `name` (case-insensitive).
    pub fn pt_of(&self, name: &str) -> Option<u8> {
        self.rtpmap
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(p, _)| *p)
    }

    /// RTX payload type whose apt is `pt`.
    pub fn rtx_for(&self, pt: u8) -> Option<u8> {
        self.rtx_apt.iter().find(|(_, a)| *a == pt).map(|(r, _)| *r)
    }

    /// Media SSRC (the first of a FID group, else the first SSRC) and its RTX SSRC.
    pub fn media_ssrc(&self) -> Option<(u32, Option<u32>)> {
        if let Some((m, r)) = self.fid.first() {
            return Some((*m, Some(*r)));
        }
        self.ssrcs.first().map(|s| (*s, None))
    }
}

/// The parts of an answer the load endpoints need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Server ICE ufrag.
    pub ufrag: String,
    /// Server ICE password.
    pub pwd: String,
    /// Server DTLS fingerprint ("AB:CD:...").
    pub fingerprint: String,
    /// First UDP candidate.
    pub candidate: SocketAddr,
    /// The m-lines in order.
    pub media: Vec<MediaAnswer>,
}

impl Answer {
    /// The first m-line of `kind` with a non-zero port.
    pub fn media_of(&self, kind: &str) -> Option<&MediaAnswer> {
        self.media.iter().find(|m| m.kind == kind && m.port != 0)
    }
}

fn parse_candidate(v: &str) -> Option<SocketAddr> {
    // foundation component transport priority ip port typ type ...
    let f: Vec<&str> = v.split_ascii_whitespace().take(8).collect();
    if f.len() < 8 || !f[2].eq_ignore_ascii_case("udp") || f[6] != "typ" {
        return None;
    }
    let ip: IpAddr = f[4].parse().ok()?;
    let port: u16 = f[5].parse().ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}

fn push_bounded<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if v.len() < MAX_ENTRIES_PER_MEDIA && !v.contains(&x) {
        v.push(x);
    }
}

/// Parse an SDP answer (bounded; never panics).
pub fn parse_answer(sdp: &str) -> Result<Answer, SdpError> {
    if sdp.len() > MAX_ANSWER_LEN {
        return Err(SdpError::TooLarge);
    }
    let (mut ufrag, mut pwd, mut fp, mut cand) = (None, None, None, None);
    let mut media: Vec<MediaAnswer> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            if media.len() >= MAX_MEDIA {
                return Err(SdpError::TooManyMedia);
            }
            let mut f = m.split_ascii_whitespace();
            let kind = f.next().unwrap_or("").to_owned();
            let port = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let _proto = f.next();
            let pts = f
                .filter_map(|p| p.parse().ok())
                .take(MAX_ENTRIES_PER_MEDIA)
                .collect();
            media.push(MediaAnswer {
                kind,
                port,
                pts,
                ..Default::default()
            });
            continue;
        }
        let Some(attr) = line.strip_prefix("a=") else {
            continue;
        };
        let (key, val) = attr.split_once(':').unwrap_or((attr, ""));
        match key {
            "ice-ufrag" => ufrag = Some(val.trim().to_owned()),
            "ice-pwd" => pwd = Some(val.trim().to_owned()),
            "fingerprint" => {
                if let Some((alg, v)) = val.trim().split_once(' ') {
                    if alg.eq_ignore_ascii_case("sha-256") {
                        fp = Some(v.trim().to_owned());
                    }
                }
            }
            "candidate" if cand.is_none() => cand = parse_candidate(val),
            _ => {}
        }
        let Some(m) = media.last_mut() else { continue };
        match key {
            "mid" => m.mid = val.trim().to_owned(),
            "rtpmap" => {
                if let Some((pt, rest)) = val.split_once(' ') {
                    if let Ok(pt) = pt.parse::<u8>() {
                        let name = rest.split('/').next().unwrap_or("").to_owned();
                        push_bounded(&mut m.rtpmap, (pt, name));
                    }
                }
            }
            "fmtp" => {
                if let Some((pt, rest)) = val.split_once(' ') {
                    let apt = rest
                        .split(';')
                        .find_map(|kv| kv.trim().strip_prefix("apt="))
                        .and_then(|a| a.parse::<u8>().ok());
                    if let (Ok(pt), Some(apt)) = (pt.parse::<u8>(), apt) {
                        push_bounded(&mut m.rtx_apt, (pt, apt));
                    }
                }
            }
            "extmap" => {
                if let Some((id, uri)) = val.split_once(' ') {
                    let id = id.split('/').next().unwrap_or("");
                    if let Ok(id) = id.parse::<u8>() {
                        let uri = uri.split_ascii_whitespace().next().unwrap_or("").to_owned();
                        push_bounded(&mut m.extmap, (id, uri));
                    }
                }
            }
            "ssrc" => {
                if let Some(s) = val.split(' ').next().and_then(|s| s.parse::<u32>().ok()) {
                    push_bounded(&mut m.ssrcs, s);
                }
            }
            "ssrc-group" => {
                let mut f = val.split_ascii_whitespace();
                if f.next() == Some("FID") {
                    let a = f.next().and_then(|s| s.parse::<u32>().ok());
                    let b = f.next().and_then(|s| s.parse::<u32>().ok());
                    if let (Some(a), Some(b)) = (a, b) {
                        push_bounded(&mut m.fid, (a, b));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Answer {
        ufrag: ufrag.filter(|u| !u.is_empty()).ok_or(SdpError::NoUfrag)?,
        pwd: pwd.filter(|p| !p.is_empty()).ok_or(SdpError::NoPwd)?,
        fingerprint: fp.ok_or(SdpError::NoFingerprint)?,
        candidate: cand.ok_or(SdpError::NoCandidate)?,
        media,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> OfferParams {
        OfferParams {
            ufrag: "abcd".into(),
            pwd: "0123456789012345678901".into(),
            fingerprint: "AA:BB".into(),
            addr: "127.0.0.1:5000".parse().unwrap(),
            session_id: 7,
            stream_id: "s".into(),
        }
    }

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\na=group:BUNDLE 0 1\r\n\
m=audio 40000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\na=ice-ufrag:srvu\r\na=ice-pwd:serverpassword0123456789\r\n\
a=fingerprint:sha-256 01:02\r\na=setup:passive\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
a=ssrc:1001 cname:ils\r\n\
m=video 40000 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=ssrc-group:FID 1002 1003\r\na=ssrc:1002 cname:ils\r\na=ssrc:1003 cname:ils\r\n";

    #[test]
    fn offers_look_like_chromium() {
        let p = params();
        let o = publisher_offer(&p, 42, true);
        for needle in [
            "a=group:BUNDLE 0 1",
            "a=rid:q send",
            "a=simulcast:send q;h;f",
            "a=rtpmap:111 opus/48000/2",
            "a=rtpmap:96 VP8/90000",
            "a=fmtp:97 apt=96",
            URI_TWCC,
            URI_RID,
            "a=ssrc:42 cname:abcd",
            "a=candidate:",
            "a=setup:actpass",
            "a=sendonly",
        ] {
            assert!(o.contains(needle), "{needle} missing");
        }
        let v = viewer_offer(&p, true);
        assert_eq!(v.matches("a=recvonly").count(), 2);
        assert!(!v.contains("a=simulcast"));
        assert!(!viewer_offer(&p, false).contains("m=video"));
        // every line is CRLF-terminated
        assert!(v.ends_with("\r\n"));
    }

    #[test]
    fn parses_answer() {
        let a = parse_answer(ANSWER).unwrap();
        assert_eq!(a.ufrag, "srvu");
        assert_eq!(a.pwd, "serverpassword0123456789");
        assert_eq!(a.fingerprint, "01:02");
        assert_eq!(a.candidate, "127.0.0.1:40000".parse().unwrap());
        let au = a.media_of("audio").unwrap();
        assert_eq!(au.media_ssrc(), Some((1001, None)));
        assert_eq!(au.ext_id(URI_TWCC), Some(3));
        assert_eq!(au.pt_of("opus"), Some(111));
        let v = a.media_of("video").unwrap();
        assert_eq!(v.media_ssrc(), Some((1002, Some(1003))));
        assert_eq!(v.pt_of("vp8"), Some(96));
        assert_eq!(v.rtx_for(96), Some(97));
        assert_eq!(v.mid, "1");
    }

    #[test]
    fn missing_fields_are_errors() {
        assert_eq!(parse_answer(""), Err(SdpError::NoUfrag));
        let no_cand = ANSWER.replace("a=candidate:", "a=xcandidate:");
        assert_eq!(parse_answer(&no_cand), Err(SdpError::NoCandidate));
        let big = "a".repeat(MAX_ANSWER_LEN + 1);
        assert_eq!(parse_answer(&big), Err(SdpError::TooLarge));
        let many = "m=audio 1 x 0\r\n".repeat(MAX_MEDIA + 1);
        assert_eq!(parse_answer(&many), Err(SdpError::TooManyMedia));
        for n in 0..ANSWER.len() {
            if ANSWER.is_char_boundary(n) {
                let _ = parse_answer(&ANSWER[..n]);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,2000}") {
            let _ = parse_answer(&s);
        }
        #[test]
        fn arbitrary_lines_never_panic(lines in proptest::collection::vec("(a=|m=)[a-z0-9:/ =;-]{0,40}", 0..50)) {
            let _ = parse_answer(&lines.join("\r\n"));
        }
    }
}
