//! `--scenario audience` (issue 5's load check): N viewers, one producer and one host join one
//! ILS session over `/ws` (docs/protocol.md) and behave like an audience — Poisson reactions and
//! chat, one poll vote each — while the tool measures what the server sends back: messages per
//! client per second by type, total messages/s and bytes/s, chat delivery latency (send →
//! received by another viewer), reactions sent vs counted in `reactions` events, chat delivered
//! vs refused, errors by code, closes, join time, and ils-control's CPU and RSS from /proc.
//!
//! The bound the design promises is checked: a viewer receives O(1) messages per second
//! whatever N is (one `reactions` per reaction window, one `poll` per poll per results interval,
//! one `audience_count` per second, audience chat capped per session).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use ils_control::auth::{self, Claims, Role, Secret};
use rand::Rng;
use serde::Deserialize;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::proc;
use crate::run::RunConfig;

/// WebSocket handshakes (TCP connect → `welcome`) in flight at once while joining. Default 256:
/// bounds the tool's burst of sockets in the handshake state; joins are paced by `--join-rate`.
pub const JOIN_CONCURRENCY: usize = 256;
/// Longest wait for `welcome` after connecting. Default 30 s; a slower join counts as failed.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// After the window, sending stops and the tool waits this long for the last reaction windows
/// and poll results to be flushed before comparing sent with counted. Default 1.5 s (three
/// 500 ms reaction windows).
pub const SETTLE: Duration = Duration::from_millis(1500);
/// Viewers vote on the poll after a uniform random delay in `0..min(VOTE_SPREAD, window / 2)`
/// (the poll opens when the window starts; the half-window cap keeps every vote inside it, so
/// votes sent == viewers). Default 5 s.
pub const VOTE_SPREAD: Duration = Duration::from_secs(5);
/// The producer features every `FEATURE_EVERY`-th viewer chat message to hosts. Default 20
/// (≤ 1/s at the session's 20/s audience chat cap, well inside the producer's 20/s budget).
pub const FEATURE_EVERY: u64 = 20;
/// Join errors and close reasons kept verbatim in the report (the rest are only counted).
/// Default 20.
pub const MAX_KEPT_ERRORS: usize = 20;
/// Distinct error codes / close reasons counted. Default 64: bounds the maps if a server sends
/// arbitrary codes; further kinds are counted under `other`.
pub const MAX_KINDS: usize = 64;
/// Emoji the viewers pick from.
pub const EMOJI: [&str; 4] = ["👏", "❤️", "😂", "🔥"];
/// Marker at the start of every chat text the tool sends (`ils-load t=<unix µs> v=<viewer>`).
pub const CHAT_MARKER: &str = "ils-load t=";
/// Largest chat latency recorded, µs (larger values are clamped). Default 60 s.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// Message types counted per client (index into the per-client arrays).
pub const KINDS: [&str; 12] = [
    "welcome",
    "reactions",
    "chat",
    "poll",
    "audience_count",
    "participant",
    "participant_left",
    "chat_hidden",
    "error",
    "ack",
    "moved",
    "other",
];

fn kind_index(ty: &str) -> usize {
    KINDS
        .iter()
        .position(|k| *k == ty)
        .unwrap_or(KINDS.len() - 1)
}

/// Run phases, broadcast to every client task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Joining; clients already react and chat.
    Join,
    /// The measured steady window.
    Measure,
    /// Sending stopped; waiting for the last aggregated events.
    Settle,
    /// Close every socket.
    Close,
}

/// Per-type message statistics over the window.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KindRate {
    /// Message type.
    pub kind: String,
    /// Messages of this type per viewer per second, mean over viewers.
    pub per_viewer_mean: f64,
    /// Messages of this type per viewer per second, max over viewers.
    pub per_viewer_max: f64,
    /// Total messages/s of this type received by all clients.
    pub total_per_s: f64,
}

/// The audience scenario's result (result.json).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AudienceResult {
    /// "audience".
    pub scenario: String,
    /// Server URL.
    pub url: String,
    /// Room (session).
    pub room: String,
    /// Viewers requested.
    pub viewers_requested: usize,
    /// Viewers that got `welcome`.
    pub viewers_joined: usize,
    /// Join failures.
    pub join_failures: usize,
    /// First join errors.
    pub join_errors: Vec<String>,
    /// Join time (TCP connect → `welcome`) p50, ms.
    pub join_p50_ms: f64,
    /// Join time p99, ms.
    pub join_p99_ms: f64,
    /// Achieved join rate, viewers/s.
    pub join_rate_achieved: f64,
    /// Mean seconds between a viewer's reactions (Poisson).
    pub reaction_every_s: f64,
    /// Mean seconds between a viewer's chat messages (Poisson).
    pub chat_every_s: f64,
    /// Steady window, s.
    pub window_s: f64,
    /// Server → client messages/s, all clients, in the window.
    pub msgs_out_per_s: f64,
    /// Server → client payload bytes/s in the window.
    pub bytes_out_per_s: f64,
    /// Messages per viewer per second, mean over viewers.
    pub per_viewer_msgs_per_s_mean: f64,
    /// Messages per viewer per second, max over viewers.
    pub per_viewer_msgs_per_s_max: f64,
    /// By type.
    pub by_kind: Vec<KindRate>,
    /// Client → server messages/s in the window (reactions, chat, votes, features).
    pub msgs_in_per_s: f64,
    /// Reactions sent (whole run).
    pub reactions_sent: u64,
    /// Reactions counted in `reactions` events seen by the producer (whole run).
    pub reactions_counted: u64,
    /// `reactions` events the producer received (whole run).
    pub reaction_events: u64,
    /// Chat messages viewers sent (whole run).
    pub chat_sent: u64,
    /// Viewer chat messages the producer received (accepted by the server).
    pub chat_delivered: u64,
    /// `rate_limited` errors received by viewers (chat refused by the per-session or
    /// per-participant budget).
    pub chat_refused: u64,
    /// Chat messages received by viewers, per viewer per second (mean).
    pub chat_received_per_viewer_per_s: f64,
    /// Featured chat messages the host received.
    pub host_chat_received: u64,
    /// Chat delivery latency (send → received by a viewer) percentiles, ms.
    pub chat_latency_p50_ms: f64,
    /// Chat latency p99, ms.
    pub chat_latency_p99_ms: f64,
    /// Chat latency max, ms.
    pub chat_latency_max_ms: f64,
    /// Chat latency samples.
    pub chat_latency_samples: u64,
    /// Poll votes sent.
    pub votes_sent: u64,
    /// Votes in the producer's last `poll` result.
    pub votes_counted: u64,
    /// `error` messages by code (all clients, whole run).
    pub errors: BTreeMap<String, u64>,
    /// Closes by the server before the tool closed (code and reason).
    pub closes: BTreeMap<String, u64>,
    /// Control pid.
    pub control_pid: Option<u32>,
    /// Control CPU % of one core in the window.
    pub control_cpu_percent: f64,
    /// Control CPU µs per server → client message in the window.
    pub control_cpu_us_per_msg: f64,
    /// Control RSS at the end of the window, MiB.
    pub control_rss_mib: f64,
    /// The load tool's CPU % in the window.
    pub tool_cpu_percent: f64,
    /// Whether every per-viewer bound held.
    pub bound_ok: bool,
    /// Bounds that did not hold.
    pub bound_violations: Vec<String>,
}

