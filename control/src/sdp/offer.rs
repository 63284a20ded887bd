//! The parsed view of an offer that negotiation needs: per m-line codecs, header extensions, ICE
//! credentials, fingerprints, direction, rids/simulcast and SSRCs. Built from the webrtc-rs `sdp`
//! crate's tree after [`super::limits::precheck`]; every field that ends up echoed in an answer is
//! validated here.

use std::io::Cursor;

use sdp::description::common::Attribute;
use sdp::description::media::MediaDescription;
use sdp::description::session::SessionDescription;

use super::limits::{
    is_rid, is_token, MAX_MID_LEN, MAX_RIDS_PER_MEDIA, MAX_RID_LEN, MAX_RTCP_FB_PER_CODEC,
    MAX_SIMULCAST_LAYERS, MAX_SSRCS_PER_MEDIA,
};
use super::{Kind, SdpError};

/// Offered media direction (RFC 3264); absent = sendrecv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Dir {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dir::SendRecv => "sendrecv",
            Dir::SendOnly => "sendonly",
            Dir::RecvOnly => "recvonly",
            Dir::Inactive => "inactive",
        }
    }
}

/// One `a=rtpmap` payload type with its `a=fmtp` and `a=rtcp-fb` lines.
#[derive(Debug, Clone)]
pub(crate) struct OfferedCodec {
    pub pt: u8,
    /// Encoding name as offered (case kept).
    pub name: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
    /// The rtpmap value after the payload type, as offered ("opus/48000/2").
    pub rtpmap: String,
    pub fmtp: Option<String>,
    /// rtcp-fb values for this pt (and for `*`), as offered, in order.
    pub rtcp_fb: Vec<String>,
}

impl OfferedCodec {
    /// Value of one `key=value` fmtp parameter.
    pub fn fmtp_param(&self, key: &str) -> Option<&str> {
        self.fmtp.as_deref()?.split(';').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
        })
    }
}

/// One offered `a=extmap`.
#[derive(Debug, Clone)]
pub(crate) struct OfferedExt {
    pub id: u8,
    pub uri: String,
    /// `a=extmap:<id>/<direction>`; None = sendrecv.
    pub dir: Option<Dir>,
}

/// One m-line of the offer.
#[derive(Debug, Clone)]
pub(crate) struct OfferMedia {
    /// `audio`, `video`, `application`, ...
    pub media: String,
    pub kind: Option<Kind>,
    /// Transport protocol joined with '/' (`UDP/TLS/RTP/SAVPF`).
    pub proto: String,
    pub protos: Vec<String>,
    pub formats: Vec<String>,
    pub port: isize,
    pub mid: String,
    pub dir: Dir,
    pub rtcp_mux: bool,
    pub rtcp_rsize: bool,
    /// `a=bundle-only` (port 0 then means "bundled", not "rejected").
    pub bundle_only: bool,
    pub setup: Option<String>,
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// (algorithm lower-case, value) pairs.
    pub fingerprints: Vec<(String, String)>,
    /// In `m=` format order (only payload types with an rtpmap).
    pub codecs: Vec<OfferedCodec>,
    pub exts: Vec<OfferedExt>,
    /// Simulcast send rids in a=simulcast order (declared by `a=rid:<id> send`), at most
    /// [`MAX_SIMULCAST_LAYERS`]; empty = no simulcast.
    pub simulcast_send: Vec<String>,
    /// Simulcast recv rids (a viewer asking for simulcast; unused but parsed for completeness).
    pub simulcast_recv_offered: bool,
    /// (media ssrc, rtx ssrc) from a=ssrc / a=ssrc-group:FID.
    pub ssrcs: Vec<(u32, Option<u32>)>,
}

/// The whole offer.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    pub media: Vec<OfferMedia>,
    /// mids of the first `a=group:BUNDLE`, if any.
    pub bundle: Option<Vec<String>>,
    pub extmap_allow_mixed: bool,
    pub session_ufrag: Option<String>,
    pub session_pwd: Option<String>,
    pub session_setup: Option<String>,
    pub session_fingerprints: Vec<(String, String)>,
}

fn attr<'a>(attrs: &'a [Attribute], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .map(|a| a.value.as_deref().unwrap_or(""))
}

