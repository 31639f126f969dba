//! A corpus of hostile scripts against the sandboxed isle (`IsleBuilder::sandboxed`): endless
//! loops in every protected form, memory bombs inside single C calls, deep recursion through C,
//! parser nesting, every escape route the sandbox closes, tampering meant to reach the next
//! request, and code that runs where no interrupt reaches.
//!
//! Each row is `(name, script, Expected)`. After every script the isle must still answer
//! `1 + 1` (or report `Abandoned` after a hard stop), and the canary `init` left must be
//! untouched: `secret.value == 42`, the host function still answers, the next request's
//! environment is empty, and the host's view of the real globals, the libraries and the string
//! metatable (a fingerprint taken right after `init`) has not changed.
//!
//! Sources of the shapes: Redis's Lua sandbox history (CVE-2015-4335 bytecode through
//! `loadstring`, CVE-2021-32626 stack growth through many results, CVE-2022-24834 buffer
//! overflow in a C encoder, CVE-2024-31449 `bit.tohex`, CVE-2025-46817 `unpack` overflow,
//! CVE-2025-46818 metatables of basic types, CVE-2025-46819 long brackets, CVE-2025-49844
//! garbage collection during parsing), Lua's own bug list (`__name` that is not a string,
//! `_ENV` as a constant), and the usual game-engine and OpenResty escapes (getfenv, string
//! metatable, `_G` metatable, `__gc`, `string.dump` → `load`).
//!
//! Rows that once escaped the sandbox (writing through the state `pairs` hands out, assigning
//! `_ENV` in a cached chunk, garbage left under the memory limit) stay as regression rows.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use mlua_isle::mlua::{self, Lua, Table};
use mlua_isle::{Isle, IsleError, LuaErrorKind, PrintSink, Sandbox, SANDBOX_GRACE_PERIOD};

/// The per-request deadline of the rows that must time out (and of tampering scripts).
const DEADLINE: Duration = Duration::from_millis(200);

/// How late past deadline + grace period a hard-stopped request may resolve (scheduling slack
/// on a loaded machine; not a speed assertion).
const MARGIN: Duration = Duration::from_secs(3);

/// How long any single request may take before the row counts as hung (shorter than the hang
/// guard, so the message names the row).
const STUCK: Duration = Duration::from_secs(20);

/// Rows run on this many isles at once.
const WORKERS: usize = 3;

/// What a hostile script must end with.
#[derive(Clone, Copy, Debug)]
enum Expected {
    /// A Lua error (runtime, syntax or memory); the isle keeps serving.
    CleanError,
    /// Its 200 ms deadline passes; the isle keeps serving.
    Timeout,
    /// It calls `started()`, is cancelled from this thread, and ends `Cancelled`.
    Cancelled,
    /// A Lua memory error, or a timeout where the version cannot tell them apart in time.
    Memory,
    /// The sandbox refuses it: the script uses the dangerous thing directly, which raises an
    /// error when it is missing or refused.
    Blocked,
    /// The script tampers (whatever it ends with); then `probe`, the next request on the same
    /// isle, must return `true`.
    NoLeak(&'static str),
    /// Code that runs in C or a finalizer: the caller gets `Timeout` within deadline + grace +
    /// margin; afterwards the isle serves or reports `Abandoned`.
    HardStop,
}

/// The sandbox an isle runs with: strict unless a row needs a piece given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Flavor {
    Strict,
    /// `finalizers(true)`: for code stuck in `__gc`.
    Finalizers,
    /// `gc_control(true)`: collector settings a request changes must be restored.
    GcControl,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    name: &'static str,
    script: &'static str,
    expected: Expected,
    flavor: Flavor,
    /// Whether the row applies to the Lua version under test.
    applies: bool,
}

const fn row(name: &'static str, script: &'static str, expected: Expected) -> Row {
    Row {
        name,
        script,
        expected,
        flavor: match expected {
            Expected::HardStop => Flavor::Finalizers,
            _ => Flavor::Strict,
        },
        applies: true,
    }
}

impl Row {
    const fn with(mut self, flavor: Flavor) -> Row {
        self.flavor = flavor;
        self
    }

    const fn only(mut self, applies: bool) -> Row {
        self.applies = applies;
        self
    }
}

const LUA51: bool = cfg!(feature = "lua51");
const LUAJIT: bool = cfg!(any(feature = "luajit", feature = "luajit52"));
const LUAU: bool = cfg!(feature = "luau");
/// Lua 5.4 and 5.5: `<close>`, `<const>`, `_ENV`, generational collection.
const LUA54_PLUS: bool = cfg!(any(feature = "lua54", feature = "lua55"));
/// Lua 5.2 and later (PUC): `_ENV`, `__pairs`, `collectgarbage('isrunning')`.
const PUC52_PLUS: bool = cfg!(any(
    feature = "lua52",
    feature = "lua53",
    feature = "lua54",
    feature = "lua55"
));

/// Lua 5.3 and later (PUC): the table library goes through metamethods.
const PUC53_PLUS: bool = cfg!(any(feature = "lua53", feature = "lua54", feature = "lua55"));

use Expected::*;

/// The corpus. Scripts are written for every version at once; a row limited with `only` says
/// why next to it.
fn corpus() -> Vec<Row> {
    let mut rows = Vec::new();
    rows.extend(loops());
    rows.extend(cancels());
    rows.extend(memory_bombs());
    rows.extend(clean_errors());
    rows.extend(escape_routes());
    rows.extend(tampering());
    rows.extend(hard_stops());
    rows
}

