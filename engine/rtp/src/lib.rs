//! Sans-IO RTP/RTCP for the ils engine: zero-copy header views, header-extension rewriting,
//! codec keyframe detection, per-subscriber leg rewriting (SSRC/seq/timestamp/VP8 ids),
//! RTCP parsing/writing, NACK generation, retransmission cache, keyframe-request coalescing
//! and transport-wide congestion-control feedback.
//!
//! Nothing here reads a clock or touches a socket: callers pass `now`.

pub mod codec;
pub mod ext;
pub mod header;
pub mod leg;
pub mod vp8;

pub mod keyframe_req;
pub mod nack;
pub mod rtcp;
pub mod rtx;
pub mod twcc;
