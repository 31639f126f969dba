//! Pacing of repeated deliveries of a stop by how long arming the hook takes.
//!
//! A pending stop is delivered again and again until it takes effect (see
//! `Shared::reassert_stop`), and each delivery's signal handler arms the hook on every coroutine
//! of the resume chain. From Lua 5.4 on, `lua_sethook` also marks every frame of a coroutine's
//! call stack: a million frames deep that takes tens of milliseconds, longer than the interval
//! between deliveries, and a stop unwinding such a stack spent most of its time being armed
//! again. [`ArmPace`] records when the handler's last arm began and how long it took, and holds
//! the next delivery back while an arm runs, and after it until nine times that long after it
//! began (at most 100 ms after it ended, and at most a quarter of the grace period).

use std::time::Duration;

#[cfg(all(unix, not(feature = "luau")))]
use std::sync::atomic::{AtomicU64, Ordering};

/// A delivery waits, from the start of the last arm, this many times as long as that arm took
/// (unless [`MAX_HOLD`] comes first): the handler then takes about a ninth of the Lua thread's
/// time at most, when arms are quicker than an eighth of the hold.
#[cfg(all(unix, not(feature = "luau")))]
const SPACING: u64 = 9;

/// The longest a delivery is held back after the last arm ended, so that an arm lost to a race
/// is still made good well within the grace period.
#[cfg(all(unix, not(feature = "luau")))]
const MAX_HOLD: Duration = Duration::from_millis(100);

/// How long a delivery waits, at least, while an arm runs.
#[cfg(all(unix, not(feature = "luau")))]
const MIN_LOOK: Duration = Duration::from_millis(1);

/// What `took` holds while an arm is in progress.
#[cfg(all(unix, not(feature = "luau")))]
const IN_PROGRESS: u64 = u64::MAX;

/// When the signal handler's last arm began and how long it took, written by the handler and
/// read by the watchdog.
#[derive(Debug, Default)]
pub(crate) struct ArmPace {
    /// When the last arm began, in nanoseconds on the monotonic clock; 0 for never.
    #[cfg(all(unix, not(feature = "luau")))]
    began: AtomicU64,
    /// How long the last arm took, in nanoseconds; [`IN_PROGRESS`] while it runs.
    #[cfg(all(unix, not(feature = "luau")))]
    took: AtomicU64,
}

impl ArmPace {
    /// Records that an arm begins (`true`) or ends. Async-signal-safe.
    #[cfg(all(unix, not(feature = "luau")))]
    pub(super) fn arming(&self, begins: bool) {
        let now = monotonic_nanos();
        if begins {
            // `began` first: whoever reads `IN_PROGRESS` reads this `began` or a later one.
            self.began.store(now, Ordering::SeqCst);
            self.took.store(IN_PROGRESS, Ordering::SeqCst);
        } else {
            let began = self.began.load(Ordering::SeqCst);
            self.took.store(now.saturating_sub(began), Ordering::SeqCst);
        }
    }

