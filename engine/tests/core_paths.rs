//! Deterministic end-to-end paths through one shard `Core`, driven sans-IO with virtual time:
//! ICE, DTLS hand-off, SRTP, fan-out with rewriting, simulcast switching, consent, NACK/RTX,
//! PLI coalescing, publisher-side NACK and transport-cc, command validation, removal, dump.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ils_engine::core::{REPORT_INTERVAL, TWCC_INTERVAL};
use ils_rtp::ext::{ext_iter, find_ext};
use ils_rtp::rtcp::{self as rtcpw, RtcpPacket};
use ils_shm::{Command, Counter, LegSpec, RejectReason};
use ils_stun::StunMessage;

/// All RTCP packets of the given plain compound datagrams, with their raw bytes.
fn rtcp_packets(plain: &[Vec<u8>]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut v = Vec::new();
    for d in plain {
        let mut rest = &d[..];
        while rest.len() >= 4 {
            let len = 4 * (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1);
            let Some(p) = rest.get(..len) else { break };
            v.push((p[1], p[0] & 0x1f, p.to_vec()));
            rest = &rest[len..];
        }
    }
    v
}

/// Media SSRCs of the PLIs in `plain`.
fn plis(plain: &[Vec<u8>]) -> Vec<u32> {
    let mut v = Vec::new();
    for d in plain {
        for p in rtcpw::iter(d) {
            if let Ok(RtcpPacket::Pli { media_ssrc, .. }) = p {
                v.push(media_ssrc);
            }
        }
    }
    v
}

/// (media ssrc, lost seqs) of the NACKs in `plain`.
fn nacks(plain: &[Vec<u8>]) -> Vec<(u32, Vec<u16>)> {
    let mut v = Vec::new();
    for d in plain {
        for p in rtcpw::iter(d) {
            if let Ok(RtcpPacket::Nack {
                media_ssrc, items, ..
            }) = p
            {
                v.push((media_ssrc, items.collect()));
            }
        }
    }
    v
}

fn payload_marker(pkt: &[u8]) -> (u16, u8) {
    let h = parse(pkt);
    let p = h.payload(pkt);
    (u16::from_be_bytes([p[6], p[7]]), p[5])
}

#[test]
fn ice_replies_only_to_authenticated_requests_and_to_the_sender() {
    let mut h = Harness::bare(1);
    let p = Peer::new(PUBLISHER, pub_addr(), 0);
    h.cmd_ok(&Command::AddTransport {
        transport: PUBLISHER,
        ufrag: p.ufrag.as_bytes(),
        pwd: p.pwd.as_bytes(),
        consent_timeout_ms: 0,
    });

    // wrong password: no reply, no state, no event
    let mut bad = Peer::new(PUBLISHER, pub_addr(), 0);
    bad.pwd = "wrongwrongwrongwrongwrong".into();
    let req = bad.binding_request(true);
    h.datagram(pub_addr(), &req);
    assert!(h.sent().is_empty());
    assert_eq!(h.counter(Counter::DropStunAuth), 1);
    // unknown ufrag
    let mut unk = Peer::new(77, pub_addr(), 0);
    let req = unk.binding_request(true);
    h.datagram(pub_addr(), &req);
    assert!(h.sent().is_empty());
    assert_eq!(h.counter(Counter::DropUnknownUfrag), 1);
    // a valid request with one flipped byte in the integrity-covered part
    let mut req = h.publisher.binding_request(true);
    req[25] ^= 0x01;
    h.datagram(pub_addr(), &req);
    assert!(h.sent().is_empty());
    assert!(h.take_events().is_empty());
    assert_eq!(h.counter(Counter::TuplesLearned), 0);

    // authenticated: exactly one reply, to the sender, a success for the same transaction
    let req = h.publisher.binding_request(true);
    h.datagram(pub_addr(), &req);
    let sent = h.take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, pub_addr());
    assert!(
        sent[0].1.len() <= req.len(),
        "reply never larger than request"
    );
    let reply = StunMessage::parse(&sent[0].1).expect("reply parses");
    let q = StunMessage::parse(&req).expect("request parses");
    assert_eq!(reply.transaction_id(), q.transaction_id());
    assert_eq!(reply.class(), ils_stun::Class::SuccessResponse);
    assert_eq!(
        h.take_events(),
        vec![Ev::TupleLearned(PUBLISHER, pub_addr(), true)]
    );
    assert_eq!(h.counter(Counter::TuplesLearned), 1);

    // a second tuple (not nominating): reply goes to that tuple, TupleLearned not nominated
    let other = std::net::SocketAddr::from(([192, 168, 1, 9], 7000));
    let req = h.publisher.binding_request(false);
    h.datagram(other, &req);
    let sent = h.take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, other);
    assert_eq!(
        h.take_events(),
        vec![Ev::TupleLearned(PUBLISHER, other, false)]
    );
    // a repeated check from a known tuple: reply, no new event
    let req = h.publisher.binding_request(false);
    h.datagram(other, &req);
    assert_eq!(h.take_sent().len(), 1);
    assert!(h.take_events().is_empty());
}

