//! Request mirroring: a copy of a share of a route's requests goes to a
//! shadow upstream in a task of its own. The client's exchange never waits
//! for it and never sees how it went; its response is read and dropped
//! (so the shadow connection can be pooled). Bounded: only requests whose
//! whole body ringlb holds already (the head plus at most 16 KiB) are
//! copied, and at most [`MAX_IN_FLIGHT`] copies per route per worker are
//! on their way; the rest are skipped and counted.

use std::{cell::Cell, io, rc::Rc, sync::Arc, time::Duration};

use super::{
    h1::{
        body::timed_write,
        chunked::Chunked,
        client::{read_response_head, Interim, MAX_RESPONSE_HEAD},
        codec::{Framing, Response},
    },
    phases::Plan,
    HttpProxy,
};
use crate::{
    config::HeaderOps,
    io::{rbuf::RBuf, stream::Stream},
    metrics::WorkerMetrics,
    upstream::{connect::timed_connect, Replica},
};

/// Copies on their way, per route per worker.
const MAX_IN_FLIGHT: u32 = 64;

/// One route's mirror on one worker.
pub(super) struct Mirror {
    up: Rc<Replica>,
    /// Thousandths of a request copied per request.
    share: u32,
    /// The share accumulated: a copy goes when it reaches a whole request.
    acc: Cell<u32>,
    in_flight: Rc<Cell<u32>>,
}

impl Mirror {
    pub(super) fn new(up: Rc<Replica>, share: f64) -> Mirror {
        Mirror {
            up,
            share: (share.clamp(0.0, 1.0) * 1000.0).round() as u32,
            acc: Cell::new(0),
            in_flight: Rc::new(Cell::new(0)),
        }
    }
}

/// Copy the request (its head for the backend, `head`, with the body when
/// it is all there) to route `ri`'s shadow upstream, when its share says so.
pub(super) fn maybe(l: &HttpProxy, ri: usize, plan: &Plan, head: &[u8]) {
    let Some(m) = l.routes.get(ri).and_then(|r| r.mirror.as_ref()) else {
        return;
    };
    let acc = m.acc.get() + m.share;
    if acc < 1000 {
        m.acc.set(acc);
        return;
    }
    m.acc.set(acc - 1000);
    let rm = &l.metrics.listeners[l.li].routes[ri];
    // Only what is held whole, and not an upgrade or a request that needs
    // the backend's address as its Host.
    if !plan.body_sent || plan.needs_host || plan.upgrading || m.in_flight.get() >= MAX_IN_FLIGHT {
        rm.mirror_skipped.inc();
        return;
    }
    m.in_flight.set(m.in_flight.get() + 1);
    let copy = Copy {
        up: Rc::clone(&m.up),
        metrics: Arc::clone(&l.metrics),
        li: l.li,
        ri,
        head: head.to_vec(),
        is_head: plan.is_head,
        connect_timeout: l.cfg.connect_timeout,
        response_timeout: l.http.response_timeout,
        body_timeout: l.http.body_timeout,
        in_flight: Rc::clone(&m.in_flight),
    };
    monoio::spawn(copy.run());
}

/// One copy on its way.
struct Copy {
    up: Rc<Replica>,
    metrics: Arc<WorkerMetrics>,
    li: usize,
    ri: usize,
    head: Vec<u8>,
    is_head: bool,
    connect_timeout: Duration,
    response_timeout: Duration,
    body_timeout: Duration,
    in_flight: Rc<Cell<u32>>,
}

impl Copy {
    async fn run(self) {
        let limit = self.connect_timeout + self.response_timeout + self.body_timeout;
        let r = crate::io::timer::timeout(limit, self.send()).await;
        let rm = &self.metrics.listeners[self.li].routes[self.ri];
        match r {
            Ok(Ok(())) => rm.mirrored.inc(),
            Ok(Err(e)) => {
                rm.mirror_failed.inc();
                tracing::debug!(upstream = %self.up.cfg.name, "mirrored request failed: {e}");
            }
            Err(_) => {
                rm.mirror_failed.inc();
                tracing::debug!(upstream = %self.up.cfg.name, "mirrored request timed out");
            }
        }
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
    }

    async fn send(&self) -> io::Result<()> {
        let up = &*self.up;
        let picked = up
            .pick(0, &[])
            .map_err(|_| io::Error::other("no shadow backend available"))?;
        let addr = picked.backend().addr;
        let stream = match up.take_idle(&picked, true) {
            Some(s) => s,
            None => timed_connect(
                addr,
                self.connect_timeout,
                &self.metrics,
                up.ui,
                up.tls.as_deref(),
            )
            .await
            .map_err(|e| io::Error::other(e.to_string()))?,
        };
        let inflight = up.open(picked);
        inflight.backend().count_request();
        timed_write(&stream, &self.head, &[], self.body_timeout).await?;
        let mut buf = RBuf::new(4096, MAX_RESPONSE_HEAD);
        let mut resp = Response::default();
        let ops = HeaderOps::default();
        let interim = Interim {
            client: None,
            http11: false,
            write_timeout: self.body_timeout,
            ops: &ops,
        };
        let deadline = std::time::Instant::now() + self.response_timeout;
        read_response_head(
            &stream,
            &mut buf,
            &mut resp,
            self.is_head,
            deadline,
            &interim,
        )
        .await
        .map_err(|k| io::Error::other(format!("{k:?}")))?;
        buf.consume(resp.head_len);
        discard(&stream, &mut buf, resp.framing, self.body_timeout).await?;
        if resp.minor == 1
            && !resp.conn.close
            && resp.framing != Framing::UntilClose
            && buf.is_empty()
        {
            up.put_idle(&inflight, stream);
        }
        Ok(())
    }
}

/// Read one response body and drop it.
async fn discard(
    src: &Stream,
    buf: &mut RBuf,
    framing: Framing,
    timeout: Duration,
) -> io::Result<()> {
    let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
    match framing {
        Framing::None => Ok(()),
        Framing::Length(mut left) => {
            while left > 0 {
                if buf.is_empty() && buf.fill(src, timeout).await? == 0 {
                    return Err(eof());
                }
                let take = (buf.len() as u64).min(left) as usize;
                buf.consume(take);
                left -= take as u64;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut scan = Chunked::new();
            while !scan.is_done() {
                if buf.is_empty() && buf.fill(src, timeout).await? == 0 {
                    return Err(eof());
                }
                let data = buf.data();
                let mut at = 0;
                while at < data.len() && !scan.is_done() {
                    let step = scan
                        .step(&data[at..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))?;
                    at += step.len;
                    if step.len == 0 {
                        break;
                    }
                }
                buf.consume(at);
            }
            Ok(())
        }
        Framing::UntilClose => {
            buf.clear();
            while buf.fill(src, timeout).await? > 0 {
                buf.clear();
            }
            Ok(())
        }
    }
}
