//! Scripts that reach bugs in Lua's C code: each must end with a clean Lua error (never a
//! crash of the process), and the isle must keep serving. Where a version has no such bug,
//! the same script runs and ends the same way. Where the input is valid, the isle must answer
//! exactly as plain Lua does.

mod common;

use common::*;
use mlua_isle::mlua::Lua;
use mlua_isle::{Isle, IsleError, LuaError, LuaErrorKind};

/// Defines `unpack` on every version, and `show(...)`, which describes its arguments.
const PRELUDE: &str = "unpack = unpack or table.unpack
    local function show(...)
      local t = {}
      for i = 1, select('#', ...) do t[i] = tostring((select(i, ...))) end
      return table.concat(t, ', ')
    end";

/// A chunk that describes the outcome of running `body`: `true` and its results, or `false`
/// and the error.
fn describing(body: &str) -> String {
    format!("{PRELUDE}\nreturn show(pcall(function() {body}\nend))")
}

/// The outcome of `body` on `isle`, as [`describing`] describes it.
fn on_isle(isle: &Isle, body: &str) -> String {
    isle.eval::<String>(describing(body))
        .unwrap_or_else(|e| panic!("{e}; body:\n{body}"))
}

/// The outcome of `body` on a plain VM of the same version (with the same chunk name).
fn on_plain_lua(body: &str) -> String {
    let code = describing(body);
    Lua::new()
        .load(&code)
        .set_name(&code)
        .eval::<String>()
        .unwrap_or_else(|e| panic!("{e}; body:\n{body}"))
}

/// Each body ends on the isle exactly as on plain Lua.
#[track_caller]
fn assert_as_plain_lua(bodies: &[&str]) {
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    for body in bodies {
        assert_eq!(on_isle(&isle, body), on_plain_lua(body), "body:\n{body}");
    }
}

/// An isle with a 64 MiB memory limit.
fn limited() -> Isle {
    Isle::builder()
        .memory_limit(64 << 20)
        .spawn(|_| Ok(()))
        .unwrap()
}

/// Runs `code` on `isle`: it must fail with a Lua error, and the isle must then still answer.
#[track_caller]
fn assert_clean_error(isle: &Isle, code: &str) -> LuaError {
    let code = format!("{PRELUDE}\n{code}");
    let err = match isle.eval::<()>(code.clone()) {
        Err(IsleError::Lua(err)) => err,
        other => panic!("expected a Lua error, got {other:?}; code:\n{code}"),
    };
    assert_usable(isle, &code);
    err
}

/// Runs `code` on `isle`: it must either succeed or fail with a Lua error, and the isle must
/// then still answer.
#[track_caller]
fn assert_no_crash(isle: &Isle, code: &str) -> Result<(), LuaError> {
    let code = format!("{PRELUDE}\n{code}");
    let outcome = match isle.eval::<()>(code.clone()) {
        Ok(()) => Ok(()),
        Err(IsleError::Lua(err)) => Err(err),
        other => panic!("expected a value or a Lua error, got {other:?}; code:\n{code}"),
    };
    assert_usable(isle, &code);
    outcome
}

#[track_caller]
fn assert_usable(isle: &Isle, code: &str) {
    let two = isle.eval::<i64>("1 + 1");
    assert!(
        matches!(two, Ok(2)),
        "after the code, `1 + 1` gave {two:?}; code:\n{code}"
    );
}

#[track_caller]
fn assert_message(err: &LuaError, expected: &[&str]) {
    assert!(
        expected.iter().any(|e| err.message().contains(e)),
        "expected one of {expected:?}, got: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// unpack
// ---------------------------------------------------------------------------------------------

/// CVE-2025-46817: Lua 5.1 computes the count in an `int`, and an optimized build then pushes
/// values until it overruns the stack.
#[test]
fn unpack_of_a_range_past_int_max_is_too_many_results() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        let mut ranges = vec![
            "-2^31, 2^31 - 1",
            "-2^31 + 1, 2^31 - 1",
            "-2^31, 2^31 - 2",
            "0, 2^31 - 1",
            "1, 2^31 - 1",
            "-2^31, -1",
            "1, 1e7",
        ];
        if cfg!(any(feature = "lua53", feature = "lua54", feature = "lua55")) {
            ranges.push("math.mininteger, math.maxinteger");
        }
        for range in ranges {
            let mut calls = vec![format!("unpack({{}}, {range})")];
            if cfg!(not(any(feature = "lua51", feature = "luajit"))) {
                calls.push(format!("table.unpack({{}}, {range})"));
            }
            for call in calls {
                let err = assert_clean_error(&isle, &format!("return {call}"));
                assert_message(&err, &["too many results to unpack"]);
                assert_eq!(err.kind(), LuaErrorKind::Runtime, "{call}");
            }
        }
    });
}

