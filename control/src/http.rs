//! The HTTP API: WHIP (RFC 9725) and WHEP endpoints, room stats, Prometheus metrics, the demo
//! page and (in dev mode) demo tokens. Also the event loop that reacts to the engine.

// Handlers return a ready `Response` as their error: refusals are the cold path.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ils_shm::{Command, Event};
use serde::Deserialize;
use tokio::sync::mpsc;
use tower_http::cors::{Any, CorsLayer};

use crate::auth::{self, Role, Secret};
use crate::config::Settings;
use crate::dtls::DtlsDriver;
use crate::engine_link::{EngineLink, LinkEvent};
use crate::room::{decide_patch, EngineCmd, PatchDecision, Rooms, SessionKind};
use crate::sdp::{self, LocalParams, Preferences};

/// DTLS datagrams queued per session between the engine and its handshake task; more are
/// dropped (the peer retransmits). Memory: ≤ 64 × 1.5 KiB per connecting session.
pub const DTLS_QUEUE: usize = 64;

/// How long [`App::apply`] retries a command whose shard's command ring is full before giving
/// up (bounds how long a burst of commands can hold the room lock when the engine is stuck).
pub const RING_FULL_RETRY: Duration = Duration::from_secs(2);

/// Control-side counters exported at `/metrics`.
#[derive(Default)]
pub struct ControlCounters {
    /// WHIP offers answered 201.
    pub whip_created: AtomicU64,
    /// WHEP offers answered 201.
    pub whep_created: AtomicU64,
    /// Requests refused, by status class.
    pub refused_401: AtomicU64,
    /// 403 refusals.
    pub refused_403: AtomicU64,
    /// 4xx SDP refusals.
    pub refused_sdp: AtomicU64,
    /// Capacity refusals (409/503).
    pub refused_capacity: AtomicU64,
    /// DTLS handshakes completed.
    pub dtls_ok: AtomicU64,
    /// DTLS handshakes failed (timeout, fingerprint mismatch, ...).
    pub dtls_failed: AtomicU64,
    /// Sessions removed because ICE consent was lost.
    pub consent_lost: AtomicU64,
    /// Engine commands refused because a ring was full.
    pub link_full: AtomicU64,
    /// Engine `Rejected` events.
    pub engine_rejected: AtomicU64,
    /// Engine restarts seen.
    pub engine_restarts: AtomicU64,
}

/// Latest per-transport stats snapshot from the engine.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TransportSnapshot {
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets dropped.
    pub drops: u64,
}

/// Everything the handlers share.
pub struct App {
    /// Settings in force.
    pub settings: Settings,
    /// Token secret.
    pub secret: Secret,
    /// DTLS implementation.
    pub dtls: Arc<dyn DtlsDriver>,
    /// The engine.
    pub link: EngineLink,
    /// Rooms and sessions.
    pub rooms: tokio::sync::Mutex<Rooms>,
    /// Inbound DTLS channel per transport (handshake in progress).
    pub dtls_inbound: Mutex<HashMap<u32, mpsc::Sender<Vec<u8>>>>,
    /// Stats per transport.
    pub stats: Mutex<HashMap<u32, TransportSnapshot>>,
    /// Counters.
    pub counters: ControlCounters,
    /// ILS sessions (`/ws`, admin API).
    pub ils: crate::ws::Hub,
    /// Wakes [`persist_loop`]: room state changed and `state.json` should follow.
    pub persist_wake: tokio::sync::Notify,
}

/// How long [`persist_loop`] gathers changes before writing `state.json` once. Default 250 ms:
/// writing on every change serialized every session on every join (O(N²) for a join ramp;
/// measured: at ~2,000 WHEP viewers joining at 100/s control spent most of its time in JSON
/// escaping and DTLS handshakes timed out), so writes are at most 4 per second whatever the join
/// rate. The price: a control SIGKILLed within 250 ms of a change restarts without it (the
/// engine's DumpState reconcile then removes that transport; its client reconnects).
pub const PERSIST_DEBOUNCE: Duration = Duration::from_millis(250);

/// Write `state.json` (debounced by [`PERSIST_DEBOUNCE`]) whenever [`App::persist_soon`] was
/// called. Runs for the life of the process. The JSON is built under the rooms lock (O(sessions))
/// and written outside it, off the async workers.
pub async fn persist_loop(app: Arc<App>) {
    loop {
        app.persist_wake.notified().await;
        tokio::time::sleep(PERSIST_DEBOUNCE).await;
        let json = app.rooms.lock().await.to_json();
        let path = app.state_path();
        let _ = tokio::task::spawn_blocking(move || write_state(&path, &json)).await;
    }
}

