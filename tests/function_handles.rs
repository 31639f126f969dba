//! Function handles: a Lua function kept in an isle's VM, called later from any thread through
//! the normal request path, refused by other isles, and freed as soon as its last handle is
//! dropped.
//!
//! Whether the VM still holds a function is seen through a weak table: `weak.f` (and the
//! function's upvalue `weak.big`) are cleared by a full collection once nothing else refers to
//! them. That works on every Lua version, Luau and Lua 5.1 included, unlike finalizers.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use mlua_isle::{FunctionHandle, Isle, IsleError, IslePool, LuaErrorKind};

/// A function with a large upvalue, both recorded in the weak table `weak`. It also updates an
/// upvalue: Luau makes a closure whose upvalues never change once and keeps it in the chunk's
/// constants (the chunk is cached), where it would never be collected.
const TRACKED: &str = "local big = {} for i = 1, 1000 do big[i] = i end
                       local calls = 0
                       local f = function() calls = calls + 1 return #big end
                       weak.f, weak.big = f, big
                       return f";

/// Whether the function made by [`TRACKED`] is still alive after a full collection.
const TRACKED_ALIVE: &str = "collectgarbage('collect') collectgarbage('collect')
                             return weak.f ~= nil and weak.big ~= nil";

/// Whether the function made by [`TRACKED`] and its upvalue are gone after a full collection.
const TRACKED_GONE: &str = "collectgarbage('collect') collectgarbage('collect')
                            return weak.f == nil and weak.big == nil";

const PRELUDE: &str = "weak = setmetatable({}, {__mode = 'v'})
                       function add(a, b) return a + b end
                       function greet(name) return 'hello ' .. name end
                       calls = 0
                       function counted() calls = calls + 1 return calls end";

/// An isle with [`PRELUDE`], `started()` (reported on the receiver) and `released()`.
fn isle_with(
    builder: mlua_isle::IsleBuilder,
    release: &Arc<AtomicBool>,
) -> (Isle, mpsc::Receiver<()>) {
    let (isle, started) = spawn_releasable(builder, release);
    isle.eval::<()>(PRELUDE).unwrap();
    (isle, started)
}

fn isle() -> Isle {
    isle_with(Isle::builder(), &Arc::new(AtomicBool::new(false))).0
}

#[test]
fn a_global_function_is_called_through_its_handle() {
    let isle = isle();
    let add = isle.function("add").unwrap();
    let greet = isle.function(String::from("greet")).unwrap();
    assert_eq!(isle.call_function::<i64>(&add, (2, 3)).unwrap(), 5);
    assert_eq!(
        isle.call_function::<String>(&greet, "ann").unwrap(),
        "hello ann"
    );
    // The handle holds the function itself: redefining the global does not change it.
    isle.eval::<()>("function add(a, b) return a * b end")
        .unwrap();
    assert_eq!(isle.call_function::<i64>(&add, (2, 3)).unwrap(), 5);
    assert_eq!(isle.call::<i64>("add", (2, 3)).unwrap(), 6);
}

#[test]
fn a_missing_global_or_a_chunk_that_returns_no_function_is_refused() {
    let isle = isle();
    match isle.function("missing") {
        Err(IsleError::NotAFunction { name, type_name }) => {
            assert_eq!((name.as_str(), type_name), ("missing", "nil"));
        }
        other => panic!("{other:?}"),
    }
    let err = isle.eval_function("return 1").unwrap_err();
    assert_eq!(err.as_lua().unwrap().kind(), LuaErrorKind::Conversion);
    let err = isle.eval_function("return (").unwrap_err();
    assert_eq!(err.as_lua().unwrap().kind(), LuaErrorKind::Syntax);
}

#[test]
fn a_chunk_returned_closure_keeps_its_state_across_calls() {
    let isle = isle();
    let counter = isle
        .eval_function("local n = 0 return function(step) n = n + step return n end")
        .unwrap();
    let other = isle
        .eval_function("local n = 0 return function(step) n = n + step return n end")
        .unwrap();
    assert_eq!(isle.call_function::<i64>(&counter, 1).unwrap(), 1);
    assert_eq!(isle.call_function::<i64>(&counter, 10).unwrap(), 11);
    // Each evaluation made a closure of its own.
    assert_eq!(isle.call_function::<i64>(&other, 1).unwrap(), 1);
    assert_eq!(isle.call_function::<i64>(&counter.clone(), 0).unwrap(), 11);
}

