//! Hard stop: code no interrupt can reach (here a loop in a `__gc` finalizer, which Lua runs
//! with hooks disabled; on Luau, which has no finalizers in Lua, a host function ignoring its
//! deadline) makes the isle give up once the deadline plus the grace period has passed.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mlua_isle::{Interrupt, Isle, IsleBuilder, IsleError};

/// Tests here count the process's threads, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A builder whose VM has `released()`, true once the returned flag is set.
fn releasable(builder: IsleBuilder) -> (IsleBuilder, Arc<AtomicBool>) {
    let release = Arc::new(AtomicBool::new(false));
    (builder.grace_period(Duration::from_millis(100)), release)
}

fn gives_up_on_a_finalizer_loop(interrupt: Interrupt) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(move || {
        let baseline = thread_count();
        let (builder, release) = releasable(Isle::builder().interrupt(interrupt));
        let (isle, started) = spawn_releasable(builder, &release);
        let stuck = isle
            .request()
            .timeout(Duration::from_millis(200))
            .spawn_eval::<()>(STUCK_IN_GC)
            .unwrap();
        wait_started(&started);
        let queued = isle.spawn_eval::<i64>("return kept").unwrap();
        // The caller gets `Timeout` while the finalizer still loops...
        assert!(matches!(stuck.wait(), Err(IsleError::Timeout)));
        // ...queued work resolves `Shutdown`, and the isle refuses new work.
        assert!(matches!(queued.wait(), Err(IsleError::Shutdown)));
        assert!(!isle.is_alive());
        assert!(matches!(isle.eval::<i64>("1"), Err(IsleError::Abandoned)));
        assert!(matches!(
            isle.spawn_eval::<i64>("1"),
            Err(IsleError::Abandoned)
        ));
        // The abandoned thread ends by itself once the stuck code returns.
        release.store(true, Ordering::SeqCst);
        assert!(matches!(isle.shutdown(), Err(IsleError::Abandoned)));
        eventually("the abandoned thread to end", || thread_count() <= baseline);
    });
}

#[test]
fn a_finalizer_loop_is_given_up_with_the_signal_interrupt() {
    gives_up_on_a_finalizer_loop(Interrupt::default());
}

#[test]
fn a_finalizer_loop_is_given_up_with_the_hook_interrupt() {
    gives_up_on_a_finalizer_loop(Interrupt::Hook { every: 1000 });
}

#[test]
fn a_host_function_ignoring_its_deadline_is_given_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(|| {
        let (builder, release) = releasable(Isle::builder());
        let (isle, _started) = spawn_releasable(builder, &release);
        let stuck = isle
            .request()
            .timeout(Duration::from_millis(30))
            .spawn_exec(|lua| {
                let released: mlua_isle::mlua::Function = lua.globals().get("released")?;
                while !released.call::<bool>(())? {
                    std::hint::spin_loop();
                }
                Ok(())
            })
            .unwrap();
        assert!(matches!(stuck.wait(), Err(IsleError::Timeout)));
        assert!(!isle.is_alive());
        release.store(true, Ordering::SeqCst);
    });
}

#[test]
fn an_init_that_cannot_be_interrupted_fails_spawn() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(|| {
        let release = Arc::new(AtomicBool::new(false));
        let flag = release.clone();
        let err = Isle::builder()
            .timeout(Duration::from_millis(30))
            .grace_period(Duration::from_millis(50))
            .spawn(move |lua| {
                define_released(lua, flag)?;
                lua.globals()
                    .set("started", lua.create_function(|_, ()| Ok(()))?)?;
                lua.load(STUCK_IN_GC).exec()
            })
            .unwrap_err();
        assert!(
            matches!(&err, IsleError::Init(inner) if inner.is_timeout()),
            "{err:?}"
        );
        release.store(true, Ordering::SeqCst);
    });
}

#[test]
fn requests_that_finish_within_the_grace_period_keep_the_isle() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(|| {
        // A finalizer that loops for a while, shorter than the grace period: the request ends
        // `Timeout` once it returns, and the isle carries on.
        let isle = Isle::builder()
            .grace_period(Duration::from_secs(20))
            .spawn(|_| Ok(()))
            .unwrap();
        let err = isle
            .request()
            .timeout(Duration::from_millis(20))
            .eval::<()>(
                "setmetatable({}, {__gc = function()
                   local t = os.clock() while os.clock() - t < 0.1 do end
                 end})
                 collectgarbage()
                 while true do end",
            )
            .unwrap_err();
        assert!(err.is_timeout());
        assert!(isle.is_alive());
        assert_eq!(isle.eval::<i64>("3").unwrap(), 3);
    });
}

