//! Passing the region fd and wake eventfds to a control process over a Unix socket (SCM_RIGHTS).
//!
//! One `sendmsg` carries a 16-byte payload `"ILSFDS\0\0" | count u32 LE | ABI_VERSION u32 LE` and
//! `count` fds in one SCM_RIGHTS control message, in the order: region memfd, one wake eventfd per
//! shard (control writes after pushing commands), one control wake eventfd (shards write after
//! pushing events). The receiver validates the payload, the fd count (3..=MAX_ATTACH_FDS and equal
//! to `count`) and that nothing was truncated; every received fd is owned (closed on error).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::{ABI_VERSION, MAX_SHARDS};

/// Most fds in one attach message: region + `MAX_SHARDS` shard wakes + control wake.
pub const MAX_ATTACH_FDS: usize = MAX_SHARDS + 2;
/// Bytes of the attach payload.
pub const ATTACH_PAYLOAD_LEN: usize = 16;
const PAYLOAD_MAGIC: [u8; 8] = *b"ILSFDS\0\0";

/// Fds received by a control process.
#[derive(Debug)]
pub struct AttachFds {
    /// Region memfd (give to [`crate::Region::attach`]).
    pub region: OwnedFd,
    /// One wake eventfd per shard: control notifies after pushing that shard's commands.
    pub shard_wake: Vec<OwnedFd>,
    /// Control's wake eventfd: shards notify after pushing events.
    pub control_wake: OwnedFd,
}

const fn cmsg_space(n_fds: usize) -> usize {
    // CMSG_SPACE is not const in libc; this matches its definition on Linux.
    let align = std::mem::size_of::<usize>();
    let hdr = (std::mem::size_of::<libc::cmsghdr>() + align - 1) & !(align - 1);
    let data = (n_fds * std::mem::size_of::<RawFd>() + align - 1) & !(align - 1);
    hdr + data
}

const CMSG_BUF: usize = cmsg_space(MAX_ATTACH_FDS);

/// Aligned control-message buffer.
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF]);

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Send `fds` (order: region, shard wakes..., control wake) in one message.
pub fn send_attach_fds(stream: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() < 3 || fds.len() > MAX_ATTACH_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "attach fd count out of range",
        ));
    }
    let mut payload = [0u8; ATTACH_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&PAYLOAD_MAGIC);
    payload[8..12].copy_from_slice(&(fds.len() as u32).to_le_bytes());
    payload[12..16].copy_from_slice(&ABI_VERSION.to_le_bytes());
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut cbuf = CmsgBuf([0u8; CMSG_BUF]);
    let data_len = std::mem::size_of_val(fds) as u32;
    // SAFETY: msghdr is zero-initialised, then pointed at live buffers; CMSG_* macros operate on
    // our own buffer whose size is CMSG_SPACE(fds.len()) <= CMSG_BUF.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(data_len) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(invalid("no room for cmsg"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            data.add(i).write_unaligned(fd.as_raw_fd());
        }
        loop {
            let n = libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n as usize != ATTACH_PAYLOAD_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short attach send",
                ));
            }
            return Ok(());
        }
    }
}

