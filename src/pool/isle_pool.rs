//! The pool's handle.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{FromLuaMulti, IntoLuaMulti, Lua};

use super::builder::IslePoolBuilder;
use super::checkout::PooledIsle;
use super::shared::{Parts, PoolCore, SupervisorThread};
use super::stats::PoolStats;
use super::supervisor::Event;
use crate::core::queue::{Queued, WhenFull};
use crate::core::wait;
use crate::error::IsleError;
use crate::handle::code::Code;
use crate::handle::request::{BlockingTarget, Request, Target};
use crate::handle::task::Task;

/// Many isles behind one handle: requests go to whichever member is free first; a member can
/// be checked out for exclusive use; members are replaced when they die, are given up on, or
/// the [`Recycle`](crate::Recycle) policy says so.
///
/// `Send + Sync`: share it by reference or in an `Arc`. Requests are the same as an
/// [`Isle`](crate::Isle)'s, with the same errors and the same exactly-once guarantee; a request
/// waits in the pool's queue until a member is free, never behind one busy member while
/// another is idle.
///
/// # Examples
///
/// ```
/// use mlua_isle::IslePool;
///
/// let pool = IslePool::builder()
///     .size(2)
///     .spawn(|lua| lua.load("function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end").exec())?;
/// let tasks: Vec<_> = (20..24).map(|n| pool.spawn_call::<i64>("fib", n)).collect::<Result<_, _>>()?;
/// let fibs: Vec<i64> = tasks.into_iter().map(|t| t.wait()).collect::<Result<_, _>>()?;
/// assert_eq!(fibs, [6765, 10946, 17711, 28657]);
/// pool.shutdown()?;
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub struct IslePool {
    pub(crate) core: Arc<PoolCore>,
    supervisor: Option<SupervisorThread>,
}

impl IslePool {
    /// Starts a pool of default isles, one per available core, each running `init`. See
    /// [`IslePoolBuilder::spawn`].
    ///
    /// # Errors
    ///
    /// As [`IslePoolBuilder::spawn`].
    ///
    /// # Blocking
    ///
    /// Blocks until every member's `init` has finished.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::spawn(|lua| lua.globals().set("x", 1))?;
    /// assert_eq!(pool.eval::<i64>("x")?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn<F>(init: F) -> Result<IslePool, IsleError>
    where
        F: Fn(&Lua) -> mlua::Result<()> + Send + Sync + 'static,
    {
        IslePoolBuilder::new().spawn(init)
    }

