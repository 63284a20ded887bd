//! Deterministic in-process harness for `ils_engine::core::Core` (no sockets, no clock):
//! one publisher and K subscriber transports with SRTP keys, a VP8 track with three
//! rid-learned simulcast encodings, and one leg per subscriber.
//!
//! The "peer" side (what a browser would do) is built from the lower crates: ICE checks with
//! `ils_stun::write_binding_request`, SRTP with separate `ils_srtp::SrtpContext`s, RTP/RTCP
//! bytes written by hand or with `ils_rtp::rtcp` writers.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ils_engine::core::{Core, CoreConfig, VecOutbox};
use ils_engine::xshard::Mesh;
use ils_io::TxBatch;
use ils_rtp::header::RtpHeader;
use ils_shm::{
    Command, Counter, EncodingSpec, Event, LegSpec, MediaKind, RejectReason, ShortStr, TrackSpec,
};
use ils_srtp::{Profile, SrtpContext};

/// Publisher's `sdes:mid` extension id.
pub const MID_EXT: u8 = 1;
/// Publisher's transport-cc extension id (only in tracks built with `twcc = true`).
pub const TWCC_EXT: u8 = 3;
/// An extension the publisher sends that legs remap (e.g. abs-send-time).
pub const EXTRA_EXT: u8 = 5;
/// Publisher's `rtp-stream-id` extension id.
pub const RID_EXT: u8 = 10;
/// Receiver's id for `sdes:mid`.
pub const RX_MID_EXT: u8 = 4;
/// Receiver's id for [`EXTRA_EXT`].
pub const RX_EXTRA_EXT: u8 = 7;
/// Receiver's transport-cc id (legs built with `twcc = true`).
pub const RX_TWCC_EXT: u8 = 9;

/// The video track handle.
pub const VIDEO_TRACK: u32 = 1;
/// The publisher transport handle.
pub const PUBLISHER: u32 = 1;
/// VP8 payload type (publisher and legs).
pub const VP8_PT: u8 = 96;
/// Leg RTX payload type.
pub const RTX_PT: u8 = 97;
/// The rids of the three encodings, layer 0..3.
pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// The publisher's SSRCs for layer 0..3 (learned by rid).
pub const PUB_SSRC: [u32; 3] = [0x1111_0000, 0x2222_0000, 0x3333_0000];
/// SRTP profile used everywhere (AES-CM-HMAC-SHA1-80).
pub const PROFILE: u16 = 0x0001;

/// Subscriber transport handle of subscriber `i`.
pub fn sub_transport(i: usize) -> u32 {
    100 + i as u32
}
/// Leg handle of subscriber `i`.
pub fn leg_id(i: usize) -> u32 {
    1000 + i as u32
}
/// Leg SSRC of subscriber `i`.
pub fn leg_ssrc(i: usize) -> u32 {
    5000 + i as u32
}
/// Leg RTX SSRC of subscriber `i`.
pub fn leg_rtx_ssrc(i: usize) -> u32 {
    7000 + i as u32
}

fn short(s: &str) -> ShortStr {
    // INVARIANT: test strings are at most 16 bytes.
    ShortStr::from_bytes(s.as_bytes()).expect("short string")
}

/// The VP8 track (3 encodings learned from mid + rid).
pub fn video_spec(twcc: bool) -> TrackSpec {
    let mut encodings = [EncodingSpec::default(); 3];
    for (i, r) in RIDS.iter().enumerate() {
        encodings[i].rid = short(r);
    }
    TrackSpec {
        track: VIDEO_TRACK,
        transport: PUBLISHER,
        home_shard: 0,
        kind: MediaKind::Video,
        codec: 1,
        clock_rate: 90_000,
        pt: VP8_PT,
        rtx_pt: 0,
        mid: short("0"),
        mid_ext: MID_EXT,
        rid_ext: RID_EXT,
        rrid_ext: 0,
        twcc_ext: if twcc { TWCC_EXT } else { 0 },
        n_encodings: 3,
        encodings,
    }
}

