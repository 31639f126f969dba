//! The caller's side of an isle: submitting jobs through the bounded queue, and how the queue
//! is closed without stranding a job.
//!
//! The queue is a bounded crossbeam channel. Two flags describe its state: *closed* (no new
//! submissions; what is queued still runs) and *dead* (nothing queued will run any more). When
//! the Lua thread goes, it marks the isle dead and resolves everything queued with
//! [`IsleError::Shutdown`]. A caller sending at that very moment might slip a job in after that
//! last drain, so every successful send is followed by a fence and a look at the dead flag; a
//! sender that sees it drains the queue itself. The two fences make sure one of the two sides
//! sees the job, at the price of one fence per submission and no shared counter.

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::current;
use crate::error::IsleError;
use crate::interrupt::Interrupter;
use crate::worker::Queued;

/// State shared by every handle of one isle and its Lua thread.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Unique per isle; lets a blocking call detect that it runs on this isle's own thread.
    pub(crate) id: u64,
    pub(crate) interrupter: Arc<Interrupter>,
    /// Applied to requests that set no deadline of their own.
    pub(crate) default_timeout: Option<Duration>,
    closed: AtomicBool,
    alive: AtomicBool,
}

impl Shared {
    pub(crate) fn new(default_timeout: Option<Duration>) -> Self {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed) as u64,
            interrupter: Arc::new(Interrupter::new()),
            default_timeout,
            closed: AtomicBool::new(false),
            alive: AtomicBool::new(true),
        }
    }

    /// Whether the Lua thread is still serving requests.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Refuses new submissions from now on; what is queued still runs.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Closes the queue, marks the isle dead and resolves everything still queued with
    /// [`IsleError::Shutdown`]. Callers sending concurrently clean up after themselves.
    pub(crate) fn close_and_drain(&self, rx: &Receiver<Queued>) {
        self.close();
        self.alive.store(false, Ordering::Relaxed);
        // Pairs with the fence in `Handle::submit`.
        fence(Ordering::SeqCst);
        drain(rx);
    }
}

/// Resolves every queued job with [`IsleError::Shutdown`] (dropping a job does that).
fn drain(rx: &Receiver<Queued>) {
    while let Ok(job) = rx.try_recv() {
        drop(job);
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
    pub(crate) tx: Sender<Queued>,
    /// Lets a sender resolve its own job if the Lua thread died while it was sending.
    pub(crate) rx: Receiver<Queued>,
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    /// Queues `job`. On failure the job is dropped, which resolves its request.
    ///
    /// On the isle's own thread the queue is never waited for: only that thread drains it.
    pub(crate) fn submit(&self, job: Queued, when_full: WhenFull) -> Result<(), IsleError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(IsleError::Shutdown);
        }
        if when_full == WhenFull::Wait && !current::on_isle_thread(self.shared.id) {
            self.tx.send(job).map_err(|_| IsleError::Shutdown)?;
        } else {
            self.tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => IsleError::Full,
                TrySendError::Disconnected(_) => IsleError::Shutdown,
            })?;
        }
        // Pairs with the fence in `Shared::close_and_drain`: either the Lua thread's last drain
        // sees this job, or this load sees the isle dead and the job is drained here.
        fence(Ordering::SeqCst);
        if !self.shared.alive.load(Ordering::Relaxed) {
            drain(&self.rx);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_queue_refuses_jobs_but_keeps_queued_ones() {
        let shared = Arc::new(Shared::new(None));
        let (tx, rx) = crossbeam_channel::bounded::<Queued>(4);
        let handle = Handle { tx, rx, shared };
        let work = |_: &mut Vm| -> Result<u32, IsleError> { Ok(1) };
        let queued = Slot::new(handle.shared.interrupter.clone(), work, None);
        handle
            .submit(
                Queued::new(queued.clone(), CancelToken::new(), None),
                WhenFull::Wait,
            )
            .unwrap();
        handle.shared.close();
        let refused = Slot::new(handle.shared.interrupter.clone(), work, None);
        let err = handle
            .submit(
                Queued::new(refused.clone(), CancelToken::new(), None),
                WhenFull::Wait,
            )
            .unwrap_err();
        assert!(err.is_shutdown());
        assert!(matches!(refused.take(), Some(Err(IsleError::Shutdown))));
        assert!(!queued.is_ready());
        assert_eq!(handle.rx.len(), 1);
    }

    use std::sync::{Barrier, Mutex};
    use std::thread;

    use crate::slot::Slot;
    use crate::token::CancelToken;
    use crate::vm::Vm;

    #[test]
    fn closing_resolves_every_job_even_from_racing_senders() {
        for _ in 0..50 {
            let shared = Arc::new(Shared::new(None));
            let (tx, rx) = crossbeam_channel::bounded::<Queued>(4);
            let handle = Handle {
                tx,
                rx: rx.clone(),
                shared: shared.clone(),
            };
            let slots = Mutex::new(Vec::new());
            let barrier = Barrier::new(5);
            thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        barrier.wait();
                        for _ in 0..100 {
                            let work = |_: &mut Vm| -> Result<u32, IsleError> {
                                unreachable!("no Lua thread in this test")
                            };
                            let slot = Slot::new(shared.interrupter.clone(), work, None);
                            slots.lock().unwrap().push(slot.clone());
                            let job = Queued::new(slot, CancelToken::new(), None);
                            let _ = handle.submit(job, WhenFull::Wait);
                        }
                    });
                }
                barrier.wait();
                shared.close_and_drain(&rx);
            });
            // Jobs that were mid-send when the queue died were drained by their senders.
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