/// Endless loops in every protected form: each must end `Timeout` at its deadline.
fn loops() -> Vec<Row> {
    vec![
        row("plain while loop", "while true do end", Timeout),
        row(
            "repeat until false",
            "local n = 0 repeat n = n + 1 until false",
            Timeout,
        ),
        row("for to math.huge", "for i = 1, math.huge do end", Timeout),
        row(
            "endless tail call",
            "local function f() return f() end return f()",
            // Luau has no proper tail calls: its stack overflows.
            if LUAU { CleanError } else { Timeout },
        ),
        row(
            "pcall catching the interrupt in a loop",
            "while true do pcall(function() while true do end end) end",
            Timeout,
        ),
        row(
            "xpcall with a looping handler",
            "xpcall(error, function() while true do end end)",
            Timeout,
        ),
        row(
            "nested pcall",
            "while true do pcall(pcall, pcall, function() while true do end end) end",
            Timeout,
        ),
        row(
            "error in the handler",
            "while true do xpcall(function() while true do end end, function(e) error(e) end) end",
            Timeout,
        ),
        row(
            "coroutine.wrap inside pcall",
            "while true do pcall(coroutine.wrap(function() while true do end end)) end",
            Timeout,
        ),
        row(
            "coroutine resume loop",
            "local co = coroutine.create(function() while true do coroutine.yield() end end)
             while true do coroutine.resume(co) end",
            Timeout,
        ),
        row(
            "coroutines catching the interrupt",
            "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
            Timeout,
        ),
        row(
            "deep coroutine.wrap chain spinning at the bottom",
            // 50 levels: Luau counts each resume as C calls against a limit of 200.
            "local function f(n) if n == 0 then while true do end end coroutine.wrap(f)(n - 1) end
             f(50)",
            Timeout,
        ),
        row(
            "pcall recursion spinning at the bottom",
            "local function f(n) if n == 0 then while true do end end pcall(f, n - 1) end f(150)",
            Timeout,
        ),
        row(
            "__index loop",
            "return setmetatable({}, {__index = function() while true do end end}).x",
            Timeout,
        ),
        row(
            "__newindex loop",
            "setmetatable({}, {__newindex = function() while true do end end}).x = 1",
            Timeout,
        ),
        row(
            "__call loop",
            "setmetatable({}, {__call = function() while true do end end})()",
            Timeout,
        ),
        row(
            "__eq loop",
            "local mt = {__eq = function() while true do end end}
             return setmetatable({}, mt) == setmetatable({}, mt)",
            Timeout,
        ),
        row(
            "__lt loop",
            "local mt = {__lt = function() while true do end end}
             return setmetatable({}, mt) < setmetatable({}, mt)",
            Timeout,
        ),
        row(
            "__le loop",
            "local mt = {__le = function() while true do end end}
             return setmetatable({}, mt) <= setmetatable({}, mt)",
            Timeout,
        ),
        row(
            "__concat loop",
            "return setmetatable({}, {__concat = function() while true do end end}) .. 'x'",
            Timeout,
        ),
        // Lua 5.1 and LuaJIT ignore `__len` on tables.
        row(
            "__len loop",
            "return #setmetatable({}, {__len = function() while true do end end})",
            Timeout,
        )
        .only(!LUA51 && !LUAJIT),
        row(
            "__tostring loop",
            "return tostring(setmetatable({}, {__tostring = function() while true do end end}))",
            Timeout,
        ),
        row(
            "__unm and __add loops",
            "local mt = {__unm = function() while true do end end}
             mt.__add = mt.__unm
             local t = setmetatable({}, mt)
             return -t + t",
            Timeout,
        ),
        // `<close>` is Lua 5.4 syntax.
        row(
            "__close loop",
            "do local x <close> = setmetatable({}, {__close = function() while true do end end}) end",
            Timeout,
        )
        .only(LUA54_PLUS),
        row(
            "__close loop run by the interrupt's unwinding",
            "local x <close> = setmetatable({}, {__close = function() while true do end end})
             while true do end",
            Timeout,
        )
        .only(LUA54_PLUS),
        row(
            "gsub callback loop",
            "return string.gsub('abc', '.', function() while true do end end)",
            Timeout,
        ),
        row(
            "sort comparator loop",
            "table.sort({3, 2, 1}, function() while true do end end)",
            Timeout,
        ),
        row(
            "load reader loop",
            "return load(function() while true do end end, 'r', 't', {})",
            Timeout,
        ),
        row(
            "loop inside a loaded chunk",
            "load('while true do end', 'x', 't', {})()",
            Timeout,
        ),
        // Lua 5.1 and Luau have no `goto`.
        row("goto loop", "::top:: goto top", Timeout).only(!LUA51 && !LUAU),
        row(
            "looping __tostring of the uncaught error object",
            "error(setmetatable({}, {__tostring = function() while true do end end}))",
            Timeout,
        ),
        // Lua 5.1's and Luau's `%s` want a string and call no `__tostring`.
        row(
            "string.format of a looping __tostring",
            "return string.format('%s', setmetatable({}, {__tostring = function() while true do end end}))",
            Timeout,
        )
        .only(!LUA51 && !LUAU),
        // Only from 5.3 on does table.concat read through `__index`.
        row(
            "table.concat through a looping __index",
            "return table.concat(setmetatable({}, {__index = function() while true do end end}), '', 1, 2)",
            Timeout,
        )
        .only(LUA54_PLUS),
        row(
            "__index loop in pcall in a coroutine",
            "local t = setmetatable({}, {__index = function() while true do end end})
             coroutine.wrap(function() while true do pcall(function() return t.x end) end end)()",
            Timeout,
        ),
        row(
            "allocation churn",
            "while true do local s = ('x'):rep(1000) .. tostring({}) end",
            Timeout,
        ),
    ]
}

/// Endless loops cancelled from another thread once they called `started()`.
fn cancels() -> Vec<Row> {
    vec![
        row("cancel a plain loop", "started() while true do end", Cancelled),
        row(
            "cancel a pcall loop",
            "started() while true do pcall(function() while true do end end) end",
            Cancelled,
        ),
        row(
            "cancel a looping xpcall handler",
            "started() xpcall(error, function() while true do end end)",
            Cancelled,
        ),
        row(
            "cancel coroutines catching the interrupt",
            "started()
             coroutine.wrap(function()
               while true do coroutine.resume(coroutine.create(function() while true do end end)) end
             end)()",
            Cancelled,
        ),
        row(
            "cancel an __index loop",
            "started() return setmetatable({}, {__index = function() while true do end end}).x",
            Cancelled,
        ),
        row(
            "cancel a gsub callback loop",
            "started() return ('abc'):gsub('.', function() while true do end end)",
            Cancelled,
        ),
        row(
            "cancel a sort comparator loop",
            "started() table.sort({1, 2, 3}, function() while true do end end)",
            Cancelled,
        ),
        row(
            "cancel a load reader loop",
            "started() return load(function() while true do end end, 'r', 't', {})",
            Cancelled,
        ),
        row(
            "cancel a __close loop",
            "started()
             do local x <close> = setmetatable({}, {__close = function() while true do end end}) end",
            Cancelled,
        )
        .only(LUA54_PLUS),
        row(
            "cancel a looping __tostring of the error object",
            "started() error(setmetatable({}, {__tostring = function() while true do end end}))",
            Cancelled,
        ),
    ]
}

