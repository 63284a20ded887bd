//! [`SrtpContext`]: one direction of one transport's SRTP + SRTCP.

use crate::cipher::{CmKeys, GcmKeys, CM_TAG_LEN, GCM_TAG_LEN};
use crate::header::{parse_rtcp, parse_rtp, RTCP_CLEAR_LEN};
use crate::kdf::{
    Prf, LABEL_SRTCP_AUTH, LABEL_SRTCP_ENCRYPTION, LABEL_SRTCP_SALT, LABEL_SRTP_AUTH,
    LABEL_SRTP_ENCRYPTION, LABEL_SRTP_SALT,
};
use crate::replay::{estimate_index, ReplayWindow, SsrcTable};
use crate::{Profile, SrtpError};

/// Largest SRTCP index (31 bits).
const MAX_SRTCP_INDEX: u32 = 0x7fff_ffff;
/// The E (encrypted) flag of the E‖SRTCP-index word.
const SRTCP_E_FLAG: u32 = 0x8000_0000;
/// Size of the E‖SRTCP-index word.
const SRTCP_INDEX_LEN: usize = 4;

/// Session transforms for SRTP and SRTCP.
// Inline on purpose: the keys are used on every packet, boxing would add an indirection.
#[allow(clippy::large_enum_variant)]
enum Keys {
    Cm { rtp: CmKeys, rtcp: CmKeys },
    Gcm { rtp: GcmKeys, rtcp: GcmKeys },
}

/// One direction of one transport's SRTP+SRTCP (holds both session key sets and per-SSRC
/// ROC/replay state).
///
/// Build one per transport and direction: a receive context is used only with the
/// `unprotect_*` methods, a send context only with `protect_*` (the state of the two
/// directions is kept apart anyway, so mixing them is harmless but pointless).
/// All state is allocated in [`SrtpContext::new`]; the per-packet methods never allocate.
pub struct SrtpContext {
    profile: Profile,
    keys: Keys,
    /// Receive: highest authenticated index + replay window per SSRC.
    rtp_rx: SsrcTable<ReplayWindow>,
    /// Send: highest index protected per SSRC (for ROC tracking).
    rtp_tx: SsrcTable<u64>,
    /// Receive: SRTCP replay window per SSRC.
    rtcp_rx: SsrcTable<ReplayWindow>,
    /// Send: next SRTCP index per SSRC.
    rtcp_tx: SsrcTable<u32>,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        f.debug_struct("SrtpContext")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl SrtpContext {
    /// Derives the SRTP and SRTCP session keys (RFC 3711 §4.3, key derivation rate 0) from
    /// the master key and salt, whose lengths must match `profile`
    /// ([`Profile::master_key_len`], [`Profile::master_salt_len`]) or
    /// [`SrtpError::BadKeyLength`] is returned.
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        if master_key.len() != profile.master_key_len()
            || master_salt.len() != profile.master_salt_len()
        {
            return Err(SrtpError::BadKeyLength);
        }
        let prf = Prf::new(master_key)?;
        let keys = match profile {
            Profile::Aes128CmHmacSha1_80 => Keys::Cm {
                rtp: CmKeys::derive(
                    &prf,
                    master_salt,
                    (LABEL_SRTP_ENCRYPTION, LABEL_SRTP_AUTH, LABEL_SRTP_SALT),
                )?,
                rtcp: CmKeys::derive(
                    &prf,
                    master_salt,
                    (LABEL_SRTCP_ENCRYPTION, LABEL_SRTCP_AUTH, LABEL_SRTCP_SALT),
                )?,
            },
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => Keys::Gcm {
                rtp: GcmKeys::derive(
                    &prf,
                    master_salt,
                    master_key.len(),
                    (LABEL_SRTP_ENCRYPTION, LABEL_SRTP_SALT),
                )?,
                rtcp: GcmKeys::derive(
                    &prf,
                    master_salt,
                    master_key.len(),
                    (LABEL_SRTCP_ENCRYPTION, LABEL_SRTCP_SALT),
                )?,
            },
        };
        Ok(Self::with_keys(profile, keys))
    }

