//! Janus 1.1 (`janus.plugin.videoroom`) through its plain HTTP API, so the same scenarios,
//! endpoints and reports run against Janus as against ils (`ils-load --target janus URL`).
//!
//! Per run: one admin session creates a room (VP8 + Opus, up to [`MAX_PUBLISHERS`]
//! publishers, simulcast allowed). Per endpoint: its own session and videoroom handle, like a
//! browser tab.
//! - **Publisher**: `join` (ptype publisher), then `publish` with the tool's Chromium-shaped
//!   offer ([`crate::sdp::publisher_offer`]) rewritten to `a=setup:active` so Janus is the DTLS
//!   server and the tool's webrtc-dtls client is used as for ils; Janus answers in an
//!   asynchronous event fetched by long-poll (`GET /janus/<session>?maxev=`).
//! - **Viewer**: `join` (ptype subscriber) to the first publisher's feed; Janus sends the
//!   OFFER, [`viewer_answer`] builds a recv-only answer (`a=setup:active`), `start` sends it; for
//!   video scenarios `configure` selects the middle simulcast layer (substream 1), the layer
//!   ils viewers get in the `ils` scenario.
//!
//! ICE (the tool is controlling when it offered, controlled when Janus offered), DTLS and SRTP
//! are [`setup::establish`], so the I/O thread, probes and reports are unchanged. Sessions are
//! kept alive every [`KEEPALIVE_INTERVAL`] and destroyed by [`JanusRun::finish`].
//!
//! `ILS_LOAD_JANUS_DUMP=DIR` writes Janus's publisher answer and subscriber offer there (how
//! the fixtures in tests/fixtures/ were captured).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::http::{self, BaseUrl, HttpError};
use crate::sdp::{self, OfferParams};
use crate::setup::{self, Negotiated, Ready, Role, SetupError};

/// Plugin the adapter attaches to.
pub const PLUGIN: &str = "janus.plugin.videoroom";
/// Publishers allowed in the room created for a run. Default 25 (ils-control's stage size;
/// the `stage` scenario's maximum).
pub const MAX_PUBLISHERS: u32 = 25;
/// Events fetched per long-poll (`maxev`). Default 16; bounds one poll's response.
pub const MAX_EVENTS_PER_POLL: usize = 16;
/// How long to wait for an asynchronous videoroom event (the publisher's answer, the
/// subscriber's offer, `started`). Default 15 s, like [`setup::CONNECT_TIMEOUT`].
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Session keepalive period. Default 25 s: Janus drops sessions idle for `session_timeout`
/// (60 s in bench/peers/janus/start.sh), so a run longer than that needs them.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(25);
/// Concurrent keepalive / destroy requests. Default 32; bounds the sockets the adapter holds
/// at the end of a 5,000-viewer run.
pub const REQUEST_CONCURRENCY: usize = 32;
/// Most sessions tracked for keepalive and clean-up. Default 100,025
/// ([`crate::run::MAX_VIEWERS`] + [`MAX_PUBLISHERS`]): 8 B each, 800 KB worst case; a session
/// beyond it is destroyed at once and its join fails.
pub const MAX_SESSIONS: usize = crate::run::MAX_VIEWERS + MAX_PUBLISHERS as usize;
/// Extra time answering Janus's checks after ICE looks complete from our side, before DTLS.
/// Default 5 ms: without it about 1 join in 50-150 sent its ClientHello before libnice had
/// selected the pair, Janus dropped it and webrtc-dtls resent it only after 1 s (0 in 200
/// joins with it). Part of every Janus join time.
pub const ICE_SETTLE: Duration = Duration::from_millis(5);
/// Longest Janus reason string kept in an error. Default 200 chars.
pub const MAX_REASON: usize = 200;

/// Why talking to Janus failed.
#[derive(Debug, thiserror::Error)]
pub enum JanusError {
    /// Nothing answers at the URL.
    #[error("Janus not reachable at {url} ({source}): run bench/peers/janus/start.sh")]
    Unreachable {
        /// Base URL.
        url: String,
        /// HTTP error.
        source: HttpError,
    },
    /// HTTP failure on a request.
    #[error("Janus {what}: {source}")]
    Http {
        /// Request.
        what: &'static str,
        /// HTTP error.
        source: HttpError,
    },
    /// Non-200 status.
    #[error("Janus {what}: HTTP {status}: {body} (is the URL http://HOST:PORT/janus?)")]
    Status {
        /// Request.
        what: &'static str,
        /// Status code.
        status: u16,
        /// Body, truncated.
        body: String,
    },
    /// Unparseable JSON.
    #[error("Janus {what}: invalid JSON: {detail}")]
    Json {
        /// Request.
        what: &'static str,
        /// Parser message.
        detail: String,
    },
    /// A field the API promises is missing or has the wrong type.
    #[error("Janus {what}: reply lacks {field}")]
    Missing {
        /// Request.
        what: &'static str,
        /// Field.
        field: &'static str,
    },
    /// Janus core error (`{"janus":"error"}`).
    #[error("Janus {what}: error {code}: {reason}")]
    Janus {
        /// Request.
        what: &'static str,
        /// Janus error code.
        code: i64,
        /// Reason.
        reason: String,
    },
    /// Videoroom plugin error (`error_code` in plugindata).
    #[error("videoroom {what}: error {code}: {reason}")]
    Plugin {
        /// Request.
        what: &'static str,
        /// Plugin error code.
        code: i64,
        /// Reason.
        reason: String,
    },
    /// No matching event in time.
    #[error("Janus {what}: no event within {EVENT_TIMEOUT:?} (overloaded? see its log)")]
    Timeout {
        /// Request.
        what: &'static str,
    },
    /// Janus hung the handle up or detached it while we waited.
    #[error("Janus {what}: handle hung up: {reason}")]
    Hangup {
        /// Request.
        what: &'static str,
        /// Reason.
        reason: String,
    },
    /// Janus's SDP cannot be answered.
    #[error("Janus offer: {0}")]
    Offer(String),
    /// No publisher to subscribe to.
    #[error("no publisher in the Janus room to subscribe to")]
    NoFeed,
    /// More than [`MAX_SESSIONS`] sessions.
    #[error("more than {MAX_SESSIONS} Janus sessions")]
    TooManySessions,
    /// The server's SDP is unusable for ICE/DTLS.
    #[error("Janus SDP: {0}")]
    Sdp(#[from] sdp::SdpError),
    /// ICE / DTLS / SRTP failed.
    #[error("{0}")]
    Setup(#[from] SetupError),
}

/// A session description in a Janus message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jsep {
    /// "offer" or "answer".
    pub kind: String,
    /// The SDP.
    pub sdp: String,
}

/// One Janus API message (a reply or an event), the fields the adapter uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The `janus` field: success, ack, event, error, webrtcup, media, hangup, keepalive, ...
    pub kind: String,
    /// Transaction id, if any.
    pub transaction: Option<String>,
    /// Handle the event comes from.
    pub sender: Option<u64>,
    /// `data.id` (new session / handle id).
    pub id: Option<u64>,
    /// `error.code`/`error.reason` of a Janus error.
    pub error: Option<(i64, String)>,
    /// `plugindata.data`.
    pub plugin: Option<Value>,
    /// `jsep`, if present and well-formed.
    pub jsep: Option<Jsep>,
    /// `reason` of a hangup.
    pub reason: Option<String>,
}

