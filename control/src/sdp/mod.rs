//! Sans-IO SDP negotiation for WHIP (publish, RFC 9725) and WHEP (view).
//!
//! Offers are untrusted: [`limits::precheck`] bounds size, lines, line length and m-lines before the
//! webrtc-rs `sdp` parser runs (RELIABILITY D3), and every offered value we echo into an answer
//! (mid, rid, fmtp, ...) is validated first.
//!
//! What we answer (max-bundle, ICE-lite, DTLS server):
//! * session: `a=group:BUNDLE` with the accepted mids (when the offer bundles), `a=ice-lite`,
//!   `a=msid-semantic: WMS`, and `a=extmap-allow-mixed` when offered;
//! * per accepted m-line: port 9 + `c=IN IP4 0.0.0.0`, our single host candidate and
//!   `a=end-of-candidates`, ICE credentials, our sha-256 fingerprint, `a=setup:passive`,
//!   `a=rtcp-mux` (required), `a=rtcp-rsize` when offered, ONE codec (payload type, rtpmap and fmtp
//!   kept as offered) with its RTX when offered, the rtcp-fb subset nack / nack pli / ccm fir /
//!   transport-cc, and the supported header extensions with the offered ids;
//! * publish: direction `recvonly`, simulcast as `a=rid:<r> recv` + `a=simulcast:recv` (at most
//!   [`limits::MAX_SIMULCAST_LAYERS`] rids, offered order);
//! * view: direction `sendonly`, our SSRCs (`a=ssrc` cname/msid, `a=ssrc-group:FID` with RTX).
//!   Viewers are answered without the `sdes:mid`, `rtp-stream-id` and `repaired-rtp-stream-id`
//!   extensions: the engine rewrites extension ids, not values, so forwarding the publisher's
//!   mid/rid values would misroute packets in the viewer's demuxer (it demuxes by our signalled
//!   SSRCs instead).
//! * rejected m-lines (unsupported kind, no common codec, wrong direction, not bundled) get port 0
//!   and `a=mid` only; when nothing is usable the whole offer fails.

mod answer;
mod frag;
pub mod limits;
mod offer;

pub use answer::{answer_publish, answer_view};
pub use frag::{parse_sdpfrag, SdpFrag};

/// A refused offer: HTTP status and a one-line reason for the response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct SdpError {
    /// 400 malformed / over limits, 406 no common codec / unsupported transport, 422 semantically
    /// unusable (wrong direction, we-are-passive conflict), 500 our own parameters are unusable.
    pub status: u16,
    /// One line (no control characters, at most [`limits::MAX_REASON_LEN`] bytes), e.g.
    /// "no common video codec: offered H265 only".
    pub reason: String,
}

impl SdpError {
    /// An error with `status`; the reason is made one line and truncated.
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        let mut r: String = reason
            .into()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if r.len() > limits::MAX_REASON_LEN {
            let mut cut = limits::MAX_REASON_LEN;
            while !r.is_char_boundary(cut) {
                cut -= 1;
            }
            r.truncate(cut);
        }
        SdpError { status, reason: r }
    }
    /// 400: malformed or over a limit.
    pub fn bad(reason: impl Into<String>) -> Self {
        Self::new(400, reason)
    }
    /// 406: nothing we can serve (codec, transport).
    pub fn unsupported(reason: impl Into<String>) -> Self {
        Self::new(406, reason)
    }
    /// 422: well-formed but semantically unusable.
    pub fn unusable(reason: impl Into<String>) -> Self {
        Self::new(422, reason)
    }
}

/// Media kind of an m-line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `m=audio`
    Audio,
    /// `m=video`
    Video,
}

impl Kind {
    /// "audio" / "video".
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }
}

