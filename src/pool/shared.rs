//! State shared by a pool's handle, its guards, its members' Lua threads and its supervisor:
//! the pool's queue, its members, how to make a new one.

use std::fmt;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mlua::Lua;

use super::member::{
    self, ExitWatch, Member, MemberCell, BUSY, CHECKED_OUT, IDLE, RETIRING, SPARE,
};
use super::recycle::{Cause, Recycle};
use super::stats::{Counters, PoolStats};
use super::supervisor::{self, Event};
use crate::core::queue::{Queued, Shared, WhenFull};
use crate::core::slot::{Completer, Slot};
use crate::core::wait;
use crate::error::IsleError;
use crate::handle::builder::{IsleBuilder, Launched};
use crate::handle::isle::Isle;
use crate::lua_thread::feed::{Feed, FeedSignals};

/// A function every member runs: `init`, `on_return`.
pub(crate) type MemberFn = Arc<dyn Fn(&Lua) -> mlua::Result<()> + Send + Sync>;
/// A VM factory every member calls.
pub(crate) type Factory = Arc<dyn Fn() -> mlua::Result<Lua> + Send + Sync>;

/// How to make a member.
pub(crate) struct Template {
    /// The isle settings (never with a one-shot factory).
    pub(crate) isle: Mutex<IsleBuilder>,
    pub(crate) factory: Option<Factory>,
    pub(crate) init: MemberFn,
    pub(crate) on_return: Option<MemberFn>,
    /// Thread names are `{name}-{index}`.
    pub(crate) name: String,
}

pub(crate) struct PoolCore {
    /// Shares the isles' id space: a member's thread is "on" the pool.
    pub(crate) id: u64,
    feed_tx: Sender<Queued>,
    pub(crate) feed_rx: Receiver<Queued>,
    /// No new submissions.
    closed: AtomicBool,
    /// No member will take anything from the queue any more.
    dead: AtomicBool,
    /// Members by position, serving ones first, then spares; `None` while a replacement is
    /// being made.
    members: Mutex<Vec<Option<Arc<Member>>>>,
    /// How many positions serve (the others hold spares).
    active: usize,
    pub(crate) template: Template,
    pub(crate) recycle: Recycle,
    pub(crate) counters: Counters,
    events: Sender<Event>,
    pub(crate) default_timeout: Option<Duration>,
    next_serial: AtomicU64,
    /// The queue's events, for async senders and members serving coroutines.
    pub(crate) signals: Arc<FeedSignals>,
    /// Whether each request must run on a VM no request ran on.
    pub(crate) fresh_vm: bool,
    /// Replaced members whose threads still run (what their own queues held, coroutine
    /// requests in progress), by serial: the pool's shutdown waits for them too.
    retired: Mutex<Vec<(u64, Arc<Shared>)>>,
}

impl fmt::Debug for PoolCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCore")
            .field("id", &self.id)
            .field("queued", &self.feed_rx.len())
            .finish_non_exhaustive()
    }
}

/// What a pool is made from.
pub(crate) struct Parts {
    pub(crate) template: Template,
    pub(crate) recycle: Recycle,
    /// Serving members.
    pub(crate) size: usize,
    /// Members kept started, not serving, to take over from one that goes.
    pub(crate) spares: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) default_timeout: Option<Duration>,
    /// Whether each request must run on a VM no request ran on ([`Isolation::FreshVm`]).
    ///
    /// [`Isolation::FreshVm`]: crate::Isolation::FreshVm
    pub(crate) fresh_vm: bool,
}

/// Members launched, each waiting for its `init`.
pub(crate) type Launching = Vec<(Arc<MemberCell>, Launched)>;

impl PoolCore {
    /// Counts member `index` as taken out of service for `cause`.
    pub(crate) fn recycled(&self, cause: Cause, #[allow(unused_variables)] index: usize) {
        self.counters.recycled(cause);
        #[cfg(feature = "tracing")]
        tracing::debug!(
            target: "mlua_isle",
            pool = self.id,
            member = index,
            cause = cause.name(),
            "pool member recycled"
        );
    }

    /// A pool with no member yet, and the receiver of its supervisor's events.
    pub(crate) fn create(parts: Parts) -> (Arc<Self>, Receiver<Event>) {
        let Parts {
            template,
            recycle,
            size,
            spares,
            queue_capacity,
            default_timeout,
            fresh_vm,
        } = parts;
        let (events_tx, events) = crossbeam_channel::unbounded();
        let (feed_tx, feed_rx) = crossbeam_channel::bounded(queue_capacity);
        let core = PoolCore {
            id: crate::core::queue::next_isle_id(),
            feed_tx,
            feed_rx,
            closed: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            members: Mutex::new(vec![None; size + spares]),
            active: size,
            template,
            recycle,
            counters: Counters::default(),
            default_timeout,
            next_serial: AtomicU64::new(1),
            signals: Arc::default(),
            events: events_tx,
            fresh_vm,
            retired: Mutex::default(),
        };
        (Arc::new(core), events)
    }

