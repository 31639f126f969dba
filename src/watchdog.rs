//! The watchdog: one process-wide thread that enforces the deadlines of running requests.
//!
//! An isle registers here the first time one of its requests has a deadline. While a request
//! with a deadline runs, the isle publishes that deadline; the watchdog sleeps until the
//! earliest published one, then:
//!
//! - at the deadline, marks the request's generation expired, which interrupts it (with
//!   [`Interrupt::Signal`](crate::Interrupt::Signal) this sends the signal);
//! - at the deadline plus the isle's grace period, if the same request still runs, gives the
//!   isle up (see `Shared::give_up`).
//!
//! The thread exits when no registered isle is left, so an idle process has no watchdog.
//! Publishing a deadline costs two atomic operations; the watchdog is only woken when the new
//! deadline is earlier than the one it sleeps until.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::handle::Shared;

/// A point in time as nanoseconds since a process-wide origin; never 0.
pub(crate) fn ticks(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(origin).as_nanos())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

struct Watchdog {
    state: Mutex<State>,
    wake: Condvar,
    /// The tick the watchdog sleeps until; `u64::MAX` when it sleeps without a timeout.
    next_wake: AtomicU64,
}

#[derive(Default)]
struct State {
    isles: Vec<Weak<Shared>>,
    running: bool,
    /// Set by [`kick`]: something changed since the last scan.
    kicked: bool,
}

static WATCHDOG: Watchdog = Watchdog {
    state: Mutex::new(State {
        isles: Vec::new(),
        running: false,
        kicked: false,
    }),
    wake: Condvar::new(),
    next_wake: AtomicU64::new(u64::MAX),
};

impl Watchdog {
    /// Locks the state; nothing can panic while it is held, but a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts watching `isle` (once per isle).
pub(crate) fn register(isle: &Arc<Shared>) {
    let mut state = WATCHDOG.lock();
    state.isles.push(Arc::downgrade(isle));
    state.kicked = true;
    if !state.running {
        let spawned = thread::Builder::new()
            .name("mlua-isle-watchdog".to_owned())
            .spawn(run);
        // Without a watchdog, deadlines are still enforced by the interrupt hook where it is
        // permanent and by waiters for queued requests; only the hard stop is lost.
        state.running = spawned.is_ok();
    }
    WATCHDOG.wake.notify_one();
}

/// Tells the watchdog that a deadline at `tick` was published.
pub(crate) fn deadline_published(tick: u64) {
    if tick < WATCHDOG.next_wake.load(Ordering::SeqCst) {
        kick();
    }
}

/// Wakes the watchdog for a new scan (a registered isle went away, or a deadline came closer).
pub(crate) fn kick() {
    let mut state = WATCHDOG.lock();
    state.kicked = true;
    WATCHDOG.wake.notify_one();
}

fn run() {
    loop {
        let isles: Vec<Arc<Shared>> = {
            let mut state = WATCHDOG.lock();
            state.isles.retain(|isle| isle.strong_count() > 0);
            if state.isles.is_empty() {
                state.running = false;
                return;
            }
            state.kicked = false;
            state.isles.iter().filter_map(Weak::upgrade).collect()
        };
        // While scanning, every newly published deadline kicks: one published after its isle
        // was scanned is then not missed.
        WATCHDOG.next_wake.store(u64::MAX, Ordering::SeqCst);
        let now = ticks(Instant::now());
        let next = isles
            .iter()
            .filter_map(|isle| isle.check_deadline(now))
            .min()
            .unwrap_or(u64::MAX);
        WATCHDOG.next_wake.store(next, Ordering::SeqCst);
        // Dropped outside the lock: dropping the last reference to an isle kicks the watchdog.
        drop(isles);

        let state = WATCHDOG.lock();
        if state.kicked {
            continue;
        }
        if next == u64::MAX {
            drop(WATCHDOG.wake.wait(state));
        } else {
            let timeout = Duration::from_nanos(next.saturating_sub(ticks(Instant::now())));
            drop(WATCHDOG.wake.wait_timeout(state, timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_monotonic_and_never_zero() {
        let a = ticks(Instant::now());
        let b = ticks(Instant::now() + Duration::from_millis(1));
        assert!(a > 0);
        assert!(b > a);
    }
}
