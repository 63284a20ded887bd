//! Sans-IO RTCP: zero-copy iteration over a (decrypted) compound RTCP datagram, writers for the
//! packets the engine originates (SR, RR, NACK, PLI, FIR), per-stream receive statistics for
//! report blocks (RFC 3550 A.1/A.3/A.8) and round-trip time from returned report blocks.
//!
//! Every byte handed to [`iter`] is untrusted: counts from the wire are checked against the
//! packet length before anything is read, and the first malformed packet ends iteration with a
//! typed [`RtcpError`].

use std::time::{Duration, Instant};

/// Why an RTCP datagram (or a write) was rejected.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum RtcpError {
    /// Fewer bytes than a header, or a packet body shorter than its type's fixed part.
    #[error("rtcp: too short")]
    TooShort,
    /// Version field is not 2.
    #[error("rtcp: bad version")]
    BadVersion,
    /// The length field points past the end of the datagram, or padding is inconsistent.
    #[error("rtcp: bad length")]
    BadLength,
    /// Writer: the output buffer cannot hold the packet.
    #[error("rtcp: buffer too small")]
    BufferTooSmall,
    /// A count or structure inside the packet does not fit its length (e.g. REMB SSRC count).
    #[error("rtcp: malformed")]
    Malformed,
}

impl RtcpError {
    /// Stable short name for counters/metrics.
    pub fn reason(self) -> &'static str {
        match self {
            RtcpError::TooShort => "too_short",
            RtcpError::BadVersion => "bad_version",
            RtcpError::BadLength => "bad_length",
            RtcpError::BufferTooSmall => "buffer_too_small",
            RtcpError::Malformed => "malformed",
        }
    }
}

/// RTCP packet type: sender report (RFC 3550).
pub const PT_SR: u8 = 200;
/// RTCP packet type: receiver report (RFC 3550).
pub const PT_RR: u8 = 201;
/// RTCP packet type: source description (RFC 3550).
pub const PT_SDES: u8 = 202;
/// RTCP packet type: goodbye (RFC 3550).
pub const PT_BYE: u8 = 203;
/// RTCP packet type: transport-layer feedback (RFC 4585).
pub const PT_RTPFB: u8 = 205;
/// RTCP packet type: payload-specific feedback (RFC 4585).
pub const PT_PSFB: u8 = 206;
/// RTPFB format: generic NACK (RFC 4585 §6.2.1).
pub const FMT_NACK: u8 = 1;
/// RTPFB format: transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01).
pub const FMT_TWCC: u8 = 15;
/// PSFB format: picture loss indication (RFC 4585 §6.3.1).
pub const FMT_PLI: u8 = 1;
/// PSFB format: full intra request (RFC 5104 §4.3.1).
pub const FMT_FIR: u8 = 4;
/// PSFB format: application layer feedback (REMB lives here).
pub const FMT_AFB: u8 = 15;

/// Size of the common RTCP header.
pub const HEADER_LEN: usize = 4;
/// Size of one report block (RFC 3550 §6.4.1).
pub const REPORT_BLOCK_LEN: usize = 24;
/// Maximum report blocks in one SR/RR (5-bit count field). Bounds writer input; 31 * 24 = 744 bytes.
pub const MAX_REPORT_BLOCKS: usize = 31;

fn be16(b: &[u8], off: usize) -> Result<u16, RtcpError> {
    match b.get(off..off.wrapping_add(2)) {
        Some(&[x, y]) => Ok(u16::from_be_bytes([x, y])),
        _ => Err(RtcpError::TooShort),
    }
}

fn be32(b: &[u8], off: usize) -> Result<u32, RtcpError> {
    match b.get(off..off.wrapping_add(4)) {
        Some(&[a, c, d, e]) => Ok(u32::from_be_bytes([a, c, d, e])),
        _ => Err(RtcpError::TooShort),
    }
}

fn be64(b: &[u8], off: usize) -> Result<u64, RtcpError> {
    let hi = be32(b, off)?;
    let lo = be32(b, off.wrapping_add(4))?;
    Ok((u64::from(hi) << 32) | u64::from(lo))
}

/// One report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// SSRC of the source this block reports on.
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative number of packets lost: 24-bit two's complement (only the low 24 bits are used).
    pub cumulative_lost: u32,
    /// Extended highest sequence number received (cycles << 16 | max seq).
    pub highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received (0 if none).
    pub lsr: u32,
    /// Delay since that SR in 1/65536 s (0 if none).
    pub dlsr: u32,
}

impl ReportBlock {
    fn parse(b: &[u8]) -> Result<Self, RtcpError> {
        let lost = be32(b, 4)?;
        Ok(ReportBlock {
            ssrc: be32(b, 0)?,
            fraction_lost: (lost >> 24) as u8,
            cumulative_lost: lost & 0x00FF_FFFF,
            highest_seq: be32(b, 8)?,
            jitter: be32(b, 12)?,
            lsr: be32(b, 16)?,
            dlsr: be32(b, 20)?,
        })
    }

    fn write(&self, out: &mut [u8]) {
        // Callers pass exactly REPORT_BLOCK_LEN bytes (checked in the writers).
        let lost = (u32::from(self.fraction_lost) << 24) | (self.cumulative_lost & 0x00FF_FFFF);
        for (i, v) in [
            self.ssrc,
            lost,
            self.highest_seq,
            self.jitter,
            self.lsr,
            self.dlsr,
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(dst) = out.get_mut(i * 4..i * 4 + 4) {
                dst.copy_from_slice(&v.to_be_bytes());
            }
        }
    }
}

