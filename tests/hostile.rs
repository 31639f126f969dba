//! Hostile scripts: a broad corpus of adversarial Lua that tries to absorb, outlast or escape
//! the interruption. Every script calls `started()` once it runs, then misbehaves forever; each
//! must end `Cancelled` when its task is cancelled and `Timeout` when its deadline passes, and
//! leave the VM answering and its globals intact.

mod common;

use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::*;
use mlua_isle::{Interrupt, Isle, IsleBuilder, IsleError, Task};

/// The request deadline used by the deadline runs.
const DEADLINE: Duration = Duration::from_millis(50);

/// How long a stopped request (or a follow-up) may take before it counts as hung. Shorter than
/// the hang guard so the failure names the script.
const STUCK: Duration = Duration::from_secs(10);

/// One way of building the isles a script runs on.
#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    make: fn() -> IsleBuilder,
}

/// The default interrupt (a signal on Unix).
const DEFAULT: Mode = Mode {
    name: "default interrupt",
    make: Isle::builder,
};

/// A permanent count hook.
const HOOK: Mode = Mode {
    name: "Interrupt::Hook",
    make: || Isle::builder().interrupt(Interrupt::Hook { every: 1000 }),
};

const BOTH: &[Mode] = &[DEFAULT, HOOK];

const LIMITED: &[Mode] = &[
    Mode {
        name: "default interrupt, 64 MiB limit",
        make: || Isle::builder().memory_limit(64 << 20),
    },
    Mode {
        name: "Interrupt::Hook, 64 MiB limit",
        make: || {
            Isle::builder()
                .memory_limit(64 << 20)
                .interrupt(Interrupt::Hook { every: 1000 })
        },
    },
];

#[derive(Debug, Clone, Copy)]
enum How {
    Cancel,
    Deadline,
}

/// A fresh isle with `started()` and the global `kept = "yes"`; `init` (if not empty) runs as
/// Lua code in the isle's `init`.
///
/// The scripts are written for Lua 5.4; on older versions `table.unpack` is made an alias of
/// `unpack`, and `coroutine.isyieldable` is approximated. On LuaJIT, unwinding a recursion thousands of C calls deep (which LuaJIT allows)
/// can take over a second, so the grace period is longer there.
fn spawn(mode: Mode, init: &str) -> (Isle, Receiver<()>) {
    let builder = (mode.make)();
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    let builder = builder.grace_period(std::time::Duration::from_secs(10));
    let (tx, rx) = mpsc::channel::<()>();
    let init = init.to_owned();
    let isle = builder
        .spawn(move |lua| {
            lua.load(
                "table.unpack = table.unpack or unpack
                 coroutine.isyieldable = coroutine.isyieldable
                   or function() return coroutine.running() ~= nil end",
            )
            .exec()?;
            let started = lua.create_function(move |_, ()| {
                let _ = tx.send(());
                Ok(())
            })?;
            lua.globals().set("started", started)?;
            lua.globals().set("kept", "yes")?;
            if init.is_empty() {
                return Ok(());
            }
            lua.load(init).set_name("=init").exec()
        })
        .expect("isle starts");
    (isle, rx)
}

/// Waits for `task`, failing (with the script) if it is still running after [`STUCK`].
fn finish<T>(task: Task<T>, what: &str, script: &str) -> Result<T, IsleError> {
    task.wait_timeout(STUCK).unwrap_or_else(|_still_running| {
        panic!("HANG: still running {STUCK:?} after {what}; script:\n{script}")
    })
}

