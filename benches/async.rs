//! The async API: `call().await` round trips, throughput with 1, 8 and 64 concurrent tasks,
//! coroutine requests; the floor is a raw tokio task → thread → oneshot round trip measured in
//! the same run.
//!
//! Run with: `cargo bench --bench async --features tokio`

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlua_isle::AsyncIsle;
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

criterion_group!(benches, round_trip);
criterion_main!(benches);
