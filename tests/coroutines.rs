//! Coroutine requests: Lua code that awaits async Rust functions while the isle serves others.
#![cfg(feature = "tokio")]

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mlua_isle::{AsyncIsle, AsyncIsleDriver, CancelToken, IsleError};

/// Runs `scenario` on both tokio flavours, under the hang guard.
macro_rules! on_both_runtimes {
    ($($name:ident => $scenario:expr;)*) => {$(
        mod $name {
            use super::*;
            #[test]
            fn current_thread() {
                within_hang_guard(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on($scenario)
                });
            }
            #[test]
            fn multi_thread() {
                within_hang_guard(|| {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on($scenario)
                });
            }
        }
    )*};
}

/// A future that counts itself alive until dropped.
struct Counted<F> {
    inner: F,
    _live: DropCounter,
}

impl<F: std::future::Future + Unpin> std::future::Future for Counted<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        std::pin::Pin::new(&mut self.inner).poll(cx)
    }
}

/// An isle with `sleep(ms)` (a tokio timer), `forever()` (never completes; counted in `live`),
/// `hold()` (a userdata counted in `live`) and `started()` (reported on the returned channel).
async fn isle(
    live: Arc<AtomicUsize>,
) -> (
    AsyncIsle,
    AsyncIsleDriver,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let live_for_hold = live.clone();
    let (isle, driver) = AsyncIsle::spawn(move |lua| {
        let sleep = lua.create_async_function(|_, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })?;
        lua.globals().set("sleep", sleep)?;
        let forever = lua.create_async_function(move |_, ()| {
            let live = live.clone();
            async move {
                Counted {
                    inner: std::future::pending::<()>(),
                    _live: DropCounter::new(&live),
                }
                .await;
                Ok(())
            }
        })?;
        lua.globals().set("forever", forever)?;
        let held = live_for_hold.clone();
        let hold =
            lua.create_function(move |lua, ()| lua.create_any_userdata(DropCounter::new(&held)))?;
        lua.globals().set("hold", hold)?;
        let started = lua.create_function(move |_, ()| Ok(tx.send(()).is_ok()))?;
        lua.globals().set("started", started)?;
        lua.globals().set("kept", "yes")
    })
    .await
    .unwrap();
    (isle, driver, rx)
}

async fn awaiting_coroutines_run_concurrently() {
    let (isle, driver, _) = isle(Arc::default()).await;
    let start = Instant::now();
    let tasks: Vec<_> =
        futures_join((0..100).map(|_| isle.spawn_coroutine_eval::<u64>("return sleep(50)"))).await;
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.unwrap().await.unwrap());
    }
    assert!(results.iter().all(|&ms| ms == 50));
    // 100 sequential sleeps would take 5 s; concurrently they take about 50 ms.
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
    driver.shutdown().await.unwrap();
}

/// Awaits each future in turn (submission order is what matters here).
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}

async fn plain_requests_run_while_a_coroutine_awaits() {
    let (isle, _driver, mut started) = isle(Arc::default()).await;
    let waiting = isle
        .spawn_coroutine_eval::<()>("started() forever()")
        .await
        .unwrap();
    started.recv().await.unwrap();
    for i in 0..20 {
        assert_eq!(isle.eval::<i64>(format!("return {i}")).await.unwrap(), i);
    }
    assert_eq!(
        isle.coroutine_eval::<u64>("return sleep(1)").await.unwrap(),
        1
    );
    assert!(!waiting.is_finished());
    waiting.cancel();
    assert!(matches!(waiting.await, Err(IsleError::Cancelled)));
}

async fn cancel_drops_the_awaited_future() {
    let live = Arc::new(AtomicUsize::new(0));
    let (isle, _driver, mut started) = isle(live.clone()).await;
    let task = isle
        .spawn_coroutine_eval::<()>("started() forever()")
        .await
        .unwrap();
    started.recv().await.unwrap();
    eventually_async(|| live.load(Ordering::SeqCst) == 1).await;
    task.cancel();
    assert!(matches!(task.await, Err(IsleError::Cancelled)));
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "the awaited future was dropped"
    );
    assert_eq!(isle.eval::<String>("kept").await.unwrap(), "yes");
}

