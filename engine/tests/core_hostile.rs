//! Hostile input at the `Core` level (RELIABILITY B1, B2, B3, B5, B7, B8, B9, C1, D6 and
//! promise 3): every bad datagram is dropped and counted under the expected reason, nothing is
//! forwarded that did not pass SRTP authentication, and nothing is sent to an address that has
//! not proven consent.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ils_engine::core::MAX_SSRCS_PER_TRANSPORT;
use ils_shm::{Command, Counter};
use ils_srtp::{Profile, SrtpContext};
use ils_stun::{attr, Class, StunWriter, METHOD_BINDING};
use proptest::prelude::*;

fn stranger(n: u16) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 7], 40_000 + n))
}

/// Sum of every `drop_*` counter.
fn drops(h: &Harness) -> u64 {
    Counter::ALL
        .iter()
        .filter(|c| c.name().starts_with("drop_"))
        .map(|&c| h.counter(c))
        .sum()
}

/// Everything that was forwarded or sent, as a count (hostile input must add nothing).
fn forwarded(h: &Harness) -> u64 {
    h.counter(Counter::ForwardedPackets) + h.counter(Counter::RtxSent)
}

/// A datagram of exactly `len` bytes shaped like `class` (as far as the length allows).
fn shaped(class: &str, len: usize, fill: u8) -> Vec<u8> {
    let mut b = vec![fill; len];
    let head: &[u8] = match class {
        // Binding request, length field matching the rest, magic cookie
        "stun" => &[
            0x00,
            0x01,
            0x00,
            (len.saturating_sub(20) & 0xff) as u8,
            0x21,
            0x12,
            0xA4,
            0x42,
        ],
        // DTLS 1.2 handshake record
        "dtls" => &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        // RTP, pt 96, publisher layer-0 SSRC
        "rtp" => &[0x80, 0x60, 0x12, 0x34, 0, 0, 0, 1, 0x11, 0x11, 0x00, 0x00],
        // RTCP receiver report
        "rtcp" => &[0x81, 201, 0x00, 0x07, 0, 0, 0x13, 0x88],
        // SRTCP: sender report with E bit + index and a tag's worth of bytes
        "srtcp" => &[0x80, 200, 0x00, 0x06, 0, 0, 0x13, 0x88, 0x80, 0, 0, 1],
        _ => &[],
    };
    let n = head.len().min(len);
    b[..n].copy_from_slice(&head[..n]);
    b
}

#[test]
fn b1_short_datagrams_of_every_shape_and_length_are_dropped_and_counted() {
    let mut h = Harness::connected(1, 0, false);
    h.publish_frame(0, [true; 3]);
    h.tx.clear();
    let base_fwd = forwarded(&h);
    let sources = [stranger(1), pub_addr(), sub_addr(0)];
    let mut injected = 0u64;
    let mut dtls_events = 0u64;
    let d0 = drops(&h);
    for class in ["stun", "dtls", "rtp", "rtcp", "srtcp"] {
        for len in 0..=64usize {
            for fill in [0x00u8, 0xff, 0x5a] {
                for &from in &sources {
                    let b = shaped(class, len, fill);
                    h.datagram(from, &b);
                    injected += 1;
                    assert!(
                        h.sent().is_empty(),
                        "{class} len {len} from {from}: something was sent"
                    );
                    for e in h.take_events() {
                        match e {
                            // DTLS from a validated tuple is control's business, not a drop
                            Ev::DtlsIn(..) if class == "dtls" && from != sources[0] => {
                                dtls_events += 1
                            }
                            other => panic!("{class} len {len} from {from}: event {other:?}"),
                        }
                    }
                }
            }
        }
    }
    // I3: every hostile datagram accounted for exactly once
    assert_eq!(drops(&h) - d0 + dtls_events, injected);
    assert_eq!(forwarded(&h), base_fwd, "nothing forwarded");
    assert!(h.counter(Counter::DropMalformed) > 0);
    assert!(h.counter(Counter::DropUnknownTuple) > 0);
    assert!(h.counter(Counter::DropUnvalidatedDtls) > 0);
    // legitimate media unaffected
    h.publish_frame(1, [false; 3]);
    let sent = h.take_sent();
    assert_eq!(h.sub_rtp(0, &sent).len(), 1);
}

