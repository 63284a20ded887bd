use super::*;
use crate::MAX_SSRCS_PER_CONTEXT;
use proptest::prelude::*;

const PROFILES: [Profile; 3] = [
    Profile::Aes128CmHmacSha1_80,
    Profile::AeadAes128Gcm,
    Profile::AeadAes256Gcm,
];

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ctx(profile: Profile) -> SrtpContext {
    let key: Vec<u8> = (0..profile.master_key_len() as u8).collect();
    let salt: Vec<u8> = (0..profile.master_salt_len() as u8)
        .map(|b| b ^ 0x5a)
        .collect();
    SrtpContext::new(profile, &key, &salt).unwrap()
}

/// RTP packet: V=2, X=1, CC=1, one CSRC, a one-word 0xBEDE extension, `payload_len` bytes.
fn rtp(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x91, 0x60];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x10, 0x77, 0x00, 0x00]);
    p.extend((0..payload_len).map(|i| i as u8));
    p
}

fn rtcp(ssrc: u32) -> Vec<u8> {
    // Receiver report with one report block (32 bytes), then an SDES-ish tail.
    let mut p = vec![0x81, 0xc9, 0x00, 0x07];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..24).map(|i| i as u8));
    p
}

fn protect(c: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + c.profile().rtp_overhead(), 0);
    let n = c.protect_rtp(&mut buf, plain.len()).unwrap();
    assert_eq!(n, buf.len());
    buf
}

fn protect_c(c: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + c.profile().rtcp_overhead(), 0);
    let n = c.protect_rtcp(&mut buf, plain.len()).unwrap();
    assert_eq!(n, buf.len());
    buf
}

fn unprotect(c: &mut SrtpContext, pkt: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut b = pkt.to_vec();
    let n = c.unprotect_rtp(&mut b)?;
    b.truncate(n);
    Ok(b)
}

fn unprotect_c(c: &mut SrtpContext, pkt: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut b = pkt.to_vec();
    let n = c.unprotect_rtcp(&mut b)?;
    b.truncate(n);
    Ok(b)
}

// ---------------------------------------------------------------- RFC 7714 §16 / §17 vectors

const RFC_KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
const RFC_KEY_256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const RFC_SALT: &str = "517569642070726f2071756f";
const RFC_RTP: &str = "8040f17b8041f8d35501a0b2
    47616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573";
const RFC_SRTP_128: &str = "8040f17b8041f8d35501a0b2
    f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833
    899d7f27beb16a9152cf765ee4390cce";
const RFC_SRTP_256: &str = "8040f17b8041f8d35501a0b2
    32b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a0276ffae0f1ba63799b87b
    7aa3db36dfffd6b0f9bb7878d7a76c13";
const RFC_RTCP: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e930
    4c756e61deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
const RFC_SRTCP_128: &str = "81c8000d4d617273
    63e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda4ce09b46
    86303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4";
const RFC_SRTCP_256: &str = "81c8000d4d617273
    d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1110555be8415f658
    c61de0476f1b6fad1d1eb30c4446839f57ff6f6cb26ac3be800005d4";

/// A GCM context built from the RFC 7714 *session* key and salt (the vectors skip the KDF).
fn rfc_ctx(profile: Profile, key: &str) -> SrtpContext {
    let salt: [u8; 12] = hex(RFC_SALT).try_into().unwrap();
    let k = hex(key);
    let keys = Keys::Gcm {
        rtp: GcmKeys::from_session(&k, &salt).unwrap(),
        rtcp: GcmKeys::from_session(&k, &salt).unwrap(),
    };
    SrtpContext::with_keys(profile, keys)
}

#[test]
fn rfc7714_srtp_vectors() {
    for (profile, key, expected) in [
        (Profile::AeadAes128Gcm, RFC_KEY_128, RFC_SRTP_128),
        (Profile::AeadAes256Gcm, RFC_KEY_256, RFC_SRTP_256),
    ] {
        let plain = hex(RFC_RTP);
        let mut tx = rfc_ctx(profile, key);
        assert_eq!(protect(&mut tx, &plain), hex(expected), "{profile:?}");
        let mut rx = rfc_ctx(profile, key);
        assert_eq!(unprotect(&mut rx, &hex(expected)), Ok(plain), "{profile:?}");
    }
}

