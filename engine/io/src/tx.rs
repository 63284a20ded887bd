//! [`TxBatch`]: the preallocated outgoing batch, and the send loops that turn it into
//! `sendmmsg(2)` calls (the io_uring send path reuses the same `msghdr`s).
//!
//! Layout: every [`TxBatch::reserve`] takes `len` bytes from one arena and appends one
//! *segment* (one wire datagram). Segments are grouped into *bursts* (one `msghdr`, one
//! destination): with GSO on, consecutive reserves to the same destination with the same
//! length join the open burst, which goes out as one `sendmsg` with a `UDP_SEGMENT` cmsg and
//! an iovec per segment. A hash table (generation-stamped, so `clear` is O(1)) finds the open
//! burst of a destination. Nothing here allocates after [`TxBatch::new`].

use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::addr::{write_sockaddr, zeroed_sockaddr};
use crate::{Degraded, FlushStats, MAX_DATAGRAM, MAX_GSO_BYTES, MAX_GSO_SEGMENTS};

/// Upper bound on `max_datagrams` accepted by [`TxBatch::new`] (larger values are clamped).
/// Default: 1 Mi. Bounds the descriptor arrays (≈ 230 B per datagram, so ≤ 230 MiB) against a
/// misconfigured size; descriptor indices are `u32`.
pub const MAX_TX_DATAGRAMS_LIMIT: usize = 1 << 20;

/// Upper bound on `arena_bytes` accepted by [`TxBatch::new`] (larger values are clamped).
/// Default: 1 GiB. Arena offsets are stored as `u32`; this also bounds memory for a
/// misconfigured size.
pub const MAX_TX_ARENA_LIMIT: usize = 1 << 30;

const NONE: u32 = u32::MAX;

/// Bytes reserved per message for one `UDP_SEGMENT` control message.
const CMSG_BUF_LEN: usize = 24;
// SAFETY: CMSG_SPACE is a pure arithmetic helper.
const _: () = assert!(unsafe { libc::CMSG_SPACE(2) } as usize <= CMSG_BUF_LEN);

#[derive(Clone, Copy)]
struct Seg {
    off: u32,
    len: u16,
    next: u32,
    /// Index of the burst (destination) this segment belongs to.
    burst: u32,
}

#[derive(Clone, Copy)]
struct Burst {
    dest: SocketAddr,
    first: u32,
    last: u32,
    count: u16,
    seg_size: u16,
    bytes: u32,
    closed: bool,
}

/// How to undo the most recent `reserve` (see [`TxBatch::cancel_last`]).
#[derive(Clone, Copy)]
enum Undo {
    /// The segment joined burst `burst`, whose previous last segment and closed flag were these.
    Joined {
        burst: u32,
        prev_last: u32,
        prev_closed: bool,
    },
    /// The segment started a new burst; the hash slot `slot` held `prev` before.
    NewBurst { slot: usize, prev: Slot },
}

#[derive(Clone, Copy, Default)]
struct Slot {
    gen: u32,
    burst: u32,
}

/// One control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct CmsgBuf([u8; CMSG_BUF_LEN]);

/// What one built `msghdr` carries, for result accounting and the GSO fallback.
#[derive(Clone, Copy, Default)]
pub(crate) struct MsgMeta {
    /// First iovec of this message in `TxBatch::iov`.
    pub iov_start: u32,
    /// Wire datagrams in this message.
    pub segs: u16,
    /// Whether it carries a `UDP_SEGMENT` cmsg.
    pub gso: bool,
}