fn fingerprints(attrs: &[Attribute]) -> Vec<(String, String)> {
    attrs
        .iter()
        .filter(|a| a.key == "fingerprint")
        .filter_map(|a| {
            let (alg, val) = a.value.as_deref()?.trim().split_once(' ')?;
            Some((alg.trim().to_ascii_lowercase(), val.trim().to_string()))
        })
        .collect()
}

fn parse_pt(s: &str, what: &str) -> Result<u8, SdpError> {
    match s.trim().parse::<u8>() {
        Ok(pt) if pt <= 127 => Ok(pt),
        _ => Err(SdpError::bad(format!(
            "malformed payload type \"{s}\" in {what}"
        ))),
    }
}

/// Parses and validates an offer (the caller has run the precheck).
pub(crate) fn parse(text: &str) -> Result<Offer, SdpError> {
    let sd = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| SdpError::bad(format!("malformed SDP: {e}")))?;
    let session_attrs = &sd.attributes;
    let bundle = session_attrs
        .iter()
        .filter(|a| a.key == "group")
        .filter_map(|a| a.value.as_deref())
        .find_map(|v| {
            let mut it = v.split_whitespace();
            (it.next() == Some("BUNDLE")).then(|| it.map(str::to_string).collect::<Vec<_>>())
        });
    let mut media = Vec::with_capacity(sd.media_descriptions.len());
    for (i, md) in sd.media_descriptions.iter().enumerate() {
        let m = parse_media(i, md)?;
        if media.iter().any(|o: &OfferMedia| o.mid == m.mid) {
            return Err(SdpError::bad(format!("duplicate mid \"{}\"", m.mid)));
        }
        media.push(m);
    }
    Ok(Offer {
        media,
        bundle,
        extmap_allow_mixed: session_attrs.iter().any(|a| a.key == "extmap-allow-mixed"),
        session_ufrag: attr(session_attrs, "ice-ufrag").map(str::to_string),
        session_pwd: attr(session_attrs, "ice-pwd").map(str::to_string),
        session_setup: attr(session_attrs, "setup").map(str::to_string),
        session_fingerprints: fingerprints(session_attrs),
    })
}

fn parse_media(index: usize, md: &MediaDescription) -> Result<OfferMedia, SdpError> {
    let attrs = &md.attributes;
    let name = &md.media_name;
    let kind = match name.media.as_str() {
        "audio" => Some(Kind::Audio),
        "video" => Some(Kind::Video),
        _ => None,
    };
    let mid = match attr(attrs, "mid") {
        Some(m) => m.trim().to_string(),
        None => return Err(SdpError::bad(format!("m-line {index} has no a=mid"))),
    };
    if !is_token(&mid) {
        return Err(SdpError::bad(format!(
            "m-line {index} has a malformed a=mid"
        )));
    }
    if mid.len() > MAX_MID_LEN {
        return Err(SdpError::unusable(format!(
            "mid \"{mid}\" is {} bytes; limit {MAX_MID_LEN}",
            mid.len()
        )));
    }
    let dir = if attr(attrs, "sendonly").is_some() {
        Dir::SendOnly
    } else if attr(attrs, "recvonly").is_some() {
        Dir::RecvOnly
    } else if attr(attrs, "inactive").is_some() {
        Dir::Inactive
    } else {
        Dir::SendRecv
    };
    let mut m = OfferMedia {
        media: name.media.clone(),
        kind,
        proto: name.protos.join("/"),
        protos: name.protos.clone(),
        formats: name.formats.clone(),
        port: name.port.value,
        mid,
        dir,
        rtcp_mux: attr(attrs, "rtcp-mux").is_some(),
        rtcp_rsize: attr(attrs, "rtcp-rsize").is_some(),
        bundle_only: attr(attrs, "bundle-only").is_some(),
        setup: attr(attrs, "setup").map(|s| s.trim().to_string()),
        ufrag: attr(attrs, "ice-ufrag").map(|s| s.trim().to_string()),
        pwd: attr(attrs, "ice-pwd").map(|s| s.trim().to_string()),
        fingerprints: fingerprints(attrs),
        codecs: Vec::new(),
        exts: Vec::new(),
        simulcast_send: Vec::new(),
        simulcast_recv_offered: false,
        ssrcs: Vec::new(),
    };
    if kind.is_none() {
        // Rejected anyway: only the mid matters.
        return Ok(m);
    }
    parse_codecs(&mut m, attrs)?;
    parse_exts(&mut m, attrs)?;
    parse_simulcast(&mut m, attrs)?;
    parse_ssrcs(&mut m, attrs)?;
    Ok(m)
}

