//! Closing a pool: `shutdown`, `shutdown_timeout` and dropping the pool run what is queued and
//! stay bounded, also while members are retired, discarded, returned with a full queue or being
//! replaced, and nothing runs once they have returned; a member is free again as soon as its
//! caller has the result, or once the work queued before its return has run; a request
//! reaches a member that can take it; and members stuck past the deadline are stopped together,
//! within one grace period.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::HANG;
use mlua_isle::{IsleBuilder, IsleError, IslePool, Recycle, Task};

/// Occupies one member with a host closure that reports it started, then blocks until the
/// returned sender sends or is dropped. Returns once the closure runs.
fn hold(pool: &IslePool) -> (Task<usize>, Sender<()>) {
    let (started_tx, started) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    let task = pool
        .spawn_exec(move |_| {
            started_tx.send(()).unwrap();
            let _ = release.recv();
            Ok(0)
        })
        .unwrap();
    started
        .recv_timeout(HANG)
        .expect("the holding request should start");
    (task, release_tx)
}

/// Queues `count` requests that return their number, from 1.
fn queue(pool: &IslePool, count: usize) -> Vec<Task<usize>> {
    (1..=count)
        .map(|i| pool.spawn_exec(move |_| Ok(i)).unwrap())
        .collect()
}

/// Waits for every task, asserting that each ran and returned its number (from `first`).
#[track_caller]
fn assert_all_ran(tasks: Vec<Task<usize>>, first: usize) {
    for (number, task) in (first..).zip(tasks) {
        match task.wait_timeout(HANG).expect("hang guard") {
            Ok(value) => assert_eq!(value, number),
            Err(err) => panic!("request {number} did not run: {err:?}"),
        }
    }
}

/// Polls `condition` until it holds, failing the test after the hang guard.
#[track_caller]
fn eventually(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "hang guard: the condition never held"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `close` on another thread and waits (with the hang guard) for it to return.
#[track_caller]
fn returns_within_hang_guard<T: Send + 'static>(close: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(close());
    });
    done.recv_timeout(HANG)
        .expect("closing the pool returns within the hang guard")
}

#[test]
fn shutdown_runs_what_is_queued_when_the_policy_retired_every_member() {
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_requests(1))
        .spawn(|_| Ok(()))
        .unwrap();
    // The only member runs one request (and is retired after it); three wait behind it.
    let (held, release) = hold(&pool);
    let queued = queue(&pool, 3);
    assert_eq!(pool.stats().queued, 3);
    let (closing_tx, closing) = mpsc::channel();
    let shutdown = thread::spawn(move || {
        closing_tx.send(()).unwrap();
        pool.shutdown()
    });
    closing.recv_timeout(HANG).expect("hang guard");
    release.send(()).unwrap();
    let mut all = vec![held];
    all.extend(queued);
    assert_all_ran(all, 0);
    shutdown.join().unwrap().unwrap();
}

#[test]
fn dropping_the_pool_runs_what_is_queued() {
    let pool = IslePool::builder().size(1).spawn(|_| Ok(())).unwrap();
    let (held, release) = hold(&pool);
    let queued = queue(&pool, 3);
    // Dropping never blocks, so the pool is closed before the member is released.
    drop(pool);
    release.send(()).unwrap();
    let mut all = vec![held];
    all.extend(queued);
    assert_all_ran(all, 0);
}

#[test]
fn a_cancel_then_shutdown_runs_what_is_queued_behind() {
    // The default policy replaces a member after a request that was cancelled.
    let pool = IslePool::builder().size(1).spawn(|_| Ok(())).unwrap();
    let (started_tx, started) = mpsc::channel();
    let looping = pool
        .request()
        .no_timeout()
        .spawn_exec(move |lua| {
            started_tx.send(()).unwrap();
            lua.load("while true do end").exec()
        })
        .unwrap();
    started
        .recv_timeout(HANG)
        .expect("the looping request should start");
    let queued = queue(&pool, 3);
    looping.cancel();
    pool.shutdown().unwrap();
    let err = looping.wait_timeout(HANG).expect("hang guard").unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_all_ran(queued, 1);
}

