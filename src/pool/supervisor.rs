//! The supervisor: a pool's background thread that replaces members, so that no request and
//! no caller ever waits for a thread to start or end. It never blocks on anything but its
//! own events: a replacement's `init` is awaited through an event too.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::member::{Member, MemberCell, RETIRING};
use super::shared::PoolCore;
use crate::handle::builder::Launched;

/// What the supervisor hears about.
#[derive(Debug)]
pub(crate) enum Event {
    /// Replace the member with `serial` if it is still in the pool (retired by the policy,
    /// counted where it was decided).
    Retire { serial: u64 },
    /// The member's thread ended, or its isle gave up on it.
    Exited { serial: u64 },
    /// The replacement with `serial` finished its `init` (well or not).
    Started { index: usize, serial: u64 },
    /// The pool is closed: replace only while its queue holds work, and end once it is empty.
    Stop,
}

/// The first and the longest wait before retrying a replacement that failed to start.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How often a stopping supervisor looks whether the queue is empty yet.
const STOPPING_POLL: Duration = Duration::from_millis(5);

/// A replacement being started.
struct Starting {
    cell: Arc<MemberCell>,
    launched: Launched,
    /// The delay before a retry, should this start fail.
    delay: Duration,
}

/// The supervisor's state.
struct Supervisor {
    pool: Weak<PoolCore>,
    events: Sender<Event>,
    starting: HashMap<usize, Starting>,
    /// Positions whose replacement failed to start: when to try again, and the delay then.
    retries: Vec<(usize, Instant, Duration)>,
    stopping: bool,
}

/// The supervisor's loop; ends once the pool is closed and its queue empty, or the pool is
/// gone.
pub(crate) fn run(pool: Weak<PoolCore>, events: Receiver<Event>, sender: Sender<Event>) {
    let mut supervisor = Supervisor {
        pool,
        events: sender,
        starting: HashMap::new(),
        retries: Vec::new(),
        stopping: false,
    };
    loop {
        let Some(pool) = supervisor.pool.upgrade() else {
            return;
        };
        supervisor.retry_due(&pool);
        if supervisor.stopping {
            if pool.feed_rx.is_empty() || pool.is_dead() {
                return;
            }
            supervisor.keep_serving(&pool);
        }
        let mut wake_at = supervisor.retries.iter().map(|r| r.1).min();
        if supervisor.stopping {
            let poll = Instant::now() + STOPPING_POLL;
            wake_at = Some(wake_at.map_or(poll, |at| at.min(poll)));
        }
        drop(pool);
        let event = match wake_at {
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => events.recv_deadline(at),
        };
        let Some(pool) = supervisor.pool.upgrade() else {
            return;
        };
        match event {
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
            Ok(Event::Stop) => supervisor.stopping = true,
            Ok(Event::Retire { serial }) => {
                if let Some((index, old)) = pool.remove_retiring(serial) {
                    retire(&pool, old);
                    supervisor.take_over(&pool, index);
                }
            }
            Ok(Event::Exited { serial }) => {
                if let Some((index, old)) = pool.remove(serial) {
                    pool.counters.replaced.fetch_add(1, Ordering::Relaxed);
                    let abandoned = old.isle.is_abandoned();
                    if abandoned {
                        pool.counters.abandoned.fetch_add(1, Ordering::Relaxed);
                    }
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        target: "mlua_isle",
                        pool = pool.id,
                        member = index,
                        abandoned,
                        "pool member ended unexpectedly; replacing it"
                    );
                    retire(&pool, old);
                    supervisor.take_over(&pool, index);
                } else {
                    // A member replaced earlier has ended.
                    pool.forget_retired(serial);
                }
            }
            Ok(Event::Started { index, serial }) => supervisor.started(&pool, index, serial),
        }
    }
}

/// Lets a replaced member go: it takes nothing more from the pool's queue, and, closed, ends
/// once it has run what its own queue holds and its coroutine requests in progress (whoever
/// still holds a handle to it). The pool keeps its state until then, so that the pool's
/// shutdown waits for it too (and stops it past a deadline).
fn retire(pool: &PoolCore, old: Arc<Member>) {
    #[cfg(test)]
    crate::core::pause::at(crate::core::pause::Window::RetireUnrecorded);
    old.cell.force_state(RETIRING);
    let shared = old.isle.shared_state().clone();
    shared.close();
    // It may be waiting for work on its own queue: make it look at the flag.
    old.isle.wake();
    pool.keep_retired(old.cell.serial, shared);
    drop(old);
}

