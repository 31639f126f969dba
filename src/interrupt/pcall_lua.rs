//! The VM's `pcall` and `xpcall` on Lua 5.2, LuaJIT and Luau: Lua's own functions behind thin
//! Lua wrappers.
//!
//! Code can yield across these versions' `pcall`, but they have no continuation API of Lua
//! 5.3's shape that a C function could use to allow the same, so the wrappers are written in
//! Lua (a Lua frame can always be yielded across)
//! and keep every behaviour of the original, including yields where the version allows them.
//! What they add: a failed call's error object goes through the [probe](super::probe), so a
//! Rust panic is raised again outside the protected call; and `xpcall`'s message handler is
//! skipped while an interrupt is pending (Lua runs it with hooks disabled when the error came
//! from a hook, so a looping handler could not be interrupted), and also for an error that
//! carries a panic.

use std::sync::OnceLock;

#[cfg(feature = "luau")]
use mlua::ffi;
use mlua::Lua;

use super::hook;

/// Builds the two wrappers from the originals, the probe and a function telling whether an
/// interrupt is pending. Every global it needs is captured, so a script that replaces `type`
/// or `pcall` cannot change how the wrappers behave.
const WRAPPERS: &str = r#"
local pcall, xpcall, probe, pending, type, select, any_handler = ...
local function pass(ok, ...)
    if not ok then
        probe((...))
    end
    return ok, ...
end
local function guard(handler)
    return function(err)
        if pending() then
            return err
        end
        local ok, panic = pcall(probe, err)
        if not ok then
            -- The probe raised the panic again: carry that error object on.
            return panic
        end
        return handler(err)
    end
end
-- Arguments are passed on exactly as given, so that Lua's own checks see them.
local function isle_pcall(...)
    return pass(pcall(...))
end
local function isle_xpcall(...)
    local f, handler = ...
    if type(handler) ~= "function" and not any_handler then
        return pass(xpcall(...))
    end
    return pass(xpcall(f, guard(handler), select(3, ...)))
end
return isle_pcall, isle_xpcall
"#;

/// Installs `pcall` and `xpcall` into `lua`'s globals (when the VM has them).
pub(super) fn install(lua: &Lua, probe: &mlua::Function) -> mlua::Result<()> {
    let globals = lua.globals();
    let (Ok(pcall), Ok(xpcall)) = (
        globals.get::<mlua::Function>("pcall"),
        globals.get::<mlua::Function>("xpcall"),
    ) else {
        return Ok(());
    };
    let pending = lua.create_function(|_, ()| Ok(hook::pending().is_some()))?;
    let type_of = globals.get::<mlua::Function>("type")?;
    let select = globals.get::<mlua::Function>("select")?;
    static COMPILED: OnceLock<Vec<u8>> = OnceLock::new();
    let (isle_pcall, isle_xpcall): (mlua::Function, mlua::Function) =
        super::load_own_chunk(lua, &COMPILED, WRAPPERS, "=[isle pcall]")?.call((
            pcall,
            xpcall,
            probe.clone(),
            pending,
            type_of,
            select,
            // Lua 5.2's `xpcall` takes any value as handler (a callable table, say) without
            // checking it; guard those too. LuaJIT and Luau refuse non-functions themselves.
            cfg!(feature = "lua52"),
        ))?;
    globals.raw_set("pcall", isle_pcall)?;
    globals.raw_set("xpcall", isle_xpcall)?;
    #[cfg(feature = "luau")]
    guard_resume(lua, probe)?;
    Ok(())
}

/// Luau has no resume chain to record (see `luau`), so `coroutine.resume` is not wrapped for
/// that; it is wrapped so that a coroutine that died of a Rust panic passes it on.
#[cfg(feature = "luau")]
fn guard_resume(lua: &Lua, probe: &mlua::Function) -> mlua::Result<()> {
    let Ok(coroutine) = lua.globals().get::<mlua::Table>("coroutine") else {
        return Ok(());
    };
    let Ok(resume) = coroutine.get::<mlua::Function>("resume") else {
        return Ok(());
    };
    // SAFETY: `exec_raw` pushes both values and runs the closure in a protected call;
    // `lua_pushcclosure` takes them as upvalues and leaves the closure as result.
    let guarded: mlua::Function = unsafe {
        lua.exec_raw((resume, probe.clone()), |state| {
            ffi::lua_pushcclosure(state, guarded_resume, 2)
        })?
    };
    coroutine.raw_set("resume", guarded)
}

/// `coroutine.resume` (upvalue 1, called as it is, so its errors read the same) whose failure
/// goes through the probe (upvalue 2).
#[cfg(feature = "luau")]
unsafe extern "C-unwind" fn guarded_resume(state: *mut ffi::lua_State) -> std::ffi::c_int {
    // SAFETY: called by Luau as a C function with the two upvalues above; the stack slot it
    // needs is checked first. Errors unwind with no Rust value alive in this frame.
    unsafe {
        let nargs = ffi::lua_gettop(state);
        ffi::luaL_checkstack(state, 1, std::ptr::null());
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        ffi::lua_call(state, nargs, ffi::LUA_MULTRET);
        let n = ffi::lua_gettop(state);
        if n >= 2 && ffi::lua_toboolean(state, 1) == 0 {
            super::probe::reraise_panic(state, 2, ffi::lua_upvalueindex(2));
        }
        n
    }
}
