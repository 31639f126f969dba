//! Lua 5.4 and 5.5 keep, in each coroutine, a flag saying whether hooks may run there
//! (`lua_State::allowhook`). Lua clears it while a hook runs and sets it again when the hook
//! returns, so a hook that raises an error leaves it cleared, and only a protected call that
//! began before the error (`lua_pcall`, whose frame saved the flag) puts it back. A coroutine
//! killed by the interrupt hook where it could not yield keeps hooks disabled for good, and
//! its pending `__close` handlers, run when it is closed (or reset from Rust), could never be
//! interrupted.
//!
//! The C API has no way to set the flag, so [`restore`] writes it: the flag is a byte at a fixed
//! place near the start of `lua_State`, the same in every release of 5.4 (after the GC header
//! and `status`) and of 5.5 (after the GC header). Before the first write, [`verify`] checks on
//! a coroutine of its own that the byte there really is that flag (set, cleared inside a hook,
//! set again after it); if it is not, nothing is ever written, and such `__close` handlers are
//! only stopped by the hard stop.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::mem::size_of;
use std::ptr;
use std::sync::OnceLock;

use mlua::{ffi, Lua};

/// Where the flag lives, in bytes from the start of `lua_State`.
const OFFSET: usize = if cfg!(feature = "lua55") {
    // `next`, `tt`, `marked`, then `allowhook`.
    size_of::<*mut c_void>() + 2
} else {
    // `next`, `tt`, `marked`, `status`, then `allowhook`.
    size_of::<*mut c_void>() + 3
};

/// Whether the byte at [`OFFSET`] was verified to be the flag, for the Lua linked into this
/// process.
static VERIFIED: OnceLock<bool> = OnceLock::new();

thread_local! {
    /// What the verifying hook read, `None` until it ran.
    static SEEN: Cell<Option<u8>> = const { Cell::new(None) };
}

/// The flag's byte in `state`.
fn flag(state: *mut ffi::lua_State) -> *mut u8 {
    state.cast::<u8>().wrapping_add(OFFSET)
}

/// Checks (once per process) that [`OFFSET`] holds the flag, using a coroutine of `lua`.
pub(super) fn verify(lua: &Lua) {
    if VERIFIED.get().is_some() {
        return;
    }
    // SAFETY: `exec_raw` runs the closure in a protected call, so that a memory error raised
    // by the allocations in `check` (which has no value with a destructor alive) is caught;
    // the next VM then checks again.
    if let Ok(verified) = unsafe { lua.exec_raw::<bool>((), |state| check(state)) } {
        let _ = VERIFIED.set(verified);
    }
}

/// Runs a one-instruction function in a new coroutine with a count hook: the flag must read 1
/// before, 0 inside the hook and 1 after. Pushes the answer.
///
/// # Safety
///
/// `state` must be a state of a live VM on this thread, inside a protected call, with no user
/// code running.
unsafe fn check(state: *mut ffi::lua_State) {
    unsafe extern "C-unwind" fn look(co: *mut ffi::lua_State, _: *mut ffi::lua_Debug) {
        // SAFETY: `co` is the running coroutine, at least `OFFSET + 1` bytes long.
        SEEN.set(Some(unsafe { flag(co).read_volatile() }));
    }
    // SAFETY: every call is on `state`'s VM, with the stack room each needs checked first; the
    // reads stay inside the new coroutine's `lua_State`, which the stack of `state` keeps alive
    // until the final `lua_settop`.
    unsafe {
        ffi::luaL_checkstack(state, 2, ptr::null());
        let top = ffi::lua_gettop(state);
        let co = ffi::lua_newthread(state);
        let before = flag(co).read_volatile();
        let mut ok = ffi::luaL_loadstring(co, c"return".as_ptr()) == ffi::LUA_OK;
        if ok {
            SEEN.set(None);
            ffi::lua_sethook(co, Some(look), ffi::LUA_MASKCOUNT, 1);
            let mut nres = 0;
            ok = ffi::lua_resume(co, state, 0, &mut nres) == ffi::LUA_OK;
            ffi::lua_sethook(co, None, 0, 0);
        }
        let after = flag(co).read_volatile();
        ffi::lua_settop(state, top);
        let verified = ok && before == 1 && SEEN.take() == Some(0) && after == 1;
        ffi::lua_pushboolean(state, c_int::from(verified));
    }
}

/// Whether [`restore`] can allow hooks again (the flag's place was verified).
pub(super) fn available() -> bool {
    VERIFIED.get() == Some(&true)
}

/// Allows hooks again in `co`, a coroutine that is not running (dead, or about to be started).
///
/// # Safety
///
/// `co` must be a live coroutine of the VM on this thread that is neither running nor inside
/// a hook.
pub(super) unsafe fn restore(co: *mut ffi::lua_State) {
    if VERIFIED.get() == Some(&true) {
        // SAFETY: verified to be the flag's byte in every `lua_State` of this Lua; `co` is
        // not running, so nothing else reads or writes it meanwhile.
        unsafe { flag(co).write_volatile(1) };
    }
}

/// Whether `co` has no call frames and a function to start, or nothing at all: it is new,
/// reset, or dead (not running, not waiting for another coroutine, not suspended).
///
/// # Safety
///
/// `co` must be a live coroutine of the VM on this thread.
pub(super) unsafe fn has_no_frames(co: *mut ffi::lua_State) -> bool {
    // SAFETY: guaranteed by the caller; `lua_getstack` only reads `co`.
    unsafe {
        let mut ar: ffi::lua_Debug = std::mem::zeroed();
        ffi::lua_status(co) == ffi::LUA_OK && ffi::lua_getstack(co, 0, &mut ar) == 0
    }
}