#[test]
fn unpack_answers_as_plain_lua() {
    assert_as_plain_lua(&[
        "return unpack({1, 2, 3})",
        "return unpack({1, nil, 3}, 1, 3)",
        "return unpack({1, 2, 3}, 2)",
        "return unpack({1, 2}, -1, 1)",
        "return unpack({1, 2}, 3, 1)",
        "return unpack({1, 2}, 2^31 - 1, -2^31)",
        "return unpack({[2^31 - 2] = 'a', [2^31 - 1] = 'b'}, 2^31 - 2, 2^31 - 1)",
        "return unpack({'a', 'b'}, '1', '2')",
        "return select('#', unpack({}, 1, 200))",
        "local x = unpack() return x",
        "local x = unpack({}, 'x') return x",
        "local x = unpack({}, 1, {}) return x",
        "local x = unpack('abc') return x",
    ]);
}

// ---------------------------------------------------------------------------------------------
// string.rep, string.format, table.concat, string.char, select
// ---------------------------------------------------------------------------------------------

#[test]
fn string_rep_with_huge_counts_and_separators_fails_cleanly() {
    within_hang_guard(|| {
        let isle = limited();
        for code in [
            "return string.rep('x', 2^31 - 1)",
            "return string.rep('x', 2^31 - 1, 'y')",
            "return string.rep('xx', 2^30, string.rep('y', 1024))",
            "return string.rep(string.rep('x', 1024), 2^22)",
            "return ('x'):rep(1e9)",
        ] {
            let err = assert_clean_error(&isle, code);
            assert!(
                matches!(err.kind(), LuaErrorKind::Memory | LuaErrorKind::Runtime),
                "{code}: {err}"
            );
        }
        // Lua 5.1 and Luau cut the count to an `int` (2^40 becomes 0); Lua 5.5 allows strings
        // this long, and only the memory limit stops it.
        for code in [
            "return #string.rep('x', 2^40)",
            "return #string.rep('x', 2^40, 'y')",
        ] {
            let _ = assert_no_crash(&isle, code);
        }
    });
}

#[test]
fn string_rep_answers_as_plain_lua() {
    assert_as_plain_lua(&[
        "return string.rep('ab', 3)",
        "return string.rep('ab', 3, ',')",
        "return string.rep('x', 0), string.rep('x', -1), string.rep('x', -2^31)",
        "return #string.rep('', 2^20, '')",
    ]);
}

#[test]
fn string_format_with_long_or_odd_formats_fails_cleanly() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        for code in [
            "return string.format('%99999d', 1)",
            "return string.format('%.100f', 1)",
            "return string.format('%123.456f', 1)",
            "return string.format('%' .. string.rep('1', 1000) .. 'd', 1)",
            "return string.format('%', 1)",
            "return string.format('%5', 1)",
            "return string.format(string.rep('%d', 1000), 1)",
        ] {
            assert_clean_error(&isle, code);
        }
    });
}

#[test]
fn string_format_answers_as_plain_lua() {
    assert_as_plain_lua(&[
        "return string.format('%.99f', 1e308)",
        "return string.format('%99.99f', -1e308)",
        "return string.format('%099.99f', -1e308)",
        "return string.format('%- #0+99.99f', -1e308)",
        "return string.format('%- #0+99.99e', -1e308)",
        "return string.format('%- #0+99.99g', -1e308)",
        "return string.format('%-----------5d', 1)",
        "return string.format('%' .. string.rep('-', 100) .. 'd', 1)",
        "return string.format('%99.99s|%99c|%.99d|%99x', 'x', 65, 1, 255)",
        "return string.format('%q', string.rep('\\0\\n\"', 1000))",
        "return string.format(string.rep('%s', 200), unpack({}, 1, 200))",
        "return #string.format('%s', string.rep('x', 1e6))",
    ]);
}

#[test]
fn table_concat_of_huge_ranges_fails_cleanly() {
    within_hang_guard(|| {
        let isle = limited();
        for code in [
            "return table.concat({}, '', 1, 2^31 - 1)",
            "return table.concat({}, '', -2^31, 2^31 - 1)",
            "return table.concat({'a'}, '', 2^31 - 1, 2^31 - 1)",
            "return table.concat({'a', 'b'}, string.rep('x', 2^20), 1, 2^31 - 1)",
            // Lua 5.3 and later read through `__index`: the string grows to the limit.
            "return table.concat(setmetatable({}, {__index = function() return 'xxxx' end}),
                                 'sep', 1, 2^31 - 1)",
        ] {
            let err = assert_clean_error(&isle, code);
            assert!(
                matches!(err.kind(), LuaErrorKind::Memory | LuaErrorKind::Runtime),
                "{code}: {err}"
            );
        }
    });
}

