//! The sans-IO session state machine: who is where, who may do what, and who hears about it.
//!
//! Every input takes the session time `now_ms` (milliseconds, any monotonic origin) and returns
//! an [`Outcome`]: [`Out`] messages addressed to recipient **classes** ([`To`]), never to a
//! per-viewer list, and [`Effect`]s for the transport (media signaling, disconnects). The
//! transport serializes each `Out` once and fans it out (see `docs/protocol.md`, "Fan-out").
//!
//! Time-driven output (reaction windows, coalesced audience count and poll results) comes from
//! [`Session::tick`]; [`Session::next_deadline`] says when it is next due.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde_json::Value;

use crate::proto::*;
use crate::rate::Bucket;

/// Participants in one session, all places together. Default 200 000 (the product target is
/// 100 000 viewers). Bounds the member table: about 400 bytes per participant (~80 MiB at the
/// limit). A join beyond it is refused with `session_full` (counted).
pub const MAX_PARTICIPANTS: usize = 200_000;
/// Participants on stage. Default 25 (issue 5). Bounds the slots a viewer needs and the media
/// fan-out per viewer. A move beyond it is refused with `stage_full` (counted).
pub const MAX_STAGE: usize = 25;
/// Participants in the green room. Default 50. Bounds the per-move catch-up a newly invited
/// participant receives and the media fan-out to the green room. Refused with `limit_reached`
/// (a host joining into a full green room: `session_full`).
pub const MAX_GREEN_ROOM: usize = 50;
/// Producers (backstage) at once. Default 16. Refused at join with `session_full`.
pub const MAX_PRODUCERS: usize = 16;
/// Chat messages kept and sent in `welcome`. Default 50. Memory: at most
/// `CHAT_HISTORY * (MAX_CHAT_BYTES + name)` ≈ 30 KiB per session.
pub const CHAT_HISTORY: usize = 50;
/// Raised hands at once. Default 1000. Bounds the `hands` list in a producer's `welcome`
/// (about 100 KiB). Refused with `limit_reached`.
pub const MAX_HANDS: usize = 1000;
/// Polls per session (open and closed). Default 50. Each poll keeps the identities that voted
/// (one string per voter). Refused with `limit_reached`.
pub const MAX_POLLS: usize = 50;
/// Distinct emoji counted in one reaction window. Default 32. Bounds one `reactions` message
/// to about 1 KiB. Refused with `limit_reached`.
pub const MAX_REACTION_KINDS: usize = 32;
/// Removed identities (and participant ids) remembered so they cannot rejoin or act.
/// Default 10 000 (about 1 MiB); the oldest is forgotten beyond it.
pub const MAX_BANNED: usize = 10_000;
/// Reaction aggregation window, ms. Default 500: at most 2 `reactions` messages per second
/// however many participants react.
pub const REACTION_WINDOW_MS: u64 = 500;
/// Least time between two `audience_count` messages, ms. Default 1000.
pub const AUDIENCE_COUNT_INTERVAL_MS: u64 = 1000;
/// Least time between two result updates (`poll`) of one poll, ms. Default 500.
pub const POLL_RESULTS_INTERVAL_MS: u64 = 500;
/// Messages per second per participant (every type), sustained. Default 20.
pub const MSG_PER_SEC: u32 = 20;
/// Burst of messages per participant. Default 40. Beyond: `rate_limited` (counted).
pub const MSG_BURST: u32 = 40;
/// Chat messages per second per participant, sustained. Default 1.
pub const CHAT_PER_SEC: u32 = 1;
/// Chat burst per participant. Default 5.
pub const CHAT_BURST: u32 = 5;
/// Chat messages per second from the whole audience of one session, sustained. Default 20.
/// Bounds chat fan-out to ~20 serialized messages/s however large the audience; excess is
/// dropped, counted in [`Counters::chat_dropped_audience_cap`] and the sender gets
/// `rate_limited`.
pub const AUDIENCE_CHAT_PER_SEC: u32 = 20;
/// Audience chat burst per session. Default 40.
pub const AUDIENCE_CHAT_BURST: u32 = 40;
/// Reactions per second per participant, sustained. Default 10.
pub const REACTIONS_PER_SEC: u32 = 10;
/// Reaction burst per participant. Default 20.
pub const REACTIONS_BURST: u32 = 20;
/// Hand raise/lower per second per participant, sustained. Default 1.
pub const HAND_PER_SEC: u32 = 1;
/// Hand burst per participant. Default 3.
pub const HAND_BURST: u32 = 3;
/// App messages per second per participant, sustained. Default 10.
pub const APP_PER_SEC: u32 = 10;
/// App message burst per participant. Default 20.
pub const APP_BURST: u32 = 20;

/// The participant id used as `by` / `from` when the server API (not a participant) acts.
pub const SERVER_PID: Pid = Pid(0);

/// Per-session settings; [`Default`] gives the named constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// See [`MAX_PARTICIPANTS`].
    pub max_participants: usize,
    /// See [`MAX_STAGE`].
    pub max_stage: usize,
    /// See [`MAX_GREEN_ROOM`].
    pub max_green_room: usize,
    /// See [`MAX_PRODUCERS`].
    pub max_producers: usize,
    /// See [`CHAT_HISTORY`].
    pub chat_history: usize,
    /// Largest app message `data`, bytes; see [`MAX_APP_BYTES`].
    pub max_app_bytes: usize,
    /// See [`REACTION_WINDOW_MS`].
    pub reaction_window_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_participants: MAX_PARTICIPANTS,
            max_stage: MAX_STAGE,
            max_green_room: MAX_GREEN_ROOM,
            max_producers: MAX_PRODUCERS,
            chat_history: CHAT_HISTORY,
            max_app_bytes: MAX_APP_BYTES,
            reaction_window_ms: REACTION_WINDOW_MS,
        }
    }
}

/// A set of [`Place`]s (a bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PlaceSet(u8);

impl PlaceSet {
    /// No place.
    pub const EMPTY: PlaceSet = PlaceSet(0);
    /// Every place.
    pub const ALL: PlaceSet = PlaceSet(0b1111);

    fn bit(p: Place) -> u8 {
        match p {
            Place::Audience => 1,
            Place::GreenRoom => 2,
            Place::Stage => 4,
            Place::Backstage => 8,
        }
    }

    /// The set of the given places.
    pub fn of(places: &[Place]) -> PlaceSet {
        places.iter().fold(PlaceSet::EMPTY, |s, &p| s.with(p))
    }

    /// This set plus `p`.
    pub fn with(self, p: Place) -> PlaceSet {
        PlaceSet(self.0 | Self::bit(p))
    }

    /// Whether `p` is in the set.
    pub fn contains(self, p: Place) -> bool {
        self.0 & Self::bit(p) != 0
    }

