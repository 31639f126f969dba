//! Lifecycle: dropping handles, shutdown, backpressure and the queue's `Full` error.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use mlua_isle::{Isle, IsleError};

#[test]
fn dropping_the_isle_does_not_block_while_work_runs() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        let task = isle
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        drop(isle); // returns although the Lua thread is busy
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
    });
}

#[test]
fn queued_work_still_runs_after_the_handle_is_dropped() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        let gate = isle
            .spawn_eval::<()>("started() local t = os.clock() while os.clock() - t < 0.02 do end")
            .unwrap();
        wait_started(&started);
        let queued: Vec<_> = (0..10)
            .map(|i| isle.spawn_eval::<i64>(format!("return {i}")).unwrap())
            .collect();
        drop(isle);
        gate.wait().unwrap();
        for (i, task) in queued.into_iter().enumerate() {
            assert_eq!(task.wait().unwrap(), i as i64);
        }
    });
}

#[test]
fn shutdown_lets_queued_work_finish_then_joins() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|lua| lua.globals().set("n", 0)).unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|_| isle.spawn_eval::<i64>("n = n + 1 return n").unwrap())
            .collect();
        isle.shutdown().unwrap();
        for (i, task) in tasks.into_iter().enumerate() {
            assert!(task.is_finished());
            assert_eq!(task.wait().unwrap(), i as i64 + 1);
        }
    });
}

#[test]
fn shutdown_timeout_resolves_stuck_and_queued_work_as_shutdown() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        let stuck = isle
            .spawn_eval::<()>("started() while true do pcall(function() while true do end end) end")
            .unwrap();
        wait_started(&started);
        let queued: Vec<_> = (0..5)
            .map(|_| isle.spawn_eval::<()>("return").unwrap())
            .collect();
        isle.shutdown_timeout(Duration::from_millis(20)).unwrap();
        assert!(matches!(stuck.wait(), Err(IsleError::Shutdown)));
        for task in queued {
            assert!(matches!(task.wait(), Err(IsleError::Shutdown)));
        }
    });
}

#[test]
fn shutdown_timeout_gives_up_on_code_that_ignores_interrupts() {
    within_hang_guard(|| {
        let (release, hold) = mpsc::channel::<()>();
        let (isle, started) =
            isle_with_started(Isle::builder().grace_period(Duration::from_millis(20)));
        // A host function that blocks in Rust, out of the interrupt's reach.
        let stuck = isle
            .spawn_exec(move |lua| {
                lua.load("started()").exec()?;
                let _ = hold.recv();
                Ok(())
            })
            .unwrap();
        wait_started(&started);
        let queued = isle.spawn_eval::<()>("return").unwrap();
        let err = isle
            .shutdown_timeout(Duration::from_millis(20))
            .unwrap_err();
        assert!(matches!(err, IsleError::Abandoned), "{err:?}");
        // Neither the queued request nor the stuck one is left hanging behind the stuck code.
        assert!(matches!(queued.wait(), Err(IsleError::Shutdown)));
        assert!(matches!(stuck.wait(), Err(IsleError::Shutdown)));
        // The abandoned thread ends on its own once the host function returns.
        release.send(()).unwrap();
    });
}

#[test]
fn full_queue_makes_blocking_submission_wait() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder().queue_capacity(1));
        let blocker = isle
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        let filler = isle.spawn_eval::<i64>("1").unwrap();
        let (submitted_tx, submitted) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let task = isle.spawn_eval::<i64>("2").unwrap();
                submitted_tx.send(()).unwrap();
                assert_eq!(task.wait().unwrap(), 2);
            });
            // While the queue is full, the submitter is still waiting for room.
            assert!(submitted.recv_timeout(Duration::from_millis(50)).is_err());
            blocker.cancel();
            submitted.recv_timeout(HANG).unwrap();
        });
        assert!(blocker.wait().unwrap_err().is_cancelled());
        assert_eq!(filler.wait().unwrap(), 1);
    });
}

