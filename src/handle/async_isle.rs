//! The async API (`tokio` feature): [`AsyncIsle`], a cheap handle to share between tasks, and
//! [`AsyncIsleDriver`], which owns the isle's lifecycle.
//!
//! It is the same isle as [`Isle`](crate::Isle) — same builder, same Lua thread, same requests
//! — with waits that yield to the executor instead of blocking the thread.

use std::fmt;
use std::future::{poll_fn, Future};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use mlua::{FromLuaMulti, IntoLuaMulti, Lua};

use crate::core::isle_thread::IsleThread;
use crate::core::queue::{Handle, Job, Queued, Shared, WhenFull, Where};
use crate::core::slot::Slot;
use crate::core::wait;
use crate::core::watchdog::Sleep;
use crate::error::IsleError;
use crate::handle::async_task::AsyncTask;
use crate::handle::builder::{returning, IsleBuilder, Launched};
use crate::handle::code::Code;
use crate::handle::isle;
use crate::handle::request::{IsleHandle, Request, Target};
use crate::lua_thread::executor::Coroutine;
use crate::lua_thread::vm::Vm;

/// An async handle to a Lua VM running on its own thread.
///
/// `Clone` is cheap (one reference count); clones share the isle. The isle's thread ends once
/// every `AsyncIsle` is dropped and the accepted work is done, or when its
/// [`AsyncIsleDriver`] shuts it down.
///
/// Requests are the ones of [`Isle`](crate::Isle), awaited instead of waited for; while the
/// queue is full, submitting waits (asynchronously) for room.
///
/// # Examples
///
/// ```
/// use mlua_isle::AsyncIsle;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mlua_isle::IsleError> {
/// let (isle, driver) = AsyncIsle::spawn(|lua| {
///     lua.load("function greet(name) return 'hello ' .. name end").exec()
/// })
/// .await?;
/// let clone = isle.clone();
/// let greeting = tokio::spawn(async move { clone.call::<String>("greet", "tokio").await });
/// assert_eq!(greeting.await.unwrap()?, "hello tokio");
/// driver.shutdown().await
/// # }
/// ```
#[derive(Clone)]
pub struct AsyncIsle {
    handle: Arc<Handle>,
}

#[cfg(test)]
impl AsyncIsle {
    /// The isle's shared state, for tests that look inside.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }
}

/// Owns an [`AsyncIsle`]'s lifecycle: shut it down and learn how it ended.
///
/// Dropping the driver never blocks and does not stop the isle: its thread ends once every
/// `AsyncIsle` is dropped and the accepted work is done.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mlua_isle::IsleError> {
/// let (isle, driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
/// assert!(driver.is_alive());
/// driver.shutdown().await?;
/// assert!(isle.eval::<i64>("1").await.unwrap_err().is_shutdown());
/// # Ok(())
/// # }
/// ```
pub struct AsyncIsleDriver {
    /// Weak, so that the driver does not keep the queue open.
    handle: Weak<Handle>,
    shared: Arc<Shared>,
    thread: Option<IsleThread>,
}

impl IsleBuilder {
    /// Starts the isle like [`spawn`](IsleBuilder::spawn), but waits for `init`
    /// asynchronously, and returns the async handle and its driver.
    ///
    /// # Errors
    ///
    /// As [`spawn`](IsleBuilder::spawn).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes lets the isle start anyway; its thread ends at
    /// once after `init`, as no handle is left.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (isle, driver) = mlua_isle::AsyncIsle::builder()
    ///     .queue_capacity(64)
    ///     .spawn_async(|lua| lua.globals().set("x", 1))
    ///     .await?;
    /// assert_eq!(isle.eval::<i64>("x").await?, 1);
    /// driver.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_async<F>(self, init: F) -> Result<(AsyncIsle, AsyncIsleDriver), IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<()> + Send + 'static,
    {
        let (isle, driver, ()) = self.spawn_async_with(init).await?;
        Ok((isle, driver))
    }

