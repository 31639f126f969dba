//! The signal-armed interrupt (the default on Unix): nothing installed while idle, stray and
//! stale signals harmless, blocking host functions, coroutines that outlive an interrupt.
//!
//! These tests also run under valgrind (memcheck) in CI.
#![cfg(all(unix, not(feature = "luau")))]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use mlua_isle::mlua::{Lua, LuaOptions, StdLib};
use mlua_isle::{current_token, without_interrupts, Interrupt, Isle, IsleError};

/// An isle with the debug library (to look at hooks) and `started()`.
fn isle_with_debug(interrupt: Interrupt) -> (Isle, std::sync::mpsc::Receiver<()>) {
    isle_with_started(
        Isle::builder()
            .interrupt(interrupt)
            // SAFETY: the debug library is only used by these tests' own scripts.
            .factory(|| unsafe { Ok(Lua::unsafe_new_with(StdLib::ALL, LuaOptions::new())) }),
    )
}

/// The `pthread_t` of the isle's Lua thread.
fn lua_thread(isle: &Isle) -> libc::pthread_t {
    // SAFETY: `pthread_self` has no preconditions.
    isle.exec(|_| Ok(unsafe { libc::pthread_self() } as u64))
        .unwrap() as libc::pthread_t
}

/// Sends `SIGURG` to `thread`, one every 50 µs, until the returned flag is set.
fn signal_storm(thread: libc::pthread_t) -> (Arc<AtomicBool>, thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: the Lua thread outlives the storm (the isle is alive until joined).
                unsafe { libc::pthread_kill(thread, libc::SIGURG) };
                sent += 1;
                thread::sleep(Duration::from_micros(50));
            }
            sent
        })
    };
    (stop, handle)
}

#[test]
fn no_hook_is_installed_while_idle_or_after_an_interrupt() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_debug(Interrupt::default());
        assert!(isle.eval::<bool>("return debug.gethook() == nil").unwrap());
        // Coroutines are unhooked too.
        assert!(isle
            .eval::<bool>("return coroutine.wrap(function() return debug.gethook() == nil end)()")
            .unwrap());
        let task = isle
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        // The interrupt's hook is gone again.
        assert!(isle.eval::<bool>("return debug.gethook() == nil").unwrap());
    });
}

#[test]
fn a_permanent_hook_is_what_interrupt_hook_installs() {
    let (isle, _started) = isle_with_debug(Interrupt::Hook { every: 500 });
    let count: i64 = isle.eval("return select(3, debug.gethook())").unwrap();
    assert_eq!(count, 500);
}

#[test]
fn stray_signals_do_not_cancel_requests() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        let (stop, storm) = signal_storm(lua_thread(&isle));
        for i in 0..200 {
            let sum: i64 = isle
                .eval(format!(
                    "local s = 0 for i = 1, {i} * 50 do s = s + 1 end return s"
                ))
                .unwrap_or_else(|e| panic!("request {i} failed under stray signals: {e}"));
            assert_eq!(sum, i * 50);
        }
        stop.store(true, Ordering::Relaxed);
        assert!(storm.join().unwrap() > 0);
    });
}

#[test]
fn process_directed_signals_are_harmless() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        for _ in 0..100 {
            // SAFETY: SIGURG's default action is to be ignored; the isle's handler is installed.
            unsafe { libc::kill(libc::getpid(), libc::SIGURG) };
            assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
        }
    });
}

#[test]
fn a_stale_signal_after_a_cancel_does_not_touch_the_next_request() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        let thread = lua_thread(&isle);
        for _ in 0..20 {
            let task = isle
                .spawn_eval::<()>("started() while true do end")
                .unwrap();
            wait_started(&started);
            task.cancel();
            assert!(task.wait().unwrap_err().is_cancelled());
            // A late copy of the interrupt signal lands between requests and during the next.
            // SAFETY: the Lua thread is alive.
            unsafe { libc::pthread_kill(thread, libc::SIGURG) };
            let n: i64 = isle
                .eval("local s = 0 for i = 1, 20000 do s = s + 1 end return s")
                .unwrap();
            assert_eq!(n, 20000);
        }
    });
}

#[test]
fn std_sleep_in_a_host_function_survives_stray_signals() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|lua| {
            let nap = lua.create_function(|_, ms: u64| {
                let start = Instant::now();
                thread::sleep(Duration::from_millis(ms));
                Ok(start.elapsed().as_millis() as u64)
            })?;
            lua.globals().set("nap", nap)
        })
        .unwrap();
        let (stop, storm) = signal_storm(lua_thread(&isle));
        let slept: u64 = isle.call("nap", 30).unwrap();
        stop.store(true, Ordering::Relaxed);
        storm.join().unwrap();
        // `std::thread::sleep` resumes after `EINTR`: the full time is slept.
        assert!(slept >= 30, "slept {slept} ms");
    });
}

