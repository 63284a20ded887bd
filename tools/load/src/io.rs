//! The I/O thread: owns every endpoint socket after its handshakes, waits with epoll, reads with
//! `recvmmsg` batches, decrypts in place, checks order/gaps/duplicates, records the SFU-added
//! latency of every packet into an HDR histogram, paces the publishers, and answers like a
//! browser (RR, NACK, PLI, transport-cc feedback, consent checks).
//!
//! Steady state allocates nothing: buffers, histogram, timer heap and per-endpoint state are
//! created when an endpoint is added.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ils_rtp::header::RtpHeader;
use ils_rtp::rtcp::{self as rtcp, RecvStats, RtcpPacket};
use ils_rtp::twcc::TwccRecorder;

use crate::media::{self, FrameSizer, Probe, RtpOut, Vp8Packet};
use crate::sdp;
use crate::setup::{Ready, Role};

/// Datagrams read per `recvmmsg` call. Default 32.
pub const RECV_BATCH: usize = 32;
/// Receive buffer per batch slot. Default 2048 B (the engine never sends more than 1500).
pub const RECV_SLOT: usize = 2048;
/// Events per `epoll_wait`. Default 1024.
pub const EPOLL_EVENTS: usize = 1024;
/// Duplicate/reorder window per received stream, in packets. Default 1024 (128 B of bits);
/// older packets are counted as `too_old`.
pub const SEQ_WINDOW: u64 = 1024;
/// Missing sequence numbers remembered per stream for NACK. Default 64 (one NACK packet's worth).
pub const MAX_NACK_PENDING: usize = 64;
/// How long a missing packet stays NACK-able before it counts as lost. Default 1 s.
pub const NACK_GIVE_UP: Duration = Duration::from_secs(1);
/// Receiver report interval. Default 1 s (browsers: ~1 s).
pub const RR_INTERVAL: Duration = Duration::from_secs(1);
/// Consent freshness interval (RFC 7675). Default 2 s.
pub const CONSENT_INTERVAL: Duration = Duration::from_secs(2);
/// A viewer without a keyframe this long after it was added sends a PLI (then every
/// [`PLI_INTERVAL`]). Default 500 ms.
pub const FIRST_PLI_AFTER: Duration = Duration::from_millis(500);
/// PLI repetition while a keyframe is needed. Default 1 s.
pub const PLI_INTERVAL: Duration = Duration::from_secs(1);
/// Sender report interval of publishers. Default 1 s.
pub const SR_INTERVAL: Duration = Duration::from_secs(1);
/// Largest latency recorded, ns (larger values are clamped and counted). Default 60 s.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// A publisher more than this behind its schedule skips ahead instead of bursting. Default 200 ms.
pub const MAX_CATCH_UP: Duration = Duration::from_millis(200);
/// Publisher pacing rate as a multiple of the media bitrate. Default 2.5, Chromium's pacing
/// factor: a frame's packets leave spread over time instead of as one line-rate burst, as a
/// browser sends them, so the SFU-added latency is not the publisher's own burst.
pub const PACING_FACTOR: f64 = 2.5;
/// Longest a publisher's pacer may sleep between sends. Default 1 ms (the pacer's tick).
pub const PACE_TICK: Duration = Duration::from_millis(1);
/// Most video packets queued in one publisher's pacer; a frame that would overflow it is
/// sent at once (counted as `pacer_overflows`). Default 4096 (≈ 20 keyframes of the top
/// layer); worst case 4096 × 16 B per publisher, allocated at setup.
pub const PACER_QUEUE: usize = 4096;

/// Video packets each publisher keeps per simulcast layer to answer NACKs (a browser's RTX
/// history is ~1 s). Default 512 (≈ 1.4 s of the top layer); worst case 512 × [`RTX_SLOT`] B per
/// layer, allocated at setup (2.1 MiB per 3-layer publisher).
pub const RTX_HISTORY: usize = 512;
/// Bytes per kept packet (plain RTP, before SRTP); larger packets are not kept. Default 1400.
pub const RTX_SLOT: usize = 1400;
/// Sequence numbers answered per NACK packet; the rest are ignored (bounds a NACK flood's
/// retransmissions). Default 64.
pub const MAX_RTX_PER_NACK: usize = 64;

/// Sent video packets of one layer, by `seq % RTX_HISTORY`, for retransmission on NACK.
struct RtxHistory {
    /// Sequence number held by each slot (`u32::MAX`: empty).
    seqs: Box<[u32]>,
    lens: Box<[u16]>,
    bytes: Box<[u8]>,
}

impl RtxHistory {
    fn new() -> Self {
        RtxHistory {
            seqs: vec![u32::MAX; RTX_HISTORY].into_boxed_slice(),
            lens: vec![0; RTX_HISTORY].into_boxed_slice(),
            bytes: vec![0; RTX_HISTORY * RTX_SLOT].into_boxed_slice(),
        }
    }

    fn keep(&mut self, seq: u16, pkt: &[u8]) {
        let i = usize::from(seq) % RTX_HISTORY;
        if pkt.len() > RTX_SLOT {
            self.seqs[i] = u32::MAX;
            return;
        }
        self.seqs[i] = u32::from(seq);
        self.lens[i] = pkt.len() as u16;
        self.bytes[i * RTX_SLOT..i * RTX_SLOT + pkt.len()].copy_from_slice(pkt);
    }

    fn get(&self, seq: u16) -> Option<&[u8]> {
        let i = usize::from(seq) % RTX_HISTORY;
        (self.seqs[i] == u32::from(seq))
            .then(|| &self.bytes[i * RTX_SLOT..i * RTX_SLOT + usize::from(self.lens[i])])
    }
}

/// I/O thread settings.
#[derive(Debug, Clone)]
pub struct IoConfig {
    /// Transport-cc feedback interval of viewers (None: never send).
    pub twcc_interval: Option<Duration>,
    /// Keyframe interval of publishers.
    pub keyframe_interval: Duration,
    /// Core to pin the thread to.
    pub core: Option<usize>,
    /// Expected endpoints (preallocation).
    pub expected_endpoints: usize,
    /// Fraction of publishers' first video sends dropped on purpose (network loss on the
    /// publisher's uplink), 0..=0.5; the packets stay in the NACK history. Default 0.
    pub publisher_loss: f64,
}

/// Messages from the runner.
pub enum Ctrl {
    /// Take over a connected endpoint.
    Add(Box<Ready>),
    /// Publishers stop sending (drain phase).
    StopPublishers,
    /// Return the report.
    Stop,
}

/// Counters the runner samples while the thread runs (progress bar, steady-state window).
#[derive(Debug, Default)]
pub struct Live {
    /// Media packets received by viewers.
    pub rx_packets: AtomicU64,
    /// Bytes (SRTP) received by viewers.
    pub rx_bytes: AtomicU64,
    /// Media packets sent by publishers.
    pub tx_packets: AtomicU64,
    /// Bytes (SRTP) sent by publishers.
    pub tx_bytes: AtomicU64,
    /// Endpoints owned by the thread.
    pub endpoints: AtomicU64,
    /// Viewers that received at least one media packet.
    pub viewers_with_media: AtomicU64,
}

