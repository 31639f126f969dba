//! A requested stop always ends its request: a cancel escalates to the hard stop like a
//! deadline, a kill reaches host functions through the request's token, a script cannot
//! remove the interrupt for later requests, and giving up never waits for user code.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mlua_isle::{CancelToken, Interrupt, Isle, IsleBuilder, IsleError};

/// Tests here give up on isles whose threads stay stuck until released; one at a time keeps
/// the machine's cores for the ones that must not be starved.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A releasable isle (see `common::STUCK_IN_GC`) with a short grace period.
fn stuckable(builder: IsleBuilder) -> (Isle, mpsc::Receiver<()>, Arc<AtomicBool>) {
    let release = Arc::new(AtomicBool::new(false));
    let (isle, started) =
        spawn_releasable(builder.grace_period(Duration::from_millis(100)), &release);
    (isle, started, release)
}

/// The isle gave up: it refuses new work with `Abandoned`.
#[track_caller]
fn assert_abandoned(isle: &Isle) {
    eventually("the isle to give up", || !isle.is_alive());
    assert!(matches!(isle.eval::<i64>("1"), Err(IsleError::Abandoned)));
}

#[test]
fn a_cancel_of_code_no_interrupt_reaches_escalates_to_the_hard_stop() {
    let _serial = serial();
    within_hang_guard(|| {
        for interrupt in [Interrupt::default(), Interrupt::Hook { every: 1000 }] {
            let (isle, started, release) = stuckable(Isle::builder().interrupt(interrupt));
            let stuck = isle.spawn_eval::<()>(STUCK_IN_GC).unwrap();
            wait_started(&started);
            let queued = isle.spawn_eval::<i64>("return kept").unwrap();
            stuck.cancel();
            // The caller gets `Cancelled` although the code never stops...
            assert!(matches!(stuck.wait(), Err(IsleError::Cancelled)));
            // ...queued work resolves `Shutdown`, and the isle refuses new work.
            assert!(matches!(queued.wait(), Err(IsleError::Shutdown)));
            assert_abandoned(&isle);
            release.store(true, Ordering::SeqCst);
        }
    });
}

#[test]
fn a_dropped_task_escalates_to_the_hard_stop() {
    let _serial = serial();
    within_hang_guard(|| {
        let (isle, started, release) = stuckable(Isle::builder());
        let stuck = isle.spawn_eval::<()>(STUCK_IN_GC).unwrap();
        wait_started(&started);
        drop(stuck);
        assert_abandoned(&isle);
        release.store(true, Ordering::SeqCst);
    });
}

#[test]
fn a_shared_token_cancels_the_stuck_request_and_the_queued_ones() {
    let _serial = serial();
    within_hang_guard(|| {
        let (isle, started, release) = stuckable(Isle::builder());
        let token = CancelToken::new();
        let stuck = isle
            .request()
            .token(&token)
            .spawn_eval::<()>(STUCK_IN_GC)
            .unwrap();
        wait_started(&started);
        let queued = isle.request().token(&token).spawn_eval::<i64>("1").unwrap();
        token.cancel();
        assert!(matches!(queued.wait(), Err(IsleError::Cancelled)));
        assert!(matches!(stuck.wait(), Err(IsleError::Cancelled)));
        assert_abandoned(&isle);
        release.store(true, Ordering::SeqCst);
    });
}

#[test]
fn a_cancel_that_is_obeyed_within_the_grace_period_keeps_the_isle() {
    let _serial = serial();
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder().grace_period(HANG));
        let task = isle
            .spawn_eval::<()>("started() while true do pcall(function() while true do end end) end")
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(matches!(task.wait(), Err(IsleError::Cancelled)));
        assert_eq!(isle.eval::<i64>("2").unwrap(), 2);
    });
}

/// Defines `wait_for_cancel()`, a host function that reports on `started`, then waits until its
/// request's token is cancelled, polling `checkpoint`.
fn define_wait_for_cancel(
    lua: &mlua_isle::mlua::Lua,
    started: mpsc::Sender<()>,
) -> mlua_isle::mlua::Result<()> {
    let wait = lua.create_function(move |_, ()| {
        let _ = started.send(());
        while mlua_isle::checkpoint().is_ok() {
            std::thread::yield_now();
        }
        Ok(())
    })?;
    lua.globals().set("wait_for_cancel", wait)
}

