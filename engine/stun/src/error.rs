//! Typed errors of the STUN codec and the ICE-lite responder.
//!
//! Every variant names one reason a datagram is dropped (or a call refused); the engine counts
//! drops under [`StunError::reason`], so each reason is a stable snake_case metric label.

/// Why a STUN datagram was rejected, or why a writer/constructor call failed.
///
/// Network-input reasons come first, then local misuse (`BufferTooSmall`, `BadUfrag`, `BadPwd`).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StunError {
    /// Fewer than the 20 bytes of a STUN header.
    #[error("datagram shorter than a STUN header")]
    TooShort,
    /// First two bits not zero, or the magic cookie is wrong (RFC 8489 §5, RFC 7983).
    #[error("not a STUN message (leading bits or magic cookie)")]
    NotStun,
    /// Header length field not a multiple of 4, or not equal to the datagram length minus 20.
    #[error("STUN length field does not match the datagram")]
    BadLength,
    /// An attribute TLV overruns the message, a known attribute has the wrong value length,
    /// or an attribute follows FINGERPRINT.
    #[error("malformed STUN attribute")]
    BadAttribute,
    /// More than [`crate::MAX_ATTRIBUTES`] attributes (bounds per-packet parse work).
    #[error("too many STUN attributes")]
    TooManyAttributes,
    /// A Binding request without USERNAME.
    #[error("USERNAME missing")]
    NoUsername,
    /// USERNAME has no `:` separator, an empty local part, or is longer than STUN allows.
    #[error("USERNAME is not of the form local:remote")]
    BadUsername,
    /// The local part of USERNAME is not our ufrag (includes swapped `remote:local`).
    #[error("USERNAME names an unknown ufrag")]
    UnknownUfrag,
    /// MESSAGE-INTEGRITY missing.
    #[error("MESSAGE-INTEGRITY missing")]
    NoIntegrity,
    /// MESSAGE-INTEGRITY does not verify with the local password.
    #[error("MESSAGE-INTEGRITY does not verify")]
    BadIntegrity,
    /// FINGERPRINT missing (ICE requires it, RFC 8445 §7.2.2 / §5.1.2 of RFC 8489 usage).
    #[error("FINGERPRINT missing")]
    NoFingerprint,
    /// FINGERPRINT does not match CRC-32 of the message xor 0x5354554e.
    #[error("FINGERPRINT does not verify")]
    BadFingerprint,
    /// PRIORITY missing from a Binding request (RFC 8445 §7.1.1 makes it mandatory).
    #[error("PRIORITY missing")]
    NoPriority,
    /// Not a Binding request: an indication, a response, or another method (TURN etc.).
    #[error("not a Binding request")]
    NotBindingRequest,
    /// The request carries ICE-CONTROLLED: the peer also claims the controlled role, but an
    /// ICE-lite agent is always controlled (RFC 8445 §7.3.1.1). Dropped without a 487 reply.
    #[error("ICE role conflict (peer is controlled too)")]
    RoleConflict,
    /// The output buffer cannot hold the message being written.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The reply would be larger than the request that triggered it (amplification guard).
    #[error("reply would be larger than the request")]
    ReplyTooLarge,
    /// Local ufrag rejected by [`crate::IceLite::new`]: length outside
    /// [`crate::MIN_UFRAG_LEN`]..=[`crate::MAX_UFRAG_LEN`] or a character outside ICE's ice-char set.
    #[error("invalid local ufrag")]
    BadUfrag,
    /// Local password rejected by [`crate::IceLite::new`]: length outside
    /// [`crate::MIN_PWD_LEN`]..=[`crate::MAX_PWD_LEN`] or a character outside ICE's ice-char set.
    #[error("invalid local password")]
    BadPwd,
}

impl StunError {
    /// Stable snake_case label, used as the metric reason for dropped datagrams.
    pub fn reason(self) -> &'static str {
        match self {
            StunError::TooShort => "too_short",
            StunError::NotStun => "not_stun",
            StunError::BadLength => "bad_length",
            StunError::BadAttribute => "bad_attribute",
            StunError::TooManyAttributes => "too_many_attributes",
            StunError::NoUsername => "no_username",
            StunError::BadUsername => "bad_username",
            StunError::UnknownUfrag => "unknown_ufrag",
            StunError::NoIntegrity => "no_integrity",
            StunError::BadIntegrity => "bad_integrity",
            StunError::NoFingerprint => "no_fingerprint",
            StunError::BadFingerprint => "bad_fingerprint",
            StunError::NoPriority => "no_priority",
            StunError::NotBindingRequest => "not_binding_request",
            StunError::RoleConflict => "role_conflict",
            StunError::BufferTooSmall => "buffer_too_small",
            StunError::ReplyTooLarge => "reply_too_large",
            StunError::BadUfrag => "bad_ufrag",
            StunError::BadPwd => "bad_pwd",
        }
    }

    /// Every variant, for exhaustive label tests and metric registration.
    pub const ALL: [StunError; 19] = [
        StunError::TooShort,
        StunError::NotStun,
        StunError::BadLength,
        StunError::BadAttribute,
        StunError::TooManyAttributes,
        StunError::NoUsername,
        StunError::BadUsername,
        StunError::UnknownUfrag,
        StunError::NoIntegrity,
        StunError::BadIntegrity,
        StunError::NoFingerprint,
        StunError::BadFingerprint,
        StunError::NoPriority,
        StunError::NotBindingRequest,
        StunError::RoleConflict,
        StunError::BufferTooSmall,
        StunError::ReplyTooLarge,
        StunError::BadUfrag,
        StunError::BadPwd,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn reasons_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for e in StunError::ALL {
            let r = e.reason();
            assert!(!r.is_empty());
            assert!(
                r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r}"
            );
            assert!(seen.insert(r), "duplicate reason {r}");
            assert!(!e.to_string().is_empty());
        }
    }
}
