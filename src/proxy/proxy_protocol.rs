//! PROXY protocol v1/v2 on top of the `ppp` crate: building the header we
//! send to backends, and reading the one a front load balancer sends us.
//!
//! Reading is bounded: at most [`MAX_HEADER`] bytes, under the listener's
//! `proxy_protocol_timeout` (enforced by the caller). Bytes the client sent
//! after the header in the same segment are returned so they are forwarded,
//! not lost.

use std::net::SocketAddr;

use ppp::{v1, v2, HeaderResult, PartialResult};

use crate::config::{ProxyAccept, ProxySend};

/// Longest header we accept: v1 is at most 107 bytes; v2 is 16 bytes plus
/// addresses and TLVs. Anything longer is refused rather than buffered.
pub const MAX_HEADER: usize = 1024;
/// Longest v1 line, CRLF included (the spec's bound).
const V1_MAX: usize = 107;

/// Encode the header announcing `src` (the client) connecting to `dst` (us).
pub fn encode(version: ProxySend, src: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    let (src, dst) = same_family(src, dst);
    match version {
        ProxySend::Off => None,
        ProxySend::V1 => Some(v1::Addresses::from((src, dst)).to_string().into_bytes()),
        ProxySend::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .ok(),
    }
}

/// A PROXY v2 header for datagrams (transport DGRAM): a udp listener
/// starts every datagram to the backend with it, as HAProxy's spec has it.
pub fn encode_dgram(src: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    let (src, dst) = same_family(src, dst);
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Datagram,
        (src, dst),
    )
    .build()
    .ok()
}

/// Map a v4/v6 mix onto v6 (v4-mapped) so both ends can be described.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V6(_)) => (
            SocketAddr::new(s.ip().to_ipv6_mapped().into(), s.port()),
            dst,
        ),
        (SocketAddr::V6(_), SocketAddr::V4(d)) => (
            src,
            SocketAddr::new(d.ip().to_ipv6_mapped().into(), d.port()),
        ),
        _ => (src, dst),
    }
}

/// What a complete header told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes the header occupied at the start of the buffer.
    pub len: usize,
    /// The original client and destination; `None` for LOCAL/UNKNOWN
    /// (health checks of the front balancer): use the socket's own addresses.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a PROXY protocol header")]
    Invalid,
    #[error("PROXY protocol {0} header, but the listener expects {1}")]
    WrongVersion(&'static str, &'static str),
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLong,
}

