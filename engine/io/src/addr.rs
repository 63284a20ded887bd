//! Conversions between [`SocketAddr`] and the kernel's `sockaddr_in` / `sockaddr_in6`.
//!
//! Both directions work without allocation. Addresses read from the kernel are untrusted
//! bytes: [`parse_sockaddr`] checks family and length and returns `None` instead of
//! panicking. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket
//! reports for IPv4 peers) are returned as [`SocketAddr::V4`], and [`write_sockaddr`] maps
//! a V4 destination back when the socket is IPv6, so the engine sees one key per peer.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Size of `sockaddr_in` (16 bytes).
pub(crate) const SOCKADDR_IN_LEN: usize = std::mem::size_of::<libc::sockaddr_in>();
/// Size of `sockaddr_in6` (28 bytes): the storage reserved per address everywhere in this crate.
pub(crate) const SOCKADDR_IN6_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// An all-zero `sockaddr_in6`, used to preallocate address storage.
pub(crate) fn zeroed_sockaddr() -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: 0,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
        sin6_scope_id: 0,
    }
}

/// Write `addr` into `out` in the form a socket of the given family accepts and return the
/// length to put in `msg_namelen`. A V4 address on an IPv6 socket becomes `::ffff:a.b.c.d`.
/// An IPv4-mapped V6 address on an IPv4 socket is unmapped. Returns `None` for any other V6
/// address on an IPv4 socket (the kernel could not send it).
pub(crate) fn write_sockaddr(
    addr: SocketAddr,
    socket_is_v6: bool,
    out: &mut libc::sockaddr_in6,
) -> Option<libc::socklen_t> {
    match (addr, socket_is_v6) {
        (SocketAddr::V4(a), false) => {
            write_v4(a, out);
            Some(SOCKADDR_IN_LEN as libc::socklen_t)
        }
        (SocketAddr::V4(a), true) => {
            let v6 = SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0);
            write_v6(v6, out);
            Some(SOCKADDR_IN6_LEN as libc::socklen_t)
        }
        (SocketAddr::V6(a), true) => {
            write_v6(a, out);
            Some(SOCKADDR_IN6_LEN as libc::socklen_t)
        }
        (SocketAddr::V6(a), false) => {
            let v4 = a.ip().to_ipv4_mapped()?;
            write_v4(SocketAddrV4::new(v4, a.port()), out);
            Some(SOCKADDR_IN_LEN as libc::socklen_t)
        }
    }
}

fn write_v4(a: SocketAddrV4, out: &mut libc::sockaddr_in6) {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    *out = zeroed_sockaddr();
    // SAFETY: `sockaddr_in` (16 bytes, align 4) fits in `sockaddr_in6` (28 bytes, align 4);
    // both are plain C structs, so writing one over the start of the other is sound.
    unsafe {
        std::ptr::write(
            (out as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>(),
            sin,
        );
    }
}

fn write_v6(a: SocketAddrV6, out: &mut libc::sockaddr_in6) {
    *out = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: a.port().to_be(),
        sin6_flowinfo: a.flowinfo().to_be(),
        sin6_addr: libc::in6_addr {
            s6_addr: a.ip().octets(),
        },
        sin6_scope_id: a.scope_id(),
    };
}

/// View a `sockaddr_in6` as its raw bytes (for [`parse_sockaddr`]).
pub(crate) fn sockaddr_bytes(sa: &libc::sockaddr_in6) -> &[u8] {
    // SAFETY: `sockaddr_in6` is a plain-old-data C struct without padding
    // (2+2+4+16+4 = 28 bytes), so every byte is initialised and readable.
    unsafe {
        std::slice::from_raw_parts(
            (sa as *const libc::sockaddr_in6).cast::<u8>(),
            SOCKADDR_IN6_LEN,
        )
    }
}

