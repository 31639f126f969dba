//! The async API (`AsyncIsle`, `AsyncIsleDriver`, `AsyncTask`), on both tokio runtime flavours:
//! cancellation (explicit, by token, by dropping futures), deadlines, memory limits, panics,
//! backpressure, exactly-once delivery under load and the driver's lifecycle.
//!
//! Every scenario is an `async fn`; `both_runtimes!` turns it into a module with one test on a
//! current-thread runtime and one on a two-worker multi-thread runtime. The scenario runs as a
//! spawned task (so it must be `Send`), inside the hang guard. Tests that count the process's
//! threads take an exclusive lock, all others a shared one, so that no other test's isle is
//! alive while threads are counted.
#![cfg(feature = "tokio")]

mod common;
use common::*;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use mlua_isle::{AsyncIsle, AsyncIsleDriver, CancelToken, IsleBuilder, IsleError, LuaErrorKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Flavor {
    CurrentThread,
    MultiThread,
}

#[derive(Clone, Copy)]
enum Lock {
    /// May run alongside other shared tests.
    Shared,
    /// Counts threads: runs alone.
    Exclusive,
}

static ISLE_THREADS: RwLock<()> = RwLock::new(());

#[allow(dead_code)] // the guards are only held
enum Held {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

/// Runs `scenario` as a task on a fresh runtime of the given flavour, within the hang guard.
fn run<F, Fut>(flavor: Flavor, lock: Lock, scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _held = match lock {
        Lock::Shared => Held::Shared(ISLE_THREADS.read().unwrap_or_else(PoisonError::into_inner)),
        Lock::Exclusive => {
            Held::Exclusive(ISLE_THREADS.write().unwrap_or_else(PoisonError::into_inner))
        }
    };
    within_hang_guard(move || {
        let mut builder = match flavor {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        };
        if let Flavor::MultiThread = flavor {
            builder.worker_threads(2);
        }
        let runtime = builder.enable_all().build().expect("runtime builds");
        let outcome = runtime.block_on(runtime.spawn(scenario()));
        if let Err(e) = outcome {
            match e.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(e) => panic!("scenario task failed: {e}"),
            }
        }
    });
}

/// `both_runtimes!(scenario)` makes `scenario::current_thread` and `scenario::multi_thread`
/// tests; `both_runtimes!(counts_threads scenario)` runs them alone. Attributes (such as
/// `#[ignore]`) given first apply to both.
macro_rules! both_runtimes {
    (@ [$(#[$attr:meta])*] $name:ident, $lock:ident) => {
        mod $name {
            $(#[$attr])*
            #[test]
            fn current_thread() {
                super::run(super::Flavor::CurrentThread, super::Lock::$lock, super::$name);
            }

            $(#[$attr])*
            #[test]
            fn multi_thread() {
                super::run(super::Flavor::MultiThread, super::Lock::$lock, super::$name);
            }
        }
    };
    ($(#[$attr:meta])* counts_threads $name:ident) => {
        both_runtimes!(@ [$(#[$attr])*] $name, Exclusive);
    };
    ($(#[$attr:meta])* $name:ident) => {
        both_runtimes!(@ [$(#[$attr])*] $name, Shared);
    };
}

/// Asserts that `$result` is `Err` matching `$pat`.
macro_rules! assert_err {
    ($result:expr, $pat:pat) => {
        match $result {
            Err($pat) => {}
            other => panic!("expected Err({}), got {:?}", stringify!($pat), other),
        }
    };
}

/// Globals every test isle has: `started()` (reports on the `Started` channel), `boom(msg)`
/// (a host function that panics), `wall_ms()` (wall-clock milliseconds), `echo`, `spin` (loops
/// without reporting), `started_spin`, `counter`, `kept`.
const PRELUDE: &str = "
    function echo(...) return ... end
    function spin() while true do end end
    function started_spin() started() while true do end end
    counter = 0
    kept = 'yes'
";

/// The receiving end of `started()`.
struct Started(mpsc::UnboundedReceiver<()>);

impl Started {
    /// Waits (asynchronously) until Lua has called `started()` once more.
    async fn wait(&mut self) {
        tokio::time::timeout(HANG / 2, self.0.recv())
            .await
            .expect("hang guard: the request should have started")
            .expect("the isle keeps the started() channel open");
    }
}

async fn spawn_isle(builder: IsleBuilder) -> (AsyncIsle, AsyncIsleDriver, Started) {
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let (isle, driver) = builder
        .spawn_async(move |lua| {
            let started = lua.create_function(move |_, ()| {
                let _ = tx.send(());
                Ok(())
            })?;
            lua.globals().set("started", started)?;
            let boom = lua.create_function(|_, msg: String| -> mlua_isle::mlua::Result<()> {
                panic!("{msg}")
            })?;
            lua.globals().set("boom", boom)?;
            let origin = Instant::now();
            let wall_ms =
                lua.create_function(move |_, ()| Ok(origin.elapsed().as_secs_f64() * 1000.0))?;
            lua.globals().set("wall_ms", wall_ms)?;
            lua.load(PRELUDE).exec()
        })
        .await
        .expect("isle starts");
    (isle, driver, Started(rx))
}

async fn default_isle() -> (AsyncIsle, AsyncIsleDriver, Started) {
    spawn_isle(AsyncIsle::builder()).await
}

/// Polls `fut` exactly once.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Waits until `cond` holds (polling every millisecond), failing after a generous bound.
async fn eventually_async(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < HANG / 2, "hang guard: never saw {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn assert_usable(isle: &AsyncIsle) {
    assert_eq!(isle.eval::<String>("kept").await.unwrap(), "yes");
    assert_eq!(isle.eval::<i64>("1 + 1").await.unwrap(), 2);
}

// ---------------------------------------------------------------------------------------------
// a. Cancelling a running request
// ---------------------------------------------------------------------------------------------

async fn cancel_running_via_task_cancel() {
    let (isle, _driver, mut started) = default_isle().await;
    let task = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    assert!(!task.is_finished());
    task.cancel();
    assert_err!(task.await, IsleError::Cancelled);
    assert_usable(&isle).await;
}
both_runtimes!(cancel_running_via_task_cancel);

async fn cancel_running_via_cancel_token_from_another_task() {
    let (isle, _driver, mut started) = default_isle().await;
    let task = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let token = task.cancel_token();
    tokio::spawn(async move { token.cancel() }).await.unwrap();
    assert_err!(task.await, IsleError::Cancelled);
    assert_usable(&isle).await;
}
both_runtimes!(cancel_running_via_cancel_token_from_another_task);

async fn shared_token_cancels_running_and_queued_requests() {
    let (isle, _driver, mut started) = default_isle().await;
    let token = CancelToken::new();
    let running = isle
        .request()
        .token(&token)
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(
            isle.request()
                .token(&token)
                .spawn_eval::<()>("counter = counter + 1")
                .await
                .unwrap(),
        );
    }
    let queued_call = isle
        .request()
        .token(&token)
        .spawn_call::<()>("spin", ())
        .await
        .unwrap();
    let queued_exec = isle
        .request()
        .token(&token)
        .spawn_exec(|lua| lua.globals().set("counter", 1000))
        .await
        .unwrap();
    let unrelated = isle.spawn_eval::<i64>("return 7").await.unwrap();
    let canceller = token.clone();
    tokio::spawn(async move { canceller.cancel() })
        .await
        .unwrap();
    assert_err!(running.await, IsleError::Cancelled);
    for task in queued {
        assert_err!(task.await, IsleError::Cancelled);
    }
    assert_err!(queued_call.await, IsleError::Cancelled);
    assert_err!(queued_exec.await, IsleError::Cancelled);
    assert_eq!(unrelated.await.unwrap(), 7);
    assert_eq!(isle.eval::<i64>("counter").await.unwrap(), 0);
    // The token stays cancelled: a new request given it never runs.
    assert_err!(
        isle.request()
            .token(&token)
            .eval::<()>("counter = counter + 1")
            .await,
        IsleError::Cancelled
    );
    assert_eq!(isle.eval::<i64>("counter").await.unwrap(), 0);
}
both_runtimes!(shared_token_cancels_running_and_queued_requests);

async fn parent_token_cancels_requests_given_a_child() {
    let (isle, _driver, mut started) = default_isle().await;
    let parent = CancelToken::new();
    let child = parent.child_token();
    let task = isle
        .request()
        .token(&child)
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    // A sibling cancelled on its own leaves the parent (and the request) alone.
    parent.child_token().cancel();
    assert!(!parent.is_cancelled() && !task.is_finished());
    let canceller = parent.clone();
    tokio::spawn(async move { canceller.cancel() })
        .await
        .unwrap();
    assert_err!(task.await, IsleError::Cancelled);
    assert!(child.is_cancelled());
    assert_usable(&isle).await;
}
both_runtimes!(parent_token_cancels_requests_given_a_child);

async fn task_cancel_token_cancels_only_its_request() {
    let (isle, _driver, mut started) = default_isle().await;
    let shared = CancelToken::new();
    let a = isle
        .request()
        .token(&shared)
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let b = isle
        .request()
        .token(&shared)
        .spawn_eval::<i64>("3")
        .await
        .unwrap();
    a.cancel_token().cancel();
    assert!(!shared.is_cancelled());
    assert_err!(a.await, IsleError::Cancelled);
    assert_eq!(b.await.unwrap(), 3);
    // An already cancelled token: the request resolves without running.
    let dead = CancelToken::new();
    dead.cancel();
    let task = isle
        .request()
        .token(&dead)
        .spawn_eval::<()>("counter = counter + 1")
        .await
        .unwrap();
    assert!(task.is_finished());
    assert_err!(task.await, IsleError::Cancelled);
    assert_eq!(isle.eval::<i64>("counter").await.unwrap(), 0);
}
both_runtimes!(task_cancel_token_cancels_only_its_request);

// ---------------------------------------------------------------------------------------------
// b. Cancellation cannot be caught
// ---------------------------------------------------------------------------------------------

const UNCATCHABLE: &[&str] = &[
    "started() while true do pcall(function() while true do end end) end",
    "started()
     while true do
       pcall(pcall, pcall, function() while true do pcall(error, 'x') end end)
     end",
    "started()
     local n = 0
     while true do
       local ok, err = pcall(function() while true do n = n + 1 end end)
       n = n + 1
     end",
    "started() xpcall(function() while true do end end, function(e) while true do end end)",
    "started()
     while true do xpcall(function() while true do end end, function(e) return e end) end",
    "started()
     local function spin() while true do end end
     local function handler(e) xpcall(spin, handler) return e end
     while true do xpcall(spin, handler) end",
    "started() local f = coroutine.wrap(function() while true do end end) f()",
    "started()
     while true do
       local co = coroutine.create(function() while true do end end)
       coroutine.resume(co)
     end",
    "started()
     local co = coroutine.wrap(function() while true do coroutine.yield() end end)
     while true do co() end",
    "started()
     local function nest(depth)
       if depth == 0 then while true do pcall(function() while true do end end) end end
       return coroutine.wrap(function() return nest(depth - 1) end)()
     end
     while true do pcall(nest, 10) end",
    "started()
     local t = setmetatable({}, {__index = function() while true do end end})
     return t.anything",
    "started()
     local t = setmetatable({}, {__tostring = function() while true do end end})
     return tostring(t)",
    "started()
     local bad = setmetatable({}, {__tostring = function() while true do end end})
     while true do pcall(error, bad) end",
];

/// Loops in `__close` metamethods (Lua 5.4 and later).
#[cfg(any(feature = "lua54", feature = "lua55"))]
const UNCATCHABLE_IN_CLOSE: &[&str] = &[
    "started()
     do
       local x <close> = setmetatable({}, {__close = function() while true do end end})
     end",
    "started()
     local x <close> = setmetatable({}, {__close = function() while true do end end})
     while true do end",
];
#[cfg(not(any(feature = "lua54", feature = "lua55")))]
const UNCATCHABLE_IN_CLOSE: &[&str] = &[];

async fn cancel_cannot_be_caught_by_lua() {
    let (isle, _driver, mut started) = default_isle().await;
    for script in UNCATCHABLE.iter().chain(UNCATCHABLE_IN_CLOSE) {
        let task = isle.spawn_eval::<()>(*script).await.unwrap();
        started.wait().await;
        task.cancel();
        match task.await {
            Err(IsleError::Cancelled) => {}
            other => panic!("script {script:?} ended with {other:?}, expected Cancelled"),
        }
        assert_usable(&isle).await;
    }
}
both_runtimes!(cancel_cannot_be_caught_by_lua);

async fn cancel_reaches_call_and_exec() {
    let (isle, _driver, mut started) = default_isle().await;
    let call = isle.spawn_call::<()>("started_spin", ()).await.unwrap();
    started.wait().await;
    call.cancel();
    assert_err!(call.await, IsleError::Cancelled);
    let exec = isle
        .spawn_exec(|lua| lua.load("started() while true do end").exec())
        .await
        .unwrap();
    started.wait().await;
    exec.cancel();
    assert_err!(exec.await, IsleError::Cancelled);
    assert_usable(&isle).await;
}
both_runtimes!(cancel_reaches_call_and_exec);

// ---------------------------------------------------------------------------------------------
// c. Cancelled while queued
// ---------------------------------------------------------------------------------------------

async fn request_cancelled_while_queued_never_runs() {
    let (isle, _driver, mut started) = default_isle().await;
    let live = Arc::new(AtomicUsize::new(0));
    let blocker = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let queued_eval = isle
        .spawn_eval::<()>("counter = counter + 1")
        .await
        .unwrap();
    let queued_call = isle
        .spawn_call::<()>("error", "must not run")
        .await
        .unwrap();
    let guard = DropCounter::new(&live);
    let queued_exec = isle
        .spawn_exec(move |lua| {
            let _guard = guard;
            lua.globals().set("counter", 1000)
        })
        .await
        .unwrap();
    queued_eval.cancel();
    queued_call.cancel_token().cancel();
    queued_exec.cancel();
    // Resolved at once, while the blocker still runs.
    assert!(queued_eval.is_finished());
    assert!(queued_call.is_finished());
    assert!(queued_exec.is_finished());
    assert_err!(queued_eval.await, IsleError::Cancelled);
    assert_err!(queued_call.await, IsleError::Cancelled);
    assert_err!(queued_exec.await, IsleError::Cancelled);
    assert!(!blocker.is_finished());
    blocker.cancel();
    assert_err!(blocker.await, IsleError::Cancelled);
    assert_eq!(isle.eval::<i64>("counter").await.unwrap(), 0);
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "the unrun closure is dropped"
    );
}
both_runtimes!(request_cancelled_while_queued_never_runs);

// ---------------------------------------------------------------------------------------------
// d. The outcome is Cancelled / Timeout whatever the code does with the interruption
// ---------------------------------------------------------------------------------------------

async fn cancel_and_timeout_win_over_a_closure_that_swallows_them() {
    let (isle, _driver, mut started) = default_isle().await;
    let task = isle
        .spawn_exec(|lua| {
            let _ = lua.load("started() while true do end").exec();
            Ok(42)
        })
        .await
        .unwrap();
    started.wait().await;
    task.cancel();
    assert_err!(task.await, IsleError::Cancelled);

    let result = isle
        .request()
        .timeout(Duration::from_millis(20))
        .exec(|lua| {
            let _ = lua.load("while true do end").exec();
            Ok(42)
        })
        .await;
    assert_err!(result, IsleError::Timeout);

    // Lua code that catches the interruption and returns normally.
    let task = isle
        .spawn_eval::<i64>("started() pcall(function() while true do end end) return 1")
        .await
        .unwrap();
    started.wait().await;
    task.cancel();
    assert_err!(task.await, IsleError::Cancelled);
    assert_usable(&isle).await;
}
both_runtimes!(cancel_and_timeout_win_over_a_closure_that_swallows_them);

// ---------------------------------------------------------------------------------------------
// e. Deadlines
// ---------------------------------------------------------------------------------------------

async fn isle_default_timeout_applies_to_every_verb() {
    let (isle, _driver, _started) =
        spawn_isle(AsyncIsle::builder().timeout(Duration::from_millis(100))).await;
    assert_err!(isle.eval::<()>("spin()").await, IsleError::Timeout);
    assert_err!(isle.call::<()>("spin", ()).await, IsleError::Timeout);
    assert_err!(
        isle.exec(|lua| lua.load("spin()").exec()).await,
        IsleError::Timeout
    );
    let task = isle.spawn_eval::<()>("spin()").await.unwrap();
    assert_err!(task.await, IsleError::Timeout);
    let task = isle.spawn_call::<()>("spin", ()).await.unwrap();
    assert_err!(task.await, IsleError::Timeout);
    let task = isle
        .spawn_exec(|lua| lua.load("spin()").exec())
        .await
        .unwrap();
    assert_err!(task.await, IsleError::Timeout);
    // Usable afterwards (without the short default, which a loaded machine could exceed).
    let kept: String = isle.request().no_timeout().eval("kept").await.unwrap();
    assert_eq!(kept, "yes");
}
both_runtimes!(isle_default_timeout_applies_to_every_verb);

async fn request_timeout_and_deadline_stop_loops() {
    let (isle, _driver, _started) = default_isle().await;
    assert_err!(
        isle.request()
            .timeout(Duration::from_millis(20))
            .eval::<()>("while true do end")
            .await,
        IsleError::Timeout
    );
    assert_err!(
        isle.request()
            .timeout(Duration::from_millis(20))
            .eval::<()>("while true do pcall(function() while true do end end) end")
            .await,
        IsleError::Timeout
    );
    assert_err!(
        isle.request()
            .deadline(Instant::now() + Duration::from_millis(20))
            .call::<()>("spin", ())
            .await,
        IsleError::Timeout
    );
    // With a token that is never cancelled, the deadline still applies.
    let token = CancelToken::new();
    assert_err!(
        isle.request()
            .token(&token)
            .timeout(Duration::from_millis(20))
            .exec(|lua| lua.load("spin()").exec())
            .await,
        IsleError::Timeout
    );
    // A deadline already passed: never runs.
    assert_err!(
        isle.request()
            .deadline(Instant::now())
            .eval::<()>("counter = counter + 1")
            .await,
        IsleError::Timeout
    );
    assert_eq!(isle.eval::<i64>("counter").await.unwrap(), 0);
    assert_usable(&isle).await;
}
both_runtimes!(request_timeout_and_deadline_stop_loops);

async fn request_finishing_in_time_is_unaffected() {
    let (isle, _driver, _started) =
        spawn_isle(AsyncIsle::builder().timeout(Duration::from_millis(100))).await;
    // Longer than the default, in wall-clock time (`os.clock` counts the CPU time of every
    // thread of the process).
    const BUSY: &str = "local t = wall_ms() while wall_ms() - t < 150 do end return true";
    // A longer per-request timeout replaces the short default.
    assert!(isle
        .request()
        .timeout(Duration::from_secs(60))
        .eval::<bool>(BUSY)
        .await
        .unwrap());
    assert!(isle
        .request()
        .deadline(Instant::now() + Duration::from_secs(60))
        .eval::<bool>(BUSY)
        .await
        .unwrap());
    assert!(isle
        .request()
        .no_timeout()
        .spawn_eval::<bool>(BUSY)
        .await
        .unwrap()
        .await
        .unwrap());
    // The default still applies otherwise.
    assert_err!(
        isle.eval::<bool>("while true do end").await,
        IsleError::Timeout
    );
    // A quick request is unaffected by its (long) deadline.
    let sum: i64 = isle
        .request()
        .timeout(Duration::from_secs(60))
        .eval("local s = 0 for i = 1, 100000 do s = s + i end return s")
        .await
        .unwrap();
    assert_eq!(sum, 5_000_050_000);
}
both_runtimes!(request_finishing_in_time_is_unaffected);

async fn deadline_passing_while_queued_resolves_timeout_without_running() {
    let (isle, _driver, mut started) = default_isle().await;
    let blocker = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let queued = isle
        .request()
        .timeout(Duration::from_millis(20))
        .spawn_eval::<()>("counter = counter + 1")
        .await
        .unwrap();
    // The awaiting task resolves it while the blocker still runs.
    assert_err!(queued.await, IsleError::Timeout);
    assert!(!blocker.is_finished());
    // Detached: nobody awaits it, the Lua thread resolves it when it gets there.
    let expiry = Instant::now() + Duration::from_millis(1);
    isle.request()
        .deadline(expiry)
        .spawn_exec(|lua| lua.globals().set("counter", 1000))
        .await
        .unwrap()
        .detach();
    tokio::time::sleep_until(tokio::time::Instant::from_std(expiry)).await;
    assert!(!blocker.is_finished());
    blocker.cancel();
    assert_err!(blocker.await, IsleError::Cancelled);
    assert_eq!(isle.eval::<i64>("counter").await.unwrap(), 0);
}
both_runtimes!(deadline_passing_while_queued_resolves_timeout_without_running);

// ---------------------------------------------------------------------------------------------
// f. Memory limits
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_memory_error<T: std::fmt::Debug>(result: Result<T, IsleError>) {
    match result {
        Err(IsleError::Lua(e)) => assert_eq!(e.kind(), LuaErrorKind::Memory, "{e}"),
        other => panic!("expected a memory error, got {other:?}"),
    }
}

async fn memory_limit_error_keeps_the_isle_serving() {
    let (isle, _driver, _started) = spawn_isle(AsyncIsle::builder().memory_limit(8 << 20)).await;
    isle.eval::<()>("counter = 41").await.unwrap();
    assert_memory_error(
        isle.eval::<()>("local hog = {} for i = 1, 1e8 do hog[i] = {} end")
            .await,
    );
    assert_memory_error(
        isle.eval::<()>("return string.rep('x', 64 * 1024 * 1024)")
            .await,
    );
    assert_memory_error(
        isle.exec(|lua| {
            lua.load("local s = 'x' while true do s = s .. s end")
                .exec()
        })
        .await,
    );
    assert_eq!(isle.eval::<String>("kept").await.unwrap(), "yes");
    assert_eq!(isle.eval::<i64>("counter + 1").await.unwrap(), 42);
    let n: i64 = isle
        .eval("local t = {} for i = 1, 1e5 do t[i] = i end return #t")
        .await
        .unwrap();
    assert_eq!(n, 100_000);
}
both_runtimes!(memory_limit_error_keeps_the_isle_serving);

// ---------------------------------------------------------------------------------------------
// g. Panics
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_panic<T: std::fmt::Debug>(result: Result<T, IsleError>, expected: &str) {
    match result {
        Err(IsleError::Panic(msg)) => assert_eq!(msg, expected),
        other => panic!("expected Panic({expected:?}), got {other:?}"),
    }
}

async fn panics_end_only_their_request() {
    let (isle, _driver, _started) = default_isle().await;
    assert_panic(
        isle.exec(|_| -> mlua_isle::mlua::Result<()> { panic!("exec boom") })
            .await,
        "exec boom",
    );
    assert_eq!(isle.eval::<i64>("1 + 1").await.unwrap(), 2);
    let n = 7;
    let task = isle
        .spawn_exec(move |_| -> mlua_isle::mlua::Result<()> { panic!("bad {n}") })
        .await
        .unwrap();
    assert_panic(task.await, "bad 7");
    assert_panic(isle.eval::<()>("boom('host boom')").await, "host boom");
    assert_panic(isle.call::<()>("boom", "via call").await, "via call");
    assert_panic(
        isle.eval::<()>("local ok = pcall(boom, 'caught?') return ok")
            .await,
        "caught?",
    );
    assert_panic(
        isle.eval::<()>("coroutine.wrap(function() pcall(boom, 'in coroutine') end)()")
            .await,
        "in coroutine",
    );
    assert_usable(&isle).await;
}
both_runtimes!(panics_end_only_their_request);

// ---------------------------------------------------------------------------------------------
// h. Dropping a future mid-flight cancels its request
// ---------------------------------------------------------------------------------------------

async fn dropping_a_running_request_future_interrupts_it() {
    let (isle, _driver, mut started) = default_isle().await;

    // `select!` drops the eval future once the request is known to run.
    tokio::select! {
        result = isle.eval::<()>("started() while true do end") => {
            panic!("the loop finished: {result:?}")
        }
        () = started.wait() => {}
    }
    assert_usable(&isle).await; // would hang behind the loop if it were not interrupted

    // A branch that cancels: the token is cancelled from another task once the loop runs.
    let token = CancelToken::new();
    let canceller = {
        let token = token.clone();
        tokio::spawn(async move {
            started.wait().await;
            token.cancel();
            started
        })
    };
    tokio::select! {
        result = isle.call::<()>("started_spin", ()) => panic!("the loop finished: {result:?}"),
        () = token.cancelled() => {}
    }
    let mut started = canceller.await.unwrap();
    assert_usable(&isle).await;

    // `tokio::time::timeout` around the request (queued or running when dropped); an exec
    // this time, without `started()` so that no report is left over.
    let timed = tokio::time::timeout(
        Duration::from_millis(20),
        isle.exec(|lua| lua.load("spin()").exec()),
    )
    .await;
    assert!(timed.is_err(), "the loop cannot finish: {timed:?}");
    assert_usable(&isle).await;

    // Dropping a spawned task mid-flight.
    let task = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let token = task.cancel_token();
    drop(task);
    assert!(token.is_cancelled());
    assert_usable(&isle).await;
}
both_runtimes!(dropping_a_running_request_future_interrupts_it);

async fn dropping_a_queued_request_future_means_it_never_runs() {
    let (isle, _driver, mut started) = default_isle().await;
    let live = Arc::new(AtomicUsize::new(0));
    let blocker = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;

    // One poll queues the request; the control one is kept and must run.
    let mut dropped = Box::pin(isle.eval::<()>("counter = counter + 1"));
    let mut kept = Box::pin(isle.eval::<()>("counter = counter + 10"));
    assert!(poll_once(&mut dropped).await.is_pending());
    assert!(poll_once(&mut kept).await.is_pending());
    drop(dropped);
    let guard = DropCounter::new(&live);
    let mut dropped_exec = Box::pin(isle.exec(move |lua| {
        let _guard = guard;
        lua.globals().set("counter", 1000)
    }));
    assert!(poll_once(&mut dropped_exec).await.is_pending());
    drop(dropped_exec);
    let timed = tokio::time::timeout(
        Duration::from_millis(10),
        isle.call::<()>("error", "must not run"),
    )
    .await;
    assert!(timed.is_err(), "queued behind the blocker: {timed:?}");
    // Dropped tasks, too.
    drop(
        isle.spawn_eval::<()>("counter = counter + 100")
            .await
            .unwrap(),
    );
    assert!(!blocker.is_finished());
    blocker.cancel();
    assert_err!(blocker.await, IsleError::Cancelled);
    kept.await.unwrap();
    assert_eq!(isle.eval::<i64>("counter").await.unwrap(), 10);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}
both_runtimes!(dropping_a_queued_request_future_means_it_never_runs);

async fn awaiting_a_task_by_reference_is_cancel_safe() {
    let (isle, _driver, mut started) = default_isle().await;
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let mut task = isle
        .spawn_exec(move |lua| {
            lua.load("started()").exec()?;
            // Hold the request until the test says so (a blocking wait on the Lua thread).
            let _ = release_rx.blocking_recv();
            Ok(9)
        })
        .await
        .unwrap();
    started.wait().await;
    // Racing `&mut task` against something else and losing leaves the task intact.
    for _ in 0..3 {
        tokio::select! {
            biased;
            result = &mut task => panic!("finished early: {result:?}"),
            () = tokio::task::yield_now() => {}
        }
    }
    assert!(!task.is_finished() && !task.cancel_token().is_cancelled());
    release_tx.send(()).unwrap();
    assert_eq!(task.await.unwrap(), 9);

    // Detached: runs to completion unobserved.
    isle.spawn_exec(|lua| lua.globals().set("flag", true))
        .await
        .unwrap()
        .detach();
    assert!(isle.eval::<bool>("flag").await.unwrap());
}
both_runtimes!(awaiting_a_task_by_reference_is_cancel_safe);

// ---------------------------------------------------------------------------------------------
// j. The VM stays usable after every kind of failure
// ---------------------------------------------------------------------------------------------

async fn vm_usable_after_cancel_timeout_memory_error_and_panic() {
    let (isle, _driver, mut started) = spawn_isle(AsyncIsle::builder().memory_limit(8 << 20)).await;
    let step = "counter = counter + 1 return counter";
    let mut expected = 0;
    let mut check = || {
        expected += 1;
        expected
    };

    let task = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    task.cancel();
    assert_err!(task.await, IsleError::Cancelled);
    assert_eq!(isle.eval::<i64>(step).await.unwrap(), check());

    assert_err!(
        isle.request()
            .timeout(Duration::from_millis(10))
            .eval::<()>("spin()")
            .await,
        IsleError::Timeout
    );
    assert_eq!(isle.eval::<i64>(step).await.unwrap(), check());

    assert_memory_error(
        isle.eval::<()>("local t = {} for i = 1, 1e8 do t[i] = i end")
            .await,
    );
    assert_eq!(isle.eval::<i64>(step).await.unwrap(), check());

    assert_panic(
        isle.exec(|_| -> mlua_isle::mlua::Result<()> { panic!("p") })
            .await,
        "p",
    );
    assert_eq!(isle.eval::<i64>(step).await.unwrap(), check());

    assert_panic(isle.eval::<()>("boom('q')").await, "q");
    assert_eq!(isle.eval::<i64>(step).await.unwrap(), check());

    match isle.eval::<()>("error('plain')").await {
        Err(IsleError::Lua(e)) => assert_eq!(e.kind(), LuaErrorKind::Runtime),
        other => panic!("{other:?}"),
    }
    assert_eq!(isle.eval::<i64>(step).await.unwrap(), check());

    // A request dropped mid-flight.
    let timed = tokio::time::timeout(Duration::from_millis(5), isle.eval::<()>("spin()")).await;
    assert!(timed.is_err());
    assert_eq!(isle.call::<i64>("echo", 5).await.unwrap(), 5);
    assert_eq!(isle.eval::<i64>(step).await.unwrap(), check());
    assert_usable(&isle).await;
}
both_runtimes!(vm_usable_after_cancel_timeout_memory_error_and_panic);

// ---------------------------------------------------------------------------------------------
// k. Backpressure
// ---------------------------------------------------------------------------------------------

async fn full_queue_makes_async_submission_wait() {
    let (isle, _driver, mut started) = spawn_isle(AsyncIsle::builder().queue_capacity(1)).await;
    let blocker = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let filler = isle.spawn_eval::<i64>("1").await.unwrap();
    let mut submit = Box::pin(isle.spawn_eval::<i64>("2"));
    // Still waiting for room while the blocker runs (this direction cannot flake).
    assert!(tokio::time::timeout(Duration::from_millis(50), &mut submit)
        .await
        .is_err());
    // Another task waiting for room, from another clone.
    let clone = isle.clone();
    let waiter = tokio::spawn(async move { clone.call::<i64>("echo", 3).await });
    assert!(!blocker.is_finished() && !waiter.is_finished());
    blocker.cancel();
    let task = tokio::time::timeout(HANG / 2, submit)
        .await
        .expect("room is made once the blocker ends")
        .unwrap();
    assert_err!(blocker.await, IsleError::Cancelled);
    assert_eq!(filler.await.unwrap(), 1);
    assert_eq!(task.await.unwrap(), 2);
    assert_eq!(waiter.await.unwrap().unwrap(), 3);
}
both_runtimes!(full_queue_makes_async_submission_wait);

async fn full_queue_makes_try_enqueue_fail_at_once() {
    let (isle, _driver, mut started) = spawn_isle(AsyncIsle::builder().queue_capacity(2)).await;
    let blocker = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let a = isle.spawn_eval::<i64>("1").await.unwrap();
    let b = isle.spawn_eval::<i64>("2").await.unwrap();
    for _ in 0..3 {
        assert_err!(
            isle.request().try_enqueue().spawn_eval::<i64>("3").await,
            IsleError::Full
        );
        assert_err!(
            isle.request().try_enqueue().eval::<i64>("3").await,
            IsleError::Full
        );
        assert_err!(
            isle.request().try_enqueue().call::<i64>("echo", 3).await,
            IsleError::Full
        );
        assert_err!(
            isle.request().try_enqueue().exec(|_| Ok(3)).await,
            IsleError::Full
        );
        assert_err!(
            isle.request().try_enqueue().spawn_exec(|_| Ok(3)).await,
            IsleError::Full
        );
    }
    blocker.cancel();
    assert_eq!((a.await.unwrap(), b.await.unwrap()), (1, 2));
    assert_eq!(
        isle.request().try_enqueue().eval::<i64>("4").await.unwrap(),
        4
    );
}
both_runtimes!(full_queue_makes_try_enqueue_fail_at_once);

async fn submission_dropped_while_waiting_for_room_queues_nothing() {
    let (isle, _driver, mut started) = spawn_isle(AsyncIsle::builder().queue_capacity(1)).await;
    let live = Arc::new(AtomicUsize::new(0));
    let blocker = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let filler = isle
        .spawn_eval::<()>("counter = counter + 1")
        .await
        .unwrap();
    let guard = DropCounter::new(&live);
    let mut submit = Box::pin(isle.spawn_exec(move |lua| {
        let _guard = guard;
        lua.globals().set("counter", 1000)
    }));
    assert!(poll_once(&mut submit).await.is_pending());
    drop(submit);
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "the closure went with the future"
    );
    let timed = tokio::time::timeout(
        Duration::from_millis(10),
        isle.spawn_eval::<()>("counter = 2000"),
    )
    .await;
    assert!(timed.is_err());
    blocker.cancel();
    filler.await.unwrap();
    assert_eq!(isle.eval::<i64>("counter").await.unwrap(), 1);
}
both_runtimes!(submission_dropped_while_waiting_for_room_queues_nothing);

// ---------------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------------

async fn shutdown_lets_accepted_work_finish_then_refuses_every_clone() {
    let (isle, driver, _started) = default_isle().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        tasks.push(
            isle.spawn_eval::<i64>("counter = counter + 1 return counter")
                .await
                .unwrap(),
        );
    }
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let other = {
        let clone = isle.clone();
        tokio::spawn(async move {
            go_rx.await.unwrap();
            assert!(!clone.is_alive());
            assert_err!(clone.eval::<i64>("1").await, IsleError::Shutdown);
            assert_err!(clone.spawn_eval::<i64>("1").await, IsleError::Shutdown);
            assert_err!(clone.call::<i64>("echo", 1).await, IsleError::Shutdown);
            assert_err!(clone.exec(|_| Ok(1)).await, IsleError::Shutdown);
            assert_err!(
                clone.request().try_enqueue().eval::<i64>("1").await,
                IsleError::Shutdown
            );
        })
    };
    assert!(driver.is_alive());
    driver
        .shutdown()
        .await
        .expect("a panic-free shutdown is Ok");
    for (i, task) in tasks.into_iter().enumerate() {
        assert!(task.is_finished());
        assert_eq!(task.await.unwrap(), i as i64 + 1);
    }
    go_tx.send(()).unwrap();
    other.await.unwrap();
    assert_err!(isle.eval::<i64>("1").await, IsleError::Shutdown);
}
both_runtimes!(shutdown_lets_accepted_work_finish_then_refuses_every_clone);

async fn shutdown_timeout_resolves_stuck_and_queued_work_as_shutdown() {
    let (isle, driver, mut started) = default_isle().await;
    let stuck = isle
        .spawn_eval::<()>("started() while true do pcall(function() while true do end end) end")
        .await
        .unwrap();
    started.wait().await;
    let mut queued = Vec::new();
    for _ in 0..5 {
        queued.push(isle.spawn_eval::<()>("return").await.unwrap());
    }
    driver
        .shutdown_timeout(Duration::from_millis(20))
        .await
        .unwrap();
    assert_err!(stuck.await, IsleError::Shutdown);
    for task in queued {
        assert_err!(task.await, IsleError::Shutdown);
    }
    assert!(!isle.is_alive());
    assert_err!(isle.eval::<()>("return").await, IsleError::Shutdown);
}
both_runtimes!(shutdown_timeout_resolves_stuck_and_queued_work_as_shutdown);

/// With `queue_capacity(1)`: a running blocker, a queued filler, and `waiters` submissions
/// from other tasks waiting for room (each polled once, so known to be waiting); then the isle
/// is shut down, gracefully or not. Returns each waiter's outcome, `None` if it never resolved.
async fn submissions_waiting_for_room_during_shutdown(
    forced: bool,
    waiters: usize,
) -> Vec<Option<Result<i64, IsleError>>> {
    let (isle, driver, mut started) = spawn_isle(AsyncIsle::builder().queue_capacity(1)).await;
    let blocker = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let filler = isle.spawn_eval::<i64>("1").await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..waiters {
        let clone = isle.clone();
        let (polled_tx, polled_rx) = oneshot::channel();
        handles.push(tokio::spawn(async move {
            let mut submit = Box::pin(clone.spawn_eval::<i64>("2"));
            assert!(
                poll_once(&mut submit).await.is_pending(),
                "the queue is full"
            );
            polled_tx.send(()).unwrap();
            match submit.await {
                Ok(task) => task.await,
                Err(e) => Err(e),
            }
        }));
        polled_rx.await.unwrap();
    }
    if forced {
        driver
            .shutdown_timeout(Duration::from_millis(20))
            .await
            .unwrap();
        assert_err!(blocker.await, IsleError::Shutdown);
        assert_err!(filler.await, IsleError::Shutdown);
    } else {
        // The first poll closes the queue; then room is made.
        let mut shutdown = Box::pin(driver.shutdown());
        assert!(poll_once(&mut shutdown).await.is_pending());
        blocker.cancel();
        assert_err!(blocker.await, IsleError::Cancelled);
        assert_eq!(filler.await.unwrap(), 1);
        shutdown.await.unwrap();
    }
    assert!(!isle.is_alive());
    let give_up = tokio::time::Instant::now() + HANG / 2;
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(
            tokio::time::timeout_at(give_up, handle)
                .await
                .ok()
                .map(|joined| joined.unwrap()),
        );
    }
    outcomes
}

/// Submissions waiting for room when the isle shuts down get `Shutdown`; none hangs.
async fn shutdown_wakes_submissions_waiting_for_room() {
    let outcomes = submissions_waiting_for_room_during_shutdown(false, 1).await;
    assert!(
        matches!(outcomes[..], [Some(Err(IsleError::Shutdown))]),
        "{outcomes:?}"
    );
    let outcomes = submissions_waiting_for_room_during_shutdown(false, 3).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Some(Err(IsleError::Shutdown)))),
        "every waiter should get Shutdown: {outcomes:?}"
    );
}
both_runtimes!(shutdown_wakes_submissions_waiting_for_room);

async fn shutdown_timeout_wakes_a_submission_waiting_for_room() {
    let outcomes = submissions_waiting_for_room_during_shutdown(true, 1).await;
    assert!(
        matches!(outcomes[..], [Some(Err(IsleError::Shutdown))]),
        "{outcomes:?}"
    );
}
both_runtimes!(shutdown_timeout_wakes_a_submission_waiting_for_room);

async fn dropped_shutdown_future_still_shuts_down() {
    let (isle, driver, _started) = default_isle().await;
    let task = isle.spawn_eval::<i64>("return 3").await.unwrap();
    let mut shutdown = Box::pin(driver.shutdown());
    let _ = poll_once(&mut shutdown).await;
    drop(shutdown);
    assert_eq!(task.await.unwrap(), 3); // accepted work still finishes
    assert_err!(isle.eval::<i64>("1").await, IsleError::Shutdown);
    eventually_async("the isle's thread to end", || !isle.is_alive()).await;
}
both_runtimes!(dropped_shutdown_future_still_shuts_down);

async fn dropping_the_driver_never_blocks_and_the_isle_keeps_serving() {
    let (isle, driver, mut started) = default_isle().await;
    let blocker = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    drop(driver); // returns although the Lua thread is busy
    let clone = isle.clone();
    let queued = tokio::spawn(async move { clone.eval::<i64>("return 5").await });
    assert!(isle.is_alive());
    blocker.cancel();
    assert_err!(blocker.await, IsleError::Cancelled);
    assert_eq!(queued.await.unwrap().unwrap(), 5);
    assert_usable(&isle).await;
    assert!(isle.is_alive());
}
both_runtimes!(dropping_the_driver_never_blocks_and_the_isle_keeps_serving);

async fn dropping_every_handle_ends_the_thread() {
    let (isle, driver, mut started) = default_isle().await;
    let clone = isle.clone();
    let gate = isle
        .spawn_eval::<()>("started() local t = os.clock() while os.clock() - t < 0.02 do end")
        .await
        .unwrap();
    started.wait().await;
    let mut queued = Vec::new();
    for i in 0..10 {
        queued.push(
            clone
                .spawn_eval::<i64>(format!("return {i}"))
                .await
                .unwrap(),
        );
    }
    drop(isle);
    drop(clone);
    // Accepted work still runs.
    gate.await.unwrap();
    for (i, task) in queued.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), i as i64);
    }
    eventually_async("the isle's thread to end", || !driver.is_alive()).await;
    driver.shutdown().await.unwrap();
}
both_runtimes!(dropping_every_handle_ends_the_thread);

async fn bad_configuration_and_failing_init_are_reported() {
    let err = AsyncIsle::builder()
        .queue_capacity(0)
        .spawn_async(|_| Ok(()))
        .await
        .unwrap_err();
    assert!(matches!(err, IsleError::Config(_)), "{err:?}");
    let err = AsyncIsle::spawn(|lua| lua.load("error('no config file')").exec())
        .await
        .unwrap_err();
    match err {
        IsleError::Init(inner) => {
            assert!(inner.as_lua().unwrap().message().contains("no config file"))
        }
        other => panic!("{other:?}"),
    }
    let err = AsyncIsle::spawn(|_| panic!("init boom")).await.unwrap_err();
    match err {
        IsleError::Init(inner) => {
            assert!(matches!(*inner, IsleError::Panic(ref m) if m == "init boom"))
        }
        other => panic!("{other:?}"),
    }
}
both_runtimes!(bad_configuration_and_failing_init_are_reported);

// ---------------------------------------------------------------------------------------------
// CancelToken::cancelled
// ---------------------------------------------------------------------------------------------

async fn cancel_token_cancelled_future_completes() {
    // Already cancelled: ready at the first poll.
    let done = CancelToken::new();
    done.cancel();
    assert!(poll_once(&mut Box::pin(done.cancelled())).await.is_ready());
    let child_of_done = done.child_token();
    assert!(poll_once(&mut Box::pin(child_of_done.cancelled()))
        .await
        .is_ready());

    // Cancelled from another task while this one waits.
    let token = CancelToken::new();
    let mut waiting = Box::pin(token.cancelled());
    assert!(poll_once(&mut waiting).await.is_pending());
    let canceller = token.clone();
    tokio::spawn(async move { canceller.cancel() });
    tokio::time::timeout(HANG / 2, waiting)
        .await
        .expect("cancelled() completes");

    // A waiter in another task, woken through a parent.
    let parent = CancelToken::new();
    let child = parent.child_token();
    let (polled_tx, polled_rx) = oneshot::channel();
    let waiter = tokio::spawn(async move {
        let mut waiting = Box::pin(child.cancelled());
        assert!(poll_once(&mut waiting).await.is_pending());
        polled_tx.send(()).unwrap();
        waiting.await;
        assert!(child.is_cancelled());
    });
    polled_rx.await.unwrap();
    parent.cancel();
    tokio::time::timeout(HANG / 2, waiter)
        .await
        .expect("the child's waiter is woken")
        .unwrap();

    // A request's own token is cancelled when its task is dropped.
    let (isle, _driver, mut started) = default_isle().await;
    let task = isle
        .spawn_eval::<()>("started() while true do end")
        .await
        .unwrap();
    started.wait().await;
    let token = task.cancel_token();
    let waiter = tokio::spawn(async move { token.cancelled().await });
    drop(task);
    tokio::time::timeout(HANG / 2, waiter)
        .await
        .expect("dropping the task cancels its token")
        .unwrap();
    assert_usable(&isle).await;
}
both_runtimes!(cancel_token_cancelled_future_completes);

// ---------------------------------------------------------------------------------------------
// i. Exactly once under load; threads end
// ---------------------------------------------------------------------------------------------

const OPS_PER_TASK: usize = 60;

async fn hammer(isle: AsyncIsle, seed: u64, live: Arc<AtomicUsize>, tally: Arc<Tally>) {
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..OPS_PER_TASK {
        let i = i as i64;
        match rng.random_range(0..16) {
            0 => {
                tally.submit();
                tally.resolve(
                    isle.eval::<i64>(format!("return {i}")).await,
                    |r| matches!(r, Ok(v) if *v == i),
                );
            }
            1 => {
                tally.submit();
                tally.resolve(
                    isle.call::<i64>("echo", i).await,
                    |r| matches!(r, Ok(v) if *v == i),
                );
            }
            2 => {
                let guard = DropCounter::new(&live);
                tally.submit();
                tally.resolve(
                    isle.exec(move |_| {
                        let _guard = guard;
                        Ok(i)
                    })
                    .await,
                    |r| matches!(r, Ok(v) if *v == i),
                );
            }
            3 => {
                tally.submit();
                tally.resolve(
                    isle.eval::<()>("error('expected')").await,
                    |r| matches!(r, Err(IsleError::Lua(e)) if e.kind() == LuaErrorKind::Runtime),
                );
            }
            4 => {
                let guard = DropCounter::new(&live);
                tally.submit();
                tally.resolve(
                    isle.exec(move |_| -> mlua_isle::mlua::Result<()> {
                        let _guard = guard;
                        panic!("expected panic")
                    })
                    .await,
                    |r| matches!(r, Err(IsleError::Panic(m)) if m == "expected panic"),
                );
            }
            5 => {
                tally.submit();
                tally.resolve(
                    isle.eval::<()>("boom('host panic')").await,
                    |r| matches!(r, Err(IsleError::Panic(m)) if m == "host panic"),
                );
            }
            6 => {
                tally.submit();
                let task = isle.spawn_call::<()>("spin", ()).await.unwrap();
                if rng.random_bool(0.5) {
                    tokio::task::yield_now().await;
                }
                task.cancel();
                tally.resolve(task.await, |r| matches!(r, Err(IsleError::Cancelled)));
            }
            7 => {
                // Dropped task: cancelled, its closure dropped exactly once.
                let guard = DropCounter::new(&live);
                let task = isle
                    .spawn_exec(move |lua| {
                        let _guard = guard;
                        lua.load("spin()").exec()
                    })
                    .await
                    .unwrap();
                if rng.random_bool(0.5) {
                    tokio::task::yield_now().await;
                }
                drop(task);
            }
            8 => {
                // Detached task: runs unobserved.
                let guard = DropCounter::new(&live);
                isle.spawn_exec(move |_| {
                    let _guard = guard;
                    Ok(())
                })
                .await
                .unwrap()
                .detach();
            }
            9 => {
                tally.submit();
                tally.resolve(
                    isle.request()
                        .timeout(Duration::from_millis(1))
                        .eval::<()>("spin()")
                        .await,
                    |r| matches!(r, Err(IsleError::Timeout)),
                );
            }
            10 => {
                tally.submit();
                let parent = CancelToken::new();
                let token = if rng.random_bool(0.5) {
                    parent.child_token()
                } else {
                    parent.clone()
                };
                let task = isle
                    .request()
                    .token(&token)
                    .spawn_eval::<()>("spin()")
                    .await
                    .unwrap();
                parent.cancel();
                tally.resolve(task.await, |r| matches!(r, Err(IsleError::Cancelled)));
            }
            11 => {
                // Polled by reference, raced and re-awaited.
                tally.submit();
                let mut task = isle.spawn_eval::<i64>(format!("return {i}")).await.unwrap();
                let result = tokio::select! {
                    biased;
                    result = &mut task => result,
                    () = tokio::task::yield_now() => task.await,
                };
                tally.resolve(result, |r| matches!(r, Ok(v) if *v == i));
            }
            12 => {
                tally.submit();
                let result = match isle
                    .request()
                    .try_enqueue()
                    .spawn_eval::<i64>(format!("{i}"))
                    .await
                {
                    Ok(task) => task.await,
                    Err(e) => Err(e),
                };
                tally.resolve(result, |r| {
                    matches!(r, Ok(v) if *v == i) || matches!(r, Err(IsleError::Full))
                });
            }
            13 => {
                // The future of a never-ending request dropped mid-flight (queued or running).
                let timed =
                    tokio::time::timeout(Duration::from_millis(1), isle.call::<()>("spin", ()))
                        .await;
                assert!(timed.is_err(), "spin cannot finish: {timed:?}");
            }
            14 => {
                // A submission dropped, perhaps while waiting for room.
                let guard = DropCounter::new(&live);
                let submitted = tokio::time::timeout(
                    Duration::from_millis(1),
                    isle.spawn_exec(move |lua| {
                        let _guard = guard;
                        lua.load("spin()").exec()
                    }),
                )
                .await;
                drop(submitted);
            }
            _ => {
                tally.submit();
                let task = isle.spawn_eval::<()>("spin()").await.unwrap();
                let token = task.cancel_token();
                tokio::spawn(async move { token.cancel() });
                tally.resolve(task.await, |r| matches!(r, Err(IsleError::Cancelled)));
            }
        }
    }
}

async fn every_request_resolves_exactly_once_under_a_random_mix() {
    let baseline = thread_count();
    let live = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Tally::default());
    let mut isles = Vec::new();
    for _ in 0..3 {
        let (isle, driver, _started) = spawn_isle(AsyncIsle::builder().queue_capacity(16)).await;
        isles.push((isle, driver));
    }
    let mut workers = Vec::new();
    for t in 0..32u64 {
        let isle = isles[t as usize % isles.len()].0.clone();
        workers.push(tokio::spawn(hammer(
            isle,
            0x5eed + t,
            live.clone(),
            tally.clone(),
        )));
    }
    for worker in workers {
        if let Err(e) = worker.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    assert_eq!(tally.submitted(), tally.resolved());
    // End the three isles three different ways, each with work still queued.
    for (isle, _) in &isles {
        for _ in 0..5 {
            let guard = DropCounter::new(&live);
            isle.spawn_exec(move |_| {
                let _guard = guard;
                Ok(())
            })
            .await
            .unwrap()
            .detach();
        }
    }
    let mut isles = isles.into_iter();
    let (a, a_driver) = isles.next().unwrap();
    let (b, b_driver) = isles.next().unwrap();
    let (c, c_driver) = isles.next().unwrap();
    a_driver.shutdown().await.unwrap();
    b_driver
        .shutdown_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_err!(a.eval::<()>("return").await, IsleError::Shutdown);
    assert_err!(b.eval::<()>("return").await, IsleError::Shutdown);
    drop((a, b, c));
    eventually_async("the last isle's thread to end", || !c_driver.is_alive()).await;
    drop(c_driver);
    eventually_async("every job closure dropped", || {
        live.load(Ordering::SeqCst) == 0
    })
    .await;
    eventually_async("the thread count back to its baseline", || {
        thread_count() <= baseline
    })
    .await;
}
both_runtimes!(counts_threads every_request_resolves_exactly_once_under_a_random_mix);

async fn abandoned_loops_do_not_leak_threads() {
    let baseline = thread_count();
    for i in 0..5 {
        let (isle, driver, mut started) = default_isle().await;
        let task = isle
            .spawn_eval::<()>("started() while true do end")
            .await
            .unwrap();
        started.wait().await;
        if i % 2 == 0 {
            drop(driver);
        }
        drop(isle);
        drop(task); // abandoning the loop cancels it; the thread then exits
    }
    // A loop stopped by its deadline, with every handle gone.
    let (isle, driver, _started) = default_isle().await;
    isle.request()
        .timeout(Duration::from_millis(5))
        .spawn_eval::<()>("spin()")
        .await
        .unwrap()
        .detach();
    drop((isle, driver));
    eventually_async("the thread count back to its baseline", || {
        thread_count() <= baseline
    })
    .await;
}
both_runtimes!(counts_threads abandoned_loops_do_not_leak_threads);

async fn many_isles_come_and_go_without_leaking_threads() {
    let baseline = thread_count();
    for i in 0..30i64 {
        let (isle, driver) = AsyncIsle::spawn(|_| Ok(())).await.unwrap();
        assert_eq!(isle.eval::<i64>(format!("{i}")).await.unwrap(), i);
        match i % 3 {
            0 => driver.shutdown().await.unwrap(),
            1 => driver
                .shutdown_timeout(Duration::from_millis(500))
                .await
                .unwrap(),
            _ => drop(driver),
        }
    }
    // A spawn whose future is dropped after its first poll: the isle starts, then ends.
    for _ in 0..3 {
        let mut spawning = Box::pin(AsyncIsle::spawn(|_| Ok(())));
        let _ = poll_once(&mut spawning).await;
    }
    eventually_async("the thread count back to its baseline", || {
        thread_count() <= baseline
    })
    .await;
}
both_runtimes!(counts_threads many_isles_come_and_go_without_leaking_threads);

/// The watchdog thread should end once no isle and no timer needs it. Here it is made to
/// sleep towards a long `shutdown_timeout` timer (it scans while firing a short queued-request
/// expiry), then the shutdown completes early and the timer is dropped.
async fn watchdog_ends_once_its_last_timer_is_dropped() {
    // Start without a watchdog (an earlier test may have left one sleeping): an isle that
    // registered with it wakes it up when dropped, and it then ends.
    let (isle, driver) = AsyncIsle::spawn(|_| Ok(())).await.unwrap();
    isle.request()
        .timeout(Duration::from_secs(3600))
        .eval::<()>("return")
        .await
        .unwrap();
    drop(isle);
    driver.shutdown().await.unwrap();
    eventually_async("no watchdog thread", || {
        !thread_names()
            .iter()
            .any(|name| name.starts_with("mlua-isle-watch"))
    })
    .await;
    let baseline = thread_count();
    let (isle, driver, mut started) = default_isle().await;
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let blocker = isle
        .spawn_exec(move |lua| {
            lua.load("started()").exec()?;
            let _ = hold.recv(); // busy, without a deadline, until released
            Ok(())
        })
        .await
        .unwrap();
    started.wait().await;
    let queued = isle
        .request()
        .timeout(Duration::from_millis(20))
        .spawn_eval::<()>("return")
        .await
        .unwrap();
    // Registers the shutdown's one-hour timer with the watchdog.
    let mut shutdown = Box::pin(driver.shutdown_timeout(Duration::from_secs(3600)));
    assert!(poll_once(&mut shutdown).await.is_pending());
    // The watchdog fires the queued request's expiry; it then sleeps towards the hour.
    assert_err!(queued.await, IsleError::Timeout);
    release.send(()).unwrap();
    shutdown.await.unwrap(); // the isle ended: the hour-long timer is dropped
    blocker.await.unwrap();
    drop(isle);
    eventually_async("the thread count back to its baseline", || {
        thread_count() <= baseline
    })
    .await;
}
both_runtimes!(
    counts_threads watchdog_ends_once_its_last_timer_is_dropped
);
