//! One member of a pool: its isle, and the state its Lua thread and the pool share.
//!
//! A member's state says whether its Lua thread may take work from the pool's queue:
//!
//! ```text
//! SPARE ──(installed serving, or promoted)──▶ IDLE ◀──(job done)── BUSY
//!                         │ ▲ ───(claims a job)──▶
//!                         │ └──(returned)── CHECKED_OUT ◀──(checkout job / try_checkout)
//!                         └─────────────▶ RETIRING (replaced; takes nothing more)
//! ```
//!
//! Only an IDLE member's thread claims a job from the queue (IDLE → BUSY, then it takes the
//! job, or goes back to IDLE if another member was faster). `try_checkout` takes an IDLE member
//! with the same compare-and-swap, so a member is never both checked out and running a queued
//! job; a checkout through the queue runs on a BUSY member and turns it CHECKED_OUT. A spare
//! stays SPARE until it takes over a serving position.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::Wake;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::recycle::{Cause, Ended};
use super::shared::PoolCore;
use super::supervisor::Event;
use crate::handle::isle::Isle;
use crate::lua_thread::feed::{FeedGate, JobReport, Outcome};

pub(crate) const SPARE: u8 = 0;
pub(crate) const IDLE: u8 = 1;
pub(crate) const BUSY: u8 = 2;
pub(crate) const CHECKED_OUT: u8 = 3;
pub(crate) const RETIRING: u8 = 4;

/// A member: the isle, and what its Lua thread shares with the pool.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) cell: Arc<MemberCell>,
    pub(crate) isle: Isle,
}

/// The part of a member its Lua thread shares with the pool.
#[derive(Debug)]
pub(crate) struct MemberCell {
    state: AtomicU8,
    /// The position the member was started for (its thread name carries it); a spare that
    /// takes over another position keeps it.
    pub(crate) index: usize,
    /// Distinguishes a replacement from its predecessor at the same index.
    pub(crate) serial: u64,
    born: Instant,
    served: AtomicU64,
    /// Set by the pool's own jobs (checkout, return, wake-up): not counted, not judged.
    quiet: AtomicBool,
    /// Why to replace the member once it is returned (the policy spoke while it was out);
    /// 0 for none, else the cause's discriminant + 1.
    retire_on_return: AtomicU8,
    /// The stage of a return that found the member's queue full (0 for none): its own thread
    /// queues it after its next job.
    return_pending: AtomicU8,
    /// Whether the latest `on_return` succeeded.
    reset_ok: AtomicBool,
    /// The member itself, once installed (a checkout on its thread hands it out).
    pub(crate) member: OnceLock<Weak<Member>>,
    pool: Weak<PoolCore>,
}

impl MemberCell {
    pub(crate) fn new(index: usize, serial: u64, pool: Weak<PoolCore>) -> Self {
        MemberCell {
            state: AtomicU8::new(SPARE),
            index,
            serial,
            born: Instant::now(),
            served: AtomicU64::new(0),
            quiet: AtomicBool::new(false),
            retire_on_return: AtomicU8::new(0),
            return_pending: AtomicU8::new(0),
            reset_ok: AtomicBool::new(false),
            member: OnceLock::new(),
            pool,
        }
    }

    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }

    /// Moves from `from` to `to`; returns whether the member was in `from`.
    pub(crate) fn transition(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Sets the state whatever it was (the supervisor retiring a member).
    pub(crate) fn force_state(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
    }

    /// Marks the job running now as the pool's own.
    pub(crate) fn quiet(&self) {
        self.quiet.store(true, Ordering::SeqCst);
    }

    /// Takes the member out of service without telling anyone (a closing pool replaces no
    /// one); a checked-out member is retired when it is returned.
    fn stop_serving(&self) {
        loop {
            match self.state() {
                RETIRING | CHECKED_OUT => return,
                state => {
                    if self.transition(state, RETIRING) {
                        return;
                    }
                }
            }
        }
    }

    /// Takes the member out of service for `cause` and tells the supervisor, unless it is
    /// checked out (then it is replaced when returned) or already retiring.
    pub(crate) fn retire(&self, pool: &PoolCore, cause: Cause) {
        loop {
            match self.state() {
                RETIRING => return,
                CHECKED_OUT => {
                    self.retire_on_return
                        .store(cause as u8 + 1, Ordering::SeqCst);
                    // Returned meanwhile? Then the return did not see the cause: retire now.
                    if self.state() == CHECKED_OUT {
                        return;
                    }
                }
                state => {
                    if self.transition(state, RETIRING) {
                        pool.recycled(cause, self.index);
                        pool.send(Event::Retire {
                            serial: self.serial,
                        });
                        return;
                    }
                }
            }
        }
    }

    /// Has the member's own thread queue what is left of its return (from `stage` on) after
    /// its next job; `isle` is the member's, woken so that a next job comes.
    pub(crate) fn return_later(&self, isle: &Isle, stage: u8) {
        self.return_pending.store(stage, Ordering::SeqCst);
        // After the store: either the marker gets in, or the queue is full of jobs taken
        // after it; a look at the flag follows each.
        isle.wake();
    }

    /// Records whether `on_return` succeeded.
    pub(crate) fn reset_done(&self, ok: bool) {
        self.reset_ok.store(ok, Ordering::SeqCst);
    }

    /// Whether `on_return` succeeded (and forgets it).
    pub(crate) fn take_reset_done(&self) -> bool {
        self.reset_ok.swap(false, Ordering::SeqCst)
    }

    /// The cause recorded while the member was checked out, if any.
    pub(crate) fn take_retire_on_return(&self) -> Option<Cause> {
        match self.retire_on_return.swap(0, Ordering::SeqCst) {
            0 => None,
            n => Cause::from_index(n - 1),
        }
    }
}

