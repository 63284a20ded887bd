//! Shared set-up for the benches in `benches/`.
//!
//! [`ForwardRig`] drives one shard's sans-IO [`Core`] with no sockets: one publisher transport
//! and `legs` subscriber transports, each connected exactly as the real engine connects them
//! (`AddTransport`, an authenticated STUN Binding request with USE-CANDIDATE from the peer's
//! address, `InstallSrtp`), one published track (`AddTrack`) and one leg per subscriber
//! (`AddLeg`). [`PacketSource`] plays the publisher: it writes browser-like RTP packets
//! (one-byte header extensions abs-send-time, transport-cc and mid; VP8 payload descriptor with
//! a 15-bit picture id for video) and protects them with the publisher's own SRTP context, with
//! ever-increasing sequence numbers (the context carries the ROC across wraps), so the engine's
//! replay window never rejects one however many iterations criterion runs.
//!
//! Measured by `benches/forward.rs`: one call of [`ForwardRig::forward`] = one
//! `Core::handle_datagram` of one SRTP packet (demux, tuple lookup, unprotect, RTP parse, SSRC
//! lookup, receive statistics, NACK tracking, transport-cc arrival, RTX cache insert, and per leg:
//! leg rewrite, header/extension rewrite into the `TxBatch`, VP8 picture-id rewrite, protect),
//! then `TxBatch::clear` (what the shard does after its flush; the send itself is not included).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ils_engine::core::{Core, CoreConfig, VecOutbox};
use ils_engine::xshard::Mesh;
use ils_io::TxBatch;
use ils_shm::{Command, Counter, EncodingSpec, Event, LegSpec, MediaKind, ShortStr, TrackSpec};
use ils_srtp::{Profile, SrtpContext};

/// Largest datagram a [`Packet`] holds (the engine's receive limit).
pub const PACKET_CAPACITY: usize = ils_io::MAX_DATAGRAM;
/// Header extension id of abs-send-time in the synthetic publisher offer.
pub const ABS_SEND_TIME_EXT: u8 = 2;
/// Header extension id of transport-wide-cc (publisher and subscribers).
pub const TWCC_EXT: u8 = 3;
/// Header extension id of `sdes:mid`.
pub const MID_EXT: u8 = 4;
/// Publisher media SSRC (announced in the track's encoding, as an offer with `a=ssrc` does).
pub const PUBLISHER_SSRC: u32 = 0x5EED_0001;
/// Track id used by the rig.
pub const TRACK: u32 = 1;
/// Publisher transport id.
pub const PUBLISHER: u32 = 1;
/// First subscriber transport id (subscriber `i` is `FIRST_SUBSCRIBER + i`).
pub const FIRST_SUBSCRIBER: u32 = 1000;
/// Largest number of subscriber legs a rig accepts (addresses are 10.1.x.y).
pub const MAX_RIG_LEGS: usize = 60_000;

/// What the publisher sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// VP8 video, `payload` bytes of RTP payload per packet (descriptor included), 90 kHz.
    Video {
        /// RTP payload bytes.
        payload: usize,
    },
    /// Opus audio, `payload` bytes per packet, 48 kHz, 20 ms packets.
    Audio {
        /// RTP payload bytes.
        payload: usize,
    },
}

/// Errors while building a rig (the engine rejected a command or did not forward).
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    /// The engine answered a set-up command with `Rejected`.
    #[error("command rejected: {0}")]
    Rejected(String),
    /// A transport's STUN Binding request did not get a reply / nomination.
    #[error("ICE did not nominate transport {0}")]
    Ice(u32),
    /// The first (key)frame was not forwarded to every leg.
    #[error("first packet forwarded to {got} of {want} legs; drops: {drops}")]
    NotForwarded {
        /// Legs reached.
        got: u64,
        /// Legs set up.
        want: u64,
        /// Drop counters that moved, `name=value`.
        drops: String,
    },
    /// Bad rig parameters.
    #[error("bad rig parameter: {0}")]
    Param(&'static str),
}

