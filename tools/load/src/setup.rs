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
    let t0 = Instant::now();
    let local_ip = if target.base.addr.ip().is_loopback() {
        target.base.addr.ip()
    } else {
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    };
    let std_sock = bind_socket(local_ip)?;
    let local = std_sock.local_addr()?;
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
    let (offer, path, token) = match role {
        Role::Publisher { video } => (
            sdp::publisher_offer(&params, audio_ssrc, video),
            target.whip_path.replace("{room}", &target.room),
            target.publish_token.clone(),
        ),
        Role::Viewer { video } => (
            sdp::viewer_offer(&params, video),
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
    let server = answer.candidate;
    let username = format!("{}:{}", answer.ufrag, params.ufrag);
    let tie_breaker: u64 = rand::random();

    let socket = Arc::new(UdpSocket::from_std(std_sock)?);
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    ice_check(
        &socket,
        server,
        &username,
        &answer.pwd,
        tie_breaker,
        local,
        deadline,
    )
    .await?;

    // DTLS over the same socket: a pump feeds DTLS records into a ChannelConn.
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(DTLS_QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(DTLS_QUEUE);
    let conn = Arc::new(ChannelConn::new(in_rx, out_tx, local, server));
    let rsock = socket.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            match rsock.recv_from(&mut buf).await {
                Ok((n, from)) if from == server => {
                    if let Some(&b) = buf.get(..n).and_then(|d| d.first()) {
                        if (20..=63).contains(&b) {
                            let _ = in_tx.try_send(buf[..n].to_vec());
                        }
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
    })
}

async fn ice_check(
    socket: &UdpSocket,
    server: SocketAddr,
    username: &str,
    pwd: &str,
    tie_breaker: u64,
    local: SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<(), SetupError> {
    let key = ils_stun::integrity_key(pwd.as_bytes());
    let mut rto = STUN_INITIAL_RTO;
    let mut sent: Vec<[u8; 12]> = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        let txid: [u8; 12] = rand::random();
        sent.push(txid);
        let mut out = [0u8; 512];
        let n = ils_stun::write_binding_request_with_key(
            &mut out,
            &txid,
            username.as_bytes(),
            &key,
            CHECK_PRIORITY,
            tie_breaker,
            true,
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
                    match check_response(&buf[..n], &key, &sent, local) {
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
