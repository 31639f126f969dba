//! Pools, behaviour by behaviour: dispatch, head-of-line blocking, checkout, recycling,
//! self-healing, broadcast, statistics and reentrancy.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    define_released, eventually, quiet_deliberate_panics, thread_names, DropCounter, HANG,
};
use mlua_isle::mlua::{self, Lua};
use mlua_isle::{
    CancelToken, Isle, IsleBuilder, IsleError, IslePool, LuaErrorKind, PoolStats, PooledIsle,
    Recycle, Task,
};

fn pool(size: usize) -> IslePool {
    IslePool::builder().size(size).spawn(|_| Ok(())).unwrap()
}

/// Occupies one member with a host closure that reports it started, then blocks until the
/// returned sender sends or is dropped. Returns once the closure runs.
fn hold(pool: &IslePool) -> (Task<()>, Sender<()>) {
    let (started_tx, started) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    let task = pool
        .spawn_exec(move |_| {
            started_tx.send(()).unwrap();
            let _ = release.recv();
            Ok(())
        })
        .unwrap();
    started
        .recv_timeout(HANG)
        .expect("the holding request should start");
    (task, release_tx)
}

/// Queues a request that reports it started and then loops in Lua until interrupted; returns
/// once it runs.
fn spawn_running_loop(pool: &IslePool, token: Option<&CancelToken>) -> Task<()> {
    let (started_tx, started) = mpsc::channel();
    let mut request = pool.request().no_timeout();
    if let Some(token) = token {
        request = request.token(token);
    }
    let task = request
        .spawn_exec(move |lua| {
            started_tx.send(()).unwrap();
            lua.load("while true do end").exec()
        })
        .unwrap();
    started
        .recv_timeout(HANG)
        .expect("the looping request should start");
    task
}

/// Checks out every member at once (each checkout waits in turn, so this also waits for
/// replacements being made), proving the pool has its full capacity.
fn checkout_all(pool: &IslePool) -> Vec<PooledIsle> {
    (0..pool.size())
        .map(|_| {
            pool.checkout_timeout(HANG)
                .expect("a member for every position")
        })
        .collect()
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    thread_names()
        .iter()
        .filter(|name| name.starts_with(prefix))
        .count()
}

// ---------------------------------------------------------------------------------------
// Types

#[test]
fn the_pool_is_send_sync_and_a_guard_is_send_and_static() {
    fn send_sync<T: Send + Sync>() {}
    fn send_static<T: Send + 'static>() {}
    send_sync::<IslePool>();
    send_static::<PooledIsle>();
    send_sync::<PoolStats>();
    send_static::<Task<i64>>();
}

// ---------------------------------------------------------------------------------------
// 1. Dispatch

#[test]
fn eval_call_and_exec_run_on_the_pool() {
    let pool = IslePool::builder()
        .size(2)
        .spawn(|lua| lua.load("function add(a, b) return a + b end").exec())
        .unwrap();
    assert_eq!(pool.eval::<i64>("6 * 7").unwrap(), 42);
    assert_eq!(pool.call::<i64>("add", (40, 2)).unwrap(), 42);
    assert_eq!(
        pool.exec(|lua| lua.load("'ex' .. 'ec'").eval::<String>())
            .unwrap(),
        "exec"
    );
    let eval = pool.spawn_eval::<i64>("1 + 1").unwrap();
    let call = pool.spawn_call::<i64>("add", (1, 2)).unwrap();
    let exec = pool
        .spawn_exec(|lua| {
            lua.globals()
                .get::<mlua::Function>("add")?
                .call::<i64>((3, 4))
        })
        .unwrap();
    assert_eq!(
        (
            eval.wait_timeout(HANG).expect("hang guard").unwrap(),
            call.wait_timeout(HANG).expect("hang guard").unwrap(),
            exec.wait_timeout(HANG).expect("hang guard").unwrap()
        ),
        (2, 3, 7)
    );
}

#[test]
fn a_per_request_timeout_stops_a_running_loop() {
    let pool = pool(2);
    let err = pool
        .request()
        .timeout(Duration::from_millis(20))
        .eval::<()>("while true do end")
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(pool.stats().timed_out, 1);
    // The pool still serves.
    assert_eq!(pool.eval::<i64>("3").unwrap(), 3);
}

#[test]
fn a_request_cancelled_while_queued_never_runs() {
    let pool = pool(1);
    let (held, release) = hold(&pool);
    let ran = Arc::new(AtomicBool::new(false));
    let closures = Arc::new(AtomicUsize::new(0));
    let token = CancelToken::new();
    let task = {
        let ran = ran.clone();
        let alive = DropCounter::new(&closures);
        pool.request()
            .token(&token)
            .spawn_exec(move |_| {
                let _alive = alive;
                ran.store(true, Ordering::SeqCst);
                Ok(())
            })
            .unwrap()
    };
    token.cancel();
    // Resolved at once, while the only member is still held; the closure is already dropped.
    let result = task.wait_timeout(HANG).expect("resolved without a member");
    assert!(result.unwrap_err().is_cancelled());
    assert!(!held.is_finished());
    assert_eq!(closures.load(Ordering::SeqCst), 0);
    release.send(()).unwrap();
    held.wait_timeout(HANG).expect("hang guard").unwrap();
    // Requests run in turn on one member: once this one ran, the cancelled one had its chance.
    pool.eval::<()>("return").unwrap();
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(pool.stats().cancelled, 0, "never ran, so not counted");
}