/// One protected datagram ready to be handed to the engine, with its arrival time.
pub struct Packet {
    /// Arrival time passed to `handle_datagram`.
    pub now: Instant,
    /// Bytes used in `buf`.
    pub len: usize,
    /// Datagram storage.
    pub buf: [u8; PACKET_CAPACITY],
}

/// Master key and salt of `profile` derived from a small number (distinct per transport/direction).
pub fn keys(profile: Profile, n: u32) -> (Vec<u8>, Vec<u8>) {
    let b = n.to_be_bytes();
    let key = (0..profile.master_key_len())
        .map(|i| b[i % 4] ^ (i as u8).wrapping_mul(37))
        .collect();
    let salt = (0..profile.master_salt_len())
        .map(|i| b[(i + 1) % 4] ^ (i as u8).wrapping_mul(91) ^ 0x5A)
        .collect();
    (key, salt)
}

/// Transport `id`'s key numbers: (engine rx = peer's tx, engine tx = peer's rx).
fn key_ids(id: u32) -> (u32, u32) {
    (id.wrapping_mul(2), id.wrapping_mul(2).wrapping_add(1))
}

/// The engine-side keys of `transport` for direction engine→peer (what the peer decrypts with).
pub fn peer_rx_keys(profile: Profile, transport: u32) -> (Vec<u8>, Vec<u8>) {
    keys(profile, key_ids(transport).1)
}

/// Remote address of subscriber `i`.
pub fn subscriber_addr(i: usize) -> SocketAddr {
    let hi = (i / 250) as u8;
    let lo = (i % 250) as u8 + 1;
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 1, hi, lo), 40_000))
}

/// Remote address of the publisher.
pub fn publisher_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 50_000))
}

fn short(s: &str) -> ShortStr {
    // INVARIANT: only called with the rig's literals, all shorter than 16 bytes.
    ShortStr::from_bytes(s.as_bytes()).expect("short literal")
}

/// One shard core with a publisher, one track and `legs` connected subscribers.
pub struct ForwardRig {
    core: Core,
    tx: TxBatch,
    out: VecOutbox,
    from: SocketAddr,
    legs: usize,
    seq: u32,
}

/// The publisher side: writes and protects the next packet of the stream.
pub struct PacketSource {
    ctx: SrtpContext,
    media: Media,
    base: Instant,
    n: u64,
    seq: u16,
    twcc: u16,
    plain: Vec<u8>,
}

impl PacketSource {
    /// A publisher stream of `media` protected with the publisher transport's keys.
    pub fn new(profile: Profile, media: Media, base: Instant) -> Result<Self, RigError> {
        let (k, s) = keys(profile, key_ids(PUBLISHER).0);
        let ctx = SrtpContext::new(profile, &k, &s).map_err(|_| RigError::Param("keys"))?;
        let payload = match media {
            Media::Video { payload } | Media::Audio { payload } => payload,
        };
        // 12 header + 4 ext header + abs-send-time(4) + twcc(3) + mid(2) + pad(3) = 28
        if payload < 8 || 28 + payload + profile.rtp_overhead() > PACKET_CAPACITY {
            return Err(RigError::Param("payload size"));
        }
        Ok(PacketSource {
            ctx,
            media,
            base,
            n: 0,
            seq: 0xFF00, // wraps early: the ROC path is exercised too
            twcc: 0,
            plain: Vec::with_capacity(PACKET_CAPACITY),
        })
    }

