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
        Arc, Mutex,
    },
    task::{Context, Poll, Waker},
};

/// The shared counter of one listener.
#[derive(Debug)]
pub struct Limiter {
    /// The limit; a reload that only changes servers may move it (the fd
    /// budget follows the keep-alive pools of the new server list).
    /// Shared with `/metrics` and `/status` (the cap in force).
    max: Arc<AtomicUsize>,
    active: AtomicUsize,
    /// Every task waiting for a free slot (accept loops of any worker, of
    /// any generation sharing this limiter). A release at the limit wakes
    /// them all; the ones that lose the race register again. A list, not
    /// one slot per worker: two accept loops of one worker (a reload to
    /// fewer workers gives each worker several sockets) must not overwrite
    /// each other's waker.
    waiters: Mutex<Vec<Waker>>,
}

impl Limiter {
    /// A limiter allowing `max` connections.
    pub fn new(max: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            max: Arc::new(AtomicUsize::new(max.max(1))),
            active: AtomicUsize::new(0),
            waiters: Mutex::new(Vec::new()),
        })
    }

    /// Connections currently holding a permit (all workers).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Take a permit now if one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut cur = self.active.load(Ordering::Relaxed);
        while cur < self.max.load(Ordering::Relaxed) {
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

    /// The limit now.
    /// The cap in force, as a cell readers outside the listener follow.
    pub fn max_handle(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.max)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Move the limit. Connections already admitted stay (a lower limit
    /// admits nobody until enough of them end); a higher one wakes the
    /// waiting accept loops.
    pub fn set_max(&self, max: usize) {
        let old = self.max.swap(max.max(1), Ordering::Relaxed);
        if max > old {
            self.wake_all();
        }
    }

    /// Wait for a permit.
    pub fn acquire(self: &Arc<Self>) -> Acquire<'_> {
        Acquire { limiter: self }
    }

    fn register(&self, waker: &Waker) {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if !w.iter().any(|x| x.will_wake(waker)) {
            w.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let woken = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|e| e.into_inner()));
        for w in woken {
            w.wake();
        }
    }
}

/// Future returned by [`Limiter::acquire`].
#[derive(Debug)]
pub struct Acquire<'a> {
    limiter: &'a Arc<Limiter>,
}

impl Future for Acquire<'_> {
    type Output = Permit;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        if let Some(p) = self.limiter.try_acquire() {
            return Poll::Ready(p);
        }
        // Register, then check again: a release between the first check and the
        // registration would otherwise be missed.
        self.limiter.register(cx.waker());
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
        if before >= self.limiter.max() {
            self.limiter.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_exact_and_released_on_drop() {
        let l = Limiter::new(3);
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
        let l = Limiter::new(1);
        let held = l.try_acquire().unwrap();
        let l2 = Arc::clone(&l);
        let t = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _p = l2.acquire().await;
                l2.active()
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(l.active(), 1);
        drop(held);
        assert_eq!(t.join().unwrap(), 1);
        assert_eq!(l.active(), 0);
    }

    /// Two waiters of one worker (two accept loops on one thread, as after a
    /// reload to fewer workers): each release must reach a waiter. With one
    /// waker slot per worker the second registration overwrote the first,
    /// and the first waiter was never woken again.
    #[test]
    fn two_waiters_on_one_thread_are_both_served() {
        use std::{cell::Cell, rc::Rc, time::Duration};
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let served = rt.block_on(async {
            let l = Limiter::new(1);
            let held = l.try_acquire().unwrap();
            let served = Rc::new(Cell::new(0));
            for _ in 0..2 {
                let (l, served) = (Arc::clone(&l), Rc::clone(&served));
                monoio::spawn(async move {
                    let p = l.acquire().await;
                    served.set(served.get() + 1);
                    monoio::time::sleep(Duration::from_millis(20)).await;
                    drop(p);
                });
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
            for _ in 0..50 {
                if served.get() == 2 {
                    break;
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            served.get()
        });
        assert_eq!(served, 2, "a waiter was never woken");
    }
}
