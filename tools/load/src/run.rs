//! Scenarios: publishers join, viewers join at `--join-rate`, a steady window of `--duration`
//! seconds is measured (packet rates, server CPU from /proc), then publishers stop, the
//! pipeline drains and the I/O thread reports loss, order and the latency histogram.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::http::{self, BaseUrl};
use crate::io::{self, Ctrl, IoConfig, IoTotals, Live};
use crate::proc;
use crate::setup::{self, Role, Target};

/// Drain time between stopping publishers and stopping the I/O thread. Default 500 ms: packets
/// in flight are delivered, so the tail of the run is not counted as loss.
pub const DRAIN: Duration = Duration::from_millis(500);
/// Concurrent DELETEs at the end of a run. Default 32.
pub const DELETE_CONCURRENCY: usize = 32;
/// Most viewers one run accepts. Default 100,000; bounds the preallocation.
pub const MAX_VIEWERS: usize = 100_000;
/// Most publishers (stage hosts). Default 25 (ils-control's per-room limit).
pub const MAX_HOSTS: usize = 25;

/// Which server API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum TargetKind {
    /// ils-control: tokens from --secret, --token or its dev endpoint.
    Ils,
    /// Any WHIP/WHEP server: tokens only from flags.
    WhipWhep,
    /// Janus 1.1 videoroom through its HTTP API (URL `http://HOST:PORT/janus`).
    Janus,
}

