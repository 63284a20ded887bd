//! SRTP key derivation (RFC 3711 §4.3, AES-CM PRF; RFC 7714 §11 and RFC 6188 for the
//! AES-256 master keys of `AEAD_AES_256_GCM`). Key derivation rate is 0: `r = 0`.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes256};

use crate::SrtpError;

/// RFC 3711 §4.3.2 label: SRTP encryption key.
pub(crate) const LABEL_SRTP_ENCRYPTION: u8 = 0x00;
/// RFC 3711 §4.3.2 label: SRTP authentication key.
pub(crate) const LABEL_SRTP_AUTH: u8 = 0x01;
/// RFC 3711 §4.3.2 label: SRTP salting key.
pub(crate) const LABEL_SRTP_SALT: u8 = 0x02;
/// RFC 3711 §4.3.2 label: SRTCP encryption key.
pub(crate) const LABEL_SRTCP_ENCRYPTION: u8 = 0x03;
/// RFC 3711 §4.3.2 label: SRTCP authentication key.
pub(crate) const LABEL_SRTCP_AUTH: u8 = 0x04;
/// RFC 3711 §4.3.2 label: SRTCP salting key.
pub(crate) const LABEL_SRTCP_SALT: u8 = 0x05;

/// Largest master salt accepted by the PRF input (112 bits).
const MAX_SALT_LEN: usize = 14;

/// The AES-CM PRF keyed with the master key.
// Setup-time only, lives on the stack for the duration of `SrtpContext::new`.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Prf {
    Aes128(Aes128),
    Aes256(Aes256),
}

impl Prf {
    /// Keys the PRF with a 16- or 32-byte master key.
    pub(crate) fn new(master_key: &[u8]) -> Result<Self, SrtpError> {
        match master_key.len() {
            16 => Ok(Prf::Aes128(Aes128::new(GenericArray::from_slice(
                master_key,
            )))),
            32 => Ok(Prf::Aes256(Aes256::new(GenericArray::from_slice(
                master_key,
            )))),
            _ => Err(SrtpError::BadKeyLength),
        }
    }

    fn encrypt_block(&self, block: &mut [u8; 16]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Prf::Aes128(c) => c.encrypt_block(b),
            Prf::Aes256(c) => c.encrypt_block(b),
        }
    }

    /// Fills `out` with the session key for `label`:
    /// `AES-CM(master_key, (master_salt XOR (label << 48)) << 16)` keystream prefix.
    ///
    /// A 12-byte (GCM) master salt is zero-extended to 112 bits on the right, as libsrtp does.
    pub(crate) fn derive(
        &self,
        master_salt: &[u8],
        label: u8,
        out: &mut [u8],
    ) -> Result<(), SrtpError> {
        if master_salt.len() > MAX_SALT_LEN {
            return Err(SrtpError::BadKeyLength);
        }
        let mut x = [0u8; 16];
        x[..master_salt.len()].copy_from_slice(master_salt);
        // key_id = label || r (r = 0, 48 bits) is right-aligned in the 112-bit salt:
        // the label byte lands at octet 14 - 7 = 7.
        x[7] ^= label;
        for (i, chunk) in out.chunks_mut(16).enumerate() {
            let mut block = x;
            // The block counter occupies the low 16 bits; session keys need at most 2 blocks.
            let ctr = u16::try_from(i).map_err(|_| SrtpError::BadKeyLength)?;
            block[14..16].copy_from_slice(&ctr.to_be_bytes());
            self.encrypt_block(&mut block);
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 Appendix B.3.
    #[test]
    fn rfc3711_b3_key_derivation() {
        let prf = Prf::new(&hex("E1F97A0D3E018BE0D64FA32C06DE4139")).unwrap();
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut k = [0u8; 16];
        prf.derive(&salt, LABEL_SRTP_ENCRYPTION, &mut k).unwrap();
        assert_eq!(k.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut s = [0u8; 14];
        prf.derive(&salt, LABEL_SRTP_SALT, &mut s).unwrap();
        assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut a = [0u8; 94];
        prf.derive(&salt, LABEL_SRTP_AUTH, &mut a).unwrap();
        assert_eq!(
            a.to_vec(),
            hex(
                "CEBE321F6FF7716B6FD4AB49AF256A15 6D38BAA48F0A0ACF3C34E2359E6CDBCE
                 E049646C43D9327AD175578EF7227098 6371C10C9A369AC2F94A8C5FBCDDDC25
                 6D6E919A48B610EF17C2041E47403576 6B68642C59BBFC2F34DB60DBDFB2"
            )
        );
    }

    /// RFC 6188 §7.2 (AES-256 PRF; same construction as for AEAD_AES_256_GCM master keys).
    #[test]
    fn rfc6188_aes256_key_derivation() {
        let prf = Prf::new(&hex(
            "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6",
        ))
        .unwrap();
        let salt = hex("3b04803de51ee7c96423ab5b78d2");
        let mut k = [0u8; 32];
        prf.derive(&salt, LABEL_SRTP_ENCRYPTION, &mut k).unwrap();
        assert_eq!(
            k.to_vec(),
            hex("5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4")
        );
        let mut s = [0u8; 14];
        prf.derive(&salt, LABEL_SRTP_SALT, &mut s).unwrap();
        assert_eq!(s.to_vec(), hex("fa31791685ca444a9e07c6c64e93"));
        let mut a = [0u8; 20];
        prf.derive(&salt, LABEL_SRTP_AUTH, &mut a).unwrap();
        assert_eq!(a.to_vec(), hex("fd9c32d39ed5fbb5a9dc96b30818454d1313dc05"));
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(matches!(Prf::new(&[0; 15]), Err(SrtpError::BadKeyLength)));
        assert!(matches!(Prf::new(&[0; 24]), Err(SrtpError::BadKeyLength)));
        let prf = Prf::new(&[0; 16]).unwrap();
        let mut out = [0u8; 16];
        assert_eq!(
            prf.derive(&[0; 15], 0, &mut out),
            Err(SrtpError::BadKeyLength)
        );
    }
}
