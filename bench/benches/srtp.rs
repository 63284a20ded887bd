//! SRTP protect/unprotect per packet: ils-srtp (in place, no allocation) vs webrtc-srtp 0.15
//! (allocates a `Bytes` per call). Profiles AES-CM-HMAC-SHA1-80 and AES-128-GCM (plus
//! AES-256-GCM, ours only: webrtc-srtp lacks it); payloads 160 B and 1200 B.
//!
//! Run: `cargo bench -p ils-bench --bench srtp -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ils_srtp::{Profile, SrtpContext};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

const SSRC: u32 = 0x1234_5678;

fn rtp(seq: u16, payload: usize) -> Vec<u8> {
    let mut p = vec![0x90, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    // One-byte extension with an abs-send-time-like element, as browsers send.
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x22, 1, 2, 3]);
    p.extend((0..payload).map(|i| i as u8));
    p
}

fn keys(p: Profile) -> (Vec<u8>, Vec<u8>) {
    (
        vec![0x11; p.master_key_len()],
        vec![0x22; p.master_salt_len()],
    )
}

fn webrtc(p: Profile) -> Option<ProtectionProfile> {
    match p {
        Profile::Aes128CmHmacSha1_80 => Some(ProtectionProfile::Aes128CmHmacSha1_80),
        Profile::AeadAes128Gcm => Some(ProtectionProfile::AeadAes128Gcm),
        Profile::AeadAes256Gcm => None,
    }
}

fn bench(c: &mut Criterion) {
    for profile in [
        Profile::Aes128CmHmacSha1_80,
        Profile::AeadAes128Gcm,
        Profile::AeadAes256Gcm,
    ] {
        for payload in [160usize, 1200] {
            let (key, salt) = keys(profile);

            let mut g = c.benchmark_group(format!("protect/{profile:?}/{payload}B"));
            g.throughput(Throughput::Elements(1));
            {
                let mut tx = SrtpContext::new(profile, &key, &salt).unwrap();
                let plain = rtp(0, payload);
                let mut buf = vec![0u8; 1500];
                let mut seq = 0u16;
                g.bench_function("ils", |b| {
                    b.iter(|| {
                        seq = seq.wrapping_add(1);
                        buf[..plain.len()].copy_from_slice(&plain);
                        buf[2..4].copy_from_slice(&seq.to_be_bytes());
                        black_box(tx.protect_rtp(&mut buf, plain.len()).unwrap())
                    })
                });
            }
            if let Some(wp) = webrtc(profile) {
                let mut tx = Context::new(&key, &salt, wp, None, None).unwrap();
                let mut plain = rtp(0, payload);
                let mut seq = 0u16;
                g.bench_function("webrtc-srtp", |b| {
                    b.iter(|| {
                        seq = seq.wrapping_add(1);
                        plain[2..4].copy_from_slice(&seq.to_be_bytes());
                        black_box(tx.encrypt_rtp(&plain).unwrap())
                    })
                });
            }
            g.finish();

            let mut g = c.benchmark_group(format!("unprotect/{profile:?}/{payload}B"));
            g.throughput(Throughput::Elements(1));
            {
                // Fresh packets (replay protection is on), produced outside the timing.
                let mut tx = SrtpContext::new(profile, &key, &salt).unwrap();
                let mut rx = SrtpContext::new(profile, &key, &salt).unwrap();
                let mut seq = 0u16;
                g.bench_function("ils", |b| {
                    b.iter_batched_ref(
                        || {
                            seq = seq.wrapping_add(1);
                            let p = rtp(seq, payload);
                            let mut buf = p.clone();
                            buf.resize(p.len() + profile.rtp_overhead(), 0);
                            tx.protect_rtp(&mut buf, p.len()).unwrap();
                            buf
                        },
                        |pkt| black_box(rx.unprotect_rtp(pkt).unwrap()),
                        BatchSize::SmallInput,
                    )
                });
            }
            if let Some(wp) = webrtc(profile) {
                let mut tx = Context::new(&key, &salt, wp, None, None).unwrap();
                let mut rx = Context::new(&key, &salt, wp, None, None).unwrap();
                let mut seq = 0u16;
                g.bench_function("webrtc-srtp", |b| {
                    b.iter_batched_ref(
                        || {
                            seq = seq.wrapping_add(1);
                            tx.encrypt_rtp(&rtp(seq, payload)).unwrap()
                        },
                        |pkt| black_box(rx.decrypt_rtp(pkt).unwrap()),
                        BatchSize::SmallInput,
                    )
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