/// An isle with `wait_for_cancel()`.
fn cooperative(builder: IsleBuilder) -> (Isle, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let isle = builder
        .grace_period(HANG)
        .spawn(move |lua| define_wait_for_cancel(lua, tx))
        .unwrap();
    (isle, rx)
}

#[test]
fn shutdown_timeout_cancels_the_running_requests_token() {
    let _serial = serial();
    within_hang_guard(|| {
        let (isle, started) = cooperative(Isle::builder());
        let task = isle.spawn_eval::<()>("wait_for_cancel()").unwrap();
        wait_started(&started);
        // The host function stops as soon as the kill cancels its token: no hard stop.
        isle.shutdown_timeout(Duration::from_millis(10)).unwrap();
        assert!(matches!(task.wait(), Err(IsleError::Shutdown)));
    });
}

#[cfg(feature = "tokio")]
#[test]
fn async_shutdown_timeout_cancels_the_running_requests_token() {
    let _serial = serial();
    within_hang_guard(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (tx, started) = mpsc::channel();
            let (isle, driver) = mlua_isle::AsyncIsle::builder()
                .grace_period(HANG)
                .spawn_async(move |lua| define_wait_for_cancel(lua, tx))
                .await
                .unwrap();
            let task = isle.spawn_eval::<()>("wait_for_cancel()").await.unwrap();
            wait_started(&started);
            driver
                .shutdown_timeout(Duration::from_millis(10))
                .await
                .unwrap();
            assert!(matches!(task.await, Err(IsleError::Shutdown)));
        });
    });
}

/// A killed isle stops serving at once: its handles still exist, so it must not wait for the
/// queue to disconnect. It did whenever the kill's drain emptied the queue between the end of
/// the killed request and the thread's next look at the queue (about one kill in a hundred on
/// Luau, one in a thousand elsewhere): the thread then blocked until its handles went, and the
/// shutdown gave up on it at the grace period. The grace period here is long, so that only
/// such a lost wake-up, never a slow machine, can make a shutdown give up.
#[cfg(feature = "tokio")]
#[test]
fn async_shutdown_timeout_never_waits_on_a_connected_queue() {
    let _serial = serial();
    within_hang_guard(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..100 {
                let (tx, started) = mpsc::channel();
                let (isle, driver) = mlua_isle::AsyncIsle::builder()
                    .grace_period(Duration::from_secs(5))
                    .spawn_async(move |lua| {
                        let f = lua.create_function(move |_, ()| Ok(tx.send(()).is_ok()))?;
                        lua.globals().set("started", f)
                    })
                    .await
                    .unwrap();
                let stuck = isle
                    .spawn_eval::<()>(
                        "started() while true do pcall(function() while true do end end) end",
                    )
                    .await
                    .unwrap();
                wait_started(&started);
                let mut queued = Vec::new();
                for _ in 0..5 {
                    queued.push(isle.spawn_eval::<()>("return").await.unwrap());
                }
                let shutdown = driver.shutdown_timeout(Duration::from_millis(1)).await;
                assert!(shutdown.is_ok(), "shutdown_timeout: {shutdown:?}");
                assert!(matches!(stuck.await, Err(IsleError::Shutdown)));
                for task in queued {
                    assert!(matches!(task.await, Err(IsleError::Shutdown)));
                }
            }
        });
    });
}

/// Scripts that remove the interrupt hook with the debug library.
#[cfg(not(feature = "luau"))]
mod debug_hook {
    use super::*;
    use mlua_isle::mlua::{Lua, LuaOptions, StdLib};

    fn with_debug(interrupt: Interrupt) -> (Isle, mpsc::Receiver<()>) {
        // SAFETY: the debug library is what these tests are about; the scripts are ours.
        let builder = Isle::builder()
            .interrupt(interrupt)
            .grace_period(HANG)
            .factory(|| unsafe { Ok(Lua::unsafe_new_with(StdLib::ALL, LuaOptions::default())) });
        isle_with_started(builder)
    }

    #[test]
    fn a_removed_permanent_hook_is_back_for_the_next_request() {
        within_hang_guard(|| {
            let (isle, _) = with_debug(Interrupt::Hook { every: 1000 });
            isle.eval::<()>("debug.sethook()").unwrap();
            let err = isle
                .request()
                .timeout(Duration::from_millis(50))
                .eval::<()>("while true do end")
                .unwrap_err();
            assert!(err.is_timeout(), "{err:?}");
            assert_eq!(isle.eval::<i64>("3").unwrap(), 3);
        });
    }