async fn dropping_the_task_cancels_and_drops_the_awaited_future() {
    let live = Arc::new(AtomicUsize::new(0));
    let (isle, _driver, mut started) = isle(live.clone()).await;
    let task = isle
        .spawn_coroutine_eval::<()>("started() forever()")
        .await
        .unwrap();
    started.recv().await.unwrap();
    drop(task);
    eventually_async(|| live.load(Ordering::SeqCst) == 0).await;
    assert_eq!(isle.eval::<i64>("1").await.unwrap(), 1);
}

async fn cancelling_a_busy_coroutine_releases_its_values() {
    for script in [
        "local held = hold() started() while true do end",
        "local held = hold() started() local f = forever while true do end",
        // `<close>` exists from Lua 5.4 on.
        #[cfg(any(feature = "lua54", feature = "lua55"))]
        "local held <close> = setmetatable({}, {__close = function() while true do end end}) \
         local kept = hold() started() while true do end",
        "local co = coroutine.wrap(function() local held = hold() started() while true do end end) co()",
    ] {
        let live = Arc::new(AtomicUsize::new(0));
        let (isle, _driver, mut started) = isle(live.clone()).await;
        let task = isle.spawn_coroutine_eval::<()>(script).await.unwrap();
        started.recv().await.unwrap();
        task.cancel();
        assert!(matches!(task.await, Err(IsleError::Cancelled)), "{script}");
        assert_eq!(live.load(Ordering::SeqCst), 0, "{script}");
        assert_eq!(isle.eval::<String>("kept").await.unwrap(), "yes");
    }
}