    /// Starts every member's thread; on failure, those started so far and the error.
    pub(crate) fn launch_all(self: &Arc<Self>) -> Result<Launching, (Launching, IsleError)> {
        let size = self.positions();
        let mut launched = Vec::with_capacity(size);
        for index in 0..size {
            match self.launch(index) {
                Ok(started) => launched.push(started),
                Err(err) => return Err((launched, err)),
            }
        }
        Ok(launched)
    }

    /// Puts the first members in service and starts the supervisor, unless a member failed
    /// to start (`failed`): then the others go again and the error is returned.
    pub(crate) fn start(
        self: &Arc<Self>,
        members: Vec<Arc<Member>>,
        failed: Option<IsleError>,
        events: Receiver<Event>,
    ) -> Result<SupervisorThread, IsleError> {
        if let Some(err) = failed {
            self.close();
            drop(members);
            return Err(err);
        }
        for member in &members {
            self.install(member);
        }
        let pool = Arc::downgrade(self);
        let sender = self.events.clone();
        let exited = Slot::new((), None);
        let done = Completer::new(exited.clone());
        let thread = thread::Builder::new()
            .name(format!("{}-supervisor", self.template.name))
            .spawn(move || {
                // Resolved when the thread ends, however it ends.
                let _done = done;
                supervisor::run(pool, events, sender);
            })
            .map_err(|err| {
                self.release();
                IsleError::Spawn(err)
            })?;
        Ok(SupervisorThread { thread, exited })
    }

    /// Every position, empty while a replacement is being started.
    pub(crate) fn members_or_vacancies(&self) -> Vec<Option<Arc<Member>>> {
        self.members().clone()
    }

    /// Closing: a member retired by the policy but still in its place serves again, so that
    /// what is queued runs (the policy retires no one once the pool is closed).
    pub(crate) fn unretire(&self) {
        for member in self.snapshot() {
            let state = member.cell.state();
            let idle = (state == RETIRING || state == SPARE)
                && member.isle.is_alive()
                && member.cell.transition(state, IDLE);
            if idle {
                member.isle.wake();
            }
        }
    }