/// Header-extension URIs we negotiate.
pub mod uri {
    /// RFC 8843 `sdes:mid`.
    pub const MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
    /// RFC 8852 `rtp-stream-id`.
    pub const RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
    /// RFC 8852 `repaired-rtp-stream-id`.
    pub const RRID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
    /// abs-send-time.
    pub const ABS_SEND_TIME: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
    /// transport-wide congestion control sequence number.
    pub const TWCC: &str =
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
    /// RFC 6464 audio level.
    pub const AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
    /// AV1 dependency descriptor.
    pub const DEPENDENCY_DESCRIPTOR: &str =
        "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";
    /// 3GPP coordination of video orientation.
    pub const VIDEO_ORIENTATION: &str = "urn:3gpp:video-orientation";
    /// RFC 5450 transmission time offset.
    pub const TOFFSET: &str = "urn:ietf:params:rtp-hdrext:toffset";
    /// playout-delay.
    pub const PLAYOUT_DELAY: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";
}

/// Header extension ids negotiated for one m-line (0 = not negotiated), by URI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtIds {
    /// [`uri::MID`]
    pub mid: u8,
    /// [`uri::RID`]
    pub rid: u8,
    /// [`uri::RRID`]
    pub rrid: u8,
    /// [`uri::ABS_SEND_TIME`]
    pub abs_send_time: u8,
    /// [`uri::TWCC`]
    pub twcc: u8,
    /// [`uri::AUDIO_LEVEL`]
    pub audio_level: u8,
    /// [`uri::DEPENDENCY_DESCRIPTOR`]
    pub dependency_descriptor: u8,
    /// [`uri::VIDEO_ORIENTATION`]
    pub video_orientation: u8,
    /// [`uri::TOFFSET`]
    pub toffset: u8,
    /// [`uri::PLAYOUT_DELAY`]
    pub playout_delay: u8,
}

impl ExtIds {
    /// Every supported URI with this side's id (0 = not negotiated), in a fixed order.
    pub fn entries(&self) -> [(&'static str, u8); 10] {
        [
            (uri::MID, self.mid),
            (uri::RID, self.rid),
            (uri::RRID, self.rrid),
            (uri::ABS_SEND_TIME, self.abs_send_time),
            (uri::TWCC, self.twcc),
            (uri::AUDIO_LEVEL, self.audio_level),
            (uri::DEPENDENCY_DESCRIPTOR, self.dependency_descriptor),
            (uri::VIDEO_ORIENTATION, self.video_orientation),
            (uri::TOFFSET, self.toffset),
            (uri::PLAYOUT_DELAY, self.playout_delay),
        ]
    }

    /// The field for `uri`, if we support it.
    pub fn slot_mut(&mut self, u: &str) -> Option<&mut u8> {
        Some(match u {
            uri::MID => &mut self.mid,
            uri::RID => &mut self.rid,
            uri::RRID => &mut self.rrid,
            uri::ABS_SEND_TIME => &mut self.abs_send_time,
            uri::TWCC => &mut self.twcc,
            uri::AUDIO_LEVEL => &mut self.audio_level,
            uri::DEPENDENCY_DESCRIPTOR => &mut self.dependency_descriptor,
            uri::VIDEO_ORIENTATION => &mut self.video_orientation,
            uri::TOFFSET => &mut self.toffset,
            uri::PLAYOUT_DELAY => &mut self.playout_delay,
            _ => return None,
        })
    }

    /// (publisher id, viewer id) pairs for every URI both sides negotiated (for
    /// `LegSpec.ext_map`; at most 10 <= `ils_shm::MAX_EXT_MAP` entries). Viewer answers never
    /// negotiate mid/rid/repaired-rid, so those pairs do not occur for real legs.
    pub fn map_to(&self, viewer: &ExtIds) -> Vec<(u8, u8)> {
        self.entries()
            .iter()
            .zip(viewer.entries().iter())
            .filter(|((_, p), (_, v))| *p != 0 && *v != 0)
            .map(|((_, p), (_, v))| (*p, *v))
            .collect()
    }
}

/// The codec chosen for an m-line (as offered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    /// Canonical name: "opus", "VP8", "VP9", "H264" or "AV1".
    pub name: String,
    /// Offered payload type.
    pub pt: u8,
    /// Clock rate (Hz).
    pub clock_rate: u32,
    /// Channels (audio).
    pub channels: Option<u16>,
    /// Offered fmtp parameters (after the payload type), kept verbatim.
    pub fmtp: Option<String>,
    /// Offered RTX payload type whose `apt` is `pt`, if any.
    pub rtx_pt: Option<u8>,
    /// rtcp-fb values answered (subset of nack, nack pli, ccm fir, transport-cc).
    pub rtcp_fb: Vec<String>,
}

