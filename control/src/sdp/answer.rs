//! Offer/answer: per-m-line negotiation and the answer text for WHIP (publish) and WHEP (view).

use sdp::description::common::{Address, Attribute, ConnectionInformation};
use sdp::description::media::{MediaDescription, MediaName, RangedPort};
use sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};

use super::limits::{check_ice_creds, is_ice_chars, precheck};
use super::offer::{self, Dir, Offer, OfferMedia, OfferedCodec};
use super::{Codec, ExtIds, Kind, LocalParams, MediaInfo, Negotiated, Preferences, SdpError};

/// Our default video codec order when [`Preferences::video`] names none the offer has.
pub const VIDEO_CODECS: [&str; 4] = ["VP8", "VP9", "H264", "AV1"];
/// Our audio codecs.
pub const AUDIO_CODECS: [&str; 1] = ["opus"];
/// rtcp-fb values we answer (the engine implements NACK/RTX, PLI, FIR and transport-cc).
pub const RTCP_FB: [&str; 4] = ["nack", "nack pli", "ccm fir", "transport-cc"];
/// Calls of the SSRC callback tolerated per SSRC when it returns 0 or a value already used in
/// this answer; bounds the loop on a broken allocator (then 500).
pub const MAX_SSRC_TRIES: usize = 8;
/// Highest one-byte header-extension id (RFC 8285; 15 is reserved). Ids 15..=255 are only
/// negotiated when the offer carries `a=extmap-allow-mixed`.
pub const ONE_BYTE_MAX_EXT_ID: u8 = 14;
/// ICE priority of our single host candidate (type preference 126, component 1).
pub const CANDIDATE_PRIORITY: u32 = 2_130_706_431;

/// WHIP: the offer must have >= 1 sendonly/sendrecv audio or video m-line; answer recvonly per
/// m-line (simulcast rids accepted as `a=rid:<r> recv`).
pub fn answer_publish(offer: &str, local: &LocalParams) -> Result<Negotiated, SdpError> {
    negotiate(offer, local, &mut Role::Publish)
}

/// WHEP: the offer's m-lines must be recvonly/sendrecv; answer sendonly with our SSRCs
/// (`a=ssrc` cname/msid, and `a=ssrc-group:FID` when RTX is negotiated). `prefer` names the codecs
/// to pick first per kind, else video VP8, VP9, H264, AV1 and audio opus. `next_ssrc` supplies
/// unique non-zero SSRCs (0 or a repeat within this answer is skipped, at most
/// `MAX_SSRC_TRIES` times, then 500).
pub fn answer_view(
    offer: &str,
    local: &LocalParams,
    prefer: &Preferences,
    next_ssrc: &mut dyn FnMut() -> u32,
) -> Result<Negotiated, SdpError> {
    negotiate(offer, local, &mut Role::View { prefer, next_ssrc })
}

enum Role<'a> {
    Publish,
    View {
        prefer: &'a Preferences,
        next_ssrc: &'a mut dyn FnMut() -> u32,
    },
}

/// Outcome for one m-line.
enum Outcome {
    Accepted(Box<Accepted>),
    Rejected { status: u16, reason: String },
}

struct Accepted {
    info: MediaInfo,
    /// Offered rtpmap strings for the codec and its RTX.
    rtpmap: String,
    /// Accepted extmap values ("<id>[/<dir>] <uri>") in offer order.
    exts: Vec<String>,
    rtcp_rsize: bool,
}

fn canonical(kind: Kind, c: &OfferedCodec) -> Option<&'static str> {
    match kind {
        Kind::Audio => {
            (c.name.eq_ignore_ascii_case("opus") && c.clock_rate == 48_000 && c.channels == Some(2))
                .then_some("opus")
        }
        Kind::Video => {
            if c.clock_rate != 90_000 {
                return None;
            }
            VIDEO_CODECS
                .iter()
                .copied()
                .find(|n| c.name.eq_ignore_ascii_case(n))
        }
    }
}

/// Lower is better among several offered payload types of one codec.
fn rank(name: &str, c: &OfferedCodec) -> u8 {
    match name {
        "H264" => {
            let pm1 = c.fmtp_param("packetization-mode") == Some("1");
            let plid = c
                .fmtp_param("profile-level-id")
                .unwrap_or("")
                .to_ascii_lowercase();
            match (pm1, plid.get(..4)) {
                (true, Some("42e0")) => 0,
                (true, Some("4200")) => 1,
                (true, _) => 2,
                _ => 3,
            }
        }
        "VP9" | "AV1" => match c.fmtp_param("profile-id").or(c.fmtp_param("profile")) {
            None | Some("0") => 0,
            _ => 1,
        },
        _ => 0,
    }
}

/// Names of offered media codecs for an error message (RTX/FEC/CN/DTMF left out).
fn offered_names(m: &OfferMedia) -> String {
    let mut names: Vec<&str> = Vec::new();
    for c in &m.codecs {
        let aux = [
            "rtx",
            "red",
            "ulpfec",
            "flexfec-03",
            "CN",
            "telephone-event",
        ]
        .iter()
        .any(|a| c.name.eq_ignore_ascii_case(a));
        if !aux && !names.iter().any(|n| n.eq_ignore_ascii_case(&c.name)) {
            names.push(&c.name);
        }
    }
    match names.len() {
        0 => "none".to_string(),
        1 => format!("{} only", names[0]),
        _ => names.join(", "),
    }
}

fn choose_codec(m: &OfferMedia, kind: Kind, prefer: &[String]) -> Option<Codec> {
    let defaults: &[&str] = match kind {
        Kind::Audio => &AUDIO_CODECS,
        Kind::Video => &VIDEO_CODECS,
    };
    let preferred = prefer
        .iter()
        .filter_map(|p| defaults.iter().copied().find(|d| d.eq_ignore_ascii_case(p)));
    for name in preferred.chain(defaults.iter().copied()) {
        let best = m
            .codecs
            .iter()
            .filter(|c| canonical(kind, c) == Some(name))
            .min_by_key(|c| rank(name, c));
        if let Some(c) = best {
            let rtx_pt = m
                .codecs
                .iter()
                .find(|r| {
                    r.name.eq_ignore_ascii_case("rtx")
                        && r.clock_rate == c.clock_rate
                        && r.fmtp_param("apt").and_then(|a| a.parse::<u8>().ok()) == Some(c.pt)
                })
                .map(|r| r.pt);
            return Some(Codec {
                name: name.to_string(),
                pt: c.pt,
                clock_rate: c.clock_rate,
                channels: c.channels,
                fmtp: c.fmtp.clone(),
                rtx_pt,
                rtcp_fb: c
                    .rtcp_fb
                    .iter()
                    .filter(|f| RTCP_FB.contains(&f.as_str()))
                    .cloned()
                    .collect(),
            });
        }
    }
    None
}

