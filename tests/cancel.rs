//! Cancellation: running code is stopped whatever it does to catch the interruption; queued
//! requests never start; a cancelled request reports `Cancelled`.

mod common;

use std::sync::mpsc;

use common::*;
use mlua_isle::{CancelToken, Isle, IsleError};

/// Runs `script` (which must call `started()` once it is running), cancels it once it is
/// running, and checks that it ends `Cancelled` and the VM is still usable.
fn assert_cancel_stops(script: &'static str) {
    within_hang_guard(move || {
        let (isle, started) = isle_with_started(Isle::builder());
        isle.exec(|lua| lua.globals().set("kept", "yes")).unwrap();
        let task = isle.spawn_eval::<()>(script).unwrap();
        wait_started(&started);
        task.cancel();
        match task.wait() {
            Err(IsleError::Cancelled) => {}
            other => panic!("script {script:?} ended with {other:?}, expected Cancelled"),
        }
        assert_eq!(isle.eval::<String>("kept").unwrap(), "yes");
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

#[test]
fn cancel_stops_a_tight_loop() {
    assert_cancel_stops("started() while true do end");
}

#[test]
fn cancel_stops_pcall_wrapped_loop() {
    assert_cancel_stops("started() while true do pcall(function() while true do end end) end");
}

#[test]
fn cancel_stops_nested_pcalls() {
    assert_cancel_stops(
        "started()
         while true do
           pcall(pcall, pcall, function() while true do pcall(error, 'x') end end)
         end",
    );
}

#[test]
fn cancel_stops_pcall_that_catches_and_continues() {
    assert_cancel_stops(
        "started()
         local n = 0
         while true do
           local ok, err = pcall(function() while true do n = n + 1 end end)
           n = n + 1
         end",
    );
}

#[test]
fn cancel_stops_xpcall_with_looping_handler() {
    assert_cancel_stops(
        "started()
         xpcall(function() while true do end end, function(e) while true do end end)",
    );
}

#[test]
fn cancel_stops_xpcall_retry_loop() {
    assert_cancel_stops(
        "started()
         while true do
           xpcall(function() while true do end end, function(e) return e end)
         end",
    );
}

#[test]
fn cancel_stops_xpcall_handler_that_retries_the_loop() {
    assert_cancel_stops(
        "started()
         local function spin() while true do end end
         local function handler(e) xpcall(spin, handler) return e end
         while true do xpcall(spin, handler) end",
    );
}

#[test]
fn cancel_stops_loop_in_coroutine_wrap() {
    assert_cancel_stops(
        "started()
         local f = coroutine.wrap(function() while true do end end)
         f()",
    );
}

#[test]
fn cancel_stops_coroutine_resume_retry_loop() {
    assert_cancel_stops(
        "started()
         while true do
           local co = coroutine.create(function() while true do end end)
           coroutine.resume(co)
         end",
    );
}

#[test]
fn cancel_stops_coroutine_created_before_the_request() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        isle.eval::<()>(
            "old = coroutine.create(function()
                 started()
                 while true do pcall(function() while true do end end) end
             end)",
        )
        .unwrap();
        let task = isle.spawn_eval::<()>("coroutine.resume(old)").unwrap();
        wait_started(&started);
        task.cancel();
        assert!(matches!(task.wait(), Err(IsleError::Cancelled)));
        assert_eq!(isle.eval::<i64>("2").unwrap(), 2);
    });
}

#[test]
fn cancel_stops_coroutine_created_in_init() {
    within_hang_guard(|| {
        let (tx, rx) = mpsc::channel::<()>();
        let isle = Isle::spawn(move |lua| {
            let started = lua.create_function(move |_, ()| {
                let _ = tx.send(());
                Ok(())
            })?;
            lua.globals().set("started", started)?;
            lua.load("spinner = coroutine.wrap(function() started() while true do end end)")
                .exec()
        })
        .unwrap();
        let task = isle.spawn_eval::<()>("spinner()").unwrap();
        wait_started(&rx);
        task.cancel();
        assert!(matches!(task.wait(), Err(IsleError::Cancelled)));
    });
}

#[test]
fn cancel_stops_nested_coroutine_chain() {
    assert_cancel_stops(
        "started()
         local function nest(depth)
           if depth == 0 then
             while true do pcall(function() while true do end end) end
           end
           local co = coroutine.wrap(function() return nest(depth - 1) end)
           return co()
         end
         while true do pcall(nest, 20) end",
    );
}

