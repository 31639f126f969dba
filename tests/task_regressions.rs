//! Windows found by reading the task library and host channels, each with a test: stops and
//! preemptions landing inside the scheduler's own code, starvation, lost wake-ups, requests
//! that never resolve, cleanup that runs planted code.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::within_hang_guard;
use mlua_isle::host::{self, RequestError};
use mlua_isle::{Isle, TaskLibrary};
use rand::Rng;

fn isle_with(tasks: TaskLibrary) -> Isle {
    Isle::builder()
        .task_library(tasks)
        .timeout(Duration::from_secs(20))
        .spawn(|_| Ok(()))
        .unwrap()
}

/// Runs `code` as a request with a global `inbox` (a host channel into Lua) and a global
/// `ready()` that the script calls once it is where the test wants it; then sends `value`
/// into `inbox` and returns what the request returned.
fn received_by(isle: &Isle, code: String, value: i64) -> i64 {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let tx = isle
        .exec(move |lua| {
            let (tx, ch) = host::channel_to_lua::<i64>(lua, 4)?;
            lua.globals().set("inbox", ch)?;
            let ready = lua.create_function(move |_, ()| {
                let _ = ready_tx.send(());
                Ok(())
            })?;
            lua.globals().set("ready", ready)?;
            Ok(tx)
        })
        .unwrap();
    let receiving = isle.spawn_eval::<i64>(code).unwrap();
    ready_rx.recv().unwrap();
    tx.try_send(value).unwrap();
    receiving.wait().unwrap()
}

const PREEMPTS: bool = cfg!(any(
    feature = "lua53",
    feature = "lua54",
    feature = "lua55",
    feature = "luau"
));

/// With the shortest slice, preemptions land everywhere, the scheduler's own code included
/// (where they must wait): a ring of tasks passing a token over rendezvous channels, and a
/// producer and a consumer polling a buffered channel.
#[test]
fn preemption_never_lands_inside_the_schedulers_bookkeeping() {
    if !PREEMPTS {
        // The polling producer below only ends if it is preempted.
        return;
    }
    within_hang_guard(|| {
        let isle = isle_with(TaskLibrary::new().time_slice(Some(Duration::from_micros(100))));
        for _ in 0..3 {
            let total: i64 = isle
                .eval(
                    r#"
                    local n, rounds = 8, 5000
                    local chans = {}
                    for i = 1, n do chans[i] = task.channel(0) end
                    local tasks = {}
                    for i = 1, n do
                        tasks[i] = task.spawn(function()
                            local inbox, out = chans[i], chans[i % n + 1]
                            local c = 0
                            for r = 1, rounds do
                                if i == 1 then out:send(r) inbox:recv() else out:send(inbox:recv()) end
                                c = c + 1
                            end
                            return c
                        end)
                    end
                    local total = 0
                    for i = 1, n do total = total + tasks[i]:join() end
                    return total
                    "#,
                )
                .unwrap();
            assert_eq!(total, 40000);
        }
        let report: String = isle
            .eval(
                r#"
                local ch, N, bad = task.channel(64), 100000, 0
                task.spawn(function()
                    local i = 1
                    while i <= N do if ch:try_send(i) then i = i + 1 end end
                    ch:close()
                end)
                local consumer = task.spawn(function()
                    local expect = 1
                    while true do
                        local v, ok = ch:try_recv()
                        if ok == false then break end
                        if ok then
                            if v ~= expect then bad = bad + 1 end
                            expect = expect + 1
                        end
                    end
                    return expect - 1
                end)
                return consumer:join() .. "/" .. bad
                "#,
            )
            .unwrap();
        assert_eq!(report, "100000/0");
    });
}

const CHECK_CHANNELS: &str = r#"
local function qcheck(q, name)
    local prev, n, node = nil, 0, q.head
    while node do
        if node.prev ~= prev then return name .. ": bad prev" end
        if node.q ~= q then return name .. ": bad q" end
        prev, node, n = node, node.next, n + 1
        if n > 1e6 then return name .. ": cycle" end
    end
    if q.tail ~= prev then return name .. ": bad tail" end