/// Leg of subscriber `i` on the video track: mid and EXTRA_EXT remapped, rid stripped.
pub fn leg_spec(i: usize, layer: u8, rtx: bool, twcc: bool) -> LegSpec {
    let mut ext_map = [(0u8, 0u8); 16];
    ext_map[0] = (MID_EXT, RX_MID_EXT);
    ext_map[1] = (EXTRA_EXT, RX_EXTRA_EXT);
    LegSpec {
        leg: leg_id(i),
        track: VIDEO_TRACK,
        transport: sub_transport(i),
        ssrc: leg_ssrc(i),
        rtx_ssrc: if rtx { leg_rtx_ssrc(i) } else { 0 },
        pt: VP8_PT,
        rtx_pt: if rtx { RTX_PT } else { 0 },
        layer,
        twcc_ext: if twcc { RX_TWCC_EXT } else { 0 },
        n_ext_map: 2,
        ext_map,
    }
}

/// One remote endpoint (browser) talking to the core.
pub struct Peer {
    /// Transport handle.
    pub transport: u32,
    /// The peer's address (source of its datagrams).
    pub addr: SocketAddr,
    /// The engine's ufrag for this transport.
    pub ufrag: String,
    /// The engine's ICE password for this transport.
    pub pwd: String,
    /// Engine rx key/salt = what the peer encrypts with.
    pub up_key: [u8; 16],
    /// Engine rx salt.
    pub up_salt: [u8; 14],
    /// Engine tx key = what the peer decrypts with.
    pub down_key: [u8; 16],
    /// Engine tx salt.
    pub down_salt: [u8; 14],
    /// Peer's sending context (protects what the peer sends).
    pub send: SrtpContext,
    /// Peer's receiving context (unprotects what the engine sends).
    pub recv: SrtpContext,
    /// Next STUN transaction id counter.
    pub txid: u32,
}

impl Peer {
    /// A peer with credentials and keys derived from `n`.
    pub fn new(transport: u32, addr: SocketAddr, n: u8) -> Peer {
        let up_key = [n.wrapping_mul(3).wrapping_add(1); 16];
        let up_salt = [n.wrapping_mul(5).wrapping_add(2); 14];
        let down_key = [n.wrapping_mul(7).wrapping_add(3); 16];
        let down_salt = [n.wrapping_mul(11).wrapping_add(4); 14];
        let p = Profile::Aes128CmHmacSha1_80;
        Peer {
            transport,
            addr,
            ufrag: format!("eng{transport:05}"),
            pwd: format!("pwd{transport:05}abcdefghijklmnopq"),
            up_key,
            up_salt,
            down_key,
            down_salt,
            // INVARIANT: key/salt lengths match the profile.
            send: SrtpContext::new(p, &up_key, &up_salt).expect("ctx"),
            // INVARIANT: key/salt lengths match the profile.
            recv: SrtpContext::new(p, &down_key, &down_salt).expect("ctx"),
            txid: 0,
        }
    }

    /// An authenticated Binding request (USERNAME "ufrag:peer", key = pwd).
    pub fn binding_request(&mut self, use_candidate: bool) -> Vec<u8> {
        self.txid += 1;
        let mut txid = [0u8; 12];
        txid[..4].copy_from_slice(&self.txid.to_be_bytes());
        txid[4..8].copy_from_slice(&self.transport.to_be_bytes());
        let user = format!("{}:peer{}", self.ufrag, self.transport);
        let mut out = vec![0u8; 512];
        let n = ils_stun::write_binding_request(
            &mut out,
            &txid,
            user.as_bytes(),
            self.pwd.as_bytes(),
            0x6e00_01ff,
            0x1234_5678_9abc_def0 ^ u64::from(self.transport),
            use_candidate,
        )
        // INVARIANT: 512 bytes is plenty for a Binding request with a short username.
        .expect("binding request");
        out.truncate(n);
        out
    }

    /// Protect a plain RTP packet as this peer.
    pub fn protect_rtp(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut b = plain.to_vec();
        b.resize(plain.len() + 16, 0);
        // INVARIANT: the test builds valid RTP packets and the buffer has room for the tag.
        let n = self.send.protect_rtp(&mut b, plain.len()).expect("protect");
        b.truncate(n);
        b
    }

    /// Protect a plain RTCP packet as this peer.
    pub fn protect_rtcp(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut b = plain.to_vec();
        b.resize(plain.len() + 32, 0);
        // INVARIANT: valid RTCP and room for index + tag.
        let n = self
            .send
            .protect_rtcp(&mut b, plain.len())
            .expect("protect");
        b.truncate(n);
        b
    }
}

