//! The engine's proof (issue 2): the real `ils-engine` process, driven over the shared-memory
//! contract by a test control that runs webrtc-dtls, forwards media between real peers built from
//! independent crates (webrtc-rs stun + webrtc-dtls + webrtc-srtp).
//!
//! 1 publisher (3 VP8 simulcast encodings learned by mid/rid + Opus audio) on shard 0,
//! 50 subscribers spread over 2 shards. Asserts: every packet arrives exactly once and decrypts
//! with webrtc-srtp; sequence numbers are continuous across a forced layer switch; a NACK gets
//! a retransmission; 100 PLIs from subscribers produce ≤ 1 PLI per second at the publisher.
//! Runs on both I/O backends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ils_shm::{Command, Counter, Event};
use ils_tests::control::{EngineProc, TestControl};
use ils_tests::scenario::{
    audio_spec, connect, leg, rtp_packet, video_spec, vp8_payload, AUDIO_TRACK, PUBLISHER,
    VIDEO_TRACK,
};
use ils_tests::{generate_cert, TestPeer};
use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};

const SUBSCRIBERS: usize = 50;
const FRAMES: u16 = 100;
const SWITCH_AT: u16 = 50;
const KEYFRAME_L2_AT: u16 = 60;
const SR_AT: u16 = 20;
const SR_NTP: u64 = 0xE000_0000_8000_0000;
struct Sub {
    peer: TestPeer,
    transport: u32,
    shard: usize,
}

