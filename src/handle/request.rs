//! [`Request`]: per-request options (deadline, cancel token, queue policy) and submission.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{FromLuaMulti, IntoLuaMulti, Lua};

use crate::core::queue::{Handle, Job, Queued, WhenFull};
use crate::core::slot::Slot;
use crate::core::token::CancelToken;
use crate::core::wait;
use crate::error::IsleError;
use crate::handle::code::Code;
use crate::handle::isle::Isle;
use crate::handle::task::Task;
use crate::lua_thread::vm::Vm;

/// Options for one request, then the request itself.
///
/// Made by [`Isle::request`](crate::Isle::request); every request method of [`Isle`] is a
/// shorthand for `isle.request().method(..)` with default options. The options:
///
/// - a deadline ([`timeout`](Request::timeout), [`deadline`](Request::deadline),
///   [`no_timeout`](Request::no_timeout)); by default the isle's
///   [`IsleBuilder::timeout`](crate::IsleBuilder::timeout), if any;
/// - a [`CancelToken`] ([`token`](Request::token)) shared with other requests;
/// - what to do when the queue is full ([`try_enqueue`](Request::try_enqueue)).
///
/// [`Isle`]: crate::Isle
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mlua_isle::{CancelToken, Isle};
///
/// let isle = Isle::spawn(|_| Ok(()))?;
/// let token = CancelToken::new();
/// let err = isle
///     .request()
///     .timeout(Duration::from_millis(20))
///     .token(&token)
///     .eval::<()>("while true do end")
///     .unwrap_err();
/// assert!(err.is_timeout());
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until one of its methods is called"]
pub struct Request<'a, I = Isle, V = Blocking> {
    pub(crate) isle: &'a I,
    deadline: DeadlineSetting,
    token: Option<CancelToken>,
    pub(crate) when_full: WhenFull,
    /// What kind of request it is (`eval`, `call`, ...), as tracing reports it.
    kind: &'static str,
    verbs: PhantomData<V>,
}

/// Marks a [`Request`] whose verbs block (on an [`Isle`](crate::Isle) or an
/// [`IslePool`](crate::IslePool)).
///
/// # Examples
///
/// ```
/// let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
/// let request: mlua_isle::Request<'_, mlua_isle::Isle, mlua_isle::Blocking> = isle.request();
/// assert_eq!(request.eval::<i64>("1")?, 1);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Blocking;

/// The isle handles a [`Request`] can be made on.
pub(crate) trait IsleHandle {
    fn handle(&self) -> &Handle;
}

/// What a [`Request`] can be made on: an isle, or a pool.
pub(crate) trait Target {
    /// The id of the isle (or pool) whose own threads must not wait for it.
    fn id(&self) -> u64;
    /// The deadline of requests that set none, counted from submission.
    fn default_timeout(&self) -> Option<Duration>;
}

/// A target whose requests are queued without awaiting: it has the blocking verbs.
pub(crate) trait BlockingTarget: Target {
    /// Queues `job`; on failure the job is dropped, which resolves its request.
    fn submit(&self, job: Queued, when_full: WhenFull) -> Result<(), IsleError>;
}

impl Target for Isle {
    fn id(&self) -> u64 {
        self.handle().shared.id
    }

    fn default_timeout(&self) -> Option<Duration> {
        self.handle().shared.default_timeout
    }
}

impl BlockingTarget for Isle {
    fn submit(&self, job: Queued, when_full: WhenFull) -> Result<(), IsleError> {
        self.handle().submit(job, when_full)
    }
}

/// A request made ready to be queued: its slot (holding the work), its token, its deadline.
pub(crate) struct Prepared<T, W> {
    pub(crate) slot: Arc<Slot<T, W>>,
    pub(crate) token: CancelToken,
    pub(crate) deadline: Option<Instant>,
}

