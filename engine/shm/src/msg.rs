//! Command / Event messages and their little-endian slot encoding.
//!
//! Every message is `kind u16 | body_len u16 | seq u32 | body[body_len]`, little-endian, with a
//! fixed layout per kind; variable tails carry their own length prefix and are bounded. Bytes in
//! the buffer after `8 + body_len` are ignored. Decoding borrows from the caller's buffer (a
//! private copy of the slot), never from shared memory. Byte tables: `docs/shm-contract.md`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::error::DecodeError;
use crate::{MAX_DATAGRAM, MAX_SHARDS, SLOT_SIZE};

/// Sequence number carried in every message header (control numbers its commands; the engine
/// numbers its events; `Event::Rejected` echoes the rejected command's `seq`).
pub type Seq = u32;

/// Bytes of the message header (`kind u16 | body_len u16 | seq u32`).
pub const MSG_HEADER_LEN: usize = 8;
/// Max ICE ufrag bytes in `AddTransport` / `StateTransport` (RFC 8445 allows 4..=256 chars; we
/// generate 16). Bounds per-transport memory in the engine's ufrag table.
pub const MAX_UFRAG_LEN: usize = 32;
/// Max ICE password bytes in `AddTransport` (we generate 24; RFC 8445 min 22).
pub const MAX_PWD_LEN: usize = 64;
/// Max SRTP master key bytes (AES-256 = 32).
pub const MAX_KEY_LEN: usize = 32;
/// Max SRTP master salt bytes (AES-CM = 14, AEAD = 12).
pub const MAX_SALT_LEN: usize = 14;
/// Max bytes of a [`ShortStr`] (mid / rid).
pub const MAX_SHORT_STR: usize = 16;
/// Simulcast encodings per track (and thus layers 0..MAX_ENCODINGS).
pub const MAX_ENCODINGS: usize = 3;
/// Header-extension id mappings per leg.
pub const MAX_EXT_MAP: usize = 16;
/// Most (track, level) entries in one `Event::AudioLevels` (ABI 3). Default 256: 5 bytes each,
/// so the body is at most 2 + 1280 bytes and fits one 2048-byte slot. A shard with more
/// reporting audio tracks spreads them over several intervals (see `ils-engine`'s core).
pub const MAX_AUDIO_LEVELS: usize = 256;
/// Bytes of one `Event::AudioLevels` entry: `track u32 | level u8`.
pub const AUDIO_LEVEL_ENTRY: usize = 5;
/// Quietest RFC 6464 level (-127 dBov = silence); levels are 0 (loudest) ..= 127.
pub const AUDIO_LEVEL_SILENT: u8 = 127;

/// Static description of one message kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    /// Kind number on the wire.
    pub kind: u16,
    /// Variant name (`"AddTransport"`).
    pub name: &'static str,
    /// Size-table entry name (`"cmd.AddTransport"`).
    pub size_name: &'static str,
    /// Smallest valid body length.
    pub min_body: u16,
    /// Largest valid body length.
    pub max_body: u16,
}

/// Kind numbers. Commands are `0x01xx`, events `0x02xx`; a kind of the wrong direction decodes as
/// [`DecodeError::UnknownKind`].
pub mod kinds {
    /// `Command::AddTransport`
    pub const ADD_TRANSPORT: u16 = 0x0101;
    /// `Command::RemoveTransport`
    pub const REMOVE_TRANSPORT: u16 = 0x0102;
    /// `Command::InstallSrtp`
    pub const INSTALL_SRTP: u16 = 0x0103;
    /// `Command::SendDatagram`
    pub const SEND_DATAGRAM: u16 = 0x0104;
    /// `Command::AddTrack`
    pub const ADD_TRACK: u16 = 0x0105;
    /// `Command::RemoveTrack`
    pub const REMOVE_TRACK: u16 = 0x0106;
    /// `Command::AddLeg`
    pub const ADD_LEG: u16 = 0x0107;
    /// `Command::RemoveLeg`
    pub const REMOVE_LEG: u16 = 0x0108;
    /// `Command::SelectLayer`
    pub const SELECT_LAYER: u16 = 0x0109;
    /// `Command::RequestKeyframe`
    pub const REQUEST_KEYFRAME: u16 = 0x010A;
    /// `Command::DumpState`
    pub const DUMP_STATE: u16 = 0x010B;
    /// `Command::RestartIce` (ABI 2)
    pub const RESTART_ICE: u16 = 0x010C;
    /// `Event::DtlsIn`
    pub const DTLS_IN: u16 = 0x0201;
    /// `Event::TupleLearned`
    pub const TUPLE_LEARNED: u16 = 0x0202;
    /// `Event::ConsentLost`
    pub const CONSENT_LOST: u16 = 0x0203;
    /// `Event::Rejected`
    pub const REJECTED: u16 = 0x0204;
    /// `Event::TransportStats`
    pub const TRANSPORT_STATS: u16 = 0x0205;
    /// `Event::LegStats`
    pub const LEG_STATS: u16 = 0x0206;
    /// `Event::TrackStats`
    pub const TRACK_STATS: u16 = 0x0207;
    /// `Event::StateTransport`
    pub const STATE_TRANSPORT: u16 = 0x0208;
    /// `Event::StateTrack`
    pub const STATE_TRACK: u16 = 0x0209;
    /// `Event::StateLeg`
    pub const STATE_LEG: u16 = 0x020A;
    /// `Event::DumpDone`
    pub const DUMP_DONE: u16 = 0x020B;
    /// `Event::AudioLevels` (ABI 3)
    pub const AUDIO_LEVELS: u16 = 0x020C;
}

const SHORT_STR_WIRE: usize = 1 + MAX_SHORT_STR; // 17
const ENCODING_WIRE: usize = 4 + 4 + SHORT_STR_WIRE; // 25
const TRACK_SPEC_WIRE: usize = 23 + SHORT_STR_WIRE + MAX_ENCODINGS * ENCODING_WIRE; // 115
const LEG_SPEC_WIRE: usize = 25 + 2 * MAX_EXT_MAP; // 57
const ADDR_WIRE: usize = 1 + 2 + 16 + 4 + 4; // 27

const fn k(
    kind: u16,
    name: &'static str,
    size_name: &'static str,
    min: usize,
    max: usize,
) -> KindInfo {
    KindInfo {
        kind,
        name,
        size_name,
        min_body: min as u16,
        max_body: max as u16,
    }
}

/// Every command kind with its body bounds (the source of the size table and the doc table).
pub const COMMAND_KINDS: [KindInfo; 12] = [
    k(
        kinds::ADD_TRANSPORT,
        "AddTransport",
        "cmd.AddTransport",
        10,
        10 + MAX_UFRAG_LEN + MAX_PWD_LEN,
    ),
    k(
        kinds::REMOVE_TRANSPORT,
        "RemoveTransport",
        "cmd.RemoveTransport",
        4,
        4,
    ),
    k(
        kinds::INSTALL_SRTP,
        "InstallSrtp",
        "cmd.InstallSrtp",
        10,
        10 + 2 * (MAX_KEY_LEN + MAX_SALT_LEN),
    ),
    k(
        kinds::SEND_DATAGRAM,
        "SendDatagram",
        "cmd.SendDatagram",
        6,
        6 + MAX_DATAGRAM,
    ),
    k(
        kinds::ADD_TRACK,
        "AddTrack",
        "cmd.AddTrack",
        TRACK_SPEC_WIRE,
        TRACK_SPEC_WIRE,
    ),
    k(kinds::REMOVE_TRACK, "RemoveTrack", "cmd.RemoveTrack", 4, 4),
    k(
        kinds::ADD_LEG,
        "AddLeg",
        "cmd.AddLeg",
        LEG_SPEC_WIRE,
        LEG_SPEC_WIRE,
    ),
    k(kinds::REMOVE_LEG, "RemoveLeg", "cmd.RemoveLeg", 4, 4),
    k(kinds::SELECT_LAYER, "SelectLayer", "cmd.SelectLayer", 5, 5),
    k(
        kinds::REQUEST_KEYFRAME,
        "RequestKeyframe",
        "cmd.RequestKeyframe",
        5,
        5,
    ),
    k(kinds::DUMP_STATE, "DumpState", "cmd.DumpState", 0, 0),
    k(
        kinds::RESTART_ICE,
        "RestartIce",
        "cmd.RestartIce",
        6,
        6 + MAX_UFRAG_LEN + MAX_PWD_LEN,
    ),
];

/// Every event kind with its body bounds.
pub const EVENT_KINDS: [KindInfo; 12] = [
    k(kinds::DTLS_IN, "DtlsIn", "evt.DtlsIn", 6, 6 + MAX_DATAGRAM),
    k(
        kinds::TUPLE_LEARNED,
        "TupleLearned",
        "evt.TupleLearned",
        5 + ADDR_WIRE,
        5 + ADDR_WIRE,
    ),
    k(kinds::CONSENT_LOST, "ConsentLost", "evt.ConsentLost", 4, 4),
    k(kinds::REJECTED, "Rejected", "evt.Rejected", 6, 6),
    k(
        kinds::TRANSPORT_STATS,
        "TransportStats",
        "evt.TransportStats",
        48,
        48,
    ),
    k(kinds::LEG_STATS, "LegStats", "evt.LegStats", 37, 37),
    k(kinds::TRACK_STATS, "TrackStats", "evt.TrackStats", 21, 21),
    k(
        kinds::STATE_TRANSPORT,
        "StateTransport",
        "evt.StateTransport",
        8 + ADDR_WIRE,
        8 + ADDR_WIRE + MAX_UFRAG_LEN,
    ),
    k(
        kinds::STATE_TRACK,
        "StateTrack",
        "evt.StateTrack",
        TRACK_SPEC_WIRE,
        TRACK_SPEC_WIRE,
    ),
    k(
        kinds::STATE_LEG,
        "StateLeg",
        "evt.StateLeg",
        LEG_SPEC_WIRE,
        LEG_SPEC_WIRE,
    ),
    k(kinds::DUMP_DONE, "DumpDone", "evt.DumpDone", 2, 2),
    k(
        kinds::AUDIO_LEVELS,
        "AudioLevels",
        "evt.AudioLevels",
        2,
        2 + MAX_AUDIO_LEVELS * AUDIO_LEVEL_ENTRY,
    ),
];

