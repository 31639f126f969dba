//! The isle replaces `pcall`, `xpcall` and some `coroutine` functions; scripts must not notice.

mod common;

use common::*;
use mlua_isle::{Interrupt, Isle, IsleBuilder};

fn modes() -> [IsleBuilder; 2] {
    [
        Isle::builder(),
        Isle::builder().interrupt(Interrupt::Hook { every: 1000 }),
    ]
}

fn check(script: &'static str) {
    for builder in modes() {
        let isle = builder.spawn(|_| Ok(())).unwrap();
        let ok: bool = isle
            .eval(script)
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"));
        assert!(ok, "script returned false:\n{script}");
    }
}

#[test]
fn pcall_returns_status_and_values() {
    check(
        "local ok, a, b = pcall(function(x) return x, x + 1 end, 1)
         local bad, err = pcall(error, 'boom', 0)
         local t = {}
         local bad2, err2 = pcall(error, t)
         return ok and a == 1 and b == 2 and not bad and err == 'boom' and not bad2 and err2 == t",
    );
}

#[test]
fn pcall_with_many_results_is_fine() {
    check(
        "local unpack = table.unpack or unpack
         local n = select('#', pcall(unpack, {}, 1, 250))
         local ok = pcall(unpack, {}, 1, 250)
         return ok == true and n == 251",
    );
}

#[test]
fn pcall_without_arguments_is_an_argument_error() {
    // Luau says "missing argument #1", the others "bad argument #1".
    check("local ok, err = pcall(pcall) return not ok and err:find('argument #1') ~= nil");
}

/// Lua 5.1 cannot yield across `pcall` (LuaJIT can).
#[test]
#[cfg(not(feature = "lua51"))]
fn yields_cross_pcall_and_xpcall_inside_coroutines() {
    check(
        "local co = coroutine.wrap(function()
           local ok, v = pcall(coroutine.yield, 1)
           local ok2, w = xpcall(coroutine.yield, print, 2)
           return v + w
         end)
         return co() == 1 and co(5) == 2 and co(10) == 15",
    );
    check(
        "local co = coroutine.create(function()
           local ok, v = pcall(function() return coroutine.yield('in') end)
           return ok and v
         end)
         local _, first = coroutine.resume(co)
         local _, second = coroutine.resume(co, 'out')
         return first == 'in' and second == 'out'",
    );
}

#[test]
fn xpcall_calls_its_handler_for_ordinary_errors() {
    check(
        "local ok, msg = xpcall(function() error('oops', 0) end, function(e) return 'handled: ' .. e end)
         return not ok and msg == 'handled: oops'",
    );
}

/// Lua 5.1's `xpcall` passes no arguments to the function it calls.
#[test]
#[cfg(not(feature = "lua51"))]
fn xpcall_passes_its_extra_arguments_on() {
    check(
        "local ok, msg = xpcall(error, function(e) return 'handled: ' .. e end, 'oops', 0)
         local ok2, a, b = xpcall(function(x, y) return y, x end, print, 1, 2)
         return not ok and msg == 'handled: oops' and ok2 and a == 2 and b == 1",
    );
}

#[test]
fn xpcall_requires_a_function_handler() {
    check("local ok, err = pcall(xpcall, print) return not ok and err:find('argument #2') ~= nil");
}

#[test]
fn coroutine_functions_keep_their_semantics() {
    check(
        "local co = coroutine.create(function(a, b)
           local c = coroutine.yield(a + b)
           return c * 2
         end)
         local ok1, s = coroutine.resume(co, 1, 2)
         local ok2, d = coroutine.resume(co, 5)
         local ok3, e = coroutine.resume(co)
         return ok1 and s == 3 and ok2 and d == 10 and not ok3
           and e == 'cannot resume dead coroutine' and coroutine.status(co) == 'dead'",
    );
    check(
        "local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
         local sum = 0
         for v in gen do sum = sum + v end
         return sum == 6",
    );
    check(
        "local ok, err = pcall(coroutine.create, 42)
         local ok2, err2 = pcall(coroutine.wrap, nil)
         return not ok and err:find('argument #1') ~= nil and not ok2",
    );
}

