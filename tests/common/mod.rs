//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod lua_gen;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mlua_isle::{Isle, IsleBuilder, IsleError};

/// Generous bound after which a test is considered hung (never a speed assertion).
pub const HANG: Duration = Duration::from_secs(30);

/// Keeps the panics that tests provoke on Lua threads (named `mlua-isle`) out of the output;
/// they are reported to the test as `IsleError::Panic`. Printing each one, with a backtrace
/// when `RUST_BACKTRACE` is set, would also slow tests that provoke hundreds.
pub fn quiet_lua_thread_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if thread::current().name() != Some("mlua-isle") {
                default(info);
            }
        }));
    });
}

/// Keeps the panics tests provoke on purpose (their message says "deliberate") out of the
/// output; they reach the tests as `IsleError::Panic`.
pub fn quiet_deliberate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if !message.is_some_and(|m| m.contains("deliberate")) {
                default(info);
            }
        }));
    });
}

/// Runs `f` on its own thread and fails the test if it does not finish within [`HANG`].
#[track_caller]
pub fn within_hang_guard<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    quiet_lua_thread_panics();
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(value) => {
            worker.join().unwrap();
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: surface its panic.
            std::panic::resume_unwind(worker.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hang guard: still running after {HANG:?}"),
    }
}

/// An isle with a global `started()` that reports on the returned channel each time Lua calls
/// it, so a test can wait until its request is really running.
pub fn isle_with_started(builder: IsleBuilder) -> (Isle, Receiver<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let isle = builder
        .spawn(move |lua| {
            let started = lua.create_function(move |_, ()| {
                let _ = tx.send(());
                Ok(())
            })?;
            lua.globals().set("started", started)
        })
        .expect("isle starts");
    (isle, rx)
}

/// Waits for one `started()` call, with a hang guard.
#[track_caller]
pub fn wait_started(rx: &Receiver<()>) {
    rx.recv_timeout(HANG)
        .expect("the request should have started");
}

/// Counts live values: `new` increments, `Drop` decrements.
#[derive(Debug)]
pub struct DropCounter(Arc<AtomicUsize>);

impl DropCounter {
    pub fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        DropCounter(live.clone())
    }
}

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Number of OS threads of this process that the library started (Lua threads and the
/// watchdog, all named `mlua-isle…`), read from `/proc` (Linux). Threads of the test harness
/// come and go as tests start; they are not counted.
pub fn thread_count() -> usize {
    thread_names()
        .iter()
        .filter(|name| name.starts_with("mlua-isle"))
        .count()
}

/// Waits until `cond` holds, failing after a generous bound (shorter than [`HANG`], so that
/// this more precise message wins).
#[track_caller]
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < HANG / 2, "hang guard: never saw {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Names of this process's threads (Linux), for diagnostics.
pub fn thread_names() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

/// Counts submitted and resolved requests, so a stress test can check that every request
/// resolved exactly once.
#[derive(Debug, Default)]
pub struct Tally {
    submitted: AtomicUsize,
    resolved: AtomicUsize,
}

impl Tally {
    /// One more request submitted.
    pub fn submit(&self) {
        self.submitted.fetch_add(1, Ordering::SeqCst);
    }

    /// One request resolved with `result`, which `ok` must accept.
    #[track_caller]
    pub fn resolve<T: std::fmt::Debug>(
        &self,
        result: Result<T, IsleError>,
        ok: impl FnOnce(&Result<T, IsleError>) -> bool,
    ) {
        assert!(ok(&result), "unexpected outcome {result:?}");
        self.resolved.fetch_add(1, Ordering::SeqCst);
    }

    pub fn submitted(&self) -> usize {
        self.submitted.load(Ordering::SeqCst)
    }

    pub fn resolved(&self) -> usize {
        self.resolved.load(Ordering::SeqCst)
    }
}

/// Code stuck where no interrupt reaches, until `released()`: a loop in a `__gc` finalizer,
/// which Lua runs with hooks disabled; on Luau, which has no finalizers in Lua, a host function
/// ignoring cancellation. It calls `started()` first.
#[cfg(not(any(
    feature = "lua51",
    feature = "luajit",
    feature = "luajit52",
    feature = "luau"
)))]
pub const STUCK_IN_GC: &str =
    "setmetatable({}, {__gc = function() started() while not released() do end end})
     collectgarbage()";

/// Lua 5.1 runs `__gc` only for userdata: a proxy from `newproxy`.
#[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
pub const STUCK_IN_GC: &str = "local p = newproxy(true)
                           getmetatable(p).__gc = function() started() while not released() do end end
                           p = nil
                           collectgarbage()";

/// Luau has no `__gc` for Lua code: a host function that ignores its deadline instead.
#[cfg(feature = "luau")]
pub const STUCK_IN_GC: &str = "spin_until_released()";

/// Code leaving an object whose finalizer runs `body` as the VM closes (Lua 5.1 runs `__gc`
/// only for userdata: a proxy from `newproxy`; Luau has no finalizers in Lua).
#[cfg(not(feature = "luau"))]
pub fn finalized_on_close(body: &str) -> String {
    #[cfg(not(any(feature = "lua51", feature = "luajit", feature = "luajit52")))]
    return format!("keep = setmetatable({{}}, {{__gc = function() {body} end}})");
    #[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
    return format!("keep = newproxy(true) getmetatable(keep).__gc = function() {body} end");
}

/// Defines `released()`, true once `release` is set, and `spin_until_released()`, a host
/// function that ignores its deadline.
pub fn define_released(
    lua: &mlua_isle::mlua::Lua,
    release: Arc<AtomicBool>,
) -> mlua_isle::mlua::Result<()> {
    let flag = release.clone();
    let released = lua.create_function(move |_, ()| Ok(flag.load(Ordering::SeqCst)))?;
    lua.globals().set("released", released)?;
    let spin = lua.create_function(move |lua, ()| {
        // Reported from inside, so that a cancel sent on `started` finds the code stuck.
        if let Ok(started) = lua.globals().get::<mlua_isle::mlua::Function>("started") {
            started.call::<()>(())?;
        }
        while !release.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        Ok(())
    })?;
    lua.globals().set("spin_until_released", spin)
}

/// An isle with `released()`, `spin_until_released()`, `started()` (reporting on the returned
/// channel) and the global `kept = 1`.
pub fn spawn_releasable(builder: IsleBuilder, release: &Arc<AtomicBool>) -> (Isle, Receiver<()>) {
    let release = release.clone();
    let (tx, rx) = mpsc::channel();
    let isle = builder
        .spawn(move |lua| {
            define_released(lua, release)?;
            let started = lua.create_function(move |_, ()| Ok(tx.send(()).is_ok()))?;
            lua.globals().set("started", started)?;
            lua.globals().set("kept", 1)
        })
        .unwrap();
    (isle, rx)
}

/// A random generator seeded from the environment variable `var` when set (to replay a run),
/// else from the clock; the seed is printed.
pub fn seeded_rng(var: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("{var}={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}