/// Receive one attach message and validate it (payload magic, ABI version, fd count).
pub fn recv_attach_fds(stream: &UnixStream) -> io::Result<AttachFds> {
    let mut payload = [0u8; ATTACH_PAYLOAD_LEN];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut cbuf = CmsgBuf([0u8; CMSG_BUF]);
    let mut fds: Vec<OwnedFd> = Vec::new();
    // SAFETY: as in send; every fd found in SCM_RIGHTS data is wrapped into an OwnedFd at once so it
    // is closed on any error path.
    let (n, flags) = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_BUF as _;
        let n = loop {
            let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            break n as usize;
        };
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let hdr = libc::CMSG_LEN(0) as usize;
                let bytes = ((*cmsg).cmsg_len as usize).saturating_sub(hdr);
                let count = bytes / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    let raw = data.add(i).read_unaligned();
                    if raw >= 0 {
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        (n, msg.msg_flags)
    };
    if flags & libc::MSG_CTRUNC != 0 {
        return Err(invalid("attach fds truncated (too many fds)"));
    }
    if n != ATTACH_PAYLOAD_LEN || payload[..8] != PAYLOAD_MAGIC {
        return Err(invalid("bad attach payload"));
    }
    let count = u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]) as usize;
    let abi = u32::from_le_bytes([payload[12], payload[13], payload[14], payload[15]]);
    if abi != ABI_VERSION {
        return Err(invalid("attach ABI version mismatch"));
    }
    if count != fds.len() || !(3..=MAX_ATTACH_FDS).contains(&count) {
        return Err(invalid("attach fd count mismatch"));
    }
    let control_wake = fds
        .pop()
        .ok_or_else(|| invalid("attach fd count mismatch"))?;
    let mut rest = fds.into_iter();
    let region = rest
        .next()
        .ok_or_else(|| invalid("attach fd count mismatch"))?;
    Ok(AttachFds {
        region,
        shard_wake: rest.collect(),
        control_wake,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, EventFd, Region, SLOT_SIZE};
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn round_trip_region_and_eventfds() {
        let eng = Region::create(2, 8).unwrap();
        eng.header().set_engine_generation(3);
        let wakes = [EventFd::new().unwrap(), EventFd::new().unwrap()];
        let ctl_wake = EventFd::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let fds = [
            eng.fd(),
            wakes[0].as_fd(),
            wakes[1].as_fd(),
            ctl_wake.as_fd(),
        ];
        send_attach_fds(&a, &fds).unwrap();
        let got = recv_attach_fds(&b).unwrap();
        assert_eq!(got.shard_wake.len(), 2);

        let ctl = Region::attach(got.region).unwrap();
        assert_eq!(ctl.header().engine_generation(), 3);
        let shard1_wake = EventFd::from_fd(got.shard_wake.into_iter().nth(1).unwrap());
        let ctl_wake_rx = EventFd::from_fd(got.control_wake);

        // control pushes a command to shard 1 and rings its doorbell
        let mut p = ctl.command_producer(1).unwrap();
        let mut buf = [0u8; SLOT_SIZE];
        let n = Command::RemoveTrack { track: 4 }
            .encode(1, &mut buf)
            .unwrap();
        p.try_push(&buf[..n]).unwrap();
        shard1_wake.notify();
        assert!(wakes[1].wait(Some(Duration::from_secs(5))).unwrap());
        assert_eq!(wakes[1].drain(), 1);
        assert_eq!(wakes[0].drain(), 0);
        let mut c = eng.command_consumer(1).unwrap();
        let m = c.try_pop(&mut buf).unwrap();
        assert_eq!(
            Command::decode(&buf[..m]),
            Ok((1, Command::RemoveTrack { track: 4 }))
        );

        // a shard wakes control
        ctl_wake.notify();
        assert!(ctl_wake_rx.wait(Some(Duration::from_secs(5))).unwrap());
        assert_eq!(ctl_wake_rx.drain(), 1);
    }

    #[test]
    fn send_rejects_bad_counts() {
        let (a, _b) = UnixStream::pair().unwrap();
        let e = EventFd::new().unwrap();
        assert!(send_attach_fds(&a, &[e.as_fd(), e.as_fd()]).is_err());
        let many: Vec<_> = (0..MAX_ATTACH_FDS + 1).map(|_| e.as_fd()).collect();
        assert!(send_attach_fds(&a, &many).is_err());
        // The maximum is accepted and received.
        let max: Vec<_> = (0..MAX_ATTACH_FDS).map(|_| e.as_fd()).collect();
        let (c, d) = UnixStream::pair().unwrap();
        send_attach_fds(&c, &max).unwrap();
        assert_eq!(recv_attach_fds(&d).unwrap().shard_wake.len(), MAX_SHARDS);
    }

    #[test]
    fn recv_rejects_garbage_and_missing_fds() {
        use std::io::Write;
        // Payload without fds.
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"ILSFDS\0\0\x03\0\0\0\x01\0\0\0").unwrap();
        assert!(recv_attach_fds(&b).is_err());
        // Garbage payload.
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[0xff; 16]).unwrap();
        assert!(recv_attach_fds(&b).is_err());
        // Peer closed.
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(recv_attach_fds(&b).is_err());
    }
}