fn trunc(s: &str) -> String {
    s.chars().take(MAX_REASON).collect()
}

/// Read one Janus message from a JSON value.
pub fn reply_from_value(v: &Value, what: &'static str) -> Result<Reply, JanusError> {
    let o = v.as_object().ok_or(JanusError::Missing {
        what,
        field: "a JSON object",
    })?;
    let kind = o
        .get("janus")
        .and_then(Value::as_str)
        .ok_or(JanusError::Missing {
            what,
            field: "\"janus\"",
        })?
        .to_owned();
    let error = o.get("error").map(|e| {
        (
            e.get("code").and_then(Value::as_i64).unwrap_or(0),
            trunc(e.get("reason").and_then(Value::as_str).unwrap_or("")),
        )
    });
    let jsep = match o.get("jsep") {
        None => None,
        Some(j) => {
            let kind = j.get("type").and_then(Value::as_str);
            let sdp = j.get("sdp").and_then(Value::as_str);
            match (kind, sdp) {
                (Some(k), Some(s)) => Some(Jsep {
                    kind: k.to_owned(),
                    sdp: s.to_owned(),
                }),
                _ => {
                    return Err(JanusError::Missing {
                        what,
                        field: "jsep.type/jsep.sdp",
                    })
                }
            }
        }
    };
    Ok(Reply {
        kind,
        transaction: o
            .get("transaction")
            .and_then(Value::as_str)
            .map(str::to_owned),
        sender: o.get("sender").and_then(Value::as_u64),
        id: o
            .get("data")
            .and_then(|d| d.get("id"))
            .and_then(Value::as_u64),
        error,
        plugin: o
            .get("plugindata")
            .and_then(|p| p.get("data"))
            .filter(|d| d.is_object())
            .cloned(),
        jsep,
        reason: o.get("reason").and_then(Value::as_str).map(trunc),
    })
}

/// Parse a reply body (one JSON object). A `{"janus":"error"}` is an [`JanusError::Janus`].
pub fn parse_reply(body: &str, what: &'static str) -> Result<Reply, JanusError> {
    let v: Value = serde_json::from_str(body).map_err(|e| JanusError::Json {
        what,
        detail: e.to_string(),
    })?;
    let r = reply_from_value(&v, what)?;
    if r.kind == "error" {
        let (code, reason) = r.error.unwrap_or((0, String::new()));
        return Err(JanusError::Janus { what, code, reason });
    }
    Ok(r)
}

/// Parse a long-poll body: one event object or an array of at most [`MAX_EVENTS_PER_POLL`]
/// (more are an error: we asked for that many).
pub fn parse_events(body: &str, what: &'static str) -> Result<Vec<Reply>, JanusError> {
    let v: Value = serde_json::from_str(body).map_err(|e| JanusError::Json {
        what,
        detail: e.to_string(),
    })?;
    match &v {
        Value::Array(a) => {
            if a.len() > MAX_EVENTS_PER_POLL {
                return Err(JanusError::Json {
                    what,
                    detail: format!("{} events, asked for {MAX_EVENTS_PER_POLL}", a.len()),
                });
            }
            a.iter().map(|e| reply_from_value(e, what)).collect()
        }
        _ => Ok(vec![reply_from_value(&v, what)?]),
    }
}

/// A videoroom plugin error in `plugindata.data` (`error_code`, `error`).
pub fn plugin_error(data: &Value, what: &'static str) -> Option<JanusError> {
    let code = data.get("error_code")?.as_i64().unwrap_or(0);
    let reason = trunc(data.get("error").and_then(Value::as_str).unwrap_or(""));
    Some(JanusError::Plugin { what, code, reason })
}

/// Decode an HTTP/1.1 chunked body (libmicrohttpd, Janus's HTTP server, answers chunked;
/// [`crate::http`] reads until close and leaves the framing in). `None` when malformed or
/// truncated. Chunk extensions and trailers are ignored.
pub fn dechunk(raw: &str) -> Option<String> {
    let mut rest = raw.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(rest.get(..eol)?).ok()?;
        let size_hex = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        rest = rest.get(eol + 2..)?;
        if size == 0 {
            return String::from_utf8(out).ok();
        }
        out.extend_from_slice(rest.get(..size)?);
        if rest.get(size..size + 2)? != b"\r\n" {
            return None;
        }
        rest = rest.get(size + 2..)?;
    }
}

fn transaction() -> String {
    use rand::Rng;
    let mut r = rand::thread_rng();
    (0..12)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[r.gen_range(0..36)]))
        .collect()
}

/// Janus HTTP API client (stateless: ids are passed in).
#[derive(Debug, Clone)]
pub struct Client {
    base: BaseUrl,
    root: String,
    url: String,
}

impl Client {
    /// Client for `url` (`http://HOST:PORT/janus`; a URL without a path gets `/janus`).
    pub fn new(url: &str) -> Result<Self, JanusError> {
        let base = BaseUrl::parse(url).map_err(|source| JanusError::Unreachable {
            url: url.to_owned(),
            source,
        })?;
        let root = if base.prefix.is_empty() {
            "/janus".to_owned()
        } else {
            base.prefix.clone()
        };
        Ok(Self {
            base,
            root,
            url: url.to_owned(),
        })
    }

