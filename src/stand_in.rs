//! Stand-ins: C functions that take the place of one of Lua's own library functions, check or
//! adjust its arguments, then run the original *in their own call*, so that results, argument
//! errors (named as the caller named the function) and error positions stay Lua's own.
//!
//! The original is kept as a light userdata upvalue, not as a function value: Lua code that
//! reaches the stand-in's upvalues (through the `debug` library) cannot call it.

use std::ffi::{c_int, c_void};

use mlua::ffi;

/// Whether the value at `idx` is a C function without upvalues: one of Lua's own library
/// functions (a Rust function made by mlua has upvalues), which a stand-in may run in its
/// place.
///
/// # Safety
///
/// `state` must be a valid state with `idx` an acceptable index and a free stack slot.
pub(crate) unsafe fn is_plain_c_function(state: *mut ffi::lua_State, idx: c_int) -> bool {
    // SAFETY: guaranteed by the caller; `lua_getupvalue` pushes a value only when it returns
    // a name.
    unsafe {
        if ffi::lua_iscfunction(state, idx) == 0 {
            return false;
        }
        if ffi::lua_getupvalue(state, idx, 1).is_null() {
            return true;
        }
        ffi::lua_pop(state, 1);
        false
    }
}

/// Replaces the C function on top of the stack with `stand_in`, a closure whose upvalue 1 is
/// the original (see [`original`]).
///
/// # Safety
///
/// The value on top of the stack must be a C function without upvalues, and the stack must
/// have a free slot.
pub(crate) unsafe fn push_stand_in(state: *mut ffi::lua_State, stand_in: ffi::lua_CFunction) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let original = ffi::lua_tocfunction(state, -1).expect("a C function");
        ffi::lua_pop(state, 1);
        ffi::lua_pushlightuserdata(state, original as *mut c_void);
        ffi::lua_pushcclosure(state, stand_in, 1);
    }
}

/// The original function of the running stand-in, kept at `upvalue` (a light userdata made by
/// [`push_stand_in`]). Calling it with `state` runs it in the stand-in's own call: it sees the
/// same arguments, and its upvalues would be the stand-in's (Lua's library functions replaced
/// this way have none).
///
/// # Safety
///
/// `upvalue` must hold a light userdata made from a `lua_CFunction`.
pub(crate) unsafe fn original(state: *mut ffi::lua_State, upvalue: c_int) -> ffi::lua_CFunction {
    // SAFETY: guaranteed by the caller: the pointer was made from a `lua_CFunction`.
    unsafe {
        std::mem::transmute::<*mut c_void, ffi::lua_CFunction>(ffi::lua_touserdata(state, upvalue))
    }
}
