//! Thousands of cancels at random instants against coroutine-, pcall- and metamethod-heavy
//! requests, on the sync and the async isle: every request resolves, none later than the
//! grace period plus 100 ms after its cancel, and the isle never has to give up. Then stops at
//! random depths of the Lua stack, down to a full one.

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

/// Where in a deep recursion a script waits for its stop, `{depth}` frames down (a full Lua
/// stack for the last one).
const DEEP_SCRIPTS: &[&str] = &[
    "local function r(n) if n == 0 then started() while true do end end return 1 + r(n - 1) end
     r({depth})",
    "local function r(n)
       if n == 0 then started() while true do pcall(function() while true do end end) end end
       if n % 2500 == 0 then pcall(r, n - 1) end
       return 1 + r(n - 1)
     end
     r({depth})",
    "local function r(n) if n == 0 then started() while true do end end return 1 + r(n - 1) end
     xpcall(function() return r({depth}) end, function(e) while true do end end)",
    "local function full() return 1 + full() end
     xpcall(full, function(e) started() while true do end end)",
];

/// How deep the scripts above go at most: Lua 5.4 and 5.5 allow a million frames, the
/// others far fewer (LuaJIT about 20 000 of these).
const DEEPEST: u32 = if cfg!(any(feature = "lua54", feature = "lua55")) {
    200_000
} else {
    5_000
};

/// Stops at random depths and instants, in both interrupt modes, by cancel and by deadline:
/// each is obeyed (the isle does not give up), however deep the stack it has to unwind.
#[test]
fn stops_deep_in_the_lua_stack_are_obeyed_at_random_instants() {
    within_hang_guard(|| {
        let mut rng = seeded_rng("DEEP_STOP_SEED");
        for i in 0..16 {
            let script = DEEP_SCRIPTS[rng.random_range(0..DEEP_SCRIPTS.len())];
            let script = script.replace("{depth}", &rng.random_range(1..DEEPEST).to_string());
            let interrupt = match rng.random_bool(0.5) {
                true => mlua_isle::Interrupt::default(),
                false => mlua_isle::Interrupt::Hook { every: 1000 },
            };
            let (isle, started) = isle_with_started(Isle::builder().interrupt(interrupt));
            let by_deadline = rng.random_bool(0.5);
            let task = match by_deadline {
                true => isle
                    .request()
                    .timeout(Duration::from_millis(rng.random_range(1..100)))
                    .spawn_eval::<()>(script.as_str()),
                false => isle.spawn_eval::<()>(script.as_str()),
            }
            .unwrap();
            if !by_deadline {
                started
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| panic!("stop {i}: never started; script:\n{script}"));
                random_instant(&mut rng);
                task.cancel();
            }
            let result = task
                .wait_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("stop {i}: still running; script:\n{script}"));
            let expected = match by_deadline {
                true => matches!(result, Err(IsleError::Timeout)),
                false => matches!(result, Err(IsleError::Cancelled)),
            };
            assert!(
                expected && isle.is_alive(),
                "stop {i} ({interrupt:?}, deadline: {by_deadline}): {result:?}, isle alive: {}; \
                 script:\n{script}",
                isle.is_alive()
            );
            assert_eq!(isle.eval::<i64>("1").unwrap(), 1);
        }
    });
}
