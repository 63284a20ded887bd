//! `EngineLink` against the real `ils-engine` binary: spawn + command/event round trip,
//! restart after `kill -9`, and a second link attaching to a running engine.
//!
//! The engine binary must be built first (`cargo build -p ils-engine`, done by
//! `tools/test.sh`); `ILS_ENGINE_BIN` overrides where it is looked for.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ils_control::engine_link::{EngineConfig, EngineLink, LinkEvent, OwnedEvent};
use ils_shm::{Command, Event};
use tokio::sync::mpsc::UnboundedReceiver;

const SHARDS: usize = 2;

/// `ILS_ENGINE_BIN`, else `<target>/{debug,release}/ils-engine`, whichever is newer.
fn engine_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ILS_ENGINE_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let c = [
        target.join("debug/ils-engine"),
        target.join("release/ils-engine"),
    ];
    let newest = c
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max_by_key(|(m, _)| *m)
        .map(|(_, p)| p);
    let p = newest.unwrap_or_else(|| c[0].clone());
    assert!(
        p.exists(),
        "{} not found: build it first with `cargo build -p ils-engine`",
        p.display()
    );
    p
}

/// `n` consecutive loopback UDP ports that are free right now.
fn free_ports(n: u16) -> u16 {
    for _ in 0..500 {
        let base = 20000 + rand::random::<u16>() % 30000;
        let held: Vec<_> = (0..n)
            .map_while(|i| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, base + i)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no free UDP port range");
}

fn config(tag: &str) -> EngineConfig {
    EngineConfig {
        bin: engine_bin(),
        args_prefix: Vec::new(),
        socket: std::env::temp_dir().join(format!(
            "ils-link-{tag}-{}-{}.sock",
            std::process::id(),
            rand::random::<u32>()
        )),
        cores: SHARDS,
        media_ip: "127.0.0.1".parse().unwrap(),
        ports: free_ports(SHARDS as u16),
        backend: "auto".into(),
        consent_timeout_secs: 30,
    }
}

/// Stops the engine when the test ends, pass or fail (it runs in its own session).
struct StopOnDrop(EngineLink);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.stop_engine();
    }
}

async fn next_event(rx: &mut UnboundedReceiver<LinkEvent>, deadline: Instant) -> Option<LinkEvent> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, rx.recv()).await.ok().flatten()
}

/// Send DumpState to every shard; collect the State* events until every shard said DumpDone.
async fn dump(link: &EngineLink, rx: &mut UnboundedReceiver<LinkEvent>) -> Vec<OwnedEvent> {
    link.broadcast(&Command::DumpState).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut done = vec![false; link.shards()];
    let mut state = Vec::new();
    while !done.iter().all(|d| *d) {
        match next_event(rx, deadline).await {
            Some(LinkEvent::Event(e)) => match e.event() {
                Some(Event::DumpDone { shard }) => {
                    assert_eq!(shard as usize, e.shard, "DumpDone names its own ring");
                    done[e.shard] = true;
                }
                Some(Event::StateTransport { .. } | Event::StateTrack(_) | Event::StateLeg(_)) => {
                    state.push(e)
                }
                _ => {}
            },
            Some(LinkEvent::EngineRestarted { .. }) => panic!("unexpected engine restart"),
            None => panic!("no DumpDone from every shard within 5 s: {done:?}"),
        }
    }
    state
}

fn transports(state: &[OwnedEvent]) -> Vec<(usize, u32, Vec<u8>)> {
    state
        .iter()
        .filter_map(|e| match e.event()? {
            Event::StateTransport {
                transport, ufrag, ..
            } => Some((e.shard, transport, ufrag.to_vec())),
            _ => None,
        })
        .collect()
}

