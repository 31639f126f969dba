//! Deterministic tests of the windows where a racing stop request could once be lost: each
//! test stops the Lua thread inside one window, requests the stop there, then lets it go on.
//!
//! The watchdog's re-assertion of a pending stop would make good any arm lost in a window, so
//! these tests switch it off for their isle: each window must be closed on its own. One more
//! test shows the re-assertion itself, with an arm dropped on purpose.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use crate::core::pause::{self, Window};
use crate::{Isle, IsleError};

/// How long a test waits for anything before it fails instead of hanging.
const HANG_GUARD: Duration = Duration::from_secs(10);

/// An isle on a thread named `name` with `started()`, and a grace period far beyond the hang
/// guard, so that a lost stop shows as a hang rather than as a hard stop.
fn isle(name: &str, drop_arms: usize, reassert: bool) -> (Isle, Receiver<()>) {
    let builder = Isle::builder()
        .thread_name(name)
        .grace_period(Duration::from_secs(60));
    let (isle, rx) = isle_with_started(builder, move || super::signal::drop_next_arms(drop_arms));
    isle.shared()
        .reassert_disabled
        .store(!reassert, Ordering::SeqCst);
    (isle, rx)
}

/// An isle from `builder` whose `init` runs `setup` on the Lua thread and installs
/// `started()`, which reports on the returned channel.
pub(super) fn isle_with_started(
    builder: crate::IsleBuilder,
    setup: impl FnOnce() + Send + 'static,
) -> (Isle, Receiver<()>) {
    let (tx, rx) = channel();
    let isle = builder
        .spawn(move |lua| {
            setup();
            let started = lua.create_function(move |_, ()| {
                let _ = tx.send(());
                Ok(())
            })?;
            lua.globals().set("started", started)
        })
        .unwrap();
    (isle, rx)
}

/// Waits until the signal handler has armed the hook more than `before` times on `isle`.
fn wait_for_signal_arm(isle: &Isle, before: usize) {
    let give_up = Instant::now() + HANG_GUARD;
    while isle.shared().interrupter.signal_arms.load(Ordering::SeqCst) <= before {
        assert!(Instant::now() < give_up, "the signal never armed the hook");
        std::thread::yield_now();
    }
}

fn signal_arms(isle: &Isle) -> usize {
    isle.shared().interrupter.signal_arms.load(Ordering::SeqCst)
}

/// The isle still serves requests: it stopped the request rather than giving up on it.
fn assert_usable(isle: &Isle) {
    let task = isle.spawn_eval::<i64>("1 + 1").unwrap();
    assert_eq!(
        task.wait_timeout(HANG_GUARD).ok().map(Result::ok),
        Some(Some(2))
    );
}

fn assert_cancelled<T: Send + 'static + std::fmt::Debug>(task: crate::Task<T>) {
    match task.wait_timeout(HANG_GUARD) {
        Ok(Err(IsleError::Cancelled)) => {}
        Ok(other) => panic!("expected Cancelled, got {other:?}"),
        Err(_) => panic!("the cancel was lost: the request still runs"),
    }
}

/// A signal arrives while a hook left on a coroutine by an earlier request, finding nothing
/// pending, is about to remove itself: the removal must not undo the signal's arm.
#[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
#[test]
fn a_signal_during_a_leftover_hooks_removal_is_not_lost() {
    let name = "race-hook-removal";
    let (isle, started) = isle(name, 0, false);
    // The cancel arms `co`, whose hook yields it, then stops the main chunk: `co` is left
    // suspended with the hook still set.
    let first = isle
        .spawn_eval::<()>(
            "co = coroutine.create(function() started() while true do end end)
             coroutine.resume(co)",
        )
        .unwrap();
    started.recv_timeout(HANG_GUARD).unwrap();
    first.cancel();
    assert_cancelled(first);

    let paused = pause::arm(Window::HookRemoval, name);
    let second = isle.spawn_eval::<()>("coroutine.resume(co)").unwrap();
    paused.reached();
    let before = signal_arms(&isle);
    second.cancel();
    wait_for_signal_arm(&isle, before);
    paused.release();
    assert_cancelled(second);
    assert_usable(&isle);
}

/// A signal arrives while a coroutine resumed from Rust is being recorded: either the handler
/// finds it recorded, or the check after recording sees the stop.
#[test]
fn a_signal_while_a_rust_resume_is_recorded_is_not_lost() {
    let name = "race-rust-resumed";
    let (isle, _started) = isle(name, 0, false);
    let paused = pause::arm(Window::RustResumed, name);
    let task = isle
        .spawn_exec(|lua| {
            let body = lua.load("while true do end").into_function()?;
            lua.create_thread(body)?.resume::<()>(())
        })
        .unwrap();
    paused.reached();
    let before = signal_arms(&isle);
    task.cancel();
    wait_for_signal_arm(&isle, before);
    paused.release();
    assert_cancelled(task);
    assert_usable(&isle);
}

