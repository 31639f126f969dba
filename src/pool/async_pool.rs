//! The async pool: its cheap `Clone` handle, its driver, and its checked-out guard.

use std::fmt;
use std::future::{poll_fn, Future};
use std::ops::Deref;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use mlua::{FromLuaMulti, IntoLuaMulti, Lua};

use super::builder::IslePoolBuilder;
use super::checkout::PooledIsle;
use super::shared::PoolCore;
use super::stats::PoolStats;
use super::supervisor::Event;
use crate::core::queue::{Queued, WhenFull};
use crate::core::slot::Slot;
use crate::core::wait;
use crate::core::watchdog::Sleep;
use crate::error::IsleError;
use crate::handle::async_isle::{Async, AsyncIsle, AsyncTarget};
use crate::handle::async_task::AsyncTask;
use crate::handle::code::Code;
use crate::handle::request::{Request, Target};

/// An async pool of isles: a cheap `Clone` handle, used from any task. Created with its
/// [`AsyncIslePoolDriver`] by [`AsyncIslePool::spawn`] or [`IslePoolBuilder::spawn_async`].
///
/// The same pool as [`IslePool`](crate::IslePool) — a shared queue served by whichever member
/// is free first, checkout, recycling, replacement — with async verbs, coroutine requests and
/// checkout futures. The pool stops taking requests when every handle is dropped (or the
/// driver shuts it down); what was accepted still runs.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mlua_isle::IsleError> {
/// let (pool, driver) = mlua_isle::AsyncIslePool::builder()
///     .size(2)
///     .spawn_async(|lua| lua.globals().set("base", 40))
///     .await?;
/// let clone = pool.clone();
/// let sum = tokio::spawn(async move { clone.eval::<i64>("base + 2").await });
/// assert_eq!(sum.await.unwrap()?, 42);
/// driver.shutdown().await
/// # }
/// ```
#[derive(Clone)]
pub struct AsyncIslePool {
    owner: Arc<Owner>,
}

/// Shared by the handles: the last one dropped releases the pool.
struct Owner {
    core: Arc<PoolCore>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.core.release();
    }
}

/// Owns an [`AsyncIslePool`]'s lifecycle: shut it down and learn how it ended.
///
/// Dropping the driver never blocks and does not stop the pool.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mlua_isle::IsleError> {
/// let (pool, driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
/// driver.shutdown().await?;
/// assert!(pool.eval::<i64>("1").await.unwrap_err().is_shutdown());
/// # Ok(())
/// # }
/// ```
pub struct AsyncIslePoolDriver {
    core: Arc<PoolCore>,
    /// Weak, so that the driver does not keep the pool open.
    owner: Weak<Owner>,
    /// Resolved when the supervisor's thread ends.
    supervisor_exited: Option<Arc<Slot<()>>>,
}

impl IslePoolBuilder {
    /// Starts the pool like [`spawn`](IslePoolBuilder::spawn), but waits for the members'
    /// `init` asynchronously, and returns the async handle and its driver.
    ///
    /// # Errors
    ///
    /// As [`spawn`](IslePoolBuilder::spawn).
    ///
    /// # Cancel safety
    ///
    /// Dropped before it completes, the members started so far end once their `init` is done.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (pool, driver) = mlua_isle::AsyncIslePool::builder()
    ///     .size(2)
    ///     .spawn_async(|lua| lua.globals().set("x", 1))
    ///     .await?;
    /// assert_eq!(pool.eval::<i64>("x").await?, 1);
    /// driver.shutdown().await
    /// # }
    /// ```
    pub async fn spawn_async<F>(
        self,
        init: F,
    ) -> Result<(AsyncIslePool, AsyncIslePoolDriver), IsleError>
    where
        F: Fn(&Lua) -> mlua::Result<()> + Send + Sync + 'static,
    {
        let parts = self.into_parts(init)?;
        let size = parts.size;
        let (core, events) = PoolCore::create(parts);
        let (launched, mut failed) = match core.launch_all() {
            Ok(launched) => (launched, None),
            Err((launched, err)) => (launched, Some(err)),
        };
        let mut members = Vec::with_capacity(size);
        for (cell, started) in launched {
            let outcome = poll_fn(|cx| started.ready.poll_take(cx)).await;
            match core.adopt(cell, started, outcome) {
                Ok(member) => members.push(member),
                Err(err) => {
                    failed.get_or_insert(err);
                }
            }
        }
        // The supervisor ends once the pool is closed and its queue empty: it is not joined.
        let supervisor = core.start(members, failed, events)?;
        let owner = Arc::new(Owner { core: core.clone() });
        let driver = AsyncIslePoolDriver {
            core,
            owner: Arc::downgrade(&owner),
            supervisor_exited: Some(supervisor.exited),
        };
        Ok((AsyncIslePool { owner }, driver))
    }
}

