//! Pools against one isle, each next to its floor measured in the same run:
//!
//! - `pool_cpu_bound`: a batch of CPU-bound requests (16 × `fib(24)`, queued with `spawn_call`,
//!   then all waited for) through a pool of 2 against the same batch through one isle, and the
//!   machine's ceiling: the batch split over two plain threads with a VM each. On a machine
//!   with 2 free cores the pool should take a little over half the time of one isle.
//! - `pool_round_trip`: a trivial `call("f", x)` through a pool (of 1 and of 2) against one
//!   isle's; and a checkout, one `call` on the guard and its return (drop) against one isle's
//!   `call`.
//! - `pool_percentiles` (printed, not criterion's): p50 and p99 of single requests, timed one
//!   by one in interleaved blocks so that every case sees the same machine: the round trips
//!   above; requests while members are recycled every 100 requests against the same pool
//!   without recycling, and against that pool next to a thread doing a replacement's VM work
//!   every 100 requests (the floor for recycling on a machine whose cores the requests keep
//!   busy: that work has to run somewhere); and short requests on a pool of 2 whose other member runs one long
//!   request, against the same stream on an idle pool of 2, and on an idle pool of 1 next to
//!   another isle running the same long request (the floor: one free member and the core the
//!   long request takes, without any head-of-line blocking).
//!
//! Run with: `cargo bench --bench pool` (on an otherwise idle machine: the pool's members,
//! the caller and the supervisor share its cores).

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlua_isle::{Isle, IslePool, Recycle};

const SCRIPTS: &str = r#"
function f(x) return x end
function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
"#;

/// The CPU-bound batch: this many `fib(FIB)`.
const BATCH: usize = 16;
const FIB: i64 = 24;

fn isle() -> Isle {
    Isle::spawn(|lua| lua.load(SCRIPTS).exec()).unwrap()
}

fn pool(size: usize) -> IslePool {
    pool_with(size, Recycle::new())
}

fn pool_with(size: usize, recycle: Recycle) -> IslePool {
    IslePool::builder()
        .size(size)
        .recycle(recycle)
        .spawn(|lua| lua.load(SCRIPTS).exec())
        .unwrap()
}

/// Something requests can be sent to: one isle or a pool.
trait Target {
    fn call_f(&self, x: i64) -> i64;
    fn fib_batch(&self);
}

impl Target for Isle {
    fn call_f(&self, x: i64) -> i64 {
        self.call::<i64>("f", x).unwrap()
    }

    fn fib_batch(&self) {
        let tasks: Vec<_> = (0..BATCH)
            .map(|_| self.spawn_call::<i64>("fib", FIB).unwrap())
            .collect();
        for task in tasks {
            black_box(task.wait().unwrap());
        }
    }
}

impl Target for IslePool {
    fn call_f(&self, x: i64) -> i64 {
        self.call::<i64>("f", x).unwrap()
    }

    fn fib_batch(&self) {
        let tasks: Vec<_> = (0..BATCH)
            .map(|_| self.spawn_call::<i64>("fib", FIB).unwrap())
            .collect();
        for task in tasks {
            black_box(task.wait().unwrap());
        }
    }
}

/// Checks a member out, runs one `call` on it and returns it.
fn checkout_call_return(pool: &IslePool, x: i64) -> i64 {
    let guard = pool.checkout().unwrap();
    let y = guard.call::<i64>("f", x).unwrap();
    drop(guard);
    y
}

