//! A pool under a storm of mixed requests from many threads: plain evaluations, Lua errors,
//! panics, timeouts, cancels at random instants, dropped tasks, checkouts that are returned or
//! discarded, and occasional hard stops, while members are recycled every 50 requests.
//!
//! Every request must resolve exactly once, the pool must end with its full size, and after
//! `shutdown` none of its threads may be left.

mod common;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{quiet_deliberate_panics, thread_names, DropCounter, HANG};
use mlua_isle::mlua::Lua;
use mlua_isle::{CancelToken, IsleBuilder, IsleError, IslePool, Recycle, Task};
use rand::Rng;

const THREADS: usize = 8;
/// Requests per thread.
const PER_THREAD: usize = 10_000;
const SIZE: usize = 4;
const NAME: &str = "pstress";

/// Per request: how many times its closure was dropped (run or not: exactly once).
struct Ledger {
    closures: Vec<AtomicU8>,
    /// Results made on a member and still alive somewhere.
    results: Arc<AtomicUsize>,
    /// Requests whose outcome the caller saw, and requests whose task was dropped.
    observed: AtomicUsize,
    dropped: AtomicUsize,
    hard_stops: AtomicUsize,
    checkouts: AtomicUsize,
}

/// Marks request `id`'s closure as dropped when it goes.
struct Closure {
    ledger: Arc<Ledger>,
    id: usize,
}

impl Drop for Closure {
    fn drop(&mut self) {
        self.ledger.closures[self.id].fetch_add(1, Ordering::SeqCst);
    }
}

/// A request running `code`, its closure tracked under `id`, returning a tracked result.
fn tracked(
    ledger: &Arc<Ledger>,
    id: usize,
    code: &'static str,
) -> impl FnOnce(&Lua) -> mlua_isle::mlua::Result<(i64, DropCounter)> + Send + 'static {
    let closure = Closure {
        ledger: ledger.clone(),
        id,
    };
    move |lua| {
        let closure = closure;
        if code == "panic" {
            panic!("deliberate");
        }
        let value = lua.load(code).eval::<i64>()?;
        Ok((value, DropCounter::new(&closure.ledger.results)))
    }
}

/// Waits for `task` and checks its outcome is one `expected` accepts.
#[track_caller]
fn observe(
    ledger: &Ledger,
    task: Task<(i64, DropCounter)>,
    expected: impl FnOnce(&Result<i64, &IsleError>) -> bool,
) {
    let result = task
        .wait_timeout(HANG)
        .expect("hang guard: a request never resolved");
    let seen = result.as_ref().map(|(v, _)| *v);
    assert!(expected(&seen), "unexpected outcome {seen:?}");
    ledger.observed.fetch_add(1, Ordering::SeqCst);
}

/// Holds the member for about 200 ms in a host function that never looks at its token, where
/// no interrupt reaches (on every Lua version): with a 5 ms timeout and a 20 ms grace period
/// the isle gives up on it, and the thread ends on its own afterwards.
const HARD_STOP: &str = "hold_cpu() return 0";

