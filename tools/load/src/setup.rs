//! Bringing one endpoint up the way a browser does: its own UDP socket, an SDP offer over
//! WHIP/WHEP, ICE connectivity checks (controlling, USE-CANDIDATE, MESSAGE-INTEGRITY,
//! FINGERPRINT), a webrtc-dtls 1.2 client handshake over that socket, RFC 5764 key export and
//! in-place [`ils_srtp::SrtpContext`]s. The result ([`Ready`]) is handed to the I/O thread.
//!
//! Setup runs on tokio and may allocate; the per-packet path ([`crate::io`]) does not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc_dtls::config::{Config, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::conn::Conn;
use webrtc_util::KeyingMaterialExporter;

use crate::http::{self, BaseUrl};
use crate::sdp::{self, Answer, OfferParams};

/// First connectivity-check retransmission timeout. Default 50 ms (loopback); doubles per try.
pub const STUN_INITIAL_RTO: Duration = Duration::from_millis(50);
/// Cap of the doubling check RTO. Default 800 ms.
pub const STUN_MAX_RTO: Duration = Duration::from_millis(800);
/// Deadline for ICE + DTLS of one endpoint after its answer. Default 15 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Datagrams queued between the socket pump and the DTLS client. Default 64; a full queue
/// drops (DTLS retransmits), bounding memory per joining endpoint to 64 × 1500 B.
pub const DTLS_QUEUE: usize = 64;
/// Kernel receive buffer requested per endpoint socket. Default 256 KiB (a burst of a 1.5 Mb/s
/// keyframe plus audio without drops while the I/O thread is busy). Worst case: 256 KiB of
/// kernel memory per endpoint, only while full.
pub const SOCKET_RCVBUF: usize = 256 * 1024;
/// ICE PRIORITY sent in checks: host type preference 126, local preference 65535, component 1.
pub const CHECK_PRIORITY: u32 = (126 << 24) | (65535 << 8) | (256 - 1);
/// `use_srtp` ids offered, client order (Chromium with GCM enabled: GCM first).
pub const OFFERED_PROFILES: [u16; 2] = [0x0007, 0x0001];

/// What kind of endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// WHIP publisher: audio, and video simulcast when `video`.
    Publisher {
        /// Sends VP8 simulcast too.
        video: bool,
    },
    /// WHEP viewer: receives audio, and video when `video`.
    Viewer {
        /// Offers a recvonly video m-line too.
        video: bool,
    },
}

/// Signaling target.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server base URL.
    pub base: BaseUrl,
    /// Room (the path segment after /whip/ and /whep/).
    pub room: String,
    /// Bearer token for publishing.
    pub publish_token: Option<String>,
    /// Bearer token for viewing.
    pub view_token: Option<String>,
    /// WHIP path template ("/whip/{room}").
    pub whip_path: String,
    /// WHEP path template ("/whep/{room}").
    pub whep_path: String,
}

