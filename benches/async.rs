//! The async API: `call().await` round trips, throughput with 1, 8 and 64 concurrent tasks,
//! coroutine requests; the floor is a raw tokio task → thread → oneshot round trip measured in
//! the same run.
//!
//! `async_pool_throughput`: 64 tasks sending trivial calls, and 64 tasks sending CPU-bound calls
//! (`fib(20)`), through an async pool of 2 against the same load through one async isle.
//!
//! Run with: `cargo bench --bench async --features tokio`

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlua_isle::{AsyncIsle, AsyncIslePool};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `iters` sequential awaits of `op` inside one tokio task and times them.
fn timed<F, Fut>(rt: &Runtime, iters: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for i in 0..iters {
                op(i).await;
            }
            start.elapsed()
        })
        .await
        .unwrap()
    })
}

fn round_trip(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("async_round_trip");

    // Floor: a tokio task hands a value to a plain thread and awaits a oneshot reply.
    let (to_thread, from_tasks) =
        crossbeam_channel::bounded::<(u64, tokio::sync::oneshot::Sender<u64>)>(1);
    let echo = thread::spawn(move || {
        while let Ok((x, reply)) = from_tasks.recv() {
            let _ = reply.send(x);
        }
    });
    group.bench_function("raw_tokio_task_thread_oneshot", |b| {
        b.iter_custom(|iters| {
            let to_thread = to_thread.clone();
            timed(&rt, iters, move |i| {
                let to_thread = to_thread.clone();
                async move {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    to_thread.send((i, tx)).unwrap();
                    black_box(rx.await.unwrap());
                }
            })
        })
    });
    drop(to_thread);
    echo.join().unwrap();

    let (isle, driver) = rt
        .block_on(AsyncIsle::spawn(|lua| {
            lua.load("function f(x) return x end").exec()
        }))
        .unwrap();
    group.bench_function("isle/call_await", |b| {
        b.iter_custom(|iters| {
            let isle = isle.clone();
            timed(&rt, iters, move |i| {
                let isle = isle.clone();
                async move {
                    black_box(isle.call::<i64>("f", i as i64).await.unwrap());
                }
            })
        })
    });
    group.bench_function("isle/coroutine_call_await", |b| {
        b.iter_custom(|iters| {
            let isle = isle.clone();
            timed(&rt, iters, move |i| {
                let isle = isle.clone();
                async move {
                    black_box(isle.coroutine_call::<i64>("f", i as i64).await.unwrap());
                }
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("async_throughput");
    const CALLS: u64 = 20_000;
    group.throughput(Throughput::Elements(CALLS));
    group.sample_size(20);
    for tasks in [1u64, 8, 64] {
        group.bench_function(format!("isle/{tasks}_tasks"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut handles = Vec::new();
                    for t in 0..tasks {
                        let isle = isle.clone();
                        handles.push(tokio::spawn(async move {
                            for i in 0..CALLS / tasks {
                                black_box(isle.call::<i64>("f", (t + i) as i64).await.unwrap());
                            }
                        }));
                    }
                    for handle in handles {
                        handle.await.unwrap();
                    }
                })
            })
        });
    }
    group.finish();
    rt.block_on(driver.shutdown()).unwrap();
}

const POOL_SCRIPTS: &str = r#"
function f(x) return x end
function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
"#;

/// Something 64 tasks can send calls to: one async isle or an async pool.
trait AsyncTarget: Clone + Send + Sync + 'static {
    fn call_i64(&self, name: &'static str, x: i64)
        -> impl std::future::Future<Output = i64> + Send;
}

impl AsyncTarget for AsyncIsle {
    async fn call_i64(&self, name: &'static str, x: i64) -> i64 {
        self.call::<i64>(name, x).await.unwrap()
    }
}

impl AsyncTarget for AsyncIslePool {
    async fn call_i64(&self, name: &'static str, x: i64) -> i64 {
        self.call::<i64>(name, x).await.unwrap()
    }
}

/// 64 tasks share `calls` calls of `name(arg)` and are all awaited.
fn fan_out<T: AsyncTarget>(rt: &Runtime, target: &T, calls: u64, name: &'static str, arg: i64) {
    const TASKS: u64 = 64;
    rt.block_on(async {
        let handles: Vec<_> = (0..TASKS)
            .map(|_| {
                let target = target.clone();
                tokio::spawn(async move {
                    for _ in 0..calls / TASKS {
                        black_box(target.call_i64(name, arg).await);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
    })
}

fn pool_throughput(c: &mut Criterion) {
    let rt = runtime();
    let (isle, isle_driver) = rt
        .block_on(AsyncIsle::spawn(|lua| lua.load(POOL_SCRIPTS).exec()))
        .unwrap();
    let (pool, pool_driver) = rt
        .block_on(
            AsyncIslePool::builder()
                .size(2)
                .spawn_async(|lua| lua.load(POOL_SCRIPTS).exec()),
        )
        .unwrap();

    let mut group = c.benchmark_group("async_pool_throughput");
    group.sample_size(20);
    const CALLS: u64 = 6_400;
    group.throughput(Throughput::Elements(CALLS));
    group.bench_function("isle/64_tasks_call", |b| {
        b.iter(|| fan_out(&rt, &isle, CALLS, "f", 1))
    });
    group.bench_function("pool_of_2/64_tasks_call", |b| {
        b.iter(|| fan_out(&rt, &pool, CALLS, "f", 1))
    });
    const FIB_CALLS: u64 = 640;
    group.throughput(Throughput::Elements(FIB_CALLS));
    group.bench_function("isle/64_tasks_fib20", |b| {
        b.iter(|| fan_out(&rt, &isle, FIB_CALLS, "fib", 20))
    });
    group.bench_function("pool_of_2/64_tasks_fib20", |b| {
        b.iter(|| fan_out(&rt, &pool, FIB_CALLS, "fib", 20))
    });
    group.finish();

    rt.block_on(isle_driver.shutdown()).unwrap();
    rt.block_on(pool_driver.shutdown()).unwrap();
}

criterion_group!(benches, round_trip, pool_throughput);
criterion_main!(benches);