impl FeedGate for MemberCell {
    fn claim(&self) -> bool {
        self.transition(IDLE, BUSY)
    }

    fn release(&self) {
        self.transition(BUSY, IDLE);
    }

    fn open(&self) -> bool {
        self.state() == IDLE
    }

    fn gone(&self) -> bool {
        self.pool.strong_count() == 0
    }

    fn between_jobs(&self) {
        let stage = self.return_pending.swap(0, Ordering::SeqCst);
        if stage == 0 {
            return;
        }
        // A job just left the queue: there is room for the return now (or it is tried again
        // after the next job).
        let member = self.member.get().and_then(Weak::upgrade);
        if let (Some(member), Some(pool)) = (member, self.pool.upgrade()) {
            super::checkout::queue_return(&pool, &member, stage);
        }
    }

    fn finished(&self, report: &JobReport) {
        if self.quiet.swap(false, Ordering::SeqCst) {
            return;
        }
        let ended = match report.outcome {
            Outcome::Ok => Ended::Ok,
            Outcome::Failed => Ended::Failed,
            Outcome::Panicked => Ended::Panicked,
            Outcome::Cancelled => Ended::Cancelled,
            Outcome::TimedOut => Ended::TimedOut,
        };
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        pool.counters.ended(ended);
        // A closing pool retires no one: its members are to finish what is queued. Unless
        // each request must get a fresh VM: then the member takes nothing more (what is
        // queued resolves `Shutdown`, see `PoolCore::wind_down`).
        if pool.is_closed() {
            if pool.fresh_vm {
                self.stop_serving();
            }
            return;
        }
        if let Some(cause) = pool
            .recycle
            .verdict(served, self.born, report.memory, ended)
        {
            self.retire(&pool, cause);
        }
    }
}

thread_local! {
    /// The member whose Lua thread this is.
    static THIS_MEMBER: RefCell<Option<Arc<MemberCell>>> = const { RefCell::new(None) };
}

/// Marks the calling thread as `cell`'s Lua thread (from the member's `init`), for as long as
/// `lua`, the member's VM, lives: the thread may serve another isle afterwards.
pub(crate) fn set_this_member(cell: Arc<MemberCell>, lua: &mlua::Lua) {
    THIS_MEMBER.set(Some(cell));
    lua.set_app_data(ThisMember);
}

/// Kept with a member's VM: unmarks the thread when the VM goes (on the same thread).
struct ThisMember;

impl Drop for ThisMember {
    fn drop(&mut self) {
        let _ = THIS_MEMBER.try_with(RefCell::take);
    }
}

/// The member whose Lua thread this is, if any.
pub(crate) fn this_member() -> Option<Arc<MemberCell>> {
    THIS_MEMBER.with_borrow(Clone::clone)
}

/// Tells the supervisor when a member's thread ends (or the isle gives up on it).
pub(crate) struct ExitWatch {
    pub(crate) events: Sender<Event>,
    pub(crate) serial: u64,
}

impl Wake for ExitWatch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.events.send(Event::Exited {
            serial: self.serial,
        });
    }
}
