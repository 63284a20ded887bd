//! Oracle tests: ils-srtp against webrtc-srtp 0.15 (AES-CM-HMAC-SHA1-80, AES-128-GCM) and
//! against an independent AES-256-GCM SRTP built here from the `aes` and `aes-gcm` crates
//! (webrtc-srtp has no AEAD_AES_256_GCM).

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes_gcm::aead::{Aead, Payload};
use ils_srtp::{Profile, SrtpContext, SrtpError};
use proptest::prelude::*;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

// ------------------------------------------------------------------ packet generation

#[derive(Debug, Clone)]
struct RtpSpec {
    marker: bool,
    pt: u8,
    ts: u32,
    csrcs: Vec<u32>,
    /// One-byte (0xBEDE) extension elements: (id 1..=14, data 1..=16 bytes).
    ext: Option<Vec<(u8, Vec<u8>)>>,
    payload: Vec<u8>,
    /// Sequence step from the previous packet (1..=3).
    step: u16,
}

fn rtp_spec() -> impl Strategy<Value = RtpSpec> {
    (
        any::<bool>(),
        0u8..128,
        any::<u32>(),
        proptest::collection::vec(any::<u32>(), 0..=15),
        proptest::option::of(proptest::collection::vec(
            (1u8..=14, proptest::collection::vec(any::<u8>(), 1..=16)),
            0..4,
        )),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(any::<u8>(), 1000..=1200),
        ],
        1u16..=3,
    )
        .prop_map(|(marker, pt, ts, csrcs, ext, payload, step)| RtpSpec {
            marker,
            pt,
            ts,
            csrcs,
            ext,
            payload,
            step,
        })
}

/// Serialises the packet; returns (bytes, header length).
fn build_rtp(s: &RtpSpec, seq: u16, ssrc: u32) -> (Vec<u8>, usize) {
    let mut p = Vec::with_capacity(1300);
    let x = if s.ext.is_some() { 0x10 } else { 0 };
    p.push(0x80 | x | s.csrcs.len() as u8);
    p.push(((s.marker as u8) << 7) | s.pt);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&s.ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for c in &s.csrcs {
        p.extend_from_slice(&c.to_be_bytes());
    }
    if let Some(elems) = &s.ext {
        let mut body = Vec::new();
        for (id, data) in elems {
            body.push((id << 4) | (data.len() as u8 - 1));
            body.extend_from_slice(data);
        }
        while body.len() % 4 != 0 {
            body.push(0);
        }
        p.extend_from_slice(&[0xbe, 0xde]);
        p.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(&body);
    }
    let hl = p.len();
    p.extend_from_slice(&s.payload);
    (p, hl)
}

fn rtcp_spec() -> impl Strategy<Value = (u8, u8, Vec<u8>)> {
    (
        0u8..32,
        200u8..=206,
        proptest::collection::vec(any::<u8>(), 0..100).prop_map(|mut v| {
            v.truncate(v.len() / 4 * 4);
            v
        }),
    )
}

fn build_rtcp(rc: u8, pt: u8, body: &[u8], ssrc: u32) -> Vec<u8> {
    let words = (4 + body.len()) / 4; // length field = words - 1, header word excluded
    let mut p = vec![0x80 | rc, pt];
    p.extend_from_slice(&(words as u16).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(body);
    p
}

// ------------------------------------------------------------------ helpers

fn ours_protect(c: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + c.profile().rtp_overhead(), 0);
    let n = c.protect_rtp(&mut buf, plain.len()).expect("protect_rtp");
    buf.truncate(n);
    buf
}

fn ours_unprotect(c: &mut SrtpContext, pkt: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut b = pkt.to_vec();
    let n = c.unprotect_rtp(&mut b)?;
    b.truncate(n);
    Ok(b)
}

fn ours_protect_rtcp(c: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + c.profile().rtcp_overhead(), 0);
    let n = c.protect_rtcp(&mut buf, plain.len()).expect("protect_rtcp");
    buf.truncate(n);
    buf
}

