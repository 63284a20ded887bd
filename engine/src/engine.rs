//! Process start-up: create the shared region and eventfds, start one pinned shard per core,
//! and serve the attach socket through which control (re)attaches.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ils_io::{BackendChoice, IoConfig, SendPath};
use ils_shm::{EventFd, Region};

use crate::core::CoreConfig;
use crate::shard::{self, ShardInfo, ShardParams};
use crate::xshard::Mesh;

/// Engine settings (the binary fills them from flags).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of shards (threads).
    pub cores: usize,
    /// Media bind address.
    pub bind_ip: IpAddr,
    /// UDP port of shard 0; shard i listens on `base_port + i` (0 = ephemeral ports).
    pub base_port: u16,
    /// Unix socket where control attaches.
    pub control_socket: PathBuf,
    /// I/O backend.
    pub backend: BackendChoice,
    /// Send path (None = measured default).
    pub send_path: Option<SendPath>,
    /// Use UDP GSO when the kernel supports it.
    pub gso: bool,
    /// Flush between input datagrams once this many copies are queued (0: only at half
    /// full); see `ils_io::IoConfig::early_flush`.
    pub early_flush: usize,
    /// Default consent timeout.
    pub consent_timeout: Duration,
    /// Keyframe request interval towards publishers.
    pub keyframe_interval: Duration,
    /// Pin shard threads to cores.
    pub pin: bool,
    /// Slots per shared-memory ring.
    pub ring_slots: u32,
}

/// A running engine.
pub struct Engine {
    /// Shared region.
    pub region: Region,
    /// Started shards.
    pub shards: Vec<ShardInfo>,
    stop: Arc<AtomicBool>,
    wakes: Vec<EventFd>,
    control_wake: EventFd,
    threads: Vec<std::thread::JoinHandle<()>>,
    listener: UnixListener,
}

/// Errors starting the engine, each with what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Shared memory could not be created.
    #[error("cannot create the shared-memory region: {0}")]
    Shm(#[from] ils_shm::ShmError),
    /// A system resource failed.
    #[error("{0}")]
    Io(String),
    /// A shard could not bind.
    #[error("{0} (is another ils-engine running? pick other ports with --ports)")]
    Bind(String),
}

impl Engine {
    /// Start everything; returns once all shards are bound.
    pub fn start(cfg: &EngineConfig) -> Result<Engine, StartError> {
        let n = cfg.cores.clamp(1, ils_shm::MAX_SHARDS);
        let region = Region::create(n, cfg.ring_slots)?;
        region.header().set_engine_pid(std::process::id());
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        region.header().set_engine_generation(generation);
        let io_err = |e: std::io::Error| StartError::Io(format!("eventfd: {e}"));
        let wakes: Vec<EventFd> = (0..n)
            .map(|_| EventFd::new())
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        let control_wake = EventFd::new().map_err(io_err)?;
        let mesh = Mesh::new(n);
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::new();
        let mut shards = Vec::new();
        for i in 0..n {
            let port = if cfg.base_port == 0 {
                0
            } else {
                cfg.base_port.saturating_add(i as u16)
            };
            let mut io = IoConfig::new(SocketAddr::new(cfg.bind_ip, port));
            io.backend = cfg.backend;
            io.send_path = cfg.send_path;
            io.gso = cfg.gso;
            io.early_flush = cfg.early_flush;
            let clone = |e: &EventFd| e.try_clone().map_err(io_err);
            let params = ShardParams {
                index: i,
                core: CoreConfig {
                    shard: i as u16,
                    shards: n as u16,
                    consent_timeout: cfg.consent_timeout,
                    keyframe_interval: cfg.keyframe_interval,
                },
                io,
                cpu: if cfg.pin && !cpus.is_empty() {
                    Some(cpus[i % cpus.len()])
                } else {
                    None
                },
                region: region.clone(),
                wake: clone(&wakes[i])?,
                peers: wakes.iter().map(clone).collect::<Result<_, _>>()?,
                control_wake: clone(&control_wake)?,
                mesh: Arc::clone(&mesh),
                stop: Arc::clone(&stop),
            };
            let (rtx, rrx) = std::sync::mpsc::channel();
            let th = std::thread::Builder::new()
                .name(format!("ils-shard-{i}"))
                .spawn(move || shard::run(params, rtx))
                .map_err(|e| StartError::Io(format!("spawn shard thread: {e}")))?;
            threads.push(th);
            match rrx.recv() {
                Ok(Ok(info)) => shards.push(info),
                Ok(Err(e)) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(StartError::Bind(e));
                }
                Err(_) => return Err(StartError::Io(format!("shard {i} exited during start-up"))),
            }
        }
        let _ = std::fs::remove_file(&cfg.control_socket);
        let listener = UnixListener::bind(&cfg.control_socket).map_err(|e| {
            StartError::Io(format!(
                "cannot listen on control socket {}: {e} (choose another path with --control-socket)",
                cfg.control_socket.display()
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| StartError::Io(format!("control socket: {e}")))?;
        Ok(Engine {
            region,
            shards,
            stop,
            wakes,
            control_wake,
            threads,
            listener,
        })
    }

    /// Serve control attach requests until `stop_flag` is set, then stop the shards.
    pub fn serve(self, stop_flag: &AtomicBool) {
        while !stop_flag.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let mut fds = vec![self.region.fd()];
                    fds.extend(self.wakes.iter().map(|w| w.as_fd()));
                    fds.push(self.control_wake.as_fd());
                    match ils_shm::send_attach_fds(&stream, &fds) {
                        Ok(()) => tracing::info!("control attached"),
                        Err(e) => tracing::warn!("control attach failed: {e}"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!("control socket accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        self.shutdown();
    }

    /// Stop all shards and wait for them.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakes {
            w.notify();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
