//! The registry slot in which the error value of a failed call is noted when it is a table, so
//! that the table can be read after mlua has turned the error into text.
//!
//! Noting is done where the error value is still at hand: by the message handler of a request's
//! protected call (`lua_thread::call`) and by the protected base frame of a coroutine request
//! on Lua 5.4 and 5.5 (`interrupt::chain`). The request's side takes it right after the call
//! fails, on the same thread, before any other Lua code could note another.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::ptr;

use mlua::{ffi, Lua, Table, Value};

/// The slot's registry key: its address.
static SLOT: u8 = 0;

/// The registry key of the requests' message handler, made once: pushing it from there
/// allocates nothing, where creating it at each call would (and on Lua 5.1 would run a
/// collection step, and so finalizers, outside any protected call).
static HANDLER: u8 = 0;

thread_local! {
    /// The metatable of mlua's error values (Rust errors and panics) in this thread's VM.
    static FAILURE_METATABLE: Cell<*const c_void> = const { Cell::new(ptr::null()) };
}

fn key() -> *const c_void {
    ptr::addr_of!(SLOT).cast()
}

fn handler_key() -> *const c_void {
    ptr::addr_of!(HANDLER).cast()
}

/// Creates the slot in `lua` (holding `false`, so that storing into it never allocates),
/// keeps `handler` (the requests' message handler) in the registry, and learns the metatable
/// of mlua's error values.
pub(crate) fn install(lua: &Lua, handler: ffi::lua_CFunction) -> mlua::Result<()> {
    let probe = Value::Error(Box::new(mlua::Error::runtime("probe")));
    // SAFETY: `exec_raw` pushes the probe value and runs the closure in a protected call (a
    // memory error there becomes an `Err`); the closure leaves one light userdata as result.
    let metatable = unsafe {
        lua.exec_raw::<mlua::LightUserData>(probe, |state| {
            ffi::lua_pushboolean(state, 0);
            ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, key());
            ffi::lua_pushcfunction(state, handler);
            ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, handler_key());
            let metatable = match ffi::lua_getmetatable(state, 1) {
                0 => ptr::null(),
                _ => ffi::lua_topointer(state, -1),
            };
            ffi::lua_settop(state, 0);
            ffi::lua_pushlightuserdata(state, metatable.cast_mut());
        })?
    };
    FAILURE_METATABLE.with(|m| m.set(metatable.0));
    Ok(())
}

/// Whether the value at `index` is one of mlua's error values (a Rust error or panic).
///
/// # Safety
///
/// A live state with one free stack slot; `index` valid.
pub(crate) unsafe fn is_mlua_failure(state: *mut ffi::lua_State, index: c_int) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if ffi::lua_type(state, index) != ffi::LUA_TUSERDATA
            || ffi::lua_getmetatable(state, index) == 0
        {
            return false;
        }
        let metatable = ffi::lua_topointer(state, -1);
        ffi::lua_pop(state, 1);
        metatable == FAILURE_METATABLE.with(Cell::get)
    }
}

/// Notes the value at `index` in the slot if it is a table; clears the slot otherwise.
/// Allocates nothing and runs no metamethod (the key exists already).
///
/// # Safety
///
/// `state` must be a state of a VM prepared by [`install`], on this thread, with two free
/// stack slots; `index` valid.
pub(crate) unsafe fn note(state: *mut ffi::lua_State, index: c_int) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        match ffi::lua_type(state, index) == ffi::LUA_TTABLE {
            true => ffi::lua_pushvalue(state, index),
            false => ffi::lua_pushboolean(state, 0),
        }
        ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, key());
    }
}

/// Pushes the message handler kept by [`install`]. Allocates nothing.
///
/// # Safety
///
/// `state` must be a state of a VM prepared by [`install`], with one free stack slot.
pub(crate) unsafe fn push_handler(state: *mut ffi::lua_State) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, handler_key());
    }
}

/// Empties the slot, so that what an earlier failure noted (and nobody took: a failure
/// that ended in a panic, say) cannot be taken for a later one's. Allocates nothing.
///
/// # Safety
///
/// `state` must be a state of a VM prepared by [`install`], with two free stack slots (the
/// compat `lua_rawsetp` of Lua 5.1 and LuaJIT checks for one more after its push).
pub(crate) unsafe fn clear(state: *mut ffi::lua_State) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        ffi::lua_pushboolean(state, 0);
        ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, key());
    }
}

/// As [`clear`], from outside any call (before a coroutine request's stretch). Runs on the
/// VM's stack directly: no protected call is set up (on Lua 5.1 and LuaJIT, mlua would create C
/// functions for one, and with them run a collection step outside any protection).
#[cfg(all(feature = "tokio", any(feature = "lua54", feature = "lua55")))]
pub(crate) fn clear_in(lua: &Lua) {
    lua.exec_raw_lua(|raw| {
        let state = raw.state();
        // SAFETY: this thread's VM, prepared by `install`; `clear` needs two free slots (the
        // compat `lua_rawsetp` of Lua 5.1 checks for one more after its push), which is
        // checked first; it stores under an existing key and leaves the stack as it was.
        unsafe {
            if ffi::lua_checkstack(state, 2) != 0 {
                clear(state);
            }
        }
    });
}

/// Takes the table noted in the slot, if any, and clears the slot. Runs on the VM's stack
/// directly, as [`clear_in`] does.
pub(crate) fn take(lua: &Lua) -> Option<Table> {
    let noted = lua.exec_raw_lua(|raw| {
        let state = raw.state();
        // SAFETY: this thread's VM, prepared by `install`; three free slots are checked first
        // (the value read, then `clear`'s two); `pop_value` pops the value read, so the stack
        // is left as it was. Reading and storing under an existing key allocates nothing.
        unsafe {
            if ffi::lua_checkstack(state, 3) == 0 {
                return Value::Nil;
            }
            ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, key());
            let noted = raw.pop_value();
            clear(state);
            noted
        }
    });
    match noted {
        Value::Table(table) => Some(table),
        _ => None,
    }
}