/// What one client task reports at the end.
#[derive(Debug, Clone, Default)]
struct ClientStats {
    viewer: bool,
    window_msgs: [u32; KINDS.len()],
    window_bytes: u64,
}

/// Counters shared by every client task.
#[derive(Default)]
struct Shared {
    reactions_sent: AtomicU64,
    chat_sent: AtomicU64,
    votes_sent: AtomicU64,
    window_sent: AtomicU64,
    reactions_counted: AtomicU64,
    reaction_events: AtomicU64,
    chat_delivered: AtomicU64,
    host_chat: AtomicU64,
    votes_counted: AtomicU64,
    window_msgs: AtomicU64,
    window_bytes: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    close_examples: Mutex<Vec<String>>,
    clients: Mutex<Vec<ClientStats>>,
    latency: Mutex<Option<Histogram<u64>>>,
    /// Message types received on conference sockets.
    kinds: Mutex<BTreeMap<String, u64>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if !m.contains_key(key) && m.len() >= MAX_KINDS {
        *m.entry("other".into()).or_default() += 1;
    } else {
        *m.entry(key.to_owned()).or_default() += 1;
    }
}

/// The fields of a server message the tool looks at (unknown fields are skipped).
#[derive(Deserialize)]
struct In<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    msg: Option<ChatIn<'a>>,
    #[serde(default)]
    poll: Option<PollIn>,
    #[serde(default)]
    counts: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    you: Option<YouIn>,
    #[serde(default, borrow)]
    rid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    sdp: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct YouIn {
    id: u64,
}

#[derive(Deserialize)]
struct ChatIn<'a> {
    id: u64,
    #[serde(borrow)]
    text: Cow<'a, str>,
    from: FromIn<'a>,
    /// Producers get the message again with `featured: true` after `chat_feature`.
    #[serde(default)]
    featured: bool,
}

#[derive(Deserialize)]
struct FromIn<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
}

#[derive(Deserialize)]
struct PollIn {
    id: u64,
    #[serde(default)]
    counts: Vec<u64>,
    #[serde(default)]
    closed: bool,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The send time in a chat text written by this tool (`ils-load t=<µs> ...`).
pub fn chat_sent_us(text: &str) -> Option<u64> {
    let rest = text.strip_prefix(CHAT_MARKER)?;
    rest.split(' ').next()?.parse().ok()
}

/// An exponentially distributed delay with the given mean (Poisson arrivals).
fn poisson_delay(mean: Duration) -> Duration {
    let u: f64 = rand::thread_rng().gen_range(1e-9..1.0);
    Duration::from_secs_f64((-u.ln() * mean.as_secs_f64()).min(mean.as_secs_f64() * 20.0))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Viewer,
    Producer,
    Host,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and joins; returns the socket after `welcome`.
async fn join(url: &str, token: &str, name: &str) -> anyhow::Result<Ws> {
    join_id(url, token, name).await.map(|(ws, _)| ws)
}

/// Connects and joins; returns the socket and the participant id from `welcome`.
async fn join_id(url: &str, token: &str, name: &str) -> anyhow::Result<(Ws, u64)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let hello = serde_json::json!({"type": "hello", "v": 1, "token": token, "name": name});
    ws.send(Message::Text(hello.to_string().into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let m: In = serde_json::from_str(t.as_str())?;
                match m.ty.as_ref() {
                    "welcome" => return Ok((ws, m.you.map(|y| y.id).unwrap_or(0))),
                    "error" => anyhow::bail!(
                        "refused: {} ({})",
                        m.code.as_deref().unwrap_or("?"),
                        t.as_str()
                    ),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(f))) => anyhow::bail!("closed before welcome: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed before welcome"),
        }
    }
}

struct Behaviour {
    reaction_every: Duration,
    chat_every: Duration,
    /// Votes are spread uniformly over `0..vote_spread` after the poll arrives.
    vote_spread: Duration,
}

