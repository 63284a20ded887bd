//! ils-io: the engine's UDP I/O layer — the only engine crate that talks to the kernel for
//! datagrams.
//!
//! One UDP socket per shard ([`Io`]), two receive backends behind one API:
//! - [`BackendKind::IoUring`]: multishot `RecvMsgMulti` over a provided-buffer ring plus an
//!   eventfd `Read` on the same ring (`SINGLE_ISSUER | DEFER_TASKRUN`), waits through
//!   `io_uring_enter` with a timeout;
//! - [`BackendKind::Mmsg`]: `ppoll` on socket + eventfd, then `recvmmsg` into preallocated
//!   buffers.
//!
//! Sending always goes through a caller-filled [`TxBatch`] and [`Io::flush`]: one `sendmmsg`
//! (default, see [`SendPath`]) or one io_uring submit of `SendMsg`s, with UDP GSO
//! (`UDP_SEGMENT`) bursts for consecutive datagrams to one destination.
//!
//! Failure policy: io_uring setup problems degrade to `Mmsg` and GSO refusals degrade to
//! single datagrams; both are recorded in [`Io::degraded`] instead of failing. Per-datagram
//! send/receive errors are counted in [`FlushStats`] / [`PollStats`], never fatal. Nothing
//! allocates per packet: every buffer and syscall array is allocated in [`Io::open`] or
//! [`TxBatch::new`].
//!
//! Threading: create the [`Io`] on the shard thread that uses it (the ring is
//! `SINGLE_ISSUER`; `Io` is deliberately `!Send`). [`TxBatch`] is `Send`.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

mod addr;
mod mmsg;
mod tx;
mod uring;

pub use addr::parse_sockaddr;
pub use tx::{TxBatch, MAX_TX_ARENA_LIMIT, MAX_TX_DATAGRAMS_LIMIT};
pub use uring::{DEFAULT_BUF_RING_ENTRIES, MIN_BUF_RING_ENTRIES, SEND_RING_ENTRIES, SLOT_SIZE};

/// Receive buffer per datagram (both backends). Default 2048 B: a datagram up to this size
/// arrives whole and is then dropped as `too_large` if over [`MAX_DATAGRAM`]; larger ones are
/// truncated by the kernel and also dropped. Bounds per-datagram copy and buffer memory.
pub const RECV_BUF_SIZE: usize = 2048;
/// Largest datagram accepted or sent: 1500 B (Ethernet MTU payload; WebRTC stays under
/// ≈1200 B). Larger received datagrams are dropped and counted in [`PollStats::too_large`].
pub const MAX_DATAGRAM: usize = 1500;
/// Default datagrams delivered per [`Io::poll`] call: 64. Bounds the time one poll spends
/// before the shard gets back to its other work; Mmsg memory ≈ 64 × 2.1 KiB.
pub const DEFAULT_RECV_BATCH: usize = 64;
/// Upper bound on [`IoConfig::recv_batch`]: 1024 (Mmsg memory ≈ 2.2 MiB; larger is refused
/// with [`IoError::InvalidConfig`]).
pub const MAX_RECV_BATCH: usize = 1024;
/// Most segments in one GSO burst: 64 (the kernel's `UDP_MAX_SEGMENTS` is 64 on older and 128
/// on newer kernels). Bounds one `sendmsg`'s iovec list.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO burst: 65 000 (under the 65 507 B UDP/IPv4 payload limit).
pub const MAX_GSO_BYTES: usize = 65_000;
/// Default [`TxBatch`] arena: 16 MiB, i.e. ≈ 14 000 datagrams of 1200 B per flush. The batch
/// is flushed when half full ([`Io::poll_forward`]), so the other half must hold one input
/// packet's whole fan-out: ≈ 7 000 subscribers of one shard at 1200 B (measured: a 4 MiB batch
/// dropped keyframe fan-outs at 250 viewers, docs/performance.md). Memory is exactly this,
/// allocated once per shard.
pub const DEFAULT_TX_ARENA_BYTES: usize = 16 << 20;
/// Default [`TxBatch`] descriptor capacity (wire datagrams per flush): 16 384 (half of it is
/// the per-input-packet fan-out headroom). Memory ≈ 230 B each (≈ 3.6 MiB), on top of the arena.
pub const DEFAULT_TX_MAX_DATAGRAMS: usize = 16_384;
/// Queued datagrams after which [`Io::poll_forward`] flushes between two received datagrams
/// even below the high-water mark. Default 256: a fan-out of one input packet to hundreds of
/// subscribers leaves before the next input is fanned out, so an input burst does not make
/// the first packet's copies wait for every later packet's encryption (p99 added latency);
/// `sendmmsg` costs per datagram, so 256-datagram submissions lose nothing to bigger ones.
pub const EARLY_FLUSH_DATAGRAMS: usize = 256;
/// Default `SO_RCVBUF`/`SO_SNDBUF`: 8 MiB (absorbs ≈ 6 ms of 1 Gbit/s bursts; kernel memory
/// per socket up to 2 × this since the kernel doubles it).
pub const DEFAULT_SOCKET_BUF_BYTES: usize = 8 << 20;