/// One accepted m-line.
#[derive(Debug, Clone)]
pub struct MediaInfo {
    /// The offered mid.
    pub mid: String,
    /// Audio or video.
    pub kind: Kind,
    /// The one codec chosen.
    pub codec: Codec,
    /// Negotiated extension ids (this peer's ids).
    pub ext: ExtIds,
    /// Publisher: rids in a=simulcast send order (empty = no simulcast).
    pub rids: Vec<String>,
    /// Publisher: offered SSRCs (media, rtx) when a=ssrc / ssrc-group FID given.
    pub ssrcs: Vec<(u32, Option<u32>)>,
    /// Viewer: the SSRC we send on this m-line.
    pub send_ssrc: Option<u32>,
    /// Viewer: our RTX SSRC when RTX is negotiated.
    pub send_rtx_ssrc: Option<u32>,
}

/// Our side of the session.
#[derive(Debug, Clone)]
pub struct LocalParams {
    /// Our ICE ufrag (ice-chars).
    pub ice_ufrag: String,
    /// Our ICE password (ice-chars).
    pub ice_pwd: String,
    /// SHA-256 fingerprint of our DTLS certificate, "AB:CD:..".
    pub fingerprint_sha256: String,
    /// The engine shard's media address advertised as the only candidate.
    pub candidate: std::net::SocketAddr,
    /// RTCP CNAME for the SSRCs we send (viewers).
    pub cname: String,
}

/// The result of a successful negotiation.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// The SDP answer (CRLF lines).
    pub answer: String,
    /// The offerer's ICE ufrag.
    pub remote_ufrag: String,
    /// The offerer's ICE password.
    pub remote_pwd: String,
    /// "sha-256 AB:CD:.." (upper-case hex); only sha-256 is accepted.
    pub remote_fingerprint: String,
    /// Accepted m-lines in offer order (rejected ones are not listed).
    pub media: Vec<MediaInfo>,
}

/// Codec names to try first per kind (case-insensitive); then our default order (video VP8, VP9,
/// H264, AV1; audio opus).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preferences {
    /// e.g. `["H264"]` when the room's publisher sends H264.
    pub video: Vec<String>,
    /// e.g. `["opus"]`.
    pub audio: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reason_is_one_bounded_line() {
        let e = SdpError::bad(format!("a\r\nb{}", "é".repeat(300)));
        assert_eq!(e.status, 400);
        assert!(!e.reason.contains('\n') && !e.reason.contains('\r'));
        assert!(e.reason.len() <= limits::MAX_REASON_LEN);
        assert_eq!(e.to_string(), e.reason);
    }

    #[test]
    fn map_to_pairs_common_uris() {
        let p = ExtIds {
            mid: 4,
            rid: 10,
            abs_send_time: 2,
            twcc: 3,
            toffset: 14,
            ..Default::default()
        };
        let v = ExtIds {
            abs_send_time: 5,
            twcc: 7,
            playout_delay: 9,
            mid: 1,
            ..Default::default()
        };
        assert_eq!(p.map_to(&v), vec![(4, 1), (2, 5), (3, 7)]);
        assert!(p.map_to(&ExtIds::default()).is_empty());
        assert!(p.map_to(&v).len() <= ils_shm::MAX_EXT_MAP);
    }

    #[test]
    fn slot_mut_covers_entries() {
        let mut e = ExtIds::default();
        for (i, (u, _)) in ExtIds::default().entries().iter().enumerate() {
            *e.slot_mut(u).unwrap() = i as u8 + 1;
        }
        for (i, (_, id)) in e.entries().iter().enumerate() {
            assert_eq!(*id, i as u8 + 1);
        }
        assert!(e.slot_mut("urn:unknown").is_none());
    }
}
