//! DTLS-SRTP over in-process channels, built only from webrtc-rs crates (not our own code).
//!
//! * [`ChannelConn`]: a [`webrtc_util::conn::Conn`] whose inbound datagrams come from a tokio
//!   mpsc channel and whose outbound datagrams go into another one. The test "control" plane
//!   feeds it the DTLS datagrams the engine hands over shared memory and ships what it emits back.
//! * [`dtls_server`]: a webrtc-dtls 1.2 server (extended master secret required, SRTP profiles
//!   AEAD_AES_128_GCM then AES128_CM_HMAC_SHA1_80 in *server* preference order) that returns the
//!   RFC 5764 SRTP keys, checking the client certificate's SHA-256 fingerprint.
//! * [`generate_cert`] / [`fingerprint`]: self-signed ECDSA P-256 certificates and their
//!   "AB:CD:..." SDP fingerprint.
//!
//! webrtc-dtls itself picks the SRTP profile in the *client's* order. To honour our preference
//! we look at the ClientHello first (see [`client_hello_srtp_profiles`]), then configure the
//! server with only the best profile the client offers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Mutex};
use webrtc_dtls::config::{ClientAuthType, Config, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;
use webrtc_util::conn::Conn;
use webrtc_util::KeyingMaterialExporter;

/// Capacity (datagrams) of each direction of a [`ChannelConn`] made by [`ChannelConn::pair`].
/// Default 256; bounds memory held by a stalled reader to 256 × the largest datagram
/// (≈ 256 × 1500 B ≈ 384 KiB per direction in practice, 256 × 64 KiB worst case).
pub const CHANNEL_CAPACITY: usize = 256;

/// How long [`dtls_server`] waits for the whole handshake (including the first ClientHello).
/// Default 10 s; bounds a test that would otherwise hang on a silent or stuck client.
pub const DTLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most datagrams [`dtls_server`] buffers while it reassembles a fragmented first ClientHello
/// before it gives up choosing the profile itself. Default 8; bounds the peeked memory to
/// 8 datagrams.
pub const MAX_PEEK_DATAGRAMS: usize = 8;

/// Largest ClientHello body (bytes) that is reassembled for the SRTP preference peek.
/// Default 16 KiB (Chromium's post-quantum DTLS 1.3 ClientHello is ≈ 1.4 KB); a larger
/// declared length is refused by the peek (the handshake itself still proceeds).
pub const MAX_CLIENT_HELLO_LEN: usize = 16 * 1024;

/// RFC 5764 §4.2 exporter label for DTLS-SRTP keying material.
pub const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// `use_srtp` id of SRTP_AES128_CM_HMAC_SHA1_80 (RFC 5764).
pub const PROFILE_AES128_CM_HMAC_SHA1_80: u16 = 0x0001;
/// `use_srtp` id of SRTP_AEAD_AES_128_GCM (RFC 7714).
pub const PROFILE_AEAD_AES_128_GCM: u16 = 0x0007;

/// SRTP profiles the server accepts, most preferred first.
pub const SERVER_PROFILE_PREFERENCE: [u16; 2] =
    [PROFILE_AEAD_AES_128_GCM, PROFILE_AES128_CM_HMAC_SHA1_80];

/// A datagram [`Conn`] over two tokio mpsc channels.
///
/// `recv` yields the next inbound datagram (truncating to the caller's buffer, as UDP does);
/// `send` pushes a copy into the outbound channel. Once the inbound channel is closed, `recv`
/// waits forever (webrtc-dtls' reader loop would spin on a repeated error) until
/// [`Conn::close`] is called, after which it returns an error.
pub struct ChannelConn {
    inbound: Mutex<mpsc::Receiver<Vec<u8>>>,
    outbound: mpsc::Sender<Vec<u8>>,
    local: SocketAddr,
    remote: SocketAddr,
    closed: tokio::sync::watch::Sender<bool>,
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
        let (closed, _) = tokio::sync::watch::channel(false);
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
async fn wait_closed(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await.map(|_| ());
}

/// A placeholder address for conns that have no real socket.
pub fn placeholder_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
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
                Some(d) => {
                    let n = d.len().min(buf.len());
                    buf[..n].copy_from_slice(&d[..n]);
                    Ok(n)
                }
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

/// A conn that replays some already-read datagrams before reading `inner` again.
struct ReplayConn {
    pending: Mutex<std::collections::VecDeque<Vec<u8>>>,
    inner: Arc<dyn Conn + Send + Sync>,
}

#[async_trait]
impl Conn for ReplayConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        if let Some(d) = self.pending.lock().await.pop_front() {
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            return Ok(n);
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

/// Result of a completed DTLS-SRTP handshake: the negotiated profile and the RFC 5764 §4.2
/// split of the exported keying material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DtlsOutcome {
    /// `use_srtp` profile id ([`PROFILE_AEAD_AES_128_GCM`] or [`PROFILE_AES128_CM_HMAC_SHA1_80`]).
    pub profile_id: u16,
    /// client_write_SRTP_master_key.
    pub client_key: Vec<u8>,
    /// client_write_SRTP_master_salt.
    pub client_salt: Vec<u8>,
    /// server_write_SRTP_master_key.
    pub server_key: Vec<u8>,
    /// server_write_SRTP_master_salt.
    pub server_salt: Vec<u8>,
    /// SHA-256 fingerprint ("AB:CD:...") of the remote end's leaf certificate.
    pub remote_fingerprint: String,
}

impl DtlsOutcome {
    /// The webrtc-srtp profile matching `profile_id`.
    pub fn srtp_profile(&self) -> anyhow::Result<ProtectionProfile> {
        srtp_profile_from_id(self.profile_id)
    }

    /// webrtc-srtp contexts for the server side: `(encrypt with server keys, decrypt with
    /// client keys)`. The decrypt context has a 64-packet replay window.
    pub fn server_contexts(&self) -> anyhow::Result<(Context, Context)> {
        let p = self.srtp_profile()?;
        let local = Context::new(&self.server_key, &self.server_salt, p, None, None)?;
        let remote = Context::new(
            &self.client_key,
            &self.client_salt,
            p,
            Some(webrtc_srtp::option::srtp_replay_protection(64)),
            Some(webrtc_srtp::option::srtcp_replay_protection(64)),
        )?;
        Ok((local, remote))
    }

    /// webrtc-srtp contexts for the client side: `(encrypt with client keys, decrypt with
    /// server keys)`. The decrypt context has a 64-packet replay window.
    pub fn client_contexts(&self) -> anyhow::Result<(Context, Context)> {
        let p = self.srtp_profile()?;
        let local = Context::new(&self.client_key, &self.client_salt, p, None, None)?;
        let remote = Context::new(
            &self.server_key,
            &self.server_salt,
            p,
            Some(webrtc_srtp::option::srtp_replay_protection(64)),
            Some(webrtc_srtp::option::srtcp_replay_protection(64)),
        )?;
        Ok((local, remote))
    }
}

/// Why a DTLS handshake helper failed.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    /// The remote presented no certificate.
    #[error("remote presented no certificate")]
    NoRemoteCertificate,
    /// The remote certificate's fingerprint is not the one signalled.
    #[error("remote certificate fingerprint {got} does not match expected {expected}")]
    FingerprintMismatch {
        /// Fingerprint announced out of band.
        expected: String,
        /// Fingerprint of the certificate actually presented.
        got: String,
    },
    /// The handshake did not finish within [`DTLS_HANDSHAKE_TIMEOUT`].
    #[error("DTLS handshake timed out")]
    Timeout,
    /// The negotiated SRTP profile is not one we support.
    #[error("unsupported SRTP protection profile {0:#06x}")]
    UnsupportedProfile(u16),
    /// The keying-material exporter failed.
    #[error("keying material export failed: {0}")]
    Export(String),
}

/// Map a `use_srtp` id to webrtc-srtp's profile.
pub fn srtp_profile_from_id(id: u16) -> anyhow::Result<ProtectionProfile> {
    match id {
        PROFILE_AEAD_AES_128_GCM => Ok(ProtectionProfile::AeadAes128Gcm),
        PROFILE_AES128_CM_HMAC_SHA1_80 => Ok(ProtectionProfile::Aes128CmHmacSha1_80),
        other => Err(DtlsError::UnsupportedProfile(other).into()),
    }
}

fn dtls_profile_from_id(id: u16) -> SrtpProtectionProfile {
    SrtpProtectionProfile::from(id)
}

/// A fresh self-signed ECDSA P-256 certificate (rcgen's default algorithm via webrtc-dtls).
///
/// # Panics
/// Only if the system RNG / key generation fails, which is not input-dependent.
pub fn generate_cert() -> Certificate {
    // INVARIANT: rcgen's simple self-signed ECDSA P-256 generation depends only on the
    // system RNG; webrtc-dtls accepts the key kind it produces.
    Certificate::generate_self_signed(vec!["ils-test".to_owned()])
        .expect("self-signed P-256 certificate generation")
}

/// SHA-256 fingerprint of DER bytes, as uppercase hex pairs separated by ':' (SDP a=fingerprint).
pub fn fingerprint_der(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut s = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// SHA-256 fingerprint ("AB:CD:...") of a certificate's leaf; empty string if it has none.
pub fn fingerprint(cert: &Certificate) -> String {
    cert.certificate
        .first()
        .map(|der| fingerprint_der(der.as_ref()))
        .unwrap_or_default()
}

/// Normalise a fingerprint for comparison (case, optional "sha-256 " prefix, whitespace).
fn normalise_fingerprint(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("sha-256 ")
        .or_else(|| s.strip_prefix("SHA-256 "))
        .unwrap_or(s);
    s.trim().to_ascii_uppercase()
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

/// Build the peer-certificate check used by both ends: fingerprint of the leaf must equal
/// `expected` (when given).
fn verify_fingerprint_fn(expected: Option<String>) -> VerifyPeerFn {
    Arc::new(move |certs: &[Vec<u8>], _| {
        let Some(leaf) = certs.first() else {
            return Err(webrtc_dtls::Error::Other(
                DtlsError::NoRemoteCertificate.to_string(),
            ));
        };
        if let Some(exp) = &expected {
            let got = fingerprint_der(leaf);
            if normalise_fingerprint(exp) != got {
                return Err(webrtc_dtls::Error::Other(
                    DtlsError::FingerprintMismatch {
                        expected: exp.clone(),
                        got,
                    }
                    .to_string(),
                ));
            }
        }
        Ok(())
    })
}

/// Export the RFC 5764 keys from a finished DTLS connection.
pub async fn export_srtp_keys(
    conn: &DTLSConn,
    expected_remote_fingerprint: Option<&str>,
) -> anyhow::Result<DtlsOutcome> {
    let profile_id = conn.selected_srtpprotection_profile() as u16;
    let profile = srtp_profile_from_id(profile_id)?;
    let state = conn.connection_state().await;
    let leaf = state
        .peer_certificates
        .first()
        .ok_or(DtlsError::NoRemoteCertificate)?;
    let remote_fingerprint = fingerprint_der(leaf);
    if let Some(exp) = expected_remote_fingerprint {
        if normalise_fingerprint(exp) != remote_fingerprint {
            return Err(DtlsError::FingerprintMismatch {
                expected: exp.to_owned(),
                got: remote_fingerprint,
            }
            .into());
        }
    }
    let (kl, sl) = (profile.key_len(), profile.salt_len());
    let km = state
        .export_keying_material(SRTP_EXPORTER_LABEL, &[], 2 * (kl + sl))
        .await
        .map_err(|e| DtlsError::Export(e.to_string()))?;
    if km.len() != 2 * (kl + sl) {
        return Err(DtlsError::Export(format!("got {} bytes", km.len())).into());
    }
    // RFC 5764 §4.2: client key | server key | client salt | server salt.
    let (client_key, rest) = km.split_at(kl);
    let (server_key, rest) = rest.split_at(kl);
    let (client_salt, server_salt) = rest.split_at(sl);
    Ok(DtlsOutcome {
        profile_id,
        client_key: client_key.to_vec(),
        client_salt: client_salt.to_vec(),
        server_key: server_key.to_vec(),
        server_salt: server_salt.to_vec(),
        remote_fingerprint,
    })
}

/// Why the ClientHello `use_srtp` peek could not read a profile list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    /// Fewer bytes than a header or length field needs.
    #[error("truncated at {0}")]
    Truncated(&'static str),
    /// Not a handshake record / not a ClientHello message.
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
/// records spread over datagrams.
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
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(ClientHelloError::Truncated(what)),
    }
}

fn be24(b: &[u8], at: usize, what: &'static str) -> Result<usize, ClientHelloError> {
    match b.get(at..at + 3) {
        Some(s) => Ok(((s[0] as usize) << 16) | ((s[1] as usize) << 8) | s[2] as usize),
        None => Err(ClientHelloError::Truncated(what)),
    }
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
            let rec = rest
                .get(DTLS_RECORD_HEADER..DTLS_RECORD_HEADER + rec_len)
                .ok_or(ClientHelloError::Truncated("record body"))?;
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
            let frag = rec
                .get(DTLS_HANDSHAKE_HEADER..DTLS_HANDSHAKE_HEADER + flen)
                .ok_or(ClientHelloError::Truncated("fragment"))?;
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
            if end > total {
                return Err(ClientHelloError::BadFragment);
            }
            for i in off..end {
                if !self.filled[i] {
                    self.filled[i] = true;
                    self.filled_count += 1;
                }
            }
            self.body[off..end].copy_from_slice(frag);
        }
        Ok(())
    }
}

