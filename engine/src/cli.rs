//! The `ils-engine` command line, shared by the `ils-engine` binary and `ils-control engine`
//! (control runs the engine as a separate process of its own binary, so one `cargo run` builds
//! everything).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::engine::{Engine, EngineConfig};
use clap::{Parser, ValueEnum};
use ils_io::{BackendChoice, SendPath};

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Backend {
    /// io_uring if the kernel allows it, else recvmmsg/sendmmsg (with a warning)
    Auto,
    /// io_uring (falls back with a warning if refused)
    IoUring,
    /// recvmmsg/sendmmsg
    Mmsg,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Send {
    /// sendmmsg (measured fastest on loopback; see docs/performance.md)
    Sendmmsg,
    /// io_uring SendMsg
    Uring,
}

/// ils media engine: thread-per-core SRTP forwarding, driven by a control process over shared memory.
#[derive(Parser, Debug)]
#[command(name = "ils-engine", version, about, long_about = None)]
pub struct Args {
    /// Number of shards (one pinned thread and one UDP port each). Default (or 0): all cores.
    #[arg(long, env = "ILS_CORES")]
    cores: Option<usize>,
    /// IP address media sockets bind to.
    #[arg(long, default_value = "127.0.0.1", env = "ILS_MEDIA_IP")]
    media_ip: IpAddr,
    /// UDP port of shard 0; shard i uses PORT+i. 0 = ephemeral ports.
    #[arg(long, default_value_t = 40000, env = "ILS_PORTS")]
    ports: u16,
    /// Unix socket on which control attaches (receives the shared-memory region and eventfds).
    #[arg(
        long,
        default_value = "/tmp/ils-engine.sock",
        env = "ILS_CONTROL_SOCKET"
    )]
    control_socket: PathBuf,
    /// I/O backend.
    #[arg(long, value_enum, default_value = "auto", env = "ILS_BACKEND")]
    backend: Backend,
    /// Send path.
    #[arg(long, value_enum, env = "ILS_SEND_PATH")]
    send_path: Option<Send>,
    /// Disable UDP GSO bursts.
    #[arg(long)]
    no_gso: bool,
    /// Flush queued copies between two input datagrams once this many are queued (lower p99
    /// latency under input bursts); 0 = only when the send batch is half full (more GSO
    /// merging across inputs).
    #[arg(long, default_value_t = ils_io::EARLY_FLUSH_DATAGRAMS, env = "ILS_EARLY_FLUSH")]
    early_flush: usize,
    /// Seconds without a valid ICE consent check before a transport is reported dead.
    #[arg(long, default_value_t = 30, env = "ILS_CONSENT_TIMEOUT")]
    consent_timeout: u64,
    /// Milliseconds between keyframe requests to one publisher stream (PLI coalescing).
    #[arg(long, default_value_t = 1000)]
    keyframe_interval_ms: u64,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Slots per shared-memory ring (power of two).
    #[arg(long, default_value_t = ils_shm::DEFAULT_RING_SLOTS)]
    ring_slots: u32,
    /// Print the bound ports as JSON on stdout once started (for supervisors and tests).
    #[arg(long)]
    print_ready: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Parse `args` (including the program name) and run the engine until SIGINT/SIGTERM.
pub fn run<I, T>(args: I)
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::parse_from(args);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ILS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // SAFETY: installing an async-signal-safe handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        // Keep running when control (our parent) dies and its pipes close.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // 0 (or no flag) = one shard per available core
    let cores = args.cores.filter(|&n| n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let cfg = EngineConfig {
        cores,
        bind_ip: args.media_ip,
        base_port: args.ports,
        control_socket: args.control_socket.clone(),
        backend: match args.backend {
            Backend::Auto => BackendChoice::Auto,
            Backend::IoUring => BackendChoice::IoUring,
            Backend::Mmsg => BackendChoice::Mmsg,
        },
        send_path: args.send_path.map(|s| match s {
            Send::Sendmmsg => SendPath::Sendmmsg,
            Send::Uring => SendPath::UringSendMsg,
        }),
        gso: !args.no_gso,
        early_flush: args.early_flush,
        consent_timeout: Duration::from_secs(args.consent_timeout.max(1)),
        keyframe_interval: Duration::from_millis(args.keyframe_interval_ms.max(10)),
        pin: !args.no_pin,
        ring_slots: args.ring_slots,
    };
    let engine = match Engine::start(&cfg) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ils-engine: {e}");
            std::process::exit(1);
        }
    };
    for (i, s) in engine.shards.iter().enumerate() {
        for d in &s.degraded {
            tracing::warn!(shard = i, "degraded I/O: {d:?}");
        }
    }
    let ports: Vec<String> = engine
        .shards
        .iter()
        .map(|s| s.addr.port().to_string())
        .collect();
    let backend = engine
        .shards
        .first()
        .map(|s| format!("{:?}", s.backend))
        .unwrap_or_default();
    if args.print_ready {
        println!(
            "{{\"ready\":true,\"ports\":[{}],\"backend\":\"{}\",\"control_socket\":\"{}\"}}",
            ports.join(","),
            backend,
            args.control_socket.display()
        );
    }
    tracing::info!(
        "ils-engine: {} shards on {} ports [{}] ({backend}); control socket {}",
        engine.shards.len(),
        args.media_ip,
        ports.join(", "),
        args.control_socket.display()
    );
    engine.serve(&STOP);
}
