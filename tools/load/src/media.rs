//! Synthetic media: RTP packet writing for publishers (one-byte header extensions mid/rid/
//! abs-send-time/transport-cc), VP8 payload descriptors with correct keyframe bits, frame sizes
//! per simulcast layer, and the *probe* every payload carries (publisher seq + send time) that
//! viewers read back to measure SFU-added latency.
//!
//! All writers work on caller-provided buffers and never allocate.

use ils_rtp::vp8::Vp8Descriptor;

/// Magic at the start of a probe ("ILSP").
pub const PROBE_MAGIC: [u8; 4] = *b"ILSP";
/// Probe length in bytes: magic(4) layer(1) kind(1) flags(1) reserved(1) seq(4) send_ns(8).
pub const PROBE_LEN: usize = 20;
/// Largest RTP payload a publisher writes. Default 1200 B (the brief's limit; leaves room for
/// header, extensions and the SRTP tag under a 1500 B MTU).
pub const MAX_RTP_PAYLOAD: usize = 1200;
/// Bytes of a VP8 payload descriptor as we write it: X, I (15-bit PictureID), L (TL0PICIDX).
pub const VP8_DESCRIPTOR_LEN: usize = 5;
/// VP8 keyframe header we write (3-byte frame tag + start code + 4 bytes of dimensions).
pub const VP8_KEY_HEADER_LEN: usize = 10;
/// VP8 interframe header we write (3-byte frame tag).
pub const VP8_DELTA_HEADER_LEN: usize = 3;
/// Opus-like payload bytes per 20 ms packet, probe included. Default 100 (≈ 40 kb/s).
pub const OPUS_PAYLOAD_LEN: usize = 100;
/// Audio packet interval in ms (Opus default frame).
pub const AUDIO_PTIME_MS: u64 = 20;
/// Simulcast layer bitrates in bits/s (q, h, f).
pub const LAYER_BITRATES: [u64; 3] = [150_000, 500_000, 1_500_000];
/// Video frame rate of every layer.
pub const VIDEO_FPS: u64 = 30;
/// A keyframe is this many times the average frame size (then delta frames shrink so the
/// layer keeps its bitrate over a keyframe interval).
pub const KEYFRAME_SIZE_FACTOR: u64 = 4;

/// Why a packet could not be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Output buffer too small.
    #[error("buffer too small")]
    BufferTooSmall,
    /// No probe where one was expected (payload too short or wrong magic).
    #[error("no probe in payload")]
    NoProbe,
    /// VP8 descriptor unparseable.
    #[error("bad VP8 descriptor")]
    BadVp8,
}

/// What a probe says about its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Simulcast layer index (0 = q; audio: 0).
    pub layer: u8,
    /// 0 = audio, 1 = video.
    pub kind: u8,
    /// True on packets of a keyframe.
    pub keyframe: bool,
    /// Publisher's own per-stream packet counter.
    pub seq: u32,
    /// CLOCK_MONOTONIC ns when the publisher sent it.
    pub send_ns: u64,
}

impl Probe {
    /// Write the probe into `out[..PROBE_LEN]`.
    pub fn write(&self, out: &mut [u8]) -> Result<(), MediaError> {
        let o = out.get_mut(..PROBE_LEN).ok_or(MediaError::BufferTooSmall)?;
        o[..4].copy_from_slice(&PROBE_MAGIC);
        o[4] = self.layer;
        o[5] = self.kind;
        o[6] = u8::from(self.keyframe);
        o[7] = 0;
        o[8..12].copy_from_slice(&self.seq.to_be_bytes());
        o[12..20].copy_from_slice(&self.send_ns.to_be_bytes());
        Ok(())
    }

    /// Read a probe from the start of `b`.
    pub fn read(b: &[u8]) -> Result<Self, MediaError> {
        let p: &[u8; PROBE_LEN] = b
            .get(..PROBE_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(MediaError::NoProbe)?;
        if p[..4] != PROBE_MAGIC {
            return Err(MediaError::NoProbe);
        }
        let mut seq = [0u8; 4];
        seq.copy_from_slice(&p[8..12]);
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&p[12..20]);
        Ok(Self {
            layer: p[4],
            kind: p[5],
            keyframe: p[6] & 1 != 0,
            seq: u32::from_be_bytes(seq),
            send_ns: u64::from_be_bytes(ns),
        })
    }
}