#[test]
fn dtls_only_from_validated_tuples() {
    let mut h = Harness::bare(1);
    h.connect_publisher();
    h.take_events();
    h.tx.clear();
    let record = [
        22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5,
    ];
    h.datagram(pub_addr(), &record);
    assert_eq!(
        h.take_events(),
        vec![Ev::DtlsIn(PUBLISHER, record.to_vec())]
    );
    // ClientHello race (C4): same bytes from an address ICE never validated
    let stranger = std::net::SocketAddr::from(([10, 9, 9, 9], 4444));
    h.datagram(stranger, &record);
    assert!(h.take_events().is_empty());
    assert_eq!(h.counter(Counter::DropUnvalidatedDtls), 1);
    assert!(h.sent().is_empty());
    // control's handshake answer leaves to the selected tuple
    h.cmd_ok(&Command::SendDatagram {
        transport: PUBLISHER,
        data: &record,
    });
    assert_eq!(h.take_sent(), vec![(pub_addr(), record.to_vec())]);
}

#[test]
fn srtp_before_install_is_dropped() {
    let mut h = Harness::bare(1);
    let p = Peer::new(PUBLISHER, pub_addr(), 0);
    h.cmd_ok(&Command::AddTransport {
        transport: PUBLISHER,
        ufrag: p.ufrag.as_bytes(),
        pwd: p.pwd.as_bytes(),
        consent_timeout_ms: 0,
    });
    h.ice_check(None, true);
    h.tx.clear();
    let plain = h.pub_plain(&PubPacket {
        layer: 0,
        seq: 1,
        ts: 1,
        key: true,
        frame: 0,
        twcc: None,
    });
    let srtp = h.publisher.protect_rtp(&plain);
    h.datagram(pub_addr(), &srtp);
    assert_eq!(h.counter(Counter::DropNoSrtp), 1);
    // SRTCP too
    let mut pli = [0u8; 12];
    rtcpw::write_pli(&mut pli, 1, 2).unwrap();
    let srtcp = h.publisher.protect_rtcp(&pli);
    h.datagram(pub_addr(), &srtcp);
    assert_eq!(h.counter(Counter::DropNoSrtp), 2);
    assert!(h.sent().is_empty());
    // and from an unvalidated tuple it is an unknown tuple
    let stranger = std::net::SocketAddr::from(([10, 9, 9, 9], 4444));
    h.datagram(stranger, &srtp);
    assert_eq!(h.counter(Counter::DropUnknownTuple), 1);
}

#[test]
fn forwards_to_every_leg_with_rewritten_ssrc_pt_seq_and_extensions() {
    const K: usize = 4;
    let mut h = Harness::connected(K, 1, false);
    for f in 0..30u16 {
        h.publish_frame(f, [f == 0; 3]);
    }
    let sent = h.take_sent();
    assert!(sent.iter().all(|(a, _)| (0..K).any(|i| *a == sub_addr(i))));
    for i in 0..K {
        let pkts = h.sub_rtp(i, &sent);
        assert_eq!(pkts.len(), 30, "sub {i}: one packet per frame of layer 1");
        let first = parse(&pkts[0]);
        for (k, p) in pkts.iter().enumerate() {
            let hdr = parse(p);
            assert_eq!(hdr.ssrc, leg_ssrc(i));
            assert_eq!(hdr.pt, VP8_PT);
            assert_eq!(hdr.seq, first.seq.wrapping_add(k as u16), "continuous seqs");
            assert_eq!(hdr.ts, first.ts.wrapping_add(3000 * k as u32));
            assert_eq!(payload_marker(p), (k as u16, 1), "frame k of layer 1");
            // extensions: mid and EXTRA remapped to the receiver's ids; rid stripped.
            let ids: BTreeSet<u8> = ext_iter(p, &hdr).map(|(id, _)| id).collect();
            assert_eq!(ids, BTreeSet::from([RX_MID_EXT, RX_EXTRA_EXT]), "ext ids");
            assert_eq!(find_ext(p, &hdr, RX_MID_EXT), Some(&b"0"[..]));
            assert_eq!(
                find_ext(p, &hdr, RX_EXTRA_EXT),
                Some(&[0xA1, 0xA2, 0xA3][..])
            );
        }
    }
    assert_eq!(h.counter(Counter::ForwardedPackets), 30 * K as u64);
}