/// Atomic write: a temporary file, then rename over `path`.
fn write_state(path: &std::path::Path, json: &str) {
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, json).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A `text/plain` response: `msg` and a newline.
pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        m,
    )
        .into_response()
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

impl App {
    fn state_path(&self) -> PathBuf {
        self.settings.data_dir.join("state.json")
    }

    /// Persist room state now (atomic rename) so a restarted control can reconcile. For
    /// start-up; changes while serving use [`App::persist_soon`].
    pub fn persist_now(&self, rooms: &Rooms) {
        write_state(&self.state_path(), &rooms.to_json());
    }

    /// Room state changed: [`persist_loop`] writes `state.json` within [`PERSIST_DEBOUNCE`].
    pub fn persist_soon(&self) {
        self.persist_wake.notify_one();
    }

    /// Send room commands to the engine, in order.
    ///
    /// A full command ring is retried for up to [`RING_FULL_RETRY`] (the engine drains
    /// `COMMANDS_PER_ITERATION` commands per loop iteration, so a burst — e.g. thousands of
    /// sessions deleted at once — clears in milliseconds); only a stuck engine makes a command
    /// fail, and then it is counted and logged.
    pub fn apply(&self, cmds: Vec<EngineCmd>) {
        for c in cmds {
            let deadline = std::time::Instant::now() + RING_FULL_RETRY;
            let mut pause = Duration::from_micros(50);
            loop {
                match self.send_cmd(&c) {
                    Ok(()) => break,
                    Err(crate::engine_link::LinkError::RingFull { .. })
                        if std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(5));
                    }
                    Err(e) => {
                        self.counters.link_full.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("engine command {c:?} not sent: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// Send one room command to the engine (its shard, or every shard for tracks).
    pub fn send_cmd(&self, c: &EngineCmd) -> Result<(), crate::engine_link::LinkError> {
        let sent = match c {
            EngineCmd::AddTransport {
                shard,
                transport,
                ufrag,
                pwd,
            } => self.link.send(
                *shard,
                &Command::AddTransport {
                    transport: *transport,
                    ufrag: ufrag.as_bytes(),
                    pwd: pwd.as_bytes(),
                    consent_timeout_ms: (self.settings.consent_timeout_secs.saturating_mul(1000))
                        .min(u64::from(u32::MAX)) as u32,
                },
            ),
            EngineCmd::RemoveTransport { shard, transport } => {
                if let Ok(mut d) = self.dtls_inbound.lock() {
                    d.remove(transport);
                }
                self.link.send(
                    *shard,
                    &Command::RemoveTransport {
                        transport: *transport,
                    },
                )
            }
            EngineCmd::InstallSrtp {
                shard,
                transport,
                keys,
            } => self.link.send(
                *shard,
                &Command::InstallSrtp {
                    transport: *transport,
                    profile: keys.profile,
                    rx_key: &keys.client_key,
                    rx_salt: &keys.client_salt,
                    tx_key: &keys.server_key,
                    tx_salt: &keys.server_salt,
                },
            ),
            EngineCmd::AddTrack(spec) => self.link.broadcast(&Command::AddTrack(*spec)).map(|_| 0),
            EngineCmd::RemoveTrack { track } => self
                .link
                .broadcast(&Command::RemoveTrack { track: *track })
                .map(|_| 0),
            EngineCmd::AddLeg { shard, spec } => self.link.send(*shard, &Command::AddLeg(*spec)),
            EngineCmd::RemoveLeg { shard, leg } => {
                self.link.send(*shard, &Command::RemoveLeg { leg: *leg })
            }
            EngineCmd::SelectLayer { shard, leg, layer } => self.link.send(
                *shard,
                &Command::SelectLayer {
                    leg: *leg,
                    layer: *layer,
                },
            ),
            EngineCmd::RestartIce {
                shard,
                transport,
                ufrag,
                pwd,
            } => self.link.send(
                *shard,
                &Command::RestartIce {
                    transport: *transport,
                    ufrag: ufrag.as_bytes(),
                    pwd: pwd.as_bytes(),
                },
            ),
        };
        sent.map(|_| ())
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    room: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    identity: Option<String>,
    /// Display name claim (`/ws`).
    #[serde(default)]
    name: Option<String>,
    /// Comma-separated grants (`publish,subscribe,chat,admin`); absent = the role's defaults.
    #[serde(default)]
    grants: Option<String>,
}

/// Build the router.
pub fn router(app: Arc<App>) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
        ])
        .expose_headers([header::LOCATION, header::ETAG, header::LINK]);
    let limit = app.settings.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/ils.js", get(ils_js))
        .route("/studio.html", get(|| web_file("studio")))
        .route("/producer.html", get(|| web_file("producer")))
        .route("/viewer.html", get(|| web_file("viewer")))
        .route("/ils-client.js", get(|| web_file("ils-client")))
        .route("/ils-app.js", get(|| web_file("ils-app")))
        .route("/ils-app.css", get(|| web_file("ils-app.css")))
        .route("/whip/{room}", post(whip).options(options))
        .route("/whep/{room}", post(whep).options(options))
        .route(
            "/whip/{room}/{id}",
            axum::routing::delete(delete_session)
                .patch(patch_session)
                .options(options),
        )
        .route(
            "/whep/{room}/{id}",
            axum::routing::delete(delete_session)
                .patch(patch_session)
                .options(options),
        )
        .route("/api/rooms", get(api_rooms))
        .route("/api/rooms/{room}", get(api_room))
        .route("/api/dev/token", get(dev_token))
        .route("/metrics", get(metrics))
        .route("/ws", get(crate::ws::ws_handler))
        .merge(crate::admin::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(cors)
        .with_state(app)
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../web/index.html"),
    )
        .into_response()
}

async fn ils_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../web/ils.js"),
    )
        .into_response()
}

