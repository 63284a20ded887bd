//! [`TestPeer`]: an independent WebRTC client endpoint (ICE controlling, DTLS client,
//! SRTP) on a real loopback UDP socket, built only from webrtc-rs crates (`stun`,
//! `webrtc-dtls`, `webrtc-srtp`, `rtp`, `rtcp`) — never from our own protocol code — so a
//! test against the engine is an interop proof.
//!
//! One background task reads the socket and demultiplexes by first byte (RFC 7983):
//! `0..=3` STUN (responses go to the connectivity check / consent logic, requests are
//! answered), `20..=63` DTLS (fed to the webrtc-dtls client through a
//! [`ChannelConn`](crate::dtls::ChannelConn)), `128..=191` SRTP/SRTCP (decrypted with the
//! server-write key once known, then queued; failures are counted).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use stun::attributes::{
    RawAttribute, ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USERNAME, ATTR_USE_CANDIDATE,
};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, Setter, BINDING_REQUEST, BINDING_SUCCESS, CLASS_ERROR_RESPONSE,
    CLASS_SUCCESS_RESPONSE, METHOD_BINDING,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_srtp::context::Context;
use webrtc_util::conn::Conn;
use webrtc_util::marshal::{Marshal, Unmarshal};

use crate::dtls::{
    dtls_client_conn, fingerprint, generate_cert, ChannelConn, DtlsOutcome,
    PROFILE_AEAD_AES_128_GCM, PROFILE_AES128_CM_HMAC_SHA1_80,
};

/// Overall deadline for [`TestPeer::connect`] (ICE check + DTLS). Default 10 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First retransmission timeout of the connectivity check. Default 50 ms (loopback).
pub const STUN_INITIAL_RTO: Duration = Duration::from_millis(50);
/// Cap on the doubling connectivity-check RTO. Default 800 ms.
pub const STUN_MAX_RTO: Duration = Duration::from_millis(800);
/// Interval between consent-freshness Binding requests after connect (RFC 7675). Default 2 s.
pub const CONSENT_INTERVAL: Duration = Duration::from_secs(2);
/// Outstanding consent transactions remembered for matching responses. Default 8.
pub const MAX_CONSENT_OUTSTANDING: usize = 8;
/// Capacity of the decrypted RTP / RTCP / STUN / DTLS queues (packets each). Default 4096;
/// overflow is dropped and counted (`queue_drops`), bounding memory if a test never reads.
pub const PEER_QUEUE_CAPACITY: usize = 4096;
/// Receive buffer size; larger datagrams are truncated by the kernel. Default 65536.
pub const RECV_BUFFER: usize = 65536;
/// ICE PRIORITY sent in checks: host type preference 126, local preference 65535, component 1.
pub const CHECK_PRIORITY: u32 = (126 << 24) | (65535 << 8) | (256 - 1);

/// Why a [`TestPeer`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Not inside a tokio runtime (the peer needs one for its tasks and socket).
    #[error("TestPeer must be created inside a tokio runtime")]
    NoRuntime,
    /// `connect` was called twice.
    #[error("already connected")]
    AlreadyConnected,
    /// Operation needs a completed `connect`.
    #[error("not connected")]
    NotConnected,
    /// No valid Binding success response before [`CONNECT_TIMEOUT`].
    #[error("ICE connectivity check timed out")]
    CheckTimeout,
    /// The server answered with a Binding error response.
    #[error("STUN error response {code}: {reason}")]
    StunErrorResponse {
        /// ERROR-CODE value (e.g. 401).
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// XOR-MAPPED-ADDRESS in the success response is not our address.
    #[error("XOR-MAPPED-ADDRESS {got} is not our address {expected}")]
    MappedAddressMismatch {
        /// Our socket address.
        expected: SocketAddr,
        /// The address the server reported.
        got: SocketAddr,
    },
    /// Building a STUN message failed.
    #[error("STUN build: {0}")]
    StunBuild(String),
}

