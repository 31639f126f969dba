//! Threads serving isle after isle, under a storm: several threads start isles on a few shared
//! thread names (so that each isle may start on a thread another one just left), with init
//! failures and panics, requests that succeed, panic, are cancelled, resume coroutines from
//! Rust, or leave a finalizer that does so as the VM closes; isles end by `shutdown`, by being
//! dropped, or by `shutdown_timeout` past a loop the interrupt stops or Rust code that ignores
//! it (a give-up). Meanwhile tokens of isles that have ended are cancelled at random, and a
//! pool recycling its members every few requests serves on names of its own.
//!
//! Isles on a name differ in how their VM is made (libraries, options, a factory), so that a
//! spare made the next VM ahead of time for settings the next isle may not have.
//!
//! Checked: every request resolves exactly once (and its closure is dropped), nothing hangs,
//! every isle's first script finds a fresh VM with its own libraries, a token of an ended isle
//! never stops a request of a later one, threads are actually reused, and once everything has
//! ended no thread with one of the test's names is left (spares show the OS `isle-spare`).
//!
//! `THREAD_REUSE_STRESS_SEED` replays a run; `THREAD_REUSE_STRESS_ROUNDS` sets the rounds per
//! thread.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use common::*;
use mlua_isle::mlua::{self, Lua, LuaOptions, StdLib};
use mlua_isle::{CancelToken, Isle, IsleBuilder, IsleError, IslePool, Recycle, Task};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Thread names shared by the isles of every worker.
const NAMES: [&str; 3] = ["trs-a", "trs-b", "trs-c"];
/// What every thread name of this test starts with (the pool's too).
const PREFIX: &str = "trs-";
const WORKERS: usize = 4;
const DEFAULT_ROUNDS: usize = 1200;
/// Stale tokens kept for cancelling.
const STALE_KEPT: usize = 64;

