//! Plain-syscall backend: `ppoll(2)` on the socket and the wake eventfd, then one
//! `recvmmsg(2)` into preallocated buffers.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::addr::{parse_sockaddr, sockaddr_bytes, zeroed_sockaddr, SOCKADDR_IN6_LEN};
use crate::{IoError, PollStats, MAX_DATAGRAM, RECV_BUF_SIZE};

/// Preallocated `recvmmsg` state for `batch` datagrams: batch × ([`RECV_BUF_SIZE`] + 28 B name
/// + 64 B mmsghdr + 16 B iovec) ≈ 2.1 KiB per datagram (≈ 136 KiB at the default batch 64).
pub(crate) struct MmsgRx {
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_in6>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    fd: RawFd,
    wake_fd: RawFd,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Drain an eventfd (non-semaphore: one read resets the counter). Errors (EAGAIN) ignored.
pub(crate) fn drain_eventfd(fd: RawFd) {
    let mut v = 0u64;
    // SAFETY: reads at most 8 bytes into a local u64.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

impl MmsgRx {
    pub(crate) fn new(fd: RawFd, wake_fd: RawFd, batch: usize) -> Self {
        // SAFETY: all-zero mmsghdr is valid (null pointers, zero lengths).
        let zero: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut rx = MmsgRx {
            bufs: vec![0; batch * RECV_BUF_SIZE],
            names: vec![zeroed_sockaddr(); batch],
            iov: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                batch
            ],
            msgs: vec![zero; batch],
            fd,
            wake_fd,
        };
        let bufs = rx.bufs.as_mut_ptr();
        for i in 0..batch {
            // SAFETY: i * RECV_BUF_SIZE < bufs.len().
            rx.iov[i].iov_base = unsafe { bufs.add(i * RECV_BUF_SIZE) }.cast();
            rx.iov[i].iov_len = RECV_BUF_SIZE;
        }
        rx
    }

    fn reset(&mut self, n: usize) {
        let names = self.names.as_mut_ptr();
        let iov = self.iov.as_mut_ptr();
        for (i, m) in self.msgs.iter_mut().take(n).enumerate() {
            // SAFETY: i < n <= batch = names.len() = iov.len().
            m.msg_hdr.msg_name = unsafe { names.add(i) }.cast();
            m.msg_hdr.msg_namelen = SOCKADDR_IN6_LEN as libc::socklen_t;
            // SAFETY: as above.
            m.msg_hdr.msg_iov = unsafe { iov.add(i) };
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = std::ptr::null_mut();
            m.msg_hdr.msg_controllen = 0;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
    }

    pub(crate) fn poll(
        &mut self,
        timeout: Option<Duration>,
        batch: usize,
        on_datagram: &mut dyn FnMut(SocketAddr, &mut [u8]),
    ) -> Result<PollStats, IoError> {
        let mut st = PollStats::default();
        let mut fds = [
            libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as _,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: fds is a valid array of 2 pollfd; tsp is null or points at a live timespec.
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, tsp, std::ptr::null()) };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                return Ok(st);
            }
            return Err(IoError::Io(std::io::Error::from_raw_os_error(e)));
        }
        if fds[1].revents & libc::POLLIN != 0 {
            drain_eventfd(self.wake_fd);
            st.woken = true;
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLERR) == 0 {
            return Ok(st);
        }
        let n = batch.min(self.msgs.len());
        self.reset(n);
        // SAFETY: msgs[..n] point into our own preallocated buffers.
        let got = unsafe {
            libc::recvmmsg(
                self.fd,
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = errno();
            return match e {
                libc::EAGAIN | libc::EINTR => Ok(st),
                libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EINVAL => {
                    Err(IoError::Io(std::io::Error::from_raw_os_error(e)))
                }
                _ => {
                    st.errors += 1;
                    Ok(st)
                }
            };
        }
        for i in 0..(got as usize).min(n) {
            let m = &self.msgs[i];
            let len = m.msg_len as usize;
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > MAX_DATAGRAM {
                st.too_large += 1;
                continue;
            }
            let namelen = (m.msg_hdr.msg_namelen as usize).min(SOCKADDR_IN6_LEN);
            let Some(from) = parse_sockaddr(&sockaddr_bytes(&self.names[i])[..namelen]) else {
                st.errors += 1;
                continue;
            };
            let Some(buf) = self
                .bufs
                .get_mut(i * RECV_BUF_SIZE..i * RECV_BUF_SIZE + len)
            else {
                st.errors += 1;
                continue;
            };
            st.datagrams += 1;
            on_datagram(from, buf);
        }
        Ok(st)
    }
}