#[test]
fn b2_bit_flipped_srtp_is_never_forwarded() {
    let mut h = Harness::connected(1, 0, false);
    h.publish_frame(0, [true; 3]);
    h.tx.clear();
    let plain = h.pub_plain(&PubPacket {
        layer: 0,
        seq: src_seq(0, 1),
        ts: src_ts(1),
        key: false,
        frame: 1,
        twcc: None,
    });
    let good = h.publisher.protect_rtp(&plain);
    let (d0, auth0, fwd0) = (drops(&h), h.counter(Counter::DropAuthFailed), forwarded(&h));
    let mal0 = h.counter(Counter::DropMalformed);
    let replay0 = h.counter(Counter::DropReplay);
    let mut injected = 0u64;
    // every bit except the first byte's version bits, which change the demux class
    for byte in 0..good.len() {
        for bit in 0..8 {
            if byte == 0 && bit >= 6 {
                continue;
            }
            let mut b = good.clone();
            b[byte] ^= 1 << bit;
            h.datagram(pub_addr(), &b);
            injected += 1;
            assert!(h.sent().is_empty(), "flip {byte}.{bit} was forwarded");
        }
    }
    assert_eq!(forwarded(&h), fwd0);
    assert_eq!(drops(&h) - d0, injected, "each flip counted once");
    // flips of the CSRC count / extension length may make the header overrun the packet (then
    // malformed), flips of high sequence bits put the index behind the replay window (checked
    // before authentication: replay); everything else is an authentication failure
    let auth = h.counter(Counter::DropAuthFailed) - auth0;
    let malformed = h.counter(Counter::DropMalformed) - mal0;
    let replay = h.counter(Counter::DropReplay) - replay0;
    assert_eq!(
        auth + malformed + replay,
        injected,
        "auth {auth} malformed {malformed} replay {replay}"
    );
    assert!(auth >= injected - 24, "auth failures {auth} of {injected}");
    // the untouched packet is still accepted exactly once: no state was corrupted
    h.datagram(pub_addr(), &good);
    let sent = h.take_sent();
    assert_eq!(h.sub_rtp(0, &sent).len(), 1);
    h.datagram(pub_addr(), &good);
    assert!(h.sent().is_empty());
}

#[test]
fn b3_replays_are_forwarded_once_and_reorders_inside_the_window_delivered() {
    let mut h = Harness::connected(1, 0, false);
    const N: u16 = 1200;
    let mut captured: Vec<Vec<u8>> = Vec::new();
    for f in 0..N {
        let plain = h.pub_plain(&PubPacket {
            layer: 0,
            seq: src_seq(0, f),
            ts: src_ts(f),
            key: f == 0,
            frame: f,
            twcc: None,
        });
        captured.push(h.publisher.protect_rtp(&plain));
    }
    let mut delivered: BTreeMap<u16, usize> = BTreeMap::new();
    let mut collect = |h: &mut Harness| {
        let sent = h.take_sent();
        for p in h.sub_rtp(0, &sent) {
            let hd = parse(&p);
            let pl = hd.payload(&p);
            *delivered
                .entry(u16::from_be_bytes([pl[6], pl[7]]))
                .or_default() += 1;
        }
    };
    // order: in sequence, but every 100th packet from 200 on is held back 1..50 positions
    let mut held: Vec<(usize, u16)> = Vec::new();
    let replay_after = [0usize, 64, 128, 1024];
    let mut replays = 0u64;
    let replay0 = h.counter(Counter::DropReplay);
    for f in 0..N {
        let fi = usize::from(f);
        if f >= 200 && f % 100 == 0 {
            held.push((fi + 1 + usize::from(f / 100) * 4, f)); // delay 9..49
        } else {
            h.datagram(pub_addr(), &captured[fi]);
        }
        for (at, g) in held.clone() {
            if at == fi {
                h.datagram(pub_addr(), &captured[usize::from(g)]);
            }
        }
        held.retain(|(at, _)| *at != fi);
        // replays of earlier packets: immediately, and after 64, 128, 1024 newer ones
        for &k in &replay_after {
            if fi >= k && (fi - k) % 97 == 0 && (fi - k) >= 1 {
                let r = fi - k;
                if !(r >= 200 && r % 100 == 0) {
                    h.datagram(pub_addr(), &captured[r]);
                    replays += 1;
                }
            }
        }
        collect(&mut h);
    }
    assert!(held.is_empty());
    assert_eq!(h.counter(Counter::DropReplay) - replay0, replays);
    assert_eq!(delivered.len(), usize::from(N), "every frame delivered");
    assert!(
        delivered.values().all(|&c| c == 1),
        "each index forwarded exactly once"
    );
    // SRTCP replay from a subscriber
    let mut pli = [0u8; 12];
    ils_rtp::rtcp::write_pli(&mut pli, 0xABCD, leg_ssrc(0)).unwrap();
    let srtcp = h.subs[0].protect_rtcp(&pli);
    h.datagram(sub_addr(0), &srtcp);
    let r0 = h.counter(Counter::DropReplay);
    h.datagram(sub_addr(0), &srtcp);
    assert_eq!(h.counter(Counter::DropReplay), r0 + 1);
    assert_eq!(h.counter(Counter::PliReceived), 1);
}

