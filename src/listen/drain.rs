//! Single-threaded stop flag and live-connection counter for one worker.
//! Accept loops wait on [`Drain::stopped`]; shutdown waits on
//! [`Drain::idle`] until the last [`ConnGuard`] is dropped.

use std::{
    cell::{Cell, RefCell},
    future::{poll_fn, Future},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// How a worker is told to stop.
#[derive(Debug, Clone, Copy)]
pub struct Stop {
    /// How long connections may take to finish.
    pub grace: Duration,
    /// The process is going away (a plain stop, not a reload or an
    /// upgrade): accept what the kernel already queued, then close the
    /// listening sockets, so later clients are refused at once instead of
    /// waiting in a backlog nobody will accept.
    pub last: bool,
}

/// Per-worker drain state (never crosses threads).
#[derive(Debug, Default)]
pub struct Drain {
    stopping: Cell<bool>,
    /// Set with `stopping`: accept the queued connections before closing.
    accept_queued: Cell<bool>,
    /// When the drain ends (set with `stopping`).
    deadline: Cell<Option<Instant>>,
    active: Cell<usize>,
    /// Tasks waiting in [`Drain::stopped`]: a slab, so registering,
    /// re-registering and leaving are O(1) however many connections wait.
    stop_wakers: RefCell<Vec<Option<Waker>>>,
    free_slots: RefCell<Vec<usize>>,
    idle_waker: RefCell<Option<Waker>>,
}

impl Drain {
    pub fn new() -> Rc<Drain> {
        Rc::new(Drain::default())
    }

    /// Start stopping: wakes every task waiting in [`Drain::stopped`].
    pub fn stop(&self) {
        self.stop_as(Stop {
            grace: Duration::ZERO,
            last: false,
        });
    }

    /// [`Drain::stop`] with the drain's deadline and kind.
    pub fn stop_as(&self, how: Stop) {
        self.accept_queued.set(how.last);
        self.deadline.set(
            Instant::now()
                .checked_add(how.grace)
                .or(Some(Instant::now())),
        );
        self.stopping.set(true);
        let wakers: Vec<Waker> = self
            .stop_wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// True once [`Drain::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Stopping for good: accept loops take what is queued before closing.
    pub fn accept_queued(&self) -> bool {
        self.accept_queued.get()
    }

    /// When the drain ends (once stopping).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.get()
    }

    /// Connections alive on this worker.
    pub fn active(&self) -> usize {
        self.active.get()
    }

    /// Resolves once [`Drain::stop`] was called.
    pub fn stopped(&self) -> Stopped<'_> {
        Stopped {
            drain: self,
            slot: None,
        }
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

/// Future of [`Drain::stopped`]; leaves its slot when dropped.
pub struct Stopped<'a> {
    drain: &'a Drain,
    slot: Option<usize>,
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.stopping.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.drain.stop_wakers.borrow_mut();
        match self.slot {
            Some(i) => match &mut wakers[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            },
            None => {
                let w = Some(cx.waker().clone());
                let i = match self.drain.free_slots.borrow_mut().pop() {
                    Some(i) => {
                        wakers[i] = w;
                        i
                    }
                    None => {
                        wakers.push(w);
                        wakers.len() - 1
                    }
                };
                drop(wakers);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(w) = self.drain.stop_wakers.borrow_mut().get_mut(i) {
                *w = None;
            }
            self.drain.free_slots.borrow_mut().push(i);
        }
    }
}

/// One live connection on this worker.
#[derive(Debug)]
pub struct ConnGuard(Rc<Drain>);

impl ConnGuard {
    /// The worker's drain state (to notice shutdown mid-connection).
    pub fn drain(&self) -> &Drain {
        &self.0
    }
}

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
