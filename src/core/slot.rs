//! The exactly-once result slot shared by a request's caller side and the Lua thread.
//!
//! A slot holds the request's work while it is queued and its result once it is done. It moves
//! `Queued → Running → Done`, or straight `Queued → Done` when the request is cancelled, expires
//! or is abandoned before it starts. Every transition happens under one lock, so exactly one
//! party completes it; later attempts are no-ops.
//!
//! One allocation carries the whole request: the caller creates it, the Lua thread only borrows
//! it, and the caller (usually) frees it, which keeps cross-thread frees off the hot path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::core::token::{CancelToken, Node, TokenOwner};
use crate::core::wait;
use crate::error::IsleError;
use crate::interrupt::Interrupter;

pub(crate) struct Slot<T, W = ()> {
    /// Set (under the lock) when the phase becomes `Done`; lets waiters spin without locking.
    ready: AtomicBool,
    state: Mutex<State<T, W>>,
    /// The request's own cancel token, embedded here.
    node: Node,
    #[cfg(feature = "tracing")]
    pub(crate) trace: crate::core::trace::Trace,
}

struct State<T, W> {
    phase: Phase<T, W>,
    waker: Option<Waker>,
}

enum Phase<T, W> {
    /// Waiting in the queue, with the work to do.
    Queued(W),
    /// Running on a Lua thread as the request with this generation; a cancel reaches it
    /// through that thread's interrupter. (A request is bound to the thread that runs it only
    /// when it starts: a pool's queue is served by several.)
    Running(u64, Arc<Interrupter>),
    /// Resolved; `None` once the result has been taken.
    Done(Option<Result<T, IsleError>>),
}

impl<T: Send + 'static, W: Send + 'static> Slot<T, W> {
    /// A queued request holding `work`, with its own cancel token, a child of `parent` if
    /// given. Use [`token`](Slot::token) to get that token: it resolves the slot at once if
    /// `parent` was already cancelled.
    pub(crate) fn new(work: W, parent: Option<&CancelToken>) -> Arc<Self> {
        Slot::of_kind("exec", work, parent)
    }

    /// As [`new`](Slot::new), for a request of `kind` (`eval`, `call`, ...: what tracing
    /// reports).
    pub(crate) fn of_kind(
        #[allow(unused_variables)] kind: &'static str,
        work: W,
        parent: Option<&CancelToken>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me: &std::sync::Weak<Self>| Slot {
            ready: AtomicBool::new(false),
            state: Mutex::new(State {
                phase: Phase::Queued(work),
                waker: None,
            }),
            node: Node::new(parent, me.clone()),
            #[cfg(feature = "tracing")]
            trace: crate::core::trace::Trace::new(kind),
        })
    }

    /// The request's own cancel token.
    pub(crate) fn token(self: &Arc<Self>) -> CancelToken {
        CancelToken::of(self.clone())
    }
}

impl<T, W> Slot<T, W> {
    /// Locks the state. Nothing user-provided is dropped under this lock: unrun work, refused
    /// results and replaced wakers are handed out and dropped after it is released, so a
    /// destructor may use the slot again. The only user code run under it is a waker's
    /// `clone`. Poisoning cannot leave the state inconsistent; a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, State<T, W>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the request as running with generation `gen` on the Lua thread `interrupter`
    /// stops, and hands out its work. Returns `None` if it was already resolved (cancelled or
    /// expired while queued); it must then not run.
    pub(crate) fn start(&self, gen: u64, interrupter: &Arc<Interrupter>) -> Option<W> {
        let mut state = self.lock();
        let running = Phase::Running(gen, interrupter.clone());
        match std::mem::replace(&mut state.phase, running) {
            Phase::Queued(work) => Some(work),
            other => {
                state.phase = other;
                None
            }
        }
    }

