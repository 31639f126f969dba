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
//! The watchdog also serves `Sleep`, a runtime-agnostic timer future: async waiters use it
//! for deadlines, so the async API works on any executor, with or without a timer driver.
//!
//! The thread exits when no registered isle and no timer is left, so an idle process has no
//! watchdog. Publishing a deadline costs two atomic operations; the watchdog is only woken when
//! the new deadline is earlier than the one it sleeps until.

use std::collections::BTreeMap;
#[cfg(feature = "tokio")]
use std::future::Future;
#[cfg(feature = "tokio")]
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::Waker;
#[cfg(feature = "tokio")]
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use crate::core::queue::{Shared, REASSERT_FIRST};

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
    /// The tick of the latest stop (cancel, kill) published; 0 if none.
    last_stop: AtomicU64,
}

struct State {
    isles: Vec<Weak<Shared>>,
    /// Wakers of `Sleep` futures by (tick, sequence number).
    timers: BTreeMap<(u64, u64), Waker>,
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    next_timer: u64,
    running: bool,
    /// Set by [`kick`]: something changed since the last scan.
    kicked: bool,
}

static WATCHDOG: Watchdog = Watchdog {
    state: Mutex::new(State {
        isles: Vec::new(),
        timers: BTreeMap::new(),
        next_timer: 0,
        running: false,
        kicked: false,
    }),
    wake: Condvar::new(),
    next_wake: AtomicU64::new(u64::MAX),
    last_stop: AtomicU64::new(0),
};

/// How long the watchdog keeps waking at least every re-assertion delay after a stop was
/// published, so that a burst of cancels does not wake it once per cancel.
const LINGER: u64 = 50_000_000;

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
    wake_up(&mut state);
}

/// Makes sure the thread runs and rescans.
fn wake_up(state: &mut State) {
    state.kicked = true;
    if !state.running {
        let spawned = thread::Builder::new()
            .name("mlua-isle-watchdog".to_owned())
            .spawn(run);
        // Without a watchdog, deadlines are still enforced by a permanent interrupt hook and by
        // blocking waiters; only the hard stop and async timers are lost.
        state.running = spawned.is_ok();
    }
    WATCHDOG.wake.notify_one();
}

/// A future that completes at a point in time, served by the watchdog thread.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) struct Sleep {
    tick: u64,
    /// Our key in the timer table, once registered.
    entry: Option<(u64, u64)>,
}

#[cfg(feature = "tokio")]
impl Sleep {
    pub(crate) fn until(at: Instant) -> Self {
        Sleep {
            tick: ticks(at),
            entry: None,
        }
    }
}

#[cfg(feature = "tokio")]
impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if ticks(Instant::now()) >= self.tick {
            if let Some(entry) = self.entry.take() {
                WATCHDOG.lock().timers.remove(&entry);
            }
            return Poll::Ready(());
        }
        let mut state = WATCHDOG.lock();
        match self.entry {
            Some(entry) => {
                if let Some(waker) = state.timers.get_mut(&entry) {
                    if !waker.will_wake(cx.waker()) {
                        let replaced = std::mem::replace(waker, cx.waker().clone());
                        // User code may run as a waker drops: not under the watchdog's lock.
                        drop(state);
                        drop(replaced);
                    }
                } else {
                    // Fired meanwhile: the wake-up may have been lost on an old waker.
                    drop(state);
                    cx.waker().wake_by_ref();
                }
            }
            None => {
                let entry = (self.tick, state.next_timer);
                state.next_timer += 1;
                state.timers.insert(entry, cx.waker().clone());
                self.entry = Some(entry);
                if self.tick < WATCHDOG.next_wake.load(Ordering::SeqCst) {
                    wake_up(&mut state);
                }
            }
        }
        Poll::Pending
    }
}

#[cfg(feature = "tokio")]
impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            let mut state = WATCHDOG.lock();
            if state.timers.remove(&entry).is_some() {
                // The watchdog may be sleeping until this timer: let it rescan (and end if
                // nothing is left to watch).
                state.kicked = true;
                WATCHDOG.wake.notify_one();
            }
        }
    }
}

/// Tells the watchdog that a deadline at `tick` was published.
pub(crate) fn deadline_published(tick: u64) {
    if tick < WATCHDOG.next_wake.load(Ordering::SeqCst) {
        kick();
    }
}

/// Tells the watchdog that a stop was requested at `tick`, to be re-asserted
/// [`REASSERT_FIRST`] later if it is still pending.
///
/// Waking the watchdog takes a core from the threads that are carrying the stop out, so it is
/// woken only when it would sleep past the re-assertion: for [`LINGER`] after a stop it wakes
/// every [`REASSERT_FIRST`] anyway, and a cancel in that time costs two atomic operations.
pub(crate) fn stop_published(tick: u64) {
    WATCHDOG.last_stop.fetch_max(tick, Ordering::SeqCst);
    deadline_published(tick.saturating_add(REASSERT_FIRST));
}

