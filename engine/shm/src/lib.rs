//! `ils-shm`: the shared-memory contract between the `ils-engine` data plane and the control process.
//!
//! One memfd region holds a versioned [`Header`], per-shard [`ShardCounters`] and two SPSC rings per
//! shard (commands control -> shard, events shard -> control) of fixed-size slots. Messages are
//! [`Command`]s and [`Event`]s with an explicit little-endian encoding; every decode validates because
//! the other side is untrusted. [`EventFd`] carries wakeups, and [`send_attach_fds`] /
//! [`recv_attach_fds`] pass the region and eventfds over a Unix socket (SCM_RIGHTS) so a (re)started
//! control process can attach to a running engine.
//!
//! The byte-level contract is documented in `docs/shm-contract.md`; tests pin it to this code.

#[cfg(not(all(target_os = "linux", target_endian = "little")))]
compile_error!(
    "ils-shm targets little-endian Linux (memfd, eventfd, in-place little-endian atomics)"
);

mod counters;
mod error;
mod eventfd;
mod fdpass;
mod layout;
mod msg;
mod region;
mod ring;

pub use counters::{Counter, ShardCounters, MAX_COUNTERS};
pub use error::{DecodeError, ShmError};
pub use eventfd::EventFd;
pub use fdpass::{recv_attach_fds, send_attach_fds, AttachFds, ATTACH_PAYLOAD_LEN, MAX_ATTACH_FDS};
pub use layout::{
    region_size, ring_stride, size_table, Header, RingCtl, SizeEntry, CACHE_LINE, COUNTERS_SIZE,
    HEADER_SIZE, MAX_RING_SLOTS, MIN_RING_SLOTS, RING_CTL_SIZE, SIZE_TABLE_CAP,
};
pub use msg::{
    kinds, AudioLevels, Command, EncodingSpec, Event, KindInfo, LegSpec, MediaKind, RejectReason,
    Seq, ShortStr, TrackSpec, AUDIO_LEVEL_ENTRY, AUDIO_LEVEL_SILENT, COMMAND_KINDS, EVENT_KINDS,
    MAX_AUDIO_LEVELS, MAX_ENCODINGS, MAX_EXT_MAP, MAX_KEY_LEN, MAX_PWD_LEN, MAX_SALT_LEN,
    MAX_SHORT_STR, MAX_UFRAG_LEN, MSG_HEADER_LEN,
};
pub use region::Region;
pub use ring::{Consumer, Full, Producer};

/// Region magic, the first 8 bytes of the memfd.
pub const MAGIC: [u8; 8] = *b"ILS-SHM\0";
/// ABI version. Bump on ANY change to the header, ring, counter or message layouts (see
/// `docs/shm-contract.md`, "ABI versioning rule"). History: 1 = initial contract; 2 = added
/// `Command::RestartIce` (kind 0x010C); 3 = added `Event::AudioLevels` (kind 0x020C), the
/// `audio_level_malformed` counter, and TrackSpec byte 20 carries the audio-level ext id for
/// audio tracks.
pub const ABI_VERSION: u32 = 3;
/// Bytes per ring slot; one message per slot (header + body must fit).
pub const SLOT_SIZE: usize = 2048;
/// Largest `DtlsIn` / `SendDatagram` payload in bytes (one UDP datagram at a 1500-byte path MTU).
pub const MAX_DATAGRAM: usize = 1500;
/// Most shards (engine cores) a region can describe. Bounds the region size and the attach fd count.
pub const MAX_SHARDS: usize = 64;
/// Default slots per ring (power of two). Worst-case memory =
/// `shards * 2 * slots * SLOT_SIZE` = 64 * 2 * 1024 * 2048 B = 256 MiB at `MAX_SHARDS`
/// (4 MiB per shard), plus header/counters/ring control.
pub const DEFAULT_RING_SLOTS: u32 = 1024;
