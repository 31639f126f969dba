//! [`Isle`]: the blocking handle to a Lua VM on its own thread.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use mlua::{FromLuaMulti, IntoLuaMulti, Lua};

use crate::core::isle_thread::IsleThread;
use crate::core::queue::{Handle, Shared, Where};
use crate::core::wait;
use crate::error::IsleError;
use crate::handle::builder::{IsleBuilder, Launched};
use crate::handle::code::Code;
use crate::handle::request::{IsleHandle, Request};
use crate::handle::task::Task;

/// A Lua VM running on a dedicated thread, driven from any thread.
///
/// `Isle` is `Send + Sync`: share it with `&Isle` across scoped threads or wrap it in an `Arc`.
/// Requests run one at a time, in the order they were queued.
///
/// Dropping the `Isle` never blocks: the Lua thread finishes the requests already queued whose
/// [`Task`]s are still held (dropped tasks cancel theirs), then closes the VM and exits on its
/// own (if closing outlasts the [default timeout](IsleBuilder::timeout) plus the grace period,
/// a finalizer that does not return, the isle gives up on the thread, which is never reused).
/// Use [`shutdown`](Isle::shutdown) to wait for that and learn how it ended.
///
/// # Examples
///
/// ```
/// use mlua_isle::Isle;
///
/// let isle = Isle::spawn(|lua| {
///     lua.load("function greet(name) return 'hello ' .. name end").exec()
/// })?;
/// std::thread::scope(|s| {
///     for name in ["ann", "bob"] {
///         let isle = &isle;
///         s.spawn(move || {
///             let msg: String = isle.call("greet", name).unwrap();
///             assert_eq!(msg, format!("hello {name}"));
///         });
///     }
/// });
/// isle.shutdown()?;
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub struct Isle {
    /// Shared only with the async view a pool's guard hands out.
    handle: Arc<Handle>,
    thread: Option<IsleThread>,
}

impl Isle {
    pub(crate) fn new(launched: Launched) -> Self {
        Isle {
            handle: Arc::new(launched.handle),
            thread: Some(launched.thread),
        }
    }

    /// Starts an isle with the default settings and runs `init` on its VM; returns once `init`
    /// has finished. See [`IsleBuilder::spawn`].
    ///
    /// # Errors
    ///
    /// [`IsleError::Init`] if `init` fails or panics, [`IsleError::Spawn`] if the thread cannot
    /// be started.
    ///
    /// # Blocking
    ///
    /// As [`IsleBuilder::spawn`].
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::spawn(|lua| lua.globals().set("x", 1))?;
    /// assert_eq!(isle.eval::<i64>("x")?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn<F>(init: F) -> Result<Isle, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<()> + Send + 'static,
    {
        IsleBuilder::new().spawn(init)
    }

