//! Non-blocking eventfd wakeups (`EFD_NONBLOCK | EFD_CLOEXEC`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An eventfd used as a doorbell: the producer of a ring calls [`EventFd::notify`] after pushing,
/// the consumer waits (poll/epoll/io_uring) and calls [`EventFd::drain`] before draining the ring.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// New eventfd with counter 0, `EFD_NONBLOCK | EFD_CLOEXEC`.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; result checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd returned a fresh fd we own.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// Wrap an eventfd received from the peer. It is expected to be non-blocking; if it is not,
    /// [`EventFd::drain`] could block, so the flag is set here (best effort).
    pub fn from_fd(fd: OwnedFd) -> Self {
        // SAFETY: fcntl on an fd we own; failures leave the fd unchanged.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if fl >= 0 && fl & libc::O_NONBLOCK == 0 {
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
        EventFd { fd }
    }

    /// Add 1 to the counter (wakes waiters). Never blocks; a saturated counter (EAGAIN) already
    /// means "wake", so errors are ignored.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Read and reset the counter; 0 when nothing was pending (or on error).
    pub fn drain(&self) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a live u64.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            v
        } else {
            0
        }
    }

    /// Block up to `timeout` (forever when `None`) until the counter is non-zero. Returns whether it
    /// became readable. Does not drain. For control-side loops and tests; the engine uses io_uring.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let ms = match timeout {
            None => -1,
            Some(d) => d.as_millis().min(i32::MAX as u128) as i32,
        };
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(r > 0 && p.revents & libc::POLLIN != 0);
        }
    }

    /// The raw fd (for epoll / io_uring registration).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Duplicate the fd (same counter).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(EventFd {
            fd: self.fd.try_clone()?,
        })
    }

    /// Give up the fd.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_drain_and_clone() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.drain(), 0);
        assert!(!e.wait(Some(Duration::from_millis(0))).unwrap());
        e.notify();
        e.notify();
        let c = e.try_clone().unwrap();
        c.notify();
        assert!(e.wait(Some(Duration::from_millis(0))).unwrap());
        assert_eq!(e.drain(), 3);
        assert_eq!(c.drain(), 0);
    }

    #[test]
    fn wakes_other_thread() {
        let e = EventFd::new().unwrap();
        let c = e.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            c.notify();
        });
        assert!(e.wait(Some(Duration::from_secs(10))).unwrap());
        assert_eq!(e.drain(), 1);
        t.join().unwrap();
    }
}