#[test]
fn b5_malformed_rtp_inside_valid_srtp_is_dropped() {
    let mut h = Harness::connected(1, 0, false);
    h.publish_frame(0, [true; 3]);
    h.tx.clear();
    let fwd0 = forwarded(&h);
    let ssrc = PUB_SSRC[0];
    let mut seq = src_seq(0, 1);
    let mut next = || {
        seq = seq.wrapping_add(1);
        seq
    };
    // (plain packet, what it is)
    let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
    let payload = vp8_payload(1, 0, false, 20);
    let mut p = rtp(ssrc, VP8_PT, next(), 1, false, &[], &payload);
    p[0] |= 0x20;
    *p.last_mut().unwrap() = 0;
    cases.push((p, "padding length 0"));
    let mut p = rtp(ssrc, VP8_PT, next(), 1, false, &[], &payload);
    p[0] |= 0x20;
    let n = (p.len() - 12 + 1) as u8;
    *p.last_mut().unwrap() = n;
    cases.push((p, "padding longer than the payload"));
    let mut p = rtp(ssrc, VP8_PT, next(), 1, false, &[], &[]);
    p[0] |= 0x20;
    cases.push((p, "padding bit with no payload"));
    let before_rtp_malformed = h.counter(Counter::DropRtpMalformed);
    for (plain, what) in &cases {
        let s = h.publisher.protect_rtp(plain);
        h.datagram(pub_addr(), &s);
        assert!(h.sent().is_empty(), "{what}: forwarded");
    }
    assert_eq!(
        h.counter(Counter::DropRtpMalformed) - before_rtp_malformed,
        cases.len() as u64
    );
    // Header shapes the SRTP layer itself refuses (CC past the end, extension length past the
    // end) cannot even be protected; an attacker's bytes of that shape are dropped as malformed.
    let d0 = drops(&h);
    let mut cc15 = vec![0x8F, VP8_PT, 0, 9, 0, 0, 0, 1];
    cc15.extend_from_slice(&ssrc.to_be_bytes());
    let mut ext_past = rtp(
        ssrc,
        VP8_PT,
        next(),
        1,
        false,
        &[(MID_EXT, b"0")],
        &[1, 2, 3],
    );
    ext_past[14..16].copy_from_slice(&200u16.to_be_bytes());
    ext_past.extend_from_slice(&[0u8; 10]);
    for b in [cc15, ext_past] {
        let mut ctx = SrtpContext::new(
            Profile::Aes128CmHmacSha1_80,
            &h.publisher.up_key,
            &h.publisher.up_salt,
        )
        .unwrap();
        let mut buf = b.clone();
        buf.resize(b.len() + 10, 0);
        assert!(ctx.protect_rtp(&mut buf, b.len()).is_err());
        h.datagram(pub_addr(), &buf);
        assert!(h.sent().is_empty());
    }
    assert_eq!(drops(&h) - d0, 2);
    assert_eq!(forwarded(&h), fwd0);
    // zero-length payload with a valid header: may be forwarded or dropped, never panics
    let z = rtp(ssrc, VP8_PT, next(), 1, false, &[], &[]);
    let s = h.publisher.protect_rtp(&z);
    h.datagram(pub_addr(), &s);
    h.tx.clear();
    // the stream continues
    h.publish(&PubPacket {
        layer: 0,
        seq: next(),
        ts: 100,
        key: false,
        frame: 2,
        twcc: None,
    });
    let sent = h.take_sent();
    assert_eq!(h.sub_rtp(0, &sent).len(), 1);
}

