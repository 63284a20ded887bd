//! Zero-copy STUN message parser (RFC 8489 §5, §14, §15).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ring::hmac;

use crate::StunError;

/// Size of the fixed STUN header: type (2), length (2), magic cookie (4), transaction id (12).
pub const HEADER_LEN: usize = 20;

/// The RFC 8489 magic cookie, bytes 4..8 of every STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// The Binding method (RFC 8489 §18.2).
pub const METHOD_BINDING: u16 = 0x0001;

/// FINGERPRINT = CRC-32(message up to the attribute) xor this value (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Most attributes a message may carry before parsing stops with
/// [`StunError::TooManyAttributes`].
///
/// Default 32. Browser Binding requests carry 5–8 (USERNAME, GOOG-NETWORK-INFO, ICE-CONTROLLING,
/// USE-CANDIDATE, PRIORITY, MESSAGE-INTEGRITY, FINGERPRINT). Bounds the parse work a hostile
/// datagram can cause (a 1500-byte datagram could otherwise hold 370 empty TLVs; a 64 KiB one
/// 16k). No memory: the parser stores no per-attribute state.
pub const MAX_ATTRIBUTES: usize = 32;

/// Longest USERNAME value accepted, in bytes.
///
/// Default 512: RFC 5389 allowed "fewer than 513 bytes" (RFC 8489 tightened it to 509).
/// Bounds what a peer can make us compare/hash; no memory is held (zero-copy view).
pub const MAX_USERNAME_LEN: usize = 512;

/// Attribute type codes used by this crate (RFC 8489 §18.3, RFC 8445 §16.1).
pub mod attr {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1, 20 bytes).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// MESSAGE-INTEGRITY-SHA256 (not used by ICE; ignored here).
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PRIORITY (ICE, 4 bytes).
    pub const PRIORITY: u16 = 0x0024;
    /// USE-CANDIDATE (ICE, empty).
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT (CRC-32, 4 bytes).
    pub const FINGERPRINT: u16 = 0x8028;
    /// ICE-CONTROLLED (ICE, 8-byte tiebreaker).
    pub const ICE_CONTROLLED: u16 = 0x8029;
    /// ICE-CONTROLLING (ICE, 8-byte tiebreaker).
    pub const ICE_CONTROLLING: u16 = 0x802A;
}

/// Length of the MESSAGE-INTEGRITY value (HMAC-SHA1).
pub(crate) const MI_LEN: usize = 20;
/// Length of the FINGERPRINT value.
pub(crate) const FP_LEN: usize = 4;
/// Attribute TLV header length.
pub(crate) const ATTR_HDR_LEN: usize = 4;

/// STUN message class (the C1/C0 bits of the message type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Request (0b00).
    Request,
    /// Indication (0b01).
    Indication,
    /// Success response (0b10).
    SuccessResponse,
    /// Error response (0b11).
    ErrorResponse,
}

impl Class {
    /// The two class bits placed in the message type field (C1 at 0x0100, C0 at 0x0010).
    pub(crate) fn type_bits(self) -> u16 {
        match self {
            Class::Request => 0x0000,
            Class::Indication => 0x0010,
            Class::SuccessResponse => 0x0100,
            Class::ErrorResponse => 0x0110,
        }
    }

    fn from_type(t: u16) -> Class {
        match ((t >> 7) & 0b10) | ((t >> 4) & 0b01) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }
}

/// Encode a 12-bit method and a class into a STUN message type (RFC 8489 §5). Method bits above
/// the 12th are ignored.
pub(crate) fn message_type(class: Class, method: u16) -> u16 {
    let m = method & 0x0FFF;
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | class.type_bits()
}

fn method_from_type(t: u16) -> u16 {
    (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8]) -> Option<u32> {
    let a: [u8; 4] = b.try_into().ok()?;
    Some(u32::from_be_bytes(a))
}

fn be64(b: &[u8]) -> Option<u64> {
    let a: [u8; 8] = b.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}