/// Which receive backend an [`Io`] ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// io_uring multishot receive.
    IoUring,
    /// `ppoll` + `recvmmsg`.
    Mmsg,
}

/// Which receive backend to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring if it sets up, else Mmsg (recorded in [`Io::degraded`]).
    Auto,
    /// Same as `Auto` (falls back to Mmsg rather than failing), but states the intent.
    IoUring,
    /// Plain syscalls only; no io_uring ring is created for receiving.
    Mmsg,
}

/// How [`Io::flush`] hands datagrams to the kernel.
///
/// The default (`IoConfig::send_path = None`) is [`SendPath::Sendmmsg`], the measured best:
/// `examples/fanout.rs` on the 2-vCPU dev VM (loopback, 1200 B, 32 packets × K per flush,
/// medians of 6–8 interleaved rounds) gave io_uring `SendMsg` no more packets/s than one
/// `sendmmsg` (K=10: 252–262 k vs 261–264 k pps; K=100: 185–284 k vs 169–308 k, run-to-run
/// noise ±25 %), with GSO on both reaching 740–890 k pps. It is never clearly faster, needs a
/// second ring, and /work/shared/TESTING.md measured it 6–42 % slower; so `sendmmsg` it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPath {
    /// One `sendmmsg(2)` per flush (more only after a per-message error).
    Sendmmsg,
    /// `SendMsg` SQEs on a dedicated io_uring, submitted and reaped in one `io_uring_enter`
    /// per [`SEND_RING_ENTRIES`] messages.
    UringSendMsg,
}

/// How to open an [`Io`]. Start from [`IoConfig::new`] and change fields.
#[derive(Debug, Clone)]
pub struct IoConfig {
    /// Address to bind. IPv4 or IPv6; an unspecified IPv6 address (`[::]`) is dual-stack.
    pub bind: SocketAddr,
    /// Receive backend wanted.
    pub backend: BackendChoice,
    /// Send path; `None` = default ([`SendPath::Sendmmsg`], the measured best).
    pub send_path: Option<SendPath>,
    /// Datagrams delivered per poll, 1..=[`MAX_RECV_BATCH`]; default [`DEFAULT_RECV_BATCH`].
    pub recv_batch: usize,
    /// Try UDP GSO; disabled automatically (and recorded) if the kernel refuses. Default true.
    pub gso: bool,
    /// [`Io::poll_forward`] flushes between received datagrams once this many datagrams are
    /// queued (0: only at the high-water mark). Default [`EARLY_FLUSH_DATAGRAMS`].
    pub early_flush: usize,
    /// `SO_RCVBUF`/`SO_SNDBUF` (the `FORCE` variants are tried first, for root). Default
    /// [`DEFAULT_SOCKET_BUF_BYTES`].
    pub socket_buf_bytes: usize,
    /// io_uring provided receive buffers (rounded up to a power of two, shrunk to fit
    /// `RLIMIT_MEMLOCK`). Default [`DEFAULT_BUF_RING_ENTRIES`].
    pub buf_ring_entries: u16,
    /// Test knob: make io_uring setup fail so the fallback path runs.
    #[doc(hidden)]
    pub force_uring_failure: bool,
}

impl IoConfig {
    /// Defaults: `Auto` backend, default send path, batch 64, GSO on, 8 MiB socket buffers.
    pub fn new(bind: SocketAddr) -> Self {
        IoConfig {
            bind,
            backend: BackendChoice::Auto,
            send_path: None,
            recv_batch: DEFAULT_RECV_BATCH,
            gso: true,
            early_flush: EARLY_FLUSH_DATAGRAMS,
            socket_buf_bytes: DEFAULT_SOCKET_BUF_BYTES,
            buf_ring_entries: DEFAULT_BUF_RING_ENTRIES,
            force_uring_failure: false,
        }
    }
}

