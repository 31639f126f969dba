//! State shared by a pool's handle, its guards, its members' Lua threads and its supervisor:
//! the pool's queue, its members, how to make a new one.

use std::fmt;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mlua::Lua;

use super::member::{self, ExitWatch, Member, MemberCell, IDLE, SPARE};
use super::recycle::Recycle;
use super::stats::Counters;
use super::supervisor::Event;
use crate::core::queue::{Queued, WhenFull};
use crate::core::wait;
use crate::error::IsleError;
use crate::handle::builder::IsleBuilder;
use crate::handle::isle::Isle;
use crate::lua_thread::feed::Feed;

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
    /// Members by index; `None` while a replacement is being made.
    members: Mutex<Vec<Option<Arc<Member>>>>,
    pub(crate) template: Template,
    pub(crate) recycle: Recycle,
    pub(crate) counters: Counters,
    events: Sender<Event>,
    pub(crate) default_timeout: Option<Duration>,
    next_serial: AtomicU64,
}

impl fmt::Debug for PoolCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCore")
            .field("id", &self.id)
            .field("queued", &self.feed_rx.len())
            .finish_non_exhaustive()
    }
}

impl PoolCore {
    pub(crate) fn new(
        template: Template,
        recycle: Recycle,
        size: usize,
        queue_capacity: usize,
        default_timeout: Option<Duration>,
        events: Sender<Event>,
    ) -> Self {
        let (feed_tx, feed_rx) = crossbeam_channel::bounded(queue_capacity);
        PoolCore {
            id: crate::core::queue::next_isle_id(),
            feed_tx,
            feed_rx,
            closed: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            members: Mutex::new(vec![None; size]),
            template,
            recycle,
            counters: Counters::default(),
            events,
            default_timeout,
            next_serial: AtomicU64::new(1),
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

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Marks the queue dead (no member takes anything any more) and resolves what it holds
    /// with [`IsleError::Shutdown`]; senders racing with this clean up after themselves.
    pub(crate) fn close_and_drain(&self) {
        self.close();
        self.dead.store(true, Ordering::Relaxed);
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
        // Pairs with the fence in `close_and_drain`: either the last drain sees the job, or
        // this load sees the queue dead.
        fence(Ordering::SeqCst);
        if self.dead.load(Ordering::Relaxed) {
            self.drain();
        }
        Ok(())
    }

    /// Starts a member's thread for position `index`; returns before its `init` has run.
    pub(crate) fn launch(
        self: &Arc<Self>,
        index: usize,
    ) -> Result<(Arc<MemberCell>, crate::handle::builder::Launched), IsleError> {
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
        builder.set_feed(Feed::new(self.feed_rx.clone(), cell.clone()));
        let init = template.init.clone();
        let pool_id = self.id;
        let this = cell.clone();
        let launched = builder.launch(Box::new(move |lua: &Lua| {
            wait::set_pool_id(pool_id);
            member::set_this_member(this);
            init(lua)
        }))?;
        Ok((cell, launched))
    }

    /// Waits for a launched member's `init`, and makes it a member (not yet serving).
    pub(crate) fn finish(
        &self,
        cell: Arc<MemberCell>,
        launched: crate::handle::builder::Launched,
    ) -> Result<Arc<Member>, IsleError> {
        launched.ready.wait_until(None);
        let outcome = launched.ready.take();
        let isle = Isle::new(launched.started(outcome)?);
        let member = Arc::new(Member { cell, isle });
        let _ = member.cell.member.set(Arc::downgrade(&member));
        let watch = Waker::from(Arc::new(ExitWatch {
            events: self.events.clone(),
            index: member.cell.index,
            serial: member.cell.serial,
        }));
        member.isle.on_exit(&watch);
        Ok(member)
    }

    /// Puts `member` at its position and lets it serve.
    pub(crate) fn install(&self, joining: &Arc<Member>) {
        let index = joining.cell.index;
        let old = {
            let mut members = self.members();
            members[index].replace(joining.clone())
        };
        drop(old);
        joining.cell.transition(SPARE, IDLE);
        // Its Lua thread waits on its own queue only while it is not serving: wake it.
        joining.isle.wake();
    }

    /// Takes the member at `index` out if it is the one with `serial`.
    pub(crate) fn remove(&self, index: usize, serial: u64) -> Option<Arc<Member>> {
        let mut members = self.members();
        let slot = members.get_mut(index)?;
        if slot.as_ref().is_some_and(|m| m.cell.serial == serial) {
            slot.take()
        } else {
            None
        }
    }

    /// How many positions the pool has.
    pub(crate) fn size(&self) -> usize {
        self.members().len()
    }
}

impl Drop for PoolCore {
    fn drop(&mut self) {
        self.close_and_drain();
    }
}
