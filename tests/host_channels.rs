//! Host channels: Rust → Lua, Lua → Rust, request/reply, closing and shutdown.

mod common;

use std::time::Duration;

use common::within_hang_guard;
use mlua_isle::host::{self, RecvError, RequestError, TrySendError};
use mlua_isle::{Isle, IsleError, TaskLibrary};

fn isle() -> Isle {
    Isle::builder()
        .task_library(TaskLibrary::new())
        .spawn(|_| Ok(()))
        .unwrap()
}

/// An isle with `inbox` (Rust → Lua), `outbox` (Lua → Rust) and `requests` globals.
struct Wired {
    isle: Isle,
    to_lua: host::Sender<i64>,
    from_lua: host::Receiver<i64>,
    ask: host::Requester<i64, i64>,
}

fn wired(capacity: usize) -> Wired {
    let isle = isle();
    let (to_lua, from_lua, ask) = isle
        .exec(move |lua| {
            let (to_lua, inbox) = host::channel_to_lua::<i64>(lua, capacity)?;
            let (from_lua, outbox) = host::channel_from_lua::<i64>(lua, capacity)?;
            let (ask, requests) = host::request_channel::<i64, i64>(lua, capacity)?;
            lua.globals().set("inbox", inbox)?;
            lua.globals().set("outbox", outbox)?;
            lua.globals().set("requests", requests)?;
            Ok((to_lua, from_lua, ask))
        })
        .unwrap();
    Wired {
        isle,
        to_lua,
        from_lua,
        ask,
    }
}

#[test]
fn values_flow_both_ways_and_loops_end_when_the_host_closes() {
    within_hang_guard(|| {
        let w = wired(4);
        let serving = w
            .isle
            .spawn_eval::<i64>(
                "local n = 0 for v in inbox do n = n + 1 outbox:send(v * 10) end return n",
            )
            .unwrap();
        for i in 0..100 {
            w.to_lua.send_blocking(i).unwrap();
            assert_eq!(w.from_lua.recv_blocking().unwrap(), i * 10);
        }
        drop(w.to_lua);
        assert_eq!(serving.wait().unwrap(), 100);
    });
}

#[test]
fn a_script_sending_to_a_full_channel_waits_for_the_host_to_receive() {
    within_hang_guard(|| {
        let w = wired(2);
        let sending = w
            .isle
            .spawn_eval::<bool>("for i = 1, 50 do assert(outbox:send(i)) end return true")
            .unwrap();
        for i in 1..=50 {
            assert_eq!(w.from_lua.recv_blocking(), Ok(i));
        }
        assert!(sending.wait().unwrap());
    });
}

#[test]
fn try_operations_report_full_empty_and_closed() {
    within_hang_guard(|| {
        let w = wired(1);
        w.to_lua.try_send(1).unwrap();
        assert!(matches!(w.to_lua.try_send(2), Err(TrySendError::Full(2))));
        let (v, ok, v2, ok2): (i64, bool, Option<i64>, Option<bool>) = w
            .isle
            .eval("local v, ok = inbox:try_recv() return v, ok, inbox:try_recv()")
            .unwrap();
        assert_eq!((v, ok, v2, ok2), (1, true, None, None));
        assert_eq!(w.from_lua.try_recv(), Err(RecvError::Empty));
        let (a, b, why): (bool, bool, String) = w
            .isle
            .eval("local a = outbox:try_send(1) local b, why = outbox:try_send(2) return a, b, why")
            .unwrap();
        assert_eq!((a, b, why.as_str()), (true, false, "full"));
        w.from_lua.close();
        assert_eq!(w.from_lua.try_recv(), Ok(1));
        assert_eq!(w.from_lua.try_recv(), Err(RecvError::Closed));
        let (sent, why): (bool, String) = w.isle.eval("return outbox:try_send(3)").unwrap();
        assert_eq!((sent, why.as_str()), (false, "closed"));
        assert!(!w.isle.eval::<bool>("return outbox:send(3)").unwrap());
        assert_eq!(
            w.from_lua.recv_timeout(Duration::from_millis(1)),
            Err(RecvError::Closed)
        );
    });
}

#[test]
fn closing_the_lua_end_fails_the_host_sender() {
    within_hang_guard(|| {
        let w = wired(1);
        w.to_lua.send_blocking(1).unwrap();
        // The host blocks on a full channel; the script closes its end.
        let to_lua = w.to_lua.clone();
        let blocked = std::thread::spawn(move || to_lua.send_blocking(2));
        let closed: bool = w.isle.eval("return inbox:close()").unwrap();
        assert!(closed);
        assert!(blocked.join().unwrap().is_err());
        assert!(w.to_lua.is_closed());
        // What was buffered before the close is still there.
        let (v, ok): (i64, bool) = w.isle.eval("return inbox:recv()").unwrap();
        assert_eq!((v, ok), (1, true));
    });
}