    /// Places in `self` but not in `other`.
    pub fn minus(self, other: PlaceSet) -> PlaceSet {
        PlaceSet(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The places in the set.
    pub fn places(self) -> impl Iterator<Item = Place> {
        Place::ALL.into_iter().filter(move |&p| self.contains(p))
    }
}

/// Who sees participant events (and media) about someone in `place`: stage → everyone;
/// green room and backstage → green room + backstage (+ stage for backstage producers' listing);
/// audience → nobody.
pub fn listed_to(place: Place) -> PlaceSet {
    match place {
        Place::Stage => PlaceSet::ALL,
        Place::GreenRoom => PlaceSet::of(&[Place::GreenRoom, Place::Backstage]),
        Place::Backstage => PlaceSet::of(&[Place::Stage, Place::GreenRoom, Place::Backstage]),
        Place::Audience => PlaceSet::EMPTY,
    }
}

/// A recipient class. The transport delivers an [`Out`] to every connected participant for which
/// [`To::matches`] is true; it never needs a list of viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum To {
    /// Every participant.
    Everyone,
    /// Participants whose place is in `set`, except `except` (the subject of the event).
    Places {
        /// The places.
        set: PlaceSet,
        /// One participant left out.
        except: Option<Pid>,
    },
    /// Participants with this role.
    Role(Role),
    /// Participants without this role.
    AllExceptRole(Role),
    /// One participant.
    Participant(Pid),
}

impl To {
    /// Whether the participant `pid` with `role` at `place` is a recipient.
    pub fn matches(&self, pid: Pid, role: Role, place: Place) -> bool {
        match *self {
            To::Everyone => true,
            To::Places { set, except } => set.contains(place) && except != Some(pid),
            To::Role(r) => role == r,
            To::AllExceptRole(r) => role != r,
            To::Participant(p) => p == pid,
        }
    }
}

/// One message for a recipient class.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    /// Recipients.
    pub to: To,
    /// The message (serialize it once with [`ServerMsg::to_json`]).
    pub msg: ServerMsg,
}

/// Something the transport must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Negotiate `pid`'s publishing PeerConnection; reply `answer{sdp, rid}` or
    /// `error{internal, rid}` to that participant. Grants and place were checked.
    Publish {
        /// Who.
        pid: Pid,
        /// The offer (≤ [`MAX_SDP_BYTES`]).
        sdp: String,
        /// Request id to echo.
        rid: Option<String>,
    },
    /// Negotiate `pid`'s receiving PeerConnection with fixed slots; reply
    /// `answer{sdp, slots, rid}` and then `slots`.
    Subscribe {
        /// Who.
        pid: Pid,
        /// The offer.
        sdp: String,
        /// Video m-lines (≤ [`MAX_VIDEO_SLOTS`]).
        video_slots: u32,
        /// Audio m-lines (≤ [`MAX_AUDIO_SLOTS`]).
        audio_slots: u32,
        /// Request id to echo.
        rid: Option<String>,
    },
    /// Apply a slot size request; reply `ack{rid}` (if any) or `error{not_found, rid}` when the
    /// slot does not exist on `pid`'s receiving connection.
    SlotSize {
        /// Who.
        pid: Pid,
        /// Slot number.
        slot: u32,
        /// Wanted size.
        size: SlotSize,
        /// Request id to echo.
        rid: Option<String>,
    },
    /// Who sees whose media changed (a move, a mute, a join/leave of a publisher, publishing
    /// state): recompute forwarding from [`Session::media_plan`]; close publishing connections of
    /// participants whose `may_publish` became false.
    MediaPlanChanged,
    /// Close `pid`'s socket and its PeerConnections after sending what is queued for it.
    Disconnect {
        /// Who.
        pid: Pid,
        /// Why (`left`, `removed`, `replaced`).
        reason: String,
    },
    /// The session ended: close every socket after the queued `ended`, drop the session.
    Ended {
        /// Why.
        reason: String,
    },
}

/// What an input produced: messages in order, then effects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Messages, in the order they must be delivered.
    pub out: Vec<Out>,
    /// Effects for the transport.
    pub effects: Vec<Effect>,
}

impl Outcome {
    fn send(&mut self, to: To, msg: ServerMsg) {
        self.out.push(Out { to, msg });
    }

    fn effect(&mut self, e: Effect) {
        if e == Effect::MediaPlanChanged && self.effects.contains(&e) {
            return;
        }
        self.effects.push(e);
    }

    fn append(&mut self, other: Outcome) {
        self.out.extend(other.out);
        for e in other.effects {
            self.effect(e);
        }
    }
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session has ended.
    #[error("the session has ended")]
    Ended,
    /// The identity was removed by a producer.
    #[error("this identity was removed from the session by a producer")]
    Removed,
    /// A capacity limit was reached.
    #[error("the session is full: {0}")]
    Full(&'static str),
    /// The display name is not acceptable.
    #[error("bad display name: {0}")]
    BadName(&'static str),
}

impl SessionError {
    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            SessionError::Ended => ErrorCode::Ended,
            SessionError::Removed => ErrorCode::Removed,
            SessionError::Full(_) => ErrorCode::SessionFull,
            SessionError::BadName(_) => ErrorCode::BadMessage,
        }
    }

    /// The `error` message to send before closing.
    pub fn to_server_msg(&self, rid: Option<String>) -> ServerMsg {
        ServerMsg::error(self.code(), self.to_string(), rid)
    }
}

/// A refused action: code and reason (what to do).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Refusal {
    /// Error code.
    pub code: ErrorCode,
    /// What was wrong and what to do.
    pub reason: String,
}

fn refuse<T>(code: ErrorCode, reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        code,
        reason: reason.into(),
    })
}

/// Counters the transport exports as Prometheus metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Refusals (error replies and refused joins) by [`ErrorCode::index`].
    pub refused: [u64; ErrorCode::ALL.len()],
    /// Successful joins.
    pub joins: u64,
    /// Participants gone (left, removed, replaced).
    pub leaves: u64,
    /// Participants removed by a producer.
    pub removed: u64,
    /// Participants replaced by a rejoin of the same identity.
    pub replaced: u64,
    /// Participants resumed by `hello{resume:true}` after their socket dropped.
    pub resumed: u64,
    /// Client messages handled.
    pub messages_in: u64,
    /// Chat messages accepted.
    pub chat_sent: u64,
    /// Audience chat messages dropped by the per-session cap ([`AUDIENCE_CHAT_PER_SEC`]).
    pub chat_dropped_audience_cap: u64,
    /// Reactions counted.
    pub reactions_counted: u64,
    /// `reactions` messages emitted.
    pub reaction_messages: u64,
    /// Poll votes accepted.
    pub poll_votes: u64,
    /// `poll` result updates emitted by `tick`.
    pub poll_updates: u64,
    /// `audience_count` messages emitted.
    pub audience_count_messages: u64,
}

impl Counters {
    /// Refusals with this code.
    pub fn refused(&self, code: ErrorCode) -> u64 {
        self.refused[code.index()]
    }

    /// The plain counters as `(metric name suffix, value)`, for Prometheus export (refusals are
    /// in [`Counters::refused`], labelled by [`ErrorCode::as_str`]).
    pub fn values(&self) -> [(&'static str, u64); 13] {
        [
            ("joins", self.joins),
            ("leaves", self.leaves),
            ("removed", self.removed),
            ("replaced", self.replaced),
            ("resumed", self.resumed),
            ("messages_in", self.messages_in),
            ("chat_sent", self.chat_sent),
            ("chat_dropped_audience_cap", self.chat_dropped_audience_cap),
            ("reactions_counted", self.reactions_counted),
            ("reaction_messages", self.reaction_messages),
            ("poll_votes", self.poll_votes),
            ("poll_updates", self.poll_updates),
            ("audience_count_messages", self.audience_count_messages),
        ]
    }

    /// Add `other` into `self` (totals over sessions, e.g. when a session is dropped).
    pub fn add(&mut self, other: &Counters) {
        for (a, b) in self.refused.iter_mut().zip(other.refused.iter()) {
            *a += b;
        }
        self.joins += other.joins;
        self.leaves += other.leaves;
        self.removed += other.removed;
        self.replaced += other.replaced;
        self.resumed += other.resumed;
        self.messages_in += other.messages_in;
        self.chat_sent += other.chat_sent;
        self.chat_dropped_audience_cap += other.chat_dropped_audience_cap;
        self.reactions_counted += other.reactions_counted;
        self.reaction_messages += other.reaction_messages;
        self.poll_votes += other.poll_votes;
        self.poll_updates += other.poll_updates;
        self.audience_count_messages += other.audience_count_messages;
    }
}

/// One media source in the [`MediaPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Participant.
    pub pid: Pid,
    /// Role.
    pub role: Role,
    /// Place.
    pub place: Place,
    /// Whether the server lets it publish (its publishing connection must be closed otherwise).
    pub may_publish: bool,
    /// Whether its publishing connection is up (as reported by [`Session::set_publishing`]).
    pub publishing: bool,
    /// Producer mutes: drop these kinds.
    pub muted: Muted,
}

