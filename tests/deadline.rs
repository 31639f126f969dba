//! Deadlines, per isle and per request.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mlua_isle::{Isle, IsleError};

#[test]
fn request_deadline_stops_a_loop() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        let err = isle
            .request()
            .timeout(Duration::from_millis(30))
            .eval::<()>("while true do end")
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(isle.eval::<i64>("1").unwrap(), 1);
    });
}

#[test]
fn request_deadline_stops_a_pcall_loop() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        let err = isle
            .request()
            .timeout(Duration::from_millis(30))
            .eval::<()>("while true do pcall(function() while true do end end) end")
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    });
}

#[test]
fn isle_default_timeout_applies_to_every_method() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .timeout(Duration::from_millis(30))
            .spawn(|lua| lua.load("function spin() while true do end end").exec())
            .unwrap();
        assert!(isle.eval::<()>("spin()").unwrap_err().is_timeout());
        assert!(isle.call::<()>("spin", ()).unwrap_err().is_timeout());
        assert!(isle
            .exec(|lua| lua.load("spin()").exec())
            .unwrap_err()
            .is_timeout());
        assert!(isle
            .spawn_eval::<()>("spin()")
            .unwrap()
            .wait()
            .unwrap_err()
            .is_timeout());
    });
}

#[test]
fn request_finishing_in_time_is_unaffected() {
    let isle = Isle::builder()
        .timeout(Duration::from_secs(30))
        .spawn(|_| Ok(()))
        .unwrap();
    let sum: i64 = isle
        .request()
        .timeout(Duration::from_secs(30))
        .eval("local s = 0 for i = 1, 100000 do s = s + i end return s")
        .unwrap();
    assert_eq!(sum, 5000050000);
    assert_eq!(isle.eval::<i64>("2").unwrap(), 2);
}

#[test]
fn request_timeout_overrides_isle_default() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .timeout(Duration::from_millis(20))
            .spawn(|_| Ok(()))
            .unwrap();
        // A longer per-request timeout lets a 60 ms script finish.
        let ok = isle
            .request()
            .timeout(Duration::from_secs(30))
            .eval::<bool>("local t = os.clock() while os.clock() - t < 0.06 do end return true")
            .unwrap();
        assert!(ok);
        // `no_timeout` lifts the default entirely.
        let ok = isle
            .request()
            .no_timeout()
            .eval::<bool>("local t = os.clock() while os.clock() - t < 0.06 do end return true")
            .unwrap();
        assert!(ok);
    });
}

#[test]
fn absolute_deadline_in_the_past_never_runs() {
    let isle = Isle::spawn(|lua| lua.globals().set("n", 0)).unwrap();
    let err = isle
        .request()
        .deadline(Instant::now())
        .eval::<()>("n = n + 1")
        .unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(isle.eval::<i64>("n").unwrap(), 0);
}

#[test]
fn deadline_passing_while_queued_resolves_timeout_without_running() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        isle.eval::<()>("n = 0").unwrap();
        let blocker = isle
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        let queued = isle
            .request()
            .timeout(Duration::from_millis(20))
            .spawn_eval::<()>("n = n + 1")
            .unwrap();
        // The waiter resolves it while the blocker still runs.
        assert!(queued.wait().unwrap_err().is_timeout());
        let expiry = Instant::now() + Duration::from_millis(1);
        let detached = isle
            .request()
            .deadline(expiry)
            .spawn_eval::<()>("n = n + 1")
            .unwrap();
        detached.detach();
        // Nobody waits for the detached one: the Lua thread resolves it when it gets there.
        while Instant::now() < expiry {
            std::thread::yield_now();
        }
        blocker.cancel();
        assert!(blocker.wait().unwrap_err().is_cancelled());
        assert_eq!(isle.eval::<i64>("n").unwrap(), 0);
    });
}

#[test]
fn timeout_wins_even_if_code_catches_it_and_returns() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        let err = isle
            .request()
            .timeout(Duration::from_millis(20))
            .exec(|lua| {
                let _ = lua.load("while true do end").exec();
                Ok(1)
            })
            .unwrap_err();
        assert!(matches!(err, IsleError::Timeout));
    });
}

#[test]
fn wait_timeout_hands_the_task_back_without_cancelling() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        let task = isle
            .spawn_eval::<i64>(
                "started() local t = os.clock() while os.clock() - t < 0.05 do end return 9",
            )
            .unwrap();
        wait_started(&started);
        let task = task.wait_timeout(Duration::from_millis(1)).unwrap_err();
        assert!(!task.cancel_token().is_cancelled());
        assert_eq!(task.wait().unwrap(), 9);
    });
}

#[test]
fn init_is_bounded_by_the_default_timeout() {
    within_hang_guard(|| {
        let err = Isle::builder()
            .timeout(Duration::from_millis(20))
            .spawn(|lua| lua.load("while true do end").exec())
            .unwrap_err();
        match err {
            IsleError::Init(inner) => assert!(inner.is_timeout(), "{inner:?}"),
            other => panic!("{other:?}"),
        }
    });
}