fn parse_codecs(m: &mut OfferMedia, attrs: &[Attribute]) -> Result<(), SdpError> {
    let mut pts: Vec<u8> = Vec::with_capacity(m.formats.len());
    for f in &m.formats {
        let pt = parse_pt(f, "m= line")?;
        if !pts.contains(&pt) {
            pts.push(pt);
        }
    }
    let mut wildcard_fb: Vec<String> = Vec::new();
    for a in attrs {
        let v = a.value.as_deref().unwrap_or("").trim();
        match a.key.as_str() {
            "rtpmap" => {
                let (pt, enc) = v
                    .split_once(' ')
                    .ok_or_else(|| SdpError::bad("malformed a=rtpmap"))?;
                let pt = parse_pt(pt, "a=rtpmap")?;
                if !pts.contains(&pt) {
                    continue;
                }
                if m.codecs.iter().any(|c| c.pt == pt) {
                    return Err(SdpError::bad(format!(
                        "duplicate a=rtpmap for payload type {pt}"
                    )));
                }
                let enc = enc.trim();
                let mut parts = enc.split('/');
                let name = parts.next().unwrap_or("").trim();
                let clock = parts.next().and_then(|c| c.trim().parse::<u32>().ok());
                let channels = match parts.next() {
                    Some(c) => Some(
                        c.trim()
                            .parse::<u16>()
                            .map_err(|_| SdpError::bad("malformed a=rtpmap channels"))?,
                    ),
                    None => None,
                };
                let (Some(clock_rate), false) = (clock, name.is_empty()) else {
                    return Err(SdpError::bad("malformed a=rtpmap"));
                };
                m.codecs.push(OfferedCodec {
                    pt,
                    name: name.to_string(),
                    clock_rate,
                    channels,
                    rtpmap: enc.to_string(),
                    fmtp: None,
                    rtcp_fb: Vec::new(),
                });
            }
            "rtcp-fb" => {
                let (pt, fb) = v
                    .split_once(' ')
                    .ok_or_else(|| SdpError::bad("malformed a=rtcp-fb"))?;
                let fb = fb.split_whitespace().collect::<Vec<_>>().join(" ");
                if pt == "*" && !wildcard_fb.contains(&fb) {
                    if wildcard_fb.len() >= MAX_RTCP_FB_PER_CODEC {
                        return Err(too_many_fb());
                    }
                    wildcard_fb.push(fb);
                }
            }
            _ => {}
        }
    }
    // Second pass: fmtp and per-pt rtcp-fb (they may precede their rtpmap).
    for a in attrs {
        let v = a.value.as_deref().unwrap_or("").trim();
        match a.key.as_str() {
            "fmtp" => {
                let (pt, params) = v.split_once(' ').unwrap_or((v, ""));
                let pt = parse_pt(pt, "a=fmtp")?;
                if let Some(c) = m.codecs.iter_mut().find(|c| c.pt == pt) {
                    if c.fmtp.is_some() {
                        return Err(SdpError::bad(format!(
                            "duplicate a=fmtp for payload type {pt}"
                        )));
                    }
                    let params = params.trim();
                    if !params.is_empty() {
                        c.fmtp = Some(params.to_string());
                    }
                }
            }
            "rtcp-fb" => {
                if let Some((pt, fb)) = v.split_once(' ') {
                    if pt == "*" {
                        continue;
                    }
                    let pt = parse_pt(pt, "a=rtcp-fb")?;
                    let fb = fb.split_whitespace().collect::<Vec<_>>().join(" ");
                    if let Some(c) = m.codecs.iter_mut().find(|c| c.pt == pt) {
                        if !c.rtcp_fb.contains(&fb) {
                            if c.rtcp_fb.len() >= MAX_RTCP_FB_PER_CODEC {
                                return Err(too_many_fb());
                            }
                            c.rtcp_fb.push(fb);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for c in &mut m.codecs {
        for fb in &wildcard_fb {
            if !c.rtcp_fb.contains(fb) {
                if c.rtcp_fb.len() >= MAX_RTCP_FB_PER_CODEC {
                    return Err(too_many_fb());
                }
                c.rtcp_fb.push(fb.clone());
            }
        }
    }
    // Keep m= order.
    m.codecs
        .sort_by_key(|c| pts.iter().position(|p| *p == c.pt).unwrap_or(usize::MAX));
    Ok(())
}

fn too_many_fb() -> SdpError {
    SdpError::bad(format!(
        "more than {MAX_RTCP_FB_PER_CODEC} a=rtcp-fb values for one payload type"
    ))
}

fn parse_exts(m: &mut OfferMedia, attrs: &[Attribute]) -> Result<(), SdpError> {
    for a in attrs.iter().filter(|a| a.key == "extmap") {
        let v = a.value.as_deref().unwrap_or("").trim();
        let mut it = v.split_whitespace();
        let (Some(idd), Some(uri)) = (it.next(), it.next()) else {
            return Err(SdpError::bad("malformed a=extmap"));
        };
        let (id_str, dir) = match idd.split_once('/') {
            None => (idd, None),
            Some((i, d)) => (
                i,
                Some(match d {
                    "sendrecv" => Dir::SendRecv,
                    "sendonly" => Dir::SendOnly,
                    "recvonly" => Dir::RecvOnly,
                    "inactive" => Dir::Inactive,
                    _ => return Err(SdpError::bad("malformed a=extmap direction")),
                }),
            ),
        };
        let id = match id_str.parse::<u16>() {
            Ok(id @ 1..=255) => id as u8,
            _ => {
                return Err(SdpError::bad(format!(
                    "a=extmap id \"{id_str}\" outside 1..=255"
                )))
            }
        };
        if let Some(prev) = m.exts.iter().find(|e| e.id == id) {
            if prev.uri != uri {
                return Err(SdpError::bad(format!(
                    "a=extmap id {id} used for two extensions"
                )));
            }
            continue;
        }
        m.exts.push(OfferedExt {
            id,
            uri: uri.to_string(),
            dir,
        });
    }
    Ok(())
}

fn parse_simulcast(m: &mut OfferMedia, attrs: &[Attribute]) -> Result<(), SdpError> {
    let mut send_rids: Vec<&str> = Vec::new();
    for (n, a) in attrs.iter().filter(|a| a.key == "rid").enumerate() {
        if n >= MAX_RIDS_PER_MEDIA {
            return Err(SdpError::bad(format!(
                "more than {MAX_RIDS_PER_MEDIA} a=rid lines on mid \"{}\"",
                m.mid
            )));
        }
        let v = a.value.as_deref().unwrap_or("").trim();
        let mut it = v.split_whitespace();
        let (Some(id), Some(dir)) = (it.next(), it.next()) else {
            return Err(SdpError::bad("malformed a=rid"));
        };
        if !is_rid(id) {
            return Err(SdpError::bad("malformed a=rid id"));
        }
        if id.len() > MAX_RID_LEN {
            return Err(SdpError::unusable(format!(
                "rid \"{id}\" is {} bytes; limit {MAX_RID_LEN}",
                id.len()
            )));
        }
        if dir == "send" && !send_rids.contains(&id) {
            send_rids.push(id);
        }
    }
    let Some(sim) = attr(attrs, "simulcast") else {
        return Ok(());
    };
    // "send q;h;f [recv ...]"; each stream may list alternatives "a,b"; '~' = paused.
    let mut toks = sim.split_whitespace();
    while let Some(dir) = toks.next() {
        let Some(list) = toks.next() else {
            return Err(SdpError::bad("malformed a=simulcast"));
        };
        match dir {
            "send" => {
                for stream in list.split(';') {
                    let first = stream.split(',').next().unwrap_or("");
                    let rid = first.strip_prefix('~').unwrap_or(first);
                    if !is_rid(rid) {
                        return Err(SdpError::bad("malformed a=simulcast rid"));
                    }
                    if !send_rids.contains(&rid) {
                        return Err(SdpError::bad(format!(
                            "a=simulcast names rid \"{rid}\" without a=rid:{rid} send"
                        )));
                    }
                    if m.simulcast_send.len() < MAX_SIMULCAST_LAYERS
                        && !m.simulcast_send.iter().any(|r| r == rid)
                    {
                        m.simulcast_send.push(rid.to_string());
                    }
                }
            }
            "recv" => m.simulcast_recv_offered = true,
            _ => return Err(SdpError::bad("malformed a=simulcast direction")),
        }
    }
    Ok(())
}

fn parse_ssrc(s: &str) -> Result<u32, SdpError> {
    match s.parse::<u32>() {
        Ok(v) if v != 0 => Ok(v),
        _ => Err(SdpError::bad("malformed SSRC")),
    }
}

fn parse_ssrcs(m: &mut OfferMedia, attrs: &[Attribute]) -> Result<(), SdpError> {
    let mut all: Vec<u32> = Vec::new();
    let mut fid: Vec<(u32, u32)> = Vec::new();
    for a in attrs {
        let v = a.value.as_deref().unwrap_or("").trim();
        match a.key.as_str() {
            "ssrc" => {
                let s = parse_ssrc(v.split_whitespace().next().unwrap_or(""))?;
                if !all.contains(&s) {
                    if all.len() >= MAX_SSRCS_PER_MEDIA {
                        return Err(SdpError::bad(format!(
                            "more than {MAX_SSRCS_PER_MEDIA} SSRCs on mid \"{}\"",
                            m.mid
                        )));
                    }
                    all.push(s);
                }
            }
            "ssrc-group" => {
                let mut it = v.split_whitespace();
                if it.next() == Some("FID") {
                    let (Some(a), Some(b)) = (it.next(), it.next()) else {
                        return Err(SdpError::bad("malformed a=ssrc-group:FID"));
                    };
                    let (a, b) = (parse_ssrc(a)?, parse_ssrc(b)?);
                    if fid.len() >= MAX_SSRCS_PER_MEDIA {
                        return Err(SdpError::bad("too many a=ssrc-group lines"));
                    }
                    fid.push((a, b));
                }
            }
            _ => {}
        }
    }
    let rtx: Vec<u32> = fid.iter().map(|(_, r)| *r).collect();
    for s in all {
        if rtx.contains(&s) {
            continue;
        }
        let r = fid.iter().find(|(p, _)| *p == s).map(|(_, r)| *r);
        m.ssrcs.push((s, r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HDR: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    fn one(media: &str) -> Result<OfferMedia, SdpError> {
        let o = parse(&format!("{HDR}{media}"))?;
        Ok(o.media.into_iter().next().expect("one m-line"))
    }

    #[test]
    fn codecs_fmtp_fb_and_order() {
        let m = one(
            "m=video 9 UDP/TLS/RTP/SAVPF 97 96\r\na=mid:0\r\na=fmtp:97 apt=96\r\n\
             a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=rtcp-fb:96 nack\r\n\
             a=rtcp-fb:* ccm fir\r\na=rtcp-fb:96  nack   pli\r\n",
        )
        .unwrap();
        assert_eq!(m.codecs.len(), 2);
        assert_eq!(m.codecs[0].pt, 97);
        assert_eq!(m.codecs[0].fmtp_param("apt"), Some("96"));
        assert_eq!(m.codecs[1].name, "VP8");
        assert_eq!(m.codecs[1].rtcp_fb, vec!["nack", "nack pli", "ccm fir"]);
        assert_eq!(m.dir, Dir::SendRecv);
    }

    #[test]
    fn malformed_attrs_are_400() {
        for bad in [
            "a=rtpmap:96\r\n",
            "a=rtpmap:300 VP8/90000\r\n",
            "a=rtpmap:96 VP8\r\n",
            "a=rtpmap:96 VP8/90000\r\na=rtpmap:96 VP9/90000\r\n",
            "a=rtpmap:96 opus/48000/x\r\n",
            "a=fmtp:x a=b\r\n",
            "a=extmap:0 urn:x\r\n",
            "a=extmap:256 urn:x\r\n",
            "a=extmap:1\r\n",
            "a=extmap:1 urn:a\r\na=extmap:1 urn:b\r\n",
            "a=extmap:1/sideways urn:a\r\n",
            "a=rid:q\r\n",
            "a=rid:q send\r\na=simulcast:send q;z\r\n",
            "a=simulcast:send\r\n",
            "a=ssrc:0 cname:x\r\n",
            "a=ssrc:abc cname:x\r\n",
            "a=ssrc-group:FID 1\r\n",
        ] {
            let e = one(&format!(
                "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n{bad}"
            ))
            .expect_err(bad);
            assert_eq!(e.status, 400, "{bad}: {}", e.reason);
        }
        let e = one("m=video 9 UDP/TLS/RTP/SAVPF x\r\na=mid:0\r\n").unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn mid_checks() {
        let e = one("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n").unwrap_err();
        assert_eq!(e.reason, "m-line 0 has no a=mid");
        let e = one("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a b\r\n").unwrap_err();
        assert_eq!(e.status, 400);
        let e = one(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{}\r\n",
            "m".repeat(17)
        ))
        .unwrap_err();
        assert_eq!(e.status, 422);
    }

    #[test]
    fn simulcast_and_ssrcs() {
        let m = one(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\n\
             a=rid:a send\r\na=rid:b send\r\na=rid:c send\r\na=rid:d send\r\na=rid:x recv\r\n\
             a=simulcast:send a,x;~b;c;d\r\n\
             a=ssrc-group:FID 10 11\r\na=ssrc:10 cname:x\r\na=ssrc:11 cname:x\r\na=ssrc:12 cname:x\r\n",
        )
        .unwrap();
        assert_eq!(m.simulcast_send, vec!["a", "b", "c"]);
        assert_eq!(m.ssrcs, vec![(10, Some(11)), (12, None)]);
        assert_eq!(m.dir, Dir::SendOnly);
    }

    #[test]
    fn too_many_ssrcs() {
        let lines: String = (1..=MAX_SSRCS_PER_MEDIA + 1)
            .map(|i| format!("a=ssrc:{i} cname:x\r\n"))
            .collect();
        let e = one(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n{lines}"
        ))
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.reason.contains("SSRCs"), "{}", e.reason);
    }

    #[test]
    fn hostile_repetition_is_bounded() {
        let fb: String = (0..=MAX_RTCP_FB_PER_CODEC)
            .map(|i| format!("a=rtcp-fb:* x{i}\r\n"))
            .collect();
        let e = one(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n{fb}"
        ))
        .unwrap_err();
        assert!(e.reason.contains("rtcp-fb"), "{}", e.reason);
        let fb = fb.replace('*', "96");
        let e = one(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n{fb}"
        ))
        .unwrap_err();
        assert!(e.reason.contains("rtcp-fb"), "{}", e.reason);
        // Repeating the same value is de-duplicated, not counted.
        let same = "a=rtcp-fb:96 nack\r\n".repeat(100);
        let m = one(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n{same}"
        ))
        .unwrap();
        assert_eq!(m.codecs[0].rtcp_fb, vec!["nack"]);
        let rids: String = (0..=MAX_RIDS_PER_MEDIA)
            .map(|i| format!("a=rid:r{i} send\r\n"))
            .collect();
        let e = one(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n{rids}"
        ))
        .unwrap_err();
        assert!(e.reason.contains("a=rid"), "{}", e.reason);
    }

    #[test]
    fn bundle_and_session_attrs() {
        let o = parse(&format!(
            "{HDR}a=group:LS 0\r\na=group:BUNDLE 0 1\r\na=ice-ufrag:abcd\r\n\
             a=fingerprint:SHA-256 AA:BB\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
             m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n"
        ))
        .unwrap();
        assert_eq!(o.bundle, Some(vec!["0".to_string(), "1".to_string()]));
        assert_eq!(o.session_ufrag.as_deref(), Some("abcd"));
        assert_eq!(
            o.session_fingerprints,
            vec![("sha-256".into(), "AA:BB".into())]
        );
        assert_eq!(o.media[1].kind, None);
    }
}
