//! The per-packet path never allocates: protect + unprotect of 1000 RTP and 1000 RTCP
//! packets per profile performs zero heap allocations after setup.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ils_srtp::{Profile, SrtpContext};

struct Counting;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    let _ = ENABLED.try_with(|e| {
        if e.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: forwards to the system allocator; only counts calls on the measuring thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn protect_unprotect_do_not_allocate() {
    for profile in [
        Profile::Aes128CmHmacSha1_80,
        Profile::AeadAes128Gcm,
        Profile::AeadAes256Gcm,
    ] {
        // Setup (allocation allowed).
        let key = vec![3u8; profile.master_key_len()];
        let salt = vec![4u8; profile.master_salt_len()];
        let mut tx = SrtpContext::new(profile, &key, &salt).unwrap();
        let mut rx = SrtpContext::new(profile, &key, &salt).unwrap();
        let mut buf = [0u8; 1500];
        let mut plain = [0u8; 1500];
        plain[0] = 0x90; // V=2, X=1
        plain[1] = 96;
        plain[8..12].copy_from_slice(&0xcafe_f00du32.to_be_bytes());
        plain[12..16].copy_from_slice(&[0xbe, 0xde, 0, 1]);
        plain[16..20].copy_from_slice(&[0x10, 0x55, 0, 0]);
        let rtp_len = 20 + 1000;
        let mut rtcp = [0u8; 1500];
        rtcp[..4].copy_from_slice(&[0x81, 0xc9, 0, 7]);
        rtcp[4..8].copy_from_slice(&0xcafe_f00du32.to_be_bytes());
        let rtcp_len = 32;

        ENABLED.with(|e| e.set(true));
        for i in 0..1000u32 {
            let seq = 65000u16.wrapping_add(i as u16); // crosses the ROC boundary
            plain[2..4].copy_from_slice(&seq.to_be_bytes());
            buf[..rtp_len].copy_from_slice(&plain[..rtp_len]);
            let n = tx.protect_rtp(&mut buf, rtp_len).unwrap();
            let m = rx.unprotect_rtp(&mut buf[..n]).unwrap();
            assert_eq!(m, rtp_len);

            buf[..rtcp_len].copy_from_slice(&rtcp[..rtcp_len]);
            let n = tx.protect_rtcp(&mut buf, rtcp_len).unwrap();
            let m = rx.unprotect_rtcp(&mut buf[..n]).unwrap();
            assert_eq!(m, rtcp_len);
            // Errors do not allocate either.
            assert!(rx.unprotect_rtcp(&mut buf[..n]).is_err());
        }
        ENABLED.with(|e| e.set(false));
        let count = COUNT.with(|c| c.replace(0));
        assert_eq!(
            count, 0,
            "{profile:?}: {count} allocations on the packet path"
        );
        assert_eq!(buf[..rtcp_len], rtcp[..rtcp_len]);
    }
}
