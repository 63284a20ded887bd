//! RTP header extensions (RFC 8285): lookup by id, and the single-copy per-subscriber rewrite of a
//! packet (SSRC/seq/ts/PT/marker, extension id mapping, transport-cc sequence number, padding
//! removal).

use crate::header::{RtpError, RtpHeader, RTP_EXT_HEADER_LEN, RTP_FIXED_HEADER_LEN};

/// "Defined by profile" value of the one-byte extension form (RFC 8285 §4.2).
pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// Two-byte extension form (RFC 8285 §4.3): the profile is `0x100X`, the low 4 bits being
/// "appbits"; `profile & 0xFFF0 == TWO_BYTE_PROFILE_MASK`.
pub const TWO_BYTE_PROFILE_MASK: u16 = 0x1000;

/// Maximum number of extension elements examined in one packet (default 64). Bounds the work
/// done per packet by [`find_ext`] and [`write_rewritten`] on hostile extension blocks made of
/// many tiny elements; elements past this count are ignored (not found, not forwarded).
/// Worst-case output extension block: 64 × (2 + 255) + 4 (transport-cc) + 4 header bytes
/// ≈ 16.5 KiB, so the 16-bit word count of the output block can never overflow.
/// Real senders use at most ~15 extensions.
pub const MAX_EXT_ELEMENTS: usize = 64;

/// Largest id representable in the one-byte form (15 is reserved, RFC 8285 §4.2).
pub const ONE_BYTE_MAX_ID: u8 = 14;
/// Largest element length representable in the one-byte form.
pub const ONE_BYTE_MAX_LEN: usize = 16;

/// Length in bytes of the transport-wide sequence number extension payload.
pub const TWCC_EXT_LEN: usize = 2;

/// The two RFC 8285 element encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtForm {
    /// `0xBEDE`: 4-bit id, 4-bit (length - 1).
    OneByte,
    /// `0x100X`: 8-bit id, 8-bit length.
    TwoByte,
}

impl ExtForm {
    /// Which RFC 8285 form a profile value announces; `None` for other (RFC 3550) profiles,
    /// whose contents are opaque.
    pub fn from_profile(profile: u16) -> Option<ExtForm> {
        if profile == ONE_BYTE_PROFILE {
            Some(ExtForm::OneByte)
        } else if profile & 0xFFF0 == TWO_BYTE_PROFILE_MASK {
            Some(ExtForm::TwoByte)
        } else {
            None
        }
    }
}

/// Iterator over the `(id, data)` elements of an extension block. Skips padding bytes, stops at
/// the one-byte reserved id 15, at an element that would run past the block, and after
/// [`MAX_EXT_ELEMENTS`] elements. Never panics.
#[derive(Debug, Clone)]
pub struct ExtIter<'a> {
    data: &'a [u8],
    pos: usize,
    form: ExtForm,
    count: usize,
}

impl<'a> ExtIter<'a> {
    /// Iterate the elements of `data` (the extension block contents) in the given form.
    pub fn new(data: &'a [u8], form: ExtForm) -> Self {
        ExtIter {
            data,
            pos: 0,
            form,
            count: 0,
        }
    }

    /// An iterator that yields nothing.
    pub fn empty() -> Self {
        Self::new(&[], ExtForm::OneByte)
    }
}

impl<'a> Iterator for ExtIter<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        // Each loop iteration advances `pos` by at least one byte or ends the iteration.
        while self.count < MAX_EXT_ELEMENTS {
            let b = *self.data.get(self.pos)?;
            if b == 0 {
                self.pos += 1;
                continue;
            }
            let (id, start, len) = match self.form {
                ExtForm::OneByte => {
                    let id = b >> 4;
                    if id == 15 {
                        break;
                    }
                    (id, self.pos + 1, usize::from(b & 0x0F) + 1)
                }
                ExtForm::TwoByte => {
                    let Some(&len) = self.data.get(self.pos + 1) else {
                        break;
                    };
                    (b, self.pos + 2, usize::from(len))
                }
            };
            let Some(value) = self.data.get(start..start + len) else {
                break;
            };
            self.pos = start + len;
            self.count += 1;
            return Some((id, value));
        }
        self.pos = self.data.len();
        None
    }
}

