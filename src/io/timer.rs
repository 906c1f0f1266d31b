//! A small timer for the deadlines a connection holds (idle and read
//! timeouts, connect deadlines, a udp flow's idle clock).
//!
//! monoio's `Sleep` carries a cache-padded wheel entry: 640 bytes with
//! 128-byte alignment, inside every connection task that waits on one. Here
//! a waiting future holds 24 bytes (its deadline and a slot number); the
//! worker keeps one slot per armed timer and a heap of deadlines, and one
//! driver task sleeps on a single monoio timer until the earliest of them.
//! Same millisecond granularity as monoio's own timer; a deadline never
//! fires early.
//!
//! The driver runs only while a deadline is queued: it ends when the heap
//! is empty and is spawned again by the next timer armed.

use std::{
    cell::{Cell, RefCell},
    cmp::Reverse,
    collections::BinaryHeap,
    future::Future,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// Wait until `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        slot: None,
    }
}

/// Wait for `d` (a `d` past what `Instant` can hold waits for ever).
pub fn sleep(d: Duration) -> Sleep {
    let now = Instant::now();
    sleep_until(now.checked_add(d).unwrap_or_else(|| far_future(now)))
}

/// As far ahead as a deadline needs to be: about 30 years.
fn far_future(now: Instant) -> Instant {
    now.checked_add(Duration::from_secs(30 * 365 * 86_400))
        .unwrap_or(now)
}

/// The time given to [`timeout`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Run `fut` for at most `d` (monoio's `timeout`, on this timer); the
/// future is dropped when the time runs out first.
///
/// # Errors
/// [`Elapsed`] when `d` passed before `fut` finished.
pub fn timeout<F: Future>(d: Duration, fut: F) -> impl Future<Output = Result<F::Output, Elapsed>> {
    // Not an `async fn` over `timeout_with`: a second layer would hold `fut`
    // twice in the caller's state.
    timeout_with(sleep(d), fut)
}

/// Run `fut` until `deadline` at most ([`timeout`] with a deadline).
///
/// # Errors
/// [`Elapsed`] when `deadline` passed before `fut` finished.
pub fn timeout_at<F: Future>(
    deadline: Instant,
    fut: F,
) -> impl Future<Output = Result<F::Output, Elapsed>> {
    timeout_with(sleep_until(deadline), fut)
}

async fn timeout_with<F: Future>(wait: Sleep, fut: F) -> Result<F::Output, Elapsed> {
    let fut = std::pin::pin!(fut);
    let wait = std::pin::pin!(wait);
    match futures_util::future::select(fut, wait).await {
        futures_util::future::Either::Left((out, _)) => Ok(out),
        futures_util::future::Either::Right(_) => Err(Elapsed),
    }
}

/// The future of [`sleep_until`].
#[derive(Debug)]
#[must_use = "a timer does nothing unless awaited"]
pub struct Sleep {
    deadline: Instant,
    /// (slot, generation) once armed.
    slot: Option<(u32, u32)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some(s) = self.slot.take() {
                with_timers(|t| t.disarm(s));
            }
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let slot = self.slot;
        self.slot = Some(with_timers(|t| t.arm(slot, deadline, cx.waker())));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(s) = self.slot.take() {
            // During thread teardown the set may be gone already; then
            // there is nothing left to disarm.
            let _ = TIMERS.try_with(|l| l.0.disarm(s));
        }
    }
}

thread_local! {
    static TIMERS: Local = Local(Rc::new(Timers::default()));
}

fn with_timers<R>(f: impl FnOnce(&Rc<Timers>) -> R) -> R {
    TIMERS.with(|l| f(&l.0))
}

/// The thread's timers. A worker's runtime lives as long as its thread;
/// when the thread ends, the tasks still waiting on a timer (and the
/// driver) are held only by the wakers kept here, so these are dropped,
/// which frees the tasks.
struct Local(Rc<Timers>);

impl Drop for Local {
    fn drop(&mut self) {
        let t = &self.0;
        t.heap.borrow_mut().clear();
        // Taken out first: dropping a waker may drop its task, whose
        // timers then disarm.
        let wakers: Vec<Waker> = t
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(|s| {
                s.gen = s.gen.wrapping_add(1);
                s.waker.take()
            })
            .chain(t.driver.borrow_mut().take())
            .collect();
        drop(wakers);
    }
}