    /// A builder for a configured pool.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
    /// assert_eq!(pool.size(), 2);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn builder() -> IslePoolBuilder {
        IslePoolBuilder::new()
    }

    pub(crate) fn start(parts: Parts) -> Result<IslePool, IsleError> {
        let size = parts.size;
        let (core, events) = PoolCore::create(parts);
        // All threads start at once; then each `init` is waited for.
        let (launched, mut failed) = match core.launch_all() {
            Ok(launched) => (launched, None),
            Err((launched, err)) => (launched, Some(err)),
        };
        let mut members = Vec::with_capacity(size);
        for (cell, started) in launched {
            match core.finish(cell, started) {
                Ok(member) => members.push(member),
                Err(err) => {
                    failed.get_or_insert(err);
                }
            }
        }
        let supervisor = core.start(members, failed, events)?;
        Ok(IslePool {
            core,
            supervisor: Some(supervisor),
        })
    }

    /// A request with its own deadline, cancel token or queueing policy; see [`Request`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = mlua_isle::IslePool::builder().size(1).spawn(|_| Ok(()))?;
    /// let err = pool.request().timeout(Duration::from_millis(20)).eval::<()>("while true do end");
    /// assert!(err.unwrap_err().is_timeout());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn request(&self) -> Request<'_, IslePool> {
        Request::new(self)
    }

    /// Evaluates `code` on a free member; see [`Isle::eval`](crate::Isle::eval).
    ///
    /// # Errors
    ///
    /// As [`Isle::eval`](crate::Isle::eval); [`IsleError::Reentrant`] on a member's own thread.
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
    /// assert_eq!(pool.eval::<i64>("6 * 7")?, 42);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn eval<T>(&self, code: impl Into<Code>) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().eval(code)
    }

    /// Evaluates `code` with `args` as its arguments (`...`) on a free member; see
    /// [`Isle::eval_with`](crate::Isle::eval_with).
    ///
    /// # Errors
    ///
    /// As [`Isle::eval`](crate::Isle::eval); [`IsleError::Reentrant`] on a member's own thread.
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
    /// assert_eq!(pool.eval_with::<i64>("(...) + 1", 41)?, 42);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn eval_with<T>(
        &self,
        code: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().eval_with(code, args)
    }

    /// Calls the global function `name` on a free member; see [`Isle::call`](crate::Isle::call).
    ///
    /// # Errors
    ///
    /// As [`eval`](Self::eval).
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(1).spawn(|_| Ok(()))?;
    /// assert_eq!(pool.call::<String>("tostring", 7)?, "7");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn call<T>(
        &self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().call(name, args)
    }

    /// Runs `f` with a free member's VM; see [`Isle::exec`](crate::Isle::exec).
    ///
    /// # Errors
    ///
    /// As [`eval`](Self::eval).
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(1).spawn(|_| Ok(()))?;
    /// assert_eq!(pool.exec(|lua| lua.load("1 + 1").eval::<i64>())?, 2);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn exec<T, F>(&self, f: F) -> Result<T, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.request().exec(f)
    }

    /// Queues an [`eval`](Self::eval) and returns its [`Task`].
    ///
    /// # Errors
    ///
    /// [`IsleError::Shutdown`] once the pool is shut down.
    ///
    /// # Blocking
    ///
    /// Waits for room while the pool's queue is full.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
    /// let task = pool.spawn_eval::<i64>("2 + 2")?;
    /// assert_eq!(task.wait()?, 4);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_eval<T>(&self, code: impl Into<Code>) -> Result<Task<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().spawn_eval(code)
    }

    /// Queues a [`call`](Self::call) and returns its [`Task`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Self::spawn_eval).
    ///
    /// # Blocking
    ///
    /// As [`spawn_eval`](Self::spawn_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
    /// let task = pool.spawn_call::<i64>("math.abs", -3)?;
    /// # let _ = task;
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_call<T>(
        &self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<Task<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().spawn_call(name, args)
    }

    /// Queues an [`exec`](Self::exec) and returns its [`Task`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Self::spawn_eval).
    ///
    /// # Blocking
    ///
    /// As [`spawn_eval`](Self::spawn_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
    /// let task = pool.spawn_exec(|lua| lua.load("'hi'").eval::<String>())?;
    /// assert_eq!(task.wait()?, "hi");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_exec<T, F>(&self, f: F) -> Result<Task<T>, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.request().spawn_exec(f)
    }

    /// Checks out a member for exclusive use, waiting in the pool's queue (in turn with
    /// requests) until one is free.
    ///
    /// # Errors
    ///
    /// [`IsleError::Shutdown`] once the pool is shut down; [`IsleError::Reentrant`] on a
    /// member's own thread.
    ///
    /// # Blocking
    ///
    /// Blocks until a member is free.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(1).spawn(|_| Ok(()))?;
    /// let guard = pool.checkout()?;
    /// assert_eq!(guard.eval::<i64>("1")?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn checkout(&self) -> Result<PooledIsle, IsleError> {
        self.checkout_until(None)
    }

    /// Checks out a member, waiting at most `timeout` (a replacement's start included).
    ///
    /// # Errors
    ///
    /// [`IsleError::Timeout`] if no member was free in time; as [`checkout`](Self::checkout).
    ///
    /// # Blocking
    ///
    /// Blocks for at most `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = mlua_isle::IslePool::builder().size(1).spawn(|_| Ok(()))?;
    /// let first = pool.checkout()?;
    /// let second = pool.checkout_timeout(Duration::from_millis(20));
    /// assert!(second.unwrap_err().is_timeout());
    /// drop(first);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn checkout_timeout(&self, timeout: Duration) -> Result<PooledIsle, IsleError> {
        self.checkout_until(Some(
            wait::deadline_after(timeout).unwrap_or_else(far_future),
        ))
    }

    fn checkout_until(&self, deadline: Option<Instant>) -> Result<PooledIsle, IsleError> {
        if wait::on_isle_thread(self.core.id) {
            return Err(IsleError::Reentrant);
        }
        if let Some(guard) = PooledIsle::at_once(&self.core) {
            return Ok(guard);
        }
        let request = match deadline {
            Some(deadline) => self.request().deadline(deadline),
            None => self.request().no_timeout(),
        };
        request
            .kind("checkout")
            .exec_raw(PooledIsle::reserve(self.core.clone()))
    }

    /// Checks out a member that is idle right now.
    ///
    /// # Errors
    ///
    /// [`IsleError::Full`] if every member is busy or checked out; [`IsleError::Shutdown`]
    /// once the pool is shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(1).spawn(|_| Ok(()))?;
    /// let guard = pool.try_checkout()?;
    /// assert!(matches!(pool.try_checkout(), Err(mlua_isle::IsleError::Full)));
    /// drop(guard);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn try_checkout(&self) -> Result<PooledIsle, IsleError> {
        PooledIsle::try_checkout(&self.core)
    }

    /// Runs `f` on every live member (checked-out ones included, between their holder's
    /// requests) and returns each member's result, for example to load new code everywhere.
    ///
    /// Members started later (replacements) do not get it: they run only `init`. Put what
    /// every member must have into `init` (for example by reading the current code from a
    /// shared place), and use this to bring the running members up to date.
    ///
    /// # Blocking
    ///
    /// Blocks until every member has run `f`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
    /// let results = pool.broadcast_exec(|lua| lua.globals().set("version", 2));
    /// assert_eq!(results.len(), 2);
    /// assert!(results.iter().all(Result::is_ok));
    /// assert_eq!(pool.eval::<i64>("version")?, 2);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn broadcast_exec<T, F>(&self, f: F) -> Vec<Result<T, IsleError>>
    where
        F: Fn(&Lua) -> mlua::Result<T> + Send + Sync + 'static,
        T: Send + 'static,
    {
        if wait::on_isle_thread(self.core.id) {
            return vec![Err(IsleError::Reentrant)];
        }
        let f = Arc::new(f);
        let tasks: Vec<_> = self
            .core
            .snapshot()
            .into_iter()
            .map(|member| {
                let f = f.clone();
                member.isle.spawn_exec(move |lua| f(lua))
            })
            .collect();
        tasks
            .into_iter()
            .map(|task| task.and_then(Task::wait))
            .collect()
    }

    /// How many members serve (spares not counted; a position being refilled counts).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
    /// assert_eq!(pool.size(), 2);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn size(&self) -> usize {
        self.core.size()
    }

    /// A snapshot of the members and of what they did; see [`PoolStats`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
    /// pool.eval::<i64>("1")?;
    /// let stats = pool.stats();
    /// assert_eq!((stats.size, stats.completed), (2, 1));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.core.stats()
    }

    /// Stops accepting requests, lets every member finish what is queued, and waits for all
    /// of them to end — members replaced earlier that still finish what they had included.
    /// Checked-out members are closed too: their guard's requests in progress or queued
    /// finish, later ones fail with [`IsleError::Shutdown`]. (With
    /// [`Isolation::FreshVm`](crate::Isolation::FreshVm), what is queued resolves
    /// [`IsleError::Shutdown`] instead of running.)
    ///
    /// # Errors
    ///
    /// [`IsleError::Abandoned`] if a member was given up on (a request that would not stop);
    /// [`IsleError::Panic`] if a member's thread panicked outside a request (while its VM
    /// closed, say) during the shutdown; [`IsleError::Reentrant`] on a member's own thread.
    ///
    /// # Blocking
    ///
    /// Blocks until every member has ended.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(2).spawn(|_| Ok(()))?;
    /// let task = pool.spawn_eval::<i64>("1")?;
    /// pool.shutdown()?;
    /// assert_eq!(task.wait()?, 1); // queued work still ran
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn shutdown(self) -> Result<(), IsleError> {
        self.shutdown_until(None)
    }

    /// As [`shutdown`](Self::shutdown), but a member still running `timeout` from now is
    /// stopped, as [`Isle::shutdown_timeout`](crate::Isle::shutdown_timeout) does.
    ///
    /// # Errors
    ///
    /// As [`shutdown`](Self::shutdown).
    ///
    /// # Blocking
    ///
    /// Blocks for at most `timeout` plus the members' grace period.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = mlua_isle::IslePool::builder().size(1).spawn(|_| Ok(()))?;
    /// let task = pool.spawn_eval::<()>("while true do end")?;
    /// pool.shutdown_timeout(Duration::from_millis(20))?;
    /// assert!(task.wait().is_err());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn shutdown_timeout(self, timeout: Duration) -> Result<(), IsleError> {
        self.shutdown_until(Some(wait::deadline_after(timeout)))
    }

    fn shutdown_until(mut self, deadline: Option<Option<Instant>>) -> Result<(), IsleError> {
        if wait::on_isle_thread(self.core.id) {
            return Err(IsleError::Reentrant);
        }
        self.core.wind_down();
        self.core.send(Event::Stop);
        // The supervisor ends once the members have taken everything queued (it replaces
        // those that die meanwhile); a shutdown with a deadline stops waiting for that then.
        let supervisor = self.supervisor.take();
        let drained = supervisor
            .as_ref()
            .is_none_or(|s| s.exited.wait_until(deadline.flatten()));
        if !drained {
            // Past the deadline: nothing queued starts any more, and no member is replaced.
            self.core.close_and_drain();
        }
        let mut result = stop_members(&self.core, deadline);
        self.core.close_and_drain();
        #[cfg(test)]
        crate::core::pause::at(crate::core::pause::Window::AwaitingSupervisor);
        if let Some(supervisor) = supervisor {
            // With the queue drained, it ends within a poll interval.
            if drained || supervisor.exited.wait_until(None) {
                let _ = supervisor.thread.join();
            }
        }
        // What the supervisor retired or put in place while the members above were stopped.
        let late = stop_members(&self.core, deadline);
        if result.is_ok() {
            result = late;
        }
        result
    }
}