/// Whose media each place receives. Audience → stage only; green room and backstage → stage +
/// green room + backstage; stage → stage. Audience members never publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaPlan {
    /// Every participant outside the audience, by id.
    pub sources: Vec<Source>,
}

impl MediaPlan {
    /// Whether someone at `viewer` receives media of a source at `source`.
    pub fn sees(viewer: Place, source: Place) -> bool {
        match source {
            Place::Stage => true,
            Place::GreenRoom | Place::Backstage => {
                matches!(viewer, Place::GreenRoom | Place::Backstage)
            }
            Place::Audience => false,
        }
    }

    /// The sources forwarded to participants at `viewer` (allowed to publish, visible).
    pub fn sources_for(&self, viewer: Place) -> impl Iterator<Item = &Source> {
        self.sources
            .iter()
            .filter(move |s| s.may_publish && Self::sees(viewer, s.place))
    }

    /// The source entry of `pid`, if it is outside the audience.
    pub fn source(&self, pid: Pid) -> Option<&Source> {
        self.sources
            .binary_search_by_key(&pid, |s| s.pid)
            .ok()
            .map(|i| &self.sources[i])
    }
}

/// Whether a participant may publish: never from the audience; hosts and producers with the
/// publish grant; viewers once the server moved them to the green room or stage.
pub fn may_publish(role: Role, grants: Grants, place: Place) -> bool {
    match place {
        Place::Audience => false,
        _ => role == Role::Viewer || grants.publish,
    }
}

#[derive(Debug, Clone)]
struct Member {
    identity: String,
    name: String,
    role: Role,
    grants: Grants,
    place: Place,
    muted: Muted,
    publishing: bool,
    hand: bool,
    msg: Bucket,
    chat: Bucket,
    react: Bucket,
    hand_bucket: Bucket,
    app: Bucket,
}

#[derive(Debug, Clone)]
struct Poll {
    info: PollInfo,
    voters: HashSet<String>,
    dirty: bool,
    last_sent_ms: u64,
}

/// A bounded FIFO set (removed identities / ids).
#[derive(Debug, Clone)]
struct Banned<T: std::hash::Hash + Eq + Clone> {
    order: VecDeque<T>,
    set: HashSet<T>,
}