fn alloc_ssrc(next: &mut dyn FnMut() -> u32, used: &mut Vec<u32>) -> Result<u32, SdpError> {
    for _ in 0..MAX_SSRC_TRIES {
        let s = next();
        if s != 0 && !used.contains(&s) {
            used.push(s);
            return Ok(s);
        }
    }
    Err(SdpError::new(
        500,
        "SSRC allocator returned 0 or duplicate SSRCs",
    ))
}

fn negotiate_media(
    offer: &Offer,
    m: &OfferMedia,
    accepted_so_far: usize,
    role: &mut Role<'_>,
    used_ssrcs: &mut Vec<u32>,
) -> Result<Outcome, SdpError> {
    let reject = |status: u16, reason: String| Ok(Outcome::Rejected { status, reason });
    let Some(kind) = m.kind else {
        return reject(406, format!("unsupported media kind {}", m.media));
    };
    let mid = &m.mid;
    if m.port == 0 && !m.bundle_only {
        return reject(
            422,
            format!("mid {mid} was rejected by the offerer (port 0)"),
        );
    }
    if m.proto != "UDP/TLS/RTP/SAVPF" {
        return reject(
            406,
            format!("unsupported transport {} (need UDP/TLS/RTP/SAVPF)", m.proto),
        );
    }
    if !m.rtcp_mux {
        return reject(406, format!("a=rtcp-mux required (mid {mid})"));
    }
    match &offer.bundle {
        Some(group) if !group.iter().any(|g| g == mid) => {
            return reject(406, format!("mid {mid} is not in the BUNDLE group"));
        }
        None if accepted_so_far > 0 => {
            return reject(
                406,
                format!("mid {mid}: a=group:BUNDLE required for more than one m-line"),
            );
        }
        _ => {}
    }
    let publish = matches!(role, Role::Publish);
    match (publish, m.dir) {
        (true, Dir::SendOnly | Dir::SendRecv) | (false, Dir::RecvOnly | Dir::SendRecv) => {}
        (true, d) => {
            return reject(
                422,
                format!("mid {mid} is {}; nothing to publish", d.as_str()),
            )
        }
        (false, d) => {
            return reject(
                422,
                format!("mid {mid} is {}; a viewer must receive", d.as_str()),
            )
        }
    }
    let empty = Vec::new();
    let prefer = match role {
        Role::Publish => &empty,
        Role::View { prefer, .. } => match kind {
            Kind::Audio => &prefer.audio,
            Kind::Video => &prefer.video,
        },
    };
    let Some(codec) = choose_codec(m, kind, prefer) else {
        return reject(
            406,
            format!(
                "no common {} codec: offered {}",
                kind.as_str(),
                offered_names(m)
            ),
        );
    };
    let rtpmap = m
        .codecs
        .iter()
        .find(|c| c.pt == codec.pt)
        .map(|c| c.rtpmap.clone())
        .unwrap_or_default();

    let mut ext = ExtIds::default();
    let mut exts = Vec::new();
    for e in &m.exts {
        if e.id > ONE_BYTE_MAX_EXT_ID && !offer.extmap_allow_mixed {
            continue;
        }
        if !publish
            && matches!(
                e.uri.as_str(),
                super::uri::MID | super::uri::RID | super::uri::RRID
            )
        {
            continue;
        }
        // Only extensions flowing our way (publish: offerer sends; view: offerer receives).
        let answer_dir = match (publish, e.dir) {
            (_, None | Some(Dir::SendRecv)) => None,
            (true, Some(Dir::SendOnly)) => Some("recvonly"),
            (false, Some(Dir::RecvOnly)) => Some("sendonly"),
            _ => continue,
        };
        if let Some(slot) = ext.slot_mut(&e.uri) {
            if *slot == 0 {
                *slot = e.id;
                let id = match answer_dir {
                    Some(d) => format!("{}/{d}", e.id),
                    None => e.id.to_string(),
                };
                exts.push(format!("{id} {}", e.uri));
            }
        }
    }

    let mut info = MediaInfo {
        mid: mid.clone(),
        kind,
        codec,
        ext,
        rids: Vec::new(),
        ssrcs: Vec::new(),
        send_ssrc: None,
        send_rtx_ssrc: None,
    };
    match role {
        Role::Publish => {
            if kind == Kind::Video && ext.rid != 0 {
                info.rids = m.simulcast_send.clone();
            }
            info.ssrcs = m.ssrcs.clone();
        }
        Role::View { next_ssrc, .. } => {
            info.send_ssrc = Some(alloc_ssrc(*next_ssrc, used_ssrcs)?);
            if info.codec.rtx_pt.is_some() {
                info.send_rtx_ssrc = Some(alloc_ssrc(*next_ssrc, used_ssrcs)?);
            }
        }
    }
    Ok(Outcome::Accepted(Box::new(Accepted {
        info,
        rtpmap,
        exts,
        rtcp_rsize: m.rtcp_rsize,
    })))
}

fn is_sha256_fp(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    parts.len() == 32
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_local(l: &LocalParams) -> Result<(), SdpError> {
    let ok = !l.ice_ufrag.is_empty()
        && is_ice_chars(&l.ice_ufrag)
        && !l.ice_pwd.is_empty()
        && is_ice_chars(&l.ice_pwd)
        && is_sha256_fp(&l.fingerprint_sha256)
        && !l.cname.is_empty()
        && l.cname.len() <= 255
        && l.cname
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control());
    if ok {
        Ok(())
    } else {
        Err(SdpError::new(500, "invalid local SDP parameters"))
    }
}

