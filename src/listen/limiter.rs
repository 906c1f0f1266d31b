//! Per-listener connection limiter, shared by all workers.
//!
//! `max_connections` is a limit for the listener as a whole, not per worker:
//! the kernel spreads connections over the SO_REUSEPORT sockets by a hash of
//! the 4-tuple, not by load, so a per-worker split (max/N each) would leave
//! clients waiting on a full worker while another has free slots. Instead
//! one atomic counter per listener is taken with a CAS when a worker is about
//! to accept (one uncontended-in-practice atomic op per connection, no lock),
//! and released by the [`Permit`]'s `Drop`.
//!
//! A worker takes a permit only once its own listening socket is readable, so
//! a permit is never held by a worker that has nobody to accept. When the
//! limit is reached the worker simply stops calling accept: clients wait in
//! the kernel backlog. Releasing a permit at the limit wakes the workers
//! that are waiting (cross-thread wake; rare, only at the limit).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use atomic_waker::AtomicWaker;

/// The shared counter of one listener.
#[derive(Debug)]
pub struct Limiter {
    max: usize,
    active: AtomicUsize,
    /// One slot per worker: the task waiting for a free connection slot.
    waiters: Box<[AtomicWaker]>,
}

impl Limiter {
    /// A limiter allowing `max` connections, shared by `workers` workers.
    pub fn new(max: usize, workers: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            max: max.max(1),
            active: AtomicUsize::new(0),
            waiters: (0..workers.max(1)).map(|_| AtomicWaker::new()).collect(),
        })
    }

    /// Connections currently holding a permit (all workers).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Take a permit now if one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut cur = self.active.load(Ordering::Relaxed);
        while cur < self.max {
            match self.active.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Permit {
                        limiter: Arc::clone(self),
                    })
                }
                Err(now) => cur = now,
            }
        }
        None
    }

    /// Wait for a permit; `worker` selects the wake-up slot.
    pub fn acquire(self: &Arc<Self>, worker: usize) -> Acquire<'_> {
        Acquire {
            limiter: self,
            slot: worker % self.waiters.len(),
        }
    }
}

/// Future returned by [`Limiter::acquire`].
#[derive(Debug)]
pub struct Acquire<'a> {
    limiter: &'a Arc<Limiter>,
    slot: usize,
}

impl Future for Acquire<'_> {
    type Output = Permit;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        if let Some(p) = self.limiter.try_acquire() {
            return Poll::Ready(p);
        }
        // Register, then check again: a release between the first check and the
        // registration would otherwise be missed.
        self.limiter.waiters[self.slot].register(cx.waker());
        match self.limiter.try_acquire() {
            Some(p) => Poll::Ready(p),
            None => Poll::Pending,
        }
    }
}

/// One admitted connection. Dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let before = self.limiter.active.fetch_sub(1, Ordering::Release);
        if before >= self.limiter.max {
            for w in self.limiter.waiters.iter() {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_exact_and_released_on_drop() {
        let l = Limiter::new(3, 2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        let _c = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        assert_eq!(l.active(), 3);
        drop(a);
        assert_eq!(l.active(), 2);
        assert!(l.try_acquire().is_some());
    }

    #[test]
    fn waiter_is_woken_from_another_thread() {
        let l = Limiter::new(1, 2);
        let held = l.try_acquire().unwrap();
        let l2 = Arc::clone(&l);
        let t = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _p = l2.acquire(1).await;
                l2.active()
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(l.active(), 1);
        drop(held);
        assert_eq!(t.join().unwrap(), 1);
        assert_eq!(l.active(), 0);
    }
}