#[test]
fn layer_switch_happens_only_at_a_keyframe_of_the_target_layer() {
    let mut h = Harness::connected(2, 0, false);
    let mut all = Vec::new();
    for f in 0..20u16 {
        if f == 5 {
            h.cmd_ok(&Command::SelectLayer {
                leg: leg_id(0),
                layer: 2,
            });
        }
        // keyframes: frame 0 on all layers; frame 8 on layer 1 only (not the target);
        // frame 12 on layer 2.
        h.publish_frame(f, [f == 0, f == 0 || f == 8, f == 0 || f == 12]);
        all.extend(h.take_sent());
    }
    let pkts = h.sub_rtp(0, &all);
    let got: Vec<(u16, u8)> = pkts.iter().map(|p| payload_marker(p)).collect();
    let expected: Vec<(u16, u8)> = (0..=12)
        .map(|f| (f, 0))
        .chain((12..20).map(|f| (f, 2)))
        .collect();
    assert_eq!(got, expected);
    // one continuous stream across the switch
    let s0 = parse(&pkts[0]).seq;
    for (k, p) in pkts.iter().enumerate() {
        assert_eq!(parse(p).seq, s0.wrapping_add(k as u16));
        assert_eq!(parse(p).ssrc, leg_ssrc(0));
    }
    // the other leg stayed on layer 0
    let other: Vec<(u16, u8)> = h
        .sub_rtp(1, &all)
        .iter()
        .map(|p| payload_marker(p))
        .collect();
    assert_eq!(other, (0..20).map(|f| (f, 0)).collect::<Vec<_>>());
}

#[test]
fn select_layer_asks_the_publisher_for_a_keyframe() {
    let mut h = Harness::connected(1, 0, false);
    h.publish_frame(0, [true; 3]);
    h.advance(Duration::from_secs(3));
    h.timeout();
    h.tx.clear();
    h.cmd_ok(&Command::SelectLayer {
        leg: leg_id(0),
        layer: 2,
    });
    let sent = h.take_sent();
    assert_eq!(plis(&h.pub_rtcp(&sent)), vec![PUB_SSRC[2]]);
}

/// A subscriber's PLI starts the 1 s keyframe interval of layer 2; a leg switched to layer 2
/// 300 ms later (a viewer brought to a bigger slot, a stage move) must not wait for that
/// interval: its request goes out at once (URGENT_KEYFRAME_REQUEST_SPACING), while a second
/// subscriber PLI inside the interval is still coalesced (RELIABILITY B6).
#[test]
fn a_starting_leg_is_not_held_back_by_a_recent_subscriber_pli() {
    let mut h = Harness::connected(2, 0, false);
    h.publish_frame(0, [true; 3]);
    h.advance(Duration::from_secs(3));
    h.timeout();
    h.cmd_ok(&Command::SelectLayer {
        leg: leg_id(1),
        layer: 2,
    });
    h.publish_frame(1, [true; 3]); // leg 1 switches to layer 2 at this keyframe
    h.advance(Duration::from_secs(2));
    h.timeout();
    h.tx.clear();
    let pli_from = |h: &mut Harness, i: usize| {
        let mut b = [0u8; 12];
        rtcpw::write_pli(&mut b, 0xABCD, leg_ssrc(i)).unwrap();
        let srtcp = h.subs[i].protect_rtcp(&b);
        let addr = h.subs[i].addr;
        h.datagram(addr, &srtcp);
    };
    pli_from(&mut h, 1);
    let sent = h.take_sent();
    assert_eq!(
        plis(&h.pub_rtcp(&sent)),
        vec![PUB_SSRC[2]],
        "the PLI goes up"
    );
    h.advance(Duration::from_millis(300));
    h.timeout();
    pli_from(&mut h, 1);
    let sent = h.take_sent();
    assert!(
        plis(&h.pub_rtcp(&sent)).is_empty(),
        "a second PLI waits for the interval"
    );
    h.cmd_ok(&Command::SelectLayer {
        leg: leg_id(0),
        layer: 2,
    });
    let sent = h.take_sent();
    assert_eq!(
        plis(&h.pub_rtcp(&sent)),
        vec![PUB_SSRC[2]],
        "the switching leg's request is not held back by the interval"
    );
}