#[test]
fn b7_ten_thousand_unknown_ssrcs_allocate_nothing() {
    let mut h = Harness::connected(1, 0, false);
    h.publish_frame(0, [true; 3]);
    h.tx.clear();
    let tc = h.core.transport_count();
    let u0 = h.counter(Counter::DropUnknownSsrc);
    let p = Profile::Aes128CmHmacSha1_80;
    let mut ctx = SrtpContext::new(p, &h.publisher.up_key, &h.publisher.up_salt).unwrap();
    let payload = vp8_payload(3, 0, true, 50);
    for k in 0..10_000u32 {
        if k % 50 == 0 {
            // the sender's own context holds a bounded number of SSRCs too
            ctx = SrtpContext::new(p, &h.publisher.up_key, &h.publisher.up_salt).unwrap();
        }
        let plain = rtp(0xdead_0000 + k, VP8_PT, 7, 1, false, &[], &payload);
        let mut b = plain.clone();
        b.resize(plain.len() + 10, 0);
        let n = ctx.protect_rtp(&mut b, plain.len()).unwrap();
        h.datagram(pub_addr(), &b[..n]);
    }
    assert_eq!(h.counter(Counter::DropUnknownSsrc) - u0, 10_000);
    assert!(h.sent().is_empty());
    assert_eq!(h.core.transport_count(), tc);
    // SSRCs that do carry a valid mid/rid are bound only up to MAX_SSRCS_PER_TRANSPORT
    let mut h2 = Harness::connected(1, 0, false);
    let mut ctx = SrtpContext::new(p, &h2.publisher.up_key, &h2.publisher.up_salt).unwrap();
    for k in 0..60u32 {
        let plain = rtp(
            0xbeef_0000 + k,
            VP8_PT,
            7,
            1,
            false,
            &[(MID_EXT, b"0"), (RID_EXT, b"q")],
            &payload,
        );
        let mut b = plain.clone();
        b.resize(plain.len() + 10, 0);
        let n = ctx.protect_rtp(&mut b, plain.len()).unwrap();
        h2.datagram(pub_addr(), &b[..n]);
    }
    assert_eq!(
        h2.counter(Counter::DropUnknownSsrc),
        60 - MAX_SSRCS_PER_TRANSPORT as u64
    );
    // the legitimate stream of the first core still flows
    h.publish_frame(1, [false; 3]);
    let sent = h.take_sent();
    assert_eq!(h.sub_rtp(0, &sent).len(), 1);
}

#[test]
fn b8_oversized_datagrams_are_dropped() {
    let mut h = Harness::connected(1, 0, false);
    for len in [1501usize, 1502, 2000, 9000, 65_507] {
        for first in [0u8, 22, 0x80] {
            for from in [stranger(2), pub_addr(), sub_addr(0)] {
                let mut b = vec![0u8; len];
                b[0] = first;
                h.datagram(from, &b);
            }
        }
    }
    assert_eq!(h.counter(Counter::DropTooLarge), 5 * 3 * 3);
    assert!(h.sent().is_empty());
    assert!(h.take_events().is_empty());
    // exactly 1500 is not "too large"
    let mut b = vec![0u8; 1500];
    b[0] = 0x80;
    h.datagram(stranger(2), &b);
    assert_eq!(h.counter(Counter::DropTooLarge), 45);
}