#[test]
fn a_request_cancelled_while_running_is_cancelled() {
    let pool = pool(2);
    let token = CancelToken::new();
    let task = spawn_running_loop(&pool, Some(&token));
    token.cancel();
    let err = task.wait_timeout(HANG).expect("hang guard").unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(pool.stats().cancelled, 1);
}

#[test]
fn try_enqueue_on_a_full_pool_queue_fails_with_full() {
    let pool = IslePool::builder()
        .size(2)
        .queue_capacity(2)
        .spawn(|_| Ok(()))
        .unwrap();
    let held = [hold(&pool), hold(&pool)];
    let queued: Vec<_> = (0..2)
        .map(|i| {
            pool.spawn_eval::<i64>(format!("return {i}").as_str())
                .unwrap()
        })
        .collect();
    assert_eq!(pool.stats().queued, 2);
    let err = pool
        .request()
        .try_enqueue()
        .spawn_eval::<i64>("return 9")
        .unwrap_err();
    assert!(matches!(err, IsleError::Full), "{err:?}");
    let err = pool
        .request()
        .try_enqueue()
        .eval::<i64>("return 9")
        .unwrap_err();
    assert!(matches!(err, IsleError::Full), "{err:?}");
    for (task, release) in held {
        release.send(()).unwrap();
        task.wait_timeout(HANG).expect("hang guard").unwrap();
    }
    let results: Vec<i64> = queued
        .into_iter()
        .map(|t| t.wait_timeout(HANG).expect("hang guard").unwrap())
        .collect();
    assert_eq!(results, [0, 1]);
    // Room again.
    assert_eq!(
        pool.request()
            .try_enqueue()
            .eval::<i64>("return 9")
            .unwrap(),
        9
    );
}

#[test]
fn errors_are_the_same_as_an_isles() {
    quiet_deliberate_panics();
    let init = |lua: &Lua| lua.globals().set("not_a_function", 1);
    let isle = Isle::spawn(init).unwrap();
    let pool = IslePool::builder()
        .size(2)
        .recycle(Recycle::new().after_interrupted(false))
        .spawn(init)
        .unwrap();

    let isle_syntax = isle.eval::<i64>("return 1 +").unwrap_err();
    let pool_syntax = pool.eval::<i64>("return 1 +").unwrap_err();
    assert_eq!(pool_syntax.as_lua().unwrap().kind(), LuaErrorKind::Syntax);
    assert_eq!(pool_syntax.to_string(), isle_syntax.to_string());

    let isle_runtime = isle.eval::<i64>("error('boom')").unwrap_err();
    let pool_runtime = pool.eval::<i64>("error('boom')").unwrap_err();
    assert_eq!(pool_runtime.as_lua().unwrap().kind(), LuaErrorKind::Runtime);
    assert_eq!(
        pool_runtime.as_lua().unwrap().message(),
        isle_runtime.as_lua().unwrap().message()
    );
    assert_eq!(pool_runtime.to_string(), isle_runtime.to_string());

    let isle_conversion = isle.eval::<i64>("return {}").unwrap_err();
    let pool_conversion = pool.eval::<i64>("return {}").unwrap_err();
    assert_eq!(
        pool_conversion.as_lua().unwrap().kind(),
        LuaErrorKind::Conversion
    );
    assert_eq!(pool_conversion.to_string(), isle_conversion.to_string());

    let isle_call = isle.call::<()>("not_a_function", ()).unwrap_err();
    let pool_call = pool.call::<()>("not_a_function", ()).unwrap_err();
    assert!(
        matches!(
            pool_call,
            IsleError::NotAFunction { ref name, .. } if name == "not_a_function"
        ),
        "{pool_call:?} / isle: {isle_call:?}"
    );
    assert_eq!(pool_call.to_string(), isle_call.to_string());

    let isle_panic = isle.exec::<(), _>(|_| panic!("deliberate")).unwrap_err();
    let pool_panic = pool.exec::<(), _>(|_| panic!("deliberate")).unwrap_err();
    assert!(matches!(&pool_panic, IsleError::Panic(m) if m == "deliberate"));
    assert_eq!(pool_panic.to_string(), isle_panic.to_string());

    let timeout = Duration::from_millis(20);
    let isle_timeout = isle
        .request()
        .timeout(timeout)
        .eval::<()>("while true do end")
        .unwrap_err();
    let pool_timeout = pool
        .request()
        .timeout(timeout)
        .eval::<()>("while true do end")
        .unwrap_err();
    assert!(pool_timeout.is_timeout());
    assert_eq!(pool_timeout.to_string(), isle_timeout.to_string());

    let stats = pool.stats();
    assert_eq!((stats.failed, stats.timed_out), (5, 1));
}