    /// Packets written so far.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Write the next packet (the first one is a keyframe, later ones are delta frames).
    pub fn next_into(&mut self, p: &mut Packet) {
        let n = self.n;
        self.n += 1;
        self.seq = self.seq.wrapping_add(1);
        self.twcc = self.twcc.wrapping_add(1);
        let (pt, ts, payload, video, step) = match self.media {
            Media::Video { payload } => {
                (96u8, (n as u32).wrapping_mul(3000), payload, true, 33_333)
            }
            Media::Audio { payload } => {
                (111u8, (n as u32).wrapping_mul(960), payload, false, 20_000)
            }
        };
        // One packet per frame/20 ms: arrival times as a real stream spaces them (µs).
        p.now = self.base + Duration::from_micros(n.wrapping_mul(step));
        let b = &mut self.plain;
        b.clear();
        b.extend_from_slice(&[0x90, 0x80 | pt]); // V=2, X=1; M=1
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&PUBLISHER_SSRC.to_be_bytes());
        // one-byte header extensions (RFC 8285): 12 bytes of elements = 3 words
        b.extend_from_slice(&[0xBE, 0xDE, 0, 3]);
        let ast = ((n as u32) << 8) & 0x00FF_FFFF;
        b.extend_from_slice(&[(ABS_SEND_TIME_EXT << 4) | 2]);
        b.extend_from_slice(&ast.to_be_bytes()[1..]);
        b.extend_from_slice(&[(TWCC_EXT << 4) | 1]);
        b.extend_from_slice(&self.twcc.to_be_bytes());
        b.extend_from_slice(&[MID_EXT << 4, b'0', 0, 0, 0]);
        if video {
            // VP8 descriptor: X, S, PID 0; I; 15-bit picture id; then the frame tag (P bit).
            let pic = (n as u16) & 0x7FFF;
            b.extend_from_slice(&[0x90, 0x80, 0x80 | (pic >> 8) as u8, pic as u8]);
            b.push(if n == 0 { 0x00 } else { 0x01 });
            b.extend((5..payload).map(|i| i as u8));
        } else {
            b.push(0xF8); // Opus TOC
            b.extend((1..payload).map(|i| i as u8));
        }
        let len = b.len();
        p.buf[..len].copy_from_slice(b);
        // INVARIANT: the packet is well-formed and `new` checked it fits with the tag.
        p.len = self
            .ctx
            .protect_rtp(&mut p.buf, len)
            .expect("protect of a well-formed packet that fits");
    }

    /// A fresh boxed packet buffer.
    pub fn empty_packet() -> Box<Packet> {
        Box::new(Packet {
            now: Instant::now(),
            len: 0,
            buf: [0; PACKET_CAPACITY],
        })
    }

    /// The next packet in a new buffer.
    pub fn next_packet(&mut self) -> Box<Packet> {
        let mut p = Self::empty_packet();
        self.next_into(&mut p);
        p
    }
}