/// The ILS web app (control/web, issue 5): pages, client library, styles.
async fn web_file(name: &'static str) -> Response {
    let (ct, body): (&str, &str) = match name {
        "studio" => (
            "text/html; charset=utf-8",
            include_str!("../web/studio.html"),
        ),
        "producer" => (
            "text/html; charset=utf-8",
            include_str!("../web/producer.html"),
        ),
        "viewer" => (
            "text/html; charset=utf-8",
            include_str!("../web/viewer.html"),
        ),
        "ils-client" => (
            "text/javascript; charset=utf-8",
            include_str!("../web/ils-client.js"),
        ),
        "ils-app" => (
            "text/javascript; charset=utf-8",
            include_str!("../web/ils-app.js"),
        ),
        _ => (
            "text/css; charset=utf-8",
            include_str!("../web/ils-app.css"),
        ),
    };
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}

async fn options() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::HeaderName::from_static("accept-patch"),
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    r
}

fn authorize(app: &App, headers: &HeaderMap, room: &str) -> Result<auth::Claims, Response> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims = auth::bearer(h)
        .and_then(|t| auth::verify(&app.secret, t, now_unix()))
        .and_then(|c| auth::check_room(&c, room).map(|_| c));
    claims.map_err(|e| {
        let code = e.status();
        if code == 403 {
            app.counters.refused_403.fetch_add(1, Ordering::Relaxed);
        } else {
            app.counters.refused_401.fetch_add(1, Ordering::Relaxed);
        }
        let mut r = text(status(code), e.to_string());
        if code == 401 {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    })
}

fn check_sdp_body(headers: &HeaderMap, body: &Bytes) -> Result<String, Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/sdp")
    {
        return Err(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/sdp (got {ct:?})"),
        ));
    }
    String::from_utf8(body.to_vec()).map_err(|_| text(StatusCode::BAD_REQUEST, "SDP is not UTF-8"))
}

/// Whether `room` is a usable room/session name: 1-64 characters of A-Z a-z 0-9 - _ .
pub fn valid_room_name(room: &str) -> bool {
    valid_room(room)
}

/// Seconds since the Unix epoch (token checks).
pub fn now_unix_secs() -> u64 {
    now_unix()
}

fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 64
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

async fn whip(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    offer(app, room, headers, body, SessionKind::Publisher, 2).await
}

/// `POST /whep/{room}?layer=`: the viewer's top simulcast layer.
#[derive(Deserialize)]
struct WhepQuery {
    #[serde(default)]
    layer: Option<String>,
}

/// Parse `?layer=`: `0|1|2`, `low|mid|high` or the rids `q|h|f`.
pub fn parse_layer(v: &str) -> Option<u8> {
    match v {
        "0" | "low" | "q" => Some(0),
        "1" | "mid" | "medium" | "h" => Some(1),
        "2" | "high" | "full" | "f" => Some(2),
        _ => None,
    }
}

async fn whep(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(q): Query<WhepQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let layer =
        match q.layer.as_deref() {
            None => 2,
            Some(v) => match parse_layer(v) {
                Some(l) => l,
                None => return text(
                    StatusCode::BAD_REQUEST,
                    "layer must be 0|1|2, low|mid|high or q|h|f (the viewer's top simulcast layer)",
                ),
            },
        };
    offer(app, room, headers, body, SessionKind::Viewer, layer).await
}

