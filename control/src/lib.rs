//! ils control: signaling (WHIP/WHEP), SDP negotiation, DTLS, rooms and roles. Drives the
//! `ils-engine` data plane over the shared-memory contract (`docs/shm-contract.md`).
//!
//! * [`config`]: settings from flags, `ILS_*` environment variables and a TOML file.
//! * [`auth`]: JWT (HS256) tokens with room/role/identity claims.
//! * [`sdp`]: sans-IO offer parsing (with limits) and answer generation for WHIP and WHEP.
//! * [`dtls`]: the DTLS driver (webrtc-dtls over datagrams relayed through the engine).
//! * [`engine_link`]: spawning/attaching/supervising the engine; commands and events.
//! * [`room`]: sans-IO room state: publishers, viewers, tracks, legs.
//! * [`http`]: the HTTP API (WHIP, WHEP, rooms, metrics, demo page).
//! * [`ws`]: `GET /ws`, the interactive live streaming session transport (issue 5).
//! * [`admin`]: the admin HTTP API driving ILS sessions (`/api/sessions/...`).

pub mod admin;
pub mod auth;
pub mod config;
pub mod dtls;
pub mod engine_link;
pub mod http;
pub mod room;
pub mod sdp;
pub mod ws;
