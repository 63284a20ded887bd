//! The sans-IO heart of one shard: tables (transports, tracks, legs), the datagram path
//! (demux → ICE-lite / DTLS hand-off / SRTP → forward), commands from control, cross-shard
//! messages and timers.
//!
//! Driving contract (the shard loop in `shard.rs`, tests and the fuzz harness all follow it):
//! 1. feed inputs with `handle_datagram`, `handle_command`, `handle_xmsg`, each with `now`;
//! 2. call `handle_timeout(now)` when `poll_timeout()` has passed (calling it early is harmless);
//! 3. flush the [`TxBatch`] to the socket, deliver [`Outbox`] events, and wake the shards listed by
//!    `take_wakes()`.
//!
//! Nothing here reads a clock or touches a socket.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ils_io::TxBatch;
use ils_rtp::codec::{is_keyframe, Codec};
use ils_rtp::ext::{find_ext, rewritten_len, write_rewritten, ExtMap, Rewrite};
use ils_rtp::header::{is_rtcp, RtpHeader};
use ils_rtp::keyframe_req::{KeyframeRequestCoalescer, DEFAULT_KEYFRAME_REQUEST_INTERVAL};
use ils_rtp::leg::{LegDecision, LegDrop, LegRewriter};
use ils_rtp::nack::NackGenerator;
use ils_rtp::rtcp::{self as rtcpw, RecvStats, RtcpPacket};
use ils_rtp::rtx::RtxCache;
use ils_rtp::twcc::TwccRecorder;
use ils_rtp::vp8::Vp8Rewriter;
use ils_shm::{
    AudioLevels, Command, Counter, Event, LegSpec, MediaKind, RejectReason, Seq, TrackSpec,
    AUDIO_LEVEL_ENTRY, AUDIO_LEVEL_SILENT, MAX_AUDIO_LEVELS,
};
use ils_srtp::{Profile, SrtpContext};
use ils_stun::{IceEvent, IceLite, IceOutcome, StunMessage};
use rustc_hash::FxHasher;

use crate::counters::LocalCounters;
use crate::xshard::{BufPool, Mesh, XMsg, POOL_BUFFERS};

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Transports per shard. Bounds a control process that adds without removing; a full table
/// rejects `AddTransport` with `TableFull`. Memory: ≈ 1 KiB per transport → 64 MiB.
pub const MAX_TRANSPORTS: usize = 65_536;
/// Tracks per shard (every shard mirrors every track). Memory: ≈ 0.5 KiB per track plus the
/// retransmission caches of subscribed layers (`RTX_CACHE_PER_LAYER` × 1.5 KiB each).
pub const MAX_TRACKS: usize = 4_096;
/// Subscriber legs per shard. Memory: ≈ 0.5 KiB per leg → 64 MiB.
pub const MAX_LEGS: usize = 131_072;
/// SSRCs one publisher transport may bind (3 encodings + 3 RTX per track, several tracks).
/// More distinct SSRCs are dropped as `drop_unknown_ssrc` without allocating (RELIABILITY B7).
pub const MAX_SSRCS_PER_TRANSPORT: usize = 32;
/// Packets kept per subscribed layer on each shard to answer NACKs (memory: × 1.5 KiB).
pub const RTX_CACHE_PER_LAYER: usize = 512;
/// Lost sequence numbers handled per NACK packet from a subscriber; bounds the retransmission
/// work one small RTCP packet can cause (RELIABILITY B6, D9).
pub const MAX_NACK_SEQS_PER_PACKET: usize = 64;
/// Commands applied per loop iteration (keeps a flood of commands from starving media).
pub const COMMANDS_PER_ITERATION: usize = 256;
/// Timer granularity of the shard.
pub const TICK: Duration = Duration::from_millis(10);
/// Interval of transport-cc feedback to publishers.
pub const TWCC_INTERVAL: Duration = Duration::from_millis(100);
/// Transport and leg stats events per report interval (per shard). Bounds the event rate a
/// shard with many legs puts on the event ring (1 024 slots by default, shared with DTLS
/// records): 512 per second; with more transports + legs, each is reported every
/// ⌈n / 512⌉ intervals. Track stats (few, used for layer selection) are always sent.
pub const MAX_STATS_EVENTS_PER_REPORT: usize = 512;
/// Interval of receiver reports to publishers and stats events to control.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Simulcast encodings per track.
pub const MAX_LAYERS: usize = 3;
/// Interval of `Event::AudioLevels` reports (per shard, one event per interval at most).
/// Default 200 ms: control re-ranks speakers at 5 Hz, well under its 1 s slot hold time. Event
/// rate bound: 5 events/s per shard (each ≤ `ils_shm::MAX_AUDIO_LEVELS` entries, 1.3 KB).
pub const AUDIO_LEVEL_INTERVAL: Duration = Duration::from_millis(200);

/// Smoothed RFC 6464 level of one audio track, in 1/16 dB steps (0 = 0 dBov loudest,
/// 127·16 = silence). Fast attack (¼ of the step per packet ≈ 80 ms at 20 ms packets), slow
/// release (1/16 per packet ≈ 320 ms), so a speaker ranks up quickly and fades smoothly
/// between words. Fixed size, no allocation per packet.
#[derive(Clone, Copy)]
struct AudioLevel {
    /// Smoothed level × 16.
    smoothed: u16,
    /// A packet carrying the extension arrived since the last report.
    seen: bool,
    /// The last report was silence (so a quiet track is reported once, not every interval).
    silent_reported: bool,
}

impl AudioLevel {
    const SILENT: u16 = AUDIO_LEVEL_SILENT as u16 * 16;

    fn new() -> Self {
        AudioLevel {
            smoothed: Self::SILENT,
            seen: false,
            silent_reported: true,
        }
    }

    /// One packet's extension byte (`V` flag in bit 7, level in bits 0..7).
    fn on_packet(&mut self, byte: u8) {
        let x = u16::from(byte & 0x7f) * 16;
        let s = self.smoothed;
        self.smoothed = if x < s {
            s - (s - x).div_ceil(4)
        } else {
            s + (x - s) / 16
        };
        self.seen = true;
    }

    /// The level to report this interval, if any (see `Core::audio_level_events`).
    fn take_report(&mut self) -> Option<u8> {
        if !std::mem::take(&mut self.seen) {
            // nothing received for a whole interval: the track is silent (muted, DTX, gone)
            self.smoothed = Self::SILENT;
            if std::mem::replace(&mut self.silent_reported, true) {
                return None;
            }
            return Some(AUDIO_LEVEL_SILENT);
        }
        let l = ((self.smoothed + 8) / 16).min(u16::from(AUDIO_LEVEL_SILENT)) as u8;
        let was_silent = std::mem::replace(&mut self.silent_reported, l == AUDIO_LEVEL_SILENT);
        (l != AUDIO_LEVEL_SILENT || !was_silent).then_some(l)
    }
}
/// SSRC the engine uses as RTCP sender SSRC towards publishers.
pub const ENGINE_RTCP_SSRC: u32 = 0x1153_0001;

/// Where the core delivers events for control.
pub trait Outbox {
    /// Deliver one event (the shard encodes it into the event ring; a full ring is counted there).
    fn event(&mut self, seq: Seq, ev: &Event<'_>);
}

/// Collects events in memory (tests).
#[derive(Default)]
pub struct VecOutbox {
    /// Encoded events, decodable with `Event::decode`.
    pub events: Vec<Vec<u8>>,
}

impl Outbox for VecOutbox {
    fn event(&mut self, seq: Seq, ev: &Event<'_>) {
        let mut buf = vec![0u8; ils_shm::SLOT_SIZE];
        if let Ok(n) = ev.encode(seq, &mut buf) {
            buf.truncate(n);
            self.events.push(buf);
        }
    }
}

#[derive(Clone, Copy)]
struct SsrcBinding {
    ssrc: u32,
    track: u32,
    layer: u8,
    rtx: bool,
}

struct Transport {
    id: u32,
    ufrag: Box<[u8]>,
    ice: IceLite,
    /// ICE restart in progress: the agent of the previous credentials. Its validated tuples keep
    /// carrying DTLS/SRTP (and `dest` stays its selected tuple) until `ice` validates its first
    /// tuple; its consent timer keeps running meanwhile. Boxed: allocated only by `RestartIce`
    /// (a control command, never per packet), so idle transports do not pay ~0.7 KiB for it.
    old_ice: Option<Box<IceLite>>,
    rx: Option<SrtpContext>,
    tx: Option<SrtpContext>,
    profile: u16,
    /// Tuples inserted in the shard's tuple map for this transport.
    tuples: Vec<SocketAddr>,
    dest: Option<SocketAddr>,
    ssrcs: Vec<SsrcBinding>,
    published: Vec<u32>,
    legs: Vec<usize>,
    twcc_ext: u8,
    twcc_in: Option<TwccRecorder>,
    twcc_out_seq: u16,
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    drops: u64,
}

struct Layer {
    ssrc: u32,
    recv: Option<RecvStats>,
    nack: NackGenerator,
    keyframes: KeyframeRequestCoalescer,
    /// Retransmission cache on this shard (allocated when a local leg subscribes).
    cache: Option<Box<RtxCache>>,
    packets: u64,
}

struct Track {
    spec: TrackSpec,
    codec: Codec,
    home: bool,
    /// Slab index of the publisher transport (home shard only).
    transport: Option<usize>,
    local_legs: Vec<usize>,
    remote_shards: u64,
    layers: [Layer; MAX_LAYERS],
    packets: u64,
    bytes: u64,
    /// Home audio tracks whose publisher negotiated `ssrc-audio-level`: the smoothed level.
    level: Option<AudioLevel>,
}

struct Leg {
    spec: LegSpec,
    transport: usize,
    track: u32,
    rw: LegRewriter,
    ext_map: ExtMap,
    vp8: Vp8Rewriter,
    packets: u64,
    bytes: u64,
    nacks: u64,
    plis: u64,
    /// Sequence number of the leg's RTX stream.
    rtx_seq: u16,
}

/// Static settings of one shard core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// This shard's index.
    pub shard: u16,
    /// Number of shards in the engine.
    pub shards: u16,
    /// Consent timeout used when a command gives 0.
    pub consent_timeout: Duration,
    /// Keyframe requests to a publisher: at most one per stream per interval.
    pub keyframe_interval: Duration,
}