#[test]
fn error_messages_match_plain_lua() {
    // Each script returns a string; the isle must return exactly what a plain VM returns.
    let scripts = [
        "local f = coroutine.wrap(function() error('inner') end)
         local ok, err = pcall(f) return err",
        "local f = coroutine.wrap(function() error('inner') end)
         local ok, err = pcall(function() f() end) return err",
        "local f = coroutine.wrap(function() local x = nil; return x.y end)
         local ok, err = pcall(function() return f() end) return err",
        "local f = coroutine.wrap(function() end) f()
         local ok, err = pcall(f) return err",
        "local co = coroutine.create(function() error('x', 2) end)
         local ok, err = coroutine.resume(co) return tostring(err)",
        "local ok, err = pcall(coroutine.resume, 1) return err",
        "local ok, err = pcall(coroutine.close, coroutine.running()) return err",
        "local ok, err = pcall(function() coroutine.close(coroutine.running()) end) return err",
        "local ok, err = pcall(coroutine.create, 42) return err",
        "local ok, err = pcall(function() return coroutine.wrap({}) end) return err",
        "local ok, err = pcall(error) return tostring(err)",
        // Argument errors of `pcall` and `xpcall` themselves, at the caller's position.
        "local ok, err = pcall(function() pcall() end) return err",
        "local ok, err = pcall(function() xpcall() end) return err",
        "local ok, err = pcall(function() xpcall(print) end) return err",
        "local ok, err = pcall(function() xpcall(print, 42) end) return tostring(err)",
        // Handlers that are not functions, and arguments after the handler (Lua 5.1 drops them).
        "local ok, err = pcall(function() return select(2, xpcall(error, 42, 'x')) end)
         return tostring(err)",
        "local h = setmetatable({}, {__call = function(_, m) return 'called: ' .. tostring(m) end})
         local ok, err = pcall(function() return select(2, xpcall(error, h, 'x')) end)
         return tostring(err)",
        "return tostring(select(2, xpcall(function(...) return select('#', ...) end, print, 1, 2)))",
        // Errors raised one level above the function `pcall` called: at the caller of `pcall`.
        "local ok, err = pcall(error, 'up', 2) return err",
        // A script's own strings that look like the wrappers' positions stay as they are.
        "local ok, err = pcall(error, '[isle pcall]:1: x') return err",
        "local ok, err = pcall(error, '[isle pcall]:1: x', 0) return err",
        "local ok, err = xpcall(function() error('[isle pcall]:3: y', 0) end,
           function(m) return 'h: ' .. m end)
         return err",
        "local x = 1\n\nlocal ok, err = pcall(error, 'up', 2)\nreturn err",
        "local x = 1\nlocal ok, err = xpcall(error, function(m) return 'h: ' .. m end,\n 'up', 2)\nreturn err",
        "local ok, err = pcall(function()\n  local t = {}\n  pcall()\nend)\nreturn err",
        "local ok, err = pcall(function()
           local ok, err = pcall(error, 'up', 2)
           error(err, 0)
         end)
         return err",
        "local ok, err = xpcall(error, function(m) return 'h: ' .. m end, 'up', 2) return err",
        "local ok, err = pcall(pcall, error, 'up', 2) return tostring(err)",
        "local ok, a, b = pcall(pcall, error, 'up', 2) return tostring(a) .. ' ' .. tostring(b)",
        "local ok, err = pcall(function() local t = setmetatable({}, {__index = function() error('deep') end}) return t.x end) return err",
    ];
    // Lua 5.2 names a function in an argument error as the caller called it (a local `p`, or
    // `_G.pcall` when called from C); an isle names its wrapped `pcall` and `xpcall` as such.
    let named_by_the_caller: &[&str] = if cfg!(feature = "lua52") {
        &[]
    } else {
        &[
            "local ok, err = pcall(pcall) return err",
            "local ok, err = pcall(function() local p = pcall p() end) return err",
            "local t = {} local ok, err = pcall(function() t.p = pcall t.p() end) return err",
            "local ok, err = pcall(function() local x = xpcall x(print) end) return err",
        ]
    };
    assert_as_plain_lua(scripts.iter().chain(named_by_the_caller).copied());
}

/// Each script returns a string: an isle, in every interrupt mode, must return exactly what a
/// plain VM returns.
fn assert_as_plain_lua(scripts: impl IntoIterator<Item = &'static str>) {
    let plain = mlua_isle::mlua::Lua::new();
    for script in scripts {
        let expected: String = plain.load(script).set_name("=s").eval().unwrap();
        for builder in modes() {
            let isle = builder.spawn(|_| Ok(())).unwrap();
            let got: String = isle
                .exec(move |lua| lua.load(script).set_name("=s").eval())
                .unwrap();
            assert_eq!(got, expected, "{script}");
        }
    }
}

