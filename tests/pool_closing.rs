//! Closing a pool: `shutdown`, `shutdown_timeout` and dropping the pool run what is queued and
//! stay bounded, also while members are retired, returned with a full queue or being
//! replaced; and a member is free again as soon as its caller has the result.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

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
