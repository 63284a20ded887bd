//! `ils-stun`: sans-IO STUN codec, ICE-lite responder and consent freshness for the engine's
//! fast path (RFC 8489 STUN, RFC 8445 ICE-lite, RFC 7675 consent, RFC 7983 demultiplexing).
//!
//! * [`StunMessage::parse`] is a zero-copy view: one pass over the attribute TLVs validates every
//!   length, so accessors never fail or panic afterwards.
//! * [`write_binding_success`] / [`write_binding_request`] (and the lower-level [`StunWriter`])
//!   write into a caller buffer; nothing allocates.
//! * [`IceLite`] is the responder state of one transport: it answers only authenticated Binding
//!   requests, tracks at most [`MAX_TUPLES_PER_TRANSPORT`] validated remote tuples, follows
//!   USE-CANDIDATE nomination and expires consent after a configurable timeout.
//!
//! Nothing here reads a clock or touches a socket: time comes in as `now: Instant`.

mod error;
mod ice;
mod message;
mod writer;

pub use error::StunError;
pub use ice::{
    IceEvent, IceLite, IceOutcome, DEFAULT_CONSENT_TIMEOUT, MAX_PWD_LEN, MAX_TUPLES_PER_TRANSPORT,
    MAX_UFRAG_LEN, MIN_PWD_LEN, MIN_REPLY_BUF_LEN, MIN_UFRAG_LEN,
};
pub use message::{
    attr, Class, StunMessage, FINGERPRINT_XOR, HEADER_LEN, MAGIC_COOKIE, MAX_ATTRIBUTES,
    MAX_USERNAME_LEN, METHOD_BINDING,
};
pub use writer::{
    binding_success_len, write_binding_request, write_binding_request_with_key,
    write_binding_success, write_binding_success_with_key, StunWriter, MAX_BINDING_SUCCESS_LEN,
};

/// `ring`'s HMAC key type, re-exported so callers can precompute keys for the `*_with_key`
/// functions without naming `ring` themselves.
pub use ring::hmac::Key as HmacKey;

/// Build the HMAC-SHA1 key used for STUN short-term credentials (key = ICE password).
pub fn integrity_key(pwd: &[u8]) -> HmacKey {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, pwd)
}

/// RFC 7983 demultiplexing: a datagram whose first byte is 0..=3 is STUN
/// (DTLS is 20..=63, RTP/RTCP 128..=191).
#[inline]
pub fn is_stun(first_byte: u8) -> bool {
    first_byte <= 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7983_demux() {
        for b in 0..=255u8 {
            assert_eq!(is_stun(b), b <= 3, "byte {b}");
        }
        // DTLS handshake and RTP first bytes are not STUN.
        assert!(!is_stun(22));
        assert!(!is_stun(0x80));
    }
}