    /// Test-only: records an arm that took `took` and ended now.
    #[cfg(all(test, unix, not(feature = "luau")))]
    pub(super) fn record_slow_arm(&self, took: Duration) {
        let took_nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.began.store(
            monotonic_nanos().saturating_sub(took_nanos).max(1),
            Ordering::SeqCst,
        );
        self.took.store(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// How long the next delivery should wait (zero: deliver now). While an arm runs, it
    /// cannot have been lost yet: a delivery then waits at least [`MIN_LOOK`]. Once it has
    /// ended, the next waits until eight times as long as it took has passed since its end,
    /// but no more than `hold` (nor [`MAX_HOLD`]).
    pub(super) fn wait(&self, hold: Duration) -> Duration {
        #[cfg(all(unix, not(feature = "luau")))]
        {
            // `took` first (see `arming`).
            let took = self.took.load(Ordering::SeqCst);
            let began = self.began.load(Ordering::SeqCst);
            if began == 0 {
                return Duration::ZERO;
            }
            let now = monotonic_nanos();
            let hold = u64::try_from(hold.min(MAX_HOLD).as_nanos()).unwrap_or(u64::MAX);
            let after = |took: u64| took.saturating_mul(SPACING - 1).min(hold);
            if took == IN_PROGRESS {
                let so_far = after(now.saturating_sub(began));
                return Duration::from_nanos(so_far).max(MIN_LOOK);
            }
            let allowed = began.saturating_add(took).saturating_add(after(took));
            Duration::from_nanos(allowed.saturating_sub(now))
        }
        #[cfg(not(all(unix, not(feature = "luau"))))]
        {
            let _ = hold;
            Duration::ZERO
        }
    }
}

/// The monotonic clock in nanoseconds. Async-signal-safe (`clock_gettime` is).
#[cfg(all(unix, not(feature = "luau")))]
fn monotonic_nanos() -> u64 {
    // SAFETY: `clock_gettime` writes the time into `now`, a valid `timespec`.
    let now = unsafe {
        let mut now: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
        now
    };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(all(test, unix, not(feature = "luau")))]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    /// Longer than any hold.
    const LONG: Duration = Duration::from_secs(10);

    /// An arm that began `began_ago` nanoseconds ago and took `took` (or is in progress).
    fn recorded(began_ago: u64, took: u64) -> ArmPace {
        let pace = ArmPace::default();
        pace.began
            .store(monotonic_nanos() - began_ago, Ordering::SeqCst);
        pace.took.store(took, Ordering::SeqCst);
        pace
    }

    #[test]
    fn without_an_arm_a_delivery_never_waits() {
        assert_eq!(ArmPace::default().wait(LONG), Duration::ZERO);
    }

    #[test]
    fn a_quick_arm_holds_nothing_back() {
        let pace = ArmPace::default();
        pace.arming(true);
        pace.arming(false);
        // Microseconds at most: far below a watchdog's tick.
        assert!(
            pace.wait(LONG) < Duration::from_millis(1),
            "{:?}",
            pace.wait(LONG)
        );
        assert_eq!(recorded(MS, 10_000).wait(LONG), Duration::ZERO);
    }

    #[test]
    fn a_slow_arm_holds_the_next_delivery_back_eight_times_as_long_after_it_ended() {
        // Began 10 ms ago and just ended: the next delivery is due 80 ms from now.
        let wait = recorded(10 * MS, 10 * MS).wait(LONG);
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(80),
            "{wait:?}"
        );
        // Ended 90 ms ago: due already.
        assert_eq!(recorded(100 * MS, 10 * MS).wait(LONG), Duration::ZERO);
    }

    #[test]
    fn no_delivery_is_made_while_an_arm_runs() {
        // Eight times as long as it has run so far, at least `MIN_LOOK`, at most the cap.
        let wait = recorded(10 * MS, IN_PROGRESS).wait(LONG);
        assert!(
            wait >= Duration::from_millis(80) && wait <= MAX_HOLD,
            "{wait:?}"
        );
        assert_eq!(recorded(10_000 * MS, IN_PROGRESS).wait(LONG), MAX_HOLD);
        assert_eq!(recorded(0, IN_PROGRESS).wait(LONG), MIN_LOOK);
        assert_eq!(
            recorded(10_000 * MS, IN_PROGRESS).wait(Duration::ZERO),
            MIN_LOOK
        );
    }

    #[test]
    fn a_delivery_is_held_back_at_most_the_cap_after_the_last_arm_ended() {
        // However long the last arm took, however often the watchdog asks.
        let wait = recorded(10_000 * MS, 10_000 * MS).wait(LONG);
        assert!(wait > Duration::ZERO && wait <= MAX_HOLD, "{wait:?}");
        assert_eq!(
            recorded(10_100 * MS, 10_000 * MS).wait(LONG),
            Duration::ZERO
        );
    }

    #[test]
    fn a_delivery_is_held_back_at_most_the_hold_asked_for() {
        let hold = Duration::from_millis(50);
        let wait = recorded(10_000 * MS, 10_000 * MS).wait(hold);
        assert!(wait > Duration::ZERO && wait <= hold, "{wait:?}");
        assert_eq!(
            recorded(10_050 * MS, 10_000 * MS).wait(hold),
            Duration::ZERO
        );
    }
}
