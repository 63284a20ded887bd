//! Self-tests of the test peers: our DTLS-over-channels server against webrtc-dtls clients,
//! and `TestPeer` against a tiny fake ICE-lite server built from webrtc-rs `stun` plus
//! `dtls_server`. Everything here is webrtc-rs on both sides; no ils-* protocol code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ils_tests::dtls::{
    dtls_client_conn, dtls_server, placeholder_addr, ChannelConn, ChannelEnds, DtlsOutcome,
    PROFILE_AEAD_AES_128_GCM, PROFILE_AES128_CM_HMAC_SHA1_80,
};
use ils_tests::{fingerprint, generate_cert, PeerError, TestPeer};
use stun::attributes::{ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USERNAME, ATTR_USE_CANDIDATE};
use stun::error_code::{ErrorCodeAttribute, CODE_UNAUTHORIZED};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{Message, BINDING_ERROR, BINDING_REQUEST, BINDING_SUCCESS};
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use webrtc_srtp::context::Context;
use webrtc_util::conn::Conn;
use webrtc_util::marshal::{Marshal, Unmarshal};

// ---------------------------------------------------------------------------------------
// In-memory relay between two ChannelConns.

/// Forward datagrams from `from` to `to`, dropping those whose index is in `drop_idx`.
fn relay(mut from: mpsc::Receiver<Vec<u8>>, to: mpsc::Sender<Vec<u8>>, drop_idx: Vec<usize>) {
    tokio::spawn(async move {
        let mut i = 0usize;
        while let Some(d) = from.recv().await {
            if !drop_idx.contains(&i) && to.send(d).await.is_err() {
                break;
            }
            i += 1;
        }
    });
}

/// Two connected conns: (server side, client side), with loss on chosen datagrams.
fn linked(
    drop_client_to_server: Vec<usize>,
    drop_server_to_client: Vec<usize>,
) -> (Arc<dyn Conn + Send + Sync>, Arc<dyn Conn + Send + Sync>) {
    let (
        s,
        ChannelEnds {
            inbound_tx: s_in,
            outbound_rx: s_out,
        },
    ) = ChannelConn::pair(placeholder_addr(5000), placeholder_addr(6000));
    let (
        c,
        ChannelEnds {
            inbound_tx: c_in,
            outbound_rx: c_out,
        },
    ) = ChannelConn::pair(placeholder_addr(6000), placeholder_addr(5000));
    relay(c_out, s_in, drop_client_to_server);
    relay(s_out, c_in, drop_server_to_client);
    (Arc::new(s), Arc::new(c))
}

fn same_keys(a: &DtlsOutcome, b: &DtlsOutcome) {
    assert_eq!(a.profile_id, b.profile_id);
    assert_eq!(a.client_key, b.client_key);
    assert_eq!(a.client_salt, b.client_salt);
    assert_eq!(a.server_key, b.server_key);
    assert_eq!(a.server_salt, b.server_salt);
    assert_ne!(a.client_key, a.server_key);
}

async fn handshake(
    client_profiles: &[u16],
) -> (
    anyhow::Result<DtlsOutcome>,
    anyhow::Result<DtlsOutcome>,
    String,
    String,
) {
    let (sc, cc) = linked(vec![], vec![]);
    let (scert, ccert) = (generate_cert(), generate_cert());
    let (sfp, cfp) = (fingerprint(&scert), fingerprint(&ccert));
    let (s, c) = tokio::join!(
        dtls_server(sc, &scert, Some(cfp.clone())),
        dtls_client_conn(cc, &ccert, client_profiles, Some(sfp.clone())),
    );
    (s, c.map(|(o, _)| o), sfp, cfp)
}

#[tokio::test]
async fn dtls_server_handshake_keys_match_and_gcm_chosen() {
    let (s, c, sfp, cfp) =
        handshake(&[PROFILE_AEAD_AES_128_GCM, PROFILE_AES128_CM_HMAC_SHA1_80]).await;
    let (s, c) = (s.unwrap(), c.unwrap());
    same_keys(&s, &c);
    assert_eq!(s.profile_id, PROFILE_AEAD_AES_128_GCM);
    assert_eq!(s.client_key.len(), 16);
    assert_eq!(s.client_salt.len(), 12);
    assert_eq!(s.remote_fingerprint, cfp);
    assert_eq!(c.remote_fingerprint, sfp);

    // The keys really interoperate with webrtc-srtp both ways.
    let (mut s_enc, mut s_dec) = s.server_contexts().unwrap();
    let (mut c_enc, mut c_dec) = c.client_contexts().unwrap();
    let pkt = rtp_packet(0x1234_5678, 7, b"hello");
    let wire = c_enc.encrypt_rtp(&pkt.marshal().unwrap()).unwrap();
    let back = s_dec.decrypt_rtp(&wire).unwrap();
    assert_eq!(back, pkt.marshal().unwrap());
    let wire = s_enc.encrypt_rtp(&pkt.marshal().unwrap()).unwrap();
    assert_eq!(c_dec.decrypt_rtp(&wire).unwrap(), pkt.marshal().unwrap());
}