    /// Starts an isle with the default settings and runs `init` on its VM, handing the value
    /// it returns to the caller with the isle; see [`IsleBuilder::spawn_with`].
    ///
    /// # Errors
    ///
    /// As [`spawn`](Isle::spawn).
    ///
    /// # Blocking
    ///
    /// As [`IsleBuilder::spawn`].
    ///
    /// # Examples
    ///
    /// ```
    /// let (isle, count) = mlua_isle::Isle::spawn_with(|lua| {
    ///     lua.load("function a() end function b() end").exec()?;
    ///     lua.load("local n = 0 for _, v in pairs(_G) do if type(v) == 'function' then n = n + 1 end end return n")
    ///         .eval::<usize>()
    /// })?;
    /// assert!(count >= 2);
    /// assert!(isle.is_alive());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_with<T, F>(init: F) -> Result<(Isle, T), IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        IsleBuilder::new().spawn_with(init)
    }

    /// Returns a builder to configure the thread, the VM and the queue.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder().queue_capacity(16).spawn(|_| Ok(()))?;
    /// assert!(isle.is_alive());
    /// # Ok::<(), mlua_isle::IsleError>(())
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
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let err = isle.request().timeout(Duration::from_millis(10)).eval::<()>("while true do end");
    /// assert!(err.unwrap_err().is_timeout());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn request(&self) -> Request<'_> {
        Request::new(self)
    }

    /// Evaluates `code` and converts the result to `T`; see [`Request::eval`].
    ///
    /// # Errors
    ///
    /// As [`Request::eval`].
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// assert_eq!(isle.eval::<i64>("return 2 ^ 10")?, 1024);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn eval<T>(&self, code: impl Into<Code>) -> Result<T, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().eval(code)
    }

    /// Evaluates `code` with `args` as its arguments (`...`); see [`Request::eval_with`].
    ///
    /// # Errors
    ///
    /// As [`Request::eval_with`].
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// assert_eq!(isle.eval_with::<i64>("local n = ... return n * n", 12)?, 144);
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

    /// Calls the global function `name` with `args`; see [`Request::call`].
    ///
    /// # Errors
    ///
    /// As [`Request::call`]; [`IsleError::NotAFunction`] names a global that is not a function.
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// assert_eq!(isle.call::<String>("string.upper", "x").unwrap_err().to_string(),
    ///            "global `string.upper` is not a function (it is nil)");
    /// assert_eq!(isle.call::<i64>("select", ("#", 1, 2, 3))?, 3);
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

    /// Runs `f` with the VM on the Lua thread; see [`Request::exec`].
    ///
    /// # Errors
    ///
    /// As [`Request::exec`].
    ///
    /// # Blocking
    ///
    /// Blocks until the request finishes; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// isle.exec(|lua| {
    ///     let double = lua.create_function(|_, n: i64| Ok(n * 2))?;
    ///     lua.globals().set("double", double)
    /// })?;
    /// assert_eq!(isle.call::<i64>("double", 21)?, 42);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn exec<T, F>(&self, f: F) -> Result<T, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.request().exec(f)
    }

    /// Queues an eval and returns its [`Task`]; see [`Request::spawn_eval`].
    ///
    /// # Errors
    ///
    /// As [`Request::spawn_eval`].
    ///
    /// # Blocking
    ///
    /// Waits for room while the queue is full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.spawn_eval::<i64>("return 1")?;
    /// assert_eq!(task.wait()?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_eval<T>(&self, code: impl Into<Code>) -> Result<Task<T>, IsleError>
    where
        T: FromLuaMulti + Send + 'static,
    {
        self.request().spawn_eval(code)
    }

    /// Queues a call and returns its [`Task`]; see [`Request::spawn_call`].
    ///
    /// # Errors
    ///
    /// As [`Request::spawn_call`].
    ///
    /// # Blocking
    ///
    /// Waits for room while the queue is full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.spawn_call::<i64>("math.abs", -1);
    /// // `call` looks up globals only: `math.abs` is not one.
    /// assert!(task?.wait().is_err());
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

    /// Queues an exec and returns its [`Task`]; see [`Request::spawn_exec`].
    ///
    /// # Errors
    ///
    /// As [`Request::spawn_exec`].
    ///
    /// # Blocking
    ///
    /// Waits for room while the queue is full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.spawn_exec(|lua| lua.globals().len())?;
    /// assert_eq!(task.wait()?, 0);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_exec<T, F>(&self, f: F) -> Result<Task<T>, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.request().spawn_exec(f)
    }

    /// Whether the Lua thread is still serving requests.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// assert!(isle.is_alive());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn is_alive(&self) -> bool {
        self.handle.shared.is_alive()
    }

    /// Stops accepting requests, lets the queued ones finish, then joins the Lua thread: waits
    /// until it has closed the VM and let go of the isle (it may then serve the next isle, see
    /// [`IsleBuilder::thread_name`]).
    ///
    /// # Errors
    ///
    /// [`IsleError::Panic`] if the Lua thread panicked outside a request (for example in a
    /// userdata destructor while the VM closed), [`IsleError::Abandoned`] if the isle gave up on
    /// a request that could not be interrupted (its thread is not joined), and
    /// [`IsleError::Reentrant`] when called on the isle's own thread.
    ///
    /// # Blocking
    ///
    /// Blocks until every queued request has finished and the VM is closed. A request that
    /// never finishes and has no deadline blocks it forever. Closing the VM runs the scripts'
    /// finalizers (`__gc`), which no interrupt reaches: with a [default
    /// timeout](IsleBuilder::timeout), the close runs under that deadline like a request, and
    /// if it has not ended by the deadline plus the [grace period](IsleBuilder::grace_period)
    /// the isle gives up on the thread and this returns `Abandoned`; without one, a finalizer
    /// that never returns blocks it forever. See [`shutdown_timeout`](Isle::shutdown_timeout).
    /// If the isle gives up while this waits, it returns `Abandoned` about a tenth of a second
    /// after the give-up at most (unless the system clock is set back meanwhile).
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.spawn_eval::<i64>("return 1")?;
    /// isle.shutdown()?;
    /// assert_eq!(task.wait()?, 1); // queued work finished first
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn shutdown(self) -> Result<(), IsleError> {
        self.shutdown_until(None)
    }

    /// Like [`shutdown`](Isle::shutdown), but after `timeout` everything still queued is
    /// resolved with [`IsleError::Shutdown`] and the running request is interrupted (it too
    /// ends with `Shutdown`); then the thread is joined.
    ///
    /// # Errors
    ///
    /// [`IsleError::Abandoned`] if the running request does not stop within the
    /// [grace period](IsleBuilder::grace_period) after being interrupted (Rust code that
    /// ignores cancellation, a loop in a `__gc` finalizer, a C function that never returns):
    /// it is resolved with `Shutdown` and the thread is left to end on its own. Otherwise as
    /// [`shutdown`](Isle::shutdown).
    ///
    /// # Blocking
    ///
    /// Blocks for at most `timeout` plus the grace period.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let stuck = isle.spawn_eval::<()>("while true do end")?;
    /// isle.shutdown_timeout(Duration::from_millis(10))?;
    /// assert!(stuck.wait().unwrap_err().is_shutdown());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn shutdown_timeout(self, timeout: Duration) -> Result<(), IsleError> {
        self.shutdown_until(Some(wait::deadline_after(timeout)))
    }

    /// `deadline`: `None` to wait forever, `Some(None)` for a timeout too long to represent.
    fn shutdown_until(mut self, deadline: Option<Option<Instant>>) -> Result<(), IsleError> {
        let shared = self.handle.shared.clone();
        if wait::on_isle_thread(shared.id) {
            return Err(IsleError::Reentrant);
        }
        let mut thread = self.thread.take();
        drop(self);
        // Without a deadline the common case is an isle with nothing left to run, whose thread
        // is done with it at once: join it directly (the wait for the thread's report below,
        // then the join, costs one more sleep and wake-up). A thread still busy after a moment
        // is waited for through its report, which a give-up resolves too.
        if deadline.is_none()
            && !shared.is_abandoned()
            && thread.as_mut().is_some_and(|t| t.join_within(QUICK_EXIT))
        {
            return exit_outcome(&shared);
        }
        join_after(wait_for_exit(&shared, deadline), thread)
    }

    /// Closes the isle through a shared handle (a pool member still held by a guard) and wakes
    /// the Lua thread so that it notices; [`wait_for_exits`] then waits for it.
    pub(crate) fn close_and_wake(&self) {
        self.handle.shared.close();
        // A full queue holds jobs: the thread looks at the flag after each of them anyway.
        self.wake();
    }

    /// Closes the isle as dropping it does, keeping what [`shutdown`](Self::shutdown) waits
    /// for: the shared state ([`wait_for_exits`]) and the thread to join once it has ended.
    pub(crate) fn close_for_exit(
        mut self,
    ) -> (Arc<crate::core::queue::Shared>, Option<IsleThread>) {
        let shared = self.handle.shared.clone();
        let thread = self.thread.take();
        drop(self);
        (shared, thread)
    }

    /// An async handle to the same isle (for a checked-out member of an async pool).
    #[cfg(feature = "tokio")]
    pub(crate) fn async_view(&self) -> crate::handle::async_isle::AsyncIsle {
        crate::handle::async_isle::AsyncIsle::from_handle(self.handle.clone())
    }

    /// The isle's queue, without keeping it open (for a function handle).
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Handle> {
        Arc::downgrade(&self.handle)
    }

    /// Whether nothing is queued for the isle.
    pub(crate) fn queue_is_empty(&self) -> bool {
        self.handle.tx.is_empty()
    }

    /// The isle's shared state (for a pool that waits for a replaced member's thread).
    pub(crate) fn shared_state(&self) -> &Arc<crate::core::queue::Shared> {
        &self.handle.shared
    }

    /// Makes the Lua thread look at its queues again (a pool member whose gate opened, or that
    /// should look at the pool's queue). Never blocks: a full queue wakes it anyway.
    pub(crate) fn wake(&self) {
        self.handle.wake();
    }

    /// Wakes `waker` once the Lua thread has ended, or the isle gave up on it.
    pub(crate) fn on_exit(&self, waker: &Waker) {
        let mut cx = Context::from_waker(waker);
        if self.handle.shared.exited.poll_ready(&mut cx).is_ready() {
            waker.wake_by_ref();
        }
    }

    /// Whether the isle gave up on a request that would not stop.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.handle.shared.is_abandoned()
    }
}