/// Totals at the end of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IoTotals {
    /// Viewers owned at the end.
    pub viewers: u64,
    /// Publishers owned at the end.
    pub publishers: u64,
    /// Viewers that received media.
    pub viewers_with_media: u64,
    /// Media packets received by viewers (including retransmissions).
    pub rx_packets: u64,
    /// SRTP bytes received by viewers.
    pub rx_bytes: u64,
    /// Audio packets received.
    pub rx_audio: u64,
    /// Video packets received, per simulcast layer (from the probe).
    pub rx_video_by_layer: [u64; 3],
    /// Media packets sent by publishers.
    pub tx_packets: u64,
    /// SRTP bytes sent by publishers.
    pub tx_bytes: u64,
    /// Sequence numbers expected by viewers (first..highest per stream).
    pub expected: u64,
    /// Distinct sequence numbers received.
    pub received_unique: u64,
    /// expected − received_unique.
    pub lost: u64,
    /// Packets received twice.
    pub duplicates: u64,
    /// Packets that arrived after a later one.
    pub reordered: u64,
    /// Packets older than the duplicate window.
    pub too_old: u64,
    /// Packets recovered by retransmission after a NACK.
    pub recovered: u64,
    /// SRTP/SRTCP authentication or parse failures.
    pub decrypt_failures: u64,
    /// Packets without a readable probe.
    pub no_probe: u64,
    /// Latency samples outside the histogram range.
    pub latency_clamped: u64,
    /// RTCP compounds received by viewers and publishers.
    pub rtcp_in: u64,
    /// Receiver reports sent.
    pub rr_sent: u64,
    /// Sender reports sent.
    pub sr_sent: u64,
    /// NACK packets sent by viewers.
    pub nacks_sent: u64,
    /// Report blocks in the viewers' RRs (one per stream that has received, every RR).
    pub rr_blocks_sent: u64,
    /// PLIs sent by viewers.
    pub plis_sent: u64,
    /// Transport-cc feedback packets sent by viewers.
    pub twcc_sent: u64,
    /// Consent checks sent.
    pub consent_sent: u64,
    /// Consent checks answered.
    pub consent_ok: u64,
    /// Connectivity checks from a full-ICE server answered (Janus; 0 with ils, which is ICE-lite).
    pub checks_answered: u64,
    /// Video frames sent unpaced because the publisher's pacer queue was full.
    pub pacer_overflows: u64,
    /// Keyframe requests (PLI/FIR) publishers received.
    pub keyframe_requests_in: u64,
    /// NACKs publishers received (answered from [`RTX_HISTORY`], like a browser).
    pub nacks_in: u64,
    /// Packets publishers retransmitted for NACKs (same SSRC and sequence number).
    pub retransmits_sent: u64,
    /// NACKed packets a publisher no longer had (older than its history).
    pub retransmit_misses: u64,
    /// Video packets publishers did not send on purpose (`publisher_loss`).
    pub publisher_dropped: u64,
    /// Transport-cc feedback packets publishers received.
    pub twcc_in: u64,
    /// Keyframes sent by publishers (all layers).
    pub keyframes_sent: u64,
    /// Send errors (EAGAIN etc.).
    pub send_errors: u64,
    /// Datagrams from an address other than the endpoint's server.
    pub foreign: u64,
}

/// What the thread returns.
pub struct IoReport {
    /// Totals.
    pub totals: IoTotals,
    /// SFU-added latency, ns, one sample per first-time media packet.
    pub latency: Histogram<u64>,
    /// CPU time of the I/O thread (user+system), if readable.
    pub thread_cpu: Duration,
}

fn mono_to_instant(base_ns: u64, base: Instant, ns: u64) -> Instant {
    base + Duration::from_nanos(ns.saturating_sub(base_ns))
}

/// One received stream's sequence bookkeeping.
struct RxStream {
    ssrc: u32,
    rtx_ssrc: Option<u32>,
    video: bool,
    stats: RecvStats,
    first: Option<u64>,
    highest: u64,
    bits: [u64; (SEQ_WINDOW / 64) as usize],
    unique: u64,
    duplicates: u64,
    reordered: u64,
    too_old: u64,
    recovered: u64,
    nack: [u16; MAX_NACK_PENDING],
    nack_len: usize,
    nack_since: u64,
    /// Video: no keyframe since the stream started or a loss was given up on (PLI due).
    need_keyframe: bool,
}

enum SeqResult {
    New,
    Duplicate,
    TooOld,
}

impl RxStream {
    fn new(ssrc: u32, rtx_ssrc: Option<u32>, video: bool) -> Self {
        Self {
            ssrc,
            rtx_ssrc,
            video,
            stats: RecvStats::new(ssrc, if video { 90_000 } else { 48_000 }),
            first: None,
            highest: 0,
            bits: [0; (SEQ_WINDOW / 64) as usize],
            unique: 0,
            duplicates: 0,
            reordered: 0,
            too_old: 0,
            recovered: 0,
            nack: [0; MAX_NACK_PENDING],
            nack_len: 0,
            nack_since: 0,
            need_keyframe: video,
        }
    }

    fn bit(&mut self, ext: u64) -> (usize, u64) {
        let slot = (ext % SEQ_WINDOW) as usize;
        (slot / 64, 1u64 << (slot % 64))
    }

    /// Record `seq`; new gaps are appended to the NACK list. Returns what it was.
    fn on_seq(&mut self, seq: u16, now_ns: u64) -> SeqResult {
        let Some(_) = self.first else {
            self.first = Some(u64::from(seq) + (1 << 32));
            self.highest = u64::from(seq) + (1 << 32);
            let (w, m) = self.bit(self.highest);
            self.bits[w] |= m;
            self.unique = 1;
            return SeqResult::New;
        };
        let diff = seq.wrapping_sub(self.highest as u16) as i16;
        let ext = (self.highest as i64 + i64::from(diff)) as u64;
        if diff > 0 {
            let d = diff as u64;
            if d >= SEQ_WINDOW {
                self.bits = [0; (SEQ_WINDOW / 64) as usize];
            } else {
                for s in self.highest + 1..ext {
                    let (w, m) = self.bit(s);
                    self.bits[w] &= !m;
                    if self.nack_len < MAX_NACK_PENDING {
                        if self.nack_len == 0 {
                            self.nack_since = now_ns;
                        }
                        self.nack[self.nack_len] = s as u16;
                        self.nack_len += 1;
                    }
                }
            }
            let (w, m) = self.bit(ext);
            self.bits[w] &= !m;
            self.bits[w] |= m;
            self.highest = ext;
            self.unique += 1;
            return SeqResult::New;
        }
        if self.highest - ext >= SEQ_WINDOW {
            self.too_old += 1;
            return SeqResult::TooOld;
        }
        let (w, m) = self.bit(ext);
        if self.bits[w] & m != 0 {
            self.duplicates += 1;
            return SeqResult::Duplicate;
        }
        self.bits[w] |= m;
        self.unique += 1;
        if let Some(i) = self.nack[..self.nack_len].iter().position(|&s| s == seq) {
            self.nack.copy_within(i + 1..self.nack_len, i);
            self.nack_len -= 1;
            self.recovered += 1;
        } else {
            self.reordered += 1;
        }
        SeqResult::New
    }

    fn expected(&self) -> u64 {
        self.first.map(|f| self.highest + 1 - f).unwrap_or(0)
    }
}