/// Try to parse a header from the bytes received so far.
/// `Ok(None)` means "incomplete, read more".
///
/// # Errors
/// The header is malformed, of a version the listener does not accept, or too long.
pub fn parse(buf: &[u8], accept: ProxyAccept) -> Result<Option<Parsed>, HeaderError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // A v1 header is one text line: wait for its end before parsing, since a
    // line cut inside a field can look malformed rather than incomplete.
    let v1_prefix = b"PROXY ";
    let n = buf.len().min(v1_prefix.len());
    let mut head = buf;
    if buf[..n] == v1_prefix[..n] {
        // The line ends at its first CR or LF, and that must be CRLF: a bare
        // LF (or a CR alone) would be accepted or refused depending on how
        // the bytes were split into reads (found by fuzzing).
        match buf.iter().position(|&b| b == b'\r' || b == b'\n') {
            None => {
                return if buf.len() >= V1_MAX {
                    Err(HeaderError::Invalid)
                } else {
                    Ok(None)
                };
            }
            Some(p) if buf[p] == b'\n' => return Err(HeaderError::Invalid),
            Some(p) if p + 1 == buf.len() => return Ok(None), // the LF is still to come
            Some(p) if buf[p + 1] != b'\n' => return Err(HeaderError::Invalid),
            Some(p) => head = &buf[..p + 2],
        }
    }
    let res = HeaderResult::parse(head);
    if res.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            Err(HeaderError::TooLong)
        } else {
            Ok(None)
        };
    }
    let expect = match accept {
        ProxyAccept::V1 => "v1",
        ProxyAccept::V2 => "v2",
        _ => "",
    };
    match res {
        HeaderResult::V1(Ok(h)) => {
            if accept == ProxyAccept::V2 {
                return Err(HeaderError::WrongVersion("v1", expect));
            }
            let addrs = match h.addresses {
                v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                v1::Addresses::Unknown => None,
            };
            Ok(Some(Parsed {
                len: h.header.len(),
                addrs,
            }))
        }
        HeaderResult::V2(Ok(h)) => {
            if accept == ProxyAccept::V1 {
                return Err(HeaderError::WrongVersion("v2", expect));
            }
            let addrs = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                _ => None,
            };
            Ok(Some(Parsed {
                len: h.len(),
                addrs,
            }))
        }
        _ => Err(HeaderError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_roundtrip_with_trailing_data() {
        let h = encode(ProxySend::V1, a("192.0.2.7:5555"), a("10.0.0.1:80")).unwrap();
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n");
        let mut buf = h.clone();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let p = parse(&buf, ProxyAccept::Any).unwrap().unwrap();
        assert_eq!(p.len, h.len());
        assert_eq!(p.addrs, Some((a("192.0.2.7:5555"), a("10.0.0.1:80"))));
    }

    #[test]
    fn v2_roundtrip_ipv6() {
        let h = encode(ProxySend::V2, a("[2001:db8::1]:4000"), a("[::1]:443")).unwrap();
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        let p = parse(&h, ProxyAccept::V2).unwrap().unwrap();
        assert_eq!(p.len, h.len());
        assert_eq!(p.addrs, Some((a("[2001:db8::1]:4000"), a("[::1]:443"))));
    }

    #[test]
    fn incomplete_then_complete() {
        let h = encode(ProxySend::V2, a("1.2.3.4:1"), a("5.6.7.8:2")).unwrap();
        for cut in 1..h.len() {
            assert_eq!(parse(&h[..cut], ProxyAccept::Any), Ok(None), "cut {cut}");
        }
        assert!(parse(&h, ProxyAccept::Any).unwrap().is_some());
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        for cut in 1..v1.len() {
            assert_eq!(parse(&v1[..cut], ProxyAccept::Any), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn rejects_garbage_and_wrong_version() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n", ProxyAccept::Any),
            Err(HeaderError::Invalid)
        );
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        assert!(matches!(
            parse(v1, ProxyAccept::V2),
            Err(HeaderError::WrongVersion(..))
        ));
        let h = encode(ProxySend::V2, a("1.2.3.4:1"), a("5.6.7.8:2")).unwrap();
        assert!(matches!(
            parse(&h, ProxyAccept::V1),
            Err(HeaderError::WrongVersion(..))
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", ProxyAccept::V1)
                .unwrap()
                .unwrap()
                .addrs,
            None
        );
    }

    #[test]
    fn mixed_families_are_mapped() {
        let h = encode(ProxySend::V1, a("1.2.3.4:1"), a("[::1]:2")).unwrap();
        assert!(String::from_utf8(h)
            .unwrap()
            .starts_with("PROXY TCP6 ::ffff:1.2.3.4 ::1"));
    }

    /// Found by fuzzing: a v1 line must end in CRLF, whatever the reads.
    #[test]
    fn a_v1_line_ends_in_crlf_however_it_is_split() {
        let good = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n".len();
        for cut in 1..=good.len() {
            match parse(&good[..cut], ProxyAccept::Any) {
                Ok(None) => assert!(cut < line, "cut {cut}"),
                Ok(Some(p)) => {
                    assert!(cut >= line, "cut {cut}");
                    assert_eq!(p.len, line);
                }
                Err(e) => panic!("cut {cut}: {e:?}"),
            }
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80 \n"[..],
            b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80 \nGET /\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\rX\r\n",
        ] {
            assert!(
                parse(bad, ProxyAccept::Any).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
