//! Loudest-speaker audio slots (issue 5) end to end through the real `ils-control` binary and
//! its engine: three hosts on stage publish Opus from independent webrtc-rs peers with the
//! RFC 6464 `ssrc-audio-level` extension; a viewer with two audio slots is mapped to (and
//! receives the media of) the two loudest, and when the silent host starts talking and a
//! talking one falls silent, the newcomer takes the silent one's slot after the hold time while
//! the other speaker keeps its slot.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ils_control::auth::Role;
use ils_tests::http::start_control;
use ils_tests::ws::{self, connect_peer, transport, Client, MID_EXT};
use ils_tests::TestPeer;
use serde_json::{json, Value};

const SECRET: &str = "control-ws-audio-test-secret-0123456789";
/// The publishers' `ssrc-audio-level` extension id (offered and kept in the answer).
const LEVEL_EXT: u8 = 1;

fn token(room: &str, role: Role, identity: &str) -> String {
    ws::token(SECRET, room, role, identity, None)
}

/// Join with `tok`; the client and its participant id.
async fn join_id(addr: SocketAddr, tok: &str) -> (Client, u64) {
    let (c, w) = ws::join(addr, tok).await;
    (c, w["you"]["id"].as_u64().expect("id"))
}

/// Send-only Opus with the audio-level extension, SSRC signalled.
fn publisher_offer(peer: &TestPeer, ufrag: &str, pwd: &str, ssrc: u32) -> String {
    let t = transport(peer, ufrag, pwd);
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n{t}a=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
         a=extmap:{LEVEL_EXT} urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
         a=ssrc:{ssrc} cname:pub{ssrc}\r\n"
    )
}

/// Receive-only: two audio slots (mids a0, a1).
fn subscriber_offer(peer: &TestPeer, ufrag: &str, pwd: &str) -> String {
    let t = transport(peer, ufrag, pwd);
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE a0 a1\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n{t}a=mid:a0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n{t}a=mid:a1\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
    )
}

