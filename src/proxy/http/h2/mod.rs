//! h2: HTTP/2 client connections, on the same listeners as HTTP/1.1 (ALPN
//! `h2` on TLS listeners, the connection preface in cleartext: h2c with
//! prior knowledge). The `h2` crate does the framing, HPACK, flow control
//! and its own flood limits; ringlb bridges its streams to it
//! ([`crate::io::h2io`]) and drives one connection in one task: the
//! connection's frames, then every open stream as a future of the same
//! task ([`stream`]), so streams borrow the listener and nothing is spawned.
//!
//! Limits beyond h2's own (the `h2` table): streams the client resets
//! before their response began are counted in a window (rapid reset,
//! CVE-2023-44487), PINGs find dead peers, an idle connection gets a
//! GOAWAY, and a drain sends GOAWAY and lets open streams finish.

mod body;
mod ctx;
mod grpc;
mod headers;
mod stream;
mod to_h1;
mod to_h2;

use std::{
    future::{poll_fn, Future},
    net::SocketAddr,
    pin::{pin, Pin},
    task::Poll,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::HttpProxy;
use crate::{
    io::{h2io::H2Io, stream::Stream, tls::TlsInfo},
    listen::ticket::ConnTicket,
};

/// The cleartext HTTP/2 connection preface (RFC 9113 3.4).
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the HTTP/1.1 side knows of the connection when it hands it over.
pub(super) struct Handover {
    pub peer: SocketAddr,
    pub trusted: bool,
    pub local_port: u16,
    pub tls: Option<TlsInfo>,
    pub tls_lines: Vec<u8>,
}

/// Indexes into [`crate::metrics::H2_GOAWAYS`].
const GOAWAY_DRAIN: usize = 0;
const GOAWAY_IDLE: usize = 1;
const GOAWAY_RAPID_RESET: usize = 2;
const GOAWAY_PING: usize = 3;
const GOAWAY_PROTOCOL: usize = 4;
const GOAWAY_FLOOD: usize = 5;

/// After an idle GOAWAY: how long the peer has to close.
const IDLE_GRACE: Duration = Duration::from_secs(5);
/// After an abrupt GOAWAY: how long it has to go out before the socket closes.
const ABRUPT_GRACE: Duration = Duration::from_secs(1);

/// Serve one HTTP/2 client connection to its end. `pre`: bytes read
/// already (the preface, when sniffed).
pub(super) async fn serve(
    l: &HttpProxy,
    client: Stream,
    pre: Bytes,
    h: Handover,
    ticket: &ConnTicket,
) {
    let cfg = &l.http.h2;
    let lm = &l.metrics.listeners[l.li];
    lm.h2.connections.inc();
    let cx = ctx::ConnCtx {
        l,
        peer: h.peer,
        ip: h.peer.ip().to_string(),
        ip_key: crate::limits::client_key(h.peer.ip(), l.cfg.ipv6_prefix),
        trusted: h.trusted,
        local_port: h.local_port.to_string(),
        tls: h.tls,
        tls_fields: headers::tls_fields(&h.tls_lines),
    };
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(cfg.max_concurrent_streams)
        .initial_window_size(cfg.initial_window)
        .initial_connection_window_size(cfg.connection_window)
        .max_frame_size(cfg.max_frame_size)
        .max_header_list_size(l.http.max_header_size as u32)
        .max_send_buffer_size(cfg.max_send_buffer)
        .max_pending_accept_reset_streams(cfg.max_pending_accept_resets);
    let handshake = b.handshake::<_, Bytes>(H2Io::new(client, pre));
    let mut conn = match crate::io::timer::timeout(l.http.header_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(listener = %l.cfg.name, peer = %h.peer, "h2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(listener = %l.cfg.name, peer = %h.peer, "h2 preface not received within header_timeout");
            return;
        }
    };
    let mut ping = conn.ping_pong();
    let mut streams = FuturesUnordered::new();
    let mut stop = pin!(ticket.drain().stopped());
    let mut shutting = false;
    // After a GOAWAY: when the connection is closed whatever the peer does
    // (a peer that never acknowledges, streams that never end).
    let mut hard_stop: Option<Instant> = None;
    let mut aborted = false;
    let mut last_active = Instant::now();
    let mut last_ping = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    let mut resets = (Instant::now(), 0u32);
    let mut timer: Option<(Instant, crate::io::timer::Sleep)> = None;
    let goaway = |i: usize| lm.h2.goaway[i].inc();
    poll_fn(|cx_| {
        loop {
            let now = Instant::now();
            // Streams first: what they finished frees room for new ones.
            while let Poll::Ready(Some(end)) = streams.poll_next_unpin(cx_) {
                let end: stream::Ended = end;
                last_active = now;
                if end.reset_early {
                    if now.duration_since(resets.0) > cfg.reset_window {
                        resets = (now, 0);
                    }
                    resets.1 += 1;
                    if resets.1 > cfg.max_resets {
                        tracing::warn!(listener = %l.cfg.name, peer = %cx.peer, "h2: {} streams reset before their response within {:?} (rapid reset); closing the connection", resets.1, cfg.reset_window);
                        goaway(GOAWAY_RAPID_RESET);
                        conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                        shutting = true;
                        aborted = true;
                        hard_stop = Some(now);
                        streams.clear();
                        break;
                    }
                }
            }
            if !shutting && stop.as_mut().poll(cx_).is_ready() {
                goaway(GOAWAY_DRAIN);
                conn.graceful_shutdown();
                shutting = true;
                // Open streams may finish until the drain's own deadline.
                hard_stop = Some(
                    ticket
                        .drain()
                        .deadline()
                        .map_or(now + l.http.keepalive_timeout, |d| {
                            d.checked_sub(ABRUPT_GRACE).unwrap_or(d)
                        }),
                );
            }
            if let Some(t) = hard_stop {
                if now >= t + ABRUPT_GRACE {
                    return Poll::Ready(());
                }
                if now >= t && !aborted {
                    aborted = true;
                    if !streams.is_empty() || conn.has_streams() {
                        tracing::debug!(listener = %l.cfg.name, peer = %cx.peer, "h2: streams still open at the end of the grace time; closing");
                    }
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    streams.clear();
                }
            }
            match conn.poll_accept(cx_) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    last_active = now;
                    streams.push(stream::serve(&cx, req, respond));
                    continue;
                }
                Poll::Ready(Some(Err(e))) => {
                    if e.is_go_away() && !e.is_remote() {
                        let flood = e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
                        goaway(if flood { GOAWAY_FLOOD } else { GOAWAY_PROTOCOL });
                        tracing::info!(listener = %l.cfg.name, peer = %cx.peer, "h2: connection closed with GOAWAY: {e}");
                    } else {
                        tracing::debug!(listener = %l.cfg.name, peer = %cx.peer, "h2 connection ended: {e}");
                    }
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => {}
            }
            // Liveness: PING answers, then the idle and ping timers.
            if let (Some(_), Some(p)) = (ping_sent, ping.as_mut()) {
                if let Poll::Ready(r) = p.poll_pong(cx_) {
                    ping_sent = None;
                    last_ping = now;
                    if r.is_err() {
                        return Poll::Ready(());
                    }
                }
            }
            let mut next: Option<Instant> = None;
            let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
            if !shutting && streams.is_empty() {
                let idle_end = last_active + l.http.keepalive_timeout;
                if now >= idle_end {
                    goaway(GOAWAY_IDLE);
                    conn.graceful_shutdown();
                    shutting = true;
                    hard_stop = Some(now + IDLE_GRACE);
                    continue;
                }
                at(idle_end);
            }
            if !cfg.ping_interval.is_zero() {
                match ping_sent {
                    Some(sent) if now >= sent + cfg.ping_timeout => {
                        if hard_stop.is_none() {
                            tracing::debug!(listener = %l.cfg.name, peer = %cx.peer, "h2: no PING answer within {:?}; closing", cfg.ping_timeout);
                            goaway(GOAWAY_PING);
                            conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                            shutting = true;
                            aborted = true;
                            streams.clear();
                            hard_stop = Some(now);
                        }
                        if let Some(t) = hard_stop {
                            at(t + ABRUPT_GRACE);
                        }
                    }
                    Some(sent) => at(sent + cfg.ping_timeout),
                    None if now >= last_ping + cfg.ping_interval => {
                        if let Some(p) = ping.as_mut() {
                            if p.send_ping(h2::Ping::opaque()).is_ok() {
                                ping_sent = Some(now);
                                continue;
                            }
                        }
                        last_ping = now;
                    }
                    None => at(last_ping + cfg.ping_interval),
                }
            }
            if let Some(t) = hard_stop {
                at(if now >= t { t + ABRUPT_GRACE } else { t });
            }
            if let Some(t) = next {
                if timer.as_ref().map(|(at, _)| *at) != Some(t) {
                    timer = Some((t, crate::io::timer::sleep_until(t)));
                }
                if let Some((_, s)) = timer.as_mut() {
                    if Pin::new(s).poll(cx_).is_ready() {
                        timer = None;
                        continue;
                    }
                }
            }
            return Poll::Pending;
        }
    })
    .await;
}
