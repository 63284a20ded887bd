//! Splitting the DTLS-SRTP exported keying material (RFC 5764 §4.2).

use crate::{Profile, SrtpError};

/// The four parts of RFC 5764 keying material. The DTLS client protects what it sends with
/// the client key/salt and the server with the server key/salt, so the SFU (DTLS server)
/// builds its send context from `server_*` and its receive context from `client_*`
/// (and the other way round when it is the DTLS client).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyingMaterial {
    /// `client_write_SRTP_master_key` ([`Profile::master_key_len`] bytes).
    pub client_key: Vec<u8>,
    /// `client_write_SRTP_master_salt` ([`Profile::master_salt_len`] bytes).
    pub client_salt: Vec<u8>,
    /// `server_write_SRTP_master_key`.
    pub server_key: Vec<u8>,
    /// `server_write_SRTP_master_salt`.
    pub server_salt: Vec<u8>,
}

impl std::fmt::Debug for KeyingMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("KeyingMaterial").finish_non_exhaustive()
    }
}

/// Split RFC 5764 exported keying material (client_key|server_key|client_salt|server_salt) into
/// its four parts for `profile`. `material` must be exactly
/// [`Profile::keying_material_len`] bytes, else [`SrtpError::BadKeyLength`].
pub fn split_keying_material(
    profile: Profile,
    material: &[u8],
) -> Result<KeyingMaterial, SrtpError> {
    if material.len() != profile.keying_material_len() {
        return Err(SrtpError::BadKeyLength);
    }
    let k = profile.master_key_len();
    let (client_key, rest) = material.split_at(k);
    let (server_key, rest) = rest.split_at(k);
    let (client_salt, server_salt) = rest.split_at(profile.master_salt_len());
    Ok(KeyingMaterial {
        client_key: client_key.to_vec(),
        client_salt: client_salt.to_vec(),
        server_key: server_key.to_vec(),
        server_salt: server_salt.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_in_rfc5764_order() {
        for p in [
            Profile::Aes128CmHmacSha1_80,
            Profile::AeadAes128Gcm,
            Profile::AeadAes256Gcm,
        ] {
            let m: Vec<u8> = (0..p.keying_material_len() as u8).collect();
            let km = split_keying_material(p, &m).unwrap();
            let (k, s) = (p.master_key_len(), p.master_salt_len());
            assert_eq!(km.client_key, m[..k]);
            assert_eq!(km.server_key, m[k..2 * k]);
            assert_eq!(km.client_salt, m[2 * k..2 * k + s]);
            assert_eq!(km.server_salt, m[2 * k + s..]);
            // The parts build contexts.
            crate::SrtpContext::new(p, &km.client_key, &km.client_salt).unwrap();
            crate::SrtpContext::new(p, &km.server_key, &km.server_salt).unwrap();
            for n in [0, m.len() - 1, m.len() + 1] {
                let v = vec![0u8; n];
                assert_eq!(split_keying_material(p, &v), Err(SrtpError::BadKeyLength));
            }
        }
    }

    #[test]
    fn debug_hides_keys() {
        let km = split_keying_material(Profile::AeadAes128Gcm, &[0xab; 56]).unwrap();
        assert!(!format!("{km:?}").contains("171"));
    }
}
