//! [`FunctionHandle`]: a Lua function kept in an isle's VM, called later from any thread; and
//! the requests that hand one out and call it, on [`Isle`], [`AsyncIsle`] and their
//! [`Request`]s.
//!
//! [`AsyncIsle`]: crate::AsyncIsle

use std::fmt;
use std::sync::{Arc, Weak};

use mlua::{FromLuaMulti, Function, IntoLuaMulti};

use crate::core::queue::{Handle, Queued};
use crate::core::release::Releases;
use crate::core::token::CancelToken;
use crate::error::IsleError;
use crate::handle::code::Code;
use crate::handle::isle::Isle;
use crate::handle::request::{Blocking, Request, Target};
use crate::handle::task::Task;
use crate::lua_thread::functions::ReleaseJob;
use crate::lua_thread::vm::Vm;

/// A Lua function kept in an isle's VM, to be called later from any thread.
///
/// Made by [`Isle::function`] (a global function, by name) or [`Isle::eval_function`] (the
/// function a chunk evaluates to, a closure with its upvalues say), and by their async forms.
/// The function itself never leaves the isle's thread: the handle is a key to it, so it is
/// `Send + Sync`, cheap to clone, and calls go through the isle's queue like any request
/// ([`Isle::call_function`], [`Isle::spawn_call_function`], [`Request::call_function`]), with
/// the same cancellation, deadlines and panic isolation.
///
/// A handle belongs to the isle that made it: used on another isle (or on another member of a
/// pool), a call fails with [`IsleError::ForeignFunction`] without running anything.
///
/// The VM keeps the function while any clone of the handle lives. When the last one is
/// dropped, on whatever thread, the isle's thread frees it after the job it is busy with (or
/// at once, through a message, if it is idle): the VM no longer holds it, and Lua's garbage
/// collector reclaims it with its upvalues. Dropping a handle never blocks, and is fine after
/// the isle is gone.
///
/// # Caveats
///
/// - The function keeps its upvalues and its environment: one made in a request's fresh
///   environment ([`Isolation::FreshEnvironment`](crate::Isolation::FreshEnvironment)) keeps
///   that environment alive for as long as the handle lives.
/// - A handle kept inside its own VM (reachable from the function, say through a userdata
///   holding it) is never dropped, like an `Rc` cycle.
/// - The message to an idle isle takes a slot of its bounded queue until the isle picks it
///   up (at once): with a capacity of 1, a `try_enqueue` at that very moment may see `Full`.
/// - A handle does not keep its isle running. Once the isle is shut down, or a pool has
///   replaced the member that made it, calls fail: with [`IsleError::Shutdown`] through a
///   handle to that isle (an `AsyncIsle` clone), with [`IsleError::ForeignFunction`] through
///   any other isle.
///
/// # Examples
///
/// ```
/// use mlua_isle::Isle;
///
/// let isle = Isle::spawn(|lua| lua.load("function greet(name) return 'hi ' .. name end").exec())?;
/// let greet = isle.function("greet")?;
/// let counter = isle.eval_function("local n = 0 return function(step) n = n + step return n end")?;
///
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         let (isle, counter) = (&isle, counter.clone());
///         s.spawn(move || isle.call_function::<i64>(&counter, 1).unwrap());
///     }
/// });
/// assert_eq!(isle.call_function::<i64>(&counter, 0)?, 4);
/// assert_eq!(isle.call_function::<String>(&greet, "ann")?, "hi ann");
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Clone)]
pub struct FunctionHandle {
    inner: Arc<Inner>,
}

/// What all clones of one handle share; its drop gives the function back.
struct Inner {
    /// The id of the isle whose VM keeps the function.
    isle: u64,
    /// The function's key in that VM.
    key: usize,
    /// The isle's queue, for the message that frees the function; weak, so that a handle does
    /// not keep the isle running.
    queue: Weak<Handle>,
    /// Where the key goes when the handle is dropped.
    releases: Arc<Releases>,
}