#[test]
fn b9_first_bytes_outside_rfc7983_are_dropped_before_any_parser() {
    let mut h = Harness::connected(1, 0, false);
    let mut n = 0;
    let (stun, dtls, rtp0) = (
        h.counter(Counter::RxStun),
        h.counter(Counter::RxDtls),
        h.counter(Counter::RxRtp),
    );
    for first in (4u8..=19).chain(64..=127).chain(192..=255) {
        for len in [1usize, 2, 12, 100, 1500] {
            for from in [stranger(3), pub_addr()] {
                let mut b = vec![0x80u8; len];
                b[0] = first;
                h.datagram(from, &b);
                n += 1;
            }
        }
    }
    assert_eq!(h.counter(Counter::DropUnknownClass), n);
    assert_eq!(
        (
            h.counter(Counter::RxStun),
            h.counter(Counter::RxDtls),
            h.counter(Counter::RxRtp)
        ),
        (stun, dtls, rtp0),
        "no parser ran"
    );
    assert!(h.sent().is_empty());
}

/// A Binding-like STUN message from the publisher's credentials with the given variations.
#[allow(clippy::too_many_arguments)]
fn stun_variant(
    class: Class,
    method: u16,
    username: &str,
    priority: bool,
    controlled: bool,
    integrity_pwd: Option<&str>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut out = vec![0u8; 512];
    let txid = [7u8; 12];
    let mut w = StunWriter::new(&mut out, class, method, &txid).unwrap();
    w.attribute(attr::USERNAME, username.as_bytes()).unwrap();
    if priority {
        w.attribute(attr::PRIORITY, &1u32.to_be_bytes()).unwrap();
    }
    if controlled {
        w.attribute(attr::ICE_CONTROLLED, &5u64.to_be_bytes())
            .unwrap();
    } else {
        w.attribute(attr::ICE_CONTROLLING, &5u64.to_be_bytes())
            .unwrap();
    }
    if let Some(pwd) = integrity_pwd {
        w.message_integrity(&ils_stun::integrity_key(pwd.as_bytes()))
            .unwrap();
    }
    if fingerprint {
        w.fingerprint().unwrap();
    }
    let n = w.finish();
    out.truncate(n);
    out
}

#[test]
fn c1_unauthenticated_or_invalid_checks_add_no_tuple_and_get_no_reply() {
    let mut h = Harness::bare(0);
    let p = Peer::new(PUBLISHER, pub_addr(), 0);
    h.cmd_ok(&Command::AddTransport {
        transport: PUBLISHER,
        ufrag: p.ufrag.as_bytes(),
        pwd: p.pwd.as_bytes(),
        consent_timeout_ms: 0,
    });
    let user = format!("{}:remote", p.ufrag);
    let swapped = format!("remote:{}", p.ufrag);
    let pwd = p.pwd.as_str();
    let req = Class::Request;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "no MESSAGE-INTEGRITY",
            stun_variant(req, METHOD_BINDING, &user, true, false, None, true),
        ),
        (
            "wrong password",
            stun_variant(
                req,
                METHOD_BINDING,
                &user,
                true,
                false,
                Some("not-the-password-at-all"),
                true,
            ),
        ),
        (
            "unknown ufrag",
            stun_variant(
                req,
                METHOD_BINDING,
                "nobody:remote",
                true,
                false,
                Some(pwd),
                true,
            ),
        ),
        (
            "swapped ufrag order",
            stun_variant(req, METHOD_BINDING, &swapped, true, false, Some(pwd), true),
        ),
        (
            "missing FINGERPRINT",
            stun_variant(req, METHOD_BINDING, &user, true, false, Some(pwd), false),
        ),
        (
            "missing PRIORITY",
            stun_variant(req, METHOD_BINDING, &user, false, false, Some(pwd), true),
        ),
        (
            "ICE-CONTROLLED (role conflict)",
            stun_variant(req, METHOD_BINDING, &user, true, true, Some(pwd), true),
        ),
        (
            "indication",
            stun_variant(
                Class::Indication,
                METHOD_BINDING,
                &user,
                true,
                false,
                Some(pwd),
                true,
            ),
        ),
        (
            "success response",
            stun_variant(
                Class::SuccessResponse,
                METHOD_BINDING,
                &user,
                true,
                false,
                Some(pwd),
                true,
            ),
        ),
        (
            "TURN Allocate",
            stun_variant(req, 0x003, &user, true, false, Some(pwd), true),
        ),
        (
            "TURN Send indication",
            stun_variant(
                Class::Indication,
                0x006,
                &user,
                true,
                false,
                Some(pwd),
                true,
            ),
        ),
    ];
    let d0 = drops(&h);
    for (k, (what, b)) in cases.iter().enumerate() {
        let from = stranger(100 + k as u16);
        h.datagram(from, b);
        assert!(h.sent().is_empty(), "{what}: got a reply");
        assert!(h.take_events().is_empty(), "{what}: event");
        // no tuple: DTLS from there is not admitted
        let u = h.counter(Counter::DropUnvalidatedDtls);
        h.datagram(from, &[22, 0xfe, 0xfd, 0, 0]);
        assert_eq!(h.counter(Counter::DropUnvalidatedDtls), u + 1, "{what}");
    }
    assert_eq!(drops(&h) - d0, 2 * cases.len() as u64);
    assert_eq!(h.counter(Counter::TuplesLearned), 0);
    // the control case: a well-formed check is answered
    let good = stun_variant(req, METHOD_BINDING, &user, true, false, Some(pwd), true);
    h.datagram(stranger(99), &good);
    assert_eq!(h.sent().len(), 1);
    assert_eq!(h.counter(Counter::TuplesLearned), 1);
}