impl<T: Send + 'static, W: Send + 'static> Prepared<T, W> {
    /// The job to queue, unless the request is already resolved (its token was cancelled).
    pub(crate) fn job(&self) -> Option<Queued>
    where
        Slot<T, W>: Job,
    {
        (!self.slot.is_ready())
            .then(|| Queued::new(self.slot.clone(), self.token.clone(), self.deadline))
    }
}

#[derive(Debug, Clone, Copy)]
enum DeadlineSetting {
    IsleDefault,
    None,
    After(Duration),
    At(Instant),
}

impl<'a, I, V> Request<'a, I, V> {
    pub(crate) fn new(isle: &'a I) -> Self {
        Request {
            isle,
            deadline: DeadlineSetting::IsleDefault,
            token: None,
            when_full: WhenFull::Wait,
            kind: "exec",
            verbs: PhantomData,
        }
    }

    /// Gives the request `timeout` to finish, counted from submission (time spent queued
    /// counts). Replaces the isle's default timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let err = isle.request().timeout(Duration::from_millis(10)).eval::<()>("while true do end");
    /// assert!(err.unwrap_err().is_timeout());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = DeadlineSetting::After(timeout);
        self
    }

    /// Makes the request end with [`IsleError::Timeout`] if it has not finished at `deadline`.
    /// Replaces the isle's default timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let at = Instant::now() + Duration::from_millis(10);
    /// let err = isle.request().deadline(at).eval::<()>("while true do end");
    /// assert!(err.unwrap_err().is_timeout());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = DeadlineSetting::At(deadline);
        self
    }

    /// Runs the request without a deadline, even if the isle has a default timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let isle = mlua_isle::Isle::builder().timeout(Duration::from_secs(1)).spawn(|_| Ok(()))?;
    /// assert_eq!(isle.request().no_timeout().eval::<i64>("return 1")?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn no_timeout(mut self) -> Self {
        self.deadline = DeadlineSetting::None;
        self
    }

    /// Cancels the request when `token` (or a parent of it) is cancelled. One token can cover
    /// any number of requests, on any number of isles.
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::CancelToken;
    ///
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let token = CancelToken::new();
    /// let a = isle.request().token(&token).spawn_eval::<()>("while true do end")?;
    /// let b = isle.request().token(&token).spawn_eval::<()>("while true do end")?;
    /// token.cancel();
    /// assert!(a.wait().unwrap_err().is_cancelled());
    /// assert!(b.wait().unwrap_err().is_cancelled());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn token(mut self, token: &CancelToken) -> Self {
        self.token = Some(token.clone());
        self
    }

    /// Fails with [`IsleError::Full`] instead of waiting when the isle's queue is full.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder().queue_capacity(1).spawn(|_| Ok(()))?;
    /// let (started, running) = std::sync::mpsc::channel();
    /// let busy = isle.spawn_exec(move |lua| {
    ///     started.send(()).unwrap();
    ///     lua.load("while true do end").exec()
    /// })?;
    /// running.recv().unwrap();
    /// let queued = isle.spawn_eval::<()>("return")?; // fills the queue
    /// let err = isle.request().try_enqueue().spawn_eval::<()>("return").unwrap_err();
    /// assert!(matches!(err, mlua_isle::IsleError::Full));
    /// # drop((busy, queued));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn try_enqueue(mut self) -> Self {
        self.when_full = WhenFull::Fail;
        self
    }

    /// Names the kind of request this becomes (`eval`, `call`, ...), as tracing reports it.
    pub(crate) fn kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    /// Creates the request's slot and token around `work`.
    pub(crate) fn prepare<T, W>(&self, work: W) -> Prepared<T, W>
    where
        I: Target,
        T: Send + 'static,
        W: Send + 'static,
    {
        let deadline = match self.deadline {
            DeadlineSetting::IsleDefault => {
                self.isle.default_timeout().and_then(wait::deadline_after)
            }
            DeadlineSetting::None => None,
            DeadlineSetting::After(timeout) => wait::deadline_after(timeout),
            DeadlineSetting::At(at) => Some(at),
        };
        let slot = Slot::of_kind(self.kind, work, self.token.as_ref());
        let token = slot.token();
        Prepared {
            slot,
            token,
            deadline,
        }
    }
}

