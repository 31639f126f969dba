//! The async pool: async verbs, coroutine requests, checkout futures, backpressure, shutdown.
#![cfg(feature = "tokio")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mlua_isle::{AsyncIslePool, AsyncIslePoolDriver, IsleError};

const HANG_GUARD: Duration = Duration::from_secs(10);

async fn pool(size: usize) -> (AsyncIslePool, AsyncIslePoolDriver) {
    AsyncIslePool::builder()
        .size(size)
        .spawn_async(|lua| {
            let sleep = lua.create_async_function(|_, ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(ms)
            })?;
            lua.globals().set("sleep", sleep)
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn async_verbs_work_on_a_current_thread_runtime() {
    let (pool, driver) = pool(2).await;
    assert_eq!(pool.eval::<i64>("1 + 1").await.unwrap(), 2);
    assert_eq!(pool.call::<String>("tostring", 3).await.unwrap(), "3");
    let task = pool
        .spawn_exec(|lua| lua.load("'x'").eval::<String>())
        .await
        .unwrap();
    assert_eq!(task.await.unwrap(), "x");
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coroutine_requests_wait_while_members_serve_others() {
    let (pool, driver) = pool(1).await;
    // One member: the coroutine request suspends in `sleep` and the member serves the rest.
    let slow = tokio::spawn({
        let pool = pool.clone();
        async move { pool.coroutine_eval::<u64>("return sleep(50)").await }
    });
    for i in 0..20 {
        assert_eq!(pool.eval::<i64>(format!("{i}").as_str()).await.unwrap(), i);
    }
    assert_eq!(slow.await.unwrap().unwrap(), 50);
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coroutine_requests_from_the_queue_run_on_any_member() {
    let (pool, driver) = pool(2).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.coroutine_eval::<u64>("return sleep(5)").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 5);
    }
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_checkout_future_dropped_at_any_point_leaks_nothing() {
    let (pool, driver) = pool(1).await;
    let held = pool.checkout().await.unwrap();
    // While the only member is out, checkouts wait; drop them in every way.
    for _ in 0..20 {
        let waiting = pool.checkout();
        assert!(tokio::time::timeout(Duration::from_millis(1), waiting)
            .await
            .is_err());
        tokio::select! {
            _ = pool.checkout() => panic!("the only member is checked out"),
            _ = tokio::task::yield_now() => {}
        }
        assert!(pool
            .checkout_timeout(Duration::from_millis(1))
            .await
            .unwrap_err()
            .is_timeout());
    }
    drop(held);
    // Every abandoned checkout left the member in the pool.
    let again = tokio::time::timeout(HANG_GUARD, pool.checkout())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.eval::<i64>("1").await.unwrap(), 1);
    drop(again);
    let stats = driver.stats();
    assert_eq!(stats.size, 1);
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_submitters_wait_or_fail() {
    let (pool, driver) = AsyncIslePool::builder()
        .size(1)
        .queue_capacity(2)
        .spawn_async(|_| Ok(()))
        .await
        .unwrap();
    let (release_tx, release) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let blocker = pool
        .spawn_exec(move |_| {
            let _ = started_tx.send(());
            release.recv().unwrap();
            Ok(())
        })
        .await
        .unwrap();
    started.await.unwrap();
    let queued: Vec<_> = futures_queue(&pool, 2).await;
    let err = pool
        .request()
        .try_enqueue()
        .spawn_eval::<i64>("0")
        .await
        .unwrap_err();
    assert!(matches!(err, IsleError::Full));
    // A waiting submitter gets in once there is room.
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.eval::<i64>("42").await }
    });
    release_tx.send(()).unwrap();
    blocker.await.unwrap();
    for task in queued {
        task.await.unwrap();
    }
    assert_eq!(waiting.await.unwrap().unwrap(), 42);
    driver.shutdown().await.unwrap();
}