impl AsyncIslePool {
    /// Starts a pool of default isles, one per available core, each running `init`; see
    /// [`IslePoolBuilder::spawn_async`].
    ///
    /// # Errors
    ///
    /// As [`IslePoolBuilder::spawn`].
    ///
    /// # Cancel safety
    ///
    /// As [`IslePoolBuilder::spawn_async`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (pool, driver) = mlua_isle::AsyncIslePool::spawn(|_| Ok(())).await?;
    /// assert!(pool.size() >= 1);
    /// driver.shutdown().await
    /// # }
    /// ```
    pub async fn spawn<F>(init: F) -> Result<(AsyncIslePool, AsyncIslePoolDriver), IsleError>
    where
        F: Fn(&Lua) -> mlua::Result<()> + Send + Sync + 'static,
    {
        IslePoolBuilder::new().spawn_async(init).await
    }

    /// A builder for a configured pool (finish it with
    /// [`spawn_async`](IslePoolBuilder::spawn_async)).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (pool, driver) = mlua_isle::AsyncIslePool::builder().size(2).spawn_async(|_| Ok(())).await?;
    /// assert_eq!(pool.size(), 2);
    /// driver.shutdown().await
    /// # }
    /// ```
    pub fn builder() -> IslePoolBuilder {
        IslePoolBuilder::new()
    }

    fn core(&self) -> &Arc<PoolCore> {
        &self.owner.core
    }

