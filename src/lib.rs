//! Run a Lua VM on a thread of its own and drive it from any thread.
//!
//! # Why
//!
//! [`mlua::Lua`] is `!Send`: a VM cannot move between threads, so it does not fit in a
//! multi-threaded server, a thread pool or a UI that must not block. An [`Isle`] confines one
//! VM to a dedicated OS thread and hands out a `Send + Sync` handle that talks to it over a
//! bounded queue. Only `Send` closures and values cross; the VM itself never leaves its thread,
//! so no `unsafe impl Send` is involved.
//!
//! # Requests
//!
//! ```
//! use mlua_isle::Isle;
//!
//! // `init` runs on the new thread, with the VM.
//! let isle = Isle::spawn(|lua| {
//!     lua.load("function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end")
//!         .exec()
//! })?;
//!
//! // Blocking requests: evaluate code, call a global function, run a closure on the VM.
//! assert_eq!(isle.eval::<i64>("1 + 2")?, 3);
//! assert_eq!(isle.call::<i64>("fib", 20)?, 6765);
//! let globals = isle.exec(|lua| Ok(lua.globals().pairs::<String, mlua::Value>().count()))?;
//! assert!(globals > 10);
//!
//! // Non-blocking: queue now, wait later.
//! let task = isle.spawn_call::<i64>("fib", 25)?;
//! assert_eq!(task.wait()?, 75025);
//! # Ok::<(), mlua_isle::IsleError>(())
//! ```
//!
//! Code and function names can be any string: a `&str` of any lifetime (a line a user typed,
//! `format!(..).as_str()`), `String`, `Arc<str>`, `Cow<str>`; see [`Code`]. Arguments and
//! results are converted with mlua's [`IntoLuaMulti`](mlua::IntoLuaMulti) and
//! [`FromLuaMulti`](mlua::FromLuaMulti) on the Lua thread. Requests run one at a time, in queue
//! order. Each resolves exactly once: with its value or an [`IsleError`].
//!
//! A Lua function can be kept for later: [`Isle::function`] (a global) and
//! [`Isle::eval_function`] (what a chunk returns: a closure and its state, say) hand out a
//! [`FunctionHandle`], a `Send + Sync` key to the function, which stays on the isle's thread.
//! [`Isle::call_function`] calls it as a request like any other; the function is freed as soon
//! as the last clone of its handle is dropped. And `init` can return a value made on the Lua
//! thread to whoever starts the isle: [`Isle::spawn_with`].
//!
//! ```
//! use mlua_isle::Isle;
//!
//! let (isle, loaded) = Isle::spawn_with(|lua| {
//!     lua.load("rules = { min = 1, max = 3 }").exec()?;
//!     Ok(2)
//! })?;
//! assert_eq!(loaded, 2);
//! let clamp = isle.eval_function("function(x) return math.max(rules.min, math.min(rules.max, x)) end")?;
//! let handle = clamp.clone();
//! let clamped = std::thread::scope(|s| {
//!     s.spawn(|| isle.call_function::<i64>(&handle, 10)).join().unwrap()
//! })?;
//! assert_eq!(clamped, 3);
//! # Ok::<(), mlua_isle::IsleError>(())
//! ```
//!
//! # Cancellation and deadlines
//!
//! Every request can be given a deadline and a [`CancelToken`] through [`Isle::request`]; an
//! isle-wide default deadline is set with [`IsleBuilder::timeout`]. A [`Task`] cancels its
//! request when asked, or when dropped unfinished.
//!
//! ```
//! use std::time::Duration;
//! use mlua_isle::Isle;
//!
//! let isle = Isle::spawn(|_| Ok(()))?;
//! let task = isle.spawn_eval::<()>("while true do pcall(function() while true do end end) end")?;
//! task.cancel();
//! assert!(task.wait().unwrap_err().is_cancelled());
//!
//! let err = isle.request().timeout(Duration::from_millis(20)).eval::<()>("while true do end");
//! assert!(err.unwrap_err().is_timeout());
//! assert_eq!(isle.eval::<i64>("1")?, 1); // the VM is still usable
//! # Ok::<(), mlua_isle::IsleError>(())
//! ```
//!
//! A request cancelled while queued never starts. A running one is interrupted inside the VM:
//! from then on every Lua instruction, on every coroutine involved, stops it again (a coroutine
//! that can yield is yielded, anything else raises an error), so `pcall`, `xpcall` (even with
//! a looping message handler), coroutines and metamethods cannot absorb it. Once a request's
//! token is cancelled or its deadline has passed, its outcome is [`IsleError::Cancelled`] or
//! [`IsleError::Timeout`], whatever the code did with the interruption.
//!
//! ## Interruption costs nothing while unused
//!
//! On Unix the default `Interrupt::Signal` installs no hook at all while no interrupt is
//! pending, so Lua runs at full speed. A cancel, or the watchdog thread at a deadline, sends a
//! signal (`SIGURG` by default) to the isle's thread; its handler arms a debug hook on the
//! running coroutine chain, and the hook removes itself once the request has unwound. Luau has
//! no hooks: its default, `Interrupt::OnDemand`, sets Luau's interrupt callback only while an
//! interrupt is pending.
//! [`Interrupt::Hook`] keeps a count hook installed instead: portable, but Lua runs about half
//! as fast whenever any hook is set. See [`Interrupt`] for the details and
//! [`without_interrupts`] for host functions making blocking system calls.
//!
//! ## What cannot be interrupted
//!
//! The interrupt stops Lua code, not native code:
//!
//! - a Rust host function keeps running until it returns; long ones should check
//!   [`checkpoint`] (or wait on [`current_token`]) and return early;
//! - a single long C function (a huge `string.rep`, a pathological pattern match) finishes
//!   before the interrupt is seen;
//! - Lua runs `__gc` finalizers with hooks disabled, so a loop inside one cannot be stopped;
//! - a script with access to the `debug` library (not loaded by default) can remove the hook.
//!
//! For such code there is a hard stop: when a request is still running a
//! [grace period](IsleBuilder::grace_period) after its deadline, the isle gives up on it. The
//! caller gets [`IsleError::Timeout`] at once, queued requests [`IsleError::Shutdown`], new
//! ones [`IsleError::Abandoned`]; the isle's thread is left to end on its own when the stuck
//! code returns, and keeps its memory until then. [`Isle::shutdown_timeout`] gives up the same
//! way.
//!
//! # Pools
//!
//! One isle is one core. An [`IslePool`] runs several isles made from the same
//! [`IsleBuilder`]: a request goes to whichever member is free first, [`IslePool::checkout`]
//! hands out one member for a multi-step session, and members are replaced by fresh VMs
//! when the [`Recycle`] policy says so, when they panic, or when they die.
//!
//! ```
//! use mlua_isle::{IslePool, Recycle};
//!
//! let pool = IslePool::builder()
//!     .size(2)
//!     .recycle(Recycle::new().after_requests(1000))
//!     .spawn(|lua| lua.load("function square(x) return x * x end").exec())?;
//! let tasks: Vec<_> = (1..=4).map(|i| pool.spawn_call::<i64>("square", i)).collect::<Result<_, _>>()?;
//! let squares: Vec<i64> = tasks.into_iter().map(|t| t.wait()).collect::<Result<_, _>>()?;
//! assert_eq!(squares, [1, 4, 9, 16]);
//!
//! let session = pool.checkout()?; // exclusive until dropped; moves into threads
//! session.exec(|lua| lua.globals().set("step", 1))?;
//! assert_eq!(session.eval::<i64>("step")?, 1);
//! # Ok::<(), mlua_isle::IsleError>(())
//! ```
//!
//! # Untrusted scripts
//!
//! [`IsleBuilder::sandboxed`] is the preset for code you did not write: a strict [`Sandbox`]
//! (no file system, processes, `debug`, modules or bytecode; `load` only with an environment;
//! `print` to a [`PrintSink`]; no finalizers; read-only libraries and host tables), a fresh
//! environment per request ([`Isolation::FreshEnvironment`]), a memory limit and a deadline.
//! Pools add [`Isolation::FreshVm`]. The README states the threat model.
//!
//! ```
//! use mlua_isle::{Isle, IsleError};
//!
//! let isle = Isle::builder()
//!     .sandboxed()
//!     .spawn(|lua| lua.load("rules = { max = 3 }").exec())?;
//! assert_eq!(isle.eval::<i64>("rules.max")?, 3);
//! assert!(isle.eval::<()>("rules.max = 100").is_err());
//! assert!(isle.eval::<bool>("os.execute == nil and io == nil")?);
//! isle.eval::<()>("scratch = 1")?;
//! assert_eq!(isle.eval::<Option<i64>>("scratch")?, None);
//! # Ok::<(), IsleError>(())
//! ```
//!
//! # Concurrency inside Lua
//!
//! [`IsleBuilder::task_library`] installs a `task` global: lightweight tasks, channels,
//! `select` and timers for scripts, scoped to the request that spawns them, with CPU-bound
//! tasks preempted through the same on-demand interrupt a cancel uses. The [`host`] module
//! connects scripts with Rust: channels both ways and request/reply.
//!
//! ```
//! use mlua_isle::{Isle, TaskLibrary};
//!
//! let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
//! let first: String = isle.eval(r#"
//!     local fast, slow = task.channel(1), task.channel(1)
//!     task.spawn(function() task.sleep(0.05) slow:send("slow") end)
//!     task.spawn(function() fast:send("fast") end)
//!     local _, v = task.select{ {recv = slow}, {recv = fast} }
//!     return v
//! "#)?;
//! assert_eq!(first, "fast");
//! # Ok::<(), mlua_isle::IsleError>(())
//! ```
//!
//! # Async (`tokio` feature)
//!
//! [`AsyncIsle`] is the same isle with waits that yield to the executor: a cheap `Clone`
//! handle for your tasks, plus an [`AsyncIsleDriver`] that owns the lifecycle. Requests return
//! [`AsyncTask`] futures; dropping one (or the future of `isle.eval(..).await`) cancels its
//! request. A full queue makes submission wait asynchronously for room.
//!
//! Coroutine requests ([`AsyncIsle::coroutine_eval`], [`AsyncIsle::coroutine_call`]) run Lua
//! code as a coroutine that may call async Rust functions (`Lua::create_async_function`);
//! while it awaits, the isle serves other requests and coroutines. For these, the isle's thread
//! runs its own current-thread tokio runtime, so async host functions can use tokio's timers,
//! channels and (with tokio's `net`/`fs` features enabled in your application) I/O.
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mlua_isle::IsleError> {
//! use std::time::Duration;
//! use mlua_isle::AsyncIsle;
//!
//! let (isle, driver) = AsyncIsle::spawn(|lua| {
//!     let sleep = lua.create_async_function(|_, ms: u64| async move {
//!         tokio::time::sleep(Duration::from_millis(ms)).await;
//!         Ok(ms)
//!     })?;
//!     lua.globals().set("sleep", sleep)
//! })
//! .await?;
//! let (a, b) = tokio::join!(
//!     isle.coroutine_eval::<u64>("return sleep(20)"),
//!     isle.eval::<i64>("1 + 1"), // served while the coroutine sleeps
//! );
//! assert_eq!((a?, b?), (20, 2));
//! driver.shutdown().await
//! # }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! # Failures stay inside the request
//!
//! A panic in an [`exec`](Isle::exec) closure or in a host function ends that request with
//! [`IsleError::Panic`]: the isle's `pcall`, `xpcall` and `coroutine.resume` let it through
//! (otherwise they behave exactly like Lua's own). A memory error (see [`IsleBuilder::memory_limit`]), a Lua error, a cancel or a
//! timeout likewise end one request: the VM, its globals and the thread carry on.
//!
//! A blocking call made on the isle's own thread (from a host function) would wait for itself;
//! it returns [`IsleError::Reentrant`] instead.
//!
//! # Tracing (`tracing` feature)
//!
//! Each request opens a [`tracing`](https://docs.rs/tracing) span named `request` (target
//! `mlua_isle`, level INFO) on the Lua thread when it starts; the code it runs, host functions
//! included, runs inside it (every stretch of a coroutine request too). Its fields: `isle` (the
//! id of the isle or pool member running it), `request` (unique in the process), `kind`
//! (`eval`, `call`, `exec`, `coroutine_eval`, `coroutine_call`, `call_function`, `checkout`,
//! ...), `queue_wait_us`, and once it is resolved `run_us` and `outcome` (`ok`, `lua_error`,
//! `cancelled`, `timeout`, `panic`, `shutdown`, `abandoned`, ...). Events: `request cancelled`
//! (DEBUG) and `request deadline passed` (INFO) in the span, or with the request's id and kind
//! when it was still queued; a hard stop (WARN, with the isle's id); in pools, `pool member
//! recycled` (DEBUG, with the cause), `pool member replaced` (DEBUG), a member that ended
//! unexpectedly or failed to start (WARN). Without the feature none of this is compiled. A
//! request carries tracing state only if, when it was submitted, a subscriber wanted INFO spans
//! of the target `mlua_isle`: with the feature on and nobody listening, a round trip costs what
//! it costs without (see `benches/tracing.rs`).
//!
//! ```
//! // Any subscriber works; this one prints each request span's fields as it closes:
//! // tracing_subscriber::fmt().with_span_events(FmtSpan::CLOSE).init();
//! let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
//! assert_eq!(isle.eval::<i64>("1 + 1")?, 2); // one `request` span, outcome `ok`
//! # Ok::<(), mlua_isle::IsleError>(())
//! ```
//!
//! # Lifecycle
//!
//! [`Isle::shutdown`] lets queued work finish and joins the thread, reporting a panic;
//! [`Isle::shutdown_timeout`] stops waiting after a while. Dropping an `Isle` never blocks: the
//! thread finishes the work still wanted and closes the VM by itself. A thread that has served
//! its isle waits a second for the next isle with its name (if that name came up before the
//! thread was started), which then starts without a new thread
//! ([`IsleBuilder::thread_name`]).
//!
//! # Feature flags
//!
//! - The Lua version, exactly one of: `lua54` (default), `lua55`, `lua53`, `lua52`, `lua51`,
//!   `luajit`, `luajit52`, `luau`. To pick another than 5.4, turn the defaults off:
//!   `mlua-isle = { version = "0.1", default-features = false, features = ["luau", "vendored"] }`.
//!   Cancellation, deadlines and memory limits work on every version; the README's version
//!   table says which mechanism each uses and what differs.
//! - `vendored` (default): build Lua from source (no system Lua needed).
//! - `tokio`: the async API and coroutine requests.
//! - `tracing`: a span per request and events for stops and pool recycling (see
//!   [Tracing](#tracing-tracing-feature)).
//! - `serde`: `Serde<T>`, arguments and results of any serde type (depth-limited, see
//!   `IsleBuilder::serde_depth`), and `LuaError::value`: the table a script raised as its
//!   error (`error({ code = 42 })`), as a `serde_json::Value`.
//!
//! # Caveats
//!
//! - The isle replaces `pcall`, `xpcall` and `coroutine.wrap`/`resume`/`close` with
//!   versions that keep the Lua version's own semantics (including yields across `pcall` where
//!   the version has them), let Rust panics through and keep interrupts reachable. A VM built by a [factory](IsleBuilder::factory) gets
//!   them too.
//! - Lua leaves debug hooks disabled for good in a coroutine that was killed by an error raised
//!   from a hook. On Lua 5.4 and 5.5, which run the `__close` handlers of dead coroutines, the
//!   isle allows hooks in such a coroutine again before they run and before it is resumed, but
//!   `Thread::reset` from Rust closes it out of the isle's reach: close a coroutine that was
//!   interrupted where it could not yield with `coroutine.close` rather than `Thread::reset`.
//! - Setting your own debug hook (`Lua::set_hook`), thread event callback
//!   (`Lua::set_thread_event_callback`) or, on Luau, interrupt (`Lua::set_interrupt`) on an
//!   isle's VM replaces the isle's.
//! - LuaJIT: the JIT compiler is off unless `IsleBuilder::jit` turns it on, because hooks do
//!   not run in compiled code; LuaJIT does not limit how deeply C calls nest, so its default
//!   thread stack is large ([`DEFAULT_STACK_SIZE`]).
//! - Lua code loads source only, `require` included, unless
//!   [`IsleBuilder::allow_binary_chunks`] says otherwise. On Lua 5.1 and LuaJIT, a few library
//!   functions are guarded against bugs of Lua's C code that a script could reach (5.1's
//!   `unpack` with a huge range, its unbounded pattern recursion; LuaJIT's C calls nesting
//!   through coroutines): such calls raise a Lua error instead of crashing the process.
//! - Without a [memory limit](IsleBuilder::memory_limit), an allocation the system cannot
//!   satisfy aborts the process (mlua's allocator does so): Lua 5.5's
//!   `string.rep('x', 2^40)`, say. Give untrusted code a memory limit.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod convert;
mod core;
mod error;
mod handle;
mod interrupt;
mod lua_thread;
mod lualib;
mod pool;
mod sandbox;

#[cfg(not(any(
    feature = "lua54",
    feature = "lua55",
    feature = "lua53",
    feature = "lua52",
    feature = "lua51",
    feature = "luajit",
    feature = "luajit52",
    feature = "luau"
)))]
compile_error!(
    "mlua-isle needs a Lua version: enable exactly one of the features `lua54`, `lua55`, \
     `lua53`, `lua52`, `lua51`, `luajit`, `luajit52` or `luau`"
);