fn remote_transport(o: &Offer) -> Result<(String, String, String), SdpError> {
    // The BUNDLE-tag m-line (first mid of the group) carries the transport; else the first.
    let tagged = o
        .bundle
        .as_ref()
        .and_then(|g| g.first())
        .and_then(|t| o.media.iter().find(|m| &m.mid == t));
    let Some(tm) = tagged.or(o.media.first()) else {
        return Err(SdpError::unsupported("offer has no m-lines"));
    };
    let ufrag = tm.ufrag.clone().or(o.session_ufrag.clone());
    let pwd = tm.pwd.clone().or(o.session_pwd.clone());
    let (Some(ufrag), Some(pwd)) = (ufrag, pwd) else {
        return Err(SdpError::bad(
            "ICE credentials missing (a=ice-ufrag / a=ice-pwd)",
        ));
    };
    check_ice_creds(&ufrag, &pwd)?;

    let all: Vec<&(String, String)> = o
        .session_fingerprints
        .iter()
        .chain(o.media.iter().flat_map(|m| m.fingerprints.iter()))
        .collect();
    if all.is_empty() {
        return Err(SdpError::bad("DTLS fingerprint missing"));
    }
    let mut sha256: Option<String> = None;
    for (alg, val) in &all {
        if alg != "sha-256" {
            continue;
        }
        if !is_sha256_fp(val) {
            return Err(SdpError::bad("malformed sha-256 DTLS fingerprint"));
        }
        let v = val.to_ascii_uppercase();
        match &sha256 {
            Some(prev) if *prev != v => {
                return Err(SdpError::bad("conflicting sha-256 DTLS fingerprints"))
            }
            _ => sha256 = Some(v),
        }
    }
    let Some(fp) = sha256 else {
        let mut algs: Vec<&str> = all.iter().map(|(a, _)| a.as_str()).collect();
        algs.dedup();
        return Err(SdpError::bad(format!(
            "DTLS fingerprint missing: sha-256 required, offered {}",
            algs.join(", ")
        )));
    };

    for m in &o.media {
        match m.setup.as_deref().or(o.session_setup.as_deref()) {
            None | Some("actpass") | Some("active") => {}
            Some("passive") => {
                return Err(SdpError::unusable(
                    "offer has a=setup:passive; ils is the DTLS server (passive)",
                ))
            }
            Some("holdconn") => return Err(SdpError::unusable("offer has a=setup:holdconn")),
            Some(_) => return Err(SdpError::bad("malformed a=setup")),
        }
    }
    Ok((ufrag, pwd, format!("sha-256 {fp}")))
}

fn session_id(local: &LocalParams) -> u64 {
    // FNV-1a over our ufrag: unique per session without reading a clock or RNG (sans-IO).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in local.ice_ufrag.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h & 0x3FFF_FFFF_FFFF_FFFF
}

fn a(key: &str, value: impl Into<String>) -> Attribute {
    Attribute::new(key.to_string(), Some(value.into()))
}

fn flag(key: &str) -> Attribute {
    Attribute::new(key.to_string(), None)
}

fn conn() -> Option<ConnectionInformation> {
    Some(ConnectionInformation {
        network_type: "IN".into(),
        address_type: "IP4".into(),
        address: Some(Address {
            address: "0.0.0.0".into(),
            ttl: None,
            range: None,
        }),
    })
}

fn media_section(
    local: &LocalParams,
    m: &OfferMedia,
    acc: &Accepted,
    publish: bool,
) -> MediaDescription {
    let info = &acc.info;
    let c = &info.codec;
    let mut formats = vec![c.pt.to_string()];
    if let Some(r) = c.rtx_pt {
        formats.push(r.to_string());
    }
    let mut at = vec![
        a(
            "candidate",
            format!(
                "1 1 udp {CANDIDATE_PRIORITY} {} {} typ host",
                local.candidate.ip(),
                local.candidate.port()
            ),
        ),
        flag("end-of-candidates"),
        a("ice-ufrag", local.ice_ufrag.clone()),
        a("ice-pwd", local.ice_pwd.clone()),
        a(
            "fingerprint",
            format!("sha-256 {}", local.fingerprint_sha256),
        ),
        a("setup", "passive"),
        a("mid", m.mid.clone()),
    ];
    for e in &acc.exts {
        at.push(a("extmap", e.clone()));
    }
    let stream = format!("ils-{}", local.cname);
    let track = format!("{}-{}", info.kind.as_str(), m.mid);
    if publish {
        at.push(flag("recvonly"));
    } else {
        at.push(flag("sendonly"));
        at.push(a("msid", format!("{stream} {track}")));
    }
    at.push(flag("rtcp-mux"));
    if acc.rtcp_rsize {
        at.push(flag("rtcp-rsize"));
    }
    at.push(a("rtpmap", format!("{} {}", c.pt, acc.rtpmap)));
    for fb in &c.rtcp_fb {
        at.push(a("rtcp-fb", format!("{} {fb}", c.pt)));
    }
    if let Some(f) = &c.fmtp {
        at.push(a("fmtp", format!("{} {f}", c.pt)));
    }
    if let Some(r) = c.rtx_pt {
        at.push(a("rtpmap", format!("{r} rtx/{}", c.clock_rate)));
        at.push(a("fmtp", format!("{r} apt={}", c.pt)));
    }
    if publish && !info.rids.is_empty() {
        for r in &info.rids {
            at.push(a("rid", format!("{r} recv")));
        }
        at.push(a("simulcast", format!("recv {}", info.rids.join(";"))));
    }
    if let Some(s) = info.send_ssrc {
        if let Some(r) = info.send_rtx_ssrc {
            at.push(a("ssrc-group", format!("FID {s} {r}")));
        }
        for x in std::iter::once(s).chain(info.send_rtx_ssrc) {
            at.push(a("ssrc", format!("{x} cname:{}", local.cname)));
            at.push(a("ssrc", format!("{x} msid:{stream} {track}")));
        }
    }
    MediaDescription {
        media_name: MediaName {
            media: m.media.clone(),
            port: RangedPort {
                value: 9,
                range: None,
            },
            protos: m.protos.clone(),
            formats,
        },
        media_title: None,
        connection_information: conn(),
        bandwidth: vec![],
        encryption_key: None,
        attributes: at,
    }
}

fn rejected_section(m: &OfferMedia) -> MediaDescription {
    MediaDescription {
        media_name: MediaName {
            media: m.media.clone(),
            port: RangedPort {
                value: 0,
                range: None,
            },
            protos: m.protos.clone(),
            formats: m.formats.clone(),
        },
        media_title: None,
        connection_information: conn(),
        bandwidth: vec![],
        encryption_key: None,
        attributes: vec![a("mid", m.mid.clone())],
    }
}