#[test]
fn arguments_and_results_are_typed() {
    let isle = isle();
    let f = isle
        .eval_function(
            "function(word, n, flag) return word:rep(n), flag and n or -n, {n, n * 2} end",
        )
        .unwrap();
    let (text, signed, list): (String, i64, Vec<i64>) =
        isle.call_function(&f, ("ab", 3, false)).unwrap();
    assert_eq!((text.as_str(), signed, list), ("ababab", -3, vec![3, 6]));

    let nothing = isle.eval_function("function() end").unwrap();
    assert_eq!(
        isle.call_function::<Option<i64>>(&nothing, ()).unwrap(),
        None
    );
    // Extra results are dropped, missing ones are nil, as in Lua.
    let first: String = isle.call_function(&f, ("x", 1, true)).unwrap();
    assert_eq!(first, "x");

    let text = isle
        .eval_function("function() return 'not a number' end")
        .unwrap();
    let err = isle.call_function::<i64>(&text, ()).unwrap_err();
    assert_eq!(err.as_lua().unwrap().kind(), LuaErrorKind::Conversion);
}

#[test]
fn an_error_raised_by_the_function_is_the_call_s_error() {
    let isle = isle();
    let checked = isle
        .eval_function("function(x) if x < 0 then error('negative', 0) end return x end")
        .unwrap();
    let err = isle.call_function::<i64>(&checked, -1).unwrap_err();
    let lua = err.as_lua().unwrap();
    assert_eq!(
        (lua.kind(), lua.message()),
        (LuaErrorKind::Runtime, "negative")
    );
    // The handle and the isle carry on.
    assert_eq!(isle.call_function::<i64>(&checked, 4).unwrap(), 4);

    isle.exec(|lua| {
        let boom =
            lua.create_function(|_, ()| -> mlua_isle::mlua::Result<()> { panic!("boom") })?;
        lua.globals().set("boom", boom)
    })
    .unwrap();
    let panics = isle.eval_function("function() boom() end").unwrap();
    quiet_lua_thread_panics();
    match isle.call_function::<()>(&panics, ()) {
        Err(IsleError::Panic(msg)) => assert_eq!(msg, "boom"),
        other => panic!("{other:?}"),
    }
    assert_eq!(isle.call_function::<i64>(&checked, 5).unwrap(), 5);
}

#[test]
fn a_looping_function_is_cancelled_through_its_task() {
    within_hang_guard(|| {
        let release = Arc::new(AtomicBool::new(false));
        let (isle, started) = isle_with(Isle::builder(), &release);
        let spin = isle
            .eval_function("function() started() while true do pcall(function() while true do end end) end end")
            .unwrap();
        let task = isle.spawn_call_function::<()>(&spin, ()).unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());

        // Dropping the task cancels too.
        let task = isle.spawn_call_function::<()>(&spin, ()).unwrap();
        wait_started(&started);
        drop(task);
        let add = isle.function("add").unwrap();
        assert_eq!(isle.call_function::<i64>(&add, (1, 1)).unwrap(), 2);
    });
}

#[test]
fn a_call_gets_the_request_s_deadline_and_token() {
    within_hang_guard(|| {
        let isle = isle();
        let spin = isle
            .eval_function("function() while true do end end")
            .unwrap();
        let err = isle
            .request()
            .timeout(Duration::from_millis(20))
            .call_function::<()>(&spin, ())
            .unwrap_err();
        assert!(err.is_timeout());

        let token = mlua_isle::CancelToken::new();
        let task = isle
            .request()
            .token(&token)
            .spawn_call_function::<()>(&spin, ())
            .unwrap();
        token.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());

        // The isle's default timeout applies as to any request.
        let isle = Isle::builder()
            .timeout(Duration::from_millis(20))
            .spawn(|_| Ok(()))
            .unwrap();
        let spin = isle
            .eval_function("function() while true do end end")
            .unwrap();
        assert!(isle
            .call_function::<()>(&spin, ())
            .unwrap_err()
            .is_timeout());
    });
}

