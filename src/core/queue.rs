//! An isle's bounded queue: the jobs that travel through it ([`Queued`]), the state its handles,
//! its Lua thread and the watchdog share ([`Shared`]), submitting through it ([`Handle`]), and
//! how it is closed without stranding a job.
//!
//! The queue is a bounded crossbeam channel. Two flags describe its state: *closed* (no new
//! submissions; what is queued still runs) and *dead* (nothing queued will run any more). When
//! the Lua thread goes, it marks the isle dead and resolves everything queued with
//! [`IsleError::Shutdown`]. A caller sending at that very moment might slip a job in after that
//! last drain, so every successful send is followed by a fence and a look at the dead flag; a
//! sender that sees it drains the queue itself. The two fences make sure one of the two sides
//! sees the job, at the price of one fence per submission and no shared counter.

use std::convert::Infallible;
use std::fmt;
#[cfg(feature = "tokio")]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::core::slot::{Resolve, Slot};
use crate::core::token::CancelToken;
use crate::core::wait;
use crate::core::watchdog;
use crate::error::IsleError;
use crate::interrupt::{Interrupter, Stop, StopWatch};
use crate::lua_thread::worker::Worker;

/// A request as the Lua thread sees it: its slot, whatever the work and result types.
pub(crate) trait Job: Resolve + 'static {
    /// Runs the request (unless it was resolved while queued) and resolves it.
    fn run(self: Arc<Self>, worker: &mut Worker, token: CancelToken, deadline: Option<Instant>);

    /// Whether the request needs the Lua thread's async executor (a coroutine request).
    fn needs_executor(&self) -> bool {
        false
    }
}

/// What travels through the queue. Dropping it unrun resolves its request with
/// [`IsleError::Shutdown`], so a request can never be left unresolved.
pub(crate) struct Queued {
    /// `None` for a wake-up marker, and once the job has been handed to the Lua thread.
    job: Option<(Arc<dyn Job>, CancelToken)>,
    deadline: Option<Instant>,
}

impl Queued {
    pub(crate) fn new(job: Arc<dyn Job>, token: CancelToken, deadline: Option<Instant>) -> Self {
        Queued {
            job: Some((job, token)),
            deadline,
        }
    }

    /// A marker that only wakes the Lua thread up (to notice that the queue was closed).
    pub(crate) fn wake() -> Self {
        Queued {
            job: None,
            deadline: None,
        }
    }

    pub(crate) fn run(mut self, worker: &mut Worker) {
        if let Some((job, token)) = self.job.take() {
            job.run(worker, token, self.deadline);
        }
    }

    /// Resolves the job with `err` instead of running it.
    #[cfg(feature = "tokio")]
    pub(crate) fn fail(mut self, err: IsleError) {
        if let Some((job, _)) = self.job.take() {
            job.resolve(err);
        }
    }

    pub(crate) fn needs_executor(&self) -> bool {
        self.job
            .as_ref()
            .is_some_and(|(job, _)| job.needs_executor())
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some((job, _)) = self.job.take() {
            job.resolve(IsleError::Shutdown);
        }
    }
}

