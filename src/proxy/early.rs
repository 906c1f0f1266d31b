//! Early bytes: what a connection carries before its protocol starts.
//! Today the PROXY header a front balancer sends (and the bytes that
//! followed it in the same read); a peeked TLS ClientHello or an h2
//! preface join here. Both handlers take what this returns and replay the
//! bytes (tcp: to the backend first; http: into the head buffer).

use std::{io, net::SocketAddr};

use super::proxy_protocol::{self, MAX_HEADER};
use crate::{
    config::{ListenerConfig, ProxyAccept},
    io::{relay, stream::Stream},
};

/// What was read before the protocol starts.
#[derive(Debug, Default)]
pub struct Early {
    /// Source and destination from a PROXY header.
    pub origin: Option<(SocketAddr, SocketAddr)>,
    /// Bytes read past the header: the start of the client's stream.
    pub bytes: Vec<u8>,
}

/// When the listener expects a PROXY header: read it (within the
/// listener's deadline) and return the addresses it carries and the bytes
/// that followed it. `None`: refused or late (logged); close the client.
pub async fn read(client: &Stream, cfg: &ListenerConfig, peer: SocketAddr) -> Option<Early> {
    if cfg.accept_proxy_protocol == ProxyAccept::Off {
        return Some(Early::default());
    }
    let read = read_proxy_header(client, cfg.accept_proxy_protocol);
    match crate::io::timer::timeout(cfg.proxy_protocol_timeout, read).await {
        Ok(Ok((origin, bytes))) => Some(Early { origin, bytes }),
        Ok(Err(e)) => {
            tracing::debug!(listener = %cfg.name, %peer, "PROXY header refused: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(listener = %cfg.name, %peer, "no PROXY header within {:?}", cfg.proxy_protocol_timeout);
            None
        }
    }
}

/// Read a PROXY header; return the addresses it carries and any bytes that
/// followed it in the same read.
async fn read_proxy_header(
    client: &Stream,
    accept: ProxyAccept,
) -> io::Result<(Option<(SocketAddr, SocketAddr)>, Vec<u8>)> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut len = 0;
    loop {
        let n = relay::read_some(client, &mut buf[len..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the PROXY header ended",
            ));
        }
        len += n;
        match proxy_protocol::parse(&buf[..len], accept) {
            Ok(Some(p)) => {
                let rest = buf[p.len..len].to_vec();
                return Ok((p.addrs, rest));
            }
            Ok(None) if len < buf.len() => continue,
            Ok(None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    proxy_protocol::HeaderError::TooLong,
                ))
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}
