//! SPSC rings over shared memory.
//!
//! Algorithm (Lamport/glommio style, free-running 64-bit indices):
//! * producer: `head = ctl.head.load(Acquire)`; full when `tail - head >= slots`; else copy the
//!   message into `slots[tail & mask]`, store its length into `lens[tail & mask]`, then
//!   `ctl.tail.store(tail + 1, Release)`.
//! * consumer: `tail = ctl.tail.load(Acquire)`; empty when `tail == head`; else read
//!   `lens[head & mask]` (clamped to `SLOT_SIZE`), copy the slot out, then
//!   `ctl.head.store(head + 1, Release)`.
//!
//! Each side keeps its own index privately and never trusts the peer's index for addressing:
//! slot addresses are always `index & mask` with the locally validated mask, so a hostile peer can
//! make the ring look full/empty or feed garbage bytes, but cannot make us read or write outside the
//! ring.
//!
//! Contract: exactly one [`Producer`] and one [`Consumer`] per ring at a time, system-wide. Within
//! one process a [`crate::Region`] handle enforces it (a second claim returns `None` until the first
//! endpoint is dropped); across processes it is the caller's contract (control owns command
//! producers and event consumers, the shard owns the others).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::layout::RingCtl;
use crate::region::Mapping;
use crate::SLOT_SIZE;

/// Returned by [`Producer::try_push`] when the ring is full (or the message exceeds
/// [`SLOT_SIZE`]); the message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("shm ring full")
    }
}

impl std::error::Error for Full {}

/// Pointers into one ring, valid while `map` is alive.
pub(crate) struct RingPtrs {
    pub(crate) ctl: *const RingCtl,
    pub(crate) lens: *const AtomicU32,
    pub(crate) slots: *mut u8,
    pub(crate) n_slots: u32,
}

impl RingPtrs {
    fn ctl(&self) -> &RingCtl {
        // SAFETY: `ctl` points at a 128-aligned RingCtl inside the live mapping (computed from a
        // validated geometry); RingCtl only holds atomics so shared access is sound.
        unsafe { &*self.ctl }
    }
    fn mask(&self) -> u64 {
        self.n_slots as u64 - 1
    }
    fn len_word(&self, idx: u64) -> &AtomicU32 {
        let i = (idx & self.mask()) as usize;
        // SAFETY: i < n_slots and the lens array has n_slots AtomicU32 inside the mapping.
        unsafe { &*self.lens.add(i) }
    }
    fn slot(&self, idx: u64) -> *mut u8 {
        let i = (idx & self.mask()) as usize;
        // SAFETY: i < n_slots; the slot array holds n_slots * SLOT_SIZE bytes inside the mapping.
        unsafe { self.slots.add(i * SLOT_SIZE) }
    }
}

/// Producing end of a ring. `Send`, not `Sync`; dropping it releases the in-process claim.
pub struct Producer {
    map: Arc<Mapping>,
    p: RingPtrs,
    tail: u64,
    claim: usize,
}

// SAFETY: the raw pointers target the shared mapping kept alive by `map`; all shared fields are
// atomics or byte slots handed over by the acquire/release protocol; the endpoint is unique.
unsafe impl Send for Producer {}

impl Producer {
    pub(crate) fn new(map: Arc<Mapping>, p: RingPtrs, claim: usize) -> Producer {
        // Resume after a restart: continue from the tail the previous producer published.
        let tail = p.ctl().tail.v.load(Ordering::Acquire);
        Producer {
            map,
            p,
            tail,
            claim,
        }
    }