    /// A request with its own deadline, cancel token or queueing policy; its verbs are async.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// let err = pool
    ///     .request()
    ///     .timeout(std::time::Duration::from_millis(20))
    ///     .eval::<()>("while true do end")
    ///     .await;
    /// assert!(err.unwrap_err().is_timeout());
    /// # Ok(())
    /// # }
    /// ```
    pub fn request(&self) -> Request<'_, AsyncIslePool, Async> {
        Request::new(self)
    }

    /// Evaluates `code` on a free member; see [`AsyncIsle::eval`].
    ///
    /// # Errors
    ///
    /// As [`AsyncIsle::eval`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the request.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// assert_eq!(pool.eval::<i64>("6 * 7").await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn eval<T>(&self, code: impl Into<Code>) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().eval(code).await
    }

    /// Evaluates `code` with `args` as its arguments (`...`) on a free member; see
    /// [`AsyncIsle::eval_with`].
    ///
    /// # Errors
    ///
    /// As [`AsyncIsle::eval`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the request.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// assert_eq!(pool.eval_with::<i64>("(...) + 1", 41).await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn eval_with<T>(
        &self,
        code: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().eval_with(code, args).await
    }

    /// Calls the global function `name` on a free member; see [`AsyncIsle::call`].
    ///
    /// # Errors
    ///
    /// As [`AsyncIsle::call`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the request.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// assert_eq!(pool.call::<String>("tostring", 5).await?, "5");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call<T>(
        &self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().call(name, args).await
    }

    /// Runs `f` with a free member's VM; see [`AsyncIsle::exec`].
    ///
    /// # Errors
    ///
    /// As [`AsyncIsle::exec`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the request.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// assert_eq!(pool.exec(|lua| lua.load("1 + 1").eval::<i64>()).await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn exec<T, F>(&self, f: F) -> Result<T, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.request().exec(f).await
    }

    /// Queues an [`eval`](Self::eval) and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// [`IsleError::Shutdown`] once the pool is shut down.
    ///
    /// # Cancel safety
    ///
    /// Dropped while waiting for room, nothing is queued.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// let task = pool.spawn_eval::<i64>("7").await?;
    /// assert_eq!(task.await?, 7);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_eval<T>(&self, code: impl Into<Code>) -> Result<AsyncTask<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().spawn_eval(code).await
    }

    /// Queues a [`call`](Self::call) and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Self::spawn_eval).
    ///
    /// # Cancel safety
    ///
    /// Dropped while waiting for room, nothing is queued.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// let task = pool.spawn_call::<String>("type", 1).await?;
    /// assert_eq!(task.await?, "number");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_call<T>(
        &self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<AsyncTask<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().spawn_call(name, args).await
    }

    /// Queues an [`exec`](Self::exec) and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Self::spawn_eval).
    ///
    /// # Cancel safety
    ///
    /// Dropped while waiting for room, nothing is queued.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// let task = pool.spawn_exec(|lua| lua.load("'hi'").eval::<String>()).await?;
    /// assert_eq!(task.await?, "hi");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_exec<T, F>(&self, f: F) -> Result<AsyncTask<T>, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.request().spawn_exec(f).await
    }

    /// Evaluates `code` as a coroutine request on a free member: it may await async Rust
    /// functions, and the member takes other requests meanwhile; see
    /// [`AsyncIsle::coroutine_eval`].
    ///
    /// # Errors
    ///
    /// As [`AsyncIsle::coroutine_eval`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the request.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (pool, _driver) = mlua_isle::AsyncIslePool::builder()
    ///     .size(1)
    ///     .spawn_async(|lua| {
    ///         let double = lua.create_async_function(|_, x: i64| async move { Ok(2 * x) })?;
    ///         lua.globals().set("double", double)
    ///     })
    ///     .await?;
    /// assert_eq!(pool.coroutine_eval::<i64>("return double(21)").await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn coroutine_eval<T>(&self, code: impl Into<Code>) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().coroutine_eval(code).await
    }

    /// Calls the global function `name` as a coroutine request on a free member; see
    /// [`AsyncIsle::coroutine_call`].
    ///
    /// # Errors
    ///
    /// As [`AsyncIsle::coroutine_call`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the request.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// assert_eq!(pool.coroutine_call::<String>("tostring", 9).await?, "9");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn coroutine_call<T>(
        &self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().coroutine_call(name, args).await
    }

    /// Checks out a member for exclusive use, waiting in the pool's queue (in turn with
    /// requests) until one is free.
    ///
    /// # Errors
    ///
    /// [`IsleError::Shutdown`] once the pool is shut down.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point leaks nothing: a checkout still queued never runs,
    /// and a member already reserved for it is returned.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// let session = pool.checkout().await?;
    /// session.exec(|lua| lua.globals().set("step", 1)).await?;
    /// assert_eq!(session.eval::<i64>("step + 1").await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn checkout(&self) -> Result<PooledAsyncIsle, IsleError> {
        self.checkout_until(None).await
    }

    /// Checks out a member, waiting at most `timeout` (a replacement's start included).
    ///
    /// # Errors
    ///
    /// [`IsleError::Timeout`] if no member was free in time; as [`checkout`](Self::checkout).
    ///
    /// # Cancel safety
    ///
    /// As [`checkout`](Self::checkout).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// let first = pool.checkout().await?;
    /// let second = pool.checkout_timeout(std::time::Duration::from_millis(20)).await;
    /// assert!(second.unwrap_err().is_timeout());
    /// drop(first);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn checkout_timeout(&self, timeout: Duration) -> Result<PooledAsyncIsle, IsleError> {
        let deadline = wait::deadline_after(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        self.checkout_until(Some(deadline)).await
    }

    async fn checkout_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<PooledAsyncIsle, IsleError> {
        if let Some(guard) = PooledIsle::at_once(self.core()) {
            return Ok(PooledAsyncIsle::new(guard));
        }
        let request = match deadline {
            Some(deadline) => self.request().deadline(deadline),
            None => self.request().no_timeout(),
        };
        let guard = request
            .kind("checkout")
            .exec_raw(PooledIsle::reserve(self.core().clone()))
            .await?;
        Ok(PooledAsyncIsle::new(guard))
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
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// let session = pool.try_checkout()?;
    /// assert!(matches!(pool.try_checkout(), Err(mlua_isle::IsleError::Full)));
    /// drop(session);
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_checkout(&self) -> Result<PooledAsyncIsle, IsleError> {
        PooledIsle::try_checkout(self.core()).map(PooledAsyncIsle::new)
    }

    /// Runs `f` on every live member and returns each member's result; see
    /// [`IslePool::broadcast_exec`](crate::IslePool::broadcast_exec).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the members' runs that have not finished.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(2).spawn_async(|_| Ok(())).await?;
    /// let results = pool.broadcast_exec(|lua| lua.globals().set("version", 2)).await;
    /// assert_eq!(results.len(), 2);
    /// assert_eq!(pool.eval::<i64>("version").await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn broadcast_exec<T, F>(&self, f: F) -> Vec<Result<T, IsleError>>
    where
        F: Fn(&Lua) -> mlua::Result<T> + Send + Sync + 'static,
        T: Send + 'static,
    {
        let f = Arc::new(f);
        let mut tasks = Vec::new();
        for member in self.core().snapshot() {
            let f = f.clone();
            tasks.push(member.isle.async_view().spawn_exec(move |lua| f(lua)).await);
        }
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(match task {
                Ok(task) => task.await,
                Err(err) => Err(err),
            });
        }
        results
    }

    /// How many positions the pool has.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(3).spawn_async(|_| Ok(())).await?;
    /// assert_eq!(pool.size(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn size(&self) -> usize {
        self.core().size()
    }

    /// A snapshot of the members and of what they did; see [`PoolStats`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// pool.eval::<i64>("1").await?;
    /// assert_eq!(pool.stats().completed, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.core().stats()
    }
}