/// Preallocated outgoing batch (arena + datagram descriptors). Not tied to a socket, so the
/// engine can fill it inside the poll callback while `Io` is borrowed.
///
/// Terms: a *segment* is one wire datagram (one `reserve`); a *datagram* here is one send
/// unit (`msghdr`): a single segment, or a GSO burst of several segments to one destination.
///
/// Memory: `arena_bytes` + about 230 B × `max_datagrams` (segment, burst and hash-table
/// entries plus the `mmsghdr`/`iovec`/`sockaddr_in6`/cmsg arrays the flush fills in). With
/// the defaults ([`crate::DEFAULT_TX_ARENA_BYTES`], [`crate::DEFAULT_TX_MAX_DATAGRAMS`]) that is
/// 4 MiB + ≈ 0.9 MiB.
pub struct TxBatch {
    arena: Vec<u8>,
    used: usize,
    segs: Vec<Seg>,
    max_segs: usize,
    bursts: Vec<Burst>,
    table: Vec<Slot>,
    table_mask: usize,
    gen: u32,
    gso: bool,
    // Syscall scratch, fixed length `max_segs`; pointers are (re)written by `build`.
    pub(crate) mmsg: Vec<libc::mmsghdr>,
    pub(crate) iov: Vec<libc::iovec>,
    pub(crate) names: Vec<libc::sockaddr_in6>,
    cmsg: Vec<CmsgBuf>,
    pub(crate) meta: Vec<MsgMeta>,
    /// io_uring send results (`cqe.result()`), indexed like `mmsg`.
    pub(crate) results: Vec<i32>,
    undo: Option<Undo>,
}

// SAFETY: the raw pointers inside `mmsg`/`iov` only ever point into this TxBatch's own heap
// buffers; they are rewritten by `build` at the start of every flush and only dereferenced
// (by the kernel) during that flush, on the thread that holds `&mut TxBatch`.
unsafe impl Send for TxBatch {}

impl std::fmt::Debug for TxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxBatch")
            .field("datagrams", &self.bursts.len())
            .field("segments", &self.segs.len())
            .field("arena_used", &self.used)
            .field("arena_bytes", &self.arena.len())
            .field("gso", &self.gso)
            .finish()
    }
}

fn hash(a: &SocketAddr) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let x = match a {
        SocketAddr::V4(v) => (u64::from(u32::from(*v.ip())) << 16) | u64::from(v.port()),
        SocketAddr::V6(v) => {
            let ip = u128::from(*v.ip());
            ((ip as u64) ^ ((ip >> 64) as u64).rotate_left(29)) ^ u64::from(v.port())
        }
    };
    let h = x.wrapping_mul(K);
    h ^ (h >> 29)
}

impl TxBatch {
    /// A batch with an `arena_bytes` payload arena and room for `max_datagrams` segments
    /// (wire datagrams). Both are clamped to at least 1 and at most
    /// [`MAX_TX_ARENA_LIMIT`] / [`MAX_TX_DATAGRAMS_LIMIT`]. All memory is allocated here.
    pub fn new(arena_bytes: usize, max_datagrams: usize) -> Self {
        let arena_bytes = arena_bytes.clamp(1, MAX_TX_ARENA_LIMIT);
        let max = max_datagrams.clamp(1, MAX_TX_DATAGRAMS_LIMIT);
        let table_len = (max * 2).next_power_of_two();
        // SAFETY: all-zero is a valid value for these plain C structs (null pointers, zero lengths).
        let zero_mmsg: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        TxBatch {
            arena: vec![0; arena_bytes],
            used: 0,
            segs: Vec::with_capacity(max),
            max_segs: max,
            bursts: Vec::with_capacity(max),
            table: vec![Slot::default(); table_len],
            table_mask: table_len - 1,
            gen: 1,
            gso: false,
            mmsg: vec![zero_mmsg; max],
            iov: vec![zero_iov; max],
            names: vec![zeroed_sockaddr(); max],
            cmsg: vec![CmsgBuf([0; CMSG_BUF_LEN]); max],
            meta: vec![MsgMeta::default(); max],
            results: vec![0; max],
            undo: None,
        }
    }

    /// Allow (or forbid) grouping reserves into GSO bursts. Set it from [`crate::Io::gso`].
    /// Changing it closes all open bursts. Even with bursts queued, `flush` sends them as
    /// single datagrams if the `Io` has GSO off.
    pub fn set_gso(&mut self, on: bool) {
        if on != self.gso {
            self.gso = on;
            for b in &mut self.bursts {
                b.closed = true;
            }
        }
    }

    /// Whether GSO grouping is on.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// No datagram queued.
    pub fn is_empty(&self) -> bool {
        self.bursts.is_empty()
    }

    /// Send units queued: single datagrams plus GSO bursts.
    pub fn len(&self) -> usize {
        self.bursts.len()
    }

