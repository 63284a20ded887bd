//! Per-shard engine counters in shared memory and the [`Counter`] catalogue.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counter slots per shard. Bounds the counter block to `MAX_COUNTERS * 8` = 2 KiB per shard
/// (128 KiB at `MAX_SHARDS`). New counters take new discriminants; existing ones never move.
pub const MAX_COUNTERS: usize = 256;

/// Per-shard engine counters in shared memory. The engine stores with `Relaxed` (it is the only
/// writer of its shard's block); control loads. Indexed by [`Counter`].
#[repr(C, align(128))]
pub struct ShardCounters {
    slots: [AtomicU64; MAX_COUNTERS],
}

impl ShardCounters {
    /// Add `n` (wrapping) to counter `c`.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        if let Some(s) = self.slots.get(c as usize) {
            s.fetch_add(n, Ordering::Relaxed);
        }
    }
    /// Current value of counter `c`.
    #[inline]
    pub fn get(&self, c: Counter) -> u64 {
        self.slots
            .get(c as usize)
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }
    /// Raw slot `i` (0 when out of range); lets a tool dump slots of a newer engine.
    pub fn get_raw(&self, i: usize) -> u64 {
        self.slots.get(i).map_or(0, |s| s.load(Ordering::Relaxed))
    }
}

/// Every counter the engine exports. The discriminant is the slot index in [`ShardCounters`]
/// (stable ABI: append only). [`Counter::name`] is the Prometheus metric suffix.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// UDP datagrams received (all classes).
    RxPackets = 0,
    /// UDP payload bytes received.
    RxBytes = 1,
    /// UDP datagrams sent (GSO segments count individually).
    TxPackets = 2,
    /// UDP payload bytes sent.
    TxBytes = 3,
    /// Datagrams classified as STUN.
    RxStun = 4,
    /// Datagrams classified as DTLS.
    RxDtls = 5,
    /// Datagrams classified as SRTP/RTP.
    RxRtp = 6,
    /// Datagrams classified as SRTCP/RTCP.
    RxRtcp = 7,
    /// Dropped: datagram too short or unclassifiable first byte.
    DropMalformed = 8,
    /// Dropped: media from a 5-tuple no transport has learned.
    DropUnknownTuple = 9,
    /// Dropped: STUN binding request whose USERNAME names no transport.
    DropUnknownUfrag = 10,
    /// Dropped: STUN MESSAGE-INTEGRITY or FINGERPRINT failed.
    DropStunAuth = 11,
    /// Dropped: DTLS from a tuple not validated by ICE.
    DropUnvalidatedDtls = 12,
    /// Dropped: SRTP/SRTCP before keys were installed.
    DropNoSrtp = 13,
    /// Dropped: SRTP/SRTCP authentication tag mismatch.
    DropAuthFailed = 14,
    /// Dropped: SRTP/SRTCP replay-window rejection.
    DropReplay = 15,
    /// Dropped: RTP SSRC not mapped to any track encoding.
    DropUnknownSsrc = 16,
    /// Dropped: datagram larger than the receive buffer / MAX_DATAGRAM.
    DropTooLarge = 17,
    /// Dropped: first byte matches no RFC 7983 class.
    DropUnknownClass = 18,
    /// Dropped: RTP header invalid after decrypt (version, extensions, padding).
    DropRtpMalformed = 19,
    /// Dropped: RTCP compound packet invalid.
    DropRtcpMalformed = 20,
    /// Dropped: per-shard send queue full.
    DropSendQueueFull = 21,
    /// Dropped: cross-shard forwarding ring full.
    DropCrossShardFull = 22,
    /// Dropped: event for control lost because the event ring was full.
    DropEventRingFull = 23,
    /// Dropped: packet for a leg waiting for a keyframe after a layer switch.
    DropLegWaitingKeyframe = 24,
    /// RTP packets forwarded to subscriber legs (one per leg).
    ForwardedPackets = 25,
    /// RTX retransmissions sent in answer to NACKs.
    RtxSent = 26,
    /// NACK feedback messages received from subscribers.
    NackReceived = 27,
    /// NACK feedback messages sent to publishers.
    NackSent = 28,
    /// PLI messages received from subscribers.
    PliReceived = 29,
    /// PLI messages sent to publishers.
    PliSent = 30,
    /// FIR messages sent to publishers.
    FirSent = 31,
    /// Keyframe requests suppressed because one was recently sent.
    KeyframeRequestsCoalesced = 32,
    /// Transports whose ICE consent expired.
    ConsentLost = 33,
    /// 5-tuples learned (nominated or first valid binding).
    TuplesLearned = 34,
    /// Commands from control applied.
    CommandsApplied = 35,
    /// Commands from control rejected (an Event::Rejected was emitted).
    CommandsRejected = 36,
    /// sendmsg/io_uring send completions with an error.
    SendErrors = 37,
    /// GSO sends issued.
    GsoBursts = 38,
    /// Segments carried by GSO sends.
    GsoSegments = 39,
    /// Shard event-loop iterations.
    LoopIterations = 40,
    /// Times the shard fell back from io_uring to plain syscalls.
    IoUringFallback = 41,
    /// Command slots that failed to decode (garbage from control, E4).
    CommandsMalformed = 42,
    /// STUN binding success responses sent.
    StunResponsesSent = 43,
    /// DTLS datagrams passed to control as Event::DtlsIn.
    DtlsToControl = 44,
    /// Packets handed to another shard's forwarding ring.
    CrossShardSent = 45,
    /// Packets received from another shard's forwarding ring.
    CrossShardReceived = 46,
    /// Events pushed to control.
    EventsEmitted = 47,
    /// RTCP packets (reports/feedback) generated and sent by the engine.
    RtcpSent = 48,
    /// Dropped: RTP payload type not configured for the track.
    DropUnknownPt = 49,
    /// NACKed packets no longer in the RTX cache.
    DropRtxCacheMiss = 50,
    /// Heartbeat stores into the header.
    Heartbeats = 51,
    /// Audio packets whose `ssrc-audio-level` extension (RFC 6464) was malformed (not exactly one
    /// byte): the level is ignored, the packet is still forwarded (ABI 3).
    AudioLevelMalformed = 52,
}