fn ours_unprotect_rtcp(c: &mut SrtpContext, pkt: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut b = pkt.to_vec();
    let n = c.unprotect_rtcp(&mut b)?;
    b.truncate(n);
    Ok(b)
}

fn webrtc_profile(p: Profile) -> ProtectionProfile {
    match p {
        Profile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        Profile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        Profile::AeadAes256Gcm => unreachable!("webrtc-srtp has no AES-256-GCM"),
    }
}

/// Runs a stream of packets both ways between ours and webrtc-srtp; asserts plaintext equality.
fn check_both_ways(profile: Profile, key: &[u8], salt: &[u8], pkts: &[Vec<u8>], rtcp: &[Vec<u8>]) {
    let wp = webrtc_profile(profile);
    // webrtc-srtp -> ours
    let mut w_tx = Context::new(key, salt, wp, None, None).unwrap();
    let mut o_rx = SrtpContext::new(profile, key, salt).unwrap();
    // ours -> webrtc-srtp
    let mut o_tx = SrtpContext::new(profile, key, salt).unwrap();
    let mut w_rx = Context::new(key, salt, wp, None, None).unwrap();
    for p in pkts {
        let enc = w_tx.encrypt_rtp(p).unwrap();
        assert_eq!(ours_unprotect(&mut o_rx, &enc).as_deref(), Ok(&p[..]));
        let ours = ours_protect(&mut o_tx, p);
        assert_eq!(ours, enc[..], "same keys, same index: identical ciphertext");
        let dec = w_rx.decrypt_rtp(&ours).unwrap();
        assert_eq!(&dec[..], &p[..]);
    }
    for p in rtcp {
        let enc = w_tx.encrypt_rtcp(p).unwrap();
        assert_eq!(ours_unprotect_rtcp(&mut o_rx, &enc).as_deref(), Ok(&p[..]));
        let ours = ours_protect_rtcp(&mut o_tx, p);
        let dec = w_rx.decrypt_rtcp(&ours).unwrap();
        assert_eq!(&dec[..], &p[..]);
    }
}

// ------------------------------------------------------------------ AES-256-GCM reference

/// RFC 3711 §4.3 AES-CM PRF with an AES-256 master key and a 96-bit salt (RFC 7714 §11).
fn ref_kdf256(key: &[u8; 32], salt: &[u8; 12], label: u8, out: &mut [u8]) {
    let aes = aes::Aes256::new(GenericArray::from_slice(key));
    let mut x = [0u8; 16];
    x[..12].copy_from_slice(salt);
    x[7] ^= label;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut b = x;
        b[15] = i as u8;
        let mut ga = GenericArray::from(b);
        aes.encrypt_block(&mut ga);
        chunk.copy_from_slice(&ga[..chunk.len()]);
    }
}

struct Ref256 {
    rtp: aes_gcm::Aes256Gcm,
    rtp_salt: [u8; 12],
    rtcp: aes_gcm::Aes256Gcm,
    rtcp_salt: [u8; 12],
}

impl Ref256 {
    fn new(key: &[u8; 32], salt: &[u8; 12]) -> Self {
        let mk = |l_key: u8, l_salt: u8| {
            let mut k = [0u8; 32];
            let mut s = [0u8; 12];
            ref_kdf256(key, salt, l_key, &mut k);
            ref_kdf256(key, salt, l_salt, &mut s);
            (aes_gcm::Aes256Gcm::new(GenericArray::from_slice(&k)), s)
        };
        let (rtp, rtp_salt) = mk(0, 2);
        let (rtcp, rtcp_salt) = mk(3, 5);
        Ref256 {
            rtp,
            rtp_salt,
            rtcp,
            rtcp_salt,
        }
    }