end
local function bcheck(ch, name)
    if ch.count ~= ch.bt - ch.bh then
        return name .. (": count %d bh %d bt %d"):format(ch.count, ch.bh, ch.bt)
    end
    for i = ch.bh, ch.bt - 1 do if ch.buf[i] == nil then return name .. ": hole at " .. i end end
end
function check_all()
    for i, ch in ipairs(gch) do
        local e = qcheck(ch.recvq, "recvq" .. i) or qcheck(ch.sendq, "sendq" .. i) or bcheck(ch, "buf" .. i)
        if e then return e end
    end
    return "ok"
end
"#;

/// Cancels at random points of tasks hammering channels kept in globals: the channels stay
/// consistent for later requests (the stop waits for the scheduler's safe points).
#[test]
fn cancels_at_random_points_leave_shared_channels_consistent() {
    within_hang_guard(|| {
        let (isle, started) = common::isle_with_started(
            Isle::builder()
                .task_library(TaskLibrary::new().time_slice(None))
                .timeout(Duration::from_secs(20)),
        );
        isle.exec(|lua| {
            lua.load(CHECK_CHANNELS).exec()?;
            lua.load("gch = {} for i = 1, 4 do gch[i] = task.channel(i - 1) end")
                .exec()
        })
        .unwrap();
        let mut rng = rand::rng();
        for round in 0..150 {
            let request = isle
                .spawn_eval::<()>(
                    r#"
                    for i = 1, 4 do
                        task.spawn(function()
                            local a, b = gch[i], gch[i % 4 + 1]
                            while true do
                                if i % 2 == 0 then b:send(i) else a:recv() end
                                task.select({ {recv = a}, {send = b, value = i}, default = true })
                                a:try_send(i) b:try_recv()
                                task.yield()
                            end
                        end)
                    end
                    started()
                    task.sleep(100)
                    "#,
                )
                .unwrap();
            started.recv().unwrap();
            // The cancel's arrival point is what varies.
            std::thread::sleep(Duration::from_micros(rng.random_range(0..2000)));
            request.cancel();
            assert!(request.wait().unwrap_err().is_cancelled());
            let verdict: String = isle.eval("return check_all()").unwrap();
            assert_eq!(verdict, "ok", "round {round}");
        }
    });
}

/// Tasks that stay ready (yielding, preempted, or sleeping for 0 s) do not starve timers or
/// host channels.
#[test]
fn tasks_that_stay_ready_do_not_starve_timers_or_host_channels() {
    within_hang_guard(|| {
        let isle = isle_with(TaskLibrary::new());
        let got: String = isle
            .eval(
                r#"
                local done = false
                local a = task.spawn(function() while not done do task.yield() end return "a" end)
                local b = task.spawn(function() task.sleep(0.01) done = true return "b" end)
                return a:join() .. b:join()
                "#,
            )
            .unwrap();
        assert_eq!(got, "ab");
        let got: String = isle
            .eval(
                r#"
                local done = false
                local a = task.spawn(function() while not done do task.sleep(0) end return "a" end)
                local b = task.spawn(function() task.sleep(0.01) done = true return "b" end)
                return a:join() .. b:join()
                "#,
            )
            .unwrap();
        assert_eq!(got, "ab");
        if PREEMPTS {
            let got: String = isle
                .eval(
                    r#"
                    local done = false
                    local a = task.spawn(function() while not done do end return "a" end)
                    local c = task.spawn(function() while not done do end return "c" end)
                    local b = task.spawn(function() task.sleep(0.01) done = true return "b" end)
                    return a:join() .. b:join() .. c:join()
                    "#,
                )
                .unwrap();
            assert_eq!(got, "abc");
        }
        // A host message reaches a receiver while a sibling keeps sleeping for 0 s.
        let script = r#"
            local done = false
            task.spawn(function() while not done do task.sleep(0) end end)
            ready()
            local v = inbox:recv()
            done = true
            return v
        "#;
        assert_eq!(received_by(&isle, script.to_string(), 5), 5);
    });
}