    /// Locks the members; only `Option` swaps happen under the lock, so a poisoned lock is
    /// taken over.
    pub(crate) fn members(&self) -> MutexGuard<'_, Vec<Option<Arc<Member>>>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live members, for a moment.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Member>> {
        self.members().iter().flatten().cloned().collect()
    }

    /// Tells the supervisor.
    pub(crate) fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Whether no member takes anything from the queue any more (shut down past its deadline,
    /// or never started).
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Async senders waiting for room must learn that none will come.
        #[cfg(feature = "tokio")]
        self.signals.room.notify(usize::MAX);
    }

    /// Marks the queue dead (no member takes anything any more) and resolves what it holds
    /// with [`IsleError::Shutdown`]; senders racing with this clean up after themselves.
    pub(crate) fn close_and_drain(&self) {
        self.close();
        self.dead.store(true, Ordering::SeqCst);
        // Pairs with the fence in `submit`.
        fence(Ordering::SeqCst);
        self.drain();
    }

    /// Resolves every queued request with [`IsleError::Shutdown`] (dropping a job does that).
    pub(crate) fn drain(&self) {
        while let Ok(job) = self.feed_rx.try_recv() {
            drop(job);
        }
    }

    /// Queues `job` for whichever member is free first. On failure the job is dropped, which
    /// resolves its request.
    pub(crate) fn submit(&self, job: Queued, when_full: WhenFull) -> Result<(), IsleError> {
        if self.is_closed() {
            return Err(IsleError::Shutdown);
        }
        // A member's own thread never waits for room: only members make room.
        if when_full == WhenFull::Wait && !wait::on_isle_thread(self.id) {
            self.feed_tx.send(job).map_err(|_| IsleError::Shutdown)?;
        } else {
            self.feed_tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => IsleError::Full,
                TrySendError::Disconnected(_) => IsleError::Shutdown,
            })?;
        }
        self.sent();
        Ok(())
    }

    /// After a successful send.
    fn sent(&self) {
        // Pairs with the fence in `close_and_drain`: either the last drain sees the job, or
        // this load sees the queue dead.
        fence(Ordering::SeqCst);
        if self.dead.load(Ordering::Relaxed) {
            self.drain();
        }
        #[cfg(feature = "tokio")]
        self.signals.arrived.notify(1);
    }

    /// Queues `job` for whichever member is free first, waiting asynchronously for room
    /// (unless `when_full` says fail). Cancel safe: dropped while waiting, it drops the job,
    /// which resolves its request.
    #[cfg(feature = "tokio")]
    pub(crate) async fn submit_async(
        &self,
        mut job: Queued,
        when_full: WhenFull,
    ) -> Result<(), IsleError> {
        // A coroutine request may run alongside others on its member, which the policy does
        // not count: no fresh VM per request for those.
        if self.fresh_vm && job.needs_executor() {
            return Err(IsleError::Config(
                "a pool with a fresh VM per request does not run coroutine requests",
            ));
        }
        loop {
            if self.is_closed() {
                return Err(IsleError::Shutdown);
            }
            job = match self.feed_tx.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(IsleError::Shutdown),
                // Only members make room: a member's own thread never waits for it (except in
                // a coroutine request, which yields to that thread's executor).
                Err(TrySendError::Full(_))
                    if when_full == WhenFull::Fail || wait::would_block_isle(self.id) =>
                {
                    return Err(IsleError::Full)
                }
                Err(TrySendError::Full(job)) => job,
            };
            // Listen first, then look again, so that room made (or a close) in between is not
            // missed.
            let room = self.signals.room.listen();
            if self.is_closed() {
                return Err(IsleError::Shutdown);
            }
            job = match self.feed_tx.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(IsleError::Shutdown),
                Err(TrySendError::Full(job)) => job,
            };
            room.await;
        }
        self.sent();
        Ok(())
    }

    /// Starts a member's thread for position `index`; returns before its `init` has run.
    pub(crate) fn launch(
        self: &Arc<Self>,
        index: usize,
    ) -> Result<(Arc<MemberCell>, Launched), IsleError> {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let cell = Arc::new(MemberCell::new(index, serial, Arc::downgrade(self)));
        let template = &self.template;
        let mut builder = template
            .isle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replicate()
            .thread_name(format!("{}-{index}", template.name));
        if let Some(factory) = &template.factory {
            let factory = factory.clone();
            builder = builder.factory(move || factory());
        }
        builder.set_feed(Feed::new(
            self.feed_rx.clone(),
            cell.clone(),
            self.signals.clone(),
        ));
        let init = template.init.clone();
        let pool_id = self.id;
        let this = cell.clone();
        let launched = builder.launch(Box::new(move |lua: &Lua| {
            wait::set_pool_id(pool_id);
            member::set_this_member(this, lua);
            init(lua)
        }))?;
        Ok((cell, launched))
    }

    /// Waits for a launched member's `init`, and makes it a member (not yet serving).
    pub(crate) fn finish(
        &self,
        cell: Arc<MemberCell>,
        launched: Launched,
    ) -> Result<Arc<Member>, IsleError> {
        launched.ready.wait_long_until(None);
        let outcome = launched.ready.take();
        self.adopt(cell, launched, outcome)
    }

    /// Makes a launched member whose `init` ended with `outcome` a member (not yet serving).
    pub(crate) fn adopt(
        &self,
        cell: Arc<MemberCell>,
        launched: Launched,
        outcome: Option<Result<(), IsleError>>,
    ) -> Result<Arc<Member>, IsleError> {
        let isle = Isle::new(launched.started(outcome)?);
        let member = Arc::new(Member { cell, isle });
        let _ = member.cell.member.set(Arc::downgrade(&member));
        let watch = Waker::from(Arc::new(ExitWatch {
            events: self.events.clone(),
            serial: member.cell.serial,
        }));
        member.isle.on_exit(&watch);
        Ok(member)
    }

    /// Puts `member` at the position it was started for and, unless that is a spare's, lets
    /// it serve.
    pub(crate) fn install(&self, joining: &Arc<Member>) {
        if self.is_dead() {
            return;
        }
        let index = joining.cell.index;
        let old = {
            let mut members = self.members();
            members[index].replace(joining.clone())
        };
        drop(old);
        if index < self.active {
            self.serve(joining);
        }
    }

    /// Lets a member (new, or a spare) take work from the pool's queue.
    fn serve(&self, member: &Member) {
        member.cell.transition(SPARE, IDLE);
        // Its Lua thread waits on its own queue only while it is not serving: wake it.
        member.isle.wake();
    }

    /// Takes the member with `serial` out; returns it and the position it had.
    pub(crate) fn remove(&self, serial: u64) -> Option<(usize, Arc<Member>)> {
        self.remove_if(serial, |_| true)
    }

    /// Like [`remove`](Self::remove), if the member is still retiring: a closing pool puts
    /// retired members back into service (see `unretire`), and the retirement it announced
    /// before then is stale.
    pub(crate) fn remove_retiring(&self, serial: u64) -> Option<(usize, Arc<Member>)> {
        self.remove_if(serial, |member| member.cell.state() == RETIRING)
    }

    fn remove_if(
        &self,
        serial: u64,
        keep: impl Fn(&Member) -> bool,
    ) -> Option<(usize, Arc<Member>)> {
        let mut members = self.members();
        let index = members
            .iter()
            .position(|m| m.as_ref().is_some_and(|m| m.cell.serial == serial))?;
        if !members[index].as_ref().is_some_and(|m| keep(m)) {
            return None;
        }
        members[index].take().map(|member| (index, member))
    }

    /// Moves a ready spare into the empty serving position `index`, lets it serve, and returns
    /// the spare position it left; `None` if no spare is ready.
    pub(crate) fn promote_spare(&self, index: usize) -> Option<usize> {
        let promoted = {
            let mut members = self.members();
            let spare = (self.active..members.len()).find(|&j| {
                members[j]
                    .as_ref()
                    .is_some_and(|m| m.cell.state() == SPARE && m.isle.is_alive())
            })?;
            let member = members[spare].take()?;
            members[index] = Some(member.clone());
            (spare, member)
        };
        self.serve(&promoted.1);
        Some(promoted.0)
    }

    /// A snapshot of the members and the counters.
    pub(crate) fn stats(&self) -> PoolStats {
        let mut stats = PoolStats::default();
        for (index, member) in self.members_or_vacancies().into_iter().enumerate() {
            let Some(member) = member else { continue };
            if index >= self.active {
                stats.spares += 1;
                continue;
            }
            stats.size += 1;
            match member.cell.state() {
                IDLE => stats.idle += 1,
                BUSY => stats.busy += 1,
                CHECKED_OUT => stats.checked_out += 1,
                _ => {}
            }
        }
        stats.queued = self.feed_rx.len();
        self.counters.fill(&mut stats);
        stats
    }

    /// How many members serve (spares not counted).
    pub(crate) fn size(&self) -> usize {
        self.active
    }

    /// How many positions the pool has, spares included.
    pub(crate) fn positions(&self) -> usize {
        self.members().len()
    }
}

