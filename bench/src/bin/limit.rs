//! `ils-limit`: the machine's raw UDP fan-out limit (issue 4, "The limit and the peer, in the
//! same run").
//!
//! One sender thread sends every *input* packet to all K destinations — K UDP sockets bound on
//! 127.0.0.1, drained by a second thread (epoll + `recvmmsg`) pinned to another core. No
//! crypto, no parsing: per output datagram the sender only copies the input packet into the
//! send batch (a forwarder must: each subscriber's copy differs) and stamps a sequence number;
//! then the whole batch goes to the kernel through the engine's own send code
//! ([`ils_io::Io::flush`] over a [`ils_io::TxBatch`]), so the comparison with the engine is
//! like for like:
//!
//! - `sendmmsg`: one `sendmmsg(2)` per flush, one datagram per `msghdr` (the engine's default);
//! - `uring`: io_uring `SendMsg` SQEs (the engine's optional send path);
//! - `gso`: `sendmmsg` with UDP GSO: consecutive datagrams to one destination in one flush form
//!   one `UDP_SEGMENT` burst (up to `--batch` segments), reserved packet-major as the engine's
//!   fan-out does;
//! - `uring-gso`: io_uring `SendMsg` with GSO bursts.
//!
//! `--pps-in P` paces the input (P input packets/s, each sent to all K destinations; the sender
//! sleeps when ahead, as the engine waits for packets); `--pps-in 0` runs flat out: the sent
//! packets/s is then the per-core limit. Reported: input/sent/received packets per second,
//! loss (sent − received after the receivers drain), the sender thread's CPU time per sent
//! datagram (`CLOCK_THREAD_CPUTIME_ID`: user + system, which on loopback includes the receive
//! softirq the kernel runs inside the send syscall), the drain thread's and `ksoftirqd`'s CPU,
//! and the kernel's system-wide UDP buffer-error counters — as text or, with `--json`, as one
//! JSON object on stdout.
//!
//! ```sh
//! cargo run --release -p ils-bench --bin ils-limit -- --destinations 1000 --mode gso --core 0 --json
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ils_io::{BackendChoice, BackendKind, Io, IoConfig, SendPath, TxBatch};
use serde::{Deserialize, Serialize};

/// Most destinations (receiver sockets) one run opens. Default 20 000. Bounds file descriptors
/// (K + a few) and kernel receive memory: worst case K × 2 × `--rcvbuf` if the drain thread
/// stalls (20 000 × 2 MiB = 40 GiB at the 1 MiB default — the kernel's global UDP memory limit
/// `net.ipv4.udp_mem` cuts in long before).
pub const MAX_DESTINATIONS: usize = 20_000;
/// Most input packets per flush (`--batch`). Default [`ils_io::MAX_GSO_SEGMENTS`] (64): a GSO
/// burst cannot hold more. Bounds the send batch: `--batch` × K datagrams.
pub const MAX_BATCH: usize = ils_io::MAX_GSO_SEGMENTS;
/// Most bytes one flush may hold (`--batch` × K × largest `--size`): 512 MiB. Bounds the send
/// arena, allocated once at start (plus ≈ 230 B of descriptors per datagram).
pub const MAX_FLUSH_BYTES: usize = 512 << 20;
/// Most entries in the `--size` list: 64. Bounds the size cycle (it is a `Vec` read per input).
pub const MAX_SIZES: usize = 64;
/// Longest measured run (`--duration`) or warm-up: 3 600 s.
pub const MAX_DURATION_S: f64 = 3600.0;
/// Highest `--pps-in`: 10 M input packets/s (far above any single-core fan-out).
pub const MAX_PPS_IN: u64 = 10_000_000;
/// Largest `--rcvbuf` per receiver socket: 64 MiB (the kernel doubles it; see
/// [`MAX_DESTINATIONS`] for the worst case).
pub const MAX_RCVBUF: usize = 64 << 20;
/// Highest CPU index `--core`/`--drain-core` accept: `CPU_SETSIZE` − 1 (1023).
pub const MAX_CPU_INDEX: usize = 1023;
/// Datagrams one `recvmmsg` in the drain thread takes: 64 (64 × 2 KiB of buffers).
pub const DRAIN_BATCH: usize = 64;
/// Receive buffer per drained datagram: 2048 B (larger than any `--size`).
pub const DRAIN_BUF: usize = 2048;
/// After the last send, wait at most this long for the receivers to drain before counting
/// loss: 2 s.
pub const SETTLE_MAX: Duration = Duration::from_secs(2);
/// Receivers are considered drained when nothing arrived for this long: 100 ms.
pub const SETTLE_QUIET: Duration = Duration::from_millis(100);

/// How datagrams reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One `sendmmsg(2)` per flush, one datagram per message (the engine's default path).
    Sendmmsg,
    /// io_uring `SendMsg` SQEs, one datagram each.
    Uring,
    /// `sendmmsg(2)` with UDP GSO bursts (one burst per destination per flush).
    Gso,
    /// io_uring `SendMsg` with UDP GSO bursts.
    UringGso,
}

impl Mode {
    /// `(backend, send path, GSO)` the mode asks [`Io`] for.
    fn io_choice(self) -> (BackendChoice, SendPath, bool) {
        match self {
            Mode::Sendmmsg => (BackendChoice::Mmsg, SendPath::Sendmmsg, false),
            Mode::Uring => (BackendChoice::IoUring, SendPath::UringSendMsg, false),
            Mode::Gso => (BackendChoice::Mmsg, SendPath::Sendmmsg, true),
            Mode::UringGso => (BackendChoice::IoUring, SendPath::UringSendMsg, true),
        }
    }

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sendmmsg => "sendmmsg",
            Mode::Uring => "uring",
            Mode::Gso => "gso",
            Mode::UringGso => "uring-gso",
        }
    }
}