#[test]
fn requests_are_answered_rejected_or_resolved_unanswered_when_the_request_ends() {
    within_hang_guard(|| {
        let w = wired(8);
        let server = w
            .isle
            .spawn_eval::<i64>(
                r#"
                local n = 0
                for req in requests do
                    n = n + 1
                    if req.value < 0 then req:reject("negative")
                    elseif req.value == 0 then kept = req outbox:send(0) -- never answered
                    else req:reply(req.value * 2) end
                end
                return n
                "#,
            )
            .unwrap();
        let timeout = Duration::from_secs(10);
        assert_eq!(w.ask.request_blocking(21, timeout), Ok(42));
        assert_eq!(
            w.ask.request_blocking(-1, timeout),
            Err(RequestError::Rejected("negative".into()))
        );
        // Unanswered while the serving request runs: the requester waits; it is resolved
        // when that request ends (here: when the host closes the channel).
        let ask = w.ask.clone();
        let pending = std::thread::spawn(move || ask.request_blocking(0, Duration::from_secs(20)));
        assert_eq!(w.from_lua.recv_blocking(), Ok(0)); // the script holds it
        assert_eq!(w.ask.request_blocking(5, timeout), Ok(10));
        // Closing ends the server's loop although the pending thread still holds a clone.
        w.ask.close();
        assert_eq!(server.wait().unwrap(), 4);
        assert_eq!(pending.join().unwrap(), Err(RequestError::Unanswered));
        // Answering it in a later request is an error, not a delivery.
        let err = w.isle.eval::<()>("kept:reply(1)").unwrap_err();
        assert!(err.to_string().contains("answered already"), "{err}");
    });
}

#[test]
fn a_request_times_out_on_the_rust_side_and_a_late_answer_goes_nowhere() {
    within_hang_guard(|| {
        let w = wired(8);
        assert_eq!(
            w.ask.request_blocking(1, Duration::from_millis(20)),
            Err(RequestError::Timeout)
        );
        // The script finds the withdrawn request gone; answering a live one still works.
        let server = w
            .isle
            .spawn_eval::<i64>("local req = requests:recv() req:reply(req.value) return req.value")
            .unwrap();
        assert_eq!(w.ask.request_blocking(7, Duration::from_secs(10)), Ok(7));
        assert_eq!(server.wait().unwrap(), 7);
    });
}

#[test]
fn a_cancelled_serving_request_resolves_what_it_owes() {
    within_hang_guard(|| {
        let w = wired(8);
        let isle_task = w
            .isle
            .spawn_eval::<()>("local req = requests:recv() outbox:send(1) task.sleep(1000)")
            .unwrap();
        let ask = w.ask.clone();
        let asking = std::thread::spawn(move || ask.request_blocking(3, Duration::from_secs(20)));
        // The script holds the request now.
        assert_eq!(w.from_lua.recv_blocking(), Ok(1));
        isle_task.cancel();
        assert!(isle_task.wait().unwrap_err().is_cancelled());
        assert_eq!(asking.join().unwrap(), Err(RequestError::Unanswered));
    });
}

#[test]
fn shutting_down_while_a_script_waits_on_a_host_channel_never_hangs() {
    within_hang_guard(|| {
        let w = wired(4);
        let serving = w
            .isle
            .spawn_eval::<i64>("local n = 0 for v in inbox do n = n + v end return n")
            .unwrap();
        w.to_lua.send_blocking(5).unwrap();
        // The host keeps its sender; shutting down ends the loop.
        w.isle.shutdown().unwrap();
        assert_eq!(serving.wait().unwrap(), 5);
        assert!(w.to_lua.try_send(1).is_err());
    });
}

#[test]
fn dropping_the_isle_while_a_script_waits_never_hangs() {
    within_hang_guard(|| {
        let w = wired(4);
        let serving = w
            .isle
            .spawn_eval::<bool>("return outbox:send(1) and outbox:send(2) and outbox:send(3) and requests:recv() == nil")
            .unwrap();
        drop(w.isle);
        assert!(serving.wait().unwrap());
        let mut got = Vec::new();
        while let Ok(v) = w.from_lua.recv_blocking() {
            got.push(v);
        }
        assert_eq!(got, [1, 2, 3]);
    });
}