/// Find the probe in a VP8 RTP payload: after the descriptor and, on the first packet of a
/// frame, after the VP8 frame header (keyframe or interframe). Returns the probe and whether
/// the packet starts a keyframe.
pub fn vp8_probe(payload: &[u8]) -> Result<(Probe, bool), MediaError> {
    let d = Vp8Descriptor::parse(payload).map_err(|_| MediaError::BadVp8)?;
    let body = payload.get(d.header_len..).ok_or(MediaError::BadVp8)?;
    let (skip, key_start) = if d.start_of_partition && d.partition_id == 0 {
        let tag = *body.first().ok_or(MediaError::NoProbe)?;
        if tag & 1 == 0 {
            (VP8_KEY_HEADER_LEN, true)
        } else {
            (VP8_DELTA_HEADER_LEN, false)
        }
    } else {
        (0, false)
    };
    let p = Probe::read(body.get(skip..).ok_or(MediaError::NoProbe)?)?;
    Ok((p, key_start))
}

/// Fields of one outgoing RTP packet.
#[derive(Debug, Clone, Copy)]
pub struct RtpOut<'a> {
    /// Payload type.
    pub pt: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub ts: u32,
    /// SSRC.
    pub ssrc: u32,
    /// (id, mid value).
    pub mid: Option<(u8, &'a [u8])>,
    /// (id, rid value).
    pub rid: Option<(u8, &'a [u8])>,
    /// (id, 24-bit abs-send-time).
    pub abs_send_time: Option<(u8, u32)>,
    /// (id, transport-wide seq).
    pub twcc: Option<(u8, u16)>,
    /// (id, audio level byte).
    pub audio_level: Option<(u8, u8)>,
}

fn put_ext(out: &mut [u8], pos: &mut usize, id: u8, data: &[u8]) -> Result<(), MediaError> {
    if !(1..=14).contains(&id) || data.is_empty() || data.len() > 16 {
        return Err(MediaError::BufferTooSmall);
    }
    let end = *pos + 1 + data.len();
    let o = out.get_mut(*pos..end).ok_or(MediaError::BufferTooSmall)?;
    // data.len() is 1..=16 (checked above).
    o[0] = (id << 4) | (data.len() as u8 - 1);
    o[1..].copy_from_slice(data);
    *pos = end;
    Ok(())
}

/// Write the RTP header with a one-byte-form extension block; returns the header length
/// (the payload starts there).
pub fn write_rtp_header(out: &mut [u8], p: &RtpOut<'_>) -> Result<usize, MediaError> {
    let fixed = out.get_mut(..16).ok_or(MediaError::BufferTooSmall)?;
    fixed[0] = 0x90; // V=2, X=1
    fixed[1] = (u8::from(p.marker) << 7) | (p.pt & 0x7F);
    fixed[2..4].copy_from_slice(&p.seq.to_be_bytes());
    fixed[4..8].copy_from_slice(&p.ts.to_be_bytes());
    fixed[8..12].copy_from_slice(&p.ssrc.to_be_bytes());
    fixed[12..14].copy_from_slice(&0xBEDEu16.to_be_bytes());
    let mut pos = 16;
    if let Some((id, v)) = p.mid {
        put_ext(out, &mut pos, id, v)?;
    }
    if let Some((id, v)) = p.rid {
        put_ext(out, &mut pos, id, v)?;
    }
    if let Some((id, t)) = p.abs_send_time {
        let b = t.to_be_bytes();
        put_ext(out, &mut pos, id, &b[1..4])?;
    }
    if let Some((id, s)) = p.twcc {
        put_ext(out, &mut pos, id, &s.to_be_bytes())?;
    }
    if let Some((id, l)) = p.audio_level {
        put_ext(out, &mut pos, id, &[l])?;
    }
    while (pos - 16) % 4 != 0 {
        *out.get_mut(pos).ok_or(MediaError::BufferTooSmall)? = 0;
        pos += 1;
    }
    let words = u16::try_from((pos - 16) / 4).map_err(|_| MediaError::BufferTooSmall)?;
    if let Some(l) = out.get_mut(14..16) {
        l.copy_from_slice(&words.to_be_bytes());
    }
    Ok(pos)
}

/// One VP8 packet's position in its frame.
#[derive(Debug, Clone, Copy)]
pub struct Vp8Packet {
    /// First packet of the frame (S=1, VP8 frame header follows).
    pub first: bool,
    /// The frame is a keyframe.
    pub keyframe: bool,
    /// 15-bit PictureID.
    pub picture_id: u16,
    /// TL0PICIDX.
    pub tl0picidx: u8,
}

/// Write a VP8 payload of exactly `len` bytes (descriptor, frame header on the first packet,
/// probe, filler). `len` must leave room for the probe.
pub fn write_vp8_payload(
    out: &mut [u8],
    v: &Vp8Packet,
    probe: &Probe,
    len: usize,
) -> Result<usize, MediaError> {
    let o = out.get_mut(..len).ok_or(MediaError::BufferTooSmall)?;
    let hdr = VP8_DESCRIPTOR_LEN
        + match (v.first, v.keyframe) {
            (false, _) => 0,
            (true, true) => VP8_KEY_HEADER_LEN,
            (true, false) => VP8_DELTA_HEADER_LEN,
        };
    if len < hdr + PROBE_LEN {
        return Err(MediaError::BufferTooSmall);
    }
    o[0] = 0x80 | if v.first { 0x10 } else { 0 };
    o[1] = 0xC0; // I, L
    let pid = v.picture_id & 0x7FFF;
    o[2] = 0x80 | (pid >> 8) as u8;
    o[3] = pid as u8;
    o[4] = v.tl0picidx;
    if v.first {
        // RFC 6386 §9.1 frame tag: P (bit 0), version 0, show_frame (bit 4), first partition
        // size (19 bits) — a plausible size, the engine only reads P.
        let part: u32 = 100;
        let tag: u32 = u32::from(!v.keyframe) | (1 << 4) | (part << 5);
        o[5] = tag as u8;
        o[6] = (tag >> 8) as u8;
        o[7] = (tag >> 16) as u8;
        if v.keyframe {
            o[8..11].copy_from_slice(&[0x9d, 0x01, 0x2a]);
            o[11..13].copy_from_slice(&640u16.to_le_bytes());
            o[13..15].copy_from_slice(&360u16.to_le_bytes());
        }
    }
    probe.write(&mut o[hdr..])?;
    for (i, b) in o[hdr + PROBE_LEN..].iter_mut().enumerate() {
        *b = i as u8;
    }
    Ok(len)
}

/// Write an Opus-like payload of [`OPUS_PAYLOAD_LEN`] bytes: probe then filler (a real Opus TOC
/// byte is not needed by an SFU, which never decodes audio).
pub fn write_opus_payload(out: &mut [u8], probe: &Probe) -> Result<usize, MediaError> {
    let o = out
        .get_mut(..OPUS_PAYLOAD_LEN)
        .ok_or(MediaError::BufferTooSmall)?;
    probe.write(o)?;
    for (i, b) in o[PROBE_LEN..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7);
    }
    Ok(OPUS_PAYLOAD_LEN)
}