    /// Like [`spawn_async`](IsleBuilder::spawn_async), but `init` returns a value, handed to
    /// the caller with the isle and its driver; see [`spawn_with`](IsleBuilder::spawn_with).
    ///
    /// # Errors
    ///
    /// As [`spawn_with`](IsleBuilder::spawn_with).
    ///
    /// # Cancel safety
    ///
    /// As [`spawn_async`](IsleBuilder::spawn_async); the value `init` returns is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (isle, driver, loaded) = mlua_isle::AsyncIsle::builder()
    ///     .spawn_async_with(|lua| {
    ///         lua.load("rules = { 'a', 'b', 'c' }").exec()?;
    ///         lua.load("#rules").eval::<i64>()
    ///     })
    ///     .await?;
    /// assert_eq!(loaded, 3);
    /// assert_eq!(isle.eval::<String>("rules[1]").await?, "a");
    /// driver.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_async_with<T, F>(
        self,
        init: F,
    ) -> Result<(AsyncIsle, AsyncIsleDriver, T), IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (init, value) = returning(init);
        let launched = self.launch(init)?;
        let outcome = poll_fn(|cx| launched.ready.poll_take(cx)).await;
        let Launched { handle, thread, .. } = launched.started(outcome)?;
        let shared = handle.shared.clone();
        let handle = Arc::new(handle);
        let driver = AsyncIsleDriver {
            handle: Arc::downgrade(&handle),
            shared,
            thread: Some(thread),
        };
        Ok((AsyncIsle { handle }, driver, value.take()))
    }
}

impl AsyncIsle {
    /// An async handle over an existing isle's queue.
    pub(crate) fn from_handle(handle: Arc<Handle>) -> Self {
        AsyncIsle { handle }
    }

    /// The isle's queue, without keeping it open (for a function handle).
    pub(crate) fn downgrade(&self) -> Weak<Handle> {
        Arc::downgrade(&self.handle)
    }

    /// Starts an isle with the default settings and runs `init` on its VM; see
    /// [`IsleBuilder::spawn_async`].
    ///
    /// # Errors
    ///
    /// [`IsleError::Init`] if `init` fails or panics, [`IsleError::Spawn`] if the thread cannot
    /// be started.
    ///
    /// # Cancel safety
    ///
    /// As [`IsleBuilder::spawn_async`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|lua| lua.globals().set("x", 2)).await?;
    /// assert_eq!(isle.eval::<i64>("x * 21").await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn<F>(init: F) -> Result<(AsyncIsle, AsyncIsleDriver), IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<()> + Send + 'static,
    {
        IsleBuilder::new().spawn_async(init).await
    }