#[derive(Debug, Default)]
struct Slot {
    gen: u32,
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct Timers {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    armed: Cell<usize>,
    /// (deadline, slot, generation); entries of disarmed or re-armed slots
    /// are skipped when they come up, and dropped by a rebuild when they
    /// outnumber the live ones.
    heap: RefCell<BinaryHeap<Reverse<(Instant, u32, u32)>>>,
    /// The deadline the driver sleeps until; `None` when no driver runs.
    target: Cell<Option<Instant>>,
    driver: RefCell<Option<Waker>>,
}

impl Timers {
    /// Arm (or re-arm) a timer; returns its slot.
    fn arm(
        self: &Rc<Self>,
        slot: Option<(u32, u32)>,
        deadline: Instant,
        waker: &Waker,
    ) -> (u32, u32) {
        let mut slots = self.slots.borrow_mut();
        let (idx, gen) = match slot {
            Some((idx, gen)) if slots.get(idx as usize).is_some_and(|s| s.gen == gen) => {
                let s = &mut slots[idx as usize];
                match &s.waker {
                    Some(w) if w.will_wake(waker) => {}
                    _ => s.waker = Some(waker.clone()),
                }
                // Already queued for this deadline.
                return (idx, gen);
            }
            _ => {
                let idx = match self.free.borrow_mut().pop() {
                    Some(i) => i,
                    None => {
                        slots.push(Slot::default());
                        (slots.len() - 1) as u32
                    }
                };
                let s = &mut slots[idx as usize];
                s.gen = s.gen.wrapping_add(1);
                s.waker = Some(waker.clone());
                (idx, s.gen)
            }
        };
        drop(slots);
        self.armed.set(self.armed.get() + 1);
        self.heap.borrow_mut().push(Reverse((deadline, idx, gen)));
        match self.target.get() {
            None => {
                self.target.set(Some(deadline));
                monoio::spawn(drive(Rc::clone(self)));
            }
            Some(t) if deadline < t => {
                self.target.set(Some(deadline));
                if let Some(w) = self.driver.borrow_mut().take() {
                    w.wake();
                }
            }
            Some(_) => {}
        }
        (idx, gen)
    }

    fn disarm(&self, (idx, gen): (u32, u32)) {
        let mut slots = self.slots.borrow_mut();
        if let Some(s) = slots.get_mut(idx as usize) {
            if s.gen == gen {
                s.gen = s.gen.wrapping_add(1);
                s.waker = None;
                self.free.borrow_mut().push(idx);
                self.armed.set(self.armed.get() - 1);
            }
        }
        drop(slots);
        let mut heap = self.heap.borrow_mut();
        if heap.len() > 64 && heap.len() > 2 * self.armed.get() {
            let slots = self.slots.borrow();
            heap.retain(|Reverse((_, i, g))| slots[*i as usize].gen == *g);
        }
    }