async fn offer(
    app: Arc<App>,
    room: String,
    headers: HeaderMap,
    body: Bytes,
    kind: SessionKind,
    max_layer: u8,
) -> Response {
    if !valid_room(&room) {
        return text(
            StatusCode::BAD_REQUEST,
            "room names are 1-64 characters of A-Z a-z 0-9 - _ .",
        );
    }
    // Authorization before anything is allocated (RELIABILITY C8).
    let claims = match authorize(&app, &headers, &room) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if kind == SessionKind::Publisher && !claims.role.may_publish() {
        app.counters.refused_403.fetch_add(1, Ordering::Relaxed);
        return text(
            StatusCode::FORBIDDEN,
            "a viewer token cannot publish: use a host or producer token",
        );
    }
    let offer = match check_sdp_body(&headers, &body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let created = match create_media_session(
        &app,
        &room,
        kind,
        claims.identity.clone(),
        &offer,
        false,
        max_layer,
    )
    .await
    {
        Ok(c) => c,
        Err(r) => return text(status(r.status), r.reason),
    };
    let (alloc, neg) = (created.alloc, created.neg);
    let (path, counter) = match kind {
        SessionKind::Publisher => ("whip", &app.counters.whip_created),
        SessionKind::Viewer => ("whep", &app.counters.whep_created),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let location = format!("/{path}/{room}/{}", alloc.id);
    let mut r = (StatusCode::CREATED, neg.answer).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", alloc.id)) {
        h.insert(header::ETAG, v);
    }
    r
}

/// Why [`create_media_session`] refused an offer: HTTP status and a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRefusal {
    /// 4xx/5xx status (409 stage full, 503 capacity, 400/415/422 SDP).
    pub status: u16,
    /// What was wrong and what to do.
    pub reason: String,
}

/// A media session created by [`create_media_session`].
pub struct CreatedMedia {
    /// Shard, transport and ICE credentials (`alloc.id` is the session id).
    pub alloc: crate::room::Allocation,
    /// The negotiated offer/answer (`neg.answer` is the SDP answer, `neg.media` the m-lines).
    pub neg: sdp::Negotiated,
}

/// The common path of WHIP, WHEP and `/ws` publish/subscribe: allocate, negotiate the answer,
/// record the session (marked ILS when `ils`: slots pinned explicitly, publisher private until
/// on stage), persist, send the engine commands and start the DTLS handshake. Authorization is
/// the caller's job and must come first.
///
/// `max_layer` caps a WHEP viewer's video at that simulcast layer (`?layer=`; 2 = no cap; ILS
/// slots choose their layer per slot instead).
pub async fn create_media_session(
    app: &Arc<App>,
    room: &str,
    kind: SessionKind,
    identity: Option<String>,
    offer: &str,
    ils: bool,
    max_layer: u8,
) -> Result<CreatedMedia, MediaRefusal> {
    let room = room.to_string();
    let mut rooms = app.rooms.lock().await;
    let allocated = if ils {
        rooms.allocate_ils(&room, kind, &|b| ring_fill(b))
    } else {
        rooms.allocate(&room, kind, &|b| ring_fill(b))
    };
    let alloc = match allocated {
        Ok(a) => a,
        Err(e) => {
            app.counters
                .refused_capacity
                .fetch_add(1, Ordering::Relaxed);
            return Err(MediaRefusal {
                status: e.status(),
                reason: e.to_string(),
            });
        }
    };
    let announce = app.settings.announce_ip.unwrap_or(app.settings.media_ip);
    let local = LocalParams {
        ice_ufrag: alloc.ice_ufrag.clone(),
        ice_pwd: alloc.ice_pwd.clone(),
        fingerprint_sha256: app.dtls.fingerprint(),
        candidate: SocketAddr::new(announce, app.link.port(alloc.shard)),
        cname: format!("ils-{}", alloc.id),
    };
    let negotiated = match kind {
        SessionKind::Publisher => sdp::answer_publish(offer, &local),
        SessionKind::Viewer => {
            let (video, audio) = rooms.publisher_codecs(&room);
            let prefer = Preferences { video, audio };
            let mut next = || rooms.next_ssrc();
            sdp::answer_view(offer, &local, &prefer, &mut next)
        }
    };
    let neg = match negotiated {
        Ok(n) => n,
        Err(e) => {
            app.counters.refused_sdp.fetch_add(1, Ordering::Relaxed);
            return Err(MediaRefusal {
                status: e.status,
                reason: e.reason,
            });
        }
    };
    let cmds = rooms.create_session(
        &alloc,
        &room,
        kind,
        identity,
        neg.remote_fingerprint.clone(),
        &neg.media,
        now_unix(),
    );
    rooms.set_remote_ice_ufrag(&alloc.id, &neg.remote_ufrag);
    if max_layer < 2 {
        // The session was inserted just above; no leg exists before its DTLS completes.
        let _ = rooms.set_max_layer(&alloc.id, max_layer);
    }
    if ils {
        // The session was inserted just above, so this cannot fail.
        let _ = rooms.mark_ils(&alloc.id);
    } else {
        app.persist_soon();
    }
    drop(rooms);
    // The DTLS relay must exist before the engine can hand us the client's first flight.
    let (in_tx, in_rx) = mpsc::channel(DTLS_QUEUE);
    if let Ok(mut d) = app.dtls_inbound.lock() {
        d.insert(alloc.transport, in_tx);
    }
    app.apply(cmds);
    spawn_handshake(
        Arc::clone(app),
        alloc.id.clone(),
        alloc.shard,
        alloc.transport,
        in_rx,
        neg.remote_fingerprint.clone(),
    );
    Ok(CreatedMedia { alloc, neg })
}