fn negotiate(text: &str, local: &LocalParams, role: &mut Role<'_>) -> Result<Negotiated, SdpError> {
    check_local(local)?;
    precheck(text)?;
    let o = offer::parse(text)?;
    let (remote_ufrag, remote_pwd, remote_fingerprint) = remote_transport(&o)?;

    let mut outcomes = Vec::with_capacity(o.media.len());
    let mut used_ssrcs = Vec::new();
    let mut n_acc = 0usize;
    for m in &o.media {
        let out = negotiate_media(&o, m, n_acc, role, &mut used_ssrcs)?;
        if matches!(out, Outcome::Accepted(_)) {
            n_acc += 1;
        }
        outcomes.push(out);
    }
    if n_acc == 0 {
        let mut reasons: Vec<&str> = Vec::new();
        let mut status = None;
        for (m, out) in o.media.iter().zip(&outcomes) {
            if let Outcome::Rejected { status: s, reason } = out {
                if m.kind.is_some() && status.is_none() {
                    status = Some(*s);
                }
                if !reasons.contains(&reason.as_str()) {
                    reasons.push(reason);
                }
            }
        }
        let publish = matches!(role, Role::Publish);
        let reason = if status.is_none() {
            format!(
                "no audio or video m-line to {}: offered {}",
                if publish { "publish" } else { "receive" },
                o.media
                    .iter()
                    .map(|m| m.media.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            reasons.join("; ")
        };
        return Err(SdpError::new(status.unwrap_or(406), reason));
    }

    let publish = matches!(role, Role::Publish);
    let mut session_attrs = Vec::new();
    if o.bundle.is_some() {
        let mids: Vec<&str> = o
            .media
            .iter()
            .zip(&outcomes)
            .filter(|(_, out)| matches!(out, Outcome::Accepted(_)))
            .map(|(m, _)| m.mid.as_str())
            .collect();
        session_attrs.push(a("group", format!("BUNDLE {}", mids.join(" "))));
    }
    if o.extmap_allow_mixed {
        session_attrs.push(flag("extmap-allow-mixed"));
    }
    session_attrs.push(flag("ice-lite"));
    session_attrs.push(a("msid-semantic", " WMS"));

    let mut sections = Vec::with_capacity(o.media.len());
    let mut media = Vec::with_capacity(n_acc);
    for (m, out) in o.media.iter().zip(outcomes) {
        match out {
            Outcome::Accepted(acc) => {
                sections.push(media_section(local, m, &acc, publish));
                media.push(acc.info);
            }
            Outcome::Rejected { .. } => sections.push(rejected_section(m)),
        }
    }
    let sd = SessionDescription {
        version: 0,
        origin: Origin {
            username: "-".into(),
            session_id: session_id(local),
            session_version: 2,
            network_type: "IN".into(),
            address_type: "IP4".into(),
            unicast_address: "127.0.0.1".into(),
        },
        session_name: "-".into(),
        session_information: None,
        uri: None,
        email_address: None,
        phone_number: None,
        connection_information: None,
        bandwidth: vec![],
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: vec![],
        }],
        time_zones: vec![],
        encryption_key: None,
        attributes: session_attrs,
        media_descriptions: sections,
    };
    Ok(Negotiated {
        answer: sd.marshal(),
        remote_ufrag,
        remote_pwd,
        remote_fingerprint,
        media,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    const CHROMIUM: &str = include_str!("fixtures/chromium156-offer-simulcast.sdp");
    const CHROME_FP: &str = "93:1D:BF:C1:99:87:66:29:79:87:3A:5A:CB:33:A2:DA:14:4A:6E:DB:85:F5:7D:67:E3:C6:35:7D:5D:68:E2:F3";

    fn local() -> LocalParams {
        LocalParams {
            ice_ufrag: "ilsUfrag0001".into(),
            ice_pwd: "ilsPasswordPasswordPass1".into(),
            fingerprint_sha256: (0..32)
                .map(|i| format!("{i:02X}"))
                .collect::<Vec<_>>()
                .join(":"),
            candidate: "127.0.0.1:40000".parse().unwrap(),
            cname: "ils".into(),
        }
    }

    fn parse_sd(s: &str) -> SessionDescription {
        SessionDescription::unmarshal(&mut Cursor::new(s.as_bytes())).expect("answer re-parses")
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    /// A Chromium-style WHEP offer: the fixture's transceivers as recvonly (no msid, ssrc, rid,
    /// simulcast lines — what `addTransceiver(kind, {direction: "recvonly"})` produces).
    fn whep_offer() -> String {
        CHROMIUM
            .lines()
            .filter(|l| {
                !l.starts_with("a=ssrc")
                    && !l.starts_with("a=msid:")
                    && !l.starts_with("a=rid")
                    && !l.starts_with("a=simulcast")
            })
            .map(|l| if l == "a=sendonly" { "a=recvonly" } else { l })
            .map(|l| format!("{l}\r\n"))
            .collect()
    }

    /// Structural agreement of an answer with its offer (used on every successful negotiation).
    fn check_consistent(offer: &str, n: &Negotiated) {
        let o = parse_sd(offer);
        let a = parse_sd(&n.answer);
        assert_eq!(o.media_descriptions.len(), a.media_descriptions.len());
        let mut accepted = Vec::new();
        for (om, am) in o.media_descriptions.iter().zip(&a.media_descriptions) {
            assert_eq!(om.media_name.media, am.media_name.media);
            assert_eq!(om.attribute("mid"), am.attribute("mid"));
            let mid = am.attribute("mid").flatten().unwrap().to_string();
            if am.media_name.port.value == 0 {
                assert!(n.media.iter().all(|m| m.mid != mid));
                continue;
            }
            assert_eq!(am.media_name.port.value, 9);
            accepted.push(mid.clone());
            for f in &am.media_name.formats {
                assert!(
                    om.media_name.formats.contains(f),
                    "answer pt {f} not offered"
                );
            }
            let id_uri = |v: &Option<String>| {
                let v = v.as_deref().unwrap_or("");
                let (id, uri) = v.split_once(' ').unwrap_or((v, ""));
                (
                    id.split('/').next().unwrap_or("").to_string(),
                    uri.to_string(),
                )
            };
            for e in am.attributes.iter().filter(|x| x.key == "extmap") {
                assert!(
                    om.attributes
                        .iter()
                        .any(|x| x.key == "extmap" && id_uri(&x.value) == id_uri(&e.value)),
                    "extmap {:?} not offered",
                    e.value
                );
            }
            for k in [
                "ice-ufrag",
                "ice-pwd",
                "fingerprint",
                "setup",
                "rtcp-mux",
                "candidate",
            ] {
                assert!(am.attribute(k).is_some(), "{k} missing");
            }
            let info = n.media.iter().find(|m| m.mid == mid).expect("listed");
            assert_eq!(am.media_name.formats[0], info.codec.pt.to_string());
        }
        assert_eq!(
            accepted,
            n.media.iter().map(|m| m.mid.clone()).collect::<Vec<_>>()
        );
        assert!(!accepted.is_empty());
        if offer::parse(offer).expect("offer parsed").bundle.is_some() {
            assert_eq!(
                a.attribute("group"),
                Some(&format!("BUNDLE {}", accepted.join(" ")))
            );
        }
        assert!(a.has_attribute("ice-lite"));
    }

    fn publish_err(offer: &str) -> SdpError {
        answer_publish(offer, &local()).expect_err("offer must be refused")
    }

    #[test]
    fn chromium_publish() {
        let n = answer_publish(CHROMIUM, &local()).unwrap();
        check_consistent(CHROMIUM, &n);
        assert_eq!(n.remote_ufrag, "jKkx");
        assert_eq!(n.remote_pwd, "i/pUd4H+WCGn/Qqe3A0rqESZ");
        assert_eq!(n.remote_fingerprint, format!("sha-256 {CHROME_FP}"));
        assert_eq!(n.media.len(), 2);

        let au = &n.media[0];
        assert_eq!((au.mid.as_str(), au.kind), ("0", Kind::Audio));
        assert_eq!(
            au.codec,
            Codec {
                name: "opus".into(),
                pt: 111,
                clock_rate: 48000,
                channels: Some(2),
                fmtp: Some("minptime=10;useinbandfec=1".into()),
                rtx_pt: None,
                rtcp_fb: vec!["transport-cc".into()],
            }
        );
        assert_eq!(
            au.ext,
            ExtIds {
                audio_level: 1,
                abs_send_time: 2,
                twcc: 3,
                mid: 4,
                ..Default::default()
            }
        );
        assert_eq!(au.ssrcs, vec![(1702330904, None)]);
        assert!(au.rids.is_empty());

        let vi = &n.media[1];
        assert_eq!((vi.mid.as_str(), vi.kind), ("1", Kind::Video));
        assert_eq!(
            (vi.codec.name.as_str(), vi.codec.pt, vi.codec.rtx_pt),
            ("VP8", 96, Some(97))
        );
        assert_eq!(vi.codec.fmtp, None);
        assert_eq!(
            vi.codec.rtcp_fb,
            vec!["transport-cc", "ccm fir", "nack", "nack pli"]
        );
        assert_eq!(
            vi.ext,
            ExtIds {
                toffset: 14,
                abs_send_time: 2,
                video_orientation: 13,
                twcc: 3,
                playout_delay: 5,
                mid: 4,
                rid: 10,
                rrid: 11,
                dependency_descriptor: 12,
                audio_level: 0,
            }
        );
        assert_eq!(vi.rids, vec!["q", "h", "f"]);
        assert!(vi.ssrcs.is_empty());
        assert_eq!((vi.send_ssrc, vi.send_rtx_ssrc), (None, None));

        let l = lines(&n.answer);
        for want in [
            "v=0",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0 1",
            "a=extmap-allow-mixed",
            "a=ice-lite",
            "a=msid-semantic: WMS",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
            "c=IN IP4 0.0.0.0",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
            "a=end-of-candidates",
            "a=ice-ufrag:ilsUfrag0001",
            "a=ice-pwd:ilsPasswordPasswordPass1",
            "a=setup:passive",
            "a=recvonly",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            "a=rtpmap:111 opus/48000/2",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=rtcp-fb:111 transport-cc",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "a=rtpmap:96 VP8/90000",
            "a=rtcp-fb:96 nack pli",
            "a=rtpmap:97 rtx/90000",
            "a=fmtp:97 apt=96",
            "a=rid:q recv",
            "a=rid:h recv",
            "a=rid:f recv",
            "a=simulcast:recv q;h;f",
        ] {
            assert!(l.contains(&want), "answer lacks {want:?}:\n{}", n.answer);
        }
        assert!(l
            .iter()
            .any(|x| x.starts_with("a=fingerprint:sha-256 00:01:02")));
        for absent in [
            "goog-remb",
            "H264",
            "red/",
            "video-content-type",
            "a=ssrc",
            "sendonly",
            "a=rid:q send",
        ] {
            assert!(!n.answer.contains(absent), "answer has {absent:?}");
        }
        assert!(n.answer.ends_with("\r\n"));
        assert!(n.answer.lines().all(|x| !x.contains('\r')));
        // Deterministic (sans-IO).
        assert_eq!(answer_publish(CHROMIUM, &local()).unwrap().answer, n.answer);
    }

    #[test]
    fn answer_passes_our_own_limits_and_parser() {
        let n = answer_publish(CHROMIUM, &local()).unwrap();
        precheck(&n.answer).unwrap();
        let o = offer::parse(&n.answer).unwrap();
        assert_eq!(o.media.len(), 2);
        assert_eq!(o.media[1].codecs.len(), 2);
        assert_eq!(o.media[1].dir, Dir::RecvOnly);
        assert_eq!(o.bundle, Some(vec!["0".into(), "1".into()]));
    }

    #[test]
    fn whep_view_with_ssrcs_and_fid() {
        let offer = whep_offer();
        let mut next = 1000u32;
        let mut alloc = || {
            next += 1;
            next
        };
        let n = answer_view(&offer, &local(), &Preferences::default(), &mut alloc).unwrap();
        check_consistent(&offer, &n);
        assert_eq!(n.media.len(), 2);
        let (au, vi) = (&n.media[0], &n.media[1]);
        assert_eq!(
            (au.codec.name.as_str(), au.send_ssrc, au.send_rtx_ssrc),
            ("opus", Some(1001), None)
        );
        assert_eq!((vi.codec.name.as_str(), vi.codec.pt), ("VP8", 96));
        assert_eq!((vi.send_ssrc, vi.send_rtx_ssrc), (Some(1002), Some(1003)));
        // mid/rid/repaired-rid are never negotiated toward viewers.
        assert_eq!((vi.ext.mid, vi.ext.rid, vi.ext.rrid), (0, 0, 0));
        assert_eq!((vi.ext.twcc, vi.ext.abs_send_time), (3, 2));
        assert!(vi.rids.is_empty() && vi.ssrcs.is_empty());
        let l = lines(&n.answer);
        for want in [
            "a=sendonly",
            "a=msid:ils-ils video-1",
            "a=msid:ils-ils audio-0",
            "a=ssrc-group:FID 1002 1003",
            "a=ssrc:1002 cname:ils",
            "a=ssrc:1002 msid:ils-ils video-1",
            "a=ssrc:1003 cname:ils",
            "a=ssrc:1001 cname:ils",
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        ] {
            assert!(l.contains(&want), "answer lacks {want:?}:\n{}", n.answer);
        }
        assert!(!n.answer.contains("sdes:mid") && !n.answer.contains("a=recvonly"));
        assert!(!n.answer.contains("simulcast"));

        // Publisher -> viewer extension map.
        let p = answer_publish(CHROMIUM, &local()).unwrap();
        let map = p.media[1].ext.map_to(&vi.ext);
        assert!(map.contains(&(3, 3)) && map.contains(&(12, 12)));
        assert!(!map.iter().any(|(p, _)| *p == 4 || *p == 10 || *p == 11));
    }

    #[test]
    fn whep_prefers_room_codec() {
        let offer = whep_offer();
        let mut s = 0u32;
        let mut alloc = || {
            s += 7;
            s
        };
        let prefer = Preferences {
            video: vec!["h264".into()],
            audio: vec![],
        };
        let n = answer_view(&offer, &local(), &prefer, &mut alloc).unwrap();
        let vi = &n.media[1];
        // packetization-mode=1 + constrained baseline 42e01f wins among the six H264 entries.
        assert_eq!(
            (vi.codec.name.as_str(), vi.codec.pt, vi.codec.rtx_pt),
            ("H264", 108, Some(109))
        );
        assert_eq!(
            vi.codec.fmtp.as_deref(),
            Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
        );
        assert!(n.answer.contains(
            "a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
        ));
        // Unknown preferences fall back to the default order; VP9 picks profile-id=0.
        for (pref, want) in [("H265", 96), ("VP9", 98), ("AV1", 45)] {
            let prefer = Preferences {
                video: vec![pref.into()],
                audio: vec!["opus".into()],
            };
            let n = answer_view(&offer, &local(), &prefer, &mut alloc).unwrap();
            assert_eq!(n.media[1].codec.pt, want, "{pref}");
            check_consistent(&offer, &n);
        }
    }

    #[test]
    fn view_ssrc_allocator_misbehaving() {
        let offer = whep_offer();
        let e = answer_view(&offer, &local(), &Preferences::default(), &mut || 0).unwrap_err();
        assert_eq!(e.status, 500);
        let e = answer_view(&offer, &local(), &Preferences::default(), &mut || 5).unwrap_err();
        assert_eq!(e.status, 500);
        // Zeros and repeats are skipped when the allocator recovers.
        let mut seq = [0u32, 5, 5, 0, 6, 7].into_iter().chain(8..);
        let n = answer_view(&offer, &local(), &Preferences::default(), &mut || {
            seq.next().unwrap_or(1)
        })
        .unwrap();
        assert_eq!(n.media[0].send_ssrc, Some(5));
        assert_eq!(
            (n.media[1].send_ssrc, n.media[1].send_rtx_ssrc),
            (Some(6), Some(7))
        );
    }

    #[test]
    fn bad_local_params_are_500() {
        let mut l = local();
        l.cname = "a b".into();
        assert_eq!(answer_publish(CHROMIUM, &l).unwrap_err().status, 500);
        let mut l = local();
        l.fingerprint_sha256 = "AB:CD".into();
        assert_eq!(answer_publish(CHROMIUM, &l).unwrap_err().status, 500);
        let mut l = local();
        l.ice_ufrag = "x\r\na=evil".into();
        assert_eq!(answer_publish(CHROMIUM, &l).unwrap_err().status, 500);
    }

    const MIN_HDR: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n";
    const MIN_TRANSPORT: &str = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
        a=fingerprint:sha-256 93:1D:BF:C1:99:87:66:29:79:87:3A:5A:CB:33:A2:DA:14:4A:6E:DB:85:F5:7D:67:E3:C6:35:7D:5D:68:E2:F3\r\n\
        a=setup:actpass\r\na=mid:0\r\na=rtcp-mux\r\n";

    fn video_only(codecs: &str) -> String {
        format!("{MIN_HDR}m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\n{MIN_TRANSPORT}a=sendonly\r\n{codecs}")
    }

    #[test]
    fn minimal_offer_works() {
        let o = video_only("a=rtpmap:96 VP8/90000\r\n");
        let n = answer_publish(&o, &local()).unwrap();
        check_consistent(&o, &n);
        assert_eq!(n.media[0].codec.rtx_pt, None);
        assert!(n.answer.contains("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"));
    }

    #[test]
    fn rejects_h265_only() {
        let e = publish_err(&video_only(
            "a=rtpmap:96 H265/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n",
        ));
        assert_eq!(e.status, 406);
        assert_eq!(e.reason, "no common video codec: offered H265 only");
        let e = publish_err(&video_only(
            "a=rtpmap:96 H265/90000\r\na=rtpmap:97 H266/90000\r\n",
        ));
        assert_eq!(e.reason, "no common video codec: offered H265, H266");
        // Wrong clock rate is not VP8.
        let e = publish_err(&video_only("a=rtpmap:96 VP8/8000\r\n"));
        assert_eq!(e.status, 406);
    }

    #[test]
    fn h265_video_beside_opus_audio_rejects_only_video() {
        let o = CHROMIUM
            .replace("a=rtpmap:96 VP8/90000", "a=rtpmap:96 H265/90000")
            .replace("H264/90000", "H265/90000")
            .replace("AV1/90000", "H265/90000")
            .replace("VP9/90000", "H265/90000");
        let n = answer_publish(&o, &local()).unwrap();
        check_consistent(&o, &n);
        assert_eq!(n.media.len(), 1);
        assert!(n.answer.contains("a=group:BUNDLE 0\r\n"));
        assert!(n.answer.contains("m=video 0 UDP/TLS/RTP/SAVPF 96 97 102"));
    }

    #[test]
    fn rejects_missing_fingerprint() {
        let o: String = CHROMIUM
            .lines()
            .filter(|l| !l.starts_with("a=fingerprint"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        let e = publish_err(&o);
        assert_eq!(
            (e.status, e.reason.as_str()),
            (400, "DTLS fingerprint missing")
        );
        let o = CHROMIUM.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1");
        let e = publish_err(&o);
        assert_eq!(e.status, 400);
        assert!(
            e.reason.starts_with("DTLS fingerprint missing"),
            "{}",
            e.reason
        );
        assert!(e.reason.contains("sha-1"), "{}", e.reason);
        let o = CHROMIUM.replace("a=fingerprint:sha-256 93:1D", "a=fingerprint:sha-256 93:1G");
        assert_eq!(publish_err(&o).reason, "malformed sha-256 DTLS fingerprint");
        // Mixed case and extra algorithms are fine; the sha-256 one is returned upper-case.
        let o = CHROMIUM.replacen(
            "a=fingerprint:sha-256 93:1D",
            "a=fingerprint:sha-1 AA:BB\r\na=fingerprint:SHA-256 93:1d",
            1,
        );
        let n = answer_publish(&o, &local()).unwrap();
        assert_eq!(n.remote_fingerprint, format!("sha-256 {CHROME_FP}"));
        let o = CHROMIUM.replacen("sha-256 93:1D", "sha-256 94:1D", 1);
        assert_eq!(
            publish_err(&o).reason,
            "conflicting sha-256 DTLS fingerprints"
        );
    }

    #[test]
    fn rejects_missing_or_bad_ice_credentials() {
        let o: String = CHROMIUM
            .lines()
            .filter(|l| !l.starts_with("a=ice-ufrag"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        let e = publish_err(&o);
        assert_eq!(e.status, 400);
        assert_eq!(
            e.reason,
            "ICE credentials missing (a=ice-ufrag / a=ice-pwd)"
        );
        let o: String = CHROMIUM
            .lines()
            .filter(|l| !l.starts_with("a=ice-pwd"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        assert_eq!(publish_err(&o).status, 400);
        let o = CHROMIUM.replace("a=ice-ufrag:jKkx", "a=ice-ufrag:jK");
        assert!(publish_err(&o).reason.contains("ice-ufrag"));
    }

    #[test]
    fn rejects_over_limits() {
        let many = format!("{CHROMIUM}{}", "a=x-pad\r\n".repeat(2000));
        let e = publish_err(&many);
        assert_eq!(e.status, 400);
        assert_eq!(
            e.reason,
            format!(
                "SDP has {} lines; limit 2000",
                CHROMIUM.lines().count() + 2000
            )
        );
        let pad = format!("a=x-pad:{}\r\n", "p".repeat(4000));
        let big = format!("{CHROMIUM}{}", pad.repeat(17));
        let e = publish_err(&big);
        assert_eq!(e.status, 400);
        assert!(e.reason.ends_with("bytes; limit 65536"), "{}", e.reason);
        let long = format!("{CHROMIUM}a=x-pad:{}\r\n", "p".repeat(5000));
        assert!(publish_err(&long).reason.contains("limit 4096"));
        let n = crate::sdp::limits::MAX_MEDIA_SECTIONS + 1;
        let m: String = (0..n)
            .map(|i| format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\n"))
            .collect();
        let e = publish_err(&format!("{MIN_HDR}{m}"));
        assert_eq!(
            (e.status, e.reason.as_str()),
            (400, "SDP has 35 m-lines; limit 34")
        );
    }

    #[test]
    fn rejects_datachannel_only() {
        let o = format!(
            "{MIN_HDR}m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n{MIN_TRANSPORT}a=sctp-port:5000\r\n"
        );
        let e = publish_err(&o);
        assert_eq!(e.status, 406);
        assert_eq!(
            e.reason,
            "no audio or video m-line to publish: offered application"
        );
    }

    #[test]
    fn datachannel_beside_media_is_rejected_alone() {
        let o = CHROMIUM.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2").to_string()
            + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=sctp-port:5000\r\n";
        let n = answer_publish(&o, &local()).unwrap();
        check_consistent(&o, &n);
        assert!(n
            .answer
            .contains("m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n"));
        assert!(n.answer.contains("a=group:BUNDLE 0 1\r\n"));
    }

    #[test]
    fn rejects_duplicate_mids() {
        let o = CHROMIUM.replace("a=mid:1", "a=mid:0");
        let e = publish_err(&o);
        assert_eq!((e.status, e.reason.as_str()), (400, "duplicate mid \"0\""));
    }

    #[test]
    fn rejects_garbage() {
        for g in [
            "hello world",
            "",
            "v=1\r\n",
            "v=0\r\no=bad\r\n",
            "\u{feff}v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
        ] {
            let e = publish_err(g);
            assert_eq!(e.status, 400, "{g:?}: {}", e.reason);
            assert!(e.reason.starts_with("malformed SDP"), "{g:?}: {}", e.reason);
        }
        // Valid SDP without media.
        let e = publish_err("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        assert_eq!((e.status, e.reason.as_str()), (406, "offer has no m-lines"));
    }

    #[test]
    fn rejects_setup_passive_and_transport_problems() {
        let e = publish_err(&CHROMIUM.replace("a=setup:actpass", "a=setup:passive"));
        assert_eq!(e.status, 422);
        assert!(e.reason.contains("setup:passive"));
        // a=setup:active (offerer is client) is fine.
        answer_publish(
            &CHROMIUM.replace("a=setup:actpass", "a=setup:active"),
            &local(),
        )
        .unwrap();

        let e = publish_err(&CHROMIUM.replace("a=rtcp-mux\r\n", ""));
        assert_eq!(e.status, 406);
        assert!(e.reason.contains("rtcp-mux"), "{}", e.reason);

        let e = publish_err(&CHROMIUM.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"));
        assert_eq!(e.status, 406);
        assert!(
            e.reason.starts_with("unsupported transport RTP/AVP"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn direction_checks() {
        let e = publish_err(&CHROMIUM.replace("a=sendonly", "a=recvonly"));
        assert_eq!(e.status, 422);
        assert!(e.reason.contains("nothing to publish"), "{}", e.reason);
        let e = answer_view(CHROMIUM, &local(), &Preferences::default(), &mut || 1).unwrap_err();
        assert_eq!(e.status, 422);
        assert!(e.reason.contains("a viewer must receive"), "{}", e.reason);
        // sendrecv works for both.
        let o = CHROMIUM.replace("a=sendonly", "a=sendrecv");
        answer_publish(&o, &local()).unwrap();
        let mut s = 0;
        answer_view(&o, &local(), &Preferences::default(), &mut || {
            s += 1;
            s
        })
        .unwrap();
    }

    #[test]
    fn bundle_rules() {
        // No BUNDLE group: only the first usable m-line is accepted.
        let o = CHROMIUM.replace("a=group:BUNDLE 0 1\r\n", "");
        let n = answer_publish(&o, &local()).unwrap();
        check_consistent(&o, &n);
        assert_eq!(n.media.len(), 1);
        assert!(!n.answer.contains("a=group"));
        // An m-line outside the group is rejected.
        let o = CHROMIUM.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 1");
        let n = answer_publish(&o, &local()).unwrap();
        assert_eq!(
            n.media.iter().map(|m| m.mid.as_str()).collect::<Vec<_>>(),
            vec!["1"]
        );
        assert!(n.answer.contains("m=audio 0 "));
        // Port 0 without bundle-only = rejected by the offerer; with bundle-only = bundled.
        let o = CHROMIUM.replace("m=video 9", "m=video 0");
        assert_eq!(answer_publish(&o, &local()).unwrap().media.len(), 1);
        let o = CHROMIUM
            .replace("m=video 9", "m=video 0")
            .replace("a=mid:1\r\n", "a=mid:1\r\na=bundle-only\r\n");
        assert_eq!(answer_publish(&o, &local()).unwrap().media.len(), 2);
    }

    #[test]
    fn extmap_ids_above_14_need_allow_mixed() {
        let o = CHROMIUM.replace(
            "a=extmap:12 https://aomediacodec",
            "a=extmap:20 https://aomediacodec",
        );
        let n = answer_publish(&o, &local()).unwrap();
        assert_eq!(n.media[1].ext.dependency_descriptor, 20);
        let o = o.replace("a=extmap-allow-mixed\r\n", "");
        let n = answer_publish(&o, &local()).unwrap();
        assert_eq!(n.media[1].ext.dependency_descriptor, 0);
        assert!(!n.answer.contains("dependency-descriptor"));
        let e = publish_err(&CHROMIUM.replace("a=extmap:12 ", "a=extmap:0 "));
        assert_eq!(e.status, 400);
    }

    #[test]
    fn simulcast_needs_rid_extension() {
        let o: String = CHROMIUM
            .lines()
            .filter(|l| !l.contains("rtp-stream-id"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        let n = answer_publish(&o, &local()).unwrap();
        assert!(n.media[1].rids.is_empty());
        assert!(!n.answer.contains("a=simulcast"));
    }

    /// Firefox-style offer: session-level ICE credentials, fingerprint and setup, extmap with a
    /// direction, sendrecv transceivers, H264 before VP8.
    const FIREFOX_LIKE: &str = "v=0\r\no=mozilla...THIS_IS_SDPARTA-99.0 6 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=fingerprint:sha-256 93:1D:BF:C1:99:87:66:29:79:87:3A:5A:CB:33:A2:DA:14:4A:6E:DB:85:F5:7D:67:E3:C6:35:7D:5D:68:E2:F3\r\n\
        a=group:BUNDLE 0 1\r\na=ice-options:trickle\r\na=msid-semantic:WMS *\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\n\
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
        a=extmap:2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level\r\n\
        a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1\r\n\
        a=fmtp:101 0-15\r\na=ice-pwd:4e4c5c5c3b8a5bb2b6f5c2d2a1e0f9c8\r\na=ice-ufrag:8a1b2c3d\r\na=mid:0\r\n\
        a=msid:{a} {b}\r\na=rtcp-mux\r\na=rtpmap:109 opus/48000/2\r\na=rtpmap:9 G722/8000/1\r\n\
        a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=setup:actpass\r\n\
        a=ssrc:2655508255 cname:{c}\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 126 127 120 124\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\n\
        a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
        a=extmap:4 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
        a=extmap:5 urn:ietf:params:rtp-hdrext:toffset\r\n\
        a=extmap:6/recvonly http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\n\
        a=extmap:7 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
        a=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1\r\n\
        a=fmtp:127 apt=126\r\na=fmtp:120 max-fs=12288;max-fr=60\r\na=fmtp:124 apt=120\r\n\
        a=ice-pwd:4e4c5c5c3b8a5bb2b6f5c2d2a1e0f9c8\r\na=ice-ufrag:8a1b2c3d\r\na=mid:1\r\n\
        a=msid:{a} {d}\r\na=rtcp-fb:126 nack\r\na=rtcp-fb:126 nack pli\r\na=rtcp-fb:126 ccm fir\r\n\
        a=rtcp-fb:126 goog-remb\r\na=rtcp-fb:126 transport-cc\r\na=rtcp-fb:120 nack\r\na=rtcp-fb:120 nack pli\r\n\
        a=rtcp-fb:120 ccm fir\r\na=rtcp-fb:120 goog-remb\r\na=rtcp-fb:120 transport-cc\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
        a=rtpmap:126 H264/90000\r\na=rtpmap:127 rtx/90000\r\na=rtpmap:120 VP8/90000\r\na=rtpmap:124 rtx/90000\r\n\
        a=setup:actpass\r\na=ssrc:1000 cname:{c}\r\na=ssrc:1001 cname:{c}\r\na=ssrc-group:FID 1000 1001\r\n";

    #[test]
    fn firefox_like_publish_and_view() {
        let n = answer_publish(FIREFOX_LIKE, &local()).unwrap();
        check_consistent(FIREFOX_LIKE, &n);
        assert_eq!(n.remote_ufrag, "8a1b2c3d");
        assert_eq!(n.remote_fingerprint, format!("sha-256 {CHROME_FP}"));
        let (au, vi) = (&n.media[0], &n.media[1]);
        assert_eq!((au.codec.pt, au.codec.channels), (109, Some(2)));
        assert_eq!(
            au.ext,
            ExtIds {
                audio_level: 1,
                mid: 3,
                ..Default::default()
            }
        );
        assert_eq!(
            (vi.codec.name.as_str(), vi.codec.pt, vi.codec.rtx_pt),
            ("VP8", 120, Some(124))
        );
        // playout-delay is offered recvonly: Firefox will not send it to us.
        assert_eq!((vi.ext.playout_delay, vi.ext.toffset), (0, 5));
        assert_eq!(vi.ssrcs, vec![(1000, Some(1001))]);
        assert!(!n.answer.contains("playout-delay"));
        assert!(!n.answer.contains("csrc-audio-level"));
        let mut s = 10;
        let prefer = Preferences {
            video: vec!["H264".into()],
            audio: vec![],
        };
        let v = answer_view(FIREFOX_LIKE, &local(), &prefer, &mut || {
            s += 1;
            s
        })
        .unwrap();
        check_consistent(FIREFOX_LIKE, &v);
        assert_eq!(
            (
                v.media[1].codec.pt,
                v.media[1].send_ssrc,
                v.media[1].send_rtx_ssrc
            ),
            (126, Some(12), Some(13))
        );
        // Toward a viewer the recvonly extension is used, answered sendonly.
        assert_eq!(v.media[1].ext.playout_delay, 6);
        assert!(v.answer.contains(
            "a=extmap:6/sendonly http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\n"
        ));
    }

    #[test]
    fn every_truncation_is_handled() {
        for len in 0..=CHROMIUM.len() {
            let t = &CHROMIUM[..len];
            if let Ok(n) = answer_publish(t, &local()) {
                check_consistent(t, &n);
            }
        }
        let w = whep_offer();
        for len in 0..=w.len() {
            let t = &w[..len];
            let mut s = 0;
            if let Ok(n) = answer_view(t, &local(), &Preferences::default(), &mut || {
                s += 1;
                s
            }) {
                check_consistent(t, &n);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_strings_never_panic(s in "(?s).{0,600}") {
            let _ = answer_publish(&s, &local());
            let _ = answer_view(&s, &local(), &Preferences::default(), &mut || 1);
        }

        #[test]
        fn mutated_chromium_offers_never_panic(
            ops in proptest::collection::vec((0usize..200, 0u8..4, "[ -~]{0,60}"), 1..6)
        ) {
            let mut ls: Vec<String> = CHROMIUM.lines().map(str::to_string).collect();
            for (at, op, text) in ops {
                let i = at % ls.len().max(1);
                match op {
                    0 if !ls.is_empty() => { ls.remove(i); }
                    1 if !ls.is_empty() => { let l = ls[i].clone(); ls.insert(i, l); }
                    2 if !ls.is_empty() => {
                        // keep the type and attribute name, replace the value
                        let keep = ls[i].find(':').map_or(2.min(ls[i].len()), |p| p + 1);
                        ls[i] = format!("{}{text}", &ls[i][..keep]);
                    }
                    _ => ls.insert(i.min(ls.len()), text),
                }
            }
            let o = ls.join("\r\n") + "\r\n";
            if let Ok(n) = answer_publish(&o, &local()) {
                check_consistent(&o, &n);
            }
            let mut s = 0;
            let v = o.replace("a=sendonly", "a=recvonly");
            if let Ok(n) = answer_view(&v, &local(), &Preferences::default(), &mut || { s += 1; s }) {
                check_consistent(&v, &n);
            }
        }
    }
}
