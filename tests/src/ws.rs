//! Shared pieces of the end-to-end tests that drive the real `ils-control` binary: a `/ws` client
//! that keeps every message it read, token issuing, and the SDP helpers the independent webrtc-rs
//! [`TestPeer`] needs to offer to (and connect with) the engine.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ils_control::auth::{self, Claims, Grant, Role, Secret};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::http::now_unix as now;
use crate::TestPeer;

/// How long [`Client::expect`] waits for a message. Default 5 s: a loaded CI machine still
/// answers well within it, and a missing message fails the test in bounded time.
pub const EXPECT_WAIT: Duration = Duration::from_secs(5);

/// The `sdes:mid` header extension id every offer built by [`transport`] declares.
pub const MID_EXT: u8 = 4;

/// The WebSocket stream type of a [`Client`].
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A token for `identity` (display name: the identity upper-cased) in `room`, valid for 10
/// minutes, signed with `secret`.
pub fn token(
    secret: &str,
    room: &str,
    role: Role,
    identity: &str,
    grants: Option<Vec<Grant>>,
) -> String {
    auth::issue_claims(
        &Secret::from_str(secret),
        &Claims {
            room: room.into(),
            role,
            identity: Some(identity.into()),
            exp: now() + 600,
            iat: Some(now()),
            grants,
            name: Some(identity.to_uppercase()),
        },
    )
}

/// A `/ws` client that keeps every message it read.
pub struct Client {
    /// The socket.
    pub ws: Ws,
    /// Every JSON message read so far (printed when an expectation fails).
    pub seen: Vec<Value>,
    /// The server's close code and reason, once it closed the socket.
    pub closed: Option<(u16, String)>,
}

impl Client {
    /// Open `ws://addr/ws` (no `hello` yet).
    pub async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("websocket upgrade");
        Client {
            ws,
            seen: Vec::new(),
            closed: None,
        }
    }

    /// Send `v` as one text frame.
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    /// Next JSON message within `wait`, or `None` (timeout or close; a close is recorded).
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("server sends JSON");
                    self.seen.push(v.clone());
                    return Some(v);
                }
                Ok(Message::Close(f)) => {
                    self.closed = Some(
                        f.map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The first message of type `t` (matching `pred`) within [`EXPECT_WAIT`]; panics otherwise.
    pub async fn expect(&mut self, t: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.expect_within(t, pred, EXPECT_WAIT).await
    }

    /// The first message of type `t` (matching `pred`) within `wait`; panics otherwise (also
    /// when the server closes the socket first).
    pub async fn expect_within(
        &mut self,
        t: &str,
        pred: impl Fn(&Value) -> bool,
        wait: Duration,
    ) -> Value {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(v) = self.next(Duration::from_millis(200)).await {
                if v["type"] == t && pred(&v) {
                    return v;
                }
            } else if self.closed.is_some() {
                break;
            }
        }
        panic!(
            "no {t} message within {wait:?}; closed {:?}; seen {:#?}",
            self.closed, self.seen
        );
    }

    /// Read until the server closes (at most [`EXPECT_WAIT`]); the close code and reason.
    pub async fn close_frame(&mut self) -> (u16, String) {
        let deadline = Instant::now() + EXPECT_WAIT;
        while self.closed.is_none() && Instant::now() < deadline {
            self.next(Duration::from_millis(200)).await;
        }
        self.closed.clone().expect("server closed the socket")
    }
}

/// Connect, send `hello` with `tok` (rid `h`) and wait for the `welcome` (returned).
pub async fn join(addr: SocketAddr, tok: &str) -> (Client, Value) {
    let mut c = Client::connect(addr).await;
    c.send(json!({"type": "hello", "v": 1, "token": tok, "rid": "h"}))
        .await;
    let w = c.expect("welcome", |_| true).await;
    assert_eq!(w["rid"], "h");
    (c, w)
}

/// First `a=<name>:` value in an SDP or sdpfrag; panics when there is none.
pub fn attr(sdp: &str, name: &str) -> String {
    let p = format!("a={name}:");
    sdp.lines()
        .find_map(|l| l.strip_prefix(&p))
        .unwrap_or_else(|| panic!("no a={name} in {sdp}"))
        .trim()
        .to_string()
}

/// The (ip, port) of the first host candidate.
pub fn candidate(sdp: &str) -> SocketAddr {
    let c = attr(sdp, "candidate");
    let f: Vec<&str> = c.split_whitespace().collect();
    format!("{}:{}", f[4], f[5])
        .parse()
        .expect("candidate address")
}

/// The transport lines of one m-section offered by `peer` (candidate, ICE credentials, DTLS
/// fingerprint, rtcp-mux and the [`MID_EXT`] extension).
pub fn transport(peer: &TestPeer, ufrag: &str, pwd: &str) -> String {
    let a = peer.local_addr();
    format!(
        "c=IN IP4 {ip}\r\na=candidate:1 1 udp 2122260223 {ip} {port} typ host\r\n\
         a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=fingerprint:sha-256 {fp}\r\na=setup:actpass\r\n\
         a=rtcp-mux\r\na=extmap:{MID_EXT} urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
        ip = a.ip(),
        port = a.port(),
        fp = peer.certificate_fingerprint()
    )
}

/// ICE + DTLS from `peer` to the engine address and credentials of `answer`.
pub async fn connect_peer(peer: &mut TestPeer, answer: &str) {
    peer.connect(
        candidate(answer),
        &attr(answer, "ice-ufrag"),
        &attr(answer, "ice-pwd"),
    )
    .await
    .expect("ICE + DTLS with the engine");
}