/// Why a STUN response was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunCheckError {
    /// Not decodable as STUN (webrtc-rs `stun` rejected it, or panicked on it).
    #[error("undecodable STUN: {0}")]
    Decode(String),
    /// Transaction id is none of ours.
    #[error("unknown transaction")]
    UnknownTransaction,
    /// Not a Binding success/error response.
    #[error("unexpected STUN type")]
    UnexpectedType,
    /// Error response (code, reason).
    #[error("error response {0}")]
    ErrorResponse(u16, String),
    /// MESSAGE-INTEGRITY missing or wrong.
    #[error("bad MESSAGE-INTEGRITY")]
    Integrity,
    /// FINGERPRINT missing or wrong.
    #[error("bad FINGERPRINT")]
    Fingerprint,
    /// XOR-MAPPED-ADDRESS missing or malformed.
    #[error("missing XOR-MAPPED-ADDRESS")]
    NoMappedAddress,
    /// XOR-MAPPED-ADDRESS differs from our address.
    #[error("mapped address {0}")]
    MappedMismatch(SocketAddr),
}

#[derive(Default)]
struct Counters {
    stun_requests_sent: AtomicU64,
    stun_responses_ok: AtomicU64,
    stun_responses_bad: AtomicU64,
    stun_requests_answered: AtomicU64,
    consent_ok: AtomicU64,
    dtls_in: AtomicU64,
    rtp_in: AtomicU64,
    rtcp_in: AtomicU64,
    rtp_sent: AtomicU64,
    rtcp_sent: AtomicU64,
    srtp_decrypt_failures: AtomicU64,
    srtcp_decrypt_failures: AtomicU64,
    media_before_keys: AtomicU64,
    unknown_in: AtomicU64,
    foreign_source: AtomicU64,
    queue_drops: AtomicU64,
}

/// A snapshot of a [`TestPeer`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Binding requests sent (checks + consent).
    pub stun_requests_sent: u64,
    /// Valid Binding success responses matched to our requests.
    pub stun_responses_ok: u64,
    /// STUN responses rejected (bad integrity, fingerprint, address, unknown transaction...).
    pub stun_responses_bad: u64,
    /// Binding requests from the server that we answered.
    pub stun_requests_answered: u64,
    /// Valid consent-freshness responses after connect.
    pub consent_ok: u64,
    /// DTLS datagrams received.
    pub dtls_in: u64,
    /// SRTP packets decrypted and parsed.
    pub rtp_in: u64,
    /// SRTCP compound packets decrypted and parsed.
    pub rtcp_in: u64,
    /// RTP packets sent.
    pub rtp_sent: u64,
    /// RTCP compounds sent.
    pub rtcp_sent: u64,
    /// SRTP packets that failed authentication/decryption/replay check or RTP parsing.
    pub srtp_decrypt_failures: u64,
    /// SRTCP packets that failed authentication/decryption/replay check or RTCP parsing.
    pub srtcp_decrypt_failures: u64,
    /// Media datagrams that arrived before the SRTP keys existed.
    pub media_before_keys: u64,
    /// Datagrams whose first byte fits no RFC 7983 range.
    pub unknown_in: u64,
    /// Datagrams from an address other than the server's (dropped).
    pub foreign_source: u64,
    /// Packets dropped because a receive queue was full.
    pub queue_drops: u64,
}

/// RTCP packets as returned by webrtc-rs `rtcp::packet::unmarshal`.
pub type RtcpPackets = Vec<Box<dyn rtcp::packet::Packet + Send + Sync>>;

