//! The sandbox and isolation with coroutine requests: each gets an environment of its own,
//! which goes with it, and what it changed outside that environment does not reach the next
//! request.
#![cfg(feature = "tokio")]

use mlua_isle::{AsyncIsle, Isolation, PrintSink, Sandbox};

const BIG: &str = "local s = string.rep('x', 20 * 2^20) return #s";

#[tokio::test(flavor = "current_thread")]
async fn coroutine_requests_do_not_keep_their_environments() {
    let (isle, driver) = AsyncIsle::builder()
        .sandboxed()
        .spawn_async(|_| Ok(()))
        .await
        .unwrap();
    isle.eval::<i64>(BIG).await.unwrap();
    for i in 0..3 {
        isle.coroutine_eval::<()>(format!("hoard = string.rep('{i}', 20 * 2^20)"))
            .await
            .unwrap();
        assert!(isle
            .coroutine_eval::<bool>("return hoard == nil")
            .await
            .unwrap());
    }
    isle.eval::<i64>(BIG).await.unwrap();
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn coroutine_requests_leave_no_output_or_collector_settings() {
    let (isle, driver) = AsyncIsle::builder()
        .sandboxed()
        .sandbox(Sandbox::new().print(PrintSink::collect(4096)))
        .spawn_async(|_| Ok(()))
        .await
        .unwrap();
    isle.coroutine_eval::<()>("print('secret')").await.unwrap();
    let seen = isle
        .exec(|lua| Ok(mlua_isle::take_output(lua)))
        .await
        .unwrap();
    assert_eq!(seen, "");
    driver.shutdown().await.unwrap();

    let (isle, driver) = AsyncIsle::builder()
        .isolation(Isolation::FreshEnvironment)
        .spawn_async(|_| Ok(()))
        .await
        .unwrap();
    isle.coroutine_eval::<()>("collectgarbage('stop')")
        .await
        .unwrap();
    #[cfg(not(any(feature = "lua51", feature = "luajit", feature = "luau")))]
    assert!(isle
        .eval::<bool>("return collectgarbage('isrunning')")
        .await
        .unwrap());
    driver.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_fresh_vm_pool_refuses_coroutine_requests() {
    let (pool, driver) = mlua_isle::AsyncIslePool::builder()
        .size(1)
        .isolation(Isolation::FreshVm)
        .spawn_async(|_| Ok(()))
        .await
        .unwrap();
    assert!(matches!(
        pool.coroutine_eval::<()>("leak = 1").await,
        Err(mlua_isle::IsleError::Config(_))
    ));
    assert_eq!(pool.eval::<i64>("return 1").await.unwrap(), 1);
    driver.shutdown().await.unwrap();
}