fn client(pool: &IslePool, ledger: &Arc<Ledger>, thread_index: usize) {
    let mut rng = rand::rng();
    for n in 0..PER_THREAD {
        let id = thread_index * PER_THREAD + n;
        let roll = rng.random_range(0..10_000);
        match roll {
            // Plain evaluation.
            0..=5_199 => {
                let task = pool.spawn_exec(tracked(ledger, id, "return 7")).unwrap();
                observe(ledger, task, |r| matches!(r, Ok(7)));
            }
            // Lua error.
            5_200..=6_199 => {
                let task = pool.spawn_exec(tracked(ledger, id, "error('no')")).unwrap();
                observe(
                    ledger,
                    task,
                    |r| matches!(r, Err(e) if e.as_lua().is_some()),
                );
            }
            // Panic in a host closure.
            6_200..=6_599 => {
                let task = pool.spawn_exec(tracked(ledger, id, "panic")).unwrap();
                observe(ledger, task, |r| matches!(r, Err(e) if e.is_panic()));
            }
            // Timeout of a loop, queued or running.
            6_600..=7_199 => {
                let timeout = Duration::from_micros(rng.random_range(0..3000));
                let task = pool
                    .request()
                    .timeout(timeout)
                    .spawn_exec(tracked(ledger, id, "while true do end return 0"))
                    .unwrap();
                observe(ledger, task, |r| matches!(r, Err(e) if e.is_timeout()));
            }
            // Cancel at a random instant, of a loop or of a short request.
            7_200..=8_199 => {
                let token = CancelToken::new();
                let code = if roll % 2 == 0 {
                    "while true do end return 0"
                } else {
                    "return 7"
                };
                let task = pool
                    .request()
                    .token(&token)
                    .no_timeout()
                    .spawn_exec(tracked(ledger, id, code))
                    .unwrap();
                for _ in 0..rng.random_range(0..2000) {
                    std::hint::spin_loop();
                }
                if rng.random_bool(0.5) {
                    token.cancel();
                } else {
                    task.cancel();
                }
                observe(ledger, task, |r| {
                    matches!(r, Ok(7)) || matches!(r, Err(e) if e.is_cancelled())
                });
            }
            // A task dropped at a random instant (which cancels it).
            8_200..=9_199 => {
                let code = if roll % 2 == 0 {
                    "while true do end return 0"
                } else {
                    "return 7"
                };
                let task = pool
                    .request()
                    .no_timeout()
                    .spawn_exec(tracked(ledger, id, code))
                    .unwrap();
                for _ in 0..rng.random_range(0..2000) {
                    std::hint::spin_loop();
                }
                drop(task);
                ledger.dropped.fetch_add(1, Ordering::SeqCst);
            }
            // A checkout, used, then returned or discarded.
            9_200..=9_997 => {
                // Not a request: its closure slot is marked by hand.
                ledger.closures[id].fetch_add(1, Ordering::SeqCst);
                let wait = Duration::from_micros(rng.random_range(0..20_000));
                match pool.checkout_timeout(wait) {
                    Ok(guard) => {
                        ledger.checkouts.fetch_add(1, Ordering::SeqCst);
                        guard.eval::<()>("session = (session or 0) + 1").unwrap();
                        assert!(guard.eval::<i64>("session").unwrap() >= 1);
                        if rng.random_bool(0.5) {
                            guard.discard();
                        } else {
                            drop(guard);
                        }
                    }
                    Err(err) => assert!(err.is_timeout(), "{err:?}"),
                }
                ledger.observed.fetch_add(1, Ordering::SeqCst);
            }
            // An occasional hard stop.
            _ => {
                let task = pool
                    .request()
                    .timeout(Duration::from_millis(5))
                    .spawn_exec(tracked(ledger, id, HARD_STOP))
                    .unwrap();
                observe(
                    ledger,
                    task,
                    |r| matches!(r, Err(e) if e.is_timeout() || matches!(e, IsleError::Abandoned)),
                );
                ledger.hard_stops.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn pool_threads() -> usize {
    thread_names()
        .iter()
        .filter(|name| name.starts_with(NAME))
        .count()
}

#[test]
fn a_storm_of_mixed_requests_resolves_each_once_and_leaves_no_thread() {
    quiet_deliberate_panics();
    let started = Instant::now();
    let pool = IslePool::builder()
        .isle(IsleBuilder::new().grace_period(Duration::from_millis(20)))
        .size(SIZE)
        .thread_name(NAME)
        .recycle(Recycle::new().after_requests(50))
        .spawn(|lua| {
            let hold = lua.create_function(|_, ()| {
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(200) {
                    std::hint::spin_loop();
                }
                Ok(())
            })?;
            lua.globals().set("hold_cpu", hold)
        })
        .unwrap();
    let ledger = Arc::new(Ledger {
        closures: (0..THREADS * PER_THREAD)
            .map(|_| AtomicU8::new(0))
            .collect(),
        results: Arc::new(AtomicUsize::new(0)),
        observed: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        hard_stops: AtomicUsize::new(0),
        checkouts: AtomicUsize::new(0),
    });
    thread::scope(|s| {
        for thread_index in 0..THREADS {
            let (pool, ledger) = (&pool, &ledger);
            s.spawn(move || client(pool, ledger, thread_index));
        }
    });
    let total = THREADS * PER_THREAD;
    assert_eq!(
        ledger.observed.load(Ordering::SeqCst) + ledger.dropped.load(Ordering::SeqCst),
        total
    );

    // Full size: every position can be checked out at once.
    let all: Vec<_> = (0..SIZE)
        .map(|_| {
            pool.checkout_timeout(HANG)
                .expect("a member for every position")
        })
        .collect();
    let stats = pool.stats();
    assert_eq!((stats.size, stats.checked_out), (SIZE, SIZE));
    // Members rarely reach 50 requests: most are replaced sooner, after a panic, an
    // interrupted request or a discard.
    assert!(stats.recycled.total() > 0, "{stats:?}");
    assert_eq!(stats.abandoned, stats.replaced, "{stats:?}");
    drop(all);
    pool.shutdown().unwrap();

    // No thread of the pool is left (a hard-stopped one ends once its host function returns),
    // and only then has every closure of a hard-stopped request been dropped.
    let deadline = Instant::now() + HANG;
    while pool_threads() > 0 {
        assert!(
            Instant::now() < deadline,
            "threads left: {:?}",
            thread_names()
        );
        thread::sleep(Duration::from_millis(5));
    }
    // Every closure went exactly once (run, or dropped unrun), every result was dropped.
    let wrong: Vec<_> = ledger
        .closures
        .iter()
        .enumerate()
        .filter(|(_, c)| c.load(Ordering::SeqCst) != 1)
        .map(|(id, c)| (id, c.load(Ordering::SeqCst)))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "closures dropped other than once: {wrong:?}"
    );
    assert_eq!(ledger.results.load(Ordering::SeqCst), 0);

    eprintln!(
        "{total} requests ({} checkouts, {} hard stops) in {:?}",
        ledger.checkouts.load(Ordering::SeqCst),
        ledger.hard_stops.load(Ordering::SeqCst),
        started.elapsed()
    );
}