    /// Starts an isle with the default settings and runs `init` on its VM, handing its value
    /// to the caller with the isle and its driver; see [`IsleBuilder::spawn_async_with`].
    ///
    /// # Errors
    ///
    /// As [`spawn`](AsyncIsle::spawn).
    ///
    /// # Cancel safety
    ///
    /// As [`IsleBuilder::spawn_async_with`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// use tokio::sync::mpsc;
    ///
    /// let (isle, _driver, mut events) = mlua_isle::AsyncIsle::spawn_with(|lua| {
    ///     let (tx, rx) = mpsc::unbounded_channel::<i64>();
    ///     let emit = lua.create_function(move |_, n: i64| Ok(tx.send(n).is_ok()))?;
    ///     lua.globals().set("emit", emit)?;
    ///     Ok(rx)
    /// })
    /// .await?;
    /// isle.eval::<bool>("emit(7)").await?;
    /// assert_eq!(events.recv().await, Some(7));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_with<T, F>(init: F) -> Result<(AsyncIsle, AsyncIsleDriver, T), IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        IsleBuilder::new().spawn_async_with(init).await
    }

    /// Returns the builder; finish with [`IsleBuilder::spawn_async`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (isle, _driver) = mlua_isle::AsyncIsle::builder().spawn_async(|_| Ok(())).await?;
    /// assert!(isle.is_alive());
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> IsleBuilder {
        IsleBuilder::new()
    }

    /// Starts a request with options: a deadline, a cancel token, the queue policy.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let err = isle
    ///     .request()
    ///     .timeout(Duration::from_millis(10))
    ///     .eval::<()>("while true do end")
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.is_timeout());
    /// # Ok(())
    /// # }
    /// ```
    pub fn request(&self) -> Request<'_, AsyncIsle, Async> {
        Request::new(self)
    }

    /// Evaluates `code`; see [`Request::eval`](Request#method.eval-1).
    ///
    /// # Errors
    ///
    /// As the blocking [`Isle::eval`](crate::Isle::eval), without `Reentrant`.
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// assert_eq!(isle.eval::<i64>("1 + 1").await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn eval<T>(&self, code: impl Into<Code>) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().eval(code).await
    }

    /// Evaluates `code` with `args` as its arguments (`...`); see
    /// [`Request::eval_with`](Request#method.eval_with-1).
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let joined: String = isle.eval_with("table.concat({...}, '-')", ("a", "b")).await?;
    /// assert_eq!(joined, "a-b");
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

    /// Calls the global function `name` with `args`.
    ///
    /// # Errors
    ///
    /// As [`Isle::call`](crate::Isle::call), without `Reentrant`.
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// assert_eq!(isle.call::<String>("tostring", 5).await?, "5");
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

    /// Runs `f` with the VM on the Lua thread.
    ///
    /// # Errors
    ///
    /// As [`Isle::exec`](crate::Isle::exec), without `Reentrant`.
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let n = isle.exec(|lua| lua.load("return 3").eval::<i64>()).await?;
    /// assert_eq!(n, 3);
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

    /// Queues an eval and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// [`IsleError::Shutdown`] when the isle no longer accepts requests.
    ///
    /// # Cancel safety
    ///
    /// Dropped while waiting for room in the queue, nothing is queued.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.spawn_eval::<i64>("return 1").await?;
    /// assert_eq!(task.await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_eval<T>(&self, code: impl Into<Code>) -> Result<AsyncTask<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().spawn_eval(code).await
    }

    /// Queues a call and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](AsyncIsle::spawn_eval).
    ///
    /// # Cancel safety
    ///
    /// As [`spawn_eval`](AsyncIsle::spawn_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.spawn_call::<i64>("select", ("#", 1, 2)).await?;
    /// assert_eq!(task.await?, 2);
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

    /// Queues an exec and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](AsyncIsle::spawn_eval).
    ///
    /// # Cancel safety
    ///
    /// As [`spawn_eval`](AsyncIsle::spawn_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.spawn_exec(|_| Ok("done")).await?;
    /// assert_eq!(task.await?, "done");
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

    /// Evaluates `code` as a coroutine on the isle's thread. The code may call async Rust
    /// functions (registered with `Lua::create_async_function`): while it awaits one, the
    /// isle serves other requests and coroutines. The isle's thread runs a current-thread tokio
    /// runtime for these, so async host functions can use tokio's timers, channels and (with
    /// tokio's `net`/`fs` features) I/O.
    ///
    /// # Errors
    ///
    /// As [`eval`](AsyncIsle::eval).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the request, which drops the Rust future the coroutine is
    /// awaiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|lua| {
    ///     let sleep = lua.create_async_function(|_, ms: u64| async move {
    ///         tokio::time::sleep(Duration::from_millis(ms)).await;
    ///         Ok(ms)
    ///     })?;
    ///     lua.globals().set("sleep", sleep)
    /// })
    /// .await?;
    /// assert_eq!(isle.coroutine_eval::<u64>("return sleep(5)").await?, 5);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn coroutine_eval<T>(&self, code: impl Into<Code>) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().coroutine_eval(code).await
    }

    /// Calls the global function `name` with `args` as a coroutine; see
    /// [`coroutine_eval`](AsyncIsle::coroutine_eval).
    ///
    /// # Errors
    ///
    /// As [`call`](AsyncIsle::call).
    ///
    /// # Cancel safety
    ///
    /// As [`coroutine_eval`](AsyncIsle::coroutine_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|lua| {
    /// #     lua.load("function twice(x) coroutine.yield() return 2 * x end").exec()
    /// # }).await?;
    /// assert_eq!(isle.coroutine_call::<i64>("twice", 21).await?, 42);
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

    /// Queues a coroutine eval and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](AsyncIsle::spawn_eval).
    ///
    /// # Cancel safety
    ///
    /// As [`spawn_eval`](AsyncIsle::spawn_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.spawn_coroutine_eval::<i64>("return 3").await?;
    /// assert_eq!(task.await?, 3);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_coroutine_eval<T>(
        &self,
        code: impl Into<Code>,
    ) -> Result<AsyncTask<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().spawn_coroutine_eval(code).await
    }

    /// Queues a coroutine call and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](AsyncIsle::spawn_eval).
    ///
    /// # Cancel safety
    ///
    /// As [`spawn_eval`](AsyncIsle::spawn_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.spawn_coroutine_call::<String>("type", true).await?;
    /// assert_eq!(task.await?, "boolean");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_coroutine_call<T>(
        &self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<AsyncTask<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().spawn_coroutine_call(name, args).await
    }

    /// Whether the Lua thread is still serving requests.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// assert!(isle.is_alive());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_alive(&self) -> bool {
        self.handle.shared.is_alive()
    }
}