#[test]
fn dropping_a_queued_task_cancels_its_request() {
    let pool = pool(1);
    let (held, release) = hold(&pool);
    let ran = Arc::new(AtomicBool::new(false));
    let closures = Arc::new(AtomicUsize::new(0));
    let task = {
        let ran = ran.clone();
        let alive = DropCounter::new(&closures);
        pool.spawn_exec(move |_| {
            let _alive = alive;
            ran.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap()
    };
    drop(task);
    assert_eq!(
        closures.load(Ordering::SeqCst),
        0,
        "the unrun closure is dropped"
    );
    release.send(()).unwrap();
    held.wait_timeout(HANG).expect("hang guard").unwrap();
    pool.eval::<()>("return").unwrap();
    assert!(!ran.load(Ordering::SeqCst));
}

#[test]
fn dropping_a_running_task_cancels_its_request() {
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_interrupted(false))
        .spawn(|_| Ok(()))
        .unwrap();
    let task = spawn_running_loop(&pool, None);
    drop(task);
    // The only member is free again: the loop was interrupted.
    assert_eq!(pool.eval::<i64>("5").unwrap(), 5);
    assert_eq!(pool.stats().cancelled, 1);
}

#[test]
fn results_and_unrun_closures_are_dropped_exactly_once() {
    let pool = pool(2);
    let closures = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let held = [hold(&pool), hold(&pool)];
    let mut tokens = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let token = CancelToken::new();
        let alive = DropCounter::new(&closures);
        let (results, ran) = (results.clone(), ran.clone());
        let task = pool
            .request()
            .token(&token)
            .spawn_exec(move |_| {
                let _alive = alive;
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(DropCounter::new(&results))
            })
            .unwrap();
        tokens.push(token);
        tasks.push(task);
    }
    assert_eq!(closures.load(Ordering::SeqCst), 30);
    // 10 cancelled while queued, 5 dropped while queued: their closures go at once.
    for token in &tokens[..10] {
        token.cancel();
    }
    let mut rest = tasks.split_off(10);
    let cancelled = tasks;
    let to_run = rest.split_off(5);
    drop(rest);
    assert_eq!(closures.load(Ordering::SeqCst), 15);
    for task in cancelled {
        assert!(task
            .wait_timeout(HANG)
            .expect("hang guard")
            .unwrap_err()
            .is_cancelled());
    }
    for (task, release) in held {
        release.send(()).unwrap();
        task.wait_timeout(HANG).expect("hang guard").unwrap();
    }
    // Of the 15 that run, 10 are waited for and 5 dropped once finished.
    let mut to_run = to_run;
    let finished_unobserved = to_run.split_off(10);
    for task in to_run {
        drop(task.wait_timeout(HANG).expect("hang guard").unwrap());
    }
    for task in &finished_unobserved {
        eventually("a request to finish", || task.is_finished());
    }
    drop(finished_unobserved);
    pool.shutdown().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 15);
    assert_eq!(closures.load(Ordering::SeqCst), 0);
    assert_eq!(results.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// 2. No head-of-line blocking

#[test]
fn short_requests_finish_while_one_member_is_held() {
    let pool = pool(3);
    let (long, release) = hold(&pool);
    let short: Vec<_> = (0..60)
        .map(|i| {
            pool.spawn_eval::<i64>(format!("return {i}").as_str())
                .unwrap()
        })
        .collect();
    for (i, task) in short.into_iter().enumerate() {
        assert_eq!(
            task.wait_timeout(HANG).expect("hang guard").unwrap(),
            i as i64
        );
    }
    assert!(!long.is_finished(), "the long request is still running");
    release.send(()).unwrap();
    long.wait_timeout(HANG).expect("hang guard").unwrap();
}

// ---------------------------------------------------------------------------------------
// 3. Checkout

#[test]
fn checkout_try_checkout_and_checkout_timeout_hand_out_members() {
    let pool = pool(3);
    let a = pool.checkout().unwrap();
    let b = pool.try_checkout().unwrap();
    let c = pool.checkout_timeout(HANG).unwrap();
    assert!(matches!(pool.try_checkout(), Err(IsleError::Full)));
    // Three different VMs.
    for (i, guard) in [&a, &b, &c].into_iter().enumerate() {
        guard.exec(move |lua| lua.globals().set("mine", i)).unwrap();
    }
    for (i, guard) in [&a, &b, &c].into_iter().enumerate() {
        assert_eq!(guard.eval::<usize>("mine").unwrap(), i);
    }
    assert_eq!(pool.stats().checked_out, 3);
}

#[test]
fn a_guard_moves_into_another_thread_and_returns_its_member_when_dropped() {
    let pool = pool(1);
    let guard = pool.checkout().unwrap();
    let worker = thread::spawn(move || {
        guard.exec(|lua| lua.globals().set("step", 1)).unwrap();
        guard.eval::<i64>("step + 1").unwrap()
    });
    assert_eq!(worker.join().unwrap(), 2);
    // Dropped on that thread: the only member can be checked out again.
    let again = pool.checkout_timeout(HANG).unwrap();
    assert_eq!(
        again.eval::<i64>("step").unwrap(),
        1,
        "same VM, no on_return"
    );
}

#[test]
fn a_discarded_member_is_replaced_by_a_fresh_vm() {
    let pool = pool(2);
    let guard = pool.checkout().unwrap();
    guard.exec(|lua| lua.globals().set("dirty", true)).unwrap();
    guard.discard();
    // Checking out both waits for the replacement; neither has the global.
    let both = checkout_all(&pool);
    for guard in &both {
        assert!(guard.eval::<bool>("dirty == nil").unwrap());
    }
    assert_eq!(pool.stats().recycled.discarded, 1);
}

#[test]
fn an_expired_checkout_leaks_no_member() {
    let pool = pool(2);
    let taken = checkout_all(&pool);
    let err = pool
        .checkout_timeout(Duration::from_millis(20))
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    drop(taken);
    let again = checkout_all(&pool);
    assert_eq!(pool.stats().checked_out, 2);
    drop(again);
}

#[test]
fn abandoned_checkout_waits_leak_no_member() {
    let pool = pool(2);
    // While every member is busy, many checkouts give up.
    let held = [hold(&pool), hold(&pool)];
    for _ in 0..200 {
        let err = pool
            .checkout_timeout(Duration::from_micros(200))
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    }
    for (task, release) in held {
        release.send(()).unwrap();
        task.wait_timeout(HANG).expect("hang guard").unwrap();
    }
    // With members free, tiny timeouts race the checkout job: some win, some give up just
    // as a member takes the job.
    for i in 0..500u64 {
        match pool.checkout_timeout(Duration::from_micros(i % 50)) {
            Ok(guard) => drop(guard),
            Err(err) => assert!(err.is_timeout(), "{err:?}"),
        }
    }
    let all = checkout_all(&pool);
    assert_eq!(pool.stats().checked_out, 2);
    drop(all);
}

#[test]
fn a_checkout_waits_in_turn_behind_queued_requests() {
    let pool = pool(1);
    let order = Arc::new(Mutex::new(Vec::new()));
    let record = |what: &'static str| {
        let order = order.clone();
        move |_: &Lua| {
            order.lock().unwrap().push(what);
            Ok(())
        }
    };
    let (held, release) = hold(&pool);
    let before: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|what| pool.spawn_exec(record(what)).unwrap())
        .collect();
    thread::scope(|s| {
        let checkout = s.spawn(|| {
            let guard = pool.checkout_timeout(HANG).unwrap();
            order.lock().unwrap().push("checked out");
            guard.exec(record("through the guard")).unwrap();
        });
        // The checkout is queued behind a, b and c; then d is queued behind it.
        eventually("the checkout to be queued", || pool.stats().queued == 4);
        let after = pool.spawn_exec(record("d")).unwrap();
        release.send(()).unwrap();
        held.wait_timeout(HANG).expect("hang guard").unwrap();
        checkout.join().unwrap();
        after.wait_timeout(HANG).expect("hang guard").unwrap();
    });
    for task in before {
        task.wait_timeout(HANG).expect("hang guard").unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        ["a", "b", "c", "checked out", "through the guard", "d"]
    );
}

