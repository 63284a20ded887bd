//! The only code in control that touches the engine: spawning or attaching to `ils-engine`,
//! sending commands, pumping events out of the shared-memory rings, and supervising the process.
//!
//! * **Attach first.** [`EngineLink::start`] connects to `cfg.socket`; if an engine answers (a
//!   control restart), it attaches to that engine and media keeps flowing. Otherwise it spawns
//!   `cfg.bin` in its own session (`setsid`, so killing control does not kill the engine), waits
//!   for the engine's ready line and attaches.
//! * **Commands** are encoded into a stack buffer and pushed onto the shard's command ring; a full
//!   ring is an error ([`LinkError::RingFull`]), never a wait.
//! * **Events**: one OS thread (the *pump*) waits on control's wake eventfd, drains it, then pops
//!   every shard's event ring and forwards each decodable message as a [`LinkEvent::Event`].
//!   Undecodable messages are counted ([`EngineLink::bad_events`]) and dropped: the engine is
//!   another process and its bytes are untrusted.
//! * **Supervision**: every [`SUPERVISE_INTERVAL`] a thread checks the engine: our child exited,
//!   the engine pid is gone, the region's generation changed, or the heartbeat (written by shard
//!   0 every loop iteration) has not moved for [`HEARTBEAT_STALE`]. On failure the engine is killed
//!   if still there (a hung one), a new one is attached or spawned, and
//!   [`LinkEvent::EngineRestarted`] tells the owner that every transport, track and leg is gone.
//!
//! Only one control may drive a region at a time (single producer per ring): a second control
//! attaching to the same engine must only do so after the first has gone ([`EngineLink::detach`]).

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use ils_shm::{
    Command, Consumer, Counter, DecodeError, Event, EventFd, Producer, Region, SLOT_SIZE,
};
use tokio::sync::mpsc;

// ===== limits =====

/// Period of the supervision check. Default 200 ms: a dead engine is noticed within 200 ms,
/// a hung one within [`HEARTBEAT_STALE`] + 200 ms. Cost: a few atomic loads and one `kill(pid, 0)`.
pub const SUPERVISE_INTERVAL: Duration = Duration::from_millis(200);

/// How long the engine heartbeat may stand still before the engine is declared hung and
/// restarted. Default 1 s (shard 0 writes it at least every 100 ms, even when idle).
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(1);

/// How long a spawned engine may take to print its ready line. Default 10 s.
pub const ENGINE_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an attach may wait for the engine's fd message once connected. Default 2 s; bounds
/// the time a hung engine (accepting connections, never answering) can stall start-up.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait of the event pump between ring scans when no wakeup arrives. Default 100 ms
/// (a missed wakeup costs at most this much latency; the pump also checks its stop flag).
pub const PUMP_IDLE_WAIT: Duration = Duration::from_millis(100);

/// Longest ready line read from the engine's stdout (bytes). Default 4 KiB (the line is
/// ≈ 100 bytes + 6 per shard); bounds what a misbehaving binary can make us buffer.
pub const MAX_READY_LINE: u64 = 4096;

/// How long [`EngineLink::stop_engine`] waits after SIGTERM before SIGKILL. Default 5 s.
pub const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(5);

// ===== public types =====

/// How to run (or find) the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The `ils-engine` binary (or any binary that runs the engine after `args_prefix`).
    pub bin: PathBuf,
    /// Arguments put before the engine flags (e.g. `["engine"]` when `bin` is `ils-control`
    /// running its embedded engine); empty for a plain `ils-engine`.
    pub args_prefix: Vec<String>,
    /// The engine's attach socket (`--control-socket`).
    pub socket: PathBuf,
    /// Shards (`--cores`).
    pub cores: usize,
    /// Address the media sockets bind (`--media-ip`).
    pub media_ip: IpAddr,
    /// UDP port of shard 0; shard i uses `ports + i` (`--ports`).
    pub ports: u16,
    /// I/O backend (`--backend`: auto, io-uring, mmsg).
    pub backend: String,
    /// ICE consent timeout in seconds (`--consent-timeout`).
    pub consent_timeout_secs: u64,
}

