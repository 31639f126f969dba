//! The cost of being interruptible: CPU-bound scripts through an idle isle against raw mlua on
//! one thread (the floor, measured in the same run), with the default interrupt (signal-armed
//! hook; on Luau the interrupt callback set on demand) and with the permanent hook; and the
//! latency of a cancel, against two floors measured in the same run: waking a parked thread,
//! and (Unix) delivering a signal to a running one.
//!
//! Run with: `cargo bench --bench interrupt`; for another Lua version, for example
//! `cargo bench --bench interrupt --no-default-features --features luajit,vendored`.
//!
//! Two floors: raw mlua on the benchmark's thread (`raw_mlua`) and on a thread of its own
//! (`raw_mlua_own_thread`), as an isle's VM is. On LuaJIT an isle runs with the JIT compiler
//! off by default, so both floors run with the compiler off too; `raw_mlua_jit_on` and
//! `isle_jit_on` show the compiler's effect.

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mlua_isle::mlua::{Function, Lua};
use mlua_isle::{Interrupt, Isle};

const SCRIPTS: &str = r#"
function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
function numeric() local s = 0 for i = 1, 30000000 do s = s + i % 7 end return s end
function strings()
  local t = {}
  for i = 1, 200000 do t[#t + 1] = tostring(i) .. "x" end
  local n = 0
  for _, v in ipairs(t) do n = n + #v end
  return n
end
"#;

const CASES: [(&str, &str, i64); 3] = [
    ("fib27", "fib", 27),
    ("numeric_30m", "numeric", 0),
    ("string_table", "strings", 0),
];

fn cpu_bound(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_bound");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));

    // The same raw VM on a thread of its own, as an isle's VM is: separates the cost of being
    // an isle from that of running on another thread (another allocator arena, say).
    let raw_thread = RawThread::spawn();
    for (case, (name, _, _)) in CASES.iter().enumerate() {
        group.bench_function(format!("raw_mlua_own_thread/{name}"), |b| {
            b.iter_custom(|iters| raw_thread.run(case, iters))
        });
    }
    drop(raw_thread);
    let floors = [
        ("raw_mlua", false),
        #[cfg(any(feature = "luajit", feature = "luajit52"))]
        ("raw_mlua_jit_on", true),
    ];
    for (label, jit) in floors {
        let lua = Lua::new();
        if cfg!(any(feature = "luajit", feature = "luajit52")) && !jit {
            lua.load("jit.off()").exec().unwrap();
        }
        lua.load(SCRIPTS).exec().unwrap();
        for (name, function, arg) in CASES {
            let f: Function = lua.globals().get(function).unwrap();
            group.bench_function(format!("{label}/{name}"), |b| {
                b.iter(|| black_box(f.call::<i64>(arg).unwrap()))
            });
        }
    }
    let isles = [
        ("isle_default", Isle::builder()),
        (
            "isle_hook",
            Isle::builder().interrupt(Interrupt::Hook { every: 1000 }),
        ),
        #[cfg(any(feature = "luajit", feature = "luajit52"))]
        ("isle_jit_on", Isle::builder().jit(true)),
    ];
    for (label, builder) in isles {
        let isle = builder.spawn(|lua| lua.load(SCRIPTS).exec()).unwrap();
        for (name, function, arg) in CASES {
            group.bench_function(format!("{label}/{name}"), |b| {
                b.iter(|| black_box(isle.call::<i64>(function, arg).unwrap()))
            });
        }
        isle.shutdown().unwrap();
    }
    group.finish();
}

/// Raw mlua on a dedicated thread, timing a number of calls of one case on request.
struct RawThread {
    requests: mpsc::Sender<(usize, u64)>,
    times: mpsc::Receiver<Duration>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawThread {
    fn spawn() -> Self {
        let (requests, incoming) = mpsc::channel::<(usize, u64)>();
        let (outgoing, times) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let lua = Lua::new();
            if cfg!(any(feature = "luajit", feature = "luajit52")) {
                lua.load("jit.off()").exec().unwrap();
            }
            lua.load(SCRIPTS).exec().unwrap();
            for (case, iters) in incoming {
                let (_, function, arg) = CASES[case];
                let f: Function = lua.globals().get(function).unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(f.call::<i64>(arg).unwrap());
                }
                if outgoing.send(start.elapsed()).is_err() {
                    break;
                }
            }
        });
        RawThread {
            requests,
            times,
            thread: Some(thread),
        }
    }

    fn run(&self, case: usize, iters: u64) -> Duration {
        self.requests.send((case, iters)).unwrap();
        self.times.recv().unwrap()
    }
}

