//! What LuaJIT needs on top of the hook mechanism.
//!
//! - Its compiler's machine code runs no hooks: an isle turns it off unless told otherwise
//!   (see [`IsleBuilder::jit`](crate::IsleBuilder::jit)).
//! - `load` with a reader function runs the reader inside a protected call that, when the
//!   reader is stopped by the hook's error, returns that error as `nil, message` *and leaves
//!   LuaJIT's hooks disabled* (its "hook active" flag is never cleared). `load` is therefore
//!   wrapped: while an interrupt is pending, a failed `load` raises its error again, and the
//!   next protected call that catches it (or the request's own) re-enables hooks.

use std::ffi::c_int;

use mlua::{ffi, Lua};

extern "C-unwind" {
    /// `luaJIT_setmode` from LuaJIT's `luajit.h` (not declared by mlua's bindings).
    fn luaJIT_setmode(state: *mut ffi::lua_State, idx: c_int, mode: c_int) -> c_int;
}

/// `LUAJIT_MODE_ENGINE`: the mode of the whole compiler.
const LUAJIT_MODE_ENGINE: c_int = 0;
/// `LUAJIT_MODE_OFF`.
const LUAJIT_MODE_OFF: c_int = 0x0000;

/// Wraps the VM's `load` as described above.
pub(super) fn guard_load(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    let Ok(load) = globals.get::<mlua::Function>("load") else {
        return Ok(());
    };
    let pending = lua.create_function(|_, ()| Ok(super::hook::pending().is_some()))?;
    let error = globals.get::<mlua::Function>("error")?;
    static COMPILED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let source = r#"
            local load, pending, error = ...
            return function(...)
                local f, err = load(...)
                if f == nil and pending() then
                    error(err, 0)
                end
                return f, err
            end
            "#;
    let guarded: mlua::Function = super::load_own_chunk(lua, &COMPILED, source, "=[isle load]")?
        .call((load, pending, error))?;
    globals.raw_set("load", guarded)
}

/// Turns the JIT compiler of `lua` off, and makes `jit.on()` say why it cannot be turned on.
pub(crate) fn turn_off(lua: &Lua) -> mlua::Result<()> {
    // SAFETY: `exec_raw` calls the closure with the VM's main state inside a protected call;
    // turning the engine off only clears a flag and updates LuaJIT's dispatch table.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            luaJIT_setmode(state, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
        })?;
    }
    if let Ok(jit) = lua.globals().get::<mlua::Table>("jit") {
        let refuse = lua.create_function(|_, ()| -> mlua::Result<()> {
            Err(mlua::Error::runtime(
                "the JIT compiler is off in this isle, so that its requests can be interrupted \
                 (see IsleBuilder::jit)",
            ))
        })?;
        jit.raw_set("on", refuse)?;
    }
    Ok(())
}
