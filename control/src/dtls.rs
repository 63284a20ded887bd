//! The DTLS driver: a DTLS-SRTP *server* run over datagrams that the engine relays.
//!
//! The engine does not terminate DTLS. Records from an ICE-validated tuple reach control as
//! `DtlsIn` events; what the server wants to send goes back as `SendDatagram` commands. This
//! module turns that relay into a handshake behind a small trait, [`DtlsDriver`], so another DTLS
//! implementation can replace webrtc-dtls without touching the rest of control:
//!
//! * [`ChannelConn`]: a [`webrtc_util::conn::Conn`] over two tokio mpsc channels (inbound records,
//!   outbound records).
//! * [`server_handshake`]: webrtc-dtls 1.2 server, extended master secret required, a client
//!   certificate required and checked against the SDP `a=fingerprint` (RELIABILITY C5: mismatch →
//!   error, no keys), SRTP profile chosen in **our** preference order
//!   ([`SERVER_PROFILE_PREFERENCE`]: AEAD_AES_128_GCM first), RFC 5764 keys exported.
//! * [`WebrtcDtls`]: the [`DtlsDriver`] with an ECDSA P-256 certificate, persisted as PEM in the
//!   data directory so the fingerprint survives restarts.
//!
//! webrtc-dtls picks the SRTP profile in the *client's* order. To honour our preference we parse
//! the first ClientHello ourselves ([`ClientHelloAssembler`], bounded and panic-free on hostile
//! input) and configure the server with only the best profile the client offers; the peeked
//! datagrams are then replayed into webrtc-dtls.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use tokio::sync::{mpsc, watch, Mutex};
use webrtc_dtls::config::{ClientAuthType, Config, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::{Certificate, CryptoPrivateKey, CryptoPrivateKeyKind};
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::conn::Conn;
use webrtc_util::KeyingMaterialExporter;

// ===== limits =====

/// Capacity (datagrams) of each direction of a [`ChannelConn`] made by [`ChannelConn::pair`].
/// Default 256; bounds the records a stalled reader holds to 256 × 1500 B ≈ 384 KiB.
pub const CHANNEL_CAPACITY: usize = 256;

/// How long a server handshake may take, from the first record to the exported keys.
/// Default 10 s (browsers retransmit flights for longer, but a handshake that is not done by
/// then is not going to be); bounds the time a silent or stuck client holds a handshake task.
pub const DTLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server keeps running after a successful handshake, answering a retransmitted
/// final client flight (our last flight was lost). Default 30 s; bounds the memory of a finished
/// handshake (one webrtc-dtls connection, a few KiB) kept per session.
pub const DTLS_LINGER: Duration = Duration::from_secs(30);

/// Most datagrams buffered while reassembling a fragmented first ClientHello before giving up
/// on choosing the profile ourselves (the handshake then proceeds in the client's order).
/// Default 8; bounds the peeked memory to 8 datagrams.
pub const MAX_PEEK_DATAGRAMS: usize = 8;

/// Largest ClientHello body (bytes) reassembled for the profile peek. Default 16 KiB
/// (Chromium's post-quantum DTLS 1.3 ClientHello is ≈ 1.4 KB); a larger declared length is
/// refused by the peek (the handshake itself still proceeds). Worst-case memory 16 KiB + 16 KiB
/// of fill flags per handshake.
pub const MAX_CLIENT_HELLO_LEN: usize = 16 * 1024;

/// Largest record webrtc-dtls is handed in one `recv` (bytes). Default 8 KiB; the engine relays
/// at most `ils_shm::MAX_DATAGRAM` (1500) bytes, larger inbound datagrams are truncated.
pub const RECV_BUFFER: usize = 8 * 1024;

/// RFC 5764 §4.2 exporter label for DTLS-SRTP keying material.
pub const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// `use_srtp` id of SRTP_AES128_CM_HMAC_SHA1_80 (RFC 5764).
pub const PROFILE_AES128_CM_HMAC_SHA1_80: u16 = 0x0001;
/// `use_srtp` id of SRTP_AEAD_AES_128_GCM (RFC 7714).
pub const PROFILE_AEAD_AES_128_GCM: u16 = 0x0007;

/// SRTP profiles the server accepts, most preferred first.
pub const SERVER_PROFILE_PREFERENCE: [u16; 2] =
    [PROFILE_AEAD_AES_128_GCM, PROFILE_AES128_CM_HMAC_SHA1_80];

/// File (inside the data directory) holding our DTLS private key and certificate as PEM.
pub const CERT_FILE_NAME: &str = "dtls-cert.pem";

/// Largest certificate file [`WebrtcDtls::load_or_create`] reads. Default 64 KiB (a P-256 key
/// plus certificate is < 1 KiB); bounds what a corrupt or hostile file can make us allocate.
pub const MAX_CERT_FILE: u64 = 64 * 1024;

// ===== public API =====

/// SRTP master keys and salts exported from a finished handshake (RFC 5764 §4.2).
///
/// We are the DTLS server: the engine decrypts with the client's key (`rx`) and encrypts with
/// the server's (`tx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    /// `use_srtp` profile id ([`PROFILE_AEAD_AES_128_GCM`] or [`PROFILE_AES128_CM_HMAC_SHA1_80`]).
    pub profile: u16,
    /// client_write_SRTP_master_key.
    pub client_key: Vec<u8>,
    /// client_write_SRTP_master_salt.
    pub client_salt: Vec<u8>,
    /// server_write_SRTP_master_key.
    pub server_key: Vec<u8>,
    /// server_write_SRTP_master_salt.
    pub server_salt: Vec<u8>,
}

/// Why a handshake produced no keys.
#[derive(Debug, thiserror::Error)]
pub enum DtlsFailure {
    /// The peer's certificate does not match the SDP `a=fingerprint` (RELIABILITY C5).
    #[error("remote certificate fingerprint {got} does not match the signalled {expected}")]
    FingerprintMismatch {
        /// Fingerprint signalled in the SDP.
        expected: String,
        /// Fingerprint (same hash) of the certificate actually presented.
        got: String,
    },
    /// The client offers no SRTP profile we support (or none was negotiated).
    #[error("no common SRTP protection profile")]
    NoSrtpProfile,
    /// The handshake did not finish within [`DTLS_HANDSHAKE_TIMEOUT`].
    #[error("DTLS handshake timed out")]
    Timeout,
    /// Any other handshake failure (alert, bad record, no client certificate, export failure).
    #[error("DTLS handshake failed: {0}")]
    Handshake(String),
}

