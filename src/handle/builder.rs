//! [`IsleBuilder`]: how an isle's thread and VM are configured and started.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mlua::{Lua, LuaOptions, StdLib};

use crate::core::isle_thread::{AfterRun, IsleThread};
use crate::core::queue::{Handle, Shared};
use crate::core::slot::{Completer, Slot};
use crate::core::wait;
use crate::error::IsleError;
use crate::handle::isle::Isle;
use crate::interrupt::Interrupt;
use crate::lua_thread::feed::Feed;
use crate::lua_thread::vm::VmSource;
use crate::lua_thread::worker::{self, Setup};
use crate::lualib::TaskLibrary;
use crate::sandbox::{Isolation, Sandbox};

/// Default number of requests that can wait in an isle's queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default Lua thread stack size: Lua's C code and Rust callbacks recurse on it.
///
/// PUC Lua and Luau limit how deeply C calls nest (about 200), which keeps the C stack small:
/// 8 MiB. LuaJIT does not: a script recursing through a C function that calls back into Lua
/// (`string.gsub` with a function, say) nests until Lua's own stack is full, and each level
/// can take several KiB of C stack. The LuaJIT default is therefore 256 MiB; it is only
/// reserved address space until a script really recurses that deep. As every coroutine has a
/// Lua stack of its own, such a recursion could go on in coroutine after coroutine: on LuaJIT
/// `string.gsub`, `load` and resuming a coroutine raise "C stack overflow" once 16 MiB of the
/// stack is in use, or less than 16 MiB (a quarter of a smaller stack) is left.
pub const DEFAULT_STACK_SIZE: usize = if cfg!(any(feature = "luajit", feature = "luajit52")) {
    256 << 20
} else {
    8 << 20
};
/// The memory limit [`IsleBuilder::sandboxed`] sets: 64 MiB.
pub const SANDBOX_MEMORY_LIMIT: usize = 64 << 20;
/// The default timeout [`IsleBuilder::sandboxed`] sets: 1 second.
pub const SANDBOX_TIMEOUT: Duration = Duration::from_secs(1);
/// The grace period [`IsleBuilder::sandboxed`] sets: 250 milliseconds.
pub const SANDBOX_GRACE_PERIOD: Duration = Duration::from_millis(250);
/// Default number of compiled `eval` chunks kept per isle.
pub const DEFAULT_CHUNK_CACHE: usize = 64;
/// Default time given to interrupted code to unwind before the isle gives up on it.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(1);

/// Configures and starts an [`Isle`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mlua_isle::Isle;
///
/// let isle = Isle::builder()
///     .thread_name("scripts")
///     .memory_limit(16 << 20)
///     .timeout(Duration::from_secs(5))
///     .queue_capacity(256)
///     .spawn(|lua| lua.load("greeting = 'hi'").exec())?;
/// assert_eq!(isle.eval::<String>("greeting")?, "hi");
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[must_use = "a builder does nothing until `spawn` is called"]
pub struct IsleBuilder {
    thread_name: Option<String>,
    stack_size: usize,
    libs: StdLib,
    options: LuaOptions,
    factory: Option<Box<dyn FnOnce() -> mlua::Result<Lua> + Send>>,
    memory_limit: Option<usize>,
    timeout: Option<Duration>,
    queue_capacity: usize,
    chunk_cache: usize,
    allow_binary_chunks: bool,
    grace_period: Duration,
    interrupt: Interrupt,
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    jit: bool,
    sandbox: Option<Sandbox>,
    isolation: Isolation,
    tasks: Option<TaskLibrary>,
    /// How deeply nested a value `Serde` converts may be.
    #[cfg(feature = "serde")]
    serde_depth: usize,
    /// A shared queue the isle's thread also serves (set for pool members).
    feed: Option<Feed>,
}