/// State shared by every handle of one isle, its Lua thread and the watchdog.
pub(crate) struct Shared {
    /// Unique per isle; lets a blocking call detect that it runs on this isle's own thread.
    pub(crate) id: u64,
    pub(crate) interrupter: Arc<Interrupter>,
    /// Applied to requests that set no deadline of their own.
    pub(crate) default_timeout: Option<Duration>,
    /// How long an interrupted request may take to stop before the isle gives up on it.
    pub(crate) grace: Duration,
    /// A receiver for whoever must resolve queued jobs when the Lua thread cannot.
    pub(crate) rx: Receiver<Queued>,
    closed: AtomicBool,
    alive: AtomicBool,
    /// Set when the isle gave up on a request that would not stop.
    abandoned: AtomicBool,
    /// Deadline (watchdog tick) of the running request; 0 when it has none.
    deadline: AtomicU64,
    /// Whether the watchdog knows this isle.
    watched: AtomicBool,
    /// Set once the isle is closing (see [`watch_close`](Self::watch_close)).
    close_watched: AtomicBool,
    /// This very isle, for registering with the watchdog from a `&self`.
    me: Weak<Shared>,
    /// The running request (or `init`'s readiness), so that giving up can resolve it.
    current: Mutex<Option<Arc<dyn Resolve>>>,
    /// Coroutine requests in progress (running or suspended on the Lua thread's executor), so
    /// that giving up can resolve them too.
    #[cfg(feature = "tokio")]
    in_progress: Mutex<slab::Slab<Arc<dyn Resolve>>>,
    /// The watchdog's re-assertion of a requested stop (touched by the watchdog only).
    reassert: Mutex<Reassert>,
    /// Test-only: turns the re-assertion off, to show that each race window is closed on its
    /// own.
    #[cfg(all(test, unix, not(feature = "luau")))]
    pub(crate) reassert_disabled: AtomicBool,
    /// Resolved when the Lua thread ends (or is given up on, with `Abandoned`).
    pub(crate) exited: Arc<Slot<()>>,
    /// Cancelled when the isle is killed: wakes suspended coroutine requests.
    pub(crate) killed: CancelToken,
    /// Dropped when the isle is killed, which disconnects [`kill_alarm`](Self::kill_alarm).
    kill_sender: Mutex<Option<Sender<Infallible>>>,
    /// Ready for good once the isle is killed: wakes a Lua thread blocked waiting for a job.
    /// (A message in the queue could not: the kill drains the queue, and so does any sender
    /// that finds the isle dead, so a wake-up message can be taken before the thread sees it.)
    pub(crate) kill_alarm: Receiver<Infallible>,
    /// Notified by the Lua thread each time it takes a job: room for async senders.
    #[cfg(feature = "tokio")]
    pub(crate) room: Wakeup,
    /// Notified by senders each time they queue a job, for a Lua thread serving coroutines.
    #[cfg(feature = "tokio")]
    pub(crate) arrived: Wakeup,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("id", &self.id)
            .field("alive", &self.is_alive())
            .field("abandoned", &self.is_abandoned())
            .finish_non_exhaustive()
    }
}

