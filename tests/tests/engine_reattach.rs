//! Control can go away and come back without interrupting media (RELIABILITY F1, E3):
//! the engine keeps forwarding established sessions while no control is attached, a new
//! control attaches through the control socket, reads the engine's tables back with
//! `DumpState`, and drives it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ils_shm::{Command, Event};
use ils_tests::control::{EngineProc, TestControl};
use ils_tests::generate_cert;
use ils_tests::scenario::{audio_spec, connect, leg, rtp_packet, AUDIO_TRACK, PUBLISHER};

const SUBSCRIBERS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_survives_control_restart_and_state_is_read_back() {
    let eng = EngineProc::start(2, "auto", &[]).expect("engine starts");
    let ctl = TestControl::attach(&eng.socket).expect("first control attaches");
    let cert = generate_cert();
    let publisher = connect(&ctl, &eng.ports, 0, PUBLISHER, &cert)
        .await
        .expect("publisher");
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let shard = (i % 2) as usize;
        let peer = connect(&ctl, &eng.ports, shard, 100 + i, &cert)
            .await
            .expect("subscriber");
        subs.push((peer, shard));
    }
    ctl.broadcast(&Command::AddTrack(audio_spec()))
        .expect("add track");
    for (i, (_, shard)) in subs.iter().enumerate() {
        let i = i as u32;
        ctl.send(
            *shard,
            &Command::AddLeg(leg(2000 + i, AUDIO_TRACK, 100 + i, 6000 + i, 111, 0, None)),
        )
        .expect("add leg");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // audio every 10 ms for the whole test
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n: u16 = 0;
            while !stop.load(Ordering::Relaxed) {
                let p = rtp_packet(
                    0x4444,
                    111,
                    n,
                    u32::from(n) * 480,
                    "1",
                    None,
                    Bytes::from_static(&[0xF8, 1, 2, 3]),
                );
                publisher.send_rtp(&p).await.expect("send");
                n = n.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    let subs: Vec<_> = subs.into_iter().map(|(p, s)| (Arc::new(p), s)).collect();
    let mut receivers = Vec::new();
    for (i, (peer, _)) in subs.iter().enumerate() {
        let peer = Arc::clone(peer);
        receivers.push(tokio::spawn(async move {
            let mut arrivals: Vec<(u16, Instant)> = Vec::new();
            while let Some(p) = peer.recv_rtp(Duration::from_millis(800)).await {
                if p.header.ssrc == 6000 + i as u32 {
                    arrivals.push((p.header.sequence_number, Instant::now()));
                }
            }
            arrivals
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    // control "dies": nobody reads events or writes commands for 1.5 s
    let gone_at = Instant::now();
    ctl.detach();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // a new control attaches to the running engine and reconciles from its tables
    let ctl2 = TestControl::attach(&eng.socket).expect("second control attaches");
    let back_at = Instant::now();
    for s in 0..ctl2.shards() {
        ctl2.send(s, &Command::DumpState).expect("dump");
    }
    for s in 0..ctl2.shards() as u16 {
        ctl2.wait_event(
            Duration::from_secs(3),
            |e| matches!(e, Event::DumpDone { shard } if *shard == s),
        )
        .expect("every shard answers DumpState");
    }
    let events = ctl2.events();
    let mut transports = 0;
    let mut legs = 0;
    let mut tracks = 0;
    for e in &events {
        match e.event() {
            Some(Event::StateTransport {
                srtp_profile,
                selected,
                ..
            }) => {
                transports += 1;
                assert_ne!(srtp_profile, 0, "keys are installed");
                assert!(selected.is_some(), "a tuple is selected");
            }
            Some(Event::StateLeg(_)) => legs += 1,
            Some(Event::StateTrack(t)) => {
                assert_eq!(t.track, AUDIO_TRACK);
                tracks += 1;
            }
            _ => {}
        }
    }
    assert_eq!(transports, 1 + SUBSCRIBERS, "every transport read back");
    assert_eq!(legs, SUBSCRIBERS, "every leg read back");
    assert_eq!(
        tracks,
        ctl2.shards(),
        "the track is mirrored on every shard"
    );

    // the new control drives the engine: remove one leg, its subscriber stops receiving
    ctl2.send(0, &Command::RemoveLeg { leg: 2000 })
        .expect("remove leg");
    let removed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.expect("sender");

    for (i, r) in receivers.into_iter().enumerate() {
        let arrivals = r.await.expect("receiver");
        // no gap while control was away: consecutive seqs, no silence > 200 ms
        for w in arrivals.windows(2) {
            assert_eq!(
                w[1].0,
                w[0].0.wrapping_add(1),
                "sub {i}: seq gap {} -> {}",
                w[0].0,
                w[1].0
            );
            let gap = w[1].1 - w[0].1;
            assert!(
                gap < Duration::from_millis(200),
                "sub {i}: media stalled {gap:?} at seq {}",
                w[1].0
            );
        }
        let during: usize = arrivals
            .iter()
            .filter(|(_, t)| *t > gone_at && *t < back_at)
            .count();
        assert!(
            during >= 100,
            "sub {i}: only {during} packets while control was gone"
        );
        if i == 0 {
            let late = arrivals
                .iter()
                .filter(|(_, t)| *t > removed_at + Duration::from_millis(50))
                .count();
            assert_eq!(late, 0, "removed leg still receives");
        } else {
            assert!(
                arrivals.len() + 10 >= usize::from(sent),
                "sub {i}: {} of {sent}",
                arrivals.len()
            );
        }
    }
}