impl Default for IsleBuilder {
    fn default() -> Self {
        let VmSource::Std { libs, options } = VmSource::default() else {
            unreachable!("the default VM source is the standard one")
        };
        IsleBuilder {
            thread_name: None,
            stack_size: DEFAULT_STACK_SIZE,
            libs,
            options,
            factory: None,
            memory_limit: None,
            timeout: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            chunk_cache: DEFAULT_CHUNK_CACHE,
            allow_binary_chunks: false,
            grace_period: DEFAULT_GRACE_PERIOD,
            interrupt: Interrupt::default(),
            #[cfg(any(feature = "luajit", feature = "luajit52"))]
            jit: false,
            sandbox: None,
            isolation: Isolation::Shared,
            tasks: None,
            #[cfg(feature = "serde")]
            serde_depth: crate::convert::DEFAULT_SERDE_DEPTH,
            feed: None,
        }
    }
}

impl fmt::Debug for IsleBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("IsleBuilder");
        f.field("thread_name", &self.thread_name)
            .field("stack_size", &self.stack_size)
            .field("libs", &self.libs)
            .field("options", &self.options)
            .field("factory", &self.factory.as_ref().map(|_| ".."))
            .field("memory_limit", &self.memory_limit)
            .field("timeout", &self.timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("chunk_cache", &self.chunk_cache)
            .field("allow_binary_chunks", &self.allow_binary_chunks)
            .field("grace_period", &self.grace_period)
            .field("interrupt", &self.interrupt)
            .field("sandbox", &self.sandbox)
            .field("isolation", &self.isolation)
            .field("tasks", &self.tasks);
        #[cfg(any(feature = "luajit", feature = "luajit52"))]
        f.field("jit", &self.jit);
        #[cfg(feature = "serde")]
        f.field("serde_depth", &self.serde_depth);
        f.finish()
    }
}