// ---------------------------------------------------------------------------------------
// 4. Recycling

#[test]
fn a_member_is_recycled_at_an_age() {
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_age(Duration::ZERO))
        .spawn(|lua| lua.globals().set("count", 0))
        .unwrap();
    let seen: Vec<i64> = (0..3)
        .map(|_| pool.eval("count = count + 1 return count").unwrap())
        .collect();
    assert_eq!(seen, [1, 1, 1]);
    assert_eq!(pool.stats().recycled.age, 3);
}

#[test]
fn a_member_holding_memory_above_the_high_water_is_recycled() {
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().memory_high_water(2 << 20))
        .spawn(|_| Ok(()))
        .unwrap();
    // Small requests keep the member.
    pool.eval::<()>("kept = 1").unwrap();
    assert_eq!(pool.eval::<i64>("kept").unwrap(), 1);
    assert_eq!(pool.stats().recycled.memory, 0);
    // A request that leaves a big table behind retires it.
    pool.eval::<()>("big = {} for i = 1, 300000 do big[i] = i end")
        .unwrap();
    assert!(pool.eval::<bool>("big == nil and kept == nil").unwrap());
    assert_eq!(pool.stats().recycled.memory, 1);
}

#[test]
fn interrupted_requests_replace_the_member_by_default() {
    let pool = IslePool::builder()
        .size(1)
        .spawn(|lua| lua.globals().set("marker", 0))
        .unwrap();
    pool.eval::<()>("marker = 1").unwrap();
    let err = pool
        .request()
        .timeout(Duration::from_millis(20))
        .eval::<()>("while true do end")
        .unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(pool.eval::<i64>("marker").unwrap(), 0, "a fresh VM");
    pool.eval::<()>("marker = 1").unwrap();
    let token = CancelToken::new();
    let task = spawn_running_loop(&pool, Some(&token));
    token.cancel();
    assert!(task
        .wait_timeout(HANG)
        .expect("hang guard")
        .unwrap_err()
        .is_cancelled());
    assert_eq!(pool.eval::<i64>("marker").unwrap(), 0, "a fresh VM");
    let stats = pool.stats();
    assert_eq!(
        (stats.timed_out, stats.cancelled, stats.recycled.interrupted),
        (1, 1, 2)
    );
}

