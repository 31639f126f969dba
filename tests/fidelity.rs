//! A script must not be able to tell an isle from plain mlua: what the isle's `coroutine`,
//! `pcall` and `xpcall` functions do is compared with Lua's own, in plain mlua and in an isle
//! in the same run. Coroutines nest as deeply (each level of `coroutine.wrap` or
//! `coroutine.resume` costs the C-call levels it costs in plain Lua), and debug hooks,
//! tracebacks and `__close` handlers see what they see in plain Lua.

// Luau has no `coroutine` wrappers and no debug hooks to compare.
#![cfg(not(feature = "luau"))]

mod common;

use std::thread;

use common::*;
use mlua::{Lua, LuaOptions, StdLib};
use mlua_isle::{Interrupt, Isle, IsleBuilder, DEFAULT_STACK_SIZE};

/// How far the isle's depth may be from plain mlua's (the requests' own call levels differ).
const TOLERANCE: i64 = 3;

/// Nests `coroutine.wrap` until it fails; returns the deepest level reached and the error.
/// The error passes out through every level, each of which prefixes its position. LuaJIT
/// sets no limit: the script stops itself.
const NESTED_WRAP: &str = r#"
    local max = 0
    local function nest(n)
      max = n
      if n > 1000 then error("no limit", 0) end
      coroutine.wrap(nest)(n + 1)
    end
    local ok, err = pcall(nest, 1)
    return max, tostring(err)
"#;

/// Nests `coroutine.resume` until it fails; returns the deepest level reached and the error
/// of the innermost failed resume.
const NESTED_RESUME: &str = r#"
    local max, err = 0, nil
    local function nest(n)
      max = n
      if n > 1000 then err = "no limit" return end
      local ok, e = coroutine.resume(coroutine.create(nest), n + 1)
      if not ok and err == nil then err = e end
    end
    nest(1)
    return max, tostring(err)
"#;

fn modes() -> [IsleBuilder; 2] {
    [
        Isle::builder(),
        Isle::builder().interrupt(Interrupt::Hook { every: 1000 }),
    ]
}

/// Every standard library, `debug` included.
fn lua_with_debug() -> mlua::Result<Lua> {
    // SAFETY: the scripts here are the tests' own.
    Ok(unsafe { Lua::unsafe_new_with(StdLib::ALL, LuaOptions::default()) })
}

/// Runs `script` (named `name`) in `lua` on a thread with the stack an isle's thread gets.
fn plain<T: mlua::FromLuaMulti + Send + 'static>(
    lua: fn() -> mlua::Result<Lua>,
    name: &'static str,
    script: String,
) -> T {
    thread::Builder::new()
        .stack_size(DEFAULT_STACK_SIZE)
        .spawn(move || lua().unwrap().load(script).set_name(name).eval().unwrap())
        .unwrap()
        .join()
        .unwrap()
}

/// Runs `script` (named `name`) in `isle`.
fn in_isle<T: mlua::FromLuaMulti + Send + 'static>(
    isle: &Isle,
    name: &'static str,
    script: String,
) -> T {
    isle.exec(move |lua| lua.load(script).set_name(name).eval())
        .unwrap()
}

/// The error without the positions (`nest:<line>: `) that each level prefixed to it.
fn without_positions(mut message: &str) -> &str {
    while let Some((line, rest)) = message
        .strip_prefix("nest:")
        .and_then(|r| r.split_once(": "))
    {
        if !line.chars().all(|c| c.is_ascii_digit()) {
            break;
        }
        message = rest;
    }
    message
}

fn check_depth(what: &str, script: &'static str) {
    let (plain_depth, plain_err): (i64, String) = plain(|| Ok(Lua::new()), "=nest", script.into());
    for builder in modes() {
        let isle = builder.spawn(|_| Ok(())).unwrap();
        let (depth, err): (i64, String) = in_isle(&isle, "=nest", script.into());
        eprintln!(
            "{what}: plain {plain_depth} ({}), isle {depth} ({})",
            without_positions(&plain_err),
            without_positions(&err),
        );
        assert!(
            (depth - plain_depth).abs() <= TOLERANCE,
            "{what}: plain mlua nests {plain_depth} levels, an isle {depth}"
        );
        assert_eq!(
            without_positions(&err),
            without_positions(&plain_err),
            "{what}: the error at the limit"
        );
        isle.shutdown().unwrap();
    }
}

#[test]
fn nested_wraps_reach_plain_depth() {
    within_hang_guard(|| check_depth("coroutine.wrap", NESTED_WRAP));
}

