//! `ils-load`: simulated WebRTC publishers and viewers that a server cannot tell from
//! browsers (WHIP/WHEP offers shaped like Chromium's, ICE checks and consent, a webrtc-dtls
//! client, SRTP with the negotiated profile), driven by one pinned I/O thread without
//! per-packet allocation, measuring SFU-added latency, loss and the server's CPU cost.
//!
//! Modules: [`sdp`] offers/answers, [`http`] signaling client, [`setup`] handshakes,
//! [`janus`] the Janus videoroom adapter, [`media`] synthetic Opus/VP8 with probes, [`io`] the data path, [`proc`] CPU/RSS from
//! /proc, [`run`] scenarios and reports, [`ws`] the `/ws` audience scenario.

#![warn(missing_docs)]

pub mod http;
pub mod io;
pub mod janus;
pub mod media;
pub mod proc;
pub mod report;
pub mod run;
pub mod sdp;
pub mod setup;
pub mod ws;

pub use run::{run, RunConfig, RunResult, Scenario, TargetKind};