impl CoreConfig {
    /// Defaults for a single shard.
    pub fn single() -> Self {
        CoreConfig {
            shard: 0,
            shards: 1,
            consent_timeout: ils_stun::DEFAULT_CONSENT_TIMEOUT,
            keyframe_interval: DEFAULT_KEYFRAME_REQUEST_INTERVAL,
        }
    }
}

/// One shard's state machine.
pub struct Core {
    cfg: CoreConfig,
    transports: Vec<Option<Transport>>,
    free_transports: Vec<usize>,
    by_id: FxMap<u32, usize>,
    by_ufrag: FxMap<Box<[u8]>, usize>,
    by_tuple: FxMap<SocketAddr, usize>,
    tracks: FxMap<u32, Track>,
    legs: Vec<Option<Leg>>,
    free_legs: Vec<usize>,
    leg_by_id: FxMap<u32, usize>,
    /// Subscriptions from other shards for tracks this shard has not been told about yet
    /// (their `Subscribe` can overtake our `AddTrack`); applied when the track is added.
    /// At most `MAX_TRACKS` entries.
    pending_subscribers: FxMap<u32, u64>,
    mesh: Arc<Mesh>,
    pool: BufPool,
    wakes: u64,
    counters: LocalCounters,
    next_tick: Option<Instant>,
    next_twcc: Option<Instant>,
    next_report: Option<Instant>,
    next_levels: Option<Instant>,
    /// The entries of the next `AudioLevels` event (built without allocating).
    level_scratch: Box<[u8; MAX_AUDIO_LEVELS * AUDIO_LEVEL_ENTRY]>,
    /// Round robin over more than `MAX_AUDIO_LEVELS` reporting tracks: the last track reported.
    level_cursor: u32,
    scratch: Box<[u8; 2048]>,
    nack_scratch: [u16; 64],
    id_scratch: Vec<u32>,
    lost_scratch: Vec<usize>,
    /// Where the next stats events continue (see `stats_events`).
    stats_cursor: usize,
}

fn layer_new(interval: Duration) -> Layer {
    Layer {
        ssrc: 0,
        recv: None,
        nack: NackGenerator::new(),
        keyframes: KeyframeRequestCoalescer::new(interval),
        cache: None,
        packets: 0,
    }
}

impl Core {
    /// A core for shard `cfg.shard` of `mesh`.
    pub fn new(cfg: CoreConfig, mesh: Arc<Mesh>) -> Self {
        Core {
            cfg,
            transports: Vec::new(),
            free_transports: Vec::new(),
            by_id: FxMap::default(),
            by_ufrag: FxMap::default(),
            by_tuple: FxMap::default(),
            tracks: FxMap::default(),
            legs: Vec::new(),
            free_legs: Vec::new(),
            leg_by_id: FxMap::default(),
            pending_subscribers: FxMap::default(),
            mesh,
            pool: BufPool::new(POOL_BUFFERS),
            wakes: 0,
            counters: LocalCounters::new(),
            next_tick: None,
            next_twcc: None,
            next_report: None,
            next_levels: None,
            level_scratch: Box::new([0; MAX_AUDIO_LEVELS * AUDIO_LEVEL_ENTRY]),
            level_cursor: 0,
            scratch: Box::new([0; 2048]),
            nack_scratch: [0; 64],
            id_scratch: Vec::with_capacity(MAX_TRACKS),
            lost_scratch: Vec::with_capacity(64),
            stats_cursor: 0,
        }
    }

    /// Counters of this shard.
    pub fn counters(&self) -> &LocalCounters {
        &self.counters
    }

    /// Mutable counters (the shard loop adds I/O figures).
    pub fn counters_mut(&mut self) -> &mut LocalCounters {
        &mut self.counters
    }

    /// Shards that were sent cross-shard messages since the last call (bitmask), to be woken.
    pub fn take_wakes(&mut self) -> u64 {
        std::mem::take(&mut self.wakes)
    }

    /// Number of live transports.
    pub fn transport_count(&self) -> usize {
        self.by_id.len()
    }

    /// Number of live legs.
    pub fn leg_count(&self) -> usize {
        self.leg_by_id.len()
    }

    /// When `handle_timeout` should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    // ===== datagrams =====

