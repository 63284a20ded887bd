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