/// Allocations past the 64 MiB limit, most of them inside a single C call.
fn memory_bombs() -> Vec<Row> {
    vec![
        row(
            "string.rep of 100 MiB",
            "return #string.rep('x', 100 * 2^20)",
            Memory,
        ),
        row(
            "rep of a rep",
            "return #(('x'):rep(2^13):rep(2^14))",
            Memory,
        ),
        row(
            "string.rep with a separator",
            "return #string.rep('ab', 2^26, ',')",
            Memory,
        ),
        row(
            "table.concat of 100 MiB",
            "local s, t = ('x'):rep(2^20), {} for i = 1, 100 do t[i] = s end
             return #table.concat(t)",
            Memory,
        ),
        row(
            "concatenation of 32 MiB strings",
            "local s = ('x'):rep(2^25) return #(s .. s .. s)",
            Memory,
        ),
        row(
            "string.format of five 16 MiB strings",
            "local s = ('x'):rep(2^24) return #string.format('%s%s%s%s%s', s, s, s, s, s)",
            Memory,
        ),
        row(
            "gsub expansion",
            "local s = ('x'):rep(2^20) return #s:gsub('x', ('y'):rep(100))",
            Memory,
        ),
        row(
            "deep table nesting",
            "local t = {} for i = 1, 1e8 do t = {t} end",
            Memory,
        ),
        row(
            "hoarding strings",
            "local t = {} for i = 1, 1e8 do t[i] = ('x'):rep(64) .. i end",
            Memory,
        ),
        row(
            "hoarding coroutines",
            "local t = {} for i = 1, 1e8 do t[i] = coroutine.create(print) end",
            Memory,
        ),
        row(
            "hoarding string keys",
            "local t = {} for i = 1, 1e8 do t['k' .. i] = true end",
            Memory,
        ),
        // Luau's preallocating constructors.
        row(
            "table.create of 256 MiB",
            "return #table.create(2^24, true)",
            Memory,
        )
        .only(LUAU),
        row(
            "buffer.create of 512 MiB",
            "return buffer.create(2^29)",
            Memory,
        )
        .only(LUAU),
    ]
}

/// Errors that must stay ordinary Lua errors: size checks, recursion limits, parser limits and
/// the triggers of crashes fixed in some Lua or embedder (those end with `error('survived')`:
/// any Lua error is fine, a crash is not).
fn clean_errors() -> Vec<Row> {
    vec![
        row("syntax error", "return +", CleanError),
        row("runtime error", "error('boom')", CleanError),
        row("error with nil", "error()", CleanError),
        row("error with a table", "error({code = 1})", CleanError),
        row(
            "error object whose __tostring errors",
            "error(setmetatable({}, {__tostring = function() error('inner') end}))",
            CleanError,
        ),
        row(
            "deeply nested error object",
            "local e = {} for i = 1, 1e5 do e = {e} end error(e)",
            CleanError,
        ),
        row(
            "format width of 99999",
            "return string.format('%099999d', 1)",
            CleanError,
        ),
        row(
            "format precision of 99999",
            "return string.format('%.99999f', 1)",
            CleanError,
        ),
        row(
            "format %99.99f of -1e308",
            "local s = string.format('%99.99f', -1e308) error('survived ' .. #s)",
            CleanError,
        ),
        // Lua 5.1, LuaJIT and Luau convert a count past the int range to INT_MIN: an empty
        // string. Either way, no crash and no huge allocation.
        row(
            "string.rep of 1e10",
            "local s = string.rep('x', 1e10) error('survived ' .. #s)",
            CleanError,
        ),
        // CVE-2022-24834 shape: a length computation that overflows.
        row(
            "string.rep with a separator overflowing",
            "local s = string.rep('x', 2^31, 'yy') error('survived ' .. #s)",
            CleanError,
        ),
        row(
            "tostring -> __tostring recursion",
            "local t t = setmetatable({}, {__tostring = function(s) return tostring(s) end})
             return tostring(t)",
            // LuaJIT calls `__tostring` from `tostring` as a tail call: the recursion is a loop.
            if LUAJIT { Timeout } else { CleanError },
        ),
        row(
            "gsub callback recursion",
            "local function f(s) return (s:gsub('.', f)) end return f('ab')",
            CleanError,
        ),
        row(
            "sort comparator recursion",
            "local function cmp(a, b) table.sort({3, 2, 1}, cmp) return a < b end
             table.sort({3, 2, 1}, cmp)",
            CleanError,
        ),
        row(
            "pcall recursion",
            "local d = 0 local function f() d = d + 1 pcall(f) end f() error('depth ' .. d)",
            CleanError,
        ),
        row(
            "coroutine nesting",
            // LuaJIT limits the nesting only by the C stack left (see `DEFAULT_STACK_SIZE`),
            // which takes long to reach: 1e4 levels show that it copes.
            "local d = 0
             local function f()
               d = d + 1 if d > 1e4 then error('deep enough') end
               return coroutine.wrap(f)()
             end
             return f()",
            CleanError,
        ),
        row(
            "__index recursion",
            "local t t = setmetatable({}, {__index = function(s, k) return s[k] end}) return t.x",
            CleanError,
        ),
        row(
            "__concat recursion",
            "local t t = setmetatable({}, {__concat = function(a, b) return a .. b end})
             return t .. 'x'",
            CleanError,
        ),
        row(
            "deep pattern recursion",
            // "pattern too complex" where the matcher's recursion is limited; Lua 5.1 (guarded
            // by the crate against overflowing the C stack) and LuaJIT match it.
            "local m = string.match(('a'):rep(1e4), ('a?'):rep(1e4)) error('survived ' .. #m)",
            CleanError,
        ),
        row(
            "malformed patterns",
            "pcall(string.find, 'a', '[a') pcall(string.find, 'a', '%')
             return ('a'):rep(40):find(('(a)'):rep(40))",
            CleanError,
        ),
        row(
            "load of 1e5 nested parentheses",
            "local f, e = load(('('):rep(1e5) .. '1' .. (')'):rep(1e5), 'p', 't', {})
             error(tostring(e), 0)",
            CleanError,
        ),
        row(
            "load of 1e5 nested tables",
            "local f, e = load('return ' .. ('{'):rep(1e5) .. ('}'):rep(1e5), 't', 't', {})
             error(tostring(e), 0)",
            CleanError,
        ),
        row(
            "load of 1e4 nested functions",
            "local f, e = load('return ' .. ('function() return '):rep(1e4) .. '1'
                                .. (' end'):rep(1e4), 'f', 't', {})
             error(tostring(e), 0)",
            CleanError,
        ),
        row(
            "load of 1e5 nested unary operators",
            "local f, e = load('return ' .. ('not -'):rep(1e5) .. 'x', 'u', 't', {})
             error(tostring(e), 0)",
            CleanError,
        ),
        row(
            "load of 300 locals",
            "local f, e = load(('local a = 1 '):rep(300), 'l', 't', {}) error(tostring(e), 0)",
            CleanError,
        ),
        // CVE-2025-46819 shape: the lexer on long brackets.
        row(
            "load of an unfinished long bracket",
            "local f, e = load('return [' .. ('='):rep(2^16) .. '[' .. ('x'):rep(1e5), 'b', 't', {})
             local g = load('--[==[' .. ('x'):rep(1e6), 'c', 't', {})
             error(tostring(e) .. tostring(g), 0)",
            CleanError,
        ),
        row(
            "load of a huge number literal",
            "local f = load('return ' .. ('9'):rep(1e5) .. 'e' .. ('9'):rep(1e4), 'n', 't', {})
             error('survived ' .. tostring(f and f()), 0)",
            CleanError,
        ),
        // CVE-2025-49844 shape: the collector running while the parser builds a chunk.
        row(
            "garbage collection while loading",
            "local parts = {} for i = 1, 5e3 do parts[i] = 'x' .. i .. ' = \"s' .. i .. '\"' end
             local src = table.concat(parts, '\\n')
             for i = 1, 5 do
               local junk = {} for j = 1, 200 do junk[j] = ('x'):rep(1e4) .. j end
               assert(load(src, 'chunk' .. i, 't', {}))
               pcall(collectgarbage)
             end
             error('survived')",
            CleanError,
        ),
        // CVE-2021-32626 shape: results that would outgrow the Lua stack.
        row(
            "unpack of 1e8 results",
            "return (table.unpack or unpack)({}, 1, 1e8)",
            CleanError,
        ),
        // CVE-2025-46817: the count of results overflowing an int.
        row(
            "unpack over the whole int range",
            "return (table.unpack or unpack)({}, -2147483648, 2147483647)",
            CleanError,
        ),
        row(
            "string.byte of 1 MiB",
            "return string.byte(('x'):rep(2^20), 1, -1)",
            CleanError,
        ),
        row(
            "a million results through select",
            "local t = {} for i = 1, 1e6 do t[i] = i end
             return select('#', (table.unpack or unpack)(t))",
            CleanError,
        ),
        // Lua 5.3's luaL_tolstring formatted a non-string `__name` with %s.
        row(
            "__name that is not a string",
            "local s = tostring(setmetatable({}, {__name = {}})) error('survived ' .. s)",
            CleanError,
        ),
        row(
            "__tostring returning a table",
            "local r = tostring(setmetatable({}, {__tostring = function() return {} end}))
             error('survived')",
            CleanError,
        ),
        // CVE-2022-28805 (Lua 5.4.0-5.4.3): `_ENV` as a compile-time constant.
        row(
            "_ENV as a compile-time constant",
            "local _ENV <const> = 42 return x",
            CleanError,
        )
        .only(LUA54_PLUS),
        // CVE-2024-31449 (Redis's bit library): `bit.tohex` with INT_MIN digits. Only LuaJIT
        // has `bit` built in.
        row(
            "bit.tohex with INT_MIN digits",
            "local a, b = bit.tohex(1, -2147483648), bit.tohex(-1, 2147483647)
             error('survived ' .. a .. b)",
            CleanError,
        )
        .only(LUAJIT),
        // string.pack and utf8 are not in Lua 5.1 and LuaJIT.
        row(
            "string.pack with bad sizes",
            "pcall(string.pack, 'i17', 1) pcall(string.pack, '!17', 1)
             return string.unpack('z', 'abc', 1e10)",
            CleanError,
        )
        .only(!LUA51 && !LUAJIT),
        row(
            "utf8 on invalid bytes",
            "for _ in utf8.codes('\\255\\255') do end",
            CleanError,
        )
        .only(!LUA51 && !LUAJIT),
        row(
            "os.date with bad conversions",
            "pcall(os.date, '%Ez') pcall(os.date, '%') pcall(os.date, ('%c'):rep(1e4))
             error('survived')",
            CleanError,
        ),
        row(
            "resuming the running coroutine",
            "coroutine.resume(coroutine.running() or coroutine.create(print))
             local f = coroutine.wrap(function() end) f() f()",
            CleanError,
        ),
        row(
            "yield outside a coroutine",
            "coroutine.yield(1)",
            CleanError,
        ),
    ]
}

