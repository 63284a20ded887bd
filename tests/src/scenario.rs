//! Shared pieces of the engine scenarios: track/leg specs as a browser's offer would give
//! them, synthetic VP8/Opus packets, and connecting a [`TestPeer`] through a [`TestControl`].

use std::sync::Arc;

use bytes::Bytes;
use ils_shm::{EncodingSpec, LegSpec, MediaKind, ShortStr, TrackSpec};

use crate::control::TestControl;
use crate::peer::TestPeer;

/// Publisher transport id used by the scenarios.
pub const PUBLISHER: u32 = 1;
/// Video track id.
pub const VIDEO_TRACK: u32 = 1;
/// Audio track id.
pub const AUDIO_TRACK: u32 = 2;

/// Header extension id of `mid` in the synthetic offer.
pub const MID_EXT: u8 = 1;
/// Header extension id of `rid`.
pub const RID_EXT: u8 = 10;

/// A `ShortStr` from a test literal.
pub fn short(s: &str) -> ShortStr {
    ShortStr::from_bytes(s.as_bytes()).expect("short test strings fit in 16 bytes")
}

/// A VP8 track with 3 rid-learned encodings (q, h, f), published on shard 0.
pub fn video_spec() -> TrackSpec {
    let mut encodings = [EncodingSpec::default(); 3];
    for (i, r) in ["q", "h", "f"].iter().enumerate() {
        encodings[i].rid = short(r);
    }
    TrackSpec {
        track: VIDEO_TRACK,
        transport: PUBLISHER,
        home_shard: 0,
        kind: MediaKind::Video,
        codec: 1,
        clock_rate: 90_000,
        pt: 96,
        rtx_pt: 0,
        mid: short("0"),
        mid_ext: MID_EXT,
        rid_ext: RID_EXT,
        rrid_ext: 0,
        twcc_ext: 0,
        n_encodings: 3,
        encodings,
    }
}

/// An Opus track, published on shard 0.
pub fn audio_spec() -> TrackSpec {
    TrackSpec {
        track: AUDIO_TRACK,
        transport: PUBLISHER,
        home_shard: 0,
        kind: MediaKind::Audio,
        codec: 0,
        clock_rate: 48_000,
        pt: 111,
        rtx_pt: 0,
        mid: short("1"),
        mid_ext: MID_EXT,
        rid_ext: 0,
        rrid_ext: 0,
        twcc_ext: 0,
        n_encodings: 1,
        encodings: [EncodingSpec::default(); 3],
    }
}

/// A leg forwarding `track` to `transport` with the `mid` extension kept.
pub fn leg(
    leg: u32,
    track: u32,
    transport: u32,
    ssrc: u32,
    pt: u8,
    layer: u8,
    rtx: Option<(u32, u8)>,
) -> LegSpec {
    let (rtx_ssrc, rtx_pt) = rtx.unwrap_or((0, 0));
    let mut ext_map = [(0u8, 0u8); 16];
    ext_map[0] = (MID_EXT, MID_EXT);
    LegSpec {
        leg,
        track,
        transport,
        ssrc,
        rtx_ssrc,
        pt,
        rtx_pt,
        layer,
        twcc_ext: 0,
        n_ext_map: 1,
        ext_map,
    }
}

/// VP8 payload: descriptor with a 15-bit picture id, then a 1-byte "frame header" whose low bit
/// is the inverse keyframe flag, then (layer, frame) so receivers can tell what they got.
pub fn vp8_payload(frame: u16, layer: u8, key: bool) -> Bytes {
    let mut p = vec![0x90, 0x80, 0x80 | (frame >> 8) as u8 & 0x7f, frame as u8];
    p.push(if key { 0x00 } else { 0x01 });
    p.extend_from_slice(&[layer, (frame >> 8) as u8, frame as u8]);
    p.extend(std::iter::repeat_n(0xAB, 300 + 200 * usize::from(layer)));
    Bytes::from(p)
}

/// An RTP packet with `mid` (and `rid`) header extensions.
#[allow(clippy::too_many_arguments)]
pub fn rtp_packet(
    ssrc: u32,
    pt: u8,
    seq: u16,
    ts: u32,
    mid: &str,
    rid: Option<&str>,
    payload: Bytes,
) -> rtp::packet::Packet {
    let mut extensions = vec![rtp::header::Extension {
        id: MID_EXT,
        payload: Bytes::copy_from_slice(mid.as_bytes()),
    }];
    if let Some(r) = rid {
        extensions.push(rtp::header::Extension {
            id: RID_EXT,
            payload: Bytes::copy_from_slice(r.as_bytes()),
        });
    }
    rtp::packet::Packet {
        header: rtp::header::Header {
            version: 2,
            padding: false,
            extension: true,
            marker: true,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            csrc: vec![],
            extension_profile: 0xBEDE,
            extensions,
            extensions_padding: 0,
        },
        payload,
    }
}

/// Register `transport` on `shard`, connect a fresh [`TestPeer`] (ICE + DTLS) and install keys.
pub async fn connect(
    ctl: &Arc<TestControl>,
    ports: &[u16],
    shard: usize,
    transport: u32,
    cert: &webrtc_dtls::crypto::Certificate,
) -> anyhow::Result<TestPeer> {
    let ufrag = format!("u{transport:06}");
    let pwd = format!("p{transport:06}x0123456789abcdefghij");
    let mut peer = TestPeer::new(&format!("c{transport}"), "clientpassword0123456789")?;
    let server = ctl.add_transport(
        shard,
        transport,
        &ufrag,
        &pwd,
        cert,
        peer.certificate_fingerprint(),
    )?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports[shard]));
    peer.connect(addr, &ufrag, &pwd).await?;
    let outcome = server.await??;
    ctl.install_keys(shard, transport, &outcome)?;
    Ok(peer)
}
