//! A second queue a Lua thread serves: work shared with other Lua threads (a pool's), taken
//! only while the thread's gate lets it, plus what the thread reports after each job.
//!
//! Several Lua threads wait on one feed; whichever is free first takes the next job, so no
//! job waits behind a busy thread while another is idle. A thread *claims* (through its gate)
//! before it takes a job from the feed and releases the claim when the job is done, so that
//! whoever owns the gate always knows whether the thread is serving the feed, and can close
//! the gate (for exclusive use, or before retiring the thread) without racing a take.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Select, TryRecvError};

use crate::core::queue::Queued;
#[cfg(feature = "tokio")]
use crate::core::queue::Wakeup;
use crate::core::wait;

/// The feed of one Lua thread: the shared queue, the thread's gate to it, and the events
/// shared by everyone who uses the feed.
pub(crate) struct Feed {
    rx: Receiver<Queued>,
    gate: Arc<dyn FeedGate>,
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    signals: Arc<FeedSignals>,
}

/// Events of a feed, for async waiters.
#[derive(Debug, Default)]
pub(crate) struct FeedSignals {
    /// Notified by senders after queueing: a Lua thread serving coroutines waits on it.
    #[cfg(feature = "tokio")]
    pub(crate) arrived: Wakeup,
    /// Notified by Lua threads after taking a job: async senders wait on it for room.
    #[cfg(feature = "tokio")]
    pub(crate) room: Wakeup,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

/// The owner's side of a Lua thread's access to a feed.
pub(crate) trait FeedGate: Send + Sync {
    /// Marks the thread busy with a job from the feed, if it may take one now.
    fn claim(&self) -> bool;
    /// Ends a claim: the feed was empty, or the job taken under it is done.
    fn release(&self);
    /// Whether the thread may take jobs from the feed now (it waits on the feed only then;
    /// whoever opens the gate again wakes it through its own queue).
    fn open(&self) -> bool;
    /// Whether the feed's owner is gone (then the feed disconnects, or has).
    fn gone(&self) -> bool;
    /// Called on the Lua thread after every job it took, whether the job ran or not.
    fn between_jobs(&self);
    /// Called on the Lua thread after every request that ran, from either queue, before its
    /// result is handed over.
    fn finished(&self, report: &JobReport);
}

/// How a job a Lua thread took ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    /// An error other than the ones below (a Lua error, a conversion, ...).
    Failed,
    Panicked,
    Cancelled,
    TimedOut,
}

impl Outcome {
    /// How a request with `result` ended.
    pub(crate) fn of<T>(result: &Result<T, crate::error::IsleError>) -> Outcome {
        use crate::error::IsleError;
        match result {
            Ok(_) => Outcome::Ok,
            Err(IsleError::Cancelled | IsleError::Shutdown) => Outcome::Cancelled,
            Err(IsleError::Timeout) => Outcome::TimedOut,
            Err(IsleError::Panic(_)) => Outcome::Panicked,
            Err(_) => Outcome::Failed,
        }
    }
}

/// What a Lua thread reports after a request that ran.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobReport {
    pub(crate) outcome: Outcome,
    /// The VM's memory in use after the job.
    pub(crate) memory: usize,
}

impl Feed {
    pub(crate) fn new(
        rx: Receiver<Queued>,
        gate: Arc<dyn FeedGate>,
        signals: Arc<FeedSignals>,
    ) -> Self {
        Feed { rx, gate, signals }
    }

    /// The feed's events.
    #[cfg(feature = "tokio")]
    pub(crate) fn signals(&self) -> Arc<FeedSignals> {
        self.signals.clone()
    }

    pub(crate) fn gate(&self) -> &dyn FeedGate {
        &*self.gate
    }

    /// The gate, shared (with coroutine tasks, which report when they end).
    #[cfg(feature = "tokio")]
    pub(crate) fn shared_gate(&self) -> Arc<dyn FeedGate> {
        self.gate.clone()
    }

    /// Whether nothing is queued in the feed.
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// A job and where it came from.
pub(crate) struct Taken {
    pub(crate) job: Queued,
    /// Taken from the feed under a claim, to be released once the job is done.
    pub(crate) from_feed: bool,
}

/// What one look at the queues found.
pub(crate) enum Polled {
    Job(Taken),
    /// Nothing for now.
    Empty,
    /// The own queue is disconnected and the feed has nothing this thread may take.
    Done,
}

/// One look at the own queue, then (under a claim) at the feed; drops a disconnected feed.
pub(crate) fn poll_next(rx: &Receiver<Queued>, feed: &mut Option<Feed>) -> Polled {
    let own_gone = match rx.try_recv() {
        Ok(job) => {
            return Polled::Job(Taken {
                job,
                from_feed: false,
            })
        }
        Err(TryRecvError::Disconnected) => true,
        Err(TryRecvError::Empty) => false,
    };
    // Looking before claiming keeps an idle thread from claiming (and looking busy) in a loop.
    if let Some(open) = feed.as_ref().filter(|feed| !feed.rx.is_empty()) {
        if open.gate.claim() {
            match open.rx.try_recv() {
                Ok(job) => {
                    #[cfg(feature = "tokio")]
                    open.signals.room.notify(1);
                    return Polled::Job(Taken {
                        job,
                        from_feed: true,
                    });
                }
                Err(err) => {
                    open.gate.release();
                    if err == TryRecvError::Disconnected {
                        *feed = None;
                    }
                }
            }
        }
    }
    if own_gone {
        Polled::Done
    } else {
        Polled::Empty
    }
}

/// The next job from the thread's own queue or, while the gate is open, from the feed;
/// polling briefly before blocking. `None` once the own queue is disconnected and the feed has
/// nothing the thread may take, or once `kill_alarm` is disconnected (the isle was killed:
/// nothing more runs, and handles may still exist, so the queue may never disconnect).
pub(crate) fn next_job(
    rx: &Receiver<Queued>,
    feed: &mut Option<Feed>,
    kill_alarm: &Receiver<Infallible>,
) -> Option<Taken> {
    loop {
        let mut next = None;
        let found = wait::spin_until(|| match poll_next(rx, feed) {
            Polled::Job(taken) => {
                next = Some(taken);
                true
            }
            Polled::Done => true,
            Polled::Empty => false,
        });
        if found {
            return next;
        }
        // Block on the own queue, on the feed while the gate is open, and on the kill alarm;
        // then poll again.
        let mut select = Select::new();
        select.recv(rx);
        let killed = select.recv(kill_alarm);
        match feed.as_ref().filter(|feed| feed.gate.open()) {
            None => {}
            Some(open) => {
                // A disconnected feed is ready for ever: never block on one. (Looking without a
                // claim: a claim would show this idle thread as busy.)
                if open.gate.gone() {
                    *feed = None;
                    continue;
                }
                select.recv(&open.rx);
            }
        }
        #[cfg(test)]
        crate::core::pause::at(crate::core::pause::Window::WaitingForJob);
        if select.ready() == killed {
            return None;
        }
    }
}