fn ring_fill(b: &mut [u8]) {
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(b).is_err() {
        // The system RNG failing is not recoverable in a meaningful way; fall back to rand.
        rand::Rng::fill(&mut rand::thread_rng(), b);
    }
}

fn spawn_handshake(
    app: Arc<App>,
    id: String,
    shard: usize,
    transport: u32,
    inbound: mpsc::Receiver<Vec<u8>>,
    fingerprint: String,
) {
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(DTLS_QUEUE);
    let link = app.link.clone();
    tokio::spawn(async move {
        while let Some(d) = out_rx.recv().await {
            let _ = link.send(
                shard,
                &Command::SendDatagram {
                    transport,
                    data: &d,
                },
            );
        }
    });
    tokio::spawn(async move {
        let res = app.dtls.accept(inbound, out_tx, fingerprint).await;
        let mut rooms = app.rooms.lock().await;
        let ils_room = rooms
            .session(&id)
            .filter(|s| s.ils && res.is_err())
            .map(|s| s.room.clone());
        let cmds = match res {
            Ok(keys) => {
                app.counters.dtls_ok.fetch_add(1, Ordering::Relaxed);
                rooms.handle_connected(&id, keys)
            }
            Err(e) => {
                app.counters.dtls_failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(session = %id, "DTLS failed: {e}; session removed");
                rooms.remove_session(&id)
            }
        };
        if let Ok(cmds) = cmds {
            app.apply(cmds);
            app.persist_soon();
        }
        drop(rooms);
        if let Ok(mut d) = app.dtls_inbound.lock() {
            d.remove(&transport);
        }
        if let Some(room) = ils_room {
            crate::ws::media_gone(&app, &room, &id, ils_session::MediaLoss::DtlsFailed).await;
        }
    });
}

async fn delete_session(
    State(app): State<Arc<App>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&app, &headers, &room) {
        return r;
    }
    let mut rooms = app.rooms.lock().await;
    if rooms.session(&id).is_none_or(|s| s.room != room) {
        return text(StatusCode::NOT_FOUND, "no such session in this room");
    }
    match rooms.remove_session(&id) {
        Ok(cmds) => {
            app.apply(cmds);
            app.persist_soon();
            StatusCode::OK.into_response()
        }
        Err(e) => text(status(e.status()), e.to_string()),
    }
}

/// ICE priority of our single host candidate in an ICE-restart answer (type preference 126,
/// component 1): the value the SDP answer uses.
pub const RESTART_CANDIDATE_PRIORITY: u32 = 2_130_706_431;

/// The body of a `200 OK` to an ICE restart PATCH (RFC 9725 §4.3.2, RFC 8840 sdpfrag): we are
/// ICE-lite, our new credentials, and our single host candidate (the transport's shard).
pub fn restart_answer_frag(ufrag: &str, pwd: &str, candidate: SocketAddr) -> String {
    format!(
        "a=ice-lite\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n\
         a=candidate:1 1 udp {RESTART_CANDIDATE_PRIORITY} {} {} typ host\r\n\
         a=end-of-candidates\r\n",
        candidate.ip(),
        candidate.port()
    )
}

