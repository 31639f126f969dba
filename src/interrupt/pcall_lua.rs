//! The VM's `pcall` and `xpcall` on Lua 5.1, 5.2, LuaJIT and Luau: Lua's own functions behind
//! thin Lua wrappers.
//!
//! These versions have no continuation API that a C function could use to let code yield
//! across it, so the wrappers are written in Lua (a Lua frame can always be yielded across)
//! and keep every behaviour of the original, including yields where the version allows them.
//! What they add: a failed call's error object goes through the [probe](super::probe), so a
//! Rust panic is raised again outside the protected call; and `xpcall`'s message handler is
//! skipped while an interrupt is pending (Lua runs it with hooks disabled when the error came
//! from a hook, so a looping handler could not be interrupted), and also for an error that
//! carries a panic.

use mlua::Lua;

use super::hook;

/// Builds the two wrappers from the originals, the probe and a function telling whether an
/// interrupt is pending. Every global it needs is captured, so a script that replaces `type`
/// or `pcall` cannot change how the wrappers behave.
const WRAPPERS: &str = r#"
local pcall, xpcall, probe, pending, type = ...
local function pass(ok, ...)
    if not ok then
        probe((...))
    end
    return ok, ...
end
local function guard(handler)
    return function(err)
        if pending() or not pcall(probe, err) then
            return err
        end
        return handler(err)
    end
end
local function isle_pcall(f, ...)
    return pass(pcall(f, ...))
end
local function isle_xpcall(f, handler, ...)
    if type(handler) ~= "function" then
        return pass(xpcall(f, handler, ...))
    end
    return pass(xpcall(f, guard(handler), ...))
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
    let (isle_pcall, isle_xpcall): (mlua::Function, mlua::Function) = lua
        .load(WRAPPERS)
        .set_name("=[isle pcall]")
        .call((pcall, xpcall, probe.clone(), pending, type_of))?;
    globals.raw_set("pcall", isle_pcall)?;
    globals.raw_set("xpcall", isle_xpcall)
}