/// The tick to wake at, given the one the isles and timers need (`next`), the time of this scan
/// (`now`) and of the latest stop published (`last_stop`, 0 if none).
///
/// For [`LINGER`] after a stop, the watchdog wakes at least every [`REASSERT_FIRST`]: a stop
/// requested after `now` is then due no earlier than this wake-up, and needs no kick.
fn lingering(next: u64, now: u64, last_stop: u64) -> u64 {
    if last_stop != 0 && now < last_stop.saturating_add(LINGER) {
        next.min(now.saturating_add(REASSERT_FIRST))
    } else {
        next
    }
}

/// Wakes the watchdog for a new scan (a registered isle went away, or a deadline came closer).
pub(crate) fn kick() {
    let mut state = WATCHDOG.lock();
    state.kicked = true;
    WATCHDOG.wake.notify_one();
}

fn run() {
    let mut fired: Vec<Waker> = Vec::new();
    loop {
        // While scanning, every newly published deadline kicks: one published after its isle
        // was scanned is then not missed.
        WATCHDOG.next_wake.store(u64::MAX, Ordering::SeqCst);
        let (isles, next_timer): (Vec<Arc<Shared>>, u64) = {
            let mut state = WATCHDOG.lock();
            state.isles.retain(|isle| isle.strong_count() > 0);
            if state.isles.is_empty() && state.timers.is_empty() {
                state.running = false;
                return;
            }
            state.kicked = false;
            let now = ticks(Instant::now());
            while let Some(entry) = state.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                fired.push(entry.remove());
            }
            let next_timer = state.timers.keys().next().map_or(u64::MAX, |k| k.0);
            let isles = state.isles.iter().filter_map(Weak::upgrade).collect();
            (isles, next_timer)
        };
        // Woken outside the lock: a waker may run anything, including code that needs it.
        for waker in fired.drain(..) {
            waker.wake();
        }
        let now = ticks(Instant::now());
        let next = isles
            .iter()
            .filter_map(|isle| isle.check(now))
            .min()
            .unwrap_or(u64::MAX)
            .min(next_timer);
        // From the time the scan ends: a scan slower than the period must not plan a wake in
        // the past (and rescan without sleeping).
        let scanned = ticks(Instant::now());
        let next = lingering(next, scanned, WATCHDOG.last_stop.load(Ordering::SeqCst));
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
    fn after_a_stop_the_watchdog_lingers_so_that_later_stops_need_no_kick() {
        let stop = 1_000_000_000;
        let mut now = stop;
        // Scans within the linger: every stop published after the scan is due no earlier than
        // the planned wake-up (so `deadline_published` does not kick).
        while now < stop + LINGER {
            let wake = lingering(u64::MAX, now, stop);
            assert!(wake <= now + REASSERT_FIRST);
            for later in [now, now + 1, now + REASSERT_FIRST / 2] {
                assert!(later + REASSERT_FIRST >= wake);
            }
            // An earlier need is kept.
            assert_eq!(lingering(now + 10, now, stop), now + 10);
            now = wake;
        }
        // Past the linger, or with no stop ever, the watchdog sleeps as long as it may.
        assert_eq!(lingering(u64::MAX, now, stop), u64::MAX);
        assert_eq!(lingering(u64::MAX, stop, 0), u64::MAX);
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn sleep_completes_after_its_time() {
        let start = Instant::now();
        let waker = crate::core::wait::thread_waker();
        let mut cx = Context::from_waker(&waker);
        let mut sleep = Box::pin(Sleep::until(start + Duration::from_millis(5)));
        while sleep.as_mut().poll(&mut cx).is_pending() {
            thread::park_timeout(Duration::from_secs(5));
        }
        assert!(start.elapsed() >= Duration::from_millis(5));
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn dropped_sleep_leaves_no_timer() {
        let waker = crate::core::wait::thread_waker();
        let mut cx = Context::from_waker(&waker);
        let mut sleep = Box::pin(Sleep::until(Instant::now() + Duration::from_secs(3600)));
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        let entry = sleep.entry.unwrap();
        drop(sleep);
        assert!(!WATCHDOG.lock().timers.contains_key(&entry));
    }

    #[test]
    fn ticks_are_monotonic_and_never_zero() {
        let a = ticks(Instant::now());
        let b = ticks(Instant::now() + Duration::from_millis(1));
        assert!(a > 0);
        assert!(b > a);
    }
}