/// Every way out that the strict sandbox closes. Each script uses the dangerous thing directly:
/// it must fail (missing, refused or read-only).
fn escape_routes() -> Vec<Row> {
    vec![
        row(
            "io.open",
            "return io.open('/etc/passwd'):read('*a')",
            Blocked,
        ),
        row("io.popen", "return io.popen('id'):read('*a')", Blocked),
        row("io.lines", "return io.lines('/etc/passwd')()", Blocked),
        row("os.execute", "return os.execute('true')", Blocked),
        row("os.exit", "os.exit(1)", Blocked),
        row("os.getenv", "return os.getenv('HOME')", Blocked),
        row(
            "os.remove",
            "return os.remove('/nonexistent/mlua-isle-corpus')",
            Blocked,
        ),
        row("os.tmpname", "return os.tmpname()", Blocked),
        row("dofile", "return dofile('/etc/passwd')", Blocked),
        row("loadfile", "return loadfile('/etc/passwd')", Blocked),
        row("require", "return require('os')", Blocked),
        row(
            "package.loadlib",
            "return package.loadlib('libc.so.6', 'system')",
            Blocked,
        ),
        row("debug.getregistry", "return debug.getregistry()", Blocked),
        row("debug.sethook", "debug.sethook()", Blocked),
        row(
            "debug.getupvalue",
            "return debug.getupvalue(print, 1)",
            Blocked,
        ),
        row("string.dump", "return string.dump(function() end)", Blocked),
        // CVE-2015-4335 shape: bytecode through the loader.
        row(
            "string.dump then load binary",
            "return load(string.dump(function() return 1 end), 'd', 'b', {})()",
            Blocked,
        ),
        row(
            "load of forged bytecode",
            "return assert(load('\\27Lua\\84\\0\\25\\147', 'b', 'bt', {}))()",
            Blocked,
        ),
        row(
            "load in binary mode",
            "return assert(load('return 1', 'b', 'b', {}))()",
            Blocked,
        ),
        row(
            "load without an environment",
            "return load('return 1')()",
            Blocked,
        ),
        row(
            "load with a nil environment",
            "return load('return 1', 'n', 't', nil)()",
            Blocked,
        ),
        row(
            "load with a number as environment",
            "return load('return 1', 'n', 't', 42)()",
            Blocked,
        ),
        row(
            "load of code reaching the host table",
            "return load('return secret', 'x', 't', {})().value",
            Blocked,
        ),
        row(
            "load through an environment inheriting the globals",
            "load('secret.value = 0', 'x', 't', setmetatable({}, {__index = _G}))()",
            Blocked,
        ),
        row("loadstring", "return loadstring('return 1')()", Blocked),
        row("getfenv(0)", "return getfenv(0)", Blocked),
        row("setfenv", "setfenv(1, {})", Blocked),
        // Luau keeps `newproxy`: it has no finalizers to attach.
        row("newproxy", "return newproxy(true)", Blocked).only(!LUAU),
        row("jit", "jit.off() return jit.util.funcinfo(print)", Blocked),
        row("ffi", "return require('ffi').C", Blocked),
        row("collectgarbage('stop')", "collectgarbage('stop')", Blocked),
        row(
            "collectgarbage('setpause')",
            "collectgarbage('setpause', 1000)",
            Blocked,
        ),
        row(
            "setmetatable with __gc",
            "setmetatable({}, {__gc = function() end})",
            Blocked,
        ),
        row(
            "__gc placeholder",
            "local mt = {__gc = true} setmetatable({}, mt) mt.__gc = function() end",
            Blocked,
        ),
        row(
            "__gc added after setmetatable",
            "local ran = false
             local mt = {}
             local t = setmetatable({}, mt)
             mt.__gc = function() ran = true end
             t = nil
             for i = 1, 3 do pcall(collectgarbage) end
             if ran then return 'finalizer ran' end
             error('no finalizer', 0)",
            Blocked,
        ),
        row(
            "__gc inherited through the metatable's __index",
            "local ran = false
             setmetatable({}, setmetatable({}, {__index = {__gc = function() ran = true end}}))
             for i = 1, 3 do pcall(collectgarbage) end
             if ran then return 'finalizer ran' end
             error('no finalizer', 0)",
            Blocked,
        ),
        row(
            "rawset on a library",
            "rawset(string, 'rep', print)",
            Blocked,
        ),
        row(
            "table.insert on a library",
            "table.insert(string, print)",
            Blocked,
        ),
        // From Lua 5.3 on, `table.sort` goes through the metamethods: a library has no array
        // part, so there is nothing to sort and nothing changes (the fingerprint checks it).
        row("table.sort on a library", "table.sort(math)", Blocked).only(!PUC53_PLUS),
        // Luau's `table.remove` writes nothing to an empty table, so there is nothing to refuse
        // (the fingerprint shows `os` unchanged).
        row("table.remove on a library", "table.remove(os)", Blocked).only(!LUAU),
        row("assigning string.rep", "string.rep = nil", Blocked),
        row(
            "assigning math.random",
            "math.random = function() return 4 end",
            Blocked,
        ),
        row("assigning coroutine.wrap", "coroutine.wrap = nil", Blocked),
        // CVE-2025-46818 shape: the metatable of a basic type.
        row(
            "string metatable __index",
            "getmetatable('').__index = {}",
            Blocked,
        ),
        row(
            "string metatable __add",
            "getmetatable('').__add = function() return 1 end",
            Blocked,
        ),
        row(
            "indexing a string to assign",
            "local s = '' s.rep = nil",
            Blocked,
        ),
        row(
            "setmetatable(_G, ...)",
            "setmetatable(_G, {__index = function() return 1 end})",
            Blocked,
        ),
        row(
            "rawset on the metatable of _G",
            "rawset(getmetatable(_G), '__index', {})",
            Blocked,
        ),
        row("_G._G to the host table", "_G._G.secret.value = 0", Blocked),
        // `_ENV` is the request's environment on 5.2+; elsewhere it is a missing global and
        // indexing it fails as well.
        row("_ENV to the host table", "_ENV.secret.value = 0", Blocked),
        row(
            "_ENV to a library",
            "local e = _ENV return rawset(e.string, 'rep', nil)",
            Blocked,
        ),
        row("assigning the host table", "secret.value = 0", Blocked),
        row(
            "rawset on the host table",
            "rawset(secret, 'value', 0)",
            Blocked,
        ),
        row(
            "table.insert on the host table",
            "table.insert(secret, 1)",
            Blocked,
        ),
        row(
            "the host table's metatable",
            "getmetatable(secret).__index.value = 0",
            Blocked,
        ),
        row(
            "setmetatable on the host table",
            "setmetatable(secret, nil)",
            Blocked,
        ),
    ]
}

