//! How a thread waits for another: spin briefly, yield, then park.
//!
//! Waking a parked thread costs a futex round trip (tens of microseconds on small VMs), far more
//! than a typical isle request. Both the caller waiting for a result and the Lua thread waiting
//! for work therefore poll for a short, bounded time first. The spin yields to the scheduler
//! after its first few rounds so that a caller and a Lua thread sharing one core still make
//! progress, and it ends after [`SPIN_BUDGET`], so an idle thread never burns a core.
//!
//! Waits known to be long (a VM being created or closed, tens of microseconds) park at once
//! instead: a caller polling on one core while the Lua thread works on the other slows it
//! down (the two compete for the core's shared resources and for the scheduler's attention),
//! and keeps the scheduler from placing the woken caller next to the thread it waits for.
//!
//! A thread must never wait for its own isle: each Lua thread records which isle it serves
//! ([`on_isle_thread`]), so that a wait that could only deadlock fails instead.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::task::{Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long a waiter polls before it parks.
pub(crate) const SPIN_BUDGET: Duration = Duration::from_micros(50);

/// How long a waiter busy-waits before it starts yielding its time slice (when it has a core
/// of its own).
const PURE_SPIN: Duration = Duration::from_micros(5);

/// Whether this process can run two threads at once. With a single CPU, busy-waiting only
/// delays the thread being waited for, so waiters yield from the start.
fn has_parallelism() -> bool {
    static PARALLEL: OnceLock<bool> = OnceLock::new();
    *PARALLEL.get_or_init(|| thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// Polls `ready` until it returns `true` or the spin budget is spent: busy-waiting first (if
/// there is more than one CPU), then yielding between polls.
///
/// Returns whether `ready` returned `true`.
pub(crate) fn spin_until(mut ready: impl FnMut() -> bool) -> bool {
    if ready() {
        return true;
    }
    let start = Instant::now();
    if has_parallelism() {
        loop {
            for _ in 0..16 {
                if ready() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= PURE_SPIN {
                break;
            }
        }
    }
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= SPIN_BUDGET {
            return false;
        }
        thread::yield_now();
    }
}

/// Unparks a thread when woken; lets a blocking waiter use the same [`Waker`] slots as a future.
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    static THREAD_WAKER: Waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
}

/// A [`Waker`] that unparks the calling thread.
pub(crate) fn thread_waker() -> Waker {
    THREAD_WAKER.with(Waker::clone)
}

/// Parks the calling thread until it is unparked, or until `deadline` if one is given.
pub(crate) fn park_until(deadline: Option<Instant>) {
    match deadline {
        None => thread::park(),
        Some(deadline) => {
            let now = Instant::now();
            if deadline > now {
                thread::park_timeout(deadline - now);
            }
        }
    }
}

/// `now + timeout`, or `None` when that is too far away to represent.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

thread_local! {
    /// Identifies the isle whose Lua thread this is; 0 on every other thread.
    static ISLE_ID: Cell<u64> = const { Cell::new(0) };
    /// Identifies the pool this Lua thread serves (from the same id space); 0 if none.
    static POOL_ID: Cell<u64> = const { Cell::new(0) };
    /// Set while a coroutine request runs on this (Lua) thread.
    #[cfg(feature = "tokio")]
    static IN_COROUTINE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as the Lua thread of isle `id`.
pub(crate) fn set_isle_id(id: u64) {
    ISLE_ID.set(id);
}

/// Marks the calling thread as serving the pool `id` (one of its members' Lua threads).
pub(crate) fn set_pool_id(id: u64) {
    POOL_ID.set(id);
}

/// Marks the calling thread as serving no isle any more (its isle has ended; the thread may
/// serve another one).
pub(crate) fn leave_isle() {
    ISLE_ID.set(0);
    POOL_ID.set(0);
    #[cfg(feature = "tokio")]
    IN_COROUTINE.set(false);
}

/// Whether the calling thread is the Lua thread of isle `id`, or of a member of pool `id`.
pub(crate) fn on_isle_thread(id: u64) -> bool {
    ISLE_ID.get() == id || POOL_ID.get() == id
}

/// Whether waiting for isle `id` here would wait for the very thread that waits: true on the
/// isle's own thread, except inside a coroutine request, whose awaits yield to the isle's
/// executor.
#[cfg(feature = "tokio")]
pub(crate) fn would_block_isle(id: u64) -> bool {
    on_isle_thread(id) && !IN_COROUTINE.get()
}

/// Whether a coroutine request runs on this (Lua) thread now.
pub(crate) fn in_coroutine() -> bool {
    #[cfg(feature = "tokio")]
    {
        IN_COROUTINE.get()
    }
    #[cfg(not(feature = "tokio"))]
    {
        false
    }
}

/// Marks the calling thread as running a coroutine request (or not).
#[cfg(feature = "tokio")]
pub(crate) fn set_in_coroutine(inside: bool) {
    IN_COROUTINE.set(inside);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn spin_until_sees_a_flag_set_by_another_thread() {
        let flag = Arc::new(AtomicBool::new(false));
        let setter = {
            let flag = flag.clone();
            thread::spawn(move || flag.store(true, Ordering::Release))
        };
        setter.join().unwrap();
        assert!(spin_until(|| flag.load(Ordering::Acquire)));
    }

    #[test]
    fn spin_until_gives_up() {
        assert!(!spin_until(|| false));
    }

    #[test]
    fn thread_waker_unparks_the_waiting_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = Arc::new(AtomicBool::new(false));
        let waiter = {
            let flag = flag.clone();
            thread::spawn(move || {
                tx.send(thread_waker()).unwrap();
                while !flag.load(Ordering::Acquire) {
                    park_until(None);
                }
            })
        };
        let waker = rx.recv().unwrap();
        flag.store(true, Ordering::Release);
        waker.wake();
        waiter.join().unwrap();
    }
}