    /// The base URL's address (endpoints bind next to it).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base.addr
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        what: &'static str,
    ) -> Result<String, JanusError> {
        let headers = [("Content-Type", "application/json")];
        let r = http::request(&self.base, method, path, &headers, body)
            .await
            .map_err(|source| match source {
                HttpError::Io(_) => JanusError::Unreachable {
                    url: self.url.clone(),
                    source,
                },
                source => JanusError::Http { what, source },
            })?;
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(&r.body).ok_or(JanusError::Json {
                what,
                detail: "malformed chunked body".into(),
            })?
        } else {
            r.body
        };
        if r.status != 200 {
            return Err(JanusError::Status {
                what,
                status: r.status,
                body: trunc(body.trim()),
            });
        }
        Ok(body)
    }

    async fn post(
        &self,
        path: &str,
        mut body: Value,
        what: &'static str,
    ) -> Result<(Reply, String), JanusError> {
        let txn = transaction();
        if let Some(o) = body.as_object_mut() {
            o.insert("transaction".into(), Value::String(txn.clone()));
        }
        let raw = self.send("POST", path, &body.to_string(), what).await?;
        Ok((parse_reply(&raw, what)?, txn))
    }

    /// `GET /janus/info`: fails with [`JanusError::Unreachable`] when nothing listens.
    pub async fn info(&self) -> Result<Value, JanusError> {
        let raw = self
            .send("GET", &format!("{}/info", self.root), "", "info")
            .await?;
        let r = parse_reply(&raw, "info")?;
        if r.kind != "server_info" {
            return Err(JanusError::Missing {
                what: "info",
                field: "\"janus\":\"server_info\"",
            });
        }
        serde_json::from_str(&raw).map_err(|e| JanusError::Json {
            what: "info",
            detail: e.to_string(),
        })
    }

    /// Create a session.
    pub async fn create_session(&self) -> Result<u64, JanusError> {
        let (r, _) = self
            .post(&self.root, json!({"janus": "create"}), "create session")
            .await?;
        r.id.ok_or(JanusError::Missing {
            what: "create session",
            field: "data.id",
        })
    }

    /// Attach the videoroom plugin to `session`.
    pub async fn attach(&self, session: u64) -> Result<u64, JanusError> {
        let (r, _) = self
            .post(
                &format!("{}/{session}", self.root),
                json!({"janus": "attach", "plugin": PLUGIN}),
                "attach",
            )
            .await?;
        r.id.ok_or(JanusError::Missing {
            what: "attach",
            field: "data.id",
        })
    }

    /// Keep `session` alive.
    pub async fn keepalive(&self, session: u64) -> Result<(), JanusError> {
        self.post(
            &format!("{}/{session}", self.root),
            json!({"janus": "keepalive"}),
            "keepalive",
        )
        .await
        .map(|_| ())
    }

    /// Destroy `session` (hangs up and detaches its handles).
    pub async fn destroy(&self, session: u64) -> Result<(), JanusError> {
        self.post(
            &format!("{}/{session}", self.root),
            json!({"janus": "destroy"}),
            "destroy session",
        )
        .await
        .map(|_| ())
    }

    /// Send a plugin message; returns the immediate reply (`success` with plugindata for
    /// synchronous requests, `ack` for asynchronous ones) and the transaction id.
    pub async fn message(
        &self,
        session: u64,
        handle: u64,
        body: Value,
        jsep: Option<&Jsep>,
        what: &'static str,
    ) -> Result<(Reply, String), JanusError> {
        let mut m = json!({"janus": "message", "body": body});
        if let (Some(j), Some(o)) = (jsep, m.as_object_mut()) {
            o.insert("jsep".into(), json!({"type": j.kind, "sdp": j.sdp}));
        }
        let (r, txn) = self
            .post(&format!("{}/{session}/{handle}", self.root), m, what)
            .await?;
        if let Some(e) = r.plugin.as_ref().and_then(|d| plugin_error(d, what)) {
            return Err(e);
        }
        Ok((r, txn))
    }

    /// Tell Janus we have no more candidates (ours are in the SDP).
    pub async fn trickle_completed(&self, session: u64, handle: u64) -> Result<(), JanusError> {
        self.post(
            &format!("{}/{session}/{handle}", self.root),
            json!({"janus": "trickle", "candidate": {"completed": true}}),
            "trickle",
        )
        .await
        .map(|_| ())
    }

    /// Long-poll `session` until the plugin event for `txn` from `handle` arrives (other
    /// events are skipped), within [`EVENT_TIMEOUT`].
    pub async fn wait_event(
        &self,
        session: u64,
        handle: u64,
        txn: &str,
        what: &'static str,
    ) -> Result<Reply, JanusError> {
        let ev = self
            .wait_for(session, handle, what, |ev| {
                ev.kind == "event" && ev.transaction.as_deref() == Some(txn)
            })
            .await?;
        if let Some(e) = ev.plugin.as_ref().and_then(|d| plugin_error(d, what)) {
            return Err(e);
        }
        Ok(ev)
    }

    /// Long-poll `session` until Janus reports `webrtcup` for `handle`: DTLS is done on its
    /// side and the plugin has set the PeerConnection up (a publisher's feed can be subscribed
    /// to only from then on: earlier, `join` fails with 428 "No such feed").
    pub async fn wait_webrtcup(&self, session: u64, handle: u64) -> Result<(), JanusError> {
        self.wait_for(session, handle, "webrtcup", |ev| ev.kind == "webrtcup")
            .await
            .map(|_| ())
    }

    /// Long-poll `session` until an event from `handle` satisfies `want` (hangup, detach and
    /// errors end the wait), within [`EVENT_TIMEOUT`]; other events are skipped.
    async fn wait_for(
        &self,
        session: u64,
        handle: u64,
        what: &'static str,
        want: impl Fn(&Reply) -> bool,
    ) -> Result<Reply, JanusError> {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        let path = format!("{}/{session}?maxev={MAX_EVENTS_PER_POLL}", self.root);
        loop {
            let raw =
                match tokio::time::timeout_at(deadline, self.send("GET", &path, "", what)).await {
                    Err(_) => return Err(JanusError::Timeout { what }),
                    Ok(Err(JanusError::Http {
                        source: HttpError::Timeout,
                        ..
                    })) => continue,
                    Ok(r) => r?,
                };
            for ev in parse_events(&raw, what)? {
                if ev.sender.is_some_and(|s| s != handle) {
                    continue;
                }
                if want(&ev) {
                    return Ok(ev);
                }
                match ev.kind.as_str() {
                    "hangup" | "detached" => {
                        return Err(JanusError::Hangup {
                            what,
                            reason: ev.reason.unwrap_or_else(|| ev.kind.clone()),
                        })
                    }
                    "error" => {
                        let (code, reason) = ev.error.unwrap_or((0, String::new()));
                        return Err(JanusError::Janus { what, code, reason });
                    }
                    _ => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JanusError::Timeout { what });
            }
        }
    }
}

