//! Stand-ins: C functions that take the place of one of Lua's own library functions, check or
//! adjust its arguments, then run the original *in their own call*, so that results, argument
//! errors (named as the caller named the function) and error positions stay Lua's own.
//!
//! The original is kept as a light userdata upvalue, not as a function value, so Lua code
//! cannot call it. Lua code with the `debug` library can still read that upvalue and replace
//! it (with another stand-in's original, any light userdata, or `nil`), so a stand-in never
//! trusts it: it runs the pointer only if it is one of the originals recorded for that very
//! stand-in (in [`Originals`], out of Lua's reach), and raises an error otherwise.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use mlua::ffi;

/// The original functions one stand-in may run: every isle links the same Lua, so this is
/// one function per replaced library function in practice; a few more slots leave room for a
/// VM factory that put another C function under the same name.
#[derive(Debug)]
pub(crate) struct Originals {
    slots: [AtomicUsize; 8],
}

impl Originals {
    /// No original recorded yet.
    pub(crate) const fn new() -> Self {
        Originals {
            slots: [const { AtomicUsize::new(0) }; 8],
        }
    }

    /// Records `f`; returns `false` if every slot holds another function.
    pub(crate) fn record(&self, f: ffi::lua_CFunction) -> bool {
        let f = f as usize;
        for slot in &self.slots {
            match slot.compare_exchange(0, f, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(held) if held == f => return true,
                Err(_) => {}
            }
        }
        false
    }

    /// Whether `p` is a recorded original.
    fn contains(&self, p: usize) -> bool {
        p != 0
            && self
                .slots
                .iter()
                .any(|slot| slot.load(Ordering::Acquire) == p)
    }
}

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
/// the original (see [`original`]), recorded in `originals`. An original that cannot be
/// recorded is not kept: the stand-in then raises an error when called.
///
/// # Safety
///
/// The value on top of the stack must be a C function without upvalues, and the stack must
/// have a free slot.
pub(crate) unsafe fn push_stand_in(
    state: *mut ffi::lua_State,
    stand_in: ffi::lua_CFunction,
    originals: &'static Originals,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let original = ffi::lua_tocfunction(state, -1).expect("a C function");
        ffi::lua_pop(state, 1);
        if originals.record(original) {
            ffi::lua_pushlightuserdata(state, original as *mut c_void);
        } else {
            ffi::lua_pushnil(state);
        }
        ffi::lua_pushcclosure(state, stand_in, 1);
    }
}

/// The original function of the running stand-in, kept at `upvalue` (a light userdata made by
/// [`push_stand_in`]) and recorded in `originals`. Calling it with `state` runs it in the
/// stand-in's own call: it sees the same arguments, and its upvalues would be the stand-in's
/// (Lua's library functions replaced this way have none).
///
/// Raises an error if the upvalue holds anything else than a recorded original (Lua code can
/// replace it through the `debug` library).
///
/// # Safety
///
/// `state` must be the running state, inside the stand-in's call.
pub(crate) unsafe fn original(
    state: *mut ffi::lua_State,
    upvalue: c_int,
    originals: &'static Originals,
) -> ffi::lua_CFunction {
    // SAFETY: guaranteed by the caller. Only a pointer recorded from a `lua_CFunction` is
    // turned back into one; no Rust value is alive when `luaL_error` unwinds.
    unsafe {
        let p = if ffi::lua_type(state, upvalue) == ffi::LUA_TLIGHTUSERDATA {
            ffi::lua_touserdata(state, upvalue) as usize
        } else {
            0
        };
        if !originals.contains(p) {
            ffi::luaL_error(
                state,
                c"the original of this library function was replaced".as_ptr(),
            );
            unreachable!("luaL_error does not return");
        }
        std::mem::transmute::<usize, ffi::lua_CFunction>(p)
    }
}