impl FunctionHandle {
    /// Keeps `function` in `vm` (the VM of isle `isle`, whose queue is `queue`) for a new
    /// handle. Runs on the Lua thread.
    fn hand_out(
        vm: &mut Vm,
        function: Function,
        isle: u64,
        queue: Weak<Handle>,
    ) -> Result<FunctionHandle, IsleError> {
        let (key, releases) = vm.hand_out(function)?;
        Ok(FunctionHandle {
            inner: Arc::new(Inner {
                isle,
                key,
                queue,
                releases,
            }),
        })
    }

    /// Whether this handle may be called on isle `isle`.
    fn check(&self, isle: u64) -> Result<(), IsleError> {
        match self.inner.isle == isle {
            true => Ok(()),
            false => Err(IsleError::ForeignFunction),
        }
    }

    /// The work of a call: finds the function in the VM and calls it with `args`.
    fn call<T, A>(&self, args: A) -> impl FnOnce(&mut Vm) -> Result<T, IsleError> + Send + 'static
    where
        T: FromLuaMulti + Send + 'static,
        A: IntoLuaMulti + Send + 'static,
    {
        // The request holds a clone: the function is kept until the call is over.
        let handle = self.clone();
        move |vm: &mut Vm| {
            let function = handle.function(vm)?;
            crate::lua_thread::call::call(vm.lua(), &function, args)
        }
    }

    /// The work of a coroutine call: starts the function as a coroutine with `args`.
    #[cfg(feature = "tokio")]
    fn coroutine<T, A>(
        &self,
        args: A,
    ) -> crate::lua_thread::executor::Coroutine<
        impl FnOnce(&mut Vm) -> Result<crate::lua_thread::executor::LuaFuture<T>, IsleError>
            + Send
            + 'static,
    >
    where
        T: FromLuaMulti + Send + 'static,
        A: IntoLuaMulti + Send + 'static,
    {
        let handle = self.clone();
        crate::lua_thread::executor::Coroutine(move |vm: &mut Vm| {
            let function = handle.function(vm)?;
            vm.coroutine_handed_out::<T>(function, args)
        })
    }

    /// The function in `vm`, the VM of the isle the handle was checked against.
    fn function(&self, vm: &Vm) -> Result<Function, IsleError> {
        // Only a handle of another VM could be missing: this one's entry lives as long as it.
        vm.handed_out(self.inner.key)
            .unwrap_or(Err(IsleError::ForeignFunction))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.releases.push(self.key) {
            // A message sent earlier and not yet taken frees this key too.
            return;
        }
        // The Lua thread takes what was given back after every job it takes (run or not): a
        // message is needed only if no job is queued. It takes a queue slot only while the
        // queue is empty, for as long as an idle isle needs to pick it up. A refused message
        // (the queue filled or closed meanwhile) needs no retry: the jobs filling it are each
        // followed by a take, and a closed isle's VM goes with everything in it.
        if let Some(queue) = self.queue.upgrade() {
            if queue.tx.is_empty() {
                let _ = queue.offer(Queued::new(Arc::new(ReleaseJob), CancelToken::new(), None));
            }
        }
    }
}

impl fmt::Debug for FunctionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionHandle")
            .field("isle", &self.inner.isle)
            .field("key", &self.inner.key)
            .finish()
    }
}

/// The work of a request that hands out the global function `name`.
fn global(
    name: Code,
    isle: u64,
    queue: Weak<Handle>,
) -> impl FnOnce(&mut Vm) -> Result<FunctionHandle, IsleError> + Send + 'static {
    move |vm: &mut Vm| {
        let function = vm.global_function(name.as_str())?;
        FunctionHandle::hand_out(vm, function, isle, queue)
    }
}

/// The work of a request that hands out the function `code` evaluates to.
fn evaluated(
    code: Code,
    isle: u64,
    queue: Weak<Handle>,
) -> impl FnOnce(&mut Vm) -> Result<FunctionHandle, IsleError> + Send + 'static {
    move |vm: &mut Vm| {
        let function = vm.eval::<Function>(code.as_str())?;
        FunctionHandle::hand_out(vm, function, isle, queue)
    }
}

