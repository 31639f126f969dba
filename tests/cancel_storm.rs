//! Thousands of cancels at random instants against coroutine-, pcall- and metamethod-heavy
//! requests, on the sync and the async isle: every request resolves, none later than the
//! grace period plus 100 ms after its cancel, and the isle never has to give up.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mlua_isle::{Isle, IsleError};
use rand::rngs::StdRng;
use rand::Rng;

/// Each script runs until it is stopped.
const SCRIPTS: &[&str] = &[
    "while true do end",
    "while true do pcall(function() while true do end end) end",
    "while true do xpcall(function() while true do end end, function(e) return e end) end",
    "while true do pcall(error, 'x') end",
    "local co = coroutine.wrap(function() while true do coroutine.yield() end end)
     while true do co() end",
    "local function nest(n)
       if n == 0 then while true do end end
       local co = coroutine.create(nest)
       coroutine.resume(co, n - 1)
     end
     nest(8)",
    "while true do pcall(coroutine.wrap(function() while true do end end)) end",
    "local t = setmetatable({}, {__index = function(t, k) while true do end end})
     while true do local _ = t.x end",
    "local t = setmetatable({}, {__index = function(t, k) return k end})
     local n = 0 while true do n = n + #t.abc end",
    "local t, mt = {}, {__lt = function(a, b) while true do end end}
     for i = 1, 50 do t[i] = setmetatable({}, mt) end
     table.sort(t)",
    "string.gsub(string.rep('a', 100), 'a', function() while true do end end)",
    "local t = setmetatable({}, {__tostring = function() while true do end end})
     while true do pcall(tostring, t) end",
    "local s = '' while true do s = s .. 'x' if #s > 1000 then s = '' end end",
    "local t = {} while true do t[#t + 1] = {} if #t > 1000 then t = {} end end",
];

const GRACE: Duration = Duration::from_millis(500);
/// How long after its cancel a request may take to resolve.
const BOUND: Duration = Duration::from_millis(600);

fn rng() -> StdRng {
    seeded_rng("CANCEL_STORM_SEED")
}

/// Spins for a random time up to about 300 µs, so that cancels land before a request starts,
/// while it starts, and anywhere while it runs.
fn random_instant(rng: &mut StdRng) {
    let until = Instant::now() + Duration::from_micros(rng.random_range(0..300));
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[test]
fn sync_cancels_at_random_instants_all_resolve_in_time() {
    within_hang_guard(|| {
        let mut rng = rng();
        let isle = Isle::builder()
            .grace_period(GRACE)
            .spawn(|_| Ok(()))
            .unwrap();
        for i in 0..6_000 {
            let script = SCRIPTS[rng.random_range(0..SCRIPTS.len())];
            let task = isle.spawn_eval::<()>(script).unwrap();
            random_instant(&mut rng);
            task.cancel();
            let cancelled = Instant::now();
            match task.wait_timeout(BOUND) {
                Ok(Err(IsleError::Cancelled)) => {}
                Ok(other) => panic!("cancel {i}: {other:?}; script:\n{script}"),
                Err(_) => panic!(
                    "cancel {i} not resolved {:?} after the cancel; script:\n{script}",
                    cancelled.elapsed()
                ),
            }
        }
        assert!(isle.is_alive(), "the isle gave up on a request");
        assert_eq!(isle.eval::<i64>("1").unwrap(), 1);
    });
}

#[cfg(feature = "tokio")]
#[test]
fn async_cancels_at_random_instants_all_resolve_in_time() {
    within_hang_guard(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut rng = rng();
            let (isle, _driver) = mlua_isle::AsyncIsle::builder()
                .grace_period(GRACE)
                .spawn_async(|lua| {
                    let pause = lua.create_async_function(|_, ()| async {
                        tokio::task::yield_now().await;
                        Ok(())
                    })?;
                    lua.globals().set("pause", pause)
                })
                .await
                .unwrap();
            for i in 0..4_000 {
                let script = SCRIPTS[rng.random_range(0..SCRIPTS.len())];
                let coroutine = i % 2 == 0;
                let task = if coroutine {
                    // Awaits once first, so that cancels also land between stretches.
                    isle.spawn_coroutine_eval::<()>(format!("pause() {script}"))
                        .await
                        .unwrap()
                } else {
                    isle.spawn_eval::<()>(script).await.unwrap()
                };
                random_instant(&mut rng);
                task.cancel();
                let cancelled = Instant::now();
                match tokio::time::timeout(BOUND, task).await {
                    Ok(Err(IsleError::Cancelled)) => {}
                    Ok(other) => panic!("cancel {i}: {other:?}; script:\n{script}"),
                    Err(_) => panic!(
                        "cancel {i} (coroutine: {coroutine}) not resolved {:?} after the \
                         cancel; script:\n{script}",
                        cancelled.elapsed()
                    ),
                }
            }
            assert!(isle.is_alive(), "the isle gave up on a request");
            assert_eq!(isle.eval::<i64>("1").await.unwrap(), 1);
        });
    });
}