#[test]
fn full_queue_makes_try_enqueue_fail_at_once() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder().queue_capacity(2));
        let blocker = isle
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        let a = isle.spawn_eval::<i64>("1").unwrap();
        let b = isle.spawn_eval::<i64>("2").unwrap();
        for _ in 0..3 {
            let err = isle
                .request()
                .try_enqueue()
                .spawn_eval::<i64>("3")
                .unwrap_err();
            assert!(matches!(err, IsleError::Full));
            let err = isle.request().try_enqueue().eval::<i64>("3").unwrap_err();
            assert!(matches!(err, IsleError::Full));
            let err = isle.request().try_enqueue().exec(|_| Ok(3)).unwrap_err();
            assert!(matches!(err, IsleError::Full));
        }
        blocker.cancel();
        assert_eq!((a.wait().unwrap(), b.wait().unwrap()), (1, 2));
        // Room again.
        assert_eq!(isle.request().try_enqueue().eval::<i64>("4").unwrap(), 4);
    });
}

#[test]
fn zero_queue_capacity_is_a_config_error() {
    let err = Isle::builder()
        .queue_capacity(0)
        .spawn(|_| Ok(()))
        .unwrap_err();
    assert!(matches!(err, IsleError::Config(_)));
    assert_eq!(
        err.to_string(),
        "invalid isle configuration: queue capacity must be at least 1"
    );
}

#[test]
fn init_error_is_reported_with_its_lua_error() {
    let err = Isle::spawn(|lua| lua.load("error('no config file')").exec()).unwrap_err();
    let IsleError::Init(inner) = err else {
        panic!("expected Init")
    };
    assert!(inner.as_lua().unwrap().message().contains("no config file"));
}

#[test]
fn detached_task_runs_to_completion() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|lua| lua.globals().set("done", false)).unwrap();
        isle.spawn_eval::<()>("done = true").unwrap().detach();
        assert!(isle.eval::<bool>("done").unwrap());
    });
}

#[test]
fn call_of_a_non_function_names_the_global() {
    let isle = Isle::spawn(|lua| lua.globals().set("answer", 42)).unwrap();
    match isle.call::<()>("answer", ()) {
        Err(IsleError::NotAFunction { name, type_name }) => {
            assert_eq!((name.as_str(), type_name), ("answer", "integer"));
        }
        other => panic!("{other:?}"),
    }
    let err = isle.call::<()>("missing", ()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "global `missing` is not a function (it is nil)"
    );
}

#[test]
fn eval_reports_syntax_and_conversion_errors_by_kind() {
    use mlua_isle::LuaErrorKind;
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    let kind = |r: Result<i64, IsleError>| r.unwrap_err().as_lua().unwrap().kind();
    assert_eq!(kind(isle.eval("return +")), LuaErrorKind::Syntax);
    assert_eq!(kind(isle.eval("return {}")), LuaErrorKind::Conversion);
    assert_eq!(kind(isle.eval("error('x')")), LuaErrorKind::Runtime);
}

#[test]
fn binary_chunks_are_refused_by_eval() {
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    #[cfg(not(feature = "luau"))]
    let bytecode = isle
        .exec(|lua| {
            let f = lua.load("return 1").into_function()?;
            Ok(String::from_utf8_lossy(&f.dump(false)).into_owned())
        })
        .unwrap();
    #[cfg(feature = "luau")]
    let bytecode = String::from_utf8_lossy(
        &mlua_isle::mlua::chunk::Compiler::new()
            .compile("return 1")
            .unwrap(),
    )
    .into_owned();
    assert!(isle.eval::<i64>(bytecode).is_err());
}

#[test]
fn requests_run_in_submission_order() {
    let isle = Isle::spawn(|lua| lua.globals().set("log", lua.create_table()?)).unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            isle.spawn_eval::<()>(format!("table.insert(log, {i})"))
                .unwrap()
        })
        .collect();
    for task in tasks {
        task.wait().unwrap();
    }
    let log: Vec<i64> = isle.eval("log").unwrap();
    assert_eq!(log, (0..100).collect::<Vec<_>>());
}

#[test]
fn a_factory_vm_without_the_string_and_coroutine_libraries_starts() {
    use mlua_isle::mlua::{Lua, LuaOptions, StdLib};
    let isle = mlua_isle::Isle::builder()
        .factory(|| Lua::new_with(StdLib::MATH, LuaOptions::new()))
        .spawn(|_| Ok(()))
        .unwrap();
    assert_eq!(isle.eval::<i64>("math.max(1, 2)").unwrap(), 2);
    assert!(isle.eval::<bool>("string == nil").unwrap());
    let err = isle
        .request()
        .timeout(std::time::Duration::from_millis(20))
        .eval::<()>("while true do end");
    assert!(err.unwrap_err().is_timeout());
}