async fn a_deadline_ends_an_awaiting_coroutine() {
    let live = Arc::new(AtomicUsize::new(0));
    let (isle, _driver, _) = isle(live.clone()).await;
    let err = isle
        .request()
        .timeout(Duration::from_millis(30))
        .coroutine_eval::<()>("forever()")
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

async fn a_busy_coroutine_is_interrupted_uncatchably() {
    let (isle, _driver, mut started) = isle(Arc::default()).await;
    for script in [
        "sleep(1) started() while true do end",
        "sleep(1) started() while true do pcall(function() while true do end end) end",
        "sleep(1) started() while true do local ok = pcall(sleep, 0) end",
    ] {
        let token = CancelToken::new();
        let task = isle
            .request()
            .token(&token)
            .spawn_coroutine_eval::<()>(script)
            .await
            .unwrap();
        started.recv().await.unwrap();
        token.cancel();
        assert!(matches!(task.await, Err(IsleError::Cancelled)), "{script}");
        assert_eq!(isle.eval::<String>("kept").await.unwrap(), "yes");
    }
    let err = isle
        .request()
        .timeout(Duration::from_millis(30))
        .coroutine_eval::<()>("sleep(1) while true do pcall(function() while true do end end) end")
        .await
        .unwrap_err();
    assert!(err.is_timeout());
}

async fn coroutine_errors_and_panics_are_reported() {
    let (isle, _driver, _) = isle(Arc::default()).await;
    let err = isle
        .coroutine_eval::<()>("sleep(1) error('boom', 0)")
        .await
        .unwrap_err();
    assert_eq!(err.as_lua().unwrap().message(), "boom");
    let err = isle.coroutine_call::<()>("nope", ()).await.unwrap_err();
    assert!(matches!(err, IsleError::NotAFunction { .. }));
    isle.exec(|lua| {
        let boom = lua.create_async_function(|_, ()| async move {
            tokio::task::yield_now().await;
            panic!("async boom");
            #[allow(unreachable_code)]
            Ok(())
        })?;
        lua.globals().set("async_boom", boom)
    })
    .await
    .unwrap();
    quiet_lua_thread_panics();
    // Lua 5.1 cannot yield across `pcall`, so an async function cannot be awaited inside one.
    #[cfg(not(feature = "lua51"))]
    let script = "pcall(async_boom)";
    #[cfg(feature = "lua51")]
    let script = "async_boom()";
    match isle.coroutine_eval::<()>(script).await {
        Err(IsleError::Panic(msg)) => assert_eq!(msg, "async boom"),
        other => panic!("{other:?}"),
    }
    assert_eq!(isle.eval::<i64>("2").await.unwrap(), 2);
}

async fn shutdown_timeout_stops_awaiting_coroutines() {
    let live = Arc::new(AtomicUsize::new(0));
    let (isle, driver, mut started) = isle(live.clone()).await;
    let task = isle
        .spawn_coroutine_eval::<()>("started() forever()")
        .await
        .unwrap();
    started.recv().await.unwrap();
    driver
        .shutdown_timeout(Duration::from_millis(20))
        .await
        .unwrap();
    assert!(matches!(task.await, Err(IsleError::Shutdown)));
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

async fn graceful_shutdown_waits_for_coroutines() {
    let (isle, driver, _) = isle(Arc::default()).await;
    let task = isle
        .spawn_coroutine_eval::<u64>("return sleep(20)")
        .await
        .unwrap();
    driver.shutdown().await.unwrap();
    assert_eq!(task.await.unwrap(), 20);
}

async fn dropping_every_handle_lets_running_coroutines_finish() {
    let (isle, driver, _) = isle(Arc::default()).await;
    let task = isle
        .spawn_coroutine_eval::<u64>("return sleep(20)")
        .await
        .unwrap();
    drop(isle);
    assert_eq!(task.await.unwrap(), 20);
    driver.shutdown().await.unwrap();
}

async fn awaiting_the_isle_from_its_own_thread() {
    let slot: Arc<std::sync::OnceLock<AsyncIsle>> = Arc::default();
    let for_lua = slot.clone();
    let (isle, _driver) = AsyncIsle::spawn(move |lua| {
        let me = for_lua.clone();
        // A plain host function blocking on a request of its own isle: `Reentrant`.
        let block = lua.create_function(move |_, ()| {
            let isle = me.get().expect("set after spawn").clone();
            let mut future = std::pin::pin!(async move { isle.eval::<i64>("1").await });
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            for _ in 0..1000 {
                if let std::task::Poll::Ready(result) = future.as_mut().poll(&mut cx) {
                    return Ok(matches!(result, Err(IsleError::Reentrant)));
                }
            }
            Ok(false)
        })?;
        lua.globals().set("block", block)?;
        let me = for_lua.clone();
        // An async host function awaiting a request of its own isle: fine in a coroutine.
        let nested = lua.create_async_function(move |_, code: String| {
            let isle = me.get().expect("set after spawn").clone();
            async move {
                isle.eval::<i64>(code)
                    .await
                    .map_err(mlua_isle::mlua::Error::from)
            }
        })?;
        lua.globals().set("nested", nested)
    })
    .await
    .unwrap();
    slot.set(isle.clone()).ok().unwrap();
    assert!(isle.eval::<bool>("return block()").await.unwrap());
    assert_eq!(
        isle.coroutine_eval::<i64>("return nested('40 + 2')")
            .await
            .unwrap(),
        42
    );
}

/// Polls `cond` (yielding to the runtime) until it holds, under a generous bound.
async fn eventually_async(mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < HANG / 2, "condition never held");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

on_both_runtimes! {
    awaiting_coroutines => awaiting_coroutines_run_concurrently();
    plain_while_awaiting => plain_requests_run_while_a_coroutine_awaits();
    cancel_drops_future => cancel_drops_the_awaited_future();
    drop_task => dropping_the_task_cancels_and_drops_the_awaited_future();
    busy_released => cancelling_a_busy_coroutine_releases_its_values();
    deadline => a_deadline_ends_an_awaiting_coroutine();
    busy_interrupted => a_busy_coroutine_is_interrupted_uncatchably();
    errors_and_panics => coroutine_errors_and_panics_are_reported();
    shutdown_timeout => shutdown_timeout_stops_awaiting_coroutines();
    graceful_shutdown => graceful_shutdown_waits_for_coroutines();
    handles_dropped => dropping_every_handle_lets_running_coroutines_finish();
    reentrancy => awaiting_the_isle_from_its_own_thread();
}