/// Sends 20 ms Opus-sized packets from `peer` with the current `level` in the audio-level
/// extension and `tag` as the first payload byte (so the receiver can tell who it hears).
fn spawn_speaker(
    peer: Arc<TestPeer>,
    ssrc: u32,
    tag: u8,
    level: Arc<AtomicU8>,
    run: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seq = 0u16;
        while run.load(Ordering::Relaxed) {
            let mut header = rtp::header::Header {
                version: 2,
                payload_type: 111,
                sequence_number: seq,
                timestamp: u32::from(seq) * 960,
                ssrc,
                extension: true,
                extension_profile: 0xBEDE,
                ..Default::default()
            };
            let l = level.load(Ordering::Relaxed);
            let v = if l < 127 { 0x80 } else { 0 };
            header
                .set_extension(LEVEL_EXT, bytes::Bytes::from(vec![v | l]))
                .expect("one-byte extension");
            header
                .set_extension(MID_EXT, bytes::Bytes::from_static(b"0"))
                .expect("one-byte extension");
            let p = rtp::packet::Packet {
                header,
                payload: bytes::Bytes::from(vec![tag, 1, 2, 3, 4, 5, 6, 7]),
            };
            let _ = peer.send_rtp(&p).await;
            seq = seq.wrapping_add(1);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Audio slot participants of a `slots` message, by slot number.
fn audio_slots(v: &Value) -> Vec<Value> {
    let mut m: Vec<(u64, Value)> = v["mapping"]
        .as_array()
        .expect("mapping")
        .iter()
        .filter(|m| m["kind"] == "audio")
        .map(|m| (m["slot"].as_u64().unwrap_or(0), m["participant"].clone()))
        .collect();
    m.sort_by_key(|(s, _)| *s);
    m.into_iter().map(|(_, p)| p).collect()
}

/// The tags (speakers) the viewer hears within `wait`, by received SSRC.
async fn heard(peer: &TestPeer, wait: Duration) -> HashSet<u8> {
    let deadline = Instant::now() + wait;
    let mut tags = HashSet::new();
    while Instant::now() < deadline {
        if let Some(p) = peer.recv_rtp(Duration::from_millis(50)).await {
            if let Some(t) = p.payload.first() {
                tags.insert(*t);
            }
        }
    }
    tags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_audio_slots_carry_the_two_loudest_of_three_hosts() {
    let data = std::env::temp_dir().join(format!("ils-control-ws-audio-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (_control, addr) = start_control(&data, SECRET);
    let room = "voices";
    let (mut prod, _) = join_id(addr, &token(room, Role::Producer, "prod")).await;

    // three hosts publish; tags 1, 2, 3; host 2 starts silent
    let run = Arc::new(AtomicBool::new(true));
    let mut hosts = Vec::new();
    let mut tasks = Vec::new();
    let levels = [10u8, 127, 25];
    for (i, lv) in levels.iter().enumerate() {
        let name = format!("host{i}");
        let (mut c, id) = join_id(addr, &token(room, Role::Host, &name)).await;
        let ufrag = format!("hufrag{i}");
        let pwd = format!("hostpassword0123456789a{i}");
        let ssrc = 0x1000_0000 + i as u32;
        let mut p = TestPeer::new(&ufrag, &pwd).expect("peer");
        c.send(json!({"type": "publish", "sdp": publisher_offer(&p, &ufrag, &pwd, ssrc), "rid": "pub"}))
            .await;
        let a = c.expect("answer", |v| v["rid"] == "pub").await;
        let sdp = a["sdp"].as_str().expect("sdp");
        assert!(
            sdp.contains("ssrc-audio-level"),
            "the publisher answer keeps the audio-level extension: {sdp}"
        );
        connect_peer(&mut p, sdp).await;
        let level = Arc::new(AtomicU8::new(*lv));
        tasks.push(spawn_speaker(
            Arc::new(p),
            ssrc,
            i as u8 + 1,
            Arc::clone(&level),
            Arc::clone(&run),
        ));
        prod.send(
            json!({"type": "move", "participant": id, "to": "stage", "rid": format!("m{i}")}),
        )
        .await;
        prod.expect("ack", |v| v["rid"] == format!("m{i}")).await;
        hosts.push((c, id, level));
    }
    let ids: Vec<u64> = hosts.iter().map(|h| h.1).collect();

    // a viewer with two audio slots
    let (mut viewer, _) = join_id(addr, &token(room, Role::Viewer, "viewer")).await;
    let (uf, pw) = ("viewufrag", "viewpassword0123456789ab");
    let mut vp = TestPeer::new(uf, pw).expect("peer");
    viewer
        .send(json!({"type": "subscribe", "sdp": subscriber_offer(&vp, uf, pw), "video_slots": 0, "audio_slots": 2, "rid": "sub"}))
        .await;
    let a = viewer.expect("answer", |v| v["rid"] == "sub").await;
    connect_peer(&mut vp, a["sdp"].as_str().expect("sdp")).await;

    // hosts 0 and 2 talk, host 1 is silent: the slots carry 0 and 2 (after the hold)
    let t0 = Instant::now();
    let loud = |v: &Value| {
        let s: HashSet<String> = audio_slots(v).iter().map(|p| p.to_string()).collect();
        s == HashSet::from([ids[0].to_string(), ids[2].to_string()])
    };
    let s = viewer
        .expect_within("slots", loud, Duration::from_secs(6))
        .await;
    let first = audio_slots(&s);
    eprintln!("loudest two mapped after {:?}: {first:?}", t0.elapsed());
    // what was in flight before the re-mapping
    tokio::time::sleep(Duration::from_millis(300)).await;
    while vp.recv_rtp(Duration::from_millis(1)).await.is_some() {}
    let h = heard(&vp, Duration::from_millis(1500)).await;
    assert_eq!(
        h,
        HashSet::from([1, 3]),
        "the viewer hears hosts 0 and 2 only"
    );

    // host 1 starts talking loudly, host 2 falls silent: host 1 takes host 2's slot; host 0
    // keeps its slot
    let t1 = Instant::now();
    hosts[1].2.store(5, Ordering::Relaxed);
    hosts[2].2.store(127, Ordering::Relaxed);
    let s = viewer
        .expect_within(
            "slots",
            |v| audio_slots(v).contains(&json!(ids[1])),
            Duration::from_secs(6),
        )
        .await;
    let took = t1.elapsed();
    let second = audio_slots(&s);
    eprintln!("newcomer mapped after {took:?}: {second:?}");
    assert!(
        took >= Duration::from_millis(900),
        "not before the 1 s hold: {took:?}"
    );
    let slot0 = first
        .iter()
        .position(|p| *p == json!(ids[0]))
        .expect("host 0");
    let slot2 = first
        .iter()
        .position(|p| *p == json!(ids[2]))
        .expect("host 2");
    assert_eq!(second[slot0], json!(ids[0]), "host 0 keeps its slot");
    assert_eq!(second[slot2], json!(ids[1]), "host 1 took host 2's slot");
    tokio::time::sleep(Duration::from_millis(300)).await;
    while vp.recv_rtp(Duration::from_millis(1)).await.is_some() {}
    let h = heard(&vp, Duration::from_millis(1500)).await;
    assert_eq!(
        h,
        HashSet::from([1, 2]),
        "the viewer hears hosts 0 and 1 now"
    );

    let m = ils_tests::http::request(addr, "GET", "/metrics", &[], "").body;
    let reranks: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("ils_ws_audio_reranks_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("ils_ws_audio_reranks_total in /metrics");
    assert!(
        (2..=6).contains(&reranks),
        "speaking-order changes: {reranks}"
    );
    assert!(
        m.contains("ils_engine_audio_level_malformed_total 0"),
        "{m}"
    );

    run.store(false, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let _ = std::fs::remove_dir_all(&data);
}