/// `PATCH` on a session (RFC 9725 §4.3): trickled candidates → 204 (an ICE-lite server learns
/// candidates from the checks); new client credentials → ICE restart: new server credentials are
/// installed in the engine (`RestartIce`; media keeps flowing on the current path until the client
/// checks with them), the room state is updated and persisted, and the answer is `200 OK` with our
/// new `a=ice-ufrag`/`a=ice-pwd` and candidate plus a new `ETag`. `If-Match` with an entity-tag
/// other than the current one → 412. If the engine cannot take the command the session keeps its
/// ICE state and the answer is 503.
async fn patch_session(
    State(app): State<Arc<App>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&app, &headers, &room) {
        return r;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .to_ascii_lowercase()
        .starts_with("application/trickle-ice-sdpfrag")
    {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/trickle-ice-sdpfrag",
        );
    }
    let mut rooms = app.rooms.lock().await;
    let Some(s) = rooms.session(&id).filter(|s| s.room == room) else {
        return text(StatusCode::NOT_FOUND, "no such session in this room");
    };
    let frag = match std::str::from_utf8(&body)
        .map_err(|_| "sdpfrag is not UTF-8".to_string())
        .and_then(|b| sdp::parse_sdpfrag(b).map_err(|e| e.reason))
    {
        Ok(f) => f,
        Err(reason) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("malformed trickle-ice-sdpfrag: {reason}"),
            )
        }
    };
    let if_match = match headers.get(header::IF_MATCH).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "If-Match is not ASCII"),
    };
    match decide_patch(s, frag.ice_ufrag.as_deref(), if_match) {
        PatchDecision::PreconditionFailed => {
            let mut r = text(
                StatusCode::PRECONDITION_FAILED,
                "If-Match does not match the session's current ETag",
            );
            if let Ok(v) = HeaderValue::from_str(&s.etag()) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        PatchDecision::Trickle => StatusCode::NO_CONTENT.into_response(),
        PatchDecision::Restart => {
            let remote = frag.ice_ufrag.unwrap_or_default();
            let restart = match rooms.prepare_ice_restart(&id, &|b| ring_fill(b)) {
                Ok(r) => r,
                Err(e) => return text(status(e.status()), e.to_string()),
            };
            if let Err(e) = app.send_cmd(&restart.command()) {
                app.counters.link_full.fetch_add(1, Ordering::Relaxed);
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "ICE restart not applied ({e}); the current ICE session is kept, try again"
                    ),
                );
            }
            let etag = match rooms.commit_ice_restart(&restart, &remote) {
                Ok(t) => t,
                Err(e) => return text(status(e.status()), e.to_string()),
            };
            app.persist_soon();
            drop(rooms);
            let announce = app.settings.announce_ip.unwrap_or(app.settings.media_ip);
            let candidate = SocketAddr::new(announce, app.link.port(restart.shard));
            tracing::info!(session = %id, "ICE restart");
            let mut r = (
                StatusCode::OK,
                restart_answer_frag(&restart.ufrag, &restart.pwd, candidate),
            )
                .into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/trickle-ice-sdpfrag"),
            );
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            r
        }
    }
}

async fn api_rooms(State(app): State<Arc<App>>) -> Response {
    let rooms = app.rooms.lock().await;
    let list: Vec<_> = rooms
        .room_counts()
        .into_iter()
        .map(|(name, (p, v))| serde_json::json!({"room": name, "publishers": p, "viewers": v}))
        .collect();
    axum::Json(serde_json::json!({ "rooms": list })).into_response()
}

async fn api_room(State(app): State<Arc<App>>, Path(room): Path<String>) -> Response {
    let rooms = app.rooms.lock().await;
    let stats = app.stats.lock().map(|s| s.clone()).unwrap_or_default();
    let sessions: Vec<_> = rooms
        .sessions()
        .filter(|s| s.room == room)
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "kind": s.kind,
                "identity": s.identity,
                "state": s.state,
                "shard": s.shard,
                "media": s.media.iter().map(|m| serde_json::json!({
                    "mid": m.mid, "kind": if m.video { "video" } else { "audio" },
                    "codec": m.codec, "rids": m.rids, "layer": m.layer,
                })).collect::<Vec<_>>(),
                "stats": stats.get(&s.transport).copied().unwrap_or_default(),
            })
        })
        .collect();
    if sessions.is_empty() {
        return text(
            StatusCode::NOT_FOUND,
            format!("room {room:?} has no sessions"),
        );
    }
    axum::Json(serde_json::json!({ "room": room, "sessions": sessions })).into_response()
}