/// Errors that stop [`Io::open`] or [`Io::poll`]. Backend/GSO setup problems are not errors
/// (see [`Degraded`]).
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A syscall failed in a way that leaves the socket unusable.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// `bind(2)` failed (address in use, not local, ...).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid I/O configuration: {0}")]
    InvalidConfig(&'static str),
}

/// Reasons the I/O layer degraded instead of failing (the engine logs them once and exports
/// a metric).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Degraded {
    /// io_uring could not be set up (or the requested io_uring send ring); using syscalls.
    IoUringUnavailable(String),
    /// `RLIMIT_MEMLOCK` is below what the buffer ring wants (bytes): the ring was shrunk, or
    /// (if even the minimum did not fit) the Mmsg backend is used.
    MemlockTooLow {
        /// Bytes wanted.
        need: u64,
        /// Soft limit in bytes.
        have: u64,
    },
    /// The kernel refused UDP GSO; sending single datagrams.
    GsoUnsupported(String),
}

/// What one [`Io::poll`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Datagrams handed to the callback.
    pub datagrams: usize,
    /// The wake eventfd was signalled (and has been drained).
    pub woken: bool,
    /// Datagrams dropped for exceeding [`MAX_DATAGRAM`].
    pub too_large: usize,
    /// Receive errors and malformed kernel records (counted, not fatal).
    pub errors: usize,
}

/// What one [`Io::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Send units (`msghdr`s: single datagrams or GSO bursts) the kernel accepted.
    pub datagrams: usize,
    /// Wire datagrams the kernel accepted.
    pub segments: usize,
    /// Accepted send units that were GSO bursts of ≥ 2 segments.
    pub gso_bursts: usize,
    /// Send units that failed (per-message errors; never fatal).
    pub errors: usize,
    /// Wire datagrams not sent (errors, unreachable family, full socket buffer).
    pub dropped: usize,
}

enum Rx {
    Uring(Box<uring::UringRx>),
    Mmsg(mmsg::MmsgRx),
}

/// One UDP socket + its backend, owned by one shard thread.
pub struct Io {
    // Field order matters: the rings drop (cancelling kernel requests) before the socket.
    rx: Rx,
    send_ring: Option<io_uring::IoUring>,
    socket: socket2::Socket,
    fd: RawFd,
    local: SocketAddr,
    v6: bool,
    kind: BackendKind,
    send_path: SendPath,
    gso: bool,
    degraded: Vec<Degraded>,
    recv_batch: usize,
    early_flush: usize,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("local", &self.local)
            .field("kind", &self.kind)
            .field("send_path", &self.send_path)
            .field("gso", &self.gso)
            .field("degraded", &self.degraded)
            .finish()
    }
}

// Generic Linux values (x86, arm, riscv); socket(7).
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> bool {
    // SAFETY: passes a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

fn open_socket(cfg: &IoConfig) -> Result<socket2::Socket, IoError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(cfg.bind),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    s.set_reuse_address(false)?;
    if let SocketAddr::V6(a) = cfg.bind {
        // Dual-stack only when bound to the unspecified address.
        let _ = s.set_only_v6(!a.ip().is_unspecified());
    }
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    let b = cfg.socket_buf_bytes.min(i32::MAX as usize / 2) as libc::c_int;
    let fd = s.as_raw_fd();
    if !setsockopt_int(fd, libc::SOL_SOCKET, SO_RCVBUFFORCE, b) {
        let _ = s.set_recv_buffer_size(b as usize);
    }
    if !setsockopt_int(fd, libc::SOL_SOCKET, SO_SNDBUFFORCE, b) {
        let _ = s.set_send_buffer_size(b as usize);
    }
    s.bind(&cfg.bind.into()).map_err(|source| IoError::Bind {
        addr: cfg.bind,
        source,
    })?;
    Ok(s)
}