impl IsleBuilder {
    /// A builder with the defaults: all safe standard libraries, no memory limit, no default
    /// timeout, a queue of [`DEFAULT_QUEUE_CAPACITY`].
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::IsleBuilder::new().spawn(|_| Ok(()))?;
    /// assert!(isle.is_alive());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the Lua thread (default `mlua-isle`). A NUL byte in it is a
    /// [`Config`](IsleError::Config) error at [`spawn`](Self::spawn).
    ///
    /// # Threads are reused
    ///
    /// Once an isle has ended (its VM closed), its thread waits a second as a spare (on Linux
    /// the OS shows it as `isle-spare` meanwhile), and the next isle with the same thread name
    /// and stack size starts on it instead of a new thread. Only a thread whose name and stack
    /// size came up before it was started waits (isles and pool members alike; thousands of
    /// names are remembered): the thread of the first isle with a name, or of one named only
    /// once, ends. While it waits, a spare already creates the next VM from the same
    /// [libraries](Self::std_libs) and [options](Self::lua_options) (not for a
    /// [factory](Self::factory)), which an isle made from those takes instead of creating
    /// one; an isle made otherwise does not wait for that VM: it takes a spare that made
    /// nothing, or a new thread. Starting and shutting down an isle then costs about what
    /// starting a thread that creates and closes a bare VM costs, where it costs 1.4× that
    /// without a spare (a pool that recycles its VMs pays it per VM). At most 16 spares wait
    /// at a time. A thread whose isle panicked out of its own code ends instead, and so does
    /// one still serving an isle that gave up on it (a hard stop) when it is done.
    ///
    /// # Caveats
    ///
    /// Everything this crate keeps for an isle on its thread is gone before the thread serves
    /// the next one, but what your host functions keep in thread-locals of their own stays
    /// with the thread (their destructors run when the thread ends, not at
    /// [`shutdown`](Isle::shutdown)), and so do changes they make to the thread itself (its
    /// CPU affinity or priority). The signal mask does not: each isle starts with the mask of
    /// the thread that spawned it, as on a new thread. Give isles that must not meet such
    /// leftovers different thread names.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder().thread_name("lua-main").spawn(|_| Ok(()))?;
    /// let name = isle.exec(|_| Ok(std::thread::current().name().map(String::from)))?;
    /// assert_eq!(name.as_deref(), Some("lua-main"));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = Some(name.into());
        self
    }

    /// Sets the Lua thread's stack size in bytes (default [`DEFAULT_STACK_SIZE`]).
    ///
    /// # Caveats
    ///
    /// PUC Lua lets scripts nest about 200 C calls, each of which may take kilobytes of stack
    /// (a `string.gsub` callback calling `string.gsub`, say), and assumes the stack holds
    /// them: below a few MiB a script can overflow it, which aborts the process. Keep it at
    /// 8 MiB or more unless the scripts are trusted.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder().stack_size(16 << 20).spawn(|_| Ok(()))?;
    /// // Deep C recursion (nested pattern matching, metamethod chains) fits in a bigger stack.
    /// assert_eq!(isle.eval::<i64>("return select('#', ('x'):rep(100):byte(1, -1))")?, 100);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = bytes;
        self
    }

    /// Chooses the standard libraries the VM is created with (default
    /// [`StdLib::ALL_SAFE`]). Unsafe libraries (`debug`, LuaJIT's `ffi`) need
    /// [`factory`](IsleBuilder::factory) with `Lua::unsafe_new_with`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua::StdLib;
    ///
    /// let isle = mlua_isle::Isle::builder()
    ///     .std_libs(StdLib::STRING | StdLib::MATH)
    ///     .spawn(|_| Ok(()))?;
    /// assert!(isle.eval::<bool>("return io == nil")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn std_libs(mut self, libs: StdLib) -> Self {
        self.libs = libs;
        self
    }

    /// Sets the [`LuaOptions`] the VM is created with.
    ///
    /// Whatever `catch_rust_panics` says, the isle installs its own `pcall` and `xpcall`: Lua
    /// 5.4's semantics (yields across them included), except that a Rust panic passes through
    /// them and ends the request with [`IsleError::Panic`].
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua::LuaOptions;
    ///
    /// let isle = mlua_isle::Isle::builder()
    ///     .lua_options(LuaOptions::new().catch_rust_panics(true))
    ///     .spawn(|lua| {
    ///         let boom = lua.create_function(|_, ()| -> mlua::Result<()> { panic!("boom") })?;
    ///         lua.globals().set("boom", boom)
    ///     })?;
    /// let err = isle.eval::<bool>("return (pcall(boom))").unwrap_err();
    /// assert!(err.is_panic());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn lua_options(mut self, options: LuaOptions) -> Self {
        self.options = options;
        self
    }

    /// Builds the VM with `factory` (on the Lua thread) instead of from
    /// [`std_libs`](IsleBuilder::std_libs) and [`lua_options`](IsleBuilder::lua_options).
    ///
    /// The isle still applies its own settings to the VM the factory returns: memory limit,
    /// text-only chunk loading (and, while binary chunks are refused, no native C modules even
    /// if the VM has `package.loadlib`), the interrupt hook, the guards against bugs of Lua's
    /// C code.
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua::{Lua, LuaOptions, StdLib};
    ///
    /// let isle = mlua_isle::Isle::builder()
    ///     .factory(|| unsafe { Ok(Lua::unsafe_new_with(StdLib::ALL, LuaOptions::new())) })
    ///     .spawn(|_| Ok(()))?;
    /// assert!(isle.eval::<bool>("return debug ~= nil")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn factory<F>(mut self, factory: F) -> Self
    where
        F: FnOnce() -> mlua::Result<Lua> + Send + 'static,
    {
        self.factory = Some(Box::new(factory));
        self
    }

    /// Limits the memory the VM may allocate, in bytes. Allocations past it fail with a Lua
    /// memory error ([`LuaErrorKind::Memory`](crate::LuaErrorKind::Memory)); the isle keeps
    /// serving.
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::LuaErrorKind;
    ///
    /// let isle = mlua_isle::Isle::builder().memory_limit(4 << 20).spawn(|_| Ok(()))?;
    /// let err = isle.eval::<()>("return string.rep('x', 8 * 1024 * 1024)").unwrap_err();
    /// assert_eq!(err.as_lua().unwrap().kind(), LuaErrorKind::Memory);
    /// assert_eq!(isle.eval::<i64>("return 1")?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Gives every request (and `init`) this long to finish, unless the request sets its own
    /// deadline. Time spent queued counts. Closing the VM (which runs the scripts' finalizers)
    /// gets as long: past that and the [grace period](Self::grace_period), the isle gives up
    /// on its thread, as for a request that would not stop.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let isle = mlua_isle::Isle::builder()
    ///     .timeout(Duration::from_millis(20))
    ///     .spawn(|_| Ok(()))?;
    /// assert!(isle.eval::<()>("while true do end").unwrap_err().is_timeout());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets how many requests may wait in the queue (default [`DEFAULT_QUEUE_CAPACITY`]).
    /// When it is full, submitting waits for room, or fails with [`IsleError::Full`] under
    /// [`Request::try_enqueue`](crate::Request::try_enqueue).
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder().queue_capacity(8).spawn(|_| Ok(()))?;
    /// assert_eq!(isle.eval::<i64>("1")?, 1);
    /// let err = mlua_isle::Isle::builder().queue_capacity(0).spawn(|_| Ok(())).unwrap_err();
    /// assert!(matches!(err, mlua_isle::IsleError::Config(_)));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Sets how many compiled `eval` chunks the isle keeps (least recently used are evicted;
    /// default [`DEFAULT_CHUNK_CACHE`]); 0 compiles every `eval` afresh.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder().chunk_cache(0).spawn(|_| Ok(()))?;
    /// assert_eq!(isle.eval::<i64>("1")?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn chunk_cache(mut self, chunks: usize) -> Self {
        self.chunk_cache = chunks;
        self
    }

    /// Lets Lua code load precompiled (binary) chunks: with `load`, `loadstring`, `loadfile`,
    /// `dofile` and `require`.
    ///
    /// Off by default: Lua does not verify bytecode, and a crafted binary chunk can crash the
    /// process. Turn it on only if every script is trusted. While it is off, each of those
    /// loads source only (a file or module holding bytecode is refused with Lua's "attempt to
    /// load a binary chunk" error, LuaJIT's "wrong mode"), and a VM built by a
    /// [`factory`](IsleBuilder::factory) that still has `package.loadlib` loads no native C
    /// modules either. (Luau cannot load bytecode from Lua at all; there this setting changes
    /// nothing.)
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder().allow_binary_chunks(true).spawn(|_| Ok(()))?;
    /// assert!(isle.is_alive());
    /// # #[cfg(not(feature = "luau"))] {
    /// let dumped = "string.dump(function() return 3 end)";
    /// let n = isle.eval::<i64>(format!("return (loadstring or load)({dumped})()"))?;
    /// assert_eq!(n, 3);
    /// # }
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn allow_binary_chunks(mut self, allow: bool) -> Self {
        self.allow_binary_chunks = allow;
        self
    }

    /// Sets how long a request may keep running after it was told to stop — its deadline
    /// passed, it was cancelled (by [`Task::cancel`](crate::Task::cancel), a dropped task, or
    /// a cancelled token it shares), or [`Isle::shutdown_timeout`] interrupted it — before the
    /// isle gives up on it (default [`DEFAULT_GRACE_PERIOD`]). Giving up resolves the request
    /// at once (with `Timeout`, `Cancelled` or `Shutdown`), resolves coroutine requests in
    /// progress and queued ones with [`IsleError::Shutdown`], makes the isle refuse new ones
    /// with [`IsleError::Abandoned`], and leaves its thread to end on its own (keeping its
    /// memory until then). Only code that no interrupt reaches runs that long: a loop in a
    /// `__gc` finalizer, a long C function, a host function that ignores its token. With a
    /// [default timeout](Self::timeout), closing the VM is bounded the same way.
    ///
    /// # Caveats
    ///
    /// A host function that blocks for longer than the grace period after its request was
    /// cancelled (say in [`without_interrupts`](crate::without_interrupts)) costs the isle;
    /// poll [`checkpoint`](crate::checkpoint) or wait on
    /// [`current_token`](crate::current_token) in long host functions.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let isle = mlua_isle::Isle::builder()
    ///     .grace_period(Duration::from_millis(100))
    ///     .spawn(|_| Ok(()))?;
    /// isle.shutdown_timeout(Duration::from_millis(100))?;
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Chooses how running Lua code is interrupted (default: `Interrupt::Signal` with `SIGURG`
    /// on Unix, `Interrupt::OnDemand` with Luau, [`Interrupt::Hook`] elsewhere); see
    /// [`Interrupt`] for the costs of each.
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{Interrupt, Isle};
    ///
    /// let isle = Isle::builder()
    ///     .interrupt(Interrupt::Hook { every: 10_000 })
    ///     .spawn(|_| Ok(()))?;
    /// assert_eq!(isle.eval::<i64>("1")?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn interrupt(mut self, interrupt: Interrupt) -> Self {
        self.interrupt = interrupt;
        self
    }

    /// Takes away what `sandbox` does not allow (see [`Sandbox`]). The host's `init` still
    /// runs with everything; the sandbox closes once it has run (read-only tables).
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{Isle, Sandbox};
    ///
    /// let isle = Isle::builder()
    ///     .sandbox(Sandbox::new().full_os(true))
    ///     .spawn(|_| Ok(()))?;
    /// assert!(isle.eval::<bool>("io == nil and os.time ~= nil")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    /// Everything for running code you did not write: the strict [`Sandbox`], a fresh
    /// environment per request ([`Isolation::FreshEnvironment`]), a memory limit of
    /// [`SANDBOX_MEMORY_LIMIT`], a default timeout of [`SANDBOX_TIMEOUT`] and a grace period of
    /// [`SANDBOX_GRACE_PERIOD`]. Each can be changed by a later call (`.timeout(..)`, say).
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{Isle, IsleError};
    ///
    /// let isle = Isle::builder()
    ///     .sandboxed()
    ///     .spawn(|lua| lua.globals().set("greet", lua.create_function(|_, n: String| Ok(format!("hi {n}")))?))?;
    /// assert_eq!(isle.eval::<String>("greet('you')")?, "hi you");
    /// assert!(isle.eval::<bool>("os.exit == nil and io == nil")?);
    /// assert!(matches!(isle.eval::<()>("while true do end"), Err(IsleError::Timeout)));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn sandboxed(self) -> Self {
        self.sandbox(Sandbox::new())
            .isolation(Isolation::FreshEnvironment)
            .memory_limit(SANDBOX_MEMORY_LIMIT)
            .timeout(SANDBOX_TIMEOUT)
            .grace_period(SANDBOX_GRACE_PERIOD)
    }

    /// Chooses what a request sees of earlier ones (default [`Isolation::Shared`]).
    /// [`Isolation::FreshVm`] needs a pool: [`spawn`](Self::spawn) refuses it with
    /// [`IsleError::Config`].
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{Isle, Isolation};
    ///
    /// let isle = Isle::builder().isolation(Isolation::FreshEnvironment).spawn(|_| Ok(()))?;
    /// isle.eval::<()>("leftover = true")?;
    /// assert_eq!(isle.eval::<Option<bool>>("leftover")?, None);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Installs the `task` global: tasks, channels, `select`, timers and tickers for scripts,
    /// scoped to the request that spawns them (see [`TaskLibrary`] and the crate docs).
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{Isle, TaskLibrary};
    ///
    /// let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let both: (i64, i64) = isle.eval(r#"
    ///     local a = task.spawn(function() task.sleep(0.001) return 1 end)
    ///     local b = task.spawn(function() return 2 end)
    ///     return a:join(), b:join()
    /// "#)?;
    /// assert_eq!(both, (1, 2));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn task_library(mut self, tasks: TaskLibrary) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// LuaJIT only: whether the JIT compiler may run (default: off).
    ///
    /// LuaJIT runs no hook inside compiled code, so with the JIT on, a loop that got compiled
    /// (`while true do end` is, after a few dozen iterations) cannot be cancelled nor stopped
    /// at its deadline; only the [hard stop](Self::grace_period) ends the request, giving up
    /// the isle. With the JIT off (the default), every request is interruptible and Lua code
    /// runs in LuaJIT's interpreter (itself faster than PUC Lua's); `jit.on()` then raises an
    /// error. Turn it on for trusted, CPU-heavy code that you are prepared to lose to the hard
    /// stop rather than cancel.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder().jit(true).spawn(|_| Ok(()))?;
    /// assert!(isle.eval::<bool>("jit.status()")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "luajit", feature = "luajit52"))))]
    pub fn jit(mut self, enabled: bool) -> Self {
        self.jit = enabled;
        self
    }

    /// How deeply nested a value may be that [`Serde`](crate::Serde) converts, in either
    /// direction, and that is read from an error raised with a table
    /// ([`LuaError::value`](crate::LuaError::value)); default [`DEFAULT_SERDE_DEPTH`](crate::DEFAULT_SERDE_DEPTH).
    ///
    /// Each table (or Rust sequence, map, struct or enum variant) is one level. A deeper value,
    /// or a table that contains itself, is refused with a conversion error before its
    /// conversion, which recurses on the isle's thread, could exhaust that thread's stack: a
    /// script cannot crash the process by returning a table nested a million levels deep.
    /// Raise it only with a [stack](Self::stack_size) to match (a few hundred bytes of stack
    /// per level).
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{Isle, LuaErrorKind, Serde};
    ///
    /// let isle = Isle::builder().serde_depth(2).spawn(|_| Ok(()))?;
    /// assert!(isle.eval::<Serde<serde_json::Value>>("{ { 1 } }").is_ok());
    /// let err = isle.eval::<Serde<serde_json::Value>>("{ { { 1 } } }").unwrap_err();
    /// assert_eq!(err.as_lua().unwrap().kind(), LuaErrorKind::Conversion);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn serde_depth(mut self, depth: usize) -> Self {
        self.serde_depth = depth;
        self
    }

    /// Starts the Lua thread, creates the VM there and runs `init` on it; returns once `init`
    /// has finished.
    ///
    /// # Errors
    ///
    /// [`IsleError::Config`] for an invalid setting (a queue capacity of 0),
    /// [`IsleError::Spawn`] if the thread cannot be started, and [`IsleError::Init`] if creating
    /// the VM, applying the memory limit or `init` fails, panics or exceeds the default
    /// timeout.
    ///
    /// # Blocking
    ///
    /// Blocks until `init` has finished; if it failed, also until the VM is closed, which runs
    /// the finalizers (`__gc`) of what `init` made. With a [default timeout](Self::timeout),
    /// that close is bounded like a [`shutdown`](crate::Isle::shutdown)'s: past the deadline
    /// plus the grace period, the isle gives up on the thread and this returns
    /// `Init(Timeout)`.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder().spawn(|lua| {
    ///     lua.globals().set("version", 1)
    /// })?;
    /// assert_eq!(isle.eval::<i64>("version")?, 1);
    ///
    /// let err = mlua_isle::Isle::builder().spawn(|lua| lua.load("error('bad init')").exec());
    /// assert!(matches!(err.unwrap_err(), mlua_isle::IsleError::Init(_)));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn<F>(self, init: F) -> Result<Isle, IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<()> + Send + 'static,
    {
        self.spawn_with(init).map(|(isle, ())| isle)
    }

    /// Like [`spawn`](IsleBuilder::spawn), but `init` returns a value, handed to the caller
    /// with the isle: something made on the Lua thread during `init` (a channel whose other
    /// end a host function holds, a count, a summary of what was loaded).
    ///
    /// # Errors
    ///
    /// As [`spawn`](IsleBuilder::spawn). When `init` fails, or when it succeeds but the isle
    /// still fails to start (its deadline passed meanwhile, say), its value is dropped.
    ///
    /// # Blocking
    ///
    /// As [`spawn`](Self::spawn).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let (isle, events) = mlua_isle::Isle::builder().spawn_with(|lua| {
    ///     let (tx, rx) = mpsc::channel::<String>();
    ///     let emit = lua.create_function(move |_, event: String| Ok(tx.send(event).is_ok()))?;
    ///     lua.globals().set("emit", emit)?;
    ///     Ok(rx)
    /// })?;
    /// isle.eval::<bool>("emit('ready')")?;
    /// assert_eq!(events.recv().unwrap(), "ready");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn_with<T, F>(self, init: F) -> Result<(Isle, T), IsleError>
    where
        F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (init, value) = returning(init);
        let launched = self.launch(init)?;
        launched.ready.wait_long_until(None);
        let outcome = launched.ready.take();
        let isle = launched.started(outcome).map(Isle::new)?;
        Ok((isle, value.take()))
    }

    /// A copy of these settings for another isle. A one-shot factory cannot be copied: check
    /// [`has_factory`](Self::has_factory) first.
    pub(crate) fn replicate(&self) -> IsleBuilder {
        IsleBuilder {
            thread_name: self.thread_name.clone(),
            stack_size: self.stack_size,
            libs: self.libs,
            options: self.options.clone(),
            factory: None,
            memory_limit: self.memory_limit,
            timeout: self.timeout,
            queue_capacity: self.queue_capacity,
            chunk_cache: self.chunk_cache,
            allow_binary_chunks: self.allow_binary_chunks,
            grace_period: self.grace_period,
            interrupt: self.interrupt,
            #[cfg(any(feature = "luajit", feature = "luajit52"))]
            jit: self.jit,
            sandbox: self.sandbox.clone(),
            isolation: self.isolation,
            tasks: self.tasks.clone(),
            #[cfg(feature = "serde")]
            serde_depth: self.serde_depth,
            feed: None,
        }
    }

    /// Whether a one-shot VM factory is set.
    pub(crate) fn has_factory(&self) -> bool {
        self.factory.is_some()
    }

    /// The thread name, if set.
    pub(crate) fn name(&self) -> Option<&str> {
        self.thread_name.as_deref()
    }

    /// The default timeout of requests, if set.
    pub(crate) fn default_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Makes the isle's thread also serve `feed`.
    pub(crate) fn set_feed(&mut self, feed: Feed) {
        self.feed = Some(feed);
    }

    /// Validates the settings and starts the Lua thread; `init` reports through `ready`.
    pub(crate) fn launch(self, init: worker::Init) -> Result<Launched, IsleError> {
        if self.queue_capacity == 0 {
            return Err(IsleError::Config("queue capacity must be at least 1"));
        }
        if self.isolation == Isolation::FreshVm {
            return Err(IsleError::Config(
                "a fresh VM per request needs a pool (IslePoolBuilder::isolation)",
            ));
        }
        let libs = match &self.sandbox {
            Some(sandbox) => crate::sandbox::libraries(sandbox, self.libs),
            None => self.libs,
        };
        let name = self.thread_name.unwrap_or_else(|| "mlua-isle".to_owned());
        if name.contains('\0') {
            return Err(IsleError::Config(
                "a thread name must not contain a NUL byte",
            ));
        }
        let (tx, rx) = crossbeam_channel::bounded(self.queue_capacity);
        let shared = Shared::new(self.timeout, self.grace_period, rx.clone());
        let ready = Slot::new((), None);
        let setup = Setup {
            source: match self.factory {
                Some(factory) => VmSource::Factory(factory),
                None => VmSource::Std {
                    libs,
                    options: self.options,
                },
            },
            memory_limit: self.memory_limit,
            stack_size: self.stack_size,
            chunk_cache: self.chunk_cache,
            allow_binary_chunks: self.allow_binary_chunks,
            interrupt: self.interrupt,
            feed: self.feed,
            #[cfg(any(feature = "luajit", feature = "luajit52"))]
            jit: self.jit,
            sandbox: self.sandbox,
            isolation: self.isolation,
            tasks: self.tasks,
            #[cfg(feature = "serde")]
            serde_depth: self.serde_depth,
        };
        let thread = {
            let shared = shared.clone();
            let rx = rx.clone();
            let ready = Completer::new(ready.clone());
            // Resolved when this thread is done with the isle, however it ends: with the panic,
            // if one escaped the worker.
            let exited = Completer::new(shared.exited.clone());
            let key = setup.source.key();
            IsleThread::spawn(name, self.stack_size, key, move |prepared| {
                let watched = shared.clone();
                let preparation = setup.source.preparation();
                let run = || worker::run(setup, init, shared, rx, ready, prepared);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
                wait::leave_isle();
                match outcome {
                    // The VM is closed and what the thread kept for it reset: another isle may
                    // start here (the thread makes the next VM like this one meanwhile),
                    // unless this one gave up on the thread (it ends as promised).
                    Ok(()) if !watched.is_abandoned() => AfterRun::Wait(preparation),
                    Ok(()) => AfterRun::End,
                    Err(panic) => {
                        exited.complete(Err(IsleError::Panic(worker::panic_message(&*panic))));
                        AfterRun::End
                    }
                }
            })
            .map_err(IsleError::Spawn)?
        };
        Ok(Launched {
            handle: Handle::new(tx, shared),
            thread,
            ready,
        })
    }
}