#[test]
fn string_char_and_select_with_huge_indexes_fail_cleanly() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        for code in [
            "return string.char(-2^31)",
            "return string.char(2^31)",
            "return select(-2^31, 1, 2)",
            "return select(-2^31)",
            "return select(-2^53, 1)",
            "return select(-2^63, 1)",
        ] {
            assert_clean_error(&isle, code);
        }
    });
}

#[test]
fn string_indexes_answer_as_plain_lua() {
    assert_as_plain_lua(&[
        "return select('#', select(2^31, 1))",
        "return string.byte('abc', -2^31, 2^31 - 1)",
        "return string.sub('abc', -2^31, 2^31 - 1)",
        "return string.sub('abc', 2^31 - 1, -2^31)",
        "return select(-1, 1, 2, 3)",
        "return select('#', string.byte(string.rep('x', 1000), 1, -1))",
    ]);
}

// ---------------------------------------------------------------------------------------------
// Pattern matching
// ---------------------------------------------------------------------------------------------

/// Lua 5.1's matcher recurses once per quantified item or capture, without limit.
#[test]
fn patterns_that_recurse_too_deeply_fail_cleanly() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        for code in [
            "return string.find(string.rep('a', 1e6), string.rep('a?', 1e6))",
            "return string.match(string.rep('a', 1e6), string.rep('a?', 1e6))",
            "return string.gsub(string.rep('a', 1e6), string.rep('a?', 1e6), '')",
            "for _ in string.gmatch(string.rep('a', 1e6), string.rep('a?', 1e6)) do end",
            "local next_match = string.gmatch(string.rep('a', 1e6), string.rep('a?', 1e6))
             return next_match()",
            "return (string.rep('a', 1e6)):find(string.rep('a?', 1e6))",
        ] {
            let err = assert_clean_error(&isle, code);
            assert_message(&err, &["pattern too complex"]);
        }
        // Luau's matcher repeats `*` without recursing: such a pattern may just match.
        for code in [
            "return string.find(string.rep('a', 2e5), string.rep('a*', 2e5))",
            "return string.find(string.rep('a', 2e5), string.rep('a-', 2e5) .. 'b')",
        ] {
            if let Err(err) = assert_no_crash(&isle, code) {
                assert_message(&err, &["pattern too complex"]);
            }
        }
    });
}

#[test]
fn patterns_answer_as_plain_lua() {
    assert_as_plain_lua(&[
        "return string.find('hello world', 'o w')",
        "return string.find('hello world', 'o', 1, true)",
        "return string.find('a.b', '.', 1, true)",
        "return string.find(12345, 34)",
        "return string.match('key = value', '^(%w+)%s*=%s*(%w+)$')",
        "return string.match('[[x]]', '%[(%b[])%]')",
        "return string.match('THE (quick) fox', '%f[%a]%a+')",
        "return string.match('aaa', '(a)%1*')",
        "return string.gsub('hello world', '(%w+)', '<%1>')",
        "return string.gsub('abc', '%w', {a = 1, b = true})",
        "return string.gsub('abc', '', '-')",
        "local t = {} for k, v in string.gmatch('a=1, b=2', '(%w+)=(%w+)') do
           t[#t + 1] = k .. v end return unpack(t)",
        "return string.find(string.rep('a', 100), string.rep('a?', 100))",
        "return select('#', string.match(string.rep('ab', 50), string.rep('(a)(b)', 16)))",
        "return string.find('x', '[a')",
        "return string.find('x', '%')",
        "return string.gsub('x', '(', '')",
        "local x = string.gmatch('x') return x",
        "local x = string.find() return x",
        "local x = string.gsub('x', 'x') return x",
    ]);
}

// ---------------------------------------------------------------------------------------------
// C stack
// ---------------------------------------------------------------------------------------------

/// Messages of a C stack running out: "C stack overflow" (PUC Lua, Luau, LuaJIT guarded by the
/// isle), "stack overflow" (LuaJIT's Lua stack), "coroutines nested too deeply" (the isle's
/// limit on LuaJIT), "chunk has too many syntax levels" (Lua 5.1's parser).
const OUT_OF_STACK: &[&str] = &["stack overflow", "nested too deeply", "syntax levels"];

/// Each nests without end; some version sets no limit of its own. The error must be a clean
/// one.
#[test]
fn coroutines_nested_without_end_fail_cleanly() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        for code in [
            "local function f() return coroutine.wrap(f)() end return f()",
            "local function f()
               local ok, err = coroutine.resume(coroutine.create(f))
               if not ok then error(err, 0) end
             end
             f()",
            "local function f()
               return coroutine.wrap(function()
                 local ok, err = coroutine.resume(coroutine.create(f))
                 if not ok then error(err, 0) end
               end)()
             end
             f()",
        ] {
            let err = assert_clean_error(&isle, code);
            assert_message(&err, OUT_OF_STACK);
        }
    });
}

