//! io_uring backend: multishot `RecvMsgMulti` over a provided-buffer ring, an eventfd `Read`
//! on the same ring for wake-ups, and (optionally) a second ring for `SendMsg` batches.
//!
//! Buffer ring: `entries` slots of [`SLOT_SIZE`] bytes (`io_uring_recvmsg_out` header, a
//! `sockaddr_in6` name field, then [`RECV_BUF_SIZE`] payload bytes). The kernel picks a slot
//! per datagram; we hand the payload to the caller, then give the slot back by writing a
//! `BufRingEntry` at our tail and publishing the tail (Release) once per poll.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, types, IoUring};

use crate::addr::{parse_sockaddr, SOCKADDR_IN6_LEN};
use crate::tx::{on_result, Flow, SendState, TxBatch};
use crate::{FlushStats, IoError, PollStats, MAX_DATAGRAM, RECV_BUF_SIZE};

/// Default number of provided receive buffers per socket (power of two, ≤ 32768).
/// Bounds how many datagrams the kernel can queue into our memory between two polls;
/// memory = entries × [`SLOT_SIZE`] (+16 B ring entry each): 1024 × 2112 B ≈ 2.1 MiB.
/// Shrunk (halving) to fit `RLIMIT_MEMLOCK`.
pub const DEFAULT_BUF_RING_ENTRIES: u16 = 1024;
/// Smallest buffer ring we accept before falling back to the `Mmsg` backend.
/// Default: 64 (= [`crate::DEFAULT_RECV_BATCH`]); memory 64 × [`SLOT_SIZE`] ≈ 132 KiB.
pub const MIN_BUF_RING_ENTRIES: u16 = 64;
/// Bytes per provided buffer: 16 B `io_uring_recvmsg_out` + 28 B name field +
/// [`RECV_BUF_SIZE`] payload, rounded up to 64 B. 2112 B.
pub const SLOT_SIZE: usize = (16 + SOCKADDR_IN6_LEN + RECV_BUF_SIZE).div_ceil(64) * 64;
/// Submission queue entries of the send ring: the most `SendMsg`s in flight per submit.
/// Default 256; larger batches go in chunks. Memory ≈ 256 × (64 B SQE + 2 × 16 B CQE).
pub const SEND_RING_ENTRIES: u32 = 256;

const BGID: u16 = 0x1_5;
const UD_RECV: u64 = 1;
const UD_WAKE: u64 = 2;
/// Marker for a send result not (yet) reported by the kernel.
const PENDING: i32 = i32::MIN;
/// `IORING_ENTER_GETEVENTS` (include/uapi/linux/io_uring.h); not re-exported by io-uring.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// Page-aligned anonymous mapping (freed on drop).
struct Mmap {
    ptr: *mut u8,
    len: usize,
}

impl Mmap {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: anonymous private mapping; arguments are valid.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap { ptr: p.cast(), len })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The io_uring receive side (and wake-up watcher) of one socket.
pub(crate) struct UringRx {
    ring: IoUring,
    ring_mem: Mmap,
    bufs: Mmap,
    entries: u16,
    tail: u16,
    msghdr: Box<libc::msghdr>,
    wake_buf: Box<u64>,
    fd: RawFd,
    wake_fd: RawFd,
    recv_armed: bool,
    wake_armed: bool,
    registered: bool,
    /// Times the buffer ring ran dry (`ENOBUFS`).
    pub enobufs: u64,
}

fn memlock_limit() -> u64 {
    // SAFETY: getrlimit writes into the struct we pass.
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0
        || r.rlim_cur == libc::RLIM_INFINITY
    {
        return u64::MAX;
    }
    r.rlim_cur
}

/// Memory we budget against `RLIMIT_MEMLOCK` for `entries` buffers (ring + buffers, as if
/// all of it were pinned — conservative: only the ring entries are pinned today).
pub(crate) fn memlock_need(entries: u16) -> u64 {
    u64::from(entries) * (16 + SLOT_SIZE as u64)
}

/// `(need, have)` bytes against `RLIMIT_MEMLOCK`.
pub(crate) type NeedHave = (u64, u64);