/// Command line.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "ils-limit",
    version,
    about = "Raw UDP fan-out limit: each input packet sent to K loopback destinations (no crypto, no parsing)",
    long_about = "Raw UDP fan-out limit of this machine (issue 4). One sender thread sends every input \
packet to all K destinations (UDP sockets on 127.0.0.1, drained by a second thread on another core) \
through the engine's own send code (ils_io::Io::flush), with no crypto and no parsing. With --pps-in 0 \
it runs flat out: the sent packets/s is the per-core limit the engine's forward rate is compared with. \
Reports sent/received packets/s, loss, and the sender's CPU time per sent datagram."
)]
pub struct Args {
    /// Number of destinations (receiver sockets on 127.0.0.1), 1..=20000.
    #[arg(short = 'k', long, default_value_t = 100, value_name = "K")]
    pub destinations: usize,
    /// Datagram size in bytes (1..=1500); a comma list cycles per input packet, e.g. 1200,1200,160.
    #[arg(
        short = 's',
        long,
        default_value = "1200",
        value_delimiter = ',',
        value_name = "B"
    )]
    pub size: Vec<usize>,
    /// Input packets per second, each sent to all K destinations; 0 = flat out (the limit).
    #[arg(short = 'p', long, default_value_t = 0, value_name = "P")]
    pub pps_in: u64,
    /// Send path.
    #[arg(short = 'm', long, value_enum, default_value_t = Mode::Sendmmsg)]
    pub mode: Mode,
    /// Measured seconds (after the warm-up).
    #[arg(short = 'd', long, default_value_t = 3.0, value_name = "S")]
    pub duration: f64,
    /// Seconds sent before measuring starts.
    #[arg(long, default_value_t = 0.3, value_name = "S")]
    pub warmup: f64,
    /// Pin the sender thread to this CPU (default: not pinned).
    #[arg(short = 'c', long, value_name = "C")]
    pub core: Option<usize>,
    /// Pin the drain thread to this CPU (default: another allowed CPU than --core, if any).
    #[arg(long, value_name = "C")]
    pub drain_core: Option<usize>,
    /// Most input packets per flush (1..=64); with GSO this is the longest burst.
    #[arg(short = 'b', long, default_value_t = 32, value_name = "N")]
    pub batch: usize,
    /// SO_RCVBUF of each receiver socket in bytes (the kernel doubles it).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub rcvbuf: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why a command line is refused (after clap's own checks).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgError {
    /// `--destinations` is 0 or above [`MAX_DESTINATIONS`].
    #[error("--destinations must be 1..={MAX_DESTINATIONS}, got {0}")]
    Destinations(usize),
    /// A `--size` entry is 0 or above [`ils_io::MAX_DATAGRAM`].
    #[error("--size entries must be 1..={max}, got {0}", max = ils_io::MAX_DATAGRAM)]
    Size(usize),
    /// `--size` has no entries or more than [`MAX_SIZES`].
    #[error("--size needs 1..={MAX_SIZES} entries, got {0}")]
    SizeCount(usize),
    /// `--pps-in` above [`MAX_PPS_IN`].
    #[error("--pps-in must be 0..={MAX_PPS_IN}, got {0}")]
    PpsIn(u64),
    /// `--duration` not a finite number in (0, [`MAX_DURATION_S`]].
    #[error("--duration must be > 0 and <= {MAX_DURATION_S} s, got {0}")]
    Duration(f64),
    /// `--warmup` not a finite number in [0, [`MAX_DURATION_S`]].
    #[error("--warmup must be 0..={MAX_DURATION_S} s, got {0}")]
    Warmup(f64),
    /// `--batch` is 0 or above [`MAX_BATCH`].
    #[error("--batch must be 1..={MAX_BATCH}, got {0}")]
    Batch(usize),
    /// `--batch` × K × largest size exceeds [`MAX_FLUSH_BYTES`].
    #[error("--batch x --destinations x --size = {0} bytes per flush exceeds {MAX_FLUSH_BYTES}; lower --batch")]
    FlushTooLarge(usize),
    /// `--rcvbuf` is 0 or above [`MAX_RCVBUF`].
    #[error("--rcvbuf must be 1..={MAX_RCVBUF}, got {0}")]
    Rcvbuf(usize),
    /// `--core`/`--drain-core` above [`MAX_CPU_INDEX`].
    #[error("CPU index must be 0..={MAX_CPU_INDEX}, got {0}")]
    CpuIndex(usize),
    /// `--core`/`--drain-core` not in this process's allowed CPU set.
    #[error("CPU {0} is not in this process's affinity mask (allowed: {1:?})")]
    CpuNotAllowed(usize, Vec<usize>),
}

/// A validated run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Destinations.
    pub k: usize,
    /// Size cycle (each 1..=1500).
    pub sizes: Vec<usize>,
    /// Input rate, 0 = flat out.
    pub pps_in: u64,
    /// Send path.
    pub mode: Mode,
    /// Measured time.
    pub duration: Duration,
    /// Warm-up time.
    pub warmup: Duration,
    /// Sender CPU.
    pub core: Option<usize>,
    /// Drain CPU (resolved: explicit, or another allowed CPU than `core`).
    pub drain_core: Option<usize>,
    /// Input packets per flush.
    pub batch: usize,
    /// Receiver `SO_RCVBUF`.
    pub rcvbuf: usize,
    /// Datagrams one flush can hold (`batch` × K).
    pub flush_datagrams: usize,
    /// Arena bytes one flush needs (`batch` × K × largest size).
    pub flush_bytes: usize,
}