impl IsleHandle for AsyncIsle {
    fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// What the async verbs of a [`Request`] can be made on: an async isle, or an async pool.
pub(crate) trait AsyncTarget: Target + Sync {
    /// Queues `job`, waiting asynchronously for room (unless `when_full` says fail). Cancel
    /// safe: dropped while waiting, it drops the job, which resolves its request.
    fn submit_async(
        &self,
        job: Queued,
        when_full: WhenFull,
    ) -> impl Future<Output = Result<(), IsleError>> + Send;

    /// Whether a request queued now is likely answered within microseconds (nothing much
    /// ahead of it): its task then spins briefly on the first poll.
    fn answers_soon(&self) -> bool;
}

/// Marks a [`Request`] whose verbs are async (on an [`AsyncIsle`]).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mlua_isle::IsleError> {
/// let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
/// let request: mlua_isle::Request<'_, mlua_isle::AsyncIsle, mlua_isle::Async> = isle.request();
/// assert_eq!(request.eval::<i64>("1").await?, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Async;

impl Target for AsyncIsle {
    fn id(&self) -> u64 {
        self.handle.shared.id
    }

    fn default_timeout(&self) -> Option<Duration> {
        self.handle.shared.default_timeout
    }
}

impl AsyncTarget for AsyncIsle {
    fn submit_async(
        &self,
        job: Queued,
        when_full: WhenFull,
    ) -> impl Future<Output = Result<(), IsleError>> + Send {
        self.handle.submit_async(job, when_full)
    }

