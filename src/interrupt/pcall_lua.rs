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
//!
//! Where a wrapper's own Lua frame would show, the wrappers hide it: an error raised at the
//! wrapper's position (`error(msg, 2)` in the function `pcall` called) is given the position of
//! the wrapper's caller, as in plain Lua, and calls that can only fail the original's argument
//! checks raise that error from the caller's position.

use std::sync::OnceLock;

#[cfg(feature = "luau")]
use mlua::ffi;
use mlua::Lua;

use super::hook;

/// Builds the two wrappers from the originals, the probe and a function telling whether an
/// interrupt is pending. Every global it needs is captured, so a script that replaces `type`
/// or `pcall` cannot change how the wrappers behave.
const WRAPPERS: &str = r##"
local pcall, xpcall, probe, pending, type, select, error, gsub, any_handler, tail_calls = ...
-- `probe(err, innermost)` raises a panic carried by `err` again, and otherwise returns `err`,
-- or, for an error raised at a wrapper's position (by `error(msg, 2)` in the function the
-- original called, or by a stack overflow on entering it), the same message at the position
-- of the wrapper's caller: where plain Lua, whose `pcall` has no Lua frame, puts it.
local function pass(ok, ...)
    if not ok then
        -- A failed call returns exactly one error object.
        return ok, probe((...), false)
    end
    return ok, ...
end
local function guard(handler)
    return function(err)
        if pending() then
            return err
        end
        local ok, checked = pcall(probe, err, true)
        if not ok then
            -- The probe raised the panic again: carry that error object on.
            return checked
        end
        return handler(checked)
    end
end
-- Where a tail call leaves the wrapper's frame in place (Luau has no proper tail calls, Lua
-- 5.2 runs a tail-called C function above its caller), the original's argument error is
-- raised again from the caller's position: level 1 is this function, 2 the wrapper. Called
-- from C, Lua 5.2's original cannot tell its own name: it is put back.
local function argument_error(original, name, ...)
    local _, err = pcall(original, ...)
    if type(err) == "string" and gsub then
        err = gsub(err, "^(bad argument #%d+ to )'%?'", "%1'" .. name .. "'")
    end
    error(err, 3)
end
-- Arguments are passed on exactly as given, so that Lua's own checks see them. Calls that
-- can only fail those checks are tail calls: the original raises its argument error from the
-- caller's position, naming the function as the caller called it.
local function isle_pcall(...)
    if select("#", ...) == 0 then
        if tail_calls then
            return pcall(...)
        end
        argument_error(pcall, "pcall", ...)
    end
    return pass(pcall(...))
end
-- Lua 5.2 takes any value as handler, but an error then ends as "error in error handling"
-- without calling it (a callable table included).
local function error_in_error_handling()
    return "error in error handling"
end
local function isle_xpcall(...)
    local f, handler = ...
    if type(handler) ~= "function" then
        if select("#", ...) < 2 or not any_handler then
            if tail_calls then
                return xpcall(...)
            end
            argument_error(xpcall, "xpcall", ...)
        end
        handler = error_in_error_handling
    end
    return pass(xpcall(f, guard(handler), select(3, ...)))
end
return isle_pcall, isle_xpcall
"##;

/// Installs `pcall` and `xpcall` into `lua`'s globals (when the VM has them). `probe` guards
/// Luau's `coroutine.resume`; the wrappers probe with a function of their own.
#[cfg_attr(not(feature = "luau"), allow(unused_variables))]
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
    // Converting its argument, this probe raises a carried panic again (see `super::probe`).
    let check = lua.create_function(|lua, (err, innermost): (mlua::Value, bool)| {
        Ok(relocated(lua, err, innermost))
    })?;
    static COMPILED: OnceLock<Vec<u8>> = OnceLock::new();
    let (isle_pcall, isle_xpcall): (mlua::Function, mlua::Function) =
        super::load_own_chunk(lua, &COMPILED, WRAPPERS, WRAPPER_NAME)?.call((
            pcall,
            xpcall,
            check,
            pending,
            type_of,
            select,
            globals.get::<mlua::Function>("error")?,
            // A VM made by a factory may lack the string library.
            globals
                .get::<Option<mlua::Table>>("string")?
                .map(|string| string.get::<mlua::Function>("gsub"))
                .transpose()?,
            // Lua 5.2's `xpcall` takes any value as handler (a callable table, say) without
            // checking it. LuaJIT and Luau refuse non-functions themselves.
            cfg!(feature = "lua52"),
            // Where a tail call removes the wrapper's frame (see `argument_error`).
            cfg!(not(any(feature = "luau", feature = "lua52"))),
        ))?;
    globals.raw_set("pcall", isle_pcall)?;
    globals.raw_set("xpcall", isle_xpcall)?;
    #[cfg(feature = "luau")]
    guard_resume(lua, probe)?;
    Ok(())
}