/// Build a plain RTP packet with one-byte header extensions.
pub fn rtp(
    ssrc: u32,
    pt: u8,
    seq: u16,
    ts: u32,
    marker: bool,
    exts: &[(u8, &[u8])],
    payload: &[u8],
) -> Vec<u8> {
    let mut p = vec![0x80, pt & 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    if marker {
        p[1] |= 0x80;
    }
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    if !exts.is_empty() {
        p[0] |= 0x10;
        let mut body = Vec::new();
        for (id, v) in exts {
            assert!((1..=14).contains(id) && (1..=16).contains(&v.len()));
            body.push((id << 4) | (v.len() as u8 - 1));
            body.extend_from_slice(v);
        }
        while body.len() % 4 != 0 {
            body.push(0);
        }
        p.extend_from_slice(&[0xBE, 0xDE]);
        p.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(&body);
    }
    p.extend_from_slice(payload);
    p
}

/// VP8 payload: descriptor (S=1, PID 0, 15-bit picture id), frame tag byte (bit 0 = inverse
/// keyframe flag), then `(layer, frame)` markers and filler.
pub fn vp8_payload(frame: u16, layer: u8, key: bool, filler: usize) -> Vec<u8> {
    let mut p = vec![0x90, 0x80, 0x80 | ((frame >> 8) as u8 & 0x7f), frame as u8];
    p.push(if key { 0x00 } else { 0x01 });
    p.extend_from_slice(&[layer, (frame >> 8) as u8, frame as u8]);
    p.extend(std::iter::repeat_n(0xAB, filler));
    p
}

/// Publisher packet of `layer` for `frame` (seq/ts derived from the frame number).
pub struct PubPacket {
    /// Layer 0..3.
    pub layer: u8,
    /// Source sequence number.
    pub seq: u16,
    /// Source timestamp.
    pub ts: u32,
    /// Keyframe.
    pub key: bool,
    /// Frame number carried in the payload.
    pub frame: u16,
    /// Transport-wide sequence number to attach (None = no twcc extension).
    pub twcc: Option<u16>,
}

/// Source seq of layer `layer`, frame `f` (distinct bases per layer).
pub fn src_seq(layer: u8, f: u16) -> u16 {
    1000u16
        .wrapping_add(f)
        .wrapping_add(u16::from(layer) * 7_000)
}

/// Source ts of frame `f`.
pub fn src_ts(f: u16) -> u32 {
    90_000u32.wrapping_add(u32::from(f) * 3000)
}

/// A decoded event, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    /// DtlsIn.
    DtlsIn(u32, Vec<u8>),
    /// TupleLearned.
    TupleLearned(u32, SocketAddr, bool),
    /// ConsentLost.
    ConsentLost(u32),
    /// Rejected.
    Rejected(u32, RejectReason),
    /// StateTransport.
    StateTransport(u32),
    /// StateTrack.
    StateTrack(TrackSpec),
    /// StateLeg.
    StateLeg(LegSpec),
    /// DumpDone.
    DumpDone(u16),
    /// Stats events (ignored by most tests).
    Stats,
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::DtlsIn { transport, data } => Ev::DtlsIn(transport, data.to_vec()),
        Event::TupleLearned {
            transport,
            addr,
            nominated,
        } => Ev::TupleLearned(transport, addr, nominated),
        Event::ConsentLost { transport } => Ev::ConsentLost(transport),
        Event::Rejected { seq, reason } => Ev::Rejected(seq, reason),
        Event::StateTransport { transport, .. } => Ev::StateTransport(transport),
        Event::StateTrack(t) => Ev::StateTrack(t),
        Event::StateLeg(l) => Ev::StateLeg(l),
        Event::DumpDone { shard } => Ev::DumpDone(shard),
        Event::TransportStats { .. }
        | Event::LegStats { .. }
        | Event::TrackStats { .. }
        | Event::AudioLevels(_) => Ev::Stats,
    }
}

/// One shard core plus its outputs and a virtual clock.
pub struct Harness {
    /// The core under test.
    pub core: Core,
    /// Its send batch (inspect with `sent()`, reset with `tx.clear()`).
    pub tx: TxBatch,
    /// Its event outbox.
    pub out: VecOutbox,
    /// Virtual time.
    pub now: Instant,
    /// Next command seq.
    pub seq: u32,
    /// Publisher peer.
    pub publisher: Peer,
    /// Subscriber peers (index i = subscriber i).
    pub subs: Vec<Peer>,
}

/// Address of subscriber `i`.
pub fn sub_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, (i % 250) as u8 + 1], 6000 + (i / 250) as u16))
}

/// Address of the publisher.
pub fn pub_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 5000))
}

