//! The engine's forward path for one SRTP packet, through `Core::handle_datagram`, no socket:
//! demux, tuple lookup, SRTP unprotect (in place), RTP parse, SSRC lookup, receive statistics,
//! NACK tracking, transport-cc arrival, RTX-cache insert, then per leg: leg rewrite, header and
//! extension rewrite straight into the `TxBatch`, VP8 picture-id rewrite, SRTP protect in place.
//! `TxBatch::clear` follows each packet (the shard clears after its flush; the send itself is
//! measured separately by `cargo run --release -p ils-io --example fanout`).
//!
//! Cases: 1200 B VP8 video on AEAD_AES_128_GCM and on AES_CM_128_HMAC_SHA1_80, 160 B Opus audio
//! on AEAD_AES_128_GCM; 1, 10 and 100 subscriber legs (each its own transport, address and SRTP
//! context). Throughput is `Elements(legs)`, so criterion's "elem/s" is output packets per
//! second and time / legs is the cost per output packet.
//!
//! Packets are fresh every iteration: `iter_batched_ref`'s set-up (not timed) writes the next
//! packet of the publisher's stream and protects it with the publisher's SRTP context, with
//! ever-increasing sequence numbers (ROC carried across wraps), so the replay window accepts every
//! one. After each case the bench checks that every packet reached every leg
//! (`ForwardedPackets` grew by legs × packets) and that no drop counter moved.
//!
//! Run: `cargo bench -p ils-bench --bench forward -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ils_bench::{ForwardRig, Media};
use ils_srtp::Profile;

fn bench(c: &mut Criterion) {
    let cases = [
        (
            "video1200/AeadAes128Gcm",
            Profile::AeadAes128Gcm,
            Media::Video { payload: 1200 },
        ),
        (
            "video1200/Aes128CmHmacSha1_80",
            Profile::Aes128CmHmacSha1_80,
            Media::Video { payload: 1200 },
        ),
        (
            "audio160/AeadAes128Gcm",
            Profile::AeadAes128Gcm,
            Media::Audio { payload: 160 },
        ),
    ];
    for (name, profile, media) in cases {
        let mut g = c.benchmark_group(format!("forward/{name}"));
        for legs in [1usize, 10, 100] {
            let (mut rig, mut src) = match ForwardRig::new(profile, media, legs) {
                Ok(x) => x,
                Err(e) => panic!("forward bench set-up {name} legs={legs}: {e}"),
            };
            g.throughput(Throughput::Elements(legs as u64));
            let start_fwd = rig.forwarded();
            let start_pkts = src.count();
            g.bench_function(format!("{legs}legs"), |b| {
                b.iter_batched_ref(
                    || src.next_packet(),
                    |p| rig.forward(p),
                    BatchSize::SmallInput,
                )
            });
            let packets = src.count() - start_pkts;
            let forwarded = rig.forwarded() - start_fwd;
            assert_eq!(
                forwarded,
                packets * legs as u64,
                "{name} legs={legs}: {packets} packets should reach {legs} legs each; drops: {}",
                rig.drops_text()
            );
            assert_eq!(rig.drops(), 0, "{name}: drops {}", rig.drops_text());
            if packets > 0 {
                eprintln!(
                    "check {name} legs={legs}: {packets} packets -> {forwarded} forwarded, 0 drops"
                );
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