/// One run's Janus state: the room, the publishers' feeds, every session (for keepalive and
/// clean-up).
pub struct JanusRun {
    client: Client,
    admin: (u64, u64),
    /// Room id created for this run.
    pub room: u64,
    feeds: Mutex<Vec<u64>>,
    sessions: Arc<Mutex<Vec<u64>>>,
    keepalive: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Select this simulcast substream for video viewers (None: Janus's default, the highest).
    pub substream: Option<u8>,
    /// Address endpoints bind to: Janus's `local-ip` (its ICE address, 127.0.0.2 with
    /// start.sh). libnice's sockets cannot reach 127.0.0.1 from the veth (EINVAL), so the
    /// tool's sockets sit on the same address.
    pub media_ip: std::net::IpAddr,
}

/// Janus's ICE address from `GET /info` (`local-ip`), when it is a loopback address (the
/// tool binds next to it; anything else is not reachable the way the tool binds).
pub fn media_ip_of(info: &Value) -> Option<std::net::IpAddr> {
    let ip: std::net::IpAddr = info.get("local-ip")?.as_str()?.parse().ok()?;
    ip.is_loopback().then_some(ip)
}

/// The room-create request for a run.
pub fn create_room_request(room: u64, description: &str) -> Value {
    json!({
        "request": "create",
        "room": room,
        "description": description,
        "permanent": false,
        "is_private": true,
        "publishers": MAX_PUBLISHERS,
        "audiocodec": "opus",
        "videocodec": "vp8",
        // No REMB cap, no periodic PLIs: the publishers' pacing and keyframe interval rule.
        "bitrate": 0,
        "fir_freq": 0,
        "transport_wide_cc_ext": true,
        "notify_joining": false,
    })
}

impl JanusRun {
    /// Check Janus answers at `url`, create the run's room and start session keepalives.
    /// `substream`: the simulcast layer video viewers select (Some(1) for the middle layer).
    pub async fn start(
        url: &str,
        room_name: &str,
        substream: Option<u8>,
    ) -> Result<Arc<Self>, JanusError> {
        let client = Client::new(url)?;
        let info = client.info().await?;
        let media_ip = media_ip_of(&info).unwrap_or(client.addr().ip());
        let s = client.create_session().await?;
        let h = client.attach(s).await?;
        let room = 1 + (rand::random::<u64>() >> 12);
        let (r, _) = client
            .message(
                s,
                h,
                create_room_request(room, &format!("ils-load {room_name}")),
                None,
                "create room",
            )
            .await?;
        let got = r
            .plugin
            .as_ref()
            .and_then(|d| d.get("videoroom"))
            .and_then(Value::as_str);
        if got != Some("created") {
            return Err(JanusError::Missing {
                what: "create room",
                field: "\"videoroom\":\"created\"",
            });
        }
        let sessions = Arc::new(Mutex::new(vec![s]));
        let run = Arc::new(Self {
            client: client.clone(),
            admin: (s, h),
            room,
            feeds: Mutex::new(Vec::new()),
            sessions: sessions.clone(),
            keepalive: Mutex::new(None),
            substream,
            media_ip,
        });
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(KEEPALIVE_INTERVAL).await;
                let ids: Vec<u64> = sessions.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for_each_bounded(ids, |id| {
                    let c = client.clone();
                    async move {
                        let _ = c.keepalive(id).await;
                    }
                })
                .await;
            }
        });
        *run.keepalive.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(run)
    }

    fn track(&self, session: u64) -> Result<(), JanusError> {
        let mut g = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= MAX_SESSIONS {
            return Err(JanusError::TooManySessions);
        }
        g.push(session);
        Ok(())
    }

    /// Bring one endpoint up through Janus, then ICE/DTLS/SRTP like [`setup::connect`].
    pub async fn connect(&self, role: Role, audio_ssrc: u32) -> Result<Ready, JanusError> {
        let prep = setup::prepare(self.media_ip)?;
        let c = &self.client;
        let session = c.create_session().await?;
        if let Err(e) = self.track(session) {
            let _ = c.destroy(session).await;
            return Err(e);
        }
        let handle = c.attach(session).await?;
        let neg = match role {
            Role::Publisher { video } => {
                let (_, txn) = c
                    .message(
                        session,
                        handle,
                        json!({"request": "join", "ptype": "publisher", "room": self.room,
                               "display": format!("ils-load-{audio_ssrc}")}),
                        None,
                        "publisher join",
                    )
                    .await?;
                let joined = c
                    .wait_event(session, handle, &txn, "publisher join")
                    .await?;
                let feed = joined
                    .plugin
                    .as_ref()
                    .and_then(|d| d.get("id"))
                    .and_then(Value::as_u64)
                    .ok_or(JanusError::Missing {
                        what: "publisher join",
                        field: "plugindata.data.id",
                    })?;
                let offer = publisher_offer_for_janus(&prep.params, audio_ssrc, video);
                let jsep = Jsep {
                    kind: "offer".into(),
                    sdp: offer,
                };
                let (_, txn) = c
                    .message(
                        session,
                        handle,
                        json!({"request": "publish", "audio": true, "video": video}),
                        Some(&jsep),
                        "publish",
                    )
                    .await?;
                let _ = c.trickle_completed(session, handle).await;
                let ev = c.wait_event(session, handle, &txn, "publish").await?;
                let answer = ev
                    .jsep
                    .filter(|j| j.kind == "answer")
                    .ok_or(JanusError::Missing {
                        what: "publish",
                        field: "jsep answer",
                    })?;
                if let Ok(dir) = std::env::var("ILS_LOAD_JANUS_DUMP") {
                    let _ =
                        std::fs::write(format!("{dir}/janus-publisher-answer.sdp"), &answer.sdp);
                }
                self.feeds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(feed);
                Negotiated {
                    answer: sdp::parse_answer(&answer.sdp)?,
                    location: None,
                    token: None,
                    controlling: true,
                }
            }
            Role::Viewer { video } => {
                let feed = self
                    .feeds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .first()
                    .copied()
                    .ok_or(JanusError::NoFeed)?;
                let (_, txn) = c
                    .message(
                        session,
                        handle,
                        json!({"request": "join", "ptype": "subscriber", "room": self.room,
                               "streams": [{"feed": feed}]}),
                        None,
                        "subscriber join",
                    )
                    .await?;
                let ev = c
                    .wait_event(session, handle, &txn, "subscriber join")
                    .await?;
                let offer = ev
                    .jsep
                    .filter(|j| j.kind == "offer")
                    .ok_or(JanusError::Missing {
                        what: "subscriber join",
                        field: "jsep offer",
                    })?;
                if let Ok(dir) = std::env::var("ILS_LOAD_JANUS_DUMP") {
                    let _ = std::fs::write(format!("{dir}/janus-subscriber-offer.sdp"), &offer.sdp);
                }
                let parsed = sdp::parse_answer(&offer.sdp)?;
                let answer = viewer_answer(&offer.sdp, &prep.params, video)?;
                let jsep = Jsep {
                    kind: "answer".into(),
                    sdp: answer,
                };
                // Before `start`, so no packet of another layer is sent first.
                if let (true, Some(sub)) = (video, self.substream) {
                    if let Some(v) = parsed.media_of("video") {
                        let (_, txn) = c
                            .message(
                                session,
                                handle,
                                json!({"request": "configure",
                                       "streams": [{"mid": v.mid, "substream": sub}]}),
                                None,
                                "configure substream",
                            )
                            .await?;
                        c.wait_event(session, handle, &txn, "configure substream")
                            .await?;
                    }
                }
                let (_, txn) = c
                    .message(
                        session,
                        handle,
                        json!({"request": "start"}),
                        Some(&jsep),
                        "start",
                    )
                    .await?;
                c.wait_event(session, handle, &txn, "start").await?;
                Negotiated {
                    answer: parsed,
                    location: None,
                    token: None,
                    controlling: false,
                }
            }
        };
        ice_ready(&prep, &neg).await?;
        let ready = setup::establish(prep, neg, role, audio_ssrc).await?;
        if matches!(role, Role::Publisher { .. }) {
            // Viewers may subscribe only once Janus has set the publisher up.
            c.wait_webrtcup(session, handle).await?;
        }
        Ok(ready)
    }

    /// Stop keepalives, destroy every endpoint session, the room and the admin session.
    pub async fn finish(&self) {
        if let Some(t) = self
            .keepalive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
        let (admin_s, admin_h) = self.admin;
        let ids: Vec<u64> =
            std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .filter(|&s| s != admin_s)
                .collect();
        let c = self.client.clone();
        for_each_bounded(ids, |id| {
            let c = c.clone();
            async move {
                let _ = c.destroy(id).await;
            }
        })
        .await;
        let _ = c
            .message(
                admin_s,
                admin_h,
                json!({"request": "destroy", "room": self.room}),
                None,
                "destroy room",
            )
            .await;
        let _ = c.destroy(admin_s).await;
    }
}