#[tokio::test]
async fn dtls_server_prefers_gcm_even_if_client_lists_it_second() {
    // Chromium's order: CM-HMAC-SHA1-80 first.
    let (s, c, _, _) = handshake(&[PROFILE_AES128_CM_HMAC_SHA1_80, PROFILE_AEAD_AES_128_GCM]).await;
    let (s, c) = (s.unwrap(), c.unwrap());
    same_keys(&s, &c);
    assert_eq!(s.profile_id, PROFILE_AEAD_AES_128_GCM);
}

#[tokio::test]
async fn dtls_server_falls_back_to_cm_when_gcm_not_offered() {
    let (s, c, _, _) = handshake(&[PROFILE_AES128_CM_HMAC_SHA1_80]).await;
    let (s, c) = (s.unwrap(), c.unwrap());
    same_keys(&s, &c);
    assert_eq!(s.profile_id, PROFILE_AES128_CM_HMAC_SHA1_80);
    assert_eq!(s.client_key.len(), 16);
    assert_eq!(s.client_salt.len(), 14);
}

#[tokio::test]
async fn dtls_server_rejects_wrong_client_fingerprint() {
    let (sc, cc) = linked(vec![], vec![]);
    let (scert, ccert) = (generate_cert(), generate_cert());
    let wrong = fingerprint(&generate_cert());
    let client = tokio::spawn(async move {
        dtls_client_conn(cc, &ccert, &[PROFILE_AEAD_AES_128_GCM], None).await
    });
    let s = tokio::time::timeout(Duration::from_secs(5), dtls_server(sc, &scert, Some(wrong)))
        .await
        .expect("server should fail fast, not time out");
    let err = s.expect_err("mismatched fingerprint must not yield keys");
    assert!(
        format!("{err:#}").contains("fingerprint"),
        "unexpected error: {err:#}"
    );
    client.abort();
}

#[tokio::test]
async fn dtls_client_rejects_wrong_server_fingerprint() {
    let (sc, cc) = linked(vec![], vec![]);
    let (scert, ccert) = (generate_cert(), generate_cert());
    let wrong = fingerprint(&generate_cert());
    let server = tokio::spawn(async move { dtls_server(sc, &scert, None).await });
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        dtls_client_conn(cc, &ccert, &[PROFILE_AEAD_AES_128_GCM], Some(wrong)),
    )
    .await
    .expect("client should fail fast");
    assert!(c.is_err());
    server.abort();
}

#[tokio::test]
async fn dtls_server_survives_lost_flights() {
    // Lose the first ClientHello and the server's first reply: both sides retransmit.
    let (sc, cc) = linked(vec![0], vec![0]);
    let (scert, ccert) = (generate_cert(), generate_cert());
    let (s, c) = tokio::join!(
        dtls_server(sc, &scert, None),
        dtls_client_conn(cc, &ccert, &[PROFILE_AEAD_AES_128_GCM], None),
    );
    same_keys(&s.unwrap(), &c.unwrap().0);
}