fn add_transport(link: &EngineLink, shard: usize, transport: u32, ufrag: &str) -> u32 {
    link.send(
        shard,
        &Command::AddTransport {
            transport,
            ufrag: ufrag.as_bytes(),
            pwd: b"0123456789abcdefghijklmn",
            consent_timeout_ms: 0,
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_send_and_receive_dump() {
    let cfg = config("dump");
    let (link, mut rx) = EngineLink::start(cfg.clone()).await.unwrap();
    let _stop = StopOnDrop(link.clone());
    assert_eq!(link.shards(), SHARDS);
    assert_eq!(link.port(1), cfg.ports + 1);
    assert!(link.generation() != 0);
    let seq = add_transport(&link, 1, 42, "ufragA");
    assert!(seq > 0);
    let state = dump(&link, &mut rx).await;
    assert_eq!(transports(&state), vec![(1, 42, b"ufragA".to_vec())]);
    // the engine is alive and stamping its heartbeat
    let t = Instant::now();
    let mut age = link.heartbeat_age();
    while age.is_none_or(|a| a >= Duration::from_millis(500)) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "heartbeat age {age:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        age = link.heartbeat_age();
    }
    assert_eq!(link.counters().len(), ils_shm::Counter::ALL.len());
    // bad shard / bad command are typed errors, nothing sent
    assert!(link.send(SHARDS, &Command::DumpState).is_err());
    let long = [b'u'; 40];
    assert!(link
        .send(
            0,
            &Command::AddTransport {
                transport: 1,
                ufrag: &long,
                pwd: b"p",
                consent_timeout_ms: 0
            }
        )
        .is_err());
    assert_eq!(link.bad_events(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_restarts_engine_with_empty_tables() {
    let (link, mut rx) = EngineLink::start(config("kill")).await.unwrap();
    let _stop = StopOnDrop(link.clone());
    add_transport(&link, 0, 7, "ufragK");
    assert_eq!(transports(&dump(&link, &mut rx).await).len(), 1);
    let (old_pid, old_gen) = (link.engine_pid().unwrap(), link.generation());
    // SAFETY: signalling the engine process the link spawned.
    assert_eq!(unsafe { libc::kill(old_pid as i32, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(2);
    let generation = loop {
        match next_event(&mut rx, deadline).await {
            Some(LinkEvent::EngineRestarted { generation }) => break generation,
            Some(LinkEvent::Event(_)) => continue,
            None => panic!("no EngineRestarted within 2 s of kill -9"),
        }
    };
    eprintln!("engine restarted {:?} after kill -9", killed.elapsed());
    assert_ne!(generation, old_gen);
    assert_eq!(link.generation(), generation);
    assert_ne!(link.engine_pid(), Some(old_pid));
    assert_eq!(link.restarts(), 1);
    let state = dump(&link, &mut rx).await;
    assert!(
        transports(&state).is_empty(),
        "new engine has no transports"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_link_attaches_to_running_engine() {
    let cfg = config("attach");
    let (first, mut rx1) = EngineLink::start(cfg.clone()).await.unwrap();
    let _stop_first = StopOnDrop(first.clone());
    add_transport(&first, 1, 99, "ufragR");
    assert_eq!(transports(&dump(&first, &mut rx1).await).len(), 1);
    let pid = first.engine_pid().unwrap();
    let generation = first.generation();
    // control "restarts": the first link lets go of the rings, the engine keeps running
    first.detach();
    drop(rx1);
    let (second, mut rx2) = EngineLink::start(cfg).await.unwrap();
    let _stop_second = StopOnDrop(second.clone());
    assert_eq!(second.engine_pid(), Some(pid), "attached, no second engine");
    assert_eq!(second.generation(), generation);
    assert_eq!(second.shards(), SHARDS);
    let state = dump(&second, &mut rx2).await;
    assert_eq!(transports(&state), vec![(1, 99, b"ufragR".to_vec())]);
    // the supervisor of the second link does not mistake the attached engine for a dead one
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(second.engine_pid(), Some(pid));
    assert_eq!(second.restarts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_engine_fills_ring_then_is_replaced() {
    let (link, mut rx) = EngineLink::start(config("hung")).await.unwrap();
    let _stop = StopOnDrop(link.clone());
    let (old_pid, old_gen) = (link.engine_pid().unwrap(), link.generation());
    // SAFETY: signalling the engine process the link spawned. SIGSTOP = hung engine.
    assert_eq!(unsafe { libc::kill(old_pid as i32, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    // kill() returns before the stop takes effect: wait until the process state is 'T'
    while !std::fs::read_to_string(format!("/proc/{old_pid}/stat")).is_ok_and(|st| {
        st.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
    }) {
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "engine did not stop"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // nobody drains the command ring: pushes fail fast with RingFull, never block
    let mut full = None;
    for i in 0..(ils_shm::DEFAULT_RING_SLOTS as usize + 8) {
        if let Err(e) = link.send(0, &Command::DumpState) {
            full = Some((i, e));
            break;
        }
    }
    let (sent, err) = full.expect("ring never filled");
    assert!(
        matches!(
            err,
            ils_control::engine_link::LinkError::RingFull { shard: 0 }
        ),
        "{err:?}"
    );
    assert!(sent <= ils_shm::DEFAULT_RING_SLOTS as usize);
    assert!(
        stopped.elapsed() < Duration::from_millis(500),
        "send blocked"
    );
    // the heartbeat stalls: the supervisor kills the hung engine and starts a new one
    let deadline = stopped + Duration::from_secs(3);
    let generation = loop {
        match next_event(&mut rx, deadline).await {
            Some(LinkEvent::EngineRestarted { generation }) => break generation,
            Some(LinkEvent::Event(_)) => continue,
            None => panic!("hung engine not replaced within 3 s"),
        }
    };
    eprintln!("hung engine replaced after {:?}", stopped.elapsed());
    assert_ne!(generation, old_gen);
    assert_ne!(link.engine_pid(), Some(old_pid));
    assert!(transports(&dump(&link, &mut rx).await).is_empty());
}
