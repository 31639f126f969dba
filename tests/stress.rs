//! Exactly-once under load: many threads submit a random mix of requests, cancels, dropped and
//! detached tasks, timeouts and panics; every request resolves once, nothing leaks, and the OS
//! thread count returns to where it started.
//!
//! Tests here count the process's threads, so they take a lock to run one at a time.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mlua_isle::{CancelToken, Isle, IsleError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn new_isle() -> Isle {
    Isle::builder()
        .queue_capacity(16)
        .spawn(|lua| {
            lua.load("function echo(...) return ... end function spin() while true do end end")
                .exec()
        })
        .unwrap()
}

fn hammer(isle: &Isle, seed: u64, ops: usize, live: &Arc<AtomicUsize>, tally: &Tally) {
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..ops {
        let i = i as i64;
        match rng.random_range(0..12) {
            0 => {
                tally.submit();
                tally.resolve(
                    isle.eval::<i64>(format!("return {i}")),
                    |r| matches!(r, Ok(v) if *v == i),
                );
            }
            1 => {
                tally.submit();
                tally.resolve(
                    isle.call::<i64>("echo", i),
                    |r| matches!(r, Ok(v) if *v == i),
                );
            }
            2 => {
                let guard = DropCounter::new(live);
                tally.submit();
                tally.resolve(
                    isle.exec(move |_| {
                        let _guard = guard;
                        Ok(i)
                    }),
                    |r| matches!(r, Ok(v) if *v == i),
                );
            }
            3 => {
                tally.submit();
                tally.resolve(isle.eval::<()>("error('expected')"), |r| {
                    matches!(r, Err(IsleError::Lua(_)))
                });
            }
            4 => {
                let guard = DropCounter::new(live);
                tally.submit();
                tally.resolve(
                    isle.exec(move |_| -> mlua_isle::mlua::Result<()> {
                        let _guard = guard;
                        panic!("expected panic")
                    }),
                    |r| matches!(r, Err(IsleError::Panic(_))),
                );
            }
            5 => {
                tally.submit();
                let task = isle.spawn_call::<()>("spin", ()).unwrap();
                if rng.random_bool(0.5) {
                    std::thread::yield_now();
                }
                task.cancel();
                tally.resolve(task.wait(), |r| matches!(r, Err(IsleError::Cancelled)));
            }
            6 => {
                // Dropped task: cancelled, its closure dropped exactly once.
                let guard = DropCounter::new(live);
                drop(
                    isle.spawn_exec(move |lua| {
                        let _guard = guard;
                        lua.load("spin()").exec()
                    })
                    .unwrap(),
                );
            }
            7 => {
                // Detached task: runs unobserved.
                let guard = DropCounter::new(live);
                isle.spawn_exec(move |_| {
                    let _guard = guard;
                    Ok(())
                })
                .unwrap()
                .detach();
            }
            8 => {
                tally.submit();
                tally.resolve(
                    isle.request()
                        .timeout(Duration::from_millis(1))
                        .eval::<()>("spin()"),
                    |r| matches!(r, Err(IsleError::Timeout)),
                );
            }
            9 => {
                tally.submit();
                let token = CancelToken::new();
                let task = isle
                    .request()
                    .token(&token)
                    .spawn_eval::<()>("spin()")
                    .unwrap();
                token.cancel();
                tally.resolve(task.wait(), |r| matches!(r, Err(IsleError::Cancelled)));
            }
            10 => {
                tally.submit();
                let task = isle.spawn_eval::<i64>(format!("return {i}")).unwrap();
                let result = match task.wait_timeout(Duration::ZERO) {
                    Ok(result) => result,
                    Err(task) => task.wait(),
                };
                tally.resolve(result, |r| matches!(r, Ok(v) if *v == i));
            }
            _ => {
                tally.submit();
                let result = match isle
                    .request()
                    .try_enqueue()
                    .spawn_eval::<i64>(format!("{i}"))
                {
                    Ok(task) => task.wait(),
                    Err(e) => Err(e),
                };
                tally.resolve(result, |r| {
                    matches!(r, Ok(v) if *v == i) || matches!(r, Err(IsleError::Full))
                });
            }
        }
    }
}

#[test]
fn every_request_resolves_exactly_once_under_a_random_mix() {
    let _serial = serial();
    within_hang_guard(|| {
        let baseline = thread_count();
        let live = Arc::new(AtomicUsize::new(0));
        let tally = Tally::default();
        let isles: Vec<Isle> = (0..3).map(|_| new_isle()).collect();
        std::thread::scope(|s| {
            for t in 0..6u64 {
                let isle = &isles[t as usize % isles.len()];
                let (live, tally) = (&live, &tally);
                s.spawn(move || hammer(isle, 0x5eed + t, 400, live, tally));
            }
        });
        assert_eq!(tally.submitted(), tally.resolved());
        // End the three isles three different ways, each with work still queued.
        let mut isles = isles.into_iter();
        let (a, b, c) = (
            isles.next().unwrap(),
            isles.next().unwrap(),
            isles.next().unwrap(),
        );
        for isle in [&a, &b, &c] {
            for _ in 0..5 {
                let guard = DropCounter::new(&live);
                isle.spawn_exec(move |_| {
                    let _guard = guard;
                    Ok(())
                })
                .unwrap()
                .detach();
            }
        }
        a.shutdown().unwrap();
        b.shutdown_timeout(Duration::from_secs(10)).unwrap();
        drop(c);
        eventually("every job closure dropped", || {
            live.load(Ordering::SeqCst) == 0
        });
        eventually("the thread count back to its baseline", || {
            thread_count() <= baseline
        });
    });
}

#[test]
fn dropped_isle_with_an_abandoned_infinite_loop_does_not_leak_its_thread() {
    let _serial = serial();
    within_hang_guard(|| {
        let baseline = thread_count();
        for _ in 0..5 {
            let (isle, started) = isle_with_started(Isle::builder());
            let task = isle
                .spawn_eval::<()>("started() while true do end")
                .unwrap();
            wait_started(&started);
            drop(isle);
            drop(task); // abandoning the loop cancels it; the thread then exits
        }
        eventually("the thread count back to its baseline", || {
            thread_count() <= baseline
        });
    });
}

#[test]
fn many_isles_come_and_go_without_leaking_threads() {
    let _serial = serial();
    within_hang_guard(|| {
        let baseline = thread_count();
        for i in 0..50 {
            let isle = Isle::spawn(|_| Ok(())).unwrap();
            assert_eq!(isle.eval::<i64>(format!("{i}")).unwrap(), i);
            if i % 2 == 0 {
                isle.shutdown().unwrap();
            }
        }
        eventually("the thread count back to its baseline", || {
            thread_count() <= baseline
        });
    });
}