/// Frame sizes of one simulcast layer: the layer's bitrate at [`VIDEO_FPS`], keyframes
/// [`KEYFRAME_SIZE_FACTOR`] × the average, ±20 % deterministic jitter on delta frames.
#[derive(Debug, Clone)]
pub struct FrameSizer {
    avg: u64,
    key: u64,
    delta: u64,
    rng: u64,
}

impl FrameSizer {
    /// Sizes for `bitrate` bits/s with a keyframe every `gop_frames` frames.
    pub fn new(bitrate: u64, gop_frames: u64, seed: u64) -> Self {
        let avg = (bitrate / 8 / VIDEO_FPS).max(1);
        let gop = gop_frames.max(2);
        let key = avg * KEYFRAME_SIZE_FACTOR;
        let delta = (avg * gop).saturating_sub(key) / (gop - 1);
        Self {
            avg,
            key,
            delta: delta.max(PROBE_LEN as u64 + 16),
            rng: seed | 1,
        }
    }

    /// Average frame size in bytes.
    pub fn average(&self) -> u64 {
        self.avg
    }

    /// Size in bytes of the next frame.
    pub fn next(&mut self, keyframe: bool) -> usize {
        if keyframe {
            return self.key as usize;
        }
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let j = self.rng % 41; // 0..=40 → -20 %..+20 %
        (self.delta * (80 + j) / 100) as usize
    }
}

/// Split a frame of `frame_len` payload bytes into packets of at most [`MAX_RTP_PAYLOAD`]
/// (descriptor + headers + probe included): returns (packet count, payload length of each but
/// the last, payload length of the last).
pub fn packetize(frame_len: usize, keyframe: bool) -> (usize, usize, usize) {
    let first_hdr = VP8_DESCRIPTOR_LEN
        + if keyframe {
            VP8_KEY_HEADER_LEN
        } else {
            VP8_DELTA_HEADER_LEN
        };
    let min = first_hdr + PROBE_LEN;
    let total = frame_len.max(min) + VP8_DESCRIPTOR_LEN; // room for the extra descriptors
    let n = total.div_ceil(MAX_RTP_PAYLOAD).max(1);
    let each = total.div_ceil(n).max(min);
    let last = total.saturating_sub(each * (n - 1)).max(min);
    (n, each, last)
}

