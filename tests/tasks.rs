//! The `task` library: tasks, join, cancel, status, sleep, yield, delay, tickers, structured
//! scopes.

mod common;

use common::within_hang_guard;
use mlua_isle::{Isle, IsleError, TaskLibrary};

fn isle() -> Isle {
    Isle::builder()
        .task_library(TaskLibrary::new())
        .spawn(|_| Ok(()))
        .unwrap()
}

fn eval<T: mlua::FromLuaMulti + Send + 'static>(code: &'static str) -> Result<T, IsleError> {
    within_hang_guard(move || isle().eval::<T>(code))
}

#[test]
fn spawn_runs_at_once_and_join_returns_its_values() {
    let (a, b, c): (i64, String, bool) = eval(
        r#"
        local order = {}
        local h = task.spawn(function(x, y) order[#order + 1] = "task" return x + y, "s", true end, 1, 2)
        order[#order + 1] = "after spawn"
        assert(order[1] == "task" and order[2] == "after spawn")
        assert(h:status() == "done")
        return h:join()
    "#,
    )
    .unwrap();
    assert_eq!((a, b.as_str(), c), (3, "s", true));
}

#[test]
fn join_reraises_the_task_error_value() {
    let ok: bool = eval(
        r#"
        local err = {code = 42}
        local h = task.spawn(function() task.sleep(0) error(err) end)
        local ok, e = pcall(h.join, h)
        assert(not ok and rawequal(e, err), tostring(e))
        assert(h:status() == "failed")
        local h2 = task.spawn(function() error("boom") end)
        local ok2, e2 = pcall(h2.join, h2)
        return not ok2 and type(e2) == "string" and e2:find("boom") ~= nil
    "#,
    )
    .unwrap();
    assert!(ok);
}

#[test]
fn join_waits_for_a_sleeping_task_from_the_request_and_from_a_task() {
    let v: i64 = eval(
        r#"
        local inner = task.spawn(function() task.sleep(0.01) return 5 end)
        local outer = task.spawn(function() return inner:join() * 2 end)
        assert(outer:status() == "waiting")
        return outer:join() + inner:join()
    "#,
    )
    .unwrap();
    assert_eq!(v, 15);
}

#[test]
fn cancel_stops_a_waiting_task_and_join_reports_it() {
    let ok: bool = eval(
        r#"
        local reached = false
        local h = task.spawn(function() task.sleep(100) reached = true end)
        assert(h:status() == "waiting")
        assert(h:cancel() == true)
        assert(h:cancel() == false)
        assert(h:status() == "cancelled")
        local ok, e = pcall(h.join, h)
        assert(not ok and e:find("cancelled"))
        task.sleep(0)
        return not reached
    "#,
    )
    .unwrap();
    assert!(ok);
}

#[test]
fn a_task_cancelling_itself_ends_at_once_even_inside_pcall() {
    let ok = eval::<bool>(
        r#"
        local after = false
        local h
        h = task.spawn(function()
            task.sleep(0)
            pcall(function() h:cancel() end)
            after = true
        end)
        task.sleep(0.001)
        return h:status() == "cancelled" and not after
    "#,
    );
    // Lua 5.1 cannot yield across pcall: the cancel is an error the pcall catches, and the
    // task is killed at its next yield.
    if cfg!(feature = "lua51") {
        let _ = ok;
        return;
    }
    assert!(ok.unwrap());
}

/// A task cancelled while it cannot stop (a task it started cancels it from inside a
/// `table.sort` comparator, which cannot yield) runs on until it next blocks, and ends there.
#[test]
fn a_task_cancelled_where_it_cannot_yield_ends_when_it_next_blocks() {
    let outcome: String = eval(
        r#"
        local ch = task.channel(0)
        local reached, after = false, false
        local h = task.spawn(function()
            local me = task.current()
            local canceller = nil
            table.sort({3, 1, 2}, function(x, y)
                if not canceller then
                    canceller = task.spawn(function() me:cancel() end)
                end
                return x < y
            end)
            reached = true
            ch:recv()
            after = true
        end)
        return table.concat({h:status(), tostring(reached), tostring(after)}, " ")
    "#,
    )
    .unwrap();
    assert_eq!(outcome, "cancelled true false");
}

#[test]
fn tasks_that_sleep_wake_in_deadline_order() {
    let order: String = eval(
        r#"
        local out = {}
        for _, d in ipairs({0.03, 0.01, 0.02, 0}) do
            task.spawn(function() task.sleep(d) out[#out + 1] = tostring(d) end)
        end
        task.sleep(0.05)
        return table.concat(out, ",")
    "#,
    )
    .unwrap();
    assert_eq!(order, "0,0.01,0.02,0.03");
}

#[test]
fn yield_lets_ready_tasks_take_turns() {
    let order: String = eval(
        r#"
        local out = {}
        local function worker(name)
            for i = 1, 3 do out[#out + 1] = name .. i task.yield() end
        end
        local a = task.spawn(worker, "a")
        local b = task.spawn(worker, "b")
        a:join() b:join()
        return table.concat(out, " ")
    "#,
    )
    .unwrap();
    assert_eq!(order, "a1 b1 a2 b2 a3 b3");
}

#[test]
fn delay_runs_a_function_later_in_a_task() {
    let v: i64 = eval(
        r#"
        local t0 = task.now()
        local h = task.delay(0.01, function(x) return x * 3, task.now() end, 7)
        assert(h:status() == "waiting")
        local v, t1 = h:join()
        assert(t1 - t0 >= 0.009)
        return v
    "#,
    )
    .unwrap();
    assert_eq!(v, 21);
}

#[test]
fn tickers_tick_and_stop() {
    let n: i64 = eval(
        r#"
        local tk = task.ticker(0.002)
        local n = 0
        for i = 1, 3 do n = tk:next() end
        tk:stop()
        assert(tk:next() == nil)
        return n
    "#,
    )
    .unwrap();
    assert_eq!(n, 3);
}

#[test]
fn defer_starts_a_task_later() {
    let ok: bool = eval(
        r#"
        local ran = false
        local h = task.defer(function() ran = true end)
        assert(not ran and h:status() == "ready" and tostring(h) == "task (ready)")
        h:join()
        return ran
    "#,
    )
    .unwrap();
    assert!(ok);
}

#[test]
fn tasks_end_with_their_request_and_never_run_in_a_later_one() {
    within_hang_guard(|| {
        let isle = isle();
        isle.exec(|lua| lua.globals().set("log", lua.create_table()?))
            .unwrap();
        // The request returns with a task asleep, one ready and one waiting on a channel.
        isle.exec(|lua| {
            lua.load(
                r#"
                kept = {
                    task.spawn(function() task.sleep(0.01) log[#log + 1] = "sleeper" end),
                    task.defer(function() log[#log + 1] = "deferred" end),
                }
                ch = task.channel(0)
                kept[3] = task.spawn(function() log[#log + 1] = ch:recv() end)
                "#,
            )
            .exec()
        })
        .unwrap();
        let ok: bool = isle
            .eval(
                r#"
                for _, h in ipairs(kept) do
                    assert(h:status() == "cancelled", h:status())
                    local ok, e = pcall(h.join, h)
                    assert(not ok)
                end
                -- A send finds no receiver from the ended request.
                assert(ch:try_send("x") == false)
                task.sleep(0.02)
                return #log == 0
                "#,
            )
            .unwrap();
        assert!(ok);
    });
}

#[test]
fn a_failed_or_cancelled_request_ends_its_tasks_too() {
    within_hang_guard(|| {
        let isle = isle();
        let err = isle
            .eval::<()>(
                r#"
                ch = task.channel(1)
                held = task.spawn(function() while true do ch:send(1) end end)
                error("request fails")
                "#,
            )
            .unwrap_err();
        assert!(err.to_string().contains("request fails"));
        let status: String = isle.eval("return held:status()").unwrap();
        assert_eq!(status, "cancelled");

        let task = isle
            .request()
            .timeout(std::time::Duration::from_millis(30))
            .eval::<()>(
                r#"
                sleeper = task.spawn(function() task.sleep(100) end)
                task.spawn(function() while true do task.yield() end end)
                task.sleep(100)
                "#,
            )
            .unwrap_err();
        assert!(task.is_timeout(), "{task:?}");
        let status: String = isle.eval("return sleeper:status()").unwrap();
        assert_eq!(status, "cancelled");
        // One item is buffered from the first request; nothing else arrived.
        let n: i64 = isle.eval("return ch:len()").unwrap();
        assert_eq!(n, 1);
    });
}

#[test]
fn waiting_with_nothing_that_can_wake_is_a_deadlock_error() {
    let err = eval::<()>("task.channel(0):recv()").unwrap_err();
    assert!(err.to_string().contains("deadlock"), "{err}");
}

#[test]
fn a_cancel_reaches_a_request_idle_in_the_scheduler() {
    within_hang_guard(|| {
        let isle = isle();
        let task = isle.spawn_eval::<()>("task.sleep(1000)").unwrap();
        // Whether it is already asleep or not, the cancel ends it.
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        let task = isle
            .spawn_eval::<()>("task.spawn(function() while true do pcall(task.sleep, 1000) end end) task.sleep(1000)")
            .unwrap();
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        assert_eq!(isle.eval::<i64>("return 1").unwrap(), 1);
    });
}

#[test]
fn status_and_bad_arguments() {
    let ok: bool = eval(
        r#"
        local h = task.spawn(function() task.sleep(0.001) end)
        assert(h:status() == "waiting")
        assert(getmetatable(h) == "task")
        assert(tostring(h):find("task"))
        assert(not pcall(task.spawn, 42))
        assert(not pcall(task.sleep, "x"))
        assert(not pcall(h.join, {}))
        h:join()
        return h:status() == "done"
    "#,
    )
    .unwrap();
    assert!(ok);
}

#[test]
fn without_the_option_there_is_no_task_global() {
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    assert!(isle.eval::<bool>("return task == nil").unwrap());
}

/// Whether tasks are preempted on this Lua version.
const PREEMPTS: bool = cfg!(any(
    feature = "lua53",
    feature = "lua54",
    feature = "lua55",
    feature = "luau"
));

/// CPU-bound loops a task may run; each ends once `done` is set by another task. (A loop in a
/// coroutine the task resumed is not among them: the task is preempted only once control is
/// back in its own coroutine, since yielding the inner one would show.)
const SPINNERS: [&str; 5] = [
    "while not done do end",
    "while not done do pcall(function() end) end",
    "while not done do local t = {} end",
    // In a metamethod.
    "local t = setmetatable({}, {__index = function() while not done do end return 1 end}) local _ = t.x",
    "while not done do for i = 1, 100 do local s = ('x'):rep(i) end end",
];

/// The spinners a task can be preempted in on this version: Luau cannot yield inside a
/// metamethod.
fn spinners() -> impl Iterator<Item = &'static str> {
    SPINNERS
        .into_iter()
        .filter(|s| !(cfg!(feature = "luau") && s.contains("__index")))
}

fn spin_and_set(isle: &Isle, shape: &str) -> (String, String) {
    let code = format!(
        "done = false
         local spinner = task.spawn(function() {shape} return 'spun' end)
         local setter = task.spawn(function() done = true return 'set' end)
         return spinner:join(), setter:join()"
    );
    isle.eval(code.as_str())
        .unwrap_or_else(|e| panic!("{shape}: {e}"))
}

#[test]
fn a_cpu_bound_task_is_preempted_so_its_siblings_run() {
    if !PREEMPTS {
        return;
    }
    // Without preemption the spinner would never let the setter run.
    assert_spinners_are_preempted(Isle::builder());
}

/// Every spinner shape this version can preempt lets its sibling run, on an isle from
/// `builder` (the request's timeout is the hang guard).
fn assert_spinners_are_preempted(builder: mlua_isle::IsleBuilder) {
    within_hang_guard(move || {
        let isle = builder
            .task_library(TaskLibrary::new())
            .timeout(std::time::Duration::from_secs(20))
            .spawn(|_| Ok(()))
            .unwrap();
        for shape in spinners() {
            let (a, b) = spin_and_set(&isle, shape);
            assert_eq!((a.as_str(), b.as_str()), ("spun", "set"), "{shape}");
        }
    });
}

#[test]
fn preemption_works_with_a_permanent_hook_too() {
    if !PREEMPTS {
        return;
    }
    assert_spinners_are_preempted(
        Isle::builder().interrupt(mlua_isle::Interrupt::Hook { every: 1000 }),
    );
}

#[test]
fn without_a_time_slice_tasks_switch_only_where_they_block() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .task_library(TaskLibrary::new().time_slice(None))
            .spawn(|_| Ok(()))
            .unwrap();
        let order: String = isle
            .eval(
                "local out = {}
                 local a = task.spawn(function() for i = 1, 2e6 do end out[#out + 1] = 'a' end)
                 local b = task.spawn(function() out[#out + 1] = 'b' end)
                 a:join() b:join()
                 return table.concat(out)",
            )
            .unwrap();
        assert_eq!(order, "ab");
    });
}

#[test]
fn a_cancel_reaches_a_preempted_cpu_bound_task() {
    within_hang_guard(|| {
        let isle = isle();
        let task = isle
            .spawn_eval::<()>(
                "task.spawn(function() while true do pcall(function() while true do end end) end end)
                 task.sleep(1000)",
            )
            .unwrap();
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        assert_eq!(isle.eval::<i64>("return 2").unwrap(), 2);
    });
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
#[test]
fn a_handle_in_a_close_variable_cancels_its_task_at_scope_exit() {
    let ok: bool = eval(
        r#"
        local closed, h2 = false, nil
        do
            local h <close> = task.spawn(function()
                local guard <close> = setmetatable({}, {__close = function() closed = true end})
                task.sleep(100)
            end)
            h2 = h
        end
        return h2:status() == "cancelled" and closed
    "#,
    )
    .unwrap();
    assert!(ok);
}

#[test]
fn pools_install_the_library_in_every_member() {
    within_hang_guard(|| {
        let pool = mlua_isle::IslePool::builder()
            .size(2)
            .isle(Isle::builder().task_library(TaskLibrary::new()))
            .spawn(|_| Ok(()))
            .unwrap();
        for _ in 0..8 {
            let v: i64 = pool
                .eval("local h = task.spawn(function() task.sleep(0.001) return 4 end) return h:join()")
                .unwrap();
            assert_eq!(v, 4);
        }
        let via_checkout: i64 = pool
            .checkout()
            .unwrap()
            .eval("local ch = task.channel(1) ch:send(5) return (ch:recv())")
            .unwrap();
        assert_eq!(via_checkout, 5);
    });
}

#[test]
fn sandboxed_isles_keep_the_library_read_only() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .sandboxed()
            .task_library(TaskLibrary::new())
            .spawn(|_| Ok(()))
            .unwrap();
        let v: i64 = isle
            .eval("local h = task.spawn(function() return 9 end) return h:join()")
            .unwrap();
        assert_eq!(v, 9);
        assert!(isle.eval::<()>("task.spawn = nil").is_err());
        assert!(isle.eval::<()>("rawset(task, 'spawn', print)").is_err());
        let v: i64 = isle
            .eval("return task.spawn(function() return 1 end):join()")
            .unwrap();
        assert_eq!(v, 1);
    });
}

#[test]
fn ending_a_request_never_runs_code_a_script_planted_in_its_tasks() {
    within_hang_guard(|| {
        let (isle, started) =
            common::isle_with_started(Isle::builder().task_library(TaskLibrary::new()));
        let planted = r#"
            local trap = setmetatable({}, {
                __index = function() while true do end end,
                __newindex = function() while true do end end,
            })
            local h = task.spawn(function() task.sleep(100) end)
            rawset(h, "w", trap)
            rawset(h, "scope", trap)
            local c = task.spawn(function() task.channel(0):recv() end)
            rawset(c, "w", {fired = 1, ok = true, putback = trap, value = 1})
        "#;
        // Ending normally, and being cancelled while the planted tables are in place.
        isle.eval::<()>(planted).unwrap();
        let code = format!("{planted} started() task.sleep(1000)");
        let task = isle.spawn_eval::<()>(code.as_str()).unwrap();
        started.recv().unwrap();
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        assert_eq!(isle.eval::<i64>("return 3").unwrap(), 3);
    });
}

#[test]
fn preemption_never_cuts_into_the_schedulers_own_code() {
    // With the shortest slice, preemptions land all over the library's code paths: ping-pong
    // over a rendezvous channel, eager spawns from tasks, select loops.
    within_hang_guard(|| {
        let isle = Isle::builder()
            .task_library(
                TaskLibrary::new().time_slice(Some(std::time::Duration::from_micros(100))),
            )
            .spawn(|_| Ok(()))
            .unwrap();
        let n: i64 = isle
            .eval(
                r#"
                local ping, pong = task.channel(0), task.channel(0)
                local echo = task.spawn(function()
                    -- (Not a `for` loop: Lua 5.1 cannot yield inside an iterator.)
                    while true do
                        local v, open = ping:recv()
                        if not open then break end
                        task.spawn(function() end):join()
                        pong:send(v)
                    end
                end)
                local other = task.channel(1)
                local n = 0
                for i = 1, 20000 do
                    ping:send(i)
                    local k, v = task.select{ {recv = pong}, {recv = other} }
                    assert(k == 1 and v == i)
                    n = n + 1
                end
                ping:close()
                echo:join()
                return n
                "#,
            )
            .unwrap();
        assert_eq!(n, 20000);
    });
}