/// A plain `shutdown` waits for queued work however long it runs, but returns `Abandoned`
/// once the isle gives up on a request stuck past its deadline, while the thread is still
/// stuck: with the give-up before or after `quick` (the deadline plus the grace period), as
/// the shutdown first joins the thread directly for a moment and only then waits for its end.
fn shutdown_returns_once_the_isle_gives_up_during_it(deadline: Duration) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(move || {
        let baseline = thread_count();
        let release = Arc::new(AtomicBool::new(false));
        let builder = Isle::builder().grace_period(deadline);
        let (isle, started) = spawn_releasable(builder, &release);
        let stuck = isle
            .request()
            .timeout(deadline)
            .spawn_eval::<()>(STUCK_IN_GC)
            .unwrap();
        wait_started(&started);
        // Stuck until released, which happens only after the shutdown has returned.
        assert!(matches!(isle.shutdown(), Err(IsleError::Abandoned)));
        assert!(!release.load(Ordering::SeqCst));
        assert!(matches!(stuck.wait(), Err(IsleError::Timeout)));
        release.store(true, Ordering::SeqCst);
        eventually("the abandoned thread to end", || thread_count() <= baseline);
    });
}

#[test]
fn shutdown_returns_when_the_isle_gives_up_at_once() {
    shutdown_returns_once_the_isle_gives_up_during_it(Duration::from_millis(10));
}

#[test]
fn shutdown_returns_when_the_isle_gives_up_later() {
    shutdown_returns_once_the_isle_gives_up_during_it(Duration::from_millis(300));
}

/// An isle with `sleep_ms(n)`, a host function that sleeps.
#[cfg(not(feature = "luau"))]
fn spawn_sleeping(builder: IsleBuilder) -> Isle {
    try_spawn_sleeping(builder).unwrap()
}

#[cfg(not(feature = "luau"))]
fn try_spawn_sleeping(builder: IsleBuilder) -> Result<Isle, IsleError> {
    builder.spawn(|lua| {
        let sleep = lua.create_function(|_, ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(())
        })?;
        lua.globals().set("sleep_ms", sleep)
    })
}

/// Closing the VM runs the scripts' finalizers, with hooks off: with a default timeout, a
/// finalizer that never returns ends in a hard stop once the timeout plus the grace period has
/// passed, and `shutdown` returns `Abandoned` instead of waiting forever.
#[cfg(not(feature = "luau"))]
#[test]
fn shutdown_gives_up_on_a_finalizer_that_loops_as_the_vm_closes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(|| {
        let baseline = thread_count();
        let release = Arc::new(AtomicBool::new(false));
        let builder = Isle::builder()
            .timeout(Duration::from_millis(100))
            .grace_period(Duration::from_millis(100));
        let (isle, _started) = spawn_releasable(builder, &release);
        isle.eval::<()>(finalized_on_close("while not released() do end"))
            .unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(isle.shutdown(), Err(IsleError::Abandoned)));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        // Still looping: the shutdown did not wait for it.
        assert!(!release.load(Ordering::SeqCst));
        release.store(true, Ordering::SeqCst);
        eventually("the abandoned thread to end", || thread_count() <= baseline);
    });
}

/// A finalizer that runs past the default timeout as the VM closes, but ends within the grace
/// period, closes normally.
#[cfg(not(feature = "luau"))]
#[test]
fn a_finalizer_that_ends_within_the_grace_period_closes_the_vm_normally() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(|| {
        let isle = spawn_sleeping(
            Isle::builder()
                .timeout(Duration::from_millis(20))
                .grace_period(Duration::from_secs(10)),
        );
        // Planted under a deadline of its own: the default one is short (and a slow machine
        // or valgrind can take longer than that to run the script).
        isle.request()
            .timeout(Duration::from_secs(10))
            .eval::<()>(finalized_on_close("sleep_ms(200)"))
            .unwrap();
        let start = std::time::Instant::now();
        isle.shutdown().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(200));
    });
}