fn cpu_bound(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_cpu_bound");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(BATCH as u64));

    // The ceiling of this machine: the same batch split over two plain threads, each with a
    // VM of its own (created outside the timing).
    let (starts, workers): (Vec<_>, Vec<_>) = (0..2)
        .map(|_| {
            let (start, started) = crossbeam_channel::bounded::<crossbeam_channel::Sender<()>>(0);
            let worker = thread::spawn(move || {
                let lua = mlua::Lua::new();
                lua.load(SCRIPTS).exec().unwrap();
                let fib: mlua::Function = lua.globals().get("fib").unwrap();
                while let Ok(done) = started.recv() {
                    for _ in 0..BATCH / 2 {
                        black_box(fib.call::<i64>(FIB).unwrap());
                    }
                    done.send(()).unwrap();
                }
            });
            (start, worker)
        })
        .unzip();
    group.bench_function(format!("raw_mlua_2_threads/{BATCH}x_fib{FIB}"), |b| {
        b.iter(|| {
            let (done, finished) = crossbeam_channel::bounded(2);
            for start in &starts {
                start.send(done.clone()).unwrap();
            }
            finished.recv().unwrap();
            finished.recv().unwrap();
        })
    });
    drop(starts);
    for worker in workers {
        worker.join().unwrap();
    }
    // The floor: the same batch on one isle.
    let isle = isle();
    group.bench_function(format!("isle/{BATCH}x_fib{FIB}"), |b| {
        b.iter(|| isle.fib_batch())
    });
    isle.shutdown().unwrap();
    for size in [1, 2] {
        let pool = pool(size);
        group.bench_function(format!("pool_of_{size}/{BATCH}x_fib{FIB}"), |b| {
            b.iter(|| pool.fib_batch())
        });
        pool.shutdown().unwrap();
    }
    group.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_round_trip");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    // The floor: one isle's round trip.
    let isle = isle();
    group.bench_function("isle/call", |b| {
        b.iter(|| black_box(isle.call_f(black_box(7))))
    });
    isle.shutdown().unwrap();
    for size in [1, 2] {
        let pool = pool(size);
        group.bench_function(format!("pool_of_{size}/call"), |b| {
            b.iter(|| black_box(pool.call_f(black_box(7))))
        });
        group.bench_function(format!("pool_of_{size}/checkout_call_return"), |b| {
            b.iter(|| black_box(checkout_call_return(&pool, black_box(7))))
        });
        // A call on a guard held throughout: an isle's round trip.
        let guard = pool.checkout().unwrap();
        group.bench_function(format!("pool_of_{size}/call_on_held_guard"), |b| {
            b.iter(|| black_box(guard.call::<i64>("f", black_box(7)).unwrap()))
        });
        drop(guard);
        pool.shutdown().unwrap();
    }
    group.finish();
}

/// Single-request latencies, collected in blocks.
struct Latencies {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Latencies {
    fn new(name: &'static str) -> Self {
        Latencies {
            name,
            samples: Vec::new(),
        }
    }

    /// Times `n` single runs of `request`.
    fn record(&mut self, n: usize, request: impl FnMut(i64)) {
        self.record_after(n, |_| {}, request);
    }

    /// Times `n` single runs of `request`, each after an untimed `before`.
    fn record_after(
        &mut self,
        n: usize,
        mut before: impl FnMut(i64),
        mut request: impl FnMut(i64),
    ) {
        for i in 0..n {
            before(i as i64);
            let start = Instant::now();
            request(i as i64);
            self.samples.push(start.elapsed());
        }
    }