/// Iterate the RFC 8285 extension elements of `pkt` as described by `hdr`. Yields nothing when
/// X=0, the profile is not one- or two-byte, or `hdr` does not fit `pkt`.
pub fn ext_iter<'a>(pkt: &'a [u8], hdr: &RtpHeader) -> ExtIter<'a> {
    let Some(block) = hdr.ext else {
        return ExtIter::empty();
    };
    let Some(form) = ExtForm::from_profile(block.profile) else {
        return ExtIter::empty();
    };
    match block
        .offset
        .checked_add(block.len)
        .and_then(|end| pkt.get(block.offset..end))
    {
        Some(data) => ExtIter::new(data, form),
        None => ExtIter::empty(),
    }
}

/// Look up extension `id` in the packet's extension block (one- or two-byte form). Bounded iteration, never panics.
pub fn find_ext<'a>(pkt: &'a [u8], hdr: &RtpHeader, id: u8) -> Option<&'a [u8]> {
    if id == 0 {
        return None;
    }
    ext_iter(pkt, hdr).find(|(i, _)| *i == id).map(|(_, d)| d)
}

/// Maps the publisher's extension ids to the receiver's negotiated ids; 0 = strip.
#[derive(Clone)]
pub struct ExtMap {
    map: [u8; 256],
}

impl ExtMap {
    /// A map that strips every extension.
    pub fn new() -> Self {
        ExtMap { map: [0; 256] }
    }

    /// A map that keeps every extension under its own id.
    pub fn identity() -> Self {
        let mut m = Self::new();
        for id in 1..=255u8 {
            m.set(id, id);
        }
        m
    }

    /// Forward publisher id `from_id` as `to_id` (0 = strip). `from_id` 0 is padding and is
    /// never forwarded, whatever is set.
    pub fn set(&mut self, from_id: u8, to_id: u8) {
        if from_id != 0 {
            self.map[usize::from(from_id)] = to_id;
        }
    }

    /// The receiver id for publisher id `from_id` (0 = strip).
    pub fn get(&self, from_id: u8) -> u8 {
        self.map[usize::from(from_id)]
    }
}

impl Default for ExtMap {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ExtMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.map
                    .iter()
                    .enumerate()
                    .filter(|(_, to)| **to != 0)
                    .map(|(from, to)| (from, *to)),
            )
            .finish()
    }
}

/// What to write for one subscriber.
pub struct Rewrite<'m> {
    /// Outgoing SSRC.
    pub ssrc: u32,
    /// Outgoing sequence number.
    pub seq: u16,
    /// Outgoing RTP timestamp.
    pub ts: u32,
    /// Outgoing payload type (7 bits; the high bit is ignored).
    pub pt: u8,
    /// Outgoing marker bit.
    pub marker: bool,
    /// Publisher-to-receiver extension id map.
    pub ext_map: &'m ExtMap,
    /// Append a transport-wide sequence number extension (id, value) for the receiver (transport-cc); None = don't.
    pub twcc: Option<(u8, u16)>,
}

impl Rewrite<'_> {
    /// The transport-cc id to append, if any (id 0 is invalid and means "none").
    fn twcc_id(&self) -> Option<u8> {
        match self.twcc {
            Some((id, _)) if id != 0 => Some(id),
            _ => None,
        }
    }

    /// Receiver id for a publisher element, or None when it is stripped. An element mapped onto
    /// the transport-cc id is dropped (the fresh transport-cc value replaces it).
    fn map_id(&self, from: u8) -> Option<u8> {
        let to = self.ext_map.get(from);
        if to == 0 || Some(to) == self.twcc_id() {
            None
        } else {
            Some(to)
        }
    }
}

/// Output extension layout: form and element bytes (without block header and padding).
struct ExtPlan {
    form: ExtForm,
    elems_len: usize,
    any: bool,
}

impl ExtPlan {
    /// Whole block length including the 4-byte header and zero padding; 0 if no element.
    fn block_len(&self) -> usize {
        if self.any {
            RTP_EXT_HEADER_LEN + self.elems_len.div_ceil(4) * 4
        } else {
            0
        }
    }
}