impl Io {
    /// Bind (socket2, SO_REUSEADDR off, nonblocking, big buffers) and set up the backend.
    /// With `Auto` (or `IoUring`): try io_uring (SINGLE_ISSUER|DEFER_TASKRUN, RecvMsgMulti +
    /// provided buffer ring sized under RLIMIT_MEMLOCK), fall back to Mmsg on any failure,
    /// recording a [`Degraded`] reason (never an error for that). `wake_fd` is an eventfd the
    /// shard can be woken with: it is watched in [`Io::poll`]. The caller keeps it open for
    /// the life of the `Io`.
    pub fn open(cfg: &IoConfig, wake_fd: RawFd) -> Result<Io, IoError> {
        if cfg.recv_batch == 0 || cfg.recv_batch > MAX_RECV_BATCH {
            return Err(IoError::InvalidConfig(
                "recv_batch must be 1..=MAX_RECV_BATCH",
            ));
        }
        if wake_fd < 0 {
            return Err(IoError::InvalidConfig("wake_fd must be an open eventfd"));
        }
        let socket = open_socket(cfg)?;
        let fd = socket.as_raw_fd();
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or(IoError::InvalidConfig("bound socket has no IP address"))?;
        let mut degraded = Vec::new();

        let gso = cfg.gso && {
            // gso_size 0 = no default segmentation; succeeds iff the kernel knows UDP_SEGMENT.
            let ok = setsockopt_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0);
            if !ok {
                degraded.push(Degraded::GsoUnsupported(format!(
                    "setsockopt(UDP_SEGMENT): {}",
                    std::io::Error::last_os_error()
                )));
            }
            ok
        };

        let mut rx = None;
        if cfg.backend != BackendChoice::Mmsg {
            match uring::UringRx::new(fd, wake_fd, cfg.buf_ring_entries, cfg.force_uring_failure) {
                Ok((r, shrunk)) => {
                    if let Some((need, have)) = shrunk {
                        degraded.push(Degraded::MemlockTooLow { need, have });
                    }
                    rx = Some(Rx::Uring(Box::new(r)));
                }
                Err(uring::SetupError::Memlock { need, have }) => {
                    degraded.push(Degraded::MemlockTooLow { need, have });
                }
                Err(uring::SetupError::Uring(why)) => {
                    degraded.push(Degraded::IoUringUnavailable(why));
                }
            }
        }
        let (rx, kind) = match rx {
            Some(r) => (r, BackendKind::IoUring),
            None => (
                Rx::Mmsg(mmsg::MmsgRx::new(fd, wake_fd, cfg.recv_batch)),
                BackendKind::Mmsg,
            ),
        };

        let mut send_path = cfg.send_path.unwrap_or(SendPath::Sendmmsg);
        let mut send_ring = None;
        if send_path == SendPath::UringSendMsg {
            match (cfg.force_uring_failure, uring::build_send_ring()) {
                (false, Ok(r)) => send_ring = Some(r),
                (forced, res) => {
                    let why = match res {
                        Err(e) if !forced => format!("send ring: {e}"),
                        _ => "send ring: forced failure".to_string(),
                    };
                    degraded.push(Degraded::IoUringUnavailable(why));
                    send_path = SendPath::Sendmmsg;
                }
            }
        }