/// A DTLS-SRTP server implementation driven over relayed datagrams.
#[async_trait]
pub trait DtlsDriver: Send + Sync + 'static {
    /// sha-256 fingerprint of our certificate ("AB:CD:..") for the SDP answer.
    fn fingerprint(&self) -> String;
    /// Run a server handshake over datagrams: `inbound` yields records the engine relayed
    /// (DtlsIn), records to send go to `outbound` (→ SendDatagram). Checks the peer certificate
    /// against `expected_fingerprint` ("sha-256 AB:.." or "AB:..") — mismatch → Err, no keys
    /// (RELIABILITY C5). Keeps answering retransmitted final flights for a while after success
    /// (spawn).
    async fn accept(
        &self,
        inbound: mpsc::Receiver<Vec<u8>>,
        outbound: mpsc::Sender<Vec<u8>>,
        expected_fingerprint: String,
    ) -> Result<SrtpKeys, DtlsFailure>;
}

/// The webrtc-dtls [`DtlsDriver`] with one ECDSA P-256 certificate.
pub struct WebrtcDtls {
    cert: Certificate,
    fingerprint: String,
}

impl std::fmt::Debug for WebrtcDtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebrtcDtls")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl WebrtcDtls {
    /// Load our certificate from `data_dir/`[`CERT_FILE_NAME`], or create one (ECDSA P-256,
    /// self-signed) and persist it there with mode 0600, so the fingerprint survives restarts.
    /// Creates `data_dir` (mode 0700) when missing. A file that exists but cannot be parsed is
    /// an error (never silently replaced).
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(CERT_FILE_NAME);
        match std::fs::metadata(&path) {
            Ok(meta) => {
                if meta.len() > MAX_CERT_FILE {
                    anyhow::bail!(
                        "{} is {} bytes, larger than {MAX_CERT_FILE}: not a DTLS certificate file \
                         (remove it to generate a new certificate)",
                        path.display(),
                        meta.len()
                    );
                }
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        "{} was readable by group/others; restricting it to 0600",
                        path.display()
                    );
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .with_context(|| format!("chmod 0600 {}", path.display()))?;
                }
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("read {}", path.display()))?;
                let cert = certificate_from_pem(&text).with_context(|| {
                    format!(
                        "{} is not a valid ils DTLS certificate (remove it to generate a new one)",
                        path.display()
                    )
                })?;
                Ok(Self::from_certificate(cert))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_private_dir(data_dir)?;
                let cert = generate_certificate()?;
                write_private_file(&path, certificate_to_pem(&cert).as_bytes())?;
                tracing::info!(
                    "generated DTLS certificate {} ({})",
                    path.display(),
                    fingerprint_of(&cert)
                );
                Ok(Self::from_certificate(cert))
            }
            Err(e) => Err(e).with_context(|| format!("stat {}", path.display())),
        }
    }

    /// A fresh certificate kept only in memory (tests, `--dev` without a data dir).
    ///
    /// # Panics
    /// Only if the system RNG / P-256 key generation fails, which does not depend on input.
    pub fn ephemeral() -> Self {
        // INVARIANT: P-256 key generation and self-signing depend only on the system RNG.
        let cert = generate_certificate().expect("ECDSA P-256 self-signed certificate generation");
        Self::from_certificate(cert)
    }

    /// A driver using `cert` (e.g. one a test also uses elsewhere).
    pub fn from_certificate(cert: Certificate) -> Self {
        let fingerprint = fingerprint_of(&cert);
        Self { cert, fingerprint }
    }

    /// Our certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }
}

#[async_trait]
impl DtlsDriver for WebrtcDtls {
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    async fn accept(
        &self,
        inbound: mpsc::Receiver<Vec<u8>>,
        outbound: mpsc::Sender<Vec<u8>>,
        expected_fingerprint: String,
    ) -> Result<SrtpKeys, DtlsFailure> {
        let addr = placeholder_addr(0);
        let conn: Arc<dyn Conn + Send + Sync> =
            Arc::new(ChannelConn::new(inbound, outbound, addr, addr));
        let hs = server_handshake(conn, &self.cert, Some(&expected_fingerprint)).await?;
        let keys = hs.keys.clone();
        linger(hs);
        Ok(keys)
    }
}

/// Keep a finished handshake alive for [`DTLS_LINGER`] (it answers a retransmitted final
/// flight), then close it. Needs a tokio runtime (always present inside `accept`).
fn linger(hs: ServerHandshake) {
    tokio::spawn(async move {
        tokio::time::sleep(DTLS_LINGER).await;
        let _ = hs.conn.close().await;
        let _ = hs.transport.close().await;
    });
}

// ===== the handshake =====

/// A finished server handshake.
pub struct ServerHandshake {
    /// The exported SRTP keys.
    pub keys: SrtpKeys,
    /// SHA-256 fingerprint ("AB:CD:..") of the client's leaf certificate.
    pub remote_fingerprint: String,
    /// The live DTLS connection (keeps answering retransmissions until closed).
    pub conn: Arc<DTLSConn>,
    /// The datagram transport underneath (close it to stop webrtc-dtls' reader).
    pub transport: Arc<dyn Conn + Send + Sync>,
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("profile", &self.keys.profile)
            .field("remote_fingerprint", &self.remote_fingerprint)
            .finish_non_exhaustive()
    }
}

/// Run a webrtc-dtls *server* handshake over `conn` and export the SRTP keys.
///
/// DTLS 1.2, extended master secret required, a client certificate required; the SRTP profile
/// is the first of [`SERVER_PROFILE_PREFERENCE`] that the ClientHello offers. When
/// `expected_fingerprint` is given ("sha-256 AB:..", "AB:..", or another hash named as in SDP:
/// sha-1 / sha-384 / sha-512), the client's leaf certificate must match it, else
/// [`DtlsFailure::FingerprintMismatch`] and no keys. Gives up after [`DTLS_HANDSHAKE_TIMEOUT`].
/// On any failure `conn` is closed (ending webrtc-dtls' background reader).
pub async fn server_handshake(
    conn: Arc<dyn Conn + Send + Sync>,
    cert: &Certificate,
    expected_fingerprint: Option<&str>,
) -> Result<ServerHandshake, DtlsFailure> {
    let expected = match expected_fingerprint {
        Some(s) => Some(
            ExpectedFingerprint::parse(s)
                .ok_or_else(|| DtlsFailure::Handshake(format!("unusable fingerprint {s:?}")))?,
        ),
        None => None,
    };
    let mismatch: Arc<StdMutex<Option<(String, String)>>> = Arc::new(StdMutex::new(None));
    let fut = handshake_inner(conn.clone(), cert, expected, Arc::clone(&mismatch));
    let res = match tokio::time::timeout(DTLS_HANDSHAKE_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(DtlsFailure::Timeout),
    };
    match res {
        Ok(hs) => Ok(hs),
        Err(e) => {
            let _ = conn.close().await;
            // The verify callback saw the real reason; webrtc-dtls only reports a string.
            let seen = mismatch.lock().ok().and_then(|mut m| m.take());
            match (seen, e) {
                (Some((expected, got)), DtlsFailure::Handshake(_)) => {
                    Err(DtlsFailure::FingerprintMismatch { expected, got })
                }
                (_, e) => Err(e),
            }
        }
    }
}

