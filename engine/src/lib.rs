//! ils engine: a thread-per-core, shared-nothing SRTP forwarding data plane.
//!
//! * [`core`]: the sans-IO state machine of one shard (tables, datagram path, commands, timers).
//! * [`shard`]: the OS thread around a core (socket, rings, wake-ups).
//! * [`xshard`]: cross-shard queues and reference-counted packet buffers.
//! * [`engine`]: process start-up (region, shards, the control attach socket).
//!
//! See `docs/engine.md` for the design and `docs/shm-contract.md` for the control contract.

pub mod cli;
pub mod core;
pub mod counters;
pub mod engine;
pub mod fuzz;
pub mod shard;
pub mod xshard;