#[test]
fn rfc7714_srtcp_vectors() {
    let plain = hex(RFC_RTCP);
    // §17.1 (AES-128): protect with SRTCP index 0x5d4.
    let mut tx = rfc_ctx(Profile::AeadAes128Gcm, RFC_KEY_128);
    tx.rtcp_tx.insert(0x4d61_7273, 0x5d4).unwrap();
    assert_eq!(protect_c(&mut tx, &plain), hex(RFC_SRTCP_128));
    for (profile, key, srtcp) in [
        (Profile::AeadAes128Gcm, RFC_KEY_128, RFC_SRTCP_128),
        (Profile::AeadAes256Gcm, RFC_KEY_256, RFC_SRTCP_256),
    ] {
        let mut rx = rfc_ctx(profile, key);
        assert_eq!(unprotect_c(&mut rx, &hex(srtcp)), Ok(plain.clone()));
        assert_eq!(
            unprotect_c(&mut rx, &hex(srtcp)),
            Err(SrtpError::Replayed),
            "{profile:?}"
        );
    }
}

// ---------------------------------------------------------------- round trips, ROC

#[test]
fn round_trip_all_profiles_with_rollover() {
    for p in PROFILES {
        let (mut tx, mut rx) = (ctx(p), ctx(p));
        for i in 0..40u32 {
            let seq = 65520u16.wrapping_add(i as u16);
            let plain = rtp(seq, 0xabcd, i as usize * 7);
            let srtp = protect(&mut tx, &plain);
            if i > 0 {
                assert_ne!(srtp[..plain.len()], plain[..], "payload encrypted");
            }
            assert_eq!(unprotect(&mut rx, &srtp), Ok(plain), "{p:?} seq {seq}");
        }
        let slot = rx.rtp_rx.find(0xabcd).unwrap();
        let highest = rx.rtp_rx.get_mut(slot).unwrap().highest;
        assert_eq!(highest >> 16, 1, "ROC bumped once");
        for i in 0..5 {
            let plain = rtcp(0x1111);
            let srtcp = protect_c(&mut tx, &plain);
            let w = match p {
                Profile::Aes128CmHmacSha1_80 => srtcp.len() - 14,
                _ => srtcp.len() - 4,
            };
            let word = u32::from_be_bytes(srtcp[w..w + 4].try_into().unwrap());
            assert_eq!(word, 0x8000_0000 | i, "E flag set, index counts from 0");
            assert_eq!(unprotect_c(&mut rx, &srtcp), Ok(plain));
        }
    }
}

#[test]
fn retransmission_same_seq_gives_same_bytes() {
    for p in PROFILES {
        let mut tx = ctx(p);
        let a = protect(&mut tx, &rtp(7, 1, 50));
        let _ = protect(&mut tx, &rtp(8, 1, 50));
        let b = protect(&mut tx, &rtp(7, 1, 50));
        assert_eq!(a, b, "{p:?}");
    }
}

#[test]
fn tx_seq_before_first_is_too_old() {
    let mut tx = ctx(Profile::AeadAes128Gcm);
    protect(&mut tx, &rtp(10, 1, 5));
    let plain = rtp(65000, 1, 5);
    let mut buf = plain.clone();
    buf.resize(plain.len() + 16, 0);
    assert_eq!(
        tx.protect_rtp(&mut buf, plain.len()),
        Err(SrtpError::TooOld)
    );
}