#[test]
fn nested_resumes_reach_plain_depth() {
    within_hang_guard(|| check_depth("coroutine.resume", NESTED_RESUME));
}

/// LuaJIT does not limit how deeply resumes nest; plain LuaJIT nests until the thread's stack
/// overflows and the process dies. An isle refuses a little before that, as PUC Lua words it.
#[test]
#[cfg(any(feature = "luajit", feature = "luajit52"))]
fn nesting_stops_with_an_error_before_the_stack_overflows() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .stack_size(1 << 20)
            .spawn(|_| Ok(()))
            .unwrap();
        let script = NESTED_RESUME.replace("n > 1000", "n > 1000000");
        let (depth, err): (i64, String) = in_isle(&isle, "=nest", script);
        assert!(depth > 1000, "{depth}");
        assert_eq!(err, "C stack overflow");
        assert_eq!(isle.eval::<i64>("return 1").unwrap(), 1);
    });
}

/// Runs `script` with every standard library in plain mlua and in an isle (the default
/// interrupt, so that no hook is installed): both must return the same string.
#[track_caller]
fn same_as_plain(script: &'static str) {
    let expected: String = plain(lua_with_debug, "=script", script.into());
    let isle = Isle::builder()
        .factory(lua_with_debug)
        .spawn(|_| Ok(()))
        .unwrap();
    let seen: String = in_isle(&isle, "=script", script.into());
    assert_eq!(seen, expected, "{script}");
    isle.shutdown().unwrap();
}