    /// Wire datagrams queued (every reserve is one).
    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    /// More than half of the arena or of the segment descriptors is used: time to flush
    /// before queueing more (see [`crate::Io::poll_forward`]).
    pub fn over_high_water(&self) -> bool {
        self.used * 2 > self.arena.len() || self.segs.len() * 2 > self.max_segs
    }

    /// Arena bytes in use.
    pub fn arena_used(&self) -> usize {
        self.used
    }

    /// Drop everything queued (O(1): the burst table is generation-stamped).
    pub fn clear(&mut self) {
        self.used = 0;
        self.segs.clear();
        self.bursts.clear();
        self.undo = None;
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.table.fill(Slot::default());
            self.gen = 1;
        }
    }

    /// Reserve exactly `len` (1..=[`MAX_DATAGRAM`]) bytes for a datagram to `dest` and return
    /// them to be written (they hold stale bytes: the caller writes all of them).
    ///
    /// If GSO is allowed (`set_gso(true)`), the bytes become one more segment of the open
    /// burst for `dest` when that burst's segment size equals `len` (or `len` is shorter,
    /// which then closes the burst) and [`MAX_GSO_SEGMENTS`] / [`MAX_GSO_BYTES`] allow; else a
    /// new datagram starts. Segments of one burst need not be contiguous (sent as an iovec
    /// list). `None` if `len` is out of range or arena/descriptor capacity is exhausted.
    pub fn reserve(&mut self, dest: SocketAddr, len: usize) -> Option<&mut [u8]> {
        if len == 0 || len > MAX_DATAGRAM {
            return None;
        }
        let end = self.used.checked_add(len)?;
        if end > self.arena.len() || self.segs.len() >= self.max_segs {
            return None;
        }
        let seg_idx = self.segs.len() as u32;
        let off = self.used as u32;
        let len16 = len as u16;
        let mut joined = false;
        let mut seg_burst = self.bursts.len() as u32;
        let mut slot_idx = usize::MAX;
        if self.gso {
            let mut i = (hash(&dest) as usize) & self.table_mask;
            loop {
                let s = self.table[i];
                if s.gen != self.gen {
                    break; // empty in this generation
                }
                if let Some(b) = self.bursts.get_mut(s.burst as usize) {
                    if b.dest == dest {
                        if !b.closed
                            && len16 <= b.seg_size
                            && usize::from(b.count) < MAX_GSO_SEGMENTS
                            && (b.bytes as usize) + len <= MAX_GSO_BYTES
                        {
                            self.undo = Some(Undo::Joined {
                                burst: s.burst,
                                prev_last: b.last,
                                prev_closed: b.closed,
                            });
                            if let Some(last) = self.segs.get_mut(b.last as usize) {
                                last.next = seg_idx;
                            }
                            b.last = seg_idx;
                            b.count += 1;
                            b.bytes += len as u32;
                            if len16 < b.seg_size || usize::from(b.count) >= MAX_GSO_SEGMENTS {
                                b.closed = true;
                            }
                            joined = true;
                            seg_burst = s.burst;
                        }
                        break;
                    }
                }
                i = (i + 1) & self.table_mask;
            }
            slot_idx = i;
        }
        if !joined {
            let burst_idx = self.bursts.len() as u32;
            let prev = if self.gso {
                self.table.get(slot_idx).copied().unwrap_or_default()
            } else {
                Slot::default()
            };
            self.undo = Some(Undo::NewBurst {
                slot: slot_idx,
                prev,
            });
            self.bursts.push(Burst {
                dest,
                first: seg_idx,
                last: seg_idx,
                count: 1,
                seg_size: len16,
                bytes: len as u32,
                closed: !self.gso,
            });
            if self.gso {
                // Table has ≥ 2 × max_segs slots and at most max_segs keys: probing ended at
                // either this destination's slot or an empty one.
                self.table[slot_idx] = Slot {
                    gen: self.gen,
                    burst: burst_idx,
                };
            }
        }
        self.segs.push(Seg {
            off,
            len: len16,
            next: NONE,
            burst: seg_burst,
        });
        self.used = end;
        self.arena.get_mut(off as usize..end)
    }

    /// Read-only view of what is queued: one `(destination, bytes)` item per segment (wire
    /// datagram), in `reserve` order. For tests and diagnostics; does not allocate.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.segs.iter().filter_map(move |s| {
            let dest = self.bursts.get(s.burst as usize)?.dest;
            let start = s.off as usize;
            let bytes = self.arena.get(start..start + usize::from(s.len))?;
            Some((dest, bytes))
        })
    }

    /// Take back the most recent [`TxBatch::reserve`] (the caller could not fill the bytes, e.g.
    /// encryption failed), so no half-written datagram is sent. Only the latest reserve can be
    /// cancelled; returns false if there is nothing to cancel.
    pub fn cancel_last(&mut self) -> bool {
        let Some(undo) = self.undo.take() else {
            return false;
        };
        let Some(seg) = self.segs.pop() else {
            return false;
        };
        self.used = seg.off as usize;
        match undo {
            Undo::Joined {
                burst,
                prev_last,
                prev_closed,
            } => {
                if let Some(b) = self.bursts.get_mut(burst as usize) {
                    b.last = prev_last;
                    b.count = b.count.saturating_sub(1);
                    b.bytes = b.bytes.saturating_sub(u32::from(seg.len));
                    b.closed = prev_closed;
                }
                if let Some(last) = self.segs.get_mut(prev_last as usize) {
                    last.next = NONE;
                }
            }
            Undo::NewBurst { slot, prev } => {
                self.bursts.pop();
                if let Some(t) = self.table.get_mut(slot) {
                    *t = prev;
                }
            }
        }
        true
    }

    /// Fill the syscall arrays from the queued bursts. With `gso` false every segment
    /// becomes its own message. Returns `(messages, errors, dropped)`; messages whose
    /// destination the socket cannot reach are skipped and counted as errors/dropped.
    pub(crate) fn build(&mut self, gso: bool, socket_is_v6: bool) -> (usize, usize, usize) {
        let arena = self.arena.as_mut_ptr();
        let iov_base = self.iov.as_mut_ptr();
        let mut n = 0usize;
        let mut iov_n = 0usize;
        let mut errors = 0;
        let mut dropped = 0;
        for b in &self.bursts {
            let as_burst = gso && b.count > 1;
            let mut seg = b.first;
            let mut remaining = b.count;
            while remaining > 0 {
                let Some(name_slot) = self.names.get_mut(n) else {
                    break;
                };
                let Some(namelen) = write_sockaddr(b.dest, socket_is_v6, name_slot) else {
                    errors += 1;
                    dropped += usize::from(remaining);
                    break;
                };
                let take = if as_burst { remaining } else { 1 };
                let iov_start = iov_n;
                for _ in 0..take {
                    let Some(s) = self.segs.get(seg as usize) else {
                        break;
                    };
                    if let Some(v) = self.iov.get_mut(iov_n) {
                        // SAFETY: `off + len <= arena.len()` was checked in `reserve`.
                        v.iov_base = unsafe { arena.add(s.off as usize) }.cast();
                        v.iov_len = usize::from(s.len);
                        iov_n += 1;
                    }
                    seg = s.next;
                }
                remaining -= take;
                let (control, controllen) = if as_burst {
                    let buf = &mut self.cmsg[n];
                    write_segment_cmsg(buf, b.seg_size);
                    // SAFETY: CMSG_SPACE is pure arithmetic.
                    let space = unsafe { libc::CMSG_SPACE(2) } as usize;
                    (buf.0.as_mut_ptr().cast::<libc::c_void>(), space)
                } else {
                    (std::ptr::null_mut(), 0)
                };
                let m = &mut self.mmsg[n];
                m.msg_len = 0;
                m.msg_hdr.msg_name = (name_slot as *mut libc::sockaddr_in6).cast();
                m.msg_hdr.msg_namelen = namelen;
                // SAFETY: iov_start < iov.len() (iov_n only grows while get_mut succeeds).
                m.msg_hdr.msg_iov = unsafe { iov_base.add(iov_start) };
                m.msg_hdr.msg_iovlen = (iov_n - iov_start) as _;
                m.msg_hdr.msg_control = control;
                m.msg_hdr.msg_controllen = controllen as _;
                m.msg_hdr.msg_flags = 0;
                self.meta[n] = MsgMeta {
                    iov_start: iov_start as u32,
                    segs: (iov_n - iov_start) as u16,
                    gso: as_burst,
                };
                n += 1;
            }
        }
        (n, errors, dropped)
    }
}