/// CLOCK_MONOTONIC in ns (the clock the probes carry; same clock on loopback).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// abs-send-time (6.18 fixed-point seconds, 24 bits) from ns.
pub fn abs_send_time(ns: u64) -> u32 {
    (((ns << 18) / 1_000_000_000) & 0x00FF_FFFF) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use ils_rtp::codec::{is_keyframe, Codec};
    use ils_rtp::header::RtpHeader;

    fn probe() -> Probe {
        Probe {
            layer: 1,
            kind: 1,
            keyframe: true,
            seq: 77,
            send_ns: 123_456_789,
        }
    }

    #[test]
    fn probe_round_trip_and_truncation() {
        let mut b = [0u8; PROBE_LEN];
        probe().write(&mut b).unwrap();
        assert_eq!(Probe::read(&b), Ok(probe()));
        for n in 0..PROBE_LEN {
            assert_eq!(Probe::read(&b[..n]), Err(MediaError::NoProbe));
        }
        b[0] ^= 1;
        assert_eq!(Probe::read(&b), Err(MediaError::NoProbe));
        assert!(probe().write(&mut [0u8; 3]).is_err());
    }

    #[test]
    fn vp8_keyframe_bits_are_what_the_engine_reads() {
        let mut b = [0u8; 200];
        let key = Vp8Packet {
            first: true,
            keyframe: true,
            picture_id: 300,
            tl0picidx: 4,
        };
        let n = write_vp8_payload(&mut b, &key, &probe(), 100).unwrap();
        assert!(is_keyframe(Codec::Vp8, &b[..n]));
        let d = Vp8Descriptor::parse(&b[..n]).unwrap();
        assert_eq!(d.picture_id, Some(300));
        assert_eq!(d.tl0picidx, Some(4));
        assert_eq!(vp8_probe(&b[..n]), Ok((probe(), true)));
        let delta = Vp8Packet {
            keyframe: false,
            ..key
        };
        let n = write_vp8_payload(&mut b, &delta, &probe(), 60).unwrap();
        assert!(!is_keyframe(Codec::Vp8, &b[..n]));
        assert_eq!(vp8_probe(&b[..n]).map(|x| x.1), Ok(false));
        let cont = Vp8Packet {
            first: false,
            ..key
        };
        let n = write_vp8_payload(&mut b, &cont, &probe(), 40).unwrap();
        assert!(!is_keyframe(Codec::Vp8, &b[..n]));
        assert_eq!(vp8_probe(&b[..n]), Ok((probe(), false)));
        // every truncation before the end of the probe is an error
        for l in 0..VP8_DESCRIPTOR_LEN + PROBE_LEN {
            assert!(vp8_probe(&b[..l]).is_err(), "{l}");
        }
        assert!(write_vp8_payload(&mut b, &key, &probe(), 20).is_err());
    }

    #[test]
    fn rtp_header_parses_with_extensions() {
        let mut b = [0u8; 100];
        let p = RtpOut {
            pt: 96,
            marker: true,
            seq: 65535,
            ts: 9000,
            ssrc: 0xdead_beef,
            mid: Some((4, b"1")),
            rid: Some((10, b"h")),
            abs_send_time: Some((2, abs_send_time(1_500_000_000))),
            twcc: Some((3, 513)),
            audio_level: None,
        };
        let hl = write_rtp_header(&mut b, &p).unwrap();
        b[hl] = 0xAA;
        let h = RtpHeader::parse(&b[..hl + 1]).unwrap();
        assert!(h.marker);
        assert_eq!((h.pt, h.seq, h.ts, h.ssrc), (96, 65535, 9000, 0xdead_beef));
        assert_eq!(h.header_len, hl);
        assert_eq!(ils_rtp::ext::find_ext(&b, &h, 4), Some(&b"1"[..]));
        assert_eq!(ils_rtp::ext::find_ext(&b, &h, 10), Some(&b"h"[..]));
        assert_eq!(
            ils_rtp::ext::find_ext(&b, &h, 3),
            Some(&513u16.to_be_bytes()[..])
        );
        assert!(write_rtp_header(&mut b[..10], &p).is_err());
        assert!(write_rtp_header(&mut b[..18], &p).is_err());
    }

    #[test]
    fn frame_sizes_keep_the_bitrate_and_packets_fit() {
        for (i, &br) in LAYER_BITRATES.iter().enumerate() {
            let gop = 90;
            let mut s = FrameSizer::new(br, gop, i as u64 + 1);
            let total: usize = (0..gop).map(|f| s.next(f == 0)).sum();
            let want = (br / 8 * gop / VIDEO_FPS) as f64;
            assert!(
                (total as f64 - want).abs() / want < 0.1,
                "layer {i}: {total} vs {want}"
            );
        }
        for len in [1usize, 50, 1199, 1200, 1201, 6000, 25_000] {
            for key in [true, false] {
                let (n, each, last) = packetize(len, key);
                assert!(each <= MAX_RTP_PAYLOAD && last <= MAX_RTP_PAYLOAD, "{len}");
                assert!(each >= PROBE_LEN + VP8_DESCRIPTOR_LEN);
                assert!(n * MAX_RTP_PAYLOAD >= len);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(d in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = vp8_probe(&d);
            let _ = Probe::read(&d);
        }
    }
}
