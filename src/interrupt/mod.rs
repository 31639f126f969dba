//! How a running request is stopped, at the level of Lua's C API.
//!
//! # Generations
//!
//! The caller side ([`Interrupter`]) is Lua-free. Each running request is tagged with a
//! *generation*; a cancel raises the *cancelled generation* to that of the request it targets,
//! and a passed deadline raises the *expired generation*. An interrupt is pending exactly while
//! the running generation is at most one of them, so a cancel that arrives after its request
//! finished can never stop the next one.
//!
//! # Stopping Lua code
//!
//! While an interrupt is pending, a count hook fires at *every* instruction of every coroutine
//! it is set on. In a coroutine that can yield, the hook yields it (the coroutine stays intact
//! and its resumer continues); anywhere else it raises an error. A `pcall` can catch that error,
//! but the very next instruction raises it again, so the request unwinds to the top. Lua runs an
//! `xpcall` message handler with hooks disabled when the error came from a hook, so `xpcall` is
//! wrapped: while an interrupt is pending its handler passes the error through.
//!
//! # Lua versions
//!
//! - Lua 5.3 to 5.5 yield an interrupted coroutine that can yield; Lua 5.1, 5.2 and LuaJIT
//!   cannot tell, and always raise.
//! - `pcall`/`xpcall` are C functions here ([`pcall`]) on Lua 5.1 and 5.3 to 5.5, and Lua
//!   wrappers around the originals on Lua 5.2, LuaJIT and Luau, which can yield across their
//!   own `pcall` but have no continuations of 5.3's shape.
//! - Only Lua 5.4 and 5.5 need to allow hooks again in a coroutine killed by the interrupt
//!   ([`allowhook`]): they alone run `__close` handlers in a dead coroutine.
//! - LuaJIT's hooks are global rather than per coroutine, run nowhere in compiled code (the
//!   JIT is off by default), and need the `load` guard of [`jit`].
//! - Luau has no hooks: [`luau`] sets its VM-wide interrupt callback instead, from whichever
//!   thread notices the cancel or deadline; no signal, no resume chain.
//!
//! # Arming the hook
//!
//! - [`Interrupt::Hook`]: a count hook is installed on the VM for good and checks every
//!   `every` instructions; every coroutine inherits it. Simple, portable, and it makes Lua take
//!   its slower tracing path on every instruction.
//! - [`Interrupt::Signal`] (Unix): no hook at all while idle. A cancel (or the watchdog, at a
//!   deadline) sends a signal to the isle's thread; the handler, running on that thread, sets the
//!   hook on every coroutine that is running or waiting for one it resumed. `lua_sethook` is
//!   documented as safe to call from a signal handler. To know those coroutines, the VM's
//!   `coroutine.resume`, `coroutine.wrap` and `coroutine.close` are wrapped to record the chain
//!   of resumed coroutines, and resumes driven from Rust are recorded through mlua's thread event
//!   callback. When the request ends, the generation is cleared first, then the hooks: any hook
//!   left on a coroutine removes itself the next time it fires with nothing pending.
//!
//! # Layer
//!
//! The lowest layer above `error`; `core` and `lua_thread` build on it. Apart from its tests it
//! imports nothing else of the crate but the watchdog's clock (`core::watchdog::ticks`), in
//! which the time a stop was requested is recorded, and (with the `serde` feature) the error
//! slot of `convert`, in which a coroutine request's base frame notes a table error.

#[cfg(any(feature = "lua54", feature = "lua55"))]
mod allowhook;
mod arm_pace;
#[cfg(not(feature = "luau"))]
mod chain;
#[cfg(not(feature = "luau"))]
mod hook;
#[cfg(feature = "luau")]
mod luau;
#[cfg(feature = "tokio")]
pub(crate) use hook::take_yielded;
#[cfg(feature = "luau")]
use luau as hook;
#[cfg(any(
    feature = "lua51",
    feature = "lua53",
    feature = "lua54",
    feature = "lua55"
))]
mod pcall;
#[cfg(any(
    feature = "lua52",
    feature = "luajit",
    feature = "luajit52",
    feature = "luau"
))]
mod pcall_lua;
#[cfg(any(
    feature = "lua52",
    feature = "luajit",
    feature = "luajit52",
    feature = "luau"
))]
use pcall_lua as pcall;
#[cfg(any(feature = "luajit", feature = "luajit52"))]
mod jit;
#[cfg(any(feature = "luajit", feature = "luajit52"))]
pub(crate) use jit::turn_off as turn_off_jit;
mod preempt;
mod probe;
#[cfg(all(test, unix, not(feature = "luau")))]
mod races;
#[cfg(all(unix, not(feature = "luau")))]
mod signal;
mod stop_error;