    fn answers_soon(&self) -> bool {
        self.handle.tx.len() <= 1
    }
}

/// The async verbs; the options are those of every [`Request`].
#[allow(private_bounds)]
impl<I: AsyncTarget> Request<'_, I, Async> {
    /// Evaluates `code` and converts its result to `T`; see the blocking
    /// [`Request::eval`](Request#method.eval).
    ///
    /// # Errors
    ///
    /// As the blocking `eval`, without `Reentrant`.
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let n: i64 = isle.request().no_timeout().eval("2 ^ 8").await?;
    /// assert_eq!(n, 256);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn eval<T>(self, code: impl Into<Code>) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.spawn_eval(code).await?.await
    }

    /// Evaluates `code` with `args` as the chunk's arguments (its `...`), as
    /// [`Request::eval_with`](Request#method.eval_with) does.
    ///
    /// # Errors
    ///
    /// As [`eval`](Request#method.eval-1).
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let n: i64 = isle.request().eval_with("(...) * 2", 21).await?;
    /// assert_eq!(n, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn eval_with<T>(
        self,
        code: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.spawn_eval_with(code, args).await?.await
    }

    /// Calls the global function `name` with `args`.
    ///
    /// # Errors
    ///
    /// As the blocking `call`, without `Reentrant`.
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// assert_eq!(isle.request().call::<i64>("math.floor", 1.5).await.is_err(), true);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call<T>(
        self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.spawn_call(name, args).await?.await
    }

    /// Runs `f` with the VM on the Lua thread.
    ///
    /// # Errors
    ///
    /// As the blocking `exec`, without `Reentrant`.
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// isle.request().exec(|lua| lua.globals().set("y", 1)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn exec<T, F>(self, f: F) -> Result<T, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_exec(f).await?.await
    }

    /// Queues an eval and returns its [`AsyncTask`], waiting for room in the queue (or
    /// failing with [`IsleError::Full`] under [`try_enqueue`](Request::try_enqueue)).
    ///
    /// # Errors
    ///
    /// [`IsleError::Shutdown`] when the isle no longer accepts requests, [`IsleError::Full`]
    /// with `try_enqueue`.
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.request().try_enqueue().spawn_eval::<i64>("7").await?;
    /// assert_eq!(task.await?, 7);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_eval<T>(self, code: impl Into<Code>) -> Result<AsyncTask<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        let code = code.into();
        self.kind("eval")
            .submit(move |vm: &mut Vm| vm.eval::<T>(code.as_str()))
            .await
    }

    /// Queues an [`eval_with`](Request#method.eval_with-1) and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Request#method.spawn_eval-1).
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.request().spawn_eval_with::<i64>("#(...)", "four").await?;
    /// assert_eq!(task.await?, 4);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_eval_with<T>(
        self,
        code: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<AsyncTask<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        let code = code.into();
        self.kind("eval")
            .submit(move |vm: &mut Vm| vm.eval_with::<T>(code.as_str(), args))
            .await
    }

    /// Queues a call and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Request#method.spawn_eval-1).
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.request().spawn_call::<String>("type", 1).await?;
    /// assert_eq!(task.await?, "number");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_call<T>(
        self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<AsyncTask<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        let name = name.into();
        self.kind("call")
            .submit(move |vm: &mut Vm| vm.call::<T>(name.as_str(), args))
            .await
    }

    /// Queues an exec and returns its [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Request#method.spawn_eval-1).
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.request().spawn_exec(|_| Ok(1u8)).await?;
    /// assert_eq!(task.await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_exec<T, F>(self, f: F) -> Result<AsyncTask<T>, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit(move |vm: &mut Vm| f(vm.lua()).map_err(IsleError::from))
            .await
    }

    /// Evaluates `code` as a coroutine that may await async Rust functions (registered with
    /// `Lua::create_async_function`); while it awaits, the isle serves other requests and
    /// coroutines. See [`AsyncIsle::coroutine_eval`].
    ///
    /// # Errors
    ///
    /// As [`eval`](Request#method.eval-1).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the request, which drops the Rust future the coroutine is
    /// awaiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let n: i64 = isle
    ///     .request()
    ///     .timeout(Duration::from_secs(5))
    ///     .coroutine_eval("coroutine.yield() return 4")
    ///     .await?;
    /// assert_eq!(n, 4);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn coroutine_eval<T>(self, code: impl Into<Code>) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.spawn_coroutine_eval(code).await?.await
    }

    /// Calls the global function `name` with `args` as a coroutine; see
    /// [`coroutine_eval`](Request#method.coroutine_eval).
    ///
    /// # Errors
    ///
    /// As [`call`](Request#method.call-1).
    ///
    /// # Cancel safety
    ///
    /// As [`coroutine_eval`](Request#method.coroutine_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let s: String = isle.request().coroutine_call("tostring", 9).await?;
    /// assert_eq!(s, "9");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn coroutine_call<T>(
        self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.spawn_coroutine_call(name, args).await?.await
    }

    /// Queues a [`coroutine_eval`](Request#method.coroutine_eval) and returns its
    /// [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Request#method.spawn_eval-1).
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.request().spawn_coroutine_eval::<i64>("return 1").await?;
    /// assert_eq!(task.await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_coroutine_eval<T>(
        self,
        code: impl Into<Code>,
    ) -> Result<AsyncTask<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        let code = code.into();
        self.kind("coroutine_eval")
            .submit(Coroutine(move |vm: &mut Vm| {
                vm.coroutine_eval::<T>(code.as_str())
            }))
            .await
    }

    /// Queues a [`coroutine_call`](Request#method.coroutine_call) and returns its
    /// [`AsyncTask`].
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Request#method.spawn_eval-1).
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
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.request().spawn_coroutine_call::<i64>("select", ("#", 1)).await?;
    /// assert_eq!(task.await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_coroutine_call<T>(
        self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<AsyncTask<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        let name = name.into();
        self.kind("coroutine_call")
            .submit(Coroutine(move |vm: &mut Vm| {
                let function = vm.global_function(name.as_str())?;
                vm.coroutine::<T>(function, args)
            }))
            .await
    }

    /// Runs `work` on the VM and waits for its result.
    pub(crate) async fn exec_raw<T, W>(self, work: W) -> Result<T, IsleError>
    where
        T: Send + 'static,
        W: FnOnce(&mut Vm) -> Result<T, IsleError> + Send + 'static,
    {
        self.submit(work).await?.await
    }

    pub(crate) async fn submit<T, W>(self, work: W) -> Result<AsyncTask<T>, IsleError>
    where
        T: Send + 'static,
        W: Send + 'static,
        Slot<T, W>: Job,
    {
        let prepared = self.prepare(work);
        if let Some(job) = prepared.job() {
            self.isle.submit_async(job, self.when_full).await?;
        }
        // Alone in the queue, the request is likely answered within microseconds: worth a
        // brief wait on the first poll. Behind others, the caller had better yield at once.
        let spin = self.isle.answers_soon();
        Ok(AsyncTask::new(
            prepared.slot,
            prepared.token,
            prepared.deadline,
            self.isle.id(),
            spin,
        ))
    }
}