#[test]
fn rtcp_tx_index_exhaustion() {
    let mut tx = ctx(Profile::AeadAes128Gcm);
    tx.rtcp_tx.insert(9, MAX_SRTCP_INDEX).unwrap();
    let plain = rtcp(9);
    let srtcp = protect_c(&mut tx, &plain);
    assert_eq!(&srtcp[srtcp.len() - 4..], &[0xff, 0xff, 0xff, 0xff]);
    let mut buf = plain.clone();
    buf.resize(plain.len() + 20, 0);
    assert_eq!(
        tx.protect_rtcp(&mut buf, plain.len()),
        Err(SrtpError::TooOld)
    );
}

// ---------------------------------------------------------------- SRTCP with E = 0

#[test]
fn srtcp_unencrypted_is_authenticated() {
    for p in PROFILES {
        let c = ctx(p);
        let plain = rtcp(0x4242);
        let word = 0x0000_0005u32.to_be_bytes();
        let pkt = match &c.keys {
            Keys::Cm { rtcp, .. } => {
                let mut pkt = plain.clone();
                pkt.extend_from_slice(&word);
                let tag = rtcp.tag(&pkt, &[]);
                pkt.extend_from_slice(&tag);
                pkt
            }
            Keys::Gcm { rtcp, .. } => {
                let mut aad = plain.clone();
                aad.extend_from_slice(&word);
                let tag = rtcp.seal_rtcp(0x4242, 5, &aad, &mut []).unwrap();
                let mut pkt = plain.clone();
                pkt.extend_from_slice(&tag);
                pkt.extend_from_slice(&word);
                pkt
            }
        };
        let mut rx = ctx(p);
        let mut bad = pkt.clone();
        bad[10] ^= 1;
        assert_eq!(unprotect_c(&mut rx, &bad), Err(SrtpError::AuthFailed));
        assert_eq!(unprotect_c(&mut rx, &pkt), Ok(plain), "{p:?}");
        assert_eq!(unprotect_c(&mut rx, &pkt), Err(SrtpError::Replayed));
    }
}

// ---------------------------------------------------------------- replay

#[test]
fn replay_rules() {
    for p in PROFILES {
        let mut tx = ctx(p);
        let pkts: Vec<Vec<u8>> = (0..400u16)
            .map(|s| protect(&mut tx, &rtp(s, 5, 20)))
            .collect();
        let mut rx = ctx(p);
        // Same packet twice.
        assert!(unprotect(&mut rx, &pkts[0]).is_ok());
        assert_eq!(unprotect(&mut rx, &pkts[0]), Err(SrtpError::Replayed));
        // Reordered within the window: accepted once.
        assert!(unprotect(&mut rx, &pkts[12]).is_ok());
        assert!(unprotect(&mut rx, &pkts[11]).is_ok());
        assert_eq!(unprotect(&mut rx, &pkts[11]), Err(SrtpError::Replayed));
        assert!(unprotect(&mut rx, &pkts[10]).is_ok());
        // Older than the window.
        assert!(unprotect(&mut rx, &pkts[300]).is_ok());
        assert_eq!(unprotect(&mut rx, &pkts[300 - 128]), Err(SrtpError::TooOld));
        assert!(unprotect(&mut rx, &pkts[300 - 127]).is_ok());
        assert_eq!(unprotect(&mut rx, &pkts[12]), Err(SrtpError::TooOld));
    }
}

#[test]
fn forged_future_packet_does_not_move_window() {
    for p in PROFILES {
        let mut tx = ctx(p);
        let first = protect(&mut tx, &rtp(100, 5, 20));
        let mut forged = protect(&mut tx, &rtp(30_000, 5, 20));
        let legit = protect(&mut tx, &rtp(101, 5, 20));
        let last = forged.len() - 1;
        forged[last] ^= 0x80;
        let mut rx = ctx(p);
        assert!(unprotect(&mut rx, &first).is_ok());
        assert_eq!(unprotect(&mut rx, &forged), Err(SrtpError::AuthFailed));
        assert_eq!(unprotect(&mut rx, &legit), Ok(rtp(101, 5, 20)), "{p:?}");
        // Also for SRTCP: a forged far-future index.
        let c1 = protect_c(&mut tx, &rtcp(5));
        let mut cf = protect_c(&mut tx, &rtcp(5));
        let c3 = protect_c(&mut tx, &rtcp(5));
        let n = cf.len();
        let eidx = match p {
            Profile::Aes128CmHmacSha1_80 => n - 14,
            _ => n - 4,
        };
        cf[eidx] = 0xff; // index 0x7f.. far future, tag no longer matches
        assert!(unprotect_c(&mut rx, &c1).is_ok());
        assert_eq!(unprotect_c(&mut rx, &cf), Err(SrtpError::AuthFailed));
        assert!(unprotect_c(&mut rx, &c3).is_ok());
    }
}