/// Closes every member of a closing pool and every retired member still finishing, then waits
/// for all of them under the one deadline: past it they are stopped together, so a stuck member
/// does not hold up the stop of the others (see [`wait_for_exits`]). Joins the threads of the
/// members it owned.
///
/// [`wait_for_exits`]: crate::handle::isle::wait_for_exits
fn stop_members(core: &PoolCore, deadline: Option<Option<Instant>>) -> Result<(), IsleError> {
    let members = core.take_members();
    let mut isles = Vec::with_capacity(members.len());
    let mut threads = Vec::with_capacity(members.len());
    for member in members {
        match Arc::try_unwrap(member) {
            Ok(member) => {
                let (shared, thread) = member.isle.close_for_exit();
                isles.push(shared);
                threads.push(thread);
            }
            // Checked out: closed under its guard, it ends once its queue is done.
            Err(member) => {
                member.isle.close_and_wake();
                isles.push(member.isle.shared_state().clone());
                threads.push(None);
            }
        }
    }
    // Members replaced earlier may still be finishing what they had.
    for shared in core.take_retired() {
        isles.push(shared);
        threads.push(None);
    }
    let outcomes = crate::handle::isle::wait_for_exits(&isles, deadline);
    let mut result = Ok(());
    for (outcome, thread) in outcomes.into_iter().zip(threads) {
        let outcome = crate::handle::isle::join_after(outcome, thread);
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

impl Target for IslePool {
    fn id(&self) -> u64 {
        self.core.id
    }

    fn default_timeout(&self) -> Option<Duration> {
        self.core.default_timeout
    }
}

impl BlockingTarget for IslePool {
    fn submit(&self, job: Queued, when_full: WhenFull) -> Result<(), IsleError> {
        self.core.submit(job, when_full)
    }
}

/// A deadline too far away to matter, for a timeout too long to add to now.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl Drop for IslePool {
    fn drop(&mut self) {
        // Never blocks: members finish what is queued and end on their own.
        self.core.release();
    }
}

impl fmt::Debug for IslePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IslePool")
            .field("size", &self.size())
            .field("queued", &self.core.feed_rx.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use std::time::Duration;

    use crate::core::pause::{self, Window};
    use crate::{IsleBuilder, IslePool, Recycle};

    /// Set once the retired member's VM has closed (its last finalizer ran).
    static CLOSED: AtomicBool = AtomicBool::new(false);

    /// Dropped as the VM closes, a while after it started to.
    struct SlowToClose;

    impl Drop for SlowToClose {
        fn drop(&mut self) {
            thread::sleep(Duration::from_millis(300));
            CLOSED.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_member_retired_while_a_shutdown_takes_the_members_is_still_waited_for() {
        let pool = IslePool::builder()
            .size(1)
            .thread_name("retire-gap")
            .isle(IsleBuilder::new().grace_period(Duration::from_secs(10)))
            .recycle(Recycle::new().after_requests(1))
            .spawn(|lua| {
                // Closing the VM takes a while: its thread outlives the retirement.
                lua.globals()
                    .set("keep", lua.create_any_userdata(SlowToClose)?)
            })
            .unwrap();
        let retiring = pause::arm(Window::RetireUnrecorded, "retire-gap-supervisor");
        // The only member retires after this request; the supervisor stops after taking it
        // out of the pool, before recording it among the retired.
        pool.eval::<()>("return").unwrap();
        retiring.reached();
        let waiting = pause::arm(Window::AwaitingSupervisor, "retire-gap-closer");
        let closer = thread::Builder::new()
            .name("retire-gap-closer".to_owned())
            .spawn(move || pool.shutdown_timeout(Duration::from_millis(10)))
            .unwrap();
        // The shutdown found no member and no retired one; now the retirement is recorded.
        waiting.reached();
        retiring.release();
        waiting.release();
        let result = closer.join().unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(
            CLOSED.load(Ordering::SeqCst),
            "the retired member still runs after the shutdown returned"
        );
    }
}
