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
local pcall, xpcall, probe, pending, type, select, error, gsub, traceback, any_handler,
    tail_calls, keep_frame, handler_errors_end = ...
-- `probe(err, innermost)` raises a panic carried by `err` again. It returns nothing, or, for
-- an error raised at a wrapper's position (by `error(msg, 2)` in the function the original
-- called), the same message at the position of the wrapper's caller: where plain Lua, whose
-- `pcall` has no Lua frame, puts it.
local function pass(ok, ...)
    if not ok then
        -- A failed call returns exactly one error object.
        local moved = probe((...), false)
        if moved ~= nil then
            return ok, moved
        end
    end
    return ok, ...
end
-- What a message handler returns when the probe failed: the probe's error object carries the
-- panic on, unless the probe could not even run (the C-call limit) on an error that may be a
-- panic's (a userdata): that passes on as it is.
local function carried(probe_error, err)
    if type(probe_error) == "userdata" or type(err) ~= "userdata" then
        return probe_error
    end
    return err
end
-- After a handler ran in a protected call: its results, or a panic it raised carried out as
-- its result (LuaJIT and Luau make any error in a handler "error in error handling", which
-- would lose the panic), or what an error in a handler ends as: "error in error handling"
-- where that is all it does, else the error raised again (Lua 5.2 calls the handler again).
local function handled(ok, ...)
    if ok then
        return ...
    end
    local err = ...
    if type(err) == "userdata" then
        local probed, probe_error = pcall(probe, err, true)
        if not probed then
            return carried(probe_error, err)
        end
    end
    if handler_errors_end then
        return "error in error handling"
    end
    error(err, 0)
end
local function guard(handler)
    return function(err)
        if pending() then
            return err
        end
        local ok, moved = pcall(probe, err, true)
        if not ok then
            return carried(moved, err)
        end
        if moved ~= nil then
            err = moved
        end
        -- The VM's `debug.traceback` runs no Lua code and cannot panic.
        if handler == traceback then
            return handler(err)
        end
        return handled(pcall(handler, err))
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
-- can only fail those checks raise the original's argument error from the caller's position:
-- a tail call where that removes the wrapper's frame, else through `argument_error`.
local function isle_pcall(...)
    if select("#", ...) == 0 then
        if tail_calls then
            return pcall(...)
        end
        argument_error(pcall, "pcall", ...)
    end
    if keep_frame then
        -- Not a tail call: the frame stays for `probe` to see how the wrapper was called.
        return select(1, pass(pcall(...)))
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
    if keep_frame then
        return select(1, pass(xpcall(f, guard(handler), select(3, ...))))
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
        Ok(relocated(lua, &err, innermost))
    })?;
    // `debug.traceback` needs no protected call (see `handled`).
    let traceback = globals
        .get::<Option<mlua::Table>>("debug")?
        .and_then(|debug| debug.get::<mlua::Function>("traceback").ok());
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
            traceback,
            // Lua 5.2's `xpcall` takes any value as handler (a callable table, say) without
            // checking it. LuaJIT and Luau refuse non-functions themselves.
            cfg!(feature = "lua52"),
            // Where a tail call removes the wrapper's frame (see `argument_error`).
            cfg!(not(any(feature = "luau", feature = "lua52"))),
            // Lua 5.2 tail-calls Lua functions, so a wrapper can replace its caller's frame:
            // the wrapper's own frame is kept, for `wrapper_caller` to tell.
            cfg!(feature = "lua52"),
            // An error in a message handler ends the call at once on LuaJIT and Luau (Lua
            // 5.2 calls the handler again with it).
            cfg!(not(feature = "lua52")),
        ))?;
    globals.raw_set("pcall", isle_pcall)?;
    globals.raw_set("xpcall", isle_xpcall)?;
    #[cfg(feature = "luau")]
    guard_resume(lua, probe)?;
    Ok(())
}