struct Shared {
    local_ufrag: String,
    local_pwd: String,
    server: std::sync::Mutex<Option<SocketAddr>>,
    encrypt: std::sync::Mutex<Option<Context>>,
    decrypt: std::sync::Mutex<Option<Context>>,
    last_consent: std::sync::Mutex<Option<Instant>>,
    c: Counters,
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An independent WebRTC client endpoint on a UDP socket bound to 127.0.0.1:0.
pub struct TestPeer {
    socket: Arc<UdpSocket>,
    local_addr: SocketAddr,
    cert: Certificate,
    fingerprint: String,
    expected_server_fingerprint: Option<String>,
    profiles: Vec<u16>,
    shared: Arc<Shared>,
    stun_rx: Option<mpsc::Receiver<Vec<u8>>>,
    dtls_rx: Option<mpsc::Receiver<Vec<u8>>>,
    rtp_rx: Mutex<mpsc::Receiver<rtp::packet::Packet>>,
    rtcp_rx: Mutex<mpsc::Receiver<RtcpPackets>>,
    tasks: Vec<JoinHandle<()>>,
    dtls: Option<Arc<DTLSConn>>,
    outcome: Option<DtlsOutcome>,
}

impl TestPeer {
    /// Bind 127.0.0.1:0 and start the receive task. Must run inside a tokio runtime.
    pub fn new(local_ufrag: &str, local_pwd: &str) -> anyhow::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PeerError::NoRuntime.into());
        }
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        std_sock.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std_sock)?);
        let local_addr = socket.local_addr()?;
        let cert = generate_cert();
        let fp = fingerprint(&cert);
        let shared = Arc::new(Shared {
            local_ufrag: local_ufrag.to_owned(),
            local_pwd: local_pwd.to_owned(),
            server: std::sync::Mutex::new(None),
            encrypt: std::sync::Mutex::new(None),
            decrypt: std::sync::Mutex::new(None),
            last_consent: std::sync::Mutex::new(None),
            c: Counters::default(),
        });
        let (stun_tx, stun_rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
        let (dtls_tx, dtls_rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
        let (rtp_tx, rtp_rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
        let (rtcp_tx, rtcp_rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
        let recv = tokio::spawn(recv_loop(
            socket.clone(),
            shared.clone(),
            Queues {
                stun: stun_tx,
                dtls: dtls_tx,
                rtp: rtp_tx,
                rtcp: rtcp_tx,
            },
        ));
        Ok(Self {
            socket,
            local_addr,
            cert,
            fingerprint: fp,
            expected_server_fingerprint: None,
            profiles: vec![PROFILE_AEAD_AES_128_GCM, PROFILE_AES128_CM_HMAC_SHA1_80],
            shared,
            stun_rx: Some(stun_rx),
            dtls_rx: Some(dtls_rx),
            rtp_rx: Mutex::new(rtp_rx),
            rtcp_rx: Mutex::new(rtcp_rx),
            tasks: vec![recv],
            dtls: None,
            outcome: None,
        })
    }

    /// Require the server's DTLS certificate to have this SHA-256 fingerprint (from its
    /// "SDP answer"). Default: not checked.
    pub fn set_expected_server_fingerprint(&mut self, fp: Option<String>) {
        self.expected_server_fingerprint = fp;
    }

    /// SRTP profiles offered in `use_srtp`, client order. Default GCM then CM-HMAC-SHA1-80;
    /// Chromium offers CM-HMAC-SHA1-80 first.
    pub fn set_srtp_profiles(&mut self, profiles: &[u16]) {
        self.profiles = profiles.to_vec();
    }

    /// Our socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Our certificate's SHA-256 fingerprint ("AB:CD:..."), as it would appear in our SDP.
    pub fn certificate_fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Keys and profile of the completed handshake.
    pub fn dtls_outcome(&self) -> Option<&DtlsOutcome> {
        self.outcome.as_ref()
    }

    /// When the last valid consent response arrived.
    pub fn last_consent_response(&self) -> Option<Instant> {
        *lock(&self.shared.last_consent)
    }

    /// Counters snapshot.
    pub fn stats(&self) -> PeerStats {
        let c = &self.shared.c;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeerStats {
            stun_requests_sent: g(&c.stun_requests_sent),
            stun_responses_ok: g(&c.stun_responses_ok),
            stun_responses_bad: g(&c.stun_responses_bad),
            stun_requests_answered: g(&c.stun_requests_answered),
            consent_ok: g(&c.consent_ok),
            dtls_in: g(&c.dtls_in),
            rtp_in: g(&c.rtp_in),
            rtcp_in: g(&c.rtcp_in),
            rtp_sent: g(&c.rtp_sent),
            rtcp_sent: g(&c.rtcp_sent),
            srtp_decrypt_failures: g(&c.srtp_decrypt_failures),
            srtcp_decrypt_failures: g(&c.srtcp_decrypt_failures),
            media_before_keys: g(&c.media_before_keys),
            unknown_in: g(&c.unknown_in),
            foreign_source: g(&c.foreign_source),
            queue_drops: g(&c.queue_drops),
        }
    }

    /// SRTP + SRTCP decrypt failures so far.
    pub fn decrypt_failures(&self) -> u64 {
        let s = self.stats();
        s.srtp_decrypt_failures + s.srtcp_decrypt_failures
    }

    fn server(&self) -> Option<SocketAddr> {
        *lock(&self.shared.server)
    }

    /// ICE check (controlling, USE-CANDIDATE) against `server`, then the DTLS client
    /// handshake over the same socket, then SRTP contexts; keeps sending consent checks every
    /// [`CONSENT_INTERVAL`] afterwards.
    pub async fn connect(
        &mut self,
        server: SocketAddr,
        server_ufrag: &str,
        server_pwd: &str,
    ) -> anyhow::Result<()> {
        let (Some(mut stun_rx), Some(dtls_rx)) = (self.stun_rx.take(), self.dtls_rx.take()) else {
            return Err(PeerError::AlreadyConnected.into());
        };
        *lock(&self.shared.server) = Some(server);
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let tie_breaker: u64 = rand::random();
        let username = format!("{server_ufrag}:{}", self.shared.local_ufrag);

        // 1. connectivity check with retransmission backoff.
        let mut sent = Vec::new();
        let mut rto = STUN_INITIAL_RTO;
        'check: loop {
            let (tid, req) = binding_request(&username, server_pwd, tie_breaker, true)?;
            sent.push(tid);
            self.socket.send_to(&req, server).await?;
            bump(&self.shared.c.stun_requests_sent);
            let until = (tokio::time::Instant::now() + rto).min(deadline);
            loop {
                match tokio::time::timeout_at(until, stun_rx.recv()).await {
                    Ok(Some(raw)) => {
                        match check_binding_response(&raw, server_pwd, &sent, self.local_addr) {
                            Ok(()) => {
                                bump(&self.shared.c.stun_responses_ok);
                                break 'check;
                            }
                            Err(StunCheckError::ErrorResponse(code, reason)) => {
                                bump(&self.shared.c.stun_responses_bad);
                                return Err(PeerError::StunErrorResponse { code, reason }.into());
                            }
                            Err(StunCheckError::MappedMismatch(got)) => {
                                bump(&self.shared.c.stun_responses_bad);
                                return Err(PeerError::MappedAddressMismatch {
                                    expected: self.local_addr,
                                    got,
                                }
                                .into());
                            }
                            Err(_) => bump(&self.shared.c.stun_responses_bad),
                        }
                    }
                    Ok(None) => return Err(PeerError::CheckTimeout.into()),
                    Err(_) => break, // rto elapsed
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PeerError::CheckTimeout.into());
            }
            rto = (rto * 2).min(STUN_MAX_RTO);
        }

        // 2. DTLS client over the same socket.
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(PEER_QUEUE_CAPACITY);
        let conn: Arc<dyn Conn + Send + Sync> =
            Arc::new(ChannelConn::new(dtls_rx, out_tx, self.local_addr, server));
        let sock = self.socket.clone();
        self.tasks.push(tokio::spawn(async move {
            while let Some(d) = out_rx.recv().await {
                let _ = sock.send_to(&d, server).await;
            }
        }));
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (outcome, dtls) = tokio::time::timeout(
            remaining,
            dtls_client_conn(
                conn,
                &self.cert,
                &self.profiles,
                self.expected_server_fingerprint.clone(),
            ),
        )
        .await
        .map_err(|_| crate::dtls::DtlsError::Timeout)??;

        // 3. SRTP: local = client write key, remote = server write key.
        let (enc, dec) = outcome.client_contexts()?;
        *lock(&self.shared.encrypt) = Some(enc);
        *lock(&self.shared.decrypt) = Some(dec);
        self.outcome = Some(outcome);
        self.dtls = Some(dtls);

        // 4. consent freshness.
        self.tasks.push(tokio::spawn(consent_loop(
            self.socket.clone(),
            self.shared.clone(),
            stun_rx,
            server,
            username,
            server_pwd.to_owned(),
            tie_breaker,
        )));
        Ok(())
    }

    /// Marshal, SRTP-encrypt and send one RTP packet to the server.
    pub async fn send_rtp(&self, packet: &rtp::packet::Packet) -> anyhow::Result<()> {
        let server = self.server().ok_or(PeerError::NotConnected)?;
        let raw = packet.marshal()?;
        let enc = {
            let mut g = lock(&self.shared.encrypt);
            let ctx = g.as_mut().ok_or(PeerError::NotConnected)?;
            ctx.encrypt_rtp(&raw)?
        };
        self.socket.send_to(&enc, server).await?;
        bump(&self.shared.c.rtp_sent);
        Ok(())
    }

    /// Marshal one compound RTCP packet, SRTCP-encrypt and send it to the server.
    pub async fn send_rtcp(
        &self,
        pkts: &[Box<dyn rtcp::packet::Packet + Send + Sync>],
    ) -> anyhow::Result<()> {
        let server = self.server().ok_or(PeerError::NotConnected)?;
        let raw = rtcp::packet::marshal(pkts)?;
        let enc = {
            let mut g = lock(&self.shared.encrypt);
            let ctx = g.as_mut().ok_or(PeerError::NotConnected)?;
            ctx.encrypt_rtcp(&raw)?
        };
        self.socket.send_to(&enc, server).await?;
        bump(&self.shared.c.rtcp_sent);
        Ok(())
    }

    /// Next decrypted RTP packet, or `None` after `timeout`.
    pub async fn recv_rtp(&self, timeout: Duration) -> Option<rtp::packet::Packet> {
        let mut rx = self.rtp_rx.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Next decrypted RTCP compound packet, or `None` after `timeout`.
    pub async fn recv_rtcp(&self, timeout: Duration) -> Option<RtcpPackets> {
        let mut rx = self.rtcp_rx.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Send raw bytes to the server without any processing (hostile-input tests).
    pub fn send_raw(&self, bytes: &[u8]) -> std::io::Result<usize> {
        let server = self
            .server()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotConnected, "no server"))?;
        self.socket.try_send_to(bytes, server)
    }

    /// Send raw bytes to any address from our socket (e.g. before `connect`).
    pub fn send_raw_to(&self, bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        self.socket.try_send_to(bytes, to)
    }

    /// Send a DTLS close_notify and stop all background tasks.
    pub async fn close(&mut self) {
        if let Some(d) = self.dtls.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), d.close()).await;
            // give the forwarder a moment to flush the alert
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for TestPeer {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Build a Binding request as an ICE controlling agent would.
pub fn binding_request(
    username: &str,
    pwd: &str,
    tie_breaker: u64,
    use_candidate: bool,
) -> Result<(stun::agent::TransactionId, Vec<u8>), PeerError> {
    let tid = stun::agent::TransactionId::new();
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(tid),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        Box::new(RawAttribute {
            typ: ATTR_PRIORITY,
            length: 4,
            value: CHECK_PRIORITY.to_be_bytes().to_vec(),
        }),
        Box::new(RawAttribute {
            typ: ATTR_ICE_CONTROLLING,
            length: 8,
            value: tie_breaker.to_be_bytes().to_vec(),
        }),
    ];
    if use_candidate {
        setters.push(Box::new(RawAttribute {
            typ: ATTR_USE_CANDIDATE,
            length: 0,
            value: vec![],
        }));
    }
    setters.push(Box::new(MessageIntegrity::new_short_term_integrity(
        pwd.to_owned(),
    )));
    setters.push(Box::new(FINGERPRINT));
    let mut m = Message::new();
    m.build(&setters)
        .map_err(|e| PeerError::StunBuild(e.to_string()))?;
    Ok((tid, m.raw))
}

/// Decode with webrtc-rs `stun`, turning a panic inside it into an error.
pub fn decode_stun(raw: &[u8]) -> Result<Message, StunCheckError> {
    let raw = raw.to_vec();
    std::panic::catch_unwind(move || {
        let mut m = Message::new();
        m.raw = raw;
        m.decode().map(|_| m).map_err(|e| e.to_string())
    })
    .map_err(|_| StunCheckError::Decode("stun crate panicked".into()))?
    .map_err(StunCheckError::Decode)
}

/// Validate a Binding response to one of the transactions in `sent`, authenticated with
/// `pwd`, whose XOR-MAPPED-ADDRESS must equal `local`.
pub fn check_binding_response(
    raw: &[u8],
    pwd: &str,
    sent: &[stun::agent::TransactionId],
    local: SocketAddr,
) -> Result<(), StunCheckError> {
    let mut m = decode_stun(raw)?;
    if !sent.contains(&m.transaction_id) {
        return Err(StunCheckError::UnknownTransaction);
    }
    if m.typ.method != METHOD_BINDING {
        return Err(StunCheckError::UnexpectedType);
    }
    let pwd = pwd.to_owned();
    let (m, integrity_ok) = std::panic::catch_unwind(move || {
        let ok = MessageIntegrity::new_short_term_integrity(pwd)
            .check(&mut m)
            .is_ok();
        (m, ok)
    })
    .map_err(|_| StunCheckError::Decode("stun integrity check panicked".into()))?;
    if m.typ.class == CLASS_ERROR_RESPONSE {
        let mut ec = ErrorCodeAttribute::default();
        let (code, reason) = match ec.get_from(&m) {
            Ok(()) => (ec.code.0, String::from_utf8_lossy(&ec.reason).into_owned()),
            Err(_) => (0, String::new()),
        };
        // RFC 8445 §7.2.5.2: an unauthenticated 401 is still meaningful; report either way.
        return Err(StunCheckError::ErrorResponse(code, reason));
    }
    if m.typ.class != CLASS_SUCCESS_RESPONSE {
        return Err(StunCheckError::UnexpectedType);
    }
    if !integrity_ok {
        return Err(StunCheckError::Integrity);
    }
    if FINGERPRINT.check(&m).is_err() {
        return Err(StunCheckError::Fingerprint);
    }
    let mut xor = XorMappedAddress::default();
    xor.get_from(&m)
        .map_err(|_| StunCheckError::NoMappedAddress)?;
    let got = SocketAddr::new(xor.ip, xor.port);
    if got != local {
        return Err(StunCheckError::MappedMismatch(got));
    }
    Ok(())
}

/// Answer a Binding request addressed to us ("local_ufrag:remote"), authenticated with our
/// password; returns the response bytes or `None` if the request is not acceptable.
fn answer_binding_request(m: &mut Message, shared: &Shared, from: SocketAddr) -> Option<Vec<u8>> {
    let user = TextAttribute::get_from_as(m, ATTR_USERNAME).ok()?;
    let user = String::from_utf8_lossy(user.text.as_bytes()).into_owned();
    let prefix = format!("{}:", shared.local_ufrag);
    if !user.starts_with(&prefix) {
        return None;
    }
    MessageIntegrity::new_short_term_integrity(shared.local_pwd.clone())
        .check(m)
        .ok()?;
    let mut resp = Message::new();
    resp.build(&[
        Box::new(BINDING_SUCCESS),
        Box::new(m.transaction_id),
        Box::new(XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        }),
        Box::new(MessageIntegrity::new_short_term_integrity(
            shared.local_pwd.clone(),
        )),
        Box::new(FINGERPRINT),
    ])
    .ok()?;
    Some(resp.raw)
}