/// Without a default timeout, closing the VM is not bounded: a slow finalizer is waited for.
#[cfg(not(feature = "luau"))]
#[test]
fn without_a_default_timeout_shutdown_waits_for_a_slow_finalizer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(|| {
        let isle = spawn_sleeping(Isle::builder().grace_period(Duration::from_millis(10)));
        isle.eval::<()>(finalized_on_close("sleep_ms(300)"))
            .unwrap();
        let start = std::time::Instant::now();
        isle.shutdown().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
    });
}

/// Randomized: isles whose VM closes with a finalizer that sleeps a random time around the
/// default timeout plus the grace period, shut down or dropped with requests still queued, some
/// of them cancelled by another thread meanwhile. Every shutdown returns `Ok` or `Abandoned`,
/// within the hang guard; every request resolves once, with its value or `Cancelled`,
/// `Timeout`, `Shutdown` or `Abandoned`; and once the finalizers' sleeps are over, no isle
/// thread is left. `CLOSE_STRESS_SEED` replays a run.
#[cfg(not(feature = "luau"))]
#[test]
fn closes_racing_their_deadline_resolve_everything_once() {
    use rand::Rng;
    use std::sync::Barrier;

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = seeded_rng("CLOSE_STRESS_SEED");
    within_hang_guard(move || {
        let baseline = thread_count();
        // The unit of the deadlines: a few times what a spawn takes here (much more under
        // valgrind), so that `init` mostly fits in the default timeout.
        let unit = (0..3)
            .map(|_| {
                let start = std::time::Instant::now();
                spawn_sleeping(Isle::builder()).shutdown().unwrap();
                start.elapsed()
            })
            .max()
            .unwrap()
            .max(Duration::from_millis(1))
            * 4;
        // A round takes about eight units.
        let rounds = (Duration::from_secs(3).as_nanos() / (unit * 8).as_nanos()).clamp(2, 24);
        let (mut closed, mut abandoned) = (0, 0);
        for _ in 0..rounds {
            let timeout = unit * rng.random_range(1..4);
            let grace = unit * rng.random_range(1..4);
            let budget = (timeout + grace).as_millis() as u64;
            let sleep = rng.random_range(0..2 * budget);
            let isle =
                match try_spawn_sleeping(Isle::builder().timeout(timeout).grace_period(grace)) {
                    Ok(isle) => isle,
                    // `init` outran the default timeout: a slow moment, not what is tested.
                    Err(IsleError::Init(e)) if matches!(*e, IsleError::Timeout) => continue,
                    Err(e) => panic!("spawn: {e:?}"),
                };
            closed += 1;
            isle.request()
                .timeout(Duration::from_secs(10))
                .eval::<()>(finalized_on_close(&format!("sleep_ms({sleep})")))
                .unwrap();
            // Queued requests, quick or sleeping past their deadline.
            let tasks: Vec<_> = (0..rng.random_range(0..4))
                .map(|_| {
                    let code = if rng.random_bool(0.5) {
                        "return 1".to_owned()
                    } else {
                        format!("sleep_ms({}) return 1", rng.random_range(0..budget))
                    };
                    isle.spawn_eval::<i64>(code).unwrap()
                })
                .collect();
            // Another thread cancels some of them while the isle closes.
            let cancel: Vec<bool> = tasks.iter().map(|_| rng.random_bool(0.5)).collect();
            let barrier = Arc::new(Barrier::new(2));
            let canceller = {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    for (task, cancel) in tasks.iter().zip(&cancel) {
                        if *cancel {
                            task.cancel();
                        }
                    }
                    for task in tasks {
                        match task.wait() {
                            Ok(1)
                            | Err(IsleError::Cancelled)
                            | Err(IsleError::Timeout)
                            | Err(IsleError::Shutdown)
                            | Err(IsleError::Abandoned) => {}
                            other => panic!("a request queued before the close: {other:?}"),
                        }
                    }
                })
            };
            barrier.wait();
            if rng.random_bool(0.5) {
                match isle.shutdown() {
                    Ok(()) => {}
                    Err(IsleError::Abandoned) => abandoned += 1,
                    Err(other) => panic!("shutdown with a {sleep} ms finalizer: {other:?}"),
                }
            } else {
                drop(isle);
            }
            canceller.join().unwrap();
        }
        eprintln!("{closed} isles closed, {abandoned} shutdowns gave up on their finalizer");
        assert!(closed > 0, "no isle started within its default timeout");
        eventually("every isle thread to end", || thread_count() <= baseline);
    });
}