#[test]
fn d6_stun_flood_with_random_ufrags_gets_no_reply_and_no_state() {
    let mut h = Harness::connected(1, 0, false);
    h.publish_frame(0, [true; 3]);
    h.tx.clear();
    let tc = h.core.transport_count();
    let u0 = h.counter(Counter::DropUnknownUfrag);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for k in 0..10_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ufrag = format!("{:012x}", x & 0xffff_ffff_ffff);
        let mut peer = Peer::new(PUBLISHER, pub_addr(), 0);
        peer.ufrag = ufrag;
        peer.pwd = format!("{x:024x}");
        let req = peer.binding_request(k % 2 == 0);
        h.datagram(stranger((k % 1000) as u16), &req);
    }
    assert_eq!(h.counter(Counter::DropUnknownUfrag) - u0, 10_000);
    assert!(h.sent().is_empty());
    assert!(h.take_events().is_empty());
    assert_eq!(h.core.transport_count(), tc);
    // the fast path is unaffected
    h.publish_frame(1, [false; 3]);
    let sent = h.take_sent();
    assert_eq!(h.sub_rtp(0, &sent).len(), 1);
    h.ice_check(Some(0), false);
    assert_eq!(h.take_sent().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Promise 3 (proptest): arbitrary datagram sequences never panic and never make the core send
// to an address that has not been ICE-validated (and still holds consent).

#[derive(Debug, Clone)]
enum Op {
    /// Arbitrary bytes from one of a few addresses (known or not).
    Raw(u8, Vec<u8>),
    /// Bytes with a first byte chosen to reach a given parser.
    Shaped(u8, u8, Vec<u8>),
    /// A valid ICE check for subscriber 0's or the publisher's credentials from any address.
    Check(bool, u16, bool),
    /// A valid publisher packet, possibly bit-flipped.
    Media(u16, u8, bool, Option<u16>),
    /// A valid subscriber NACK or PLI.
    SubRtcp(bool, u16),
    /// Virtual time passes (ms), timers run.
    Advance(u32),
}

fn addr_of(i: u8) -> SocketAddr {
    match i % 5 {
        0 => pub_addr(),
        1 => sub_addr(0),
        2 => stranger(7),
        3 => SocketAddr::from(([10, 0, 0, 1], 5001)), // publisher's IP, other port
        _ => "[2001:db8::1]:5000".parse().unwrap(),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..120)).prop_map(|(a, b)| Op::Raw(a, b)),
        (
            any::<u8>(),
            prop::sample::select(vec![0u8, 1, 22, 63, 0x80, 0x90, 0xbf]),
            prop::collection::vec(any::<u8>(), 0..120)
        )
            .prop_map(|(a, f, b)| Op::Shaped(a, f, b)),
        (any::<bool>(), any::<u16>(), any::<bool>()).prop_map(|(s, p, u)| Op::Check(s, p, u)),
        (
            0u16..400,
            0u8..3,
            any::<bool>(),
            prop::option::of(any::<u16>())
        )
            .prop_map(|(f, l, k, flip)| Op::Media(f, l, k, flip)),
        (any::<bool>(), any::<u16>()).prop_map(|(n, s)| Op::SubRtcp(n, s)),
        (0u32..40_000).prop_map(Op::Advance),
    ]
}