    #[cfg(unix)]
    #[test]
    fn a_script_removing_the_signal_armed_hook_is_still_stopped() {
        within_hang_guard(|| {
            let (isle, started) = with_debug(Interrupt::default());
            for script in [
                "debug.sethook() started() while true do end",
                // The hook is removed again and again: delivering the stop again wins.
                "started() while true do debug.sethook() end",
                "started() while true do pcall(debug.sethook) end",
            ] {
                let task = isle.spawn_eval::<()>(script).unwrap();
                wait_started(&started);
                task.cancel();
                assert!(matches!(task.wait(), Err(IsleError::Cancelled)), "{script}");
                assert_eq!(isle.eval::<i64>("4").unwrap(), 4);
            }
        });
    }
}

/// Dropped with the queue a given-up isle drains: its `Drop` blocks until released.
struct SlowDrop {
    dropping: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

impl Drop for SlowDrop {
    fn drop(&mut self) {
        let _ = self.dropping.send(());
        let _ = self.release.recv_timeout(HANG);
    }
}

#[test]
fn a_slow_drop_in_a_given_up_isle_does_not_delay_other_isles() {
    let _serial = serial();
    within_hang_guard(|| {
        let (stuck_isle, started, release) = stuckable(Isle::builder());
        let stuck = stuck_isle
            .request()
            .timeout(Duration::from_millis(50))
            .spawn_eval::<()>(STUCK_IN_GC)
            .unwrap();
        wait_started(&started);
        let (dropping_tx, dropping) = mpsc::channel();
        let (let_go, release_drop) = mpsc::channel();
        let slow = SlowDrop {
            dropping: dropping_tx,
            release: release_drop,
        };
        let queued = stuck_isle
            .spawn_exec(move |_| {
                drop(slow);
                Ok(())
            })
            .unwrap();
        assert!(matches!(stuck.wait(), Err(IsleError::Timeout)));
        // Giving up drains the queue, and the unrun closure's drop now blocks...
        dropping.recv_timeout(HANG).unwrap();
        // ...while another isle's deadline is still enforced: its loop is stopped, so the
        // follow-up request runs.
        let other = Isle::spawn(|_| Ok(())).unwrap();
        let err = other
            .request()
            .timeout(Duration::from_millis(50))
            .eval::<()>("while true do end")
            .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(other.eval::<i64>("5").unwrap(), 5);
        let_go.send(()).unwrap();
        assert!(matches!(queued.wait(), Err(IsleError::Shutdown)));
        release.store(true, Ordering::SeqCst);
    });
}

#[cfg(all(unix, not(feature = "luau")))]
#[test]
fn the_interrupt_signal_handler_runs_on_the_alternate_stack() {
    let _isle = Isle::spawn(|_| Ok(())).unwrap();
    // SAFETY: reads the installed action into a zeroed struct.
    let flags = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(Interrupt::DEFAULT_SIGNAL, std::ptr::null(), &mut action),
            0
        );
        action.sa_flags
    };
    assert_ne!(flags & libc::SA_ONSTACK, 0);
    assert_ne!(flags & libc::SA_RESTART, 0);
}

/// Coroutine requests (`tokio` feature): what runs when a suspended one is stopped, and what
/// giving up does to them.
#[cfg(feature = "tokio")]
mod coroutines {
    use super::*;
    use mlua_isle::AsyncIsle;

    /// An async isle with `started()`, `forever()` (awaits forever) and the released helpers.
    async fn async_isle(
        builder: IsleBuilder,
    ) -> (
        AsyncIsle,
        mlua_isle::AsyncIsleDriver,
        mpsc::Receiver<()>,
        Arc<AtomicBool>,
    ) {
        let release = Arc::new(AtomicBool::new(false));
        let (tx, started) = mpsc::channel();
        let flag = release.clone();
        let (isle, driver) = builder
            .spawn_async(move |lua| {
                define_released(lua, flag)?;
                let started = lua.create_function(move |_, ()| Ok(tx.send(()).is_ok()))?;
                lua.globals().set("started", started)?;
                let forever = lua.create_async_function(|_, ()| async {
                    std::future::pending::<()>().await;
                    Ok(())
                })?;
                lua.globals().set("forever", forever)
            })
            .await
            .unwrap();
        (isle, driver, started, release)
    }