/// The blocking verbs, on an isle or a pool.
#[allow(private_bounds)]
impl<I: BlockingTarget> Request<'_, I, Blocking> {
    /// Evaluates `code` and converts its result to `T`, blocking until done.
    ///
    /// `code` is tried as an expression first, then as a block (as Lua's REPL does), so both
    /// `"1 + 1"` and `"local x = 1; return x + 1"` work. The compiled chunk is cached per isle,
    /// so repeating the same code does not compile it again. Binary (precompiled) chunks are
    /// refused.
    ///
    /// `code` can be any string type, borrowed or owned: see [`Code`].
    ///
    /// # Errors
    ///
    /// [`IsleError::Lua`] (syntax, runtime, memory or conversion), [`IsleError::Cancelled`],
    /// [`IsleError::Timeout`], [`IsleError::Panic`] (a host function panicked),
    /// [`IsleError::Shutdown`], [`IsleError::Full`] (with [`try_enqueue`](Request::try_enqueue)),
    /// [`IsleError::Reentrant`] (called on the isle's own thread).
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let (a, b): (i64, String) = isle.request().eval("1 + 1, 'two'")?;
    /// assert_eq!((a, b.as_str()), (2, "two"));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn eval<T>(self, code: impl Into<Code>) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.blocking()?.spawn_eval(code)?.wait()
    }

    /// Evaluates `code` as [`eval`](Request::eval) does, with `args` as the chunk's arguments
    /// (its `...`), and converts its result to `T`, blocking until done. With
    /// [`Isolation::FreshEnvironment`](crate::Isolation::FreshEnvironment) (the sandbox's),
    /// this is how a script gets its input: it runs in the request's own environment, as
    /// `eval` does, where [`exec`](Request::exec) would see the shared globals.
    ///
    /// # Errors
    ///
    /// As [`eval`](Request::eval); arguments that cannot be converted are an
    /// [`IsleError::Lua`] of kind [`Conversion`](crate::LuaErrorKind::Conversion).
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let sum: i64 = isle.request().eval_with("local a, b = ... return a + b", (40, 2))?;
    /// assert_eq!(sum, 42);
    /// assert_eq!(isle.request().eval_with::<i64>("select('#', ...)", (1, 2, 3))?, 3);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn eval_with<T>(
        self,
        code: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.blocking()?.spawn_eval_with(code, args)?.wait()
    }

    /// Calls the global function `name` with `args` and converts its result to `T`, blocking
    /// until done. `name`, like `code` in [`eval`](Request::eval), can be any string type.
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
    /// # let isle = mlua_isle::Isle::spawn(|lua| lua.load("function add(a, b) return a + b end").exec())?;
    /// assert_eq!(isle.request().call::<i64>("add", (2, 3))?, 5);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn call<T>(
        self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.blocking()?.spawn_call(name, args)?.wait()
    }

    /// Runs `f` with the VM on the Lua thread, blocking until done.
    ///
    /// `f` can do anything mlua allows (register functions, walk tables, call Lua); only its
    /// `Send` result leaves the thread.
    ///
    /// # Errors
    ///
    /// The error `f` returns (as [`IsleError::Lua`]), [`IsleError::Panic`] if it panics, and
    /// the queueing, cancellation and deadline errors of [`eval`](Request::eval).
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let n = isle.request().exec(|lua| {
    ///     lua.globals().set("answer", 42)?;
    ///     lua.globals().get::<i64>("answer")
    /// })?;
    /// assert_eq!(n, 42);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn exec<T, F>(self, f: F) -> Result<T, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.blocking()?.spawn_exec(f)?.wait()
    }

    /// Queues an [`eval`](Request::eval) and returns its [`Task`] without waiting for it.
    ///
    /// # Errors
    ///
    /// [`IsleError::Shutdown`] when the isle no longer accepts requests; [`IsleError::Full`]
    /// with [`try_enqueue`](Request::try_enqueue) (and on the isle's own thread, which never
    /// waits for room). Everything else is reported by the task.
    ///
    /// # Blocking
    ///
    /// Waits for room while the queue is full, unless [`try_enqueue`](Request::try_enqueue)
    /// is set.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.request().spawn_eval::<i64>("return 6 * 7")?;
    /// assert_eq!(task.wait()?, 42);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_eval<T>(self, code: impl Into<Code>) -> Result<Task<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        let code = code.into();
        self.kind("eval")
            .submit(move |vm: &mut Vm| vm.eval::<T>(code.as_str()))
    }

    /// Queues an [`eval_with`](Request::eval_with) and returns its [`Task`] without waiting
    /// for it.
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Request::spawn_eval).
    ///
    /// # Blocking
    ///
    /// Waits for room while the queue is full, unless [`try_enqueue`](Request::try_enqueue)
    /// is set.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.request().spawn_eval_with::<String>("(...):upper()", "isle")?;
    /// assert_eq!(task.wait()?, "ISLE");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_eval_with<T>(
        self,
        code: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<Task<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        let code = code.into();
        self.kind("eval")
            .submit(move |vm: &mut Vm| vm.eval_with::<T>(code.as_str(), args))
    }

    /// Queues a [`call`](Request::call) and returns its [`Task`] without waiting for it.
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Request::spawn_eval).
    ///
    /// # Blocking
    ///
    /// As [`spawn_eval`](Request::spawn_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.request().spawn_call::<String>("tostring", 12)?;
    /// assert_eq!(task.wait()?, "12");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_call<T>(
        self,
        name: impl Into<Code>,
        args: impl IntoLuaMulti + Send + 'static,
    ) -> Result<Task<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        let name = name.into();
        self.kind("call")
            .submit(move |vm: &mut Vm| vm.call::<T>(name.as_str(), args))
    }

    /// Queues an [`exec`](Request::exec) and returns its [`Task`] without waiting for it.
    ///
    /// # Errors
    ///
    /// As [`spawn_eval`](Request::spawn_eval).
    ///
    /// # Blocking
    ///
    /// As [`spawn_eval`](Request::spawn_eval).
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.request().spawn_exec(|lua| lua.load("return 1").eval::<i64>())?;
    /// assert_eq!(task.wait()?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_exec<T, F>(self, f: F) -> Result<Task<T>, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit(move |vm: &mut Vm| f(vm.lua()).map_err(IsleError::from))
    }

    /// Refuses blocking requests made on the isle's own thread before anything is queued.
    pub(crate) fn blocking(self) -> Result<Self, IsleError> {
        if wait::on_isle_thread(self.isle.id()) {
            return Err(IsleError::Reentrant);
        }
        Ok(self)
    }

    pub(crate) fn submit<T, W>(self, work: W) -> Result<Task<T>, IsleError>
    where
        T: Send + 'static,
        W: FnOnce(&mut Vm) -> Result<T, IsleError> + Send + 'static,
    {
        let prepared = self.prepare(work);
        if let Some(job) = prepared.job() {
            self.isle.submit(job, self.when_full)?;
        }
        Ok(Task::new(
            prepared.slot,
            prepared.token,
            prepared.deadline,
            self.isle.id(),
        ))
    }

    /// Runs `work` on the VM, blocking until done.
    pub(crate) fn exec_raw<T, W>(self, work: W) -> Result<T, IsleError>
    where
        T: Send + 'static,
        W: FnOnce(&mut Vm) -> Result<T, IsleError> + Send + 'static,
    {
        self.blocking()?.submit(work)?.wait()
    }
}
