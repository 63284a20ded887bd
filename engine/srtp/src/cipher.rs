//! Session-key transforms: AES-128-CM + HMAC-SHA1 (RFC 3711 §4.1.1, §4.2) and AES-GCM
//! (RFC 7714). Everything here works in place on caller buffers and never allocates.

use aes::cipher::{generic_array::GenericArray, InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use hmac::{Hmac, Mac};
use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use sha1::Sha1;

use crate::kdf::Prf;
use crate::SrtpError;

type HmacSha1 = Hmac<Sha1>;
type Aes128Ctr = ctr::Ctr128BE<Aes128>;
type Aes128CtrCore = ctr::CtrCore<Aes128, ctr::flavors::Ctr128BE>;

/// HMAC-SHA1 truncated tag length for `_80` profiles.
pub(crate) const CM_TAG_LEN: usize = 10;
/// AES-GCM tag length.
pub(crate) const GCM_TAG_LEN: usize = 16;
/// AES-CM session salt length (112 bits).
const CM_SALT_LEN: usize = 14;
/// AES-GCM session salt length (96 bits).
const GCM_SALT_LEN: usize = 12;
/// HMAC-SHA1 session authentication key length.
const CM_AUTH_KEY_LEN: usize = 20;

/// Constant-time equality of two byte strings of equal length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    core::hint::black_box(diff) == 0
}

/// Session keys of one AES-CM/HMAC-SHA1 stream (SRTP or SRTCP).
pub(crate) struct CmKeys {
    /// Expanded AES key, cloned per packet (no key schedule per packet).
    aes: Aes128,
    salt: [u8; CM_SALT_LEN],
    /// HMAC keyed once (inner/outer pads absorbed); cloned per packet.
    mac: HmacSha1,
}

impl CmKeys {
    /// Derives the session keys with the given labels (encryption, authentication, salt).
    pub(crate) fn derive(
        prf: &Prf,
        master_salt: &[u8],
        labels: (u8, u8, u8),
    ) -> Result<Self, SrtpError> {
        let mut k = [0u8; 16];
        let mut a = [0u8; CM_AUTH_KEY_LEN];
        let mut salt = [0u8; CM_SALT_LEN];
        prf.derive(master_salt, labels.0, &mut k)?;
        prf.derive(master_salt, labels.1, &mut a)?;
        prf.derive(master_salt, labels.2, &mut salt)?;
        Ok(Self::from_session(&k, &a, &salt))
    }

    /// Builds the transform from session keys directly (test vectors).
    pub(crate) fn from_session(
        key: &[u8; 16],
        auth: &[u8; CM_AUTH_KEY_LEN],
        salt: &[u8; CM_SALT_LEN],
    ) -> Self {
        CmKeys {
            aes: Aes128::new(GenericArray::from_slice(key)),
            salt: *salt,
            // INVARIANT: HMAC accepts keys of any length.
            mac: <HmacSha1 as Mac>::new_from_slice(auth).expect("hmac takes any key length"),
        }
    }

    /// XORs the AES-CM keystream for (ssrc, index) into `data` (RFC 3711 §4.1.1):
    /// `IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16)`.
    pub(crate) fn apply_keystream(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..CM_SALT_LEN].copy_from_slice(&self.salt);
        for (d, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *d ^= s;
        }
        // index is at most 48 bits: bytes 2..8 of its big-endian u64.
        for (d, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *d ^= s;
        }
        let core = Aes128CtrCore::inner_iv_init(self.aes.clone(), GenericArray::from_slice(&iv));
        let mut ctr = Aes128Ctr::from_core(core);
        ctr.apply_keystream(data);
    }

    /// HMAC-SHA1 over `a || b`, truncated to 80 bits.
    pub(crate) fn tag(&self, a: &[u8], b: &[u8]) -> [u8; CM_TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(a);
        mac.update(b);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; CM_TAG_LEN];
        out.copy_from_slice(&full[..CM_TAG_LEN]);
        out
    }

    /// Verifies `tag` against HMAC-SHA1(a || b) in constant time.
    pub(crate) fn verify(&self, a: &[u8], b: &[u8], tag: &[u8]) -> Result<(), SrtpError> {
        if ct_eq(&self.tag(a, b), tag) {
            Ok(())
        } else {
            Err(SrtpError::AuthFailed)
        }
    }
}

/// Session keys of one AES-GCM stream (SRTP or SRTCP).
pub(crate) struct GcmKeys {
    key: LessSafeKey,
    salt: [u8; GCM_SALT_LEN],
}

impl GcmKeys {
    /// Derives the session key (`key_len` bytes: 16 or 32) and salt with the given labels.
    pub(crate) fn derive(
        prf: &Prf,
        master_salt: &[u8],
        key_len: usize,
        labels: (u8, u8),
    ) -> Result<Self, SrtpError> {
        let mut k = [0u8; 32];
        let k = k.get_mut(..key_len).ok_or(SrtpError::BadKeyLength)?;
        let mut salt = [0u8; GCM_SALT_LEN];
        prf.derive(master_salt, labels.0, k)?;
        prf.derive(master_salt, labels.1, &mut salt)?;
        Self::from_session(k, &salt)
    }

