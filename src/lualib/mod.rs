//! Libraries installed into the VM: the `task` library (tasks, channels, `select`, timers)
//! and the host channels that connect it with Rust.
//!
//! The scheduler itself is Lua ([`task.lua`](self)): tasks are coroutines, channels and wait
//! queues are Lua tables, so everything a task holds stays visible to Lua's collector. The
//! host side provides the clock, the idle wait (parking the Lua thread until a timer is due,
//! a host channel has news or the request must stop) and preemption.
//!
//! May import from `error`, `interrupt` and `core`, not from `lua_thread`, `handle` or `pool`.

mod config;
pub mod host;
mod preempt;

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mlua::{Function, Lua, Table};

use crate::interrupt::Interrupter;

pub use config::TaskLibrary;

thread_local! {
    /// Whether the running request opened a task scope (used the library).
    static SCOPE_OPEN: Cell<bool> = const { Cell::new(false) };
}

/// The library as the Lua thread keeps it.
pub(crate) struct Installed {
    /// Clears the interrupt's note that this thread's VM has the library, when dropped.
    _marker: LibraryMarker,
    /// Ends the running request's scope: `end_scope(close_tasks)`.
    end_scope: Function,
    /// The host ends the library made, as the keys of a weak table.
    host_ends: Table,
    /// Lets go of a scope `end_scope` could not end: `drop_scope()`.
    drop_scope: Function,
    /// Tells whether the running request is being stopped.
    interrupter: Arc<Interrupter>,
    _preempt: Option<preempt::Registration>,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed").finish_non_exhaustive()
    }
}

/// While alive, the interrupt spares the library's code on this thread.
struct LibraryMarker;

impl Drop for LibraryMarker {
    fn drop(&mut self) {
        crate::interrupt::set_library_installed(false);
    }
}

/// The process's clock origin for `task.now()`.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Installs the `task` global into `lua`. Runs on the Lua thread, after the interrupt
/// machinery (whose `coroutine` wrappers the scheduler must use) and before any sandbox.
pub(crate) fn install(
    lua: &Lua,
    config: &TaskLibrary,
    interrupter: &Arc<Interrupter>,
) -> mlua::Result<Installed> {
    static COMPILED: OnceLock<Vec<u8>> = OnceLock::new();
    let origin = epoch();
    let prims = lua.create_table()?;
    prims.raw_set(
        "now",
        lua.create_function(move |_, ()| Ok(origin.elapsed().as_secs_f64()))?,
    )?;
    let idle = interrupter.clone();
    prims.raw_set(
        "idle_wait",
        lua.create_function(move |_, delay: Option<f64>| {
            idle_wait(&idle, delay);
            Ok(())
        })?,
    )?;
    prims.raw_set(
        "open_scope",
        lua.create_function(|_, ()| {
            if crate::core::wait::in_coroutine() {
                return Ok(false);
            }
            SCOPE_OPEN.set(true);
            Ok(true)
        })?,
    )?;
    // Tasks can be preempted where the hook can tell whether a coroutine may yield.
    let time_slice = config.time_slice.filter(|_| {
        cfg!(any(
            feature = "lua53",
            feature = "lua54",
            feature = "lua55",
            feature = "luau"
        ))
    });
    // SAFETY: a C function that reads the interrupter's atomics and may raise the stop error.
    prims.raw_set("stop_point", unsafe { lua.create_c_function(stop_point)? })?;
    // SAFETY: a C function that compares a value's metatable with its second argument.
    prims.raw_set("has_metatable", unsafe {
        lua.create_c_function(has_metatable)?
    })?;
    #[cfg(any(
        feature = "lua53",
        feature = "lua54",
        feature = "lua55",
        feature = "luau"
    ))]
    // SAFETY: a C function that only compares its argument with the calling state and asks
    // whether that state can yield.
    prims.raw_set("own", unsafe { lua.create_c_function(own)? })?;
    #[cfg(feature = "lua51")]
    // SAFETY: a C function that only reads the call stack and pushes a boolean.
    prims.raw_set("no_c_frames", unsafe {
        lua.create_c_function(no_c_frames)?
    })?;
    let preempt = match time_slice {
        Some(slice) => {
            let registration = preempt::Registration::new(interrupter, slice);
            let (begin, end) = registration.functions(lua)?;
            prims.raw_set("slice_begin", begin)?;
            prims.raw_set("slice_end", end)?;
            Some(registration)
        }
        None => None,
    };
    let chunk = crate::interrupt::load_own_chunk(
        lua,
        &COMPILED,
        include_str!("task.lua"),
        crate::interrupt::LIBRARY_CHUNK,
    )?;
    let (task, end_scope, wrap, host_ends, drop_scope): (
        Table,
        Function,
        Function,
        Table,
        Function,
    ) = chunk.call(prims)?;
    crate::interrupt::set_library_installed(true);
    // Made at once: a failure below clears the note too (the thread may serve another isle).
    let marker = LibraryMarker;
    host::install(lua, interrupter, wrap)?;
    lua.globals().raw_set("task", task)?;
    Ok(Installed {
        _marker: marker,
        end_scope,
        host_ends,
        drop_scope,
        interrupter: interrupter.clone(),
        _preempt: preempt,
    })
}