/// Named scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Scenario {
    /// 1 audio publisher → N audio viewers.
    Audio,
    /// 1 host with audio + 3-layer VP8 simulcast → N audio+video viewers.
    Ils,
    /// K hosts (audio+video) → N viewers (each viewer receives the room's current publisher).
    Stage,
    /// N viewers + 1 producer + 1 host in one ILS session over `/ws`: reactions, chat and a
    /// poll at a realistic rate; measures event fan-out and control CPU ([`crate::ws`]).
    Audience,
    /// K participants (`--hosts`) all-to-all over `/ws`: each publishes audio + simulcast
    /// video, goes on stage, and receives the others through K-1 video + min(K-1, 8) audio
    /// slots ([`crate::ws::conference_join`]).
    Conference,
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Server API kind.
    pub target: TargetKind,
    /// Base URL.
    pub url: String,
    /// Room name.
    pub room: String,
    /// Scenario.
    pub scenario: Scenario,
    /// Viewers.
    pub viewers: usize,
    /// Hosts for `stage`.
    pub hosts: usize,
    /// Viewer joins per second.
    pub join_rate: f64,
    /// Steady-state measurement window.
    pub duration: Duration,
    /// Publisher keyframe interval.
    pub keyframe_interval: Duration,
    /// Viewer transport-cc feedback interval (None: off).
    pub twcc_interval: Option<Duration>,
    /// Core for the I/O thread.
    pub load_core: Option<usize>,
    /// Control process id (CPU from /proc).
    pub control_pid: Option<u32>,
    /// Engine process id (default: control's child running `engine`).
    pub engine_pid: Option<u32>,
    /// Token secret (ils target): tokens are minted locally.
    pub secret: Option<String>,
    /// Token for both roles.
    pub token: Option<String>,
    /// Publishing token.
    pub publish_token: Option<String>,
    /// Viewing token.
    pub view_token: Option<String>,
    /// Output directory for result.json / summary.md / latency-cdf.svg.
    pub out_dir: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
    /// DELETE every session at the end.
    pub delete: bool,
    /// Simulcast layer video viewers ask for (0 low, 1 mid, 2 high): `?layer=` on WHEP
    /// (ils-control, bench/peers/medooze), `substream` with Janus. Default 1, the issue's
    /// "viewers on the middle layer".
    pub layer: u8,
    /// Audience scenario: mean seconds between one viewer's reactions (Poisson). Default 10.
    pub reaction_every_s: f64,
    /// Audience scenario: mean seconds between one viewer's chat messages (Poisson). Default 60.
    pub chat_every_s: f64,
    /// Fraction of publishers' video packets lost on their way to the server (dropped by the
    /// tool before sending; answered from the NACK history like a browser). 0..=0.5. Default 0.
    pub publisher_loss: f64,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            target: TargetKind::Ils,
            url: "http://127.0.0.1:8080".into(),
            room: "load".into(),
            scenario: Scenario::Audio,
            viewers: 100,
            hosts: 1,
            join_rate: 100.0,
            duration: Duration::from_secs(10),
            keyframe_interval: Duration::from_secs(3),
            twcc_interval: Some(Duration::from_millis(100)),
            load_core: None,
            control_pid: None,
            engine_pid: None,
            secret: None,
            token: None,
            publish_token: None,
            view_token: None,
            out_dir: None,
            progress: false,
            delete: true,
            layer: 1,
            reaction_every_s: 10.0,
            chat_every_s: 60.0,
            publisher_loss: 0.0,
        }
    }
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Percentiles {
    fn from_ns(h: &Histogram<u64>) -> Self {
        let us = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// CPU use of one process over the steady window.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CpuUse {
    /// Process id.
    pub pid: Option<u32>,
    /// CPU % of one core.
    pub percent: f64,
    /// CPU µs per packet delivered to viewers.
    pub us_per_packet: f64,
}

/// The result of a run (written as result.json).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Target URL.
    pub url: String,
    /// Viewers requested.
    pub viewers_requested: usize,
    /// Viewers connected (ICE + DTLS done).
    pub viewers_connected: usize,
    /// Publishers connected.
    pub publishers_connected: usize,
    /// Join failures with their reasons (first 20).
    pub join_errors: Vec<String>,
    /// Number of join failures.
    pub join_failures: usize,
    /// Join time (POST → SRTP keys) percentiles, ms.
    pub join_p50_ms: f64,
    /// Join time p99, ms.
    pub join_p99_ms: f64,
    /// Achieved join rate, viewers/s.
    pub join_rate_achieved: f64,
    /// Steady window length, s.
    pub window_s: f64,
    /// Packets/s the publishers sent (into the SFU) in the window.
    pub pps_in: f64,
    /// Packets/s the viewers received (out of the SFU) in the window.
    pub pps_out: f64,
    /// Mb/s into the SFU (SRTP bytes).
    pub mbps_in: f64,
    /// Mb/s out of the SFU.
    pub mbps_out: f64,
    /// Loss %, whole run: lost / expected over every viewer stream.
    pub loss_percent: f64,
    /// SFU-added latency (probe send → viewer receive), whole run.
    pub latency: Percentiles,
    /// Engine CPU.
    pub engine_cpu: CpuUse,
    /// Control CPU.
    pub control_cpu: CpuUse,
    /// Load tool CPU % (whole process) in the window.
    pub tool_cpu_percent: f64,
    /// Load tool I/O thread CPU % (whole run).
    pub io_thread_cpu_percent: f64,
    /// Load tool RSS growth per connected endpoint, KiB.
    pub rss_per_viewer_kib: f64,
    /// Counters from the I/O thread.
    pub totals: IoTotals,
    /// Which simulcast layer viewers received (packets per layer q/h/f).
    pub layers_received: [u64; 3],
    /// Conference: server messages received on the `/ws` sockets, by type.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ws_messages: std::collections::BTreeMap<String, u64>,
    /// Conference: `/ws` errors by code and server closes.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ws_errors: std::collections::BTreeMap<String, u64>,
}

/// (join times, join errors, (Location, token) of joined sessions).
type Joins = (Vec<Duration>, Vec<String>, Vec<(String, Option<String>)>);

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn resolve_tokens(
    cfg: &RunConfig,
    base: &BaseUrl,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let publish = cfg.publish_token.clone().or(cfg.token.clone());
    let view = cfg.view_token.clone().or(cfg.token.clone());
    if cfg.target != TargetKind::Ils || (publish.is_some() && view.is_some()) {
        return Ok((publish, view));
    }
    let mint = |role: ils_control::auth::Role| -> Option<String> {
        cfg.secret.as_ref().map(|s| {
            ils_control::auth::issue(
                &ils_control::auth::Secret::from_str(s),
                &cfg.room,
                role,
                Some("ils-load"),
                Duration::from_secs(6 * 3600),
                now_unix(),
            )
        })
    };
    let mut publish = publish.or_else(|| mint(ils_control::auth::Role::Host));
    let mut view = view.or_else(|| mint(ils_control::auth::Role::Viewer));
    for (slot, role) in [(&mut publish, "host"), (&mut view, "viewer")] {
        if slot.is_none() {
            let path = format!("/api/dev/token?room={}&role={role}", cfg.room);
            let r = http::request(base, "GET", &path, &[], "").await?;
            if r.status != 200 {
                anyhow::bail!(
                    "no token: pass --secret (or ILS_SECRET), --token, or start ils-control with --dev ({} from {path}: {})",
                    r.status,
                    r.body.trim()
                );
            }
            let v: serde_json::Value = serde_json::from_str(&r.body)?;
            *slot = v["token"].as_str().map(str::to_owned);
        }
    }
    Ok((publish, view))
}