    /// One datagram received on this shard's socket. `buf` may be modified (decrypted in place).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        tx: &mut TxBatch,
        out: &mut dyn Outbox,
    ) {
        self.arm_timers(now);
        self.counters.inc(Counter::RxPackets);
        self.counters.add(Counter::RxBytes, buf.len() as u64);
        let Some(&first) = buf.first() else {
            self.counters.inc(Counter::DropMalformed);
            return;
        };
        if buf.len() > ils_io::MAX_DATAGRAM {
            self.counters.inc(Counter::DropTooLarge);
            return;
        }
        // RFC 7983 demultiplexing by the first byte.
        match first {
            0..=3 => self.handle_stun(now, from, buf, tx, out),
            20..=63 => self.handle_dtls(from, buf, out),
            128..=191 => self.handle_srtp(now, from, buf, tx),
            _ => self.counters.inc(Counter::DropUnknownClass),
        }
    }

    fn handle_stun(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &[u8],
        tx: &mut TxBatch,
        out: &mut dyn Outbox,
    ) {
        self.counters.inc(Counter::RxStun);
        let Ok(msg) = StunMessage::parse(buf) else {
            self.counters.inc(Counter::DropMalformed);
            return;
        };
        let Some(ufrag) = msg.local_ufrag() else {
            self.counters.inc(Counter::DropStunAuth);
            return;
        };
        let Some(&ti) = self.by_ufrag.get(ufrag) else {
            self.counters.inc(Counter::DropUnknownUfrag);
            return;
        };
        let Some(t) = self.transports.get_mut(ti).and_then(|t| t.as_mut()) else {
            return;
        };
        let reply = &mut self.scratch[..];
        match t.ice.handle_stun(now, from, buf, reply) {
            IceOutcome::Drop(_) => {
                self.counters.inc(Counter::DropStunAuth);
                t.drops += 1;
            }
            IceOutcome::Reply {
                len,
                learned,
                nominated,
            } => {
                if let Some(dst) = tx.reserve(from, len) {
                    dst.copy_from_slice(&reply[..len]);
                } else {
                    self.counters.inc(Counter::DropSendQueueFull);
                }
                if learned.is_some() || nominated {
                    let id = t.id;
                    // The first authenticated check with new credentials completes an ICE
                    // restart: the previous agent's tuples stop being valid from here on.
                    t.old_ice = None;
                    // Re-sync the tuple map with the ICE agent's validated set (it may evict).
                    for old in t.tuples.drain(..) {
                        unmap_tuple(&mut self.by_tuple, &old, ti);
                    }
                    for a in t.ice.validated_tuples() {
                        t.tuples.push(a);
                        self.by_tuple.insert(a, ti);
                    }
                    t.dest = t.ice.selected();
                    if learned.is_some() {
                        self.counters.inc(Counter::TuplesLearned);
                    }
                    out.event(
                        0,
                        &Event::TupleLearned {
                            transport: id,
                            addr: from,
                            nominated,
                        },
                    );
                }
            }
        }
    }

    fn validated(&self, from: SocketAddr) -> Option<usize> {
        let ti = *self.by_tuple.get(&from)?;
        let t = self.transports.get(ti)?.as_ref()?;
        let ok =
            t.ice.is_validated(from) || t.old_ice.as_ref().is_some_and(|o| o.is_validated(from));
        ok.then_some(ti)
    }

    fn handle_dtls(&mut self, from: SocketAddr, buf: &[u8], out: &mut dyn Outbox) {
        self.counters.inc(Counter::RxDtls);
        // ClientHello race (RELIABILITY C4): DTLS only from an ICE-validated tuple.
        let Some(ti) = self.validated(from) else {
            self.counters.inc(Counter::DropUnvalidatedDtls);
            return;
        };
        let Some(t) = self.transports.get(ti).and_then(|t| t.as_ref()) else {
            return;
        };
        if buf.len() > ils_shm::MAX_DATAGRAM {
            self.counters.inc(Counter::DropTooLarge);
            return;
        }
        out.event(
            0,
            &Event::DtlsIn {
                transport: t.id,
                data: buf,
            },
        );
    }

    fn handle_srtp(&mut self, now: Instant, from: SocketAddr, buf: &mut [u8], tx: &mut TxBatch) {
        let Some(ti) = self.validated(from) else {
            self.counters.inc(Counter::DropUnknownTuple);
            return;
        };
        let rtcp = is_rtcp(buf);
        let Some(t) = self.transports.get_mut(ti).and_then(|t| t.as_mut()) else {
            return;
        };
        let Some(rx) = t.rx.as_mut() else {
            self.counters.inc(Counter::DropNoSrtp);
            t.drops += 1;
            return;
        };
        t.rx_packets += 1;
        t.rx_bytes += buf.len() as u64;
        if rtcp {
            self.counters.inc(Counter::RxRtcp);
            match rx.unprotect_rtcp(buf) {
                Ok(n) => self.handle_rtcp(now, ti, n, buf, tx),
                Err(e) => {
                    t.drops += 1;
                    self.count_srtp_error(e);
                }
            }
        } else {
            self.counters.inc(Counter::RxRtp);
            match rx.unprotect_rtp(buf) {
                Ok(n) => self.handle_rtp(now, ti, &mut buf[..n], tx),
                Err(e) => {
                    t.drops += 1;
                    self.count_srtp_error(e);
                }
            }
        }
    }

    fn count_srtp_error(&mut self, e: ils_srtp::SrtpError) {
        use ils_srtp::SrtpError as E;
        let c = match e {
            E::AuthFailed => Counter::DropAuthFailed,
            E::Replayed | E::TooOld => Counter::DropReplay,
            E::TooManySsrcs => Counter::DropUnknownSsrc,
            _ => Counter::DropMalformed,
        };
        self.counters.inc(c);
    }

    /// Find (or learn from mid/rid extensions) the track/layer an SSRC belongs to.
    fn bind_ssrc(&mut self, ti: usize, pkt: &[u8], hdr: &RtpHeader) -> Option<SsrcBinding> {
        let t = self.transports.get_mut(ti)?.as_mut()?;
        if let Some(b) = t.ssrcs.iter().find(|b| b.ssrc == hdr.ssrc) {
            return Some(*b);
        }
        if t.ssrcs.len() >= MAX_SSRCS_PER_TRANSPORT {
            return None;
        }
        for &tid in &t.published {
            let Some(track) = self.tracks.get(&tid) else {
                continue;
            };
            let s = &track.spec;
            let n = usize::from(s.n_encodings).min(MAX_LAYERS);
            // Explicit SSRCs from the offer.
            for (i, e) in s.encodings[..n].iter().enumerate() {
                if e.ssrc != 0 && e.ssrc == hdr.ssrc {
                    let b = bind(hdr.ssrc, tid, i, false);
                    t.ssrcs.push(b);
                    return Some(b);
                }
                if e.rtx_ssrc != 0 && e.rtx_ssrc == hdr.ssrc {
                    let b = bind(hdr.ssrc, tid, i, true);
                    t.ssrcs.push(b);
                    return Some(b);
                }
            }
            // Learn by mid + rid / repaired-rid (RFC 8852/8853), as browsers send them.
            let mid_ok = s.mid_ext != 0
                && find_ext(pkt, hdr, s.mid_ext).is_some_and(|m| m == s.mid.as_bytes());
            if !mid_ok {
                continue;
            }
            let rid = (s.rid_ext != 0)
                .then(|| find_ext(pkt, hdr, s.rid_ext))
                .flatten();
            // byte 20 is the audio-level ext id on audio tracks: only video has repaired RIDs
            let rrid = (s.repaired_rid_ext() != 0)
                .then(|| find_ext(pkt, hdr, s.repaired_rid_ext()))
                .flatten();
            let (name, rtx) = match (rid, rrid) {
                (Some(r), _) => (Some(r), false),
                (None, Some(r)) => (Some(r), true),
                (None, None) => (None, hdr.pt == s.rtx_pt && s.rtx_pt != 0),
            };
            let layer = match name {
                Some(r) => s.encodings[..n].iter().position(|e| e.rid.as_bytes() == r),
                None if n <= 1 => Some(0),
                None => None,
            };
            if let Some(l) = layer {
                let b = bind(hdr.ssrc, tid, l, rtx);
                t.ssrcs.push(b);
                return Some(b);
            }
        }
        None
    }

    fn handle_rtp(&mut self, now: Instant, ti: usize, pkt: &mut [u8], tx: &mut TxBatch) {
        let hdr = match RtpHeader::parse(pkt) {
            Ok(h) => h,
            Err(_) => {
                self.counters.inc(Counter::DropRtpMalformed);
                return;
            }
        };
        let Some(b) = self.bind_ssrc(ti, pkt, &hdr) else {
            self.counters.inc(Counter::DropUnknownSsrc);
            return;
        };
        // transport-wide sequence number for feedback to the publisher
        if let Some(t) = self.transports.get_mut(ti).and_then(|t| t.as_mut()) {
            if t.twcc_ext != 0 {
                if let Some(v) = find_ext(pkt, &hdr, t.twcc_ext) {
                    if v.len() >= 2 {
                        let tw = u16::from_be_bytes([v[0], v[1]]);
                        t.twcc_in
                            .get_or_insert_with(|| TwccRecorder::new(now))
                            .on_packet(now, tw);
                    }
                }
            }
        }
        let (pkt, hdr): (&[u8], RtpHeader) = if b.rtx {
            match unwrap_rtx(pkt, &hdr, self.tracks.get(&b.track).map(|t| t.spec.pt)) {
                Some((n, h)) => (&pkt[..n], h),
                None => {
                    self.counters.inc(Counter::DropRtpMalformed);
                    return;
                }
            }
        } else {
            (&pkt[..], hdr)
        };
        let Some(track) = self.tracks.get_mut(&b.track) else {
            self.counters.inc(Counter::DropUnknownSsrc);
            return;
        };
        let layer = &mut track.layers[usize::from(b.layer).min(MAX_LAYERS - 1)];
        if !b.rtx {
            layer.ssrc = hdr.ssrc;
        }
        layer
            .recv
            .get_or_insert_with(|| RecvStats::new(hdr.ssrc, track.spec.clock_rate))
            .on_packet(now, hdr.seq, hdr.ts);
        layer.nack.on_packet(now, hdr.seq);
        layer.packets += 1;
        if let Some(lv) = track.level.as_mut() {
            match find_ext(pkt, &hdr, track.spec.audio_level_ext()) {
                Some(&[byte]) => lv.on_packet(byte),
                Some(_) => self.counters.inc(Counter::AudioLevelMalformed),
                None => {}
            }
        }
        track.packets += 1;
        track.bytes += pkt.len() as u64;
        let keyframe = match track.spec.kind {
            MediaKind::Audio => true,
            MediaKind::Video => is_keyframe(track.codec, hdr.payload(pkt)),
        };
        if keyframe && track.spec.kind == MediaKind::Video {
            layer.keyframes.on_keyframe(now);
        }
        // hand over to other shards once per shard
        if track.remote_shards != 0 {
            if let Some(buf) = self.pool.fill(pkt) {
                let me = usize::from(self.cfg.shard);
                let mut mask = track.remote_shards;
                while mask != 0 {
                    let s = mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    let msg = XMsg::Packet {
                        track: b.track,
                        layer: b.layer,
                        keyframe,
                        buf: Arc::clone(&buf),
                    };
                    match self.mesh.queue(me, s).map(|q| q.push(msg)) {
                        Some(Ok(())) => self.wakes |= 1 << s,
                        _ => self.counters.inc(Counter::DropCrossShardFull),
                    }
                }
            } else {
                self.counters.inc(Counter::DropCrossShardFull);
            }
        }
        self.fan_out(now, b.track, b.layer, keyframe, pkt, &hdr, tx);
    }

    /// Forward one plain packet of `track`/`layer` to every local leg.
    #[allow(clippy::too_many_arguments)]
    fn fan_out(
        &mut self,
        now: Instant,
        track_id: u32,
        layer: u8,
        keyframe: bool,
        pkt: &[u8],
        hdr: &RtpHeader,
        tx: &mut TxBatch,
    ) {
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        let li = usize::from(layer).min(MAX_LAYERS - 1);
        if let Some(c) = track.layers[li].cache.as_mut() {
            c.insert(hdr.seq, pkt);
        }
        let codec = track.codec;
        let mut want_keyframe = false;
        for &leg_i in &track.local_legs {
            let Some(leg) = self.legs.get_mut(leg_i).and_then(|l| l.as_mut()) else {
                continue;
            };
            let (seq, ts, switched) = match leg.rw.on_packet(now, layer, hdr.seq, hdr.ts, keyframe)
            {
                LegDecision::Forward { seq, ts, switched } => (seq, ts, switched),
                LegDecision::Drop(LegDrop::WaitingForKeyframe) => {
                    if leg.rw.target_layer() == layer {
                        want_keyframe = true;
                    }
                    continue;
                }
                LegDecision::Drop(_) => continue,
            };
            let Some(t) = self
                .transports
                .get_mut(leg.transport)
                .and_then(|t| t.as_mut())
            else {
                continue;
            };
            let o = OutFields {
                seq,
                ts,
                switched,
                rtx_osn: None,
                resend: None,
            };
            if send_rewritten(t, leg, pkt, hdr, o, codec, tx, &mut self.counters) {
                leg.packets += 1;
                leg.bytes += pkt.len() as u64;
                self.counters.inc(Counter::ForwardedPackets);
            }
        }
        if want_keyframe {
            self.request_keyframe(now, track_id, layer, true, tx);
        }
    }

    /// Ask the publisher of `track` for a keyframe of `layer` (coalesced at home). `urgent`: the
    /// engine's own need (a leg starting on or switching to this stream, a control command),
    /// spaced by `URGENT_KEYFRAME_REQUEST_SPACING`; otherwise a subscriber's PLI/FIR, spaced by
    /// the keyframe interval (RELIABILITY B6).
    fn request_keyframe(
        &mut self,
        now: Instant,
        track_id: u32,
        layer: u8,
        urgent: bool,
        tx: &mut TxBatch,
    ) {
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        if track.spec.kind != MediaKind::Video {
            return;
        }
        if !track.home {
            let home = usize::from(track.spec.home_shard);
            let me = usize::from(self.cfg.shard);
            let msg = XMsg::KeyframeRequest {
                track: track_id,
                layer,
                urgent,
            };
            match self.mesh.queue(me, home).map(|q| q.push(msg)) {
                Some(Ok(())) => self.wakes |= 1 << home,
                _ => self.counters.inc(Counter::DropCrossShardFull),
            }
            return;
        }
        let li = usize::from(layer).min(MAX_LAYERS - 1);
        let k = &mut track.layers[li].keyframes;
        let send = if urgent {
            k.request_urgent(now)
        } else {
            k.request(now)
        };
        if send {
            self.send_pli(track_id, layer, tx);
        } else {
            self.counters.inc(Counter::KeyframeRequestsCoalesced);
        }
    }

    fn send_pli(&mut self, track_id: u32, layer: u8, tx: &mut TxBatch) {
        let Some(track) = self.tracks.get(&track_id) else {
            return;
        };
        let li = usize::from(layer).min(MAX_LAYERS - 1);
        let media = track.layers[li].ssrc;
        let Some(ti) = track.transport else {
            return;
        };
        if media == 0 {
            return;
        }
        let Some(t) = self.transports.get_mut(ti).and_then(|t| t.as_mut()) else {
            return;
        };
        let mut tmp = [0u8; 16];
        let Ok(n) = rtcpw::write_pli(&mut tmp, ENGINE_RTCP_SSRC, media) else {
            return;
        };
        if send_rtcp(t, &tmp[..n], tx) {
            self.counters.inc(Counter::PliSent);
        }
    }

    fn handle_rtcp(&mut self, now: Instant, ti: usize, n: usize, buf: &mut [u8], tx: &mut TxBatch) {
        let plain = &buf[..n];
        // Collect actions first: RTCP parsing borrows `plain`, actions need &mut self.
        let mut nacks: [(u32, u16); MAX_NACK_SEQS_PER_PACKET] = [(0, 0); MAX_NACK_SEQS_PER_PACKET];
        let mut n_nacks = 0;
        let mut plis: [u32; 8] = [0; 8];
        let mut n_plis = 0;
        for p in rtcpw::iter(plain) {
            match p {
                Ok(RtcpPacket::Nack {
                    media_ssrc, items, ..
                }) => {
                    self.counters.inc(Counter::NackReceived);
                    for seq in items {
                        if n_nacks < nacks.len() {
                            nacks[n_nacks] = (media_ssrc, seq);
                            n_nacks += 1;
                        }
                    }
                }
                Ok(RtcpPacket::Pli { media_ssrc, .. }) => {
                    self.counters.inc(Counter::PliReceived);
                    if n_plis < plis.len() {
                        plis[n_plis] = media_ssrc;
                        n_plis += 1;
                    }
                }
                Ok(RtcpPacket::Fir { entries, .. }) => {
                    self.counters.inc(Counter::PliReceived);
                    for (ssrc, _) in entries {
                        if n_plis < plis.len() {
                            plis[n_plis] = ssrc;
                            n_plis += 1;
                        }
                    }
                }
                Ok(RtcpPacket::SenderReport {
                    ssrc, ntp, rtp_ts, ..
                }) => {
                    self.on_sender_report(now, ti, ssrc, ntp, rtp_ts, tx);
                }
                Ok(_) => {}
                Err(_) => {
                    self.counters.inc(Counter::DropRtcpMalformed);
                    break;
                }
            }
        }
        for &(media, seq) in &nacks[..n_nacks] {
            self.resend(now, ti, media, seq, tx);
        }
        for &media in &plis[..n_plis] {
            if let Some(li) = self.leg_of(ti, media) {
                if let Some(leg) = self.legs.get_mut(li).and_then(|l| l.as_mut()) {
                    leg.plis += 1;
                    let (track, layer) = (
                        leg.track,
                        leg.rw.current_layer().unwrap_or(leg.rw.target_layer()),
                    );
                    self.request_keyframe(now, track, layer, false, tx);
                }
            }
        }
    }

    fn on_sender_report(
        &mut self,
        now: Instant,
        ti: usize,
        ssrc: u32,
        ntp: u64,
        rtp_ts: u32,
        tx: &mut TxBatch,
    ) {
        let Some(t) = self.transports.get(ti).and_then(|t| t.as_ref()) else {
            return;
        };
        let Some(b) = t.ssrcs.iter().find(|b| b.ssrc == ssrc && !b.rtx).copied() else {
            return;
        };
        let Some(track) = self.tracks.get_mut(&b.track) else {
            return;
        };
        let l = &mut track.layers[usize::from(b.layer).min(MAX_LAYERS - 1)];
        if let Some(r) = l.recv.as_mut() {
            r.on_sender_report(now, ntp);
        }
        // Subscribers need the publisher's NTP/RTP mapping for lip sync: translate it to each
        // leg (its SSRC, its timestamp offset), here and on the shards that subscribe.
        let mut mask = track.remote_shards;
        while mask != 0 {
            let s = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            self.send_xshard(
                s,
                XMsg::SenderReport {
                    track: b.track,
                    layer: b.layer,
                    ntp,
                    rtp_ts,
                },
            );
        }
        self.forward_sender_report(b.track, b.layer, ntp, rtp_ts, tx);
    }

    /// Send a translated sender report to every local leg currently forwarding `track`/`layer`.
    fn forward_sender_report(
        &mut self,
        track_id: u32,
        layer: u8,
        ntp: u64,
        rtp_ts: u32,
        tx: &mut TxBatch,
    ) {
        let Some(track) = self.tracks.get(&track_id) else {
            return;
        };
        for &li in &track.local_legs {
            let Some(leg) = self.legs.get(li).and_then(|l| l.as_ref()) else {
                continue;
            };
            if leg.rw.current_layer() != Some(layer) {
                continue;
            }
            let Some(t) = self
                .transports
                .get_mut(leg.transport)
                .and_then(|t| t.as_mut())
            else {
                continue;
            };
            let mut tmp = [0u8; 28];
            let ts = rtp_ts.wrapping_add(leg.rw.ts_offset());
            // RTCP counts are 32-bit and wrap by definition (RFC 3550 §6.4.1).
            let (packets, octets) = (leg.packets as u32, leg.bytes as u32);
            if let Ok(n) = rtcpw::write_sr(&mut tmp, leg.spec.ssrc, ntp, ts, packets, octets, &[]) {
                if send_rtcp(t, &tmp[..n], tx) {
                    self.counters.inc(Counter::RtcpSent);
                }
            }
        }
    }

    fn leg_of(&self, ti: usize, media_ssrc: u32) -> Option<usize> {
        let t = self.transports.get(ti)?.as_ref()?;
        t.legs.iter().copied().find(|&li| {
            self.legs
                .get(li)
                .and_then(|l| l.as_ref())
                .is_some_and(|l| l.spec.ssrc == media_ssrc)
        })
    }

    /// Answer one NACKed sequence number from the local retransmission cache.
    fn resend(&mut self, now: Instant, ti: usize, media: u32, out_seq: u16, tx: &mut TxBatch) {
        let Some(li) = self.leg_of(ti, media) else {
            return;
        };
        let Some(leg) = self.legs.get_mut(li).and_then(|l| l.as_mut()) else {
            return;
        };
        leg.nacks += 1;
        let Some(m) = leg.rw.map_out(out_seq) else {
            self.counters.inc(Counter::DropRtxCacheMiss);
            return;
        };
        let (layer, src_seq, ts_offset) = (m.layer, m.src_seq, m.ts_offset);
        let Some(track) = self.tracks.get_mut(&leg.track) else {
            return;
        };
        let codec = track.codec;
        // Every local leg of the track may have lost the same packet (one burst, one browser):
        // each gets its own resend budget (RELIABILITY D9 still bounds the total).
        let legs = u8::try_from(track.local_legs.len().max(1)).unwrap_or(u8::MAX);
        let max_resends = ils_rtp::rtx::RTX_MAX_RESENDS.saturating_mul(legs);
        let Some(cache) = track.layers[usize::from(layer).min(MAX_LAYERS - 1)]
            .cache
            .as_mut()
        else {
            self.counters.inc(Counter::DropRtxCacheMiss);
            return;
        };
        let Some(pkt) = cache.get_for_resend_up_to(now, src_seq, max_resends) else {
            self.counters.inc(Counter::DropRtxCacheMiss);
            return;
        };
        let Ok(hdr) = RtpHeader::parse(pkt) else {
            return;
        };
        let ts = hdr.ts.wrapping_add(ts_offset);
        let Some(t) = self.transports.get_mut(ti).and_then(|t| t.as_mut()) else {
            return;
        };
        let o = if leg.spec.rtx_ssrc != 0 && leg.spec.rtx_pt != 0 {
            leg.rtx_seq = leg.rtx_seq.wrapping_add(1);
            OutFields {
                seq: leg.rtx_seq,
                ts,
                switched: false,
                rtx_osn: Some(out_seq),
                resend: Some(m.previous),
            }
        } else {
            // No RTX negotiated: resend on the media SSRC with the same sequence number.
            OutFields {
                seq: out_seq,
                ts,
                switched: false,
                rtx_osn: None,
                resend: Some(m.previous),
            }
        };
        if send_rewritten(t, leg, pkt, &hdr, o, codec, tx, &mut self.counters) {
            self.counters.inc(Counter::RtxSent);
        }
    }

    // ===== cross-shard =====

    /// A message from another shard.
    pub fn handle_xmsg(&mut self, now: Instant, msg: XMsg, tx: &mut TxBatch) {
        self.arm_timers(now);
        match msg {
            XMsg::Packet {
                track,
                layer,
                keyframe,
                buf,
            } => {
                let pkt = buf.bytes();
                if let Ok(hdr) = RtpHeader::parse(pkt) {
                    self.fan_out(now, track, layer, keyframe, pkt, &hdr, tx);
                }
            }
            XMsg::Subscribe { track, shard, on } => {
                if usize::from(shard) >= 64 {
                    return;
                }
                let bit = 1u64 << shard;
                let mask = match self.tracks.get_mut(&track) {
                    Some(t) => &mut t.remote_shards,
                    None if self.pending_subscribers.len() < MAX_TRACKS
                        || self.pending_subscribers.contains_key(&track) =>
                    {
                        self.pending_subscribers.entry(track).or_insert(0)
                    }
                    None => return,
                };
                if on {
                    *mask |= bit;
                } else {
                    *mask &= !bit;
                }
            }
            XMsg::KeyframeRequest {
                track,
                layer,
                urgent,
            } => {
                self.request_keyframe(now, track, layer, urgent, tx);
            }
            XMsg::SenderReport {
                track,
                layer,
                ntp,
                rtp_ts,
            } => self.forward_sender_report(track, layer, ntp, rtp_ts, tx),
        }
    }

    fn send_xshard(&mut self, to: usize, msg: XMsg) {
        let me = usize::from(self.cfg.shard);
        match self.mesh.queue(me, to).map(|q| q.push(msg)) {
            Some(Ok(())) => self.wakes |= 1 << to,
            _ => self.counters.inc(Counter::DropCrossShardFull),
        }
    }

    // ===== commands =====

    /// Apply one command from control. Invalid commands are rejected with an event.
    pub fn handle_command(
        &mut self,
        now: Instant,
        seq: Seq,
        cmd: &Command<'_>,
        tx: &mut TxBatch,
        out: &mut dyn Outbox,
    ) {
        self.arm_timers(now);
        match self.apply(now, cmd, tx, out) {
            Ok(()) => self.counters.inc(Counter::CommandsApplied),
            Err(reason) => {
                self.counters.inc(Counter::CommandsRejected);
                out.event(seq, &Event::Rejected { seq, reason });
            }
        }
    }

    fn transport_mut(&mut self, id: u32) -> Result<(usize, &mut Transport), RejectReason> {
        let ti = *self.by_id.get(&id).ok_or(RejectReason::UnknownTransport)?;
        let t = self
            .transports
            .get_mut(ti)
            .and_then(|t| t.as_mut())
            .ok_or(RejectReason::UnknownTransport)?;
        Ok((ti, t))
    }

    fn apply(
        &mut self,
        now: Instant,
        cmd: &Command<'_>,
        tx: &mut TxBatch,
        out: &mut dyn Outbox,
    ) -> Result<(), RejectReason> {
        match *cmd {
            Command::AddTransport {
                transport,
                ufrag,
                pwd,
                consent_timeout_ms,
            } => {
                if self.by_id.contains_key(&transport) || self.by_ufrag.contains_key(ufrag) {
                    return Err(RejectReason::DuplicateTransport);
                }
                if self.by_id.len() >= MAX_TRANSPORTS {
                    return Err(RejectReason::TableFull);
                }
                let timeout = if consent_timeout_ms == 0 {
                    self.cfg.consent_timeout
                } else {
                    Duration::from_millis(u64::from(consent_timeout_ms))
                };
                let ice = IceLite::new(ufrag, pwd, timeout).map_err(|_| RejectReason::BadField)?;
                let t = Transport {
                    id: transport,
                    ufrag: ufrag.into(),
                    ice,
                    old_ice: None,
                    rx: None,
                    tx: None,
                    profile: 0,
                    tuples: Vec::with_capacity(ils_stun::MAX_TUPLES_PER_TRANSPORT),
                    dest: None,
                    ssrcs: Vec::with_capacity(8),
                    published: Vec::new(),
                    legs: Vec::new(),
                    twcc_ext: 0,
                    twcc_in: None,
                    twcc_out_seq: 0,
                    rx_packets: 0,
                    rx_bytes: 0,
                    tx_packets: 0,
                    tx_bytes: 0,
                    drops: 0,
                };
                let ti = match self.free_transports.pop() {
                    Some(i) => {
                        self.transports[i] = Some(t);
                        i
                    }
                    None => {
                        self.transports.push(Some(t));
                        self.transports.len() - 1
                    }
                };
                self.by_id.insert(transport, ti);
                self.by_ufrag.insert(ufrag.into(), ti);
                let _ = now;
                Ok(())
            }
            Command::RemoveTransport { transport } => {
                let (ti, _) = self.transport_mut(transport)?;
                self.remove_transport(ti);
                Ok(())
            }
            Command::InstallSrtp {
                transport,
                profile,
                rx_key,
                rx_salt,
                tx_key,
                tx_salt,
            } => {
                let p = Profile::from_dtls_id(profile).ok_or(RejectReason::UnknownProfile)?;
                if rx_key.len() != p.master_key_len()
                    || tx_key.len() != p.master_key_len()
                    || rx_salt.len() != p.master_salt_len()
                    || tx_salt.len() != p.master_salt_len()
                {
                    return Err(RejectReason::BadKeyLength);
                }
                let rx =
                    SrtpContext::new(p, rx_key, rx_salt).map_err(|_| RejectReason::BadKeyLength)?;
                let txc =
                    SrtpContext::new(p, tx_key, tx_salt).map_err(|_| RejectReason::BadKeyLength)?;
                let (_, t) = self.transport_mut(transport)?;
                t.rx = Some(rx);
                t.tx = Some(txc);
                t.profile = profile;
                Ok(())
            }
            Command::SendDatagram { transport, data } => {
                let (_, t) = self.transport_mut(transport)?;
                if data.is_empty() || data.len() > ils_io::MAX_DATAGRAM {
                    return Err(RejectReason::TooLarge);
                }
                let Some(dest) = t.dest else {
                    // No validated tuple yet: nothing to send to (not an error of the command).
                    return Ok(());
                };
                match tx.reserve(dest, data.len()) {
                    Some(b) => {
                        b.copy_from_slice(data);
                        t.tx_packets += 1;
                        t.tx_bytes += data.len() as u64;
                    }
                    None => self.counters.inc(Counter::DropSendQueueFull),
                }
                Ok(())
            }
            Command::AddTrack(spec) => self.add_track(spec),
            Command::RemoveTrack { track } => {
                let t = self
                    .tracks
                    .remove(&track)
                    .ok_or(RejectReason::UnknownTrack)?;
                for li in t.local_legs {
                    self.drop_leg_slot(li);
                }
                if let Some(ti) = t.transport {
                    if let Some(pt) = self.transports.get_mut(ti).and_then(|x| x.as_mut()) {
                        pt.published.retain(|&x| x != track);
                        pt.ssrcs.retain(|b| b.track != track);
                    }
                }
                Ok(())
            }
            Command::AddLeg(spec) => self.add_leg(spec),
            Command::RemoveLeg { leg } => {
                let li = *self.leg_by_id.get(&leg).ok_or(RejectReason::UnknownLeg)?;
                self.remove_leg(li);
                Ok(())
            }
            Command::SelectLayer { leg, layer } => {
                if usize::from(layer) >= MAX_LAYERS {
                    return Err(RejectReason::BadField);
                }
                let li = *self.leg_by_id.get(&leg).ok_or(RejectReason::UnknownLeg)?;
                let track_id = {
                    let l = self
                        .legs
                        .get_mut(li)
                        .and_then(|l| l.as_mut())
                        .ok_or(RejectReason::UnknownLeg)?;
                    l.rw.set_target_layer(layer);
                    l.spec.layer = layer;
                    l.track
                };
                self.ensure_cache(track_id, layer);
                self.request_keyframe(now, track_id, layer, true, tx);
                Ok(())
            }
            Command::RequestKeyframe { track, layer } => {
                if usize::from(layer) >= MAX_LAYERS {
                    return Err(RejectReason::BadField);
                }
                if !self.tracks.contains_key(&track) {
                    return Err(RejectReason::UnknownTrack);
                }
                self.request_keyframe(now, track, layer, true, tx);
                Ok(())
            }
            Command::DumpState => {
                self.dump(out);
                Ok(())
            }
            Command::RestartIce {
                transport,
                ufrag,
                pwd,
            } => self.restart_ice(transport, ufrag, pwd),
        }
    }

    /// ICE restart: swap in an agent with the new local credentials. Until that agent validates
    /// a tuple, the previous agent's validated tuples keep admitting DTLS/SRTP and `dest` keeps
    /// pointing at its selected tuple, so media flows through the restart; checks with the old
    /// ufrag are no longer answered (it leaves `by_ufrag` now). SRTP contexts, tracks and legs are
    /// untouched. Nothing changes when the command is rejected.
    fn restart_ice(
        &mut self,
        transport: u32,
        ufrag: &[u8],
        pwd: &[u8],
    ) -> Result<(), RejectReason> {
        let ti = *self
            .by_id
            .get(&transport)
            .ok_or(RejectReason::UnknownTransport)?;
        if self.by_ufrag.get(ufrag).is_some_and(|&other| other != ti) {
            return Err(RejectReason::DuplicateTransport);
        }
        let t = self
            .transports
            .get_mut(ti)
            .and_then(|t| t.as_mut())
            .ok_or(RejectReason::UnknownTransport)?;
        let fresh = IceLite::new(ufrag, pwd, t.ice.consent_timeout())
            .map_err(|_| RejectReason::BadField)?;
        let prev = std::mem::replace(&mut t.ice, fresh);
        // Keep the agent that actually holds the live path: on a second restart before the
        // first completed, `prev` validated nothing and the older agent stays.
        if prev.validated_tuples().next().is_some() {
            t.old_ice = Some(Box::new(prev));
        }
        let old_ufrag = std::mem::replace(&mut t.ufrag, ufrag.into());
        self.by_ufrag.remove(&old_ufrag);
        self.by_ufrag.insert(ufrag.into(), ti);
        Ok(())
    }

    fn add_track(&mut self, spec: TrackSpec) -> Result<(), RejectReason> {
        if self.tracks.contains_key(&spec.track) {
            return Err(RejectReason::DuplicateTrack);
        }
        if self.tracks.len() >= MAX_TRACKS {
            return Err(RejectReason::TableFull);
        }
        if spec.home_shard >= self.cfg.shards
            || spec.n_encodings == 0
            || usize::from(spec.n_encodings) > MAX_LAYERS
            || spec.clock_rate == 0
        {
            return Err(RejectReason::BadField);
        }
        let home = spec.home_shard == self.cfg.shard;
        let mut transport = None;
        if home {
            let (ti, t) = self.transport_mut(spec.transport)?;
            if t.published.len() >= MAX_SSRCS_PER_TRANSPORT {
                return Err(RejectReason::TableFull);
            }
            t.published.push(spec.track);
            if spec.twcc_ext != 0 {
                t.twcc_ext = spec.twcc_ext;
            }
            transport = Some(ti);
        }
        let codec = match spec.codec {
            0 => Codec::Opus,
            1 => Codec::Vp8,
            2 => Codec::Vp9,
            3 => Codec::H264,
            4 => Codec::Av1,
            _ => Codec::Other,
        };
        let iv = self.cfg.keyframe_interval;
        self.tracks.insert(
            spec.track,
            Track {
                spec,
                codec,
                home,
                transport,
                local_legs: Vec::new(),
                remote_shards: self.pending_subscribers.remove(&spec.track).unwrap_or(0),
                layers: [layer_new(iv), layer_new(iv), layer_new(iv)],
                packets: 0,
                bytes: 0,
                level: (home && spec.audio_level_ext() != 0).then(AudioLevel::new),
            },
        );
        Ok(())
    }

    fn ensure_cache(&mut self, track: u32, layer: u8) {
        if let Some(t) = self.tracks.get_mut(&track) {
            let l = &mut t.layers[usize::from(layer).min(MAX_LAYERS - 1)];
            if l.cache.is_none() {
                l.cache = Some(Box::new(RtxCache::new(RTX_CACHE_PER_LAYER)));
            }
        }
    }

    fn add_leg(&mut self, spec: LegSpec) -> Result<(), RejectReason> {
        if self.leg_by_id.contains_key(&spec.leg) {
            return Err(RejectReason::DuplicateLeg);
        }
        if self.leg_by_id.len() >= MAX_LEGS {
            return Err(RejectReason::TableFull);
        }
        if usize::from(spec.layer) >= MAX_LAYERS || usize::from(spec.n_ext_map) > spec.ext_map.len()
        {
            return Err(RejectReason::BadField);
        }
        let (clock_rate, home_shard) = {
            let t = self
                .tracks
                .get(&spec.track)
                .ok_or(RejectReason::UnknownTrack)?;
            (t.spec.clock_rate, t.spec.home_shard)
        };
        let (ti, _) = self.transport_mut(spec.transport)?;
        let mut ext_map = ExtMap::new();
        for &(from, to) in &spec.ext_map[..usize::from(spec.n_ext_map)] {
            ext_map.set(from, to);
        }
        let leg = Leg {
            spec,
            transport: ti,
            track: spec.track,
            rw: LegRewriter::new(spec.ssrc, clock_rate, spec.layer),
            ext_map,
            vp8: Vp8Rewriter::new(),
            packets: 0,
            bytes: 0,
            nacks: 0,
            plis: 0,
            rtx_seq: 0,
        };
        let li = match self.free_legs.pop() {
            Some(i) => {
                self.legs[i] = Some(leg);
                i
            }
            None => {
                self.legs.push(Some(leg));
                self.legs.len() - 1
            }
        };
        self.leg_by_id.insert(spec.leg, li);
        if let Some(t) = self.transports.get_mut(ti).and_then(|t| t.as_mut()) {
            t.legs.push(li);
        }
        let first_local = {
            let t = self
                .tracks
                .get_mut(&spec.track)
                .ok_or(RejectReason::UnknownTrack)?;
            t.local_legs.push(li);
            t.local_legs.len() == 1
        };
        self.ensure_cache(spec.track, spec.layer);
        if first_local && home_shard != self.cfg.shard {
            let me = self.cfg.shard;
            self.send_xshard(
                usize::from(home_shard),
                XMsg::Subscribe {
                    track: spec.track,
                    shard: me,
                    on: true,
                },
            );
        }
        Ok(())
    }

    /// Free a leg slot without touching its track's list (caller handles that).
    fn drop_leg_slot(&mut self, li: usize) {
        let Some(leg) = self.legs.get_mut(li).and_then(|l| l.take()) else {
            return;
        };
        self.leg_by_id.remove(&leg.spec.leg);
        if let Some(t) = self
            .transports
            .get_mut(leg.transport)
            .and_then(|t| t.as_mut())
        {
            t.legs.retain(|&x| x != li);
        }
        self.free_legs.push(li);
    }

    fn remove_leg(&mut self, li: usize) {
        let Some(track_id) = self.legs.get(li).and_then(|l| l.as_ref()).map(|l| l.track) else {
            return;
        };
        self.drop_leg_slot(li);
        let mut unsubscribe = None;
        if let Some(t) = self.tracks.get_mut(&track_id) {
            t.local_legs.retain(|&x| x != li);
            if t.local_legs.is_empty() && !t.home {
                unsubscribe = Some(t.spec.home_shard);
            }
        }
        if let Some(home) = unsubscribe {
            let me = self.cfg.shard;
            self.send_xshard(
                usize::from(home),
                XMsg::Subscribe {
                    track: track_id,
                    shard: me,
                    on: false,
                },
            );
        }
    }

    fn remove_transport(&mut self, ti: usize) {
        let Some(t) = self.transports.get_mut(ti).and_then(|t| t.take()) else {
            return;
        };
        self.by_id.remove(&t.id);
        self.by_ufrag.remove(&t.ufrag);
        for a in &t.tuples {
            unmap_tuple(&mut self.by_tuple, a, ti);
        }
        for &li in &t.legs {
            self.remove_leg(li);
        }
        for tid in &t.published {
            if let Some(track) = self.tracks.get_mut(tid) {
                track.transport = None;
            }
        }
        self.free_transports.push(ti);
    }

    fn dump(&mut self, out: &mut dyn Outbox) {
        for t in self.transports.iter().flatten() {
            out.event(
                0,
                &Event::StateTransport {
                    transport: t.id,
                    ufrag: &t.ufrag,
                    srtp_profile: t.profile,
                    selected: t.dest,
                },
            );
        }
        for t in self.tracks.values() {
            out.event(0, &Event::StateTrack(t.spec));
        }
        for l in self.legs.iter().flatten() {
            out.event(0, &Event::StateLeg(l.spec));
        }
        out.event(
            0,
            &Event::DumpDone {
                shard: self.cfg.shard,
            },
        );
    }

    // ===== timers =====

    fn arm_timers(&mut self, now: Instant) {
        if self.next_tick.is_none() {
            self.next_tick = Some(now + TICK);
            self.next_twcc = Some(now + TWCC_INTERVAL);
            self.next_report = Some(now + REPORT_INTERVAL);
            self.next_levels = Some(now + AUDIO_LEVEL_INTERVAL);
        }
    }

    /// Run due timers: consent freshness, NACKs and keyframe requests to publishers,
    /// transport-cc feedback, receiver reports and stats events.
    pub fn handle_timeout(&mut self, now: Instant, tx: &mut TxBatch, out: &mut dyn Outbox) {
        self.arm_timers(now);
        if self.next_tick.is_some_and(|t| now < t) {
            return;
        }
        self.next_tick = Some(now + TICK);
        // consent freshness
        let mut lost = std::mem::take(&mut self.lost_scratch);
        lost.clear();
        for (ti, t) in self.transports.iter_mut().enumerate() {
            let Some(t) = t.as_mut() else { continue };
            let mut expired = false;
            if t.ice.poll_timeout().is_some_and(|d| d <= now) {
                expired |= matches!(t.ice.handle_timeout(now), Some(IceEvent::ConsentLost));
            }
            // During an ICE restart the previous agent's consent still bounds the old path.
            if let Some(o) = t.old_ice.as_mut() {
                if o.poll_timeout().is_some_and(|d| d <= now) {
                    expired |= matches!(o.handle_timeout(now), Some(IceEvent::ConsentLost));
                    t.old_ice = None;
                }
            }
            if expired {
                lost.push(ti);
            }
        }
        for &ti in &lost {
            if let Some(t) = self.transports.get_mut(ti).and_then(|t| t.as_mut()) {
                for a in t.tuples.drain(..) {
                    unmap_tuple(&mut self.by_tuple, &a, ti);
                }
                t.dest = None;
                self.counters.inc(Counter::ConsentLost);
                out.event(0, &Event::ConsentLost { transport: t.id });
            }
        }
        self.lost_scratch = lost;
        // NACKs and pending keyframe requests towards publishers (home tracks)
        let mut ids = std::mem::take(&mut self.id_scratch);
        ids.clear();
        ids.extend(
            self.tracks
                .iter()
                .filter(|(_, t)| t.home && t.transport.is_some())
                .map(|(&id, _)| id),
        );
        for &id in &ids {
            for layer in 0..MAX_LAYERS as u8 {
                self.track_layer_timers(now, id, layer, tx);
            }
        }
        self.id_scratch = ids;
        if self.next_twcc.is_some_and(|t| now >= t) {
            self.next_twcc = Some(now + TWCC_INTERVAL);
            for t in self.transports.iter_mut().flatten() {
                let Some(rec) = t.twcc_in.as_mut() else {
                    continue;
                };
                let mut tmp = [0u8; 1200];
                if let Some(n) = rec.build_feedback(
                    &mut tmp,
                    ENGINE_RTCP_SSRC,
                    t.ssrcs.first().map_or(0, |b| b.ssrc),
                ) {
                    send_rtcp(t, &tmp[..n], tx);
                }
            }
        }
        if self.next_report.is_some_and(|t| now >= t) {
            self.next_report = Some(now + REPORT_INTERVAL);
            self.reports(now, tx, out);
        }
        if self.next_levels.is_some_and(|t| now >= t) {
            self.next_levels = Some(now + AUDIO_LEVEL_INTERVAL);
            self.audio_level_events(out);
        }
    }

    /// One `AudioLevels` event per `AUDIO_LEVEL_INTERVAL` with the smoothed level of every home
    /// audio track that received the extension during the interval, plus a single 127 for a
    /// track that went quiet (no packet for a whole interval); nothing when nothing changed
    /// that way. Over `MAX_AUDIO_LEVELS` such tracks, reporting resumes after the last one
    /// reported (round robin by track id) and the rest keep their state for the next interval.
    fn audio_level_events(&mut self, out: &mut dyn Outbox) {
        let mut ids = std::mem::take(&mut self.id_scratch);
        ids.clear();
        ids.extend(
            self.tracks
                .iter()
                .filter(|(_, t)| t.level.is_some())
                .map(|(&id, _)| id),
        );
        ids.sort_unstable();
        let start = if ids.len() > MAX_AUDIO_LEVELS {
            ids.partition_point(|&id| id <= self.level_cursor)
        } else {
            0
        };
        let mut n = 0;
        for k in 0..ids.len() {
            if n == MAX_AUDIO_LEVELS {
                break;
            }
            let id = ids[(start + k) % ids.len()];
            let Some(lv) = self.tracks.get_mut(&id).and_then(|t| t.level.as_mut()) else {
                continue;
            };
            if let Some(l) = lv.take_report() {
                if AudioLevels::put(&mut self.level_scratch[..], n, id, l) {
                    n += 1;
                    self.level_cursor = id;
                }
            }
        }
        self.id_scratch = ids;
        if n == 0 {
            return;
        }
        if let Ok(l) = AudioLevels::new(&self.level_scratch[..n * AUDIO_LEVEL_ENTRY]) {
            out.event(0, &Event::AudioLevels(l));
        }
    }

    fn track_layer_timers(&mut self, now: Instant, id: u32, layer: u8, tx: &mut TxBatch) {
        let Some(track) = self.tracks.get_mut(&id) else {
            return;
        };
        let l = &mut track.layers[usize::from(layer)];
        if l.ssrc == 0 {
            return;
        }
        let media = l.ssrc;
        let n = l
            .nack
            .poll_nacks(now, Duration::from_millis(50), &mut self.nack_scratch);
        let pli = l.keyframes.poll(now);
        let Some(ti) = track.transport else { return };
        let Some(t) = self.transports.get_mut(ti).and_then(|t| t.as_mut()) else {
            return;
        };
        if n > 0 {
            let mut tmp = [0u8; 512];
            if let Ok(len) =
                rtcpw::write_nack(&mut tmp, ENGINE_RTCP_SSRC, media, &self.nack_scratch[..n])
            {
                if send_rtcp(t, &tmp[..len], tx) {
                    self.counters.inc(Counter::NackSent);
                }
            }
        }
        if pli {
            let mut tmp = [0u8; 16];
            if let Ok(len) = rtcpw::write_pli(&mut tmp, ENGINE_RTCP_SSRC, media) {
                if send_rtcp(t, &tmp[..len], tx) {
                    self.counters.inc(Counter::PliSent);
                }
            }
        }
    }

    /// Per-transport and per-leg stats events, at most `MAX_STATS_EVENTS_PER_REPORT` per report
    /// interval, continuing where the previous interval stopped: with many legs each is
    /// reported every few seconds instead of flooding the event ring (which also carries the
    /// DTLS records of handshakes in progress).
    fn stats_events(&mut self, out: &mut dyn Outbox) {
        let total = self.transports.len() + self.legs.len();
        let mut emitted = 0;
        let mut visited = 0;
        while visited < total && emitted < MAX_STATS_EVENTS_PER_REPORT {
            let i = self.stats_cursor % total;
            self.stats_cursor = (i + 1) % total;
            visited += 1;
            if let Some(t) = self.transports.get(i) {
                let Some(t) = t.as_ref() else { continue };
                out.event(
                    0,
                    &Event::TransportStats {
                        transport: t.id,
                        rx_packets: t.rx_packets,
                        rx_bytes: t.rx_bytes,
                        tx_packets: t.tx_packets,
                        tx_bytes: t.tx_bytes,
                        drops: t.drops,
                        rtt_us: 0,
                    },
                );
            } else if let Some(Some(l)) = self.legs.get(i - self.transports.len()) {
                out.event(
                    0,
                    &Event::LegStats {
                        leg: l.spec.leg,
                        packets: l.packets,
                        bytes: l.bytes,
                        nacks: l.nacks,
                        plis: l.plis,
                        layer: l.rw.current_layer().unwrap_or(l.rw.target_layer()),
                    },
                );
            } else {
                continue;
            }
            emitted += 1;
        }
    }

    fn reports(&mut self, now: Instant, tx: &mut TxBatch, out: &mut dyn Outbox) {
        // receiver reports to publishers
        for t in self.transports.iter_mut().flatten() {
            let mut blocks = [rtcpw::ReportBlock::default(); 6];
            let mut n = 0;
            for b in t.ssrcs.iter().filter(|b| !b.rtx) {
                if let Some(track) = self.tracks.get_mut(&b.track) {
                    if let Some(r) = track.layers[usize::from(b.layer).min(MAX_LAYERS - 1)]
                        .recv
                        .as_mut()
                    {
                        if n < blocks.len() {
                            blocks[n] = r.report_block(now);
                            n += 1;
                        }
                    }
                }
            }
            if n > 0 {
                let mut tmp = [0u8; 256];
                if let Ok(len) = rtcpw::write_rr(&mut tmp, ENGINE_RTCP_SSRC, &blocks[..n]) {
                    send_rtcp(t, &tmp[..len], tx);
                }
            }
        }
        self.stats_events(out);
        for (&id, t) in self.tracks.iter().filter(|(_, t)| t.home) {
            let active = t.layers.iter().filter(|l| l.ssrc != 0).count() as u8;
            out.event(
                0,
                &Event::TrackStats {
                    track: id,
                    packets: t.packets,
                    bytes: t.bytes,
                    layers_active: active,
                },
            );
        }
    }
}