/// A signal whose arm is lost (as Lua 5.4 can lose it when it reallocates a stack, or LuaJIT
/// when two writers race on its hook mask) is made good by the watchdog delivering it again.
#[test]
fn a_lost_arm_is_made_good_by_reassertion() {
    for script in [
        "started() while true do end",
        "started() while true do pcall(function() while true do end end) end",
        "started() local t = setmetatable({}, {__index = function(t, k) while true do end end})
         return t.x",
    ] {
        let (isle, started) = isle("race-lost-arm", 2, true);
        let task = isle.spawn_eval::<()>(script).unwrap();
        started.recv_timeout(HANG_GUARD).unwrap();
        task.cancel();
        assert_cancelled(task);
        assert_usable(&isle);
    }
}

/// A lost arm is made good soon even right after an arm that took very long (which holds
/// deliveries back, so that arming a deep Lua 5.4 stack does not starve the Lua thread): the
/// hold ends at most 100 ms after that arm began, however often the watchdog looks.
#[test]
fn a_lost_arm_after_a_slow_arm_is_made_good_soon() {
    let (isle, started) = isle("race-slow-arm", 1, true);
    let task = isle
        .spawn_eval::<()>("started() while true do end")
        .unwrap();
    started.recv_timeout(HANG_GUARD).unwrap();
    // Nine times this would be far past the hang guard.
    isle.shared()
        .interrupter
        .arm_pace
        .record_slow_arm(Duration::from_secs(5));
    task.cancel();
    assert_cancelled(task);
    assert_usable(&isle);
}

/// A cancel lands between a coroutine request's check that it need not stop and the start of
/// its next stretch: the stretch must start stopped.
#[cfg(feature = "tokio")]
#[test]
fn a_cancel_between_coroutine_stretches_is_not_lost() {
    use std::sync::Arc;

    let name = "race-coroutine-stretch";
    let go = Arc::new(tokio::sync::Notify::new());
    let (tx, started) = channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (isle, _driver) = crate::AsyncIsle::builder()
            .thread_name(name)
            .grace_period(Duration::from_secs(60))
            .spawn_async({
                let go = go.clone();
                move |lua| {
                    // Tells the test once it waits, so that the test's `go` cannot come first.
                    let wait_go = lua.create_async_function(move |_, ()| {
                        let go = go.clone();
                        let tx = tx.clone();
                        async move {
                            let notified = go.notified();
                            tokio::pin!(notified);
                            let _ = tx.send(());
                            // Suspends at least once, so that the next stretch starts only
                            // after the test's `go`, whenever that comes.
                            let mut first = true;
                            std::future::poll_fn(|cx| {
                                let ready =
                                    std::future::Future::poll(notified.as_mut(), cx).is_ready();
                                if std::mem::take(&mut first) {
                                    if ready {
                                        cx.waker().wake_by_ref();
                                    }
                                    return std::task::Poll::Pending;
                                }
                                if ready {
                                    std::task::Poll::Ready(())
                                } else {
                                    std::task::Poll::Pending
                                }
                            })
                            .await;
                            Ok(())
                        }
                    })?;
                    lua.globals().set("wait_go", wait_go)
                }
            })
            .await
            .unwrap();
        isle.shared()
            .reassert_disabled
            .store(true, Ordering::SeqCst);
        let task = isle
            .spawn_coroutine_eval::<()>("wait_go() while true do end")
            .await
            .unwrap();
        started.recv_timeout(HANG_GUARD).unwrap();
        let paused = pause::arm(Window::CoroutineStretch, name);
        go.notify_one();
        paused.reached();
        task.cancel();
        paused.release();
        match tokio::time::timeout(HANG_GUARD, task).await {
            Ok(Err(IsleError::Cancelled)) => {}
            Ok(other) => panic!("expected Cancelled, got {other:?}"),
            Err(_) => panic!("the cancel was lost: the coroutine request still runs"),
        }
        assert_eq!(isle.eval::<i64>("1 + 1").await.unwrap(), 2);
    });
}

/// A kill lands after the Lua thread checked for one and before its job is published as
/// running: the job's token must still be cancelled, so that a host function polling it stops.
#[test]
fn a_kill_just_before_a_job_starts_reaches_its_token() {
    let name = "race-job-start";
    let isle = Isle::builder()
        .thread_name(name)
        .grace_period(Duration::from_secs(60))
        .spawn(|lua| {
            let wait = lua.create_function(|_, ()| {
                while crate::checkpoint().is_ok() {
                    std::thread::yield_now();
                }
                Ok(())
            })?;
            lua.globals().set("wait_for_cancel", wait)
        })
        .unwrap();
    let shared = isle.shared().clone();
    let paused = pause::arm(Window::JobStart, name);
    let task = isle.spawn_eval::<()>("wait_for_cancel()").unwrap();
    paused.reached();
    let shutdown = std::thread::spawn(move || isle.shutdown_timeout(Duration::ZERO));
    let give_up = Instant::now() + HANG_GUARD;
    while !shared.interrupter.is_killed() {
        assert!(Instant::now() < give_up, "the isle was never killed");
        std::thread::yield_now();
    }
    paused.release();
    match task.wait_timeout(HANG_GUARD) {
        Ok(Err(IsleError::Shutdown)) => {}
        Ok(other) => panic!("expected Shutdown, got {other:?}"),
        Err(_) => panic!("the kill never reached the request's token"),
    }
    shutdown.join().unwrap().unwrap();
}