    /// Tags a running request with the generation of its next stretch of execution (coroutine
    /// requests run in several). Returns `false` if it was resolved meanwhile.
    ///
    /// A cancel that reached the previous stretch's generation is carried over to this one:
    /// either the cancel finds this generation under the lock, or the node was marked
    /// cancelled before it took the lock, and this call sees the mark.
    #[cfg(feature = "tokio")]
    pub(crate) fn rerun(&self, gen: u64) -> bool {
        let interrupter = {
            let mut state = self.lock();
            match &mut state.phase {
                Phase::Running(running, interrupter) => {
                    *running = gen;
                    interrupter.clone()
                }
                _ => return false,
            }
        };
        if self.node.is_cancelled() {
            interrupter.interrupt(gen);
        }
        true
    }

    /// Resolves the slot unless it is already resolved. Returns whether this call resolved it.
    pub(crate) fn complete(&self, result: Result<T, IsleError>) -> bool {
        let done = {
            let mut state = self.lock();
            self.finish(&mut state, result)
        };
        self.settle(done)
    }

    /// Resolves the slot with `err` only if the request has not started.
    pub(crate) fn resolve_if_queued(&self, err: IsleError) -> bool {
        let done = {
            let mut state = self.lock();
            match state.phase {
                Phase::Queued(_) => self.finish(&mut state, Err(err)),
                _ => Finished::refused(Err(err)),
            }
        };
        self.settle(done)
    }

    /// Hands what [`finish`](Slot::finish) let go of over (see [`Finished::wake`]) and, with
    /// the `tracing` feature, reports how the request ended. Returns whether it was resolved.
    fn settle(&self, done: Finished<T, W>) -> bool {
        #[cfg(feature = "tracing")]
        let outcome = done.outcome;
        let resolved = done.wake();
        #[cfg(feature = "tracing")]
        if resolved {
            self.trace.finished(outcome);
        }
        resolved
    }

    /// Moves to `Done`. What it returns is to be handled once the lock is released: the
    /// waiter is woken then, so that it does not find the lock still held, and the values the
    /// slot lets go of (unrun work, or `result` if the slot was resolved already) are dropped
    /// then.
    fn finish(
        &self,
        state: &mut MutexGuard<'_, State<T, W>>,
        result: Result<T, IsleError>,
    ) -> Finished<T, W> {
        if let Phase::Done(_) = state.phase {
            return Finished::refused(result);
        }
        #[cfg(feature = "tracing")]
        let outcome = crate::core::trace::outcome(&result);
        let unrun = match std::mem::replace(&mut state.phase, Phase::Done(Some(result))) {
            Phase::Queued(work) => Some(work),
            Phase::Running(..) | Phase::Done(_) => None,
        };
        self.ready.store(true, Ordering::Release);
        Finished {
            resolved: true,
            waker: state.waker.take(),
            unrun,
            refused: None,
            #[cfg(feature = "tracing")]
            outcome,
        }
    }

    /// Whether the slot is resolved (its result may already have been taken).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Takes the result of a resolved slot.
    pub(crate) fn take(&self) -> Option<Result<T, IsleError>> {
        match &mut self.lock().phase {
            Phase::Done(result) => result.take(),
            _ => None,
        }
    }

    /// Blocks until the slot is resolved or `deadline` passes; returns whether it is resolved.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> bool {
        self.wait(deadline, wait::spin_until(|| self.is_ready()))
    }

    /// Like [`wait_until`](Self::wait_until), for a slot resolved once a VM is created or
    /// closed (an isle starting or ending): parks at once, without polling (the `wait` module
    /// says why).
    pub(crate) fn wait_long_until(&self, deadline: Option<Instant>) -> bool {
        self.wait(deadline, self.is_ready())
    }

    /// Blocks until the slot is resolved or `deadline` passes, unless polling found it
    /// resolved (`polled`); returns whether it is resolved.
    fn wait(&self, deadline: Option<Instant>, polled: bool) -> bool {
        if polled {
            return true;
        }
        let waker = wait::thread_waker();
        loop {
            let replaced = {
                let mut state = self.lock();
                if matches!(state.phase, Phase::Done(_)) {
                    return true;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    let stale = state.waker.take();
                    drop(state);
                    drop(stale);
                    return false;
                }
                register(&mut state, &waker)
            };
            drop(replaced);
            wait::park_until(deadline);
        }
    }

    /// Polls for the slot being resolved, without taking the result.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let replaced = {
            let mut state = self.lock();
            if matches!(state.phase, Phase::Done(_)) {
                return Poll::Ready(());
            }
            register(&mut state, cx.waker())
        };
        drop(replaced);
        Poll::Pending
    }

    /// Polls for the result from an async context.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<Result<T, IsleError>>> {
        let replaced = {
            let mut state = self.lock();
            if let Phase::Done(result) = &mut state.phase {
                return Poll::Ready(result.take());
            }
            register(&mut state, cx.waker())
        };
        drop(replaced);
        Poll::Pending
    }
}