#[cfg(feature = "luau")]
use luau::Target;
/// Where a cancel delivers an on-demand interrupt.
#[cfg(all(unix, not(feature = "luau")))]
use signal::Target;

use arm_pace::ArmPace;
use preempt::Slices;
pub(crate) use preempt::{
    reset as reset_slices, set_library_installed, slice_begin, slice_end, LIBRARY_CHUNK,
};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
#[cfg(any(unix, feature = "luau"))]
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crossbeam_utils::CachePadded;
use mlua::Lua;

/// How an isle interrupts running Lua code; see [`IsleBuilder::interrupt`].
///
/// [`IsleBuilder::interrupt`]: crate::IsleBuilder::interrupt
///
/// # Examples
///
/// ```
/// use mlua_isle::{Interrupt, Isle};
///
/// // A permanent count hook instead of the default signal: portable, but CPU-bound Lua
/// // code runs about half as fast.
/// let isle = Isle::builder().interrupt(Interrupt::Hook { every: 1000 }).spawn(|_| Ok(()))?;
/// let task = isle.spawn_eval::<()>("while true do end")?;
/// task.cancel();
/// assert!(task.wait().unwrap_err().is_cancelled());
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Interrupt {
    /// Unix only, the default there. Nothing is installed while no interrupt is pending, so
    /// Lua runs at full speed; a cancel or deadline sends `signal` to the isle's thread, whose
    /// handler arms a hook. Costs: a signal handler for `signal` is installed process-wide (it
    /// chains to any handler installed before it, and does nothing on threads that are not
    /// running a request being interrupted), and a blocking system call in a host function may
    /// return `EINTR` when its request is interrupted (see
    /// [`without_interrupts`](crate::without_interrupts)). The default signal is `SIGURG`,
    /// whose default action is to be ignored, so a stray one is harmless; choose another if
    /// your application uses `SIGURG`.
    ///
    /// Not available with Luau, which has no debug hooks (see `Interrupt::OnDemand`).
    #[cfg(all(unix, not(feature = "luau")))]
    Signal {
        /// The signal number, for example `libc::SIGURG`.
        signal: i32,
    },
    /// Luau only, the default there. Nothing is installed while no interrupt is pending; a
    /// cancel or deadline sets Luau's interrupt callback from the thread that noticed it
    /// (Luau allows that from any thread), and the callback stops the code at its next
    /// safepoint (a call or a loop back-edge). No signal, no cost while idle.
    #[cfg(feature = "luau")]
    OnDemand,
    /// A hook installed for the whole life of the VM. Works everywhere.
    ///
    /// On PUC Lua and LuaJIT: a count hook checking for interrupts every `every` instructions
    /// (the interrupt latency). It is put back on the VM's main state at the start of every
    /// request, so a script with the `debug` library cannot remove it for later requests
    /// (which also means a hook of your own on the main state is replaced then). Costs: while any hook is installed, Lua executes every
    /// instruction through its tracing path, so CPU-bound Lua code runs roughly 2× slower
    /// whatever `every` is.
    ///
    /// On Luau: the interrupt callback, called at every safepoint, which also checks the
    /// request's deadline on the clock every `every` safepoints. Costs: a Rust call at every
    /// safepoint, roughly 2× on tight loops.
    Hook {
        /// Instructions (Luau: safepoints) between two checks (at least 1).
        every: u32,
    },
}

impl Interrupt {
    /// The signal [`Interrupt::Signal`] uses by default.
    #[cfg(all(unix, not(feature = "luau")))]
    pub const DEFAULT_SIGNAL: i32 = libc::SIGURG;

