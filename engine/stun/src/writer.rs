//! Allocation-free STUN message writer.

use std::net::{IpAddr, SocketAddr};

use ring::hmac;

use crate::message::{
    attr, message_type, padded, Class, ATTR_HDR_LEN, FINGERPRINT_XOR, FP_LEN, HEADER_LEN,
    MAGIC_COOKIE, MAX_USERNAME_LEN, METHOD_BINDING, MI_LEN,
};
use crate::StunError;

/// Largest Binding success response [`write_binding_success`] produces: header 20 +
/// XOR-MAPPED-ADDRESS (IPv6) 24 + MESSAGE-INTEGRITY 24 + FINGERPRINT 8 = 76 bytes
/// (64 for IPv4). An output buffer this large never gets [`StunError::BufferTooSmall`].
pub const MAX_BINDING_SUCCESS_LEN: usize = HEADER_LEN + 24 + 24 + 8;

/// Exact size of the Binding success response [`write_binding_success`] writes for `mapped`
/// (64 bytes for IPv4, 76 for IPv6; IPv4-mapped IPv6 addresses are written as IPv4).
pub fn binding_success_len(mapped: SocketAddr) -> usize {
    let addr_len = match mapped.ip().to_canonical() {
        IpAddr::V4(_) => 8,
        IpAddr::V6(_) => 20,
    };
    HEADER_LEN + ATTR_HDR_LEN + addr_len + ATTR_HDR_LEN + MI_LEN + ATTR_HDR_LEN + FP_LEN
}