#[test]
fn consent_loss_stops_all_sending_to_the_transport() {
    let mut h = Harness::connected(2, 0, false);
    h.publish_frame(0, [true; 3]);
    assert_eq!(h.take_sent().len(), 2);
    // 31 s of virtual time: the publisher and sub 1 keep sending checks, sub 0 does not
    for _ in 0..31 {
        h.advance(Duration::from_secs(1));
        h.ice_check(None, false);
        h.ice_check(Some(1), false);
        h.timeout();
    }
    h.tx.clear();
    let evs = h.take_events();
    let lost: Vec<_> = evs
        .iter()
        .filter(|e| matches!(e, Ev::ConsentLost(_)))
        .collect();
    assert_eq!(lost, vec![&Ev::ConsentLost(sub_transport(0))]);
    assert_eq!(h.counter(Counter::ConsentLost), 1);
    for f in 1..10 {
        h.publish_frame(f, [false; 3]);
    }
    h.cmd_ok(&Command::SendDatagram {
        transport: sub_transport(0),
        data: &[22, 1, 2, 3],
    });
    h.advance(Duration::from_secs(2));
    h.timeout();
    let sent = h.take_sent();
    assert!(
        sent.iter().all(|(a, _)| *a != sub_addr(0)),
        "nothing goes to a transport after consent loss"
    );
    assert_eq!(h.sub_rtp(1, &sent).len(), 9, "sub 1 still served");
    // its old tuple is no longer admitted either
    let record = [22u8, 0xfe, 0xfd, 0, 0];
    h.datagram(sub_addr(0), &record);
    assert_eq!(h.counter(Counter::DropUnvalidatedDtls), 1);
    // a fresh authenticated check revives it
    h.ice_check(Some(0), true);
    h.tx.clear();
    h.publish_frame(10, [true; 3]);
    let sent = h.take_sent();
    assert_eq!(h.sub_rtp(0, &sent).len(), 1);
}

fn send_nack(h: &mut Harness, i: usize, media: u32, seqs: &[u16]) {
    let mut b = [0u8; 256];
    let n = rtcpw::write_nack(&mut b, 0xABCD, media, seqs).unwrap();
    let srtcp = h.subs[i].protect_rtcp(&b[..n]);
    let addr = h.subs[i].addr;
    h.datagram(addr, &srtcp);
}

#[test]
fn nack_gets_a_retransmission_rtx_when_negotiated() {
    let mut h = Harness::connected(2, 1, false);
    // sub 1: no RTX negotiated
    h.cmd_ok(&Command::RemoveLeg { leg: leg_id(1) });
    h.cmd_ok(&Command::AddLeg(leg_spec(1, 1, false, false)));
    let mut all = Vec::new();
    for f in 0..20u16 {
        h.publish_frame(f, [f == 0; 3]);
        all.extend(h.take_sent());
    }
    let orig0 = h.sub_rtp(0, &all);
    let orig1 = h.sub_rtp(1, &all);
    let want0 = parse(&orig0[5]).seq;
    let want1 = parse(&orig1[7]).seq;
    send_nack(&mut h, 0, leg_ssrc(0), &[want0]);
    send_nack(&mut h, 1, leg_ssrc(1), &[want1]);
    let sent = h.take_sent();
    assert_eq!(h.counter(Counter::NackReceived), 2);
    assert_eq!(h.counter(Counter::RtxSent), 2);
    // sub 0: RTX (RFC 4588) on its RTX SSRC/pt, OSN first, then the original payload
    let r = h.sub_rtp(0, &sent);
    assert_eq!(r.len(), 1);
    let rh = parse(&r[0]);
    let oh = parse(&orig0[5]);
    assert_eq!(rh.ssrc, leg_rtx_ssrc(0));
    assert_eq!(rh.pt, RTX_PT);
    assert_eq!(rh.ts, oh.ts);
    let rp = rh.payload(&r[0]);
    assert_eq!(u16::from_be_bytes([rp[0], rp[1]]), want0);
    assert_eq!(&rp[2..], oh.payload(&orig0[5]));
    // sub 1: plain resend on the media SSRC with the same seq: identical packet. (A receiver
    // that lost the original has no replay entry for it: model that with a fresh context.)
    h.subs[1].recv = Peer::new(sub_transport(1), sub_addr(1), 2).recv;
    let r = h.sub_rtp(1, &sent);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0], orig1[7]);
    // a NACK for something never sent yields nothing
    send_nack(&mut h, 0, leg_ssrc(0), &[want0.wrapping_add(1000)]);
    assert!(h.take_sent().is_empty());
}