/// An `init` that fails leaves what it made to the VM's close: a finalizer that never returns
/// there is given up on like any close past its deadline, and `spawn` returns instead of
/// waiting forever.
#[cfg(not(feature = "luau"))]
#[test]
fn spawn_gives_up_on_a_finalizer_that_loops_as_a_failed_init_closes_the_vm() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(|| {
        let baseline = thread_count();
        let release = Arc::new(AtomicBool::new(false));
        let flag = release.clone();
        let code = finalized_on_close("while not released() do end");
        let start = std::time::Instant::now();
        let result = Isle::builder()
            .timeout(Duration::from_millis(100))
            .grace_period(Duration::from_millis(100))
            .spawn(move |lua| {
                define_released(lua, flag)?;
                lua.load(code.as_str()).exec()?;
                Err(mlua_isle::mlua::Error::runtime("init fails"))
            });
        match result {
            Err(IsleError::Init(e)) => assert!(matches!(*e, IsleError::Timeout), "{e:?}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(start.elapsed() >= Duration::from_millis(200));
        // Still looping: `spawn` did not wait for it.
        assert!(!release.load(Ordering::SeqCst));
        release.store(true, Ordering::SeqCst);
        eventually("the abandoned thread to end", || thread_count() <= baseline);
    });
}

/// A failed `init` whose finalizers end within the grace period reports its own error.
#[cfg(not(feature = "luau"))]
#[test]
fn a_failed_init_whose_finalizers_end_in_time_reports_its_own_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(|| {
        let code = finalized_on_close("sleep_ms(150)");
        let result = Isle::builder()
            .timeout(Duration::from_millis(100))
            .grace_period(Duration::from_secs(10))
            .spawn(move |lua| {
                let sleep = lua.create_function(|_, ms: u64| {
                    std::thread::sleep(Duration::from_millis(ms));
                    Ok(())
                })?;
                lua.globals().set("sleep_ms", sleep)?;
                lua.load(code.as_str()).exec()?;
                Err(mlua_isle::mlua::Error::runtime("init fails"))
            });
        match result {
            Err(IsleError::Init(e)) => {
                assert!(e.to_string().contains("init fails"), "{e}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    });
}

/// A failed `init`'s VM closes like a shut-down isle's: the isle is closed first, so that a
/// finalizer waiting for its end (here for its host channel to close) sees it and returns.
#[cfg(not(feature = "luau"))]
#[test]
fn a_failed_init_closes_the_isle_before_its_vm() {
    use mlua_isle::{host, TaskLibrary};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let code = finalized_on_close(
            "while true do local v, ok = inbox:try_recv() if ok == false then break end end",
        );
        let result = Isle::builder()
            .task_library(TaskLibrary::new())
            .timeout(Duration::from_secs(5))
            .grace_period(Duration::from_secs(5))
            .spawn(move |lua| {
                let (sender, inbox) = host::channel_to_lua::<i64>(lua, 4)?;
                lua.globals().set("inbox", inbox)?;
                let _ = tx.send(sender);
                lua.load(code.as_str()).exec()?;
                Err(mlua_isle::mlua::Error::runtime("init fails"))
            });
        // The host still holds the sender: the channel ends only with the isle.
        let _sender = rx.recv().unwrap();
        match result {
            Err(IsleError::Init(e)) => assert!(e.to_string().contains("init fails"), "{e}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    });
}

/// Sealing the libraries after `init` (a sandbox, or per-request environments) runs Lua too,
/// under `init`'s deadline: a metamethod `init` left on the globals cannot hold `spawn` up.
/// (Luau's seal reads no global.)
#[cfg(not(feature = "luau"))]
#[test]
fn sealing_after_init_runs_under_the_default_timeout() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within_hang_guard(|| {
        let release = Arc::new(AtomicBool::new(false));
        let flag = release.clone();
        let result = Isle::builder()
            .isolation(mlua_isle::Isolation::FreshEnvironment)
            .timeout(Duration::from_millis(100))
            .grace_period(Duration::from_millis(100))
            .spawn(move |lua| {
                define_released(lua, flag)?;
                lua.load(
                    "local real = tostring
                     setmetatable(_G, {__index = function(_, k)
                       if k == 'tostring' then
                         while not released() do end
                         return real
                       end
                     end})
                     tostring = nil",
                )
                .exec()
            });
        match result {
            Err(IsleError::Init(e)) => assert!(matches!(*e, IsleError::Timeout), "{e:?}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        release.store(true, Ordering::SeqCst);
    });
}