impl Target for AsyncIslePool {
    fn id(&self) -> u64 {
        self.core().id
    }

    fn default_timeout(&self) -> Option<Duration> {
        self.core().default_timeout
    }
}

impl AsyncTarget for AsyncIslePool {
    fn submit_async(
        &self,
        job: Queued,
        when_full: WhenFull,
    ) -> impl Future<Output = Result<(), IsleError>> + Send {
        self.core().submit_async(job, when_full)
    }

    fn answers_soon(&self) -> bool {
        self.core().feed_rx.len() <= 1
    }
}

impl AsyncIslePoolDriver {
    /// A snapshot of the members and of what they did; see [`PoolStats`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (_pool, driver) = mlua_isle::AsyncIslePool::builder().size(2).spawn_async(|_| Ok(())).await?;
    /// assert_eq!(driver.stats().size, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.core.stats()
    }

    /// Stops accepting requests (from every handle), lets the members finish what is queued,
    /// and waits for all of them to end. Checked-out members are closed too: their guard's
    /// requests in progress or queued finish, later ones fail with [`IsleError::Shutdown`].
    ///
    /// # Errors
    ///
    /// [`IsleError::Abandoned`] if a member was given up on; [`IsleError::Panic`] if a
    /// member's thread panicked outside a request (while its VM closed, say) during the
    /// shutdown; [`IsleError::Reentrant`] when awaited on a member's own thread.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not undo the shutdown: the members still finish and end.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (pool, driver) = mlua_isle::AsyncIslePool::builder().size(2).spawn_async(|_| Ok(())).await?;
    /// let task = pool.spawn_eval::<i64>("1").await?;
    /// driver.shutdown().await?;
    /// assert_eq!(task.await?, 1); // accepted work finished
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(self) -> Result<(), IsleError> {
        self.shutdown_until(None).await
    }

    /// As [`shutdown`](Self::shutdown), but a member still running `timeout` from now is
    /// stopped, as [`AsyncIsleDriver::shutdown_timeout`](crate::AsyncIsleDriver::shutdown_timeout)
    /// does.
    ///
    /// # Errors
    ///
    /// As [`shutdown`](Self::shutdown).
    ///
    /// # Cancel safety
    ///
    /// As [`shutdown`](Self::shutdown).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (pool, driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// let task = pool.spawn_eval::<()>("while true do end").await?;
    /// driver.shutdown_timeout(std::time::Duration::from_millis(20)).await?;
    /// assert!(task.await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown_timeout(self, timeout: Duration) -> Result<(), IsleError> {
        self.shutdown_until(Some(wait::deadline_after(timeout)))
            .await
    }

    async fn shutdown_until(self, deadline: Option<Option<Instant>>) -> Result<(), IsleError> {
        if wait::on_isle_thread(self.core.id) {
            return Err(IsleError::Reentrant);
        }
        self.core.wind_down();
        self.core.send(Event::Stop);
        // The supervisor ends once the members have taken everything queued.
        if let Some(exited) = &self.supervisor_exited {
            let mut sleep = deadline.flatten().map(|d| Box::pin(Sleep::until(d)));
            let drained = poll_fn(|cx| {
                if exited.poll_ready(cx).is_ready() {
                    return Poll::Ready(true);
                }
                match &mut sleep {
                    Some(sleep) => sleep.as_mut().poll(cx).map(|()| false),
                    None => Poll::Pending,
                }
            })
            .await;
            if !drained {
                // Past the deadline: nothing queued starts any more, and no member is replaced.
                self.core.close_and_drain();
            }
        }
        let mut result = stop_members(&self.core, deadline).await;
        self.core.close_and_drain();
        #[cfg(test)]
        crate::core::pause::at(crate::core::pause::Window::AwaitingSupervisor);
        if let Some(exited) = &self.supervisor_exited {
            // With the queue drained, it ends within a poll interval.
            poll_fn(|cx| exited.poll_ready(cx)).await;
        }
        // What the supervisor retired or put in place while the members above were stopped.
        let late = stop_members(&self.core, deadline).await;
        if result.is_ok() {
            result = late;
        }
        drop(self.owner);
        result
    }
}

