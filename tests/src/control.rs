//! A minimal control plane for tests: starts the real `ils-engine` process, attaches to its
//! shared-memory region over the control socket, sends commands, dispatches events, and runs
//! control's DTLS server ([`ils_control::dtls::WebrtcDtls`] through the `DtlsDriver` trait, the
//! same path ils-control uses) per transport over the `DtlsIn` / `SendDatagram` relay.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use ils_shm::{Command, Event, EventFd, Producer, Region, SLOT_SIZE};
use tokio::sync::mpsc;

use ils_control::dtls::{DtlsDriver as _, WebrtcDtls};

use crate::dtls::{DtlsOutcome, CHANNEL_CAPACITY};
use crate::proc::{workspace_bin, ChildGuard};

/// How long `EngineProc::start` waits for the engine's ready line.
pub const ENGINE_START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `ils-engine` child process.
pub struct EngineProc {
    /// The child (killed on drop).
    pub child: ChildGuard,
    /// UDP port of each shard.
    pub ports: Vec<u16>,
    /// Backend the engine reports.
    pub backend: String,
    /// Control socket path.
    pub socket: PathBuf,
}

impl EngineProc {
    /// Start `ils-engine --cores N --backend B` on ephemeral loopback ports.
    pub fn start(cores: usize, backend: &str, extra: &[&str]) -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = std::env::temp_dir().join(format!(
            "ils-test-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let bin = workspace_bin("ils-engine");
        let mut cmd = Proc::new(&bin);
        cmd.args([
            "--cores",
            &cores.to_string(),
            "--ports",
            "0",
            "--backend",
            backend,
        ])
        .args(["--no-pin", "--print-ready", "--control-socket"])
        .arg(&socket)
        .args(extra)
        .env("ILS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = ChildGuard::spawn(&mut cmd)
            .with_context(|| format!("spawn {} (build it with cargo build)", bin.display()))?;
        let stdout = child
            .child_mut()
            .and_then(|c| c.stdout.take())
            .ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(ENGINE_START_TIMEOUT)
            .context("engine did not print its ready line")?;
        let ports = json_array(&line, "ports").ok_or_else(|| anyhow!("bad ready line: {line}"))?;
        let backend = json_str(&line, "backend").unwrap_or_default();
        Ok(EngineProc {
            child,
            ports,
            backend,
            socket,
        })
    }

    /// The media address of shard `i`.
    pub fn addr(&self, shard: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.ports[shard])
    }
}

fn json_array(line: &str, key: &str) -> Option<Vec<u16>> {
    let start = line.find(&format!("\"{key}\":["))? + key.len() + 4;
    let end = start + line[start..].find(']')?;
    line[start..end]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().ok())
        .collect()
}

fn json_str(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = start + line[start..].find('"')?;
    Some(line[start..end].to_string())
}

/// An event copied out of the ring, for assertions.
#[derive(Debug, Clone)]
pub struct OwnedEvent {
    /// Shard that emitted it.
    pub shard: usize,
    /// Sequence number field.
    pub seq: u32,
    /// Encoded bytes (decode with `Event::decode`).
    pub bytes: Vec<u8>,
}

impl OwnedEvent {
    /// Decode.
    pub fn event(&self) -> Option<Event<'_>> {
        Event::decode(&self.bytes).ok().map(|(_, e)| e)
    }
}

struct Shared {
    dtls: Mutex<HashMap<u32, mpsc::Sender<Vec<u8>>>>,
    log: Mutex<Vec<OwnedEvent>>,
    stop: AtomicBool,
}