/// Tampering meant to reach the next request: `probe` runs next on the same isle.
fn tampering() -> Vec<Row> {
    // 32 MiB in 1 MiB pieces (one 32 MiB `rep` would need twice that: buffer and result). The
    // hoarding scripts end with a full collection while the hoard is still theirs, so that the
    // collector's next cycle is paced by it (it starts only once the heap doubles).
    const ROOM: &str =
        "local t = {} for i = 1, 32 do t[i] = ('y'):rep(2^20) .. i end return #t == 32";
    vec![
        row("global write", "leaked = 1", NoLeak("return leaked == nil")),
        row(
            "rawset on _G",
            "rawset(_G, 'leaked_raw', 1)",
            NoLeak("return leaked_raw == nil"),
        ),
        row(
            "replacing _G._G",
            "_G._G = {secret = {value = 0}}",
            NoLeak("return _G._G == _G and _G.secret.value == 42"),
        ),
        row(
            "replacing tostring",
            "tostring = function() return 'pwned' end",
            NoLeak("return tostring(1) == '1'"),
        ),
        row(
            "replacing pcall",
            "pcall = function() return true end",
            NoLeak("return pcall(error, 'x') == false"),
        ),
        row(
            "removing ipairs, pairs and next",
            "ipairs, pairs, next = nil, nil, nil",
            NoLeak("return ipairs ~= nil and pairs ~= nil and next ~= nil"),
        ),
        row(
            "shadowing string",
            "string = {rep = function() return 'pwned' end}",
            NoLeak("return string.rep('a', 2) == 'aa'"),
        ),
        row(
            "shadowing table",
            "table = {insert = function() end}",
            NoLeak("local t = {} table.insert(t, 1) return t[1] == 1"),
        ),
        row(
            "replacing string.rep",
            "pcall(function() string.rep = function() return 'pwned' end end)",
            NoLeak("return ('a'):rep(2) == 'aa'"),
        ),
        row(
            "replacing the string metatable's __index",
            "pcall(function() getmetatable('').__index = {rep = function() return 'pwned' end} end)",
            NoLeak("return ('a'):rep(2) == 'aa'"),
        ),
        row(
            "a metatable on _G",
            "pcall(setmetatable, _G, {__index = function() return 'leak' end})",
            NoLeak("return undefined_global == nil"),
        ),
        row(
            "replacing setmetatable",
            "setmetatable = function(t) return t end",
            NoLeak("return not pcall(setmetatable, {}, {__gc = true})"),
        ),
        row(
            "replacing load",
            "load = function() end",
            NoLeak("return load('return 7', 'x', 't', {})() == 7"),
        ),
        row(
            "closures stored in library tables",
            "pcall(function() string.hook = function() return 'x' end end)
             pcall(rawset, table, 'hook', print)
             pcall(table.insert, math, print)",
            NoLeak("return string.hook == nil and table.hook == nil and math[1] == nil"),
        ),
        row(
            "a suspended coroutine",
            "co = coroutine.wrap(function() while true do coroutine.yield() end end) co()",
            NoLeak("return co == nil"),
        ),
        // Lua 5.2+ only: the others have no `isrunning`, and Luau's collectgarbage knows only
        // "count".
        row(
            "collectgarbage('stop') refused",
            "pcall(collectgarbage, 'stop')",
            NoLeak("return collectgarbage('isrunning')"),
        )
        .only(PUC52_PLUS),
        row(
            "collectgarbage('stop') allowed",
            "collectgarbage('stop')",
            NoLeak("return collectgarbage('isrunning')"),
        )
        .with(Flavor::GcControl)
        .only(PUC52_PLUS),
        // Lua 5.4 only: `collectgarbage('incremental')` returns the previous mode there.
        row(
            "generational mode allowed",
            "collectgarbage('generational')",
            NoLeak("return collectgarbage('incremental') == 'incremental'"),
        )
        .with(Flavor::GcControl)
        .only(cfg!(feature = "lua54")),
        row(
            "hoarding 40 MiB in a global",
            "hoard = {} for i = 1, 40 do hoard[i] = ('x'):rep(2^20) .. i end
             pcall(collectgarbage)",
            NoLeak(ROOM),
        ),
        row(
            "hoarding 40 MiB in a suspended coroutine",
            "co = coroutine.create(function()
               local big = {} for i = 1, 40 do big[i] = ('x'):rep(2^20) .. i end
               coroutine.yield()
               return #big
             end)
             coroutine.resume(co)
             pcall(collectgarbage)",
            NoLeak(ROOM),
        ),
        row(
            "hoarding 40 MiB in an upvalue",
            "local big = {} for i = 1, 40 do big[i] = ('x'):rep(2^20) .. i end
             keep = function() return big end
             pcall(collectgarbage)",
            NoLeak(ROOM),
        ),
        row(
            "print output left behind",
            "print(('x'):rep(100)) print('left behind')",
            NoLeak("return output() == ''"),
        ),
        row(
            "print output past the limit",
            "for i = 1, 1000 do print(('y'):rep(100)) end",
            NoLeak("return output() == ''"),
        ),
        row(
            "a global left by a request that timed out",
            "leaked_before_timeout = 1 while true do end",
            NoLeak("return leaked_before_timeout == nil"),
        ),
        row(
            "a global left by a request that failed",
            "leaked_before_error = 1 error('x')",
            NoLeak("return leaked_before_error == nil"),
        ),
        row(
            "a global left by a request out of memory",
            // Grown a megabyte at a time: Lua 5.1's `rep` copies one byte per C iteration, so
            // 2^30 single bytes would spend the deadline in C on a loaded machine.
            "leaked_before_oom = 1 local s = ('x'):rep(2^20):rep(2^10)",
            NoLeak("return leaked_before_oom == nil"),
        ),
        row(
            "64 globals",
            "for i = 1, 64 do _G['g' .. i] = i end",
            NoLeak("return g1 == nil and g64 == nil"),
        ),
        row(
            "200 globals",
            "for i = 1, 200 do _G['g' .. i] = i end",
            NoLeak("return g1 == nil and g200 == nil"),
        ),
        row(
            "load into _G",
            "load('leaked_by_load = 1', 'x', 't', _G)()",
            NoLeak("return leaked_by_load == nil"),
        ),
        row(
            "a global set while the error is stringified",
            "error(setmetatable({}, {__tostring = function() leaked_in_tostring = true return 'x' end}))",
            NoLeak("return leaked_in_tostring == nil"),
        ),
        // `<close>` is Lua 5.4 syntax.
        row(
            "a suspended coroutine holding a to-be-closed variable",
            "co = coroutine.create(function()
               local x <close> = setmetatable({}, {__close = function() leaked_close = true end})
               coroutine.yield()
             end)
             coroutine.resume(co)",
            NoLeak("return leaked_close == nil"),
        )
        .only(LUA54_PLUS),
        // Lua 5.2+: a chunk's `_ENV` is an upvalue of the compiled chunk, which the isle caches
        // by source text; the probe is the same text, so it runs the same compiled chunk.
        row(
            "assigning _ENV in a cached chunk",
            ENV_TAMPER,
            NoLeak(ENV_TAMPER),
        )
        .only(PUC52_PLUS),
        // On 5.2+ `pairs` honours the read-only tables' `__pairs`, whose state is the hidden
        // table holding the contents.
        row(
            "writing a library through the state pairs returns",
            "local _, hidden = pairs(string)
             if type(hidden) == 'table' then hidden.rep = function() return 'pwned' end end",
            NoLeak("return ('a'):rep(2) == 'aa' and string.rep('a', 2) == 'aa'"),
        ),
        row(
            "writing the host table through the state pairs returns",
            "local _, hidden = pairs(secret)
             if type(hidden) == 'table' then hidden.value = 0 hidden.extra = 1 end",
            NoLeak("return secret.value == 42 and secret.extra == nil"),
        ),
    ]
}