/// One client's life after `welcome`: send its activity, count what arrives.
async fn client(
    mut ws: Ws,
    who: Who,
    index: usize,
    sh: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    b: Arc<Behaviour>,
) {
    let mut st = ClientStats {
        viewer: who == Who::Viewer,
        ..Default::default()
    };
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let active = who == Who::Viewer;
    let mut next_react = if active {
        tokio::time::Instant::now() + poisson_delay(b.reaction_every)
    } else {
        far
    };
    let mut next_chat = if active {
        tokio::time::Instant::now() + poisson_delay(b.chat_every)
    } else {
        far
    };
    let mut next_vote = far;
    let mut vote_for: Option<u64> = None;
    let mut voted = false;
    let mut poll_created = false;
    let mut viewer_chats_seen = 0u64;
    let mut outbox: Vec<String> = Vec::new();
    loop {
        let ph = *phase.borrow();
        if ph == Phase::Close {
            break;
        }
        let sending = ph <= Phase::Measure;
        if who == Who::Producer && ph == Phase::Measure && !poll_created {
            poll_created = true;
            outbox.push(
                serde_json::json!({"type": "poll_create", "question": "ils-load poll",
                    "options": ["yes", "no", "maybe"], "rid": "poll"})
                .to_string(),
            );
        }
        for m in outbox.drain(..) {
            if ws.send(Message::Text(m.into())).await.is_err() {
                break;
            }
            if ph == Phase::Measure {
                sh.window_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        let wake = if sending {
            next_react.min(next_chat).min(next_vote)
        } else {
            far
        };
        tokio::select! {
            _ = phase.changed() => {}
            _ = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                if now >= next_react {
                    let e = EMOJI[rand::thread_rng().gen_range(0..EMOJI.len())];
                    outbox.push(serde_json::json!({"type": "react", "emoji": e}).to_string());
                    sh.reactions_sent.fetch_add(1, Ordering::Relaxed);
                    next_react = now + poisson_delay(b.reaction_every);
                }
                if now >= next_chat {
                    let text = format!("{CHAT_MARKER}{} v={index}", unix_us());
                    outbox.push(serde_json::json!({"type": "chat", "text": text}).to_string());
                    sh.chat_sent.fetch_add(1, Ordering::Relaxed);
                    next_chat = now + poisson_delay(b.chat_every);
                }
                if now >= next_vote {
                    if let Some(id) = vote_for.take() {
                        let option = rand::thread_rng().gen_range(0..3);
                        outbox.push(serde_json::json!({"type": "poll_vote", "poll_id": id, "option": option}).to_string());
                        sh.votes_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    next_vote = far;
                }
            }
            m = ws.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(f))) => {
                        let why = f.map(|f| format!("{} {}", u16::from(f.code), f.reason))
                            .unwrap_or_else(|| "no close frame".into());
                        bump(&sh.closes, &why);
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        let why = format!("error: {e}");
                        let mut ex = sh.close_examples.lock().unwrap_or_else(|e| e.into_inner());
                        if ex.len() < MAX_KEPT_ERRORS {
                            ex.push(why);
                        }
                        drop(ex);
                        bump(&sh.closes, "transport error");
                        break;
                    }
                    None => {
                        bump(&sh.closes, "eof without close frame");
                        break;
                    }
                };
                let ph = *phase.borrow();
                let Ok(m) = serde_json::from_str::<In>(text.as_str()) else {
                    bump(&sh.errors, "unparsable server message");
                    continue;
                };
                let k = kind_index(&m.ty);
                if ph == Phase::Measure {
                    st.window_msgs[k] = st.window_msgs[k].saturating_add(1);
                    st.window_bytes += text.len() as u64;
                    sh.window_msgs.fetch_add(1, Ordering::Relaxed);
                    sh.window_bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
                }
                match m.ty.as_ref() {
                    "error" => bump(&sh.errors, m.code.as_deref().unwrap_or("?")),
                    "reactions" if who == Who::Producer => {
                        sh.reaction_events.fetch_add(1, Ordering::Relaxed);
                        let n: u64 = m.counts.iter().flat_map(|c| c.values()).sum();
                        sh.reactions_counted.fetch_add(n, Ordering::Relaxed);
                    }
                    "chat" => {
                        let Some(c) = m.msg else { continue };
                        let mine = c.text.starts_with(CHAT_MARKER);
                        match who {
                            Who::Viewer => {
                                if let (true, Some(t)) = (ph >= Phase::Measure, chat_sent_us(&c.text)) {
                                    let lat = unix_us().saturating_sub(t).min(MAX_LATENCY_US);
                                    let mut h = sh.latency.lock().unwrap_or_else(|e| e.into_inner());
                                    if let Some(h) = h.as_mut() {
                                        let _ = h.record(lat.max(1));
                                    }
                                }
                            }
                            Who::Producer => {
                                if mine && c.from.role == "viewer" && !c.featured {
                                    sh.chat_delivered.fetch_add(1, Ordering::Relaxed);
                                    viewer_chats_seen += 1;
                                    if sending && viewer_chats_seen % FEATURE_EVERY == 0 {
                                        outbox.push(serde_json::json!({"type": "chat_feature", "msg_id": c.id, "to_hosts": true}).to_string());
                                    }
                                }
                            }
                            Who::Host => {
                                if mine {
                                    sh.host_chat.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    "poll" => {
                        let Some(p) = m.poll else { continue };
                        if who == Who::Producer {
                            sh.votes_counted.store(p.counts.iter().sum(), Ordering::Relaxed);
                        } else if who == Who::Viewer && !voted && !p.closed && sending {
                            voted = true;
                            vote_for = Some(p.id);
                            let spread = rand::thread_rng().gen_range(0..=b.vote_spread.as_millis() as u64);
                            next_vote = tokio::time::Instant::now() + Duration::from_millis(spread);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = ws.close(None).await;
    sh.clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(st);
}

/// (join times, first join errors, join failures).
type JoinLog = (Vec<Duration>, Vec<String>, usize);

fn raise_nofile(want: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < want {
            let target = want.min(r.rlim_max);
            r.rlim_cur = target;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 || target < want {
                eprintln!(
                    "ils-load: open-file limit {} (hard {}) is below the {want} sockets this run needs; raise the hard limit (ulimit -Hn)",
                    r.rlim_cur, r.rlim_max
                );
            }
        }
    }
}

fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn token(secret: &Secret, room: &str, role: Role, identity: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    auth::issue_claims(
        secret,
        &Claims {
            room: room.to_owned(),
            role,
            identity: Some(identity.to_owned()),
            exp: now + 6 * 3600,
            iat: Some(now),
            grants: None,
            name: None,
        },
    )
}

/// The token secret and the `/ws` URL (`http` → `ws`, `https` → `wss`) of the server a `/ws`
/// scenario runs against; an error naming `scenario` when no secret was given.
fn ws_endpoint(cfg: &RunConfig, scenario: &str) -> anyhow::Result<(Secret, String)> {
    let secret = cfg.secret.as_deref().ok_or_else(|| {
        anyhow::anyhow!("the {scenario} scenario mints /ws tokens: pass --secret (or ILS_SECRET)")
    })?;
    let ws_url = format!(
        "{}/ws",
        cfg.url
            .trim_end_matches('/')
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    Ok((Secret::from_str(secret), ws_url))
}

/// ICE + DTLS with the engine for the SDP `answer` of a `/ws` `publish` or `subscribe` (no WHIP
/// resource and no token: the socket is the session; we are the controlling agent).
async fn establish_ws(
    prep: crate::setup::Prepared,
    answer: &str,
    role: crate::setup::Role,
    ssrc: u32,
) -> anyhow::Result<crate::setup::Ready> {
    let neg = crate::setup::Negotiated {
        answer: crate::sdp::parse_answer(answer)?,
        location: None,
        token: None,
        controlling: true,
    };
    Ok(crate::setup::establish(prep, neg, role, ssrc).await?)
}

/// Runs the audience scenario end to end and writes result.json / summary.md to
/// `cfg.out_dir`.
pub fn run_audience(cfg: &RunConfig) -> anyhow::Result<AudienceResult> {
    anyhow::ensure!(
        cfg.viewers <= crate::run::MAX_VIEWERS,
        "at most {} viewers",
        crate::run::MAX_VIEWERS
    );
    anyhow::ensure!(cfg.join_rate > 0.0, "--join-rate must be > 0");
    anyhow::ensure!(
        cfg.reaction_every_s > 0.0 && cfg.chat_every_s > 0.0,
        "--reaction-every-s and --chat-every-s must be > 0"
    );
    let (secret, ws_url) = ws_endpoint(cfg, "audience")?;
    raise_nofile(cfg.viewers as u64 + 1024);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sh = Arc::new(Shared {
        // INVARIANT: 1..=MAX_LATENCY_US with 3 significant digits is a valid histogram range.
        latency: Mutex::new(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).ok()),
        ..Default::default()
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Join);
    let b = Arc::new(Behaviour {
        reaction_every: Duration::from_secs_f64(cfg.reaction_every_s),
        chat_every: Duration::from_secs_f64(cfg.chat_every_s),
        vote_spread: VOTE_SPREAD.min(cfg.duration / 2),
    });
    let mut result = AudienceResult {
        scenario: "audience".into(),
        url: cfg.url.clone(),
        room: cfg.room.clone(),
        viewers_requested: cfg.viewers,
        reaction_every_s: cfg.reaction_every_s,
        chat_every_s: cfg.chat_every_s,
        control_pid: cfg.control_pid,
        ..Default::default()
    };
    let mut tasks = Vec::with_capacity(cfg.viewers + 2);
    // Producer and host first.
    for (who, role, id) in [
        (Who::Producer, Role::Producer, "ils-load-producer"),
        (Who::Host, Role::Host, "ils-load-host"),
    ] {
        let t = token(&secret, &cfg.room, role, id);
        let ws = rt
            .block_on(join(&ws_url, &t, id))
            .map_err(|e| anyhow::anyhow!("{id} could not join {ws_url}: {e}"))?;
        tasks.push(rt.spawn(client(ws, who, 0, sh.clone(), phase_rx.clone(), b.clone())));
    }

    let bar = crate::run::progress_bar(cfg.progress, cfg.viewers as u64);
    bar.set_message("joining /ws");
    let joins: Arc<Mutex<JoinLog>> =
        Arc::new(Mutex::new((Vec::with_capacity(cfg.viewers), Vec::new(), 0)));
    let sem = Arc::new(Semaphore::new(JOIN_CONCURRENCY));
    let t_join = Instant::now();
    let mut join_handles = Vec::with_capacity(cfg.viewers);
    for i in 0..cfg.viewers {
        let at = t_join + Duration::from_secs_f64(i as f64 / cfg.join_rate);
        let t = token(&secret, &cfg.room, Role::Viewer, &format!("ils-load-v{i}"));
        let (url, sh, rx, b, joins, sem, bar) = (
            ws_url.clone(),
            sh.clone(),
            phase_rx.clone(),
            b.clone(),
            joins.clone(),
            sem.clone(),
            bar.clone(),
        );
        join_handles.push(rt.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let permit = sem.acquire_owned().await;
            let t0 = Instant::now();
            let r = tokio::time::timeout(JOIN_TIMEOUT, join(&url, &t, &format!("v{i}"))).await;
            drop(permit);
            bar.inc(1);
            let ws = {
                let mut g = joins.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(Ok(ws)) => {
                        g.0.push(t0.elapsed());
                        ws
                    }
                    Ok(Err(e)) => {
                        g.2 += 1;
                        if g.1.len() < MAX_KEPT_ERRORS {
                            g.1.push(e.to_string());
                        }
                        return None;
                    }
                    Err(_) => {
                        g.2 += 1;
                        if g.1.len() < MAX_KEPT_ERRORS {
                            g.1.push(format!("no welcome within {JOIN_TIMEOUT:?}"));
                        }
                        return None;
                    }
                }
            };
            Some(tokio::spawn(client(ws, Who::Viewer, i, sh, rx, b)))
        }));
    }
    let viewer_tasks: Vec<_> = rt.block_on(async {
        let mut v = Vec::with_capacity(join_handles.len());
        for h in join_handles {
            if let Ok(Some(t)) = h.await {
                v.push(t);
            }
        }
        v
    });
    let join_elapsed = t_join.elapsed();
    {
        let mut g = joins.lock().unwrap_or_else(|e| e.into_inner());
        g.0.sort();
        result.viewers_joined = g.0.len();
        result.join_p50_ms = quantile_ms(&g.0, 0.5);
        result.join_p99_ms = quantile_ms(&g.0, 0.99);
        result.join_failures = g.2;
        result.join_errors = g.1.clone();
    }
    result.join_rate_achieved = cfg.viewers as f64 / join_elapsed.as_secs_f64().max(1e-9);
    std::thread::sleep(Duration::from_millis(300));

    // Steady window.
    let control = cfg.control_pid.map(|p| p.to_string());
    let cpu = |p: &Option<String>| p.as_deref().and_then(|p| proc::cpu_time(p).ok());
    let (c0, s0) = (cpu(&control), proc::cpu_time("self").ok());
    let w0 = Instant::now();
    let _ = phase_tx.send(Phase::Measure);
    bar.set_length(cfg.duration.as_secs().max(1));
    bar.set_position(0);
    while w0.elapsed() < cfg.duration {
        std::thread::sleep(Duration::from_millis(250).min(cfg.duration));
        bar.set_position(w0.elapsed().as_secs());
        bar.set_message(format!(
            "measuring: {} messages received",
            sh.window_msgs.load(Ordering::Relaxed)
        ));
    }
    let _ = phase_tx.send(Phase::Settle);
    let window = w0.elapsed();
    let (c1, s1) = (cpu(&control), proc::cpu_time("self").ok());
    if let Some(p) = &control {
        result.control_rss_mib = proc::rss_bytes(p).unwrap_or(0) as f64 / (1024.0 * 1024.0);
    }
    bar.finish_and_clear();
    std::thread::sleep(SETTLE);
    let _ = phase_tx.send(Phase::Close);
    rt.block_on(async {
        for t in tasks.into_iter().chain(viewer_tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });

    let w = window.as_secs_f64().max(1e-9);
    result.window_s = w;
    let msgs = sh.window_msgs.load(Ordering::Relaxed);
    result.msgs_out_per_s = msgs as f64 / w;
    result.bytes_out_per_s = sh.window_bytes.load(Ordering::Relaxed) as f64 / w;
    result.msgs_in_per_s = sh.window_sent.load(Ordering::Relaxed) as f64 / w;
    let cd = match (c0, c1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    if let Some(cd) = cd {
        result.control_cpu_percent = 100.0 * cd.as_secs_f64() / w;
        result.control_cpu_us_per_msg = cd.as_secs_f64() * 1e6 / msgs.max(1) as f64;
    }
    if let (Some(a), Some(b)) = (s0, s1) {
        result.tool_cpu_percent = 100.0 * b.saturating_sub(a).as_secs_f64() / w;
    }
    let clients = std::mem::take(&mut *sh.clients.lock().unwrap_or_else(|e| e.into_inner()));
    let viewers: Vec<&ClientStats> = clients.iter().filter(|c| c.viewer).collect();
    let nv = viewers.len().max(1) as f64;
    let mut totals = [0u64; KINDS.len()];
    let mut maxes = [0u32; KINDS.len()];
    let mut max_total = 0u64;
    for c in &viewers {
        let mut t = 0u64;
        for (k, n) in c.window_msgs.iter().enumerate() {
            totals[k] += u64::from(*n);
            maxes[k] = maxes[k].max(*n);
            t += u64::from(*n);
        }
        max_total = max_total.max(t);
    }
    let all_by_kind: Vec<u64> = (0..KINDS.len())
        .map(|k| clients.iter().map(|c| u64::from(c.window_msgs[k])).sum())
        .collect();
    result.per_viewer_msgs_per_s_mean = totals.iter().sum::<u64>() as f64 / nv / w;
    result.per_viewer_msgs_per_s_max = max_total as f64 / w;
    result.by_kind = KINDS
        .iter()
        .enumerate()
        .filter(|(k, _)| all_by_kind[*k] > 0)
        .map(|(k, name)| KindRate {
            kind: (*name).into(),
            per_viewer_mean: totals[k] as f64 / nv / w,
            per_viewer_max: f64::from(maxes[k]) / w,
            total_per_s: all_by_kind[k] as f64 / w,
        })
        .collect();
    result.chat_received_per_viewer_per_s = totals[kind_index("chat")] as f64 / nv / w;
    result.reactions_sent = sh.reactions_sent.load(Ordering::Relaxed);
    result.reactions_counted = sh.reactions_counted.load(Ordering::Relaxed);
    result.reaction_events = sh.reaction_events.load(Ordering::Relaxed);
    result.chat_sent = sh.chat_sent.load(Ordering::Relaxed);
    result.chat_delivered = sh.chat_delivered.load(Ordering::Relaxed);
    result.host_chat_received = sh.host_chat.load(Ordering::Relaxed);
    result.votes_sent = sh.votes_sent.load(Ordering::Relaxed);
    result.votes_counted = sh.votes_counted.load(Ordering::Relaxed);
    result.errors = sh.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    result.chat_refused = result.errors.get("rate_limited").copied().unwrap_or(0);
    result.closes = sh.closes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for ex in sh
        .close_examples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        result.join_errors.push(format!("after join: {ex}"));
    }
    if let Some(h) = sh
        .latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let ms = |v: u64| v as f64 / 1000.0;
        result.chat_latency_samples = h.len();
        if !h.is_empty() {
            result.chat_latency_p50_ms = ms(h.value_at_quantile(0.5));
            result.chat_latency_p99_ms = ms(h.value_at_quantile(0.99));
            result.chat_latency_max_ms = ms(h.max());
        }
    }
    let (violations, _) = check_bounds(w, &maxes);
    result.bound_ok = violations.is_empty();
    result.bound_violations = violations;
    if let Some(dir) = &cfg.out_dir {
        write(dir, &result)?;
    }
    Ok(result)
}

/// The per-viewer message bounds the design promises over a window of `window_s` seconds,
/// checked against `max_per_kind` (the most messages of each [`KINDS`] type any viewer got).
/// Returns the violations and the bound per kind (messages per window, `None`: unbounded here).
pub fn check_bounds(
    window_s: f64,
    max_per_kind: &[u32; KINDS.len()],
) -> (Vec<String>, Vec<Option<f64>>) {
    use ils_session::{
        AUDIENCE_CHAT_BURST, AUDIENCE_CHAT_PER_SEC, AUDIENCE_COUNT_INTERVAL_MS,
        POLL_RESULTS_INTERVAL_MS, REACTION_WINDOW_MS,
    };
    // One extra message per periodic kind for window edges.
    let per = |interval_ms: u64| window_s * 1000.0 / interval_ms as f64 + 1.0;
    let bounds: Vec<Option<f64>> = KINDS
        .iter()
        .map(|k| match *k {
            "reactions" => Some(per(REACTION_WINDOW_MS)),
            // One poll in the run: results coalesced, plus creation.
            "poll" => Some(per(POLL_RESULTS_INTERVAL_MS) + 1.0),
            "audience_count" => Some(per(AUDIENCE_COUNT_INTERVAL_MS)),
            // Audience chat capped per session (the producer's features are replacements
            // producers see, not viewers).
            "chat" => {
                Some(f64::from(AUDIENCE_CHAT_PER_SEC) * window_s + f64::from(AUDIENCE_CHAT_BURST))
            }
            _ => None,
        })
        .collect();
    let mut v = Vec::new();
    for (k, b) in bounds.iter().enumerate() {
        if let Some(b) = b {
            if f64::from(max_per_kind[k]) > b.floor() {
                v.push(format!(
                    "a viewer got {} `{}` messages in {window_s:.1} s (bound {})",
                    max_per_kind[k],
                    KINDS[k],
                    b.floor()
                ));
            }
        }
    }
    (v, bounds)
}

/// Markdown summary of an audience run.
pub fn markdown(r: &AudienceResult) -> String {
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "# ils-load: audience ({} viewers over /ws)\n",
        r.viewers_requested
    );
    let _ = writeln!(s, "| metric | value |\n| --- | --- |");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "| {k} | {v} |");
    };
    row(
        "viewers joined",
        format!(
            "{} / {} ({} failed)",
            r.viewers_joined, r.viewers_requested, r.join_failures
        ),
    );
    row(
        "join time p50 / p99",
        format!("{:.1} / {:.1} ms", r.join_p50_ms, r.join_p99_ms),
    );
    row(
        "join rate",
        format!("{:.0} viewers/s", r.join_rate_achieved),
    );
    row(
        "activity",
        format!(
            "reaction every {:.0} s, chat every {:.0} s per viewer (Poisson), one poll vote each",
            r.reaction_every_s, r.chat_every_s
        ),
    );
    row("window", format!("{:.1} s", r.window_s));
    row(
        "server → clients",
        format!(
            "{:.0} msgs/s, {:.2} MB/s",
            r.msgs_out_per_s,
            r.bytes_out_per_s / 1e6
        ),
    );
    row("clients → server", format!("{:.0} msgs/s", r.msgs_in_per_s));
    row(
        "per viewer msgs/s mean / max",
        format!(
            "{:.2} / {:.2}",
            r.per_viewer_msgs_per_s_mean, r.per_viewer_msgs_per_s_max
        ),
    );
    row(
        "reactions sent / counted (events)",
        format!(
            "{} / {} ({} events)",
            r.reactions_sent, r.reactions_counted, r.reaction_events
        ),
    );
    row(
        "chat sent / delivered / refused",
        format!(
            "{} / {} / {}",
            r.chat_sent, r.chat_delivered, r.chat_refused
        ),
    );
    row(
        "chat latency p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms ({} samples)",
            r.chat_latency_p50_ms,
            r.chat_latency_p99_ms,
            r.chat_latency_max_ms,
            r.chat_latency_samples
        ),
    );
    row(
        "featured chat seen by host",
        r.host_chat_received.to_string(),
    );
    row(
        "poll votes sent / counted",
        format!("{} / {}", r.votes_sent, r.votes_counted),
    );
    row(
        "control CPU",
        format!(
            "{:.1} % ({:.2} µs per delivered message)",
            r.control_cpu_percent, r.control_cpu_us_per_msg
        ),
    );
    row("control RSS", format!("{:.0} MiB", r.control_rss_mib));
    row("ils-load CPU", format!("{:.1} %", r.tool_cpu_percent));
    row("errors", format!("{:?}", r.errors));
    row("closes by the server", format!("{:?}", r.closes));
    row(
        "bounded fan-out",
        if r.bound_ok {
            "ok".into()
        } else {
            r.bound_violations.join("; ")
        },
    );
    let _ = writeln!(
        s,
        "\n| type | per viewer msgs/s mean | max | total msgs/s |\n| --- | --- | --- | --- |"
    );
    for k in &r.by_kind {
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.3} | {:.0} |",
            k.kind, k.per_viewer_mean, k.per_viewer_max, k.total_per_s
        );
    }
    s
}