#[test]
fn interrupted_requests_keep_the_member_when_the_policy_says_so() {
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_interrupted(false))
        .spawn(|lua| lua.globals().set("marker", 0))
        .unwrap();
    pool.eval::<()>("marker = 1").unwrap();
    let err = pool
        .request()
        .timeout(Duration::from_millis(20))
        .eval::<()>("while true do end")
        .unwrap_err();
    assert!(err.is_timeout());
    let token = CancelToken::new();
    let task = spawn_running_loop(&pool, Some(&token));
    token.cancel();
    assert!(task
        .wait_timeout(HANG)
        .expect("hang guard")
        .unwrap_err()
        .is_cancelled());
    assert_eq!(pool.eval::<i64>("marker").unwrap(), 1, "the same VM");
    let stats = pool.stats();
    assert_eq!(
        (stats.timed_out, stats.cancelled, stats.recycled.total()),
        (1, 1, 0)
    );
}

#[test]
fn a_panic_replaces_the_member_whatever_the_policy() {
    quiet_deliberate_panics();
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_interrupted(false))
        .spawn(|_| Ok(()))
        .unwrap();
    pool.eval::<()>("x = 1").unwrap();
    let err = pool.exec::<(), _>(|_| panic!("deliberate")).unwrap_err();
    assert!(err.is_panic());
    assert!(pool.eval::<bool>("x == nil").unwrap());
    // A panic inside a checked-out member: replaced once returned.
    let guard = pool.checkout().unwrap();
    guard.eval::<()>("y = 1").unwrap();
    assert!(guard
        .exec::<(), _>(|_| panic!("deliberate"))
        .unwrap_err()
        .is_panic());
    drop(guard);
    assert!(pool.eval::<bool>("y == nil").unwrap());
    assert_eq!(pool.stats().recycled.panicked, 2);
}

#[test]
fn a_panicking_on_return_replaces_the_member() {
    quiet_deliberate_panics();
    let pool = IslePool::builder()
        .size(1)
        .on_return(|lua| {
            if lua.globals().get::<bool>("poison")? {
                panic!("deliberate: cannot reset");
            }
            Ok(())
        })
        .spawn(|lua| lua.globals().set("poison", false))
        .unwrap();
    let guard = pool.checkout().unwrap();
    guard.eval::<()>("poison = true kept = 1").unwrap();
    drop(guard);
    assert!(pool.eval::<bool>("not poison and kept == nil").unwrap());
    // A failing one too.
    let pool = IslePool::builder()
        .size(1)
        .on_return(|_| Err(mlua::Error::runtime("cannot reset")))
        .spawn(|_| Ok(()))
        .unwrap();
    let guard = pool.checkout().unwrap();
    guard.eval::<()>("kept = 1").unwrap();
    drop(guard);
    assert!(pool.eval::<bool>("kept == nil").unwrap());
    assert_eq!(pool.stats().recycled.on_return, 1);
}

/// An `init` that succeeds on its first `ok_first` calls, fails on the next `failures`, and
/// succeeds after that; it counts its calls.
fn flaky_init(
    calls: &Arc<AtomicUsize>,
    ok_first: usize,
    failures: usize,
) -> impl Fn(&Lua) -> mlua::Result<()> + Send + Sync + 'static {
    let calls = calls.clone();
    move |_| {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call > ok_first && call <= ok_first + failures {
            Err(mlua::Error::runtime("deliberate init failure"))
        } else {
            Ok(())
        }
    }
}

#[test]
fn a_replacement_whose_init_fails_is_retried_until_it_starts() {
    let calls = Arc::new(AtomicUsize::new(0));
    let pool = IslePool::builder()
        .size(2)
        .spawn(flaky_init(&calls, 2, 2))
        .unwrap();
    let guard = pool.checkout().unwrap();
    guard.discard();
    // Meanwhile the other member serves.
    for i in 0..20 {
        assert_eq!(pool.eval::<i64>(format!("return {i}").as_str()).unwrap(), i);
    }
    // Both positions can be checked out once a replacement started.
    let both = checkout_all(&pool);
    let stats = pool.stats();
    assert_eq!((stats.size, stats.failed_starts), (2, 2));
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    drop(both);
}

#[test]
fn requests_wait_while_the_only_member_fails_to_restart() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate_tx, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let counted = calls.clone();
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_requests(1))
        .spawn(move |_| {
            let call = counted.fetch_add(1, Ordering::SeqCst) + 1;
            match call {
                // The first replacement fails once the test has queued a request.
                2 => {
                    let _ = gate.lock().unwrap().recv_timeout(HANG);
                    Err(mlua::Error::runtime("deliberate init failure"))
                }
                3 => Err(mlua::Error::runtime("deliberate init failure")),
                _ => Ok(()),
            }
        })
        .unwrap();
    assert_eq!(pool.eval::<i64>("1").unwrap(), 1); // retires the only member
    let waiting = pool.spawn_eval::<i64>("2").unwrap();
    assert_eq!(pool.stats().queued, 1);
    gate_tx.send(()).unwrap();
    let result = waiting.wait_timeout(HANG).expect("resolved");
    assert_eq!(
        result.unwrap(),
        2,
        "the request waits for the retried start"
    );
    assert_eq!(pool.stats().failed_starts, 2);
    // The fourth start served the request (a fifth may already be replacing it).
    assert!(calls.load(Ordering::SeqCst) >= 4);
}