async fn handshake_inner(
    conn: Arc<dyn Conn + Send + Sync>,
    cert: &Certificate,
    expected: Option<ExpectedFingerprint>,
    mismatch: Arc<StdMutex<Option<(String, String)>>>,
) -> Result<ServerHandshake, DtlsFailure> {
    let (seen, peek) = peek_client_hello(&conn).await?;
    let choice = match peek {
        Peek::Offered(offered) => match choose_profile(&offered) {
            Some(p) => Some(p),
            None => return Err(DtlsFailure::NoSrtpProfile),
        },
        Peek::Unknown => None,
    };
    let replay: Arc<dyn Conn + Send + Sync> = Arc::new(ReplayConn {
        pending: Mutex::new(seen.into()),
        inner: conn.clone(),
    });
    let config = Config {
        certificates: vec![cert.clone()],
        srtp_protection_profiles: match choice {
            Some(p) => vec![SrtpProtectionProfile::from(p)],
            None => SERVER_PROFILE_PREFERENCE
                .iter()
                .map(|p| SrtpProtectionProfile::from(*p))
                .collect(),
        },
        extended_master_secret: ExtendedMasterSecretType::Require,
        client_auth: ClientAuthType::RequireAnyClientCert,
        // Self-signed certificates: identity is the SDP fingerprint, checked by the callback.
        insecure_skip_verify: true,
        verify_peer_certificate: Some(verify_callback(expected.clone(), mismatch)),
        ..Default::default()
    };
    let dtls = DTLSConn::new(replay.clone(), config, false, None)
        .await
        .map_err(|e| DtlsFailure::Handshake(e.to_string()))?;
    let (keys, remote_fingerprint) = match export_keys(&dtls, expected.as_ref()).await {
        Ok(k) => k,
        Err(e) => {
            let _ = dtls.close().await;
            return Err(e);
        }
    };
    Ok(ServerHandshake {
        keys,
        remote_fingerprint,
        conn: Arc::new(dtls),
        transport: conn,
    })
}

