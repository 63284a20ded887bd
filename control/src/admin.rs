//! The admin HTTP API for embedding: drive ILS sessions without a WebSocket. Every request
//! carries `Authorization: Bearer <token>` for the session's room with the `admin` grant
//! (producer tokens have it by default). Errors are an HTTP status and a one-line reason.
//!
//! | request | does |
//! | --- | --- |
//! | `POST /api/sessions/{room}` | create the session (kept while empty); 201, 409 if running |
//! | `DELETE /api/sessions/{room}` | end it (everyone gets `ended`, sockets close); 200 |
//! | `GET /api/sessions/{room}/participants?cursor=&limit=` | stage, green room, producers in full; audience count and one page of the audience |
//! | `POST /api/sessions/{room}/participants/{id}/move` `{"to": "stage"}` | move |
//! | `POST /api/sessions/{room}/participants/{id}/mute` `{"audio": true, "video": false}` | mute |
//! | `POST /api/sessions/{room}/participants/{id}/remove` `{"reason": ".."}` | remove |
//! | `POST /api/sessions/{room}/app` `{"to": {"all": true}, "data": {..}}` | app message |
//!
//! Actions go through `Session::admin` (the same checks as a producer's `/ws` message) and
//! their effects (media plan, disconnects) through the `/ws` transport.

// Handlers return a ready `Response` as their error: refusals are the cold path.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ils_session::{AppTarget, ClientMsg, ErrorCode, Pid, Place};
use serde::Deserialize;

use crate::auth;
use crate::http::{text, App};
use crate::ws::{run_outcome, Hub, HubError, IlsRoom};

/// Default audience page size of `GET .../participants`. Default 100.
pub const DEFAULT_PAGE: u32 = 100;

/// HTTP status for a session refusal code.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadMessage | ErrorCode::UnsupportedVersion => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized | ErrorCode::NotJoined => StatusCode::UNAUTHORIZED,
        ErrorCode::NotAllowed | ErrorCode::Removed => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict | ErrorCode::StageFull | ErrorCode::LimitReached => {
            StatusCode::CONFLICT
        }
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::SessionFull | ErrorCode::Lagged => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Ended => StatusCode::GONE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The admin routes (merged into the main router).
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/api/sessions/{room}",
            post(create_session).delete(end_session),
        )
        .route("/api/sessions/{room}/participants", get(participants))
        .route(
            "/api/sessions/{room}/participants/{id}/{action}",
            post(participant_action),
        )
        .route("/api/sessions/{room}/app", post(app_message))
}

/// Bearer token for `room` with the admin grant, else 401/403 with the reason.
fn admin_auth(app: &App, headers: &HeaderMap, room: &str) -> Result<auth::Claims, Response> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims = auth::bearer(h)
        .and_then(|t| auth::verify(&app.secret, t, crate::http::now_unix_secs()))
        .and_then(|c| auth::check_room(&c, room).map(|_| c))
        .map_err(|e| {
            let mut r = text(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
                e.to_string(),
            );
            if e.status() == 401 {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            r
        })?;
    if !claims.has(auth::Grant::Admin) {
        return Err(text(
            StatusCode::FORBIDDEN,
            "this token has no admin grant: use a producer token or one minted with --grants admin",
        ));
    }
    Ok(claims)
}

fn session_of(app: &App, room: &str) -> Result<Arc<IlsRoom>, Response> {
    app.ils
        .get(room)
        .ok_or_else(|| text(StatusCode::NOT_FOUND, format!("no session {room:?}")))
}

/// The session of `room` for an authorized admin request: [`admin_auth`], then [`session_of`].
fn admin_session(app: &App, headers: &HeaderMap, room: &str) -> Result<Arc<IlsRoom>, Response> {
    admin_auth(app, headers, room)?;
    session_of(app, room)
}