#[test]
fn replacements_reuse_the_thread_names() {
    let pool = IslePool::builder()
        .size(2)
        .thread_name("pb-names")
        .recycle(Recycle::new().after_requests(1))
        .spawn(|_| Ok(()))
        .unwrap();
    let mut names: Vec<String> = (0..20)
        .map(|_| {
            pool.exec(|_| Ok(thread::current().name().unwrap().to_owned()))
                .unwrap()
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(
        names.iter().all(|n| n == "pb-names-0" || n == "pb-names-1"),
        "{names:?}"
    );
    assert_eq!(pool.stats().recycled.requests, 20);
    // The retired threads end: two members and the supervisor are left.
    eventually("the retired threads to end", || {
        threads_named("pb-names-") == 3
    });
}

// ---------------------------------------------------------------------------------------
// 5. Self-healing, shutdown, drop

/// A pool whose members have `started()` (reporting on the returned channel) and
/// `released()`; code looping in a finalizer until released cannot be interrupted.
fn releasable_pool(
    size: usize,
    name: &str,
    release: &Arc<AtomicBool>,
) -> (IslePool, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let release = release.clone();
    let pool = IslePool::builder()
        .isle(IsleBuilder::new().grace_period(Duration::from_millis(50)))
        .size(size)
        .thread_name(name)
        .spawn(move |lua| {
            define_released(lua, release.clone())?;
            let tx = tx.clone();
            let started = lua.create_function(move |_, ()| Ok(tx.send(()).is_ok()))?;
            lua.globals().set("started", started)
        })
        .unwrap();
    (pool, rx)
}

/// Held in a host function that never looks at its token: no interrupt reaches it (on every
/// Lua version), so the isle gives up on it; it ends once released.
const STUCK: &str = "spin_until_released()";

#[test]
fn a_member_given_up_on_is_replaced_and_the_queued_work_runs_elsewhere() {
    let release = Arc::new(AtomicBool::new(false));
    let (pool, started) = releasable_pool(1, "pb-stuck1", &release);
    let stuck = pool
        .request()
        .timeout(Duration::from_millis(30))
        .spawn_eval::<()>(STUCK)
        .unwrap();
    started.recv_timeout(HANG).unwrap();
    // Queued behind the stuck request, on the only member: a replacement serves them.
    let queued: Vec<_> = (0..10)
        .map(|i| {
            pool.spawn_eval::<i64>(format!("return {i}").as_str())
                .unwrap()
        })
        .collect();
    assert!(stuck
        .wait_timeout(HANG)
        .expect("hang guard")
        .unwrap_err()
        .is_timeout());
    for (i, task) in queued.into_iter().enumerate() {
        assert_eq!(
            task.wait_timeout(HANG).expect("hang guard").unwrap(),
            i as i64
        );
    }
    let stats = pool.stats();
    assert_eq!((stats.replaced, stats.abandoned), (1, 1));
    release.store(true, Ordering::SeqCst);
    // The abandoned thread ends once released: one member and the supervisor are left.
    eventually("the abandoned thread to end", || {
        threads_named("pb-stuck1-") == 2
    });
    pool.shutdown().unwrap();
}

#[test]
fn while_a_member_is_stuck_the_others_serve_and_it_is_replaced() {
    let release = Arc::new(AtomicBool::new(false));
    let (pool, started) = releasable_pool(2, "pb-stuck2", &release);
    let stuck = pool
        .request()
        .timeout(Duration::from_millis(100))
        .spawn_eval::<()>(STUCK)
        .unwrap();
    started.recv_timeout(HANG).unwrap();
    for i in 0..20 {
        assert_eq!(pool.eval::<i64>(format!("return {i}").as_str()).unwrap(), i);
    }
    assert!(stuck
        .wait_timeout(HANG)
        .expect("hang guard")
        .unwrap_err()
        .is_timeout());
    let both = checkout_all(&pool);
    let stats = pool.stats();
    assert_eq!((stats.replaced, stats.abandoned), (1, 1));
    drop(both);
    release.store(true, Ordering::SeqCst);
}

#[test]
fn shutdown_timeout_stops_a_looping_request() {
    let pool = pool(2);
    let looping = spawn_running_loop(&pool, None);
    // Served by the other member before the shutdown starts.
    let queued = pool.spawn_eval::<i64>("return 4").unwrap();
    assert_eq!(queued.wait_timeout(HANG).expect("hang guard").unwrap(), 4);
    let (done_tx, done) = mpsc::channel();
    let start = Instant::now();
    thread::spawn(move || {
        let _ = done_tx.send(pool.shutdown_timeout(Duration::from_millis(50)));
    });
    let result = done
        .recv_timeout(HANG)
        .expect("shutdown_timeout returns within the hang guard");
    assert!(start.elapsed() < HANG);
    assert!(result.is_ok(), "{result:?}");
    assert!(looping.wait_timeout(HANG).expect("hang guard").is_err());
}

#[test]
fn shutdown_lets_a_checked_out_members_request_in_progress_finish() {
    let pool = pool(2);
    let guard = pool.checkout().unwrap();
    let (started_tx, started) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    let holder = thread::spawn(move || {
        let result = guard.exec(move |_| {
            started_tx.send(()).unwrap();
            let _ = release.recv();
            Ok(8)
        });
        drop(guard);
        result
    });
    started.recv_timeout(HANG).unwrap();
    let shutdown = thread::spawn(move || pool.shutdown());
    release_tx.send(()).unwrap();
    // The guard's request in progress finishes, and shutdown waits for it.
    assert_eq!(holder.join().unwrap().unwrap(), 8);
    shutdown.join().unwrap().unwrap();
}

#[test]
fn dropping_the_pool_never_blocks_and_queued_work_resolves_once() {
    let pool = pool(1);
    let closures = Arc::new(AtomicUsize::new(0));
    let token = CancelToken::new();
    let looping = spawn_running_loop(&pool, Some(&token));
    let queued: Vec<_> = (0..5)
        .map(|i| {
            let alive = DropCounter::new(&closures);
            pool.spawn_exec(move |_| {
                let _alive = alive;
                Ok(i)
            })
            .unwrap()
        })
        .collect();
    let (dropped_tx, dropped) = mpsc::channel();
    thread::spawn(move || {
        drop(pool);
        let _ = dropped_tx.send(());
    });
    dropped
        .recv_timeout(HANG)
        .expect("dropping the pool returns while a request loops");
    token.cancel();
    let result = looping.wait_timeout(HANG).expect("the loop is stopped");
    assert!(result.unwrap_err().is_cancelled());
    for (i, task) in queued.into_iter().enumerate() {
        match task.wait_timeout(HANG).expect("queued work resolves") {
            Ok(value) => assert_eq!(value, i),
            Err(err) => assert!(err.is_shutdown(), "{err:?}"),
        }
    }
    eventually("every closure to be dropped", || {
        closures.load(Ordering::SeqCst) == 0
    });
}

// ---------------------------------------------------------------------------------------
// 6. Broadcast

#[test]
fn broadcast_reaches_every_member_including_a_checked_out_one() {
    let pool = pool(3);
    let guard = pool.checkout().unwrap();
    guard.eval::<()>("who = 'holder'").unwrap();
    let (held, release) = hold(&pool);
    thread::scope(|s| {
        // One member checked out, one busy, one idle: the broadcast waits for the busy one.
        let broadcast = s.spawn(|| pool.broadcast_exec(|lua| lua.globals().set("v", 7)));
        release.send(()).unwrap();
        let results = broadcast.join().unwrap();
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    });
    held.wait_timeout(HANG).expect("hang guard").unwrap();
    // Between the holder's requests, in the holder's VM.
    assert_eq!(
        guard.eval::<(String, i64)>("who, v").unwrap(),
        ("holder".to_owned(), 7)
    );
    drop(guard);
    for guard in checkout_all(&pool) {
        assert_eq!(guard.eval::<i64>("v").unwrap(), 7);
    }
}

#[test]
fn a_replacement_does_not_get_an_earlier_broadcast_but_runs_init() {
    let version = Arc::new(AtomicUsize::new(1));
    let shared = version.clone();
    let pool = IslePool::builder()
        .size(1)
        .spawn(move |lua| lua.globals().set("version", shared.load(Ordering::SeqCst)))
        .unwrap();
    version.store(2, Ordering::SeqCst);
    let results = pool.broadcast_exec(|lua| {
        lua.globals().set("version", 2)?;
        lua.globals().set("broadcast_only", true)
    });
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(pool.eval::<i64>("version").unwrap(), 2);
    let guard = pool.checkout().unwrap();
    guard.discard();
    // The replacement ran `init` (which reads the shared version) but not the broadcast.
    assert_eq!(
        pool.eval::<(i64, bool)>("version, broadcast_only == nil")
            .unwrap(),
        (2, true)
    );
}

// ---------------------------------------------------------------------------------------
// 7. Stats

#[test]
fn stats_count_what_happened() {
    quiet_deliberate_panics();
    let pool = IslePool::builder()
        .size(3)
        .recycle(Recycle::new().after_interrupted(false))
        .spawn(|_| Ok(()))
        .unwrap();
    eventually("every member to be idle", || {
        let fresh = pool.stats();
        (fresh.size, fresh.idle, fresh.busy) == (3, 3, 0)
    });
    let fresh = pool.stats();
    assert_eq!((fresh.completed, fresh.failed, fresh.queued), (0, 0, 0));

    for i in 0..4 {
        pool.eval::<i64>(format!("return {i}").as_str()).unwrap();
    }
    pool.eval::<()>("error('no')").unwrap_err();
    pool.eval::<i64>("return 'not a number'").unwrap_err();
    pool.exec::<(), _>(|_| panic!("deliberate")).unwrap_err();
    pool.request()
        .timeout(Duration::from_millis(10))
        .eval::<()>("while true do end")
        .unwrap_err();
    let token = CancelToken::new();
    let task = spawn_running_loop(&pool, Some(&token));
    token.cancel();
    task.wait_timeout(HANG).expect("hang guard").unwrap_err();
    let stats = pool.stats();
    assert_eq!(
        (
            stats.completed,
            stats.failed,
            stats.timed_out,
            stats.cancelled
        ),
        (4, 3, 1, 1)
    );
    assert_eq!(stats.recycled.panicked, 1);

    // Wait for the panicked member's replacement, then one busy, one checked out, one idle
    // (once the other two guards' asynchronous returns are done).
    let mut all = checkout_all(&pool);
    let guard = all.pop().unwrap();
    drop(all);
    let (held, release) = hold(&pool);
    eventually("one member idle, one busy, one checked out", || {
        let stats = pool.stats();
        (stats.size, stats.idle, stats.busy, stats.checked_out) == (3, 1, 1, 1)
    });
    let (held2, release2) = hold(&pool);
    let queued: Vec<_> = (0..3)
        .map(|_| pool.spawn_eval::<()>("return").unwrap())
        .collect();
    let stats = pool.stats();
    assert_eq!(
        (stats.idle, stats.busy, stats.checked_out, stats.queued),
        (0, 2, 1, 3)
    );
    // A request cancelled while queued never reaches a member: not counted.
    let never = pool.spawn_eval::<()>("return").unwrap();
    never.cancel();
    never.wait_timeout(HANG).expect("hang guard").unwrap_err();
    // Requests through a guard count too.
    guard.eval::<()>("return").unwrap();
    release.send(()).unwrap();
    release2.send(()).unwrap();
    held.wait_timeout(HANG).expect("hang guard").unwrap();
    held2.wait_timeout(HANG).expect("hang guard").unwrap();
    for task in queued {
        task.wait_timeout(HANG).expect("hang guard").unwrap();
    }
    drop(guard);
    let all = checkout_all(&pool);
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.cancelled), (4 + 1 + 2 + 3, 1));
    assert_eq!(stats.checked_out, 3);
    drop(all);
}

