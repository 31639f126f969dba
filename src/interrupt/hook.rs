//! The count hook: the only code that calls into Lua's C API directly.

use std::cell::Cell;
use std::ffi::{c_int, CStr};
use std::ptr;
use std::sync::Arc;
use std::time::Instant;

use mlua::{ffi, Lua};

use super::{Interrupter, Stop};

thread_local! {
    /// The interrupter of the isle whose VM runs on this thread; null when there is none.
    static INTERRUPTER: Cell<*const Interrupter> = const { Cell::new(ptr::null()) };
    /// The running request's deadline.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The idle hook interval, in instructions.
    static EVERY: Cell<c_int> = const { Cell::new(0) };
    /// Whether the hook raised an interrupt since the last reset.
    static RAISED: Cell<bool> = const { Cell::new(false) };
}

/// Why the request running on this thread has to stop, if it has to.
pub(super) fn pending() -> Option<Stop> {
    let interrupter = INTERRUPTER.get();
    if interrupter.is_null() {
        return None;
    }
    // SAFETY: the pointer is non-null only while the `CountHook` that set it is alive on this
    // thread, and that hook owns an `Arc` keeping the interrupter alive.
    let interrupter = unsafe { &*interrupter };
    if let Some(stop) = interrupter.stop_requested() {
        return Some(stop);
    }
    let deadline = DEADLINE.get()?;
    (Instant::now() >= deadline).then_some(Stop::Timeout)
}

fn message(stop: Stop) -> &'static CStr {
    match stop {
        Stop::Cancelled => c"isle request cancelled",
        Stop::Timeout => c"isle request timed out",
        Stop::Killed => c"isle is shut down",
    }
}

/// Runs every `EVERY` instructions on every coroutine (each inherits it from its creator), and
/// at every instruction once it has raised an interrupt on that coroutine.
unsafe extern "C-unwind" fn count_hook(state: *mut ffi::lua_State, _ar: *mut ffi::lua_Debug) {
    let every = EVERY.get();
    if every == 0 {
        return;
    }
    match pending() {
        None => {
            // Back to the idle interval on coroutines a past interrupt left at every
            // instruction.
            // SAFETY: `state` is the running coroutine, handed to us by Lua.
            if unsafe { ffi::lua_gethookcount(state) } != every {
                // SAFETY: as above; `lua_sethook` only stores the hook fields.
                unsafe { ffi::lua_sethook(state, Some(count_hook), ffi::LUA_MASKCOUNT, every) };
            }
        }
        Some(stop) => {
            RAISED.set(true);
            // SAFETY: `state` is the running coroutine. Firing at every instruction makes a
            // caught error re-raise at the next one. `lua_error` unwinds with a longjmp; no
            // Rust value with a destructor is alive in this frame at that point.
            unsafe {
                ffi::lua_sethook(state, Some(count_hook), ffi::LUA_MASKCOUNT, 1);
                ffi::lua_pushstring(state, message(stop).as_ptr());
                ffi::lua_error(state)
            }
        }
    }
}

/// The installed hook of one VM; clears the thread's registration when dropped.
pub(super) struct CountHook {
    main: *mut ffi::lua_State,
    every: c_int,
    _interrupter: Arc<Interrupter>,
}

impl CountHook {
    pub(super) fn install(
        lua: &Lua,
        interrupter: &Arc<Interrupter>,
        every: u32,
    ) -> mlua::Result<Self> {
        let every = c_int::try_from(every).unwrap_or(c_int::MAX).max(1);
        INTERRUPTER.set(Arc::as_ptr(interrupter));
        EVERY.set(every);
        let mut main = ptr::null_mut();
        // SAFETY: `exec_raw` calls the closure with the VM's main state inside a protected
        // call; `lua_sethook` only stores the hook fields and cannot raise.
        unsafe {
            lua.exec_raw::<()>((), |state| {
                main = state;
                ffi::lua_sethook(state, Some(count_hook), ffi::LUA_MASKCOUNT, every);
            })?;
        }
        Ok(CountHook {
            main,
            every,
            _interrupter: interrupter.clone(),
        })
    }

    pub(super) fn set_deadline(&self, deadline: Option<Instant>) {
        DEADLINE.set(deadline);
    }

    /// Puts the main state back to the idle interval after a request that was interrupted.
    /// (Coroutines left at every instruction reset themselves the next time the hook fires.)
    pub(super) fn reset_if_raised(&self) {
        if RAISED.replace(false) {
            // SAFETY: `main` is the main state of the VM this hook was installed in; the VM
            // outlives the hook (both live in the worker, which drops the hook first).
            unsafe {
                ffi::lua_sethook(self.main, Some(count_hook), ffi::LUA_MASKCOUNT, self.every)
            };
        }
    }
}

impl Drop for CountHook {
    fn drop(&mut self) {
        INTERRUPTER.set(ptr::null());
        DEADLINE.set(None);
        EVERY.set(0);
    }
}