/// The attached test control.
pub struct TestControl {
    /// The region (also gives counters).
    pub region: Region,
    producers: Mutex<Vec<Producer>>,
    wakes: Vec<EventFd>,
    shared: Arc<Shared>,
    seq: AtomicU32,
    pump: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl TestControl {
    /// Attach to the engine's control socket.
    pub fn attach(socket: &std::path::Path) -> anyhow::Result<Arc<Self>> {
        let stream = UnixStream::connect(socket).context("connect control socket")?;
        let fds = ils_shm::recv_attach_fds(&stream)?;
        let region = Region::attach(fds.region)?;
        let n = region.n_shards();
        let mut producers = Vec::new();
        let mut consumers = Vec::new();
        for s in 0..n {
            producers.push(
                region
                    .command_producer(s)
                    .ok_or_else(|| anyhow!("command ring {s} taken"))?,
            );
            consumers.push(
                region
                    .event_consumer(s)
                    .ok_or_else(|| anyhow!("event ring {s} taken"))?,
            );
        }
        let wakes: Vec<EventFd> = fds.shard_wake.into_iter().map(EventFd::from_fd).collect();
        let control_wake = EventFd::from_fd(fds.control_wake);
        let shared = Arc::new(Shared {
            dtls: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let sh = Arc::clone(&shared);
        let pump = std::thread::spawn(move || {
            let mut slot = Box::new([0u8; SLOT_SIZE]);
            while !sh.stop.load(Ordering::Relaxed) {
                let mut any = false;
                for (shard, c) in consumers.iter_mut().enumerate() {
                    while let Some(len) = c.try_pop(&mut slot) {
                        any = true;
                        let bytes = slot[..len.min(SLOT_SIZE)].to_vec();
                        let Ok((seq, ev)) = Event::decode(&bytes) else {
                            continue;
                        };
                        if let Event::DtlsIn { transport, data } = ev {
                            let tx = sh.dtls.lock().ok().and_then(|m| m.get(&transport).cloned());
                            if let Some(tx) = tx {
                                let _ = tx.try_send(data.to_vec());
                            }
                        }
                        if let Ok(mut log) = sh.log.lock() {
                            log.push(OwnedEvent { shard, seq, bytes });
                        }
                    }
                }
                if !any {
                    let _ = control_wake.wait(Some(Duration::from_millis(5)));
                }
            }
        });
        Ok(Arc::new(TestControl {
            region,
            producers: Mutex::new(producers),
            wakes,
            shared,
            seq: AtomicU32::new(1),
            pump: Mutex::new(Some(pump)),
        }))
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.region.n_shards()
    }

    /// Send a command to a shard; returns its sequence number. Retries briefly when the ring is full.
    pub fn send(&self, shard: usize, cmd: &Command<'_>) -> anyhow::Result<u32> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut buf = vec![0u8; SLOT_SIZE];
        let n = cmd
            .encode(seq, &mut buf)
            .map_err(|e| anyhow!("encode: {e:?}"))?;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let pushed = {
                let mut p = self.producers.lock().map_err(|_| anyhow!("poisoned"))?;
                let ring = p
                    .get_mut(shard)
                    .ok_or_else(|| anyhow!("no shard {shard}"))?;
                ring.try_push(&buf[..n]).is_ok()
            };
            if pushed {
                break;
            }
            if Instant::now() > deadline {
                bail!("command ring of shard {shard} full for 2 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(w) = self.wakes.get(shard) {
            w.notify();
        }
        Ok(seq)
    }

    /// Send a command to every shard.
    pub fn broadcast(&self, cmd: &Command<'_>) -> anyhow::Result<()> {
        for s in 0..self.shards() {
            self.send(s, cmd)?;
        }
        Ok(())
    }

    /// Events seen so far (all shards).
    pub fn events(&self) -> Vec<OwnedEvent> {
        self.shared
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Wait until `pred` holds for some event, or time out.
    pub fn wait_event(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Event<'_>) -> bool,
    ) -> anyhow::Result<OwnedEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(log) = self.shared.log.lock() {
                if let Some(e) = log.iter().find(|e| e.event().is_some_and(|ev| pred(&ev))) {
                    return Ok(e.clone());
                }
            }
            if Instant::now() > deadline {
                bail!("event not seen within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sum of one counter over all shards.
    pub fn counter(&self, c: ils_shm::Counter) -> u64 {
        (0..self.shards())
            .filter_map(|s| self.region.counters(s))
            .map(|b| b.get(c))
            .sum()
    }

    /// Every non-zero counter, summed over shards ("name=value ..."), for failure messages.
    pub fn counters_text(&self) -> String {
        ils_shm::Counter::ALL
            .iter()
            .map(|&c| (c.name(), self.counter(c)))
            .filter(|(_, v)| *v != 0)
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Register a transport and run the DTLS server for it in the background. The returned
    /// task resolves to the outcome once the peer has connected; keys are installed by
    /// [`TestControl::install_keys`].
    pub fn add_transport(
        self: &Arc<Self>,
        shard: usize,
        transport: u32,
        ufrag: &str,
        pwd: &str,
        cert: &webrtc_dtls::crypto::Certificate,
        peer_fingerprint: String,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<DtlsOutcome>>> {
        self.send(
            shard,
            &Command::AddTransport {
                transport,
                ufrag: ufrag.as_bytes(),
                pwd: pwd.as_bytes(),
                consent_timeout_ms: 0,
            },
        )?;
        let (inbound_tx, inbound_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (outbound_tx, mut outbound_rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CAPACITY);
        self.shared
            .dtls
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(transport, inbound_tx);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(d) = outbound_rx.recv().await {
                let _ = me.send(
                    shard,
                    &Command::SendDatagram {
                        transport,
                        data: &d,
                    },
                );
            }
        });
        let driver = WebrtcDtls::from_certificate(cert.clone());
        Ok(tokio::spawn(async move {
            let keys = driver
                .accept(inbound_rx, outbound_tx, peer_fingerprint.clone())
                .await?;
            Ok(DtlsOutcome::from_keys(keys, peer_fingerprint))
        }))
    }

    /// Install the SRTP keys from a finished handshake (we are the DTLS server).
    pub fn install_keys(
        &self,
        shard: usize,
        transport: u32,
        o: &DtlsOutcome,
    ) -> anyhow::Result<()> {
        self.send(
            shard,
            &Command::InstallSrtp {
                transport,
                profile: o.profile_id,
                rx_key: &o.client_key,
                rx_salt: &o.client_salt,
                tx_key: &o.server_key,
                tx_salt: &o.server_salt,
            },
        )?;
        Ok(())
    }
}

impl TestControl {
    /// Stop reading events and sending DTLS (as if this control process died). The engine
    /// is not told; a new [`TestControl::attach`] takes over the rings where this one stopped.
    pub fn detach(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.pump.lock().ok().and_then(|mut p| p.take()) {
            let _ = p.join();
        }
        if let Ok(mut d) = self.shared.dtls.lock() {
            d.clear();
        }
    }
}

impl Drop for TestControl {
    fn drop(&mut self) {
        self.detach();
    }
}
