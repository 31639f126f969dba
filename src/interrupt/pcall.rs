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
//! handler is skipped and the error passed through. The guard that decides this calls a Lua
//! handler from a few lines of Lua, as a tail call, so that a handler that fails again (and so
//! is called again, by Lua, for its own error) costs one C-call level per round, as in plain
//! Lua (a traceback taken in the handler shows that tail call). A C handler is called from a C
//! guard (one more level in a traceback), except the VM's own `debug.traceback`, which is safe
//! as it is: it runs no Lua code and returns a panic's error object untouched.

use std::ffi::c_int;
use std::ptr;
use std::sync::OnceLock;

use mlua::{ffi, Lua};

use super::hook;
use super::probe::{may_carry_panic, reraise_panic};

/// Makes the guard around a Lua message handler. `check(err)` returns `true` and what to return
/// instead when the handler must not run; otherwise the handler is tail-called, so that it runs
/// at the C-call level it runs at in plain Lua.
const LUA_GUARD: &str = r#"
local check = ...
return function(handler)
    return function(err)
        local skip, value = check(err)
        if skip then
            return value
        end
        return handler(err)
    end
end
"#;

/// Installs `pcall` and `xpcall` into `lua`'s globals.
pub(super) fn install(lua: &Lua, probe: &mlua::Function) -> mlua::Result<()> {
    let globals = lua.globals();
    // SAFETY: `exec_raw` pushes `probe` and runs the closure in a protected call;
    // `lua_pushcclosure` takes it as the single upvalue and leaves the closure as result.
    let check: mlua::Function = unsafe {
        lua.exec_raw(probe.clone(), |state| {
            ffi::lua_pushcclosure(state, check_handler, 1);
        })?
    };
    static COMPILED: OnceLock<Vec<u8>> = OnceLock::new();
    let lua_guard: mlua::Function =
        super::load_own_chunk(lua, &COMPILED, LUA_GUARD, "=[isle xpcall]")?.call(check)?;
    // SAFETY: `exec_raw` pushes the upvalues and runs the closure in a protected call;
    // `lua_pushcclosure` takes them and leaves the closure as result.
    let pcall: mlua::Function = unsafe {
        lua.exec_raw(probe.clone(), |state| {
            ffi::lua_pushcclosure(state, isle_pcall, 1);
        })?
    };
    // `debug.traceback` needs no guard: it runs no Lua code and returns an error object that
    // is not a string (a panic's) untouched.
    let traceback = globals
        .get::<mlua::Table>("debug")
        .and_then(|debug| debug.get::<mlua::Function>("traceback"))
        .ok();
    // SAFETY: as above (`None` pushes `nil`).
    let xpcall: mlua::Function = unsafe {
        lua.exec_raw((probe.clone(), lua_guard, traceback), |state| {
            ffi::lua_pushcclosure(state, isle_xpcall, 3);
        })?
    };
    globals.raw_set("pcall", pcall)?;
    globals.raw_set("xpcall", xpcall)?;
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

/// `xpcall(f, handler, ...)`, upvalue 1 the probe, 2 the maker of guards around Lua handlers,
/// 3 the VM's original `debug.traceback` (or `nil`).
unsafe extern "C-unwind" fn isle_xpcall(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function; mirrors Lua 5.4's `luaB_xpcall` (Lua 5.1's checks
    // on 5.1), with the handler wrapped by the Lua guard or by `guarded_handler`
    // (`debug.traceback` as it is).
    unsafe {
        // Lua 5.1 takes any value as handler, but an error then ends as "error in error
        // handling" without calling it (a callable table included); `f` gets no arguments.
        #[cfg(feature = "lua51")]
        {
            ffi::luaL_checkany(state, 2);
            ffi::lua_settop(state, 2);
            if ffi::lua_type(state, 2) != ffi::LUA_TFUNCTION {
                ffi::lua_pushcfunction(state, error_in_error_handling);
                ffi::lua_replace(state, 2);
            }
        }
        #[cfg(not(feature = "lua51"))]
        ffi::luaL_checktype(state, 2, ffi::LUA_TFUNCTION);
        let n = ffi::lua_gettop(state);
        ffi::luaL_checkstack(state, 3, ptr::null());
        if ffi::lua_rawequal(state, 2, ffi::lua_upvalueindex(3)) != 0 {
            ffi::lua_pushvalue(state, 2);
        } else if ffi::lua_iscfunction(state, 2) == 0 {
            ffi::lua_pushvalue(state, ffi::lua_upvalueindex(2));
            ffi::lua_pushvalue(state, 2);
            ffi::lua_call(state, 1, 1);
        } else {
            ffi::lua_pushvalue(state, 2);
            ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
            ffi::lua_pushcclosure(state, guarded_handler, 2);
        }
        ffi::lua_replace(state, 2);
        ffi::lua_pushboolean(state, 1);
        ffi::lua_pushvalue(state, 1);
        ffi::lua_rotate(state, 3, 2);
        let status = call_protected(state, n - 2, 2, 2);
        finish_pcall(state, status, 2)
    }
}

/// The message handler standing for one that is not a function on Lua 5.1: the error becomes
/// what Lua 5.1 makes of it.
#[cfg(feature = "lua51")]
unsafe extern "C-unwind" fn error_in_error_handling(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a message handler (through `guarded_handler`), which leaves
    // room for the one value pushed.
    unsafe {
        ffi::lua_pushstring(state, c"error in error handling".as_ptr());
        1
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

/// Whether a message handler must be skipped for the error object at index 1 (pushing what to
/// return instead): while an interrupt is pending (hooks may be disabled right now, so no user
/// code that could loop may run), and for an error carrying a panic, which must not reach user
/// code (the probe's own error object then carries it on).
///
/// # Safety
///
/// `state` must be the running state inside a message handler, with the error object at index
/// 1 and two free stack slots; `probe` the index of the probe.
unsafe fn must_skip(state: *mut ffi::lua_State, probe: c_int) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if hook::pending().is_some() {
            ffi::lua_pushvalue(state, 1);
            return true;
        }
        if !may_carry_panic(state, 1) {
            return false;
        }
        // Probe in protected mode: if the probe fails, its error object carries the panic on.
        ffi::lua_pushvalue(state, probe);
        ffi::lua_pushvalue(state, 1);
        if ffi::lua_pcall(state, 1, 0, 0) == ffi::LUA_OK {
            return false;
        }
        // The probe did not even run (the C-call limit, say): the error object is the
        // panic's own, which passes on as it is.
        if !may_carry_panic(state, -1) {
            ffi::lua_pop(state, 1);
            ffi::lua_pushvalue(state, 1);
        }
        true
    }
}

/// `check(err)` for the Lua guard: `true` and what to return instead of running the handler,
/// or `false`. Upvalue 1 is the probe.
unsafe extern "C-unwind" fn check_handler(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by the Lua guard with the error object as argument 1; the stack slots it
    // needs are checked first.
    unsafe {
        ffi::lua_settop(state, 1);
        ffi::luaL_checkstack(state, 3, ptr::null());
        if must_skip(state, ffi::lua_upvalueindex(1)) {
            ffi::lua_pushboolean(state, 1);
            ffi::lua_insert(state, -2);
            return 2;
        }
        ffi::lua_pushboolean(state, 0);
        1
    }
}

/// The message handler `xpcall` installs around a C handler: upvalue 1 the user's handler,
/// upvalue 2 the probe.
unsafe extern "C-unwind" fn guarded_handler(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a message handler with the error object as argument 1; the
    // stack slots it needs are checked first.
    unsafe {
        ffi::lua_settop(state, 1);
        ffi::luaL_checkstack(state, 3, ptr::null());
        if must_skip(state, ffi::lua_upvalueindex(2)) {
            return 1;
        }
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        ffi::lua_call(state, 1, 1);
        1
    }
}