/// Writes result.json and summary.md into `dir`.
pub fn write(dir: &Path, r: &AudienceResult) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("result.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("summary.md"), markdown(r))?;
    Ok(())
}

/// Longest wait for a direct reply (`answer`, `ack`) to a conference request. Default 15 s.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Most audio slots a conference participant asks for (the protocol's maximum). Default 8.
pub const CONFERENCE_AUDIO_SLOTS: usize = 8;

/// Window width, px, of a conference participant's speaker view: slot 0 is the spotlight tile
/// (the full width), the other video slots a grid below it, as the web app's tiles ask for sizes.
pub const CONFERENCE_VIEW_PX: usize = 1280;

/// `slot_size` of each of `videos` conference video slots: slot 0 (spotlight) `full`, the
/// others from their grid tile width with the web app's thresholds (> 640 px full, > 320 px
/// medium, else thumbnail).
pub fn conference_sizes(videos: usize) -> Vec<&'static str> {
    let size = |px: usize| {
        if px > 640 {
            "full"
        } else if px > 320 {
            "medium"
        } else {
            "thumbnail"
        }
    };
    let rest = videos.saturating_sub(1);
    let cols = (1..=rest.max(1)).find(|c| c * c >= rest).unwrap_or(1);
    (0..videos)
        .map(|i| {
            if i == 0 {
                size(CONFERENCE_VIEW_PX)
            } else {
                size(CONFERENCE_VIEW_PX / cols)
            }
        })
        .collect()
}