#[tokio::test]
async fn dtls_server_times_out_on_silence() {
    // Keep the sender alive so the conn stays open and silent.
    let (conn, _ends) = ChannelConn::pair(placeholder_addr(1), placeholder_addr(2));
    let cert = generate_cert();
    let r = dtls_server(Arc::new(conn), &cert, None).await;
    let err = r.unwrap_err();
    assert!(format!("{err}").contains("timed out"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Fake ICE-lite server on a real UDP socket.

const SERVER_UFRAG: &str = "srvU";
const SERVER_PWD: &str = "server-password-0123456789";
const PEER_UFRAG: &str = "peerU";
const PEER_PWD: &str = "peer-password-0123456789ab";

enum Media {
    Rtp(Bytes),
    Rtcp(Bytes),
}

struct FakeServer {
    addr: SocketAddr,
    sock: Arc<UdpSocket>,
    cert_fp: String,
    outcome: watch::Receiver<Option<DtlsOutcome>>,
    enc: Arc<std::sync::Mutex<Option<Context>>>,
    media: mpsc::Receiver<Media>,
    peer: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    checks: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `reject_all`: answer every Binding request with 401.
async fn fake_server(expected_peer_fp: Option<String>, reject_all: bool) -> FakeServer {
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    let cert = generate_cert();
    let cert_fp = fingerprint(&cert);
    let (outcome_tx, outcome) = watch::channel(None);
    let outcome_tx = Arc::new(outcome_tx);
    let enc = Arc::new(std::sync::Mutex::new(None));
    let dec: Arc<std::sync::Mutex<Option<Context>>> = Arc::new(std::sync::Mutex::new(None));
    let (media_tx, media) = mpsc::channel(1024);
    let peer = Arc::new(std::sync::Mutex::new(None));
    let checks = Arc::new(AtomicU64::new(0));

    let (s, e, d, p, ch) = (
        sock.clone(),
        enc.clone(),
        dec.clone(),
        peer.clone(),
        checks.clone(),
    );
    let task = tokio::spawn(async move {
        let mut dtls_in: Option<mpsc::Sender<Vec<u8>>> = None;
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = s.recv_from(&mut buf).await else {
                continue;
            };
            let data = buf[..n].to_vec();
            match data.first() {
                Some(0..=3) => {
                    let mut m = Message::new();
                    m.raw = data;
                    if m.decode().is_err() || m.typ != BINDING_REQUEST {
                        continue;
                    }
                    // What an ICE-lite server checks.
                    let user = m.get(ATTR_USERNAME).unwrap_or_default();
                    let ok = user == format!("{SERVER_UFRAG}:{PEER_UFRAG}").as_bytes()
                        && m.contains(ATTR_PRIORITY)
                        && m.contains(ATTR_ICE_CONTROLLING)
                        && MessageIntegrity::new_short_term_integrity(SERVER_PWD.into())
                            .check(&mut m)
                            .is_ok()
                        && FINGERPRINT.check(&m).is_ok();
                    let mut resp = Message::new();
                    if ok && !reject_all {
                        ch.fetch_add(1, Ordering::Relaxed);
                        if m.contains(ATTR_USE_CANDIDATE) {
                            *p.lock().unwrap() = Some(from);
                        }
                        resp.build(&[
                            Box::new(BINDING_SUCCESS),
                            Box::new(m.transaction_id),
                            Box::new(XorMappedAddress {
                                ip: from.ip(),
                                port: from.port(),
                            }),
                            Box::new(MessageIntegrity::new_short_term_integrity(
                                SERVER_PWD.into(),
                            )),
                            Box::new(FINGERPRINT),
                        ])
                        .unwrap();
                    } else {
                        resp.build(&[
                            Box::new(BINDING_ERROR),
                            Box::new(m.transaction_id),
                            Box::new(ErrorCodeAttribute {
                                code: CODE_UNAUTHORIZED,
                                reason: b"Unauthorized".to_vec(),
                            }),
                            Box::new(FINGERPRINT),
                        ])
                        .unwrap();
                    }
                    let _ = s.send_to(&resp.raw, from).await;
                }
                Some(20..=63) => {
                    if dtls_in.is_none() {
                        let (conn, ends) = ChannelConn::pair(addr, from);
                        let ChannelEnds {
                            inbound_tx,
                            mut outbound_rx,
                        } = ends;
                        dtls_in = Some(inbound_tx);
                        let s2 = s.clone();
                        tokio::spawn(async move {
                            while let Some(d) = outbound_rx.recv().await {
                                let _ = s2.send_to(&d, from).await;
                            }
                        });
                        let (cert, fp, e, d, tx) = (
                            cert.clone(),
                            expected_peer_fp.clone(),
                            e.clone(),
                            d.clone(),
                            outcome_tx.clone(),
                        );
                        tokio::spawn(async move {
                            if let Ok(o) = dtls_server(Arc::new(conn), &cert, fp).await {
                                let (enc, dec) = o.server_contexts().unwrap();
                                *e.lock().unwrap() = Some(enc);
                                *d.lock().unwrap() = Some(dec);
                                let _ = tx.send(Some(o));
                            }
                        });
                    }
                    if let Some(tx) = &dtls_in {
                        let _ = tx.send(data).await;
                    }
                }
                Some(128..=191) => {
                    let is_rtcp = matches!(data.get(1), Some(192..=223));
                    let plain = {
                        let mut g = d.lock().unwrap();
                        let Some(ctx) = g.as_mut() else { continue };
                        if is_rtcp {
                            ctx.decrypt_rtcp(&data).map(Media::Rtcp)
                        } else {
                            ctx.decrypt_rtp(&data).map(Media::Rtp)
                        }
                    };
                    if let Ok(m) = plain {
                        let _ = media_tx.send(m).await;
                    }
                }
                _ => {}
            }
        }
    });
    FakeServer {
        addr,
        sock,
        cert_fp,
        outcome,
        enc,
        media,
        peer,
        checks,
        task,
    }
}

impl FakeServer {
    async fn wait_keys(&mut self) -> DtlsOutcome {
        let o = tokio::time::timeout(
            Duration::from_secs(5),
            self.outcome.wait_for(|o| o.is_some()),
        )
        .await
        .expect("server handshake")
        .expect("watch alive")
        .clone();
        o.expect("checked is_some")
    }

    async fn send_plain(&self, plain: &[u8], rtcp: bool) {
        let wire = {
            let mut g = self.enc.lock().unwrap();
            let ctx = g.as_mut().expect("keys");
            if rtcp {
                ctx.encrypt_rtcp(plain).unwrap()
            } else {
                ctx.encrypt_rtp(plain).unwrap()
            }
        };
        let to = self.peer.lock().unwrap().expect("nominated peer");
        self.sock.send_to(&wire, to).await.unwrap();
    }

    async fn next_media(&mut self) -> Media {
        tokio::time::timeout(Duration::from_secs(2), self.media.recv())
            .await
            .expect("media within 2 s")
            .expect("server alive")
    }
}

fn rtp_packet(ssrc: u32, seq: u16, payload: &'static [u8]) -> rtp::packet::Packet {
    rtp::packet::Packet {
        header: rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: 90_000 + u32::from(seq) * 3000,
            ssrc,
            marker: true,
            ..Default::default()
        },
        payload: Bytes::from_static(payload),
    }
}

#[tokio::test]
async fn test_peer_connects_and_exchanges_srtp_with_fake_server() {
    let mut peer = TestPeer::new(PEER_UFRAG, PEER_PWD).unwrap();
    let mut server = fake_server(Some(peer.certificate_fingerprint()), false).await;
    peer.set_expected_server_fingerprint(Some(server.cert_fp.clone()));
    peer.connect(server.addr, SERVER_UFRAG, SERVER_PWD)
        .await
        .unwrap();
    let keys = server.wait_keys().await;
    assert_eq!(keys.profile_id, PROFILE_AEAD_AES_128_GCM);
    assert_eq!(keys.remote_fingerprint, peer.certificate_fingerprint());
    let pk = peer.dtls_outcome().unwrap();
    assert_eq!(pk.client_key, keys.client_key);
    assert_eq!(pk.server_salt, keys.server_salt);
    assert_eq!(server.peer.lock().unwrap().unwrap(), peer.local_addr());
    assert!(server.checks.load(Ordering::Relaxed) >= 1);

    // peer -> server RTP
    let sent = rtp_packet(0xdead_beef, 100, b"media from peer");
    peer.send_rtp(&sent).await.unwrap();
    match server.next_media().await {
        Media::Rtp(mut b) => {
            let got = rtp::packet::Packet::unmarshal(&mut b).unwrap();
            assert_eq!(got, sent);
        }
        Media::Rtcp(_) => panic!("expected RTP"),
    }

    // peer -> server RTCP (PLI)
    let pli = rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
        sender_ssrc: 1,
        media_ssrc: 0xdead_beef,
    };
    peer.send_rtcp(&[Box::new(pli.clone())]).await.unwrap();
    match server.next_media().await {
        Media::Rtcp(mut b) => {
            let pkts = rtcp::packet::unmarshal(&mut b).unwrap();
            let got = pkts[0]
                .as_any()
                .downcast_ref::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
                .unwrap();
            assert_eq!(got, &pli);
        }
        Media::Rtp(_) => panic!("expected RTCP"),
    }

    // server -> peer RTP and RTCP
    let down = rtp_packet(0x0bad_cafe, 9, b"media to peer");
    server.send_plain(&down.marshal().unwrap(), false).await;
    let got = peer.recv_rtp(Duration::from_secs(2)).await.unwrap();
    assert_eq!(got, down);
    let sr = rtcp::sender_report::SenderReport {
        ssrc: 0x0bad_cafe,
        ntp_time: 1 << 32,
        rtp_time: 1234,
        packet_count: 1,
        octet_count: 13,
        ..Default::default()
    };
    let raw = rtcp::packet::marshal(&[Box::new(sr.clone())]).unwrap();
    server.send_plain(&raw, true).await;
    let pkts = peer.recv_rtcp(Duration::from_secs(2)).await.unwrap();
    let got = pkts[0]
        .as_any()
        .downcast_ref::<rtcp::sender_report::SenderReport>()
        .unwrap();
    assert_eq!(got, &sr);
    assert_eq!(peer.decrypt_failures(), 0);

    // A tampered SRTP packet is counted, not delivered.
    let mut wire = {
        let mut g = server.enc.lock().unwrap();
        g.as_mut()
            .unwrap()
            .encrypt_rtp(&rtp_packet(0x0bad_cafe, 10, b"x").marshal().unwrap())
            .unwrap()
            .to_vec()
    };
    let last = wire.len() - 1;
    wire[last] ^= 0x80;
    server.sock.send_to(&wire, peer.local_addr()).await.unwrap();
    assert!(peer.recv_rtp(Duration::from_millis(300)).await.is_none());
    assert_eq!(peer.stats().srtp_decrypt_failures, 1);

    // Datagrams from a stranger are ignored and counted.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(&wire, peer.local_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(peer.stats().foreign_source, 1);

    // send_raw reaches the server untouched (hostile-input hook).
    assert_eq!(peer.send_raw(&[0xff, 0, 1]).unwrap(), 3);
    peer.close().await;
}

#[tokio::test]
async fn test_peer_keeps_consent_fresh() {
    let mut peer = TestPeer::new(PEER_UFRAG, PEER_PWD).unwrap();
    let server = fake_server(None, false).await;
    peer.connect(server.addr, SERVER_UFRAG, SERVER_PWD)
        .await
        .unwrap();
    let before = server.checks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(server.checks.load(Ordering::Relaxed) > before);
    assert!(peer.stats().consent_ok >= 1, "{:?}", peer.stats());
    assert!(peer.last_consent_response().is_some());
}

#[tokio::test]
async fn test_peer_reports_stun_error_response() {
    let mut peer = TestPeer::new(PEER_UFRAG, PEER_PWD).unwrap();
    let server = fake_server(None, true).await;
    let err = tokio::time::timeout(
        Duration::from_secs(3),
        peer.connect(server.addr, SERVER_UFRAG, SERVER_PWD),
    )
    .await
    .expect("fails fast")
    .unwrap_err();
    match err.downcast_ref::<PeerError>() {
        Some(PeerError::StunErrorResponse { code, .. }) => assert_eq!(*code, 401),
        other => panic!("unexpected {other:?} / {err:#}"),
    }
}

#[tokio::test]
async fn test_peer_rejects_wrong_server_fingerprint() {
    let mut peer = TestPeer::new(PEER_UFRAG, PEER_PWD).unwrap();
    let server = fake_server(None, false).await;
    peer.set_expected_server_fingerprint(Some(fingerprint(&generate_cert())));
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        peer.connect(server.addr, SERVER_UFRAG, SERVER_PWD),
    )
    .await
    .expect("fails fast");
    assert!(r.is_err());
    assert!(peer.dtls_outcome().is_none());
    assert!(peer.send_rtp(&rtp_packet(1, 1, b"x")).await.is_err());
}

#[tokio::test]
async fn test_peer_needs_a_runtime_and_connects_once() {
    let err = std::thread::spawn(|| TestPeer::new("a", "b").err().map(|e| e.to_string()))
        .join()
        .unwrap();
    assert!(err.unwrap().contains("tokio runtime"));
    let mut peer = TestPeer::new(PEER_UFRAG, PEER_PWD).unwrap();
    let server = fake_server(None, false).await;
    peer.connect(server.addr, SERVER_UFRAG, SERVER_PWD)
        .await
        .unwrap();
    assert!(peer
        .connect(server.addr, SERVER_UFRAG, SERVER_PWD)
        .await
        .is_err());
}