/// Check `args` against the limits and the allowed CPUs (`allowed`, ascending), and resolve
/// the drain CPU.
pub fn validate(args: &Args, allowed: &[usize]) -> Result<Plan, ArgError> {
    let k = args.destinations;
    if k == 0 || k > MAX_DESTINATIONS {
        return Err(ArgError::Destinations(k));
    }
    if args.size.is_empty() || args.size.len() > MAX_SIZES {
        return Err(ArgError::SizeCount(args.size.len()));
    }
    if let Some(&s) = args
        .size
        .iter()
        .find(|&&s| s == 0 || s > ils_io::MAX_DATAGRAM)
    {
        return Err(ArgError::Size(s));
    }
    if args.pps_in > MAX_PPS_IN {
        return Err(ArgError::PpsIn(args.pps_in));
    }
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= MAX_DURATION_S) {
        return Err(ArgError::Duration(args.duration));
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0 && args.warmup <= MAX_DURATION_S) {
        return Err(ArgError::Warmup(args.warmup));
    }
    if args.batch == 0 || args.batch > MAX_BATCH {
        return Err(ArgError::Batch(args.batch));
    }
    if args.rcvbuf == 0 || args.rcvbuf > MAX_RCVBUF {
        return Err(ArgError::Rcvbuf(args.rcvbuf));
    }
    let largest = args.size.iter().copied().max().unwrap_or(0);
    // k ≤ 20 000, batch ≤ 64, size ≤ 1500: the product fits in usize (≤ 1.92e9).
    let flush_datagrams = args.batch * k;
    let flush_bytes = flush_datagrams * largest;
    if flush_bytes > MAX_FLUSH_BYTES {
        return Err(ArgError::FlushTooLarge(flush_bytes));
    }
    for c in [args.core, args.drain_core].into_iter().flatten() {
        if c > MAX_CPU_INDEX {
            return Err(ArgError::CpuIndex(c));
        }
        if !allowed.contains(&c) {
            return Err(ArgError::CpuNotAllowed(c, allowed.to_vec()));
        }
    }
    let drain_core = match (args.drain_core, args.core) {
        (Some(d), _) => Some(d),
        (None, Some(c)) => allowed.iter().copied().find(|&a| a != c),
        (None, None) => None,
    };
    Ok(Plan {
        k,
        sizes: args.size.clone(),
        pps_in: args.pps_in,
        mode: args.mode,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        core: args.core,
        drain_core,
        batch: args.batch,
        rcvbuf: args.rcvbuf,
        flush_datagrams,
        flush_bytes,
    })
}

/// The result of one run (the `--json` output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always "ils-limit".
    pub tool: String,
    /// Mode asked for.
    pub mode: Mode,
    /// Receive backend the sender's `Io` got ("IoUring" / "Mmsg").
    pub backend: String,
    /// Send path the sender's `Io` got ("Sendmmsg" / "UringSendMsg").
    pub send_path: String,
    /// Whether GSO was on for the run.
    pub gso: bool,
    /// Degradations `Io::open` recorded (e.g. GSO refused, io_uring unavailable).
    pub degraded: Vec<String>,
    /// Destinations K.
    pub destinations: usize,
    /// Datagram size cycle.
    pub sizes: Vec<usize>,
    /// Input packets per flush.
    pub batch: usize,
    /// Input rate asked for (0 = flat out).
    pub pps_in_target: u64,
    /// Sender CPU (null = not pinned).
    pub sender_core: Option<usize>,
    /// Drain CPU (null = not pinned).
    pub drain_core: Option<usize>,
    /// Measured seconds (wall clock, after warm-up).
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Input packets sent to all K during the measured time.
    pub inputs: u64,
    /// Datagrams the kernel accepted during the measured time.
    pub sent: u64,
    /// Datagrams received during the measured time.
    pub received: u64,
    /// Datagrams the send path dropped (errors, full socket buffer) during the measured time.
    pub dropped_at_send: u64,
    /// Input packets per second achieved.
    pub input_pps: f64,
    /// Datagrams per second sent (the limit when flat out).
    pub sent_pps: f64,
    /// Datagrams per second received during the measured time.
    pub received_pps: f64,
    /// Payload Mbit/s sent.
    pub sent_mbit_s: f64,
    /// Datagrams sent (whole run, warm-up included) that never arrived after the receivers drained.
    pub lost: u64,
    /// `lost` as a percentage of all datagrams sent in the run.
    pub loss_pct: f64,
    /// Sender CPU (user + system) per sent datagram, µs: the sender thread plus any other
    /// thread of the process except the drain thread (io_uring `iou-wrk` workers).
    pub sender_cpu_us_per_pkt: f64,
    /// That CPU as a percentage of one core (below 100 flat out: the machine took the core
    /// away — see `sender_preemptions`).
    pub sender_cpu_pct: f64,
    /// The part of `sender_cpu_us_per_pkt` spent in other threads (io_uring workers), µs.
    pub worker_cpu_us_per_pkt: f64,
    /// Involuntary context switches of the sender thread during the window.
    pub sender_preemptions: u64,
    /// Drain thread CPU per datagram received in the window, µs.
    pub drain_cpu_us_per_pkt: f64,
    /// CPU of all `ksoftirqd/N` threads per sent datagram, µs (loopback receive work deferred
    /// out of the sender).
    pub ksoftirqd_cpu_us_per_pkt: f64,
    /// Send units (msghdrs) per sent datagram: 1.0 without GSO, 1/burst length with.
    pub send_units_per_pkt: f64,
    /// GSO bursts (≥ 2 segments) sent during the measured time.
    pub gso_bursts: u64,
    /// System-wide `Udp: RcvbufErrors` increase during the run (null if unreadable).
    pub udp_rcvbuf_errors: Option<u64>,
    /// System-wide `Udp: SndbufErrors` increase during the run (null if unreadable).
    pub udp_sndbuf_errors: Option<u64>,
}

impl Report {
    /// Human-readable summary.
    pub fn text(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(|s| s.to_string()).collect();
        let rate = if self.pps_in_target == 0 {
            "flat out".to_string()
        } else {
            format!("{} input pkt/s", self.pps_in_target)
        };
        let core = |c: Option<usize>| c.map_or("unpinned".to_string(), |c| c.to_string());
        let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("+{v}"));
        let mut s = String::new();
        s.push_str(&format!(
            "ils-limit: mode {} ({} backend, {}, GSO {}), K={}, {} B, batch {}, {}, {:.1} s (+{:.1} s warm-up), sender core {}, drain core {}\n",
            self.mode.name(), self.backend, self.send_path, if self.gso { "on" } else { "off" },
            self.destinations, sizes.join(","), self.batch, rate, self.duration_s, self.warmup_s,
            core(self.sender_core), core(self.drain_core),
        ));
        for d in &self.degraded {
            s.push_str(&format!("  DEGRADED: {d}\n"));
        }
        s.push_str(&format!(
            "  input     {:>12.0} pkt/s (each to {} destinations)\n",
            self.input_pps, self.destinations
        ));
        s.push_str(&format!(
            "  sent      {:>12.0} pkt/s  {:.0} Mbit/s  ({} dropped at send)\n",
            self.sent_pps, self.sent_mbit_s, self.dropped_at_send
        ));
        s.push_str(&format!(
            "  received  {:>12.0} pkt/s  lost {} ({:.3} %)\n",
            self.received_pps, self.lost, self.loss_pct
        ));
        s.push_str(&format!(
            "  sender CPU {:.3} us/pkt ({:.1} % of a core, {:.3} of it in io_uring workers; preempted {} times); drain {:.3} us/pkt; ksoftirqd {:.3} us/pkt\n",
            self.sender_cpu_us_per_pkt,
            self.sender_cpu_pct,
            self.worker_cpu_us_per_pkt,
            self.sender_preemptions,
            self.drain_cpu_us_per_pkt,
            self.ksoftirqd_cpu_us_per_pkt
        ));
        s.push_str(&format!(
            "  send units per datagram {:.3} ({} GSO bursts)\n",
            self.send_units_per_pkt, self.gso_bursts
        ));
        s.push_str(&format!(
            "  kernel UDP (system-wide): RcvbufErrors {}, SndbufErrors {}\n",
            opt(self.udp_rcvbuf_errors),
            opt(self.udp_sndbuf_errors)
        ));
        s
    }
}

