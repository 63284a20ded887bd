//! End-to-end forward path of ils-rtp part 1, checked with the webrtc-rs `rtp` crate as the
//! independent receiver: a 3-layer VP8 simulcast publisher (packets marshalled by `rtp`), parsed,
//! keyframe-detected, layer-selected by `LegRewriter`, rewritten with `write_rewritten` and
//! `Vp8Rewriter`, then unmarshalled and depacketized by `rtp`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ils_rtp::codec::{is_keyframe, Codec};
use ils_rtp::ext::{find_ext, rewritten_len, write_rewritten, ExtMap, Rewrite};
use ils_rtp::header::RtpHeader;
use ils_rtp::leg::{LegDecision, LegRewriter};
use ils_rtp::vp8::Vp8Rewriter;
use rtp::packetizer::Depacketizer;
use webrtc_util::marshal::{Marshal, Unmarshal};

const PUB_TWCC_ID: u8 = 3;
const PUB_MID_ID: u8 = 4;
const PUB_RID_ID: u8 = 10;
const SUB_TWCC_ID: u8 = 5;
const SUB_MID_ID: u8 = 1;

struct Layer {
    ssrc: u32,
    seq: u16,
    ts: u32,
    picture_id: u16,
    tl0: u8,
    pkts_per_frame: usize,
    key_every: u32,
    key_phase: u32,
    long_pid: bool,
}

/// VP8 payload: descriptor (X, I, L, T) + frame tag (+ filler).
fn vp8_payload(l: &Layer, first: bool, key: bool) -> Vec<u8> {
    let mut v = vec![if first { 0x90 } else { 0x80 }, 0xE0];
    if l.long_pid {
        v.push(0x80 | (l.picture_id >> 8) as u8);
        v.push(l.picture_id as u8);
    } else {
        v.push((l.picture_id & 0x7F) as u8);
    }
    v.push(l.tl0);
    v.push(0x20); // TID 0, Y=1
    if first {
        v.push(if key { 0x50 } else { 0x51 });
        v.extend_from_slice(&[0x2E, 0x00, 0x9D, 0x01, 0x2A]);
    }
    v.extend_from_slice(&[0xAB; 40]);
    v
}

fn publisher_packet(l: &Layer, rid: &[u8], twcc: u16, payload: Vec<u8>, marker: bool) -> Vec<u8> {
    let mut header = rtp::header::Header {
        version: 2,
        marker,
        payload_type: 96,
        sequence_number: l.seq,
        timestamp: l.ts,
        ssrc: l.ssrc,
        extension: true,
        extension_profile: 0xBEDE,
        padding: twcc % 7 == 0, // some padded packets (padding must be stripped)
        ..Default::default()
    };
    for (id, d) in [
        (PUB_TWCC_ID, Bytes::copy_from_slice(&twcc.to_be_bytes())),
        (PUB_MID_ID, Bytes::from_static(b"0")),
        (PUB_RID_ID, Bytes::copy_from_slice(rid)),
    ] {
        header
            .extensions
            .push(rtp::header::Extension { id, payload: d });
    }
    rtp::packet::Packet {
        header,
        payload: Bytes::from(payload),
    }
    .marshal()
    .unwrap()
    .to_vec()
}

struct Received {
    seq: u16,
    ts: u32,
    picture_id: u16,
    tl0: u8,
    start: bool,
    twcc: u16,
}