#[test]
fn cancel_stops_coroutine_that_yields_in_a_loop() {
    assert_cancel_stops(
        "started()
         local co = coroutine.wrap(function() while true do coroutine.yield() end end)
         while true do co() end",
    );
}

/// `__close` exists from Lua 5.4 on.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn cancel_stops_loop_in_close_metamethod() {
    assert_cancel_stops(
        "started()
         do
           local x <close> = setmetatable({}, {__close = function() while true do end end})
         end",
    );
}

/// `__close` exists from Lua 5.4 on.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn cancel_stops_loop_in_close_metamethod_during_unwind() {
    assert_cancel_stops(
        "started()
         local x <close> = setmetatable({}, {__close = function() while true do end end})
         while true do end",
    );
}

#[test]
fn cancel_stops_loop_in_index_metamethod() {
    assert_cancel_stops(
        "started()
         local t = setmetatable({}, {__index = function() while true do end end})
         return t.anything",
    );
}

#[test]
fn cancel_stops_loop_in_tostring_metamethod() {
    assert_cancel_stops(
        "started()
         local t = setmetatable({}, {__tostring = function() while true do end end})
         return tostring(t)",
    );
}

#[test]
fn cancel_stops_loops_in_other_metamethods() {
    for script in [
        "local t = setmetatable({}, {__newindex = function() while true do end end}) t.x = 1",
        "local t = setmetatable({}, {__call = function() while true do end end}) t()",
        "local t = setmetatable({}, {__add = function() while true do end end}) return t + 1",
        "local t = setmetatable({}, {__eq = function() while true do end end}) return t == setmetatable({}, getmetatable(t))",
        "local t = setmetatable({}, {__lt = function() while true do end end}) return t < t",
        // Lua 5.1 and LuaJIT honour `__len` only for userdata.
        #[cfg(not(any(feature = "lua51", feature = "luajit")))]
        "local t = setmetatable({}, {__len = function() while true do end end}) return #t",
        "local t = setmetatable({}, {__concat = function() while true do end end}) return t .. 'x'",
        "local t = setmetatable({}, {__unm = function() while true do end end}) return -t",
        // `__pairs` is honoured by PUC Lua 5.2 to 5.5.
        #[cfg(any(feature = "lua52", feature = "lua53", feature = "lua54", feature = "lua55"))]
        "local t = setmetatable({}, {__pairs = function() while true do end end}) for _ in pairs(t) do end",
    ] {
        let script: &'static str = Box::leak(format!("started() {script}").into_boxed_str());
        assert_cancel_stops(script);
    }
}

#[test]
fn cancel_stops_loop_in_sort_comparator_and_gsub_callback() {
    assert_cancel_stops(
        "started()
         local t = {} for i = 1, 100 do t[i] = i end
         table.sort(t, function(a, b) while true do end end)",
    );
    assert_cancel_stops(
        "started()
         string.gsub(string.rep('x', 100), 'x', function() while true do end end)",
    );
}

#[test]
fn cancel_stops_error_object_with_looping_tostring_in_pcall() {
    assert_cancel_stops(
        "started()
         local bad = setmetatable({}, {__tostring = function() while true do end end})
         while true do pcall(error, bad) end",
    );
}

#[test]
fn cancel_stops_loop_in_exec_lua_code() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        let task = isle
            .spawn_exec(|lua| lua.load("started() while true do end").exec())
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(matches!(task.wait(), Err(IsleError::Cancelled)));
    });
}

#[test]
fn cancel_stops_a_loop_called_through_call() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        isle.eval::<()>("function spin() started() while true do end end")
            .unwrap();
        let task = isle.spawn_call::<()>("spin", ()).unwrap();
        wait_started(&started);
        task.cancel();
        assert!(matches!(task.wait(), Err(IsleError::Cancelled)));
    });
}

#[test]
fn cancel_wins_even_if_code_catches_it_and_returns() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        // The closure swallows the interruption and returns a value: still `Cancelled`.
        let task = isle
            .spawn_exec(|lua| {
                let _ = lua.load("started() while true do end").exec();
                Ok(42)
            })
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(matches!(task.wait(), Err(IsleError::Cancelled)));
    });
}

#[test]
fn cancel_after_completion_keeps_the_result() {
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    let task = isle.spawn_eval::<i64>("return 5").unwrap();
    let task = match task.wait_timeout(HANG) {
        Ok(result) => return assert_eq!(result.unwrap(), 5),
        Err(task) => task,
    };
    drop(task);
}