    /// The interval [`Interrupt::Hook`] uses by default (where it is the default).
    pub const DEFAULT_EVERY: u32 = 1000;
}

// The default depends on the Lua version and the platform; for some it is derivable.
#[allow(clippy::derivable_impls)]
impl Default for Interrupt {
    fn default() -> Self {
        #[cfg(feature = "luau")]
        {
            Interrupt::OnDemand
        }
        #[cfg(all(unix, not(feature = "luau")))]
        {
            Interrupt::Signal {
                signal: Interrupt::DEFAULT_SIGNAL,
            }
        }
        #[cfg(not(any(unix, feature = "luau")))]
        {
            Interrupt::Hook {
                every: Interrupt::DEFAULT_EVERY,
            }
        }
    }
}

/// The generation that means "every request": set when the isle is killed.
const KILL_ALL: u64 = u64::MAX;

/// Loads `source`, a chunk of the isle's own, as a function named `name`. Parsing it is most
/// of the cost of installing it, so it is parsed once per process: later VMs load the function
/// `cache` keeps compiled (with its debug information: names and lines read the same), which
/// came from the same Lua library. (Luau compiles it every time.)
pub(crate) fn load_own_chunk(
    lua: &Lua,
    #[cfg_attr(feature = "luau", allow(unused_variables))] cache: &'static OnceLock<Vec<u8>>,
    source: &str,
    name: &str,
) -> mlua::Result<mlua::Function> {
    use mlua::chunk::ChunkMode;
    #[cfg(not(feature = "luau"))]
    if let Some(compiled) = cache.get() {
        return lua
            .load(compiled.as_slice())
            .set_name(name)
            .set_mode(ChunkMode::Binary)
            .into_function();
    }
    let function = lua
        .load(source)
        .set_name(name)
        .set_mode(ChunkMode::Text)
        .into_function()?;
    // mlua panics if the dump fails (out of memory under a tight limit): then this VM just
    // does not fill the cache.
    #[cfg(not(feature = "luau"))]
    if let Ok(dumped) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| function.dump(false)))
    {
        let _ = cache.set(dumped);
    }
    Ok(function)
}

/// Lets any thread interrupt the request running on one isle's Lua thread.
///
/// Every request holds an `Arc` to it, so its reference count changes on the callers' threads
/// all the time; the padding keeps the Lua thread's hot fields off that cache line.
#[derive(Debug, Default)]
pub(crate) struct Interrupter {
    /// Generation of the request running now; 0 between requests.
    running: CachePadded<AtomicU64>,
    /// Highest generation asked to stop.
    cancelled: CachePadded<AtomicU64>,
    /// Highest generation whose deadline passed.
    expired: AtomicU64,
    /// When (watchdog tick) a stop was last requested for the running request; 0 if never.
    /// Only meaningful while [`stop_requested`](Self::stop_requested) says so: a late write
    /// for an earlier request is ignored then.
    stop_tick: AtomicU64,
    /// Told whenever a stop is requested for the running request, so that the stop is
    /// re-asserted until the request ends and escalated if it does not end.
    watch: OnceLock<Weak<dyn StopWatch>>,
    /// Where to deliver an on-demand interrupt (the isle's thread, or Luau's callbacks);
    /// cleared before the Lua thread exits, and only used under the lock, so an interrupt is
    /// never delivered to a thread or VM that is gone.
    #[cfg(any(unix, feature = "luau"))]
    target: Mutex<Option<Target>>,
    /// The Lua thread, unparked by [`nudge`](Self::nudge) when it waits idle in the task
    /// scheduler.
    lua_thread: OnceLock<std::thread::Thread>,
    /// Preemption of the task library's tasks.
    slices: Slices,
    /// Set by [`nudge`](Self::nudge), taken by the Lua thread before it parks.
    nudged: std::sync::atomic::AtomicBool,
    /// Set when the isle refuses new requests: host channels read as closed to scripts from
    /// then on, so that a script serving one ends.
    closing: std::sync::atomic::AtomicBool,
    /// How long the signal handler takes to arm the hook, which paces deliveries.
    arm_pace: ArmPace,
    /// Test-only: how many times the signal handler armed the hook for this isle.
    #[cfg(all(test, unix, not(feature = "luau")))]
    pub(crate) signal_arms: std::sync::atomic::AtomicUsize,
    /// Test-only: how many times the hook kept itself firing (a stop pending, or a task that
    /// cannot yield yet), and how many of those times it set itself again.
    #[cfg(all(test, not(feature = "luau")))]
    pub(crate) kept_firings: [std::sync::atomic::AtomicUsize; 2],
}