impl ForwardRig {
    /// Build a core with `legs` subscribers of a `media` track, every transport on `profile`;
    /// returns the rig and the publisher's packet source. The source's first packet (a keyframe)
    /// is forwarded here, and set-up fails unless it reached every leg.
    pub fn new(
        profile: Profile,
        media: Media,
        legs: usize,
    ) -> Result<(ForwardRig, PacketSource), RigError> {
        if legs == 0 || legs > MAX_RIG_LEGS {
            return Err(RigError::Param("legs"));
        }
        let base = Instant::now();
        let mesh = Mesh::new(1);
        let core = Core::new(CoreConfig::single(), mesh);
        let mut tx = TxBatch::new(
            ils_io::DEFAULT_TX_ARENA_BYTES,
            ils_io::DEFAULT_TX_MAX_DATAGRAMS,
        );
        // As the shard does on a GSO-capable socket (io_uring and mmsg both detect it).
        tx.set_gso(true);
        let mut rig = ForwardRig {
            core,
            tx,
            out: VecOutbox::default(),
            from: publisher_addr(),
            legs,
            seq: 0,
        };
        rig.connect(base, profile, PUBLISHER, publisher_addr())?;
        for i in 0..legs {
            rig.connect(
                base,
                profile,
                FIRST_SUBSCRIBER + i as u32,
                subscriber_addr(i),
            )?;
        }
        let (kind, codec, clock_rate, pt) = match media {
            Media::Video { .. } => (MediaKind::Video, 1, 90_000, 96),
            Media::Audio { .. } => (MediaKind::Audio, 0, 48_000, 111),
        };
        let mut encodings = [EncodingSpec::default(); 3];
        encodings[0].ssrc = PUBLISHER_SSRC;
        let spec = TrackSpec {
            track: TRACK,
            transport: PUBLISHER,
            home_shard: 0,
            kind,
            codec,
            clock_rate,
            pt,
            rtx_pt: 0,
            mid: short("0"),
            mid_ext: MID_EXT,
            rid_ext: 0,
            rrid_ext: 0,
            twcc_ext: TWCC_EXT,
            n_encodings: 1,
            encodings,
        };
        rig.command(base, &Command::AddTrack(spec))?;
        for i in 0..legs {
            let mut ext_map = [(0u8, 0u8); 16];
            ext_map[0] = (MID_EXT, MID_EXT);
            let video = matches!(media, Media::Video { .. });
            let leg = LegSpec {
                leg: i as u32 + 1,
                track: TRACK,
                transport: FIRST_SUBSCRIBER + i as u32,
                ssrc: 0x7000_0000 + i as u32,
                rtx_ssrc: if video { 0x7100_0000 + i as u32 } else { 0 },
                pt,
                rtx_pt: if video { 97 } else { 0 },
                layer: 0,
                twcc_ext: TWCC_EXT,
                n_ext_map: 1,
                ext_map,
            };
            rig.command(base, &Command::AddLeg(leg))?;
        }
        let mut src = PacketSource::new(profile, media, base)?;
        let mut first = src.next_packet();
        let before = rig.forwarded();
        rig.forward(&mut first);
        let got = rig.forwarded() - before;
        if got != legs as u64 {
            return Err(RigError::NotForwarded {
                got,
                want: legs as u64,
                drops: rig.drops_text(),
            });
        }
        Ok((rig, src))
    }

    fn command(&mut self, now: Instant, cmd: &Command<'_>) -> Result<(), RigError> {
        self.seq += 1;
        let n = self.out.events.len();
        self.core
            .handle_command(now, self.seq, cmd, &mut self.tx, &mut self.out);
        for e in &self.out.events[n..] {
            if let Ok((_, Event::Rejected { reason, .. })) = Event::decode(e) {
                return Err(RigError::Rejected(format!("{reason:?}")));
            }
        }
        self.tx.clear();
        Ok(())
    }

    fn connect(
        &mut self,
        now: Instant,
        profile: Profile,
        id: u32,
        addr: SocketAddr,
    ) -> Result<(), RigError> {
        let ufrag = format!("e{id:07}");
        let pwd = format!("p{id:07}abcdefghijklmnopqrstuv");
        self.command(
            now,
            &Command::AddTransport {
                transport: id,
                ufrag: ufrag.as_bytes(),
                pwd: pwd.as_bytes(),
                consent_timeout_ms: 0,
            },
        )?;
        let username = format!("{ufrag}:peer{id}");
        let mut req = [0u8; 512];
        let mut txid = [0u8; 12];
        txid[..4].copy_from_slice(&id.to_be_bytes());
        let n = ils_stun::write_binding_request(
            &mut req,
            &txid,
            username.as_bytes(),
            pwd.as_bytes(),
            0x6E00_01FF,
            u64::from(id),
            true,
        )
        .map_err(|_| RigError::Ice(id))?;
        let events = self.out.events.len();
        self.core
            .handle_datagram(now, addr, &mut req[..n], &mut self.tx, &mut self.out);
        let replied = self.tx.segments() == 1;
        self.tx.clear();
        let nominated = self.out.events[events..].iter().any(|e| {
            matches!(
                Event::decode(e),
                Ok((_, Event::TupleLearned { transport, nominated: true, .. })) if transport == id
            )
        });
        if !replied || !nominated {
            return Err(RigError::Ice(id));
        }
        let (rk, rs) = keys(profile, key_ids(id).0);
        let (tk, ts) = keys(profile, key_ids(id).1);
        self.command(
            now,
            &Command::InstallSrtp {
                transport: id,
                profile: profile.dtls_id(),
                rx_key: &rk,
                rx_salt: &rs,
                tx_key: &tk,
                tx_salt: &ts,
            },
        )?;
        // Set-up events are not part of the measurement.
        self.out.events.clear();
        Ok(())
    }

