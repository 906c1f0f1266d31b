//! A read buffer with a consumed front: bytes arrive at the back, parsed or
//! forwarded bytes leave from the front, and what is left (a pipelined
//! request, the start of a body) stays for the next step.

use std::{io, time::Duration};

use super::{relay::read_some, stream::Stream};

#[derive(Debug)]
pub struct RBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

impl RBuf {
    /// Starts at `initial` bytes and grows up to `max` when a head or a
    /// burst needs it.
    pub fn new(initial: usize, max: usize) -> RBuf {
        RBuf {
            buf: vec![0; initial],
            start: 0,
            end: 0,
            max: max.max(initial),
        }
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Append bytes read elsewhere (what followed a PROXY header).
    pub fn extend(&mut self, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            let spare = self.spare();
            if spare.is_empty() {
                return;
            }
            let n = spare.len().min(bytes.len() - at);
            spare[..n].copy_from_slice(&bytes[at..at + n]);
            self.end += n;
            at += n;
        }
    }

    /// Give back memory a burst grew, when nothing is buffered (between
    /// requests): an idle keep-alive connection keeps `initial` bytes only.
    pub fn shrink(&mut self, initial: usize) {
        if self.is_empty() && self.buf.len() > initial {
            self.buf = vec![0; initial];
            self.start = 0;
            self.end = 0;
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Room to read into: moves the data to the front or grows as needed.
    /// Empty only when the buffer holds `max` unconsumed bytes.
    fn spare(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < self.max {
                let grown = (self.buf.len() * 4).max(4096).min(self.max);
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Read once from `s` (waiting until readable, at most `limit`).
    /// Returns 0 at EOF.
    ///
    /// # Errors
    /// `TimedOut` after `limit`; `OutOfMemory` when the buffer is full;
    /// others as recv(2).
    pub async fn fill(&mut self, s: &Stream, limit: Duration) -> io::Result<usize> {
        match crate::io::timer::timeout(limit, self.fill_unbounded(s)).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// [`RBuf::fill`] without a deadline, for a wait that something else
    /// bounds (it registers no timer).
    ///
    /// # Errors
    /// `OutOfMemory` when the buffer is full; others as recv(2).
    pub async fn fill_unbounded(&mut self, s: &Stream) -> io::Result<usize> {
        let spare = self.spare();
        if spare.is_empty() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let room = spare.len();
        let n = read_some(s, spare).await?;
        self.end += n;
        // A read that filled all the room means more is queued: a bigger
        // buffer moves the rest in fewer syscalls.
        if n == room && self.buf.len() < self.max {
            let grown = (self.buf.len() * 4).min(self.max);
            self.buf.resize(grown, 0);
        }
        Ok(n)
    }

    /// Wait until `s` is readable, then read: for a reply that cannot be
    /// there yet (it saves the recv that would find nothing).
    ///
    /// # Errors
    /// As [`RBuf::fill`].
    pub async fn fill_after_wait(
        &mut self,
        s: &Stream,
        deadline: std::time::Instant,
    ) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match crate::io::timer::timeout(left, s.readable()).await {
            Ok(r) => r?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
        self.fill_until(s, deadline).await
    }

    /// Like [`RBuf::fill`] with an absolute deadline.
    pub async fn fill_until(
        &mut self,
        s: &Stream,
        deadline: std::time::Instant,
    ) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.fill(s, left).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_compacts_then_grows_to_max() {
        let mut b = RBuf::new(8, 32);
        let s = b.spare();
        assert_eq!(s.len(), 8);
        s.copy_from_slice(b"abcdefgh");
        b.end = 8;
        b.consume(3);
        assert_eq!(b.data(), b"defgh");
        assert_eq!(b.spare().len(), 3); // compacted
        assert_eq!(b.data(), b"defgh");
        b.end = 8;
        assert_eq!(b.spare().len(), 24); // grown to max
        b.end = 32;
        assert!(b.spare().is_empty());
        b.consume(32);
        assert!(b.is_empty());
    }
}
