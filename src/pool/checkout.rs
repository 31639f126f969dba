//! Exclusive use of one member: the guard, and how a member goes back into service.

use std::fmt;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::member::{self, Member, BUSY, CHECKED_OUT, IDLE, RETIRING};
use super::recycle::Cause;
use super::shared::PoolCore;
use super::supervisor::Event;
use crate::error::IsleError;
use crate::handle::isle::Isle;
use crate::lua_thread::vm::Vm;

/// One member of an [`IslePool`](crate::IslePool), checked out for exclusive use: an isle
/// handle (it derefs to [`Isle`]) that nobody else's requests run on while it lives.
///
/// Owned and `'static`: it moves into threads and tasks. Dropping it returns the member to
/// the pool (after [`on_return`](crate::IslePoolBuilder::on_return), if set);
/// [`discard`](PooledIsle::discard) has it replaced by a fresh one instead.
///
/// # Examples
///
/// ```
/// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
/// let session = pool.checkout()?;
/// std::thread::spawn(move || {
///     session.exec(|lua| lua.globals().set("step", 1))?;
///     // Still the same VM: nothing else ran on it in between.
///     assert_eq!(session.eval::<i64>("step + 1")?, 2);
///     Ok::<(), mlua_isle::IsleError>(())
/// })
/// .join()
/// .unwrap()?;
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[must_use = "dropping a checked-out member returns it at once"]
pub struct PooledIsle {
    member: Option<Arc<Member>>,
    pool: Arc<PoolCore>,
}

impl PooledIsle {
    pub(crate) fn new(member: Arc<Member>, pool: Arc<PoolCore>) -> Self {
        PooledIsle {
            member: Some(member),
            pool,
        }
    }

    /// Checks out a member of `pool` that is idle right now.
    pub(crate) fn try_checkout(pool: &Arc<PoolCore>) -> Result<PooledIsle, IsleError> {
        if pool.is_closed() {
            return Err(IsleError::Shutdown);
        }
        let members = pool.snapshot();
        for (i, member) in members.iter().enumerate() {
            if member.cell.transition(IDLE, CHECKED_OUT) {
                // The member may just have been woken for a queued request, which it will not
                // take now: hand the wake-up on to another idle member.
                if !pool.feed_rx.is_empty() {
                    let other = members[i + 1..].iter().chain(&members[..i]);
                    if let Some(idle) = other.into_iter().find(|m| m.cell.state() == IDLE) {
                        idle.isle.wake();
                    }
                }
                return Ok(PooledIsle::new(member.clone(), pool.clone()));
            }
        }
        Err(IsleError::Full)
    }

    /// The work of a checkout request: turns the member that runs it (a BUSY one, taken from
    /// the pool's queue) over to the guard it returns.
    pub(crate) fn reserve(
        pool: Arc<PoolCore>,
    ) -> impl FnOnce(&mut Vm) -> Result<PooledIsle, IsleError> + Send + 'static {
        move |_| {
            let cell = member::this_member().ok_or(IsleError::Shutdown)?;
            cell.quiet();
            let member = cell
                .member
                .get()
                .and_then(Weak::upgrade)
                .ok_or(IsleError::Shutdown)?;
            // Only this thread moves a member out of BUSY while it runs a job.
            if !cell.transition(BUSY, CHECKED_OUT) {
                return Err(IsleError::Shutdown);
            }
            Ok(PooledIsle::new(member, pool))
        }
    }

    /// An idle member at once, if nobody waits ahead in the pool's queue (no trip through it).
    pub(crate) fn at_once(pool: &Arc<PoolCore>) -> Option<PooledIsle> {
        if pool.feed_rx.is_empty() {
            PooledIsle::try_checkout(pool).ok()
        } else {
            None
        }
    }

    /// An async handle to the checked-out member.
    #[cfg(feature = "tokio")]
    pub(crate) fn async_view(&self) -> crate::handle::async_isle::AsyncIsle {
        self.deref().async_view()
    }

    /// Replaces this member with a fresh VM instead of returning it (its state is not worth
    /// keeping). The old VM finishes what its queue holds and goes; the replacement starts in
    /// the background.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(1).spawn(|_| Ok(()))?;
    /// let session = pool.checkout()?;
    /// session.exec(|lua| lua.globals().set("dirty", true))?;
    /// session.discard();
    /// // Once the replacement is in, `dirty` is gone.
    /// assert!(!pool.eval::<bool>("dirty ~= nil")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn discard(mut self) {
        if let Some(member) = self.member.take() {
            retire(&self.pool, &member, Cause::Discarded);
        }
    }
}

impl Deref for PooledIsle {
    type Target = Isle;

    fn deref(&self) -> &Isle {
        &self
            .member
            .as_ref()
            .expect("a guard holds its member until it is dropped")
            .isle
    }
}

impl Drop for PooledIsle {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            give_back(&self.pool, member);
        }
    }
}