    /// Builds the transform from a session key (16 or 32 bytes) and salt directly.
    pub(crate) fn from_session(key: &[u8], salt: &[u8; GCM_SALT_LEN]) -> Result<Self, SrtpError> {
        let alg = match key.len() {
            16 => &aead::AES_128_GCM,
            32 => &aead::AES_256_GCM,
            _ => return Err(SrtpError::BadKeyLength),
        };
        let key = UnboundKey::new(alg, key).map_err(|_| SrtpError::BadKeyLength)?;
        Ok(GcmKeys {
            key: LessSafeKey::new(key),
            salt: *salt,
        })
    }

    /// RFC 7714 §8.1: `(0x0000 || SSRC || ROC || SEQ) XOR salt`.
    fn rtp_nonce(&self, ssrc: u32, index: u64) -> Nonce {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
        for (d, s) in iv.iter_mut().zip(&self.salt) {
            *d ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }

    /// RFC 7714 §9.1: `(0x0000 || SSRC || 0x0000 || 0 || SRTCP index) XOR salt`.
    fn rtcp_nonce(&self, ssrc: u32, index: u32) -> Nonce {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[8..12].copy_from_slice(&(index & 0x7fff_ffff).to_be_bytes());
        for (d, s) in iv.iter_mut().zip(&self.salt) {
            *d ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }

    /// Encrypts `data` in place; returns the tag.
    pub(crate) fn seal_rtp(
        &self,
        ssrc: u32,
        index: u64,
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; GCM_TAG_LEN], SrtpError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(self.rtp_nonce(ssrc, index), Aad::from(aad), data)
            // ring refuses only inputs over 2^36 bytes, impossible for a datagram.
            .map_err(|_| SrtpError::Malformed)?;
        let mut out = [0u8; GCM_TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `ct_and_tag` (ciphertext followed by the 16-byte tag) in place;
    /// returns the plaintext length.
    pub(crate) fn open_rtp(
        &self,
        ssrc: u32,
        index: u64,
        aad: &[u8],
        ct_and_tag: &mut [u8],
    ) -> Result<usize, SrtpError> {
        self.key
            .open_in_place(self.rtp_nonce(ssrc, index), Aad::from(aad), ct_and_tag)
            .map(|p| p.len())
            .map_err(|_| SrtpError::AuthFailed)
    }

    /// SRTCP seal with the 12-byte AAD `header(8) || E|index`.
    pub(crate) fn seal_rtcp(
        &self,
        ssrc: u32,
        index: u32,
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; GCM_TAG_LEN], SrtpError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(self.rtcp_nonce(ssrc, index), Aad::from(aad), data)
            .map_err(|_| SrtpError::Malformed)?;
        let mut out = [0u8; GCM_TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// SRTCP open: `ct_and_tag` holds ciphertext then tag; returns the plaintext length.
    pub(crate) fn open_rtcp(
        &self,
        ssrc: u32,
        index: u32,
        aad: &[u8],
        ct_and_tag: &mut [u8],
    ) -> Result<usize, SrtpError> {
        self.key
            .open_in_place(self.rtcp_nonce(ssrc, index), Aad::from(aad), ct_and_tag)
            .map(|p| p.len())
            .map_err(|_| SrtpError::AuthFailed)
    }

    /// SRTCP with E = 0: authenticate-only, everything is AAD and the plaintext is empty.
    pub(crate) fn verify_rtcp_unencrypted(
        &self,
        ssrc: u32,
        index: u32,
        aad: &[u8],
        tag: &[u8; GCM_TAG_LEN],
    ) -> Result<(), SrtpError> {
        let tag = Tag::from(*tag);
        self.key
            .open_in_place_separate_tag(
                self.rtcp_nonce(ssrc, index),
                Aad::from(aad),
                tag,
                &mut [],
                0..,
            )
            .map(|_| ())
            .map_err(|_| SrtpError::AuthFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 Appendix B.2: AES-CM keystream for session key 2B7E..., salt F0F1...FD,
    /// SSRC 0, index 0 (the IV's low 16 bits are the block counter).
    #[test]
    fn rfc3711_b2_keystream() {
        let key: [u8; 16] = hex("2B7E151628AED2A6ABF7158809CF4F3C").try_into().unwrap();
        let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
        let k = CmKeys::from_session(&key, &[0; 20], &salt);
        let mut ks = [0u8; 48];
        k.apply_keystream(0, 0, &mut ks);
        assert_eq!(
            ks.to_vec(),
            hex(
                "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB
                 41E95B3BB0A2E8DD477901E4FCA894C0"
            )
        );
    }

    #[test]
    fn rfc7714_nonces() {
        let salt: [u8; 12] = hex("517569642070726f2071756f").try_into().unwrap();
        let g = GcmKeys::from_session(&[0; 16], &salt).unwrap();
        let n = g.rtp_nonce(0x5501a0b2, 0xf17b);
        assert_eq!(n.as_ref().to_vec(), hex("51753c6580c2726f20718414"));
        let n = g.rtcp_nonce(0x4d617273, 0x5d4);
        assert_eq!(n.as_ref().to_vec(), hex("517524055203726f207170bb"));
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn gcm_bad_key_len() {
        assert!(matches!(
            GcmKeys::from_session(&[0; 24], &[0; 12]),
            Err(SrtpError::BadKeyLength)
        ));
    }
}