/// Remove `addr` from the tuple map only if it still maps to transport slot `ti`: the same
/// remote tuple may since have been validated by another transport (a client reconnecting as a
/// new transport from the same socket), whose mapping must survive this one's cleanup.
fn unmap_tuple(by_tuple: &mut FxMap<SocketAddr, usize>, addr: &SocketAddr, ti: usize) {
    if by_tuple.get(addr) == Some(&ti) {
        by_tuple.remove(addr);
    }
}

fn bind(ssrc: u32, track: u32, layer: usize, rtx: bool) -> SsrcBinding {
    SsrcBinding {
        ssrc,
        track,
        layer: layer.min(MAX_LAYERS - 1) as u8,
        rtx,
    }
}

/// RFC 4588: turn a retransmission packet into the original in place (seq = OSN, payload
/// shifted by 2, padding stripped, payload type restored). Returns the new length and header.
fn unwrap_rtx(pkt: &mut [u8], hdr: &RtpHeader, media_pt: Option<u8>) -> Option<(usize, RtpHeader)> {
    let pt = media_pt?;
    if hdr.payload_len < 3 {
        // empty (padding/probe) retransmissions carry nothing to forward
        return None;
    }
    let start = hdr.header_len;
    let osn = u16::from_be_bytes([*pkt.get(start)?, *pkt.get(start + 1)?]);
    let end = start.checked_add(hdr.payload_len)?;
    if end > pkt.len() {
        return None;
    }
    pkt.copy_within(start + 2..end, start);
    let n = end - 2;
    pkt[0] &= !0x20; // clear P
    pkt[1] = (pkt[1] & 0x80) | (pt & 0x7f);
    pkt[2..4].copy_from_slice(&osn.to_be_bytes());
    let h = RtpHeader::parse(&pkt[..n]).ok()?;
    Some((n, h))
}