/// Stores `waker` to be woken when the slot resolves, unless the stored one wakes the same
/// task. Returns the waker it replaces, for the caller to drop once the lock is released.
fn register<T, W>(state: &mut State<T, W>, waker: &Waker) -> Option<Waker> {
    if state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
        return None;
    }
    state.waker.replace(waker.clone())
}

impl<T: Send + 'static, W: Send + 'static> TokenOwner for Slot<T, W> {
    fn node(&self) -> &Node {
        &self.node
    }

    fn on_cancel(&self) {
        let done = {
            let mut state = self.lock();
            match state.phase {
                Phase::Queued(_) => Some(self.finish(&mut state, Err(IsleError::Cancelled))),
                Phase::Running(gen, ref interrupter) => {
                    interrupter.interrupt(gen);
                    None
                }
                Phase::Done(_) => None,
            }
        };
        if let Some(done) = done {
            self.settle(done);
        }
    }
}

/// What resolving a slot leaves to do once its lock is released. Everything in it may run
/// user code when dropped or woken.
struct Finished<T, W> {
    resolved: bool,
    waker: Option<Waker>,
    /// The work of a request that never ran: dropped after the lock, and before the waiter
    /// wakes, so that a resolved request holds nothing of the caller's.
    unrun: Option<W>,
    /// A result that came after the slot was resolved: refused, and dropped after the lock.
    refused: Option<Result<T, IsleError>>,
    /// How the request ended (see [`trace::outcome`](crate::core::trace::outcome)).
    #[cfg(feature = "tracing")]
    outcome: &'static str,
}

impl<T, W> Finished<T, W> {
    /// Nothing resolved: `result` came too late.
    fn refused(result: Result<T, IsleError>) -> Self {
        Finished {
            resolved: false,
            waker: None,
            unrun: None,
            refused: Some(result),
            #[cfg(feature = "tracing")]
            outcome: "",
        }
    }

    /// Drops what the slot let go of, wakes the waiter; returns whether the slot was resolved.
    fn wake(self) -> bool {
        drop(self.unrun);
        drop(self.refused);
        if let Some(waker) = self.waker {
            waker.wake();
        }
        self.resolved
    }
}

/// Resolving a slot from outside the Lua thread, whatever it carries (for giving up on it).
pub(crate) trait Resolve: Send + Sync {
    /// Resolves the slot with `err` unless it is resolved already.
    fn resolve(&self, err: IsleError);
    /// Cancels the request's own token (host functions polling it stop).
    fn cancel(&self);
}

impl<T: Send + 'static, W: Send + 'static> Resolve for Slot<T, W> {
    fn resolve(&self, err: IsleError) {
        self.complete(Err(err));
    }

    fn cancel(&self) {
        crate::core::token::cancel_owner(self);
    }
}

/// The caller's view of a slot, whatever work it carries.
pub(crate) trait ResultSlot<T>: Send + Sync {
    fn is_ready(&self) -> bool;
    fn take(&self) -> Option<Result<T, IsleError>>;
    fn wait_until(&self, deadline: Option<Instant>) -> bool;
    fn resolve_if_queued(&self, err: IsleError) -> bool;
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<Result<T, IsleError>>>;
}