#[test]
fn finished_task_ignores_cancel() {
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    let task = isle.spawn_eval::<i64>("return 5").unwrap();
    while !task.is_finished() {
        std::thread::yield_now();
    }
    task.cancel();
    assert_eq!(task.wait().unwrap(), 5);
}

#[test]
fn request_cancelled_while_queued_never_runs() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        isle.eval::<()>("counter = 0").unwrap();
        let blocker = isle
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        let queued_eval = isle.spawn_eval::<()>("counter = counter + 1").unwrap();
        let queued_call = isle.spawn_call::<()>("print", "must not print").unwrap();
        let queued_exec = isle
            .spawn_exec(|lua| lua.globals().set("counter", 1000))
            .unwrap();
        queued_eval.cancel();
        queued_call.cancel();
        queued_exec.cancel();
        // Cancelled queued requests resolve at once, while the blocker still runs.
        assert!(queued_eval.is_finished());
        assert!(matches!(queued_eval.wait(), Err(IsleError::Cancelled)));
        assert!(matches!(queued_call.wait(), Err(IsleError::Cancelled)));
        assert!(matches!(queued_exec.wait(), Err(IsleError::Cancelled)));
        blocker.cancel();
        assert!(matches!(blocker.wait(), Err(IsleError::Cancelled)));
        assert_eq!(isle.eval::<i64>("counter").unwrap(), 0);
    });
}

#[test]
fn dropped_queued_task_never_runs() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        isle.eval::<()>("counter = 0").unwrap();
        let blocker = isle
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        drop(isle.spawn_eval::<()>("counter = counter + 1").unwrap());
        drop(
            isle.spawn_exec(|lua| lua.globals().set("counter", 1000))
                .unwrap(),
        );
        blocker.cancel();
        assert!(blocker.wait().is_err());
        assert_eq!(isle.eval::<i64>("counter").unwrap(), 0);
    });
}

#[test]
fn one_token_cancels_many_requests() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        let token = CancelToken::new();
        let running = isle
            .request()
            .token(&token)
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        let queued: Vec<_> = (0..5)
            .map(|_| {
                isle.request()
                    .token(&token)
                    .spawn_eval::<()>("x = 1")
                    .unwrap()
            })
            .collect();
        let unrelated = isle.spawn_eval::<i64>("return 7").unwrap();
        token.cancel();
        assert!(matches!(running.wait(), Err(IsleError::Cancelled)));
        for task in queued {
            assert!(matches!(task.wait(), Err(IsleError::Cancelled)));
        }
        assert_eq!(unrelated.wait().unwrap(), 7);
    });
}

#[test]
fn parent_token_cancels_requests_given_a_child() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        let parent = CancelToken::new();
        let child = parent.child_token();
        let task = isle
            .request()
            .token(&child)
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        parent.cancel();
        assert!(matches!(task.wait(), Err(IsleError::Cancelled)));
    });
}

#[test]
fn already_cancelled_token_resolves_without_running() {
    let isle = Isle::spawn(|lua| lua.globals().set("counter", 0)).unwrap();
    let token = CancelToken::new();
    token.cancel();
    let err = isle
        .request()
        .token(&token)
        .eval::<()>("counter = counter + 1")
        .unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(isle.eval::<i64>("counter").unwrap(), 0);
}

#[test]
fn task_cancel_token_cancels_only_its_request() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        let shared = CancelToken::new();
        let a = isle
            .request()
            .token(&shared)
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        let b = isle
            .request()
            .token(&shared)
            .spawn_eval::<i64>("3")
            .unwrap();
        a.cancel_token().cancel();
        assert!(!shared.is_cancelled());
        assert!(matches!(a.wait(), Err(IsleError::Cancelled)));
        assert_eq!(b.wait().unwrap(), 3);
    });
}

#[test]
fn a_late_cancel_never_hits_the_next_request() {
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    for i in 0..500 {
        let first = isle.spawn_eval::<i64>("return 1").unwrap();
        let token = first.cancel_token();
        let canceller = std::thread::spawn(move || token.cancel());
        let _ = first.wait();
        // The next request must never see the cancel aimed at the first.
        let second = isle
            .eval::<i64>("local s = 0 for i = 1, 2000 do s = s + i end return s")
            .unwrap_or_else(|e| panic!("iteration {i}: {e}"));
        assert_eq!(second, 2001000);
        canceller.join().unwrap();
    }
}
