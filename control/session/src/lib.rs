//! Sans-IO interactive live streaming sessions (issue 5): roles, green room, stage, chat, polls,
//! reactions, raised hands, app messages, and the `/ws` protocol message types.
//!
//! [`proto`] holds the wire types (`docs/protocol.md` is their description).

pub mod proto;

pub use proto::*;
