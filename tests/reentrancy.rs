//! Blocking calls from the isle's own thread return `Reentrant` instead of deadlocking.

mod common;

use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use mlua_isle::{Isle, IsleError};

/// An isle whose Lua code can reach the isle itself through a host function.
fn self_referencing_isle() -> Arc<Isle> {
    let slot: Arc<OnceLock<Arc<Isle>>> = Arc::new(OnceLock::new());
    let for_lua = slot.clone();
    let isle = Arc::new(
        Isle::spawn(move |lua| {
            let slot = for_lua.clone();
            let reenter = lua.create_function(move |_, kind: String| {
                let isle = slot.get().expect("set after spawn");
                let err = match kind.as_str() {
                    "eval" => isle.eval::<i64>("1").unwrap_err(),
                    "call" => isle.call::<i64>("tostring", 1).unwrap_err(),
                    "exec" => isle.exec(|_| Ok(1)).unwrap_err(),
                    "wait" => isle.spawn_eval::<i64>("1").unwrap().wait().unwrap_err(),
                    other => panic!("unknown kind {other}"),
                };
                Ok(matches!(err, IsleError::Reentrant))
            })?;
            lua.globals().set("reenter", reenter)
        })
        .unwrap(),
    );
    slot.set(isle.clone()).ok().unwrap();
    isle
}

#[test]
fn blocking_calls_from_the_lua_thread_are_reentrant_errors() {
    within_hang_guard(|| {
        let isle = self_referencing_isle();
        for kind in ["eval", "call", "exec", "wait"] {
            let reentrant: bool = isle.call("reenter", kind).unwrap();
            assert!(reentrant, "{kind} should return Reentrant");
        }
        assert_eq!(isle.eval::<i64>("5").unwrap(), 5);
    });
}

#[test]
fn blocking_call_from_an_exec_closure_is_reentrant() {
    within_hang_guard(|| {
        let isle = self_referencing_isle();
        let me = isle.clone();
        let inner = isle
            .exec(move |_| Ok(me.eval::<i64>("1").unwrap_err()))
            .unwrap();
        assert!(matches!(inner, IsleError::Reentrant));
    });
}

#[test]
fn spawning_from_the_lua_thread_is_allowed_and_runs_later() {
    within_hang_guard(|| {
        let isle = self_referencing_isle();
        let me = isle.clone();
        let task = isle
            .exec(move |_| Ok(me.spawn_eval::<i64>("return 40 + 2")))
            .unwrap()
            .unwrap();
        assert_eq!(task.wait().unwrap(), 42);
    });
}

#[test]
fn spawning_from_the_lua_thread_never_waits_for_room() {
    within_hang_guard(|| {
        let isle = Arc::new(Isle::builder().queue_capacity(1).spawn(|_| Ok(())).unwrap());
        let me = isle.clone();
        let results = isle
            .exec(move |_| {
                let first = me.spawn_eval::<i64>("1").map(|t| t.detach()).is_ok();
                let second = me.spawn_eval::<i64>("2").map(|t| t.detach());
                Ok((first, matches!(second, Err(IsleError::Full))))
            })
            .unwrap();
        assert_eq!(results, (true, true));
    });
}

#[test]
fn shutdown_from_the_lua_thread_is_reentrant() {
    within_hang_guard(|| {
        for with_timeout in [false, true] {
            let holder: Arc<Mutex<Option<Isle>>> = Arc::new(Mutex::new(None));
            let (go, gate) = mpsc::channel::<()>();
            let isle = Isle::spawn(|_| Ok(())).unwrap();
            let held = holder.clone();
            let task = isle
                .spawn_exec(move |_| {
                    gate.recv().unwrap();
                    let me = held.lock().unwrap().take().unwrap();
                    let result = if with_timeout {
                        me.shutdown_timeout(Duration::from_secs(1))
                    } else {
                        me.shutdown()
                    };
                    Ok(matches!(result, Err(IsleError::Reentrant)))
                })
                .unwrap();
            *holder.lock().unwrap() = Some(isle);
            go.send(()).unwrap();
            assert!(task.wait().unwrap());
        }
    });
}

#[test]
fn an_isle_can_shut_down_another_from_its_thread() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        let other = Isle::spawn(|_| Ok(())).unwrap();
        let ok = isle.exec(move |_| Ok(other.shutdown().is_ok())).unwrap();
        assert!(ok);
    });
}