struct Viewer {
    sender_ssrc: u32,
    audio: Option<RxStream>,
    video: Option<RxStream>,
    /// Further receive slots (a `/ws` subscriber's m-lines after its first audio and first
    /// video), one stream per answered SSRC; allocated at setup, at most [`sdp::MAX_MEDIA`].
    /// Loss, order and latency are measured on them, and they get RR blocks, NACKs and PLIs
    /// like the first two (a browser's receivers do the same per m-line).
    extra: Vec<RxStream>,
    rtx_pt: Option<u8>,
    twcc: Option<(u8, TwccRecorder)>,
    next_rr: u64,
    next_twcc: u64,
    next_pli: u64,
    got_media: bool,
    added_ns: u64,
}

struct TxStream {
    ssrc: u32,
    seq: u16,
    ts0: u32,
    packets: u32,
    octets: u32,
    rid: &'static [u8],
    sizer: Option<FrameSizer>,
    picture_id: u16,
    tl0: u8,
    key_pending: bool,
    probe_seq: u32,
}

/// One queued video packet of a publisher's pacer.
#[derive(Clone, Copy)]
struct Paced {
    layer: u8,
    marker: bool,
    ts: u32,
    vp8: Vp8Packet,
    len: u16,
}

struct Publisher {
    /// Video packets waiting for the pacer (capacity [`PACER_QUEUE`], allocated at setup).
    pacer: std::collections::VecDeque<Paced>,
    /// Pacer byte budget (may go negative by one packet) and when it was last refilled.
    pace_budget: f64,
    pace_at: u64,
    /// Pacing rate, bytes per ns.
    pace_rate: f64,
    audio: TxStream,
    layers: Vec<TxStream>,
    /// Per layer: sent video packets for NACK answers.
    rtx: Vec<RtxHistory>,
    audio_pt: u8,
    video_pt: u8,
    audio_mid: [u8; 16],
    audio_mid_len: usize,
    video_mid: [u8; 16],
    video_mid_len: usize,
    ext_mid: Option<u8>,
    ext_rid: Option<u8>,
    ext_abs: Option<u8>,
    ext_twcc_audio: Option<u8>,
    ext_twcc_video: Option<u8>,
    tw_seq: u16,
    next_audio: u64,
    next_frame: u64,
    frame_index: u64,
    next_sr: u64,
    gop_frames: u64,
    stopped: bool,
}

enum Kind {
    Viewer(Box<Viewer>),
    Publisher(Box<Publisher>),
}

struct Endpoint {
    sock: std::net::UdpSocket,
    server: SocketAddr,
    tx: Box<ils_srtp::SrtpContext>,
    rx: Box<ils_srtp::SrtpContext>,
    username: String,
    key: ils_stun::HmacKey,
    tie_breaker: u64,
    local: SocketAddr,
    consent_txid: [u8; 12],
    next_consent: u64,
    /// Answers a full-ICE server's own consent checks (Janus); never used with ils (ICE-lite).
    responder: crate::setup::Responder,
    controlling: bool,
    kind: Kind,
}

struct Io {
    epfd: libc::c_int,
    cfg: IoConfig,
    eps: Vec<Endpoint>,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    base: Instant,
    acc: Acc,
}

/// Everything a packet handler may touch besides its endpoint.
struct Acc {
    live: Arc<Live>,
    totals: IoTotals,
    latency: Histogram<u64>,
    base_ns: u64,
    base: Instant,
    out: [u8; 1600],
    twcc_interval: Option<Duration>,
    /// `IoConfig::publisher_loss` as a threshold of [`Acc::rng`]'s 32-bit output.
    loss_threshold: u32,
    /// xorshift64 state for the loss decision (no per-packet allocation or syscall).
    rng: u64,
}

fn ntp_now() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() + 2_208_988_800;
    let frac = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

fn mid_bytes(mid: &str) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    let n = mid.len().min(16);
    b[..n].copy_from_slice(&mid.as_bytes()[..n]);
    (b, n.max(1))
}

