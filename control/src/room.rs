//! Sans-IO room state: sessions (WHIP publishers, WHEP viewers), the rooms they belong to, and
//! the engine commands that follow from each change.
//!
//! Driving contract: call a `handle_*`/`create_*` method, then send every returned
//! [`EngineCmd`] to the engine in order. Nothing here touches the engine, a socket or a clock.
//!
//! Mapping media: a viewer's answer reserves its m-lines (one SSRC each, chosen by control). Each
//! viewer m-line of kind K is fed by the room's *current* publisher track of kind K (the oldest
//! publisher still present with a compatible codec): when that publisher leaves, the slot goes
//! quiet and is re-mapped to the next publisher, without renegotiation.

use std::collections::{BTreeMap, HashMap};

use ils_shm::{EncodingSpec, LegSpec, MediaKind, ShortStr, TrackSpec};
use serde::{Deserialize, Serialize};

use crate::dtls::SrtpKeys;
use crate::sdp::{Kind, MediaInfo};

/// Sessions per room (publishers + viewers). Bounds what one room (one token holder) can make
/// the process allocate; a full room answers 503. Memory: ≈ 2 KiB per session.
pub const MAX_SESSIONS_PER_ROOM: usize = 10_000;
/// Rooms per process. Memory: ≈ 200 B per empty room.
pub const MAX_ROOMS: usize = 10_000;
/// Publishers per room (the stage). More are refused with 409.
pub const MAX_PUBLISHERS_PER_ROOM: usize = 25;
/// Publishers per room created through `/ws` (stage + green room + producers' talkback; the
/// session core bounds each place: 25 + 50 + 16 by default). Default 100; more are refused with
/// 409. Bounds the tracks one ILS room can add to every shard.
pub const MAX_ILS_PUBLISHERS_PER_ROOM: usize = 100;
/// Sessions per room created through `/ws`: an ILS audience is far larger than a WHEP room.
/// Default 200 000 (the session core's participant limit, one receiving connection each);
/// a full room answers `limit_reached`. Memory: ≈ 2 KiB per session → ≈ 400 MiB at the limit.
pub const MAX_ILS_SESSIONS_PER_ROOM: usize = 200_000;
/// Sessions whose DTLS handshake has not finished, per process (RELIABILITY D5): offers that
/// never connect cannot pile up; the oldest is reaped after `CONNECT_TIMEOUT_SECS`.
pub const MAX_PENDING_SESSIONS: usize = 1_000;
/// A session that has not finished DTLS within this many seconds is removed.
pub const CONNECT_TIMEOUT_SECS: u64 = 30;

fn top_layer() -> u8 {
    2
}

/// Publisher or viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// WHIP: sends media.
    Publisher,
    /// WHEP: receives media.
    Viewer,
}

/// Connection progress of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Answer sent; waiting for ICE/DTLS.
    Connecting,
    /// DTLS done, keys installed, media flowing.
    Connected,
}

/// One media section of a session, as stored (serializable for restart).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MediaSlot {
    /// m-line mid.
    pub mid: String,
    /// Audio or video.
    pub video: bool,
    /// Codec name ("VP8", "opus", ...).
    pub codec: String,
    /// Negotiated payload type.
    pub pt: u8,
    /// RTX payload type (0 = none).
    pub rtx_pt: u8,
    /// Clock rate.
    pub clock_rate: u32,
    /// Header extension ids: (uri-key, id).
    pub ext: Vec<(String, u8)>,
    /// Publisher: simulcast rids (low → high as offered) and offered SSRCs.
    pub rids: Vec<String>,
    /// Publisher: SSRCs from the offer (media, rtx).
    pub ssrcs: Vec<(u32, u32)>,
    /// Viewer: our SSRC and RTX SSRC on this m-line.
    pub send_ssrc: u32,
    /// Viewer: RTX SSRC (0 = none).
    pub send_rtx_ssrc: u32,
    /// Publisher: engine track id for this m-line.
    pub track: u32,
    /// Viewer: the leg currently feeding this slot: (leg id, track id).
    pub leg: Option<(u32, u32)>,
    /// Viewer: simulcast layer chosen automatically (upgraded as the publisher's layers appear).
    pub layer: u8,
    /// ILS viewer: the publisher session this slot is pinned to by [`Rooms::set_slot`] (fed as
    /// soon as both sides are connected); `None` = the slot stays quiet.
    #[serde(default)]
    pub pin: Option<String>,
    /// ILS viewer: the simulcast layer asked for with [`Rooms::set_slot`] (0 low, 1 mid, 2
    /// high); the leg gets the highest layer the publisher sends that is not above it.
    #[serde(default)]
    pub want_layer: u8,
}

/// A WHIP or WHEP session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// Resource id (the last path segment of the `Location`).
    pub id: String,
    /// Room name.
    pub room: String,
    /// Publisher or viewer.
    pub kind: SessionKind,
    /// Identity from the token.
    pub identity: Option<String>,
    /// Engine shard holding the transport.
    pub shard: usize,
    /// Engine transport id.
    pub transport: u32,
    /// Our ICE credentials for this session.
    pub ice_ufrag: String,
    /// ICE password.
    pub ice_pwd: String,
    /// The client's certificate fingerprint from its offer.
    pub remote_fingerprint: String,
    /// Progress.
    pub state: SessionState,
    /// Media sections.
    pub media: Vec<MediaSlot>,
    /// Unix seconds at creation.
    pub created: u64,
    /// The client's current ICE ufrag (from its offer, then from each ICE restart PATCH); tells
    /// a trickle PATCH (same ufrag) from an ICE restart (new ufrag). Empty in state written
    /// before this field existed (then only `If-Match: *` marks a restart).
    #[serde(default)]
    pub remote_ice_ufrag: String,
    /// ICE restarts done on this session; part of the ETag (RFC 9725 §4.3: a restart yields a
    /// new entity-tag).
    #[serde(default)]
    pub ice_generation: u32,
    /// ILS session (issue 5, `/ws`), set by [`Rooms::mark_ils`]: a viewer's slots are mapped
    /// only by [`Rooms::set_slot`], never automatically; a publisher feeds automatic (WHEP)
    /// viewers only while [`Session::public`] (on stage). `false` for WHIP/WHEP sessions.
    #[serde(default)]
    pub ils: bool,
    /// ILS publisher: on stage, so WHEP viewers of the room may receive it. Green-room
    /// publishers are never auto-attached ([`Rooms::set_public`]).
    #[serde(default)]
    pub public: bool,
    /// WHEP viewer: highest simulcast layer its video legs may get (0 low, 1 mid, 2 high),
    /// from `?layer=` on the WHEP POST ([`Rooms::set_max_layer`]); automatic upgrades stop
    /// there. Default 2 (the top layer the publisher sends).
    #[serde(default = "top_layer")]
    pub max_layer: u8,
}

impl Session {
    /// The entity-tag of the session's ICE state, quoted, as sent in `ETag`: `"<id>"` after the
    /// offer, `"<id>.<n>"` after the n-th ICE restart.
    pub fn etag(&self) -> String {
        if self.ice_generation == 0 {
            format!("\"{}\"", self.id)
        } else {
            format!("\"{}.{}\"", self.id, self.ice_generation)
        }
    }
}

/// What a WHIP/WHEP `PATCH` (`application/trickle-ice-sdpfrag`) asks for, decided sans-IO by
/// [`decide_patch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchDecision {
    /// `If-Match` names an entity-tag that is not the session's current one: 412.
    PreconditionFailed,
    /// Trickled candidates (or the current credentials repeated): nothing to do for an ICE-lite
    /// server, which learns candidates from the checks themselves: 204.
    Trickle,
    /// New client credentials: ICE restart (new server credentials, `RestartIce`): 200.
    Restart,
}

/// Decide a PATCH on session `s`: `frag_ufrag` is the fragment's `a=ice-ufrag` (the parser
/// guarantees `a=ice-pwd` came with it), `if_match` the raw `If-Match` header value, if any.
///
/// `If-Match: *` matches any existing session; otherwise one of the comma-separated entity-tags
/// must equal [`Session::etag`] (strong comparison) or the answer is 412 (RFC 9725 §4.3.1). A
/// restart is a fragment whose ufrag differs from the client's current one (when that is unknown,
/// from old persisted state, a ufrag with `If-Match: *` is taken as a restart, RFC 9725 §4.3.2).
pub fn decide_patch(
    s: &Session,
    frag_ufrag: Option<&str>,
    if_match: Option<&str>,
) -> PatchDecision {
    let star = if_match.is_some_and(|v| v.trim() == "*");
    if let Some(v) = if_match {
        let current = s.etag();
        if !star && !v.split(',').any(|t| t.trim() == current) {
            return PatchDecision::PreconditionFailed;
        }
    }
    match frag_ufrag {
        None => PatchDecision::Trickle,
        Some(_) if s.remote_ice_ufrag.is_empty() => {
            if star {
                PatchDecision::Restart
            } else {
                PatchDecision::Trickle
            }
        }
        Some(u) if u == s.remote_ice_ufrag => PatchDecision::Trickle,
        Some(_) => PatchDecision::Restart,
    }
}