impl<T: Send, W: Send> ResultSlot<T> for Slot<T, W> {
    fn is_ready(&self) -> bool {
        Slot::is_ready(self)
    }
    fn take(&self) -> Option<Result<T, IsleError>> {
        Slot::take(self)
    }
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        Slot::wait_until(self, deadline)
    }
    fn resolve_if_queued(&self, err: IsleError) -> bool {
        Slot::resolve_if_queued(self, err)
    }
    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<Result<T, IsleError>>> {
        Slot::poll_take(self, cx)
    }
}

/// Resolves a slot exactly once: with [`IsleError::Shutdown`] if dropped before
/// [`complete`](Completer::complete).
pub(crate) struct Completer<T, W = ()>(Arc<Slot<T, W>>);

impl<T, W> Completer<T, W> {
    pub(crate) fn new(slot: Arc<Slot<T, W>>) -> Self {
        Completer(slot)
    }

    pub(crate) fn complete(self, result: Result<T, IsleError>) {
        self.0.complete(result);
    }

    pub(crate) fn slot(&self) -> Arc<Slot<T, W>> {
        self.0.clone()
    }
}

impl<T, W> Drop for Completer<T, W> {
    fn drop(&mut self) {
        // A no-op (one uncontended lock) when `complete` already resolved the slot.
        self.0.complete(Err(IsleError::Shutdown));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{OnceLock, Weak};
    use std::thread;

    fn slot() -> Arc<Slot<u32>> {
        Slot::new((), None)
    }

    fn interrupter() -> Arc<Interrupter> {
        Arc::new(Interrupter::new())
    }

    #[test]
    fn only_the_first_completion_counts() {
        let s = slot();
        assert!(s.complete(Ok(1)));
        assert!(!s.complete(Ok(2)));
        assert!(!s.resolve_if_queued(IsleError::Cancelled));
        assert_eq!(s.take().unwrap().unwrap(), 1);
        assert!(s.take().is_none());
    }

    #[test]
    fn cancel_of_a_queued_slot_resolves_it_and_blocks_start() {
        let s = slot();
        s.on_cancel();
        assert!(s.start(1, &interrupter()).is_none());
        assert!(s.take().unwrap().unwrap_err().is_cancelled());
    }

    #[test]
    fn cancel_of_a_running_slot_interrupts_instead_of_resolving() {
        let s = slot();
        let running_on = interrupter();
        assert!(s.start(7, &running_on).is_some());
        s.on_cancel();
        assert!(!s.is_ready());
        assert_eq!(running_on.cancelled_generation(), 7);
        assert!(s.complete(Ok(3)));
    }

    #[test]
    fn dropped_completer_resolves_shutdown() {
        let s = slot();
        drop(Completer::new(s.clone()));
        assert!(s.take().unwrap().unwrap_err().is_shutdown());
    }

    #[test]
    fn used_completer_does_not_override() {
        let s = slot();
        Completer::new(s.clone()).complete(Ok(5));
        assert_eq!(s.take().unwrap().unwrap(), 5);
    }

    #[test]
    fn unrun_work_is_dropped_when_the_slot_resolves_without_running() {
        let live = Arc::new(());
        let s = Slot::<u32, Arc<()>>::new(live.clone(), None);
        assert_eq!(Arc::strong_count(&live), 2);
        s.on_cancel();
        assert_eq!(Arc::strong_count(&live), 1);
        assert!(s.start(1, &interrupter()).is_none());
    }

    /// Locks a slot, whatever it carries.
    trait Touch: Send + Sync {
        fn touch(&self);
    }

    impl<T: Send, W: Send> Touch for Slot<T, W> {
        fn touch(&self) {
            drop(self.lock());
        }
    }

    /// A value that locks its slot when dropped: were the slot's lock still held then, the
    /// drop would deadlock.
    struct CallsBack(Arc<OnceLock<Weak<dyn Touch>>>);

    impl CallsBack {
        fn new() -> (Self, Arc<OnceLock<Weak<dyn Touch>>>) {
            let target = Arc::new(OnceLock::new());
            (CallsBack(target.clone()), target)
        }
    }

    impl Drop for CallsBack {
        fn drop(&mut self) {
            if let Some(slot) = self.0.get().and_then(Weak::upgrade) {
                slot.touch();
            }
        }
    }

    impl std::task::Wake for CallsBack {
        fn wake(self: Arc<Self>) {}
    }

    fn calls_back<T: Send + 'static, W: Send + 'static>(
        target: &OnceLock<Weak<dyn Touch>>,
        slot: &Arc<Slot<T, W>>,
    ) {
        let weak: Weak<dyn Touch> = Arc::downgrade(slot) as Weak<dyn Touch>;
        assert!(target.set(weak).is_ok());
    }

    /// Runs `f` on its own thread; fails (instead of hanging) if it deadlocks.
    fn without_deadlock(f: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        let runner = thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        match finished.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(()) => runner.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(runner.join().unwrap_err())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("deadlock: a value was dropped under the slot's lock")
            }
        }
    }

    #[test]
    fn a_rejected_result_is_dropped_after_the_lock_is_released() {
        without_deadlock(|| {
            let s: Arc<Slot<CallsBack>> = Slot::new((), None);
            let (first, _) = CallsBack::new();
            assert!(s.complete(Ok(first)));
            let (second, target) = CallsBack::new();
            calls_back(&target, &s);
            assert!(!s.complete(Ok(second)));
            assert!(s.take().is_some());
        });
    }

    #[test]
    fn unrun_work_is_dropped_after_the_lock_is_released() {
        without_deadlock(|| {
            let (work, target) = CallsBack::new();
            let s: Arc<Slot<u32, CallsBack>> = Slot::new(work, None);
            calls_back(&target, &s);
            assert!(s.resolve_if_queued(IsleError::Cancelled));
            assert!(s.start(1, &interrupter()).is_none());
        });
    }

    #[test]
    fn a_replaced_waker_is_dropped_after_the_lock_is_released() {
        without_deadlock(|| {
            let s = slot();
            let other = Waker::from(Arc::new(CallsBack::new().0));
            // Replaced by another task's waker while polling.
            let (probe, target) = CallsBack::new();
            calls_back(&target, &s);
            let waker = Waker::from(Arc::new(probe));
            assert!(s.poll_take(&mut Context::from_waker(&waker)).is_pending());
            drop(waker);
            assert!(s.poll_take(&mut Context::from_waker(&other)).is_pending());
            // Cleared by a blocking wait that gives up.
            let (probe, target) = CallsBack::new();
            calls_back(&target, &s);
            let waker = Waker::from(Arc::new(probe));
            assert!(s.poll_take(&mut Context::from_waker(&waker)).is_pending());
            drop(waker);
            assert!(!s.wait_until(Some(Instant::now())));
            // Woken and dropped when the slot resolves.
            let (probe, target) = CallsBack::new();
            calls_back(&target, &s);
            let waker = Waker::from(Arc::new(probe));
            assert!(s.poll_take(&mut Context::from_waker(&waker)).is_pending());
            drop(waker);
            assert!(s.complete(Ok(1)));
        });
    }

    #[test]
    fn waiter_wakes_after_a_slow_completion() {
        let s = slot();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let completer = {
            let s = s.clone();
            thread::spawn(move || {
                // Complete only after the waiter has certainly passed its spin phase.
                rx.recv().unwrap();
                s.complete(Ok(9));
            })
        };
        assert!(!s.wait_until(Some(Instant::now() + wait::SPIN_BUDGET * 4)));
        tx.send(()).unwrap();
        assert!(s.wait_until(None));
        completer.join().unwrap();
        assert_eq!(s.take().unwrap().unwrap(), 9);
    }

    #[test]
    fn racing_cancel_and_completion_resolve_exactly_once() {
        for i in 0..2000 {
            let s = slot();
            assert!(s.start(i + 1, &interrupter()).is_some());
            let c = {
                let s = s.clone();
                thread::spawn(move || s.on_cancel())
            };
            let won = s.complete(Ok(1));
            c.join().unwrap();
            assert!(won);
            assert!(s.take().is_some());
        }
    }
}