impl Harness {
    /// A bare core with a publisher and `k` subscriber peers (nothing added to the core yet).
    pub fn bare(k: usize) -> Harness {
        let mesh = Mesh::new(1);
        let core = Core::new(CoreConfig::single(), mesh);
        Harness {
            core,
            tx: TxBatch::new(1 << 20, 4096),
            out: VecOutbox::default(),
            now: Instant::now(),
            seq: 1,
            publisher: Peer::new(PUBLISHER, pub_addr(), 0),
            subs: (0..k)
                .map(|i| Peer::new(sub_transport(i), sub_addr(i), i as u8 + 1))
                .collect(),
        }
    }

    /// Publisher + `k` connected subscribers (ICE nominated, SRTP installed), the video track
    /// (optionally with twcc), and a leg per subscriber on `layer` (with RTX).
    pub fn connected(k: usize, layer: u8, twcc: bool) -> Harness {
        let mut h = Harness::bare(k);
        h.connect_publisher();
        for i in 0..k {
            h.connect_sub(i);
        }
        h.cmd_ok(&Command::AddTrack(video_spec(twcc)));
        for i in 0..k {
            h.cmd_ok(&Command::AddLeg(leg_spec(i, layer, true, twcc)));
        }
        h.take_events();
        h.tx.clear();
        h
    }

    /// Advance virtual time.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Apply a command; returns its seq.
    pub fn cmd(&mut self, c: &Command<'_>) -> u32 {
        let seq = self.seq;
        self.seq += 1;
        self.core
            .handle_command(self.now, seq, c, &mut self.tx, &mut self.out);
        seq
    }

    /// Apply a command and assert it was not rejected.
    pub fn cmd_ok(&mut self, c: &Command<'_>) {
        let before = self.out.events.len();
        let seq = self.cmd(c);
        let rejected: Vec<Ev> = self.out.events[before..]
            .iter()
            .filter_map(|b| Event::decode(b).ok().map(|(_, e)| own(e)))
            .filter(|e| matches!(e, Ev::Rejected(s, _) if *s == seq))
            .collect();
        assert!(rejected.is_empty(), "command {c:?} rejected: {rejected:?}");
    }

    /// Apply a command and return the rejection reason, if any.
    pub fn cmd_reject(&mut self, c: &Command<'_>) -> Option<RejectReason> {
        let before = self.out.events.len();
        let seq = self.cmd(c);
        self.out.events[before..]
            .iter()
            .filter_map(|b| Event::decode(b).ok().map(|(_, e)| own(e)))
            .find_map(|e| match e {
                Ev::Rejected(s, r) if s == seq => Some(r),
                _ => None,
            })
    }

