//! The forwarding hot path allocates nothing: 1 publisher, 10 subscribers on one shard, after a
//! warm-up (keyframes seen, legs forwarding, GSO bursts open), 1000 more SRTP packets through
//! `Core::handle_datagram` (decrypt, parse, fan-out, rewrite, encrypt into the TxBatch) and
//! `TxBatch::clear` perform zero heap allocations.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use ils_shm::{Command, Counter};

/// Counts allocations made by threads that switched counting on.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(|c| c.get()) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn count<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCS.load(Ordering::Relaxed) - before, r)
}

const SUBS: usize = 10;
const WARMUP: u16 = 200;
const MEASURED: u16 = 1000;
/// Frames fed while timers run (after the measured ones).
const TIMED: u16 = 70;

/// Counts events without storing them (the shard's real outbox encodes into shared memory).
#[derive(Default)]
struct NullOutbox {
    events: u64,
}

impl ils_engine::core::Outbox for NullOutbox {
    fn event(&mut self, _seq: ils_shm::Seq, _ev: &ils_shm::Event<'_>) {
        self.events += 1;
    }
}

#[test]
fn the_counter_counts() {
    let (n, v) = count(|| std::hint::black_box(Vec::<u8>::with_capacity(64)));
    assert_eq!((n, v.capacity() >= 64), (1, true));
}

#[test]
fn forwarding_path_allocates_nothing() {
    let mut h = Harness::bare(SUBS);
    h.tx.set_gso(true);
    h.connect_publisher();
    for i in 0..SUBS {
        h.connect_sub(i);
    }
    h.cmd_ok(&Command::AddTrack(video_spec(true)));
    for i in 0..SUBS {
        // legs spread over the three layers, with RTX and transport-cc
        h.cmd_ok(&Command::AddLeg(leg_spec(i, (i % 3) as u8, true, true)));
    }
    h.take_events();
    h.tx.clear();

    // Pre-encrypt every packet (the test's own work allocates; the engine's must not).
    let total = WARMUP + MEASURED + TIMED;
    let mut wire: Vec<Vec<u8>> = Vec::with_capacity(usize::from(total) * 3);
    let mut tw = 0u16;
    for f in 0..total {
        for l in 0..3u8 {
            tw = tw.wrapping_add(1);
            let plain = h.pub_plain(&PubPacket {
                layer: l,
                seq: src_seq(l, f),
                ts: src_ts(f),
                key: f % 100 == 0,
                frame: f,
                twcc: Some(tw),
            });
            wire.push(h.publisher.protect_rtp(&plain));
        }
    }
    let from = pub_addr();
    let mut buf = [0u8; 1500];
    let mut step = |h: &mut Harness, pkt: &[u8]| {
        let n = pkt.len();
        buf[..n].copy_from_slice(pkt);
        h.core
            .handle_datagram(h.now, from, &mut buf[..n], &mut h.tx, &mut h.out);
        h.now += Duration::from_micros(300);
    };

    // warm-up: 200 frames x 3 layers, keyframes at frame 0 and 100, timers running
    let (warm_segments, warm_bursts) = {
        let mut segs = 0;
        let mut bursts = 0;
        for (k, pkt) in wire[..usize::from(WARMUP) * 3].iter().enumerate() {
            step(&mut h, pkt);
            if k % 30 == 29 {
                segs += h.tx.segments();
                bursts += h.tx.len();
                h.timeout();
                h.tx.clear();
                h.out.events.clear();
            }
        }
        (segs, bursts)
    };
    assert!(warm_segments > 0, "legs are forwarding after warm-up");
    assert!(warm_bursts < warm_segments, "GSO bursts formed");
    h.tx.clear();
    h.out.events.clear();
    let fwd0 = h.counter(Counter::ForwardedPackets);

    // measured: every packet through handle_datagram, the batch cleared after each
    let measured = &wire[usize::from(WARMUP) * 3..usize::from(WARMUP + MEASURED) * 3];
    let timed = &wire[usize::from(WARMUP + MEASURED) * 3..];
    let (allocs, ()) = count(|| {
        for pkt in measured {
            step(&mut h, pkt);
            h.tx.clear();
        }
    });
    let forwarded = h.counter(Counter::ForwardedPackets) - fwd0;
    // each layer's packet goes to the legs on that layer (SUBS / 3 or so each)
    assert_eq!(
        forwarded,
        u64::from(MEASURED) * SUBS as u64,
        "every subscriber got every frame of its layer"
    );
    assert_eq!(allocs, 0, "allocations on the forwarding path");
    assert_eq!(
        h.counter(Counter::DropRtpMalformed) + h.counter(Counter::DropSendQueueFull),
        0
    );

    // Timers too (consent, NACK/PLI polls, transport-cc feedback, receiver reports, stats
    // events), with an outbox that does not allocate: 2 s of 10 ms ticks with media between.
    let mut null = NullOutbox::default();
    let fwd0 = h.counter(Counter::ForwardedPackets);
    let (allocs, ()) = count(|| {
        for (k, pkt) in timed.iter().enumerate() {
            step(&mut h, pkt);
            if k % 3 == 2 {
                h.now += Duration::from_millis(10);
                h.core.handle_timeout(h.now, &mut h.tx, &mut null);
                h.tx.clear();
            }
        }
    });
    assert!(null.events > 0, "stats events were produced");
    assert_eq!(
        h.counter(Counter::ForwardedPackets) - fwd0,
        u64::from(TIMED) * SUBS as u64
    );
    assert_eq!(allocs, 0, "allocations in handle_timeout");
}