/// Why an endpoint did not come up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Signaling HTTP failure.
    #[error("signaling: {0}")]
    Http(#[from] http::HttpError),
    /// The server refused the offer.
    #[error("offer refused: HTTP {status}: {body}")]
    Refused {
        /// Status code.
        status: u16,
        /// Reason from the body (truncated).
        body: String,
    },
    /// The answer is unusable.
    #[error("answer: {0}")]
    Sdp(#[from] sdp::SdpError),
    /// Socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// No valid Binding success response in time.
    #[error("ICE connectivity check timed out")]
    IceTimeout,
    /// The server sent a Binding error response.
    #[error("ICE check got error response")]
    IceError,
    /// DTLS handshake failed.
    #[error("DTLS: {0}")]
    Dtls(String),
    /// DTLS did not finish in time.
    #[error("DTLS handshake timed out")]
    DtlsTimeout,
    /// The server's certificate is not the one in the answer.
    #[error("server DTLS fingerprint mismatch")]
    Fingerprint,
    /// The negotiated profile is not supported by ils-srtp.
    #[error("unsupported SRTP profile {0:#06x}")]
    Profile(u16),
    /// Building the SRTP contexts failed.
    #[error("SRTP: {0}")]
    Srtp(#[from] ils_srtp::SrtpError),
    /// Certificate generation failed.
    #[error("certificate: {0}")]
    Cert(String),
}

/// An endpoint whose handshakes are done, ready for the I/O thread.
pub struct Ready {
    /// Publisher or viewer.
    pub role: Role,
    /// Its socket (non-blocking).
    pub socket: std::net::UdpSocket,
    /// Its address.
    pub local: SocketAddr,
    /// Server media address.
    pub server: SocketAddr,
    /// SRTP context for what we send (client keys).
    pub tx: Box<ils_srtp::SrtpContext>,
    /// SRTP context for what we receive (server keys).
    pub rx: Box<ils_srtp::SrtpContext>,
    /// The parsed answer.
    pub answer: Answer,
    /// STUN USERNAME for consent checks ("server:client").
    pub username: String,
    /// Server ICE password (consent checks' MESSAGE-INTEGRITY key).
    pub server_pwd: String,
    /// ICE tie-breaker.
    pub tie_breaker: u64,
    /// Resource URL (Location) for DELETE.
    pub location: Option<String>,
    /// Bearer token used (for DELETE).
    pub token: Option<String>,
    /// POST → SRTP keys installed.
    pub join_time: Duration,
    /// Negotiated `use_srtp` id.
    pub profile_id: u16,
    /// Audio SSRC signalled in a publisher's offer.
    pub audio_ssrc: u32,
    /// Our ICE ufrag (the peer's checks carry USERNAME "local_ufrag:remote_ufrag").
    pub local_ufrag: String,
    /// Our ICE password: key of the responses to the peer's checks (full-ICE peers such as
    /// Janus check us too; an ICE-lite server like ils never does).
    pub local_pwd: String,
    /// Whether our checks carry ICE-CONTROLLING (we offered) or ICE-CONTROLLED (the server
    /// offered, e.g. a Janus subscriber).
    pub ice_controlling: bool,
}

/// A freshly bound endpoint before signaling: socket, certificate and the offer's ICE/DTLS
/// parameters. [`connect`] uses it for WHIP/WHEP; other signaling adapters (Janus) too.
pub struct Prepared {
    /// Non-blocking socket with [`SOCKET_RCVBUF`].
    pub socket: std::net::UdpSocket,
    /// Its address.
    pub local: SocketAddr,
    /// Our DTLS certificate.
    pub cert: Certificate,
    /// ufrag/pwd/fingerprint/address for the SDP we send.
    pub params: OfferParams,
    /// When setup of this endpoint started (join time is measured from here).
    pub t0: Instant,
}

/// What the signaling exchange decided, for [`establish`].
pub struct Negotiated {
    /// The server's SDP (answer, or offer when the server offered), parsed.
    pub answer: Answer,
    /// Resource URL for DELETE, if any.
    pub location: Option<String>,
    /// Bearer token used, if any.
    pub token: Option<String>,
    /// Our checks are ICE-CONTROLLING (true when we offered).
    pub controlling: bool,
}

/// Bind a socket for a server at `server_ip` and make fresh ICE credentials and a certificate.
pub fn prepare(server_ip: std::net::IpAddr) -> Result<Prepared, SetupError> {
    let t0 = Instant::now();
    let local_ip = if server_ip.is_loopback() {
        server_ip
    } else {
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    };
    let socket = bind_socket(local_ip)?;
    let local = socket.local_addr()?;
    let cert =
        ils_control::dtls::generate_certificate().map_err(|e| SetupError::Cert(e.to_string()))?;
    let params = OfferParams {
        ufrag: ice_string(8),
        pwd: ice_string(24),
        fingerprint: ils_control::dtls::fingerprint_of(&cert),
        addr: local,
        session_id: rand::random::<u64>() >> 2,
        stream_id: ice_string(12),
    };
    Ok(Prepared {
        socket,
        local,
        cert,
        params,
        t0,
    })
}

const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn ice_string(n: usize) -> String {
    let mut r = rand::thread_rng();
    (0..n)
        .map(|_| char::from(ICE_CHARS[r.gen_range(0..ICE_CHARS.len())]))
        .collect()
}

/// Bind a non-blocking UDP socket on `ip` with [`SOCKET_RCVBUF`].
pub fn bind_socket(ip: std::net::IpAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    s.set_nonblocking(true)?;
    let v: libc::c_int = SOCKET_RCVBUF as libc::c_int;
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the stated size.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(s)
}

/// Bring one endpoint up (offer → answer → ICE → DTLS → SRTP).
pub async fn connect(target: &Target, role: Role, audio_ssrc: u32) -> Result<Ready, SetupError> {
    let prep = prepare(target.base.addr.ip())?;
    let params = &prep.params;
    let (offer, path, token) = match role {
        Role::Publisher { video } => (
            sdp::publisher_offer(params, audio_ssrc, video),
            target.whip_path.replace("{room}", &target.room),
            target.publish_token.clone(),
        ),
        Role::Viewer { video } => (
            sdp::viewer_offer(params, video),
            target.whep_path.replace("{room}", &target.room),
            target.view_token.clone(),
        ),
    };
    let bearer = token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let resp = http::request(&target.base, "POST", &path, &headers, &offer).await?;
    if resp.status != 201 && resp.status != 200 {
        let body: String = resp.body.chars().take(200).collect();
        return Err(SetupError::Refused {
            status: resp.status,
            body,
        });
    }
    let location = resp.header("location").map(str::to_owned);
    let answer = sdp::parse_answer(&resp.body)?;
    establish(
        prep,
        Negotiated {
            answer,
            location,
            token,
            controlling: true,
        },
        role,
        audio_ssrc,
    )
    .await
}

/// ICE, DTLS (client) and SRTP for a prepared endpoint once signaling is done: the common tail
/// of every target's setup. Answers the peer's own connectivity checks meanwhile.
pub async fn establish(
    prep: Prepared,
    neg: Negotiated,
    role: Role,
    audio_ssrc: u32,
) -> Result<Ready, SetupError> {
    let Prepared {
        socket: std_sock,
        local,
        cert,
        params,
        t0,
    } = prep;
    let Negotiated {
        answer,
        location,
        token,
        controlling,
    } = neg;
    let server = answer.candidate;
    let username = format!("{}:{}", answer.ufrag, params.ufrag);
    let tie_breaker: u64 = rand::random();
    let responder = Arc::new(Responder::new(&params.ufrag, &params.pwd));

    let socket = Arc::new(UdpSocket::from_std(std_sock)?);
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    ice_check(
        &socket,
        server,
        &Check {
            username: &username,
            pwd: &answer.pwd,
            tie_breaker,
            controlling,
            local,
        },
        &responder,
        deadline,
    )
    .await?;

    // DTLS over the same socket: a pump feeds DTLS records into a ChannelConn.
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(DTLS_QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(DTLS_QUEUE);
    let conn = Arc::new(ChannelConn::new(in_rx, out_tx, local, server));
    let rsock = socket.clone();
    let resp2 = responder.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut out = [0u8; ils_stun::MAX_BINDING_SUCCESS_LEN];
        loop {
            match rsock.recv_from(&mut buf).await {
                Ok((n, from)) if from == server => {
                    let Some(d) = buf.get(..n) else { continue };
                    match d.first() {
                        Some(b) if (20..=63).contains(b) => {
                            let _ = in_tx.try_send(d.to_vec());
                        }
                        Some(0..=3) => {
                            if let Some(m) = resp2.answer(d, from, &mut out) {
                                let _ = rsock.send_to(&out[..m], from).await;
                            }
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    });
    let wsock = socket.clone();
    let writer = tokio::spawn(async move {
        while let Some(d) = out_rx.recv().await {
            let _ = wsock.send_to(&d, server).await;
        }
    });
    let result = tokio::time::timeout_at(
        deadline,
        dtls_client(conn.clone(), &cert, &answer.fingerprint),
    )
    .await;
    // Stop the pumps and detach the DTLS machinery (no close_notify: the session stays up).
    let _ = conn.close().await;
    reader.abort();
    writer.abort();
    let _ = reader.await;
    let _ = writer.await;
    let (profile_id, km) = match result {
        Ok(r) => r?,
        Err(_) => return Err(SetupError::DtlsTimeout),
    };
    let profile =
        ils_srtp::Profile::from_dtls_id(profile_id).ok_or(SetupError::Profile(profile_id))?;
    let keys = ils_srtp::split_keying_material(profile, &km)?;
    let tx = Box::new(ils_srtp::SrtpContext::new(
        profile,
        &keys.client_key,
        &keys.client_salt,
    )?);
    let rx = Box::new(ils_srtp::SrtpContext::new(
        profile,
        &keys.server_key,
        &keys.server_salt,
    )?);
    let socket = Arc::try_unwrap(socket)
        .map_err(|_| SetupError::Io(std::io::Error::other("socket still shared")))?
        .into_std()?;
    Ok(Ready {
        role,
        socket,
        local,
        server,
        tx,
        rx,
        server_pwd: answer.pwd.clone(),
        answer,
        username,
        tie_breaker,
        location,
        token,
        join_time: t0.elapsed(),
        profile_id,
        audio_ssrc,
        local_ufrag: params.ufrag,
        local_pwd: params.pwd,
        ice_controlling: controlling,
    })
}

/// One side of our connectivity checks.
pub struct Check<'a> {
    /// USERNAME "remote_ufrag:local_ufrag".
    pub username: &'a str,
    /// The peer's ICE password.
    pub pwd: &'a str,
    /// Tie-breaker.
    pub tie_breaker: u64,
    /// ICE-CONTROLLING + USE-CANDIDATE (true) or ICE-CONTROLLED (false).
    pub controlling: bool,
    /// Our address (expected in XOR-MAPPED-ADDRESS).
    pub local: SocketAddr,
}

/// Answers a full-ICE peer's Binding requests to us (RFC 8445 §7.3): USERNAME must start with
/// our ufrag and MESSAGE-INTEGRITY must verify with our password; anything else is ignored.
pub struct Responder {
    ufrag: String,
    key: ils_stun::HmacKey,
}

impl Responder {
    /// Responder for our credentials.
    pub fn new(local_ufrag: &str, local_pwd: &str) -> Self {
        Responder {
            ufrag: local_ufrag.to_owned(),
            key: ils_stun::integrity_key(local_pwd.as_bytes()),
        }
    }

    /// If `raw` is an authenticated Binding request for us from `from`, write the success
    /// response into `out` (at least [`ils_stun::MAX_BINDING_SUCCESS_LEN`] bytes) and return its
    /// length.
    pub fn answer(&self, raw: &[u8], from: SocketAddr, out: &mut [u8]) -> Option<usize> {
        let m = ils_stun::StunMessage::parse(raw).ok()?;
        if m.class() != ils_stun::Class::Request || m.method() != ils_stun::METHOD_BINDING {
            return None;
        }
        if m.local_ufrag()? != self.ufrag.as_bytes() {
            return None;
        }
        m.verify_integrity_with_key(&self.key).ok()?;
        ils_stun::write_binding_success_with_key(out, m.transaction_id(), from, &self.key).ok()
    }
}

/// Write a Binding request for `c` (ICE-CONTROLLING + USE-CANDIDATE, or ICE-CONTROLLED).
pub fn write_check(
    out: &mut [u8],
    txid: &[u8; 12],
    c_username: &[u8],
    key: &ils_stun::HmacKey,
    tie_breaker: u64,
    controlling: bool,
) -> Result<usize, ils_stun::StunError> {
    if controlling {
        return ils_stun::write_binding_request_with_key(
            out,
            txid,
            c_username,
            key,
            CHECK_PRIORITY,
            tie_breaker,
            true,
        );
    }
    if c_username.len() > ils_stun::MAX_USERNAME_LEN {
        return Err(ils_stun::StunError::BadUsername);
    }
    let mut w = ils_stun::StunWriter::new(
        out,
        ils_stun::Class::Request,
        ils_stun::METHOD_BINDING,
        txid,
    )?;
    w.attribute(ils_stun::attr::USERNAME, c_username)?;
    w.attribute(ils_stun::attr::PRIORITY, &CHECK_PRIORITY.to_be_bytes())?;
    w.attribute(ils_stun::attr::ICE_CONTROLLED, &tie_breaker.to_be_bytes())?;
    w.message_integrity(key)?;
    w.fingerprint()?;
    Ok(w.finish())
}

async fn ice_check(
    socket: &UdpSocket,
    server: SocketAddr,
    c: &Check<'_>,
    responder: &Responder,
    deadline: tokio::time::Instant,
) -> Result<(), SetupError> {
    let key = ils_stun::integrity_key(c.pwd.as_bytes());
    let mut rto = STUN_INITIAL_RTO;
    let mut sent: Vec<[u8; 12]> = Vec::new();
    let mut buf = [0u8; 1500];
    let mut reply = [0u8; ils_stun::MAX_BINDING_SUCCESS_LEN];
    loop {
        let txid: [u8; 12] = rand::random();
        sent.push(txid);
        let mut out = [0u8; 512];
        let n = write_check(
            &mut out,
            &txid,
            c.username.as_bytes(),
            &key,
            c.tie_breaker,
            c.controlling,
        )
        .map_err(|_| SetupError::IceError)?;
        socket.send_to(&out[..n], server).await?;
        let until = (tokio::time::Instant::now() + rto).min(deadline);
        loop {
            match tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) => {
                    if from != server {
                        continue;
                    }
                    let Some(d) = buf.get(..n) else { continue };
                    if let Some(m) = responder.answer(d, from, &mut reply) {
                        let _ = socket.send_to(&reply[..m], from).await;
                        continue;
                    }
                    match check_response(d, &key, &sent, c.local) {
                        Some(true) => return Ok(()),
                        Some(false) => return Err(SetupError::IceError),
                        None => continue,
                    }
                }
                Ok(Err(_)) => continue,
                Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SetupError::IceTimeout);
        }
        rto = (rto * 2).min(STUN_MAX_RTO);
    }
}

/// Check a STUN response to one of `sent`: `Some(true)` valid success (integrity,
/// fingerprint, XOR-MAPPED-ADDRESS = `local`), `Some(false)` error response, `None` not ours
/// or invalid.
pub fn check_response(
    raw: &[u8],
    key: &ils_stun::HmacKey,
    sent: &[[u8; 12]],
    local: SocketAddr,
) -> Option<bool> {
    let m = ils_stun::StunMessage::parse(raw).ok()?;
    if !sent.contains(m.transaction_id()) || m.method() != ils_stun::METHOD_BINDING {
        return None;
    }
    match m.class() {
        ils_stun::Class::ErrorResponse => Some(false),
        ils_stun::Class::SuccessResponse => {
            m.verify_integrity_with_key(key).ok()?;
            m.verify_fingerprint().ok()?;
            (m.xor_mapped_address()? == local).then_some(true)
        }
        _ => None,
    }
}

async fn dtls_client(
    conn: Arc<ChannelConn>,
    cert: &Certificate,
    expected_fp: &str,
) -> Result<(u16, Vec<u8>), SetupError> {
    let config = Config {
        certificates: vec![cert.clone()],
        srtp_protection_profiles: OFFERED_PROFILES
            .iter()
            .map(|p| SrtpProtectionProfile::from(*p))
            .collect(),
        extended_master_secret: ExtendedMasterSecretType::Require,
        // Self-signed: identity is the SDP fingerprint, checked below.
        insecure_skip_verify: true,
        ..Default::default()
    };
    let c: Arc<dyn Conn + Send + Sync> = conn;
    let dtls = DTLSConn::new(c, config, true, None)
        .await
        .map_err(|e| SetupError::Dtls(e.to_string()))?;
    let profile_id = dtls.selected_srtpprotection_profile() as u16;
    let profile =
        ils_srtp::Profile::from_dtls_id(profile_id).ok_or(SetupError::Profile(profile_id))?;
    let state = dtls.connection_state().await;
    let leaf = state
        .peer_certificates
        .first()
        .ok_or(SetupError::Fingerprint)?;
    let got = ils_control::dtls::fingerprint_der(leaf);
    if !got.eq_ignore_ascii_case(expected_fp.trim()) {
        return Err(SetupError::Fingerprint);
    }
    let km = state
        .export_keying_material("EXTRACTOR-dtls_srtp", &[], profile.keying_material_len())
        .await
        .map_err(|e| SetupError::Dtls(e.to_string()))?;
    Ok((profile_id, km))
}

/// The DTLS client's view of our socket: control's datagram [`Conn`] over two channels.
pub use ils_control::dtls::ChannelConn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responder_answers_only_authenticated_checks_for_us() {
        let r = Responder::new("us12", "our-password-0123456789");
        let peer: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let key = ils_stun::integrity_key(b"our-password-0123456789");
        let mut req = [0u8; 256];
        let txid = [7u8; 12];
        let n = write_check(&mut req, &txid, b"us12:them", &key, 9, true).unwrap();
        let mut out = [0u8; ils_stun::MAX_BINDING_SUCCESS_LEN];
        let m = r.answer(&req[..n], peer, &mut out).expect("answered");
        // The reply is what the peer's check_response accepts: integrity, fingerprint, mapped.
        assert_eq!(check_response(&out[..m], &key, &[txid], peer), Some(true));
        // Wrong ufrag, wrong password, a response, truncations: no answer.
        let n2 = write_check(&mut req, &txid, b"other:them", &key, 9, true).unwrap();
        assert!(r.answer(&req[..n2], peer, &mut out).is_none());
        let bad = ils_stun::integrity_key(b"not-our-password-000000");
        let n3 = write_check(&mut req, &txid, b"us12:them", &bad, 9, false).unwrap();
        assert!(r.answer(&req[..n3], peer, &mut out).is_none());
        assert!(r.answer(&out[..m], peer, &mut out.clone()).is_none());
        for cut in 0..n {
            assert!(r.answer(&req[..cut], peer, &mut out).is_none(), "cut {cut}");
        }
    }

    #[test]
    fn controlled_checks_carry_ice_controlled_and_no_nomination() {
        let key = ils_stun::integrity_key(b"pw");
        let mut req = [0u8; 256];
        let n = write_check(&mut req, &[1; 12], b"a:b", &key, 42, false).unwrap();
        let m = ils_stun::StunMessage::parse(&req[..n]).unwrap();
        assert_eq!(m.ice_controlled(), Some(42));
        assert_eq!(m.ice_controlling(), None);
        assert!(!m.has_use_candidate());
        assert!(m.verify_integrity_with_key(&key).is_ok());
        let n = write_check(&mut req, &[1; 12], b"a:b", &key, 42, true).unwrap();
        let m = ils_stun::StunMessage::parse(&req[..n]).unwrap();
        assert_eq!(m.ice_controlling(), Some(42));
        assert!(m.has_use_candidate());
    }

    #[test]
    fn ice_strings_use_ice_chars() {
        let s = ice_string(24);
        assert_eq!(s.len(), 24);
        assert!(s.bytes().all(|b| ICE_CHARS.contains(&b)));
    }

    #[test]
    fn stun_response_checks() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let key = ils_stun::integrity_key(b"serverpassword");
        let txid = [7u8; 12];
        let mut out = [0u8; 256];
        let n = ils_stun::write_binding_success_with_key(&mut out, &txid, local, &key).unwrap();
        assert_eq!(check_response(&out[..n], &key, &[txid], local), Some(true));
        assert_eq!(check_response(&out[..n], &key, &[[8u8; 12]], local), None);
        let other = ils_stun::integrity_key(b"other");
        assert_eq!(check_response(&out[..n], &other, &[txid], local), None);
        let elsewhere: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(check_response(&out[..n], &key, &[txid], elsewhere), None);
        for l in 0..n {
            assert_eq!(check_response(&out[..l], &key, &[txid], local), None);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(d in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let key = ils_stun::integrity_key(b"pw");
            let _ = check_response(&d, &key, &[[0u8; 12]], "127.0.0.1:1".parse().unwrap());
        }
    }
}