struct Queues {
    stun: mpsc::Sender<Vec<u8>>,
    dtls: mpsc::Sender<Vec<u8>>,
    rtp: mpsc::Sender<rtp::packet::Packet>,
    rtcp: mpsc::Sender<RtcpPackets>,
}

fn push<T>(tx: &mpsc::Sender<T>, v: T, c: &Counters) {
    if tx.try_send(v).is_err() {
        bump(&c.queue_drops);
    }
}

async fn recv_loop(socket: Arc<UdpSocket>, shared: Arc<Shared>, q: Queues) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                // ICMP port unreachable etc. on loopback; keep going.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let data = &buf[..n];
        let c = &shared.c;
        if *lock(&shared.server) != Some(from) {
            bump(&c.foreign_source);
            continue;
        }
        let Some(&first) = data.first() else {
            bump(&c.unknown_in);
            continue;
        };
        match first {
            0..=3 => {
                let Ok(mut m) = decode_stun(data) else {
                    bump(&c.stun_responses_bad);
                    continue;
                };
                if m.typ == BINDING_REQUEST {
                    let shared2 = shared.clone();
                    let resp = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        answer_binding_request(&mut m, &shared2, from)
                    }))
                    .ok()
                    .flatten();
                    if let Some(resp) = resp {
                        let _ = socket.send_to(&resp, from).await;
                        bump(&c.stun_requests_answered);
                    }
                } else {
                    push(&q.stun, data.to_vec(), c);
                }
            }
            20..=63 => {
                bump(&c.dtls_in);
                push(&q.dtls, data.to_vec(), c);
            }
            128..=191 => {
                let is_rtcp = matches!(data.get(1), Some(192..=223));
                let mut g = lock(&shared.decrypt);
                let Some(ctx) = g.as_mut() else {
                    bump(&c.media_before_keys);
                    continue;
                };
                if is_rtcp {
                    let parsed = ctx
                        .decrypt_rtcp(data)
                        .ok()
                        .and_then(|mut b: Bytes| rtcp::packet::unmarshal(&mut b).ok());
                    drop(g);
                    match parsed {
                        Some(p) => {
                            bump(&c.rtcp_in);
                            push(&q.rtcp, p, c);
                        }
                        None => bump(&c.srtcp_decrypt_failures),
                    }
                } else {
                    let parsed = ctx
                        .decrypt_rtp(data)
                        .ok()
                        .and_then(|mut b: Bytes| rtp::packet::Packet::unmarshal(&mut b).ok());
                    drop(g);
                    match parsed {
                        Some(p) => {
                            bump(&c.rtp_in);
                            push(&q.rtp, p, c);
                        }
                        None => bump(&c.srtp_decrypt_failures),
                    }
                }
            }
            _ => bump(&c.unknown_in),
        }
    }
}