fn run(long_pid: bool, seq_bases: [u16; 3], ts_bases: [u32; 3]) -> Vec<Received> {
    let rids: [&[u8]; 3] = [b"q", b"h", b"f"];
    let mut layers: Vec<Layer> = (0..3)
        .map(|i| Layer {
            ssrc: 1000 + i as u32,
            seq: seq_bases[i],
            ts: ts_bases[i],
            picture_id: [0x7FF0, 17, 3000][i],
            tl0: [250, 0, 128][i],
            pkts_per_frame: 1 + 2 * i,
            key_every: 40,
            key_phase: [5, 20, 31][i],
            long_pid,
        })
        .collect();
    let mut map = ExtMap::new();
    map.set(PUB_MID_ID, SUB_MID_ID); // keep mid, strip rid, replace twcc
    let mut leg = LegRewriter::new(0xC0FFEE, 90_000, 0);
    let mut vp8 = Vp8Rewriter::new();
    let mut twcc_out = 0u16;
    let mut pub_twcc = 0u16;
    let mut received = vec![];
    let mut out = vec![0u8; 1500];
    let t0 = Instant::now();
    for f in 0..200u32 {
        match f {
            60 => leg.set_target_layer(2),
            120 => leg.set_target_layer(1),
            _ => {}
        }
        let now = t0 + Duration::from_millis(33 * u64::from(f));
        for (li, l) in layers.iter_mut().enumerate() {
            let key = (f + l.key_phase) % l.key_every == 0;
            for k in 0..l.pkts_per_frame {
                pub_twcc = pub_twcc.wrapping_add(1);
                let raw = publisher_packet(
                    l,
                    rids[li],
                    pub_twcc,
                    vp8_payload(l, k == 0, key),
                    k + 1 == l.pkts_per_frame,
                );
                l.seq = l.seq.wrapping_add(1);

                let hdr = RtpHeader::parse(&raw).unwrap();
                assert_eq!(find_ext(&raw, &hdr, PUB_RID_ID), Some(rids[li]));
                let is_key = is_keyframe(Codec::Vp8, hdr.payload(&raw));
                assert_eq!(is_key, key && k == 0);
                let LegDecision::Forward { seq, ts, switched } =
                    leg.on_packet(now, li as u8, hdr.seq, hdr.ts, is_key)
                else {
                    continue;
                };
                let rw = Rewrite {
                    ssrc: leg.out_ssrc(),
                    seq,
                    ts,
                    pt: 100,
                    marker: hdr.marker,
                    ext_map: &map,
                    twcc: Some((SUB_TWCC_ID, twcc_out)),
                };
                twcc_out = twcc_out.wrapping_add(1);
                let n = rewritten_len(&raw, &hdr, &rw);
                assert_eq!(write_rewritten(&raw, &hdr, &rw, &mut out).unwrap(), n);
                let payload_at = n - hdr.payload_len;
                vp8.rewrite(&mut out[payload_at..n], switched).unwrap();

                // Independent receiver.
                let p = rtp::packet::Packet::unmarshal(&mut &out[..n]).unwrap();
                assert_eq!(p.header.ssrc, 0xC0FFEE);
                assert_eq!(p.header.payload_type, 100);
                assert!(!p.header.padding);
                assert_eq!(p.header.extension_profile, 0xBEDE);
                let ids: Vec<u8> = p.header.extensions.iter().map(|e| e.id).collect();
                assert_eq!(ids, vec![SUB_MID_ID, SUB_TWCC_ID]);
                let twcc = p.header.get_extension(SUB_TWCC_ID).unwrap();
                let mut d = rtp::codecs::vp8::Vp8Packet::default();
                let data = d.depacketize(&p.payload).unwrap();
                assert_eq!(data.len(), hdr.payload_len - 5 - usize::from(long_pid));
                received.push(Received {
                    seq: p.header.sequence_number,
                    ts: p.header.timestamp,
                    picture_id: d.picture_id,
                    tl0: d.tl0_pic_idx,
                    start: d.s == 1,
                    twcc: u16::from_be_bytes([twcc[0], twcc[1]]),
                });
            }
            l.ts = l.ts.wrapping_add(3000);
            l.picture_id = (l.picture_id + 1) & if long_pid { 0x7FFF } else { 0x7F };
            l.tl0 = l.tl0.wrapping_add(1);
        }
    }
    assert_eq!(leg.current_layer(), Some(1));
    received
}

fn check(received: &[Received], pid_mask: u16) {
    assert!(received.len() > 300, "{}", received.len());
    let mut frames = 0;
    for w in received.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "seq continuity");
        assert_eq!(w[1].twcc, w[0].twcc.wrapping_add(1), "twcc continuity");
        assert!(w[1].ts.wrapping_sub(w[0].ts) as i32 >= 0, "ts monotone");
        let dp = w[1].picture_id.wrapping_sub(w[0].picture_id) & pid_mask;
        let dt = w[1].tl0.wrapping_sub(w[0].tl0);
        if w[1].start {
            // new frame: +1 picture id and +1 TL0PICIDX (all frames are TL0 here)
            assert_eq!(dp, 1, "picture id +1 per frame");
            assert_eq!(dt, 1, "tl0picidx +1 per frame");
            assert!(w[1].ts != w[0].ts, "new frame, new ts");
            frames += 1;
        } else {
            assert_eq!((dp, dt), (0, 0), "same frame");
            assert_eq!(w[1].ts, w[0].ts, "same frame, same ts");
        }
    }
    assert!(frames > 100);
}

#[test]
fn simulcast_vp8_15bit_continuous_across_switches() {
    let r = run(true, [65_000, 100, 65_530], [u32::MAX - 10_000, 5, 1 << 31]);
    check(&r, 0x7FFF);
}

#[test]
fn simulcast_vp8_7bit_continuous_across_switches() {
    let r = run(false, [1, 65_535, 30_000], [0, u32::MAX, 12345]);
    check(&r, 0x7F);
}