/// See the row "assigning _ENV in a cached chunk".
const ENV_TAMPER: &str = "local clean = rawget(_ENV, 'tampered') == nil
_ENV = setmetatable({tampered = true}, {__index = _ENV})
return clean";

/// Code no interrupt reaches. The pattern scripts are sized to run for seconds, not forever
/// (`('a'):rep(1e5)` with five `.-` would never end): a hard-stopped VM keeps its thread until
/// the C call returns, and this suite should not leave threads spinning.
fn hard_stops() -> Vec<Row> {
    vec![
        row("a finalizer that never returns", STUCK_IN_GC, HardStop),
        row(
            "a host function ignoring its deadline",
            "spin_until_released()",
            HardStop,
        ),
        row(
            "lazy pattern backtracking in string.find",
            "return string.find(('a'):rep(1500), '.-.-b')",
            HardStop,
        ),
        row(
            "greedy pattern backtracking in string.match",
            "return string.match(('a'):rep(1500), '.*.*b')",
            HardStop,
        ),
        row(
            "pattern backtracking in string.gsub",
            "return string.gsub(('a'):rep(1500), '.-.-b', '')",
            HardStop,
        ),
        row(
            "pattern backtracking in string.gmatch",
            "for m in string.gmatch(('a'):rep(1500), '.-.-b') do end",
            HardStop,
        ),
        row(
            "naive plain find",
            "local s = ('a'):rep(2^23) return s:find(('a'):rep(2^12) .. 'b', 1, true)",
            HardStop,
        ),
        row(
            "a finalizer that re-arms itself",
            "local function arm() setmetatable({}, {__gc = function() arm() end}) end
             arm()
             while true do pcall(collectgarbage) end",
            HardStop,
        ),
    ]
}