impl fmt::Debug for PooledIsle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledIsle")
            .field("index", &self.member.as_ref().map(|m| m.cell.index))
            .finish_non_exhaustive()
    }
}

/// Takes a checked-out member out of service for `cause`.
fn retire(pool: &PoolCore, member: &Member, cause: Cause) {
    if member.cell.transition(CHECKED_OUT, RETIRING) {
        pool.recycled(cause, member.cell.index);
        pool.send(Event::Retire {
            serial: member.cell.serial,
        });
    }
}

/// How long `on_return` may run when the isle has no default timeout.
const ON_RETURN_TIMEOUT: Duration = Duration::from_secs(10);

/// A return still to queue: `on_return`, then putting the member back (or replacing it).
pub(crate) const RESET: u8 = 1;
/// A return still to queue: putting the member back (or replacing it).
pub(crate) const SETTLE: u8 = 2;

/// Returns a checked-out member: its own thread runs `on_return` (under a deadline) and then
/// puts it back into service, or has it replaced. Never blocks.
pub(crate) fn give_back(pool: &Arc<PoolCore>, member: Arc<Member>) {
    if let Some(cause) = member.cell.take_retire_on_return() {
        return retire(pool, &member, cause);
    }
    // A session is one request's worth of VM: the next holder gets a fresh one (also after a
    // session of coroutine requests only, which the policy does not count).
    if pool.fresh_vm {
        return retire(pool, &member, Cause::Requests);
    }
    if pool.template.on_return.is_none() && member.isle.queue_is_empty() {
        // Nothing of the holder's is queued and nothing to reset: back into service at once
        // (the member looks at the pool's queue again when woken).
        if member.cell.transition(CHECKED_OUT, IDLE) {
            // A cause recorded between the look above and this transition (a coroutine
            // request of the holder's ending on the member's thread) would be lost: look
            // again, now that `retire` sees the member idle.
            if let Some(cause) = member.cell.take_retire_on_return() {
                member.cell.retire(pool, cause);
                return;
            }
            member.isle.wake();
        }
        return;
    }
    let stage = if pool.template.on_return.is_some() {
        RESET
    } else {
        SETTLE
    };
    queue_return(pool, &member, stage);
}

/// Queues the return of `member` from `stage` on, as requests on its own queue. The last one
/// has no deadline, so that it runs whatever waits before it; with the queue full, the
/// member's own thread queues what is left after its next job.
pub(crate) fn queue_return(pool: &Arc<PoolCore>, member: &Member, stage: u8) {
    if stage == RESET {
        member.cell.reset_done(false);
        let request = member.isle.request().try_enqueue();
        let request = match pool.default_timeout {
            Some(_) => request,
            None => request.timeout(ON_RETURN_TIMEOUT),
        };
        match request.spawn_exec(reset_job(Arc::downgrade(pool))) {
            Ok(task) => task.detach(),
            Err(IsleError::Full) => return member.cell.return_later(&member.isle, RESET),
            // The member is gone; the supervisor hears of it from its exit.
            Err(_) => return,
        }
    }
    let settle = member.isle.request().try_enqueue().no_timeout();
    match settle.spawn_exec(settle_job(Arc::downgrade(pool))) {
        Ok(task) => task.detach(),
        Err(IsleError::Full) => member.cell.return_later(&member.isle, SETTLE),
        Err(_) => {}
    }
}

/// Runs `on_return` on the member's own thread and records whether it succeeded.
fn reset_job(pool: Weak<PoolCore>) -> impl FnOnce(&mlua::Lua) -> mlua::Result<()> + Send {
    move |lua| {
        let (Some(cell), Some(pool)) = (member::this_member(), pool.upgrade()) else {
            return Ok(());
        };
        cell.quiet();
        if let Some(on_return) = &pool.template.on_return {
            // A panicking or failing hook leaves the VM in a state nobody vouches for.
            let reset = catch_unwind(AssertUnwindSafe(|| on_return(lua)));
            cell.reset_done(reset.is_ok_and(|r| r.is_ok()));
        }
        Ok(())
    }
}

/// Puts a returned member back into service, or has it replaced (its `on_return` did not
/// succeed, or the policy spoke while it was out).
fn settle_job(pool: Weak<PoolCore>) -> impl FnOnce(&mlua::Lua) -> mlua::Result<()> + Send {
    move |_| {
        let (Some(cell), Some(pool)) = (member::this_member(), pool.upgrade()) else {
            return Ok(());
        };
        cell.quiet();
        let reset_failed = pool.template.on_return.is_some() && !cell.take_reset_done();
        let cause = if reset_failed {
            Some(Cause::OnReturn)
        } else {
            cell.take_retire_on_return()
        };
        match cause {
            Some(cause) => {
                if cell.transition(CHECKED_OUT, RETIRING) {
                    pool.recycled(cause, cell.index);
                    pool.send(Event::Retire {
                        serial: cell.serial,
                    });
                }
            }
            None => {
                cell.transition(CHECKED_OUT, IDLE);
            }
        }
        Ok(())
    }
}