#[test]
fn pli_flood_is_coalesced_to_one_per_interval() {
    let mut h = Harness::connected(2, 1, false);
    h.publish_frame(0, [true; 3]);
    h.advance(Duration::from_secs(3));
    h.timeout();
    h.tx.clear();
    let coalesced_before = h.counter(Counter::KeyframeRequestsCoalesced);
    for k in 0..100usize {
        let i = k % 2;
        let mut b = [0u8; 12];
        rtcpw::write_pli(&mut b, 0xABCD, leg_ssrc(i)).unwrap();
        let srtcp = h.subs[i].protect_rtcp(&b);
        let addr = h.subs[i].addr;
        h.datagram(addr, &srtcp);
    }
    assert_eq!(h.counter(Counter::PliReceived), 100);
    let sent = h.take_sent();
    assert_eq!(
        plis(&h.pub_rtcp(&sent)),
        vec![PUB_SSRC[1]],
        "exactly one PLI right away"
    );
    assert!(sent.iter().all(|(a, _)| *a == pub_addr()));
    assert!(h.counter(Counter::KeyframeRequestsCoalesced) - coalesced_before >= 99);
    // through the end of the interval: at most one more
    let mut later = 0;
    for _ in 0..150 {
        h.advance(Duration::from_millis(10));
        h.timeout();
        let s = h.take_sent();
        later += plis(&h.pub_rtcp(&s)).len();
    }
    assert!(later <= 1, "{later} PLIs after the interval");
}

#[test]
fn publisher_seq_gap_produces_a_nack_to_the_publisher() {
    let mut h = Harness::connected(1, 0, false);
    for f in (0..12u16).filter(|f| *f != 6 && *f != 7) {
        h.publish(&PubPacket {
            layer: 0,
            seq: src_seq(0, f),
            ts: src_ts(f),
            key: f == 0,
            frame: f,
            twcc: None,
        });
    }
    h.tx.clear();
    let mut got = Vec::new();
    for _ in 0..50 {
        h.advance(Duration::from_millis(10));
        h.timeout();
        let s = h.take_sent();
        got.extend(nacks(&h.pub_rtcp(&s)));
        if !got.is_empty() {
            break;
        }
    }
    assert!(!got.is_empty(), "no NACK within 500 ms");
    assert_eq!(got[0].0, PUB_SSRC[0]);
    let lost: BTreeSet<u16> = got[0].1.iter().copied().collect();
    assert_eq!(lost, BTreeSet::from([src_seq(0, 6), src_seq(0, 7)]));
    assert!(h.counter(Counter::NackSent) >= 1);
}

#[test]
fn transport_cc_feedback_reaches_the_publisher_within_100ms() {
    let mut h = Harness::connected(1, 0, true);
    let start = h.now;
    for f in 0..10u16 {
        for l in 0..3u8 {
            h.publish(&PubPacket {
                layer: l,
                seq: src_seq(l, f),
                ts: src_ts(f),
                key: f == 0,
                frame: f,
                twcc: Some(500 + f * 3 + u16::from(l)),
            });
        }
        h.advance(Duration::from_millis(2));
    }
    // the forwarded packets carry the receiver's transport-cc id with increasing numbers
    let sent = h.take_sent();
    let fwd = h.sub_rtp(0, &sent);
    assert_eq!(fwd.len(), 10);
    let tw: Vec<u16> = fwd
        .iter()
        .map(|p| {
            let hd = parse(p);
            let v = find_ext(p, &hd, RX_TWCC_EXT).expect("twcc ext on forwarded packet");
            u16::from_be_bytes([v[0], v[1]])
        })
        .collect();
    for w in tw.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1));
    }
    let mut feedback = None;
    while h.now <= start + TWCC_INTERVAL {
        h.timeout();
        let s = h.take_sent();
        let pkts = rtcp_packets(&h.pub_rtcp(&s));
        if let Some(p) = pkts
            .into_iter()
            .find(|(pt, fmt, _)| *pt == 205 && *fmt == 15)
        {
            feedback = Some(p.2);
            break;
        }
        h.advance(Duration::from_millis(5));
    }
    let fb = feedback.expect("transport-cc feedback within 100 ms");
    let mut st = [ils_rtp::twcc::TwccStatus {
        seq: 0,
        delta_ticks: None,
    }; 64];
    let (base, _, _, n) = ils_rtp::twcc::decode_feedback(&fb[4..], &mut st).unwrap();
    assert_eq!(base, 500);
    assert_eq!(n, 30);
    assert!(st[..n].iter().all(|s| s.delta_ticks.is_some()));
}

