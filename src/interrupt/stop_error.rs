//! The error value an interrupt raises: one prebuilt value per kind of stop.
//!
//! The value is an mlua error (the userdata mlua raises for errors of Rust callbacks), so
//! mlua's message handler lets it through as it is instead of building a traceback for it: a
//! traceback searches every loaded module for the names of the functions on the stack, which
//! made raising the interrupt the slowest step of a cancel. The request it stops reports
//! `Cancelled`, `Timeout` or `Shutdown` whatever its error, so a traceback would be dropped
//! anyway. Raising a value built in advance also allocates nothing, so it works when the VM is
//! out of memory.
//!
//! A script that catches it sees a userdata whose `tostring` is the message (before it is
//! raised again at the next instruction).

use std::cell::Cell;
use std::ffi::{c_int, CStr};

use mlua::{ffi, Lua, Value};

use super::Stop;

thread_local! {
    /// Registry references of the values, by [`index`]; 0 (no reference) before [`install`].
    static REFS: [Cell<c_int>; 3] = const { [const { Cell::new(0) }; 3] };
}

fn index(stop: Stop) -> usize {
    match stop {
        Stop::Cancelled => 0,
        Stop::Timeout => 1,
        Stop::Killed => 2,
    }
}

fn message(stop: Stop) -> &'static CStr {
    match stop {
        Stop::Cancelled => c"isle request cancelled",
        Stop::Timeout => c"isle request timed out",
        Stop::Killed => c"isle is shut down",
    }
}

/// Builds the values in `lua`'s registry, for the interrupts raised on this thread.
pub(super) fn install(lua: &Lua) -> mlua::Result<()> {
    const STOPS: [Stop; 3] = [Stop::Cancelled, Stop::Timeout, Stop::Killed];
    let value = |stop: Stop| {
        let text = message(stop).to_str().expect("the messages are ASCII");
        Value::Error(Box::new(mlua::Error::runtime(text)))
    };
    let [cancelled, timeout, killed] = STOPS.map(value);
    // SAFETY: `exec_raw` pushes the three values and runs the closure in a protected call;
    // `luaL_ref` pops a copy of each into the registry (it may raise a memory error, which the
    // protected call turns into an `Err`), and its reference takes the value's place.
    let (r1, r2, r3) = unsafe {
        lua.exec_raw::<(c_int, c_int, c_int)>((cancelled, timeout, killed), |state| {
            for i in 1..=STOPS.len() as c_int {
                ffi::lua_pushvalue(state, i);
                let reference = ffi::luaL_ref(state, ffi::LUA_REGISTRYINDEX);
                ffi::lua_pushinteger(state, reference.into());
                ffi::lua_replace(state, i);
            }
        })?
    };
    REFS.with(|refs| {
        for (stop, reference) in STOPS.into_iter().zip([r1, r2, r3]) {
            refs[index(stop)].set(reference);
        }
    });
    Ok(())
}

/// Forgets the values (the VM is going away).
pub(super) fn uninstall() {
    REFS.with(|refs| refs.iter().for_each(|r| r.set(0)));
}

/// Pushes the error value for `stop` (its message as a string if none was built).
///
/// # Safety
///
/// `state` must be a state of the VM [`install`] built the values in, on this thread, with a
/// free stack slot (a hook always has some: Lua reserves `LUA_MINSTACK` for it).
pub(super) unsafe fn push(state: *mut ffi::lua_State, stop: Stop) {
    let reference = REFS.with(|refs| refs[index(stop)].get());
    // SAFETY: guaranteed by the caller; the reference is a valid registry index.
    unsafe {
        if reference > 0 {
            ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, reference.into());
        } else {
            ffi::lua_pushstring(state, message(stop).as_ptr());
        }
    }
}