/// Sends `msg` and reads until the reply carrying `rid` (`answer` or `ack`); returns its SDP
/// (empty for `ack`). Other messages are skipped; an `error` with that rid is an error.
async fn request(ws: &mut Ws, msg: serde_json::Value, rid: &str) -> anyhow::Result<String> {
    ws.send(Message::Text(msg.to_string().into())).await?;
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("no reply to {rid} within {REPLY_TIMEOUT:?}"))?;
        let t = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => anyhow::bail!("closed while waiting for {rid}: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed while waiting for {rid}"),
        };
        let m: In = serde_json::from_str(t.as_str())?;
        if m.rid.as_deref() != Some(rid) {
            continue;
        }
        match m.ty.as_ref() {
            "answer" => return Ok(m.sdp.map(Cow::into_owned).unwrap_or_default()),
            "ack" => return Ok(String::new()),
            "error" => anyhow::bail!(
                "{rid} refused: {} ({})",
                m.code.as_deref().unwrap_or("?"),
                m.reason.as_deref().unwrap_or("")
            ),
            _ => {}
        }
    }
}

/// Keeps a conference socket read (pings answered, events drained so the server never blocks
/// on it) until `stop` says [`Phase::Close`]; counts `slots` announcements and server closes.
async fn drain(mut ws: Ws, mut stop: watch::Receiver<Phase>, sh: Arc<Shared>) {
    loop {
        if *stop.borrow() == Phase::Close {
            break;
        }
        tokio::select! {
            _ = stop.changed() => {}
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(m) = serde_json::from_str::<In>(t.as_str()) {
                        if m.ty == "error" {
                            bump(&sh.errors, m.code.as_deref().unwrap_or("?"));
                        }
                        bump(&sh.kinds, &m.ty);
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    let why = f.map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_else(|| "no close frame".into());
                    bump(&sh.closes, &why);
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    bump(&sh.closes, "transport error");
                    break;
                }
            }
        }
    }
    let _ = ws.send(Message::Text(r#"{"type":"leave"}"#.into())).await;
    let _ = ws.close(None).await;
}

/// What the conference join phase hands back to the scenario runner.
pub struct ConferenceJoin {
    /// Publishers (send-only PCs) established.
    pub publishers: usize,
    /// Subscribers (slot PCs) established, with their join time (subscribe → SRTP keys).
    pub subscriber_join_times: Vec<Duration>,
    /// Failures (first [`MAX_KEPT_ERRORS`]) and their count.
    pub errors: Vec<String>,
    /// Number of failures.
    pub failures: usize,
    stop: watch::Sender<Phase>,
    sockets: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl ConferenceJoin {
    /// Closes every `/ws` socket (media sessions end with them) and returns the messages the
    /// sockets received by type and the errors by code.
    pub async fn finish(self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let _ = self.stop.send(Phase::Close);
        for t in self.sockets {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let kinds = self
            .shared
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut errors = self
            .shared
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (k, n) in self
            .shared
            .closes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            errors.insert(format!("close: {k}"), *n);
        }
        (kinds, errors)
    }
}

/// The conference scenario's signaling (issue 4, "conference (K all-to-all)"): a producer and
/// `k` hosts join `/ws`; each host publishes audio + 3-layer VP8 simulcast (the load tool's
/// publisher offer, answer from the `answer` message), the producer moves it to the stage, and
/// once all are live each host subscribes with `k-1` video + `min(k-1, 8)` audio slots. Every
/// established endpoint is handed to `add` (the I/O thread). The sockets stay open, read, until
/// [`ConferenceJoin::finish`].
pub async fn conference_join(
    cfg: &RunConfig,
    server_ip: std::net::IpAddr,
    add: &dyn Fn(crate::setup::Ready),
) -> anyhow::Result<ConferenceJoin> {
    use crate::sdp;
    use crate::setup::{self, Role as MediaRole};
    let k = cfg.hosts;
    anyhow::ensure!(
        k >= 2,
        "a conference needs at least 2 participants (--hosts)"
    );
    let (secret, ws_url) = ws_endpoint(cfg, "conference")?;
    let shared = Arc::new(Shared::default());
    let (stop, stop_rx) = watch::channel(Phase::Join);
    let mut out = ConferenceJoin {
        publishers: 0,
        subscriber_join_times: Vec::with_capacity(k),
        errors: Vec::new(),
        failures: 0,
        stop,
        sockets: Vec::with_capacity(k + 1),
        shared: shared.clone(),
    };
    let fail = |out: &mut ConferenceJoin, e: String| {
        out.failures += 1;
        if out.errors.len() < MAX_KEPT_ERRORS {
            out.errors.push(e);
        }
    };
    let ptok = token(&secret, &cfg.room, Role::Producer, "ils-load-producer");
    let (mut producer, _) = join_id(&ws_url, &ptok, "producer")
        .await
        .map_err(|e| anyhow::anyhow!("producer could not join {ws_url}: {e}"))?;
    // Join, publish, go on stage — one host after another, like hosts going live.
    let mut hosts: Vec<Ws> = Vec::with_capacity(k);
    for i in 0..k {
        let id_name = format!("ils-load-host-{i}");
        let htok = token(&secret, &cfg.room, Role::Host, &id_name);
        let r: anyhow::Result<Ws> = async {
            let (mut ws, pid) = join_id(&ws_url, &htok, &format!("host {i}")).await?;
            let prep = setup::prepare(server_ip)?;
            let audio_ssrc: u32 = rand::random();
            let offer = sdp::publisher_offer(&prep.params, audio_ssrc, true);
            let ans = request(
                &mut ws,
                serde_json::json!({"type": "publish", "sdp": offer, "rid": "pub"}),
                "pub",
            )
            .await?;
            let ready =
                establish_ws(prep, &ans, MediaRole::Publisher { video: true }, audio_ssrc).await?;
            add(ready);
            let rid = format!("m{i}");
            request(
                &mut producer,
                serde_json::json!({"type": "move", "participant": pid, "to": "stage", "rid": rid}),
                &rid,
            )
            .await?;
            Ok(ws)
        }
        .await;
        match r {
            Ok(ws) => {
                out.publishers += 1;
                hosts.push(ws);
            }
            Err(e) => fail(&mut out, format!("host {i} publish: {e}")),
        }
    }
    // Everyone live: subscribe with K-1 video + min(K-1, 8) audio slots.
    let nv = k - 1;
    let na = nv.min(CONFERENCE_AUDIO_SLOTS);
    for (i, mut ws) in hosts.into_iter().enumerate() {
        let r: anyhow::Result<()> = async {
            let prep = setup::prepare(server_ip)?;
            let offer = sdp::subscriber_offer(&prep.params, nv, na);
            let ans = request(
                &mut ws,
                serde_json::json!({"type": "subscribe", "sdp": offer, "video_slots": nv,
                    "audio_slots": na, "rid": "sub"}),
                "sub",
            )
            .await?;
            let ready = establish_ws(prep, &ans, MediaRole::Viewer { video: true }, 0).await?;
            out.subscriber_join_times.push(ready.join_time);
            add(ready);
            // Slot sizes as the web app's speaker view asks for them (not awaited, as the app
            // does not: the socket's reader counts the acks, and the `slots` that follow).
            for (slot, size) in conference_sizes(nv).into_iter().enumerate() {
                let m = serde_json::json!({"type": "slot_size", "slot": slot, "size": size});
                ws.send(Message::Text(m.to_string().into())).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            fail(&mut out, format!("host {i} subscribe: {e}"));
        }
        out.sockets
            .push(tokio::spawn(drain(ws, stop_rx.clone(), shared.clone())));
    }
    out.sockets
        .push(tokio::spawn(drain(producer, stop_rx, shared)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conference_sizes_are_a_speaker_view() {
        assert_eq!(conference_sizes(1), ["full"]);
        assert_eq!(conference_sizes(2), ["full", "full"]);
        assert_eq!(conference_sizes(3), ["full", "medium", "medium"]);
        assert_eq!(
            conference_sizes(5),
            ["full", "medium", "medium", "medium", "medium"]
        );
        let big = conference_sizes(24);
        assert_eq!(big[0], "full");
        assert!(big[1..].iter().all(|s| *s == "thumbnail"), "{big:?}");
    }

    #[test]
    fn chat_timestamp_round_trips() {
        let t = format!("{CHAT_MARKER}1234567 v=3");
        assert_eq!(chat_sent_us(&t), Some(1_234_567));
        assert_eq!(chat_sent_us("hello"), None);
        assert_eq!(chat_sent_us("ils-load t=x v=1"), None);
    }

    #[test]
    fn bounds_do_not_grow_with_viewers_and_catch_a_flood() {
        let mut max = [0u32; KINDS.len()];
        max[kind_index("reactions")] = 20; // 10 s of 500 ms windows
        max[kind_index("audience_count")] = 10;
        assert!(check_bounds(10.0, &max).0.is_empty());
        max[kind_index("reactions")] = 5000; // one message per reaction: not aggregated
        let (v, _) = check_bounds(10.0, &max);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("reactions"));
    }

    #[test]
    fn server_messages_parse_with_unknown_fields() {
        let m: In = serde_json::from_str(
            r#"{"type":"reactions","window_ms":500,"counts":{"👏":3,"❤️":2},"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(m.counts.unwrap().values().sum::<u64>(), 5);
        let m: In = serde_json::from_str(
            r#"{"type":"chat","msg":{"id":1,"from":{"id":2,"name":"a\"b","role":"viewer"},"text":"x\"y","ts":1,"featured":false}}"#,
        )
        .unwrap();
        assert_eq!(m.msg.unwrap().text, "x\"y");
        assert_eq!(kind_index("nonsense"), KINDS.len() - 1);
    }

    #[test]
    fn subscriber_offer_has_one_recvonly_m_line_per_slot() {
        let p = crate::sdp::OfferParams {
            ufrag: "abcd".into(),
            pwd: "0123456789012345678901".into(),
            fingerprint: "AA:BB".into(),
            addr: "127.0.0.1:5000".parse().unwrap(),
            session_id: 1,
            stream_id: "s".into(),
        };
        let o = crate::sdp::subscriber_offer(&p, 24, 8);
        assert_eq!(o.matches("m=video ").count(), 24);
        assert_eq!(o.matches("m=audio ").count(), 8);
        assert_eq!(o.matches("a=recvonly").count(), 32);
        assert!(o.contains("a=group:BUNDLE 0 1 2"));
        assert!(o.contains("a=mid:31\r\n"));
        assert_eq!(o.matches("a=candidate:").count(), 1);
        assert!(o.len() < 64 * 1024, "over control's SDP limit: {}", o.len());
    }
}