fn cpu_of(pid: Option<u32>) -> Option<Duration> {
    pid.and_then(|p| proc::cpu_time(&p.to_string()).ok())
}

fn percent(d: Option<Duration>, window: Duration) -> f64 {
    d.map(|d| 100.0 * d.as_secs_f64() / window.as_secs_f64().max(1e-9))
        .unwrap_or(0.0)
}

fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Run one scenario end to end.
pub fn run(cfg: &RunConfig) -> anyhow::Result<(RunResult, Histogram<u64>)> {
    anyhow::ensure!(
        cfg.scenario != Scenario::Audience,
        "the audience scenario has its own runner: ils_load::ws::run_audience"
    );
    anyhow::ensure!(cfg.viewers <= MAX_VIEWERS, "at most {MAX_VIEWERS} viewers");
    anyhow::ensure!(
        cfg.hosts >= 1 && cfg.hosts <= MAX_HOSTS,
        "hosts must be 1..={MAX_HOSTS}"
    );
    anyhow::ensure!(cfg.join_rate > 0.0, "--join-rate must be > 0");
    let base = BaseUrl::parse(&cfg.url)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (publish_token, view_token) = rt.block_on(resolve_tokens(cfg, &base))?;
    let target = Target {
        base: base.clone(),
        room: cfg.room.clone(),
        publish_token,
        view_token,
        whip_path: "/whip/{room}".into(),
        whep_path: if cfg.scenario == Scenario::Audio {
            "/whep/{room}".into()
        } else {
            format!("/whep/{{room}}?layer={}", cfg.layer.min(2))
        },
    };
    let (video, hosts) = match cfg.scenario {
        Scenario::Audio => (false, 1),
        Scenario::Ils => (true, 1),
        Scenario::Stage | Scenario::Conference => (true, cfg.hosts),
        // INVARIANT: refused at the top of this function.
        Scenario::Audience => unreachable!("audience runs in crate::ws"),
    };
    // Janus: its own signaling (crate::janus) instead of WHIP/WHEP.
    let janus = match cfg.target {
        TargetKind::Janus => {
            let substream = (cfg.scenario != Scenario::Audio).then_some(cfg.layer.min(2));
            Some(rt.block_on(crate::janus::JanusRun::start(
                &cfg.url, &cfg.room, substream,
            ))?)
        }
        _ => None,
    };
    let live = Arc::new(Live::default());
    let (ctrl_tx, ctrl_rx) = mpsc::channel::<Ctrl>();
    let io_cfg = IoConfig {
        twcc_interval: cfg.twcc_interval,
        keyframe_interval: cfg.keyframe_interval,
        core: cfg.load_core,
        expected_endpoints: if cfg.scenario == Scenario::Conference {
            2 * hosts
        } else {
            cfg.viewers + hosts
        },
        publisher_loss: cfg.publisher_loss,
    };
    let live2 = live.clone();
    let io_thread = std::thread::Builder::new()
        .name("ils-load-io".into())
        .spawn(move || io::run(io_cfg, ctrl_rx, live2))?;
    let rss0 = proc::rss_bytes("self").unwrap_or(0);
    let control_pid = cfg.control_pid;
    let engine_pid = cfg
        .engine_pid
        .or_else(|| control_pid.and_then(|c| proc::find_child(c, "engine")));

    let bar = progress_bar(cfg.progress, cfg.viewers as u64);

    // Publishers first (one after another, like hosts going live).
    let mut cleanup: Vec<(String, Option<String>)> = Vec::new();
    let mut result = RunResult {
        scenario: format!("{:?}", cfg.scenario).to_lowercase(),
        url: cfg.url.clone(),
        viewers_requested: if cfg.scenario == Scenario::Conference {
            hosts
        } else {
            cfg.viewers
        },
        ..Default::default()
    };
    let mut t_join = Instant::now();
    let conference = if cfg.scenario == Scenario::Conference {
        let tx = ctrl_tx.clone();
        let add = move |r: setup::Ready| {
            let _ = tx.send(Ctrl::Add(Box::new(r)));
        };
        let cj = rt.block_on(crate::ws::conference_join(cfg, base.addr.ip(), &add))?;
        let mut times = cj.subscriber_join_times.clone();
        times.sort();
        result.publishers_connected = cj.publishers;
        result.viewers_connected = times.len();
        result.join_p50_ms = quantile_ms(&times, 0.5);
        result.join_p99_ms = quantile_ms(&times, 0.99);
        result.join_failures = cj.failures;
        result.join_errors = cj.errors.clone();
        result.join_rate_achieved = hosts as f64 / t_join.elapsed().as_secs_f64().max(1e-9);
        Some(cj)
    } else {
        None
    };
    for _ in 0..hosts * usize::from(conference.is_none()) {
        let role = Role::Publisher { video };
        let r = match &janus {
            Some(j) => match rt.block_on(j.connect(role, rand::random())) {
                Ok(r) => r,
                Err(e) => {
                    rt.block_on(j.finish());
                    return Err(e.into());
                }
            },
            None => rt.block_on(setup::connect(&target, role, rand::random()))?,
        };
        if let Some(l) = &r.location {
            cleanup.push((l.clone(), r.token.clone()));
        }
        result.publishers_connected += 1;
        let _ = ctrl_tx.send(Ctrl::Add(Box::new(r)));
    }

    // Viewer ramp.
    bar.set_message("joining");
    let joins: Arc<Mutex<Joins>> = Arc::new(Mutex::new((Vec::new(), Vec::new(), Vec::new())));
    let ramp = if conference.is_some() { 0 } else { cfg.viewers };
    if conference.is_none() {
        t_join = Instant::now();
    }
    let mut handles = Vec::with_capacity(ramp);
    for i in 0..ramp {
        let at = t_join + Duration::from_secs_f64(i as f64 / cfg.join_rate);
        let target = target.clone();
        let tx = ctrl_tx.clone();
        let joins = joins.clone();
        let bar = bar.clone();
        let janus = janus.clone();
        handles.push(rt.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let r = match &janus {
                Some(j) => j
                    .connect(Role::Viewer { video }, 0)
                    .await
                    .map_err(anyhow::Error::from),
                None => setup::connect(&target, Role::Viewer { video }, 0)
                    .await
                    .map_err(anyhow::Error::from),
            };
            let mut g = joins.lock().unwrap_or_else(|e| e.into_inner());
            match r {
                Ok(r) => {
                    g.0.push(r.join_time);
                    if let Some(l) = &r.location {
                        g.2.push((l.clone(), r.token.clone()));
                    }
                    let _ = tx.send(Ctrl::Add(Box::new(r)));
                }
                Err(e) => g.1.push(e.to_string()),
            }
            bar.inc(1);
        }));
    }
    rt.block_on(async {
        for h in handles {
            let _ = h.await;
        }
    });
    let join_elapsed = t_join.elapsed();
    if conference.is_none() {
        let mut g = joins.lock().unwrap_or_else(|e| e.into_inner());
        g.0.sort();
        result.viewers_connected = g.0.len();
        result.join_p50_ms = quantile_ms(&g.0, 0.5);
        result.join_p99_ms = quantile_ms(&g.0, 0.99);
        result.join_failures = g.1.len();
        result.join_errors = g.1.iter().take(20).cloned().collect();
        cleanup.append(&mut g.2);
    }
    if conference.is_none() {
        result.join_rate_achieved = cfg.viewers as f64 / join_elapsed.as_secs_f64().max(1e-9);
    }

    // Steady window.
    std::thread::sleep(Duration::from_millis(300));
    let rss1 = proc::rss_bytes("self").unwrap_or(0);
    let snap = |l: &Live| {
        (
            l.rx_packets.load(Ordering::Relaxed),
            l.rx_bytes.load(Ordering::Relaxed),
            l.tx_packets.load(Ordering::Relaxed),
            l.tx_bytes.load(Ordering::Relaxed),
        )
    };
    let s0 = snap(&live);
    let (e0, c0, self0) = (
        cpu_of(engine_pid),
        cpu_of(control_pid),
        proc::cpu_time("self").ok(),
    );
    let w0 = Instant::now();
    bar.set_length(cfg.duration.as_secs().max(1));
    bar.set_position(0);
    while w0.elapsed() < cfg.duration {
        std::thread::sleep(Duration::from_millis(250).min(cfg.duration));
        bar.set_position(w0.elapsed().as_secs());
        let with_media = live.viewers_with_media.load(Ordering::Relaxed);
        let rx = live.rx_packets.load(Ordering::Relaxed);
        bar.set_message(format!(
            "measuring: {with_media} viewers with media, {rx} packets"
        ));
    }
    let window = w0.elapsed();
    let s1 = snap(&live);
    let (e1, c1, self1) = (
        cpu_of(engine_pid),
        cpu_of(control_pid),
        proc::cpu_time("self").ok(),
    );
    bar.finish_and_clear();

    let _ = ctrl_tx.send(Ctrl::StopPublishers);
    std::thread::sleep(DRAIN);
    let _ = ctrl_tx.send(Ctrl::Stop);
    let report = io_thread
        .join()
        .map_err(|_| anyhow::anyhow!("I/O thread panicked"))??;

    let w = window.as_secs_f64().max(1e-9);
    let rx_window = s1.0.saturating_sub(s0.0);
    result.window_s = w;
    result.pps_out = rx_window as f64 / w;
    result.mbps_out = s1.1.saturating_sub(s0.1) as f64 * 8.0 / w / 1e6;
    result.pps_in = s1.2.saturating_sub(s0.2) as f64 / w;
    result.mbps_in = s1.3.saturating_sub(s0.3) as f64 * 8.0 / w / 1e6;
    let sub = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let per_pkt = |d: Option<Duration>| {
        d.map(|d| d.as_secs_f64() * 1e6 / (rx_window.max(1) as f64))
            .unwrap_or(0.0)
    };
    let ed = sub(e0, e1);
    let cd = sub(c0, c1);
    result.engine_cpu = CpuUse {
        pid: engine_pid,
        percent: percent(ed, window),
        us_per_packet: per_pkt(ed),
    };
    result.control_cpu = CpuUse {
        pid: control_pid,
        percent: percent(cd, window),
        us_per_packet: per_pkt(cd),
    };
    result.tool_cpu_percent = percent(sub(self0, self1), window);
    let run_len = t_join.elapsed().as_secs_f64().max(1e-9);
    result.io_thread_cpu_percent = 100.0 * report.thread_cpu.as_secs_f64() / run_len;
    let endpoints = (result.viewers_connected + result.publishers_connected).max(1);
    result.rss_per_viewer_kib = rss1.saturating_sub(rss0) as f64 / 1024.0 / endpoints as f64;
    let t = &report.totals;
    result.loss_percent = if t.expected > 0 {
        100.0 * t.lost as f64 / t.expected as f64
    } else {
        0.0
    };
    result.latency = Percentiles::from_ns(&report.latency);
    result.layers_received = t.rx_video_by_layer;
    result.totals = report.totals.clone();
    if let Some(cj) = conference {
        let (kinds, errors) = rt.block_on(cj.finish());
        result.ws_messages = kinds;
        result.ws_errors = errors;
    }

    if let (Some(j), true) = (&janus, cfg.delete) {
        rt.block_on(j.finish());
    } else if cfg.delete {
        rt.block_on(async {
            let sem = Arc::new(tokio::sync::Semaphore::new(DELETE_CONCURRENCY));
            let mut hs = Vec::new();
            for (loc, tok) in cleanup {
                let base = base.clone();
                let sem = sem.clone();
                hs.push(tokio::spawn(async move {
                    let _permit = sem.acquire().await;
                    let auth = tok.map(|t| format!("Bearer {t}"));
                    let mut h = Vec::new();
                    if let Some(a) = &auth {
                        h.push(("Authorization", a.as_str()));
                    }
                    let _ = http::request(&base, "DELETE", &loc, &h, "").await;
                }));
            }
            for h in hs {
                let _ = h.await;
            }
        });
    }
    if let Some(dir) = &cfg.out_dir {
        crate::report::write_all(dir, &result, &report.latency)?;
    }
    Ok((result, report.latency))
}

/// A progress bar of `len` steps on stderr when `show` (`--progress`), else a hidden one.
pub(crate) fn progress_bar(show: bool, len: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}