impl AsyncIsleDriver {
    /// Whether the Lua thread is still serving requests.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (_isle, driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// assert!(driver.is_alive());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_alive(&self) -> bool {
        self.shared.is_alive()
    }

    /// Stops accepting requests (from every [`AsyncIsle`] clone), lets the accepted ones
    /// finish, then joins the Lua thread.
    ///
    /// # Errors
    ///
    /// [`IsleError::Panic`] if the Lua thread panicked outside a request,
    /// [`IsleError::Abandoned`] if the isle gave up on a request that could not be
    /// interrupted, [`IsleError::Reentrant`] when awaited on the isle's own thread.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not undo the shutdown: the isle still finishes its accepted
    /// work and ends.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (isle, driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.spawn_eval::<i64>("return 1").await?;
    /// driver.shutdown().await?;
    /// assert_eq!(task.await?, 1); // accepted work finished
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(self) -> Result<(), IsleError> {
        self.shutdown_until(None).await
    }

    /// Like [`shutdown`](AsyncIsleDriver::shutdown), but after `timeout` everything still
    /// queued or running — coroutine requests included — is stopped and resolved with
    /// [`IsleError::Shutdown`]; then the thread is joined.
    ///
    /// # Errors
    ///
    /// [`IsleError::Abandoned`] if the running request does not stop within the grace period
    /// after being interrupted (its thread is then left to end on its own); otherwise as
    /// [`shutdown`](AsyncIsleDriver::shutdown).
    ///
    /// # Cancel safety
    ///
    /// As [`shutdown`](AsyncIsleDriver::shutdown).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// let (isle, driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let stuck = isle.spawn_eval::<()>("while true do end").await?;
    /// driver.shutdown_timeout(Duration::from_millis(10)).await?;
    /// assert!(stuck.await.unwrap_err().is_shutdown());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown_timeout(self, timeout: Duration) -> Result<(), IsleError> {
        self.shutdown_until(Some(wait::deadline_after(timeout)))
            .await
    }

    /// `deadline`: `None` to wait forever, `Some(None)` for a timeout too long to represent.
    async fn shutdown_until(mut self, deadline: Option<Option<Instant>>) -> Result<(), IsleError> {
        let shared = self.shared.clone();
        if wait::on_isle_thread(shared.id) {
            return Err(IsleError::Reentrant);
        }
        shared.close();
        if let Some(handle) = self.handle.upgrade() {
            handle.wake();
        }
        // The thread has ended (or is ending): joining does not block for long.
        isle::join_after(wait_for_exit(&shared, deadline).await, self.thread.take())
    }
}