#[cfg(any(
    all(
        feature = "lua54",
        any(
            feature = "lua55",
            feature = "lua53",
            feature = "lua52",
            feature = "lua51",
            feature = "luajit",
            feature = "luajit52",
            feature = "luau"
        )
    ),
    all(
        feature = "lua55",
        any(
            feature = "lua53",
            feature = "lua52",
            feature = "lua51",
            feature = "luajit",
            feature = "luajit52",
            feature = "luau"
        )
    ),
    all(
        feature = "lua53",
        any(
            feature = "lua52",
            feature = "lua51",
            feature = "luajit",
            feature = "luajit52",
            feature = "luau"
        )
    ),
    all(
        feature = "lua52",
        any(
            feature = "lua51",
            feature = "luajit",
            feature = "luajit52",
            feature = "luau"
        )
    ),
    all(
        feature = "lua51",
        any(feature = "luajit", feature = "luajit52", feature = "luau")
    ),
    all(feature = "luajit", any(feature = "luajit52", feature = "luau")),
    all(feature = "luajit52", feature = "luau"),
))]
compile_error!(
    "mlua-isle: more than one Lua version feature is enabled; enable exactly one (to use a \
     version other than the default `lua54`, set `default-features = false`)"
);

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use crate::convert::{Serde, DEFAULT_SERDE_DEPTH};
pub use crate::core::token::{CancelToken, Cancellation, DropGuard};
pub use crate::error::{IsleError, LuaError, LuaErrorKind};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use crate::handle::async_isle::{Async, AsyncIsle, AsyncIsleDriver};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use crate::handle::async_task::AsyncTask;
pub use crate::handle::builder::{
    IsleBuilder, DEFAULT_CHUNK_CACHE, DEFAULT_GRACE_PERIOD, DEFAULT_QUEUE_CAPACITY,
    DEFAULT_STACK_SIZE, SANDBOX_GRACE_PERIOD, SANDBOX_MEMORY_LIMIT, SANDBOX_TIMEOUT,
};
pub use crate::handle::code::Code;
pub use crate::handle::function::FunctionHandle;
pub use crate::handle::isle::Isle;
pub use crate::handle::request::{Blocking, Request};
pub use crate::handle::task::Task;
pub use crate::interrupt::{without_interrupts, Interrupt};
pub use crate::lua_thread::current::{checkpoint, current_deadline, current_token};
pub use crate::lualib::host;
pub use crate::lualib::TaskLibrary;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use crate::pool::{AsyncIslePool, AsyncIslePoolDriver, PooledAsyncIsle};
pub use crate::pool::{
    IslePool, IslePoolBuilder, PoolStats, PooledIsle, Recycle, Recycled,
    DEFAULT_POOL_QUEUE_PER_MEMBER,
};
pub use crate::sandbox::{take_output, Isolation, PrintSink, Sandbox};

// The README's examples are compiled and run as doctests (they use the `tokio` and `serde`
// features).
#[cfg(all(doctest, feature = "tokio", feature = "serde"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The mlua version this crate is built on, re-exported so that `init` closures and host
/// functions use the same types.
pub use mlua;
