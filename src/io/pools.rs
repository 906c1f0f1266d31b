//! Per-worker pools of the transfer resources a relay needs only while
//! bytes are moving: pipes for splice, buffers for copy.
//!
//! A connection takes a pipe when its source becomes readable and gives it
//! back once the pipe is drained into the destination, so an idle proxied
//! connection holds two sockets and nothing else. A pipe is returned only
//! when empty; a pipe left holding bytes (error mid-transfer) is closed.
//! `max_pipes` bounds the pipes alive per worker (idle or in use), which is
//! what makes the fd budget computable; past it, transfers fall back to a
//! copy buffer instead of failing.

use std::cell::{Cell, RefCell};

use crate::sys::Pipe;

/// Default size of a copy buffer.
pub const BUF_SIZE: usize = 64 * 1024;
/// Idle copy buffers kept per worker.
const MAX_IDLE_BUFS: usize = 64;

/// The pools of one worker (single-threaded, `Rc`-shared).
#[derive(Debug)]
pub struct Pools {
    pipes: RefCell<Vec<Pipe>>,
    pipes_alive: Cell<usize>,
    max_pipes: usize,
    pipe_size: usize,
    bufs: RefCell<Vec<Box<[u8]>>>,
}

impl Pools {
    /// `max_pipes` pipes alive at most (0 disables splice), each of `pipe_size`
    /// bytes (0 = kernel default).
    pub fn new(max_pipes: usize, pipe_size: usize) -> Pools {
        Pools {
            pipes: RefCell::new(Vec::new()),
            pipes_alive: Cell::new(0),
            max_pipes,
            pipe_size,
            bufs: RefCell::new(Vec::new()),
        }
    }

    /// Lease a pipe: it goes back to the pool only if the lease is marked
    /// clean (drained); dropped any other way (an error, or the relay being
    /// cancelled by the idle timeout mid-transfer) it is closed and counted out.
    pub fn lease_pipe(&self) -> Option<PipeLease<'_>> {
        self.take_pipe().map(|pipe| PipeLease {
            pools: self,
            pipe: Some(pipe),
            clean: false,
        })
    }

    /// A pipe from the pool, a new one, or `None` when the cap is reached or
    /// the kernel refuses (fd table full): the caller then copies instead.
    fn take_pipe(&self) -> Option<Pipe> {
        if let Some(p) = self.pipes.borrow_mut().pop() {
            return Some(p);
        }
        if self.pipes_alive.get() >= self.max_pipes {
            return None;
        }
        let p = Pipe::new(self.pipe_size).ok()?;
        self.pipes_alive.set(self.pipes_alive.get() + 1);
        Some(p)
    }

    /// Return an empty pipe.
    fn put_pipe(&self, p: Pipe) {
        self.pipes.borrow_mut().push(p);
    }

    /// Close a pipe that may still hold bytes.
    fn discard_pipe(&self, p: Pipe) {
        drop(p);
        self.pipes_alive
            .set(self.pipes_alive.get().saturating_sub(1));
    }

    /// Pipes alive (idle in the pool or in use).
    pub fn pipes_alive(&self) -> usize {
        self.pipes_alive.get()
    }

    /// Pipes idle in the pool.
    pub fn pipes_idle(&self) -> usize {
        self.pipes.borrow().len()
    }

    /// A copy buffer of [`BUF_SIZE`] bytes.
    pub fn take_buf(&self) -> Box<[u8]> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
    }

    /// Return a copy buffer.
    pub fn put_buf(&self, b: Box<[u8]>) {
        let mut bufs = self.bufs.borrow_mut();
        if bufs.len() < MAX_IDLE_BUFS {
            bufs.push(b);
        }
    }
}

/// A pipe borrowed from [`Pools`] for one burst.
#[derive(Debug)]
pub struct PipeLease<'a> {
    pools: &'a Pools,
    pipe: Option<Pipe>,
    clean: bool,
}

impl PipeLease<'_> {
    /// The leased pipe.
    pub fn pipe(&self) -> Option<&Pipe> {
        self.pipe.as_ref()
    }

    /// Mark the pipe empty: it returns to the pool when the lease ends.
    pub fn set_clean(&mut self, clean: bool) {
        self.clean = clean;
    }
}

impl Drop for PipeLease<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pipe.take() {
            if self.clean {
                self.pools.put_pipe(p);
            } else {
                self.pools.discard_pipe(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_capped_and_reused() {
        let p = Pools::new(2, 0);
        let a = p.take_pipe().unwrap();
        let b = p.take_pipe().unwrap();
        assert!(p.take_pipe().is_none(), "cap of 2 pipes");
        p.put_pipe(a);
        assert_eq!(p.pipes_idle(), 1);
        let c = p.take_pipe().unwrap();
        assert_eq!(p.pipes_alive(), 2);
        p.discard_pipe(c);
        p.discard_pipe(b);
        assert_eq!(p.pipes_alive(), 0);
        assert!(p.take_pipe().is_some());
    }

    #[test]
    fn a_lease_dropped_unclean_is_counted_out() {
        let p = Pools::new(1, 0);
        let lease = p.lease_pipe().unwrap();
        assert!(p.lease_pipe().is_none(), "cap of 1");
        drop(lease); // cancelled mid-transfer: closed, not pooled
        assert_eq!((p.pipes_alive(), p.pipes_idle()), (0, 0));
        let mut lease = p.lease_pipe().expect("the slot is free again");
        lease.set_clean(true);
        drop(lease);
        assert_eq!((p.pipes_alive(), p.pipes_idle()), (1, 1));
    }
}