/// Waits for the Lua thread of a closed isle to end; with a deadline (`Some`), kills what still
/// runs then and gives up on it after the grace period.
pub(crate) fn wait_for_exit(
    shared: &Arc<Shared>,
    deadline: Option<Option<Instant>>,
) -> Result<(), IsleError> {
    if let Some(deadline) = deadline {
        if !shared.exited.wait_long_until(deadline) {
            stop_late(&[shared]);
        }
    }
    exit_outcome(shared)
}

/// [`wait_for_exit`] for several closed isles under one deadline: the isles still running at
/// the deadline are all killed then, and their grace periods run side by side, so that the
/// whole wait ends within the deadline plus one grace period (plus the time it takes to drop
/// the work still queued on them), however many isles are stuck. Returns each isle's outcome,
/// in order.
pub(crate) fn wait_for_exits(
    isles: &[Arc<Shared>],
    deadline: Option<Option<Instant>>,
) -> Vec<Result<(), IsleError>> {
    if let Some(deadline) = deadline {
        // One absolute deadline: once it has passed, the later isles are only looked at.
        let late: Vec<&Arc<Shared>> = isles
            .iter()
            .filter(|shared| !shared.exited.wait_long_until(deadline))
            .collect();
        stop_late(&late);
    }
    isles.iter().map(|shared| exit_outcome(shared)).collect()
}

