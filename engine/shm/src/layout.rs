//! In-memory layout of the region: [`Header`], [`RingCtl`], offsets, and the ABI size table.
//!
//! ```text
//! offset 0                      Header (HEADER_SIZE = 4096)
//! HEADER_SIZE                   ShardCounters[n_shards]            (COUNTERS_SIZE each)
//! + n_shards*COUNTERS_SIZE      rings[2*n_shards], ring r = 2*shard + dir (0 = command, 1 = event)
//!                               each ring: RingCtl (512) | lens[u32; slots] (padded to 128) | slots[slots][SLOT_SIZE]
//! total rounded up to 4096
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::counters::ShardCounters;
use crate::msg::{COMMAND_KINDS, EVENT_KINDS};
use crate::{MAX_DATAGRAM, MAX_SHARDS, SLOT_SIZE};

/// Alignment unit for fields written by different sides (two x86 cache lines, defeats the
/// adjacent-line prefetcher).
pub const CACHE_LINE: usize = 128;
/// Size of [`Header`] in the region (one page).
pub const HEADER_SIZE: usize = 4096;
/// Size of [`RingCtl`]: four 128-byte lines (tail, head, producer stats, consumer stats).
pub const RING_CTL_SIZE: usize = 512;
/// Size of one [`ShardCounters`] block.
pub const COUNTERS_SIZE: usize = crate::counters::MAX_COUNTERS * 8;
/// Capacity of the header's size table (entries actually used: [`size_table`]`().len()`).
/// Bounds: 64 * 4 B inside the fixed header page.
pub const SIZE_TABLE_CAP: usize = 64;
/// Smallest accepted ring size (slots, power of two).
pub const MIN_RING_SLOTS: u32 = 2;
/// Largest accepted ring size (slots, power of two). Bounds the region: worst case
/// `MAX_SHARDS * 2 * MAX_RING_SLOTS * SLOT_SIZE` = 64 * 2 * 16384 * 2048 B = 4 GiB (an attaching
/// control refuses anything bigger).
pub const MAX_RING_SLOTS: u32 = 16384;
const PAGE: usize = 4096;

/// A value alone on its own 128-byte line.
#[repr(C, align(128))]
pub(crate) struct Line<T> {
    pub(crate) v: T,
}

/// Region header. Lives at offset 0 of the region; both processes read it through atomics only
/// (the peer is untrusted and may write concurrently).
///
/// | offset | size | field | writer |
/// |---|---|---|---|
/// | 0 | 8 | magic `"ILS-SHM\0"` | engine at create (stored last, Release) |
/// | 8 | 4 | abi_version | engine at create |
/// | 12 | 4 | n_shards | engine at create |
/// | 16 | 4 | ring_slots | engine at create |
/// | 20 | 4 | size_table_len | engine at create |
/// | 24 | 8 | total_size | engine at create |
/// | 128 | 8 | engine_generation | engine |
/// | 136 | 8 | heartbeat_ns | engine |
/// | 144 | 4 | engine_pid | engine |
/// | 256 | 4*64 | size_table | engine at create |
#[repr(C, align(128))]
pub struct Header {
    magic: AtomicU64,
    abi_version: AtomicU32,
    n_shards: AtomicU32,
    ring_slots: AtomicU32,
    size_table_len: AtomicU32,
    total_size: AtomicU64,
    _pad0: [u8; 96],
    engine_generation: AtomicU64,
    heartbeat_ns: AtomicU64,
    engine_pid: AtomicU32,
    _pad1: [u8; 108],
    size_table: [AtomicU32; SIZE_TABLE_CAP],
    _pad2: [u8; HEADER_SIZE - 512],
}