impl Isle {
    /// Hands out the global function `name` as a [`FunctionHandle`]; see
    /// [`Request::function`].
    ///
    /// # Errors
    ///
    /// As [`Request::function`].
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::spawn(|lua| lua.load("function add(a, b) return a + b end").exec())?;
    /// let add = isle.function("add")?;
    /// assert_eq!(isle.call_function::<i64>(&add, (2, 3))?, 5);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn function(&self, name: impl Into<Code>) -> Result<FunctionHandle, IsleError> {
        self.request().function(name)
    }

    /// Evaluates `code` and hands out the function it returns as a [`FunctionHandle`]; see
    /// [`Request::eval_function`].
    ///
    /// # Errors
    ///
    /// As [`Request::eval_function`].
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let next = isle.eval_function("local n = 0 return function() n = n + 1 return n end")?;
    /// assert_eq!(isle.call_function::<i64>(&next, ())?, 1);
    /// assert_eq!(isle.call_function::<i64>(&next, ())?, 2);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn eval_function(&self, code: impl Into<Code>) -> Result<FunctionHandle, IsleError> {
        self.request().eval_function(code)
    }

    /// Calls `function` with `args` and converts its result to `T`; see
    /// [`Request::call_function`].
    ///
    /// # Errors
    ///
    /// As [`Request::call_function`]; [`IsleError::ForeignFunction`] for a handle of another
    /// isle.
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let upper = isle.eval_function("string.upper")?;
    /// assert_eq!(isle.call_function::<String>(&upper, "abc")?, "ABC");
    ///
    /// let other = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let err = other.call_function::<String>(&upper, "abc").unwrap_err();
    /// assert!(matches!(err, mlua_isle::IsleError::ForeignFunction));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn call_function<T>(
        &self,
        function: &FunctionHandle,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().call_function(function, args)
    }

    /// Queues a call of `function` and returns its [`Task`]; see
    /// [`Request::spawn_call_function`].
    ///
    /// # Errors
    ///
    /// As [`Request::spawn_call_function`].
    ///
    /// # Blocking
    ///
    /// Waits for room while the queue is full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let spin = isle.eval_function("function() while true do end end")?;
    /// let task = isle.spawn_call_function::<()>(&spin, ())?;
    /// task.cancel();
    /// assert!(task.wait().unwrap_err().is_cancelled());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_call_function<T>(
        &self,
        function: &FunctionHandle,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<Task<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().spawn_call_function(function, args)
    }
}