async fn futures_queue(pool: &AsyncIslePool, n: usize) -> Vec<mlua_isle::AsyncTask<i64>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(pool.spawn_eval::<i64>("1").await.unwrap());
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_each_get_exactly_one_answer() {
    let (pool, driver) = pool(2).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let pool = pool.clone();
            let answered = answered.clone();
            tokio::spawn(async move {
                for j in 0..50 {
                    let n = i * 1000 + j;
                    assert_eq!(pool.call::<i64>("tonumber", n).await.unwrap(), n);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(answered.load(Ordering::Relaxed), 64 * 50);
    assert_eq!(driver.stats().completed, 64 * 50);
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_every_handle_lets_the_members_go() {
    let (pool, driver) = pool(2).await;
    let task = pool.spawn_eval::<i64>("5").await.unwrap();
    drop(pool);
    assert_eq!(task.await.unwrap(), 5);
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_stops_a_runaway_request() {
    let (pool, driver) = pool(1).await;
    let task = pool.spawn_eval::<()>("while true do end").await.unwrap();
    tokio::time::timeout(
        HANG_GUARD,
        driver.shutdown_timeout(Duration::from_millis(20)),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(task.await.unwrap_err().is_shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_recycled_and_replaced_as_in_the_blocking_pool() {
    use mlua_isle::Recycle;
    let (pool, driver) = AsyncIslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_requests(2))
        .spawn_async(|lua| lua.globals().set("count", 0))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(
            pool.eval::<i64>("count = count + 1; return count")
                .await
                .unwrap(),
        );
    }
    assert_eq!(seen, [1, 2, 1, 2]);
    // A panic replaces the member too.
    pool.exec(|lua| lua.globals().set("marked", true))
        .await
        .unwrap();
    let err = pool
        .exec::<(), _>(|_| panic!("deliberate"))
        .await
        .unwrap_err();
    assert!(err.is_panic());
    assert!(pool.eval::<bool>("marked == nil").await.unwrap());
    let stats = driver.stats();
    assert!(stats.recycled.requests >= 2, "{stats:?}");
    assert_eq!(stats.recycled.panicked, 1);
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_checked_out_async_member_is_exclusive_and_discard_replaces_it() {
    let (pool, driver) = AsyncIslePool::builder()
        .size(1)
        .on_return(|lua| lua.globals().set("session", mlua_isle::mlua::Nil))
        .spawn_async(|_| Ok(()))
        .await
        .unwrap();
    let session = pool.try_checkout().unwrap();
    assert!(matches!(pool.try_checkout(), Err(IsleError::Full)));
    session
        .exec(|lua| lua.globals().set("session", "alice"))
        .await
        .unwrap();
    assert_eq!(session.eval::<String>("session").await.unwrap(), "alice");
    drop(session);
    // `on_return` ran before anyone else got the member.
    assert!(pool.eval::<bool>("session == nil").await.unwrap());
    let session = pool.checkout().await.unwrap();
    session
        .exec(|lua| lua.globals().set("dirty", true))
        .await
        .unwrap();
    session.discard();
    assert!(pool.eval::<bool>("dirty == nil").await.unwrap());
    assert_eq!(driver.stats().recycled.discarded, 1);
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_async_member() {
    let (pool, driver) = pool(2).await;
    let results = pool.broadcast_exec(|lua| lua.globals().set("v", 3)).await;
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(Result::is_ok));
    // Two requests held at a barrier run on both members: each sees the broadcast.
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.exec(move |lua| {
                    barrier.wait();
                    lua.globals().get::<i64>("v")
                })
                .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 3);
    }
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_spare_serves_the_async_pool_after_a_recycle() {
    use mlua_isle::Recycle;
    let (pool, driver) = AsyncIslePool::builder()
        .size(1)
        .spares(1)
        .recycle(Recycle::new().after_requests(1))
        .spawn_async(|lua| lua.globals().set("fresh", true))
        .await
        .unwrap();
    assert_eq!(driver.stats().spares, 1);
    for _ in 0..5 {
        assert!(pool
            .eval::<bool>("local was = fresh; fresh = false; return was")
            .await
            .unwrap());
    }
    driver.shutdown().await.unwrap();
}

/// Coroutine requests count as requests: for the recycling policy and in the statistics.
#[tokio::test(flavor = "current_thread")]
async fn coroutine_requests_count_for_recycling_and_statistics() {
    let (pool, driver) = AsyncIslePool::builder()
        .size(1)
        .recycle(mlua_isle::Recycle::new().after_requests(2))
        .spawn_async(|_| Ok(()))
        .await
        .unwrap();
    for i in 0..4i64 {
        let seen: Option<i64> = pool
            .coroutine_eval(format!("local seen = mark mark = {i} return seen"))
            .await
            .unwrap();
        // A member is replaced after its second request: the odd ones see the mark left
        // by the request before them, the even ones start on a fresh VM.
        assert_eq!(seen, (i % 2 == 1).then_some(i - 1), "request {i}");
    }
    assert!(pool.coroutine_eval::<()>("error('x')").await.is_err());
    let stats = pool.stats();
    assert_eq!(stats.completed, 4, "{stats:?}");
    assert_eq!(stats.failed, 1, "{stats:?}");
    assert!(stats.recycled.total() >= 2, "{stats:?}");
    driver.shutdown().await.unwrap();
}

/// A coroutine request that fails to start (its code does not compile, its function does
/// not exist) counts as failed, as a plain one does.
#[tokio::test(flavor = "current_thread")]
async fn coroutine_requests_that_fail_to_start_count_as_failed() {
    let (pool, driver) = pool(1).await;
    assert!(pool.coroutine_eval::<()>("(").await.is_err());
    assert!(pool.coroutine_call::<()>("nope", ()).await.is_err());
    assert_eq!(pool.stats().failed, 2);
    driver.shutdown().await.unwrap();
}

/// A future that completes once `go` is set, flagging `started` when first polled.
struct Gate(
    Arc<std::sync::atomic::AtomicBool>,
    Arc<std::sync::atomic::AtomicBool>,
);

impl std::future::Future for Gate {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.1.store(true, Ordering::SeqCst);
        if self.0.load(Ordering::SeqCst) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

/// Randomized: a coroutine request's report retiring a member while the guard that holds
/// it is returned on another thread. The cause must not be lost (the member would stay in
/// service past its policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retire_racing_with_a_return_is_not_lost() {
    use std::sync::atomic::AtomicBool;
    let go = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (g, s) = (go.clone(), started.clone());
    let (pool, driver) = AsyncIslePool::builder()
        .size(1)
        .spares(2)
        .recycle(mlua_isle::Recycle::new().after_requests(1))
        .spawn_async(move |lua| {
            let (g, s) = (g.clone(), s.clone());
            let gate = lua.create_async_function(move |_, ()| {
                let gate = Gate(g.clone(), s.clone());
                async move {
                    gate.await;
                    Ok(())
                }
            })?;
            lua.globals().set("gate", gate)
        })
        .await
        .unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        go.store(false, Ordering::SeqCst);
        started.store(false, Ordering::SeqCst);
        let before = pool.stats().recycled.requests;
        let task = pool
            .request()
            .spawn_coroutine_eval::<()>("gate()")
            .await
            .unwrap();
        while !started.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let guard = loop {
            match pool.try_checkout() {
                Ok(guard) => break guard,
                Err(IsleError::Full) => tokio::task::yield_now().await,
                Err(e) => panic!("{e:?}"),
            }
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let spins = (seed % 3000) as usize;
        let release = go.clone();
        let holder = std::thread::spawn(move || {
            release.store(true, Ordering::SeqCst);
            for _ in 0..spins {
                std::hint::spin_loop();
            }
            drop(guard);
        });
        task.await.unwrap();
        holder.join().unwrap();
        assert_eq!(
            pool.stats().recycled.requests,
            before + 1,
            "round {round}: the member was not retired"
        );
    }
    driver.shutdown().await.unwrap();
}

/// A member replaced (here after each request) while a coroutine request of its own is still
/// suspended keeps running it; the pool's `shutdown_timeout` stops it too, and it resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_reaches_coroutine_requests_on_replaced_members() {
    use std::sync::atomic::AtomicBool;
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    let (pool, driver) = AsyncIslePool::builder()
        .size(1)
        .recycle(mlua_isle::Recycle::new().after_requests(1))
        .spawn_async(move |lua| {
            let flag = flag.clone();
            let forever = lua.create_async_function(move |_, ()| {
                let flag = flag.clone();
                async move {
                    flag.store(true, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                    Ok(())
                }
            })?;
            lua.globals().set("forever", forever)
        })
        .await
        .unwrap();
    let stuck = pool
        .request()
        .spawn_coroutine_eval::<()>("forever()")
        .await
        .unwrap();
    while !started.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    // Its report retires the member the stuck request runs on.
    assert_eq!(pool.coroutine_eval::<i64>("return 1").await.unwrap(), 1);
    let _ = driver.shutdown_timeout(Duration::from_millis(50)).await;
    let resolved = tokio::time::timeout(Duration::from_secs(30), stuck).await;
    assert!(
        matches!(resolved, Ok(Err(IsleError::Shutdown))),
        "{resolved:?}"
    );
}
