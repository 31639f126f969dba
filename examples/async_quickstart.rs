//! The async API: share an isle between tokio tasks, cancel by dropping a future, and let Lua
//! await async Rust functions in coroutine requests.
//!
//! Run with: `cargo run --example async_quickstart --features tokio`

use std::time::{Duration, Instant};

use mlua_isle::{AsyncIsle, IsleError};

#[tokio::main]
async fn main() -> Result<(), IsleError> {
    let (isle, driver) = AsyncIsle::spawn(|lua| {
        // An async Rust function Lua can call from coroutine requests.
        let sleep = lua.create_async_function(|_, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })?;
        lua.globals().set("sleep", sleep)?;
        lua.load("function square(x) return x * x end").exec()
    })
    .await?;

    // Plain requests from several tasks; `AsyncIsle` is a cheap `Clone`.
    let mut handles = Vec::new();
    for i in 1..=4 {
        let isle = isle.clone();
        handles.push(tokio::spawn(
            async move { isle.call::<i64>("square", i).await },
        ));
    }
    for handle in handles {
        println!("square           -> {}", handle.await.expect("task")?);
    }

    // Coroutine requests: while one awaits `sleep`, the isle serves the others.
    let start = Instant::now();
    let mut sleepers = Vec::new();
    for _ in 0..50 {
        sleepers.push(
            isle.spawn_coroutine_eval::<u64>("return sleep(100)")
                .await?,
        );
    }
    for sleeper in sleepers {
        sleeper.await?;
    }
    println!("50 × sleep(100)  -> {:?} in all", start.elapsed());

    // Dropping the future cancels the request, even a `pcall`-wrapped infinite loop.
    let spin = isle.eval::<()>("while true do pcall(function() while true do end end) end");
    let outcome = tokio::time::timeout(Duration::from_millis(50), spin).await;
    println!("timed-out future -> dropped ({})", outcome.is_err());
    println!(
        "isle still fine  -> {}",
        isle.eval::<String>("'yes'").await?
    );

    // A per-request deadline.
    let err = isle
        .request()
        .timeout(Duration::from_millis(20))
        .coroutine_eval::<()>("sleep(1000)")
        .await
        .unwrap_err();
    println!("deadline         -> {err}");

    driver.shutdown().await?;
    println!("shutdown         -> ok");
    Ok(())
}