/// Output fields of one forwarded packet.
#[derive(Clone, Copy)]
struct OutFields {
    seq: u16,
    ts: u32,
    /// First packet after a layer switch (VP8 ids re-based).
    switched: bool,
    /// Retransmission: `Some(original seq)` when sent as RTX (RFC 4588) on the leg's RTX SSRC
    /// (`seq` is then the RTX stream's sequence number), `None` for media or a plain resend.
    rtx_osn: Option<u16>,
    /// A retransmission of an earlier packet (VP8 ids are rewritten without advancing state):
    /// `Some(previous segment?)`.
    resend: Option<bool>,
}

/// Rewrite `pkt` for `leg`, encrypt it for transport `t` and queue it. Returns true if queued.
#[allow(clippy::too_many_arguments)] // the hot path keeps its borrows split; a struct would not help
fn send_rewritten(
    t: &mut Transport,
    leg: &mut Leg,
    pkt: &[u8],
    hdr: &RtpHeader,
    o: OutFields,
    codec: Codec,
    tx: &mut TxBatch,
    counters: &mut LocalCounters,
) -> bool {
    let (Some(dest), Some(ctx)) = (t.dest, t.tx.as_mut()) else {
        counters.inc(Counter::DropNoSrtp);
        return false;
    };
    let twcc = if leg.spec.twcc_ext != 0 {
        t.twcc_out_seq = t.twcc_out_seq.wrapping_add(1);
        Some((leg.spec.twcc_ext, t.twcc_out_seq))
    } else {
        None
    };
    let (ssrc, pt, osn_len) = match o.rtx_osn {
        Some(_) => (leg.spec.rtx_ssrc, leg.spec.rtx_pt, 2),
        None => (leg.spec.ssrc, leg.spec.pt, 0),
    };
    let rw = Rewrite {
        ssrc,
        seq: o.seq,
        ts: o.ts,
        pt,
        marker: hdr.marker,
        ext_map: &leg.ext_map,
        twcc,
    };
    let plain = rewritten_len(pkt, hdr, &rw) + osn_len;
    let total = plain + ctx.profile().rtp_overhead();
    if total > ils_io::MAX_DATAGRAM {
        counters.inc(Counter::DropTooLarge);
        return false;
    }
    let Some(buf) = tx.reserve(dest, total) else {
        counters.inc(Counter::DropSendQueueFull);
        return false;
    };
    let ok = match write_rewritten(pkt, hdr, &rw, buf) {
        Ok(n) if n >= hdr.payload_len && n + osn_len <= buf.len() => {
            let start = n - hdr.payload_len;
            if codec == Codec::Vp8 {
                let payload = &mut buf[start..n];
                let _ = if let Some(previous) = o.resend {
                    leg.vp8.rewrite_retransmission(payload, previous)
                } else {
                    leg.vp8.rewrite(payload, o.switched)
                };
            }
            if let Some(osn) = o.rtx_osn {
                // RFC 4588: the original sequence number precedes the original payload.
                buf.copy_within(start..n, start + 2);
                buf[start..start + 2].copy_from_slice(&osn.to_be_bytes());
            }
            ctx.protect_rtp(buf, n + osn_len).is_ok()
        }
        _ => false,
    };
    if !ok {
        // The reserved bytes must not leave as garbage.
        tx.cancel_last();
        counters.inc(Counter::DropRtpMalformed);
        return false;
    }
    t.tx_packets += 1;
    t.tx_bytes += total as u64;
    true
}