    /// p50 and p99.
    fn percentiles(&mut self) -> (Duration, Duration) {
        self.samples.sort();
        let n = self.samples.len();
        (self.samples[n / 2], self.samples[n * 99 / 100])
    }
}

/// A thread that does what replacing a pool member costs in VM work, when asked: a new VM
/// with the scripts, and the old one closed.
struct VmReplacer {
    asks: crossbeam_channel::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl VmReplacer {
    fn start() -> Self {
        let (asks, asked) = crossbeam_channel::bounded::<()>(1);
        let thread = thread::spawn(move || {
            let mut vm = mlua::Lua::new();
            while asked.recv().is_ok() {
                let next = mlua::Lua::new();
                next.load(SCRIPTS).exec().unwrap();
                drop(std::mem::replace(&mut vm, next));
            }
        });
        VmReplacer { asks, thread }
    }

    /// Asks for one replacement (none if the last one is not taken up yet).
    fn replace(&self) {
        let _ = self.asks.try_send(());
    }

    fn stop(self) {
        drop(self.asks);
        self.thread.join().unwrap();
    }
}

/// Prints each case's p50 and p99, with its ratios to the first case's (the floor).
fn report(group: &str, cases: &mut [Latencies]) {
    let (floor50, floor99) = cases[0].percentiles();
    for case in cases.iter_mut() {
        let (p50, p99) = case.percentiles();
        println!(
            "{group}/{}: n {} p50 {p50:?} ({:.2}x) p99 {p99:?} ({:.2}x)",
            case.name,
            case.samples.len(),
            p50.as_secs_f64() / floor50.as_secs_f64(),
            p99.as_secs_f64() / floor99.as_secs_f64(),
        );
    }
}

/// How many single requests per case, and in blocks of how many the cases take turns.
const REQUESTS: usize = 20_000;
const BLOCK: usize = 1_000;

fn percentiles(_: &mut Criterion) {
    // Round trips: one isle (the floor), a pool of 2, checkout + call + return.
    {
        let isle = isle();
        let pool = pool(2);
        let mut cases = [
            Latencies::new("isle/call"),
            Latencies::new("pool_of_2/call"),
            Latencies::new("pool_of_2/checkout_call_return"),
        ];
        for _ in 0..REQUESTS / BLOCK {
            cases[0].record(BLOCK, |x| {
                black_box(isle.call_f(x));
            });
            cases[1].record(BLOCK, |x| {
                black_box(pool.call_f(x));
            });
            cases[2].record(BLOCK, |x| {
                black_box(checkout_call_return(&pool, x));
            });
        }
        report("pool_percentiles/round_trip", &mut cases);
        isle.shutdown().unwrap();
        pool.shutdown().unwrap();
    }

    // Recycling: a member replaced every 100 requests, against no recycling, and against no
    // recycling next to a thread that does a replacement's VM work (a new VM with the
    // scripts, and the old one closed) every 100 requests: the cost of that work itself on
    // the machine's cores, without the pool. Blocks of 1000 requests: each sees about 10
    // replacements.
    {
        let steady = pool(2);
        let recycled = pool_with(2, Recycle::new().after_requests(100));
        let replacer = VmReplacer::start();
        let mut cases = [
            Latencies::new("pool_of_2/call"),
            Latencies::new("pool_of_2_recycled_every_100/call"),
            Latencies::new("pool_of_2_next_to_a_vm_replaced_every_100/call"),
        ];
        for _ in 0..REQUESTS / BLOCK {
            cases[0].record(BLOCK, |x| {
                black_box(steady.call_f(x));
            });
            cases[1].record(BLOCK, |x| {
                black_box(recycled.call_f(x));
            });
            cases[2].record_after(
                BLOCK,
                |x| {
                    if x % 100 == 0 {
                        replacer.replace();
                    }
                },
                |x| {
                    black_box(steady.call_f(x));
                },
            );
        }
        report("pool_percentiles/recycling", &mut cases);
        println!(
            "pool_percentiles/recycling: {} members recycled",
            recycled.stats().recycled.total()
        );
        replacer.stop();
        steady.shutdown().unwrap();
        recycled.shutdown().unwrap();
    }

    // Head-of-line blocking: short requests on a pool of 2 while one member runs a long
    // request, against an idle pool, and against an idle pool of 1 next to another isle
    // running the same long request: one free member and the same load on the cores, outside
    // the pool. With 2 cores the long request takes one: the caller and the free member share
    // the other.
    {
        let one = pool(1);
        let pool = pool(2);
        let other = isle();
        let mut cases = [
            Latencies::new("idle_pool_of_2/call"),
            Latencies::new("idle_pool_of_1_next_to_an_isle_running_a_long_request/call"),
            Latencies::new("pool_of_2_running_a_long_request/call"),
        ];
        for _ in 0..REQUESTS / BLOCK {
            cases[0].record(BLOCK, |x| {
                black_box(pool.call_f(x));
            });

            let long = other.spawn_eval::<()>("while true do end").unwrap();
            thread::sleep(Duration::from_millis(1));
            cases[1].record(BLOCK, |x| {
                black_box(one.call_f(x));
            });
            long.cancel();
            assert!(long.wait().unwrap_err().is_cancelled());

            let long = pool.spawn_eval::<()>("while true do end").unwrap();
            while pool.stats().busy == 0 {
                thread::yield_now();
            }
            cases[2].record(BLOCK, |x| {
                black_box(pool.call_f(x));
            });
            long.cancel();
            assert!(long.wait().unwrap_err().is_cancelled());
            // The cancelled member is replaced (the default policy): wait for its successor.
            while pool.stats().idle < 2 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        report("pool_percentiles/long_request", &mut cases);
        pool.shutdown().unwrap();
        one.shutdown().unwrap();
        other.shutdown().unwrap();
    }
}

criterion_group!(benches, cpu_bound, round_trip, percentiles);
criterion_main!(benches);