fn write_segment_cmsg(buf: &mut CmsgBuf, seg_size: u16) {
    buf.0 = [0; CMSG_BUF_LEN];
    // SAFETY: all-zero is a valid cmsghdr (it may have private padding fields on some libcs).
    let mut h: libc::cmsghdr = unsafe { std::mem::zeroed() };
    // SAFETY: CMSG_LEN is pure arithmetic.
    h.cmsg_len = unsafe { libc::CMSG_LEN(2) } as _;
    h.cmsg_level = libc::SOL_UDP;
    h.cmsg_type = libc::UDP_SEGMENT;
    // SAFETY: the buffer is 8-aligned and larger than cmsghdr (checked by the const assert).
    unsafe { std::ptr::write(buf.0.as_mut_ptr().cast::<libc::cmsghdr>(), h) };
    // SAFETY: CMSG_LEN(0) is the (aligned) header size.
    let data = unsafe { libc::CMSG_LEN(0) } as usize;
    // INVARIANT: data + 2 = CMSG_LEN(2) <= CMSG_SPACE(2) <= CMSG_BUF_LEN (const-asserted).
    buf.0[data..data + 2].copy_from_slice(&seg_size.to_ne_bytes());
}

/// What the send loop does after one message's result.
#[derive(PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// Socket buffer full: drop the rest of this flush.
    Stop,
}

