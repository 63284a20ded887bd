//! Sans-IO interactive live streaming sessions (issue 5): roles, green room, stage, chat, polls,
//! reactions, raised hands, app messages, and the `/ws` protocol message types.
//!
//! * [`proto`]: the wire types (`docs/protocol.md` is their description) and [`parse_client`].
//! * [`session`]: the [`Session`] state machine. It never reads a clock or touches a socket:
//!   every input takes `now_ms`, every output is an [`Outcome`] of [`Out`] messages addressed to
//!   recipient classes ([`To`]) plus [`Effect`]s for the transport.

pub mod proto;
mod rate;
pub mod session;

pub use proto::*;
pub use session::*;

#[cfg(test)]
mod tests;
