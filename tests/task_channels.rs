//! The `task` library's channels and `select`, attacked from every side: FIFO order and
//! rendezvous hand-offs, every `try_*` result, close semantics, one waiter woken per item,
//! buffered values visible to the collector, cancellation at every blocking point, fairness,
//! closed cases reported once, scopes across requests, hostile scripts and the async isle.
//!
//! Every scenario coordinates through channels and joins; time is only used by the cases that
//! test timers, and as a hang guard.

mod common;

use common::{isle_with_started, wait_started, within_hang_guard};
use mlua_isle::{Isle, TaskLibrary};

/// Whether the VM can yield across `pcall` (every supported version except Lua 5.1).
const YIELD_ACROSS_PCALL: bool = !cfg!(feature = "lua51");

fn isle() -> Isle {
    Isle::builder()
        .task_library(TaskLibrary::new())
        .spawn(|lua| lua.globals().set("YIELD_ACROSS_PCALL", YIELD_ACROSS_PCALL))
        .unwrap()
}

/// Runs `code` on a fresh isle: it must finish without raising (it checks with `assert`).
#[track_caller]
fn run(code: &'static str) {
    if let Err(e) = within_hang_guard(move || isle().eval::<()>(code)) {
        panic!("{e}");
    }
}

/// Runs `code` on a fresh isle and returns its result.
#[track_caller]
fn eval<T: mlua::FromLuaMulti + Send + 'static>(code: &'static str) -> T {
    match within_hang_guard(move || isle().eval::<T>(code)) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Channel basics
// ---------------------------------------------------------------------------------------------

#[test]
fn buffered_channel_is_fifo_and_reports_len_and_capacity() {
    run(r#"
        local ch = task.channel(3)
        assert(ch:capacity() == 3 and ch:len() == 0 and not ch:is_closed())
        assert(ch:send("a") == true and ch:len() == 1)
        assert(ch:send("b") == true and ch:len() == 2)
        assert(ch:send("c") == true and ch:len() == 3)
        local ok, why = ch:try_send("d")
        assert(ok == false and why == "full", tostring(why))
        assert(ch:len() == 3)
        for _, want in ipairs({"a", "b", "c"}) do
            local v, ok = ch:recv()
            assert(v == want and ok == true, tostring(v))
        end
        assert(ch:len() == 0 and ch:capacity() == 3)
    "#);
}

#[test]
fn fifo_order_holds_through_a_small_buffer_with_both_sides_blocking() {
    run(r#"
        for _, cap in ipairs({0, 1, 2, 7}) do
            local ch = task.channel(cap)
            local producer = task.spawn(function()
                for i = 1, 200 do assert(ch:send(i)) end
                ch:close()
                return "produced"
            end)
            local expect = 1
            for v in ch:iter() do
                assert(v == expect, "cap " .. cap .. ": got " .. tostring(v) .. " want " .. expect)
                assert(ch:len() <= cap, "len above capacity")
                expect = expect + 1
            end
            assert(expect == 201)
            assert(producer:join() == "produced")
        end
    "#);
}

#[test]
fn rendezvous_send_blocks_until_a_receiver_takes_the_value() {
    run(r#"
        local ch = task.channel(0)
        assert(ch:capacity() == 0)
        local returned = nil
        local sender = task.spawn(function()
            returned = ch:send("x")
            return "sent"
        end)
        -- Nobody received: the sender is still blocked, nothing is buffered.
        assert(sender:status() == "waiting", sender:status())
        assert(returned == nil and ch:len() == 0)
        task.yield()
        assert(sender:status() == "waiting" and returned == nil)
        local v, ok = ch:recv()
        assert(v == "x" and ok == true)
        assert(ch:len() == 0)
        assert(sender:join() == "sent")
        assert(returned == true)

        -- The other way round: a receiver waits first, a send hands over at once.
        local got
        local receiver = task.spawn(function() got = ch:recv() end)
        assert(receiver:status() == "waiting")
        assert(ch:send("y") == true)
        receiver:join()
        assert(got == "y")

        -- With nobody on the other side, the non-blocking forms fail.
        local ok2, why = ch:try_send("z")
        assert(ok2 == false and why == "full", tostring(why))
        local v2, ok3 = ch:try_recv()
        assert(v2 == nil and ok3 == nil)
    "#);
}

#[test]
fn try_send_and_try_recv_in_every_state() {
    run(r#"
        local function r2(...) return select('#', ...), ... end
        local ch = task.channel(2)
        -- Empty, open.
        local n, v, ok = r2(ch:try_recv())
        assert(n == 2 and v == nil and ok == nil, "empty: " .. tostring(ok))
        -- Partly full.
        assert(ch:try_send(1) == true)
        -- Full.
        assert(ch:try_send(2) == true)
        local sent, why = ch:try_send(3)
        assert(sent == false and why == "full")
        -- Take one: room again.
        v, ok = ch:try_recv()
        assert(v == 1 and ok == true)
        assert(ch:try_send(3) == true)
        -- Closed with items: sends fail with "closed", receives still drain.
        assert(ch:close() == true)
        assert(ch:close() == false)
        assert(ch:is_closed())
        sent, why = ch:try_send(4)
        assert(sent == false and why == "closed", tostring(why))
        assert(ch:send(4) == false)
        v, ok = ch:try_recv()
        assert(v == 2 and ok == true)
        v, ok = ch:try_recv()
        assert(v == 3 and ok == true)
        -- Closed and empty.
        n, v, ok = r2(ch:try_recv())
        assert(n == 2 and v == nil and ok == false)
        v, ok = ch:recv()
        assert(v == nil and ok == false)

        -- Rendezvous: try_send succeeds only into a waiting receiver, try_recv only from a
        -- waiting sender.
        local rv = task.channel(0)
        local got
        local r = task.spawn(function() got = {rv:recv()} end)
        assert(rv:try_send("to receiver") == true)
        r:join()
        assert(got[1] == "to receiver" and got[2] == true)
        local s = task.spawn(function() return rv:send("from sender") end)
        v, ok = rv:try_recv()
        assert(v == "from sender" and ok == true)
        assert(s:join() == true)
        -- Falsy but non-nil values travel.
        local f = task.channel(1)
        assert(f:try_send(false) == true)
        v, ok = f:try_recv()
        assert(v == false and ok == true)
    "#);
}

#[test]
fn close_keeps_buffered_items_and_releases_blocked_senders_and_receivers() {
    run(r#"
        -- Blocked senders get false; their values are never delivered.
        local ch = task.channel(1)
        assert(ch:send("kept"))
        local results = {}
        local senders = {}
        for i = 1, 3 do
            senders[i] = task.spawn(function() results[i] = ch:send("lost" .. i) end)
            assert(senders[i]:status() == "waiting")
        end
        assert(ch:close() == true)
        for i = 1, 3 do
            senders[i]:join()
            assert(results[i] == false, "sender " .. i .. " got " .. tostring(results[i]))
        end
        assert(ch:len() == 1)
        local v, ok = ch:recv()
        assert(v == "kept" and ok == true)
        v, ok = ch:recv()
        assert(v == nil and ok == false)

        -- Blocked receivers get nil, false.
        local empty = task.channel(0)
        local got = {}
        local receivers = {}
        for i = 1, 3 do
            receivers[i] = task.spawn(function() got[i] = {empty:recv()} end)
        end
        empty:close()
        for i = 1, 3 do
            receivers[i]:join()
            assert(got[i][1] == nil and got[i][2] == false)
        end
        -- Closing from a task while the request's own code waits in recv.
        local c2 = task.channel(0)
        task.defer(function() c2:close() end)
        v, ok = c2:recv()
        assert(v == nil and ok == false)
    "#);
}

#[test]
fn iteration_ends_on_close_and_passes_false_values() {
    run(r#"
        local ch = task.channel(0)
        task.spawn(function()
            for _, v in ipairs({1, false, "three", 4}) do ch:send(v) end
            ch:close()
        end)
        local seen = {}
        for v in ch:iter() do seen[#seen + 1] = tostring(v) end
        assert(table.concat(seen, ",") == "1,false,three,4", table.concat(seen, ","))

        -- `for v in ch do` (via __call, or __iter on Luau).
        local ch2 = task.channel(2)
        task.spawn(function()
            for i = 1, 5 do ch2:send(i) end
            ch2:close()
        end)
        local sum = 0
        for v in ch2 do sum = sum + v end
        assert(sum == 15, sum)
        -- Iterating an already closed, drained channel ends at once.
        local n = 0
        for _ in ch2:iter() do n = n + 1 end
        for _ in ch2 do n = n + 1 end
        assert(n == 0)
    "#);
}

#[test]
fn iterating_a_channel_inside_a_task() {
    if !YIELD_ACROSS_PCALL {
        // Lua 5.1 cannot yield from a for iterator; see the test below.
        return;
    }
    run(r#"
        local ch = task.channel(1)
        local h = task.spawn(function()
            local seen = {}
            for v in ch:iter() do seen[#seen + 1] = v end
            for v in ch do seen[#seen + 1] = v end -- already closed: ends at once
            return table.concat(seen, ",")
        end)
        for i = 1, 5 do ch:send(i) end
        ch:close()
        assert(h:join() == "1,2,3,4,5")
    "#);
}

#[test]
fn a_receive_that_cannot_yield_fails_without_losing_a_value() {
    // On Lua 5.1 a for iterator cannot yield, so `for v in ch:iter()` fails inside a task; on
    // the other versions the loop works. Either way no value may go missing.
    run(r#"
        local ch = task.channel(0)
        local h = task.spawn(function()
            local n = 0
            for v in ch:iter() do n = n + v end
            return n
        end)
        local blocked = h:status() == "waiting"
        if blocked then
            assert(ch:send(1) and ch:send(2))
            ch:close()
            assert(h:join() == 3)
        else
            assert(h:status() == "failed")
            local sent = ch:try_send(1)
            assert(sent == false, "a value was handed to the failed task's receive")
        end
    "#);
}

#[test]
fn sending_nil_raises_everywhere() {
    run(r#"
        local ch = task.channel(1)
        local ok, e = pcall(ch.send, ch, nil)
        assert(not ok and tostring(e):find("nil"), tostring(e))
        ok, e = pcall(ch.try_send, ch, nil)
        assert(not ok and tostring(e):find("nil"), tostring(e))
        ok, e = pcall(task.select, { {send = ch, value = nil} })
        assert(not ok and tostring(e):find("nil"), tostring(e))
        -- Nothing was sent by the failed calls.
        assert(ch:len() == 0)
        -- Even on a closed channel, nil is a usage error rather than a `false`.
        ch:close()
        ok, e = pcall(ch.send, ch, nil)
        assert(not ok)
    "#);
}

#[test]
fn bad_arguments_raise_clear_errors() {
    run(r#"
        local function fails(pattern, f, ...)
            local ok, e = pcall(f, ...)
            assert(not ok, "expected an error matching " .. pattern)
            assert(type(e) == "string" and e:find(pattern, 1, true),
                "error '" .. tostring(e) .. "' does not mention '" .. pattern .. "'")
        end
        fails("non-negative integer", task.channel, -1)
        fails("non-negative integer", task.channel, 1.5)
        fails("non-negative integer", task.channel, "3")
        fails("non-negative integer", task.channel, {})
        fails("non-negative integer", task.channel, 0/0)
        local ch = task.channel(1)
        fails("channel expected", ch.send, {}, 1)
        fails("channel expected", ch.recv, 42)
        fails("channel expected", ch.try_send, nil, 1)
        fails("channel expected", ch.try_recv, "ch")
        fails("channel expected", ch.close, {})
        fails("channel expected", ch.len, {})
        fails("channel expected", ch.capacity, {})
        fails("channel expected", ch.is_closed, {})
        fails("channel expected", ch.iter, {})
        -- A task handle or ticker is not a channel, nor the reverse.
        local h = task.spawn(function() end)
        fails("channel expected", ch.send, h, 1)
        fails("task expected", h.join, ch)
        fails("table of cases", task.select, 42)
        fails("table expected", task.select, { 42 })
        fails("recv expects a channel", task.select, { {recv = 42} })
        fails("send expects a channel", task.select, { {send = {}, value = 1} })
        fails("join expects a task", task.select, { {join = ch} })
        fails("tick expects a ticker", task.select, { {tick = ch} })
        fails("after expects seconds", task.select, { {after = "soon"} })
        fails("expected a recv", task.select, { {} })
        fails("expected a recv", task.select, { {revc = ch} })
        -- Nothing was left registered by the failed calls.
        assert(ch:try_send(1) == true and ch:len() == 1)
    "#);
}

#[test]
fn impostor_objects_are_rejected_with_clear_errors() {
    run(r#"
        local function fails(pattern, f, ...)
            local ok, e = pcall(f, ...)
            assert(not ok, "expected an error matching " .. pattern)
            assert(type(e) == "string" and e:find(pattern, 1, true),
                "error '" .. tostring(e) .. "' does not mention '" .. pattern .. "'")
        end
        local ch = task.channel(1)
        local fake_ch = setmetatable({}, {__metatable = "channel"})
        local fake_task = setmetatable({}, {__metatable = "task"})
        fails("channel expected", ch.send, fake_ch, 1)
        fails("channel expected", ch.recv, fake_ch)
        fails("task expected", task.spawn(function() end).join, fake_task)
        fails("recv expects a channel", task.select, { {recv = fake_ch} })
    "#);
}

// ---------------------------------------------------------------------------------------------
// One waiter woken per item
// ---------------------------------------------------------------------------------------------

#[test]
fn one_send_wakes_exactly_one_of_many_blocked_receivers() {
    run(r#"
        for _, cap in ipairs({0, 1, 5}) do
            local ch = task.channel(cap)
            local woken = 0
            local hs = {}
            for i = 1, 10 do
                hs[i] = task.spawn(function()
                    local v, ok = ch:recv()
                    if ok then woken = woken + 1 end
                    return v
                end)
                assert(hs[i]:status() == "waiting")
            end
            local function waiting()
                local n = 0
                for i = 1, 10 do if hs[i]:status() == "waiting" then n = n + 1 end end
                return n
            end
            assert(ch:send("a") == true)
            task.yield()
            task.yield()
            assert(woken == 1, "cap " .. cap .. ": one send woke " .. woken)
            assert(waiting() == 9)
            -- First come, first served.
            assert(hs[1]:status() == "done" and hs[1]:join() == "a")
            -- Nothing was buffered: the item went to the receiver.
            assert(ch:len() == 0)
            ch:send("b")
            ch:send("c")
            task.yield()
            assert(woken == 3, woken)
            assert(waiting() == 7)
            ch:close()
            for i = 1, 10 do hs[i]:join() end
            assert(woken == 3)
        end
    "#);
}

#[test]
fn one_send_from_a_task_wakes_one_selecting_receiver() {
    run(r#"
        local ch, other = task.channel(0), task.channel(0)
        local woken = 0
        local hs = {}
        for i = 1, 8 do
            hs[i] = task.spawn(function()
                local idx, v = task.select{ {recv = other}, {recv = ch} }
                woken = woken + 1
                return idx, v
            end)
        end
        local sender = task.spawn(function() return ch:send("one") end)
        assert(sender:join() == true)
        task.yield()
        assert(woken == 1, woken)
        local waiting = 0
        for i = 1, 8 do if hs[i]:status() == "waiting" then waiting = waiting + 1 end end
        assert(waiting == 7, waiting)
        -- The woken select left no registration on `other`: a send there wakes one more.
        assert(other:send("two") == true)
        task.yield()
        assert(woken == 2, woken)
        for i = 1, 8 do hs[i]:cancel() end
    "#);
}

#[test]
fn one_receive_releases_exactly_one_of_many_blocked_senders() {
    run(r#"
        for _, cap in ipairs({0, 1, 3}) do
            local ch = task.channel(cap)
            for i = 1, cap do ch:send(0) end
            local released = 0
            local hs = {}
            for i = 1, 10 do
                hs[i] = task.spawn(function()
                    local ok = ch:send(i)
                    if ok then released = released + 1 end
                end)
                assert(hs[i]:status() == "waiting")
            end
            local v = ch:recv()
            task.yield()
            assert(released == 1, "cap " .. cap .. ": one recv released " .. released)
            assert(ch:len() == cap, "len " .. ch:len())
            -- The buffer holds the first waiting sender's value at its end.
            local drained = {}
            for i = 1, cap do drained[i] = ch:try_recv() end
            if cap > 0 then
                assert(v == 0 and drained[cap] == 1, "cap " .. cap)
            else
                assert(v == 1)
            end
            for i = 1, 10 do hs[i]:cancel() end
        end
    "#);
}

// ---------------------------------------------------------------------------------------------
// The collector sees what channels hold
// ---------------------------------------------------------------------------------------------

#[test]
fn a_dropped_channel_holding_a_cycle_through_itself_is_collected() {
    run(r#"
        local weak = setmetatable({}, {__mode = "k"})
        local function make()
            local ch = task.channel(4)
            ch:send({ch = ch})
            ch:send(ch)
            local other = task.channel(1)
            other:send(ch)
            ch:send(other)
            weak[ch] = true
            weak[other] = true
        end
        make()
        collectgarbage("collect")
        collectgarbage("collect")
        assert(next(weak) == nil, "a channel that only its own buffer references was kept")
    "#);
}

#[test]
fn buffered_values_stay_alive_while_buffered() {
    run(r#"
        local weak = setmetatable({}, {__mode = "v"})
        local ch = task.channel(3)
        local function fill()
            local a, b = {name = "a"}, {name = "b"}
            weak[1], weak[2] = a, b
            ch:send(a)
            ch:send(b)
        end
        fill()
        collectgarbage("collect")
        collectgarbage("collect")
        assert(weak[1] and weak[2], "a buffered value was collected")
        assert(ch:recv().name == "a" and ch:recv().name == "b")

        -- A value a blocked sender holds is kept too.
        local rv = task.channel(0)
        local h = task.spawn(function() rv:send({name = "held"}) end)
        collectgarbage("collect")
        assert(rv:recv().name == "held")
        h:join()
    "#);
}

#[test]
fn a_buffered_global_channel_keeps_its_items_across_requests_and_collections() {
    within_hang_guard(|| {
        let isle = isle();
        isle.eval::<()>(r#"kept = task.channel(2) kept:send({n = 1}) kept:send({n = 2})"#)
            .unwrap();
        let sum: i64 = isle
            .eval(
                r#"
                collectgarbage("collect")
                collectgarbage("collect")
                return kept:recv().n + kept:recv().n
                "#,
            )
            .unwrap();
        assert_eq!(sum, 3);
    });
}

#[test]
fn tasks_of_ended_requests_are_not_kept_alive_by_a_channel_they_waited_on() {
    within_hang_guard(|| {
        let isle = isle();
        isle.eval::<()>(r#"weak = setmetatable({}, {__mode = "k"}) shared = task.channel(0)"#)
            .unwrap();
        for _ in 0..50 {
            isle.eval::<()>(
                r#"
                local h = task.spawn(function()
                    local big = {}
                    for i = 1, 1000 do big[i] = i end
                    shared:recv()
                    return big
                end)
                weak[h] = true
                "#,
            )
            .unwrap();
        }
        let left: i64 = isle
            .eval(
                r#"
                collectgarbage("collect")
                collectgarbage("collect")
                local n = 0
                for _ in pairs(weak) do n = n + 1 end
                return n
                "#,
            )
            .unwrap();
        assert_eq!(left, 0, "tasks of ended requests are still reachable");
    });
}

// ---------------------------------------------------------------------------------------------
// Cancellation consistency
// ---------------------------------------------------------------------------------------------

#[test]
fn a_sender_cancelled_while_blocked_leaves_no_trace() {
    run(r#"
        -- Buffered: the channel is full, the sender waits.
        local ch = task.channel(1)
        ch:send("a")
        local s = task.spawn(function() ch:send("never") end)
        assert(s:status() == "waiting")
        assert(s:cancel() == true)
        assert(s:status() == "cancelled")
        assert(ch:len() == 1)
        assert(ch:recv() == "a")
        local v, ok = ch:try_recv()
        assert(v == nil and ok == nil, "the cancelled sender's value arrived: " .. tostring(v))
        -- Room for exactly one again: no slot is taken by the cancelled sender.
        assert(ch:try_send("b") == true)
        local sent, why = ch:try_send("c")
        assert(sent == false and why == "full")
        assert(ch:recv() == "b")

        -- Rendezvous: a cancelled sender is no longer a partner for a receiver.
        local rv = task.channel(0)
        local s2 = task.spawn(function() rv:send("ghost") end)
        s2:cancel()
        v, ok = rv:try_recv()
        assert(v == nil and ok == nil, "got " .. tostring(v))
        local got
        local r = task.spawn(function() got = rv:recv() end)
        assert(rv:send("real") == true)
        r:join()
        assert(got == "real")
        -- Close after the cancel: nobody is left to be told.
        assert(rv:close() == true)
    "#);
}

#[test]
fn a_value_handed_to_a_receiver_cancelled_before_it_runs_goes_to_the_next_receiver() {
    run(r#"
        local ch = task.channel(0)
        local log = {}
        local r1 = task.spawn(function() log[#log + 1] = "r1:" .. tostring(ch:recv()) end)
        local r2 = task.spawn(function() log[#log + 1] = "r2:" .. tostring(ch:recv()) end)
        -- Handed to r1 (first in line), which has not run yet.
        assert(ch:send("v") == true)
        assert(r1:cancel() == true)
        r2:join()
        assert(#log == 1 and log[1] == "r2:v", table.concat(log, " "))

        -- With no other receiver, the value stays in the channel for the next one.
        local ch2 = task.channel(0)
        local r3 = task.spawn(function() return ch2:recv() end)
        ch2:send("w")
        r3:cancel()
        local v, ok = ch2:try_recv()
        assert(v == "w" and ok == true, "lost: " .. tostring(v))

        -- Buffered channel: the put-back value keeps its place at the front.
        local ch3 = task.channel(2)
        local r4 = task.spawn(function() return ch3:recv() end)
        ch3:send(1)  -- to r4
        ch3:send(2)  -- buffered
        r4:cancel()
        assert(ch3:recv() == 1)
        assert(ch3:recv() == 2)

        -- The same through select.
        local ch4 = task.channel(0)
        local r5 = task.spawn(function() return task.select{ {recv = ch4} } end)
        ch4:send("s")
        r5:cancel()
        v, ok = ch4:try_recv()
        assert(v == "s" and ok == true)
    "#);
}

#[test]
fn a_rendezvous_sender_is_released_only_by_a_receiver_even_after_a_put_back() {
    run(r#"
        local ch = task.channel(0)
        local r = task.spawn(function() return ch:recv() end)
        assert(ch:send("a"))
        r:cancel() -- "a" goes back into the channel
        local returned = false
        local s = task.spawn(function() local ok = ch:send("b") returned = true return ok end)
        assert(s:status() == "waiting")
        assert(ch:recv() == "a")
        task.yield()
        assert(not returned, "rendezvous send returned while its value sits unreceived in the channel")
        assert(ch:len() <= ch:capacity(), "len " .. ch:len() .. " > capacity 0")
        assert(ch:recv() == "b")
        assert(s:join() == true)
    "#);
}

#[test]
fn a_select_cancelled_while_blocked_leaves_no_registration() {
    run(r#"
        local a, b, c = task.channel(0), task.channel(0), task.channel(0)
        local h = task.spawn(function()
            return task.select{ {recv = a}, {recv = b}, {send = c, value = "ghost"}, {after = 1000} }
        end)
        assert(h:status() == "waiting")
        h:cancel()
        -- No receiver left on a or b, no sender on c.
        local sent, why = a:try_send(1)
        assert(sent == false and why == "full")
        sent, why = b:try_send(1)
        assert(sent == false and why == "full")
        local v, ok = c:try_recv()
        assert(v == nil and ok == nil, "got " .. tostring(v))
        -- And no timer: a wait nothing can end is reported at once, not after 1000 s.
        local t0 = task.now()
        local okw, e = pcall(function() task.channel(0):recv() end)
        assert(not okw and tostring(e):find("deadlock"), tostring(e))
        assert(task.now() - t0 < 5)
    "#);
}

#[test]
fn a_task_cancelled_in_sleep_leaves_no_timer_and_never_runs_again() {
    run(r#"
        local ran = false
        local h = task.spawn(function() task.sleep(1000) ran = true end)
        local d = task.delay(1000, function() ran = true end)
        local tk = task.ticker(1000)
        local t = task.spawn(function() tk:next() ran = true end)
        h:cancel() d:cancel() t:cancel()
        assert(h:status() == "cancelled" and d:status() == "cancelled" and t:status() == "cancelled")
        local t0 = task.now()
        local ok, e = pcall(function() task.channel(0):recv() end)
        assert(not ok and tostring(e):find("deadlock"), tostring(e))
        assert(task.now() - t0 < 5)
        task.sleep(0.01)
        assert(not ran)
    "#);
}

#[test]
fn a_value_handed_to_a_task_when_the_request_ends_is_found_by_the_next_request() {
    within_hang_guard(|| {
        let isle = isle();
        isle.eval::<()>(
            "ch = task.channel(0) sel = task.channel(0) buf = task.channel(2) got = {}",
        )
        .unwrap();
        // The request returns right after handing values over: the receivers never ran.
        isle.eval::<()>(
            r#"
            task.spawn(function() got[#got + 1] = ch:recv() end)
            task.spawn(function() local _, v = task.select{ {recv = sel} } got[#got + 1] = v end)
            task.spawn(function() got[#got + 1] = buf:recv() end)
            assert(ch:send("plain") and sel:send("select") and buf:send("buffered"))
            "#,
        )
        .unwrap();
        let found: String = isle
            .eval(
                r#"
                assert(#got == 0, "a task of the ended request ran")
                local a = {ch:try_recv()}
                local b = {sel:try_recv()}
                local c = {buf:try_recv()}
                assert(a[2] and b[2] and c[2], "an item was lost")
                assert(buf:len() == 0)
                return a[1] .. " " .. b[1] .. " " .. c[1]
                "#,
            )
            .unwrap();
        assert_eq!(found, "plain select buffered");
    });
}

#[test]
fn a_value_handed_over_survives_a_failed_cancelled_or_timed_out_request() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder().task_library(TaskLibrary::new()));
        isle.eval::<()>("ch = task.channel(0) got = {}").unwrap();
        // Fails.
        let err = isle
            .eval::<()>(
                r#"
                task.spawn(function() got[#got + 1] = ch:recv() end)
                ch:send("after error")
                error("request fails")
                "#,
            )
            .unwrap_err();
        assert!(err.to_string().contains("request fails"), "{err}");
        assert_eq!(
            isle.eval::<String>("return (ch:try_recv())").unwrap(),
            "after error"
        );
        // Cancelled while running Lua code (no scheduler involved).
        let task = isle
            .spawn_eval::<()>(
                r#"
                task.spawn(function() got[#got + 1] = ch:recv() end)
                ch:send("after cancel")
                started()
                while true do end
                "#,
            )
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        assert_eq!(
            isle.eval::<String>("return (ch:try_recv())").unwrap(),
            "after cancel"
        );
        // Timed out (well after the hand-over).
        let err = isle
            .request()
            .timeout(std::time::Duration::from_millis(200))
            .eval::<()>(
                r#"
                task.spawn(function() got[#got + 1] = ch:recv() end)
                ch:send("after timeout")
                while true do end
                "#,
            )
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(
            isle.eval::<String>("return (ch:try_recv())").unwrap(),
            "after timeout"
        );
        assert_eq!(isle.eval::<i64>("return #got").unwrap(), 0);
    });
}

#[test]
fn a_request_cancelled_while_blocked_in_recv_leaves_no_receiver_behind() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder().task_library(TaskLibrary::new()));
        isle.eval::<()>("ch = task.channel(0) sch = task.channel(1) sch:send(0)")
            .unwrap();
        // `started()` runs in a task, which only runs once the request's own code blocks.
        let task = isle
            .spawn_eval::<()>(
                r#"
                task.defer(function() started() task.sleep(1000) end)
                task.select{ {recv = ch}, {send = sch, value = "ghost"} }
                "#,
            )
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        isle.eval::<()>(
            r#"
            local sent, why = ch:try_send("x")
            assert(sent == false and why == "full", "a receiver of the cancelled request took it")
            assert(sch:recv() == 0)
            local v, ok = sch:try_recv()
            assert(v == nil and ok == nil, "the cancelled request's select sent " .. tostring(v))
            -- The channel works normally afterwards.
            local got
            local r = task.spawn(function() got = ch:recv() end)
            assert(ch:send("y"))
            r:join()
            assert(got == "y")
            "#,
        )
        .unwrap();
    });
}

#[test]
fn a_blocking_call_that_raises_leaves_no_registration() {
    run(r#"
        -- The request's own code: nothing can wake it, the recv raises.
        local ch = task.channel(0)
        local ok, e = pcall(ch.recv, ch)
        assert(not ok and tostring(e):find("deadlock"), tostring(e))
        local sent, why = ch:try_send("lost?")
        assert(sent == false and why == "full",
            "a receiver that raised is still registered: the value went nowhere")

        -- The same for a send: its value must not be delivered after the send raised.
        local ch2 = task.channel(0)
        ok, e = pcall(ch2.send, ch2, "ghost")
        assert(not ok and tostring(e):find("deadlock"), tostring(e))
        local v, ok2 = ch2:try_recv()
        assert(v == nil and ok2 == nil, "the value of a send that raised arrived: " .. tostring(v))

        -- And for select.
        local ch3 = task.channel(0)
        ok, e = pcall(task.select, { {recv = ch3}, {send = ch2, value = "ghost2"} })
        assert(not ok)
        sent = ch3:try_send(1)
        assert(sent == false, "select registration left on ch3")
        v = ch2:try_recv()
        assert(v == nil, "select registration left on ch2")
    "#);
}

#[test]
fn a_task_cancelled_by_a_task_it_started_runs_no_further_code() {
    run(r#"
        local ch = task.channel(10)
        local after = false
        local parent = task.spawn(function()
            local me = task.current()
            task.spawn(function() assert(me:cancel() == true) end)
            -- Cancelled: nothing below may run.
            after = true
            ch:try_send("sent by a cancelled task")
            task.sleep(0)
        end)
        assert(parent:status() == "cancelled", parent:status())
        assert(not after, "code ran after the task was cancelled")
        assert(ch:len() == 0, "a cancelled task sent a value")
    "#);
}

#[test]
fn cancelling_a_task_blocked_in_join_or_in_a_nested_chain() {
    run(r#"
        local gate = task.channel(0)
        local inner = task.spawn(function() return gate:recv() end)
        local outer = task.spawn(function() return inner:join() end)
        outer:cancel()
        -- inner is untouched and can still finish; joining it from here works.
        assert(inner:status() == "waiting")
        gate:send("done")
        assert(inner:join() == "done")
        assert(outer:status() == "cancelled")
        -- Cancelling the inner task makes its joiners fail.
        local inner2 = task.spawn(function() return gate:recv() end)
        local outer2 = task.spawn(function()
            local ok, e = pcall(inner2.join, inner2)
            return ok, e
        end)
        inner2:cancel()
        if YIELD_ACROSS_PCALL then
            local ok, e = outer2:join()
            assert(ok == false and tostring(e):find("cancel"), tostring(e))
        end
    "#);
}

#[test]
fn a_task_cancelled_while_blocked_in_a_nested_coroutine_stops_waiting() {
    run(r#"
        local ch = task.channel(0)
        local holder = {}
        local cancelled_at
        -- Keeps the scheduler busy for a while: the nested wait is never a deadlock early.
        local busy = task.spawn(function() for _ = 1, 400 do task.sleep(0.001) end end)
        local canceller = task.spawn(function()
            task.sleep(0.005)
            assert(holder.a:cancel() == true)
            cancelled_at = task.now()
        end)
        local a = task.spawn(function()
            holder.a = task.current()
            coroutine.wrap(function() ch:recv() end)()
        end)
        -- The spawn above returns only once the nested wait has ended.
        local ended_at = task.now()
        assert(cancelled_at, "the canceller never ran")
        assert(a:status() == "cancelled", a:status())
        assert(ended_at - cancelled_at < 0.1,
            string.format("kept waiting %.3f s after its cancel", ended_at - cancelled_at))
        busy:cancel()
    "#);
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
#[test]
fn a_to_be_closed_handle_cancels_its_task() {
    run(r#"
        local ch = task.channel(0)
        local kept
        do
            local h <close> = task.spawn(function() ch:recv() end)
            kept = h
            assert(h:status() == "waiting")
        end
        assert(kept:status() == "cancelled")
        local sent = ch:try_send(1)
        assert(sent == false, "the closed task's receive is still registered")
        do
            local d <close> = task.spawn(function() return "done" end)
            kept = d
        end
        assert(kept:status() == "done" and kept:join() == "done")
        -- Inside a task, for a child it spawned.
        local parent = task.spawn(function()
            local child <close> = task.spawn(function() task.sleep(1000) end)
            task.yield()
            return child
        end)
        local child = parent:join()
        assert(child:status() == "cancelled")
    "#);
}

#[test]
fn a_cpu_bound_task_is_preempted_where_the_version_allows_it() {
    let outcome: String = eval(
        r#"
        local flag = false
        local t0 = task.now()
        local spinner = task.spawn(function()
            while not flag do
                if task.now() - t0 > 2 then return "not preempted" end
            end
            return "preempted"
        end)
        flag = true
        return spinner:join()
        "#,
    );
    let preemptive = cfg!(any(
        feature = "lua54",
        feature = "lua55",
        feature = "lua53",
        feature = "luau"
    ));
    let expected = if preemptive {
        "preempted"
    } else {
        "not preempted"
    };
    assert_eq!(outcome, expected);
}

#[test]
fn timeouts_and_cancels_reach_tasks_in_every_shape() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder().task_library(TaskLibrary::new()));
        let shapes = [
            // Spinning in an eagerly started task (the request's code never gets back).
            // (Preempted where tasks are, it lets the request's code on to its sleep.)
            "task.spawn(function() started() while true do end end) task.sleep(1000)",
            // Spinning inside pcall, in a task.
            "task.spawn(function() started() while true do pcall(function() while true do end end) end end) task.sleep(1000)",
            // Spinning in a task the scheduler runs while the request waits.
            "local h = task.defer(function() started() while true do end end) h:join()",
            // Spinning in a coroutine nested in a task.
            "task.spawn(function() coroutine.wrap(function() started() while true do end end)() end) task.sleep(1000)",
            // Tasks that keep yielding, and a request waiting on them.
            "for i = 1, 3 do task.spawn(function() while true do task.yield() end end) end started() task.channel(0):recv()",
        ];
        for shape in shapes {
            let err = isle
                .request()
                .timeout(std::time::Duration::from_millis(50))
                .eval::<()>(shape)
                .unwrap_err();
            assert!(err.is_timeout(), "{shape}: {err:?}");
            // (Whether it got as far as `started()` before the deadline does not matter.)
            while started.try_recv().is_ok() {}
            let task = isle.spawn_eval::<()>(shape).unwrap();
            wait_started(&started);
            task.cancel();
            assert!(task.wait().unwrap_err().is_cancelled(), "{shape}");
            // The next request has a clean scheduler.
            let v: i64 = isle
                .eval("local h = task.spawn(function() task.sleep(0.001) return 7 end) return h:join()")
                .unwrap();
            assert_eq!(v, 7, "{shape}");
        }
    });
}

#[test]
fn arguments_and_results_keep_their_nils_and_every_joiner_gets_them() {
    run(r#"
        local function count(...) return select('#', ...), ... end
        local h = task.defer(count, nil, 2, nil)
        local n, a, b, c = h:join()
        assert(n == 3 and a == nil and b == 2 and c == nil)
        assert(task.spawn(count, nil, nil):join() == 2)
        assert(task.delay(0, count, nil):join() == 1)
        local target = task.spawn(function() task.yield() return nil, nil, 3 end)
        local joiners = {}
        for i = 1, 5 do joiners[i] = task.spawn(function() return count(target:join()) end) end
        for i = 1, 5 do
            local m, x, y, z = joiners[i]:join()
            assert(m == 3 and x == nil and y == nil and z == 3)
        end
        -- Joining again, after the fact, gives the same.
        assert(count(target:join()) == 3)
    "#);
}

// ---------------------------------------------------------------------------------------------
// select
// ---------------------------------------------------------------------------------------------

#[test]
fn select_performs_each_case_kind_when_ready() {
    run(r#"
        local ch = task.channel(1)
        ch:send("v")
        local i, v, ok = task.select{ {recv = ch} }
        assert(i == 1 and v == "v" and ok == true)
        i, ok = task.select{ {send = ch, value = "w"} }
        assert(i == 1 and ok == true and ch:len() == 1)
        local h = task.spawn(function() return 1 end)
        local hh
        i, hh = task.select{ {join = h} }
        assert(i == 1 and rawequal(hh, h))
        local failed = task.spawn(function() error({code = 1}) end)
        i, hh = task.select{ {join = failed} }
        assert(i == 1 and hh:status() == "failed")
        i = task.select{ {after = 0} }
        assert(i == 1)
        i = task.select{ {after = -5} }
        assert(i == 1)
        local tk = task.ticker(0.001)
        task.sleep(0.002)
        local n
        i, n = task.select{ {tick = tk} }
        assert(i == 1 and n == 1)
        -- Returns exactly: index plus that case's results.
        local function count(...) return select('#', ...) end
        assert(count(task.select{ {recv = ch} }) == 3)
        assert(count(task.select{ {send = ch, value = 1} }) == 2)
        assert(count(task.select{ {join = h} }) == 2)
        assert(count(task.select{ {after = 0} }) == 1)
    "#);
}

#[test]
fn select_blocks_until_a_case_becomes_ready() {
    run(r#"
        local never = task.channel(0)
        -- recv: a task sends later.
        local ch = task.channel(0)
        task.defer(function() ch:send("late") end)
        local i, v, ok = task.select{ {recv = never}, {recv = ch} }
        assert(i == 2 and v == "late" and ok == true)
        -- send: a task receives later.
        local got
        task.defer(function() got = ch:recv() end)
        local i2, ok2 = task.select{ {recv = never}, {send = ch, value = "out"} }
        assert(i2 == 2 and ok2 == true)
        task.yield()
        assert(got == "out")
        -- join
        local h = task.spawn(function() task.sleep(0.002) return "joined" end)
        local i3, hh = task.select{ {recv = never}, {join = h} }
        assert(i3 == 2 and hh:join() == "joined")
        -- tick
        local tk = task.ticker(0.002)
        local i4, n = task.select{ {recv = never}, {tick = tk} }
        assert(i4 == 2 and n == 1)
        local i5, n2 = task.select{ {recv = never}, {tick = tk} }
        assert(i5 == 2 and n2 == 2)
        -- after
        local t0 = task.now()
        local i6 = task.select{ {recv = never}, {after = 0.01} }
        assert(i6 == 2 and task.now() - t0 >= 0.009)
        -- None of those left a registration on `never`.
        local sent, why = never:try_send(1)
        assert(sent == false and why == "full")
        -- The earliest of several timers wins.
        local i7 = task.select{ {after = 10}, {after = 0.001}, {after = 5} }
        assert(i7 == 2)
    "#);
}

#[test]
fn select_default_returns_nil_only_when_nothing_is_ready() {
    run(r#"
        local ch = task.channel(1)
        local function count(...) return select('#', ...), ... end
        local n, i = count(task.select{ {recv = ch}, default = true })
        assert(i == nil and n == 1, "n=" .. n)
        assert(task.select{ {send = task.channel(0), value = 1}, {after = 1}, default = true } == nil)
        ch:send(5)
        local i2, v = task.select{ {recv = ch}, default = true }
        assert(i2 == 1 and v == 5)
        assert(task.select{ default = true } == nil)
        -- Did not leave a registration behind.
        assert(ch:try_send(1) == true)
    "#);
}

#[test]
fn select_is_fair_between_two_always_ready_channels() {
    run(r#"
        local a, b = task.channel(1), task.channel(1)
        a:send("a") b:send("b")
        local wins = {0, 0}
        local cases = { {recv = a}, {recv = b} }
        for _ = 1, 1000 do
            local i, v = task.select(cases)
            wins[i] = wins[i] + 1
            if i == 1 then a:send(v) else b:send(v) end
        end
        assert(wins[1] > 300 and wins[2] > 300, wins[1] .. "/" .. wins[2])
        -- Fresh case tables each time: just as fair.
        wins = {0, 0}
        for _ = 1, 1000 do
            local i, v = task.select{ {recv = a}, {recv = b} }
            wins[i] = wins[i] + 1
            if i == 1 then a:send(v) else b:send(v) end
        end
        assert(wins[1] > 300 and wins[2] > 300, wins[1] .. "/" .. wins[2])
        -- Three send cases to channels with room.
        local cs = { task.channel(1), task.channel(1), task.channel(1) }
        wins = {0, 0, 0}
        for _ = 1, 1500 do
            local i = task.select{ {send = cs[1], value = 1}, {send = cs[2], value = 2}, {send = cs[3], value = 3} }
            wins[i] = wins[i] + 1
            cs[i]:recv()
        end
        for k = 1, 3 do assert(wins[k] > 300, table.concat(wins, "/")) end
    "#);
}

#[test]
fn select_stays_fair_when_other_selects_run_in_between() {
    run(r#"
        local a, b, c = task.channel(1), task.channel(1), task.channel(1)
        a:send("a") b:send("b")
        local wins = {0, 0}
        for _ = 1, 1000 do
            local i, v = task.select{ {recv = a}, {recv = b} }
            wins[i] = wins[i] + 1
            if i == 1 then a:send(v) else b:send(v) end
            -- Some other, unrelated select (a poll with default).
            task.select{ {recv = c}, default = true }
        end
        assert(wins[1] > 300 and wins[2] > 300, "one select between: " .. wins[1] .. "/" .. wins[2])

        -- Two tasks selecting in turns over their own always-ready channels.
        local function worker()
            local x, y = task.channel(1), task.channel(1)
            x:send(1) y:send(2)
            local w = {0, 0}
            for _ = 1, 1000 do
                local i, v = task.select{ {recv = x}, {recv = y} }
                w[i] = w[i] + 1
                if i == 1 then x:send(v) else y:send(v) end
                task.yield()
            end
            return w[1], w[2]
        end
        local h1, h2 = task.spawn(worker), task.spawn(worker)
        local a1, b1 = h1:join()
        local a2, b2 = h2:join()
        assert(a1 > 300 and b1 > 300 and a2 > 300 and b2 > 300,
            "two tasks: " .. a1 .. "/" .. b1 .. ", " .. a2 .. "/" .. b2)
    "#);
}

#[test]
fn a_closed_case_is_reported_once_per_case_table_and_does_not_spin() {
    run(r#"
        local closed = task.channel(1)
        closed:send("last")
        closed:close()
        local other = task.channel(0)
        local producer = task.spawn(function()
            for i = 1, 5 do other:send(i) end
        end)
        local cases = { {recv = closed}, {recv = other} }
        local values, last, closed_reports, rounds = 0, 0, 0, 0
        while values < 5 do
            rounds = rounds + 1
            assert(rounds < 100, "select keeps returning: it spins on the closed channel")
            local i, v, ok = task.select(cases)
            if i == 1 then
                if ok then assert(v == "last") last = last + 1 else closed_reports = closed_reports + 1 end
            else
                assert(ok == true and v == values + 1)
                values = values + 1
            end
        end
        assert(last == 1 and closed_reports == 1, last .. " " .. closed_reports)
        assert(rounds == 7, rounds)
        producer:join()
        -- Once the other channel closes too, it is reported once, then nothing is left.
        other:close()
        local i, v, ok = task.select(cases)
        assert(i == 2 and v == nil and ok == false)
        local okc, e = pcall(task.select, cases)
        assert(not okc and tostring(e):find("no case"), tostring(e))
        assert(task.select{ cases[1], cases[2], default = true } == nil)

        -- A new case table reports the closed channel again.
        local i2, v2, ok2 = task.select{ {recv = closed} }
        assert(i2 == 1 and v2 == nil and ok2 == false)

        -- A send case on a closed channel: reported (false) once, then skipped.
        local open = task.channel(0)
        local scases = { {send = closed, value = 1}, {recv = open} }
        local i3, ok3 = task.select(scases)
        assert(i3 == 1 and ok3 == false)
        task.defer(function() open:send("x") end)
        local i4, v4 = task.select(scases)
        assert(i4 == 2 and v4 == "x")
    "#);
}

#[test]
fn a_closed_case_table_blocks_on_the_other_case_inside_a_task() {
    run(r#"
        local closed = task.channel(0)
        closed:close()
        local other = task.channel(0)
        local rounds = 0
        local consumer = task.spawn(function()
            local cases = { {recv = closed}, {recv = other} }
            local sum = 0
            while true do
                rounds = rounds + 1
                local i, v, ok = task.select(cases)
                if i == 2 then
                    if not ok then return sum end
                    sum = sum + v
                end
            end
        end)
        for i = 1, 10 do other:send(i) end
        other:close()
        assert(consumer:join() == 55)
        -- 10 values, one closed report each.
        assert(rounds == 12, rounds)
    "#);
}

#[test]
fn a_send_case_to_a_rendezvous_channel_completes_only_when_taken() {
    run(r#"
        local ch = task.channel(0)
        local returned
        local h = task.spawn(function()
            local i, ok = task.select{ {send = ch, value = "x"} }
            returned = {i, ok}
        end)
        assert(h:status() == "waiting")
        task.yield()
        assert(returned == nil and ch:len() == 0)
        assert(ch:recv() == "x")
        h:join()
        assert(returned[1] == 1 and returned[2] == true)
        -- Racing a timer: the timer wins and the value is not delivered later.
        local i = task.select{ {send = ch, value = "too late"}, {after = 0.005} }
        assert(i == 2)
        local v, ok = ch:try_recv()
        assert(v == nil and ok == nil, "delivered after the select returned: " .. tostring(v))
    "#);
}

#[test]
fn select_with_no_case_that_can_ever_become_ready_raises() {
    run(r#"
        local ok, e = pcall(task.select, {})
        assert(not ok and tostring(e):find("no case"), tostring(e))
        -- A stopped ticker can never fire: with nothing else, waiting on it cannot end.
        local tk = task.ticker(0.01)
        tk:stop()
        ok, e = pcall(task.select, { {tick = tk} })
        assert(not ok, "select on a stopped ticker returned")
        -- A stopped ticker is never ready with default.
        assert(task.select{ {tick = tk}, default = true } == nil)
    "#);
}

#[test]
fn a_blocked_select_learns_that_its_channels_closed() {
    run(r#"
        local a, b = task.channel(0), task.channel(0)
        local h = task.spawn(function()
            local cases = { {send = a, value = 1}, {recv = b} }
            local r1 = {task.select(cases)}
            local r2 = {task.select(cases)}
            return r1, r2
        end)
        assert(h:status() == "waiting")
        a:close()
        task.yield()
        assert(h:status() == "waiting", "the select should block again on b")
        b:close()
        local r1, r2 = h:join()
        assert(r1[1] == 1 and r1[2] == false)
        assert(r2[1] == 2 and r2[2] == nil and r2[3] == false)
    "#);
}

#[test]
fn a_nan_timer_neither_fires_nor_delays_other_timers() {
    run(r#"
        local never = task.channel(0)
        -- Either select refuses NaN seconds...
        local ok = pcall(task.select, { {after = 0/0}, default = true })
        if ok then
            -- ...or the NaN timer must not reorder the others.
            local t0 = task.now()
            task.spawn(function() task.sleep(0.001) end)
            task.spawn(function() task.select{ {after = 0/0}, {recv = never} } end)
            local small = task.spawn(function() task.sleep(0.02) end)
            task.spawn(function() task.sleep(2) end)
            small:join()
            local took = task.now() - t0
            assert(took < 1, string.format("a 20 ms sleep took %.3f s", took))
        end
    "#);
}

#[test]
fn a_ticker_stopped_while_a_select_waits_on_it_never_ticks() {
    run(r#"
        local tk = task.ticker(0.005)
        local ch = task.channel(0)
        local stopper = task.spawn(function()
            task.yield()
            tk:stop()
            task.sleep(0.02) -- well past the tick that was due
            ch:send("after stop")
        end)
        local i, v = task.select{ {tick = tk}, {recv = ch} }
        assert(i == 2 and v == "after stop", "ticked after stop: case " .. tostring(i))
        -- tk:next() agrees: a stopped ticker returns nil.
        assert(tk:next() == nil)
    "#);
}

#[test]
fn a_ticker_shared_by_two_waiters_gives_each_tick_once() {
    // Each tick goes to one waiter: the two get different tick numbers (not the same tick
    // twice), however late the scheduler runs them.
    run(r#"
        local tk = task.ticker(0.01)
        local a = task.spawn(function() return tk:next() end)
        local b = task.spawn(function() return tk:next() end)
        local na, nb = a:join(), b:join()
        assert(na ~= nb, "both got tick " .. tostring(na))
        local tk2 = task.ticker(0.01)
        local c = task.spawn(function() return select(2, task.select{ {tick = tk2} }) end)
        local d = task.spawn(function() return select(2, task.select{ {tick = tk2} }) end)
        local nc, nd = c:join(), d:join()
        assert(nc ~= nd, "both selects got tick " .. tostring(nc))
    "#);
}

#[test]
fn the_same_channel_in_several_cases_of_one_select() {
    run(r#"
        local ch = task.channel(0)
        local h = task.spawn(function()
            return task.select{ {recv = ch}, {recv = ch}, {send = ch, value = "self"} }
        end)
        assert(h:status() == "waiting")
        -- One send completes the select once; the other registrations go.
        assert(ch:send(1) == true)
        local i, v = h:join()
        assert((i == 1 or i == 2) and v == 1)
        local sent = ch:try_send(2)
        assert(sent == false, "a stale registration took a value")
        local v2 = ch:try_recv()
        assert(v2 == nil, "a stale send registration delivered " .. tostring(v2))
    "#);
}

// ---------------------------------------------------------------------------------------------
// Structured scopes across requests
// ---------------------------------------------------------------------------------------------

#[test]
fn tasks_blocked_on_a_global_channel_never_run_in_the_next_request() {
    within_hang_guard(|| {
        let isle = isle();
        isle.eval::<()>("ch = task.channel(0) buf = task.channel(1) log = {}")
            .unwrap();
        isle.eval::<()>(
            r#"
            handles = {
                task.spawn(function() log[#log + 1] = "recv " .. tostring(ch:recv()) end),
                task.spawn(function() ch:send("from old") log[#log + 1] = "sent" end),
                task.spawn(function() log[#log + 1] = "buf " .. tostring(buf:recv()) end),
            }
            -- The first two paired up (receiver then sender); make a fresh pair blocked.
            handles[4] = task.spawn(function() log[#log + 1] = "recv2 " .. tostring(ch:recv()) end)
            "#,
        )
        .unwrap();
        isle.eval::<()>(
            r#"
            local before = #log
            for _, h in ipairs(handles) do
                local st = h:status()
                assert(st == "cancelled" or st == "done", st)
            end
            assert(handles[4]:status() == "cancelled")
            -- No receiver from the old request takes these.
            assert(buf:send("new") == true)
            assert(buf:len() == 1)
            local sent = ch:try_send("new")
            assert(sent == false)
            task.sleep(0.01)
            assert(#log == before, "an old task ran: " .. tostring(log[#log]))
            assert(buf:recv() == "new")
            "#,
        )
        .unwrap();
    });
}

#[test]
fn handles_of_an_ended_request_report_cancelled_and_join_raises() {
    within_hang_guard(|| {
        let isle = isle();
        isle.eval::<()>(
            r#"
            gate = task.channel(0)
            old = {
                waiting = task.spawn(function() gate:recv() end),
                ready = task.defer(function() end),
                sleeping = task.spawn(function() task.sleep(1000) end),
                done = task.spawn(function() return "result" end),
            }
            "#,
        )
        .unwrap();
        isle.eval::<()>(
            r#"
            for _, name in ipairs({"waiting", "ready", "sleeping"}) do
                local h = old[name]
                assert(h:status() == "cancelled", name .. ": " .. h:status())
                local ok, e = pcall(h.join, h)
                assert(not ok, name .. " joined")
                assert(h:cancel() == false)
                -- select on it finds it finished.
                local i, hh = task.select{ {join = h} }
                assert(i == 1 and rawequal(hh, h))
            end
            assert(old.done:status() == "done" and old.done:join() == "result")
            "#,
        )
        .unwrap();
    });
}

#[test]
fn a_global_channel_stays_consistent_across_many_requests() {
    within_hang_guard(|| {
        let isle = isle();
        isle.eval::<()>("shared = task.channel(3) next_id = 0 acked = {} got = {}")
            .unwrap();
        for _ in 0..40 {
            // Each request sends and receives some, and ends with tasks blocked on both sides
            // (and, often, a sender whose value was taken but which never ran again).
            isle.eval::<()>(
                r#"
                local function sender(n)
                    for _ = 1, n do
                        next_id = next_id + 1
                        local id = next_id
                        if shared:send(id) then acked[id] = true end
                    end
                end
                local function take(v, ok)
                    assert(ok, "closed?")
                    got[v] = (got[v] or 0) + 1
                end
                task.spawn(sender, 5)
                for _ = 1, 4 do take(shared:recv()) end
                task.spawn(sender, 100)
                task.spawn(function() take(shared:recv()) end)
                assert(shared:len() <= shared:capacity(), "len " .. shared:len())
                "#,
            )
            .unwrap();
        }
        let received: i64 = isle
            .eval(
                r#"
                while true do
                    local v, ok = shared:try_recv()
                    if ok == nil then break end
                    got[v] = (got[v] or 0) + 1
                end
                local n = 0
                for id, count in pairs(got) do
                    assert(count == 1, "id " .. id .. " received " .. count .. " times")
                    n = n + 1
                end
                for id in pairs(acked) do
                    assert(got[id], "acknowledged id " .. id .. " was lost")
                end
                return n
                "#,
            )
            .unwrap();
        assert!(received >= 40 * 5, "{received}");
    });
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
#[test]
fn tasks_spawned_by_close_handlers_at_request_end_do_not_outlive_it() {
    let setup = r#"
        log = {}
        task.spawn(function()
            local guard <close> = setmetatable({}, {__close = function()
                task.spawn(function()
                    log[#log + 1] = "started in close"
                    task.sleep(0)
                    log[#log + 1] = "ran in a later request"
                end)
            end})
            task.sleep(1000)
        end)
    "#;
    let outcome = within_hang_guard(move || {
        let isle = isle();
        // The outcome of the spawn inside the handler is not specified (it may fail).
        let _ = isle.eval::<()>(setup);
        isle.eval::<()>(
            r#"
            task.sleep(0.01)
            -- A task of this request, still asleep when it ends.
            task.spawn(function() task.sleep(0.02) log[#log + 1] = "ran in a later request" end)
            "#,
        )
        .unwrap();
        isle.eval::<String>("task.sleep(0.05) return table.concat(log, ',')")
    });
    let log = outcome.unwrap();
    assert!(
        !log.contains("ran in a later request"),
        "a task spawned while the request ended ran in the next request: {log}"
    );
}

/// Under the sandbox with a fresh environment per request: runs `plant` in one request, then a
/// request that spawns a task with a secret argument, then one that looks for loot a task of
/// the first request may have collected through the shared scope. Returns what it found.
fn sandboxed_loot_after(plant: &'static str) -> String {
    // The spy the planted task runs: collects the arguments of every other task.
    const SPY: &str = r#"
        local function spy()
            local me = task.current()
            me.loot = {}
            while true do
                task.yield()
                for rec in pairs(me.scope.tasks) do
                    if rec ~= me and rec.args then me.loot[#me.loot + 1] = tostring(rec.args[3]) end
                end
            end
        end
    "#;
    let plant = format!("{SPY}\n{plant}");
    within_hang_guard(move || {
        let isle = Isle::builder()
            .sandboxed()
            .task_library(TaskLibrary::new())
            .spawn(|_| Ok(()))
            .unwrap();
        // The first request's outcome does not matter.
        let _ = isle.eval::<()>(plant);
        let n: i64 = isle
            .eval("local h = task.defer(function(s) return #s end, 'the secret') return h:join()")
            .unwrap();
        assert_eq!(n, 10);
        isle.eval::<String>(
            r#"
            local ok, found = pcall(function()
                local h = task.spawn(function() end)
                for rec in pairs(h.scope.tasks) do
                    if rec.loot then return table.concat(rec.loot, ",") end
                end
            end)
            return ok and found or ""
            "#,
        )
        .unwrap()
    })
}

/// A `__close` handler at the end of a sandboxed request plants a task that outlives it.
#[cfg(any(feature = "lua54", feature = "lua55"))]
#[test]
fn a_sandboxed_request_cannot_reach_later_requests_through_a_close_handler() {
    let found = sandboxed_loot_after(
        r#"
        task.spawn(function()
            local guard <close> = setmetatable({}, {__close = function()
                task.spawn(spy)
            end})
            task.sleep(1000)
        end)
        "#,
    );
    assert!(
        !found.contains("the secret"),
        "a later request's task argument leaked: {found}"
    );
}

/// The library calls a function stored in the channel object when the request ends (putting
/// back a value handed to a task that never ran): a script can replace it, on every version.
#[test]
fn a_sandboxed_request_cannot_reach_later_requests_through_channel_fields() {
    let found = sandboxed_loot_after(
        r#"
        local ch = task.channel(0)
        rawset(ch, "wake_receiver", function() task.spawn(spy) end)
        task.spawn(function() ch:recv() end)
        ch:send(1)
        "#,
    );
    assert!(
        !found.contains("the secret"),
        "a later request's task argument leaked: {found}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile shapes
// ---------------------------------------------------------------------------------------------

#[test]
fn pcall_and_xpcall_around_blocking_calls_inside_tasks() {
    if !YIELD_ACROSS_PCALL {
        return;
    }
    run(r#"
        local ch = task.channel(0)
        local h = task.spawn(function()
            local ok, v = pcall(ch.recv, ch)
            assert(ok and v == 1, tostring(v))
            local function handler(e) return "handled: " .. tostring(e) end
            local ok2, v2 = xpcall(function() return ch:recv() end, handler)
            assert(ok2 and v2 == 2, tostring(v2))
            -- The handler runs for an error raised after blocking.
            local ok5, e5 = xpcall(function() task.sleep(0) error("late", 0) end, handler)
            assert(not ok5 and e5 == "handled: late", tostring(e5))
            -- An error after blocking, with a table error object.
            local ok3, e = pcall(function()
                ch:recv()
                error({code = 7})
            end)
            assert(not ok3 and type(e) == "table" and e.code == 7)
            -- Nested pcalls and a sleep.
            local ok4, v4 = pcall(pcall, function() task.sleep(0.001) return ch:recv() end)
            assert(ok4 == true)
            return "ok"
        end)
        for i = 1, 4 do assert(ch:send(i)) end
        assert(h:join() == "ok")
    "#);
}

#[test]
fn pcall_around_blocking_calls_on_lua51_fails_cleanly() {
    if YIELD_ACROSS_PCALL {
        return;
    }
    // Lua 5.1 cannot yield across pcall: the blocking call fails inside the pcall. It must not
    // leave anything behind in the channel.
    run(r#"
        local ch = task.channel(0)
        local h = task.spawn(function()
            local ok, e = pcall(ch.recv, ch)
            return ok, e
        end)
        local ok, e = h:join()
        assert(ok == false, "pcall(ch.recv) inside a task succeeded on Lua 5.1?")
    "#);
}

#[test]
fn task_errors_are_arbitrary_values() {
    run(r#"
        local function fails_with(v)
            local h = task.spawn(function() task.yield() error(v, 0) end)
            local ok, e = pcall(h.join, h)
            assert(not ok and h:status() == "failed")
            return e
        end
        local t = {code = 1}
        assert(rawequal(fails_with(t), t))
        assert(fails_with(42) == 42)
        assert(fails_with(false) == false)
        local fn = function() end
        assert(fails_with(fn) == fn)
        local ch = task.channel(0)
        assert(rawequal(fails_with(ch), ch))
        -- An error object whose __tostring raises, never looked at by the library.
        local evil = setmetatable({}, {__tostring = function() error("tostring called") end})
        assert(rawequal(fails_with(evil), evil))
        -- A task that fails with such an object and is never joined does not disturb the
        -- request.
        task.spawn(function() error(evil) end)
        task.sleep(0)
    "#);
}

#[test]
fn a_joined_failure_with_a_hostile_error_object_fails_the_request_cleanly() {
    within_hang_guard(|| {
        let isle = isle();
        let err = isle
            .eval::<()>(
                r#"
                local evil = setmetatable({}, {__tostring = function() error("tostring called") end})
                local h = task.spawn(function() task.yield() error(evil) end)
                h:join()
                "#,
            )
            .unwrap_err();
        let _ = err.to_string();
        assert_eq!(isle.eval::<i64>("return 1 + 1").unwrap(), 2);
    });
}

#[test]
fn sent_values_with_metamethods_are_never_touched() {
    run(r#"
        local function trap(name) return function() error("metamethod " .. name .. " called") end end
        local mt = {
            __index = trap("__index"), __newindex = trap("__newindex"), __eq = trap("__eq"),
            __len = trap("__len"), __call = trap("__call"), __lt = trap("__lt"),
            __le = trap("__le"), __concat = trap("__concat"), __unm = trap("__unm"),
            __tostring = trap("__tostring"),
            __metatable = "channel",  -- poses as a channel
        }
        local values = { setmetatable({}, mt) }
        if newproxy then
            local u = newproxy(true)
            getmetatable(u).__index = trap("__index")
            getmetatable(u).__eq = trap("__eq")
            values[#values + 1] = u
        end
        for _, cap in ipairs({0, 1, 4}) do
            local ch = task.channel(cap)
            for _, v in ipairs(values) do
                -- Through a blocked receiver, the buffer, a blocked sender and select.
                local r = task.spawn(function() return ch:recv() end)
                assert(ch:send(v))
                assert(rawequal(r:join(), v))
                if cap > 0 then
                    assert(ch:send(v))
                    assert(rawequal(ch:recv(), v))
                end
                local s = task.spawn(function() return ch:send(v) end)
                local got = ch:recv()
                assert(rawequal(got, v) and s:join() == true)
                local s2 = task.spawn(function() return task.select{ {send = ch, value = v} } end)
                local i, got2 = task.select{ {recv = ch} }
                assert(i == 1 and rawequal(got2, v))
                s2:join()
                -- A cancelled receiver's put-back.
                local r2 = task.spawn(function() return ch:recv() end)
                ch:send(v)
                r2:cancel()
                assert(rawequal(ch:recv(), v))
            end
            -- Other library objects travel too.
            local h = task.spawn(function() end)
            local tk = task.ticker(1)
            for _, v in ipairs({ch, h, tk, coroutine.create(function() end), print, 0/0}) do
                local r = task.spawn(function() return ch:recv() end)
                ch:send(v)
                local got = r:join()
                assert(rawequal(got, v) or (got ~= got and v ~= v))
            end
        end
    "#);
}

#[test]
fn coroutine_wrap_inside_a_task_can_use_the_task_library() {
    run(r#"
        local ch = task.channel(0)
        -- The producer blocks first, so the nested receive finds a partner.
        local producer = task.spawn(function()
            for i = 1, 3 do ch:send(i) end
            ch:close()
        end)
        local results = {}
        local consumer = task.spawn(function()
            local gen = coroutine.wrap(function()
                while true do
                    local v, ok = ch:recv()  -- blocks inside a nested coroutine
                    if not ok then return nil end
                    task.sleep(0)
                    task.yield()
                    coroutine.yield(v * 10)
                end
            end)
            while true do
                local v = gen()
                if v == nil then break end
                results[#results + 1] = v
            end
            -- The task's identity inside the nested coroutine is still the task.
            local inner_current = coroutine.wrap(function() return task.current() end)()
            assert(rawequal(inner_current, task.current()))
            return #results
        end)
        assert(consumer:join() == 3)
        producer:join()
        assert(results[1] == 10 and results[2] == 20 and results[3] == 30)

        -- A task that yields with plain coroutine.yield is just rescheduled.
        local order = {}
        local a = task.spawn(function() for i = 1, 3 do order[#order + 1] = "a" coroutine.yield("ignored") end end)
        local b = task.spawn(function() for i = 1, 3 do order[#order + 1] = "b" coroutine.yield() end end)
        a:join() b:join()
        assert(table.concat(order) == "ababab", table.concat(order))

        -- coroutine.wrap around task functions from the request's own code.
        local ch2 = task.channel(0)
        task.defer(function() ch2:send("to wrapped") end)
        local got = coroutine.wrap(function() return ch2:recv() end)()
        assert(got == "to wrapped")
        -- A task spawned from inside a wrapped coroutine in a task.
        local outer = task.spawn(function()
            return coroutine.wrap(function()
                local h = task.spawn(function() task.sleep(0) return "inner" end)
                return h:join()
            end)()
        end)
        assert(outer:join() == "inner")
    "#);
}

#[test]
fn a_task_spawns_ten_thousand_tasks() {
    let n: i64 = eval(
        r#"
        local results = task.channel(0)
        local parent = task.spawn(function()
            local hs = {}
            for i = 1, 10000 do
                hs[i] = task.spawn(function(k)
                    results:send(k)
                    return k
                end, i)
            end
            local sum = 0
            for i = 1, 10000 do sum = sum + results:recv() end
            for i = 1, 10000 do assert(hs[i]:join() == i) end
            return sum
        end)
        local sum = parent:join()
        assert(sum == 10000 * 10001 / 2, sum)
        -- Ten thousand tasks all blocked, then released by one close.
        local gate = task.channel(0)
        local hs = {}
        for i = 1, 10000 do hs[i] = task.spawn(function() local _, ok = gate:recv() return ok end) end
        gate:close()
        local n = 0
        for i = 1, 10000 do if hs[i]:join() == false then n = n + 1 end end
        return n
        "#,
    );
    assert_eq!(n, 10000);
}

#[test]
fn deep_chains_of_tasks_spawning_tasks() {
    run(r#"
        -- Each task spawns the next and joins it.
        local function level(d)
            if d == 1000 then return 0 end
            local h = task.spawn(level, d + 1)
            return h:join() + 1
        end
        assert(level(0) == 1000)
        assert(task.spawn(level, 0):join() == 1000)

        -- Fire and forget, 1000 deep, each reporting on a channel.
        local out = task.channel(1000)
        local function chain(d)
            out:send(d)
            if d < 1000 then task.spawn(chain, d + 1) end
        end
        task.spawn(chain, 1)
        local sum = 0
        for i = 1, 1000 do sum = sum + out:recv() end
        assert(sum == 500500)

        -- A daisy chain of 1000 rendezvous channels.
        local leftmost = task.channel(0)
        local left = leftmost
        for i = 1, 1000 do
            local right = task.channel(0)
            task.spawn(function(l, r) l:send(1 + r:recv()) end, left, right)
            left = right
        end
        task.spawn(function() left:send(1) end)
        assert(leftmost:recv() == 1001)

        -- Deferred tasks deferring tasks.
        local function d(n) if n > 0 then return task.defer(d, n - 1):join() + 1 end return 0 end
        assert(task.defer(d, 1000):join() == 1000)
    "#);
}

#[test]
fn tampering_with_coroutine_functions_after_install_changes_nothing() {
    run(r#"
        local assert, ipairs = assert, ipairs
        coroutine.resume = function() error("tampered resume") end
        coroutine.yield = function() error("tampered yield") end
        coroutine.wrap = function() error("tampered wrap") end
        coroutine.create = function() error("tampered create") end
        coroutine.status = function() return "dead" end
        coroutine.running = function() return nil end
        coroutine.isyieldable = function() return false end
        coroutine.close = function() error("tampered close") end
        local ch = task.channel(0)
        local h = task.spawn(function()
            local sum = 0
            while true do
                local v, ok = ch:recv()
                if not ok then return sum end
                sum = sum + v
            end
        end)
        for i = 1, 10 do ch:send(i) end
        ch:close()
        assert(h:join() == 55)
        task.sleep(0.001)
        task.yield()
        local s = task.spawn(function() task.sleep(1000) end)
        assert(s:cancel() == true and s:status() == "cancelled")
        local i = task.select{ {after = 0.001}, {recv = task.channel(0)} }
        assert(i == 1)
        coroutine = nil
        local t = task.spawn(function() task.yield() return "still" end)
        assert(t:join() == "still")
    "#);
}

#[test]
fn tampering_with_base_globals_after_install_changes_nothing() {
    run(r#"
        local assert, pcall, tostring = assert, pcall, tostring
        getmetatable = nil
        setmetatable = nil
        type = function() return "table" end
        next, select, rawequal, pcall_saved, tostring = nil, nil, nil, pcall, nil
        unpack = nil
        table = nil
        math = nil
        error = function() end
        local ch = task.channel(1)
        local h = task.spawn(function() return ch:recv() end)
        assert(ch:send("v"))
        assert(h:join() == "v")
        local i = task.select{ {recv = ch}, {after = 0} }
        assert(i == 2)
        local ok = pcall(ch.send, ch, nil)
        assert(not ok)
    "#);
}

#[test]
fn assigning_fields_on_a_channel_or_handle_cannot_corrupt_others() {
    run(r#"
        local good = task.channel(1)
        local bad = task.channel(1)
        -- Garbage in the object: operations on it may fail, but only with Lua errors.
        rawset(bad, "count", "x")
        rawset(bad, "buf", nil)
        rawset(bad, "recvq", 5)
        rawset(bad, "sendq", false)
        rawset(bad, "bh", {})
        for _, op in ipairs({"send", "try_send", "recv", "try_recv", "close", "len"}) do
            pcall(bad[op] or function() end, bad, 1)
        end
        local h = task.spawn(function() task.sleep(1000) end)
        rawset(h, "st", 42)
        rawset(h, "co", "not a coroutine")
        pcall(h.cancel, h)
        pcall(h.status, h)
        -- Everything else keeps working.
        local r = task.spawn(function() return good:recv() end)
        assert(good:send("fine"))
        assert(r:join() == "fine")
        local i, v = task.select{ {recv = good}, {after = 0.001} }
        assert(i == 2)
        task.sleep(0.001)
    "#);
}

#[test]
fn fields_a_script_sets_on_library_objects_stay_the_scripts_business() {
    // Library objects are plain tables holding their state in their fields, so that Lua's
    // collector sees everything a task or a channel holds on every version (Lua 5.1 has no
    // ephemeron tables). A script that overwrites those fields confuses its own objects only:
    // the library keeps working for other objects and later requests.
    run(r#"
        local ch = task.channel(2)
        ch:send("a")
        ch.count = 0
        local other = task.channel(1)
        assert(other:send(1) and other:recv() == 1)
        local h = task.spawn(function() return "r" end)
        h.results = {n = 1, "forged"}
        assert(task.spawn(function() return 2 end):join() == 2)
    "#);
    run("local ch = task.channel(0) task.spawn(function() ch:send(1) end) assert(ch:recv() == 1)");
}

// ---------------------------------------------------------------------------------------------
// Coroutine requests
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "tokio")]
#[test]
fn coroutine_requests_cannot_block_in_the_library_and_leave_it_intact() {
    within_hang_guard(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (isle, _driver) = mlua_isle::AsyncIsle::builder()
                .task_library(TaskLibrary::new())
                .spawn_async(|_| Ok(()))
                .await
                .unwrap();
            isle.eval::<()>("ch = task.channel(1)").await.unwrap();
            let err = isle.coroutine_eval::<()>("ch:recv()").await.unwrap_err();
            assert!(err.to_string().contains("coroutine"), "{err}");
            // Non-blocking calls work there.
            let ok: bool = isle.coroutine_eval("return ch:try_send(1)").await.unwrap();
            assert!(ok);
            // A normal request afterwards has a working library.
            let v: i64 = isle
                .eval(
                    r#"
                    local r = task.spawn(function() return ch:recv() end)
                    return r:join()
                    "#,
                )
                .await
                .unwrap();
            assert_eq!(v, 1);
        });
    });
}

// ---------------------------------------------------------------------------------------------
// The async isle
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "tokio")]
mod async_isle {
    use std::future::Future;

    use mlua_isle::{AsyncIsle, AsyncIsleDriver, TaskLibrary};
    use tokio::sync::mpsc;

    use super::common::HANG;

    async fn async_isle() -> (AsyncIsle, AsyncIsleDriver, mpsc::UnboundedReceiver<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (isle, driver) = AsyncIsle::builder()
            .task_library(TaskLibrary::new())
            .spawn_async(move |lua| {
                let started = lua.create_function(move |_, ()| {
                    let _ = tx.send(());
                    Ok(())
                })?;
                lua.globals().set("started", started)
            })
            .await
            .unwrap();
        (isle, driver, rx)
    }

    async fn guarded<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(HANG, f).await.expect("hang guard")
    }

    const PING_PONG: &str = r#"
        local ping, pong = task.channel(0), task.channel(0)
        local player = task.spawn(function()
            -- (Not `for v in ping:iter()`: Lua 5.1 cannot yield from a for iterator.)
            while true do
                local v, ok = ping:recv()
                if not ok then break end
                pong:send(v + 1)
            end
            pong:close()
        end)
        local v = 0
        for _ = 1, 1000 do
            ping:send(v)
            v = pong:recv()
        end
        ping:close()
        assert(pong:recv() == nil)
        player:join()
        local i = task.select{ {recv = ping}, {after = 0.001} }
        return v
    "#;

    async fn channels_work() {
        let (isle, _driver, _started) = async_isle().await;
        assert_eq!(isle.eval::<i64>(PING_PONG).await.unwrap(), 1000);
    }

    async fn a_cancelled_request_leaves_the_global_channel_consistent() {
        let (isle, _driver, mut started) = async_isle().await;
        isle.eval::<()>("ch = task.channel(0) got = {}")
            .await
            .unwrap();
        // Blocked in the scheduler (started() runs in a task only once the request blocks).
        let blocked = isle
            .spawn_eval::<()>(
                r#"
                task.defer(function() started() task.sleep(1000) end)
                ch:recv()
                "#,
            )
            .await
            .unwrap();
        started.recv().await.unwrap();
        blocked.cancel();
        assert!(blocked.await.unwrap_err().is_cancelled());
        // A value handed to a task, then the request is dropped while it spins.
        let handed = isle
            .spawn_eval::<()>(
                r#"
                task.spawn(function() got[#got + 1] = ch:recv() end)
                assert(ch:send("handed"))
                started()
                while true do end
                "#,
            )
            .await
            .unwrap();
        started.recv().await.unwrap();
        drop(handed);
        let (v, n): (String, i64) = isle
            .eval(
                r#"
                local v, ok = ch:try_recv()
                assert(ok, "the handed value was lost")
                local sent = ch:try_send("x")
                assert(sent == false, "a receiver of a cancelled request is still registered")
                return v, #got
                "#,
            )
            .await
            .unwrap();
        assert_eq!((v.as_str(), n), ("handed", 0));
        assert_eq!(isle.eval::<i64>(PING_PONG).await.unwrap(), 1000);
    }

    async fn several_isles_at_once() {
        let mut handles = Vec::new();
        for _ in 0..4 {
            handles.push(tokio::spawn(async {
                let (isle, _driver, _started) = async_isle().await;
                let mut total = 0;
                for _ in 0..3 {
                    total += isle.eval::<i64>(PING_PONG).await.unwrap();
                }
                total
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap(), 3000);
        }
    }

    async fn a_timed_out_request_ends_its_tasks() {
        let (isle, _driver, _started) = async_isle().await;
        isle.eval::<()>("ch = task.channel(1) log = {}")
            .await
            .unwrap();
        let err = isle
            .request()
            .timeout(std::time::Duration::from_millis(100))
            .eval::<()>(
                r#"
                worker = task.spawn(function()
                    while true do ch:send(1) log[#log + 1] = "sent" end
                end)
                task.spawn(function() while true do task.sleep(0.001) end end)
                task.sleep(1000)
                "#,
            )
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        let (status, len, n): (String, i64, i64) = isle
            .eval("task.sleep(0.005) return worker:status(), ch:len(), #log")
            .await
            .unwrap();
        assert_eq!((status.as_str(), len, n), ("cancelled", 1, 1));
    }

    macro_rules! on_both_runtimes {
        ($($name:ident),* $(,)?) => {
            mod current_thread {
                $(
                    #[tokio::test]
                    async fn $name() {
                        super::guarded(super::$name()).await
                    }
                )*
            }
            mod multi_thread {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::guarded(super::$name()).await
                    }
                )*
            }
        };
    }

    on_both_runtimes!(
        channels_work,
        a_cancelled_request_leaves_the_global_channel_consistent,
        several_isles_at_once,
        a_timed_out_request_ends_its_tasks,
    );
}