/// The blocking verbs of function handles, on an isle (not a pool: a handle belongs to one
/// VM; a checked-out member derefs to its [`Isle`]).
impl Request<'_, Isle, Blocking> {
    /// Hands out the global function `name` as a [`FunctionHandle`], blocking until done.
    /// `name`, as in [`call`](Request::call), can be any string type.
    ///
    /// # Errors
    ///
    /// [`IsleError::NotAFunction`] when the global is not a function, and every error of
    /// [`eval`](Request::eval).
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let tostring = isle.request().function("tostring")?;
    /// assert_eq!(isle.call_function::<String>(&tostring, 12)?, "12");
    /// let err = isle.request().function("missing").unwrap_err();
    /// assert_eq!(err.to_string(), "global `missing` is not a function (it is nil)");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn function(self, name: impl Into<Code>) -> Result<FunctionHandle, IsleError> {
        let work = global(name.into(), self.isle.id(), self.isle.downgrade());
        self.kind("function").exec_raw(work)
    }

    /// Evaluates `code` (as [`eval`](Request::eval) does) and hands out the function it
    /// returns as a [`FunctionHandle`], blocking until done. A closure keeps its upvalues:
    /// state that lives between calls.
    ///
    /// # Errors
    ///
    /// [`IsleError::Lua`] of kind [`Conversion`](crate::LuaErrorKind::Conversion) when the
    /// code does not return a function, and every error of [`eval`](Request::eval).
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::LuaErrorKind;
    ///
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let sum = isle.request().eval_function("function(...) local s = 0 for _, x in ipairs({...}) do s = s + x end return s end")?;
    /// assert_eq!(isle.call_function::<i64>(&sum, (1, 2, 3))?, 6);
    /// let err = isle.request().eval_function("1 + 1").unwrap_err();
    /// assert_eq!(err.as_lua().unwrap().kind(), LuaErrorKind::Conversion);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn eval_function(self, code: impl Into<Code>) -> Result<FunctionHandle, IsleError> {
        let work = evaluated(code.into(), self.isle.id(), self.isle.downgrade());
        self.kind("eval_function").exec_raw(work)
    }

    /// Calls `function` with `args` and converts its result to `T`, blocking until done.
    ///
    /// # Errors
    ///
    /// [`IsleError::ForeignFunction`] (before anything is queued) when `function` was handed
    /// out by another isle; otherwise every error of [`eval`](Request::eval): the function's
    /// own Lua errors, conversions of `args` and of the result, cancellation and deadlines.
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let spin = isle.eval_function("function() while true do end end")?;
    /// let err = isle.request().timeout(Duration::from_millis(10)).call_function::<()>(&spin, ());
    /// assert!(err.unwrap_err().is_timeout());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn call_function<T>(
        self,
        function: &FunctionHandle,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        function.check(self.isle.id())?;
        self.kind("call_function").exec_raw(function.call(args))
    }

    /// Queues a [`call_function`](Request::call_function) and returns its [`Task`] without
    /// waiting for it.
    ///
    /// # Errors
    ///
    /// [`IsleError::ForeignFunction`] when `function` was handed out by another isle;
    /// otherwise as [`spawn_eval`](Request::spawn_eval).
    ///
    /// # Blocking
    ///
    /// As [`spawn_eval`](Request::spawn_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let square = isle.eval_function("function(x) return x * x end")?;
    /// let tasks: Vec<_> = (1..=3)
    ///     .map(|x| isle.request().spawn_call_function::<i64>(&square, x))
    ///     .collect::<Result<_, _>>()?;
    /// let squares: Vec<i64> = tasks.into_iter().map(|t| t.wait()).collect::<Result<_, _>>()?;
    /// assert_eq!(squares, [1, 4, 9]);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_call_function<T>(
        self,
        function: &FunctionHandle,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<Task<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        function.check(self.isle.id())?;
        self.kind("call_function").submit(function.call(args))
    }
}

#[cfg(feature = "tokio")]
mod async_verbs {
    use mlua::{FromLuaMulti, IntoLuaMulti};

    use super::{evaluated, global, FunctionHandle};
    use crate::error::IsleError;
    use crate::handle::async_isle::{Async, AsyncIsle};
    use crate::handle::async_task::AsyncTask;
    use crate::handle::code::Code;
    use crate::handle::request::{Request, Target};