/// Pick the buffer-ring size under `RLIMIT_MEMLOCK`: `Ok((entries, Some((need, have))))` when
/// shrunk, `Err((need, have))` when even [`MIN_BUF_RING_ENTRIES`] does not fit.
pub(crate) fn size_under_memlock(
    want: u16,
    have: u64,
) -> Result<(u16, Option<NeedHave>), NeedHave> {
    let mut e = want.max(MIN_BUF_RING_ENTRIES).next_power_of_two();
    let need = memlock_need(e);
    if need <= have {
        return Ok((e, None));
    }
    while e > MIN_BUF_RING_ENTRIES && memlock_need(e) > have {
        e /= 2;
    }
    if memlock_need(e) > have {
        return Err((need, have));
    }
    Ok((e, Some((need, have))))
}

pub(crate) enum SetupError {
    Memlock { need: u64, have: u64 },
    Uring(String),
}

fn build_ring(sq: u32, cq: u32) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(cq);
    match b.build(sq) {
        Ok(r) => Ok(r),
        // Older kernels: try without the optimisation flags.
        Err(_) => IoUring::builder().setup_cqsize(cq).build(sq),
    }
}

/// Build the send ring for [`crate::SendPath::UringSendMsg`].
pub(crate) fn build_send_ring() -> io::Result<IoUring> {
    build_ring(SEND_RING_ENTRIES, SEND_RING_ENTRIES * 2)
}