    fn rtp_nonce(&self, ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&seq.to_be_bytes());
        for (a, b) in iv.iter_mut().zip(self.rtp_salt) {
            *a ^= b;
        }
        iv
    }

    fn encrypt_rtp(&self, pkt: &[u8], hl: usize, roc: u32) -> Vec<u8> {
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ssrc = u32::from_be_bytes(pkt[8..12].try_into().unwrap());
        let nonce = self.rtp_nonce(ssrc, roc, seq);
        let ct = self
            .rtp
            .encrypt(
                GenericArray::from_slice(&nonce),
                Payload {
                    msg: &pkt[hl..],
                    aad: &pkt[..hl],
                },
            )
            .unwrap();
        [&pkt[..hl], &ct[..]].concat()
    }

    fn decrypt_rtp(&self, pkt: &[u8], hl: usize, roc: u32) -> Vec<u8> {
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ssrc = u32::from_be_bytes(pkt[8..12].try_into().unwrap());
        let nonce = self.rtp_nonce(ssrc, roc, seq);
        let pt = self
            .rtp
            .decrypt(
                GenericArray::from_slice(&nonce),
                Payload {
                    msg: &pkt[hl..],
                    aad: &pkt[..hl],
                },
            )
            .unwrap();
        [&pkt[..hl], &pt[..]].concat()
    }

    fn rtcp_nonce(&self, ssrc: u32, index: u32) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[8..12].copy_from_slice(&index.to_be_bytes());
        for (a, b) in iv.iter_mut().zip(self.rtcp_salt) {
            *a ^= b;
        }
        iv
    }

    fn encrypt_rtcp(&self, pkt: &[u8], index: u32) -> Vec<u8> {
        let ssrc = u32::from_be_bytes(pkt[4..8].try_into().unwrap());
        let word = (index | 0x8000_0000).to_be_bytes();
        let aad = [&pkt[..8], &word[..]].concat();
        let ct = self
            .rtcp
            .encrypt(
                GenericArray::from_slice(&self.rtcp_nonce(ssrc, index)),
                Payload {
                    msg: &pkt[8..],
                    aad: &aad,
                },
            )
            .unwrap();
        [&pkt[..8], &ct[..], &word[..]].concat()
    }

    fn decrypt_rtcp(&self, pkt: &[u8]) -> Vec<u8> {
        let ssrc = u32::from_be_bytes(pkt[4..8].try_into().unwrap());
        let n = pkt.len();
        let word: [u8; 4] = pkt[n - 4..].try_into().unwrap();
        let index = u32::from_be_bytes(word) & 0x7fff_ffff;
        let aad = [&pkt[..8], &word[..]].concat();
        let pt = self
            .rtcp
            .decrypt(
                GenericArray::from_slice(&self.rtcp_nonce(ssrc, index)),
                Payload {
                    msg: &pkt[8..n - 4],
                    aad: &aad,
                },
            )
            .unwrap();
        [&pkt[..8], &pt[..]].concat()
    }
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random keys and random RTP/RTCP packets (CSRCs, one-byte extensions, 0..1200 B payloads),
    /// sequences that often cross 65535 -> 0; both directions against webrtc-srtp.
    #[test]
    fn matches_webrtc_srtp(
        cm in any::<bool>(),
        key in any::<[u8; 16]>(),
        salt in any::<[u8; 14]>(),
        ssrc in any::<u32>(),
        start in prop_oneof![any::<u16>(), 65528u16..=65535],
        specs in proptest::collection::vec(rtp_spec(), 1..6),
        rtcps in proptest::collection::vec(rtcp_spec(), 0..3),
    ) {
        let (profile, salt) = if cm {
            (Profile::Aes128CmHmacSha1_80, &salt[..])
        } else {
            (Profile::AeadAes128Gcm, &salt[..12])
        };
        let mut seq = start;
        let mut pkts = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            if i > 0 {
                seq = seq.wrapping_add(s.step);
            }
            pkts.push(build_rtp(s, seq, ssrc).0);
        }
        let rtcp: Vec<Vec<u8>> =
            rtcps.iter().map(|(rc, pt, body)| build_rtcp(*rc, *pt, body, ssrc ^ 1)).collect();
        check_both_ways(profile, &key, salt, &pkts, &rtcp);
    }

    /// AEAD_AES_256_GCM against the independent reference above.
    #[test]
    fn aes256gcm_matches_reference(
        key in any::<[u8; 32]>(),
        salt in any::<[u8; 12]>(),
        ssrc in any::<u32>(),
        start in prop_oneof![any::<u16>(), 65528u16..=65535],
        specs in proptest::collection::vec(rtp_spec(), 1..6),
        rtcps in proptest::collection::vec(rtcp_spec(), 0..3),
    ) {
        let r = Ref256::new(&key, &salt);
        let mut o_rx = SrtpContext::new(Profile::AeadAes256Gcm, &key, &salt).unwrap();
        let mut o_tx = SrtpContext::new(Profile::AeadAes256Gcm, &key, &salt).unwrap();
        let mut seq = start;
        let mut roc = 0u32;
        for (i, s) in specs.iter().enumerate() {
            if i > 0 {
                let (n, wrapped) = seq.overflowing_add(s.step);
                seq = n;
                roc += u32::from(wrapped);
            }
            let (p, hl) = build_rtp(s, seq, ssrc);
            let enc = r.encrypt_rtp(&p, hl, roc);
            prop_assert_eq!(ours_unprotect(&mut o_rx, &enc), Ok(p.clone()));
            let ours = ours_protect(&mut o_tx, &p);
            prop_assert_eq!(&ours, &enc);
            prop_assert_eq!(r.decrypt_rtp(&ours, hl, roc), p);
        }
        for (i, (rc, pt, body)) in rtcps.iter().enumerate() {
            let p = build_rtcp(*rc, *pt, body, ssrc);
            let enc = r.encrypt_rtcp(&p, 1000 + i as u32);
            prop_assert_eq!(ours_unprotect_rtcp(&mut o_rx, &enc), Ok(p.clone()));
            let ours = ours_protect_rtcp(&mut o_tx, &p);
            prop_assert_eq!(r.decrypt_rtcp(&ours), p);
        }
    }
}