#[test]
fn shutdown_timeout_is_bounded_when_a_returned_members_queue_is_full() {
    let pool = IslePool::builder()
        .size(2)
        .isle(IsleBuilder::new().queue_capacity(1))
        .spawn(|_| Ok(()))
        .unwrap();
    let guard = pool.checkout().unwrap();
    let (started_tx, started) = mpsc::channel();
    let looping = guard
        .request()
        .no_timeout()
        .spawn_exec(move |lua| {
            started_tx.send(()).unwrap();
            lua.load("while true do end").exec()
        })
        .unwrap();
    started
        .recv_timeout(HANG)
        .expect("the looping request should start");
    let behind = guard.spawn_eval::<()>("return").unwrap();
    // The member's own queue is now full.
    let err = guard
        .request()
        .try_enqueue()
        .spawn_eval::<()>("return")
        .unwrap_err();
    assert!(matches!(err, IsleError::Full), "{err:?}");
    // Returned with a full queue, while its request loops.
    drop(guard);
    let result =
        returns_within_hang_guard(move || pool.shutdown_timeout(Duration::from_millis(100)));
    assert!(result.is_ok(), "{result:?}");
    // Past the deadline, the member's running and queued requests end with `Shutdown`.
    for task in [looping, behind] {
        let err = task.wait_timeout(HANG).expect("hang guard").unwrap_err();
        assert!(err.is_shutdown(), "{err:?}");
    }
}

#[test]
fn shutdown_timeout_is_bounded_when_a_replacement_init_hangs() {
    let (init_started_tx, init_started) = mpsc::channel::<()>();
    let (release_tx, release) = mpsc::channel::<()>();
    let release = Arc::new(Mutex::new(release));
    let inits = Arc::new(AtomicUsize::new(0));
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_requests(1))
        .spawn(move |_| {
            if inits.fetch_add(1, Ordering::SeqCst) > 0 {
                // A replacement: hangs until the test lets it go.
                let _ = init_started_tx.send(());
                let _ = release.lock().unwrap().recv();
            }
            Ok(())
        })
        .unwrap();
    // The only member is retired after this request; its replacement's `init` hangs.
    assert_eq!(pool.eval::<i64>("1").unwrap(), 1);
    init_started
        .recv_timeout(HANG)
        .expect("the replacement should start its init");
    let result =
        returns_within_hang_guard(move || pool.shutdown_timeout(Duration::from_millis(100)));
    assert!(result.is_ok(), "{result:?}");
    // Lets the hanging `init` end, so that its thread does not outlive the test.
    drop(release_tx);
}

#[test]
fn a_member_is_idle_as_soon_as_its_caller_has_the_result() {
    let pool = IslePool::builder().size(1).spawn(|_| Ok(())).unwrap();
    for _ in 0..1000 {
        assert_eq!(pool.eval::<i64>("1").unwrap(), 1);
        assert_eq!(pool.stats().busy, 0);
        assert_eq!(pool.eval::<i64>("2").unwrap(), 2);
        let guard = pool.try_checkout().expect("the only member is idle");
        drop(guard);
    }
}

#[test]
fn a_return_queued_behind_slow_work_still_puts_the_member_back() {
    let timeout = Duration::from_millis(100);
    let pool = IslePool::builder()
        .size(1)
        .isle(IsleBuilder::new().timeout(timeout))
        .spawn(|_| Ok(()))
        .unwrap();
    let guard = pool.checkout().unwrap();
    let (started_tx, started) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    let slow = guard
        .request()
        .no_timeout()
        .spawn_exec(move |_| {
            started_tx.send(()).unwrap();
            let _ = release.recv();
            // The work itself: it outlasts the isle's default timeout, and so would any
            // deadline counted from when the return was queued behind it.
            thread::sleep(timeout * 3);
            Ok(())
        })
        .unwrap();
    started
        .recv_timeout(HANG)
        .expect("the slow request should start");
    // Returned while its request runs: the return queues behind it.
    drop(guard);
    release_tx.send(()).unwrap();
    slow.wait_timeout(HANG).expect("hang guard").unwrap();
    eventually(|| {
        let stats = pool.stats();
        (stats.idle, stats.checked_out) == (1, 0)
    });
    let guard = pool
        .checkout_timeout(HANG)
        .expect("the only member is back");
    drop(guard);
}