    fn with_keys(profile: Profile, keys: Keys) -> Self {
        SrtpContext {
            profile,
            keys,
            rtp_rx: SsrcTable::new(),
            rtp_tx: SsrcTable::new(),
            rtcp_rx: SsrcTable::new(),
            rtcp_tx: SsrcTable::new(),
        }
    }

    /// The profile this context was built for.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Drops all per-SSRC state (ROC, replay window, SRTCP index) kept for `ssrc`, in both
    /// directions, freeing its table entries. A later packet for that SSRC starts afresh
    /// (and, on receive, could replay old indices: only call this for SSRCs that are gone).
    pub fn forget_ssrc(&mut self, ssrc: u32) {
        self.rtp_rx.remove(ssrc);
        self.rtp_tx.remove(ssrc);
        self.rtcp_rx.remove(ssrc);
        self.rtcp_tx.remove(ssrc);
    }

    /// Decrypt+authenticate the SRTP packet in `pkt` in place. Returns the plaintext RTP length
    /// (header + payload, tag removed); the plaintext is pkt[..n]. Replay checked before auth,
    /// committed only after auth ok.
    ///
    /// The ROC is estimated per RFC 3711 Appendix A from the highest authenticated index of
    /// the SSRC; the first packet of an SSRC is taken with ROC 0 and sets `s_l`.
    pub fn unprotect_rtp(&mut self, pkt: &mut [u8]) -> Result<usize, SrtpError> {
        let hdr = parse_rtp(pkt)?;
        let tag_len = self.profile.tag_len();
        let payload_end = pkt
            .len()
            .checked_sub(tag_len)
            .filter(|&e| e >= hdr.len)
            .ok_or(SrtpError::TooShort)?;

        // Replay check (read-only) before spending CPU on authentication.
        let slot = self.rtp_rx.find(hdr.ssrc);
        let index = match slot.and_then(|s| self.rtp_rx.get_mut(s)) {
            Some(w) => {
                let index = estimate_index(w.highest, hdr.seq).ok_or(SrtpError::TooOld)?;
                w.check(index)?;
                index
            }
            None => {
                if self.rtp_rx.is_full() {
                    return Err(SrtpError::TooManySsrcs);
                }
                u64::from(hdr.seq)
            }
        };
        let roc = (index >> 16) as u32;

        match &self.keys {
            Keys::Cm { rtp, .. } => {
                let (auth, tag) = pkt.split_at_mut(payload_end);
                rtp.verify(auth, &roc.to_be_bytes(), tag)?;
                rtp.apply_keystream(hdr.ssrc, index, &mut auth[hdr.len..]);
            }
            Keys::Gcm { rtp, .. } => {
                let (aad, rest) = pkt.split_at_mut(hdr.len);
                rtp.open_rtp(hdr.ssrc, index, aad, rest)?;
            }
        }

        // Authenticated: commit.
        match slot.and_then(|s| self.rtp_rx.get_mut(s)) {
            Some(w) => w.commit(index),
            None => {
                self.rtp_rx
                    .insert(hdr.ssrc, ReplayWindow::starting_at(index))?;
            }
        }
        Ok(payload_end)
    }

    /// buf[..len] holds a plain RTP packet; encrypt in place and append the tag.
    /// buf.len() must be >= len + rtp_overhead. Returns the SRTP length.
    /// Repeated transmission of the same seq (retransmission) is allowed (no tx replay check).
    /// ROC for the SSRC is tracked internally from the seq numbers given (handle wrap: seq
    /// going 65535 -> 0 bumps ROC).
    ///
    /// The first packet of an SSRC is sent with ROC 0. [`SrtpError::TooOld`] is returned for a
    /// seq that would fall before the first index sent (ROC -1) or past the 48-bit index space.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.profile.tag_len();
        let plain = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
        let hdr = parse_rtp(plain)?;
        let out_len = len + tag_len;
        if buf.len() < out_len {
            return Err(SrtpError::BufferTooSmall);
        }