const _: () = {
    let mut i = 0;
    while i < COMMAND_KINDS.len() {
        assert!(MSG_HEADER_LEN + COMMAND_KINDS[i].max_body as usize <= SLOT_SIZE);
        i += 1;
    }
    let mut j = 0;
    while j < EVENT_KINDS.len() {
        assert!(MSG_HEADER_LEN + EVENT_KINDS[j].max_body as usize <= SLOT_SIZE);
        j += 1;
    }
    assert!(TRACK_SPEC_WIRE == 115);
    assert!(LEG_SPEC_WIRE == 57);
};

fn lookup(kinds: &[KindInfo], kind: u16) -> Option<&KindInfo> {
    kinds.iter().find(|k| k.kind == kind)
}

/// A string of at most [`MAX_SHORT_STR`] bytes stored inline (mid, rid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct ShortStr {
    /// Used bytes (0..=16).
    pub len: u8,
    /// Storage; bytes past `len` are zero when built by [`ShortStr::from_bytes`] or decoded.
    pub bytes: [u8; 16],
}

impl ShortStr {
    /// Copy `b` in; `None` when longer than [`MAX_SHORT_STR`].
    pub fn from_bytes(b: &[u8]) -> Option<ShortStr> {
        let mut s = ShortStr::default();
        s.bytes.get_mut(..b.len())?.copy_from_slice(b);
        s.len = b.len() as u8;
        Some(s)
    }
    /// The used bytes (clamped to 16 even if `len` was set out of range).
    pub fn as_bytes(&self) -> &[u8] {
        let n = (self.len as usize).min(MAX_SHORT_STR);
        self.bytes.get(..n).unwrap_or(&[])
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

/// Audio or video.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum MediaKind {
    /// Audio (wire 0).
    #[default]
    Audio = 0,
    /// Video (wire 1).
    Video = 1,
}

/// One simulcast encoding of a published track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EncodingSpec {
    /// Media SSRC; 0 = learn from the RID header extension.
    pub ssrc: u32,
    /// RTX SSRC; 0 = none / learn from the repaired-RID extension.
    pub rtx_ssrc: u32,
    /// RID (empty when not simulcast).
    pub rid: ShortStr,
}

/// A published track (sent to every shard; `home_shard` receives the publisher's packets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrackSpec {
    /// Track handle (chosen by control, unique per engine).
    pub track: u32,
    /// Publisher transport handle.
    pub transport: u32,
    /// Shard that owns the publisher transport (< MAX_SHARDS).
    pub home_shard: u16,
    /// Audio or video.
    pub kind: MediaKind,
    /// 0 opus, 1 vp8, 2 vp9, 3 h264, 4 av1, 255 other.
    pub codec: u8,
    /// RTP clock rate (Hz).
    pub clock_rate: u32,
    /// Media payload type (0..=127).
    pub pt: u8,
    /// RTX payload type (0..=127), 0 = none.
    pub rtx_pt: u8,
    /// SDP mid.
    pub mid: ShortStr,
    /// Publisher's ext id of `sdes:mid`, 0 = none.
    pub mid_ext: u8,
    /// Publisher's ext id of `sdes:rtp-stream-id`, 0 = none.
    pub rid_ext: u8,
    /// Video: publisher's ext id of `sdes:repaired-rtp-stream-id`, 0 = none. Audio (ABI 3):
    /// publisher's ext id of `ssrc-audio-level` (RFC 6464), 0 = none; see
    /// [`TrackSpec::audio_level_ext`]. One byte serves both: audio tracks have no RTX by RID.
    pub rrid_ext: u8,
    /// Publisher's ext id of transport-wide-cc, 0 = none.
    pub twcc_ext: u8,
    /// Encodings in use (1..=3).
    pub n_encodings: u8,
    /// Encodings; entries at index >= `n_encodings` are carried but unused.
    pub encodings: [EncodingSpec; 3],
}

/// Codec numbers accepted in [`TrackSpec::codec`].
pub const CODECS: [u8; 6] = [0, 1, 2, 3, 4, 255];

impl TrackSpec {
    /// The publisher's `ssrc-audio-level` ext id for an audio track (byte 20), 0 = none / video.
    pub fn audio_level_ext(&self) -> u8 {
        match self.kind {
            MediaKind::Audio => self.rrid_ext,
            MediaKind::Video => 0,
        }
    }

    /// The publisher's `repaired-rtp-stream-id` ext id (byte 20 of a video track), 0 = none /
    /// audio.
    pub fn repaired_rid_ext(&self) -> u8 {
        match self.kind {
            MediaKind::Audio => 0,
            MediaKind::Video => self.rrid_ext,
        }
    }

    /// Check every field's domain (also done by encode and decode).
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.home_shard as usize >= MAX_SHARDS {
            return Err(DecodeError::BadValue("home_shard"));
        }
        if !CODECS.contains(&self.codec) {
            return Err(DecodeError::BadValue("codec"));
        }
        if self.pt > 127 {
            return Err(DecodeError::BadValue("pt"));
        }
        if self.rtx_pt > 127 {
            return Err(DecodeError::BadValue("rtx_pt"));
        }
        if self.n_encodings == 0 || self.n_encodings as usize > MAX_ENCODINGS {
            return Err(DecodeError::BadValue("n_encodings"));
        }
        if self.mid.len as usize > MAX_SHORT_STR {
            return Err(DecodeError::BadValue("mid"));
        }
        if self
            .encodings
            .iter()
            .any(|e| e.rid.len as usize > MAX_SHORT_STR)
        {
            return Err(DecodeError::BadValue("rid"));
        }
        Ok(())
    }
}

/// A subscription leg (sent to the subscriber transport's shard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LegSpec {
    /// Leg handle.
    pub leg: u32,
    /// Track it forwards.
    pub track: u32,
    /// Subscriber transport.
    pub transport: u32,
    /// SSRC toward the subscriber.
    pub ssrc: u32,
    /// RTX SSRC toward the subscriber (0 = none).
    pub rtx_ssrc: u32,
    /// Payload type toward the subscriber (0..=127).
    pub pt: u8,
    /// RTX payload type toward the subscriber (0..=127, 0 = none).
    pub rtx_pt: u8,
    /// Initial layer (< MAX_ENCODINGS).
    pub layer: u8,
    /// Receiver's transport-cc ext id, 0 = none.
    pub twcc_ext: u8,
    /// Entries of `ext_map` in use (0..=16).
    pub n_ext_map: u8,
    /// (publisher id, receiver id) header-extension rewrites.
    pub ext_map: [(u8, u8); 16],
}

impl LegSpec {
    /// Check every field's domain (also done by encode and decode).
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.pt > 127 {
            return Err(DecodeError::BadValue("pt"));
        }
        if self.rtx_pt > 127 {
            return Err(DecodeError::BadValue("rtx_pt"));
        }
        if self.layer as usize >= MAX_ENCODINGS {
            return Err(DecodeError::BadValue("layer"));
        }
        if self.n_ext_map as usize > MAX_EXT_MAP {
            return Err(DecodeError::BadValue("n_ext_map"));
        }
        Ok(())
    }
}

/// Why the engine refused a command (carried by `Event::Rejected`). Wire value = discriminant.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The transport handle is not installed.
    UnknownTransport = 1,
    /// The transport handle (or ufrag) is already installed.
    DuplicateTransport = 2,
    /// The track handle is not installed.
    UnknownTrack = 3,
    /// The track handle is already installed.
    DuplicateTrack = 4,
    /// The leg handle is not installed.
    UnknownLeg = 5,
    /// The leg handle is already installed.
    DuplicateLeg = 6,
    /// SRTP key/salt length does not match the profile.
    BadKeyLength = 7,
    /// SRTP protection profile not supported.
    UnknownProfile = 8,
    /// A bounded table is full.
    TableFull = 9,
    /// A field is out of range for the engine's state.
    BadField = 10,
    /// Command sent to a shard that does not own the object.
    WrongShard = 11,
    /// Payload too large.
    TooLarge = 12,
    /// The slot did not decode (garbage).
    Malformed = 13,
}

impl RejectReason {
    /// Every reason.
    pub const ALL: [RejectReason; 13] = [
        RejectReason::UnknownTransport,
        RejectReason::DuplicateTransport,
        RejectReason::UnknownTrack,
        RejectReason::DuplicateTrack,
        RejectReason::UnknownLeg,
        RejectReason::DuplicateLeg,
        RejectReason::BadKeyLength,
        RejectReason::UnknownProfile,
        RejectReason::TableFull,
        RejectReason::BadField,
        RejectReason::WrongShard,
        RejectReason::TooLarge,
        RejectReason::Malformed,
    ];
    /// Snake-case label (metrics / logs).
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::UnknownTransport => "unknown_transport",
            RejectReason::DuplicateTransport => "duplicate_transport",
            RejectReason::UnknownTrack => "unknown_track",
            RejectReason::DuplicateTrack => "duplicate_track",
            RejectReason::UnknownLeg => "unknown_leg",
            RejectReason::DuplicateLeg => "duplicate_leg",
            RejectReason::BadKeyLength => "bad_key_length",
            RejectReason::UnknownProfile => "unknown_profile",
            RejectReason::TableFull => "table_full",
            RejectReason::BadField => "bad_field",
            RejectReason::WrongShard => "wrong_shard",
            RejectReason::TooLarge => "too_large",
            RejectReason::Malformed => "malformed",
        }
    }
    /// From the wire value.
    pub fn from_u16(v: u16) -> Option<RejectReason> {
        Self::ALL.iter().copied().find(|r| *r as u16 == v)
    }
}