#[test]
fn receiver_reports_and_stats_every_report_interval() {
    let mut h = Harness::connected(1, 0, false);
    h.publish_frame(0, [true; 3]);
    h.tx.clear();
    h.advance(REPORT_INTERVAL);
    h.timeout();
    let s = h.take_sent();
    let rr: Vec<_> = rtcp_packets(&h.pub_rtcp(&s))
        .into_iter()
        .filter(|(pt, _, _)| *pt == 201)
        .collect();
    assert_eq!(rr.len(), 1);
    assert_eq!(rr[0].1, 3, "one report block per layer");
    let stats = h
        .take_events()
        .into_iter()
        .filter(|e| *e == Ev::Stats)
        .count();
    assert_eq!(stats, 2 + 1 + 1, "2 transports, 1 leg, 1 track");
}

/// Everything DumpState reports, for "state unchanged" comparisons.
fn dump(h: &mut Harness) -> Vec<Ev> {
    h.take_events();
    h.cmd_ok(&Command::DumpState);
    let mut e = h.take_events();
    // transports come from a slab, tracks from a map: order-insensitive comparison
    e.sort_by_key(|x| format!("{x:?}"));
    e
}

#[test]
fn invalid_commands_are_rejected_and_change_nothing() {
    let mut h = Harness::connected(2, 1, false);
    let before = dump(&mut h);
    let (tc, lc) = (h.core.transport_count(), h.core.leg_count());
    let p = Peer::new(sub_transport(0), sub_addr(0), 1);
    let k16 = [1u8; 16];
    let s14 = [2u8; 14];
    let mut spec_home1 = video_spec(false);
    spec_home1.track = 9;
    spec_home1.home_shard = 1;
    let mut spec_unknown_tr = video_spec(false);
    spec_unknown_tr.track = 9;
    spec_unknown_tr.transport = 4242;
    let mut spec_no_enc = video_spec(false);
    spec_no_enc.track = 9;
    spec_no_enc.n_encodings = 0;
    let mut leg_dup = leg_spec(0, 0, false, false);
    leg_dup.transport = sub_transport(1);
    let mut leg_no_track = leg_spec(0, 0, false, false);
    leg_no_track.leg = 77;
    leg_no_track.track = 99;
    let mut leg_no_tr = leg_spec(0, 0, false, false);
    leg_no_tr.leg = 77;
    leg_no_tr.transport = 4242;
    let mut leg_bad_layer = leg_spec(0, 0, false, false);
    leg_bad_layer.leg = 77;
    leg_bad_layer.layer = 3;
    let mut leg_bad_ext = leg_spec(0, 0, false, false);
    leg_bad_ext.leg = 77;
    leg_bad_ext.n_ext_map = 17;
    let cases: Vec<(Command<'_>, RejectReason)> = vec![
        (
            Command::AddTransport {
                transport: sub_transport(0),
                ufrag: b"freshufrag",
                pwd: p.pwd.as_bytes(),
                consent_timeout_ms: 0,
            },
            RejectReason::DuplicateTransport,
        ),
        (
            Command::AddTransport {
                transport: 555,
                ufrag: p.ufrag.as_bytes(),
                pwd: p.pwd.as_bytes(),
                consent_timeout_ms: 0,
            },
            RejectReason::DuplicateTransport,
        ),
        (
            Command::AddTransport {
                transport: 555,
                ufrag: b"abc",
                pwd: p.pwd.as_bytes(),
                consent_timeout_ms: 0,
            },
            RejectReason::BadField,
        ),
        (
            Command::AddTransport {
                transport: 555,
                ufrag: b"abcd",
                pwd: b"short",
                consent_timeout_ms: 0,
            },
            RejectReason::BadField,
        ),
        (
            Command::RemoveTransport { transport: 4242 },
            RejectReason::UnknownTransport,
        ),
        (
            Command::InstallSrtp {
                transport: 4242,
                profile: PROFILE,
                rx_key: &k16,
                rx_salt: &s14,
                tx_key: &k16,
                tx_salt: &s14,
            },
            RejectReason::UnknownTransport,
        ),
        (
            Command::InstallSrtp {
                transport: sub_transport(0),
                profile: PROFILE,
                rx_key: &k16[..15],
                rx_salt: &s14,
                tx_key: &k16,
                tx_salt: &s14,
            },
            RejectReason::BadKeyLength,
        ),
        (
            Command::InstallSrtp {
                transport: sub_transport(0),
                profile: PROFILE,
                rx_key: &k16,
                rx_salt: &s14,
                tx_key: &k16,
                tx_salt: &s14[..12],
            },
            RejectReason::BadKeyLength,
        ),
        (
            Command::InstallSrtp {
                transport: sub_transport(0),
                profile: 0x0007, // GCM wants 12-byte salts
                rx_key: &k16,
                rx_salt: &s14,
                tx_key: &k16,
                tx_salt: &s14,
            },
            RejectReason::BadKeyLength,
        ),
        (
            Command::InstallSrtp {
                transport: sub_transport(0),
                profile: 0x0002,
                rx_key: &k16,
                rx_salt: &s14,
                tx_key: &k16,
                tx_salt: &s14,
            },
            RejectReason::UnknownProfile,
        ),
        (
            Command::SendDatagram {
                transport: 4242,
                data: &[22],
            },
            RejectReason::UnknownTransport,
        ),
        (
            Command::SendDatagram {
                transport: sub_transport(0),
                data: &[],
            },
            RejectReason::TooLarge,
        ),
        (
            Command::AddTrack(video_spec(false)),
            RejectReason::DuplicateTrack,
        ),
        (Command::AddTrack(spec_home1), RejectReason::BadField),
        (
            Command::AddTrack(spec_unknown_tr),
            RejectReason::UnknownTransport,
        ),
        (Command::AddTrack(spec_no_enc), RejectReason::BadField),
        (
            Command::RemoveTrack { track: 99 },
            RejectReason::UnknownTrack,
        ),
        (Command::AddLeg(leg_dup), RejectReason::DuplicateLeg),
        (Command::AddLeg(leg_no_track), RejectReason::UnknownTrack),
        (Command::AddLeg(leg_no_tr), RejectReason::UnknownTransport),
        (Command::AddLeg(leg_bad_layer), RejectReason::BadField),
        (Command::AddLeg(leg_bad_ext), RejectReason::BadField),
        (Command::RemoveLeg { leg: 77 }, RejectReason::UnknownLeg),
        (
            Command::SelectLayer {
                leg: leg_id(0),
                layer: 3,
            },
            RejectReason::BadField,
        ),
        (
            Command::SelectLayer { leg: 77, layer: 0 },
            RejectReason::UnknownLeg,
        ),
        (
            Command::RequestKeyframe {
                track: VIDEO_TRACK,
                layer: 3,
            },
            RejectReason::BadField,
        ),
        (
            Command::RequestKeyframe {
                track: 99,
                layer: 0,
            },
            RejectReason::UnknownTrack,
        ),
    ];
    let rejected_before = h.counter(Counter::CommandsRejected);
    for (c, want) in &cases {
        assert_eq!(h.cmd_reject(c), Some(*want), "{c:?}");
        assert!(h.sent().is_empty(), "{c:?} sent something");
    }
    assert_eq!(
        h.counter(Counter::CommandsRejected) - rejected_before,
        cases.len() as u64
    );
    assert_eq!(
        (h.core.transport_count(), h.core.leg_count()),
        (tc, lc),
        "counts unchanged"
    );
    assert_eq!(dump(&mut h), before, "state unchanged");
    // media still flows with the original keys
    h.publish_frame(0, [true; 3]);
    let sent = h.take_sent();
    assert_eq!(h.sub_rtp(0, &sent).len(), 1);
    assert_eq!(h.sub_rtp(1, &sent).len(), 1);
}

