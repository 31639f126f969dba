//! What a pool reports about itself.

use std::sync::atomic::{AtomicU64, Ordering};

use super::recycle::{Cause, Ended};

/// A snapshot of a pool: its members now, and what they did since the pool started.
///
/// Request counts cover requests that ran on a member (through the pool or a checked-out
/// guard); a request cancelled or expired while still queued never reaches a member and is
/// not counted.
///
/// # Examples
///
/// ```
/// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
/// pool.eval::<()>("error('no')").unwrap_err();
/// pool.eval::<i64>("1")?;
/// let stats = pool.stats();
/// assert_eq!(stats.size, 2);
/// assert_eq!((stats.completed, stats.failed), (1, 1));
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Members in place (a position whose replacement is still starting is not counted).
    pub size: usize,
    /// Members waiting for work.
    pub idle: usize,
    /// Spares ready to take over (see [`IslePoolBuilder::spares`](crate::IslePoolBuilder::spares)).
    pub spares: usize,
    /// Members running a request from the pool's queue.
    pub busy: usize,
    /// Members checked out by a guard.
    pub checked_out: usize,
    /// Requests waiting in the pool's queue.
    pub queued: usize,
    /// Requests that returned a value.
    pub completed: u64,
    /// Requests that ended with an error other than a cancel or timeout (Lua errors, panics,
    /// conversion errors).
    pub failed: u64,
    /// Requests cancelled while they ran.
    pub cancelled: u64,
    /// Requests that timed out while they ran.
    pub timed_out: u64,
    /// Members replaced by the recycling policy, by cause.
    pub recycled: Recycled,
    /// Members replaced because their thread ended unexpectedly or the isle gave up on them.
    pub replaced: u64,
    /// Of those, members the isle gave up on (a request that would not stop).
    pub abandoned: u64,
    /// Replacements whose start failed (their `init` failed or the thread could not start).
    pub failed_starts: u64,
}

/// Members replaced by the recycling policy, by cause.
///
/// # Examples
///
/// ```
/// let recycled = mlua_isle::IslePool::builder().size(1).spawn(|_| Ok(()))?.stats().recycled;
/// assert_eq!(recycled.total(), 0);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recycled {
    /// After [`Recycle::after_requests`](crate::Recycle::after_requests).
    pub requests: u64,
    /// After [`Recycle::after_age`](crate::Recycle::after_age).
    pub age: u64,
    /// After [`Recycle::memory_high_water`](crate::Recycle::memory_high_water).
    pub memory: u64,
    /// After a cancelled or timed-out request.
    pub interrupted: u64,
    /// After a panic in a host function.
    pub panicked: u64,
    /// Because [`on_return`](crate::IslePoolBuilder::on_return) failed.
    pub on_return: u64,
    /// By [`PooledIsle::discard`](crate::PooledIsle::discard).
    pub discarded: u64,
}

impl Recycled {
    /// All members recycled, whatever the cause.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(mlua_isle::Recycled::default().total(), 0);
    /// ```
    pub fn total(&self) -> u64 {
        self.requests
            + self.age
            + self.memory
            + self.interrupted
            + self.panicked
            + self.on_return
            + self.discarded
    }
}

/// The pool's running counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    recycled: [AtomicU64; 7],
    pub(crate) replaced: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) failed_starts: AtomicU64,
}

impl Counters {
    pub(crate) fn ended(&self, ended: Ended) {
        let counter = match ended {
            Ended::Ok => &self.completed,
            Ended::Failed | Ended::Panicked => &self.failed,
            Ended::TimedOut => &self.timed_out,
            Ended::Cancelled => &self.cancelled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn recycled(&self, cause: Cause) {
        self.recycled[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Fills the counted fields of `stats`.
    pub(crate) fn fill(&self, stats: &mut PoolStats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        stats.completed = get(&self.completed);
        stats.failed = get(&self.failed);
        stats.cancelled = get(&self.cancelled);
        stats.timed_out = get(&self.timed_out);
        let r = |cause: Cause| get(&self.recycled[cause as usize]);
        stats.recycled = Recycled {
            requests: r(Cause::Requests),
            age: r(Cause::Age),
            memory: r(Cause::Memory),
            interrupted: r(Cause::Interrupted),
            panicked: r(Cause::Panicked),
            on_return: r(Cause::OnReturn),
            discarded: r(Cause::Discarded),
        };
        stats.replaced = get(&self.replaced);
        stats.abandoned = get(&self.abandoned);
        stats.failed_starts = get(&self.failed_starts);
    }
}