/// Parse a complete ClientHello *body* (after the handshake header) and return the
/// `use_srtp` profile ids it offers, in the client's order (empty if it has no use_srtp).
pub fn client_hello_body_srtp_profiles(body: &[u8]) -> Result<Vec<u16>, ClientHelloError> {
    // client_version(2) random(32)
    let mut at = 34usize;
    let sid_len = *body
        .get(at)
        .ok_or(ClientHelloError::Truncated("session id"))? as usize;
    at += 1 + sid_len;
    let cookie_len = *body.get(at).ok_or(ClientHelloError::Truncated("cookie"))? as usize;
    at += 1 + cookie_len;
    let cs_len = be16(body, at, "cipher suites")? as usize;
    at += 2 + cs_len;
    let comp_len = *body
        .get(at)
        .ok_or(ClientHelloError::Truncated("compression"))? as usize;
    at += 1 + comp_len;
    if at > body.len() {
        return Err(ClientHelloError::Truncated("compression methods"));
    }
    if at == body.len() {
        return Ok(Vec::new()); // no extensions
    }
    let ext_len = be16(body, at, "extensions length")? as usize;
    at += 2;
    let exts = body
        .get(at..at + ext_len)
        .ok_or(ClientHelloError::Truncated("extensions"))?;
    let mut p = 0usize;
    while p < exts.len() {
        let typ = be16(exts, p, "extension type")?;
        let len = be16(exts, p + 2, "extension length")? as usize;
        let data = exts
            .get(p + 4..p + 4 + len)
            .ok_or(ClientHelloError::Truncated("extension data"))?;
        p += 4 + len;
        if typ == EXT_USE_SRTP {
            let plen = be16(data, 0, "use_srtp profiles length")? as usize;
            if plen % 2 != 0 {
                return Err(ClientHelloError::BadUseSrtp);
            }
            let profiles = data
                .get(2..2 + plen)
                .ok_or(ClientHelloError::Truncated("use_srtp profiles"))?;
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

/// The profile the server should pick: the first of [`SERVER_PROFILE_PREFERENCE`] the
/// client offers.
pub fn choose_profile(offered: &[u16]) -> Option<u16> {
    SERVER_PROFILE_PREFERENCE
        .iter()
        .copied()
        .find(|p| offered.contains(p))
}

/// Read datagrams until the first ClientHello is complete (or the peek gives up) and
/// return them for replay together with the profile we prefer among those offered.
async fn peek_client_hello(
    conn: &Arc<dyn Conn + Send + Sync>,
) -> anyhow::Result<(Vec<Vec<u8>>, Option<u16>)> {
    let mut seen = Vec::new();
    let mut asm = ClientHelloAssembler::default();
    let mut buf = vec![0u8; 65536];
    while seen.len() < MAX_PEEK_DATAGRAMS {
        let n = conn.recv(&mut buf).await?;
        let d = buf[..n].to_vec();
        let r = asm.push(&d);
        seen.push(d);
        match r {
            Ok(Some(body)) => {
                let choice = client_hello_body_srtp_profiles(body)
                    .ok()
                    .and_then(|o| choose_profile(&o));
                return Ok((seen, choice));
            }
            Ok(None) => continue,
            Err(_) => return Ok((seen, None)),
        }
    }
    Ok((seen, None))
}

/// The DTLS config shared by our server and the test clients.
pub fn base_config(cert: &Certificate, expected_remote_fingerprint: Option<String>) -> Config {
    Config {
        certificates: vec![cert.clone()],
        srtp_protection_profiles: SERVER_PROFILE_PREFERENCE
            .iter()
            .map(|p| dtls_profile_from_id(*p))
            .collect(),
        extended_master_secret: ExtendedMasterSecretType::Require,
        // Self-signed certificates: identity is the SDP fingerprint, checked below.
        insecure_skip_verify: true,
        verify_peer_certificate: Some(verify_fingerprint_fn(expected_remote_fingerprint)),
        ..Default::default()
    }
}

/// Run a webrtc-dtls *server* over `conn` and return the SRTP keys.
///
/// DTLS 1.2, extended master secret required, a client certificate required; SRTP profile
/// chosen in our preference order ([`SERVER_PROFILE_PREFERENCE`]). Fails (no keys) if the
/// client certificate's SHA-256 fingerprint differs from `expected_remote_fingerprint`, or
/// after [`DTLS_HANDSHAKE_TIMEOUT`].
pub async fn dtls_server(
    conn: Arc<dyn Conn + Send + Sync>,
    cert: &Certificate,
    expected_remote_fingerprint: Option<String>,
) -> anyhow::Result<DtlsOutcome> {
    let (outcome, _conn) = dtls_server_conn(conn, cert, expected_remote_fingerprint).await?;
    Ok(outcome)
}

/// Like [`dtls_server`], also returning the live DTLS connection (to close it, or to keep
/// answering retransmitted flights). webrtc-dtls keeps its reader running after the
/// `DTLSConn` is dropped, so dropping it is harmless.
pub async fn dtls_server_conn(
    conn: Arc<dyn Conn + Send + Sync>,
    cert: &Certificate,
    expected_remote_fingerprint: Option<String>,
) -> anyhow::Result<(DtlsOutcome, Arc<DTLSConn>)> {
    let fut = async {
        let (seen, choice) = peek_client_hello(&conn).await?;
        let replay: Arc<dyn Conn + Send + Sync> = Arc::new(ReplayConn {
            pending: Mutex::new(seen.into()),
            inner: conn.clone(),
        });
        let mut config = base_config(cert, expected_remote_fingerprint.clone());
        config.client_auth = ClientAuthType::RequireAnyClientCert;
        if let Some(p) = choice {
            config.srtp_protection_profiles = vec![dtls_profile_from_id(p)];
        }
        let dtls = DTLSConn::new(replay, config, false, None).await?;
        let outcome = export_srtp_keys(&dtls, expected_remote_fingerprint.as_deref()).await?;
        anyhow::Ok((outcome, Arc::new(dtls)))
    };
    match tokio::time::timeout(DTLS_HANDSHAKE_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(DtlsError::Timeout.into()),
    }
}

/// Run a webrtc-dtls *client* over `conn` (used by the test peer and the self-tests):
/// offers `profiles` (ids, client order), requires extended master secret, checks the
/// server fingerprint when given.
pub async fn dtls_client_conn(
    conn: Arc<dyn Conn + Send + Sync>,
    cert: &Certificate,
    profiles: &[u16],
    expected_remote_fingerprint: Option<String>,
) -> anyhow::Result<(DtlsOutcome, Arc<DTLSConn>)> {
    let fut = async {
        let mut config = base_config(cert, expected_remote_fingerprint.clone());
        config.srtp_protection_profiles =
            profiles.iter().map(|p| dtls_profile_from_id(*p)).collect();
        let dtls = DTLSConn::new(conn, config, true, None).await?;
        let outcome = export_srtp_keys(&dtls, expected_remote_fingerprint.as_deref()).await?;
        anyhow::Ok((outcome, Arc::new(dtls)))
    };
    match tokio::time::timeout(DTLS_HANDSHAKE_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(DtlsError::Timeout.into()),
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
        // an unrelated extension first (extended_master_secret, empty)
        exts.extend_from_slice(&[0x00, 0x17, 0, 0]);
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
    fn parses_use_srtp_in_client_order() {
        let ch = client_hello(&[1, 7, 8]);
        assert_eq!(client_hello_srtp_profiles(&ch).unwrap(), vec![1, 7, 8]);
        assert_eq!(choose_profile(&[1, 7, 8]), Some(PROFILE_AEAD_AES_128_GCM));
        assert_eq!(choose_profile(&[1]), Some(PROFILE_AES128_CM_HMAC_SHA1_80));
        assert_eq!(choose_profile(&[8]), None);
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
        // second half first: still incomplete
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
    }

    #[test]
    fn hostile_lengths_are_errors() {
        let mut ch = client_hello(&[7]);
        // declared handshake length beyond the cap
        ch[DTLS_RECORD_HEADER + 1] = 0xff;
        assert!(matches!(
            client_hello_srtp_profiles(&ch),
            Err(ClientHelloError::TooLong(_))
        ));
        // fragment beyond declared length
        let mut ch = client_hello(&[7]);
        ch[DTLS_RECORD_HEADER + 8] = 0x40; // fragment offset
        assert!(client_hello_srtp_profiles(&ch).is_err());
        // not a client hello
        let mut ch = client_hello(&[7]);
        ch[DTLS_RECORD_HEADER] = 2;
        assert_eq!(
            client_hello_srtp_profiles(&ch),
            Err(ClientHelloError::NotClientHello)
        );
    }

    #[test]
    fn fingerprint_format() {
        let fp = fingerprint_der(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("BA:78:16:BF"));
        let cert = generate_cert();
        assert_eq!(fingerprint(&cert), fingerprint(&cert.clone()));
        assert_ne!(fingerprint(&cert), fingerprint(&generate_cert()));
        assert_eq!(
            normalise_fingerprint(&format!("sha-256 {}", fp.to_lowercase())),
            fp
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = client_hello_srtp_profiles(&data);
            let _ = client_hello_body_srtp_profiles(&data);
            let mut asm = ClientHelloAssembler::default();
            let _ = asm.push(&data);
            let _ = asm.push(&data);
        }
    }
}