/// Mutable state of the sending `Io` that result handling needs.
pub(crate) struct SendState<'a> {
    pub fd: RawFd,
    pub gso: &'a mut bool,
    pub degraded: &'a mut Vec<Degraded>,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Account for message `i`'s result (`r` ≥ 0: bytes sent, < 0: `-errno`), doing the GSO
/// fallback (disable GSO, resend the burst as single datagrams) on `EIO`/`EINVAL`.
pub(crate) fn on_result(
    st: &mut SendState<'_>,
    tx: &TxBatch,
    i: usize,
    r: i32,
    stats: &mut FlushStats,
) -> Flow {
    let Some(meta) = tx.meta.get(i).copied() else {
        return Flow::Continue;
    };
    let segs = usize::from(meta.segs);
    if r >= 0 {
        stats.datagrams += 1;
        stats.segments += segs;
        if meta.gso {
            stats.gso_bursts += 1;
        }
        return Flow::Continue;
    }
    let e = -r;
    if meta.gso && (e == libc::EIO || e == libc::EINVAL) {
        if *st.gso {
            *st.gso = false;
            st.degraded.push(Degraded::GsoUnsupported(format!(
                "sendmsg with UDP_SEGMENT failed: {}",
                std::io::Error::from_raw_os_error(e)
            )));
        }
        resend_singles(st.fd, tx, i, meta, stats);
        return Flow::Continue;
    }
    if e == libc::EAGAIN || e == libc::ENOBUFS {
        stats.dropped += segs;
        return Flow::Stop;
    }
    stats.errors += 1;
    stats.dropped += segs;
    Flow::Continue
}

fn resend_singles(fd: RawFd, tx: &TxBatch, i: usize, meta: MsgMeta, stats: &mut FlushStats) {
    let Some(m) = tx.mmsg.get(i) else { return };
    for k in 0..usize::from(meta.segs) {
        let Some(iov) = tx.iov.get(meta.iov_start as usize + k) else {
            return;
        };
        // SAFETY: all-zero msghdr is valid; we then point it at live data of `tx`.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = m.msg_hdr.msg_name;
        h.msg_namelen = m.msg_hdr.msg_namelen;
        h.msg_iov = (iov as *const libc::iovec).cast_mut();
        h.msg_iovlen = 1;
        // SAFETY: name and iovec point into `tx`, which outlives the call.
        let r = unsafe { libc::sendmsg(fd, &h, 0) };
        if r >= 0 {
            stats.datagrams += 1;
            stats.segments += 1;
        } else {
            stats.errors += 1;
            stats.dropped += 1;
        }
    }
}

