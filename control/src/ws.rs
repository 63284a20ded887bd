//! `GET /ws`: the interactive live streaming (ILS, issue 5) transport. One WebSocket per
//! participant carries the protocol of `docs/protocol.md` (types in `ils_session::proto`); the
//! sans-IO `ils_session::Session` decides who may do what and who hears about it; this module
//! does the I/O around it:
//!
//! * **Sockets**: a socket-loop task per socket and a reader task that feeds it client frames
//!   ([`READ_QUEUE`]; it runs only when the socket is readable, so fan-out wake-ups never poll
//!   the read side; read buffer [`WS_READ_BUFFER_BYTES`]). `hello` within [`HELLO_TIMEOUT`],
//!   frames capped at [`WS_MAX_MESSAGE_BYTES`], pings every [`PING_INTERVAL`], closed after
//!   [`IDLE_TIMEOUT`] of silence, sends bounded by [`SEND_TIMEOUT`]. Frames already waiting for
//!   a socket are written together with one flush ([`WRITE_BATCH`]). Every refusal is a typed
//!   `error`; every close carries a reason.
//! * **Fan-out**: every `Out { to, msg }` of the session is serialized **once**; messages to one
//!   participant go to that socket's bounded queue ([`DIRECT_QUEUE`]), everything else to the
//!   session's bounded broadcast channel ([`BROADCAST_CAPACITY`]) whose receivers keep what
//!   `To::matches` their (id, role, place). A socket that falls behind skips ahead and is told
//!   `error{code:"lagged"}`; after [`MAX_LAGS`] it is closed with that reason.
//! * **Media**: `publish` / `subscribe` create room sessions through the WHIP/WHEP path
//!   ([`crate::http::create_media_session`], marked ILS); the media plan (who is seen where)
//!   becomes slot pins ([`crate::room::Rooms::set_slot`]) and a `slots` message per subscriber
//!   (serialized once per distinct mapping). Green-room publishers are never forwarded to WHEP
//!   viewers or the audience ([`crate::room::Rooms::set_public`]).
//! * **Time**: the session clock is milliseconds since the session was created; `tick` runs
//!   every [`TICK_INTERVAL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ils_session::{
    ClientMsg, Effect, ErrorCode, Grants, MediaKind, MediaLoss, Out, Outcome, PcKind, Pid, Place,
    Role, ServerMsg, Session, SessionConfig, SlotDesc, SlotMapping, SlotSize, To, RENEGOTIATE_MAX,
    RENEGOTIATE_WINDOW_MS,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};

use crate::auth;
use crate::http::{create_media_session, App};
use crate::room::{RoomError, SessionKind};

/// Time allowed between the upgrade and the `hello`. Default 5 s. Bounds how long an idle,
/// unauthenticated socket holds a task and a file descriptor.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A socket that sends nothing (not even a pong) for this long is closed (`idle`). Default 60 s:
/// three missed pings.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The server pings every socket this often. Default 20 s.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// One WebSocket write may take at most this long; a client that does not read is closed.
/// Default 10 s.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest WebSocket message/frame accepted by the socket layer, in bytes. Default twice
/// `ils_session::MAX_MESSAGE_BYTES` (128 KiB): frames between the two limits get a typed
/// `too_large` error; larger ones close the socket (1009, message too big). Bounds per-socket
/// read memory.
pub const WS_MAX_MESSAGE_BYTES: usize = 2 * ils_session::MAX_MESSAGE_BYTES;
/// Read buffer of one socket's WebSocket codec, in bytes. Default 4 KiB (tungstenite's default
/// is 128 KiB). tungstenite zero-fills this much of its buffer on every read attempt, so its size
/// is CPU per read and resident memory per socket (4 KiB × 200 000 sockets = 800 MiB worst
/// case, against 25 GiB at 128 KiB). Client frames are small; a larger one (up to
/// [`WS_MAX_MESSAGE_BYTES`]) is read in several reads into a buffer that grows for it.
pub const WS_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Client frames one socket's reader task may queue ahead of the socket loop. Default 8. Past
/// it the reader stops reading (TCP back-pressure on the client). Memory: 8 frames ×
/// [`WS_MAX_MESSAGE_BYTES`] worst case per socket.
pub const READ_QUEUE: usize = 8;
/// Frames one socket writes in one batch (broadcast backlog + direct queue) before a single
/// flush. Default 64. Bounds how long one socket's task runs before yielding to others, and
/// the bytes buffered per flush (64 × ~200 B typical; 64 × 64 KiB worst case).
pub const WRITE_BATCH: usize = 64;
/// Events buffered per session broadcast channel. Default 1024. A socket more than this many
/// events behind skips ahead (`lagged`). Memory: 1024 shared frames per session (frames are
/// serialized once and shared by every receiver).
pub const BROADCAST_CAPACITY: usize = 1024;
/// Frames queued for one participant (replies, `slots`, `invited`, ...). Default 256. When full
/// the socket is closed (`too slow`); counted in `ils_ws_closed_total{reason="slow"}`.
pub const DIRECT_QUEUE: usize = 256;
/// `lagged` notices a socket gets before it is closed (it keeps missing events). Default 3.
pub const MAX_LAGS: u32 = 3;
/// Frames that do not parse (bad JSON, unknown type, too large) a socket may send before it is
/// closed; each one is answered with a typed error first. Default 50. Bounds the error replies
/// a broken or hostile client can make the server write.
pub const MAX_BAD_FRAMES: u32 = 50;
/// How often the session's `tick` runs (reaction windows, coalesced counts). Default 100 ms.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// ILS sessions per process. Default 1000 (each holds a broadcast channel and its state);
/// more are refused with `session_full` (HTTP 503).
pub const MAX_ILS_SESSIONS: usize = 1000;
/// WebSockets open per process. Default 200 000 (a little more than one 100 000-viewer session
/// with its reconnects); more are refused with `session_full` before `hello` is read.
pub const MAX_SOCKETS: i64 = 200_000;

/// Counters exported at `/metrics` (`ils_ws_*`).
pub struct WsCounters {
    /// Sockets open now.
    pub sockets_open: AtomicI64,
    /// Client messages received, by type (index in `ClientMsg::TYPE_NAMES`).
    pub msgs_in: [AtomicU64; ClientMsg::TYPE_NAMES.len()],
    /// Server frames written to sockets, by type (index in `ServerMsg::TYPE_NAMES`).
    pub msgs_out: [AtomicU64; ServerMsg::TYPE_NAMES.len()],
    /// Frames serialized (once per event, however many sockets receive it).
    pub serialized: AtomicU64,
    /// Refusals sent, by error code (index `ErrorCode::index`).
    pub refused: [AtomicU64; ErrorCode::ALL.len()],
    /// Times a socket fell behind the broadcast channel.
    pub lagged: AtomicU64,
    /// Sockets closed because their direct queue was full or a write timed out.
    pub closed_slow: AtomicU64,
    /// Sockets closed for silence.
    pub closed_idle: AtomicU64,
    /// Engine slot re-mappings (legs added/removed/re-layered) done for media plans.
    pub slot_cmds: AtomicU64,
    /// Speaking-order changes (engine audio levels) that re-planned a session's slots.
    pub audio_reranks: AtomicU64,
    /// `renegotiate` requests sent (a participant's connection was lost on the server).
    pub renegotiations: AtomicU64,
    /// Sockets that dropped and left their participant waiting to resume.
    pub detached: AtomicU64,
    /// Participants resumed by `hello{resume:true}`.
    pub resumed: AtomicU64,
    /// Detached participants removed when the resume grace ended.
    pub resume_expired: AtomicU64,
}

impl Default for WsCounters {
    fn default() -> Self {
        WsCounters {
            sockets_open: AtomicI64::new(0),
            msgs_in: std::array::from_fn(|_| AtomicU64::new(0)),
            msgs_out: std::array::from_fn(|_| AtomicU64::new(0)),
            serialized: AtomicU64::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            lagged: AtomicU64::new(0),
            closed_slow: AtomicU64::new(0),
            closed_idle: AtomicU64::new(0),
            slot_cmds: AtomicU64::new(0),
            audio_reranks: AtomicU64::new(0),
            renegotiations: AtomicU64::new(0),
            detached: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            resume_expired: AtomicU64::new(0),
        }
    }
}

fn type_index(names: &[&str], t: &str) -> Option<usize> {
    names.iter().position(|n| *n == t)
}

