//! Fan-out send benchmark on loopback.
//!
//! One sender thread (an `Io`) sends 1200 B datagrams to K receiver sockets, which another
//! thread drains. Each flush models one input batch of `BATCH` packets forwarded to all K
//! subscribers (BATCH × K datagrams, reserved packet-major so GSO bursts form per
//! subscriber). Prints sent packets/s and sender CPU µs per packet for every case.
//!
//! `cargo run --release -p ils-io --example fanout -- [secs_per_case] [rounds]`

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ils_io::*;

const LEN: usize = 1200;
const BATCH: usize = 32;

fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Case {
    name: &'static str,
    backend: BackendChoice,
    path: SendPath,
    gso: bool,
}

/// CPU time (utime + stime) of all `ksoftirqd/N` kernel threads: loopback receive work the
/// kernel defers there is not charged to the sending thread.
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
            if !is_ksoft {
                continue;
            }
            if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
                // Fields after the ")" : state is field 3; utime/stime are fields 14/15.
                if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    ticks += get(11) + get(12);
                }
            }
        }
    }
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Threads of this process that are io_uring async workers (work punted off the sender).
fn iou_workers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .map(|c| c.starts_with("iou-wrk"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

struct Outcome {
    softirq_us: f64,
    workers: usize,
    pps: f64,
    cpu_us: f64,
    dropped: usize,
    kind: BackendKind,
    gso: bool,
}

fn run_case(c: &Case, dests: &[SocketAddr], secs: f64) -> Outcome {
    // SAFETY: plain eventfd creation.
    let ev = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    let mut cfg = IoConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.backend = c.backend;
    cfg.send_path = Some(c.path);
    cfg.gso = c.gso;
    let mut io = Io::open(&cfg, ev).expect("open");
    let mut tx = TxBatch::new(DEFAULT_TX_ARENA_BYTES, DEFAULT_TX_MAX_DATAGRAMS);
    tx.set_gso(io.gso());
    let mut sent = 0usize;
    let mut dropped = 0usize;
    let cpu0 = thread_cpu();
    let soft0 = ksoftirqd_cpu();
    let t0 = Instant::now();
    let dur = Duration::from_secs_f64(secs);
    let mut seq = 0u32;
    while t0.elapsed() < dur {
        for _ in 0..BATCH {
            seq = seq.wrapping_add(1);
            for d in dests {
                let b = tx.reserve(*d, LEN).expect("capacity");
                b[..4].copy_from_slice(&seq.to_be_bytes());
            }
        }
        let st = io.flush(&mut tx);
        sent += st.segments;
        dropped += st.dropped;
        // Keep the ring's wake read serviced like a shard would.
        let _ = io.poll(Some(Duration::ZERO), &mut |_, _| {});
    }
    let el = t0.elapsed().as_secs_f64();
    let workers = iou_workers();
    let cpu = (thread_cpu() - cpu0).as_secs_f64();
    let soft = ksoftirqd_cpu().saturating_sub(soft0).as_secs_f64();
    // SAFETY: we own ev.
    unsafe { libc::close(ev) };
    Outcome {
        softirq_us: soft * 1e6 / sent.max(1) as f64,
        workers,
        pps: sent as f64 / el,
        cpu_us: cpu * 1e6 / sent.max(1) as f64,
        dropped,
        kind: io.kind(),
        gso: io.gso(),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let cases = [
        Case {
            name: "Mmsg + sendmmsg, no GSO",
            backend: BackendChoice::Mmsg,
            path: SendPath::Sendmmsg,
            gso: false,
        },
        Case {
            name: "Mmsg + sendmmsg + GSO",
            backend: BackendChoice::Mmsg,
            path: SendPath::Sendmmsg,
            gso: true,
        },
        Case {
            name: "IoUring + UringSendMsg, no GSO",
            backend: BackendChoice::IoUring,
            path: SendPath::UringSendMsg,
            gso: false,
        },
        Case {
            name: "IoUring + UringSendMsg + GSO",
            backend: BackendChoice::IoUring,
            path: SendPath::UringSendMsg,
            gso: true,
        },
        Case {
            name: "IoUring + sendmmsg, no GSO",
            backend: BackendChoice::IoUring,
            path: SendPath::Sendmmsg,
            gso: false,
        },
        Case {
            name: "IoUring + sendmmsg + GSO",
            backend: BackendChoice::IoUring,
            path: SendPath::Sendmmsg,
            gso: true,
        },
    ];
    println!(
        "1200 B datagrams, {BATCH} packets x K per flush, {secs} s per case, {rounds} round(s)"
    );
    println!(
        "{:>4}  {:<32} {:>12} {:>10} {:>9}  backend",
        "K", "case", "sent pps", "cpu us/pkt", "dropped"
    );
    for k in [10usize, 100] {
        let rx: Vec<UdpSocket> = (0..k)
            .map(|_| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                    .unwrap();
                let _ = s.set_recv_buffer_size(4 << 20);
                s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                    .unwrap();
                s.set_nonblocking(true).unwrap();
                s.into()
            })
            .collect();
        let dests: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().unwrap()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let drain = {
            let stop = stop.clone();
            let received = received.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let mut any = false;
                    for s in &rx {
                        while s.recv(&mut buf).is_ok() {
                            received.fetch_add(1, Ordering::Relaxed);
                            any = true;
                        }
                    }
                    if !any {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        };
        let mut pps: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut soft: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        for _ in 0..rounds {
            for (i, c) in cases.iter().enumerate() {
                let o = run_case(c, &dests, secs);
                pps[i].push(o.pps);
                cpu[i].push(o.cpu_us);
                soft[i].push(o.softirq_us);
                println!(
                    "{k:>4}  {:<32} {:>12.0} {:>10.2} {:>9.2} {:>9}  {:?}{}{}",
                    c.name,
                    o.pps,
                    o.cpu_us,
                    o.softirq_us,
                    o.dropped,
                    o.kind,
                    if c.gso && !o.gso { " (GSO off)" } else { "" },
                    if o.workers > 0 {
                        format!(" [{} iou-wrk threads]", o.workers)
                    } else {
                        String::new()
                    }
                );
            }
        }
        if rounds > 1 {
            let med = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            for (i, c) in cases.iter().enumerate() {
                println!(
                    "{k:>4}  {:<32} {:>12.0} {:>10.2} {:>9.2}  median of {rounds}",
                    c.name,
                    med(&mut pps[i]),
                    med(&mut cpu[i]),
                    med(&mut soft[i])
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        drain.join().unwrap();
        println!(
            "      (drain thread received {} datagrams)",
            received.load(Ordering::Relaxed)
        );
    }
}
