//! Stress for the `task` library: a thousand tasks exchange a hundred thousand messages over
//! channels of mixed capacities (rendezvous included) while random tasks are cancelled in every
//! state. Every message must arrive at most once, and every message whose send returned `true`
//! must arrive (or still be buffered at the end); no task may be left behind.
//!
//! The schedule is deterministic: a seeded generator (Park–Miller, exact in doubles, so every
//! Lua version draws the same numbers) picks channels, operations and victims; the request's own
//! code cancels at milestones the producers report on a channel, never after a sleep.
//!
//! These runs are cooperative (no time slice): the scripts' own bookkeeping (allocating an id,
//! recording what arrived) must not be cut by a cancel between two of its statements, which
//! preemption allows (a task is then like a thread: its plain Lua code is not atomic). The last
//! test runs with preemption every 100 µs and checks what still holds there.

mod common;

use common::within_hang_guard;
use mlua_isle::{Isle, TaskLibrary};

const STRESS: &str = r#"
    local TOTAL, PRODUCERS, CONSUMERS, CHANNELS, ABORT_AT, HOW = ...
    local MILESTONE = 1000
    local CANCELS_PER_MILESTONE = 5

    -- Park–Miller minimal standard generator.
    local seed = 20240611
    local function rand(n)
        seed = (seed * 48271) % 2147483647
        return seed % n + 1
    end

    local caps = {0, 1, 2, 8, 64}
    local chans = {}
    for i = 1, CHANNELS do chans[i] = task.channel(caps[(i - 1) % #caps + 1]) end
    local milestones = task.channel(TOTAL / MILESTONE + 10)

    local next_id = 0
    local attempted, acked, received = {}, {}, {}
    local duplicates = 0
    local all_closed = false
    -- Kept for the request that checks what an aborted run left behind.
    stress = {chans = chans, attempted = attempted, acked = acked, received = received}

    local function record(id)
        if received[id] then duplicates = duplicates + 1 end
        received[id] = true
        stress.duplicates = duplicates
    end

    activity = 0

    local function producer()
        while next_id < TOTAL do
            activity = activity + 1
            next_id = next_id + 1
            local id = next_id
            attempted[id] = true
            if id % MILESTONE == 0 then assert(milestones:try_send(id)) end
            local how = rand(4)
            local ok
            if how == 1 then
                ok = chans[rand(CHANNELS)]:send(id)
            elseif how == 2 then
                local ch = chans[rand(CHANNELS)]
                ok = ch:try_send(id)
                if not ok then ok = ch:send(id) end
            elseif how == 3 then
                local _
                _, ok = task.select{
                    {send = chans[rand(CHANNELS)], value = id},
                    {send = chans[rand(CHANNELS)], value = id},
                }
            else
                local _
                _, ok = task.select{ {send = chans[rand(CHANNELS)], value = id}, {after = 0.5} }
                if ok == nil then
                    -- The timer won: the value was not sent.
                    ok = false
                end
            end
            if ok then acked[id] = true end
        end
        return "produced"
    end

    local function consumer()
        local cases = {}
        local start = rand(CHANNELS)
        for k = 1, CHANNELS do cases[k] = {recv = chans[(start + k - 2) % CHANNELS + 1]} end
        while true do
            activity = activity + 1
            local v, ok
            if rand(3) == 1 then
                v, ok = chans[rand(CHANNELS)]:try_recv()
            end
            if ok == nil then
                local _
                _, v, ok = task.select(cases)
            end
            if ok then
                record(v)
            elseif all_closed then
                return "consumed"
            end
        end
    end

    local producers, consumers, everyone = {}, {}, {}
    local function add(list, f)
        local h = task.spawn(f)
        list[#list + 1] = h
        everyone[#everyone + 1] = h
    end
    for i = 1, PRODUCERS + CONSUMERS do
        if i % 2 == 0 then add(producers, producer) else add(consumers, consumer) end
    end

    -- Cancel random tasks at each milestone, replacing each victim with a new task of its kind.
    local cancels, cancelled_states = 0, {}
    local reached = 0
    while reached < TOTAL do
        reached = milestones:recv()
        if ABORT_AT and reached >= ABORT_AT then
            -- End the request with every task in whatever state it is in.
            if HOW == "error" then error("aborted") end
            if HOW == "spin" then while true do end end
            return "aborted"
        end
        for k = 1, CANCELS_PER_MILESTONE do
            local list = rand(2) == 1 and producers or consumers
            local victim = list[rand(#list)]
            -- Every other victim is one blocked in send, recv or select, if one is found.
            if k % 2 == 0 then
                for _ = 1, 400 do
                    if victim:status() == "waiting" then break end
                    victim = list[rand(#list)]
                end
            end
            local state = victim:status()
            if victim:cancel() then
                cancels = cancels + 1
                cancelled_states[state] = (cancelled_states[state] or 0) + 1
                assert(victim:status() == "cancelled")
                add(list, list == producers and producer or consumer)
            end
        end
    end

    -- Every id is allocated: producers finish once consumers have taken what they block on.
    for _, h in ipairs(producers) do
        local ok, r = pcall(h.join, h)
        assert((ok and r == "produced") or (not ok and h:status() == "cancelled"), tostring(r))
    end
    all_closed = true
    for _, ch in ipairs(chans) do ch:close() end
    for _, h in ipairs(consumers) do
        local ok, r = pcall(h.join, h)
        assert((ok and r == "consumed") or (not ok and h:status() == "cancelled"), tostring(r))
    end
    -- What is still buffered (nobody was left to take it) counts as delivered.
    local leftover = 0
    for _, ch in ipairs(chans) do
        while true do
            local v, ok = ch:try_recv()
            if not ok then break end
            record(v)
            leftover = leftover + 1
        end
        assert(ch:len() == 0)
    end

    -- The checks.
    assert(duplicates == 0, duplicates .. " messages arrived twice")
    local n_acked, n_received, unacked_delivered = 0, 0, 0
    for id in pairs(acked) do
        n_acked = n_acked + 1
        assert(received[id], "message " .. id .. " was acknowledged but never arrived")
    end
    for id in pairs(received) do
        n_received = n_received + 1
        assert(attempted[id], "message " .. id .. " was never sent")
        if not acked[id] then unacked_delivered = unacked_delivered + 1 end
    end
    for _, h in ipairs(everyone) do
        local st = h:status()
        assert(st == "done" or st == "cancelled", "task left behind in state " .. st)
    end
    assert(next_id == TOTAL)
    local states = {}
    for k, v in pairs(cancelled_states) do states[#states + 1] = k .. "=" .. v end
    table.sort(states)
    return string.format(
        "%d tasks, %d cancelled (%s); %d acknowledged, %d received (%d unacknowledged, %d left in buffers)",
        #everyone, cancels, table.concat(states, " "), n_acked, n_received, unacked_delivered, leftover)
"#;

/// Checks, in a later request, what an aborted run left: every acknowledged message arrived
/// or is still buffered, none twice, and no task of the aborted request runs any more.
const CHECK_ABORTED: &str = r#"
    local before = activity
    task.sleep(0.01)
    assert(activity == before, "a task of the aborted request ran")
    local duplicates = stress.duplicates or 0
    local received = stress.received
    for _, ch in ipairs(stress.chans) do
        -- (Values handed to cancelled receivers went back: len may exceed the capacity.)
        while true do
            local v, ok = ch:try_recv()
            if not ok then break end
            if received[v] then duplicates = duplicates + 1 end
            received[v] = true
        end
    end
    assert(duplicates == 0, duplicates .. " messages arrived twice")
    local n = 0
    for id in pairs(stress.acked) do
        n = n + 1
        assert(received[id], "message " .. id .. " was acknowledged but is lost")
    end
    for id in pairs(received) do assert(stress.attempted[id], "message " .. id .. " was never sent") end
    return n
"#;

#[test]
fn requests_that_end_mid_exchange_lose_no_acknowledged_message() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .task_library(TaskLibrary::new().time_slice(None))
            .spawn(|_| Ok(()))
            .unwrap();
        for (how, abort_at) in [("return", 3000), ("error", 5000), ("spin", 4000)] {
            let run = isle
                .request()
                .timeout(std::time::Duration::from_secs(if how == "spin" {
                    1
                } else {
                    25
                }));
            let outcome = run.exec(move |lua| {
                lua.load(STRESS)
                    .call::<String>((20_000, 100, 100, 10, abort_at, how))
            });
            match how {
                "return" => assert_eq!(outcome.unwrap(), "aborted"),
                "error" => assert!(outcome.unwrap_err().to_string().contains("aborted")),
                _ => assert!(outcome.unwrap_err().is_timeout()),
            }
            let acked: i64 = isle
                .eval(CHECK_ABORTED)
                .unwrap_or_else(|e| panic!("after {how}: {e}"));
            // (A slow machine may hit the spinning request's deadline before it aborts.)
            assert!(how == "spin" || acked > 1000, "after {how}: {acked}");
        }
    });
}

#[test]
fn a_thousand_tasks_exchange_a_hundred_thousand_messages_under_cancellation() {
    let summary = within_hang_guard(|| {
        let isle = Isle::builder()
            .task_library(TaskLibrary::new().time_slice(None))
            .spawn(|_| Ok(()))
            .unwrap();
        let started = std::time::Instant::now();
        let summary: String = isle
            .exec(|lua| lua.load(STRESS).call((100_000, 500, 500, 20)))
            .unwrap_or_else(|e| panic!("{e}"));
        // Nothing of the request runs in the next one.
        let still: bool = isle
            .eval("local before = activity task.sleep(0.01) return activity == before")
            .unwrap();
        assert!(
            still,
            "a task of the stress request ran in the next request"
        );
        format!("{summary} in {:?}", started.elapsed())
    });
    println!("{summary}");
}

/// Producers and consumers cut anywhere by preemption (tasks also spin in their own code, and
/// spinning tasks that never block run beside them: without preemption the request would never
/// get control back), random producers and consumers cancelled: no message arrives twice,
/// nothing arrives that was not sent, every task ends, and an acknowledged message is missing
/// only where a consumer was cancelled after taking it and before noting it (at most one per
/// cancelled consumer).
#[cfg(any(
    feature = "lua53",
    feature = "lua54",
    feature = "lua55",
    feature = "luau"
))]
const PREEMPTED_STRESS: &str = r#"
    local TOTAL, PRODUCERS, CONSUMERS, CHANNELS, SPINNERS = ...
    local seed = 20241130
    local function rand(n)
        seed = (seed * 48271) % 2147483647
        return seed % n + 1
    end
    local caps = {0, 1, 2, 8, 64}
    local chans = {}
    for i = 1, CHANNELS do chans[i] = task.channel(caps[(i - 1) % #caps + 1]) end
    -- Ids come from a channel: taking one is a single library call, which preemption does not
    -- cut (a shared counter read and written by two statements would be).
    local ids = task.channel(TOTAL)
    for id = 1, TOTAL do assert(ids:try_send(id)) end
    local attempted, acked, received = {}, {}, {}
    local duplicates = 0
    local stop = false

    local function producer()
        while true do
            local id = ids:try_recv()
            if id == nil then return "produced" end
            attempted[id] = true
            for _ = 1, rand(300) do end
            local ok
            if rand(2) == 1 then
                ok = chans[rand(CHANNELS)]:send(id)
            else
                local _
                _, ok = task.select{
                    {send = chans[rand(CHANNELS)], value = id},
                    {send = chans[rand(CHANNELS)], value = id},
                }
            end
            if ok then acked[id] = true end
        end
    end
    local function consumer()
        local cases = {}
        for k = 1, CHANNELS do cases[k] = {recv = chans[k]} end
        while true do
            local _, v, ok = task.select(cases)
            if ok then
                if received[v] then duplicates = duplicates + 1 end
                received[v] = true
                for _ = 1, rand(300) do end
            elseif stop then
                return "consumed"
            end
        end
    end
    local function spinner()
        local n = 0
        while not stop do n = n + 1 end
        return "spun"
    end

    local producers, consumers, everyone = {}, {}, {}
    local function add(list, f)
        local h = task.spawn(f)
        list[#list + 1] = h
        everyone[#everyone + 1] = h
    end
    for _ = 1, PRODUCERS do add(producers, producer) end
    for _ = 1, CONSUMERS do add(consumers, consumer) end
    for _ = 1, SPINNERS do add(everyone, spinner) end

    -- The request's own code (never preempted) runs between rounds of the ready tasks.
    local consumer_cancels, rounds = 0, 0
    while ids:len() > 0 do
        task.yield()
        rounds = rounds + 1
        if rand(4) == 1 then
            local list = rand(2) == 1 and producers or consumers
            local victim = list[rand(#list)]
            if victim:cancel() then
                if list == consumers then consumer_cancels = consumer_cancels + 1 end
                add(list, list == producers and producer or consumer)
            end
        end
    end
    for _, h in ipairs(producers) do pcall(h.join, h) end
    stop = true
    for _, ch in ipairs(chans) do ch:close() end
    for _, h in ipairs(everyone) do pcall(h.join, h) end
    for _, ch in ipairs(chans) do
        while true do
            local v, ok = ch:try_recv()
            if not ok then break end
            if received[v] then duplicates = duplicates + 1 end
            received[v] = true
        end
    end

    assert(duplicates == 0, duplicates .. " messages arrived twice")
    local lost = 0
    for id in pairs(acked) do
        if not received[id] then lost = lost + 1 end
    end
    assert(lost <= consumer_cancels,
        lost .. " acknowledged messages lost, " .. consumer_cancels .. " consumers cancelled")
    local n_received = 0
    for id in pairs(received) do
        n_received = n_received + 1
        assert(attempted[id], "message " .. id .. " was never sent")
    end
    for _, h in ipairs(everyone) do
        local st = h:status()
        assert(st == "done" or st == "cancelled", "task left behind in state " .. st)
    end
    return string.format("%d tasks, %d rounds, %d received, %d lost to %d cancelled consumers",
        #everyone, rounds, n_received, lost, consumer_cancels)
"#;

// (Tasks are preempted on Lua 5.3+ and Luau only; elsewhere the spinners would never yield.)
#[cfg(any(
    feature = "lua53",
    feature = "lua54",
    feature = "lua55",
    feature = "luau"
))]
#[test]
fn preempted_tasks_exchanging_messages_under_cancellation_deliver_nothing_twice() {
    let summary = within_hang_guard(|| {
        let isle = Isle::builder()
            .task_library(
                TaskLibrary::new().time_slice(Some(std::time::Duration::from_micros(100))),
            )
            .spawn(|_| Ok(()))
            .unwrap();
        isle.exec(|lua| {
            lua.load(PREEMPTED_STRESS)
                .call::<String>((20_000, 50, 50, 10, 2))
        })
        .unwrap_or_else(|e| panic!("{e}"))
    });
    println!("{summary}");
}