impl Io {
    fn add(&mut self, r: Ready, now_ns: u64) {
        let idx = self.eps.len();
        let sender_ssrc: u32 = rand::random();
        let kind = match r.role {
            Role::Viewer { .. } => {
                let a = r.answer.media_of("audio");
                let v = r.answer.media_of("video");
                let audio = a
                    .and_then(|m| m.media_ssrc())
                    .map(|(s, rtx)| RxStream::new(s, rtx, false));
                let video = v
                    .and_then(|m| m.media_ssrc())
                    .map(|(s, rtx)| RxStream::new(s, rtx, true));
                let extra: Vec<RxStream> = r
                    .answer
                    .media
                    .iter()
                    .filter(|m| m.port != 0)
                    .filter(|m| {
                        !a.is_some_and(|x| std::ptr::eq(x, *m))
                            && !v.is_some_and(|x| std::ptr::eq(x, *m))
                    })
                    .filter_map(|m| {
                        m.media_ssrc()
                            .map(|(s, rtx)| RxStream::new(s, rtx, m.kind == "video"))
                    })
                    .take(sdp::MAX_MEDIA)
                    .collect();
                let rtx_pt = v.and_then(|m| m.pt_of("VP8").and_then(|p| m.rtx_for(p)));
                let twcc_id = a
                    .and_then(|m| m.ext_id(sdp::URI_TWCC))
                    .or_else(|| v.and_then(|m| m.ext_id(sdp::URI_TWCC)));
                let twcc = match (twcc_id, self.acc.twcc_interval) {
                    (Some(id), Some(_)) => Some((id, TwccRecorder::new(self.base))),
                    _ => None,
                };
                Kind::Viewer(Box::new(Viewer {
                    sender_ssrc,
                    audio,
                    video,
                    extra,
                    rtx_pt,
                    twcc,
                    next_rr: now_ns + RR_INTERVAL.as_nanos() as u64,
                    next_twcc: now_ns
                        + self
                            .acc
                            .twcc_interval
                            .map(|d| d.as_nanos() as u64)
                            .unwrap_or(u64::MAX / 4),
                    next_pli: now_ns + FIRST_PLI_AFTER.as_nanos() as u64,
                    got_media: false,
                    added_ns: now_ns,
                }))
            }
            Role::Publisher { video } => {
                let a = r.answer.media_of("audio");
                let v = r.answer.media_of("video").filter(|_| video);
                let (audio_mid, audio_mid_len) =
                    mid_bytes(a.map(|m| m.mid.as_str()).unwrap_or("0"));
                let (video_mid, video_mid_len) =
                    mid_bytes(v.map(|m| m.mid.as_str()).unwrap_or("1"));
                let gop_frames = (self.cfg.keyframe_interval.as_secs_f64()
                    * media::VIDEO_FPS as f64)
                    .max(2.0) as u64;
                let mk = |rid: &'static [u8], sizer: Option<FrameSizer>| TxStream {
                    ssrc: rand::random(),
                    seq: rand::random(),
                    ts0: rand::random(),
                    packets: 0,
                    octets: 0,
                    rid,
                    sizer,
                    picture_id: rand::random::<u16>() & 0x7FFF,
                    tl0: 0,
                    key_pending: true,
                    probe_seq: 0,
                };
                let layers = if v.is_some() {
                    (0..3)
                        .map(|i| {
                            mk(
                                sdp::RIDS[i].as_bytes(),
                                Some(FrameSizer::new(
                                    media::LAYER_BITRATES[i],
                                    gop_frames,
                                    rand::random(),
                                )),
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let mut audio = mk(b"", None);
                audio.ssrc = r.audio_ssrc;
                let media_bps: u64 = if layers.is_empty() {
                    0
                } else {
                    media::LAYER_BITRATES.iter().sum()
                };
                Kind::Publisher(Box::new(Publisher {
                    pacer: std::collections::VecDeque::with_capacity(if layers.is_empty() {
                        0
                    } else {
                        PACER_QUEUE
                    }),
                    pace_budget: 0.0,
                    pace_at: now_ns,
                    pace_rate: PACING_FACTOR * media_bps as f64 / 8.0 / 1e9,
                    audio,
                    rtx: layers.iter().map(|_| RtxHistory::new()).collect(),
                    layers,
                    audio_pt: a.and_then(|m| m.pt_of("opus")).unwrap_or(sdp::PT_OPUS),
                    video_pt: v.and_then(|m| m.pt_of("VP8")).unwrap_or(sdp::PT_VP8),
                    audio_mid,
                    audio_mid_len,
                    video_mid,
                    video_mid_len,
                    ext_mid: a.and_then(|m| m.ext_id(sdp::URI_MID)),
                    ext_rid: v.and_then(|m| m.ext_id(sdp::URI_RID)),
                    ext_abs: a.and_then(|m| m.ext_id(sdp::URI_ABS_SEND_TIME)),
                    ext_twcc_audio: a.and_then(|m| m.ext_id(sdp::URI_TWCC)),
                    ext_twcc_video: v.and_then(|m| m.ext_id(sdp::URI_TWCC)),
                    tw_seq: 0,
                    next_audio: now_ns,
                    next_frame: now_ns,
                    frame_index: 0,
                    next_sr: now_ns + SR_INTERVAL.as_nanos() as u64,
                    gop_frames,
                    stopped: false,
                }))
            }
        };
        let ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: idx as u64,
        };
        let mut ev = ev;
        // SAFETY: valid epoll fd and socket fd; ev is a valid epoll_event.
        unsafe {
            libc::epoll_ctl(
                self.epfd,
                libc::EPOLL_CTL_ADD,
                r.socket.as_raw_fd(),
                &mut ev,
            )
        };
        self.eps.push(Endpoint {
            sock: r.socket,
            server: r.server,
            tx: r.tx,
            rx: r.rx,
            key: ils_stun::integrity_key(r.server_pwd.as_bytes()),
            username: r.username,
            tie_breaker: r.tie_breaker,
            local: r.local,
            consent_txid: [0; 12],
            next_consent: now_ns + CONSENT_INTERVAL.as_nanos() as u64,
            responder: crate::setup::Responder::new(&r.local_ufrag, &r.local_pwd),
            controlling: r.ice_controlling,
            kind,
        });
        self.acc.live.endpoints.fetch_add(1, Ordering::Relaxed);
        self.timers.push(Reverse((now_ns, idx)));
    }
}

fn send(sock: &std::net::UdpSocket, server: SocketAddr, b: &[u8], t: &mut IoTotals) -> bool {
    match sock.send_to(b, server) {
        Ok(_) => true,
        Err(_) => {
            t.send_errors += 1;
            false
        }
    }
}

/// Protect an RTCP packet of `len` bytes in `acc.out` and send it.
fn send_rtcp(ep: &mut Endpoint, acc: &mut Acc, len: usize) -> bool {
    match ep.tx.protect_rtcp(&mut acc.out, len) {
        Ok(n) => send(&ep.sock, ep.server, &acc.out[..n], &mut acc.totals),
        Err(_) => {
            acc.totals.send_errors += 1;
            false
        }
    }
}

/// NACKs for the video stream `only` (its list just grew), or with `None` for every video
/// stream that still has missing packets (the retry at each RR).
fn send_nack(ep: &mut Endpoint, acc: &mut Acc, only: Option<u32>) {
    let Kind::Viewer(v) = &mut ep.kind else {
        return;
    };
    let sender = v.sender_ssrc;
    // Copied out first (on the stack: no allocation per loss): the send below needs the
    // endpoint whose streams these are.
    let mut todo = [(0u32, [0u16; MAX_NACK_PENDING], 0usize); sdp::MAX_MEDIA + 2];
    let mut t = 0;
    for vs in viewer_streams(v).filter(|s| s.video && s.nack_len > 0) {
        if only.is_none_or(|o| o == vs.ssrc) && t < todo.len() {
            todo[t].0 = vs.ssrc;
            todo[t].1[..vs.nack_len].copy_from_slice(&vs.nack[..vs.nack_len]);
            todo[t].2 = vs.nack_len;
            t += 1;
        }
    }
    for (media, lost, n) in &todo[..t] {
        if let Ok(len) = rtcp::write_nack(&mut acc.out, sender, *media, &lost[..*n]) {
            if send_rtcp(ep, acc, len) {
                acc.totals.nacks_sent += 1;
            }
        }
    }
}

/// Every receive stream of a viewer: first audio, first video, then the further slots.
fn viewer_streams(v: &mut Viewer) -> impl Iterator<Item = &mut RxStream> {
    v.audio
        .as_mut()
        .into_iter()
        .chain(v.video.as_mut())
        .chain(v.extra.iter_mut())
}

fn on_viewer_rtp(ep: &mut Endpoint, acc: &mut Acc, pkt: &[u8], wire_len: usize, now_ns: u64) {
    let Kind::Viewer(v) = &mut ep.kind else {
        return;
    };
    let Ok(hdr) = RtpHeader::parse(pkt) else {
        acc.totals.decrypt_failures += 1;
        return;
    };
    let now = mono_to_instant(acc.base_ns, acc.base, now_ns);
    acc.totals.rx_packets += 1;
    acc.totals.rx_bytes += wire_len as u64;
    if let Some((id, rec)) = v.twcc.as_mut() {
        if let Some(&[a, b]) = ils_rtp::ext::find_ext(pkt, &hdr, *id) {
            rec.on_packet(now, u16::from_be_bytes([a, b]));
        }
    }
    if !v.got_media {
        v.got_media = true;
        acc.live.viewers_with_media.fetch_add(1, Ordering::Relaxed);
    }
    let payload = hdr.payload(pkt);
    let added = v.added_ns;
    let rtx_pt = v.rtx_pt;
    // Which stream, and is it a retransmission?
    let (stream, seq, body, rtx) = match (&mut v.audio, &mut v.video) {
        (Some(a), _) if a.ssrc == hdr.ssrc => (a, hdr.seq, payload, false),
        (_, Some(vs)) if vs.ssrc == hdr.ssrc => (vs, hdr.seq, payload, false),
        (_, Some(vs)) if vs.rtx_ssrc == Some(hdr.ssrc) && Some(hdr.pt) == v.rtx_pt => {
            let Some(&[a, b]) = payload.get(..2).and_then(|s| <&[u8; 2]>::try_from(s).ok()) else {
                acc.totals.no_probe += 1;
                return;
            };
            (
                vs,
                u16::from_be_bytes([a, b]),
                payload.get(2..).unwrap_or(&[]),
                true,
            )
        }
        _ => match v.extra.iter_mut().find(|s| {
            s.ssrc == hdr.ssrc || (s.rtx_ssrc == Some(hdr.ssrc) && Some(hdr.pt) == rtx_pt)
        }) {
            Some(s) if s.ssrc == hdr.ssrc => (s, hdr.seq, payload, false),
            Some(s) => {
                let Some(&[a, b]) = payload.get(..2).and_then(|s| <&[u8; 2]>::try_from(s).ok())
                else {
                    acc.totals.no_probe += 1;
                    return;
                };
                (
                    s,
                    u16::from_be_bytes([a, b]),
                    payload.get(2..).unwrap_or(&[]),
                    true,
                )
            }
            None => {
                acc.totals.foreign += 1;
                return;
            }
        },
    };
    let before = stream.nack_len;
    let r = stream.on_seq(seq, now_ns);
    if !rtx {
        stream.stats.on_packet(now, hdr.seq, hdr.ts);
    }
    let video = stream.video;
    let grew = stream.nack_len > before;
    if !matches!(r, SeqResult::New) {
        return;
    }
    let ssrc = stream.ssrc;
    let probe = if video {
        media::vp8_probe(body).map(|(p, k)| {
            if k {
                stream.need_keyframe = false;
            }
            p
        })
    } else {
        Probe::read(body)
    };
    let Ok(p) = probe else {
        acc.totals.no_probe += 1;
        return;
    };
    if video {
        acc.totals.rx_video_by_layer[usize::from(p.layer.min(2))] += 1;
    } else {
        acc.totals.rx_audio += 1;
    }
    if !rtx && p.send_ns >= added {
        let lat = now_ns.saturating_sub(p.send_ns);
        if lat > MAX_LATENCY_NS || acc.latency.record(lat.max(1)).is_err() {
            acc.totals.latency_clamped += 1;
            let _ = acc.latency.record(MAX_LATENCY_NS);
        }
    }
    if grew && video {
        send_nack(ep, acc, Some(ssrc));
    }
}

fn on_rtcp(ep: &mut Endpoint, acc: &mut Acc, pkt: &[u8], now_ns: u64) {
    acc.totals.rtcp_in += 1;
    let now = mono_to_instant(acc.base_ns, acc.base, now_ns);
    for p in rtcp::iter(pkt) {
        let Ok(p) = p else { break };
        match (&mut ep.kind, p) {
            (Kind::Viewer(v), RtcpPacket::SenderReport { ssrc, ntp, .. }) => {
                for s in [v.audio.as_mut(), v.video.as_mut()]
                    .into_iter()
                    .flatten()
                    .chain(v.extra.iter_mut())
                {
                    if s.ssrc == ssrc {
                        s.stats.on_sender_report(now, ntp);
                    }
                }
            }
            (Kind::Publisher(pb), RtcpPacket::Pli { media_ssrc, .. }) => {
                acc.totals.keyframe_requests_in += 1;
                for l in pb.layers.iter_mut().filter(|l| l.ssrc == media_ssrc) {
                    l.key_pending = true;
                }
            }
            (Kind::Publisher(pb), RtcpPacket::Fir { entries, .. }) => {
                acc.totals.keyframe_requests_in += 1;
                for (ssrc, _) in entries {
                    for l in pb.layers.iter_mut().filter(|l| l.ssrc == ssrc) {
                        l.key_pending = true;
                    }
                }
            }
            (
                Kind::Publisher(pb),
                RtcpPacket::Nack {
                    media_ssrc, items, ..
                },
            ) => {
                acc.totals.nacks_in += 1;
                let Some(li) = pb.layers.iter().position(|l| l.ssrc == media_ssrc) else {
                    continue;
                };
                for seq in items.take(MAX_RTX_PER_NACK) {
                    let Some(pkt) = pb.rtx.get(li).and_then(|h| h.get(seq)) else {
                        acc.totals.retransmit_misses += 1;
                        continue;
                    };
                    acc.out[..pkt.len()].copy_from_slice(pkt);
                    match ep.tx.protect_rtp(&mut acc.out, pkt.len()) {
                        Ok(n) => {
                            if send(&ep.sock, ep.server, &acc.out[..n], &mut acc.totals) {
                                acc.totals.retransmits_sent += 1;
                                acc.totals.tx_packets += 1;
                                acc.totals.tx_bytes += n as u64;
                            }
                        }
                        Err(_) => acc.totals.send_errors += 1,
                    }
                }
            }
            (Kind::Publisher(_), RtcpPacket::TransportCc { .. }) => acc.totals.twcc_in += 1,
            _ => {}
        }
    }
}

fn on_datagram(ep: &mut Endpoint, acc: &mut Acc, data: &mut [u8], now_ns: u64) {
    let Some(&first) = data.first() else { return };
    match first {
        0..=3 => {
            let mut reply = [0u8; ils_stun::MAX_BINDING_SUCCESS_LEN];
            if let Some(n) = ep.responder.answer(data, ep.server, &mut reply) {
                if send(&ep.sock, ep.server, &reply[..n], &mut acc.totals) {
                    acc.totals.checks_answered += 1;
                }
                return;
            }
            let Ok(m) = ils_stun::StunMessage::parse(data) else {
                return;
            };
            if m.class() == ils_stun::Class::SuccessResponse
                && *m.transaction_id() == ep.consent_txid
                && m.verify_integrity_with_key(&ep.key).is_ok()
                && m.verify_fingerprint().is_ok()
                && m.xor_mapped_address() == Some(ep.local)
            {
                acc.totals.consent_ok += 1;
            }
        }
        128..=191 => {
            let wire = data.len();
            if ils_rtp::header::is_rtcp(data) {
                match ep.rx.unprotect_rtcp(data) {
                    Ok(n) => on_rtcp(ep, acc, &data[..n], now_ns),
                    Err(_) => acc.totals.decrypt_failures += 1,
                }
            } else {
                match ep.rx.unprotect_rtp(data) {
                    Ok(n) => on_viewer_rtp(ep, acc, &data[..n], wire, now_ns),
                    Err(_) => acc.totals.decrypt_failures += 1,
                }
            }
        }
        _ => {} // DTLS retransmissions etc.: the handshake is over
    }
}

#[allow(clippy::too_many_arguments)]
fn send_media(
    ep: &mut Endpoint,
    acc: &mut Acc,
    video: bool,
    layer: usize,
    marker: bool,
    ts: u32,
    vp8: Option<Vp8Packet>,
    payload_len: usize,
) {
    let Kind::Publisher(p) = &mut ep.kind else {
        return;
    };
    p.tw_seq = p.tw_seq.wrapping_add(1);
    let tw = p.tw_seq;
    let send_ns = media::mono_ns();
    let (pt, mid, twcc_id) = if video {
        (
            p.video_pt,
            &p.video_mid[..p.video_mid_len],
            p.ext_twcc_video,
        )
    } else {
        (
            p.audio_pt,
            &p.audio_mid[..p.audio_mid_len],
            p.ext_twcc_audio,
        )
    };
    let s = if video {
        match p.layers.get_mut(layer) {
            Some(s) => s,
            None => return,
        }
    } else {
        &mut p.audio
    };
    s.seq = s.seq.wrapping_add(1);
    s.probe_seq = s.probe_seq.wrapping_add(1);
    let h = RtpOut {
        pt,
        marker,
        seq: s.seq,
        ts,
        ssrc: s.ssrc,
        mid: p.ext_mid.map(|id| (id, mid)),
        rid: if video {
            p.ext_rid.map(|id| (id, s.rid))
        } else {
            None
        },
        abs_send_time: p.ext_abs.map(|id| (id, media::abs_send_time(send_ns))),
        twcc: twcc_id.map(|id| (id, tw)),
        audio_level: None,
    };
    let probe = Probe {
        layer: layer as u8,
        kind: u8::from(video),
        keyframe: vp8.is_some_and(|v| v.keyframe),
        seq: s.probe_seq,
        send_ns,
    };
    let out = &mut acc.out;
    let Ok(hl) = media::write_rtp_header(out, &h) else {
        return;
    };
    let written = match vp8 {
        Some(v) => media::write_vp8_payload(&mut out[hl..], &v, &probe, payload_len),
        None => media::write_opus_payload(&mut out[hl..], &probe),
    };
    let Ok(pl) = written else { return };
    if video {
        if let Some(h) = p.rtx.get_mut(layer) {
            h.keep(s.seq, &out[..hl + pl]);
        }
        if acc.loss_threshold > 0 {
            acc.rng ^= acc.rng << 13;
            acc.rng ^= acc.rng >> 7;
            acc.rng ^= acc.rng << 17;
            if ((acc.rng >> 32) as u32) < acc.loss_threshold {
                s.packets = s.packets.wrapping_add(1);
                s.octets = s.octets.wrapping_add(pl as u32);
                acc.totals.publisher_dropped += 1;
                return;
            }
        }
    }
    s.packets = s.packets.wrapping_add(1);
    s.octets = s.octets.wrapping_add(pl as u32);
    match ep.tx.protect_rtp(out, hl + pl) {
        Ok(n) => {
            if send(&ep.sock, ep.server, &out[..n], &mut acc.totals) {
                acc.totals.tx_packets += 1;
                acc.totals.tx_bytes += n as u64;
            }
        }
        Err(_) => acc.totals.send_errors += 1,
    }
}

const FRAME_NS: u64 = 1_000_000_000 / media::VIDEO_FPS;
const AUDIO_NS: u64 = media::AUDIO_PTIME_MS * 1_000_000;

fn run_publisher(ep: &mut Endpoint, acc: &mut Acc, now_ns: u64) -> u64 {
    let Kind::Publisher(p) = &mut ep.kind else {
        return u64::MAX;
    };
    if p.stopped {
        return u64::MAX;
    }
    // audio
    if now_ns.saturating_sub(p.next_audio) > MAX_CATCH_UP.as_nanos() as u64 {
        p.next_audio = now_ns;
    }
    loop {
        let ts = match &mut ep.kind {
            Kind::Publisher(p) if p.next_audio <= now_ns => {
                p.next_audio += AUDIO_NS;
                p.audio.ts0.wrapping_add(p.audio.packets.wrapping_mul(960))
            }
            _ => break,
        };
        send_media(ep, acc, false, 0, false, ts, None, media::OPUS_PAYLOAD_LEN);
    }
    // video: every layer's frame at the same instant, as a simulcast encoder does
    if let Kind::Publisher(p) = &mut ep.kind {
        if now_ns.saturating_sub(p.next_frame) > MAX_CATCH_UP.as_nanos() as u64 {
            p.next_frame = now_ns;
        }
    }
    loop {
        let (fi, gop) = match &mut ep.kind {
            Kind::Publisher(p) if !p.layers.is_empty() && p.next_frame <= now_ns => {
                p.next_frame += FRAME_NS;
                p.frame_index += 1;
                (p.frame_index - 1, p.gop_frames)
            }
            _ => break,
        };
        for layer in 0..3 {
            let (key, n, each, last, ts, pid, tl0) = {
                let Kind::Publisher(p) = &mut ep.kind else {
                    return u64::MAX;
                };
                let Some(s) = p.layers.get_mut(layer) else {
                    break;
                };
                let key = s.key_pending || fi % gop == 0;
                s.key_pending = false;
                let size = s.sizer.as_mut().map(|z| z.next(key)).unwrap_or(500);
                let (n, each, last) = media::packetize(size, key);
                let ts = s.ts0.wrapping_add((fi as u32).wrapping_mul(3000));
                let (pid, tl0) = (s.picture_id, s.tl0);
                s.picture_id = (s.picture_id + 1) & 0x7FFF;
                s.tl0 = s.tl0.wrapping_add(1);
                (key, n, each, last, ts, pid, tl0)
            };
            if key {
                acc.totals.keyframes_sent += 1;
            }
            let paced = match &ep.kind {
                Kind::Publisher(p) => p.pacer.len() + n <= PACER_QUEUE,
                Kind::Viewer(_) => return u64::MAX,
            };
            for i in 0..n {
                let v = Vp8Packet {
                    first: i == 0,
                    keyframe: key,
                    picture_id: pid,
                    tl0picidx: tl0,
                };
                let len = if i + 1 == n { last } else { each };
                let q = Paced {
                    layer: layer as u8,
                    marker: i + 1 == n,
                    ts,
                    vp8: v,
                    len: len as u16,
                };
                if paced {
                    if let Kind::Publisher(p) = &mut ep.kind {
                        p.pacer.push_back(q);
                    }
                } else {
                    acc.totals.pacer_overflows += 1;
                    send_paced(ep, acc, q);
                }
            }
        }
    }
    // the pacer: queued video at PACING_FACTOR × the media rate
    let mut pace_next = u64::MAX;
    if let Kind::Publisher(p) = &mut ep.kind {
        let dt = now_ns.saturating_sub(p.pace_at) as f64;
        p.pace_at = now_ns;
        // An idle pacer does not bank budget beyond one tick's worth.
        let cap = p.pace_rate * PACE_TICK.as_nanos() as f64;
        p.pace_budget = (p.pace_budget + dt * p.pace_rate).min(cap.max(1200.0));
    }
    loop {
        let q = match &mut ep.kind {
            Kind::Publisher(p) if p.pace_budget > 0.0 => match p.pacer.pop_front() {
                Some(q) => {
                    p.pace_budget -= f64::from(q.len) + 40.0;
                    q
                }
                None => break,
            },
            _ => break,
        };
        send_paced(ep, acc, q);
    }
    if let Kind::Publisher(p) = &ep.kind {
        if !p.pacer.is_empty() && p.pace_rate > 0.0 {
            let wait = ((-p.pace_budget).max(0.0) / p.pace_rate) as u64;
            pace_next = now_ns + wait.clamp(1, PACE_TICK.as_nanos() as u64);
        }
    }
    // sender reports
    let Kind::Publisher(p) = &mut ep.kind else {
        return u64::MAX;
    };
    if p.next_sr <= now_ns {
        p.next_sr = now_ns + SR_INTERVAL.as_nanos() as u64;
        let ntp = ntp_now();
        let mut streams: [(u32, u32, u32, u32); 4] = [(0, 0, 0, 0); 4];
        let mut k = 0;
        let a = &p.audio;
        streams[k] = (
            a.ssrc,
            a.ts0.wrapping_add(a.packets.wrapping_mul(960)),
            a.packets,
            a.octets,
        );
        k += 1;
        for l in &p.layers {
            if k < 4 {
                let ts = l
                    .ts0
                    .wrapping_add((p.frame_index as u32).wrapping_mul(3000));
                streams[k] = (l.ssrc, ts, l.packets, l.octets);
                k += 1;
            }
        }
        for &(ssrc, ts, pk, oc) in &streams[..k] {
            if let Ok(len) = rtcp::write_sr(&mut acc.out, ssrc, ntp, ts, pk, oc, &[]) {
                if send_rtcp(ep, acc, len) {
                    acc.totals.sr_sent += 1;
                }
            }
        }
    }
    let Kind::Publisher(p) = &ep.kind else {
        return u64::MAX;
    };
    let mut next = p.next_audio.min(p.next_sr).min(pace_next);
    if !p.layers.is_empty() {
        next = next.min(p.next_frame);
    }
    next
}

fn send_paced(ep: &mut Endpoint, acc: &mut Acc, q: Paced) {
    send_media(
        ep,
        acc,
        true,
        usize::from(q.layer),
        q.marker,
        q.ts,
        Some(q.vp8),
        usize::from(q.len),
    );
}

fn run_viewer(ep: &mut Endpoint, acc: &mut Acc, now_ns: u64) -> u64 {
    let now = mono_to_instant(acc.base_ns, acc.base, now_ns);
    let Kind::Viewer(v) = &mut ep.kind else {
        return u64::MAX;
    };
    // receiver reports, one block per stream that has received (31 per RR packet), and the
    // NACK retry / give-up
    if v.next_rr <= now_ns {
        v.next_rr = now_ns + RR_INTERVAL.as_nanos() as u64;
        let mut blocks = [rtcp::ReportBlock {
            ssrc: 0,
            fraction_lost: 0,
            cumulative_lost: 0,
            highest_seq: 0,
            jitter: 0,
            lsr: 0,
            dlsr: 0,
        }; sdp::MAX_MEDIA + 2];
        let mut k = 0;
        let mut retry_nack = false;
        for s in viewer_streams(v) {
            if s.first.is_some() && k < blocks.len() {
                blocks[k] = s.stats.report_block(now);
                k += 1;
            }
            if s.nack_len > 0 {
                if now_ns.saturating_sub(s.nack_since) > NACK_GIVE_UP.as_nanos() as u64 {
                    s.nack_len = 0;
                    if s.video {
                        s.need_keyframe = true;
                    }
                } else {
                    retry_nack |= s.video;
                }
            }
        }
        let sender = v.sender_ssrc;
        // At least one RR (without blocks before anything arrived, as a browser sends).
        let mut at = 0;
        loop {
            let end = (at + rtcp::MAX_REPORT_BLOCKS).min(k);
            if let Ok(len) = rtcp::write_rr(&mut acc.out, sender, &blocks[at..end]) {
                if send_rtcp(ep, acc, len) {
                    acc.totals.rr_sent += 1;
                    acc.totals.rr_blocks_sent += (end - at) as u64;
                }
            }
            at = end;
            if at >= k {
                break;
            }
        }
        if retry_nack {
            send_nack(ep, acc, None);
        }
    }
    // transport-cc feedback
    let Kind::Viewer(v) = &mut ep.kind else {
        return u64::MAX;
    };
    if v.next_twcc <= now_ns {
        let iv = acc
            .twcc_interval
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(u64::MAX / 4);
        v.next_twcc = now_ns + iv;
        let media = v
            .audio
            .as_ref()
            .or(v.video.as_ref())
            .map(|s| s.ssrc)
            .unwrap_or(0);
        let sender = v.sender_ssrc;
        for _ in 0..4 {
            let Kind::Viewer(v) = &mut ep.kind else {
                break;
            };
            let Some((_, rec)) = v.twcc.as_mut() else {
                break;
            };
            let Some(len) = rec.build_feedback(&mut acc.out[..1200], sender, media) else {
                break;
            };
            if send_rtcp(ep, acc, len) {
                acc.totals.twcc_sent += 1;
            }
        }
    }
    // PLI while a keyframe is needed: the first video stream from the start (as before any
    // packet a browser's decoder waits for one), the further slots once they have received
    // (an empty slot has no decoder to feed).
    let Kind::Viewer(v) = &mut ep.kind else {
        return u64::MAX;
    };
    let primary = v.video.as_ref().map(|s| s.ssrc);
    let wants =
        |s: &RxStream| s.video && s.need_keyframe && (Some(s.ssrc) == primary || s.first.is_some());
    let any = viewer_streams(v).any(|s| wants(s));
    if any && v.next_pli <= now_ns {
        v.next_pli = now_ns + PLI_INTERVAL.as_nanos() as u64;
        let sender = v.sender_ssrc;
        let mut ssrcs = [0u32; sdp::MAX_MEDIA + 2];
        let mut n = 0;
        for s in viewer_streams(v).filter(|s| wants(s)) {
            if n < ssrcs.len() {
                ssrcs[n] = s.ssrc;
                n += 1;
            }
        }
        for &media in &ssrcs[..n] {
            if let Ok(len) = rtcp::write_pli(&mut acc.out, sender, media) {
                if send_rtcp(ep, acc, len) {
                    acc.totals.plis_sent += 1;
                }
            }
        }
    }
    let Kind::Viewer(v) = &ep.kind else {
        return u64::MAX;
    };
    let mut next = v.next_rr.min(v.next_twcc);
    if any {
        next = next.min(v.next_pli);
    }
    next
}

fn run_consent(ep: &mut Endpoint, acc: &mut Acc, now_ns: u64) -> u64 {
    if ep.next_consent <= now_ns {
        ep.next_consent = now_ns + CONSENT_INTERVAL.as_nanos() as u64;
        ep.consent_txid = rand::random();
        if let Ok(n) = crate::setup::write_check(
            &mut acc.out,
            &ep.consent_txid,
            ep.username.as_bytes(),
            &ep.key,
            ep.tie_breaker,
            ep.controlling,
        ) {
            if send(&ep.sock, ep.server, &acc.out[..n], &mut acc.totals) {
                acc.totals.consent_sent += 1;
            }
        }
    }
    ep.next_consent
}

/// Preallocated `recvmmsg` state.
struct RecvBatch {
    bufs: Vec<[u8; RECV_SLOT]>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    fn new() -> Box<Self> {
        let mut b = Box::new(Self {
            bufs: vec![[0u8; RECV_SLOT]; RECV_BATCH],
            iovs: Vec::with_capacity(RECV_BATCH),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            hdrs: Vec::with_capacity(RECV_BATCH),
        });
        for i in 0..RECV_BATCH {
            let iov = libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr().cast(),
                iov_len: RECV_SLOT,
            };
            b.iovs.push(iov);
        }
        for i in 0..RECV_BATCH {
            // SAFETY: mmsghdr is plain old data; all-zero is valid before we fill it.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut b.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            b.hdrs.push(h);
        }
        b
    }

    /// Read up to [`RECV_BATCH`] datagrams from `fd`; returns how many.
    fn recv(&mut self, fd: libc::c_int) -> usize {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_len = 0;
        }
        // SAFETY: hdrs/iovs/addrs/bufs are owned by self, outlive the call, and the iovecs
        // point into bufs with their real lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                RECV_BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            0
        } else {
            n as usize
        }
    }

    fn from(&self, i: usize) -> Option<SocketAddr> {
        let a = self.addrs.get(i)?;
        if i32::from(a.ss_family) != libc::AF_INET {
            return None;
        }
        // SAFETY: family is AF_INET, so the storage holds a sockaddr_in.
        let sin: &libc::sockaddr_in = unsafe { &*(a as *const _ as *const libc::sockaddr_in) };
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Io {
    fn run_timers(&mut self, now_ns: u64) {
        while let Some(&Reverse((due, idx))) = self.timers.peek() {
            if due > now_ns {
                break;
            }
            self.timers.pop();
            let Some(ep) = self.eps.get_mut(idx) else {
                continue;
            };
            let a = run_consent(ep, &mut self.acc, now_ns);
            let b = match ep.kind {
                Kind::Viewer(_) => run_viewer(ep, &mut self.acc, now_ns),
                Kind::Publisher(_) => run_publisher(ep, &mut self.acc, now_ns),
            };
            self.timers.push(Reverse((a.min(b), idx)));
        }
    }

    fn stop_publishers(&mut self) {
        for ep in &mut self.eps {
            if let Kind::Publisher(p) = &mut ep.kind {
                p.stopped = true;
            }
        }
    }

    fn publish_live(&self) {
        let l = &self.acc.live;
        let t = &self.acc.totals;
        l.rx_packets.store(t.rx_packets, Ordering::Relaxed);
        l.rx_bytes.store(t.rx_bytes, Ordering::Relaxed);
        l.tx_packets.store(t.tx_packets, Ordering::Relaxed);
        l.tx_bytes.store(t.tx_bytes, Ordering::Relaxed);
    }

    fn finish(mut self) -> IoReport {
        let mut t = std::mem::take(&mut self.acc.totals);
        for ep in &self.eps {
            match &ep.kind {
                Kind::Publisher(_) => t.publishers += 1,
                Kind::Viewer(v) => {
                    t.viewers += 1;
                    t.viewers_with_media += u64::from(v.got_media);
                    for s in [v.audio.as_ref(), v.video.as_ref()]
                        .into_iter()
                        .flatten()
                        .chain(v.extra.iter())
                    {
                        t.expected += s.expected();
                        t.received_unique += s.unique;
                        t.duplicates += s.duplicates;
                        t.reordered += s.reordered;
                        t.too_old += s.too_old;
                        t.recovered += s.recovered;
                    }
                }
            }
        }
        t.lost = t.expected.saturating_sub(t.received_unique);
        // SAFETY: closing the epoll fd we created; endpoints' sockets close on drop.
        unsafe { libc::close(self.epfd) };
        IoReport {
            totals: t,
            latency: self.acc.latency,
            thread_cpu: thread_cpu(),
        }
    }
}

/// Run the I/O thread until [`Ctrl::Stop`] (or the sender is dropped).
pub fn run(cfg: IoConfig, ctrl: Receiver<Ctrl>, live: Arc<Live>) -> std::io::Result<IoReport> {
    if let Some(c) = cfg.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
    // SAFETY: plain syscall; the fd is checked below.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let base = Instant::now();
    let base_ns = media::mono_ns();
    let latency = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut io = Io {
        epfd,
        eps: Vec::with_capacity(cfg.expected_endpoints),
        timers: BinaryHeap::with_capacity(cfg.expected_endpoints + 16),
        base,
        acc: Acc {
            live,
            totals: IoTotals::default(),
            latency,
            base_ns,
            base,
            out: [0; 1600],
            twcc_interval: cfg.twcc_interval,
            loss_threshold: (cfg.publisher_loss.clamp(0.0, 0.5) * f64::from(u32::MAX)) as u32,
            rng: 0x9E37_79B9_7F4A_7C15,
        },
        cfg,
    };
    let mut batch = RecvBatch::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS];
    loop {
        loop {
            match ctrl.try_recv() {
                Ok(Ctrl::Add(r)) => io.add(*r, media::mono_ns()),
                Ok(Ctrl::StopPublishers) => io.stop_publishers(),
                Ok(Ctrl::Stop) | Err(TryRecvError::Disconnected) => return Ok(io.finish()),
                Err(TryRecvError::Empty) => break,
            }
        }
        let now_ns = media::mono_ns();
        io.run_timers(now_ns);
        let next = io.timers.peek().map(|r| r.0 .0).unwrap_or(u64::MAX);
        // ceil to ms, at most 5 ms so control messages are seen promptly
        let wait_ms = next
            .saturating_sub(media::mono_ns())
            .div_ceil(1_000_000)
            .min(5) as i32;
        // SAFETY: events is a valid buffer of EPOLL_EVENTS entries.
        let n =
            unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), EPOLL_EVENTS as i32, wait_ms) };
        if n <= 0 {
            continue;
        }
        for e in events.iter().take(n as usize) {
            let idx = e.u64 as usize;
            let Some(ep) = io.eps.get_mut(idx) else {
                continue;
            };
            let fd = ep.sock.as_raw_fd();
            loop {
                let got = batch.recv(fd);
                let now_ns = media::mono_ns();
                for i in 0..got {
                    let len = (batch.hdrs[i].msg_len as usize).min(RECV_SLOT);
                    if batch.from(i) != Some(ep.server) {
                        io.acc.totals.foreign += 1;
                        continue;
                    }
                    let data = &mut batch.bufs[i][..len];
                    on_datagram(ep, &mut io.acc, data, now_ns);
                }
                if got < RECV_BATCH {
                    break;
                }
            }
        }
        io.publish_live();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NACKed packet comes back byte for byte while it is in the history; an older one that
    /// its slot was reused for, a never-sent one and an oversized one are misses.
    #[test]
    fn rtx_history_answers_recent_packets_only() {
        let mut h = RtxHistory::new();
        let pkt = |seq: u16| -> Vec<u8> { (0..100u16).map(|i| (i ^ seq) as u8).collect() };
        for seq in 65_000u16..=65_535 {
            h.keep(seq, &pkt(seq));
        }
        for seq in 0u16..300 {
            h.keep(seq, &pkt(seq)); // wraps: 0..300 reuse the slots of 65 024..65 323
        }
        assert_eq!(h.get(299), Some(pkt(299).as_slice()));
        assert_eq!(h.get(0), Some(pkt(0).as_slice()));
        assert_eq!(
            h.get(65_535),
            Some(pkt(65_535).as_slice()),
            "not overwritten yet"
        );
        assert_eq!(h.get(65_100), None, "its slot now holds seq 76");
        assert_eq!(h.get(700), None, "never sent");
        h.keep(1000, &[0u8; RTX_SLOT + 1]);
        assert_eq!(h.get(1000), None, "too large to keep");
    }

    #[test]
    fn sequence_tracking_counts_gaps_duplicates_reorder_and_wrap() {
        let mut s = RxStream::new(1, None, true);
        assert!(matches!(s.on_seq(65534, 0), SeqResult::New));
        s.on_seq(65535, 0);
        s.on_seq(0, 0); // wrap
        s.on_seq(3, 10); // 1, 2 missing
        assert_eq!(s.nack_len, 2);
        assert_eq!(&s.nack[..2], &[1, 2]);
        assert!(matches!(s.on_seq(3, 0), SeqResult::Duplicate));
        assert!(matches!(s.on_seq(1, 0), SeqResult::New)); // recovered
        assert_eq!(s.recovered, 1);
        assert_eq!(s.nack_len, 1);
        assert_eq!(s.expected(), 6);
        assert_eq!(s.unique, 5);
        assert_eq!(s.duplicates, 1);
        // far behind: too old
        for q in 4..1100u16 {
            s.on_seq(q, 0);
        }
        assert!(matches!(s.on_seq(5, 0), SeqResult::TooOld));
        // a huge jump clears the window, bounded NACK list
        s.on_seq(40_000, 0);
        assert!(s.nack_len <= MAX_NACK_PENDING);
    }

    #[test]
    fn reorder_without_nack_is_counted() {
        let mut s = RxStream::new(1, None, false);
        s.on_seq(10, 0);
        s.on_seq(12, 0);
        s.nack_len = 0; // pretend the NACK list was given up
        s.on_seq(11, 0);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.unique, 3);
        assert_eq!(s.expected(), 3);
    }

    #[test]
    fn ntp_is_after_1900_epoch_offset() {
        assert!(ntp_now() >> 32 > 2_208_988_800);
    }
}
