//! The exactly-once result slot shared by a request's caller side and the Lua thread.
//!
//! A slot moves `Queued → Running → Done`, or straight `Queued → Done` when the request is
//! cancelled, expires or is abandoned before it starts. Every transition happens under one
//! lock, so exactly one party completes it; later attempts are no-ops. The [`Completer`] held by
//! the queued job resolves the slot with [`IsleError::Shutdown`] if the job is dropped unrun, so
//! a request can never be left unresolved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::error::IsleError;
use crate::interrupt::Interrupter;
use crate::token::CancelHook;
use crate::wait;

pub(crate) struct Slot<T> {
    /// Set (under the lock) when the phase becomes `Done`; lets waiters spin without locking.
    ready: AtomicBool,
    state: Mutex<State<T>>,
    /// How a cancel reaches the request once it runs.
    interrupter: Arc<Interrupter>,
}

struct State<T> {
    phase: Phase<T>,
    waker: Option<Waker>,
}

enum Phase<T> {
    Queued,
    /// Running on the Lua thread as the request with this generation.
    Running(u64),
    /// Resolved; `None` once the result has been taken.
    Done(Option<Result<T, IsleError>>),
}

impl<T> Slot<T> {
    pub(crate) fn new(interrupter: Arc<Interrupter>) -> Arc<Self> {
        Arc::new(Slot {
            ready: AtomicBool::new(false),
            state: Mutex::new(State {
                phase: Phase::Queued,
                waker: None,
            }),
            interrupter,
        })
    }

    /// Locks the state. Nothing user-provided runs under this lock (wakers are woken after it
    /// is released), so poisoning cannot leave it inconsistent; a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the request as running with generation `gen`. Returns `false` if it was already
    /// resolved (cancelled or expired while queued); it must then not run.
    pub(crate) fn start(&self, gen: u64) -> bool {
        let mut state = self.lock();
        match state.phase {
            Phase::Queued => {
                state.phase = Phase::Running(gen);
                true
            }
            _ => false,
        }
    }

    /// Resolves the slot unless it is already resolved. Returns whether this call resolved it.
    pub(crate) fn complete(&self, result: Result<T, IsleError>) -> bool {
        let mut state = self.lock();
        self.finish(&mut state, result)
    }

    /// Resolves the slot with `err` only if the request has not started.
    pub(crate) fn resolve_if_queued(&self, err: IsleError) -> bool {
        let mut state = self.lock();
        match state.phase {
            Phase::Queued => self.finish(&mut state, Err(err)),
            _ => false,
        }
    }

    fn finish(&self, state: &mut MutexGuard<'_, State<T>>, result: Result<T, IsleError>) -> bool {
        if matches!(state.phase, Phase::Done(_)) {
            return false;
        }
        state.phase = Phase::Done(Some(result));
        self.ready.store(true, Ordering::Release);
        if let Some(waker) = state.waker.take() {
            // Waking under the lock is fine: wakers only unpark or schedule.
            waker.wake();
        }
        true
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
        if wait::spin_until(|| self.is_ready()) {
            return true;
        }
        let waker = wait::thread_waker();
        loop {
            {
                let mut state = self.lock();
                if matches!(state.phase, Phase::Done(_)) {
                    return true;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    state.waker = None;
                    return false;
                }
                if !state.waker.as_ref().is_some_and(|w| w.will_wake(&waker)) {
                    state.waker = Some(waker.clone());
                }
            }
            wait::park_until(deadline);
        }
    }

    /// Polls for the result from an async context.
    #[allow(dead_code)]
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<Result<T, IsleError>>> {
        let mut state = self.lock();
        match &mut state.phase {
            Phase::Done(result) => Poll::Ready(result.take()),
            _ => {
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl<T: Send> CancelHook for Slot<T> {
    fn cancelled(&self) {
        let mut state = self.lock();
        match state.phase {
            Phase::Queued => {
                self.finish(&mut state, Err(IsleError::Cancelled));
            }
            Phase::Running(gen) => self.interrupter.interrupt(gen),
            Phase::Done(_) => {}
        }
    }
}

/// The Lua thread's end of a slot: resolves it exactly once, with [`IsleError::Shutdown`] if
/// dropped before [`complete`](Completer::complete) (the job was never run).
pub(crate) struct Completer<T>(Arc<Slot<T>>);

impl<T> Completer<T> {
    pub(crate) fn new(slot: Arc<Slot<T>>) -> Self {
        Completer(slot)
    }

    pub(crate) fn slot(&self) -> &Slot<T> {
        &self.0
    }

    pub(crate) fn complete(self, result: Result<T, IsleError>) {
        self.0.complete(result);
        // The slot is resolved now; skip the Shutdown fallback in `Drop` (it would be a no-op,
        // but costs a lock).
        std::mem::forget(self);
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        self.0.complete(Err(IsleError::Shutdown));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn slot() -> Arc<Slot<u32>> {
        Slot::new(Arc::new(Interrupter::new()))
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
        s.cancelled();
        assert!(!s.start(1));
        assert!(s.take().unwrap().unwrap_err().is_cancelled());
    }

    #[test]
    fn cancel_of_a_running_slot_interrupts_instead_of_resolving() {
        let s = slot();
        assert!(s.start(7));
        s.cancelled();
        assert!(!s.is_ready());
        assert_eq!(s.interrupter.cancelled_generation(), 7);
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
            assert!(s.start(i + 1));
            let c = {
                let s = s.clone();
                thread::spawn(move || s.cancelled())
            };
            let won = s.complete(Ok(1));
            c.join().unwrap();
            assert!(won);
            assert!(s.take().is_some());
        }
    }
}
