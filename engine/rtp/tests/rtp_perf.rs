//! Rough per-packet cost of the forward-path functions (run with
//! `cargo test -p ils-rtp --release --test rtp_perf -- --ignored --nocapture`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ils_rtp::codec::{is_keyframe, Codec};
use ils_rtp::ext::{rewritten_len, write_rewritten, ExtMap, Rewrite};
use ils_rtp::header::RtpHeader;
use ils_rtp::leg::{LegDecision, LegRewriter};
use ils_rtp::vp8::Vp8Rewriter;

#[test]
#[ignore]
fn forward_path_ns_per_packet() {
    // 1200-byte VP8 packet with 3 one-byte extensions (twcc, mid, rid).
    let mut pkt = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xBE, 0xDE, 0, 3];
    pkt.extend_from_slice(&[0x31, 0, 1, 0x40, b'0', 0xA0, b'f', 0, 0, 0, 0, 0]);
    pkt.extend_from_slice(&[0x90, 0xE0, 0x81, 0x23, 0x05, 0x20, 0x51]);
    pkt.resize(1200, 0xAB);
    let mut map = ExtMap::new();
    map.set(4, 1);
    let mut leg = LegRewriter::new(7, 90_000, 0);
    let mut vp8 = Vp8Rewriter::new();
    let mut out = vec![0u8; 1500];
    let t0 = Instant::now();
    let n_iter = 2_000_000u32;
    let start = Instant::now();
    for i in 0..n_iter {
        let s = (i & 0xFFFF) as u16;
        pkt[2..4].copy_from_slice(&s.to_be_bytes());
        let hdr = RtpHeader::parse(black_box(&pkt)).unwrap();
        let key = is_keyframe(Codec::Vp8, hdr.payload(&pkt)) || i == 0;
        let now = t0 + Duration::from_micros(u64::from(i));
        if let LegDecision::Forward { seq, ts, switched } =
            leg.on_packet(now, 0, hdr.seq, hdr.ts, key)
        {
            let rw = Rewrite {
                ssrc: 9,
                seq,
                ts,
                pt: 96,
                marker: false,
                ext_map: &map,
                twcc: Some((5, s)),
            };
            let n = write_rewritten(&pkt, &hdr, &rw, &mut out).unwrap();
            debug_assert_eq!(n, rewritten_len(&pkt, &hdr, &rw));
            let at = n - hdr.payload_len;
            vp8.rewrite(&mut out[at..n], switched).unwrap();
            black_box(&out);
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(n_iter);
    println!(
        "parse + is_keyframe + leg + write_rewritten(1200 B) + vp8 rewrite: {ns:.1} ns/packet"
    );
}