const _: () = {
    assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
    assert!(std::mem::align_of::<Header>() == CACHE_LINE);
    assert!(std::mem::offset_of!(Header, magic) == 0);
    assert!(std::mem::offset_of!(Header, abi_version) == 8);
    assert!(std::mem::offset_of!(Header, n_shards) == 12);
    assert!(std::mem::offset_of!(Header, ring_slots) == 16);
    assert!(std::mem::offset_of!(Header, size_table_len) == 20);
    assert!(std::mem::offset_of!(Header, total_size) == 24);
    assert!(std::mem::offset_of!(Header, engine_generation) == 128);
    assert!(std::mem::offset_of!(Header, heartbeat_ns) == 136);
    assert!(std::mem::offset_of!(Header, engine_pid) == 144);
    assert!(std::mem::offset_of!(Header, size_table) == 256);
    assert!(std::mem::size_of::<RingCtl>() == RING_CTL_SIZE);
    assert!(std::mem::offset_of!(RingCtl, tail) == 0);
    assert!(std::mem::offset_of!(RingCtl, head) == 128);
    assert!(std::mem::offset_of!(RingCtl, full) == 256);
    assert!(std::mem::offset_of!(RingCtl, bad_len) == 384);
    assert!(std::mem::size_of::<ShardCounters>() == COUNTERS_SIZE);
    assert!(std::mem::align_of::<ShardCounters>() == CACHE_LINE);
    assert!(SIZE_TABLE_LEN <= SIZE_TABLE_CAP);
    assert!(MAX_RING_SLOTS.is_power_of_two() && MIN_RING_SLOTS.is_power_of_two());
    assert!(crate::DEFAULT_RING_SLOTS.is_power_of_two());
    assert!(
        crate::DEFAULT_RING_SLOTS >= MIN_RING_SLOTS && crate::DEFAULT_RING_SLOTS <= MAX_RING_SLOTS
    );
    assert!(SLOT_SIZE % CACHE_LINE == 0);
};

impl Header {
    /// The magic as stored (little-endian bytes of `MAGIC`).
    pub fn magic(&self) -> [u8; 8] {
        self.magic.load(Ordering::Acquire).to_le_bytes()
    }
    /// ABI version written by the engine.
    pub fn abi_version(&self) -> u32 {
        self.abi_version.load(Ordering::Relaxed)
    }
    /// Shard count as stored (untrusted; [`crate::Region::n_shards`] is the validated value).
    pub fn n_shards_raw(&self) -> u32 {
        self.n_shards.load(Ordering::Relaxed)
    }
    /// Ring slots as stored (untrusted; [`crate::Region::ring_slots`] is the validated value).
    pub fn ring_slots_raw(&self) -> u32 {
        self.ring_slots.load(Ordering::Relaxed)
    }
    /// Total region size as stored.
    pub fn total_size_raw(&self) -> u64 {
        self.total_size.load(Ordering::Relaxed)
    }
    /// Engine generation: bumped by the engine each time it starts (control detects a restart).
    pub fn engine_generation(&self) -> u64 {
        self.engine_generation.load(Ordering::Acquire)
    }
    /// Set the engine generation (engine only).
    pub fn set_engine_generation(&self, g: u64) {
        self.engine_generation.store(g, Ordering::Release)
    }
    /// Engine heartbeat, monotonic nanoseconds (engine's clock; control compares successive values).
    pub fn heartbeat_ns(&self) -> u64 {
        self.heartbeat_ns.load(Ordering::Acquire)
    }
    /// Store the heartbeat (engine only).
    pub fn set_heartbeat_ns(&self, ns: u64) {
        self.heartbeat_ns.store(ns, Ordering::Release)
    }
    /// Engine process id.
    pub fn engine_pid(&self) -> u32 {
        self.engine_pid.load(Ordering::Acquire)
    }
    /// Store the engine pid (engine only).
    pub fn set_engine_pid(&self, pid: u32) {
        self.engine_pid.store(pid, Ordering::Release)
    }
    /// Size-table entry `i` as stored (0 when out of range).
    pub fn size_table_entry(&self, i: usize) -> u32 {
        self.size_table
            .get(i)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }
    /// Number of size-table entries as stored.
    pub fn size_table_len_raw(&self) -> u32 {
        self.size_table_len.load(Ordering::Relaxed)
    }

