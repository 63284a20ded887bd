//! `/ws` (interactive live streaming sessions, issue 5) end to end through the real `ils-control`
//! binary and its engine: join and refusals over the wire, a host publishing real SRTP from an
//! independent webrtc-rs peer, a viewer's fixed slots receiving that media only while the
//! producer has the host on stage (no renegotiation), chat, aggregated reactions, and the admin
//! HTTP API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ils_control::auth::{Grant, Role};
use ils_tests::http::{request, start_control};
use ils_tests::ws::{self, attr, candidate, connect_peer, join, transport, Client};
use ils_tests::TestPeer;
use serde_json::{json, Value};

const SECRET: &str = "control-ws-test-secret-0123456789";

fn token(room: &str, role: Role, identity: &str, grants: Option<Vec<Grant>>) -> String {
    ws::token(SECRET, room, role, identity, grants)
}

const AUDIO_SSRC: u32 = 0x1111_0001;
const VIDEO_SSRC: u32 = 0x2222_0002;

/// Send-only Opus + VP8 (one layer each, SSRCs signalled).
fn publisher_offer(peer: &TestPeer, ufrag: &str, pwd: &str) -> String {
    let t = transport(peer, ufrag, pwd);
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n{t}a=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
         a=ssrc:{AUDIO_SSRC} cname:pub\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 96\r\n{t}a=mid:1\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n\
         a=ssrc:{VIDEO_SSRC} cname:pub\r\n"
    )
}

/// Receive-only: one video slot (mid v0) and one audio slot (mid a0).
fn subscriber_offer(peer: &TestPeer, ufrag: &str, pwd: &str) -> String {
    let t = transport(peer, ufrag, pwd);
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE v0 a0\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 96\r\n{t}a=mid:v0\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n{t}a=mid:a0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
    )
}

/// RTP packets the subscriber receives within `wait`.
async fn rtp_within(peer: &TestPeer, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut n = 0;
    while Instant::now() < deadline {
        if peer.recv_rtp(Duration::from_millis(50)).await.is_some() {
            n += 1;
        }
    }
    n
}

/// Discard queued RTP (what was in flight before a change).
async fn drain(peer: &TestPeer) {
    while peer.recv_rtp(Duration::from_millis(1)).await.is_some() {}
}