/// Control -> shard commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Install an ICE-lite transport (ufrag <= 32, pwd <= 64 bytes).
    AddTransport {
        /// Transport handle.
        transport: u32,
        /// Local ICE ufrag.
        ufrag: &'a [u8],
        /// Local ICE password (STUN short-term credential).
        pwd: &'a [u8],
        /// Consent freshness timeout.
        consent_timeout_ms: u32,
    },
    /// Remove a transport (and everything on it).
    RemoveTransport {
        /// Transport handle.
        transport: u32,
    },
    /// Install SRTP keys exported by DTLS (keys <= 32, salts <= 14 bytes).
    InstallSrtp {
        /// Transport handle.
        transport: u32,
        /// DTLS-SRTP protection profile id (RFC 5764 / 7714).
        profile: u16,
        /// Key for packets received from the peer.
        rx_key: &'a [u8],
        /// Salt for packets received from the peer.
        rx_salt: &'a [u8],
        /// Key for packets sent to the peer.
        tx_key: &'a [u8],
        /// Salt for packets sent to the peer.
        tx_salt: &'a [u8],
    },
    /// Send a datagram (DTLS) to the transport's selected tuple (<= MAX_DATAGRAM bytes).
    SendDatagram {
        /// Transport handle.
        transport: u32,
        /// Payload.
        data: &'a [u8],
    },
    /// Add a published track (to every shard).
    AddTrack(TrackSpec),
    /// Remove a track.
    RemoveTrack {
        /// Track handle.
        track: u32,
    },
    /// Add a subscription leg (to the subscriber transport's shard).
    AddLeg(LegSpec),
    /// Remove a leg.
    RemoveLeg {
        /// Leg handle.
        leg: u32,
    },
    /// Switch a leg's simulcast layer.
    SelectLayer {
        /// Leg handle.
        leg: u32,
        /// Layer (< MAX_ENCODINGS).
        layer: u8,
    },
    /// Ask the publisher for a keyframe.
    RequestKeyframe {
        /// Track handle.
        track: u32,
        /// Layer (< MAX_ENCODINGS).
        layer: u8,
    },
    /// Shard answers with State* events then DumpDone (control reconciles after restart).
    DumpState,
    /// ICE restart (RFC 8445 §9, WHIP/WHEP PATCH): replace the transport's local ICE credentials
    /// (ufrag <= 32, pwd <= 64 bytes, as `AddTransport`). SRTP keys, tracks and legs stay; the
    /// current validated tuples keep carrying DTLS/SRTP until the first authenticated check with
    /// the new credentials; checks with the old ufrag get no reply from then on.
    RestartIce {
        /// Transport handle.
        transport: u32,
        /// New local ICE ufrag.
        ufrag: &'a [u8],
        /// New local ICE password.
        pwd: &'a [u8],
    },
}

/// Shard -> control events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A DTLS datagram from a validated tuple (<= MAX_DATAGRAM bytes).
    DtlsIn {
        /// Transport handle.
        transport: u32,
        /// Datagram.
        data: &'a [u8],
    },
    /// ICE learned (or nominated) a tuple.
    TupleLearned {
        /// Transport handle.
        transport: u32,
        /// Remote address.
        addr: SocketAddr,
        /// USE-CANDIDATE seen.
        nominated: bool,
    },
    /// Consent freshness expired.
    ConsentLost {
        /// Transport handle.
        transport: u32,
    },
    /// A command was refused.
    Rejected {
        /// The command's seq.
        seq: Seq,
        /// Why.
        reason: RejectReason,
    },
    /// Periodic per-transport stats.
    TransportStats {
        /// Transport handle.
        transport: u32,
        /// Packets received.
        rx_packets: u64,
        /// Bytes received.
        rx_bytes: u64,
        /// Packets sent.
        tx_packets: u64,
        /// Bytes sent.
        tx_bytes: u64,
        /// Packets dropped.
        drops: u64,
        /// RTT estimate in microseconds (0 = unknown).
        rtt_us: u32,
    },
    /// Periodic per-leg stats.
    LegStats {
        /// Leg handle.
        leg: u32,
        /// Packets forwarded.
        packets: u64,
        /// Bytes forwarded.
        bytes: u64,
        /// NACKs received.
        nacks: u64,
        /// PLIs received.
        plis: u64,
        /// Current layer.
        layer: u8,
    },
    /// Periodic per-track stats.
    TrackStats {
        /// Track handle.
        track: u32,
        /// Packets received.
        packets: u64,
        /// Bytes received.
        bytes: u64,
        /// Bitmask of layers seen recently.
        layers_active: u8,
    },
    /// DumpState answer: one transport.
    StateTransport {
        /// Transport handle.
        transport: u32,
        /// Local ufrag.
        ufrag: &'a [u8],
        /// Installed SRTP profile (0 = none).
        srtp_profile: u16,
        /// Selected tuple.
        selected: Option<SocketAddr>,
    },
    /// DumpState answer: one track.
    StateTrack(TrackSpec),
    /// DumpState answer: one leg.
    StateLeg(LegSpec),
    /// DumpState answer finished.
    DumpDone {
        /// Answering shard.
        shard: u16,
    },
    /// Periodic smoothed audio levels of the shard's home audio tracks (ABI 3).
    AudioLevels(AudioLevels<'a>),
}

/// The entries of an `Event::AudioLevels`: `n` entries of `track u32 | level u8` (level 0 =
/// loudest ..= 127 = silence, RFC 6464 -dBov). Decoding checked the count and every level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioLevels<'a> {
    raw: &'a [u8],
}

impl<'a> AudioLevels<'a> {
    /// Wrap encoded entries (`AUDIO_LEVEL_ENTRY` bytes each, e.g. built with
    /// [`AudioLevels::put`]). Refuses a length that is not a whole number of entries, more than
    /// `MAX_AUDIO_LEVELS` entries, or a level above 127.
    pub fn new(raw: &'a [u8]) -> Result<Self, DecodeError> {
        if raw.len() % AUDIO_LEVEL_ENTRY != 0 || raw.len() / AUDIO_LEVEL_ENTRY > MAX_AUDIO_LEVELS {
            return Err(DecodeError::BadLength);
        }
        if raw
            .chunks_exact(AUDIO_LEVEL_ENTRY)
            .any(|c| c[4] > AUDIO_LEVEL_SILENT)
        {
            return Err(DecodeError::BadValue("level"));
        }
        Ok(AudioLevels { raw })
    }

    /// Write entry `i` (`track`, `level` clamped to 127) into `buf`; returns false when `buf` is
    /// too small. Lets the engine build an event in a fixed scratch buffer without allocating.
    pub fn put(buf: &mut [u8], i: usize, track: u32, level: u8) -> bool {
        let at = i * AUDIO_LEVEL_ENTRY;
        let Some(e) = buf.get_mut(at..at + AUDIO_LEVEL_ENTRY) else {
            return false;
        };
        e[..4].copy_from_slice(&track.to_le_bytes());
        e[4] = level.min(AUDIO_LEVEL_SILENT);
        true
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.raw.len() / AUDIO_LEVEL_ENTRY
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// `(track, level)` pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u8)> + 'a {
        self.raw
            .chunks_exact(AUDIO_LEVEL_ENTRY)
            .map(|c| (u32::from_le_bytes([c[0], c[1], c[2], c[3]]), c[4]))
    }

    /// The encoded entries.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
}

// ---------------------------------------------------------------------------------------------
// Cursor helpers: never index, never panic.

struct W<'b> {
    out: &'b mut [u8],
    pos: usize,
}

impl W<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), DecodeError> {
        let end = self.pos.checked_add(b.len()).ok_or(DecodeError::TooShort)?;
        let dst = self
            .out
            .get_mut(self.pos..end)
            .ok_or(DecodeError::TooShort)?;
        dst.copy_from_slice(b);
        self.pos = end;
        Ok(())
    }
    fn u8(&mut self, v: u8) -> Result<(), DecodeError> {
        self.bytes(&[v])
    }
    fn u16(&mut self, v: u16) -> Result<(), DecodeError> {
        self.bytes(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> Result<(), DecodeError> {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<(), DecodeError> {
        self.bytes(&v.to_le_bytes())
    }
    /// Length-prefixed (u8) tail; `max` bounds it.
    fn tail_len(&mut self, b: &[u8], max: usize, field: &'static str) -> Result<(), DecodeError> {
        if b.len() > max {
            return Err(DecodeError::BadValue(field));
        }
        self.u8(b.len() as u8)
    }
    fn short_str(&mut self, s: &ShortStr, field: &'static str) -> Result<(), DecodeError> {
        if s.len as usize > MAX_SHORT_STR {
            return Err(DecodeError::BadValue(field));
        }
        self.u8(s.len)?;
        let mut b = [0u8; MAX_SHORT_STR];
        let used = s.as_bytes();
        if let Some(d) = b.get_mut(..used.len()) {
            d.copy_from_slice(used);
        }
        self.bytes(&b)
    }
    fn addr(&mut self, a: &SocketAddr) -> Result<(), DecodeError> {
        let mut ip = [0u8; 16];
        match a {
            SocketAddr::V4(v4) => {
                self.u8(4)?;
                self.u16(v4.port())?;
                if let Some(d) = ip.get_mut(..4) {
                    d.copy_from_slice(&v4.ip().octets());
                }
                self.bytes(&ip)?;
                self.u32(0)?;
                self.u32(0)
            }
            SocketAddr::V6(v6) => {
                self.u8(6)?;
                self.u16(v6.port())?;
                ip = v6.ip().octets();
                self.bytes(&ip)?;
                self.u32(v6.flowinfo())?;
                self.u32(v6.scope_id())
            }
        }
    }
    fn track_spec(&mut self, t: &TrackSpec) -> Result<(), DecodeError> {
        t.validate()?;
        self.u32(t.track)?;
        self.u32(t.transport)?;
        self.u16(t.home_shard)?;
        self.u8(t.kind as u8)?;
        self.u8(t.codec)?;
        self.u32(t.clock_rate)?;
        self.u8(t.pt)?;
        self.u8(t.rtx_pt)?;
        self.u8(t.mid_ext)?;
        self.u8(t.rid_ext)?;
        self.u8(t.rrid_ext)?;
        self.u8(t.twcc_ext)?;
        self.u8(t.n_encodings)?;
        self.short_str(&t.mid, "mid")?;
        for e in &t.encodings {
            self.u32(e.ssrc)?;
            self.u32(e.rtx_ssrc)?;
            self.short_str(&e.rid, "rid")?;
        }
        Ok(())
    }
    fn leg_spec(&mut self, l: &LegSpec) -> Result<(), DecodeError> {
        l.validate()?;
        self.u32(l.leg)?;
        self.u32(l.track)?;
        self.u32(l.transport)?;
        self.u32(l.ssrc)?;
        self.u32(l.rtx_ssrc)?;
        self.u8(l.pt)?;
        self.u8(l.rtx_pt)?;
        self.u8(l.layer)?;
        self.u8(l.twcc_ext)?;
        self.u8(l.n_ext_map)?;
        for (a, b) in &l.ext_map {
            self.u8(*a)?;
            self.u8(*b)?;
        }
        Ok(())
    }
}

struct R<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::BadLength)?;
        let s = self.b.get(self.pos..end).ok_or(DecodeError::BadLength)?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        <[u8; N]>::try_from(self.take(N)?).map_err(|_| DecodeError::BadLength)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array()?))
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadValue(field)),
        }
    }
    fn bounded_len(&mut self, max: usize, field: &'static str) -> Result<usize, DecodeError> {
        let n = self.u8()? as usize;
        if n > max {
            return Err(DecodeError::BadValue(field));
        }
        Ok(n)
    }
    fn short_str(&mut self, field: &'static str) -> Result<ShortStr, DecodeError> {
        let len = self.bounded_len(MAX_SHORT_STR, field)?;
        let raw: [u8; MAX_SHORT_STR] = self.array()?;
        ShortStr::from_bytes(raw.get(..len).ok_or(DecodeError::BadValue(field))?)
            .ok_or(DecodeError::BadValue(field))
    }
    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let fam = self.u8()?;
        let port = self.u16()?;
        let ip: [u8; 16] = self.array()?;
        let flow = self.u32()?;
        let scope = self.u32()?;
        match fam {
            4 => {
                let [a, b, c, d, rest @ ..] = ip;
                if rest.iter().any(|x| *x != 0) || flow != 0 || scope != 0 {
                    return Err(DecodeError::BadValue("addr_padding"));
                }
                Ok(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::new(a, b, c, d),
                    port,
                )))
            }
            6 => Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            ))),
            _ => Err(DecodeError::BadValue("addr_family")),
        }
    }
    fn track_spec(&mut self) -> Result<TrackSpec, DecodeError> {
        let track = self.u32()?;
        let transport = self.u32()?;
        let home_shard = self.u16()?;
        let kind = match self.u8()? {
            0 => MediaKind::Audio,
            1 => MediaKind::Video,
            _ => return Err(DecodeError::BadValue("media_kind")),
        };
        let codec = self.u8()?;
        let clock_rate = self.u32()?;
        let pt = self.u8()?;
        let rtx_pt = self.u8()?;
        let mid_ext = self.u8()?;
        let rid_ext = self.u8()?;
        let rrid_ext = self.u8()?;
        let twcc_ext = self.u8()?;
        let n_encodings = self.u8()?;
        let mid = self.short_str("mid")?;
        let mut encodings = [EncodingSpec::default(); MAX_ENCODINGS];
        for e in &mut encodings {
            e.ssrc = self.u32()?;
            e.rtx_ssrc = self.u32()?;
            e.rid = self.short_str("rid")?;
        }
        let t = TrackSpec {
            track,
            transport,
            home_shard,
            kind,
            codec,
            clock_rate,
            pt,
            rtx_pt,
            mid,
            mid_ext,
            rid_ext,
            rrid_ext,
            twcc_ext,
            n_encodings,
            encodings,
        };
        t.validate()?;
        Ok(t)
    }
    fn leg_spec(&mut self) -> Result<LegSpec, DecodeError> {
        let mut l = LegSpec {
            leg: self.u32()?,
            track: self.u32()?,
            transport: self.u32()?,
            ssrc: self.u32()?,
            rtx_ssrc: self.u32()?,
            pt: self.u8()?,
            rtx_pt: self.u8()?,
            layer: self.u8()?,
            twcc_ext: self.u8()?,
            n_ext_map: self.u8()?,
            ext_map: [(0, 0); MAX_EXT_MAP],
        };
        for m in &mut l.ext_map {
            *m = (self.u8()?, self.u8()?);
        }
        l.validate()?;
        Ok(l)
    }
    fn layer(&mut self) -> Result<u8, DecodeError> {
        let l = self.u8()?;
        if l as usize >= MAX_ENCODINGS {
            return Err(DecodeError::BadValue("layer"));
        }
        Ok(l)
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.b.len() {
            Ok(())
        } else {
            Err(DecodeError::BadLength)
        }
    }
}

