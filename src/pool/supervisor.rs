//! The supervisor: a pool's background thread that replaces members, so that no request and
//! no caller ever waits for a thread to start or end.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::member::{Member, RETIRING};
use super::shared::PoolCore;

/// What the supervisor hears about.
#[derive(Debug)]
pub(crate) enum Event {
    /// Replace the member at `index` if it is still the one with `serial` (retired by the
    /// policy, counted where it was decided).
    Retire { index: usize, serial: u64 },
    /// The member's thread ended, or its isle gave up on it.
    Exited { index: usize, serial: u64 },
    /// A checked-out member whose queue was full when its guard was dropped: queue its return
    /// here, where waiting for room blocks nobody.
    Return(Arc<Member>),
    /// The pool is shutting down.
    Stop,
}

/// The first and the longest wait before retrying a replacement that failed to start.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The supervisor's loop; ends at [`Event::Stop`] or when the pool is gone.
pub(crate) fn run(pool: Weak<PoolCore>, events: Receiver<Event>) {
    // Positions whose replacement failed to start: when to try again, and the next delay.
    let mut retries: Vec<(usize, Instant, Duration)> = Vec::new();
    loop {
        let next_retry = retries.iter().map(|&(_, at, _)| at).min();
        let event = match next_retry {
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => events.recv_deadline(at),
        };
        let Some(pool) = pool.upgrade() else {
            return;
        };
        match event {
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Event::Retire { index, serial }) => {
                if let Some(old) = pool.remove(index, serial) {
                    retire(old);
                    replace(&pool, index, RETRY_FIRST, &mut retries);
                }
            }
            Ok(Event::Exited { index, serial }) => {
                if let Some(old) = pool.remove(index, serial) {
                    pool.counters
                        .replaced
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if old.isle.is_abandoned() {
                        pool.counters
                            .abandoned
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    retire(old);
                    replace(&pool, index, RETRY_FIRST, &mut retries);
                }
            }
            Ok(Event::Return(member)) => super::checkout::give_back_waiting(&pool, member),
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                let due: Vec<_> = retries.iter().copied().filter(|r| r.1 <= now).collect();
                retries.retain(|r| r.1 > now);
                for (index, _, delay) in due {
                    replace(&pool, index, delay, &mut retries);
                }
            }
        }
    }
}

/// Lets a replaced member go: it takes nothing more from the pool's queue, runs what its own
/// queue holds and ends once its last handle (a guard may still hold one) is gone.
fn retire(old: Arc<Member>) {
    old.cell.force_state(RETIRING);
    drop(old);
}

/// Starts a member at `index`, or schedules a retry `delay` later if it fails to start.
fn replace(
    pool: &Arc<PoolCore>,
    index: usize,
    delay: Duration,
    retries: &mut Vec<(usize, Instant, Duration)>,
) {
    if pool.is_closed() {
        return;
    }
    let started = pool
        .launch(index)
        .and_then(|(cell, launched)| pool.finish(cell, launched));
    match started {
        Ok(member) => {
            if pool.is_closed() {
                // Shut down meanwhile: the new member only has to go again.
                retire(member);
            } else {
                pool.install(&member);
            }
        }
        Err(_) => {
            pool.counters
                .failed_starts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // With no member left, nothing would ever take what is queued: fail it now
            // rather than let its callers wait for a VM that cannot start.
            if pool.snapshot().is_empty() {
                pool.drain();
            }
            retries.push((index, Instant::now() + delay, (delay * 2).min(RETRY_MAX)));
        }
    }
}
