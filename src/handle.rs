//! The caller's side of an isle: submitting jobs through the bounded queue, and the gate that
//! lets the Lua thread close that queue without losing a job.
//!
//! The queue is a bounded crossbeam channel. Closing it must not strand a job that a caller is
//! sending at that very moment, so every send is bracketed by the gate: a caller registers as a
//! sender (failing if the gate is closed) and deregisters after the send. Whoever closes the
//! gate drains the channel until no sender is registered; after that, nothing can enter.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::current;
use crate::error::IsleError;
use crate::interrupt::Interrupter;
use crate::worker::BoxJob;

/// Gate bit: no new job may enter the queue.
const CLOSED: usize = 1;
/// Gate increment for one caller in the middle of a send.
const SENDER: usize = 2;

/// State shared by every handle of one isle and its Lua thread.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Unique per isle; lets a blocking call detect that it runs on this isle's own thread.
    pub(crate) id: u64,
    pub(crate) interrupter: Arc<Interrupter>,
    /// Applied to requests that set no deadline of their own.
    pub(crate) default_timeout: Option<Duration>,
    gate: AtomicUsize,
    alive: AtomicBool,
}

impl Shared {
    pub(crate) fn new(default_timeout: Option<Duration>) -> Self {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed) as u64,
            interrupter: Arc::new(Interrupter::new()),
            default_timeout,
            gate: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
        }
    }

    /// Whether the Lua thread is still serving requests.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Closes the gate: from now on every submission fails with [`IsleError::Shutdown`].
    pub(crate) fn close(&self) {
        self.gate.fetch_or(CLOSED, Ordering::SeqCst);
    }

    /// Closes the gate, marks the isle dead and resolves everything still queued with
    /// [`IsleError::Shutdown`], including jobs of callers that were mid-send.
    pub(crate) fn close_and_drain(&self, rx: &Receiver<BoxJob>) {
        self.close();
        self.alive.store(false, Ordering::Release);
        loop {
            let senders = self.gate.load(Ordering::SeqCst) / SENDER;
            // Dropping a job resolves its request with `Shutdown`.
            while let Ok(job) = rx.try_recv() {
                drop(job);
            }
            if senders == 0 {
                break;
            }
            thread::yield_now();
        }
    }

    fn enter(&self) -> bool {
        if self.gate.fetch_add(SENDER, Ordering::SeqCst) & CLOSED != 0 {
            self.leave();
            return false;
        }
        true
    }

    fn leave(&self) {
        self.gate.fetch_sub(SENDER, Ordering::SeqCst);
    }
}

/// What to do when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Block until there is room (backpressure).
    Wait,
    /// Fail with [`IsleError::Full`].
    Fail,
}

/// A sending handle to one isle.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    pub(crate) tx: Sender<BoxJob>,
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    /// Queues `job`. On failure the job is dropped, which resolves its request.
    ///
    /// On the isle's own thread the queue is never waited for: only that thread drains it.
    pub(crate) fn submit(&self, job: BoxJob, when_full: WhenFull) -> Result<(), IsleError> {
        if !self.shared.enter() {
            return Err(IsleError::Shutdown);
        }
        let result = if when_full == WhenFull::Wait && !current::on_isle_thread(self.shared.id) {
            self.tx.send(job).map_err(|_| IsleError::Shutdown)
        } else {
            self.tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => IsleError::Full,
                TrySendError::Disconnected(_) => IsleError::Shutdown,
            })
        };
        self.shared.leave();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_refuses_senders() {
        let shared = Shared::new(None);
        assert!(shared.enter());
        shared.leave();
        shared.close();
        assert!(!shared.enter());
        assert_eq!(shared.gate.load(Ordering::SeqCst), CLOSED);
    }

    use std::sync::{Barrier, Mutex};

    use crate::slot::{Completer, Slot};
    use crate::worker::{Job, Worker};

    /// A job nobody runs: only its resolution is observed.
    struct Unrun(#[allow(dead_code)] Completer<u32>);

    impl Job for Unrun {
        fn run(self: Box<Self>, _: &mut Worker) {
            unreachable!("no worker in these tests")
        }
    }

    #[test]
    fn closing_resolves_every_job_even_from_racing_senders() {
        for _ in 0..50 {
            let shared = Arc::new(Shared::new(None));
            let (tx, rx) = crossbeam_channel::bounded::<BoxJob>(4);
            let handle = Handle {
                tx,
                shared: shared.clone(),
            };
            let slots = Mutex::new(Vec::new());
            let barrier = Barrier::new(5);
            thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        barrier.wait();
                        for _ in 0..100 {
                            let slot = Slot::new(shared.interrupter.clone());
                            slots.lock().unwrap().push(slot.clone());
                            let job = Box::new(Unrun(Completer::new(slot)));
                            let _ = handle.submit(job, WhenFull::Wait);
                        }
                    });
                }
                barrier.wait();
                shared.close_and_drain(&rx);
            });
            assert!(!shared.is_alive());
            let slots = slots.into_inner().unwrap();
            assert_eq!(slots.len(), 400);
            for slot in slots {
                assert!(matches!(slot.take(), Some(Err(IsleError::Shutdown))));
            }
            assert!(rx.is_empty());
        }
    }

    #[test]
    fn isle_ids_are_unique() {
        assert_ne!(Shared::new(None).id, Shared::new(None).id);
    }
}