fn slot_participant(slots: &Value, kind: &str) -> Value {
    slots["mapping"]
        .as_array()
        .expect("mapping")
        .iter()
        .find(|m| m["kind"] == kind)
        .map(|m| m["participant"].clone())
        .expect("slot of kind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ils_session_over_ws_with_real_media() {
    let data = std::env::temp_dir().join(format!("ils-control-ws-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (_control, addr) = start_control(&data, SECRET);
    let room = "show";

    // a socket that never says hello: checked at the end (HELLO_TIMEOUT is 5 s)
    let mut silent = Client::connect(addr).await;
    let silent_since = Instant::now();

    // ---- refusals over the wire: typed error, then a close with a reason ----
    let mut c = Client::connect(addr).await;
    c.send(json!({"type": "hello", "v": 1, "token": "not-a-jwt", "rid": "x"}))
        .await;
    let e = c.expect("error", |_| true).await;
    assert_eq!(e["code"], "unauthorized");
    assert_eq!(e["rid"], "x");
    let (code, reason) = c.close_frame().await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("unauthorized"), "{reason}");

    let mut c = Client::connect(addr).await;
    c.send(json!({"type": "chat", "text": "hi"})).await;
    assert_eq!(c.expect("error", |_| true).await["code"], "not_joined");
    assert!(
        !c.close_frame().await.1.is_empty(),
        "close carries a reason"
    );

    let mut c = Client::connect(addr).await;
    let vt = token(room, Role::Viewer, "v0", None);
    c.send(json!({"type": "hello", "v": 2, "token": vt})).await;
    assert_eq!(
        c.expect("error", |_| true).await["code"],
        "unsupported_version"
    );

    let mut c = Client::connect(addr).await;
    // Over ils-session's MAX_MESSAGE_BYTES (128 KiB), under the socket's hard cap (256 KiB).
    c.send(json!({"type": "hello", "v": 1, "token": vt, "junk": "x".repeat(140_000)}))
        .await;
    assert_eq!(c.expect("error", |_| true).await["code"], "too_large");

    // ---- join: producer backstage, host in the green room, viewer in the audience ----
    let (mut prod, w) = join(addr, &token(room, Role::Producer, "prod", None)).await;
    assert_eq!(w["you"]["place"], "backstage");
    assert_eq!(w["you"]["grants"]["admin"], true);
    let (mut host, w) = join(addr, &token(room, Role::Host, "host", None)).await;
    assert_eq!(w["you"]["place"], "green_room");
    let host_id = w["you"]["id"].as_u64().expect("id");
    let (mut viewer, w) = join(addr, &token(room, Role::Viewer, "viewer", None)).await;
    assert_eq!(w["you"]["place"], "audience");
    assert_eq!(w["you"]["name"], "VIEWER", "name claim");
    assert_eq!(
        w["state"]["green_room"].as_array().map(Vec::len),
        Some(0),
        "the audience never sees the green room"
    );

    // grants checked on the server: a viewer may not publish; a token without chat may not chat
    viewer
        .send(json!({"type": "publish", "sdp": "v=0", "rid": "p"}))
        .await;
    let e = viewer.expect("error", |v| v["rid"] == "p").await;
    assert_eq!(e["code"], "not_allowed", "{e}");
    let (mut mute, _) = join(
        addr,
        &token(room, Role::Viewer, "silent", Some(vec![Grant::Subscribe])),
    )
    .await;
    mute.send(json!({"type": "chat", "text": "hello", "rid": "c"}))
        .await;
    assert_eq!(
        mute.expect("error", |v| v["rid"] == "c").await["code"],
        "not_allowed"
    );
    mute.send(json!({"type": "leave"})).await;
    assert_eq!(mute.close_frame().await.0, 1000);

    // ---- media: the host publishes real SRTP; the viewer subscribes with fixed slots ----
    let sender = publish_and_send(&mut host, "hostufrag", "hostpassword0123456789ab", "pub").await;
    let pinfo = prod
        .expect("participant", |v| {
            v["id"] == host_id && v["publishing"] == true
        })
        .await;
    assert_eq!(pinfo["place"], "green_room");

    let mut vp = TestPeer::new("viewufrag", "viewpassword0123456789ab").expect("peer");
    viewer
        .send(json!({"type": "subscribe", "sdp": subscriber_offer(&vp, "viewufrag", "viewpassword0123456789ab"), "video_slots": 1, "audio_slots": 1, "rid": "sub"}))
        .await;
    let a = viewer.expect("answer", |v| v["rid"] == "sub").await;
    assert_eq!(
        a["slots"],
        json!([{"slot": 0, "kind": "video", "mid": "v0"}, {"slot": 0, "kind": "audio", "mid": "a0"}])
    );
    let answer_sdp = a["sdp"].as_str().expect("sdp").to_string();
    connect_peer(&mut vp, &answer_sdp).await;
    let s = viewer.expect("slots", |_| true).await;
    assert_eq!(slot_participant(&s, "video"), Value::Null);
    assert_eq!(
        rtp_within(&vp, Duration::from_millis(1500)).await,
        0,
        "a green-room host never reaches the audience"
    );

    // slot sizes: a known video slot is acknowledged, an unknown one is not_found
    viewer
        .send(json!({"type": "slot_size", "slot": 0, "size": "thumbnail", "rid": "z0"}))
        .await;
    viewer.expect("ack", |v| v["rid"] == "z0").await;
    viewer
        .send(json!({"type": "slot_size", "slot": 7, "size": "full", "rid": "z7"}))
        .await;
    assert_eq!(
        viewer.expect("error", |v| v["rid"] == "z7").await["code"],
        "not_found"
    );
    viewer
        .send(json!({"type": "trickle", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}, "rid": "t"}))
        .await;
    viewer.expect("ack", |v| v["rid"] == "t").await;

    // ---- the producer brings the host on stage: the viewer's slots carry it, no new SDP ----
    prod.send(json!({"type": "move", "participant": host_id, "to": "stage", "rid": "m1"}))
        .await;
    prod.expect("ack", |v| v["rid"] == "m1").await;
    let s = viewer
        .expect("slots", |v| slot_participant(v, "video") == host_id)
        .await;
    assert_eq!(slot_participant(&s, "audio"), host_id);
    let t0 = Instant::now();
    let got = rtp_within(&vp, Duration::from_secs(2)).await;
    assert!(got > 20, "stage media reaches the viewer: {got} packets");
    assert!(t0.elapsed() < Duration::from_secs(3));

    // ---- back to the green room: media stops ----
    prod.send(json!({"type": "move", "participant": host_id, "to": "green_room"}))
        .await;
    viewer
        .expect("slots", |v| slot_participant(v, "video") == Value::Null)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain(&vp).await;
    assert_eq!(
        rtp_within(&vp, Duration::from_secs(1)).await,
        0,
        "off stage, nothing is forwarded"
    );

    // ---- admin HTTP API: a host token has no admin grant; the producer's does ----
    let body = r#"{"to":"stage"}"#;
    let path = format!("/api/sessions/{room}/participants/{host_id}/move");
    let host_bearer = format!("Bearer {}", token(room, Role::Host, "h2", None));
    let r = request(
        addr,
        "POST",
        &path,
        &[("Authorization", &host_bearer)],
        body,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let prod_bearer = format!("Bearer {}", token(room, Role::Producer, "api", None));
    let auth_h = ("Authorization", prod_bearer.as_str());
    let r = request(addr, "POST", &path, &[auth_h], body);
    assert_eq!(r.status, 200, "{}", r.body);
    viewer
        .expect("slots", |v| slot_participant(v, "video") == host_id)
        .await;
    assert!(rtp_within(&vp, Duration::from_secs(2)).await > 20);
    let r = request(
        addr,
        "GET",
        &format!("/api/sessions/{room}/participants?limit=10"),
        &[auth_h],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let p: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(p["stage"][0]["id"], host_id);
    assert_eq!(p["audience_count"], 1);
    assert_eq!(p["audience"]["items"][0]["name"], "VIEWER");
    let r = request(
        addr,
        "POST",
        &format!("/api/sessions/{room}/participants/999/move"),
        &[auth_h],
        body,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = request(
        addr,
        "POST",
        &format!("/api/sessions/{room}/app"),
        &[auth_h],
        r#"{"to":{"all":true},"data":{"banner":"welcome"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    viewer
        .expect("app", |v| v["data"]["banner"] == "welcome")
        .await;

    // ---- chat round trip and aggregated reactions ----
    viewer
        .send(json!({"type": "chat", "text": "hello stage"}))
        .await;
    let m = prod
        .expect("chat", |v| v["msg"]["text"] == "hello stage")
        .await;
    assert_eq!(m["msg"]["from"]["name"], "VIEWER");
    for _ in 0..8 {
        viewer.send(json!({"type": "react", "emoji": "👍"})).await;
    }
    let mut total = 0;
    let mut messages = 0;
    while total < 8 {
        let r = prod.expect("reactions", |_| true).await;
        total += r["counts"]["👍"].as_u64().unwrap_or(0);
        messages += 1;
    }
    assert_eq!(total, 8);
    assert!(
        messages <= 2,
        "8 reactions arrive aggregated, not one by one"
    );

    // ---- the silent socket was told and closed ----
    assert_eq!(silent.expect("error", |_| true).await["code"], "not_joined");
    assert!(silent_since.elapsed() >= Duration::from_secs(4));
    assert!(silent.close_frame().await.1.contains("hello"));

    // ---- metrics ----
    // (closed sockets are counted out when their task ends, just after the client saw the close)
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut m = request(addr, "GET", "/metrics", &[], "").body;
    while !m.contains("ils_ws_sockets_open 3") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = request(addr, "GET", "/metrics", &[], "").body;
    }
    assert!(m.contains("ils_ws_sockets_open 3"), "{m}");
    assert!(m.contains("ils_ws_refused_total{reason=\"unauthorized\"} 1"));
    assert!(m.contains("ils_ws_messages_in_total{type=\"react\"} 8"));
    assert!(m.contains("ils_session_reactions_counted_total 8"), "{m}");
    assert!(m.contains("ils_sessions 1"));

    // ---- invalid frames are answered, then the socket is closed after MAX_BAD_FRAMES ----
    let (mut noisy, _) = join(addr, &token(room, Role::Viewer, "noisy", None)).await;
    for _ in 0..50 {
        noisy.send(json!({"type": "dance"})).await;
    }
    assert_eq!(noisy.expect("error", |_| true).await["code"], "bad_message");
    let (code, reason) = noisy.close_frame().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("invalid messages"), "{reason}");

    // ---- the producer ends the session: everyone gets ended and a close ----
    let end_session = || {
        request(
            addr,
            "DELETE",
            &format!("/api/sessions/{room}"),
            &[auth_h],
            "",
        )
    };
    let r = end_session();
    assert_eq!(r.status, 200, "{}", r.body);
    viewer.expect("ended", |_| true).await;
    let (code, reason) = viewer.close_frame().await;
    assert_eq!(code, 1000);
    assert!(reason.contains("ended"), "{reason}");
    let r = end_session();
    assert_eq!(r.status, 410, "already ended: {}", r.body);
    // joining an ended session is refused with a reason
    let mut late = Client::connect(addr).await;
    late.send(json!({"type": "hello", "v": 1, "token": token(room, Role::Viewer, "late", None)}))
        .await;
    assert_eq!(late.expect("error", |_| true).await["code"], "ended");
    // the admin API starts a fresh session under the same name; a second create conflicts
    let create = format!("/api/sessions/{room}");
    assert_eq!(request(addr, "POST", &create, &[auth_h], "").status, 201);
    assert_eq!(request(addr, "POST", &create, &[auth_h], "").status, 409);
    let (_again, w) = join(addr, &token(room, Role::Viewer, "late", None)).await;
    assert_eq!(w["you"]["place"], "audience");
    sender.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

/// A publisher peer's media: 20 ms audio + video RTP until [`Sender::stop`].
struct Sender {
    run: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    fn start(peer: Arc<TestPeer>) -> Sender {
        let run = Arc::new(AtomicBool::new(true));
        let go = Arc::clone(&run);
        let task = tokio::spawn(async move {
            let mut seq = 0u16;
            while go.load(Ordering::Relaxed) {
                for (pt, ssrc) in [(111u8, AUDIO_SSRC), (96, VIDEO_SSRC)] {
                    let p = rtp::packet::Packet {
                        header: rtp::header::Header {
                            version: 2,
                            payload_type: pt,
                            sequence_number: seq,
                            timestamp: u32::from(seq) * 960,
                            ssrc,
                            marker: pt == 96,
                            ..Default::default()
                        },
                        payload: bytes::Bytes::from_static(&[0x90, 0x80, 0, 1, 2, 3, 4, 5]),
                    };
                    let _ = peer.send_rtp(&p).await;
                }
                seq = seq.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Sender { run, task }
    }

    async fn stop(self) {
        self.run.store(false, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

/// `c` publishes from a new peer (`publish` with `rid`, ICE + DTLS with the engine) and the peer
/// starts sending media.
async fn publish_and_send(c: &mut Client, ufrag: &str, pwd: &str, rid: &str) -> Sender {
    let mut p = TestPeer::new(ufrag, pwd).expect("peer");
    c.send(json!({"type": "publish", "sdp": publisher_offer(&p, ufrag, pwd), "rid": rid}))
        .await;
    let a = c.expect("answer", |v| v["rid"] == rid).await;
    connect_peer(&mut p, a["sdp"].as_str().expect("sdp")).await;
    Sender::start(Arc::new(p))
}

/// `c` subscribes from a new peer with one video and one audio slot (`subscribe` with `rid`).
async fn subscribe_peer(c: &mut Client, ufrag: &str, rid: &str) -> TestPeer {
    let pwd = format!("{ufrag}password0123456789ab");
    let mut p = TestPeer::new(ufrag, &pwd).expect("peer");
    c.send(json!({"type": "subscribe", "sdp": subscriber_offer(&p, ufrag, &pwd), "video_slots": 1, "audio_slots": 1, "rid": rid}))
        .await;
    let a = c.expect("answer", |v| v["rid"] == rid).await;
    connect_peer(&mut p, a["sdp"].as_str().expect("sdp")).await;
    p
}

/// Join with a receiving connection of one video and one audio slot.
async fn subscribed(addr: SocketAddr, tok: &str, ufrag: &str) -> (Client, Value, TestPeer) {
    let (mut c, w) = join(addr, tok).await;
    let p = subscribe_peer(&mut c, ufrag, "sub").await;
    (c, w, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invited_viewer_publishes_into_the_green_room_and_is_removed() {
    let data = std::env::temp_dir().join(format!("ils-control-ws-invite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (_control, addr) = start_control(&data, SECRET);
    let room = "town-hall";
    let (mut prod, _, pp) = subscribed(
        addr,
        &token(room, Role::Producer, "prod", None),
        "produfrag",
    )
    .await;
    let (mut aud, _, ap) =
        subscribed(addr, &token(room, Role::Viewer, "aud", None), "audiufrag").await;
    let (mut guest, w) = join(addr, &token(room, Role::Viewer, "guest", None)).await;
    let guest_id = w["you"]["id"].as_u64().expect("id");

    // not invited yet: publishing is refused
    let mut gp = TestPeer::new("guestufrag", "guestpassword0123456789a").expect("peer");
    let offer = publisher_offer(&gp, "guestufrag", "guestpassword0123456789a");
    guest
        .send(json!({"type": "publish", "sdp": offer, "rid": "p0"}))
        .await;
    assert_eq!(
        guest.expect("error", |v| v["rid"] == "p0").await["code"],
        "not_allowed"
    );
    // the guest raises a hand; the producer sees it and invites
    guest.send(json!({"type": "hand", "raised": true})).await;
    prod.expect("hand", |v| {
        v["participant"] == guest_id && v["raised"] == true
    })
    .await;
    prod.send(json!({"type": "invite", "participant": guest_id, "rid": "i"}))
        .await;
    prod.expect("ack", |v| v["rid"] == "i").await;
    guest.expect("invited", |_| true).await;
    guest
        .send(json!({"type": "publish", "sdp": offer, "rid": "p1"}))
        .await;
    let a = guest.expect("answer", |v| v["rid"] == "p1").await;
    connect_peer(&mut gp, a["sdp"].as_str().expect("sdp")).await;
    let sender = Sender::start(Arc::new(gp));

    // green room: the producer sees and hears the guest, the audience does not
    prod.expect("slots", |v| slot_participant(v, "video") == guest_id)
        .await;
    assert!(rtp_within(&pp, Duration::from_secs(2)).await > 20);
    assert_eq!(
        rtp_within(&ap, Duration::from_millis(1500)).await,
        0,
        "a viewer's media reaches the audience only from the stage"
    );

    // on stage: the audience gets it, in the slot it already has
    prod.send(json!({"type": "move", "participant": guest_id, "to": "stage"}))
        .await;
    aud.expect("slots", |v| slot_participant(v, "video") == guest_id)
        .await;
    assert!(rtp_within(&ap, Duration::from_secs(2)).await > 20);

    // removed: the guest is told why and closed; its media is gone everywhere
    prod.send(json!({"type": "remove", "participant": guest_id, "reason": "thanks!"}))
        .await;
    let r = guest.expect("removed", |_| true).await;
    assert_eq!(r["reason"], "thanks!");
    let (code, reason) = guest.close_frame().await;
    assert_eq!(code, 1000);
    assert!(reason.contains("thanks!"), "{reason}");
    aud.expect("slots", |v| slot_participant(v, "video") == Value::Null)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain(&ap).await;
    drain(&pp).await;
    assert_eq!(rtp_within(&ap, Duration::from_secs(1)).await, 0);
    assert_eq!(rtp_within(&pp, Duration::from_millis(500)).await, 0);
    // and cannot come back with the same identity
    let mut again = Client::connect(addr).await;
    again
        .send(json!({"type": "hello", "v": 1, "token": token(room, Role::Viewer, "guest", None)}))
        .await;
    assert_eq!(again.expect("error", |_| true).await["code"], "removed");
    sender.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dtls_handshake_asks_for_renegotiation_then_gives_up() {
    let data = std::env::temp_dir().join(format!("ils-control-ws-dtls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (_control, addr) = start_control(&data, SECRET);
    let (mut v, _) = join(addr, &token("r", Role::Viewer, "v", None)).await;
    let mut p = TestPeer::new("badfufrag", "badfpassword0123456789ab").expect("peer");
    // an offer whose fingerprint is not the peer's certificate: the server's DTLS check fails
    let real = p.certificate_fingerprint();
    let fake: String = real
        .chars()
        .map(|c| {
            if c == ':' {
                ':'
            } else if c == 'A' {
                'B'
            } else {
                'A'
            }
        })
        .collect();
    let offer = subscriber_offer(&p, "badfufrag", "badfpassword0123456789ab").replace(&real, &fake);
    // (every new TestPeer below gets a fresh certificate: the offer's fingerprint never matches)
    v.send(
        json!({"type": "subscribe", "sdp": offer, "video_slots": 1, "audio_slots": 1, "rid": "s"}),
    )
    .await;
    // The server asks for a new connection (server-initiated renegotiation) RENEGOTIATE_MAX
    // times; when the new connections keep failing it gives up with a typed error.
    for round in 0..=ils_session::RENEGOTIATE_MAX {
        let rid = format!("s{round}");
        if round > 0 {
            v.send(json!({"type": "subscribe", "sdp": offer, "video_slots": 1, "audio_slots": 1, "rid": rid}))
                .await;
        }
        let a = v
            .expect("answer", |x| {
                x["rid"] == rid || (round == 0 && x["rid"] == "s")
            })
            .await;
        let sdp = a["sdp"].as_str().expect("sdp").to_string();
        let _ = p
            .connect(
                candidate(&sdp),
                &attr(&sdp, "ice-ufrag"),
                &attr(&sdp, "ice-pwd"),
            )
            .await;
        if round < ils_session::RENEGOTIATE_MAX {
            let r = v.expect("renegotiate", |_| true).await;
            assert_eq!(r["pc"], "subscribe", "{r}");
            assert_eq!(r["cause"], "dtls_failed", "{r}");
            assert!(
                r["reason"]
                    .as_str()
                    .is_some_and(|x| x.contains("subscribe again")),
                "{r}"
            );
        } else {
            let e = v
                .expect("error", |x| {
                    x["code"] == "internal"
                        && x["reason"]
                            .as_str()
                            .is_some_and(|r| r.contains("subscribe again"))
                })
                .await;
            assert!(e.get("rid").is_none(), "{e}");
        }
        p = TestPeer::new("badfufrag", "badfpassword0123456789ab").expect("peer");
    }
    assert_eq!(
        ils_tests::http::metric(addr, "ils_ws_renegotiations_total"),
        u64::from(ils_session::RENEGOTIATE_MAX)
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// The media engine child of the `ils-control` process `control` (`ils-control engine …`, or an
/// `ils-engine` binary), found in /proc.
fn engine_pid_of(control: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let (_, tail) = stat.rsplit_once(')')?;
        let ppid: u32 = tail.split_whitespace().nth(1)?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let mut args = cmdline.split(|b| *b == 0);
        let bin = args.next()?;
        let engine = bin.ends_with(b"ils-engine") || args.next() == Some(b"engine".as_slice());
        (ppid == control && engine).then_some(pid)
    })
}

/// Server-initiated renegotiation: the media engine is SIGKILLed under a live session. Control
/// restarts it and asks the host (`pc: publish`) and the viewer (`pc: subscribe`) to make their
/// connections again (`renegotiate`, cause `engine_restart`); the host keeps its stage place, the
/// viewer its slot, and media flows again through the new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_restart_renegotiates_and_media_resumes_on_stage() {
    let data = std::env::temp_dir().join(format!("ils-control-ws-reneg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (control, addr) = start_control(&data, SECRET);
    let room = "resilient";
    let (mut prod, _) = join(addr, &token(room, Role::Producer, "prod", None)).await;
    let (mut host, w) = join(addr, &token(room, Role::Host, "host", None)).await;
    let host_id = w["you"]["id"].as_u64().expect("id");
    let (mut viewer, _, vp) = subscribed(
        addr,
        &token(room, Role::Viewer, "viewer", None),
        "viewufrag",
    )
    .await;

    let (hu, hpw) = ("hostufrag", "hostpassword0123456789ab");
    let sender = publish_and_send(&mut host, hu, hpw, "p1").await;
    prod.send(json!({"type": "move", "participant": host_id, "to": "stage", "rid": "m"}))
        .await;
    prod.expect("ack", |v| v["rid"] == "m").await;
    viewer
        .expect("slots", |v| slot_participant(v, "video") == host_id)
        .await;
    assert!(
        rtp_within(&vp, Duration::from_secs(2)).await > 20,
        "media before the restart"
    );

    // ---- the engine dies ----
    let cpid = control.0.id().expect("control pid");
    let old = engine_pid_of(cpid).expect("ils-engine child of ils-control");
    // SAFETY: kill(2) on a pid we just read; no memory is involved.
    assert_eq!(unsafe { libc::kill(old as i32, libc::SIGKILL) }, 0);
    let r = host.expect("renegotiate", |_| true).await;
    assert_eq!(
        (r["pc"].as_str(), r["cause"].as_str()),
        (Some("publish"), Some("engine_restart")),
        "{r}"
    );
    let r = viewer.expect("renegotiate", |_| true).await;
    assert_eq!(
        (r["pc"].as_str(), r["cause"].as_str()),
        (Some("subscribe"), Some("engine_restart")),
        "{r}"
    );
    sender.stop().await;
    let new = engine_pid_of(cpid).expect("a new engine");
    assert_ne!(new, old);
    assert!(ils_tests::http::metric(addr, "ils_ws_renegotiations_total") >= 2);

    // ---- the clients make their connections again; places and slots were kept ----
    let sender = publish_and_send(&mut host, hu, hpw, "p2").await;
    let vp = subscribe_peer(&mut viewer, "viewufrag", "s2").await;
    viewer
        .expect("slots", |v| slot_participant(v, "video") == host_id)
        .await;
    let p = prod
        .expect("participant", |v| {
            v["id"] == host_id && v["publishing"] == true
        })
        .await;
    assert_eq!(p["place"], "stage", "the host stayed on stage: {p}");
    assert!(
        rtp_within(&vp, Duration::from_secs(2)).await > 20,
        "media flows again after the renegotiation"
    );
    sender.stop().await;
    drop(control);
    let _ = std::fs::remove_dir_all(&data);
}

/// RELIABILITY F7: a participant's WebSocket drops while its media flows. The participant is
/// held for the resume grace (here 2 s, `ILS_RESUME_GRACE`): media keeps flowing, a `hello`
/// with `resume: true` gets the same id back (`welcome.resumed`) and the slot mapping that
/// changed meanwhile, with no new offer. A participant that does not come back is removed when
/// the grace ends and its media stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_socket_resumes_within_the_grace_and_is_removed_after_it() {
    const GRACE: Duration = Duration::from_secs(2);
    let data = std::env::temp_dir().join(format!("ils-control-ws-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (_control, addr) =
        ils_tests::http::start_control_with_env(&data, SECRET, &[("ILS_RESUME_GRACE", "2")]);
    let room = "flaky-wifi";
    let (mut prod, _) = join(addr, &token(room, Role::Producer, "prod", None)).await;
    let (mut host, w) = join(addr, &token(room, Role::Host, "host", None)).await;
    let host_id = w["you"]["id"].as_u64().expect("id");
    let vtok = token(room, Role::Viewer, "viewer", None);
    let (mut viewer, w, vp) = subscribed(addr, &vtok, "viewufrag").await;
    let viewer_id = w["you"]["id"].as_u64().expect("id");
    let sender = publish_and_send(&mut host, "hostufrag", "hostpassword0123456789ab", "p").await;
    let stage = json!({"type": "move", "participant": host_id, "to": "stage"});
    prod.send(stage.clone()).await;
    viewer
        .expect("slots", |v| slot_participant(v, "video") == host_id)
        .await;

    // ---- the viewer's socket drops (TCP gone, no close frame): media keeps flowing ----
    drop(viewer);
    assert!(
        rtp_within(&vp, Duration::from_millis(1000)).await > 20,
        "media flows while the socket is down"
    );
    // a change while it is away: the host goes back to the green room
    prod.send(json!({"type": "move", "participant": host_id, "to": "green_room"}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // ---- it comes back within the grace: same id, current slots, no new offer ----
    let mut viewer = Client::connect(addr).await;
    viewer
        .send(json!({"type": "hello", "v": 1, "token": vtok, "resume": true, "rid": "r"}))
        .await;
    let w = viewer.expect("welcome", |_| true).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["you"]["id"], viewer_id, "same participant");
    assert_eq!(w["rid"], "r");
    viewer
        .expect("slots", |v| slot_participant(v, "video") == Value::Null)
        .await;
    prod.send(stage).await;
    viewer
        .expect("slots", |v| slot_participant(v, "video") == host_id)
        .await;
    drain(&vp).await;
    assert!(
        rtp_within(&vp, Duration::from_millis(1500)).await > 20,
        "the resumed viewer's subscriber connection (never renegotiated) gets the host again"
    );

    // ---- the host's socket drops and stays away: removed when the grace ends ----
    drop(host);
    let t = Instant::now();
    prod.expect("participant_left", |v| v["id"] == host_id)
        .await;
    let waited = t.elapsed();
    assert!(
        waited >= GRACE - Duration::from_millis(200) && waited < GRACE + Duration::from_secs(3),
        "removed after {waited:?}, grace {GRACE:?}"
    );
    viewer
        .expect("slots", |v| slot_participant(v, "video") == Value::Null)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain(&vp).await;
    assert_eq!(
        rtp_within(&vp, Duration::from_millis(1000)).await,
        0,
        "a participant gone past the grace has no media left"
    );
    let m = |n: &str| ils_tests::http::metric(addr, n);
    assert_eq!(
        (
            m("ils_ws_detached_total"),
            m("ils_ws_resumed_total"),
            m("ils_ws_resume_expired_total")
        ),
        (2, 1, 1)
    );
    sender.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}