impl UringRx {
    /// Set up ring, buffer ring and the two armed requests. `want_entries` is shrunk to fit
    /// `RLIMIT_MEMLOCK`; the shrink (if any) is reported as `(need, have)`.
    pub(crate) fn new(
        fd: RawFd,
        wake_fd: RawFd,
        want_entries: u16,
        force_failure: bool,
    ) -> Result<(Self, Option<NeedHave>), SetupError> {
        if force_failure {
            return Err(SetupError::Uring(
                "forced failure (IoConfig::force_uring_failure)".into(),
            ));
        }
        let (entries, shrunk) = size_under_memlock(want_entries, memlock_limit())
            .map_err(|(need, have)| SetupError::Memlock { need, have })?;
        let uerr = |what: &str, e: io::Error| SetupError::Uring(format!("{what}: {e}"));
        let ring = build_ring(64, u32::from(entries) * 2).map_err(|e| uerr("io_uring_setup", e))?;
        let ring_mem = Mmap::new(usize::from(entries) * std::mem::size_of::<types::BufRingEntry>())
            .map_err(|e| uerr("mmap buffer ring", e))?;
        let bufs =
            Mmap::new(usize::from(entries) * SLOT_SIZE).map_err(|e| uerr("mmap buffers", e))?;
        // SAFETY: ring_mem is a page-aligned mapping of `entries` BufRingEntry that lives as
        // long as `self` (unregistered in Drop before it is unmapped).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ring_mem.ptr as u64, entries, BGID, 0)
                .map_err(|e| uerr("register_buf_ring", e))?;
        }
        // SAFETY: all-zero msghdr is valid; only namelen/controllen matter for RecvMsgMulti.
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = SOCKADDR_IN6_LEN as libc::socklen_t;
        let mut rx = UringRx {
            ring,
            ring_mem,
            bufs,
            entries,
            tail: 0,
            msghdr,
            wake_buf: Box::new(0),
            fd,
            wake_fd,
            recv_armed: false,
            wake_armed: false,
            registered: true,
            enobufs: 0,
        };
        for bid in 0..entries {
            rx.push_buf(bid);
        }
        rx.publish_tail();
        rx.arm();
        rx.ring
            .submit()
            .map_err(|e| uerr("io_uring_enter (arm)", e))?;
        Ok((rx, shrunk))
    }

    fn push_buf(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let idx = usize::from(self.tail & mask);
        let base = self.ring_mem.ptr.cast::<types::BufRingEntry>();
        // SAFETY: idx < entries, so the entry lies in ring_mem; bid < entries so the slot
        // lies in bufs. The kernel does not read entries at/after the published tail.
        unsafe {
            let e = &mut *base.add(idx);
            e.set_addr(self.bufs.ptr.add(usize::from(bid) * SLOT_SIZE) as u64);
            e.set_len(SLOT_SIZE as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish_tail(&self) {
        let base = self.ring_mem.ptr.cast::<types::BufRingEntry>();
        // SAFETY: the tail field lives inside the first entry of the ring mapping, and is
        // only written by us (the kernel reads it), so an atomic view of it is sound.
        unsafe {
            let t = types::BufRingEntry::tail(base) as *mut u16;
            (*(t as *const AtomicU16)).store(self.tail, Ordering::Release);
        }
    }

    /// Queue SQEs for whichever of the two multishot/oneshot requests is not armed.
    fn arm(&mut self) {
        if !self.recv_armed {
            let e = opcode::RecvMsgMulti::new(types::Fd(self.fd), &*self.msghdr, BGID)
                .build()
                .user_data(UD_RECV);
            // SAFETY: msghdr is boxed and lives as long as the ring.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                self.recv_armed = true;
            }
        }
        if !self.wake_armed {
            let e = opcode::Read::new(
                types::Fd(self.wake_fd),
                (&mut *self.wake_buf as *mut u64).cast(),
                8,
            )
            .build()
            .user_data(UD_WAKE);
            // SAFETY: wake_buf is boxed and lives as long as the ring.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                self.wake_armed = true;
            }
        }
    }

    pub(crate) fn poll(
        &mut self,
        timeout: Option<Duration>,
        batch: usize,
        on_datagram: &mut dyn FnMut(std::net::SocketAddr, &mut [u8]),
    ) -> Result<PollStats, IoError> {
        let mut st = PollStats::default();
        self.arm();
        let ready = !self.ring.completion().is_empty();
        let r = if ready {
            self.ring.submit().map(drop)
        } else {
            match timeout {
                None => self.ring.submit_and_wait(1).map(drop),
                Some(d) if d.is_zero() => {
                    let sq = self.ring.submission().len() as u32;
                    // SAFETY: plain io_uring_enter with GETEVENTS and no argument.
                    unsafe {
                        self.ring.submitter().enter::<libc::sigset_t>(
                            sq,
                            0,
                            IORING_ENTER_GETEVENTS,
                            None,
                        )
                    }
                    .map(drop)
                }
                Some(d) => {
                    let ts = types::Timespec::from(d);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args).map(drop)
                }
            }
        };
        if let Err(e) = r {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => return Err(IoError::Io(e)),
            }
        }
        let mut recycled = false;
        while st.datagrams < batch {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            let flags = cqe.flags();
            let res = cqe.result();
            match cqe.user_data() {
                UD_RECV => {
                    if !cqueue::more(flags) {
                        self.recv_armed = false;
                    }
                    if res < 0 {
                        if -res == libc::ENOBUFS {
                            self.enobufs += 1;
                        } else if -res != libc::ECANCELED {
                            st.errors += 1;
                        }
                        continue;
                    }
                    let Some(bid) = cqueue::buffer_select(flags) else {
                        st.errors += 1;
                        continue;
                    };
                    if bid >= self.entries {
                        st.errors += 1;
                        continue;
                    }
                    self.deliver(bid, res as usize, &mut st, on_datagram);
                    self.push_buf(bid);
                    recycled = true;
                }
                UD_WAKE => {
                    self.wake_armed = false;
                    if res >= 0 {
                        st.woken = true;
                    } else if -res != libc::ECANCELED {
                        st.errors += 1;
                    }
                }
                _ => {}
            }
        }
        if recycled {
            self.publish_tail();
        }
        self.arm();
        Ok(st)
    }

    fn deliver(
        &mut self,
        bid: u16,
        res: usize,
        st: &mut PollStats,
        on_datagram: &mut dyn FnMut(std::net::SocketAddr, &mut [u8]),
    ) {
        let base = usize::from(bid) * SLOT_SIZE;
        let len = res.min(SLOT_SIZE);
        // SAFETY: the slot [base, base+SLOT_SIZE) lies in `bufs`; the kernel has handed it to
        // us (it is not in the ring until push_buf), so nothing else writes it now.
        let slot = unsafe { std::slice::from_raw_parts_mut(self.bufs.ptr.add(base), len) };
        let Some(SlotInfo {
            from,
            start,
            len: plen,
            truncated: trunc,
            incoming,
        }) = parse_slot(slot, &self.msghdr)
        else {
            st.errors += 1;
            return;
        };
        if trunc || plen > MAX_DATAGRAM || incoming > MAX_DATAGRAM {
            st.too_large += 1;
            return;
        }
        let Some(from) = from else {
            st.errors += 1;
            return;
        };
        let Some(payload) = slot.get_mut(start..start + plen) else {
            st.errors += 1;
            return;
        };
        st.datagrams += 1;
        on_datagram(from, payload);
    }
}

