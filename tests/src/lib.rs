//! Shared helpers for cross-process tests: independent WebRTC peers built from webrtc-rs
//! (not our own protocol code), a DTLS-over-channels driver for the test control plane, and
//! process/port helpers.

pub mod control;
pub mod dtls;
pub mod http;
pub mod load;
pub mod peer;
pub mod proc;
pub mod scenario;
pub mod ws;

pub use dtls::{
    dtls_client_conn, dtls_server, dtls_server_conn, fingerprint, generate_cert, ChannelConn,
    ChannelEnds, DtlsError, DtlsOutcome,
};
pub use peer::{PeerError, PeerStats, TestPeer};
pub use proc::{free_udp_port_range, try_free_udp_port_range, workspace_bin, ChildGuard};