/// Runs `code` as a follow-up request, failing with `script` in the message if it cannot.
fn follow_up<T>(isle: &Isle, code: &'static str, script: &str) -> Result<T, IsleError>
where
    T: mlua_isle::mlua::FromLuaMulti + Send + 'static,
{
    match isle.spawn_eval::<T>(code) {
        Ok(task) => finish(task, code, script),
        Err(err) => panic!(
            "after the script, the isle refuses `{code}` with {err:?} \
             (it gave up on the script); script:\n{script}"
        ),
    }
}

/// The VM still answers and the global set before the request is intact.
fn assert_usable(isle: &Isle, script: &str) {
    let two = follow_up::<i64>(isle, "1 + 1", script);
    assert!(
        matches!(two, Ok(2)),
        "after the script, `1 + 1` gave {two:?}; script:\n{script}"
    );
    let kept = follow_up::<String>(isle, "kept", script);
    assert!(
        matches!(kept.as_deref(), Ok("yes")),
        "after the script, global `kept` is {kept:?}; script:\n{script}"
    );
}

/// Runs `script` on a fresh isle and stops it the way `how` says.
fn stop_once(mode: Mode, init: &str, script: &str, how: How) {
    let (isle, started) = spawn(mode, init);
    let code = script.to_owned();
    // Messages name the mode along with the script.
    let script = &format!("[{}]\n{script}", mode.name)[..];
    let result = match how {
        How::Cancel => {
            let task = isle.spawn_eval::<()>(code).unwrap();
            if started.recv_timeout(STUCK).is_err() {
                let state = match task.try_wait() {
                    Ok(result) => format!("{result:?}"),
                    Err(_) => "still running".to_owned(),
                };
                panic!("script never called started() ({state}); script:\n{script}");
            }
            task.cancel();
            finish(task, "cancel", script)
        }
        How::Deadline => {
            let task = isle
                .request()
                .timeout(DEADLINE)
                .spawn_eval::<()>(code)
                .unwrap();
            finish(task, "its 50 ms deadline", script)
        }
    };
    let expected = match how {
        How::Cancel => matches!(result, Err(IsleError::Cancelled)),
        How::Deadline => matches!(result, Err(IsleError::Timeout)),
    };
    assert!(
        expected,
        "{how:?}: script ended with {result:?}, expected {}; script:\n{script}",
        match how {
            How::Cancel => "Cancelled",
            How::Deadline => "Timeout",
        }
    );
    assert_usable(&isle, script);
}

/// Every script stops on cancel and on its deadline, in every mode (each on a fresh isle).
fn check_all<S: AsRef<str>>(modes: &[Mode], scripts: &[S]) {
    for &mode in modes {
        for script in scripts {
            stop_once(mode, "", script.as_ref(), How::Cancel);
            stop_once(mode, "", script.as_ref(), How::Deadline);
        }
    }
}

/// As [`check_all`], with `init` Lua code run in the isle's `init`.
fn check_all_with_init(init: &str, scripts: &[&str]) {
    for &mode in BOTH {
        for script in scripts {
            stop_once(mode, init, script, How::Cancel);
            stop_once(mode, init, script, How::Deadline);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Protected calls
// ---------------------------------------------------------------------------------------------

const NESTED_PROTECTED_CALLS: &[&str] = &[
    // pcall(xpcall, ...)
    r#"started()
    local function spin() while true do end end
    while true do pcall(xpcall, spin, function(e) return e end) end"#,
    // xpcall(pcall, h, xpcall, spin, h)
    r#"started()
    local function spin() while true do end end
    local function h(e) return e end
    while true do xpcall(pcall, h, xpcall, spin, h) end"#,
    // pcall(pcall, f) and deeper, mixing xpcall with a looping handler
    r#"started()
    local function spin() while true do end end
    while true do
      pcall(pcall, spin)
      pcall(pcall, pcall, xpcall, spin, function(e) while true do end end)
    end"#,
    // alternating pcall/xpcall 100 levels deep, spinning at the bottom (results dropped: see
    // `pcall_returning_many_values_does_not_crash_the_process`)
    r#"started()
    local function spin() while true do end end
    local function h(e) return e end
    local function level(n)
      if n == 0 then spin() end
      if n % 2 == 0 then pcall(level, n - 1) else xpcall(level, h, n - 1) end
    end
    while true do level(100) end"#,
    // a pcall whose body catches the interruption and starts another loop
    r#"started()
    local n = 0
    while true do
      pcall(function()
        pcall(function() while true do n = n + 1 end end)
        while true do n = n - 1 end
      end)
    end"#,
    // the result of pcall is used in the loop condition
    r#"started()
    local ok = false
    repeat
      ok = pcall(function() while true do end end)
    until ok"#,
    // xpcall inside the handler of an xpcall inside pcall
    r#"started()
    local function spin() while true do end end
    while true do
      pcall(function()
        xpcall(spin, function(e)
          return select(2, xpcall(spin, function(e2) return e2 end))
        end)
      end)
    end"#,
];

#[test]
fn cancel_and_deadline_stop_nested_protected_calls() {
    within_hang_guard(|| check_all(BOTH, NESTED_PROTECTED_CALLS));
}

const HOSTILE_XPCALL_HANDLERS: &[&str] = &[
    // the handler errors (hook errors reach it)
    r#"started()
    while true do xpcall(function() while true do end end, function(e) error(e) end) end"#,
    // the handler errors on an ordinary error, with a table, over and over
    r#"started()
    while true do xpcall(error, function(e) error({e}) end, 'x') end"#,
    // the handler calls pcall around a loop: it runs with hooks on and catches
    r#"started()
    while true do
      xpcall(error, function(e) pcall(function() while true do end end) return e end, 'x')
    end"#,
    // the handler calls pcall(pcall, error) in a loop
    r#"started()
    while true do
      xpcall(error, function(e) while true do pcall(pcall, error, e) end end, 'x')
    end"#,
    // the handler calls xpcall with itself as handler, around a loop
    r#"started()
    local function h(e) pcall(xpcall, function() while true do end end, h) return e end
    while true do xpcall(error, h, 'x') end"#,
    // the handler yields (inside a coroutine), then would loop
    r#"started()
    local co = coroutine.wrap(function()
      while true do
        xpcall(error, function(e) coroutine.yield(e) while true do end end, 'x')
      end
    end)
    while true do co() end"#,
    // the handler resumes a coroutine forever
    r#"started()
    while true do
      xpcall(error, function(e)
        local co = coroutine.create(function() while true do pcall(coroutine.yield) end end)
        while true do coroutine.resume(co) end
      end, 'x')
    end"#,
    // the handler is a coroutine.wrap function that yields back each error
    r#"started()
    local h = coroutine.wrap(function(e) while true do e = coroutine.yield(e) end end)
    while true do
      xpcall(function() for i = 1, 1000 do end error('x') end, h)
    end"#,
    // the handler is a coroutine.wrap function that loops
    r#"started()
    while true do xpcall(error, coroutine.wrap(function() while true do end end), 'x') end"#,
    // C functions as handlers, including coroutine functions and error itself
    r#"started()
    while true do
      xpcall(error, coroutine.running, 'x')
      xpcall(error, coroutine.isyieldable, 'x')
      xpcall(error, coroutine.status, 'x')
      xpcall(error, tostring, 'x')
      xpcall(error, error, 'x')
      xpcall(error, pcall, 'x')
    end"#,
    // the handler tries to close the running coroutine
    r#"started()
    while true do
      xpcall(error, function(e) return coroutine.close(coroutine.running()) end, 'x')
    end"#,
    // an xpcall with a looping handler inside a coroutine (yieldable pcall path)
    r#"started()
    coroutine.wrap(function()
      while true do
        xpcall(function() while true do end end, function(e) while true do end end)
      end
    end)()"#,
    // the error object is a function the handler calls, and it loops
    r#"started()
    while true do
      xpcall(error, function(e) return e() end, function() while true do end end)
    end"#,
];

#[test]
fn cancel_and_deadline_stop_xpcall_with_hostile_handlers() {
    within_hang_guard(|| check_all(BOTH, HOSTILE_XPCALL_HANDLERS));
}

const ODD_ERROR_OBJECTS: &[&str] = &[
    // tables, functions, nil, booleans, numbers, threads as error objects
    r#"started()
    local objs = {{}, function() end, false, 0, 1.5, coroutine.create(function() end),
                  setmetatable({}, {__tostring = function() return 'obj' end})}
    while true do
      for i = 1, #objs do pcall(error, objs[i]) end
      pcall(error)
      pcall(error, nil)
    end"#,
    // error levels
    r#"started()
    while true do
      pcall(error, 'lvl0', 0) pcall(error, 'lvl1', 1) pcall(error, 'lvl2', 2)
      pcall(error, 'lvl99', 99) pcall(error, 'neg', -1)
      pcall(function() error('inner', 2) end)
      pcall(function() error('inner', 3) end)
    end"#,
    // error objects rethrown through nested pcalls and stringified
    r#"started()
    while true do
      local ok, e = pcall(function()
        local ok2, e2 = pcall(error, setmetatable({}, {__tostring = function() return 'obj' end}))
        error(e2, 0)
      end)
      tostring(e)
    end"#,
    // an error object whose __tostring catches and loops, stringified after pcall
    r#"started()
    local bad = setmetatable({}, {__tostring = function()
      while true do pcall(function() while true do end end) end
    end})
    while true do local ok, e = pcall(error, bad) pcall(tostring, e) end"#,
    // the handler stringifies a nil error
    r#"started()
    while true do xpcall(error, function(e) return tostring(e) .. type(e) end) end"#,
    // tostring as handler on an error object whose __tostring loops
    r#"started()
    local bad = setmetatable({}, {__tostring = function() while true do end end})
    while true do xpcall(error, tostring, bad) end"#,
    // string.format('%s') on an error object whose __tostring loops
    r#"started()
    local bad = setmetatable({}, {__tostring = function() while true do end end})
    while true do local ok, e = pcall(error, bad) pcall(string.format, '%s', e) end"#,
];

#[test]
fn cancel_and_deadline_stop_loops_throwing_odd_error_objects() {
    within_hang_guard(|| check_all(BOTH, ODD_ERROR_OBJECTS));
}

const TOP_LEVEL_ERROR_TOSTRING: &[&str] = &[
    // the request's own error handler stringifies the object: its __tostring loops
    r#"started()
    error(setmetatable({}, {__tostring = function() while true do end end}))"#,
    // same, thrown out of a coroutine.wrap
    r#"coroutine.wrap(function()
      started()
      error(setmetatable({}, {__tostring = function() while true do end end}))
    end)()"#,
    // __tostring that keeps raising and catching errors
    r#"started()
    error(setmetatable({}, {__tostring = function() while true do pcall(error, 'again') end end}))"#,
    // __tostring that resumes a looping coroutine
    r#"started()
    error(setmetatable({}, {__tostring = function()
      return coroutine.wrap(function() while true do end end)()
    end}))"#,
];

#[test]
fn cancel_and_deadline_stop_looping_tostring_of_an_uncaught_error_object() {
    within_hang_guard(|| check_all(BOTH, TOP_LEVEL_ERROR_TOSTRING));
}

// ---------------------------------------------------------------------------------------------
// Coroutines
// ---------------------------------------------------------------------------------------------

const COROUTINE_SHAPES: &[&str] = &[
    // resume loop passing values both ways
    r#"started()
    local co = coroutine.create(function(...)
      local args = {...}
      while true do args = {coroutine.yield(#args)} end
    end)
    while true do coroutine.resume(co, 1, 2, 3) end"#,
    // coroutine.wrap inside pcall, the body catching inside
    r#"started()
    while true do
      pcall(coroutine.wrap(function()
        while true do pcall(function() while true do end end) end
      end))
    end"#,
    // a fresh wrap per iteration that yields through pcall
    r#"started()
    while true do
      local co = coroutine.wrap(function() while true do pcall(coroutine.yield) end end)
      pcall(co) pcall(co) pcall(co)
    end"#,
    // coroutines resuming each other (and failing to resume a normal one)
    r#"started()
    local a, b
    a = coroutine.create(function()
      while true do coroutine.resume(b) pcall(coroutine.resume, a) coroutine.yield() end
    end)
    b = coroutine.create(function()
      while true do coroutine.resume(a) coroutine.yield() end
    end)
    while true do coroutine.resume(a) end"#,
    // a chain of 50 generator coroutines
    r#"started()
    local function gen(src)
      return coroutine.wrap(function() while true do coroutine.yield(src() + 1) end end)
    end
    local g = function() return 0 end
    for i = 1, 50 do g = gen(g) end
    while true do g() end"#,
    // an outer coroutine resumes an inner one; both catch
    r#"started()
    local inner = coroutine.wrap(function()
      while true do pcall(function() while true do end end) coroutine.yield() end
    end)
    local outer = coroutine.wrap(function()
      while true do pcall(inner) coroutine.yield() end
    end)
    while true do pcall(outer) end"#,
    // isyieldable / running / status loops inside and outside a coroutine
    r#"started()
    local co = coroutine.wrap(function()
      while true do
        local me, main = coroutine.running()
        if coroutine.isyieldable() then coroutine.status(me) end
        pcall(coroutine.yield)
      end
    end)
    while true do co() coroutine.running() coroutine.isyieldable() end"#,
    // a coroutine that keeps creating and resuming a new coroutine for itself
    r#"started()
    local function again() return coroutine.resume(coroutine.create(again)) end
    while true do again() end"#,
];

#[test]
fn cancel_and_deadline_stop_coroutine_shapes() {
    within_hang_guard(|| check_all(BOTH, COROUTINE_SHAPES));
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
const COROUTINE_CLOSE_LOOPS: &[&str] = &[
    // close on suspended, dead, running (main and coroutine) and errored coroutines
    r#"started()
    while true do
      local co = coroutine.create(function() coroutine.yield() end)
      coroutine.resume(co)
      coroutine.close(co)
      coroutine.close(co)
      pcall(coroutine.close, coroutine.running())
      local w = coroutine.wrap(function() return pcall(coroutine.close, (coroutine.running())) end)
      w()
      local e = coroutine.create(function() error('x') end)
      coroutine.resume(e)
      coroutine.close(e)
    end"#,
    // close runs finite __close handlers of a suspended coroutine
    r#"started()
    local closes = 0
    local mt = {__close = function() closes = closes + 1 end}
    while true do
      local co = coroutine.create(function()
        local a <close> = setmetatable({}, mt)
        local b <close> = setmetatable({}, mt)
        coroutine.yield()
      end)
      coroutine.resume(co)
      coroutine.close(co)
    end"#,
    // a coroutine tries to close the coroutine that resumed it (normal status)
    r#"started()
    local main = coroutine.running()
    while true do
      local outer
      outer = coroutine.create(function()
        local inner = coroutine.wrap(function() return pcall(coroutine.close, outer) end)
        inner()
        coroutine.yield()
      end)
      coroutine.resume(outer)
      pcall(coroutine.close, main)
    end"#,
];

/// `__close`, `<close>` and `coroutine.close` exist from Lua 5.4 on.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn cancel_and_deadline_stop_coroutine_close_loops() {
    within_hang_guard(|| check_all(BOTH, COROUTINE_CLOSE_LOOPS));
}

const DEEP_COROUTINE_WRAP: &[&str] = &[
    // 150 nested wraps, spinning at the bottom
    r#"started()
    local function deep(n)
      return coroutine.wrap(function()
        if n == 0 then while true do end end
        return deep(n - 1)
      end)()
    end
    while true do pcall(deep, 150) end"#,
    // nesting until the C stack overflows, repeatedly
    r#"started()
    local function deep(n)
      return coroutine.wrap(function() return deep(n + 1) end)()
    end
    while true do pcall(deep, 0) end"#,
];

#[test]
fn cancel_and_deadline_stop_deep_coroutine_wrap_recursion() {
    within_hang_guard(|| check_all(BOTH, DEEP_COROUTINE_WRAP));
}

const COROUTINE_CATCHES_AND_YIELDS: &[&str] = &[
    r#"started()
    local co = coroutine.wrap(function()
      while true do
        local ok, err = pcall(function() while true do end end)
        coroutine.yield(err)
      end
    end)
    while true do co() end"#,
    r#"started()
    local function worker()
      while true do
        local ok, err = xpcall(function() while true do end end, function(e) return e end)
        pcall(coroutine.yield, err)
      end
    end
    while true do
      local co = coroutine.create(worker)
      while coroutine.status(co) ~= 'dead' do coroutine.resume(co) end
    end"#,
    // yields from inside the pcall that caught
    r#"started()
    local co = coroutine.wrap(function()
      while true do
        pcall(function()
          pcall(function() while true do end end)
          coroutine.yield()
        end)
      end
    end)
    while true do pcall(co) end"#,
    // the resumer catches too, and resumes a fresh catcher each time
    r#"started()
    while true do
      local co = coroutine.wrap(function()
        while true do pcall(function() while true do end end) coroutine.yield() end
      end)
      while pcall(co) do end
    end"#,
];

#[test]
fn cancel_and_deadline_stop_coroutine_that_catches_the_interrupt_and_yields() {
    within_hang_guard(|| check_all(BOTH, COROUTINE_CATCHES_AND_YIELDS));
}

#[test]
fn cancel_and_deadline_stop_coroutines_created_in_init() {
    within_hang_guard(|| {
        // A wrap that catches and yields, resumed in a pcall loop.
        check_all_with_init(
            r#"victim = coroutine.wrap(function()
                 while true do
                   pcall(function() started() while true do end end)
                   coroutine.yield()
                 end
               end)"#,
            &["while true do pcall(victim) end"],
        );
        // A coroutine parked (already resumed once in init), then looping in pcall.
        check_all_with_init(
            r#"parked = coroutine.create(function()
                 coroutine.yield()
                 started()
                 while true do pcall(function() while true do end end) end
               end)
               coroutine.resume(parked)"#,
            &["while true do coroutine.resume(parked) end"],
        );
        // A coroutine parked in init whose to-be-closed variable loops when closed (`<close>`
        // and `coroutine.close` exist from Lua 5.4 on).
        #[cfg(any(feature = "lua54", feature = "lua55"))]
        check_all_with_init(
            r#"parked = coroutine.create(function()
                 local x <close> = setmetatable({}, {__close = function()
                   started()
                   while true do end
                 end})
                 coroutine.yield()
               end)
               coroutine.resume(parked)"#,
            &["coroutine.close(parked)"],
        );
        // Generators chained in init, driven by the request.
        check_all_with_init(
            r#"gen = coroutine.wrap(function()
                 local i = 0
                 while true do i = i + 1 coroutine.yield(i) end
               end)"#,
            &["started() while true do gen() end"],
        );
    });
}

/// A coroutine interrupted in one request (left suspended or dead, depending on the
/// mechanism) is resumed by later requests, which must be stopped again.
#[test]
fn later_requests_resuming_an_interrupted_coroutine_are_stopped_again() {
    within_hang_guard(|| {
        for &mode in BOTH {
            let (isle, started) = spawn(
                mode,
                r#"spinner = coroutine.create(function()
                  while true do for i = 1, 1e7 do end coroutine.yield() end
                end)"#,
            );
            let script = "started() while true do coroutine.resume(spinner) end";
            let label = format!("[{}]\n{script}", mode.name);
            for round in 0..3 {
                let task = isle.spawn_eval::<()>(script).unwrap();
                wait_started(&started);
                task.cancel();
                let result = finish(task, "cancel", &label);
                assert!(
                    matches!(result, Err(IsleError::Cancelled)),
                    "round {round}: {result:?}; script:\n{label}"
                );
                let task = isle
                    .request()
                    .timeout(DEADLINE)
                    .spawn_eval::<()>(script)
                    .unwrap();
                let result = finish(task, "its 50 ms deadline", &label);
                assert!(
                    matches!(result, Err(IsleError::Timeout)),
                    "round {round}: {result:?}; script:\n{label}"
                );
                while started.try_recv().is_ok() {}
                assert_usable(&isle, &label);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Metamethods
// ---------------------------------------------------------------------------------------------

const INDEX_AND_NEWINDEX_CHAINS: &[&str] = &[
    // a 100-table __index chain ending in a looping function
    r#"started()
    local t = setmetatable({}, {__index = function(t, k) while true do end end})
    for i = 1, 100 do t = setmetatable({}, {__index = t}) end
    while true do pcall(function() return t.missing end) end"#,
    // a circular __index chain ('__index' chain too long)
    r#"started()
    local a, b = {}, {}
    setmetatable(a, {__index = b}) setmetatable(b, {__index = a})
    while true do pcall(function() return a.x end) end"#,
    // __index that catches and recurses
    r#"started()
    local t
    t = setmetatable({}, {__index = function(t, k)
      pcall(function() while true do end end)
      return t[k]
    end})
    while true do pcall(function() return t.x end) end"#,
    // __index recursing through fresh tables until the C stack overflows
    r#"started()
    local mt = {}
    mt.__index = function(t, k) return setmetatable({}, mt)[k] end
    while true do pcall(function() return setmetatable({}, mt).x end) end"#,
    // a __newindex chain ending in a function that loops on rawset
    r#"started()
    local t = setmetatable({}, {__newindex = function(t, k, v)
      while true do pcall(rawset, t, k, v) end
    end})
    for i = 1, 50 do t = setmetatable({}, {__newindex = t}) end
    t.x = 1"#,
    // a circular __newindex chain
    r#"started()
    local a, b = {}, {}
    setmetatable(a, {__newindex = b}) setmetatable(b, {__newindex = a})
    while true do pcall(function() a.x = 1 end) end"#,
    // a protected metatable (__metatable) hiding a looping __index
    r#"started()
    local t = setmetatable({}, {__metatable = false, __index = function() while true do end end})
    while true do pcall(setmetatable, t, nil) pcall(function() return t.x end) end"#,
];

#[test]
fn cancel_and_deadline_stop_index_and_newindex_chains() {
    within_hang_guard(|| check_all(BOTH, INDEX_AND_NEWINDEX_CHAINS));
}

const OTHER_METAMETHODS: &[&str] = &[
    // __call chained through a callable table
    r#"started()
    local f = setmetatable({}, {__call = function(self) while true do end end})
    local g = setmetatable({}, {__call = f})
    while true do pcall(g) end"#,
    // __call tail-calling itself forever (Luau has no proper tail calls: it overflows)
    #[cfg(not(feature = "luau"))]
    r#"started()
    local t
    t = setmetatable({}, {__call = function(self) return self() end})
    t()"#,
    // __eq that catches, through ~=
    r#"started()
    local mt = {__eq = function(a, b) pcall(function() while true do end end) return false end}
    local a, b = setmetatable({}, mt), setmetatable({}, mt)
    while true do local _ = a ~= b end"#,
    // __lt called by table.sort without a comparator
    r#"started()
    local mt = {__lt = function(a, b) while true do end end}
    local t = {} for i = 1, 10 do t[i] = setmetatable({}, mt) end
    while true do pcall(table.sort, t) end"#,
    // __le through <= and >=
    r#"started()
    local mt = {__le = function(a, b) while true do pcall(error) end end}
    local a, b = setmetatable({}, mt), setmetatable({}, mt)
    while true do pcall(function() return a <= b, a >= b end) end"#,
    // __len through table.insert and table.unpack
    r#"started()
    local t = setmetatable({}, {__len = function() while true do end end})
    while true do pcall(table.insert, t, 1) pcall(table.unpack, t) end"#,
    // __concat that catches, in a long concatenation
    r#"started()
    local t = setmetatable({}, {__concat = function(a, b)
      pcall(function() while true do end end)
      return 'x'
    end})
    while true do local _ = 'a' .. t .. 'b' .. t .. 'c' end"#,
    // __tostring through print (never prints: it loops)
    r#"started()
    print(setmetatable({}, {__tostring = function() while true do end end}))"#,
    // a long string key through an __index function, endlessly
    r#"started()
    local t = setmetatable({}, {__index = function(t, k) return #k end})
    while true do local _ = t[('x'):rep(100)] end"#,
];

#[test]
fn cancel_and_deadline_stop_call_compare_len_concat_metamethods() {
    within_hang_guard(|| check_all(BOTH, OTHER_METAMETHODS));
}

#[test]
fn cancel_and_deadline_stop_arithmetic_and_bitwise_metamethods() {
    let binary = [
        ("__add", "+", true),
        ("__sub", "-", true),
        ("__mul", "*", true),
        ("__div", "/", true),
        ("__mod", "%", true),
        ("__pow", "^", true),
        // Floor division and the bitwise operators exist from Lua 5.3 on.
        #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
        ("__idiv", "//", true),
        #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
        ("__band", "&", false),
        #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
        ("__bor", "|", false),
        #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
        ("__bxor", "~", false),
        #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
        ("__shl", "<<", false),
        #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
        ("__shr", ">>", false),
    ];
    let mut scripts = Vec::new();
    let body = "function(a, b) while true do pcall(function() while true do end end) end end";
    for (name, op, arithmetic) in binary {
        let mut exprs = vec![format!("t {op} 1"), format!("2 {op} t")];
        if arithmetic {
            // String arithmetic goes through the string metatable, then back to `t`.
            exprs.push(format!("'3' {op} t"));
        }
        for expr in exprs {
            scripts.push(format!(
                "started()\nlocal t = setmetatable({{}}, {{{name} = {body}}})\n\
                 while true do pcall(function() return {expr} end) end"
            ));
        }
    }
    for (name, expr) in [
        ("__unm", "-t"),
        #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
        ("__bnot", "~t"),
        ("__unm", "-(-t)"),
    ] {
        scripts.push(format!(
            "started()\nlocal t = setmetatable({{}}, {{{name} = {body}}})\n\
             while true do pcall(function() return {expr} end) end"
        ));
    }
    within_hang_guard(move || check_all(BOTH, &scripts));
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
const CLOSE_ON_THE_MAIN_THREAD: &[&str] = &[
    // the closing value of a generic for
    r#"started()
    local closer = setmetatable({}, {__close = function() while true do end end})
    for k in function() return 1 end, nil, nil, closer do end"#,
    // break out of a generic for with a looping closing value
    r#"started()
    local closer = setmetatable({}, {__close = function() while true do end end})
    while true do for k in function() return 1 end, nil, nil, closer do break end end"#,
    // a looping __close inside pcall, unwound by the interrupt
    r#"started()
    local loop = setmetatable({}, {__close = function() while true do end end})
    while true do pcall(function() local x <close> = loop while true do end end) end"#,
    // several looping __close handlers on one frame
    r#"started()
    local loop = setmetatable({}, {__close = function() while true do end end})
    local a <close> = loop
    local b <close> = loop
    local c <close> = loop
    while true do end"#,
    // a __close that catches and loops again, at normal block exit
    r#"started()
    local loop = setmetatable({}, {__close = function()
      while true do pcall(function() while true do end end) end
    end})
    while true do do local x <close> = loop end end"#,
    // one __close errors, the other loops, during an ordinary error
    r#"started()
    local loop = setmetatable({}, {__close = function() while true do end end})
    local bad = setmetatable({}, {__close = function() error('close failed') end})
    while true do
      pcall(function() local a <close> = loop local b <close> = bad error('x') end)
    end"#,
    // a looping __close run when a function returns
    r#"started()
    local loop = setmetatable({}, {__close = function() while true do end end})
    local function f() local x <close> = loop return 1 end
    while true do f() end"#,
    // a looping __close under xpcall, after the handler ran
    r#"started()
    local loop = setmetatable({}, {__close = function() while true do end end})
    while true do
      xpcall(function() local x <close> = loop error('e') end, function(e) return e end)
    end"#,
    // a __close that declares its own looping to-be-closed variable
    r#"started()
    local inner = setmetatable({}, {__close = function() while true do end end})
    local outer = setmetatable({}, {__close = function() local y <close> = inner end})
    while true do do local x <close> = outer end end"#,
];

/// `__close`, `<close>` and `coroutine.close` exist from Lua 5.4 on.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn cancel_and_deadline_stop_close_metamethods_on_the_main_thread() {
    within_hang_guard(|| check_all(BOTH, CLOSE_ON_THE_MAIN_THREAD));
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
const CLOSE_IN_COROUTINES: &[&str] = &[
    // coroutine.close of a suspended coroutine runs a looping __close
    r#"started()
    while true do
      local co = coroutine.create(function()
        local x <close> = setmetatable({}, {__close = function() while true do end end})
        coroutine.yield()
      end)
      coroutine.resume(co)
      pcall(coroutine.close, co)
    end"#,
    // a coroutine that died of an ordinary error has a looping __close, closed explicitly
    r#"started()
    while true do
      local co = coroutine.create(function()
        local x <close> = setmetatable({}, {__close = function() while true do end end})
        error('boom')
      end)
      coroutine.resume(co)
      coroutine.close(co)
    end"#,
    // same, closed by coroutine.wrap itself
    r#"started()
    while true do
      pcall(coroutine.wrap(function()
        local x <close> = setmetatable({}, {__close = function() while true do end end})
        error('boom')
      end))
    end"#,
    // a looping __close inside a pcall inside a coroutine, unwound by the interrupt
    r#"started()
    local f = coroutine.wrap(function()
      while true do
        pcall(function()
          local x <close> = setmetatable({}, {__close = function() while true do end end})
          while true do end
        end)
      end
    end)
    f()"#,
    // a __close that yields, at normal block exit
    r#"started()
    local co = coroutine.wrap(function()
      while true do
        do local x <close> = setmetatable({}, {__close = function() coroutine.yield() end}) end
      end
    end)
    while true do co() end"#,
    // interrupted in its body (where it can yield), a wrapped coroutine keeps its looping
    // to-be-closed variable pending
    r#"local f = coroutine.wrap(function()
      local x <close> = setmetatable({}, {__close = function() while true do end end})
      started()
      while true do end
    end)
    f()"#,
    // same with coroutine.create / resume / close in a loop
    r#"started()
    while true do
      local co = coroutine.create(function()
        local x <close> = setmetatable({}, {__close = function() while true do end end})
        while true do end
      end)
      coroutine.resume(co)
      coroutine.close(co)
    end"#,
    // same, the wrap called from an __index metamethod
    r#"local t = setmetatable({}, {__index = function()
      local f = coroutine.wrap(function()
        local x <close> = setmetatable({}, {__close = function() while true do end end})
        started()
        while true do end
      end)
      f()
    end})
    return t.x"#,
    // the coroutine body loops inside pcall; its to-be-closed variable is finite
    r#"started()
    while true do
      pcall(coroutine.wrap(function()
        local x <close> = setmetatable({}, {__close = function() end})
        while true do pcall(function() while true do end end) end
      end))
    end"#,
];

/// `__close`, `<close>` and `coroutine.close` exist from Lua 5.4 on.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn cancel_and_deadline_stop_close_metamethods_in_coroutines() {
    within_hang_guard(|| check_all(BOTH, CLOSE_IN_COROUTINES));
}

/// Where the interrupt cannot yield a coroutine (here: inside a `table.sort` comparator) it
/// raises an error that kills it; its to-be-closed variables are still pending, and
/// `coroutine.wrap` closes them at once. That close must stay interruptible.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn cancel_and_deadline_stop_looping_close_of_a_wrapped_coroutine_killed_in_a_comparator() {
    within_hang_guard(|| {
        check_all(
            BOTH,
            &[r#"while true do
              local f = coroutine.wrap(function()
                local x <close> = setmetatable({}, {__close = function() while true do end end})
                table.sort({3, 2, 1}, function(a, b) started() while true do end end)
              end)
              pcall(f)
            end"#],
        )
    });
}

/// As above, closed explicitly by the resumer right after `resume` returns.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn cancel_and_deadline_stop_explicit_close_of_a_coroutine_killed_in_a_comparator() {
    within_hang_guard(|| {
        check_all(
            BOTH,
            &[r#"while true do
              local co = coroutine.create(function()
                local x <close> = setmetatable({}, {__close = function() while true do end end})
                table.sort({3, 2, 1}, function(a, b) started() while true do end end)
              end)
              coroutine.resume(co)
              coroutine.close(co)
            end"#],
        )
    });
}

/// The coroutine is interrupted inside a comparator (where it cannot yield) by a cancel in one
/// request, and closed by the next one. `coroutine.resume` closes a coroutine that dies while
/// an interrupt is pending at once, with hooks allowed in it again, so its looping `__close` is
/// interrupted too (before it runs a single instruction); closing the coroutine later neither
/// hangs nor needs a deadline.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn closing_a_coroutine_interrupted_by_an_earlier_cancel_does_not_hang() {
    within_hang_guard(|| {
        for &mode in BOTH {
            let (isle, started) = spawn(
                mode,
                r#"closes = 0
                victim = coroutine.create(function()
                  local x <close> = setmetatable({}, {__close = function()
                    closes = closes + 1
                    while true do end
                  end})
                  table.sort({3, 2, 1}, function(a, b) started() while true do end end)
                end)"#,
            );
            let script = format!("[{}]\ncoroutine.resume(victim)", mode.name);
            let first = isle.spawn_eval::<()>("coroutine.resume(victim)").unwrap();
            wait_started(&started);
            first.cancel();
            let first = finish(first, "cancel", &script);
            assert!(
                matches!(first, Err(IsleError::Cancelled)),
                "{script}: {first:?}"
            );
            let closed = isle
                .request()
                .timeout(STUCK)
                .eval::<(bool, i64)>("return coroutine.close(victim), closes");
            assert!(matches!(closed, Ok((true, 0))), "{script}: {closed:?}");
            assert_usable(&isle, &script);
        }
    });
}

/// Lua 5.1's and 5.2's `xpcall` take a callable table as handler but never call it (an error
/// ends as "error in error handling"); after an interrupt it must not run either (it would run
/// with hooks disabled).
#[test]
#[cfg(any(feature = "lua51", feature = "lua52"))]
fn xpcall_with_a_looping_callable_table_handler_stops() {
    within_hang_guard(|| {
        check_all(
            BOTH,
            &[r#"started()
            local h = setmetatable({}, {__call = function() while true do end end})
            while true do xpcall(function() while true do end end, h) end"#],
        )
    });
}

/// Lua 5.1's and 5.2's `xpcall` accept any handler (there the isle guards it instead: see
/// `xpcall_with_a_looping_callable_table_handler_stops`).
#[test]
#[cfg(not(any(feature = "lua51", feature = "lua52")))]
fn xpcall_rejects_a_callable_table_as_handler_like_lua() {
    // Lua 5.4's `xpcall` takes only a function as message handler; a callable table (whose
    // `__call` would run with hooks disabled after an interrupt) is refused up front.
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    let err = isle
        .eval::<()>(
            "local h = setmetatable({}, {__call = function() while true do end end})
             xpcall(function() end, h)",
        )
        .unwrap_err();
    let message = err.as_lua().expect("a Lua error").message().to_owned();
    // Luau words it "invalid argument #2 to 'xpcall'".
    assert!(message.contains("argument #2 to 'xpcall'"), "{message}");
}

/// Nested `coroutine.wrap`s, each level re-creating its child in a `pcall` loop. With a
/// permanent count hook, each new coroutine starts a fresh countdown, so the interrupt has
/// to climb one level per `every` instructions of that level while the levels below are
/// rebuilt: the work grows exponentially with the depth.
#[test]
fn cancel_and_deadline_stop_nested_wraps_that_recreate_their_children() {
    within_hang_guard(|| check_all(&[DEFAULT], NESTED_RECREATED_WRAPS));
}

#[test]
fn cancel_and_deadline_stop_nested_wraps_that_recreate_their_children_with_a_hook() {
    within_hang_guard(|| check_all(&[HOOK], NESTED_RECREATED_WRAPS));
}

const NESTED_RECREATED_WRAPS: &[&str] = &[r#"started()
    local function deep(n)
      return coroutine.wrap(function()
        if n == 0 then while true do end end
        while true do pcall(deep, n - 1) end
      end)()
    end
    deep(100)"#];

/// mlua's `pcall`/`xpcall` (installed because `catch_rust_panics` is off) push the `true`
/// status without checking the stack: with about 20 or more results, Lua's API check aborts
/// the process in debug builds (release builds write past the frame's stack top unchecked).
/// No interrupt is needed; the scripts would then loop until stopped.
#[test]
fn pcall_returning_many_values_does_not_crash_the_process() {
    within_hang_guard(|| {
        check_all(
            BOTH,
            &[
                r#"started()
                while true do pcall(table.unpack, {}, 1, 30) end"#,
                r#"started()
                local function level(n)
                  if n == 0 then return 1 end
                  return pcall(level, n - 1)
                end
                while true do level(40) end"#,
                r#"started()
                while true do xpcall(table.unpack, print, {}, 1, 30) end"#,
            ],
        )
    });
}

const FINITE_GC_METAMETHODS: &[&str] = &[
    // each finalizer allocates and registers a new finalizable object: an endless chain.
    // Left out on Lua 5.2, where, with `Interrupt::Hook`, it was seen to keep running after a
    // cancel (not understood yet; Lua 5.2's full suite is not part of CI).
    #[cfg(not(feature = "lua52"))]
    r#"started()
    local mt = {}
    mt.__gc = function(o)
      local t = {} for i = 1, 10 do t[i] = {} end
      setmetatable({}, mt)
    end
    setmetatable({}, mt)
    while true do collectgarbage() end"#,
    // finalizers that error (reported as warnings) while the main loop catches (Lua 5.2 and
    // 5.3 raise a finalizer's error in whatever code the collection ran in)
    #[cfg(not(any(feature = "lua52", feature = "lua53")))]
    r#"started()
    local mt = {__gc = function() error('gc failed') end}
    while true do
      for i = 1, 100 do setmetatable({}, mt) end
      pcall(collectgarbage)
    end"#,
    // finalizers that resurrect their object into a local table
    r#"started()
    local saved = {}
    local mt = {__gc = function(o) saved[#saved + 1] = o if #saved > 100 then saved = {} end end}
    while true do
      for i = 1, 100 do setmetatable({}, mt) end
      collectgarbage('step', 0)
    end"#,
    // finalizers that call pcall and run a short coroutine
    r#"started()
    local mt = {__gc = function()
      pcall(error, 'x')
      coroutine.wrap(function() for i = 1, 100 do end end)()
    end}
    while true do
      for i = 1, 50 do setmetatable({}, mt) end
      collectgarbage()
      pcall(function() while true do end end)
    end"#,
];

#[test]
fn cancel_and_deadline_stop_loops_with_finite_gc_metamethods() {
    within_hang_guard(|| check_all(BOTH, FINITE_GC_METAMETHODS));
}

/// `__pairs` is honoured by PUC Lua 5.2 to 5.5.
#[cfg(any(
    feature = "lua52",
    feature = "lua53",
    feature = "lua54",
    feature = "lua55"
))]
const PAIRS_METAMETHODS: &[&str] = &[
    // __pairs returning an endless Lua iterator
    r#"started()
    local t = setmetatable({}, {__pairs = function(t) return function() return 1, 1 end, t, nil end})
    for k, v in pairs(t) do end"#,
    // an endless iterator that catches
    r#"started()
    local t = setmetatable({}, {__pairs = function(t)
      return function() pcall(function() while true do end end) return 1 end, t, nil
    end})
    for k in pairs(t) do end"#,
    // __pairs delegating to another __pairs that loops
    r#"started()
    local inner = setmetatable({}, {__pairs = function() while true do end end})
    local outer = setmetatable({}, {__pairs = function() return pairs(inner) end})
    while true do pcall(pairs, outer) end"#,
    // __pairs returning an endless coroutine generator
    r#"started()
    local t = setmetatable({}, {__pairs = function()
      return coroutine.wrap(function()
        local i = 0
        while true do i = i + 1 coroutine.yield(i, i) end
      end)
    end})
    for k, v in pairs(t) do end"#,
];

#[test]
#[cfg(any(
    feature = "lua52",
    feature = "lua53",
    feature = "lua54",
    feature = "lua55"
))]
fn cancel_and_deadline_stop_pairs_metamethod_iterators() {
    within_hang_guard(|| check_all(BOTH, PAIRS_METAMETHODS));
}

// ---------------------------------------------------------------------------------------------
// Library callbacks
// ---------------------------------------------------------------------------------------------

const SORT_COMPARATORS: &[&str] = &[
    // a comparator that catches and returns
    r#"started()
    local t = {} for i = 1, 200 do t[i] = 201 - i end
    while true do
      pcall(table.sort, t, function(a, b) pcall(function() while true do end end) return a < b end)
    end"#,
    // an invalid order function, retried forever
    r#"started()
    local t = {} for i = 1, 100 do t[i] = i end
    while true do pcall(table.sort, t, function(a, b) return true end) end"#,
    // a comparator that sorts recursively until the C stack overflows
    r#"started()
    local t = {} for i = 1, 50 do t[i] = i end
    local function cmp(a, b) local u = {3, 2, 1} table.sort(u, cmp) return a > b end
    while true do pcall(table.sort, t, cmp) end"#,
    // a comparator that tries to yield inside a coroutine
    r#"started()
    local t = {} for i = 1, 50 do t[i] = i end
    coroutine.wrap(function()
      while true do pcall(table.sort, t, function(a, b) coroutine.yield() end) end
    end)()"#,
];

#[test]
fn cancel_and_deadline_stop_sort_comparators() {
    within_hang_guard(|| check_all(BOTH, SORT_COMPARATORS));
}

const GSUB_AND_STRING_CALLBACKS: &[&str] = &[
    // a gsub function replacement that catches and returns
    r#"started()
    local s = string.rep('abc', 100)
    while true do
      s:gsub('.', function(c) pcall(function() while true do end end) return c end)
    end"#,
    // a gsub table replacement whose __index loops
    r#"started()
    local repl = setmetatable({}, {__index = function(t, k) while true do end end})
    while true do pcall(string.gsub, 'hello world', '%w+', repl) end"#,
    // a gsub table replacement whose __index recurses until the C stack overflows
    r#"started()
    local repl = setmetatable({}, {__index = function(t, k) return t[k] end})
    while true do pcall(string.gsub, 'hello world', '%w+', repl) end"#,
    // a gsub table replacement with a circular __index chain
    r#"started()
    local a, b = {}, {}
    setmetatable(a, {__index = b}) setmetatable(b, {__index = a})
    while true do pcall(string.gsub, 'hello world', '%w+', a) end"#,
    // gsub replacement recursing into gsub
    r#"started()
    local function g(s) return (s:gsub('.', g)) end
    while true do pcall(g, 'abc') end"#,
    // a gmatch loop whose body catches
    r#"started()
    while true do
      for w in ('x'):rep(1000):gmatch('x') do pcall(function() while true do end end) end
    end"#,
];

#[test]
fn cancel_and_deadline_stop_gsub_and_string_callbacks() {
    within_hang_guard(|| check_all(BOTH, GSUB_AND_STRING_CALLBACKS));
}

/// Luau has no `load`.
#[cfg(not(feature = "luau"))]
const LOAD_READERS: &[&str] = &[
    // a reader that loops
    r#"started()
    while true do load(function() while true do end end) end"#,
    // a reader that returns whitespace forever: the parser never ends
    r#"started()
    while true do load(function() return ' ' end) end"#,
    // a reader that returns an unterminated comment forever
    r#"started()
    while true do load(function() return '-- a comment that never ends ' end) end"#,
    // a reader that errors every other call
    r#"started()
    local n = 0
    while true do
      pcall(load, function()
        n = n + 1
        if n % 2 == 0 then error('reader failed') end
        return 'local x = 1 '
      end)
    end"#,
    // a reader that tries to yield inside a coroutine
    r#"started()
    coroutine.wrap(function()
      while true do load(function() coroutine.yield() return nil end) end
    end)()"#,
    // a loaded chunk whose environment's __index loops
    r#"started()
    local env = setmetatable({}, {__index = function() while true do end end})
    local chunk
    if setfenv then
      -- Lua 5.1 and LuaJIT: load takes no environment
      chunk = setfenv(loadstring('return y'), env)
    else
      chunk = load('return y', 'c', 't', env)
    end
    while true do pcall(chunk) end"#,
];

#[test]
#[cfg(not(feature = "luau"))]
fn cancel_and_deadline_stop_load_with_hostile_readers() {
    within_hang_guard(|| check_all(BOTH, LOAD_READERS));
}

const SELECT_IPAIRS_NEXT: &[&str] = &[
    // select and unpack abuse
    r#"started()
    local t = {} for i = 1, 200 do t[i] = i end
    while true do
      select('#', table.unpack(t))
      select(-1, table.unpack(t))
      pcall(select, 0)
      pcall(select, -1000)
      pcall(table.unpack, t, 1, 1e8)
      pcall(next, t, 'missing')
    end"#,
    // ipairs over a table whose __index never returns nil: an endless C iterator (from Lua
    // 5.3 on; before, ipairs ignores __index and the outer loop spins)
    r#"started()
    while true do
      for i, v in ipairs(setmetatable({}, {__index = function(t, i) return i end})) do end
    end"#,
    // ipairs whose __index catches
    r#"started()
    local t = setmetatable({}, {__index = function(t, i)
      pcall(function() while true do end end)
      return i
    end})
    while true do for i in ipairs(t) do end end"#,
    // next over a table cleared while traversed, and next with bad keys
    r#"started()
    local t = {}
    while true do
      for i = 1, 100 do t[i] = i end
      for k, v in next, t do t[k] = nil end
      pcall(next, {}, {})
    end"#,
    // a module searcher that loops
    r#"started()
    -- Lua 5.1 and LuaJIT call them loaders; Luau has no package library
    local searchers = package and (package.searchers or package.loaders)
    if searchers then table.insert(searchers, 1, function() while true do end end) end
    while true do pcall(require, 'no such module') end"#,
];

#[test]
fn cancel_and_deadline_stop_select_ipairs_next_and_require_abuse() {
    within_hang_guard(|| check_all(BOTH, SELECT_IPAIRS_NEXT));
}

// ---------------------------------------------------------------------------------------------
// Recursion, goto
// ---------------------------------------------------------------------------------------------

const REPEATED_STACK_OVERFLOWS: &[&str] = &[
    // Lua stack overflow, caught, again and again
    r#"started()
    local function r(n) return 1 + r(n + 1) end
    while true do pcall(r, 1) end"#,
    // C stack overflow through nested pcalls
    r#"started()
    local function r() local ok = pcall(r) return ok end
    while true do r() end"#,
    // overflow inside coroutines
    r#"started()
    local function r() return 1 + r() end
    while true do pcall(coroutine.wrap(r)) end"#,
    // an xpcall handler recursing through xpcall
    r#"started()
    local function h(e) return xpcall(error, h, e) end
    while true do xpcall(error, h, 'x') end"#,
    // overflow inside an xpcall with a handler that loops
    r#"started()
    local function r() return 1 + r() end
    while true do xpcall(r, function(e) while true do end end) end"#,
    // a handler that loops at the bottom of a full Lua stack (on Lua 5.4, a million frames:
    // arming the hook and unwinding take tens of milliseconds each)
    r#"local function r() return 1 + r() end
    xpcall(r, function(e) started() while true do end end)"#,
    // a tail call growing its varargs
    r#"started()
    local function r(...) return r(1, ...) end
    while true do pcall(r) end"#,
    // endless tail recursion (no stack growth; Luau has no proper tail calls)
    #[cfg(not(feature = "luau"))]
    r#"started()
    local function t(n) return t(n + 1) end
    t(0)"#,
];

#[test]
fn cancel_and_deadline_stop_repeated_stack_overflows() {
    within_hang_guard(|| check_all(BOTH, REPEATED_STACK_OVERFLOWS));
}

/// `goto` exists in Lua 5.2 and later and in LuaJIT, not in Lua 5.1 nor Luau.
#[cfg(not(any(feature = "lua51", feature = "luau")))]
const GOTO_LOOPS: &[&str] = &[
    "started() ::top:: goto top",
    r#"started()
    local n = 0
    ::outer::
    do
      ::inner::
      n = n + 1
      if n % 1000 ~= 0 then goto inner end
    end
    pcall(function() ::spin:: goto spin end)
    goto outer"#,
    r#"started()
    for i = 1, math.huge do
      goto continue
      ::continue::
    end"#,
    r#"started()
    while true do
      local co = coroutine.wrap(function() ::y:: coroutine.yield() goto y end)
      for i = 1, 100 do co() end
    end"#,
    "started() repeat until false",
];

#[test]
#[cfg(not(any(feature = "lua51", feature = "luau")))]
fn cancel_and_deadline_stop_goto_loops() {
    within_hang_guard(|| check_all(BOTH, GOTO_LOOPS));
}

/// A `goto` loop through a block with a to-be-closed variable (Lua 5.4 and later).
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn cancel_and_deadline_stop_goto_loops_closing_a_variable() {
    within_hang_guard(|| {
        check_all(
            BOTH,
            &[r#"started()
            local closer = setmetatable({}, {__close = function() end})
            ::again::
            do local c <close> = closer end
            goto again"#],
        )
    });
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

const MEMORY_GROWTH: &[&str] = &[
    // grow a table of tables until the limit, catch, repeat
    r#"started()
    while true do
      pcall(function() local t = {} while true do t[#t + 1] = {} end end)
    end"#,
    // double a string until the limit, catch, repeat
    r#"started()
    while true do
      local s = 'x'
      pcall(function() while true do s = s .. s end end)
    end"#,
    // keep big strings in an upvalue table, catch, drop, repeat (nothing is allocated outside
    // a protected call: Lua 5.1, LuaJIT and Luau do not collect before reporting that an
    // allocation failed, so the script itself could end with a memory error otherwise)
    r#"started()
    local keep = {}
    local function fill() for i = 1, math.huge do keep[i] = string.rep('x', 4096) .. i end end
    local function reset() keep = {} end
    while true do
      pcall(fill)
      pcall(reset)
    end"#,
    // one huge allocation in C, caught, forever
    r#"started()
    while true do pcall(string.rep, 'x', 2 ^ 40) end"#,
    // growth inside coroutines, caught by the resumer
    r#"started()
    while true do
      pcall(coroutine.wrap(function()
        local t = {}
        while true do t[#t + 1] = ('y'):rep(100) .. #t end
      end))
    end"#,
    // growth under xpcall whose handler allocates
    r#"started()
    while true do
      xpcall(function() local t = {} while true do t[#t + 1] = {} end end,
             function(e) local u = {} for i = 1, 1000 do u[i] = {} end return e end)
    end"#,
    // growth with the collector stopped
    r#"started()
    collectgarbage('stop')
    while true do
      pcall(function() local t = {} while true do t[#t + 1] = {} end end)
    end"#,
    // growth with finalizers that allocate
    r#"started()
    local mt = {__gc = function() local t = {} for i = 1, 100 do t[i] = {} end end}
    while true do
      pcall(function() local t = {} while true do t[#t + 1] = setmetatable({}, mt) end end)
    end"#,
];

#[test]
fn cancel_and_deadline_stop_memory_growth_loops_under_a_memory_limit() {
    within_hang_guard(|| check_all(LIMITED, MEMORY_GROWTH));
}

// ---------------------------------------------------------------------------------------------
// Tampering with the guard
// ---------------------------------------------------------------------------------------------

const REPLACED_PROTECTED_CALLS: &[&str] = &[
    // xpcall replaced by a pcall-based version
    r#"started()
    xpcall = function(f, h, ...) return pcall(f, ...) end
    while true do
      xpcall(function() while true do end end, function(e) while true do end end)
    end"#,
    // pcall replaced by a self-recursive wrapper
    r#"started()
    local real = pcall
    pcall = function(f, ...) local ok = real(pcall, f, ...) return ok end
    while true do pcall(function() while true do end end) end"#,
    // error replaced by a loop
    r#"started()
    error = function() while true do end end
    while true do pcall(error, 'x') end"#,
    // coroutine functions replaced
    r#"started()
    coroutine.yield = function() while true do end end
    coroutine.wrap = function(f) return function(...) return pcall(f, ...) end end
    local co = coroutine.wrap(function() while true do coroutine.yield() end end)
    while true do co() end"#,
    // the guard's helpers replaced: type, tostring, select
    r#"started()
    type = function() while true do end end
    tostring = type
    select = type
    while true do xpcall(function() while true do end end, function(e) return e end) end"#,
    // the globals removed, the guarded xpcall kept in a local
    r#"started()
    local guarded = xpcall
    xpcall = nil
    pcall = nil
    while true do guarded(function() while true do end end, guarded) end"#,
    // xpcall replaced with a coroutine that calls pcall
    r#"started()
    local real = pcall
    rawset(_G, 'xpcall', coroutine.wrap(function(f)
      while true do f = coroutine.yield(real(f)) end
    end))
    while true do xpcall(function() while true do end end) end"#,
    // the string metatable's __index replaced by a loop
    r#"started()
    getmetatable('').__index = function() while true do end end
    while true do pcall(function() return ('x'):upper() end) end"#,
];

#[test]
fn cancel_and_deadline_stop_scripts_that_replace_protected_call_functions() {
    within_hang_guard(|| check_all(BOTH, REPLACED_PROTECTED_CALLS));
}

const GLOBALS_METATABLE: &[&str] = &[
    // a looping __index on _G, reached through an undefined global
    r#"started()
    setmetatable(_G, {__index = function(t, k) while true do end end})
    return undefined_global"#,
    // a looping __newindex on _G
    r#"started()
    setmetatable(_G, {__newindex = function(t, k, v) while true do pcall(rawset, t, k, v) end end})
    new_global = 1"#,
    // a recursive __index on _G, overflowing in a pcall loop
    r#"started()
    setmetatable(_G, {__index = function(t, k) return t[k .. 'x'] end})
    while true do pcall(function() return missing end) end"#,
    // _G's metatable makes every global call loop, then xpcall is used through it
    r#"started()
    local g = _G
    setmetatable(g, {__index = function(t, k) while true do end end})
    xpcall = nil
    while true do pcall(function() return xpcall(nothing, nothing) end) end"#,
];

#[test]
fn cancel_and_deadline_stop_scripts_that_set_a_metatable_on_globals() {
    within_hang_guard(|| check_all(BOTH, GLOBALS_METATABLE));
}

const COLLECTGARBAGE_LOOPS: &[&str] = &[
    r#"started()
    while true do
      collectgarbage() collectgarbage('step', 1) collectgarbage('count')
      -- options some versions lack fail: that must not matter
      pcall(collectgarbage, 'incremental') pcall(collectgarbage, 'generational')
      pcall(collectgarbage, 'isrunning')
      collectgarbage('stop') collectgarbage('restart')
    end"#,
    r#"started()
    while true do
      local t = {} for i = 1, 100 do t[i] = {} end
      collectgarbage('step', 0)
      pcall(collectgarbage, 'no such option')
    end"#,
    r#"started()
    pcall(collectgarbage, 'generational')
    while true do
      local t = {} for i = 1, 1000 do t[i] = tostring(i) end
      collectgarbage()
    end"#,
];

#[test]
fn cancel_and_deadline_stop_collectgarbage_loops() {
    within_hang_guard(|| check_all(BOTH, COLLECTGARBAGE_LOOPS));
}