/// Whoever keeps a requested stop asserted (the watchdog, through the isle's shared state).
pub(crate) trait StopWatch: Send + Sync + std::fmt::Debug {
    /// A stop was requested for the running request at watchdog tick `tick`.
    fn stop_requested(&self, tick: u64);
}

/// Why the running request is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Cancelled,
    Timeout,
    Killed,
}

impl Interrupter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Makes `watch` hear of every stop requested from now on (once; later calls do nothing).
    pub(crate) fn set_watch(&self, watch: Weak<dyn StopWatch>) {
        let _ = self.watch.set(watch);
    }

    /// Asks the request with generation `gen` to stop, if it is (still, or about to be) running.
    pub(crate) fn interrupt(&self, gen: u64) {
        self.cancelled.fetch_max(gen, Ordering::SeqCst);
        self.poke(gen);
        if self.running.load(Ordering::SeqCst) == gen {
            self.stop_noticed();
        }
    }

    /// Tells the request with generation `gen` that its deadline has passed.
    pub(crate) fn expire(&self, gen: u64) {
        // Delivered once: the watchdog delivers it again, paced, while it is pending (see
        // `Shared::reassert_stop`).
        if self.expired.fetch_max(gen, Ordering::SeqCst) < gen {
            self.poke(gen);
        }
    }

    /// Stops the running request and every later one.
    pub(crate) fn kill(&self) {
        self.cancelled.store(KILL_ALL, Ordering::SeqCst);
        let running = self.running_generation();
        if running != 0 {
            self.poke(running);
            self.stop_noticed();
        }
    }

    /// Records when a stop was requested for the running request and tells the watch.
    fn stop_noticed(&self) {
        let tick = crate::core::watchdog::ticks(Instant::now());
        self.stop_tick.fetch_max(tick, Ordering::SeqCst);
        if let Some(watch) = self.watch.get().and_then(Weak::upgrade) {
            watch.stop_requested(tick);
        }
    }

    /// When a stop was last requested for the running request (a watchdog tick), if one is
    /// requested now.
    pub(crate) fn stop_since(&self) -> Option<(Stop, u64)> {
        let stop = self.stop_requested()?;
        Some((stop, self.stop_tick.load(Ordering::SeqCst)))
    }

    /// How long to wait before delivering the interrupt again: 0 unless an arm of the hook
    /// runs or took long (see [`ArmPace`]); never more than `hold` after the last arm ended.
    pub(crate) fn redelivery_wait(&self, hold: std::time::Duration) -> std::time::Duration {
        self.arm_pace.wait(hold)
    }

    /// Delivers the interrupt again to request `gen` if it still runs: an arm that was lost
    /// (overwritten by a hook removing itself, or cleared by Lua) is made good.
    pub(crate) fn reassert(&self, gen: u64) {
        self.poke(gen);
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst) == KILL_ALL
    }

    /// Marks `gen` as running while no interrupt machinery is installed (the VM closing,
    /// until [`end_unarmed`](Self::end_unarmed)): a stop requested meanwhile reaches nothing,
    /// but the watch hears of it and escalates it like any other.
    pub(crate) fn begin_unarmed(&self, gen: u64) {
        self.stop_tick.store(0, Ordering::SeqCst);
        self.running.store(gen, Ordering::SeqCst);
        if self.stop_requested().is_some() {
            self.stop_noticed();
        }
    }

    /// Ends what [`begin_unarmed`](Self::begin_unarmed) began.
    pub(crate) fn end_unarmed(&self) {
        self.running.store(0, Ordering::SeqCst);
    }

    /// The generation of the request running now, 0 between requests.
    pub(crate) fn running_generation(&self) -> u64 {
        self.running.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    pub(crate) fn cancelled_generation(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Wakes the Lua thread if it waits idle (in the task scheduler): something it may wait
    /// for happened (a stop, news on a host channel, the isle closing).
    pub(crate) fn nudge(&self) {
        self.nudged.store(true, Ordering::SeqCst);
        if let Some(thread) = self.lua_thread.get() {
            thread.unpark();
        }
    }

    /// The isle refuses new requests from now on: tells a script waiting on a host channel.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.nudge();
    }

    /// Whether the isle refuses new requests.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Whether the Lua thread was nudged and has not looked yet.
    pub(crate) fn is_nudged(&self) -> bool {
        self.nudged.load(Ordering::SeqCst)
    }

    /// Whether the Lua thread was nudged since the last call; clears the flag.
    pub(crate) fn take_nudge(&self) -> bool {
        self.nudged.swap(false, Ordering::SeqCst)
    }

    /// Wakes the Lua thread up to the interrupt if request `gen` is the one running. (If it is
    /// about to run, it sees the raised generation itself when it starts.)
    fn poke(&self, gen: u64) {
        if self.running.load(Ordering::SeqCst) == gen {
            self.nudge();
            self.deliver();
        }
    }

    /// Delivers an on-demand interrupt to the Lua thread (a signal; Luau's callback), if
    /// interrupts are delivered on demand.
    fn deliver(&self) {
        #[cfg(any(unix, feature = "luau"))]
        {
            let target = self.target.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(target) = &*target {
                target.send();
            }
        }
    }

    /// Whether the running request must stop. Reads only atomics: safe in a signal handler.
    pub(crate) fn stop_requested(&self) -> Option<Stop> {
        let running = self.running.load(Ordering::SeqCst);
        if running == 0 {
            return None;
        }
        match self.cancelled.load(Ordering::SeqCst) {
            KILL_ALL => return Some(Stop::Killed),
            cancelled if cancelled >= running => return Some(Stop::Cancelled),
            _ => {}
        }
        (self.expired.load(Ordering::SeqCst) >= running).then_some(Stop::Timeout)
    }
}

