//! Telling a Rust panic from an ordinary error, from Lua.
//!
//! A panic in a host function reaches Lua as an error object that mlua re-raises as a panic as
//! soon as it converts that object back to a Rust value. The isle's protected calls hand the
//! error object of a failed call to a tiny Rust function, the *probe*: an ordinary error
//! passes, a panic is raised again outside the protected call, so the request ends with
//! [`IsleError::Panic`](crate::IsleError::Panic) whatever the script wraps around it.

use std::ffi::c_int;
use std::ptr;

use mlua::{ffi, Lua};

/// The probe: a Rust function whose argument conversion re-raises a panic carried by an error
/// object (mlua resumes a panic when it converts its error object to a Rust value).
pub(super) fn create(lua: &Lua) -> mlua::Result<mlua::Function> {
    lua.create_function(|_, _: mlua::Value| Ok(()))
}

/// Whether the error object at `index` may carry a Rust panic: mlua's are full userdata.
/// Nothing else is probed, so that an ordinary error costs no call (and no C-call level: a
/// failure at the C-call limit must read as in plain Lua).
///
/// # Safety
///
/// `state` must be a live state; `index` a valid index.
pub(super) unsafe fn may_carry_panic(state: *mut ffi::lua_State, index: c_int) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { ffi::lua_type(state, index) == ffi::LUA_TUSERDATA }
}

/// Raises again the error object at `index` if it carries a Rust panic; otherwise returns.
///
/// # Safety
///
/// `state` must be the running state inside a C function; `probe` the index of the probe.
pub(super) unsafe fn reraise_panic(state: *mut ffi::lua_State, index: c_int, probe: c_int) {
    // SAFETY: guaranteed by the caller; two stack slots are checked first.
    unsafe {
        if !may_carry_panic(state, index) {
            return;
        }
        let index = ffi::lua_absindex(state, index);
        ffi::luaL_checkstack(state, 2, ptr::null());
        ffi::lua_pushvalue(state, probe);
        ffi::lua_pushvalue(state, index);
        ffi::lua_call(state, 1, 0);
    }
}
