//! DTLS-SRTP over in-process channels.
//!
//! * [`ChannelConn`]: a [`webrtc_util::conn::Conn`] whose inbound datagrams come from a tokio
//!   mpsc channel and whose outbound datagrams go into another one. The test peers use it for
//!   their DTLS *client*; it is deliberately this crate's own copy (the peer must not share code
//!   with ils).
//! * [`dtls_client_conn`]: the peer's webrtc-dtls 1.2 client, built only from webrtc-rs crates.
//! * [`dtls_server`] / [`dtls_server_conn`]: the **server is control's**
//!   ([`ils_control::dtls::server_handshake`], the code ils-control runs for browsers: our SRTP
//!   profile preference, fingerprint check, RFC 5764 export), so every test that connects a peer
//!   also tests control's DTLS server against an independent client.
//! * [`generate_cert`] / [`fingerprint`]: self-signed ECDSA P-256 certificates and their
//!   "AB:CD:..." SDP fingerprint (computed here with `sha2`, independently of control's `ring`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use webrtc_dtls::config::{Config, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;
use webrtc_util::conn::Conn;
use webrtc_util::KeyingMaterialExporter;

/// How long [`dtls_client_conn`] waits for the whole handshake. Default 10 s; bounds a test
/// that would otherwise hang on a silent or stuck server. (The server side uses control's
/// `ils_control::dtls::DTLS_HANDSHAKE_TIMEOUT`.)
pub const DTLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// RFC 5764 §4.2 exporter label for DTLS-SRTP keying material.
pub const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// `use_srtp` id of SRTP_AES128_CM_HMAC_SHA1_80 (RFC 5764).
pub const PROFILE_AES128_CM_HMAC_SHA1_80: u16 = 0x0001;
/// `use_srtp` id of SRTP_AEAD_AES_128_GCM (RFC 7714).
pub const PROFILE_AEAD_AES_128_GCM: u16 = 0x0007;

/// SRTP profiles the server accepts, most preferred first (control's list).
pub const SERVER_PROFILE_PREFERENCE: [u16; 2] = ils_control::dtls::SERVER_PROFILE_PREFERENCE;

/// The datagram [`Conn`] over channels is control's (one implementation for the server and
/// the test peers' DTLS clients).
pub use ils_control::dtls::{ChannelConn, ChannelEnds, CHANNEL_CAPACITY};

/// A placeholder address for conns that have no real socket.
pub fn placeholder_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
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
    /// An outcome from control's [`ils_control::dtls::SrtpKeys`] and the (verified) remote
    /// fingerprint.
    pub fn from_keys(k: ils_control::dtls::SrtpKeys, remote_fingerprint: String) -> Self {
        Self {
            profile_id: k.profile,
            client_key: k.client_key,
            client_salt: k.client_salt,
            server_key: k.server_key,
            server_salt: k.server_salt,
            remote_fingerprint,
        }
    }

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

/// The DTLS config of the test clients (profiles overridden per client).
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

/// Run control's DTLS server ([`ils_control::dtls::server_handshake`]) over `conn` and return
/// the SRTP keys.
///
/// DTLS 1.2, extended master secret required, a client certificate required; SRTP profile
/// chosen in control's preference order ([`SERVER_PROFILE_PREFERENCE`]). Fails (no keys) if
/// the client certificate's SHA-256 fingerprint differs from `expected_remote_fingerprint`, or
/// after control's handshake timeout.
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
    let hs =
        ils_control::dtls::server_handshake(conn, cert, expected_remote_fingerprint.as_deref())
            .await?;
    let outcome = DtlsOutcome::from_keys(hs.keys, hs.remote_fingerprint);
    Ok((outcome, hs.conn))
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

    #[test]
    fn fingerprint_agrees_with_control() {
        // sha2 here, ring in control: two implementations must give the same SDP string
        let cert = generate_cert();
        assert_eq!(fingerprint(&cert), ils_control::dtls::fingerprint_of(&cert));
    }
}