/// On Lua 5.3 to 5.5 a resume that fails before it starts builds its message outside any
/// protected call; if that allocation failed at the memory limit, the error skipped the
/// wrapper that takes the coroutine off the resume chain, and a later interrupt wrote into the
/// coroutine once it was freed. The messages are kept interned, so the chain is always
/// restored.
#[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
#[test]
fn a_resume_failing_at_the_memory_limit_leaves_the_chain_as_it_was() {
    let isle = Isle::builder()
        .memory_limit(8 << 20)
        .spawn(|lua| {
            let depth = lua.create_function(|_, ()| Ok(super::chain::depth()))?;
            lua.globals().set("chain_depth", depth)
        })
        .unwrap();
    // Fills memory so that only a few bytes are left, in steps, then resumes a dead
    // coroutine; tries pad sizes until the resume fails for lack of memory.
    let script = r#"
        local sub, format, resume, create = string.sub, string.format, coroutine.resume, coroutine.create
        local parts = {}
        for i = 1, 400 do parts[i] = format("%05d", i) end
        local pool = table.concat(parts)
        parts = nil
        local slots, idx
        local function fill_long(len)
          while true do idx = idx + 1; slots[idx] = sub(pool, 1, len) end
        end
        local function fill_short()
          while true do idx = idx + 1; slots[idx] = format("%020d", idx) end
        end
        local lens = {1000, 300, 100, 41}
        local function attempt(p)
          local d = create(function() end)
          resume(d)
          slots = {}
          for i = 1, 60000 do slots[i] = false end
          idx = 0
          collectgarbage()
          for i = 1, 4 do pcall(fill_long, lens[i]) end
          pcall(fill_short)
          local pad = sub(pool, p, p + 40 + (p % 50))
          pcall(resume, d)
        end
        local deepest = 1
        for p = 1, 200 do
          pcall(attempt, p)
          slots = nil
          collectgarbage()
          local depth = chain_depth()
          if depth > deepest then deepest = depth end
        end
        return deepest"#;
    let deepest: usize = isle.eval(script).unwrap();
    assert_eq!(deepest, 1);
}

#[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
/// Test host function: arms the interrupt hook on the calling coroutine with nothing
/// pending, so that the hook fires at the next instruction as a leftover and removes itself.
unsafe extern "C-unwind" fn arm_here(state: *mut mlua::ffi::lua_State) -> std::ffi::c_int {
    // SAFETY: `state` is the calling coroutine, alive while it runs.
    unsafe { super::hook::arm(state) };
    0
}

/// A slice comes due while a leftover hook on the running task is about to remove itself:
/// the removal must not undo the signal's arm of the task (the task would never be
/// preempted, and here its sibling would never run).
#[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
#[test]
fn a_slice_coming_due_during_a_leftover_hooks_removal_is_not_lost() {
    let name = "race-preempt-removal";
    // A slice far beyond the test: only the test preempts.
    let isle = Isle::builder()
        .thread_name(name)
        .grace_period(Duration::from_secs(60))
        .task_library(crate::TaskLibrary::new().time_slice(Some(Duration::from_secs(3600))))
        .spawn(|lua| {
            // SAFETY: `arm_here` only sets the calling coroutine's hook.
            let arm = unsafe { lua.create_c_function(arm_here)? };
            lua.globals().set("arm_here", arm)
        })
        .unwrap();
    let paused = pause::arm(Window::HookRemoval, name);
    let task = isle
        .spawn_eval::<String>(
            "done = false
             local spinner = task.spawn(function() arm_here() while not done do end return 'spun' end)
             task.spawn(function() done = true end)
             return spinner:join()",
        )
        .unwrap();
    paused.reached();
    let interrupter = &isle.shared().interrupter;
    let (epoch, in_task) = interrupter.slices().observe();
    assert!(in_task);
    let before = signal_arms(&isle);
    interrupter.preempt(epoch, false);
    wait_for_signal_arm(&isle, before);
    paused.release();
    match task.wait_timeout(HANG_GUARD) {
        Ok(Ok(spun)) => assert_eq!(spun, "spun"),
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("the preemption was lost: the task still spins"),
    }
}