// ---------------------------------------------------------------------------------------
// 8. Reentrancy

#[test]
fn blocking_pool_calls_on_a_member_thread_are_reentrant() {
    let pool = Arc::new(pool(2));
    let inner = pool.clone();
    let errors = pool
        .exec(move |_| {
            let broadcast = inner.broadcast_exec(|_| Ok(()));
            Ok(vec![
                inner.eval::<i64>("1").unwrap_err(),
                inner.call::<i64>("tostring", 1).unwrap_err(),
                inner.exec(|_| Ok(())).unwrap_err(),
                inner.checkout().unwrap_err(),
                inner.checkout_timeout(HANG).unwrap_err(),
                broadcast
                    .into_iter()
                    .next()
                    .expect("one result")
                    .unwrap_err(),
            ])
        })
        .unwrap();
    for err in &errors {
        assert!(matches!(err, IsleError::Reentrant), "{err:?}");
    }
    // A task of the pool waited for on a member thread is reentrant too.
    let inner = pool.clone();
    let err = pool
        .exec(move |_| {
            let task = inner.spawn_eval::<i64>("1").unwrap();
            Ok(task.wait_timeout(HANG).expect("hang guard"))
        })
        .unwrap();
    assert!(matches!(err, Err(IsleError::Reentrant)), "{err:?}");
}