#[test]
fn forged_new_ssrcs_do_not_fill_table() {
    for p in PROFILES {
        let mut tx = ctx(p);
        let mut rx = ctx(p);
        for ssrc in 0..(MAX_SSRCS_PER_CONTEXT as u32 + 10) {
            let mut f = protect(&mut tx, &rtp(1, 1000 + ssrc, 10));
            tx.forget_ssrc(1000 + ssrc); // the send table is bounded too
            f[20] ^= 1;
            assert_eq!(unprotect(&mut rx, &f), Err(SrtpError::AuthFailed));
        }
        for ssrc in 0..MAX_SSRCS_PER_CONTEXT as u32 {
            assert!(unprotect(&mut rx, &protect(&mut tx, &rtp(1, ssrc, 10))).is_ok());
        }
        let mut tx2 = ctx(p);
        let extra = protect(&mut tx2, &rtp(1, 99_999, 10));
        assert_eq!(unprotect(&mut rx, &extra), Err(SrtpError::TooManySsrcs));
        rx.forget_ssrc(3);
        assert!(unprotect(&mut rx, &extra).is_ok());
    }
}

// ---------------------------------------------------------------- hostile input

#[test]
fn every_bit_flip_is_rejected() {
    for p in PROFILES {
        let mut tx = ctx(p);
        let plain = rtp(4242, 77, 48);
        let good = protect(&mut tx, &plain);
        let mut rx = ctx(p);
        for bit in 0..good.len() * 8 {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let r = unprotect(&mut rx, &b);
            let byte = bit / 8;
            // Byte 0 (V/P/X/CC) and the extension length (18..20) may change the parse.
            if byte == 0 || (18..20).contains(&byte) {
                assert!(r.is_err(), "{p:?} bit {bit}");
            } else {
                assert_eq!(r, Err(SrtpError::AuthFailed), "{p:?} bit {bit}");
            }
        }
        assert_eq!(unprotect(&mut rx, &good), Ok(plain));

        let plain = rtcp(0x99);
        let good = protect_c(&mut tx, &plain);
        for bit in 0..good.len() * 8 {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let r = unprotect_c(&mut rx, &b);
            if bit / 8 == 0 && bit % 8 >= 6 {
                assert_eq!(r, Err(SrtpError::Malformed), "{p:?} rtcp bit {bit}");
            } else {
                assert_eq!(r, Err(SrtpError::AuthFailed), "{p:?} rtcp bit {bit}");
            }
        }
        assert_eq!(unprotect_c(&mut rx, &good), Ok(plain));
    }
}

#[test]
fn every_truncation_is_an_error() {
    for p in PROFILES {
        let mut tx = ctx(p);
        let good = protect(&mut tx, &rtp(1, 77, 30));
        let goodc = protect_c(&mut tx, &rtcp(77));
        let mut rx = ctx(p);
        for n in 0..good.len() {
            assert!(unprotect(&mut rx, &good[..n]).is_err(), "{p:?} len {n}");
        }
        for n in 0..goodc.len() {
            assert!(
                unprotect_c(&mut rx, &goodc[..n]).is_err(),
                "{p:?} rtcp len {n}"
            );
        }
        // Header + tag only, nothing else: too short, not a panic.
        for n in 0..p.tag_len() + 28 {
            let mut b = good[..n.min(good.len())].to_vec();
            let _ = rx.unprotect_rtp(&mut b);
        }
        assert!(unprotect(&mut rx, &good).is_ok());
        assert!(unprotect_c(&mut rx, &goodc).is_ok());
    }
}