impl Drop for RawThread {
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        self.requests = closed;
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// The requests whose cancel latency is measured: each runs until it is stopped.
const CANCELLED: [(&str, &str); 3] = [
    ("tight_loop", "started() while true do end"),
    (
        "pcall_loop",
        "started() while true do pcall(function() while true do end end) end",
    ),
    (
        "coroutine_loop",
        "started() local co = coroutine.wrap(function() while true do coroutine.yield() end end)
         while true do co() end",
    ),
];

const INTERRUPTS: [(&str, Interrupt); 2] = [
    ("default", DEFAULT_INTERRUPT),
    ("hook", Interrupt::Hook { every: 1000 }),
];

/// `Interrupt::default()`, as a constant.
#[cfg(feature = "luau")]
const DEFAULT_INTERRUPT: Interrupt = Interrupt::OnDemand;
#[cfg(all(unix, not(feature = "luau")))]
const DEFAULT_INTERRUPT: Interrupt = Interrupt::Signal {
    signal: Interrupt::DEFAULT_SIGNAL,
};
#[cfg(not(any(unix, feature = "luau")))]
const DEFAULT_INTERRUPT: Interrupt = Interrupt::Hook {
    every: Interrupt::DEFAULT_EVERY,
};

/// An isle with `started()`, reporting on the returned channel.
fn isle_with_started(interrupt: Interrupt) -> (Isle, mpsc::Receiver<()>) {
    let (tx, started) = mpsc::channel::<()>();
    let isle = Isle::builder()
        .interrupt(interrupt)
        .spawn(move |lua| {
            let f = lua.create_function(move |_, ()| Ok(tx.send(()).is_ok()))?;
            lua.globals().set("started", f)
        })
        .unwrap();
    (isle, started)
}

/// The time from `cancel()` to `wait()` returning, for a request known to be running `script`.
fn one_cancel(isle: &Isle, started: &mpsc::Receiver<()>, script: &'static str) -> Duration {
    let task = isle.spawn_eval::<()>(script).unwrap();
    started.recv().unwrap();
    let start = Instant::now();
    task.cancel();
    let _ = black_box(task.wait());
    start.elapsed()
}

/// The floor: the time to wake a thread parked waiting for a message, as a cancelled
/// request's waiter is woken.
fn one_wake_up() -> Duration {
    let (tx, rx) = mpsc::channel::<Instant>();
    let (parked_tx, parked) = mpsc::channel::<()>();
    let waiter = std::thread::spawn(move || {
        parked_tx.send(()).unwrap();
        let sent = rx.recv().unwrap();
        sent.elapsed()
    });
    parked.recv().unwrap();
    // Let the waiter get from its send into its receive and park there.
    std::thread::sleep(Duration::from_millis(1));
    tx.send(Instant::now()).unwrap();
    waiter.join().unwrap()
}

/// The floor of a signal-delivered cancel: the time from `pthread_kill` to a spinning thread
/// until a spinning observer sees that the thread's handler ran. This is what the kernel (and
/// a virtual machine's interrupt delivery) charges for stopping a running thread, before any
/// Lua is involved.
#[cfg(all(unix, not(feature = "luau")))]
fn signal_deliveries(n: usize) -> Vec<Duration> {
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    static DELIVERED: AtomicBool = AtomicBool::new(false);
    // SAFETY: the action only stores to an atomic, which is async-signal-safe; SIGUSR2 is not
    // used by the isles of this benchmark (they use `Interrupt::DEFAULT_SIGNAL`).
    let id = unsafe {
        signal_hook_registry::register(libc::SIGUSR2, || DELIVERED.store(true, Ordering::SeqCst))
    }
    .unwrap();
    let round = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let spinner = {
        let (round, seen) = (round.clone(), seen.clone());
        std::thread::spawn(move || loop {
            let r = round.load(Ordering::SeqCst);
            if r == usize::MAX {
                return;
            }
            if DELIVERED.swap(false, Ordering::SeqCst) {
                seen.store(r, Ordering::SeqCst);
            }
            std::hint::spin_loop();
        })
    };
    let target = spinner.as_pthread_t();
    let mut samples = Vec::with_capacity(n);
    for i in 1..=n {
        round.store(i, Ordering::SeqCst);
        // As a cancelled request is: running for a while before the signal comes.
        std::thread::sleep(Duration::from_micros(20));
        let start = Instant::now();
        // SAFETY: `target` is a live thread: it ends only after the loop.
        unsafe { libc::pthread_kill(target, libc::SIGUSR2) };
        while seen.load(Ordering::SeqCst) != i {
            std::hint::spin_loop();
        }
        samples.push(start.elapsed());
    }
    round.store(usize::MAX, Ordering::SeqCst);
    spinner.join().unwrap();
    signal_hook_registry::unregister(id);
    samples
}

/// Time from `cancel()` to `wait()` returning, for a request known to be running the script.
fn cancel_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel_latency");
    group.sample_size(30);
    group.bench_function("floor_parked_wake_up", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| one_wake_up()).sum())
    });
    for (label, interrupt) in INTERRUPTS {
        let (isle, started) = isle_with_started(interrupt);
        for (name, script) in CANCELLED {
            group.bench_function(format!("{label}/{name}"), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| one_cancel(&isle, &started, script))
                        .sum()
                })
            });
        }
        isle.shutdown().unwrap();
    }
    group.finish();
}