impl Supervisor {
    /// Fills the position `index` a member left: with a ready spare (then a new spare
    /// starts), or with a new member.
    fn take_over(&mut self, pool: &Arc<PoolCore>, index: usize) {
        let refill = if index < pool.size() {
            pool.promote_spare(index).unwrap_or(index)
        } else {
            index
        };
        self.replace(pool, refill, RETRY_FIRST);
    }

    /// Starts a member at `index` (unless one is being started there already), without
    /// waiting for its `init`: [`Event::Started`] says when it is done.
    fn replace(&mut self, pool: &Arc<PoolCore>, index: usize, delay: Duration) {
        let unneeded = self.stopping && pool.feed_rx.is_empty();
        if self.starting.contains_key(&index) || unneeded || pool.is_dead() {
            return;
        }
        match pool.launch(index) {
            Ok((cell, launched)) => {
                let watch = Waker::from(Arc::new(StartWatch {
                    events: self.events.clone(),
                    index,
                    serial: cell.serial,
                }));
                let ready = launched.ready.clone();
                self.starting.insert(
                    index,
                    Starting {
                        cell,
                        launched,
                        delay,
                    },
                );
                if ready
                    .poll_ready(&mut Context::from_waker(&watch))
                    .is_ready()
                {
                    watch.wake();
                }
            }
            Err(_) => self.failed(pool, index, delay),
        }
    }

    /// A replacement's `init` is done: put it in service, or try again later.
    fn started(&mut self, pool: &Arc<PoolCore>, index: usize, serial: u64) {
        if self
            .starting
            .get(&index)
            .is_none_or(|s| s.cell.serial != serial)
        {
            return;
        }
        let Some(Starting {
            cell,
            launched,
            delay,
        }) = self.starting.remove(&index)
        else {
            return;
        };
        let outcome = launched.ready.take();
        match pool.adopt(cell, launched, outcome) {
            Ok(member) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(
                    target: "mlua_isle",
                    pool = pool.id,
                    member = index,
                    "pool member replaced"
                );
                pool.install(&member);
            }
            Err(_) => {
                #[cfg(feature = "tracing")]
                tracing::warn!(
                    target: "mlua_isle",
                    pool = pool.id,
                    member = index,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "pool member failed to start"
                );
                self.failed(pool, index, delay);
            }
        }
    }

    /// A start at `index` failed: count it and try again after `delay`.
    fn failed(&mut self, pool: &PoolCore, index: usize, delay: Duration) {
        pool.counters.failed_starts.fetch_add(1, Ordering::Relaxed);
        // Every position failing to start over and over: the pool looks broken for good, so
        // what is queued fails now rather than waits for a VM that may never start.
        if delay >= RETRY_MAX && pool.snapshot().is_empty() && self.starting.is_empty() {
            pool.drain();
        }
        self.retries
            .push((index, Instant::now() + delay, (delay * 2).min(RETRY_MAX)));
    }

    /// Retries the starts that are due (on every turn: a steady stream of events must not
    /// hold them off).
    fn retry_due(&mut self, pool: &Arc<PoolCore>) {
        let now = Instant::now();
        let due: Vec<_> = self
            .retries
            .iter()
            .copied()
            .filter(|r| r.1 <= now)
            .collect();
        self.retries.retain(|r| r.1 > now);
        for (index, _, delay) in due {
            self.replace(pool, index, delay);
        }
    }

    /// While the pool is closing with work queued, some member must be there to take it.
    fn keep_serving(&mut self, pool: &Arc<PoolCore>) {
        let members = pool.members_or_vacancies();
        for (index, member) in members.into_iter().enumerate().take(pool.size()) {
            let gone = member.is_none_or(|m| !m.isle.is_alive());
            if gone && !self.retries.iter().any(|r| r.0 == index) {
                self.replace(pool, index, RETRY_FIRST);
            }
        }
    }
}

/// Tells the supervisor when a replacement's `init` is done.
struct StartWatch {
    events: Sender<Event>,
    index: usize,
    serial: u64,
}

impl Wake for StartWatch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.events.send(Event::Started {
            index: self.index,
            serial: self.serial,
        });
    }
}