    /// Fill a freshly created (zeroed, not yet shared) header. Magic last, Release.
    pub(crate) fn init(&self, n_shards: u32, ring_slots: u32, total: u64) {
        self.abi_version
            .store(crate::ABI_VERSION, Ordering::Relaxed);
        self.n_shards.store(n_shards, Ordering::Relaxed);
        self.ring_slots.store(ring_slots, Ordering::Relaxed);
        let table = size_table();
        self.size_table_len
            .store(table.len() as u32, Ordering::Relaxed);
        for (slot, e) in self.size_table.iter().zip(table.iter()) {
            slot.store(e.value, Ordering::Relaxed);
        }
        self.total_size.store(total, Ordering::Relaxed);
        self.magic
            .store(u64::from_le_bytes(crate::MAGIC), Ordering::Release);
    }

    /// Test hook: overwrite raw fields to simulate a peer built differently.
    #[cfg(test)]
    pub(crate) fn patch(&self, which: &str, v: u64) {
        match which {
            "magic" => self.magic.store(v, Ordering::Release),
            "abi_version" => self.abi_version.store(v as u32, Ordering::Relaxed),
            "n_shards" => self.n_shards.store(v as u32, Ordering::Relaxed),
            "ring_slots" => self.ring_slots.store(v as u32, Ordering::Relaxed),
            "size_table_len" => self.size_table_len.store(v as u32, Ordering::Relaxed),
            "total_size" => self.total_size.store(v, Ordering::Relaxed),
            _ => {
                let i = size_table().iter().position(|e| e.name == which);
                if let Some(i) = i {
                    self.size_table[i].store(v as u32, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Control block of one SPSC ring. Each counter sits on its own 128-byte line.
///
/// | offset | field | writer |
/// |---|---|---|
/// | 0 | tail u64 (messages ever pushed) | producer |
/// | 128 | head u64 (messages ever popped) | consumer |
/// | 256 | full u64 (pushes refused: ring full or message > SLOT_SIZE) | producer |
/// | 384 | bad_len u64 (slots whose length word was > SLOT_SIZE) | consumer |
#[repr(C)]
pub struct RingCtl {
    pub(crate) tail: Line<AtomicU64>,
    pub(crate) head: Line<AtomicU64>,
    pub(crate) full: Line<AtomicU64>,
    pub(crate) bad_len: Line<AtomicU64>,
}

/// One entry of the ABI size table: a name (reported in [`crate::ShmError::AbiMismatch`]) and
/// this build's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeEntry {
    /// Stable name, e.g. `"slot_size"` or `"cmd.AddTransport.max_body"`.
    pub name: &'static str,
    /// Value in this build.
    pub value: u32,
}

const N_STRUCT_ENTRIES: usize = 9;
const SIZE_TABLE_LEN: usize = N_STRUCT_ENTRIES + COMMAND_KINDS.len() + EVENT_KINDS.len();

const fn build_size_table() -> [SizeEntry; SIZE_TABLE_LEN] {
    let mut t = [SizeEntry { name: "", value: 0 }; SIZE_TABLE_LEN];
    t[0] = SizeEntry {
        name: "header_size",
        value: HEADER_SIZE as u32,
    };
    t[1] = SizeEntry {
        name: "ring_ctl_size",
        value: RING_CTL_SIZE as u32,
    };
    t[2] = SizeEntry {
        name: "slot_size",
        value: SLOT_SIZE as u32,
    };
    t[3] = SizeEntry {
        name: "counters_size",
        value: COUNTERS_SIZE as u32,
    };
    t[4] = SizeEntry {
        name: "max_counters",
        value: crate::counters::MAX_COUNTERS as u32,
    };
    t[5] = SizeEntry {
        name: "counter_count",
        value: crate::counters::COUNTER_COUNT as u32,
    };
    t[6] = SizeEntry {
        name: "max_datagram",
        value: MAX_DATAGRAM as u32,
    };
    t[7] = SizeEntry {
        name: "max_shards",
        value: MAX_SHARDS as u32,
    };
    t[8] = SizeEntry {
        name: "msg_header_len",
        value: crate::msg::MSG_HEADER_LEN as u32,
    };
    let mut i = 0;
    while i < COMMAND_KINDS.len() {
        t[N_STRUCT_ENTRIES + i] = SizeEntry {
            name: COMMAND_KINDS[i].size_name,
            value: ((COMMAND_KINDS[i].kind as u32) << 16) | COMMAND_KINDS[i].max_body as u32,
        };
        i += 1;
    }
    let mut j = 0;
    while j < EVENT_KINDS.len() {
        t[N_STRUCT_ENTRIES + COMMAND_KINDS.len() + j] = SizeEntry {
            name: EVENT_KINDS[j].size_name,
            value: ((EVENT_KINDS[j].kind as u32) << 16) | EVENT_KINDS[j].max_body as u32,
        };
        j += 1;
    }
    t
}

static SIZE_TABLE: [SizeEntry; SIZE_TABLE_LEN] = build_size_table();

/// The ABI size table of this build, in header order. Message entries hold
/// `kind << 16 | max_body_len`, so both a renumbered kind and a resized body are detected.
pub fn size_table() -> &'static [SizeEntry] {
    &SIZE_TABLE
}

/// Bytes of one ring (control + length words + slots) for `slots` slots.
pub const fn ring_stride(slots: u32) -> usize {
    let lens = (slots as usize * 4).div_ceil(CACHE_LINE) * CACHE_LINE;
    RING_CTL_SIZE + lens + slots as usize * SLOT_SIZE
}

/// Offset of shard `s`'s counters.
pub(crate) const fn counters_offset(s: usize) -> usize {
    HEADER_SIZE + s * COUNTERS_SIZE
}

/// Offset of ring `r` (= 2*shard + dir).
pub(crate) const fn ring_offset(n_shards: usize, slots: u32, r: usize) -> usize {
    HEADER_SIZE + n_shards * COUNTERS_SIZE + r * ring_stride(slots)
}

/// Offset of the length words of a ring, relative to the ring.
pub(crate) const RING_LENS_OFFSET: usize = RING_CTL_SIZE;

/// Offset of the slots of a ring, relative to the ring.
pub(crate) const fn ring_slots_offset(slots: u32) -> usize {
    RING_CTL_SIZE + (slots as usize * 4).div_ceil(CACHE_LINE) * CACHE_LINE
}

/// Total region bytes for a geometry (page-rounded). Parameters must already be validated
/// (`n_shards <= MAX_SHARDS`, `slots <= MAX_RING_SLOTS`, so this cannot overflow on 64-bit).
pub const fn region_size(n_shards: usize, slots: u32) -> usize {
    ring_offset(n_shards, slots, 2 * n_shards).div_ceil(PAGE) * PAGE
}

/// Validate a geometry.
pub(crate) fn check_geometry(n_shards: usize, slots: u32) -> Result<(), &'static str> {
    if n_shards == 0 || n_shards > MAX_SHARDS {
        return Err("n_shards out of range 1..=MAX_SHARDS");
    }
    if !slots.is_power_of_two() || !(MIN_RING_SLOTS..=MAX_RING_SLOTS).contains(&slots) {
        return Err("ring_slots not a power of two in MIN_RING_SLOTS..=MAX_RING_SLOTS");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_table_names_unique_and_fit() {
        let t = size_table();
        assert!(t.len() <= SIZE_TABLE_CAP);
        for (i, a) in t.iter().enumerate() {
            assert!(!a.name.is_empty());
            for b in &t[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn region_size_examples() {
        // 1 shard, 2 slots: header 4096 + counters 2048 + 2 * (512 + 128 + 2*2048) = 15616 -> 16384
        assert_eq!(ring_stride(2), 512 + 128 + 4096);
        assert_eq!(region_size(1, 2), 16384);
        // Default: 1024 slots -> lens 4096 bytes.
        assert_eq!(ring_stride(1024), 512 + 4096 + 1024 * 2048);
        let worst = region_size(MAX_SHARDS, MAX_RING_SLOTS);
        assert!(worst < 4 * 1024 * 1024 * 1024 + 64 * 1024 * 1024);
        assert_eq!(ring_offset(1, 2, 0) % CACHE_LINE, 0);
        assert_eq!(ring_slots_offset(2) % CACHE_LINE, 0);
    }

    fn doc() -> String {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/shm-contract.md");
        std::fs::read_to_string(p).expect("docs/shm-contract.md present")
    }

    fn cells(line: &str) -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    }

    /// The documented kind table, size table and header offsets equal the code's.
    #[test]
    fn docs_match_code() {
        let d = doc();
        let code: Vec<(u16, &str, &str, u16, u16)> = COMMAND_KINDS
            .iter()
            .map(|k| (k.kind, k.name, "command", k.min_body, k.max_body))
            .chain(
                EVENT_KINDS
                    .iter()
                    .map(|k| (k.kind, k.name, "event", k.min_body, k.max_body)),
            )
            .collect();
        let documented: Vec<(u16, String, String, u16, u16)> = d
            .lines()
            .filter(|l| l.starts_with("| 0x"))
            .map(|l| {
                let c = cells(l);
                (
                    u16::from_str_radix(c[0].trim_start_matches("0x"), 16).unwrap(),
                    c[1].clone(),
                    c[2].clone(),
                    c[3].parse().unwrap(),
                    c[4].parse().unwrap(),
                )
            })
            .collect();
        assert_eq!(documented.len(), code.len());
        for (doc_row, code_row) in documented.iter().zip(&code) {
            assert_eq!(
                (
                    doc_row.0,
                    doc_row.1.as_str(),
                    doc_row.2.as_str(),
                    doc_row.3,
                    doc_row.4
                ),
                *code_row
            );
        }
        // Size table: numeric rows, plus the counted ones.
        let table = size_table();
        for l in d.lines().filter(|l| l.starts_with("| ")) {
            let c = cells(l);
            if c.len() == 3 {
                if let (Ok(i), Ok(v)) = (c[0].parse::<usize>(), c[2].parse::<u32>()) {
                    assert_eq!(table[i].name, c[1]);
                    assert_eq!(table[i].value, v, "{}", c[1]);
                }
            }
        }
        let cc = format!(
            "number of `Counter` variants ({})",
            crate::counters::COUNTER_COUNT
        );
        assert!(d.contains(&cc), "doc must say {cc}");
        let stl = format!("number of size-table entries ({})", table.len());
        assert!(d.contains(&stl), "doc must say {stl}");
        assert!(d.contains(&format!("| 9..={} | cmd.<Name>", 8 + COMMAND_KINDS.len())));
        assert!(d.contains(&format!(
            "| {}..={} | evt.<Name>",
            9 + COMMAND_KINDS.len(),
            8 + COMMAND_KINDS.len() + EVENT_KINDS.len()
        )));
        // Header offsets.
        for (name, off) in [
            ("magic", std::mem::offset_of!(Header, magic)),
            ("abi_version", std::mem::offset_of!(Header, abi_version)),
            ("n_shards", std::mem::offset_of!(Header, n_shards)),
            ("ring_slots", std::mem::offset_of!(Header, ring_slots)),
            (
                "size_table_len",
                std::mem::offset_of!(Header, size_table_len),
            ),
            ("total_size", std::mem::offset_of!(Header, total_size)),
            (
                "engine_generation",
                std::mem::offset_of!(Header, engine_generation),
            ),
            ("heartbeat_ns", std::mem::offset_of!(Header, heartbeat_ns)),
            ("engine_pid", std::mem::offset_of!(Header, engine_pid)),
            ("size_table", std::mem::offset_of!(Header, size_table)),
        ] {
            let row = d
                .lines()
                .find(|l| cells(l).get(2).is_some_and(|c| c == name) && l.starts_with("| "))
                .unwrap_or_else(|| panic!("header row {name} missing"));
            assert_eq!(cells(row)[0], off.to_string(), "{name}");
        }
    }

    #[test]
    fn geometry_checks() {
        assert!(check_geometry(0, 1024).is_err());
        assert!(check_geometry(MAX_SHARDS + 1, 1024).is_err());
        assert!(check_geometry(1, 1000).is_err());
        assert!(check_geometry(1, 1).is_err());
        assert!(check_geometry(1, MAX_RING_SLOTS * 2).is_err());
        assert!(check_geometry(MAX_SHARDS, MAX_RING_SLOTS).is_ok());
    }
}