/// Iterator over the report blocks of an SR/RR (length already validated against the count).
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    rest: &'a [u8],
}

impl ReportBlocks<'_> {
    /// Number of blocks remaining.
    pub fn len(&self) -> usize {
        self.rest.len() / REPORT_BLOCK_LEN
    }
    /// True when no block remains.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;
    fn next(&mut self) -> Option<ReportBlock> {
        let (blk, rest) = self.rest.split_at_checked(REPORT_BLOCK_LEN)?;
        self.rest = rest;
        ReportBlock::parse(blk).ok()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len(), Some(self.len()))
    }
}

/// Iterator over the lost sequence numbers of a generic NACK (each FCI: PID + 16-bit BLP).
/// Yields at most 17 seqs per 4-byte FCI, so output is bounded by the packet length.
#[derive(Debug, Clone)]
pub struct NackItems<'a> {
    rest: &'a [u8],
    pid: u16,
    blp: u16,
    /// Next bit of `blp` to examine; 0 = the PID itself, 17 = FCI exhausted.
    bit: u8,
}

impl NackItems<'_> {
    /// Number of FCI entries (PID/BLP pairs) not yet started.
    pub fn remaining_fci(&self) -> usize {
        self.rest.len() / 4
    }
}

impl Iterator for NackItems<'_> {
    type Item = u16;
    fn next(&mut self) -> Option<u16> {
        loop {
            if self.bit == 0 {
                self.bit = 1;
                return Some(self.pid);
            }
            while self.bit <= 16 {
                let b = self.bit;
                self.bit += 1;
                if self.blp & (1 << (b - 1)) != 0 {
                    return Some(self.pid.wrapping_add(u16::from(b)));
                }
            }
            let (fci, rest) = self.rest.split_at_checked(4)?;
            self.rest = rest;
            self.pid = be16(fci, 0).ok()?;
            self.blp = be16(fci, 2).ok()?;
            self.bit = 0;
        }
    }
}

/// Iterator over FIR entries: `(media ssrc, command sequence number)`.
#[derive(Debug, Clone)]
pub struct FirEntries<'a> {
    rest: &'a [u8],
}

impl FirEntries<'_> {
    /// Number of entries remaining.
    pub fn len(&self) -> usize {
        self.rest.len() / 8
    }
    /// True when no entry remains.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Iterator for FirEntries<'_> {
    type Item = (u32, u8);
    fn next(&mut self) -> Option<(u32, u8)> {
        let (e, rest) = self.rest.split_at_checked(8)?;
        self.rest = rest;
        let ssrc = be32(e, 0).ok()?;
        let seq = *e.get(4)?;
        Some((ssrc, seq))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len(), Some(self.len()))
    }
}

/// One RTCP packet inside a compound datagram (validated header; `body` is the bytes after the
/// 4-byte header, within length).
#[derive(Debug, Clone)]
pub enum RtcpPacket<'a> {
    /// Sender report (PT 200).
    SenderReport {
        /// Sender SSRC.
        ssrc: u32,
        /// 64-bit NTP timestamp.
        ntp: u64,
        /// RTP timestamp matching `ntp`.
        rtp_ts: u32,
        /// Sender's packet count.
        packets: u32,
        /// Sender's octet count.
        octets: u32,
        /// Report blocks.
        reports: ReportBlocks<'a>,
    },
    /// Receiver report (PT 201).
    ReceiverReport {
        /// Reporter SSRC.
        ssrc: u32,
        /// Report blocks.
        reports: ReportBlocks<'a>,
    },
    /// Generic NACK (RTPFB fmt 1).
    Nack {
        /// SSRC of the packet sender.
        sender_ssrc: u32,
        /// SSRC of the media source.
        media_ssrc: u32,
        /// Lost sequence numbers.
        items: NackItems<'a>,
    },
    /// Picture loss indication (PSFB fmt 1).
    Pli {
        /// SSRC of the packet sender.
        sender_ssrc: u32,
        /// SSRC of the media source.
        media_ssrc: u32,
    },
    /// Full intra request (PSFB fmt 4).
    Fir {
        /// SSRC of the packet sender.
        sender_ssrc: u32,
        /// `(ssrc, seq nr)` entries.
        entries: FirEntries<'a>,
    },
    /// Transport-wide CC feedback (RTPFB fmt 15), not decoded further.
    TransportCc {
        /// SSRC of the packet sender.
        sender_ssrc: u32,
        /// SSRC of the media source.
        media_ssrc: u32,
    },
    /// Receiver estimated maximum bitrate (PSFB fmt 15, "REMB"); structure validated.
    Remb,
    /// Source description (PT 202).
    Sdes,
    /// Goodbye (PT 203); source count validated.
    Bye,
    /// Anything else (XR, APP, other feedback formats).
    Other {
        /// Packet type.
        pt: u8,
        /// Count / format field.
        fmt: u8,
    },
}

/// Iterator over the packets of a compound RTCP datagram. Stops after the first error.
#[derive(Debug, Clone)]
pub struct RtcpIter<'a> {
    rest: &'a [u8],
    done: bool,
}

/// Iterate the RTCP packets of `buf` (a decrypted compound datagram).
pub fn iter(buf: &[u8]) -> RtcpIter<'_> {
    RtcpIter {
        rest: buf,
        done: false,
    }
}