fn run_ops(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::connected(1, 0, false);
    // who proved consent: transport -> addresses
    let mut valid: HashMap<u32, HashSet<SocketAddr>> = HashMap::new();
    valid.entry(PUBLISHER).or_default().insert(pub_addr());
    valid
        .entry(sub_transport(0))
        .or_default()
        .insert(sub_addr(0));
    for op in ops {
        let mut in_bytes = 0usize;
        match op {
            Op::Raw(a, b) => {
                in_bytes = b.len();
                h.datagram(addr_of(*a), b);
            }
            Op::Shaped(a, f, b) => {
                let mut b = b.clone();
                if b.is_empty() {
                    b.push(*f);
                } else {
                    b[0] = *f;
                }
                in_bytes = b.len();
                h.datagram(addr_of(*a), &b);
            }
            Op::Check(sub, port, uc) => {
                let from = SocketAddr::from(([198, 51, 100, 1], *port));
                let p = if *sub {
                    &mut h.subs[0]
                } else {
                    &mut h.publisher
                };
                let req = p.binding_request(*uc);
                in_bytes = req.len();
                h.datagram(from, &req);
            }
            Op::Media(f, l, k, flip) => {
                let plain = h.pub_plain(&PubPacket {
                    layer: *l,
                    seq: src_seq(*l, *f),
                    ts: src_ts(*f),
                    key: *k,
                    frame: *f,
                    twcc: None,
                });
                let mut s = h.publisher.protect_rtp(&plain);
                if let Some(bit) = flip {
                    let i = usize::from(*bit / 8) % s.len();
                    s[i] ^= 1 << (bit % 8);
                }
                in_bytes = s.len();
                h.datagram(pub_addr(), &s);
            }
            Op::SubRtcp(nack, seq) => {
                let mut b = [0u8; 64];
                let n = if *nack {
                    ils_rtp::rtcp::write_nack(&mut b, 1, leg_ssrc(0), &[*seq]).unwrap()
                } else {
                    ils_rtp::rtcp::write_pli(&mut b, 1, leg_ssrc(0)).unwrap()
                };
                let s = h.subs[0].protect_rtcp(&b[..n]);
                in_bytes = s.len();
                h.datagram(sub_addr(0), &s);
            }
            Op::Advance(ms) => {
                h.advance(Duration::from_millis(u64::from(*ms)));
                h.timeout();
            }
        }
        for e in h.take_events() {
            match e {
                Ev::TupleLearned(t, a, _) => {
                    valid.entry(t).or_default().insert(a);
                }
                Ev::ConsentLost(t) => {
                    valid.remove(&t);
                }
                _ => {}
            }
        }
        let ok: HashSet<SocketAddr> = valid.values().flatten().copied().collect();
        for (dest, bytes) in h.tx.iter() {
            prop_assert!(
                ok.contains(&dest),
                "sent {} bytes to unvalidated {dest} after {op:?}",
                bytes.len()
            );
            if matches!(op, Op::Check(..)) {
                prop_assert!(bytes.len() <= in_bytes, "STUN reply larger than request");
            }
        }
        h.tx.clear();
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_datagrams_never_panic_nor_send_to_unvalidated_addresses(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        run_ops(&ops)?;
    }
}