fn rounds() -> usize {
    std::env::var("THREAD_REUSE_STRESS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
}

fn seed() -> u64 {
    let seed = std::env::var("THREAD_REUSE_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("thread_reuse_stress: THREAD_REUSE_STRESS_SEED={seed}");
    seed
}

/// What the workers share.
#[derive(Default)]
struct Books {
    tally: Tally,
    /// Closures of requests not dropped yet.
    closures: Arc<AtomicUsize>,
    /// Tokens of requests of isles that have ended.
    stale: Mutex<Vec<CancelToken>>,
    stale_cancels: AtomicUsize,
    /// Threads isles started on, and how many isles started on one seen before.
    threads: Mutex<HashSet<ThreadId>>,
    isles: AtomicUsize,
    reused: AtomicUsize,
    /// VMs (isles' or pool members') that found a global an earlier VM set.
    leftovers: AtomicUsize,
    /// VMs without the libraries their isle asked for, or with others.
    wrong_libraries: AtomicUsize,
    give_ups: AtomicUsize,
    next_marker: AtomicU64,
}

impl Books {
    fn started_on(&self, thread: ThreadId) {
        self.isles.fetch_add(1, Ordering::Relaxed);
        if !self.threads.lock().unwrap().insert(thread) {
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn retire_tokens(&self, tokens: Vec<CancelToken>, rng: &mut StdRng) {
        let mut stale = self.stale.lock().unwrap();
        for token in tokens {
            if stale.len() < STALE_KEPT {
                stale.push(token);
            } else {
                let at = rng.random_range(0..STALE_KEPT);
                stale[at] = token;
            }
        }
    }

    /// Cancels a few tokens of isles that have ended.
    fn cancel_stale(&self, rng: &mut StdRng) {
        let picked: Vec<CancelToken> = {
            let stale = self.stale.lock().unwrap();
            if stale.is_empty() {
                return;
            }
            (0..3)
                .map(|_| stale[rng.random_range(0..stale.len())].clone())
                .collect()
        };
        for token in picked {
            token.cancel();
            self.stale_cancels.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A request's closure: counted live until dropped (run or not).
fn closure(books: &Books) -> DropCounter {
    DropCounter::new(&books.closures)
}

/// How an isle's VM is made.
#[derive(Clone, Copy, Debug)]
enum Making {
    /// The default libraries and options.
    Default,
    /// Fewer libraries.
    Few,
    /// Fewer libraries, other options.
    FewOtherOptions,
    /// By a factory.
    Factory,
}

/// The libraries all the test's scripts need (`coroutine` is in the base library of Lua 5.1
/// and LuaJIT).
fn needed() -> StdLib {
    let libs = StdLib::TABLE | StdLib::STRING;
    #[cfg(not(any(feature = "lua51", feature = "luajit", feature = "luajit52")))]
    let libs = libs | StdLib::COROUTINE;
    libs
}

/// The libraries of [`Making::Few`]: `math` but no `os`.
fn few() -> StdLib {
    needed() | StdLib::MATH
}

impl Making {
    fn pick(rng: &mut StdRng) -> Making {
        match rng.random_range(0..4) {
            0 => Making::Default,
            1 => Making::Few,
            2 => Making::FewOtherOptions,
            _ => Making::Factory,
        }
    }

    fn apply(self, builder: IsleBuilder) -> IsleBuilder {
        match self {
            Making::Default => builder,
            Making::Few => builder.std_libs(few()),
            Making::FewOtherOptions => builder
                .std_libs(few())
                .lua_options(LuaOptions::new().catch_rust_panics(false)),
            Making::Factory => {
                builder.factory(|| Lua::new_with(needed() | StdLib::OS, LuaOptions::new()))
            }
        }
    }

    /// A script that tells whether a VM has these libraries.
    fn check(self) -> &'static str {
        match self {
            Making::Default => "return os ~= nil and math ~= nil",
            Making::Few | Making::FewOtherOptions => "return os == nil and math ~= nil",
            Making::Factory => "return os ~= nil and math == nil",
        }
    }
}

/// Notes whether the VM `lua` holds what an earlier VM set or lacks the libraries `making`
/// gives, then marks it.
fn check_fresh(lua: &Lua, books: &Books, making: Making) -> mlua::Result<()> {
    if !lua.load(making.check()).eval::<bool>()? {
        books.wrong_libraries.fetch_add(1, Ordering::SeqCst);
    }
    let leftover: Option<i64> = lua.globals().get("vm_marker")?;
    if leftover.is_some() {
        books.leftovers.fetch_add(1, Ordering::SeqCst);
    }
    lua.globals().set(
        "vm_marker",
        books.next_marker.fetch_add(1, Ordering::Relaxed) as i64,
    )
}

/// `rust_resume(co)`: resumes `co` from Rust. Resumes one itself first (`init` does it: a
/// coroutine a finalizer of the last VM on the thread resumed must not be found recorded).
fn define_rust_resume(lua: &Lua) -> mlua::Result<()> {
    lua.create_thread(lua.create_function(|_, ()| Ok(()))?)?
        .resume::<()>(())?;
    let resume = lua.create_function(|_, co: mlua::Thread| {
        co.resume::<()>(())?;
        Ok(())
    })?;
    lua.globals().set("rust_resume", resume)
}

/// Whether a request's outcome is one it may have.
type Expect = fn(&Result<i64, IsleError>) -> bool;

/// A request in flight and what its outcome must be.
struct Pending {
    task: Task<i64>,
    expect: Expect,
}

fn ok_or_cancelled(r: &Result<i64, IsleError>) -> bool {
    matches!(r, Ok(20_000) | Err(IsleError::Cancelled))
}

fn must_succeed(r: &Result<i64, IsleError>) -> bool {
    matches!(r, Ok(20_000))
}

fn panicked(r: &Result<i64, IsleError>) -> bool {
    matches!(r, Err(IsleError::Panic(m)) if m.contains("deliberate"))
}

fn stopped(r: &Result<i64, IsleError>) -> bool {
    matches!(r, Err(IsleError::Shutdown))
}

fn stopped_or_done(r: &Result<i64, IsleError>) -> bool {
    matches!(r, Ok(0) | Err(IsleError::Shutdown))
}

const COUNT: &str = "local n = 0 for i = 1, 20000 do n = n + 1 end return n";

/// How an isle ends.
#[derive(Clone, Copy, Debug)]
enum End {
    Shutdown,
    Drop,
    /// `shutdown_timeout` past a Lua loop, which the interrupt stops.
    StuckInLua,
    /// `shutdown_timeout` past Rust code that ignores the interrupt for a while: given up on.
    StuckInRust,
}

fn one_isle(books: &'static Books, rng: &mut StdRng) {
    let name = NAMES[rng.random_range(0..NAMES.len())];
    let end = match rng.random_range(0..10) {
        0..=3 => End::Shutdown,
        4..=6 => End::Drop,
        7..=8 => End::StuckInLua,
        _ => End::StuckInRust,
    };
    let grace = match end {
        End::StuckInRust => Duration::from_millis(5),
        _ => HANG,
    };
    let making = Making::pick(rng);
    let builder = making.apply(Isle::builder().thread_name(name).grace_period(grace));
    let init = rng.random_range(0..12);
    if init < 2 {
        let failed = builder.spawn(move |lua| {
            check_fresh(lua, books, making)?;
            if init == 0 {
                lua.load("error('deliberate init failure')").exec()
            } else {
                panic!("deliberate init panic")
            }
        });
        assert!(matches!(failed, Err(IsleError::Init(_))), "{failed:?}");
        return;
    }
    let (isle, thread) = builder
        .spawn_with(move |lua| {
            check_fresh(lua, books, making)?;
            define_rust_resume(lua)?;
            Ok(thread::current().id())
        })
        .expect("the isle starts");
    books.started_on(thread);

    // Its first script finds nothing an earlier VM set.
    books.tally.submit();
    let fresh = isle.eval::<bool>(
        "local fresh = marker == nil and string.marker == nil
         marker = 1 string.marker = 1
         return fresh",
    );
    books.tally.resolve(fresh, |r| matches!(r, Ok(true)));

    let mut pending = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..rng.random_range(1..5) {
        let token = CancelToken::new();
        let request = isle.request().token(&token);
        let counter = closure(books);
        let (task, expect): (Task<i64>, Expect) = match rng.random_range(0..6) {
            // Counts, unless cancelled below.
            0 => {
                let task = request
                    .spawn_exec(move |lua| {
                        let _counter = counter;
                        lua.load(COUNT).eval::<i64>()
                    })
                    .unwrap();
                if rng.random_bool(0.5) {
                    token.cancel();
                }
                (task, ok_or_cancelled)
            }
            1 => (
                request
                    .spawn_exec(move |_| -> mlua::Result<i64> {
                        let _counter = counter;
                        panic!("deliberate panic in a request")
                    })
                    .unwrap(),
                panicked,
            ),
            // Resumes a coroutine from Rust, while stale tokens are cancelled elsewhere.
            2 => (
                request
                    .spawn_exec(move |lua| {
                        let _counter = counter;
                        let body = lua.load(COUNT).into_function()?;
                        lua.create_thread(body)?.resume::<i64>(())
                    })
                    .unwrap(),
                must_succeed,
            ),
            // Leaves a finalizer that resumes a coroutine from Rust as the VM closes.
            3 => (
                request
                    .spawn_exec(move |lua| {
                        let _counter = counter;
                        lua.load(
                            "collectgarbage('stop')
                                 setmetatable({}, {__gc = function()
                                     rust_resume(coroutine.create(function() end))
                                 end})",
                        )
                        .exec()?;
                        lua.load(COUNT).eval::<i64>()
                    })
                    .unwrap(),
                must_succeed,
            ),
            // Counts; nothing of this isle cancels it.
            _ => (
                request
                    .spawn_exec(move |lua| {
                        let _counter = counter;
                        lua.load(COUNT).eval::<i64>()
                    })
                    .unwrap(),
                must_succeed,
            ),
        };
        books.tally.submit();
        pending.push(Pending { task, expect });
        tokens.push(token);
        if rng.random_bool(0.3) {
            books.cancel_stale(rng);
        }
    }

    if matches!(end, End::StuckInLua | End::StuckInRust) {
        // Past the shutdown's deadline whatever is still queued resolves `Shutdown`: these
        // are seen to their own end first.
        settle(books, std::mem::take(&mut pending), end);
    }
    match end {
        End::Shutdown => {
            let shut = isle.shutdown();
            assert!(shut.is_ok(), "{shut:?}");
        }
        End::Drop => drop(isle),
        End::StuckInLua => {
            let counter = closure(books);
            let stuck = isle
                .spawn_exec(move |lua| {
                    let _counter = counter;
                    lua.load("while true do end").exec()?;
                    Ok(0)
                })
                .unwrap();
            books.tally.submit();
            pending.push(Pending {
                task: stuck,
                expect: stopped,
            });
            let shut = isle.shutdown_timeout(Duration::from_millis(2));
            assert!(shut.is_ok(), "{shut:?}");
        }
        End::StuckInRust => {
            let counter = closure(books);
            let stuck = isle
                .spawn_exec(move |_| {
                    let _counter = counter;
                    // Ignores the interrupt, for a while.
                    let until = Instant::now() + Duration::from_millis(60);
                    while Instant::now() < until {
                        thread::sleep(Duration::from_millis(1));
                    }
                    Ok(0)
                })
                .unwrap();
            books.tally.submit();
            pending.push(Pending {
                task: stuck,
                expect: stopped_or_done,
            });
            let shut = isle.shutdown_timeout(Duration::from_millis(1));
            if matches!(shut, Err(IsleError::Abandoned)) {
                books.give_ups.fetch_add(1, Ordering::Relaxed);
            } else {
                // Busy cores: the stuck code may have ended before the shutdown got there.
                assert!(shut.is_ok(), "{shut:?}");
            }
        }
    }
    settle(books, pending, end);
    books.retire_tokens(tokens, rng);
}

/// Waits for each request and checks its outcome.
fn settle(books: &Books, pending: Vec<Pending>, end: End) {
    for Pending { task, expect } in pending {
        let outcome = task
            .wait_timeout(HANG)
            .unwrap_or_else(|_| panic!("hang guard: a request of an isle ending by {end:?}"));
        books.tally.resolve(outcome, expect);
    }
}

fn pool_round(pool: &IslePool, books: &Books, rng: &mut StdRng) {
    let counter = closure(books);
    books.tally.submit();
    match rng.random_range(0..4) {
        0 => {
            let r = pool.exec(move |lua| {
                let _counter = counter;
                lua.load(COUNT).eval::<i64>()
            });
            books.tally.resolve(r, must_succeed);
        }
        1 => {
            let r = pool.exec(move |_| -> mlua::Result<i64> {
                let _counter = counter;
                panic!("deliberate panic in a pool request")
            });
            books.tally.resolve(r, panicked);
        }
        2 => {
            let token = CancelToken::new();
            let task = pool
                .request()
                .token(&token)
                .spawn_exec(move |lua| {
                    let _counter = counter;
                    lua.load(COUNT).eval::<i64>()
                })
                .unwrap();
            token.cancel();
            let r = task
                .wait_timeout(HANG)
                .unwrap_or_else(|_| panic!("hang guard"));
            books.tally.resolve(r, ok_or_cancelled);
            books.retire_tokens(vec![token], rng);
        }
        _ => {
            let r = pool
                .request()
                .timeout(Duration::from_millis(3))
                .exec(move |lua| {
                    let _counter = counter;
                    lua.load("while true do end").exec()?;
                    Ok(0)
                });
            books
                .tally
                .resolve(r, |r| matches!(r, Err(IsleError::Timeout)));
        }
    }
}

#[test]
fn isles_and_a_pool_share_threads_under_a_storm() {
    let seed = seed();
    let rounds = rounds();
    within_hang_guard(move || {
        quiet_deliberate_panics();
        let books: &'static Books = Box::leak(Box::default());
        let pool = Arc::new(
            IslePool::builder()
                .size(2)
                .thread_name("trs-pool")
                .recycle(Recycle::new().after_requests(3))
                .spawn(move |lua| {
                    check_fresh(lua, books, Making::Default)?;
                    define_rust_resume(lua)
                })
                .expect("the pool starts"),
        );
        let stop_cancelling = Arc::new(AtomicBool::new(false));
        // Cancels stale tokens all along, from a thread of its own.
        let canceller = {
            let stop = stop_cancelling.clone();
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
                while !stop.load(Ordering::Relaxed) {
                    books.cancel_stale(&mut rng);
                    thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let pool = pool.clone();
                thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
                    for _ in 0..rounds {
                        one_isle(books, &mut rng);
                        if rng.random_bool(0.3) {
                            pool_round(&pool, books, &mut rng);
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("a worker failed");
        }
        stop_cancelling.store(true, Ordering::Relaxed);
        canceller.join().unwrap();
        Arc::try_unwrap(pool)
            .expect("the workers are done with the pool")
            .shutdown()
            .expect("the pool shuts down");

        assert_eq!(books.tally.submitted(), books.tally.resolved());
        assert_eq!(
            books.leftovers.load(Ordering::SeqCst),
            0,
            "a fresh VM saw a global of an earlier one"
        );
        assert_eq!(
            books.wrong_libraries.load(Ordering::SeqCst),
            0,
            "a VM had other libraries than its isle asked for"
        );
        eventually("every request's closure dropped", || {
            books.closures.load(Ordering::SeqCst) == 0
        });
        let isles = books.isles.load(Ordering::Relaxed);
        let reused = books.reused.load(Ordering::Relaxed);
        assert!(reused > 0, "no isle started on a thread another one left");
        eprintln!(
            "thread_reuse_stress: {isles} isles, {reused} on a reused thread, {} give-ups, \
             {} stale cancels, {} requests",
            books.give_ups.load(Ordering::Relaxed),
            books.stale_cancels.load(Ordering::Relaxed),
            books.tally.resolved(),
        );
        // Spares show the OS `isle-spare`; threads given up on end once their Rust code does.
        eventually("no thread with the test's names left", || {
            !thread_names().iter().any(|name| name.starts_with(PREFIX))
        });
    });
}