async fn scenario(backend: &str) -> anyhow::Result<()> {
    let eng = EngineProc::start(2, backend, &["--keyframe-interval-ms", "1000"])?;
    eprintln!("engine backend: {} (asked {backend})", eng.backend);
    let ctl = TestControl::attach(&eng.socket)?;
    let cert = generate_cert();

    // connect everyone (publisher on shard 0, subscribers alternate shards)
    let publisher = match connect(&ctl, &eng.ports, 0, PUBLISHER, &cert).await {
        Ok(p) => p,
        Err(e) => anyhow::bail!(
            "publisher: {e:#}; engine counters: {}; events: {:?}",
            ctl.counters_text(),
            ctl.events()
        ),
    };
    let mut tasks = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (ctl, cert) = (Arc::clone(&ctl), cert.clone());
        let ports = eng.ports.clone();
        tasks.push(tokio::spawn(async move {
            let shard = i % 2;
            let transport = 100 + i as u32;
            let peer = connect(&ctl, &ports, shard, transport, &cert).await?;
            anyhow::Ok(Sub {
                peer,
                transport,
                shard,
            })
        }));
    }
    let mut subs = Vec::new();
    for t in tasks {
        subs.push(t.await??);
    }

    // tracks on every shard, legs on each subscriber's shard
    ctl.broadcast(&Command::AddTrack(video_spec()))?;
    ctl.broadcast(&Command::AddTrack(audio_spec()))?;
    for (i, s) in subs.iter().enumerate() {
        let i = i as u32;
        ctl.send(
            s.shard,
            &Command::AddLeg(leg(
                1000 + i,
                VIDEO_TRACK,
                s.transport,
                5000 + i,
                96,
                1,
                Some((7000 + i, 97)),
            )),
        )?;
        ctl.send(
            s.shard,
            &Command::AddLeg(leg(
                2000 + i,
                AUDIO_TRACK,
                s.transport,
                6000 + i,
                111,
                0,
                None,
            )),
        )?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rejected: Vec<_> = ctl
        .events()
        .into_iter()
        .filter(|e| matches!(e.event(), Some(Event::Rejected { .. })))
        .collect();
    assert!(rejected.is_empty(), "commands rejected: {rejected:?}");

    // receivers: collect every RTP packet per subscriber
    let subs: Vec<Arc<Sub>> = subs.into_iter().map(Arc::new).collect();
    let mut collectors = Vec::new();
    for s in &subs {
        let s = Arc::clone(s);
        collectors.push(tokio::spawn(async move {
            let mut got: Vec<rtp::packet::Packet> = Vec::new();
            while let Some(p) = s.peer.recv_rtp(Duration::from_millis(1500)).await {
                got.push(p);
            }
            got
        }));
    }

    // publish: 3 layers + audio, 100 frames; switch every video leg to layer 2 at frame 50,
    // the first layer-2 keyframe after that comes at frame 60.
    let video_ssrc = [0x1111_0000u32, 0x2222_0000, 0x3333_0000];
    let audio_ssrc = 0x4444_0000u32;
    let rids = ["q", "h", "f"];
    for f in 0..FRAMES {
        if f == SWITCH_AT {
            for (i, s) in subs.iter().enumerate() {
                ctl.send(
                    s.shard,
                    &Command::SelectLayer {
                        leg: 1000 + i as u32,
                        layer: 2,
                    },
                )?;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        for l in 0..3u8 {
            let key = f == 0 || (l == 2 && f == KEYFRAME_L2_AT);
            let seq = 65_500u16.wrapping_add(f).wrapping_add(u16::from(l) * 7_000);
            let ts = 4_294_000_000u32.wrapping_add(u32::from(f) * 3000);
            let pkt = rtp_packet(
                video_ssrc[usize::from(l)],
                96,
                seq,
                ts,
                "0",
                Some(rids[usize::from(l)]),
                vp8_payload(f, l, key),
            );
            publisher.send_rtp(&pkt).await?;
        }
        if f == SR_AT {
            // a sender report for layer 1 (the layer the legs forward now): every subscriber must
            // get it translated to its own SSRC and timestamp base
            let sr = rtcp::sender_report::SenderReport {
                ssrc: video_ssrc[1],
                ntp_time: SR_NTP,
                rtp_time: 4_294_000_000u32.wrapping_add(u32::from(f) * 3000),
                packet_count: u32::from(f),
                octet_count: 1000,
                reports: vec![],
                profile_extensions: Bytes::new(),
            };
            publisher.send_rtcp(&[Box::new(sr)]).await?;
        }
        let apkt = rtp_packet(
            audio_ssrc,
            111,
            30_000u16.wrapping_add(f),
            u32::from(f) * 960,
            "1",
            None,
            Bytes::from(vec![0xF8, f as u8, (f >> 8) as u8]),
        );
        publisher.send_rtp(&apkt).await?;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }

    // NACK: subscriber 0 asks for a video packet → retransmitted as RTX (RFC 4588) on its RTX
    // SSRC, with the original sequence number first in the payload.
    let nack_seq = {
        // the engine forwards video with the publisher's layer-1 seqs at first (the first packet
        // keeps its source seq): frame 10 of layer 1.
        65_500u16.wrapping_add(10).wrapping_add(7_000)
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let nack = TransportLayerNack {
        sender_ssrc: 0xABCD,
        media_ssrc: 5000,
        nacks: vec![NackPair {
            packet_id: nack_seq,
            lost_packets: 0,
        }],
    };
    subs[0].peer.send_rtcp(&[Box::new(nack)]).await?;

    let mut results = Vec::new();
    for c in collectors {
        results.push(c.await?);
    }

    // ---- exactly-once delivery, decryption, continuity across the switch ----
    for (i, got) in results.iter().enumerate() {
        let video: Vec<_> = got
            .iter()
            .filter(|p| p.header.ssrc == 5000 + i as u32)
            .collect();
        let audio: Vec<_> = got
            .iter()
            .filter(|p| p.header.ssrc == 6000 + i as u32)
            .collect();
        assert_eq!(
            audio.len(),
            usize::from(FRAMES),
            "sub {i}: audio packets; counters {}",
            ctl.counters_text()
        );
        // Expected, in output-seq order: frames 0..=60 from layer 1 (the switch is requested at
        // frame 50 but happens at layer 2's keyframe, sent after layer 1's packet of frame 60),
        // then frames 60..100 from layer 2. Each exactly once, output seqs +1 each.
        let expected: Vec<(u16, u8)> = (0..=KEYFRAME_L2_AT)
            .map(|f| (f, 1))
            .chain((KEYFRAME_L2_AT..FRAMES).map(|f| (f, 2)))
            .collect();
        let mut by_seq: BTreeMap<u16, Vec<&rtp::packet::Packet>> = BTreeMap::new();
        for p in &video {
            by_seq.entry(p.header.sequence_number).or_default().push(p);
        }
        let first = video.first().map(|p| p.header.sequence_number).unwrap_or(0);
        let mut order: Vec<(u16, u8)> = Vec::new();
        for k in 0..by_seq.len() as u16 {
            let seq = first.wrapping_add(k);
            let Some(copies) = by_seq.get(&seq) else {
                panic!("sub {i}: output seq {seq} missing (gap)");
            };
            assert_eq!(
                copies.len(),
                1,
                "sub {i}: seq {seq} copies; counters: {}",
                ctl.counters_text()
            );
            let p = &copies[0].payload;
            order.push((u16::from_be_bytes([p[6], p[7]]), p[5]));
        }
        assert_eq!(
            order, expected,
            "sub {i}: (frame, layer) in output-seq order"
        );
        assert_eq!(video.len(), expected.len(), "sub {i}: video packets");
        let rtx: Vec<_> = got
            .iter()
            .filter(|p| p.header.ssrc == 7000 + i as u32)
            .collect();
        if i == 0 {
            assert_eq!(
                rtx.len(),
                1,
                "sub 0: one retransmission for one NACKed packet"
            );
            let r = rtx[0];
            assert_eq!(r.header.payload_type, 97);
            assert_eq!(
                u16::from_be_bytes([r.payload[0], r.payload[1]]),
                nack_seq,
                "RTX OSN"
            );
            let orig = by_seq
                .get(&nack_seq)
                .expect("the NACKed packet was received");
            assert_eq!(
                &r.payload[2..],
                &orig[0].payload[..],
                "RTX carries the original payload"
            );
            assert_eq!(r.header.timestamp, orig[0].header.timestamp);
        } else {
            assert!(rtx.is_empty(), "sub {i}: unexpected retransmissions");
        }
        // the translated sender report: same NTP time, the leg's SSRC and timestamp base
        let frame_ts = by_seq
            .values()
            .map(|v| v[0])
            .find(|p| {
                p.payload[5] == 1 && u16::from_be_bytes([p.payload[6], p.payload[7]]) == SR_AT
            })
            .map(|p| p.header.timestamp)
            .expect("frame SR_AT received");
        let mut sr_seen = false;
        while let Some(pkts) = subs[i].peer.recv_rtcp(Duration::from_millis(20)).await {
            for p in pkts {
                if let Some(sr) = p
                    .as_any()
                    .downcast_ref::<rtcp::sender_report::SenderReport>()
                {
                    assert_eq!(sr.ssrc, 5000 + i as u32, "sub {i}: SR SSRC is the leg's");
                    assert_eq!(sr.ntp_time, SR_NTP);
                    assert_eq!(
                        sr.rtp_time, frame_ts,
                        "sub {i}: SR RTP time in the leg's timestamp base"
                    );
                    sr_seen = true;
                }
            }
        }
        assert!(sr_seen, "sub {i}: no sender report forwarded");
        let st = subs[i].peer.stats();
        assert_eq!(st.srtp_decrypt_failures, 0, "sub {i}: decrypt failures");
    }

    // ---- PLI coalescing: 100 PLIs from subscribers → ≤ 1 per second at the publisher ----
    tokio::time::sleep(Duration::from_millis(1100)).await; // let earlier keyframe requests age out
    while publisher
        .recv_rtcp(Duration::from_millis(10))
        .await
        .is_some()
    {}
    for k in 0..100 {
        let s = &subs[k % SUBSCRIBERS];
        let idx = k % SUBSCRIBERS;
        let pli = PictureLossIndication {
            sender_ssrc: 0xABCD,
            media_ssrc: 5000 + idx as u32,
        };
        s.peer.send_rtcp(&[Box::new(pli)]).await?;
    }
    let start = tokio::time::Instant::now();
    let mut pli_times = Vec::new();
    while start.elapsed() < Duration::from_millis(2500) {
        if let Some(pkts) = publisher.recv_rtcp(Duration::from_millis(100)).await {
            for p in pkts {
                if p.as_any().downcast_ref::<PictureLossIndication>().is_some() {
                    pli_times.push(start.elapsed());
                }
            }
        }
    }
    eprintln!("PLIs at publisher after 100 subscriber PLIs: {pli_times:?}");
    assert!(
        !pli_times.is_empty(),
        "the publisher got no keyframe request at all"
    );
    let first_second = pli_times
        .iter()
        .filter(|t| **t < Duration::from_millis(900))
        .count();
    assert_eq!(first_second, 1, "≤ 1 PLI per second: {pli_times:?}");
    assert!(pli_times.len() <= 3, "PLIs over 2.5 s: {pli_times:?}");
    assert!(ctl.counter(Counter::KeyframeRequestsCoalesced) > 0);
    assert!(
        ctl.counter(Counter::RtxSent) >= 1,
        "NACK answered from the cache"
    );
    drop(eng);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_io_uring() {
    scenario("io-uring").await.expect("scenario on io_uring");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_mmsg() {
    scenario("mmsg")
        .await
        .expect("scenario on recvmmsg/sendmmsg");
}