impl<T: std::hash::Hash + Eq + Clone> Default for Banned<T> {
    fn default() -> Self {
        Banned {
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }
}

impl<T: std::hash::Hash + Eq + Clone> Banned<T> {
    fn insert(&mut self, v: T) {
        if self.set.insert(v.clone()) {
            self.order.push_back(v);
            if self.order.len() > MAX_BANNED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, v: &T) -> bool {
        self.set.contains(v)
    }
}

/// What handle_inner answers on success.
enum Reply {
    /// Send `ack{rid}` if the request had a rid.
    Ack,
    /// A direct reply was queued (or the transport replies).
    Done,
}

/// The actor of an action: a participant, or the server API (acts as a producer).
#[derive(Clone, Copy)]
enum Actor {
    Member(Pid),
    Server,
}

/// One ILS session (one room). See the module docs.
#[derive(Debug, Clone)]
pub struct Session {
    cfg: SessionConfig,
    members: HashMap<Pid, Member>,
    by_identity: HashMap<String, Pid>,
    /// Ids per place, indexed like [`Place::ALL`].
    places: [BTreeSet<Pid>; 4],
    next_pid: u64,
    chat: VecDeque<ChatMessage>,
    next_msg_id: u64,
    polls: Vec<Poll>,
    hands: Vec<Pid>,
    reactions: BTreeMap<String, u64>,
    reaction_window_start: Option<u64>,
    audience_dirty: bool,
    audience_last_sent: Option<u64>,
    layout: Value,
    banned_identities: Banned<String>,
    removed_pids: Banned<Pid>,
    audience_chat: Bucket,
    ended: bool,
    counters: Counters,
}

fn place_index(p: Place) -> usize {
    match p {
        Place::Audience => 0,
        Place::GreenRoom => 1,
        Place::Stage => 2,
        Place::Backstage => 3,
    }
}

fn visible_to_hosts(m: &ChatMessage) -> bool {
    m.featured || matches!(m.from.role, Role::Host | Role::Producer)
}

fn valid_emoji(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= MAX_EMOJI_BYTES
        && e.chars()
            .all(|c| !c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

fn json_len(v: &Value) -> usize {
    // INVARIANT: a serde_json::Value always serializes (its map keys are strings).
    serde_json::to_string(v)
        .map(|s| s.len())
        .unwrap_or(usize::MAX)
}

impl Session {
    /// A new, empty session.
    pub fn new(cfg: SessionConfig) -> Session {
        Session {
            cfg,
            members: HashMap::new(),
            by_identity: HashMap::new(),
            places: Default::default(),
            next_pid: 1,
            chat: VecDeque::new(),
            next_msg_id: 1,
            polls: Vec::new(),
            hands: Vec::new(),
            reactions: BTreeMap::new(),
            reaction_window_start: None,
            audience_dirty: false,
            audience_last_sent: None,
            layout: Value::Null,
            banned_identities: Banned::default(),
            removed_pids: Banned::default(),
            audience_chat: Bucket::full(0, AUDIENCE_CHAT_BURST),
            ended: false,
            counters: Counters::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Counters (refusals by code, fan-out drops, ...).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether the session has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Number of participants (all places).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody is in the session.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of audience members.
    pub fn audience_count(&self) -> u64 {
        self.places[place_index(Place::Audience)].len() as u64
    }

    /// Ids of the participants at `place`, ascending.
    pub fn ids_at(&self, place: Place) -> impl Iterator<Item = Pid> + '_ {
        self.places[place_index(place)].iter().copied()
    }

    /// The participant `pid`, if joined.
    pub fn participant(&self, pid: Pid) -> Option<ParticipantInfo> {
        self.members.get(&pid).map(|m| Self::info(pid, m))
    }

    /// Role and place of `pid` (what [`To::matches`] needs), if joined.
    pub fn role_place(&self, pid: Pid) -> Option<(Role, Place)> {
        self.members.get(&pid).map(|m| (m.role, m.place))
    }

    /// Listed participants (stage, green room, backstage), by place then id. For the admin API.
    pub fn participants(&self) -> Vec<ParticipantInfo> {
        [Place::Stage, Place::GreenRoom, Place::Backstage]
            .into_iter()
            .flat_map(|p| self.infos_at(p))
            .collect()
    }

    fn info(pid: Pid, m: &Member) -> ParticipantInfo {
        ParticipantInfo {
            id: pid,
            name: m.name.clone(),
            role: m.role,
            place: m.place,
            muted: m.muted,
            publishing: m.publishing,
        }
    }

    fn infos_at(&self, place: Place) -> Vec<ParticipantInfo> {
        self.places[place_index(place)]
            .iter()
            .filter_map(|pid| self.participant(*pid))
            .collect()
    }

    fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_chat_bytes: MAX_CHAT_BYTES,
            max_app_bytes: self.cfg.max_app_bytes,
            max_stage: self.cfg.max_stage,
            max_video_slots: MAX_VIDEO_SLOTS,
            max_audio_slots: MAX_AUDIO_SLOTS,
            reaction_window_ms: self.cfg.reaction_window_ms,
            chat_per_sec: CHAT_PER_SEC,
            reactions_per_sec: REACTIONS_PER_SEC,
        }
    }

    /// The `welcome` for `pid` (what it may see now), with the `hello`'s `rid`.
    pub fn welcome(&self, pid: Pid, rid: Option<String>) -> Option<ServerMsg> {
        let m = self.members.get(&pid)?;
        let sees_green = matches!(m.place, Place::GreenRoom | Place::Backstage);
        let is_host = m.role == Role::Host;
        let state = SessionState {
            stage: self.infos_at(Place::Stage),
            green_room: if sees_green {
                self.infos_at(Place::GreenRoom)
            } else {
                Vec::new()
            },
            producers: if m.place == Place::Audience {
                Vec::new()
            } else {
                self.infos_at(Place::Backstage)
            },
            audience_count: self.audience_count(),
            chat: self
                .chat
                .iter()
                .filter(|c| !is_host || visible_to_hosts(c))
                .cloned()
                .collect(),
            polls: self.polls.iter().map(|p| p.info.clone()).collect(),
            hands: if m.role == Role::Producer {
                self.hands
                    .iter()
                    .filter_map(|p| self.participant(*p))
                    .collect()
            } else {
                Vec::new()
            },
            layout: self.layout.clone(),
            limits: self.limits(),
        };
        Some(ServerMsg::Welcome {
            v: PROTOCOL_VERSION,
            you: You {
                id: pid,
                role: m.role,
                name: m.name.clone(),
                place: m.place,
                grants: m.grants,
            },
            state: Box::new(state),
            resumed: false,
            rid,
        })
    }

    /// Join `identity` (from the verified token) with `role` and `grants`. `name` (from `hello`)
    /// defaults to the identity (shortened to [`MAX_NAME_CHARS`]); an explicit name that is too
    /// long or has control characters is refused. An empty identity (token without one) is an
    /// anonymous participant: never replaced by another join, named `guest-<id>`. Hosts start in the green room, producers backstage, viewers in
    /// the audience. A participant with the same identity is replaced (it gets
    /// `error{conflict}` and an [`Effect::Disconnect`]). The outcome's first message is the
    /// joiner's `welcome` (carrying `rid`).
    pub fn join(
        &mut self,
        now_ms: u64,
        identity: &str,
        name: Option<&str>,
        role: Role,
        grants: Grants,
        rid: Option<String>,
    ) -> Result<(Pid, Outcome), SessionError> {
        let r = self.join_inner(now_ms, identity, name, role, grants, rid);
        if let Err(e) = &r {
            self.counters.refused[e.code().index()] += 1;
        }
        r
    }

    fn join_inner(
        &mut self,
        now_ms: u64,
        identity: &str,
        name: Option<&str>,
        role: Role,
        grants: Grants,
        rid: Option<String>,
    ) -> Result<(Pid, Outcome), SessionError> {
        if self.ended {
            return Err(SessionError::Ended);
        }
        if self.banned_identities.contains(&identity.to_owned()) {
            return Err(SessionError::Removed);
        }
        // A token without identity: a key no token can carry (tokens refuse control
        // characters), so anonymous participants never replace each other.
        let anon;
        let (identity, anonymous) = if identity.is_empty() {
            anon = format!("\u{0}anon-{}", self.next_pid);
            (anon.as_str(), true)
        } else {
            (identity, false)
        };
        let explicit = name.map(str::trim).filter(|n| !n.is_empty());
        let name: String = match explicit {
            Some(n) => {
                if n.chars().count() > MAX_NAME_CHARS {
                    return Err(SessionError::BadName("longer than 64 characters"));
                }
                if n.chars().any(char::is_control) {
                    return Err(SessionError::BadName("contains control characters"));
                }
                n.to_owned()
            }
            None if anonymous || identity.trim().is_empty() => format!("guest-{}", self.next_pid),
            // The identity as the default name, shortened and without control characters.
            None => identity
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_NAME_CHARS)
                .collect(),
        };
        let place = match role {
            Role::Host => Place::GreenRoom,
            Role::Producer => Place::Backstage,
            Role::Viewer => Place::Audience,
        };
        let old = self.by_identity.get(identity).copied();
        let old_place = old.and_then(|p| self.members.get(&p)).map(|m| m.place);
        let freed = |p: Place| usize::from(old_place == Some(p));
        if self.members.len() - usize::from(old.is_some()) >= self.cfg.max_participants {
            return Err(SessionError::Full("participant limit reached"));
        }
        let at = |s: &Self, p: Place| s.places[place_index(p)].len() - freed(p);
        if place == Place::GreenRoom && at(self, place) >= self.cfg.max_green_room {
            return Err(SessionError::Full("the green room is full"));
        }
        if place == Place::Backstage && at(self, place) >= self.cfg.max_producers {
            return Err(SessionError::Full("producer limit reached"));
        }

        let mut o = Outcome::default();
        let mut replaced = Outcome::default();
        if let Some(old) = old {
            replaced.send(
                To::Participant(old),
                ServerMsg::error(
                    ErrorCode::Conflict,
                    "replaced by a new connection with the same identity",
                    None,
                ),
            );
            replaced.append(self.remove_member(old));
            replaced.effect(Effect::Disconnect {
                pid: old,
                reason: "replaced".into(),
            });
            self.counters.replaced += 1;
        }

        let pid = Pid(self.next_pid);
        self.next_pid += 1;
        let m = Member {
            identity: identity.to_owned(),
            name,
            role,
            grants,
            place,
            muted: Muted::default(),
            publishing: false,
            hand: false,
            msg: Bucket::full(now_ms, MSG_BURST),
            chat: Bucket::full(now_ms, CHAT_BURST),
            react: Bucket::full(now_ms, REACTIONS_BURST),
            hand_bucket: Bucket::full(now_ms, HAND_BURST),
            app: Bucket::full(now_ms, APP_BURST),
        };
        self.members.insert(pid, m);
        self.by_identity.insert(identity.to_owned(), pid);
        self.places[place_index(place)].insert(pid);
        self.counters.joins += 1;

        // INVARIANT: pid was inserted just above.
        let welcome = self.welcome(pid, rid).expect("joined member has a welcome");
        o.send(To::Participant(pid), welcome);
        o.append(replaced);
        if place == Place::Audience {
            self.audience_dirty = true;
        } else {
            self.announce(&mut o, pid, listed_to(place), Some(pid));
            o.effect(Effect::MediaPlanChanged);
        }
        Ok((pid, o))
    }

    /// The participant `identity` has (not anonymous ones), if it is still a member.
    pub fn pid_of(&self, identity: &str) -> Option<Pid> {
        self.by_identity
            .get(identity)
            .copied()
            .filter(|p| self.members.contains_key(p))
    }

    /// `hello{resume:true}` from the token of `pid`'s identity and role: the participant keeps
    /// its id, place, mutes, hand, votes and rate budgets. The outcome is its `welcome` with
    /// `resumed: true` (the current state, which covers what it missed while detached). `None`
    /// when `pid` is gone, the session ended, or `role` differs (a token of another role joins
    /// anew).
    pub fn resume(
        &mut self,
        _now_ms: u64,
        pid: Pid,
        role: Role,
        rid: Option<String>,
    ) -> Option<Outcome> {
        if self.ended || self.members.get(&pid)?.role != role {
            return None;
        }
        let mut w = self.welcome(pid, rid)?;
        if let ServerMsg::Welcome { resumed, .. } = &mut w {
            *resumed = true;
        }
        self.counters.resumed += 1;
        let mut o = Outcome::default();
        o.send(To::Participant(pid), w);
        Some(o)
    }

    /// `pid` left (socket closed). Unknown ids are ignored.
    pub fn leave(&mut self, _now_ms: u64, pid: Pid) -> Outcome {
        self.remove_member(pid)
    }

    fn remove_member(&mut self, pid: Pid) -> Outcome {
        let mut o = Outcome::default();
        let Some(m) = self.members.remove(&pid) else {
            return o;
        };
        self.counters.leaves += 1;
        self.places[place_index(m.place)].remove(&pid);
        if self.by_identity.get(&m.identity) == Some(&pid) {
            self.by_identity.remove(&m.identity);
        }
        if m.hand {
            self.hands.retain(|p| *p != pid);
            o.send(
                To::Role(Role::Producer),
                ServerMsg::Hand {
                    participant: pid,
                    name: m.name.clone(),
                    raised: false,
                },
            );
        }
        if m.place == Place::Audience {
            self.audience_dirty = true;
        } else {
            o.send(
                To::Places {
                    set: listed_to(m.place),
                    except: None,
                },
                ServerMsg::ParticipantLeft { id: pid },
            );
            o.effect(Effect::MediaPlanChanged);
        }
        o
    }

    /// The transport reports that `pid`'s publishing connection came up (`true`) or went away.
    pub fn set_publishing(&mut self, _now_ms: u64, pid: Pid, publishing: bool) -> Outcome {
        let mut o = Outcome::default();
        let Some(m) = self.members.get_mut(&pid) else {
            return o;
        };
        if m.publishing == publishing {
            return o;
        }
        m.publishing = publishing;
        let place = m.place;
        if place != Place::Audience {
            self.announce(&mut o, pid, listed_to(place), None);
        }
        o.effect(Effect::MediaPlanChanged);
        o
    }

    /// Tell those in `set` (but `except`) `pid`'s current [`ParticipantInfo`], if it is a member.
    fn announce(&self, o: &mut Outcome, pid: Pid, set: PlaceSet, except: Option<Pid>) {
        if let Some(info) = self.participant(pid) {
            o.send(To::Places { set, except }, ServerMsg::Participant(info));
        }
    }

    /// Handle one client message from `pid`. Refusals are an `error` to `pid` (with the rid);
    /// success with a rid and no other reply is an `ack`.
    pub fn handle(&mut self, now_ms: u64, pid: Pid, frame: ClientFrame) -> Outcome {
        self.counters.messages_in += 1;
        let mut o = Outcome::default();
        let rid = frame.rid;
        match self.handle_inner(now_ms, Actor::Member(pid), frame.msg, rid.clone(), &mut o) {
            Ok(Reply::Ack) => {
                if let Some(rid) = rid {
                    o.send(To::Participant(pid), ServerMsg::Ack { rid });
                }
            }
            Ok(Reply::Done) => {}
            Err(r) => {
                self.counters.refused[r.code.index()] += 1;
                o.send(
                    To::Participant(pid),
                    ServerMsg::error(r.code, r.reason, rid),
                );
            }
        }
        o
    }

    /// A producer action from the server API (admin token, no participant): `move`, `invite`,
    /// `mute`, `remove`, `end`, `layout`, `chat_hide`, `chat_feature`, `poll_create`,
    /// `poll_close`, `app` (sent `from` [`SERVER_PID`]). Other messages are `bad_message`.
    pub fn admin(&mut self, now_ms: u64, msg: ClientMsg) -> Result<Outcome, Refusal> {
        let mut o = Outcome::default();
        match self.handle_inner(now_ms, Actor::Server, msg, None, &mut o) {
            Ok(_) => Ok(o),
            Err(r) => {
                self.counters.refused[r.code.index()] += 1;
                Err(r)
            }
        }
    }

    fn handle_inner(
        &mut self,
        now: u64,
        actor: Actor,
        msg: ClientMsg,
        rid: Option<String>,
        o: &mut Outcome,
    ) -> Result<Reply, Refusal> {
        if self.ended {
            return refuse(ErrorCode::Ended, "the session has ended");
        }
        // Who acts: role, grants, place; rate limit for participants.
        let (me, role, grants, place) = match actor {
            Actor::Server => (
                SERVER_PID,
                Role::Producer,
                Grants::for_role(Role::Producer),
                Place::Backstage,
            ),
            Actor::Member(pid) => {
                let Some(m) = self.members.get_mut(&pid) else {
                    if self.removed_pids.contains(&pid) {
                        return refuse(ErrorCode::Removed, "you were removed from this session");
                    }
                    return refuse(ErrorCode::NotJoined, "send hello first");
                };
                if !m.msg.take(now, MSG_PER_SEC, MSG_BURST) {
                    return refuse(
                        ErrorCode::RateLimited,
                        "more than 20 messages per second: slow down",
                    );
                }
                (pid, m.role, m.grants, m.place)
            }
        };
        let is_server = matches!(actor, Actor::Server);
        let need_admin = |what: &str| -> Result<(), Refusal> {
            if grants.admin {
                Ok(())
            } else {
                refuse(
                    ErrorCode::NotAllowed,
                    format!("{what} needs the admin grant (producers)"),
                )
            }
        };
        let participant_only = |what: &str| -> Result<(), Refusal> {
            if is_server {
                refuse(
                    ErrorCode::BadMessage,
                    format!("{what} is not available in the server API"),
                )
            } else {
                Ok(())
            }
        };

        match msg {
            ClientMsg::Hello { .. } => {
                participant_only("hello")?;
                refuse(
                    ErrorCode::Conflict,
                    "already joined: send hello once per connection",
                )
            }
            ClientMsg::Leave {} => {
                participant_only("leave")?;
                o.append(self.remove_member(me));
                o.effect(Effect::Disconnect {
                    pid: me,
                    reason: "left".into(),
                });
                Ok(Reply::Ack)
            }
            ClientMsg::Publish { sdp } => {
                participant_only("publish")?;
                if !may_publish(role, grants, place) {
                    return refuse(
                        ErrorCode::NotAllowed,
                        "you may not publish: wait for a producer to invite you",
                    );
                }
                if sdp.len() > MAX_SDP_BYTES {
                    return refuse(ErrorCode::TooLarge, "SDP offer over 32768 bytes");
                }
                o.effect(Effect::Publish { pid: me, sdp, rid });
                Ok(Reply::Done)
            }
            ClientMsg::Subscribe {
                sdp,
                video_slots,
                audio_slots,
            } => {
                participant_only("subscribe")?;
                if !grants.subscribe {
                    return refuse(ErrorCode::NotAllowed, "your token has no subscribe grant");
                }
                if video_slots > MAX_VIDEO_SLOTS
                    || audio_slots > MAX_AUDIO_SLOTS
                    || video_slots + audio_slots == 0
                {
                    return refuse(
                        ErrorCode::BadMessage,
                        "ask for 0..=25 video and 0..=8 audio slots, at least one in all",
                    );
                }
                if sdp.len() > MAX_SDP_BYTES {
                    return refuse(ErrorCode::TooLarge, "SDP offer over 32768 bytes");
                }
                o.effect(Effect::Subscribe {
                    pid: me,
                    sdp,
                    video_slots,
                    audio_slots,
                    rid,
                });
                Ok(Reply::Done)
            }
            ClientMsg::Trickle { .. } => {
                participant_only("trickle")?;
                Ok(Reply::Ack)
            }
            ClientMsg::SlotSize { slot, size } => {
                participant_only("slot_size")?;
                if !grants.subscribe {
                    return refuse(ErrorCode::NotAllowed, "your token has no subscribe grant");
                }
                o.effect(Effect::SlotSize {
                    pid: me,
                    slot,
                    size,
                    rid,
                });
                Ok(Reply::Done)
            }
            ClientMsg::Chat { text } => {
                participant_only("chat")?;
                self.chat_send(now, me, grants, place, text, o)
            }
            ClientMsg::ChatHide { msg_id } => {
                need_admin("chat_hide")?;
                let Some(i) = self.chat.iter().position(|c| c.id == msg_id) else {
                    return refuse(ErrorCode::NotFound, "no such message in the recent history");
                };
                self.chat.remove(i);
                o.send(To::Everyone, ServerMsg::ChatHidden { msg_id });
                Ok(Reply::Ack)
            }
            ClientMsg::ChatFeature { msg_id, to_hosts } => {
                need_admin("chat_feature")?;
                let Some(c) = self.chat.iter_mut().find(|c| c.id == msg_id) else {
                    return refuse(ErrorCode::NotFound, "no such message in the recent history");
                };
                if c.featured == to_hosts {
                    return Ok(Reply::Ack);
                }
                let was_visible = visible_to_hosts(c);
                c.featured = to_hosts;
                let now_visible = visible_to_hosts(c);
                let msg = c.clone();
                if now_visible && !was_visible {
                    o.send(To::Role(Role::Host), ServerMsg::Chat { msg: msg.clone() });
                } else if was_visible && !now_visible {
                    o.send(To::Role(Role::Host), ServerMsg::ChatHidden { msg_id });
                }
                o.send(To::Role(Role::Producer), ServerMsg::Chat { msg });
                Ok(Reply::Ack)
            }
            ClientMsg::React { emoji } => {
                participant_only("react")?;
                if !valid_emoji(&emoji) {
                    return refuse(
                        ErrorCode::BadMessage,
                        "emoji must be 1..=16 bytes of non-ASCII characters (one emoji)",
                    );
                }
                let m = self.members.get_mut(&me).ok_or_else(gone)?;
                if !m.react.take(now, REACTIONS_PER_SEC, REACTIONS_BURST) {
                    return refuse(
                        ErrorCode::RateLimited,
                        "more than 10 reactions per second: slow down",
                    );
                }
                if !self.reactions.contains_key(&emoji)
                    && self.reactions.len() >= MAX_REACTION_KINDS
                {
                    return refuse(
                        ErrorCode::LimitReached,
                        "too many different emoji in this window: use a common one",
                    );
                }
                *self.reactions.entry(emoji).or_insert(0) += 1;
                self.reaction_window_start.get_or_insert(now);
                self.counters.reactions_counted += 1;
                Ok(Reply::Ack)
            }
            ClientMsg::Hand { raised } => {
                participant_only("hand")?;
                if place != Place::Audience {
                    return refuse(ErrorCode::NotAllowed, "only audience members raise hands");
                }
                let hands_full = self.hands.len() >= MAX_HANDS;
                let m = self.members.get_mut(&me).ok_or_else(gone)?;
                if !m.hand_bucket.take(now, HAND_PER_SEC, HAND_BURST) {
                    return refuse(
                        ErrorCode::RateLimited,
                        "hand raised/lowered too often: wait a second",
                    );
                }
                if m.hand == raised {
                    return Ok(Reply::Ack);
                }
                if raised && hands_full {
                    return refuse(
                        ErrorCode::LimitReached,
                        "1000 hands are raised already: try later",
                    );
                }
                m.hand = raised;
                let name = m.name.clone();
                if raised {
                    self.hands.push(me);
                } else {
                    self.hands.retain(|p| *p != me);
                }
                o.send(
                    To::Role(Role::Producer),
                    ServerMsg::Hand {
                        participant: me,
                        name,
                        raised,
                    },
                );
                Ok(Reply::Ack)
            }
            ClientMsg::PollCreate { question, options } => {
                need_admin("poll_create")?;
                let question = question.trim().to_owned();
                if question.is_empty() {
                    return refuse(ErrorCode::BadMessage, "the poll question is empty");
                }
                if question.len() > MAX_POLL_QUESTION_BYTES {
                    return refuse(ErrorCode::TooLarge, "poll question over 300 bytes");
                }
                if options.len() < 2 || options.len() > MAX_POLL_OPTIONS {
                    return refuse(ErrorCode::BadMessage, "a poll has 2..=10 options");
                }
                let options: Vec<String> = options.iter().map(|s| s.trim().to_owned()).collect();
                if options.iter().any(String::is_empty) {
                    return refuse(ErrorCode::BadMessage, "a poll option is empty");
                }
                if options.iter().any(|s| s.len() > MAX_POLL_OPTION_BYTES) {
                    return refuse(ErrorCode::TooLarge, "poll option over 100 bytes");
                }
                if self.polls.len() >= MAX_POLLS {
                    return refuse(ErrorCode::LimitReached, "50 polls in this session already");
                }
                let info = PollInfo {
                    id: self.polls.len() as u64 + 1,
                    question,
                    counts: vec![0; options.len()],
                    options,
                    closed: false,
                };
                o.send(To::Everyone, ServerMsg::Poll { poll: info.clone() });
                self.polls.push(Poll {
                    info,
                    voters: HashSet::new(),
                    dirty: false,
                    last_sent_ms: now,
                });
                Ok(Reply::Ack)
            }
            ClientMsg::PollVote { poll_id, option } => {
                participant_only("poll_vote")?;
                let identity = self.members.get(&me).ok_or_else(gone)?.identity.clone();
                let Some(p) = self.poll_mut(poll_id) else {
                    return refuse(ErrorCode::NotFound, "no such poll");
                };
                if p.info.closed {
                    return refuse(ErrorCode::Conflict, "the poll is closed");
                }
                let Some(count) = p.info.counts.get_mut(option as usize) else {
                    return refuse(ErrorCode::BadMessage, "no such option in this poll");
                };
                if p.voters.contains(&identity) {
                    return refuse(ErrorCode::Conflict, "you already voted in this poll");
                }
                *count += 1;
                p.voters.insert(identity);
                p.dirty = true;
                self.counters.poll_votes += 1;
                Ok(Reply::Ack)
            }
            ClientMsg::PollClose { poll_id } => {
                need_admin("poll_close")?;
                let Some(p) = self.poll_mut(poll_id) else {
                    return refuse(ErrorCode::NotFound, "no such poll");
                };
                if p.info.closed {
                    return refuse(ErrorCode::Conflict, "the poll is already closed");
                }
                p.info.closed = true;
                p.dirty = false;
                p.last_sent_ms = now;
                let poll = p.info.clone();
                o.send(To::Everyone, ServerMsg::Poll { poll });
                Ok(Reply::Ack)
            }
            ClientMsg::App { to, data } => {
                if let Actor::Member(pid) = actor {
                    let m = self.members.get_mut(&pid).ok_or_else(gone)?;
                    if !m.app.take(now, APP_PER_SEC, APP_BURST) {
                        return refuse(
                            ErrorCode::RateLimited,
                            "more than 10 app messages per second: slow down",
                        );
                    }
                }
                if json_len(&data) > self.cfg.max_app_bytes {
                    return refuse(
                        ErrorCode::TooLarge,
                        format!("app data over {} bytes", self.cfg.max_app_bytes),
                    );
                }
                let to = match to {
                    AppTarget::All(false) => {
                        return refuse(ErrorCode::BadMessage, r#"use {"all": true}"#)
                    }
                    AppTarget::All(true) => To::Everyone,
                    AppTarget::Role(r) => To::Role(r),
                    AppTarget::Participant(p) => {
                        if !self.members.contains_key(&p) {
                            return refuse(ErrorCode::NotFound, "no such participant");
                        }
                        To::Participant(p)
                    }
                };
                if place == Place::Audience
                    && !matches!(to, To::Participant(_) | To::Role(Role::Producer))
                {
                    return refuse(
                        ErrorCode::NotAllowed,
                        "audience members send app messages to one participant or to producers",
                    );
                }
                o.send(to, ServerMsg::App { from: me, data });
                Ok(Reply::Ack)
            }
            ClientMsg::Move { participant, to } => {
                need_admin("move")?;
                let target = self.members.get(&participant).ok_or_else(no_participant)?;
                if to == Place::Backstage {
                    return refuse(
                        ErrorCode::BadMessage,
                        "move to audience, green_room or stage",
                    );
                }
                if target.role == Role::Producer {
                    return refuse(ErrorCode::NotAllowed, "producers stay backstage");
                }
                if target.place == to {
                    return Ok(Reply::Ack);
                }
                self.check_room_for(to)?;
                self.move_to(participant, to, me, o);
                Ok(Reply::Ack)
            }
            ClientMsg::Invite { participant } => {
                need_admin("invite")?;
                let target = self.members.get(&participant).ok_or_else(no_participant)?;
                if target.place != Place::Audience {
                    return refuse(ErrorCode::Conflict, "only audience members can be invited");
                }
                self.check_room_for(Place::GreenRoom)?;
                self.move_to(participant, Place::GreenRoom, me, o);
                Ok(Reply::Ack)
            }
            ClientMsg::Mute {
                participant,
                audio,
                video,
            } => {
                need_admin("mute")?;
                if audio.is_none() && video.is_none() {
                    return refuse(ErrorCode::BadMessage, "give audio and/or video");
                }
                let target = self
                    .members
                    .get_mut(&participant)
                    .ok_or_else(no_participant)?;
                if let Some(a) = audio {
                    target.muted.audio = a;
                }
                if let Some(v) = video {
                    target.muted.video = v;
                }
                let (muted, tplace) = (target.muted, target.place);
                o.send(
                    To::Participant(participant),
                    ServerMsg::Muted {
                        audio: muted.audio,
                        video: muted.video,
                    },
                );
                if tplace != Place::Audience {
                    self.announce(o, participant, listed_to(tplace), None);
                    o.effect(Effect::MediaPlanChanged);
                }
                Ok(Reply::Ack)
            }
            ClientMsg::Remove {
                participant,
                reason,
            } => {
                need_admin("remove")?;
                let reason = reason.unwrap_or_else(|| "removed by a producer".into());
                if reason.len() > MAX_REASON_BYTES {
                    return refuse(ErrorCode::TooLarge, "reason over 200 bytes");
                }
                if participant == me {
                    return refuse(ErrorCode::Conflict, "you cannot remove yourself: leave");
                }
                let target = self.members.get(&participant).ok_or_else(no_participant)?;
                self.banned_identities.insert(target.identity.clone());
                self.removed_pids.insert(participant);
                o.send(
                    To::Participant(participant),
                    ServerMsg::Removed {
                        reason: reason.clone(),
                    },
                );
                o.append(self.remove_member(participant));
                o.effect(Effect::Disconnect {
                    pid: participant,
                    reason,
                });
                self.counters.removed += 1;
                Ok(Reply::Ack)
            }
            ClientMsg::End {} => {
                need_admin("end")?;
                o.append(self.end(if is_server {
                    "ended by the server"
                } else {
                    "ended by a producer"
                }));
                Ok(Reply::Ack)
            }
            ClientMsg::Layout { layout } => {
                need_admin("layout")?;
                if json_len(&layout) > MAX_LAYOUT_BYTES {
                    return refuse(ErrorCode::TooLarge, "layout over 8192 bytes");
                }
                self.layout = layout.clone();
                o.send(To::Everyone, ServerMsg::Layout { layout });
                Ok(Reply::Ack)
            }
            ClientMsg::AudiencePage { cursor, limit } => {
                participant_only("audience_page")?;
                need_admin("audience_page")?;
                if limit == 0 || limit > MAX_PAGE_ITEMS {
                    return refuse(ErrorCode::BadMessage, "limit is 1..=500");
                }
                let (items, next_cursor) = self.audience_page(cursor, limit);
                o.send(
                    To::Participant(me),
                    ServerMsg::AudiencePage {
                        items,
                        next_cursor,
                        rid,
                    },
                );
                Ok(Reply::Done)
            }
        }
    }

    fn poll_mut(&mut self, id: u64) -> Option<&mut Poll> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        self.polls.get_mut(i)
    }

    fn check_room_for(&self, to: Place) -> Result<(), Refusal> {
        match to {
            Place::Stage if self.places[place_index(Place::Stage)].len() >= self.cfg.max_stage => {
                refuse(
                    ErrorCode::StageFull,
                    format!(
                        "the stage has {} participants (the limit): move someone off first",
                        self.cfg.max_stage
                    ),
                )
            }
            Place::GreenRoom
                if self.places[place_index(Place::GreenRoom)].len() >= self.cfg.max_green_room =>
            {
                refuse(
                    ErrorCode::LimitReached,
                    "the green room is full: move someone out first",
                )
            }
            _ => Ok(()),
        }
    }

    fn chat_send(
        &mut self,
        now: u64,
        me: Pid,
        grants: Grants,
        place: Place,
        text: String,
        o: &mut Outcome,
    ) -> Result<Reply, Refusal> {
        if !grants.chat {
            return refuse(ErrorCode::NotAllowed, "your token has no chat grant");
        }
        if text.trim().is_empty() {
            return refuse(ErrorCode::BadMessage, "the chat message is empty");
        }
        if text.len() > MAX_CHAT_BYTES {
            return refuse(ErrorCode::TooLarge, "chat message over 500 bytes");
        }
        let m = self.members.get_mut(&me).ok_or_else(gone)?;
        if !m.chat.take(now, CHAT_PER_SEC, CHAT_BURST) {
            return refuse(
                ErrorCode::RateLimited,
                "more than 1 chat message per second: slow down",
            );
        }
        let from = ChatFrom {
            id: me,
            name: m.name.clone(),
            role: m.role,
        };
        if place == Place::Audience
            && !self
                .audience_chat
                .take(now, AUDIENCE_CHAT_PER_SEC, AUDIENCE_CHAT_BURST)
        {
            self.counters.chat_dropped_audience_cap += 1;
            return refuse(
                ErrorCode::RateLimited,
                "the audience chat is busy: your message was not sent, try again",
            );
        }
        let msg = ChatMessage {
            id: self.next_msg_id,
            from,
            text,
            ts: now,
            featured: false,
        };
        self.next_msg_id += 1;
        let to = if visible_to_hosts(&msg) {
            To::Everyone
        } else {
            To::AllExceptRole(Role::Host)
        };
        self.chat.push_back(msg.clone());
        while self.chat.len() > self.cfg.chat_history {
            self.chat.pop_front();
        }
        self.counters.chat_sent += 1;
        o.send(to, ServerMsg::Chat { msg });
        Ok(Reply::Ack)
    }

    /// Move `pid` to `to` (checks done by the caller) and emit every event.
    fn move_to(&mut self, pid: Pid, to: Place, by: Pid, o: &mut Outcome) {
        let Some(m) = self.members.get_mut(&pid) else {
            return;
        };
        let from = m.place;
        m.place = to;
        let lowered = (from == Place::Audience && m.hand).then(|| m.name.clone());
        if lowered.is_some() {
            m.hand = false;
        }
        self.places[place_index(from)].remove(&pid);
        self.places[place_index(to)].insert(pid);
        if from == Place::Audience || to == Place::Audience {
            self.audience_dirty = true;
        }
        if let Some(name) = lowered {
            self.hands.retain(|p| *p != pid);
            o.send(
                To::Role(Role::Producer),
                ServerMsg::Hand {
                    participant: pid,
                    name,
                    raised: false,
                },
            );
        }
        // To the moved participant and the producers.
        let moved = ServerMsg::Moved {
            participant: pid,
            to,
        };
        o.send(To::Participant(pid), moved.clone());
        o.send(To::Role(Role::Producer), moved);
        if from == Place::Audience {
            o.send(To::Participant(pid), ServerMsg::Invited { by });
        }
        // About the moved participant, to those who see it now / saw it before.
        let before = listed_to(from);
        let after = listed_to(to);
        if !after.is_empty() {
            self.announce(o, pid, after, None);
        }
        let lost = before.minus(after);
        if !lost.is_empty() {
            o.send(
                To::Places {
                    set: lost,
                    except: Some(pid),
                },
                ServerMsg::ParticipantLeft { id: pid },
            );
        }
        // What the moved participant sees now that it did not before (and the reverse).
        for p in [Place::Stage, Place::GreenRoom, Place::Backstage] {
            let saw = listed_to(p).contains(from);
            let sees = listed_to(p).contains(to);
            if saw == sees {
                continue;
            }
            for other in self.places[place_index(p)].iter().copied() {
                if other == pid {
                    continue;
                }
                let msg = if sees {
                    match self.participant(other) {
                        Some(info) => ServerMsg::Participant(info),
                        None => continue,
                    }
                } else {
                    ServerMsg::ParticipantLeft { id: other }
                };
                o.send(To::Participant(pid), msg);
            }
        }
        o.effect(Effect::MediaPlanChanged);
    }

    /// End the session: everyone gets `ended`, then [`Effect::Ended`].
    pub fn end(&mut self, reason: &str) -> Outcome {
        let mut o = Outcome::default();
        if self.ended {
            return o;
        }
        self.ended = true;
        o.send(
            To::Everyone,
            ServerMsg::Ended {
                reason: reason.to_owned(),
            },
        );
        o.effect(Effect::Ended {
            reason: reason.to_owned(),
        });
        o
    }

    /// A page of the audience, by id: items after `cursor` (exclusive), at most `limit`
    /// (clamped to 1..=[`MAX_PAGE_ITEMS`]), and the cursor of the next page if there is one.
    pub fn audience_page(
        &self,
        cursor: Option<u64>,
        limit: u32,
    ) -> (Vec<ParticipantInfo>, Option<u64>) {
        let limit = limit.clamp(1, MAX_PAGE_ITEMS) as usize;
        let start = cursor.map_or(0, |c| c.saturating_add(1));
        let aud = &self.places[place_index(Place::Audience)];
        let mut it = aud.range(Pid(start)..);
        let items: Vec<ParticipantInfo> = it
            .by_ref()
            .take(limit)
            .filter_map(|p| self.participant(*p))
            .collect();
        let next = if it.next().is_some() {
            items.last().map(|i| i.id.0)
        } else {
            None
        };
        (items, next)
    }

    /// Whose media each place receives now.
    pub fn media_plan(&self) -> MediaPlan {
        let mut sources: Vec<Source> = self
            .members
            .iter()
            .filter(|(_, m)| m.place != Place::Audience)
            .map(|(pid, m)| Source {
                pid: *pid,
                role: m.role,
                place: m.place,
                may_publish: may_publish(m.role, m.grants, m.place),
                publishing: m.publishing,
                muted: m.muted,
            })
            .collect();
        sources.sort_by_key(|s| s.pid);
        MediaPlan { sources }
    }

    /// Whether `pid` may publish now (see [`may_publish`]).
    pub fn may_publish(&self, pid: Pid) -> bool {
        self.members
            .get(&pid)
            .is_some_and(|m| may_publish(m.role, m.grants, m.place))
    }

    /// Flush what is due at `now_ms`: the reaction window (one `reactions`), the audience count
    /// (at most one per [`AUDIENCE_COUNT_INTERVAL_MS`]), poll results (at most one per poll per
    /// [`POLL_RESULTS_INTERVAL_MS`]).
    pub fn tick(&mut self, now_ms: u64) -> Outcome {
        let mut o = Outcome::default();
        if self.ended {
            return o;
        }
        if let Some(start) = self.reaction_window_start {
            if now_ms >= start.saturating_add(self.cfg.reaction_window_ms) {
                self.reaction_window_start = None;
                let counts = std::mem::take(&mut self.reactions);
                if !counts.is_empty() {
                    self.counters.reaction_messages += 1;
                    o.send(
                        To::Everyone,
                        ServerMsg::Reactions {
                            window_ms: self.cfg.reaction_window_ms,
                            counts,
                        },
                    );
                }
            }
        }
        if self.audience_dirty
            && self
                .audience_last_sent
                .is_none_or(|t| now_ms >= t.saturating_add(AUDIENCE_COUNT_INTERVAL_MS))
        {
            self.audience_dirty = false;
            self.audience_last_sent = Some(now_ms);
            self.counters.audience_count_messages += 1;
            o.send(
                To::Everyone,
                ServerMsg::AudienceCount {
                    count: self.audience_count(),
                },
            );
        }
        for p in &mut self.polls {
            if p.dirty && now_ms >= p.last_sent_ms.saturating_add(POLL_RESULTS_INTERVAL_MS) {
                p.dirty = false;
                p.last_sent_ms = now_ms;
                self.counters.poll_updates += 1;
                o.send(
                    To::Everyone,
                    ServerMsg::Poll {
                        poll: p.info.clone(),
                    },
                );
            }
        }
        o
    }

    /// When [`Session::tick`] next has something to do (session ms), `None` if nothing is
    /// pending.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.ended {
            return None;
        }
        let reactions = self
            .reaction_window_start
            .map(|s| s.saturating_add(self.cfg.reaction_window_ms));
        let audience = self.audience_dirty.then(|| {
            self.audience_last_sent
                .map_or(0, |t| t.saturating_add(AUDIENCE_COUNT_INTERVAL_MS))
        });
        let polls = self
            .polls
            .iter()
            .filter(|p| p.dirty)
            .map(|p| p.last_sent_ms.saturating_add(POLL_RESULTS_INTERVAL_MS))
            .min();
        [reactions, audience, polls].into_iter().flatten().min()
    }