impl Installed {
    /// The host ends made so far and from now on (the keys of a weak table): a sealed VM
    /// keeps scripts from writing into them with `rawset`.
    pub(crate) fn host_ends(&self) -> &Table {
        &self.host_ends
    }

    /// Ends the running request's scope, if it opened one: its tasks are cancelled (their
    /// coroutines closed, which runs pending `__close` handlers) and what they were handed
    /// goes back to its channels. Called while the request is still the running one, so that
    /// Lua code this runs can be stopped; returns `false` if it could not finish (the request
    /// is being stopped), in which case [`end_stopped`](Self::end_stopped) must follow once
    /// it is not.
    pub(crate) fn end_request(&self) -> bool {
        self.reset_slices();
        host::end_request();
        if !SCOPE_OPEN.get() {
            return true;
        }
        // A request being stopped would stop the first `__close` handler at once, and
        // meanwhile the library's own code, which the interrupt spares, runs under a hook
        // looking for the next place to stop at: many tasks would take long to end.
        if self.interrupter.stop_requested().is_some() {
            return false;
        }
        let done = self.end_scope.call::<()>(true).is_ok();
        // (Closing tasks may have run `__close` handlers.)
        self.reset_slices();
        if done {
            SCOPE_OPEN.set(false);
        }
        done
    }

    /// Ends a scope [`end_request`](Self::end_request) could not: tasks are dropped without
    /// running their `__close` handlers. Runs only the library's own code, with the memory
    /// limit lifted: a request whose tasks filled the VM (or ending them did, in
    /// `end_request`) leaves no memory for it, and a scope not ended keeps every task alive.
    /// Should it fail all the same, the scope is let go rather than kept.
    pub(crate) fn end_stopped(&self, lua: &Lua) {
        self.reset_slices();
        host::end_request();
        if !SCOPE_OPEN.replace(false) {
            return;
        }
        let limit = lua.set_memory_limit(0).ok();
        if self.end_scope.call::<()>(false).is_err() {
            let _ = self.drop_scope.call::<()>(());
        }
        if let Some(limit) = limit {
            let _ = lua.set_memory_limit(limit);
        }
        self.reset_slices();
    }
}

impl Installed {
    /// No task runs any more (a stopped request may have unwound out of one).
    fn reset_slices(&self) {
        if let Some(preempt) = &self._preempt {
            preempt.reset();
        }
    }
}

/// `stop_point()`: raises the stop error if the running request has to stop.
unsafe extern "C-unwind" fn stop_point(state: *mut mlua::ffi::lua_State) -> std::ffi::c_int {
    // SAFETY: `state` is the calling state, inside this C function.
    unsafe { crate::interrupt::stop_point(state) };
    0
}