/// The Lua-thread side: installed once per VM, then bracketing every request.
pub(crate) struct Armed {
    hook: hook::Registration,
    interrupter: Arc<Interrupter>,
    /// Whether interrupts are delivered on demand (nothing installed while idle).
    on_demand: bool,
    #[cfg(all(unix, not(feature = "luau")))]
    _signal: Option<signal::Installed>,
}

impl std::fmt::Debug for Armed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed").finish_non_exhaustive()
    }
}

impl Armed {
    /// Installs the interrupt machinery into `lua`. Must run on the Lua thread, before any
    /// user code.
    pub(crate) fn install(
        lua: &Lua,
        interrupter: Arc<Interrupter>,
        mode: Interrupt,
    ) -> mlua::Result<Self> {
        let every = match mode {
            Interrupt::Hook { every } => Some(every),
            #[cfg(all(unix, not(feature = "luau")))]
            Interrupt::Signal { .. } => None,
            #[cfg(feature = "luau")]
            Interrupt::OnDemand => None,
        };
        let _ = interrupter.lua_thread.set(std::thread::current());
        let hook = hook::Registration::install(lua, &interrupter, every)?;
        let probe = probe::create(lua)?;
        // Until `Armed` exists (whose drop uninstalls the chain), a failure must not leave the
        // chain (or part of it) installed: the thread may serve another isle once this VM is
        // gone.
        #[cfg(not(feature = "luau"))]
        let chain_installed = ChainInstalled;
        #[cfg(not(feature = "luau"))]
        chain::install(lua, hook.main_state(), &probe)?;
        pcall::install(lua, &probe)?;
        #[cfg(any(feature = "luajit", feature = "luajit52"))]
        jit::guard_load(lua)?;
        #[cfg(all(unix, not(feature = "luau")))]
        let signal = match mode {
            Interrupt::Signal { signal } => Some(signal::Installed::install(
                lua,
                &interrupter,
                &hook,
                signal,
            )?),
            Interrupt::Hook { .. } => None,
        };
        #[cfg(not(feature = "luau"))]
        std::mem::forget(chain_installed);
        Ok(Armed {
            hook,
            interrupter,
            on_demand: every.is_none(),
            #[cfg(all(unix, not(feature = "luau")))]
            _signal: signal,
        })
    }