/// An event copied out of an event ring.
#[derive(Debug, Clone)]
pub struct OwnedEvent {
    /// Shard whose ring it came from.
    pub shard: usize,
    /// The message's sequence number.
    pub seq: u32,
    /// The encoded message (decodes: the pump forwards only decodable messages).
    pub bytes: Vec<u8>,
}

impl OwnedEvent {
    /// Decode the message.
    pub fn event(&self) -> Option<Event<'_>> {
        Event::decode(&self.bytes).ok().map(|(_, e)| e)
    }
}

/// What the link reports to its owner.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// An event from a shard.
    Event(OwnedEvent),
    /// The engine was (re)started: every transport/track/leg is gone.
    EngineRestarted {
        /// The new engine's generation (its `engine_generation` header field).
        generation: u64,
    },
}

/// Why a command was not sent.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// `shard` is not below the engine's shard count.
    #[error("no shard {shard} (the engine has {shards})")]
    NoShard {
        /// Shard asked for.
        shard: usize,
        /// Shards of the attached engine.
        shards: usize,
    },
    /// The shard's command ring is full (the engine is not keeping up, or is hung).
    #[error("command ring of shard {shard} is full")]
    RingFull {
        /// The shard.
        shard: usize,
    },
    /// The command fails the contract's domain checks (it would be refused by the engine).
    #[error("command does not encode: {0}")]
    Encode(DecodeError),
    /// No engine is attached right now (it is being restarted).
    #[error("the engine is restarting")]
    NotAttached,
}

/// Handle to the engine (cheap to clone; `Send + Sync`).
#[derive(Clone)]
pub struct EngineLink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EngineLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineLink")
            .field("socket", &self.inner.cfg.socket)
            .field("shards", &self.shards())
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

// ===== internals =====

struct Attachment {
    region: Region,
    producers: Vec<Mutex<Producer>>,
    wakes: Vec<EventFd>,
    pid: u32,
    generation: u64,
    pump_stop: Arc<AtomicBool>,
    pump_wake: EventFd,
    pump: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.pump_stop.store(true, Ordering::Relaxed);
        self.pump_wake.notify();
        if let Some(p) = lock(&self.pump).take() {
            let _ = p.join();
        }
    }
}