/// `coroutine.close` and `<close>` exist from Lua 5.4 on.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn coroutine_close_runs_close_handlers() {
    check(
        "closed = false
         local co = coroutine.create(function()
           local x <close> = setmetatable({}, {__close = function() closed = true end})
           coroutine.yield()
         end)
         coroutine.resume(co)
         local ok = coroutine.close(co)
         return ok and closed and coroutine.status(co) == 'dead'",
    );
}

#[test]
fn errors_in_coroutines_keep_their_values() {
    check(
        "local t = {}
         local co = coroutine.create(function() error(t) end)
         local ok, err = coroutine.resume(co)
         return not ok and err == t",
    );
}

#[test]
fn a_host_panic_passes_through_every_protected_call() {
    quiet_lua_thread_panics();
    for builder in modes() {
        let isle = builder
            .spawn(|lua| {
                let boom = lua.create_function(|_, ()| -> mlua_isle::mlua::Result<()> {
                    panic!("through")
                })?;
                lua.globals().set("boom", boom)
            })
            .unwrap();
        for script in [
            "pcall(boom)",
            "xpcall(boom, function(e) return e end)",
            "pcall(pcall, boom)",
            "coroutine.wrap(function() pcall(boom) end)()",
            "local co = coroutine.create(function() pcall(boom) end) return coroutine.resume(co)",
            // A panic in a message handler (LuaJIT and Luau make any error there "error in
            // error handling").
            "xpcall(error, function(e) boom() end)",
            "xpcall(error, function(e) pcall(boom) return e end)",
        ] {
            match isle.eval::<()>(script) {
                Err(mlua_isle::IsleError::Panic(msg)) => assert_eq!(msg, "through", "{script}"),
                other => panic!("{script}: {other:?}"),
            }
        }
        assert_eq!(isle.eval::<i64>("1").unwrap(), 1);
    }
}

/// Error objects keep their identity through `pcall` and `xpcall` (and their handlers), the
/// host's error objects included.
#[test]
fn error_objects_keep_their_identity() {
    for builder in modes() {
        let isle = builder
            .spawn(|lua| {
                let fails = lua.create_function(|_, ()| -> mlua_isle::mlua::Result<()> {
                    Err(mlua_isle::mlua::Error::runtime("host error"))
                })?;
                lua.globals().set("host_error", fails)
            })
            .unwrap();
        for script in [
            "local ok, e = pcall(host_error) local ok2, e2 = pcall(error, e) return rawequal(e, e2)",
            "local t = {} local ok, e = pcall(host_error) t[e] = true
             local _, e2 = pcall(error, e) return t[e2] == true",
            "local seen local ok, e = xpcall(host_error, function(m) seen = m return m end)
             return rawequal(seen, e)",
            "local t = {} local ok, e = pcall(error, t) return rawequal(e, t)",
            "local t = {} local seen
             local ok, e = xpcall(function() error(t) end, function(m) seen = m return m end)
             return rawequal(seen, t) and rawequal(e, t)",
        ] {
            assert!(isle.eval::<bool>(script).unwrap(), "{script}");
        }
    }
}

/// A message handler that raises an error: LuaJIT, Luau and Lua 5.1, 5.3 to 5.5 end the call
/// with "error in error handling" (5.1 and 5.3 to 5.5 after calling the handler again for its
/// own error until the C-call limit, which an isle's extra levels reach sooner: the count
/// differs there). Lua 5.2 ends it with "C stack overflow" in an isle.
#[test]
#[cfg(not(feature = "lua52"))]
fn handlers_that_fail_end_as_in_plain_lua() {
    let scripts = [
        "local ok, e = xpcall(function() error('x') end, function(m) error('again', 0) end)
         return tostring(ok) .. ' ' .. tostring(e)",
        "local ok, e = xpcall(function() error('x') end, error) return tostring(ok) .. ' ' .. tostring(e)",
        "local n = 0
         local ok, e = xpcall(function() error('x') end, function(m)
           n = n + 1
           if n < 3 then error('again' .. n, 0) end
           return 'done: ' .. m
         end)
         return tostring(ok) .. ' ' .. tostring(e) .. ' ' .. tostring(n == 1 or n > 3)",
    ];
    assert_as_plain_lua(scripts);
}

/// A recursion through `pcall` and `xpcall` that ends with the Lua stack: its error carries
/// no position of the isle's wrappers.
#[test]
fn a_stack_overflow_through_protected_calls_names_no_wrapper() {
    check(
        "local a, b
         a = function() local ok, e = xpcall(b, function(m) return m end) error(e, 0) end
         b = function() local ok, e = pcall(a) error(e, 0) end
         local ok, e = pcall(a)
         return type(e) == 'string' and not e:find('isle')",
    );
}