#[test]
fn shutdown_timeout_leaves_no_member_running_queued_work() {
    let pool = IslePool::builder()
        .size(1)
        .isle(IsleBuilder::new().grace_period(HANG))
        .spawn(|_| Ok(()))
        .unwrap();
    let (started_tx, started) = mpsc::channel();
    let running = Arc::new(AtomicUsize::new(0));
    // Held by every request's closure: once only this one is left, no request can start.
    let closures = Arc::new(());
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let started_tx = started_tx.clone();
            let running = running.clone();
            let closures = closures.clone();
            pool.request()
                .no_timeout()
                .spawn_exec(move |_| {
                    let _closures = closures;
                    running.fetch_add(1, Ordering::SeqCst);
                    let _ = started_tx.send(());
                    // The work itself: a host call that a hard stop cannot interrupt.
                    thread::sleep(Duration::from_millis(250));
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    started
        .recv_timeout(HANG)
        .expect("the first request should start");
    // Past this deadline, with one request running and five queued, nothing else starts.
    let result =
        returns_within_hang_guard(move || pool.shutdown_timeout(Duration::from_millis(30)));
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(running.load(Ordering::SeqCst), 0, "a request still runs");
    assert_eq!(
        Arc::strong_count(&closures),
        1,
        "a request could still start"
    );
    // Each request ran, or ended with `Shutdown`: none is left for a member to take later.
    for task in tasks {
        match task.try_wait() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => assert!(err.is_shutdown(), "{err:?}"),
            Err(_) => panic!("a request was still pending when shutdown returned"),
        }
    }
}

/// The grace period of the stuck-members tests: long enough that stopping the members one
/// after another (a grace period each) cannot pass for stopping them together.
const STUCK_GRACE: Duration = Duration::from_secs(1);
/// How many members are stuck at once.
const STUCK: usize = 4;

#[test]
fn shutdown_timeout_stops_every_stuck_member_within_one_grace_period() {
    let pool = IslePool::builder()
        .size(STUCK)
        .isle(IsleBuilder::new().grace_period(STUCK_GRACE))
        .spawn(|_| Ok(()))
        .unwrap();
    // Every member blocked in host code that no stop interrupts.
    let held: Vec<_> = (0..STUCK).map(|_| hold(&pool)).collect();
    let timeout = Duration::from_millis(50);
    let started = Instant::now();
    let result = returns_within_hang_guard(move || pool.shutdown_timeout(timeout));
    let took = started.elapsed();
    assert!(matches!(result, Err(IsleError::Abandoned)), "{result:?}");
    // Together: the deadline plus one grace period. One after another would take a grace
    // period per member (here four).
    assert!(
        took < timeout + STUCK_GRACE * 2,
        "the stuck members were stopped one after another: {took:?}"
    );
    for (task, release) in held {
        assert!(task.wait_timeout(HANG).expect("hang guard").is_err());
        drop(release);
    }
}

/// Takes [`SLOW_DROP`] to drop: the work of a queued request that is never run.
struct SlowDrop;
const SLOW_DROP: Duration = Duration::from_millis(600);
impl Drop for SlowDrop {
    fn drop(&mut self) {
        thread::sleep(SLOW_DROP);
    }
}

/// The grace period of the slow-drop tests: shorter than [`SLOW_DROP`].
const SHORT_GRACE: Duration = Duration::from_millis(300);

/// Adds `sleep_ms`, a host function that sleeps, so that a loop calling it stops within a
/// call of being interrupted.
fn with_sleep(lua: &mlua::Lua) -> mlua::Result<()> {
    let sleep = lua.create_function(|_, ms: u64| {
        thread::sleep(Duration::from_millis(ms));
        Ok(())
    })?;
    lua.globals().set("sleep_ms", sleep)
}

/// A request that reports it started and loops until it is stopped (within 20 ms).
fn looping(started: mpsc::Sender<()>) -> impl FnOnce(&mlua::Lua) -> mlua::Result<()> + Send {
    move |lua| {
        started.send(()).unwrap();
        lua.load("while true do sleep_ms(20) end").exec()
    }
}

#[test]
fn dropping_one_members_queued_work_does_not_eat_into_anothers_grace_period() {
    let pool = IslePool::builder()
        .size(2)
        .isle(IsleBuilder::new().grace_period(SHORT_GRACE))
        .spawn(with_sleep)
        .unwrap();
    let (started_tx, started) = mpsc::channel();
    // The first member, checked out: a loop, and behind it work that is slow to drop.
    let guard = pool.checkout().unwrap();
    let first = guard.spawn_exec(looping(started_tx.clone())).unwrap();
    let slow = SlowDrop;
    let queued = guard
        .spawn_exec(move |_| {
            drop(slow);
            Ok(())
        })
        .unwrap();
    // The other member: a loop from the pool's queue.
    let second = pool.spawn_exec(looping(started_tx)).unwrap();
    for _ in 0..2 {
        started.recv_timeout(HANG).expect("both loops should start");
    }
    let result =
        returns_within_hang_guard(move || pool.shutdown_timeout(Duration::from_millis(50)));
    // Both loops stopped within 20 ms of their interrupt: neither member was stuck.
    assert!(result.is_ok(), "{result:?}");
    for task in [first, queued, second] {
        assert!(task.wait_timeout(HANG).expect("hang guard").is_err());
    }
    drop(guard);
}

#[cfg(feature = "tokio")]
mod async_pool {
    use std::time::{Duration, Instant};

    use mlua_isle::{AsyncIslePool, IsleBuilder, IsleError};
    use tokio::sync::{mpsc, watch};
    use tokio::time::timeout;

    use super::{looping, with_sleep, SlowDrop, HANG, SHORT_GRACE, STUCK, STUCK_GRACE};

    /// Polls `condition` until it holds, failing the test after the hang guard.
    async fn eventually(mut condition: impl FnMut() -> bool) {
        let polled = timeout(HANG, async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        polled.await.expect("hang guard: the condition never held");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_discard_during_shutdown_with_queued_work_lets_shutdown_finish() {
        let (pool, driver) = AsyncIslePool::builder()
            .size(1)
            .spawn_async(|_| Ok(()))
            .await
            .unwrap();
        // The only member is checked out; three requests wait for it.
        let guard = pool.checkout().await.unwrap();
        let mut queued = Vec::new();
        for i in 1..=3usize {
            queued.push(pool.spawn_exec(move |_| Ok(i)).await.unwrap());
        }
        assert_eq!(pool.stats().queued, 3);
        let shutdown = tokio::spawn(driver.shutdown());
        // The pool is closing once a checkout is refused as `Shutdown` rather than `Full`.
        eventually(|| matches!(pool.try_checkout(), Err(IsleError::Shutdown))).await;
        guard.discard();
        timeout(HANG, shutdown)
            .await
            .expect("hang guard: shutdown did not finish")
            .unwrap()
            .unwrap();
        for (number, task) in (1..).zip(queued) {
            assert_eq!(
                timeout(HANG, task).await.expect("hang guard").unwrap(),
                number
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checked_out_member_serving_coroutines_does_not_swallow_a_request_meant_for_another()
    {
        // `park()` reports that it started, then stays suspended until the test releases it.
        let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
        let (release_tx, release) = watch::channel(false);
        let (pool, driver) = AsyncIslePool::builder()
            .size(2)
            .spawn_async(move |lua| {
                let started_tx = started_tx.clone();
                let release = release.clone();
                let park = lua.create_async_function(move |_, ()| {
                    let started_tx = started_tx.clone();
                    let mut release = release.clone();
                    async move {
                        let _ = started_tx.send(());
                        let _ = release.wait_for(|&released| released).await;
                        Ok("resumed")
                    }
                })?;
                lua.globals().set("park", park)
            })
            .await
            .unwrap();
        eventually(|| pool.stats().idle == 2).await;
        // One member, checked out, runs a suspended coroutine...
        let guard = pool.try_checkout().unwrap();
        let checked_out = tokio::spawn(async move {
            let parked = guard.coroutine_eval::<String>("return park()").await;
            drop(guard);
            parked
        });
        timeout(HANG, started.recv()).await.expect("hang guard");
        // ...and the other runs one too, and can take more work meanwhile.
        let other = tokio::spawn({
            let pool = pool.clone();
            async move { pool.coroutine_eval::<String>("return park()").await }
        });
        timeout(HANG, started.recv()).await.expect("hang guard");
        let one = timeout(HANG, pool.eval::<i64>("return 1"))
            .await
            .expect("hang guard: the request waited for a coroutine to end");
        assert_eq!(one.unwrap(), 1);
        // Served while both coroutines were still suspended.
        assert!(!checked_out.is_finished() && !other.is_finished());
        release_tx.send(true).unwrap();
        for parked in [checked_out, other] {
            let parked = timeout(HANG, parked).await.expect("hang guard").unwrap();
            assert_eq!(parked.unwrap(), "resumed");
        }
        driver.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_timeout_stops_every_stuck_member_within_one_grace_period_multi_thread() {
        stuck_members_are_stopped_together().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_timeout_stops_every_stuck_member_within_one_grace_period_current_thread() {
        stuck_members_are_stopped_together().await;
    }

    async fn stuck_members_are_stopped_together() {
        let (pool, driver) = AsyncIslePool::builder()
            .size(STUCK)
            .isle(IsleBuilder::new().grace_period(STUCK_GRACE))
            .spawn_async(|_| Ok(()))
            .await
            .unwrap();
        // Every member blocked in host code that no stop interrupts.
        let (started_tx, started) = std::sync::mpsc::channel();
        let mut held = Vec::new();
        for _ in 0..STUCK {
            let started_tx = started_tx.clone();
            let (release_tx, release) = std::sync::mpsc::channel::<()>();
            let task = pool
                .spawn_exec(move |_| {
                    started_tx.send(()).unwrap();
                    let _ = release.recv();
                    Ok(())
                })
                .await
                .unwrap();
            held.push((task, release_tx));
        }
        for _ in 0..STUCK {
            started
                .recv_timeout(HANG)
                .expect("every member should be held");
        }
        let deadline = Duration::from_millis(50);
        let begun = Instant::now();
        let result = timeout(HANG, driver.shutdown_timeout(deadline))
            .await
            .expect("hang guard: shutdown did not finish");
        let took = begun.elapsed();
        assert!(matches!(result, Err(IsleError::Abandoned)), "{result:?}");
        assert!(
            took < deadline + STUCK_GRACE * 2,
            "the stuck members were stopped one after another: {took:?}"
        );
        for (task, release) in held {
            assert!(timeout(HANG, task).await.expect("hang guard").is_err());
            drop(release);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_one_members_queued_work_does_not_eat_into_anothers_grace_period() {
        let (pool, driver) = AsyncIslePool::builder()
            .size(2)
            .isle(IsleBuilder::new().grace_period(SHORT_GRACE))
            .spawn_async(with_sleep)
            .await
            .unwrap();
        let (started_tx, started) = std::sync::mpsc::channel();
        let guard = pool.checkout().await.unwrap();
        let first = guard.spawn_exec(looping(started_tx.clone())).await.unwrap();
        let slow = SlowDrop;
        let queued = guard
            .spawn_exec(move |_| {
                drop(slow);
                Ok(())
            })
            .await
            .unwrap();
        let second = pool.spawn_exec(looping(started_tx)).await.unwrap();
        for _ in 0..2 {
            started.recv_timeout(HANG).expect("both loops should start");
        }
        let result = timeout(HANG, driver.shutdown_timeout(Duration::from_millis(50)))
            .await
            .expect("hang guard: shutdown did not finish");
        assert!(result.is_ok(), "{result:?}");
        for task in [first, queued, second] {
            assert!(timeout(HANG, task).await.expect("hang guard").is_err());
        }
        drop(guard);
    }
}

/// A member retired by the policy whose VM's close runs a finalizer that never returns: the
/// pool serves on with its replacement, and, the members having a default timeout, the close
/// ends in a hard stop, so that the pool's shutdown does not wait for it forever.
#[cfg(not(feature = "luau"))]
#[test]
fn a_retired_member_whose_close_never_ends_holds_up_neither_requests_nor_shutdown() {
    use std::sync::atomic::AtomicBool;
    let release = Arc::new(AtomicBool::new(false));
    let flag = release.clone();
    let pool = IslePool::builder()
        .isle(
            IsleBuilder::new()
                .timeout(Duration::from_millis(100))
                .grace_period(Duration::from_millis(100)),
        )
        .size(1)
        .recycle(Recycle::new().after_requests(1))
        .spawn(move |lua| common::define_released(lua, flag.clone()))
        .unwrap();
    // Retired after this request; its close loops until released.
    pool.eval::<()>(common::finalized_on_close("while not released() do end"))
        .unwrap();
    let (served, pool) = returns_within_hang_guard(move || (pool.eval::<i64>("return 7"), pool));
    assert_eq!(served.unwrap(), 7);
    let start = Instant::now();
    let outcome = returns_within_hang_guard(move || pool.shutdown());
    // `Abandoned` while the pool still waited for the retired member; `Ok` if the pool had
    // already seen it given up on and forgotten it.
    assert!(
        matches!(outcome, Ok(()) | Err(IsleError::Abandoned)),
        "{outcome:?}"
    );
    assert!(start.elapsed() < HANG);
    assert!(!release.load(Ordering::SeqCst));
    release.store(true, Ordering::SeqCst);
}