/// Parks the Lua thread for `delay` seconds (`None`: until woken), unless it was woken
/// already or the running request has to stop.
fn idle_wait(interrupter: &Interrupter, delay: Option<f64>) {
    if interrupter.take_nudge() || interrupter.stop_requested().is_some() {
        return;
    }
    // News usually comes within microseconds (a host answering a request): look for a short
    // while before parking, as every waiter of the crate does.
    let woken = || interrupter.is_nudged() || interrupter.stop_requested().is_some();
    if delay.is_none_or(|d| d > crate::core::wait::SPIN_BUDGET.as_secs_f64())
        && crate::core::wait::spin_until(woken)
    {
        interrupter.take_nudge();
        return;
    }
    match delay {
        Some(delay) if delay <= 0.0 => {}
        Some(delay) => {
            // Far-off timers are capped: the loop just waits again.
            std::thread::park_timeout(Duration::from_secs_f64(delay.min(3600.0)))
        }
        None => std::thread::park(),
    }
    interrupter.take_nudge();
}

/// `has_metatable(v, mt)`: whether `v`'s metatable is `mt`, whatever its `__metatable` field
/// says. Tells the library's own objects from imitations without keeping a table of them.
unsafe extern "C-unwind" fn has_metatable(state: *mut mlua::ffi::lua_State) -> std::ffi::c_int {
    use mlua::ffi;
    // SAFETY: `state` is the calling state; `lua_settop` makes exactly two arguments (an
    // absent one nil), `lua_getmetatable` pushes at most one value (C functions get
    // LUA_MINSTACK free slots).
    unsafe {
        ffi::lua_settop(state, 2);
        let same = ffi::lua_getmetatable(state, 1) != 0 && ffi::lua_rawequal(state, -1, 2) != 0;
        ffi::lua_pushboolean(state, same as std::ffi::c_int);
    }
    1
}

/// `own(co)`: whether the running coroutine is `co` and can yield (one call where the
/// scheduler would otherwise make two, on its hottest path).
#[cfg(any(
    feature = "lua53",
    feature = "lua54",
    feature = "lua55",
    feature = "luau"
))]
unsafe extern "C-unwind" fn own(state: *mut mlua::ffi::lua_State) -> std::ffi::c_int {
    use mlua::ffi;
    // SAFETY: `state` is the calling state; `lua_tothread` returns null for a non-thread and
    // one slot is pushed (C functions get LUA_MINSTACK free slots).
    unsafe {
        let own = ffi::lua_tothread(state, 1) == state && ffi::lua_isyieldable(state) != 0;
        ffi::lua_pushboolean(state, own as std::ffi::c_int);
    }
    1
}

/// Lua 5.1: whether no C function stands between the caller and the base of its coroutine
/// (a yield across one fails there). Metamethods and iterators called by the VM are not seen.
#[cfg(feature = "lua51")]
unsafe extern "C-unwind" fn no_c_frames(state: *mut mlua::ffi::lua_State) -> std::ffi::c_int {
    use mlua::ffi;
    // SAFETY: `state` is the calling state; `lua_getstack`/`lua_getinfo` read its call stack
    // into `ar`, and one slot is pushed (C functions get LUA_MINSTACK free slots).
    unsafe {
        let mut ar: ffi::lua_Debug = std::mem::zeroed();
        let mut level = 1;
        let mut clean = true;
        while ffi::lua_getstack(state, level, &mut ar) != 0 {
            if ffi::lua_getinfo(state, c"S".as_ptr(), &mut ar) != 0
                && !ar.what.is_null()
                && std::ffi::CStr::from_ptr(ar.what).to_bytes() == b"C"
            {
                clean = false;
                break;
            }
            level += 1;
        }
        ffi::lua_pushboolean(state, clean as std::ffi::c_int);
    }
    1
}