/// Writes one STUN message into a caller buffer, attribute by attribute, keeping the header
/// length field current so MESSAGE-INTEGRITY and FINGERPRINT can be computed in place.
/// Every method fails with [`StunError::BufferTooSmall`] instead of writing past the buffer.
#[derive(Debug)]
pub struct StunWriter<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl<'a> StunWriter<'a> {
    /// Start a message of `class`/`method` (12 bits; higher bits ignored) with transaction id
    /// `txid`.
    pub fn new(
        out: &'a mut [u8],
        class: Class,
        method: u16,
        txid: &[u8; 12],
    ) -> Result<Self, StunError> {
        let hdr = out.get_mut(..HEADER_LEN).ok_or(StunError::BufferTooSmall)?;
        hdr[0..2].copy_from_slice(&message_type(class, method).to_be_bytes());
        hdr[2..4].copy_from_slice(&[0, 0]);
        hdr[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        hdr[8..20].copy_from_slice(txid);
        Ok(StunWriter {
            out,
            len: HEADER_LEN,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a writer holds at least the header.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn set_length(&mut self, body_len: usize) -> Result<(), StunError> {
        let l = u16::try_from(body_len).map_err(|_| StunError::BufferTooSmall)?;
        self.out
            .get_mut(2..4)
            .ok_or(StunError::BufferTooSmall)?
            .copy_from_slice(&l.to_be_bytes());
        Ok(())
    }

    /// Append an attribute with zero padding.
    pub fn attribute(&mut self, typ: u16, value: &[u8]) -> Result<(), StunError> {
        self.attribute_with_padding(typ, value, 0)
    }

    /// Append an attribute, padding its value to 4 bytes with `pad` (RFC 5769 vectors use 0x20).
    pub fn attribute_with_padding(
        &mut self,
        typ: u16,
        value: &[u8],
        pad: u8,
    ) -> Result<(), StunError> {
        let vlen = u16::try_from(value.len()).map_err(|_| StunError::BufferTooSmall)?;
        let start = self.len;
        let end = start + ATTR_HDR_LEN + padded(value.len());
        let dst = self
            .out
            .get_mut(start..end)
            .ok_or(StunError::BufferTooSmall)?;
        let (hdr, rest) = dst.split_at_mut(ATTR_HDR_LEN);
        hdr[0..2].copy_from_slice(&typ.to_be_bytes());
        hdr[2..4].copy_from_slice(&vlen.to_be_bytes());
        let (val, padding) = rest.split_at_mut(value.len());
        val.copy_from_slice(value);
        padding.fill(pad);
        self.set_length(end - HEADER_LEN)?;
        self.len = end;
        Ok(())
    }

    /// Append XOR-MAPPED-ADDRESS for `addr` (IPv4-mapped IPv6 is written as IPv4, since that is
    /// the family the peer actually sent from).
    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> Result<(), StunError> {
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let p = port.to_be_bytes();
        match addr.ip().to_canonical() {
            IpAddr::V4(ip) => {
                let o = ip.octets();
                let v = [
                    0,
                    1,
                    p[0],
                    p[1],
                    o[0] ^ cookie[0],
                    o[1] ^ cookie[1],
                    o[2] ^ cookie[2],
                    o[3] ^ cookie[3],
                ];
                self.attribute(attr::XOR_MAPPED_ADDRESS, &v)
            }
            IpAddr::V6(ip) => {
                let txid: [u8; 12] = self
                    .out
                    .get(8..20)
                    .and_then(|t| t.try_into().ok())
                    .ok_or(StunError::BufferTooSmall)?;
                let o = ip.octets();
                let mut v = [0u8; 20];
                v[1] = 2;
                v[2] = p[0];
                v[3] = p[1];
                for (i, b) in o.iter().enumerate() {
                    let k = if i < 4 { cookie[i] } else { txid[i - 4] };
                    v[4 + i] = b ^ k;
                }
                self.attribute(attr::XOR_MAPPED_ADDRESS, &v)
            }
        }
    }

    /// Append MESSAGE-INTEGRITY: HMAC-SHA1 over everything written so far, with the header
    /// length already covering the MESSAGE-INTEGRITY attribute (RFC 8489 §14.5).
    pub fn message_integrity(&mut self, key: &hmac::Key) -> Result<(), StunError> {
        let start = self.len;
        let end = start + ATTR_HDR_LEN + MI_LEN;
        if self.out.len() < end {
            return Err(StunError::BufferTooSmall);
        }
        self.set_length(end - HEADER_LEN)?;
        let covered = self.out.get(..start).ok_or(StunError::BufferTooSmall)?;
        let tag = hmac::sign(key, covered);
        let dst = self
            .out
            .get_mut(start..end)
            .ok_or(StunError::BufferTooSmall)?;
        dst[0..2].copy_from_slice(&attr::MESSAGE_INTEGRITY.to_be_bytes());
        dst[2..4].copy_from_slice(&(MI_LEN as u16).to_be_bytes());
        dst[4..].copy_from_slice(tag.as_ref());
        self.len = end;
        Ok(())
    }

    /// Append FINGERPRINT: CRC-32 over everything written so far (length covering FINGERPRINT)
    /// xor 0x5354554e. Must be the last attribute.
    pub fn fingerprint(&mut self) -> Result<(), StunError> {
        let start = self.len;
        let end = start + ATTR_HDR_LEN + FP_LEN;
        if self.out.len() < end {
            return Err(StunError::BufferTooSmall);
        }
        self.set_length(end - HEADER_LEN)?;
        let covered = self.out.get(..start).ok_or(StunError::BufferTooSmall)?;
        let crc = crc32fast::hash(covered) ^ FINGERPRINT_XOR;
        let dst = self
            .out
            .get_mut(start..end)
            .ok_or(StunError::BufferTooSmall)?;
        dst[0..2].copy_from_slice(&attr::FINGERPRINT.to_be_bytes());
        dst[2..4].copy_from_slice(&(FP_LEN as u16).to_be_bytes());
        dst[4..].copy_from_slice(&crc.to_be_bytes());
        self.len = end;
        Ok(())
    }

    /// Finish; returns the message length (`out[..len]` is the message).
    pub fn finish(self) -> usize {
        self.len
    }
}

/// Write a Binding success response (XOR-MAPPED-ADDRESS for `mapped`, MESSAGE-INTEGRITY with
/// `key`, FINGERPRINT) into out. Returns its length ([`binding_success_len`]: 64 bytes for IPv4,
/// 76 for IPv6). No SOFTWARE attribute is sent (keeps replies small).
pub fn write_binding_success(
    out: &mut [u8],
    txid: &[u8; 12],
    mapped: SocketAddr,
    key: &[u8],
) -> Result<usize, StunError> {
    write_binding_success_with_key(out, txid, mapped, &crate::integrity_key(key))
}

/// [`write_binding_success`] with a precomputed HMAC-SHA1 key (hot path; no allocation).
pub fn write_binding_success_with_key(
    out: &mut [u8],
    txid: &[u8; 12],
    mapped: SocketAddr,
    key: &hmac::Key,
) -> Result<usize, StunError> {
    if out.len() < binding_success_len(mapped) {
        return Err(StunError::BufferTooSmall);
    }
    let mut w = StunWriter::new(out, Class::SuccessResponse, METHOD_BINDING, txid)?;
    w.xor_mapped_address(mapped)?;
    w.message_integrity(key)?;
    w.fingerprint()?;
    Ok(w.finish())
}

/// Write a Binding request as an ICE controlling agent would (USERNAME "remote_ufrag:local_ufrag"
/// given as `username`, PRIORITY, ICE-CONTROLLING(tiebreaker), optional USE-CANDIDATE,
/// MESSAGE-INTEGRITY with `key`, FINGERPRINT). For test peers / load tool.
///
/// `username` longer than [`MAX_USERNAME_LEN`] gives [`StunError::BadUsername`].
pub fn write_binding_request(
    out: &mut [u8],
    txid: &[u8; 12],
    username: &[u8],
    key: &[u8],
    priority: u32,
    tiebreaker: u64,
    use_candidate: bool,
) -> Result<usize, StunError> {
    write_binding_request_with_key(
        out,
        txid,
        username,
        &crate::integrity_key(key),
        priority,
        tiebreaker,
        use_candidate,
    )
}

/// [`write_binding_request`] with a precomputed HMAC-SHA1 key.
pub fn write_binding_request_with_key(
    out: &mut [u8],
    txid: &[u8; 12],
    username: &[u8],
    key: &hmac::Key,
    priority: u32,
    tiebreaker: u64,
    use_candidate: bool,
) -> Result<usize, StunError> {
    if username.len() > MAX_USERNAME_LEN {
        return Err(StunError::BadUsername);
    }
    let mut w = StunWriter::new(out, Class::Request, METHOD_BINDING, txid)?;
    w.attribute(attr::USERNAME, username)?;
    w.attribute(attr::PRIORITY, &priority.to_be_bytes())?;
    w.attribute(attr::ICE_CONTROLLING, &tiebreaker.to_be_bytes())?;
    if use_candidate {
        w.attribute(attr::USE_CANDIDATE, &[])?;
    }
    w.message_integrity(key)?;
    w.fingerprint()?;
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::*;
    use crate::StunMessage;

    fn key() -> hmac::Key {
        crate::integrity_key(RFC5769_PWD)
    }

    #[test]
    fn rfc5769_request_byte_exact() {
        let mut out = [0u8; 256];
        let mut w =
            StunWriter::new(&mut out, Class::Request, METHOD_BINDING, &RFC5769_TXID).unwrap();
        w.attribute(attr::SOFTWARE, b"STUN test client").unwrap();
        w.attribute(attr::PRIORITY, &0x6e0001ffu32.to_be_bytes())
            .unwrap();
        w.attribute(attr::ICE_CONTROLLED, &0x932ff9b151263b36u64.to_be_bytes())
            .unwrap();
        w.attribute_with_padding(attr::USERNAME, b"evtj:h6vY", 0x20)
            .unwrap();
        w.message_integrity(&key()).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(&out[..n], &hex(RFC5769_REQUEST)[..]);
    }

    #[test]
    fn rfc5769_responses_byte_exact() {
        for (vector, mapped) in [
            (RFC5769_RESPONSE_V4, "192.0.2.1:32853"),
            (
                RFC5769_RESPONSE_V6,
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            ),
        ] {
            let mut out = [0u8; 256];
            let mut w = StunWriter::new(
                &mut out,
                Class::SuccessResponse,
                METHOD_BINDING,
                &RFC5769_TXID,
            )
            .unwrap();
            w.attribute_with_padding(attr::SOFTWARE, b"test vector", 0x20)
                .unwrap();
            w.xor_mapped_address(mapped.parse().unwrap()).unwrap();
            w.message_integrity(&key()).unwrap();
            w.fingerprint().unwrap();
            let n = w.finish();
            assert_eq!(&out[..n], &hex(vector)[..], "{mapped}");
        }
    }

    #[test]
    fn binding_success_matches_rfc_xor_mapped_address_bytes() {
        for (vector, mapped) in [
            (RFC5769_RESPONSE_V4, "192.0.2.1:32853"),
            (
                RFC5769_RESPONSE_V6,
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            ),
        ] {
            let addr: SocketAddr = mapped.parse().unwrap();
            let mut out = [0u8; MAX_BINDING_SUCCESS_LEN];
            let n = write_binding_success(&mut out, &RFC5769_TXID, addr, RFC5769_PWD).unwrap();
            assert_eq!(n, binding_success_len(addr));
            let v = hex(vector);
            let rfc = StunMessage::parse(&v).unwrap();
            let ours = StunMessage::parse(&out[..n]).unwrap();
            assert_eq!(
                ours.attribute(attr::XOR_MAPPED_ADDRESS),
                rfc.attribute(attr::XOR_MAPPED_ADDRESS)
            );
            assert_eq!(ours.class(), Class::SuccessResponse);
            assert_eq!(ours.method(), METHOD_BINDING);
            assert_eq!(ours.transaction_id(), &RFC5769_TXID);
            assert_eq!(ours.xor_mapped_address(), Some(addr));
            ours.verify_fingerprint().unwrap();
            ours.verify_integrity(RFC5769_PWD).unwrap();
            assert_eq!(
                ours.verify_integrity(b"other"),
                Err(StunError::BadIntegrity)
            );
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_written_as_ipv4() {
        let addr: SocketAddr = "[::ffff:192.0.2.1]:32853".parse().unwrap();
        let mut out = [0u8; MAX_BINDING_SUCCESS_LEN];
        let n = write_binding_success(&mut out, &RFC5769_TXID, addr, RFC5769_PWD).unwrap();
        assert_eq!(n, 64);
        let m = StunMessage::parse(&out[..n]).unwrap();
        assert_eq!(
            m.xor_mapped_address(),
            Some("192.0.2.1:32853".parse().unwrap())
        );
    }

    #[test]
    fn request_round_trip() {
        let mut out = [0u8; 256];
        for uc in [false, true] {
            let n = write_binding_request(
                &mut out,
                &[3; 12],
                b"srvU:cliU",
                b"0123456789012345678901",
                0x7e00_00ff,
                0xdead_beef_cafe_babe,
                uc,
            )
            .unwrap();
            let m = StunMessage::parse(&out[..n]).unwrap();
            assert_eq!(m.class(), Class::Request);
            assert_eq!(m.method(), METHOD_BINDING);
            assert_eq!(m.username(), Some(&b"srvU:cliU"[..]));
            assert_eq!(m.local_ufrag(), Some(&b"srvU"[..]));
            assert_eq!(m.priority(), Some(0x7e00_00ff));
            assert_eq!(m.ice_controlling(), Some(0xdead_beef_cafe_babe));
            assert_eq!(m.ice_controlled(), None);
            assert_eq!(m.has_use_candidate(), uc);
            m.verify_fingerprint().unwrap();
            m.verify_integrity(b"0123456789012345678901").unwrap();
        }
    }

    #[test]
    fn buffer_too_small_never_panics() {
        let addr: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        for size in 0..MAX_BINDING_SUCCESS_LEN {
            let mut out = vec![0u8; size];
            assert_eq!(
                write_binding_success(&mut out, &[1; 12], addr, b"k"),
                Err(StunError::BufferTooSmall),
                "size {size}"
            );
        }
        let full = write_binding_request(&mut [0u8; 256], &[1; 12], b"abcd:efgh", b"k", 1, 2, true)
            .unwrap();
        for size in 0..full {
            let mut out = vec![0u8; size];
            assert_eq!(
                write_binding_request(&mut out, &[1; 12], b"abcd:efgh", b"k", 1, 2, true),
                Err(StunError::BufferTooSmall),
                "size {size}"
            );
        }
        let long = vec![b'a'; MAX_USERNAME_LEN + 1];
        assert_eq!(
            write_binding_request(&mut [0u8; 1024], &[1; 12], &long, b"k", 1, 2, false),
            Err(StunError::BadUsername)
        );
        // A value longer than a u16 cannot be encoded.
        let huge = vec![0u8; 70_000];
        let mut big = vec![0u8; 80_000];
        let mut w = StunWriter::new(&mut big, Class::Request, 1, &[0; 12]).unwrap();
        assert_eq!(w.attribute(0x8022, &huge), Err(StunError::BufferTooSmall));
    }
}