async fn create_session(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin_auth(&app, &headers, &room) {
        return r;
    }
    if !crate::http::valid_room_name(&room) {
        return text(
            StatusCode::BAD_REQUEST,
            "session names are 1-64 characters of A-Z a-z 0-9 - _ .",
        );
    }
    match Hub::create(&app, &room).await {
        Ok(_) => (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({ "room": room })),
        )
            .into_response(),
        Err(e @ HubError::Exists) => text(StatusCode::CONFLICT, e.to_string()),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn end_session(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let s = match admin_session(&app, &headers, &room) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut core = s.core_lock().await;
    if core.session.is_ended() {
        return text(StatusCode::GONE, "the session has already ended");
    }
    let o = core.session.end("ended by the server");
    drop(core);
    run_outcome(&app, &s, o).await;
    StatusCode::OK.into_response()
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    cursor: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
}

async fn participants(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let s = match admin_session(&app, &headers, &room) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > ils_session::MAX_PAGE_ITEMS {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "limit must be 1..={} (default {DEFAULT_PAGE})",
                ils_session::MAX_PAGE_ITEMS
            ),
        );
    }
    let core = s.core_lock().await;
    let all = core.session.participants();
    let at = |p: Place| all.iter().filter(|i| i.place == p).collect::<Vec<_>>();
    let (items, next) = core.session.audience_page(q.cursor, limit);
    axum::Json(serde_json::json!({
        "room": room,
        "ended": core.session.is_ended(),
        "stage": at(Place::Stage),
        "green_room": at(Place::GreenRoom),
        "producers": at(Place::Backstage),
        "audience_count": core.session.audience_count(),
        "audience": { "items": items, "next_cursor": next },
    }))
    .into_response()
}

#[derive(Deserialize)]
struct MoveBody {
    to: Place,
}

#[derive(Deserialize)]
struct MuteBody {
    #[serde(default)]
    audio: Option<bool>,
    #[serde(default)]
    video: Option<bool>,
}

#[derive(Deserialize)]
struct RemoveBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct AppBody {
    to: AppTarget,
    data: serde_json::Value,
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, Response> {
    let b: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(b).map_err(|e| {
        text(
            StatusCode::BAD_REQUEST,
            format!("body must be JSON {what} ({e})"),
        )
    })
}

async fn admin_action(app: &Arc<App>, room: &str, msg: ClientMsg) -> Response {
    let s = match session_of(app, room) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut core = s.core_lock().await;
    let r = core.session.admin(s.now_ms(), msg);
    drop(core);
    match r {
        Ok(o) => {
            run_outcome(app, &s, o).await;
            StatusCode::OK.into_response()
        }
        Err(e) => text(status_for(e.code), format!("{}: {}", e.code, e.reason)),
    }
}

async fn participant_action(
    State(app): State<Arc<App>>,
    Path((room, id, action)): Path<(String, u64, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admin_auth(&app, &headers, &room) {
        return r;
    }
    let participant = Pid(id);
    let msg = match action.as_str() {
        "move" => {
            match json_body::<MoveBody>(&body, r#"{"to": "audience"|"green_room"|"stage"}"#) {
                Ok(b) => ClientMsg::Move {
                    participant,
                    to: b.to,
                },
                Err(r) => return r,
            }
        }
        "mute" => match json_body::<MuteBody>(&body, r#"{"audio"?: bool, "video"?: bool}"#) {
            Ok(b) => ClientMsg::Mute {
                participant,
                audio: b.audio,
                video: b.video,
            },
            Err(r) => return r,
        },
        "remove" => match json_body::<RemoveBody>(&body, r#"{"reason"?: string}"#) {
            Ok(b) => ClientMsg::Remove {
                participant,
                reason: b.reason,
            },
            Err(r) => return r,
        },
        other => {
            return text(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}: move, mute or remove"),
            )
        }
    };
    admin_action(&app, &room, msg).await
}

async fn app_message(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admin_auth(&app, &headers, &room) {
        return r;
    }
    let b = match json_body::<AppBody>(
        &body,
        r#"{"to": {"all": true}|{"role": "host"}|{"participant": 7}, "data": <json>}"#,
    ) {
        Ok(b) => b,
        Err(r) => return r,
    };
    admin_action(
        &app,
        &room,
        ClientMsg::App {
            to: b.to,
            data: b.data,
        },
    )
    .await
}