/// Where the payload of one multishot-recvmsg buffer is, parsed from kernel-written bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SlotInfo {
    /// Source address (`None` if the name field did not parse).
    pub from: Option<std::net::SocketAddr>,
    /// Payload offset in the slot.
    pub start: usize,
    /// Payload bytes present in the slot.
    pub len: usize,
    /// The kernel set MSG_TRUNC.
    pub truncated: bool,
    /// The datagram's real length as reported by the kernel.
    pub incoming: usize,
}

/// Parse one received buffer (`io_uring_recvmsg_out` + name + control + payload) laid out
/// according to `msghdr`. `None` if the slot is shorter than the fixed header. The returned
/// `start..start + len` always lies inside `slot`.
pub(crate) fn parse_slot(slot: &[u8], msghdr: &libc::msghdr) -> Option<SlotInfo> {
    let out = types::RecvMsgOut::parse(slot, msghdr).ok()?;
    let start = 16usize
        .checked_add(msghdr.msg_namelen as usize)?
        .checked_add(msghdr.msg_controllen)?;
    let len = out.payload_data().len();
    if start.checked_add(len)? > slot.len() {
        return None;
    }
    Some(SlotInfo {
        from: parse_sockaddr(out.name_data()),
        start,
        len,
        truncated: out.is_payload_truncated(),
        incoming: out.incoming_payload_len() as usize,
    })
}

impl Drop for UringRx {
    fn drop(&mut self) {
        // Cancel the armed requests synchronously so the kernel stops referencing msghdr,
        // wake_buf and bufs before they are freed.
        let _ = self
            .ring
            .submitter()
            .register_sync_cancel(None, types::CancelBuilder::any());
        if self.registered {
            let _ = self.ring.submitter().unregister_buf_ring(BGID);
        }
    }
}