/// As `IslePool`'s: closes every member and every retired member still finishing, then waits
/// for all of them under the one deadline, so a stuck member does not hold up the stop of the
/// others. (The members' threads are not joined: they end on their own once closed.)
async fn stop_members(core: &PoolCore, deadline: Option<Option<Instant>>) -> Result<(), IsleError> {
    let members = core.take_members();
    let mut isles: Vec<_> = members
        .iter()
        .map(|member| {
            member.isle.close_and_wake();
            member.isle.shared_state().clone()
        })
        .collect();
    // Members replaced earlier may still be finishing what they had.
    isles.extend(core.take_retired());
    let mut result = Ok(());
    for outcome in crate::handle::async_isle::wait_for_exits(&isles, deadline).await {
        if result.is_ok() {
            result = outcome;
        }
    }
    drop(members);
    result
}

/// One member of an [`AsyncIslePool`], checked out for exclusive use: an async isle handle
/// (it derefs to [`AsyncIsle`]) that nobody else's requests start on while it lives.
///
/// Owned and `'static`: it moves into tasks. Dropping it returns the member to the pool;
/// [`discard`](PooledAsyncIsle::discard) has it replaced instead.
///
/// # Caveats
///
/// Coroutine requests the member was running for others when it was checked out go on
/// between the holder's requests. A clone of the [`AsyncIsle`] it derefs to outlives the
/// checkout: requests through such a clone after the guard is dropped run on a member that
/// is back in service, or fail with [`IsleError::Shutdown`] once the member was replaced.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mlua_isle::IsleError> {
/// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(2).spawn_async(|_| Ok(())).await?;
/// let session = pool.checkout().await?;
/// let step = tokio::spawn(async move {
///     session.exec(|lua| lua.globals().set("step", 1)).await?;
///     session.eval::<i64>("step").await
/// });
/// assert_eq!(step.await.unwrap()?, 1);
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a checked-out member returns it at once"]
pub struct PooledAsyncIsle {
    // Field order is drop order: the view's queue handle goes before the member is returned.
    view: AsyncIsle,
    guard: PooledIsle,
}

impl PooledAsyncIsle {
    fn new(guard: PooledIsle) -> Self {
        PooledAsyncIsle {
            view: guard.async_view(),
            guard,
        }
    }

    /// Replaces this member with a fresh VM instead of returning it; see
    /// [`PooledIsle::discard`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (pool, _driver) = mlua_isle::AsyncIslePool::builder().size(1).spawn_async(|_| Ok(())).await?;
    /// let session = pool.checkout().await?;
    /// session.exec(|lua| lua.globals().set("dirty", true)).await?;
    /// session.discard();
    /// assert!(!pool.eval::<bool>("dirty ~= nil").await?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn discard(self) {
        let PooledAsyncIsle { view, guard } = self;
        drop(view);
        guard.discard();
    }
}

impl Deref for PooledAsyncIsle {
    type Target = AsyncIsle;

    fn deref(&self) -> &AsyncIsle {
        &self.view
    }
}

impl fmt::Debug for PooledAsyncIsle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledAsyncIsle")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for AsyncIslePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncIslePool")
            .field("size", &self.size())
            .field("queued", &self.core().feed_rx.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for AsyncIslePoolDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncIslePoolDriver")
            .field("size", &self.core.size())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use std::time::Duration;

    use crate::core::pause::{self, Window};
    use crate::{AsyncIslePool, IsleBuilder, Recycle};

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

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_member_retired_while_a_shutdown_takes_the_members_is_still_waited_for() {
        let (pool, driver) = runtime()
            .block_on(
                AsyncIslePool::builder()
                    .size(1)
                    .thread_name("aretire-gap")
                    .isle(IsleBuilder::new().grace_period(Duration::from_secs(10)))
                    .recycle(Recycle::new().after_requests(1))
                    .spawn_async(|lua| {
                        // Closing the VM takes a while: its thread outlives the retirement.
                        lua.globals()
                            .set("keep", lua.create_any_userdata(SlowToClose)?)
                    }),
            )
            .unwrap();
        let retiring = pause::arm(Window::RetireUnrecorded, "aretire-gap-supervisor");
        // The only member retires after this request; the supervisor stops after taking it
        // out of the pool, before recording it among the retired.
        runtime().block_on(pool.eval::<()>("return")).unwrap();
        retiring.reached();
        let waiting = pause::arm(Window::AwaitingSupervisor, "aretire-gap-closer");
        let closer = thread::Builder::new()
            .name("aretire-gap-closer".to_owned())
            .spawn(move || runtime().block_on(driver.shutdown_timeout(Duration::from_millis(10))))
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
        drop(pool);
    }
}