/// New server ICE credentials for a session, prepared by [`Rooms::prepare_ice_restart`] and
/// recorded by [`Rooms::commit_ice_restart`] once the engine accepted the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceRestart {
    /// Session id.
    pub id: String,
    /// Shard holding the transport.
    pub shard: usize,
    /// Engine transport id.
    pub transport: u32,
    /// Our new ufrag (16 hex chars: 64 random bits).
    pub ufrag: String,
    /// Our new password (32 hex chars: 128 random bits).
    pub pwd: String,
}

impl IceRestart {
    /// The engine command that installs the new credentials.
    pub fn command(&self) -> EngineCmd {
        EngineCmd::RestartIce {
            shard: self.shard,
            transport: self.transport,
            ufrag: self.ufrag.clone(),
            pwd: self.pwd.clone(),
        }
    }
}

/// An engine command to send (owned; converted to `ils_shm::Command` at the link).
#[derive(Debug, Clone, PartialEq)]
pub enum EngineCmd {
    /// Create a transport on `shard`.
    AddTransport {
        /// Shard.
        shard: usize,
        /// Transport id.
        transport: u32,
        /// Local ufrag.
        ufrag: String,
        /// Local password.
        pwd: String,
    },
    /// Remove a transport (its legs go with it in the engine).
    RemoveTransport {
        /// Shard.
        shard: usize,
        /// Transport id.
        transport: u32,
    },
    /// Install SRTP keys (we are the DTLS server: rx = client write key).
    InstallSrtp {
        /// Shard.
        shard: usize,
        /// Transport id.
        transport: u32,
        /// Keys.
        keys: SrtpKeys,
    },
    /// Add a track on every shard.
    AddTrack(TrackSpec),
    /// Remove a track on every shard.
    RemoveTrack {
        /// Track id.
        track: u32,
    },
    /// Add a leg on the viewer's shard.
    AddLeg {
        /// Shard.
        shard: usize,
        /// Leg.
        spec: LegSpec,
    },
    /// Remove a leg.
    RemoveLeg {
        /// Shard.
        shard: usize,
        /// Leg id.
        leg: u32,
    },
    /// ICE restart: replace the transport's local ICE credentials (keys, tracks, legs stay).
    RestartIce {
        /// Shard.
        shard: usize,
        /// Transport id.
        transport: u32,
        /// New local ufrag.
        ufrag: String,
        /// New local password.
        pwd: String,
    },
    /// Change a leg's simulcast layer.
    SelectLayer {
        /// Shard.
        shard: usize,
        /// Leg id.
        leg: u32,
        /// Layer.
        layer: u8,
    },
}

/// Why a session could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// Too many rooms, sessions or pending handshakes.
    #[error("server at capacity: {0}; try again later")]
    Capacity(&'static str),
    /// The stage is full.
    #[error("room already has {MAX_PUBLISHERS_PER_ROOM} publishers")]
    StageFull,
    /// Unknown session.
    #[error("no such session")]
    UnknownSession,
    /// A slot operation on a session that is not an ILS viewer (or a publisher that is not a
    /// publisher of the same room).
    #[error("not an ILS subscriber session of this room: slots are only mapped on /ws subscribe sessions")]
    NotIls,
    /// The viewer has no m-line with this mid.
    #[error("no slot with this mid in the subscriber session")]
    UnknownSlot,
    /// The publisher has no track of the slot's kind and codec.
    #[error("the publisher sends no track of this slot's kind and codec")]
    Incompatible,
}

impl RoomError {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            RoomError::Capacity(_) => 503,
            RoomError::StageFull => 409,
            RoomError::UnknownSession | RoomError::UnknownSlot => 404,
            RoomError::NotIls | RoomError::Incompatible => 409,
        }
    }
}

/// What a new session needs before its SDP answer can be written.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// Session id.
    pub id: String,
    /// Shard.
    pub shard: usize,
    /// Transport id.
    pub transport: u32,
    /// ICE ufrag.
    pub ice_ufrag: String,
    /// ICE password.
    pub ice_pwd: String,
}

/// Persistent counters so ids stay unique across control restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IdCounters {
    /// Next transport id.
    pub transport: u32,
    /// Next track id.
    pub track: u32,
    /// Next leg id.
    pub leg: u32,
    /// Next SSRC seed.
    pub ssrc: u32,
}

/// All rooms and sessions of this control process.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Rooms {
    sessions: BTreeMap<String, Session>,
    ids: IdCounters,
    #[serde(skip)]
    shard_load: Vec<usize>,
    /// Active simulcast layers per publisher track, as last reported by the engine.
    #[serde(skip)]
    layers_active: HashMap<u32, u8>,
    /// Per room: (sessions, publishers), kept with every insert/remove so that admission is
    /// O(1) however many sessions a room has (an ILS audience: 100 000).
    #[serde(skip)]
    counts: HashMap<String, (usize, usize)>,
    /// Sessions in [`SessionState::Connecting`].
    #[serde(skip)]
    pending: usize,
}

fn ext_pairs(e: &crate::sdp::ExtIds) -> Vec<(String, u8)> {
    [
        ("mid", e.mid),
        ("rid", e.rid),
        ("rrid", e.rrid),
        ("abs_send_time", e.abs_send_time),
        ("twcc", e.twcc),
        ("audio_level", e.audio_level),
        ("dependency_descriptor", e.dependency_descriptor),
        ("video_orientation", e.video_orientation),
        ("toffset", e.toffset),
        ("playout_delay", e.playout_delay),
    ]
    .into_iter()
    .filter(|(_, id)| *id != 0)
    .map(|(n, id)| (n.to_string(), id))
    .collect()
}

fn ext_id(slot: &MediaSlot, name: &str) -> u8 {
    slot.ext
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, id)| *id)
}

fn codec_number(name: &str) -> u8 {
    match name.to_ascii_lowercase().as_str() {
        "opus" => 0,
        "vp8" => 1,
        "vp9" => 2,
        "h264" => 3,
        "av1" => 4,
        _ => 255,
    }
}

fn short(s: &str) -> ShortStr {
    ShortStr::from_bytes(s.as_bytes()).unwrap_or_default()
}

impl Rooms {
    /// Empty state for an engine with `shards` shards.
    pub fn new(shards: usize) -> Self {
        Rooms {
            sessions: BTreeMap::new(),
            ids: IdCounters {
                transport: 1,
                track: 1,
                leg: 1,
                ssrc: 0x1000_0000,
            },
            shard_load: vec![0; shards.max(1)],
            layers_active: HashMap::new(),
            counts: HashMap::new(),
            pending: 0,
        }
    }

    /// Recompute [`Rooms::counts`] and [`Rooms::pending`] from the sessions.
    fn recount(&mut self) {
        self.counts.clear();
        self.pending = 0;
        for s in self.sessions.values() {
            let e = self.counts.entry(s.room.clone()).or_default();
            e.0 += 1;
            if s.kind == SessionKind::Publisher {
                e.1 += 1;
            }
            if s.state == SessionState::Connecting {
                self.pending += 1;
            }
        }
    }

    /// Restore from persisted JSON (control restart). Sessions still connecting are dropped
    /// (their DTLS handshake died with the previous process); the returned commands remove
    /// their transports. `live_transports` are the transports the engine still has.
    pub fn restore(json: &str, shards: usize, live_transports: &[u32]) -> (Self, Vec<EngineCmd>) {
        let mut r: Rooms = serde_json::from_str(json).unwrap_or_else(|_| Rooms::new(shards));
        r.shard_load = vec![0; shards.max(1)];
        let mut cmds = Vec::new();
        let ids: Vec<String> = r.sessions.keys().cloned().collect();
        for id in ids {
            let keep = r.sessions.get(&id).is_some_and(|s| {
                s.state == SessionState::Connected
                    && s.shard < shards
                    && live_transports.contains(&s.transport)
            });
            if !keep {
                cmds.extend(r.remove_session(&id).unwrap_or_default());
            }
        }
        for s in r.sessions.values() {
            if let Some(l) = r.shard_load.get_mut(s.shard) {
                *l += 1;
            }
        }
        r.recount();
        (r, cmds)
    }