/// Round an attribute value length up to the 4-byte boundary.
pub(crate) fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Constant-time equality of two byte strings of equal length (MAC comparison).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Zero-copy view of a STUN message (header + attribute TLVs, all lengths validated at parse).
///
/// Attribute rules applied by [`StunMessage::parse`] (RFC 8489 §14):
/// * only the first occurrence of an attribute counts;
/// * after MESSAGE-INTEGRITY only FINGERPRINT is taken into account (others are skipped but
///   still length-checked);
/// * nothing may follow FINGERPRINT ([`StunError::BadAttribute`]);
/// * fixed-size attributes (PRIORITY, USE-CANDIDATE, ICE-CONTROLL*, MESSAGE-INTEGRITY,
///   FINGERPRINT, XOR-MAPPED-ADDRESS) must have their exact length;
/// * unknown attributes, including comprehension-required ones, are skipped (an ICE-lite
///   responder never sends 420 Unknown Attribute: every error is silent).
#[derive(Debug, Clone, Copy)]
pub struct StunMessage<'a> {
    buf: &'a [u8],
    typ: u16,
    txid: &'a [u8; 12],
    username: Option<&'a [u8]>,
    /// Offset of the MESSAGE-INTEGRITY attribute header.
    mi_off: Option<usize>,
    /// Offset of the FINGERPRINT attribute header.
    fp_off: Option<usize>,
    priority: Option<u32>,
    use_candidate: bool,
    ice_controlled: Option<u64>,
    ice_controlling: Option<u64>,
    xor_mapped: Option<&'a [u8]>,
}

impl<'a> StunMessage<'a> {
    /// Parse and validate one STUN message that fills `buf` exactly (one UDP datagram).
    ///
    /// Errors: [`StunError::TooShort`] (< 20 bytes), [`StunError::NotStun`] (leading bits or
    /// cookie), [`StunError::BadLength`] (length field not a multiple of 4 or not matching the
    /// datagram), [`StunError::BadAttribute`], [`StunError::TooManyAttributes`],
    /// [`StunError::BadUsername`] (USERNAME longer than [`MAX_USERNAME_LEN`]).
    pub fn parse(buf: &'a [u8]) -> Result<Self, StunError> {
        let (header, body) = buf
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(StunError::TooShort)?;
        let typ = u16::from_be_bytes([header[0], header[1]]);
        if typ & 0xC000 != 0 {
            return Err(StunError::NotStun);
        }
        if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
            return Err(StunError::NotStun);
        }
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if len % 4 != 0 || len != body.len() {
            return Err(StunError::BadLength);
        }
        let (_, txid) = header.split_last_chunk::<12>().ok_or(StunError::TooShort)?;

        let mut m = StunMessage {
            buf,
            typ,
            txid,
            username: None,
            mi_off: None,
            fp_off: None,
            priority: None,
            use_candidate: false,
            ice_controlled: None,
            ice_controlling: None,
            xor_mapped: None,
        };