impl<'a> Iterator for RtcpIter<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        let r = next_packet(self.rest);
        match r {
            Ok((pkt, rest)) => {
                self.rest = rest;
                Some(Ok(pkt))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Split one packet off `buf`: returns the parsed packet and the remainder.
fn next_packet(buf: &[u8]) -> Result<(RtcpPacket<'_>, &[u8]), RtcpError> {
    let (&b0, _) = buf.split_first().ok_or(RtcpError::TooShort)?;
    if buf.len() < HEADER_LEN {
        return Err(RtcpError::TooShort);
    }
    if b0 >> 6 != 2 {
        return Err(RtcpError::BadVersion);
    }
    let padding = b0 & 0x20 != 0;
    let count = b0 & 0x1F;
    let pt = *buf.get(1).ok_or(RtcpError::TooShort)?;
    let words = be16(buf, 2)?;
    let total = (usize::from(words) + 1) * 4;
    let (pkt, rest) = buf.split_at_checked(total).ok_or(RtcpError::BadLength)?;
    let mut body = pkt.get(HEADER_LEN..).ok_or(RtcpError::BadLength)?;
    if padding {
        let pad = usize::from(*body.last().ok_or(RtcpError::BadLength)?);
        if pad == 0 || pad > body.len() {
            return Err(RtcpError::BadLength);
        }
        body = body.get(..body.len() - pad).ok_or(RtcpError::BadLength)?;
    }
    Ok((parse_body(pt, count, body)?, rest))
}

fn parse_body(pt: u8, count: u8, body: &[u8]) -> Result<RtcpPacket<'_>, RtcpError> {
    let blocks = |off: usize| -> Result<ReportBlocks<'_>, RtcpError> {
        let need = usize::from(count) * REPORT_BLOCK_LEN;
        // Trailing bytes after the blocks are profile-specific extensions: allowed, ignored.
        let rest = body
            .get(off..)
            .and_then(|r| r.get(..need))
            .ok_or(RtcpError::Malformed)?;
        Ok(ReportBlocks { rest })
    };
    match pt {
        PT_SR => {
            if body.len() < 24 {
                return Err(RtcpError::TooShort);
            }
            Ok(RtcpPacket::SenderReport {
                ssrc: be32(body, 0)?,
                ntp: be64(body, 4)?,
                rtp_ts: be32(body, 12)?,
                packets: be32(body, 16)?,
                octets: be32(body, 20)?,
                reports: blocks(24)?,
            })
        }
        PT_RR => {
            if body.len() < 4 {
                return Err(RtcpError::TooShort);
            }
            Ok(RtcpPacket::ReceiverReport {
                ssrc: be32(body, 0)?,
                reports: blocks(4)?,
            })
        }
        PT_SDES => Ok(RtcpPacket::Sdes),
        PT_BYE => {
            let need = usize::from(count) * 4;
            if body.len() < need {
                return Err(RtcpError::Malformed);
            }
            Ok(RtcpPacket::Bye)
        }
        PT_RTPFB => {
            if body.len() < 8 {
                return Err(RtcpError::TooShort);
            }
            let sender_ssrc = be32(body, 0)?;
            let media_ssrc = be32(body, 4)?;
            match count {
                FMT_NACK => {
                    let fci = body.get(8..).ok_or(RtcpError::TooShort)?;
                    if fci.is_empty() {
                        return Err(RtcpError::TooShort);
                    }
                    if fci.len() % 4 != 0 {
                        return Err(RtcpError::Malformed);
                    }
                    Ok(RtcpPacket::Nack {
                        sender_ssrc,
                        media_ssrc,
                        // Start "exhausted" so the first next() loads the first FCI.
                        items: NackItems {
                            rest: fci,
                            pid: 0,
                            blp: 0,
                            bit: 17,
                        },
                    })
                }
                FMT_TWCC => {
                    // base seq, status count, reference time, fb pkt count
                    if body.len() < 16 {
                        return Err(RtcpError::TooShort);
                    }
                    Ok(RtcpPacket::TransportCc {
                        sender_ssrc,
                        media_ssrc,
                    })
                }
                fmt => Ok(RtcpPacket::Other { pt, fmt }),
            }
        }
        PT_PSFB => {
            if body.len() < 8 {
                return Err(RtcpError::TooShort);
            }
            let sender_ssrc = be32(body, 0)?;
            let media_ssrc = be32(body, 4)?;
            match count {
                FMT_PLI => Ok(RtcpPacket::Pli {
                    sender_ssrc,
                    media_ssrc,
                }),
                FMT_FIR => {
                    let fci = body.get(8..).ok_or(RtcpError::TooShort)?;
                    if fci.is_empty() {
                        return Err(RtcpError::TooShort);
                    }
                    if fci.len() % 8 != 0 {
                        return Err(RtcpError::Malformed);
                    }
                    Ok(RtcpPacket::Fir {
                        sender_ssrc,
                        entries: FirEntries { rest: fci },
                    })
                }
                FMT_AFB if body.get(8..12) == Some(b"REMB") => {
                    // num ssrc (1) + exp/mantissa (3) + num * 4 ssrcs
                    let num = usize::from(*body.get(12).ok_or(RtcpError::TooShort)?);
                    if body.len() < 16 + num * 4 {
                        return Err(RtcpError::Malformed);
                    }
                    Ok(RtcpPacket::Remb)
                }
                fmt => Ok(RtcpPacket::Other { pt, fmt }),
            }
        }
        _ => Ok(RtcpPacket::Other { pt, fmt: count }),
    }
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

fn put32(out: &mut [u8], off: usize, v: u32) {
    if let Some(d) = out.get_mut(off..off + 4) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

fn put_header(out: &mut [u8], count: u8, pt: u8, total_len: usize) {
    let words = (total_len / 4).saturating_sub(1) as u16;
    if let Some(h) = out.get_mut(..4) {
        h[0] = 0x80 | (count & 0x1F);
        h[1] = pt;
        h[2..4].copy_from_slice(&words.to_be_bytes());
    }
}

fn write_blocks(out: &mut [u8], off: usize, reports: &[ReportBlock]) {
    for (i, rb) in reports.iter().enumerate() {
        let s = off + i * REPORT_BLOCK_LEN;
        if let Some(d) = out.get_mut(s..s + REPORT_BLOCK_LEN) {
            rb.write(d);
        }
    }
}

/// Write a receiver report. At most [`MAX_REPORT_BLOCKS`] blocks (else `Malformed`).
pub fn write_rr(
    out: &mut [u8],
    sender_ssrc: u32,
    reports: &[ReportBlock],
) -> Result<usize, RtcpError> {
    if reports.len() > MAX_REPORT_BLOCKS {
        return Err(RtcpError::Malformed);
    }
    let len = 8 + reports.len() * REPORT_BLOCK_LEN;
    let out = out.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    put_header(out, reports.len() as u8, PT_RR, len);
    put32(out, 4, sender_ssrc);
    write_blocks(out, 8, reports);
    Ok(len)
}

/// Write a sender report. At most [`MAX_REPORT_BLOCKS`] blocks (else `Malformed`).
pub fn write_sr(
    out: &mut [u8],
    ssrc: u32,
    ntp: u64,
    rtp_ts: u32,
    packets: u32,
    octets: u32,
    reports: &[ReportBlock],
) -> Result<usize, RtcpError> {
    if reports.len() > MAX_REPORT_BLOCKS {
        return Err(RtcpError::Malformed);
    }
    let len = 28 + reports.len() * REPORT_BLOCK_LEN;
    let out = out.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    put_header(out, reports.len() as u8, PT_SR, len);
    put32(out, 4, ssrc);
    put32(out, 8, (ntp >> 32) as u32);
    put32(out, 12, ntp as u32);
    put32(out, 16, rtp_ts);
    put32(out, 20, packets);
    put32(out, 24, octets);
    write_blocks(out, 28, reports);
    Ok(len)
}

/// Write a picture loss indication (12 bytes).
pub fn write_pli(out: &mut [u8], sender_ssrc: u32, media_ssrc: u32) -> Result<usize, RtcpError> {
    let out = out.get_mut(..12).ok_or(RtcpError::BufferTooSmall)?;
    put_header(out, FMT_PLI, PT_PSFB, 12);
    put32(out, 4, sender_ssrc);
    put32(out, 8, media_ssrc);
    Ok(12)
}

/// Write a full intra request with one entry for `media_ssrc` (20 bytes). Per RFC 5104 the
/// header's media-source SSRC is 0 and the target SSRC is in the FCI entry.
pub fn write_fir(
    out: &mut [u8],
    sender_ssrc: u32,
    media_ssrc: u32,
    seq_nr: u8,
) -> Result<usize, RtcpError> {
    let out = out.get_mut(..20).ok_or(RtcpError::BufferTooSmall)?;
    put_header(out, FMT_FIR, PT_PSFB, 20);
    put32(out, 4, sender_ssrc);
    put32(out, 8, 0);
    put32(out, 12, media_ssrc);
    put32(out, 16, u32::from(seq_nr) << 24);
    Ok(20)
}

/// Write a generic NACK for `lost`, packing seqs into PID + BLP entries (a seq within 1..=16
/// after an existing PID shares its entry; order of `lost` does not matter, duplicates are
/// harmless). Returns `Ok(0)` and writes nothing when `lost` is empty. Work is
/// O(lost × entries); callers bound `lost` (e.g. by [`crate::nack::NACK_MAX_PENDING`]).
pub fn write_nack(
    out: &mut [u8],
    sender_ssrc: u32,
    media_ssrc: u32,
    lost: &[u16],
) -> Result<usize, RtcpError> {
    if lost.is_empty() {
        return Ok(0);
    }
    if out.len() < 16 {
        return Err(RtcpError::BufferTooSmall);
    }
    let mut len = 12;
    'seqs: for &seq in lost {
        let mut off = 12;
        while off < len {
            let pid = be16(out, off)?;
            let d = seq.wrapping_sub(pid);
            if d == 0 {
                continue 'seqs;
            }
            if d <= 16 {
                let blp = be16(out, off + 2)? | (1 << (d - 1));
                if let Some(x) = out.get_mut(off + 2..off + 4) {
                    x.copy_from_slice(&blp.to_be_bytes());
                }
                continue 'seqs;
            }
            off += 4;
        }
        // The u16 length field limits a packet to 65536 words.
        if len + 4 > out.len() || len + 4 > 4 * 65536 {
            return Err(RtcpError::BufferTooSmall);
        }
        put32(out, len, u32::from(seq) << 16);
        len += 4;
    }
    put_header(out, FMT_NACK, PT_RTPFB, len);
    put32(out, 4, sender_ssrc);
    put32(out, 8, media_ssrc);
    Ok(len)
}

// ---------------------------------------------------------------------------------------------
// Receive statistics (RFC 3550 A.1, A.3, A.8)
// ---------------------------------------------------------------------------------------------

/// A sequence jump larger than this (forward) is treated as a possible source restart
/// (RFC 3550 A.1 `MAX_DROPOUT`): the packet is not counted until the next one confirms it.
pub const RECV_MAX_DROPOUT: u16 = 3000;
/// A packet more than this far behind the highest seq is treated like a jump (RFC 3550 A.1
/// `MAX_MISORDER`).
pub const RECV_MAX_MISORDER: u16 = 100;

/// Middle 32 bits of a 64-bit NTP timestamp (the "compact" form used in LSR/DLSR).
pub fn compact_ntp(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Per incoming stream receive statistics (RFC 3550 A.3/A.8) for building report blocks.
/// Fixed size, no allocation.
#[derive(Debug, Clone)]
pub struct RecvStats {
    ssrc: u32,
    clock_rate: u32,
    /// Set on the first packet: reference for arrival times in RTP units.
    epoch: Option<Instant>,
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: Option<u16>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Last relative transit time, RTP units.
    transit: Option<i64>,
    /// Jitter scaled by 16 (RFC 3550 A.8 integer form).
    jitter_q4: u64,
    last_sr: u32,
    last_sr_at: Option<Instant>,
}

impl RecvStats {
    /// New statistics for `ssrc` whose RTP clock runs at `clock_rate` Hz.
    pub fn new(ssrc: u32, clock_rate: u32) -> Self {
        RecvStats {
            ssrc,
            clock_rate,
            epoch: None,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: None,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: None,
            jitter_q4: 0,
            last_sr: 0,
            last_sr_at: None,
        }
    }

    fn arrival_rtp(&self, now: Instant) -> i64 {
        let Some(epoch) = self.epoch else { return 0 };
        let ns = now.saturating_duration_since(epoch).as_nanos();
        let units = ns.saturating_mul(u128::from(self.clock_rate)) / 1_000_000_000;
        // Keep within i64; transit differences only need the low bits to be consistent.
        (units & 0x7FFF_FFFF_FFFF) as i64
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = None;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
        self.transit = None;
    }

    /// Record an RTP packet of this stream arriving at `now`.
    pub fn on_packet(&mut self, now: Instant, seq: u16, rtp_ts: u32) {
        if self.epoch.is_none() {
            self.epoch = Some(now);
            self.init_seq(seq);
        } else {
            let udelta = seq.wrapping_sub(self.max_seq);
            if udelta == 0 && self.received > 0 {
                // duplicate of the highest packet
                self.received += 1;
                return;
            }
            if udelta < RECV_MAX_DROPOUT {
                if seq < self.max_seq {
                    self.cycles = self.cycles.wrapping_add(1 << 16);
                }
                self.max_seq = seq;
                self.bad_seq = None;
            } else if udelta <= u16::MAX - RECV_MAX_MISORDER {
                // Large jump: wait for a second packet to confirm a restart.
                if self.bad_seq == Some(seq) {
                    self.init_seq(seq);
                } else {
                    self.bad_seq = Some(seq.wrapping_add(1));
                    return;
                }
            } else {
                // Reordered / duplicate older packet: counted, no jitter update.
                self.received += 1;
                return;
            }
        }
        self.received += 1;
        // Jitter only from in-order packets (RFC 3550 A.8).
        let arrival = self.arrival_rtp(now);
        let transit = arrival - i64::from(rtp_ts);
        if let Some(prev) = self.transit {
            // Both are differences of wrapping 32-bit clocks: reduce the delta mod 2^32.
            let d = i64::from((transit - prev) as i32).unsigned_abs();
            let j = self.jitter_q4;
            self.jitter_q4 = (j + d).saturating_sub((j + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// Record a sender report for this stream (its 64-bit NTP timestamp) received at `now`.
    pub fn on_sender_report(&mut self, now: Instant, ntp: u64) {
        self.last_sr = compact_ntp(ntp);
        self.last_sr_at = Some(now);
    }

    /// Cumulative packets lost (expected − received; negative with duplicates).
    pub fn cumulative_lost(&self) -> i64 {
        if self.epoch.is_none() {
            return 0;
        }
        let expected = self.extended_max() as i64 - i64::from(self.base_seq) + 1;
        expected - self.received as i64
    }

    fn extended_max(&self) -> u64 {
        u64::from(self.cycles) + u64::from(self.max_seq)
    }

    /// Current interarrival jitter in RTP units.
    pub fn jitter(&self) -> u32 {
        (self.jitter_q4 >> 4).min(u64::from(u32::MAX)) as u32
    }

    /// Build a report block for this stream and start a new loss interval.
    pub fn report_block(&mut self, now: Instant) -> ReportBlock {
        if self.epoch.is_none() {
            return ReportBlock {
                ssrc: self.ssrc,
                ..ReportBlock::default()
            };
        }
        let expected = (self.extended_max() + 1).saturating_sub(u64::from(self.base_seq));
        let lost = self.cumulative_lost().clamp(-0x80_0000, 0x7F_FFFF);
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval).min(255) as u8
        };
        let dlsr = match self.last_sr_at {
            Some(t) => {
                let d = now.saturating_duration_since(t);
                let units = d.as_nanos().saturating_mul(65536) / 1_000_000_000;
                units.min(u128::from(u32::MAX)) as u32
            }
            None => 0,
        };
        ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: (lost as i32 as u32) & 0x00FF_FFFF,
            highest_seq: self.extended_max() as u32,
            jitter: self.jitter(),
            lsr: if self.last_sr_at.is_some() {
                self.last_sr
            } else {
                0
            },
            dlsr,
        }
    }
}

/// Largest RTT [`rtt_from_report`] accepts; anything above is a stale/forged block. 60 s.
pub const RTT_MAX: Duration = Duration::from_secs(60);

/// Round-trip time from a report block we got back (lsr/dlsr) — RFC 3550 §6.4.1; ntp_now = our
/// NTP time now. `None` when no SR was reflected (lsr 0), the result would be negative, or it
/// exceeds [`RTT_MAX`].
pub fn rtt_from_report(ntp_now: u64, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let elapsed = compact_ntp(ntp_now).wrapping_sub(lsr);
    if elapsed >= 1 << 31 {
        return None; // lsr in our future
    }
    let units = elapsed.checked_sub(dlsr)?;
    let rtt = Duration::from_nanos(u64::from(units) * 1_000_000_000 / 65536);
    (rtt <= RTT_MAX).then_some(rtt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rb(i: u32) -> ReportBlock {
        ReportBlock {
            ssrc: 0x1000 + i,
            fraction_lost: i as u8 * 7,
            cumulative_lost: 0x12_3456 + i,
            highest_seq: 0x0001_FFF0 + i,
            jitter: 273 + i,
            lsr: 0x9F36_4320 + i,
            dlsr: 150_137 + i,
        }
    }

    #[test]
    fn header_errors() {
        assert_eq!(iter(&[]).next().map(|r| r.err()), None);
        assert_eq!(
            iter(&[0x80, 200]).next().unwrap().err(),
            Some(RtcpError::TooShort)
        );
        assert_eq!(
            iter(&[0x40, 201, 0, 1, 0, 0, 0, 0]).next().unwrap().err(),
            Some(RtcpError::BadVersion)
        );
        // length past the end
        assert_eq!(
            iter(&[0x80, 201, 0, 2, 0, 0, 0, 0]).next().unwrap().err(),
            Some(RtcpError::BadLength)
        );
        assert_eq!(
            iter(&[0x80, 201, 0xFF, 0xFF, 0, 0, 0, 0])
                .next()
                .unwrap()
                .err(),
            Some(RtcpError::BadLength)
        );
    }

    #[test]
    fn padding_validated() {
        // RR with 4 bytes padding (P bit), pad count 4
        let ok = [0xA0, 201, 0, 2, 1, 2, 3, 4, 0, 0, 0, 4];
        assert!(matches!(
            iter(&ok).next(),
            Some(Ok(RtcpPacket::ReceiverReport {
                ssrc: 0x0102_0304,
                ..
            }))
        ));
        let zero = [0xA0, 201, 0, 2, 1, 2, 3, 4, 0, 0, 0, 0];
        assert_eq!(
            iter(&zero).next().unwrap().err(),
            Some(RtcpError::BadLength)
        );
        let big = [0xA0, 201, 0, 2, 1, 2, 3, 4, 0, 0, 0, 9];
        assert_eq!(iter(&big).next().unwrap().err(), Some(RtcpError::BadLength));
        // padding eats the SSRC
        let eat = [0xA0, 201, 0, 2, 1, 2, 3, 4, 0, 0, 0, 8];
        assert_eq!(iter(&eat).next().unwrap().err(), Some(RtcpError::TooShort));
    }

    #[test]
    fn writers_iterate_back() {
        let mut buf = [0u8; 1500];
        let reports = [rb(0), rb(1)];
        let n = write_sr(&mut buf, 7, 0x0102_0304_0506_0708, 9, 10, 11, &reports).unwrap();
        assert_eq!(n, 28 + 48);
        match iter(&buf[..n]).next().unwrap().unwrap() {
            RtcpPacket::SenderReport {
                ssrc,
                ntp,
                rtp_ts,
                packets,
                octets,
                reports: r,
            } => {
                assert_eq!(
                    (ssrc, ntp, rtp_ts, packets, octets),
                    (7, 0x0102_0304_0506_0708, 9, 10, 11)
                );
                assert_eq!(r.collect::<Vec<_>>(), reports.to_vec());
            }
            p => panic!("{p:?}"),
        }
        let n = write_rr(&mut buf, 5, &reports).unwrap();
        match iter(&buf[..n]).next().unwrap().unwrap() {
            RtcpPacket::ReceiverReport { ssrc, reports: r } => {
                assert_eq!(ssrc, 5);
                assert_eq!(r.collect::<Vec<_>>(), reports.to_vec());
            }
            p => panic!("{p:?}"),
        }
        let n = write_nack(&mut buf, 1, 2, &[100, 101, 116, 117, 65535, 0, 5]).unwrap();
        match iter(&buf[..n]).next().unwrap().unwrap() {
            RtcpPacket::Nack {
                sender_ssrc,
                media_ssrc,
                items,
            } => {
                assert_eq!((sender_ssrc, media_ssrc), (1, 2));
                let mut v: Vec<u16> = items.collect();
                v.sort_unstable();
                assert_eq!(v, vec![0, 5, 100, 101, 116, 117, 65535]);
            }
            p => panic!("{p:?}"),
        }
        // 100 covers 101 and 116; 117 needs a new entry; 65535 covers 0 and 5 (wrap)
        assert_eq!(n, 12 + 3 * 4);
        let n = write_fir(&mut buf, 1, 2, 3).unwrap();
        match iter(&buf[..n]).next().unwrap().unwrap() {
            RtcpPacket::Fir {
                sender_ssrc,
                entries,
            } => {
                assert_eq!(sender_ssrc, 1);
                assert_eq!(entries.collect::<Vec<_>>(), vec![(2, 3)]);
            }
            p => panic!("{p:?}"),
        }
        let n = write_pli(&mut buf, 1, 2).unwrap();
        assert!(matches!(
            iter(&buf[..n]).next(),
            Some(Ok(RtcpPacket::Pli {
                sender_ssrc: 1,
                media_ssrc: 2
            }))
        ));
    }

    #[test]
    fn writers_buffer_too_small() {
        let reports = [rb(0)];
        for n in 0..52 {
            let mut b = vec![0u8; n];
            assert_eq!(
                write_sr(&mut b, 1, 2, 3, 4, 5, &reports),
                Err(RtcpError::BufferTooSmall)
            );
        }
        for n in 0..32 {
            let mut b = vec![0u8; n];
            assert_eq!(
                write_rr(&mut b, 1, &reports),
                Err(RtcpError::BufferTooSmall)
            );
        }
        for n in 0..12 {
            assert_eq!(
                write_pli(&mut vec![0u8; n], 1, 2),
                Err(RtcpError::BufferTooSmall)
            );
        }
        for n in 0..20 {
            assert_eq!(
                write_fir(&mut vec![0u8; n], 1, 2, 3),
                Err(RtcpError::BufferTooSmall)
            );
        }
        for n in 0..20 {
            assert_eq!(
                write_nack(&mut vec![0u8; n], 1, 2, &[1, 100]),
                Err(RtcpError::BufferTooSmall)
            );
        }
        assert_eq!(write_nack(&mut [0u8; 64], 1, 2, &[]), Ok(0));
        assert_eq!(
            write_rr(&mut [0u8; 2000], 1, &[rb(0); 32]),
            Err(RtcpError::Malformed)
        );
    }

    #[test]
    fn hostile_remb_and_nack() {
        // REMB claiming 255 SSRCs in 24 bytes
        let remb = [
            0x8F, 206, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0, b'R', b'E', b'M', b'B', 255, 0x12, 0x34, 0x56,
            0, 0, 0, 9,
        ];
        assert_eq!(
            iter(&remb).next().unwrap().err(),
            Some(RtcpError::Malformed)
        );
        let mut ok = remb;
        ok[16] = 1;
        assert!(matches!(iter(&ok).next(), Some(Ok(RtcpPacket::Remb))));
        // NACK with 250 FCIs each all bits set: 250*17 = 4250 seqs, bounded by length
        let mut nack = vec![0x81, 205, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        for i in 0..250u16 {
            nack.extend_from_slice(&(i * 17).to_be_bytes());
            nack.extend_from_slice(&[0xFF, 0xFF]);
        }
        let words = (nack.len() / 4 - 1) as u16;
        nack[2..4].copy_from_slice(&words.to_be_bytes());
        match iter(&nack).next().unwrap().unwrap() {
            RtcpPacket::Nack { items, .. } => assert_eq!(items.count(), 250 * 17),
            p => panic!("{p:?}"),
        }
        // NACK with FCI length not a multiple of 4 is impossible (length is in words) but an
        // empty FCI is rejected
        let empty = [0x81, 205, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(
            iter(&empty).next().unwrap().err(),
            Some(RtcpError::TooShort)
        );
        // RR count 31 with no blocks
        let rr = [0x9F, 201, 0, 1, 0, 0, 0, 1];
        assert_eq!(iter(&rr).next().unwrap().err(), Some(RtcpError::Malformed));
        // BYE count 31 with one source
        let bye = [0x9F, 203, 0, 1, 0, 0, 0, 1];
        assert_eq!(iter(&bye).next().unwrap().err(), Some(RtcpError::Malformed));
        // TWCC with every status symbol 0b11 (2-bit vector chunks of 0xFFFF): not decoded, no panic
        let twcc = [
            0x8F, 205, 0, 5, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 14, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF,
            0xFF,
        ];
        assert!(matches!(
            iter(&twcc).next(),
            Some(Ok(RtcpPacket::TransportCc { .. }))
        ));
    }

    #[test]
    fn stops_after_first_error() {
        let mut buf = [0u8; 64];
        let n = write_pli(&mut buf, 1, 2).unwrap();
        buf[n] = 0x40; // bad version
        let m = write_pli(&mut buf[n + 12..], 3, 4).unwrap();
        let v: Vec<_> = iter(&buf[..n + 12 + m]).collect();
        assert_eq!(v.len(), 2);
        assert!(v[0].is_ok());
        assert_eq!(v[1].as_ref().err(), Some(&RtcpError::BadVersion));
    }

    #[test]
    fn recv_stats_loss_and_jitter_by_hand() {
        // 8 kHz clock, 20 ms packets = 160 units. Packets 0..=9, seq 3 and 7 lost.
        let t0 = Instant::now();
        let mut s = RecvStats::new(42, 8000);
        // arrival offsets (ms) chosen so that transit differences are known:
        // packet i sent at ts = 160*i, arrives at 20*i ms + extra[i] ms.
        let extra = [0u64, 1, 0, 0, 3, 3, 0, 0, 2, 0];
        let mut last = None;
        let mut j: f64 = 0.0;
        let mut prev_transit: Option<f64> = None;
        for i in 0..10u64 {
            if i == 3 || i == 7 {
                continue;
            }
            let at = t0 + Duration::from_millis(20 * i + extra[i as usize]);
            s.on_packet(at, 1000 + i as u16, 160 * i as u32);
            let transit = (extra[i as usize] * 8) as f64; // ms * 8 units/ms
            if let Some(p) = prev_transit {
                let d: f64 = (transit - p).abs();
                j += (d - j) / 16.0;
            }
            prev_transit = Some(transit);
            last = Some(at);
        }
        let b = s.report_block(last.unwrap());
        assert_eq!(b.ssrc, 42);
        assert_eq!(b.highest_seq, 1009);
        assert_eq!(b.cumulative_lost, 2);
        assert_eq!(b.fraction_lost, (2 * 256 / 10) as u8); // 51
        assert!(
            (f64::from(b.jitter) - j).abs() <= 1.0,
            "jitter {} vs {}",
            b.jitter,
            j
        );
        assert!(b.jitter > 0);
        // next interval: 10 packets, none lost
        let t1 = last.unwrap();
        for i in 10..20u64 {
            s.on_packet(
                t1 + Duration::from_millis(20 * (i - 9)),
                1000 + i as u16,
                160 * i as u32,
            );
        }
        let b2 = s.report_block(t1 + Duration::from_secs(1));
        assert_eq!(b2.fraction_lost, 0);
        assert_eq!(b2.cumulative_lost, 2);
        assert_eq!(b2.highest_seq, 1019);
    }

    #[test]
    fn recv_stats_wrap_lsr_dlsr_and_restart() {
        let t0 = Instant::now();
        let mut s = RecvStats::new(1, 90000);
        for (k, seq) in (65530u16..=65535).chain(0..5).enumerate() {
            s.on_packet(t0 + Duration::from_millis(k as u64), seq, 0);
        }
        s.on_sender_report(t0, 0x1234_5678_9ABC_DEF0);
        let b = s.report_block(t0 + Duration::from_millis(500));
        assert_eq!(b.highest_seq, 0x1_0004);
        assert_eq!(b.cumulative_lost, 0);
        assert_eq!(b.lsr, 0x5678_9ABC);
        assert_eq!(b.dlsr, 32768);
        // a single far jump is not counted; a second confirms a restart
        s.on_packet(t0, 30000, 0);
        assert_eq!(s.report_block(t0).highest_seq, 0x1_0004);
        s.on_packet(t0, 30001, 0);
        let b = s.report_block(t0);
        assert_eq!(b.highest_seq, 30001);
        assert_eq!(b.cumulative_lost, 0);
        // duplicates make cumulative loss negative (24-bit two's complement)
        s.on_packet(t0, 30001, 0);
        s.on_packet(t0, 30000, 0);
        assert_eq!(s.report_block(t0).cumulative_lost, 0x00FF_FFFE);
    }

    #[test]
    fn rtt() {
        let ntp_now: u64 = 0x0000_1000_8000_0000; // compact = 0x1000_8000
        let lsr = 0x1000_0000; // 0.5 s ago
        assert_eq!(
            rtt_from_report(ntp_now, lsr, 0x4000),
            Some(Duration::from_millis(250))
        );
        assert_eq!(rtt_from_report(ntp_now, 0, 0), None);
        assert_eq!(rtt_from_report(ntp_now, lsr, 0x9000), None); // negative
        assert_eq!(rtt_from_report(ntp_now, 0x1001_0000, 0), None); // future
    }

    #[test]
    fn reason_names() {
        for e in [
            RtcpError::TooShort,
            RtcpError::BadVersion,
            RtcpError::BadLength,
            RtcpError::BufferTooSmall,
            RtcpError::Malformed,
        ] {
            assert!(!e.reason().is_empty());
        }
    }

    fn drain(buf: &[u8]) -> usize {
        let mut n = 0;
        for p in iter(buf) {
            n += 1;
            if let Ok(p) = p {
                match p {
                    RtcpPacket::SenderReport { reports, .. }
                    | RtcpPacket::ReceiverReport { reports, .. } => {
                        n += reports.count();
                    }
                    RtcpPacket::Nack { items, .. } => n += items.count(),
                    RtcpPacket::Fir { entries, .. } => n += entries.count(),
                    _ => {}
                }
            }
        }
        n
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            drain(&buf);
        }

        #[test]
        fn arbitrary_bodies_with_valid_header_never_panic(
            b0 in 0x80u8..0xC0, pt in 192u8..224, body in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            let mut buf = vec![b0, pt];
            let words = (body.len() / 4) as u16;
            buf.extend_from_slice(&words.to_be_bytes());
            buf.extend_from_slice(&body[..body.len() / 4 * 4]);
            drain(&buf);
        }

        #[test]
        fn nack_writer_covers_input(lost in proptest::collection::vec(any::<u16>(), 1..200)) {
            let mut out = vec![0u8; 4096];
            let n = write_nack(&mut out, 1, 2, &lost).unwrap();
            let mut got: Vec<u16> = match iter(&out[..n]).next().unwrap().unwrap() {
                RtcpPacket::Nack { items, .. } => items.collect(),
                _ => unreachable!(),
            };
            let mut want = lost.clone();
            want.sort_unstable();
            want.dedup();
            got.sort_unstable();
            got.dedup();
            prop_assert_eq!(got, want);
        }
    }
}