/// A round cut short because the waiting code's wait fired still ends with timers and host
/// channels: two tasks that wake the waiting code in every round, each in its first step,
/// starve neither a due timer nor a host message, whether the request's own code waits or a
/// task waits in place (inside a coroutine of its own). (Each loop gives up after 10 s, far
/// past the 10 ms timer, so that starvation fails the test instead of hanging it.)
#[test]
fn a_wait_that_fires_early_in_every_round_starves_no_timer_or_host_channel() {
    // Two tasks that each hand `ch` a value in their first step of every round.
    const WAKERS: &str = r#"
        local ch = task.channel(0)
        for i = 1, 2 do
            task.spawn(function() while true do ch:send(i) task.yield() end end)
        end
    "#;
    within_hang_guard(|| {
        let isle = isle_with(TaskLibrary::new());
        let by_request: String = isle
            .eval(format!(
                r#"{WAKERS}
                local done = false
                task.delay(0.01, function() done = true end)
                local t0 = task.now()
                while not done and task.now() - t0 < 10 do ch:recv() end
                return tostring(done)
                "#
            ))
            .unwrap();
        assert_eq!(by_request, "true");
        let in_place: String = isle
            .eval(format!(
                r#"{WAKERS}
                local done = false
                task.delay(0.01, function() done = true end)
                local h = task.spawn(function()
                    coroutine.wrap(function()
                        local t0 = task.now()
                        while not done and task.now() - t0 < 10 do ch:recv() end
                    end)()
                    return tostring(done)
                end)
                return h:join()
                "#
            ))
            .unwrap();
        assert_eq!(in_place, "true");
        // A host message sent while the request keeps receiving.
        let script = format!(
            r#"{WAKERS}
            local got = nil
            task.spawn(function() got = inbox:recv() end)
            ch:recv()
            ready()
            local t0 = task.now()
            while not got and task.now() - t0 < 10 do ch:recv() end
            return got or -1
            "#
        );
        assert_eq!(received_by(&isle, script, 7), 7);
    });
}