/// [`wait_for_exit`] for several closed isles under one deadline, as
/// [`isle::wait_for_exits`](crate::handle::isle::wait_for_exits) does.
pub(crate) async fn wait_for_exits(
    isles: &[Arc<Shared>],
    deadline: Option<Option<Instant>>,
) -> Vec<Result<(), IsleError>> {
    if let Some(deadline) = deadline {
        let mut late = Vec::new();
        // One absolute deadline: once it has passed, the later isles are only looked at.
        for shared in isles {
            if !exited_by(shared, deadline).await {
                late.push(shared);
            }
        }
        let killed: Vec<_> = late
            .into_iter()
            .map(|shared| (shared, crate::handle::isle::kill_and_drain(shared)))
            .collect();
        for (shared, killed_at) in killed {
            if !exited_by(shared, killed_at.checked_add(shared.grace)).await {
                shared.give_up(None, IsleError::Shutdown, Where::Here);
            }
        }
    }
    let mut outcomes = Vec::with_capacity(isles.len());
    for shared in isles {
        outcomes.push(exit_outcome(shared).await);
    }
    outcomes
}

/// Waits for the Lua thread of a closed isle to end; with a deadline (`Some`), kills what still
/// runs then and gives up on it after the grace period.
pub(crate) async fn wait_for_exit(
    shared: &Arc<Shared>,
    deadline: Option<Option<Instant>>,
) -> Result<(), IsleError> {
    let mut outcomes = wait_for_exits(std::slice::from_ref(shared), deadline).await;
    outcomes.pop().unwrap_or(Ok(()))
}

/// Waits for the Lua thread of a closed isle to end (or for the isle to give up on it) and
/// reports which.
async fn exit_outcome(shared: &Shared) -> Result<(), IsleError> {
    exited_by(shared, None).await;
    isle::ended_outcome(shared)
}

/// Waits until the isle's thread has ended (or was given up on), or until `deadline`; returns
/// whether it has.
async fn exited_by(shared: &Shared, deadline: Option<Instant>) -> bool {
    let mut sleep = deadline.map(|d| Box::pin(Sleep::until(d)));
    let exited = &shared.exited;
    poll_fn(|cx| {
        if exited.poll_ready(cx).is_ready() {
            return Poll::Ready(true);
        }
        match &mut sleep {
            Some(sleep) => sleep.as_mut().poll(cx).map(|()| false),
            None => Poll::Pending,
        }
    })
    .await
}

impl fmt::Debug for AsyncIsle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncIsle")
            .field("alive", &self.is_alive())
            .field("queued", &self.handle.tx.len())
            .finish()
    }
}

impl fmt::Debug for AsyncIsleDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncIsleDriver")
            .field("alive", &self.is_alive())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_futures_are_send() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<AsyncIsle>();
        send_sync::<AsyncIsleDriver>();
        send_sync::<AsyncTask<String>>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (isle, driver) = runtime.block_on(AsyncIsle::spawn(|_| Ok(()))).unwrap();
        send(&isle.eval::<i64>("1"));
        send(&isle.request().call::<i64>("f", 1));
        send(&AsyncIsle::spawn(|_| Ok(())));
        send(&driver.shutdown());
    }
}
