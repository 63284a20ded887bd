//! In-place SRTP/SRTCP (RFC 3711, RFC 7714) for the engine hot path.
//!
//! # Driving contract
//!
//! 1. Control exports the DTLS-SRTP keying material and splits it with
//!    [`split_keying_material`] (setup time; allocation allowed).
//! 2. The engine builds one [`SrtpContext`] per transport *and direction*
//!    ([`SrtpContext::new`]): all session keys are derived there (RFC 3711 §4.3 KDF) and all
//!    per-SSRC state is preallocated (bounded by [`MAX_SSRCS_PER_CONTEXT`]).
//! 3. Per packet, the engine calls [`SrtpContext::unprotect_rtp`] / [`SrtpContext::unprotect_rtcp`]
//!    on received datagrams and [`SrtpContext::protect_rtp`] / [`SrtpContext::protect_rtcp`] on
//!    outgoing ones. All four work in place on a caller-provided buffer, never allocate,
//!    never read a clock and never panic on input: every failure is a [`SrtpError`] whose
//!    [`SrtpError::reason`] is a metric label.
//! 4. Receive-side replay protection (RFC 3711 §3.3.2) is checked *before* authentication
//!    (cheap rejection of floods) and committed only *after* authentication succeeded, so a
//!    forged packet can never move the window or the rollover counter.
//!
//! Profiles: `SRTP_AES128_CM_HMAC_SHA1_80` (0x0001), `SRTP_AEAD_AES_128_GCM` (0x0007),
//! `SRTP_AEAD_AES_256_GCM` (0x0008). MKI is not supported (WebRTC never negotiates it), and
//! the key derivation rate is 0 (keys derived once), as DTLS-SRTP requires.

#![warn(missing_docs)]

mod cipher;
mod context;
mod header;
mod kdf;
mod keying;
mod replay;

pub use context::SrtpContext;
pub use keying::{split_keying_material, KeyingMaterial};

/// Replay window size, in packets, per SSRC (RFC 3711 §3.3.2 requires at least 64).
///
/// Default 128 (libsrtp/WebRTC and Signal's SFU use 128). Bounds how far back a reordered
/// packet may arrive and still be accepted; anything older is [`SrtpError::TooOld`].
/// Memory: one `u128` bitmask per SSRC entry (16 bytes).
pub const REPLAY_WINDOW: u64 = 128;

/// Maximum number of distinct SSRCs tracked per context, per table.
///
/// A context keeps four tables (RTP receive, RTP send, RTCP receive, RTCP send), each
/// holding at most this many SSRCs; a packet for a new SSRC when its table is full is refused
/// with [`SrtpError::TooManySsrcs`] (the table never grows and never evicts silently: call
/// [`SrtpContext::forget_ssrc`] to free an entry). On receive, a new SSRC gets an entry only
/// after its first packet authenticated, so forged packets cannot fill the table.
///
/// Default 64 (a WebRTC transport carries a handful of SSRCs: audio, simulcast layers, RTX,
/// FEC). Bounds the memory an authenticated but abusive peer can make us keep.
/// Worst-case memory per context: the four tables take 64 × (36 + 36 + 12 + 8) bytes ≈ 5.9 KiB
/// (SSRC + replay window + index per entry), all inline; `size_of::<SrtpContext>()` is about
/// 7.7 KiB including the session keys (pinned by a test). Nothing grows after
/// [`SrtpContext::new`].
pub const MAX_SSRCS_PER_CONTEXT: usize = 64;

/// SRTP protection profile (the DTLS-SRTP `use_srtp` values we support, RFC 5764 / RFC 7714).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// `SRTP_AES128_CM_HMAC_SHA1_80` (0x0001): AES-128 counter mode + 80-bit HMAC-SHA1 tag.
    Aes128CmHmacSha1_80,
    /// `SRTP_AEAD_AES_128_GCM` (0x0007): AES-128-GCM, 16-byte tag.
    AeadAes128Gcm,
    /// `SRTP_AEAD_AES_256_GCM` (0x0008): AES-256-GCM, 16-byte tag.
    AeadAes256Gcm,
}

impl Profile {
    /// Maps a DTLS-SRTP protection profile id (RFC 5764 §4.1.2, RFC 7714 §14.2).
    pub fn from_dtls_id(id: u16) -> Option<Profile> {
        match id {
            0x0001 => Some(Profile::Aes128CmHmacSha1_80),
            0x0007 => Some(Profile::AeadAes128Gcm),
            0x0008 => Some(Profile::AeadAes256Gcm),
            _ => None,
        }
    }

    /// The DTLS-SRTP protection profile id.
    pub fn dtls_id(self) -> u16 {
        match self {
            Profile::Aes128CmHmacSha1_80 => 0x0001,
            Profile::AeadAes128Gcm => 0x0007,
            Profile::AeadAes256Gcm => 0x0008,
        }
    }

    /// Master key length in bytes (16, 16, 32).
    pub fn master_key_len(self) -> usize {
        match self {
            Profile::Aes128CmHmacSha1_80 | Profile::AeadAes128Gcm => 16,
            Profile::AeadAes256Gcm => 32,
        }
    }

    /// Master salt length in bytes (14 for AES-CM, 12 for GCM).
    pub fn master_salt_len(self) -> usize {
        match self {
            Profile::Aes128CmHmacSha1_80 => 14,
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => 12,
        }
    }