    /// Wake every timer due by `now`; the next live deadline, if any.
    fn fire(&self, now: Instant, woken: &mut Vec<Waker>) -> Option<Instant> {
        let mut heap = self.heap.borrow_mut();
        let slots = self.slots.borrow();
        while let Some(Reverse((at, idx, gen))) = heap.peek().copied() {
            let live = slots[idx as usize].gen == gen;
            if live && at > now {
                return Some(at);
            }
            heap.pop();
            if live {
                // The slot stays armed until its future sees the deadline
                // (and disarms) or is dropped.
                if let Some(w) = &slots[idx as usize].waker {
                    woken.push(w.clone());
                }
            }
        }
        None
    }
}

/// Sleep until the earliest deadline, wake what is due, repeat; end when
/// no deadline is queued (the next [`Timers::arm`] starts a new driver).
async fn drive(t: Rc<Timers>) {
    let _running = Running(Rc::clone(&t));
    let mut woken = Vec::new();
    loop {
        let next = t.fire(Instant::now(), &mut woken);
        for w in woken.drain(..) {
            w.wake();
        }
        let Some(next) = next else {
            return;
        };
        t.target.set(Some(next));
        let wait = std::pin::pin!(monoio::time::sleep(
            next.saturating_duration_since(Instant::now())
        ));
        // An earlier deadline armed meanwhile moves the target.
        let kicked = std::pin::pin!(std::future::poll_fn(|cx| {
            if t.target.get() == Some(next) {
                *t.driver.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }));
        futures_util::future::select(wait, kicked).await;
    }
}

/// Marks the driver stopped when it ends (or its runtime drops it).
struct Running(Rc<Timers>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.target.set(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(f)
    }

    fn queued() -> (usize, usize, bool) {
        with_timers(|t| {
            (
                t.armed.get(),
                t.heap.borrow().len(),
                t.target.get().is_some(),
            )
        })
    }

    /// A short deadline armed after a long one fires first and on time
    /// (the driver, asleep until the long one, is moved forward), and
    /// none fires early.
    #[test]
    fn deadlines_fire_in_order_never_early() {
        run(async {
            let t0 = Instant::now();
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for ms in [300u64, 40, 120, 40] {
                let order = Rc::clone(&order);
                tasks.push(monoio::spawn(async move {
                    sleep(Duration::from_millis(ms)).await;
                    let took = t0.elapsed();
                    assert!(
                        took >= Duration::from_millis(ms),
                        "{ms} ms fired at {took:?}"
                    );
                    order.borrow_mut().push(ms);
                    took
                }));
                // Arm them one after another.
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut took = Vec::new();
            for t in tasks {
                took.push(t.await);
            }
            assert_eq!(*order.borrow(), vec![40, 40, 120, 300]);
            // Not held up behind the 300 ms one.
            assert!(took[1] < Duration::from_millis(250), "{took:?}");
            // Everything fired and was disarmed: the driver has stopped.
            monoio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(queued(), (0, 0, false));
        });
    }

    /// Dropped timers never fire and do not pile up in the heap: 10,000
    /// armed and dropped leave a bounded queue, and the next timer still
    /// works.
    #[test]
    fn dropped_timers_are_forgotten() {
        run(async {
            for _ in 0..10_000 {
                // Pending once (so the timer is armed), then done.
                let mut yielded = false;
                let f = timeout(
                    Duration::from_secs(60),
                    std::future::poll_fn(move |cx| {
                        if yielded {
                            return Poll::Ready(7);
                        }
                        yielded = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }),
                );
                assert_eq!(f.await, Ok(7));
            }
            let (armed, heap, running) = queued();
            assert_eq!(armed, 0);
            assert!(running, "the driver should be asleep on a stale deadline");
            assert!(heap <= 64, "heap kept {heap} stale entries");
            assert_eq!(
                timeout(Duration::from_millis(20), std::future::pending::<()>()).await,
                Err(Elapsed)
            );
        });
    }

    /// A thread that ends with tasks still waiting on a timer frees them
    /// (the wakers kept here were all that held them).
    #[test]
    fn thread_exit_frees_waiting_tasks() {
        let held = std::sync::Arc::new(());
        let h = std::sync::Arc::clone(&held);
        std::thread::spawn(move || {
            run(async move {
                monoio::spawn(async move {
                    let _h = h;
                    sleep(Duration::from_secs(3600)).await;
                });
                monoio::time::sleep(Duration::from_millis(5)).await;
                assert_eq!(queued(), (1, 1, true));
            });
        })
        .join()
        .expect("thread");
        assert_eq!(std::sync::Arc::strong_count(&held), 1);
    }

    /// A duration past what `Instant` can hold does not panic: it waits.
    #[test]
    fn an_endless_timeout_waits() {
        run(async {
            let r = timeout(Duration::MAX, async { 5 }).await;
            assert_eq!(r, Ok(5));
            let r = timeout(Duration::from_millis(10), sleep(Duration::MAX)).await;
            assert_eq!(r, Err(Elapsed));
        });
    }

    /// A future polled again before its deadline keeps one slot, and a
    /// re-armed timer (the idle watchdog's loop) gets a fresh one.
    #[test]
    fn repolling_keeps_one_slot() {
        run(async {
            let mut s = std::pin::pin!(sleep(Duration::from_millis(30)));
            for _ in 0..5 {
                let polled = std::future::poll_fn(|cx| Poll::Ready(s.as_mut().poll(cx))).await;
                assert!(polled.is_pending());
            }
            assert_eq!(queued().0, 1);
            s.await;
            assert_eq!(queued().0, 0);
        });
    }
}