/// Send messages `0..n` of `tx` as `SendMsg` SQEs on `ring`, in chunks of the SQ size.
pub(crate) fn send_uring(
    ring: &mut IoUring,
    st: &mut SendState<'_>,
    tx: &mut TxBatch,
    n: usize,
    stats: &mut FlushStats,
) {
    let cap = ring.params().sq_entries() as usize;
    let mut off = 0;
    while off < n {
        let k = (n - off).min(cap);
        // INVARIANT: off + k <= n <= max_segs = results.len() (n messages come from `build`).
        for r in &mut tx.results[off..off + k] {
            *r = PENDING;
        }
        let mut pushed = 0;
        {
            let mut sq = ring.submission();
            for i in off..off + k {
                let msg = &tx.mmsg[i].msg_hdr as *const libc::msghdr;
                // MSG_DONTWAIT: a full socket buffer fails fast (EAGAIN, counted as dropped)
                // like sendmmsg, instead of io_uring parking the send until writable.
                let e = opcode::SendMsg::new(types::Fd(st.fd), msg)
                    .flags(libc::MSG_DONTWAIT as u32)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the msghdr and everything it points to live in `tx`, which is
                // borrowed until we have reaped all completions below.
                if unsafe { sq.push(&e) }.is_err() {
                    break;
                }
                pushed += 1;
            }
        }
        let mut got = 0;
        let mut waited = ring.submit_and_wait(pushed).is_ok();
        while got < pushed {
            let Some(cqe) = ring.completion().next() else {
                if !waited {
                    break;
                }
                // Not all done yet (e.g. EINTR): wait for the rest.
                waited = ring.submit_and_wait(1).is_ok();
                continue;
            };
            got += 1;
            if let Some(r) = tx.results.get_mut(cqe.user_data() as usize) {
                *r = cqe.result();
            }
        }
        let mut stop = false;
        for i in off..off + k {
            let r = tx.results[i];
            if r == PENDING {
                // Never submitted or never completed: count as failed.
                stats.errors += 1;
                crate::tx::drop_rest(tx, i, i + 1, stats);
            } else if on_result(st, tx, i, r, stats) == Flow::Stop {
                stop = true;
            }
        }
        off += k;
        if stop {
            crate::tx::drop_rest(tx, off, n, stats);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_size_holds_header_name_and_payload() {
        const { assert!(SLOT_SIZE >= 16 + SOCKADDR_IN6_LEN + RECV_BUF_SIZE) };
        const { assert!(SLOT_SIZE % 64 == 0) };
        assert_eq!(SLOT_SIZE, 2112);
    }

    fn recv_msghdr() -> libc::msghdr {
        // SAFETY: all-zero msghdr is valid.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_namelen = SOCKADDR_IN6_LEN as libc::socklen_t;
        m
    }

    /// Build a slot the way the kernel lays it out.
    fn slot(name: std::net::SocketAddr, payload: &[u8], real_len: u32, flags: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(SOCKADDR_IN_LEN as u32).to_ne_bytes()); // namelen
        v.extend_from_slice(&0u32.to_ne_bytes()); // controllen
        v.extend_from_slice(&real_len.to_ne_bytes()); // payloadlen
        v.extend_from_slice(&flags.to_ne_bytes()); // flags
        let mut sa = crate::addr::zeroed_sockaddr();
        crate::addr::write_sockaddr(name, false, &mut sa).unwrap();
        v.extend_from_slice(crate::addr::sockaddr_bytes(&sa));
        v.extend_from_slice(payload);
        v
    }

    use crate::addr::SOCKADDR_IN_LEN;
    use proptest::prelude::*;

    #[test]
    fn parse_slot_finds_payload_and_name() {
        let from: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let s = slot(from, b"hello", 5, 0);
        let info = parse_slot(&s, &recv_msghdr()).unwrap();
        assert_eq!(info.from, Some(from));
        assert_eq!(&s[info.start..info.start + info.len], b"hello");
        assert!(!info.truncated);
        let t = slot(from, &[1; 10], 5000, libc::MSG_TRUNC as u32);
        let info = parse_slot(&t, &recv_msghdr()).unwrap();
        assert!(info.truncated);
        assert_eq!((info.len, info.incoming), (10, 5000));
    }

    #[test]
    fn parse_slot_every_truncation_is_safe() {
        let from: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let s = slot(from, &[7; 100], 100, 0);
        let m = recv_msghdr();
        for n in 0..s.len() {
            match parse_slot(&s[..n], &m) {
                None => assert!(n < 16 + SOCKADDR_IN6_LEN, "len {n}"),
                Some(i) => assert!(i.start + i.len <= n),
            }
        }
    }

    proptest! {
        #[test]
        fn parse_slot_arbitrary_bytes_never_panic(
            b in proptest::collection::vec(any::<u8>(), 0..256),
            namelen in 0u32..64,
            controllen in 0usize..64,
        ) {
            let mut m = recv_msghdr();
            m.msg_namelen = namelen;
            m.msg_controllen = controllen;
            if let Some(i) = parse_slot(&b, &m) {
                prop_assert!(i.start + i.len <= b.len());
            }
        }
    }

    #[test]
    fn memlock_sizing() {
        assert_eq!(size_under_memlock(1024, u64::MAX), Ok((1024, None)));
        let have = memlock_need(256);
        let (e, shrunk) = size_under_memlock(1024, have).unwrap();
        assert_eq!(e, 256);
        assert_eq!(shrunk, Some((memlock_need(1024), have)));
        assert!(size_under_memlock(1024, 1000).is_err());
        // Non-power-of-two requests are rounded up.
        assert_eq!(size_under_memlock(100, u64::MAX), Ok((128, None)));
    }
}