    /// Bytes [`SrtpContext::protect_rtp`] appends: the authentication tag
    /// (10 for AES-CM/HMAC-SHA1-80, 16 for GCM).
    pub fn rtp_overhead(self) -> usize {
        self.tag_len()
    }

    /// Bytes [`SrtpContext::protect_rtcp`] appends: the 4-byte E‖SRTCP-index word plus the tag
    /// (14 for AES-CM/HMAC-SHA1-80, 20 for GCM).
    pub fn rtcp_overhead(self) -> usize {
        4 + self.tag_len()
    }

    /// Length of the RFC 5764 exported keying material for this profile:
    /// `2 × (master_key_len + master_salt_len)`.
    pub fn keying_material_len(self) -> usize {
        2 * (self.master_key_len() + self.master_salt_len())
    }

    /// Authentication tag length in bytes.
    pub(crate) fn tag_len(self) -> usize {
        match self {
            Profile::Aes128CmHmacSha1_80 => 10,
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => 16,
        }
    }
}

/// Why a packet was refused. One variant per reason; [`SrtpError::reason`] gives the
/// metric label. On error the packet buffer content is unspecified (it may be partly
/// decrypted or rearranged) and must be dropped.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum SrtpError {
    /// The packet is shorter than its fixed header, its declared header (CSRCs, extension),
    /// or its header plus the trailer (SRTCP index, tag).
    #[error("packet too short")]
    TooShort,
    /// The packet is structurally invalid (RTP/RTCP version is not 2).
    #[error("malformed packet")]
    Malformed,
    /// Authentication (HMAC-SHA1 tag or AEAD tag) failed.
    #[error("authentication failed")]
    AuthFailed,
    /// The packet index was already received (replay).
    #[error("replayed packet")]
    Replayed,
    /// The packet index is older than the replay window, or cannot be represented
    /// (before the first index of the stream, or the 48-bit SRTP / 31-bit SRTCP index space is
    /// exhausted and the keys must be renegotiated).
    #[error("packet index too old or out of range")]
    TooOld,
    /// A new SSRC would exceed [`MAX_SSRCS_PER_CONTEXT`].
    #[error("too many SSRCs in this context")]
    TooManySsrcs,
    /// The caller's buffer cannot hold the output (`len + overhead`), or `len > buf.len()`.
    #[error("buffer too small")]
    BufferTooSmall,
    /// Master key / salt / keying material length does not match the profile.
    #[error("bad key length")]
    BadKeyLength,
}

impl SrtpError {
    /// snake_case name of the variant, used as a metric label (e.g. `"auth_failed"`).
    pub fn reason(self) -> &'static str {
        match self {
            SrtpError::TooShort => "too_short",
            SrtpError::Malformed => "malformed",
            SrtpError::AuthFailed => "auth_failed",
            SrtpError::Replayed => "replayed",
            SrtpError::TooOld => "too_old",
            SrtpError::TooManySsrcs => "too_many_ssrcs",
            SrtpError::BufferTooSmall => "buffer_too_small",
            SrtpError::BadKeyLength => "bad_key_length",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_ids_round_trip() {
        for p in [
            Profile::Aes128CmHmacSha1_80,
            Profile::AeadAes128Gcm,
            Profile::AeadAes256Gcm,
        ] {
            assert_eq!(Profile::from_dtls_id(p.dtls_id()), Some(p));
        }
        for id in [0u16, 2, 3, 4, 5, 6, 9, 0xffff] {
            assert_eq!(Profile::from_dtls_id(id), None);
        }
    }

    #[test]
    fn profile_lengths() {
        let cm = Profile::Aes128CmHmacSha1_80;
        assert_eq!((cm.master_key_len(), cm.master_salt_len()), (16, 14));
        assert_eq!((cm.rtp_overhead(), cm.rtcp_overhead()), (10, 14));
        assert_eq!(cm.keying_material_len(), 60);
        let g128 = Profile::AeadAes128Gcm;
        assert_eq!((g128.master_key_len(), g128.master_salt_len()), (16, 12));
        assert_eq!((g128.rtp_overhead(), g128.rtcp_overhead()), (16, 20));
        assert_eq!(g128.keying_material_len(), 56);
        let g256 = Profile::AeadAes256Gcm;
        assert_eq!((g256.master_key_len(), g256.master_salt_len()), (32, 12));
        assert_eq!((g256.rtp_overhead(), g256.rtcp_overhead()), (16, 20));
        assert_eq!(g256.keying_material_len(), 88);
    }

    #[test]
    fn reasons_are_snake_case_and_distinct() {
        let all = [
            SrtpError::TooShort,
            SrtpError::Malformed,
            SrtpError::AuthFailed,
            SrtpError::Replayed,
            SrtpError::TooOld,
            SrtpError::TooManySsrcs,
            SrtpError::BufferTooSmall,
            SrtpError::BadKeyLength,
        ];
        let mut seen = std::collections::HashSet::new();
        for e in all {
            let r = e.reason();
            assert!(r.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{r}");
            assert!(seen.insert(r));
        }
        assert_eq!(SrtpError::AuthFailed.reason(), "auth_failed");
    }
}