impl WsCounters {
    fn count_out(&self, t: &str) {
        if let Some(i) = type_index(&ServerMsg::TYPE_NAMES, t) {
            self.msgs_out[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_in(&self, t: &str) {
        if let Some(i) = type_index(&ClientMsg::TYPE_NAMES, t) {
            self.msgs_in[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_refused(&self, c: ErrorCode) {
        if let Some(x) = self.refused.get(c.index()) {
            x.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text for these counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP ils_ws_sockets_open WebSockets open on /ws.");
        let _ = writeln!(out, "# TYPE ils_ws_sockets_open gauge");
        let _ = writeln!(
            out,
            "ils_ws_sockets_open {}",
            self.sockets_open.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE ils_ws_messages_in_total counter");
        for (i, n) in ClientMsg::TYPE_NAMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "ils_ws_messages_in_total{{type=\"{n}\"}} {}",
                self.msgs_in[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE ils_ws_messages_out_total counter");
        for (i, n) in ServerMsg::TYPE_NAMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "ils_ws_messages_out_total{{type=\"{n}\"}} {}",
                self.msgs_out[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE ils_ws_refused_total counter");
        for c in ErrorCode::ALL {
            let _ = writeln!(
                out,
                "ils_ws_refused_total{{reason=\"{}\"}} {}",
                c.as_str(),
                self.refused[c.index()].load(Ordering::Relaxed)
            );
        }
        let pairs: [(&str, &AtomicU64); 10] = [
            ("ils_ws_frames_serialized_total", &self.serialized),
            ("ils_ws_lagged_total", &self.lagged),
            ("ils_ws_closed_slow_total", &self.closed_slow),
            ("ils_ws_closed_idle_total", &self.closed_idle),
            ("ils_ws_slot_commands_total", &self.slot_cmds),
            ("ils_ws_audio_reranks_total", &self.audio_reranks),
            ("ils_ws_renegotiations_total", &self.renegotiations),
            ("ils_ws_detached_total", &self.detached),
            ("ils_ws_resumed_total", &self.resumed),
            ("ils_ws_resume_expired_total", &self.resume_expired),
        ];
        for (n, v) in pairs {
            let _ = writeln!(out, "# TYPE {n} counter");
            let _ = writeln!(out, "{n} {}", v.load(Ordering::Relaxed));
        }
    }
}

/// One publishing participant a subscriber may be shown, in display order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// Participant.
    pub pid: Pid,
    /// Its publisher room session (`crate::room::Session::id`).
    pub session: String,
    /// It sends audio that is not muted by a producer.
    pub audio: bool,
    /// It sends video that is not muted by a producer.
    pub video: bool,
    /// Its video simulcast RIDs, low → high (empty: one layer).
    pub rids: Vec<String>,
}

/// What one subscriber's slots should carry, aligned with its slots: the engine feed per slot
/// and the `slots` message content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// Per slot: `Some((publisher session, layer))` or `None` for an empty slot.
    pub feeds: Vec<Option<(String, u8)>>,
    /// The `slots` message content, one entry per slot.
    pub mapping: Vec<SlotMapping>,
}

/// The simulcast layer for a requested slot size (thumbnail low, medium mid, full high).
pub fn size_layer(size: SlotSize) -> u8 {
    match size {
        SlotSize::Thumbnail => 0,
        SlotSize::Medium => 1,
        SlotSize::Full => 2,
    }
}

/// The size of a video slot nobody asked a size for: full for one video, medium up to four,
/// thumbnails beyond.
pub fn default_size(videos: usize) -> SlotSize {
    match videos {
        0 | 1 => SlotSize::Full,
        2..=4 => SlotSize::Medium,
        _ => SlotSize::Thumbnail,
    }
}

/// A speaker must be louder than the one ranked just above it, by [`AUDIO_LEVEL_MARGIN`],
/// continuously for this long before it moves up (and takes an audio slot from a quieter one).
/// Default 1 s: slots do not flap on a cough or between words; a new speaker is heard within
/// ~1.2 s (engine smoothing + report interval + this hold).
pub const AUDIO_SLOT_HOLD: Duration = Duration::from_secs(1);
/// How much louder (dB, RFC 6464 levels) a speaker must be than the one above it to challenge
/// it. Default 6 dB: equal voices do not trade places; silence (127) never displaces speech.
pub const AUDIO_LEVEL_MARGIN: u8 = 6;

/// One ranked audio source.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ranked {
    pid: Pid,
    /// Smoothed level from the engine: 0 loudest ..= 127 silence.
    level: u8,
    /// Since when (session ms) it has been louder than the source ranked just above it.
    challenge: Option<u64>,
}

/// The session's audio sources ranked for audio slots, loudest first, with hysteresis
/// ([`AUDIO_SLOT_HOLD`], [`AUDIO_LEVEL_MARGIN`]). Sans-IO: levels and `now` come from the
/// caller. Used only where a subscriber has fewer audio slots than there are audio sources
/// ([`plan_slots_ranked`]). Bounded by the session's publishers (one entry per source that
/// reported a level; [`AudioRank::retain`] drops those that stopped publishing).
#[derive(Debug, Default, Clone)]
pub struct AudioRank {
    order: Vec<Ranked>,
}

impl AudioRank {
    /// Record the latest smoothed level of `pid` (a new source is ranked last).
    pub fn set_level(&mut self, pid: Pid, level: u8) {
        match self.order.iter_mut().find(|r| r.pid == pid) {
            Some(r) => r.level = level.min(127),
            None => self.order.push(Ranked {
                pid,
                level: level.min(127),
                challenge: None,
            }),
        }
    }

    /// Rank `pid` last, as silent, if it is not ranked yet (a source that never reported a
    /// level must still be displaced through the hold, like any quiet one).
    pub fn ensure(&mut self, pid: Pid) {
        if !self.order.iter().any(|r| r.pid == pid) {
            self.set_level(pid, 127);
        }
    }

    /// Keep only the sources `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(Pid) -> bool) {
        self.order.retain(|r| keep(r.pid));
    }

    /// Re-rank at `now_ms`: a source that has been louder (by the margin) than some source
    /// ranked above it, continuously for [`AUDIO_SLOT_HOLD`], moves up to just above the
    /// highest-ranked source it is that much louder than (never above a source louder than
    /// itself). Returns whether the order changed.
    pub fn update(&mut self, now_ms: u64) -> bool {
        let hold = AUDIO_SLOT_HOLD.as_millis() as u64;
        let louder = |b: u8, a: u8| u16::from(b) + u16::from(AUDIO_LEVEL_MARGIN) <= u16::from(a);
        let mut changed = false;
        for i in 1..self.order.len() {
            let b = self.order[i].level;
            let Some(j) = (0..i).find(|&j| louder(b, self.order[j].level)) else {
                self.order[i].challenge = None;
                continue;
            };
            let since = *self.order[i].challenge.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) < hold {
                continue;
            }
            let k = (j..i)
                .rev()
                .find(|&x| self.order[x].level < b)
                .map_or(j, |x| x + 1);
            if k < i {
                self.order[i].challenge = None;
                self.order[k..=i].rotate_right(1);
                changed = true;
            }
        }
        changed
    }

    /// Sources, loudest (held) first.
    pub fn order(&self) -> Vec<Pid> {
        self.order.iter().map(|r| r.pid).collect()
    }
}

/// Map `feeds` (already filtered to what this subscriber may see, in display order) into the
/// subscriber's fixed `slots`: the i-th video slot shows the i-th feed with video, the i-th
/// audio slot the i-th feed with audio; extra slots stay empty, extra feeds are not shown.
/// Sans-IO and deterministic.
pub fn plan_slots(feeds: &[Feed], slots: &[SlotDesc], sizes: &HashMap<u32, SlotSize>) -> SlotPlan {
    plan_slots_ranked(feeds, slots, sizes, &[], &[])
}

/// The feed shown in each audio slot. With no more audio feeds than audio slots: in display
/// order (nothing depends on levels). With more: the `na` best by `rank` (loudest first, see
/// [`AudioRank`]; unranked feeds after ranked ones, in display order), each keeping the slot
/// it had in `prev` (the subscriber's previous audio mapping) so that only the displaced
/// speaker's slot changes.
fn pick_audio<'f>(
    audios: &[&'f Feed],
    na: usize,
    rank: &[Pid],
    prev: &[Option<Pid>],
) -> Vec<Option<&'f Feed>> {
    if audios.len() <= na {
        return (0..na).map(|i| audios.get(i).copied()).collect();
    }
    let mut ranked: Vec<&Feed> = audios.to_vec();
    // stable: equal keys keep display order
    ranked.sort_by_key(|f| rank.iter().position(|p| *p == f.pid).unwrap_or(usize::MAX));
    ranked.truncate(na);
    let mut out: Vec<Option<&Feed>> = vec![None; na];
    for (i, slot) in out.iter_mut().enumerate() {
        if let Some(Some(p)) = prev.get(i) {
            if let Some(k) = ranked.iter().position(|f| f.pid == *p) {
                *slot = Some(ranked.remove(k));
            }
        }
    }
    let mut rest = ranked.into_iter();
    for slot in out.iter_mut().filter(|s| s.is_none()) {
        *slot = rest.next();
    }
    out
}

/// [`plan_slots`] with audio slots following the loudest speakers: `rank` is the session's
/// [`AudioRank::order`], `prev` this subscriber's previous audio mapping (per audio slot).
pub fn plan_slots_ranked(
    feeds: &[Feed],
    slots: &[SlotDesc],
    sizes: &HashMap<u32, SlotSize>,
    rank: &[Pid],
    prev: &[Option<Pid>],
) -> SlotPlan {
    let videos: Vec<&Feed> = feeds.iter().filter(|f| f.video).collect();
    let all_audios: Vec<&Feed> = feeds.iter().filter(|f| f.audio).collect();
    let na = slots.iter().filter(|s| s.kind == MediaKind::Audio).count();
    let audios = pick_audio(&all_audios, na, rank, prev);
    let dflt = default_size(
        videos
            .len()
            .min(slots.iter().filter(|s| s.kind == MediaKind::Video).count()),
    );
    let (mut vi, mut ai) = (0usize, 0usize);
    let mut plan = SlotPlan {
        feeds: Vec::with_capacity(slots.len()),
        mapping: Vec::with_capacity(slots.len()),
    };
    for s in slots {
        let (feed, layer) = match s.kind {
            MediaKind::Video => {
                let f = videos.get(vi).copied();
                vi += 1;
                let want = size_layer(sizes.get(&s.slot).copied().unwrap_or(dflt));
                (f, want)
            }
            MediaKind::Audio => {
                let f = audios.get(ai).copied().flatten();
                ai += 1;
                (f, 0)
            }
        };
        plan.feeds.push(feed.map(|f| (f.session.clone(), layer)));
        plan.mapping.push(SlotMapping {
            slot: s.slot,
            participant: feed.map(|f| f.pid),
            kind: s.kind,
            layer: match (s.kind, feed) {
                (MediaKind::Video, Some(f)) if !f.rids.is_empty() => f
                    .rids
                    .get(usize::from(layer).min(f.rids.len() - 1))
                    .cloned(),
                _ => None,
            },
        });
    }
    plan
}

/// How long an ended session stays known (joins get `ended`) before its name can be reused by
/// an automatic session. Default 60 s.
pub const ENDED_KEEP: Duration = Duration::from_secs(60);
/// How long a session created by a `hello` (not by the admin API) survives with nobody in it.
/// Default 30 s.
pub const EMPTY_KEEP: Duration = Duration::from_secs(30);

/// A frame serialized once and shared by every socket that receives it.
#[derive(Debug)]
pub struct Frame {
    /// Recipients.
    pub to: To,
    /// The JSON text (reference-counted: each socket write shares these bytes).
    pub json: Utf8Bytes,
    /// The message type (metrics).
    pub kind: &'static str,
    /// `removed` / `ended`: the socket closes after writing it, with this reason.
    pub closes: Option<String>,
}

/// What a socket's direct queue carries.
#[derive(Debug)]
enum Direct {
    /// A frame for this participant only.
    Frame(Arc<Frame>),
    /// Close with this code and reason.
    Close(u16, String),
}

/// One connected participant's delivery handle.
struct Handle {
    tx: mpsc::Sender<Direct>,
    /// Current place as `Place::ALL` index, updated from `moved` / `participant` events.
    place: Arc<AtomicU8>,
    /// Which socket this is ([`SOCKET_EPOCH`]): a socket whose handle was taken over by a
    /// resume does not clean up the participant when it ends.
    epoch: u64,
}

/// Numbers the sockets of this process (see [`Handle::epoch`]).
static SOCKET_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A participant's PeerConnections (room session ids).
#[derive(Debug, Default)]
struct PMedia {
    identity: String,
    publisher: Option<String>,
    subscriber: Option<Sub>,
    /// `renegotiate` requests sent, per [`PcKind`]: (window start ms, count in the window).
    renegotiations: [(u64, u32); 2],
    /// Per [`PcKind`]: the `renegotiate` (or give-up `error`) for a connection lost while the
    /// participant was detached, sent when it resumes.
    undelivered: [Option<ServerMsg>; 2],
}

impl PMedia {
    /// Counts one `renegotiate` for `kind`; false past [`RENEGOTIATE_MAX`] per
    /// [`RENEGOTIATE_WINDOW_MS`].
    fn renegotiate_allowed(&mut self, now_ms: u64, kind: PcKind) -> bool {
        let w = &mut self.renegotiations[kind as usize];
        if now_ms.saturating_sub(w.0) >= RENEGOTIATE_WINDOW_MS || w.1 == 0 {
            *w = (now_ms, 0);
        }
        if w.1 >= RENEGOTIATE_MAX {
            return false;
        }
        w.1 += 1;
        true
    }
}

/// A receiving PeerConnection and its fixed slots.
#[derive(Debug)]
struct Sub {
    id: String,
    slots: Vec<SlotDesc>,
    sizes: HashMap<u32, SlotSize>,
    last: Option<Utf8Bytes>,
    /// Who each audio slot carried after the last plan (keeps speakers in their slot).
    audio_prev: Vec<Option<Pid>>,
}

/// The session core and the media of its participants.
pub(crate) struct Core {
    pub(crate) session: Session,
    media: HashMap<Pid, PMedia>,
    /// Audio sources ranked by loudness (engine `AudioLevels`), for audio slots.
    audio: AudioRank,
    /// Audio track handles registered in [`Hub`]'s track index by this session.
    audio_tracks: Vec<u32>,
    /// Participants whose socket dropped, waiting to resume: pid → deadline (session ms).
    detached: HashMap<Pid, u64>,
    /// The same deadlines in the order they were set (the grace is one value, so this is
    /// deadline order): `run_ticks` pops the expired ones, skipping entries that a resume or a
    /// newer drop replaced. At most one entry per detachment.
    detach_queue: std::collections::VecDeque<(u64, Pid)>,
}

impl Core {
    /// The lock-held half of a leave: `pid` out of the session (a no-op if it is gone already)
    /// and its media out of the core; [`finish_leave`] does the rest without the lock.
    fn take_leaver(&mut self, now_ms: u64, pid: Pid) -> (Outcome, Option<PMedia>) {
        (self.session.leave(now_ms, pid), self.media.remove(&pid))
    }
}

/// One ILS session (named like its room): core, media and fan-out channels.
pub struct IlsRoom {
    /// Room name (the token's `room`; WHIP/WHEP sessions of the same room see its stage).
    pub name: String,
    core: tokio::sync::Mutex<Core>,
    tx: broadcast::Sender<Arc<Frame>>,
    handles: Mutex<HashMap<Pid, Handle>>,
    epoch: Instant,
    /// Created by the admin API: kept while empty (until DELETE).
    pub explicit: bool,
}

fn place_index(p: Place) -> u8 {
    Place::ALL.iter().position(|x| *x == p).unwrap_or(0) as u8
}

fn place_from(i: u8) -> Place {
    Place::ALL
        .get(usize::from(i))
        .copied()
        .unwrap_or(Place::Audience)
}

impl IlsRoom {
    fn new(name: &str, explicit: bool) -> IlsRoom {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        IlsRoom {
            name: name.to_string(),
            core: tokio::sync::Mutex::new(Core {
                session: Session::new(SessionConfig::default()),
                media: HashMap::new(),
                detached: HashMap::new(),
                detach_queue: std::collections::VecDeque::new(),
                audio: AudioRank::default(),
                audio_tracks: Vec::new(),
            }),
            tx,
            handles: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            explicit,
        }
    }

    /// Lock the session core (always before `App::rooms` when both are needed).
    pub(crate) async fn core_lock(&self) -> tokio::sync::MutexGuard<'_, Core> {
        self.core.lock().await
    }

    /// Session time: milliseconds since the session was created.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Serialize each message once and hand it to its recipients: one participant's queue, or
    /// the broadcast channel. Keeps sockets' places current from `moved`/`participant`.
    fn deliver(&self, counters: &WsCounters, out: Vec<Out>) {
        for o in out {
            let place_of = match &o.msg {
                ServerMsg::Moved { participant, to } => Some((*participant, *to)),
                ServerMsg::Participant(p) => Some((p.id, p.place)),
                _ => None,
            };
            if let Some((pid, place)) = place_of {
                if let Ok(h) = self.handles.lock() {
                    if let Some(h) = h.get(&pid) {
                        h.place.store(place_index(place), Ordering::Relaxed);
                    }
                }
            }
            let closes = match &o.msg {
                ServerMsg::Removed { reason } => Some(format!("removed: {reason}")),
                ServerMsg::Ended { reason } => Some(format!("session ended: {reason}")),
                _ => None,
            };
            counters.serialized.fetch_add(1, Ordering::Relaxed);
            let f = Arc::new(Frame {
                to: o.to,
                json: Utf8Bytes::from(o.msg.to_json()),
                kind: o.msg.type_name(),
                closes,
            });
            match o.to {
                To::Participant(pid) => self.direct(counters, pid, Direct::Frame(f)),
                _ => {
                    // No receiver is not an error: nobody is connected.
                    let _ = self.tx.send(f);
                }
            }
        }
    }

    /// Queue for one participant; a full queue closes that socket (it reads too slowly).
    fn direct(&self, counters: &WsCounters, pid: Pid, d: Direct) {
        let Ok(mut h) = self.handles.lock() else {
            return;
        };
        let full = match h.get(&pid) {
            Some(x) => x.tx.try_send(d).is_err(),
            None => false,
        };
        if full {
            // Dropping the sender ends the socket's queue: it closes with "send queue full".
            h.remove(&pid);
            counters.closed_slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send_msg(&self, counters: &WsCounters, pid: Pid, msg: ServerMsg) {
        self.deliver(
            counters,
            vec![Out {
                to: To::Participant(pid),
                msg,
            }],
        );
    }
}

/// Every ILS session of this process.
#[derive(Default)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Arc<IlsRoom>>>,
    /// Counters for `/metrics`.
    pub counters: WsCounters,
    /// Session-core counters of sessions already dropped (totals stay monotonic).
    gone: Mutex<ils_session::Counters>,
    /// Publisher audio track handle -> (session name, participant): where engine audio levels
    /// go. Rebuilt per session by every full media-plan pass; bounded by the live sessions'
    /// publishers (entries of a dropped session are removed with it).
    audio_tracks: Mutex<HashMap<u32, (String, Pid)>>,
}

/// Why a session could not be created or found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// [`MAX_ILS_SESSIONS`] reached.
    #[error("too many ILS sessions on this server ({MAX_ILS_SESSIONS}); try again later")]
    Full,
    /// A live session of that name exists.
    #[error("a session with this name is running; DELETE it first")]
    Exists,
    /// No session of that name.
    #[error("no such session")]
    NotFound,
}

impl Hub {
    /// The session named `room`, if any.
    pub fn get(&self, room: &str) -> Option<Arc<IlsRoom>> {
        self.rooms.lock().ok()?.get(room).cloned()
    }

    /// Names of the sessions.
    pub fn names(&self) -> Vec<String> {
        self.rooms
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The session `room`, created (automatic: dropped when empty) if absent.
    pub fn get_or_create(app: &Arc<App>, room: &str) -> Result<Arc<IlsRoom>, HubError> {
        Self::create_inner(app, room, false, true)
    }

    /// Create the session `room` for the admin API (kept while empty). An ended session of
    /// that name is replaced; a running one is [`HubError::Exists`].
    pub async fn create(app: &Arc<App>, room: &str) -> Result<Arc<IlsRoom>, HubError> {
        if let Some(r) = app.ils.get(room) {
            let core = r.core.lock().await;
            if !core.session.is_ended() {
                return Err(HubError::Exists);
            }
            app.ils.retire(core.session.counters());
            drop(core);
            app.ils.remove(room, &r);
        }
        Self::create_inner(app, room, true, false)
    }

    fn create_inner(
        app: &Arc<App>,
        room: &str,
        explicit: bool,
        reuse: bool,
    ) -> Result<Arc<IlsRoom>, HubError> {
        let mut rooms = app.ils.rooms.lock().map_err(|_| HubError::Full)?;
        if let Some(r) = rooms.get(room) {
            if reuse {
                return Ok(Arc::clone(r));
            }
            return Err(HubError::Exists);
        }
        if rooms.len() >= MAX_ILS_SESSIONS {
            return Err(HubError::Full);
        }
        let r = Arc::new(IlsRoom::new(room, explicit));
        rooms.insert(room.to_string(), Arc::clone(&r));
        drop(rooms);
        tokio::spawn(run_ticks(Arc::clone(app), Arc::downgrade(&r)));
        Ok(r)
    }

    fn remove(&self, room: &str, r: &Arc<IlsRoom>) {
        if let Ok(mut rooms) = self.rooms.lock() {
            if rooms.get(room).is_some_and(|x| Arc::ptr_eq(x, r)) {
                rooms.remove(room);
            }
        }
        if let Ok(mut t) = self.audio_tracks.lock() {
            t.retain(|_, (n, _)| n != room);
        }
    }

    fn holds(&self, r: &Arc<IlsRoom>) -> bool {
        self.rooms
            .lock()
            .map(|m| m.get(&r.name).is_some_and(|x| Arc::ptr_eq(x, r)))
            .unwrap_or(false)
    }

    /// Remember a dropped session's core counters in the totals.
    fn retire(&self, c: &ils_session::Counters) {
        if let Ok(mut g) = self.gone.lock() {
            g.add(c);
        }
    }

    /// Prometheus text of the session cores' counters, summed over every session this process
    /// ran (`ils_session_<name>_total`, `ils_session_refused_total{reason}`) and the number of
    /// live sessions (`ils_sessions`).
    pub async fn render_sessions(&self, out: &mut String) {
        use std::fmt::Write;
        let mut total = self.gone.lock().map(|g| g.clone()).unwrap_or_default();
        let live: Vec<Arc<IlsRoom>> = self
            .rooms
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        for r in &live {
            total.add(r.core.lock().await.session.counters());
        }
        let _ = writeln!(out, "# TYPE ils_sessions gauge");
        let _ = writeln!(out, "ils_sessions {}", live.len());
        for (n, v) in total.values() {
            let _ = writeln!(out, "# TYPE ils_session_{n}_total counter");
            let _ = writeln!(out, "ils_session_{n}_total {v}");
        }
        let _ = writeln!(out, "# TYPE ils_session_refused_total counter");
        for c in ErrorCode::ALL {
            let _ = writeln!(
                out,
                "ils_session_refused_total{{reason=\"{}\"}} {}",
                c.as_str(),
                total.refused(c)
            );
        }
    }
}

/// The session's timer: `tick` every [`TICK_INTERVAL`]; drops the session when it has ended
/// ([`ENDED_KEEP`]) or an automatic one stayed empty ([`EMPTY_KEEP`]).
async fn run_ticks(app: Arc<App>, room: Weak<IlsRoom>) {
    let mut every = tokio::time::interval(TICK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_since: Option<Instant> = None;
    loop {
        every.tick().await;
        let Some(r) = room.upgrade() else { return };
        if !app.ils.holds(&r) {
            return; // replaced by an admin create: its counters were retired there
        }
        let mut core = r.core.lock().await;
        let now = r.now_ms();
        // Detached participants whose resume grace ended leave (RELIABILITY F7).
        let mut expired = Vec::new();
        while let Some(&(deadline, pid)) = core.detach_queue.front() {
            if deadline > now {
                break;
            }
            core.detach_queue.pop_front();
            if core.detached.get(&pid) == Some(&deadline) {
                core.detached.remove(&pid);
                expired.push(core.take_leaver(now, pid));
            }
        }
        if !expired.is_empty() {
            drop(core);
            app.ils
                .counters
                .resume_expired
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
            for left in expired {
                finish_leave(&app, &r, left).await;
            }
            core = r.core.lock().await;
        }
        let o = core.session.tick(r.now_ms());
        let gone = if core.session.is_ended() {
            idle_since.get_or_insert_with(Instant::now).elapsed() > ENDED_KEEP
        } else if core.session.is_empty() && !r.explicit {
            idle_since.get_or_insert_with(Instant::now).elapsed() > EMPTY_KEEP
        } else {
            idle_since = None;
            false
        };
        r.deliver(&app.ils.counters, o.out);
        if gone {
            app.ils.retire(core.session.counters());
            drop(core);
            app.ils.remove(&r.name, &r);
            return;
        }
        drop(core);
    }
}

fn to_session_role(r: auth::Role) -> Role {
    match r {
        auth::Role::Host => Role::Host,
        auth::Role::Producer => Role::Producer,
        auth::Role::Viewer => Role::Viewer,
    }
}

fn to_session_grants(c: &auth::Claims) -> Grants {
    let g = c.effective_grants();
    Grants {
        publish: g.contains(&auth::Grant::Publish),
        subscribe: g.contains(&auth::Grant::Subscribe),
        chat: g.contains(&auth::Grant::Chat),
        admin: g.contains(&auth::Grant::Admin),
    }
}

/// Run one outcome: deliver its messages, then its effects (media, plan, disconnects).
pub async fn run_outcome(app: &Arc<App>, room: &Arc<IlsRoom>, o: Outcome) {
    room.deliver(&app.ils.counters, o.out);
    run_effects(app, room, o.effects).await;
}

async fn run_effects(app: &Arc<App>, room: &Arc<IlsRoom>, effects: Vec<Effect>) {
    // Whole plan (publishers changed, moves) or only some subscribers (their own subscribe /
    // slot_size): a viewer joining must not cost a pass over every other viewer.
    let mut plan = false;
    let mut only: Vec<Pid> = Vec::new();
    for e in effects {
        match e {
            Effect::Publish { pid, sdp, rid } => {
                if publish(app, room, pid, &sdp, rid).await {
                    plan = true;
                }
            }
            Effect::Subscribe { pid, sdp, rid, .. } => {
                if subscribe(app, room, pid, &sdp, rid).await {
                    only.push(pid);
                }
            }
            Effect::SlotSize {
                pid,
                slot,
                size,
                rid,
            } => {
                let mut core = room.core.lock().await;
                let found = core
                    .media
                    .get_mut(&pid)
                    .and_then(|m| m.subscriber.as_mut())
                    .filter(|s| {
                        s.slots
                            .iter()
                            .any(|d| d.slot == slot && d.kind == MediaKind::Video)
                    })
                    .map(|s| s.sizes.insert(slot, size))
                    .is_some();
                drop(core);
                let c = &app.ils.counters;
                if found {
                    if let Some(rid) = rid {
                        room.send_msg(c, pid, ServerMsg::Ack { rid });
                    }
                    only.push(pid);
                } else {
                    c.count_refused(ErrorCode::NotFound);
                    room.send_msg(
                        c,
                        pid,
                        ServerMsg::error(
                            ErrorCode::NotFound,
                            format!("no video slot {slot} on your receiving connection: subscribe first, slots are numbered per kind from 0"),
                            rid,
                        ),
                    );
                }
            }
            Effect::MediaPlanChanged => plan = true,
            Effect::Disconnect { pid, reason } => {
                let media = room.core.lock().await.media.remove(&pid);
                drop_media(app, media).await;
                let code = if reason == "left" { 1000 } else { 1008 };
                room.direct(&app.ils.counters, pid, Direct::Close(code, reason));
                if let Ok(mut h) = room.handles.lock() {
                    h.remove(&pid);
                }
                plan = true;
            }
            Effect::Ended { .. } => {
                let all: Vec<PMedia> = room
                    .core
                    .lock()
                    .await
                    .media
                    .drain()
                    .map(|(_, m)| m)
                    .collect();
                for m in all {
                    drop_media(app, Some(m)).await;
                }
                plan = false;
            }
        }
    }
    if plan {
        apply_plan(app, room, None).await;
    } else if !only.is_empty() {
        apply_plan(app, room, Some(&only)).await;
    }
}

/// Room session `id` of ILS session `room` was removed outside `/ws` (DTLS failed, ICE consent
/// lost, never connected, engine restart): forget it, tell its participant to publish / subscribe
/// again (`error{internal}`), and re-plan. Call without holding `App::rooms`.
pub async fn media_gone(app: &Arc<App>, room: &str, id: &str, cause: MediaLoss) {
    let Some(r) = app.ils.get(room) else { return };
    let c = &app.ils.counters;
    let now = r.now_ms();
    let mut core = r.core.lock().await;
    let mut found = None;
    for (pid, m) in core.media.iter_mut() {
        let kind = if m.publisher.as_deref() == Some(id) {
            m.publisher = None;
            PcKind::Publish
        } else if m.subscriber.as_ref().is_some_and(|s| s.id == id) {
            m.subscriber = None;
            PcKind::Subscribe
        } else {
            continue;
        };
        found = Some((*pid, kind, m.renegotiate_allowed(now, kind)));
        break;
    }
    let Some((pid, kind, allowed)) = found else {
        return;
    };
    let o = if kind == PcKind::Publish {
        core.session.set_publishing(now, pid, false)
    } else {
        Outcome::default()
    };
    drop(core);
    let again = match kind {
        PcKind::Publish => "publish again",
        PcKind::Subscribe => "subscribe again with the same slots",
    };
    let msg = if allowed {
        c.renegotiations.fetch_add(1, Ordering::Relaxed);
        ServerMsg::Renegotiate {
            pc: kind,
            cause,
            reason: format!(
                "{}: make a new connection and {again}; your place and slots are kept",
                cause.describe()
            ),
        }
    } else {
        c.count_refused(ErrorCode::Internal);
        ServerMsg::error(
            ErrorCode::Internal,
            format!(
                "{} and {RENEGOTIATE_MAX} renegotiations in {} s did not hold: check the network \
                 (UDP to the server) and {again}",
                cause.describe(),
                RENEGOTIATE_WINDOW_MS / 1000
            ),
            None,
        )
    };
    let attached = r.handles.lock().is_ok_and(|h| h.contains_key(&pid));
    if attached {
        r.send_msg(c, pid, msg);
    } else {
        // Detached (its socket dropped): told when it resumes, right after its `welcome`.
        let mut core = r.core.lock().await;
        if let Some(m) = core.media.get_mut(&pid) {
            m.undelivered[kind as usize] = Some(msg);
        }
    }
    run_outcome(app, &r, o).await;
}

/// Remove a participant's PeerConnections from the rooms (engine legs, tracks, transports).
async fn drop_media(app: &Arc<App>, m: Option<PMedia>) {
    let Some(m) = m else { return };
    let ids: Vec<String> = m
        .publisher
        .into_iter()
        .chain(m.subscriber.map(|s| s.id))
        .collect();
    if ids.is_empty() {
        return;
    }
    let mut rooms = app.rooms.lock().await;
    for id in ids {
        if let Ok(cmds) = rooms.remove_session(&id) {
            app.apply(cmds);
        }
    }
    // ILS sessions are not persisted (`Rooms::to_json`): nothing to write.
}

fn media_error(status: u16) -> ErrorCode {
    match status {
        400 | 415 | 422 => ErrorCode::BadMessage,
        409 | 503 => ErrorCode::LimitReached,
        _ => ErrorCode::Internal,
    }
}

/// The common start of `publish` and `subscribe`: the participant's identity, then the
/// WHIP/WHEP offer path ([`create_media_session`], marked ILS). A refusal is answered with a typed
/// `error` (and counted) here; `None` then, or when the participant left meanwhile.
async fn negotiate(
    app: &Arc<App>,
    room: &Arc<IlsRoom>,
    pid: Pid,
    sdp: &str,
    rid: &Option<String>,
    kind: SessionKind,
) -> Option<crate::http::CreatedMedia> {
    let c = &app.ils.counters;
    let identity = room
        .core
        .lock()
        .await
        .media
        .get(&pid)
        .map(|m| m.identity.clone())?;
    match create_media_session(app, &room.name, kind, Some(identity), sdp, true, 2).await {
        Ok(x) => Some(x),
        Err(e) => {
            let code = media_error(e.status);
            c.count_refused(code);
            room.send_msg(c, pid, ServerMsg::error(code, e.reason, rid.clone()));
            None
        }
    }
}

/// `publish` effect: negotiate, record, answer. Returns whether the media plan changed.
async fn publish(
    app: &Arc<App>,
    room: &Arc<IlsRoom>,
    pid: Pid,
    sdp: &str,
    rid: Option<String>,
) -> bool {
    let c = &app.ils.counters;
    let Some(created) = negotiate(app, room, pid, sdp, &rid, SessionKind::Publisher).await else {
        return false;
    };
    let id = created.alloc.id.clone();
    let mut core = room.core.lock().await;
    let old = match core.media.get_mut(&pid) {
        Some(m) => m.publisher.replace(id.clone()),
        None => Some(id.clone()), // left meanwhile: undo
    };
    let o = core.session.set_publishing(room.now_ms(), pid, true);
    room.send_msg(
        c,
        pid,
        ServerMsg::Answer {
            sdp: created.neg.answer,
            slots: Vec::new(),
            rid,
        },
    );
    room.deliver(c, o.out);
    drop(core);
    if let Some(old) = old {
        drop_media(
            app,
            Some(PMedia {
                publisher: Some(old),
                ..PMedia::default()
            }),
        )
        .await;
    }
    true
}

/// `subscribe` effect: negotiate, number the slots per kind in m-line order, answer.
async fn subscribe(
    app: &Arc<App>,
    room: &Arc<IlsRoom>,
    pid: Pid,
    sdp: &str,
    rid: Option<String>,
) -> bool {
    let c = &app.ils.counters;
    let Some(created) = negotiate(app, room, pid, sdp, &rid, SessionKind::Viewer).await else {
        return false;
    };
    let (mut nv, mut na) = (0u32, 0u32);
    let slots: Vec<SlotDesc> = created
        .neg
        .media
        .iter()
        .map(|m| {
            let (kind, n) = if m.kind == crate::sdp::Kind::Video {
                (MediaKind::Video, &mut nv)
            } else {
                (MediaKind::Audio, &mut na)
            };
            let d = SlotDesc {
                slot: *n,
                kind,
                mid: m.mid.clone(),
            };
            *n += 1;
            d
        })
        .collect();
    let id = created.alloc.id.clone();
    let mut core = room.core.lock().await;
    let sub = Sub {
        id: id.clone(),
        slots: slots.clone(),
        sizes: HashMap::new(),
        last: None,
        audio_prev: Vec::new(),
    };
    let old = match core.media.get_mut(&pid) {
        Some(m) => m.subscriber.replace(sub).map(|s| s.id),
        None => Some(id),
    };
    room.send_msg(
        c,
        pid,
        ServerMsg::Answer {
            sdp: created.neg.answer,
            slots,
            rid,
        },
    );
    drop(core);
    if let Some(old) = old {
        drop_media(
            app,
            Some(PMedia {
                publisher: Some(old),
                ..PMedia::default()
            }),
        )
        .await;
    }
    true
}

/// Recompute forwarding from the session's media plan: publishers that may no longer publish
/// are closed; stage publishers are public (WHEP viewers see them), the rest private; every
/// subscriber's slots are pinned to what its place sees and told with `slots` when its mapping
/// changed (one serialization per distinct mapping). `only`: just these subscribers (their
/// own `subscribe` / `slot_size`; publishers and other subscribers are unchanged).
pub async fn apply_plan(app: &Arc<App>, room: &Arc<IlsRoom>, only: Option<&[Pid]>) {
    let c = &app.ils.counters;
    let mut core = room.core.lock().await;
    let now = room.now_ms();
    // 1. publishers that lost the right to publish
    let mut plan = core.session.media_plan();
    let revoked: Vec<Pid> = core
        .media
        .iter()
        .filter(|(pid, m)| {
            m.publisher.is_some() && !plan.source(**pid).is_some_and(|s| s.may_publish)
        })
        .map(|(p, _)| *p)
        .collect();
    let mut dropped = Vec::new();
    for pid in &revoked {
        if let Some(id) = core.media.get_mut(pid).and_then(|m| m.publisher.take()) {
            dropped.push(id);
        }
        let o = core.session.set_publishing(now, *pid, false);
        room.deliver(c, o.out);
    }
    if !revoked.is_empty() {
        plan = core.session.media_plan();
    }
    let mut rooms = app.rooms.lock().await;
    let mut cmds = Vec::new();
    for id in dropped {
        cmds.extend(rooms.remove_session(&id).unwrap_or_default());
    }
    // 2. feeds per source with a live publishing connection
    let feed_of = |pid: Pid, core: &Core| -> Option<Feed> {
        let s = plan.source(pid)?;
        let id = core.media.get(&pid)?.publisher.clone()?;
        let rs = rooms.session(&id)?;
        let has = |video: bool| rs.media.iter().any(|m| m.video == video);
        Some(Feed {
            pid,
            session: id.clone(),
            audio: has(false) && !s.muted.audio,
            video: has(true) && !s.muted.video,
            rids: rs
                .media
                .iter()
                .find(|m| m.video)
                .map(|m| m.rids.clone())
                .unwrap_or_default(),
        })
    };
    // audio track index for engine levels; forget ranks of sources that stopped publishing
    if only.is_none() {
        let mut tracks: Vec<(u32, Pid)> = Vec::new();
        for (pid, m) in &core.media {
            if !plan
                .source(*pid)
                .is_some_and(|s| s.publishing && s.may_publish)
            {
                continue;
            }
            let Some(rs) = m.publisher.as_ref().and_then(|id| rooms.session(id)) else {
                continue;
            };
            tracks.extend(
                rs.media
                    .iter()
                    .filter(|m| !m.video)
                    .map(|m| (m.track, *pid)),
            );
        }
        if let Ok(mut idx) = app.ils.audio_tracks.lock() {
            for t in core.audio_tracks.drain(..) {
                idx.remove(&t);
            }
            for (t, pid) in &tracks {
                idx.insert(*t, (room.name.clone(), *pid));
            }
        }
        core.audio_tracks = tracks.iter().map(|(t, _)| *t).collect();
        core.audio
            .retain(|pid| tracks.iter().any(|(_, p)| *p == pid));
        // sources without a level yet rank last, in display (participant id) order
        tracks.sort_unstable_by_key(|(_, p)| *p);
        for (_, pid) in &tracks {
            core.audio.ensure(*pid);
        }
    }
    let rank = core.audio.order();
    let mut by_place: HashMap<u8, Vec<Feed>> = HashMap::new();
    for p in Place::ALL {
        let feeds: Vec<Feed> = plan
            .sources_for(p)
            .filter(|s| s.publishing)
            .filter_map(|s| feed_of(s.pid, &core))
            .collect();
        by_place.insert(place_index(p), feeds);
    }
    let publics: Vec<(String, bool)> = core
        .media
        .iter()
        .filter(|_| only.is_none())
        .filter_map(|(pid, m)| {
            let id = m.publisher.clone()?;
            let stage = plan
                .source(*pid)
                .is_some_and(|s| s.place == Place::Stage && s.may_publish);
            Some((id, stage))
        })
        .collect();
    for (id, public) in publics {
        cmds.extend(rooms.set_public(&id, public).unwrap_or_default());
    }
    // 3. subscribers
    // Key: (place, the subscriber itself when it is among the feeds, video slots, audio slots,
    // previous audio mapping).
    type Key = (u8, Option<Pid>, u32, u32, Vec<Option<Pid>>);
    let mut cache: HashMap<Key, Arc<(SlotPlan, Utf8Bytes)>> = HashMap::new();
    let pids: Vec<Pid> = match only {
        Some(o) => o.to_vec(),
        None => core.media.keys().copied().collect(),
    };
    for pid in pids {
        let Some((_, place)) = core.session.role_place(pid) else {
            continue;
        };
        let Some(sub) = core.media.get_mut(&pid).and_then(|m| m.subscriber.as_mut()) else {
            continue;
        };
        let feeds = by_place
            .get(&place_index(place))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let me_in = feeds.iter().any(|f| f.pid == pid).then_some(pid);
        let nv = sub
            .slots
            .iter()
            .filter(|s| s.kind == MediaKind::Video)
            .count() as u32;
        let na = sub.slots.len() as u32 - nv;
        let compute = |sub: &Sub| {
            let own: Vec<Feed> = feeds
                .iter()
                .filter(|f| Some(f.pid) != me_in)
                .cloned()
                .collect();
            let p = plan_slots_ranked(&own, &sub.slots, &sub.sizes, &rank, &sub.audio_prev);
            c.serialized.fetch_add(1, Ordering::Relaxed);
            let json = Utf8Bytes::from(
                ServerMsg::Slots {
                    mapping: p.mapping.clone(),
                }
                .to_json(),
            );
            Arc::new((p, json))
        };
        let planned = if sub.sizes.is_empty() {
            Arc::clone(
                cache
                    .entry((place_index(place), me_in, nv, na, sub.audio_prev.clone()))
                    .or_insert_with(|| compute(sub)),
            )
        } else {
            compute(sub)
        };
        let (p, json) = (&planned.0, &planned.1);
        sub.audio_prev = p
            .mapping
            .iter()
            .filter(|m| m.kind == MediaKind::Audio)
            .map(|m| m.participant)
            .collect();
        for (d, feed) in sub.slots.iter().zip(p.feeds.iter()) {
            let pin = feed.as_ref().map(|(s, l)| (s.as_str(), *l));
            match rooms.set_slot(&sub.id, &d.mid, pin) {
                Ok(x) => cmds.extend(x),
                Err(RoomError::UnknownSession) if pin.is_none() => break,
                Err(e) => {
                    // e.g. the publisher sends another codec than this slot negotiated, or it
                    // is gone: never leave the slot on its previous feed.
                    tracing::debug!("slot {} of {}: {e}; left empty", d.mid, sub.id);
                    cmds.extend(rooms.set_slot(&sub.id, &d.mid, None).unwrap_or_default());
                }
            }
        }
        if sub.last.as_ref().map(Utf8Bytes::as_str) != Some(json.as_str()) {
            sub.last = Some(json.clone());
            let f = Arc::new(Frame {
                to: To::Participant(pid),
                json: json.clone(),
                kind: "slots",
                closes: None,
            });
            room.direct(c, pid, Direct::Frame(f));
        }
    }
    c.slot_cmds.fetch_add(cmds.len() as u64, Ordering::Relaxed);
    app.apply(cmds);
    // `set_public` may have changed WHEP viewers' legs, which are persisted.
    if only.is_none() {
        app.persist_soon();
    }
}

/// Engine `AudioLevels` (one shard's report): update the speaking order of the sessions the
/// tracks belong to and re-plan the slots of each session whose order changed (a `slots`
/// message goes only to subscribers whose mapping changed, serialized once per mapping).
/// Tracks that are not ILS publisher audio (WHIP publishers, unknown) are ignored.
pub async fn audio_levels(app: &Arc<App>, levels: &[(u32, u8)]) {
    let mut per_room: HashMap<String, Vec<(Pid, u8)>> = HashMap::new();
    if let Ok(idx) = app.ils.audio_tracks.lock() {
        for (track, level) in levels {
            if let Some((room, pid)) = idx.get(track) {
                per_room
                    .entry(room.clone())
                    .or_default()
                    .push((*pid, *level));
            }
        }
    }
    for (name, lv) in per_room {
        let Some(room) = app.ils.get(&name) else {
            continue;
        };
        let subscribers: Vec<Pid> = {
            let mut core = room.core.lock().await;
            for (pid, l) in lv {
                core.audio.set_level(pid, l);
            }
            if !core.audio.update(room.now_ms()) {
                continue;
            }
            core.media
                .iter()
                .filter(|(_, m)| m.subscriber.is_some())
                .map(|(p, _)| *p)
                .collect()
        };
        app.ils
            .counters
            .audio_reranks
            .fetch_add(1, Ordering::Relaxed);
        // only the subscribers' slots: publishers, public flags and state.json are unchanged
        apply_plan(app, &room, Some(&subscribers)).await;
    }
}

/// `GET /ws`: upgrade and run the socket (a socket-loop task and a reader task per socket).
pub async fn ws_handler(State(app): State<Arc<App>>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(WS_MAX_MESSAGE_BYTES)
        .max_frame_size(WS_MAX_MESSAGE_BYTES)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            let c = &app.ils.counters;
            let open = c.sockets_open.fetch_add(1, Ordering::Relaxed) + 1;
            let mut conn = Conn::new(socket, Arc::clone(&app));
            if open > MAX_SOCKETS {
                conn.refuse(
                    ErrorCode::SessionFull,
                    "this server has too many connections; try again later",
                    None,
                    1013,
                )
                .await;
            } else {
                run_socket(&app, &mut conn).await;
            }
            app.ils
                .counters
                .sockets_open
                .fetch_sub(1, Ordering::Relaxed);
        })
}

/// What the reader task hands the socket loop: a client frame, or the read error that ended it.
type Read = Result<Message, axum::Error>;

/// One socket: a reader task (woken only when the socket is readable, so a broadcast wake-up
/// never polls the read side) feeding `rx`, and the write half with the writes that count and
/// time out.
struct Conn {
    sink: SplitSink<WebSocket, Message>,
    rx: mpsc::Receiver<Read>,
    reader: tokio::task::JoinHandle<()>,
    counters_app: Arc<App>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The reader may be parked on a client that never sends: end it with the socket.
        self.reader.abort();
    }
}

/// Read client frames until the socket ends, a read fails, a close arrives, or the socket loop
/// is gone; at most [`READ_QUEUE`] frames wait for the loop.
async fn read_loop(mut stream: SplitStream<WebSocket>, tx: mpsc::Sender<Read>) {
    while let Some(m) = stream.next().await {
        let last = matches!(m, Err(_) | Ok(Message::Close(_)));
        if tx.send(m).await.is_err() || last {
            return;
        }
    }
}

/// Frames gathered for one write batch, and the close that follows them, if any.
#[derive(Default)]
struct Batch {
    frames: Vec<(&'static str, Utf8Bytes)>,
    end: Option<(u16, String)>,
}

impl Batch {
    fn full(&self) -> bool {
        self.end.is_some() || self.frames.len() >= WRITE_BATCH
    }
}

/// Close reasons are limited to 123 bytes by RFC 6455; cut on a char boundary.
fn close_reason(r: &str) -> String {
    let mut end = r.len().min(123);
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    r[..end].to_string()
}

impl Conn {
    fn new(socket: WebSocket, app: Arc<App>) -> Conn {
        let (sink, stream) = socket.split();
        let (tx, rx) = mpsc::channel(READ_QUEUE);
        Conn {
            sink,
            rx,
            reader: tokio::spawn(read_loop(stream, tx)),
            counters_app: app,
        }
    }

    fn counters(&self) -> &WsCounters {
        &self.counters_app.ils.counters
    }

    /// Write one text frame; false if the socket is gone or the write timed out.
    async fn write(&mut self, kind: &'static str, text: Utf8Bytes) -> bool {
        self.write_all(&[(kind, text)]).await
    }

    /// Write text frames with one flush (one `sendto` for the lot when they fit the write
    /// buffer); false if the socket is gone or the whole batch took over [`SEND_TIMEOUT`].
    async fn write_all(&mut self, frames: &[(&'static str, Utf8Bytes)]) -> bool {
        let sink = &mut self.sink;
        let batch = async {
            for (_, text) in frames {
                sink.feed(Message::Text(text.clone())).await?;
            }
            sink.flush().await
        };
        match tokio::time::timeout(SEND_TIMEOUT, batch).await {
            Ok(Ok(())) => {
                for (kind, _) in frames {
                    self.counters().count_out(kind);
                }
                true
            }
            Ok(Err(_)) => false,
            Err(_) => {
                self.counters().closed_slow.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    async fn write_msg(&mut self, msg: &ServerMsg) -> bool {
        if let ServerMsg::Error { code, .. } = msg {
            self.counters().count_refused(*code);
        }
        self.write(msg.type_name(), Utf8Bytes::from(msg.to_json()))
            .await
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(close_reason(reason)),
        };
        let _ =
            tokio::time::timeout(SEND_TIMEOUT, self.sink.send(Message::Close(Some(frame)))).await;
    }

    /// Send a typed error, then close with the same reason.
    async fn refuse(&mut self, code: ErrorCode, reason: &str, rid: Option<String>, close: u16) {
        self.write_msg(&ServerMsg::error(code, reason, rid)).await;
        self.close(close, &format!("{code}: {reason}")).await;
    }
}

/// Wait for `hello`, join, then pump frames both ways until either side ends.
async fn run_socket(app: &Arc<App>, conn: &mut Conn) {
    let first = match tokio::time::timeout(HELLO_TIMEOUT, conn.rx.recv()).await {
        Err(_) => {
            conn.refuse(
                ErrorCode::NotJoined,
                "no hello within 5 s: send {\"type\":\"hello\",\"v\":1,\"token\":...} first",
                None,
                1008,
            )
            .await;
            return;
        }
        Ok(None) | Ok(Some(Err(_))) => return,
        Ok(Some(Ok(m))) => m,
    };
    let text = match first {
        Message::Text(t) => t,
        Message::Close(_) => return,
        _ => {
            conn.refuse(
                ErrorCode::BadMessage,
                "the first message must be a text frame with hello",
                None,
                1003,
            )
            .await;
            return;
        }
    };
    let frame = match ils_session::parse_client(text.as_str()) {
        Ok(f) => f,
        Err(e) => {
            conn.refuse(e.code, &e.reason, e.rid, 1008).await;
            return;
        }
    };
    let rid = frame.rid.clone();
    let ClientMsg::Hello {
        v,
        token,
        name,
        resume,
    } = frame.msg
    else {
        conn.refuse(
            ErrorCode::NotJoined,
            "the first message must be hello (see docs/protocol.md)",
            rid,
            1008,
        )
        .await;
        return;
    };
    conn.counters().count_in("hello");
    if v != ils_session::PROTOCOL_VERSION {
        let reason = format!(
            "this server speaks protocol v{}, not v{v}",
            ils_session::PROTOCOL_VERSION
        );
        conn.refuse(ErrorCode::UnsupportedVersion, &reason, rid, 1008)
            .await;
        return;
    }
    let claims = match auth::verify(&app.secret, &token, crate::http::now_unix_secs()) {
        Ok(c) => c,
        Err(e) => {
            app.counters.refused_401.fetch_add(1, Ordering::Relaxed);
            conn.refuse(ErrorCode::Unauthorized, &e.to_string(), rid, 1008)
                .await;
            return;
        }
    };
    if !crate::http::valid_room_name(&claims.room) {
        conn.refuse(
            ErrorCode::Unauthorized,
            "the token's room is not a valid session name (1-64 characters of A-Z a-z 0-9 - _ .)",
            rid,
            1008,
        )
        .await;
        return;
    }
    let room = match Hub::get_or_create(app, &claims.room) {
        Ok(r) => r,
        Err(e) => {
            conn.refuse(ErrorCode::SessionFull, &e.to_string(), rid, 1013)
                .await;
            return;
        }
    };
    let identity = claims.identity.clone().unwrap_or_else(|| {
        let mut b = [0u8; 8];
        rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
        format!(
            "anon-{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )
    });
    let role = to_session_role(claims.role);
    let name = name.or_else(|| claims.name.clone());
    let mut brx = room.tx.subscribe();
    let (dtx, mut drx) = mpsc::channel(DIRECT_QUEUE);
    let place = Arc::new(AtomicU8::new(0));
    let mut core = room.core.lock().await;
    let now = room.now_ms();
    // Resume: the identity's participant (detached, or on a socket that has not noticed it is
    // dead yet) keeps its id, place and PeerConnections. Anonymous tokens cannot resume.
    let resumed = if resume && claims.identity.is_some() {
        core.session
            .pid_of(&identity)
            .and_then(|p| Some((p, core.session.resume(now, p, role, rid.clone())?)))
    } else {
        None
    };
    let was_resumed = resumed.is_some();
    let (pid, outcome) = match resumed {
        Some(x) => x,
        None => match core.session.join(
            now,
            &identity,
            name.as_deref(),
            role,
            to_session_grants(&claims),
            rid.clone(),
        ) {
            Ok(x) => x,
            Err(e) => {
                drop(core);
                let m = e.to_server_msg(rid);
                conn.write_msg(&m).await;
                conn.close(1008, &format!("{}: {e}", e.code())).await;
                return;
            }
        },
    };
    if let Some((_, p)) = core.session.role_place(pid) {
        place.store(place_index(p), Ordering::Relaxed);
    }
    let epoch = SOCKET_EPOCH.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut h) = room.handles.lock() {
        let old = h.insert(
            pid,
            Handle {
                tx: dtx,
                place: Arc::clone(&place),
                epoch,
            },
        );
        if let Some(old) = old.filter(|_| was_resumed) {
            let _ = old.tx.try_send(Direct::Close(
                1000,
                "resumed by a new connection with the same identity".into(),
            ));
        }
    }
    let mut last_slots = None;
    let mut undelivered = Vec::new();
    if was_resumed {
        core.detached.remove(&pid);
        app.ils.counters.resumed.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = core.media.get_mut(&pid) {
            last_slots = m.subscriber.as_ref().and_then(|s| s.last.clone());
            undelivered.extend(m.undelivered.iter_mut().filter_map(Option::take));
        }
    } else {
        core.media.insert(
            pid,
            PMedia {
                identity,
                ..PMedia::default()
            },
        );
    }
    drop(core);
    run_outcome(app, &room, outcome).await;
    // The latest slot mapping after the resumed welcome: changes made while detached.
    if let Some(json) = last_slots {
        let f = Arc::new(Frame {
            to: To::Participant(pid),
            json,
            kind: "slots",
            closes: None,
        });
        room.direct(&app.ils.counters, pid, Direct::Frame(f));
    }
    for m in undelivered {
        room.send_msg(&app.ils.counters, pid, m);
    }
    tracing::debug!(room = %room.name, %pid, resumed = was_resumed, "joined /ws");

    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let mut lags = 0u32;
    let mut bad = 0u32;
    let mut clean_close = false;
    let reason: (u16, String) = loop {
        tokio::select! {
            m = conn.rx.recv() => {
                let m = match m {
                    None | Some(Err(_)) => break (0, String::new()),
                    Some(Ok(m)) => m,
                };
                last_heard = Instant::now();
                match m {
                    Message::Text(t) => {
                        match ils_session::parse_client(t.as_str()) {
                            Err(e) => {
                                bad += 1;
                                if !conn.write_msg(&e.to_server_msg()).await {
                                    break (0, String::new());
                                }
                                if bad >= MAX_BAD_FRAMES {
                                    break (1008, format!("{} invalid messages: fix the client (see docs/protocol.md)", bad));
                                }
                            }
                            Ok(f) => {
                                let t = f.msg.type_name();
                                conn.counters().count_in(t);
                                if t == "hello" {
                                    let m = ServerMsg::error(
                                        ErrorCode::Conflict,
                                        "already joined: hello is only the first message",
                                        f.rid,
                                    );
                                    if !conn.write_msg(&m).await {
                                        break (0, String::new());
                                    }
                                    continue;
                                }
                                let mut core = room.core.lock().await;
                                let o = core.session.handle(room.now_ms(), pid, f);
                                drop(core);
                                run_outcome(app, &room, o).await;
                            }
                        }
                    }
                    Message::Binary(_) => {
                        bad += 1;
                        if bad >= MAX_BAD_FRAMES {
                            break (1008, format!("{bad} invalid messages: send JSON text frames"));
                        }
                        let m = ServerMsg::error(
                            ErrorCode::BadMessage,
                            "binary frames are not part of the protocol: send JSON text frames",
                            None,
                        );
                        if !conn.write_msg(&m).await {
                            break (0, String::new());
                        }
                    }
                    Message::Close(f) => {
                        // A close frame without a code, 1000 (normal) or 1001 (going away: page
                        // closed or reloaded) leaves at once; any other code is a drop the
                        // client means to resume.
                        clean_close = f.is_none_or(|f| matches!(f.code, 1000 | 1001));
                        break (0, String::new());
                    }
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            f = brx.recv() => {
                let mut b = Batch::default();
                let who = (pid, role, &*place);
                take_broadcast(&mut b, f, who, &mut lags, conn.counters());
                fill_batch(&mut b, &mut brx, &mut drx, who, &mut lags, conn.counters());
                if !b.frames.is_empty() && !conn.write_all(&b.frames).await {
                    break (0, String::new());
                }
                if let Some(e) = b.end {
                    break e;
                }
            }
            d = drx.recv() => {
                let mut b = Batch::default();
                let who = (pid, role, &*place);
                take_direct(&mut b, d);
                fill_batch(&mut b, &mut brx, &mut drx, who, &mut lags, conn.counters());
                if !b.frames.is_empty() && !conn.write_all(&b.frames).await {
                    break (0, String::new());
                }
                if let Some(e) = b.end {
                    break e;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    conn.counters().closed_idle.fetch_add(1, Ordering::Relaxed);
                    break (1001, "idle: nothing received for 60 s (answer pings)".into());
                }
                if tokio::time::timeout(SEND_TIMEOUT, conn.sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    break (0, String::new());
                }
            }
        }
    };
    if reason.0 != 0 {
        conn.close(reason.0, &reason.1).await;
    }
    // Cleanup, unless a resume took this participant over (its handle is another socket's).
    let mine = room
        .handles
        .lock()
        .map(|mut h| {
            let mine = h.get(&pid).is_some_and(|x| x.epoch == epoch);
            if mine {
                h.remove(&pid);
            }
            mine
        })
        .unwrap_or(false);
    if !mine {
        return;
    }
    // A socket that dropped (no close frame, an error, or a close code other than 1000/1001)
    // while the server did not end it: the participant keeps its place and media for the
    // resume grace, waiting for `hello{resume:true}` (RELIABILITY F7).
    let grace = Duration::from_secs(app.settings.resume_grace_secs);
    let mut core = room.core.lock().await;
    let resumable = reason.0 == 0
        && !clean_close
        && !grace.is_zero()
        && claims.identity.is_some()
        && core.session.role_place(pid).is_some();
    if resumable {
        let deadline = room
            .now_ms()
            .saturating_add(app.settings.resume_grace_secs.saturating_mul(1000));
        core.detached.insert(pid, deadline);
        core.detach_queue.push_back((deadline, pid));
        drop(core);
        app.ils.counters.detached.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(room = %room.name, %pid, "socket dropped; held for resume");
        return;
    }
    // The participant leaves (no-op if the session already removed it).
    let left = core.take_leaver(room.now_ms(), pid);
    drop(core);
    finish_leave(app, &room, left).await;
}

/// The rest of a leave begun by [`Core::take_leaver`], without the core lock: the
/// participant's engine media removed, then the session's outcome run.
async fn finish_leave(app: &Arc<App>, room: &Arc<IlsRoom>, (o, media): (Outcome, Option<PMedia>)) {
    drop_media(app, media).await;
    run_outcome(app, room, o).await;
}

/// Who a socket is, for filtering broadcast frames: participant, role, place (read per frame:
/// `deliver` updates it before the frames that follow a move).
type Who<'a> = (Pid, Role, &'a AtomicU8);

/// Add one broadcast event to the batch: the frame if it is for this socket, a `lagged` notice
/// (or the close after [`MAX_LAGS`] of them), or the shutdown close.
fn take_broadcast(
    b: &mut Batch,
    f: Result<Arc<Frame>, RecvError>,
    (pid, role, place): Who<'_>,
    lags: &mut u32,
    counters: &WsCounters,
) {
    match f {
        Ok(f) => {
            if f.to
                .matches(pid, role, place_from(place.load(Ordering::Relaxed)))
            {
                b.frames.push((f.kind, f.json.clone()));
                if let Some(r) = &f.closes {
                    b.end = Some((1000, r.clone()));
                }
            }
        }
        Err(RecvError::Lagged(n)) => {
            counters.lagged.fetch_add(1, Ordering::Relaxed);
            *lags += 1;
            counters.count_refused(ErrorCode::Lagged);
            if *lags > MAX_LAGS {
                b.end = Some((
                    1013,
                    format!("lagged: fell behind the session {lags} times; reconnect"),
                ));
                return;
            }
            let m = ServerMsg::error(
                ErrorCode::Lagged,
                format!("missed {n} events (the connection reads too slowly); state may be stale"),
                None,
            );
            b.frames.push((m.type_name(), Utf8Bytes::from(m.to_json())));
        }
        Err(RecvError::Closed) => b.end = Some((1001, "server shutting down".into())),
    }
}

/// Add one direct-queue item to the batch (`None`: the queue was dropped because it was full).
fn take_direct(b: &mut Batch, d: Option<Direct>) {
    match d {
        Some(Direct::Frame(f)) => {
            b.frames.push((f.kind, f.json.clone()));
            if let Some(r) = &f.closes {
                b.end = Some((1000, r.clone()));
            }
        }
        Some(Direct::Close(code, r)) => b.end = Some((code, r)),
        None => {
            b.end = Some((
                1013,
                "send queue full: the connection reads too slowly; reconnect".into(),
            ))
        }
    }
}

/// Add what is already waiting (broadcast backlog, then the direct queue) without waiting,
/// until the batch holds [`WRITE_BATCH`] frames or ends with a close.
fn fill_batch(
    b: &mut Batch,
    brx: &mut broadcast::Receiver<Arc<Frame>>,
    drx: &mut mpsc::Receiver<Direct>,
    who: Who<'_>,
    lags: &mut u32,
    counters: &WsCounters,
) {
    while !b.full() {
        let f = match brx.try_recv() {
            Ok(f) => Ok(f),
            Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(TryRecvError::Closed) => Err(RecvError::Closed),
            Err(TryRecvError::Empty) => break,
        };
        take_broadcast(b, f, who, lags, counters);
    }
    while !b.full() {
        match drx.try_recv() {
            Ok(d) => take_direct(b, Some(d)),
            Err(mpsc::error::TryRecvError::Disconnected) => take_direct(b, None),
            Err(mpsc::error::TryRecvError::Empty) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(pid: u64, audio: bool, video: bool, rids: &[&str]) -> Feed {
        Feed {
            pid: Pid(pid),
            session: format!("s{pid}"),
            audio,
            video,
            rids: rids.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn slots(video: u32, audio: u32) -> Vec<SlotDesc> {
        let v = (0..video).map(|i| SlotDesc {
            slot: i,
            kind: MediaKind::Video,
            mid: format!("v{i}"),
        });
        let a = (0..audio).map(|i| SlotDesc {
            slot: i,
            kind: MediaKind::Audio,
            mid: format!("a{i}"),
        });
        v.chain(a).collect()
    }

    /// A subscriber with 0 video and 2 audio slots following `rank` over time.
    struct Listener {
        feeds: Vec<Feed>,
        prev: Vec<Option<Pid>>,
        messages: usize,
    }

    impl Listener {
        fn new(n: u64) -> Self {
            Listener {
                feeds: (1..=n).map(|p| feed(p, true, true, &[])).collect(),
                prev: Vec::new(),
                messages: 0,
            }
        }
        /// Re-plan with `rank`; returns the audio slots' participants.
        fn plan(&mut self, rank: &AudioRank) -> Vec<Option<u64>> {
            let p = plan_slots_ranked(
                &self.feeds,
                &slots(0, 2),
                &HashMap::new(),
                &rank.order(),
                &self.prev,
            );
            let now: Vec<Option<Pid>> = p.mapping.iter().map(|m| m.participant).collect();
            if now != self.prev {
                self.messages += 1;
            }
            self.prev = now;
            self.prev.iter().map(|p| p.map(|p| p.0)).collect()
        }
    }

    /// Feed levels (pid, level) every 200 ms from `from_ms` for `ms`; the engine's report rate.
    fn talk(rank: &mut AudioRank, levels: &[(u64, u8)], from_ms: u64, ms: u64) -> u64 {
        let mut t = from_ms;
        while t < from_ms + ms {
            t += 200;
            for (p, l) in levels {
                rank.set_level(Pid(*p), *l);
            }
            rank.update(t);
        }
        t
    }

    #[test]
    fn audio_slots_follow_the_two_loudest_of_four_with_hysteresis() {
        let mut rank = AudioRank::default();
        let mut sub = Listener::new(4);
        assert_eq!(
            sub.plan(&rank),
            vec![Some(1), Some(2)],
            "no levels yet: display order"
        );
        // 3 and 4 talk, 1 and 2 are silent: after the hold, 3 and 4 hold the slots
        let quiet_talk = [(1, 127), (2, 127), (3, 20), (4, 30)];
        let t = talk(&mut rank, &quiet_talk, 0, 600);
        assert_eq!(
            sub.plan(&rank),
            vec![Some(1), Some(2)],
            "within the hold: unchanged"
        );
        let t = talk(&mut rank, &quiet_talk, t, 1000);
        assert_eq!(sub.plan(&rank), vec![Some(3), Some(4)], "the two loudest");
        assert_eq!(rank.order()[..2], [Pid(3), Pid(4)]);
        // 1 starts talking louder than 4 (the quieter slot holder): takes 4's slot, not 3's,
        // and only after the hold time
        let three = [(1, 10), (2, 127), (3, 20), (4, 30)];
        let t2 = talk(&mut rank, &three, t, 800);
        assert_eq!(sub.plan(&rank), vec![Some(3), Some(4)], "0.8 s < hold");
        let t = talk(&mut rank, &three, t2, 400);
        assert_eq!(
            sub.plan(&rank),
            vec![Some(3), Some(1)],
            "1 took the quieter slot (4's)"
        );
        // a silent speaker never displaces a talking one, however long
        let t = talk(&mut rank, &[(2, 127), (1, 10), (3, 20), (4, 127)], t, 5000);
        assert_eq!(sub.plan(&rank), vec![Some(3), Some(1)]);
        // equal voices (within the margin) do not trade places: no flapping
        let before = sub.messages;
        let mut t = t;
        for k in 0..20 {
            let (a, b) = if k % 2 == 0 { (18, 22) } else { (22, 18) };
            t = talk(&mut rank, &[(1, a), (3, b), (4, 20), (2, 127)], t, 400);
            sub.plan(&rank);
        }
        assert_eq!(
            sub.messages, before,
            "no slot change among equally loud speakers"
        );
        // a speaker who flickers loud for less than the hold never gets in
        for _ in 0..10 {
            t = talk(&mut rank, &[(2, 0), (1, 20), (3, 20), (4, 20)], t, 600);
            t = talk(&mut rank, &[(2, 127), (1, 20), (3, 20), (4, 20)], t, 600);
            assert!(!sub.plan(&rank).contains(&Some(2)));
        }
    }

    #[test]
    fn a_source_never_heard_is_displaced_only_through_the_hold() {
        let mut rank = AudioRank::default();
        for p in [1, 2, 3] {
            rank.ensure(Pid(p));
        }
        let mut sub = Listener::new(3);
        assert_eq!(
            sub.plan(&rank),
            vec![Some(1), Some(2)],
            "all silent: display order"
        );
        // only 3 talks: it takes the slot of a silent source, after the hold
        let t = talk(&mut rank, &[(3, 30)], 0, 800);
        assert_eq!(sub.plan(&rank), vec![Some(1), Some(2)]);
        talk(&mut rank, &[(3, 30)], t, 400);
        assert_eq!(sub.plan(&rank), vec![Some(1), Some(3)], "3 took 2's slot");
        rank.ensure(Pid(3));
        assert_eq!(
            rank.order()[0],
            Pid(3),
            "ensure keeps a known source's rank and level"
        );
    }

    #[test]
    fn audio_slots_ignore_levels_when_sources_fit() {
        let mut rank = AudioRank::default();
        talk(&mut rank, &[(2, 0), (1, 127)], 0, 3000);
        assert_eq!(rank.order(), vec![Pid(2), Pid(1)]);
        let feeds = vec![feed(1, true, false, &[]), feed(2, true, false, &[])];
        let p = plan_slots_ranked(&feeds, &slots(0, 2), &HashMap::new(), &rank.order(), &[]);
        let who: Vec<_> = p.mapping.iter().map(|m| m.participant).collect();
        assert_eq!(
            who,
            vec![Some(Pid(1)), Some(Pid(2))],
            "display order: unchanged"
        );
        // a source that stopped publishing is forgotten
        rank.retain(|p| p != Pid(2));
        assert_eq!(rank.order(), vec![Pid(1)]);
    }

    #[test]
    fn feeds_fill_slots_in_order_and_extra_slots_stay_empty() {
        let feeds = [
            feed(1, true, true, &["q", "h", "f"]),
            feed(2, true, false, &[]),
            feed(3, false, true, &[]),
        ];
        let p = plan_slots(&feeds, &slots(3, 1), &HashMap::new());
        // video: feeds 1 and 3 (2 has its video muted), third slot empty; audio: feed 1
        let who: Vec<Option<u64>> = p
            .mapping
            .iter()
            .map(|m| m.participant.map(|x| x.0))
            .collect();
        assert_eq!(who, vec![Some(1), Some(3), None, Some(1)]);
        assert_eq!(
            p.feeds,
            vec![
                Some(("s1".into(), 1)),
                Some(("s3".into(), 1)),
                None,
                Some(("s1".into(), 0))
            ],
            "two videos: medium by default; audio has no layer"
        );
        assert_eq!(p.mapping[0].layer.as_deref(), Some("h"));
        assert_eq!(p.mapping[1].layer, None, "single-layer publisher");
        assert_eq!(p.mapping[3].layer, None, "audio");
    }

    #[test]
    fn slot_size_picks_the_layer_and_defaults_follow_the_count() {
        let feeds = [feed(1, true, true, &["q", "h", "f"])];
        let mut sizes = HashMap::new();
        let p = plan_slots(&feeds, &slots(1, 0), &sizes);
        assert_eq!(p.feeds[0], Some(("s1".into(), 2)), "one video: full");
        assert_eq!(p.mapping[0].layer.as_deref(), Some("f"));
        sizes.insert(0, SlotSize::Thumbnail);
        let p = plan_slots(&feeds, &slots(1, 0), &sizes);
        assert_eq!(p.feeds[0], Some(("s1".into(), 0)));
        assert_eq!(p.mapping[0].layer.as_deref(), Some("q"));
        // two rids only: "full" maps to the highest there is
        let two = [feed(1, true, true, &["l", "h"])];
        sizes.insert(0, SlotSize::Full);
        assert_eq!(
            plan_slots(&two, &slots(1, 0), &sizes).mapping[0]
                .layer
                .as_deref(),
            Some("h")
        );
        assert_eq!(default_size(1), SlotSize::Full);
        assert_eq!(default_size(4), SlotSize::Medium);
        assert_eq!(default_size(25), SlotSize::Thumbnail);
        assert_eq!(size_layer(SlotSize::Medium), 1);
    }

    #[test]
    fn nothing_visible_means_every_slot_is_empty() {
        let p = plan_slots(&[], &slots(25, 8), &HashMap::new());
        assert_eq!(p.feeds.len(), 33);
        assert!(p.feeds.iter().all(Option::is_none));
        assert!(p.mapping.iter().all(|m| m.participant.is_none()));
    }

    #[test]
    fn close_reasons_fit_the_close_frame() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let r = close_reason(&long);
        assert!(r.len() <= 123 && long.starts_with(&r));
        assert_eq!(place_from(place_index(Place::GreenRoom)), Place::GreenRoom);
        assert_eq!(place_from(200), Place::Audience);
    }

    #[test]
    fn deliver_serializes_once_and_routes_direct_and_broadcast() {
        let counters = WsCounters::default();
        let room = IlsRoom::new("r", false);
        let mut brx = room.tx.subscribe();
        let (tx, mut rx) = mpsc::channel(1);
        let place = Arc::new(AtomicU8::new(place_index(Place::Audience)));
        room.handles.lock().expect("lock").insert(
            Pid(5),
            Handle {
                tx,
                place: Arc::clone(&place),
                epoch: 1,
            },
        );
        room.deliver(
            &counters,
            vec![
                Out {
                    to: To::Everyone,
                    msg: ServerMsg::AudienceCount { count: 100_000 },
                },
                Out {
                    to: To::Participant(Pid(5)),
                    msg: ServerMsg::Moved {
                        participant: Pid(5),
                        to: Place::GreenRoom,
                    },
                },
                // the queue (capacity 1) is full now: the socket is dropped, not blocked on
                Out {
                    to: To::Participant(Pid(5)),
                    msg: ServerMsg::Invited { by: Pid(1) },
                },
            ],
        );
        assert_eq!(counters.serialized.load(Ordering::Relaxed), 3);
        let f = brx.try_recv().expect("broadcast");
        assert_eq!(&*f.json, r#"{"type":"audience_count","count":100000}"#);
        assert!(matches!(rx.try_recv(), Ok(Direct::Frame(f)) if f.kind == "moved"));
        assert_eq!(
            place_from(place.load(Ordering::Relaxed)),
            Place::GreenRoom,
            "the socket filters with its new place"
        );
        assert_eq!(counters.closed_slow.load(Ordering::Relaxed), 1);
        assert!(room.handles.lock().expect("lock").is_empty());
    }

    fn frame(to: To, text: &str, closes: Option<&str>) -> Arc<Frame> {
        Arc::new(Frame {
            to,
            json: Utf8Bytes::from(text.to_string()),
            kind: "chat",
            closes: closes.map(str::to_string),
        })
    }

    fn texts(b: &Batch) -> Vec<&str> {
        b.frames.iter().map(|(_, t)| t.as_str()).collect()
    }

    #[test]
    fn a_broadcast_backlog_is_written_in_bounded_batches_with_direct_frames() {
        let (tx, mut brx) = broadcast::channel(BROADCAST_CAPACITY);
        let (dtx, mut drx) = mpsc::channel(DIRECT_QUEUE);
        let counters = WsCounters::default();
        let place = AtomicU8::new(place_index(Place::Audience));
        let who = (Pid(7), Role::Viewer, &place);
        for i in 0..100 {
            // every third frame is for someone else and is skipped
            let to = if i % 3 == 2 {
                To::Participant(Pid(8))
            } else {
                To::Everyone
            };
            let _ = tx.send(frame(to, &format!("b{i}"), None));
        }
        let _ = dtx.try_send(Direct::Frame(frame(To::Participant(Pid(7)), "d0", None)));
        let mut lags = 0;
        let mut batches = Vec::new();
        loop {
            let mut b = Batch::default();
            fill_batch(&mut b, &mut brx, &mut drx, who, &mut lags, &counters);
            if b.frames.is_empty() {
                break;
            }
            assert!(b.frames.len() <= WRITE_BATCH, "a batch is bounded");
            assert!(b.end.is_none());
            batches.push(texts(&b).join(","));
        }
        let all: Vec<String> = batches
            .iter()
            .flat_map(|b| b.split(','))
            .map(String::from)
            .collect();
        let want: Vec<String> = (0..100)
            .filter(|i| i % 3 != 2)
            .map(|i| format!("b{i}"))
            .chain(["d0".to_string()])
            .collect();
        assert_eq!(
            all, want,
            "every frame for this socket, in order, none twice"
        );
        assert_eq!(
            batches.len(),
            2,
            "67 frames: one full batch of 64, then the rest"
        );
        assert_eq!(lags, 0);
    }

    #[test]
    fn a_closing_frame_ends_the_batch_and_what_follows_is_not_written() {
        let (tx, mut brx) = broadcast::channel(BROADCAST_CAPACITY);
        let (_dtx, mut drx) = mpsc::channel::<Direct>(DIRECT_QUEUE);
        let counters = WsCounters::default();
        let place = AtomicU8::new(place_index(Place::Audience));
        let who = (Pid(7), Role::Viewer, &place);
        let _ = tx.send(frame(To::Everyone, "a", None));
        let _ = tx.send(frame(To::Everyone, "ended", Some("session ended: bye")));
        let _ = tx.send(frame(To::Everyone, "after", None));
        let mut b = Batch::default();
        let mut lags = 0;
        fill_batch(&mut b, &mut brx, &mut drx, who, &mut lags, &counters);
        assert_eq!(texts(&b), ["a", "ended"]);
        assert_eq!(b.end, Some((1000, "session ended: bye".to_string())));
    }

    #[test]
    fn a_lagging_socket_gets_a_notice_then_is_closed_after_max_lags() {
        let (tx, mut brx) = broadcast::channel(4);
        let (_dtx, mut drx) = mpsc::channel::<Direct>(DIRECT_QUEUE);
        let counters = WsCounters::default();
        let place = AtomicU8::new(place_index(Place::Audience));
        let who = (Pid(7), Role::Viewer, &place);
        let mut lags = 0;
        for round in 1..=MAX_LAGS + 1 {
            for i in 0..10 {
                let _ = tx.send(frame(To::Everyone, &format!("r{round}f{i}"), None));
            }
            let mut b = Batch::default();
            fill_batch(&mut b, &mut brx, &mut drx, who, &mut lags, &counters);
            assert_eq!(lags, round);
            if round <= MAX_LAGS {
                assert!(
                    b.frames[0].1.as_str().contains("missed 6 events"),
                    "{:?}",
                    texts(&b)
                );
                // the 4 newest events follow the notice
                assert_eq!(b.frames.len(), 5);
                assert!(b.end.is_none());
            } else {
                assert!(b.frames.is_empty());
                assert_eq!(b.end.as_ref().map(|e| e.0), Some(1013));
            }
        }
        assert_eq!(
            counters.lagged.load(Ordering::Relaxed),
            u64::from(MAX_LAGS + 1)
        );
    }

    #[test]
    fn a_dropped_direct_queue_closes_the_socket_as_too_slow() {
        let (_tx, mut brx) = broadcast::channel::<Arc<Frame>>(BROADCAST_CAPACITY);
        let (dtx, mut drx) = mpsc::channel(DIRECT_QUEUE);
        let counters = WsCounters::default();
        let place = AtomicU8::new(place_index(Place::Audience));
        let who = (Pid(7), Role::Viewer, &place);
        let _ = dtx.try_send(Direct::Frame(frame(To::Participant(Pid(7)), "x", None)));
        drop(dtx);
        let mut b = Batch::default();
        let mut lags = 0;
        fill_batch(&mut b, &mut brx, &mut drx, who, &mut lags, &counters);
        assert_eq!(texts(&b), ["x"]);
        assert_eq!(b.end.as_ref().map(|e| e.0), Some(1013));
    }
}