async fn dev_token(State(app): State<Arc<App>>, Query(q): Query<TokenQuery>) -> Response {
    if !app.settings.dev {
        return text(
            StatusCode::NOT_FOUND,
            "demo tokens are only served in dev mode (start ils-control with --dev), or paste a token from `ils-control token`",
        );
    }
    if !valid_room(&q.room) {
        return text(StatusCode::BAD_REQUEST, "bad room name");
    }
    let role = match q.role.as_deref().unwrap_or("viewer") {
        "host" => Role::Host,
        "producer" => Role::Producer,
        "viewer" => Role::Viewer,
        other => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("unknown role {other:?}: host, producer or viewer"),
            )
        }
    };
    let grants = match q
        .grants
        .as_deref()
        .map(crate::config::parse_grants)
        .transpose()
    {
        Ok(g) => g,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    if let Some(Err(why)) = q.name.as_deref().map(auth::validate_name) {
        return text(StatusCode::BAD_REQUEST, format!("name: {why}"));
    }
    if q.identity.as_ref().is_some_and(|i| {
        i.chars().count() > auth::MAX_IDENTITY_CHARS || i.chars().any(char::is_control)
    }) {
        return text(
            StatusCode::BAD_REQUEST,
            "identity: at most 256 characters, no control characters",
        );
    }
    let now = now_unix();
    let token = auth::issue_claims(
        &app.secret,
        &auth::Claims {
            room: q.room.clone(),
            role,
            identity: q.identity.clone(),
            exp: now.saturating_add(3600),
            iat: Some(now),
            grants,
            name: q.name.clone(),
        },
    );
    axum::Json(serde_json::json!({ "token": token })).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP ils_engine_drops_total Packets the engine dropped, by reason."
    );
    let _ = writeln!(out, "# TYPE ils_engine_drops_total counter");
    let counters = app.link.counters();
    for (c, v) in &counters {
        if let Some(reason) = c.drop_reason() {
            let _ = writeln!(out, "ils_engine_drops_total{{reason=\"{reason}\"}} {v}");
        }
    }
    for (c, v) in &counters {
        if c.drop_reason().is_none() {
            let n = c.name();
            let _ = writeln!(out, "# TYPE ils_engine_{n}_total counter");
            let _ = writeln!(out, "ils_engine_{n}_total {v}");
        }
    }
    let c = &app.counters;
    let pairs: [(&str, &AtomicU64); 12] = [
        ("whip_sessions_created", &c.whip_created),
        ("whep_sessions_created", &c.whep_created),
        ("refused_unauthorized", &c.refused_401),
        ("refused_forbidden", &c.refused_403),
        ("refused_sdp", &c.refused_sdp),
        ("refused_capacity", &c.refused_capacity),
        ("dtls_handshakes_ok", &c.dtls_ok),
        ("dtls_handshakes_failed", &c.dtls_failed),
        ("consent_lost", &c.consent_lost),
        ("engine_link_full", &c.link_full),
        ("engine_rejected", &c.engine_rejected),
        ("engine_restarts", &c.engine_restarts),
    ];
    for (n, v) in pairs {
        let _ = writeln!(out, "# TYPE ils_control_{n}_total counter");
        let _ = writeln!(out, "ils_control_{n}_total {}", v.load(Ordering::Relaxed));
    }
    let rooms = app.rooms.lock().await;
    let (mut p, mut v) = (0, 0);
    for (_, (a, b)) in rooms.room_counts() {
        p += a;
        v += b;
    }
    let _ = writeln!(out, "# TYPE ils_control_sessions gauge");
    let _ = writeln!(out, "ils_control_sessions{{kind=\"publisher\"}} {p}");
    let _ = writeln!(out, "ils_control_sessions{{kind=\"viewer\"}} {v}");
    let age = app.link.heartbeat_age().map_or(-1.0, |d| d.as_secs_f64());
    let _ = writeln!(out, "# TYPE ils_engine_heartbeat_age_seconds gauge");
    let _ = writeln!(out, "ils_engine_heartbeat_age_seconds {age}");
    app.ils.counters.render(&mut out);
    app.ils.render_sessions(&mut out).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// React to the engine: DTLS relay, consent loss, layer upgrades, stats, restarts.
pub async fn run_events(app: Arc<App>, mut rx: mpsc::UnboundedReceiver<LinkEvent>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                handle_event(&app, ev).await;
            }
            _ = tick.tick() => {
                let mut rooms = app.rooms.lock().await;
                let mut ils = Vec::new();
                for id in rooms.expired(now_unix()) {
                    if let Some(s) = rooms.session(&id).filter(|s| s.ils) {
                        ils.push((s.room.clone(), id.clone()));
                    }
                    if let Ok(cmds) = rooms.remove_session(&id) {
                        tracing::info!(session = %id, "never connected; removed");
                        app.apply(cmds);
                    }
                }
                app.persist_soon();
                drop(rooms);
                for (room, id) in ils {
                    crate::ws::media_gone(&app, &room, &id, ils_session::MediaLoss::NeverConnected)
                        .await;
                }
            }
        }
    }
}