    impl AsyncIsle {
        /// Hands out the global function `name` as a [`FunctionHandle`]; see
        /// [`Isle::function`](crate::Isle::function).
        ///
        /// # Errors
        ///
        /// As [`Isle::function`](crate::Isle::function), without `Reentrant`.
        ///
        /// # Cancel safety
        ///
        /// Dropping the future cancels the request; a handle it made meanwhile is dropped,
        /// which frees the function.
        ///
        /// # Examples
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), mlua_isle::IsleError> {
        /// let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|lua| {
        ///     lua.load("function twice(x) return 2 * x end").exec()
        /// })
        /// .await?;
        /// let twice = isle.function("twice").await?;
        /// assert_eq!(isle.call_function::<i64>(&twice, 21).await?, 42);
        /// # Ok(())
        /// # }
        /// ```
        pub async fn function(&self, name: impl Into<Code>) -> Result<FunctionHandle, IsleError> {
            self.request().function(name).await
        }

        /// Evaluates `code` and hands out the function it returns as a [`FunctionHandle`];
        /// see [`Isle::eval_function`](crate::Isle::eval_function).
        ///
        /// # Errors
        ///
        /// As [`Isle::eval_function`](crate::Isle::eval_function), without `Reentrant`.
        ///
        /// # Cancel safety
        ///
        /// As [`function`](AsyncIsle::function).
        ///
        /// # Examples
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), mlua_isle::IsleError> {
        /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
        /// let next = isle.eval_function("local n = 0 return function() n = n + 1 return n end").await?;
        /// isle.call_function::<i64>(&next, ()).await?;
        /// assert_eq!(isle.call_function::<i64>(&next, ()).await?, 2);
        /// # Ok(())
        /// # }
        /// ```
        pub async fn eval_function(
            &self,
            code: impl Into<Code>,
        ) -> Result<FunctionHandle, IsleError> {
            self.request().eval_function(code).await
        }

        /// Calls `function` with `args`; see
        /// [`Isle::call_function`](crate::Isle::call_function).
        ///
        /// # Errors
        ///
        /// As [`Isle::call_function`](crate::Isle::call_function), without `Reentrant`.
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
        /// let concat = isle.eval_function("function(a, b) return a .. b end").await?;
        /// assert_eq!(isle.call_function::<String>(&concat, ("a", "b")).await?, "ab");
        /// # Ok(())
        /// # }
        /// ```
        pub async fn call_function<T>(
            &self,
            function: &FunctionHandle,
            args: impl IntoLuaMulti + Send + 'static,
        ) -> Result<T, IsleError>
        where
            T: FromLuaMulti + Send + 'static,
        {
            self.request().call_function(function, args).await
        }

        /// Queues a call of `function` and returns its [`AsyncTask`].
        ///
        /// # Errors
        ///
        /// [`IsleError::ForeignFunction`] when `function` was handed out by another isle;
        /// otherwise as [`spawn_eval`](AsyncIsle::spawn_eval).
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
        /// let negate = isle.eval_function("function(x) return -x end").await?;
        /// let task = isle.spawn_call_function::<i64>(&negate, 5).await?;
        /// assert_eq!(task.await?, -5);
        /// # Ok(())
        /// # }
        /// ```
        pub async fn spawn_call_function<T>(
            &self,
            function: &FunctionHandle,
            args: impl IntoLuaMulti + Send + 'static,
        ) -> Result<AsyncTask<T>, IsleError>
        where
            T: FromLuaMulti + Send + 'static,
        {
            self.request().spawn_call_function(function, args).await
        }

        /// Calls `function` with `args` as a coroutine, which may await async Rust functions
        /// while the isle serves other requests; see
        /// [`coroutine_eval`](AsyncIsle::coroutine_eval).
        ///
        /// # Errors
        ///
        /// As [`call_function`](AsyncIsle::call_function).
        ///
        /// # Cancel safety
        ///
        /// As [`coroutine_eval`](AsyncIsle::coroutine_eval).
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
        /// let nap = isle.eval_function("function(ms) return sleep(ms) * 2 end").await?;
        /// assert_eq!(isle.coroutine_call_function::<u64>(&nap, 5).await?, 10);
        /// # Ok(())
        /// # }
        /// ```
        pub async fn coroutine_call_function<T>(
            &self,
            function: &FunctionHandle,
            args: impl IntoLuaMulti + Send + 'static,
        ) -> Result<T, IsleError>
        where
            T: FromLuaMulti + Send + 'static,
        {
            self.request().coroutine_call_function(function, args).await
        }

        /// Queues a coroutine call of `function` and returns its [`AsyncTask`].
        ///
        /// # Errors
        ///
        /// As [`spawn_call_function`](AsyncIsle::spawn_call_function).
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
        /// let pause = isle.eval_function("function(x) coroutine.yield() return x end").await?;
        /// let task = isle.spawn_coroutine_call_function::<i64>(&pause, 3).await?;
        /// assert_eq!(task.await?, 3);
        /// # Ok(())
        /// # }
        /// ```
        pub async fn spawn_coroutine_call_function<T>(
            &self,
            function: &FunctionHandle,
            args: impl IntoLuaMulti + Send + 'static,
        ) -> Result<AsyncTask<T>, IsleError>
        where
            T: FromLuaMulti + Send + 'static,
        {
            self.request()
                .spawn_coroutine_call_function(function, args)
                .await
        }
    }

