//! Single-threaded stop flag and live-connection counter for one worker.
//! Accept loops wait on [`Drain::stopped`]; shutdown waits on
//! [`Drain::idle`] until the last [`ConnGuard`] is dropped.

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    rc::Rc,
    task::{Poll, Waker},
};

/// Per-worker drain state (never crosses threads).
#[derive(Debug, Default)]
pub struct Drain {
    stopping: Cell<bool>,
    active: Cell<usize>,
    stop_wakers: RefCell<Vec<Waker>>,
    idle_waker: RefCell<Option<Waker>>,
}

impl Drain {
    pub fn new() -> Rc<Drain> {
        Rc::new(Drain::default())
    }

    /// Start stopping: wakes every task waiting in [`Drain::stopped`].
    pub fn stop(&self) {
        self.stopping.set(true);
        for w in self.stop_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Connections alive on this worker.
    pub fn active(&self) -> usize {
        self.active.get()
    }

    /// Resolves once [`Drain::stop`] was called.
    pub async fn stopped(&self) {
        poll_fn(|cx| {
            if self.stopping.get() {
                Poll::Ready(())
            } else {
                let mut wakers = self.stop_wakers.borrow_mut();
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await;
    }

    /// Resolves when no connection is alive.
    pub async fn idle(&self) {
        poll_fn(|cx| {
            if self.active.get() == 0 {
                Poll::Ready(())
            } else {
                *self.idle_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }

    /// Count a connection until the guard drops.
    pub fn track(self: &Rc<Self>) -> ConnGuard {
        self.active.set(self.active.get() + 1);
        ConnGuard(Rc::clone(self))
    }
}

/// One live connection on this worker.
#[derive(Debug)]
pub struct ConnGuard(Rc<Drain>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let n = self.0.active.get().saturating_sub(1);
        self.0.active.set(n);
        if n == 0 {
            if let Some(w) = self.0.idle_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }
}