    /// Copy `msg` (<= SLOT_SIZE) into the next slot. Full (or oversize) -> `Err(Full)` and the
    /// ring's `full` counter is bumped. Never blocks.
    pub fn try_push(&mut self, msg: &[u8]) -> Result<(), Full> {
        let ctl = self.p.ctl();
        let head = ctl.head.v.load(Ordering::Acquire);
        if msg.len() > SLOT_SIZE || self.tail.wrapping_sub(head) >= self.p.n_slots as u64 {
            ctl.full.v.fetch_add(1, Ordering::Relaxed);
            return Err(Full);
        }
        let dst = self.p.slot(self.tail);
        // SAFETY: dst has SLOT_SIZE writable bytes and msg.len() <= SLOT_SIZE; the consumer does
        // not read this slot until the Release store of tail below.
        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), dst, msg.len()) };
        self.p
            .len_word(self.tail)
            .store(msg.len() as u32, Ordering::Relaxed);
        self.tail = self.tail.wrapping_add(1);
        ctl.tail.v.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Pushes refused so far (ring full or oversize), as counted in shared memory.
    pub fn full_count(&self) -> u64 {
        self.p.ctl().full.v.load(Ordering::Relaxed)
    }

    /// Messages queued and not yet consumed (clamped to the ring size).
    pub fn len(&self) -> usize {
        let head = self.p.ctl().head.v.load(Ordering::Acquire);
        self.tail.wrapping_sub(head).min(self.p.n_slots as u64) as usize
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ring capacity in messages.
    pub fn capacity(&self) -> usize {
        self.p.n_slots as usize
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.map.release(self.claim);
    }
}

/// Consuming end of a ring. `Send`, not `Sync`; dropping it releases the in-process claim.
pub struct Consumer {
    map: Arc<Mapping>,
    p: RingPtrs,
    head: u64,
    claim: usize,
}

// SAFETY: as for Producer.
unsafe impl Send for Consumer {}

impl Consumer {
    pub(crate) fn new(map: Arc<Mapping>, p: RingPtrs, claim: usize) -> Consumer {
        let head = p.ctl().head.v.load(Ordering::Acquire);
        Consumer {
            map,
            p,
            head,
            claim,
        }
    }

    /// Copy the next message into `out` and return its length (validated <= SLOT_SIZE even if the
    /// peer wrote garbage: a length word above SLOT_SIZE is clamped to SLOT_SIZE and counted in
    /// the ring's `bad_len`; the decoder then rejects the bytes).
    pub fn try_pop(&mut self, out: &mut [u8; SLOT_SIZE]) -> Option<usize> {
        let ctl = self.p.ctl();
        let tail = ctl.tail.v.load(Ordering::Acquire);
        if tail == self.head {
            return None;
        }
        let raw = self.p.len_word(self.head).load(Ordering::Relaxed) as usize;
        let len = if raw > SLOT_SIZE {
            ctl.bad_len.v.fetch_add(1, Ordering::Relaxed);
            SLOT_SIZE
        } else {
            raw
        };
        let src = self.p.slot(self.head);
        // SAFETY: src has SLOT_SIZE readable bytes, len <= SLOT_SIZE == out.len(); the producer
        // published this slot with the Release store we Acquired above and will not rewrite it
        // until our Release store of head below (a hostile producer may, but bytes are bytes).
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len) };
        self.head = self.head.wrapping_add(1);
        ctl.head.v.store(self.head, Ordering::Release);
        Some(len)
    }

    /// Messages waiting (clamped to the ring size).
    pub fn len(&self) -> usize {
        let tail = self.p.ctl().tail.v.load(Ordering::Acquire);
        tail.wrapping_sub(self.head).min(self.p.n_slots as u64) as usize
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots whose length word was out of range (garbage from the producer).
    pub fn bad_len_count(&self) -> u64 {
        self.p.ctl().bad_len.v.load(Ordering::Relaxed)
    }

    /// Pushes the producer saw refused (ring full), as counted in shared memory.
    pub fn full_count(&self) -> u64 {
        self.p.ctl().full.v.load(Ordering::Relaxed)
    }

    /// Test hook: the raw length word of the next slot to pop.
    #[cfg(test)]
    pub(crate) fn poke_next_len(&self, v: u32) {
        self.p.len_word(self.head).store(v, Ordering::Relaxed);
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.map.release(self.claim);
    }
}
