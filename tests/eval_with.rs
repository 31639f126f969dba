//! `eval_with`: a chunk evaluated with arguments (its `...`), in the request's environment.

mod common;

use std::time::Duration;

use common::*;
use mlua_isle::{Isle, IslePool, Isolation};

#[test]
fn the_arguments_are_the_chunks_varargs_in_expressions_and_blocks() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        assert_eq!(isle.eval_with::<i64>("(...) * 2", 21).unwrap(), 42);
        assert_eq!(
            isle.eval_with::<(i64, String)>("local a, b = ... return b, a", ("x", 7))
                .unwrap(),
            (7, "x".to_string())
        );
        assert_eq!(isle.eval_with::<i64>("select('#', ...)", ()).unwrap(), 0);
        // The compiled chunk is cached; each call gets its own arguments.
        for n in 0..5 {
            assert_eq!(isle.eval_with::<i64>("(...) + 1", n).unwrap(), n + 1);
        }
    });
}

#[test]
fn with_fresh_environments_the_chunk_runs_in_its_own_and_leaves_nothing() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .sandboxed()
            .spawn(|lua| lua.globals().set("base", 100))
            .unwrap();
        let got: i64 = isle
            .eval_with("leaked = ... return base + leaked", 5)
            .unwrap();
        assert_eq!(got, 105);
        assert!(isle.eval::<bool>("leaked == nil").unwrap());
        assert!(isle
            .eval_with::<bool>("return leaked == nil and ... == 1", 1)
            .unwrap());
        assert_eq!(
            isle.exec(|lua| lua.globals().get::<Option<i64>>("leaked"))
                .unwrap(),
            None
        );
    });
}

#[test]
fn deadlines_and_errors_apply_as_to_eval() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        let err = isle
            .request()
            .timeout(Duration::from_millis(30))
            .eval_with::<()>("local n = ... while n do end", true)
            .unwrap_err();
        assert!(err.is_timeout());
        let err = isle.eval_with::<()>("error(..., 0)", "boom").unwrap_err();
        assert_eq!(err.as_lua().unwrap().message(), "boom");
        assert!(isle.eval_with::<()>("return +", 1).is_err());
    });
}

#[test]
fn pools_evaluate_with_arguments_on_any_member() {
    within_hang_guard(|| {
        let pool = IslePool::builder()
            .size(2)
            .isolation(Isolation::FreshEnvironment)
            .spawn(|_| Ok(()))
            .unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|n| {
                pool.request()
                    .spawn_eval_with::<i64>("x = ... return x * x", n)
                    .unwrap()
            })
            .collect();
        for (n, task) in (0..).zip(tasks) {
            assert_eq!(task.wait().unwrap(), n * n);
        }
        assert!(pool.eval::<bool>("x == nil").unwrap());
        pool.shutdown().unwrap();
    });
}

#[cfg(feature = "tokio")]
async fn async_isles_and_pools_evaluate_with_arguments() {
    let (isle, driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await.unwrap();
    assert_eq!(isle.eval_with::<i64>("(...) + 1", 1).await.unwrap(), 2);
    let task = isle
        .request()
        .spawn_eval_with::<String>("(...):rep(2)", "ab")
        .await
        .unwrap();
    assert_eq!(task.await.unwrap(), "abab");
    drop(isle);
    driver.shutdown().await.unwrap();

    let (pool, driver) = mlua_isle::AsyncIslePool::builder()
        .size(2)
        .spawn_async(|_| Ok(()))
        .await
        .unwrap();
    assert_eq!(pool.eval_with::<i64>("(...) * 3", 3).await.unwrap(), 9);
    drop(pool);
    driver.shutdown().await.unwrap();
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn async_eval_with_on_a_current_thread_runtime() {
    async_isles_and_pools_evaluate_with_arguments().await;
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_eval_with_on_a_multi_thread_runtime() {
    async_isles_and_pools_evaluate_with_arguments().await;
}