    /// The async verbs of function handles, on an async isle.
    impl Request<'_, AsyncIsle, Async> {
        /// Hands out the global function `name` as a [`FunctionHandle`]; see the blocking
        /// [`Request::function`](Request#method.function).
        ///
        /// # Errors
        ///
        /// As the blocking `function`, without `Reentrant`.
        ///
        /// # Cancel safety
        ///
        /// As [`AsyncIsle::function`].
        ///
        /// # Examples
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), mlua_isle::IsleError> {
        /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
        /// let kind = isle.request().function("type").await?;
        /// assert_eq!(isle.call_function::<String>(&kind, 1).await?, "number");
        /// # Ok(())
        /// # }
        /// ```
        pub async fn function(self, name: impl Into<Code>) -> Result<FunctionHandle, IsleError> {
            let work = global(name.into(), self.isle.id(), self.isle.downgrade());
            self.kind("function").exec_raw(work).await
        }

        /// Evaluates `code` and hands out the function it returns as a [`FunctionHandle`];
        /// see the blocking [`Request::eval_function`](Request#method.eval_function).
        ///
        /// # Errors
        ///
        /// As the blocking `eval_function`, without `Reentrant`.
        ///
        /// # Cancel safety
        ///
        /// As [`AsyncIsle::function`].
        ///
        /// # Examples
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), mlua_isle::IsleError> {
        /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
        /// let id = isle.request().no_timeout().eval_function("function(...) return ... end").await?;
        /// assert_eq!(isle.call_function::<(i64, bool)>(&id, (1, true)).await?, (1, true));
        /// # Ok(())
        /// # }
        /// ```
        pub async fn eval_function(
            self,
            code: impl Into<Code>,
        ) -> Result<FunctionHandle, IsleError> {
            let work = evaluated(code.into(), self.isle.id(), self.isle.downgrade());
            self.kind("eval_function").exec_raw(work).await
        }

        /// Calls `function` with `args` and converts its result to `T`; see the blocking
        /// [`Request::call_function`](Request#method.call_function).
        ///
        /// # Errors
        ///
        /// As the blocking `call_function`, without `Reentrant`.
        ///
        /// # Cancel safety
        ///
        /// Dropping the future cancels the request.
        ///
        /// # Examples
        ///
        /// ```
        /// use std::time::Duration;
        ///
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), mlua_isle::IsleError> {
        /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
        /// let spin = isle.eval_function("function() while true do end end").await?;
        /// let err = isle
        ///     .request()
        ///     .timeout(Duration::from_millis(10))
        ///     .call_function::<()>(&spin, ())
        ///     .await
        ///     .unwrap_err();
        /// assert!(err.is_timeout());
        /// # Ok(())
        /// # }
        /// ```
        pub async fn call_function<T>(
            self,
            function: &FunctionHandle,
            args: impl IntoLuaMulti + Send + 'static,
        ) -> Result<T, IsleError>
        where
            T: FromLuaMulti + Send + 'static,
        {
            self.spawn_call_function(function, args).await?.await
        }

        /// Queues a [`call_function`](Request#method.call_function-1) and returns its
        /// [`AsyncTask`].
        ///
        /// # Errors
        ///
        /// [`IsleError::ForeignFunction`] when `function` was handed out by another isle;
        /// otherwise as [`spawn_eval`](Request#method.spawn_eval-1).
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
        /// let len = isle.eval_function("string.len").await?;
        /// let task = isle.request().try_enqueue().spawn_call_function::<i64>(&len, "abc").await?;
        /// assert_eq!(task.await?, 3);
        /// # Ok(())
        /// # }
        /// ```
        pub async fn spawn_call_function<T>(
            self,
            function: &FunctionHandle,
            args: impl IntoLuaMulti + Send + 'static,
        ) -> Result<AsyncTask<T>, IsleError>
        where
            T: FromLuaMulti + Send + 'static,
        {
            function.check(self.isle.id())?;
            let work = function.call(args);
            self.kind("call_function").submit(work).await
        }

        /// Calls `function` with `args` as a coroutine; see
        /// [`coroutine_eval`](Request#method.coroutine_eval).
        ///
        /// # Errors
        ///
        /// As [`call_function`](Request#method.call_function-1).
        ///
        /// # Cancel safety
        ///
        /// As [`coroutine_eval`](Request#method.coroutine_eval).
        ///
        /// # Examples
        ///
        /// ```
        /// use std::time::Duration;
        ///
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), mlua_isle::IsleError> {
        /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
        /// let forever = isle.eval_function("function() while true do coroutine.yield() end end").await?;
        /// let err = isle
        ///     .request()
        ///     .timeout(Duration::from_millis(10))
        ///     .coroutine_call_function::<()>(&forever, ())
        ///     .await
        ///     .unwrap_err();
        /// assert!(err.is_timeout());
        /// # Ok(())
        /// # }
        /// ```
        pub async fn coroutine_call_function<T>(
            self,
            function: &FunctionHandle,
            args: impl IntoLuaMulti + Send + 'static,
        ) -> Result<T, IsleError>
        where
            T: FromLuaMulti + Send + 'static,
        {
            self.spawn_coroutine_call_function(function, args)
                .await?
                .await
        }

        /// Queues a [`coroutine_call_function`](Request#method.coroutine_call_function) and
        /// returns its [`AsyncTask`].
        ///
        /// # Errors
        ///
        /// As [`spawn_call_function`](Request#method.spawn_call_function-1).
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
        /// let add = isle.eval_function("function(a, b) coroutine.yield() return a + b end").await?;
        /// let task = isle.request().spawn_coroutine_call_function::<i64>(&add, (1, 2)).await?;
        /// assert_eq!(task.await?, 3);
        /// # Ok(())
        /// # }
        /// ```
        pub async fn spawn_coroutine_call_function<T>(
            self,
            function: &FunctionHandle,
            args: impl IntoLuaMulti + Send + 'static,
        ) -> Result<AsyncTask<T>, IsleError>
        where
            T: FromLuaMulti + Send + 'static,
        {
            function.check(self.isle.id())?;
            let work = function.coroutine(args);
            self.kind("coroutine_call_function").submit(work).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_sync_and_small() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<FunctionHandle>();
        assert_eq!(
            std::mem::size_of::<FunctionHandle>(),
            std::mem::size_of::<usize>()
        );
    }

    /// A handle dropped while the queue is full of requests that never start (cancelled):
    /// no release message fits, and none is needed: the Lua thread frees what was given back
    /// after every job it takes, run or not, before it goes idle.
    #[test]
    fn a_handle_dropped_while_only_cancelled_requests_are_queued_is_freed() {
        use crate::core::pause::{self, Window};
        use crate::Isle;

        let name = "function-release-full-queue";
        let isle = Isle::builder()
            .thread_name(name)
            .queue_capacity(1)
            .spawn(|lua| lua.load("weak = setmetatable({}, {__mode = 'v'})").exec())
            .unwrap();
        let handle = isle
            .eval_function(
                // (The function changes an upvalue: Luau may otherwise share one closure
                // object with the cached chunk, which keeps it alive.)
                "local big, calls = {}, 0 for i = 1, 1000 do big[i] = i end
                 local f = function() calls = calls + 1 return #big end
                 weak.f = f
                 return f",
            )
            .unwrap();
        let paused = pause::arm(Window::JobStart, name);
        let first = isle.spawn_eval::<()>("return").unwrap();
        paused.reached(); // the Lua thread holds `first`; the queue is empty
        first.cancel();
        let second = isle.spawn_eval::<()>("return").unwrap(); // the queue is full
        second.cancel();
        drop(handle);
        paused.release();
        assert!(first.wait().unwrap_err().is_cancelled());
        assert!(second.wait().unwrap_err().is_cancelled());
        // No request has run since the drop: the function must already be free.
        let alive: bool = isle
            .eval("collectgarbage() collectgarbage() return weak.f ~= nil")
            .unwrap();
        assert!(!alive, "the function outlived its handle");
    }
}