/// When the request's own code waits and its wait fires in the middle of a round, timers due
/// by then fire before it goes on (as at the end of every round); and a task waiting in place
/// that is cancelled in a round where a later task hands it a value still gets that value
/// (the cancel is noticed when the round ends): the sender's send completes, nothing is lost.
#[test]
fn a_round_cut_short_by_the_wait_ends_like_any_other() {
    let (timers, handed): (String, String) = within_hang_guard(|| {
        let isle = isle_with(TaskLibrary::new());
        let timers = isle
            .eval(
                r#"
                local log = {}
                local ch = task.channel(0)
                task.spawn(function() task.sleep(0) log[#log + 1] = "S" end)
                task.defer(function() ch:send(1) end)
                task.defer(function() log[#log + 1] = "B" end)
                ch:recv()
                task.yield()
                return table.concat(log, ",")
                "#,
            )
            .unwrap();
        let handed = isle
            .eval(
                r#"
                local log = {}
                local ch = task.channel(0)
                local a
                task.defer(function() a:cancel() end)
                local sender = task.defer(function()
                    log[#log + 1] = "sent " .. tostring(ch:send(42))
                end)
                task.spawn(function()
                    a = task.current()
                    coroutine.wrap(function()
                        local ok, v = pcall(ch.recv, ch)
                        log[#log + 1] = "got " .. tostring(ok) .. " " .. tostring(v)
                    end)()
                end)
                task.yield()
                return table.concat(log, ",") .. " | " .. sender:status()
                "#,
            )
            .unwrap();
        (timers, handed)
    });
    assert_eq!(timers, "B,S");
    assert_eq!(handed, "sent true,got true 42 | done");
}

/// A request queued for a script resolves `Closed` when the Lua end is closed or the isle
/// goes away with it queued.
#[test]
fn queued_host_requests_resolve_when_the_lua_end_goes() {
    within_hang_guard(|| {
        let isle = isle_with(TaskLibrary::new());
        let ask = isle
            .exec(|lua| {
                let (ask, requests) = host::request_channel::<i64, i64>(lua, 8)?;
                lua.globals().set("requests", requests)?;
                Ok(ask)
            })
            .unwrap();
        let asker = ask.clone();
        let pending =
            std::thread::spawn(move || asker.request_blocking(1, Duration::from_secs(20)));
        // Once it is queued, the script closes its end without receiving it.
        while format!("{ask:?}").contains("queued: 0") {
            std::thread::yield_now();
        }
        isle.exec(|lua| lua.load("requests:close()").exec())
            .unwrap();
        assert_eq!(pending.join().unwrap(), Err(RequestError::Closed));
        assert_eq!(
            ask.request_blocking(2, Duration::from_secs(20)),
            Err(RequestError::Closed)
        );

        let isle = isle_with(TaskLibrary::new());
        let ask = isle
            .exec(|lua| {
                let (ask, requests) = host::request_channel::<i64, i64>(lua, 8)?;
                lua.globals().set("requests", requests)?;
                Ok(ask)
            })
            .unwrap();
        let asker = ask.clone();
        let pending =
            std::thread::spawn(move || asker.request_blocking(1, Duration::from_secs(20)));
        while format!("{ask:?}").contains("queued: 0") {
            std::thread::yield_now();
        }
        isle.shutdown().unwrap();
        assert_eq!(pending.join().unwrap(), Err(RequestError::Closed));
    });
}

/// Two last clones of a host sender dropped at the same time still wake the script waiting
/// on the channel.
#[test]
fn the_last_senders_dropped_at_once_still_wake_the_script() {
    within_hang_guard(|| {
        let (isle, started) =
            common::isle_with_started(Isle::builder().task_library(TaskLibrary::new()));
        for _ in 0..300 {
            let tx = isle
                .exec(|lua| {
                    let (tx, ch) = host::channel_to_lua::<i64>(lua, 4)?;
                    lua.globals().set("inbox", ch)?;
                    Ok(tx)
                })
                .unwrap();
            let waiting = isle
                .spawn_eval::<bool>("started() return inbox:recv() == nil")
                .unwrap();
            started.recv().unwrap();
            let barrier = Arc::new(Barrier::new(2));
            let (tx2, b2) = (tx.clone(), barrier.clone());
            let other = std::thread::spawn(move || {
                b2.wait();
                drop(tx2);
            });
            barrier.wait();
            drop(tx);
            other.join().unwrap();
            assert!(waiting.wait().unwrap());
        }
    });
}

/// A script sending to Rust over a channel that stays full learns of room as soon as Rust
/// takes an item, however the two interleave.
#[test]
fn a_script_waiting_for_room_never_misses_a_receive() {
    within_hang_guard(|| {
        let isle = isle_with(TaskLibrary::new());
        let rx = isle
            .exec(|lua| {
                let (rx, ch) = host::channel_from_lua::<i64>(lua, 1)?;
                lua.globals().set("out", ch)?;
                Ok(rx)
            })
            .unwrap();
        let sending = isle
            .spawn_eval::<bool>("for i = 1, 20000 do assert(out:send(i)) end return true")
            .unwrap();
        let mut rng = rand::rng();
        for i in 1..=20000 {
            if rng.random_range(0..8) == 0 {
                std::thread::yield_now();
            }
            assert_eq!(rx.recv_blocking(), Ok(i));
        }
        assert!(sending.wait().unwrap());
    });
}

/// Shutting down while a script waits for room on a full channel to Rust (which Rust does not
/// drain) ends the script instead of waiting for the host.
#[test]
fn shutdown_does_not_wait_for_a_script_blocked_sending_to_rust() {
    within_hang_guard(|| {
        let (isle, started) =
            common::isle_with_started(Isle::builder().task_library(TaskLibrary::new()));
        let rx = isle
            .exec(|lua| {
                let (rx, ch) = host::channel_from_lua::<i64>(lua, 1)?;
                lua.globals().set("out", ch)?;
                Ok(rx)
            })
            .unwrap();
        let sending = isle
            .spawn_eval::<bool>("started() return out:send(1) and out:send(2)")
            .unwrap();
        started.recv().unwrap();
        isle.shutdown().unwrap();
        assert!(!sending.wait().unwrap());
        assert_eq!(rx.try_recv(), Ok(1));
    });
}

/// A task cancelled at the end of its request runs `__close` handlers that try to spawn: the
/// spawn fails instead of opening a scope that later requests would inherit.
#[cfg(any(feature = "lua54", feature = "lua55"))]
#[test]
fn close_handlers_at_request_end_cannot_leave_tasks_behind() {
    within_hang_guard(|| {
        let isle = isle_with(TaskLibrary::new());
        isle.exec(|lua| {
            lua.load(
                r#"
                ran = 0
                task.spawn(function()
                    local x <close> = setmetatable({}, {__close = function()
                        task.spawn(function() while true do task.sleep(0.001) ran = ran + 1 end end)
                    end})
                    task.sleep(100)
                end)
                "#,
            )
            .exec()
        })
        .unwrap();
        let ran: i64 = isle.eval("task.sleep(0.02) return ran").unwrap();
        assert_eq!(ran, 0);
    });
}

/// Preemption delivers one signal per slice: a task sitting in a blocking host call is not
/// signalled again and again.
#[cfg(unix)]
#[test]
fn preemption_signals_a_task_in_a_host_call_once_per_slice() {
    if !PREEMPTS {
        return;
    }
    within_hang_guard(|| {
        let isle = Isle::builder()
            .task_library(TaskLibrary::new())
            .spawn(|lua| {
                // Sleeps ~100 ms in 1 ms polls, counting the ones a signal cut short.
                let nap = lua.create_function(|_, ()| {
                    let mut interrupted = 0;
                    for _ in 0..100 {
                        // SAFETY: a poll on no descriptors only sleeps.
                        let r = unsafe { libc::poll(std::ptr::null_mut(), 0, 1) };
                        if r < 0 {
                            interrupted += 1;
                        }
                    }
                    Ok(interrupted)
                })?;
                lua.globals().set("nap", nap)
            })
            .unwrap();
        let interrupted: i64 = isle
            .eval("return task.spawn(function() return nap() end):join()")
            .unwrap();
        assert!(interrupted <= 1, "{interrupted} polls cut short");
    });
}

/// Host requests cannot be received in coroutine requests (their answers would be owed
/// across suspensions other requests end).
#[cfg(feature = "tokio")]
#[tokio::test]
async fn coroutine_requests_cannot_receive_host_requests() {
    let (isle, _driver) = mlua_isle::AsyncIsle::builder()
        .task_library(TaskLibrary::new())
        .spawn_async(|_| Ok(()))
        .await
        .unwrap();
    let ask = isle
        .exec(|lua| {
            let (ask, requests) = host::request_channel::<i64, i64>(lua, 8)?;
            lua.globals().set("requests", requests)?;
            Ok(ask)
        })
        .await
        .unwrap();
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = Arc::new(AtomicBool::new(false));
    let asking = {
        let flag = flag.clone();
        tokio::spawn(async move {
            let answer = ask.request(1).await;
            flag.store(true, Ordering::SeqCst);
            answer
        })
    };
    let err = isle
        .coroutine_eval::<()>("requests:try_recv()")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("coroutine"), "{err}");
    // A plain request can still serve it.
    isle.eval::<()>("local req = requests:recv() req:reply(req.value + 1)")
        .await
        .unwrap();
    assert_eq!(asking.await.unwrap(), Ok(2));
    assert!(flag.load(Ordering::SeqCst));
}

/// A task killed while the request's own code waits in place runs its `__close` handlers with
/// no task current: a handler that waits gets a wait of its own, not the one being waited on
/// (which it used to reset, so that the request received the handler's value and the other
/// sender blocked for good).
#[cfg(any(feature = "lua54", feature = "lua55"))]
#[test]
fn a_close_handler_waiting_while_the_request_waits_does_not_take_its_wait() {
    within_hang_guard(|| {
        let isle = isle_with(TaskLibrary::new());
        let got: String = isle
            .eval(
                r#"
                local a_ch, b_ch = task.channel(0), task.channel(0)
                local got
                task.spawn(function()
                    local guard <close> = setmetatable({}, {
                        __close = function() got = b_ch:recv() end,
                    })
                    task.yield()
                    task.current():cancel()
                end)
                task.spawn(function() task.yield() task.yield() b_ch:send("from b") end)
                task.spawn(function() task.yield() task.yield() task.yield() a_ch:send("from a") end)
                local v = a_ch:recv()
                return tostring(v) .. " / " .. tostring(got)
                "#,
            )
            .unwrap();
        assert_eq!(got, "from a / from b");
    });
}

/// A script that plants a wait with a timer (a `select` with an `after` case) as the wait a
/// plain receive reuses: the timer is taken off, so it cannot end the receive early with a
/// value nobody sent.
#[test]
fn a_planted_wait_with_a_timer_does_not_end_a_receive_early() {
    within_hang_guard(|| {
        let isle = isle_with(TaskLibrary::new());
        let got: String = isle
            .eval(
                r#"
                local ch, ch2 = task.channel(0), task.channel(0)
                local b = task.spawn(function()
                    return task.select{ {recv = ch}, {after = 0.05} }
                end)
                b.scope.rootw = b.w
                task.spawn(function() task.sleep(0.2) ch2:send("x") end)
                local v, ok = ch2:recv()
                return tostring(v) .. " " .. tostring(ok)
                "#,
            )
            .unwrap();
        assert_eq!(got, "x true");
    });
}

/// A script writing a sleeping task's timer slots (the handle's slots 1 to 3) can reorder its
/// own request's timers or make their comparisons raise, but not hang the isle's thread where
/// no stop reaches it, nor leave a hole in the heap that breaks every later timer.
#[test]
fn a_tampered_task_handle_cannot_hang_or_break_the_timers() {
    within_hang_guard(|| {
        let isle = isle_with(TaskLibrary::new());
        // The heap index: the timer still fires.
        let woke: String = isle
            .eval(
                r#"
                local h = task.spawn(function() task.sleep(0.01) return "woke" end)
                h[3] = "x"
                return tostring(h:join())
                "#,
            )
            .unwrap();
        assert_eq!(woke, "woke");
        // The deadline, as a string: a sleep fails, the heap stays whole, later timers work.
        let after: String = isle
            .eval(
                r#"
                local h = task.spawn(function() task.sleep(10) end)
                local saved = h[1]
                h[1] = "soon"
                local ok = pcall(task.sleep, 0.001)
                h[1] = saved
                h:cancel()
                local w = task.spawn(function() task.sleep(0.001) return "woke" end)
                return tostring(ok) .. " " .. tostring(w:join())
                "#,
            )
            .unwrap();
        // (Where tasks can sleep on their own — Lua 5.3+, Luau — the handle is on the heap.)
        let expected = if PREEMPTS { "false woke" } else { "true woke" };
        assert_eq!(after, expected);
        assert_eq!(isle.eval::<i64>("return 1 + 1").unwrap(), 2);
    });
}

/// The memory a full collection leaves in `isle`'s VM.
fn memory_after_collection(isle: &Isle) -> usize {
    isle.exec(|lua| {
        lua.gc_collect()?;
        lua.gc_collect()?;
        Ok(lua.used_memory())
    })
    .unwrap()
}

/// After a request whose tasks filled the VM: its scope's tasks are garbage (a collection
/// gives the memory back) and the next requests work, the task library included.
fn assert_scope_released(isle: &Isle, before: usize) {
    let after = memory_after_collection(isle);
    assert!(
        after < before + (2 << 20),
        "the ended scope's tasks are still alive: {after} bytes after, {before} before"
    );
    assert_eq!(isle.eval::<i64>("return 1").unwrap(), 1);
    let joined: i64 = isle
        .eval("local t = task.spawn(function() task.yield() return 7 end) return t:join()")
        .unwrap();
    assert_eq!(joined, 7);
    let deferred: i64 = isle
        .eval(
            "local ch = task.channel(1)
             for i = 1, 1000 do task.defer(function() end) end
             task.defer(function() ch:send(5) end)
             return ch:recv()",
        )
        .unwrap();
    assert_eq!(deferred, 5);
}

/// Tasks spawned until the memory limit: the request ends with the memory error, and ending
/// its scope (which writes to every task) cannot fail for lack of memory and pin the scope.
fn flood_to_the_memory_limit(builder: mlua_isle::IsleBuilder, flood: &str) {
    let isle = builder
        .task_library(TaskLibrary::new())
        .spawn(|_| Ok(()))
        .unwrap();
    let before = memory_after_collection(&isle);
    match isle.eval::<()>(flood) {
        Err(mlua_isle::IsleError::Lua(e)) => {
            assert_eq!(e.kind(), mlua_isle::LuaErrorKind::Memory, "{e}")
        }
        // (A deadline may pass first, under the sandbox's default timeout.)
        Err(mlua_isle::IsleError::Timeout) => {}
        other => panic!("expected a memory error, got {other:?}"),
    }
    assert_scope_released(&isle, before);
}

#[test]
fn a_scope_flooded_to_the_memory_limit_ends_and_is_released() {
    within_hang_guard(|| {
        for flood in [
            "while true do task.defer(function() end) end",
            "while true do task.spawn(function() task.sleep(100) end) end",
        ] {
            flood_to_the_memory_limit(Isle::builder().memory_limit(32 << 20), flood);
        }
    });
}

#[test]
fn a_sandboxed_scope_flooded_to_the_memory_limit_ends_and_is_released() {
    within_hang_guard(|| {
        for flood in [
            "while true do task.defer(function() end) end",
            "while true do task.spawn(function() task.sleep(100) end) end",
        ] {
            flood_to_the_memory_limit(Isle::builder().sandboxed(), flood);
        }
    });
}

/// The same, with the request cancelled while its tasks fill the VM: the scope is ended
/// without running the tasks' code, still with no memory to spare.
fn cancelled_with_the_memory_full(builder: mlua_isle::IsleBuilder) {
    let (isle, started) = common::isle_with_started(
        builder
            .task_library(TaskLibrary::new())
            .timeout(Duration::from_secs(20)),
    );
    let before = memory_after_collection(&isle);
    // (Some room is given back before `started()`, which the emergency collection of Lua 5.2+
    // or the next step of the others frees: far less than ending the scope wrote before.)
    let flooding = isle
        .spawn_eval::<()>(
            r#"
            local ballast = string.rep("x", 256 * 1024)
            pcall(function()
                while true do task.spawn(function() task.sleep(100) end) end
            end)
            ballast = nil
            started()
            while true do end
            "#,
        )
        .unwrap();
    common::wait_started(&started);
    flooding.cancel();
    assert!(matches!(
        flooding.wait(),
        Err(mlua_isle::IsleError::Cancelled)
    ));
    assert_scope_released(&isle, before);
}

#[test]
fn a_scope_cancelled_with_the_memory_full_is_released() {
    within_hang_guard(|| {
        cancelled_with_the_memory_full(Isle::builder().memory_limit(32 << 20));
    });
}

#[test]
fn a_sandboxed_scope_cancelled_with_the_memory_full_is_released() {
    within_hang_guard(|| {
        cancelled_with_the_memory_full(Isle::builder().sandboxed());
    });
}