/// Write header + body produced by `f`; returns total bytes.
fn encode_msg(
    table: &[KindInfo],
    kind: u16,
    seq: Seq,
    out: &mut [u8],
    f: impl FnOnce(&mut W<'_>) -> Result<(), DecodeError>,
) -> Result<usize, DecodeError> {
    let info = lookup(table, kind).ok_or(DecodeError::UnknownKind(kind))?;
    if out.len() < MSG_HEADER_LEN {
        return Err(DecodeError::TooShort);
    }
    let mut w = W {
        out: &mut *out,
        pos: MSG_HEADER_LEN,
    };
    f(&mut w)?;
    let total = w.pos;
    let body_len = total - MSG_HEADER_LEN;
    if body_len < info.min_body as usize || body_len > info.max_body as usize {
        return Err(DecodeError::BadLength);
    }
    let mut h = W { out, pos: 0 };
    h.u16(kind)?;
    h.u16(body_len as u16)?;
    h.u32(seq)?;
    Ok(total)
}

/// Split a buffer into (kind, seq, body) after checking kind and length bounds.
fn frame<'a>(table: &[KindInfo], buf: &'a [u8]) -> Result<(u16, Seq, R<'a>), DecodeError> {
    let mut h = R {
        b: buf.get(..MSG_HEADER_LEN).ok_or(DecodeError::TooShort)?,
        pos: 0,
    };
    let kind = h.u16()?;
    let body_len = h.u16()? as usize;
    let seq = h.u32()?;
    let info = lookup(table, kind).ok_or(DecodeError::UnknownKind(kind))?;
    if body_len < info.min_body as usize || body_len > info.max_body as usize {
        return Err(DecodeError::BadLength);
    }
    let body = buf
        .get(MSG_HEADER_LEN..MSG_HEADER_LEN + body_len)
        .ok_or(DecodeError::BadLength)?;
    Ok((kind, seq, R { b: body, pos: 0 }))
}

impl<'a> Command<'a> {
    /// Wire kind number of this command.
    pub fn kind(&self) -> u16 {
        match self {
            Command::AddTransport { .. } => kinds::ADD_TRANSPORT,
            Command::RemoveTransport { .. } => kinds::REMOVE_TRANSPORT,
            Command::InstallSrtp { .. } => kinds::INSTALL_SRTP,
            Command::SendDatagram { .. } => kinds::SEND_DATAGRAM,
            Command::AddTrack(_) => kinds::ADD_TRACK,
            Command::RemoveTrack { .. } => kinds::REMOVE_TRACK,
            Command::AddLeg(_) => kinds::ADD_LEG,
            Command::RemoveLeg { .. } => kinds::REMOVE_LEG,
            Command::SelectLayer { .. } => kinds::SELECT_LAYER,
            Command::RequestKeyframe { .. } => kinds::REQUEST_KEYFRAME,
            Command::DumpState => kinds::DUMP_STATE,
            Command::RestartIce { .. } => kinds::RESTART_ICE,
        }
    }

    /// Encode into `out` (normally a `[u8; SLOT_SIZE]`); returns the byte count. Fields outside
    /// their domain -> `BadValue`, `out` too small -> `TooShort`.
    pub fn encode(&self, seq: Seq, out: &mut [u8]) -> Result<usize, DecodeError> {
        encode_msg(&COMMAND_KINDS, self.kind(), seq, out, |w| match self {
            Command::AddTransport {
                transport,
                ufrag,
                pwd,
                consent_timeout_ms,
            } => {
                w.u32(*transport)?;
                w.u32(*consent_timeout_ms)?;
                w.tail_len(ufrag, MAX_UFRAG_LEN, "ufrag_len")?;
                w.tail_len(pwd, MAX_PWD_LEN, "pwd_len")?;
                w.bytes(ufrag)?;
                w.bytes(pwd)
            }
            Command::RemoveTransport { transport } => w.u32(*transport),
            Command::InstallSrtp {
                transport,
                profile,
                rx_key,
                rx_salt,
                tx_key,
                tx_salt,
            } => {
                w.u32(*transport)?;
                w.u16(*profile)?;
                w.tail_len(rx_key, MAX_KEY_LEN, "rx_key_len")?;
                w.tail_len(rx_salt, MAX_SALT_LEN, "rx_salt_len")?;
                w.tail_len(tx_key, MAX_KEY_LEN, "tx_key_len")?;
                w.tail_len(tx_salt, MAX_SALT_LEN, "tx_salt_len")?;
                w.bytes(rx_key)?;
                w.bytes(rx_salt)?;
                w.bytes(tx_key)?;
                w.bytes(tx_salt)
            }
            Command::SendDatagram { transport, data } => {
                if data.len() > MAX_DATAGRAM {
                    return Err(DecodeError::BadValue("data_len"));
                }
                w.u32(*transport)?;
                w.u16(data.len() as u16)?;
                w.bytes(data)
            }
            Command::AddTrack(t) => w.track_spec(t),
            Command::RemoveTrack { track } => w.u32(*track),
            Command::AddLeg(l) => w.leg_spec(l),
            Command::RemoveLeg { leg } => w.u32(*leg),
            Command::SelectLayer { leg, layer }
            | Command::RequestKeyframe { track: leg, layer } => {
                if *layer as usize >= MAX_ENCODINGS {
                    return Err(DecodeError::BadValue("layer"));
                }
                w.u32(*leg)?;
                w.u8(*layer)
            }
            Command::DumpState => Ok(()),
            Command::RestartIce {
                transport,
                ufrag,
                pwd,
            } => {
                w.u32(*transport)?;
                w.tail_len(ufrag, MAX_UFRAG_LEN, "ufrag_len")?;
                w.tail_len(pwd, MAX_PWD_LEN, "pwd_len")?;
                w.bytes(ufrag)?;
                w.bytes(pwd)
            }
        })
    }