/// Send messages `0..n` of `tx` with as few `sendmmsg` calls as possible.
pub(crate) fn send_mmsg(
    st: &mut SendState<'_>,
    tx: &mut TxBatch,
    n: usize,
    stats: &mut FlushStats,
) {
    let mut off = 0usize;
    while off < n {
        let batch = (n - off).min(u32::MAX as usize) as libc::c_uint;
        // SAFETY: mmsg[off..n] were filled by `build` and point into `tx`'s buffers.
        let r = unsafe { libc::sendmmsg(st.fd, tx.mmsg.as_mut_ptr().add(off), batch, 0) };
        if r > 0 {
            let sent = r as usize;
            for i in off..off + sent {
                let bytes = tx.mmsg[i].msg_len as i32;
                on_result(st, tx, i, bytes, stats);
            }
            off += sent;
        } else if r == 0 {
            break;
        } else {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            if on_result(st, tx, off, -e, stats) == Flow::Stop {
                off += 1;
                drop_rest(tx, off, n, stats);
                return;
            }
            off += 1;
        }
    }
    drop_rest(tx, off, n, stats);
}

/// Count messages `from..n` as dropped.
pub(crate) fn drop_rest(tx: &TxBatch, from: usize, n: usize, stats: &mut FlushStats) {
    for m in tx.meta.get(from..n).unwrap_or(&[]) {
        stats.dropped += usize::from(m.segs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn iter_yields_segments_in_reserve_order() {
        let mut t = TxBatch::new(1 << 16, 64);
        t.set_gso(true);
        assert_eq!(t.iter().count(), 0);
        // interleaved destinations: bursts group them, iter keeps reserve order
        for (i, (port, len)) in [(1, 100), (2, 50), (1, 100), (3, 7), (2, 50), (1, 60)]
            .into_iter()
            .enumerate()
        {
            t.reserve(a(port), len).unwrap().fill(i as u8);
        }
        t.reserve(a(4), 9).unwrap().fill(0xEE);
        assert!(t.cancel_last());
        let got: Vec<(SocketAddr, usize, u8)> = t.iter().map(|(d, b)| (d, b.len(), b[0])).collect();
        assert_eq!(
            got,
            vec![
                (a(1), 100, 0),
                (a(2), 50, 1),
                (a(1), 100, 2),
                (a(3), 7, 3),
                (a(2), 50, 4),
                (a(1), 60, 5),
            ]
        );
        assert!(t.iter().all(|(_, b)| b.iter().all(|&x| x == b[0])));
        t.clear();
        assert_eq!(t.iter().count(), 0);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut t = TxBatch::new(10_000, 16);
        assert!(t.reserve(a(1), 0).is_none());
        assert!(t.reserve(a(1), MAX_DATAGRAM + 1).is_none());
        assert_eq!(
            t.reserve(a(1), MAX_DATAGRAM).map(|b| b.len()),
            Some(MAX_DATAGRAM)
        );
        assert!(!t.is_empty() && t.len() == 1);
    }

    #[test]
    fn arena_and_descriptor_exhaustion_give_none() {
        let mut t = TxBatch::new(3000, 100);
        assert!(t.reserve(a(1), 1500).is_some());
        assert!(t.reserve(a(1), 1500).is_some());
        assert!(t.reserve(a(1), 1).is_none());
        t.clear();
        assert!(t.is_empty());
        let mut t = TxBatch::new(1 << 20, 3);
        for _ in 0..3 {
            assert!(t.reserve(a(2), 10).is_some());
        }
        assert!(t.reserve(a(2), 10).is_none());
        assert_eq!(t.segments(), 3);
    }

    #[test]
    fn cancel_last_undoes_joined_and_new_bursts() {
        let mut t = TxBatch::new(1 << 20, 1024);
        t.set_gso(true);
        assert!(!t.cancel_last(), "nothing to cancel");
        t.reserve(a(1), 1000).unwrap();
        t.reserve(a(1), 1000).unwrap();
        let used = t.arena_used();
        // a shorter segment joins and would close the burst; cancelling reopens it
        t.reserve(a(1), 400).unwrap();
        assert!(t.cancel_last());
        assert!(!t.cancel_last(), "only the latest reserve can be cancelled");
        assert_eq!((t.len(), t.segments(), t.arena_used()), (1, 2, used));
        t.reserve(a(1), 1000).unwrap();
        assert_eq!(
            (t.len(), t.segments()),
            (1, 3),
            "burst still open after cancel"
        );
        // a new burst for another destination, cancelled: the table forgets it
        t.reserve(a(2), 700).unwrap();
        assert!(t.cancel_last());
        assert_eq!(t.len(), 1);
        t.reserve(a(2), 700).unwrap();
        t.reserve(a(2), 700).unwrap();
        assert_eq!((t.len(), t.segments()), (2, 5));
        let (n, e, d) = t.build(true, false);
        assert_eq!((n, e, d), (2, 0, 0));
        assert!(t.meta[0].gso && t.meta[0].segs == 3);
        assert!(t.meta[1].gso && t.meta[1].segs == 2);
        // without GSO
        let mut t = TxBatch::new(1 << 20, 16);
        t.reserve(a(3), 100).unwrap();
        t.reserve(a(3), 100).unwrap();
        assert!(t.cancel_last());
        assert_eq!((t.len(), t.segments()), (1, 1));
    }

    #[test]
    fn gso_grouping_rules() {
        let mut t = TxBatch::new(1 << 20, 1024);
        t.set_gso(true);
        for _ in 0..3 {
            t.reserve(a(1), 1000).unwrap();
            t.reserve(a(2), 1000).unwrap();
        }
        assert_eq!((t.len(), t.segments()), (2, 6));
        // Shorter closes the burst; next goes to a new one.
        t.reserve(a(1), 500).unwrap();
        t.reserve(a(1), 500).unwrap();
        assert_eq!(t.len(), 3);
        // Longer never joins.
        t.reserve(a(2), 1200).unwrap();
        assert_eq!(t.len(), 4);
        let (n, e, d) = t.build(true, false);
        assert_eq!((n, e, d), (4, 0, 0));
        assert!(t.meta[0].gso && t.meta[0].segs == 4);
        assert!(t.meta[1].gso && t.meta[1].segs == 3);
        assert!(!t.meta[2].gso && t.meta[2].segs == 1);
        // Without GSO at flush time every segment is its own message.
        let (n, _, _) = t.build(false, false);
        assert_eq!(n, t.segments());
    }

    #[test]
    fn gso_limits_split_bursts() {
        let mut t = TxBatch::new(4 << 20, 4096);
        t.set_gso(true);
        for _ in 0..(MAX_GSO_SEGMENTS * 2) {
            t.reserve(a(1), 100).unwrap();
        }
        assert_eq!(t.len(), 2);
        t.clear();
        for _ in 0..100 {
            t.reserve(a(1), 1500).unwrap();
        }
        // 65_000 / 1500 = 43 per burst.
        assert_eq!(t.len(), 3);
        t.build(true, false);
        assert_eq!(t.meta[0].segs as usize, MAX_GSO_BYTES / 1500);
    }

    #[test]
    fn clear_resets_generation_and_wraps() {
        let mut t = TxBatch::new(1 << 16, 16);
        t.set_gso(true);
        t.gen = u32::MAX;
        t.reserve(a(1), 10).unwrap();
        t.clear();
        assert_eq!(t.gen, 1);
        t.reserve(a(1), 10).unwrap();
        t.reserve(a(1), 10).unwrap();
        assert_eq!((t.len(), t.segments()), (1, 2));
    }

    #[test]
    fn v6_dest_on_v4_socket_is_counted_not_sent() {
        let mut t = TxBatch::new(1 << 16, 16);
        t.reserve("[::1]:5".parse().unwrap(), 10).unwrap();
        t.reserve(a(1), 10).unwrap();
        let (n, e, d) = t.build(true, false);
        assert_eq!((n, e, d), (1, 1, 1));
    }

    #[test]
    fn many_destinations_fill_table_without_panic() {
        let mut t = TxBatch::new(1 << 20, 1000);
        t.set_gso(true);
        let mut ok = 0;
        for p in 0..2000u16 {
            if t.reserve(a(p), 8).is_some() {
                ok += 1;
            }
        }
        assert_eq!(ok, 1000);
    }
}
