//! Adversarial review tests (second round). Each test states the promise it checks.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use mlua_isle::{IsleBuilder, IslePool};

fn settle() {
    thread::sleep(Duration::from_millis(200));
}

/// No capacity leak: the return job carries a deadline counted from enqueueing; queued behind
/// the guard holder's work it expires unrun and the member stays CHECKED_OUT for ever.
#[test]
fn return_job_expiring_in_the_members_queue_leaks_the_member() {
    let pool = IslePool::builder()
        .size(1)
        .isle(IsleBuilder::new().timeout(Duration::from_millis(200)))
        .spawn(|_| Ok(()))
        .unwrap();
    let guard = pool.checkout().unwrap();
    guard
        .request()
        .no_timeout()
        .spawn_exec(|_| {
            thread::sleep(Duration::from_millis(400));
            Ok(())
        })
        .unwrap()
        .detach();
    drop(guard);
    thread::sleep(Duration::from_millis(800));
    let stats = pool.stats();
    assert_eq!(stats.checked_out, 0, "member never returned: {stats:?}");
}

/// Shutdown terminates: a guard discarded while the closing pool still has queued work sends a
/// Retire the stopping supervisor ignores; the RETIRING member stays in place, alive, so
/// `keep_serving` never replaces it and the queue never empties.
#[test]
fn discard_during_shutdown_with_queued_work_hangs_shutdown() {
    let pool = IslePool::builder().size(1).spawn(|_| Ok(())).unwrap();
    let guard = pool.checkout().unwrap();
    let tasks: Vec<_> = (0..3)
        .map(|i| pool.spawn_exec(move |_| Ok(i)).unwrap())
        .collect();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(pool.shutdown());
    });
    settle();
    guard.discard();
    let done = rx.recv_timeout(Duration::from_secs(5));
    assert!(
        matches!(done, Ok(Ok(()))),
        "shutdown did not finish: {done:?}"
    );
    for t in tasks {
        t.wait().unwrap();
    }
}

/// No thread left behind / nothing runs after shutdown: after `shutdown_timeout` gives up on
/// the queue it vacates the positions (`take_members`) while the supervisor, still stopping
/// with work queued, launches and installs replacements that run queued work after shutdown
/// has returned, on threads nobody joins.
#[test]
fn shutdown_timeout_leaves_replacements_running_queued_work() {
    let pool = IslePool::builder()
        .size(1)
        .isle(IsleBuilder::new().grace_period(Duration::from_millis(400)))
        .spawn(|_| Ok(()))
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let _tasks: Vec<_> = (0..6)
        .map(|_| {
            let running = running.clone();
            let started = started.clone();
            pool.request()
                .no_timeout()
                .spawn_exec(move |_| {
                    started.fetch_add(1, Ordering::SeqCst);
                    running.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(250)); // not interruptible
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    thread::sleep(Duration::from_millis(20));
    let _ = pool.shutdown_timeout(Duration::from_millis(30));
    let at_return = (
        running.load(Ordering::SeqCst),
        started.load(Ordering::SeqCst),
    );
    thread::sleep(Duration::from_millis(600));
    let later = started.load(Ordering::SeqCst);
    assert_eq!(at_return.0, 0, "work still running after shutdown returned");
    assert_eq!(later, at_return.1, "work started after shutdown returned");
}

#[cfg(feature = "tokio")]
mod async_pool {
    use super::*;
    use mlua_isle::AsyncIslePool;

    /// No lost wake-up: a checked-out member in executor mode still listens on the feed's
    /// `arrived` and, being the oldest listener, takes the `notify(1)`; it cannot claim, and the
    /// idle executor-mode member sleeps until its own coroutine ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checked_out_executor_member_swallows_the_arrival_notification() {
        let (pool, driver) = AsyncIslePool::builder()
            .size(2)
            .spawn_async(|lua| {
                let sleep = lua.create_async_function(|_, ms: u64| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(ms)
                })?;
                lua.globals().set("sleep", sleep)
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let guard = pool.try_checkout().unwrap();
        let x = tokio::spawn(async move {
            let r = guard.coroutine_eval::<u64>("return sleep(3000)").await;
            drop(guard);
            r
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let y = tokio::spawn({
            let pool = pool.clone();
            async move { pool.coroutine_eval::<u64>("return sleep(3000)").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        assert_eq!(pool.eval::<i64>("return 1").await.unwrap(), 1);
        let took = t0.elapsed();
        let _ = x.await;
        let _ = y.await;
        driver.shutdown().await.unwrap();
        assert!(
            took < Duration::from_secs(1),
            "queued request waited {took:?}"
        );
    }
}