#[test]
fn removal_frees_everything() {
    let mut h = Harness::connected(3, 0, false);
    h.publish_frame(0, [true; 3]);
    h.tx.clear();
    assert_eq!((h.core.transport_count(), h.core.leg_count()), (4, 3));
    h.cmd_ok(&Command::RemoveLeg { leg: leg_id(0) });
    assert_eq!(h.core.leg_count(), 2);
    h.cmd_ok(&Command::RemoveTransport {
        transport: sub_transport(1),
    });
    assert_eq!((h.core.transport_count(), h.core.leg_count()), (3, 1));
    h.publish_frame(1, [false; 3]);
    let sent = h.take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, sub_addr(2));
    h.cmd_ok(&Command::RemoveTrack { track: VIDEO_TRACK });
    assert_eq!(h.core.leg_count(), 0);
    h.publish_frame(2, [false; 3]);
    assert!(h.sent().is_empty());
    for t in [PUBLISHER, sub_transport(0), sub_transport(2)] {
        h.cmd_ok(&Command::RemoveTransport { transport: t });
    }
    assert_eq!((h.core.transport_count(), h.core.leg_count()), (0, 0));
    h.take_events();
    h.cmd_ok(&Command::DumpState);
    assert_eq!(h.take_events(), vec![Ev::DumpDone(0)]);
    // nothing of the old state is reachable: old tuples and ufrags are unknown
    let before_tuple = h.counter(Counter::DropUnknownTuple);
    h.publish_frame(3, [false; 3]);
    assert_eq!(h.counter(Counter::DropUnknownTuple), before_tuple + 3);
    h.ice_check(Some(0), true);
    assert_eq!(h.counter(Counter::DropUnknownUfrag), 1);
    assert!(h.sent().is_empty());
    // ids and slots are reusable
    let mut h2 = h;
    h2.connect_publisher();
    h2.connect_sub(0);
    h2.cmd_ok(&Command::AddTrack(video_spec(false)));
    h2.cmd_ok(&Command::AddLeg(leg_spec(0, 0, false, false)));
    assert_eq!((h2.core.transport_count(), h2.core.leg_count()), (2, 1));
}