/// webrtc-dtls' `verify_peer_certificate` callback type.
type VerifyPeerFn = Arc<
    dyn (Fn(
            &[Vec<u8>],
            &[rustls_pki_types::CertificateDer<'static>],
        ) -> Result<(), webrtc_dtls::Error>)
        + Send
        + Sync,
>;

fn verify_callback(
    expected: Option<ExpectedFingerprint>,
    mismatch: Arc<StdMutex<Option<(String, String)>>>,
) -> VerifyPeerFn {
    Arc::new(move |certs: &[Vec<u8>], _| {
        let Some(leaf) = certs.first() else {
            return Err(webrtc_dtls::Error::Other(
                "client presented no certificate".into(),
            ));
        };
        if let Some(exp) = &expected {
            let got = exp.digest_of(leaf);
            if got != exp.hex {
                if let Ok(mut m) = mismatch.lock() {
                    *m = Some((exp.original.clone(), got.clone()));
                }
                return Err(webrtc_dtls::Error::Other(format!(
                    "certificate fingerprint {got} does not match {}",
                    exp.original
                )));
            }
        }
        Ok(())
    })
}

/// Export the RFC 5764 keys from a finished connection and re-check the peer certificate.
async fn export_keys(
    dtls: &DTLSConn,
    expected: Option<&ExpectedFingerprint>,
) -> Result<(SrtpKeys, String), DtlsFailure> {
    let profile = dtls.selected_srtpprotection_profile() as u16;
    let (key_len, salt_len) = profile_key_salt_len(profile).ok_or(DtlsFailure::NoSrtpProfile)?;
    let state = dtls.connection_state().await;
    let leaf = state
        .peer_certificates
        .first()
        .ok_or_else(|| DtlsFailure::Handshake("client presented no certificate".into()))?;
    let remote_fingerprint = fingerprint_der(leaf);
    // Belt and braces: the callback already refused a mismatch during the handshake.
    if let Some(exp) = expected {
        let got = exp.digest_of(leaf);
        if got != exp.hex {
            return Err(DtlsFailure::FingerprintMismatch {
                expected: exp.original.clone(),
                got,
            });
        }
    }
    let total = 2 * (key_len + salt_len);
    let km = state
        .export_keying_material(SRTP_EXPORTER_LABEL, &[], total)
        .await
        .map_err(|e| DtlsFailure::Handshake(format!("keying material export: {e}")))?;
    let keys = split_keying_material(profile, &km, key_len, salt_len)
        .ok_or_else(|| DtlsFailure::Handshake(format!("exporter gave {} bytes", km.len())))?;
    Ok((keys, remote_fingerprint))
}

/// Master key and salt lengths (bytes) of a supported `use_srtp` profile.
pub fn profile_key_salt_len(profile: u16) -> Option<(usize, usize)> {
    match profile {
        PROFILE_AES128_CM_HMAC_SHA1_80 => Some((16, 14)),
        PROFILE_AEAD_AES_128_GCM => Some((16, 12)),
        _ => None,
    }
}

/// RFC 5764 §4.2 split: client key | server key | client salt | server salt. `None` unless
/// `km` is exactly `2 * (key_len + salt_len)` bytes.
pub fn split_keying_material(
    profile: u16,
    km: &[u8],
    key_len: usize,
    salt_len: usize,
) -> Option<SrtpKeys> {
    if km.len() != 2 * (key_len + salt_len) {
        return None;
    }
    let (client_key, rest) = km.split_at(key_len);
    let (server_key, rest) = rest.split_at(key_len);
    let (client_salt, server_salt) = rest.split_at(salt_len);
    Some(SrtpKeys {
        profile,
        client_key: client_key.to_vec(),
        client_salt: client_salt.to_vec(),
        server_key: server_key.to_vec(),
        server_salt: server_salt.to_vec(),
    })
}

/// The profile the server picks: the first of [`SERVER_PROFILE_PREFERENCE`] the client offers.
pub fn choose_profile(offered: &[u16]) -> Option<u16> {
    SERVER_PROFILE_PREFERENCE
        .iter()
        .copied()
        .find(|p| offered.contains(p))
}

/// What the ClientHello peek learnt.
enum Peek {
    /// The complete first ClientHello offers these `use_srtp` profiles (client order).
    Offered(Vec<u16>),
    /// Could not tell (unparseable, too fragmented): let webrtc-dtls negotiate.
    Unknown,
}

/// Read datagrams until the first ClientHello is complete (or the peek gives up); return them
/// for replay with what was learnt.
async fn peek_client_hello(
    conn: &Arc<dyn Conn + Send + Sync>,
) -> Result<(Vec<Vec<u8>>, Peek), DtlsFailure> {
    let mut seen = Vec::new();
    let mut asm = ClientHelloAssembler::default();
    let mut buf = vec![0u8; RECV_BUFFER];
    while seen.len() < MAX_PEEK_DATAGRAMS {
        let n = conn
            .recv(&mut buf)
            .await
            .map_err(|e| DtlsFailure::Handshake(format!("transport closed: {e}")))?;
        let d = buf.get(..n).unwrap_or(&buf[..]).to_vec();
        let r = asm.push(&d);
        seen.push(d);
        match r {
            Ok(Some(body)) => {
                let peek = match client_hello_body_srtp_profiles(body) {
                    Ok(o) => Peek::Offered(o),
                    Err(_) => Peek::Unknown,
                };
                return Ok((seen, peek));
            }
            Ok(None) => continue,
            Err(_) => return Ok((seen, Peek::Unknown)),
        }
    }
    Ok((seen, Peek::Unknown))
}

// ===== fingerprints =====

/// SHA-256 fingerprint of DER bytes as uppercase hex pairs joined by ':' (SDP `a=fingerprint`).
pub fn fingerprint_der(der: &[u8]) -> String {
    hex_colon(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// SHA-256 fingerprint ("AB:CD:...") of a certificate's leaf; empty if it has none.
pub fn fingerprint_of(cert: &Certificate) -> String {
    cert.certificate
        .first()
        .map(|der| fingerprint_der(der.as_ref()))
        .unwrap_or_default()
}

fn hex_colon(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// A signalled fingerprint, normalised for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedFingerprint {
    /// Hash named in the SDP.
    pub algorithm: &'static ring::digest::Algorithm,
    /// Uppercase "AB:CD:.." of the expected digest.
    pub hex: String,
    /// The string as signalled (for error messages).
    pub original: String,
}

impl ExpectedFingerprint {
    /// Parse "sha-256 AB:CD:..", "AB:CD:.." (sha-256 assumed) or another SDP hash name
    /// (sha-1, sha-384, sha-512; case-insensitive). `None` for an unknown hash, or hex that is
    /// not colon-separated byte pairs of that hash's length.
    pub fn parse(s: &str) -> Option<Self> {
        let t = s.trim();
        let (alg_name, hex) = match t.split_once(char::is_whitespace) {
            Some((a, h)) => (a.trim(), h.trim()),
            None => ("sha-256", t),
        };
        let algorithm: &'static ring::digest::Algorithm =
            match alg_name.to_ascii_lowercase().as_str() {
                "sha-256" => &ring::digest::SHA256,
                "sha-1" => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                "sha-384" => &ring::digest::SHA384,
                "sha-512" => &ring::digest::SHA512,
                _ => return None,
            };
        let hex = hex.to_ascii_uppercase();
        let pairs: Vec<&str> = hex.split(':').collect();
        if pairs.len() != algorithm.output_len()
            || !pairs
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return None;
        }
        Some(Self {
            algorithm,
            hex,
            original: t.to_owned(),
        })
    }

    /// The fingerprint of `der` with this hash, in the same format as [`Self::hex`].
    pub fn digest_of(&self, der: &[u8]) -> String {
        hex_colon(ring::digest::digest(self.algorithm, der).as_ref())
    }
}

// ===== certificates =====

/// A fresh self-signed ECDSA P-256 certificate.
pub fn generate_certificate() -> anyhow::Result<Certificate> {
    let cert = Certificate::generate_self_signed(vec!["ils".to_owned()])
        .map_err(|e| anyhow::anyhow!("generate DTLS certificate: {e}"))?;
    if !matches!(cert.private_key.kind, CryptoPrivateKeyKind::Ecdsa256(_)) {
        anyhow::bail!("generated DTLS key is not ECDSA P-256");
    }
    Ok(cert)
}

const PEM_KEY_TAG: &str = "PRIVATE KEY";
const PEM_CERT_TAG: &str = "CERTIFICATE";

/// PEM text: the PKCS#8 private key ("PRIVATE KEY") then the certificate ("CERTIFICATE").
pub fn certificate_to_pem(cert: &Certificate) -> String {
    let mut blocks = vec![pem::Pem::new(
        PEM_KEY_TAG,
        cert.private_key.serialized_der.clone(),
    )];
    for c in &cert.certificate {
        blocks.push(pem::Pem::new(PEM_CERT_TAG, c.as_ref().to_vec()));
    }
    pem::encode_many(&blocks)
}

/// Parse [`certificate_to_pem`]'s format: exactly one ECDSA P-256 PKCS#8 key and at least one
/// certificate, the first (leaf) containing the key's public point.
pub fn certificate_from_pem(text: &str) -> anyhow::Result<Certificate> {
    let blocks = pem::parse_many(text).map_err(|e| anyhow::anyhow!("PEM: {e}"))?;
    let mut key = None;
    let mut certs = Vec::new();
    for b in blocks {
        match b.tag() {
            PEM_KEY_TAG if key.is_none() => key = Some(b.into_contents()),
            PEM_KEY_TAG => anyhow::bail!("more than one private key"),
            PEM_CERT_TAG => certs.push(rustls_pki_types::CertificateDer::from(b.into_contents())),
            other => anyhow::bail!("unexpected PEM block {other:?}"),
        }
    }
    let der = key.ok_or_else(|| anyhow::anyhow!("no PRIVATE KEY block"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| anyhow::anyhow!("no CERTIFICATE block"))?;
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &der,
        &rng,
    )
    .map_err(|e| anyhow::anyhow!("private key is not an ECDSA P-256 PKCS#8 key: {e}"))?;
    use ring::signature::KeyPair as _;
    let public = pair.public_key().as_ref();
    if public.is_empty() || !leaf.as_ref().windows(public.len()).any(|w| w == public) {
        anyhow::bail!("the certificate does not belong to the private key");
    }
    Ok(Certificate {
        certificate: certs,
        private_key: CryptoPrivateKey {
            kind: CryptoPrivateKeyKind::Ecdsa256(pair),
            serialized_der: der,
        },
    })
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create data directory {}", dir.display()))
}

/// Write `bytes` to `path` with mode 0600, atomically (temporary file + rename).
fn write_private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

// ===== datagram transport =====

/// A placeholder address for conns that have no real socket.
pub fn placeholder_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// A datagram [`Conn`] over two tokio mpsc channels.
///
/// `recv` yields the next inbound datagram (truncating to the caller's buffer, as UDP does);
/// `send` pushes a copy into the outbound channel. Once the inbound channel is closed, `recv`
/// waits (webrtc-dtls' reader loop would spin on a repeated error) until [`Conn::close`] is
/// called, after which it returns an error.
pub struct ChannelConn {
    inbound: Mutex<mpsc::Receiver<Vec<u8>>>,
    outbound: mpsc::Sender<Vec<u8>>,
    local: SocketAddr,
    remote: SocketAddr,
    closed: watch::Sender<bool>,
}

/// The far ends of a [`ChannelConn`] made by [`ChannelConn::pair`].
pub struct ChannelEnds {
    /// Push datagrams here: the conn's `recv` returns them.
    pub inbound_tx: mpsc::Sender<Vec<u8>>,
    /// The conn's `send`s arrive here.
    pub outbound_rx: mpsc::Receiver<Vec<u8>>,
}

impl ChannelConn {
    /// A conn reading `inbound` and writing `outbound`; `local`/`remote` are only reported.
    pub fn new(
        inbound: mpsc::Receiver<Vec<u8>>,
        outbound: mpsc::Sender<Vec<u8>>,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Self {
        let (closed, _) = watch::channel(false);
        Self {
            inbound: Mutex::new(inbound),
            outbound,
            local,
            remote,
            closed,
        }
    }

    /// A conn plus fresh channels of [`CHANNEL_CAPACITY`] datagrams each way.
    pub fn pair(local: SocketAddr, remote: SocketAddr) -> (Self, ChannelEnds) {
        let (inbound_tx, inbound_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (outbound_tx, outbound_rx) = mpsc::channel(CHANNEL_CAPACITY);
        (
            Self::new(inbound_rx, outbound_tx, local, remote),
            ChannelEnds {
                inbound_tx,
                outbound_rx,
            },
        )
    }

    fn closed_error() -> webrtc_util::Error {
        webrtc_util::Error::ErrUseClosedNetworkConn
    }
}

/// Resolve once the watch flag turns true (or its sender is gone).
async fn wait_closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

fn copy_truncated(d: &[u8], buf: &mut [u8]) -> usize {
    let n = d.len().min(buf.len());
    buf[..n].copy_from_slice(&d[..n]);
    n
}

#[async_trait]
impl Conn for ChannelConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other(
            "ChannelConn is already connected".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let mut closed = self.closed.subscribe();
        if *closed.borrow() {
            return Err(Self::closed_error());
        }
        let mut inbound = self.inbound.lock().await;
        tokio::select! {
            got = inbound.recv() => match got {
                Some(d) => Ok(copy_truncated(&d, buf)),
                None => {
                    // Sender gone: wait for close() rather than erroring in a tight loop.
                    wait_closed(&mut closed).await;
                    Err(Self::closed_error())
                }
            },
            _ = wait_closed(&mut closed) => Err(Self::closed_error()),
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let n = self.recv(buf).await?;
        Ok((n, self.remote))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        if *self.closed.borrow() {
            return Err(Self::closed_error());
        }
        self.outbound
            .send(buf.to_vec())
            .await
            .map_err(|_| Self::closed_error())?;
        Ok(buf.len())
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.remote)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.closed.send_replace(true);
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A conn that replays already-read datagrams before reading `inner` again.
struct ReplayConn {
    pending: Mutex<VecDeque<Vec<u8>>>,
    inner: Arc<dyn Conn + Send + Sync>,
}

#[async_trait]
impl Conn for ReplayConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        if let Some(d) = self.pending.lock().await.pop_front() {
            return Ok(copy_truncated(&d, buf));
        }
        self.inner.recv(buf).await
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let n = self.recv(buf).await?;
        let from = self
            .inner
            .remote_addr()
            .unwrap_or_else(|| placeholder_addr(0));
        Ok((n, from))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.inner.send_to(buf, target).await
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

// ===== ClientHello peek (hostile input) =====

/// Why the ClientHello `use_srtp` peek could not read a profile list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    /// Fewer bytes than a header or length field needs.
    #[error("truncated at {0}")]
    Truncated(&'static str),
    /// A handshake message that is not a ClientHello.
    #[error("not a ClientHello")]
    NotClientHello,
    /// The ClientHello declares a body larger than [`MAX_CLIENT_HELLO_LEN`].
    #[error("ClientHello too long: {0}")]
    TooLong(usize),
    /// A fragment lies outside the declared message length, or fragments disagree.
    #[error("inconsistent fragment")]
    BadFragment,
    /// The message is fragmented and not all fragments were seen yet.
    #[error("ClientHello incomplete")]
    Incomplete,
    /// A `use_srtp` profile list of odd length.
    #[error("malformed use_srtp extension")]
    BadUseSrtp,
}

/// Reassembles the first ClientHello (message_seq of the first fragment seen) from DTLS
/// records spread over datagrams. Memory is bounded by [`MAX_CLIENT_HELLO_LEN`].
#[derive(Default)]
pub struct ClientHelloAssembler {
    msg_seq: Option<u16>,
    body: Vec<u8>,
    filled: Vec<bool>,
    filled_count: usize,
}

const DTLS_RECORD_HEADER: usize = 13;
const DTLS_HANDSHAKE_HEADER: usize = 12;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_USE_SRTP: u16 = 14;

fn be16(b: &[u8], at: usize, what: &'static str) -> Result<u16, ClientHelloError> {
    match at.checked_add(2).and_then(|end| b.get(at..end)) {
        Some(&[x, y]) => Ok(u16::from_be_bytes([x, y])),
        _ => Err(ClientHelloError::Truncated(what)),
    }
}

fn be24(b: &[u8], at: usize, what: &'static str) -> Result<usize, ClientHelloError> {
    match at.checked_add(3).and_then(|end| b.get(at..end)) {
        Some(&[x, y, z]) => Ok(((x as usize) << 16) | ((y as usize) << 8) | z as usize),
        _ => Err(ClientHelloError::Truncated(what)),
    }
}

fn u8_at(b: &[u8], at: usize, what: &'static str) -> Result<usize, ClientHelloError> {
    b.get(at)
        .map(|&v| v as usize)
        .ok_or(ClientHelloError::Truncated(what))
}

fn slice<'b>(
    b: &'b [u8],
    at: usize,
    len: usize,
    what: &'static str,
) -> Result<&'b [u8], ClientHelloError> {
    at.checked_add(len)
        .and_then(|end| b.get(at..end))
        .ok_or(ClientHelloError::Truncated(what))
}

impl ClientHelloAssembler {
    /// Feed one datagram. Returns `Ok(Some(body))` once the ClientHello body is complete.
    pub fn push(&mut self, datagram: &[u8]) -> Result<Option<&[u8]>, ClientHelloError> {
        let mut rest = datagram;
        while !rest.is_empty() {
            if rest.len() < DTLS_RECORD_HEADER {
                return Err(ClientHelloError::Truncated("record header"));
            }
            let content = rest[0];
            let epoch = be16(rest, 3, "epoch")?;
            let rec_len = be16(rest, 11, "record length")? as usize;
            let rec = slice(rest, DTLS_RECORD_HEADER, rec_len, "record body")?;
            rest = &rest[DTLS_RECORD_HEADER + rec_len..];
            if content != CONTENT_HANDSHAKE || epoch != 0 {
                continue;
            }
            self.push_handshake(rec)?;
        }
        if self.msg_seq.is_some() && self.filled_count == self.body.len() {
            Ok(Some(&self.body))
        } else {
            Ok(None)
        }
    }

    fn push_handshake(&mut self, mut rec: &[u8]) -> Result<(), ClientHelloError> {
        while !rec.is_empty() {
            if rec.len() < DTLS_HANDSHAKE_HEADER {
                return Err(ClientHelloError::Truncated("handshake header"));
            }
            let msg_type = rec[0];
            let total = be24(rec, 1, "handshake length")?;
            let seq = be16(rec, 4, "message_seq")?;
            let off = be24(rec, 6, "fragment offset")?;
            let flen = be24(rec, 9, "fragment length")?;
            let frag = slice(rec, DTLS_HANDSHAKE_HEADER, flen, "fragment")?;
            rec = &rec[DTLS_HANDSHAKE_HEADER + flen..];
            if msg_type != HANDSHAKE_CLIENT_HELLO {
                return Err(ClientHelloError::NotClientHello);
            }
            if total > MAX_CLIENT_HELLO_LEN {
                return Err(ClientHelloError::TooLong(total));
            }
            match self.msg_seq {
                None => {
                    self.msg_seq = Some(seq);
                    self.body = vec![0; total];
                    self.filled = vec![false; total];
                    self.filled_count = 0;
                }
                Some(s) if s != seq => continue,
                Some(_) if self.body.len() != total => return Err(ClientHelloError::BadFragment),
                Some(_) => {}
            }
            let end = off.checked_add(flen).ok_or(ClientHelloError::BadFragment)?;
            let (Some(dst), Some(flags)) =
                (self.body.get_mut(off..end), self.filled.get_mut(off..end))
            else {
                return Err(ClientHelloError::BadFragment);
            };
            dst.copy_from_slice(frag);
            for f in flags.iter_mut().filter(|f| !**f) {
                *f = true;
                self.filled_count += 1;
            }
        }
        Ok(())
    }
}

/// Parse a complete ClientHello *body* (after the handshake header) and return the
/// `use_srtp` profile ids it offers, in the client's order (empty if it has no use_srtp).
pub fn client_hello_body_srtp_profiles(body: &[u8]) -> Result<Vec<u16>, ClientHelloError> {
    // client_version(2) random(32)
    let mut at = 34usize;
    at += 1 + u8_at(body, at, "session id")?;
    at += 1 + u8_at(body, at, "cookie")?;
    at += 2 + be16(body, at, "cipher suites")? as usize;
    at += 1 + u8_at(body, at, "compression")?;
    if at > body.len() {
        return Err(ClientHelloError::Truncated("compression methods"));
    }
    if at == body.len() {
        return Ok(Vec::new()); // no extensions
    }
    let ext_len = be16(body, at, "extensions length")? as usize;
    let exts = slice(body, at + 2, ext_len, "extensions")?;
    let mut p = 0usize;
    while p < exts.len() {
        let typ = be16(exts, p, "extension type")?;
        let len = be16(exts, p + 2, "extension length")? as usize;
        let data = slice(exts, p + 4, len, "extension data")?;
        p += 4 + len;
        if typ == EXT_USE_SRTP {
            let plen = be16(data, 0, "use_srtp profiles length")? as usize;
            if plen % 2 != 0 {
                return Err(ClientHelloError::BadUseSrtp);
            }
            let profiles = slice(data, 2, plen, "use_srtp profiles")?;
            return Ok(profiles
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect());
        }
    }
    Ok(Vec::new())
}

/// Parse one datagram holding a whole (unfragmented) ClientHello and return its `use_srtp`
/// profile ids in the client's order.
pub fn client_hello_srtp_profiles(datagram: &[u8]) -> Result<Vec<u16>, ClientHelloError> {
    let mut asm = ClientHelloAssembler::default();
    match asm.push(datagram)? {
        Some(body) => client_hello_body_srtp_profiles(body),
        None => Err(ClientHelloError::Incomplete),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built DTLS 1.2 ClientHello record with the given use_srtp profiles.
    fn client_hello(profiles: &[u16]) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // session id
        body.push(0); // cookie
        body.extend_from_slice(&[0, 2, 0xc0, 0x2b]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut exts = Vec::new();
        exts.extend_from_slice(&[0x00, 0x17, 0, 0]); // extended_master_secret, empty
        let mut srtp = Vec::new();
        srtp.extend_from_slice(&((profiles.len() * 2) as u16).to_be_bytes());
        for p in profiles {
            srtp.extend_from_slice(&p.to_be_bytes());
        }
        srtp.push(0); // mki
        exts.extend_from_slice(&EXT_USE_SRTP.to_be_bytes());
        exts.extend_from_slice(&(srtp.len() as u16).to_be_bytes());
        exts.extend_from_slice(&srtp);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        let l = body.len() as u32;
        hs.extend_from_slice(&l.to_be_bytes()[1..]);
        hs.extend_from_slice(&[0, 0]); // message_seq
        hs.extend_from_slice(&[0, 0, 0]); // offset
        hs.extend_from_slice(&l.to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn parses_use_srtp_in_client_order_and_prefers_gcm() {
        let ch = client_hello(&[1, 7, 8]);
        assert_eq!(client_hello_srtp_profiles(&ch).unwrap(), vec![1, 7, 8]);
        assert_eq!(choose_profile(&[1, 7, 8]), Some(PROFILE_AEAD_AES_128_GCM));
        assert_eq!(choose_profile(&[1]), Some(PROFILE_AES128_CM_HMAC_SHA1_80));
        assert_eq!(choose_profile(&[8, 2]), None);
        assert_eq!(choose_profile(&[]), None);
    }

    #[test]
    fn reassembles_fragmented_client_hello() {
        let ch = client_hello(&[1, 7]);
        let body = &ch[DTLS_RECORD_HEADER + DTLS_HANDSHAKE_HEADER..];
        let total = body.len();
        let split = total / 2;
        let frag = |off: usize, data: &[u8]| {
            let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
            hs.extend_from_slice(&(total as u32).to_be_bytes()[1..]);
            hs.extend_from_slice(&[0, 0]);
            hs.extend_from_slice(&(off as u32).to_be_bytes()[1..]);
            hs.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            hs.extend_from_slice(data);
            let mut rec = vec![CONTENT_HANDSHAKE, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
            rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
            rec.extend_from_slice(&hs);
            rec
        };
        let mut asm = ClientHelloAssembler::default();
        assert_eq!(asm.push(&frag(split, &body[split..])).unwrap(), None);
        let got = asm
            .push(&frag(0, &body[..split]))
            .unwrap()
            .unwrap()
            .to_vec();
        assert_eq!(client_hello_body_srtp_profiles(&got).unwrap(), vec![1, 7]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let ch = client_hello(&[7, 1]);
        for n in 0..ch.len() {
            assert!(
                client_hello_srtp_profiles(&ch[..n]).is_err(),
                "truncated to {n} bytes parsed"
            );
        }
        let body = &ch[DTLS_RECORD_HEADER + DTLS_HANDSHAKE_HEADER..];
        for n in 0..body.len() {
            // a truncated body either errors or (cut exactly before the extensions) has none
            match client_hello_body_srtp_profiles(&body[..n]) {
                Err(_) => {}
                Ok(p) => assert!(p.is_empty(), "truncated body {n} gave {p:?}"),
            }
        }
    }

    #[test]
    fn hostile_lengths_are_errors() {
        let mut ch = client_hello(&[7]);
        ch[DTLS_RECORD_HEADER + 1] = 0xff; // declared length beyond the cap
        assert!(matches!(
            client_hello_srtp_profiles(&ch),
            Err(ClientHelloError::TooLong(_))
        ));
        let mut ch = client_hello(&[7]);
        ch[DTLS_RECORD_HEADER + 8] = 0x40; // fragment offset past the end
        assert_eq!(
            client_hello_srtp_profiles(&ch),
            Err(ClientHelloError::BadFragment)
        );
        let mut ch = client_hello(&[7]);
        ch[DTLS_RECORD_HEADER] = 2; // ServerHello
        assert_eq!(
            client_hello_srtp_profiles(&ch),
            Err(ClientHelloError::NotClientHello)
        );
        let mut ch = client_hello(&[7]);
        let n = ch.len();
        ch[n - 4] = 3; // odd use_srtp list length
        assert!(client_hello_srtp_profiles(&ch).is_err());
        // huge offset + length must not overflow
        let mut ch = client_hello(&[7]);
        ch[DTLS_RECORD_HEADER + 6..DTLS_RECORD_HEADER + 9].copy_from_slice(&[0xff; 3]);
        assert!(client_hello_srtp_profiles(&ch).is_err());
    }

    #[test]
    fn fingerprints_parse_and_compare() {
        let fp = fingerprint_der(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("BA:78:16:BF"));
        let e = ExpectedFingerprint::parse(&format!("sha-256 {}", fp.to_lowercase())).unwrap();
        assert_eq!(e.hex, fp);
        assert_eq!(e.digest_of(b"abc"), fp);
        let bare = ExpectedFingerprint::parse(&fp).unwrap();
        assert_eq!(bare.hex, fp);
        assert_eq!(bare.original, fp);
        // sha-1 of "abc" = A9993E36...
        let sha1 = hex_colon(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b"abc").as_ref(),
        );
        assert!(sha1.starts_with("A9:99:3E:36"));
        let e1 = ExpectedFingerprint::parse(&format!("SHA-1 {sha1}")).unwrap();
        assert_eq!(e1.digest_of(b"abc"), sha1);
        for bad in [
            "",
            "md5 AB:CD",
            "sha-256 AB:CD",
            "sha-256",
            &fp[..fp.len() - 1],
            &fp.replace(':', ""),
            &format!("{}:GG", &fp[..fp.len() - 3]),
        ] {
            assert!(ExpectedFingerprint::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn key_split_follows_rfc5764() {
        let km: Vec<u8> = (0..56).collect();
        let k = split_keying_material(PROFILE_AEAD_AES_128_GCM, &km, 16, 12).unwrap();
        assert_eq!(k.client_key, (0..16).collect::<Vec<u8>>());
        assert_eq!(k.server_key, (16..32).collect::<Vec<u8>>());
        assert_eq!(k.client_salt, (32..44).collect::<Vec<u8>>());
        assert_eq!(k.server_salt, (44..56).collect::<Vec<u8>>());
        assert!(split_keying_material(7, &km[..55], 16, 12).is_none());
        assert_eq!(
            profile_key_salt_len(PROFILE_AES128_CM_HMAC_SHA1_80),
            Some((16, 14))
        );
        assert_eq!(
            profile_key_salt_len(PROFILE_AEAD_AES_128_GCM),
            Some((16, 12))
        );
        assert_eq!(profile_key_salt_len(0x0008), None);
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ils-dtls-test-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn certificate_persists_with_0600_and_same_fingerprint() {
        let dir = temp_dir("persist");
        let a = WebrtcDtls::load_or_create(&dir).unwrap();
        let path = dir.join(CERT_FILE_NAME);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            a.certificate().private_key.kind,
            CryptoPrivateKeyKind::Ecdsa256(_)
        ));
        let b = WebrtcDtls::load_or_create(&dir).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 32 * 3 - 1);
        assert_ne!(a.fingerprint(), WebrtcDtls::ephemeral().fingerprint());
        // a too-open file is tightened, not refused
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = WebrtcDtls::load_or_create(&dir).unwrap();
        assert_eq!(c.fingerprint(), a.fingerprint());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_certificate_file_is_an_error_not_replaced() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CERT_FILE_NAME);
        let cases: Vec<Vec<u8>> = vec![
            b"garbage".to_vec(),
            Vec::new(),
            // key and certificate from two different certificates
            {
                let a = generate_certificate().unwrap();
                let b = generate_certificate().unwrap();
                let mut mixed = a.clone();
                mixed.certificate = b.certificate.clone();
                certificate_to_pem(&mixed).into_bytes()
            },
            // certificate only
            {
                let a = generate_certificate().unwrap();
                pem::encode(&pem::Pem::new(
                    PEM_CERT_TAG,
                    a.certificate[0].as_ref().to_vec(),
                ))
                .into_bytes()
            },
            // truncated PEM
            {
                let a = certificate_to_pem(&generate_certificate().unwrap());
                a.as_bytes()[..a.len() / 2].to_vec()
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            std::fs::write(&path, c).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(WebrtcDtls::load_or_create(&dir).is_err(), "case {i} loaded");
            assert_eq!(&std::fs::read(&path).unwrap(), c, "case {i} file replaced");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pem_round_trip() {
        let a = generate_certificate().unwrap();
        let b = certificate_from_pem(&certificate_to_pem(&a)).unwrap();
        assert_eq!(a, b);
        assert_eq!(fingerprint_of(&a), fingerprint_of(&b));
    }

    // ----- handshakes against an independent webrtc-dtls client -----

    /// Connect a webrtc-dtls client (offering `profiles`) to `driver.accept` through channels;
    /// returns (server result, client result).
    async fn run_pair(
        driver: &WebrtcDtls,
        client_cert: Certificate,
        profiles: &[u16],
        expected: String,
    ) -> (
        Result<SrtpKeys, DtlsFailure>,
        Result<(DTLSConn, Vec<u8>), String>,
    ) {
        let (c2s_tx, c2s_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (s2c_tx, s2c_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let addr = placeholder_addr(1);
        let client_conn: Arc<dyn Conn + Send + Sync> =
            Arc::new(ChannelConn::new(s2c_rx, c2s_tx, addr, addr));
        let server_fp = driver.fingerprint();
        let profiles: Vec<SrtpProtectionProfile> = profiles
            .iter()
            .map(|p| SrtpProtectionProfile::from(*p))
            .collect();
        let client = tokio::spawn(async move {
            let config = Config {
                certificates: vec![client_cert],
                srtp_protection_profiles: profiles,
                extended_master_secret: ExtendedMasterSecretType::Require,
                insecure_skip_verify: true,
                verify_peer_certificate: Some(Arc::new(move |certs: &[Vec<u8>], _| {
                    match certs.first() {
                        Some(c) if fingerprint_der(c) == server_fp => Ok(()),
                        _ => Err(webrtc_dtls::Error::Other("server fingerprint".into())),
                    }
                })),
                ..Default::default()
            };
            let conn = tokio::time::timeout(
                Duration::from_secs(5),
                DTLSConn::new(client_conn, config, true, None),
            )
            .await
            .map_err(|_| "client timeout".to_string())?
            .map_err(|e| e.to_string())?;
            let profile = conn.selected_srtpprotection_profile() as u16;
            let (kl, sl) = profile_key_salt_len(profile).ok_or("profile")?;
            let km = conn
                .connection_state()
                .await
                .export_keying_material(SRTP_EXPORTER_LABEL, &[], 2 * (kl + sl))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, km))
        });
        let server = driver.accept(c2s_rx, s2c_tx, expected).await;
        let client = match client.await {
            Ok(r) => r,
            Err(e) => Err(e.to_string()),
        };
        (server, client)
    }

    #[tokio::test]
    async fn handshake_exports_matching_keys_and_prefers_gcm() {
        let driver = WebrtcDtls::ephemeral();
        let ccert = generate_certificate().unwrap();
        let cfp = format!("sha-256 {}", fingerprint_of(&ccert).to_lowercase());
        // client lists CM first: our preference (GCM) must still win
        let (s, c) = run_pair(
            &driver,
            ccert,
            &[PROFILE_AES128_CM_HMAC_SHA1_80, PROFILE_AEAD_AES_128_GCM],
            cfp,
        )
        .await;
        let keys = s.unwrap();
        let (_conn, km) = c.unwrap();
        assert_eq!(keys.profile, PROFILE_AEAD_AES_128_GCM);
        let from_client = split_keying_material(keys.profile, &km, 16, 12).unwrap();
        assert_eq!(keys, from_client);
        assert_ne!(keys.client_key, keys.server_key);
    }

    #[tokio::test]
    async fn handshake_falls_back_to_cm() {
        let driver = WebrtcDtls::ephemeral();
        let ccert = generate_certificate().unwrap();
        let cfp = fingerprint_of(&ccert);
        let (s, c) = run_pair(&driver, ccert, &[PROFILE_AES128_CM_HMAC_SHA1_80], cfp).await;
        let keys = s.unwrap();
        let (_conn, km) = c.unwrap();
        assert_eq!(keys.profile, PROFILE_AES128_CM_HMAC_SHA1_80);
        assert_eq!(keys.client_key.len(), 16);
        assert_eq!(keys.client_salt.len(), 14);
        assert_eq!(Some(keys), split_keying_material(1, &km, 16, 14));
    }

    #[tokio::test]
    async fn wrong_fingerprint_gives_no_keys() {
        let driver = WebrtcDtls::ephemeral();
        let ccert = generate_certificate().unwrap();
        let wrong = fingerprint_of(&generate_certificate().unwrap());
        let (s, c) = run_pair(&driver, ccert, &[PROFILE_AEAD_AES_128_GCM], wrong.clone()).await;
        match s {
            Err(DtlsFailure::FingerprintMismatch { expected, got }) => {
                assert_eq!(expected, wrong);
                assert_ne!(got, wrong);
            }
            other => panic!("expected FingerprintMismatch, got {other:?}"),
        }
        assert!(c.is_err(), "client must not complete either");
    }

    #[tokio::test]
    async fn no_common_profile_is_refused_early() {
        let driver = WebrtcDtls::ephemeral();
        let ccert = generate_certificate().unwrap();
        let cfp = fingerprint_of(&ccert);
        // SRTP_AEAD_AES_256_GCM only (0x0008): not in our list
        let (s, _c) = run_pair(&driver, ccert, &[0x0008], cfp).await;
        assert!(matches!(s, Err(DtlsFailure::NoSrtpProfile)), "{s:?}");
    }

    #[tokio::test]
    async fn unusable_expected_fingerprint_is_refused() {
        let driver = WebrtcDtls::ephemeral();
        let (_tx, rx) = mpsc::channel(1);
        let (otx, _orx) = mpsc::channel(1);
        let r = driver.accept(rx, otx, "md5 00:11".into()).await;
        assert!(matches!(r, Err(DtlsFailure::Handshake(_))), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out() {
        let driver = WebrtcDtls::ephemeral();
        let (_tx, rx) = mpsc::channel(1);
        let (otx, _orx) = mpsc::channel(1);
        let fp = fingerprint_of(&generate_certificate().unwrap());
        let r = driver.accept(rx, otx, fp).await;
        assert!(matches!(r, Err(DtlsFailure::Timeout)), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_records_do_not_complete() {
        let driver = WebrtcDtls::ephemeral();
        let (tx, rx) = mpsc::channel(16);
        let (otx, _orx) = mpsc::channel(16);
        let fp = fingerprint_of(&generate_certificate().unwrap());
        for d in [
            vec![22u8; 5],
            vec![0xff; 40],
            client_hello(&[7])[..30].to_vec(),
        ] {
            tx.send(d).await.unwrap();
        }
        let r = driver.accept(rx, otx, fp).await;
        assert!(r.is_err(), "{r:?}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = client_hello_srtp_profiles(&data);
            let _ = client_hello_body_srtp_profiles(&data);
            let mut asm = ClientHelloAssembler::default();
            let _ = asm.push(&data);
            let _ = asm.push(&data);
            let _ = ExpectedFingerprint::parse(&String::from_utf8_lossy(&data));
        }

        #[test]
        fn mutated_client_hello_never_panics(idx in 0usize..200, val in proptest::num::u8::ANY) {
            let mut ch = client_hello(&[1, 7]);
            let i = idx % ch.len();
            ch[i] = val;
            let _ = client_hello_srtp_profiles(&ch);
        }
    }
}