/// Run ICE until Janus has a nominated pair, before [`setup::establish`] starts DTLS: Janus
/// (libnice) creates its DTLS server only when the component is ready, which needs its own
/// check to us answered (and, when we are controlled, its USE-CANDIDATE). A ClientHello sent
/// earlier is dropped and webrtc-dtls resends it only after 1 s, so without this wait every
/// join took > 1 s. `establish` then repeats one check (answered at once) and does DTLS.
async fn ice_ready(prep: &setup::Prepared, neg: &Negotiated) -> Result<(), JanusError> {
    let sock = tokio::net::UdpSocket::from_std(prep.socket.try_clone().map_err(SetupError::Io)?)
        .map_err(SetupError::Io)?;
    let server = neg.answer.candidate;
    let username = format!("{}:{}", neg.answer.ufrag, prep.params.ufrag);
    let key = ils_stun::integrity_key(neg.answer.pwd.as_bytes());
    let responder = setup::Responder::new(&prep.params.ufrag, &prep.params.pwd);
    let tie_breaker: u64 = rand::random();
    let deadline = tokio::time::Instant::now() + setup::CONNECT_TIMEOUT;
    let mut rto = setup::STUN_INITIAL_RTO;
    let mut sent: Vec<[u8; 12]> = Vec::new();
    let (mut checked, mut answered, mut nominated) = (false, false, false);
    let mut buf = [0u8; 1500];
    let mut reply = [0u8; ils_stun::MAX_BINDING_SUCCESS_LEN];
    // Janus started checking us while signaling went on; libnice has given up on those
    // transactions, so answering them proves nothing. Drop them; the checks counted below are
    // its retransmissions or the triggered checks our own checks cause.
    while sock.try_recv_from(&mut buf).is_ok() {}
    loop {
        if !checked && sent.len() < 64 {
            let txid: [u8; 12] = rand::random();
            sent.push(txid);
            let mut out = [0u8; 512];
            let n = setup::write_check(
                &mut out,
                &txid,
                username.as_bytes(),
                &key,
                tie_breaker,
                neg.controlling,
            )
            .map_err(|_| SetupError::IceError)?;
            sock.send_to(&out[..n], server)
                .await
                .map_err(SetupError::Io)?;
        }
        let until = (tokio::time::Instant::now() + rto).min(deadline);
        while let Ok(r) = tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
            let Ok((n, from)) = r else { continue };
            let Some(d) = buf.get(..n) else { continue };
            if from != server {
                continue;
            }
            if let Some(m) = responder.answer(d, from, &mut reply) {
                let _ = sock.send_to(&reply[..m], from).await;
                answered = true;
                nominated |= ils_stun::StunMessage::parse(d)
                    .map(|m| m.has_use_candidate())
                    .unwrap_or(false);
            } else {
                match setup::check_response(d, &key, &sent, prep.local) {
                    Some(true) => checked = true,
                    Some(false) => return Err(SetupError::IceError.into()),
                    None => {}
                }
            }
            let done = if neg.controlling {
                checked && answered
            } else {
                nominated
            };
            if done {
                return settle(&sock, server, &responder, &mut buf, &mut reply).await;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SetupError::IceTimeout.into());
        }
        rto = (rto * 2).min(setup::STUN_MAX_RTO);
    }
}

/// Keep answering Janus's checks for [`ICE_SETTLE`] before DTLS starts.
async fn settle(
    sock: &tokio::net::UdpSocket,
    server: std::net::SocketAddr,
    responder: &setup::Responder,
    buf: &mut [u8],
    reply: &mut [u8],
) -> Result<(), JanusError> {
    let until = tokio::time::Instant::now() + ICE_SETTLE;
    while let Ok(r) = tokio::time::timeout_at(until, sock.recv_from(buf)).await {
        let Ok((n, from)) = r else { continue };
        if from != server {
            continue;
        }
        if let Some(m) = buf.get(..n).and_then(|d| responder.answer(d, from, reply)) {
            let _ = sock.send_to(&reply[..m], from).await;
        }
    }
    Ok(())
}

async fn for_each_bounded<F, Fut>(ids: Vec<u64>, f: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(REQUEST_CONCURRENCY));
    let mut hs = Vec::with_capacity(ids.len());
    for id in ids {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let fut = f(id);
        hs.push(tokio::spawn(async move {
            fut.await;
            drop(permit);
        }));
    }
    for h in hs {
        let _ = h.await;
    }
}

/// The tool's publisher offer with `a=setup:active`: Janus answers `passive` and is the DTLS
/// server, as ils is, so the same webrtc-dtls client handshake runs.
pub fn publisher_offer_for_janus(p: &OfferParams, audio_ssrc: u32, video: bool) -> String {
    sdp::publisher_offer(p, audio_ssrc, video).replace("a=setup:actpass", "a=setup:active")
}

/// Largest offer [`viewer_answer`] accepts. Default 64 KiB ([`sdp::MAX_ANSWER_LEN`]).
pub const MAX_OFFER_LEN: usize = sdp::MAX_ANSWER_LEN;

/// Header extensions the viewer accepts when Janus offers them (echoed with Janus's ids).
pub const ACCEPTED_EXTENSIONS: [&str; 4] = [
    sdp::URI_MID,
    sdp::URI_ABS_SEND_TIME,
    sdp::URI_TWCC,
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
];

/// RTCP feedback the viewer accepts (it sends NACK, PLI and transport-cc).
const ACCEPTED_FB: [&str; 4] = ["nack", "nack pli", "transport-cc", "ccm fir"];

struct Section<'a> {
    kind: &'a str,
    proto: &'a str,
    fmts: Vec<&'a str>,
    port: &'a str,
    lines: Vec<&'a str>,
}

