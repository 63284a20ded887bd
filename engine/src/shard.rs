//! One shard: an OS thread pinned to a core that owns its UDP socket ([`ils_io::Io`]), its
//! [`Core`] tables, its command ring (from control) and event ring (to control). The loop is:
//! poll the socket (blocking until a datagram, a wake-up or the next timer) → forward → drain
//! cross-shard queues → apply commands (bounded) → timers → flush sends → wake peers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ils_io::{Io, IoConfig, TxBatch};
use ils_shm::{Command, Consumer, Counter, Event, EventFd, Producer, Region, Seq, SLOT_SIZE};

use crate::core::{Core, CoreConfig, Outbox, COMMANDS_PER_ITERATION};
use crate::xshard::Mesh;

/// Cross-shard messages drained from each peer per iteration (keeps one busy peer from
/// starving the socket).
pub const XMSGS_PER_PEER_PER_ITERATION: usize = 1024;

/// Everything one shard thread needs.
pub struct ShardParams {
    /// Index of this shard.
    pub index: usize,
    /// Core settings.
    pub core: CoreConfig,
    /// Socket settings.
    pub io: IoConfig,
    /// Pin to this CPU (None = don't pin).
    pub cpu: Option<core_affinity::CoreId>,
    /// The shared region.
    pub region: Region,
    /// This shard's wake-up eventfd (control and other shards write it).
    pub wake: EventFd,
    /// Every shard's wake eventfd (to wake peers after pushing to their queues).
    pub peers: Vec<EventFd>,
    /// Control's eventfd (written after pushing events).
    pub control_wake: EventFd,
    /// Cross-shard queues.
    pub mesh: Arc<Mesh>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
}

/// What a started shard reports back.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// Bound address.
    pub addr: SocketAddr,
    /// Backend in use.
    pub backend: ils_io::BackendKind,
    /// Degradations (logged once by the caller).
    pub degraded: Vec<ils_io::Degraded>,
}

struct RingOutbox {
    ring: Producer,
    buf: Box<[u8; SLOT_SIZE]>,
    pushed: bool,
    full: u64,
}

