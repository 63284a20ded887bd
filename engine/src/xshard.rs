//! Cross-shard fan-out: one bounded queue per (from, to) shard pair and a per-shard pool of
//! reference-counted packet buffers.
//!
//! A publisher's packet is decrypted once on its home shard. Each *other* shard that has
//! subscribers to the track receives it once, as an `Arc<PacketBuf>` clone pushed through the
//! queue for that pair (no copy per subscriber, no allocation: the `Arc`s are created at start and
//! recycled when every other shard has dropped its clone).

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

/// Largest plain RTP packet carried between shards.
pub const PACKET_BUF_BYTES: usize = 1500;

/// Buffers in each shard's pool. Bounds the packets one shard can have in flight towards the
/// others; when all are still referenced the packet is not handed over and
/// `drop_cross_shard_full` counts it. Memory: `POOL_BUFFERS * ~1.5 KiB` = 6 MiB per shard.
pub const POOL_BUFFERS: usize = 4096;

/// Capacity of one (from, to) queue. Memory: `QUEUE_SLOTS * size_of::<XMsg>()` per pair
/// (≈ 48 B → 192 KiB per pair; 16 shards → 240 pairs → 46 MiB).
pub const QUEUE_SLOTS: usize = 4096;

/// A decrypted RTP packet shared read-only between shards.
pub struct PacketBuf {
    /// Valid bytes in `data`.
    pub len: usize,
    /// Plain RTP packet (header + payload).
    pub data: [u8; PACKET_BUF_BYTES],
}

impl PacketBuf {
    /// The packet bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len.min(PACKET_BUF_BYTES)]
    }
}

/// A message from one shard to another.
pub enum XMsg {
    /// A packet of `track`, encoding `layer`, already decrypted (and RTX-unwrapped) at home.
    Packet {
        /// Track id.
        track: u32,
        /// Simulcast encoding index.
        layer: u8,
        /// Packet begins a keyframe.
        keyframe: bool,
        /// The shared bytes.
        buf: Arc<PacketBuf>,
    },
    /// Shard `shard` now has (or no longer has) subscribers of `track`.
    Subscribe {
        /// Track id.
        track: u32,
        /// Subscribing shard.
        shard: u16,
        /// true = add, false = remove.
        on: bool,
    },
    /// The publisher of `track` sent a sender report for encoding `layer`.
    SenderReport {
        /// Track id.
        track: u32,
        /// Encoding index.
        layer: u8,
        /// NTP timestamp.
        ntp: u64,
        /// RTP timestamp (publisher's clock).
        rtp_ts: u32,
    },
    /// A subscriber on another shard needs a keyframe of `track`/`layer`.
    KeyframeRequest {
        /// Track id.
        track: u32,
        /// Encoding index.
        layer: u8,
        /// The engine's own need (a starting leg), not a subscriber's PLI/FIR.
        urgent: bool,
    },
}

/// Per-shard pool of packet buffers (never reallocated after start).
pub struct BufPool {
    bufs: Vec<Arc<PacketBuf>>,
    cursor: usize,
}

impl BufPool {
    /// Allocate `n` buffers (start-up only).
    pub fn new(n: usize) -> Self {
        let bufs = (0..n.max(1))
            .map(|_| {
                Arc::new(PacketBuf {
                    len: 0,
                    data: [0; PACKET_BUF_BYTES],
                })
            })
            .collect();
        BufPool { bufs, cursor: 0 }
    }

    /// Copy `pkt` into a free buffer and return a handle to it; `None` if `pkt` is too large or
    /// every buffer is still referenced by another shard. Scans at most `SCAN_LIMIT` buffers.
    pub fn fill(&mut self, pkt: &[u8]) -> Option<Arc<PacketBuf>> {
        /// Bound on buffers inspected per call, so a pool pinned by a stalled shard costs O(1).
        const SCAN_LIMIT: usize = 64;
        if pkt.len() > PACKET_BUF_BYTES {
            return None;
        }
        let n = self.bufs.len();
        for _ in 0..SCAN_LIMIT.min(n) {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % n;
            if let Some(b) = Arc::get_mut(&mut self.bufs[i]) {
                b.data[..pkt.len()].copy_from_slice(pkt);
                b.len = pkt.len();
                return Some(Arc::clone(&self.bufs[i]));
            }
        }
        None
    }
}

/// The N×N mesh of queues between shards. `queue(from, to)`.
pub struct Mesh {
    n: usize,
    queues: Vec<ArrayQueue<XMsg>>,
}

impl Mesh {
    /// Build the mesh for `n` shards.
    pub fn new(n: usize) -> Arc<Self> {
        let n = n.max(1);
        let queues = (0..n * n).map(|_| ArrayQueue::new(QUEUE_SLOTS)).collect();
        Arc::new(Mesh { n, queues })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.n
    }

    /// The queue carrying messages from `from` to `to`.
    pub fn queue(&self, from: usize, to: usize) -> Option<&ArrayQueue<XMsg>> {
        if from >= self.n || to >= self.n {
            return None;
        }
        self.queues.get(from * self.n + to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_recycles_only_unreferenced_buffers() {
        let mut pool = BufPool::new(2);
        let a = pool.fill(b"one").expect("free");
        let b = pool.fill(b"two").expect("free");
        assert!(pool.fill(b"three").is_none(), "both held elsewhere");
        drop(a);
        let c = pool.fill(b"three").expect("a was released");
        assert_eq!(c.bytes(), b"three");
        assert_eq!(b.bytes(), b"two");
        assert!(pool.fill(&[0u8; PACKET_BUF_BYTES + 1]).is_none());
    }

    #[test]
    fn mesh_bounds() {
        let m = Mesh::new(3);
        assert!(m.queue(0, 2).is_some());
        assert!(m.queue(3, 0).is_none());
        assert!(m.queue(0, 3).is_none());
    }
}