impl<'a> Section<'a> {
    fn attr(&self, name: &str) -> impl Iterator<Item = &'a str> + '_ {
        let p = format!("a={name}:");
        self.lines
            .iter()
            .filter_map(move |l| l.strip_prefix(p.as_str()))
    }

    fn has(&self, flag: &str) -> bool {
        self.lines
            .iter()
            .any(|l| l.strip_prefix("a=") == Some(flag))
    }

    /// (pt, "NAME/clock[/ch]") pairs.
    fn rtpmaps(&self) -> Vec<(&'a str, &'a str)> {
        self.attr("rtpmap")
            .filter_map(|v| v.split_once(' '))
            .collect()
    }

    fn pt_named(&self, name: &str) -> Option<&'a str> {
        self.rtpmaps()
            .into_iter()
            .find(|(pt, enc)| {
                self.fmts.contains(pt)
                    && enc
                        .split('/')
                        .next()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .map(|(pt, _)| pt)
    }

    fn rtx_for(&self, pt: &str) -> Option<&'a str> {
        let apt = format!("apt={pt}");
        self.attr("fmtp")
            .filter_map(|v| v.split_once(' '))
            .find(|(rtx, params)| {
                self.fmts.contains(rtx) && params.split(';').any(|kv| kv.trim() == apt)
            })
            .map(|(rtx, _)| rtx)
    }
}