/// Number of defined counters.
pub(crate) const COUNTER_COUNT: usize = 53;

const _: () = assert!(COUNTER_COUNT <= MAX_COUNTERS);

impl Counter {
    /// Every counter, in discriminant order.
    pub const ALL: &'static [Counter] = &[
        Counter::RxPackets,
        Counter::RxBytes,
        Counter::TxPackets,
        Counter::TxBytes,
        Counter::RxStun,
        Counter::RxDtls,
        Counter::RxRtp,
        Counter::RxRtcp,
        Counter::DropMalformed,
        Counter::DropUnknownTuple,
        Counter::DropUnknownUfrag,
        Counter::DropStunAuth,
        Counter::DropUnvalidatedDtls,
        Counter::DropNoSrtp,
        Counter::DropAuthFailed,
        Counter::DropReplay,
        Counter::DropUnknownSsrc,
        Counter::DropTooLarge,
        Counter::DropUnknownClass,
        Counter::DropRtpMalformed,
        Counter::DropRtcpMalformed,
        Counter::DropSendQueueFull,
        Counter::DropCrossShardFull,
        Counter::DropEventRingFull,
        Counter::DropLegWaitingKeyframe,
        Counter::ForwardedPackets,
        Counter::RtxSent,
        Counter::NackReceived,
        Counter::NackSent,
        Counter::PliReceived,
        Counter::PliSent,
        Counter::FirSent,
        Counter::KeyframeRequestsCoalesced,
        Counter::ConsentLost,
        Counter::TuplesLearned,
        Counter::CommandsApplied,
        Counter::CommandsRejected,
        Counter::SendErrors,
        Counter::GsoBursts,
        Counter::GsoSegments,
        Counter::LoopIterations,
        Counter::IoUringFallback,
        Counter::CommandsMalformed,
        Counter::StunResponsesSent,
        Counter::DtlsToControl,
        Counter::CrossShardSent,
        Counter::CrossShardReceived,
        Counter::EventsEmitted,
        Counter::RtcpSent,
        Counter::DropUnknownPt,
        Counter::DropRtxCacheMiss,
        Counter::Heartbeats,
        Counter::AudioLevelMalformed,
    ];

    /// Snake-case name: the Prometheus metric suffix (e.g. `"drop_replay"`).
    pub fn name(self) -> &'static str {
        match self {
            Counter::RxPackets => "rx_packets",
            Counter::RxBytes => "rx_bytes",
            Counter::TxPackets => "tx_packets",
            Counter::TxBytes => "tx_bytes",
            Counter::RxStun => "rx_stun",
            Counter::RxDtls => "rx_dtls",
            Counter::RxRtp => "rx_rtp",
            Counter::RxRtcp => "rx_rtcp",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropUnknownTuple => "drop_unknown_tuple",
            Counter::DropUnknownUfrag => "drop_unknown_ufrag",
            Counter::DropStunAuth => "drop_stun_auth",
            Counter::DropUnvalidatedDtls => "drop_unvalidated_dtls",
            Counter::DropNoSrtp => "drop_no_srtp",
            Counter::DropAuthFailed => "drop_auth_failed",
            Counter::DropReplay => "drop_replay",
            Counter::DropUnknownSsrc => "drop_unknown_ssrc",
            Counter::DropTooLarge => "drop_too_large",
            Counter::DropUnknownClass => "drop_unknown_class",
            Counter::DropRtpMalformed => "drop_rtp_malformed",
            Counter::DropRtcpMalformed => "drop_rtcp_malformed",
            Counter::DropSendQueueFull => "drop_send_queue_full",
            Counter::DropCrossShardFull => "drop_cross_shard_full",
            Counter::DropEventRingFull => "drop_event_ring_full",
            Counter::DropLegWaitingKeyframe => "drop_leg_waiting_keyframe",
            Counter::ForwardedPackets => "forwarded_packets",
            Counter::RtxSent => "rtx_sent",
            Counter::NackReceived => "nack_received",
            Counter::NackSent => "nack_sent",
            Counter::PliReceived => "pli_received",
            Counter::PliSent => "pli_sent",
            Counter::FirSent => "fir_sent",
            Counter::KeyframeRequestsCoalesced => "keyframe_requests_coalesced",
            Counter::ConsentLost => "consent_lost",
            Counter::TuplesLearned => "tuples_learned",
            Counter::CommandsApplied => "commands_applied",
            Counter::CommandsRejected => "commands_rejected",
            Counter::SendErrors => "send_errors",
            Counter::GsoBursts => "gso_bursts",
            Counter::GsoSegments => "gso_segments",
            Counter::LoopIterations => "loop_iterations",
            Counter::IoUringFallback => "io_uring_fallback",
            Counter::CommandsMalformed => "commands_malformed",
            Counter::StunResponsesSent => "stun_responses_sent",
            Counter::DtlsToControl => "dtls_to_control",
            Counter::CrossShardSent => "cross_shard_sent",
            Counter::CrossShardReceived => "cross_shard_received",
            Counter::EventsEmitted => "events_emitted",
            Counter::RtcpSent => "rtcp_sent",
            Counter::DropUnknownPt => "drop_unknown_pt",
            Counter::DropRtxCacheMiss => "drop_rtx_cache_miss",
            Counter::Heartbeats => "heartbeats",
            Counter::AudioLevelMalformed => "audio_level_malformed",
        }
    }

    /// For `Drop*` counters, the drop reason label (name without the `drop_` prefix).
    pub fn drop_reason(self) -> Option<&'static str> {
        self.name().strip_prefix("drop_")
    }

    /// Counter for a slot index, if defined.
    pub fn from_index(i: usize) -> Option<Counter> {
        Self::ALL.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_dense_and_ordered() {
        assert_eq!(Counter::ALL.len(), COUNTER_COUNT);
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(Counter::from_index(i), Some(*c));
        }
        assert_eq!(Counter::from_index(COUNTER_COUNT), None);
    }

    #[test]
    fn names_unique_snake_case() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            let n = a.name();
            assert!(
                n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{n}"
            );
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(n, b.name());
            }
        }
        assert_eq!(Counter::DropReplay.name(), "drop_replay");
        assert_eq!(Counter::DropReplay.drop_reason(), Some("replay"));
        assert_eq!(Counter::RxPackets.drop_reason(), None);
        assert_eq!(Counter::IoUringFallback.name(), "io_uring_fallback");
    }

    #[test]
    fn add_get() {
        let c = ShardCounters {
            slots: [const { AtomicU64::new(0) }; MAX_COUNTERS],
        };
        c.add(Counter::RxBytes, 10);
        c.add(Counter::RxBytes, u64::MAX);
        assert_eq!(c.get(Counter::RxBytes), 9);
        assert_eq!(c.get(Counter::TxBytes), 0);
        assert_eq!(c.get_raw(MAX_COUNTERS), 0);
    }
}