/// Percentiles of single cancels (criterion reports means of batches): p50 and p90 of 2000
/// cancels per case, with the wake-up floor measured in the same run.
fn cancel_latency_percentiles(_: &mut Criterion) {
    const N: usize = 2000;
    fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
        samples.sort();
        (samples[samples.len() / 2], samples[samples.len() * 9 / 10])
    }
    let (floor50, floor90) = percentiles((0..N).map(|_| one_wake_up()).collect());
    println!("cancel_latency_percentiles/floor_parked_wake_up: p50 {floor50:?} p90 {floor90:?}");
    #[cfg(all(unix, not(feature = "luau")))]
    {
        let (p50, p90) = percentiles(signal_deliveries(N));
        println!(
            "cancel_latency_percentiles/floor_signal_delivery: p50 {p50:?} ({:.2}x floor) \
             p90 {p90:?} ({:.2}x floor p50)",
            p50.as_secs_f64() / floor50.as_secs_f64(),
            p90.as_secs_f64() / floor50.as_secs_f64(),
        );
    }
    for (label, interrupt) in INTERRUPTS {
        let (isle, started) = isle_with_started(interrupt);
        for (name, script) in CANCELLED {
            let (p50, p90) = percentiles(
                (0..N)
                    .map(|_| one_cancel(&isle, &started, script))
                    .collect(),
            );
            println!(
                "cancel_latency_percentiles/{label}/{name}: p50 {p50:?} ({:.2}x floor) \
                 p90 {p90:?} ({:.2}x floor p50)",
                p50.as_secs_f64() / floor50.as_secs_f64(),
                p90.as_secs_f64() / floor50.as_secs_f64(),
            );
        }
        isle.shutdown().unwrap();
    }
}

criterion_group!(
    benches,
    cpu_bound,
    cancel_latency,
    cancel_latency_percentiles
);
criterion_main!(benches);