    /// Feed one datagram from `from`.
    pub fn datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let mut b = bytes.to_vec();
        self.core
            .handle_datagram(self.now, from, &mut b, &mut self.tx, &mut self.out);
    }

    /// Run timers at the current virtual time.
    pub fn timeout(&mut self) {
        self.core
            .handle_timeout(self.now, &mut self.tx, &mut self.out);
    }

    /// Drain and decode the events.
    pub fn take_events(&mut self) -> Vec<Ev> {
        std::mem::take(&mut self.out.events)
            .iter()
            .map(|b| {
                // INVARIANT: VecOutbox only stores successfully encoded events.
                own(Event::decode(b).expect("engine event decodes").1)
            })
            .collect()
    }

    /// What the TxBatch holds: (destination, bytes) per datagram in reserve order.
    pub fn sent(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.tx.iter().map(|(a, b)| (a, b.to_vec())).collect()
    }

    /// Take what was sent and clear the batch.
    pub fn take_sent(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let s = self.sent();
        self.tx.clear();
        s
    }

    /// Counter value.
    pub fn counter(&self, c: Counter) -> u64 {
        self.core.counters().get(c)
    }

    fn add_transport(&mut self, p: &Peer) {
        let (ufrag, pwd) = (p.ufrag.clone(), p.pwd.clone());
        self.cmd_ok(&Command::AddTransport {
            transport: p.transport,
            ufrag: ufrag.as_bytes(),
            pwd: pwd.as_bytes(),
            consent_timeout_ms: 0,
        });
    }

    fn install_srtp(&mut self, p: &Peer) {
        let (a, b, c, d) = (p.up_key, p.up_salt, p.down_key, p.down_salt);
        self.cmd_ok(&Command::InstallSrtp {
            transport: p.transport,
            profile: PROFILE,
            rx_key: &a,
            rx_salt: &b,
            tx_key: &c,
            tx_salt: &d,
        });
    }

    /// Send an authenticated, nominating Binding request from subscriber `i` (or the publisher
    /// when `i` is None); returns the datagrams queued in reply.
    pub fn ice_check(&mut self, i: Option<usize>, use_candidate: bool) {
        let p = match i {
            Some(i) => &mut self.subs[i],
            None => &mut self.publisher,
        };
        let req = p.binding_request(use_candidate);
        let addr = p.addr;
        self.datagram(addr, &req);
    }

    /// AddTransport + nominating ICE check + InstallSrtp for the publisher.
    pub fn connect_publisher(&mut self) {
        let p = Peer::new(PUBLISHER, pub_addr(), 0);
        self.add_transport(&p);
        self.ice_check(None, true);
        self.install_srtp(&p);
    }

    /// AddTransport + nominating ICE check + InstallSrtp for subscriber `i`.
    pub fn connect_sub(&mut self, i: usize) {
        let p = Peer::new(sub_transport(i), sub_addr(i), i as u8 + 1);
        self.add_transport(&p);
        self.ice_check(Some(i), true);
        self.install_srtp(&p);
    }

    /// Plain publisher packet bytes.
    pub fn pub_plain(&self, p: &PubPacket) -> Vec<u8> {
        let mid = b"0";
        let rid = RIDS[usize::from(p.layer)].as_bytes();
        let extra = [0xA1, 0xA2, 0xA3];
        let tw;
        let mut exts: Vec<(u8, &[u8])> = vec![(MID_EXT, mid), (RID_EXT, rid), (EXTRA_EXT, &extra)];
        if let Some(t) = p.twcc {
            tw = t.to_be_bytes();
            exts.push((TWCC_EXT, &tw));
        }
        rtp(
            PUB_SSRC[usize::from(p.layer)],
            VP8_PT,
            p.seq,
            p.ts,
            true,
            &exts,
            &vp8_payload(p.frame, p.layer, p.key, 100 + 50 * usize::from(p.layer)),
        )
    }

    /// Encrypt and feed one publisher packet.
    pub fn publish(&mut self, p: &PubPacket) {
        let plain = self.pub_plain(p);
        let srtp = self.publisher.protect_rtp(&plain);
        self.datagram(pub_addr(), &srtp);
    }

    /// Publish frame `f` on all three layers (layer `key_layer` or all when `key_all`).
    pub fn publish_frame(&mut self, f: u16, key: [bool; 3]) {
        for l in 0..3u8 {
            self.publish(&PubPacket {
                layer: l,
                seq: src_seq(l, f),
                ts: src_ts(f),
                key: key[usize::from(l)],
                frame: f,
                twcc: None,
            });
        }
    }

    /// Decrypt what was sent to subscriber `i` (RTP only, in send order). Each entry is the
    /// plain packet. Panics if a datagram to the subscriber fails to decrypt.
    pub fn sub_rtp(&mut self, i: usize, sent: &[(SocketAddr, Vec<u8>)]) -> Vec<Vec<u8>> {
        let addr = self.subs[i].addr;
        let mut v = Vec::new();
        for (a, b) in sent {
            if *a != addr || ils_rtp::header::is_rtcp(b) || b.first().is_none_or(|&x| x < 128) {
                continue;
            }
            let mut b = b.clone();
            let n = self.subs[i]
                .recv
                .unprotect_rtp(&mut b)
                .unwrap_or_else(|e| panic!("sub {i}: forwarded packet fails to decrypt: {e:?}"));
            b.truncate(n);
            v.push(b);
        }
        v
    }

    /// Decrypt the RTCP sent to the publisher (plain compound packets).
    pub fn pub_rtcp(&mut self, sent: &[(SocketAddr, Vec<u8>)]) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        for (a, b) in sent {
            if *a != pub_addr() || !ils_rtp::header::is_rtcp(b) {
                continue;
            }
            let mut b = b.clone();
            let n = self
                .publisher
                .recv
                .unprotect_rtcp(&mut b)
                .unwrap_or_else(|e| panic!("publisher RTCP fails to decrypt: {e:?}"));
            b.truncate(n);
            v.push(b);
        }
        v
    }
}

/// Parse a plain RTP packet (panics if invalid: the engine must only send valid RTP).
pub fn parse(pkt: &[u8]) -> RtpHeader {
    RtpHeader::parse(pkt).unwrap_or_else(|e| panic!("engine sent invalid RTP: {e:?}"))
}