/// A new id for an isle or a pool (one id space: a pool member's thread is "on" both).
pub(crate) fn next_isle_id() -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl Shared {
    pub(crate) fn new(
        default_timeout: Option<Duration>,
        grace: Duration,
        rx: Receiver<Queued>,
    ) -> Arc<Self> {
        let (kill_sender, kill_alarm) = crossbeam_channel::bounded(0);
        Arc::new_cyclic(|me: &Weak<Shared>| {
            let interrupter = Arc::new(Interrupter::new());
            interrupter.set_watch(me.clone());
            Shared {
                id: next_isle_id(),
                interrupter: interrupter.clone(),
                default_timeout,
                grace,
                rx,
                closed: AtomicBool::new(false),
                alive: AtomicBool::new(true),
                abandoned: AtomicBool::new(false),
                deadline: AtomicU64::new(0),
                watched: AtomicBool::new(false),
                close_watched: AtomicBool::new(false),
                me: me.clone(),
                current: Mutex::new(None),
                #[cfg(feature = "tokio")]
                in_progress: Mutex::new(slab::Slab::new()),
                reassert: Mutex::new(Reassert::default()),
                #[cfg(all(test, unix, not(feature = "luau")))]
                reassert_disabled: AtomicBool::new(false),
                exited: Slot::new((), None),
                killed: CancelToken::new(),
                kill_sender: Mutex::new(Some(kill_sender)),
                kill_alarm,
                #[cfg(feature = "tokio")]
                room: Wakeup::default(),
                #[cfg(feature = "tokio")]
                arrived: Wakeup::default(),
            }
        })
    }

    /// Whether the Lua thread is still serving requests.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Whether the isle gave up on a request that would not stop.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// The error for a submission the queue refuses.
    fn refusal(&self) -> IsleError {
        if self.is_abandoned() {
            IsleError::Abandoned
        } else {
            IsleError::Shutdown
        }
    }

    /// Whether new submissions are refused.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stops the running request and every later one (suspended coroutine requests included),
    /// and cancels the running request's token, so that a host function polling it stops too.
    pub(crate) fn kill(&self) {
        self.interrupter.kill();
        let running = self.lock_current().clone();
        if let Some(job) = running {
            job.cancel();
        }
        self.killed.cancel();
        drop(
            self.kill_sender
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        #[cfg(feature = "tokio")]
        self.arrived.notify(usize::MAX);
    }

    /// Refuses new submissions from now on; what is queued still runs.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.watch_close();
        // A script waiting on a host channel learns that the isle is closing.
        self.interrupter.close();
        // Async submitters waiting for room must learn that none will come.
        #[cfg(feature = "tokio")]
        self.room.notify(usize::MAX);
    }

    /// Closes the queue, marks the isle dead and resolves everything still queued with
    /// [`IsleError::Shutdown`]. Callers sending concurrently clean up after themselves.
    pub(crate) fn close_and_drain(&self) {
        self.close();
        self.alive.store(false, Ordering::Relaxed);
        // Pairs with the fence in `Handle::submit`.
        fence(Ordering::SeqCst);
        drain(&self.rx);
    }

    /// Publishes the request starting now and its deadline.
    pub(crate) fn request_started(
        self: &Arc<Self>,
        job: Arc<dyn Resolve>,
        deadline: Option<Instant>,
    ) {
        let mut current = self.lock_current();
        *current = Some(job);
        // A kill that looked for the running request before it was published here missed its
        // token: cancel it now. (Either the kill sees the request under the lock, or this
        // load sees the kill.)
        if self.interrupter.is_killed() {
            let job = current.clone();
            drop(current);
            if let Some(job) = job {
                job.cancel();
            }
        } else {
            drop(current);
        }
        if let Some(deadline) = deadline {
            if !self.watched.swap(true, Ordering::AcqRel) {
                watchdog::register(self);
            }
            let tick = watchdog::ticks(deadline);
            self.deadline.store(tick, Ordering::SeqCst);
            watchdog::deadline_published(tick);
        }
    }

    /// Withdraws what [`request_started`](Self::request_started) published.
    pub(crate) fn request_ended(&self) {
        self.deadline.store(0, Ordering::SeqCst);
        let job = self.lock_current().take();
        drop(job);
    }

    /// Publishes the VM's close, about to start on the Lua thread, as the running request `gen`
    /// with `deadline`: Lua runs the scripts' finalizers as it closes, with hooks off, so no
    /// interrupt reaches one that never returns, and the watchdog gives up on the thread once
    /// the deadline plus the grace period has passed (see [`give_up`](Self::give_up)), as it
    /// does for a request. The interrupt machinery is gone by then: nothing is delivered.
    /// `waiting`, if given, is what a give-up resolves (the `spawn` whose `init` failed).
    pub(crate) fn closing_started(
        self: &Arc<Self>,
        gen: u64,
        deadline: Instant,
        waiting: Option<Arc<dyn Resolve>>,
    ) {
        if waiting.is_some() {
            *self.lock_current() = waiting;
        }
        // As for a request: the watchdog must see the generation this deadline belongs to.
        self.interrupter.begin_unarmed(gen);
        if !self.watched.swap(true, Ordering::AcqRel) {
            watchdog::register(self);
        }
        let tick = watchdog::ticks(deadline);
        self.deadline.store(tick, Ordering::SeqCst);
        // Nothing can be delivered at the deadline: the watchdog need only wake by the hard
        // stop, and it plans to since the isle began closing (see `watch_close`), so the
        // close does not pay for waking it.
        watchdog::deadline_published(tick.saturating_add(self.grace_ticks()));
    }

    /// The grace period in watchdog ticks.
    fn grace_ticks(&self) -> u64 {
        u64::try_from(self.grace.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The isle is closing (closed, or its last handle gone): its thread will close the VM
    /// once it is done with what it accepted, under the default timeout if there is one (see
    /// [`closing_started`](Self::closing_started)). Until the thread ends, the watchdog wakes
    /// at least once per default timeout plus grace period, so that it learns of the close in
    /// time to give up on it without the Lua thread waking it: that costs a wake-up of the
    /// watchdog here, on the thread that closes the isle, instead.
    pub(crate) fn watch_close(&self) {
        let Some(every) = self.close_watch_period() else {
            return;
        };
        if self.close_watched.swap(true, Ordering::AcqRel) {
            return;
        }
        if !self.watched.swap(true, Ordering::AcqRel) {
            if let Some(me) = self.me.upgrade() {
                watchdog::register(&me);
            }
        }
        watchdog::deadline_published(watchdog::ticks(Instant::now()).saturating_add(every));
    }

    /// How often the watchdog looks at a closing isle: the default timeout plus the grace
    /// period, in ticks; `None` without a default timeout (closing is not bounded then).
    fn close_watch_period(&self) -> Option<u64> {
        let timeout = u64::try_from(self.default_timeout?.as_nanos()).unwrap_or(u64::MAX);
        Some(timeout.saturating_add(self.grace_ticks()))
    }

    /// The VM is closed: withdraws what [`closing_started`](Self::closing_started) published.
    /// A give-up either happened before (under the lock [`request_ended`] takes, which this
    /// thread then sees) or finds the close no longer running.
    ///
    /// [`request_ended`]: Self::request_ended
    pub(crate) fn closing_ended(&self) {
        self.interrupter.end_unarmed();
        self.request_ended();
    }

    fn lock_current(&self) -> MutexGuard<'_, Option<Arc<dyn Resolve>>> {
        // Only set and cleared, never left half-updated: a poisoned lock is taken over.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a coroutine request in progress until [`coroutine_ended`](Self::coroutine_ended).
    #[cfg(feature = "tokio")]
    pub(crate) fn coroutine_started(&self, job: Arc<dyn Resolve>) -> usize {
        self.lock_in_progress().insert(job)
    }

    /// Forgets the coroutine request recorded under `key`.
    #[cfg(feature = "tokio")]
    pub(crate) fn coroutine_ended(&self, key: usize) {
        let job = self.lock_in_progress().try_remove(key);
        drop(job);
    }

    #[cfg(feature = "tokio")]
    fn lock_in_progress(&self) -> MutexGuard<'_, slab::Slab<Arc<dyn Resolve>>> {
        // Single slab operations under the lock: a poisoned lock is taken over.
        self.in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by the watchdog at tick `now`: enforces the running request's deadline, keeps a
    /// requested stop asserted and escalates one that is not obeyed. Returns the tick at which
    /// to look again, if any.
    ///
    /// - At the deadline the request's generation expires, which interrupts it.
    /// - While a stop (cancel, deadline, kill) is pending for the running request, the
    ///   interrupt is delivered again with backoff ([`REASSERT_FIRST`] doubling up to
    ///   [`REASSERT_MAX`], held back while arming takes long: see
    ///   [`redelivery_wait`](crate::interrupt::Interrupter::redelivery_wait)): an arm lost to a
    ///   race costs a short delay, never the stop.
    /// - At the deadline plus the grace period, or a grace period after a cancel or kill, if the
    ///   same request still runs, the isle gives up on it (see [`give_up`](Self::give_up)).
    ///
    /// While the isle is closing with a default timeout, it also asks to be looked at again
    /// within that timeout plus the grace period (see [`watch_close`](Self::watch_close)).
    pub(crate) fn check(self: &Arc<Self>, now: u64) -> Option<u64> {
        let running = self.check_running(now);
        let closing = match self.close_watched.load(Ordering::Acquire)
            && !self.is_abandoned()
            && !self.exited.is_ready()
        {
            true => self
                .close_watch_period()
                .map(|every| now.saturating_add(every))
                .filter(|&at| at != u64::MAX),
            false => None,
        };
        match (running, closing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// [`check`](Self::check) for the request running now (or the VM's close).
    fn check_running(self: &Arc<Self>, now: u64) -> Option<u64> {
        let gen = self.interrupter.running_generation();
        if gen == 0 || self.is_abandoned() {
            return None;
        }
        let grace = self.grace_ticks();
        let mut next = u64::MAX;
        let deadline = self.deadline.load(Ordering::SeqCst);
        // The deadline belongs to `gen` only if `gen` still runs after it was read.
        if deadline != 0 && self.interrupter.running_generation() == gen {
            if now < deadline {
                next = deadline;
            } else {
                self.interrupter.expire(gen);
                let hard_stop = deadline.saturating_add(grace);
                if now >= hard_stop {
                    self.give_up(Some(gen), IsleError::Timeout, Where::OffThisThread);
                    return None;
                }
                next = hard_stop;
            }
        }
        if let Some((stop, since)) = self.interrupter.stop_since() {
            if self.interrupter.running_generation() != gen {
                return None;
            }
            if stop != Stop::Timeout && since != 0 {
                let hard_stop = since.saturating_add(grace);
                if now >= hard_stop {
                    let err = match stop {
                        Stop::Cancelled => IsleError::Cancelled,
                        _ => IsleError::Shutdown,
                    };
                    self.give_up(Some(gen), err, Where::OffThisThread);
                    return None;
                }
                next = next.min(hard_stop);
            }
            next = next.min(self.reassert_stop(gen, now, since));
        }
        (next != u64::MAX).then_some(next)
    }

    /// Delivers the pending interrupt of request `gen` again if it is time; returns when to
    /// do so next.
    fn reassert_stop(&self, gen: u64, now: u64, since: u64) -> u64 {
        let mut reassert = self.reassert.lock().unwrap_or_else(PoisonError::into_inner);
        if reassert.gen != gen {
            // The first delivery was the request's own; the next one is due `REASSERT_FIRST`
            // after it.
            *reassert = Reassert {
                gen,
                interval: REASSERT_FIRST,
                at: since.saturating_add(REASSERT_FIRST),
            };
        }
        if now >= reassert.at {
            // Arming takes long (a deep Lua 5.4 call stack): the Lua thread first gets on, for
            // a quarter of the grace period at most, so that an arm lost meanwhile is made
            // good before the isle gives up.
            let wait = self.interrupter.redelivery_wait(self.grace / 4);
            if !wait.is_zero() {
                let wait = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
                reassert.at = now.saturating_add(wait);
                return reassert.at;
            }
            #[cfg(all(test, unix, not(feature = "luau")))]
            let disabled = self.reassert_disabled.load(Ordering::SeqCst);
            #[cfg(not(all(test, unix, not(feature = "luau"))))]
            let disabled = false;
            if !disabled {
                self.interrupter.reassert(gen);
            }
            reassert.at = now.saturating_add(reassert.interval);
            reassert.interval = (reassert.interval * 2).min(REASSERT_MAX);
        }
        reassert.at
    }

    /// Gives up on the Lua thread, stuck in request `gen` (any request if `None`) although it
    /// was interrupted: that request resolves with `err`, coroutine requests in progress and
    /// everything queued with [`IsleError::Shutdown`], the isle refuses new requests
    /// ([`IsleError::Abandoned`]), and the thread is left to end on its own: it exits as soon
    /// as the stuck code returns, if ever.
    ///
    /// Resolving runs user code (wakers, the `Drop` of unrun work): [`Where::OffThisThread`]
    /// does that on a thread of its own, so that the watchdog never waits for it.
    pub(crate) fn give_up(self: &Arc<Self>, gen: Option<u64>, err: IsleError, at: Where) {
        let job = {
            let current = self.lock_current();
            let running = self.interrupter.running_generation();
            if gen.is_some_and(|gen| gen != running) || self.is_abandoned() {
                return;
            }
            self.abandoned.store(true, Ordering::Release);
            current.clone()
        };
        // Cheap and user-code free: from now on nothing new is accepted, and the isle counts
        // as dead (senders that see it drain the queue themselves, as does `resolve` below).
        self.closed.store(true, Ordering::Release);
        self.alive.store(false, Ordering::Release);
        let shared = self.clone();
        let resolve = move || {
            #[cfg(feature = "tracing")]
            crate::core::trace::hard_stop(shared.id, &err);
            // First the request given up on, so that it reports `err` whatever the stuck code
            // does once it is killed.
            if let Some(job) = &job {
                job.resolve(err);
            }
            shared.kill();
            shared.close_and_drain();
            #[cfg(feature = "tokio")]
            {
                let in_progress = std::mem::take(&mut *shared.lock_in_progress());
                for (_, job) in in_progress {
                    job.resolve(IsleError::Shutdown);
                }
            }
            shared.exited.complete(Err(IsleError::Abandoned));
        };
        match at {
            Where::Here => resolve(),
            Where::OffThisThread => {
                // Shared with the thread, so that the work can be taken back if no thread
                // starts.
                let resolve = Arc::new(Mutex::new(Some(resolve)));
                let run = {
                    let resolve = resolve.clone();
                    move || run_once(&resolve)
                };
                let spawned = std::thread::Builder::new()
                    .name("mlua-isle-abandon".to_owned())
                    .spawn(run);
                if spawned.is_err() {
                    run_once(&resolve);
                }
            }
        }
    }
}

/// Takes `f` out of `slot` and runs it, unless it was taken already.
fn run_once(slot: &Mutex<Option<impl FnOnce()>>) {
    let f = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(f) = f {
        f();
    }
}

/// Where [`Shared::give_up`] resolves what it gives up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Where {
    /// On the calling thread (a caller blocked in a shutdown).
    Here,
    /// On a thread of its own (the watchdog must not run user code).
    OffThisThread,
}

/// The first delay before a pending stop is delivered again.
pub(crate) const REASSERT_FIRST: u64 = 1_000_000;
/// The longest delay between two deliveries of a pending stop.
const REASSERT_MAX: u64 = 16_000_000;

/// The watchdog's record of how it re-asserts the stop of one request.
#[derive(Debug, Default)]
struct Reassert {
    /// The generation being stopped; 0 for none yet.
    gen: u64,
    /// Nanoseconds until the next delivery after the coming one.
    interval: u64,
    /// The tick of the coming delivery.
    at: u64,
}

impl StopWatch for Shared {
    fn stop_requested(&self, tick: u64) {
        if !self.watched.swap(true, Ordering::AcqRel) {
            if let Some(me) = self.me.upgrade() {
                watchdog::register(&me);
            }
        }
        watchdog::stop_published(tick);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if *self.watched.get_mut() {
            watchdog::kick();
        }
    }
}

/// Resolves every queued job with [`IsleError::Shutdown`] (dropping a job does that).
fn drain(rx: &Receiver<Queued>) {
    while let Ok(job) = rx.try_recv() {
        drop(job);
    }
}

/// An event that costs one fence and one load to notify while nobody listens (the hot paths
/// notify on every request, async waiters are rare).
#[cfg(feature = "tokio")]
#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    event: event_listener::Event,
    listeners: AtomicUsize,
}

#[cfg(feature = "tokio")]
impl Wakeup {
    /// Starts listening. Check the awaited condition again after this call, before awaiting:
    /// a change made before it may not be notified.
    pub(crate) fn listen(&self) -> Listening<'_> {
        self.listeners.fetch_add(1, Ordering::SeqCst);
        Listening {
            wakeup: self,
            listener: self.event.listen(),
        }
    }

    /// Wakes up to `n` more listeners (beyond those notified and not yet woken: each change
    /// wakes someone). Call it after changing the awaited condition.
    pub(crate) fn notify(&self, n: usize) {
        use event_listener::IntoNotification;
        // Pairs with the increment in `listen`: either the listener sees the change when it
        // checks again, or this load sees the listener.
        fence(Ordering::SeqCst);
        if self.listeners.load(Ordering::SeqCst) > 0 {
            self.event.notify(n.additional());
        }
    }
}

/// A registered listener of a [`Wakeup`]; a future.
#[cfg(feature = "tokio")]
pub(crate) struct Listening<'a> {
    wakeup: &'a Wakeup,
    listener: event_listener::EventListener,
}