        let index = match self.rtp_tx.find(hdr.ssrc) {
            Some(slot) => {
                // INVARIANT: `find` returned an in-range slot.
                let highest = self.rtp_tx.get_mut(slot).expect("slot from find");
                let index = estimate_index(*highest, hdr.seq).ok_or(SrtpError::TooOld)?;
                if index > *highest {
                    *highest = index;
                }
                index
            }
            None => {
                let index = u64::from(hdr.seq);
                self.rtp_tx.insert(hdr.ssrc, index)?;
                index
            }
        };
        let roc = (index >> 16) as u32;

        match &self.keys {
            Keys::Cm { rtp, .. } => {
                let (data, rest) = buf.split_at_mut(len);
                rtp.apply_keystream(hdr.ssrc, index, &mut data[hdr.len..]);
                let tag = rtp.tag(data, &roc.to_be_bytes());
                rest[..CM_TAG_LEN].copy_from_slice(&tag);
            }
            Keys::Gcm { rtp, .. } => {
                let (aad, rest) = buf.split_at_mut(hdr.len);
                let (payload, tail) = rest.split_at_mut(len - hdr.len);
                let tag = rtp.seal_rtp(hdr.ssrc, index, aad, payload)?;
                tail[..GCM_TAG_LEN].copy_from_slice(&tag);
            }
        }
        Ok(out_len)
    }

    /// Decrypt+authenticate the SRTCP packet in `pkt` in place; returns the plain RTCP length
    /// (the plaintext is pkt[..n]). The SRTCP index is explicit in the packet; the replay
    /// window is per sender SSRC, checked before and committed after authentication.
    /// Packets with the E flag clear (authenticated, not encrypted) are accepted.
    pub fn unprotect_rtcp(&mut self, pkt: &mut [u8]) -> Result<usize, SrtpError> {
        let ssrc = parse_rtcp(pkt)?;
        let tag_len = self.profile.tag_len();
        let min = RTCP_CLEAR_LEN + SRTCP_INDEX_LEN + tag_len;
        if pkt.len() < min {
            return Err(SrtpError::TooShort);
        }
        // Where the E‖index word sits: before the tag (AES-CM) or after it (GCM, RFC 7714 §17).
        let eidx_pos = match self.keys {
            Keys::Cm { .. } => pkt.len() - tag_len - SRTCP_INDEX_LEN,
            Keys::Gcm { .. } => pkt.len() - SRTCP_INDEX_LEN,
        };
        let mut word = [0u8; SRTCP_INDEX_LEN];
        word.copy_from_slice(&pkt[eidx_pos..eidx_pos + SRTCP_INDEX_LEN]);
        let eidx = u32::from_be_bytes(word);
        let encrypted = eidx & SRTCP_E_FLAG != 0;
        let index = eidx & MAX_SRTCP_INDEX;

        let slot = self.rtcp_rx.find(ssrc);
        match slot.and_then(|s| self.rtcp_rx.get_mut(s)) {
            Some(w) => w.check(u64::from(index))?,
            None => {
                if self.rtcp_rx.is_full() {
                    return Err(SrtpError::TooManySsrcs);
                }
            }
        }

        let plain_len = match &self.keys {
            Keys::Cm { rtcp, .. } => {
                let tag_pos = eidx_pos + SRTCP_INDEX_LEN;
                let (auth, tag) = pkt.split_at_mut(tag_pos);
                rtcp.verify(auth, &[], tag)?;
                if encrypted {
                    rtcp.apply_keystream(
                        ssrc,
                        u64::from(index),
                        &mut auth[RTCP_CLEAR_LEN..eidx_pos],
                    );
                }
                eidx_pos
            }
            Keys::Gcm { rtcp, .. } => {
                let tag_pos = eidx_pos - GCM_TAG_LEN;
                if encrypted {
                    let mut aad = [0u8; RTCP_CLEAR_LEN + SRTCP_INDEX_LEN];
                    aad[..RTCP_CLEAR_LEN].copy_from_slice(&pkt[..RTCP_CLEAR_LEN]);
                    aad[RTCP_CLEAR_LEN..].copy_from_slice(&word);
                    rtcp.open_rtcp(ssrc, index, &aad, &mut pkt[RTCP_CLEAR_LEN..eidx_pos])?;
                } else {
                    // AAD = whole RTCP packet || E‖index, contiguous: move the word over the
                    // tag (kept aside) so the AAD is one slice.
                    let mut tag = [0u8; GCM_TAG_LEN];
                    tag.copy_from_slice(&pkt[tag_pos..eidx_pos]);
                    pkt.copy_within(eidx_pos..eidx_pos + SRTCP_INDEX_LEN, tag_pos);
                    rtcp.verify_rtcp_unencrypted(
                        ssrc,
                        index,
                        &pkt[..tag_pos + SRTCP_INDEX_LEN],
                        &tag,
                    )?;
                }
                tag_pos
            }
        };

        match slot.and_then(|s| self.rtcp_rx.get_mut(s)) {
            Some(w) => w.commit(u64::from(index)),
            None => {
                self.rtcp_rx
                    .insert(ssrc, ReplayWindow::starting_at(u64::from(index)))?;
            }
        }
        Ok(plain_len)
    }

    /// buf[..len] holds a plain (compound) RTCP packet; encrypt in place and append the
    /// E‖SRTCP-index word and the tag. buf.len() must be >= len + rtcp_overhead. Returns the
    /// SRTCP length. The context keeps the outgoing SRTCP index per sender SSRC (31 bits,
    /// starting at 0, E bit set); after 2^31 packets of one SSRC [`SrtpError::TooOld`] is
    /// returned (index space exhausted: rekey).
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let plain = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
        let ssrc = parse_rtcp(plain)?;
        let out_len = len + self.profile.rtcp_overhead();
        if buf.len() < out_len {
            return Err(SrtpError::BufferTooSmall);
        }

        let index = match self.rtcp_tx.find(ssrc) {
            Some(slot) => {
                // INVARIANT: `find` returned an in-range slot.
                let next = self.rtcp_tx.get_mut(slot).expect("slot from find");
                if *next > MAX_SRTCP_INDEX {
                    return Err(SrtpError::TooOld);
                }
                let index = *next;
                *next += 1;
                index
            }
            None => {
                self.rtcp_tx.insert(ssrc, 1)?;
                0
            }
        };
        let word = (index | SRTCP_E_FLAG).to_be_bytes();

        match &self.keys {
            Keys::Cm { rtcp, .. } => {
                rtcp.apply_keystream(ssrc, u64::from(index), &mut buf[RTCP_CLEAR_LEN..len]);
                buf[len..len + SRTCP_INDEX_LEN].copy_from_slice(&word);
                let tag_pos = len + SRTCP_INDEX_LEN;
                let (auth, rest) = buf.split_at_mut(tag_pos);
                let tag = rtcp.tag(auth, &[]);
                rest[..CM_TAG_LEN].copy_from_slice(&tag);
            }
            Keys::Gcm { rtcp, .. } => {
                let mut aad = [0u8; RTCP_CLEAR_LEN + SRTCP_INDEX_LEN];
                aad[..RTCP_CLEAR_LEN].copy_from_slice(&buf[..RTCP_CLEAR_LEN]);
                aad[RTCP_CLEAR_LEN..].copy_from_slice(&word);
                let tag = rtcp.seal_rtcp(ssrc, index, &aad, &mut buf[RTCP_CLEAR_LEN..len])?;
                buf[len..len + GCM_TAG_LEN].copy_from_slice(&tag);
                buf[len + GCM_TAG_LEN..out_len].copy_from_slice(&word);
            }
        }
        Ok(out_len)
    }
}

#[cfg(test)]
mod tests;