async fn handle_event(app: &Arc<App>, ev: LinkEvent) {
    match ev {
        LinkEvent::EngineRestarted { generation } => {
            app.counters.engine_restarts.fetch_add(1, Ordering::Relaxed);
            let mut rooms = app.rooms.lock().await;
            let gone = rooms.handle_engine_restart();
            tracing::warn!(
                generation,
                sessions = gone.len(),
                "engine restarted: all media sessions are gone; clients must reconnect (new WHIP/WHEP offer)"
            );
            if let Ok(mut d) = app.dtls_inbound.lock() {
                d.clear();
            }
            app.persist_soon();
            drop(rooms);
            for s in gone.iter().filter(|s| s.ils) {
                crate::ws::media_gone(app, &s.room, &s.id, ils_session::MediaLoss::EngineRestart)
                    .await;
            }
        }
        LinkEvent::Event(owned) => {
            let Some(e) = owned.event() else { return };
            match e {
                Event::DtlsIn { transport, data } => {
                    let tx = app
                        .dtls_inbound
                        .lock()
                        .ok()
                        .and_then(|m| m.get(&transport).cloned());
                    if let Some(tx) = tx {
                        let _ = tx.try_send(data.to_vec());
                    }
                }
                Event::ConsentLost { transport } => {
                    app.counters.consent_lost.fetch_add(1, Ordering::Relaxed);
                    let mut rooms = app.rooms.lock().await;
                    let mut ils = None;
                    if let Some(s) = rooms.by_transport(transport) {
                        let id = s.id.clone();
                        ils = s.ils.then(|| (s.room.clone(), id.clone()));
                        if let Ok(cmds) = rooms.remove_session(&id) {
                            tracing::info!(session = %id, "ICE consent lost; session removed");
                            app.apply(cmds);
                            app.persist_soon();
                        }
                    }
                    drop(rooms);
                    if let Some((room, id)) = ils {
                        crate::ws::media_gone(app, &room, &id, ils_session::MediaLoss::ConsentLost)
                            .await;
                    }
                }
                Event::AudioLevels(l) => {
                    let levels: Vec<(u32, u8)> = l.iter().collect();
                    crate::ws::audio_levels(app, &levels).await;
                }
                Event::TrackStats {
                    track,
                    layers_active,
                    ..
                } => {
                    let mut rooms = app.rooms.lock().await;
                    let cmds = rooms.handle_track_layers(track, layers_active);
                    if !cmds.is_empty() {
                        app.apply(cmds);
                        app.persist_soon();
                    }
                }
                Event::TransportStats {
                    transport,
                    rx_packets,
                    rx_bytes,
                    tx_packets,
                    tx_bytes,
                    drops,
                    ..
                } => {
                    if let Ok(mut s) = app.stats.lock() {
                        s.insert(
                            transport,
                            TransportSnapshot {
                                rx_packets,
                                rx_bytes,
                                tx_packets,
                                tx_bytes,
                                drops,
                            },
                        );
                    }
                }
                Event::Rejected { seq, reason } => {
                    app.counters.engine_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        seq,
                        shard = owned.shard,
                        "engine rejected a command: {reason:?}"
                    );
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whep_layer_names() {
        for (v, l) in [
            ("0", 0),
            ("low", 0),
            ("q", 0),
            ("1", 1),
            ("mid", 1),
            ("h", 1),
        ] {
            assert_eq!(parse_layer(v), Some(l), "{v}");
        }
        for v in ["2", "high", "f", "full"] {
            assert_eq!(parse_layer(v), Some(2), "{v}");
        }
        for v in ["", "3", "-1", "HIGH", "1 ", "\u{0}"] {
            assert_eq!(parse_layer(v), None, "{v:?}");
        }
    }

    #[test]
    fn restart_answer_is_an_sdpfrag_with_our_new_credentials_and_candidate() {
        let f = restart_answer_frag(
            "0123456789abcdef",
            "00112233445566778899aabbccddeeff",
            "192.0.2.7:40001".parse().unwrap(),
        );
        assert_eq!(
            f,
            "a=ice-lite\r\na=ice-ufrag:0123456789abcdef\r\n\
             a=ice-pwd:00112233445566778899aabbccddeeff\r\n\
             a=candidate:1 1 udp 2130706431 192.0.2.7 40001 typ host\r\n\
             a=end-of-candidates\r\n"
        );
        // it parses as a restart fragment (what a client's sdpfrag parser sees)
        let p = sdp::parse_sdpfrag(&f).expect("valid sdpfrag");
        assert_eq!(p.ice_ufrag.as_deref(), Some("0123456789abcdef"));
        assert_eq!(
            p.ice_pwd.as_deref(),
            Some("00112233445566778899aabbccddeeff")
        );
        assert_eq!(
            p.candidates,
            vec!["candidate:1 1 udp 2130706431 192.0.2.7 40001 typ host".to_string()]
        );
        let v6 = restart_answer_frag(
            "abcd",
            "p".repeat(22).as_str(),
            "[2001:db8::1]:40000".parse().unwrap(),
        );
        assert!(v6.contains("udp 2130706431 2001:db8::1 40000 typ host"));
    }
}