impl Outbox for RingOutbox {
    fn event(&mut self, seq: Seq, ev: &Event<'_>) {
        match ev.encode(seq, &mut self.buf[..]) {
            Ok(n) => {
                if self.ring.try_push(&self.buf[..n]).is_ok() {
                    self.pushed = true;
                } else {
                    self.full += 1;
                }
            }
            Err(_) => self.full += 1,
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Run a shard until `stop` is set. `ready` receives the bind result once.
pub fn run(p: ShardParams, ready: std::sync::mpsc::Sender<Result<ShardInfo, String>>) {
    if let Some(cpu) = p.cpu {
        if !core_affinity::set_for_current(cpu) {
            tracing::warn!(shard = p.index, "could not pin shard thread to its core");
        }
    }
    let mut io = match Io::open(&p.io, p.wake.as_raw_fd()) {
        Ok(io) => io,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "shard {}: cannot open UDP {}: {e}",
                p.index, p.io.bind
            )));
            return;
        }
    };
    let _ = ready.send(Ok(ShardInfo {
        addr: io.local_addr(),
        backend: io.kind(),
        degraded: io.degraded().to_vec(),
    }));
    let (Some(mut commands), Some(events), Some(counters)) = (
        p.region.command_consumer(p.index),
        p.region.event_producer(p.index),
        p.region.counters(p.index),
    ) else {
        tracing::error!(shard = p.index, "shard index outside the shared region");
        return;
    };
    let mut core = Core::new(p.core.clone(), Arc::clone(&p.mesh));
    if io.kind() != ils_io::BackendKind::IoUring {
        core.counters_mut().inc(Counter::IoUringFallback);
    }
    let mut tx = TxBatch::new(
        ils_io::DEFAULT_TX_ARENA_BYTES,
        ils_io::DEFAULT_TX_MAX_DATAGRAMS,
    );
    tx.set_gso(io.gso());
    let mut out = RingOutbox {
        ring: events,
        buf: Box::new([0; SLOT_SIZE]),
        pushed: false,
        full: 0,
    };
    let mut slot = Box::new([0u8; SLOT_SIZE]);
    let n_shards = p.mesh.shards();
    let mut degraded_seen = io.degraded().len();
    while !p.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let timeout = core
            .poll_timeout()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(10))
            .min(Duration::from_millis(100));
        // Forward as datagrams arrive; the batch is flushed inside whenever it is half full.
        let res = io.poll_forward(Some(timeout), &mut tx, &mut |from, buf, tx| {
            core.handle_datagram(Instant::now(), from, buf, tx, &mut out);
        });
        if let Ok((st, fs)) = &res {
            core.counters_mut()
                .add(Counter::DropTooLarge, st.too_large as u64);
            count_flush(core.counters_mut(), fs);
        }
        let now = Instant::now();
        // cross-shard messages
        for from in 0..n_shards {
            if from == p.index {
                continue;
            }
            let Some(q) = p.mesh.queue(from, p.index) else {
                continue;
            };
            for _ in 0..XMSGS_PER_PEER_PER_ITERATION {
                match q.pop() {
                    Some(m) => core.handle_xmsg(now, m, &mut tx),
                    None => break,
                }
                if tx.over_high_water() {
                    let fs = io.flush(&mut tx);
                    count_flush(core.counters_mut(), &fs);
                }
            }
        }
        // commands from control
        drain_commands(&mut core, &mut commands, &mut slot, now, &mut tx, &mut out);
        core.handle_timeout(now, &mut tx, &mut out);
        let fs = io.flush(&mut tx);
        tx.set_gso(io.gso());
        if io.degraded().len() != degraded_seen {
            for d in io.degraded().iter().skip(degraded_seen) {
                tracing::warn!(shard = p.index, "I/O degraded at run time: {d:?}");
            }
            degraded_seen = io.degraded().len();
        }
        let c = core.counters_mut();
        count_flush(c, &fs);
        c.inc(Counter::LoopIterations);
        if out.full > 0 {
            c.add(Counter::DropEventRingFull, std::mem::take(&mut out.full));
        }
        let mut wakes = core.take_wakes();
        while wakes != 0 {
            let s = wakes.trailing_zeros() as usize;
            wakes &= wakes - 1;
            if let Some(w) = p.peers.get(s) {
                w.notify();
            }
        }
        if std::mem::take(&mut out.pushed) {
            p.control_wake.notify();
        }
        core.counters_mut().publish(counters);
        if p.index == 0 {
            p.region.header().set_heartbeat_ns(monotonic_ns());
        }
    }
}

/// Add one flush's figures to the shard counters.
fn count_flush(c: &mut crate::counters::LocalCounters, fs: &ils_io::FlushStats) {
    c.add(Counter::TxPackets, fs.segments as u64);
    c.add(Counter::GsoBursts, fs.gso_bursts as u64);
    c.add(Counter::SendErrors, fs.errors as u64);
    c.add(Counter::DropSendQueueFull, fs.dropped as u64);
}

fn drain_commands(
    core: &mut Core,
    commands: &mut Consumer,
    slot: &mut [u8; SLOT_SIZE],
    now: Instant,
    tx: &mut TxBatch,
    out: &mut RingOutbox,
) {
    for _ in 0..COMMANDS_PER_ITERATION {
        let Some(n) = commands.try_pop(slot) else {
            break;
        };
        match Command::decode(&slot[..n.min(SLOT_SIZE)]) {
            Ok((seq, cmd)) => core.handle_command(now, seq, &cmd, tx, out),
            Err(_) => {
                core.counters_mut().inc(Counter::CommandsRejected);
                // The sequence number is unreadable too when decoding failed; report seq 0.
                out.event(
                    0,
                    &Event::Rejected {
                        seq: 0,
                        reason: ils_shm::RejectReason::Malformed,
                    },
                );
            }
        }
    }
}