struct Inner {
    cfg: EngineConfig,
    att: RwLock<Option<Arc<Attachment>>>,
    /// The engine we spawned (None when we attached to one started elsewhere).
    child: Mutex<Option<Child>>,
    /// Ports from the spawned engine's ready line.
    ready_ports: Mutex<Option<Vec<u16>>>,
    shards: AtomicU64,
    generation: AtomicU64,
    seq: AtomicU32,
    bad_events: Arc<AtomicU64>,
    restarts: AtomicU64,
    stop: AtomicBool,
    events: mpsc::UnboundedSender<LinkEvent>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why an attach failed.
#[derive(Debug)]
enum AttachError {
    /// Nobody listens on the socket (no engine, or a stale socket file).
    NoEngine(std::io::Error),
    /// Something listens but the attach failed (ABI mismatch, hung engine, bad fds).
    Refused(anyhow::Error),
}

impl EngineLink {
    /// Attach to an engine already listening on `cfg.socket` (control restart: keep media
    /// flowing); otherwise spawn `cfg.bin` with matching flags (`--cores --media-ip --ports
    /// --backend --control-socket --consent-timeout --print-ready`) in its own session (setsid
    /// via pre_exec, so killing control does not kill the engine), wait for its ready line
    /// (timeout 10 s, clear error naming the binary and what to do), then attach. Returns the
    /// link and a receiver of LinkEvents (an event-pump thread copies events out of the rings,
    /// waking on the control eventfd).
    pub async fn start(
        cfg: EngineConfig,
    ) -> anyhow::Result<(EngineLink, mpsc::UnboundedReceiver<LinkEvent>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            cfg,
            att: RwLock::new(None),
            child: Mutex::new(None),
            ready_ports: Mutex::new(None),
            shards: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            seq: AtomicU32::new(1),
            bad_events: Arc::new(AtomicU64::new(0)),
            restarts: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            events: tx,
        });
        let i2 = Arc::clone(&inner);
        tokio::task::spawn_blocking(move || i2.attach_or_spawn())
            .await
            .map_err(|e| anyhow!("engine start task failed: {e}"))??;
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("ils-engine-supervisor".into())
            .spawn(move || supervise(weak))
            .context("spawn the engine supervisor thread")?;
        Ok((EngineLink { inner }, rx))
    }

    /// Shards of the attached engine (the last one attached while restarting).
    pub fn shards(&self) -> usize {
        self.inner.shards.load(Ordering::Relaxed) as usize
    }

    /// UDP port of `shard`: the port the spawned engine reported, else `cfg.ports + shard`.
    pub fn port(&self, shard: usize) -> u16 {
        if let Some(p) = lock(&self.inner.ready_ports)
            .as_ref()
            .and_then(|ports| ports.get(shard))
        {
            return *p;
        }
        let s = u16::try_from(shard).unwrap_or(u16::MAX);
        self.inner.cfg.ports.saturating_add(s)
    }

    /// Generation of the attached engine (changes on every engine restart).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    /// Encode + push + wake the shard. Ring full → Err (never blocks). Returns the command's seq.
    pub fn send(&self, shard: usize, cmd: &Command<'_>) -> Result<u32, LinkError> {
        let att = self.inner.attachment().ok_or(LinkError::NotAttached)?;
        send_on(&att, &self.inner.seq, shard, cmd)
    }

    /// Send `cmd` to every shard (each gets its own seq). Tries every shard; returns the first
    /// error.
    pub fn broadcast(&self, cmd: &Command<'_>) -> Result<(), LinkError> {
        let att = self.inner.attachment().ok_or(LinkError::NotAttached)?;
        let mut first = Ok(());
        for shard in 0..att.producers.len() {
            if let Err(e) = send_on(&att, &self.inner.seq, shard, cmd) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Counters summed over shards, for /metrics (every counter; zeros while restarting).
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        let att = self.inner.attachment();
        Counter::ALL
            .iter()
            .map(|&c| {
                let v = att.as_ref().map_or(0, |a| {
                    (0..a.region.n_shards())
                        .filter_map(|s| a.region.counters(s))
                        .fold(0u64, |acc, b| acc.wrapping_add(b.get(c)))
                });
                (c, v)
            })
            .collect()
    }

    /// Age of the engine's heartbeat (its CLOCK_MONOTONIC stamp vs ours); `None` when not
    /// attached or the engine has not stamped yet.
    pub fn heartbeat_age(&self) -> Option<Duration> {
        let att = self.inner.attachment()?;
        let hb = att.region.header().heartbeat_ns();
        if hb == 0 {
            return None;
        }
        Some(Duration::from_nanos(monotonic_ns().saturating_sub(hb)))
    }

    /// Process id of the attached engine (from the region header).
    pub fn engine_pid(&self) -> Option<u32> {
        self.inner.attachment().map(|a| a.pid)
    }

    /// Whether an engine is attached now (false while restarting).
    pub fn is_attached(&self) -> bool {
        self.inner.attachment().is_some()
    }

    /// Engine restarts performed by the supervisor so far (for /metrics).
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    /// Event messages dropped because they did not decode (hostile or corrupt engine).
    pub fn bad_events(&self) -> u64 {
        self.inner.bad_events.load(Ordering::Relaxed)
    }

    /// Stop supervising and pumping and release the rings, leaving the engine running (control
    /// shutting down or handing over; a new control can attach).
    pub fn detach(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        let old = write(&self.inner.att).take();
        drop(old);
    }

    /// Detach, then stop the engine: SIGTERM, and SIGKILL after [`ENGINE_STOP_TIMEOUT`].
    /// Returns once it is gone (and its attach socket file is removed).
    pub fn stop_engine(&self) -> anyhow::Result<()> {
        self.stop_engine_process()?;
        let _ = std::fs::remove_file(&self.inner.cfg.socket);
        Ok(())
    }

    fn stop_engine_process(&self) -> anyhow::Result<()> {
        self.inner.stop.store(true, Ordering::Relaxed);
        let old = write(&self.inner.att).take();
        let pid = old.as_ref().map(|a| a.pid);
        drop(old);
        if let Some(mut child) = lock(&self.inner.child).take() {
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + ENGINE_STOP_TIMEOUT;
            loop {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    child.wait()?;
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let Some(pid) = pid else {
            return Ok(());
        };
        if !self.inner.is_engine_process(pid) {
            bail!("pid {pid} in the region header is not an ils-engine process; not signalling it");
        }
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + ENGINE_STOP_TIMEOUT;
        while pid_alive(pid) {
            if Instant::now() >= deadline {
                signal(pid, libc::SIGKILL);
            }
            if Instant::now() >= deadline + ENGINE_STOP_TIMEOUT {
                bail!("engine pid {pid} did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn send_on(
    att: &Attachment,
    seq: &AtomicU32,
    shard: usize,
    cmd: &Command<'_>,
) -> Result<u32, LinkError> {
    let ring = att.producers.get(shard).ok_or(LinkError::NoShard {
        shard,
        shards: att.producers.len(),
    })?;
    let s = seq.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; SLOT_SIZE];
    let n = cmd.encode(s, &mut buf).map_err(LinkError::Encode)?;
    let msg = buf
        .get(..n)
        .ok_or(LinkError::Encode(DecodeError::TooShort))?;
    lock(ring)
        .try_push(msg)
        .map_err(|_| LinkError::RingFull { shard })?;
    if let Some(w) = att.wakes.get(shard) {
        w.notify();
    }
    Ok(s)
}

impl Inner {
    fn attachment(&self) -> Option<Arc<Attachment>> {
        self.att
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Arc::clone)
    }

    fn install(&self, att: Attachment) -> u64 {
        let generation = att.generation;
        self.shards
            .store(att.producers.len() as u64, Ordering::Relaxed);
        self.generation.store(generation, Ordering::Relaxed);
        *write(&self.att) = Some(Arc::new(att));
        generation
    }

    /// Attach to a listening engine, or spawn one and attach to it.
    fn attach_or_spawn(&self) -> anyhow::Result<u64> {
        match try_attach(&self.cfg.socket, &self.events, &self.bad_events) {
            Ok(att) => {
                tracing::info!(
                    "attached to running engine pid {} ({} shards) on {}",
                    att.pid,
                    att.producers.len(),
                    self.cfg.socket.display()
                );
                *lock(&self.child) = None;
                *lock(&self.ready_ports) = None;
                return Ok(self.install(att));
            }
            Err(AttachError::Refused(e)) => {
                return Err(e.context(format!(
                    "an engine is listening on {} but attaching to it failed; stop it or choose \
                     another control socket",
                    self.cfg.socket.display()
                )))
            }
            Err(AttachError::NoEngine(_)) => {}
        }
        let (child, ports) = spawn_engine(&self.cfg)?;
        *lock(&self.child) = Some(child);
        *lock(&self.ready_ports) = Some(ports);
        match try_attach(&self.cfg.socket, &self.events, &self.bad_events) {
            Ok(att) => {
                tracing::info!(
                    "started engine pid {} ({} shards), control socket {}",
                    att.pid,
                    att.producers.len(),
                    self.cfg.socket.display()
                );
                Ok(self.install(att))
            }
            Err(AttachError::NoEngine(e)) => Err(anyhow!(e)),
            Err(AttachError::Refused(e)) => Err(e),
        }
        .with_context(|| {
            format!(
                "the engine {} started but attaching to {} failed (is it the same build as \
                 ils-control?)",
                self.cfg.bin.display(),
                self.cfg.socket.display()
            )
        })
    }

    /// Plausibly our engine: a live pid other than 1 and ours, that is our child or runs a
    /// binary named like `cfg.bin`. The pid comes from shared memory, so it is not trusted
    /// enough to signal without this check.
    fn is_engine_process(&self, pid: u32) -> bool {
        if pid <= 1 || pid == std::process::id() {
            return false;
        }
        if lock(&self.child).as_ref().is_some_and(|c| c.id() == pid) {
            return true;
        }
        let Some(want) = self.cfg.bin.file_name() else {
            return false;
        };
        match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(exe) => exe
                .file_name()
                .map(|n| {
                    n.to_string_lossy()
                        .trim_end_matches(" (deleted)")
                        .to_owned()
                })
                .is_some_and(|n| n.as_str() == want.to_string_lossy()),
            Err(_) => false,
        }
    }

    /// One supervision check: `Some(reason)` when the engine must be restarted.
    fn check(&self, hb: &mut Heartbeat) -> Option<String> {
        let Some(att) = self.attachment() else {
            return Some("no engine attached".into());
        };
        if let Some(child) = lock(&self.child).as_mut() {
            match child.try_wait() {
                Ok(Some(status)) => return Some(format!("engine exited ({status})")),
                Ok(None) => {}
                Err(e) => return Some(format!("engine wait failed: {e}")),
            }
        } else if !pid_alive(att.pid) {
            return Some(format!("engine pid {} is gone", att.pid));
        }
        let header = att.region.header();
        if header.engine_generation() != att.generation {
            return Some("engine generation changed".into());
        }
        let now = Instant::now();
        let stamp = header.heartbeat_ns();
        if hb.generation != att.generation || hb.last != stamp {
            *hb = Heartbeat {
                generation: att.generation,
                last: stamp,
                changed: now,
            };
        } else if now.duration_since(hb.changed) > HEARTBEAT_STALE {
            return Some(format!(
                "engine heartbeat stalled for {:?}",
                now.duration_since(hb.changed)
            ));
        }
        None
    }

    /// Replace a failed engine: kill it if it is still there, attach or spawn a new one.
    fn restart(&self, reason: &str) {
        tracing::warn!("engine failure: {reason}; restarting it");
        let old = write(&self.att).take();
        let old_pid = old.as_ref().map(|a| a.pid);
        let old_generation = old.as_ref().map(|a| a.generation);
        drop(old);
        if let Some(mut c) = lock(&self.child).take() {
            let _ = c.kill();
            let _ = c.wait();
        } else if let Some(pid) = old_pid {
            if pid_alive(pid) && self.is_engine_process(pid) {
                signal(pid, libc::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(1);
                while pid_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        match self.attach_or_spawn() {
            Ok(generation) if Some(generation) == old_generation => {
                // The same engine answered again (hung but not killable by us): no restart
                // happened; the next check retries.
                tracing::error!(
                    "engine pid {old_pid:?} is unhealthy ({reason}) and could not be replaced"
                );
            }
            Ok(generation) => {
                self.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::info!("engine restarted (generation {generation})");
                let _ = self.events.send(LinkEvent::EngineRestarted { generation });
            }
            Err(e) => tracing::error!("engine restart failed (will retry): {e:#}"),
        }
    }
}

struct Heartbeat {
    generation: u64,
    last: u64,
    changed: Instant,
}

fn supervise(weak: Weak<Inner>) {
    let mut hb = Heartbeat {
        generation: 0,
        last: 0,
        changed: Instant::now(),
    };
    loop {
        std::thread::sleep(SUPERVISE_INTERVAL);
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.stop.load(Ordering::Relaxed) || inner.events.is_closed() {
            return;
        }
        if let Some(reason) = inner.check(&mut hb) {
            inner.restart(&reason);
            hb.changed = Instant::now();
        }
    }
}

/// Connect to the attach socket, receive the fds, map and validate the region, take the rings
/// and start the event pump.
fn try_attach(
    socket: &Path,
    events: &mpsc::UnboundedSender<LinkEvent>,
    bad_events: &Arc<AtomicU64>,
) -> Result<Attachment, AttachError> {
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
            AttachError::NoEngine(e)
        }
        _ => AttachError::Refused(anyhow!("connect {}: {e}", socket.display())),
    })?;
    let refused = |e: anyhow::Error| AttachError::Refused(e);
    stream
        .set_read_timeout(Some(ATTACH_TIMEOUT))
        .map_err(|e| refused(e.into()))?;
    let fds = ils_shm::recv_attach_fds(&stream)
        .map_err(|e| refused(anyhow!("receive the engine's attach message: {e}")))?;
    let region = Region::attach(fds.region).map_err(|e| refused(e.into()))?;
    let n = region.n_shards();
    if fds.shard_wake.len() != n {
        return Err(refused(anyhow!(
            "engine sent {} wake fds for {n} shards",
            fds.shard_wake.len()
        )));
    }
    let mut producers = Vec::with_capacity(n);
    let mut consumers = Vec::with_capacity(n);
    for s in 0..n {
        let p = region
            .command_producer(s)
            .ok_or_else(|| refused(anyhow!("command ring {s} already taken")))?;
        let c = region
            .event_consumer(s)
            .ok_or_else(|| refused(anyhow!("event ring {s} already taken")))?;
        producers.push(Mutex::new(p));
        consumers.push(c);
    }
    let wakes: Vec<EventFd> = fds.shard_wake.into_iter().map(EventFd::from_fd).collect();
    let control_wake = EventFd::from_fd(fds.control_wake);
    let pump_wake = control_wake
        .try_clone()
        .map_err(|e| refused(anyhow!("dup control eventfd: {e}")))?;
    let header = region.header();
    let (pid, generation) = (header.engine_pid(), header.engine_generation());
    let pump_stop = Arc::new(AtomicBool::new(false));
    let (stop2, tx, bad) = (
        Arc::clone(&pump_stop),
        events.clone(),
        Arc::clone(bad_events),
    );
    let pump = std::thread::Builder::new()
        .name("ils-engine-events".into())
        .spawn(move || pump_events(consumers, control_wake, stop2, tx, bad))
        .map_err(|e| refused(anyhow!("spawn the event pump: {e}")))?;
    Ok(Attachment {
        region,
        producers,
        wakes,
        pid,
        generation,
        pump_stop,
        pump_wake,
        pump: Mutex::new(Some(pump)),
    })
}

/// The event pump: drain the wake eventfd, then every ring; sleep on the eventfd when idle.
fn pump_events(
    mut consumers: Vec<Consumer>,
    wake: EventFd,
    stop: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<LinkEvent>,
    bad: Arc<AtomicU64>,
) {
    let mut slot = Box::new([0u8; SLOT_SIZE]);
    while !stop.load(Ordering::Relaxed) {
        wake.drain();
        let mut any = false;
        for (shard, c) in consumers.iter_mut().enumerate() {
            while let Some(len) = c.try_pop(&mut slot) {
                any = true;
                let bytes = slot.get(..len).unwrap_or(&slot[..]);
                match Event::decode(bytes) {
                    Ok((seq, _)) => {
                        let ev = OwnedEvent {
                            shard,
                            seq,
                            bytes: bytes.to_vec(),
                        };
                        if tx.send(LinkEvent::Event(ev)).is_err() {
                            return; // nobody listens any more
                        }
                    }
                    Err(_) => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
        if !any {
            let _ = wake.wait(Some(PUMP_IDLE_WAIT));
        }
    }
}

/// The engine's command line for `cfg`.
pub fn engine_args(cfg: &EngineConfig) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = cfg.args_prefix.iter().map(Into::into).collect();
    let mut push = |k: &str, v: std::ffi::OsString| {
        a.push(k.into());
        a.push(v);
    };
    push("--cores", cfg.cores.to_string().into());
    push("--media-ip", cfg.media_ip.to_string().into());
    push("--ports", cfg.ports.to_string().into());
    push("--backend", cfg.backend.clone().into());
    push("--control-socket", cfg.socket.clone().into_os_string());
    push(
        "--consent-timeout",
        cfg.consent_timeout_secs.to_string().into(),
    );
    a.push("--print-ready".into());
    a
}

/// Spawn the engine in its own session and wait for its ready line; returns the child and the
/// shard ports it reports.
fn spawn_engine(cfg: &EngineConfig) -> anyhow::Result<(Child, Vec<u16>)> {
    let bin = &cfg.bin;
    let mut cmd = Proc::new(bin);
    cmd.args(engine_args(cfg))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        anyhow!(
            "cannot start the media engine {}: {e}. Build it with `cargo build --release -p \
             ils-engine` (or point the engine binary setting at an ils-engine executable)",
            bin.display()
        )
    })?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("no stdout pipe to the engine");
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("ils-engine-stdout".into())
        .spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = (&mut r).take(MAX_READY_LINE).read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the engine never blocks on a full pipe; ends at its exit.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        })
        .context("spawn the engine stdout reader")?;
    let deadline = Instant::now() + ENGINE_READY_TIMEOUT;
    let line = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => break line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break String::new(),
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the media engine {} exited during start-up ({status}); its error is printed \
                 above (ports {}..{} in use? see `{} --help`)",
                bin.display(),
                cfg.ports,
                u64::from(cfg.ports) + cfg.cores as u64,
                bin.display()
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the media engine {} did not report ready within {:?}; check its log above, or \
                 start it by hand with --print-ready to see why",
                bin.display(),
                ENGINE_READY_TIMEOUT
            );
        }
    };
    match parse_ready_line(&line) {
        Some(ports) => Ok((child, ports)),
        None => {
            let _ = child.kill();
            let status = child.wait().ok();
            bail!(
                "the media engine {} did not print a ready line (got {:?}, exit {:?}); is it an \
                 ils-engine binary of this build?",
                bin.display(),
                line.trim(),
                status
            )
        }
    }
}