fn plan(pkt: &[u8], hdr: &RtpHeader, rw: &Rewrite<'_>) -> ExtPlan {
    let mut one_ok = true;
    let mut one_len = 0usize;
    let mut two_len = 0usize;
    let mut any = false;
    for (id, data) in ext_iter(pkt, hdr) {
        let Some(to) = rw.map_id(id) else { continue };
        any = true;
        one_ok &= to <= ONE_BYTE_MAX_ID && (1..=ONE_BYTE_MAX_LEN).contains(&data.len());
        one_len += 1 + data.len();
        two_len += 2 + data.len();
    }
    if let Some(id) = rw.twcc_id() {
        any = true;
        one_ok &= id <= ONE_BYTE_MAX_ID;
        one_len += 1 + TWCC_EXT_LEN;
        two_len += 2 + TWCC_EXT_LEN;
    }
    if one_ok {
        ExtPlan {
            form: ExtForm::OneByte,
            elems_len: one_len,
            any,
        }
    } else {
        ExtPlan {
            form: ExtForm::TwoByte,
            elems_len: two_len,
            any,
        }
    }
}

/// Exact length write_rewritten will produce (the engine reserves exactly this much in a send buffer first).
pub fn rewritten_len(pkt: &[u8], hdr: &RtpHeader, rw: &Rewrite<'_>) -> usize {
    RTP_FIXED_HEADER_LEN
        + 4 * usize::from(hdr.csrc_count & 0x0F)
        + plan(pkt, hdr, rw).block_len()
        + hdr.payload_len
}