async fn consent_loop(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    mut stun_rx: mpsc::Receiver<Vec<u8>>,
    server: SocketAddr,
    username: String,
    pwd: String,
    tie_breaker: u64,
) {
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut outstanding: VecDeque<stun::agent::TransactionId> = VecDeque::new();
    let mut tick = tokio::time::interval(CONSENT_INTERVAL);
    tick.tick().await; // the first tick is immediate: connect just got a response
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Ok((tid, req)) = binding_request(&username, &pwd, tie_breaker, false) else {
                    continue;
                };
                if outstanding.len() >= MAX_CONSENT_OUTSTANDING {
                    outstanding.pop_front();
                }
                outstanding.push_back(tid);
                if socket.send_to(&req, server).await.is_ok() {
                    bump(&shared.c.stun_requests_sent);
                }
            }
            got = stun_rx.recv() => {
                let Some(raw) = got else { return };
                let sent: Vec<_> = outstanding.iter().copied().collect();
                match check_binding_response(&raw, &pwd, &sent, local) {
                    Ok(()) => {
                        bump(&shared.c.stun_responses_ok);
                        bump(&shared.c.consent_ok);
                        *lock(&shared.last_consent) = Some(Instant::now());
                    }
                    Err(_) => bump(&shared.c.stun_responses_bad),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn success_for(req: &[u8], pwd: &str, mapped: SocketAddr) -> Vec<u8> {
        let m = decode_stun(req).unwrap();
        let mut resp = Message::new();
        resp.build(&[
            Box::new(BINDING_SUCCESS),
            Box::new(m.transaction_id),
            Box::new(XorMappedAddress {
                ip: mapped.ip(),
                port: mapped.port(),
            }),
            Box::new(MessageIntegrity::new_short_term_integrity(pwd.to_owned())),
            Box::new(FINGERPRINT),
        ])
        .unwrap();
        resp.raw
    }

    #[test]
    fn request_has_ice_attributes_and_valid_integrity() {
        let (tid, req) = binding_request("srv:cli", "serverpwd", 42, true).unwrap();
        let mut m = decode_stun(&req).unwrap();
        assert_eq!(m.transaction_id, tid);
        assert_eq!(m.typ, BINDING_REQUEST);
        assert_eq!(m.get(ATTR_USERNAME).unwrap(), b"srv:cli");
        assert_eq!(
            m.get(ATTR_PRIORITY).unwrap(),
            CHECK_PRIORITY.to_be_bytes().to_vec()
        );
        assert_eq!(m.get(ATTR_ICE_CONTROLLING).unwrap(), 42u64.to_be_bytes());
        assert!(m.contains(ATTR_USE_CANDIDATE));
        MessageIntegrity::new_short_term_integrity("serverpwd".into())
            .check(&mut m)
            .unwrap();
        FINGERPRINT.check(&m).unwrap();
        assert!(MessageIntegrity::new_short_term_integrity("wrong".into())
            .check(&mut m)
            .is_err());
        let (_, consent) = binding_request("srv:cli", "serverpwd", 42, false).unwrap();
        assert!(!decode_stun(&consent).unwrap().contains(ATTR_USE_CANDIDATE));
    }

    #[test]
    fn response_checks() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (tid, req) = binding_request("s:c", "pw", 1, true).unwrap();
        let ok = success_for(&req, "pw", local);
        assert_eq!(check_binding_response(&ok, "pw", &[tid], local), Ok(()));
        assert_eq!(
            check_binding_response(&ok, "other", &[tid], local),
            Err(StunCheckError::Integrity)
        );
        assert_eq!(
            check_binding_response(&ok, "pw", &[], local),
            Err(StunCheckError::UnknownTransaction)
        );
        let elsewhere: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let bad_addr = success_for(&req, "pw", elsewhere);
        assert_eq!(
            check_binding_response(&bad_addr, "pw", &[tid], local),
            Err(StunCheckError::MappedMismatch(elsewhere))
        );
        // flipped byte in the fingerprint
        let mut bad_fp = ok.clone();
        let l = bad_fp.len();
        bad_fp[l - 1] ^= 1;
        assert_eq!(
            check_binding_response(&bad_fp, "pw", &[tid], local),
            Err(StunCheckError::Fingerprint)
        );
        for n in 0..ok.len() {
            assert!(
                check_binding_response(&ok[..n], "pw", &[tid], local).is_err(),
                "truncation {n} accepted"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
            let _ = check_binding_response(&data, "pw", &[], local);
            let mut d = data.clone();
            if d.len() >= 20 {
                // make it look like STUN so deeper code runs
                d[0] = 1; d[1] = 1; d[4..8].copy_from_slice(&0x2112A442u32.to_be_bytes());
                let l = (d.len() - 20) as u16;
                d[2..4].copy_from_slice(&l.to_be_bytes());
                let _ = check_binding_response(&d, "pw", &[], local);
            }
        }
    }
}