/// An isle running the corpus, with its canary and the host's fingerprint of it.
struct Subject {
    isle: Isle,
    started: Receiver<()>,
    release: Arc<AtomicBool>,
    baseline: String,
}

/// Lua run by the host (in `exec`, given the real globals, which under a fresh environment
/// have no `_G`): the globals, the contents of every
/// table among them and the string metatable, as text. On Lua 5.1 and LuaJIT `pairs` sees
/// nothing in a read-only table, so well-known keys are also looked up by name.
const FINGERPRINT: &str = r#"
local string_meta, G = ...
local known = { 'rep', 'format', 'gsub', 'find', 'match', 'sub', 'byte', 'char', 'dump',
  'insert', 'remove', 'sort', 'concat', 'unpack', 'wrap', 'create', 'resume', 'yield',
  'floor', 'random', 'pi', 'huge', 'clock', 'time', 'date', 'execute', 'getenv', 'value',
  'hook', '__index', '__newindex', '__metatable' }
local function list(t)
  local keys, seen = {}, {}
  for k in pairs(t) do
    if not seen[k] then seen[k] = true keys[#keys + 1] = k end
  end
  for _, k in ipairs(known) do
    if not seen[k] and t[k] ~= nil then seen[k] = true keys[#keys + 1] = k end
  end
  for i = 1, #keys do
    local k = keys[i]
    keys[i] = tostring(k) .. '=' .. tostring(t[k])
  end
  table.sort(keys)
  return table.concat(keys, ' ')
end
local out = {}
local function globals(g)
  for k, v in pairs(g) do
    out[#out + 1] = tostring(k) .. '=' .. tostring(v)
    if type(v) == 'table' and v ~= g and v ~= G then
      out[#out + 1] = tostring(k) .. ': ' .. list(v)
    end
  end
end
globals(G)
-- Luau's sandbox puts the globals behind a table of the main thread's own.
local meta = getmetatable(G)
if type(meta) == 'table' and type(rawget(meta, '__index')) == 'table' then
  globals(rawget(meta, '__index'))
end
if string_meta then out[#out + 1] = 'string meta: ' .. list(string_meta) end
table.sort(out)
return table.concat(out, '\n')
"#;

fn fingerprint(isle: &Isle) -> Result<String, IsleError> {
    isle.exec(|lua| {
        let meta = lua.type_metatable::<mlua::LuaString>();
        lua.load(FINGERPRINT)
            .set_name("=fingerprint")
            .call::<mlua::LuaString>((meta, lua.globals()))
            .map(|text| text.to_string_lossy())
    })
}

/// The host's side of every isle: `started()`, `released()`, `spin_until_released()`,
/// `host_fn()` (42), `output()` (what the request printed) and the table `secret`.
fn init(lua: &Lua, release: Arc<AtomicBool>, started: mpsc::Sender<()>) -> mlua::Result<()> {
    define_released(lua, release)?;
    let globals: Table = lua.globals();
    globals.set(
        "started",
        lua.create_function(move |_, ()| Ok(started.send(()).is_ok()))?,
    )?;
    globals.set("host_fn", lua.create_function(|_, ()| Ok(42))?)?;
    globals.set(
        "output",
        lua.create_function(|lua, ()| Ok(mlua_isle::take_output(lua)))?,
    )?;
    lua.load("secret = { value = 42 }").exec()
}

fn spawn_subject(flavor: Flavor) -> Subject {
    let sandbox = match flavor {
        Flavor::Strict => Sandbox::new(),
        Flavor::Finalizers => Sandbox::new().finalizers(true),
        Flavor::GcControl => Sandbox::new().gc_control(true),
    }
    .print(PrintSink::collect(4096));
    let release = Arc::new(AtomicBool::new(false));
    let (tx, started) = mpsc::channel();
    let flag = release.clone();
    let isle = Isle::builder()
        .sandboxed()
        .sandbox(sandbox)
        .spawn(move |lua| init(lua, flag, tx))
        .expect("the sandboxed isle starts");
    let baseline = fingerprint(&isle).expect("the fingerprint of a fresh isle");
    Subject {
        isle,
        started,
        release,
        baseline,
    }
}

/// Waits for `task`, failing the row if it is still running after [`STUCK`].
fn finish<T>(task: mlua_isle::Task<T>, what: &str) -> Result<Result<T, IsleError>, String> {
    task.wait_timeout(STUCK)
        .map_err(|_| format!("HANG: {what} still running after {STUCK:?}"))
}

/// Runs `row` on `subject`; `Ok(true)` when the subject is spent (a hard stop) and must be
/// replaced.
fn run_row(subject: &Subject, row: &Row) -> Result<bool, String> {
    let isle = &subject.isle;
    let submit = |timeout: Option<Duration>, code: &'static str| {
        let request = isle.request();
        let request = match timeout {
            Some(timeout) => request.timeout(timeout),
            None => request,
        };
        request
            .spawn_eval::<()>(code)
            .map_err(|e| format!("could not submit: {e:?}"))
    };
    let is_lua = |r: &Result<(), IsleError>| matches!(r, Err(IsleError::Lua(_)));
    match row.expected {
        CleanError | Blocked => {
            let result = finish(submit(None, row.script)?, "the script")?;
            if !is_lua(&result) {
                return Err(format!("expected a Lua error, got {result:?}"));
            }
        }
        Memory => {
            let result = finish(submit(None, row.script)?, "the script")?;
            let ok = match &result {
                Err(IsleError::Lua(e)) => e.kind() == LuaErrorKind::Memory,
                Err(IsleError::Timeout) => true,
                _ => false,
            };
            if !ok {
                return Err(format!("expected a memory error, got {result:?}"));
            }
        }
        Timeout => {
            let result = finish(submit(Some(DEADLINE), row.script)?, "the script")?;
            if !matches!(result, Err(IsleError::Timeout)) {
                return Err(format!("expected Timeout, got {result:?}"));
            }
        }
        Cancelled => {
            while subject.started.try_recv().is_ok() {}
            let task = isle
                .request()
                .no_timeout()
                .spawn_eval::<()>(row.script)
                .map_err(|e| format!("could not submit: {e:?}"))?;
            if subject.started.recv_timeout(STUCK).is_err() {
                return Err(format!(
                    "never called started(): {:?}",
                    task.try_wait().ok()
                ));
            }
            task.cancel();
            let result = finish(task, "the cancelled script")?;
            if !matches!(result, Err(IsleError::Cancelled)) {
                return Err(format!("expected Cancelled, got {result:?}"));
            }
        }
        NoLeak(probe) => {
            let tamper = finish(submit(Some(DEADLINE), row.script)?, "the tampering script")?;
            if matches!(tamper, Err(IsleError::Abandoned | IsleError::Shutdown)) {
                return Err(format!("the tampering script ended with {tamper:?}"));
            }
            let task = isle
                .request()
                .spawn_eval::<bool>(probe)
                .map_err(|e| format!("could not submit the probe: {e:?}"))?;
            let clean = finish(task, "the probe")?;
            if !matches!(clean, Ok(true)) {
                return Err(format!(
                    "LEAK: after the tampering script ({tamper:?}), the probe `{probe}` gave \
                     {clean:?}"
                ));
            }
        }
        HardStop => {
            let start = Instant::now();
            let result = finish(submit(Some(DEADLINE), row.script)?, "the script")?;
            let took = start.elapsed();
            let bound = DEADLINE + SANDBOX_GRACE_PERIOD + MARGIN;
            if !matches!(result, Err(IsleError::Timeout)) || took > bound {
                return Err(format!(
                    "expected Timeout within {bound:?}, got {result:?} after {took:?}"
                ));
            }
            let after = isle.eval::<i64>("1 + 1");
            subject.release.store(true, Ordering::SeqCst);
            return match after {
                Ok(2) => check_canary(subject).map(|()| true),
                Err(IsleError::Abandoned) => Ok(true),
                other => Err(format!("after the hard stop, `1 + 1` gave {other:?}")),
            };
        }
    }
    check_canary(subject).map(|()| false)
}

/// The isle answers, the host's table and function are intact, the next request's environment
/// is empty, and the host sees the same globals, libraries and string metatable as after
/// `init`.
fn check_canary(subject: &Subject) -> Result<(), String> {
    let isle = &subject.isle;
    let two = isle.eval::<i64>("1 + 1");
    if !matches!(two, Ok(2)) {
        return Err(format!("afterwards `1 + 1` gave {two:?}"));
    }
    let canary = isle.eval::<bool>("secret.value == 42 and host_fn() == 42");
    if !matches!(canary, Ok(true)) {
        return Err(format!("afterwards the canary check gave {canary:?}"));
    }
    let left = isle.eval::<i64>(
        "local n = 0 for k in next, _G do if k ~= '_G' then n = n + 1 end end return n",
    );
    if !matches!(left, Ok(0)) {
        return Err(format!("afterwards the environment holds {left:?} globals"));
    }
    let now = fingerprint(isle).map_err(|e| format!("afterwards no fingerprint: {e:?}"))?;
    if now != subject.baseline {
        return Err(format!(
            "afterwards the host's globals changed:\n{}",
            diff(&subject.baseline, &now)
        ));
    }
    Ok(())
}

fn diff(before: &str, after: &str) -> String {
    let old: Vec<&str> = before.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    let mut out = String::new();
    for line in &old {
        if !new.contains(line) {
            out += &format!("  - {line}\n");
        }
    }
    for line in &new {
        if !old.contains(line) {
            out += &format!("  + {line}\n");
        }
    }
    out
}

/// Runs `rows` on [`WORKERS`] threads, each with its own isles, and returns the failures.
fn run_all(rows: Vec<Row>) -> Vec<String> {
    let mut shares: Vec<Vec<Row>> = vec![Vec::new(); WORKERS];
    for (i, row) in rows.into_iter().enumerate() {
        shares[i % WORKERS].push(row);
    }
    let workers: Vec<_> = shares
        .into_iter()
        .map(|share| {
            thread::spawn(move || {
                let mut subjects: HashMap<Flavor, Subject> = HashMap::new();
                let mut failures = Vec::new();
                for row in share {
                    let subject = subjects
                        .remove(&row.flavor)
                        .unwrap_or_else(|| spawn_subject(row.flavor));
                    let start = Instant::now();
                    // Each row runs under the hang guard; the isle travels with it.
                    let (subject, outcome) = within_hang_guard(move || {
                        let outcome = run_row(&subject, &row);
                        (subject, outcome)
                    });
                    if std::env::var_os("CORPUS_TIMES").is_some() {
                        eprintln!("{:>6} ms  {}", start.elapsed().as_millis(), row.name);
                    }
                    match outcome {
                        Ok(false) => {
                            subjects.insert(row.flavor, subject);
                        }
                        Ok(true) => subject.release.store(true, Ordering::SeqCst),
                        Err(why) => {
                            subject.release.store(true, Ordering::SeqCst);
                            failures.push(format!(
                                "[{}] {:?}: {why}\n  script: {}",
                                row.name, row.expected, row.script
                            ));
                        }
                    }
                }
                for subject in subjects.values() {
                    subject.release.store(true, Ordering::SeqCst);
                }
                failures
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|worker| worker.join().expect("a corpus worker panicked"))
        .collect()
}

fn report(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} hostile scripts misbehaved:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_corpus_has_at_least_seventy_scripts_on_every_version() {
    let rows = corpus();
    let applicable = rows.iter().filter(|r| r.applies).count();
    assert!(applicable >= 70, "only {applicable} rows apply");
    println!("{applicable} rows apply to this Lua version");
    let mut names: Vec<_> = rows.iter().map(|r| r.name).collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "row names must be unique");
}

#[test]
fn hostile_scripts_are_contained() {
    quiet_lua_thread_panics();
    let rows = corpus();
    let (stops, others): (Vec<Row>, Vec<Row>) = rows
        .into_iter()
        .filter(|r| r.applies)
        .partition(|r| matches!(r.expected, HardStop));
    let mut failures = run_all(others);
    // Last: a hard-stopped thread keeps spinning until its C call returns.
    failures.extend(run_all(stops));
    report(&failures);
}