#[test]
fn a_handle_used_on_another_isle_is_refused_without_running() {
    let first = isle();
    let second = isle();
    let counted = first.function("counted").unwrap();
    assert!(matches!(
        second.call_function::<i64>(&counted, ()),
        Err(IsleError::ForeignFunction)
    ));
    assert!(matches!(
        second.spawn_call_function::<i64>(&counted, ()),
        Err(IsleError::ForeignFunction)
    ));
    assert!(matches!(
        second.request().call_function::<i64>(&counted, ()),
        Err(IsleError::ForeignFunction)
    ));
    assert_eq!(
        IsleError::ForeignFunction.to_string(),
        "function handle belongs to another isle"
    );
    // Nothing ran, on either isle.
    assert_eq!(first.eval::<i64>("calls").unwrap(), 0);
    assert_eq!(second.eval::<i64>("calls").unwrap(), 0);
    assert_eq!(first.call_function::<i64>(&counted, ()).unwrap(), 1);
}

#[test]
fn a_handle_belongs_to_one_pool_member() {
    let pool = IslePool::builder()
        .size(2)
        .spawn(|lua| lua.load("function id() return tostring(id) end").exec())
        .unwrap();
    let first = pool.checkout().unwrap();
    let second = pool.checkout().unwrap();
    let id = first.function("id").unwrap();
    assert!(matches!(
        second.call_function::<String>(&id, ()),
        Err(IsleError::ForeignFunction)
    ));
    let own = first.call_function::<String>(&id, ()).unwrap();
    // Back in service, the member still keeps the function for a later checkout.
    drop((first, second));
    let guards = [pool.checkout().unwrap(), pool.checkout().unwrap()];
    let mut results: Vec<_> = guards
        .iter()
        .map(|guard| guard.call_function::<String>(&id, ()))
        .collect();
    results.sort_by_key(Result::is_err);
    match &results[..] {
        [Ok(again), Err(IsleError::ForeignFunction)] => assert_eq!(*again, own),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dropped_handle_is_freed_by_the_next_request() {
    let isle = isle();
    let f = isle.eval_function(TRACKED).unwrap();
    let clone = f.clone();
    // Kept while any clone lives.
    assert!(isle.eval::<bool>(TRACKED_ALIVE).unwrap());
    drop(f);
    assert!(isle.eval::<bool>(TRACKED_ALIVE).unwrap());
    assert_eq!(isle.call_function::<i64>(&clone, ()).unwrap(), 1000);
    drop(clone);
    assert!(isle.eval::<bool>(TRACKED_GONE).unwrap());
}

#[test]
fn handles_given_back_many_times_do_not_accumulate() {
    let isle = isle();
    let before: f64 = isle
        .eval("collectgarbage('collect') return collectgarbage('count')")
        .unwrap();
    for _ in 0..200 {
        let f = isle.eval_function(TRACKED).unwrap();
        assert_eq!(isle.call_function::<i64>(&f, ()).unwrap(), 1000);
    }
    let after: f64 = isle
        .eval("collectgarbage('collect') collectgarbage('collect') return collectgarbage('count')")
        .unwrap();
    // 200 kept functions with their 1000-element upvalues would take megabytes.
    assert!(after - before < 512.0, "{before} KiB -> {after} KiB");
}

#[test]
fn a_handle_dropped_on_another_thread_while_the_isle_is_busy_is_freed_after_that_request() {
    within_hang_guard(|| {
        let release = Arc::new(AtomicBool::new(false));
        let (isle, started) = isle_with(Isle::builder(), &release);
        let f = isle.eval_function(TRACKED).unwrap();
        // Still alive inside the busy request, after the drop.
        let busy = isle
            .spawn_eval::<bool>(format!(
                "started() while not released() do end {TRACKED_ALIVE}"
            ))
            .unwrap();
        wait_started(&started);
        thread::spawn(move || drop(f)).join().unwrap();
        release.store(true, Ordering::SeqCst);
        assert!(busy.wait().unwrap());
        assert!(isle.eval::<bool>(TRACKED_GONE).unwrap());
    });
}

#[test]
fn a_handle_dropped_while_the_queue_is_full_is_freed_after_the_next_request() {
    within_hang_guard(|| {
        let release = Arc::new(AtomicBool::new(false));
        let (isle, started) = isle_with(Isle::builder().queue_capacity(1), &release);
        let f = isle.eval_function(TRACKED).unwrap();
        let busy = isle
            .spawn_eval::<()>("started() while not released() do end")
            .unwrap();
        wait_started(&started);
        // Fills the queue: the release message cannot be queued.
        let next = isle.spawn_eval::<bool>(TRACKED_GONE).unwrap();
        assert!(matches!(
            isle.request().try_enqueue().spawn_eval::<()>("return"),
            Err(IsleError::Full)
        ));
        drop(f);
        release.store(true, Ordering::SeqCst);
        busy.wait().unwrap();
        assert!(next.wait().unwrap());
    });
}

#[test]
fn a_handle_outlives_its_isle() {
    within_hang_guard(|| {
        // The VM tells when it is closed: its app data is dropped with it.
        let (closed_tx, closed) = mpsc::channel::<()>();
        let (isle, ()) = Isle::spawn_with(move |lua| {
            lua.set_app_data(closed_tx);
            lua.load("function f() return 1 end").exec()
        })
        .unwrap();
        let f = isle.function("f").unwrap();
        let clone = f.clone();
        // Dropping the isle closes the VM even though handles live: they do not keep it open.
        drop(isle);
        assert_eq!(
            closed.recv_timeout(HANG),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        // Used on another isle: refused. Dropped: no hang, no panic.
        let other = self::isle();
        assert!(matches!(
            other.call_function::<i64>(&f, ()),
            Err(IsleError::ForeignFunction)
        ));
        drop(f);
        thread::spawn(move || drop(clone)).join().unwrap();

        let isle = self::isle();
        let f = isle.function("add").unwrap();
        isle.shutdown().unwrap();
        drop(f);
    });
}

#[test]
fn clones_are_called_and_dropped_from_many_threads_at_once() {
    within_hang_guard(|| {
        let isle = isle();
        let counter = isle
            .eval_function("local n = 0 return function() n = n + 1 return n end")
            .unwrap();
        let tracked = isle.eval_function(TRACKED).unwrap();
        let mut seen: Vec<i64> = thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let (isle, counter, tracked) = (&isle, counter.clone(), tracked.clone());
                    s.spawn(move || {
                        let mut seen = Vec::new();
                        for _ in 0..50 {
                            seen.push(isle.call_function::<i64>(&counter, ()).unwrap());
                            // Clones made and dropped here while others call.
                            let tracked = tracked.clone();
                            assert_eq!(isle.call_function::<i64>(&tracked, ()).unwrap(), 1000);
                        }
                        seen
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        // Every call ran exactly once, one at a time.
        seen.sort_unstable();
        assert_eq!(seen, (1..=400).collect::<Vec<_>>());
        assert_eq!(isle.call_function::<i64>(&counter, ()).unwrap(), 401);
        // The clones are gone; the last handle still keeps its function.
        assert!(isle.eval::<bool>(TRACKED_ALIVE).unwrap());
        drop(tracked);
        assert!(isle.eval::<bool>(TRACKED_GONE).unwrap());
    });
}

#[test]
fn handles_are_send_sync_and_debug() {
    fn send_sync<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    send_sync::<FunctionHandle>();
    let isle = isle();
    let f = isle.function("add").unwrap();
    assert!(format!("{f:?}").starts_with("FunctionHandle"));
}

#[cfg(feature = "tokio")]
mod async_isle {
    use super::*;

    use std::future::Future;

    use mlua_isle::AsyncIsle;
    use tokio::sync::mpsc as tokio_mpsc;

    /// Fails the scenario if it does not finish within [`HANG`].
    async fn guarded(scenario: impl Future<Output = ()>) {
        tokio::time::timeout(HANG, scenario)
            .await
            .expect("hang guard: still running");
    }

    /// `scenario::current_thread` and `scenario::multi_thread` tests for each `async fn`.
    macro_rules! both_flavours {
        ($($scenario:ident),* $(,)?) => {$(
            mod $scenario {
                #[tokio::test]
                async fn current_thread() {
                    super::guarded(super::$scenario()).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn multi_thread() {
                    super::guarded(super::$scenario()).await
                }
            }
        )*};
    }

    both_flavours!(
        globals_and_closures_are_called_through_handles,
        errors_cancellation_and_deadlines_apply,
        a_handle_of_another_isle_is_refused,
        a_dropped_handle_is_freed,
        a_handle_dropped_elsewhere_while_the_isle_is_busy_is_freed_after_that_request,
        a_handle_outlives_its_isle,
        clones_are_called_from_many_tasks_at_once,
        a_handle_belongs_to_one_async_pool_member,
        a_handle_is_called_as_a_coroutine_and_still_freed,
    );

    /// An async isle with [`PRELUDE`], `started()` (reported on the receiver) and
    /// `released()`, true once `release` is set.
    async fn async_isle(
        release: &Arc<AtomicBool>,
    ) -> (
        AsyncIsle,
        mlua_isle::AsyncIsleDriver,
        tokio_mpsc::UnboundedReceiver<()>,
    ) {
        let (tx, started) = tokio_mpsc::unbounded_channel();
        let release = release.clone();
        let (isle, driver) = AsyncIsle::spawn(move |lua| {
            define_released(lua, release)?;
            let started = lua.create_function(move |_, ()| Ok(tx.send(()).is_ok()))?;
            lua.globals().set("started", started)?;
            lua.load(PRELUDE).exec()
        })
        .await
        .unwrap();
        (isle, driver, started)
    }

    async fn globals_and_closures_are_called_through_handles() {
        let (isle, driver, _) = async_isle(&Arc::default()).await;
        let add = isle.function("add").await.unwrap();
        assert_eq!(isle.call_function::<i64>(&add, (2, 3)).await.unwrap(), 5);
        let counter = isle
            .eval_function("local n = 0 return function(step) n = n + step return n end")
            .await
            .unwrap();
        assert_eq!(isle.call_function::<i64>(&counter, 2).await.unwrap(), 2);
        let task = isle.spawn_call_function::<i64>(&counter, 3).await.unwrap();
        assert_eq!(task.await.unwrap(), 5);
        let typed = isle
            .request()
            .eval_function("function(s, n) return s:rep(n), n * 2 end")
            .await
            .unwrap();
        let (text, twice): (String, i64) = isle
            .request()
            .call_function(&typed, ("xy", 2))
            .await
            .unwrap();
        assert_eq!((text.as_str(), twice), ("xyxy", 4));
        assert!(matches!(
            isle.request().function("missing").await,
            Err(IsleError::NotAFunction { .. })
        ));
        driver.shutdown().await.unwrap();
    }

    async fn errors_cancellation_and_deadlines_apply() {
        let (isle, driver, mut started) = async_isle(&Arc::default()).await;
        let failing = isle
            .eval_function("function() error('nope', 0) end")
            .await
            .unwrap();
        let err = isle.call_function::<()>(&failing, ()).await.unwrap_err();
        assert_eq!(err.as_lua().unwrap().message(), "nope");

        let spin = isle
            .eval_function("function() started() while true do end end")
            .await
            .unwrap();
        // Through the task.
        let task = isle.spawn_call_function::<()>(&spin, ()).await.unwrap();
        started.recv().await.unwrap();
        task.cancel();
        assert!(task.await.unwrap_err().is_cancelled());
        // By dropping the call's future once the function runs.
        tokio::select! {
            result = isle.call_function::<()>(&spin, ()) => panic!("{result:?}"),
            _ = started.recv() => {}
        }
        // Through the request's deadline.
        let err = isle
            .request()
            .timeout(Duration::from_millis(20))
            .call_function::<()>(&spin, ())
            .await
            .unwrap_err();
        assert!(err.is_timeout());
        started.recv().await.unwrap();
        let add = isle.function("add").await.unwrap();
        assert_eq!(isle.call_function::<i64>(&add, (1, 2)).await.unwrap(), 3);
        driver.shutdown().await.unwrap();
    }

    async fn a_handle_of_another_isle_is_refused() {
        let (first, first_driver, _) = async_isle(&Arc::default()).await;
        let (second, second_driver, _) = async_isle(&Arc::default()).await;
        let counted = first.function("counted").await.unwrap();
        assert!(matches!(
            second.call_function::<i64>(&counted, ()).await,
            Err(IsleError::ForeignFunction)
        ));
        assert!(matches!(
            second
                .request()
                .spawn_call_function::<i64>(&counted, ())
                .await,
            Err(IsleError::ForeignFunction)
        ));
        // A blocking isle is another isle too.
        let blocking = tokio::task::spawn_blocking(super::isle).await.unwrap();
        let handle = counted.clone();
        let refused =
            tokio::task::spawn_blocking(move || blocking.call_function::<i64>(&handle, ()))
                .await
                .unwrap();
        assert!(matches!(refused, Err(IsleError::ForeignFunction)));
        assert_eq!(second.eval::<i64>("calls").await.unwrap(), 0);
        assert_eq!(first.call_function::<i64>(&counted, ()).await.unwrap(), 1);
        first_driver.shutdown().await.unwrap();
        second_driver.shutdown().await.unwrap();
    }

    async fn a_dropped_handle_is_freed() {
        let (isle, driver, _) = async_isle(&Arc::default()).await;
        let f = isle.eval_function(TRACKED).await.unwrap();
        assert!(isle.eval::<bool>(TRACKED_ALIVE).await.unwrap());
        assert_eq!(isle.call_function::<i64>(&f, ()).await.unwrap(), 1000);
        drop(f);
        assert!(isle.eval::<bool>(TRACKED_GONE).await.unwrap());
        driver.shutdown().await.unwrap();
    }

    async fn a_handle_dropped_elsewhere_while_the_isle_is_busy_is_freed_after_that_request() {
        let release = Arc::new(AtomicBool::new(false));
        let (isle, driver, mut started) = async_isle(&release).await;
        let f = isle.eval_function(TRACKED).await.unwrap();
        let busy = isle
            .spawn_eval::<bool>(format!(
                "started() while not released() do end {TRACKED_ALIVE}"
            ))
            .await
            .unwrap();
        started.recv().await.unwrap();
        tokio::task::spawn_blocking(move || drop(f)).await.unwrap();
        release.store(true, Ordering::SeqCst);
        assert!(busy.await.unwrap());
        assert!(isle.eval::<bool>(TRACKED_GONE).await.unwrap());
        driver.shutdown().await.unwrap();
    }

    async fn a_handle_outlives_its_isle() {
        let (isle, driver, _) = async_isle(&Arc::default()).await;
        let f = isle.function("add").await.unwrap();
        driver.shutdown().await.unwrap();
        // Same isle, shut down: refused as any request is.
        assert!(isle
            .call_function::<i64>(&f, (1, 2))
            .await
            .unwrap_err()
            .is_shutdown());
        assert!(matches!(
            isle.spawn_call_function::<i64>(&f, (1, 2)).await,
            Err(IsleError::Shutdown)
        ));
        drop(f);

        // Every async handle dropped: the isle ends although a function handle lives. The
        // VM tells when it is closed: its app data is dropped with it.
        let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
        let (isle, driver, ()) = AsyncIsle::spawn_with(move |lua| {
            lua.set_app_data(closed_tx);
            lua.load("function f() return 1 end").exec()
        })
        .await
        .unwrap();
        let f = isle.function("f").await.unwrap();
        drop(isle);
        assert!(closed.await.is_err());
        tokio::task::spawn_blocking(move || drop(f)).await.unwrap();
        driver.shutdown().await.unwrap();
    }

    async fn clones_are_called_from_many_tasks_at_once() {
        let (isle, driver, _) = async_isle(&Arc::default()).await;
        let counter = isle
            .eval_function("local n = 0 return function() n = n + 1 return n end")
            .await
            .unwrap();
        let tracked = isle.eval_function(TRACKED).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (isle, counter, tracked) = (isle.clone(), counter.clone(), tracked.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    for _ in 0..25 {
                        seen.push(isle.call_function::<i64>(&counter, ()).await.unwrap());
                        let tracked = tracked.clone();
                        assert_eq!(isle.call_function::<i64>(&tracked, ()).await.unwrap(), 1000);
                    }
                    seen
                })
            })
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            seen.extend(task.await.unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=200).collect::<Vec<_>>());
        assert!(isle.eval::<bool>(TRACKED_ALIVE).await.unwrap());
        drop(tracked);
        assert!(isle.eval::<bool>(TRACKED_GONE).await.unwrap());
        driver.shutdown().await.unwrap();
    }

    async fn a_handle_belongs_to_one_async_pool_member() {
        let (pool, driver) = mlua_isle::AsyncIslePool::builder()
            .size(2)
            .spawn_async(|lua| lua.load("function id() return tostring(id) end").exec())
            .await
            .unwrap();
        let first = pool.checkout().await.unwrap();
        let second = pool.checkout().await.unwrap();
        let id = first.function("id").await.unwrap();
        assert!(matches!(
            second.call_function::<String>(&id, ()).await,
            Err(IsleError::ForeignFunction)
        ));
        assert!(first.call_function::<String>(&id, ()).await.is_ok());
        drop((first, second, id));
        driver.shutdown().await.unwrap();
    }

    async fn a_handle_is_called_as_a_coroutine_and_still_freed() {
        let (isle, driver) = AsyncIsle::spawn(|lua| {
            let sleep = lua.create_async_function(|_, ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(ms)
            })?;
            lua.globals().set("sleep", sleep)?;
            lua.load(PRELUDE).exec()
        })
        .await
        .unwrap();
        let nap = isle
            .eval_function(
                "local naps = 0 return function(ms) naps = naps + 1 return sleep(ms), naps end",
            )
            .await
            .unwrap();
        // The isle serves other requests while the coroutine sleeps.
        let (slept, other) = tokio::join!(
            isle.coroutine_call_function::<(u64, i64)>(&nap, 5),
            isle.eval::<i64>("1 + 1"),
        );
        assert_eq!((slept.unwrap(), other.unwrap()), ((5, 1), 2));
        let task = isle
            .request()
            .spawn_coroutine_call_function::<(u64, i64)>(&nap, 1)
            .await
            .unwrap();
        assert_eq!(task.await.unwrap(), (1, 2));

        // Cancelled while it awaits.
        let forever = isle
            .eval_function("function() while true do sleep(1) end end")
            .await
            .unwrap();
        let err = isle
            .request()
            .timeout(Duration::from_millis(20))
            .coroutine_call_function::<()>(&forever, ())
            .await
            .unwrap_err();
        assert!(err.is_timeout());

        // Another isle's handle is refused.
        let (other, other_driver) = AsyncIsle::spawn(|_| Ok(())).await.unwrap();
        assert!(matches!(
            other.coroutine_call_function::<(u64, i64)>(&nap, 1).await,
            Err(IsleError::ForeignFunction)
        ));

        // Called as a coroutine, the function is still freed with its handle.
        let tracked = isle.eval_function(TRACKED).await.unwrap();
        assert_eq!(
            isle.coroutine_call_function::<i64>(&tracked, ())
                .await
                .unwrap(),
            1000
        );
        drop(tracked);
        assert!(isle.eval::<bool>(TRACKED_GONE).await.unwrap());
        driver.shutdown().await.unwrap();
        other_driver.shutdown().await.unwrap();
    }
}

/// Handles dropped from many threads while a small queue fills with requests that never run
/// (dropped or expired): once every drop has returned, the next request finds every function
/// freed — no release waits for some later request.
#[test]
fn no_release_is_lost_while_the_queue_is_full() {
    use std::sync::{Arc, Barrier};

    common::within_hang_guard(|| {
        let isle = Arc::new(
            Isle::builder()
                .queue_capacity(2)
                .spawn(|lua| {
                    lua.load("weak = setmetatable({}, {__mode = 'v'}) n = 0")
                        .exec()
                })
                .unwrap(),
        );
        for round in 0..200usize {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    isle.eval_function(
                        // (It changes an upvalue: Luau may otherwise share one closure
                        // object with the cached chunk.)
                        "n = n + 1 local id, big, calls = n, {}, 0 for i = 1, 100 do big[i] = i end
                         local f = function() calls = calls + 1 return id + #big end
                         weak[id] = f return f",
                    )
                    .unwrap()
                })
                .collect();
            let barrier = Arc::new(Barrier::new(6));
            let mut threads = Vec::new();
            for chunk in handles.chunks(2).map(|c| c.to_vec()) {
                let barrier = barrier.clone();
                threads.push(std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..(round % 7) * 50 {
                        std::hint::spin_loop();
                    }
                    drop(chunk);
                }));
            }
            drop(handles);
            for noise in 0..2 {
                let (isle, barrier) = (isle.clone(), barrier.clone());
                threads.push(std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..20 {
                        let request = isle.request().try_enqueue();
                        let request = match noise {
                            0 => request,
                            _ => request.timeout(std::time::Duration::from_micros(1)),
                        };
                        if let Ok(task) = request.spawn_eval::<()>("for i = 1, 2000 do end") {
                            drop(task);
                        }
                    }
                }));
            }
            for t in threads {
                t.join().unwrap();
            }
            let alive: i64 = isle
                .eval("collectgarbage() collectgarbage() local c = 0 for _ in pairs(weak) do c = c + 1 end return c")
                .unwrap();
            assert_eq!(alive, 0, "round {round}: functions outlived their handles");
        }
    });
}