/// LuaJIT's own `coroutine.resume` is a fast function, after which LuaJIT reports no second
/// line event for the calling line; after a C function (the isle's) it does.
#[test]
#[cfg(not(any(feature = "luajit", feature = "luajit52")))]
fn a_hook_on_a_coroutine_sees_only_its_own_calls() {
    same_as_plain(
        r#"local co = coroutine.create(function () coroutine.yield(10) return 20 end)
        local trace = {}
        debug.sethook(co, function (event) trace[#trace + 1] = event end, "clr")
        repeat until not coroutine.resume(co)
        return table.concat(trace, " ")"#,
    );
}

#[test]
fn tracebacks_of_coroutines_show_their_frames_only() {
    same_as_plain(
        r#"local function f (n) if n > 0 then f(n - 1) else coroutine.yield() end end
        local suspended = coroutine.create(f)
        coroutine.resume(suspended, 2)
        local failed = coroutine.create(function () local x = {} return x.y.z end)
        coroutine.resume(failed)
        local levels = coroutine.wrap(function ()
          local n = 0
          while debug.getinfo(n + 1, "l") do n = n + 1 end
          return n
        end)
        return table.concat({
          debug.traceback(suspended), debug.traceback(failed), debug.traceback(suspended, "m", 2),
          tostring(debug.getinfo(suspended, 3, "l").currentline),
          tostring(debug.getinfo(suspended, 4) == nil), tostring(levels()),
        }, "\n")"#,
    );
}

#[test]
fn errors_of_wrapped_coroutines_carry_the_callers_position() {
    same_as_plain(
        r#"local out = {}
        local f = coroutine.wrap(function () error("plain") end)
        out[#out + 1] = select(2, pcall(f))
        out[#out + 1] = select(2, pcall(f))
        local g = coroutine.wrap(function () error({}) end)
        out[#out + 1] = type(select(2, pcall(g)))
        local n = coroutine.wrap(function () error(42) end)
        out[#out + 1] = tostring(select(2, pcall(n)))
        local co = coroutine.create(function () return 1 end)
        coroutine.resume(co)
        out[#out + 1] = table.concat({tostring(coroutine.resume(co))}, " ")
        out[#out + 1] = select(2, coroutine.resume(co))
        local w
        w = coroutine.wrap(function () return select(2, pcall(w)) end)
        out[#out + 1] = w()
        out[#out + 1] = select(2, pcall(coroutine.resume, 1))
        out[#out + 1] = select(2, pcall(coroutine.wrap, 1))
        -- Argument errors raised for a Lua caller carry its position.
        out[#out + 1] = select(2, pcall(function() return coroutine.wrap(1) end))
        out[#out + 1] = select(2, pcall(function() return coroutine.resume(1) end))
        return table.concat(out, "\n")"#,
    );
}

/// A VM factory may replace `coroutine.wrap` with a function of its own: the isle keeps what
/// it returns.
#[test]
fn a_factory_replacing_coroutine_wrap_keeps_its_wrap() {
    let isle = Isle::builder()
        .factory(|| {
            let lua = Lua::new();
            lua.load(
                "local create, resume = coroutine.create, coroutine.resume
                 coroutine.wrap = function(f)
                   local co = create(f)
                   return function(...) return select(2, resume(co, ...)) end
                 end",
            )
            .exec()?;
            Ok(lua)
        })
        .spawn(|_| Ok(()))
        .unwrap();
    assert_eq!(
        isle.eval::<i64>("coroutine.wrap(function(x) return x + 6 end)(1)")
            .unwrap(),
        7
    );
}

/// On Lua 5.2 and LuaJIT `pcall` and `xpcall` are Lua wrappers (see the README), which a
/// traceback shows; on Lua 5.1 the isle's `xpcall` has Lua 5.4's semantics (extra arguments,
/// function handlers only).
#[test]
#[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
fn xpcall_handlers_run_as_in_plain_lua() {
    same_as_plain(
        r#"local out = {}
        local function f () error("x") end
        out[#out + 1] = select(2, xpcall(f, debug.traceback))
        out[#out + 1] = select(2, xpcall(f, function (e) return e .. "!" end))
        local a, b, c = pcall(xpcall, f, 42)
        out[#out + 1] = tostring(a) .. " " .. tostring(b) .. " " .. tostring(c)
        local function countdown (n)
          if type(n) ~= "number" then return n elseif n == 0 then return "END" end
          error(n - 1)
        end
        for _, n in ipairs({100, 170, 190, 300}) do
          out[#out + 1] = select(2, xpcall(error, countdown, n))
        end
        local function loop () assert(pcall(loop)) end
        out[#out + 1] = select(2, xpcall(loop, loop))
        return table.concat(out, "\n")"#,
    );
}

/// `<close>` and `coroutine.close` exist from Lua 5.4 on.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn a_failed_coroutine_is_closed_by_close_not_by_its_error() {
    same_as_plain(
        r#"local log = {}
        local co = coroutine.create(function ()
          local x <close> = setmetatable({}, {__close = function (_, e)
            log[#log + 1] = "closed: " .. tostring(e)
          end})
          error("boom", 0)
        end)
        local ok, err = coroutine.resume(co)
        log[#log + 1] = "resume: " .. tostring(ok) .. " " .. err .. " " .. coroutine.status(co)
        log[#log + 1] = "frames: " .. tostring(debug.getinfo(co, 0, "S") ~= nil)
        local ok2, err2 = coroutine.close(co)
        log[#log + 1] = "close: " .. tostring(ok2) .. " " .. tostring(err2)
        local main = coroutine.running()
        log[#log + 1] = select(2, pcall(coroutine.close, main))
        log[#log + 1] = coroutine.wrap(function () return select(2, pcall(coroutine.close, main)) end)()
        return table.concat(log, "\n")"#,
    );
}

/// Finalizers run as the VM closes, after the isle has let go of it; they may still resume
/// coroutines, as in plain Lua.
#[test]
fn finalizers_resume_coroutines_while_the_vm_closes() {
    within_hang_guard(|| {
        let (tx, rx) = std::sync::mpsc::channel::<i64>();
        let isle = Isle::spawn(move |lua| {
            let report = lua.create_function(move |_, n: i64| {
                let _ = tx.send(n);
                Ok(())
            })?;
            lua.globals().set("report", report)
        })
        .unwrap();
        isle.eval::<()>(
            r#"local report = report
            local function on_gc (f)
              if newproxy then -- Lua 5.1 and LuaJIT finalize userdata only
                local proxy = newproxy(true)
                getmetatable(proxy).__gc = f
                return proxy
              end
              return setmetatable({}, {__gc = f})
            end
            on_gc(function ()
              local co = coroutine.wrap(function (a) local b = coroutine.yield(a + 1) return b * 2 end)
              report(co(1) + co(10))
            end)"#,
        )
        .unwrap();
        isle.shutdown().unwrap();
        assert_eq!(rx.recv().unwrap(), 22);
    });
}

/// Plain Lua loads a chunk afresh each time: a chunk that assigns `_ENV` (Lua 5.2+) must not
/// leave its next run in the environment it chose, although the isle caches compiled chunks.
#[test]
fn assigning_env_does_not_reach_the_next_run_of_the_same_code() {
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    let code = "local first = rawget(_ENV, 'marked') == nil \
                _ENV = setmetatable({ marked = true }, { __index = _ENV }) \
                return first";
    if cfg!(any(
        feature = "lua52",
        feature = "lua53",
        feature = "lua54",
        feature = "lua55"
    )) {
        for _ in 0..3 {
            assert!(isle.eval::<bool>(code).unwrap());
        }
    }
}