        let mut off = HEADER_LEN;
        let mut count = 0usize;
        while off < buf.len() {
            if m.fp_off.is_some() {
                // FINGERPRINT must be the last attribute.
                return Err(StunError::BadAttribute);
            }
            count += 1;
            if count > MAX_ATTRIBUTES {
                return Err(StunError::TooManyAttributes);
            }
            let at = be16(buf, off).ok_or(StunError::BadAttribute)?;
            let alen = usize::from(be16(buf, off + 2).ok_or(StunError::BadAttribute)?);
            let vstart = off + ATTR_HDR_LEN;
            let vend = vstart + alen;
            let next = vstart + padded(alen);
            if next > buf.len() {
                return Err(StunError::BadAttribute);
            }
            let value = buf.get(vstart..vend).ok_or(StunError::BadAttribute)?;

            if m.mi_off.is_some() {
                // After MESSAGE-INTEGRITY only FINGERPRINT counts (RFC 8489 §14.5).
                if at == attr::FINGERPRINT {
                    if alen != FP_LEN {
                        return Err(StunError::BadAttribute);
                    }
                    m.fp_off = Some(off);
                }
                off = next;
                continue;
            }

            match at {
                attr::USERNAME => {
                    if alen > MAX_USERNAME_LEN {
                        return Err(StunError::BadUsername);
                    }
                    m.username.get_or_insert(value);
                }
                attr::MESSAGE_INTEGRITY => {
                    if alen != MI_LEN {
                        return Err(StunError::BadAttribute);
                    }
                    m.mi_off = Some(off);
                }
                attr::FINGERPRINT => {
                    if alen != FP_LEN {
                        return Err(StunError::BadAttribute);
                    }
                    m.fp_off = Some(off);
                }
                attr::PRIORITY => {
                    let v = be32(value).ok_or(StunError::BadAttribute)?;
                    m.priority.get_or_insert(v);
                }
                attr::USE_CANDIDATE => {
                    if alen != 0 {
                        return Err(StunError::BadAttribute);
                    }
                    m.use_candidate = true;
                }
                attr::ICE_CONTROLLED => {
                    let v = be64(value).ok_or(StunError::BadAttribute)?;
                    m.ice_controlled.get_or_insert(v);
                }
                attr::ICE_CONTROLLING => {
                    let v = be64(value).ok_or(StunError::BadAttribute)?;
                    m.ice_controlling.get_or_insert(v);
                }
                attr::XOR_MAPPED_ADDRESS => {
                    let ok = matches!((value.get(1), alen), (Some(1), 8) | (Some(2), 20));
                    if !ok {
                        return Err(StunError::BadAttribute);
                    }
                    m.xor_mapped.get_or_insert(value);
                }
                _ => {}
            }
            off = next;
        }
        Ok(m)
    }

    /// The whole message as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Message class.
    pub fn class(&self) -> Class {
        Class::from_type(self.typ)
    }

    /// 12-bit method (1 = Binding).
    pub fn method(&self) -> u16 {
        method_from_type(self.typ)
    }

    /// The 96-bit transaction id.
    pub fn transaction_id(&self) -> &'a [u8; 12] {
        self.txid
    }

    /// USERNAME value, if present (before MESSAGE-INTEGRITY).
    pub fn username(&self) -> Option<&'a [u8]> {
        self.username
    }

    /// The local part of USERNAME ("local:remote" -> local), used by the engine to find the
    /// transport by ufrag. `None` without USERNAME, without `:`, or with an empty local part.
    pub fn local_ufrag(&self) -> Option<&'a [u8]> {
        let u = self.username?;
        let colon = u.iter().position(|&b| b == b':')?;
        let local = u.get(..colon)?;
        (!local.is_empty()).then_some(local)
    }

    /// The remote part of USERNAME ("local:remote" -> remote), possibly empty.
    pub fn remote_ufrag(&self) -> Option<&'a [u8]> {
        let u = self.username?;
        let colon = u.iter().position(|&b| b == b':')?;
        u.get(colon + 1..)
    }

    /// True if USE-CANDIDATE is present.
    pub fn has_use_candidate(&self) -> bool {
        self.use_candidate
    }

    /// PRIORITY value.
    pub fn priority(&self) -> Option<u32> {
        self.priority
    }

    /// ICE-CONTROLLED tiebreaker, if present.
    pub fn ice_controlled(&self) -> Option<u64> {
        self.ice_controlled
    }

    /// ICE-CONTROLLING tiebreaker, if present.
    pub fn ice_controlling(&self) -> Option<u64> {
        self.ice_controlling
    }

    /// True if MESSAGE-INTEGRITY is present.
    pub fn has_integrity(&self) -> bool {
        self.mi_off.is_some()
    }

    /// True if FINGERPRINT is present.
    pub fn has_fingerprint(&self) -> bool {
        self.fp_off.is_some()
    }

    /// Decoded XOR-MAPPED-ADDRESS, if present.
    pub fn xor_mapped_address(&self) -> Option<SocketAddr> {
        let v = self.xor_mapped?;
        let port = be16(v, 2)? ^ (MAGIC_COOKIE >> 16) as u16;
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let ip = match v.get(1)? {
            1 => {
                let a: [u8; 4] = v.get(4..8)?.try_into().ok()?;
                let x: [u8; 4] = std::array::from_fn(|i| a[i] ^ cookie[i]);
                IpAddr::V4(Ipv4Addr::from(x))
            }
            _ => {
                let a: [u8; 16] = v.get(4..20)?.try_into().ok()?;
                let x: [u8; 16] = std::array::from_fn(|i| {
                    a[i] ^ if i < 4 { cookie[i] } else { self.txid[i - 4] }
                });
                IpAddr::V6(Ipv6Addr::from(x))
            }
        };
        Some(SocketAddr::new(ip, port))
    }

    /// Value of the first attribute of type `typ` anywhere in the message (no
    /// MESSAGE-INTEGRITY ordering rule applied).
    pub fn attribute(&self, typ: u16) -> Option<&'a [u8]> {
        let mut off = HEADER_LEN;
        while off < self.buf.len() {
            let at = be16(self.buf, off)?;
            let alen = usize::from(be16(self.buf, off + 2)?);
            let vstart = off + ATTR_HDR_LEN;
            if at == typ {
                return self.buf.get(vstart..vstart + alen);
            }
            off = vstart + padded(alen);
        }
        None
    }

    /// Check FINGERPRINT: CRC-32 of the message up to the attribute, xor 0x5354554e.
    pub fn verify_fingerprint(&self) -> Result<(), StunError> {
        let off = self.fp_off.ok_or(StunError::NoFingerprint)?;
        let covered = self.buf.get(..off).ok_or(StunError::BadFingerprint)?;
        let value = self
            .buf
            .get(off + ATTR_HDR_LEN..off + ATTR_HDR_LEN + FP_LEN)
            .and_then(be32)
            .ok_or(StunError::BadFingerprint)?;
        // FINGERPRINT is the last attribute (enforced at parse), so the header length already
        // covers it, as RFC 8489 §14.7 requires.
        if crc32fast::hash(covered) ^ FINGERPRINT_XOR == value {
            Ok(())
        } else {
            Err(StunError::BadFingerprint)
        }
    }

    /// HMAC-SHA1 over the message up to MESSAGE-INTEGRITY with the header length adjusted to end
    /// at MESSAGE-INTEGRITY (RFC 8489 §14.5). Builds a key from `key`; use
    /// [`StunMessage::verify_integrity_with_key`] with a precomputed key on the hot path.
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), StunError> {
        self.verify_integrity_with_key(&crate::integrity_key(key))
    }

    /// As [`StunMessage::verify_integrity`], with a precomputed HMAC-SHA1 key
    /// (see [`crate::integrity_key`]). Compares in constant time. No allocation.
    pub fn verify_integrity_with_key(&self, key: &hmac::Key) -> Result<(), StunError> {
        let off = self.mi_off.ok_or(StunError::NoIntegrity)?;
        let end = off + ATTR_HDR_LEN + MI_LEN;
        let adjusted = u16::try_from(end - HEADER_LEN).map_err(|_| StunError::BadIntegrity)?;
        let (head, rest) = (
            self.buf.get(..2).ok_or(StunError::BadIntegrity)?,
            self.buf.get(4..off).ok_or(StunError::BadIntegrity)?,
        );
        let mac = self
            .buf
            .get(off + ATTR_HDR_LEN..end)
            .ok_or(StunError::BadIntegrity)?;
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(head);
        ctx.update(&adjusted.to_be_bytes());
        ctx.update(rest);
        let tag = ctx.sign();
        if ct_eq(tag.as_ref(), mac) {
            Ok(())
        } else {
            Err(StunError::BadIntegrity)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5769 §2.1 sample request.
    pub(crate) const RFC5769_REQUEST: &str = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
    /// RFC 5769 §2.2 sample IPv4 response.
    pub(crate) const RFC5769_RESPONSE_V4: &str = "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96";
    /// RFC 5769 §2.3 sample IPv6 response.
    pub(crate) const RFC5769_RESPONSE_V6: &str = "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c";
    /// RFC 5769 password for all three vectors.
    pub(crate) const RFC5769_PWD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
    pub(crate) const RFC5769_TXID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    #[test]
    fn rfc5769_request() {
        let b = hex(RFC5769_REQUEST);
        let m = StunMessage::parse(&b).unwrap();
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.method(), METHOD_BINDING);
        assert_eq!(m.transaction_id(), &RFC5769_TXID);
        assert_eq!(m.username(), Some(&b"evtj:h6vY"[..]));
        assert_eq!(m.local_ufrag(), Some(&b"evtj"[..]));
        assert_eq!(m.remote_ufrag(), Some(&b"h6vY"[..]));
        assert_eq!(m.priority(), Some(0x6e0001ff));
        assert_eq!(m.ice_controlled(), Some(0x932ff9b151263b36));
        assert_eq!(m.ice_controlling(), None);
        assert!(!m.has_use_candidate());
        assert_eq!(m.attribute(attr::SOFTWARE), Some(&b"STUN test client"[..]));
        m.verify_fingerprint().unwrap();
        m.verify_integrity(RFC5769_PWD).unwrap();
        assert_eq!(
            m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBT"),
            Err(StunError::BadIntegrity)
        );
    }

    #[test]
    fn rfc5769_responses() {
        let v4 = hex(RFC5769_RESPONSE_V4);
        let m = StunMessage::parse(&v4).unwrap();
        assert_eq!(m.class(), Class::SuccessResponse);
        assert_eq!(m.method(), METHOD_BINDING);
        assert_eq!(m.attribute(attr::SOFTWARE), Some(&b"test vector"[..]));
        assert_eq!(
            m.xor_mapped_address(),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        m.verify_fingerprint().unwrap();
        m.verify_integrity(RFC5769_PWD).unwrap();

        let v6 = hex(RFC5769_RESPONSE_V6);
        let m = StunMessage::parse(&v6).unwrap();
        assert_eq!(m.class(), Class::SuccessResponse);
        assert_eq!(
            m.xor_mapped_address(),
            Some(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap()
            )
        );
        m.verify_fingerprint().unwrap();
        m.verify_integrity(RFC5769_PWD).unwrap();
    }

    #[test]
    fn every_bit_flip_breaks_fingerprint_or_integrity_or_parse() {
        let b = hex(RFC5769_REQUEST);
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            let ok = StunMessage::parse(&c).is_ok_and(|m| {
                m.verify_fingerprint().is_ok() && m.verify_integrity(RFC5769_PWD).is_ok()
            });
            assert!(!ok, "bit {i} flip still verifies");
        }
    }

    #[test]
    fn class_and_method_encoding_round_trip() {
        for class in [
            Class::Request,
            Class::Indication,
            Class::SuccessResponse,
            Class::ErrorResponse,
        ] {
            for method in [0x001u16, 0x003, 0x004, 0x00b, 0x07f, 0x080, 0xabc, 0xfff] {
                let t = message_type(class, method);
                assert_eq!(t & 0xC000, 0);
                assert_eq!(Class::from_type(t), class);
                assert_eq!(method_from_type(t), method);
            }
        }
        assert_eq!(message_type(Class::Request, METHOD_BINDING), 0x0001);
        assert_eq!(message_type(Class::SuccessResponse, METHOD_BINDING), 0x0101);
        assert_eq!(message_type(Class::Indication, METHOD_BINDING), 0x0011);
        assert_eq!(message_type(Class::ErrorResponse, METHOD_BINDING), 0x0111);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for v in [RFC5769_REQUEST, RFC5769_RESPONSE_V4, RFC5769_RESPONSE_V6] {
            let b = hex(v);
            for n in 0..b.len() {
                assert!(StunMessage::parse(&b[..n]).is_err(), "prefix {n} parsed");
            }
            // Trailing garbage after a complete message is rejected too.
            let mut long = b.clone();
            long.extend_from_slice(&[0, 0, 0, 0]);
            assert_eq!(StunMessage::parse(&long).unwrap_err(), StunError::BadLength);
        }
    }

    #[test]
    fn header_errors() {
        let b = hex(RFC5769_REQUEST);
        assert_eq!(StunMessage::parse(&[]).unwrap_err(), StunError::TooShort);
        assert_eq!(
            StunMessage::parse(&b[..19]).unwrap_err(),
            StunError::TooShort
        );
        let mut c = b.clone();
        c[0] |= 0x80;
        assert_eq!(StunMessage::parse(&c).unwrap_err(), StunError::NotStun);
        let mut c = b.clone();
        c[5] ^= 1;
        assert_eq!(StunMessage::parse(&c).unwrap_err(), StunError::NotStun);
        let mut c = b.clone();
        c[3] = c[3].wrapping_add(1); // not a multiple of 4
        assert_eq!(StunMessage::parse(&c).unwrap_err(), StunError::BadLength);
        let mut c = b.clone();
        c[3] = c[3].wrapping_add(4); // claims more than the datagram
        assert_eq!(StunMessage::parse(&c).unwrap_err(), StunError::BadLength);
        // Header-only message is valid (no attributes).
        let m = StunMessage::parse(&b[..20]);
        assert_eq!(m.unwrap_err(), StunError::BadLength); // length field still says 0x58
        let mut h = b[..20].to_vec();
        h[2] = 0;
        h[3] = 0;
        let m = StunMessage::parse(&h).unwrap();
        assert_eq!(m.verify_fingerprint(), Err(StunError::NoFingerprint));
        assert_eq!(m.verify_integrity(b"x"), Err(StunError::NoIntegrity));
        assert_eq!(m.username(), None);
        assert_eq!(m.local_ufrag(), None);
    }

    /// Build header + raw attribute bytes with a correct length field.
    fn raw(attrs: &[u8]) -> Vec<u8> {
        let mut v = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        v.extend_from_slice(&[7; 12]);
        v.extend_from_slice(attrs);
        let len = (v.len() - 20) as u16;
        v[2..4].copy_from_slice(&len.to_be_bytes());
        v
    }

    #[test]
    fn attribute_errors() {
        // TLV overruns the message.
        let m = raw(&[0x00, 0x06, 0x00, 0x08, b'a', b'b', b'c', b'd']);
        assert_eq!(StunMessage::parse(&m).unwrap_err(), StunError::BadAttribute);
        // Wrong fixed lengths.
        for (t, l) in [
            (attr::PRIORITY, 8u16),
            (attr::USE_CANDIDATE, 4),
            (attr::ICE_CONTROLLED, 4),
            (attr::ICE_CONTROLLING, 4),
            (attr::MESSAGE_INTEGRITY, 16),
            (attr::FINGERPRINT, 8),
            (attr::XOR_MAPPED_ADDRESS, 12),
        ] {
            let mut a = t.to_be_bytes().to_vec();
            a.extend_from_slice(&l.to_be_bytes());
            a.extend(std::iter::repeat_n(1u8, usize::from(l)));
            let m = raw(&a);
            assert_eq!(
                StunMessage::parse(&m).unwrap_err(),
                StunError::BadAttribute,
                "type {t:#x} len {l}"
            );
        }
        // Attribute after FINGERPRINT.
        let m = raw(&[
            0x80, 0x28, 0, 4, 0, 0, 0, 0, //
            0x00, 0x25, 0, 0,
        ]);
        assert_eq!(StunMessage::parse(&m).unwrap_err(), StunError::BadAttribute);
        // Too many attributes.
        let many: Vec<u8> = std::iter::repeat_n([0x80u8, 0x77, 0, 0], MAX_ATTRIBUTES + 1)
            .flatten()
            .collect();
        assert_eq!(
            StunMessage::parse(&raw(&many)).unwrap_err(),
            StunError::TooManyAttributes
        );
        let ok: Vec<u8> = std::iter::repeat_n([0x80u8, 0x77, 0, 0], MAX_ATTRIBUTES)
            .flatten()
            .collect();
        assert!(StunMessage::parse(&raw(&ok)).is_ok());
        // USERNAME too long.
        let mut a = vec![0x00, 0x06];
        a.extend_from_slice(&((MAX_USERNAME_LEN + 1) as u16).to_be_bytes());
        a.extend(std::iter::repeat_n(b'a', padded(MAX_USERNAME_LEN + 1)));
        assert_eq!(
            StunMessage::parse(&raw(&a)).unwrap_err(),
            StunError::BadUsername
        );
    }

    #[test]
    fn first_occurrence_wins_and_attributes_after_mi_are_ignored() {
        let m = raw(&[
            0x00, 0x24, 0, 4, 0, 0, 0, 1, // PRIORITY 1
            0x00, 0x24, 0, 4, 0, 0, 0, 2, // PRIORITY 2 (ignored)
            0x00, 0x08, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, // MI
            0x00, 0x25, 0, 0, // USE-CANDIDATE after MI: ignored
            0x00, 0x06, 0, 3, b'a', b':', b'b', 0, // USERNAME after MI: ignored
        ]);
        let p = StunMessage::parse(&m).unwrap();
        assert_eq!(p.priority(), Some(1));
        assert!(p.has_integrity());
        assert!(!p.has_use_candidate());
        assert_eq!(p.username(), None);
        assert!(!p.has_fingerprint());
    }

    #[test]
    fn username_split() {
        for (u, local, remote) in [
            (&b"abcd:efgh"[..], Some(&b"abcd"[..]), Some(&b"efgh"[..])),
            (b"abcd:", Some(b"abcd"), Some(b"")),
            (b":efgh", None, Some(b"efgh")),
            (b"abcd", None, None),
            (b"a:b:c", Some(b"a"), Some(b"b:c")),
        ] {
            let mut a = vec![0x00, 0x06, 0, u.len() as u8];
            a.extend_from_slice(u);
            a.resize(4 + padded(u.len()), 0);
            let m = raw(&a);
            let p = StunMessage::parse(&m).unwrap();
            assert_eq!(p.username(), Some(u));
            assert_eq!(p.local_ufrag(), local);
            assert_eq!(p.remote_ufrag(), remote);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(m) = StunMessage::parse(&b) {
                let _ = (m.class(), m.method(), m.transaction_id(), m.username(), m.local_ufrag(),
                         m.remote_ufrag(), m.priority(), m.has_use_candidate(), m.xor_mapped_address(),
                         m.attribute(attr::SOFTWARE));
                let _ = m.verify_fingerprint();
                let _ = m.verify_integrity(b"pwd");
            }
        }

        #[test]
        fn stun_shaped_bytes_never_panic(
            typ in 0u16..0x4000,
            attrs in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..12),
            len_delta in -8i32..8,
        ) {
            let mut body = Vec::new();
            for (t, v) in &attrs {
                body.extend_from_slice(&t.to_be_bytes());
                body.extend_from_slice(&(v.len() as u16).to_be_bytes());
                body.extend_from_slice(v);
                body.resize(padded(body.len()), 0);
            }
            let mut b = typ.to_be_bytes().to_vec();
            let len = (body.len() as i32 + len_delta).clamp(0, 0xffff) as u16;
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            b.extend_from_slice(&[9; 12]);
            b.extend_from_slice(&body);
            if let Ok(m) = StunMessage::parse(&b) {
                let _ = (m.local_ufrag(), m.xor_mapped_address(), m.attribute(0x8022));
                let _ = m.verify_fingerprint();
                let _ = m.verify_integrity(b"pwd");
            }
        }
    }
}