        Ok(Io {
            rx,
            send_ring,
            socket,
            fd,
            local,
            v6: cfg.bind.is_ipv6(),
            kind,
            send_path,
            gso,
            degraded,
            recv_batch: cfg.recv_batch,
            early_flush: cfg.early_flush,
        })
    }

    /// The receive backend in use.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The send path in use.
    pub fn send_path(&self) -> SendPath {
        self.send_path
    }

    /// Whether GSO is currently on (it can switch off at run time after a kernel refusal).
    /// Feed it to [`TxBatch::set_gso`].
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Everything that degraded so far (append-only; a new entry can appear after `flush`).
    pub fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Times the io_uring buffer ring ran dry (`ENOBUFS`; the receive was re-armed). 0 for
    /// Mmsg.
    pub fn recv_buffer_exhausted(&self) -> u64 {
        match &self.rx {
            Rx::Uring(r) => r.enobufs,
            Rx::Mmsg(_) => 0,
        }
    }

    /// Wait until datagrams arrive, the wake fd is signalled (then drain it), or `timeout`
    /// passes (None = block; Some(0) = don't wait); then call `on_datagram(from, buf)` for
    /// each received datagram, at most `recv_batch` per call. `buf` is the datagram, mutable
    /// so the caller can decrypt in place; it is only valid during the callback.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_datagram: &mut dyn FnMut(SocketAddr, &mut [u8]),
    ) -> Result<PollStats, IoError> {
        match &mut self.rx {
            Rx::Uring(r) => r.poll(timeout, self.recv_batch, on_datagram),
            Rx::Mmsg(m) => m.poll(timeout, self.recv_batch, on_datagram),
        }
    }

    /// Send everything queued in `tx` in as few syscalls as possible (one sendmmsg, or one
    /// io_uring submit per [`SEND_RING_ENTRIES`]), using UDP GSO for bursts; then clear `tx`.
    /// Per-datagram errors are counted, never fatal; if GSO gets EIO/EINVAL, GSO is disabled
    /// ([`Degraded::GsoUnsupported`]) and those bursts are resent as single datagrams. A full
    /// socket buffer (`EAGAIN`/`ENOBUFS`) drops the rest of the batch (counted in `dropped`).
    pub fn flush(&mut self, tx: &mut TxBatch) -> FlushStats {
        let mut stats = FlushStats::default();
        let mut out = SendParts {
            send_ring: &mut self.send_ring,
            fd: self.fd,
            v6: self.v6,
            send_path: self.send_path,
            gso: &mut self.gso,
            degraded: &mut self.degraded,
        };
        out.flush(tx, &mut stats);
        stats
    }

    /// Like [`Io::poll`], but the callback also gets `tx` to queue sends into, and `tx` is
    /// flushed *between* received datagrams whenever it passes half of its capacity
    /// ([`TxBatch::over_high_water`]) or holds [`IoConfig::early_flush`] datagrams, so a burst of input packets each fanned out to many
    /// subscribers is sent in several submissions instead of overflowing the batch. Returns the
    /// receive stats and the stats of the flushes done inside (the caller still flushes the
    /// rest at the end of its iteration).
    pub fn poll_forward(
        &mut self,
        timeout: Option<Duration>,
        tx: &mut TxBatch,
        on_datagram: &mut dyn FnMut(SocketAddr, &mut [u8], &mut TxBatch),
    ) -> Result<(PollStats, FlushStats), IoError> {
        let mut fstats = FlushStats::default();
        let Io {
            rx,
            send_ring,
            fd,
            v6,
            send_path,
            gso,
            degraded,
            recv_batch,
            early_flush,
            ..
        } = self;
        let mut out = SendParts {
            send_ring,
            fd: *fd,
            v6: *v6,
            send_path: *send_path,
            gso,
            degraded,
        };
        let mut cb = |from: SocketAddr, buf: &mut [u8]| {
            on_datagram(from, buf, tx);
            if tx.over_high_water() || (*early_flush > 0 && tx.segments() >= *early_flush) {
                out.flush(tx, &mut fstats);
            }
        };
        let st = match rx {
            Rx::Uring(r) => r.poll(timeout, *recv_batch, &mut cb),
            Rx::Mmsg(m) => m.poll(timeout, *recv_batch, &mut cb),
        }?;
        Ok((st, fstats))
    }

    /// The socket, e.g. for extra socket options.
    pub fn socket(&self) -> &socket2::Socket {
        &self.socket
    }
}

/// The send half of an [`Io`], borrowed apart from its receive half so sends can be flushed
/// from inside the receive callback.
struct SendParts<'a> {
    send_ring: &'a mut Option<io_uring::IoUring>,
    fd: RawFd,
    v6: bool,
    send_path: SendPath,
    gso: &'a mut bool,
    degraded: &'a mut Vec<Degraded>,
}

impl SendParts<'_> {
    fn flush(&mut self, tx: &mut TxBatch, stats: &mut FlushStats) {
        if tx.is_empty() {
            return;
        }
        let (n, errors, dropped) = tx.build(*self.gso, self.v6);
        stats.errors += errors;
        stats.dropped += dropped;
        let mut st = tx::SendState {
            fd: self.fd,
            gso: &mut *self.gso,
            degraded: &mut *self.degraded,
        };
        match (self.send_ring.as_mut(), self.send_path) {
            (Some(ring), SendPath::UringSendMsg) => uring::send_uring(ring, &mut st, tx, n, stats),
            _ => tx::send_mmsg(&mut st, tx, n, stats),
        }
        tx.clear();
    }
}

impl AsRawFd for Io {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}