#[test]
fn protect_checks_buffers() {
    for p in PROFILES {
        let mut tx = ctx(p);
        let plain = rtp(1, 1, 10);
        let mut buf = plain.clone();
        buf.resize(plain.len() + p.rtp_overhead() - 1, 0);
        assert_eq!(
            tx.protect_rtp(&mut buf, plain.len()),
            Err(SrtpError::BufferTooSmall)
        );
        let too_long = buf.len() + 1;
        assert_eq!(
            tx.protect_rtp(&mut buf, too_long),
            Err(SrtpError::BufferTooSmall)
        );
        // The header (with CSRC and extension) is 24 bytes: any shorter len is refused.
        for n in 0..24 {
            let mut b = plain.clone();
            b.resize(100, 0);
            assert!(tx.protect_rtp(&mut b, n).is_err(), "len {n}");
        }
        let plain = rtcp(1);
        let mut buf = plain.clone();
        buf.resize(plain.len() + p.rtcp_overhead() - 1, 0);
        assert_eq!(
            tx.protect_rtcp(&mut buf, plain.len()),
            Err(SrtpError::BufferTooSmall)
        );
        for n in 0..8 {
            let mut b = plain.clone();
            b.resize(100, 0);
            assert_eq!(tx.protect_rtcp(&mut b, n), Err(SrtpError::TooShort));
        }
    }
}

#[test]
fn bad_key_lengths() {
    for p in PROFILES {
        let k = vec![0u8; p.master_key_len()];
        let s = vec![0u8; p.master_salt_len()];
        assert!(SrtpContext::new(p, &k, &s).is_ok());
        assert_eq!(
            SrtpContext::new(p, &k[1..], &s).err(),
            Some(SrtpError::BadKeyLength)
        );
        assert_eq!(
            SrtpContext::new(p, &k, &[0u8; 13]).err(),
            Some(SrtpError::BadKeyLength)
        );
    }
}

#[test]
fn debug_hides_keys() {
    let c = ctx(Profile::AeadAes128Gcm);
    assert_eq!(
        format!("{c:?}"),
        "SrtpContext { profile: AeadAes128Gcm, .. }"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(
        pi in 0usize..3,
        mut b in proptest::collection::vec(any::<u8>(), 0..200),
        len in 0usize..220,
    ) {
        let p = PROFILES[pi];
        let mut c = ctx(p);
        let mut b2 = b.clone();
        let mut b3 = b.clone();
        let mut b4 = b.clone();
        if let Ok(n) = c.unprotect_rtp(&mut b) {
            prop_assert!(n <= b.len());
        }
        if let Ok(n) = c.unprotect_rtcp(&mut b2) {
            prop_assert!(n <= b2.len());
        }
        if let Ok(n) = c.protect_rtp(&mut b3, len) {
            prop_assert_eq!(n, len + p.rtp_overhead());
        }
        if let Ok(n) = c.protect_rtcp(&mut b4, len) {
            prop_assert_eq!(n, len + p.rtcp_overhead());
        }
    }

    /// Arbitrary bytes that look like RTP (V=2) go deeper: through the replay and auth path.
    #[test]
    fn arbitrary_v2_packets_never_panic(
        pi in 0usize..3,
        mut b in proptest::collection::vec(any::<u8>(), 12..200),
    ) {
        b[0] = 0x80 | (b[0] & 0x3f);
        let mut c = ctx(PROFILES[pi]);
        let mut b2 = b.clone();
        prop_assert!(c.unprotect_rtp(&mut b).is_err());
        prop_assert!(c.unprotect_rtcp(&mut b2).is_err());
    }
}

#[test]
fn context_size_is_bounded() {
    let size = std::mem::size_of::<SrtpContext>();
    println!("size_of::<SrtpContext>() = {size}");
    // All per-SSRC state is inline (no heap): keep it under 8 KiB.
    assert!(size <= 8 * 1024, "{size}");
}