#[test]
fn dump_state_reports_everything_then_done() {
    let mut h = Harness::connected(2, 1, false);
    h.cmd_ok(&Command::DumpState);
    let ev = h.take_events();
    assert_eq!(ev.last(), Some(&Ev::DumpDone(0)));
    let transports: BTreeSet<u32> = ev
        .iter()
        .filter_map(|e| match e {
            Ev::StateTransport(t) => Some(*t),
            _ => None,
        })
        .collect();
    assert_eq!(
        transports,
        BTreeSet::from([PUBLISHER, sub_transport(0), sub_transport(1)])
    );
    let tracks: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Ev::StateTrack(t) => Some(*t),
            _ => None,
        })
        .collect();
    assert_eq!(tracks, vec![video_spec(false)]);
    let mut legs: Vec<LegSpec> = ev
        .iter()
        .filter_map(|e| match e {
            Ev::StateLeg(l) => Some(*l),
            _ => None,
        })
        .collect();
    legs.sort_by_key(|l| l.leg);
    assert_eq!(
        legs,
        vec![leg_spec(0, 1, true, false), leg_spec(1, 1, true, false)]
    );
    assert_eq!(ev.len(), 3 + 1 + 2 + 1);
}

/// Regression: a client that reconnects as a new transport from the same 5-tuple (same socket)
/// must keep its media when control then removes the old transport. The old transport's
/// removal used to delete the shared tuple from the shard's tuple map, black-holing the new
/// transport's DTLS/SRTP (its later checks do not re-learn a tuple it already has).
#[test]
fn removing_an_old_transport_does_not_unmap_a_tuple_now_owned_by_another() {
    let mut h = Harness::connected(1, 0, false);
    // transport 300 = sub 0's reconnection from the same address, with new credentials/keys
    let mut again = Peer::new(300, sub_addr(0), 42);
    h.cmd_ok(&Command::AddTransport {
        transport: 300,
        ufrag: again.ufrag.as_bytes(),
        pwd: again.pwd.as_bytes(),
        consent_timeout_ms: 0,
    });
    let req = again.binding_request(true);
    h.datagram(sub_addr(0), &req);
    let (a, b, c, d) = (again.up_key, again.up_salt, again.down_key, again.down_salt);
    h.cmd_ok(&Command::InstallSrtp {
        transport: 300,
        profile: PROFILE,
        rx_key: &a,
        rx_salt: &b,
        tx_key: &c,
        tx_salt: &d,
    });
    h.cmd_ok(&Command::RemoveTransport {
        transport: sub_transport(0),
    });
    h.take_events();
    h.tx.clear();
    // DTLS from the shared tuple reaches control for the new transport
    let record = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9];
    h.datagram(sub_addr(0), &record);
    assert_eq!(h.take_events(), vec![Ev::DtlsIn(300, record.to_vec())]);
    // and its SRTCP is accepted (a PLI on no leg: counted as received)
    let mut pli = [0u8; 12];
    rtcpw::write_pli(&mut pli, 1, 2).unwrap();
    let s = again.protect_rtcp(&pli);
    h.datagram(sub_addr(0), &s);
    assert_eq!(h.counter(Counter::DropUnknownTuple), 0);
    assert_eq!(h.counter(Counter::PliReceived), 1);
    // the same holds after the new transport's consent checks continue
    let req = again.binding_request(false);
    h.datagram(sub_addr(0), &req);
    h.datagram(sub_addr(0), &record);
    assert_eq!(h.take_events(), vec![Ev::DtlsIn(300, record.to_vec())]);
}