    fn run<F: std::future::Future<Output = ()>>(f: F) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f);
    }

    #[cfg(any(feature = "lua54", feature = "lua55"))]
    #[test]
    fn close_handlers_of_a_stopped_suspended_coroutine_are_interrupted() {
        within_hang_guard(|| {
            run(async {
                let (isle, _driver, started, _) =
                    async_isle(AsyncIsle::builder().grace_period(HANG)).await;
                for close in [
                    "function() while true do end end",
                    "function() while true do pcall(function() while true do end end) end end",
                ] {
                    let script = format!(
                        "local held <close> = setmetatable({{}}, {{__close = {close}}})
                         started() forever()"
                    );
                    let task = isle
                        .spawn_coroutine_eval::<()>(script.clone())
                        .await
                        .unwrap();
                    wait_started(&started);
                    task.cancel();
                    assert!(matches!(task.await, Err(IsleError::Cancelled)), "{script}");
                    assert_eq!(isle.eval::<i64>("6").await.unwrap(), 6);

                    let err = isle
                        .request()
                        .timeout(Duration::from_millis(30))
                        .coroutine_eval::<()>(script.clone())
                        .await
                        .unwrap_err();
                    wait_started(&started);
                    assert!(err.is_timeout(), "{script}: {err:?}");
                    assert_eq!(isle.eval::<i64>("7").await.unwrap(), 7);
                }
                assert!(isle.is_alive());
            });
        });
    }

    #[test]
    fn a_coroutine_request_ended_long_after_its_deadline_does_not_abandon_the_isle() {
        let _serial = serial();
        within_hang_guard(|| {
            run(async {
                let (isle, _driver, started, _) =
                    async_isle(AsyncIsle::builder().grace_period(Duration::from_millis(50))).await;
                let timeout = Duration::from_secs(1);
                let submitted = std::time::Instant::now();
                let suspended = isle
                    .request()
                    .timeout(timeout)
                    .spawn_coroutine_eval::<()>("started() forever()")
                    .await
                    .unwrap();
                wait_started(&started);
                // The Lua thread is busy (legitimately: no deadline) well past the coroutine
                // request's deadline plus the grace period; only then can it be stopped.
                let busy_until = submitted + timeout + Duration::from_millis(300);
                isle.exec(move |_| {
                    std::thread::sleep(
                        busy_until.saturating_duration_since(std::time::Instant::now()),
                    );
                    Ok(())
                })
                .await
                .unwrap();
                assert!(matches!(suspended.await, Err(IsleError::Timeout)));
                assert!(isle.is_alive());
                assert_eq!(isle.eval::<i64>("8").await.unwrap(), 8);
            });
        });
    }

    #[test]
    fn giving_up_resolves_suspended_coroutine_requests_at_once() {
        let _serial = serial();
        within_hang_guard(|| {
            run(async {
                let (isle, _driver, started, release) =
                    async_isle(AsyncIsle::builder().grace_period(Duration::from_millis(100))).await;
                let suspended = isle
                    .spawn_coroutine_eval::<()>("started() forever()")
                    .await
                    .unwrap();
                wait_started(&started);
                let stuck = isle
                    .request()
                    .timeout(Duration::from_millis(50))
                    .spawn_eval::<()>(STUCK_IN_GC)
                    .await
                    .unwrap();
                wait_started(&started);
                assert!(matches!(stuck.await, Err(IsleError::Timeout)));
                // The code is still stuck, yet the suspended request is resolved.
                assert!(matches!(suspended.await, Err(IsleError::Shutdown)));
                assert!(!isle.is_alive());
                release.store(true, Ordering::SeqCst);
            });
        });
    }

    #[test]
    fn a_dropped_async_task_escalates_to_the_hard_stop() {
        let _serial = serial();
        within_hang_guard(|| {
            run(async {
                let (isle, _driver, started, release) =
                    async_isle(AsyncIsle::builder().grace_period(Duration::from_millis(100))).await;
                let stuck = isle.spawn_eval::<()>(STUCK_IN_GC).await.unwrap();
                wait_started(&started);
                drop(stuck);
                eventually("the isle to give up", || !isle.is_alive());
                assert!(matches!(
                    isle.eval::<i64>("1").await,
                    Err(IsleError::Abandoned)
                ));
                release.store(true, Ordering::SeqCst);
            });
        });
    }
}