    /// The measured step: hand one datagram to the core, then drop what it queued (the shard
    /// clears its `TxBatch` after each flush).
    #[inline]
    pub fn forward(&mut self, p: &mut Packet) {
        self.core.handle_datagram(
            p.now,
            self.from,
            &mut p.buf[..p.len],
            &mut self.tx,
            &mut self.out,
        );
        self.tx.clear();
    }

    /// Hand one datagram to the core and keep what it queued (tests inspect it with
    /// [`ForwardRig::sent`]); call [`ForwardRig::clear_sent`] afterwards.
    pub fn forward_keep(&mut self, p: &mut Packet) {
        self.core.handle_datagram(
            p.now,
            self.from,
            &mut p.buf[..p.len],
            &mut self.tx,
            &mut self.out,
        );
    }

    /// Datagrams queued by [`ForwardRig::forward_keep`], in reserve order.
    pub fn sent(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.tx.iter()
    }

    /// Drop the queued datagrams.
    pub fn clear_sent(&mut self) {
        self.tx.clear();
    }

    /// Subscriber legs in this rig.
    pub fn legs(&self) -> usize {
        self.legs
    }

    /// `ForwardedPackets` counter of the core.
    pub fn forwarded(&self) -> u64 {
        self.core.counters().get(Counter::ForwardedPackets)
    }