    /// Check the internal invariants (every participant in exactly one place, limits, indexes).
    /// For tests and debug assertions; returns what is broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        let total: usize = self.places.iter().map(BTreeSet::len).sum();
        if total != self.members.len() {
            return Err(format!(
                "{total} ids in places, {} members",
                self.members.len()
            ));
        }
        for (pid, m) in &self.members {
            for p in Place::ALL {
                let there = self.places[place_index(p)].contains(pid);
                if there != (m.place == p) {
                    return Err(format!(
                        "{pid} place {:?} but in set {p:?}: {there}",
                        m.place
                    ));
                }
            }
            if self.by_identity.get(&m.identity) != Some(pid) {
                return Err(format!("{pid} not indexed by its identity"));
            }
            if m.hand != self.hands.contains(pid) {
                return Err(format!("{pid} hand flag and hand list disagree"));
            }
            if m.hand && m.place != Place::Audience {
                return Err(format!("{pid} has a hand raised outside the audience"));
            }
        }
        if self.by_identity.len() != self.members.len() {
            return Err("identity index has stale entries".into());
        }
        if self.places[place_index(Place::Stage)].len() > self.cfg.max_stage {
            return Err("stage over its limit".into());
        }
        if self.places[place_index(Place::GreenRoom)].len() > self.cfg.max_green_room {
            return Err("green room over its limit".into());
        }
        if self.hands.len() > MAX_HANDS || self.reactions.len() > MAX_REACTION_KINDS {
            return Err("hands or reaction kinds over their limit".into());
        }
        if self.chat.len() > self.cfg.chat_history {
            return Err("chat history over its limit".into());
        }
        Ok(())
    }
}

fn gone() -> Refusal {
    Refusal {
        code: ErrorCode::NotJoined,
        reason: "send hello first".into(),
    }
}

fn no_participant() -> Refusal {
    Refusal {
        code: ErrorCode::NotFound,
        reason: "no such participant (left or never joined)".into(),
    }
}