/// When `err` is a message raised at the position of a wrapper calling the original
/// (`[isle pcall]:<line>: `), the same message at the position of the code that called that
/// wrapper (no position where that is lost: Lua 5.2, for a wrapper called as a tail call,
/// whose caller's frame it took); the bare message for a stack overflow on entering a
/// wrapper; `None` otherwise.
fn relocated(lua: &Lua, err: &mlua::Value, innermost: bool) -> Option<mlua::LuaString> {
    let mlua::Value::String(text) = err else {
        return None;
    };
    let bytes = text.as_bytes();
    let rest = bytes
        .strip_prefix(WRAPPER_SOURCE.as_bytes())?
        .strip_prefix(b":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let message = rest[digits..].strip_prefix(b": ")?;
    let line: usize = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    // A stack overflow on entering a wrapper: plain Lua's has no position.
    if wrapper_lines().defined.contains(&line) {
        return lua.create_string(message).ok();
    }
    // Only the lines where a wrapper calls the original: anything else is some other error
    // (or a script's own string) that merely looks like one.
    if !wrapper_lines().calls.contains(&line) {
        return None;
    }
    let position = wrapper_caller(lua, innermost, line)?;
    lua.create_string([position.as_bytes(), message].concat())
        .ok()
}

/// The position (`"chunk:line: "`, as `luaL_where` words it, or `""` for a C function) of the
/// code that called the wrapper an error was raised at (at `line`), seen from the Lua function
/// that called this one (level 1); `""` where that caller's frame is gone.
///
/// From `pass`, that wrapper is level 2 where it stayed on the stack (Lua 5.2 and Luau), and
/// its caller level 2 where the wrapper tail-called `pass` (LuaJIT). From a message handler,
/// the error was raised at the innermost wrapper frame still on the stack: `innermost`
/// searches for it. `None` when no such frame is found.
fn wrapper_caller(lua: &Lua, innermost: bool, line: usize) -> Option<String> {
    // Level 0 is this function, 1 `pass` or the handler's guard.
    let wrapper_at = |level: usize| {
        lua.inspect_stack(level, |frame| {
            is_wrapper_frame(frame).then(|| (frame.current_line(), tail_called(frame)))
        })
        .flatten()
    };
    let (level, (current, tail)) = if innermost {
        (1..1 + MAX_HANDLER_DEPTH).find_map(|level| wrapper_at(level).map(|w| (level, w)))?
    } else {
        match wrapper_at(2) {
            Some(wrapper) => (2, wrapper),
            // Tail-called away: `pass` stands where the wrapper stood.
            None => (1, (Some(line), false)),
        }
    };
    if current != Some(line) {
        return None;
    }
    // The wrapper took its caller's frame (Lua 5.2): that position is lost.
    if tail {
        return Some(String::new());
    }
    Some(
        lua.inspect_stack(level + 1, |frame| {
            let line = frame.current_line()?;
            Some(format!("{}:{line}: ", frame.source().short_src?))
        })
        .flatten()
        .unwrap_or_default(),
    )
}

/// Whether `frame` was called as a tail call (known from Lua 5.2 on).
fn tail_called(frame: &mlua::debug::Debug<'_>) -> bool {
    #[cfg(any(
        feature = "lua52",
        feature = "lua53",
        feature = "lua54",
        feature = "lua55"
    ))]
    return frame.is_tail_call();
    #[cfg(not(any(
        feature = "lua52",
        feature = "lua53",
        feature = "lua54",
        feature = "lua55"
    )))]
    {
        let _ = frame;
        false
    }
}

/// How far above a message handler the wrapper frame is looked for: the handler's own calls
/// (a `tostring` or `__index` that failed) and the function the wrapper called.
const MAX_HANDLER_DEPTH: usize = 64;

/// Where the wrappers are in [`WRAPPERS`].
struct WrapperLines {
    /// The lines `isle_pcall` and `isle_xpcall` start at.
    defined: [usize; 2],
    /// The lines where they call the original `pcall` or `xpcall` (`pass(...)`).
    calls: Vec<usize>,
}

fn wrapper_lines() -> &'static WrapperLines {
    static LINES: OnceLock<WrapperLines> = OnceLock::new();
    LINES.get_or_init(|| {
        // Line 1 is the one the chunk starts on.
        let numbered = || WRAPPERS.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
        let defined_at = |name: &str| {
            let start = format!("local function {name}(");
            numbered()
                .find(|(_, l)| l.starts_with(&start))
                .map_or(0, |(n, _)| n)
        };
        WrapperLines {
            defined: [defined_at("isle_pcall"), defined_at("isle_xpcall")],
            calls: numbered()
                .filter(|(_, l)| l.contains("pass(pcall(") || l.contains("pass(xpcall("))
                .map(|(n, _)| n)
                .collect(),
        }
    })
}

/// Whether `frame` runs `isle_pcall` or `isle_xpcall`.
fn is_wrapper_frame(frame: &mlua::debug::Debug<'_>) -> bool {
    let source = frame.source();
    source.short_src.as_deref() == Some(WRAPPER_SOURCE)
        && source
            .line_defined
            .is_some_and(|line| wrapper_lines().defined.contains(&line))
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
