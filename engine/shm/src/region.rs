//! The mapped memfd region: create (engine), attach + validate (control), endpoint accessors.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use crate::counters::ShardCounters;
use crate::error::ShmError;
use crate::layout::{
    check_geometry, counters_offset, region_size, ring_offset, ring_slots_offset, size_table,
    Header, RingCtl, HEADER_SIZE, MAX_RING_SLOTS, RING_LENS_OFFSET, SIZE_TABLE_CAP,
};
use crate::ring::{Consumer, Producer, RingPtrs};
use crate::{ABI_VERSION, MAGIC, MAX_SHARDS};

/// Seals the engine puts on the memfd so a peer can neither shrink it (SIGBUS on access) nor grow
/// it, nor remove the seals.
const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// A live mapping; unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    n_shards: usize,
    ring_slots: u32,
    /// In-process endpoint claims: index = ring * 2 + (0 producer, 1 consumer).
    claims: Box<[AtomicBool]>,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics and raw byte copies
// governed by the ring protocol; the fields themselves are immutable after construction.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and no reference outlives `self` (every
        // endpoint holds an Arc<Mapping>).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl Mapping {
    fn map(fd: OwnedFd, len: usize) -> Result<Mapping, ShmError> {
        // SAFETY: mapping a file we hold open; result checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(ShmError::Io(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(ShmError::BadLayout("mmap returned null"))?;
        Ok(Mapping {
            ptr,
            len,
            fd,
            n_shards: 0,
            ring_slots: 0,
            claims: Box::new([]),
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is page aligned and at least HEADER_SIZE long (checked before
        // mapping); Header holds only atomics and never-read padding.
        unsafe { &*self.ptr.as_ptr().cast::<Header>() }
    }

    fn set_geometry(&mut self, n_shards: usize, ring_slots: u32) {
        self.n_shards = n_shards;
        self.ring_slots = ring_slots;
        self.claims = (0..n_shards * 4).map(|_| AtomicBool::new(false)).collect();
    }

    fn claim(&self, i: usize) -> bool {
        self.claims.get(i).is_some_and(|c| {
            c.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    pub(crate) fn release(&self, i: usize) {
        if let Some(c) = self.claims.get(i) {
            c.store(false, Ordering::Release);
        }
    }

    fn ring(&self, r: usize) -> RingPtrs {
        let base = ring_offset(self.n_shards, self.ring_slots, r);
        // SAFETY: r < 2*n_shards and the mapping is region_size(n_shards, ring_slots) long
        // (validated), so every offset below is in bounds.
        unsafe {
            let b = self.ptr.as_ptr().add(base);
            RingPtrs {
                ctl: b.cast::<RingCtl>(),
                lens: b.add(RING_LENS_OFFSET).cast::<AtomicU32>(),
                slots: b.add(ring_slots_offset(self.ring_slots)),
                n_slots: self.ring_slots,
            }
        }
    }
}

/// The mapped region. Cloneable handle (Arc inside); `Send + Sync`.
#[derive(Clone)]
pub struct Region {
    map: Arc<Mapping>,
}

fn io_err() -> ShmError {
    ShmError::Io(std::io::Error::last_os_error())
}

impl Region {
    /// Engine side: `memfd_create("ils-shm")`, size it, seal it against shrink/grow, mmap shared,
    /// initialize header + rings. Bumps nothing: call `header().set_engine_generation` after.
    pub fn create(n_shards: usize, ring_slots: u32) -> Result<Region, ShmError> {
        check_geometry(n_shards, ring_slots).map_err(ShmError::BadLayout)?;
        let len = region_size(n_shards, ring_slots);
        // SAFETY: valid NUL-terminated name; result checked.
        let raw = unsafe {
            libc::memfd_create(
                c"ils-shm".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(io_err());
        }
        // SAFETY: memfd_create returned a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain syscalls on an fd we own; results checked.
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) != 0 {
                return Err(io_err());
            }
            if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) != 0 {
                return Err(io_err());
            }
        }
        let mut m = Mapping::map(fd, len)?;
        m.set_geometry(n_shards, ring_slots);
        // Zero-filled by the kernel: rings start empty (head = tail = 0), counters 0.
        m.header().init(n_shards as u32, ring_slots, len as u64);
        Ok(Region { map: Arc::new(m) })
    }

    /// Control side: mmap an fd received from the engine and validate magic, ABI_VERSION, the size
    /// table, n_shards/ring_slots vs file size, and the memfd seals. Mismatch ->
    /// [`ShmError::AbiMismatch`] naming the field; bad geometry -> [`ShmError::BadLayout`].
    pub fn attach(fd: OwnedFd) -> Result<Region, ShmError> {
        // SAFETY: fstat into a zeroed stat struct; result checked.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io_err());
        }
        let file_len =
            u64::try_from(st.st_size).map_err(|_| ShmError::BadLayout("negative file size"))?;
        if file_len < HEADER_SIZE as u64 {
            return Err(ShmError::BadLayout("file smaller than the header"));
        }
        let max = region_size(MAX_SHARDS, MAX_RING_SLOTS) as u64;
        if file_len > max {
            return Err(ShmError::BadLayout(
                "file larger than the largest valid region",
            ));
        }
        // SAFETY: fcntl query on an fd we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0
            || seals & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
                != (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
        {
            return Err(ShmError::BadLayout("memfd not sealed against shrink/grow"));
        }
        let mut m = Mapping::map(fd, file_len as usize)?;
        let (n_shards, ring_slots) = validate_header(m.header(), file_len)?;
        m.set_geometry(n_shards, ring_slots);
        Ok(Region { map: Arc::new(m) })
    }

    /// The memfd (to pass to control with [`crate::send_attach_fds`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd.as_fd()
    }

    /// Validated shard count.
    pub fn n_shards(&self) -> usize {
        self.map.n_shards
    }

    /// Validated slots per ring.
    pub fn ring_slots(&self) -> u32 {
        self.map.ring_slots
    }

    /// Mapped bytes.
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// Always false (a region has at least a header); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The header.
    pub fn header(&self) -> &Header {
        self.map.header()
    }

    fn endpoint_claim(
        &self,
        shard: usize,
        dir: usize,
        consumer: bool,
    ) -> Option<(RingPtrs, usize)> {
        if shard >= self.map.n_shards {
            return None;
        }
        let ring = shard * 2 + dir;
        let claim = ring * 2 + consumer as usize;
        if !self.map.claim(claim) {
            return None;
        }
        Some((self.map.ring(ring), claim))
    }

    /// Command ring producer (control -> shard). `None` if `shard` is out of range or this
    /// endpoint is already held through this mapping (one producer per ring).
    pub fn command_producer(&self, shard: usize) -> Option<Producer> {
        let (p, c) = self.endpoint_claim(shard, 0, false)?;
        Some(Producer::new(self.map.clone(), p, c))
    }

    /// Command ring consumer (in the shard).
    pub fn command_consumer(&self, shard: usize) -> Option<Consumer> {
        let (p, c) = self.endpoint_claim(shard, 0, true)?;
        Some(Consumer::new(self.map.clone(), p, c))
    }

    /// Event ring producer (in the shard).
    pub fn event_producer(&self, shard: usize) -> Option<Producer> {
        let (p, c) = self.endpoint_claim(shard, 1, false)?;
        Some(Producer::new(self.map.clone(), p, c))
    }

    /// Event ring consumer (control).
    pub fn event_consumer(&self, shard: usize) -> Option<Consumer> {
        let (p, c) = self.endpoint_claim(shard, 1, true)?;
        Some(Consumer::new(self.map.clone(), p, c))
    }

    /// Shard `shard`'s counters.
    pub fn counters(&self, shard: usize) -> Option<&ShardCounters> {
        if shard >= self.map.n_shards {
            return None;
        }
        // SAFETY: shard < n_shards, so the block lies inside the validated mapping, 128-aligned;
        // ShardCounters holds only atomics.
        Some(unsafe {
            &*self
                .map
                .ptr
                .as_ptr()
                .add(counters_offset(shard))
                .cast::<ShardCounters>()
        })
    }
}

/// Check magic, ABI version, size table and geometry. Returns (n_shards, ring_slots).
fn validate_header(h: &Header, file_len: u64) -> Result<(usize, u32), ShmError> {
    let ours_magic = u64::from_le_bytes(MAGIC);
    let theirs_magic = u64::from_le_bytes(h.magic());
    if theirs_magic != ours_magic {
        return Err(ShmError::AbiMismatch {
            field: "magic",
            ours: ours_magic,
            theirs: theirs_magic,
        });
    }
    if h.abi_version() != ABI_VERSION {
        return Err(ShmError::AbiMismatch {
            field: "abi_version",
            ours: ABI_VERSION as u64,
            theirs: h.abi_version() as u64,
        });
    }
    let table = size_table();
    let theirs_len = h.size_table_len_raw();
    if theirs_len as usize != table.len() || theirs_len as usize > SIZE_TABLE_CAP {
        return Err(ShmError::AbiMismatch {
            field: "size_table_len",
            ours: table.len() as u64,
            theirs: theirs_len as u64,
        });
    }
    for (i, e) in table.iter().enumerate() {
        let theirs = h.size_table_entry(i);
        if theirs != e.value {
            return Err(ShmError::AbiMismatch {
                field: e.name,
                ours: e.value as u64,
                theirs: theirs as u64,
            });
        }
    }
    let n_shards = h.n_shards_raw() as usize;
    let ring_slots = h.ring_slots_raw();
    check_geometry(n_shards, ring_slots).map_err(ShmError::BadLayout)?;
    let need = region_size(n_shards, ring_slots) as u64;
    if h.total_size_raw() != need {
        return Err(ShmError::BadLayout(
            "total_size disagrees with n_shards/ring_slots",
        ));
    }
    if file_len < need {
        return Err(ShmError::BadLayout(
            "file smaller than n_shards/ring_slots require",
        ));
    }
    Ok((n_shards, ring_slots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Command, Event};
    use crate::{Counter, Full, DEFAULT_RING_SLOTS, SLOT_SIZE};

    fn dup(r: &Region) -> OwnedFd {
        r.fd().try_clone_to_owned().unwrap()
    }

    #[test]
    fn create_validates_geometry() {
        assert!(matches!(
            Region::create(0, 1024),
            Err(ShmError::BadLayout(_))
        ));
        assert!(matches!(
            Region::create(MAX_SHARDS + 1, 1024),
            Err(ShmError::BadLayout(_))
        ));
        assert!(matches!(
            Region::create(1, 1000),
            Err(ShmError::BadLayout(_))
        ));
        let r = Region::create(2, DEFAULT_RING_SLOTS).unwrap();
        assert_eq!(r.n_shards(), 2);
        assert_eq!(r.len(), region_size(2, DEFAULT_RING_SLOTS));
        assert_eq!(r.header().magic(), MAGIC);
        assert_eq!(r.header().abi_version(), ABI_VERSION);
        assert!(r.command_producer(2).is_none());
        assert!(r.counters(2).is_none());
    }

    #[test]
    fn attach_sees_same_rings_header_counters() {
        let eng = Region::create(2, 8).unwrap();
        eng.header().set_engine_generation(5);
        eng.header().set_engine_pid(1234);
        eng.header().set_heartbeat_ns(99);
        let ctl = Region::attach(dup(&eng)).unwrap();
        assert_eq!(ctl.n_shards(), 2);
        assert_eq!(ctl.ring_slots(), 8);
        assert_eq!(ctl.header().engine_generation(), 5);
        assert_eq!(ctl.header().engine_pid(), 1234);
        assert_eq!(ctl.header().heartbeat_ns(), 99);

        // control -> shard 1
        let mut cp = ctl.command_producer(1).unwrap();
        let mut cc = eng.command_consumer(1).unwrap();
        let mut buf = [0u8; SLOT_SIZE];
        let n = Command::RemoveLeg { leg: 3 }.encode(10, &mut buf).unwrap();
        cp.try_push(&buf[..n]).unwrap();
        assert_eq!(cc.len(), 1);
        let mut out = [0u8; SLOT_SIZE];
        let m = cc.try_pop(&mut out).unwrap();
        assert_eq!(
            Command::decode(&out[..m]),
            Ok((10, Command::RemoveLeg { leg: 3 }))
        );
        assert!(cc.try_pop(&mut out).is_none());
        // shard 0 rings are distinct from shard 1
        assert!(eng.command_consumer(0).unwrap().try_pop(&mut out).is_none());

        // shard 1 -> control
        let mut ep = eng.event_producer(1).unwrap();
        let mut ec = ctl.event_consumer(1).unwrap();
        let n = Event::DumpDone { shard: 1 }.encode(11, &mut buf).unwrap();
        ep.try_push(&buf[..n]).unwrap();
        let m = ec.try_pop(&mut out).unwrap();
        assert_eq!(
            Event::decode(&out[..m]),
            Ok((11, Event::DumpDone { shard: 1 }))
        );

        eng.counters(1).unwrap().add(Counter::DropReplay, 3);
        assert_eq!(ctl.counters(1).unwrap().get(Counter::DropReplay), 3);
        assert_eq!(ctl.counters(0).unwrap().get(Counter::DropReplay), 0);
    }

    #[test]
    fn endpoints_claimed_once_per_mapping() {
        let r = Region::create(1, 4).unwrap();
        let p = r.command_producer(0).unwrap();
        assert!(r.command_producer(0).is_none());
        assert!(r.clone().command_producer(0).is_none());
        drop(p);
        assert!(r.command_producer(0).is_some());
        let _c = r.command_consumer(0).unwrap();
        assert!(r.command_consumer(0).is_none());
        assert!(r.event_consumer(0).is_some());
    }

    #[test]
    fn restarted_producer_resumes_at_published_tail() {
        let eng = Region::create(1, 4).unwrap();
        let mut cc = eng.command_consumer(0).unwrap();
        {
            let ctl = Region::attach(dup(&eng)).unwrap();
            let mut p = ctl.command_producer(0).unwrap();
            p.try_push(b"one").unwrap();
        } // control dies
        let ctl2 = Region::attach(dup(&eng)).unwrap();
        let mut p2 = ctl2.command_producer(0).unwrap();
        p2.try_push(b"two").unwrap();
        let mut out = [0u8; SLOT_SIZE];
        let n = cc.try_pop(&mut out).unwrap();
        assert_eq!(&out[..n], b"one");
        let n = cc.try_pop(&mut out).unwrap();
        assert_eq!(&out[..n], b"two");
    }

    fn expect_mismatch(field: &str, v: u64) {
        let eng = Region::create(1, 4).unwrap();
        eng.header().patch(field, v);
        match Region::attach(dup(&eng)) {
            Err(ShmError::AbiMismatch {
                field: f, theirs, ..
            }) => {
                assert_eq!(f, field);
                assert_eq!(theirs, v);
            }
            Err(e) => panic!("{field}: unexpected error {e}"),
            Ok(_) => panic!("{field}: attach accepted a patched header"),
        }
    }

    #[test]
    fn attach_refuses_abi_mismatch_naming_the_field() {
        expect_mismatch("magic", u64::from_le_bytes(*b"ILS-SHM\x01"));
        expect_mismatch("abi_version", u64::from(ABI_VERSION) + 1);
        expect_mismatch("size_table_len", 3);
        for e in size_table() {
            expect_mismatch(e.name, e.value as u64 + 1);
        }
        // Error text names the field (E1 evidence).
        let eng = Region::create(1, 4).unwrap();
        eng.header().patch("slot_size", 4096);
        let msg = Region::attach(dup(&eng)).err().unwrap().to_string();
        assert!(
            msg.contains("slot_size") && msg.contains("2048") && msg.contains("4096"),
            "{msg}"
        );
    }

    #[test]
    fn attach_refuses_bad_geometry() {
        for (field, v) in [
            ("n_shards", 0u64),
            ("n_shards", 2),
            ("n_shards", 65),
            ("ring_slots", 3),
            ("ring_slots", 8),
            ("total_size", 1),
        ] {
            let eng = Region::create(1, 4).unwrap();
            eng.header().patch(field, v);
            assert!(
                matches!(Region::attach(dup(&eng)), Err(ShmError::BadLayout(_))),
                "{field}={v}"
            );
        }
    }

    #[test]
    fn attach_refuses_foreign_files() {
        // Not sealed: a plain memfd of the right size with a valid-looking header.
        // SAFETY: test-only syscalls, results checked.
        let raw = unsafe { libc::memfd_create(c"x".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        assert!(matches!(
            Region::attach(fd.try_clone().unwrap()),
            Err(ShmError::BadLayout(_))
        ));
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 1 << 20) }, 0);
        assert!(matches!(Region::attach(fd), Err(ShmError::BadLayout(_))));
        // Sealed but all zero -> magic mismatch.
        let raw = unsafe {
            libc::memfd_create(c"y".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 1 << 20) }, 0);
        assert_eq!(
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) },
            0
        );
        assert!(matches!(
            Region::attach(fd),
            Err(ShmError::AbiMismatch { field: "magic", .. })
        ));
        // The engine's memfd cannot be shrunk by a peer.
        let eng = Region::create(1, 4).unwrap();
        assert_ne!(unsafe { libc::ftruncate(eng.fd().as_raw_fd(), 4096) }, 0);
    }

    #[test]
    fn ring_fill_full_counter_then_drain_in_order() {
        let r = Region::create(1, 8).unwrap();
        let mut p = r.command_producer(0).unwrap();
        let mut c = r.command_consumer(0).unwrap();
        for i in 0..8u8 {
            p.try_push(&[i; 3]).unwrap();
        }
        assert_eq!(p.len(), 8);
        assert_eq!(p.try_push(b"x"), Err(Full));
        assert_eq!(p.try_push(b"y"), Err(Full));
        assert_eq!(p.full_count(), 2);
        assert_eq!(c.full_count(), 2);
        // Oversize is refused too (and counted), never truncated.
        let mut out = [0u8; SLOT_SIZE];
        assert_eq!(c.try_pop(&mut out), Some(3));
        assert_eq!(p.try_push(&[0u8; SLOT_SIZE + 1]), Err(Full));
        assert_eq!(p.full_count(), 3);
        p.try_push(&[9u8; SLOT_SIZE]).unwrap();
        for i in 1..8u8 {
            assert_eq!(c.try_pop(&mut out), Some(3));
            assert_eq!(&out[..3], &[i; 3]);
        }
        assert_eq!(c.try_pop(&mut out), Some(SLOT_SIZE));
        assert!(out.iter().all(|b| *b == 9));
        assert_eq!(c.try_pop(&mut out), None);
        assert!(p.is_empty() && c.is_empty());
        // Zero-length messages are allowed.
        p.try_push(&[]).unwrap();
        assert_eq!(c.try_pop(&mut out), Some(0));
    }

    #[test]
    fn garbage_length_word_is_bounded() {
        let r = Region::create(1, 4).unwrap();
        let mut p = r.command_producer(0).unwrap();
        let mut c = r.command_consumer(0).unwrap();
        let mut out = [0u8; SLOT_SIZE];
        for garbage in [u32::MAX, SLOT_SIZE as u32 + 1, 1 << 31] {
            p.try_push(b"hello").unwrap();
            c.poke_next_len(garbage);
            let n = c.try_pop(&mut out).unwrap();
            assert!(n <= SLOT_SIZE);
            // The decoder rejects whatever is there instead of panicking.
            let _ = Command::decode(&out[..n]);
        }
        assert_eq!(c.bad_len_count(), 3);
    }

    #[test]
    fn hostile_indices_cannot_escape_the_ring() {
        let r = Region::create(1, 4).unwrap();
        let ctl = r.map.ring(0);
        // SAFETY: test pokes the shared control block as a hostile peer would.
        let rc = unsafe { &*ctl.ctl };
        let mut p = r.command_producer(0).unwrap();
        let mut c = r.command_consumer(0).unwrap();
        let mut out = [0u8; SLOT_SIZE];
        // Consumer's head jumps ahead of tail: producer sees "full", never writes out of bounds.
        rc.head.v.store(u64::MAX - 3, Ordering::Release);
        assert_eq!(p.try_push(b"a"), Err(Full));
        assert!(p.len() <= 4);
        // Producer's tail jumps far ahead: consumer pops slots by mask, lengths bounded.
        rc.tail.v.store(1 << 40, Ordering::Release);
        for _ in 0..10 {
            let n = c.try_pop(&mut out).unwrap();
            assert!(n <= SLOT_SIZE);
        }
        assert!(c.len() <= 4);
    }

    #[test]
    fn spsc_two_threads_one_million_in_order() {
        const N: u64 = 1_000_000;
        let r = Region::create(1, 1024).unwrap();
        let mut p = r.command_producer(0).unwrap();
        let ctl = Region::attach(dup(&r)).unwrap();
        let mut c = ctl.command_consumer(0).unwrap();
        let t = std::thread::spawn(move || {
            let mut spins = 0u32;
            for i in 0..N {
                let b = i.to_le_bytes();
                let len = 8 + (i % 17) as usize;
                let mut msg = [0xA5u8; 32];
                msg[..8].copy_from_slice(&b);
                while p.try_push(&msg[..len]).is_err() {
                    spins += 1;
                    if spins % 64 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
            p.full_count()
        });
        let mut out = [0u8; SLOT_SIZE];
        let mut next = 0u64;
        let mut spins = 0u32;
        while next < N {
            match c.try_pop(&mut out) {
                Some(n) => {
                    assert_eq!(n, 8 + (next % 17) as usize);
                    assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), next);
                    assert!(out[8..n].iter().all(|b| *b == 0xA5));
                    next += 1;
                }
                None => {
                    spins += 1;
                    if spins % 64 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        let fulls = t.join().unwrap();
        assert!(c.try_pop(&mut out).is_none());
        assert_eq!(c.full_count(), fulls);
    }
}