/// Parse `/proc/net/snmp` and return `(RcvbufErrors, SndbufErrors)` of the `Udp:` table.
/// `None` if the table or a field is missing or malformed.
pub fn parse_udp_snmp(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some((get("RcvbufErrors")?, get("SndbufErrors")?))
}

/// From the text of `/proc/<pid>/stat`, `utime + stime` in clock ticks. `None` if malformed.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 (index 0); utime/stime are fields 14/15 (index 11/12).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    utime.checked_add(stime)
}

fn udp_snmp() -> Option<(u64, u64)> {
    parse_udp_snmp(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

/// CPU time of all `ksoftirqd/N` threads.
fn ksoftirqd_cpu() -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ticks = 0u64;
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.flatten() {
            let p = e.path();
            let is_ksoft = std::fs::read_to_string(p.join("comm"))
                .map(|c| c.starts_with("ksoftirqd/"))
                .unwrap_or(false);
            if is_ksoft {
                if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
                    ticks = ticks.saturating_add(parse_stat_ticks(&stat).unwrap_or(0));
                }
            }
        }
    }
    Duration::from_micros(ticks.saturating_mul(1_000_000) / hz)
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    clock_cpu(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of a clock (`CLOCK_*` or a thread's clock id); zero if unreadable.
fn clock_cpu(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Involuntary context switches of the calling thread (it was preempted: a busy machine).
fn thread_involuntary_switches() -> u64 {
    // SAFETY: rusage is plain data; getrusage writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return 0;
    }
    ru.ru_nivcsw.max(0) as u64
}

/// CPU accounting at one instant (window start or end).
#[derive(Clone, Copy)]
struct CpuSnap {
    /// The sender thread.
    sender: Duration,
    /// The whole process (every thread, exited io_uring workers included).
    process: Duration,
    /// The drain thread.
    drain: Duration,
    /// All `ksoftirqd/N` threads.
    ksoftirqd: Duration,
    /// Sender's involuntary context switches.
    preempted: u64,
}

impl CpuSnap {
    fn take(drain_clock: Option<libc::clockid_t>) -> CpuSnap {
        CpuSnap {
            sender: thread_cpu(),
            process: clock_cpu(libc::CLOCK_PROCESS_CPUTIME_ID),
            drain: drain_clock.map_or(Duration::ZERO, clock_cpu),
            ksoftirqd: ksoftirqd_cpu(),
            preempted: thread_involuntary_switches(),
        }
    }

    /// CPU of threads other than sender and drain (io_uring workers), from `self` to `end`.
    fn others(&self, end: &CpuSnap) -> Duration {
        let p = end.process.saturating_sub(self.process);
        let s = end.sender.saturating_sub(self.sender);
        let d = end.drain.saturating_sub(self.drain);
        p.saturating_sub(s).saturating_sub(d)
    }
}

/// CPUs this process may run on, ascending.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = this thread; the size is that of the set we pass.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set; i < CPU_SETSIZE.
    (0..=MAX_CPU_INDEX)
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// Pin the calling thread to `core` (≤ [`MAX_CPU_INDEX`], checked by [`validate`]).
fn pin_current_thread(core: usize) -> std::io::Result<()> {
    if core > MAX_CPU_INDEX {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: cpu_set_t is plain data.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: core < CPU_SETSIZE (checked above), so CPU_SET stays inside the set.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: pid 0 = the calling thread; the set is initialised.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

/// Open `k` receiver sockets on 127.0.0.1 (nonblocking, `rcvbuf` asked with `SO_RCVBUFFORCE`
/// first so root is not capped by `net.core.rmem_max`).
fn open_receivers(k: usize, rcvbuf: usize) -> std::io::Result<Vec<UdpSocket>> {
    let mut v = Vec::with_capacity(k);
    let bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    for _ in 0..k {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        let val = rcvbuf.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: setsockopt reads `val` for its size.
        let forced = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !forced {
            s.set_recv_buffer_size(rcvbuf)?;
        }
        s.bind(&bind.into())?;
        s.set_nonblocking(true)?;
        v.push(s.into());
    }
    Ok(v)
}

/// What the drain thread reports when it stops.
struct DrainOutcome {
    cpu: Duration,
    received: u64,
}

/// Drain all sockets (epoll, level-triggered, then `recvmmsg` per ready socket until it is
/// empty) until `stop`; count datagrams in `received`.
fn drain(
    socks: Vec<UdpSocket>,
    core: Option<usize>,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
) -> std::io::Result<DrainOutcome> {
    if let Some(c) = core {
        pin_current_thread(c)?;
    }
    let cpu0 = thread_cpu();
    // SAFETY: plain epoll instance creation.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    struct Fd(libc::c_int);
    impl Drop for Fd {
        fn drop(&mut self) {
            // SAFETY: we own this descriptor.
            unsafe { libc::close(self.0) };
        }
    }
    let ep = Fd(ep);
    for (i, s) in socks.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: valid epoll fd, valid socket fd, event struct initialised.
        let r = unsafe { libc::epoll_ctl(ep.0, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let mut bufs = vec![[0u8; DRAIN_BUF]; DRAIN_BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: DRAIN_BUF,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zero = no name, no control, no iovecs (set below).
    let mut msgs: Vec<libc::mmsghdr> = (0..DRAIN_BATCH)
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: epoll_event is plain data.
    let mut events: Vec<libc::epoll_event> =
        (0..256).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: events has 256 entries.
        let n = unsafe { libc::epoll_wait(ep.0, events.as_mut_ptr(), 256, 20) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter().take(n as usize) {
            let Some(s) = socks.get(ev.u64 as usize) else {
                continue;
            };
            loop {
                // SAFETY: msgs[..DRAIN_BATCH] point at live buffers owned by this function.
                let r = unsafe {
                    libc::recvmmsg(
                        s.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        DRAIN_BATCH as libc::c_uint,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if r <= 0 {
                    break;
                }
                total += r as u64;
                received.fetch_add(r as u64, Ordering::Relaxed);
                if (r as usize) < DRAIN_BATCH {
                    break;
                }
            }
        }
    }
    drop(iovs);
    Ok(DrainOutcome {
        cpu: thread_cpu().saturating_sub(cpu0),
        received: total,
    })
}

/// Counters the sender keeps (whole run).
#[derive(Clone, Copy, Default)]
struct SendCounters {
    inputs: u64,
    sent: u64,
    dropped: u64,
    units: u64,
    bursts: u64,
}

/// What the sending half of a run measured.
struct SendOutcome {
    kind: BackendKind,
    send_path: SendPath,
    gso: bool,
    degraded: Vec<String>,
    /// Counters over the whole run.
    total: SendCounters,
    /// Counters when the measured window started.
    at_measure: SendCounters,
    /// Length of the measured window.
    elapsed: Duration,
    /// CPU at the window's start and end.
    cpu0: CpuSnap,
    cpu1: CpuSnap,
    /// Datagrams received during the window.
    received_window: u64,
    snmp_before: Option<(u64, u64)>,
    snmp_after: Option<(u64, u64)>,
}

/// The sender: open the `Io`, send for warm-up + duration (paced or flat out), then wait for
/// the receivers to drain (at most [`SETTLE_MAX`]).
fn send_phase(
    plan: &Plan,
    dests: &[SocketAddr],
    wake_fd: libc::c_int,
    received: &AtomicU64,
    drain_clock: Option<libc::clockid_t>,
) -> Result<SendOutcome, String> {
    let (backend, path, gso) = plan.mode.io_choice();
    let mut cfg = IoConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.backend = backend;
    cfg.send_path = Some(path);
    cfg.gso = gso;
    let mut io = Io::open(&cfg, wake_fd).map_err(|e| format!("sender socket: {e}"))?;
    let mut tx = TxBatch::new(plan.flush_bytes, plan.flush_datagrams);
    tx.set_gso(io.gso());
    let degraded: Vec<String> = io.degraded().iter().map(|d| format!("{d:?}")).collect();
    let mut template = [0u8; ils_io::MAX_DATAGRAM];
    for (i, b) in template.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }

    let snmp_before = udp_snmp();
    let mut c = SendCounters::default();
    // (start instant, counters, CPU, received) at the window's start.
    let mut at_measure: Option<(Instant, SendCounters, CpuSnap, u64)> = None;
    let start = Instant::now();
    let end = plan.warmup + plan.duration;
    let mut size_i = 0usize;
    loop {
        let now = Instant::now();
        let el = now.duration_since(start);
        if el >= end {
            break;
        }
        if at_measure.is_none() && el >= plan.warmup {
            at_measure = Some((
                now,
                c,
                CpuSnap::take(drain_clock),
                received.load(Ordering::Relaxed),
            ));
        }
        let n = if plan.pps_in == 0 {
            plan.batch as u64
        } else {
            let due = (el.as_secs_f64() * plan.pps_in as f64) as u64;
            let n = due.saturating_sub(c.inputs).min(plan.batch as u64);
            if n == 0 {
                let next = Duration::from_secs_f64((c.inputs + 1) as f64 / plan.pps_in as f64);
                let wait = next.saturating_sub(el).min(end.saturating_sub(el));
                std::thread::sleep(wait.min(Duration::from_millis(10)));
                continue;
            }
            n
        };
        for _ in 0..n {
            let size = plan
                .sizes
                .get(size_i)
                .copied()
                .unwrap_or(ils_io::MAX_DATAGRAM);
            size_i = (size_i + 1) % plan.sizes.len().max(1);
            let seq = (c.inputs as u32).to_be_bytes();
            for d in dests {
                let Some(buf) = tx.reserve(*d, size) else {
                    // Cannot happen (the batch holds batch × K of the largest size); counted.
                    c.dropped += 1;
                    continue;
                };
                if let (Some(dst), Some(src)) = (buf.get_mut(..size), template.get(..size)) {
                    dst.copy_from_slice(src);
                }
                if let Some(h) = buf.get_mut(..4) {
                    h.copy_from_slice(&seq);
                }
            }
            c.inputs += 1;
        }
        let st = io.flush(&mut tx);
        c.sent += st.segments as u64;
        c.dropped += st.dropped as u64;
        c.units += st.datagrams as u64;
        c.bursts += st.gso_bursts as u64;
    }
    let t_end = Instant::now();
    let cpu1 = CpuSnap::take(drain_clock);
    let recv_end = received.load(Ordering::Relaxed);
    let (t0, c0, cpu0, recv0) = at_measure.unwrap_or((t_end, c, cpu1, recv_end));

    // Let the receivers drain, then loss can be counted over the whole run.
    let settle_start = Instant::now();
    let mut last = received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while settle_start.elapsed() < SETTLE_MAX && last < c.sent {
        std::thread::sleep(Duration::from_millis(10));
        let now = received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= SETTLE_QUIET {
            break;
        }
    }
    Ok(SendOutcome {
        kind: io.kind(),
        send_path: io.send_path(),
        gso: io.gso(),
        degraded,
        total: c,
        at_measure: c0,
        elapsed: t_end.duration_since(t0),
        cpu0,
        cpu1,
        received_window: recv_end.saturating_sub(recv0),
        snmp_before,
        snmp_after: udp_snmp(),
    })
}

/// Run one case (receivers open, drain thread started, sender on the calling thread).
fn run(plan: &Plan) -> Result<Report, String> {
    let nofile = raise_nofile();
    let need = plan.k as u64 + 64;
    if nofile < need {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}, {need} descriptors needed for {} destinations (raise `ulimit -n`)",
            plan.k
        ));
    }
    let rx = open_receivers(plan.k, plan.rcvbuf).map_err(|e| format!("receiver sockets: {e}"))?;
    let dests: Vec<SocketAddr> = rx
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("receiver address: {e}"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let drain_thread = {
        let stop = Arc::clone(&stop);
        let received = Arc::clone(&received);
        let core = plan.drain_core;
        std::thread::Builder::new()
            .name("ils-limit-drain".into())
            .spawn(move || drain(rx, core, stop, received))
            .map_err(|e| format!("drain thread: {e}"))?
    };
    let stop_drain = |stop: &AtomicBool| stop.store(true, Ordering::Relaxed);

    if let Some(c) = plan.core {
        if let Err(e) = pin_current_thread(c) {
            stop_drain(&stop);
            return Err(format!("pinning the sender to CPU {c}: {e}"));
        }
    }

    // SAFETY: plain eventfd creation (Io wants a wake fd; nobody signals it here).
    let ev = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if ev < 0 {
        stop_drain(&stop);
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    let drain_clock = {
        let mut id: libc::clockid_t = 0;
        // SAFETY: the thread is alive until joined below; id is written on success.
        let r = unsafe { libc::pthread_getcpuclockid(drain_thread.as_pthread_t(), &mut id) };
        (r == 0).then_some(id)
    };
    let result = send_phase(plan, &dests, ev, &received, drain_clock);
    // SAFETY: we own ev; the Io that watched it is dropped.
    unsafe { libc::close(ev) };
    stop_drain(&stop);
    let drained = match drain_thread.join() {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Err(format!("drain thread: {e}")),
        Err(_) => return Err("drain thread panicked".into()),
    };
    let o = result?;
    let (c, c0, elapsed) = (o.total, o.at_measure, o.elapsed);
    let sender_cpu = o.cpu1.sender.saturating_sub(o.cpu0.sender);
    let workers_cpu = o.cpu0.others(&o.cpu1);
    let cpu = sender_cpu + workers_cpu;
    let drain_cpu = o.cpu1.drain.saturating_sub(o.cpu0.drain);
    let ksoftirqd = o.cpu1.ksoftirqd.saturating_sub(o.cpu0.ksoftirqd);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let sent = c.sent.saturating_sub(c0.sent);
    let units = c.units.saturating_sub(c0.units);
    let inputs = c.inputs.saturating_sub(c0.inputs);
    // Bytes sent in the window: inputs × K × mean size is exact only for one size; use the
    // size cycle's mean (exact for a single size, within one cycle otherwise).
    let mean_size = plan.sizes.iter().sum::<usize>() as f64 / plan.sizes.len().max(1) as f64;
    let lost = c.sent.saturating_sub(drained.received);
    let diff = |i: usize| -> Option<u64> {
        let (a, b) = (o.snmp_before?, o.snmp_after?);
        let pick = |t: (u64, u64)| if i == 0 { t.0 } else { t.1 };
        Some(pick(b).saturating_sub(pick(a)))
    };
    Ok(Report {
        tool: "ils-limit".into(),
        mode: plan.mode,
        backend: match o.kind {
            BackendKind::IoUring => "IoUring".into(),
            BackendKind::Mmsg => "Mmsg".into(),
        },
        send_path: match o.send_path {
            SendPath::Sendmmsg => "Sendmmsg".into(),
            SendPath::UringSendMsg => "UringSendMsg".into(),
        },
        gso: o.gso,
        degraded: o.degraded,
        destinations: plan.k,
        sizes: plan.sizes.clone(),
        batch: plan.batch,
        pps_in_target: plan.pps_in,
        sender_core: plan.core,
        drain_core: plan.drain_core,
        duration_s: secs,
        warmup_s: plan.warmup.as_secs_f64(),
        inputs,
        sent,
        received: o.received_window,
        dropped_at_send: c.dropped.saturating_sub(c0.dropped),
        input_pps: inputs as f64 / secs,
        sent_pps: sent as f64 / secs,
        received_pps: o.received_window as f64 / secs,
        sent_mbit_s: sent as f64 * mean_size * 8.0 / secs / 1e6,
        lost,
        loss_pct: if c.sent == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / c.sent as f64
        },
        sender_cpu_us_per_pkt: cpu.as_secs_f64() * 1e6 / sent.max(1) as f64,
        sender_cpu_pct: cpu.as_secs_f64() * 100.0 / secs,
        worker_cpu_us_per_pkt: workers_cpu.as_secs_f64() * 1e6 / sent.max(1) as f64,
        sender_preemptions: o.cpu1.preempted.saturating_sub(o.cpu0.preempted),
        drain_cpu_us_per_pkt: if drain_clock.is_some() {
            drain_cpu.as_secs_f64() * 1e6 / o.received_window.max(1) as f64
        } else {
            drained.cpu.as_secs_f64() * 1e6 / drained.received.max(1) as f64
        },
        ksoftirqd_cpu_us_per_pkt: ksoftirqd.as_secs_f64() * 1e6 / sent.max(1) as f64,
        send_units_per_pkt: units as f64 / sent.max(1) as f64,
        gso_bursts: c.bursts.saturating_sub(c0.bursts),
        udp_rcvbuf_errors: diff(0),
        udp_sndbuf_errors: diff(1),
    })
}

fn main() {
    let args = Args::parse();
    let plan = match validate(&args, &allowed_cpus()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ils-limit: {e}");
            std::process::exit(2);
        }
    };
    match run(&plan) {
        Ok(r) => {
            if args.json {
                match serde_json::to_string(&r) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("ils-limit: JSON: {e}");
                        std::process::exit(1);
                    }
                }
            } else {
                print!("{}", r.text());
            }
        }
        Err(e) => {
            eprintln!("ils-limit: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use proptest::prelude::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("ils-limit").chain(argv.iter().copied()))
    }

    const CPUS: &[usize] = &[0, 1];

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.destinations, 100);
        assert_eq!(a.size, vec![1200]);
        assert_eq!(a.pps_in, 0);
        assert_eq!(a.mode, Mode::Sendmmsg);
        assert_eq!(a.duration, 3.0);
        assert_eq!(a.batch, 32);
        assert!(!a.json);
        let p = validate(&a, CPUS).unwrap();
        assert_eq!(p.core, None);
        assert_eq!(p.drain_core, None);
        assert_eq!(p.flush_datagrams, 3200);
        assert_eq!(p.flush_bytes, 3200 * 1200);
    }

    #[test]
    fn full_command_line() {
        let a = parse(&[
            "--destinations",
            "2500",
            "--size",
            "1200,1200,160",
            "--pps-in",
            "500",
            "--mode",
            "uring-gso",
            "--duration",
            "1.5",
            "--warmup",
            "0",
            "--core",
            "1",
            "--batch",
            "64",
            "--json",
        ])
        .unwrap();
        assert_eq!(a.size, vec![1200, 1200, 160]);
        assert_eq!(a.mode, Mode::UringGso);
        let p = validate(&a, CPUS).unwrap();
        assert_eq!(p.k, 2500);
        assert_eq!(p.pps_in, 500);
        assert_eq!(p.core, Some(1));
        assert_eq!(p.drain_core, Some(0), "drain goes to the other allowed CPU");
        assert_eq!(p.duration, Duration::from_millis(1500));
        assert_eq!(p.warmup, Duration::ZERO);
        assert_eq!(p.flush_bytes, 64 * 2500 * 1200);
        assert!(a.json);
    }

    #[test]
    fn short_flags_and_modes() {
        for (m, want) in [
            ("sendmmsg", Mode::Sendmmsg),
            ("uring", Mode::Uring),
            ("gso", Mode::Gso),
            ("uring-gso", Mode::UringGso),
        ] {
            let a = parse(&["-k", "10", "-m", m, "-s", "160", "-p", "1000", "-d", "2"]).unwrap();
            assert_eq!(a.mode, want);
            assert_eq!(a.mode.name(), m);
            assert_eq!(a.destinations, 10);
        }
        assert!(parse(&["--mode", "splice"]).is_err());
        assert!(parse(&["--destinations", "-3"]).is_err());
        assert!(parse(&["--size", "big"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }

    #[test]
    fn mode_maps_to_io() {
        assert_eq!(
            Mode::Sendmmsg.io_choice(),
            (BackendChoice::Mmsg, SendPath::Sendmmsg, false)
        );
        assert_eq!(
            Mode::Uring.io_choice(),
            (BackendChoice::IoUring, SendPath::UringSendMsg, false)
        );
        assert_eq!(
            Mode::Gso.io_choice(),
            (BackendChoice::Mmsg, SendPath::Sendmmsg, true)
        );
        assert_eq!(
            Mode::UringGso.io_choice(),
            (BackendChoice::IoUring, SendPath::UringSendMsg, true)
        );
    }

    #[test]
    fn refusals() {
        let v = |argv: &[&str]| validate(&parse(argv).unwrap(), CPUS);
        assert_eq!(v(&["-k", "0"]), Err(ArgError::Destinations(0)));
        assert_eq!(v(&["-k", "20001"]), Err(ArgError::Destinations(20_001)));
        assert_eq!(v(&["-s", "0"]), Err(ArgError::Size(0)));
        assert_eq!(v(&["-s", "1200,1501"]), Err(ArgError::Size(1501)));
        let many: Vec<String> = (0..65).map(|_| "100".to_string()).collect();
        let many = many.join(",");
        assert_eq!(v(&["-s", &many]), Err(ArgError::SizeCount(65)));
        assert_eq!(v(&["-p", "10000001"]), Err(ArgError::PpsIn(10_000_001)));
        assert_eq!(v(&["-d", "0"]), Err(ArgError::Duration(0.0)));
        assert_eq!(v(&["-d", "3601"]), Err(ArgError::Duration(3601.0)));
        assert!(matches!(v(&["-d", "NaN"]), Err(ArgError::Duration(_))));
        assert!(matches!(v(&["-d", "inf"]), Err(ArgError::Duration(_))));
        assert_eq!(v(&["--warmup=-1"]), Err(ArgError::Warmup(-1.0)));
        assert_eq!(v(&["-b", "0"]), Err(ArgError::Batch(0)));
        assert_eq!(v(&["-b", "65"]), Err(ArgError::Batch(65)));
        assert_eq!(v(&["--rcvbuf", "0"]), Err(ArgError::Rcvbuf(0)));
        assert_eq!(
            v(&["-k", "20000", "-b", "64", "-s", "1500"]),
            Err(ArgError::FlushTooLarge(20_000 * 64 * 1500))
        );
        assert_eq!(v(&["-c", "1024"]), Err(ArgError::CpuIndex(1024)));
        assert_eq!(v(&["-c", "5"]), Err(ArgError::CpuNotAllowed(5, vec![0, 1])));
        assert_eq!(
            v(&["--drain-core", "7"]),
            Err(ArgError::CpuNotAllowed(7, vec![0, 1]))
        );
        // Every refusal has a message naming the flag.
        let e = v(&["-b", "0"]).unwrap_err().to_string();
        assert!(e.contains("--batch"), "{e}");
    }

    #[test]
    fn drain_core_resolution() {
        let v = |argv: &[&str], cpus: &[usize]| validate(&parse(argv).unwrap(), cpus).unwrap();
        assert_eq!(v(&["-c", "0"], &[0, 1]).drain_core, Some(1));
        assert_eq!(v(&["-c", "1"], &[0, 1, 2]).drain_core, Some(0));
        assert_eq!(v(&["-c", "0"], &[0]).drain_core, None, "one CPU: share it");
        assert_eq!(
            v(&["-c", "0", "--drain-core", "0"], &[0, 1]).drain_core,
            Some(0)
        );
        assert_eq!(v(&["--drain-core", "1"], &[0, 1]).core, None);
    }

    fn sample_report() -> Report {
        Report {
            tool: "ils-limit".into(),
            mode: Mode::UringGso,
            backend: "IoUring".into(),
            send_path: "UringSendMsg".into(),
            gso: true,
            degraded: vec!["GsoUnsupported(\"x\")".into()],
            destinations: 100,
            sizes: vec![1200, 160],
            batch: 32,
            pps_in_target: 0,
            sender_core: Some(0),
            drain_core: None,
            duration_s: 3.0,
            warmup_s: 0.3,
            inputs: 10,
            sent: 1000,
            received: 990,
            dropped_at_send: 0,
            input_pps: 3.3,
            sent_pps: 333.3,
            received_pps: 330.0,
            sent_mbit_s: 1.8,
            lost: 10,
            loss_pct: 1.0,
            sender_cpu_us_per_pkt: 2.5,
            sender_cpu_pct: 99.0,
            worker_cpu_us_per_pkt: 0.0,
            sender_preemptions: 3,
            drain_cpu_us_per_pkt: 0.5,
            ksoftirqd_cpu_us_per_pkt: 0.0,
            send_units_per_pkt: 0.03125,
            gso_bursts: 31,
            udp_rcvbuf_errors: Some(10),
            udp_sndbuf_errors: None,
        }
    }

    #[test]
    fn json_round_trip_and_field_names() {
        let r = sample_report();
        let j = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
        // bench/run reads these names with jq: keep them stable.
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        for key in [
            "mode",
            "destinations",
            "sizes",
            "sent_pps",
            "received_pps",
            "loss_pct",
            "sender_cpu_us_per_pkt",
            "sender_cpu_pct",
            "backend",
            "send_path",
            "gso",
            "degraded",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["mode"], "uring-gso");
        assert_eq!(v["sender_core"], 0);
        assert!(v["drain_core"].is_null());
        assert!(v["udp_sndbuf_errors"].is_null());
        // One line (bench/run appends one object per line).
        assert!(!j.contains('\n'));
    }

    #[test]
    fn text_mentions_the_essentials() {
        let t = sample_report().text();
        assert!(t.contains("mode uring-gso"), "{t}");
        assert!(t.contains("K=100"), "{t}");
        assert!(t.contains("1200,160 B"), "{t}");
        assert!(t.contains("DEGRADED"), "{t}");
        assert!(t.contains("lost 10 (1.000 %)"), "{t}");
        assert!(t.contains("SndbufErrors ?"), "{t}");
    }

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
Udp: 100 2 3 400 5 6 0 0 0\n\
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
UdpLite: 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn snmp_parse() {
        assert_eq!(parse_udp_snmp(SNMP), Some((5, 6)));
        // Every truncation is None or the right answer, never a panic.
        for i in 0..SNMP.len() {
            if let Some(t) = SNMP.get(..i) {
                let r = parse_udp_snmp(t);
                assert!(r.is_none() || r == Some((5, 6)), "{i}: {r:?}");
            }
        }
        assert_eq!(
            parse_udp_snmp("Udp: RcvbufErrors SndbufErrors\nUdp: x 1\n"),
            None
        );
        assert_eq!(parse_udp_snmp("Udp: RcvbufErrors\nUdp: 1\n"), None);
        assert_eq!(parse_udp_snmp(""), None);
        // The live file parses on Linux.
        if let Ok(live) = std::fs::read_to_string("/proc/net/snmp") {
            assert!(parse_udp_snmp(&live).is_some());
        }
    }

    #[test]
    fn stat_parse() {
        let s = "42 (ksoftirqd/0) S 2 0 0 0 -1 69238848 0 0 0 0 17 25 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_stat_ticks(s), Some(42));
        // A command name with spaces and parentheses.
        let s = "7 (a) b (c)) R 1 1 1 0 -1 0 0 0 0 0 3 4 0 0";
        assert_eq!(parse_stat_ticks(s), Some(7));
        for i in 0..s.len() {
            let r = parse_stat_ticks(&s[..i]);
            assert!(r.is_none() || r == Some(7));
        }
        assert_eq!(parse_stat_ticks("no paren 1 2 3"), None);
        let max = format!("1 (x) S {} {} {}", "0 ".repeat(10), u64::MAX, 1);
        assert_eq!(parse_stat_ticks(&max), None, "overflow is None");
    }

    #[test]
    fn live_run_small() {
        // A real 0.2 s run, 4 destinations, every mode: the receivers get what was sent.
        for mode in [Mode::Sendmmsg, Mode::Uring, Mode::Gso, Mode::UringGso] {
            let a = parse(&[
                "-k",
                "4",
                "-m",
                mode.name(),
                "-d",
                "0.2",
                "--warmup",
                "0.05",
                "-p",
                "2000",
                "-s",
                "1200,160",
            ])
            .unwrap();
            let r = run(&validate(&a, &allowed_cpus()).unwrap()).unwrap();
            assert!(r.sent > 0, "{mode:?}: nothing sent");
            assert_eq!(r.destinations, 4);
            // Paced at 2000 inputs/s: about 400 inputs in 0.2 s (×4 datagrams).
            assert!(
                r.input_pps > 1000.0 && r.input_pps < 3000.0,
                "{}",
                r.input_pps
            );
            assert_eq!(r.sent, r.inputs * 4, "{mode:?}");
            assert_eq!(r.lost, 0, "{mode:?}: loopback at 8k pps must not lose");
            assert!(r.sender_cpu_us_per_pkt > 0.0);
            if r.gso {
                assert!(r.send_units_per_pkt <= 1.0);
            } else {
                assert_eq!(r.send_units_per_pkt, 1.0, "{mode:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn snmp_never_panics(s in ".{0,400}") {
            let _ = parse_udp_snmp(&s);
        }

        #[test]
        fn snmp_udp_lines_never_panic(a in "[A-Za-z0-9 ]{0,80}", b in "[0-9 x-]{0,80}") {
            let _ = parse_udp_snmp(&format!("Udp: {a}\nUdp: {b}\n"));
        }

        #[test]
        fn stat_never_panics(s in ".{0,300}") {
            let _ = parse_stat_ticks(&s);
        }

        #[test]
        fn validate_never_panics(
            k in 0usize..30_000, size in 0usize..2000, batch in 0usize..100,
            d in -1.0f64..4000.0, core in 0usize..2000,
        ) {
            let a = Args {
                destinations: k, size: vec![size], pps_in: 0, mode: Mode::Gso, duration: d,
                warmup: 0.0, core: Some(core), drain_core: None, batch, rcvbuf: 1 << 20, json: false,
            };
            if let Ok(p) = validate(&a, CPUS) {
                prop_assert!(p.flush_bytes <= MAX_FLUSH_BYTES);
                prop_assert!(p.k >= 1 && p.k <= MAX_DESTINATIONS);
            }
        }
    }
}
