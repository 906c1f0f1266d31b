//! UDP datagrams with their addresses: recvmsg/sendmsg with the
//! IP_PKTINFO / IPV6_PKTINFO control messages a socket bound to a wildcard
//! address needs (which address a datagram was sent to, and the same one
//! as the source of the reply).

use std::{io, net::SocketAddr, os::fd::RawFd};

use super::cvt;

/// Ask for each datagram's destination address (IP_PKTINFO, or
/// IPV6_RECVPKTINFO for `v6`) on a UDP socket bound to a wildcard address.
///
/// # Errors
/// As setsockopt(2).
pub fn set_recv_pktinfo(fd: RawFd, v6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: `on` is a live c_int and its size is passed; setsockopt only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    cvt(rc as isize).map(|_| ())
}

/// Where a datagram was sent to, as IP_PKTINFO reports it: the reply
/// leaves from this address (and interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PktInfo {
    pub addr: std::net::IpAddr,
    pub ifindex: u32,
}

/// One datagram taken by [`udp_recv`].
#[derive(Debug, Clone, Copy)]
pub struct Datagram {
    /// Bytes in the buffer.
    pub len: usize,
    /// The datagram was longer than the buffer (the rest is lost).
    pub truncated: bool,
    pub peer: SocketAddr,
    /// The destination address, when the socket asked for it.
    pub dst: Option<PktInfo>,
}

/// Room for one IPv6 pktinfo control message (the larger of the two).
const CMSG_ROOM: usize = 64;

/// Take one datagram from a nonblocking UDP socket into `buf`, with its
/// sender and (when asked for) its destination address.
///
/// # Errors
/// `WouldBlock` when none is queued; as recvmsg(2).
pub fn udp_recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    // SAFETY: plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut cmsg = [0u64; CMSG_ROOM / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_ROOM as _;
    // SAFETY: every pointer in `msg` points at a live local or at `buf`, with
    // its size; the kernel writes within those sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    let n = cvt(n)?;
    // SAFETY: recvmsg wrote a socket address of `msg_namelen` bytes into `ss`.
    let peer = unsafe { socket2::SockAddr::new(ss, msg.msg_namelen) }
        .as_socket()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
    let mut dst = None;
    // SAFETY: `msg` was filled in by recvmsg; the CMSG macros walk its
    // control buffer within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                dst = Some(PktInfo {
                    addr: std::net::IpAddr::from(u32::from_be(info.ipi_addr.s_addr).to_be_bytes()),
                    ifindex: info.ipi_ifindex as u32,
                });
            } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>());
                dst = Some(PktInfo {
                    addr: std::net::IpAddr::from(info.ipi6_addr.s6_addr),
                    ifindex: info.ipi6_ifindex,
                });
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Datagram {
        len: n.min(buf.len()),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        peer,
        dst,
    })
}

/// Send one datagram from a nonblocking UDP socket to `to`, leaving from
/// `from` when given (a socket bound to a wildcard address: the reply
/// must come from the address the client sent to).
///
/// # Errors
/// `WouldBlock` when the send buffer is full; as sendmsg(2).
pub fn udp_send(
    fd: RawFd,
    data: &[u8],
    to: SocketAddr,
    from: Option<PktInfo>,
) -> io::Result<usize> {
    let to = socket2::SockAddr::from(to);
    let mut cmsg = [0u64; CMSG_ROOM / 8];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // sendmsg only reads the address (the cast away from const is its ABI).
    msg.msg_name = to.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = to.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(info) = from {
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_ROOM as _;
        // SAFETY: the control buffer is CMSG_ROOM bytes, enough for one
        // header and an in6_pktinfo (the larger payload); CMSG_FIRSTHDR
        // points into it and the payload is written within CMSG_LEN.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            match info.addr {
                std::net::IpAddr::V4(a) => {
                    (*c).cmsg_level = libc::IPPROTO_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    (*c).cmsg_len =
                        libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
                    let p = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from_be_bytes(a.octets()).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), p);
                    msg.msg_controllen =
                        libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
                }
                std::net::IpAddr::V6(a) => {
                    (*c).cmsg_level = libc::IPPROTO_IPV6;
                    (*c).cmsg_type = libc::IPV6_PKTINFO;
                    (*c).cmsg_len =
                        libc::CMSG_LEN(std::mem::size_of::<libc::in6_pktinfo>() as u32) as _;
                    let p = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: a.octets(),
                        },
                        ipi6_ifindex: info.ifindex,
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(), p);
                    msg.msg_controllen =
                        libc::CMSG_SPACE(std::mem::size_of::<libc::in6_pktinfo>() as u32) as _;
                }
            }
        }
    }
    // SAFETY: every pointer in `msg` points at a live local or at `data`,
    // with its size; sendmsg only reads them.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    cvt(n)
}