#[test]
fn shutdown_on_a_member_thread_is_reentrant() {
    let pool = pool(1);
    let slot = Arc::new(Mutex::new(None::<IslePool>));
    let inner = slot.clone();
    let (go_tx, go) = mpsc::channel::<()>();
    let task = pool
        .spawn_exec(move |_| {
            go.recv().unwrap();
            let pool = inner.lock().unwrap().take().expect("the pool");
            Ok(pool.shutdown())
        })
        .unwrap();
    *slot.lock().unwrap() = Some(pool);
    go_tx.send(()).unwrap();
    let result = task
        .wait_timeout(HANG)
        .expect("the member is not deadlocked");
    let err = result.unwrap().unwrap_err();
    assert!(matches!(err, IsleError::Reentrant), "{err:?}");
}

#[test]
fn spawning_on_a_member_thread_with_a_full_queue_fails_instead_of_deadlocking() {
    let pool = Arc::new(
        IslePool::builder()
            .size(1)
            .queue_capacity(1)
            .spawn(|_| Ok(()))
            .unwrap(),
    );
    let inner = pool.clone();
    let (first, second, third) = pool
        .exec(move |_| {
            let first = inner.spawn_eval::<i64>("return 1");
            // The only member is this thread: nothing makes room while it waits.
            let second = inner.spawn_eval::<i64>("return 2");
            let third = inner.request().try_enqueue().spawn_exec(|_| Ok(3));
            Ok((first, second.err(), third.err()))
        })
        .unwrap();
    assert!(matches!(second, Some(IsleError::Full)), "{second:?}");
    assert!(matches!(third, Some(IsleError::Full)), "{third:?}");
    assert_eq!(
        first
            .unwrap()
            .wait_timeout(HANG)
            .expect("hang guard")
            .unwrap(),
        1
    );
}

#[test]
fn a_blocking_call_from_one_member_onto_another_pool_is_fine() {
    let other = Arc::new(pool(1));
    let pool = pool(1);
    let inner = other.clone();
    assert_eq!(
        pool.exec(move |_| Ok(inner.eval::<i64>("11")))
            .unwrap()
            .unwrap(),
        11
    );
}