/// Protect an RTCP packet for `t` and queue it to its selected tuple.
fn send_rtcp(t: &mut Transport, plain: &[u8], tx: &mut TxBatch) -> bool {
    let (Some(dest), Some(ctx)) = (t.dest, t.tx.as_mut()) else {
        return false;
    };
    let total = plain.len() + ctx.profile().rtcp_overhead();
    let Some(buf) = tx.reserve(dest, total) else {
        return false;
    };
    buf[..plain.len()].copy_from_slice(plain);
    if ctx.protect_rtcp(buf, plain.len()).is_err() {
        tx.cancel_last();
        return false;
    }
    t.tx_packets += 1;
    t.tx_bytes += total as u64;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_events_are_bounded_per_interval_and_rotate_over_everyone() {
        let mut core = Core::new(CoreConfig::single(), Mesh::new(1));
        let mut tx = TxBatch::new(1 << 20, 1024);
        let mut out = VecOutbox::default();
        let t0 = Instant::now();
        let n = 1000u32;
        for i in 0..n {
            let ufrag = format!("uf{i:04}");
            let cmd = Command::AddTransport {
                transport: i,
                ufrag: ufrag.as_bytes(),
                pwd: b"0123456789abcdef0123456789",
                consent_timeout_ms: 0,
            };
            core.handle_command(t0, i, &cmd, &mut tx, &mut out);
        }
        out.events.clear();
        let mut seen = std::collections::HashSet::new();
        for k in 1..=2u32 {
            core.handle_timeout(t0 + REPORT_INTERVAL * k, &mut tx, &mut out);
            let ids: Vec<u32> = out
                .events
                .drain(..)
                .filter_map(|e| match Event::decode(&e) {
                    Ok((_, Event::TransportStats { transport, .. })) => Some(transport),
                    _ => None,
                })
                .collect();
            assert_eq!(ids.len(), MAX_STATS_EVENTS_PER_REPORT, "interval {k}");
            seen.extend(ids);
        }
        assert_eq!(
            seen.len(),
            n as usize,
            "every transport reported within two intervals"
        );
    }
    mod audio_level {
        use super::*;
        use crate::fuzz::{
            audio_spec, rtp_packet, Fixture, AUDIO_PT, AUDIO_SSRC, AUDIO_TRACK, FUZZ_KEY,
            FUZZ_SALT, LEG_AUDIO_SSRC, MID_EXT, PROFILES, PUB_ADDR, SUB_TRANSPORT,
        };

        const AL_EXT: u8 = 5;

        struct Pub {
            f: Fixture,
            srtp: SrtpContext,
            seq: u16,
            out: VecOutbox,
        }

        /// The fuzz fixture (publisher + subscriber with SRTP) with its audio track
        /// re-added with the audio-level extension negotiated.
        fn publisher(level_ext: u8) -> Pub {
            let mut f = Fixture::new(PROFILES[0]);
            let now = f.now;
            let mut out = VecOutbox::default();
            let mut spec = audio_spec();
            spec.rrid_ext = level_ext;
            let mut ext_map = [(0u8, 0u8); 16];
            ext_map[0] = (MID_EXT, MID_EXT);
            let leg = LegSpec {
                leg: 101,
                track: AUDIO_TRACK,
                transport: SUB_TRANSPORT,
                ssrc: LEG_AUDIO_SSRC,
                pt: AUDIO_PT,
                n_ext_map: 1,
                ext_map,
                ..LegSpec::default()
            };
            for (i, c) in [
                Command::RemoveTrack { track: AUDIO_TRACK },
                Command::AddTrack(spec),
                Command::AddLeg(leg),
            ]
            .iter()
            .enumerate()
            {
                f.core
                    .handle_command(now, 90 + i as u32, c, &mut f.tx, &mut out);
            }
            assert!(
                out.events.is_empty(),
                "re-adding the audio track is accepted"
            );
            let p = PROFILES[0];
            let srtp = SrtpContext::new(
                p,
                &FUZZ_KEY[..p.master_key_len()],
                &FUZZ_SALT[..p.master_salt_len()],
            )
            .unwrap();
            Pub {
                f,
                srtp,
                seq: 1,
                out,
            }
        }

        impl Pub {
            /// 20 ms of Opus carrying `ext` as the audio-level extension (None: no extension).
            fn packet(&mut self, ext: Option<&[u8]>) {
                self.f.now += Duration::from_millis(20);
                let mut exts: Vec<(u8, &[u8])> = vec![(MID_EXT, b"1")];
                if let Some(v) = ext {
                    exts.push((AL_EXT, v));
                }
                let seq = self.seq;
                self.seq = self.seq.wrapping_add(1);
                let plain = rtp_packet(
                    AUDIO_PT,
                    seq,
                    u32::from(seq) * 960,
                    AUDIO_SSRC,
                    &exts,
                    &[1; 40],
                );
                let mut buf = vec![0u8; plain.len() + 64];
                buf[..plain.len()].copy_from_slice(&plain);
                let n = self.srtp.protect_rtp(&mut buf, plain.len()).unwrap();
                let now = self.f.now;
                self.f.core.handle_datagram(
                    now,
                    PUB_ADDR,
                    &mut buf[..n],
                    &mut self.f.tx,
                    &mut self.out,
                );
                self.timers();
            }

            fn idle(&mut self, ms: u64) {
                for _ in 0..ms / 10 {
                    self.f.now += Duration::from_millis(10);
                    self.timers();
                }
            }

            fn timers(&mut self) {
                let now = self.f.now;
                if self.f.core.poll_timeout().is_some_and(|t| t <= now) {
                    self.f
                        .core
                        .handle_timeout(now, &mut self.f.tx, &mut self.out);
                }
                self.f.tx.clear();
            }

            /// Every AudioLevels report since the last call, in order.
            fn reports(&mut self) -> Vec<Vec<(u32, u8)>> {
                self.out
                    .events
                    .drain(..)
                    .filter_map(|e| match Event::decode(&e) {
                        Ok((_, Event::AudioLevels(l))) => Some(l.iter().collect()),
                        _ => None,
                    })
                    .collect()
            }
        }

        #[test]
        fn a_talking_track_is_reported_every_interval_with_a_smoothed_level() {
            let mut p = publisher(AL_EXT);
            p.reports();
            // 1 s of loud speech (level 10 dB below full scale, V flag set)
            for _ in 0..50 {
                p.packet(Some(&[0x80 | 10]));
            }
            let r = p.reports();
            assert!((4..=6).contains(&r.len()), "one report per 200 ms: {r:?}");
            for rep in &r {
                assert_eq!(rep.len(), 1, "one event, one entry per track: {rep:?}");
                assert_eq!(rep[0].0, AUDIO_TRACK);
            }
            // fast attack: from silence (127) to ~10 within the first interval
            assert!(r[0][0].1 < 40, "attack: {r:?}");
            assert_eq!(r.last().unwrap()[0].1, 10, "converged: {r:?}");
            // a 40 ms burst of silence barely moves it (slow release)
            p.packet(Some(&[127]));
            p.packet(Some(&[127]));
            for _ in 0..8 {
                p.packet(Some(&[10]));
            }
            let r = p.reports();
            assert!(r.iter().all(|rep| rep[0].1 < 40), "release is slow: {r:?}");
            // the publisher stops sending: one 127, then nothing
            p.idle(1000);
            let r = p.reports();
            assert_eq!(r, vec![vec![(AUDIO_TRACK, 127)]], "quiet once, then silent");
            // silent packets (DTX) after a silent report: nothing to report
            for _ in 0..20 {
                p.packet(Some(&[127]));
            }
            assert!(p.reports().is_empty());
        }

        #[test]
        fn malformed_or_missing_extension_is_counted_and_ignored() {
            let mut p = publisher(AL_EXT);
            p.reports();
            let before = p.f.core.counters().get(Counter::AudioLevelMalformed);
            for _ in 0..30 {
                p.packet(Some(&[1, 2, 3])); // three bytes: not RFC 6464
            }
            for _ in 0..30 {
                p.packet(None);
            }
            assert_eq!(
                p.f.core.counters().get(Counter::AudioLevelMalformed) - before,
                30
            );
            assert!(p.reports().is_empty(), "no level from malformed input");
            // media still flows to the subscriber's audio leg
            assert!(
                p.f.core.counters().get(Counter::ForwardedPackets) >= 60,
                "forwarded {}",
                p.f.core.counters().get(Counter::ForwardedPackets)
            );
        }

        #[test]
        fn no_extension_negotiated_means_no_reports() {
            let mut p = publisher(0);
            p.reports();
            for _ in 0..30 {
                p.packet(Some(&[0x80 | 3]));
            }
            assert!(p.reports().is_empty());
        }
    }
}