/// `err`, or, when it is a message raised at a wrapper's position (`[isle pcall]:<line>: `),
/// the same message at the position of the code that called that wrapper.
fn relocated(lua: &Lua, err: mlua::Value, innermost: bool) -> mlua::Value {
    let mlua::Value::String(text) = &err else {
        return err;
    };
    let bytes = text.as_bytes();
    let Some(rest) = bytes
        .strip_prefix(WRAPPER_SOURCE.as_bytes())
        .and_then(|rest| rest.strip_prefix(b":"))
    else {
        return err;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let Some(message) = rest[digits..].strip_prefix(b": ").filter(|_| digits > 0) else {
        return err;
    };
    let Some(position) = wrapper_caller(lua, innermost) else {
        return err;
    };
    match lua.create_string([position.as_bytes(), message].concat()) {
        Ok(text) => mlua::Value::String(text),
        Err(_) => err,
    }
}

/// The position (`"chunk:line: "`, as `luaL_where` words it, or `""` for a C function) of the
/// code that called the wrapper an error was raised at, seen from the Lua function that
/// called this one (level 1).
///
/// From `pass`, that wrapper is level 2 where it stayed on the stack (Luau), and its caller
/// level 2 where the wrapper tail-called `pass`. From a message handler, the error was raised
/// at the innermost wrapper frame still on the stack: `innermost` searches for it. `None` when
/// no such frame is found.
fn wrapper_caller(lua: &Lua, innermost: bool) -> Option<String> {
    // Level 0 is this function, 1 `pass` or the handler's guard.
    let is_wrapper = |level: usize| lua.inspect_stack(level, is_wrapper_frame).unwrap_or(false);
    let caller = if innermost {
        (1..1 + MAX_HANDLER_DEPTH).find(|&level| is_wrapper(level))? + 1
    } else if is_wrapper(2) {
        3
    } else {
        2
    };
    Some(
        lua.inspect_stack(caller, |frame| {
            let line = frame.current_line()?;
            Some(format!("{}:{line}: ", frame.source().short_src?))
        })
        .flatten()
        .unwrap_or_default(),
    )
}

/// How far above a message handler the wrapper frame is looked for: the handler's own calls
/// (a `tostring` or `__index` that failed) and the function the wrapper called.
const MAX_HANDLER_DEPTH: usize = 64;

/// Whether `frame` runs `isle_pcall` or `isle_xpcall`.
fn is_wrapper_frame(frame: &mlua::debug::Debug<'_>) -> bool {
    static LINES: OnceLock<[usize; 2]> = OnceLock::new();
    let lines = LINES.get_or_init(|| {
        let line_of = |name: &str| {
            let start = format!("local function {name}(");
            WRAPPERS
                .lines()
                .position(|l| l.starts_with(&start))
                .map_or(0, |i| i + 1)
        };
        [line_of("isle_pcall"), line_of("isle_xpcall")]
    });
    let source = frame.source();
    source.short_src.as_deref() == Some(WRAPPER_SOURCE)
        && source
            .line_defined
            .is_some_and(|line| lines.contains(&line))
}

/// The chunk name the wrappers are loaded under, and how Lua shortens it in messages.
const WRAPPER_NAME: &str = "=[isle pcall]";
const WRAPPER_SOURCE: &str = "[isle pcall]";

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