/// Kills the isles still running past their shutdown deadline, one right after the other,
/// and gives up on those that have not ended a grace period after their own kill.
fn stop_late(late: &[&Arc<Shared>]) {
    let killed: Vec<(&Arc<Shared>, Instant)> = late
        .iter()
        .map(|&shared| (shared, kill_and_drain(shared)))
        .collect();
    for (shared, killed_at) in killed {
        if !shared
            .exited
            .wait_long_until(killed_at.checked_add(shared.grace))
        {
            shared.give_up(None, IsleError::Shutdown, Where::Here);
        }
    }
}

/// Kills an isle past its shutdown deadline and resolves what is still queued on it; returns
/// when it was killed, which its grace period counts from: dropping the queued work runs user
/// code (`Drop`s, wakers), whose time must not come out of the grace of the isles killed after.
pub(crate) fn kill_and_drain(shared: &Shared) -> Instant {
    shared.kill();
    let killed_at = Instant::now();
    // The Lua thread may be stuck: resolve what is queued from here.
    shared.close_and_drain();
    killed_at
}

/// Waits for the Lua thread of a closed isle to end (or for the isle to give up on it) and
/// reports which.
fn exit_outcome(shared: &Shared) -> Result<(), IsleError> {
    shared.exited.wait_long_until(None);
    ended_outcome(shared)
}