/// Write `pkt` (plain RTP, parsed as `hdr`) rewritten for one subscriber into `out`: V=2, P=0 (padding stripped),
/// CSRCs copied, extensions mapped via ext_map (unmapped stripped; one-byte form when all ids <= 14 and lengths <= 16,
/// else two-byte form), optional twcc ext appended, then the payload. Returns the written length. This is THE one copy
/// on the forward path, so no intermediate buffers.
///
/// Extensions of a non-RFC 8285 profile are stripped. A publisher element mapped onto the
/// transport-cc id is dropped in favour of the appended value. Errors: `BufferTooSmall` when
/// `out` is shorter than [`rewritten_len`]; `BadPayload` when `hdr` does not describe `pkt`.
pub fn write_rewritten(
    pkt: &[u8],
    hdr: &RtpHeader,
    rw: &Rewrite<'_>,
    out: &mut [u8],
) -> Result<usize, RtpError> {
    let cc = usize::from(hdr.csrc_count & 0x0F);
    let csrc_end = RTP_FIXED_HEADER_LEN + 4 * cc;
    let csrcs = pkt
        .get(RTP_FIXED_HEADER_LEN..csrc_end)
        .ok_or(RtpError::BadPayload)?;
    let payload = hdr
        .header_len
        .checked_add(hdr.payload_len)
        .and_then(|end| pkt.get(hdr.header_len..end))
        .ok_or(RtpError::BadPayload)?;
    let plan = plan(pkt, hdr, rw);
    let block_len = plan.block_len();
    let total = csrc_end + block_len + payload.len();
    let out = out.get_mut(..total).ok_or(RtpError::BufferTooSmall)?;

    // INVARIANT: `out` is exactly `total` = 12 + 4*cc + block_len + payload bytes long, and
    // `plan` sized the extension body for exactly the elements written below (same iterator, same
    // mapping, same order), so every index below is in bounds.
    out[0] = 0x80 | if plan.any { 0x10 } else { 0 } | cc as u8;
    out[1] = (rw.pt & 0x7F) | if rw.marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&rw.seq.to_be_bytes());
    out[4..8].copy_from_slice(&rw.ts.to_be_bytes());
    out[8..12].copy_from_slice(&rw.ssrc.to_be_bytes());
    out[RTP_FIXED_HEADER_LEN..csrc_end].copy_from_slice(csrcs);

    if plan.any {
        let block = &mut out[csrc_end..csrc_end + block_len];
        let (head, body) = block.split_at_mut(RTP_EXT_HEADER_LEN);
        let profile = match plan.form {
            ExtForm::OneByte => ONE_BYTE_PROFILE,
            ExtForm::TwoByte => TWO_BYTE_PROFILE_MASK,
        };
        // block_len <= 4 + MAX_EXT_ELEMENTS * 257 + 4 + 3, far below 4 * u16::MAX.
        let words = (body.len() / 4) as u16;
        head[0..2].copy_from_slice(&profile.to_be_bytes());
        head[2..4].copy_from_slice(&words.to_be_bytes());
        let mut pos = 0usize;
        let mut put = |id: u8, data: &[u8]| {
            // `plan` sized `body` for exactly these elements, in this order.
            match plan.form {
                ExtForm::OneByte => {
                    body[pos] = (id << 4) | (data.len() as u8).wrapping_sub(1);
                    pos += 1;
                }
                ExtForm::TwoByte => {
                    body[pos] = id;
                    body[pos + 1] = data.len() as u8;
                    pos += 2;
                }
            }
            body[pos..pos + data.len()].copy_from_slice(data);
            pos += data.len();
        };
        for (id, data) in ext_iter(pkt, hdr) {
            if let Some(to) = rw.map_id(id) {
                put(to, data);
            }
        }
        if let (Some(id), Some((_, v))) = (rw.twcc_id(), rw.twcc) {
            put(id, &v.to_be_bytes());
        }
        body[pos..].fill(0);
    }

    out[csrc_end + block_len..].copy_from_slice(payload);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use webrtc_util::marshal::{Marshal, Unmarshal};

    fn build(profile: Option<u16>, exts: &[(u8, &[u8])], payload: &[u8], padding: bool) -> Vec<u8> {
        let mut header = rtp::header::Header {
            version: 2,
            padding,
            marker: true,
            payload_type: 111,
            sequence_number: 65535,
            timestamp: 0xFFFF_FFF0,
            ssrc: 0x1111_2222,
            csrc: vec![7, 8],
            ..Default::default()
        };
        if let Some(p) = profile {
            header.extension = true;
            header.extension_profile = p;
            for (id, d) in exts {
                header.extensions.push(rtp::header::Extension {
                    id: *id,
                    payload: Bytes::copy_from_slice(d),
                });
            }
        }
        rtp::packet::Packet {
            header,
            payload: Bytes::copy_from_slice(payload),
        }
        .marshal()
        .unwrap()
        .to_vec()
    }

    fn rewrite_and_parse(pkt: &[u8], rw: &Rewrite<'_>) -> rtp::packet::Packet {
        let hdr = RtpHeader::parse(pkt).unwrap();
        let n = rewritten_len(pkt, &hdr, rw);
        let mut out = vec![0xEE; n + 10];
        let w = write_rewritten(pkt, &hdr, rw, &mut out).unwrap();
        assert_eq!(w, n);
        for short in 0..n {
            assert_eq!(
                write_rewritten(pkt, &hdr, rw, &mut out[..short]),
                Err(RtpError::BufferTooSmall)
            );
        }
        // Our own parser must accept it too, with the payload unchanged.
        let ours = RtpHeader::parse(&out[..w]).unwrap();
        assert_eq!(ours.payload(&out[..w]), hdr.payload(pkt));
        assert_eq!(ours.padding_len, 0);
        rtp::packet::Packet::unmarshal(&mut &out[..w]).unwrap()
    }

    fn rw<'m>(map: &'m ExtMap, twcc: Option<(u8, u16)>) -> Rewrite<'m> {
        Rewrite {
            ssrc: 0xAABB_CCDD,
            seq: 4242,
            ts: 99,
            pt: 96,
            marker: false,
            ext_map: map,
            twcc,
        }
    }

    fn exts(p: &rtp::packet::Packet) -> Vec<(u8, Vec<u8>)> {
        p.header
            .extensions
            .iter()
            .map(|e| (e.id, e.payload.to_vec()))
            .collect()
    }

    #[test]
    fn find_ext_one_and_two_byte() {
        let pkt = build(
            Some(0xBEDE),
            &[(1, &[1]), (3, &[3, 3, 3]), (14, &[0; 16])],
            b"x",
            false,
        );
        let h = RtpHeader::parse(&pkt).unwrap();
        assert_eq!(find_ext(&pkt, &h, 3), Some(&[3u8, 3, 3][..]));
        assert_eq!(find_ext(&pkt, &h, 14), Some(&[0u8; 16][..]));
        assert_eq!(find_ext(&pkt, &h, 2), None);
        assert_eq!(find_ext(&pkt, &h, 0), None);
        let pkt = build(Some(0x1000), &[(200, &[]), (20, &[5; 40])], b"", false);
        let h = RtpHeader::parse(&pkt).unwrap();
        assert_eq!(find_ext(&pkt, &h, 200), Some(&[][..]));
        assert_eq!(find_ext(&pkt, &h, 20), Some(&[5u8; 40][..]));
        assert_eq!(find_ext(&pkt, &h, 21), None);
    }

    #[test]
    fn find_ext_stops_at_reserved_and_overrun() {
        // one-byte: id 1 (len 1), id 15 reserved, then id 2 which must not be found.
        let mut pkt = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xBE, 0xDE, 0, 2];
        pkt.extend_from_slice(&[0x10, 0xAA, 0xF0, 0x20, 0xBB, 0, 0, 0]);
        let h = RtpHeader::parse(&pkt).unwrap();
        assert_eq!(find_ext(&pkt, &h, 1), Some(&[0xAA][..]));
        assert_eq!(find_ext(&pkt, &h, 2), None);
        // element length running past the block
        let mut pkt = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xBE, 0xDE, 0, 1];
        pkt.extend_from_slice(&[0x1F, 1, 2, 3, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
        let h = RtpHeader::parse(&pkt).unwrap();
        assert_eq!(find_ext(&pkt, &h, 1), None);
        // two-byte: length byte missing
        let mut pkt = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0x10, 0x00, 0, 1];
        pkt.extend_from_slice(&[0, 0, 0, 5]);
        let h = RtpHeader::parse(&pkt).unwrap();
        assert_eq!(find_ext(&pkt, &h, 5), None);
        // unknown profile: opaque
        let mut pkt = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0x12, 0x34, 0, 1];
        pkt.extend_from_slice(&[0x10, 0xAA, 0, 0]);
        let h = RtpHeader::parse(&pkt).unwrap();
        assert_eq!(find_ext(&pkt, &h, 1), None);
    }

    #[test]
    fn element_count_is_bounded() {
        // 100 one-byte elements with id 1 then one id 2: id 2 is past MAX_EXT_ELEMENTS.
        let mut data = vec![];
        for _ in 0..100 {
            data.extend_from_slice(&[0x10, 0]);
        }
        data.extend_from_slice(&[0x20, 7, 0, 0]);
        let mut pkt = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xBE, 0xDE];
        pkt.extend_from_slice(&((data.len() / 4) as u16).to_be_bytes());
        pkt.extend_from_slice(&data);
        let h = RtpHeader::parse(&pkt).unwrap();
        assert_eq!(ext_iter(&pkt, &h).count(), MAX_EXT_ELEMENTS);
        assert_eq!(find_ext(&pkt, &h, 2), None);
    }

    #[test]
    fn rewrite_one_byte_maps_and_strips() {
        let pkt = build(
            Some(0xBEDE),
            &[(1, &[0x11]), (2, &[0x22, 0x22]), (3, &[0x33; 3])],
            b"hello",
            true,
        );
        let mut map = ExtMap::new();
        map.set(1, 5);
        map.set(3, 4);
        let p = rewrite_and_parse(&pkt, &rw(&map, None));
        assert_eq!(p.header.version, 2);
        assert!(!p.header.padding);
        assert!(!p.header.marker);
        assert_eq!(p.header.payload_type, 96);
        assert_eq!(p.header.sequence_number, 4242);
        assert_eq!(p.header.timestamp, 99);
        assert_eq!(p.header.ssrc, 0xAABB_CCDD);
        assert_eq!(p.header.csrc, vec![7, 8]);
        assert_eq!(p.header.extension_profile, ONE_BYTE_PROFILE);
        assert_eq!(exts(&p), vec![(5, vec![0x11]), (4, vec![0x33; 3])]);
        assert_eq!(&p.payload[..], b"hello");
    }

    #[test]
    fn rewrite_strips_all_and_appends_twcc() {
        let pkt = build(
            Some(0xBEDE),
            &[(1, &[0x11]), (2, &[0x22, 0x22])],
            b"abc",
            false,
        );
        let map = ExtMap::new();
        let p = rewrite_and_parse(&pkt, &rw(&map, None));
        assert!(!p.header.extension);
        assert_eq!(&p.payload[..], b"abc");
        let p = rewrite_and_parse(&pkt, &rw(&map, Some((3, 0xBEEF))));
        assert!(p.header.extension);
        assert_eq!(p.header.extension_profile, ONE_BYTE_PROFILE);
        assert_eq!(exts(&p), vec![(3, vec![0xBE, 0xEF])]);
        // publisher's own twcc (id 2 mapped to 3) is replaced, not duplicated
        let mut map = ExtMap::new();
        map.set(2, 3);
        map.set(1, 1);
        let p = rewrite_and_parse(&pkt, &rw(&map, Some((3, 7))));
        assert_eq!(exts(&p), vec![(1, vec![0x11]), (3, vec![0, 7])]);
    }

    #[test]
    fn rewrite_switches_to_two_byte_when_needed() {
        let pkt = build(Some(0xBEDE), &[(1, &[0x11]), (2, &[0x22; 16])], b"p", false);
        // id > 14 forces two-byte
        let mut map = ExtMap::new();
        map.set(1, 1);
        map.set(2, 20);
        let p = rewrite_and_parse(&pkt, &rw(&map, None));
        assert_eq!(p.header.extension_profile, TWO_BYTE_PROFILE_MASK);
        assert_eq!(exts(&p), vec![(1, vec![0x11]), (20, vec![0x22; 16])]);
        // twcc id > 14 forces two-byte
        let map = ExtMap::new();
        let p = rewrite_and_parse(&pkt, &rw(&map, Some((15, 1))));
        assert_eq!(p.header.extension_profile, TWO_BYTE_PROFILE_MASK);
        assert_eq!(exts(&p), vec![(15, vec![0, 1])]);
        // two-byte source with long / empty elements
        let pkt = build(Some(0x1000), &[(1, &[9; 17]), (2, &[])], b"p", false);
        let p = rewrite_and_parse(&pkt, &rw(&ExtMap::identity(), None));
        assert_eq!(p.header.extension_profile, TWO_BYTE_PROFILE_MASK);
        assert_eq!(exts(&p), vec![(1, vec![9; 17]), (2, vec![])]);
        // two-byte source whose kept elements fit: one-byte output
        let mut pkt = build(Some(0x1000), &[(1, &[9; 16]), (40, &[1])], b"p", false);
        pkt[21] = 0x03; // appbits: profile 0x1003 (the rtp crate only writes 0x1000)
        assert_eq!(RtpHeader::parse(&pkt).unwrap().ext.unwrap().profile, 0x1003);
        let p = rewrite_and_parse(&pkt, &rw(&ExtMap::identity(), Some((3, 9))));
        assert_eq!(p.header.extension_profile, TWO_BYTE_PROFILE_MASK);
        let mut map = ExtMap::identity();
        map.set(40, 0);
        let p = rewrite_and_parse(&pkt, &rw(&map, Some((3, 9))));
        assert_eq!(p.header.extension_profile, ONE_BYTE_PROFILE);
        assert_eq!(exts(&p), vec![(1, vec![9; 16]), (3, vec![0, 9])]);
    }

    #[test]
    fn rewrite_strips_rfc3550_extension() {
        let mut pkt = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0x12, 0x34, 0, 1];
        pkt.extend_from_slice(&[0x10, 0xAA, 0, 0, b'z']);
        let p = rewrite_and_parse(&pkt, &rw(&ExtMap::identity(), None));
        assert!(!p.header.extension);
        assert_eq!(&p.payload[..], b"z");
    }

    #[test]
    fn rewrite_rejects_mismatched_header() {
        let pkt = build(None, &[], b"abcdef", false);
        let h = RtpHeader::parse(&pkt).unwrap();
        let mut out = [0u8; 100];
        let map = ExtMap::new();
        assert_eq!(
            write_rewritten(&pkt[..14], &h, &rw(&map, None), &mut out),
            Err(RtpError::BadPayload)
        );
    }

    type ExtList = Vec<(u8, Vec<u8>)>;

    fn arb_ext_packet() -> impl Strategy<Value = (Vec<u8>, ExtList, bool)> {
        (
            any::<bool>(),
            proptest::collection::vec(
                (1u8..=255, proptest::collection::vec(any::<u8>(), 0..=20)),
                0..8,
            ),
            proptest::collection::vec(any::<u8>(), 0..100),
            any::<bool>(),
        )
            .prop_map(|(two, raw_exts, payload, padding)| {
                let mut seen = [false; 256];
                let mut list = vec![];
                for (id, mut d) in raw_exts {
                    let id = if two { id } else { id % 14 + 1 };
                    if !two {
                        d.truncate(16);
                        if d.is_empty() {
                            d.push(1);
                        }
                    }
                    if !seen[id as usize] {
                        seen[id as usize] = true;
                        list.push((id, d));
                    }
                }
                let refs: Vec<(u8, &[u8])> = list.iter().map(|(i, d)| (*i, &d[..])).collect();
                let profile = if two { 0x1000 } else { 0xBEDE };
                let pkt = build(
                    Some(profile),
                    &refs,
                    &payload,
                    padding && !payload.is_empty(),
                );
                (pkt, list, two)
            })
    }

    proptest! {
        #[test]
        fn rewrite_roundtrip_against_webrtc_rs(
            (pkt, list, _two) in arb_ext_packet(),
            map_entries in proptest::collection::vec((1u8..=255, 0u8..=30), 0..10),
            twcc in proptest::option::of((1u8..=20, any::<u16>())),
        ) {
            let mut map = ExtMap::identity();
            for (f, t) in map_entries { map.set(f, t); }
            let r = rw(&map, twcc);
            let hdr = RtpHeader::parse(&pkt).unwrap();
            // find_ext agrees with the generator
            for (id, d) in &list {
                prop_assert_eq!(find_ext(&pkt, &hdr, *id), Some(&d[..]));
            }
            let p = rewrite_and_parse(&pkt, &r);
            let mut expected: Vec<(u8, Vec<u8>)> = list
                .iter()
                .filter_map(|(id, d)| {
                    let to = map.get(*id);
                    (to != 0 && Some(to) != twcc.map(|t| t.0)).then(|| (to, d.clone()))
                })
                .collect();
            if let Some((id, v)) = twcc { expected.push((id, v.to_be_bytes().to_vec())); }
            prop_assert_eq!(exts(&p), expected.clone());
            let one_ok = expected.iter().all(|(i, d)| *i <= 14 && !d.is_empty() && d.len() <= 16);
            if !expected.is_empty() {
                let want = if one_ok { ONE_BYTE_PROFILE } else { TWO_BYTE_PROFILE_MASK };
                prop_assert_eq!(p.header.extension_profile, want);
            } else {
                prop_assert!(!p.header.extension);
            }
            prop_assert_eq!(p.header.csrc, vec![7, 8]);
            prop_assert_eq!(p.header.ssrc, 0xAABB_CCDD);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            mut data in proptest::collection::vec(any::<u8>(), 0..300),
            b0 in 0x80u8..0xC0,
            id in any::<u8>(),
            twcc in proptest::option::of((any::<u8>(), any::<u16>())),
        ) {
            if !data.is_empty() { data[0] = b0 | 0x10; }
            if data.len() > 13 && data[12] & 1 == 0 { data[12] = 0xBE; data[13] = 0xDE; }
            if let Ok(h) = RtpHeader::parse(&data) {
                let _ = find_ext(&data, &h, id);
                let map = ExtMap::identity();
                let r = rw(&map, twcc);
                let n = rewritten_len(&data, &h, &r);
                let mut out = vec![0u8; n];
                prop_assert_eq!(write_rewritten(&data, &h, &r, &mut out), Ok(n));
                let back = RtpHeader::parse(&out).unwrap();
                prop_assert_eq!(back.payload(&out), h.payload(&data));
            }
        }
    }
}