    /// Sum of every drop counter of the core.
    pub fn drops(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.drop_reason().is_some())
            .map(|&c| self.core.counters().get(c))
            .sum()
    }

    /// Drop counters that are non-zero, as `name=value` pairs.
    pub fn drops_text(&self) -> String {
        Counter::ALL
            .iter()
            .filter(|c| c.drop_reason().is_some())
            .filter_map(|&c| {
                let v = self.core.counters().get(c);
                (v != 0).then(|| format!("{}={v}", c.name()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The core (for counters and the like).
    pub fn core(&self) -> &Core {
        &self.core
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_srtp::context::Context;
    use webrtc_srtp::protection_profile::ProtectionProfile;

    /// webrtc-srtp 0.15 has no AES-256-GCM; the rig's tests use the other two.
    fn webrtc_profile(p: Profile) -> ProtectionProfile {
        match p {
            Profile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            _ => ProtectionProfile::AeadAes128Gcm,
        }
    }

    /// Ids of the one-byte header extensions of a plain RTP packet (no CSRCs).
    fn ext_ids(p: &[u8]) -> Vec<u8> {
        assert_eq!(p[0] & 0x1F, 0x10, "X set, no CSRC");
        assert_eq!(&p[12..14], &[0xBE, 0xDE]);
        let words = usize::from(u16::from_be_bytes([p[14], p[15]]));
        let ext = &p[16..16 + 4 * words];
        let mut ids = Vec::new();
        let mut i = 0;
        while i < ext.len() {
            let b = ext[i];
            if b == 0 {
                i += 1;
                continue;
            }
            ids.push(b >> 4);
            i += 1 + usize::from(b & 0x0F) + 1;
        }
        ids
    }

    /// Every leg gets every packet, decryptable by an independent SRTP (webrtc-srtp) with that
    /// subscriber's keys, with the leg's SSRC, continuous sequence numbers and the payload intact.
    fn forwards_decryptably(profile: Profile, media: Media, legs: usize, packets: usize) {
        let (mut rig, mut src) = ForwardRig::new(profile, media, legs).expect("rig");
        let mut peers: Vec<Context> = (0..legs)
            .map(|i| {
                let (k, s) = peer_rx_keys(profile, FIRST_SUBSCRIBER + i as u32);
                Context::new(&k, &s, webrtc_profile(profile), None, None).expect("ctx")
            })
            .collect();
        let mut last_seq: Vec<Option<u16>> = vec![None; legs];
        for _ in 0..packets {
            let before = rig.forwarded();
            let mut p = src.next_packet();
            rig.forward_keep(&mut p);
            assert_eq!(
                rig.forwarded() - before,
                legs as u64,
                "{}",
                rig.drops_text()
            );
            let sent: Vec<(SocketAddr, Vec<u8>)> =
                rig.sent().map(|(a, b)| (a, b.to_vec())).collect();
            assert_eq!(sent.len(), legs);
            for (i, (addr, bytes)) in sent.iter().enumerate() {
                assert_eq!(*addr, subscriber_addr(i));
                let plain = peers[i].decrypt_rtp(bytes).expect("subscriber decrypts");
                let ssrc = u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]);
                assert_eq!(ssrc, 0x7000_0000 + i as u32);
                // mid kept, abs-send-time stripped, transport-wide seq appended (RFC 8285 one-byte)
                assert_eq!(
                    ext_ids(&plain),
                    vec![MID_EXT, TWCC_EXT],
                    "leg {i} extensions"
                );
                let seq = u16::from_be_bytes([plain[2], plain[3]]);
                if let Some(prev) = last_seq[i] {
                    assert_eq!(seq, prev.wrapping_add(1), "leg {i} seq continuity");
                }
                last_seq[i] = Some(seq);
                let want = match media {
                    Media::Video { payload } | Media::Audio { payload } => payload,
                };
                // payload bytes after the first 8 (past any VP8 picture-id rewrite) are intact
                let tail = &plain[plain.len() - (want - 8)..];
                let expect: Vec<u8> = (8..want).map(|i| i as u8).collect();
                assert_eq!(tail, &expect[..]);
            }
            rig.clear_sent();
        }
        assert_eq!(rig.drops(), 0, "{}", rig.drops_text());
    }

    #[test]
    fn video_gcm_forwards_to_every_leg() {
        forwards_decryptably(
            Profile::AeadAes128Gcm,
            Media::Video { payload: 1200 },
            10,
            50,
        );
    }

    #[test]
    fn video_cm_forwards_to_every_leg() {
        forwards_decryptably(
            Profile::Aes128CmHmacSha1_80,
            Media::Video { payload: 1200 },
            3,
            20,
        );
    }

    #[test]
    fn audio_forwards_to_every_leg() {
        forwards_decryptably(Profile::AeadAes128Gcm, Media::Audio { payload: 160 }, 5, 20);
    }

    /// More packets than the 16-bit sequence space: the source's ROC and the engine's index
    /// estimation stay in step, so nothing is dropped as a replay.
    #[test]
    fn sequence_wrap_is_not_a_replay() {
        let (mut rig, mut src) =
            ForwardRig::new(Profile::AeadAes128Gcm, Media::Audio { payload: 160 }, 1).expect("rig");
        let mut p = PacketSource::empty_packet();
        for _ in 0..70_000 {
            src.next_into(&mut p);
            rig.forward(&mut p);
        }
        assert_eq!(rig.drops(), 0, "{}", rig.drops_text());
        assert_eq!(rig.forwarded(), 70_001);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(matches!(
            ForwardRig::new(Profile::AeadAes128Gcm, Media::Audio { payload: 160 }, 0),
            Err(RigError::Param(_))
        ));
        assert!(matches!(
            PacketSource::new(
                Profile::AeadAes128Gcm,
                Media::Video { payload: 1490 },
                Instant::now()
            ),
            Err(RigError::Param(_))
        ));
    }
}