    /// Serialize for persistence. ILS (`/ws`) sessions are left out: their session state and
    /// sockets die with the process, so a restarted control must not keep their media (the
    /// engine transports nobody knows are removed at start-up); and a 100 000-viewer audience
    /// must not make every persist serialize 100 000 sessions.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Persisted<'a> {
            sessions: BTreeMap<&'a str, &'a Session>,
            ids: &'a IdCounters,
        }
        let view = Persisted {
            sessions: self
                .sessions
                .iter()
                .filter(|(_, s)| !s.ils)
                .map(|(k, v)| (k.as_str(), v))
                .collect(),
            ids: &self.ids,
        };
        serde_json::to_string(&view).unwrap_or_default()
    }

    /// All sessions.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// One session.
    pub fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// Room names with their sessions.
    pub fn rooms(&self) -> BTreeMap<&str, Vec<&Session>> {
        let mut m: BTreeMap<&str, Vec<&Session>> = BTreeMap::new();
        for s in self.sessions.values() {
            m.entry(s.room.as_str()).or_default().push(s);
        }
        m
    }

    /// Session owning engine transport `transport`.
    pub fn by_transport(&self, transport: u32) -> Option<&Session> {
        self.sessions.values().find(|s| s.transport == transport)
    }

    /// Reserve a shard, a transport and ICE credentials for a new session (before the SDP
    /// answer is written). Checks capacity; nothing is recorded until [`Rooms::create_session`].
    pub fn allocate(
        &mut self,
        room: &str,
        kind: SessionKind,
        rand_bytes: &dyn Fn(&mut [u8]),
    ) -> Result<Allocation, RoomError> {
        self.allocate_with_limit(
            room,
            kind,
            rand_bytes,
            MAX_SESSIONS_PER_ROOM,
            MAX_PUBLISHERS_PER_ROOM,
        )
    }

    /// [`Rooms::allocate`] for an ILS (`/ws`) session: publishers are bounded by
    /// [`MAX_ILS_PUBLISHERS_PER_ROOM`] (green room and producers publish too), not by the
    /// WHIP stage size.
    pub fn allocate_ils(
        &mut self,
        room: &str,
        kind: SessionKind,
        rand_bytes: &dyn Fn(&mut [u8]),
    ) -> Result<Allocation, RoomError> {
        self.allocate_with_limit(
            room,
            kind,
            rand_bytes,
            MAX_ILS_SESSIONS_PER_ROOM,
            MAX_ILS_PUBLISHERS_PER_ROOM,
        )
    }

    fn allocate_with_limit(
        &mut self,
        room: &str,
        kind: SessionKind,
        rand_bytes: &dyn Fn(&mut [u8]),
        max_sessions: usize,
        max_publishers: usize,
    ) -> Result<Allocation, RoomError> {
        let (room_sessions, pubs) = self.counts.get(room).copied().unwrap_or((0, 0));
        if room_sessions == 0 && self.counts.len() >= MAX_ROOMS {
            return Err(RoomError::Capacity("too many rooms"));
        }
        if room_sessions >= max_sessions {
            return Err(RoomError::Capacity("room is full"));
        }
        if kind == SessionKind::Publisher && pubs >= max_publishers {
            return Err(RoomError::StageFull);
        }
        if self.pending >= MAX_PENDING_SESSIONS {
            return Err(RoomError::Capacity("too many sessions connecting"));
        }
        let shard = self
            .shard_load
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| **l)
            .map_or(0, |(i, _)| i);
        let transport = self.ids.transport;
        self.ids.transport = self.ids.transport.wrapping_add(1).max(1);
        let mut b = [0u8; 24];
        rand_bytes(&mut b);
        // ICE chars are ALPHA / DIGIT / "+" / "/": hex is a subset.
        let hex = |x: &[u8]| x.iter().map(|v| format!("{v:02x}")).collect::<String>();
        Ok(Allocation {
            id: hex(&b[..8]),
            shard,
            transport,
            ice_ufrag: hex(&b[8..12]),
            ice_pwd: hex(&b[12..24]),
        })
    }

    /// Record the client's ICE ufrag from its offer (tells trickle from restart in a PATCH).
    pub fn set_remote_ice_ufrag(&mut self, id: &str, ufrag: &str) {
        if let Some(s) = self.sessions.get_mut(id) {
            s.remote_ice_ufrag = ufrag.to_string();
        }
    }

    /// Generate new server ICE credentials for session `id` (nothing is recorded yet: if the
    /// engine cannot take the command, the session keeps its current ICE state, RFC 9725 §4.3.2).
    pub fn prepare_ice_restart(
        &self,
        id: &str,
        rand_bytes: &dyn Fn(&mut [u8]),
    ) -> Result<IceRestart, RoomError> {
        let s = self.sessions.get(id).ok_or(RoomError::UnknownSession)?;
        let mut b = [0u8; 24];
        rand_bytes(&mut b);
        let hex = |x: &[u8]| x.iter().map(|v| format!("{v:02x}")).collect::<String>();
        let mut ufrag = hex(&b[..8]);
        if ufrag == s.ice_ufrag {
            // A broken RNG repeating itself must not yield a "restart" to the same ufrag.
            ufrag.replace_range(..1, if ufrag.starts_with('0') { "1" } else { "0" });
        }
        Ok(IceRestart {
            id: s.id.clone(),
            shard: s.shard,
            transport: s.transport,
            ufrag,
            pwd: hex(&b[8..24]),
        })
    }

    /// The engine took the restart: record our new credentials and the client's new ufrag, and
    /// bump the session's entity-tag. Returns the new ETag.
    pub fn commit_ice_restart(
        &mut self,
        r: &IceRestart,
        remote_ufrag: &str,
    ) -> Result<String, RoomError> {
        let s = self
            .sessions
            .get_mut(&r.id)
            .ok_or(RoomError::UnknownSession)?;
        s.ice_ufrag = r.ufrag.clone();
        s.ice_pwd = r.pwd.clone();
        s.remote_ice_ufrag = remote_ufrag.to_string();
        s.ice_generation = s.ice_generation.wrapping_add(1).max(1);
        Ok(s.etag())
    }

    /// A fresh SSRC for a viewer m-line.
    pub fn next_ssrc(&mut self) -> u32 {
        self.ids.ssrc = self.ids.ssrc.wrapping_add(1).max(1);
        self.ids.ssrc
    }

    /// Record a session whose answer was produced; returns the commands creating its transport.
    #[allow(clippy::too_many_arguments)]
    pub fn create_session(
        &mut self,
        a: &Allocation,
        room: &str,
        kind: SessionKind,
        identity: Option<String>,
        remote_fingerprint: String,
        media: &[MediaInfo],
        now_unix: u64,
    ) -> Vec<EngineCmd> {
        let mut slots = Vec::new();
        for m in media {
            let track = if kind == SessionKind::Publisher {
                let t = self.ids.track;
                self.ids.track = self.ids.track.wrapping_add(1).max(1);
                t
            } else {
                0
            };
            slots.push(MediaSlot {
                mid: m.mid.clone(),
                video: m.kind == Kind::Video,
                codec: m.codec.name.clone(),
                pt: m.codec.pt,
                rtx_pt: m.codec.rtx_pt.unwrap_or(0),
                clock_rate: m.codec.clock_rate,
                ext: ext_pairs(&m.ext),
                rids: m.rids.clone(),
                ssrcs: m.ssrcs.iter().map(|(s, r)| (*s, r.unwrap_or(0))).collect(),
                send_ssrc: m.send_ssrc.unwrap_or(0),
                send_rtx_ssrc: m.send_rtx_ssrc.unwrap_or(0),
                track,
                leg: None,
                layer: 0,
                pin: None,
                want_layer: 0,
            });
        }
        let s = Session {
            id: a.id.clone(),
            room: room.to_string(),
            kind,
            identity,
            shard: a.shard,
            transport: a.transport,
            ice_ufrag: a.ice_ufrag.clone(),
            ice_pwd: a.ice_pwd.clone(),
            remote_fingerprint,
            state: SessionState::Connecting,
            media: slots,
            created: now_unix,
            remote_ice_ufrag: String::new(),
            ice_generation: 0,
            ils: false,
            public: false,
            max_layer: 2,
        };
        if let Some(l) = self.shard_load.get_mut(a.shard) {
            *l += 1;
        }
        if self.sessions.insert(a.id.clone(), s).is_some() {
            // A repeated id (broken RNG) replaced a session: recount instead of adding.
            self.recount();
        } else {
            let e = self.counts.entry(room.to_string()).or_default();
            e.0 += 1;
            if kind == SessionKind::Publisher {
                e.1 += 1;
            }
            self.pending += 1;
        }
        vec![EngineCmd::AddTransport {
            shard: a.shard,
            transport: a.transport,
            ufrag: a.ice_ufrag.clone(),
            pwd: a.ice_pwd.clone(),
        }]
    }

    fn track_spec(&self, s: &Session, m: &MediaSlot) -> TrackSpec {
        let mut encodings = [EncodingSpec::default(); 3];
        let n = if m.rids.is_empty() {
            if let Some((ssrc, rtx)) = m.ssrcs.first() {
                encodings[0].ssrc = *ssrc;
                encodings[0].rtx_ssrc = *rtx;
            }
            1
        } else {
            for (i, r) in m.rids.iter().take(3).enumerate() {
                encodings[i].rid = short(r);
            }
            m.rids.len().min(3)
        };
        TrackSpec {
            track: m.track,
            transport: s.transport,
            home_shard: s.shard as u16,
            kind: if m.video {
                MediaKind::Video
            } else {
                MediaKind::Audio
            },
            codec: codec_number(&m.codec),
            clock_rate: m.clock_rate,
            pt: m.pt & 0x7f,
            rtx_pt: m.rtx_pt & 0x7f,
            mid: short(&m.mid),
            mid_ext: ext_id(m, "mid"),
            rid_ext: ext_id(m, "rid"),
            // byte 20: repaired-RID on video, the RFC 6464 audio-level ext id on audio (ABI 3)
            rrid_ext: if m.video {
                ext_id(m, "rrid")
            } else {
                ext_id(m, "audio_level")
            },
            twcc_ext: ext_id(m, "twcc"),
            n_encodings: n as u8,
            encodings,
        }
    }

    /// The publisher track (session, slot index) that should feed a viewer slot of this kind
    /// and codec: the oldest connected publisher in the room with such a track.
    /// The publisher track (session, slot index) that should feed a viewer slot of this kind
    /// and codec: publishers oldest first, their tracks in m-line order, skipping tracks this
    /// viewer already receives — so a viewer with several slots gets several publishers.
    fn feeder(
        &self,
        room: &str,
        video: bool,
        codec: &str,
        taken: &[u32],
    ) -> Option<(String, usize)> {
        let mut pubs: Vec<&Session> = self
            .sessions
            .values()
            .filter(|p| {
                p.room == room
                    && p.kind == SessionKind::Publisher
                    && p.state == SessionState::Connected
                    && (!p.ils || p.public)
            })
            .collect();
        pubs.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        pubs.into_iter().find_map(|p| {
            p.media
                .iter()
                .position(|m| {
                    m.video == video
                        && m.codec.eq_ignore_ascii_case(codec)
                        && !taken.contains(&m.track)
                })
                .map(|i| (p.id.clone(), i))
        })
    }

    fn leg_for(&mut self, transport: u32, slot: &MediaSlot, feeder: &MediaSlot) -> LegSpec {
        let leg = self.ids.leg;
        self.ids.leg = self.ids.leg.wrapping_add(1).max(1);
        let mut ext_map = [(0u8, 0u8); 16];
        let mut n = 0;
        for (name, from) in &feeder.ext {
            let to = ext_id(slot, name);
            if to != 0 && n < ext_map.len() && !matches!(name.as_str(), "rid" | "rrid" | "twcc") {
                ext_map[n] = (*from, to);
                n += 1;
            }
        }
        let layer = if feeder.rids.is_empty() {
            0
        } else {
            slot.layer
        };
        LegSpec {
            leg,
            track: feeder.track,
            transport,
            ssrc: slot.send_ssrc,
            rtx_ssrc: if slot.rtx_pt != 0 {
                slot.send_rtx_ssrc
            } else {
                0
            },
            pt: slot.pt & 0x7f,
            rtx_pt: if slot.send_rtx_ssrc != 0 {
                slot.rtx_pt & 0x7f
            } else {
                0
            },
            layer,
            twcc_ext: ext_id(slot, "twcc"),
            n_ext_map: n as u8,
            ext_map,
        }
    }

    /// Map every unfed slot of `viewer_id` to the room's current publisher tracks.
    fn feed_viewer(&mut self, viewer_id: &str) -> Vec<EngineCmd> {
        let mut cmds = Vec::new();
        let Some(v) = self.sessions.get(viewer_id).cloned() else {
            return cmds;
        };
        if v.state != SessionState::Connected || v.kind != SessionKind::Viewer || v.ils {
            return cmds;
        }
        let mut taken: Vec<u32> = v
            .media
            .iter()
            .filter_map(|m| m.leg.map(|(_, t)| t))
            .collect();
        for (i, slot) in v.media.iter().enumerate() {
            if slot.leg.is_some() {
                continue;
            }
            let Some((pid, mi)) = self.feeder(&v.room, slot.video, &slot.codec, &taken) else {
                continue;
            };
            let Some(feeder) = self
                .sessions
                .get(&pid)
                .and_then(|p| p.media.get(mi))
                .cloned()
            else {
                continue;
            };
            // Start at the highest layer the publisher is known to send (upgrades after that
            // come from `handle_track_layers`, which only acts when the count changes).
            let mut slot = slot.clone();
            if let Some(n) = self.layers_active.get(&feeder.track) {
                slot.layer = slot.layer.max(n.saturating_sub(1).min(v.max_layer.min(2)));
            }
            let spec = self.leg_for(v.transport, &slot, &feeder);
            if let Some(s) = self
                .sessions
                .get_mut(viewer_id)
                .and_then(|s| s.media.get_mut(i))
            {
                s.leg = Some((spec.leg, spec.track));
                s.layer = slot.layer;
            }
            taken.push(spec.track);
            cmds.push(EngineCmd::AddLeg {
                shard: v.shard,
                spec,
            });
        }
        cmds
    }

    /// Make `id` an ILS session (issue 5, `/ws`): call right after [`Rooms::create_session`],
    /// before it connects. A viewer's slots are then mapped only by [`Rooms::set_slot`]; a
    /// publisher starts private (green room: no WHEP viewer is fed from it until
    /// [`Rooms::set_public`]).
    pub fn mark_ils(&mut self, id: &str) -> Result<(), RoomError> {
        let s = self.sessions.get_mut(id).ok_or(RoomError::UnknownSession)?;
        s.ils = true;
        s.public = false;
        Ok(())
    }

    /// An ILS publisher went on stage (`public = true`: WHEP viewers of the room may be fed from
    /// it, as from any WHIP publisher) or off it (`false`: every automatic WHEP leg from its
    /// tracks is removed and those slots re-fed from the next public publisher). ILS subscriber
    /// slots are not touched: they follow [`Rooms::set_slot`].
    pub fn set_public(&mut self, id: &str, public: bool) -> Result<Vec<EngineCmd>, RoomError> {
        let s = self.sessions.get_mut(id).ok_or(RoomError::UnknownSession)?;
        if !s.ils || s.kind != SessionKind::Publisher {
            return Err(RoomError::NotIls);
        }
        if s.public == public {
            return Ok(Vec::new());
        }
        s.public = public;
        let room = s.room.clone();
        let tracks: Vec<u32> = s.media.iter().map(|m| m.track).collect();
        let mut cmds = Vec::new();
        let viewers: Vec<String> = self
            .sessions
            .values()
            .filter(|v| v.room == room && v.kind == SessionKind::Viewer && !v.ils)
            .map(|v| v.id.clone())
            .collect();
        if !public {
            for vid in &viewers {
                if let Some(v) = self.sessions.get_mut(vid) {
                    for slot in &mut v.media {
                        if let Some((leg, t)) = slot.leg {
                            if tracks.contains(&t) {
                                cmds.push(EngineCmd::RemoveLeg {
                                    shard: v.shard,
                                    leg,
                                });
                                slot.leg = None;
                                slot.layer = 0;
                            }
                        }
                    }
                }
            }
        }
        for vid in &viewers {
            cmds.extend(self.feed_viewer(vid));
        }
        Ok(cmds)
    }

    /// Map the slot `mid` of ILS subscriber `viewer_id` to publisher `publisher_id` (its track
    /// of the slot's kind and codec) at simulcast layer `layer` (0 low, 1 mid, 2 high; the
    /// highest active layer not above it is used), or unmap it (`None`: the slot goes quiet).
    /// No renegotiation: the viewer's SSRC/payload type stay, the engine leg changes. A pin to a
    /// publisher that has not connected yet takes effect when it does (and is dropped when it
    /// leaves). Same pin with another layer: one `SelectLayer`.
    pub fn set_slot(
        &mut self,
        viewer_id: &str,
        mid: &str,
        feed: Option<(&str, u8)>,
    ) -> Result<Vec<EngineCmd>, RoomError> {
        let v = self
            .sessions
            .get(viewer_id)
            .ok_or(RoomError::UnknownSession)?;
        if !v.ils || v.kind != SessionKind::Viewer {
            return Err(RoomError::NotIls);
        }
        let i = v
            .media
            .iter()
            .position(|m| m.mid == mid)
            .ok_or(RoomError::UnknownSlot)?;
        let slot = &v.media[i];
        if let Some((pid, _)) = feed {
            let p = self.sessions.get(pid).ok_or(RoomError::UnknownSession)?;
            if p.kind != SessionKind::Publisher || p.room != v.room {
                return Err(RoomError::NotIls);
            }
            if !p
                .media
                .iter()
                .any(|m| m.video == slot.video && m.codec.eq_ignore_ascii_case(&slot.codec))
            {
                return Err(RoomError::Incompatible);
            }
        }
        let want = feed.map(|(p, l)| (p.to_string(), l.min(2)));
        let mut cmds = Vec::new();
        if let (Some((pid, layer)), Some(cur)) = (&want, slot.pin.as_ref()) {
            if pid == cur {
                let top = slot
                    .leg
                    .and_then(|(_, t)| self.layers_active.get(&t).copied())
                    .unwrap_or(1)
                    .saturating_sub(1)
                    .min(2);
                let eff = (*layer).min(top);
                let shard = v.shard;
                let s = &mut self
                    .sessions
                    .get_mut(viewer_id)
                    .ok_or(RoomError::UnknownSession)?
                    .media[i];
                s.want_layer = *layer;
                if let Some((leg, _)) = s.leg {
                    if s.video && s.layer != eff {
                        s.layer = eff;
                        cmds.push(EngineCmd::SelectLayer {
                            shard,
                            leg,
                            layer: eff,
                        });
                    }
                }
                return Ok(cmds);
            }
        }
        let shard = v.shard;
        let s = &mut self
            .sessions
            .get_mut(viewer_id)
            .ok_or(RoomError::UnknownSession)?
            .media[i];
        if let Some((leg, _)) = s.leg.take() {
            cmds.push(EngineCmd::RemoveLeg { shard, leg });
        }
        s.layer = 0;
        s.pin = want.as_ref().map(|(p, _)| p.clone());
        s.want_layer = want.as_ref().map_or(0, |(_, l)| *l);
        cmds.extend(self.feed_pins(viewer_id));
        Ok(cmds)
    }

    /// Legs for every pinned, unfed slot of ILS viewer `viewer_id` whose publisher is connected.
    fn feed_pins(&mut self, viewer_id: &str) -> Vec<EngineCmd> {
        let mut cmds = Vec::new();
        // Only the pinned, unfed slots are copied (this runs for every subscriber of a
        // 100 000-viewer audience on a stage change).
        let Some((shard, transport, todo)) = self.sessions.get(viewer_id).and_then(|v| {
            (v.ils && v.kind == SessionKind::Viewer && v.state == SessionState::Connected).then(
                || {
                    let todo: Vec<(usize, MediaSlot)> = v
                        .media
                        .iter()
                        .enumerate()
                        .filter(|(_, m)| m.leg.is_none() && m.pin.is_some())
                        .map(|(i, m)| (i, m.clone()))
                        .collect();
                    (v.shard, v.transport, todo)
                },
            )
        }) else {
            return cmds;
        };
        for (i, slot) in todo {
            let Some(pid) = slot.pin.as_ref() else {
                continue;
            };
            let Some(feeder) = self
                .sessions
                .get(pid)
                .filter(|p| p.state == SessionState::Connected)
                .and_then(|p| {
                    p.media.iter().find(|m| {
                        m.video == slot.video && m.codec.eq_ignore_ascii_case(&slot.codec)
                    })
                })
                .cloned()
            else {
                continue;
            };
            let top = self
                .layers_active
                .get(&feeder.track)
                .copied()
                .unwrap_or(1)
                .saturating_sub(1)
                .min(2);
            let mut slot = slot.clone();
            slot.layer = slot.want_layer.min(top);
            let spec = self.leg_for(transport, &slot, &feeder);
            if let Some(s) = self
                .sessions
                .get_mut(viewer_id)
                .and_then(|s| s.media.get_mut(i))
            {
                s.leg = Some((spec.leg, spec.track));
                s.layer = spec.layer;
            }
            cmds.push(EngineCmd::AddLeg { shard, spec });
        }
        cmds
    }

    /// DTLS finished for `id`: install keys, publish its tracks / feed it.
    pub fn handle_connected(
        &mut self,
        id: &str,
        keys: SrtpKeys,
    ) -> Result<Vec<EngineCmd>, RoomError> {
        let s = self.sessions.get_mut(id).ok_or(RoomError::UnknownSession)?;
        if s.state == SessionState::Connecting {
            self.pending = self.pending.saturating_sub(1);
        }
        s.state = SessionState::Connected;
        let s = s.clone();
        let mut cmds = vec![EngineCmd::InstallSrtp {
            shard: s.shard,
            transport: s.transport,
            keys,
        }];
        match s.kind {
            SessionKind::Publisher => {
                for m in &s.media {
                    cmds.push(EngineCmd::AddTrack(self.track_spec(&s, m)));
                }
                let viewers: Vec<String> = self
                    .sessions
                    .values()
                    .filter(|v| v.room == s.room && v.kind == SessionKind::Viewer)
                    .map(|v| v.id.clone())
                    .collect();
                for v in viewers {
                    cmds.extend(self.feed_viewer(&v));
                    cmds.extend(self.feed_pins(&v));
                }
            }
            SessionKind::Viewer => {
                cmds.extend(self.feed_viewer(id));
                cmds.extend(self.feed_pins(id));
            }
        }
        Ok(cmds)
    }

    /// Cap a WHEP viewer's video at simulcast layer `max_layer` (0 low, 1 mid, 2 high; larger
    /// values are 2). Call before its DTLS completes (no leg exists yet), as the WHEP handler
    /// does for `?layer=`.
    pub fn set_max_layer(&mut self, id: &str, max_layer: u8) -> Result<(), RoomError> {
        let s = self.sessions.get_mut(id).ok_or(RoomError::UnknownSession)?;
        s.max_layer = max_layer.min(2);
        Ok(())
    }

    /// The engine reports the publisher's track now has `layers_active` encodings: move
    /// automatically-placed viewer legs up to the highest one.
    ///
    /// ILS slots ([`Rooms::set_slot`]) follow their asked-for layer instead: the highest active
    /// layer not above it, up or down as layers appear and disappear.
    pub fn handle_track_layers(&mut self, track: u32, layers_active: u8) -> Vec<EngineCmd> {
        let mut cmds = Vec::new();
        if self.layers_active.insert(track, layers_active) == Some(layers_active) {
            // Unchanged (the engine reports every interval): legs added since then already
            // started at this layer; nothing to walk (100 000 ILS viewers × slots).
            return cmds;
        }
        let top = layers_active.saturating_sub(1).min(2);
        for v in self.sessions.values_mut().filter(|v| v.ils) {
            for slot in &mut v.media {
                if let Some((leg, t)) = slot.leg {
                    let want = slot.want_layer.min(top);
                    if t == track && slot.video && layers_active > 0 && slot.layer != want {
                        slot.layer = want;
                        cmds.push(EngineCmd::SelectLayer {
                            shard: v.shard,
                            leg,
                            layer: want,
                        });
                    }
                }
            }
        }
        if layers_active < 2 {
            return cmds;
        }
        for v in self.sessions.values_mut() {
            if v.kind != SessionKind::Viewer || v.ils {
                continue;
            }
            let target = top.min(v.max_layer);
            for slot in &mut v.media {
                if let Some((leg, t)) = slot.leg {
                    if t == track && slot.video && slot.layer < target {
                        slot.layer = target;
                        cmds.push(EngineCmd::SelectLayer {
                            shard: v.shard,
                            leg,
                            layer: target,
                        });
                    }
                }
            }
        }
        cmds
    }

    /// Remove a session (DELETE, consent lost, failed DTLS, timeout): its transport, its tracks
    /// (publisher) and every leg they fed; viewers it fed are re-mapped to the next publisher.
    pub fn remove_session(&mut self, id: &str) -> Result<Vec<EngineCmd>, RoomError> {
        let s = self.sessions.remove(id).ok_or(RoomError::UnknownSession)?;
        if let Some(l) = self.shard_load.get_mut(s.shard) {
            *l = l.saturating_sub(1);
        }
        if s.state == SessionState::Connecting {
            self.pending = self.pending.saturating_sub(1);
        }
        if let Some(e) = self.counts.get_mut(&s.room) {
            e.0 = e.0.saturating_sub(1);
            if s.kind == SessionKind::Publisher {
                e.1 = e.1.saturating_sub(1);
            }
            if e.0 == 0 {
                self.counts.remove(&s.room);
            }
        }
        let mut cmds = Vec::new();
        let mut refeed = Vec::new();
        if s.kind == SessionKind::Publisher {
            let tracks: Vec<u32> = s.media.iter().map(|m| m.track).collect();
            for t in &tracks {
                self.layers_active.remove(t);
            }
            for v in self.sessions.values_mut() {
                for slot in &mut v.media {
                    if slot.pin.as_deref() == Some(id) {
                        slot.pin = None;
                    }
                    if let Some((leg, t)) = slot.leg {
                        if tracks.contains(&t) {
                            cmds.push(EngineCmd::RemoveLeg {
                                shard: v.shard,
                                leg,
                            });
                            slot.leg = None;
                            slot.layer = 0;
                            refeed.push(v.id.clone());
                        }
                    }
                }
            }
            for t in tracks {
                cmds.push(EngineCmd::RemoveTrack { track: t });
            }
        }
        cmds.push(EngineCmd::RemoveTransport {
            shard: s.shard,
            transport: s.transport,
        });
        refeed.dedup();
        for v in refeed {
            cmds.extend(self.feed_viewer(&v));
        }
        Ok(cmds)
    }

    /// Sessions still connecting after the timeout (to be removed).
    pub fn expired(&self, now_unix: u64) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| {
                s.state == SessionState::Connecting
                    && now_unix.saturating_sub(s.created) > CONNECT_TIMEOUT_SECS
            })
            .map(|s| s.id.clone())
            .collect()
    }

    /// The engine restarted: every transport is gone. Forget all sessions (clients reconnect).
    pub fn handle_engine_restart(&mut self) -> Vec<Session> {
        let gone: Vec<Session> = std::mem::take(&mut self.sessions).into_values().collect();
        self.shard_load.iter_mut().for_each(|l| *l = 0);
        self.recount();
        gone
    }

    /// Codec names of the room's current publisher (to prefer in a viewer's answer).
    pub fn publisher_codecs(&self, room: &str) -> (Vec<String>, Vec<String>) {
        let mut video = Vec::new();
        let mut audio = Vec::new();
        let mut pubs: Vec<&Session> = self
            .sessions
            .values()
            .filter(|p| p.room == room && p.kind == SessionKind::Publisher)
            .collect();
        pubs.sort_by_key(|p| p.created);
        for p in pubs {
            for m in &p.media {
                let list = if m.video { &mut video } else { &mut audio };
                if !list.contains(&m.codec) {
                    list.push(m.codec.clone());
                }
            }
        }
        (video, audio)
    }

    /// Count sessions by shard (for tests and stats).
    pub fn shard_load(&self) -> &[usize] {
        &self.shard_load
    }

    /// Per-room counts.
    pub fn room_counts(&self) -> HashMap<String, (usize, usize)> {
        let mut m: HashMap<String, (usize, usize)> = HashMap::new();
        for s in self.sessions.values() {
            let e = m.entry(s.room.clone()).or_default();
            match s.kind {
                SessionKind::Publisher => e.0 += 1,
                SessionKind::Viewer => e.1 += 1,
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::{Codec, ExtIds};

    fn media(
        mid: &str,
        kind: Kind,
        codec: &str,
        pt: u8,
        rids: &[&str],
        send: Option<u32>,
    ) -> MediaInfo {
        MediaInfo {
            mid: mid.into(),
            kind,
            codec: Codec {
                name: codec.into(),
                pt,
                clock_rate: if kind == Kind::Video { 90_000 } else { 48_000 },
                channels: None,
                fmtp: None,
                rtx_pt: (kind == Kind::Video).then_some(pt + 1),
                rtcp_fb: vec![],
            },
            ext: ExtIds {
                mid: 4,
                rid: if rids.is_empty() { 0 } else { 10 },
                rrid: if rids.is_empty() { 0 } else { 11 },
                audio_level: if kind == Kind::Audio { 1 } else { 0 },
                twcc: 3,
                ..ExtIds::default()
            },
            rids: rids.iter().map(|r| r.to_string()).collect(),
            ssrcs: vec![],
            send_ssrc: send,
            send_rtx_ssrc: send.map(|s| s + 1),
        }
    }

    fn keys() -> SrtpKeys {
        SrtpKeys {
            profile: 7,
            client_key: vec![1; 16],
            client_salt: vec![2; 12],
            server_key: vec![3; 16],
            server_salt: vec![4; 12],
        }
    }

    fn rnd(seed: u8) -> impl Fn(&mut [u8]) {
        move |b: &mut [u8]| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = seed.wrapping_mul(31).wrapping_add(i as u8);
            }
        }
    }

    fn join(
        r: &mut Rooms,
        room: &str,
        kind: SessionKind,
        seed: u8,
        t: u64,
    ) -> (String, Vec<EngineCmd>) {
        let a = r.allocate(room, kind, &rnd(seed)).expect("capacity");
        let m = match kind {
            SessionKind::Publisher => vec![
                media("0", Kind::Audio, "opus", 111, &[], None),
                media("1", Kind::Video, "VP8", 96, &["q", "h", "f"], None),
            ],
            SessionKind::Viewer => {
                let (s1, s2) = (r.next_ssrc(), r.next_ssrc());
                let _ = r.next_ssrc();
                vec![
                    media("0", Kind::Audio, "opus", 111, &[], Some(s1)),
                    media("1", Kind::Video, "VP8", 100, &[], Some(s2)),
                ]
            }
        };
        let cmds = r.create_session(&a, room, kind, None, "sha-256 AA".into(), &m, t);
        (a.id, cmds)
    }

    fn legs(cmds: &[EngineCmd]) -> Vec<LegSpec> {
        cmds.iter()
            .filter_map(|c| match c {
                EngineCmd::AddLeg { spec, .. } => Some(*spec),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn publisher_then_viewer_gets_both_tracks() {
        let mut r = Rooms::new(2);
        let (p, cmds) = join(&mut r, "a", SessionKind::Publisher, 1, 10);
        assert!(matches!(cmds[0], EngineCmd::AddTransport { .. }));
        let cmds = r.handle_connected(&p, keys()).expect("known");
        assert!(matches!(cmds[0], EngineCmd::InstallSrtp { .. }));
        let tracks: Vec<TrackSpec> = cmds
            .iter()
            .filter_map(|c| match c {
                EngineCmd::AddTrack(t) => Some(*t),
                _ => None,
            })
            .collect();
        assert_eq!(tracks.len(), 2);
        assert_eq!(tracks[1].n_encodings, 3);
        assert_eq!(tracks[1].rid_ext, 10);
        // TrackSpec byte 20: repaired-RID for video, the audio-level ext id for audio (ABI 3)
        assert_eq!(tracks[1].repaired_rid_ext(), 11);
        assert_eq!(tracks[0].kind, MediaKind::Audio);
        assert_eq!(tracks[0].audio_level_ext(), 1);
        assert_eq!(tracks[1].encodings[2].rid.as_bytes(), b"f");
        let (v, _) = join(&mut r, "a", SessionKind::Viewer, 2, 11);
        let cmds = r.handle_connected(&v, keys()).expect("known");
        let l = legs(&cmds);
        assert_eq!(l.len(), 2, "audio and video fed");
        let video = l
            .iter()
            .find(|x| x.track == tracks[1].track)
            .expect("video leg");
        assert_eq!(video.pt, 100, "the viewer's payload type");
        assert_eq!(video.rtx_pt, 101);
        assert_ne!(video.ssrc, 0);
        assert_eq!(video.twcc_ext, 3);
        // mid mapped, rid/twcc not copied through the map
        assert_eq!(&video.ext_map[..usize::from(video.n_ext_map)], &[(4, 4)]);
        // sessions are spread over shards
        assert_eq!(r.shard_load(), &[1, 1]);
    }

    #[test]
    fn viewer_before_publisher_is_fed_when_it_arrives_and_refed_after_it_leaves() {
        let mut r = Rooms::new(1);
        let (v, _) = join(&mut r, "a", SessionKind::Viewer, 1, 10);
        let cmds = r.handle_connected(&v, keys()).expect("known");
        assert!(legs(&cmds).is_empty(), "nobody to watch yet");
        let (p1, _) = join(&mut r, "a", SessionKind::Publisher, 2, 11);
        let cmds = r.handle_connected(&p1, keys()).expect("known");
        assert_eq!(
            legs(&cmds).len(),
            2,
            "the waiting viewer is fed without renegotiation"
        );
        let (p2, _) = join(&mut r, "a", SessionKind::Publisher, 3, 12);
        let cmds = r.handle_connected(&p2, keys()).expect("known");
        assert!(
            legs(&cmds).is_empty(),
            "slots are taken by the first publisher"
        );
        let cmds = r.remove_session(&p1).expect("known");
        let removed = cmds
            .iter()
            .filter(|c| matches!(c, EngineCmd::RemoveLeg { .. }))
            .count();
        assert_eq!(removed, 2);
        assert_eq!(
            cmds.iter()
                .filter(|c| matches!(c, EngineCmd::RemoveTrack { .. }))
                .count(),
            2
        );
        let refed = legs(&cmds);
        assert_eq!(
            refed.len(),
            2,
            "the viewer's slots now show the second publisher"
        );
        let p2_tracks: Vec<u32> = r
            .session(&p2)
            .expect("p2")
            .media
            .iter()
            .map(|m| m.track)
            .collect();
        assert!(refed.iter().all(|l| p2_tracks.contains(&l.track)));
    }

    #[test]
    fn a_viewer_with_more_slots_gets_more_publishers() {
        let mut r = Rooms::new(1);
        let (p1, _) = join(&mut r, "a", SessionKind::Publisher, 1, 10);
        r.handle_connected(&p1, keys()).expect("known");
        let (p2, _) = join(&mut r, "a", SessionKind::Publisher, 2, 11);
        r.handle_connected(&p2, keys()).expect("known");
        let a = r
            .allocate("a", SessionKind::Viewer, &rnd(3))
            .expect("capacity");
        let m = vec![
            media("0", Kind::Video, "VP8", 100, &[], Some(r.next_ssrc())),
            media("1", Kind::Video, "VP8", 100, &[], Some(r.next_ssrc() + 10)),
        ];
        r.create_session(
            &a,
            "a",
            SessionKind::Viewer,
            None,
            "sha-256 AA".into(),
            &m,
            12,
        );
        let l = legs(&r.handle_connected(&a.id, keys()).expect("known"));
        assert_eq!(l.len(), 2);
        assert_ne!(
            l[0].track, l[1].track,
            "two slots, two different publishers"
        );
        let t1 = r.session(&p1).expect("p1").media[1].track;
        assert_eq!(l[0].track, t1, "the oldest publisher first");
    }

    #[test]
    fn layer_upgrades_follow_the_publishers_active_layers() {
        let mut r = Rooms::new(1);
        let (p, _) = join(&mut r, "a", SessionKind::Publisher, 1, 10);
        r.handle_connected(&p, keys()).expect("known");
        let (v, _) = join(&mut r, "a", SessionKind::Viewer, 2, 11);
        let cmds = r.handle_connected(&v, keys()).expect("known");
        let video = legs(&cmds)
            .into_iter()
            .find(|l| l.layer == 0 && l.pt == 100)
            .expect("video");
        assert!(r.handle_track_layers(video.track, 1).is_empty());
        let up = r.handle_track_layers(video.track, 3);
        assert_eq!(
            up,
            vec![EngineCmd::SelectLayer {
                shard: 0,
                leg: video.leg,
                layer: 2
            }]
        );
        assert!(
            r.handle_track_layers(video.track, 3).is_empty(),
            "only once"
        );
        // a viewer arriving now starts at the known top layer (no report needed)
        let (v2, _) = join(&mut r, "a", SessionKind::Viewer, 3, 12);
        let l2 = legs(&r.handle_connected(&v2, keys()).expect("known"));
        assert!(l2.iter().any(|l| l.track == video.track && l.layer == 2));
    }

    #[test]
    fn whep_layer_cap_stops_upgrades_at_the_asked_layer() {
        let mut r = Rooms::new(1);
        let (p, _) = join(&mut r, "a", SessionKind::Publisher, 1, 10);
        r.handle_connected(&p, keys()).expect("known");
        let (v, _) = join(&mut r, "a", SessionKind::Viewer, 2, 11);
        r.set_max_layer(&v, 1).expect("known");
        let (free, _) = join(&mut r, "a", SessionKind::Viewer, 3, 12);
        let video = legs(&r.handle_connected(&v, keys()).expect("known"))
            .into_iter()
            .find(|l| l.pt == 100)
            .expect("video");
        r.handle_connected(&free, keys()).expect("known");
        // Three layers appear: the capped viewer goes to the middle one, the other to the top.
        let up = r.handle_track_layers(video.track, 3);
        assert!(up.contains(&EngineCmd::SelectLayer {
            shard: 0,
            leg: video.leg,
            layer: 1
        }));
        assert_eq!(up.len(), 2, "{up:?}");
        // A capped viewer joining now starts at the middle layer, not the known top.
        let (v3, _) = join(&mut r, "a", SessionKind::Viewer, 4, 13);
        r.set_max_layer(&v3, 1).expect("known");
        let l3 = legs(&r.handle_connected(&v3, keys()).expect("known"));
        assert!(l3.iter().any(|l| l.track == video.track && l.layer == 1));
        assert_eq!(r.set_max_layer("nope", 1), Err(RoomError::UnknownSession));
    }

    #[test]
    fn limits_are_enforced() {
        let mut r = Rooms::new(1);
        for i in 0..MAX_PUBLISHERS_PER_ROOM {
            join(&mut r, "a", SessionKind::Publisher, i as u8, 1);
        }
        assert_eq!(
            r.allocate("a", SessionKind::Publisher, &rnd(99))
                .unwrap_err(),
            RoomError::StageFull
        );
        assert!(r.allocate("a", SessionKind::Viewer, &rnd(99)).is_ok());
        // an ILS room's green room and producers publish too: its own, larger bound
        assert!(r
            .allocate_ils("a", SessionKind::Publisher, &rnd(99))
            .is_ok());
        for i in MAX_PUBLISHERS_PER_ROOM..MAX_ILS_PUBLISHERS_PER_ROOM {
            join_ils(&mut r, "a", SessionKind::Publisher, i as u8);
        }
        assert_eq!(
            r.allocate_ils("a", SessionKind::Publisher, &rnd(99))
                .unwrap_err(),
            RoomError::StageFull
        );
    }

    #[test]
    fn unconnected_sessions_expire_and_restore_keeps_only_live_ones() {
        let mut r = Rooms::new(1);
        let (p, _) = join(&mut r, "a", SessionKind::Publisher, 1, 100);
        let (v, _) = join(&mut r, "a", SessionKind::Viewer, 2, 100);
        r.handle_connected(&p, keys()).expect("known");
        assert_eq!(r.expired(100 + CONNECT_TIMEOUT_SECS + 1), vec![v.clone()]);
        let json = r.to_json();
        let pt = r.session(&p).expect("p").transport;
        let (restored, cmds) = Rooms::restore(&json, 1, &[pt]);
        assert!(
            restored.session(&p).is_some(),
            "connected + live transport kept"
        );
        assert!(restored.session(&v).is_none(), "half-open session dropped");
        assert!(cmds
            .iter()
            .any(|c| matches!(c, EngineCmd::RemoveTransport { .. })));
        let (gone, _) = Rooms::restore(&json, 1, &[]);
        assert_eq!(gone.sessions().count(), 0, "engine lost everything");
        let (fresh, _) = Rooms::restore("not json", 1, &[]);
        assert_eq!(fresh.sessions().count(), 0);
    }

    #[test]
    fn patch_decision_tells_trickle_from_restart_and_checks_if_match() {
        let mut r = Rooms::new(1);
        let (p, _) = join(&mut r, "a", SessionKind::Publisher, 1, 100);
        r.set_remote_ice_ufrag(&p, "EsAw");
        let s = r.session(&p).expect("p").clone();
        assert_eq!(s.etag(), format!("\"{p}\""));
        use PatchDecision::*;
        // candidates only, or the current credentials repeated: trickle
        assert_eq!(decide_patch(&s, None, None), Trickle);
        assert_eq!(decide_patch(&s, Some("EsAw"), None), Trickle);
        assert_eq!(decide_patch(&s, Some("EsAw"), Some(&s.etag())), Trickle);
        // new client ufrag: restart, with If-Match "*" (RFC 9725), the current ETag, or none
        assert_eq!(decide_patch(&s, Some("NewU"), Some("*")), Restart);
        assert_eq!(decide_patch(&s, Some("NewU"), Some(" * ")), Restart);
        assert_eq!(decide_patch(&s, Some("NewU"), None), Restart);
        let list = format!("\"x\", {}", s.etag());
        assert_eq!(decide_patch(&s, Some("NewU"), Some(&list)), Restart);
        // a wrong or unquoted or weak entity-tag: 412, whatever the body
        for bad in ["\"nope\"", p.as_str(), "", "W/\"x\""] {
            assert_eq!(
                decide_patch(&s, Some("NewU"), Some(bad)),
                PreconditionFailed
            );
            assert_eq!(decide_patch(&s, None, Some(bad)), PreconditionFailed);
        }
        // state persisted before the remote ufrag was recorded: only "*" marks a restart
        let mut legacy = s.clone();
        legacy.remote_ice_ufrag.clear();
        assert_eq!(decide_patch(&legacy, Some("EsAw"), None), Trickle);
        assert_eq!(decide_patch(&legacy, Some("EsAw"), Some("*")), Restart);
    }

    #[test]
    fn ice_restart_is_prepared_then_committed_and_persisted() {
        let mut r = Rooms::new(2);
        let (p, _) = join(&mut r, "a", SessionKind::Publisher, 1, 100);
        r.set_remote_ice_ufrag(&p, "EsAw");
        let before = r.session(&p).expect("p").clone();
        let prep = r.prepare_ice_restart(&p, &rnd(7)).expect("known");
        // preparing records nothing (the engine may still refuse the command)
        assert_eq!(r.session(&p), Some(&before));
        assert_eq!(prep.shard, before.shard);
        assert_eq!(prep.transport, before.transport);
        assert_eq!(prep.ufrag.len(), 16);
        assert_eq!(prep.pwd.len(), 32);
        assert_ne!(prep.ufrag, before.ice_ufrag);
        crate::sdp::limits::check_ice_creds(&prep.ufrag, &prep.pwd).expect("ice-chars");
        assert_eq!(
            prep.command(),
            EngineCmd::RestartIce {
                shard: before.shard,
                transport: before.transport,
                ufrag: prep.ufrag.clone(),
                pwd: prep.pwd.clone(),
            }
        );
        let etag = r.commit_ice_restart(&prep, "NewU").expect("known");
        let s = r.session(&p).expect("p").clone();
        assert_eq!(etag, format!("\"{p}.1\""));
        assert_eq!(s.etag(), etag);
        assert_eq!(
            (s.ice_ufrag.as_str(), s.ice_pwd.as_str()),
            (prep.ufrag.as_str(), prep.pwd.as_str())
        );
        assert_eq!(s.remote_ice_ufrag, "NewU");
        // the old ETag no longer matches; the client's new ufrag is now "trickle"
        assert_eq!(
            decide_patch(&s, None, Some(&before.etag())),
            PatchDecision::PreconditionFailed
        );
        assert_eq!(
            decide_patch(&s, Some("NewU"), Some(&etag)),
            PatchDecision::Trickle
        );
        // a second restart bumps the tag again
        let prep2 = r.prepare_ice_restart(&p, &rnd(8)).expect("known");
        assert_eq!(
            r.commit_ice_restart(&prep2, "Third").expect("known"),
            format!("\"{p}.2\"")
        );
        // survives a control restart (state.json)
        r.handle_connected(&p, keys()).expect("known");
        let s = r.session(&p).expect("p").clone();
        let (restored, _) = Rooms::restore(&r.to_json(), 2, &[s.transport]);
        assert_eq!(restored.session(&p), Some(&s));
        // a broken RNG that repeats the current ufrag still yields a different one
        let cur = s.ice_ufrag.clone();
        let same = move |b: &mut [u8]| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = if i < 8 {
                    u8::from_str_radix(&cur[2 * i..2 * i + 2], 16).unwrap_or(0)
                } else {
                    0
                };
            }
        };
        let rep = restored.prepare_ice_restart(&p, &same).expect("known");
        assert_ne!(rep.ufrag, s.ice_ufrag);
        assert!(crate::sdp::limits::is_ice_chars(&rep.ufrag));
        // unknown sessions
        assert_eq!(
            r.prepare_ice_restart("nope", &rnd(1)).unwrap_err(),
            RoomError::UnknownSession
        );
        let mut ghost = prep.clone();
        ghost.id = "nope".into();
        assert_eq!(
            r.commit_ice_restart(&ghost, "x").unwrap_err(),
            RoomError::UnknownSession
        );
    }

    /// An ILS session: created like WHIP/WHEP, then marked before it connects.
    fn join_ils(r: &mut Rooms, room: &str, kind: SessionKind, seed: u8) -> String {
        let a = r.allocate_ils(room, kind, &rnd(seed)).expect("capacity");
        let m = match kind {
            SessionKind::Publisher => vec![
                media("0", Kind::Audio, "opus", 111, &[], None),
                media("1", Kind::Video, "VP8", 96, &["q", "h", "f"], None),
            ],
            SessionKind::Viewer => {
                let (s1, s2, s3) = (r.next_ssrc(), r.next_ssrc() + 10, r.next_ssrc() + 20);
                vec![
                    media("v0", Kind::Video, "VP8", 100, &[], Some(s1)),
                    media("v1", Kind::Video, "VP8", 100, &[], Some(s2)),
                    media("a0", Kind::Audio, "opus", 111, &[], Some(s3)),
                ]
            }
        };
        r.create_session(&a, room, kind, None, "sha-256 AA".into(), &m, 10);
        r.mark_ils(&a.id).expect("just created");
        a.id
    }

    fn removed_legs(cmds: &[EngineCmd]) -> Vec<u32> {
        cmds.iter()
            .filter_map(|c| match c {
                EngineCmd::RemoveLeg { leg, .. } => Some(*leg),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn green_room_publisher_never_reaches_whep_viewers_until_public() {
        let mut r = Rooms::new(1);
        let (w, _) = join(&mut r, "a", SessionKind::Viewer, 1, 10);
        r.handle_connected(&w, keys()).expect("known");
        let host = join_ils(&mut r, "a", SessionKind::Publisher, 2);
        let cmds = r.handle_connected(&host, keys()).expect("known");
        assert!(
            legs(&cmds).is_empty(),
            "green room: the WHEP viewer gets nothing"
        );
        // a WHEP viewer arriving later does not get it either
        let (w2, _) = join(&mut r, "a", SessionKind::Viewer, 3, 11);
        assert!(legs(&r.handle_connected(&w2, keys()).expect("known")).is_empty());
        // on stage: both WHEP viewers are fed (audio + video)
        let on = r.set_public(&host, true).expect("ils publisher");
        assert_eq!(legs(&on).len(), 4);
        assert!(
            r.set_public(&host, true).expect("same").is_empty(),
            "idempotent"
        );
        // back to the green room: every leg goes
        let off = r.set_public(&host, false).expect("ils publisher");
        assert_eq!(removed_legs(&off).len(), 4);
        assert!(
            legs(&off).is_empty(),
            "no other public publisher to re-feed from"
        );
        // a plain WHIP publisher cannot be made private
        let (p, _) = join(&mut r, "a", SessionKind::Publisher, 4, 12);
        assert_eq!(r.set_public(&p, false).unwrap_err(), RoomError::NotIls);
    }

    #[test]
    fn ils_subscriber_slots_follow_set_slot_only() {
        let mut r = Rooms::new(1);
        let (whip, _) = join(&mut r, "a", SessionKind::Publisher, 1, 5);
        r.handle_connected(&whip, keys()).expect("known");
        let sub = join_ils(&mut r, "a", SessionKind::Viewer, 2);
        let cmds = r.handle_connected(&sub, keys()).expect("known");
        assert!(legs(&cmds).is_empty(), "ILS slots are never auto-mapped");
        let host = join_ils(&mut r, "a", SessionKind::Publisher, 3);
        // pinned before the host connects: fed when it does
        assert!(r
            .set_slot(&sub, "v1", Some((&host, 2)))
            .expect("ok")
            .is_empty());
        let cmds = r.handle_connected(&host, keys()).expect("known");
        let l = legs(&cmds);
        assert_eq!(l.len(), 1, "only the pinned slot");
        let host_video = r.session(&host).expect("host").media[1].track;
        assert_eq!(l[0].track, host_video);
        assert_eq!(l[0].layer, 0, "layers unknown yet: lowest");
        let sub_v1_ssrc = r.session(&sub).expect("sub").media[1].send_ssrc;
        assert_eq!(
            l[0].ssrc, sub_v1_ssrc,
            "the slot's own SSRC: no renegotiation"
        );
        // the host's layers appear: the slot goes up to what it asked for
        let up = r.handle_track_layers(host_video, 3);
        assert!(up.contains(&EngineCmd::SelectLayer {
            shard: 0,
            leg: l[0].leg,
            layer: 2
        }));
        // slot_size down: one SelectLayer
        let down = r.set_slot(&sub, "v1", Some((&host, 0))).expect("ok");
        assert_eq!(
            down,
            vec![EngineCmd::SelectLayer {
                shard: 0,
                leg: l[0].leg,
                layer: 0
            }]
        );
        // audio slot to the host, video slot 0 to the WHIP publisher
        let a = legs(&r.set_slot(&sub, "a0", Some((&host, 0))).expect("ok"));
        assert_eq!(a[0].track, r.session(&host).expect("host").media[0].track);
        assert_eq!(
            legs(&r.set_slot(&sub, "v0", Some((&whip, 1))).expect("ok")).len(),
            1
        );
        // remap v1 to the WHIP publisher: old leg removed, new one added
        let re = r.set_slot(&sub, "v1", Some((&whip, 1))).expect("ok");
        assert_eq!(removed_legs(&re), vec![l[0].leg]);
        assert_eq!(legs(&re).len(), 1);
        // unmap
        let off = r.set_slot(&sub, "v1", None).expect("ok");
        assert_eq!(removed_legs(&off).len(), 1);
        assert!(r.session(&sub).expect("sub").media[1].leg.is_none());
        // refusals
        assert_eq!(
            r.set_slot(&sub, "zz", None).unwrap_err(),
            RoomError::UnknownSlot
        );
        assert_eq!(
            r.set_slot(&sub, "v0", Some(("nope", 0))).unwrap_err(),
            RoomError::UnknownSession
        );
        assert_eq!(
            r.set_slot(&sub, "v0", Some((&sub, 0))).unwrap_err(),
            RoomError::NotIls
        );
        let (w, _) = join(&mut r, "a", SessionKind::Viewer, 9, 12);
        assert_eq!(r.set_slot(&w, "1", None).unwrap_err(), RoomError::NotIls);
        // the host leaves: its legs go, its pins are dropped, nothing is auto-refed
        let gone = r.remove_session(&host).expect("known");
        assert_eq!(removed_legs(&gone).len(), 1, "the audio slot's leg");
        assert!(legs(&gone).is_empty());
        assert!(r
            .session(&sub)
            .expect("sub")
            .media
            .iter()
            .all(|m| m.pin.as_deref() != Some(host.as_str())));
        // ILS sessions are not persisted (they die with the process); WHIP ones are
        let t: Vec<u32> = r.sessions().map(|s| s.transport).collect();
        let (back, _) = Rooms::restore(&r.to_json(), 1, &t);
        assert!(back.session(&sub).is_none());
        assert_eq!(back.session(&whip), r.session(&whip));
    }

    #[test]
    fn admission_counts_follow_every_change() {
        fn exact(r: &Rooms) {
            let mut fresh = Rooms::new(1);
            fresh.sessions = r.sessions.clone();
            fresh.recount();
            assert_eq!(r.counts, fresh.counts);
            assert_eq!(r.pending, fresh.pending);
        }
        let mut r = Rooms::new(2);
        let (p, _) = join(&mut r, "a", SessionKind::Publisher, 1, 10);
        let (v, _) = join(&mut r, "a", SessionKind::Viewer, 2, 10);
        let s = join_ils(&mut r, "b", SessionKind::Viewer, 3);
        exact(&r);
        assert_eq!(r.counts.get("a"), Some(&(2, 1)));
        assert_eq!(r.pending, 3);
        r.handle_connected(&p, keys()).expect("known");
        r.handle_connected(&p, keys())
            .expect("again: no double decrement");
        exact(&r);
        r.remove_session(&v).expect("known");
        r.remove_session(&s).expect("known");
        exact(&r);
        assert_eq!(r.counts.get("b"), None, "empty rooms are forgotten");
        let t = r.session(&p).expect("p").transport;
        let (back, _) = Rooms::restore(&r.to_json(), 2, &[t]);
        exact(&back);
        assert_eq!(back.counts.get("a"), Some(&(1, 1)));
        r.handle_engine_restart();
        exact(&r);
        assert!(r.counts.is_empty());
    }

    #[test]
    fn state_from_before_ice_restart_support_still_loads() {
        let mut r = Rooms::new(1);
        let (p, _) = join(&mut r, "a", SessionKind::Publisher, 1, 100);
        r.handle_connected(&p, keys()).expect("known");
        let mut v: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
        let sess = v["sessions"][&p].as_object_mut().expect("session object");
        sess.remove("remote_ice_ufrag");
        sess.remove("ice_generation");
        let t = r.session(&p).expect("p").transport;
        let (restored, _) = Rooms::restore(&v.to_string(), 1, &[t]);
        let s = restored.session(&p).expect("kept");
        assert_eq!(s.remote_ice_ufrag, "");
        assert_eq!(s.ice_generation, 0);
        assert_eq!(s.etag(), format!("\"{p}\""));
    }
}