#[cfg(feature = "tokio")]
impl std::future::Future for Listening<'_> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.listener).poll(cx)
    }
}

#[cfg(feature = "tokio")]
impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.wakeup.listeners.fetch_sub(1, Ordering::SeqCst);
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
#[derive(Debug)]
pub(crate) struct Handle {
    // Field order is drop order: the sender goes first, then the Lua thread is told.
    pub(crate) tx: Sender<Queued>,
    pub(crate) shared: Arc<Shared>,
    #[cfg(feature = "tokio")]
    _disconnect: Disconnect,
}

/// Tells a Lua thread waiting on `arrived` to look at the queue once the handle's sender is
/// gone (the queue may now be disconnected).
#[cfg(feature = "tokio")]
#[derive(Debug)]
struct Disconnect(Arc<Shared>);

#[cfg(feature = "tokio")]
impl Drop for Disconnect {
    fn drop(&mut self) {
        self.0.arrived.notify(usize::MAX);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The last handle: once the queue is empty the Lua thread closes the VM.
        self.shared.watch_close();
    }
}

impl Handle {
    pub(crate) fn new(tx: Sender<Queued>, shared: Arc<Shared>) -> Self {
        Handle {
            tx,
            #[cfg(feature = "tokio")]
            _disconnect: Disconnect(shared.clone()),
            shared,
        }
    }
}

