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