/// How the Lua thread of a closed isle ended, once `exited` is resolved: given up on, ended by
/// a panic that escaped its own code, or ended normally.
pub(crate) fn ended_outcome(shared: &Shared) -> Result<(), IsleError> {
    // The flag, set before anything else when the isle gives up, decides: the thread may
    // have ended (and resolved `exited`) before the give-up got to resolving it.
    let outcome = shared.exited.take();
    if matches!(outcome, Some(Err(IsleError::Abandoned))) || shared.is_abandoned() {
        return Err(IsleError::Abandoned);
    }
    match outcome {
        // A panic that escaped the worker ended the thread.
        Some(Err(panic @ IsleError::Panic(_))) => Err(panic),
        _ => Ok(()),
    }
}

#[cfg(all(test, unix, not(feature = "luau")))]
impl Isle {
    /// The isle's shared state, for tests that look inside.
    pub(crate) fn shared(&self) -> &std::sync::Arc<crate::core::queue::Shared> {
        &self.handle.shared
    }
}

impl IsleHandle for Isle {
    fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// How long a shutdown without a deadline waits in a plain join for the Lua thread to be done
/// with the isle, before it waits for the thread's report instead: enough for an idle isle to
/// close its VM, short enough that a give-up meanwhile is still reported promptly (a join
/// cannot see it).
const QUICK_EXIT: Duration = Duration::from_millis(100);

/// Joins the thread of an isle whose end was waited for with `outcome` (see
/// [`exit_outcome`]), unless the isle gave up on it: that thread is left to end on its own.
/// Returns `outcome`.
pub(crate) fn join_after(
    outcome: Result<(), IsleError>,
    thread: Option<IsleThread>,
) -> Result<(), IsleError> {
    if !matches!(outcome, Err(IsleError::Abandoned)) {
        if let Some(mut thread) = thread {
            thread.join();
        }
    }
    outcome
}

impl Drop for Isle {
    fn drop(&mut self) {
        // The sender goes with `self.handle`: the Lua thread sees the queue disconnect once it
        // has run what is queued, and exits. The thread is detached, never joined here.
        self.handle.shared.close();
    }
}

impl fmt::Debug for Isle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Isle")
            .field("alive", &self.is_alive())
            .field("queued", &self.handle.tx.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isle_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Isle>();
        check::<Task<String>>();
        check::<crate::CancelToken>();
        check::<IsleError>();
    }

    /// The isle gives up on its thread after the VM closed but before the close's deadline was
    /// withdrawn: the shutdown reports `Abandoned`, and the thread, though done with the VM,
    /// is not reused.
    #[test]
    fn a_give_up_as_the_close_ends_keeps_the_thread_from_being_reused() {
        use crate::core::pause::{self, Window};
        let name = "close-give-up-race";
        let spawn = || {
            Isle::builder()
                .thread_name(name)
                .timeout(Duration::from_millis(10))
                .grace_period(Duration::from_millis(10))
                .spawn(|_| Ok(()))
                .unwrap()
        };
        let lua_thread = |isle: &Isle| isle.exec(|_| Ok(std::thread::current().id())).unwrap();
        // A name that came up before: a thread done with its isle waits as a spare.
        spawn().shutdown().unwrap();
        let isle = spawn();
        let given_up = lua_thread(&isle);
        let paused = pause::arm(Window::VmClosed, name);
        let (shared, thread) = isle.close_for_exit();
        paused.reached();
        // Past the close's deadline plus the grace period, with the thread still in the window.
        assert!(matches!(
            wait_for_exit(&shared, None),
            Err(IsleError::Abandoned)
        ));
        assert!(shared.is_abandoned());
        paused.release();
        // Done with the isle: as a spare, the thread would now be there for the next one.
        let mut thread = thread.unwrap();
        thread.join();
        let next = spawn();
        assert_ne!(lua_thread(&next), given_up);
        next.shutdown().unwrap();
    }
}