impl Handle {
    /// Queues `job`. On failure the job is dropped, which resolves its request.
    ///
    /// On the isle's own thread the queue is never waited for: only that thread drains it.
    pub(crate) fn submit(&self, job: Queued, when_full: WhenFull) -> Result<(), IsleError> {
        let shared = &*self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(shared.refusal());
        }
        if when_full == WhenFull::Wait && !wait::on_isle_thread(shared.id) {
            self.tx.send(job).map_err(|_| shared.refusal())?;
        } else {
            self.tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => IsleError::Full,
                TrySendError::Disconnected(_) => shared.refusal(),
            })?;
        }
        self.sent();
        Ok(())
    }

    /// After a successful send.
    fn sent(&self) {
        let shared = &*self.shared;
        // Pairs with the fence in `Shared::close_and_drain`: either the Lua thread's last drain
        // sees this job, or this load sees the isle dead and the job is drained here.
        fence(Ordering::SeqCst);
        if !shared.alive.load(Ordering::Relaxed) {
            drain(&shared.rx);
        }
        // A Lua thread that also serves coroutines waits for jobs on this event.
        #[cfg(feature = "tokio")]
        shared.arrived.notify(1);
    }

    /// Queues `job` without blocking the caller's thread: waits asynchronously for room.
    ///
    /// Cancel safe: dropped while waiting, it drops the job, which resolves its request.
    #[cfg(feature = "tokio")]
    pub(crate) async fn submit_async(
        &self,
        mut job: Queued,
        when_full: WhenFull,
    ) -> Result<(), IsleError> {
        let shared = &*self.shared;
        loop {
            if shared.closed.load(Ordering::Acquire) {
                return Err(shared.refusal());
            }
            job = match self.tx.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(shared.refusal()),
                // Only the isle's own thread drains the queue: never wait for room there
                // (except in a coroutine request, which yields to that thread's executor).
                Err(TrySendError::Full(_))
                    if when_full == WhenFull::Fail || wait::would_block_isle(shared.id) =>
                {
                    return Err(IsleError::Full)
                }
                Err(TrySendError::Full(job)) => job,
            };
            // Listen first, then look again, so that room made (or a close) in between is not
            // missed.
            let room = shared.room.listen();
            if shared.closed.load(Ordering::Acquire) {
                return Err(shared.refusal());
            }
            job = match self.tx.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(shared.refusal()),
                Err(TrySendError::Full(job)) => job,
            };
            room.await;
        }
        self.sent();
        Ok(())
    }

    /// Queues `job` if the isle is open and its queue has room right now; never blocks, so a
    /// `Drop` may call it from any thread. Returns whether the job was queued; otherwise it is
    /// dropped, which resolves it.
    pub(crate) fn offer(&self, job: Queued) -> bool {
        if self.shared.is_closed() || self.tx.try_send(job).is_err() {
            return false;
        }
        self.sent();
        true
    }

    /// Wakes an idle Lua thread so that it looks at its queues again (best effort: a full
    /// queue means the thread is busy and will look by itself).
    pub(crate) fn wake(&self) {
        if self.tx.try_send(Queued::wake()).is_ok() {
            self.sent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(capacity: usize) -> Handle {
        let (tx, rx) = crossbeam_channel::bounded::<Queued>(capacity);
        let shared = Shared::new(None, Duration::ZERO, rx);
        Handle::new(tx, shared)
    }

    #[test]
    fn a_closed_queue_refuses_jobs_but_keeps_queued_ones() {
        let handle = handle(4);
        let work = |_: &mut Vm| -> Result<u32, IsleError> { Ok(1) };
        let queued = Slot::new(work, None);
        handle
            .submit(
                Queued::new(queued.clone(), CancelToken::new(), None),
                WhenFull::Wait,
            )
            .unwrap();
        handle.shared.close();
        let refused = Slot::new(work, None);
        let err = handle
            .submit(
                Queued::new(refused.clone(), CancelToken::new(), None),
                WhenFull::Wait,
            )
            .unwrap_err();
        assert!(err.is_shutdown());
        assert!(matches!(refused.take(), Some(Err(IsleError::Shutdown))));
        assert!(!queued.is_ready());
        assert_eq!(handle.shared.rx.len(), 1);
    }

    use std::sync::{Barrier, Mutex};
    use std::thread;

    use crate::lua_thread::vm::Vm;

    #[test]
    fn closing_resolves_every_job_even_from_racing_senders() {
        for _ in 0..50 {
            let handle = handle(4);
            let shared = handle.shared.clone();
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
                            let slot = Slot::new(work, None);
                            slots.lock().unwrap().push(slot.clone());
                            let job = Queued::new(slot, CancelToken::new(), None);
                            let _ = handle.submit(job, WhenFull::Wait);
                        }
                    });
                }
                barrier.wait();
                shared.close_and_drain();
            });
            // Jobs that were mid-send when the queue died were drained by their senders.
            assert!(!shared.is_alive());
            let slots = slots.into_inner().unwrap();
            assert_eq!(slots.len(), 400);
            for slot in slots {
                assert!(matches!(slot.take(), Some(Err(IsleError::Shutdown))));
            }
            assert!(shared.rx.is_empty());
        }
    }

    #[test]
    fn isle_ids_are_unique() {
        assert_ne!(handle(1).shared.id, handle(1).shared.id);
    }
}