    /// Marks the request with generation `gen` as running until [`end`](Self::end).
    pub(crate) fn begin(&self, gen: u64, deadline: Option<Instant>) {
        self.hook.set_deadline(deadline);
        // A script with the debug library may have removed the permanent hook.
        self.hook.reinstall_permanent();
        let interrupter = &self.interrupter;
        interrupter.stop_tick.store(0, Ordering::SeqCst);
        interrupter.running.store(gen, Ordering::SeqCst);
        // A stop requested before `running` was set was not delivered: arm now, and let the
        // watch keep it asserted and escalate it like any other.
        if interrupter.stop_requested().is_some() {
            if self.on_demand {
                self.hook.arm_base();
            }
            interrupter.stop_noticed();
        }
    }

    /// Marks the running request as finished and removes what an interrupt left behind.
    pub(crate) fn end(&self) {
        self.interrupter.running.store(0, Ordering::SeqCst);
        self.hook.set_deadline(None);
        self.hook.disarm_base_if_touched();
        #[cfg(not(feature = "luau"))]
        chain::end_request();
    }
}

/// Uninstalls the resume chain when dropped, unless forgotten (see [`Armed::install`]).
#[cfg(not(feature = "luau"))]
struct ChainInstalled;

#[cfg(not(feature = "luau"))]
impl Drop for ChainInstalled {
    fn drop(&mut self) {
        chain::uninstall();
    }
}

#[cfg(not(feature = "luau"))]
impl Drop for Armed {
    fn drop(&mut self) {
        chain::uninstall();
    }
}

/// A safe point of the task scheduler: raises the stop error in `state` if the running
/// request has to stop (the interrupt does not cut into the scheduler's own code).
///
/// # Safety
///
/// `state` is the running state, inside a C function (a `lua_error` may unwind from here).
pub(crate) unsafe fn stop_point(state: *mut mlua::ffi::lua_State) {
    if let Some(stop) = hook::pending() {
        // SAFETY: guaranteed by the caller; C functions have stack slots to spare.
        unsafe {
            stop_error::push(state, stop);
            mlua::ffi::lua_error(state);
        }
    }
}

/// The first coroutine resumed from Rust since the last call; clears the record. Around the
/// poll of a coroutine request, that is the request's own coroutine.
#[cfg(feature = "tokio")]
pub(crate) fn take_first_resumed() -> Option<mlua::Thread> {
    #[cfg(not(feature = "luau"))]
    {
        chain::take_first_resumed()
    }
    #[cfg(feature = "luau")]
    {
        None
    }
}

/// Runs `f`, which drops (and so unwinds and closes) a suspended `coroutine`, with the
/// interrupt armed on that coroutine if a stop is pending: Lua code it runs there outside any
/// recorded resume (the `__close` handlers of its to-be-closed variables) stops as well.
/// Returns whether the interrupt had to stop such code (then the coroutine may still hold
/// values that only a collection frees).
///
/// The interrupt fires only after [`CLOSING_ALLOWANCE`] instructions, so that the short
/// unwinding mlua does to drop the awaited future completes, and raises rather than yields
/// meanwhile, so that the coroutine is not left suspended. Our reference to the coroutine is
/// dropped before `f`, so that mlua can recycle it. (Luau's interrupt reaches every coroutine
/// anyway.)
#[cfg(feature = "tokio")]
pub(crate) fn closing_armed(coroutine: Option<mlua::Thread>, f: impl FnOnce()) -> bool {
    #[cfg(not(feature = "luau"))]
    {
        if let Some(coroutine) = coroutine {
            if hook::pending().is_some() {
                // SAFETY: `coroutine` is a live coroutine of the VM on this thread, kept alive
                // by the future `f` drops; arming only stores its hook fields.
                unsafe {
                    hook::arm_after(
                        coroutine.to_pointer() as *mut mlua::ffi::lua_State,
                        CLOSING_ALLOWANCE,
                    )
                };
            }
        }
        hook::raising(f)
    }
    #[cfg(feature = "luau")]
    {
        drop(coroutine);
        f();
        false
    }
}