/// Parse a kernel-written socket address (`sockaddr_in` or `sockaddr_in6`, native layout).
/// `None` for an unknown family or a too-short buffer. IPv4-mapped IPv6 becomes V4.
pub fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    if family == libc::AF_INET as u16 {
        let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    } else if family == libc::AF_INET6 as u16 {
        let flow: [u8; 4] = b.get(4..8)?.try_into().ok()?;
        let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
        let scope = match b.get(24..28) {
            Some(s) => u32::from_ne_bytes(s.try_into().ok()?),
            None => 0,
        };
        let ip = Ipv6Addr::from(ip);
        if let Some(v4) = ip.to_ipv4_mapped() {
            return Some(SocketAddr::V4(SocketAddrV4::new(v4, port)));
        }
        Some(SocketAddr::V6(SocketAddrV6::new(
            ip,
            port,
            u32::from_be_bytes(flow),
            scope,
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round(addr: SocketAddr, v6: bool) -> Option<SocketAddr> {
        let mut sa = zeroed_sockaddr();
        let len = write_sockaddr(addr, v6, &mut sa)? as usize;
        parse_sockaddr(&sockaddr_bytes(&sa)[..len])
    }

    #[test]
    fn v4_round_trip() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(round(a, false), Some(a));
        // On a v6 socket it goes out mapped and comes back as V4.
        assert_eq!(round(a, true), Some(a));
    }

    #[test]
    fn v6_round_trip() {
        let a: SocketAddr = "[::1]:443".parse().unwrap();
        assert_eq!(round(a, true), Some(a));
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 9, 7, 3));
        assert_eq!(round(scoped, true), Some(scoped));
    }

    #[test]
    fn v6_on_v4_socket_is_refused_unless_mapped() {
        let a: SocketAddr = "[::1]:443".parse().unwrap();
        assert_eq!(round(a, false), None);
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:9".parse().unwrap();
        assert_eq!(round(mapped, false), Some("10.0.0.1:9".parse().unwrap()));
    }

    #[test]
    fn matches_kernel_layout_via_socket2() {
        for s in ["127.0.0.1:1234", "[::1]:4321", "[2001:db8::5]:1"] {
            let a: SocketAddr = s.parse().unwrap();
            let sa = socket2::SockAddr::from(a);
            // SAFETY: as_ptr points at `len` initialised bytes of the storage.
            let bytes =
                unsafe { std::slice::from_raw_parts(sa.as_ptr().cast::<u8>(), sa.len() as usize) };
            assert_eq!(parse_sockaddr(bytes), Some(a));
        }
    }

    #[test]
    fn truncations_and_bad_family_give_none() {
        let mut sa = zeroed_sockaddr();
        write_sockaddr("[::1]:1".parse().unwrap(), true, &mut sa).unwrap();
        let b = sockaddr_bytes(&sa);
        for n in 0..24 {
            assert_eq!(parse_sockaddr(&b[..n]), None, "len {n}");
        }
        assert!(parse_sockaddr(&b[..24]).is_some());
        let mut sa4 = zeroed_sockaddr();
        write_sockaddr("1.2.3.4:1".parse().unwrap(), false, &mut sa4).unwrap();
        let b4 = sockaddr_bytes(&sa4);
        for n in 0..8 {
            assert_eq!(parse_sockaddr(&b4[..n]), None, "len {n}");
        }
        let mut bad = [0u8; 28];
        bad[0] = 0xee;
        assert_eq!(parse_sockaddr(&bad), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_sockaddr(&b);
        }

        #[test]
        fn any_addr_round_trips(ip in any::<[u8; 16]>(), port in any::<u16>(), v4 in any::<bool>()) {
            let a = if v4 {
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]), port))
            } else {
                let ip6 = Ipv6Addr::from(ip);
                prop_assume!(ip6.to_ipv4_mapped().is_none());
                SocketAddr::V6(SocketAddrV6::new(ip6, port, 0, 0))
            };
            prop_assert_eq!(round(a, true), Some(a));
        }
    }
}
