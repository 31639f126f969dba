//! The VM's `pcall` and `xpcall` on Lua 5.1, 5.3, 5.4 and 5.5, written in C-style Rust: Lua
//! 5.4's semantics (including yields across them, from 5.3 on), except that they never catch a
//! Rust panic, and that `xpcall` skips its message handler while an interrupt is pending. (On
//! Lua 5.1 they also make room on the stack for the status they add, which Lua 5.1's own
//! `pcall` forgets when the call returns many results.)
//!
//! After a protected call fails, the error object goes through the [probe](super::probe): a
//! Rust panic is raised again outside the protected call.
//!
//! Lua runs an `xpcall` message handler with hooks disabled when the error was raised from a
//! hook, so a looping handler could not be interrupted: while an interrupt is pending, the
//! handler is skipped and the error passed through.

use std::ffi::c_int;
use std::ptr;

use mlua::{ffi, Lua};

use super::hook;
use super::probe::reraise_panic;

/// Installs `pcall` and `xpcall` into `lua`'s globals.
pub(super) fn install(lua: &Lua, probe: &mlua::Function) -> mlua::Result<()> {
    let globals = lua.globals();
    for (name, function) in [
        ("pcall", isle_pcall as ffi::lua_CFunction),
        ("xpcall", isle_xpcall),
    ] {
        // SAFETY: `exec_raw` pushes `probe` and runs the closure in a protected call;
        // `lua_pushcclosure` takes it as the single upvalue and leaves the closure as result.
        let guarded: mlua::Function = unsafe {
            lua.exec_raw(probe.clone(), |state| {
                ffi::lua_pushcclosure(state, function, 1);
            })?
        };
        globals.raw_set(name, guarded)?;
    }
    Ok(())
}

/// The context a continuation receives.
#[cfg(not(feature = "lua51"))]
type Context = ffi::lua_KContext;
/// The context a continuation would receive (Lua 5.1 has no continuations).
#[cfg(feature = "lua51")]
type Context = isize;

/// Calls the function below the `nargs` arguments on top of the stack in protected mode, all
/// results kept. Where Lua has continuations, a yield may cross it: `finish_pcall` (with
/// `extra`) then finishes the call.
///
/// # Safety
///
/// `state` must be the running state inside `isle_pcall` or `isle_xpcall`.
unsafe fn call_protected(
    state: *mut ffi::lua_State,
    nargs: c_int,
    errfunc: c_int,
    extra: Context,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(not(feature = "lua51"))]
        {
            ffi::lua_pcallk(
                state,
                nargs,
                ffi::LUA_MULTRET,
                errfunc,
                extra,
                Some(finish_pcall),
            )
        }
        #[cfg(feature = "lua51")]
        {
            let _ = extra;
            ffi::lua_pcall(state, nargs, ffi::LUA_MULTRET, errfunc)
        }
    }
}

/// `pcall(f, ...)`, upvalue 1 the probe.
unsafe extern "C-unwind" fn isle_pcall(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function; mirrors Lua 5.4's `luaB_pcall`.
    unsafe {
        ffi::luaL_checkany(state, 1);
        ffi::lua_pushboolean(state, 1);
        ffi::lua_insert(state, 1);
        let nargs = ffi::lua_gettop(state) - 2;
        let status = call_protected(state, nargs, 0, 0);
        finish_pcall(state, status, 0)
    }
}

/// `xpcall(f, handler, ...)`, upvalue 1 the probe.
unsafe extern "C-unwind" fn isle_xpcall(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function; mirrors Lua 5.4's `luaB_xpcall`, with the handler
    // wrapped by `guarded_handler`.
    unsafe {
        let n = ffi::lua_gettop(state);
        ffi::luaL_checktype(state, 2, ffi::LUA_TFUNCTION);
        ffi::luaL_checkstack(state, 3, ptr::null());
        ffi::lua_pushvalue(state, 2);
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_pushcclosure(state, guarded_handler, 2);
        ffi::lua_replace(state, 2);
        ffi::lua_pushboolean(state, 1);
        ffi::lua_pushvalue(state, 1);
        ffi::lua_rotate(state, 3, 2);
        let status = call_protected(state, n - 2, 2, 2);
        finish_pcall(state, status, 2)
    }
}

/// Continuation of both: results after the `extra` slots below them, or `false` and the error.
unsafe extern "C-unwind" fn finish_pcall(
    state: *mut ffi::lua_State,
    status: c_int,
    extra: Context,
) -> c_int {
    // SAFETY: called by `isle_pcall`/`isle_xpcall` or by Lua as their continuation, in the same
    // C function (upvalue 1 is the probe); on error the error object is on top of the stack.
    unsafe {
        if status != ffi::LUA_OK && status != ffi::LUA_YIELD {
            reraise_panic(state, -1, ffi::lua_upvalueindex(1));
            ffi::luaL_checkstack(state, 2, ptr::null());
            ffi::lua_pushboolean(state, 0);
            ffi::lua_pushvalue(state, -2);
            return 2;
        }
        ffi::lua_gettop(state) - extra as c_int
    }
}

/// The message handler `xpcall` really installs: upvalue 1 the user's handler, upvalue 2 the
/// probe.
unsafe extern "C-unwind" fn guarded_handler(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a message handler with the error object as argument 1.
    unsafe {
        ffi::lua_settop(state, 1);
        if hook::pending().is_some() {
            // Hooks may be disabled right now: do not run user code that could loop.
            return 1;
        }
        ffi::luaL_checkstack(state, 3, ptr::null());
        // A panic must not reach the user's handler: probe it in protected mode. If the probe
        // fails, the error object it raised carries the panic on.
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(2));
        ffi::lua_pushvalue(state, 1);
        if ffi::lua_pcall(state, 1, 0, 0) != ffi::LUA_OK {
            return 1;
        }
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        ffi::lua_call(state, 1, 1);
        1
    }
}