impl Launched {
    /// Interprets the outcome of `init` (`None`: the thread ended without reporting).
    pub(crate) fn started(
        mut self,
        outcome: Option<Result<(), IsleError>>,
    ) -> Result<Self, IsleError> {
        let abandoned = self.handle.shared.is_abandoned();
        match outcome {
            Some(Ok(())) => Ok(self),
            // `init` could not be interrupted in time: leave its thread to end on its own.
            Some(Err(err)) if abandoned => Err(IsleError::Init(Box::new(err))),
            Some(Err(IsleError::Shutdown)) | None => {
                // The thread ended without reporting: it panicked outside `init`, and reports
                // that as it ends. (It is ending, so joining does not block long.)
                self.thread.join();
                let err = match self.handle.shared.exited.take() {
                    Some(Err(panic @ IsleError::Panic(_))) => panic,
                    _ => IsleError::Shutdown,
                };
                Err(IsleError::Init(Box::new(err)))
            }
            Some(Err(err)) => {
                // `init` failed and the thread is ending: joining waits only for that.
                self.thread.join();
                Err(IsleError::Init(Box::new(err)))
            }
        }
    }
}

/// Makes `init` the isle's `init`, leaving its value for the caller in the returned
/// [`InitValue`].
pub(crate) fn returning<T, F>(init: F) -> (worker::Init, InitValue<T>)
where
    F: FnOnce(&Lua) -> mlua::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let value = InitValue(Arc::new(Mutex::new(None)));
    let slot = value.0.clone();
    let init = move |lua: &Lua| {
        let made = init(lua)?;
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(made);
        Ok(())
    };
    (Box::new(init), value)
}

/// Where an `init` made by [`returning`] leaves its value.
pub(crate) struct InitValue<T>(Arc<Mutex<Option<T>>>);

impl<T> InitValue<T> {
    /// The value, once the isle has started: `init` succeeded, so it left one (the Lua thread
    /// reported that after `init` returned, which orders the two).
    pub(crate) fn take(self) -> T {
        // Only set and taken whole: a poisoned lock is taken over.
        let value = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        value.expect("an isle starts only after its `init` returned a value")
    }
}

/// A started Lua thread, before or after its `init` finished.
pub(crate) struct Launched {
    pub(crate) handle: Handle,
    pub(crate) thread: IsleThread,
    /// Resolved by the Lua thread once `init` has finished.
    pub(crate) ready: Arc<Slot<()>>,
}