/// Long streams crossing the ROC boundary many times (steps alternate 1 and 7919, so the
/// ROC moves every ~16 packets; ~300 rollovers), with in-window reordering on receive,
/// against webrtc-srtp.
#[test]
fn long_stream_rollover_against_webrtc_srtp() {
    for (profile, salt_len) in [
        (Profile::Aes128CmHmacSha1_80, 14),
        (Profile::AeadAes128Gcm, 12),
    ] {
        let key = [7u8; 16];
        let salt = vec![9u8; salt_len];
        let wp = webrtc_profile(profile);
        let mut w_tx = Context::new(&key, &salt, wp, None, None).unwrap();
        let mut w_rx = Context::new(&key, &salt, wp, None, None).unwrap();
        let mut o_tx = SrtpContext::new(profile, &key, &salt).unwrap();
        let mut o_rx = SrtpContext::new(profile, &key, &salt).unwrap();
        let spec = RtpSpec {
            marker: false,
            pt: 96,
            ts: 0,
            csrcs: vec![],
            ext: None,
            payload: vec![0xab; 16],
            step: 1,
        };
        let mut seq = 60_000u16;
        let mut rollovers = 0;
        let mut held: Option<Vec<u8>> = None;
        for i in 0..5_000usize {
            let step = if i % 2 == 0 { 1 } else { 7919 };
            let (next, wrapped) = seq.overflowing_add(step);
            seq = next;
            rollovers += usize::from(wrapped);
            let (p, _) = build_rtp(&spec, seq, 0x1234);
            let enc = w_tx.encrypt_rtp(&p).unwrap();
            // Swap one pair in 100 (i odd, so i+1 is one seq later): deliver i+1 before i.
            if i % 100 == 51 {
                held = Some(enc.to_vec());
            } else {
                assert_eq!(
                    ours_unprotect(&mut o_rx, &enc).as_deref(),
                    Ok(&p[..]),
                    "seq {seq}"
                );
                if let Some(h) = held.take() {
                    assert!(
                        ours_unprotect(&mut o_rx, &h).is_ok(),
                        "late packet before {seq}"
                    );
                    assert_eq!(ours_unprotect(&mut o_rx, &h), Err(SrtpError::Replayed));
                }
            }
            let ours = ours_protect(&mut o_tx, &p);
            assert_eq!(&w_rx.decrypt_rtp(&ours).unwrap()[..], &p[..], "seq {seq}");
        }
        assert!(rollovers > 250, "{rollovers}");
    }
}