    /// Decode one command from `buf` (a private copy of a slot). Validates everything.
    pub fn decode(buf: &'a [u8]) -> Result<(Seq, Command<'a>), DecodeError> {
        let (kind, seq, mut r) = frame(&COMMAND_KINDS, buf)?;
        let cmd = match kind {
            kinds::ADD_TRANSPORT => {
                let transport = r.u32()?;
                let consent_timeout_ms = r.u32()?;
                let ul = r.bounded_len(MAX_UFRAG_LEN, "ufrag_len")?;
                let pl = r.bounded_len(MAX_PWD_LEN, "pwd_len")?;
                let ufrag = r.take(ul)?;
                let pwd = r.take(pl)?;
                Command::AddTransport {
                    transport,
                    ufrag,
                    pwd,
                    consent_timeout_ms,
                }
            }
            kinds::REMOVE_TRANSPORT => Command::RemoveTransport {
                transport: r.u32()?,
            },
            kinds::INSTALL_SRTP => {
                let transport = r.u32()?;
                let profile = r.u16()?;
                let rk = r.bounded_len(MAX_KEY_LEN, "rx_key_len")?;
                let rs = r.bounded_len(MAX_SALT_LEN, "rx_salt_len")?;
                let tk = r.bounded_len(MAX_KEY_LEN, "tx_key_len")?;
                let ts = r.bounded_len(MAX_SALT_LEN, "tx_salt_len")?;
                Command::InstallSrtp {
                    transport,
                    profile,
                    rx_key: r.take(rk)?,
                    rx_salt: r.take(rs)?,
                    tx_key: r.take(tk)?,
                    tx_salt: r.take(ts)?,
                }
            }
            kinds::SEND_DATAGRAM => {
                let transport = r.u32()?;
                let n = r.u16()? as usize;
                if n > MAX_DATAGRAM {
                    return Err(DecodeError::BadValue("data_len"));
                }
                Command::SendDatagram {
                    transport,
                    data: r.take(n)?,
                }
            }
            kinds::ADD_TRACK => Command::AddTrack(r.track_spec()?),
            kinds::REMOVE_TRACK => Command::RemoveTrack { track: r.u32()? },
            kinds::ADD_LEG => Command::AddLeg(r.leg_spec()?),
            kinds::REMOVE_LEG => Command::RemoveLeg { leg: r.u32()? },
            kinds::SELECT_LAYER => Command::SelectLayer {
                leg: r.u32()?,
                layer: r.layer()?,
            },
            kinds::REQUEST_KEYFRAME => Command::RequestKeyframe {
                track: r.u32()?,
                layer: r.layer()?,
            },
            kinds::DUMP_STATE => Command::DumpState,
            kinds::RESTART_ICE => {
                let transport = r.u32()?;
                let ul = r.bounded_len(MAX_UFRAG_LEN, "ufrag_len")?;
                let pl = r.bounded_len(MAX_PWD_LEN, "pwd_len")?;
                Command::RestartIce {
                    transport,
                    ufrag: r.take(ul)?,
                    pwd: r.take(pl)?,
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok((seq, cmd))
    }
}

impl<'a> Event<'a> {
    /// Wire kind number of this event.
    pub fn kind(&self) -> u16 {
        match self {
            Event::DtlsIn { .. } => kinds::DTLS_IN,
            Event::TupleLearned { .. } => kinds::TUPLE_LEARNED,
            Event::ConsentLost { .. } => kinds::CONSENT_LOST,
            Event::Rejected { .. } => kinds::REJECTED,
            Event::TransportStats { .. } => kinds::TRANSPORT_STATS,
            Event::LegStats { .. } => kinds::LEG_STATS,
            Event::TrackStats { .. } => kinds::TRACK_STATS,
            Event::StateTransport { .. } => kinds::STATE_TRANSPORT,
            Event::StateTrack(_) => kinds::STATE_TRACK,
            Event::StateLeg(_) => kinds::STATE_LEG,
            Event::DumpDone { .. } => kinds::DUMP_DONE,
            Event::AudioLevels(_) => kinds::AUDIO_LEVELS,
        }
    }

    /// Encode into `out`; returns the byte count.
    pub fn encode(&self, seq: Seq, out: &mut [u8]) -> Result<usize, DecodeError> {
        encode_msg(&EVENT_KINDS, self.kind(), seq, out, |w| match self {
            Event::DtlsIn { transport, data } => {
                if data.len() > MAX_DATAGRAM {
                    return Err(DecodeError::BadValue("data_len"));
                }
                w.u32(*transport)?;
                w.u16(data.len() as u16)?;
                w.bytes(data)
            }
            Event::TupleLearned {
                transport,
                addr,
                nominated,
            } => {
                w.u32(*transport)?;
                w.u8(*nominated as u8)?;
                w.addr(addr)
            }
            Event::ConsentLost { transport } => w.u32(*transport),
            Event::Rejected { seq, reason } => {
                w.u32(*seq)?;
                w.u16(*reason as u16)
            }
            Event::TransportStats {
                transport,
                rx_packets,
                rx_bytes,
                tx_packets,
                tx_bytes,
                drops,
                rtt_us,
            } => {
                w.u32(*transport)?;
                w.u64(*rx_packets)?;
                w.u64(*rx_bytes)?;
                w.u64(*tx_packets)?;
                w.u64(*tx_bytes)?;
                w.u64(*drops)?;
                w.u32(*rtt_us)
            }
            Event::LegStats {
                leg,
                packets,
                bytes,
                nacks,
                plis,
                layer,
            } => {
                w.u32(*leg)?;
                w.u64(*packets)?;
                w.u64(*bytes)?;
                w.u64(*nacks)?;
                w.u64(*plis)?;
                w.u8(*layer)
            }
            Event::TrackStats {
                track,
                packets,
                bytes,
                layers_active,
            } => {
                w.u32(*track)?;
                w.u64(*packets)?;
                w.u64(*bytes)?;
                w.u8(*layers_active)
            }
            Event::StateTransport {
                transport,
                ufrag,
                srtp_profile,
                selected,
            } => {
                w.u32(*transport)?;
                w.u16(*srtp_profile)?;
                match selected {
                    Some(a) => {
                        w.u8(1)?;
                        w.addr(a)?;
                    }
                    None => {
                        w.u8(0)?;
                        w.bytes(&[0u8; ADDR_WIRE])?;
                    }
                }
                w.tail_len(ufrag, MAX_UFRAG_LEN, "ufrag_len")?;
                w.bytes(ufrag)
            }
            Event::StateTrack(t) => w.track_spec(t),
            Event::StateLeg(l) => w.leg_spec(l),
            Event::DumpDone { shard } => w.u16(*shard),
            Event::AudioLevels(l) => {
                let l = AudioLevels::new(l.raw)?;
                w.u16(l.len() as u16)?;
                w.bytes(l.raw)
            }
        })
    }

    /// Decode one event from `buf` (a private copy of a slot). Validates everything.
    pub fn decode(buf: &'a [u8]) -> Result<(Seq, Event<'a>), DecodeError> {
        let (kind, seq, mut r) = frame(&EVENT_KINDS, buf)?;
        let ev = match kind {
            kinds::DTLS_IN => {
                let transport = r.u32()?;
                let n = r.u16()? as usize;
                if n > MAX_DATAGRAM {
                    return Err(DecodeError::BadValue("data_len"));
                }
                Event::DtlsIn {
                    transport,
                    data: r.take(n)?,
                }
            }
            kinds::TUPLE_LEARNED => {
                let transport = r.u32()?;
                let nominated = r.flag("nominated")?;
                Event::TupleLearned {
                    transport,
                    addr: r.addr()?,
                    nominated,
                }
            }
            kinds::CONSENT_LOST => Event::ConsentLost {
                transport: r.u32()?,
            },
            kinds::REJECTED => {
                let seq = r.u32()?;
                let reason =
                    RejectReason::from_u16(r.u16()?).ok_or(DecodeError::BadValue("reason"))?;
                Event::Rejected { seq, reason }
            }
            kinds::TRANSPORT_STATS => Event::TransportStats {
                transport: r.u32()?,
                rx_packets: r.u64()?,
                rx_bytes: r.u64()?,
                tx_packets: r.u64()?,
                tx_bytes: r.u64()?,
                drops: r.u64()?,
                rtt_us: r.u32()?,
            },
            kinds::LEG_STATS => Event::LegStats {
                leg: r.u32()?,
                packets: r.u64()?,
                bytes: r.u64()?,
                nacks: r.u64()?,
                plis: r.u64()?,
                layer: r.u8()?,
            },
            kinds::TRACK_STATS => Event::TrackStats {
                track: r.u32()?,
                packets: r.u64()?,
                bytes: r.u64()?,
                layers_active: r.u8()?,
            },
            kinds::STATE_TRANSPORT => {
                let transport = r.u32()?;
                let srtp_profile = r.u16()?;
                let has = r.flag("has_selected")?;
                let selected = if has {
                    Some(r.addr()?)
                } else {
                    if r.take(ADDR_WIRE)?.iter().any(|b| *b != 0) {
                        return Err(DecodeError::BadValue("addr_padding"));
                    }
                    None
                };
                let n = r.bounded_len(MAX_UFRAG_LEN, "ufrag_len")?;
                Event::StateTransport {
                    transport,
                    ufrag: r.take(n)?,
                    srtp_profile,
                    selected,
                }
            }
            kinds::STATE_TRACK => Event::StateTrack(r.track_spec()?),
            kinds::STATE_LEG => Event::StateLeg(r.leg_spec()?),
            kinds::DUMP_DONE => Event::DumpDone { shard: r.u16()? },
            kinds::AUDIO_LEVELS => {
                let n = r.u16()? as usize;
                if n > MAX_AUDIO_LEVELS {
                    return Err(DecodeError::BadValue("n_levels"));
                }
                Event::AudioLevels(AudioLevels::new(r.take(n * AUDIO_LEVEL_ENTRY)?)?)
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok((seq, ev))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    pub(crate) fn sample_track() -> TrackSpec {
        TrackSpec {
            track: 0x0A0B0C0D,
            transport: 7,
            home_shard: 2,
            kind: MediaKind::Video,
            codec: 1,
            clock_rate: 90000,
            pt: 96,
            rtx_pt: 97,
            mid: ShortStr::from_bytes(b"v0").unwrap(),
            mid_ext: 4,
            rid_ext: 10,
            rrid_ext: 11,
            twcc_ext: 3,
            n_encodings: 2,
            encodings: [
                EncodingSpec {
                    ssrc: 0x11111111,
                    rtx_ssrc: 0x22222222,
                    rid: ShortStr::from_bytes(b"h").unwrap(),
                },
                EncodingSpec {
                    ssrc: 0,
                    rtx_ssrc: 0,
                    rid: ShortStr::from_bytes(b"l").unwrap(),
                },
                EncodingSpec::default(),
            ],
        }
    }

    pub(crate) fn sample_leg() -> LegSpec {
        let mut ext_map = [(0u8, 0u8); 16];
        ext_map[0] = (4, 1);
        ext_map[1] = (3, 5);
        LegSpec {
            leg: 9,
            track: 0x0A0B0C0D,
            transport: 8,
            ssrc: 0xDEADBEEF,
            rtx_ssrc: 0xCAFEBABE,
            pt: 96,
            rtx_pt: 97,
            layer: 1,
            twcc_ext: 5,
            n_ext_map: 2,
            ext_map,
        }
    }

    pub(crate) fn sample_commands() -> Vec<Command<'static>> {
        vec![
            Command::AddTransport {
                transport: 1,
                ufrag: b"uf",
                pwd: b"pw",
                consent_timeout_ms: 30000,
            },
            Command::RemoveTransport { transport: 1 },
            Command::InstallSrtp {
                transport: 1,
                profile: 1,
                rx_key: &[1; 16],
                rx_salt: &[2; 14],
                tx_key: &[3; 16],
                tx_salt: &[4; 14],
            },
            Command::SendDatagram {
                transport: 1,
                data: &[0x16, 0xfe, 0xfd],
            },
            Command::AddTrack(sample_track()),
            Command::RemoveTrack { track: 5 },
            Command::AddLeg(sample_leg()),
            Command::RemoveLeg { leg: 9 },
            Command::SelectLayer { leg: 9, layer: 2 },
            Command::RequestKeyframe { track: 5, layer: 0 },
            Command::DumpState,
            Command::RestartIce {
                transport: 1,
                ufrag: b"uf",
                pwd: b"pw",
            },
        ]
    }

    pub(crate) fn sample_events() -> Vec<Event<'static>> {
        vec![
            Event::DtlsIn {
                transport: 1,
                data: &[0x16, 0xfe, 0xfd],
            },
            Event::TupleLearned {
                transport: 1,
                addr: "192.0.2.1:5000".parse().unwrap(),
                nominated: true,
            },
            Event::ConsentLost { transport: 1 },
            Event::Rejected {
                seq: 42,
                reason: RejectReason::UnknownTransport,
            },
            Event::TransportStats {
                transport: 1,
                rx_packets: 2,
                rx_bytes: 3,
                tx_packets: 4,
                tx_bytes: 5,
                drops: 6,
                rtt_us: 7,
            },
            Event::LegStats {
                leg: 9,
                packets: 1,
                bytes: 2,
                nacks: 3,
                plis: 4,
                layer: 1,
            },
            Event::TrackStats {
                track: 5,
                packets: 1,
                bytes: 2,
                layers_active: 3,
            },
            Event::StateTransport {
                transport: 1,
                ufrag: b"uf",
                srtp_profile: 7,
                selected: Some("[2001:db8::1]:443".parse().unwrap()),
            },
            Event::StateTrack(sample_track()),
            Event::StateLeg(sample_leg()),
            Event::DumpDone { shard: 3 },
            Event::AudioLevels(AudioLevels::new(&[7, 0, 0, 0, 12, 9, 0, 0, 0, 127]).unwrap()),
        ]
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn enc_cmd(c: &Command<'_>, seq: Seq) -> Vec<u8> {
        let mut out = [0u8; SLOT_SIZE];
        let n = c.encode(seq, &mut out).unwrap();
        out[..n].to_vec()
    }

    fn enc_evt(e: &Event<'_>, seq: Seq) -> Vec<u8> {
        let mut out = [0u8; SLOT_SIZE];
        let n = e.encode(seq, &mut out).unwrap();
        out[..n].to_vec()
    }

    // Golden bytes: the wire format is an ABI; a change here needs an ABI_VERSION bump.
    fn track_hex() -> String {
        format!(
            "{}{}{}{}{}{}{}{}{}",
            "0d0c0b0a 07000000 0200 01 01 905f0100 60 61 04 0a 0b 03 02",
            "02 7630",
            "00".repeat(14),
            "11111111 22222222 01 68",
            "00".repeat(15),
            "00000000 00000000 01 6c",
            "00".repeat(15),
            "00000000 00000000 00",
            "00".repeat(16)
        )
    }
    fn leg_hex() -> String {
        format!(
            "09000000 0d0c0b0a 08000000 efbeadde bebafeca 60 61 01 05 02 0401 0305 {}",
            "00".repeat(28)
        )
    }

    fn golden_commands() -> Vec<String> {
        vec![
            "0101 0e00 01000000 01000000 30750000 02 02 7566 7077".into(),
            "0201 0400 01000000 01000000".into(),
            format!(
                "0301 4600 01000000 01000000 0100 10 0e 10 0e {}{}{}{}",
                "01".repeat(16),
                "02".repeat(14),
                "03".repeat(16),
                "04".repeat(14)
            ),
            "0401 0900 01000000 01000000 0300 16fefd".into(),
            format!("0501 7300 01000000 {}", track_hex()),
            "0601 0400 01000000 05000000".into(),
            format!("0701 3900 01000000 {}", leg_hex()),
            "0801 0400 01000000 09000000".into(),
            "0901 0500 01000000 09000000 02".into(),
            "0a01 0500 01000000 05000000 00".into(),
            "0b01 0000 01000000".into(),
            "0c01 0a00 01000000 01000000 02 02 7566 7077".into(),
        ]
    }

    fn golden_events() -> Vec<String> {
        vec![
            "0102 0900 02000000 01000000 0300 16fefd".into(),
            format!("0202 2000 02000000 01000000 01 04 8813 c0000201{} 00000000 00000000", "00".repeat(12)),
            "0302 0400 02000000 01000000".into(),
            "0402 0600 02000000 2a000000 0100".into(),
            format!(
                "0502 3000 02000000 01000000 {} {} {} {} {} 07000000",
                "0200000000000000",
                "0300000000000000",
                "0400000000000000",
                "0500000000000000",
                "0600000000000000"
            ),
            "0602 2500 02000000 09000000 0100000000000000 0200000000000000 0300000000000000 0400000000000000 01".into(),
            "0702 1500 02000000 05000000 0100000000000000 0200000000000000 03".into(),
            "0802 2500 02000000 01000000 0700 01 06 bb01 20010db8000000000000000000000001 00000000 00000000 02 7566".into(),
            format!("0902 7300 02000000 {}", track_hex()),
            format!("0a02 3900 02000000 {}", leg_hex()),
            "0b02 0200 02000000 0300".into(),
            "0c02 0c00 02000000 0200 07000000 0c 09000000 7f".into(),
        ]
    }

    fn squash(s: &str) -> String {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    }

    #[test]
    fn golden_bytes_commands() {
        for (c, g) in sample_commands().iter().zip(golden_commands()) {
            // kind is little-endian on the wire: 0x0105 -> "0501".
            assert_eq!(hex(&enc_cmd(c, 1)), squash(&g), "{c:?}");
        }
    }

    #[test]
    fn golden_bytes_events() {
        for (e, g) in sample_events().iter().zip(golden_events()) {
            let got = hex(&enc_evt(e, 2));
            assert_eq!(got, squash(&g), "{e:?}");
        }
    }

    #[test]
    fn audio_levels_hostile_decode_and_bounds() {
        let ok = enc_evt(
            &Event::AudioLevels(AudioLevels::new(&[1, 0, 0, 0, 5]).unwrap()),
            1,
        );
        let (_, e) = Event::decode(&ok).unwrap();
        let Event::AudioLevels(l) = e else {
            panic!("{e:?}")
        };
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![(1, 5)]);
        // level 128 is outside RFC 6464's 0..=127
        let mut b = ok.clone();
        b[14] = 128;
        assert_eq!(Event::decode(&b), Err(DecodeError::BadValue("level")));
        // count disagrees with body_len
        let mut b = ok.clone();
        b[8] = 2;
        assert!(Event::decode(&b).is_err());
        // count above the maximum
        let mut b = ok.clone();
        b[8..10].copy_from_slice(&(MAX_AUDIO_LEVELS as u16 + 1).to_le_bytes());
        assert!(Event::decode(&b).is_err());
        // encode refuses what decode would refuse
        assert!(AudioLevels::new(&[0; 4]).is_err());
        assert!(AudioLevels::new(&[1, 0, 0, 0, 200]).is_err());
        let full = vec![0u8; (MAX_AUDIO_LEVELS + 1) * AUDIO_LEVEL_ENTRY];
        assert!(AudioLevels::new(&full).is_err());
        // the largest event fits a slot and round-trips
        let mut big = vec![0u8; MAX_AUDIO_LEVELS * AUDIO_LEVEL_ENTRY];
        for i in 0..MAX_AUDIO_LEVELS {
            assert!(AudioLevels::put(&mut big, i, i as u32, 200));
        }
        assert!(!AudioLevels::put(&mut big, MAX_AUDIO_LEVELS, 1, 1));
        let e = Event::AudioLevels(AudioLevels::new(&big).unwrap());
        let b = enc_evt(&e, 3);
        assert!(b.len() <= SLOT_SIZE);
        let (_, d) = Event::decode(&b).unwrap();
        assert_eq!(d, e);
        let Event::AudioLevels(l) = d else {
            panic!("{d:?}")
        };
        assert_eq!(l.len(), MAX_AUDIO_LEVELS);
        assert!(
            l.iter().all(|(_, v)| v == AUDIO_LEVEL_SILENT),
            "put clamps to 127"
        );
    }

    #[test]
    fn audio_level_ext_shares_byte_20_with_rrid() {
        let mut t = sample_track();
        t.rrid_ext = 4;
        t.kind = MediaKind::Audio;
        assert_eq!((t.audio_level_ext(), t.repaired_rid_ext()), (4, 0));
        t.kind = MediaKind::Video;
        assert_eq!((t.audio_level_ext(), t.repaired_rid_ext()), (0, 4));
    }

    #[test]
    fn samples_cover_every_kind() {
        let ck: Vec<u16> = sample_commands().iter().map(|c| c.kind()).collect();
        let ek: Vec<u16> = sample_events().iter().map(|e| e.kind()).collect();
        assert_eq!(ck, COMMAND_KINDS.iter().map(|k| k.kind).collect::<Vec<_>>());
        assert_eq!(ek, EVENT_KINDS.iter().map(|k| k.kind).collect::<Vec<_>>());
    }

    #[test]
    fn samples_round_trip_and_every_truncation_fails() {
        for c in sample_commands() {
            let b = enc_cmd(&c, 77);
            assert_eq!(Command::decode(&b), Ok((77, c)));
            // trailing bytes after body_len are ignored (slot tail)
            let mut longer = b.clone();
            longer.extend_from_slice(&[0xAA; 5]);
            assert_eq!(Command::decode(&longer), Ok((77, c)));
            for n in 0..b.len() {
                assert!(Command::decode(&b[..n]).is_err(), "{c:?} truncated to {n}");
            }
            for n in 0..b.len() {
                let mut out = vec![0u8; n];
                assert_eq!(c.encode(1, &mut out), Err(DecodeError::TooShort));
            }
        }
        for e in sample_events() {
            let b = enc_evt(&e, 78);
            assert_eq!(Event::decode(&b), Ok((78, e)));
            for n in 0..b.len() {
                assert!(Event::decode(&b[..n]).is_err(), "{e:?} truncated to {n}");
            }
        }
    }

    #[test]
    fn truncation_errors_are_typed() {
        let b = enc_cmd(&Command::AddTrack(sample_track()), 1);
        assert_eq!(Command::decode(&b[..7]), Err(DecodeError::TooShort));
        assert_eq!(Command::decode(&b[..8]), Err(DecodeError::BadLength));
        assert_eq!(Command::decode(&[]), Err(DecodeError::TooShort));
    }

    #[test]
    fn unknown_kind_and_wrong_direction() {
        let mut b = enc_cmd(&Command::DumpState, 1);
        b[0] = 0xff;
        b[1] = 0x7f;
        assert_eq!(Command::decode(&b), Err(DecodeError::UnknownKind(0x7fff)));
        assert_eq!(Event::decode(&b), Err(DecodeError::UnknownKind(0x7fff)));
        let ev = enc_evt(&Event::DumpDone { shard: 1 }, 1);
        assert_eq!(
            Command::decode(&ev),
            Err(DecodeError::UnknownKind(kinds::DUMP_DONE))
        );
        let cmd = enc_cmd(&Command::RemoveLeg { leg: 1 }, 1);
        assert_eq!(
            Event::decode(&cmd),
            Err(DecodeError::UnknownKind(kinds::REMOVE_LEG))
        );
    }

    #[test]
    fn body_len_beyond_buffer_or_max() {
        let mut b = enc_cmd(&Command::RemoveLeg { leg: 1 }, 1);
        // body_len 5 > fixed size 4
        b[2] = 5;
        b.push(0);
        assert_eq!(Command::decode(&b), Err(DecodeError::BadLength));
        // SendDatagram with body_len beyond the buffer
        let mut d = enc_cmd(
            &Command::SendDatagram {
                transport: 1,
                data: &[1, 2, 3],
            },
            1,
        );
        d[2..4].copy_from_slice(&100u16.to_le_bytes());
        assert_eq!(Command::decode(&d), Err(DecodeError::BadLength));
        // body_len beyond the kind's max even though the buffer is big
        let mut big = vec![0u8; SLOT_SIZE];
        big[..d.len()].copy_from_slice(&d);
        big[2..4].copy_from_slice(&(6u16 + MAX_DATAGRAM as u16 + 1).to_le_bytes());
        assert_eq!(Command::decode(&big), Err(DecodeError::BadLength));
        big[2..4].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(Command::decode(&big), Err(DecodeError::BadLength));
        // body_len smaller than the fixed part
        let mut s = enc_cmd(&Command::AddTrack(sample_track()), 1);
        s[2..4].copy_from_slice(&100u16.to_le_bytes());
        assert_eq!(Command::decode(&s), Err(DecodeError::BadLength));
        // body_len disagrees with inner length prefix (data_len 3 but body has 2 extra bytes)
        let mut x = enc_cmd(
            &Command::SendDatagram {
                transport: 1,
                data: &[1, 2, 3],
            },
            1,
        );
        x.extend_from_slice(&[9, 9]);
        x[2..4].copy_from_slice(&11u16.to_le_bytes());
        assert_eq!(Command::decode(&x), Err(DecodeError::BadLength));
        // inner prefix larger than body
        let mut y = enc_cmd(
            &Command::SendDatagram {
                transport: 1,
                data: &[1, 2, 3],
            },
            1,
        );
        y[12..14].copy_from_slice(&4u16.to_le_bytes());
        assert_eq!(Command::decode(&y), Err(DecodeError::BadLength));
        y[12..14].copy_from_slice(&1501u16.to_le_bytes());
        assert_eq!(Command::decode(&y), Err(DecodeError::BadValue("data_len")));
    }

    #[test]
    fn bad_values() {
        let b = enc_cmd(&Command::AddTrack(sample_track()), 1);
        // mid ShortStr len at body offset 23 -> buffer offset 31
        let mut m = b.clone();
        m[8 + 23] = 17;
        assert_eq!(Command::decode(&m), Err(DecodeError::BadValue("mid")));
        let mut r = b.clone();
        r[8 + 40 + 8] = 200; // first encoding's rid len
        assert_eq!(Command::decode(&r), Err(DecodeError::BadValue("rid")));
        let mut k = b.clone();
        k[8 + 10] = 2;
        assert_eq!(
            Command::decode(&k),
            Err(DecodeError::BadValue("media_kind"))
        );
        let mut c = b.clone();
        c[8 + 11] = 9;
        assert_eq!(Command::decode(&c), Err(DecodeError::BadValue("codec")));
        let mut h = b.clone();
        h[8 + 8] = 64;
        assert_eq!(
            Command::decode(&h),
            Err(DecodeError::BadValue("home_shard"))
        );
        let mut n = b.clone();
        n[8 + 22] = 4;
        assert_eq!(
            Command::decode(&n),
            Err(DecodeError::BadValue("n_encodings"))
        );
        let mut p = b.clone();
        p[8 + 16] = 128;
        assert_eq!(Command::decode(&p), Err(DecodeError::BadValue("pt")));

        let l = enc_cmd(&Command::AddLeg(sample_leg()), 1);
        let mut le = l.clone();
        le[8 + 24] = 17;
        assert_eq!(
            Command::decode(&le),
            Err(DecodeError::BadValue("n_ext_map"))
        );
        let mut ll = l.clone();
        ll[8 + 22] = 3;
        assert_eq!(Command::decode(&ll), Err(DecodeError::BadValue("layer")));

        let mut sl = enc_cmd(&Command::SelectLayer { leg: 1, layer: 0 }, 1);
        sl[12] = 3;
        assert_eq!(Command::decode(&sl), Err(DecodeError::BadValue("layer")));

        let mut at = enc_cmd(
            &Command::AddTransport {
                transport: 1,
                ufrag: b"u",
                pwd: b"p",
                consent_timeout_ms: 1,
            },
            1,
        );
        at[16] = 33;
        assert_eq!(
            Command::decode(&at),
            Err(DecodeError::BadValue("ufrag_len"))
        );

        let mut rj = enc_evt(
            &Event::Rejected {
                seq: 1,
                reason: RejectReason::Malformed,
            },
            1,
        );
        rj[12..14].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(Event::decode(&rj), Err(DecodeError::BadValue("reason")));
        rj[12..14].copy_from_slice(&14u16.to_le_bytes());
        assert_eq!(Event::decode(&rj), Err(DecodeError::BadValue("reason")));

        let mut tl = enc_evt(
            &Event::TupleLearned {
                transport: 1,
                addr: "10.0.0.1:1".parse().unwrap(),
                nominated: false,
            },
            1,
        );
        tl[12] = 2;
        assert_eq!(Event::decode(&tl), Err(DecodeError::BadValue("nominated")));
        tl[12] = 0;
        tl[13] = 5;
        assert_eq!(
            Event::decode(&tl),
            Err(DecodeError::BadValue("addr_family"))
        );
        tl[13] = 4;
        tl[20] = 1; // v4 padding
        assert_eq!(
            Event::decode(&tl),
            Err(DecodeError::BadValue("addr_padding"))
        );

        let mut st = enc_evt(
            &Event::StateTransport {
                transport: 1,
                ufrag: b"u",
                srtp_profile: 0,
                selected: None,
            },
            1,
        );
        st[8 + 7] = 1; // padding of absent addr
        assert_eq!(
            Event::decode(&st),
            Err(DecodeError::BadValue("addr_padding"))
        );
    }

    /// RestartIce: the same credential bounds as AddTransport, and the body length must equal
    /// `6 + ufrag_len + pwd_len` exactly.
    #[test]
    fn restart_ice_hostile_decode() {
        let ok = enc_cmd(
            &Command::RestartIce {
                transport: 9,
                ufrag: b"abcd",
                pwd: &[b'p'; 64],
            },
            3,
        );
        assert_eq!(ok.len(), 8 + 6 + 4 + 64);
        assert!(matches!(
            Command::decode(&ok),
            Ok((3, Command::RestartIce { transport: 9, ufrag: b"abcd", pwd })) if pwd == [b'p'; 64]
        ));
        // ufrag_len / pwd_len beyond the contract
        let mut u = ok.clone();
        u[12] = 33;
        assert_eq!(Command::decode(&u), Err(DecodeError::BadValue("ufrag_len")));
        let mut p = ok.clone();
        p[13] = 65;
        assert_eq!(Command::decode(&p), Err(DecodeError::BadValue("pwd_len")));
        // inner lengths that disagree with body_len (too short / too long)
        let mut s = ok.clone();
        s[13] = 63;
        assert_eq!(Command::decode(&s), Err(DecodeError::BadLength));
        let mut l = ok.clone();
        l[12] = 5;
        assert_eq!(Command::decode(&l), Err(DecodeError::BadLength));
        // body_len beyond the kind's max (6 + 32 + 64)
        let mut big = vec![0u8; SLOT_SIZE];
        big[..ok.len()].copy_from_slice(&ok);
        big[2..4].copy_from_slice(&103u16.to_le_bytes());
        assert_eq!(Command::decode(&big), Err(DecodeError::BadLength));
        // body shorter than the fixed part
        let mut f = ok.clone();
        f[2..4].copy_from_slice(&5u16.to_le_bytes());
        assert_eq!(Command::decode(&f), Err(DecodeError::BadLength));
        // every truncation is an error, and encode refuses out-of-domain credentials
        for n in 0..ok.len() {
            assert!(Command::decode(&ok[..n]).is_err(), "truncated to {n}");
        }
        let mut out = [0u8; SLOT_SIZE];
        assert_eq!(
            Command::RestartIce {
                transport: 1,
                ufrag: &[b'u'; 33],
                pwd: b"",
            }
            .encode(1, &mut out),
            Err(DecodeError::BadValue("ufrag_len"))
        );
        assert_eq!(
            Command::RestartIce {
                transport: 1,
                ufrag: b"",
                pwd: &[b'p'; 65],
            }
            .encode(1, &mut out),
            Err(DecodeError::BadValue("pwd_len"))
        );
        // an event ring never carries it
        assert_eq!(
            Event::decode(&ok),
            Err(DecodeError::UnknownKind(kinds::RESTART_ICE))
        );
    }

    #[test]
    fn encode_rejects_out_of_domain() {
        let mut out = [0u8; SLOT_SIZE];
        let long = [0u8; 33];
        assert_eq!(
            Command::AddTransport {
                transport: 1,
                ufrag: &long,
                pwd: b"",
                consent_timeout_ms: 0
            }
            .encode(1, &mut out),
            Err(DecodeError::BadValue("ufrag_len"))
        );
        let key = [0u8; 33];
        assert_eq!(
            Command::InstallSrtp {
                transport: 1,
                profile: 1,
                rx_key: &key,
                rx_salt: &[],
                tx_key: &[],
                tx_salt: &[]
            }
            .encode(1, &mut out),
            Err(DecodeError::BadValue("rx_key_len"))
        );
        let big = [0u8; MAX_DATAGRAM + 1];
        assert_eq!(
            Command::SendDatagram {
                transport: 1,
                data: &big
            }
            .encode(1, &mut out),
            Err(DecodeError::BadValue("data_len"))
        );
        assert_eq!(
            Event::DtlsIn {
                transport: 1,
                data: &big
            }
            .encode(1, &mut out),
            Err(DecodeError::BadValue("data_len"))
        );
        let mut t = sample_track();
        t.mid.len = 17;
        assert_eq!(
            Command::AddTrack(t).encode(1, &mut out),
            Err(DecodeError::BadValue("mid"))
        );
        assert_eq!(
            Command::SelectLayer { leg: 1, layer: 3 }.encode(1, &mut out),
            Err(DecodeError::BadValue("layer"))
        );
        // Max-size messages fit a slot.
        let d = [7u8; MAX_DATAGRAM];
        let n = Command::SendDatagram {
            transport: 1,
            data: &d,
        }
        .encode(1, &mut out)
        .unwrap();
        assert_eq!(n, 8 + 6 + MAX_DATAGRAM);
        assert!(
            matches!(Command::decode(&out[..n]), Ok((1, Command::SendDatagram { data, .. })) if data == d)
        );
    }

    #[test]
    fn short_str_helpers() {
        assert!(ShortStr::from_bytes(&[0; 17]).is_none());
        let s = ShortStr::from_bytes(b"abc").unwrap();
        assert_eq!(s.as_bytes(), b"abc");
        let bad = ShortStr {
            len: 200,
            bytes: [1; 16],
        };
        assert_eq!(bad.as_bytes().len(), 16);
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::from_u16(r as u16), Some(r));
            assert!(!r.name().is_empty());
        }
    }

    fn arb_short() -> impl Strategy<Value = ShortStr> {
        vec(any::<u8>(), 0..=16).prop_map(|v| ShortStr::from_bytes(&v).unwrap())
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
                |(ip, p, f, s)| { SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), p, f, s)) }
            ),
        ]
    }

    prop_compose! {
        fn arb_track()(track in any::<u32>(), transport in any::<u32>(), home_shard in 0u16..64,
                       video in any::<bool>(), codec in proptest::sample::select(CODECS.to_vec()),
                       clock_rate in any::<u32>(), pt in 0u8..=127, rtx_pt in 0u8..=127, mid in arb_short(),
                       exts in any::<[u8; 4]>(), n_encodings in 1u8..=3,
                       e in proptest::array::uniform3((any::<u32>(), any::<u32>(), arb_short())))
                       -> TrackSpec {
            TrackSpec { track, transport, home_shard, kind: if video { MediaKind::Video } else { MediaKind::Audio },
                codec, clock_rate, pt, rtx_pt, mid, mid_ext: exts[0], rid_ext: exts[1], rrid_ext: exts[2],
                twcc_ext: exts[3], n_encodings,
                encodings: e.map(|(ssrc, rtx_ssrc, rid)| EncodingSpec { ssrc, rtx_ssrc, rid }) }
        }
    }

    prop_compose! {
        fn arb_leg()(ids in any::<[u32; 5]>(), pt in 0u8..=127, rtx_pt in 0u8..=127, layer in 0u8..3,
                     twcc_ext in any::<u8>(), n_ext_map in 0u8..=16, ext_map in any::<[(u8, u8); 16]>()) -> LegSpec {
            LegSpec { leg: ids[0], track: ids[1], transport: ids[2], ssrc: ids[3], rtx_ssrc: ids[4], pt, rtx_pt,
                layer, twcc_ext, n_ext_map, ext_map }
        }
    }

    proptest! {
        #[test]
        fn command_round_trip(sel in 0usize..12, seq in any::<u32>(), a in any::<u32>(), b in any::<u32>(),
                              p16 in any::<u16>(), layer in 0u8..3,
                              ufrag in vec(any::<u8>(), 0..=32), pwd in vec(any::<u8>(), 0..=64),
                              k1 in vec(any::<u8>(), 0..=32), s1 in vec(any::<u8>(), 0..=14),
                              k2 in vec(any::<u8>(), 0..=32), s2 in vec(any::<u8>(), 0..=14),
                              data in vec(any::<u8>(), 0..=MAX_DATAGRAM), t in arb_track(), l in arb_leg()) {
            let c = match sel {
                0 => Command::AddTransport { transport: a, ufrag: &ufrag, pwd: &pwd, consent_timeout_ms: b },
                1 => Command::RemoveTransport { transport: a },
                2 => Command::InstallSrtp { transport: a, profile: p16, rx_key: &k1, rx_salt: &s1, tx_key: &k2, tx_salt: &s2 },
                3 => Command::SendDatagram { transport: a, data: &data },
                4 => Command::AddTrack(t),
                5 => Command::RemoveTrack { track: a },
                6 => Command::AddLeg(l),
                7 => Command::RemoveLeg { leg: a },
                8 => Command::SelectLayer { leg: a, layer },
                9 => Command::RequestKeyframe { track: a, layer },
                10 => Command::DumpState,
                _ => Command::RestartIce { transport: a, ufrag: &ufrag, pwd: &pwd },
            };
            let mut out = [0u8; SLOT_SIZE];
            let n = c.encode(seq, &mut out).unwrap();
            prop_assert_eq!(Command::decode(&out[..n]), Ok((seq, c)));
            for cut in [0, 7, 8, n / 2, n.saturating_sub(1)] {
                if cut < n {
                    prop_assert!(Command::decode(&out[..cut]).is_err());
                }
            }
        }

        #[test]
        fn event_round_trip(sel in 0usize..12, seq in any::<u32>(), a in any::<u32>(), r in any::<u32>(),
                            u in any::<[u64; 5]>(), p16 in any::<u16>(), b8 in any::<u8>(), flag in any::<bool>(),
                            reason in proptest::sample::select(RejectReason::ALL.to_vec()),
                            addr in arb_addr(), sel_addr in proptest::option::of(arb_addr()),
                            ufrag in vec(any::<u8>(), 0..=32),
                            data in vec(any::<u8>(), 0..=MAX_DATAGRAM), t in arb_track(), l in arb_leg()) {
            let e = match sel {
                0 => Event::DtlsIn { transport: a, data: &data },
                1 => Event::TupleLearned { transport: a, addr, nominated: flag },
                2 => Event::ConsentLost { transport: a },
                3 => Event::Rejected { seq: r, reason },
                4 => Event::TransportStats { transport: a, rx_packets: u[0], rx_bytes: u[1], tx_packets: u[2],
                                             tx_bytes: u[3], drops: u[4], rtt_us: r },
                5 => Event::LegStats { leg: a, packets: u[0], bytes: u[1], nacks: u[2], plis: u[3], layer: b8 },
                6 => Event::TrackStats { track: a, packets: u[0], bytes: u[1], layers_active: b8 },
                7 => Event::StateTransport { transport: a, ufrag: &ufrag, srtp_profile: p16, selected: sel_addr },
                8 => Event::StateTrack(t),
                9 => Event::StateLeg(l),
                10 => Event::DumpDone { shard: p16 },
                _ => Event::AudioLevels(AudioLevels::new(&data[..data.len() / 5 * 5]).unwrap_or(AudioLevels::new(&[]).unwrap())),
            };
            let mut out = [0u8; SLOT_SIZE];
            let n = e.encode(seq, &mut out).unwrap();
            prop_assert_eq!(Event::decode(&out[..n]), Ok((seq, e)));
            for cut in [0, 7, 8, n / 2, n.saturating_sub(1)] {
                if cut < n {
                    prop_assert!(Event::decode(&out[..cut]).is_err());
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in vec(any::<u8>(), 0..2100)) {
            let _ = Command::decode(&b);
            let _ = Event::decode(&b);
        }

        #[test]
        fn arbitrary_body_with_valid_header_never_panics(
            ci in 0usize..64, ev in any::<bool>(), len in any::<u16>(), body in vec(any::<u8>(), 0..1600)) {
            let kind = if ev {
                EVENT_KINDS[ci % EVENT_KINDS.len()].kind
            } else {
                COMMAND_KINDS[ci % COMMAND_KINDS.len()].kind
            };
            let mut b = Vec::with_capacity(8 + body.len());
            b.extend_from_slice(&kind.to_le_bytes());
            // half the time use the exact body length to get past framing
            let bl = if len % 2 == 0 { body.len() as u16 } else { len };
            b.extend_from_slice(&bl.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&body);
            let r1 = Command::decode(&b);
            let r2 = Event::decode(&b);
            if ev { prop_assert!(matches!(r1, Err(DecodeError::UnknownKind(_)))); let _ = r2; }
            else { prop_assert!(matches!(r2, Err(DecodeError::UnknownKind(_)))); let _ = r1; }
        }

        #[test]
        fn mutated_valid_messages_never_panic(i in 0usize..64, pos in any::<usize>(), v in any::<u8>(), ev in any::<bool>()) {
            let (evs, cmds) = (sample_events(), sample_commands());
            let mut b = if ev { enc_evt(&evs[i % evs.len()], 1) } else { enc_cmd(&cmds[i % cmds.len()], 1) };
            let p = pos % b.len();
            b[p] = v;
            let _ = Command::decode(&b);
            let _ = Event::decode(&b);
        }
    }
}