/// Instructions a stopped coroutine may run while it is dropped before the interrupt fires.
#[cfg(all(feature = "tokio", not(feature = "luau")))]
const CLOSING_ALLOWANCE: std::ffi::c_int = 1000;

/// `function` wrapped so that, as the body of a coroutine request's coroutine (which mlua resumes
/// and closes itself), an interrupt that kills it cannot leave its `__close` handlers
/// uninterruptible (see [`chain`]).
#[cfg(feature = "tokio")]
pub(crate) fn protected_body(lua: &Lua, function: mlua::Function) -> mlua::Result<mlua::Function> {
    #[cfg(any(feature = "lua54", feature = "lua55"))]
    {
        chain::protected_body(lua, function)
    }
    // Before 5.4 a coroutine killed by an interrupt has no `__close` handlers left to run.
    #[cfg(not(any(feature = "lua54", feature = "lua55")))]
    {
        let _ = lua;
        Ok(function)
    }
}

/// Runs `f` with the isle's interrupt signal blocked on the calling thread, then delivers any
/// signal that arrived meanwhile.
///
/// The request can still be stopped meanwhile only by the hard stop: if it is cancelled or
/// passes its deadline and `f` runs for longer than the
/// [grace period](crate::IsleBuilder::grace_period), the isle gives up on it.
///
/// Use it around a blocking system call in a host function that must not be cut short with
/// `EINTR` (`poll`, `select`, `epoll_wait`, `nanosleep` and friends return `EINTR` when a signal
/// is handled during the call, even with `SA_RESTART`). An isle only signals its thread when the
/// running request is being cancelled or has passed its deadline, so outside this function such
/// a call returns early exactly then — often what you want. Outside an isle's thread, or with
/// [`Interrupt::Hook`], `f` simply runs.
///
/// # Examples
///
/// ```
/// use mlua_isle::{without_interrupts, Isle};
///
/// let isle = Isle::spawn(|lua| {
///     let nap = lua.create_function(|_, ms: u64| {
///         without_interrupts(|| std::thread::sleep(std::time::Duration::from_millis(ms)));
///         Ok(())
///     })?;
///     lua.globals().set("nap", nap)
/// })?;
/// isle.call::<()>("nap", 1)?;
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(all(unix, not(feature = "luau")))]
    {
        signal::without_interrupts(f)
    }
    #[cfg(not(all(unix, not(feature = "luau"))))]
    {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread may serve another isle once the VM whose install failed is gone: nothing
    /// of the interrupt machinery may be left installed on it. Every failure point is reached
    /// by raising the memory limit step by step until the install succeeds. (Not on LuaJIT,
    /// whose debug build asserts when closing a VM in which some of its own allocations
    /// failed: "close_state: memory leak of 8 bytes".)
    #[cfg(not(any(feature = "luau", feature = "luajit", feature = "luajit52")))]
    #[test]
    fn a_failed_install_leaves_no_resume_chain_on_the_thread() {
        let mut failures = 0;
        for spare in (0..).step_by(128) {
            let lua = Lua::new();
            lua.set_memory_limit(lua.used_memory() + spare).unwrap();
            match Armed::install(&lua, Arc::new(Interrupter::new()), Interrupt::default()) {
                Ok(armed) => {
                    drop(armed);
                    break;
                }
                Err(_) => {
                    failures += 1;
                    assert!(
                        !chain::is_installed(),
                        "an install that failed with {spare} bytes to spare left its chain"
                    );
                }
            }
        }
        assert!(failures > 0);
    }

    #[test]
    fn a_late_cancel_does_not_stop_the_next_request() {
        let i = Interrupter::new();
        i.running.store(1, Ordering::SeqCst);
        i.running.store(0, Ordering::SeqCst);
        i.running.store(2, Ordering::SeqCst);
        i.interrupt(1);
        i.expire(1);
        assert_eq!(i.stop_requested(), None);
        i.interrupt(2);
        assert_eq!(i.stop_requested(), Some(Stop::Cancelled));
    }

    /// A passed deadline is delivered once by its expiry: the watchdog looks again and again
    /// while the stop is pending, and re-delivers it on its own paced schedule.
    #[test]
    fn an_expiry_is_delivered_once() {
        let i = Interrupter::new();
        i.running.store(4, Ordering::SeqCst);
        i.expire(4);
        assert!(i.take_nudge(), "the first expiry is delivered");
        i.expire(4);
        i.expire(3);
        assert!(
            !i.take_nudge(),
            "a later look at the same deadline delivers nothing"
        );
        assert_eq!(i.stop_requested(), Some(Stop::Timeout));
    }

    #[test]
    fn an_expired_generation_is_a_timeout() {
        let i = Interrupter::new();
        i.running.store(3, Ordering::SeqCst);
        i.expire(3);
        assert_eq!(i.stop_requested(), Some(Stop::Timeout));
    }

    #[test]
    fn a_cancel_before_begin_is_seen_at_begin() {
        let i = Interrupter::new();
        i.interrupt(5);
        i.running.store(5, Ordering::SeqCst);
        assert_eq!(i.stop_requested(), Some(Stop::Cancelled));
    }

    #[test]
    fn nothing_is_pending_between_requests() {
        let i = Interrupter::new();
        i.kill();
        assert_eq!(i.stop_requested(), None);
        i.running.store(9, Ordering::SeqCst);
        assert_eq!(i.stop_requested(), Some(Stop::Killed));
    }

    /// A panic that escapes the Lua thread's async executor unwinds through the worker while
    /// the executor's context (a clone of the VM and of the interrupt registration) is still
    /// in it. The registration (on Luau, a pointer into the VM's callbacks; elsewhere, the
    /// signal target) must still go before the VM closes.
    #[cfg(all(feature = "tokio", any(unix, feature = "luau")))]
    #[test]
    fn registration_goes_before_the_vm_when_a_panic_escapes_the_executor() {
        use std::future::Future;
        use std::pin::Pin;
        use std::sync::{Mutex, OnceLock};
        use std::task::{Context, Wake, Waker};

        use crate::handle::request::IsleHandle;
        use crate::{AsyncIsle, IsleError};

        type Seen = Arc<Mutex<Option<bool>>>;

        /// Lua app data, dropped as the VM closes: notes whether a cancel could still reach it.
        struct AtClose {
            interrupter: Arc<OnceLock<Arc<Interrupter>>>,
            registered: Seen,
        }

        impl Drop for AtClose {
            fn drop(&mut self) {
                let registered = self.interrupter.get().map(|interrupter| {
                    let target = interrupter.target.lock();
                    target.unwrap_or_else(PoisonError::into_inner).is_some()
                });
                *self.registered.lock().unwrap() = registered;
            }
        }

        /// A waker that panics when woken: the Lua thread wakes it outside any request.
        struct Bomb;

        impl Wake for Bomb {
            fn wake(self: Arc<Self>) {
                panic!("a waker panicked on the Lua thread");
            }
        }

        let interrupter = Arc::new(OnceLock::new());
        let registered = Seen::default();
        let at_close = AtClose {
            interrupter: interrupter.clone(),
            registered: registered.clone(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (isle, driver) = runtime
            .block_on(AsyncIsle::spawn(move |lua| {
                lua.set_app_data(at_close);
                Ok(())
            }))
            .unwrap();
        interrupter
            .set(isle.handle().shared.interrupter.clone())
            .unwrap();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let shutdown = runtime.block_on(async move {
            // From the first coroutine request on, the Lua thread serves inside its executor.
            assert_eq!(isle.coroutine_eval::<i64>("return 1").await.unwrap(), 1);
            let mut task = isle
                .spawn_exec(move |_| {
                    let _ = gate.recv();
                    Ok(())
                })
                .await
                .unwrap();
            let waker = Waker::from(Arc::new(Bomb));
            let polled = Pin::new(&mut task).poll(&mut Context::from_waker(&waker));
            assert!(polled.is_pending());
            drop(waker);
            release.send(()).unwrap();
            drop(isle);
            driver.shutdown().await
        });
        match shutdown {
            Err(IsleError::Panic(message)) => {
                assert_eq!(message, "a waker panicked on the Lua thread")
            }
            other => panic!("expected the Lua thread's panic, got {other:?}"),
        }
        assert_eq!(*registered.lock().unwrap(), Some(false));
    }
}