/// Parse the engine's `--print-ready` line: `{"ready":true,"ports":[..],...}` → the ports.
pub fn parse_ready_line(line: &str) -> Option<Vec<u16>> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    if !v.get("ready")?.as_bool()? {
        return None;
    }
    v.get("ports")?
        .as_array()?
        .iter()
        .map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect()
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

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// Whether `pid` is a live process (not gone, not a zombie). Reaps it if it is our zombie
/// child that no `Child` handle waits for.
fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks existence.
    let r = unsafe { libc::kill(p, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // state is the field after the parenthesised command name
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z') | Some('X')),
            None => true,
        },
        Err(_) => r == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        let l =
            r#"{"ready":true,"ports":[40000,40001],"backend":"IoUring","control_socket":"/tmp/x"}"#;
        assert_eq!(parse_ready_line(l), Some(vec![40000, 40001]));
        assert_eq!(
            parse_ready_line(&format!("{l}\n")),
            Some(vec![40000, 40001])
        );
        for bad in [
            "",
            "ready",
            r#"{"ready":false,"ports":[1]}"#,
            r#"{"ready":true}"#,
            r#"{"ready":true,"ports":[70000]}"#,
            r#"{"ready":true,"ports":["a"]}"#,
            r#"{"ready":"yes","ports":[1]}"#,
        ] {
            assert_eq!(parse_ready_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn args_match_engine_flags() {
        let cfg = EngineConfig {
            bin: "/x/ils-engine".into(),
            args_prefix: Vec::new(),
            socket: "/tmp/s.sock".into(),
            cores: 3,
            media_ip: "127.0.0.1".parse().unwrap(),
            ports: 41000,
            backend: "mmsg".into(),
            consent_timeout_secs: 7,
        };
        let a: Vec<String> = engine_args(&cfg)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let with_prefix = EngineConfig {
            args_prefix: vec!["engine".into()],
            ..cfg.clone()
        };
        let b = engine_args(&with_prefix);
        assert_eq!(
            b.first().map(|s| s.to_string_lossy().into_owned()),
            Some("engine".into())
        );
        assert_eq!(b.len(), a.len() + 1);
        assert_eq!(
            a,
            [
                "--cores",
                "3",
                "--media-ip",
                "127.0.0.1",
                "--ports",
                "41000",
                "--backend",
                "mmsg",
                "--control-socket",
                "/tmp/s.sock",
                "--consent-timeout",
                "7",
                "--print-ready"
            ]
        );
    }

    #[test]
    fn pid_checks() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
        let mut c = Proc::new("true").spawn().unwrap();
        c.wait().unwrap();
        // reaped: gone
        assert!(!pid_alive(c.id()));
    }

    proptest::proptest! {
        #[test]
        fn ready_line_never_panics(s in ".{0,200}") {
            let _ = parse_ready_line(&s);
        }
    }
}