/// A recv-only answer to Janus's subscriber offer: for each offered audio/video m-line the
/// first Opus / VP8 payload type (VP8's RTX too), the header extensions in
/// [`ACCEPTED_EXTENSIONS`] with Janus's ids, NACK/PLI/transport-cc feedback, `a=recvonly`,
/// `a=setup:active` (we are the DTLS client), our ICE credentials and host candidate on the
/// first m-line; everything else (data channels, video when `video` is false, other codecs)
/// is rejected with port 0. Bounded and panic-free on any input.
pub fn viewer_answer(offer: &str, p: &OfferParams, video: bool) -> Result<String, JanusError> {
    if offer.len() > MAX_OFFER_LEN {
        return Err(JanusError::Offer(format!(
            "larger than {MAX_OFFER_LEN} bytes"
        )));
    }
    let mut sections: Vec<Section> = Vec::new();
    for line in offer.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            if sections.len() >= sdp::MAX_MEDIA {
                return Err(JanusError::Offer(format!(
                    "more than {} m-lines",
                    sdp::MAX_MEDIA
                )));
            }
            let mut f = m.split_ascii_whitespace();
            let kind = f.next().unwrap_or("");
            let port = f.next().unwrap_or("0");
            let proto = f.next().unwrap_or("UDP/TLS/RTP/SAVPF");
            sections.push(Section {
                kind,
                proto,
                port,
                fmts: f.take(sdp::MAX_ENTRIES_PER_MEDIA).collect(),
                lines: Vec::new(),
            });
        } else if let Some(s) = sections.last_mut() {
            if s.lines.len() < 4 * sdp::MAX_ENTRIES_PER_MEDIA {
                s.lines.push(line);
            }
        }
    }
    if sections.is_empty() {
        return Err(JanusError::Offer("no m-lines".into()));
    }
    let ip = p.addr.ip();
    let mut body = String::new();
    let mut bundle: Vec<&str> = Vec::new();
    let mut accepted_any = false;
    for s in &sections {
        let mid = s.attr("mid").next().map(str::trim).unwrap_or("");
        if mid.is_empty() {
            return Err(JanusError::Offer(format!(
                "{} m-line without a=mid",
                s.kind
            )));
        }
        let codec = match s.kind {
            "audio" if s.port != "0" => s.pt_named("opus"),
            "video" if s.port != "0" && video => s.pt_named("VP8"),
            _ => None,
        };
        let Some(pt) = codec else {
            // Rejected m-line.
            let fmt = s.fmts.first().copied().unwrap_or("0");
            body.push_str(&format!(
                "m={} 0 {} {fmt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=inactive\r\n",
                s.kind, s.proto
            ));
            continue;
        };
        let rtx = (s.kind == "video").then(|| s.rtx_for(pt)).flatten();
        let first = !accepted_any;
        accepted_any = true;
        bundle.push(mid);
        let port = if first { p.addr.port() } else { 9 };
        let fmts = match rtx {
            Some(r) => format!("{pt} {r}"),
            None => pt.to_owned(),
        };
        body.push_str(&format!(
            "m={} {port} UDP/TLS/RTP/SAVPF {fmts}\r\nc=IN IP4 {ip}\r\na=rtcp:9 IN IP4 0.0.0.0\r\n",
            s.kind
        ));
        if first {
            body.push_str(&format!(
                "a=candidate:2222914159 1 udp 2122260223 {ip} {} typ host generation 0\r\na=end-of-candidates\r\n",
                p.addr.port()
            ));
        }
        body.push_str(&format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:sha-256 {}\r\na=setup:active\r\na=mid:{mid}\r\n",
            p.ufrag, p.pwd, p.fingerprint
        ));
        for e in s.attr("extmap") {
            let Some((id, rest)) = e.split_once(' ') else {
                continue;
            };
            let uri = rest.split_ascii_whitespace().next().unwrap_or("");
            let id = id.split('/').next().unwrap_or("");
            if id.parse::<u8>().is_ok() && ACCEPTED_EXTENSIONS.contains(&uri) {
                body.push_str(&format!("a=extmap:{id} {uri}\r\n"));
            }
        }
        let dir = if s.has("sendonly") || s.has("sendrecv") {
            "recvonly"
        } else {
            "inactive"
        };
        body.push_str(&format!("a={dir}\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"));
        for (q, enc) in s.rtpmaps() {
            if q != pt && Some(q) != rtx {
                continue;
            }
            body.push_str(&format!("a=rtpmap:{q} {enc}\r\n"));
            for fb in s.attr("rtcp-fb") {
                if let Some((fpt, kind)) = fb.split_once(' ') {
                    if fpt == q && ACCEPTED_FB.contains(&kind.trim()) {
                        body.push_str(&format!("a=rtcp-fb:{q} {}\r\n", kind.trim()));
                    }
                }
            }
            for f in s.attr("fmtp") {
                if f.split_once(' ').is_some_and(|(fpt, _)| fpt == q) {
                    body.push_str(&format!("a=fmtp:{f}\r\n"));
                }
            }
        }
    }
    if !accepted_any {
        return Err(JanusError::Offer(
            "no Opus or VP8 m-line to receive (is the publisher sending?)".into(),
        ));
    }
    let mut out = format!(
        "v=0\r\no=- {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\na=msid-semantic: WMS\r\n",
        p.session_id,
        bundle.join(" ")
    );
    out.push_str(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = include_str!("../tests/fixtures/janus-1.1.2-subscriber-offer.sdp");
    const PUB_ANSWER: &str = include_str!("../tests/fixtures/janus-1.1.2-publisher-answer.sdp");

    fn params() -> OfferParams {
        OfferParams {
            ufrag: "myufrag1".into(),
            pwd: "mypassword0123456789abcd".into(),
            fingerprint: "AA:BB:CC".into(),
            addr: "127.0.0.2:41000".parse().unwrap(),
            session_id: 42,
            stream_id: "stream".into(),
        }
    }

    const EVENT: &str = r#"{"janus":"event","session_id":1,"sender":77,"transaction":"t1","plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"attached","room":5,"streams":[]}},"jsep":{"type":"offer","sdp":"v=0\r\n"}}"#;

    #[test]
    fn parses_replies_and_events() {
        let r = parse_reply(
            r#"{"janus":"success","transaction":"abc","data":{"id":8406034225728655}}"#,
            "create session",
        )
        .unwrap();
        assert_eq!(r.kind, "success");
        assert_eq!(r.transaction.as_deref(), Some("abc"));
        assert_eq!(r.id, Some(8406034225728655));

        let evs = parse_events(
            &format!("[{EVENT},{{\"janus\":\"webrtcup\",\"sender\":77}}]"),
            "poll",
        )
        .unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].sender, Some(77));
        assert_eq!(
            evs[0].jsep,
            Some(Jsep {
                kind: "offer".into(),
                sdp: "v=0\r\n".into()
            })
        );
        assert_eq!(
            evs[0].plugin.as_ref().and_then(|d| d["videoroom"].as_str()),
            Some("attached")
        );
        assert_eq!(evs[1].kind, "webrtcup");
        // A single object is one event.
        assert_eq!(parse_events(EVENT, "poll").unwrap().len(), 1);
    }

    #[test]
    fn janus_and_plugin_errors_are_typed() {
        let e = parse_reply(
            r#"{"janus":"error","transaction":"x","error":{"code":458,"reason":"No such session 1"}}"#,
            "attach",
        )
        .unwrap_err();
        assert!(
            matches!(&e, JanusError::Janus { code: 458, reason, .. } if reason == "No such session 1"),
            "{e}"
        );
        let d: Value = serde_json::from_str(
            r#"{"videoroom":"event","error_code":426,"error":"No such room (1234)"}"#,
        )
        .unwrap();
        let e = plugin_error(&d, "subscriber join").unwrap();
        assert!(matches!(e, JanusError::Plugin { code: 426, .. }));
        assert!(e.to_string().contains("No such room"));
        let ok: Value = serde_json::from_str(r#"{"videoroom":"joined","id":3}"#).unwrap();
        assert!(plugin_error(&ok, "join").is_none());
        // Long reasons are cut.
        let long = format!(
            r#"{{"janus":"error","error":{{"code":1,"reason":"{}"}}}}"#,
            "x".repeat(5000)
        );
        match parse_reply(&long, "x") {
            Err(JanusError::Janus { reason, .. }) => assert_eq!(reason.len(), MAX_REASON),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_and_truncated_json_are_errors() {
        for n in 0..EVENT.len() {
            assert!(parse_events(&EVENT[..n], "poll").is_err(), "prefix {n}");
            assert!(parse_reply(&EVENT[..n], "poll").is_err(), "prefix {n}");
        }
        for bad in [
            "",
            "null",
            "42",
            "\"janus\"",
            "[1,2]",
            "{}",
            r#"{"janus":7}"#,
            r#"{"janus":"event","jsep":{"type":"offer"}}"#,
            r#"{"janus":"event","jsep":{"sdp":5,"type":"offer"}}"#,
        ] {
            assert!(parse_events(bad, "poll").is_err(), "{bad}");
        }
        // Deep nesting hits serde_json's recursion limit: an error, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            parse_events(&deep, "poll"),
            Err(JanusError::Json { .. })
        ));
        // More events than asked for.
        let many = format!("[{}]", vec![EVENT; MAX_EVENTS_PER_POLL + 1].join(","));
        assert!(matches!(
            parse_events(&many, "poll"),
            Err(JanusError::Json { .. })
        ));
        // Wrong types in optional fields are ignored, not trusted.
        let r = parse_reply(r#"{"janus":"success","data":{"id":"12"},"sender":-1}"#, "x").unwrap();
        assert_eq!((r.id, r.sender), (None, None));
    }

    #[test]
    fn dechunks_libmicrohttpd_bodies() {
        let json =
            r#"{"janus": "success", "transaction": "abc", "data": {"id": 6768197058069783}}"#;
        let owned = format!("{:x}\r\n{json}\r\n0\r\n\r\n", json.len());
        let raw = owned.as_str();
        let body = dechunk(raw).unwrap();
        assert_eq!(parse_reply(&body, "x").unwrap().id, Some(6768197058069783));
        assert_eq!(
            dechunk("3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some("abcde")
        );
        for n in 0..raw.len() - 4 {
            assert_eq!(dechunk(&raw[..n]), None, "prefix {n}");
        }
        for bad in [
            "zz\r\nabc\r\n0\r\n\r\n",
            "ffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            "ffffffffffffffffffff\r\n",
            "3\r\nabcd\r\n0\r\n\r\n",
        ] {
            assert_eq!(dechunk(bad), None, "{bad}");
        }
    }

    #[test]
    fn answers_a_real_janus_subscriber_offer() {
        let p = params();
        let a = viewer_answer(OFFER, &p, true).unwrap();
        for needle in [
            "a=group:BUNDLE 0 1\r\n",
            "m=audio 41000 UDP/TLS/RTP/SAVPF 111\r\n",
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n",
            "a=candidate:2222914159 1 udp 2122260223 127.0.0.2 41000 typ host",
            "a=ice-ufrag:myufrag1\r\n",
            "a=ice-pwd:mypassword0123456789abcd\r\n",
            "a=fingerprint:sha-256 AA:BB:CC\r\n",
            "a=rtpmap:111 opus/48000/2\r\n",
            "a=fmtp:111 useinbandfec=1\r\n",
            "a=rtpmap:96 VP8/90000\r\n",
            "a=rtcp-fb:96 nack pli\r\n",
            "a=rtcp-fb:96 transport-cc\r\n",
            "a=rtpmap:97 rtx/90000\r\n",
            "a=fmtp:97 apt=96\r\n",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
            "a=rtcp-mux\r\n",
        ] {
            assert!(a.contains(needle), "{needle:?} missing in\n{a}");
        }
        assert_eq!(a.matches("a=setup:active").count(), 2);
        assert_eq!(a.matches("a=recvonly").count(), 2);
        assert_eq!(a.matches("a=mid:").count(), 2);
        assert!(!a.contains("actpass"));
        assert!(
            !a.contains("goog-remb"),
            "not offered back: we send no REMB"
        );
        assert!(!a.contains("playout-delay"));
        assert!(!a.contains("a=ssrc"), "a recv-only answer signals no SSRCs");
        assert!(a.lines().all(|l| !l.is_empty()));
        assert!(a.ends_with("\r\n"));

        // What the I/O thread learns from the same offer: Janus's SSRCs, RTX, twcc id.
        let o = sdp::parse_answer(OFFER).unwrap();
        assert_eq!(o.candidate.ip().to_string(), "127.0.0.2");
        assert_eq!(
            o.media_of("video").unwrap().media_ssrc(),
            Some((245692372, Some(1511118176)))
        );
        assert_eq!(
            o.media_of("audio").unwrap().media_ssrc(),
            Some((771715763, None))
        );
        assert_eq!(o.media_of("video").unwrap().ext_id(sdp::URI_TWCC), Some(3));
    }

    #[test]
    fn audio_only_viewer_rejects_video() {
        let a = viewer_answer(OFFER, &params(), false).unwrap();
        assert!(a.contains("a=group:BUNDLE 0\r\n"));
        assert!(a.contains("m=video 0 UDP/TLS/RTP/SAVPF 96\r\n"));
        assert!(a.contains("a=inactive"));
        assert!(!a.contains("VP8"));
    }

    #[test]
    fn unanswerable_offers_are_errors() {
        let p = params();
        assert!(matches!(
            viewer_answer("", &p, true),
            Err(JanusError::Offer(_))
        ));
        let no_mid = OFFER.replace("a=mid:", "a=xmid:");
        assert!(matches!(
            viewer_answer(&no_mid, &p, true),
            Err(JanusError::Offer(_))
        ));
        let h264 = OFFER
            .replace("opus/48000/2", "PCMU/8000")
            .replace("VP8/90000", "H264/90000");
        assert!(matches!(
            viewer_answer(&h264, &p, true),
            Err(JanusError::Offer(_))
        ));
        let data = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n";
        assert!(matches!(
            viewer_answer(data, &p, true),
            Err(JanusError::Offer(_))
        ));
        let big = "a".repeat(MAX_OFFER_LEN + 1);
        assert!(viewer_answer(&big, &p, true).is_err());
        let many = "m=audio 9 x 111\r\na=mid:0\r\n".repeat(sdp::MAX_MEDIA + 1);
        assert!(viewer_answer(&many, &p, true).is_err());
        for n in 0..OFFER.len() {
            let _ = viewer_answer(&OFFER[..n], &p, true);
        }
    }

    #[test]
    fn publisher_side() {
        let o = publisher_offer_for_janus(&params(), 7, true);
        assert!(o.contains("a=setup:active"));
        assert!(!o.contains("actpass"));
        assert!(o.contains("a=simulcast:send q;h;f"));
        // Janus's real answer to that offer: what the publisher's I/O needs is there.
        let a = sdp::parse_answer(PUB_ANSWER).unwrap();
        let v = a.media_of("video").unwrap();
        assert_eq!(v.ext_id(sdp::URI_RID), Some(sdp::EXT_RID));
        assert_eq!(v.ext_id(sdp::URI_MID), Some(sdp::EXT_MID));
        assert_eq!(v.pt_of("VP8"), Some(sdp::PT_VP8));
        assert_eq!(
            a.media_of("audio").unwrap().pt_of("opus"),
            Some(sdp::PT_OPUS)
        );
        assert!(PUB_ANSWER.contains("a=setup:passive"));
    }

    #[test]
    fn room_request_and_media_ip() {
        let r = create_room_request(9, "x");
        assert_eq!(r["publishers"], 25);
        assert_eq!(r["videocodec"], "vp8");
        assert_eq!(r["audiocodec"], "opus");
        let info: Value = serde_json::from_str(r#"{"local-ip":"127.0.0.2"}"#).unwrap();
        assert_eq!(media_ip_of(&info), Some("127.0.0.2".parse().unwrap()));
        let public: Value = serde_json::from_str(r#"{"local-ip":"192.0.2.2"}"#).unwrap();
        assert_eq!(media_ip_of(&public), None);
        assert_eq!(media_ip_of(&Value::Null), None);
        assert!(Client::new("ftp://x").is_err());
        assert_eq!(Client::new("http://127.0.0.1:8088").unwrap().root, "/janus");
        assert_eq!(
            Client::new("http://127.0.0.1:8088/janus/").unwrap().root,
            "/janus"
        );
    }

    /// A scripted Janus: answers each connection with the next canned (status, body) as a
    /// chunked HTTP/1.1 response, like libmicrohttpd does. Returns the URL.
    async fn fake_janus(script: Vec<(u16, String)>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/janus", l.local_addr().unwrap());
        tokio::spawn(async move {
            for (status, body) in script {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test]
    async fn client_against_a_scripted_janus() {
        let url = fake_janus(vec![
            (200, r#"{"janus":"success","transaction":"a","data":{"id":11}}"#.into()),
            (200, r#"{"janus":"success","transaction":"b","data":{"id":22}}"#.into()),
            // Long-poll: an unrelated handle's event, a webrtcup, then ours with an error.
            (
                200,
                r#"[{"janus":"event","sender":99,"transaction":"t"},{"janus":"webrtcup","sender":22}]"#
                    .into(),
            ),
            (
                200,
                r#"[{"janus":"event","sender":22,"transaction":"t","plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","error_code":428,"error":"No such feed (5)"}}}]"#
                    .into(),
            ),
            (404, "Not found".into()),
            (200, r#"{"janus":"hangup","sender":22,"reason":"DTLS alert"}"#.into()),
        ])
        .await;
        let c = Client::new(&url).unwrap();
        assert_eq!(c.create_session().await.unwrap(), 11);
        assert_eq!(c.attach(11).await.unwrap(), 22);
        match c.wait_event(11, 22, "t", "subscriber join").await {
            Err(JanusError::Plugin {
                code: 428, reason, ..
            }) => {
                assert!(reason.contains("No such feed"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.keepalive(11).await,
            Err(JanusError::Status { status: 404, .. })
        ));
        assert!(matches!(
            c.wait_webrtcup(11, 22).await,
            Err(JanusError::Hangup { .. })
        ));
        // Nothing listens: the error says how to start Janus.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let c = Client::new(&format!("http://127.0.0.1:{port}/janus")).unwrap();
        let e = c.info().await.unwrap_err();
        assert!(matches!(e, JanusError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("bench/peers/janus/start.sh"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_json_text_never_panics(s in ".{0,400}") {
            let _ = parse_events(&s, "poll");
            let _ = parse_reply(&s, "x");
            let _ = dechunk(&s);
        }
        #[test]
        fn arbitrary_offers_never_panic(lines in proptest::collection::vec("(m=|a=)[a-zA-Z0-9:/ =;.-]{0,40}", 0..60)) {
            let _ = viewer_answer(&lines.join("\r\n"), &params(), true);
        }
    }
}