#[test]
fn select_gathers_from_host_channels_and_lua_channels() {
    within_hang_guard(|| {
        let w = wired(16);
        let gathering = w
            .isle
            .spawn_eval::<i64>(
                r#"
                local local_ch = task.channel(4)
                task.spawn(function() for i = 1, 5 do local_ch:send(100) end local_ch:close() end)
                local sum, host_open, local_open = 0, true, true
                local cases = { {recv = inbox}, {recv = local_ch} }
                while host_open or local_open do
                    local i, v, ok = task.select(cases)
                    if not ok then
                        if i == 1 then host_open = false else local_open = false end
                    else
                        sum = sum + v
                    end
                end
                return sum
                "#,
            )
            .unwrap();
        for i in 1..=10 {
            w.to_lua.send_blocking(i).unwrap();
        }
        drop(w.to_lua);
        assert_eq!(gathering.wait().unwrap(), 55 + 500);
    });
}

#[test]
fn host_channels_need_the_task_library_and_a_capacity() {
    let plain = Isle::spawn(|_| Ok(())).unwrap();
    let err = plain
        .exec(|lua| host::channel_to_lua::<i64>(lua, 4).map(|_| ()))
        .unwrap_err();
    assert!(err.to_string().contains("task library"), "{err}");
    let isle = isle();
    let err = isle
        .exec(|lua| host::channel_from_lua::<i64>(lua, 0).map(|_| ()))
        .unwrap_err();
    assert!(err.to_string().contains("capacity"), "{err}");
    // A value that does not convert raises in the script.
    let w = wired(4);
    let err = w
        .isle
        .eval::<()>("outbox:send('not a number')")
        .unwrap_err();
    assert!(matches!(err, IsleError::Lua(_)), "{err:?}");
}