#[test]
fn without_interrupts_shields_a_blocking_call_from_signals() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|lua| {
            let shielded_poll = lua.create_function(|_, ms: i32| {
                Ok(without_interrupts(|| {
                    // SAFETY: a poll on no descriptors: a pure sleep. The signal is sent to
                    // this very thread while it is blocked, so it stays pending until the
                    // shield is lifted.
                    unsafe {
                        libc::pthread_kill(libc::pthread_self(), libc::SIGURG);
                        libc::poll(std::ptr::null_mut(), 0, ms)
                    }
                }))
            })?;
            lua.globals().set("shielded_poll", shielded_poll)
        })
        .unwrap();
        // 0: the poll timed out rather than failing with EINTR.
        assert_eq!(isle.call::<i32>("shielded_poll", 20).unwrap(), 0);
        assert_eq!(isle.eval::<i64>("1").unwrap(), 1);
    });
}

#[test]
fn a_cancel_wakes_a_host_function_blocked_in_poll() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        isle.exec(|lua| {
            let block = lua.create_function(|_, ()| loop {
                // SAFETY: a poll on no descriptors with no timeout: blocks until a signal.
                let r = unsafe { libc::poll(std::ptr::null_mut(), 0, -1) };
                assert_eq!(r, -1);
                // EINTR: look at the request; a stray signal just loops.
                if current_token().is_some_and(|t| t.is_cancelled()) {
                    return Err::<(), _>(IsleError::Cancelled.into());
                }
            })?;
            lua.globals().set("block", block)
        })
        .unwrap();
        let task = isle.spawn_eval::<()>("started() block()").unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        assert_eq!(isle.eval::<i64>("2").unwrap(), 2);
    });
}

#[test]
fn coroutines_resumed_from_rust_are_interrupted() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        let task = isle
            .spawn_exec(|lua| {
                let f = lua
                    .load("return function() started() while true do end end")
                    .eval::<mlua_isle::mlua::Function>()?;
                let co = lua.create_thread(f)?;
                co.resume::<()>(())
            })
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
    });
}

/// Resetting a coroutine that died of an error needs Lua 5.4's `lua_closethread`; before 5.4
/// mlua refuses to reset one.
#[test]
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn a_reused_coroutine_can_be_interrupted_again() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        // Interrupted where it cannot yield (inside a sort comparator), the coroutine is killed
        // by the interrupt's error, which leaves Lua's hooks disabled in it; the isle allows
        // them again when it is resumed after `Thread::reset`, so it stays interruptible when
        // reused (the body installed by `Thread::reset` also re-enables them with `pcall`).
        isle.eval::<()>(
            "victim = coroutine.create(function()
               table.sort({3, 2, 1}, function() started() while true do end end)
             end)
             function body()
               local ok, err = pcall(table.sort, {3, 2, 1}, function() started() while true do end end)
               error(err, 0)
             end",
        )
        .unwrap();
        for round in 0..3 {
            let task = isle
                .spawn_exec(|lua| {
                    let victim: mlua_isle::mlua::Thread = lua.globals().get("victim")?;
                    victim.resume::<()>(())
                })
                .unwrap();
            wait_started(&started);
            task.cancel();
            assert!(task.wait().unwrap_err().is_cancelled(), "round {round}");
            isle.exec(|lua| {
                let victim: mlua_isle::mlua::Thread = lua.globals().get("victim")?;
                let body: mlua_isle::mlua::Function = lua.globals().get("body")?;
                // In Lua 5.4 the first reset of a coroutine that died of an error reports that
                // error (and cleans it up); the second installs the new body.
                let _ = victim.reset(body.clone());
                victim.reset(body)
            })
            .unwrap();
        }
    });
}

#[test]
fn deadlines_are_enforced_by_the_watchdog_without_a_hook() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        for _ in 0..5 {
            let err = isle
                .request()
                .timeout(Duration::from_millis(20))
                .eval::<()>("while true do pcall(function() while true do end end) end")
                .unwrap_err();
            assert!(err.is_timeout(), "{err:?}");
        }
        // Requests with deadlines that finish in time are unaffected.
        for _ in 0..50 {
            let n: i64 = isle
                .request()
                .timeout(Duration::from_secs(30))
                .eval("return 7")
                .unwrap();
            assert_eq!(n, 7);
        }
    });
}

#[test]
fn an_unusable_signal_is_a_spawn_error() {
    let err = Isle::builder()
        .interrupt(Interrupt::Signal {
            signal: libc::SIGKILL,
        })
        .spawn(|_| Ok(()))
        .unwrap_err();
    assert!(matches!(err, IsleError::Init(_)), "{err:?}");
}

#[test]
fn another_signal_can_be_chosen() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder().interrupt(Interrupt::Signal {
            signal: libc::SIGWINCH,
        }));
        let task = isle
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
    });
}
