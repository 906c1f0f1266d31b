//! Idle keep-alive connections to one upstream's backends, per worker:
//! one most-recently-used stack per backend, aligned with the replica's
//! view of the backend set (a new set version moves the stacks by backend
//! id; the stacks of removed backends close).

use std::{collections::VecDeque, time::Duration, time::Instant};

use crate::io::stream::Stream;

struct IdleConn {
    stream: Stream,
    since: Instant,
}

/// Per backend (in set order): idle connections, most recently used at the back.
#[derive(Default)]
pub struct IdlePool {
    stacks: Vec<VecDeque<IdleConn>>,
}

impl IdlePool {
    pub fn new(backends: usize) -> IdlePool {
        IdlePool {
            stacks: (0..backends).map(|_| VecDeque::new()).collect(),
        }
    }

    /// Rebuild for a new set: `from[j]` is the old index of new backend `j`.
    pub fn remap(&mut self, from: &[Option<usize>]) {
        let mut old = std::mem::take(&mut self.stacks);
        self.stacks = from
            .iter()
            .map(|i| {
                i.and_then(|i| old.get_mut(i))
                    .map(std::mem::take)
                    .unwrap_or_default()
            })
            .collect();
    }

    /// The most recently used idle connection to backend `idx` that still
    /// looks usable; stale ones are closed on the way. With `trust_recent`,
    /// a connection pooled less than that long ago is taken without asking
    /// the socket (a syscall): the caller can replay its request on a new
    /// connection if this one turns out closed.
    pub fn take(
        &mut self,
        idx: usize,
        timeout: Duration,
        trust_recent: Option<Duration>,
    ) -> Option<Stream> {
        let q = self.stacks.get_mut(idx)?;
        while let Some(c) = q.pop_back() {
            let idle = c.since.elapsed();
            if idle < timeout && (trust_recent.is_some_and(|t| idle < t) || c.stream.idle_usable())
            {
                return Some(c.stream);
            }
        }
        None
    }

    /// Keep `stream` for backend `idx`, at most `max` per backend (the
    /// oldest goes first).
    pub fn put(&mut self, idx: usize, stream: Stream, max: usize) {
        if max == 0 {
            return;
        }
        if let Some(q) = self.stacks.get_mut(idx) {
            if q.len() >= max {
                q.pop_front();
            }
            q.push_back(IdleConn {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Close pooled connections that timed out or that the backend closed.
    /// O(pooled connections).
    pub fn sweep(&mut self, timeout: Duration) {
        for q in &mut self.stacks {
            q.retain(|c| c.since.elapsed() < timeout && c.stream.idle_usable());
        }
    }

    /// Close every pooled connection (shutdown).
    pub fn clear(&mut self) {
        for q in &mut self.stacks {
            q.clear();
        }
    }
}