#[cfg(feature = "tokio")]
async fn async_round_trip() {
    let (isle, driver) = mlua_isle::AsyncIsle::builder()
        .task_library(TaskLibrary::new())
        .spawn_async(|_| Ok(()))
        .await
        .unwrap();
    let (to_lua, from_lua, ask) = isle
        .exec(|lua| {
            let (to_lua, inbox) = host::channel_to_lua::<i64>(lua, 4)?;
            let (from_lua, outbox) = host::channel_from_lua::<i64>(lua, 4)?;
            let (ask, requests) = host::request_channel::<i64, i64>(lua, 4)?;
            lua.globals().set("inbox", inbox)?;
            lua.globals().set("outbox", outbox)?;
            lua.globals().set("requests", requests)?;
            Ok((to_lua, from_lua, ask))
        })
        .await
        .unwrap();
    let serving = isle
        .spawn_eval::<()>(
            r#"
            local cases = { {recv = inbox}, {recv = requests} }
            while true do
                local i, v, ok = task.select(cases)
                if not ok then break end
                if i == 1 then outbox:send(v + 1) else v:reply(v.value * 3) end
            end
            "#,
        )
        .await
        .unwrap();
    for i in 0..20 {
        to_lua.send(i).await.unwrap();
        assert_eq!(from_lua.recv().await.unwrap(), i + 1);
        assert_eq!(ask.request(i).await.unwrap(), i * 3);
        assert_eq!(
            ask.request_timeout(i, Duration::from_secs(10)).await,
            Ok(i * 3)
        );
    }
    // Shutting the driver down while the script waits on the host channels never hangs.
    driver.shutdown().await.unwrap();
    serving.await.unwrap();
    assert!(to_lua.send(1).await.is_err());
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn async_ends_work_on_a_current_thread_runtime() {
    tokio::time::timeout(common::HANG, async_round_trip())
        .await
        .unwrap();
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_ends_work_on_a_multi_thread_runtime() {
    tokio::time::timeout(common::HANG, async_round_trip())
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Host ends are shared by every request: what they hold stays out of scripts' reach
// ---------------------------------------------------------------------------------------------

/// A sandboxed isle with `from_host` (Rust → Lua, capacity 4) and `to_host` (Lua → Rust,
/// capacity 1) globals, and `started()`, reported on the last channel.
struct Sandboxed {
    isle: Isle,
    to_lua: host::Sender<String>,
    from_lua: host::Receiver<String>,
    started: std::sync::mpsc::Receiver<()>,
}

fn sandboxed() -> Sandboxed {
    let (tx, started) = std::sync::mpsc::channel::<()>();
    let (isle, (to_lua, from_lua)) = Isle::builder()
        .sandboxed()
        .task_library(TaskLibrary::new())
        .spawn_with(move |lua| {
            let (to_lua, from_host) = host::channel_to_lua::<String>(lua, 4)?;
            let (from_lua, to_host) = host::channel_from_lua::<String>(lua, 1)?;
            lua.globals().set("from_host", from_host)?;
            lua.globals().set("to_host", to_host)?;
            let started = lua.create_function(move |_, ()| {
                let _ = tx.send(());
                Ok(())
            })?;
            lua.globals().set("started", started)?;
            Ok((to_lua, from_lua))
        })
        .unwrap();
    Sandboxed {
        isle,
        to_lua,
        from_lua,
        started,
    }
}

/// What `from_host.log` or `to_host.log` holds first, however a request gets at it.
const READ_LOG: &str = r#"
    for _, port in ipairs({from_host, to_host}) do
        local ok, log = pcall(function() return rawget(port, "log") or port.log end)
        if ok and type(log) == "table" and log[1] ~= nil then return tostring(log[1]) end
    end
    return nil
"#;

#[test]
fn a_sandboxed_request_cannot_see_what_later_requests_receive_from_a_host_channel() {
    within_hang_guard(|| {
        let s = sandboxed();
        // The first request's outcome does not matter.
        let _ = s.isle.eval::<()>(
            r#"
            local real, log = from_host.ud, {}
            from_host.log = log
            from_host.ud = setmetatable({}, {__index = function(_, k)
                return function(_, ...)
                    local v, ok, h = real[k](real, ...)
                    if k == "try_recv" and ok then log[#log + 1] = v end
                    return v, ok, h
                end
            end})
            "#,
        );
        s.to_lua.send_blocking("secret".into()).unwrap();
        let got: String = s.isle.eval("return (from_host:recv())").unwrap();
        assert_eq!(got, "secret");
        assert_eq!(s.isle.eval::<Option<String>>(READ_LOG).unwrap(), None);
    });
}

#[test]
fn a_sandboxed_request_cannot_see_what_later_requests_send_to_the_host() {
    within_hang_guard(|| {
        let s = sandboxed();
        let _ = s.isle.eval::<()>(
            r#"
            local real, log = to_host.ud, {}
            to_host.log = log
            to_host.ud = setmetatable({}, {__index = function(_, k)
                return function(_, v, ...)
                    if k == "try_send" then log[#log + 1] = v end
                    return real[k](real, v, ...)
                end
            end})
            "#,
        );
        s.isle.eval::<()>("assert(to_host:send('secret'))").unwrap();
        assert_eq!(s.from_lua.recv_blocking().unwrap(), "secret");
        assert_eq!(s.isle.eval::<Option<String>>(READ_LOG).unwrap(), None);
    });
}

#[test]
fn a_sandboxed_request_cannot_forge_what_later_requests_receive() {
    within_hang_guard(|| {
        let s = sandboxed();
        let plants = [
            "from_host.count = 1 from_host.buf[from_host.bh] = 'forged'",
            "rawset(from_host, 'count', 1) rawset(from_host, 'bh', 1) \
             rawset(from_host, 'buf', {'forged'})",
            "rawset(from_host, 'recv', function() return 'forged', true end) \
             rawset(from_host, 'try_recv', function() return 'forged', true end)",
            // A wait that says it was handed a value from the channel and never took it.
            "local h = task.spawn(function() task.sleep(100) end) \
             rawset(h, 'w', {fired = 1, ok = true, putback = from_host, value = 'forged'})",
        ];
        for plant in plants {
            let _ = s.isle.eval::<()>(plant);
            let got: Option<String> = s.isle.eval("return (from_host:try_recv())").unwrap();
            assert_eq!(got, None, "after {plant}");
        }
        s.to_lua.send_blocking("real".into()).unwrap();
        let got: String = s.isle.eval("return (from_host:recv())").unwrap();
        assert_eq!(got, "real");
    });
}

/// A value handed to a task cancelled before it took it goes back to the channel as it came,
/// whatever a script wrote into the task's wait meanwhile.
#[test]
fn a_value_put_back_into_a_host_channel_is_the_one_the_host_sent() {
    within_hang_guard(|| {
        let s = sandboxed();
        let request = s
            .isle
            .spawn_eval::<()>(
                r#"
                local receiver = task.spawn(function() from_host:recv() end)
                local meddler = task.spawn(function()
                    while not (receiver.w and receiver.w.fired) do task.yield() end
                    receiver.w.value = "forged"
                    receiver:cancel()
                end)
                started()
                meddler:join()
                "#,
            )
            .unwrap();
        s.started.recv_timeout(common::HANG).unwrap();
        s.to_lua.send_blocking("real".into()).unwrap();
        request.wait().unwrap();
        let got: Option<String> = s.isle.eval("return (from_host:try_recv())").unwrap();
        assert_eq!(got.as_deref(), Some("real"));
    });
}

#[test]
fn a_sandboxed_request_cannot_break_or_hook_host_channels_for_later_requests() {
    within_hang_guard(|| {
        let s = sandboxed();
        let trap = "setmetatable({}, {__index = function() error('planted code ran') end})";
        let plants = [
            "from_host.ud = nil".to_owned(),
            "rawset(from_host, 'ud', nil)".to_owned(),
            "to_host.ud = nil".to_owned(),
            "rawset(to_host, 'ud', false)".to_owned(),
            "from_host.host_port = {poll = function() error('planted code ran') end}".to_owned(),
            "rawset(from_host, 'host_port', {poll = function() error('planted code ran') end})"
                .to_owned(),
            "to_host.host_port = {poll = function() error('planted code ran') end}".to_owned(),
            "rawset(to_host, 'host_port', {poll = function() error('planted code ran') end})"
                .to_owned(),
            format!("rawset(from_host, 'recvq', {trap}) rawset(to_host, 'sendq', {trap})"),
            // The queue a waiting task reaches through its wait.
            "local h = task.spawn(function() from_host:recv() end) \
             setmetatable(h.w.node.q, {__index = function() error('planted code ran') end})"
                .to_owned(),
            "assert(to_host:send('filler')) \
             local h = task.spawn(function() to_host:send('x') end) \
             setmetatable(h.w.node.q, {__index = function() error('planted code ran') end})"
                .to_owned(),
        ];
        for plant in &plants {
            let _ = s.isle.eval::<()>(plant);
            while s.from_lua.try_recv().is_ok() {}
            // Both ends still work, waiting tasks included.
            let request = s
                .isle
                .spawn_eval::<String>(
                    r#"
                    assert(to_host:send("a"))
                    local receiver = task.spawn(function() return from_host:recv() end)
                    local sender = task.spawn(function() return to_host:send("b") end)
                    started()
                    local v = receiver:join()
                    assert(sender:join() == true)
                    return v
                    "#,
                )
                .unwrap();
            let soon = Duration::from_secs(5);
            s.started.recv_timeout(soon).expect(plant);
            s.to_lua.send_blocking("real".into()).unwrap();
            assert_eq!(
                s.from_lua.recv_timeout(soon).as_deref(),
                Ok("a"),
                "after {plant}"
            );
            assert_eq!(
                s.from_lua.recv_timeout(soon).as_deref(),
                Ok("b"),
                "after {plant}"
            );
            assert_eq!(request.wait().unwrap(), "real", "after {plant}");
        }
    });
}

#[test]
fn host_ends_show_nothing_of_what_they_hold_and_take_no_fields() {
    let check = r#"
        for _, port in ipairs({inbox, outbox, requests}) do
            assert(next(port) == nil, "a field shows")
            for _, k in ipairs({"ud", "buf", "bh", "bt", "count", "recvq", "sendq", "host_port"}) do
                assert(port[k] == nil, k .. " shows")
            end
            local ok, err = pcall(function() port.x = 1 end)
            assert(not ok and err:find("read%-?only"), tostring(err))
            assert(rawget(port, "x") == nil)
        end
        assert(getmetatable(inbox) == "host receiver" and getmetatable(outbox) == "host sender")
    "#;
    let w = wired(4);
    w.isle.eval::<()>(check).unwrap();
    // In a sandboxed isle, `rawset` refuses them too (Luau: "readonly").
    let s = sandboxed();
    for port in ["from_host", "to_host"] {
        let err = s
            .isle
            .eval::<()>(format!("rawset({port}, 'x', 1)").as_str())
            .unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("read-only") || err.contains("readonly"),
            "{err}"
        );
        assert!(s
            .isle
            .eval::<bool>(format!("return rawget({port}, 'x') == nil").as_str())
            .unwrap());
    }
    // Misuse still reads as before.
    let err = w.isle.eval::<()>("inbox.recv(outbox)").unwrap_err();
    assert!(err.to_string().contains("host receiver expected"), "{err}");
    let err = w.isle.eval::<()>("outbox.send({}, 1)").unwrap_err();
    assert!(err.to_string().contains("host sender expected"), "{err}");
}