#[test]
fn recursion_through_c_functions_fails_cleanly() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        for code in [
            "local function f(s) return (s:gsub('.', f)) end return f('x')",
            "local function cmp(a, b) table.sort({3, 2, 1}, cmp) return a < b end
             table.sort({3, 2, 1}, cmp)",
            "local function f()
               return string.format('%s', tostring(setmetatable({}, {__tostring = f})))
             end
             return f()",
            "local t = setmetatable({}, {__index = function(t, k) return t[k] end}) return t.x",
        ] {
            let err = assert_clean_error(&isle, code);
            assert_message(&err, OUT_OF_STACK);
        }
    });
}

/// Recursing through `string.gsub`, each level into a new coroutine once the Lua stack of the
/// last one is nearly full.
const GSUB_ACROSS_COROUTINES: &str = "local function dive(n)
       if n == 8000 then return coroutine.wrap(function() return dive(0) end)() end
       return (('x'):gsub('x', function() return dive(n + 1) end))
     end
     return dive(0)";

/// Recursing through `load` calling its reader while it parses a nested expression, every
/// thousandth level in a new coroutine.
const LOAD_ACROSS_COROUTINES: &str = "local function reader(d)
       local sent = 0
       return function()
         sent = sent + 1
         if sent <= 150 then return '(' end
         if sent == 151 then
           local f, err
           if d % 1000 == 999 then
             coroutine.wrap(function() f, err = load(reader(d + 1)) end)()
           else
             f, err = load(reader(d + 1))
           end
           if not f and not err:find('near') then error(err, 0) end
         end
         return nil
       end
     end
     local f, err = load(reader(0))
     error(err, 0)";

/// LuaJIT counts no C calls: each coroutine has a Lua stack of its own, so a recursion through
/// C functions that ends with the Lua stack could go on in a new coroutine, and so on until
/// the thread's stack overflowed.
#[test]
fn recursion_through_c_functions_across_coroutines_fails_cleanly() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        let err = assert_clean_error(&isle, GSUB_ACROSS_COROUTINES);
        assert_message(&err, OUT_OF_STACK);
        // With a smaller stack, the same happens sooner (unwinding a recursion a million C
        // calls deep takes LuaJIT seconds).
        let isle = Isle::builder()
            .stack_size(16 << 20)
            .spawn(|_| Ok(()))
            .unwrap();
        let mut codes = vec![
            GSUB_ACROSS_COROUTINES,
            // `string.format` calling `__tostring` (Lua 5.1's and Luau's want a string:
            // `tostring` calls it there)
            "local wants_string = _VERSION == 'Lua 5.1' and not jit or _VERSION:find('^Luau')
             local function dive(n)
               if n == 7000 then return coroutine.wrap(function() return dive(0) end)() end
               local o = setmetatable({}, {__tostring = function() return dive(n + 1) end})
               return string.format('%s', wants_string and tostring(o) or o)
             end
             return dive(0)",
        ];
        // Luau's `load` takes no reader.
        if cfg!(not(feature = "luau")) {
            codes.push(LOAD_ACROSS_COROUTINES);
        }
        // LuaJIT's `loadstring` is its `load` under another name (Lua 5.1's takes strings only).
        let loadstring_across_coroutines = LOAD_ACROSS_COROUTINES.replace("load(", "loadstring(");
        if cfg!(any(feature = "luajit", feature = "luajit52")) {
            codes.push(&loadstring_across_coroutines);
        }
        for code in codes {
            let err = assert_clean_error(&isle, code);
            assert_message(&err, OUT_OF_STACK);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// LuaJIT's bit library
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg(any(feature = "luajit", feature = "luajit52"))]
fn bit_tohex_with_extreme_widths_answers_as_plain_lua() {
    assert_as_plain_lua(&[
        "return bit.tohex(1, -2^31)",
        "return bit.tohex(1, 2^31)",
        "return bit.tohex(-1, -2^31 + 1)",
        "return bit.tohex(1, 2^53)",
        "return #bit.tohex(1, 254), #bit.tohex(1, 255), #bit.tohex(1, -255)",
        "return bit.tohex(0x12345678, -8), bit.tohex(0x12345678, 4)",
    ]);
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    for width in ["-2^31", "2^31", "-2^31 + 1", "2^32 - 1"] {
        let hex: String = isle.eval(format!("bit.tohex(-1, {width})")).unwrap();
        assert!(hex.len() <= 254, "{width}: {} digits", hex.len());
    }
}