impl PoolCore {
    /// Keeps the state of a replaced member whose thread has not ended yet.
    pub(crate) fn keep_retired(&self, serial: u64, shared: Arc<Shared>) {
        if !shared.exited.is_ready() {
            self.retired_lock().push((serial, shared));
        }
    }

    /// Forgets a replaced member whose thread has ended.
    pub(crate) fn forget_retired(&self, serial: u64) {
        self.retired_lock().retain(|(s, _)| *s != serial);
    }

    /// Takes the replaced members whose threads may still run.
    pub(crate) fn take_retired(&self) -> Vec<Arc<Shared>> {
        self.retired_lock()
            .drain(..)
            .map(|(_, shared)| shared)
            .collect()
    }

    /// Only pushes and removals happen under the lock: a poisoned lock is taken over.
    fn retired_lock(&self) -> MutexGuard<'_, Vec<(u64, Arc<Shared>)>> {
        self.retired.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes every member out of the pool.
    pub(crate) fn take_members(&self) -> Vec<Arc<Member>> {
        let mut members = self.members();
        members.iter_mut().filter_map(Option::take).collect()
    }

    /// What dropping the last handle does: no new requests; the members finish what is
    /// queued (the supervisor still replaces those that die meanwhile) and end once the pool
    /// is gone. Never blocks.
    pub(crate) fn release(&self) {
        self.wind_down();
        self.send(Event::Stop);
    }

    /// Closes the pool for new requests. What is queued still runs on the members (a member
    /// the policy retired but still in its place serves again) — unless each request must get
    /// a fresh VM: no member is replaced any more, so what is queued resolves
    /// [`IsleError::Shutdown`] instead of running on a VM another request used.
    pub(crate) fn wind_down(&self) {
        if self.fresh_vm {
            self.close_and_drain();
        } else {
            self.close();
            self.unretire();
        }
    }
}

/// The supervisor's thread, and the slot resolved when it ends.
pub(crate) struct SupervisorThread {
    pub(crate) thread: JoinHandle<()>,
    pub(crate) exited: Arc<Slot<()>>,
}

impl fmt::Debug for SupervisorThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorThread")
            .field("ended", &self.exited.is_ready())
            .finish()
    }
}
